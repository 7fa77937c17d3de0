//! The browser/CLI WebSocket session (`/ws/client`): output subscriptions (replay from an offset,
//! then live) and live job/worker events. One bounded outgoing queue per socket: a client that
//! does not read stalls only its own subscriptions, which then resync from the store. The queue
//! holds encoded messages (a live chunk's encoding is shared by all its subscribers); the session
//! writes whatever is queued and flushes once per batch.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use cmdx_proto::agent::ErrorMsg;
use cmdx_proto::client::{ClientMsg, ServerMsg};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::Hub;
use crate::auth::Caller;
use crate::relay::{self, Encoded, Outbox, Queued, SubEnd, encode};
use crate::ws::{Socket, send_batch};

/// Outgoing messages queued per client socket.
const OUT_QUEUE: usize = 16;
/// Most output subscriptions per socket.
const MAX_SUBS: usize = 64;

fn error(code: &str, message: impl Into<String>) -> Encoded {
    encode(&ServerMsg::Error(ErrorMsg {
        code: code.into(),
        message: message.into(),
    }))
}

/// Runs one client session for `caller`.
pub async fn session(hub: Arc<Hub>, ws: Socket, caller: Caller) {
    let _guard = hub.sessions.enter();
    let (out_tx, mut out_rx) = mpsc::channel::<Queued>(OUT_QUEUE);
    let out_tx = Outbox::new(out_tx, hub.config.client_socket_buffer_bytes);
    let (mut sink, mut stream) = ws.split();
    let mut subs: HashMap<String, JoinHandle<()>> = HashMap::new();
    let mut feeds = Feeds::default();
    let mut stop = hub.stop.subscribe();
    let mut ping = tokio::time::interval(Duration::from_secs(20));
    ping.tick().await;
    let mut close: Option<(CloseCode, &'static str)> = None;
    // The socket lives no longer than its session: it closes when the token expires or is
    // signed out.
    let left = caller
        .expires_s
        .saturating_sub(crate::store::now_ms() / 1000);
    let expiry = tokio::time::sleep(Duration::from_secs(left));
    tokio::pin!(expiry);
    let mut revocations = hub.auth.revocations();
    // The token was checked at the upgrade; a sign-out between then and this subscription
    // would otherwise go unseen, so the first turn checks it again.
    revocations.mark_changed();
    loop {
        tokio::select! {
            _ = &mut expiry => {
                close = Some((CloseCode::Policy, "session expired; sign in again"));
                break;
            }
            Ok(()) = revocations.changed() => {
                if hub.auth.is_ended(&caller) {
                    let why = if hub.auth.is_revoked(&caller.session_id) {
                        "signed out"
                    } else {
                        "an admin changed this account; sign in again"
                    };
                    close = Some((CloseCode::Policy, why));
                    break;
                }
            }
            out = out_rx.recv() => {
                let Some(text) = out else { break };
                if send_batch(&mut sink, &mut out_rx, text, |q| q.msg).await.is_err() {
                    break;
                }
            }
            incoming = stream.next() => {
                let msg = match incoming {
                    None => break,
                    Some(Err(e)) => {
                        if matches!(e, tokio_tungstenite::tungstenite::Error::Capacity(_)) {
                            close = Some((CloseCode::Size, "message too large"));
                        }
                        break;
                    }
                    Some(Ok(m)) => m,
                };
                match msg {
                    Message::Text(t) => match serde_json::from_str::<ClientMsg>(&t) {
                        Ok(m) => Box::pin(handle(&hub, &caller, m, &out_tx, &mut subs, &mut feeds)).await,
                        Err(e) => {
                            out_tx.send(error("bad_message", format!("unreadable message: {e}"))).await;
                        }
                    },
                    Message::Close(_) => break,
                    Message::Binary(_) => {
                        close = Some((CloseCode::Unsupported, "binary frames are not used"));
                        break;
                    }
                    _ => {}
                }
            }
            _ = ping.tick() => {
                if sink.send(Message::Ping(Vec::new().into())).await.is_err() {
                    break;
                }
            }
            _ = stop.changed() => {
                close = Some((CloseCode::Away, "hub shutting down"));
                break;
            }
        }
    }
    for (_, h) in subs {
        h.abort();
    }
    for h in [feeds.jobs, feeds.workers].into_iter().flatten() {
        h.abort();
    }
    if let Some((code, reason)) = close {
        let _ = sink
            .send(Message::Close(Some(CloseFrame {
                code,
                reason: reason.into(),
            })))
            .await;
    }
    let _ = sink.close().await;
}

async fn handle(
    hub: &Arc<Hub>,
    caller: &Caller,
    msg: ClientMsg,
    out: &Outbox,
    subs: &mut HashMap<String, JoinHandle<()>>,
    feeds: &mut Feeds,
) {
    subs.retain(|_, h| !h.is_finished());
    match msg {
        ClientMsg::SubscribeOutput { job_id, offset } => {
            let job = match crate::jobs::views::visible_job(hub, caller, &job_id).await {
                Ok(j) => j,
                Err(_) => {
                    out.send(error("not_found", format!("job {job_id} not found")))
                        .await;
                    return;
                }
            };
            if subs.len() >= MAX_SUBS {
                out.send(error(
                    "too_many_subscriptions",
                    "unsubscribe from some jobs first",
                ))
                .await;
                return;
            }
            if let Some(old) = subs.remove(&job.id) {
                old.abort();
            }
            let hub2 = hub.clone();
            let out2 = out.clone();
            let id = job.id.clone();
            let handle = hub.tasks.spawn(async move {
                let store = hub2.store.clone();
                let jid = id.clone();
                let is_terminal = || {
                    let store = store.clone();
                    let jid = jid.clone();
                    async move {
                        Ok(store
                            .get_job(&jid)
                            .await?
                            .is_none_or(|j| j.status.is_terminal()))
                    }
                };
                let (res, ()) = tokio::join!(
                    relay::subscribe(
                        hub2.store.as_ref(),
                        &hub2.relay,
                        &id,
                        offset,
                        &out2,
                        is_terminal,
                    ),
                    watch_queue(&hub2, &id, &out2),
                );
                match res {
                    Ok(SubEnd::Finished) => {
                        if let Ok(Some(job)) = hub2.store.get_job(&id).await {
                            let o = job.outcome.clone().unwrap_or_default();
                            let end = ServerMsg::OutputEnd {
                                job_id: id.clone(),
                                offset: job.output.total_bytes,
                                status: job.status,
                                exit_code: o.exit_code,
                                signal: o.signal,
                                failure: job.failure,
                            };
                            out2.send(encode(&end)).await;
                        }
                    }
                    Ok(SubEnd::ClientGone) => {}
                    Err(e) => {
                        tracing::error!(job_id = %id, error = %e, "output subscription failed");
                        out2.send(error("internal", "reading output failed")).await;
                    }
                }
            });
            subs.insert(job.id, handle);
        }
        ClientMsg::UnsubscribeOutput { job_id } => {
            if let Some(h) = subs.remove(&job_id) {
                h.abort();
            }
        }
        // One feed of each kind per socket: a repeat is a no-op (a client that resubscribes
        // after a reconnect opens a new socket anyway), so a flood of subscribe messages costs a
        // lookup each, not a task and a broadcast receiver each.
        ClientMsg::SubscribeJobs => {
            if feeds.jobs.is_none() {
                feeds.jobs = Some(spawn_feed(hub, caller.clone(), out.clone(), true));
            }
        }
        ClientMsg::SubscribeWorkers => {
            if feeds.workers.is_some() {
                return;
            }
            for v in hub.dispatch.views(hub.config.legacy_offline_secs * 1000) {
                let v = crate::jobs::views::worker_view_for(hub, caller, v).await;
                if !out.send(encode(&ServerMsg::Worker(v))).await {
                    return;
                }
            }
            feeds.workers = Some(spawn_feed(hub, caller.clone(), out.clone(), false));
        }
    }
}

/// How often a subscription to a queued job looks at its place in the queue.
const QUEUE_CHECK: Duration = Duration::from_secs(1);

/// While job `id` is queued, sends `queued` (position and the no-worker verdict) at once and
/// whenever it changes; when the job leaves the queue, one `job` message with its new status.
/// Returns then, or when the client is gone. A look is one dispatch-index count and one record
/// read per second per subscription to a queued job.
async fn watch_queue(hub: &Hub, id: &str, out: &Outbox) {
    let mut last = None;
    let mut tick = tokio::time::interval(QUEUE_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let job = match hub.store.get_job(id).await {
            Ok(Some(job)) => job,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(job_id = %id, error = %e, "reading a queued job failed");
                continue;
            }
        };
        let Some(state) = crate::jobs::views::queue_state(hub, &job) else {
            // Only a job this watch saw queued is announced as having left the queue.
            if last.is_some() {
                let _ = out
                    .send(encode(&ServerMsg::Job(crate::jobs::views::summary(&job))))
                    .await;
            }
            return;
        };
        if last != Some(state) {
            last = Some(state);
            let msg = ServerMsg::Queued {
                job_id: id.to_string(),
                position: state.position,
                no_matching_worker: state.no_matching_worker,
                reason: Some(state.reason),
            };
            if !out.send(encode(&msg)).await {
                return;
            }
        }
    }
}

