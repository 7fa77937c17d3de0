//! `poll`: N concurrent clients (closed loop, one keep-alive connection each) polling
//! `GET /api/jobs/status` over a set of finished jobs with output. Measures requests/s and the
//! latency of each poll.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{Fleet, duration, note, open_loop, sample_window, setup, us};
use crate::Cli;
use crate::http::{Conn, Pool};
use crate::stats::{Hist, Report, now_us, rate};
use crate::target::Target;
use crate::worker::Behaviour;

/// Runs the scenario.
pub async fn run(cli: &Cli, target: &Arc<Target>) -> anyhow::Result<Report> {
    let pollers = cli.workers.unwrap_or(50);
    let jobs = cli.jobs.unwrap_or(100).max(1);
    let secs = duration(cli, 10.0);
    let warm = cli.warmup_for(secs);

    // Jobs to poll: finished, with a little output each.
    let token = setup(target.worker_token().await, "worker token")?;
    let b = Behaviour {
        concurrency: 4,
        job_ms: 0,
        output_bytes: 64,
    };
    let fleet = Fleet::start(target, &token, 4, b, 100.0).await;
    let ids = Arc::new(Mutex::new(Vec::with_capacity(jobs)));
    let collect = ids.clone();
    let pool = Pool::new(&target.addr, 32);
    let sub = open_loop(
        target,
        &pool,
        &|_| "echo poll".to_string(),
        1e9,
        now_us(),
        jobs as f64 / 1e9,
        (u64::MAX, u64::MAX),
        Arc::new(move |id: &str, _: u64| {
            collect
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(id.to_string());
        }),
    )
    .await;
    let acked = sub.acked.load(Ordering::Relaxed);
    if !fleet.wait_done(acked, Duration::from_secs(60)).await {
        anyhow::bail!("setup: the polled jobs did not finish");
    }
    fleet.stop().await;
    let ids: Arc<Vec<String>> = Arc::new(std::mem::take(
        &mut *ids.lock().unwrap_or_else(|p| p.into_inner()),
    ));
    if ids.is_empty() {
        anyhow::bail!("setup: no job to poll");
    }

    let requests = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let start_us = now_us() + 200_000;
    let (warm_us, end_us) = (start_us + us(warm), start_us + us(secs));
    let counter = requests.clone();
    let sampler = sample_window(target.pid, warm_us, end_us, move || {
        counter.load(Ordering::Relaxed)
    });
    let auth = Arc::new(format!("Bearer {}", target.admin));
    let mut tasks = tokio::task::JoinSet::new();
    for p in 0..pollers {
        let (t, ids, auth) = (target.clone(), ids.clone(), auth.clone());
        let (requests, errors) = (requests.clone(), errors.clone());
        tasks.spawn(async move {
            let mut h = Hist::default();
            let mut conn: Option<Conn> = None;
            let mut i = p;
            while now_us() < end_us {
                let c = match conn.take().filter(Conn::is_open) {
                    Some(c) => c,
                    None => match Conn::open(&t.addr).await {
                        Ok(c) => c,
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                let mut c = c;
                let path = format!("/api/jobs/status?jobId={}", ids[i % ids.len()]);
                i += 7;
                let t0 = now_us();
                let r = c
                    .request(
                        http::Method::GET,
                        &t.addr,
                        &path,
                        &[("authorization", auth.as_str())],
                        None,
                    )
                    .await;
                let t1 = now_us();
                match r {
                    Ok(resp) if resp.status == 200 => {
                        requests.fetch_add(1, Ordering::Relaxed);
                        if t0 >= warm_us && t0 < end_us {
                            h.record_us(t1 - t0);
                        }
                        conn = Some(c);
                    }
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            h
        });
    }
    let mut hist = Hist::default();
    while let Some(r) = tasks.join_next().await {
        if let Ok(h) = r {
            hist.merge(&h);
        }
    }
    let sampled = sampler.await??;
    let mut r = sampled.report;
    r.requests_per_sec = Some(rate(sampled.count, sampled.secs));
    r.errors = errors.load(Ordering::Relaxed) + sub.errors.load(Ordering::Relaxed);
    r.lost = 0;
    r.latency_ms.poll = hist.summary();
    note(&mut r, "pollers", format!("{pollers} (closed loop)"));
    note(&mut r, "jobs polled", ids.len().to_string());
    Ok(r)
}
