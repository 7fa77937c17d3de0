//! The long-running commands: `cmdx hub`, `cmdx agent` and `cmdx dev`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;

/// Declares [`HubSettings`] from one line per setting: its flag (the field name), its type on
/// the command line, the [`cmdx_hub::HubConfig`] field it sets (its TOML key), its environment
/// variable and any further clap options. The struct, its flags, env names and help, and
/// [`HubSettings::apply`] all come from that one line.
macro_rules! hub_settings {
    ($(
        $(#[$doc:meta])*
        $flag:ident: $ty:ty => $key:ident, $env:literal $(, $opt:ident = $val:expr)*;
    )*) => {
        /// Hub settings shared by `cmdx hub` and `cmdx dev` (each also readable from `CMDX_*`
        /// env; a flag wins over its env variable).
        #[derive(clap::Args)]
        pub struct HubSettings {
            $(
                $(#[$doc])*
                #[arg(long, env = $env $(, $opt = $val)*)]
                $flag: $ty,
            )*
        }

        impl HubSettings {
            /// Applies the settings given (by flag or env) over `c` (defaults, or the file).
            pub fn apply(&self, c: &mut cmdx_hub::HubConfig) {
                $( Overlay::overlay(&self.$flag, &mut c.$key); )*
            }
        }
    };
}

/// A setting as given on the command line, laid over the configuration's value when given.
trait Overlay<Target> {
    /// Replaces `target` when this setting was given.
    fn overlay(&self, target: &mut Target);
}

/// A scalar: given when `Some` (`Option<String>` settings become `Some` in the config).
impl<T: Clone + Into<U>, U> Overlay<U> for Option<T> {
    fn overlay(&self, target: &mut U) {
        if let Some(v) = self {
            *target = v.clone().into();
        }
    }
}

/// A comma-separated list: given when not empty, and then replaces the whole list.
impl<T: Clone> Overlay<Vec<T>> for Vec<T> {
    fn overlay(&self, target: &mut Vec<T>) {
        if !self.is_empty() {
            target.clone_from(self);
        }
    }
}

hub_settings! {
    /// Where records live: a PostgreSQL URL (`postgres://USER@HOST:PORT/DB`) that several hubs
    /// share; unset, sled in the data folder.
    store: Option<String> => store, "CMDX_STORE", hide_env_values = true;
    /// Most connections to the PostgreSQL store per hub.
    store_pool_size: Option<usize> => store_pool_size, "CMDX_STORE_POOL_SIZE";
    /// Reconnect grace for disconnected workers, seconds.
    reconnect_grace_secs: Option<u64> => reconnect_grace_secs, "CMDX_RECONNECT_GRACE_SECS";
    /// Writes per minute per user (per address when anonymous): submit, execute, upload,
    /// cancel, user and token admin; also the burst (0 disables).
    rate_limit_per_min: Option<u32> => rate_limit_per_min, "CMDX_RATE_LIMIT_PER_MIN";
    /// Reads and polls per second per user (per address when anonymous): status, output,
    /// lists, workers, me (0 disables).
    read_rate_limit_per_sec: Option<u32> => read_rate_limit_per_sec, "CMDX_READ_RATE_LIMIT_PER_SEC";
    /// Reads allowed at once per user (the read bucket's size).
    read_rate_limit_burst: Option<u32> => read_rate_limit_burst, "CMDX_READ_RATE_LIMIT_BURST";
    /// Login attempts per minute per client address (0 disables).
    login_rate_limit_per_min: Option<u32> => login_rate_limit_per_min, "CMDX_LOGIN_RATE_LIMIT_PER_MIN";
    /// Password hashes or verifications (argon2, ~19 MiB each) run at once; more wait up to
    /// 5 s, then answer 503.
    password_hash_concurrency: Option<u32> => password_hash_concurrency, "CMDX_PASSWORD_HASH_CONCURRENCY";
    /// Most live WebSockets (browser tabs, `cmdx logs -f`) one user may hold open; more answer
    /// 429 too_many_sockets.
    max_client_sockets_per_user: Option<usize> => max_client_sockets_per_user, "CMDX_MAX_CLIENT_SOCKETS_PER_USER";
    /// Largest upload in bytes.
    max_upload_bytes: Option<u64> => max_upload_bytes, "CMDX_MAX_UPLOAD_BYTES";
    /// Most artifact bytes (uncompressed) kept per job.
    max_artifact_bytes: Option<u64> => max_artifact_bytes, "CMDX_MAX_ARTIFACT_BYTES";
    /// Most artifact files kept per job.
    max_artifact_files: Option<u32> => max_artifact_files, "CMDX_MAX_ARTIFACT_FILES";
    /// Output kept per job in bytes.
    output_cap_bytes: Option<u64> => output_cap_bytes, "CMDX_OUTPUT_CAP_BYTES";
    /// Largest WebSocket message in bytes.
    max_ws_message_bytes: Option<usize> => max_ws_message_bytes, "CMDX_MAX_WS_MESSAGE_BYTES";
    /// Shared secret of the original system's worker JWTs (enables them).
    legacy_worker_jwt_secret: Option<String> => legacy_worker_jwt_secret, "CMDX_LEGACY_WORKER_JWT_SECRET", hide_env_values = true;
    /// Admit unauthenticated legacy workers from these CIDRs (comma-separated; off by default).
    legacy_open_cidrs: Vec<String> => legacy_open_cidrs, "CMDX_LEGACY_OPEN_CIDRS", value_delimiter = ',';
    /// Default attempts before worker_lost.
    max_attempts: Option<u32> => default_max_attempts, "CMDX_MAX_ATTEMPTS";
    /// Most jobs one user may have queued; more submissions get 429 quota_exceeded (0: no
    /// limit). `cmdx user quota` sets a user's own.
    max_queued_per_user: Option<u32> => max_queued_per_user, "CMDX_MAX_QUEUED_PER_USER";
    /// Most jobs one user may have assigned or running; more wait in the queue (0: no limit).
    max_running_per_user: Option<u32> => max_running_per_user, "CMDX_MAX_RUNNING_PER_USER";
    /// Highest job priority users other than admins may ask for (admins: up to 100).
    max_user_priority: Option<i32> => max_user_priority, "CMDX_MAX_USER_PRIORITY", allow_negative_numbers = true;
    /// Seconds between SIGTERM and closing connections (readyz 503 meanwhile).
    drain_delay_secs: Option<u64> => drain_delay_secs, "CMDX_DRAIN_DELAY_SECS";
    /// Finished jobs are deleted this many seconds after they finished.
    job_retention_secs: Option<u64> => job_retention_secs, "CMDX_JOB_RETENTION_SECS";
    /// Uploaded files unused for this many seconds are deleted.
    file_retention_secs: Option<u64> => file_retention_secs, "CMDX_FILE_RETENTION_SECS";
    /// Seconds between janitor passes (0: only on demand).
    janitor_interval_secs: Option<u64> => janitor_interval_secs, "CMDX_JANITOR_INTERVAL_SECS";
    /// Reverse proxies (CIDRs) whose X-Forwarded-For/-Proto are believed (comma-separated).
    trusted_proxies: Vec<String> => trusted_proxies, "CMDX_TRUSTED_PROXIES", value_delimiter = ',';
    /// Public base URL of the hub (for absolute URLs handed to legacy workers).
    public_url: Option<String> => public_url, "CMDX_PUBLIC_URL";
    /// Mark the session cookie Secure (the hub is reached over TLS through a proxy; implied by
    /// --tls-cert).
    cookie_secure: Option<bool> => cookie_secure, "CMDX_COOKIE_SECURE";
    /// Serve HTTPS with this PEM certificate chain (leaf first); needs --tls-key. Reread with
    /// the key on SIGHUP.
    tls_cert: Option<PathBuf> => tls_cert, "CMDX_TLS_CERT", value_name = "PEM";
    /// PEM private key of --tls-cert.
    tls_key: Option<PathBuf> => tls_key, "CMDX_TLS_KEY", value_name = "PEM";
    /// Extra origins allowed for browser WebSockets (comma-separated).
    allowed_origins: Vec<String> => allowed_origins, "CMDX_ALLOWED_ORIGINS", value_delimiter = ',';
    /// Registries job images may come from (comma-separated `host[:port]` or `*.domain`; default:
    /// any).
    allowed_registries: Vec<String> => allowed_registries, "CMDX_ALLOWED_REGISTRIES", value_delimiter = ',';
    /// Image of jobs that name none (default: the agent host's root).
    default_image: Option<String> => default_image, "CMDX_DEFAULT_IMAGE", value_name = "REF";
    /// Give legacy submitters' jobs the image the original system picked from their command.
    legacy_image_mapping: Option<bool> => legacy_image_mapping, "CMDX_LEGACY_IMAGE_MAPPING";
}

/// `cmdx hub`.
#[derive(clap::Args)]
pub struct HubArgs {
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "CMDX_LISTEN")]
    listen: Option<SocketAddr>,
    /// Data folder: store, blobs, secrets [default: ./cmdx-data].
    #[arg(long, env = "CMDX_DATA")]
    data: Option<PathBuf>,
    /// TOML file with any hub setting (see `--print-config` for every key); precedence is
    /// defaults < file < CMDX_* env < flags.
    #[arg(long, env = "CMDX_CONFIG_FILE")]
    config: Option<PathBuf>,
    /// Print the effective configuration (secrets redacted) and exit.
    #[arg(long)]
    print_config: bool,
    #[command(flatten)]
    settings: HubSettings,
}

