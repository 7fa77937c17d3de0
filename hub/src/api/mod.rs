//! HTTP routes. One warp filter extracts the request parts ([`Req`]); `dispatch` resolves
//! `(method, path)` against the route table (`routes`) and calls the row's handler. Handlers return
//! `ApiResult<Response>`; every error becomes `{"error","code"}` with its status. Bodies are read
//! through [`read_body`] with an explicit limit (chunked bodies without Content-Length included).

mod artifacts;
mod files;
mod jobs_api;
mod legacy;
mod linger;
mod routes;
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
use crate::ratelimit::{Group, Principal, Verdict};

pub use workers::local_agents_token;

/// A request body as a stream of bytes; a body that pauses longer than the idle timeout ends
/// with a `TimedOut` error (trickled bodies must not hold a connection forever).
pub type BodyStream = Pin<Box<dyn Stream<Item = Result<Bytes, std::io::Error>> + Send>>;

fn with_idle_timeout<S>(body: S, idle: std::time::Duration) -> BodyStream
where
    S: Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
{
    let body = Box::pin(body);
    Box::pin(futures_util::stream::unfold(
        Some(body),
        move |state| async move {
            let mut body = state?;
            match tokio::time::timeout(idle, body.next()).await {
                Ok(Some(item)) => Some((item, Some(body))),
                Ok(None) => None,
                Err(_) => Some((
                    Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("request body stalled for more than {} s", idle.as_secs()),
                    )),
                    None,
                )),
            }
        },
    ))
}

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
    /// Client address (the peer, or the forwarded client behind a trusted proxy).
    pub ip: Option<IpAddr>,
    /// The TCP peer.
    pub peer: Option<IpAddr>,
    /// Body (in a mutex only so that `&Req` is `Send` across awaits).
    pub body: std::sync::Mutex<Option<BodyStream>>,
    /// Pending upgrade (WebSocket routes).
    pub upgrade: Option<OnUpgrade>,
    /// Seconds allowed to receive a whole JSON body.
    pub body_deadline_secs: u64,
    /// The rate limiter's verdict on this call (its `RateLimit` headers go on the response).
    pub rate: Arc<std::sync::Mutex<Option<Verdict>>>,
}

