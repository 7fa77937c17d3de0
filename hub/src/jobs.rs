//! The job lifecycle: submit, claim (push and pull), start, output, finish, cancel, requeue after
//! a lost worker, and recovery at start. Every transition is an atomic store update that checks the
//! job's current `(worker, attempt, token)` (fencing); acknowledgements wait for `sync`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use cmdx_proto::agent::{Assignment, Cancel, HubMsg};
use cmdx_proto::client::ServerMsg;
use cmdx_proto::rest::{
    ArtifactSkip, ArtifactView, AttemptView, JobResult, JobSummary, JobView, SubmitRequest,
};
use cmdx_proto::{FailureKind, JobStatus, Outcome, StreamKind};

use crate::auth::{Caller, hash_password, write_private};
use crate::error::{ApiError, ApiResult, HubError};
use crate::relay::{self, OutState};
use crate::store::{
    AttemptRecord, FileRef, JobRecord, OutputMeta, StoreError, UserRecord, new_id, now_ms,
};
use crate::time::rfc3339;
use crate::{Hub, dispatch::WorkerKind};

/// Most assignments planned per dispatcher round (they share one flush).
const PLAN_BATCH: usize = 512;
/// Bytes of each stream returned inline by `/api/jobs/status`.
pub const STATUS_STREAM_CAP: usize = 8 << 20;

/// Creates the first admin when the data folder has no users.
pub async fn bootstrap_admin(hub: &Hub) -> Result<(), HubError> {
    if !hub.store.list_users().await?.is_empty() {
        return Ok(());
    }
    let env_email = std::env::var("CMDX_ADMIN_EMAIL")
        .ok()
        .filter(|s| !s.is_empty());
    let env_pw = std::env::var("CMDX_ADMIN_PASSWORD")
        .ok()
        .filter(|s| !s.is_empty());
    let (email, password, generated) = match (env_email, env_pw) {
        (Some(e), Some(p)) => (e, p, false),
        (e, _) => {
            let pw: [u8; 12] = rand::random();
            (
                e.unwrap_or_else(|| "admin@cmdx.local".to_string()),
                hex::encode(pw),
                true,
            )
        }
    };
    let hash = hash_password(&password).map_err(HubError::Config)?;
    let user = UserRecord {
        v: 1,
        id: new_id(),
        email: email.to_lowercase(),
        password_hash: hash,
        role: "admin".into(),
        created_ms: now_ms(),
    };
    hub.store.insert_user(&user).await?;
    hub.store.sync().await?;
    if generated {
        let path = hub.config.data_dir.join("admin-credentials");
        let text = format!("email: {}\npassword: {password}\n", user.email);
        write_private(&path, text.as_bytes()).map_err(|source| HubError::DataDir {
            path: path.clone(),
            source,
        })?;
        eprintln!(
            "cmdx: created admin {} with password {password} (saved to {})",
            user.email,
            path.display()
        );
    }
    tracing::info!(email = %user.email, "bootstrap admin created");
    Ok(())
}

/// Rebuilds the in-memory index from the store and starts reconnect graces for workers that
/// held jobs when the hub stopped.
pub async fn recover(hub: &Arc<Hub>) -> Result<(), HubError> {
    for w in hub.store.list_workers().await? {
        let kind = if w.kind == "legacy" {
            WorkerKind::Legacy
        } else {
            WorkerKind::Agent
        };
        hub.dispatch.ensure_known(w, kind);
    }
    // The jobs tree is the truth (the queue tree is an index that a backup taken under load
    // may not match): every queued job goes back in the dispatch index, every assigned or
    // running job back to its worker, which gets a reconnect grace.
    let unfinished = hub.store.unfinished_jobs().await?;
    let mut n_queued = 0;
    let mut n_active = 0;
    let mut workers = std::collections::BTreeSet::new();
    for job in unfinished {
        match job.status {
            JobStatus::Queued => {
                let seq = match job.queue_seq {
                    Some(seq) => {
                        hub.store.note_seq(seq);
                        seq
                    }
                    None => {
                        let seq = hub.store.next_seq()?;
                        hub.store
                            .update_job(&job.id, &|j: &mut JobRecord| {
                                j.queue_seq = Some(seq);
                                Ok(())
                            })
                            .await?;
                        seq
                    }
                };
                hub.dispatch.enqueue(seq, &job.id, &job.tags);
                n_queued += 1;
            }
            _ => {
                if let Some(w) = &job.worker_id {
                    hub.dispatch.hold(w, &job.id);
                    workers.insert(w.clone());
                }
                n_active += 1;
            }
        }
    }
    for w in workers {
        let generation = hub.dispatch.generation(&w).unwrap_or(0);
        start_grace(hub.clone(), w, generation);
    }
    tracing::info!(queued = n_queued, active = n_active, "recovered store");
    Ok(())
}

