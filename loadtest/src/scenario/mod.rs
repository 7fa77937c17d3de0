//! The scenarios, and the pieces they share: the open-loop submitter and worker fleets.

mod burst;
mod chaos;
mod connections;
mod dispatch;
mod images;
mod legacy;
mod poll;
mod relay;
mod sandbox;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::http::Pool;
use crate::stats::{Hist, Report, at_us, now_us};
use crate::target::{Target, submit_body};
use crate::worker::{self, Behaviour, Shared, WorkerHists, Ws};
use crate::{Cli, Scenario};

/// Runs the chosen scenario against a fresh or given hub.
pub async fn run(cli: &Cli, nofile: u64) -> anyhow::Result<Report> {
    if cli.scenario == Scenario::Chaos {
        // Runs (and kills, and restarts) its own hub.
        if cli.hub.is_some() {
            anyhow::bail!(
                "the chaos scenario kills and restarts its own hub: --hub cannot be used"
            );
        }
        return chaos::run(cli).await;
    }
    if cli.scenario == Scenario::Images {
        // Runs its own registry, hub and agent.
        return images::run(cli).await;
    }
    let target_arc = Arc::new(match (&cli.hub, &cli.store) {
        (Some(url), _) => Target::attach(url, cli.hub_pid).await?,
        (None, Some(store)) => Target::start_cluster(cli.hubs, store).await?,
        (None, None) if cli.hubs > 1 => {
            anyhow::bail!("--hubs needs --store (postgres://… or postgres for a private server)")
        }
        (None, None) => Target::start(&[]).await?,
    });
    let result = match cli.scenario {
        Scenario::Dispatch => dispatch::run(cli, &target_arc).await,
        Scenario::Burst => burst::run(cli, &target_arc).await,
        Scenario::Connections => connections::run(cli, &target_arc, nofile).await,
        Scenario::Relay => relay::run(cli, &target_arc).await,
        Scenario::Poll => poll::run(cli, &target_arc).await,
        Scenario::Legacy => legacy::run(cli, &target_arc).await,
        Scenario::Sandbox => sandbox::run(cli, &target_arc).await,
        Scenario::Chaos | Scenario::Images => unreachable!("handled above"),
    };
    target_arc.stop().await;
    let mut r = result?;
    r.scenario = cli.scenario.name().to_string();
    if let Some(store) = &cli.store {
        let store = if store == "postgres" {
            "PostgreSQL (private server)".to_string()
        } else {
            "PostgreSQL".to_string()
        };
        note(
            &mut r,
            "store",
            format!("{store}, {} hub(s); CPU/RSS: the first hub", cli.hubs),
        );
    }
    Ok(r)
}

/// Called with `(job id, intended send time)` for each acknowledged submission.
pub type OnAck = Arc<dyn Fn(&str, u64) + Send + Sync>;

/// What an open-loop submitter saw.
#[derive(Default)]
pub struct Submitted {
    /// Submissions acknowledged (201).
    pub acked: AtomicU64,
    /// Refused or failed submissions.
    pub errors: AtomicU64,
    /// Intended send time -> 201 received, for submissions in the window.
    pub latency: Mutex<Hist>,
}

/// The command of each submission, from its intended send time (run-clock µs).
pub type CommandFor = dyn Fn(u64) -> String + Send + Sync;

/// Submits `rate` jobs/s for `secs` seconds from `start_us` (run clock), open-loop: each request
/// is due at its intended time whatever happened to the earlier ones; at most `pool` are in
/// flight (a late one still counts from its intended time). `command(intended)` gives each
/// job's command; `on_ack(job id, intended)` runs for each acknowledged job. Latencies are recorded for intended times in `[warm_us, end_us)`.
#[expect(
    clippy::too_many_arguments,
    reason = "the submitter's shape: rate, window, command, callback"
)]
pub async fn open_loop(
    target: &Arc<Target>,
    pool: &Arc<Pool>,
    command: &CommandFor,
    rate: f64,
    start_us: u64,
    secs: f64,
    window: (u64, u64),
    on_ack: OnAck,
) -> Arc<Submitted> {
    let out = Arc::new(Submitted::default());
    let n = (rate * secs).round() as u64;
    let gap_us = 1e6 / rate.max(1e-3);
    let admin: Arc<str> = Arc::from(format!("Bearer {}", target.admin));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let intended = start_us + (i as f64 * gap_us) as u64;
        tokio::time::sleep_until(at_us(intended).into()).await;
        let pool = pool.clone();
        let (auth, priority) = match target.mix.get() {
            Some(mix) => mix.of(i),
            None => (admin.clone(), 0),
        };
        let out = out.clone();
        let on_ack = on_ack.clone();
        let body = submit_body(&command(intended), intended, priority);
        tasks.spawn(async move {
            let r = pool
                .request(
                    http::Method::POST,
                    "/api/jobs/submit",
                    &[("authorization", &auth)],
                    Some(body),
                )
                .await;
            let now = now_us();
            match r {
                Ok(resp) if resp.status == 201 => {
                    out.acked.fetch_add(1, Ordering::Relaxed);
                    if intended >= window.0 && intended < window.1 {
                        out.latency
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .record_us(now.saturating_sub(intended));
                    }
                    let id = serde_json::from_slice::<serde_json::Value>(&resp.body)
                        .ok()
                        .and_then(|v| v["jobId"].as_str().map(str::to_string));
                    if let Some(id) = id {
                        on_ack(&id, intended);
                    }
                }
                Ok(resp) => {
                    if out.errors.fetch_add(1, Ordering::Relaxed) < 3 {
                        eprintln!(
                            "loadtest: submit answered {}: {}",
                            resp.status,
                            String::from_utf8_lossy(&resp.body)
                        );
                    }
                }
                Err(e) => {
                    if out.errors.fetch_add(1, Ordering::Relaxed) < 3 {
                        eprintln!("loadtest: submit failed: {e:#}");
                    }
                }
            }
        });
        // Reap finished tasks as we go so the set stays small.
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    out
}

