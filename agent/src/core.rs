//! The agent's coordinator: one task that owns the connection, the held jobs and their
//! unacknowledged output, and reacts to hub messages, job events and the control signal.
//!
//! Job tasks never touch the socket: they send [`JobEvent`]s over a bounded channel; the core
//! numbers output chunks, keeps them until the hub acknowledges them, and resends them after
//! a reconnect. While the hub is away jobs keep running: their output piles up in each job's
//! bounded window, and a full window pauses the job (see [`crate::output`]).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use cmdx_proto::agent::{
    AgentMsg, Assignment, Finished, Heartbeat, HeldJob, Hello, HubMsg, Isolation, JobRef,
    OutputChunk, Reject, Started, Welcome,
};
use cmdx_proto::{Outcome, PROTOCOL_VERSION, StreamKind, WindowSize};
use cmdx_sandbox::Workspace;
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::config::Control;
use crate::conn::{self, Ws};
use crate::host::HostInfo;
use crate::job::{self, JobCtl, JobSettings};

/// What job tasks tell the core.
#[derive(Debug)]
pub(crate) enum JobEvent {
    /// The sandboxed child runs.
    Started {
        /// The job.
        job: JobRef,
        /// Isolation layers active for it.
        isolation: Vec<String>,
    },
    /// A batch of output (window permits already taken).
    Output {
        /// The job.
        job: JobRef,
        /// Which pipe.
        stream: StreamKind,
        /// The bytes.
        data: Vec<u8>,
    },
    /// The job task ended; all its output events were sent before this one.
    Done {
        /// The job.
        job: JobRef,
        /// How it ended (boxed: it is much larger than the other events).
        outcome: Box<Outcome>,
        /// Its workspace, removed by the core once the hub acknowledged the result.
        workspace: Option<Workspace>,
    },
}

/// Fixed inputs of the core.
pub(crate) struct CoreSettings {
    /// Shared with job tasks.
    pub job: Arc<JobSettings>,
    /// The hubs to connect to (`/ws/agent` of the one in use), shared with downloads.
    pub hubs: crate::fetch::HubSet,
    /// TLS client configuration for a `wss://` hub.
    pub tls: Arc<rustls::ClientConfig>,
    /// Worker token for the handshake.
    pub token: String,
    /// Stable worker id.
    pub worker_id: String,
    /// Host facts for `hello`.
    pub host: HostInfo,
    /// Advertised isolation.
    pub isolation: Isolation,
    /// Tags served.
    pub tags: Vec<String>,
    /// Slots.
    pub concurrency: u32,
    /// Per-job unacknowledged output window, in bytes.
    pub output_window: u32,
    /// Connect and welcome timeout.
    pub connect_timeout: Duration,
    /// Backoff cap.
    pub max_backoff: Duration,
    /// Grace for an abort.
    pub cancel_grace: Duration,
}

/// One held job.
struct Entry {
    /// Slot index (uid offset) the job occupies until forgotten.
    slot: u32,
    /// Control channel to the job task.
    ctl: watch::Sender<JobCtl>,
    /// The window size of the job's terminal, as the hub last said (`None`: pipes).
    size: watch::Sender<Option<WindowSize>>,
    /// Unacknowledged output bytes allowed; permits return on `outputAck`.
    window: Arc<Semaphore>,
    /// Chunks sent (or to be sent) but not yet durable at the hub, in `seq` order.
    unacked: VecDeque<OutputChunk>,
    /// Next output sequence number (= chunks produced so far).
    next_seq: u64,
    /// A `started` that could not be delivered yet.
    started_pending: Option<Started>,
    /// The result, once the task ended; kept until `finishedAck`.
    outcome: Option<Outcome>,
    /// The job task has ended.
    task_done: bool,
    /// The workspace, handed over when the task ended.
    workspace: Option<Workspace>,
    /// The hub declared this attempt stale: send nothing more, forget once the task ended.
    abandoned: bool,
}

