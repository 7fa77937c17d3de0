//! What crosses hubs that share one store (PostgreSQL): each hub dispatches to the agents
//! connected to it from its own mirror of the one queue, and tells the others, in batched
//! notes through the store, what they cannot see for themselves: a job queued (submitted or
//! requeued), a cancel, terminal resize or drain for a worker that may be connected
//! elsewhere, a worker token revoked. The job records stay the only truth: a claim is a compare-and-swap on the record,
//! so two hubs racing for one job leave it with exactly one worker, and a mirror entry for a
//! job another hub took just fails its claim and is dropped.
//!
//! Notes are a hint for promptness, never needed for correctness: a hub that missed some (its
//! listening connection dropped) catches up from the records when it listens again and every
//! [`POLL`] anyway. The one exception is a resize, which only makes a terminal look right: a
//! lost resize note leaves the job at its old size until the user resizes again or its agent
//! reconnects (the hub it reconnects to sends the size its record holds).
//!
//! On a store of its own (sled) nothing here runs and notes go nowhere.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cmdx_proto::JobStatus;
use tokio::sync::mpsc;

use crate::Hub;

/// How often a hub of a cluster rereads the queue from the records, in case notes were lost.
pub const POLL: Duration = Duration::from_secs(5);

/// How often a hub of a cluster marks the agents connected to it present.
pub const PRESENCE_BEAT: Duration = Duration::from_secs(2);

/// A worker marked present within this long is alive somewhere (three beats).
const PRESENCE_FRESH_SECS: u64 = 6;

/// An assignment older than this that its agent's hub does not hold was never delivered.
const UNDELIVERED_MS: u64 = 10_000;

/// Most notes published in one message.
const BATCH: usize = 4096;

/// Something the other hubs of a cluster should hear.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Note {
    /// A job entered the queue (submitted or requeued) under `seq` with `tags`.
    Queued {
        /// Its tag set.
        tags: Vec<String>,
        /// Queue order, job, priority (0 from hubs that predate priorities) and owner (empty
        /// from hubs that predate fair share).
        entry: crate::queue::Entry,
    },
    /// The job's owner or an admin asked to cancel it: whoever holds its worker tells it.
    Cancel {
        /// The job.
        job_id: String,
    },
    /// The job's terminal was resized (the new size is in its record): whoever holds its
    /// worker tells it.
    Resize {
        /// The job.
        job_id: String,
    },
    /// An admin drained the worker (stored): every hub stops giving it jobs.
    Drain {
        /// The worker.
        worker_id: String,
    },
    /// An admin resumed a drained worker (its drain deleted): every hub gives it jobs again.
    Resume {
        /// The worker.
        worker_id: String,
    },
    /// A worker token was revoked: sessions that enrolled with it close.
    Revoked {
        /// The token id.
        token_id: String,
    },
    /// More of the job's log is stored: subscribers elsewhere read it.
    Output {
        /// The job.
        job_id: String,
    },
    /// The job changed (status, worker, attempt): hubs with a client watching reread it and
    /// tell their clients.
    Changed {
        /// The job.
        job_id: String,
    },
    /// The job is terminal: subscribers elsewhere send the rest of its log and end.
    Ended {
        /// The job.
        job_id: String,
    },
    /// An admin changed or deleted the user: every hub rereads the record (sessions, quotas).
    User {
        /// The user.
        user_id: String,
    },
    /// A session was signed out: every hub refuses it and closes its sockets.
    SignedOut {
        /// The session id.
        sid: String,
        /// When it would have expired (seconds).
        exp_s: u64,
    },
}

