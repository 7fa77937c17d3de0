//! [`Hub`]: the state every request, socket and background task of one hub shares, and
//! [`Tasks`], the owner of every background task it starts.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use cmdx_proto::client::ServerMsg;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Auth;
use crate::blobs::Blobs;
use crate::config::HubConfig;
use crate::dispatch::Dispatch;
use crate::error::PasswordWorkError;
use crate::ratelimit::RateLimiter;
use crate::relay::Relay;
use crate::store::{JobRecord, Store};
use crate::ws;

/// A live event for dashboards, with who may see it.
#[derive(Clone, Debug)]
pub struct Event {
    /// Owner of the job (`None`: visible to every signed-in user, e.g. workers).
    pub owner: Option<String>,
    /// The message.
    pub msg: Arc<ServerMsg>,
}

/// The longest a sign-in waits for an argon2 permit before it answers 503.
pub const PASSWORD_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Shared hub state (one per process, behind an `Arc`).
pub struct Hub {
    /// Settings, fixed for the hub's life.
    pub config: HubConfig,
    /// The TLS server configuration when the hub serves HTTPS itself (reloadable on SIGHUP).
    pub tls: Option<Arc<crate::tls::Tls>>,
    /// Durable state: the only truth about users, jobs, files, workers and tokens; everything
    /// in memory below is rebuilt from it at start.
    pub store: Arc<dyn Store>,
    /// Keys and revocations, to check sessions and worker credentials without the store.
    pub(crate) auth: Auth,
    /// Uploaded file contents by sha256 (records only name them).
    pub(crate) blobs: Blobs,
    /// The fast index over the store: queued jobs per tag set and the worker registry with
    /// slots, so dispatch never scans the store.
    pub dispatch: Dispatch,
    /// Per-job output append state and live fan-out: appenders and subscribers of one job meet
    /// here.
    pub(crate) relay: Relay,
    /// Job and worker events for dashboards (a broadcast: a slow dashboard misses events and
    /// rereads, it never slows the hub).
    pub(crate) events: broadcast::Sender<Event>,
    /// Rate limits per user (per client address when anonymous) and route group.
    pub(crate) limiter: RateLimiter,
    /// Permits for argon2 work: each run holds about 19 MiB for its duration, so a login storm
    /// must not run them all at once.
    password_hashing: tokio::sync::Semaphore,
    /// True while shutting down: `/readyz` answers 503 and no new work is taken.
    pub(crate) draining: AtomicBool,
    /// Flips to true when the hub stops, so WebSocket sessions close with 1001.
    pub(crate) stop: watch::Sender<bool>,
    /// Open WebSocket sessions, counted so shutdown can wait for close frames and sockets are
    /// capped per kind and per user.
    pub(crate) sessions: ws::Sessions,
    /// Every task the hub starts (dispatcher, timers, watchdogs, janitor, connections, sessions
    /// and their feeds): `serve` ends them all before it returns, so none outlives it holding
    /// the hub and the store's lock.
    pub(crate) tasks: Tasks,
    /// What this hub tells the other hubs sharing its store, and hears from them.
    pub(crate) cluster: crate::cluster::Cluster,
}

impl Hub {
    /// Assembles a hub over an opened store; nothing runs yet.
    pub(crate) fn new(
        config: HubConfig,
        tls: Option<Arc<crate::tls::Tls>>,
        store: Arc<dyn Store>,
        auth: Auth,
        blobs: Blobs,
    ) -> Hub {
        Hub {
            tls,
            relay: Relay::new(config.output_cap_bytes),
            password_hashing: tokio::sync::Semaphore::new(
                config.password_hash_concurrency.max(1) as usize
            ),
            limiter: RateLimiter::new(crate::ratelimit::Budgets {
                write_per_min: config.rate_limit_per_min,
                read_per_sec: config.read_rate_limit_per_sec,
                read_burst: config.read_rate_limit_burst,
                login_per_min: config.login_rate_limit_per_min,
            }),
            cluster: crate::cluster::Cluster::new(store.shared()),
            config,
            store,
            auth,
            blobs,
            dispatch: Dispatch::default(),
            events: broadcast::channel(4096).0,
            draining: AtomicBool::new(false),
            stop: watch::channel(false).0,
            sessions: ws::Sessions::default(),
            tasks: Tasks::default(),
        }
    }

    /// Whether the session cookie is marked `Secure`: asked for (a TLS-terminating proxy in
    /// front), or implied by the hub serving TLS itself.
    pub(crate) fn cookie_secure(&self) -> bool {
        self.config.cookie_secure || self.tls.is_some()
    }

