//! `sandbox`: real `cmdx agent` processes (root) running `true` through the real sandbox; a
//! submitter offers R jobs/s open-loop; completions are observed as live job events on
//! `/ws/client` (`subscribeJobs`). Measures completed jobs/s, intended submit -> completed
//! event, errors (failed jobs) and lost jobs. Then, in the same run and when
//! `/usr/bin/bwrap` exists, the peer: bubblewrap with the isolation of cmdx's private root
//! (every namespace, read-only system binds, its own `/proc`, `/dev` and `/tmp`, a bound
//! workspace, an unprivileged uid) running `true` 4 at a time for as long, with no hub, no
//! network round trip and no cgroups.

use std::collections::HashMap;
use std::os::fd::AsRawFd;
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
use crate::target::{Target, cmdx_bin, owned_child};
use crate::worker;

#[derive(Default)]
struct Seen {
    /// Job id -> (terminal status, run-clock µs the event arrived).
    ended: HashMap<String, (JobStatus, u64)>,
}

/// How to start one real `cmdx agent`.
pub struct AgentSpec<'a> {
    /// Hub base URL.
    pub hub: &'a str,
    /// Worker token.
    pub token: &'a str,
    /// Work dir (its worker id is kept there unless `worker_id` is given).
    pub work_dir: &'a std::path::Path,
    /// Fixed worker id.
    pub worker_id: Option<String>,
    /// First uid of its jobs (each agent needs its own range).
    pub uid_base: u32,
    /// Slots.
    pub concurrency: u32,
    /// A network namespace (an open `/run/netns/NAME`) to run the agent in.
    pub netns: Option<&'a std::fs::File>,
}

/// Starts one real `cmdx agent` (killed when this generator dies); its stderr goes to `stderr`.
pub fn spawn_agent(spec: &AgentSpec<'_>, stderr: Stdio) -> anyhow::Result<Child> {
    let mut cmd = Command::new(cmdx_bin()?);
    cmd.arg("agent")
        .arg("--hub")
        .arg(spec.hub)
        .arg("--work-dir")
        .arg(spec.work_dir)
        .arg("--uid-base")
        .arg(spec.uid_base.to_string())
        .arg("--concurrency")
        .arg(spec.concurrency.to_string())
        .env("CMDX_AGENT_TOKEN", spec.token);
    if let Some(id) = &spec.worker_id {
        cmd.arg("--worker-id").arg(id);
    }
    owned_child(&mut cmd, Stdio::null(), stderr);
    if let Some(ns) = spec.netns {
        let fd = ns.as_raw_fd();
        // SAFETY: setns(2) is async-signal-safe; `ns` stays open until spawn returns.
        unsafe {
            cmd.pre_exec(move || {
                let ns = std::os::fd::BorrowedFd::borrow_raw(fd);
                nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
                Ok(())
            });
        }
    }
    cmd.spawn().context("spawning cmdx agent")
}

/// A temp folder for agent work dirs. Jobs run as unprivileged uids: their work dirs must be
/// reachable through the parents, so it is 0755.
pub fn agents_dir(prefix: &str) -> anyhow::Result<tempfile::TempDir> {
    let tmp = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .context("agent temp folder")?;
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755))
        .context("chmod agent temp folder")?;
    Ok(tmp)
}