/// A socket's event feeds, at most one of each kind.
#[derive(Default)]
struct Feeds {
    jobs: Option<JoinHandle<()>>,
    workers: Option<JoinHandle<()>>,
}

/// Forwards events the caller may see: job events (`jobs`) or worker events.
fn spawn_feed(hub: &Arc<Hub>, caller: Caller, out: Outbox, jobs: bool) -> JoinHandle<()> {
    let mut rx = hub.events.subscribe();
    let hub2 = hub.clone();
    hub.tasks.spawn(async move {
        let hub = hub2;
        loop {
            let ev = match rx.recv().await {
                Ok(ev) => ev,
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return,
            };
            let encoded = match &*ev.msg {
                ServerMsg::Job(_)
                    if jobs && ev.owner.as_deref().is_none_or(|o| caller.can_see(o)) =>
                {
                    encode(&ev.msg)
                }
                // Other tenants' job ids are taken out of a worker's `currentJobs`.
                ServerMsg::Worker(v)
                    if !jobs && !caller.is_admin() && !v.current_jobs.is_empty() =>
                {
                    let v = crate::jobs::views::worker_view_for(&hub, &caller, v.clone()).await;
                    encode(&ServerMsg::Worker(v))
                }
                ServerMsg::Worker(_) if !jobs => encode(&ev.msg),
                _ => continue,
            };
            if !out.send(encoded).await {
                return;
            }
        }
    })
}
