//! Property test of the job lifecycle against a reference model (proptest-state-machine).
//!
//! The system under test is an in-process hub (`cmdx_hub::open` on a temp dir) driven through
//! the public lifecycle functions in `cmdx_hub::jobs`, with two legacy-style pull workers
//! (registered like `POST /api/workers/register` does) so claims need no sockets. A legacy
//! claim starts the job at once, so `claim` is assign + start and `start` afterwards is an
//! idempotent report.
//!
//! Transitions: submit, claim (assign), start, output, finish, stale finish (an old or future
//! attempt, or the wrong worker), cancel, loss of one attempt (`requeue_or_fail`, what a
//! disconnect past its grace does), grace expiry of a whole worker (`expire_worker_jobs`), and
//! hub restart (drop the hub and its runtime, `open` again on the same data dir).
//!
//! Invariants checked after every step, for every job ever acknowledged: it still exists (no
//! acknowledged job lost, across restarts), its status and attempt equal the model's, attempts
//! never go backwards, a terminal state is reached at most once and never changes afterwards,
//! and an operation naming a stale attempt is refused and changes nothing.
#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;

use cmdx_hub::auth::Caller;
use cmdx_hub::jobs::lifecycle::{self, FinishReport};
use cmdx_hub::jobs::{dispatcher, liveness, submit};
use cmdx_hub::store::{JobRecord, WorkerRecord};
use cmdx_hub::{Hub, HubConfig};
use cmdx_proto::agent::OutputChunk;
use cmdx_proto::rest::SubmitRequest;
use cmdx_proto::{Bytes64, JobStatus, Outcome, StreamKind};
use proptest::prelude::*;
use proptest_state_machine::{ReferenceStateMachine, StateMachineTest, prop_state_machine};

const WORKERS: [&str; 2] = ["w0", "w1"];
const TOKEN_ID: &str = "tid-model";
const SLOTS: usize = 2;

/// The model's view of one job.
#[derive(Clone, Debug)]
struct JobModel {
    status: JobStatus,
    attempt: u32,
    /// Worker holding the current attempt (index into `WORKERS`), while it is active.
    worker: Option<usize>,
    max_attempts: u32,
    cancel_requested: bool,
    /// Output chunks stored for the current attempt.
    chunks: u64,
}

impl JobModel {
    fn active(&self) -> bool {
        matches!(self.status, JobStatus::Assigned | JobStatus::Running)
    }
}

/// The reference model: jobs and the FIFO queue of queued job indexes.
#[derive(Clone, Debug, Default)]
struct Model {
    jobs: Vec<JobModel>,
    queue: VecDeque<usize>,
}

impl Model {
    fn held_by(&self, w: usize) -> usize {
        self.jobs
            .iter()
            .filter(|j| j.active() && j.worker == Some(w))
            .count()
    }

    fn lose(&mut self, i: usize) {
        let j = &mut self.jobs[i];
        if !j.active() {
            return;
        }
        if j.cancel_requested {
            j.status = JobStatus::Cancelled;
        } else if j.attempt >= j.max_attempts {
            j.status = JobStatus::Failed;
        } else {
            j.status = JobStatus::Queued;
            self.queue.push_back(i);
        }
        j.worker = None;
    }
}

/// How a reported attempt differs from the current one.
#[derive(Clone, Copy, Debug)]
enum Stale {
    /// The previous attempt.
    Older,
    /// An attempt that was never assigned.
    Newer,
    /// The current attempt, reported by the other worker.
    OtherWorker,
}

#[derive(Clone, Debug)]
enum Op {
    Submit {
        max_attempts: u32,
    },
    Claim {
        worker: usize,
    },
    Start {
        job: usize,
    },
    Output {
        job: usize,
        len: usize,
    },
    /// `kind`: 0 exit 0, 1 exit 1, 2 killed by cancel.
    Finish {
        job: usize,
        kind: u8,
    },
    StaleFinish {
        job: usize,
        how: Stale,
    },
    Cancel {
        job: usize,
    },
    /// The current attempt is lost (disconnect past the grace).
    Lose {
        job: usize,
    },
    /// A worker's reconnect grace expired (it holds at most one job, so order is fixed).
    ExpireWorker {
        worker: usize,
    },
    Restart,
}

