//! In-memory dispatch state: the queue index (FIFO per tag set) and the worker registry with
//! slots. The store is the durable truth; this is the fast index over it, rebuilt at start.
//!
//! One std `Mutex` guards it and is never held across an `.await`. Planning (which job goes to
//! which worker) happens under the lock and reserves the slot; the durable claim happens after,
//! in `jobs::dispatcher::pump`, and a failed claim gives the slot back.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Mutex;

use cmdx_proto::agent::{HubMsg, Isolation};
use cmdx_proto::rest::WorkerView;
use tokio::sync::{Notify, mpsc};

use crate::store::{WorkerRecord, now_ms};
use crate::time::rfc3339;

/// How a worker talks to the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerKind {
    /// WebSocket agent (jobs are pushed).
    Agent,
    /// Legacy REST poller (jobs are pulled with `get-job`).
    Legacy,
}

/// Outgoing queue of one agent connection. Messages are boxed: a bounded tokio channel
/// allocates its first 32-slot block when it is created, and `HubMsg` by value made that block
/// about 4.9 KB for every idle agent.
pub type AgentTx = mpsc::Sender<Box<HubMsg>>;

/// A live agent connection.
#[derive(Clone)]
pub struct Conn {
    /// Connection number (a reconnect gets a new one).
    pub generation: u64,
    /// Outgoing messages (bounded).
    pub tx: AgentTx,
    /// Cancelled when a newer connection of the same worker replaces this one.
    pub kick: tokio_util::sync::CancellationToken,
}

/// What the hub knows about one worker.
pub struct WorkerEntry {
    /// Stored description.
    pub info: WorkerRecord,
    /// Push or pull.
    pub kind: WorkerKind,
    /// The connection, while connected (agents only).
    pub conn: Option<Conn>,
    /// Token id of the current connection (assignments are bound to it).
    pub token_id: String,
    /// Jobs it holds.
    pub held: BTreeSet<String>,
    /// Takes no new work.
    pub draining: bool,
    /// When it connected (ms).
    pub connected_ms: Option<u64>,
    /// Last message (ms).
    pub last_seen_ms: u64,
    /// Bumped on every connect and disconnect.
    pub generation: u64,
}

impl Conn {
    /// Queues `msg` for the agent; an error means the connection is gone.
    pub async fn send(&self, msg: HubMsg) -> Result<(), mpsc::error::SendError<Box<HubMsg>>> {
        self.tx.send(Box::new(msg)).await
    }
}

impl WorkerEntry {
    fn online(&self, legacy_offline_ms: u64) -> bool {
        match self.kind {
            WorkerKind::Agent => self.conn.is_some(),
            WorkerKind::Legacy => now_ms().saturating_sub(self.last_seen_ms) < legacy_offline_ms,
        }
    }

    fn free_slots(&self) -> u32 {
        self.info.slots.saturating_sub(self.held.len() as u32)
    }

    /// People's view of this worker.
    pub fn view(&self, legacy_offline_ms: u64) -> WorkerView {
        let status = if !self.online(legacy_offline_ms) {
            "offline"
        } else if self.draining {
            "draining"
        } else {
            "online"
        };
        WorkerView {
            worker_id: self.info.id.clone(),
            status: status.to_string(),
            kind: match self.kind {
                WorkerKind::Agent => "agent",
                WorkerKind::Legacy => "legacy",
            }
            .to_string(),
            hostname: self.info.hostname.clone(),
            os: self.info.os.clone(),
            version: self.info.version.clone(),
            cpu_count: self.info.cpu_count,
            total_memory_mb: self.info.total_memory_mb,
            tags: self.info.tags.clone(),
            slots: self.info.slots,
            slots_used: self.held.len() as u32,
            current_jobs: self.held.iter().cloned().collect(),
            isolation: Isolation {
                active: self.info.isolation_active.clone(),
                missing: self.info.isolation_missing.clone(),
                mode: self.info.isolation_mode.clone(),
            },
            connected_at: self.connected_ms.map(rfc3339),
            last_heartbeat: Some(rfc3339(self.last_seen_ms)),
            hub: None,
        }
    }
}

/// One planned assignment.
pub struct Planned {
    /// Job id.
    pub job_id: String,
    /// Its queue key.
    pub queue_seq: u64,
    /// Worker id.
    pub worker_id: String,
    /// Token id the assignment binds to.
    pub token_id: String,
    /// Where to send it.
    pub conn: Conn,
}

