//! Hub settings. Every field has a default; `cmdx hub` fills them from flags and `CMDX_*` env.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Settings of one hub.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, rename_all = "snake_case", deny_unknown_fields)]
pub struct HubConfig {
    /// Address `cmdx hub` listens on.
    pub listen: String,
    /// Data folder: sled store, blobs, secrets.
    pub data_dir: PathBuf,
    /// JWT signing secret for user sessions; generated into `DATA/secrets` when absent.
    pub jwt_secret: Option<String>,
    /// HMAC secret for worker tokens; generated into `DATA/secrets` when absent.
    pub worker_secret: Option<String>,
    /// Shared secret of the original system's HS256 worker JWTs (legacy workers); off when unset.
    pub legacy_worker_jwt_secret: Option<String>,
    /// CIDRs from which legacy REST workers may call without a token (off by default).
    pub legacy_open_cidrs: Vec<String>,
    /// Lifetime of a user session token, seconds.
    pub session_ttl_secs: u64,
    /// Default lifetime of a worker token, seconds.
    pub worker_token_ttl_secs: u64,
    /// How long a disconnected worker may take to come back and resume its jobs, seconds.
    pub reconnect_grace_secs: u64,
    /// A legacy REST worker silent this long is offline, seconds.
    pub legacy_offline_secs: u64,
    /// Attempts before `worker_lost` when the submission does not say.
    pub default_max_attempts: u32,
    /// Upper bound for `maxAttempts`.
    pub max_attempts_limit: u32,
    /// Most jobs one user may have queued at once; a submission beyond is refused with 429
    /// `quota_exceeded` (0: no limit). An admin may set a user's own.
    pub max_queued_per_user: u32,
    /// Most jobs one user may have assigned or running at once; more wait in the queue (0: no
    /// limit). An admin may set a user's own.
    pub max_running_per_user: u32,
    /// Highest priority users other than admins may give a job (admins: up to 100).
    pub max_user_priority: i32,
    /// Timeout when the submission does not say, seconds.
    pub default_timeout_secs: u64,
    /// Upper bound for `timeout`, seconds.
    pub max_timeout_secs: u64,
    /// Seconds between TERM and KILL on cancel.
    pub cancel_grace_secs: u64,
    /// Output kept per job; the head is dropped beyond it.
    pub output_cap_bytes: u64,
    /// Largest upload.
    pub max_upload_bytes: u64,
    /// Largest JSON body on ordinary routes.
    pub max_json_bytes: u64,
    /// Most artifact bytes (uncompressed) kept per job.
    pub max_artifact_bytes: u64,
    /// Most artifact files kept per job.
    pub max_artifact_files: u32,
    /// Largest legacy `submit-result` body (it carries whole outputs).
    pub max_legacy_result_bytes: u64,
    /// Largest WebSocket message.
    pub max_ws_message_bytes: usize,
    /// Agent heartbeat period announced in `welcome`, seconds.
    pub heartbeat_secs: u64,
    /// Writes (user routes other than `GET`/`HEAD`) per minute per user (per client address when
    /// anonymous), also the burst; 0 disables.
    pub rate_limit_per_min: u32,
    /// Reads and polls (`GET`/`HEAD` user routes) per second per user (per client address when
    /// anonymous); 0 disables.
    pub read_rate_limit_per_sec: u32,
    /// Reads allowed at once (the read bucket's size).
    pub read_rate_limit_burst: u32,
    /// Login attempts per minute per client address; 0 disables.
    pub login_rate_limit_per_min: u32,
    /// Password hashes or verifications (argon2, about 19 MiB each) run at once; more wait up to
    /// 5 s, then answer 503.
    pub password_hash_concurrency: u32,
    /// Origins allowed for browser WebSockets besides the hub's own host.
    pub allowed_origins: Vec<String>,
    /// Reverse proxies (CIDRs) whose `X-Forwarded-For` / `X-Forwarded-Proto` are believed; the
    /// client address for rate limits and CIDR checks is then the right-most untrusted hop.
    pub trusted_proxies: Vec<String>,
    /// The hub's public base URL (e.g. `https://cmdx.example.com`), used where the hub must
    /// hand out absolute URLs (legacy workers' `fileUrl`).
    pub public_url: Option<String>,
    /// Mark the session cookie `Secure` (behind a TLS-terminating proxy; implied when the hub
    /// serves TLS itself).
    pub cookie_secure: bool,
    /// PEM certificate chain (leaf first) the hub serves HTTPS with, together with `tls_key`;
    /// reread on SIGHUP. Unset: plain HTTP (on a trusted network or behind a proxy).
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// sled page cache, bytes.
    pub cache_bytes: u64,
    /// Where records live: `None` for sled in `data_dir/db` (one hub), or a PostgreSQL URL
    /// (`postgres://USER[:PASSWORD]@HOST:PORT/DB`) that several hubs share.
    pub store: Option<String>,
    /// Most connections to the PostgreSQL store per hub.
    pub store_pool_size: usize,
    /// Most concurrent client (browser/CLI) WebSockets.
    pub max_client_sockets: usize,
    /// Most concurrent client WebSockets of one user.
    pub max_client_sockets_per_user: usize,
    /// Bytes of output one client socket may hold in flight (read from the store or queued for
    /// the socket, over all its subscriptions); a subscription waits for room.
    pub client_socket_buffer_bytes: usize,
    /// Most concurrent agent WebSockets (a budget of their own: client sockets cannot use it).
    pub max_agent_sockets: usize,
    /// Most open TCP connections; further ones are closed at once.
    pub max_connections: usize,
    /// Time allowed for a request's headers to arrive, seconds (slowloris).
    pub header_timeout_secs: u64,
    /// Longest pause between two pieces of a request body, seconds (trickled bodies).
    pub body_idle_timeout_secs: u64,
    /// Longest time to receive a whole JSON body, seconds; uploads must instead keep an average
    /// of at least 16 KiB/s after their first 30 s.
    pub body_total_timeout_secs: u64,
    /// Finished jobs and their output are deleted this long after they finished, seconds.
    pub job_retention_secs: u64,
    /// Uploaded files not used by a job for this long are deleted, seconds.
    pub file_retention_secs: u64,
    /// How often the janitor runs, seconds (0: never; `POST /api/admin/janitor` runs it now).
    pub janitor_interval_secs: u64,
    /// On SIGTERM, seconds during which `/readyz` answers 503 and new work is refused while the
    /// hub still serves (load balancers notice), before connections close.
    pub drain_delay_secs: u64,
    /// Registries a job's `image` may come from (`docker.io`, `127.0.0.1:5000`,
    /// `*.example.com`); empty: any.
    pub allowed_registries: Vec<String>,
    /// The image of jobs that name none; unset: they run in the agent host's root.
    pub default_image: Option<String>,
    /// Give jobs from the original system's submitters (`/api/jobs/create`, `/api/execute`)
    /// the image the original system picked from their command (`python` ->
    /// `python:3.11-slim`, `node` -> `node:22-alpine`, `gcc` -> `gcc:14-alpine`, `java` ->
    /// `eclipse-temurin:21-alpine`, anything else `alpine:latest`); off by default.
    pub legacy_image_mapping: bool,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            listen: "127.0.0.1:8080".into(),
            data_dir: PathBuf::from("./cmdx-data"),
            jwt_secret: None,
            worker_secret: None,
            legacy_worker_jwt_secret: None,
            legacy_open_cidrs: Vec::new(),
            session_ttl_secs: 12 * 3600,
            worker_token_ttl_secs: 30 * 24 * 3600,
            reconnect_grace_secs: 30,
            legacy_offline_secs: 30,
            default_max_attempts: 3,
            max_attempts_limit: 10,
            max_queued_per_user: 0,
            max_running_per_user: 0,
            max_user_priority: 50,
            default_timeout_secs: 600,
            max_timeout_secs: 7 * 24 * 3600,
            cancel_grace_secs: 10,
            output_cap_bytes: 64 << 20,
            max_upload_bytes: 100 << 20,
            max_json_bytes: 1 << 20,
            max_artifact_bytes: 256 << 20,
            max_artifact_files: 10_000,
            max_legacy_result_bytes: 64 << 20,
            max_ws_message_bytes: 1 << 20,
            heartbeat_secs: 10,
            rate_limit_per_min: 100,
            read_rate_limit_per_sec: 20,
            read_rate_limit_burst: 40,
            login_rate_limit_per_min: 10,
            password_hash_concurrency: 2,
            allowed_origins: Vec::new(),
            trusted_proxies: Vec::new(),
            public_url: None,
            cookie_secure: false,
            tls_cert: None,
            tls_key: None,
            cache_bytes: 64 << 20,
            store: None,
            store_pool_size: 16,
            max_client_sockets: 10_000,
            max_agent_sockets: 20_000,
            max_client_sockets_per_user: 64,
            client_socket_buffer_bytes: 512 * 1024,
            max_connections: 30_000,
            header_timeout_secs: 10,
            body_idle_timeout_secs: 30,
            body_total_timeout_secs: 15,
            job_retention_secs: 30 * 24 * 3600,
            file_retention_secs: 7 * 24 * 3600,
            janitor_interval_secs: 3600,
            drain_delay_secs: 2,
            allowed_registries: Vec::new(),
            default_image: None,
            legacy_image_mapping: false,
        }
    }
}

