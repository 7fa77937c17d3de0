//! Subscribers: a client socket's [`Outbox`] (bounded queue plus byte budget) and
//! [`subscribe`], which replays a job's stored log and then follows it live with no gap and no
//! duplicate at the seam.

use std::sync::Arc;

use cmdx_proto::Bytes64;
use cmdx_proto::client::{ServerMsg, SkipReason};
use tokio::sync::{broadcast, mpsc};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::{Relay, RelayItem};
use crate::store::{ChunkRecord, Store, StoreResult};

/// A JSON-encoded [`ServerMsg`] queued for a client socket; clones share the bytes.
pub type Encoded = Utf8Bytes;

/// Encodes one message for a client socket.
pub fn encode(msg: &ServerMsg) -> Encoded {
    Utf8Bytes::from(serde_json::to_string(msg).unwrap_or_default())
}

/// A message queued for one client socket, holding its share of the socket's byte budget until
/// the socket writes it.
pub struct Queued {
    /// The encoded message.
    pub msg: Encoded,
    _held: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// What one client socket's subscriptions and feeds send through: a bounded queue, plus a byte
/// budget shared by everything the socket has in flight (output pages read from the store and
/// output messages queued). Output waits for room in the budget, so a client that stops reading
/// costs the hub at most the budget (plus a page being read) however many subscriptions it has.
#[derive(Clone)]
pub struct Outbox {
    tx: mpsc::Sender<Queued>,
    budget: Arc<tokio::sync::Semaphore>,
    cap: u32,
}

impl Outbox {
    /// An outbox over `tx` with a budget of `budget_bytes` (at least 64 KiB).
    pub fn new(tx: mpsc::Sender<Queued>, budget_bytes: usize) -> Outbox {
        let cap = budget_bytes.clamp(64 * 1024, u32::MAX as usize >> 1);
        Outbox {
            tx,
            budget: Arc::new(tokio::sync::Semaphore::new(cap)),
            cap: cap as u32,
        }
    }

    /// Queues a small control message (errors, job and worker events) outside the budget: the
    /// queue's length bounds those. False when the socket is gone.
    pub async fn send(&self, msg: Encoded) -> bool {
        self.tx.send(Queued { msg, _held: None }).await.is_ok()
    }

    /// Queues an output message once the budget has room for it. False when the socket is gone.
    pub async fn send_output(&self, msg: Encoded) -> bool {
        let want = (msg.len() as u32).clamp(1, self.cap);
        let Ok(held) = self.budget.clone().acquire_many_owned(want).await else {
            return false;
        };
        self.send_held(msg, Some(held)).await
    }

    async fn send_held(
        &self,
        msg: Encoded,
        held: Option<tokio::sync::OwnedSemaphorePermit>,
    ) -> bool {
        self.tx.send(Queued { msg, _held: held }).await.is_ok()
    }

