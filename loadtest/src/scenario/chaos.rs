//! `chaos`: real `cmdx agent` processes run real short jobs under steady open-loop submissions
//! while a fault schedule `kill -9`s the hub (restarting it on the same data and port), `kill
//! -9`s agents (starting a new process on the same work dir), and cuts and degrades the link of
//! the agents that live in a private network namespace. Then everything is healed, the run waits
//! (bounded) for quiescence, and every acknowledged job is scored from the hub's REST API:
//! `lost` (missing, or completed without its output), `duplicated` (finished by two attempts,
//! or its marker twice in its output), `stuck` (not terminal), `recovered` (completed after
//! losing an attempt).
//!
//! Network: a namespace `cmdx-chaos-<pid>` joined to the root namespace by a veth pair on
//! `10.231.S.0/24` (S from the pid); the hub listens on the root side's address (reachable
//! locally whatever the link state); half the agents run inside the namespace. A cut is `ip link
//! set down` of the root side; a degradation is nftables random loss inside the namespace plus a
//! `tbf`-throttled rate on the veth (this kernel has no `netem`). Namespace and veth are removed
//! on exit, and a previous crashed run's are removed at start. `--no-netns` runs every agent on
//! loopback and reports 0 cuts.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use cmdx_proto::FailureKind;
use cmdx_proto::JobStatus;
use cmdx_proto::rest::AttemptView;
use tokio::process::Child;
use tokio::time::Instant;

use super::sandbox::{AgentSpec, agents_dir, shutdown_agents, spawn_agent, wait_online};
use super::{duration, note, open_loop};
use crate::Cli;
use crate::http::Pool;
use crate::stats::{ChaosFigures, Hist, Report, now_us};
use crate::target::{PRIVATE_PREFIX, Target, spawn_hub};

/// Reconnect grace of the chaos hub, seconds: short cuts stay inside it (the agent resumes its
/// jobs), long ones outlast it (the jobs are requeued and the agent's late results are fenced).
const GRACE_SECS: u64 = 5;
/// Longest wait for every acknowledged job to become terminal once everything is healed.
const QUIESCE_LIMIT: Duration = Duration::from_secs(90);
/// Slots per agent.
const CONCURRENCY: u32 = 4;

/// A small deterministic generator (splitmix64) for the fault schedule.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[lo, hi)` seconds.
    fn secs(&mut self, lo: f64, hi: f64) -> Duration {
        let u = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        Duration::from_secs_f64(lo + u * (hi - lo))
    }

    /// Uniform in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Runs a command; fails with its stderr.
fn cmd(prog: &str, args: &[&str]) -> anyhow::Result<()> {
    cmd_input(prog, args, "")
}