/// How a connection phase ended.
enum Phase {
    /// Keep going: reconnect.
    Reconnect,
    /// Stop the agent.
    Exit,
}

/// Exponential backoff with jitter.
struct Backoff {
    attempt: u32,
    cap: Duration,
}

impl Backoff {
    fn next_delay(&mut self) -> Duration {
        let base = Duration::from_millis(100).saturating_mul(1u32 << self.attempt.min(16));
        self.attempt = self.attempt.saturating_add(1);
        let full = base.min(self.cap);
        // "Equal jitter": between half and all of the delay, so agents restarted together
        // spread out but never hammer the hub.
        full / 2 + full.mul_f64(rand::random::<f64>() / 2.0)
    }

    fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// The coordinator state.
pub(crate) struct Core {
    s: CoreSettings,
    jobs: HashMap<JobRef, Entry>,
    slots: Vec<bool>,
    events_tx: mpsc::Sender<JobEvent>,
    events_rx: mpsc::Receiver<JobEvent>,
    control: watch::Receiver<Control>,
    control_open: bool,
    /// Control asked to drain (or abort): take no new work, exit when nothing is held.
    draining: bool,
    /// The hub asked to drain: take no new work, keep running.
    hub_draining: bool,
    aborting: bool,
    /// Set once an abort finished every job: stop waiting for acknowledgements then.
    exit_deadline: Option<Instant>,
    heartbeat: Duration,
    cleanups: JoinSet<()>,
    backoff: Backoff,
    /// Resizes that came before their job's assignment (the hub stores a resize once the job is
    /// claimed, a moment before it pushes the assignment): the newest few, used at the start.
    early_sizes: EarlySizes,
}

/// Most resizes kept for assignments that have not come yet.
const EARLY_SIZES: usize = 16;

/// Resizes of attempts not held here (yet): the newest size per attempt, the newest
/// [`EARLY_SIZES`] attempts.
#[derive(Default)]
struct EarlySizes(VecDeque<(JobRef, WindowSize)>);

impl EarlySizes {
    fn keep(&mut self, key: JobRef, size: WindowSize) {
        self.0.retain(|(k, _)| *k != key);
        if self.0.len() == EARLY_SIZES {
            self.0.pop_front();
        }
        self.0.push_back((key, size));
    }

    fn take(&mut self, key: &JobRef) -> Option<WindowSize> {
        let i = self.0.iter().position(|(k, _)| k == key)?;
        self.0.remove(i).map(|(_, size)| size)
    }
}

/// How long an aborting agent waits for the hub to acknowledge the results it reported.
const ABORT_ACK_WAIT: Duration = Duration::from_secs(3);

impl Core {
    /// A core ready to [`Core::run`].
    pub fn new(s: CoreSettings, control: watch::Receiver<Control>) -> Self {
        let (events_tx, events_rx) = mpsc::channel(256);
        let slots = vec![false; s.concurrency as usize];
        let backoff = Backoff {
            attempt: 0,
            cap: s.max_backoff,
        };
        Self {
            s,
            jobs: HashMap::new(),
            slots,
            events_tx,
            events_rx,
            control,
            control_open: true,
            draining: false,
            hub_draining: false,
            aborting: false,
            exit_deadline: None,
            heartbeat: Duration::from_secs(10),
            cleanups: JoinSet::new(),
            backoff,
            early_sizes: EarlySizes::default(),
        }
    }

    /// The worker id this core announces.
    pub fn worker_id(&self) -> &str {
        &self.s.worker_id
    }

    /// Runs until drained or aborted.
    pub async fn run(mut self) {
        // The control value may already ask for a drain or abort.
        let initial = *self.control.borrow_and_update();
        self.on_control(initial);
        let mut delay = Duration::ZERO;
        let mut connected_before = false;
        loop {
            if self.done() {
                break;
            }
            match self.connect_phase(delay).await {
                Some(ws) => {
                    if connected_before {
                        metrics::counter!(crate::telemetry::RECONNECTS_TOTAL).increment(1);
                    }
                    connected_before = true;
                    if let Phase::Exit = self.session(ws).await {
                        break;
                    }
                }
                None if self.done() => break,
                None => {}
            }
            delay = self.backoff.next_delay();
            tracing::debug!(?delay, "reconnecting after backoff");
        }
        self.shutdown().await;
    }

