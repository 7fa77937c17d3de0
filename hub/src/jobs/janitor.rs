//! The janitor: finished jobs past the job retention, files unused past the file retention
//! (and blobs no file refers to any more), expired session revocations and worker tokens.

use std::sync::Arc;
use std::time::Duration;

use super::LifecycleResult;
use crate::Hub;
use crate::store::{JobQuery, JobRecord, now_ms};

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
pub async fn janitor_pass(hub: &Hub) -> LifecycleResult<JanitorReport> {
    let now = now_ms();
    let job_cutoff = now.saturating_sub(hub.config.job_retention_secs * 1000);
    let file_cutoff = now.saturating_sub(hub.config.file_retention_secs * 1000);
    let mut report = JanitorReport::default();
    loop {
        let old = hub
            .store
            .list_jobs(JobQuery {
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
        .list_jobs(JobQuery {
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
            match hub.blobs.remove(&f.sha256).await {
                Ok(freed) => report.blob_bytes_freed += freed,
                Err(e) => tracing::warn!(sha256 = %f.sha256, error = %e, "blob not removed"),
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
pub(crate) async fn janitor(hub: Arc<Hub>) {
    let every = hub.config.janitor_interval_secs;
    if every == 0 {
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_secs(every));
    loop {
        tick.tick().await;
        if let Err(e) = janitor_pass(&hub).await {
            tracing::error!(error = %e, "janitor pass failed");
        }
    }
}
