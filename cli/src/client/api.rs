//! A small REST client for the hub: bearer auth, JSON bodies, TLS for an `https://` hub
//! (rustls, system roots plus `--ca-file`), and one-line explanations of every failure
//! (unreachable hub, untrusted certificate, 401, 403, 404, 413, 429, hub errors).

use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use cmdx_proto::rest::ErrorBody;
use reqwest::{RequestBuilder, Response, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::config::Conn;
use super::detail;

/// What a 401 on a user route means to a person.
pub const SIGNED_OUT: &str = "not signed in or session expired: run cmdx login";

/// A non-2xx answer from the hub, explained in one line by its `Display`.
#[derive(Debug)]
pub struct HubError {
    /// HTTP status.
    pub status: StatusCode,
    /// The hub's human-readable error text (one line).
    pub message: String,
    /// What was asked, e.g. `job 0192…` or `upload`, for the explanation.
    pub what: String,
    /// `Retry-After` seconds of a 429.
    pub retry_after: Option<u64>,
    /// The hub's machine-readable code (`rate_limited`, `quota_exceeded`, …; empty when the
    /// body had none).
    pub code: String,
}

impl std::fmt::Display for HubError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.status {
            StatusCode::UNAUTHORIZED => f.write_str(SIGNED_OUT),
            StatusCode::FORBIDDEN => {
                write!(f, "{}: permission denied ({})", self.what, self.message)
            }
            StatusCode::NOT_FOUND => write!(f, "{} not found", self.what),
            StatusCode::PAYLOAD_TOO_LARGE => write!(f, "upload too large: {}", self.message),
            StatusCode::TOO_MANY_REQUESTS if self.code == "quota_exceeded" => {
                write!(f, "{} refused: {}", self.what, self.message)
            }
            StatusCode::TOO_MANY_REQUESTS => match self.retry_after {
                Some(s) => write!(f, "the hub is rate limiting requests: retry in {s} s"),
                None => f.write_str("the hub is rate limiting requests: retry later"),
            },
            s => write!(
                f,
                "{} failed: {} (HTTP {})",
                self.what,
                self.message,
                s.as_u16()
            ),
        }
    }
}

impl std::error::Error for HubError {}

/// One line: control characters (newlines) become spaces, long texts are cut.
pub fn one_line(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(300)
        .collect();
    if out.len() < s.len() && s.chars().count() > 300 {
        out.push('…');
    }
    out.trim().to_string()
}

/// The hub's REST API as one signed-in (or not) caller.
pub struct Api {
    http: reqwest::Client,
    /// Hub base URL.
    pub hub: String,
    token: Option<String>,
    /// The TLS client configuration, shared by the REST client and the WebSocket.
    pub tls: Arc<rustls::ClientConfig>,
}

impl Api {
    /// A client for `conn`.
    pub fn new(conn: &Conn) -> anyhow::Result<Api> {
        let tls = cmdx_agent::tls::client_config(conn.ca_file.as_deref())?;
        let http = http_client(&tls)?;
        Ok(Api {
            http,
            hub: conn.hub.clone(),
            token: conn.token.clone(),
            tls,
        })
    }

    /// The bearer token, or the "run cmdx login" error.
    pub fn token(&self) -> anyhow::Result<&str> {
        self.token.as_deref().ok_or_else(|| anyhow!(SIGNED_OUT))
    }

