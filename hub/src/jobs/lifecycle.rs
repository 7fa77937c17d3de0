//! What workers report about the jobs they hold (start, output, finish, refusal) and what the
//! hub and users decide about them (requeue after a lost attempt, cancel). Reports are fenced on
//! the job's current `(worker, attempt, token)`; a stale one changes nothing.

use std::sync::Arc;

use cmdx_proto::agent::{Cancel, HubMsg, OutputChunk, Resize};
use cmdx_proto::{FailureKind, JobStatus, Outcome, StreamKind, WindowSize};

use super::record::ResizeRefusal;
use super::views::visible_job;
use super::{LifecycleError, LifecycleResult, check_current, update_current, update_held};
use crate::Hub;
use crate::auth::Caller;
use crate::dispatch::WorkerKind;
use crate::relay::AppendLog;
use crate::store::{JobRecord, TtyRecord, now_ms};

/// The agent reports the child started.
pub async fn started(
    hub: &Hub,
    worker: &str,
    token_id: &str,
    job_id: &str,
    attempt: u32,
) -> LifecycleResult<()> {
    let now = now_ms();
    let job = update_held(hub, job_id, worker, token_id, attempt, &|job| {
        job.start(now)
    })
    .await?;
    hub.publish(&job);
    Ok(())
}

/// Takes the job's append log, fenced: loaded for the attempt `(worker, token_id)` holds
/// (`None`: the job's current attempt), or refused.
async fn fenced_log(
    hub: &Hub,
    job_id: &str,
    worker: &str,
    token_id: &str,
    attempt: Option<u32>,
) -> LifecycleResult<AppendLog> {
    let mut log = hub.relay.log(job_id).await;
    if log.holds(attempt, worker, token_id) {
        return Ok(log);
    }
    let job = hub
        .store
        .get_job(job_id)
        .await?
        .ok_or(LifecycleError::NotFound("job"))?;
    let attempt = attempt.unwrap_or(job.attempt);
    check_current(&job, worker, token_id, attempt)?;
    let owner = (worker.to_string(), token_id.to_string());
    log.load(hub.store.as_ref(), attempt, owner, job.output.first_index)
        .await?;
    Ok(log)
}

/// Stores an agent's numbered output chunks, all of one attempt of one job, in one store write:
/// duplicates (resends after a reconnect) are ignored and a gap refused (the chunks before it
/// are stored). Returns the attempt's stored chunk count (not yet durable: sync before
/// acknowledging).
pub async fn append_output(
    hub: &Hub,
    worker: &str,
    token_id: &str,
    chunks: Vec<OutputChunk>,
) -> LifecycleResult<u64> {
    let Some(first) = chunks.first() else {
        return Err(LifecycleError::Invalid("no output chunk".into()));
    };
    let attempt = Some(first.attempt);
    let mut log = fenced_log(hub, &first.job_id, worker, token_id, attempt).await?;
    let mut expected = log.next_seq();
    let mut data = Vec::with_capacity(chunks.len());
    let mut gap = None;
    for chunk in chunks {
        if chunk.seq < expected {
            continue;
        }
        // An empty chunk stores nothing and so is not counted: the next one is a gap.
        if chunk.seq > expected || chunk.data.0.is_empty() {
            gap = Some(chunk.seq);
            break;
        }
        expected += 1;
        data.push((chunk.stream, chunk.data.0));
    }
    let stored = store_chunks(hub, &mut log, data).await?;
    match gap {
        Some(seq) if seq > stored => Err(LifecycleError::Invalid(format!(
            "output chunk {seq} out of order (expected {stored})"
        ))),
        _ => Ok(stored),
    }
}

/// Appends a legacy worker's output (unnumbered) to the job's current attempt; returns the
/// attempt's stored chunk count (not yet durable).
pub async fn append_legacy_output(
    hub: &Hub,
    worker: &str,
    token_id: &str,
    job_id: &str,
    stream: StreamKind,
    data: Vec<u8>,
) -> LifecycleResult<u64> {
    let mut log = fenced_log(hub, job_id, worker, token_id, None).await?;
    store_chunk(hub, &mut log, stream, data).await
}

/// Drops what a legacy worker's current attempt streamed so far: its result replaces it.
pub async fn clear_legacy_output(
    hub: &Hub,
    worker: &str,
    token_id: &str,
    job_id: &str,
) -> LifecycleResult<()> {
    let mut log = fenced_log(hub, job_id, worker, token_id, None).await?;
    log.clear(hub.store.as_ref()).await?;
    Ok(())
}

