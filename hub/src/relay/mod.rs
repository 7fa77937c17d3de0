//! Output log and live relay.
//!
//! Each job with output activity has a live relay: the append state (next sequence number, next
//! index, end offset) behind an async mutex, reached only by holding the job's [`AppendLog`],
//! and a bounded `broadcast` channel of stored chunks.
//! Appenders write the chunk to the store *then* broadcast it. A subscriber subscribes *then*
//! reads the store from its offset, and drops live chunks below what it already sent: so there is
//! no gap and no duplicate at the seam. A subscriber that lags (the broadcast ring overwrote
//! chunks it had not read) rereads the store from where it was: it never slows the agent or
//! other subscribers, and its memory is bounded by its outgoing queue.
//!
//! Subscribers queue messages already encoded ([`Encoded`]). A live chunk is encoded as an
//! `output` message once, by the first subscriber that sends it whole, and every other
//! subscriber queues the same shared bytes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use cmdx_proto::client::ServerMsg;
use cmdx_proto::{Bytes64, StreamKind};
use tokio::sync::broadcast;

use crate::store::{ChunkRecord, OutputMeta, Store, StoreResult};

mod read;
pub mod search;
mod subscribe;

pub use read::{offset_since, raw_bounds, raw_stream, read_split};
pub use subscribe::{Encoded, Outbox, Queued, SubEnd, encode, subscribe};

/// Broadcast ring size per job (chunks).
const RING: usize = 128;
/// Bytes read from the store per page (replay, reads of the whole log).
const PAGE_BYTES: usize = 256 * 1024;

/// A stored chunk on the live channel, with its `output` message encoded on first use.
#[derive(Debug)]
pub struct LiveChunk {
    /// The stored chunk.
    pub record: ChunkRecord,
    /// The whole chunk as an `output` message (from the chunk's own offset).
    encoded: OnceLock<Encoded>,
}

impl LiveChunk {
    /// A stored chunk, not yet encoded.
    pub fn new(record: ChunkRecord) -> LiveChunk {
        LiveChunk {
            record,
            encoded: OnceLock::new(),
        }
    }

    /// The whole chunk as an `output` message of `job_id`, encoded once for all subscribers.
    pub fn encoded(&self, job_id: &str) -> Encoded {
        self.encoded
            .get_or_init(|| {
                encode(&ServerMsg::Output {
                    job_id: job_id.to_string(),
                    offset: self.record.offset,
                    stream: self.record.stream,
                    data: Bytes64(self.record.data.clone()),
                    time_ms: self.record.time_ms,
                })
            })
            .clone()
    }
}

/// What the live channel carries.
#[derive(Clone, Debug)]
pub enum RelayItem {
    /// A chunk, already stored.
    Chunk(Arc<LiveChunk>),
    /// The job's state changed (a `job` message, encoded): its output subscribers learn that a
    /// job they follow went back to the queue or started again.
    Job(Encoded),
    /// The job is terminal; the store holds the whole log.
    End,
}

/// Append state of one job's log for its current attempt.
#[derive(Debug, Default)]
struct OutState {
    /// Loaded from the store for `attempt`.
    loaded: bool,
    /// Attempt the state belongs to.
    attempt: u32,
    /// Worker and token the attempt is bound to (fast fencing check).
    owner: (String, String),
    /// Next expected agent sequence number.
    next_seq: u64,
    /// Next chunk index.
    next_index: u64,
    /// Offset just past the last stored byte.
    end_offset: u64,
    /// First stored chunk index.
    first_index: u64,
    /// Offset of the first stored byte.
    first_offset: u64,
    /// The cap dropped bytes.
    truncated: bool,
    /// Newlines seen.
    lines: u64,
}

