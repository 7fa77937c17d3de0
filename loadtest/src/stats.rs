//! Measurement: the run clock, HDR latency histograms merged across tasks, `/proc` samples of
//! the hub and of the generator, and the report (a human table beside the original design's
//! targets, or one JSON object with the field names issue 6 fixes).

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use serde::Serialize;

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// The run's clock origin (set on first use, at start-up).
pub fn epoch() -> Instant {
    *EPOCH.get_or_init(Instant::now)
}

/// Microseconds since [`epoch`]; what submitters stamp into commands and chunks.
pub fn now_us() -> u64 {
    epoch().elapsed().as_micros() as u64
}

/// The instant `us` microseconds after [`epoch`].
pub fn at_us(us: u64) -> Instant {
    epoch() + Duration::from_micros(us)
}

/// Highest latency a histogram tracks (longer ones are clamped): 10 minutes in microseconds.
const MAX_US: u64 = 600_000_000;

/// A latency histogram in microseconds (3 significant digits).
pub struct Hist(Histogram<u64>);

impl Default for Hist {
    fn default() -> Self {
        Hist(Histogram::new_with_bounds(1, MAX_US, 3).expect("valid histogram bounds"))
    }
}

impl Hist {
    /// Records one latency.
    pub fn record_us(&mut self, us: u64) {
        self.0.saturating_record(us.clamp(1, MAX_US));
    }

    /// Adds another task's histogram.
    pub fn merge(&mut self, other: &Hist) {
        // Same bounds on both sides: adding cannot fail.
        let _ = self.0.add(&other.0);
    }

    /// p50/p99/p99.9/max in milliseconds, or `None` with no samples.
    pub fn summary(&self) -> Option<Percentiles> {
        if self.0.is_empty() {
            return None;
        }
        let ms = |us: u64| (us as f64 / 1000.0 * 1000.0).round() / 1000.0;
        Some(Percentiles {
            p50: ms(self.0.value_at_quantile(0.50)),
            p99: ms(self.0.value_at_quantile(0.99)),
            p999: ms(self.0.value_at_quantile(0.999)),
            max: ms(self.0.max()),
        })
    }
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest sample.
    pub max: f64,
}

/// The latency groups a scenario may report.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LatencyMs {
    /// Intended submit time to the worker receiving `assign`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub submit_to_assigned: Option<Percentiles>,
    /// Intended submit time to the result being durably stored (worker got `finishedAck`, or
    /// the job event / legacy `submit-result` answer arrived).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub submit_to_done: Option<Percentiles>,
    /// Agent sending an output chunk to a subscriber receiving it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ingest_to_subscriber: Option<Percentiles>,
    /// One REST request (status poll, legacy poll).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub poll: Option<Percentiles>,
}

impl LatencyMs {
    fn is_empty(&self) -> bool {
        self.submit_to_assigned.is_none()
            && self.submit_to_done.is_none()
            && self.ingest_to_subscriber.is_none()
            && self.poll.is_none()
    }
}

/// One run's result; serialized as the `--json` object.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// Length of the measured window, seconds (warm-up excluded).
    pub duration_secs: f64,
    /// Simulated (or real) workers connected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workers: Option<u64>,
    /// Jobs completed per second in the window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jobs_per_sec: Option<f64>,
    /// Output chunk deliveries to subscribers per second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deliveries_per_sec: Option<f64>,
    /// REST requests answered per second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests_per_sec: Option<f64>,
    /// Failed requests, refused connections, protocol errors, checksum mismatches.
    pub errors: u64,
    /// Acknowledged jobs never finished, or output bytes a subscriber never got.
    pub lost: u64,
    /// Latency percentiles.
    #[serde(skip_serializing_if = "LatencyMs::is_empty")]
    pub latency_ms: LatencyMs,
    /// Hub CPU over the window, percent of one core.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hub_cpu_pct: Option<f64>,
    /// Hub resident memory at the end of the window, MB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hub_rss_mb: Option<f64>,
    /// Hub RSS growth per connected worker, KiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hub_rss_per_worker_kb: Option<f64>,
    /// The chaos scenario's fault counts and verdicts.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub chaos: Option<ChaosFigures>,
    /// Generator-side figures for the human table only (not part of the JSON contract).
    #[serde(skip)]
    pub notes: Vec<(String, String)>,
    /// Generator CPU over the window, percent of one core (human table only).
    #[serde(skip)]
    pub gen_cpu_pct: Option<f64>,
    /// Generator RSS at the end of the window, MB (human table only).
    #[serde(skip)]
    pub gen_rss_mb: Option<f64>,
}

