//! `legacy`: N REST workers speaking the original Node agent's API (`register`, `get-job` every
//! poll interval, `heartbeat` every two, `submit-result`), their first polls spread evenly over
//! one interval; a submitter offers R jobs/s open-loop. Measures REST latency, requests/s,
//! intended submit -> result stored, errors and lost jobs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::{duration, note, open_loop, sample_window, setup, us};
use crate::Cli;
use crate::http::{Conn, Pool};
use crate::stats::{Hist, Report, now_us, rate};
use crate::target::{Target, intended_of};

#[derive(Default)]
struct Counts {
    requests: AtomicU64,
    errors: AtomicU64,
    done: AtomicU64,
}

#[derive(Default)]
struct Hists {
    poll: Hist,
    done: Hist,
}

/// Histogram shards (one HDR histogram is ~160 KB: not one per poller).
const SHARDS: usize = 16;

struct Poller {
    target: Arc<Target>,
    shard: Arc<Mutex<Hists>>,
    id: String,
    token: Arc<String>,
    conn: Option<Conn>,
    counts: Arc<Counts>,
    window: (u64, u64),
}

impl Poller {
    async fn call(
        &mut self,
        method: http::Method,
        path: &str,
        body: Option<Value>,
    ) -> Option<(u16, Bytes)> {
        let c = match self.conn.take().filter(Conn::is_open) {
            Some(c) => c,
            None => match Conn::open(&self.target.addr).await {
                Ok(c) => c,
                Err(_) => {
                    self.counts.errors.fetch_add(1, Ordering::Relaxed);
                    return None;
                }
            },
        };
        let mut c = c;
        let t0 = now_us();
        let r = c
            .request(
                method,
                &self.target.addr,
                path,
                &[("x-worker-token", self.token.as_str())],
                body.map(|b| Bytes::from(b.to_string())),
            )
            .await;
        let t1 = now_us();
        match r {
            Ok(resp) if resp.status < 300 => {
                self.counts.requests.fetch_add(1, Ordering::Relaxed);
                if t0 >= self.window.0 && t0 < self.window.1 {
                    self.shard
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .poll
                        .record_us(t1 - t0);
                }
                self.conn = Some(c);
                Some((resp.status, resp.body))
            }
            _ => {
                self.counts.errors.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    async fn run(mut self, first: Instant, interval: Duration, stop_us: Arc<AtomicU64>) {
        tokio::time::sleep_until(first).await;
        let reg = json!({"workerId": self.id, "hostname": "loadtest", "os": "linux",
            "cpuCount": 1, "ramTotalMb": 1024});
        self.call(http::Method::POST, "/api/workers/register", Some(reg))
            .await;
        let mut tick = tokio::time::interval_at(first + interval, interval);
        let mut n = 0u64;
        loop {
            tick.tick().await;
            if now_us() >= stop_us.load(Ordering::Relaxed) {
                break;
            }
            n += 1;
            if n.is_multiple_of(2) {
                let hb = json!({"workerId": self.id, "status": "idle"});
                self.call(http::Method::POST, "/api/workers/heartbeat", Some(hb))
                    .await;
            }
            let path = format!("/api/jobs/get-job?workerId={}", self.id);
            let Some((200, body)) = self.call(http::Method::GET, &path, None).await else {
                continue;
            };
            let Ok(v) = serde_json::from_slice::<Value>(&body) else {
                self.counts.errors.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let (Some(job_id), Some(command)) =
                (v["job"]["jobId"].as_str(), v["job"]["command"].as_str())
            else {
                continue;
            };
            let intended = intended_of(command);
            let result = json!({"jobId": job_id, "workerId": self.id, "stdout": "",
                "stderr": "", "exitCode": 0});
            if self
                .call(http::Method::POST, "/api/jobs/submit-result", Some(result))
                .await
                .is_some()
            {
                self.counts.done.fetch_add(1, Ordering::Relaxed);
                if let Some(t) = intended
                    && t >= self.window.0
                    && t < self.window.1
                {
                    self.shard
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .done
                        .record_us(now_us().saturating_sub(t));
                }
            }
        }
    }
}

/// Runs the scenario.
pub async fn run(cli: &Cli, target: &Arc<Target>) -> anyhow::Result<Report> {
    let n = cli.workers.unwrap_or(1000);
    let offered = cli.rate.unwrap_or(10.0);
    let secs = duration(cli, 30.0);
    let warm = cli.warmup_for(secs);
    let interval = Duration::from_millis(cli.poll_interval_ms.max(10));
    let token = Arc::new(setup(target.worker_token().await, "worker token")?);
    let counts = Arc::new(Counts::default());

    // Pollers start spread evenly over one interval (a measured pace of n / interval per s).
    let t0 = Instant::now() + Duration::from_millis(100);
    let start_us = now_us() + 100_000 + interval.as_micros() as u64;
    let (warm_us, end_us) = (start_us + us(warm), start_us + us(secs));
    // Pollers stop after the submitter, once every job is taken or three intervals pass.
    let stop_us = Arc::new(AtomicU64::new(u64::MAX));
    let shards: Vec<Arc<Mutex<Hists>>> = (0..SHARDS)
        .map(|_| Arc::new(Mutex::new(Hists::default())))
        .collect();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let p = Poller {
            target: target.clone(),
            shard: shards[i % SHARDS].clone(),
            id: format!("legacy-{i:05}"),
            token: token.clone(),
            conn: None,
            counts: counts.clone(),
            window: (warm_us, end_us),
        };
        let first = t0 + interval.mul_f64(i as f64 / n as f64);
        tasks.spawn(p.run(first, interval, stop_us.clone()));
    }
    let counter = counts.clone();
    let sampler = sample_window(target.pid, warm_us, end_us, move || {
        counter.requests.load(Ordering::Relaxed)
    });
    let pool = Pool::new(&target.addr, 32);
    let sub = open_loop(
        target,
        &pool,
        &|_| "true".to_string(),
        offered,
        start_us,
        secs,
        (warm_us, end_us),
        Arc::new(|_: &str, _: u64| {}),
    )
    .await;
    let sampled = sampler.await??;
    let acked = sub.acked.load(Ordering::Relaxed);
    let drain_end = Instant::now() + interval * 3;
    while counts.done.load(Ordering::Relaxed) < acked && Instant::now() < drain_end {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop_us.store(now_us(), Ordering::Relaxed);
    let mut poll = Hist::default();
    let mut done_h = Hist::default();
    while tasks.join_next().await.is_some() {}
    for s in &shards {
        let h = s.lock().unwrap_or_else(|p| p.into_inner());
        poll.merge(&h.poll);
        done_h.merge(&h.done);
    }
    let done = counts.done.load(Ordering::Relaxed);
    let mut r = sampled.report;
    r.workers = Some(n as u64);
    r.requests_per_sec = Some(rate(sampled.count, sampled.secs));
    r.jobs_per_sec = Some(rate(done, secs));
    r.errors = counts.errors.load(Ordering::Relaxed) + sub.errors.load(Ordering::Relaxed);
    r.lost = acked.saturating_sub(done);
    r.latency_ms.poll = poll.summary();
    r.latency_ms.submit_to_done = done_h.summary();
    note(
        &mut r,
        "poll interval",
        format!("{} ms", interval.as_millis()),
    );
    note(
        &mut r,
        "offered",
        format!("{offered:.1} jobs/s, {acked} acknowledged"),
    );
    Ok(r)
}
