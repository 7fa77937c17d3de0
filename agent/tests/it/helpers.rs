//! Test helpers: a fake hub (WebSocket + file downloads on one port), a running agent, and
//! polling with one global timeout.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cmdx_agent::{AgentConfig, AgentError, Control};
use cmdx_proto::agent::{AgentMsg, Assignment, Hello, HubMsg, JobRef, OutputAck, Resume, Welcome};
use cmdx_proto::{Outcome, PROTOCOL_VERSION, StreamKind};
use futures_util::{SinkExt as _, StreamExt as _};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

/// The one timeout every wait in these tests uses.
pub const TIMEOUT: Duration = Duration::from_secs(30);

pub const TOKEN: &str = "test-worker-token-s3cret";

/// Awaits `fut`, failing the test after [`TIMEOUT`].
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(TIMEOUT, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// Polls `cond` every 10 ms until it holds, failing after [`TIMEOUT`].
pub async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    within(what, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// Headers of one request the fake hub received.
pub type Headers = HashMap<String, String>;

struct Shared {
    ws_attempts: std::sync::atomic::AtomicUsize,
    files: Mutex<HashMap<String, Vec<u8>>>,
    downloads: Mutex<Vec<(String, Headers)>>,
}

/// A hub double speaking the agent protocol, with one listener for `/ws/agent` and files.
pub struct FakeHub {
    pub addr: SocketAddr,
    conns: mpsc::Receiver<HubConn>,
    shared: Arc<Shared>,
    accept_task: JoinHandle<()>,
}

impl FakeHub {
    pub async fn start() -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    /// Binds `addr` (used to restart a hub on the same port).
    pub async fn start_on(addr: SocketAddr) -> Self {
        let listener = TcpListener::bind(addr).await.expect("bind fake hub");
        let addr = listener.local_addr().unwrap();
        let (tx, conns) = mpsc::channel(8);
        let shared = Arc::new(Shared {
            ws_attempts: Default::default(),
            files: Mutex::new(HashMap::new()),
            downloads: Mutex::new(Vec::new()),
        });
        let sh = shared.clone();
        let accept_task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (tx, sh) = (tx.clone(), sh.clone());
                tokio::spawn(async move {
                    let _ = serve(stream, tx, sh).await;
                });
            }
        });
        Self {
            addr,
            conns,
            shared,
            accept_task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Serves `bytes` at `path`; returns the sha256 hex.
    pub fn put_file(&self, path: &str, bytes: Vec<u8>) -> String {
        let sha = hex::encode(Sha256::digest(&bytes));
        self.shared.files.lock().unwrap().insert(path.into(), bytes);
        sha
    }

    /// Requests for files so far: path and headers.
    pub fn downloads(&self) -> Vec<(String, Headers)> {
        self.shared.downloads.lock().unwrap().clone()
    }

    /// WebSocket handshakes attempted (refused ones included).
    pub fn ws_attempts(&self) -> usize {
        self.shared
            .ws_attempts
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The next agent connection.
    pub async fn accept(&mut self) -> HubConn {
        within("an agent connection", self.conns.recv())
            .await
            .expect("fake hub stopped")
    }

    /// Stops listening (connections already open stay open until dropped).
    pub async fn stop(self) {
        self.accept_task.abort();
        let _ = self.accept_task.await;
    }
}

async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<(String, Headers)>> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await? == 0 || buf.len() > 16 * 1024 {
            return Ok(None);
        }
        buf.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let mut lines = text.split("\r\n");
    let path = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .unwrap_or("")
        .to_owned();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok(Some((path, headers)))
}

async fn serve(
    mut stream: TcpStream,
    conns: mpsc::Sender<HubConn>,
    sh: Arc<Shared>,
) -> std::io::Result<()> {
    let Some((path, headers)) = read_head(&mut stream).await? else {
        return Ok(());
    };
    let authed =
        headers.get("authorization").map(String::as_str) == Some(&format!("Bearer {TOKEN}"));
    if path == "/ws/agent" {
        sh.ws_attempts
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if !authed {
            stream
                .write_all(b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n")
                .await?;
            return Ok(());
        }
        let key = headers
            .get("sec-websocket-key")
            .cloned()
            .unwrap_or_default();
        let resp = format!(
            "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\nsec-websocket-accept: {}\r\n\r\n",
            derive_accept_key(key.as_bytes())
        );
        stream.write_all(resp.as_bytes()).await?;
        let ws = WebSocketStream::from_raw_socket(stream, Role::Server, None).await;
        let _ = conns.send(HubConn { ws, headers }).await;
        return Ok(());
    }
    sh.downloads.lock().unwrap().push((path.clone(), headers));
    let body = sh.files.lock().unwrap().get(&path).cloned();
    match body {
        Some(body) if authed => {
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/zip\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            stream.write_all(head.as_bytes()).await?;
            stream.write_all(&body).await?;
        }
        Some(_) => {
            stream
                .write_all(
                    b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                )
                .await?;
        }
        None => {
            stream
                .write_all(
                    b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                )
                .await?;
        }
    }
    stream.shutdown().await
}

/// One agent connection, seen from the hub.
pub struct HubConn {
    ws: WebSocketStream<TcpStream>,
    /// Handshake request headers (lowercase names).
    pub headers: Headers,
}

impl HubConn {
    /// Next agent message, skipping heartbeats and control frames.
    pub async fn recv(&mut self) -> AgentMsg {
        loop {
            match self.recv_any().await {
                AgentMsg::Heartbeat(_) => {}
                m => return m,
            }
        }
    }

    /// Next agent message including heartbeats.
    pub async fn recv_any(&mut self) -> AgentMsg {
        within("an agent message", async {
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Text(t))) => {
                        return serde_json::from_str::<AgentMsg>(&t)
                            .unwrap_or_else(|e| panic!("bad agent message {t}: {e}"));
                    }
                    Some(Ok(_)) => {}
                    other => panic!("agent connection ended: {other:?}"),
                }
            }
        })
        .await
    }

    /// Like [`HubConn::recv`] but `None` once the agent closed the connection.
    pub async fn recv_or_closed(&mut self) -> Option<AgentMsg> {
        within("an agent message or close", async {
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Text(t))) => {
                        let m: AgentMsg = serde_json::from_str(&t).unwrap();
                        if !matches!(m, AgentMsg::Heartbeat(_)) {
                            return Some(m);
                        }
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
                    Some(Ok(_)) => {}
                }
            }
        })
        .await
    }

    pub async fn send(&mut self, msg: HubMsg) {
        let text = serde_json::to_string(&msg).unwrap();
        self.ws
            .send(Message::text(text))
            .await
            .expect("send to agent");
    }

    /// Receives `hello` and answers `welcome` resuming every held job from `stored(job)`.
    pub async fn handshake_with(&mut self, stored: impl Fn(&JobRef) -> u64) -> Hello {
        let hello = match self.recv().await {
            AgentMsg::Hello(h) => h,
            m => panic!("expected hello, got {m:?}"),
        };
        let resume = hello
            .held
            .iter()
            .map(|h| {
                let key = JobRef {
                    job_id: h.job_id.clone(),
                    attempt: h.attempt,
                };
                Resume {
                    stored_chunks: stored(&key),
                    job_id: h.job_id.clone(),
                    attempt: h.attempt,
                    finished: false,
                }
            })
            .collect();
        self.send(HubMsg::Welcome(Welcome {
            protocol_version: PROTOCOL_VERSION,
            worker_id: hello.worker_id.clone(),
            heartbeat_secs: 1,
            resume,
            abandon: vec![],
        }))
        .await;
        hello
    }

    /// Handshake for a fresh agent (nothing held).
    pub async fn handshake(&mut self) -> Hello {
        self.handshake_with(|_| 0).await
    }

    /// Sends an assignment and expects `accept`.
    pub async fn assign(&mut self, a: Assignment) {
        let key = JobRef {
            job_id: a.job_id.clone(),
            attempt: a.attempt,
        };
        self.send(HubMsg::Assign(a)).await;
        match self.recv().await {
            AgentMsg::Accept(k) => assert_eq!(k, key),
            m => panic!("expected accept, got {m:?}"),
        }
    }

    /// Collects messages of a job (acknowledging output as it arrives when `ack`) until its
    /// `finished`, which is acknowledged too. Returns the output chunks and the outcome.
    pub async fn run_to_end(&mut self, job: &JobRef, ack: bool) -> Run {
        let mut run = Run::default();
        loop {
            match self.recv().await {
                AgentMsg::Started(s) if s.job_id == job.job_id => run.started = true,
                AgentMsg::Output(c) if c.job_id == job.job_id => {
                    if ack {
                        self.ack_output(job, c.seq + 1).await;
                    }
                    run.chunks.push((c.seq, c.stream, c.data.0));
                }
                AgentMsg::Finished(f) if f.job_id == job.job_id => {
                    assert_eq!(f.attempt, job.attempt);
                    run.finished_chunks = f.chunks;
                    run.outcome = Some(f.outcome);
                    self.send(HubMsg::FinishedAck(job.clone())).await;
                    return run;
                }
                m => panic!("unexpected message {m:?}"),
            }
        }
    }

    pub async fn ack_output(&mut self, job: &JobRef, stored_chunks: u64) {
        self.send(HubMsg::OutputAck(OutputAck {
            job_id: job.job_id.clone(),
            attempt: job.attempt,
            stored_chunks,
        }))
        .await;
    }
}