fn sorted_tags(tags: &[String]) -> Vec<String> {
    let mut t: Vec<String> = tags
        .iter()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .collect();
    t.sort();
    t.dedup();
    t
}

/// Accepts a submission; returns the job id once it is durable.
pub async fn submit(
    hub: &Hub,
    caller: &Caller,
    req: SubmitRequest,
    legacy: bool,
) -> ApiResult<String> {
    if hub.draining.load(Ordering::SeqCst) {
        return Err(ApiError::unavailable("hub is shutting down"));
    }
    if req.command.trim().is_empty() {
        return Err(ApiError::bad_request("command must not be empty"));
    }
    if req.command.len() > 64 * 1024 {
        return Err(ApiError::bad_request("command longer than 64 KiB"));
    }
    let timeout = req.timeout.unwrap_or(hub.config.default_timeout_secs);
    if timeout == 0 || timeout > hub.config.max_timeout_secs {
        return Err(ApiError::bad_request(format!(
            "timeout must be between 1 and {} seconds",
            hub.config.max_timeout_secs
        )));
    }
    let max_attempts = req.max_attempts.unwrap_or(hub.config.default_max_attempts);
    if max_attempts == 0 || max_attempts > hub.config.max_attempts_limit {
        return Err(ApiError::bad_request(format!(
            "maxAttempts must be between 1 and {}",
            hub.config.max_attempts_limit
        )));
    }
    if req.tags.len() > 32 || req.tags.iter().any(|t| t.len() > 64) {
        return Err(ApiError::bad_request("at most 32 tags of 64 bytes"));
    }
    if req.env.len() > 128
        || req.env.iter().any(|(k, v)| {
            k.is_empty()
                || k.len() > 256
                || v.len() > 32 * 1024
                || k.contains('=')
                || k.contains('\0')
                || v.contains('\0')
        })
    {
        return Err(ApiError::bad_request(
            "env: at most 128 variables, names without '=' or NUL",
        ));
    }
    let artifact_globs =
        crate::artifacts::validate_globs(&req.artifacts).map_err(ApiError::bad_request)?;
    let file_id = match (&req.file_id, &req.file_url) {
        (Some(id), _) => Some(id.clone()),
        (None, Some(url)) => Some(file_id_from_url(url).ok_or_else(|| {
            ApiError::bad_request("fileUrl must be a hub file URL (/api/files/download/ID)")
        })?),
        (None, None) => None,
    };
    let file = match file_id {
        Some(id) => {
            let mut f = hub
                .store
                .get_file(&id)
                .await?
                .filter(|f| caller.can_see(&f.owner))
                .ok_or_else(|| ApiError::not_found("file not found"))?;
            f.last_used_ms = Some(now_ms());
            hub.store.put_file(&f).await?;
            Some(FileRef {
                file_id: f.id,
                sha256: f.sha256,
                size: f.size,
                filename: f.filename,
            })
        }
        None => None,
    };
    let tags = sorted_tags(&req.tags);
    let seq = hub.store.next_seq()?;
    let job = JobRecord {
        v: 1,
        id: new_id(),
        owner: caller.user_id.clone(),
        command: req.command,
        file,
        timeout_secs: timeout,
        tags: tags.clone(),
        env: req.env,
        max_attempts,
        status: JobStatus::Queued,
        attempt: 0,
        queue_seq: Some(seq),
        worker_id: None,
        token_id: None,
        legacy,
        created_ms: now_ms(),
        assigned_ms: None,
        started_ms: None,
        completed_ms: None,
        cancel_requested: false,
        outcome: None,
        failure: None,
        error: None,
        output: OutputMeta::default(),
        attempts: Vec::new(),
        rejections: 0,
        artifact_globs,
        artifacts: None,
    };
    hub.store.insert_job(&job).await?;
    // The dispatcher may take the job before this submission's flush: its claim is a later write
    // and it pushes the assignment only after a flush that started after the claim, which covers
    // this insert as well. So the job is durable before any worker hears of it, while the
    // submission and the claim share one flush instead of waiting for two in a row. (The event
    // goes out first so that watchers never see `queued` after `assigned`.)
    hub.emit(Some(job.owner.clone()), ServerMsg::Job(summary(&job)));
    hub.dispatch.enqueue(seq, &job.id, &tags);
    hub.store.sync().await?;
    hub.counters.submitted.fetch_add(1, Ordering::Relaxed);
    metrics::counter!("cmdx_jobs_submitted_total").increment(1);
    tracing::info!(job_id = %job.id, owner = %job.owner, "job submitted");
    Ok(job.id)
}

/// The file id in a hub file URL (absolute or relative).
pub fn file_id_from_url(url: &str) -> Option<String> {
    let path = url.split("/api/files/download/").nth(1)?;
    let id = path.split(['?', '#', '/']).next()?;
    (!id.is_empty()).then(|| id.to_string())
}