    /// True when the agent may return.
    fn done(&self) -> bool {
        if self.aborting {
            let all_ended = self.jobs.values().all(|e| e.task_done);
            let acked_or_late =
                self.jobs.is_empty() || self.exit_deadline.is_some_and(|d| Instant::now() >= d);
            return all_ended && acked_or_late;
        }
        self.draining && self.jobs.is_empty()
    }

    /// Waits `delay` then connects, handling job events and control meanwhile.
    async fn connect_phase(&mut self, delay: Duration) -> Option<Ws> {
        let url = self.s.hubs.current().ws.clone();
        let url_for_log = url.clone();
        let token = self.s.token.clone();
        let id = self.s.worker_id.clone();
        let timeout = self.s.connect_timeout;
        let tls = self.s.tls.clone();
        let connecting = async move {
            tokio::time::sleep(delay).await;
            conn::connect(&url, &tls, &token, &id, timeout).await
        };
        tokio::pin!(connecting);
        loop {
            tokio::select! {
                r = &mut connecting => match r {
                    Ok(ws) => return Some(ws),
                    Err(e) => {
                        tracing::warn!(worker_id = %self.s.worker_id, hub = %url_for_log, error = %e, "cannot connect to the hub");
                        // Several hubs of a cluster: the next one is tried next time.
                        self.s.hubs.advance();
                        return None;
                    }
                },
                Some(ev) = self.events_rx.recv() => {
                    // No socket: everything is kept for the next connection.
                    let _ = self.on_job_event(ev, None).await;
                }
                c = next_control(&mut self.control, self.control_open) => self.control_changed(c),
                () = sleep_opt(self.exit_deadline) => {}
            }
            if self.done() {
                return None;
            }
        }
    }

