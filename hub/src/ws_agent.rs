//! The agent WebSocket session (`/ws/agent`): handshake, resume of held jobs, then one loop that
//! handles each [`AgentMsg`] through one exhaustive `match`. Output acknowledgements go through a
//! per-session acker task (started with the first chunk) so that many chunks share one store
//! flush. Outgoing messages queue boxed and go out in batches with one flush each.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use cmdx_proto::PROTOCOL_VERSION;
use cmdx_proto::agent::{
    Abandon, AgentMsg, ErrorMsg, Finished, Hello, HubMsg, JobRef, OutputAck, Resume, Welcome,
};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::Hub;
use crate::dispatch::AgentTx;
use crate::jobs::lifecycle::{self, FinishReport};
use crate::jobs::{LifecycleError, liveness};
use crate::store::{StoreError, WorkerRecord, now_ms};
use crate::ws::{Socket, send_batch};

/// Outgoing queue per agent.
const OUT_QUEUE: usize = 1024;
/// Time allowed for `hello`.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

fn valid_worker_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
}

async fn send_close(ws: &mut Socket, code: CloseCode, reason: &str) {
    let _ = ws
        .send(Message::Close(Some(CloseFrame {
            code,
            reason: reason.to_string().into(),
        })))
        .await;
}

/// Runs one agent session on an upgraded socket authenticated with `token_id`.
pub async fn session(hub: Arc<Hub>, mut ws: Socket, token_id: String) {
    let _guard = hub.sessions.enter();
    let hello = match tokio::time::timeout(HELLO_TIMEOUT, ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) => serde_json::from_str::<AgentMsg>(&t),
        _ => {
            send_close(&mut ws, CloseCode::Policy, "expected hello").await;
            return;
        }
    };
    let hello = match hello {
        Ok(AgentMsg::Hello(h)) => h,
        _ => {
            send_close(&mut ws, CloseCode::Policy, "expected hello").await;
            return;
        }
    };
    if hello.protocol_version != PROTOCOL_VERSION || !valid_worker_id(&hello.worker_id) {
        let msg = HubMsg::Error(ErrorMsg {
            code: "protocol_version".into(),
            message: format!(
                "hub speaks protocol {PROTOCOL_VERSION}, worker ids are [A-Za-z0-9._:-]{{1,128}}"
            ),
        });
        let _ = ws
            .send(Message::text(
                serde_json::to_string(&msg).unwrap_or_default(),
            ))
            .await;
        send_close(&mut ws, CloseCode::Protocol, "protocol version").await;
        return;
    }
    if let Err((code, message)) = admit(&hub, &hello, &token_id).await {
        tracing::warn!(worker_id = %hello.worker_id, token_id = %token_id, code, %message,
            "agent refused");
        let msg = HubMsg::Error(ErrorMsg {
            code: code.into(),
            message,
        });
        let _ = ws
            .send(Message::text(
                serde_json::to_string(&msg).unwrap_or_default(),
            ))
            .await;
        send_close(&mut ws, CloseCode::Policy, code).await;
        return;
    }
    let worker_id = hello.worker_id.clone();
    let (tx, mut rx) = mpsc::channel::<Box<HubMsg>>(OUT_QUEUE);
    let record = worker_record(&hello, &token_id);
    if let Err(e) = hub.store.put_worker(&record).await {
        tracing::error!(error = %e, "storing worker failed");
    }
    let mut held_before = hub.dispatch.held(&worker_id);
    if hub.cluster.is_shared() {
        // Another hub of the cluster may have handed it jobs: the records say which, and a
        // job the agent does not report now is a lost attempt wherever it was assigned.
        match hub.store.jobs_held_by(&worker_id).await {
            Ok(ids) => {
                for id in ids {
                    if !held_before.contains(&id) {
                        held_before.push(id);
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "reading the worker's jobs failed"),
        }
    }
    let kick = tokio_util::sync::CancellationToken::new();
    let (generation, old) =
        hub.dispatch
            .connect(record, token_id.clone(), tx.clone(), kick.clone());
    if let Some(old) = old {
        old.kick.cancel();
    }
    // A revoke between `admit` and `connect` found no session to close: now that this one is
    // registered, a revoke from here on closes it, and one before shows as a missing token.
    if matches!(hub.store.get_worker_token(&token_id).await, Ok(None)) {
        kick.cancel();
    }
    tracing::info!(worker_id = %worker_id, generation, "agent connected");
    // The other hubs of a cluster see at once that this hub holds the worker now.
    if let Err(e) = hub
        .store
        .mark_present(&hub.cluster.id, std::slice::from_ref(&worker_id))
        .await
    {
        tracing::warn!(error = %e, "marking the worker present failed");
    }

    // Boxed: the resume path's state would otherwise be part of every idle session's task.
    let welcome = Box::pin(resume_held(
        &hub,
        &hello,
        &worker_id,
        &token_id,
        held_before,
    ))
    .await;
    let cancels: Vec<HubMsg> = welcome.1;
    let first = HubMsg::Welcome(welcome.0);
    if ws
        .send(Message::text(
            serde_json::to_string(&first).unwrap_or_default(),
        ))
        .await
        .is_err()
    {
        end_session(&hub, &worker_id, generation);
        return;
    }
    for c in cancels {
        let _ = tx.send(Box::new(c)).await;
    }
    if let Some(v) = hub
        .dispatch
        .view(&worker_id, hub.config.legacy_offline_secs * 1000)
    {
        hub.emit(None, cmdx_proto::client::ServerMsg::Worker(v));
    }

    let mut acker = Acker::new(hub.clone(), tx.clone());

    let (mut sink, mut stream) = ws.split();
    let mut stop = hub.stop.subscribe();
    let idle = Duration::from_secs(hub.config.heartbeat_secs * 3 + 15);
    let mut ping = tokio::time::interval(Duration::from_secs(15));
    ping.tick().await;
    let mut close_reason: Option<(CloseCode, &'static str)> = None;
    loop {
        tokio::select! {
            out = rx.recv() => {
                let Some(msg) = out else { break };
                if send_batch(&mut sink, &mut rx, msg, encode).await.is_err() {
                    break;
                }
            }
            incoming = tokio::time::timeout(idle, stream.next()) => {
                let msg = match incoming {
                    Err(_) => { close_reason = Some((CloseCode::Away, "idle timeout")); break; }
                    Ok(None) | Ok(Some(Err(_))) => break,
                    Ok(Some(Ok(m))) => m,
                };
                let mut next = Some(msg);
                while let Some(msg) = next.take() {
                    match msg {
                        Message::Text(t) => match serde_json::from_str::<AgentMsg>(&t) {
                            Ok(AgentMsg::Output(first)) => {
                                // Output chunks already received are stored as one batch (one
                                // store write, one acknowledgement).
                                let (batch, after) = ready_output(&mut stream, first);
                                next = after;
                                Box::pin(lifecycle_output(&hub, &worker_id, &token_id, batch, &tx, &mut acker)).await;
                            }
                            // Boxed: keeps the handlers' state out of the idle session's task.
                            Ok(m) => {
                                Box::pin(handle(&hub, &worker_id, &token_id, m, &tx, &mut acker)).await
                            }
                            Err(e) => {
                                let _ = tx.send(Box::new(HubMsg::Error(ErrorMsg {
                                    code: "bad_message".into(),
                                    message: format!("unreadable message: {e}"),
                                }))).await;
                            }
                        },
                        Message::Binary(_) => {
                            close_reason = Some((CloseCode::Unsupported, "binary frames are not used"));
                        }
                        Message::Close(_) => close_reason = Some((CloseCode::Normal, "")),
                        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
                    }
                }
                if let Some((CloseCode::Normal, _)) = close_reason {
                    close_reason = None;
                    break;
                }
                if close_reason.is_some() {
                    break;
                }
            }
            _ = ping.tick() => {
                if sink.send(Message::Ping(Vec::new().into())).await.is_err() {
                    break;
                }
            }
            _ = kick.cancelled() => {
                // Kicked: replaced by a newer connection, removed by an admin, or its token
                // was revoked.
                let revoked = matches!(hub.store.get_worker_token(&token_id).await, Ok(None));
                close_reason = Some((
                    CloseCode::Policy,
                    if revoked { "worker token revoked" } else { "replaced by a newer connection" },
                ));
                break;
            }
            _ = stop.changed() => {
                close_reason = Some((CloseCode::Away, "hub shutting down"));
                break;
            }
        }
    }
    acker.stop();
    if let Some((code, reason)) = close_reason {
        let _ = sink
            .send(Message::Close(Some(CloseFrame {
                code,
                reason: reason.into(),
            })))
            .await;
    }
    let _ = sink.close().await;
    end_session(&hub, &worker_id, generation);
}

fn end_session(hub: &Arc<Hub>, worker_id: &str, generation: u64) {
    if hub.dispatch.disconnect(worker_id, generation) {
        tracing::info!(worker_id, "agent disconnected; reconnect grace started");
        liveness::start_grace(
            hub,
            worker_id.to_string(),
            hub.dispatch.generation(worker_id).unwrap_or(0),
        );
        if let Some(v) = hub
            .dispatch
            .view(worker_id, hub.config.legacy_offline_secs * 1000)
        {
            hub.emit(None, cmdx_proto::client::ServerMsg::Worker(v));
        }
    }
}

/// Whether `hello` may enrol with `token_id`: the token still exists, its tag scope (if any)
/// covers every tag the agent advertises, and the worker id is not enrolled with another live
/// token. A worker id belongs to the token that enrolled it until an admin removes the worker
/// (`DELETE /api/workers/{id}`) or that token is revoked or expires; so another token cannot
/// take over an agent's id, its jobs and their secrets. `Err((code, message))` otherwise.
async fn admit(hub: &Hub, hello: &Hello, token_id: &str) -> Result<(), (&'static str, String)> {
    // A tag no job can name (`cmdx agent` checks its own before it connects).
    if let Some(e) = hello.tags.iter().find_map(|t| cmdx_proto::tag_error(t)) {
        return Err(("invalid_tags", e));
    }
    let token = match hub.store.get_worker_token(token_id).await {
        Ok(Some(t)) => t,
        Ok(None) => return Err(("token_revoked", "worker token revoked".into())),
        Err(e) => return Err(("unavailable", format!("store unavailable: {e}"))),
    };
    if let Some(scope) = &token.tags
        && let Some(bad) = hello.tags.iter().find(|t| !scope.contains(t))
    {
        return Err((
            "tags_out_of_scope",
            format!(
                "tag {bad} is outside this worker token's scope [{}]; mint a token for it \
                 (cmdx token worker --tags ...)",
                scope.join(", ")
            ),
        ));
    }
    if id_taken_by_another_token(hub, &hello.worker_id, token_id).await {
        return Err((
            "worker_id_taken",
            format!(
                "worker id {} is enrolled with another worker token; an admin frees it by \
                 removing the worker (DELETE /api/workers/{}) or revoking that token",
                hello.worker_id, hello.worker_id
            ),
        ));
    }
    Ok(())
}

/// Whether `worker_id` is enrolled with a minted token other than `token_id` that is still
/// live (not revoked, not expired). The shared legacy credential binds nothing.
pub(crate) async fn id_taken_by_another_token(hub: &Hub, worker_id: &str, token_id: &str) -> bool {
    let Some(bound) = hub.dispatch.bound_token(worker_id) else {
        return false;
    };
    if bound == token_id {
        return false;
    }
    match hub.store.get_worker_token(&bound).await {
        Ok(Some(t)) => t.expires_ms > now_ms(),
        Ok(None) => false,
        Err(_) => true,
    }
}

fn worker_record(hello: &Hello, token_id: &str) -> WorkerRecord {
    WorkerRecord {
        v: 1,
        id: hello.worker_id.clone(),
        kind: "agent".into(),
        hostname: hello.hostname.chars().take(256).collect(),
        os: hello.os.chars().take(256).collect(),
        version: hello.version.chars().take(64).collect(),
        cpu_count: hello.cpu_count,
        total_memory_mb: hello.total_memory_mb,
        tags: hello.tags.iter().take(64).cloned().collect(),
        slots: hello.concurrency.clamp(1, 1024),
        isolation_active: hello.isolation.active.clone(),
        isolation_missing: hello.isolation.missing.clone(),
        isolation_mode: hello.isolation.mode.clone(),
        token_id: Some(token_id.to_string()),
        last_seen_ms: now_ms(),
    }
}

/// Decides, for each job the agent holds, resume or abandon; jobs the hub thinks the worker
/// holds but the agent does not are lost attempts (the agent restarted). Also returns the
/// control messages to re-send for resumed jobs: cancel requests and terminal sizes.
async fn resume_held(
    hub: &Arc<Hub>,
    hello: &Hello,
    worker_id: &str,
    token_id: &str,
    held_before: Vec<String>,
) -> (Welcome, Vec<HubMsg>) {
    let mut resume = Vec::new();
    let mut abandon = Vec::new();
    let mut cancels = Vec::new();
    let mut held_ids = std::collections::HashSet::new();
    for h in &hello.held {
        held_ids.insert(h.job_id.clone());
        let job = hub.store.get_job(&h.job_id).await.ok().flatten();
        match job {
            Some(job) if job.held_by(worker_id, h.attempt, token_id) => {
                hub.dispatch.hold(worker_id, &job.id, &job.owner);
                let stored = {
                    let mut log = hub.relay.log(&job.id).await;
                    if log.loaded_attempt() != Some(h.attempt) {
                        let owner = (worker_id.to_string(), token_id.to_string());
                        let first = job.output.first_index;
                        let loaded = log.load(hub.store.as_ref(), h.attempt, owner, first).await;
                        if let Err(e) = loaded {
                            tracing::error!(error = %e, "loading output state failed");
                        }
                    }
                    log.next_seq()
                };
                if job.cancel_requested {
                    cancels.push(lifecycle::cancel_message(hub, &job));
                }
                // A resize stored while the agent was away (the agent ignores its own size).
                cancels.extend(lifecycle::resize_message(&job));
                resume.push(Resume {
                    job_id: job.id,
                    attempt: h.attempt,
                    stored_chunks: stored,
                    finished: false,
                });
            }
            Some(job)
                if job.status.is_terminal()
                    && job.attempt == h.attempt
                    && job.worker_id.as_deref() == Some(worker_id)
                    && job.outcome.is_some() =>
            {
                resume.push(Resume {
                    job_id: job.id,
                    attempt: h.attempt,
                    stored_chunks: h.chunks,
                    finished: true,
                });
            }
            _ => abandon.push(JobRef {
                job_id: h.job_id.clone(),
                attempt: h.attempt,
            }),
        }
    }
    // Jobs assigned to this worker before it connected that it does not report: lost attempts.
    for job_id in held_before {
        if held_ids.contains(&job_id) {
            continue;
        }
        if let Ok(Some(job)) = hub.store.get_job(&job_id).await
            && job.worker_id.as_deref() == Some(worker_id)
            && !job.status.is_terminal()
        {
            let _ =
                lifecycle::requeue_or_fail(hub, &job_id, worker_id, job.attempt, "agent restarted")
                    .await;
            continue;
        }
        hub.dispatch.release(worker_id, &job_id);
    }
    (
        Welcome {
            protocol_version: PROTOCOL_VERSION,
            worker_id: worker_id.to_string(),
            heartbeat_secs: hub.config.heartbeat_secs,
            resume,
            abandon,
        },
        cancels,
    )
}

fn encode(msg: Box<HubMsg>) -> Utf8Bytes {
    Utf8Bytes::from(serde_json::to_string(&msg).unwrap_or_default())
}

async fn abandon(tx: &AgentTx, job_id: &str, attempt: u32, reason: &str) {
    let _ = tx
        .send(Box::new(HubMsg::Abandon(Abandon {
            job_id: job_id.to_string(),
            attempt,
            reason: reason.to_string(),
        })))
        .await;
}

/// `(job id, attempt, stored chunks)` waiting for a flush.
type AckItem = (String, u32, u64);

struct Acker {
    hub: Arc<Hub>,
    out: AgentTx,
    running: Option<(mpsc::Sender<AckItem>, tokio::task::JoinHandle<()>)>,
}

impl Acker {
    fn new(hub: Arc<Hub>, out: AgentTx) -> Acker {
        Acker {
            hub,
            out,
            running: None,
        }
    }

    /// Queues an acknowledgement, to be sent once the store flush covers it.
    async fn ack(&mut self, job_id: String, attempt: u32, stored: u64) {
        let (tx, _) = self.running.get_or_insert_with(|| {
            let (tx, rx) = mpsc::channel(4096);
            let task = self
                .hub
                .tasks
                .spawn(run_acker(self.hub.clone(), self.out.clone(), rx));
            (tx, task)
        });
        let _ = tx.send((job_id, attempt, stored)).await;
    }

    fn stop(&mut self) {
        if let Some((_, task)) = self.running.take() {
            task.abort();
        }
    }
}

async fn run_acker(hub: Arc<Hub>, out: AgentTx, mut rx: mpsc::Receiver<AckItem>) {
    while let Some(first) = rx.recv().await {
        let mut latest: HashMap<(String, u32), u64> = HashMap::new();
        latest.insert((first.0, first.1), first.2);
        while let Ok((j, a, n)) = rx.try_recv() {
            let e = latest.entry((j, a)).or_insert(0);
            *e = (*e).max(n);
        }
        if hub.store.sync().await.is_err() {
            continue;
        }
        for ((job_id, attempt), stored_chunks) in latest {
            let msg = HubMsg::OutputAck(OutputAck {
                job_id,
                attempt,
                stored_chunks,
            });
            if out.send(Box::new(msg)).await.is_err() {
                return;
            }
        }
    }
}

/// The agent's side of a refused report (the one place a [`LifecycleError`] meets the agent
/// protocol): an attempt the hub no longer gives this worker (stale, or the job is gone) is
/// abandoned; anything else is logged, and the agent sends the report again later.
async fn refused(
    hub: &Hub,
    worker_id: &str,
    tx: &AgentTx,
    job_id: &str,
    attempt: u32,
    what: &str,
    e: &LifecycleError,
) {
    match e {
        LifecycleError::Stale(_)
        | LifecycleError::NotFound(_)
        | LifecycleError::Store(StoreError::NotFound(_)) => {
            abandon(tx, job_id, attempt, "stale attempt").await;
        }
        LifecycleError::Store(StoreError::Unavailable { .. } | StoreError::Backend { .. }) => {
            // The report was not recorded and the agent will not send it again on this
            // connection: close it, so the agent reconnects and its hello and resume replay what
            // the store lacks (unacknowledged output, its finish report).
            tracing::warn!(job_id, worker_id, error = %e, "{what} not stored; the agent reconnects");
            if let Some(conn) = hub.dispatch.conn(worker_id) {
                conn.kick.cancel();
            }
        }
        LifecycleError::Invalid(_)
        | LifecycleError::Unavailable(_)
        | LifecycleError::Forbidden(_)
        | LifecycleError::NotRunning(_)
        | LifecycleError::NoTerminal(_)
        | LifecycleError::Quota { .. }
        | LifecycleError::Store(_) => {
            tracing::warn!(job_id, error = %e, "{what} rejected");
        }
    }
}

/// Most output chunks stored as one batch.
const OUTPUT_BATCH: usize = 256;

/// `first` and the output chunks of the same attempt that were already received behind it (no
/// waiting), up to [`OUTPUT_BATCH`]; and the first message that is not one of them, if read.
fn ready_output<S>(
    stream: &mut S,
    first: cmdx_proto::agent::OutputChunk,
) -> (Vec<cmdx_proto::agent::OutputChunk>, Option<Message>)
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    use futures_util::FutureExt;
    let mut batch = vec![first];
    while batch.len() < OUTPUT_BATCH {
        let Some(Some(Ok(msg))) = stream.next().now_or_never() else {
            break;
        };
        if let Message::Text(t) = &msg
            && let Ok(AgentMsg::Output(c)) = serde_json::from_str::<AgentMsg>(t)
            && c.job_id == batch[0].job_id
            && c.attempt == batch[0].attempt
        {
            batch.push(c);
            continue;
        }
        return (batch, Some(msg));
    }
    (batch, None)
}

/// Stores a batch of one attempt's output chunks and acknowledges what is stored.
async fn lifecycle_output(
    hub: &Arc<Hub>,
    worker_id: &str,
    token_id: &str,
    batch: Vec<cmdx_proto::agent::OutputChunk>,
    tx: &AgentTx,
    acker: &mut Acker,
) {
    let (job_id, attempt) = (batch[0].job_id.clone(), batch[0].attempt);
    match lifecycle::append_output(hub, worker_id, token_id, batch).await {
        Ok(stored) => acker.ack(job_id, attempt, stored).await,
        Err(e) => refused(hub, worker_id, tx, &job_id, attempt, "output", &e).await,
    }
}

/// One handler per message type.
async fn handle(
    hub: &Arc<Hub>,
    worker_id: &str,
    token_id: &str,
    msg: AgentMsg,
    tx: &AgentTx,
    acker: &mut Acker,
) {
    match msg {
        AgentMsg::Hello(_) => {
            let _ = tx
                .send(Box::new(HubMsg::Error(ErrorMsg {
                    code: "bad_message".into(),
                    message: "hello sent twice".into(),
                })))
                .await;
        }
        AgentMsg::Accept(r) => {
            tracing::debug!(job_id = %r.job_id, attempt = r.attempt, "assignment accepted");
        }
        AgentMsg::Reject(r) => {
            tracing::info!(job_id = %r.job_id, reason = %r.reason, "assignment rejected");
            let requeued = lifecycle::requeue_rejected(
                hub,
                &r.job_id,
                worker_id,
                r.attempt,
                "rejected by worker",
            )
            .await;
            if let Err(e) = requeued {
                tracing::warn!(error = %e, "requeue after reject failed");
            }
        }
        AgentMsg::Started(s) => {
            match lifecycle::started(hub, worker_id, token_id, &s.job_id, s.attempt).await {
                Ok(()) => {}
                // Not recorded: the agent reconnects and resumes the job.
                Err(
                    e @ LifecycleError::Store(
                        StoreError::Unavailable { .. } | StoreError::Backend { .. },
                    ),
                ) => refused(hub, worker_id, tx, &s.job_id, s.attempt, "start", &e).await,
                Err(_) => abandon(tx, &s.job_id, s.attempt, "stale attempt").await,
            }
        }
        AgentMsg::Output(chunk) => {
            lifecycle_output(hub, worker_id, token_id, vec![chunk], tx, acker).await;
        }
        AgentMsg::Finished(Finished {
            job_id,
            attempt,
            chunks,
            outcome,
        }) => {
            let report = FinishReport {
                attempt: Some(attempt),
                chunks: Some(chunks),
                outcome,
            };
            match lifecycle::record_finish(hub, worker_id, token_id, &job_id, report).await {
                Ok((job, fresh)) => {
                    // Ack before the slot is freed: an `assign` queued behind the ack then finds
                    // the agent's slot free.
                    let _ = tx
                        .send(Box::new(HubMsg::FinishedAck(JobRef { job_id, attempt })))
                        .await;
                    if fresh {
                        lifecycle::finished_cleanup(hub, &job, worker_id);
                    }
                }
                Err(e) => refused(hub, worker_id, tx, &job_id, attempt, "finish", &e).await,
            }
        }
        AgentMsg::Heartbeat(h) => {
            hub.dispatch.heartbeat(worker_id, h.draining);
        }
    }
}
