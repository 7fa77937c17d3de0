//! The timers that decide a job's worker is gone: the reconnect grace of an agent that
//! disconnected, the cancel watchdog of a worker that does not stop, and the legacy watchdog of
//! REST pollers that fell silent. Each ends in a lost attempt ([`requeue_or_fail`]) or a forced
//! cancel.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use cmdx_proto::agent::{Abandon, HubMsg};

use super::lifecycle::{force_cancel, requeue_or_fail};
use crate::Hub;
use crate::store::now_ms;

/// A worker told to cancel gets this long past the cancel grace before it loses the job anyway.
const CANCEL_SLACK: Duration = Duration::from_secs(15);

/// Starts the reconnect grace of a worker that disconnected at `generation`: if it has not come
/// back when the grace ends, its jobs are requeued (or failed).
pub fn start_grace(hub: &Arc<Hub>, worker: String, generation: u64) {
    // The grace runs from now, not from when the task first runs.
    let ends = Instant::now() + Duration::from_secs(hub.config.reconnect_grace_secs);
    let hub2 = hub.clone();
    hub.tasks.spawn(async move {
        let hub = hub2;
        tokio::time::sleep_until(ends).await;
        if hub.dispatch.generation(&worker) != Some(generation)
            || hub.dispatch.is_connected(&worker)
        {
            return;
        }
        if crate::cluster::present_elsewhere(&hub, &worker).await {
            // It came back through another hub of the cluster, which holds its jobs now.
            for job_id in hub.dispatch.held(&worker) {
                hub.dispatch.release(&worker, &job_id);
            }
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
    let ends = Instant::now() + Duration::from_secs(hub.config.cancel_grace_secs) + CANCEL_SLACK;
    let hub2 = hub.clone();
    hub.tasks.spawn(async move {
        let hub = hub2;
        tokio::time::sleep_until(ends).await;
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
/// loses its jobs. Looks every [`LEGACY_SWEEP`].
pub(crate) async fn legacy_watchdog(hub: Arc<Hub>) {
    watch_legacy(&hub, now_ms).await;
}

/// How often the legacy watchdog looks.
pub const LEGACY_SWEEP: Duration = Duration::from_secs(5);

/// The legacy watchdog on the wall clock `clock` (milliseconds since the epoch): a worker's last
/// contact is a wall-clock time, kept across restarts.
async fn watch_legacy(hub: &Hub, clock: impl Fn() -> u64) {
    let mut tick = tokio::time::interval(LEGACY_SWEEP);
    loop {
        tick.tick().await;
        let limit = (hub.config.legacy_offline_secs + hub.config.reconnect_grace_secs) * 1000;
        let now = clock();
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
            expire_worker_jobs(hub, &w, "legacy worker silent").await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::testkit::{self, Kit};
    use cmdx_proto::JobStatus;

    const GRACE: u64 = 30;

    async fn kit() -> Kit {
        Kit::open(|c| {
            c.reconnect_grace_secs = GRACE;
            c.cancel_grace_secs = 10;
            c.legacy_offline_secs = 20;
        })
        .await
    }

    #[tokio::test(start_paused = true)]
    async fn a_worker_that_stays_away_past_its_grace_loses_its_jobs() {
        let kit = kit().await;
        let job = kit.running_job("w0").await;
        let generation = kit.hub.dispatch.generation("w0").expect("known worker");
        start_grace(&kit.hub, "w0".into(), generation);
        testkit::advance(Duration::from_secs(GRACE - 1)).await;
        assert_eq!(
            kit.status(&job).await,
            JobStatus::Running,
            "still within the grace"
        );
        assert_eq!(kit.hub.dispatch.held("w0"), vec![job.clone()]);
        testkit::advance(Duration::from_secs(2)).await;
        kit.wait_for_status(&job, JobStatus::Queued).await;
        let rec = kit.record(&job).await;
        assert_eq!(
            rec.attempts[0].end.as_deref(),
            Some("reconnect grace expired")
        );
        kit.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_worker_back_within_its_grace_keeps_its_jobs() {
        let kit = kit().await;
        let job = kit.running_job("w0").await;
        let generation = kit.hub.dispatch.generation("w0").expect("known worker");
        start_grace(&kit.hub, "w0".into(), generation);
        // A reconnect bumps the generation: the old grace no longer applies.
        kit.reconnect("w0");
        testkit::advance(Duration::from_secs(GRACE * 2)).await;
        kit.settle().await;
        assert_eq!(kit.status(&job).await, JobStatus::Running);
        kit.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_worker_that_ignores_a_cancel_loses_the_job_after_the_cancel_grace() {
        let kit = kit().await;
        let job = kit.running_job("w0").await;
        let after = kit.cancel(&job).await;
        assert_eq!(
            after.status,
            JobStatus::Running,
            "the worker was asked to stop"
        );
        assert!(after.cancel_requested);
        let wait = Duration::from_secs(kit.hub.config.cancel_grace_secs) + CANCEL_SLACK;
        testkit::advance(wait - Duration::from_secs(1)).await;
        assert_eq!(
            kit.status(&job).await,
            JobStatus::Running,
            "within the cancel grace"
        );
        testkit::advance(Duration::from_secs(2)).await;
        kit.wait_for_status(&job, JobStatus::Cancelled).await;
        kit.wait_until("the slot is free again", || {
            kit.hub.dispatch.held("w0").is_empty()
        })
        .await;
        kit.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_legacy_worker_loses_its_jobs_after_offline_time_and_grace() {
        let kit = kit().await;
        let job = kit.running_job("w0").await;
        // The wall clock as the runtime's clock moves it: the worker was last seen now.
        let (wall0, t0) = (now_ms(), tokio::time::Instant::now());
        let clock = move || wall0 + t0.elapsed().as_millis() as u64;
        let hub = kit.hub.clone();
        kit.hub
            .tasks
            .spawn(async move { watch_legacy(&hub, clock).await });
        kit.settle().await;
        let limit = Duration::from_secs(kit.hub.config.legacy_offline_secs + GRACE);
        // Sweeps every 5 s up to just before the limit (40 s): the worker is not silent enough.
        testkit::advance(limit - Duration::from_secs(1)).await;
        assert_eq!(kit.status(&job).await, JobStatus::Running);
        // The first sweep past the limit (at 45 s) takes the job back.
        testkit::advance(LEGACY_SWEEP + Duration::from_secs(1)).await;
        kit.wait_for_status(&job, JobStatus::Queued).await;
        let rec = kit.record(&job).await;
        assert_eq!(rec.attempts[0].end.as_deref(), Some("legacy worker silent"));
        kit.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn shutting_down_ends_pending_timers() {
        let kit = kit().await;
        let job = kit.running_job("w0").await;
        let generation = kit.hub.dispatch.generation("w0").expect("known worker");
        // (The cancel first: its flush would let the paused clock run to the grace's end.)
        kit.cancel(&job).await;
        start_grace(&kit.hub, "w0".into(), generation);
        // Every timer is still pending: shutdown ends them without waiting them out.
        let started = tokio::time::Instant::now();
        kit.hub.tasks.shutdown().await;
        assert_eq!(
            started.elapsed(),
            Duration::ZERO,
            "shutdown waited for a timer"
        );
        assert_eq!(kit.status(&job).await, JobStatus::Running);
        // A timer started after shutdown never runs.
        start_grace(&kit.hub, "w0".into(), generation);
        testkit::advance(Duration::from_secs(GRACE * 2)).await;
        kit.settle().await;
        assert_eq!(kit.status(&job).await, JobStatus::Running);
    }

    #[tokio::test]
    async fn serve_ends_every_timer_before_it_returns() {
        let kit = Kit::open(|c| {
            c.reconnect_grace_secs = 3600;
            c.cancel_grace_secs = 3600;
            c.drain_delay_secs = 0;
        })
        .await;
        let job = kit.running_job("w0").await;
        kit.cancel(&job).await;
        let generation = kit.hub.dispatch.generation("w0").expect("known worker");
        start_grace(&kit.hub, "w0".into(), generation);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        crate::serve(kit.hub.clone(), listener, async {})
            .await
            .expect("serve");
        assert_eq!(
            Arc::strong_count(&kit.hub),
            1,
            "a task outlived serve holding the hub"
        );
    }
}