/// Stores one chunk of a fenced attempt (an empty one is nothing).
async fn store_chunk(
    hub: &Hub,
    log: &mut AppendLog,
    stream: StreamKind,
    data: Vec<u8>,
) -> LifecycleResult<u64> {
    store_chunks(hub, log, vec![(stream, data)]).await
}

/// Stores chunks of a fenced attempt in one store write (empty ones are nothing).
async fn store_chunks(
    hub: &Hub,
    log: &mut AppendLog,
    mut chunks: Vec<(StreamKind, Vec<u8>)>,
) -> LifecycleResult<u64> {
    chunks.retain(|(_, d)| !d.is_empty());
    if chunks.is_empty() {
        return Ok(log.next_seq());
    }
    let len: u64 = chunks.iter().map(|(_, d)| d.len() as u64).sum();
    let n = log.append_many(hub.store.as_ref(), chunks).await?;
    // Subscribers on other hubs of a cluster read it from the store (one note per batch).
    hub.cluster.tell(crate::cluster::Note::Output {
        job_id: log.job_id().to_string(),
    });
    metrics::counter!("cmdx_output_bytes_total").increment(len);
    Ok(n)
}

/// Where a finish report came from.
pub struct FinishReport {
    /// Attempt (None: the job's current one, legacy).
    pub attempt: Option<u32>,
    /// Chunks the agent sent (None: legacy, no numbering).
    pub chunks: Option<u64>,
    /// The outcome.
    pub outcome: Outcome,
}

/// Records the end of `(worker, attempt)` durably. Idempotent for a repeated report of the same
/// attempt.
pub async fn finish(
    hub: &Hub,
    worker: &str,
    token_id: &str,
    job_id: &str,
    report: FinishReport,
) -> LifecycleResult<JobRecord> {
    let (job, fresh) = record_finish(hub, worker, token_id, job_id, report).await?;
    if fresh {
        finished_cleanup(hub, &job, worker);
    }
    Ok(job)
}

/// The durable half of [`finish`]: returns the job and whether this call recorded the end
/// (false for a repeated report). The caller must then run [`finished_cleanup`] when fresh:
/// agents get their `finishedAck` first, so the freed slot is never offered to them before they
/// know it is free.
pub(crate) async fn record_finish(
    hub: &Hub,
    worker: &str,
    token_id: &str,
    job_id: &str,
    report: FinishReport,
) -> LifecycleResult<(JobRecord, bool)> {
    let mut log = match fenced_log(hub, job_id, worker, token_id, report.attempt).await {
        Ok(log) => log,
        Err(e) => {
            // A repeated report after the hub recorded it: acknowledge again.
            if let Some(job) = hub.store.get_job(job_id).await? {
                let same = job.worker_id.as_deref() == Some(worker)
                    && report.attempt.is_none_or(|a| a == job.attempt)
                    && job.status.is_terminal()
                    && job.outcome.is_some();
                if same {
                    hub.relay.forget_if_idle(job_id);
                    return Ok((job, false));
                }
            }
            return Err(e);
        }
    };
    if let Some(chunks) = report.chunks
        && chunks > log.next_seq()
    {
        return Err(LifecycleError::Invalid(format!(
            "finished after {chunks} chunks but only {} were stored",
            log.next_seq()
        )));
    }
    let attempt = log.loaded_attempt().unwrap_or_default();
    let now = now_ms();
    let meta = log.meta(report.outcome.output_truncated);
    let outcome = report.outcome;
    let job = update_current(hub, job_id, worker, attempt, &|job| {
        job.finish(&outcome, meta.clone(), now);
    })
    .await?
    .ok_or_else(|| LifecycleError::Stale("stale attempt".into()))?;
    log.unload();
    drop(log);
    hub.store.sync().await?;
    Ok((job, true))
}

/// After a job became terminal: free the slot, end the relay, publish.
pub(crate) fn finished_cleanup(hub: &Hub, job: &JobRecord, worker: &str) {
    metrics::counter!(
        "cmdx_jobs_finished_total",
        "status" => job.status.as_str(),
        "failure" => job.failure.map(FailureKind::as_str).unwrap_or("none"),
    )
    .increment(1);
    if let (Some(s), Some(c)) = (job.started_ms, job.completed_ms) {
        metrics::histogram!("cmdx_job_duration_seconds")
            .record(c.saturating_sub(s) as f64 / 1000.0);
    }
    hub.dispatch.release(worker, &job.id);
    hub.end_output(&job.id);
    hub.publish(job);
    tracing::info!(job_id = %job.id, worker_id = %worker, status = job.status.as_str(), "job finished");
}

