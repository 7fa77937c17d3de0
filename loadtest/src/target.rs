//! The hub under test: a fresh `cmdx hub` started next to the generator (temp data folder,
//! loopback port, rate limits off) or an existing one given with `--hub`; plus the REST calls
//! every scenario needs (sign in, mint a worker token, submit).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::http::Conn;

/// Admin e-mail used for a hub the generator starts (and the default for `--hub`).
pub const ADMIN_EMAIL: &str = "loadtest@cmdx.local";
/// Admin password used for a hub the generator starts.
pub const ADMIN_PASSWORD: &str = "loadtest-password-1";

/// The private subnet (`10.231.0.0/16`) of the chaos scenario's network namespaces: the only
/// addresses besides loopback the generator sends traffic to. They exist only on this machine.
pub const PRIVATE_PREFIX: &str = "10.231.";

/// Spawns `cmdx hub` on `listen` with its store in `data` (rate limits off, the generator's
/// admin) and waits until it listens; returns the process and its URL. Its stderr goes to
/// `stderr`.
pub async fn spawn_hub(
    listen: &str,
    data: &std::path::Path,
    extra: &[String],
    stderr: Stdio,
) -> anyhow::Result<(Child, String)> {
    let (email, password) = admin_credentials();
    let mut cmd = Command::new(cmdx_bin()?);
    cmd.arg("hub")
        .arg("--listen")
        .arg(listen)
        .arg("--data")
        .arg(data)
        .arg("--rate-limit-per-min")
        .arg("0")
        .arg("--read-rate-limit-per-sec")
        .arg("0")
        .arg("--login-rate-limit-per-min")
        .arg("0")
        // The relay scenario's subscribers are all the generator's admin.
        .arg("--max-client-sockets-per-user")
        .arg("1000000")
        .args(extra)
        .env("CMDX_ADMIN_EMAIL", &email)
        .env("CMDX_ADMIN_PASSWORD", &password);
    owned_child(&mut cmd, Stdio::piped(), stderr);
    let mut child = cmd.spawn().context("spawning cmdx hub")?;
    let stdout = child.stdout.take().context("hub stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let url = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(l) = lines.next_line().await? {
            if let Some(u) = l.strip_prefix("cmdx hub listening on ") {
                return Ok::<_, anyhow::Error>(u.trim().to_string());
            }
        }
        bail!("cmdx hub exited before listening")
    })
    .await
    .context("cmdx hub did not start within 30 s")??;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((child, url))
}

/// Settings of every `cmdx` process the generator runs: log level from `LOADTEST_HUB_LOG`
/// (default `error`), no stdin, the given stdout and stderr, killed when dropped or when the
/// generator dies.
pub fn owned_child(cmd: &mut Command, stdout: Stdio, stderr: Stdio) {
    cmd.env(
        "RUST_LOG",
        std::env::var("LOADTEST_HUB_LOG").unwrap_or_else(|_| "error".into()),
    )
    .stdin(Stdio::null())
    .stdout(stdout)
    .stderr(stderr)
    .kill_on_drop(true);
    die_with_parent(cmd);
}

/// Makes the child get SIGKILL when this generator dies, even by `kill -9`, so a crashed run
/// leaves no hub or agent behind.
fn die_with_parent(cmd: &mut Command) {
    // SAFETY: the closure only calls prctl(2) and getppid(2), both async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
            Ok(())
        });
    }
}

/// A hub to load.
pub struct Target {
    /// `http://host:port`.
    pub url: String,
    /// `host:port`.
    pub addr: String,
    /// `host:port` of every hub under load (several with `--hubs`; the first is `addr`).
    pub addrs: Vec<String>,
    /// Spreads WebSockets over `addrs`.
    next_ws: std::sync::atomic::AtomicUsize,
    /// The other hubs' processes and data folders (`--hubs`).
    more: std::sync::Mutex<Vec<Child>>,
    _more_data: Vec<tempfile::TempDir>,
    /// A private PostgreSQL this generator started (`--store postgres`).
    _pg: Option<cmdx_e2e::pg::PrivateServer>,
    /// Hub process id, when known (for `/proc` samples).
    pub pid: Option<u32>,
    /// The admin's bearer token.
    pub admin: String,
    /// Who submits and at which priorities (`--users`, `--priorities`); unset: the admin, all
    /// at priority 0.
    pub mix: std::sync::OnceLock<Mix>,
    child: std::sync::Mutex<Option<Child>>,
    _data: Option<tempfile::TempDir>,
}

