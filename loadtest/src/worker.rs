//! Simulated workers speaking the real agent protocol (`/ws/agent`): `hello`, then for each
//! `assign` the messages a real agent sends (`accept`, `started`, optional `output`,
//! `finished`) after a configurable fake job duration. Each worker keeps its own histograms;
//! the scenario merges them at the end.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use cmdx_proto::agent::{
    AgentMsg, Finished, Hello, HubMsg, Isolation, JobRef, OutputChunk, Started,
};
use cmdx_proto::{Bytes64, Outcome, StreamKind};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::stats::{Hist, now_us};
use crate::target::{Target, intended_of};

/// A client WebSocket.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens a WebSocket to `path` with a bearer token. `small` keeps the per-connection buffers
/// minimal (4 KiB read, unbuffered write) for tests with thousands of idle connections.
pub async fn connect_ws(
    target: &Target,
    path: &str,
    token: &str,
    small: bool,
) -> anyhow::Result<Ws> {
    let mut req = target
        .ws_url(path)
        .into_client_request()
        .context("WebSocket request")?;
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().context("token header")?,
    );
    let config = if small {
        WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0)
            .max_write_buffer_size(1 << 20)
    } else {
        WebSocketConfig::default()
            .read_buffer_size(64 * 1024)
            .write_buffer_size(16 * 1024)
            .max_write_buffer_size(8 << 20)
    };
    let (ws, _) = tokio::time::timeout(
        Duration::from_secs(30),
        tokio_tungstenite::connect_async_with_config(req, Some(config), true),
    )
    .await
    .context("WebSocket connect timed out")?
    .with_context(|| format!("WebSocket connect to {path}"))?;
    Ok(ws)
}

/// Sends one JSON message without flushing (`flush` sends it).
pub async fn feed(ws: &mut Ws, m: &AgentMsg) -> anyhow::Result<()> {
    ws.feed(Message::text(serde_json::to_string(m)?))
        .await
        .context("sending to the hub")
}

/// Receives the next hub message, skipping control frames.
pub async fn recv(ws: &mut Ws) -> anyhow::Result<Option<HubMsg>> {
    loop {
        match ws.next().await {
            None => return Ok(None),
            Some(Err(e)) => return Err(e).context("reading from the hub"),
            Some(Ok(Message::Text(t))) => {
                return Ok(Some(serde_json::from_str(&t).context("hub message")?));
            }
            Some(Ok(Message::Close(_))) => return Ok(None),
            Some(Ok(_)) => {}
        }
    }
}

/// `hello` for a simulated worker.
pub fn hello(id: &str, concurrency: u32) -> AgentMsg {
    AgentMsg::Hello(Hello {
        protocol_version: cmdx_proto::PROTOCOL_VERSION,
        worker_id: id.to_string(),
        hostname: "loadtest".into(),
        os: "linux".into(),
        version: "loadtest".into(),
        cpu_count: 1,
        total_memory_mb: 1024,
        tags: Vec::new(),
        concurrency,
        isolation: Isolation::default(),
        held: Vec::new(),
    })
}

/// Connects, says `hello` and waits for `welcome`.
pub async fn enrol(
    target: &Target,
    token: &str,
    id: &str,
    concurrency: u32,
    small: bool,
) -> anyhow::Result<Ws> {
    let mut ws = connect_ws(target, "/ws/agent", token, small).await?;
    feed(&mut ws, &hello(id, concurrency)).await?;
    ws.flush().await.context("sending hello")?;
    match tokio::time::timeout(Duration::from_secs(30), recv(&mut ws)).await {
        Ok(Ok(Some(HubMsg::Welcome(_)))) => Ok(ws),
        Ok(Ok(other)) => bail!("expected welcome, got {other:?}"),
        Ok(Err(e)) => Err(e),
        Err(_) => bail!("no welcome within 30 s"),
    }
}

/// Histogram shards: workers record into `shard[worker % SHARDS]` (an HDR histogram with 3
/// significant digits up to 10 minutes is about 160 KB, too much to keep one per worker when
/// there are thousands); the shards are merged at the end.
const SHARDS: usize = 16;

