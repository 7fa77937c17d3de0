//! The sled backend.
//!
//! Trees (a small fixed set; sled amplifies space with many trees): `jobs` (id -> JSON
//! [`JobRecord`]), `job_owner` (owner \0 job id -> ()), `output` (job id \0 big-endian index ->
//! binary [`ChunkRecord`]), `users` (email -> JSON), `files`, `workers`, `meta` (worker tokens
//! `wtok:`, signed-out sessions `rsess:`, drained workers `drain:`).
//!
//! No job write is a sled transaction. A transaction (or `apply_batch`) takes sled's global
//! write lock, which stalls every other reader and writer, and seals the log buffer twice, each
//! seal waking every thread of sled's IO pool; with one per submission that was the hub's
//! throughput ceiling. So the `jobs` record is the only truth and every job write is one key:
//! an insert, a compare-and-swap or a remove. The queue has no tree (recovery rebuilds it from
//! the `queued` records, which carry their `queue_seq`); the owner index is written before the
//! record it points to and removed after it, so an interrupted write leaves at most an entry
//! that points at nothing, which listing skips. sled recovers a prefix of its log, so a record
//! is never durable without the index entry written before it.
//!
//! Group commit: one thread owns `Db::flush()`. [`Store::sync`] enqueues a waiter; the thread
//! takes every waiter queued so far, flushes once, and wakes them all. A waiter queued during a
//! flush waits for the next one, so every write applied before `sync` was called is covered.
//! (sled's own `flush_async` is not an option: on sled 0.34 concurrent calls of it deadlock.)

use std::path::Path;
use std::sync::mpsc as std_mpsc;

use async_trait::async_trait;
use sled::Tree;
use tokio::sync::oneshot;

use super::*;

mod background;
#[cfg(test)]
mod tests;
mod transfer;

use background::{LockRelease, Waiter, group_commit};

/// sled-backed [`Store`].
pub struct SledStore {
    db: sled::Db,
    jobs: Tree,
    job_owner: Tree,
    output: Tree,
    users: Tree,
    files: Tree,
    workers: Tree,
    meta: Tree,
    flush_tx: std_mpsc::Sender<Waiter>,
    /// The group-commit thread, joined on drop: it holds the database (and so its lock file)
    /// until it has seen the last sender go.
    flusher: Option<std::thread::JoinHandle<()>>,
    flush_hist: Option<FlushObserver>,
    /// Decoded job records (see `cache.rs`).
    records: super::cache::RecordCache,
    /// `next_seq` never returns at or below this (sled's id generator restarts in a restored
    /// store).
    seq_floor: std::sync::atomic::AtomicU64,
    /// Job records stored: counted once at open (sled's `len` walks the whole tree), then kept
    /// by `insert_job` and `delete_job`, so `/metrics` never costs O(jobs).
    job_total: std::sync::atomic::AtomicU64,
    /// Declared last, so it drops after every handle above: waits until sled let go of the
    /// folder.
    _released: LockRelease,
}

/// Trees a backup carries, in the order they are written.
pub const TREES: &[&str] = &[
    "users",
    "meta",
    "workers",
    "files",
    "job_owner",
    "output",
    "jobs",
];

/// Decoded job records kept (about 2 KiB each): enough for every job in flight at 5,000 jobs/s
/// plus a dashboard's worth of polled ones.
const RECORD_CACHE: usize = 8192;

/// Trees older versions kept and backups may still carry; import accepts and drops them.
const RETIRED_TREES: &[&str] = &["queue"];

/// Called with the duration of each group-commit flush (metrics).
pub type FlushObserver = std::sync::Arc<dyn Fn(std::time::Duration, usize) + Send + Sync>;

fn backend(op: &'static str) -> impl FnOnce(sled::Error) -> StoreError {
    move |e| StoreError::Backend {
        op,
        message: e.to_string(),
    }
}

fn corrupt(key: &[u8], e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        message: e.to_string(),
    }
}

fn decode<T: serde::de::DeserializeOwned>(key: &[u8], raw: &[u8]) -> StoreResult<T> {
    serde_json::from_slice(raw).map_err(|e| corrupt(key, e))
}

fn encode<T: serde::Serialize>(v: &T) -> Vec<u8> {
    // Records are plain data: serialization cannot fail.
    serde_json::to_vec(v).unwrap_or_default()
}