impl HubArgs {
    /// The effective hub configuration: defaults < file < env < flags.
    pub fn config(&self) -> anyhow::Result<cmdx_hub::HubConfig> {
        let mut c = match &self.config {
            Some(path) => cmdx_hub::HubConfig::from_toml_file(path)?,
            None => cmdx_hub::HubConfig::default(),
        };
        if let Some(l) = self.listen {
            c.listen = l.to_string();
        }
        if let Some(d) = &self.data {
            c.data_dir = d.clone();
        }
        self.settings.apply(&mut c);
        Ok(c)
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// `cmdx hub`: serves until SIGTERM/SIGINT, then shuts down gracefully.
pub async fn run_hub(args: HubArgs) -> anyhow::Result<()> {
    let config = args.config()?;
    if args.print_config {
        print!("{}", config.to_redacted_toml());
        return Ok(());
    }
    let listen: SocketAddr = config
        .listen
        .parse()
        .with_context(|| format!("listen address {:?}", config.listen))?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    let hub = cmdx_hub::open(config).await.context("opening the hub")?;
    reload_tls_on_sighup(hub.tls.clone())?;
    let scheme = if hub.tls.is_some() { "https" } else { "http" };
    // Tests and scripts read this line to learn the port.
    println!("cmdx hub listening on {scheme}://{addr}");
    cmdx_hub::serve(hub, listener, shutdown_signal())
        .await
        .context("serving")?;
    Ok(())
}

/// Rereads the TLS certificate and key on every SIGHUP (a renewal hook runs `systemctl reload`);
/// a pair that does not load is logged and the hub keeps serving the previous one. Without TLS
/// a SIGHUP is logged and ignored: a reload must never stop a hub.
fn reload_tls_on_sighup(tls: Option<std::sync::Arc<cmdx_hub::tls::Tls>>) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup()).context("watching SIGHUP")?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let Some(tls) = &tls else {
                tracing::info!("SIGHUP: nothing to reload (no --tls-cert)");
                continue;
            };
            match tls.reload() {
                Ok(()) => tracing::info!("TLS certificate reloaded"),
                Err(e) => tracing::error!(
                    error = %e,
                    "TLS reload failed; still serving the previous certificate"
                ),
            }
        }
    });
    Ok(())
}