impl Req {
    /// A query parameter.
    pub fn param(&self, name: &str) -> Option<String> {
        crate::decode::query_param(&self.query, name)
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

/// All routes of the hub.
pub fn routes(
    hub: Arc<Hub>,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone + Send + Sync + 'static {
    let query = warp::query::raw().or(warp::any().map(String::new)).unify();
    warp::method()
        .and(warp::path::full())
        .and(query)
        .and(warp::header::headers_cloned())
        .and(warp::ext::optional::<crate::PeerAddr>())
        .and(warp::body::stream())
        .and(warp::ext::optional::<OnUpgrade>())
        .then(
            move |method: Method,
                  path: warp::path::FullPath,
                  query: String,
                  headers: HeaderMap,
                  addr: Option<crate::PeerAddr>,
                  body,
                  upgrade: Option<OnUpgrade>| {
                let hub = hub.clone();
                let body = with_idle_timeout(
                    futures_util::StreamExt::map(body, |r: Result<_, warp::Error>| {
                        r.map(|mut b| {
                            let n = Buf::remaining(&b);
                            Buf::copy_to_bytes(&mut b, n)
                        })
                        .map_err(std::io::Error::other)
                    }),
                    std::time::Duration::from_secs(hub.config.body_idle_timeout_secs.max(1)),
                );
                let body = linger::Lingering::wrap(hub.clone(), &headers, body);
                let peer = addr.map(|a| a.0.ip());
                let ip = hub.auth.client_ip(peer, &headers);
                let rate = Arc::new(std::sync::Mutex::new(None));
                let req = Req {
                    method,
                    path: path.as_str().to_string(),
                    query,
                    headers,
                    ip,
                    peer,
                    body: std::sync::Mutex::new(Some(body)),
                    upgrade,
                    body_deadline_secs: hub.config.body_total_timeout_secs,
                    rate: rate.clone(),
                };
                async move {
                    let method = req.method.clone();
                    let path = req.path.clone();
                    let started = std::time::Instant::now();
                    let mut resp = match dispatch(&hub, req).await {
                        Ok(r) => r,
                        Err(e) => e.into_response(),
                    };
                    let verdict = *rate.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some(v) = verdict {
                        v.write_headers(resp.headers_mut());
                    }
                    metrics::counter!(
                        "cmdx_http_requests_total",
                        "route" => routes::label(&path),
                        "status" => resp.status().as_str().to_string(),
                    )
                    .increment(1);
                    tracing::debug!(%method, %path, status = resp.status().as_u16(),
                        ms = started.elapsed().as_millis() as u64, "request");
                    resp
                }
            },
        )
}

async fn dispatch(hub: &Arc<Hub>, req: Req) -> ApiResult<Response> {
    cookie_write_guard(hub, &req)?;
    let path = req.path.trim_end_matches('/').to_string();
    let segs: Vec<&str> = path.split('/').skip(1).collect();
    // HEAD is GET without a body (hyper drops it); load balancers probe /healthz with it.
    let m = if req.method == Method::HEAD {
        Method::GET
    } else {
        req.method.clone()
    };
    let allowed = match routes::resolve(&m, &segs) {
        routes::Resolved::Route(route, params) => return (route.handler)(hub, req, params).await,
        routes::Resolved::OtherMethods(allowed) => allowed,
        routes::Resolved::NoRoute => Vec::new(),
    };
    if m == Method::GET && segs.is_empty() {
        return crate::web::serve("/").ok_or_else(|| ApiError::not_found("no dashboard"));
    }
    if m == Method::GET && segs.first().is_some_and(|s| *s != "api" && *s != "ws") {
        return crate::web::serve(&path)
            .ok_or_else(|| ApiError::not_found(format!("no file {path}")));
    }
    if allowed.is_empty() {
        return Err(ApiError::not_found(format!("no route for {path}")));
    }
    let mut resp = ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{m} is not allowed on {path}"),
    )
    .into_response();
    if let Ok(v) = warp::http::HeaderValue::from_str(&routes::allow_header(&allowed)) {
        resp.headers_mut().insert(warp::http::header::ALLOW, v);
    }
    Ok(resp)
}

/// `GET /healthz`: the process answers.
async fn healthz(_hub: &Arc<Hub>, _req: Req) -> ApiResult<Response> {
    Ok(json(&serde_json::json!({"status": "ok"})))
}

/// `GET /metrics`: Prometheus text (see `crate::metrics`).
async fn metrics(hub: &Arc<Hub>, _req: Req) -> ApiResult<Response> {
    let text = crate::metrics::render(hub).await;
    let mut resp = Response::new(text.into());
    resp.headers_mut().insert(
        "content-type",
        warp::http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(resp)
}

/// `GET /api/admin/backup` (admins).
async fn backup(hub: &Arc<Hub>, req: Req) -> ApiResult<Response> {
    admin(hub, &req).await?;
    backup_response(hub).await
}

/// `POST /api/admin/janitor` (admins): one janitor pass now.
async fn janitor(hub: &Arc<Hub>, req: Req) -> ApiResult<Response> {
    admin(hub, &req).await?;
    Ok(json(&crate::jobs::janitor::janitor_pass(hub).await?))
}

/// `GET /api/admin/backup`: a tar archive of the store, blobs and secrets (see `backup`).
async fn backup_response(hub: &Hub) -> ApiResult<Response> {
    let path = crate::backup::write_backup(hub).await?;
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(ApiError::internal)?;
    let len = file.metadata().await.map(|m| m.len()).ok();
    // The file is unlinked now; the open handle keeps it readable until the stream ends.
    let _ = tokio::fs::remove_file(&path).await;
    let stream = tokio_util::io::ReaderStream::new(file);
    let mut resp = warp::reply::Reply::into_response(warp::reply::stream(stream));
    let h = resp.headers_mut();
    h.insert(
        "content-type",
        warp::http::HeaderValue::from_static("application/x-tar"),
    );
    h.insert(
        "content-disposition",
        warp::http::HeaderValue::from_static("attachment; filename=\"cmdx-backup.tar\""),
    );
    if let Some(len) = len
        && let Ok(v) = warp::http::HeaderValue::from_str(&len.to_string())
    {
        h.insert("content-length", v);
    }
    Ok(resp)
}

/// `GET /api/openapi.json`: the OpenAPI 3.1 document of every route (`hub/openapi.json`, kept
/// in step with the route table by the tests below).
async fn openapi(_hub: &Arc<Hub>, _req: Req) -> ApiResult<Response> {
    Ok(openapi_response())
}

/// The OpenAPI document as a JSON response.
fn openapi_response() -> Response {
    let mut resp = Response::new(OPENAPI.into());
    resp.headers_mut().insert(
        "content-type",
        warp::http::HeaderValue::from_static("application/json"),
    );
    resp
}

/// The OpenAPI document, embedded at build time.
const OPENAPI: &str = include_str!("../../openapi.json");

/// `GET /readyz`: 503 while draining or when the store does not answer.
async fn readyz(hub: &Arc<Hub>, _req: Req) -> ApiResult<Response> {
    if hub.draining.load(std::sync::atomic::Ordering::SeqCst) {
        return Err(ApiError::unavailable("draining"));
    }
    hub.store
        .ping()
        .await
        .map_err(|e| ApiError::unavailable(format!("store unavailable: {e}")))?;
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
    let total = std::time::Duration::from_secs(req.body_deadline_secs.max(1));
    let read = async {
        let mut buf = bytes::BytesMut::new();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| {
                if e.kind() == std::io::ErrorKind::TimedOut {
                    ApiError::too_slow(e.to_string())
                } else {
                    ApiError::bad_request(format!("reading body: {e}"))
                }
            })?;
            if buf.len() as u64 + chunk.len() as u64 > limit {
                return Err(ApiError::too_large(format!(
                    "request body exceeds the limit of {limit} bytes"
                )));
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf.freeze())
    };
    match tokio::time::timeout(total, read).await {
        Ok(r) => r,
        Err(_) => Err(ApiError::too_slow(format!(
            "request body not received within {} s",
            total.as_secs()
        ))),
    }
}

/// Reads and parses a JSON body.
pub async fn read_json<T: DeserializeOwned>(req: &mut Req, limit: u64) -> ApiResult<T> {
    let body = read_body(req, limit).await?;
    if body.is_empty() {
        return Err(ApiError::bad_request("expected a JSON body"));
    }
    serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("invalid json: {e}")))
}