    /// Runs argon2 work (hashing or verifying a password) on the blocking pool, at most
    /// `password_hash_concurrency` at once: a login storm from many addresses (each within its
    /// own login budget) costs the hub that many argon2 buffers, not one per request. A call that
    /// waits longer than [`PASSWORD_WAIT`] is refused as busy.
    pub async fn password_work<T, F>(&self, f: F) -> Result<T, PasswordWorkError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let permit =
            match tokio::time::timeout(PASSWORD_WAIT, self.password_hashing.acquire()).await {
                Ok(p) => p.map_err(|e| PasswordWorkError::Failed(e.to_string()))?,
                Err(_) => {
                    ::metrics::counter!("cmdx_password_work_refused_total").increment(1);
                    return Err(PasswordWorkError::Busy);
                }
            };
        let out = tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| PasswordWorkError::Failed(e.to_string()))?;
        drop(permit);
        Ok(out)
    }

    /// Puts `job`, queued under `seq`, in the queue: this hub's dispatch index, and every other
    /// hub's of a cluster.
    pub(crate) fn enqueue(&self, seq: u64, job: &crate::store::JobRecord) {
        let entry = crate::queue::Entry::of(seq, job);
        self.dispatch.enqueue(&job.tags, entry.clone());
        self.cluster.tell(crate::cluster::Note::Queued {
            tags: job.tags.clone(),
            entry,
        });
    }

    /// An admin changed user `u` (quotas, role, password, disabled): applies it here (session
    /// epoch, quotas) and tells the other hubs of a cluster.
    pub(crate) fn user_changed(&self, u: &crate::store::UserRecord) {
        self.apply_user(u);
        self.cluster.tell(crate::cluster::Note::User {
            user_id: u.id.clone(),
        });
    }

    /// User `user_id` was deleted: every session of theirs ends, here and on the other hubs.
    pub(crate) fn user_deleted(&self, user_id: &str) {
        self.forget_user(user_id);
        self.cluster.tell(crate::cluster::Note::User {
            user_id: user_id.to_string(),
        });
    }

    /// Applies every user record as stored (start, a cluster's catch-up): session epochs and the
    /// quotas, the hub's and users' own.
    pub(crate) fn apply_users(&self, users: &[crate::store::UserRecord]) {
        for u in users {
            self.auth.set_epoch(&u.id, u.session_epoch);
        }
        self.dispatch.set_quotas(crate::dispatch::Quotas::new(
            self.config.max_queued_per_user,
            self.config.max_running_per_user,
            users,
        ));
    }

    /// User `user_id` is gone: their sessions end, their own quotas go.
    pub(crate) fn forget_user(&self, user_id: &str) {
        self.auth.set_epoch(user_id, crate::auth::DELETED_EPOCH);
        self.dispatch.set_user_quota(user_id, None, None);
    }

    /// Applies a user record as stored: its session epoch and its own quotas.
    pub(crate) fn apply_user(&self, u: &crate::store::UserRecord) {
        self.auth.set_epoch(&u.id, u.session_epoch);
        self.dispatch
            .set_user_quota(&u.id, u.max_queued, u.max_running);
    }

    /// The job is terminal: its subscribers, here and on every hub of a cluster, send what is
    /// left of its log and end.
    pub(crate) fn end_output(&self, job_id: &str) {
        self.relay.end(job_id);
        self.cluster.tell(crate::cluster::Note::Ended {
            job_id: job_id.to_string(),
        });
    }

    /// Publishes a job's current state to the dashboards that may see it (its owner, admins)
    /// and to its output subscribers, here and, through a note, on every hub of a cluster.
    pub fn publish(&self, job: &JobRecord) {
        self.publish_here(job);
        if self.cluster.is_shared() {
            self.cluster.tell(crate::cluster::Note::Changed {
                job_id: job.id.clone(),
            });
        }
    }

    /// [`Hub::publish`] to this hub's clients only.
    pub(crate) fn publish_here(&self, job: &JobRecord) {
        let msg = ServerMsg::Job(crate::jobs::views::summary(job));
        self.relay
            .job_changed(&job.id, || crate::relay::encode(&msg));
        self.emit(Some(job.owner.clone()), msg);
    }

    /// Whether a client here would hear of a change of `job_id`: a dashboard's job feed, or a
    /// subscriber to its output.
    pub(crate) fn job_watched_here(&self, job_id: &str) -> bool {
        self.events.receiver_count() > 0 || self.relay.is_followed(job_id)
    }

    /// Publishes a dashboard event (lossy for slow listeners).
    pub fn emit(&self, owner: Option<String>, msg: ServerMsg) {
        let _ = self.events.send(Event {
            owner,
            msg: Arc::new(msg),
        });
    }
}

/// The owner of a hub's background tasks: each is spawned here, ends when the hub stops (at
/// its next `.await`), and [`Tasks::shutdown`] returns once every one has ended.
#[derive(Default)]
pub(crate) struct Tasks {
    tracker: TaskTracker,
    stop: CancellationToken,
}

impl Tasks {
    /// Runs `task` until it ends or the hub stops; the handle can abort it sooner.
    pub(crate) fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let stop = self.stop.clone();
        // Boxed: a wrapper future holding the task inline would lay it out twice (an idle
        // WebSocket session is a task, and idle sessions must stay small).
        let task = Box::pin(task);
        self.tracker.spawn(async move {
            stop.run_until_cancelled(task).await;
        })
    }

    /// Stops every task and waits until all have ended (tasks spawned meanwhile included).
    pub(crate) async fn shutdown(&self) {
        self.stop.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}
