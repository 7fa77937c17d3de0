//! `loadtest`: measures a cmdx hub under load, honestly.
//!
//! `loadtest SCENARIO [--workers N] [--rate R] [--duration SECS] [--subscribers K] [--hub URL]
//! [--json]`. Without `--hub` it starts a fresh `cmdx hub` (the binary next to this one) on a
//! temp data folder and a loopback port with rate limits and the per-user socket cap off, and
//! stops it at the end (a hub given with `--hub` needs the same: `--rate-limit-per-min 0
//! --read-rate-limit-per-sec 0 --login-rate-limit-per-min 0 --max-client-sockets-per-user N`
//! with N above the relay scenario's `--subscribers`, all of whom are the admin). Every run
//! is bounded in count and time and sends traffic only to loopback (`chaos`: or to the private
//! network namespace it creates; it exits 1 when it finds lost, duplicated or stuck jobs).
//!
//! Submitters are open-loop (latency from the *intended* send time, so a stalled hub cannot hide
//! its delay); connections are opened at a measured pace; a warm-up is excluded; HDR histograms
//! from every task are merged; the hub's CPU and RSS come from `/proc` beside the generator's.

mod http;
mod scenario;
mod stats;
mod target;
mod worker;

use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};

/// What to measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// N no-op workers, open-loop durable submissions at R jobs/s.
    Dispatch,
    /// Enqueue a backlog (20k by default) with no worker, then drain it with N workers.
    Burst,
    /// N idle workers connected at a measured pace: hub memory per connection.
    Connections,
    /// One job streaming output to K subscribers; every subscriber's bytes checked.
    Relay,
    /// N concurrent clients polling job status.
    Poll,
    /// N legacy REST workers polling `get-job` at the original 5 s interval.
    Legacy,
    /// Real `cmdx agent` processes running `true` through the real sandbox (needs root).
    Sandbox,
    /// Real agents under steady submissions while the hub and agents are `kill -9`ed and the
    /// agent<->hub link is cut and degraded; scores every acknowledged job (needs root).
    Chaos,
    /// Jobs in OCI images from a private loopback registry: cached image vs host root, `podman
    /// run --rm` vs a cached image, first pull of a 30 MB image (needs root, docker-registry,
    /// umoci, skopeo, busybox-static, podman).
    Images,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Dispatch => "dispatch",
            Scenario::Burst => "burst",
            Scenario::Connections => "connections",
            Scenario::Relay => "relay",
            Scenario::Poll => "poll",
            Scenario::Legacy => "legacy",
            Scenario::Sandbox => "sandbox",
            Scenario::Chaos => "chaos",
            Scenario::Images => "images",
        }
    }
}

/// Command line.
#[derive(Parser, Debug)]
#[command(name = "loadtest", about = "cmdx load generator", version)]
pub struct Cli {
    /// Scenario to run.
    #[arg(value_enum)]
    pub scenario: Scenario,
    /// Workers (dispatch 1000, burst 1000, connections 10000, legacy 1000, sandbox 2 agent
    /// processes, chaos 4 agent processes) or concurrent pollers (poll 50).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Offered rate: jobs/s (dispatch 1000, legacy 10, sandbox 400, chaos 20) or output chunks/s (relay
    /// 2500).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Length of the loaded phase in seconds, warm-up included (default per scenario).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Output subscribers (relay, default 100).
    #[arg(long)]
    pub subscribers: Option<usize>,
    /// Load an existing hub (loopback only) instead of starting one; sign in with
    /// `CMDX_ADMIN_EMAIL` / `CMDX_ADMIN_PASSWORD`.
    #[arg(long)]
    pub hub: Option<String>,
    /// Hubs to start on one shared store (needs `--store`): workers, subscribers and
    /// submissions are spread over them.
    #[arg(long, default_value_t = 1)]
    pub hubs: usize,
    /// Store of the hubs this generator starts: a PostgreSQL URL, or `postgres` for a private
    /// server started from the system's binaries (default: sled).
    #[arg(long)]
    pub store: Option<String>,
    /// Pid of the `--hub` process, for its CPU and RSS.
    #[arg(long)]
    pub hub_pid: Option<u32>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Jobs in the backlog (burst, default 20000) or jobs polled (poll, default 100).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Fake run time of each job on simulated workers, milliseconds.
    #[arg(long, default_value_t = 0)]
    pub job_ms: u64,
    /// Output bytes per job (dispatch, default 0) or per chunk (relay, default 256).
    #[arg(long)]
    pub output_bytes: Option<usize>,
    /// Slots per worker (default 1; sandbox agents 8).
    #[arg(long)]
    pub concurrency: Option<u32>,
    /// Pace of new connections per second (default 2000).
    #[arg(long)]
    pub connect_rate: Option<f64>,
    /// Legacy poll interval, milliseconds (the original agent's is 5000).
    #[arg(long, default_value_t = 5000)]
    pub poll_interval_ms: u64,
    /// Chaos: run every agent on loopback, without the private network namespace (no link
    /// cuts: for machines without netns, `ip`, `tc` or `nft`).
    #[arg(long)]
    pub no_netns: bool,
    /// Chaos: seed of the fault schedule (default: from the clock; printed in the report).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Warm-up excluded from the figures, seconds (default 10% of the duration, 0.5..5 s).
    #[arg(long)]
    pub warmup: Option<f64>,
    /// Dispatch: submit as this many users in turn (fair share between them), instead of the
    /// admin alone.
    #[arg(long)]
    pub users: Option<usize>,
    /// Dispatch: give submissions priorities 0, 10 and -10 in turn.
    #[arg(long)]
    pub priorities: bool,
}

impl Cli {
    /// The warm-up for a loaded phase of `duration` seconds.
    pub fn warmup_for(&self, duration: f64) -> f64 {
        self.warmup
            .unwrap_or((duration * 0.1).clamp(0.5, 5.0))
            .min(duration * 0.5)
    }
}

/// Lets one process hold 10,000+ sockets: raises the soft open-file limit to the hard one. A hub
/// this generator starts inherits it (a hub started by hand needs `ulimit -n` raised too).
fn raise_nofile() -> anyhow::Result<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("getrlimit(NOFILE)")?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).context("setrlimit(NOFILE)")?;
    }
    Ok(hard)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    stats::epoch();
    let nofile = raise_nofile()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    let report = rt.block_on(async {
        // Hard bound on the whole run: the loaded phase plus generous setup and drain time.
        let bound = Duration::from_secs_f64(cli.duration.unwrap_or(60.0) + 300.0);
        tokio::time::timeout(bound, scenario::run(&cli, nofile))
            .await
            .with_context(|| format!("{} run exceeded {bound:?}", cli.scenario.name()))?
    })?;
    rt.shutdown_timeout(Duration::from_secs(2));
    if cli.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.table());
    }
    if report.has_findings() {
        // The chaos verdict: lost, duplicated or stuck jobs, or failed ones.
        std::process::exit(1);
    }
    Ok(())
}
