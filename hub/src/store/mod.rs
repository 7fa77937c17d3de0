//! The hub's durable state, behind the async [`Store`] trait so that a second backend
//! (PostgreSQL, for several hubs) is an addition, not a rewrite. No sled type crosses the trait.
//!
//! Durability contract: a write method returns once the write is applied (visible to readers);
//! it is on disk only after a later [`Store::sync`] resolves. Callers acknowledge to clients
//! after `sync`; concurrent callers share one flush (group commit, see `sled_store`).

mod cache;
pub mod postgres;
pub mod records;
mod sled_store;

use async_trait::async_trait;

pub use postgres::PgStore;
pub use records::*;
pub use sled_store::{FlushObserver, SledStore};

/// Errors from the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend failed (I/O, corruption reported by the engine).
    #[error("store backend error during {op}: {message}")]
    Backend {
        /// What was being done.
        op: &'static str,
        /// The engine's message.
        message: String,
    },
    /// The backend cannot be reached just now (a database restarting, a network cut); nothing
    /// was written. Retry later.
    #[error("store unavailable during {op}: {message}")]
    Unavailable {
        /// What was being done.
        op: &'static str,
        /// The driver's message.
        message: String,
    },
    /// A stored value could not be decoded.
    #[error("corrupt record at {key}: {message}")]
    Corrupt {
        /// Which key.
        key: String,
        /// Decoder message.
        message: String,
    },
    /// The record does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// An update closure refused the change (state moved on: stale attempt, not queued, ...).
    #[error("conflict: {0}")]
    Conflict(String),
}

/// Result alias for store calls.
pub type StoreResult<T> = Result<T, StoreError>;

/// A read-modify-write step on a job; may run more than once (compare-and-swap retries), so it must
/// not have side effects.
pub type JobUpdate<'a> = &'a (dyn Fn(&mut JobRecord) -> StoreResult<()> + Send + Sync);

/// [`JobUpdate`] for the `i`th job of a batch ([`Store::update_jobs`]).
pub type BatchUpdate<'a> = &'a (dyn Fn(usize, &mut JobRecord) -> StoreResult<()> + Send + Sync);

/// Name of the session-signing key in a shared store ([`Store::shared_secret`]).
pub const SECRET_JWT: &str = "jwt";
/// Name of the worker-token key in a shared store.
pub const SECRET_WORKER: &str = "worker";

/// Notes from the other hubs of a cluster (see [`Store::listen`]).
pub struct Listener {
    /// Notes as they arrive, one per line published; closed when the connection is lost
    /// (notes may have been missed then: catch up from the records).
    pub notes: tokio::sync::mpsc::UnboundedReceiver<String>,
    /// Drives the connection: run it as a task for as long as the notes are wanted.
    pub driver: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
}

/// Which jobs a listing wants.
pub struct JobQuery<'a> {
    /// Only this owner's jobs (`None` = all, for admins).
    pub owner: Option<&'a str>,
    /// Only jobs with an id strictly below this (newest-first paging).
    pub before: Option<&'a str>,
    /// Page size.
    pub limit: usize,
    /// Extra predicate (status, command search).
    pub filter: &'a (dyn Fn(&JobRecord) -> bool + Send + Sync),
    /// Stop scanning after this many records (bounds the work of a selective filter).
    pub max_scan: usize,
}