/// The `cmdx` binary next to this executable.
pub fn cmdx_bin() -> anyhow::Result<PathBuf> {
    if let Ok(p) = std::env::var("CMDX_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().context("locating the loadtest binary")?;
    let bin = exe
        .parent()
        .context("loadtest binary has no folder")?
        .join("cmdx");
    if !bin.exists() {
        bail!(
            "{} is missing: build it with `cargo build [--release] -p cmdx -p cmdx-loadtest`",
            bin.display()
        );
    }
    Ok(bin)
}

/// The admin credentials (`CMDX_ADMIN_EMAIL` / `CMDX_ADMIN_PASSWORD`, else the generator's own).
fn admin_credentials() -> (String, String) {
    let email = std::env::var("CMDX_ADMIN_EMAIL").unwrap_or_else(|_| ADMIN_EMAIL.to_string());
    let password =
        std::env::var("CMDX_ADMIN_PASSWORD").unwrap_or_else(|_| ADMIN_PASSWORD.to_string());
    (email, password)
}

impl Target {
    /// Starts a fresh hub on a temp data folder and a loopback port. It inherits the raised
    /// open-file limit of the generator.
    pub async fn start(extra: &[String]) -> anyhow::Result<Target> {
        let data = tempfile::Builder::new()
            .prefix("cmdx-loadtest-")
            .tempdir()
            .context("creating the hub's temp data folder")?;
        let (child, url) = spawn_hub(
            "127.0.0.1:0",
            &data.path().join("data"),
            extra,
            Stdio::inherit(),
        )
        .await?;
        let pid = child.id();
        let mut t = Target::new(url, pid)?;
        t.child = std::sync::Mutex::new(Some(child));
        t._data = Some(data);
        let (email, password) = admin_credentials();
        t.admin = t.login(&email, &password).await?;
        Ok(t)
    }

    /// A hub the chaos scenario runs and restarts itself on `url` (loopback or its private
    /// network namespace subnet, see `PRIVATE_PREFIX`); signs in as the admin.
    pub async fn private(url: &str) -> anyhow::Result<Target> {
        let mut t = Target::new(url.to_string(), None)?;
        let (email, password) = admin_credentials();
        t.admin = t.login(&email, &password).await?;
        Ok(t)
    }

    /// Spreads WebSockets and pooled requests over the hubs at `urls` (`http://host:port`)
    /// besides this one (the chaos scenario's cluster).
    pub fn spread_over(&mut self, urls: &[String]) {
        self.addrs = urls
            .iter()
            .map(|u| {
                u.trim_start_matches("http://")
                    .trim_end_matches('/')
                    .to_string()
            })
            .collect();
    }

    /// Uses a running hub at `url` (its `/proc` figures only when `pid` is given).
    pub async fn attach(url: &str, pid: Option<u32>) -> anyhow::Result<Target> {
        let mut t = Target::new(url.trim_end_matches('/').to_string(), pid)?;
        let (email, password) = admin_credentials();
        t.admin = t.login(&email, &password).await?;
        Ok(t)
    }

    fn new(url: String, pid: Option<u32>) -> anyhow::Result<Target> {
        let addr = url
            .strip_prefix("http://")
            .with_context(|| format!("{url}: only http:// loopback hubs are supported"))?
            .trim_end_matches('/')
            .to_string();
        let host = addr.rsplit_once(':').map(|(h, _)| h).unwrap_or(&addr);
        if !matches!(host, "127.0.0.1" | "localhost" | "[::1]") && !host.starts_with(PRIVATE_PREFIX)
        {
            bail!("{url}: the load generator only sends traffic to loopback");
        }
        Ok(Target {
            url,
            addrs: vec![addr.clone()],
            addr,
            pid,
            admin: String::new(),
            mix: std::sync::OnceLock::new(),
            child: std::sync::Mutex::new(None),
            _data: None,
            next_ws: std::sync::atomic::AtomicUsize::new(0),
            more: std::sync::Mutex::new(Vec::new()),
            _more_data: Vec::new(),
            _pg: None,
        })
    }

    /// `ws://host:port{path}`, on each hub under load in turn.
    pub fn ws_url(&self, path: &str) -> String {
        let at = self
            .next_ws
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            % self.addrs.len();
        format!("ws://{}{path}", self.addrs[at])
    }

    /// Starts `hubs` hubs on one PostgreSQL store: `store` is its URL, or `postgres` for a
    /// private server this generator starts (and stops). CPU and memory figures are the first
    /// hub's.
    pub async fn start_cluster(hubs: usize, store: &str) -> anyhow::Result<Target> {
        let mut pg = None;
        let url = if store == "postgres" {
            let server = cmdx_e2e::pg::PrivateServer::start()?;
            let url = server.create_database("loadtest")?;
            pg = Some(server);
            url
        } else {
            store.to_string()
        };
        let extra = vec!["--store".to_string(), url];
        // The first hub migrates the schema; the others start after it.
        let mut t = Target::start(&extra).await?;
        for _ in 1..hubs.max(1) {
            let data = tempfile::Builder::new()
                .prefix("cmdx-loadtest-")
                .tempdir()
                .context("creating a hub's temp data folder")?;
            let (child, url) = spawn_hub(
                "127.0.0.1:0",
                &data.path().join("data"),
                &extra,
                Stdio::inherit(),
            )
            .await?;
            let addr = url
                .strip_prefix("http://")
                .context("hub URL")?
                .trim_end_matches('/')
                .to_string();
            t.addrs.push(addr);
            t.more.lock().unwrap_or_else(|p| p.into_inner()).push(child);
            t._more_data.push(data);
        }
        t._pg = pg;
        Ok(t)
    }

    /// One request on a fresh connection, JSON in and out; fails unless 2xx.
    pub async fn call(
        &self,
        method: http::Method,
        path: &str,
        bearer: Option<&str>,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut c = Conn::open(&self.addr).await?;
        let auth = bearer.map(|t| format!("Bearer {t}"));
        let mut headers = Vec::new();
        if let Some(a) = &auth {
            headers.push(("authorization", a.as_str()));
        }
        let body = body.map(|b| Bytes::from(b.to_string()));
        let r = c.request(method, &self.addr, path, &headers, body).await?;
        if !(200..300).contains(&r.status) {
            bail!(
                "{path} answered {}: {}",
                r.status,
                String::from_utf8_lossy(&r.body)
            );
        }
        serde_json::from_slice(&r.body).with_context(|| format!("{path}: JSON body"))
    }

    /// Signs in; returns the bearer token.
    pub async fn login(&self, email: &str, password: &str) -> anyhow::Result<String> {
        let v = self
            .call(
                http::Method::POST,
                "/api/auth/login",
                None,
                Some(json!({"email": email, "password": password})),
            )
            .await
            .context("signing in as the admin (set CMDX_ADMIN_EMAIL/CMDX_ADMIN_PASSWORD)")?;
        v["token"]
            .as_str()
            .map(str::to_string)
            .context("login answer has no token")
    }

    /// Mints a worker token as the admin.
    pub async fn worker_token(&self) -> anyhow::Result<String> {
        let v = self
            .call(
                http::Method::POST,
                "/api/workers/tokens",
                Some(&self.admin),
                Some(json!({"name": "loadtest"})),
            )
            .await
            .context("minting a worker token")?;
        v["token"]
            .as_str()
            .map(str::to_string)
            .context("token answer has no token")
    }

    /// Stops a hub this generator started (SIGTERM, then SIGKILL after 10 s).
    pub async fn stop(&self) {
        let more: Vec<Child> =
            std::mem::take(&mut *self.more.lock().unwrap_or_else(|p| p.into_inner()));
        for mut c in more {
            let _ = c.start_kill();
            let _ = c.wait().await;
        }
        let taken = self.child.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some(mut c) = taken else {
            return;
        };
        if let Some(pid) = c.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        if tokio::time::timeout(Duration::from_secs(10), c.wait())
            .await
            .is_err()
        {
            let _ = c.start_kill();
            let _ = c.wait().await;
        }
    }
}

/// The body of a submission whose command carries its intended send time (`lt:<µs>`), so the
/// worker that receives it can measure from when it *should* have been sent.
pub fn submit_body(command: &str, intended_us: u64, priority: i32) -> Bytes {
    let mut body = json!({"command": format!("{command} # lt:{intended_us}"), "timeout": 600});
    if priority != 0 {
        body["priority"] = json!(priority);
    }
    Bytes::from(body.to_string())
}

/// Several submitters and priorities (`--users N --priorities`).
pub struct Mix {
    /// `Bearer …` of each submitting user; submission `i` goes as user `i % len`.
    pub auths: Vec<std::sync::Arc<str>>,
    /// Give submissions priorities -10, 0 and 10 in turn (else all 0).
    pub priorities: bool,
}

impl Mix {
    /// The `Authorization` value and priority of submission `i`.
    pub fn of(&self, i: u64) -> (std::sync::Arc<str>, i32) {
        let auth = self.auths[(i % self.auths.len() as u64) as usize].clone();
        let priority = if self.priorities {
            [0, 10, -10][(i % 3) as usize]
        } else {
            0
        };
        (auth, priority)
    }
}

impl Target {
    /// Creates `users` submitting users (signed in) and sets the mix of submissions.
    pub async fn set_mix(&self, users: usize, priorities: bool) -> anyhow::Result<()> {
        let mut auths = Vec::with_capacity(users);
        let run = std::process::id();
        for i in 0..users {
            let email = format!("lt-{run}-{i}@loadtest.local");
            let password = "loadtest-password";
            self.call(
                http::Method::POST,
                "/api/auth/register",
                Some(&self.admin),
                Some(json!({"email": email, "password": password})),
            )
            .await
            .with_context(|| format!("registering submitter {email}"))?;
            let token = self.login(&email, password).await?;
            auths.push(std::sync::Arc::from(format!("Bearer {token}")));
        }
        let _ = self.mix.set(Mix { auths, priorities });
        Ok(())
    }
}

/// The intended send time stamped into a command by [`submit_body`].
pub fn intended_of(command: &str) -> Option<u64> {
    command.rsplit_once("# lt:")?.1.trim().parse().ok()
}
