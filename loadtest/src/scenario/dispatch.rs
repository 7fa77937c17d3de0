//! `dispatch`: N no-op simulated workers; submitters offer R durable jobs/s open-loop for the
//! duration. Measures completed jobs/s, submit -> assigned, submit -> result stored, errors and
//! lost jobs (acknowledged but never finished).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{Fleet, duration, note, open_loop, sample_window, setup, us};
use crate::Cli;
use crate::http::Pool;
use crate::stats::{Report, now_us, rate};
use crate::target::Target;
use crate::worker::Behaviour;

/// Runs the scenario.
pub async fn run(cli: &Cli, target: &Arc<Target>) -> anyhow::Result<Report> {
    let n = cli.workers.unwrap_or(1000);
    let offered = cli.rate.unwrap_or(1000.0);
    let secs = duration(cli, 60.0);
    let warm = cli.warmup_for(secs);
    let token = setup(target.worker_token().await, "worker token")?;
    let users = cli.users.unwrap_or(0);
    if users > 0 || cli.priorities {
        setup(
            target.set_mix(users.max(1), cli.priorities).await,
            "submitting users",
        )?;
    }
    let b = Behaviour {
        concurrency: cli.concurrency.unwrap_or(1),
        job_ms: cli.job_ms,
        output_bytes: cli.output_bytes.unwrap_or(0),
    };
    let fleet = Fleet::start(target, &token, n, b, cli.connect_rate.unwrap_or(2000.0)).await;
    let pool = Pool::spread(&target.addrs, 256);
    let start_us = now_us() + 200_000;
    let (warm_us, end_us) = (start_us + us(warm), start_us + us(secs));
    fleet.shared.set_window(warm_us, end_us);
    let shared = fleet.shared.clone();
    let sampler = sample_window(target.pid, warm_us, end_us, move || {
        shared.done.load(Ordering::Relaxed)
    });
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
    fleet.wait_done(acked, Duration::from_secs(30)).await;
    let done = fleet.shared.done.load(Ordering::Relaxed);
    let worker_errors = fleet.shared.errors.load(Ordering::Relaxed);
    let connected = fleet.connected;
    let enrol = fleet.enrol_time;
    let h = fleet.stop().await;

    let mut r = sampled.report;
    r.workers = Some(connected as u64);
    r.jobs_per_sec = Some(rate(sampled.count, sampled.secs));
    r.errors = sub.errors.load(Ordering::Relaxed) + worker_errors;
    r.lost = acked.saturating_sub(done);
    r.latency_ms.submit_to_assigned = h.assigned.summary();
    r.latency_ms.submit_to_done = h.done.summary();
    note(&mut r, "offered", format!("{offered:.0} jobs/s"));
    if let Some(mix) = target.mix.get() {
        note(
            &mut r,
            "submitters",
            format!(
                "{} users{}",
                mix.auths.len(),
                if mix.priorities {
                    ", priorities 0/10/-10"
                } else {
                    ""
                }
            ),
        );
    }
    note(&mut r, "acknowledged", acked.to_string());
    if let Some(p) = sub
        .latency
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .summary()
    {
        note(
            &mut r,
            "submit 201",
            format!("p50 {:.3} / p99 {:.3} / max {:.3} ms", p.p50, p.p99, p.max),
        );
    }
    note(
        &mut r,
        "enrolment",
        format!("{connected} workers in {:.2} s", enrol.as_secs_f64()),
    );
    Ok(r)
}