struct LifecycleModel;

impl ReferenceStateMachine for LifecycleModel {
    type State = Model;
    type Transition = Op;

    fn init_state() -> BoxedStrategy<Model> {
        Just(Model::default()).boxed()
    }

    fn transitions(state: &Model) -> BoxedStrategy<Op> {
        let n = state.jobs.len().max(1);
        let stale = prop_oneof![
            Just(Stale::Older),
            Just(Stale::Newer),
            Just(Stale::OtherWorker)
        ];
        prop_oneof![
            3 => (1u32..=3).prop_map(|max_attempts| Op::Submit { max_attempts }),
            3 => (0..WORKERS.len()).prop_map(|worker| Op::Claim { worker }),
            1 => (0..n).prop_map(|job| Op::Start { job }),
            2 => (0..n, 1usize..64).prop_map(|(job, len)| Op::Output { job, len }),
            2 => (0..n, 0u8..3).prop_map(|(job, kind)| Op::Finish { job, kind }),
            2 => (0..n, stale).prop_map(|(job, how)| Op::StaleFinish { job, how }),
            1 => (0..n).prop_map(|job| Op::Cancel { job }),
            1 => (0..n).prop_map(|job| Op::Lose { job }),
            1 => (0..WORKERS.len()).prop_map(|worker| Op::ExpireWorker { worker }),
            1 => Just(Op::Restart),
        ]
        .boxed()
    }

    fn preconditions(state: &Model, op: &Op) -> bool {
        match op {
            Op::Submit { .. } | Op::Claim { .. } | Op::Restart => true,
            Op::ExpireWorker { worker } => state.held_by(*worker) <= 1,
            Op::Start { job }
            | Op::Output { job, .. }
            | Op::Finish { job, .. }
            | Op::StaleFinish { job, .. }
            | Op::Cancel { job }
            | Op::Lose { job } => *job < state.jobs.len(),
        }
    }

    fn apply(mut state: Model, op: &Op) -> Model {
        match *op {
            Op::Submit { max_attempts } => {
                state.jobs.push(JobModel {
                    status: JobStatus::Queued,
                    attempt: 0,
                    worker: None,
                    max_attempts,
                    cancel_requested: false,
                    chunks: 0,
                });
                state.queue.push_back(state.jobs.len() - 1);
            }
            Op::Claim { worker } => {
                if state.held_by(worker) < SLOTS
                    && let Some(i) = state.queue.pop_front()
                {
                    let j = &mut state.jobs[i];
                    j.status = JobStatus::Running;
                    j.attempt += 1;
                    j.worker = Some(worker);
                    j.chunks = 0;
                }
            }
            Op::Start { .. } | Op::StaleFinish { .. } | Op::Restart => {}
            Op::Output { job, .. } => {
                let j = &mut state.jobs[job];
                if j.active() {
                    j.chunks += 1;
                }
            }
            Op::Finish { job, kind } => {
                let j = &mut state.jobs[job];
                if j.active() {
                    j.status = match kind {
                        0 => JobStatus::Completed,
                        1 => JobStatus::Failed,
                        _ if j.cancel_requested => JobStatus::Cancelled,
                        _ => JobStatus::Failed,
                    };
                    j.worker = None;
                }
            }
            Op::Cancel { job } => {
                let j = &mut state.jobs[job];
                if !j.status.is_terminal() {
                    j.cancel_requested = true;
                }
                if j.status == JobStatus::Queued {
                    j.status = JobStatus::Cancelled;
                    state.queue.retain(|&q| q != job);
                }
            }
            Op::Lose { job } => state.lose(job),
            Op::ExpireWorker { worker } => {
                let held: Vec<usize> = (0..state.jobs.len())
                    .filter(|&i| state.jobs[i].active() && state.jobs[i].worker == Some(worker))
                    .collect();
                for i in held {
                    state.lose(i);
                }
            }
        }
        state
    }
}