/// The dispatcher: plans assignments for free agent slots, claims them and hands each claimed
/// batch to the announcer, which pushes it once it is durable.
pub async fn pump(hub: Arc<Hub>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(announce(hub.clone(), rx));
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
                        hub.dispatch.unreserve(&p.worker_id, &p.job_id, None);
                    }
                }
            }
            // The next batch is claimed while this one's flush runs (the dispatcher used to
            // idle through every fsync).
            if !claimed.is_empty() && tx.send(claimed).is_err() {
                return;
            }
        }
    }
}

/// Claimed batches, in claim order.
type Claimed = Vec<(crate::dispatch::Planned, JobRecord)>;

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
        hub.emit(Some(job.owner.clone()), ServerMsg::Job(summary(&job)));
    }
}

/// The assignment message for a claimed job.
pub fn assignment(job: &JobRecord, config: &crate::config::HubConfig) -> Assignment {
    let wants_artifacts = !job.artifact_globs.is_empty();
    Assignment {
        job_id: job.id.clone(),
        attempt: job.attempt,
        command: job.command.clone(),
        file_url: job
            .file
            .as_ref()
            .map(|f| format!("/api/files/download/{}", f.file_id)),
        file_sha256: job.file.as_ref().map(|f| f.sha256.clone()),
        file_size: job.file.as_ref().map(|f| f.size),
        timeout_secs: job.timeout_secs,
        env: job.env.clone(),
        artifacts: job.artifact_globs.clone(),
        artifact_max_bytes: wants_artifacts.then_some(config.max_artifact_bytes),
        artifact_max_files: wants_artifacts.then_some(config.max_artifact_files),
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
        if job.status != JobStatus::Queued || job.queue_seq != Some(r.queue_seq) {
            return Err(StoreError::Conflict("job is not queued".into()));
        }
        job.status = JobStatus::Assigned;
        job.queue_seq = None;
        job.attempt += 1;
        job.worker_id = Some(r.worker.to_string());
        job.token_id = Some(r.token_id.to_string());
        job.assigned_ms = Some(now);
        job.started_ms = None;
        job.attempts.push(AttemptRecord {
            attempt: job.attempt,
            worker_id: r.worker.to_string(),
            assigned_ms: now,
            ended_ms: None,
            end: None,
        });
        Ok(())
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
            hub.relay.live(r.job_id).state.lock().await.loaded = false;
        }
    }
    results
}

/// A legacy worker asks for work: claims the oldest tagless job, durably.
pub async fn claim_legacy(hub: &Hub, worker: &str, token_id: &str) -> ApiResult<Option<JobRecord>> {
    if hub.draining.load(Ordering::SeqCst) {
        return Ok(None);
    }
    while let Some((seq, job_id)) = hub.dispatch.take_for_legacy(worker) {
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
                        if j.is_current(worker, j.attempt) && j.status == JobStatus::Assigned {
                            j.status = JobStatus::Running;
                            j.started_ms = Some(now);
                        }
                        Ok(())
                    })
                    .await
                {
                    job = j;
                }
                hub.store.sync().await?;
                hub.emit(Some(job.owner.clone()), ServerMsg::Job(summary(&job)));
                return Ok(Some(job));
            }
            Err(_) => hub.dispatch.unreserve(worker, &job_id, None),
        }
    }
    Ok(None)
}

pub(crate) fn check_current(
    job: &JobRecord,
    worker: &str,
    token_id: &str,
    attempt: u32,
) -> ApiResult<()> {
    if !job.held_by(worker, attempt, token_id) {
        return Err(ApiError::stale(format!(
            "attempt {attempt} of job {} is not held by this worker",
            job.id
        )));
    }
    Ok(())
}

/// The agent reports the child started.
pub async fn started(
    hub: &Hub,
    worker: &str,
    token_id: &str,
    job_id: &str,
    attempt: u32,
) -> ApiResult<()> {
    let now = now_ms();
    let job = update_held(hub, job_id, worker, token_id, attempt, &|job| {
        if job.status == JobStatus::Assigned {
            job.status = JobStatus::Running;
            job.started_ms = Some(now);
        }
    })
    .await?;
    hub.emit(Some(job.owner.clone()), ServerMsg::Job(summary(&job)));
    Ok(())
}

/// Applies `change` to the job while `(worker, token_id)` still holds `attempt` of it; a stale
/// attempt changes nothing and gets 409 `stale_attempt`. Not synced.
pub(crate) async fn update_held(
    hub: &Hub,
    job_id: &str,
    worker: &str,
    token_id: &str,
    attempt: u32,
    change: &(dyn Fn(&mut JobRecord) + Sync),
) -> ApiResult<JobRecord> {
    hub.store
        .update_job(job_id, &|job: &mut JobRecord| {
            if !job.held_by(worker, attempt, token_id) {
                return Err(StoreError::Conflict("stale attempt".into()));
            }
            change(job);
            Ok(())
        })
        .await
        .map_err(|e| match e {
            StoreError::Conflict(_) => ApiError::stale("stale attempt"),
            other => other.into(),
        })
}