fn output_key(job_id: &str, index: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(job_id.len() + 9);
    k.extend_from_slice(job_id.as_bytes());
    k.push(0);
    k.extend_from_slice(&index.to_be_bytes());
    k
}

fn output_prefix(job_id: &str) -> Vec<u8> {
    let mut k = job_id.as_bytes().to_vec();
    k.push(0);
    k
}

fn index_of(key: &[u8]) -> u64 {
    let n = key.len();
    if n < 8 {
        return 0;
    }
    u64::from_be_bytes(key[n - 8..].try_into().unwrap_or([0; 8]))
}

fn owner_key(owner: &str, job_id: &str) -> Vec<u8> {
    let mut k = owner.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(job_id.as_bytes());
    k
}

impl SledStore {
    /// Opens (or creates) the store in `dir`. `cache_bytes` bounds sled's page cache.
    pub fn open(dir: &Path, cache_bytes: u64) -> StoreResult<SledStore> {
        Self::open_with(dir, cache_bytes, None)
    }

    /// As [`SledStore::open`], reporting each flush to `observer`.
    pub fn open_with(
        dir: &Path,
        cache_bytes: u64,
        observer: Option<FlushObserver>,
    ) -> StoreResult<SledStore> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            // No background flusher: the group-commit thread is the only one that flushes (a second
            // flusher stalled it in measurements), and `serve` asks for a sync every second so
            // that writes nobody waits for still reach the disk.
            .flush_every_ms(None)
            .open()
            .map_err(backend("open"))?;
        for name in RETIRED_TREES {
            db.drop_tree(name).map_err(backend("drop retired tree"))?;
        }
        let tree = |name: &str| db.open_tree(name).map_err(backend("open tree"));
        let (flush_tx, flush_rx) = std_mpsc::channel::<Waiter>();
        let flusher_db = db.clone();
        let obs = observer.clone();
        let flusher = std::thread::Builder::new()
            .name("cmdx-group-commit".into())
            .spawn(move || group_commit(flusher_db, flush_rx, obs))
            .map_err(|e| StoreError::Backend {
                op: "spawn flusher",
                message: e.to_string(),
            })?;
        let jobs = tree("jobs")?;
        let job_total = std::sync::atomic::AtomicU64::new(jobs.len() as u64);
        Ok(SledStore {
            jobs,
            job_total,
            job_owner: tree("job_owner")?,
            output: tree("output")?,
            users: tree("users")?,
            files: tree("files")?,
            workers: tree("workers")?,
            meta: tree("meta")?,
            seq_floor: std::sync::atomic::AtomicU64::new(0),
            db,
            flush_tx,
            flusher: Some(flusher),
            flush_hist: observer,
            records: super::cache::RecordCache::new(RECORD_CACHE),
            _released: LockRelease(dir.join("db")),
        })
    }

    /// Bytes sled reports on disk.
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    /// The job stored as `raw`: from the record cache when it holds exactly these bytes.
    fn decode_job(&self, id: &str, raw: sled::IVec) -> StoreResult<JobRecord> {
        if let Some(job) = self.records.get(id, &raw) {
            return Ok(job);
        }
        let job: JobRecord = decode(id.as_bytes(), &raw)?;
        self.records.put(id, raw, job.clone());
        Ok(job)
    }

    fn scan_json<T: serde::de::DeserializeOwned>(&self, tree: &Tree) -> StoreResult<Vec<T>> {
        let mut out = Vec::new();
        for item in tree.iter() {
            let (k, v) = item.map_err(backend("scan"))?;
            out.push(decode(&k, &v)?);
        }
        Ok(out)
    }
}

impl Drop for SledStore {
    /// Flushes, then ends the group-commit thread and waits for it, so that once the store is
    /// dropped the data folder can be opened again at once (sled locks it while any handle
    /// lives).
    fn drop(&mut self) {
        let _ = self.db.flush();
        let _ = &self.flush_hist;
        drop(std::mem::replace(&mut self.flush_tx, std_mpsc::channel().0));
        if let Some(flusher) = self.flusher.take() {
            let _ = flusher.join();
        }
    }
}

