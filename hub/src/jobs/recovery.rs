//! Recovery at start: the in-memory dispatch index rebuilt from the store, and a reconnect grace
//! for every worker that held jobs when the hub stopped.

use std::sync::Arc;

use cmdx_proto::JobStatus;

use crate::Hub;
use crate::dispatch::WorkerKind;
use crate::error::HubError;
use crate::store::JobRecord;

/// Rebuilds the in-memory index from the store and starts reconnect graces for workers that
/// held jobs when the hub stopped.
pub async fn recover(hub: &Arc<Hub>) -> Result<(), HubError> {
    hub.apply_users(&hub.store.list_users().await?);
    for w in hub.store.list_workers().await? {
        let kind = if w.kind == "legacy" {
            WorkerKind::Legacy
        } else {
            WorkerKind::Agent
        };
        hub.dispatch.ensure_known(w, kind);
    }
    hub.dispatch.load_drains(hub.store.list_drains().await?);
    // The job records are the truth: every queued job goes back in the dispatch index under
    // its `queue_seq`, every assigned or running job back to its worker, which gets a
    // reconnect grace.
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
                hub.dispatch
                    .enqueue(&job.tags, crate::queue::Entry::of(seq, &job));
                n_queued += 1;
            }
            _ => {
                if let Some(w) = &job.worker_id {
                    hub.dispatch.hold(w, &job.id, &job.owner);
                    workers.insert(w.clone());
                }
                n_active += 1;
            }
        }
    }
    for w in workers {
        let generation = hub.dispatch.generation(&w).unwrap_or(0);
        super::liveness::start_grace(hub, w, generation);
    }
    tracing::info!(queued = n_queued, active = n_active, "recovered store");
    Ok(())
}