/// Counters shared by all simulated workers of a run.
#[derive(Default)]
pub struct Shared {
    /// Latency histograms, sharded.
    pub hists: Vec<Mutex<WorkerHists>>,
    /// Assignments received.
    pub assigned: AtomicU64,
    /// Results acknowledged by the hub (`finishedAck`).
    pub done: AtomicU64,
    /// Protocol errors, unexpected closes.
    pub errors: AtomicU64,
    /// Microseconds (run clock) of the first assignment received; `u64::MAX` until then.
    pub first_assign_us: AtomicU64,
    /// Microseconds (run clock) of the last `finishedAck`.
    pub last_done_us: AtomicU64,
    /// Intended-send window recorded in the histograms: `[warm_us, end_us)`.
    pub warm_us: AtomicU64,
    /// End of the recorded window.
    pub end_us: AtomicU64,
}

impl Shared {
    /// Fresh counters recording nothing until [`Shared::set_window`].
    pub fn new() -> Arc<Shared> {
        let s = Shared {
            hists: (0..SHARDS)
                .map(|_| Mutex::new(WorkerHists::default()))
                .collect(),
            ..Shared::default()
        };
        s.first_assign_us.store(u64::MAX, Ordering::Relaxed);
        s.warm_us.store(u64::MAX, Ordering::Relaxed);
        Arc::new(s)
    }

    /// Records latencies of jobs whose intended send time is in `[warm_us, end_us)`.
    pub fn set_window(&self, warm_us: u64, end_us: u64) {
        self.end_us.store(end_us, Ordering::Relaxed);
        self.warm_us.store(warm_us, Ordering::Relaxed);
    }

    /// The merged histograms of every worker.
    pub fn merged(&self) -> WorkerHists {
        let mut all = WorkerHists::default();
        for h in &self.hists {
            let h = h.lock().unwrap_or_else(|p| p.into_inner());
            all.assigned.merge(&h.assigned);
            all.done.merge(&h.done);
        }
        all
    }

    fn record(&self, shard: usize, assigned: Option<u64>, done: Option<u64>) {
        let mut h = self.hists[shard % self.hists.len()]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(v) = assigned {
            h.assigned.record_us(v);
        }
        if let Some(v) = done {
            h.done.record_us(v);
        }
    }

    fn in_window(&self, intended: u64) -> bool {
        intended >= self.warm_us.load(Ordering::Relaxed)
            && intended < self.end_us.load(Ordering::Relaxed)
    }
}

/// What a simulated worker does with each job.
#[derive(Clone, Copy)]
pub struct Behaviour {
    /// Slots advertised.
    pub concurrency: u32,
    /// Fake run time of each job.
    pub job_ms: u64,
    /// Bytes of output sent (one chunk) before `finished`; 0 sends none.
    pub output_bytes: usize,
}

/// Histograms of one worker.
#[derive(Default)]
pub struct WorkerHists {
    /// Intended submit -> `assign` received.
    pub assigned: Hist,
    /// Intended submit -> `finishedAck` received.
    pub done: Hist,
}

struct Pending {
    due: Instant,
    job: JobRef,
}