#[async_trait]
impl Store for SledStore {
    async fn sync(&self) -> StoreResult<()> {
        let (tx, rx) = oneshot::channel();
        self.flush_tx.send(tx).map_err(|_| StoreError::Backend {
            op: "flush",
            message: "group commit thread stopped".into(),
        })?;
        rx.await.map_err(|_| StoreError::Backend {
            op: "flush",
            message: "group commit thread stopped".into(),
        })?
    }

    fn next_seq(&self) -> StoreResult<u64> {
        let generated = self.db.generate_id().map_err(backend("generate id"))?;
        Ok(super::next_above(&self.seq_floor, generated))
    }

    fn note_seq(&self, seq: u64) {
        self.seq_floor
            .fetch_max(seq, std::sync::atomic::Ordering::SeqCst);
    }

    fn export_records(&self, out: &mut dyn std::io::Write) -> StoreResult<u64> {
        transfer::export(&self.db, out)
    }

    async fn insert_job(&self, job: &JobRecord) -> StoreResult<()> {
        // Index entry first: see the module doc.
        self.job_owner
            .insert(owner_key(&job.owner, &job.id), &[] as &[u8])
            .map_err(backend("insert job"))?;
        let raw = sled::IVec::from(encode(job));
        let old = self
            .jobs
            .insert(job.id.as_bytes(), raw.clone())
            .map_err(backend("insert job"))?;
        if old.is_none() {
            self.job_total
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        self.records.put(&job.id, raw, job.clone());
        Ok(())
    }

    async fn get_job(&self, id: &str) -> StoreResult<Option<JobRecord>> {
        match self.jobs.get(id.as_bytes()).map_err(backend("get job"))? {
            Some(raw) => Ok(Some(self.decode_job(id, raw)?)),
            None => Ok(None),
        }
    }

    async fn update_job(&self, id: &str, update: JobUpdate<'_>) -> StoreResult<JobRecord> {
        // Read, update, compare-and-swap; run the update again if the record changed between.
        loop {
            let raw = self
                .jobs
                .get(id.as_bytes())
                .map_err(backend("get job"))?
                .ok_or_else(|| StoreError::NotFound(id.to_string()))?;
            let mut job = self.decode_job(id, raw.clone())?;
            update(&mut job)?;
            let new = sled::IVec::from(encode(&job));
            let swapped = self
                .jobs
                .compare_and_swap(id.as_bytes(), Some(raw), Some(new.clone()))
                .map_err(backend("update job"))?;
            if swapped.is_ok() {
                self.records.put(id, new, job.clone());
                return Ok(job);
            }
        }
    }

    async fn unfinished_jobs(&self) -> StoreResult<Vec<JobRecord>> {
        let mut out = Vec::new();
        for item in self.jobs.iter() {
            let (k, v) = item.map_err(backend("scan jobs"))?;
            let job: JobRecord = decode(&k, &v)?;
            if !job.status.is_terminal() {
                out.push(job);
            }
        }
        Ok(out)
    }

    async fn list_jobs(&self, q: JobQuery<'_>) -> StoreResult<Vec<JobRecord>> {
        let mut out = Vec::new();
        let mut scanned = 0usize;
        let mut consider = |job: JobRecord| -> bool {
            scanned += 1;
            if (q.filter)(&job) {
                out.push(job);
            }
            out.len() < q.limit && scanned < q.max_scan
        };
        match q.owner {
            Some(owner) => {
                let prefix = owner_key(owner, "");
                let end = match q.before {
                    Some(b) => owner_key(owner, b),
                    None => {
                        let mut e = prefix.clone();
                        e.push(0xff);
                        e
                    }
                };
                for item in self.job_owner.range(prefix.clone()..end).rev() {
                    let (k, _) = item.map_err(backend("scan owner index"))?;
                    let id = &k[prefix.len()..];
                    if let Some(v) = self.jobs.get(id).map_err(backend("get job"))?
                        && !consider(decode(id, &v)?)
                    {
                        break;
                    }
                }
            }
            None => {
                let iter = match q.before {
                    Some(b) => self.jobs.range(..b.as_bytes().to_vec()),
                    None => self.jobs.range::<Vec<u8>, _>(..),
                };
                for item in iter.rev() {
                    let (k, v) = item.map_err(backend("scan jobs"))?;
                    if !consider(decode(&k, &v)?) {
                        break;
                    }
                }
            }
        }
        Ok(out)
    }

    async fn job_count(&self) -> StoreResult<u64> {
        Ok(self.job_total.load(std::sync::atomic::Ordering::Relaxed))
    }

    async fn ping(&self) -> StoreResult<()> {
        self.meta.get(b"ping").map_err(backend("ping"))?;
        Ok(())
    }

    async fn append_chunk(&self, job_id: &str, chunk: &ChunkRecord) -> StoreResult<()> {
        self.output
            .insert(output_key(job_id, chunk.index), chunk.encode())
            .map_err(backend("append chunk"))?;
        Ok(())
    }

    async fn read_chunks(
        &self,
        job_id: &str,
        from_index: u64,
        max_bytes: usize,
    ) -> StoreResult<Vec<ChunkRecord>> {
        let start = output_key(job_id, from_index);
        let end = output_key(job_id, u64::MAX);
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for item in self.output.range(start..=end) {
            let (k, v) = item.map_err(backend("read chunks"))?;
            let chunk =
                ChunkRecord::decode(index_of(&k), &v).ok_or_else(|| corrupt(&k, "bad chunk"))?;
            bytes += chunk.data.len();
            out.push(chunk);
            if bytes >= max_bytes {
                break;
            }
        }
        Ok(out)
    }

    async fn last_chunk(&self, job_id: &str) -> StoreResult<Option<ChunkRecord>> {
        let prefix = output_prefix(job_id);
        match self
            .output
            .scan_prefix(&prefix)
            .next_back()
            .transpose()
            .map_err(backend("last chunk"))?
        {
            Some((k, v)) => Ok(Some(
                ChunkRecord::decode(index_of(&k), &v).ok_or_else(|| corrupt(&k, "bad chunk"))?,
            )),
            None => Ok(None),
        }
    }

    async fn chunk_index_at(&self, job_id: &str, offset: u64) -> StoreResult<Option<u64>> {
        // Offsets grow with the index: binary search over the index range.
        let prefix = output_prefix(job_id);
        let first = self
            .output
            .scan_prefix(&prefix)
            .next()
            .transpose()
            .map_err(backend("chunk index"))?;
        let last = self
            .output
            .scan_prefix(&prefix)
            .next_back()
            .transpose()
            .map_err(backend("chunk index"))?;
        let (Some((fk, _)), Some((lk, lv))) = (first, last) else {
            return Ok(None);
        };
        let last_chunk =
            ChunkRecord::decode(index_of(&lk), &lv).ok_or_else(|| corrupt(&lk, "bad chunk"))?;
        if offset >= last_chunk.end() {
            return Ok(None);
        }
        // Find the greatest stored index whose chunk starts at or before `offset`.
        let (mut lo, mut hi) = (index_of(&fk), index_of(&lk));
        let offset_at = |i: u64| -> StoreResult<Option<u64>> {
            // The nearest stored chunk at or after index i.
            let start = output_key(job_id, i);
            let end = output_key(job_id, u64::MAX);
            match self
                .output
                .range(start..=end)
                .next()
                .transpose()
                .map_err(backend("chunk index"))?
            {
                Some((k, v)) => Ok(ChunkRecord::decode(index_of(&k), &v).map(|c| c.offset)),
                None => Ok(None),
            }
        };
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            match offset_at(mid)? {
                Some(o) if o <= offset => lo = mid,
                _ => hi = mid - 1,
            }
        }
        // `lo` may name a deleted index; return the first stored chunk at or after it.
        let start = output_key(job_id, lo);
        let end = output_key(job_id, u64::MAX);
        Ok(self
            .output
            .range(start..=end)
            .next()
            .transpose()
            .map_err(backend("chunk index"))?
            .map(|(k, _)| index_of(&k)))
    }