/// What a job sent.
#[derive(Debug, Default)]
pub struct Run {
    pub started: bool,
    pub chunks: Vec<(u64, StreamKind, Vec<u8>)>,
    pub finished_chunks: u64,
    pub outcome: Option<Outcome>,
}

impl Run {
    pub fn outcome(&self) -> &Outcome {
        self.outcome.as_ref().expect("finished")
    }

    /// Concatenated bytes of one stream.
    pub fn text(&self, stream: StreamKind) -> String {
        let bytes: Vec<u8> = self
            .chunks
            .iter()
            .filter(|c| c.1 == stream)
            .flat_map(|c| c.2.clone())
            .collect();
        String::from_utf8(bytes).unwrap()
    }

    /// Asserts chunk `seq`s are 0.. contiguous and match `finished.chunks`.
    pub fn assert_contiguous(&self) {
        let seqs: Vec<u64> = self.chunks.iter().map(|c| c.0).collect();
        let want: Vec<u64> = (0..self.chunks.len() as u64).collect();
        assert_eq!(seqs, want, "chunk seqs must be contiguous from 0");
        assert_eq!(self.finished_chunks, self.chunks.len() as u64);
    }
}

/// A job assignment with defaults.
pub fn assignment(job_id: &str, command: &str) -> Assignment {
    Assignment {
        job_id: job_id.into(),
        attempt: 1,
        command: command.into(),
        file_url: None,
        file_sha256: None,
        file_size: None,
        timeout_secs: 60,
        env: Default::default(),
        artifacts: Vec::new(),
        artifact_max_bytes: None,
        artifact_max_files: None,
        tty: None,
        image: None,
    }
}