/// Runs one enrolled worker (number `shard`, for its histogram shard) until `stop` flips.
pub async fn run(
    mut ws: Ws,
    shard: usize,
    b: Behaviour,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let mut intended: HashMap<String, u64> = HashMap::new();
    let mut pending: VecDeque<Pending> = VecDeque::new();
    let payload = vec![b'x'; b.output_bytes];
    loop {
        let next_due = pending.front().map(|p| p.due);
        tokio::select! {
            m = recv(&mut ws) => {
                let m = match m {
                    Ok(Some(m)) => m,
                    _ => {
                        if !*stop.borrow() {
                            shared.errors.fetch_add(1, Ordering::Relaxed);
                        }
                        break;
                    }
                };
                let r = on_message(&mut ws, m, b, &shared, shard, &mut intended, &mut pending, &payload).await;
                if r.is_err() {
                    shared.errors.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
            _ = sleep_until_opt(next_due) => {
                while pending.front().is_some_and(|p| p.due <= Instant::now()) {
                    let p = pending.pop_front().expect("front checked");
                    if finish(&mut ws, p.job, b.job_ms, &payload).await.is_err() {
                        shared.errors.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
                if ws.flush().await.is_err() {
                    shared.errors.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
            _ = stop.changed() => break,
        }
    }
    let _ = ws.close(None).await;
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

#[expect(
    clippy::too_many_arguments,
    reason = "the worker loop's state, passed by reference"
)]
async fn on_message(
    ws: &mut Ws,
    m: HubMsg,
    b: Behaviour,
    shared: &Shared,
    shard: usize,
    intended: &mut HashMap<String, u64>,
    pending: &mut VecDeque<Pending>,
    payload: &[u8],
) -> anyhow::Result<()> {
    match m {
        HubMsg::Assign(a) => {
            let now = now_us();
            shared.assigned.fetch_add(1, Ordering::Relaxed);
            shared.first_assign_us.fetch_min(now, Ordering::Relaxed);
            if let Some(t) = intended_of(&a.command) {
                if shared.in_window(t) {
                    shared.record(shard, Some(now.saturating_sub(t)), None);
                }
                intended.insert(a.job_id.clone(), t);
            }
            let job = JobRef {
                job_id: a.job_id,
                attempt: a.attempt,
            };
            feed(ws, &AgentMsg::Accept(job.clone())).await?;
            feed(
                ws,
                &AgentMsg::Started(Started {
                    job_id: job.job_id.clone(),
                    attempt: job.attempt,
                    isolation: Vec::new(),
                }),
            )
            .await?;
            if b.job_ms == 0 {
                finish(ws, job, 0, payload).await?;
            } else {
                pending.push_back(Pending {
                    due: Instant::now() + Duration::from_millis(b.job_ms),
                    job,
                });
            }
            ws.flush().await.context("flushing")?;
        }
        HubMsg::FinishedAck(j) => {
            let now = now_us();
            shared.done.fetch_add(1, Ordering::Relaxed);
            shared.last_done_us.fetch_max(now, Ordering::Relaxed);
            if let Some(t) = intended.remove(&j.job_id)
                && shared.in_window(t)
            {
                shared.record(shard, None, Some(now.saturating_sub(t)));
            }
        }
        // Simulated jobs have no terminal: a resize changes nothing.
        HubMsg::OutputAck(_) | HubMsg::Welcome(_) | HubMsg::Resize(_) => {}
        HubMsg::Cancel(_) | HubMsg::Abandon(_) | HubMsg::Drain => {
            shared.errors.fetch_add(1, Ordering::Relaxed);
        }
        HubMsg::Error(e) => bail!("hub error {}: {}", e.code, e.message),
    }
    Ok(())
}

async fn finish(ws: &mut Ws, job: JobRef, job_ms: u64, payload: &[u8]) -> anyhow::Result<()> {
    let mut chunks = 0;
    if !payload.is_empty() {
        feed(
            ws,
            &AgentMsg::Output(OutputChunk {
                job_id: job.job_id.clone(),
                attempt: job.attempt,
                seq: 0,
                stream: StreamKind::Stdout,
                data: Bytes64(payload.to_vec()),
            }),
        )
        .await?;
        chunks = 1;
    }
    feed(
        ws,
        &AgentMsg::Finished(Finished {
            job_id: job.job_id,
            attempt: job.attempt,
            chunks,
            outcome: Outcome {
                exit_code: Some(0),
                duration_ms: job_ms,
                ..Outcome::default()
            },
        }),
    )
    .await
}

/// Enrols `n` workers at `pace` connections per second (not all at once); returns them with
/// how long enrolment took. A refused connection counts as an error and is skipped.
#[expect(
    clippy::too_many_arguments,
    reason = "each scenario enrols with its own shape"
)]
pub async fn enrol_many(
    target: &Arc<Target>,
    token: &str,
    prefix: &str,
    n: usize,
    concurrency: u32,
    pace: f64,
    small: bool,
    shared: &Shared,
) -> (Vec<Ws>, Duration) {
    let start = Instant::now();
    let gap = Duration::from_secs_f64(1.0 / pace.max(1.0));
    let mut set = tokio::task::JoinSet::new();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        tokio::time::sleep_until(start + gap * i as u32).await;
        let t = target.clone();
        let token = token.to_string();
        let id = format!("{prefix}-{i:05}");
        set.spawn(async move { enrol(&t, &token, &id, concurrency, small).await });
        // Bound connects in flight so a slow hub is paced, not flooded.
        while set.len() >= 256 {
            collect_one(&mut set, &mut out, shared).await;
        }
    }
    while !set.is_empty() {
        collect_one(&mut set, &mut out, shared).await;
    }
    (out, start.elapsed())
}

async fn collect_one(
    set: &mut tokio::task::JoinSet<anyhow::Result<Ws>>,
    out: &mut Vec<Ws>,
    shared: &Shared,
) {
    match set.join_next().await {
        Some(Ok(Ok(ws))) => out.push(ws),
        Some(Ok(Err(e))) if shared.errors.fetch_add(1, Ordering::Relaxed) < 3 => {
            eprintln!("loadtest: worker enrolment failed: {e:#}");
        }
        Some(Ok(Err(_))) => {}
        Some(Err(_)) => {
            shared.errors.fetch_add(1, Ordering::Relaxed);
        }
        None => {}
    }
}