    /// Runs one connection: hello, welcome, then messages until it breaks or the agent is done.
    async fn session(&mut self, mut ws: Ws) -> Phase {
        let hello = self.hello();
        tracing::info!(worker_id = %self.s.worker_id, held = hello.held.len(), "connected to the hub");
        if let Err(e) = conn::send(&mut ws, &AgentMsg::Hello(hello)).await {
            tracing::warn!(error = %e, "cannot send hello");
            return Phase::Reconnect;
        }
        let welcome_deadline = Instant::now() + self.s.connect_timeout;
        let mut welcomed = false;
        let mut heartbeat = tokio::time::interval(self.heartbeat);
        let mut last_heard = Instant::now();
        loop {
            let step: Result<(), ()> = tokio::select! {
                msg = ws.next() => match msg {
                    Some(Ok(Message::Text(text))) => {
                        last_heard = Instant::now();
                        match conn::parse(&text) {
                            Ok(msg) => {
                                let was = welcomed;
                                let r = self.on_hub_msg(&mut ws, msg, &mut welcomed).await;
                                if welcomed && !was {
                                    heartbeat = tokio::time::interval(self.heartbeat);
                                    heartbeat.reset();
                                }
                                r
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "ignoring a malformed hub message");
                                Ok(())
                            }
                        }
                    }
                    Some(Ok(Message::Close(frame))) => {
                        tracing::info!(?frame, "hub closed the connection");
                        Err(())
                    }
                    Some(Ok(_)) => {
                        last_heard = Instant::now();
                        Ok(())
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "hub connection failed");
                        if let tokio_tungstenite::tungstenite::Error::Capacity(_) = e {
                            // Tell the hub why instead of leaving it a bare reset.
                            let _ = ws
                                .close(Some(CloseFrame {
                                    code: CloseCode::Size,
                                    reason: "message too large".into(),
                                }))
                                .await;
                        }
                        Err(())
                    }
                    None => Err(()),
                },
                Some(ev) = self.events_rx.recv() => {
                    self.on_job_event(ev, welcomed.then_some(&mut ws)).await
                }
                c = next_control(&mut self.control, self.control_open) => {
                    let was_draining = self.draining;
                    self.control_changed(c);
                    if self.draining && !was_draining && welcomed {
                        // Tell the hub now, not at the next heartbeat: it stops assigning here
                        // (and lists the worker as draining) at once.
                        self.send_heartbeat(&mut ws).await
                    } else {
                        Ok(())
                    }
                }
                () = tokio::time::sleep_until(welcome_deadline), if !welcomed => {
                    tracing::warn!("no welcome from the hub in time");
                    Err(())
                }
                _ = heartbeat.tick(), if welcomed => {
                    if last_heard.elapsed() > self.heartbeat * 3 + Duration::from_secs(5) {
                        tracing::warn!("hub silent for too long; reconnecting");
                        Err(())
                    } else {
                        self.send_heartbeat(&mut ws).await
                    }
                }
                () = sleep_opt(self.exit_deadline) => Ok(()),
            };
            if step.is_err() {
                return Phase::Reconnect;
            }
            if self.done() {
                let _ = ws
                    .close(Some(CloseFrame {
                        code: CloseCode::Away,
                        reason: "agent stopping".into(),
                    }))
                    .await;
                return Phase::Exit;
            }
        }
    }

    fn hello(&self) -> Hello {
        let held = self
            .jobs
            .iter()
            .filter(|(_, e)| !e.abandoned)
            .map(|(k, e)| HeldJob {
                job_id: k.job_id.clone(),
                attempt: k.attempt,
                chunks: e.next_seq,
                finished: e.outcome.clone(),
            })
            .collect();
        Hello {
            protocol_version: PROTOCOL_VERSION,
            worker_id: self.s.worker_id.clone(),
            hostname: self.s.host.hostname.clone(),
            os: self.s.host.os.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            cpu_count: self.s.host.cpu_count,
            total_memory_mb: self.s.host.total_memory_mb,
            tags: self.s.tags.clone(),
            concurrency: self.s.concurrency,
            isolation: self.s.isolation.clone(),
            held,
        }
    }

    async fn send_heartbeat(&mut self, ws: &mut Ws) -> Result<(), ()> {
        let running = self
            .jobs
            .iter()
            .filter(|(_, e)| !e.abandoned)
            .map(|(k, _)| k.clone())
            .collect();
        let hb = Heartbeat {
            running,
            free_slots: self.free_slots(),
            draining: self.draining || self.hub_draining,
        };
        send(ws, &AgentMsg::Heartbeat(hb)).await?;
        ws.send(Message::Ping(Vec::new().into()))
            .await
            .map_err(|_| ())
    }

    fn free_slots(&self) -> u32 {
        u32::try_from(self.slots.iter().filter(|used| !**used).count()).unwrap_or(0)
    }

    async fn on_hub_msg(
        &mut self,
        ws: &mut Ws,
        msg: HubMsg,
        welcomed: &mut bool,
    ) -> Result<(), ()> {
        match msg {
            HubMsg::Welcome(w) => {
                if *welcomed {
                    tracing::warn!("ignoring a second welcome");
                    return Ok(());
                }
                *welcomed = true;
                self.on_welcome(ws, w).await
            }
            HubMsg::Assign(a) => self.on_assign(ws, a).await,
            HubMsg::OutputAck(ack) => {
                let key = JobRef {
                    job_id: ack.job_id,
                    attempt: ack.attempt,
                };
                if let Some(e) = self.jobs.get_mut(&key) {
                    release_acked(e, ack.stored_chunks);
                }
                Ok(())
            }
            HubMsg::FinishedAck(key) => {
                match self.jobs.get(&key) {
                    Some(e) if e.outcome.is_some() => {
                        tracing::info!(job_id = %key.job_id, attempt = key.attempt, "result acknowledged");
                        self.forget(&key);
                    }
                    Some(_) => {
                        tracing::warn!(job_id = %key.job_id, "finishedAck for a job still running")
                    }
                    None => {}
                }
                Ok(())
            }
            HubMsg::Cancel(c) => {
                let key = JobRef {
                    job_id: c.job_id,
                    attempt: c.attempt,
                };
                if let Some(e) = self.jobs.get(&key)
                    && !e.task_done
                {
                    let grace = if c.grace_secs == 0 {
                        self.s.cancel_grace
                    } else {
                        Duration::from_secs(c.grace_secs)
                    };
                    tracing::info!(job_id = %key.job_id, attempt = key.attempt, ?grace, "cancel requested");
                    e.ctl.send_replace(JobCtl::Cancel(grace));
                }
                Ok(())
            }
            HubMsg::Resize(r) => {
                let key = JobRef {
                    job_id: r.job_id.clone(),
                    attempt: r.attempt,
                };
                let size = r.size();
                match self.jobs.get(&key) {
                    _ if !size.is_valid() => {
                        tracing::warn!(job_id = %key.job_id, ?size, "ignoring a resize out of range")
                    }
                    Some(e) if !e.task_done && !e.abandoned => {
                        // A job on pipes has no terminal to resize.
                        let changed = e.size.send_if_modified(|now| {
                            let apply = now.is_some_and(|n| n != size);
                            if apply {
                                *now = Some(size);
                            }
                            apply
                        });
                        tracing::debug!(job_id = %key.job_id, attempt = key.attempt, cols = size.cols, rows = size.rows, changed, "resize requested");
                    }
                    Some(_) => {
                        tracing::debug!(job_id = %key.job_id, attempt = key.attempt, "ignoring a resize for an attempt that ended")
                    }
                    None => {
                        // Perhaps ahead of its assignment: kept for it (the newest few).
                        tracing::debug!(job_id = %key.job_id, attempt = key.attempt, "resize before its assignment");
                        self.early_sizes.keep(key, size);
                    }
                }
                Ok(())
            }
            HubMsg::Abandon(a) => {
                let key = JobRef {
                    job_id: a.job_id,
                    attempt: a.attempt,
                };
                tracing::info!(job_id = %key.job_id, attempt = key.attempt, reason = %a.reason, "attempt abandoned by the hub");
                self.abandon(&key);
                Ok(())
            }
            HubMsg::Drain => {
                tracing::info!("hub asked to drain: taking no new jobs");
                self.hub_draining = true;
                Ok(())
            }
            HubMsg::Error(e) => {
                tracing::error!(code = %e.code, message = %e.message, "hub reported a protocol error");
                Err(())
            }
        }
    }

    async fn on_welcome(&mut self, ws: &mut Ws, w: Welcome) -> Result<(), ()> {
        if w.protocol_version != PROTOCOL_VERSION {
            tracing::error!(
                hub = w.protocol_version,
                agent = PROTOCOL_VERSION,
                "protocol version mismatch"
            );
            return Err(());
        }
        self.heartbeat = Duration::from_secs(w.heartbeat_secs.max(1));
        self.backoff.reset();
        // A drain request belonged to the previous hub session.
        self.hub_draining = false;
        tracing::info!(worker_id = %w.worker_id, resume = w.resume.len(), abandon = w.abandon.len(), "welcomed by the hub");
        for key in &w.abandon {
            self.abandon(key);
        }
        let mut resumed = Vec::new();
        for r in w.resume {
            let key = JobRef {
                job_id: r.job_id,
                attempt: r.attempt,
            };
            if !self.jobs.contains_key(&key) {
                continue;
            }
            if r.finished {
                if self.jobs.get(&key).is_some_and(|e| e.task_done) {
                    self.forget(&key);
                } else {
                    tracing::warn!(job_id = %key.job_id, "hub already has a result for a running job: abandoning it");
                    self.abandon(&key);
                }
                continue;
            }
            resumed.push((key, r.stored_chunks));
        }
        // Held jobs the hub did not mention are not its current attempts any more.
        let unmentioned: Vec<JobRef> = self
            .jobs
            .iter()
            .filter(|(k, e)| !e.abandoned && !resumed.iter().any(|(r, _)| r == *k))
            .map(|(k, _)| k.clone())
            .collect();
        for key in unmentioned {
            tracing::warn!(job_id = %key.job_id, attempt = key.attempt, "held job not resumed by the hub: abandoning it");
            self.abandon(&key);
        }
        for (key, stored) in resumed {
            let Some(e) = self.jobs.get_mut(&key) else {
                continue;
            };
            if stored > e.next_seq {
                tracing::warn!(job_id = %key.job_id, stored, produced = e.next_seq, "hub claims more chunks than were produced");
            }
            release_acked(e, stored);
            tracing::info!(job_id = %key.job_id, attempt = key.attempt, stored, resend = e.unacked.len(), "resuming job");
            if let Some(st) = e.started_pending.clone() {
                send(ws, &AgentMsg::Started(st)).await?;
                e.started_pending = None;
            }
            for chunk in &e.unacked {
                send(ws, &AgentMsg::Output(chunk.clone())).await?;
            }
            if let Some(outcome) = &e.outcome {
                let fin = Finished {
                    job_id: key.job_id.clone(),
                    attempt: key.attempt,
                    chunks: e.next_seq,
                    outcome: outcome.clone(),
                };
                send(ws, &AgentMsg::Finished(fin)).await?;
            }
        }
        Ok(())
    }

    async fn on_assign(&mut self, ws: &mut Ws, a: Assignment) -> Result<(), ()> {
        let key = JobRef {
            job_id: a.job_id.clone(),
            attempt: a.attempt,
        };
        if self.jobs.get(&key).is_some_and(|e| !e.abandoned) {
            // A repeated assignment (the hub did not see our accept): confirm, run it once.
            return send(ws, &AgentMsg::Accept(key)).await;
        }
        let reason = if self.aborting || self.draining || self.hub_draining {
            Some("agent is draining")
        } else if self.jobs.contains_key(&key) {
            Some("previous run of this attempt is still being torn down")
        } else {
            None
        };
        let slot = self.slots.iter().position(|used| !*used);
        let (Some(slot), None) = (slot, reason) else {
            let reason = reason.unwrap_or("no free slot").to_owned();
            tracing::info!(job_id = %key.job_id, attempt = key.attempt, %reason, "rejecting assignment");
            return send(
                ws,
                &AgentMsg::Reject(Reject {
                    job_id: key.job_id,
                    attempt: key.attempt,
                    reason,
                }),
            )
            .await;
        };
        self.slots[slot] = true;
        let slot = u32::try_from(slot).expect("slot count fits u32");
        let (ctl_tx, ctl_rx) = watch::channel(JobCtl::Run);
        // A resize that overtook the assignment wins over the size it was made with.
        let early = self.early_sizes.take(&key);
        let (size_tx, size_rx) = watch::channel(a.tty.map(|t| early.unwrap_or(t)));
        let window = Arc::new(Semaphore::new(self.s.output_window as usize));
        self.jobs.insert(
            key.clone(),
            Entry {
                slot,
                ctl: ctl_tx,
                size: size_tx,
                window: window.clone(),
                unacked: VecDeque::new(),
                next_seq: 0,
                started_pending: None,
                outcome: None,
                task_done: false,
                workspace: None,
                abandoned: false,
            },
        );
        tracing::info!(job_id = %key.job_id, attempt = key.attempt, slot, "accepted job");
        job::spawn(
            self.s.job.clone(),
            a,
            slot,
            self.events_tx.clone(),
            window,
            ctl_rx,
            size_rx,
        );
        send(ws, &AgentMsg::Accept(key)).await
    }

    /// Records a job event and forwards it when a welcomed connection is up.
    async fn on_job_event(&mut self, ev: JobEvent, ws: Option<&mut Ws>) -> Result<(), ()> {
        match ev {
            JobEvent::Started { job, isolation } => {
                let Some(e) = self.jobs.get_mut(&job).filter(|e| !e.abandoned) else {
                    return Ok(());
                };
                let msg = Started {
                    job_id: job.job_id.clone(),
                    attempt: job.attempt,
                    isolation,
                };
                e.started_pending = Some(msg.clone());
                if let Some(ws) = ws {
                    send(ws, &AgentMsg::Started(msg)).await?;
                    e.started_pending = None;
                }
                Ok(())
            }
            JobEvent::Output { job, stream, data } => {
                let Some(e) = self.jobs.get_mut(&job).filter(|e| !e.abandoned) else {
                    return Ok(());
                };
                let chunk = OutputChunk {
                    job_id: job.job_id,
                    attempt: job.attempt,
                    seq: e.next_seq,
                    stream,
                    data: data.into(),
                };
                e.next_seq += 1;
                e.unacked.push_back(chunk);
                if let Some(ws) = ws {
                    let chunk = e.unacked.back().expect("just pushed").clone();
                    send(ws, &AgentMsg::Output(chunk)).await?;
                }
                Ok(())
            }
            JobEvent::Done {
                job,
                outcome,
                workspace,
            } => {
                let Some(e) = self.jobs.get_mut(&job) else {
                    // Not held (cannot happen): still clean up.
                    if let Some(ws) = workspace {
                        self.remove_workspace(ws);
                    }
                    return Ok(());
                };
                e.task_done = true;
                e.workspace = workspace;
                if e.abandoned {
                    self.forget(&job);
                    return Ok(());
                }
                tracing::info!(job_id = %job.job_id, attempt = job.attempt, status = ?outcome.status(), failure = ?outcome.failure, "job ended");
                let outcome = *outcome;
                e.outcome = Some(outcome.clone());
                let fin = Finished {
                    job_id: job.job_id.clone(),
                    attempt: job.attempt,
                    chunks: e.next_seq,
                    outcome,
                };
                if self.aborting && self.jobs.values().all(|e| e.task_done) {
                    self.exit_deadline = Some(Instant::now() + ABORT_ACK_WAIT);
                }
                if let Some(ws) = ws {
                    send(ws, &AgentMsg::Finished(fin)).await?;
                }
                Ok(())
            }
        }
    }

    fn control_changed(&mut self, c: Option<Control>) {
        match c {
            Some(c) => self.on_control(c),
            None => self.control_open = false,
        }
    }

    fn on_control(&mut self, c: Control) {
        match c {
            Control::Run => {
                if self.draining && !self.aborting {
                    tracing::info!("resuming normal operation");
                    self.draining = false;
                }
            }
            Control::Drain => {
                if !self.draining {
                    tracing::info!(held = self.jobs.len(), "draining: taking no new jobs");
                }
                self.draining = true;
            }
            Control::Abort => {
                if self.aborting {
                    return;
                }
                tracing::warn!(held = self.jobs.len(), "aborting: terminating running jobs");
                self.aborting = true;
                self.draining = true;
                for e in self.jobs.values() {
                    if !e.task_done {
                        e.ctl.send_replace(JobCtl::Abort(self.s.cancel_grace));
                    }
                }
                if self.jobs.values().all(|e| e.task_done) {
                    self.exit_deadline = Some(Instant::now() + ABORT_ACK_WAIT);
                }
            }
        }
    }

    /// Stops an attempt the hub no longer wants: kill it, drop its output, forget it once its
    /// task ended.
    fn abandon(&mut self, key: &JobRef) {
        let Some(e) = self.jobs.get_mut(key) else {
            return;
        };
        e.abandoned = true;
        e.unacked.clear();
        e.window.close();
        if e.task_done {
            self.forget(key);
        } else {
            e.ctl.send_replace(JobCtl::Kill);
        }
    }

    /// Drops a job whose task ended: frees its slot and removes its workspace.
    fn forget(&mut self, key: &JobRef) {
        let Some(e) = self.jobs.remove(key) else {
            return;
        };
        debug_assert!(e.task_done, "only ended jobs are forgotten");
        e.window.close();
        self.slots[e.slot as usize] = false;
        if let Some(ws) = e.workspace {
            self.remove_workspace(ws);
        }
        if self.aborting && !self.jobs.is_empty() && self.jobs.values().all(|e| e.task_done) {
            self.exit_deadline
                .get_or_insert(Instant::now() + ABORT_ACK_WAIT);
        }
    }

    fn remove_workspace(&mut self, ws: Workspace) {
        self.cleanups.spawn_blocking(move || {
            let dir = ws.dir.clone();
            if let Err(e) = ws.remove() {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot remove a job workspace");
            }
        });
    }

    /// Removes what is left and waits for workspace removals.
    async fn shutdown(&mut self) {
        let keys: Vec<JobRef> = self.jobs.keys().cloned().collect();
        for key in keys {
            if let Some(mut e) = self.jobs.remove(&key) {
                if !e.task_done {
                    // Only reachable when the runtime is shutting down under us; kill anyway.
                    e.ctl.send_replace(JobCtl::Kill);
                }
                if let Some(ws) = e.workspace.take() {
                    self.remove_workspace(ws);
                }
            }
        }
        while self.cleanups.join_next().await.is_some() {}
        tracing::info!(worker_id = %self.s.worker_id, "agent stopped");
    }
}

