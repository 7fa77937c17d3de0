//! The cmdx hub: HTTP + WebSocket server, durable job queue, dispatcher, output relay and auth.
//!
//! Entry point: [`run`] (what `cmdx hub` and `cmdx dev` call, and what tests call with a
//! listener on `127.0.0.1:0`). The shared state is [`Hub`]; the store sits behind
//! [`store::Store`]; job lifecycle operations live in `jobs`; HTTP routes in `api`; the two
//! WebSocket protocols in `ws_agent` and `ws_client`.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod api;
pub mod artifacts;
pub mod auth;
pub mod backup;
pub mod config;
pub mod decode;
pub mod dispatch;
pub mod error;
pub mod jobs;
pub mod metrics;
pub mod private;
pub mod ratelimit;
pub mod relay;
pub mod store;
pub mod time;
pub mod web;
pub mod ws;
pub mod ws_agent;
pub mod ws_client;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use cmdx_proto::client::ServerMsg;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, watch};

pub use config::HubConfig;
pub use error::{ApiError, HubError};

use crate::auth::Auth;
use crate::dispatch::Dispatch;
use crate::ratelimit::RateLimiter;
use crate::relay::Relay;
use crate::store::{SledStore, Store};

/// A live event for dashboards, with who may see it.
#[derive(Clone, Debug)]
pub struct Event {
    /// Owner of the job (`None`: visible to every signed-in user, e.g. workers).
    pub owner: Option<String>,
    /// The message.
    pub msg: Arc<ServerMsg>,
}

/// Shared hub state.
pub struct Hub {
    /// Settings.
    pub config: HubConfig,
    /// Durable state.
    pub store: Arc<dyn Store>,
    /// Keys.
    pub auth: Auth,
    /// Where uploaded file contents live (by sha256).
    pub blob_dir: PathBuf,
    /// Queue index and worker registry.
    pub dispatch: Dispatch,
    /// Output relays.
    pub relay: Relay,
    /// Job and worker events.
    pub events: broadcast::Sender<Event>,
    /// Rate limits per user (per client address when anonymous) and route group.
    pub limiter: RateLimiter,
    /// Permits for argon2 work (each verification holds about 19 MiB for its duration).
    pub password_hashing: tokio::sync::Semaphore,
    /// True while shutting down (`/readyz` answers 503, no new work).
    pub draining: AtomicBool,
    /// Flips to true when the hub stops: sessions close.
    pub stop: watch::Sender<bool>,
    /// Open WebSocket sessions (closed with 1001 on shutdown).
    pub sessions: ws::Sessions,
    /// Counters for `/metrics`.
    pub counters: Counters,
}

/// The longest a sign-in waits for an argon2 permit before it answers 503.
pub const PASSWORD_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Plain counters (Prometheus text is rendered from them).
#[derive(Default)]
pub struct Counters {
    /// Jobs accepted.
    pub submitted: AtomicU64,
    /// Jobs that ended.
    pub finished: AtomicU64,
    /// Output bytes stored.
    pub output_bytes: AtomicU64,
    /// Requests answered 429.
    pub rate_limited: AtomicU64,
}

impl Hub {
    /// Runs argon2 work (hashing or verifying a password) on the blocking pool, at most
    /// `password_hash_concurrency` at once: a login storm from many addresses (each within its
    /// own login budget) costs the hub that many argon2 buffers, not one per request. A call that
    /// waits longer than [`PASSWORD_WAIT`] answers 503 with `Retry-After`.
    pub async fn password_work<T, F>(&self, f: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let permit =
            match tokio::time::timeout(PASSWORD_WAIT, self.password_hashing.acquire()).await {
                Ok(p) => p.map_err(ApiError::internal)?,
                Err(_) => {
                    ::metrics::counter!("cmdx_password_work_refused_total").increment(1);
                    return Err(ApiError {
                        retry_after: Some(2),
                        ..ApiError::unavailable("too many sign-ins at once; retry in a few seconds")
                    });
                }
            };
        let out = tokio::task::spawn_blocking(f)
            .await
            .map_err(ApiError::internal)?;
        drop(permit);
        Ok(out)
    }

    /// Publishes a dashboard event (lossy for slow listeners).
    pub fn emit(&self, owner: Option<String>, msg: ServerMsg) {
        let _ = self.events.send(Event {
            owner,
            msg: Arc::new(msg),
        });
    }
}

/// Opens the data folder, recovers state, bootstraps the admin, and serves on `listener` until
/// `shutdown` resolves. Upgraded WebSockets are closed with 1001 on shutdown.
pub async fn run(
    config: HubConfig,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), HubError> {
    let hub = open(config).await?;
    serve(hub, listener, shutdown).await
}