    async fn delete_chunks_before(&self, job_id: &str, index: u64) -> StoreResult<()> {
        let start = output_key(job_id, 0);
        let end = output_key(job_id, index);
        let mut batch = sled::Batch::default();
        for item in self.output.range(start..end) {
            let (k, _) = item.map_err(backend("delete chunks"))?;
            batch.remove(k);
        }
        self.output
            .apply_batch(batch)
            .map_err(backend("delete chunks"))
    }

    async fn get_user_by_email(&self, email: &str) -> StoreResult<Option<UserRecord>> {
        match self
            .users
            .get(email.as_bytes())
            .map_err(backend("get user"))?
        {
            Some(v) => Ok(Some(decode(email.as_bytes(), &v)?)),
            None => Ok(None),
        }
    }

    async fn get_user(&self, id: &str) -> StoreResult<Option<UserRecord>> {
        Ok(self
            .scan_json::<UserRecord>(&self.users)?
            .into_iter()
            .find(|u| u.id == id))
    }

    async fn insert_user(&self, user: &UserRecord) -> StoreResult<()> {
        let res = self
            .users
            .compare_and_swap(
                user.email.as_bytes(),
                None as Option<&[u8]>,
                Some(encode(user)),
            )
            .map_err(backend("insert user"))?;
        res.map_err(|_| StoreError::Conflict(format!("user {} exists", user.email)))
    }