/// A fleet of simulated workers running in their own tasks.
pub struct Fleet {
    /// Shared counters.
    pub shared: Arc<Shared>,
    /// Workers connected.
    pub connected: usize,
    /// How long enrolment took.
    pub enrol_time: Duration,
    stop: watch::Sender<bool>,
    tasks: tokio::task::JoinSet<()>,
}

impl Fleet {
    /// Enrols `n` workers at `pace`/s and starts them.
    pub async fn start(
        target: &Arc<Target>,
        token: &str,
        n: usize,
        b: Behaviour,
        pace: f64,
    ) -> Fleet {
        let shared = Shared::new();
        let (socks, enrol_time) =
            worker::enrol_many(target, token, "lt", n, b.concurrency, pace, false, &shared).await;
        Fleet::run(socks, b, shared, enrol_time)
    }

    /// Starts already-enrolled sockets.
    pub fn run(socks: Vec<Ws>, b: Behaviour, shared: Arc<Shared>, enrol_time: Duration) -> Fleet {
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = tokio::task::JoinSet::new();
        let connected = socks.len();
        for (i, ws) in socks.into_iter().enumerate() {
            tasks.spawn(worker::run(ws, i, b, shared.clone(), stop_rx.clone()));
        }
        Fleet {
            shared,
            connected,
            enrol_time,
            stop,
            tasks,
        }
    }

    /// Waits until `done >= want` or `limit` passes; returns whether it got there.
    pub async fn wait_done(&self, want: u64, limit: Duration) -> bool {
        let end = Instant::now() + limit;
        while self.shared.done.load(Ordering::Relaxed) < want {
            if Instant::now() >= end {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// Stops every worker; returns the merged histograms.
    pub async fn stop(mut self) -> WorkerHists {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
        self.shared.merged()
    }
}

/// The duration flag or a scenario default.
pub fn duration(cli: &Cli, default: f64) -> f64 {
    cli.duration.unwrap_or(default).max(0.5)
}

/// A human note for the table.
pub fn note(r: &mut Report, k: &str, v: String) {
    r.notes.push((k.to_string(), v));
}

/// Fails with context when the hub misbehaves during setup.
pub fn setup<T>(r: anyhow::Result<T>, what: &str) -> anyhow::Result<T> {
    r.with_context(|| format!("setup: {what}"))
}

/// Figures sampled over the measured window.
pub struct Sampled {
    /// Report with duration, CPU and RSS filled.
    pub report: Report,
    /// Window length, seconds.
    pub secs: f64,
    /// Increase of the counter over the window.
    pub count: u64,
}

/// Opens the window at `warm_us`, closes it at `end_us` (run clock), counting `counter`'s
/// increase in between.
pub fn sample_window(
    pid: Option<u32>,
    warm_us: u64,
    end_us: u64,
    counter: impl Fn() -> u64 + Send + 'static,
) -> tokio::task::JoinHandle<anyhow::Result<Sampled>> {
    tokio::spawn(async move {
        tokio::time::sleep_until(at_us(warm_us).into()).await;
        let w = crate::stats::Window::open(pid)?;
        let c0 = counter();
        tokio::time::sleep_until(at_us(end_us).into()).await;
        let c1 = counter();
        let mut report = Report::default();
        let secs = w.close(&mut report)?;
        Ok(Sampled {
            report,
            secs,
            count: c1.saturating_sub(c0),
        })
    })
}

/// Run-clock microseconds of `secs` seconds.
pub fn us(secs: f64) -> u64 {
    (secs * 1e6) as u64
}
