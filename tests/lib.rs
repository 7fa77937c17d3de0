//! Helpers for cmdx end-to-end tests: start a real `cmdx hub` process on a loopback port with a
//! sled store in a temp folder, kill it with SIGKILL and restart it on the same data, sign in,
//! mint worker tokens, speak the agent protocol as a scripted worker, and `wait_for` conditions
//! with one global timeout (no bare sleeps). [`pg`] starts a private PostgreSQL for the hubs that
//! store there.

pub mod pg;
pub mod registry;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use cmdx_proto::agent::{AgentMsg, Hello, HubMsg, Isolation};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Admin credentials every test hub is bootstrapped with.
pub const ADMIN_EMAIL: &str = "admin@test.local";
/// Admin password.
pub const ADMIN_PASSWORD: &str = "admin-password-1";

/// The global timeout for any awaited condition.
pub const WAIT: Duration = Duration::from_secs(30);

/// Path of the `cmdx` binary (next to the test executable's `deps` folder, or `CMDX_BIN`).
pub fn cmdx_bin() -> PathBuf {
    if let Ok(p) = std::env::var("CMDX_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join("cmdx");
    assert!(
        bin.exists(),
        "{} is missing: build it first with `cargo build -p cmdx` (the README's test command does)",
        bin.display()
    );
    bin
}

/// A builder for the tests' own HTTP clients. reqwest is built with rustls and no crypto
/// provider of its own (the `cmdx` binary hands its clients a configuration), so a client
/// built without one needs the process-wide default, installed here (ring) once.
pub fn http_client() -> reqwest::ClientBuilder {
    // An error means a default is installed already: fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
}

/// Polls `f` until it returns `Some`, or fails after [`WAIT`].
pub async fn wait_for<T, F, Fut>(what: &str, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    wait_for_within(what, WAIT, f).await
}

/// Polls `f` until it returns `Some`, or fails after `limit` (for work known to be long).
pub async fn wait_for_within<T, F, Fut>(what: &str, limit: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if start.elapsed() > limit {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A running hub process.
pub struct HubProc {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// Data folder (kept across restarts).
    pub data: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    extra: Vec<String>,
    /// The umask the hub process starts with (the test runner's when `None`).
    umask: Option<u32>,
    /// Port it listens on (kept across restarts).
    pub port: u16,
    /// HTTP client.
    pub http: reqwest::Client,
}

impl HubProc {
    /// Starts a hub on a fresh data folder with extra flags.
    pub async fn start(extra: &[&str]) -> HubProc {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data = tmp.path().join("data");
        let mut h = HubProc {
            child: None,
            url: String::new(),
            data,
            _tmp: Some(tmp),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            umask: None,
            port: 0,
            http: http_client()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("client"),
        };
        h.spawn().await.expect("hub starts");
        h
    }

    /// Starts a hub on a fresh data folder, as a process whose umask is `umask` (a hand-run hub
    /// inherits the shell's; systemd's `UMask=` is not there to help).
    pub async fn start_with_umask(extra: &[&str], umask: u32) -> HubProc {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut h = HubProc {
            child: None,
            url: String::new(),
            data: tmp.path().join("data"),
            _tmp: Some(tmp),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            umask: Some(umask),
            port: 0,
            http: http_client()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("client"),
        };
        h.spawn().await.expect("hub starts");
        h
    }

    /// Starts a hub on an existing data folder (e.g. a restored backup).
    pub async fn start_on(data: PathBuf, extra: &[&str]) -> HubProc {
        let mut h = HubProc {
            child: None,
            url: String::new(),
            data,
            _tmp: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            umask: None,
            port: 0,
            http: http_client()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("client"),
        };
        h.spawn().await.expect("hub starts");
        h
    }

    /// Sends SIGTERM without waiting.
    pub fn sigterm(&self) {
        if let Some(pid) = self.pid() {
            sigterm(pid);
        }
    }

    /// Waits for the hub process to exit; returns its exit code.
    pub async fn wait_exit(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        tokio::time::timeout(WAIT, c.wait())
            .await
            .expect("hub exits in time")
            .ok()
            .and_then(|s| s.code())
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let mut cmd = Command::new(cmdx_bin());
        cmd.arg("hub")
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--data")
            .arg(&self.data)
            .args(&self.extra)
            .env("CMDX_ADMIN_EMAIL", ADMIN_EMAIL)
            .env("CMDX_ADMIN_PASSWORD", ADMIN_PASSWORD)
            .env(
                "RUST_LOG",
                std::env::var("CMDX_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        if let Some(mask) = self.umask {
            let mask = nix::sys::stat::Mode::from_bits_truncate(mask);
            // SAFETY: the closure only calls umask(2), which is async-signal-safe and changes
            // the child's mask alone.
            unsafe {
                cmd.pre_exec(move || {
                    nix::sys::stat::umask(mask);
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().context("spawning cmdx hub")?;
        let stdout = child.stdout.take().context("stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(WAIT, async {
            while let Some(l) = lines.next_line().await? {
                if let Some(url) = l.strip_prefix("cmdx hub listening on ") {
                    return Ok::<_, anyhow::Error>(url.trim().to_string());
                }
            }
            bail!("hub exited before listening")
        })
        .await
        .context("hub did not start in time")??;
        // Keep draining stdout so the hub never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        self.url = line;
        self.port = self
            .url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .context("port")?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL, no goodbye.
    pub async fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.start_kill();
            let _ = c.wait().await;
        }
    }

    /// SIGTERM and wait for exit; returns the exit status code.
    pub async fn terminate(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        if let Some(pid) = c.id() {
            sigterm(pid);
        }
        c.wait().await.ok().and_then(|s| s.code())
    }

    /// Starts the hub again on the same data folder and port.
    pub async fn restart(&mut self) {
        let mut tries = 0;
        loop {
            match self.spawn().await {
                Ok(()) => return,
                Err(e) if tries < 50 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("hub restart failed: {e:#}"),
            }
        }
    }

    /// The hub's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// The hub's resident memory in KiB (from /proc).
    pub fn rss_kb(&self) -> u64 {
        let pid = self.pid().expect("hub running");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    /// `ws://` base URL.
    pub fn ws_url(&self, path: &str) -> String {
        format!("{}{}", self.url.replacen("http://", "ws://", 1), path)
    }

    /// Signs in; returns the bearer token.
    pub async fn login(&self, email: &str, password: &str) -> String {
        let r = self
            .http
            .post(format!("{}/api/auth/login", self.url))
            .json(&json!({"email": email, "password": password}))
            .send()
            .await
            .expect("login request");
        assert_eq!(r.status(), 200, "login of {email} failed");
        let v: Value = r.json().await.expect("login json");
        v["token"].as_str().expect("token").to_string()
    }

    /// The admin's token.
    pub async fn admin(&self) -> String {
        self.login(ADMIN_EMAIL, ADMIN_PASSWORD).await
    }

    /// Creates a user (as admin) and returns their token.
    pub async fn user(&self, admin: &str, email: &str) -> String {
        let r = self
            .http
            .post(format!("{}/api/auth/register", self.url))
            .bearer_auth(admin)
            .json(&json!({"email": email, "password": "user-password-1"}))
            .send()
            .await
            .expect("register");
        assert_eq!(r.status(), 201, "register {email}");
        self.login(email, "user-password-1").await
    }

    /// The id of the account `email` (as admin).
    pub async fn user_id(&self, admin: &str, email: &str) -> String {
        let (_, list) = self.get(admin, "/api/users/list").await;
        list["users"]
            .as_array()
            .expect("users")
            .iter()
            .find(|u| u["email"] == email)
            .and_then(|u| u["id"].as_str())
            .expect("user listed")
            .to_string()
    }

    /// Mints a worker token (as admin).
    pub async fn worker_token(&self, admin: &str) -> String {
        let v = self
            .post_json(admin, "/api/workers/tokens", json!({"name": "test"}))
            .await;
        v["token"].as_str().expect("worker token").to_string()
    }

    /// POST JSON with a bearer token; asserts 2xx and returns the body.
    pub async fn post_json(&self, token: &str, path: &str, body: Value) -> Value {
        let (status, v) = self.post_status(token, path, body).await;
        assert!((200..300).contains(&status), "POST {path} -> {status}: {v}");
        v
    }

    /// POST JSON with a bearer token; returns (status, body) whatever the status.
    pub async fn post_status(&self, token: &str, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.url))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .expect("request");
        let status = r.status().as_u16();
        let text = r.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Any method with a JSON body and a bearer token; returns (status, body) whatever the
    /// status (`null` when the answer is not JSON).
    pub async fn send_json(
        &self,
        token: &str,
        method: reqwest::Method,
        path: &str,
        body: Value,
    ) -> (u16, Value) {
        let r = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .expect("request");
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    /// GET JSON with a bearer token; returns (status, body).
    pub async fn get(&self, token: &str, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.url))
            .bearer_auth(token)
            .send()
            .await
            .expect("request");
        let status = r.status().as_u16();
        let text = r.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Submits a job; returns its id.
    pub async fn submit(&self, token: &str, body: Value) -> String {
        let v = self.post_json(token, "/api/jobs/submit", body).await;
        v["jobId"].as_str().expect("jobId").to_string()
    }

    /// The job's status document.
    pub async fn job(&self, token: &str, id: &str) -> Value {
        let (s, v) = self
            .get(token, &format!("/api/jobs/status?jobId={id}"))
            .await;
        assert_eq!(s, 200, "status of {id}: {v}");
        v
    }

    /// Waits until the job has `status`.
    pub async fn wait_status(&self, token: &str, id: &str, status: &str) -> Value {
        let start = Instant::now();
        loop {
            let v = self.job(token, id).await;
            if v["status"] == status {
                return v;
            }
            // The job's last state says why, when it never gets there.
            assert!(
                start.elapsed() < WAIT,
                "timed out after {WAIT:?} waiting for job {id} to be {status}; it is: {v}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for HubProc {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.start_kill();
        }
    }
}

/// Sends SIGTERM to our child `pid` (gone already: nothing to do).
fn sigterm(pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
}

/// A scripted worker speaking the agent protocol over a real WebSocket.
pub struct FakeAgent {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Worker id.
    pub id: String,
}

impl FakeAgent {
    /// Connects and completes the handshake; returns the agent and the welcome.
    pub async fn connect(
        hub: &HubProc,
        token: &str,
        id: &str,
        concurrency: u32,
        held: Vec<cmdx_proto::agent::HeldJob>,
    ) -> anyhow::Result<(FakeAgent, cmdx_proto::agent::Welcome)> {
        Self::connect_tagged(hub, token, id, concurrency, held, Vec::new()).await
    }

    /// [`FakeAgent::connect`] advertising `tags`.
    pub async fn connect_tagged(
        hub: &HubProc,
        token: &str,
        id: &str,
        concurrency: u32,
        held: Vec<cmdx_proto::agent::HeldJob>,
        tags: Vec<String>,
    ) -> anyhow::Result<(FakeAgent, cmdx_proto::agent::Welcome)> {
        let mut req = hub.ws_url("/ws/agent").into_client_request()?;
        req.headers_mut()
            .insert("authorization", format!("Bearer {token}").parse()?);
        let (ws, _) = tokio_tungstenite::connect_async(req).await?;
        let mut a = FakeAgent {
            ws,
            id: id.to_string(),
        };
        a.send(&AgentMsg::Hello(Hello {
            protocol_version: cmdx_proto::PROTOCOL_VERSION,
            worker_id: id.to_string(),
            hostname: "fake-host".into(),
            os: "linux".into(),
            version: "test".into(),
            cpu_count: 2,
            total_memory_mb: 1024,
            tags,
            concurrency,
            isolation: Isolation::default(),
            held,
        }))
        .await?;
        match a.recv().await? {
            HubMsg::Welcome(w) => Ok((a, w)),
            other => bail!("expected welcome, got {other:?}"),
        }
    }

    /// Sends one message.
    pub async fn send(&mut self, m: &AgentMsg) -> anyhow::Result<()> {
        self.ws
            .send(Message::text(serde_json::to_string(m)?))
            .await?;
        Ok(())
    }

    /// Receives the next hub message (skipping pings), within [`WAIT`].
    pub async fn recv(&mut self) -> anyhow::Result<HubMsg> {
        loop {
            let m = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .context("timed out waiting for a hub message")?
                .context("socket closed")??;
            match m {
                Message::Text(t) => return Ok(serde_json::from_str(&t)?),
                Message::Close(f) => bail!("closed: {f:?}"),
                _ => {}
            }
        }
    }

    /// Receives messages until one matches `pick`, for [`WAIT`] in all: the hub's pings and
    /// other messages do not keep a wait for one that never comes going.
    pub async fn recv_until<T>(
        &mut self,
        mut pick: impl FnMut(HubMsg) -> Option<T>,
    ) -> anyhow::Result<T> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let m = tokio::time::timeout_at(deadline, self.recv())
                .await
                .context("timed out waiting for the hub message expected")??;
            if let Some(v) = pick(m) {
                return Ok(v);
            }
        }
    }

    /// Waits for the next `assign`.
    pub async fn next_assignment(&mut self) -> anyhow::Result<cmdx_proto::agent::Assignment> {
        self.recv_until(|m| match m {
            HubMsg::Assign(a) => Some(a),
            _ => None,
        })
        .await
    }

    /// Takes the next assignment, accepts it and reports the child started.
    pub async fn start_next(&mut self) -> anyhow::Result<cmdx_proto::agent::Assignment> {
        let a = self.next_assignment().await?;
        let job = cmdx_proto::agent::JobRef {
            job_id: a.job_id.clone(),
            attempt: a.attempt,
        };
        self.send(&AgentMsg::Accept(job)).await?;
        self.send(&AgentMsg::Started(cmdx_proto::agent::Started {
            job_id: a.job_id.clone(),
            attempt: a.attempt,
            isolation: vec![],
        }))
        .await?;
        Ok(a)
    }

    /// Reports attempt `attempt` of `job_id` finished with `exit_code` after `chunks` output
    /// chunks, and waits for its `finishedAck`.
    pub async fn finish(
        &mut self,
        job_id: &str,
        attempt: u32,
        chunks: u64,
        exit_code: i32,
    ) -> anyhow::Result<()> {
        self.send(&AgentMsg::Finished(cmdx_proto::agent::Finished {
            job_id: job_id.to_string(),
            attempt,
            chunks,
            outcome: cmdx_proto::Outcome {
                exit_code: Some(exit_code),
                ..cmdx_proto::Outcome::default()
            },
        }))
        .await?;
        self.recv_until(|m| {
            matches!(m, HubMsg::FinishedAck(ref r) if r.job_id == job_id).then_some(())
        })
        .await
    }

    /// Closes the socket abruptly (no close frame).
    pub fn drop_connection(self) {
        drop(self.ws);
    }
}

/// Builds a ZIP in memory from `(name, content)` pairs.
pub fn zip_bytes(files: &[(&str, &[u8])]) -> Vec<u8> {
    use std::io::Write;
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut z = zip::ZipWriter::new(&mut buf);
        let opts: zip::write::SimpleFileOptions = zip::write::SimpleFileOptions::default();
        for (name, content) in files {
            z.start_file(*name, opts).expect("zip entry");
            z.write_all(content).expect("zip write");
        }
        z.finish().expect("zip finish");
    }
    buf.into_inner()
}

/// Whether some mount point is at or below `path` (from /proc/self/mountinfo).
pub fn mounted_under(path: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| Path::new(m).starts_with(path))
}

/// A world-traversable temp folder (jobs run as unprivileged uids and must reach their
/// workspace through it).
pub fn traversable_tempdir() -> TestDir {
    use std::os::unix::fs::PermissionsExt;
    let t = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    TestDir(Some(t))
}

/// A temporary folder agents may run in: dropped, it first detaches the job workspaces
/// (tmpfs) an agent killed mid-cleanup left mounted under it (a restarted agent would; a test's
/// agent is not restarted), so the folder goes and no mount outlives the test.
pub struct TestDir(Option<tempfile::TempDir>);

impl TestDir {
    /// Its path.
    pub fn path(&self) -> &Path {
        self.0.as_ref().expect("live").path()
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let Some(dir) = self.0.take() else {
            return;
        };
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        // Field 5 is the mount point (octal escapes for spaces, which test paths have none of);
        // deepest first.
        let mut under: Vec<&str> = mountinfo
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| Path::new(m).starts_with(dir.path()))
            .collect();
        under.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in under {
            let _ = nix::mount::umount2(
                m,
                nix::mount::MntFlags::MNT_DETACH | nix::mount::MntFlags::UMOUNT_NOFOLLOW,
            );
        }
        drop(dir);
    }
}

/// A running `cmdx agent` process.
pub struct AgentProc {
    child: Child,
    /// Its work dir.
    pub work_dir: PathBuf,
}

impl AgentProc {
    /// Starts `cmdx agent` against `hub` with a worker token, in `work_dir`, with 2 slots.
    pub async fn start(
        hub: &HubProc,
        token: &str,
        worker_id: &str,
        work_dir: &Path,
        uid_base: u32,
    ) -> AgentProc {
        Self::start_with(hub, token, Some(worker_id), work_dir, uid_base, 2).await
    }

    /// SIGKILL.
    pub async fn kill9(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// A running `cmdx dev` (hub + local agents in one process).
pub struct DevProc {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// Data folder.
    pub data: PathBuf,
    _tmp: TestDir,
    /// HTTP client.
    pub http: reqwest::Client,
}

impl DevProc {
    /// Starts `cmdx dev --agents N` on a fresh, traversable data folder.
    pub async fn start(agents: u32) -> DevProc {
        let tmp = traversable_tempdir();
        let data = tmp.path().join("data");
        let mut cmd = Command::new(cmdx_bin());
        cmd.arg("dev").arg("--data").arg(&data);
        Self::spawn(cmd, agents, data, tmp).await
    }

    /// Starts `cmdx dev --agents N` as a newcomer does: from the folder `cwd` (inside `tmp`),
    /// with no `--data` (so `./cmdx-data`).
    pub async fn start_in(cwd: &Path, tmp: TestDir, agents: u32) -> DevProc {
        let mut cmd = Command::new(cmdx_bin());
        cmd.arg("dev").current_dir(cwd);
        Self::spawn(cmd, agents, cwd.join("cmdx-data"), tmp).await
    }

    async fn spawn(mut cmd: Command, agents: u32, data: PathBuf, tmp: TestDir) -> DevProc {
        let mut child = cmd
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--agents")
            .arg(agents.to_string())
            .env("CMDX_ADMIN_EMAIL", ADMIN_EMAIL)
            .env("CMDX_ADMIN_PASSWORD", ADMIN_PASSWORD)
            .env(
                "RUST_LOG",
                std::env::var("CMDX_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn cmdx dev");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let url = tokio::time::timeout(WAIT, async {
            while let Ok(Some(l)) = lines.next_line().await {
                if let Some(rest) = l.strip_prefix("cmdx dev ready: ") {
                    return rest.split_whitespace().next().map(str::to_string);
                }
            }
            None
        })
        .await
        .expect("cmdx dev ready in time")
        .expect("cmdx dev printed its URL");
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        DevProc {
            child,
            url,
            data,
            _tmp: tmp,
            http: http_client().build().expect("client"),
        }
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// `GET path` with session `token`: the JSON answer, or `None` when the request or its
    /// decoding fails.
    pub async fn get(&self, token: &str, path: &str) -> Option<Value> {
        self.http
            .get(format!("{}{path}", self.url))
            .bearer_auth(token)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()
    }

    /// Starts `cmdx dev --agents N` again on this one's data folder, once it has stopped (SIGKILL
    /// first when `kill9`).
    pub async fn restart(mut self, agents: u32, kill9: bool) -> DevProc {
        if kill9 {
            let _ = self.child.start_kill();
        }
        let _ = self.child.wait().await;
        let mut cmd = Command::new(cmdx_bin());
        cmd.arg("dev").arg("--data").arg(&self.data);
        Self::spawn(cmd, agents, self.data, self._tmp).await
    }

    /// SIGTERM and wait (at most [`WAIT`]); returns the exit code.
    pub async fn terminate(&mut self) -> Option<i32> {
        if let Some(pid) = self.child.id() {
            sigterm(pid);
        }
        tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("cmdx dev to exit in time")
            .ok()
            .and_then(|s| s.code())
    }
}

impl AgentProc {
    /// Starts `cmdx agent` with `concurrency` slots; `worker_id: None` lets the agent generate
    /// its id and keep it in `work_dir/worker-id` (as a production agent does).
    pub async fn start_with(
        hub: &HubProc,
        token: &str,
        worker_id: Option<&str>,
        work_dir: &Path,
        uid_base: u32,
        concurrency: u32,
    ) -> AgentProc {
        Self::spawn(
            &hub.url,
            token,
            worker_id,
            work_dir,
            uid_base,
            concurrency,
            &[],
        )
    }

    /// Starts `cmdx agent --hub URLS` (a comma-separated list: hubs of a cluster) with 2 slots.
    pub async fn start_on(
        hub_urls: &str,
        token: &str,
        worker_id: &str,
        work_dir: &Path,
        uid_base: u32,
    ) -> AgentProc {
        Self::spawn(hub_urls, token, Some(worker_id), work_dir, uid_base, 2, &[])
    }

    /// Starts `cmdx agent` with 2 slots and extra flags (e.g. `--disk-mb`).
    pub async fn start_with_args(
        hub: &HubProc,
        token: &str,
        worker_id: &str,
        work_dir: &Path,
        uid_base: u32,
        extra: &[&str],
    ) -> AgentProc {
        Self::spawn(
            &hub.url,
            token,
            Some(worker_id),
            work_dir,
            uid_base,
            2,
            extra,
        )
    }

    fn spawn(
        hub_url: &str,
        token: &str,
        worker_id: Option<&str>,
        work_dir: &Path,
        uid_base: u32,
        concurrency: u32,
        extra: &[&str],
    ) -> AgentProc {
        let mut cmd = Command::new(cmdx_bin());
        cmd.arg("agent")
            .arg("--hub")
            .arg(hub_url)
            .arg("--work-dir")
            .arg(work_dir)
            .arg("--uid-base")
            .arg(uid_base.to_string())
            .arg("--concurrency")
            .arg(concurrency.to_string())
            .args(extra);
        if let Some(id) = worker_id {
            cmd.arg("--worker-id").arg(id);
        }
        let child = cmd
            .env("CMDX_AGENT_TOKEN", token)
            .env(
                "RUST_LOG",
                std::env::var("CMDX_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn cmdx agent");
        AgentProc {
            child,
            work_dir: work_dir.to_path_buf(),
        }
    }

    /// The agent's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// SIGTERM (drain: finish running jobs, then exit) and wait; returns the exit code.
    pub async fn terminate(&mut self) -> Option<i32> {
        self.sigterm();
        self.wait_exit().await
    }

    /// Sends SIGTERM without waiting (a second one stops the running jobs).
    pub fn sigterm(&self) {
        if let Some(pid) = self.child.id() {
            sigterm(pid);
        }
    }

    /// Waits (at most [`WAIT`]) for the process to exit by itself; returns its exit code.
    pub async fn wait_exit(&mut self) -> Option<i32> {
        tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("the agent to exit in time")
            .ok()
            .and_then(|s| s.code())
    }

    /// True while the process has not exited (not even as an unreaped zombie).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl HubProc {
    /// Uploads `zip` as a raw `application/zip` body; returns the file id.
    pub async fn upload_zip(&self, token: &str, zip: Vec<u8>) -> String {
        let r = self
            .http
            .post(format!("{}/api/files/upload", self.url))
            .bearer_auth(token)
            .header("content-type", "application/zip")
            .body(zip)
            .send()
            .await
            .expect("upload request");
        let status = r.status();
        let text = r.text().await.unwrap_or_default();
        assert!(status.is_success(), "upload -> {status}: {text}");
        let v: Value = serde_json::from_str(&text).expect("upload json");
        v["fileId"].as_str().expect("fileId").to_string()
    }

    /// Waits until the job is `completed`, `failed` or `cancelled`; returns its document.
    pub async fn wait_done(&self, token: &str, id: &str) -> Value {
        wait_for(&format!("job {id} to end"), || async {
            let v = self.job(token, id).await;
            matches!(
                v["status"].as_str(),
                Some("completed" | "failed" | "cancelled")
            )
            .then_some(v)
        })
        .await
    }
}

impl HubProc {
    /// Runs a job of `owner` through a legacy REST worker `worker_id` (registered here with
    /// `worker_token`) that answers with exit code 0 and `zip` as its `resultZipBase64`, which
    /// the hub keeps as the job's artifacts as it came. Returns the job id once completed.
    pub async fn legacy_job_with_result_zip(
        &self,
        worker_token: &str,
        worker_id: &str,
        owner: &str,
        zip: &[u8],
    ) -> String {
        use base64::Engine as _;
        let r = self
            .http
            .post(format!("{}/api/workers/register", self.url))
            .header("x-worker-token", worker_token)
            .json(&json!({"workerId": worker_id, "hostname": "h", "os": "linux"}))
            .send()
            .await
            .expect("register");
        assert_eq!(r.status().as_u16(), 200, "legacy register");
        let id = self.submit(owner, json!({"command": "make"})).await;
        wait_for("the legacy worker to get the job", || async {
            let r = self
                .http
                .get(format!(
                    "{}/api/jobs/get-job?workerId={worker_id}",
                    self.url
                ))
                .bearer_auth(worker_token)
                .send()
                .await
                .expect("get-job");
            (r.status().as_u16() == 200).then_some(())
        })
        .await;
        let r = self
            .http
            .post(format!("{}/api/jobs/submit-result", self.url))
            .header("x-worker-token", worker_token)
            .json(&json!({
                "jobId": id, "workerId": worker_id, "stdout": "ok\n", "exitCode": 0,
                "resultZipBase64": base64::engine::general_purpose::STANDARD.encode(zip),
            }))
            .send()
            .await
            .expect("submit-result");
        assert_eq!(r.status().as_u16(), 200, "legacy submit-result");
        self.wait_status(owner, &id, "completed").await;
        id
    }
}