pub fn job_ref(a: &Assignment) -> JobRef {
    JobRef {
        job_id: a.job_id.clone(),
        attempt: a.attempt,
    }
}

/// An agent running in this process against a hub.
pub struct TestAgent {
    pub control: watch::Sender<Control>,
    pub handle: JoinHandle<Result<(), AgentError>>,
    pub work_dir: PathBuf,
    _dir: tempfile::TempDir,
}

/// A config for tests: a temp work dir, strict sandbox, small limits.
pub fn config(hub: &FakeHub) -> (AgentConfig, tempfile::TempDir) {
    let dir = tempfile::Builder::new()
        .prefix("cmdx-agent-it-")
        .tempdir()
        .unwrap();
    // Jobs run as unprivileged uids: they must be able to traverse to their workspace.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o711),
    )
    .unwrap();
    let mut c = AgentConfig::new(hub.url(), TOKEN);
    c.work_dir = dir.path().join("work");
    c.concurrency = 2;
    c.tags = vec!["linux".into(), "test".into()];
    c.cancel_grace = Duration::from_secs(2);
    c.limits.disk_bytes = 64 << 20;
    c.limits.memory_bytes = 256 << 20;
    c.max_backoff = Duration::from_millis(300);
    (c, dir)
}

impl TestAgent {
    pub fn start(config: AgentConfig, dir: tempfile::TempDir) -> Self {
        let (control, rx) = watch::channel(Control::Run);
        let work_dir = config.work_dir.clone();
        let handle = tokio::spawn(cmdx_agent::run(config, rx));
        Self {
            control,
            handle,
            work_dir,
            _dir: dir,
        }
    }

    /// Job workspace directory of an attempt (`jobs/<id>-<attempt>/job`).
    pub fn job_dir(&self, job: &JobRef) -> PathBuf {
        self.work_dir
            .join("jobs")
            .join(format!("{}-{}", job.job_id, job.attempt))
            .join("job")
    }

    pub fn jobs_dir(&self) -> PathBuf {
        self.work_dir.join("jobs")
    }

    /// Aborts the agent, acknowledging whatever it reports on `conn`, and waits for `run`
    /// to return; asserts it returned `Ok` and left no workspace behind.
    pub async fn abort(mut self, conn: Option<&mut HubConn>) {
        self.control.send_replace(Control::Abort);
        if let Some(conn) = conn {
            while let Some(m) = conn.recv_or_closed().await {
                if let AgentMsg::Finished(f) = m {
                    conn.send(HubMsg::FinishedAck(JobRef {
                        job_id: f.job_id,
                        attempt: f.attempt,
                    }))
                    .await;
                }
            }
        }
        let r = within("the agent to stop", &mut self.handle).await.unwrap();
        r.expect("agent run returns Ok");
        assert_eq!(
            dir_entries(&self.work_dir.join("jobs")),
            Vec::<String>::new()
        );
    }
}

impl Drop for TestAgent {
    /// A test that failed midway leaves its agent's workspaces mounted: detach them so the
    /// temp dir can go (a passing test has removed them already).
    fn drop(&mut self) {
        for name in dir_entries(&self.jobs_dir()) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(self.jobs_dir().join(name))
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

/// Names in a directory (empty if missing).
pub fn dir_entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Hub, agent and welcomed connection in one go.
pub async fn setup() -> (FakeHub, TestAgent, HubConn) {
    setup_with(|_| {}).await
}

pub async fn setup_with(tweak: impl FnOnce(&mut AgentConfig)) -> (FakeHub, TestAgent, HubConn) {
    let mut hub = FakeHub::start().await;
    let (mut c, dir) = config(&hub);
    tweak(&mut c);
    let agent = TestAgent::start(c, dir);
    let mut conn = hub.accept().await;
    conn.handshake().await;
    (hub, agent, conn)
}