/// One job's live relay.
struct LiveJob {
    /// Append state; its lock orders the job's appenders.
    state: Arc<tokio::sync::Mutex<OutState>>,
    /// Live chunks.
    tx: broadcast::Sender<RelayItem>,
    /// For a job another hub of the cluster appends to: the next chunk index to read from the
    /// store and send live ([`Relay::pull`]).
    pulled: tokio::sync::Mutex<Option<u64>>,
}

/// All live relays.
pub struct Relay {
    jobs: Mutex<HashMap<String, Arc<LiveJob>>>,
    /// Output kept per job.
    cap: u64,
}

impl Relay {
    /// A relay keeping at most `cap` bytes per job.
    pub fn new(cap: u64) -> Relay {
        Relay {
            jobs: Mutex::new(HashMap::new()),
            cap,
        }
    }

    /// The live relay of a job, created on first use.
    fn live(&self, job_id: &str) -> Arc<LiveJob> {
        let mut map = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(job_id.to_string())
            .or_insert_with(|| {
                Arc::new(LiveJob {
                    state: Arc::new(tokio::sync::Mutex::new(OutState::default())),
                    tx: broadcast::channel(RING).0,
                    pulled: tokio::sync::Mutex::new(None),
                })
            })
            .clone()
    }

    /// Takes the append log of `job_id`: one holder at a time, so a job's chunks are stored in
    /// the order their appenders got here.
    pub async fn log(&self, job_id: &str) -> AppendLog {
        let live = self.live(job_id);
        let st = live.state.clone().lock_owned().await;
        AppendLog {
            job_id: job_id.to_string(),
            cap: self.cap,
            live,
            st,
        }
    }

    /// Forgets the job's append state (a new attempt, or a lost one): the next holder of the
    /// log loads it from the store, which starts a fresh log for a new attempt.
    pub async fn unload(&self, job_id: &str) {
        self.log(job_id).await.unload();
    }

    /// Where the job's log ends now, when an appender has it loaded (it is ahead of the job
    /// record while the attempt runs).
    pub async fn end_offset(&self, job_id: &str) -> Option<u64> {
        let log = self.log(job_id).await;
        log.st.loaded.then_some(log.st.end_offset)
    }

    /// The job became terminal: tell subscribers and drop the relay.
    pub fn end(&self, job_id: &str) {
        let removed = self
            .jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(job_id);
        if let Some(l) = removed {
            let _ = l.tx.send(RelayItem::End);
        }
    }

    /// Tells the output subscribers of `job_id` here, if any, of the job's new state (`job`, a
    /// `job` message encoded).
    pub fn job_changed(&self, job_id: &str, job: impl FnOnce() -> Encoded) {
        if let Some(live) = self.followed_live(job_id) {
            let _ = live.tx.send(RelayItem::Job(job()));
        }
    }

    /// Whether `job_id`'s output has subscribers here.
    pub fn is_followed(&self, job_id: &str) -> bool {
        self.followed_live(job_id).is_some()
    }

    /// The live relay of `job_id` when it has subscribers here.
    fn followed_live(&self, job_id: &str) -> Option<Arc<LiveJob>> {
        let map = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        map.get(job_id)
            .filter(|l| l.tx.receiver_count() > 0)
            .cloned()
    }

    /// Drops the relay of a terminal job when nobody listens (subscriber cleanup).
    pub fn forget_if_idle(&self, job_id: &str) {
        let mut map = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        if map.get(job_id).is_some_and(|l| l.tx.receiver_count() == 0) {
            map.remove(job_id);
        }
    }