impl HubConfig {
    /// Checks the image settings: a default image that parses and comes from an allowed
    /// registry, and allowed-registry entries that are host names (`*.domain` allowed).
    pub fn check_images(&self) -> Result<(), crate::HubError> {
        for p in &self.allowed_registries {
            let host = p.strip_prefix("*.").unwrap_or(p);
            if host.is_empty()
                || host.contains('/')
                || host.bytes().any(|b| b.is_ascii_whitespace())
            {
                return Err(crate::HubError::Config(format!(
                    "allowed_registries: {p:?} is not a registry host (host[:port] or *.domain)"
                )));
            }
        }
        if let Some(d) = &self.default_image {
            let r = cmdx_proto::image::ImageRef::parse(d)
                .map_err(|e| crate::HubError::Config(format!("default_image: {e}")))?;
            if !self.allowed_registries.is_empty()
                && !self
                    .allowed_registries
                    .iter()
                    .any(|p| cmdx_proto::image::registry_matches(p, &r.registry))
            {
                return Err(crate::HubError::Config(format!(
                    "default_image: registry {} is not in allowed_registries",
                    r.registry
                )));
            }
        }
        Ok(())
    }

    /// Reads a TOML file over the defaults (unknown keys are an error).
    pub fn from_toml_file(path: &std::path::Path) -> Result<HubConfig, crate::HubError> {
        let text = std::fs::read_to_string(path).map_err(|source| crate::HubError::DataDir {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text)
            .map_err(|e| crate::HubError::Config(format!("{}: {e}", path.display())))
    }

    /// The effective configuration as TOML, with secrets redacted.
    pub fn to_redacted_toml(&self) -> String {
        let mut c = self.clone();
        for s in [
            &mut c.jwt_secret,
            &mut c.worker_secret,
            &mut c.legacy_worker_jwt_secret,
        ] {
            if s.is_some() {
                *s = Some("<redacted>".into());
            }
        }
        c.store = c.store.as_deref().map(redact_url_password);
        toml::to_string_pretty(&c).unwrap_or_default()
    }
}

impl std::fmt::Debug for HubConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redact = |s: &Option<String>| s.as_ref().map(|_| "<redacted>");
        f.debug_struct("HubConfig")
            .field("data_dir", &self.data_dir)
            .field("store", &self.store.as_deref().map(redact_url_password))
            .field("jwt_secret", &redact(&self.jwt_secret))
            .field("worker_secret", &redact(&self.worker_secret))
            .field(
                "legacy_worker_jwt_secret",
                &redact(&self.legacy_worker_jwt_secret),
            )
            .field("legacy_open_cidrs", &self.legacy_open_cidrs)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .field("reconnect_grace_secs", &self.reconnect_grace_secs)
            .field("output_cap_bytes", &self.output_cap_bytes)
            .field("max_upload_bytes", &self.max_upload_bytes)
            .field("max_artifact_bytes", &self.max_artifact_bytes)
            .field("max_artifact_files", &self.max_artifact_files)
            .field("rate_limit_per_min", &self.rate_limit_per_min)
            .field("read_rate_limit_per_sec", &self.read_rate_limit_per_sec)
            .field("read_rate_limit_burst", &self.read_rate_limit_burst)
            .finish_non_exhaustive()
    }
}

/// `scheme://user:PASSWORD@host/...` with the password replaced by `<redacted>`.
pub fn redact_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) if userinfo.contains(':') => {
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{scheme}://{user}:<redacted>@{host}{tail}")
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_store_url_password_is_redacted() {
        use super::redact_url_password as r;
        assert_eq!(
            r("postgres://cmdx:s3cr@t@db:5432/cmdx"),
            "postgres://cmdx:<redacted>@db:5432/cmdx"
        );
        assert_eq!(r("postgres://cmdx@db/cmdx"), "postgres://cmdx@db/cmdx");
        assert_eq!(r("not a url"), "not a url");
    }
}