/// What the chaos scenario did and found (`lost` is the report's own field).
#[derive(Debug, Default, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChaosFigures {
    /// `kill -9`s of the hub (each followed by a restart on the same data and port).
    pub kills: u64,
    /// `kill -9`s of an agent (each followed by a new agent process on its work dir).
    pub agent_kills: u64,
    /// Agent<->hub link cuts (`ip link set down`, later `up`).
    pub cuts: u64,
    /// Periods of a degraded link (random loss and a throttled rate).
    pub degradations: u64,
    /// `kill -9`s of the PostgreSQL server several hubs share (`--hubs N --store postgres`),
    /// each followed by a restart.
    pub db_restarts: u64,
    /// Hubs under fire (one unless `--hubs`).
    pub hubs: u64,
    /// Submissions the hub acknowledged (201).
    pub acknowledged: u64,
    /// Submissions refused or unanswered (mostly while the hub was down): not acknowledged,
    /// so owed nothing.
    pub unacknowledged: u64,
    /// Acknowledged jobs finished by more than one attempt, or whose output shows their
    /// marker more than once.
    pub duplicated: u64,
    /// Acknowledged jobs not terminal after quiescence.
    pub stuck: u64,
    /// Acknowledged jobs that completed after losing at least one attempt.
    pub recovered: u64,
    /// Acknowledged jobs that ended `failed` (each also counted in `errors`).
    pub failed: u64,
    /// Job workspaces still mounted after every agent stopped (nothing of a job may outlive
    /// it).
    pub leaked: u64,
    /// Agents that exited on their own during the run (crashed, or refused to start); each was
    /// started again.
    pub agent_exits: u64,
    /// Agents that did not stop within 15 s of SIGTERM at the end and were killed.
    pub forced_stops: u64,
    /// Seed of the fault schedule (`--seed` replays the same choices).
    pub seed: u64,
}

/// The original design's figure and issue 6's target for a row of the table.
fn targets(scenario: &str, figure: &str) -> (&'static str, &'static str) {
    match (scenario, figure) {
        ("dispatch", "jobs/s") => ("100+", ">= 5,000, 0 errors, 0 lost"),
        ("dispatch", "submit->assigned") => ("5 ms typ / 50 ms p99", "p50 <= 1 ms, p99 <= 5 ms"),
        ("dispatch", "submit->done") => ("-", "p99 <= 10 ms"),
        ("burst", "jobs/s") => ("-", ">= 10,000 drain"),
        ("connections", "workers") => ("1,000+", "10,000 idle"),
        ("connections", "hub RSS/worker") => ("-", "<= 16 KiB"),
        ("relay", "deliveries/s") => ("10,000+ updates/s", ">= 250,000"),
        ("relay", "ingest->subscriber") => ("-", "p99 <= 10 ms"),
        ("relay", "lost") => ("-", "0 bytes"),
        ("poll", "requests/s") => ("-", ">= 20,000"),
        ("poll", "poll latency") => ("5 ms typ", "p99 <= 2 ms"),
        ("legacy", "poll latency") => ("5 ms typ", "-"),
        ("sandbox", "jobs/s") => ("-", ">= 400"),
        ("chaos", "hub kills") => ("-", ">= 20 in 120 s"),
        ("chaos", "duplicated")
        | ("chaos", "stuck")
        | ("chaos", "leaked workspaces")
        | ("chaos", "agents exited on their own") => ("-", "0"),
        (_, "errors") | (_, "lost") => ("-", "0"),
        _ => ("-", "-"),
    }
}