/// The signed-in user (bearer token or session cookie), charged one call of the route's group
/// ([`Group::of`]): to the user, or to the client address when no session verifies (so a flood of
/// bad tokens is throttled too, and still answers 401 while within budget).
pub fn user(hub: &Hub, req: &Req) -> ApiResult<Caller> {
    let group = Group::of(&req.method, &req.path);
    let verified = auth::bearer(&req.headers)
        .or_else(|| auth::cookie(&req.headers, auth::COOKIE))
        .ok_or_else(|| {
            ApiError::unauthorized("sign in first (missing bearer token or session cookie)")
        })
        .and_then(|token| hub.auth.verify_session(token).map_err(ApiError::from));
    match verified {
        Ok(caller) => {
            charge(hub, req, Principal::User(caller.user_id.clone()), group)?;
            Ok(caller)
        }
        Err(e) => {
            if let Some(ip) = req.ip {
                charge(hub, req, Principal::Addr(ip), group)?;
            }
            Err(e)
        }
    }
}

/// Charges one call of `group` to `who`, keeping the verdict for the response headers.
pub fn charge(hub: &Hub, req: &Req, who: Principal, group: Group) -> ApiResult<()> {
    let (verdict, result) = match hub.limiter.check(&who, group) {
        Ok(v) => (v, Ok(())),
        Err(refused) => (
            Some(refused.verdict),
            Err(ApiError::rate_limited(refused.retry_after)),
        ),
    };
    *req.rate.lock().unwrap_or_else(|p| p.into_inner()) = verdict;
    result
}

