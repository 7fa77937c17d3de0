//! The cmdx hub: HTTP + WebSocket server, durable job queue, dispatcher, output relay and auth.
//!
//! Entry point: [`run`] (what `cmdx hub` and `cmdx dev` call, and what tests call with a
//! listener on `127.0.0.1:0`). The shared state is [`Hub`]; the store sits behind
//! [`store::Store`], uploaded contents behind [`blobs::Blobs`]; what happens to a job lives in
//! [`jobs`], one module per concern; HTTP routes in `api`; the two WebSocket protocols in
//! `ws_agent` and `ws_client`.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod api;
pub mod artifacts;
pub mod auth;
pub mod backup;
pub mod blobs;
mod cluster;
pub mod config;
pub mod decode;
pub mod dispatch;
pub mod error;
mod hub;
pub mod jobs;
pub mod metrics;
pub mod migrate;
pub mod private;
pub mod queue;
pub mod ratelimit;
pub mod relay;
pub mod store;
pub mod time;
pub mod tls;
pub mod urls;
pub mod web;
pub mod ws;
pub mod ws_agent;
pub mod ws_client;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::net::TcpListener;

pub use api::local_agents_token;
pub use config::HubConfig;
pub use error::HubError;
pub use hub::{Event, Hub, PASSWORD_WAIT};

use crate::auth::Auth;
use crate::blobs::Blobs;
use crate::store::{PgStore, SledStore, Store};

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

/// The peer address of a connection, put in each request's extensions by `accept_loop`.
#[derive(Clone, Copy, Debug)]
pub struct PeerAddr(pub std::net::SocketAddr);

/// Accepts connections until `shutdown`, serving each with hyper (HTTP/1.1 with upgrades) under
/// a header-read timeout (slowloris) and a connection cap, then waits (bounded) for in-flight
/// requests. Upgraded WebSockets are closed by their sessions when `Hub::stop` flips.
///
/// With TLS the handshake runs in the connection's own task, under the same timeout as the
/// headers, with the configuration current when the connection was accepted: a client that
/// never finishes it holds one connection slot until then, never the accept loop.
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
        let watcher = graceful.watcher();
        let acceptor = hub.tls.as_ref().map(|t| t.acceptor());
        hub.tasks.spawn(async move {
            let served = match acceptor {
                None => {
                    let conn =
                        builder.serve_connection_with_upgrades(TokioIo::new(stream), hyper_svc);
                    watcher.watch(conn.into_owned()).await
                }
                Some(acceptor) => {
                    let Some(stream) = tls_handshake(acceptor, stream, peer, header_timeout).await
                    else {
                        return;
                    };
                    let conn =
                        builder.serve_connection_with_upgrades(TokioIo::new(stream), hyper_svc);
                    watcher.watch(conn.into_owned()).await
                }
            };
            if let Err(e) = served {
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

/// What a plain-HTTP request to the TLS port is answered with before the connection closes.
const PLAIN_HTTP_ANSWER: &[u8] = concat!(
    "HTTP/1.1 400 Bad Request\r\n",
    "Content-Type: text/plain\r\n",
    "Connection: close\r\n",
    "Content-Length: 44\r\n",
    "\r\n",
    "this port serves HTTPS: use an https:// URL\n",
)
.as_bytes();

/// Completes the TLS handshake of an accepted connection within `limit`; `None` (the
/// connection closed) when it fails, times out, or the client speaks plain HTTP (answered
/// with a 400 that says to use `https://`).
async fn tls_handshake(
    acceptor: tokio_rustls::TlsAcceptor,
    stream: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    limit: std::time::Duration,
) -> Option<tokio_rustls::server::TlsStream<tokio::net::TcpStream>> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    /// The first byte of a TLS record carrying a handshake message (a ClientHello).
    const TLS_HANDSHAKE_RECORD: u8 = 0x16;
    let handshake = async {
        let mut first = [0u8; 1];
        let mut stream = stream;
        if stream.peek(&mut first).await? == 1 && first[0] != TLS_HANDSHAKE_RECORD {
            stream.write_all(PLAIN_HTTP_ANSWER).await?;
            stream.shutdown().await?;
            // Read what the client sent until it closes (bounded by `limit`): closing with
            // unread bytes would reset the connection, and the answer could be lost with it.
            let mut sink = [0u8; 4096];
            while stream.read(&mut sink).await? > 0 {}
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "plain HTTP on the TLS port",
            ));
        }
        acceptor.accept(stream).await
    };
    match tokio::time::timeout(limit, handshake).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            None
        }
    }
}