/// Where a queued job stands (see [`Dispatch::queue_state`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueState {
    /// 1 + the older queued jobs a worker able to run this one could take first.
    pub position: u32,
    /// No connected, non-draining worker of this hub can run the job.
    pub no_matching_worker: bool,
}

#[derive(Default)]
struct State {
    /// Queued jobs by (sorted) tag set, each FIFO by queue seq.
    queues: BTreeMap<Vec<String>, VecDeque<(u64, String)>>,
    workers: HashMap<String, WorkerEntry>,
    /// Agents that may have a free slot (stale entries are skipped).
    available: VecDeque<String>,
    next_generation: u64,
}

/// The dispatch index.
#[derive(Default)]
pub struct Dispatch {
    state: Mutex<State>,
    /// Woken when a job is queued or a slot frees.
    pub wake: Notify,
}

impl Dispatch {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a queued job to the index and wakes the dispatcher.
    pub fn enqueue(&self, queue_seq: u64, job_id: &str, tags: &[String]) {
        {
            let mut st = self.lock();
            let q = st.queues.entry(tags.to_vec()).or_default();
            // Recovery and requeues may insert out of order: keep each queue sorted.
            let pos = q.partition_point(|(s, _)| *s < queue_seq);
            // Already there: a cluster hub hears of its queue twice (a note, a catch-up).
            if q.get(pos)
                .is_some_and(|(s, id)| *s == queue_seq && id == job_id)
            {
                return;
            }
            q.insert(pos, (queue_seq, job_id.to_string()));
        }
        self.wake.notify_one();
    }

    /// Removes a queued job (cancel). Returns whether it was there.
    pub fn dequeue(&self, queue_seq: u64, tags: &[String]) -> bool {
        let mut st = self.lock();
        let Some(q) = st.queues.get_mut(tags) else {
            return false;
        };
        let before = q.len();
        q.retain(|(s, _)| *s != queue_seq);
        let removed = q.len() != before;
        if q.is_empty() {
            st.queues.remove(tags);
        }
        removed
    }

    /// Where a job queued under `queue_seq` with (sorted) `tags` stands.
    ///
    /// The workers able to run it are the online, non-draining ones that serve all its tags
    /// (agents) or, for a tagless job, legacy pollers too. Each of them takes the oldest job among
    /// the tag sets it serves, so the jobs that may go first are the older queued jobs whose tag
    /// set one of those workers serves; the position is 1 + their number. With no such worker,
    /// the older jobs whose tag set is a subset of this job's are counted: any worker that
    /// connects for this job could take those too. The job need not be in the index (a cluster's
    /// mirror may lag): the count is by `queue_seq`.
    pub fn queue_state(
        &self,
        queue_seq: u64,
        tags: &[String],
        legacy_offline_ms: u64,
    ) -> QueueState {
        let st = self.lock();
        let subset = |small: &[String], big: &[String]| small.iter().all(|t| big.contains(t));
        let able: Vec<&[String]> = st
            .workers
            .values()
            .filter(|w| !w.draining && w.online(legacy_offline_ms))
            .filter_map(|w| match w.kind {
                WorkerKind::Agent if subset(tags, &w.info.tags) => Some(w.info.tags.as_slice()),
                WorkerKind::Legacy if tags.is_empty() => Some(&[][..]),
                _ => None,
            })
            .collect();
        let older: usize = st
            .queues
            .iter()
            .filter(|(key, _)| {
                if able.is_empty() {
                    subset(key, tags)
                } else {
                    able.iter().any(|served| subset(key, served))
                }
            })
            .map(|(_, q)| q.partition_point(|(s, _)| *s < queue_seq))
            .sum();
        QueueState {
            position: u32::try_from(older).unwrap_or(u32::MAX - 1) + 1,
            no_matching_worker: able.is_empty(),
        }
    }

    /// Number of queued jobs.
    pub fn queue_depth(&self) -> usize {
        self.lock().queues.values().map(VecDeque::len).sum()
    }