/// Runs a command with `input` on its stdin; fails with its stderr.
fn cmd_input(prog: &str, args: &[&str], input: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut child = std::process::Command::new(prog)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {prog}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes()).context("writing stdin")?;
    }
    let out = child.wait_with_output().context("waiting")?;
    if !out.status.success() {
        bail!(
            "{prog} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// nftables rules of a degraded link: random loss both ways inside the namespace.
const LOSS_RULES: &str = "table inet cmdx_chaos {
  chain out { type filter hook output priority 0; numgen random mod 100 < 15 drop; }
  chain in { type filter hook input priority 0; numgen random mod 100 < 15 drop; }
}
";

/// The private network: a namespace for some agents and the veth pair to it. Removed on drop.
struct Net {
    /// Namespace name (`cmdx-chaos-<pid>`).
    name: String,
    /// Root-side veth.
    veth: String,
    /// The root side's address: the hub listens here.
    hub_ip: String,
    /// `/run/netns/<name>`, open for `setns` when agents start.
    ns: File,
    /// Link state, so healing knows what to undo.
    down: bool,
    degraded: bool,
}

impl Net {
    fn setup() -> anyhow::Result<Net> {
        cmd("ip", &["-V"]).context("the chaos scenario needs `ip` (iproute2), or --no-netns")?;
        cmd("tc", &["-V"]).context("the chaos scenario needs `tc` (iproute2), or --no-netns")?;
        cmd("nft", &["--version"])
            .context("the chaos scenario needs `nft` (nftables) for link loss, or --no-netns")?;
        remove_stale();
        let pid = std::process::id();
        let name = format!("cmdx-chaos-{pid}");
        let veth = format!("cxc{pid}r");
        let peer = format!("cxc{pid}n");
        let subnet = format!("{PRIVATE_PREFIX}{}", pid % 250 + 1);
        let hub_ip = format!("{subnet}.1");
        cmd("ip", &["netns", "add", &name]).context(
            "creating a network namespace (root and netns support needed, or --no-netns)",
        )?;
        // From here on, Drop removes what exists.
        let ns = match File::open(format!("/run/netns/{name}")) {
            Ok(f) => f,
            Err(e) => {
                let _ = cmd("ip", &["netns", "del", &name]);
                return Err(e).context("opening the new network namespace");
            }
        };
        let net = Net {
            name,
            veth,
            hub_ip,
            ns,
            down: false,
            degraded: false,
        };
        let n = net.name.as_str();
        cmd(
            "ip",
            &[
                "link", "add", &net.veth, "type", "veth", "peer", "name", &peer, "netns", n,
            ],
        )?;
        cmd(
            "ip",
            &[
                "addr",
                "add",
                &format!("{}/24", net.hub_ip),
                "dev",
                &net.veth,
            ],
        )?;
        cmd("ip", &["link", "set", &net.veth, "up"])?;
        cmd(
            "ip",
            &[
                "-n",
                n,
                "addr",
                "add",
                &format!("{subnet}.2/24"),
                "dev",
                &peer,
            ],
        )?;
        cmd("ip", &["-n", n, "link", "set", &peer, "up"])?;
        cmd("ip", &["-n", n, "link", "set", "lo", "up"])?;
        Ok(net)
    }

    /// Cuts (`down`) or heals the link.
    fn set_down(&mut self, down: bool) -> anyhow::Result<()> {
        cmd(
            "ip",
            &["link", "set", &self.veth, if down { "down" } else { "up" }],
        )?;
        self.down = down;
        Ok(())
    }

    /// Degrades the link (loss and a throttled rate) or restores it.
    fn set_degraded(&mut self, on: bool) -> anyhow::Result<()> {
        if on {
            cmd_input(
                "ip",
                &["netns", "exec", &self.name, "nft", "-f", "-"],
                LOSS_RULES,
            )?;
            cmd(
                "tc",
                &[
                    "qdisc", "add", "dev", &self.veth, "root", "tbf", "rate", "256kbit", "burst",
                    "8kb", "latency", "400ms",
                ],
            )?;
        } else {
            cmd(
                "ip",
                &[
                    "netns",
                    "exec",
                    &self.name,
                    "nft",
                    "delete",
                    "table",
                    "inet",
                    "cmdx_chaos",
                ],
            )?;
            cmd("tc", &["qdisc", "del", "dev", &self.veth, "root"])?;
        }
        self.degraded = on;
        Ok(())
    }

    /// Undoes any cut or degradation.
    fn heal(&mut self) -> anyhow::Result<()> {
        if self.down {
            self.set_down(false)?;
        }
        if self.degraded {
            self.set_degraded(false)?;
        }
        Ok(())
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        remove_net(&self.name, &self.veth);
    }
}

/// Kills what still runs in namespace `name`, then removes it and the veth `veth`.
fn remove_net(name: &str, veth: &str) {
    if let Ok(out) = std::process::Command::new("ip")
        .args(["netns", "pids", name])
        .output()
    {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Ok(p) = pid.parse::<i32>() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(p),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
    let _ = cmd("ip", &["link", "del", veth]);
    let _ = cmd("ip", &["netns", "del", name]);
}

/// Whether `pid` is a live (not zombie) `loadtest` process.
fn generator_alive(pid: &str) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .map(str::trim)
            .unwrap_or("")
            .to_string()
    };
    field("Name:") == "loadtest" && !field("State:").starts_with('Z')
}

