//! In-memory dispatch state: the queue index (ordered as `queue.rs` says: tags, priority, fair
//! share between users, FIFO per user), the worker registry with slots, and each user's quotas. The store is the durable truth; this is the fast index over it, rebuilt at start.
//!
//! One std `Mutex` guards it and is never held across an `.await`. Planning (which job goes to
//! which worker) happens under the lock and reserves the slot; the durable claim happens after,
//! in `jobs::dispatcher::pump`, and a failed claim gives the slot back.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Mutex;

use cmdx_proto::agent::{HubMsg, Isolation};
use cmdx_proto::rest::{WaitReason, WorkerView};
use tokio::sync::{Notify, mpsc};

use crate::queue::{Entry, OwnerMap, Queue, Usage};
use crate::store::{DrainRecord, UserRecord, WorkerRecord, now_ms};
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
    /// Its agent says it takes no new work (it is stopping). An admin's drain is kept apart,
    /// in `State::drained`: it outlives the connection.
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

    /// People's view of this worker, with an admin's drain of it.
    pub fn view(&self, legacy_offline_ms: u64, drain: Option<&DrainRecord>) -> WorkerView {
        let status = if !self.online(legacy_offline_ms) {
            "offline"
        } else if self.draining {
            "draining"
        } else {
            "online"
        };
        let mut view = WorkerView {
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
            drained_by: None,
            drained_at: None,
        };
        if let Some(d) = drain {
            show_drain(&mut view, d);
        }
        view
    }
}

/// Shows an admin's drain in a worker's view: who and when, and `draining` while it is online.
pub fn show_drain(view: &mut WorkerView, drain: &DrainRecord) {
    if view.status == "online" {
        view.status = "draining".into();
    }
    view.drained_by = Some(drain.by.clone());
    view.drained_at = Some(rfc3339(drain.at_ms));
}

/// One planned assignment.
pub struct Planned {
    /// Job id.
    pub job_id: String,
    /// Its queue key.
    pub queue_seq: u64,
    /// Its owner.
    pub owner: String,
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
    /// 1 + the queued jobs a worker able to run this one would take first.
    pub position: u32,
    /// No connected, non-draining worker of this hub can run the job.
    pub no_matching_worker: bool,
    /// Why it waits.
    pub reason: WaitReason,
}

/// How many jobs users may have queued and running (0: no limit).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Quotas {
    /// The hub's `max_queued_per_user`.
    pub max_queued: u32,
    /// The hub's `max_running_per_user`.
    pub max_running: u32,
    /// Users' own limits set by an admin: (queued, running), `None` for the hub's.
    pub users: OwnerMap<(Option<u32>, Option<u32>)>,
}

impl Quotas {
    /// The hub's limits and every user's own.
    pub fn new(max_queued: u32, max_running: u32, users: &[UserRecord]) -> Quotas {
        Quotas {
            max_queued,
            max_running,
            users: users
                .iter()
                .filter(|u| u.max_queued.is_some() || u.max_running.is_some())
                .map(|u| (u.id.clone(), (u.max_queued, u.max_running)))
                .collect(),
        }
    }

    /// `owner`'s limit on queued jobs (0: none).
    pub fn queued(&self, owner: &str) -> u32 {
        self.users
            .get(owner)
            .and_then(|(q, _)| *q)
            .unwrap_or(self.max_queued)
    }

    /// `owner`'s limit on running jobs (0: none).
    pub fn running(&self, owner: &str) -> u32 {
        self.users
            .get(owner)
            .and_then(|(_, r)| *r)
            .unwrap_or(self.max_running)
    }

    /// Whether no user has a running limit (then nobody is ever passed over).
    fn no_running_limit(&self) -> bool {
        self.max_running == 0 && self.users.values().all(|(_, r)| r.unwrap_or(0) == 0)
    }

    /// Whether `owner` with `usage` may not start another job now.
    fn at_running(&self, owner: &str, usage: &Usage) -> bool {
        let limit = self.running(owner);
        limit > 0 && usage.active() >= limit
    }
}

