//! The route table: one row per `(method, pattern)` with its handler. The same rows decide
//! dispatch (the first row whose method and pattern match), 404 versus 405 (a path some row
//! matches under another method is 405, with `Allow`), the `route` label of
//! `cmdx_http_requests_total` (the pattern of the first row whose pattern matches, whatever the
//! method: a bounded label set) and the OpenAPI cross-check in the tests below.
//!
//! A pattern is a path of segments: a literal matches itself, `*` any one segment (handed to
//! the handler raw, as the client sent it), and a final `**` one or more segments (handed over
//! joined by `/`). Rows are tried in order, so a literal row (`/api/workers/tokens`) comes before
//! the wildcard row it overlaps (`/api/workers/*`); a test checks that no row is shadowed.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use warp::http::Method;
use warp::reply::Response;

use super::{Req, artifacts, files, jobs_api, legacy, users, workers};
use crate::Hub;
use crate::error::ApiResult;

/// What a handler returns: a boxed future borrowing the hub.
pub(super) type HandlerFuture<'a> = Pin<Box<dyn Future<Output = ApiResult<Response>> + Send + 'a>>;

/// A route's handler: the hub, the request, and the segments its pattern's wildcards matched.
pub(super) type Handler = for<'a> fn(&'a Arc<Hub>, Req, Params) -> HandlerFuture<'a>;

/// One row of the table.
pub(super) struct Route {
    /// The method (`HEAD` requests are routed as `GET`).
    pub(super) method: Method,
    /// The path pattern, also the metric label.
    pub(super) pattern: &'static str,
    /// Called when method and pattern match.
    pub(super) handler: Handler,
}

/// The segments a pattern's wildcards matched, in order.
pub(super) struct Params(Vec<String>);

impl Params {
    /// The `i`th wildcard's segment (`""` past the end, which no row's handler asks for).
    fn get(&self, i: usize) -> &str {
        self.0.get(i).map_or("", String::as_str)
    }
}

impl Route {
    const fn new(method: Method, pattern: &'static str, handler: Handler) -> Route {
        Route {
            method,
            pattern,
            handler,
        }
    }

    /// The wildcard segments, when `segs` (a path split at `/`, without the leading empty
    /// segment) matches this row's pattern.
    pub(super) fn captures(&self, segs: &[&str]) -> Option<Params> {
        let pattern: Vec<&str> = self.pattern.split('/').skip(1).collect();
        let (head, rest) = match pattern.split_last() {
            Some((&"**", head)) if segs.len() > head.len() => (head, Some(&segs[head.len()..])),
            Some((&"**", _)) => return None,
            _ if pattern.len() == segs.len() => (pattern.as_slice(), None),
            _ => return None,
        };
        let mut params = Vec::new();
        for (p, s) in head.iter().zip(segs) {
            match *p {
                "*" => params.push((*s).to_string()),
                lit if lit == *s => {}
                _ => return None,
            }
        }
        if let Some(rest) = rest {
            params.push(rest.join("/"));
        }
        Some(Params(params))
    }
}

/// How a request path resolves against the table.
pub(super) enum Resolved {
    /// A row matched method and path.
    Route(&'static Route, Params),
    /// Rows match the path, under these methods only.
    OtherMethods(Vec<Method>),
    /// No row matches the path.
    NoRoute,
}

/// Resolves `(method, segs)` (method already mapped from `HEAD` to `GET`).
pub(super) fn resolve(method: &Method, segs: &[&str]) -> Resolved {
    let mut allowed: Vec<Method> = Vec::new();
    for route in ROUTES {
        let Some(params) = route.captures(segs) else {
            continue;
        };
        if route.method == *method {
            return Resolved::Route(route, params);
        }
        if !allowed.contains(&route.method) {
            allowed.push(route.method.clone());
        }
    }
    if allowed.is_empty() {
        Resolved::NoRoute
    } else {
        Resolved::OtherMethods(allowed)
    }
}

/// The `Allow` header value for the methods a path is routed under (`HEAD` goes with `GET`).
pub(super) fn allow_header(methods: &[Method]) -> String {
    let mut names: Vec<&str> = Vec::new();
    for m in methods {
        names.push(m.as_str());
        if *m == Method::GET {
            names.push("HEAD");
        }
    }
    names.join(", ")
}

/// The metric label of a request path: the first row's pattern the path matches (whatever the
/// method), else `dashboard` for paths outside `/api` and `/ws`, else `unmatched`.
pub(super) fn label(path: &str) -> &'static str {
    let segs: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    if let Some(route) = ROUTES.iter().find(|r| r.captures(&segs).is_some()) {
        return route.pattern;
    }
    if segs.first().is_none_or(|s| *s != "api" && *s != "ws") {
        "dashboard"
    } else {
        "unmatched"
    }
}