/// Sandbox strictness on the command line.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum SandboxMode {
    /// Refuse to start unless every isolation layer is available.
    Strict,
    /// Start anyway and say loudly which layers are missing.
    BestEffort,
}

impl From<SandboxMode> for cmdx_sandbox::Mode {
    fn from(m: SandboxMode) -> Self {
        match m {
            SandboxMode::Strict => cmdx_sandbox::Mode::Strict,
            SandboxMode::BestEffort => cmdx_sandbox::Mode::BestEffort,
        }
    }
}

/// `cmdx agent`.
#[derive(clap::Args)]
pub struct AgentArgs {
    /// Hub base URL (`https://` for a hub serving TLS); for several hubs of a cluster, a
    /// comma-separated list: the agent connects to one and moves to the next when it cannot
    /// reach it (one load-balanced URL works too).
    #[arg(long, env = "CMDX_HUB")]
    hub: String,
    /// PEM file of a private CA to trust besides the system's roots, for an https:// hub whose
    /// certificate it signed.
    #[arg(long, env = "CMDX_CA_FILE", value_name = "PEM")]
    ca_file: Option<PathBuf>,
    /// Worker token (minted with `cmdx token worker` or `POST /api/workers/tokens`). Set the
    /// environment variable or use --token-file: a token on the command line is moved out of
    /// argv at start, but a process listing taken before that moment still shows it.
    #[arg(
        long,
        env = "CMDX_AGENT_TOKEN",
        hide_env_values = true,
        required_unless_present = "token_file"
    )]
    token: Option<String>,
    /// A file holding the worker token (only its owner may read it: mode 0600 or 0400).
    #[arg(long, env = "CMDX_AGENT_TOKEN_FILE", value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Jobs run at once.
    #[arg(long, default_value_t = 2)]
    concurrency: u32,
    /// Tags this agent serves (comma-separated).
    #[arg(long, value_delimiter = ',')]
    tags: Vec<String>,
    /// Agent state and job workspaces.
    #[arg(long, default_value = "./cmdx-agent")]
    work_dir: PathBuf,
    /// Sandbox strictness.
    #[arg(long, value_enum, default_value = "strict")]
    sandbox: SandboxMode,
    /// Fixed worker id (default: generated once and kept in the work dir).
    #[arg(long)]
    worker_id: Option<String>,
    /// Jobs run as uid/gid `uid_base + slot` when the agent is root. Given: exactly this range,
    /// or refuse to start if another agent on the host holds an overlapping one. Absent: the
    /// first free range from 40000 up, in steps of 1000 (claims live in /run/cmdx/uid-ranges).
    #[arg(long)]
    uid_base: Option<u32>,
    /// Memory limit per job in MiB (RAM plus the tmpfs pages it writes).
    #[arg(long, default_value_t = 512)]
    memory_mb: u64,
    /// Size of each job's workspace (job dir plus tmp) in MiB.
    #[arg(long, default_value_t = 1024)]
    disk_mb: u64,
    /// Processes and threads per job.
    #[arg(long, default_value_t = 256)]
    pids: u64,
    /// Serve Prometheus metrics (`GET /metrics`) on this address, e.g. 127.0.0.1:9187.
    #[arg(long, env = "CMDX_AGENT_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Disk budget of the job image cache in MiB (unpacked images); images no job uses are
    /// evicted, least recently used first, beyond it.
    #[arg(long, env = "CMDX_IMAGE_CACHE_MB", default_value_t = 10240)]
    image_cache_mb: u64,
    /// Largest job image accepted, in MiB downloaded (compressed layers); unpacked images may
    /// be twice as large.
    #[arg(long, env = "CMDX_MAX_IMAGE_MB", default_value_t = 2048)]
    max_image_mb: u64,
    /// Registries pulled over plain HTTP besides loopback ones (comma-separated host:port).
    #[arg(long, env = "CMDX_INSECURE_REGISTRIES", value_delimiter = ',')]
    insecure_registries: Vec<String>,
    /// Registry credentials in Docker's config.json form (`{"auths": {"REGISTRY": {"auth":
    /// "base64(user:password)"}}}`); only the agent reads them, never a job.
    #[arg(long, env = "CMDX_REGISTRY_AUTH_FILE", value_name = "FILE")]
    registry_auth_file: Option<PathBuf>,
}

