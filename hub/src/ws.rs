//! WebSocket plumbing shared by the agent and client protocols: a handshake done by hand on
//! warp's routes (warp's own `ws()` costs ~135 KiB per idle socket and accepts malformed keys;
//! see PLATFORM-NOTES.md), small per-socket buffers, bounded messages, and a session counter so
//! shutdown can wait for close frames to go out.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use hyper_util::rt::TokioIo;
use tokio::sync::Notify;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use warp::http::{HeaderMap, Response, StatusCode};
use warp::hyper::upgrade::{OnUpgrade, Upgraded};

use crate::error::ApiError;

/// An upgraded socket.
pub type Socket = WebSocketStream<TokioIo<Upgraded>>;

/// Validates the handshake headers; returns the `101` response.
pub fn handshake(headers: &HeaderMap) -> Result<warp::reply::Response, ApiError> {
    let has_token = |name: &str, want: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(want))
    };
    if !has_token("connection", "upgrade") || !has_token("upgrade", "websocket") {
        return Err(ApiError::new(
            StatusCode::UPGRADE_REQUIRED,
            "upgrade_required",
            "this route expects a websocket upgrade",
        ));
    }
    if headers
        .get("sec-websocket-version")
        .and_then(|v| v.to_str().ok())
        != Some("13")
    {
        let mut e = ApiError::new(
            StatusCode::UPGRADE_REQUIRED,
            "bad_websocket_version",
            "websocket version 13 required",
        );
        e.retry_after = None;
        return Err(e);
    }
    let key = headers
        .get("sec-websocket-key")
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(key)
        .unwrap_or_default();
    if decoded.len() != 16 {
        return Err(ApiError::bad_request("malformed sec-websocket-key"));
    }
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-accept", derive_accept_key(key))
        .body(warp::hyper::body::Bytes::new().into())
        .map_err(ApiError::internal)
}

/// Completes the upgrade (call from a spawned task, after the 101 went out).
pub async fn accept(on_upgrade: OnUpgrade, max_message: usize) -> Option<Socket> {
    let upgraded = on_upgrade.await.ok()?;
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_write_buffer_size(max_message * 2 + 65536)
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message));
    Some(WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config)).await)
}

/// Counts open sessions.
#[derive(Default)]
pub struct Sessions {
    open: AtomicUsize,
    idle: Notify,
}

/// Held by a session task; dropping it counts the session closed.
pub struct SessionGuard<'a>(&'a Sessions);

impl Sessions {
    /// Counts a session open until the guard drops.
    pub fn enter(&self) -> SessionGuard<'_> {
        self.open.fetch_add(1, Ordering::SeqCst);
        SessionGuard(self)
    }

    /// Open sessions now.
    pub fn count(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Waits until no session is open, or `limit`.
    pub async fn wait_idle(&self, limit: Duration) {
        let _ = tokio::time::timeout(limit, async {
            while self.count() > 0 {
                let notified = self.idle.notified();
                if self.count() == 0 {
                    break;
                }
                let _ = tokio::time::timeout(Duration::from_millis(50), notified).await;
            }
        })
        .await;
    }
}

impl Drop for SessionGuard<'_> {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}
