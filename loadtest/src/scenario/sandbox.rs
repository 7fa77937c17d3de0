//! `sandbox`: real `cmdx agent` processes (root) running `true` through the real sandbox; a
//! submitter offers R jobs/s open-loop; completions are observed as live job events on
//! `/ws/client` (`subscribeJobs`). Measures completed jobs/s, intended submit -> completed
//! event, errors (failed jobs) and lost jobs.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use cmdx_proto::JobStatus;
use cmdx_proto::client::ServerMsg;
use futures_util::{SinkExt, StreamExt};
use tokio::process::{Child, Command};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::{duration, note, open_loop, sample_window, setup, us};
use crate::Cli;
use crate::http::Pool;
use crate::stats::{Hist, Report, cpu_pct, now_us, rate, sample};
use crate::target::{Target, cmdx_bin};
use crate::worker;

#[derive(Default)]
struct Seen {
    /// Job id -> (terminal status, run-clock µs the event arrived).
    ended: HashMap<String, (JobStatus, u64)>,
}

fn stop_agents(agents: &mut [Child]) {
    for a in agents.iter() {
        if let Some(pid) = a.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }
}

/// Runs the scenario.
pub async fn run(cli: &Cli, target: &Arc<Target>) -> anyhow::Result<Report> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the sandbox scenario runs real `cmdx agent`s and needs root");
    }
    let n = cli.workers.unwrap_or(2);
    let conc = cli.concurrency.unwrap_or(8);
    let offered = cli.rate.unwrap_or(400.0);
    let secs = duration(cli, 10.0);
    let warm = cli.warmup_for(secs);
    let token = setup(target.worker_token().await, "worker token")?;

    // Jobs run as unprivileged uids: their work dirs must be reachable through the parents.
    let tmp = tempfile::Builder::new()
        .prefix("cmdx-loadtest-agents-")
        .tempdir()
        .context("agent temp folder")?;
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755))
        .context("chmod agent temp folder")?;
    let mut agents = Vec::with_capacity(n);
    for i in 0..n {
        let dir = tmp.path().join(format!("agent-{i}"));
        let child = Command::new(cmdx_bin()?)
            .arg("agent")
            .arg("--hub")
            .arg(&target.url)
            .arg("--work-dir")
            .arg(&dir)
            .arg("--worker-id")
            .arg(format!("sandbox-{i}"))
            .arg("--uid-base")
            .arg((200_000 + i * 10_000).to_string())
            .arg("--concurrency")
            .arg(conc.to_string())
            .env("CMDX_AGENT_TOKEN", &token)
            .env(
                "RUST_LOG",
                std::env::var("LOADTEST_HUB_LOG").unwrap_or_else(|_| "error".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("spawning cmdx agent")?;
        agents.push(child);
    }
    let result = measure(cli, target, &agents, n, conc, offered, secs, warm).await;
    stop_agents(&mut agents);
    for a in agents.iter_mut() {
        if tokio::time::timeout(Duration::from_secs(15), a.wait())
            .await
            .is_err()
        {
            let _ = a.start_kill();
            let _ = a.wait().await;
        }
    }
    result
}

#[expect(
    clippy::too_many_arguments,
    reason = "the scenario's settings, passed through"
)]
async fn measure(
    _cli: &Cli,
    target: &Arc<Target>,
    agents: &[Child],
    n: usize,
    conc: u32,
    offered: f64,
    secs: f64,
    warm: f64,
) -> anyhow::Result<Report> {
    // Wait for every agent to be online.
    let online_by = Instant::now() + Duration::from_secs(60);
    loop {
        let v = target
            .call(
                http::Method::GET,
                "/api/workers/list",
                Some(&target.admin),
                None,
            )
            .await?;
        let online = v["workers"]
            .as_array()
            .map(|a| a.iter().filter(|w| w["status"] == "online").count())
            .unwrap_or(0);
        if online >= n {
            break;
        }
        if Instant::now() > online_by {
            bail!("setup: only {online} of {n} agents came online within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Job events.
    let mut ws = setup(
        worker::connect_ws(target, "/ws/client", &target.admin, false).await,
        "event socket",
    )?;
    ws.send(Message::text(r#"{"type":"subscribeJobs"}"#))
        .await
        .context("subscribing to job events")?;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let completed = Arc::new(AtomicU64::new(0));
    let reader = {
        let (seen, completed) = (seen.clone(), completed.clone());
        tokio::spawn(async move {
            while let Some(Ok(m)) = ws.next().await {
                let Message::Text(t) = m else { continue };
                let Ok(ServerMsg::Job(j)) = serde_json::from_str::<ServerMsg>(&t) else {
                    continue;
                };
                if j.status.is_terminal() {
                    let now = now_us();
                    let mut s = seen.lock().unwrap_or_else(|p| p.into_inner());
                    if s.ended.insert(j.job_id, (j.status, now)).is_none() {
                        completed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;

    let submitted: Arc<Mutex<HashMap<String, u64>>> = Arc::new(Mutex::new(HashMap::new()));
    let record = submitted.clone();
    let pool = Pool::new(&target.addr, 64);
    let start_us = now_us() + 200_000;
    let (warm_us, end_us) = (start_us + us(warm), start_us + us(secs));
    let counter = completed.clone();
    let sampler = sample_window(target.pid, warm_us, end_us, move || {
        counter.load(Ordering::Relaxed)
    });
    let agent_pids: Vec<u32> = agents.iter().filter_map(Child::id).collect();
    let agents_before: Vec<_> = agent_pids
        .iter()
        .filter_map(|p| sample(Some(*p)).ok())
        .collect();
    let sub = open_loop(
        target,
        &pool,
        "true",
        offered,
        start_us,
        secs,
        (warm_us, end_us),
        Arc::new(move |id: &str, intended: u64| {
            record
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id.to_string(), intended);
        }),
    )
    .await;
    let sampled = sampler.await??;
    let agents_after: Vec<_> = agent_pids
        .iter()
        .filter_map(|p| sample(Some(*p)).ok())
        .collect();
    let acked = sub.acked.load(Ordering::Relaxed);
    let drain_end = Instant::now() + Duration::from_secs(60);
    while completed.load(Ordering::Relaxed) < acked && Instant::now() < drain_end {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    reader.abort();

    let submitted = std::mem::take(&mut *submitted.lock().unwrap_or_else(|p| p.into_inner()));
    let seen = std::mem::take(&mut *seen.lock().unwrap_or_else(|p| p.into_inner()));
    let mut hist = Hist::default();
    let (mut ok, mut failed, mut lost) = (0u64, 0u64, 0u64);
    for (id, intended) in &submitted {
        match seen.ended.get(id) {
            Some((JobStatus::Completed, at)) => {
                ok += 1;
                if *intended >= warm_us && *intended < end_us {
                    hist.record_us(at.saturating_sub(*intended));
                }
            }
            Some(_) => failed += 1,
            None => lost += 1,
        }
    }
    let mut r = sampled.report;
    r.workers = Some(n as u64);
    r.jobs_per_sec = Some(rate(sampled.count, sampled.secs));
    r.errors = sub.errors.load(Ordering::Relaxed) + failed;
    r.lost = lost + acked.saturating_sub(submitted.len() as u64);
    r.latency_ms.submit_to_done = hist.summary();
    let agents_cpu: f64 = agents_before
        .iter()
        .zip(&agents_after)
        .map(|(a, b)| cpu_pct(a, b))
        .sum();
    note(&mut r, "agents", format!("{n} x concurrency {conc}"));
    note(
        &mut r,
        "offered",
        format!("{offered:.0} jobs/s, {acked} acknowledged, {ok} completed"),
    );
    note(
        &mut r,
        "agents CPU (own process)",
        format!("{agents_cpu:.0} %"),
    );
    Ok(r)
}