/// Waits until at least `n` workers are online, for at most `limit`.
pub async fn wait_online(target: &Target, n: usize, limit: Duration) -> anyhow::Result<()> {
    let online_by = Instant::now() + limit;
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
            return Ok(());
        }
        if Instant::now() > online_by {
            bail!("setup: only {online} of {n} agents came online within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Stops every agent: SIGTERM, then SIGKILL for any still running after 15 s. Returns how
/// many needed the SIGKILL.
pub async fn shutdown_agents(agents: &mut [Child]) -> usize {
    let mut killed = 0;
    for a in agents.iter() {
        if let Some(pid) = a.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }
    for a in agents.iter_mut() {
        if tokio::time::timeout(Duration::from_secs(15), a.wait())
            .await
            .is_err()
        {
            let _ = a.start_kill();
            let _ = a.wait().await;
            killed += 1;
        }
    }
    killed
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

    let tmp = agents_dir("cmdx-loadtest-agents-")?;
    let mut agents = Vec::with_capacity(n);
    for i in 0..n {
        let dir = tmp.path().join(format!("agent-{i}"));
        let child = spawn_agent(
            &AgentSpec {
                hub: &target.url,
                token: &token,
                work_dir: &dir,
                worker_id: Some(format!("sandbox-{i}")),
                uid_base: 200_000 + i as u32 * 10_000,
                concurrency: conc,
                netns: None,
            },
            Stdio::inherit(),
        )?;
        agents.push(child);
    }
    let result = measure(cli, target, &agents, n, conc, offered, secs, warm).await;
    shutdown_agents(&mut agents).await;
    let mut report = result?;
    if let Some(peer) = bwrap_rate(tmp.path(), secs, 4)? {
        let ours = report.jobs_per_sec.unwrap_or(0.0);
        note(
            &mut report,
            "peer: bwrap, same isolation, 4 at a time",
            format!("{peer:.0} runs/s (cmdx/bwrap {:.2})", ours / peer.max(1e-9)),
        );
    }
    Ok(report)
}

/// Runs of `bwrap … true` per second, `parallel` at a time for `secs` (None: not installed).
fn bwrap_rate(dir: &std::path::Path, secs: f64, parallel: usize) -> anyhow::Result<Option<f64>> {
    let bwrap = std::path::Path::new("/usr/bin/bwrap");
    if !bwrap.exists() {
        return Ok(None);
    }
    let ws = dir.join("bwrap-workspace");
    std::fs::create_dir_all(&ws).context("bwrap workspace")?;
    let uid = 299_500u32;
    std::os::unix::fs::chown(&ws, Some(uid), Some(uid)).context("chown bwrap workspace")?;
    let mut args: Vec<String> = ["--unshare-all", "--die-with-parent", "--new-session"]
        .map(String::from)
        .to_vec();
    for d in ["/usr", "/etc"] {
        args.extend(["--ro-bind".into(), d.into(), d.into()]);
    }
    for d in ["/bin", "/sbin", "/lib", "/lib64"] {
        match std::fs::read_link(d) {
            Ok(to) => args.extend(["--symlink".into(), to.display().to_string(), d.into()]),
            Err(_) if std::path::Path::new(d).exists() => {
                args.extend(["--ro-bind".into(), d.into(), d.into()])
            }
            Err(_) => {}
        }
    }
    args.extend(
        [
            "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--bind",
        ]
        .map(String::from),
    );
    args.extend([ws.display().to_string(), "/workspace".into()]);
    args.extend(["--chdir", "/workspace", "--uid"].map(String::from));
    args.extend([
        uid.to_string(),
        "--gid".into(),
        uid.to_string(),
        "true".into(),
    ]);
    let end = std::time::Instant::now() + Duration::from_secs_f64(secs);
    let runs = AtomicU64::new(0);
    let failed = AtomicU64::new(0);
    let start = std::time::Instant::now();
    std::thread::scope(|s| {
        for _ in 0..parallel {
            s.spawn(|| {
                while std::time::Instant::now() < end {
                    let ok = std::process::Command::new(bwrap)
                        .args(&args)
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status()
                        .is_ok_and(|st| st.success());
                    let c = if ok { &runs } else { &failed };
                    c.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    if failed.load(Ordering::Relaxed) > 0 && runs.load(Ordering::Relaxed) == 0 {
        bail!("bwrap failed on every run: {}", args.join(" "));
    }
    Ok(Some(
        runs.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64(),
    ))
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
    wait_online(target, n, Duration::from_secs(60)).await?;

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
        &|_| "true".to_string(),
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