/// The real hub, its runtime, and what the checks remember.
struct Sut {
    rt: Option<tokio::runtime::Runtime>,
    hub: Option<Arc<Hub>>,
    dir: tempfile::TempDir,
    ids: Vec<String>,
    /// Highest attempt seen per job.
    max_attempt: Vec<u32>,
    /// The first terminal record seen per job (status, completed time).
    terminal: Vec<Option<(JobStatus, Option<u64>)>>,
}

fn caller() -> Caller {
    Caller {
        user_id: "model-user".into(),
        email: "model@test.local".into(),
        role: "user".into(),
        session_id: String::new(),
        expires_s: u64::MAX,
        epoch: 0,
    }
}

fn worker_record(id: &str) -> WorkerRecord {
    WorkerRecord {
        v: 1,
        id: id.into(),
        kind: "legacy".into(),
        hostname: "model".into(),
        os: "linux".into(),
        version: "legacy".into(),
        cpu_count: 1,
        total_memory_mb: 1,
        tags: Vec::new(),
        slots: SLOTS as u32,
        isolation_active: Vec::new(),
        isolation_missing: Vec::new(),
        isolation_mode: String::new(),
        token_id: Some(TOKEN_ID.into()),
        last_seen_ms: 0,
    }
}

fn config(data: &Path) -> HubConfig {
    HubConfig {
        data_dir: data.to_path_buf(),
        // Timers must never fire during a case: the model has no clock.
        reconnect_grace_secs: 1_000_000,
        cancel_grace_secs: 1_000_000,
        legacy_offline_secs: 1_000_000,
        jwt_secret: Some("model-jwt".into()),
        worker_secret: Some("model-worker".into()),
        ..HubConfig::default()
    }
}

impl Sut {
    fn new() -> Sut {
        let mut sut = Sut {
            rt: None,
            hub: None,
            dir: tempfile::tempdir().expect("tempdir"),
            ids: Vec::new(),
            max_attempt: Vec::new(),
            terminal: Vec::new(),
        };
        sut.boot();
        sut
    }

    /// Opens the hub and registers the workers as a legacy `register` call does.
    fn boot(&mut self) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let data = self.dir.path().join("data");
        let hub = rt
            .block_on(cmdx_hub::open(config(&data)))
            .expect("opening the hub (the previous instance let go of its data)");
        rt.block_on(async {
            for w in WORKERS {
                let rec = worker_record(w);
                hub.store.put_worker(&rec).await.expect("put worker");
                hub.store.sync().await.expect("sync");
                hub.dispatch.legacy_seen(Some(rec), w, TOKEN_ID);
            }
        });
        self.rt = Some(rt);
        self.hub = Some(hub);
    }

    fn restart(&mut self) {
        drop(self.hub.take());
        // Dropping the runtime ends every task still holding the hub (no `serve` ran to end
        // them); the last holder's drop closes the store.
        drop(self.rt.take());
        self.boot();
    }

    fn hub(&self) -> &Arc<Hub> {
        self.hub.as_ref().expect("hub open")
    }

    fn block<T>(&self, f: impl Future<Output = T>) -> T {
        self.rt.as_ref().expect("runtime").block_on(f)
    }

    fn record(&self, i: usize) -> JobRecord {
        let id = &self.ids[i];
        self.block(self.hub().store.get_job(id))
            .expect("store read")
            .unwrap_or_else(|| panic!("acknowledged job {id} is lost"))
    }
}

fn outcome(kind: u8) -> Outcome {
    match kind {
        0 => Outcome {
            exit_code: Some(0),
            ..Outcome::default()
        },
        1 => Outcome {
            exit_code: Some(1),
            ..Outcome::default()
        },
        _ => Outcome {
            signal: Some(15),
            cancelled: true,
            ..Outcome::default()
        },
    }
}

struct LifecycleTest;

impl StateMachineTest for LifecycleTest {
    type SystemUnderTest = Sut;
    type Reference = LifecycleModel;