/// An admin, or 403. The role in a session token is the role at sign-in: admin routes check
/// the account as it is now (a demoted or deleted admin's token stops working here at once).
pub async fn admin(hub: &Hub, req: &Req) -> ApiResult<Caller> {
    let c = user(hub, req)?;
    if !c.is_admin() {
        return Err(ApiError::forbidden("admin only"));
    }
    match hub.store.get_user(&c.user_id).await? {
        Some(u) if u.role == "admin" => Ok(c),
        Some(_) => Err(ApiError::forbidden(
            "admin only (the account is no longer an admin)",
        )),
        None => Err(ApiError::unauthorized("the account no longer exists")),
    }
}

/// The worker id a worker request speaks for: the `x-worker-id` header or the `workerId` query
/// parameter; a legacy JWT's subject when neither is given. `None` when none is named, or when
/// the named id is not one the credential may speak for (a JWT names exactly one worker).
pub fn worker_id(req: &Req, cred: &WorkerCred) -> Option<String> {
    let named = req
        .headers
        .get("x-worker-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.param("workerId"));
    match (named, cred) {
        (None, WorkerCred::LegacyJwt(w)) => Some(w.clone()),
        (Some(w), cred) if cred.speaks_for(&w) => Some(w),
        _ => None,
    }
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
                    Err(e.into())
                }
            }
        },
        None if hub.auth.open_cidr_allows(req.ip) => Ok(WorkerCred::OpenCidr),
        None => Err(ApiError::unauthorized("worker token required")),
    }
}

/// Cookie-authenticated writes come from the hub's own pages only. A browser attaches the
/// session cookie to any request a page sends, whichever site the page is on (`SameSite=Strict`
/// stops that on current browsers, not on every browser or proxy setup); a cross-site form
/// or `fetch` in `no-cors` mode may post `text/plain` and read nothing back, which is all a forged
/// submission needs. So a state change authenticated by the cookie must: (1) come from the same
/// origin (`Sec-Fetch-Site: same-origin`, or an `Origin` that is the hub's own or a configured
/// one; a request with neither is refused: browsers always send one on writes), and (2) carry
/// JSON, multipart or a ZIP (types a cross-site page cannot send without a CORS preflight, which
/// the hub never grants), or no body at all. Bearer-token clients (CLI, scripts, workers) are
/// not affected: a page cannot make a browser attach a bearer token.
fn cookie_write_guard(hub: &Hub, req: &Req) -> ApiResult<()> {
    if matches!(req.method, Method::GET | Method::HEAD | Method::OPTIONS)
        || auth::bearer(&req.headers).is_some()
        || req.headers.contains_key(cmdx_proto::WORKER_TOKEN_HEADER)
        || auth::cookie(&req.headers, auth::COOKIE).is_none()
    {
        return Ok(());
    }
    let header = |name: &str| req.headers.get(name).and_then(|v| v.to_str().ok());
    let site = header("sec-fetch-site");
    if let Some(site) = site
        && site != "same-origin"
        && site != "none"
    {
        return Err(ApiError::forbidden(format!(
            "cross-site request refused (Sec-Fetch-Site: {site}): a signed-in browser may change \
             state only from the hub's own pages"
        )));
    }
    match header("origin") {
        Some(origin) if !origin_allowed(hub, &req.headers) => {
            return Err(ApiError::forbidden(format!(
                "request from origin {origin} refused: a signed-in browser may change state only \
                 from the hub's own pages (or an origin in allowed_origins)"
            )));
        }
        None if site.is_none() => {
            return Err(ApiError::forbidden(
                "cookie-authenticated writes need an Origin header; scripts should send a bearer \
                 token instead of the session cookie",
            ));
        }
        _ => {}
    }
    let has_body = header("content-length").is_some_and(|l| l.trim() != "0")
        || req.headers.contains_key("transfer-encoding");
    let media = header("content-type")
        .and_then(|t| t.split(';').next())
        .map(|t| t.trim().to_ascii_lowercase());
    match media.as_deref() {
        Some("application/json" | "multipart/form-data" | "application/zip") => Ok(()),
        None if !has_body => Ok(()),
        other => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "a signed-in browser must send JSON, multipart or a ZIP, not {}",
                other.unwrap_or("a body without Content-Type")
            ),
        )),
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