/// Removes the namespaces and veths of chaos runs whose process is gone.
fn remove_stale() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(pid) = name.strip_prefix("cmdx-chaos-") else {
            continue;
        };
        if generator_alive(pid) {
            continue;
        }
        eprintln!("loadtest: removing {name} left by a crashed chaos run");
        remove_net(&name, &format!("cxc{pid}r"));
    }
}

/// The hub process, killed and restarted on the same data folder and port.
struct HubProc {
    /// Extra flags (the shared store of a cluster).
    extra: Vec<String>,
    listen: String,
    data: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    /// `kill -9` to listening again.
    downtime: Hist,
}

impl HubProc {
    /// Starts the hub (retrying for 30 s while the port is not yet free); returns its URL.
    async fn start(&mut self) -> anyhow::Result<String> {
        let mut extra = vec!["--reconnect-grace-secs".to_string(), GRACE_SECS.to_string()];
        extra.extend(self.extra.iter().cloned());
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.log)
                .context("hub log")?;
            match spawn_hub(&self.listen, &self.data, &extra, Stdio::from(log)).await {
                Ok((child, url)) => {
                    self.child = Some(child);
                    return Ok(url);
                }
                Err(e) if Instant::now() < until => {
                    eprintln!("loadtest: hub restart failed, retrying: {e:#}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(e).context("restarting the hub"),
            }
        }
    }

    /// `kill -9`, then a restart on the same data and port.
    async fn kill_and_restart(&mut self) -> anyhow::Result<()> {
        let t0 = now_us();
        if let Some(mut c) = self.child.take() {
            let _ = c.start_kill();
            let _ = c.wait().await;
        }
        self.start().await?;
        self.downtime.record_us(now_us() - t0);
        Ok(())
    }
}

/// One agent slot: how to start its agent, and the current process.
struct Slot {
    hub: String,
    token: String,
    dir: PathBuf,
    uid_base: u32,
    /// The private namespace, for an agent behind the cut-able link.
    netns: Option<File>,
    log: PathBuf,
    child: Option<Child>,
}

impl Slot {
    /// Starts a new agent process on the slot's work dir (so with the slot's worker id).
    fn start(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .context("agent log")?;
        self.child = Some(spawn_agent(
            &AgentSpec {
                hub: &self.hub,
                token: &self.token,
                work_dir: &self.dir,
                worker_id: None,
                uid_base: self.uid_base,
                concurrency: CONCURRENCY,
                netns: self.netns.as_ref(),
            },
            Stdio::from(log),
        )?);
        Ok(())
    }
}

/// The part of `GET /api/jobs/status` (`JobView`) the score reads; other fields are ignored,
/// so the DTO can grow without touching the harness.
#[derive(serde::Deserialize)]
struct JobView {
    status: JobStatus,
    stdout: String,
    failure: Option<FailureKind>,
    attempts: Vec<AttemptView>,
}

/// What happened to the acknowledged jobs.
#[derive(Default)]
struct Score {
    lost: u64,
    duplicated: u64,
    stuck: u64,
    recovered: u64,
    failed: u64,
    other: u64,
    failures: HashMap<String, u64>,
    examples: Vec<String>,
}

impl Score {
    fn example(&mut self, what: &str, id: &str) {
        if self.examples.len() < 8 {
            self.examples.push(format!("{what} {id}"));
        }
    }

