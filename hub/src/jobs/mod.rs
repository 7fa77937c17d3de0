//! Jobs: everything the hub does with a job between its submission and its deletion.
//!
//! Every transition is an atomic store update of the job record that checks the job's current
//! `(worker, attempt, token)` (fencing), and acknowledgements wait for [`Store::sync`]. The rooms:
//!
//! - [`record`]: the pure transitions of a job record (claim, start, finish, loss, cancel).
//! - [`submit`]: a submission checked and stored.
//! - [`dispatcher`]: the loop that plans and claims assignments and pushes them once durable,
//!   and the legacy pull claim.
//! - [`lifecycle`]: what workers report (start, output, finish, refusal) and what users and the
//!   hub decide (cancel, requeue after a lost attempt).
//! - [`liveness`]: the timers: reconnect grace, the cancel watchdog and the legacy watchdog.
//! - [`recovery`]: the in-memory index rebuilt from the store at start.
//! - [`views`]: what the API and dashboards see of a job.
//! - [`janitor`]: old jobs, files, blobs and tokens removed.
//!
//! Lifecycle code answers with [`LifecycleError`]; the HTTP edge (`error.rs`) and the agent
//! socket (`ws_agent.rs`) each map it once.
//!
//! [`Store::sync`]: crate::store::Store::sync

pub mod dispatcher;
pub mod janitor;
pub mod lifecycle;
pub mod liveness;
pub mod record;
pub mod recovery;
pub mod submit;
#[cfg(test)]
pub(crate) mod testkit;
pub mod views;

use crate::Hub;
pub use crate::error::LifecycleError;
use crate::store::{JobRecord, StoreError};

/// Result of a lifecycle operation.
pub type LifecycleResult<T> = Result<T, LifecycleError>;

/// Refuses a report on `job` unless `(worker, token_id)` holds `attempt` of it.
pub(crate) fn check_current(
    job: &JobRecord,
    worker: &str,
    token_id: &str,
    attempt: u32,
) -> LifecycleResult<()> {
    if !job.held_by(worker, attempt, token_id) {
        return Err(LifecycleError::Stale(format!(
            "attempt {attempt} of job {} is not held by this worker",
            job.id
        )));
    }
    Ok(())
}

/// Applies `change` to the job while `(worker, token_id)` still holds `attempt` of it; a stale
/// attempt changes nothing and is [`LifecycleError::Stale`]. Not synced.
pub(crate) async fn update_held(
    hub: &Hub,
    job_id: &str,
    worker: &str,
    token_id: &str,
    attempt: u32,
    change: &(dyn Fn(&mut JobRecord) + Sync),
) -> LifecycleResult<JobRecord> {
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
            StoreError::Conflict(_) => LifecycleError::Stale("stale attempt".into()),
            other => other.into(),
        })
}

/// Applies `change` to the job while `(worker, attempt)` is its current assignment, whatever
/// the credential (the hub's own decisions: loss, refusal, forced cancel, a fenced finish).
/// `Ok(None)` when the attempt moved on: nothing changed. Not synced.
pub(crate) async fn update_current(
    hub: &Hub,
    job_id: &str,
    worker: &str,
    attempt: u32,
    change: &(dyn Fn(&mut JobRecord) + Sync),
) -> LifecycleResult<Option<JobRecord>> {
    let res = hub
        .store
        .update_job(job_id, &|job: &mut JobRecord| {
            if !job.is_current(worker, attempt) {
                return Err(StoreError::Conflict("stale attempt".into()));
            }
            change(job);
            Ok(())
        })
        .await;
    match res {
        Ok(job) => Ok(Some(job)),
        Err(StoreError::Conflict(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}