#[cfg(test)]
mod tests {
    //! The OpenAPI document (`hub/openapi.json`) against the router, two ways: the rows of the
    //! route table ([`routes::ROUTES`]), and what a real hub answers for every routed path and
    //! method (including the `Allow` header of a 405). Plus the document's own consistency: every `$ref` resolves, every operation has
    //! an id, a 2xx (or 101) response and its path parameters, every error response is
    //! `ErrorBody`, and every 429 carries `Retry-After`.

    use std::collections::BTreeSet;

    use serde_json::Value;

    use super::*;

    const METHODS: [&str; 5] = ["GET", "POST", "PUT", "DELETE", "PATCH"];
    const OPENAPI_METHODS: [&str; 8] = [
        "get", "put", "post", "delete", "options", "head", "patch", "trace",
    ];

    type Routes = BTreeSet<(String, String)>;

    fn doc() -> Value {
        serde_json::from_str(OPENAPI).expect("hub/openapi.json is valid JSON")
    }

    /// `/api/jobs/{jobId}/output` -> `/api/jobs/*/output`.
    fn pattern_of(openapi_path: &str) -> String {
        openapi_path
            .split('/')
            .map(|s| {
                if s.starts_with('{') && s.ends_with('}') {
                    "*"
                } else {
                    s
                }
            })
            .collect::<Vec<_>>()
            .join("/")
    }

    /// Every `(METHOD, pattern)` the document describes.
    fn documented() -> Routes {
        let doc = doc();
        let paths = doc["paths"].as_object().expect("paths object");
        let mut out = BTreeSet::new();
        for (path, item) in paths {
            for (method, _) in item.as_object().expect("path item object") {
                if OPENAPI_METHODS.contains(&method.as_str()) {
                    out.insert((method.to_uppercase(), pattern_of(path)));
                }
            }
        }
        out
    }

    /// Every `(METHOD, pattern)` row of the route table, a final `**` read as the `*` of a
    /// documented `{param}`.
    fn routed() -> Routes {
        routes::ROUTES
            .iter()
            .map(|r| {
                let pattern = r
                    .pattern
                    .strip_suffix("/**")
                    .map_or(r.pattern.to_string(), |h| format!("{h}/*"));
                (r.method.to_string(), pattern)
            })
            .collect()
    }

    /// `*` in a documented pattern matches one segment.
    fn path_matches(pattern: &str, segs: &[&str]) -> bool {
        let p: Vec<&str> = pattern.split('/').skip(1).collect();
        p.len() == segs.len() && p.iter().zip(segs).all(|(a, b)| *a == "*" || a == b)
    }

    fn diff(left: &Routes, right: &Routes) -> Vec<String> {
        left.difference(right)
            .map(|(m, p)| format!("{m} {p}"))
            .collect()
    }

