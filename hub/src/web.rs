//! The dashboard, embedded at build time (`hub/build.rs` builds `web/` with Vite). Paths that
//! name a file serve it; other paths (client-side routes like `/jobs/ID`) get `index.html`.

use warp::http::{HeaderValue, StatusCode};
use warp::reply::Response;

mod assets {
    include!(concat!(env!("OUT_DIR"), "/web_assets.rs"));
}

fn find(path: &str) -> Option<(&'static [u8], &'static str)> {
    assets::ASSETS
        .iter()
        .find(|(p, _, _)| *p == path)
        .map(|(_, bytes, mime)| (*bytes, *mime))
}

/// The response for a dashboard path, or `None` when it names a missing file.
pub fn serve(path: &str) -> Option<Response> {
    let path = if path.is_empty() || path == "/" {
        "/index.html"
    } else {
        path
    };
    let (bytes, mime, immutable) = match find(path) {
        Some((b, m)) => (b, m, path.starts_with("/assets/")),
        None => {
            let last = path.rsplit('/').next().unwrap_or("");
            if last.contains('.') {
                return None;
            }
            let (b, m) = find("/index.html")?;
            (b, m, false)
        }
    };
    let mut resp = Response::new(bytes.into());
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert("content-type", HeaderValue::from_static(mime));
    h.insert(
        "cache-control",
        HeaderValue::from_static(if immutable {
            "public, max-age=31536000, immutable"
        } else {
            "no-cache"
        }),
    );
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("referrer-policy", HeaderValue::from_static("same-origin"));
    h.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'self'; connect-src 'self' ws: wss:; style-src 'self' 'unsafe-inline'; \
             img-src 'self' data:; object-src 'none'; base-uri 'self'; frame-ancestors 'none'",
        ),
    );
    Some(resp)
}