    /// Takes room for one replay page before it is read.
    async fn page_room(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let want = (REPLAY_PAGE as u32 * 3 / 2).min(self.cap);
        self.budget.clone().acquire_many_owned(want).await.ok()
    }
}

/// Bytes a subscription reads from the store at a time when replaying (its encoding is about 4/3
/// of it, and it is taken from the socket's budget before the read).
const REPLAY_PAGE: usize = 64 * 1024;

/// Why a subscription ended.
pub enum SubEnd {
    /// The job is terminal and every byte was sent.
    Finished,
    /// The client went away.
    ClientGone,
}

/// Where a subscription stands: the next byte to send, and the attempt whose output it sent
/// last (0 before any).
struct Cursor {
    offset: u64,
    attempt: u32,
}

impl Cursor {
    /// Before chunk `c`, the message saying a new attempt's output starts there, when the
    /// subscription sent an earlier attempt's output (from its start, the skip says it).
    fn attempt_mark(&mut self, job_id: &str, c: &ChunkRecord) -> Option<Encoded> {
        let earlier = self.attempt;
        self.attempt = self.attempt.max(c.attempt);
        (earlier != 0 && c.attempt > earlier).then(|| {
            encode(&ServerMsg::OutputAttempt {
                job_id: job_id.to_string(),
                offset: c.offset.max(self.offset),
                attempt: c.attempt,
            })
        })
    }
}

/// Streams `job_id`'s log from `offset` to `out`: stored bytes, then live ones. Returns when the
/// job is terminal (after sending everything) or the client is gone. `is_terminal` re-reads the
/// job's state from the store.
pub async fn subscribe<F, Fut>(
    store: &dyn Store,
    relay: &Relay,
    job_id: &str,
    offset: u64,
    out: &Outbox,
    is_terminal: F,
) -> StoreResult<SubEnd>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = StoreResult<bool>>,
{
    let live = relay.live(job_id);
    let mut rx = live.tx.subscribe();
    drop(live);
    let mut at = Cursor { offset, attempt: 0 };
    // Replay what is stored, then check whether the job already ended.
    if !replay(store, job_id, &mut at, out).await? {
        return Ok(SubEnd::ClientGone);
    }
    if is_terminal().await? {
        drop(rx);
        relay.forget_if_idle(job_id);
        if !replay(store, job_id, &mut at, out).await? {
            return Ok(SubEnd::ClientGone);
        }
        return Ok(SubEnd::Finished);
    }
    loop {
        match rx.recv().await {
            Ok(RelayItem::Chunk(live)) => {
                let c = &live.record;
                if c.end() <= at.offset {
                    continue;
                }
                if c.offset > at.offset {
                    // Something between: read it from the store (includes this chunk).
                    if !replay(store, job_id, &mut at, out).await? {
                        return Ok(SubEnd::ClientGone);
                    }
                    continue;
                }
                if let Some(mark) = at.attempt_mark(job_id, c)
                    && !out.send(mark).await
                {
                    return Ok(SubEnd::ClientGone);
                }
                let msg = if c.offset == at.offset {
                    live.encoded(job_id)
                } else {
                    let skip = (at.offset - c.offset) as usize;
                    encode(&ServerMsg::Output {
                        job_id: job_id.to_string(),
                        offset: at.offset,
                        stream: c.stream,
                        data: Bytes64(c.data[skip..].to_vec()),
                        time_ms: c.time_ms,
                    })
                };
                if !out.send_output(msg).await {
                    return Ok(SubEnd::ClientGone);
                }
                at.offset = c.end();
            }
            Ok(RelayItem::Job(msg)) => {
                if !out.send(msg).await {
                    return Ok(SubEnd::ClientGone);
                }
            }
            Ok(RelayItem::End) | Err(broadcast::error::RecvError::Closed) => {
                if !replay(store, job_id, &mut at, out).await? {
                    return Ok(SubEnd::ClientGone);
                }
                return Ok(SubEnd::Finished);
            }
            Err(broadcast::error::RecvError::Lagged(_)) => {
                if !replay(store, job_id, &mut at, out).await? {
                    return Ok(SubEnd::ClientGone);
                }
                if is_terminal().await? {
                    if !replay(store, job_id, &mut at, out).await? {
                        return Ok(SubEnd::ClientGone);
                    }
                    return Ok(SubEnd::Finished);
                }
            }
        }
    }
}

/// Sends stored bytes from `at` to the store's current end; false when the client is gone.
/// Each page's room in the socket's budget is taken before the page is read, then handed to its
/// messages, so a stalled client's subscriptions wait without holding pages.
async fn replay(
    store: &dyn Store,
    job_id: &str,
    at: &mut Cursor,
    out: &Outbox,
) -> StoreResult<bool> {
    let Some(mut idx) = store.chunk_index_at(job_id, at.offset).await? else {
        return Ok(true);
    };
    loop {
        let Some(mut room) = out.page_room().await else {
            return Ok(false);
        };
        let page = store.read_chunks(job_id, idx, REPLAY_PAGE).await?;
        let Some(tail) = page.last() else {
            return Ok(true);
        };
        idx = tail.index + 1;
        for c in page {
            if c.end() <= at.offset {
                continue;
            }
            if c.offset > at.offset {
                // The cap or a new attempt dropped bytes the client asked for: a new attempt
                // when the first byte left is its first (the cap dropped none of it).
                let reason = if c.attempt > 1 && c.seq == 0 {
                    SkipReason::EarlierAttempt
                } else {
                    SkipReason::Cap
                };
                let msg = ServerMsg::OutputSkipped {
                    job_id: job_id.to_string(),
                    offset: c.offset,
                    reason,
                };
                if !out.send(encode(&msg)).await {
                    return Ok(false);
                }
                at.offset = c.offset;
            }
            if let Some(mark) = at.attempt_mark(job_id, &c)
                && !out.send(mark).await
            {
                return Ok(false);
            }
            let skip = (at.offset - c.offset) as usize;
            let end = c.end();
            let mut data = c.data;
            if skip > 0 {
                data.drain(..skip);
            }
            let msg = encode(&ServerMsg::Output {
                job_id: job_id.to_string(),
                offset: at.offset,
                stream: c.stream,
                data: Bytes64(data),
                time_ms: c.time_ms,
            });
            // The message takes its share of the page's room; a chunk larger than what is left
            // takes the rest (a chunk is bounded by the agent message limit).
            let share = room.split(msg.len().min(room.num_permits()));
            if !out.send_held(msg, share).await {
                return Ok(false);
            }
            at.offset = end;
        }
    }
}