/// Drops the chunks the hub stored (`seq < stored`) and returns their window permits.
fn release_acked(e: &mut Entry, stored: u64) {
    let mut freed = 0usize;
    while e.unacked.front().is_some_and(|c| c.seq < stored) {
        let c = e.unacked.pop_front().expect("checked");
        freed += c.data.len();
    }
    if freed > 0 && !e.window.is_closed() {
        e.window.add_permits(freed);
    }
}

async fn send(ws: &mut Ws, msg: &AgentMsg) -> Result<(), ()> {
    conn::send(ws, msg).await.map_err(|e| {
        tracing::warn!(error = %e, "cannot send to the hub");
    })
}

/// The next control value; `None` when the sender is gone (then never again).
async fn next_control(rx: &mut watch::Receiver<Control>, open: bool) -> Option<Control> {
    if !open {
        return std::future::pending().await;
    }
    match rx.changed().await {
        Ok(()) => Some(*rx.borrow_and_update()),
        Err(_) => None,
    }
}

async fn sleep_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resize_ahead_of_its_assignment_is_kept_for_it() {
        let job = |id: &str, attempt| JobRef {
            job_id: id.into(),
            attempt,
        };
        let size = |cols| WindowSize { cols, rows: 30 };
        let mut early = EarlySizes::default();
        early.keep(job("a", 1), size(100));
        early.keep(job("a", 1), size(120));
        // The newest size for that attempt, once; not another attempt's.
        assert_eq!(early.take(&job("a", 2)), None);
        assert_eq!(early.take(&job("a", 1)), Some(size(120)));
        assert_eq!(early.take(&job("a", 1)), None);
        // Bounded: the oldest go first.
        for i in 0..=EARLY_SIZES as u32 {
            early.keep(job("b", i), size(90));
        }
        assert_eq!(early.take(&job("b", 0)), None);
        assert_eq!(early.take(&job("b", EARLY_SIZES as u32)), Some(size(90)));
    }

    #[test]
    fn backoff_grows_to_the_cap_with_jitter() {
        let mut b = Backoff {
            attempt: 0,
            cap: Duration::from_secs(5),
        };
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
        for _ in 0..20 {
            let d = b.next_delay();
            assert!(d <= Duration::from_secs(5));
        }
        let late = b.next_delay();
        assert!(late >= Duration::from_millis(2500), "{late:?}");
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