    #[test]
    fn openapi_document_lists_exactly_the_routes_of_the_table() {
        let doc = documented();
        let src = routed();
        let undocumented = diff(&src, &doc);
        let unrouted = diff(&doc, &src);
        assert!(
            undocumented.is_empty() && unrouted.is_empty(),
            "hub/openapi.json and api::routes::ROUTES disagree\n  routed but not documented: \
             {undocumented:?}\n  documented but not routed: {unrouted:?}"
        );
    }

    fn probe(method: &str, path: &str) -> Req {
        Req {
            method: Method::from_bytes(method.as_bytes()).expect("method"),
            path: path.to_string(),
            query: String::new(),
            headers: HeaderMap::new(),
            ip: None,
            peer: None,
            body: std::sync::Mutex::new(None),
            upgrade: None,
            body_deadline_secs: 15,
            rate: Arc::default(),
        }
    }

    /// Asks a real hub (no credentials, placeholder ids) every routed path with every method.
    /// Without credentials no handler answers 404 or 405, so those two statuses mean "not
    /// routed"; everything else (200, 400, 401, ...) means a handler ran.
    #[tokio::test]
    async fn the_router_answers_every_documented_route_and_only_those() {
        let dir = tempfile::tempdir().expect("temp dir");
        let hub = crate::open(crate::HubConfig {
            data_dir: dir.path().to_path_buf(),
            ..Default::default()
        })
        .await
        .expect("open hub");
        let doc = documented();
        let mut wrong = Vec::new();
        let patterns: BTreeSet<&str> = routes::ROUTES.iter().map(|r| r.pattern).collect();
        for pattern in patterns {
            let path = pattern.replace('*', "x");
            let segs: Vec<&str> = path.split('/').skip(1).collect();
            for method in METHODS {
                let resp = match dispatch(&hub, probe(method, &path)).await {
                    Ok(r) => r,
                    Err(e) => e.into_response(),
                };
                let status = resp.status();
                let routed =
                    status != StatusCode::NOT_FOUND && status != StatusCode::METHOD_NOT_ALLOWED;
                let expected = doc
                    .iter()
                    .any(|(m, p)| m == method && path_matches(p, &segs));
                if routed != expected {
                    wrong.push(format!(
                        "{method} {path}: answered {status}, documented: {expected}"
                    ));
                } else if !expected && status != StatusCode::METHOD_NOT_ALLOWED {
                    wrong.push(format!("{method} {path}: answered {status}, expected 405"));
                } else if !expected {
                    let mut allow: Vec<String> = doc
                        .iter()
                        .filter(|(_, p)| path_matches(p, &segs))
                        .map(|(m, _)| m.clone())
                        .collect();
                    if allow.iter().any(|m| m == "GET") {
                        allow.push("HEAD".to_string());
                    }
                    allow.sort();
                    let mut said: Vec<String> = resp
                        .headers()
                        .get("allow")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .split(", ")
                        .map(str::to_string)
                        .collect();
                    said.sort();
                    if said != allow {
                        wrong.push(format!(
                            "{method} {path}: Allow {said:?}, documented {allow:?}"
                        ));
                    }
                }
            }
        }
        assert!(wrong.is_empty(), "router and document disagree: {wrong:#?}");
    }