/// Loads (or checks) the relay state of the attempt `(worker, attempt)` holds.
async fn fenced_state(
    hub: &Hub,
    st: &mut OutState,
    job_id: &str,
    worker: &str,
    token_id: &str,
    attempt: Option<u32>,
) -> ApiResult<()> {
    let owner = (worker.to_string(), token_id.to_string());
    if st.loaded && attempt.is_none_or(|a| a == st.attempt) && st.owner == owner {
        return Ok(());
    }
    let job = hub
        .store
        .get_job(job_id)
        .await?
        .ok_or_else(|| ApiError::not_found("job not found"))?;
    let attempt = attempt.unwrap_or(job.attempt);
    check_current(&job, worker, token_id, attempt)?;
    *st = relay::load_state(
        hub.store.as_ref(),
        job_id,
        attempt,
        owner,
        job.output.first_index,
    )
    .await?;
    Ok(())
}

/// Stores output of `(worker, attempt)`. With `seq` (agents) duplicates are ignored and gaps
/// rejected; without (legacy) the chunk is appended. Returns the attempt's stored chunk count
/// (not yet durable: sync before acknowledging).
#[expect(
    clippy::too_many_arguments,
    reason = "one call site per protocol, all fields needed"
)]
pub async fn append_output(
    hub: &Hub,
    worker: &str,
    token_id: &str,
    job_id: &str,
    attempt: Option<u32>,
    seq: Option<u64>,
    stream: StreamKind,
    data: Vec<u8>,
) -> ApiResult<u64> {
    let live = hub.relay.live(job_id);
    let mut st = live.state.lock().await;
    fenced_state(hub, &mut st, job_id, worker, token_id, attempt).await?;
    if let Some(seq) = seq {
        if seq < st.next_seq {
            return Ok(st.next_seq);
        }
        if seq > st.next_seq {
            return Err(ApiError::bad_request(format!(
                "output chunk {seq} out of order (expected {})",
                st.next_seq
            )));
        }
    }
    if data.is_empty() {
        return Ok(st.next_seq);
    }
    let len = data.len() as u64;
    let n = relay::append(
        hub.store.as_ref(),
        &live,
        &mut st,
        job_id,
        hub.relay.cap,
        stream,
        data,
    )
    .await?;
    hub.counters.output_bytes.fetch_add(len, Ordering::Relaxed);
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
) -> ApiResult<JobRecord> {
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
pub async fn record_finish(
    hub: &Hub,
    worker: &str,
    token_id: &str,
    job_id: &str,
    report: FinishReport,
) -> ApiResult<(JobRecord, bool)> {
    let live = hub.relay.live(job_id);
    let mut st = live.state.lock().await;
    if let Err(e) = fenced_state(hub, &mut st, job_id, worker, token_id, report.attempt).await {
        // A repeated report after the hub recorded it: acknowledge again.
        if let Some(job) = hub.store.get_job(job_id).await? {
            let same = job.worker_id.as_deref() == Some(worker)
                && report.attempt.is_none_or(|a| a == job.attempt)
                && job.status.is_terminal()
                && job.outcome.is_some();
            if same {
                drop(st);
                hub.relay.forget_if_idle(job_id);
                return Ok((job, false));
            }
        }
        return Err(e);
    }
    if let Some(chunks) = report.chunks
        && chunks > st.next_seq
    {
        return Err(ApiError::bad_request(format!(
            "finished after {chunks} chunks but only {} were stored",
            st.next_seq
        )));
    }
    let attempt = st.attempt;
    let now = now_ms();
    let meta = OutputMeta {
        first_index: st.first_index,
        first_offset: st.first_offset,
        truncated: st.truncated || report.outcome.output_truncated,
        total_bytes: st.end_offset,
        lines: st.lines,
    };
    let outcome = report.outcome;
    let job = hub
        .store
        .update_job(job_id, &|job: &mut JobRecord| {
            if !job.is_current(worker, attempt) {
                return Err(StoreError::Conflict("stale attempt".into()));
            }
            let mut status = outcome.status();
            if status == JobStatus::Cancelled && !job.cancel_requested {
                // Only the hub cancels; a child killed otherwise failed.
                status = JobStatus::Failed;
            }
            job.status = status;
            job.failure = match status {
                JobStatus::Failed => Some(outcome.failure_kind().unwrap_or(FailureKind::Killed)),
                _ => None,
            };
            job.error = outcome.error.clone().or_else(|| match job.failure {
                Some(FailureKind::Timeout) => {
                    Some(format!("timed out after {} s", job.timeout_secs))
                }
                Some(FailureKind::Oom) => Some("killed: out of memory".into()),
                Some(FailureKind::ExitCode) => Some(format!(
                    "exited with code {}",
                    outcome.exit_code.unwrap_or(-1)
                )),
                Some(FailureKind::Killed) => {
                    Some(format!("killed by signal {}", outcome.signal.unwrap_or(0)))
                }
                _ => None,
            });
            job.outcome = Some(outcome.clone());
            job.completed_ms = Some(now);
            job.output = meta.clone();
            if let Some(a) = job.attempts.last_mut() {
                a.ended_ms = Some(now);
                a.end = Some(status.as_str().to_string());
            }
            Ok(())
        })
        .await
        .map_err(|e| match e {
            StoreError::Conflict(_) => ApiError::stale("stale attempt"),
            other => other.into(),
        })?;
    st.loaded = false;
    drop(st);
    hub.store.sync().await?;
    Ok((job, true))
}

/// After a job became terminal: free the slot, end the relay, publish.
pub fn finished_cleanup(hub: &Hub, job: &JobRecord, worker: &str) {
    hub.counters.finished.fetch_add(1, Ordering::Relaxed);
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
    hub.relay.end(&job.id);
    hub.emit(Some(job.owner.clone()), ServerMsg::Job(summary(job)));
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
) -> ApiResult<()> {
    let seq = hub.store.next_seq()?;
    let now = now_ms();
    let res = hub
        .store
        .update_job(job_id, &|job: &mut JobRecord| {
            if !job.is_current(worker, attempt) {
                return Err(StoreError::Conflict("stale attempt".into()));
            }
            if let Some(a) = job.attempts.last_mut() {
                a.ended_ms = Some(now);
                a.end = Some(reason.to_string());
            }
            let lost = job.attempt.saturating_sub(job.rejections);
            if job.cancel_requested {
                job.status = JobStatus::Cancelled;
                job.completed_ms = Some(now);
            } else if lost >= job.max_attempts {
                job.status = JobStatus::Failed;
                job.failure = Some(FailureKind::WorkerLost);
                job.error = Some(format!(
                    "worker lost ({reason}) on attempt {lost} of {}",
                    job.max_attempts
                ));
                job.completed_ms = Some(now);
            } else {
                job.status = JobStatus::Queued;
                job.queue_seq = Some(seq);
                job.started_ms = None;
            }
            Ok(())
        })
        .await;
    let job = match res {
        Ok(job) => job,
        Err(StoreError::Conflict(_)) => {
            hub.dispatch.release(worker, job_id);
            return Ok(());
        }
        Err(e) => return Err(e.into()),
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
        hub.relay.live(job_id).state.lock().await.loaded = false;
        hub.dispatch.enqueue(seq, job_id, &job.tags);
        hub.emit(Some(job.owner.clone()), ServerMsg::Job(summary(&job)));
    }
    Ok(())
}

/// Most refusals before a job fails: nobody wants it.
const MAX_REJECTIONS: u32 = 100;

/// A worker refused an assignment (no free slot, draining): requeue it without using up an
/// attempt (after `MAX_REJECTIONS` refusals the job fails instead of bouncing forever).
pub async fn requeue_rejected(
    hub: &Hub,
    job_id: &str,
    worker: &str,
    attempt: u32,
    reason: &str,
) -> ApiResult<()> {
    let counted = hub
        .store
        .update_job(job_id, &|job: &mut JobRecord| {
            if !job.is_current(worker, attempt) {
                return Err(StoreError::Conflict("stale attempt".into()));
            }
            if job.rejections < MAX_REJECTIONS {
                job.rejections += 1;
            }
            Ok(())
        })
        .await;
    match counted {
        Ok(job) if job.rejections >= MAX_REJECTIONS => {
            requeue_or_fail(hub, job_id, worker, attempt, "rejected by every worker").await
        }
        Ok(_) => requeue_or_fail(hub, job_id, worker, attempt, reason).await,
        Err(StoreError::Conflict(_)) => {
            hub.dispatch.release(worker, job_id);
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Starts the reconnect grace of a worker that disconnected at `generation`: if it has not come
/// back when the grace ends, its jobs are requeued (or failed).
pub fn start_grace(hub: Arc<Hub>, worker: String, generation: u64) {
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(hub.config.reconnect_grace_secs)).await;
        if hub.dispatch.generation(&worker) != Some(generation)
            || hub.dispatch.is_connected(&worker)
        {
            return;
        }
        expire_worker_jobs(&hub, &worker, "reconnect grace expired").await;
    });
}

/// Requeues (or fails) every job a worker holds.
pub async fn expire_worker_jobs(hub: &Hub, worker: &str, reason: &str) {
    for job_id in hub.dispatch.held(worker) {
        let attempt = match hub.store.get_job(&job_id).await {
            Ok(Some(j)) if j.worker_id.as_deref() == Some(worker) => j.attempt,
            _ => {
                hub.dispatch.release(worker, &job_id);
                continue;
            }
        };
        if let Err(e) = requeue_or_fail(hub, &job_id, worker, attempt, reason).await {
            tracing::error!(job_id, error = %e.message, "requeue failed");
        }
    }
}

/// Legacy workers have no connection to lose: one silent past its offline time plus the grace
/// loses its jobs.
pub async fn legacy_watchdog(hub: Arc<Hub>) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        let limit = (hub.config.legacy_offline_secs + hub.config.reconnect_grace_secs) * 1000;
        let now = now_ms();
        let stale: Vec<String> = hub
            .dispatch
            .views(hub.config.legacy_offline_secs * 1000)
            .into_iter()
            .filter(|w| w.kind == "legacy" && w.slots_used > 0)
            .filter(|w| {
                w.last_heartbeat.is_some()
                    && hub
                        .dispatch
                        .last_seen(&w.worker_id)
                        .is_some_and(|t| now.saturating_sub(t) > limit)
            })
            .map(|w| w.worker_id)
            .collect();
        for w in stale {
            expire_worker_jobs(&hub, &w, "legacy worker silent").await;
        }
    }
}

