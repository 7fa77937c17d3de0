//! The timers that decide a job's worker is gone: the reconnect grace of an agent that
//! disconnected, the cancel watchdog of a worker that does not stop, and the legacy watchdog of
//! REST pollers that fell silent. Each ends in a lost attempt ([`requeue_or_fail`]) or a forced
//! cancel.

use std::sync::Arc;
use std::time::Duration;

use cmdx_proto::agent::{Abandon, HubMsg};

use super::lifecycle::{force_cancel, requeue_or_fail};
use crate::Hub;
use crate::store::now_ms;

/// A worker told to cancel gets this long past the cancel grace before it loses the job anyway.
const CANCEL_SLACK: Duration = Duration::from_secs(15);

/// Starts the reconnect grace of a worker that disconnected at `generation`: if it has not come
/// back when the grace ends, its jobs are requeued (or failed).
pub fn start_grace(hub: &Arc<Hub>, worker: String, generation: u64) {
    let hub2 = hub.clone();
    hub.tasks.spawn(async move {
        let hub = hub2;
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
            tracing::error!(job_id, error = %e, "requeue failed");
        }
    }
}

/// Watches a cancel asked of the worker holding `attempt` of `job_id`: a worker that has not
/// ended the job within the cancel grace (plus slack) is told to abandon it, and the job ends as
/// cancelled without its report.
pub fn watch_cancel(hub: &Arc<Hub>, job_id: String, attempt: u32) {
    let hub2 = hub.clone();
    hub.tasks.spawn(async move {
        let hub = hub2;
        let wait = Duration::from_secs(hub.config.cancel_grace_secs) + CANCEL_SLACK;
        tokio::time::sleep(wait).await;
        if let Ok(Some(j)) = hub.store.get_job(&job_id).await
            && !j.status.is_terminal()
            && j.attempt == attempt
        {
            let w = j.worker_id.clone().unwrap_or_default();
            if let Some(conn) = hub.dispatch.conn(&w) {
                let _ = conn
                    .send(HubMsg::Abandon(Abandon {
                        job_id: job_id.clone(),
                        attempt,
                        reason: "cancelled".into(),
                    }))
                    .await;
            }
            if let Err(e) = force_cancel(&hub, &job_id, &w, attempt).await {
                tracing::warn!(job_id, error = %e, "forced cancel failed");
            }
        }
    });
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