    fn init_test(_: &Model) -> Sut {
        Sut::new()
    }

    fn apply(mut sut: Sut, model: &Model, op: Op) -> Sut {
        match op {
            Op::Submit { max_attempts } => {
                let req = SubmitRequest {
                    command: "true".into(),
                    file_id: None,
                    file_url: None,
                    timeout: None,
                    tags: Vec::new(),
                    env: Default::default(),
                    max_attempts: Some(max_attempts),
                    artifacts: Vec::new(),
                    tty: None,
                    tty_size: None,
                    priority: None,
                    image: None,
                };
                let id = sut
                    .block(submit::submit(sut.hub(), &caller(), req))
                    .expect("submit");
                sut.ids.push(id);
                sut.max_attempt.push(0);
                sut.terminal.push(None);
            }
            Op::Claim { worker } => {
                let got = sut
                    .block(dispatcher::claim_legacy(
                        sut.hub(),
                        WORKERS[worker],
                        TOKEN_ID,
                    ))
                    .expect("claim");
                // Which job the hub picked is checked against the model's FIFO choice by
                // `check_invariants` (every job's status must match).
                if let Some(g) = got {
                    let i = sut
                        .ids
                        .iter()
                        .position(|id| *id == g.id)
                        .expect("known job");
                    let m = &model.jobs[i];
                    assert!(
                        m.active() && m.worker == Some(worker) && m.attempt == g.attempt,
                        "the hub gave job {i} (attempt {}) to {worker}, the model did not",
                        g.attempt
                    );
                }
            }
            Op::Start { job } => {
                let m = &model.jobs[job];
                let before = sut.record(job);
                let w = WORKERS[m.worker.unwrap_or(0)];
                let res = sut.block(lifecycle::started(
                    sut.hub(),
                    w,
                    TOKEN_ID,
                    &sut.ids[job],
                    m.attempt,
                ));
                assert_eq!(res.is_ok(), m.active(), "start of job {job}: {res:?}");
                assert_eq!(before, sut.record(job), "start of a running job changed it");
            }
            Op::Output { job, len } => {
                let m = &model.jobs[job];
                let before = sut.record(job);
                let w = WORKERS[m.worker.unwrap_or(0)];
                let seq = if m.active() { m.chunks - 1 } else { m.chunks };
                let res = sut.block(async {
                    let chunk = OutputChunk {
                        job_id: sut.ids[job].clone(),
                        attempt: m.attempt,
                        seq,
                        stream: StreamKind::Stdout,
                        data: Bytes64(vec![b'x'; len]),
                    };
                    let r = lifecycle::append_output(sut.hub(), w, TOKEN_ID, vec![chunk]).await;
                    sut.hub().store.sync().await.expect("sync");
                    r
                });
                if m.active() {
                    assert_eq!(res.expect("output of the current attempt"), m.chunks);
                } else {
                    assert!(res.is_err(), "output for an inactive job was accepted");
                    assert_eq!(before, sut.record(job), "refused output changed the job");
                }
            }
            Op::Finish { job, kind } => {
                let m = &model.jobs[job];
                let before = sut.record(job);
                // Who the previous state says held it: the model already ended the attempt.
                let holder = before
                    .worker_id
                    .clone()
                    .unwrap_or_else(|| WORKERS[0].to_string());
                let was_active = matches!(before.status, JobStatus::Assigned | JobStatus::Running);
                let report = FinishReport {
                    attempt: Some(before.attempt),
                    chunks: Some(m.chunks),
                    outcome: outcome(kind),
                };
                let res = sut.block(lifecycle::finish(
                    sut.hub(),
                    &holder,
                    TOKEN_ID,
                    &sut.ids[job],
                    report,
                ));
                if was_active {
                    let rec = res.expect("finish of the current attempt");
                    assert_eq!(rec.status, m.status);
                } else {
                    // Refused, or a repeated report acknowledged again: either way no change.
                    assert_eq!(before, sut.record(job), "finish of an ended job changed it");
                }
            }
            Op::StaleFinish { job, how } => {
                let before = sut.record(job);
                let holder = before
                    .worker_id
                    .clone()
                    .unwrap_or_else(|| WORKERS[0].to_string());
                let (worker, attempt) = match how {
                    Stale::Older => (holder, before.attempt.wrapping_sub(1)),
                    Stale::Newer => (holder, before.attempt + 1),
                    Stale::OtherWorker => {
                        let other = if holder == WORKERS[0] {
                            WORKERS[1]
                        } else {
                            WORKERS[0]
                        };
                        (other.to_string(), before.attempt)
                    }
                };
                let res = sut.block(lifecycle::finish(
                    sut.hub(),
                    &worker,
                    TOKEN_ID,
                    &sut.ids[job],
                    FinishReport {
                        attempt: Some(attempt),
                        chunks: Some(0),
                        outcome: outcome(0),
                    },
                ));
                assert!(
                    res.is_err(),
                    "stale finish ({how:?}) of job {job} was accepted"
                );
                assert_eq!(before, sut.record(job), "a stale finish changed job {job}");
            }
            Op::Cancel { job } => {
                let hub = sut.hub().clone();
                sut.block(lifecycle::cancel(&hub, &caller(), &sut.ids[job]))
                    .expect("cancel");
            }
            Op::Lose { job } => {
                let before = sut.record(job);
                let worker = before
                    .worker_id
                    .clone()
                    .unwrap_or_else(|| WORKERS[0].to_string());
                sut.block(lifecycle::requeue_or_fail(
                    sut.hub(),
                    &sut.ids[job],
                    &worker,
                    before.attempt,
                    "model: attempt lost",
                ))
                .expect("requeue");
                if !matches!(before.status, JobStatus::Assigned | JobStatus::Running) {
                    assert_eq!(before, sut.record(job), "losing an inactive job changed it");
                }
            }
            Op::ExpireWorker { worker } => {
                sut.block(liveness::expire_worker_jobs(
                    sut.hub(),
                    WORKERS[worker],
                    "model: grace expired",
                ));
            }
            Op::Restart => sut.restart(),
        }
        sut.observe();
        sut
    }

