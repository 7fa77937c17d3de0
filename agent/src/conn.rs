//! The WebSocket to the hub (`ws://`, or `wss://` with the agent's rustls configuration):
//! handshake with the worker token in a header, bounded buffers, JSON text frames.

use std::sync::Arc;
use std::time::Duration;

use cmdx_proto::agent::{AgentMsg, HubMsg};
use futures_util::SinkExt as _;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

/// The agent's end of the hub connection.
pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Largest message the agent accepts from the hub (assignments with env are small).
pub(crate) const MAX_MESSAGE_BYTES: usize = 1 << 20;

/// Header naming the worker in the handshake and on downloads.
pub(crate) const WORKER_ID_HEADER: &str = "x-worker-id";

fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(16 * 1024)
        .write_buffer_size(0)
        .max_write_buffer_size(4 << 20)
        .max_message_size(Some(MAX_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_MESSAGE_BYTES))
}

/// Opens the WebSocket (`wss://` through `tls`); the token travels in `Authorization: Bearer`
/// (marked sensitive).
pub(crate) async fn connect(
    url: &str,
    tls: &Arc<rustls::ClientConfig>,
    token: &str,
    worker_id: &str,
    timeout: Duration,
) -> Result<Ws, String> {
    let mut req = url
        .into_client_request()
        .map_err(|e| format!("bad hub url: {e}"))?;
    let mut auth = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| "the worker token contains characters not allowed in a header".to_owned())?;
    auth.set_sensitive(true);
    let id = HeaderValue::from_str(worker_id)
        .map_err(|_| "the worker id contains characters not allowed in a header".to_owned())?;
    req.headers_mut()
        .insert(tungstenite::http::header::AUTHORIZATION, auth);
    req.headers_mut().insert(WORKER_ID_HEADER, id);
    let connecting = tokio_tungstenite::connect_async_tls_with_config(
        req,
        Some(ws_config()),
        true,
        Some(Connector::Rustls(tls.clone())),
    );
    match tokio::time::timeout(timeout, connecting).await {
        Err(_) => Err(format!("timed out after {} s", timeout.as_secs())),
        Ok(Err(tungstenite::Error::Http(resp))) => {
            Err(format!("hub refused the connection: {}", resp.status()))
        }
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok((ws, _resp))) => Ok(ws),
    }
}

/// Sends one message as a JSON text frame.
pub(crate) async fn send(ws: &mut Ws, msg: &AgentMsg) -> Result<(), tungstenite::Error> {
    let text = serde_json::to_string(msg).expect("agent messages serialize");
    ws.send(Message::text(text)).await
}

/// Parses a hub text frame.
pub(crate) fn parse(text: &str) -> Result<HubMsg, serde_json::Error> {
    serde_json::from_str(text)
}