/// A handler that needs no path parameter.
macro_rules! plain {
    ($f:path) => {
        |hub, req, _| Box::pin($f(hub, req))
    };
}

/// A handler given the first wildcard segment (an id).
macro_rules! with_id {
    ($f:path) => {
        |hub, req, p| Box::pin(async move { $f(hub, req, p.get(0)).await })
    };
}

/// Every route of the hub, in matching order.
pub(super) static ROUTES: &[Route] = &[
    Route::new(Method::GET, "/healthz", plain!(super::healthz)),
    Route::new(Method::GET, "/metrics", plain!(super::metrics)),
    Route::new(Method::GET, "/readyz", plain!(super::readyz)),
    Route::new(Method::GET, "/api/openapi.json", plain!(super::openapi)),
    Route::new(Method::GET, "/ws/agent", plain!(workers::agent_socket)),
    Route::new(Method::GET, "/ws/client", plain!(users::client_socket)),
    // auth and users
    Route::new(Method::POST, "/api/auth/login", plain!(users::login)),
    Route::new(Method::POST, "/api/auth/logout", plain!(users::logout)),
    Route::new(Method::GET, "/api/auth/me", plain!(users::me)),
    Route::new(Method::POST, "/api/auth/register", plain!(users::register)),
    Route::new(Method::GET, "/api/users/list", plain!(users::list)),
    Route::new(
        Method::PUT,
        "/api/users/*/quota",
        with_id!(users::set_quota),
    ),
    Route::new(Method::PATCH, "/api/users/*", with_id!(users::update)),
    Route::new(Method::DELETE, "/api/users/*", with_id!(users::delete)),
    Route::new(Method::POST, "/api/admin/janitor", plain!(super::janitor)),
    Route::new(Method::GET, "/api/admin/backup", plain!(super::backup)),
    // files
    Route::new(Method::POST, "/api/files/upload", plain!(files::upload)),
    Route::new(
        Method::GET,
        "/api/files/download/*",
        with_id!(files::download),
    ),
    Route::new(Method::GET, "/api/files/list", plain!(files::list)),
    // jobs
    Route::new(Method::POST, "/api/jobs/submit", plain!(jobs_api::submit)),
    Route::new(Method::GET, "/api/jobs/status", plain!(jobs_api::status)),
    Route::new(Method::GET, "/api/jobs/list", plain!(jobs_api::list)),
    Route::new(Method::POST, "/api/jobs/cancel", plain!(jobs_api::cancel)),
    Route::new(Method::POST, "/api/jobs/resize", plain!(jobs_api::resize)),
    // legacy worker and submitter routes
    Route::new(Method::GET, "/api/jobs/get-job", plain!(legacy::get_job)),
    Route::new(
        Method::POST,
        "/api/jobs/stream-output",
        plain!(legacy::stream_output),
    ),
    Route::new(
        Method::GET,
        "/api/jobs/check-cancel",
        plain!(legacy::check_cancel),
    ),
    Route::new(
        Method::POST,
        "/api/jobs/submit-result",
        plain!(legacy::submit_result),
    ),
    Route::new(
        Method::PUT,
        "/api/jobs/submit-result",
        plain!(legacy::submit_error),
    ),
    Route::new(Method::POST, "/api/jobs/create", plain!(legacy::create)),
    Route::new(Method::POST, "/api/execute", plain!(legacy::execute)),
    Route::new(
        Method::GET,
        "/api/jobs/*/output",
        with_id!(jobs_api::output),
    ),
    Route::new(
        Method::GET,
        "/api/jobs/*/output/search",
        with_id!(jobs_api::search_output),
    ),
    Route::new(Method::POST, "/api/jobs/*/rerun", with_id!(jobs_api::rerun)),
    Route::new(
        Method::GET,
        "/api/jobs/*/artifacts",
        with_id!(artifacts::download_zip),
    ),
    Route::new(
        Method::PUT,
        "/api/jobs/*/artifacts",
        with_id!(artifacts::upload),
    ),
    Route::new(Method::GET, "/api/jobs/*/artifacts/**", |hub, req, p| {
        Box::pin(async move {
            let file = crate::decode::path(p.get(1));
            artifacts::download_file(hub, req, p.get(0), &file).await
        })
    }),
    // workers
    Route::new(
        Method::POST,
        "/api/workers/register",
        plain!(legacy::register),
    ),
    Route::new(
        Method::POST,
        "/api/workers/heartbeat",
        plain!(legacy::heartbeat),
    ),
    Route::new(Method::GET, "/api/workers/list", plain!(workers::list)),
    Route::new(
        Method::POST,
        "/api/workers/tokens",
        plain!(workers::mint_token),
    ),
    Route::new(
        Method::GET,
        "/api/workers/tokens",
        plain!(workers::list_tokens),
    ),
    Route::new(
        Method::DELETE,
        "/api/workers/tokens/*",
        with_id!(workers::revoke_token),
    ),
    Route::new(
        Method::POST,
        "/api/workers/*/drain",
        with_id!(workers::drain),
    ),
    Route::new(
        Method::POST,
        "/api/workers/*/resume",
        with_id!(workers::resume),
    ),
    Route::new(Method::DELETE, "/api/workers/*", with_id!(workers::delete)),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn segs(path: &str) -> Vec<&str> {
        path.split('/').skip(1).collect()
    }

    /// A path the pattern matches: every wildcard becomes `x`.
    fn probe(pattern: &str) -> String {
        pattern.replace("**", "x").replace('*', "x")
    }

    #[test]
    fn wildcards_capture_raw_segments_and_the_rest() {
        let route = ROUTES
            .iter()
            .find(|r| r.pattern == "/api/jobs/*/artifacts/**")
            .expect("the artifact file route");
        let p = route
            .captures(&segs("/api/jobs/j%201/artifacts/a/b%20c"))
            .expect("matches");
        assert_eq!((p.get(0), p.get(1)), ("j%201", "a/b%20c"));
        assert!(route.captures(&segs("/api/jobs/j/artifacts")).is_none());
        assert!(route.captures(&segs("/api/jobs/j/output/x")).is_none());
    }

    /// Every row answers its own probe path: no earlier row of the same method shadows it.
    #[test]
    fn no_row_is_shadowed_by_an_earlier_one() {
        for route in ROUTES {
            let path = probe(route.pattern);
            match resolve(&route.method, &segs(&path)) {
                Resolved::Route(found, _) => assert!(
                    std::ptr::eq(found, route),
                    "{} {path} reaches {} instead of {}",
                    route.method,
                    found.pattern,
                    route.pattern
                ),
                _ => panic!("{} {path} is not routed", route.method),
            }
        }
    }

    #[test]
    fn literal_rows_win_over_the_wildcards_they_overlap() {
        let at = |m: Method, path: &str| match resolve(&m, &segs(path)) {
            Resolved::Route(r, p) => (r.pattern, p.0),
            _ => ("", Vec::new()),
        };
        assert_eq!(
            at(Method::GET, "/api/workers/tokens").0,
            "/api/workers/tokens"
        );
        assert_eq!(
            at(Method::DELETE, "/api/workers/tokens"),
            ("/api/workers/*", vec!["tokens".to_string()])
        );
        assert_eq!(
            at(Method::POST, "/api/workers/tokens/drain"),
            ("/api/workers/*/drain", vec!["tokens".to_string()])
        );
        assert_eq!(label("/api/workers/tokens/drain"), "/api/workers/tokens/*");
    }

    #[test]
    fn other_methods_give_405_with_allow_and_unknown_paths_404() {
        match resolve(&Method::DELETE, &segs("/api/workers/tokens/t/x")) {
            Resolved::NoRoute => {}
            _ => panic!("an unknown path must be 404"),
        }
        match resolve(&Method::PATCH, &segs("/api/workers/tokens")) {
            Resolved::OtherMethods(m) => {
                assert_eq!(allow_header(&m), "POST, GET, HEAD, DELETE");
            }
            _ => panic!("a known path under another method must be 405"),
        }
    }

    #[test]
    fn labels_are_patterns_or_one_of_two_fallbacks() {
        assert_eq!(label("/api/jobs/abc/output/"), "/api/jobs/*/output");
        assert_eq!(
            label("/api/jobs/abc/artifacts/d/e"),
            "/api/jobs/*/artifacts/**"
        );
        assert_eq!(label("/"), "dashboard");
        assert_eq!(label("/assets/app.js"), "dashboard");
        assert_eq!(label("/api/nothing"), "unmatched");
        assert_eq!(label("/ws/other"), "unmatched");
    }
}