    /// Another hub of the cluster stored more of `job_id`'s log: when subscribers here follow
    /// it, read the new chunks from the store once and send them live, as an appender here
    /// would. Subscribers drop what they already have and fill any gap from the store, so where
    /// the reading starts only costs, never loses or repeats.
    pub async fn pull(&self, store: &dyn Store, job_id: &str) -> StoreResult<()> {
        let Some(live) = self.followed_live(job_id) else {
            return Ok(());
        };
        let mut next = live.pulled.lock().await;
        let mut from = match *next {
            Some(i) => i,
            None => store.last_chunk(job_id).await?.map_or(0, |c| c.index),
        };
        loop {
            let page = store.read_chunks(job_id, from, PAGE_BYTES).await?;
            let bytes: usize = page.iter().map(|c| c.data.len()).sum();
            let Some(last) = page.last() else { break };
            from = last.index + 1;
            for chunk in page {
                let _ = live
                    .tx
                    .send(RelayItem::Chunk(Arc::new(LiveChunk::new(chunk))));
            }
            if bytes < PAGE_BYTES {
                break;
            }
        }
        *next = Some(from);
        Ok(())
    }

    /// Jobs with subscribers here.
    pub fn followed(&self) -> Vec<String> {
        self.jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, l)| l.tx.receiver_count() > 0)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Number of live subscribers over all jobs.
    pub fn subscribers(&self) -> usize {
        self.jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|l| l.tx.receiver_count())
            .sum()
    }
}

/// A job's append log, held: its state for one attempt, loaded from the store, and the
/// operations that keep the state and the stored chunks in step. Dropping it lets the next
/// appender in.
pub struct AppendLog {
    job_id: String,
    cap: u64,
    live: Arc<LiveJob>,
    st: tokio::sync::OwnedMutexGuard<OutState>,
}

impl AppendLog {
    /// Whether the state is loaded for `attempt` (any, when `None`) bound to `(worker,
    /// token_id)`: then appends need no store read to be fenced.
    pub fn holds(&self, attempt: Option<u32>, worker: &str, token_id: &str) -> bool {
        self.st.loaded
            && attempt.is_none_or(|a| a == self.st.attempt)
            && self.st.owner.0 == worker
            && self.st.owner.1 == token_id
    }

    /// The attempt the state is loaded for.
    pub fn loaded_attempt(&self) -> Option<u32> {
        self.st.loaded.then_some(self.st.attempt)
    }

    /// Loads the state of `attempt`, bound to `owner` (worker, token id), from the store.
    /// Chunks of earlier attempts are dropped: a job's log is its current attempt's output, and
    /// a new attempt's log starts after the old one's end offset. `min_first_index`: the job
    /// record's first chunk index (chunks below it were trimmed).
    pub async fn load(
        &mut self,
        store: &dyn Store,
        attempt: u32,
        owner: (String, String),
        min_first_index: u64,
    ) -> StoreResult<()> {
        let job_id = self.job_id.as_str();
        let last = store.last_chunk(job_id).await?;
        let mut st = OutState {
            loaded: true,
            attempt,
            owner,
            ..OutState::default()
        };
        match last {
            None => {
                st.next_index = min_first_index;
                st.first_index = min_first_index;
            }
            Some(last) if last.attempt != attempt => {
                // A new attempt starts a fresh log after the old one's end offset.
                store.delete_chunks_before(job_id, last.index + 1).await?;
                st.next_index = last.index + 1;
                st.first_index = last.index + 1;
                st.end_offset = last.end();
                st.first_offset = last.end();
            }
            Some(last) => {
                st.next_index = last.index + 1;
                st.next_seq = last.seq + 1;
                st.end_offset = last.end();
                // Find the first chunk of this attempt, counting lines on the way.
                let mut idx = min_first_index;
                let mut first: Option<(u64, u64)> = None;
                let mut stale_before = None;
                loop {
                    let page = store.read_chunks(job_id, idx, PAGE_BYTES).await?;
                    let Some(tail) = page.last() else { break };
                    idx = tail.index + 1;
                    for c in &page {
                        if c.attempt != attempt {
                            stale_before = Some(c.index + 1);
                            continue;
                        }
                        if first.is_none() {
                            first = Some((c.index, c.offset));
                        }
                        st.lines += c.data.iter().filter(|b| **b == b'\n').count() as u64;
                    }
                    if idx > last.index {
                        break;
                    }
                }
                if let Some(before) = stale_before {
                    store.delete_chunks_before(job_id, before).await?;
                }
                let (fi, fo) = first.unwrap_or((last.index, last.offset));
                st.first_index = fi;
                st.first_offset = fo;
            }
        }
        *self.st = st;
        Ok(())
    }

