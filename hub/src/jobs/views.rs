//! What the API and dashboards see of a job: visibility (a foreign job is the same 404 as a
//! missing one), list entries and events ([`summary`]) and the whole job with its output
//! ([`view`]).

use cmdx_proto::JobStatus;
use cmdx_proto::rest::{
    ArtifactSkip, ArtifactView, AttemptView, JobResult, JobSummary, JobView, WorkerView,
};

use super::{LifecycleError, LifecycleResult};
use crate::Hub;
use crate::auth::Caller;
use crate::dispatch::QueueState;
use crate::relay;
use crate::store::JobRecord;
use crate::time::rfc3339;

/// Bytes of each stream returned inline by `/api/jobs/status`.
pub const STATUS_STREAM_CAP: usize = 8 << 20;

/// A job the caller may see, or 404 (also for other users' jobs).
pub async fn visible_job(hub: &Hub, caller: &Caller, job_id: &str) -> LifecycleResult<JobRecord> {
    hub.store
        .get_job(job_id)
        .await?
        .filter(|j| caller.can_see(&j.owner))
        .ok_or(LifecycleError::NotFound("job"))
}

/// A worker as `caller` may see it: its `currentJobs` lists only the jobs the caller may see
/// (admins: all; users: their own), so job ids never reach other tenants.
pub async fn worker_view_for(hub: &Hub, caller: &Caller, mut view: WorkerView) -> WorkerView {
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
        priority: job.priority,
    }
}

/// The whole job, with its stored output split by stream (`with_output`) or without it (empty
/// `stdout` and `stderr`: a client that wants the rest, not megabytes of log).
pub async fn view(hub: &Hub, job: &JobRecord, with_output: bool) -> LifecycleResult<JobView> {
    let (stdout, stderr) = if with_output {
        relay::read_split(hub.store.as_ref(), &job.id, STATUS_STREAM_CAP).await?
    } else {
        Default::default()
    };
    let outcome = job.outcome.clone().unwrap_or_default();
    let total = if job.status.is_terminal() {
        job.output.total_bytes
    } else {
        hub.relay
            .end_offset(&job.id)
            .await
            .unwrap_or(job.output.total_bytes)
    };
    let queue = queue_state(hub, job);
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
            .map(|f| crate::urls::download_path(&f.file_id)),
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
        image: job.image.clone(),
        image_digest: outcome.image_digest.clone(),
        pull_ms: outcome.pull_ms,
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
        queue_position: queue.map(|q| q.position),
        no_matching_worker: queue.is_some_and(|q| q.no_matching_worker),
        wait_reason: queue.map(|q| q.reason),
        priority: job.priority,
        tty_size: job.tty.map(|t| cmdx_proto::WindowSize {
            cols: t.cols,
            rows: t.rows,
        }),
    })
}

/// Where a queued job stands in this hub's dispatch index; `None` for a job not queued. On a
/// hub of a cluster the no-worker verdict is never given: the other hubs' workers are not in
/// this hub's registry.
pub fn queue_state(hub: &Hub, job: &JobRecord) -> Option<QueueState> {
    let seq = job.queue_seq.filter(|_| job.status == JobStatus::Queued)?;
    let entry = crate::queue::Entry::of(seq, job);
    let mut state =
        hub.dispatch
            .queue_state(&entry, &job.tags, hub.config.legacy_offline_secs * 1000);
    if hub.cluster.is_shared() && state.no_matching_worker {
        state.no_matching_worker = false;
        state.reason = cmdx_proto::rest::WaitReason::NoFreeSlot;
    }
    Some(state)
}
