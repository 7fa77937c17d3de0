//! Prometheus metrics (`GET /metrics`). Counters and histograms are recorded where things
//! happen through the `metrics` facade; gauges that describe current state (queue depth,
//! workers, slots, subscribers, disk use) are sampled when the endpoint is scraped.

use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::Hub;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide recorder once (later calls reuse it). Returns `None` when another
/// recorder was installed first.
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let seconds = [
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0,
            ];
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &seconds)
                .ok()?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            describe();
            Some(handle)
        })
        .as_ref()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!("cmdx_jobs_submitted_total", "Jobs accepted (durable)");
    describe_counter!(
        "cmdx_jobs_finished_total",
        "Jobs that reached a terminal state"
    );
    describe_gauge!("cmdx_queue_depth", "Jobs waiting for a worker");
    describe_gauge!(
        "cmdx_queue_depth_by_priority",
        "Jobs waiting for a worker by priority band: low (< 0), normal (0), high (> 0)"
    );
    describe_gauge!("cmdx_workers_connected", "Agents connected now");
    describe_gauge!("cmdx_worker_slots", "Slots of connected agents by state");
    describe_histogram!(
        "cmdx_dispatch_latency_seconds",
        "Submit to assigned (first attempt)"
    );
    describe_histogram!("cmdx_job_duration_seconds", "Started to finished");
    describe_histogram!("cmdx_store_flush_seconds", "Group-commit flush duration");
    describe_gauge!("cmdx_relay_subscribers", "Live output subscriptions");
    describe_counter!("cmdx_output_bytes_total", "Output bytes stored");
    describe_counter!(
        "cmdx_http_requests_total",
        "HTTP requests by route pattern and status"
    );
    describe_counter!(
        "cmdx_rate_limited_total",
        "Requests refused with 429, by group (read, write, login)"
    );
    describe_counter!(
        "cmdx_password_work_refused_total",
        "Sign-ins refused with 503 after waiting 5 s for an argon2 permit"
    );
    describe_gauge!("cmdx_data_dir_bytes", "Bytes used by the data folder");
    describe_gauge!("cmdx_jobs_stored", "Jobs in the store");
}

/// Bytes under `dir` (not following symlinks).
pub fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                stack.push(e.path());
            } else if m.is_file() {
                total += m.len();
            }
        }
    }
    total
}

static DISK: std::sync::Mutex<Option<(Instant, u64)>> = std::sync::Mutex::new(None);
static WALKING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Renders the Prometheus text, sampling the current-state gauges first.
pub async fn render(hub: &Hub) -> String {
    let Some(handle) = install() else {
        return "# metrics recorder unavailable\n".into();
    };
    metrics::gauge!("cmdx_queue_depth").set(hub.dispatch.queue_depth() as f64);
    for (band, n) in hub.dispatch.depth_by_band() {
        metrics::gauge!("cmdx_queue_depth_by_priority", "band" => band).set(n as f64);
    }
    let (connected, slots, used) = hub.dispatch.counts();
    metrics::gauge!("cmdx_workers_connected").set(connected as f64);
    metrics::gauge!("cmdx_worker_slots", "state" => "total").set(slots as f64);
    metrics::gauge!("cmdx_worker_slots", "state" => "used").set(used as f64);
    metrics::gauge!("cmdx_worker_slots", "state" => "free").set(slots.saturating_sub(used) as f64);
    metrics::gauge!("cmdx_relay_subscribers").set(hub.relay.subscribers() as f64);
    if let Ok(n) = hub.store.job_count().await {
        metrics::gauge!("cmdx_jobs_stored").set(n as f64);
    }
    // Walking the data folder is not free: sample it at most every 30 s, one walk at a time
    // (scrapes during a walk report the previous figure).
    let cached = *DISK.lock().unwrap_or_else(|p| p.into_inner());
    let bytes = match cached {
        Some((at, b)) if at.elapsed() < Duration::from_secs(30) => b,
        stale if WALKING.swap(true, std::sync::atomic::Ordering::AcqRel) => {
            stale.map_or(0, |(_, b)| b)
        }
        _ => {
            let dir = hub.config.data_dir.clone();
            let b = tokio::task::spawn_blocking(move || dir_size(&dir))
                .await
                .unwrap_or(0);
            *DISK.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), b));
            WALKING.store(false, std::sync::atomic::Ordering::Release);
            b
        }
    };
    metrics::gauge!("cmdx_data_dir_bytes").set(bytes as f64);
    let mut text = handle.render();
    text.push_str(&queue_depth_by_tags(hub));
    text
}

/// Most tag sets with a series of their own in `cmdx_queue_depth_by_tags`.
pub const TAG_SET_SERIES: usize = 50;

/// `cmdx_queue_depth_by_tags{tags="gpu,linux"}`: what an autoscaler (KEDA, an HPA on an
/// external metric) scales the agents serving those tags on. Rendered at each scrape from the
/// queue as it is, so a drained tag set's series goes away instead of staying at its last
/// value; the 50 deepest tag sets get a series each, the rest are summed in
/// `cmdx_queue_depth_other_tag_sets` (a metric of its own: any string can be a tag, so no
/// `tags` value could stand for "the rest" without meaning a real tag set too).
fn queue_depth_by_tags(hub: &Hub) -> String {
    use std::fmt::Write as _;
    let (mut sets, rest) = hub.dispatch.depth_by_tags(TAG_SET_SERIES);
    // Untagged jobs always have a series (0 when none wait), so the metric exists for an
    // autoscaler from the first scrape.
    if rest.is_none() && !sets.iter().any(|(t, _)| t.is_empty()) {
        sets.push((String::new(), 0));
    }
    let mut out = String::from(
        "# HELP cmdx_queue_depth_by_tags Jobs waiting for a worker, by the tag set they need \
         (sorted, comma-joined; \"\" for untagged jobs; the 50 deepest tag sets)\n\
         # TYPE cmdx_queue_depth_by_tags gauge\n",
    );
    let escape = |s: &str| {
        s.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
    };
    for (tags, n) in sets {
        let _ = writeln!(
            out,
            "cmdx_queue_depth_by_tags{{tags=\"{}\"}} {n}",
            escape(&tags)
        );
    }
    let _ = writeln!(
        out,
        "# HELP cmdx_queue_depth_other_tag_sets Jobs waiting for a worker whose tag set has no \
         cmdx_queue_depth_by_tags series (past the 50 deepest)\n\
         # TYPE cmdx_queue_depth_other_tag_sets gauge\n\
         cmdx_queue_depth_other_tag_sets {}",
        rest.unwrap_or(0)
    );
    out
}