    async fn list_users(&self) -> StoreResult<Vec<UserRecord>> {
        self.scan_json(&self.users)
    }

    async fn delete_user(&self, user: &UserRecord) -> StoreResult<()> {
        let key = user.email.as_bytes();
        let old = self.users.get(key).map_err(backend("delete user"))?;
        let Some(old) = old else {
            return Err(StoreError::NotFound(format!("user {}", user.id)));
        };
        let stored: UserRecord = decode(key, &old)?;
        if stored.id != user.id {
            return Err(StoreError::NotFound(format!("user {}", user.id)));
        }
        // Only the record read: a user re-created under the email meanwhile stays.
        self.users
            .compare_and_swap(key, Some(old), None as Option<&[u8]>)
            .map_err(backend("delete user"))?
            .map_err(|_| StoreError::Conflict(format!("user {} changed meanwhile", user.id)))
    }

    async fn replace_user(&self, user: &UserRecord) -> StoreResult<()> {
        let key = user.email.as_bytes();
        loop {
            let old = self.users.get(key).map_err(backend("replace user"))?;
            let Some(old) = old else {
                return Err(StoreError::NotFound(format!("user {}", user.id)));
            };
            let stored: UserRecord = decode(key, &old)?;
            if stored.id != user.id {
                return Err(StoreError::NotFound(format!("user {}", user.id)));
            }
            let swapped = self
                .users
                .compare_and_swap(key, Some(old), Some(encode(user)))
                .map_err(backend("replace user"))?;
            if swapped.is_ok() {
                return Ok(());
            }
        }
    }

    async fn put_file(&self, file: &FileRecord) -> StoreResult<()> {
        self.files
            .insert(file.id.as_bytes(), encode(file))
            .map_err(backend("put file"))?;
        Ok(())
    }

    async fn get_file(&self, id: &str) -> StoreResult<Option<FileRecord>> {
        match self.files.get(id.as_bytes()).map_err(backend("get file"))? {
            Some(v) => Ok(Some(decode(id.as_bytes(), &v)?)),
            None => Ok(None),
        }
    }

    async fn list_files(&self, owner: &str) -> StoreResult<Vec<FileRecord>> {
        let mut all: Vec<FileRecord> = self.scan_json(&self.files)?;
        all.retain(|f| f.owner == owner);
        all.reverse();
        Ok(all)
    }

    async fn all_files(&self) -> StoreResult<Vec<FileRecord>> {
        self.scan_json(&self.files)
    }

    async fn delete_file(&self, id: &str) -> StoreResult<()> {
        self.files
            .remove(id.as_bytes())
            .map_err(backend("delete file"))?;
        Ok(())
    }

    async fn delete_job(&self, id: &str) -> StoreResult<u64> {
        let Some(job) = self.get_job(id).await? else {
            return Ok(0);
        };
        let mut freed = 0u64;
        let mut batch = sled::Batch::default();
        for item in self.output.scan_prefix(output_prefix(id)) {
            let (k, v) = item.map_err(backend("delete job output"))?;
            freed += v.len() as u64;
            batch.remove(k);
        }
        self.output
            .apply_batch(batch)
            .map_err(backend("delete job output"))?;
        // Record first, index entry after: see the module doc.
        let removed = self
            .jobs
            .remove(id.as_bytes())
            .map_err(backend("delete job"))?;
        if removed.is_some() {
            let _ = self.job_total.fetch_update(
                std::sync::atomic::Ordering::Relaxed,
                std::sync::atomic::Ordering::Relaxed,
                |n| n.checked_sub(1),
            );
        }
        self.records.remove(id);
        self.job_owner
            .remove(owner_key(&job.owner, id))
            .map_err(backend("delete job"))?;
        Ok(freed)
    }