/// The hub's persistence.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Resolves once every write applied before the call is durable (group commit).
    async fn sync(&self) -> StoreResult<()>;
    /// A monotonic number (queue order), never below a seq already in use.
    fn next_seq(&self) -> StoreResult<u64>;
    /// Raises the floor of [`Store::next_seq`] (recovery passes every queue seq it finds).
    fn note_seq(&self, seq: u64);
    /// Writes every stored record to `out` as a backup stream (see `backup`); returns the number
    /// of records. Concurrent writes may or may not be included; everything acknowledged before
    /// the call is.
    fn export_records(&self, out: &mut dyn std::io::Write) -> StoreResult<u64>;

    /// For a store several hubs share: the secret `name`, stored as `candidate` when no hub
    /// stored one yet (the first to start wins, every hub then uses the same). `None` (the
    /// default): the store is one hub's own, and its secrets stay in its data folder.
    async fn shared_secret(&self, name: &str, candidate: &[u8]) -> StoreResult<Option<Vec<u8>>> {
        let _ = (name, candidate);
        Ok(None)
    }

    /// True when several hubs may share this store (they then tell each other what changed
    /// with [`Store::publish`] and [`Store::listen`]).
    fn shared(&self) -> bool {
        false
    }

    /// Sends `notes` (lines without newlines) to every hub listening, itself included, in one
    /// message per batch however many notes it holds. A store no other hub reads has no one to
    /// tell.
    async fn publish(&self, notes: &[String]) -> StoreResult<()> {
        let _ = notes;
        Ok(())
    }

    /// Starts listening for published notes; `None` for a store no other hub reads.
    async fn listen(&self) -> StoreResult<Option<Listener>> {
        Ok(None)
    }

    /// For a shared store: records, by the store's clock, that hub `hub_id` holds the
    /// connections of `workers` now.
    async fn mark_present(&self, hub_id: &str, workers: &[String]) -> StoreResult<()> {
        let _ = (hub_id, workers);
        Ok(())
    }

    /// For a shared store: the workers some hub marked present within the last `secs` seconds
    /// (by the store's clock), each with that hub's id. `None`: the store is this hub's own.
    async fn present_workers(&self, secs: u64) -> StoreResult<Option<Vec<(String, String)>>> {
        let _ = secs;
        Ok(None)
    }

    /// For a shared store: stores the file at `path` as blob `sha256` (content that is already
    /// there is not written twice). A store of one hub's own keeps no blobs (they live in its
    /// data folder) and does nothing.
    async fn put_blob(&self, sha256: &str, path: &std::path::Path) -> StoreResult<()> {
        let _ = (sha256, path);
        Ok(())
    }

    /// For a shared store: writes blob `sha256` to a new file at `dest`; false when the store
    /// has no such blob (always, for a store that keeps none).
    async fn get_blob(&self, sha256: &str, dest: &std::path::Path) -> StoreResult<bool> {
        let _ = (sha256, dest);
        Ok(false)
    }

    /// For a shared store: deletes blob `sha256`; returns the bytes freed.
    async fn delete_blob(&self, sha256: &str) -> StoreResult<u64> {
        let _ = sha256;
        Ok(0)
    }

    /// Inserts a new job and its owner index entry (a queued job is found again by its record
    /// and `queue_seq`: there is no queue index in the store).
    async fn insert_job(&self, job: &JobRecord) -> StoreResult<()>;
    /// Reads a job.
    async fn get_job(&self, id: &str) -> StoreResult<Option<JobRecord>>;
    /// Atomically applies `update` to a job (a compare-and-swap on its record, retried while the
    /// record changes underneath).
    async fn update_job(&self, id: &str, update: JobUpdate<'_>) -> StoreResult<JobRecord>;
    /// Applies `update(i, job)` to job `ids[i]` for every `i` (what the dispatcher does with a
    /// batch of claims), each atomic on its own. Each job's result is its record after the
    /// update, or the update's error, which leaves that job unchanged and does not stop the
    /// others.
    async fn update_jobs(
        &self,
        ids: &[String],
        update: BatchUpdate<'_>,
    ) -> StoreResult<Vec<StoreResult<JobRecord>>> {
        let mut out = Vec::with_capacity(ids.len());
        for (i, id) in ids.iter().enumerate() {
            out.push(self.update_job(id, &|job| update(i, job)).await);
        }
        Ok(out)
    }
    /// Every job that is not terminal: queued, assigned or running (for recovery).
    async fn unfinished_jobs(&self) -> StoreResult<Vec<JobRecord>>;
    /// `(worker, job id)` of every unfinished job whose current attempt a worker holds
    /// (assigned or running): what the workers are busy with, without reading the queue's
    /// records.
    async fn held_jobs(&self) -> StoreResult<Vec<(String, String)>> {
        Ok(self
            .unfinished_jobs()
            .await?
            .into_iter()
            .filter_map(|j| match (j.status, j.worker_id) {
                (cmdx_proto::JobStatus::Assigned | cmdx_proto::JobStatus::Running, Some(w)) => {
                    Some((w, j.id))
                }
                _ => None,
            })
            .collect())
    }
    /// Ids of the unfinished jobs whose current attempt `worker` holds.
    async fn jobs_held_by(&self, worker: &str) -> StoreResult<Vec<String>> {
        Ok(self
            .held_jobs()
            .await?
            .into_iter()
            .filter(|(w, _)| w == worker)
            .map(|(_, id)| id)
            .collect())
    }
    /// Jobs newest first.
    async fn list_jobs(&self, query: JobQuery<'_>) -> StoreResult<Vec<JobRecord>>;
    /// Number of jobs stored (a counter: O(1)).
    async fn job_count(&self) -> StoreResult<u64>;
    /// One cheap read: the store answers (`/readyz`).
    async fn ping(&self) -> StoreResult<()>;

    /// Stores one output chunk under `(job id, chunk.index)`.
    async fn append_chunk(&self, job_id: &str, chunk: &ChunkRecord) -> StoreResult<()>;
    /// Stores several chunks of one job (consecutive indexes), in one write where the backend
    /// can.
    async fn append_chunks(&self, job_id: &str, chunks: &[ChunkRecord]) -> StoreResult<()> {
        for chunk in chunks {
            self.append_chunk(job_id, chunk).await?;
        }
        Ok(())
    }
    /// Chunks from `from_index` on, in order, until their data reaches `max_bytes` (so fewer bytes
    /// than `max_bytes` means the log ended) or the log ends.
    async fn read_chunks(
        &self,
        job_id: &str,
        from_index: u64,
        max_bytes: usize,
    ) -> StoreResult<Vec<ChunkRecord>>;
    /// The last stored chunk of a job.
    async fn last_chunk(&self, job_id: &str) -> StoreResult<Option<ChunkRecord>>;
    /// Index of the stored chunk containing byte `offset`, or the first one after it.
    async fn chunk_index_at(&self, job_id: &str, offset: u64) -> StoreResult<Option<u64>>;
    /// Deletes a job's chunks with index below `index`.
    async fn delete_chunks_before(&self, job_id: &str, index: u64) -> StoreResult<()>;

    /// Reads a user by (lowercased) email.
    async fn get_user_by_email(&self, email: &str) -> StoreResult<Option<UserRecord>>;
    /// Reads a user by id.
    async fn get_user(&self, id: &str) -> StoreResult<Option<UserRecord>>;
    /// Inserts a user; `Conflict` when the email exists.
    async fn insert_user(&self, user: &UserRecord) -> StoreResult<()>;
    /// All users.
    async fn list_users(&self) -> StoreResult<Vec<UserRecord>>;
    /// Replaces the stored record of an existing user (same id and email); `NotFound` when
    /// there is none.
    async fn replace_user(&self, user: &UserRecord) -> StoreResult<()>;
    /// Deletes a user record (not their jobs or files); `NotFound` when there is none.
    async fn delete_user(&self, user: &UserRecord) -> StoreResult<()>;

    /// Stores a file record.
    async fn put_file(&self, file: &FileRecord) -> StoreResult<()>;
    /// Reads a file record.
    async fn get_file(&self, id: &str) -> StoreResult<Option<FileRecord>>;
    /// Files of one owner, newest first.
    async fn list_files(&self, owner: &str) -> StoreResult<Vec<FileRecord>>;

    /// Every file record.
    async fn all_files(&self) -> StoreResult<Vec<FileRecord>>;
    /// Deletes a file record (not its content).
    async fn delete_file(&self, id: &str) -> StoreResult<()>;
    /// Deletes a job, its owner index entry and its output; returns output bytes freed.
    async fn delete_job(&self, id: &str) -> StoreResult<u64>;

    /// Stores a worker record.
    async fn put_worker(&self, worker: &WorkerRecord) -> StoreResult<()>;
    /// All worker records.
    async fn list_workers(&self) -> StoreResult<Vec<WorkerRecord>>;
    /// Deletes a worker record.
    async fn delete_worker(&self, id: &str) -> StoreResult<()>;
    /// Stores an admin's drain of a worker (replacing an earlier one).
    async fn put_drain(&self, drain: &DrainRecord) -> StoreResult<()>;
    /// Every drained worker.
    async fn list_drains(&self) -> StoreResult<Vec<DrainRecord>>;
    /// Ends a worker's drain; true when it was drained.
    async fn delete_drain(&self, worker_id: &str) -> StoreResult<bool>;

    /// Stores a minted worker token.
    async fn put_worker_token(&self, token: &WorkerTokenRecord) -> StoreResult<()>;
    /// Reads a worker token by id.
    async fn get_worker_token(&self, id: &str) -> StoreResult<Option<WorkerTokenRecord>>;
    /// Records a signed-out session id until `exp_s` (seconds since the epoch).
    async fn put_revoked_session(&self, sid: &str, exp_s: u64) -> StoreResult<()>;
    /// Every revoked session id with its expiry.
    async fn revoked_sessions(&self) -> StoreResult<Vec<(String, u64)>>;
    /// Forgets a revoked session id (once it has expired anyway).
    async fn delete_revoked_session(&self, sid: &str) -> StoreResult<()>;
    /// Every worker token record.
    async fn list_worker_tokens(&self) -> StoreResult<Vec<WorkerTokenRecord>>;
    /// Deletes a worker token record (revokes the token); true when it existed.
    async fn delete_worker_token(&self, id: &str) -> StoreResult<bool>;
}

/// Takes the next number above both `floor` and `candidate` and raises `floor` to it:
/// [`Store::next_seq`] for any backend.
pub(crate) fn next_above(floor: &std::sync::atomic::AtomicU64, candidate: u64) -> u64 {
    use std::sync::atomic::Ordering;
    let mut seen = floor.load(Ordering::SeqCst);
    loop {
        let next = candidate.max(seen + 1);
        match floor.compare_exchange(seen, next, Ordering::SeqCst, Ordering::SeqCst) {
            Ok(_) => return next,
            Err(actual) => seen = actual,
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A new time-sortable id: 12 hex digits of milliseconds, then 8 random hex digits.
pub fn new_id() -> String {
    let r: u32 = rand::random();
    format!("{:012x}{:08x}", now_ms(), r)
}
