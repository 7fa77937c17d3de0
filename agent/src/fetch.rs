//! Hub URLs, the job ZIP download (streamed to a temp file, size capped, sha256 checked) and
//! the artifact upload (bound to the attempt).
//!
//! The worker token is sent only to the hub's own origin: an assignment naming an absolute
//! URL elsewhere is fetched without credentials, and redirects are never followed (a redirect
//! could carry the `x-worker-token` header to another host).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use reqwest::Url;
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt as _;

use crate::error::{AgentError, JobError};

/// The hub addresses derived from the configured hub URL.
#[derive(Debug, Clone)]
pub(crate) struct HubUrls {
    /// `http(s)://authority[/prefix]` without a trailing slash; hub paths are appended to it.
    pub http_base: String,
    /// `ws(s)://authority[/prefix]/ws/agent`.
    pub ws: String,
    /// `scheme://host:port` of the hub, to decide whether a URL may receive the token.
    origin: (String, String, Option<u16>),
}

impl HubUrls {
    /// Parses `http://host:port` (or `https`, `ws`, `wss`), with an optional path prefix.
    pub fn parse(hub_url: &str) -> Result<Self, AgentError> {
        let bad = |reason: &str| AgentError::HubUrl {
            url: hub_url.to_owned(),
            reason: reason.to_owned(),
        };
        let url = Url::parse(hub_url.trim()).map_err(|e| bad(&e.to_string()))?;
        let (http_scheme, ws_scheme) = match url.scheme() {
            "http" | "ws" => ("http", "ws"),
            "https" | "wss" => ("https", "wss"),
            _ => return Err(bad("scheme must be http, https, ws or wss")),
        };
        let host = url.host_str().ok_or_else(|| bad("no host"))?;
        if url.query().is_some() || url.fragment().is_some() {
            return Err(bad("no query or fragment allowed"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(bad(
                "credentials in the URL are not allowed; pass the token separately",
            ));
        }
        let authority = match url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_owned(),
        };
        let prefix = url.path().trim_end_matches('/');
        Ok(Self {
            http_base: format!("{http_scheme}://{authority}{prefix}"),
            ws: format!("{ws_scheme}://{authority}{prefix}/ws/agent"),
            origin: (
                http_scheme.to_owned(),
                host.to_owned(),
                url.port_or_known_default(),
            ),
        })
    }

    /// Resolves an assignment's `fileUrl`: a hub path (`/api/...`) or an absolute URL. Returns
    /// the URL and whether it belongs to the hub (and may receive the worker token).
    pub fn resolve(&self, file_url: &str) -> Result<(Url, bool), String> {
        if file_url.starts_with('/') && !file_url.starts_with("//") {
            let url = Url::parse(&format!("{}{file_url}", self.http_base))
                .map_err(|e| format!("bad file url: {e}"))?;
            return Ok((url, true));
        }
        let url = Url::parse(file_url).map_err(|e| format!("bad file url: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("unsupported file url scheme {:?}", url.scheme()));
        }
        let same = url.scheme() == self.origin.0
            && url.host_str() == Some(self.origin.1.as_str())
            && url.port_or_known_default() == self.origin.2;
        Ok((url, same))
    }
}

/// The hubs an agent may use (`--hub URL1,URL2,...`: hubs of one cluster, tried in turn), and
/// the one it is connected to (or trying), whose address job downloads and uploads use.
#[derive(Debug, Clone)]
pub(crate) struct HubSet {
    hubs: Arc<[HubUrls]>,
    current: Arc<AtomicUsize>,
}

impl HubSet {
    /// Parses a comma-separated list of hub URLs (one at least).
    pub fn parse(list: &str) -> Result<Self, AgentError> {
        let hubs = list
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(HubUrls::parse)
            .collect::<Result<Vec<_>, _>>()?;
        if hubs.is_empty() {
            return Err(AgentError::HubUrl {
                url: list.to_owned(),
                reason: "no hub URL given".to_owned(),
            });
        }
        Ok(Self {
            hubs: hubs.into(),
            current: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// The hub in use.
    pub fn current(&self) -> &HubUrls {
        &self.hubs[self.current.load(Ordering::Relaxed) % self.hubs.len()]
    }

    /// Moves to the next hub of the list (after a failed connection).
    pub fn advance(&self) {
        self.current.fetch_add(1, Ordering::Relaxed);
    }

    /// Every hub's base URL, for logs.
    pub fn bases(&self) -> Vec<&str> {
        self.hubs.iter().map(|h| h.http_base.as_str()).collect()
    }

    /// [`HubUrls::resolve`] against the hub in use; an absolute URL belongs to the hubs (and
    /// may receive the worker token) when it names any hub of the list.
    pub fn resolve(&self, file_url: &str) -> Result<(Url, bool), String> {
        let (url, mut is_hub) = self.current().resolve(file_url)?;
        if !is_hub {
            is_hub = self
                .hubs
                .iter()
                .any(|h| h.resolve(url.as_str()).is_ok_and(|(_, ours)| ours));
        }
        Ok((url, is_hub))
    }
}

/// Downloads job files.
#[derive(Clone)]
pub(crate) struct Fetcher {
    client: reqwest::Client,
    hubs: HubSet,
    token: String,
    worker_id: String,
    max_bytes: u64,
    timeout: Duration,
}

impl Fetcher {
    /// A fetcher for this hub and worker.
    pub fn new(
        hubs: HubSet,
        tls: &rustls::ClientConfig,
        token: String,
        worker_id: String,
        max_bytes: u64,
        connect_timeout: Duration,
        timeout: Duration,
    ) -> Result<Self, AgentError> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(connect_timeout)
            .read_timeout(Duration::from_secs(60))
            .tls_backend_preconfigured(tls.clone())
            .build()
            .map_err(AgentError::HttpClient)?;
        Ok(Self {
            client,
            hubs,
            token,
            worker_id,
            max_bytes,
            timeout,
        })
    }

    /// Streams `file_url` into a new temp file in `dir`, enforcing the size cap and checking
    /// the announced size and sha256. The file is deleted when the returned handle drops.
    pub async fn download(
        &self,
        file_url: &str,
        sha256: Option<&str>,
        size: Option<u64>,
        dir: &Path,
    ) -> Result<tempfile::NamedTempFile, JobError> {
        match tokio::time::timeout(
            self.timeout,
            self.download_inner(file_url, sha256, size, dir),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err(JobError::Download {
                url: file_url.to_owned(),
                reason: format!("timed out after {} s", self.timeout.as_secs()),
            }),
        }
    }

    async fn download_inner(
        &self,
        file_url: &str,
        sha256: Option<&str>,
        size: Option<u64>,
        dir: &Path,
    ) -> Result<tempfile::NamedTempFile, JobError> {
        let failed = |reason: String| JobError::Download {
            url: file_url.to_owned(),
            reason,
        };
        let too_large = || JobError::DownloadTooLarge {
            url: file_url.to_owned(),
            limit: self.max_bytes,
        };
        if size.is_some_and(|s| s > self.max_bytes) {
            return Err(too_large());
        }
        let (url, is_hub) = self.hubs.resolve(file_url).map_err(failed)?;
        let mut req = self.client.get(url);
        if is_hub {
            req = req
                .bearer_auth(&self.token)
                .header(cmdx_proto::WORKER_TOKEN_HEADER, &self.token)
                .header(crate::conn::WORKER_ID_HEADER, &self.worker_id);
        } else {
            tracing::warn!(
                file_url,
                "file url is not on the hub: fetching without credentials"
            );
        }
        let mut resp = req.send().await.map_err(|e| failed(error_chain(&e)))?;
        if !resp.status().is_success() {
            return Err(failed(format!("server answered {}", resp.status())));
        }
        if resp.content_length().is_some_and(|l| l > self.max_bytes) {
            return Err(too_large());
        }
        let tmp = tempfile::Builder::new()
            .prefix("job-")
            .suffix(".zip.part")
            .tempfile_in(dir)
            .map_err(|e| JobError::io("create a temp file in", dir, e))?;
        let mut file = tokio::fs::File::from_std(
            tmp.reopen()
                .map_err(|e| JobError::io("open", tmp.path(), e))?,
        );
        let mut hasher = Sha256::new();
        let mut total: u64 = 0;
        while let Some(chunk) = resp.chunk().await.map_err(|e| failed(error_chain(&e)))? {
            total += chunk.len() as u64;
            if total > self.max_bytes {
                return Err(too_large());
            }
            hasher.update(&chunk);
            file.write_all(&chunk)
                .await
                .map_err(|e| JobError::io("write", tmp.path(), e))?;
        }
        file.flush()
            .await
            .map_err(|e| JobError::io("write", tmp.path(), e))?;
        if let Some(expected) = size
            && expected != total
        {
            return Err(JobError::SizeMismatch {
                url: file_url.to_owned(),
                expected,
                actual: total,
            });
        }
        let actual = hex::encode(hasher.finalize());
        if let Some(expected) = sha256
            && !expected.trim().eq_ignore_ascii_case(&actual)
        {
            return Err(JobError::Sha256Mismatch {
                url: file_url.to_owned(),
                expected: expected.trim().to_owned(),
                actual,
            });
        }
        Ok(tmp)
    }
}

/// Why an artifact upload did not land.
#[derive(Debug)]
pub(crate) enum UploadError {
    /// The hub no longer gives this attempt to this worker (409): nobody wants the files.
    Stale(String),
    /// The hub refused the upload for good (400, 404, 413, ...).
    Rejected(String),
    /// The hub was unreachable or failed (5xx): worth retrying.
    Failed(String),
}

impl Fetcher {
    /// `PUT /api/jobs/{id}/artifacts?attempt=N`: the ZIP at `zip` and the manifest, streamed.
    /// Returns the number of files the hub stored.
    pub async fn upload_artifacts(
        &self,
        job: &cmdx_proto::agent::JobRef,
        zip: &Path,
        manifest: &cmdx_proto::rest::ArtifactManifest,
    ) -> Result<usize, UploadError> {
        let failed = |e: &dyn std::error::Error| UploadError::Failed(error_chain(e));
        let url = format!(
            "{}/api/jobs/{}/artifacts?attempt={}",
            self.hubs.current().http_base,
            job.job_id,
            job.attempt
        );
        let file = tokio::fs::File::open(zip).await.map_err(|e| failed(&e))?;
        let len = file.metadata().await.map_err(|e| failed(&e))?.len();
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(file));
        let part = reqwest::multipart::Part::stream_with_length(body, len)
            .file_name("artifacts.zip")
            .mime_str("application/zip")
            .map_err(|e| failed(&e))?;
        let manifest = serde_json::to_string(manifest).map_err(|e| failed(&e))?;
        let form = reqwest::multipart::Form::new()
            .text("manifest", manifest)
            .part("file", part);
        let resp = self
            .client
            .put(url)
            .bearer_auth(&self.token)
            .header(cmdx_proto::WORKER_TOKEN_HEADER, &self.token)
            .header(crate::conn::WORKER_ID_HEADER, &self.worker_id)
            .multipart(form)
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|e| failed(&e))?;
        let status = resp.status();
        if status.is_success() {
            let list: cmdx_proto::rest::ArtifactList = resp.json().await.map_err(|e| failed(&e))?;
            return Ok(list.artifacts.len());
        }
        let text = resp.text().await.unwrap_or_default();
        let why = serde_json::from_str::<cmdx_proto::rest::ErrorBody>(&text)
            .map(|b| b.error)
            .unwrap_or_else(|_| text.chars().take(200).collect());
        let why = format!("hub answered {status}: {why}");
        Err(if status == reqwest::StatusCode::CONFLICT {
            UploadError::Stale(why)
        } else if status.is_client_error() && status != reqwest::StatusCode::TOO_MANY_REQUESTS {
            UploadError::Rejected(why)
        } else {
            UploadError::Failed(why)
        })
    }
}

/// An error with its sources, for one-line messages.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_urls_are_derived() {
        let u = HubUrls::parse("http://127.0.0.1:8080/").unwrap();
        assert_eq!(u.http_base, "http://127.0.0.1:8080");
        assert_eq!(u.ws, "ws://127.0.0.1:8080/ws/agent");
        let u = HubUrls::parse("https://hub.example/cmdx").unwrap();
        assert_eq!(u.ws, "wss://hub.example/cmdx/ws/agent");
        assert!(HubUrls::parse("ftp://x").is_err());
        let set = HubSet::parse("http://a:1, http://b:2/p,").unwrap();
        assert_eq!(set.bases(), ["http://a:1", "http://b:2/p"]);
        assert_eq!(set.current().ws, "ws://a:1/ws/agent");
        set.advance();
        assert_eq!(set.current().ws, "ws://b:2/p/ws/agent");
        // Files of the hub in use are relative to it; any hub of the list may get the token.
        let (u, ours) = set.resolve("/api/files/x").unwrap();
        assert_eq!((u.as_str(), ours), ("http://b:2/p/api/files/x", true));
        assert!(set.resolve("http://a:1/api/files/x").unwrap().1);
        assert!(!set.resolve("http://c:3/api/files/x").unwrap().1);
        set.advance();
        assert_eq!(set.current().http_base, "http://a:1", "wraps around");
        assert!(HubSet::parse(" , ").is_err());
        assert!(HubUrls::parse("http://user:pw@x").is_err());
    }

    #[test]
    fn only_hub_urls_get_credentials() {
        let u = HubUrls::parse("http://127.0.0.1:8080").unwrap();
        let (url, hub) = u.resolve("/api/files/download/abc").unwrap();
        assert_eq!(url.as_str(), "http://127.0.0.1:8080/api/files/download/abc");
        assert!(hub);
        assert!(u.resolve("http://127.0.0.1:8080/x").unwrap().1);
        assert!(!u.resolve("http://127.0.0.1:9999/x").unwrap().1);
        assert!(!u.resolve("http://evil.example/x").unwrap().1);
        assert!(!u.resolve("//evil.example/x").is_ok_and(|(_, hub)| hub));
        assert!(u.resolve("file:///etc/shadow").is_err());
    }
}