fn fmt_pct(p: &Percentiles) -> String {
    format!(
        "p50 {:.3} / p99 {:.3} / p99.9 {:.3} / max {:.3} ms",
        p.p50, p.p99, p.p999, p.max
    )
}

impl Report {
    /// Whether a chaos run found lost, duplicated, stuck or failed jobs, leaked workspaces or
    /// agents that exited on their own (other scenarios report
    /// figures, not verdicts).
    pub fn has_findings(&self) -> bool {
        self.chaos.as_ref().is_some_and(|c| {
            self.lost > 0
                || self.errors > 0
                || c.duplicated > 0
                || c.stuck > 0
                || c.leaked > 0
                || c.agent_exits > 0
        })
    }

    /// The human table: figure, measured, original design, target.
    pub fn table(&self) -> String {
        let mut rows: Vec<(String, String)> = Vec::new();
        let mut push = |f: &str, v: String| rows.push((f.to_string(), v));
        push("window", format!("{:.1} s", self.duration_secs));
        if let Some(w) = self.workers {
            push("workers", w.to_string());
        }
        if let Some(v) = self.jobs_per_sec {
            push("jobs/s", format!("{v:.0}"));
        }
        if let Some(v) = self.deliveries_per_sec {
            push("deliveries/s", format!("{v:.0}"));
        }
        if let Some(v) = self.requests_per_sec {
            push("requests/s", format!("{v:.0}"));
        }
        let l = &self.latency_ms;
        if let Some(p) = &l.submit_to_assigned {
            push("submit->assigned", fmt_pct(p));
        }
        if let Some(p) = &l.submit_to_done {
            push("submit->done", fmt_pct(p));
        }
        if let Some(p) = &l.ingest_to_subscriber {
            push("ingest->subscriber", fmt_pct(p));
        }
        if let Some(p) = &l.poll {
            push("poll latency", fmt_pct(p));
        }
        push("errors", self.errors.to_string());
        push("lost", self.lost.to_string());
        if let Some(v) = self.hub_cpu_pct {
            push("hub CPU", format!("{v:.0} %"));
        }
        if let Some(v) = self.hub_rss_mb {
            push("hub RSS", format!("{v:.1} MB"));
        }
        if let Some(v) = self.hub_rss_per_worker_kb {
            push("hub RSS/worker", format!("{v:.1} KiB"));
        }
        if let Some(v) = self.gen_cpu_pct {
            push("generator CPU", format!("{v:.0} %"));
        }
        if let Some(v) = self.gen_rss_mb {
            push("generator RSS", format!("{v:.1} MB"));
        }
        if let Some(c) = &self.chaos {
            push("hub kills", c.kills.to_string());
            push("agent kills", c.agent_kills.to_string());
            push("link cuts", c.cuts.to_string());
            push("link degradations", c.degradations.to_string());
            if c.hubs > 1 || c.db_restarts > 0 {
                push("hubs", c.hubs.to_string());
                push("PostgreSQL restarts", c.db_restarts.to_string());
            }
            push("acknowledged", c.acknowledged.to_string());
            push("unacknowledged", c.unacknowledged.to_string());
            push("duplicated", c.duplicated.to_string());
            push("stuck", c.stuck.to_string());
            push("recovered", c.recovered.to_string());
            push("failed", c.failed.to_string());
            push("leaked workspaces", c.leaked.to_string());
            push("agents exited on their own", c.agent_exits.to_string());
            push("agents killed at the end", c.forced_stops.to_string());
            push("seed", c.seed.to_string());
        }
        for (k, v) in &self.notes {
            push(k, v.clone());
        }
        let w0 = rows.iter().map(|r| r.0.len()).max().unwrap_or(6).max(6);
        let w1 = rows.iter().map(|r| r.1.len()).max().unwrap_or(8).max(8);
        let mut out = format!("scenario {}\n", self.scenario);
        out += &format!(
            "{:<w0$}  {:<w1$}  {:<22}  {}\n",
            "figure", "measured", "original design", "target"
        );
        for (f, v) in rows {
            let (orig, target) = targets(&self.scenario, &f);
            out += &format!("{f:<w0$}  {v:<w1$}  {orig:<22}  {target}\n");
        }
        if let Some(c) = &self.chaos {
            out += &format!(
                "{} hub kills, {} PostgreSQL restarts, {} agent kills, {} link cuts, {} acknowledged: lost {}, duplicated {}, stuck {}\n",
                c.kills,
                c.db_restarts,
                c.agent_kills,
                c.cuts,
                c.acknowledged,
                self.lost,
                c.duplicated,
                c.stuck
            );
        }
        out
    }
}