/// Serves `GET /metrics` (Prometheus text of this process's recorder) on `listener` through
/// hyper's HTTP/1 server; any other request is 404. One request per connection, at most 8 KiB of
/// request head, received within 5 s.
async fn serve_metrics(listener: tokio::net::TcpListener) {
    let Some(handle) = cmdx_hub::metrics::install() else {
        tracing::warn!("metrics recorder unavailable; --metrics-listen serves nothing");
        return;
    };
    loop {
        let Ok((sock, _)) = listener.accept().await else {
            continue;
        };
        let handle = handle.clone();
        let service = hyper::service::service_fn(move |req: hyper::Request<_>| {
            let (status, body) =
                if req.method() == hyper::Method::GET && req.uri().path() == "/metrics" {
                    (hyper::StatusCode::OK, handle.render())
                } else {
                    (
                        hyper::StatusCode::NOT_FOUND,
                        "only GET /metrics is served here\n".to_string(),
                    )
                };
            let mut resp = hyper::Response::new(body);
            *resp.status_mut() = status;
            resp.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            std::future::ready(Ok::<_, std::convert::Infallible>(resp))
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(Duration::from_secs(5))
            .max_buf_size(8192)
            .keep_alive(false)
            .serve_connection(hyper_util::rt::TokioIo::new(sock), service);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "metrics connection");
            }
        });
    }
}

