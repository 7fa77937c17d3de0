//! The agent's metrics, recorded through the `metrics` facade (the embedding binary installs
//! an exporter; without one every call is a no-op).
//!
//! - `cmdx_agent_sandbox_start_seconds` (histogram): from the sandbox spawn call to the
//!   command running (`exec` done);
//! - `cmdx_agent_jobs_total{outcome}` (counter): finished attempts by outcome: `completed`,
//!   `cancelled`, or the failure kind (`exit_code`, `timeout`, `oom`, `killed`, `setup`,
//!   `sandbox`);
//! - `cmdx_agent_kills_total{reason}` (counter): jobs the agent or the kernel stopped, by
//!   reason: `timeout`, `oom`, `cancel`, `abort`, `pids` (a fork hit the pids limit);
//! - `cmdx_agent_jobs_running` (gauge): commands running in the sandbox now;
//! - `cmdx_agent_reconnects_total` (counter): successful hub connections after the first;
//! - `cmdx_agent_images_cached` (gauge) and `cmdx_agent_image_cache_bytes` (gauge): images in
//!   the cache and the bytes of their unpacked trees;
//! - `cmdx_agent_image_pulls_total{result}` (counter, `pulled` or `failed`) and
//!   `cmdx_agent_image_pull_seconds` (histogram): pulls and their duration.

use cmdx_proto::Outcome;
use cmdx_sandbox::Report;

use crate::job::JobCtl;

/// Histogram name: sandbox start latency in seconds.
pub(crate) const SANDBOX_START_SECONDS: &str = "cmdx_agent_sandbox_start_seconds";
/// Counter name: finished job attempts by outcome.
pub(crate) const JOBS_TOTAL: &str = "cmdx_agent_jobs_total";
/// Counter name: kills by reason.
pub(crate) const KILLS_TOTAL: &str = "cmdx_agent_kills_total";
/// Gauge name: running commands.
pub(crate) const JOBS_RUNNING: &str = "cmdx_agent_jobs_running";
/// Counter name: reconnections to the hub.
pub(crate) const RECONNECTS_TOTAL: &str = "cmdx_agent_reconnects_total";

/// Gauge name: images in the cache.
pub(crate) const IMAGES_CACHED: &str = "cmdx_agent_images_cached";
/// Gauge name: bytes of the cached images' unpacked trees.
pub(crate) const IMAGE_CACHE_BYTES: &str = "cmdx_agent_image_cache_bytes";
/// Counter name: image pulls by result.
pub(crate) const IMAGE_PULLS_TOTAL: &str = "cmdx_agent_image_pulls_total";
/// Histogram name: image pull (download + unpack) seconds.
pub(crate) const IMAGE_PULL_SECONDS: &str = "cmdx_agent_image_pull_seconds";

/// Counts one running command in [`JOBS_RUNNING`] for as long as it lives.
pub(crate) struct RunningGuard(());

impl RunningGuard {
    /// Increments the gauge.
    pub(crate) fn new() -> Self {
        metrics::gauge!(JOBS_RUNNING).increment(1.0);
        Self(())
    }
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        metrics::gauge!(JOBS_RUNNING).decrement(1.0);
    }
}

/// The `outcome` label of a finished attempt.
pub(crate) fn outcome_label(o: &Outcome) -> &'static str {
    if o.cancelled {
        "cancelled"
    } else {
        o.failure_kind().map_or("completed", |f| f.as_str())
    }
}

/// Records one finished attempt in [`JOBS_TOTAL`].
pub(crate) fn record_job(o: &Outcome) {
    metrics::counter!(JOBS_TOTAL, "outcome" => outcome_label(o)).increment(1);
}

/// The kill reasons of a sandbox report (several may apply: a fork bomb that also timed out).
pub(crate) fn kill_reasons(r: &Report, stop: Option<JobCtl>) -> Vec<&'static str> {
    let mut v = Vec::new();
    if r.timed_out {
        v.push("timeout");
    }
    if r.oom_killed {
        v.push("oom");
    }
    if r.pids_limit_hit {
        v.push("pids");
    }
    if r.terminated && !r.timed_out {
        match stop {
            Some(JobCtl::Cancel(_)) => v.push("cancel"),
            Some(JobCtl::Abort(_)) | Some(JobCtl::Kill) => v.push("abort"),
            Some(JobCtl::Run) | None => {}
        }
    }
    v
}

