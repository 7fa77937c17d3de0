//! `burst`: enqueue a backlog (20,000 jobs by default) while no worker is connected, then connect
//! N simulated no-op workers and measure how fast the hub drains it: jobs / (last result stored -
//! first assignment received).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::{duration, note, open_loop, setup};
use crate::Cli;
use crate::http::Pool;
use crate::stats::{Report, Window, now_us, rate};
use crate::target::Target;
use crate::worker::{self, Behaviour, Shared};

/// Runs the scenario.
pub async fn run(cli: &Cli, target: &Arc<Target>) -> anyhow::Result<Report> {
    let n = cli.workers.unwrap_or(1000);
    let jobs = cli.jobs.unwrap_or(20_000);
    let limit = duration(cli, 120.0);
    let token = setup(target.worker_token().await, "worker token")?;

    // 1. The backlog: as fast as 128 connections go (no window: nothing recorded).
    let pool = Pool::spread(&target.addrs, 128);
    let t0 = Instant::now();
    let sub = open_loop(
        target,
        &pool,
        &|_| "true".to_string(),
        1e9,
        now_us(),
        jobs as f64 / 1e9,
        (u64::MAX, u64::MAX),
        Arc::new(|_: &str, _: u64| {}),
    )
    .await;
    let enqueue_secs = t0.elapsed().as_secs_f64();
    let acked = sub.acked.load(Ordering::Relaxed);

    // 2. The drain: each worker runs as soon as it is enrolled.
    let shared = Shared::new();
    let b = Behaviour {
        concurrency: cli.concurrency.unwrap_or(1),
        job_ms: cli.job_ms,
        output_bytes: cli.output_bytes.unwrap_or(0),
    };
    let window = Window::open(target.pid)?;
    let (stop, stop_rx) = watch::channel(false);
    let pace = cli.connect_rate.unwrap_or(20_000.0);
    let gap = Duration::from_secs_f64(1.0 / pace.max(1.0));
    let mut tasks = tokio::task::JoinSet::new();
    let start = Instant::now();
    for i in 0..n {
        tokio::time::sleep_until(start + gap * i as u32).await;
        let (t, token, shared, stop_rx) = (
            target.clone(),
            token.clone(),
            shared.clone(),
            stop_rx.clone(),
        );
        tasks.spawn(async move {
            match worker::enrol(&t, &token, &format!("burst-{i:05}"), b.concurrency, false).await {
                Ok(ws) => worker::run(ws, i, b, shared, stop_rx).await,
                Err(_) => {
                    shared.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    let end = Instant::now() + Duration::from_secs_f64(limit);
    while shared.done.load(Ordering::Relaxed) < acked && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut r = Report::default();
    window.close(&mut r)?;
    let _ = stop.send(true);
    while tasks.join_next().await.is_some() {}

    let done = shared.done.load(Ordering::Relaxed);
    let first = shared.first_assign_us.load(Ordering::Relaxed);
    let last = shared.last_done_us.load(Ordering::Relaxed);
    let drain_secs = if first == u64::MAX || last <= first {
        0.0
    } else {
        (last - first) as f64 / 1e6
    };
    r.duration_secs = (drain_secs * 100.0).round() / 100.0;
    r.workers = Some(n as u64);
    r.jobs_per_sec = Some(rate(done, drain_secs));
    r.errors = sub.errors.load(Ordering::Relaxed) + shared.errors.load(Ordering::Relaxed);
    r.lost = acked.saturating_sub(done);
    note(
        &mut r,
        "backlog",
        format!(
            "{acked} jobs enqueued in {enqueue_secs:.2} s ({:.0}/s)",
            rate(acked, enqueue_secs)
        ),
    );
    note(
        &mut r,
        "drained",
        format!("{done} jobs in {drain_secs:.2} s"),
    );
    Ok(r)
}