/// `cmdx dev`.
#[derive(clap::Args)]
pub struct DevArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Data folder (store, blobs, secrets, agent work dirs).
    #[arg(long, default_value = "./cmdx-data")]
    data: PathBuf,
    /// Local agents to start.
    #[arg(long, default_value_t = 2)]
    agents: u32,
    /// Jobs each agent runs at once.
    #[arg(long, default_value_t = 2)]
    concurrency: u32,
    /// Sandbox strictness of the local agents.
    #[arg(long, value_enum, default_value = "best-effort")]
    sandbox: SandboxMode,
    #[command(flatten)]
    settings: HubSettings,
}

/// Watches SIGTERM/SIGINT/SIGQUIT and turns them into agent controls: the first TERM or INT
/// drains (aborts when `abort_first`), a second one (or QUIT) aborts.
fn control_from_signals(abort_first: bool) -> anyhow::Result<watch::Receiver<cmdx_agent::Control>> {
    use tokio::signal::unix::{SignalKind, signal};
    let (tx, rx) = watch::channel(cmdx_agent::Control::Run);
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut quit = signal(SignalKind::quit())?;
    tokio::spawn(async move {
        let mut seen = u32::from(abort_first);
        loop {
            tokio::select! {
                _ = term.recv() => seen += 1,
                _ = int.recv() => seen += 1,
                _ = quit.recv() => seen += 2,
            }
            let next = if seen >= 2 {
                cmdx_agent::Control::Abort
            } else {
                cmdx_agent::Control::Drain
            };
            eprintln!(
                "cmdx: {}",
                if next == cmdx_agent::Control::Abort {
                    "stopping: cancelling running jobs"
                } else {
                    "draining: finishing running jobs (signal again to cancel them)"
                }
            );
            let _ = tx.send(next);
        }
    });
    Ok(rx)
}

/// The worker token from `--token`/`CMDX_AGENT_TOKEN` or from `--token-file` (exactly one),
/// refusing a token file that other users may read.
fn agent_token(token: Option<String>, file: Option<&Path>) -> anyhow::Result<String> {
    use std::os::unix::fs::PermissionsExt as _;
    let token = match (token, file) {
        (Some(t), None) => t,
        (None, Some(path)) => {
            let mode = std::fs::metadata(path)
                .map_err(|e| anyhow::anyhow!("token file {}: {e}", path.display()))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                anyhow::bail!(
                    "token file {} has mode {:o}: other users could read the worker token; \
                     chmod 600 it",
                    path.display(),
                    mode & 0o777
                );
            }
            std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("token file {}: {e}", path.display()))?
        }
        (Some(_), Some(_)) => anyhow::bail!(
            "give the worker token once: --token / CMDX_AGENT_TOKEN, or --token-file / \
             CMDX_AGENT_TOKEN_FILE"
        ),
        (None, None) => {
            anyhow::bail!("a worker token is required (--token-file or CMDX_AGENT_TOKEN)")
        }
    };
    let token = token.trim().to_string();
    if token.is_empty() {
        anyhow::bail!("the worker token is empty");
    }
    Ok(token)
}

/// `cmdx agent`: runs until drained or aborted; 0 on a clean exit.
pub async fn run_agent(args: AgentArgs) -> anyhow::Result<i32> {
    if let Some(e) = args.tags.iter().find_map(|t| cmdx_proto::tag_error(t)) {
        anyhow::bail!("--tags: {e}");
    }
    let token = agent_token(args.token, args.token_file.as_deref())?;
    let mut config = cmdx_agent::AgentConfig::new(args.hub, token);
    config.ca_file = args.ca_file;
    config.concurrency = args.concurrency.max(1);
    config.tags = args.tags;
    config.work_dir = args.work_dir;
    config.sandbox_mode = args.sandbox.into();
    config.worker_id = args.worker_id;
    if let Some(base) = args.uid_base {
        config.uid_base = base;
        config.uid_base_auto = false;
    }
    config.limits.memory_bytes = args.memory_mb.max(16) << 20;
    config.limits.disk_bytes = args.disk_mb.max(1) << 20;
    config.limits.pids = args.pids.max(4);
    config.images.cache_bytes = args.image_cache_mb << 20;
    config.images.max_download_bytes = args.max_image_mb.max(1) << 20;
    config.images.max_unpacked_bytes = args.max_image_mb.max(1) << 21;
    config.images.insecure_registries = args.insecure_registries;
    if let Some(path) = &args.registry_auth_file {
        config.images.credentials = cmdx_agent::read_credentials(path)
            .map_err(|e| anyhow::anyhow!("registry auth: {e}"))?;
    }
    if let Some(addr) = args.metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} for metrics"))?;
        tokio::spawn(serve_metrics(listener));
    }
    let control = control_from_signals(false)?;
    cmdx_agent::run(config, control).await.context("agent")?;
    Ok(0)
}

