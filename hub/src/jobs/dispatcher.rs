//! The dispatcher: `pump` plans assignments for free agent slots under the dispatch lock,
//! claims each planned batch (one compare-and-swap per job) and hands it to `announce`, which
//! waits for one flush covering every batch claimed so far and then pushes their `assign`s in
//! claim order. Legacy pollers claim through [`claim_legacy`], the same compare-and-swap.
//!
//! A submission enqueues before its own flush: an `assign` goes out only after a flush that
//! started after its claim, and the claim was written after the insert, so the job is durable
//! before any worker hears of it.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use cmdx_proto::agent::{Assignment, HubMsg};

use super::LifecycleResult;
use crate::Hub;
use crate::dispatch::Planned;
use crate::store::{JobRecord, StoreError, now_ms};

/// Most assignments planned per dispatcher round (they share one flush).
const PLAN_BATCH: usize = 512;

/// The dispatcher: plans assignments for free agent slots, claims them and hands each claimed
/// batch to the announcer, which pushes it once it is durable.
pub(crate) async fn pump(hub: Arc<Hub>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    hub.tasks.spawn(announce(hub.clone(), rx));
    loop {
        hub.dispatch.wake.notified().await;
        loop {
            let planned = hub.dispatch.plan(PLAN_BATCH);
            if planned.is_empty() {
                break;
            }
            let results = {
                let reqs: Vec<ClaimReq<'_>> = planned
                    .iter()
                    .map(|p| ClaimReq {
                        job_id: &p.job_id,
                        queue_seq: p.queue_seq,
                        worker: &p.worker_id,
                        token_id: &p.token_id,
                    })
                    .collect();
                claim_all(&hub, &reqs).await
            };
            let mut claimed = Vec::with_capacity(planned.len());
            for (p, res) in planned.into_iter().zip(results) {
                match res {
                    Ok(job) => claimed.push((p, job)),
                    Err(e) => {
                        tracing::debug!(job_id = %p.job_id, error = %e, "claim failed");
                        hub.dispatch.unreserve(&p.worker_id, &p.job_id);
                    }
                }
            }
            // The next batch is claimed while this one's flush runs: the dispatcher never
            // idles through an fsync.
            if !claimed.is_empty() && tx.send(claimed).is_err() {
                return;
            }
        }
    }
}

/// Claimed batches, in claim order.
type Claimed = Vec<(Planned, JobRecord)>;

/// Pushes claimed batches in claim order, each once it is durable: takes every batch claimed so
/// far, waits for one flush that covers them all (group commit), sends them, repeats.
async fn announce(hub: Arc<Hub>, mut rx: tokio::sync::mpsc::UnboundedReceiver<Claimed>) {
    let mut batches = Vec::new();
    while rx.recv_many(&mut batches, usize::MAX).await > 0 {
        if let Err(e) = hub.store.sync().await {
            tracing::error!(error = %e, "store flush failed; assignments not sent");
            batches.clear();
            continue;
        }
        for batch in batches.drain(..) {
            send_assignments(&hub, batch).await;
        }
    }
}

/// Sends one durable batch's assignments and job events.
async fn send_assignments(hub: &Hub, claimed: Claimed) {
    for (p, job) in claimed {
        if job.attempt == 1 {
            let waited = job
                .assigned_ms
                .unwrap_or(job.created_ms)
                .saturating_sub(job.created_ms);
            metrics::histogram!("cmdx_dispatch_latency_seconds").record(waited as f64 / 1000.0);
        }
        let msg = HubMsg::Assign(assignment(&job, &hub.config));
        if p.conn.send(msg).await.is_err() {
            // The connection died: the reconnect grace decides what happens.
            tracing::debug!(job_id = %job.id, "assignment not delivered");
        }
        hub.publish(&job);
    }
}

/// The assignment message for a claimed job.
pub(crate) fn assignment(job: &JobRecord, config: &crate::config::HubConfig) -> Assignment {
    let wants_artifacts = !job.artifact_globs.is_empty();
    Assignment {
        job_id: job.id.clone(),
        attempt: job.attempt,
        command: job.command.clone(),
        file_url: job
            .file
            .as_ref()
            .map(|f| crate::urls::download_path(&f.file_id)),
        file_sha256: job.file.as_ref().map(|f| f.sha256.clone()),
        file_size: job.file.as_ref().map(|f| f.size),
        timeout_secs: job.timeout_secs,
        env: job.env.clone(),
        artifacts: job.artifact_globs.clone(),
        artifact_max_bytes: wants_artifacts.then_some(config.max_artifact_bytes),
        artifact_max_files: wants_artifacts.then_some(config.max_artifact_files),
        tty: job.tty.map(|t| cmdx_proto::WindowSize {
            cols: t.cols,
            rows: t.rows,
        }),
        image: job.image.clone(),
    }
}