/// A submission counted against its owner's queued quota until it is enqueued or dropped.
pub struct Admission<'a> {
    dispatch: &'a Dispatch,
    owner: String,
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        let mut st = self.dispatch.lock();
        if let Some(n) = st.admitting.get_mut(&self.owner) {
            *n -= 1;
            if *n == 0 {
                st.admitting.remove(&self.owner);
            }
        }
    }
}

#[derive(Default)]
struct State {
    /// Queued jobs in dispatch order.
    queue: Queue,
    /// Owner of every job a worker here holds (running counts per user).
    held_owner: OwnerMap<String>,
    /// Submissions being stored, per owner (queued quota).
    admitting: HashMap<String, u32>,
    quotas: Quotas,
    workers: HashMap<String, WorkerEntry>,
    /// Workers an admin drained (as stored), by id: they take no new jobs, whether or not they
    /// are connected now.
    drained: HashMap<String, DrainRecord>,
    /// Agents that may have a free slot (stale entries are skipped).
    available: VecDeque<String>,
    next_generation: u64,
}

impl State {
    /// Whether `w` takes no new jobs: its agent is stopping or an admin drained it.
    fn closed(&self, w: &WorkerEntry) -> bool {
        w.draining || self.drained.contains_key(&w.info.id)
    }

    /// `job_id` no longer runs here: its owner's running count drops. False when it was not
    /// counted.
    fn stop_running(&mut self, job_id: &str) -> bool {
        match self.held_owner.remove(job_id) {
            Some(owner) => {
                self.queue.stopped(&owner);
                true
            }
            None => false,
        }
    }
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

    /// Adds a queued job (with sorted `tags`) to the index and wakes the dispatcher. A job
    /// already there (a cluster hub hears of its queue twice: a note, a catch-up) is left as it is.
    pub fn enqueue(&self, tags: &[String], entry: Entry) {
        if self.lock().queue.insert(tags, entry) {
            self.wake.notify_one();
        }
    }

    /// Removes a queued job (cancel). Returns whether it was there.
    pub fn dequeue(&self, queue_seq: u64, tags: &[String]) -> bool {
        self.lock().queue.remove(tags, queue_seq)
    }