    fn check_invariants(sut: &Sut, model: &Model) {
        assert_eq!(sut.ids.len(), model.jobs.len());
        for (i, m) in model.jobs.iter().enumerate() {
            let rec = sut.record(i);
            assert_eq!(rec.status, m.status, "status of job {i}: {rec:?}");
            assert_eq!(rec.attempt, m.attempt, "attempt of job {i}");
            if m.active() {
                assert_eq!(rec.worker_id.as_deref(), m.worker.map(|w| WORKERS[w]));
            }
            assert!(
                rec.attempt <= rec.max_attempts,
                "job {i} ran past maxAttempts"
            );
        }
    }

    fn teardown(mut sut: Sut, _: Model) {
        drop(sut.hub.take());
        drop(sut.rt.take());
    }
}

impl Sut {
    /// Checks that attempts never go backwards and a terminal state never changes, then
    /// remembers the current ones.
    fn observe(&mut self) {
        for i in 0..self.ids.len() {
            let rec = self.record(i);
            assert!(
                rec.attempt >= self.max_attempt[i],
                "attempt of job {i} went backwards"
            );
            if let Some(first) = self.terminal[i] {
                assert_eq!(
                    (rec.status, rec.completed_ms),
                    first,
                    "job {i} left or changed its terminal state"
                );
            }
            self.max_attempt[i] = self.max_attempt[i].max(rec.attempt);
            if rec.status.is_terminal() && self.terminal[i].is_none() {
                self.terminal[i] = Some((rec.status, rec.completed_ms));
            }
        }
    }
}

prop_state_machine! {
    #![proptest_config(ProptestConfig {
        cases: 24,
        max_shrink_iters: 256,
        failure_persistence: None,
        .. ProptestConfig::default()
    })]

    #[test]
    fn job_lifecycle_matches_the_model(sequential 1..40 => LifecycleTest);
}