    async fn put_worker(&self, worker: &WorkerRecord) -> StoreResult<()> {
        self.workers
            .insert(worker.id.as_bytes(), encode(worker))
            .map_err(backend("put worker"))?;
        Ok(())
    }

    async fn list_workers(&self) -> StoreResult<Vec<WorkerRecord>> {
        self.scan_json(&self.workers)
    }

    async fn delete_worker(&self, id: &str) -> StoreResult<()> {
        self.workers
            .remove(id.as_bytes())
            .map_err(backend("delete worker"))?;
        Ok(())
    }

    async fn put_drain(&self, drain: &DrainRecord) -> StoreResult<()> {
        self.meta
            .insert(
                format!("drain:{}", drain.worker_id).as_bytes(),
                encode(drain),
            )
            .map_err(backend("put drain"))?;
        Ok(())
    }

    async fn list_drains(&self) -> StoreResult<Vec<DrainRecord>> {
        let mut out = Vec::new();
        for item in self.meta.scan_prefix(b"drain:") {
            let (k, v) = item.map_err(backend("list drains"))?;
            out.push(decode(&k, &v)?);
        }
        Ok(out)
    }

    async fn delete_drain(&self, worker_id: &str) -> StoreResult<bool> {
        Ok(self
            .meta
            .remove(format!("drain:{worker_id}").as_bytes())
            .map_err(backend("delete drain"))?
            .is_some())
    }

    async fn put_worker_token(&self, token: &WorkerTokenRecord) -> StoreResult<()> {
        let key = format!("wtok:{}", token.id);
        self.meta
            .insert(key.as_bytes(), encode(token))
            .map_err(backend("put token"))?;
        Ok(())
    }

    async fn put_revoked_session(&self, sid: &str, exp_s: u64) -> StoreResult<()> {
        self.meta
            .insert(format!("rsess:{sid}").as_bytes(), &exp_s.to_be_bytes())
            .map_err(backend("revoke session"))?;
        Ok(())
    }

    async fn revoked_sessions(&self) -> StoreResult<Vec<(String, u64)>> {
        let mut out = Vec::new();
        for item in self.meta.scan_prefix(b"rsess:") {
            let (k, v) = item.map_err(backend("list revoked sessions"))?;
            let sid = String::from_utf8_lossy(&k[b"rsess:".len()..]).into_owned();
            let exp = <[u8; 8]>::try_from(v.as_ref())
                .map(u64::from_be_bytes)
                .map_err(|_| corrupt(&k, "revoked session expiry is not 8 bytes"))?;
            out.push((sid, exp));
        }
        Ok(out)
    }

    async fn delete_revoked_session(&self, sid: &str) -> StoreResult<()> {
        self.meta
            .remove(format!("rsess:{sid}").as_bytes())
            .map_err(backend("forget revoked session"))?;
        Ok(())
    }

    async fn list_worker_tokens(&self) -> StoreResult<Vec<WorkerTokenRecord>> {
        let mut out = Vec::new();
        for item in self.meta.scan_prefix(b"wtok:") {
            let (k, v) = item.map_err(backend("list tokens"))?;
            out.push(decode(&k, &v)?);
        }
        Ok(out)
    }

    async fn delete_worker_token(&self, id: &str) -> StoreResult<bool> {
        let key = format!("wtok:{id}");
        Ok(self
            .meta
            .remove(key.as_bytes())
            .map_err(backend("delete token"))?
            .is_some())
    }

    async fn get_worker_token(&self, id: &str) -> StoreResult<Option<WorkerTokenRecord>> {
        let key = format!("wtok:{id}");
        match self
            .meta
            .get(key.as_bytes())
            .map_err(backend("get token"))?
        {
            Some(v) => Ok(Some(decode(key.as_bytes(), &v)?)),
            None => Ok(None),
        }
    }
}