    /// Plans up to `max` assignments, reserving the slots.
    pub fn plan(&self, max: usize) -> Vec<Planned> {
        let mut st = self.lock();
        let mut out = Vec::new();
        let mut skipped = Vec::new();
        while out.len() < max && !st.queues.is_empty() {
            let Some(wid) = st.available.pop_front() else {
                break;
            };
            let Some(w) = st.workers.get(&wid) else {
                continue;
            };
            let Some(conn) = w.conn.clone() else {
                continue;
            };
            if w.draining || w.free_slots() == 0 {
                continue;
            }
            let wtags: BTreeSet<&String> = w.info.tags.iter().collect();
            // The matching tag set whose head is oldest.
            let key = st
                .queues
                .iter()
                .filter(|(tags, q)| !q.is_empty() && tags.iter().all(|t| wtags.contains(t)))
                .min_by_key(|(_, q)| q.front().map(|(s, _)| *s))
                .map(|(tags, _)| tags.clone());
            let Some(key) = key else {
                skipped.push(wid);
                continue;
            };
            let (seq, job_id) = {
                let q = st.queues.get_mut(&key).expect("key just found");
                let item = q.pop_front().expect("queue not empty");
                if q.is_empty() {
                    st.queues.remove(&key);
                }
                item
            };
            let w = st.workers.get_mut(&wid).expect("worker just found");
            w.held.insert(job_id.clone());
            let token_id = w.token_id.clone();
            if w.free_slots() > 0 {
                st.available.push_back(wid.clone());
            }
            out.push(Planned {
                job_id,
                queue_seq: seq,
                worker_id: wid,
                token_id,
                conn,
            });
        }
        st.available.extend(skipped);
        out
    }

    /// Takes the oldest tagless queued job for a legacy worker, reserving it.
    pub fn take_for_legacy(&self, worker_id: &str) -> Option<(u64, String)> {
        let mut st = self.lock();
        let w = st.workers.get(worker_id)?;
        if w.free_slots() == 0 || w.draining {
            return None;
        }
        let q = st.queues.get_mut(&Vec::<String>::new())?;
        let item = q.pop_front()?;
        if q.is_empty() {
            st.queues.remove(&Vec::<String>::new());
        }
        if let Some(w) = st.workers.get_mut(worker_id) {
            w.held.insert(item.1.clone());
        }
        Some(item)
    }

    /// Gives back a reserved slot whose claim failed (the job moved on: it is not requeued).
    pub fn unreserve(&self, worker_id: &str, job_id: &str) {
        {
            let mut st = self.lock();
            if let Some(w) = st.workers.get_mut(worker_id) {
                w.held.remove(job_id);
            }
            st.available.push_back(worker_id.to_string());
        }
        self.wake.notify_one();
    }

    /// A worker no longer holds a job (finished, requeued, cancelled); frees its slot.
    pub fn release(&self, worker_id: &str, job_id: &str) {
        let mut st = self.lock();
        let mut freed = false;
        if let Some(w) = st.workers.get_mut(worker_id) {
            freed = w.held.remove(job_id) && w.conn.is_some();
        }
        if freed {
            st.available.push_back(worker_id.to_string());
            drop(st);
            self.wake.notify_one();
        }
    }

    /// Records that `worker_id` holds `job_id` (recovery, resume).
    pub fn hold(&self, worker_id: &str, job_id: &str) {
        if let Some(w) = self.lock().workers.get_mut(worker_id) {
            w.held.insert(job_id.to_string());
        }
    }