/// One claim of a dispatcher batch: `job_id` (queued under `queue_seq`) for `worker`.
struct ClaimReq<'a> {
    job_id: &'a str,
    queue_seq: u64,
    worker: &'a str,
    token_id: &'a str,
}

/// Moves queued jobs to `assigned` (a new attempt each, one compare-and-swap each), applied but
/// not synced; one result per request.
async fn claim_all(hub: &Hub, reqs: &[ClaimReq<'_>]) -> Vec<Result<JobRecord, StoreError>> {
    let now = now_ms();
    let ids: Vec<String> = reqs.iter().map(|r| r.job_id.to_string()).collect();
    let update = |i: usize, job: &mut JobRecord| {
        let r = &reqs[i];
        if job.claim(r.queue_seq, r.worker, r.token_id, now) {
            Ok(())
        } else {
            Err(StoreError::Conflict("job is not queued".into()))
        }
    };
    let results = match hub.store.update_jobs(&ids, &update).await {
        Ok(results) => results,
        Err(e) => {
            let message = e.to_string();
            return reqs
                .iter()
                .map(|_| {
                    Err(StoreError::Backend {
                        op: "claim",
                        message: message.clone(),
                    })
                })
                .collect();
        }
    };
    for (r, res) in reqs.iter().zip(&results) {
        if res.is_ok() {
            // A new attempt: the relay reloads its state (and drops the old attempt's log) on
            // first use.
            hub.relay.unload(r.job_id).await;
        }
    }
    results
}

/// Most image jobs one legacy poll steps over before it gives up (and takes nothing).
const LEGACY_IMAGE_SKIPS: usize = 64;

/// A legacy worker asks for work: claims the oldest tagless job, durably. Jobs that run in an
/// image are left for the agents (a legacy worker would run the command on its own host): they
/// go back to the queue where they were.
pub async fn claim_legacy(
    hub: &Hub,
    worker: &str,
    token_id: &str,
) -> LifecycleResult<Option<JobRecord>> {
    if hub.draining.load(Ordering::SeqCst) {
        return Ok(None);
    }
    let mut skipped = Vec::new();
    let claimed = claim_legacy_skipping(hub, worker, token_id, &mut skipped).await;
    // Back in this hub's index only: the other hubs' mirrors never lost them.
    for entry in skipped {
        hub.dispatch.enqueue(&[], entry);
    }
    claimed
}

async fn claim_legacy_skipping(
    hub: &Hub,
    worker: &str,
    token_id: &str,
    skipped: &mut Vec<crate::queue::Entry>,
) -> LifecycleResult<Option<JobRecord>> {
    while let Some((entry, served_before)) = hub.dispatch.take_for_legacy(worker) {
        let (seq, job_id) = (entry.seq, entry.job_id.clone());
        let record = match hub.store.get_job(&job_id).await {
            Ok(r) => r,
            Err(e) => {
                hub.dispatch.unreserve(worker, &job_id);
                skipped.push(entry);
                return Err(e.into());
            }
        };
        let in_image = record.is_some_and(|j| j.image.is_some());
        if in_image {
            hub.dispatch.step_over(worker, &entry, served_before);
            skipped.push(entry);
            if skipped.len() >= LEGACY_IMAGE_SKIPS {
                return Ok(None);
            }
            continue;
        }
        let req = ClaimReq {
            job_id: &job_id,
            queue_seq: seq,
            worker,
            token_id,
        };
        let claimed = claim_all(hub, &[req]).await.pop();
        match claimed.unwrap_or_else(|| Err(StoreError::NotFound(job_id.clone()))) {
            Ok(mut job) => {
                // A legacy worker starts the job as soon as it receives it.
                let now = now_ms();
                if let Ok(j) = hub
                    .store
                    .update_job(&job_id, &|j: &mut JobRecord| {
                        if j.is_current(worker, j.attempt) {
                            j.start(now);
                        }
                        Ok(())
                    })
                    .await
                {
                    job = j;
                }
                hub.store.sync().await?;
                hub.publish(&job);
                return Ok(Some(job));
            }
            Err(_) => hub.dispatch.unreserve(worker, &job_id),
        }
    }
    Ok(None)
}