/// Cancels a job for its owner or an admin; returns the job as it is after the request.
pub async fn cancel(hub: &Arc<Hub>, caller: &Caller, job_id: &str) -> ApiResult<JobRecord> {
    let before = visible_job(hub, caller, job_id).await?;
    if before.status.is_terminal() {
        return Ok(before);
    }
    let now = now_ms();
    let job = hub
        .store
        .update_job(job_id, &|job: &mut JobRecord| {
            if job.status.is_terminal() {
                return Ok(());
            }
            job.cancel_requested = true;
            if job.status == JobStatus::Queued {
                job.status = JobStatus::Cancelled;
                job.completed_ms = Some(now);
                job.queue_seq = None;
            }
            Ok(())
        })
        .await?;
    hub.store.sync().await?;
    match job.status {
        JobStatus::Cancelled => {
            if let Some(seq) = before.queue_seq {
                hub.dispatch.dequeue(seq, &job.tags);
            }
            hub.relay.end(&job.id);
            hub.emit(Some(job.owner.clone()), ServerMsg::Job(summary(&job)));
        }
        JobStatus::Assigned | JobStatus::Running => {
            let worker = job.worker_id.clone().unwrap_or_default();
            match hub.dispatch.conn(&worker) {
                Some(conn) => {
                    let _ = conn
                        .send(HubMsg::Cancel(Cancel {
                            job_id: job.id.clone(),
                            attempt: job.attempt,
                            grace_secs: hub.config.cancel_grace_secs,
                        }))
                        .await;
                }
                None if hub.dispatch.kind(&worker) == Some(WorkerKind::Agent) => {
                    // The agent is away: end the job now; it is told to abandon on return.
                    force_cancel(hub, &job.id, &worker, job.attempt).await?;
                }
                None => {}
            }
            // Watchdog: a worker that does not stop within the grace loses the job anyway.
            let hub2 = hub.clone();
            let (id, attempt) = (job.id.clone(), job.attempt);
            tokio::spawn(async move {
                let wait = hub2.config.cancel_grace_secs + 15;
                tokio::time::sleep(Duration::from_secs(wait)).await;
                if let Ok(Some(j)) = hub2.store.get_job(&id).await
                    && !j.status.is_terminal()
                    && j.attempt == attempt
                {
                    let w = j.worker_id.clone().unwrap_or_default();
                    if let Some(conn) = hub2.dispatch.conn(&w) {
                        let _ = conn
                            .send(HubMsg::Abandon(cmdx_proto::agent::Abandon {
                                job_id: id.clone(),
                                attempt,
                                reason: "cancelled".into(),
                            }))
                            .await;
                    }
                    let _ = force_cancel(&hub2, &id, &w, attempt).await;
                }
            });
        }
        _ => {}
    }
    hub.store
        .get_job(job_id)
        .await?
        .ok_or_else(|| ApiError::not_found("job not found"))
}