    #[test]
    fn openapi_document_serves_as_json() {
        let resp = openapi_response();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["content-type"], "application/json");
    }

    /// The JSON value at a local `$ref` (`#/components/...`).
    fn resolve<'a>(doc: &'a Value, reference: &str) -> Option<&'a Value> {
        let pointer = reference.strip_prefix('#')?;
        doc.pointer(pointer)
    }

    fn collect_refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
        match v {
            Value::Object(map) => {
                for (k, v) in map {
                    match (k.as_str(), v) {
                        ("$ref", Value::String(r)) => out.push(r),
                        _ => collect_refs(v, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| collect_refs(v, out)),
            _ => {}
        }
    }

    /// Follows a `$ref` (if any) to the object it names.
    fn deref<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
        match v.get("$ref").and_then(Value::as_str) {
            Some(r) => resolve(doc, r).unwrap_or(v),
            None => v,
        }
    }

    #[test]
    fn openapi_document_is_well_formed() {
        let doc = doc();
        let mut problems = Vec::new();
        assert!(
            doc["openapi"]
                .as_str()
                .is_some_and(|v| v.starts_with("3.1.")),
            "openapi must be 3.1.x"
        );
        for key in ["title", "version"] {
            assert!(doc["info"][key].is_string(), "info.{key} is required");
        }
        // Every reference resolves.
        let mut refs = Vec::new();
        collect_refs(&doc, &mut refs);
        for r in &refs {
            if resolve(&doc, r).is_none() {
                problems.push(format!("unresolved $ref {r}"));
            }
        }
        // Every schema, response and security scheme is used.
        let used: BTreeSet<&str> = refs.iter().copied().collect();
        for kind in ["schemas", "responses"] {
            for name in doc["components"][kind].as_object().expect(kind).keys() {
                let r = format!("#/components/{kind}/{name}");
                if !used.contains(r.as_str()) {
                    problems.push(format!("unused {r}"));
                }
            }
        }
        let schemes = doc["components"]["securitySchemes"]
            .as_object()
            .expect("security schemes");
        for name in ["bearerAuth", "cookieAuth", "workerBearer", "workerToken"] {
            if !schemes.contains_key(name) {
                problems.push(format!("missing security scheme {name}"));
            }
        }
        let mut ids = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            let params_in_path: BTreeSet<&str> = path
                .split('/')
                .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
                .collect();
            for (method, op) in item.as_object().expect("path item") {
                let at = format!("{} {path}", method.to_uppercase());
                if !OPENAPI_METHODS.contains(&method.as_str()) {
                    continue;
                }
                match op["operationId"].as_str() {
                    Some(id) if ids.insert(id.to_string()) => {}
                    Some(id) => problems.push(format!("{at}: duplicate operationId {id}")),
                    None => problems.push(format!("{at}: no operationId")),
                }
                // Security names exist.
                for req in op["security"].as_array().into_iter().flatten() {
                    for name in req.as_object().into_iter().flat_map(|o| o.keys()) {
                        if !schemes.contains_key(name) {
                            problems.push(format!("{at}: unknown security scheme {name}"));
                        }
                    }
                }
                // Path parameters are declared, and nothing else is declared in the path.
                let declared: BTreeSet<&str> = op["parameters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|p| deref(&doc, p))
                    .filter(|p| p["in"] == "path")
                    .filter_map(|p| p["name"].as_str())
                    .collect();
                if declared != params_in_path {
                    problems.push(format!(
                        "{at}: path parameters {declared:?}, path names {params_in_path:?}"
                    ));
                }
                let Some(responses) = op["responses"].as_object().filter(|r| !r.is_empty()) else {
                    problems.push(format!("{at}: no responses"));
                    continue;
                };
                if !responses
                    .keys()
                    .any(|c| c.starts_with('2') || c.as_str() == "101")
                {
                    problems.push(format!("{at}: no success response"));
                }
                for (code, resp) in responses {
                    let resp = deref(&doc, resp);
                    if resp["description"].as_str().is_none_or(str::is_empty) {
                        problems.push(format!("{at} {code}: no description"));
                    }
                    if code.starts_with('4') || code.starts_with('5') {
                        let schema = &resp["content"]["application/json"]["schema"]["$ref"];
                        if schema != "#/components/schemas/ErrorBody" {
                            problems.push(format!("{at} {code}: error body is not ErrorBody"));
                        }
                    }
                    if code == "429" && resp["headers"]["Retry-After"].is_null() {
                        problems.push(format!("{at} 429: no Retry-After header"));
                    }
                }
            }
        }
        assert!(
            problems.is_empty(),
            "hub/openapi.json problems: {problems:#?}"
        );
    }
}