    /// The job whose log this is.
    pub fn job_id(&self) -> &str {
        &self.job_id
    }

    /// Chunks stored for the attempt (the next expected agent sequence number).
    pub fn next_seq(&self) -> u64 {
        self.st.next_seq
    }

    /// Stores one chunk (the caller has fenced the attempt) and sends it to live subscribers;
    /// returns the attempt's stored chunk count. Past the cap, whole chunks are dropped from the
    /// head.
    pub async fn append(
        &mut self,
        store: &dyn Store,
        stream: StreamKind,
        data: Vec<u8>,
    ) -> StoreResult<u64> {
        self.append_many(store, vec![(stream, data)]).await
    }

    /// [`AppendLog::append`] for several chunks, stored in one store write.
    pub async fn append_many(
        &mut self,
        store: &dyn Store,
        chunks: Vec<(StreamKind, Vec<u8>)>,
    ) -> StoreResult<u64> {
        let (job_id, cap) = (self.job_id.as_str(), self.cap);
        let st = &mut *self.st;
        let now = crate::store::now_ms();
        let mut records = Vec::with_capacity(chunks.len());
        let (mut index, mut seq, mut offset) = (st.next_index, st.next_seq, st.end_offset);
        for (stream, data) in chunks {
            let chunk = ChunkRecord {
                index,
                attempt: st.attempt,
                seq,
                offset,
                stream,
                time_ms: now,
                data,
            };
            index += 1;
            seq += 1;
            offset = chunk.end();
            records.push(chunk);
        }
        store.append_chunks(job_id, &records).await?;
        for chunk in records {
            st.next_seq += 1;
            st.next_index += 1;
            st.end_offset = chunk.end();
            st.lines += chunk.data.iter().filter(|b| **b == b'\n').count() as u64;
            // Without receivers `send` would drop the item anyway; a subscriber that attaches
            // later replays this chunk from the store.
            if self.live.tx.receiver_count() > 0 {
                let _ = self
                    .live
                    .tx
                    .send(RelayItem::Chunk(Arc::new(LiveChunk::new(chunk))));
            }
        }
        // Keep the tail: drop whole chunks from the head once over the cap (with some slack so
        // that trimming is not per chunk).
        let retained = st.end_offset - st.first_offset;
        if retained > cap + cap / 8 {
            let excess = (retained - cap) as usize;
            let mut idx = st.first_index;
            let mut dropped = 0usize;
            let mut new_first = None;
            while dropped < excess {
                let page = store.read_chunks(job_id, idx, PAGE_BYTES).await?;
                if page.is_empty() {
                    break;
                }
                for c in &page {
                    if dropped >= excess {
                        new_first = Some((c.index, c.offset));
                        break;
                    }
                    dropped += c.data.len();
                    idx = c.index + 1;
                }
                if new_first.is_some() {
                    break;
                }
            }
            let (fi, fo) = new_first.unwrap_or((st.next_index - 1, st.end_offset));
            store.delete_chunks_before(job_id, fi).await?;
            st.first_index = fi;
            st.first_offset = fo;
            st.truncated = true;
        }
        Ok(st.next_seq)
    }

    /// The stored log as the job record keeps it when the attempt ends; `truncated`: the
    /// worker dropped output too.
    pub fn meta(&self, truncated: bool) -> OutputMeta {
        OutputMeta {
            first_index: self.st.first_index,
            first_offset: self.st.first_offset,
            truncated: self.st.truncated || truncated,
            total_bytes: self.st.end_offset,
            lines: self.st.lines,
        }
    }