    /// Counts a submission of `owner`'s against their queued quota while it is stored: `Err`
    /// with the limit when they already have that many queued (or being submitted).
    pub fn admit(&self, owner: &str) -> Result<Admission<'_>, u32> {
        let mut st = self.lock();
        let limit = st.quotas.queued(owner);
        let admitting = st.admitting.get(owner).copied().unwrap_or(0);
        if limit > 0 && st.queue.usage(owner).queued + admitting >= limit {
            return Err(limit);
        }
        *st.admitting.entry(owner.to_string()).or_default() += 1;
        Ok(Admission {
            dispatch: self,
            owner: owner.to_string(),
        })
    }

    /// Replaces the quotas (start, a cluster's catch-up).
    pub fn set_quotas(&self, quotas: Quotas) {
        self.lock().quotas = quotas;
        // A raised running limit may let waiting jobs start.
        self.wake.notify_one();
    }

    /// Sets one user's own limits (`None`: the hub's).
    pub fn set_user_quota(&self, owner: &str, queued: Option<u32>, running: Option<u32>) {
        {
            let mut st = self.lock();
            if queued.is_none() && running.is_none() {
                st.quotas.users.remove(owner);
            } else {
                st.quotas.users.insert(owner.to_string(), (queued, running));
            }
        }
        self.wake.notify_one();
    }

    /// The quotas in force.
    pub fn quotas(&self) -> Quotas {
        self.lock().quotas.clone()
    }

    /// Replaces each user's count of jobs assigned or running on other hubs of a cluster, from
    /// `active`: every unfinished job's `(id, owner)` that is assigned or running anywhere (the
    /// ones held here are left out).
    pub fn set_elsewhere<'a>(&self, active: impl Iterator<Item = (&'a str, &'a str)>) {
        {
            let mut st = self.lock();
            let mut counts: HashMap<String, u32> = HashMap::new();
            for (job, owner) in active {
                if !st.held_owner.contains_key(job) {
                    *counts.entry(owner.to_string()).or_default() += 1;
                }
            }
            st.queue.set_elsewhere(&counts);
        }
        self.wake.notify_one();
    }

    /// Queued jobs per tag set, the `max` deepest and the rest summed (see
    /// [`Queue::depth_by_tags`]).
    pub fn depth_by_tags(&self, max: usize) -> (Vec<(String, usize)>, Option<usize>) {
        self.lock().queue.depth_by_tags(max)
    }

    /// Queued jobs per priority band (`low` < 0, `normal` 0, `high` > 0).
    pub fn depth_by_band(&self) -> [(&'static str, usize); 3] {
        self.lock().queue.depth_by_band()
    }

    /// Where a job queued under `queue_seq` with (sorted) `tags`, `priority` and `owner`
    /// stands, and why it waits.
    ///
    /// The workers able to run it are the online, non-draining ones that serve all its tags
    /// (agents) or, for a tagless job, legacy pollers too. The jobs that may go first are those
    /// in a tag set one of those workers serves, ahead in the queue's order (`queue.rs`:
    /// priority, then users in turn, then FIFO); the position is 1 + their number. With no such
    /// worker, the jobs whose tag set is a subset of this job's are counted: any worker that
    /// connects for this job could take those too. The job need not be in the index (a
    /// cluster's mirror may lag): the count is by `queue_seq`.
    pub fn queue_state(&self, job: &Entry, tags: &[String], legacy_offline_ms: u64) -> QueueState {
        let st = self.lock();
        let subset = |small: &[String], big: &[String]| small.iter().all(|t| big.contains(t));
        let able: Vec<&[String]> = st
            .workers
            .values()
            .filter(|w| !st.closed(w) && w.online(legacy_offline_ms))
            .filter_map(|w| match w.kind {
                WorkerKind::Agent if subset(tags, &w.info.tags) => Some(w.info.tags.as_slice()),
                WorkerKind::Legacy if tags.is_empty() => Some(&[][..]),
                _ => None,
            })
            .collect();
        let standing = st.queue.standing(job.seq, job.priority, &job.owner, |key| {
            if able.is_empty() {
                subset(key, tags)
            } else {
                able.iter().any(|served| subset(key, served))
            }
        });
        let reason = if able.is_empty() {
            WaitReason::NoMatchingWorker
        } else if st
            .quotas
            .at_running(&job.owner, &st.queue.usage(&job.owner))
        {
            WaitReason::UserAtRunningQuota
        } else if standing.higher > 0 {
            WaitReason::BehindHigherPriority
        } else {
            WaitReason::NoFreeSlot
        };
        QueueState {
            position: standing.ahead.saturating_add(1),
            no_matching_worker: able.is_empty(),
            reason,
        }
    }

    /// Number of queued jobs.
    pub fn queue_depth(&self) -> usize {
        self.lock().queue.len()
    }

    /// Plans up to `max` assignments, reserving the slots.
    pub fn plan(&self, max: usize) -> Vec<Planned> {
        let mut out = Vec::new();
        let mut skipped = Vec::new();
        while out.len() < max {
            // The lock is taken per assignment: submissions and reports interleave with a long
            // plan instead of waiting for the whole batch.
            let mut st = self.lock();
            if st.queue.is_empty() {
                break;
            }
            let Some(wid) = st.available.pop_front() else {
                break;
            };
            let Some(w) = st.workers.get(&wid) else {
                continue;
            };
            let Some(conn) = w.conn.clone() else {
                continue;
            };
            if st.closed(w) || w.free_slots() == 0 {
                continue;
            }
            let wtags: BTreeSet<String> = w.info.tags.iter().cloned().collect();
            let State { queue, quotas, .. } = &mut *st;
            let unlimited = quotas.no_running_limit();
            let Some(Entry {
                seq, job_id, owner, ..
            }) = queue.take_next(
                |tags| tags.iter().all(|t| wtags.contains(t)),
                |owner, usage| !unlimited && quotas.at_running(owner, usage),
            )
            else {
                skipped.push(wid);
                continue;
            };
            st.held_owner.insert(job_id.clone(), owner.clone());
            let w = st.workers.get_mut(&wid).expect("worker just found");
            w.held.insert(job_id.clone());
            let token_id = w.token_id.clone();
            if w.free_slots() > 0 {
                st.available.push_back(wid.clone());
            }
            out.push(Planned {
                job_id,
                queue_seq: seq,
                owner,
                worker_id: wid,
                token_id,
                conn,
            });
        }
        self.lock().available.extend(skipped);
        out
    }

    /// Takes the next tagless queued job (in the queue's order) for a legacy worker, reserving
    /// it, with when its owner was served before; the caller may step over it
    /// ([`Dispatch::step_over`]) and put it back where it was ([`Dispatch::enqueue`]).
    pub fn take_for_legacy(&self, worker_id: &str) -> Option<(Entry, u64)> {
        let mut st = self.lock();
        let w = st.workers.get(worker_id)?;
        if w.free_slots() == 0 || st.closed(w) {
            return None;
        }
        let State { queue, quotas, .. } = &mut *st;
        let pick = queue.pick(
            |tags| tags.is_empty(),
            |owner, usage| quotas.at_running(owner, usage),
        )?;
        let served_before = queue.usage(&pick.owner).last_served;
        let (seq, job_id) = queue.take(&pick)?;
        let entry = Entry {
            seq,
            job_id,
            priority: pick.priority,
            owner: pick.owner,
        };
        st.held_owner
            .insert(entry.job_id.clone(), entry.owner.clone());
        if let Some(w) = st.workers.get_mut(worker_id) {
            w.held.insert(entry.job_id.clone());
        }
        Some((entry, served_before))
    }

    /// Gives back a job a legacy worker took and cannot run, as if it had not been taken: its
    /// slot, and its owner's turn (served when they were before), so fair share is not charged
    /// for a job that did not start. The caller puts the entry back in the queue.
    pub fn step_over(&self, worker_id: &str, entry: &Entry, served_before: u64) {
        self.lock().queue.unserve(&entry.owner, served_before);
        self.unreserve(worker_id, &entry.job_id);
    }

    /// Gives back a reserved slot whose claim failed (the job moved on: it is not requeued).
    pub fn unreserve(&self, worker_id: &str, job_id: &str) {
        {
            let mut st = self.lock();
            if let Some(w) = st.workers.get_mut(worker_id) {
                w.held.remove(job_id);
            }
            st.stop_running(job_id);
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
        // The owner's running count drops even when the slot was held elsewhere: their waiting
        // jobs may start on any worker.
        let stopped = st.stop_running(job_id);
        if freed {
            st.available.push_back(worker_id.to_string());
        }
        drop(st);
        if freed || stopped {
            self.wake.notify_one();
        }
    }

    /// Records that `worker_id` holds `job_id` of `owner`'s (recovery, resume).
    pub fn hold(&self, worker_id: &str, job_id: &str, owner: &str) {
        let mut st = self.lock();
        if let Some(w) = st.workers.get_mut(worker_id) {
            w.held.insert(job_id.to_string());
        }
        if !st.held_owner.contains_key(job_id) {
            st.held_owner.insert(job_id.to_string(), owner.to_string());
            st.queue.started(owner);
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

    /// Whether the hub knows `worker_id` (connected or not).
    pub fn knows(&self, worker_id: &str) -> bool {
        self.lock().workers.contains_key(worker_id)
    }

    /// Every admin's drain, as stored (at start, and again in a cluster's catch-up: drains
    /// made or ended through another hub whose note was missed).
    pub fn load_drains(&self, drains: Vec<DrainRecord>) {
        let mut st = self.lock();
        let old = std::mem::replace(
            &mut st.drained,
            drains
                .into_iter()
                .map(|d| (d.worker_id.clone(), d))
                .collect(),
        );
        let State {
            drained,
            workers,
            available,
            ..
        } = &mut *st;
        let mut resumed = false;
        for id in old.keys().filter(|id| !drained.contains_key(*id)) {
            if workers.get(id).is_some_and(|w| w.conn.is_some()) {
                available.push_back(id.clone());
                resumed = true;
            }
        }
        drop(st);
        if resumed {
            self.wake.notify_one();
        }
    }

    /// An admin drained the worker: it takes no new jobs until [`Dispatch::resume`].
    pub fn drain(&self, drain: DrainRecord) {
        self.lock().drained.insert(drain.worker_id.clone(), drain);
    }

    /// An admin's drain of the worker, if any.
    pub fn drained(&self, worker_id: &str) -> Option<DrainRecord> {
        self.lock().drained.get(worker_id).cloned()
    }

    /// Ends an admin's drain: the worker takes jobs again. False when it was not drained.
    pub fn resume(&self, worker_id: &str) -> bool {
        let mut st = self.lock();
        if st.drained.remove(worker_id).is_none() {
            return false;
        }
        if st.workers.get(worker_id).is_some_and(|w| w.conn.is_some()) {
            st.available.push_back(worker_id.to_string());
        }
        drop(st);
        self.wake.notify_one();
        true
    }

    /// Forgets a worker; returns the jobs it held.
    pub fn remove(&self, worker_id: &str) -> Option<Vec<String>> {
        let mut st = self.lock();
        let held: Vec<String> = st.workers.remove(worker_id)?.held.into_iter().collect();
        for job in &held {
            st.stop_running(job);
        }
        Some(held)
    }

    /// People's view of every worker, online first.
    pub fn views(&self, legacy_offline_ms: u64) -> Vec<WorkerView> {
        let st = self.lock();
        let mut v: Vec<WorkerView> = st
            .workers
            .values()
            .map(|w| w.view(legacy_offline_ms, st.drained.get(&w.info.id)))
            .collect();
        v.sort_by(|a, b| {
            (a.status == "offline", &a.worker_id).cmp(&(b.status == "offline", &b.worker_id))
        });
        v
    }

    /// People's view of one worker.
    pub fn view(&self, worker_id: &str, legacy_offline_ms: u64) -> Option<WorkerView> {
        let st = self.lock();
        st.workers
            .get(worker_id)
            .map(|w| w.view(legacy_offline_ms, st.drained.get(worker_id)))
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
    use crate::queue::tests::entry;

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

    fn drain_of(id: &str) -> DrainRecord {
        DrainRecord {
            v: 1,
            worker_id: id.into(),
            by: "admin@x".into(),
            at_ms: 1,
        }
    }

    #[test]
    fn a_drained_worker_gets_nothing_until_resumed_even_across_a_reconnect() {
        let d = Dispatch::default();
        agent(&d, "w", &[]);
        d.drain(drain_of("w"));
        d.enqueue(&[], entry(1, "a", 0));
        assert!(d.plan(10).is_empty());
        assert!(d.take_for_legacy("w").is_none());
        // The agent reconnects (a restart, a hub's restart): the drain stays.
        agent(&d, "w", &[]);
        assert!(d.plan(10).is_empty());
        let v = d.view("w", 1000).expect("view");
        assert_eq!(
            (v.status.as_str(), v.drained_by.as_deref()),
            ("draining", Some("admin@x"))
        );
        // Resumed: it takes the job, and says nothing of a drain.
        assert!(d.resume("w"));
        assert!(!d.resume("w"), "a second resume finds no drain");
        let planned = d.plan(10);
        assert_eq!(planned.len(), 1);
        assert_eq!(planned[0].worker_id, "w");
        let v = d.view("w", 1000).expect("view");
        assert_eq!((v.status.as_str(), v.drained_by), ("online", None));
    }

    #[test]
    fn drains_loaded_again_resume_the_ones_that_ended_elsewhere() {
        let d = Dispatch::default();
        agent(&d, "w0", &[]);
        agent(&d, "w1", &[]);
        d.load_drains(vec![drain_of("w0"), drain_of("w1")]);
        d.enqueue(&[], entry(1, "a", 0));
        assert!(d.plan(10).is_empty());
        // Another hub resumed w1 and this one missed the note: the catch-up's reload does it.
        d.load_drains(vec![drain_of("w0")]);
        let planned = d.plan(10);
        assert_eq!(planned.len(), 1);
        assert_eq!(planned[0].worker_id, "w1");
    }

    #[test]
    fn a_job_a_legacy_poller_steps_over_costs_its_owner_no_turn() {
        let d = Dispatch::default();
        agent(&d, "w", &[]);
        d.enqueue(&[], entry(1, "a", 0));
        d.enqueue(&[], entry(2, "b", 0));
        // a's job is first (both never served: the older head) and the poller cannot run it
        // (an image job): it goes back untouched.
        let (taken, before) = d.take_for_legacy("w").expect("a job");
        assert_eq!(taken.job_id, "a1");
        d.step_over("w", &taken, before);
        d.enqueue(&[], taken);
        // Still a's turn: being stepped over is not being served.
        let (next, _) = d.take_for_legacy("w").expect("a job");
        assert_eq!(next.job_id, "a1");
    }

    #[test]
    fn the_position_counts_jobs_the_able_workers_would_take_first() {
        let d = Dispatch::default();
        d.enqueue(&[], entry(1, "u", 0));
        d.enqueue(&tags(&["gpu"]), entry(2, "u", 0));
        d.enqueue(&tags(&["arm"]), entry(3, "u", 0));
        d.enqueue(&tags(&["gpu"]), entry(4, "u", 0));
        // Nobody connected: only older jobs a future gpu worker would surely take first.
        let s = d.queue_state(&entry(4, "u", 0), &tags(&["gpu"]), 1000);
        assert_eq!(
            s,
            QueueState {
                position: 3,
                no_matching_worker: true,
                reason: WaitReason::NoMatchingWorker,
            }
        );
        // A plain worker cannot run it: still nobody.
        agent(&d, "w0", &[]);
        assert!(
            d.queue_state(&entry(4, "u", 0), &tags(&["gpu"]), 1000)
                .no_matching_worker
        );
        // A worker serving gpu and arm would take a, b and c first.
        agent(&d, "w1", &["arm", "gpu"]);
        let s = d.queue_state(&entry(4, "u", 0), &tags(&["gpu"]), 1000);
        assert_eq!(s.position, 4);
        assert!(!s.no_matching_worker);
        assert_eq!(s.reason, WaitReason::NoFreeSlot);
        // The tagless job is first for w0 and w1 alike.
        assert_eq!(d.queue_state(&entry(1, "u", 0), &[], 1000).position, 1);
        // Another user's job goes before u's second: users take turns.
        d.enqueue(&[], entry(5, "v", 0));
        assert_eq!(d.queue_state(&entry(5, "v", 0), &[], 1000).position, 2);
        // A higher priority goes first, and says so.
        d.enqueue(&[], entry(6, "v", 7));
        let s = d.queue_state(&entry(1, "u", 0), &[], 1000);
        assert_eq!(
            (s.position, s.reason),
            (2, WaitReason::BehindHigherPriority)
        );
        // Workers that take no new jobs do not count: drained by an admin, or stopping.
        d.drain(drain_of("w0"));
        d.heartbeat("w1", true);
        assert!(
            d.queue_state(&entry(4, "u", 0), &tags(&["gpu"]), 1000)
                .no_matching_worker
        );
    }

    #[test]
    fn the_running_quota_holds_jobs_back_and_the_queued_quota_refuses_more() {
        let d = Dispatch::default();
        d.set_quotas(Quotas {
            max_queued: 2,
            max_running: 1,
            users: [("big".to_string(), (Some(0), None))].into_iter().collect(),
        });
        agent(&d, "w0", &[]);
        agent(&d, "w1", &[]);
        let first = d.admit("u").expect("under quota");
        let second = d.admit("u").expect("under quota");
        assert_eq!(d.admit("u").err(), Some(2), "two being submitted count");
        d.enqueue(&[], entry(1, "u", 0));
        drop(first);
        d.enqueue(&[], entry(2, "u", 0));
        drop(second);
        assert_eq!(d.admit("u").err(), Some(2));
        assert!(d.admit("big").is_ok(), "an admin gave big no limit");
        // Two free slots, but u may run one job at a time.
        let planned = d.plan(10);
        assert_eq!(planned.len(), 1);
        assert_eq!(planned[0].job_id, "u1");
        let s = d.queue_state(&entry(2, "u", 0), &[], 1000);
        assert_eq!(s.reason, WaitReason::UserAtRunningQuota);
        // The first ends: the second may start, on the other worker too.
        d.release(&planned[0].worker_id, "u1");
        let planned = d.plan(10);
        assert_eq!(planned.len(), 1);
        assert_eq!(planned[0].job_id, "u2");
        // A failed claim gives the running count back.
        d.unreserve(&planned[0].worker_id, "u2");
        d.enqueue(&[], entry(3, "u", 0));
        assert_eq!(d.plan(10).len(), 1);
    }
}