impl Note {
    /// One line: a kind letter, the sending hub, then fields, tab-separated.
    fn encode(&self, hub_id: &str) -> String {
        match self {
            Note::Queued { tags, entry: e } => format!(
                "q\t{hub_id}\t{}\t{}\t{}\t{}\t{}",
                e.seq,
                e.job_id,
                serde_json::to_string(tags).unwrap_or_else(|_| "[]".into()),
                e.priority,
                e.owner
            ),
            Note::Cancel { job_id } => format!("c\t{hub_id}\t{job_id}"),
            Note::Resize { job_id } => format!("w\t{hub_id}\t{job_id}"),
            Note::Drain { worker_id } => format!("d\t{hub_id}\t{worker_id}"),
            Note::Resume { worker_id } => format!("R\t{hub_id}\t{worker_id}"),
            Note::Revoked { token_id } => format!("r\t{hub_id}\t{token_id}"),
            Note::Output { job_id } => format!("o\t{hub_id}\t{job_id}"),
            Note::Changed { job_id } => format!("j\t{hub_id}\t{job_id}"),
            Note::Ended { job_id } => format!("e\t{hub_id}\t{job_id}"),
            Note::User { user_id } => format!("u\t{hub_id}\t{user_id}"),
            Note::SignedOut { sid, exp_s } => format!("s\t{hub_id}\t{sid}\t{exp_s}"),
        }
    }

    /// The sending hub and the note; `None` for a line this version does not know.
    fn decode(line: &str) -> Option<(&str, Note)> {
        let mut f = line.split('\t');
        let kind = f.next()?;
        let from = f.next()?;
        let note = match kind {
            "q" => {
                let seq = f.next()?.parse().ok()?;
                let job_id = f.next()?.to_string();
                Note::Queued {
                    tags: serde_json::from_str(f.next()?).ok()?,
                    entry: crate::queue::Entry {
                        seq,
                        job_id,
                        priority: f.next().and_then(|p| p.parse().ok()).unwrap_or(0),
                        owner: f.next().unwrap_or_default().to_string(),
                    },
                }
            }
            "c" => Note::Cancel {
                job_id: f.next()?.to_string(),
            },
            "w" => Note::Resize {
                job_id: f.next()?.to_string(),
            },
            "d" => Note::Drain {
                worker_id: f.next()?.to_string(),
            },
            "R" => Note::Resume {
                worker_id: f.next()?.to_string(),
            },
            "r" => Note::Revoked {
                token_id: f.next()?.to_string(),
            },
            "o" => Note::Output {
                job_id: f.next()?.to_string(),
            },
            "j" => Note::Changed {
                job_id: f.next()?.to_string(),
            },
            "e" => Note::Ended {
                job_id: f.next()?.to_string(),
            },
            "u" => Note::User {
                user_id: f.next()?.to_string(),
            },
            "s" => Note::SignedOut {
                sid: f.next()?.to_string(),
                exp_s: f.next()?.parse().ok()?,
            },
            _ => return None,
        };
        Some((from, note))
    }
}

/// This hub's side of the cluster.
pub(crate) struct Cluster {
    /// This hub's id in notes (random per start; a hub skips its own notes).
    pub id: String,
    /// Notes waiting for the publisher; `None` when the store is this hub's own.
    out: Option<mpsc::UnboundedSender<Note>>,
    /// The publisher's end, taken when the hub starts serving.
    pending: Mutex<Option<mpsc::UnboundedReceiver<Note>>>,
}

impl Cluster {
    /// A cluster side for a store that is `shared` (or not).
    pub fn new(shared: bool) -> Cluster {
        // People see it in worker lists: the host name, then a suffix unique to this start
        // (hubs behind one address, or restarted, never share an id).
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default();
        let id = format!("{host}~{}", &crate::store::new_id()[12..]);
        if !shared {
            return Cluster {
                id,
                out: None,
                pending: Mutex::new(None),
            };
        }
        let (tx, rx) = mpsc::unbounded_channel();
        Cluster {
            id,
            out: Some(tx),
            pending: Mutex::new(Some(rx)),
        }
    }

    /// True when other hubs may share the store.
    pub fn is_shared(&self) -> bool {
        self.out.is_some()
    }

    /// Tells the other hubs (batched with whatever else is pending).
    pub fn tell(&self, note: Note) {
        if let Some(out) = &self.out {
            let _ = out.send(note);
        }
    }
}

/// Starts the publisher and the listener when the store is shared.
pub(crate) fn start(hub: &Arc<Hub>) {
    let pending = hub
        .cluster
        .pending
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    let Some(rx) = pending else {
        return;
    };
    hub.tasks.spawn(publish(hub.clone(), rx));
    hub.tasks.spawn(listen(hub.clone()));
    hub.tasks.spawn(mark_present(hub.clone()));
}