    /// Scores one acknowledged job from its final view (`None`: the hub does not know it).
    /// `marker` is what its command prints twice, as `<marker>-start` and `<marker>-end`.
    fn add(&mut self, id: &str, marker: &str, view: Option<&JobView>) {
        let Some(v) = view else {
            self.lost += 1;
            self.example("lost (404)", id);
            return;
        };
        if !v.status.is_terminal() {
            self.stuck += 1;
            self.example(&format!("stuck ({})", v.status.as_str()), id);
            return;
        }
        let finished = v
            .attempts
            .iter()
            .filter(|a| matches!(a.end.as_deref(), Some("completed" | "failed" | "cancelled")))
            .count();
        let starts = v.stdout.matches(&format!("{marker}-start\n")).count();
        let ends = v.stdout.matches(&format!("{marker}-end\n")).count();
        let marks = starts.max(ends);
        if finished > 1 || marks > 1 {
            self.duplicated += 1;
            self.example(
                &format!("duplicated ({finished} finished attempts, marker x{marks})"),
                id,
            );
        }
        match v.status {
            JobStatus::Completed if starts == 0 || ends == 0 => {
                self.lost += 1;
                self.example("lost output", id);
            }
            JobStatus::Completed => {
                if v.attempts.len() > 1 {
                    self.recovered += 1;
                }
            }
            JobStatus::Failed => {
                self.failed += 1;
                let kind = v.failure.map(|f| f.as_str()).unwrap_or("unknown");
                *self.failures.entry(kind.to_string()).or_default() += 1;
                self.example(&format!("failed ({kind})"), id);
            }
            _ => {
                self.other += 1;
                self.example(&format!("ended {}", v.status.as_str()), id);
            }
        }
    }
}

/// Fault counts.
#[derive(Default)]
struct Faults {
    /// Hub or agent processes that exited without being killed (each restarted).
    exits: u64,
    kills: u64,
    agent_kills: u64,
    cuts: u64,
    degradations: u64,
    db_restarts: u64,
}

/// Runs the scenario: sets up the network (unless `--no-netns`), runs it, always tears down.
pub async fn run(cli: &Cli) -> anyhow::Result<Report> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "the chaos scenario runs real sandboxed `cmdx agent`s and a private network namespace: it needs root"
        );
    }
    let net = if cli.no_netns {
        None
    } else {
        Some(Net::setup()?)
    };
    let tmp = agents_dir("cmdx-loadtest-chaos-")?;
    let result = chaos(cli, net, tmp.path()).await;
    match &result {
        Ok(r) if !r.has_findings() => {}
        _ => {
            let kept = tmp.keep();
            eprintln!(
                "loadtest: chaos logs and hub data kept in {}",
                kept.display()
            );
        }
    }
    result
}

