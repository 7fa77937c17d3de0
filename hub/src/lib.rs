//! The cmdx hub: HTTP + WebSocket server, durable job queue, dispatcher, output relay and auth.
//!
//! Entry point: [`run`] (what `cmdx hub` and `cmdx dev` call, and what tests call with a
//! listener on `127.0.0.1:0`). The shared state is [`Hub`]; the store sits behind
//! [`store::Store`]; job lifecycle operations live in `jobs`; HTTP routes in `api`; the two
//! WebSocket protocols in `ws_agent` and `ws_client`.

#![warn(missing_docs)]

pub mod api;
pub mod auth;
pub mod config;
pub mod dispatch;
pub mod error;
pub mod jobs;
pub mod ratelimit;
pub mod relay;
pub mod store;
pub mod time;
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
    /// Per-IP rate limits.
    pub limiter: RateLimiter,
    /// True while shutting down (`/readyz` answers 503, no new work).
    pub draining: AtomicBool,
    /// Flips to true when the hub stops: sessions close.
    pub stop: watch::Sender<bool>,
    /// Open WebSocket sessions (closed with 1001 on shutdown).
    pub sessions: ws::Sessions,
    /// Counters for `/metrics`.
    pub counters: Counters,
}

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

/// Opens the hub state without serving (tests and `cmdx dev` use it to mint tokens first).
pub async fn open(config: HubConfig) -> Result<Arc<Hub>, HubError> {
    let data = config.data_dir.clone();
    std::fs::create_dir_all(&data).map_err(|source| HubError::DataDir {
        path: data.clone(),
        source,
    })?;
    let blob_dir = data.join("blobs");
    std::fs::create_dir_all(blob_dir.join("tmp")).map_err(|source| HubError::DataDir {
        path: blob_dir.clone(),
        source,
    })?;
    let store: Arc<dyn Store> = Arc::new(SledStore::open(&data.join("db"), config.cache_bytes)?);
    let auth = Auth::load(&config)?;
    let hub = Arc::new(Hub {
        relay: Relay::new(config.output_cap_bytes),
        limiter: RateLimiter::new(config.rate_limit_per_min, config.login_rate_limit_per_min),
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
    let janitor = tokio::spawn(jobs::legacy_watchdog(hub.clone()));
    let routes = api::routes(hub.clone());
    let stop_hub = hub.clone();
    let graceful = async move {
        shutdown.await;
        stop_hub.draining.store(true, Ordering::SeqCst);
        let _ = stop_hub.stop.send(true);
    };
    tracing::info!(addr = ?listener.local_addr().ok(), "hub listening");
    warp::serve(routes)
        .incoming(listener)
        .graceful(graceful)
        .run()
        .await;
    // Give WebSocket sessions a moment to send their close frames.
    hub.sessions
        .wait_idle(std::time::Duration::from_secs(5))
        .await;
    pump.abort();
    janitor.abort();
    hub.store.sync().await?;
    tracing::info!("hub stopped");
    Ok(())
}