/// CPU ticks and resident memory of one process, read from `/proc`.
#[derive(Debug, Clone, Copy)]
pub struct ProcSample {
    at: Instant,
    ticks: u64,
    /// Resident set, KiB.
    pub rss_kb: u64,
}

/// Samples process `pid` (`None`: this process).
pub fn sample(pid: Option<u32>) -> anyhow::Result<ProcSample> {
    let base = match pid {
        Some(p) => format!("/proc/{p}"),
        None => "/proc/self".to_string(),
    };
    let stat = std::fs::read_to_string(format!("{base}/stat"))
        .with_context(|| format!("reading {base}/stat"))?;
    // Fields after the `(comm)` that may contain spaces: state is field 3, utime 14, stime 15.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed /proc stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let ticks = num(11) + num(12);
    let status = std::fs::read_to_string(format!("{base}/status"))
        .with_context(|| format!("reading {base}/status"))?;
    let rss_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    Ok(ProcSample {
        at: Instant::now(),
        ticks,
        rss_kb,
    })
}

/// Percent of one core used between two samples.
pub fn cpu_pct(a: &ProcSample, b: &ProcSample) -> f64 {
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|v| *v > 0)
        .unwrap_or(100) as f64;
    let secs = b.at.duration_since(a.at).as_secs_f64().max(1e-6);
    let used = b.ticks.saturating_sub(a.ticks) as f64 / hz;
    (used / secs * 1000.0).round() / 10.0
}

/// Samples of the hub (when its pid is known) and of the generator.
pub struct Window {
    hub: Option<(u32, ProcSample)>,
    gen_: ProcSample,
    start: Instant,
}

impl Window {
    /// Opens a measurement window now.
    pub fn open(hub_pid: Option<u32>) -> anyhow::Result<Window> {
        let hub = match hub_pid {
            Some(p) => Some((p, sample(Some(p))?)),
            None => None,
        };
        Ok(Window {
            hub,
            gen_: sample(None)?,
            start: Instant::now(),
        })
    }

    /// Closes the window: fills duration, CPU and RSS into `r`; returns the window length.
    pub fn close(&self, r: &mut Report) -> anyhow::Result<f64> {
        let secs = self.start.elapsed().as_secs_f64();
        r.duration_secs = (secs * 100.0).round() / 100.0;
        if let Some((pid, a)) = &self.hub {
            let b = sample(Some(*pid))?;
            r.hub_cpu_pct = Some(cpu_pct(a, &b));
            r.hub_rss_mb = Some(mb(b.rss_kb));
        }
        let g = sample(None)?;
        r.gen_cpu_pct = Some(cpu_pct(&self.gen_, &g));
        r.gen_rss_mb = Some(mb(g.rss_kb));
        Ok(secs)
    }
}

/// KiB to MB with one decimal.
pub fn mb(kb: u64) -> f64 {
    (kb as f64 * 1024.0 / 1e6 * 10.0).round() / 10.0
}

/// Rounds a rate to one decimal.
pub fn rate(count: u64, secs: f64) -> f64 {
    (count as f64 / secs.max(1e-6) * 10.0).round() / 10.0
}
