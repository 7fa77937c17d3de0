//! A hub on a temp folder for in-process tests of the job rooms: legacy workers registered as
//! `POST /api/workers/register` does (so claims need no sockets), jobs submitted and claimed
//! through the lifecycle functions, and waits that work under a paused clock.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cmdx_proto::JobStatus;
use cmdx_proto::agent::HubMsg;
use cmdx_proto::rest::SubmitRequest;
use tokio::sync::mpsc;

use crate::Hub;
use crate::auth::Caller;
use crate::config::HubConfig;
use crate::store::{JobRecord, WorkerRecord};

/// The credential id the kit's workers claim with.
pub(crate) const TOKEN_ID: &str = "tid-kit";

/// Legacy workers the kit registers.
pub(crate) const WORKERS: [&str; 2] = ["w0", "w1"];

/// An opened hub (not serving) and the folder it lives in.
pub(crate) struct Kit {
    pub(crate) hub: Arc<Hub>,
    /// Receivers of fake agent connections, kept so sends to them succeed.
    conns: Mutex<Vec<mpsc::Receiver<Box<HubMsg>>>>,
    /// When every wait of the test gives up.
    deadline: std::time::Instant,
    _dir: tempfile::TempDir,
}

impl Kit {
    /// Opens a hub with the settings `tune` leaves, and registers [`WORKERS`].
    pub(crate) async fn open(tune: impl FnOnce(&mut HubConfig)) -> Kit {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = HubConfig {
            data_dir: dir.path().join("data"),
            jwt_secret: Some("kit-jwt".into()),
            worker_secret: Some("kit-worker".into()),
            ..HubConfig::default()
        };
        tune(&mut config);
        let hub = crate::open(config).await.expect("open hub");
        for w in WORKERS {
            let rec = worker_record(w);
            hub.store.put_worker(&rec).await.expect("put worker");
            hub.dispatch.legacy_seen(Some(rec), w, TOKEN_ID);
        }
        hub.store.sync().await.expect("sync");
        Kit {
            hub,
            conns: Mutex::new(Vec::new()),
            deadline: std::time::Instant::now() + Duration::from_secs(10),
            _dir: dir,
        }
    }

    /// Submits a job and has `worker` claim it (a legacy claim starts it): the job is running.
    pub(crate) async fn running_job(&self, worker: &str) -> String {
        let req = SubmitRequest {
            command: "true".into(),
            ..SubmitRequest::default()
        };
        let id = super::submit::submit(&self.hub, &owner(), req)
            .await
            .expect("submit");
        let job = super::dispatcher::claim_legacy(&self.hub, worker, TOKEN_ID)
            .await
            .expect("claim")
            .expect("a queued job");
        assert_eq!(
            (job.id.as_str(), job.status),
            (id.as_str(), JobStatus::Running)
        );
        id
    }

    /// The job's owner asks for a cancel.
    pub(crate) async fn cancel(&self, id: &str) -> JobRecord {
        super::lifecycle::cancel(&self.hub, &owner(), id)
            .await
            .expect("cancel")
    }

    /// `worker` connects as an agent (a new connection generation).
    pub(crate) fn reconnect(&self, worker: &str) {
        let (tx, rx) = mpsc::channel(16);
        let kick = tokio_util::sync::CancellationToken::new();
        self.hub
            .dispatch
            .connect(worker_record(worker), TOKEN_ID.into(), tx, kick);
        self.conns.lock().expect("conns").push(rx);
    }

    /// The stored job.
    pub(crate) async fn record(&self, id: &str) -> JobRecord {
        self.hub
            .store
            .get_job(id)
            .await
            .expect("store read")
            .expect("job exists")
    }

    /// The stored job's status.
    pub(crate) async fn status(&self, id: &str) -> JobStatus {
        self.record(id).await.status
    }

    /// Waits until the job reaches `want` (see [`Kit::wait_until`]).
    pub(crate) async fn wait_for_status(&self, id: &str, want: JobStatus) {
        loop {
            let got = self.status(id).await;
            if got == want {
                return;
            }
            self.wait_step(&format!("job {id} stayed {got:?}, expected {want:?}"))
                .await;
        }
    }

    /// Waits until `cond` holds: up to 10 s of real time, since store flushes run on their own
    /// thread, outside the paused clock.
    pub(crate) async fn wait_until(&self, what: &str, cond: impl Fn() -> bool) {
        while !cond() {
            self.wait_step(what).await;
        }
    }

    async fn wait_step(&self, what: &str) {
        assert!(
            std::time::Instant::now() < self.deadline,
            "timed out: {what}"
        );
        settle().await;
        std::thread::sleep(Duration::from_millis(1));
    }

    /// Lets every task woken so far run until it waits again.
    pub(crate) async fn settle(&self) {
        settle().await;
    }

    /// Ends every task of the hub.
    pub(crate) async fn shutdown(&self) {
        self.hub.tasks.shutdown().await;
    }
}

/// Moves the paused clock by `by` (firing the timers due) and lets the woken tasks run.
pub(crate) async fn advance(by: Duration) {
    tokio::time::advance(by).await;
    settle().await;
}

async fn settle() {
    for _ in 0..64 {
        tokio::task::yield_now().await;
    }
}

/// The user every kit job belongs to.
pub(crate) fn owner() -> Caller {
    Caller {
        user_id: "kit-user".into(),
        email: "kit@test.local".into(),
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
        hostname: "kit".into(),
        os: "linux".into(),
        version: "legacy".into(),
        cpu_count: 1,
        total_memory_mb: 1,
        tags: Vec::new(),
        slots: 2,
        isolation_active: Vec::new(),
        isolation_missing: Vec::new(),
        isolation_mode: String::new(),
        token_id: Some(TOKEN_ID.into()),
        last_seen_ms: 0,
    }
}