/// Records the kills of one report in [`KILLS_TOTAL`].
pub(crate) fn record_kills(r: &Report, stop: Option<JobCtl>) {
    for reason in kill_reasons(r, stop) {
        metrics::counter!(KILLS_TOTAL, "reason" => reason).increment(1);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use cmdx_proto::FailureKind;

    use super::*;

    fn report() -> Report {
        Report {
            exit_code: None,
            signal: Some(9),
            oom_killed: false,
            pids_limit_hit: false,
            timed_out: false,
            terminated: false,
            wall: Duration::from_millis(10),
            cpu: None,
            peak_memory_bytes: None,
            layers: vec![],
        }
    }

    #[test]
    fn kill_reasons_and_outcome_labels() {
        let g = Duration::from_secs(1);
        assert!(kill_reasons(&report(), None).is_empty());
        let r = Report {
            timed_out: true,
            pids_limit_hit: true,
            terminated: true,
            ..report()
        };
        assert_eq!(kill_reasons(&r, None), ["timeout", "pids"]);
        let r = Report {
            terminated: true,
            ..report()
        };
        assert_eq!(kill_reasons(&r, Some(JobCtl::Cancel(g))), ["cancel"]);
        assert_eq!(kill_reasons(&r, Some(JobCtl::Abort(g))), ["abort"]);
        let r = Report {
            oom_killed: true,
            ..report()
        };
        assert_eq!(kill_reasons(&r, None), ["oom"]);

        let ok = Outcome {
            exit_code: Some(0),
            ..Outcome::default()
        };
        assert_eq!(outcome_label(&ok), "completed");
        assert_eq!(outcome_label(&Outcome::default()), "exit_code");
        let o = Outcome {
            failure: Some(FailureKind::Setup),
            ..Outcome::default()
        };
        assert_eq!(outcome_label(&o), "setup");
        let o = Outcome {
            cancelled: true,
            ..Outcome::default()
        };
        assert_eq!(outcome_label(&o), "cancelled");
    }

    /// A recorder that logs every operation as text.
    #[derive(Default)]
    struct Log(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

    struct Handle(String, std::sync::Arc<std::sync::Mutex<Vec<String>>>);

    impl Handle {
        fn push(&self, op: String) {
            self.1
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(format!("{} {op}", self.0));
        }
    }

    impl metrics::CounterFn for Handle {
        fn increment(&self, v: u64) {
            self.push(format!("+{v}"));
        }
        fn absolute(&self, v: u64) {
            self.push(format!("={v}"));
        }
    }

    impl metrics::GaugeFn for Handle {
        fn increment(&self, v: f64) {
            self.push(format!("+{v}"));
        }
        fn decrement(&self, v: f64) {
            self.push(format!("-{v}"));
        }
        fn set(&self, v: f64) {
            self.push(format!("={v}"));
        }
    }

    impl metrics::HistogramFn for Handle {
        fn record(&self, v: f64) {
            self.push(format!("record {v}"));
        }
    }

    impl Log {
        fn handle(&self, key: &metrics::Key) -> std::sync::Arc<Handle> {
            let labels: Vec<String> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            let name = if labels.is_empty() {
                key.name().to_owned()
            } else {
                format!("{}{{{}}}", key.name(), labels.join(","))
            };
            std::sync::Arc::new(Handle(name, self.0.clone()))
        }
    }

    impl metrics::Recorder for Log {
        fn describe_counter(
            &self,
            _: metrics::KeyName,
            _: Option<metrics::Unit>,
            _: metrics::SharedString,
        ) {
        }
        fn describe_gauge(
            &self,
            _: metrics::KeyName,
            _: Option<metrics::Unit>,
            _: metrics::SharedString,
        ) {
        }
        fn describe_histogram(
            &self,
            _: metrics::KeyName,
            _: Option<metrics::Unit>,
            _: metrics::SharedString,
        ) {
        }
        fn register_counter(
            &self,
            key: &metrics::Key,
            _: &metrics::Metadata<'_>,
        ) -> metrics::Counter {
            metrics::Counter::from_arc(self.handle(key))
        }
        fn register_gauge(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
            metrics::Gauge::from_arc(self.handle(key))
        }
        fn register_histogram(
            &self,
            key: &metrics::Key,
            _: &metrics::Metadata<'_>,
        ) -> metrics::Histogram {
            metrics::Histogram::from_arc(self.handle(key))
        }
    }

    #[test]
    fn jobs_kills_and_the_running_gauge_are_recorded() {
        let log = Log::default();
        metrics::with_local_recorder(&log, || {
            let running = RunningGuard::new();
            drop(running);
            record_job(&Outcome {
                exit_code: Some(0),
                ..Outcome::default()
            });
            record_kills(
                &Report {
                    timed_out: true,
                    pids_limit_hit: true,
                    terminated: true,
                    ..report()
                },
                None,
            );
        });
        let got = log.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        assert_eq!(
            got,
            [
                "cmdx_agent_jobs_running +1",
                "cmdx_agent_jobs_running -1",
                "cmdx_agent_jobs_total{outcome=completed} +1",
                "cmdx_agent_kills_total{reason=timeout} +1",
                "cmdx_agent_kills_total{reason=pids} +1",
            ]
        );
    }
}