/// Marks the agents connected here present, every [`PRESENCE_BEAT`].
async fn mark_present(hub: Arc<Hub>) {
    let mut beat = tokio::time::interval(PRESENCE_BEAT);
    loop {
        beat.tick().await;
        let here = hub.dispatch.connected_agents();
        if let Err(e) = hub.store.mark_present(&hub.cluster.id, &here).await {
            tracing::warn!(error = %e, "marking workers present failed");
        }
    }
}

/// Every worker as people see it: this hub's registry, and on a cluster every worker another
/// hub holds (from its stored record, the jobs it holds and its presence), each with the hub
/// holding it.
pub(crate) async fn worker_views(
    hub: &Hub,
) -> Result<Vec<cmdx_proto::rest::WorkerView>, crate::store::StoreError> {
    let legacy_offline_ms = hub.config.legacy_offline_secs * 1000;
    let mut views = hub.dispatch.views(legacy_offline_ms);
    let Some(present) = hub.store.present_workers(PRESENCE_FRESH_SECS).await? else {
        return Ok(views);
    };
    let elsewhere: std::collections::HashMap<String, String> = present
        .into_iter()
        .filter(|(w, h)| *h != hub.cluster.id && !hub.dispatch.is_connected(w))
        .collect();
    for v in &mut views {
        if hub.dispatch.is_connected(&v.worker_id) {
            v.hub = Some(hub.cluster.id.clone());
        }
    }
    let mut held: std::collections::HashMap<String, Vec<String>> = Default::default();
    if !elsewhere.is_empty() {
        for (w, id) in hub.store.held_jobs().await? {
            if elsewhere.contains_key(&w) {
                held.entry(w).or_default().push(id);
            }
        }
    }
    for record in hub.store.list_workers().await? {
        let Some(at) = elsewhere.get(&record.id) else {
            continue;
        };
        let current_jobs = held.remove(&record.id).unwrap_or_default();
        let mut view = cmdx_proto::rest::WorkerView {
            worker_id: record.id.clone(),
            status: "online".into(),
            kind: record.kind.clone(),
            hostname: record.hostname.clone(),
            os: record.os.clone(),
            version: record.version.clone(),
            cpu_count: record.cpu_count,
            total_memory_mb: record.total_memory_mb,
            tags: record.tags.clone(),
            slots: record.slots,
            slots_used: current_jobs.len() as u32,
            current_jobs,
            isolation: cmdx_proto::agent::Isolation {
                active: record.isolation_active.clone(),
                missing: record.isolation_missing.clone(),
                mode: record.isolation_mode.clone(),
            },
            connected_at: None,
            last_heartbeat: Some(crate::time::rfc3339(record.last_seen_ms)),
            hub: Some(at.clone()),
            drained_by: None,
            drained_at: None,
        };
        if let Some(d) = hub.dispatch.drained(&record.id) {
            crate::dispatch::show_drain(&mut view, &d);
        }
        match views.iter_mut().find(|v| v.worker_id == record.id) {
            Some(v) => *v = view,
            None => views.push(view),
        }
    }
    Ok(views)
}

/// True when another hub of the cluster marked `worker` present lately.
pub(crate) async fn present_elsewhere(hub: &Hub, worker: &str) -> bool {
    match hub.store.present_workers(PRESENCE_FRESH_SECS).await {
        Ok(Some(present)) => present
            .iter()
            .any(|(w, h)| w == worker && *h != hub.cluster.id),
        Ok(None) => false,
        // Cannot tell: keep the jobs rather than requeue a job that may be running.
        Err(_) => true,
    }
}

/// How often the jobs that changed go out, each once. They only feed people's dashboards: sent
/// with every other note, they made dispatch across hubs measurably slower (one more note per
/// job change between the notes a queued job needs).
const CHANGED_EVERY: Duration = Duration::from_millis(200);