/// The current attempt of `job_id` is lost (worker gone past its grace, agent restarted, or the
/// assignment was rejected): requeue it, or fail it as `worker_lost` after `maxAttempts`.
pub async fn requeue_or_fail(
    hub: &Hub,
    job_id: &str,
    worker: &str,
    attempt: u32,
    reason: &str,
) -> LifecycleResult<()> {
    let seq = hub.store.next_seq()?;
    let now = now_ms();
    let lost = update_current(hub, job_id, worker, attempt, &|job| {
        job.lose_attempt(reason, seq, now);
    })
    .await?;
    let Some(job) = lost else {
        hub.dispatch.release(worker, job_id);
        return Ok(());
    };
    hub.store.sync().await?;
    tracing::warn!(
        job_id,
        worker_id = worker,
        attempt,
        reason,
        status = job.status.as_str(),
        "attempt lost"
    );
    if job.status.is_terminal() {
        finished_cleanup(hub, &job, worker);
    } else {
        hub.dispatch.release(worker, job_id);
        hub.relay.unload(job_id).await;
        hub.enqueue(seq, &job);
        hub.publish(&job);
    }
    Ok(())
}

/// A worker refused an assignment (no free slot, draining): requeue it without using up an
/// attempt (after [`MAX_REJECTIONS`](super::record::MAX_REJECTIONS) refusals the job fails
/// instead of bouncing forever).
pub async fn requeue_rejected(
    hub: &Hub,
    job_id: &str,
    worker: &str,
    attempt: u32,
    reason: &str,
) -> LifecycleResult<()> {
    let counted = update_current(hub, job_id, worker, attempt, &|job| {
        job.count_rejection();
    })
    .await?;
    match counted {
        Some(job) if job.refused_by_all() => {
            requeue_or_fail(hub, job_id, worker, attempt, "rejected by every worker").await
        }
        Some(_) => requeue_or_fail(hub, job_id, worker, attempt, reason).await,
        None => {
            hub.dispatch.release(worker, job_id);
            Ok(())
        }
    }
}

/// Cancels a job for its owner or an admin; returns the job as it is after the request.
pub async fn cancel(hub: &Arc<Hub>, caller: &Caller, job_id: &str) -> LifecycleResult<JobRecord> {
    let before = visible_job(hub, caller, job_id).await?;
    if before.status.is_terminal() {
        return Ok(before);
    }
    let now = now_ms();
    let job = hub
        .store
        .update_job(job_id, &|job: &mut JobRecord| {
            job.request_cancel(now);
            Ok(())
        })
        .await?;
    hub.store.sync().await?;
    match job.status {
        JobStatus::Cancelled => {
            if let Some(seq) = before.queue_seq {
                hub.dispatch.dequeue(seq, &job.tags);
            }
            hub.end_output(&job.id);
            hub.publish(&job);
        }
        JobStatus::Assigned | JobStatus::Running => {
            let worker = job.worker_id.clone().unwrap_or_default();
            match hub.dispatch.conn(&worker) {
                Some(conn) => {
                    let _ = conn.send(cancel_message(hub, &job)).await;
                }
                // Perhaps connected to another hub of the cluster: the one holding it tells it,
                // and the cancel watchdog below ends the job if nobody does.
                None if hub.cluster.is_shared() => {
                    hub.cluster.tell(crate::cluster::Note::Cancel {
                        job_id: job.id.clone(),
                    });
                }
                None if hub.dispatch.kind(&worker) == Some(WorkerKind::Agent) => {
                    // The agent is away: end the job now; it is told to abandon on return.
                    force_cancel(hub, &job.id, &worker, job.attempt).await?;
                }
                None => {}
            }
            super::liveness::watch_cancel(hub, job.id.clone(), job.attempt);
        }
        _ => {}
    }
    hub.store
        .get_job(job_id)
        .await?
        .ok_or(LifecycleError::NotFound("job"))
}