    /// The full URL of a hub path.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.hub)
    }

    /// A request builder for `path`, with the bearer token when there is one.
    pub fn request(&self, method: reqwest::Method, path: &str) -> RequestBuilder {
        let rb = self.http.request(method, self.url(path));
        match &self.token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        }
    }

    /// Sends a request; any transport failure or non-2xx answer becomes a one-line error.
    pub async fn send(&self, rb: RequestBuilder, what: &str) -> anyhow::Result<Response> {
        let resp = rb.send().await.map_err(|e| self.transport_error(&e))?;
        check(resp, what).await
    }

    /// Explains a transport failure (connection refused, untrusted certificate, timeout, reset)
    /// in one line.
    pub fn transport_error(&self, e: &reqwest::Error) -> anyhow::Error {
        detail(format_args!("transport error: {e:?}"));
        let root = root_cause(e);
        if let Some(tls) = tls_failure(&self.hub, e) {
            tls
        } else if e.is_connect() {
            anyhow!("cannot reach the hub at {}: {root}", self.hub)
        } else if e.is_timeout() {
            anyhow!("the hub at {} did not answer in time", self.hub)
        } else {
            anyhow!("talking to the hub at {} failed: {root}", self.hub)
        }
    }

    /// GET a JSON document.
    pub async fn get_json<T: DeserializeOwned>(&self, path: &str, what: &str) -> anyhow::Result<T> {
        let rb = self
            .request(reqwest::Method::GET, path)
            .timeout(Duration::from_secs(60));
        decode(self.send(rb, what).await?, what).await
    }

    /// Job `id`'s document; `with_output`: with its stored stdout and stderr (up to 8 MiB each),
    /// else without them (what to say about a job, not its log).
    pub async fn job(
        &self,
        id: &str,
        with_output: bool,
    ) -> anyhow::Result<cmdx_proto::rest::JobView> {
        let path = format!(
            "/api/jobs/status?jobId={}{}",
            super::submit::encode_query(id),
            if with_output { "" } else { "&output=false" }
        );
        self.get_json(&path, &format!("job {id}")).await
    }

    /// POST a JSON body and decode the JSON answer.
    pub async fn post_json<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        what: &str,
    ) -> anyhow::Result<T> {
        self.send_json(reqwest::Method::POST, path, body, what)
            .await
    }

    /// Sends a JSON body with `method` and decodes the JSON answer.
    pub async fn send_json<B: Serialize, T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &B,
        what: &str,
    ) -> anyhow::Result<T> {
        let rb = self
            .request(method, path)
            .timeout(Duration::from_secs(60))
            .json(body);
        decode(self.send(rb, what).await?, what).await
    }
}

/// The HTTP client of the CLI: TLS from `tls`, a connect timeout, our user agent.
pub fn http_client(tls: &rustls::ClientConfig) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .user_agent(concat!("cmdx/", env!("CARGO_PKG_VERSION")))
        .tls_backend_preconfigured(tls.clone())
        .build()
        .map_err(|e| anyhow!("cannot build the HTTP client: {e}"))
}

/// A TLS failure somewhere in `e`'s chain, explained: an untrusted certificate says how to
/// trust it. hyper and tokio-tungstenite pass rustls's error on inside (nested) `io::Error`s,
/// whose `source()` skips what they wrap, so each `io::Error` is opened instead.
pub fn tls_failure(hub: &str, e: &(dyn std::error::Error + 'static)) -> Option<anyhow::Error> {
    let mut cur = Some(e);
    let mut found = None;
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<rustls::Error>() {
            found = Some(t);
            break;
        }
        cur = match err.downcast_ref::<std::io::Error>() {
            Some(io) => io
                .get_ref()
                .map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    Some(match found? {
        rustls::Error::InvalidCertificate(why) => anyhow!(
            "the hub at {hub} presented a TLS certificate this cmdx does not trust ({why}): if a \
             private CA signed it, pass --ca-file with that CA's PEM file (or set CMDX_CA_FILE)"
        ),
        other => anyhow!("TLS with the hub at {hub} failed: {other}"),
    })
}

/// The innermost error's text (e.g. "Connection refused (os error 111)").
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    one_line(&cur.to_string())
}

/// Turns a non-2xx response into a [`HubError`].
pub async fn check(resp: Response, what: &str) -> anyhow::Result<Response> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok());
    let text = resp.text().await.unwrap_or_default();
    detail(format_args!("{what}: HTTP {status}: {}", one_line(&text)));
    let (message, code) = match serde_json::from_str::<ErrorBody>(&text) {
        Ok(b) => (one_line(&b.error), b.code),
        Err(_) if text.trim().is_empty() => (
            status.canonical_reason().unwrap_or("error").to_lowercase(),
            String::new(),
        ),
        Err(_) => (one_line(&text), String::new()),
    };
    Err(HubError {
        status,
        message,
        what: what.to_string(),
        retry_after,
        code,
    }
    .into())
}

/// Decodes a JSON answer.
pub async fn decode<T: DeserializeOwned>(resp: Response, what: &str) -> anyhow::Result<T> {
    let bytes = resp.bytes().await.map_err(|e| {
        anyhow!(
            "{what}: reading the hub's answer failed: {}",
            root_cause(&e)
        )
    })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| anyhow!("{what}: the hub's answer is not what this cmdx expects: {e}"))
}

/// The status of a [`HubError`] inside `e`, if it is one.
pub fn hub_status(e: &anyhow::Error) -> Option<StatusCode> {
    e.downcast_ref::<HubError>().map(|h| h.status)
}