/// Where host-wide work dirs of `cmdx dev` agents go when the data folder is not traversable.
const DEV_AGENTS_FALLBACK: &str = "/var/lib/cmdx/dev";

/// Where `cmdx dev` puts its agents' work dirs: `DATA/agents`, unless the agents run jobs as
/// unprivileged uids (root) without a private root (an old kernel) and some parent of the data
/// folder is closed to them (root's home is 0700 on Debian): then a folder of their own under [`DEV_AGENTS_FALLBACK`], one per data
/// folder (named by a hash of its absolute path, so two dev clusters never share agents).
fn dev_agents_dir(data: &std::path::Path) -> anyhow::Result<PathBuf> {
    use sha2::Digest as _;
    let inside = data.join("agents");
    let root = nix::unistd::geteuid().is_root();
    // Jobs in a private root never walk the host path of their workspace.
    if !root || cmdx_sandbox::probe().private_root {
        return Ok(inside);
    }
    std::fs::create_dir_all(&inside).with_context(|| format!("creating {}", inside.display()))?;
    let Err(why) = cmdx_agent::check_traversable(&inside) else {
        return Ok(inside);
    };
    let data =
        std::fs::canonicalize(data).with_context(|| format!("resolving {}", data.display()))?;
    let hash = hex::encode(&sha2::Sha256::digest(data.as_os_str().as_encoded_bytes())[..8]);
    let dir = PathBuf::from(DEV_AGENTS_FALLBACK).join(hash);
    create_traversable(&dir)?;
    cmdx_agent::check_traversable(&dir).with_context(|| {
        format!(
            "no traversable home for the local agents at {}",
            dir.display()
        )
    })?;
    eprintln!(
        "cmdx dev: {why}; the local agents work in {} instead",
        dir.display()
    );
    Ok(dir)
}

/// Creates `dir` and its missing parents as mode 0711 (jobs' uids may pass through, not list).
fn create_traversable(dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o711)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))
}

/// `cmdx dev`: a hub plus `--agents` local sandboxed agents in one process tree.
pub async fn run_dev(args: DevArgs) -> anyhow::Result<()> {
    let mut config = cmdx_hub::HubConfig {
        data_dir: args.data.clone(),
        ..Default::default()
    };
    args.settings.apply(&mut config);
    if config.tls_cert.is_some() || config.tls_key.is_some() {
        // Its agents reach it at 127.0.0.1, a name a real certificate does not carry.
        anyhow::bail!("cmdx dev serves plain HTTP on its own address; use cmdx hub for TLS");
    }
    let hub = cmdx_hub::open(config).await.context("opening the hub")?;
    let admin = hub
        .store
        .list_users()
        .await
        .context("reading users")?
        .into_iter()
        .find(|u| u.role == "admin")
        .context("no admin user")?;
    let ids: Vec<String> = (0..args.agents).map(|i| format!("dev-agent-{i}")).collect();
    let token = cmdx_hub::local_agents_token(&hub, &admin.id, &ids)
        .await
        .map_err(|e| anyhow::anyhow!("the local agents' worker token: {}", e.message))?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    let url = format!("http://{addr}");
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let server = tokio::spawn(cmdx_hub::serve(hub, listener, async move {
        let _ = stop_rx.wait_for(|s| *s).await;
    }));

    let agents_dir = dev_agents_dir(&args.data)?;
    // A development cluster stops promptly: the first signal cancels running jobs.
    let control = control_from_signals(true)?;
    let mut agents = tokio::task::JoinSet::new();
    for i in 0..args.agents {
        let mut c = cmdx_agent::AgentConfig::new(url.clone(), token.clone());
        c.worker_id = Some(ids[i as usize].clone());
        c.work_dir = agents_dir.join(format!("agent-{i}"));
        c.concurrency = args.concurrency.max(1);
        c.sandbox_mode = args.sandbox.into();
        c.uid_base = 40_000 + i * 1_000;
        let control = control.clone();
        agents.spawn(async move { (i, cmdx_agent::run(c, control).await) });
    }
    let who = match std::env::var("CMDX_ADMIN_EMAIL") {
        Ok(e) if !e.is_empty() => format!("sign in as {e}"),
        _ => format!(
            "admin credentials in {}",
            args.data.join("admin-credentials").display()
        ),
    };
    // Tests and scripts read this line to learn the URL.
    println!("cmdx dev ready: {url} ({} agents; {who})", args.agents);

    let mut failed = None;
    while let Some(res) = agents.join_next().await {
        match res {
            Ok((_, Ok(()))) => {}
            Ok((i, Err(e))) => {
                eprintln!("cmdx: agent {i} stopped: {e}");
                failed.get_or_insert(format!("agent {i}: {e}"));
                // One agent failing to start (e.g. strict sandbox) stops the whole dev cluster.
                agents.abort_all();
            }
            Err(e) if e.is_cancelled() => {}
            Err(e) => {
                failed.get_or_insert(format!("agent task: {e}"));
            }
        }
    }
    let _ = stop_tx.send(true);
    match tokio::time::timeout(Duration::from_secs(15), server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => return Err(e).context("hub"),
        Ok(Err(e)) => anyhow::bail!("hub task: {e}"),
        Err(_) => anyhow::bail!("hub did not stop within 15 s"),
    }
    if agents_dir != args.data.join("agents") {
        remove_dev_agents_home(&agents_dir);
    }
    match failed {
        Some(f) => anyhow::bail!("{f}"),
        None => Ok(()),
    }
}