/// Sends pending notes, as many as are waiting in one message; the jobs that changed at most
/// every [`CHANGED_EVERY`].
async fn publish(hub: Arc<Hub>, mut rx: mpsc::UnboundedReceiver<Note>) {
    let mut batch = Vec::new();
    let mut changed = std::collections::HashSet::new();
    let mut tick = tokio::time::interval(CHANGED_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let notes = tokio::select! {
            n = rx.recv_many(&mut batch, BATCH) => {
                if n == 0 {
                    return;
                }
                batch.drain(..).filter(|n| match n {
                    Note::Changed { job_id } => {
                        changed.insert(job_id.clone());
                        false
                    }
                    _ => true,
                }).collect::<Vec<_>>()
            }
            _ = tick.tick(), if !changed.is_empty() => changed
                .drain()
                .map(|job_id| Note::Changed { job_id })
                .collect(),
        };
        if notes.is_empty() {
            continue;
        }
        // A job's output notes of one batch say one thing: more is stored.
        let mut seen = std::collections::HashSet::new();
        let lines: Vec<String> = notes
            .iter()
            .map(|n| n.encode(&hub.cluster.id))
            .filter(|l| seen.insert(l.clone()))
            .collect();
        if let Err(e) = hub.store.publish(&lines).await {
            // The others catch up from the records within POLL.
            tracing::warn!(error = %e, notes = lines.len(), "publishing notes failed");
        }
    }
}

