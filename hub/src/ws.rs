//! WebSocket plumbing shared by the agent and client protocols: a handshake done by hand on
//! warp's routes (warp's own `ws()` costs about 135 KiB per idle socket, and accepts malformed
//! keys), small per-socket buffers, bounded messages, and a session counter so
//! shutdown can wait for close frames to go out.
//!
//! Idle sessions are kept small (about 11 KiB per agent, 8.5 KB per client socket, measured
//! by `tests/it/security.rs`): queues hold boxed or encoded messages (a bounded tokio channel
//! allocates its first 32-slot block up front), the agent's output acker starts with its first
//! chunk, the handlers run as boxed futures outside the session task's state, and the task
//! itself is boxed by the hub's task tracker.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use hyper_util::rt::TokioIo;
use tokio::sync::Notify;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use warp::http::{HeaderMap, Response, StatusCode};
use warp::hyper::upgrade::{OnUpgrade, Upgraded};

use crate::error::HandshakeError;

/// An upgraded socket.
pub type Socket = WebSocketStream<TokioIo<Upgraded>>;

/// Validates the handshake headers; returns the `101` response.
pub fn handshake(headers: &HeaderMap) -> Result<warp::reply::Response, HandshakeError> {
    let has_token = |name: &str, want: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(want))
    };
    if !has_token("connection", "upgrade") || !has_token("upgrade", "websocket") {
        return Err(HandshakeError::NotUpgrade);
    }
    if headers
        .get("sec-websocket-version")
        .and_then(|v| v.to_str().ok())
        != Some("13")
    {
        return Err(HandshakeError::BadVersion);
    }
    let key = headers
        .get("sec-websocket-key")
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(key)
        .unwrap_or_default();
    if decoded.len() != 16 {
        return Err(HandshakeError::BadKey);
    }
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-accept", derive_accept_key(key))
        .body(warp::hyper::body::Bytes::new().into())
        .map_err(|e| HandshakeError::Response(e.to_string()))
}

/// Completes the upgrade (call from a spawned task, after the 101 went out). Frames are
/// buffered up to `write_buffer` bytes and written when it fills or the session flushes (the
/// sessions flush once per batch of queued messages); the buffer grows only as far as it is
/// used, so an idle socket does not pay for it.
pub async fn accept(
    on_upgrade: OnUpgrade,
    max_message: usize,
    write_buffer: usize,
) -> Option<Socket> {
    let upgraded = on_upgrade.await.ok()?;
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(write_buffer)
        .max_write_buffer_size(max_message * 2 + 65536)
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message));
    Some(WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config)).await)
}

/// Most queued messages written before one flush.
pub const WRITE_BATCH: usize = 64;

/// Writes `first` and whatever else is already queued in `rx` (up to [`WRITE_BATCH`] in all) as
/// text frames, then flushes once: a burst costs one `write` instead of one per message (with
/// the socket's write buffer; see [`accept`]).
pub async fn send_batch<S, T>(
    sink: &mut S,
    rx: &mut tokio::sync::mpsc::Receiver<T>,
    first: T,
    text: impl Fn(T) -> Utf8Bytes,
) -> Result<(), S::Error>
where
    S: futures_util::Sink<Message> + Unpin,
{
    use futures_util::SinkExt as _;
    sink.feed(Message::Text(text(first))).await?;
    for _ in 1..WRITE_BATCH {
        match rx.try_recv() {
            Ok(next) => sink.feed(Message::Text(text(next))).await?,
            Err(_) => break,
        }
    }
    sink.flush().await
}

/// Counts open sessions: all of them (shutdown waits for none), and client sockets in total and
/// per user (so users cannot take the sockets agents need, nor one user all of them).
#[derive(Default)]
pub struct Sessions {
    open: AtomicUsize,
    idle: Notify,
    agents: AtomicUsize,
    clients: std::sync::Mutex<ClientCounts>,
}

#[derive(Default)]
struct ClientCounts {
    total: usize,
    per_user: std::collections::HashMap<String, usize>,
}

/// Why a socket was refused a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotRefused {
    /// The hub holds its most sockets of this kind.
    Full,
    /// This user holds their most client sockets.
    UserFull,
}

/// A reserved agent socket slot, released on drop.
pub struct AgentSlot(std::sync::Arc<crate::Hub>);

impl Drop for AgentSlot {
    fn drop(&mut self) {
        self.0.sessions.agents.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A reserved client socket slot of one user, released on drop.
pub struct ClientSlot(std::sync::Arc<crate::Hub>, String);

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut c = self
            .0
            .sessions
            .clients
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_user.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                c.per_user.remove(&self.1);
            }
        }
    }
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

    /// Reserves one of `hub.config.max_agent_sockets` agent slots.
    pub fn reserve_agent(hub: &std::sync::Arc<crate::Hub>) -> Result<AgentSlot, SlotRefused> {
        let max = hub.config.max_agent_sockets;
        hub.sessions
            .agents
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < max).then_some(n + 1)
            })
            .map_err(|_| SlotRefused::Full)?;
        Ok(AgentSlot(hub.clone()))
    }

    /// Reserves a client slot for `user`: within `max_client_sockets` in all and
    /// `max_client_sockets_per_user` for that user.
    pub fn reserve_client(
        hub: &std::sync::Arc<crate::Hub>,
        user: &str,
    ) -> Result<ClientSlot, SlotRefused> {
        let mut c = hub
            .sessions
            .clients
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if c.total >= hub.config.max_client_sockets {
            return Err(SlotRefused::Full);
        }
        let mine = c.per_user.get(user).copied().unwrap_or(0);
        if mine >= hub.config.max_client_sockets_per_user {
            return Err(SlotRefused::UserFull);
        }
        c.total += 1;
        c.per_user.insert(user.to_string(), mine + 1);
        Ok(ClientSlot(hub.clone(), user.to_string()))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn send_batch_writes_what_is_queued_in_order_up_to_the_batch() {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Utf8Bytes>(WRITE_BATCH + 8);
        for i in 0..WRITE_BATCH + 5 {
            tx.send(Utf8Bytes::from(format!("m{i}")))
                .await
                .expect("queued");
        }
        let mut sink: Vec<Message> = Vec::new();
        let first = rx.recv().await.expect("first");
        send_batch(&mut sink, &mut rx, first, |t| t)
            .await
            .expect("written");
        let texts: Vec<String> = sink
            .iter()
            .map(|m| m.to_text().expect("text").to_string())
            .collect();
        let want: Vec<String> = (0..WRITE_BATCH).map(|i| format!("m{i}")).collect();
        assert_eq!(texts, want);
        assert_eq!(rx.len(), 5, "the rest waits for the next batch");
    }
}