/// Removes a fallback agents' home once every local agent has stopped, unless something is
/// still mounted below it (a job workspace a crashed agent left: the next run's agents clean
/// those up first, and deleting through a mount would reach into it).
fn remove_dev_agents_home(dir: &std::path::Path) {
    let mounted = std::fs::read_to_string("/proc/self/mountinfo").map(|info| {
        info.lines()
            .filter_map(|l| l.split(' ').nth(4))
            .any(|m| std::path::Path::new(m).starts_with(dir))
    });
    if let Ok(false) = mounted
        && let Err(e) = std::fs::remove_dir_all(dir)
    {
        eprintln!("cmdx dev: cannot remove {}: {e}", dir.display());
    }
}

/// `cmdx backup`: downloads an online backup from a running hub (admin).
#[derive(clap::Args)]
pub struct BackupArgs {
    /// Hub, token and CA file: flags, then CMDX_HUB / CMDX_TOKEN / CMDX_CA_FILE, then the login
    /// saved by `cmdx login` (as every client command); the token must be an admin's.
    #[command(flatten)]
    conn: crate::client::ConnArgs,
    /// Where to write the archive.
    #[arg(long)]
    out: PathBuf,
}

/// `cmdx restore`: writes a new data folder from a backup archive (no hub may run on it).
#[derive(clap::Args)]
pub struct RestoreArgs {
    /// The archive written by `cmdx backup`.
    #[arg(long)]
    from: PathBuf,
    /// The new data folder (must be empty or absent).
    #[arg(long)]
    data: PathBuf,
}

/// Streams `GET /api/admin/backup` to a file; the file appears only when complete.
pub async fn run_backup(args: BackupArgs) -> anyhow::Result<i32> {
    use futures_util::StreamExt;
    use tokio::io::AsyncWriteExt;
    let conn = crate::client::config::resolve(&args.conn)?;
    let api = crate::client::api::Api::new(&conn)?;
    api.token()?;
    let resp = api
        .send(
            api.request(reqwest::Method::GET, "/api/admin/backup"),
            "backup",
        )
        .await?;
    let tmp = args.out.with_extension("partial");
    // The archive holds the hub's signing keys: owner-only whatever the umask.
    let mut file = cmdx_hub::private::create_file_async(&tmp)
        .await
        .with_context(|| format!("creating {}", tmp.display()))?;
    let mut stream = resp.bytes_stream();
    let mut total = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.context("downloading the backup")?;
        total += chunk.len() as u64;
        file.write_all(&chunk).await.context("writing the backup")?;
    }
    file.sync_all().await.context("writing the backup")?;
    tokio::fs::rename(&tmp, &args.out)
        .await
        .with_context(|| format!("moving the backup to {}", args.out.display()))?;
    eprintln!(
        "cmdx: backup of {total} bytes written to {}",
        args.out.display()
    );
    Ok(0)
}