    /// Drops what the attempt stored so far (a legacy result that disagrees with its streamed
    /// output replaces it); later appends continue after the old end offset.
    pub async fn clear(&mut self, store: &dyn Store) -> StoreResult<()> {
        if !self.st.loaded {
            return Ok(());
        }
        store
            .delete_chunks_before(&self.job_id, self.st.next_index)
            .await?;
        self.st.first_index = self.st.next_index;
        self.st.first_offset = self.st.end_offset;
        self.st.lines = 0;
        Ok(())
    }

    /// Forgets the state: the next holder loads it from the store.
    pub fn unload(&mut self) {
        self.st.loaded = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SledStore;
    use tokio::sync::mpsc;

    fn output(text: &Encoded) -> (u64, Vec<u8>) {
        match serde_json::from_str::<ServerMsg>(text.as_str()) {
            Ok(ServerMsg::Output { offset, data, .. }) => (offset, data.0),
            other => panic!("expected an output message, got {other:?}"),
        }
    }

    async fn attach(
        store: &Arc<SledStore>,
        relay: &Arc<Relay>,
        offset: u64,
    ) -> mpsc::Receiver<Encoded> {
        let (tx, mut queued) = mpsc::channel::<Queued>(16);
        let out = Outbox::new(tx, 1 << 20);
        let (fwd, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            while let Some(q) = queued.recv().await {
                if fwd.send(q.msg).await.is_err() {
                    return;
                }
            }
        });
        let (store, relay2) = (store.clone(), relay.clone());
        let before = relay.live("job").tx.receiver_count();
        tokio::spawn(async move {
            let _ = subscribe(store.as_ref(), &relay2, "job", offset, &out, || async {
                Ok(false)
            })
            .await;
        });
        while relay.live("job").tx.receiver_count() == before {
            tokio::task::yield_now().await;
        }
        rx
    }