/// The job's owner or an admin gives the held job's terminal a new size (their terminal was
/// resized): stored in the job, durably, then sent to the agent holding it, which sets it on
/// the terminal (the job's foreground process group gets `SIGWINCH`). Refused for a job that
/// is queued or ended, on pipes, or held by a legacy poller (which has no terminal).
pub async fn resize(
    hub: &Arc<Hub>,
    caller: &Caller,
    job_id: &str,
    size: WindowSize,
) -> LifecycleResult<JobRecord> {
    if !size.is_valid() {
        return Err(LifecycleError::Invalid(format!(
            "cols and rows must be between 1 and {}",
            WindowSize::MAX_SIDE
        )));
    }
    let before = visible_job(hub, caller, job_id).await?;
    let worker = before.worker_id.clone().unwrap_or_default();
    let tty = TtyRecord {
        cols: size.cols,
        rows: size.rows,
    };
    // A legacy poller with a minted worker token is known by the hub it polls.
    let legacy_here = hub.dispatch.kind(&worker) == Some(WorkerKind::Legacy);
    let check = |job: &mut JobRecord| match job.resize(tty) {
        Ok(_) if legacy_here => Err(resize_refused(job, ResizeRefusal::LegacyWorker)),
        r => r.map_err(|r| resize_refused(job, r)),
    };
    let mut probe = before.clone();
    if !check(&mut probe)? {
        // Nothing to store; the worker is told all the same (it may have missed a resize).
        send_resize(hub, &before).await;
        return Ok(before);
    }
    let refused = std::sync::Mutex::new(None);
    let job = hub
        .store
        .update_job(job_id, &|job: &mut JobRecord| match check(job) {
            Ok(_) => Ok(()),
            Err(e) => {
                *refused.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                Err(crate::store::StoreError::Conflict("refused".into()))
            }
        })
        .await;
    let job = match job {
        Ok(job) => job,
        Err(e) => {
            return Err(refused
                .into_inner()
                .unwrap_or_else(|p| p.into_inner())
                .unwrap_or_else(|| e.into()));
        }
    };
    hub.store.sync().await?;
    send_resize(hub, &job).await;
    Ok(job)
}

/// The answer to a refused resize of `job`.
fn resize_refused(job: &JobRecord, r: ResizeRefusal) -> LifecycleError {
    match r {
        ResizeRefusal::NotRunning(status) => LifecycleError::NotRunning(format!(
            "job {} is not running (it is {}): only a running job's terminal can be resized",
            job.id,
            status.as_str()
        )),
        ResizeRefusal::NoTerminal => LifecycleError::NoTerminal(format!(
            "job {} has no terminal: it was submitted with pipes (tty: false)",
            job.id
        )),
        ResizeRefusal::LegacyWorker => LifecycleError::NoTerminal(format!(
            "job {} has no terminal: a legacy worker runs it, on pipes",
            job.id
        )),
    }
}

/// Tells the agent holding `job` its terminal's size, as a cancel reaches it: this hub sends it
/// if it holds the agent's socket, else (on a cluster) the hub that does. An agent that is away
/// gets the stored size when it reconnects (with its resumed jobs, `ws_agent::resume_held`).
async fn send_resize(hub: &Hub, job: &JobRecord) {
    let worker = job.worker_id.clone().unwrap_or_default();
    match hub.dispatch.conn(&worker) {
        Some(conn) => {
            if let Some(msg) = resize_message(job) {
                let _ = conn.send(msg).await;
            }
        }
        None if hub.cluster.is_shared() => hub.cluster.tell(crate::cluster::Note::Resize {
            job_id: job.id.clone(),
        }),
        None => {}
    }
}

/// The `resize` giving a held job's terminal the size its record has now; `None` for a job
/// without a terminal or not held.
pub(crate) fn resize_message(job: &JobRecord) -> Option<HubMsg> {
    let tty = job.tty?;
    matches!(job.status, JobStatus::Assigned | JobStatus::Running).then(|| {
        HubMsg::Resize(Resize {
            job_id: job.id.clone(),
            attempt: job.attempt,
            cols: tty.cols,
            rows: tty.rows,
        })
    })
}

/// The `cancel` telling a job's worker to stop its current attempt.
pub(crate) fn cancel_message(hub: &Hub, job: &JobRecord) -> HubMsg {
    HubMsg::Cancel(Cancel {
        job_id: job.id.clone(),
        attempt: job.attempt,
        grace_secs: hub.config.cancel_grace_secs,
    })
}

/// Marks a held job cancelled without the worker's report.
pub(crate) async fn force_cancel(
    hub: &Hub,
    job_id: &str,
    worker: &str,
    attempt: u32,
) -> LifecycleResult<()> {
    let now = now_ms();
    if let Some(job) =
        update_current(hub, job_id, worker, attempt, &|job| job.cancel_now(now)).await?
    {
        hub.store.sync().await?;
        finished_cleanup(hub, &job, worker);
    }
    Ok(())
}