/// Mints a worker token on behalf of `created_by` (what `POST /api/workers/tokens` does; `cmdx
/// dev` uses it for its local agents).
pub async fn mint_worker_token(
    hub: &Hub,
    created_by: &str,
    name: Option<String>,
    ttl_secs: Option<u64>,
) -> Result<cmdx_proto::rest::MintTokenResponse, ApiError> {
    api::mint_worker_token(hub, created_by, name, ttl_secs).await
}

/// The peer address of a connection, put in each request's extensions by `accept_loop`.
#[derive(Clone, Copy, Debug)]
pub struct PeerAddr(pub std::net::SocketAddr);

/// Accepts connections until `shutdown`, serving each with hyper (HTTP/1.1 with upgrades) under
/// a header-read timeout (slowloris) and a connection cap, then waits (bounded) for in-flight
/// requests. Upgraded WebSockets are closed by their sessions when `Hub::stop` flips.
async fn accept_loop<F>(
    hub: Arc<Hub>,
    listener: TcpListener,
    routes: F,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) where
    F: warp::Filter<Extract = (warp::reply::Response,), Error = warp::Rejection>
        + Clone
        + Send
        + Sync
        + 'static,
{
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    let service = warp::service(routes);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(hub.config.max_connections));
    let header_timeout = std::time::Duration::from_secs(hub.config.header_timeout_secs.max(1));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "connection limit reached; closing");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let svc = service.clone();
        let hyper_svc =
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(PeerAddr(peer));
                let mut svc = svc.clone();
                tower_service::Service::call(&mut svc, req)
            });
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .keep_alive(true);
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), hyper_svc)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(std::time::Duration::from_secs(10), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("in-flight requests still running after 10 s; stopping anyway");
    }
}

/// Opens the hub state without serving (tests and `cmdx dev` use it to mint tokens first).
pub async fn open(config: HubConfig) -> Result<Arc<Hub>, HubError> {
    let data = config.data_dir.clone();
    let blob_dir = data.join("blobs");
    for (dir, mode) in [
        (&data, private::DATA_DIR_MODE),
        (&blob_dir, private::DIR_MODE),
        (&blob_dir.join("tmp"), private::DIR_MODE),
        (&data.join("db"), private::DIR_MODE),
    ] {
        private::dir(dir, mode).map_err(|source| HubError::DataDir {
            path: dir.clone(),
            source,
        })?;
    }
    metrics::install();
    let observer: store::FlushObserver = Arc::new(|took, _waiters| {
        ::metrics::histogram!("cmdx_store_flush_seconds").record(took.as_secs_f64());
    });
    let store: Arc<dyn Store> = Arc::new(SledStore::open_with(
        &data.join("db"),
        config.cache_bytes,
        Some(observer),
    )?);
    let auth = Auth::load(&config)?;
    // Sessions signed out before a restart stay signed out.
    let now_s = store::now_ms() / 1000;
    for (sid, exp) in store.revoked_sessions().await? {
        if exp > now_s {
            auth.revoke_session(&sid, exp);
        }
    }
    let hub = Arc::new(Hub {
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
        config,
        store,
        auth,
        blob_dir,
        dispatch: Dispatch::default(),
        events: broadcast::channel(4096).0,
        draining: AtomicBool::new(false),
        stop: watch::channel(false).0,
        sessions: ws::Sessions::default(),
        counters: Counters::default(),
    });
    jobs::bootstrap_admin(&hub).await?;
    jobs::recover(&hub).await?;
    Ok(hub)
}

/// Serves an opened hub.
pub async fn serve(
    hub: Arc<Hub>,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), HubError> {
    let pump = tokio::spawn(jobs::pump(hub.clone()));
    let watchdog = tokio::spawn(jobs::legacy_watchdog(hub.clone()));
    let janitor = tokio::spawn(jobs::janitor(hub.clone()));
    let flusher_hub = hub.clone();
    let flusher = tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tick.tick().await;
            if let Err(e) = flusher_hub.store.sync().await {
                tracing::error!(error = %e, "periodic store flush failed");
            }
        }
    });
    let routes = api::routes(hub.clone());
    tracing::info!(addr = ?listener.local_addr().ok(), "hub listening");
    let stop_hub = hub.clone();
    let accept = accept_loop(hub.clone(), listener, routes, async move {
        shutdown.await;
        stop_hub.draining.store(true, Ordering::SeqCst);
        tracing::info!(
            secs = stop_hub.config.drain_delay_secs,
            "draining: /readyz answers 503, new work refused"
        );
        tokio::time::sleep(std::time::Duration::from_secs(
            stop_hub.config.drain_delay_secs,
        ))
        .await;
        let _ = stop_hub.stop.send(true);
    });
    accept.await;
    // Give WebSocket sessions a moment to send their close frames.
    hub.sessions
        .wait_idle(std::time::Duration::from_secs(5))
        .await;
    pump.abort();
    janitor.abort();
    watchdog.abort();
    flusher.abort();
    hub.store.sync().await?;
    tracing::info!("hub stopped");
    Ok(())
}