    #[tokio::test]
    async fn live_chunks_are_encoded_once_and_shared_by_subscribers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(SledStore::open(dir.path(), 8 << 20).expect("store"));
        let relay = Arc::new(Relay::new(64 << 20));
        let mut log = relay.log("job").await;
        log.load(store.as_ref(), 1, ("w".into(), "t".into()), 0)
            .await
            .expect("state");
        let mut a = attach(&store, &relay, 0).await;
        let mut b = attach(&store, &relay, 0).await;
        // Attached past the end of the log: the first live chunk starts before its offset.
        let mut c = attach(&store, &relay, 3).await;
        for data in [b"hello\n".to_vec(), b"world\n".to_vec()] {
            log.append(store.as_ref(), StreamKind::Stdout, data)
                .await
                .expect("append");
        }
        for want in [(0, b"hello\n".to_vec()), (6, b"world\n".to_vec())] {
            let (x, y) = (a.recv().await.expect("a"), b.recv().await.expect("b"));
            assert_eq!(output(&x), want);
            assert_eq!(
                x.as_str().as_ptr(),
                y.as_str().as_ptr(),
                "one shared encoding"
            );
        }
        assert_eq!(output(&c.recv().await.expect("c")), (3, b"lo\n".to_vec()));
        assert_eq!(
            output(&c.recv().await.expect("c")),
            (6, b"world\n".to_vec())
        );
    }

    /// A raw read streams page by page within the bounds it announced: from an offset inside a
    /// chunk, across page boundaries, clipped to `max` and to what is stored; past the end there
    /// is nothing to read.
    #[tokio::test]
    async fn raw_reads_stream_exactly_the_announced_range() {
        use futures_util::TryStreamExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(SledStore::open(dir.path(), 8 << 20).expect("store"));
        let relay = Relay::new(64 << 20);
        let mut log = relay.log("job").await;
        log.load(store.as_ref(), 1, ("w".into(), "t".into()), 0)
            .await
            .expect("state");
        let mut all = Vec::new();
        // 40 chunks of 16 KiB: 640 KiB, so a full read spans three 256 KiB pages.
        for i in 0..40u8 {
            let data = vec![b'a' + (i % 26); 16 * 1024];
            all.extend_from_slice(&data);
            log.append(store.as_ref(), StreamKind::Stdout, data)
                .await
                .expect("append");
        }
        let dyn_store: Arc<dyn Store> = store.clone();
        for (offset, max) in [
            (0u64, u64::MAX),
            (5, 300_000),
            (16_000, 600_000),
            (600_000, 10),
        ] {
            let (start, end, idx) = raw_bounds(store.as_ref(), "job", offset, max)
                .await
                .expect("bounds");
            assert_eq!(start, offset);
            assert_eq!(end, (offset.saturating_add(max)).min(all.len() as u64));
            let pages: Vec<bytes::Bytes> = raw_stream(
                dyn_store.clone(),
                "job".into(),
                idx.expect("idx"),
                start,
                end,
            )
            .try_collect()
            .await
            .expect("stream");
            assert!(pages.iter().all(|p| p.len() <= PAGE_BYTES));
            let got: Vec<u8> = pages.concat();
            assert_eq!(
                got,
                all[start as usize..end as usize],
                "offset {offset} max {max}"
            );
        }
        let (start, end, idx) = raw_bounds(store.as_ref(), "job", all.len() as u64, 100)
            .await
            .expect("bounds");
        assert_eq!(
            (start, end, idx),
            (all.len() as u64, all.len() as u64, None)
        );
    }

    #[tokio::test]
    async fn the_append_log_keeps_state_and_chunks_in_step_across_attempts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SledStore::open(dir.path(), 8 << 20).expect("store");
        let relay = Relay::new(64 << 20);
        let owner = |w: &str| (w.to_string(), "t".to_string());
        let mut log = relay.log("job").await;
        assert!(!log.holds(None, "w", "t"), "nothing loaded yet");
        log.load(&store, 1, owner("w"), 0).await.expect("load");
        for line in [b"one\n".to_vec(), b"two\n".to_vec()] {
            log.append(&store, StreamKind::Stdout, line)
                .await
                .expect("append");
        }
        assert!(log.holds(Some(1), "w", "t") && log.holds(None, "w", "t"));
        assert!(!log.holds(Some(2), "w", "t") && !log.holds(Some(1), "w", "x"));
        assert_eq!(log.next_seq(), 2);
        let meta = log.meta(false);
        assert_eq!((meta.first_offset, meta.total_bytes, meta.lines), (0, 8, 2));
        drop(log);
        assert_eq!(relay.end_offset("job").await, Some(8));
        // The attempt is lost: the next one starts a fresh log after the old end.
        relay.unload("job").await;
        assert_eq!(relay.end_offset("job").await, None);
        let mut log = relay.log("job").await;
        log.load(&store, 2, owner("w2"), 0).await.expect("load");
        assert_eq!(log.loaded_attempt(), Some(2));
        assert_eq!(log.next_seq(), 0);
        let meta = log.meta(true);
        assert_eq!((meta.first_offset, meta.total_bytes, meta.lines), (8, 8, 0));
        assert!(meta.truncated);
        let old = store.read_chunks("job", 0, 1 << 20).await.expect("read");
        assert!(old.is_empty(), "the lost attempt's chunks are dropped");
        log.append(&store, StreamKind::Stderr, b"three\n".to_vec())
            .await
            .expect("append");
        // A replacing result clears what was streamed; the offsets keep going.
        log.clear(&store).await.expect("clear");
        let meta = log.meta(false);
        assert_eq!(
            (meta.first_offset, meta.total_bytes, meta.lines),
            (14, 14, 0)
        );
        assert!(
            store
                .read_chunks("job", 0, 1 << 20)
                .await
                .expect("read")
                .is_empty()
        );
    }
}
