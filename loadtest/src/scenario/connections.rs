//! `connections`: N idle simulated workers connected at a measured pace and held for the
//! duration. Measures hub RSS growth per connection (after minus before, over connected
//! workers), and that none is dropped while idle.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{Fleet, duration, note, setup};
use crate::Cli;
use crate::stats::{Report, Window, sample};
use crate::target::Target;
use crate::worker::{self, Behaviour, Shared};

/// Runs the scenario.
pub async fn run(cli: &Cli, target: &Arc<Target>, nofile: u64) -> anyhow::Result<Report> {
    let n = cli.workers.unwrap_or(10_000);
    let hold = duration(cli, 10.0);
    let pace = cli.connect_rate.unwrap_or(2000.0);
    let token = setup(target.worker_token().await, "worker token")?;
    if (n as u64) + 256 > nofile {
        eprintln!(
            "loadtest: open-file limit {nofile} is low for {n} connections (raise `ulimit -Hn`)"
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let hub_before = target.pid.map(|p| sample(Some(p))).transpose()?;
    let gen_before = sample(None)?;

    let shared = Shared::new();
    let (socks, enrol) =
        worker::enrol_many(target, &token, "idle", n, 1, pace, true, &shared).await;
    let connected = socks.len();
    let b = Behaviour {
        concurrency: 1,
        job_ms: 0,
        output_bytes: 0,
    };
    let fleet = Fleet::run(socks, b, shared.clone(), enrol);
    // Let allocations settle before measuring.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let hub_after = target.pid.map(|p| sample(Some(p))).transpose()?;
    let gen_after = sample(None)?;
    let window = Window::open(target.pid)?;
    tokio::time::sleep(Duration::from_secs_f64(hold)).await;
    let mut r = Report::default();
    window.close(&mut r)?;
    let errors = shared.errors.load(Ordering::Relaxed);
    fleet.stop().await;

    r.workers = Some(connected as u64);
    r.errors = errors + (n - connected) as u64;
    r.lost = 0;
    let per =
        |a: u64, b: u64| ((b as f64 - a as f64) / connected.max(1) as f64 * 10.0).round() / 10.0;
    if let (Some(a), Some(b)) = (hub_before, hub_after) {
        r.hub_rss_per_worker_kb = Some(per(a.rss_kb, b.rss_kb));
        note(
            &mut r,
            "hub RSS before/after",
            format!("{} / {} KiB", a.rss_kb, b.rss_kb),
        );
    }
    note(
        &mut r,
        "generator RSS/worker",
        format!("{:.1} KiB", per(gen_before.rss_kb, gen_after.rss_kb)),
    );
    note(
        &mut r,
        "enrolment",
        format!(
            "{connected} of {n} in {:.2} s (paced at {pace:.0}/s)",
            enrol.as_secs_f64()
        ),
    );
    Ok(r)
}