/// Marks a held job cancelled without the worker's report.
async fn force_cancel(hub: &Hub, job_id: &str, worker: &str, attempt: u32) -> ApiResult<()> {
    let now = now_ms();
    let job = hub
        .store
        .update_job(job_id, &|job: &mut JobRecord| {
            if job.status.is_terminal() || job.attempt != attempt {
                return Err(StoreError::Conflict("moved on".into()));
            }
            job.status = JobStatus::Cancelled;
            job.completed_ms = Some(now);
            if let Some(a) = job.attempts.last_mut() {
                a.ended_ms = Some(now);
                a.end = Some("cancelled".into());
            }
            Ok(())
        })
        .await;
    match job {
        Ok(job) => {
            hub.store.sync().await?;
            finished_cleanup(hub, &job, worker);
            Ok(())
        }
        Err(StoreError::Conflict(_)) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// A job the caller may see, or 404 (also for other users' jobs).
pub async fn visible_job(hub: &Hub, caller: &Caller, job_id: &str) -> ApiResult<JobRecord> {
    hub.store
        .get_job(job_id)
        .await?
        .filter(|j| caller.can_see(&j.owner))
        .ok_or_else(|| ApiError::not_found("job not found"))
}

/// A worker as `caller` may see it: its `currentJobs` lists only the jobs the caller may see
/// (admins: all; users: their own), so job ids never reach other tenants.
pub async fn worker_view_for(
    hub: &Hub,
    caller: &Caller,
    mut view: cmdx_proto::rest::WorkerView,
) -> cmdx_proto::rest::WorkerView {
    if caller.is_admin() || view.current_jobs.is_empty() {
        return view;
    }
    let mut mine = Vec::new();
    for id in view.current_jobs {
        if visible_job(hub, caller, &id).await.is_ok() {
            mine.push(id);
        }
    }
    view.current_jobs = mine;
    view
}

/// List entry / event of a job.
pub fn summary(job: &JobRecord) -> JobSummary {
    JobSummary {
        job_id: job.id.clone(),
        command: job.command.clone(),
        status: job.status,
        worker_id: job.worker_id.clone(),
        attempt: job.attempt,
        owner: job.owner.clone(),
        tags: job.tags.clone(),
        created_at: rfc3339(job.created_ms),
        started_at: job.started_ms.map(rfc3339),
        completed_at: job.completed_ms.map(rfc3339),
        exit_code: job.outcome.as_ref().and_then(|o| o.exit_code),
        failure: job.failure,
        output_bytes: job.output.total_bytes,
    }
}

/// The whole job, with its stored output split by stream.
pub async fn view(hub: &Hub, job: &JobRecord) -> ApiResult<JobView> {
    let (stdout, stderr) =
        relay::read_split(hub.store.as_ref(), &job.id, STATUS_STREAM_CAP).await?;
    let outcome = job.outcome.clone().unwrap_or_default();
    let total = if job.status.is_terminal() {
        job.output.total_bytes
    } else {
        let st = hub.relay.live(&job.id);
        let st = st.state.lock().await;
        if st.loaded {
            st.end_offset
        } else {
            job.output.total_bytes
        }
    };
    let duration = match (job.started_ms, job.completed_ms) {
        (Some(s), Some(c)) => c.saturating_sub(s),
        _ => outcome.duration_ms,
    };
    Ok(JobView {
        job_id: job.id.clone(),
        command: job.command.clone(),
        file_url: job
            .file
            .as_ref()
            .map(|f| format!("/api/files/download/{}", f.file_id)),
        status: job.status,
        worker_id: job.worker_id.clone(),
        attempt: job.attempt,
        max_attempts: job.max_attempts,
        owner: job.owner.clone(),
        tags: job.tags.clone(),
        env_keys: job.env.keys().cloned().collect(),
        created_at: rfc3339(job.created_ms),
        started_at: job.started_ms.map(rfc3339),
        completed_at: job.completed_ms.map(rfc3339),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
        exit_code: outcome.exit_code,
        signal: outcome.signal,
        timeout: job.timeout_secs,
        error: job.error.clone(),
        failure: job.failure,
        result: job.status.is_terminal().then(|| JobResult {
            success: job.status == JobStatus::Completed,
            duration,
            lines: job.output.lines,
        }),
        cancel_requested: job.cancel_requested,
        output_bytes: total,
        output_truncated: job.output.truncated,
        peak_memory_bytes: outcome.peak_memory_bytes,
        cpu_ms: outcome.cpu_ms,
        attempts: job
            .attempts
            .iter()
            .map(|a| AttemptView {
                attempt: a.attempt,
                worker_id: a.worker_id.clone(),
                assigned_at: rfc3339(a.assigned_ms),
                ended_at: a.ended_ms.map(rfc3339),
                end: a.end.clone(),
            })
            .collect(),
        artifact_patterns: job.artifact_globs.clone(),
        artifacts: job
            .current_artifacts()
            .map(|a| {
                a.files
                    .iter()
                    .map(|f| ArtifactView {
                        path: f.path.clone(),
                        size: f.size,
                        sha256: f.sha256.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default(),
        artifacts_url: job
            .current_artifacts()
            .map(|_| format!("/api/jobs/{}/artifacts", job.id)),
        artifacts_skipped: job
            .current_artifacts()
            .map(|a| {
                a.skipped
                    .iter()
                    .map(|(path, reason)| ArtifactSkip {
                        path: path.clone(),
                        reason: reason.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default(),
        artifacts_skipped_total: job.current_artifacts().map_or(0, |a| a.skipped_total),
        artifacts_error: outcome.artifacts_error.clone(),
    })
}

/// What one janitor pass removed.
#[derive(Debug, Default, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JanitorReport {
    /// Finished jobs deleted (with their output).
    pub jobs_deleted: u64,
    /// Output bytes freed.
    pub output_bytes_freed: u64,
    /// File records deleted.
    pub files_deleted: u64,
    /// Blob bytes freed (contents no file record refers to any more).
    pub blob_bytes_freed: u64,
    /// Expired worker token records dropped.
    pub tokens_deleted: u64,
}

/// Deletes finished jobs older than the job retention and files unused for the file
/// retention. Queued, assigned and running jobs are never touched, nor files they use.
pub async fn janitor_pass(hub: &Hub) -> ApiResult<JanitorReport> {
    let now = now_ms();
    let job_cutoff = now.saturating_sub(hub.config.job_retention_secs * 1000);
    let file_cutoff = now.saturating_sub(hub.config.file_retention_secs * 1000);
    let mut report = JanitorReport::default();
    loop {
        let old = hub
            .store
            .list_jobs(crate::store::JobQuery {
                owner: None,
                before: None,
                limit: 1000,
                filter: &|j: &JobRecord| {
                    j.status.is_terminal() && j.completed_ms.is_some_and(|c| c < job_cutoff)
                },
                max_scan: usize::MAX,
            })
            .await?;
        if old.is_empty() {
            break;
        }
        for j in &old {
            report.output_bytes_freed += hub.store.delete_job(&j.id).await?;
            report.jobs_deleted += 1;
        }
        if old.len() < 1000 {
            break;
        }
    }
    // Files used by jobs that are not finished stay, whatever their age.
    let in_use: std::collections::HashSet<String> = hub
        .store
        .list_jobs(crate::store::JobQuery {
            owner: None,
            before: None,
            limit: usize::MAX,
            filter: &|j: &JobRecord| !j.status.is_terminal() && j.file.is_some(),
            max_scan: usize::MAX,
        })
        .await?
        .into_iter()
        .filter_map(|j| j.file.map(|f| f.file_id))
        .collect();
    let files = hub.store.all_files().await?;
    let mut kept_shas = std::collections::HashSet::new();
    let mut doomed = Vec::new();
    for f in files {
        let doomed_now = match &f.artifacts_of {
            // A job's artifact ZIP lives as long as the job points at it. An unbound one (its
            // upload lost the fencing race, or a later attempt replaced it) goes after an hour,
            // so an upload between storing the file and binding it is never collected.
            Some(job_id) => match hub.store.get_job(job_id).await? {
                None => true,
                Some(j) => {
                    j.artifacts.as_ref().is_none_or(|a| a.file_id != f.id)
                        && f.created_ms < now.saturating_sub(3600 * 1000)
                }
            },
            None => {
                let last = f.last_used_ms.unwrap_or(0).max(f.created_ms);
                last < file_cutoff && !in_use.contains(&f.id)
            }
        };
        if doomed_now {
            doomed.push(f);
        } else {
            kept_shas.insert(f.sha256.clone());
        }
    }
    for f in doomed {
        hub.store.delete_file(&f.id).await?;
        report.files_deleted += 1;
        if !kept_shas.contains(&f.sha256) {
            let path = hub.blob_dir.join(&f.sha256);
            if let Ok(m) = tokio::fs::metadata(&path).await
                && tokio::fs::remove_file(&path).await.is_ok()
            {
                report.blob_bytes_freed += m.len();
            }
            kept_shas.insert(f.sha256.clone());
        }
    }
    // Revoked sessions that have expired anyway need no record.
    let now_s = now / 1000;
    for (sid, exp) in hub.store.revoked_sessions().await? {
        if exp <= now_s {
            hub.store.delete_revoked_session(&sid).await?;
        }
    }
    hub.auth.forget_expired_revocations(now_s);
    // An expired token no longer verifies; its record only lists it among the live ones.
    for t in hub.store.list_worker_tokens().await? {
        if t.expires_ms <= now && hub.store.delete_worker_token(&t.id).await? {
            report.tokens_deleted += 1;
        }
    }
    hub.store.sync().await?;
    metrics::counter!("cmdx_janitor_jobs_deleted_total").increment(report.jobs_deleted);
    metrics::counter!("cmdx_janitor_files_deleted_total").increment(report.files_deleted);
    metrics::counter!("cmdx_janitor_bytes_freed_total")
        .increment(report.output_bytes_freed + report.blob_bytes_freed);
    if report.jobs_deleted + report.files_deleted > 0 {
        tracing::info!(
            jobs = report.jobs_deleted,
            files = report.files_deleted,
            bytes = report.output_bytes_freed + report.blob_bytes_freed,
            "janitor freed space"
        );
    }
    Ok(report)
}

/// Runs [`janitor_pass`] every `janitor_interval_secs`.
pub async fn janitor(hub: Arc<Hub>) {
    let every = hub.config.janitor_interval_secs;
    if every == 0 {
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_secs(every));
    loop {
        tick.tick().await;
        if let Err(e) = janitor_pass(&hub).await {
            tracing::error!(error = %e.message, "janitor pass failed");
        }
    }
}