/// Listens for the other hubs' notes, catching up from the records whenever it (re)starts
/// listening and every [`POLL`].
async fn listen(hub: Arc<Hub>) {
    loop {
        match hub.store.listen().await {
            Ok(None) => return,
            Ok(Some(listener)) => {
                let mut notes = listener.notes;
                hub.tasks.spawn(listener.driver);
                let (changed, rx) = mpsc::channel(CHANGED_QUEUE);
                hub.tasks.spawn(reread_changed(hub.clone(), rx));
                let mut poll = tokio::time::interval(POLL);
                loop {
                    tokio::select! {
                        note = notes.recv() => match note {
                            Some(line) => heard(&hub, &line, &changed).await,
                            None => break,
                        },
                        _ = poll.tick() => catch_up(&hub).await,
                    }
                }
                tracing::warn!("lost the connection that hears other hubs; reconnecting");
            }
            Err(e) => tracing::warn!(error = %e, "cannot listen for other hubs' notes"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Puts every queued job of the records in this hub's mirror of the queue, counts each user's
/// jobs running on other hubs and rereads users' quotas (fair share and the running quota are
/// cluster-wide to within this period), and takes back the
/// jobs of agents no hub has seen for longer than the reconnect grace (their hub died and they
/// did not come back through another): whichever hub looks first requeues them, fenced on the
/// attempt like every lost attempt, with presence timed by the database's clock.
pub(crate) async fn catch_up(hub: &Hub) {
    let jobs = match hub.store.unfinished_jobs().await {
        Ok(jobs) => jobs,
        Err(e) => {
            tracing::warn!(error = %e, "reading the queue failed");
            return;
        }
    };
    hub.dispatch.set_elsewhere(
        jobs.iter()
            .filter(|j| matches!(j.status, JobStatus::Assigned | JobStatus::Running))
            .map(|j| (j.id.as_str(), j.owner.as_str())),
    );
    match hub.store.list_users().await {
        Ok(users) => hub.apply_users(&users),
        Err(e) => tracing::warn!(error = %e, "reading users failed"),
    }
    match hub.store.list_drains().await {
        Ok(drains) => hub.dispatch.load_drains(drains),
        Err(e) => tracing::warn!(error = %e, "reading drained workers failed"),
    }
    // Sessions signed out through another hub.
    match hub.store.revoked_sessions().await {
        Ok(revoked) => {
            let now_s = crate::store::now_ms() / 1000;
            for (sid, exp) in revoked {
                if exp > now_s && !hub.auth.is_revoked(&sid) {
                    hub.auth.revoke_session(&sid, exp);
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "reading signed-out sessions failed"),
    }
    // Subscribers here of jobs another hub appends to: read what notes may have missed, and end
    // those of jobs that ended meanwhile.
    let unfinished: std::collections::HashSet<&str> = jobs.iter().map(|j| j.id.as_str()).collect();
    for job_id in hub.relay.followed() {
        if let Err(e) = hub.relay.pull(hub.store.as_ref(), &job_id).await {
            tracing::warn!(job_id, error = %e, "reading another hub's output failed");
        }
        if !unfinished.contains(job_id.as_str()) {
            hub.relay.end(&job_id);
        }
    }
    let mut held = Vec::new();
    let mut undelivered = Vec::new();
    let now = crate::store::now_ms();
    for job in jobs {
        if let (JobStatus::Queued, Some(seq)) = (job.status, job.queue_seq) {
            hub.dispatch
                .enqueue(&job.tags, crate::queue::Entry::of(seq, &job));
            continue;
        }
        match (job.status, job.queue_seq, job.worker_id) {
            // Assigned to an agent connected here that this hub never handed it to: the claim
            // was committed but its answer lost with the database connection, so the dispatcher
            // took it as failed. The agent never heard of it: run it again.
            (JobStatus::Assigned, _, Some(worker))
                if hub.dispatch.is_connected(&worker)
                    && !hub.dispatch.held(&worker).contains(&job.id)
                    && now.saturating_sub(job.assigned_ms.unwrap_or(now)) > UNDELIVERED_MS =>
            {
                undelivered.push((job.id, worker, job.attempt));
            }
            (JobStatus::Assigned | JobStatus::Running, _, Some(worker))
                if !hub.dispatch.is_connected(&worker) =>
            {
                held.push((job.id, worker, job.attempt));
            }
            _ => {}
        }
    }
    for (job_id, worker, attempt) in undelivered {
        if let Err(e) = crate::jobs::lifecycle::requeue_or_fail(
            hub,
            &job_id,
            &worker,
            attempt,
            "assignment not delivered",
        )
        .await
        {
            tracing::warn!(job_id, error = %e, "requeue failed");
        }
    }
    if held.is_empty() {
        return;
    }
    let grace = hub.config.reconnect_grace_secs + PRESENCE_FRESH_SECS;
    let (Ok(Some(present)), Ok(workers)) = (
        hub.store.present_workers(grace).await,
        hub.store.list_workers().await,
    ) else {
        return;
    };
    let present: std::collections::HashSet<String> = present.into_iter().map(|p| p.0).collect();
    // Legacy pollers have no connection to lose: their watchdog decides.
    let agents: std::collections::HashSet<String> = workers
        .into_iter()
        .filter(|w| w.kind != "legacy")
        .map(|w| w.id)
        .collect();
    for (job_id, worker, attempt) in held {
        if present.contains(&worker) || !agents.contains(&worker) {
            continue;
        }
        if let Err(e) = crate::jobs::lifecycle::requeue_or_fail(
            hub,
            &job_id,
            &worker,
            attempt,
            "worker gone from the cluster",
        )
        .await
        {
            tracing::warn!(job_id, error = %e, "requeue failed");
        }
    }
}

/// Jobs changed on other hubs waiting to be reread for this hub's clients; more are dropped
/// (like every dashboard event a slow listener misses, the next change or a reload shows it).
const CHANGED_QUEUE: usize = 4096;

/// Rereads jobs changed on other hubs and tells this hub's clients, apart from the listener so
/// a burst of changes never holds up the notes dispatch needs (a job queued, a cancel).
async fn reread_changed(hub: Arc<Hub>, mut rx: mpsc::Receiver<String>) {
    let mut batch = Vec::new();
    while rx.recv_many(&mut batch, 256).await > 0 {
        let mut seen = std::collections::HashSet::new();
        for job_id in batch.drain(..).filter(|id| seen.insert(id.clone())) {
            match hub.store.get_job(&job_id).await {
                Ok(Some(job)) => hub.publish_here(&job),
                Ok(None) => {}
                Err(e) => tracing::warn!(job_id, error = %e, "reading a changed job failed"),
            }
        }
    }
}

/// Acts on one note from another hub; `changed` takes the jobs to reread for clients here.
async fn heard(hub: &Arc<Hub>, line: &str, changed: &mpsc::Sender<String>) {
    let Some((from, note)) = Note::decode(line) else {
        tracing::debug!(line, "unknown note");
        return;
    };
    if from == hub.cluster.id {
        return;
    }
    match note {
        Note::Queued { tags, entry } => hub.dispatch.enqueue(&tags, entry),
        Note::Cancel { job_id } => {
            let Ok(Some(job)) = hub.store.get_job(&job_id).await else {
                return;
            };
            let worker = job.worker_id.clone().unwrap_or_default();
            if job.status.is_terminal() || !job.cancel_requested {
                return;
            }
            if let Some(conn) = hub.dispatch.conn(&worker) {
                let _ = conn
                    .send(crate::jobs::lifecycle::cancel_message(hub, &job))
                    .await;
            }
        }
        Note::Resize { job_id } => {
            let Ok(Some(job)) = hub.store.get_job(&job_id).await else {
                return;
            };
            let worker = job.worker_id.clone().unwrap_or_default();
            if let (Some(conn), Some(msg)) = (
                hub.dispatch.conn(&worker),
                crate::jobs::lifecycle::resize_message(&job),
            ) {
                let _ = conn.send(msg).await;
            }
        }
        Note::Drain { worker_id } => match hub.store.list_drains().await {
            Ok(drains) => {
                if let Some(d) = drains.into_iter().find(|d| d.worker_id == worker_id) {
                    hub.dispatch.drain(d);
                }
            }
            Err(e) => tracing::warn!(worker_id, error = %e, "reading a drain failed"),
        },
        Note::Resume { worker_id } => {
            hub.dispatch.resume(&worker_id);
        }
        Note::Output { job_id } => {
            if let Err(e) = hub.relay.pull(hub.store.as_ref(), &job_id).await {
                tracing::warn!(job_id, error = %e, "reading another hub's output failed");
            }
        }
        Note::Changed { job_id } => {
            if hub.job_watched_here(&job_id) {
                let _ = changed.try_send(job_id);
            }
        }
        Note::Ended { job_id } => hub.relay.end(&job_id),
        Note::User { user_id } => match hub.store.get_user(&user_id).await {
            Ok(Some(u)) => hub.apply_user(&u),
            Ok(None) => hub.forget_user(&user_id),
            Err(e) => tracing::warn!(user_id, error = %e, "reading a changed user failed"),
        },
        Note::SignedOut { sid, exp_s } => hub.auth.revoke_session(&sid, exp_s),
        Note::Revoked { token_id } => {
            for (_, conn) in hub.dispatch.by_token(&token_id) {
                if let Some(conn) = conn {
                    conn.kick.cancel();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_round_trip_and_unknown_lines_are_skipped() {
        let notes = [
            Note::Queued {
                tags: vec!["gpu".into(), "odd\ttag".into()],
                entry: crate::queue::Entry {
                    seq: 17,
                    job_id: "j1".into(),
                    priority: -7,
                    owner: "u1".into(),
                },
            },
            Note::Cancel {
                job_id: "j2".into(),
            },
            Note::Drain {
                worker_id: "w1".into(),
            },
            Note::Resume {
                worker_id: "w1".into(),
            },
            Note::Changed {
                job_id: "j5".into(),
            },
            Note::Resize {
                job_id: "j4".into(),
            },
            Note::Revoked {
                token_id: "t1".into(),
            },
            Note::Output {
                job_id: "j3".into(),
            },
            Note::Ended {
                job_id: "j3".into(),
            },
            Note::User {
                user_id: "u7".into(),
            },
            Note::SignedOut {
                sid: "s1".into(),
                exp_s: 99,
            },
        ];
        for note in notes {
            let line = note.encode("hubA");
            assert!(!line.contains('\n'));
            assert_eq!(Note::decode(&line), Some(("hubA", note)));
        }
        assert_eq!(Note::decode("z\thubA\tx"), None);
        assert_eq!(Note::decode("q\thubA\tnot-a-number\tj\t[]"), None);
        assert_eq!(Note::decode(""), None);
    }
}