async fn chaos(cli: &Cli, mut net: Option<Net>, tmp: &Path) -> anyhow::Result<Report> {
    let secs = duration(cli, 120.0);
    let n = cli.workers.unwrap_or(4).max(1);
    let offered = cli.rate.unwrap_or(20.0);
    let seed = cli.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let mut rng = Rng(seed);

    // Several hubs share a PostgreSQL server this scenario owns (and restarts).
    let n_hubs = cli.hubs.max(1);
    let mut db = match cli.store.as_deref() {
        Some("postgres") => Some(cmdx_e2e::pg::PrivateServer::start()?),
        Some(_) => bail!("chaos restarts its own database: use --store postgres"),
        None if n_hubs > 1 => bail!("--hubs needs --store postgres"),
        None => None,
    };
    let store_flags = match &db {
        Some(server) => vec!["--store".to_string(), server.create_database("chaos")?],
        None => Vec::new(),
    };
    // The hubs: each a fixed port on the private address (or loopback), the same across
    // restarts.
    let ip = net.as_ref().map_or("127.0.0.1", |n| n.hub_ip.as_str());
    let mut hubs = Vec::with_capacity(n_hubs);
    let mut urls = Vec::with_capacity(n_hubs);
    for h in 0..n_hubs {
        let port = std::net::TcpListener::bind((ip, 0))
            .and_then(|l| l.local_addr())
            .context("choosing a hub's port")?
            .port();
        let suffix = if h == 0 {
            String::new()
        } else {
            format!("-{h}")
        };
        let mut hub = HubProc {
            extra: store_flags.clone(),
            listen: format!("{ip}:{port}"),
            data: tmp.join(format!("hub-data{suffix}")),
            log: tmp.join(format!("hub{suffix}.log")),
            child: None,
            downtime: Hist::default(),
        };
        urls.push(hub.start().await?);
        hubs.push(hub);
    }
    let url = urls.join(",");
    let mut target = Target::private(&urls[0]).await?;
    target.spread_over(&urls);
    let target = Arc::new(target);
    let token = target.worker_token().await.context("setup: worker token")?;

    // Agents: the first half (rounded up) inside the namespace when there is one.
    let in_ns_count = if net.is_some() { n.div_ceil(2) } else { 0 };
    let mut slots = Vec::with_capacity(n);
    for i in 0..n {
        let netns = match &net {
            Some(net) if i < in_ns_count => Some(net.ns.try_clone().context("netns handle")?),
            _ => None,
        };
        let mut slot = Slot {
            hub: url.clone(),
            token: token.clone(),
            dir: tmp.join(format!("agent-{i}")),
            uid_base: 300_000 + i as u32 * 1_000,
            netns,
            log: tmp.join(format!("agent-{i}.log")),
            child: None,
        };
        slot.start()?;
        slots.push(slot);
    }
    let outcome = async {
        wait_online(&target, n, Duration::from_secs(60)).await?;
        drive(
            &target, &mut hubs, &mut db, &mut net, &mut slots, secs, offered, &mut rng,
        )
        .await
    }
    .await;
    let mut children: Vec<Child> = slots.into_iter().filter_map(|s| s.child).collect();
    let forced = shutdown_agents(&mut children).await;
    for hub in &mut hubs {
        if let Some(mut c) = hub.child.take() {
            let _ = c.start_kill();
            let _ = c.wait().await;
        }
    }
    drop(db);
    let (mut r, faults, score, acked, unacked, quiesced) = outcome?;
    // Nothing of a job may outlive it: once every agent has stopped, no workspace of theirs
    // is still mounted.
    let prefix = format!("{}/", tmp.display());
    let leaked = std::fs::read_to_string("/proc/mounts")
        .context("reading /proc/mounts")?
        .lines()
        .filter(|l| l.split(' ').nth(1).is_some_and(|m| m.starts_with(&prefix)))
        .count() as u64;
    r.scenario = "chaos".into();
    r.workers = Some(n as u64);
    r.lost = score.lost;
    r.errors = score.failed + score.other;
    r.chaos = Some(ChaosFigures {
        kills: faults.kills,
        agent_kills: faults.agent_kills,
        cuts: faults.cuts,
        degradations: faults.degradations,
        db_restarts: faults.db_restarts,
        hubs: n_hubs as u64,
        acknowledged: acked,
        unacknowledged: unacked,
        duplicated: score.duplicated,
        stuck: score.stuck,
        recovered: score.recovered,
        failed: score.failed,
        leaked,
        agent_exits: faults.exits,
        forced_stops: forced as u64,
        seed,
    });
    note(
        &mut r,
        "agents",
        format!("{n} x {CONCURRENCY} slots, {in_ns_count} behind the cut-able link"),
    );
    note(&mut r, "offered", format!("{offered:.0} jobs/s"));
    note(
        &mut r,
        "reconnect grace",
        format!(
            "{GRACE_SECS} s (cuts of 1-3 s and of {}-{} s)",
            GRACE_SECS + 1,
            GRACE_SECS + 3
        ),
    );
    let mut downtime = Hist::default();
    for hub in &hubs {
        downtime.merge(&hub.downtime);
    }
    if let Some(p) = downtime.summary() {
        note(
            &mut r,
            "hub kill -> listening",
            format!("p50 {:.0} / max {:.0} ms", p.p50, p.max),
        );
    }
    note(
        &mut r,
        "quiescence after healing",
        format!("{quiesced:.1} s"),
    );
    if !score.failures.is_empty() {
        let mut kinds: Vec<_> = score.failures.iter().collect();
        kinds.sort();
        let kinds: Vec<String> = kinds.iter().map(|(k, v)| format!("{k} {v}")).collect();
        note(&mut r, "failed by kind", kinds.join(", "));
    }
    if !score.examples.is_empty() {
        note(&mut r, "examples", score.examples.join("; "));
    }
    Ok(r)
}