/// Opens the hub state without serving (tests and `cmdx dev` use it to mint tokens first).
pub async fn open(config: HubConfig) -> Result<Arc<Hub>, HubError> {
    // First: a certificate that does not load stops the hub before it touches the data.
    let tls = tls::Tls::from_config(&config)?;
    config.check_images()?;
    let data = config.data_dir.clone();
    let data_err = |path: &std::path::Path| {
        let path = path.to_path_buf();
        move |source| HubError::DataDir { path, source }
    };
    private::dir(&data, private::DATA_DIR_MODE).map_err(data_err(&data))?;
    metrics::install();
    let store = open_store(&config).await?;
    let blobs = Blobs::in_data_dir(&data).shared_through(store.clone());
    blobs.prepare().map_err(data_err(&data.join("blobs")))?;
    // Several hubs on one database verify each other's sessions and worker tokens: the keys
    // come from the store (the first hub to start makes them) unless given explicitly.
    let mut shared = [None, None];
    for (slot, (name, given)) in shared.iter_mut().zip([
        (store::SECRET_JWT, &config.jwt_secret),
        (store::SECRET_WORKER, &config.worker_secret),
    ]) {
        if given.is_none() {
            let candidate: [u8; 32] = rand::random();
            *slot = store.shared_secret(name, &candidate).await?;
        }
    }
    let auth = Auth::load_with(&config, shared)?;
    // Sessions signed out before a restart stay signed out.
    let now_s = store::now_ms() / 1000;
    for (sid, exp) in store.revoked_sessions().await? {
        if exp > now_s {
            auth.revoke_session(&sid, exp);
        }
    }
    let hub = Arc::new(Hub::new(config, tls, store, auth, blobs));
    auth::bootstrap_admin(&hub).await?;
    jobs::recovery::recover(&hub).await?;
    Ok(hub)
}

/// The store `config` names: PostgreSQL when `store` is a URL, else sled in `DATA/db`.
async fn open_store(config: &HubConfig) -> Result<Arc<dyn Store>, HubError> {
    if let Some(url) = &config.store {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(HubError::Config(format!(
                "store {}: expected postgres://USER@HOST:PORT/DB (leave it unset for sled in the \
                 data folder)",
                config::redact_url_password(url)
            )));
        }
        let store = PgStore::connect(url, config.store_pool_size).await?;
        tracing::info!(store = %config::redact_url_password(url), "store: PostgreSQL");
        return Ok(Arc::new(store));
    }
    let db = config.data_dir.join("db");
    private::dir(&db, private::DIR_MODE).map_err(|source| HubError::DataDir {
        path: db.clone(),
        source,
    })?;
    let observer: store::FlushObserver = Arc::new(|took, _waiters| {
        ::metrics::histogram!("cmdx_store_flush_seconds").record(took.as_secs_f64());
    });
    Ok(Arc::new(SledStore::open_with(
        &db,
        config.cache_bytes,
        Some(observer),
    )?))
}

/// Serves an opened hub.
pub async fn serve(
    hub: Arc<Hub>,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), HubError> {
    hub.tasks.spawn(jobs::dispatcher::pump(hub.clone()));
    cluster::start(&hub);
    hub.tasks
        .spawn(jobs::liveness::legacy_watchdog(hub.clone()));
    hub.tasks.spawn(jobs::janitor::janitor(hub.clone()));
    let flusher_hub = hub.clone();
    hub.tasks.spawn(async move {
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
    // Timers, watchdogs and sessions still running end here: none outlives `serve`.
    hub.tasks.shutdown().await;
    hub.store.sync().await?;
    tracing::info!("hub stopped");
    Ok(())
}
