//! HTTP routes. One warp filter extracts the request parts ([`Req`]); [`dispatch`] matches
//! `(method, path)` exhaustively and calls one handler per route. Handlers return
//! `ApiResult<Response>`; every error becomes `{"error","code"}` with its status. Bodies are read
//! through [`read_body`] with an explicit limit (chunked bodies without Content-Length included).

mod files;
mod jobs_api;
mod legacy;
mod users;
mod workers;

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;

use bytes::{Buf, Bytes};
use futures_util::{Stream, StreamExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use warp::Filter;
use warp::http::{HeaderMap, Method, StatusCode};
use warp::hyper::upgrade::OnUpgrade;
use warp::reply::Response;

use crate::Hub;
use crate::auth::{self, Caller, WorkerCred};
use crate::error::{ApiError, ApiResult};
use crate::ratelimit::Group;

/// A request body as a stream of bytes.
pub type BodyStream = Pin<Box<dyn Stream<Item = Result<Bytes, warp::Error>> + Send>>;

/// The parts of a request handlers use.
pub struct Req {
    /// Method.
    pub method: Method,
    /// Path.
    pub path: String,
    /// Raw query string.
    pub query: String,
    /// Headers.
    pub headers: HeaderMap,
    /// Peer address.
    pub ip: Option<IpAddr>,
    /// Body (in a mutex only so that `&Req` is `Send` across awaits).
    pub body: std::sync::Mutex<Option<BodyStream>>,
    /// Pending upgrade (WebSocket routes).
    pub upgrade: Option<OnUpgrade>,
}

impl Req {
    /// A query parameter.
    pub fn param(&self, name: &str) -> Option<String> {
        self.query
            .split('&')
            .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| percent_decode(v))
    }

    /// Takes the body.
    pub fn take_body(&mut self) -> BodyStream {
        self.body
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .unwrap_or_else(|| Box::pin(futures_util::stream::empty()))
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match u8::from_str_radix(&s[i + 1..i + 3], 16) {
                Ok(b) => {
                    out.push(b);
                    i += 2;
                }
                Err(_) => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// All routes of the hub.
pub fn routes(
    hub: Arc<Hub>,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone + Send + Sync + 'static {
    let query = warp::query::raw().or(warp::any().map(String::new)).unify();
    warp::method()
        .and(warp::path::full())
        .and(query)
        .and(warp::header::headers_cloned())
        .and(warp::addr::remote())
        .and(warp::body::stream())
        .and(warp::ext::optional::<OnUpgrade>())
        .then(
            move |method: Method,
                  path: warp::path::FullPath,
                  query: String,
                  headers: HeaderMap,
                  addr: Option<std::net::SocketAddr>,
                  body,
                  upgrade: Option<OnUpgrade>| {
                let hub = hub.clone();
                let body: BodyStream = Box::pin(futures_util::StreamExt::map(
                    body,
                    |r: Result<_, warp::Error>| {
                        r.map(|mut b| {
                            let n = Buf::remaining(&b);
                            Buf::copy_to_bytes(&mut b, n)
                        })
                    },
                ));
                let req = Req {
                    method,
                    path: path.as_str().to_string(),
                    query,
                    headers,
                    ip: addr.map(|a| a.ip()),
                    body: std::sync::Mutex::new(Some(body)),
                    upgrade,
                };
                async move {
                    let method = req.method.clone();
                    let path = req.path.clone();
                    let started = std::time::Instant::now();
                    let resp = match dispatch(&hub, req).await {
                        Ok(r) => r,
                        Err(e) => {
                            if e.status == StatusCode::TOO_MANY_REQUESTS {
                                hub.counters
                                    .rate_limited
                                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                            e.into_response()
                        }
                    };
                    tracing::debug!(%method, %path, status = resp.status().as_u16(),
                        ms = started.elapsed().as_millis() as u64, "request");
                    resp
                }
            },
        )
}

async fn dispatch(hub: &Arc<Hub>, req: Req) -> ApiResult<Response> {
    let path = req.path.trim_end_matches('/').to_string();
    let segs: Vec<&str> = path.split('/').skip(1).collect();
    let m = req.method.clone();
    use Method as M;
    match (&m, segs.as_slice()) {
        (&M::GET, ["healthz"]) => Ok(json(&serde_json::json!({"status": "ok"}))),
        (&M::GET, ["readyz"]) => readyz(hub).await,
        (&M::GET, ["ws", "agent"]) => workers::agent_socket(hub, req).await,
        (&M::GET, ["ws", "client"]) => users::client_socket(hub, req).await,
        // auth and users
        (&M::POST, ["api", "auth", "login"]) => users::login(hub, req).await,
        (&M::POST, ["api", "auth", "logout"]) => users::logout(hub, req).await,
        (&M::GET, ["api", "auth", "me"]) => users::me(hub, req).await,
        (&M::POST, ["api", "auth", "register"]) => users::register(hub, req).await,
        (&M::GET, ["api", "users", "list"]) => users::list(hub, req).await,
        // files
        (&M::POST, ["api", "files", "upload"]) => files::upload(hub, req).await,
        (&M::GET, ["api", "files", "download", id]) => {
            let id = id.to_string();
            files::download(hub, req, &id).await
        }
        (&M::GET, ["api", "files", "list"]) => files::list(hub, req).await,
        // jobs
        (&M::POST, ["api", "jobs", "submit"]) => jobs_api::submit(hub, req).await,
        (&M::GET, ["api", "jobs", "status"]) => jobs_api::status(hub, req).await,
        (&M::GET, ["api", "jobs", "list"]) => jobs_api::list(hub, req).await,
        (&M::POST, ["api", "jobs", "cancel"]) => jobs_api::cancel(hub, req).await,
        // legacy worker and submitter routes
        (&M::GET, ["api", "jobs", "get-job"]) => legacy::get_job(hub, req).await,
        (&M::POST, ["api", "jobs", "stream-output"]) => legacy::stream_output(hub, req).await,
        (&M::GET, ["api", "jobs", "check-cancel"]) => legacy::check_cancel(hub, req).await,
        (&M::POST, ["api", "jobs", "submit-result"]) => legacy::submit_result(hub, req).await,
        (&M::PUT, ["api", "jobs", "submit-result"]) => legacy::submit_error(hub, req).await,
        (&M::POST, ["api", "jobs", "create"]) => legacy::create(hub, req).await,
        (&M::POST, ["api", "execute"]) => legacy::execute(hub, req).await,
        (&M::GET, ["api", "jobs", id, "output"]) => {
            let id = id.to_string();
            jobs_api::output(hub, req, &id).await
        }
        // workers
        (&M::POST, ["api", "workers", "register"]) => legacy::register(hub, req).await,
        (&M::POST, ["api", "workers", "heartbeat"]) => legacy::heartbeat(hub, req).await,
        (&M::GET, ["api", "workers", "list"]) => workers::list(hub, req).await,
        (&M::POST, ["api", "workers", "tokens"]) => workers::mint_token(hub, req).await,
        (&M::POST, ["api", "workers", id, "drain"]) => {
            let id = id.to_string();
            workers::drain(hub, req, &id).await
        }
        (&M::DELETE, ["api", "workers", id]) => {
            let id = id.to_string();
            workers::delete(hub, req, &id).await
        }
        _ => {
            let known = KNOWN_PATHS.iter().any(|p| path_matches(p, &segs));
            if known {
                Err(ApiError::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    format!("{m} is not allowed on {path}"),
                ))
            } else {
                Err(ApiError::not_found(format!("no route for {path}")))
            }
        }
    }
}

/// Mints a worker token (see [`crate::mint_worker_token`]).
pub async fn mint_worker_token(
    hub: &Hub,
    created_by: &str,
    name: Option<String>,
    ttl_secs: Option<u64>,
) -> ApiResult<cmdx_proto::rest::MintTokenResponse> {
    workers::mint(hub, created_by, name, ttl_secs).await
}

/// Route patterns (`*` matches one segment), for telling 405 from 404.
const KNOWN_PATHS: &[&str] = &[
    "/healthz",
    "/readyz",
    "/ws/agent",
    "/ws/client",
    "/api/auth/login",
    "/api/auth/logout",
    "/api/auth/me",
    "/api/auth/register",
    "/api/users/list",
    "/api/files/upload",
    "/api/files/download/*",
    "/api/files/list",
    "/api/jobs/submit",
    "/api/jobs/status",
    "/api/jobs/list",
    "/api/jobs/cancel",
    "/api/jobs/get-job",
    "/api/jobs/stream-output",
    "/api/jobs/check-cancel",
    "/api/jobs/submit-result",
    "/api/jobs/create",
    "/api/execute",
    "/api/jobs/*/output",
    "/api/workers/register",
    "/api/workers/heartbeat",
    "/api/workers/list",
    "/api/workers/tokens",
    "/api/workers/*/drain",
    "/api/workers/*",
];

fn path_matches(pattern: &str, segs: &[&str]) -> bool {
    let p: Vec<&str> = pattern.split('/').skip(1).collect();
    p.len() == segs.len() && p.iter().zip(segs).all(|(a, b)| *a == "*" || a == b)
}

async fn readyz(hub: &Hub) -> ApiResult<Response> {
    if hub.draining.load(std::sync::atomic::Ordering::SeqCst) {
        return Err(ApiError::unavailable("draining"));
    }
    hub.store.job_count().await?;
    Ok(json(&serde_json::json!({"status": "ready"})))
}

/// A JSON 200 response.
pub fn json<T: Serialize>(v: &T) -> Response {
    warp::reply::Reply::into_response(warp::reply::json(v))
}

/// A JSON response with a status.
pub fn json_status<T: Serialize>(v: &T, status: StatusCode) -> Response {
    warp::reply::Reply::into_response(warp::reply::with_status(warp::reply::json(v), status))
}

/// Reads a whole body, refusing more than `limit` bytes (413). Works without Content-Length.
pub async fn read_body(req: &mut Req, limit: u64) -> ApiResult<Bytes> {
    if let Some(len) = req
        .headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > limit
    {
        return Err(ApiError::too_large(format!(
            "request body of {len} bytes exceeds the limit of {limit} bytes"
        )));
    }
    let mut body = req.take_body();
    let mut buf = bytes::BytesMut::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request(format!("reading body: {e}")))?;
        if buf.len() as u64 + chunk.len() as u64 > limit {
            return Err(ApiError::too_large(format!(
                "request body exceeds the limit of {limit} bytes"
            )));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// Reads and parses a JSON body.
pub async fn read_json<T: DeserializeOwned>(req: &mut Req, limit: u64) -> ApiResult<T> {
    let body = read_body(req, limit).await?;
    if body.is_empty() {
        return Err(ApiError::bad_request("expected a JSON body"));
    }
    serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("invalid json: {e}")))
}

/// The signed-in user (bearer token or session cookie), after the per-IP rate limit.
pub fn user(hub: &Hub, req: &Req) -> ApiResult<Caller> {
    hub.limiter.check(req.ip, Group::Api)?;
    let token = auth::bearer(&req.headers)
        .or_else(|| auth::cookie(&req.headers, auth::COOKIE))
        .ok_or_else(|| {
            ApiError::unauthorized("sign in first (missing bearer token or session cookie)")
        })?;
    hub.auth.verify_session(token)
}

/// An admin, or 403.
pub fn admin(hub: &Hub, req: &Req) -> ApiResult<Caller> {
    let c = user(hub, req)?;
    if !c.is_admin() {
        return Err(ApiError::forbidden("admin only"));
    }
    Ok(c)
}

/// A worker credential: a minted worker token (not revoked), a legacy worker JWT, or an
/// allowed CIDR. User session tokens are refused (403).
pub async fn worker(hub: &Hub, req: &Req) -> ApiResult<WorkerCred> {
    let token = req
        .headers
        .get(cmdx_proto::WORKER_TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .or_else(|| auth::bearer(&req.headers));
    match token {
        Some(t) if t.starts_with(auth::WORKER_TOKEN_PREFIX) => {
            let tid = hub.auth.verify_worker_token(t)?;
            if hub.store.get_worker_token(&tid).await?.is_none() {
                return Err(ApiError::unauthorized("worker token revoked"));
            }
            Ok(WorkerCred::Token(tid))
        }
        Some(t) => match hub.auth.verify_legacy_jwt(t) {
            Ok(w) => Ok(WorkerCred::LegacyJwt(w)),
            Err(e) => {
                if hub.auth.verify_session(t).is_ok() {
                    Err(ApiError::forbidden("user tokens cannot act as workers"))
                } else if hub.auth.open_cidr_allows(req.ip) {
                    Ok(WorkerCred::OpenCidr)
                } else {
                    Err(e)
                }
            }
        },
        None if hub.auth.open_cidr_allows(req.ip) => Ok(WorkerCred::OpenCidr),
        None => Err(ApiError::unauthorized("worker token required")),
    }
}

/// Checks the `Origin` of a browser WebSocket: absent (non-browser clients), the hub's own
/// host, or a configured origin.
pub fn origin_allowed(hub: &Hub, headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get("origin").and_then(|v| v.to_str().ok()) else {
        return true;
    };
    if hub.config.allowed_origins.iter().any(|o| o == origin) {
        return true;
    }
    let host = headers
        .get("host")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let bare = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .unwrap_or("");
    !host.is_empty() && bare == host
}