/// The loaded phase under faults, healing, quiescence and scoring: (report with the window's
/// duration, faults, score, acknowledged, unacknowledged, quiescence seconds).
#[expect(
    clippy::too_many_arguments,
    reason = "the scenario's whole state, passed once"
)]
async fn drive(
    target: &Arc<Target>,
    hubs: &mut [HubProc],
    db: &mut Option<cmdx_e2e::pg::PrivateServer>,
    net: &mut Option<Net>,
    slots: &mut [Slot],
    secs: f64,
    offered: f64,
    rng: &mut Rng,
) -> anyhow::Result<(Report, Faults, Score, u64, u64, f64)> {
    let acked_ids: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let submitter = {
        let target = target.clone();
        let record = acked_ids.clone();
        tokio::spawn(async move {
            let pool = Pool::spread(&target.addrs, 32);
            let start_us = now_us() + 100_000;
            open_loop(
                &target,
                &pool,
                &job_command,
                offered,
                start_us,
                secs,
                (start_us, start_us),
                Arc::new(move |id: &str, intended: u64| {
                    record
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(id.to_string(), intended);
                }),
            )
            .await
        })
    };

    // The fault schedule: three independent clocks.
    let started = Instant::now();
    let end = started + Duration::from_secs_f64(secs);
    let mut faults = Faults::default();
    let mut next_hub = started + rng.secs(2.0, 4.0);
    let mut next_agent = started + rng.secs(4.0, 8.0);
    let mut next_link = started + rng.secs(2.0, 5.0);
    let mut next_db = started + rng.secs(4.0, 8.0);
    loop {
        let t = next_hub
            .min(next_agent)
            .min(if net.is_some() { next_link } else { end })
            .min(if db.is_some() { next_db } else { end });
        if t >= end {
            tokio::time::sleep_until(end).await;
            break;
        }
        tokio::time::sleep_until(t).await;
        faults.exits += unbidden_exits(hubs, slots)?;
        if let Some(server) = db.as_mut().filter(|_| t == next_db) {
            // kill -9 of the database every hub shares, back after 0.3-2 s.
            server.stop(true);
            tokio::time::sleep(rng.secs(0.3, 2.0)).await;
            tokio::task::block_in_place(|| server.resume())?;
            faults.db_restarts += 1;
            next_db = Instant::now() + rng.secs(5.0, 9.0);
        } else if t == next_hub {
            let i = rng.below(hubs.len() as u64) as usize;
            hubs[i].kill_and_restart().await?;
            faults.kills += 1;
            // One kill in five lands right after a restart: during recovery and the agents'
            // reconnect storm.
            next_hub = Instant::now()
                + if rng.below(5) == 0 {
                    rng.secs(0.1, 1.0)
                } else {
                    rng.secs(2.0, 4.5)
                };
        } else if t == next_agent {
            let i = rng.below(slots.len() as u64) as usize;
            let s = &mut slots[i];
            if let Some(mut c) = s.child.take() {
                let _ = c.start_kill();
                let _ = c.wait().await;
            }
            s.start()?;
            faults.agent_kills += 1;
            next_agent = Instant::now() + rng.secs(4.0, 9.0);
        } else if let Some(n) = net.as_mut() {
            if n.down || n.degraded {
                n.heal()?;
                next_link = Instant::now() + rng.secs(2.0, 5.0);
            } else if faults.cuts > 0 && rng.below(3) == 0 {
                // The first link fault is always a cut, so even a short run has one.
                n.set_degraded(true)?;
                faults.degradations += 1;
                next_link = Instant::now() + rng.secs(2.0, 5.0);
            } else {
                n.set_down(true)?;
                faults.cuts += 1;
                // One cut in three outlasts the reconnect grace.
                let g = GRACE_SECS as f64;
                next_link = Instant::now()
                    + if rng.below(3) == 0 {
                        rng.secs(g + 1.0, g + 3.0)
                    } else {
                        rng.secs(1.0, 3.0)
                    };
            }
        }
    }
    let window = started.elapsed().as_secs_f64();
    faults.exits += unbidden_exits(hubs, slots)?;
    if let Some(n) = net.as_mut() {
        n.heal()?;
    }
    let sub = submitter.await.context("submitter task")?;
    let acked = sub.acked.load(Ordering::Relaxed);
    let unacked = sub.errors.load(Ordering::Relaxed);
    let ids = std::mem::take(&mut *acked_ids.lock().unwrap_or_else(|p| p.into_inner()));
    if ids.len() as u64 != acked {
        bail!(
            "{acked} submissions acknowledged but only {} answers named a job id",
            ids.len()
        );
    }

    // Quiescence: every acknowledged job terminal (or the bound passes), then the score.
    let healed = Instant::now();
    let pool = Pool::spread(&target.addrs, 8);
    let mut views: HashMap<String, Option<JobView>> = HashMap::new();
    let mut pending: Vec<&String> = ids.keys().collect();
    loop {
        let mut still = Vec::new();
        for id in pending {
            let v = job_view(&pool, target, id).await?;
            let done = v.as_ref().is_none_or(|v| v.status.is_terminal());
            views.insert(id.clone(), v);
            if !done {
                still.push(id);
            }
        }
        pending = still;
        if pending.is_empty() || healed.elapsed() > QUIESCE_LIMIT {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let quiesced = healed.elapsed().as_secs_f64();
    let mut score = Score::default();
    for (id, intended) in &ids {
        score.add(id, &format!("cx{intended}"), views[id].as_ref());
    }
    let r = Report {
        duration_secs: (window * 100.0).round() / 100.0,
        ..Report::default()
    };
    Ok((r, faults, score, acked, unacked, quiesced))
}

/// Counts (and reports, and restarts) the hub and agent processes that exited on their own
/// since the last look: a crash, or an agent that refused to start.
fn unbidden_exits(hubs: &mut [HubProc], slots: &mut [Slot]) -> anyhow::Result<u64> {
    let mut n = 0;
    for hub in hubs.iter_mut() {
        if let Some(c) = hub.child.as_mut()
            && let Ok(Some(status)) = c.try_wait()
        {
            bail!(
                "a hub exited on its own ({status}); see {}",
                hub.log.display()
            );
        }
    }
    for s in slots.iter_mut() {
        if let Some(c) = s.child.as_mut()
            && let Ok(Some(status)) = c.try_wait()
        {
            n += 1;
            eprintln!(
                "loadtest: an agent exited on its own ({status}); see {}",
                s.log.display()
            );
            s.start()?;
        }
    }
    Ok(n)
}

/// A job's command: two lines of output around a sleep of 0 to 0.4 s (so hub kills and cuts
/// land before, between and after them), each naming the job by its intended send time.
fn job_command(intended: u64) -> String {
    format!(
        "echo cx{intended}-start; sleep 0.{}; echo cx{intended}-end",
        intended % 5
    )
}

/// `GET /api/jobs/status?jobId=`: `None` on 404; retried for 10 s on transport errors.
async fn job_view(pool: &Pool, target: &Target, id: &str) -> anyhow::Result<Option<JobView>> {
    let auth = format!("Bearer {}", target.admin);
    let path = format!("/api/jobs/status?jobId={id}");
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        match pool
            .request(
                http::Method::GET,
                &path,
                &[("authorization", auth.as_str())],
                None,
            )
            .await
        {
            Ok(r) if r.status == 404 => return Ok(None),
            Ok(r) if r.status == 200 => {
                return serde_json::from_slice(&r.body)
                    .map(Some)
                    .with_context(|| format!("job {id}: status body"));
            }
            Ok(r) if Instant::now() > until => bail!("job {id}: status answered {}", r.status),
            Err(e) if Instant::now() > until => return Err(e).context("scoring"),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A job view as the hub answers it: `attempts` as `(worker, end)` pairs.
    fn view(status: &str, attempts: &[(&str, Option<&str>)], stdout: &str) -> JobView {
        let attempts: Vec<_> = attempts
            .iter()
            .enumerate()
            .map(|(i, (w, end))| {
                serde_json::json!({"attempt": i + 1, "workerId": w,
                    "assignedAt": "2026-01-01T00:00:00Z", "end": end})
            })
            .collect();
        serde_json::from_value(serde_json::json!({
            "jobId": "j1", "command": job_command(7), "status": status, "stdout": stdout,
            "failure": if status == "failed" { serde_json::json!("worker_lost") } else { serde_json::Value::Null },
            "attempts": attempts,
        }))
        .expect("a job view")
    }

    fn score(v: Option<&JobView>) -> Score {
        let mut s = Score::default();
        s.add("j1", "cx7", v);
        s
    }

    const OUT: &str = "cx7-start\ncx7-end\n";

    #[test]
    fn a_clean_job_is_no_finding_and_a_retried_one_is_recovered() {
        let s = score(Some(&view("completed", &[("a", Some("completed"))], OUT)));
        assert_eq!((s.lost, s.duplicated, s.stuck, s.recovered), (0, 0, 0, 0));
        let s = score(Some(&view(
            "completed",
            &[("a", Some("worker_lost")), ("b", Some("completed"))],
            OUT,
        )));
        assert_eq!((s.lost, s.duplicated, s.stuck, s.recovered), (0, 0, 0, 1));
    }

    #[test]
    fn a_missing_job_or_a_completed_one_without_its_output_is_lost() {
        assert_eq!(score(None).lost, 1);
        let s = score(Some(&view(
            "completed",
            &[("a", Some("completed"))],
            "cx7-start\n",
        )));
        assert_eq!(s.lost, 1);
    }

    #[test]
    fn a_job_not_terminal_is_stuck() {
        let s = score(Some(&view("running", &[("a", None)], "cx7-start\n")));
        assert_eq!((s.stuck, s.lost), (1, 0));
    }

    #[test]
    fn two_finished_attempts_or_the_marker_twice_is_duplicated() {
        let s = score(Some(&view(
            "completed",
            &[("a", Some("completed")), ("b", Some("completed"))],
            OUT,
        )));
        assert_eq!(s.duplicated, 1);
        let twice = format!("{OUT}{OUT}");
        let s = score(Some(&view(
            "completed",
            &[("a", Some("completed"))],
            &twice,
        )));
        assert_eq!(s.duplicated, 1);
    }

    #[test]
    fn a_failed_job_is_counted_by_kind() {
        let s = score(Some(&view("failed", &[("a", Some("worker_lost"))], "")));
        assert_eq!(
            (s.failed, s.failures.get("worker_lost").copied()),
            (1, Some(1))
        );
    }

    #[test]
    fn the_fault_schedule_replays_from_its_seed() {
        let (mut a, mut b) = (Rng(42), Rng(42));
        let xs: Vec<u64> = (0..5).map(|_| a.below(1000)).collect();
        let ys: Vec<u64> = (0..5).map(|_| b.below(1000)).collect();
        assert_eq!(xs, ys);
        let d = Rng(7).secs(2.0, 4.0);
        assert!(d >= Duration::from_secs(2) && d < Duration::from_secs(4));
    }
}