    /// Jobs a worker holds.
    pub fn held(&self, worker_id: &str) -> Vec<String> {
        self.lock()
            .workers
            .get(worker_id)
            .map(|w| w.held.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Ensures an (offline) entry exists for a worker known from the store.
    pub fn ensure_known(&self, info: WorkerRecord, kind: WorkerKind) {
        let mut st = self.lock();
        st.workers
            .entry(info.id.clone())
            .or_insert_with(|| WorkerEntry {
                token_id: info.token_id.clone().unwrap_or_default(),
                last_seen_ms: info.last_seen_ms,
                info,
                kind,
                conn: None,
                held: BTreeSet::new(),
                draining: false,
                connected_ms: None,
                generation: 0,
            });
    }

    /// An agent connected: registers it (replacing an older connection, which is returned so the
    /// caller can close it) and returns the new generation.
    pub fn connect(
        &self,
        info: WorkerRecord,
        token_id: String,
        tx: AgentTx,
        kick: tokio_util::sync::CancellationToken,
    ) -> (u64, Option<Conn>) {
        let mut st = self.lock();
        st.next_generation += 1;
        let generation = st.next_generation;
        let now = now_ms();
        let entry = st
            .workers
            .entry(info.id.clone())
            .or_insert_with(|| WorkerEntry {
                info: info.clone(),
                kind: WorkerKind::Agent,
                conn: None,
                token_id: token_id.clone(),
                held: BTreeSet::new(),
                draining: false,
                connected_ms: None,
                last_seen_ms: now,
                generation: 0,
            });
        let old = entry.conn.take();
        entry.info = info;
        entry.kind = WorkerKind::Agent;
        entry.token_id = token_id;
        entry.conn = Some(Conn {
            generation,
            tx,
            kick,
        });
        entry.connected_ms = Some(now);
        entry.last_seen_ms = now;
        entry.generation = generation;
        entry.draining = false;
        let id = entry.info.id.clone();
        st.available.push_back(id);
        drop(st);
        self.wake.notify_one();
        (generation, old)
    }

    /// An agent's connection `generation` ended. Returns true when it was the current one (the
    /// caller then starts the reconnect grace).
    pub fn disconnect(&self, worker_id: &str, generation: u64) -> bool {
        let mut st = self.lock();
        st.next_generation += 1;
        let next = st.next_generation;
        match st.workers.get_mut(worker_id) {
            Some(w) if w.conn.as_ref().map(|c| c.generation) == Some(generation) => {
                w.conn = None;
                w.generation = next;
                w.last_seen_ms = now_ms();
                true
            }
            _ => false,
        }
    }

    /// The generation a worker is at (to tell whether it came back during a grace).
    pub fn generation(&self, worker_id: &str) -> Option<u64> {
        self.lock().workers.get(worker_id).map(|w| w.generation)
    }

    /// Whether the worker is connected now.
    pub fn is_connected(&self, worker_id: &str) -> bool {
        self.lock()
            .workers
            .get(worker_id)
            .is_some_and(|w| w.conn.is_some())
    }

    /// How a worker connects, if known.
    pub fn kind(&self, worker_id: &str) -> Option<WorkerKind> {
        self.lock().workers.get(worker_id).map(|w| w.kind)
    }

    /// When a worker was last heard from (ms).
    pub fn last_seen(&self, worker_id: &str) -> Option<u64> {
        self.lock().workers.get(worker_id).map(|w| w.last_seen_ms)
    }

    /// The connection of a worker, if connected.
    pub fn conn(&self, worker_id: &str) -> Option<Conn> {
        self.lock()
            .workers
            .get(worker_id)
            .and_then(|w| w.conn.clone())
    }

    /// The token a worker id was last enrolled with (`None` for an unknown id).
    pub fn bound_token(&self, worker_id: &str) -> Option<String> {
        self.lock()
            .workers
            .get(worker_id)
            .map(|w| w.token_id.clone())
            .filter(|t| !t.is_empty())
    }

    /// Worker ids enrolled with `token_id`, each with its live connection (agents) if any.
    pub fn by_token(&self, token_id: &str) -> Vec<(String, Option<Conn>)> {
        let st = self.lock();
        let mut out: Vec<_> = st
            .workers
            .iter()
            .filter(|(_, w)| w.token_id == token_id)
            .map(|(id, w)| (id.clone(), w.conn.clone()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Whether a legacy worker may speak as `worker_id` with `token_id`: not while a connected
    /// agent holds that id, nor while another token's legacy worker of that id is online.
    pub fn legacy_may_use(&self, worker_id: &str, token_id: &str, legacy_offline_ms: u64) -> bool {
        match self.lock().workers.get(worker_id) {
            None => true,
            Some(w) => match w.kind {
                WorkerKind::Agent => w.conn.is_none(),
                WorkerKind::Legacy => w.token_id == token_id || !w.online(legacy_offline_ms),
            },
        }
    }

    /// Registers or refreshes a legacy worker (call [`Dispatch::legacy_may_use`] first).
    /// Returns false for an unknown worker when no `info` is given.
    pub fn legacy_seen(&self, info: Option<WorkerRecord>, worker_id: &str, token_id: &str) -> bool {
        let mut st = self.lock();
        let now = now_ms();
        match st.workers.get_mut(worker_id) {
            Some(w) => {
                if let Some(info) = info {
                    w.info = info;
                }
                w.kind = WorkerKind::Legacy;
                w.last_seen_ms = now;
                w.token_id = token_id.to_string();
                if w.connected_ms.is_none() {
                    w.connected_ms = Some(now);
                }
                true
            }
            None => match info {
                Some(info) => {
                    st.workers.insert(
                        worker_id.to_string(),
                        WorkerEntry {
                            info,
                            kind: WorkerKind::Legacy,
                            conn: None,
                            token_id: token_id.to_string(),
                            held: BTreeSet::new(),
                            draining: false,
                            connected_ms: Some(now),
                            last_seen_ms: now,
                            generation: 0,
                        },
                    );
                    true
                }
                None => false,
            },
        }
    }

    /// Heartbeat from an agent.
    pub fn heartbeat(&self, worker_id: &str, draining: bool) {
        if let Some(w) = self.lock().workers.get_mut(worker_id) {
            w.last_seen_ms = now_ms();
            w.draining = draining;
        }
    }

    /// Marks a worker draining (hub-side drain).
    pub fn set_draining(&self, worker_id: &str) -> bool {
        match self.lock().workers.get_mut(worker_id) {
            Some(w) => {
                w.draining = true;
                true
            }
            None => false,
        }
    }

    /// Forgets a worker; returns the jobs it held.
    pub fn remove(&self, worker_id: &str) -> Option<Vec<String>> {
        self.lock()
            .workers
            .remove(worker_id)
            .map(|w| w.held.into_iter().collect())
    }

    /// People's view of every worker, online first.
    pub fn views(&self, legacy_offline_ms: u64) -> Vec<WorkerView> {
        let st = self.lock();
        let mut v: Vec<WorkerView> = st
            .workers
            .values()
            .map(|w| w.view(legacy_offline_ms))
            .collect();
        v.sort_by(|a, b| {
            (a.status == "offline", &a.worker_id).cmp(&(b.status == "offline", &b.worker_id))
        });
        v
    }

    /// People's view of one worker.
    pub fn view(&self, worker_id: &str, legacy_offline_ms: u64) -> Option<WorkerView> {
        self.lock()
            .workers
            .get(worker_id)
            .map(|w| w.view(legacy_offline_ms))
    }

    /// (connected workers, total slots, used slots) for metrics.
    pub fn counts(&self) -> (usize, u64, u64) {
        let st = self.lock();
        let mut connected = 0;
        let mut slots = 0u64;
        let mut used = 0u64;
        for w in st.workers.values().filter(|w| w.conn.is_some()) {
            connected += 1;
            slots += u64::from(w.info.slots);
            used += w.held.len() as u64;
        }
        (connected, slots, used)
    }

    /// Ids of the agents connected to this hub.
    pub fn connected_agents(&self) -> Vec<String> {
        self.lock()
            .workers
            .iter()
            .filter(|(_, w)| w.conn.is_some())
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Every connected agent's sender (shutdown, drain broadcast).
    pub fn all_conns(&self) -> Vec<Conn> {
        self.lock()
            .workers
            .values()
            .filter_map(|w| w.conn.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(d: &Dispatch, id: &str, tags: &[&str]) {
        let info = WorkerRecord {
            v: 1,
            id: id.into(),
            kind: "agent".into(),
            hostname: "h".into(),
            os: "linux".into(),
            version: String::new(),
            cpu_count: 1,
            total_memory_mb: 1,
            tags: tags.iter().map(|t| t.to_string()).collect(),
            slots: 1,
            isolation_active: Vec::new(),
            isolation_missing: Vec::new(),
            isolation_mode: String::new(),
            token_id: None,
            last_seen_ms: 0,
        };
        let (tx, _rx) = mpsc::channel(1);
        d.connect(info, "t".into(), tx, Default::default());
    }

    fn tags(t: &[&str]) -> Vec<String> {
        t.iter().map(|t| t.to_string()).collect()
    }

    #[test]
    fn the_position_counts_older_jobs_the_able_workers_could_take_first() {
        let d = Dispatch::default();
        d.enqueue(1, "a", &[]);
        d.enqueue(2, "b", &tags(&["gpu"]));
        d.enqueue(3, "c", &tags(&["arm"]));
        d.enqueue(4, "d", &tags(&["gpu"]));
        // Nobody connected: only older jobs a future gpu worker would surely take first.
        let s = d.queue_state(4, &tags(&["gpu"]), 1000);
        assert_eq!(
            s,
            QueueState {
                position: 3,
                no_matching_worker: true
            }
        );
        // A plain worker cannot run it: still nobody.
        agent(&d, "w0", &[]);
        assert!(d.queue_state(4, &tags(&["gpu"]), 1000).no_matching_worker);
        // A worker serving gpu and arm would take a, b and c first.
        agent(&d, "w1", &["arm", "gpu"]);
        let s = d.queue_state(4, &tags(&["gpu"]), 1000);
        assert_eq!(s.position, 4);
        assert!(!s.no_matching_worker);
        // The tagless job is first for w0 and w1 alike.
        assert_eq!(d.queue_state(1, &[], 1000).position, 1);
        // Draining workers do not count.
        d.set_draining("w1");
        assert!(d.queue_state(4, &tags(&["gpu"]), 1000).no_matching_worker);
    }
}