/// Restores an archive into a new data folder.
pub async fn run_restore(args: RestoreArgs) -> anyhow::Result<i32> {
    let records = tokio::task::spawn_blocking(move || {
        cmdx_hub::backup::restore(&args.from, &args.data).map(|n| (n, args.data))
    })
    .await
    .context("restore task")??;
    eprintln!(
        "cmdx: restored {} store records into {}; start a hub on it with --data",
        records.0,
        records.1.display()
    );
    Ok(0)
}

/// `cmdx migrate`.
#[derive(clap::Args)]
pub struct MigrateArgs {
    /// The data folder of a stopped sled hub.
    #[arg(long)]
    from: PathBuf,
    /// The PostgreSQL database to fill (`postgres://USER[:PASSWORD]@HOST:PORT/DB`, empty).
    #[arg(long, env = "CMDX_STORE", hide_env_values = true)]
    to: String,
}

/// Copies a sled hub into PostgreSQL, saying what it copies.
pub async fn run_migrate(args: MigrateArgs) -> anyhow::Result<i32> {
    let shown = cmdx_hub::config::redact_url_password(&args.to);
    eprintln!("cmdx: copying {} into {shown}", args.from.display());
    let progress = |step: &str| eprintln!("cmdx: copied {step}");
    let c = cmdx_hub::migrate::migrate(&args.from, &args.to, &progress).await?;
    eprintln!(
        "cmdx: done: {} users, {} tokens/sessions/workers, {} files, {} blobs, {} jobs with {} \
         output chunks; start the hubs with --store {shown}",
        c.users, c.credentials, c.files, c.blobs, c.jobs, c.chunks
    );
    Ok(0)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cmd {
        #[command(flatten)]
        hub: HubArgs,
    }

    fn config(args: &[&str]) -> cmdx_hub::HubConfig {
        let cmd = Cmd::try_parse_from(std::iter::once("hub").chain(args.iter().copied()))
            .expect("flags parse");
        cmd.hub.config().expect("configuration")
    }

    /// Defaults < file < flags, each setting under its own key; a flag left out keeps the
    /// file's value, a list flag replaces the file's list.
    #[test]
    fn flags_lie_over_the_file_and_the_file_over_the_defaults() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("hub.toml");
        std::fs::write(
            &file,
            "rate_limit_per_min = 5\ndefault_max_attempts = 4\ntrusted_proxies = [\"10.0.0.0/8\"]\n",
        )
        .expect("write config");
        let file = file.to_str().expect("utf-8 path");
        let defaults = cmdx_hub::HubConfig::default();

        let c = config(&["--config", file]);
        assert_eq!(c.rate_limit_per_min, 5);
        assert_eq!(c.default_max_attempts, 4);
        assert_eq!(c.trusted_proxies, ["10.0.0.0/8"]);
        assert_eq!(c.read_rate_limit_per_sec, defaults.read_rate_limit_per_sec);
        assert_eq!(c.public_url, None);

        let c = config(&[
            "--config",
            file,
            "--rate-limit-per-min",
            "7",
            "--max-attempts",
            "2",
            "--trusted-proxies",
            "1.2.3.4,fd00::/8",
            "--public-url",
            "https://cmdx.example",
            "--cookie-secure",
            "true",
        ]);
        assert_eq!(c.rate_limit_per_min, 7);
        assert_eq!(c.default_max_attempts, 2);
        assert_eq!(c.trusted_proxies, ["1.2.3.4", "fd00::/8"]);
        assert_eq!(c.public_url.as_deref(), Some("https://cmdx.example"));
        assert!(c.cookie_secure);
        assert_eq!(c.read_rate_limit_burst, defaults.read_rate_limit_burst);
        assert_eq!(c.tls_cert, None);

        let c = config(&[
            "--tls-cert",
            "/etc/cmdx/hub.crt",
            "--tls-key",
            "/etc/cmdx/hub.key",
        ]);
        assert_eq!(c.tls_cert, Some(PathBuf::from("/etc/cmdx/hub.crt")));
        assert_eq!(c.tls_key, Some(PathBuf::from("/etc/cmdx/hub.key")));
    }
}
