//! The seam between a job and the sandbox: build the [`cmdx_sandbox::Spec`], spawn
//! `/bin/sh -c COMMAND`, pump its output, honour cancel/abort/kill, and turn the sandbox's
//! report into the job's [`Outcome`].
//!
//! This is the only module that starts processes; it always goes through `cmdx_sandbox`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use cmdx_proto::{FailureKind, Outcome, WindowSize};
use cmdx_sandbox::{Limits, Mode, Report, Resizer, Root, Spec, TerminalSize};
use tokio::process::ChildStderr;
use tokio::sync::watch;

use crate::core::JobEvent;
use crate::error::JobError;
use crate::job::{JobCtl, millis};
use crate::output::{self, OutputCap, OutputSink, PumpStats};

/// How long an aborted job's remaining output may wait for window space.
const ABORT_OUTPUT_WAIT: Duration = Duration::from_secs(5);

/// What to run and how.
pub(crate) struct Launch {
    /// The shell command.
    pub command: String,
    /// Working directory (`/workspace` in the private root, else the job dir's host path).
    pub cwd: PathBuf,
    /// Read-write paths without a private root (job dir and private tmp).
    pub rw_paths: Vec<PathBuf>,
    /// The job's private root, when the host supports one.
    pub root: Option<Root>,
    /// Complete environment.
    pub env: Vec<(String, String)>,
    /// Limits, with the job's timeout.
    pub limits: Limits,
    /// Uid/gid to drop to.
    pub run_as: Option<(u32, u32)>,
    /// Strictness.
    pub mode: Mode,
    /// Output cap.
    pub output_cap: Option<OutputCap>,
    /// The agent's cgroup group.
    pub cgroup_group: String,
    /// Run in a pseudo-terminal of this size; `None`: pipes.
    pub terminal: Option<TerminalSize>,
    /// New sizes for the terminal while the job runs (the hub's `resize`).
    pub sizes: watch::Receiver<Option<WindowSize>>,
}

/// Runs the command to its end and returns the outcome; output goes to `sink`.
pub(crate) async fn run(
    spawner: &crate::spawner::Spawner,
    launch: Launch,
    sink: OutputSink,
    ctl: &mut watch::Receiver<JobCtl>,
    start: Instant,
) -> Outcome {
    let timeout = launch.limits.wall_timeout;
    let output_cap = launch.output_cap;
    let memory = launch.limits.memory_bytes;
    let mut sizes = launch.sizes;
    let spec = Spec {
        program: PathBuf::from("/bin/sh"),
        args: vec!["-c".to_owned(), launch.command],
        cwd: launch.cwd,
        env: launch.env,
        limits: launch.limits,
        read_only_paths: Spec::system_read_only_paths(),
        read_write_paths: launch.rw_paths,
        network: false,
        run_as: launch.run_as,
        mode: launch.mode,
        cgroup_group: Some(launch.cgroup_group),
        root: launch.root,
        terminal: launch.terminal,
    };
    let spawn_start = Instant::now();
    let mut child = match spawner.spawn(spec).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "sandbox refused to start the job");
            return sandbox_failed(&e, start);
        }
    };
    // `spawn` returns once `exec` succeeded: the command is running.
    metrics::histogram!(crate::telemetry::SANDBOX_START_SECONDS)
        .record(spawn_start.elapsed().as_secs_f64());
    let running = crate::telemetry::RunningGuard::new();
    tracing::info!(pid = child.pid(), layers = ?child.layers(), "job started");
    let _ = sink
        .events
        .send(JobEvent::Started {
            job: sink.job.clone(),
            isolation: child.layers().to_vec(),
        })
        .await;

    let (exited_tx, exited_rx) = watch::channel(false);
    let resizer = child.terminal.as_ref().map(|t| t.resizer());
    let mut resizable = resizer.is_some();
    // A terminal is one ordered stream: it goes out as stdout.
    let pump = match child.terminal.take() {
        Some(term) => tokio::spawn(output::pump(
            Some(term),
            None::<ChildStderr>,
            sink,
            exited_rx,
            output_cap,
        )),
        None => tokio::spawn(output::pump(
            child.stdout.take(),
            child.stderr.take(),
            sink,
            exited_rx,
            output_cap,
        )),
    };

    let mut stop: Option<JobCtl> = None;
    let waited = loop {
        tokio::select! {
            r = child.wait() => break r,
            changed = sizes.changed(), if resizable => match (changed, &resizer) {
                (Ok(()), Some(resizer)) => resize(resizer, *sizes.borrow_and_update()),
                _ => resizable = false,
            },
            s = stop_requested(ctl), if stop.is_none() => {
                stop = Some(s);
                match s {
                    JobCtl::Cancel(grace) | JobCtl::Abort(grace) => {
                        tracing::info!(?grace, "terminating job");
                        child.terminate(grace).await;
                    }
                    JobCtl::Kill | JobCtl::Run => child.kill(),
                }
            }
        }
    };
    drop(running);
    let _ = exited_tx.send(true);
    let stats = match stop {
        // An aborting agent may have no hub to acknowledge output: do not wait forever for
        // window space; what is left in the pipes is lost with the agent.
        Some(JobCtl::Abort(_)) => {
            let mut pump = pump;
            match tokio::time::timeout(ABORT_OUTPUT_WAIT, &mut pump).await {
                Ok(r) => r.unwrap_or_default(),
                Err(_) => {
                    pump.abort();
                    tracing::warn!("output not fully delivered before the abort");
                    PumpStats::default()
                }
            }
        }
        _ => pump.await.unwrap_or_default(),
    };

    match waited {
        Ok(report) => {
            crate::telemetry::record_kills(&report, stop);
            let mut outcome = outcome_from(&report, stop, timeout, memory);
            outcome.output_truncated = stats.truncated;
            tracing::info!(
                exit_code = ?report.exit_code,
                signal = ?report.signal,
                timed_out = report.timed_out,
                oom = report.oom_killed,
                output_bytes = stats.bytes,
                output_truncated = stats.truncated,
                "job process ended"
            );
            outcome
        }
        Err(e) => {
            tracing::error!(error = %e, "waiting for the job failed");
            sandbox_failed(&e, start)
        }
    }
}

/// Gives the running job's terminal the size the hub sent; the kernel signals `SIGWINCH` to
/// the job's foreground process group.
fn resize(resizer: &Resizer, size: Option<WindowSize>) {
    let Some(size) = size else { return };
    let size = TerminalSize {
        cols: size.cols,
        rows: size.rows,
    };
    match resizer.resize(size) {
        Ok(()) => tracing::debug!(cols = size.cols, rows = size.rows, "terminal resized"),
        Err(e) => tracing::debug!(error = %e, "terminal not resized"),
    }
}

/// The outcome of a job the sandbox could not start or wait for.
fn sandbox_failed(e: &cmdx_sandbox::Error, start: Instant) -> Outcome {
    let e = JobError::Sandbox(e.to_string());
    Outcome {
        failure: Some(e.failure_kind()),
        error: Some(e.to_string()),
        duration_ms: millis(start.elapsed()),
        ..Outcome::default()
    }
}

/// Maps a sandbox report (and the stop the agent asked for) to the wire outcome.
pub(crate) fn outcome_from(
    r: &Report,
    stop: Option<JobCtl>,
    timeout: Duration,
    memory_bytes: u64,
) -> Outcome {
    let mut o = Outcome {
        exit_code: r.exit_code,
        signal: r.signal,
        timed_out: r.timed_out,
        oom_killed: r.oom_killed,
        duration_ms: millis(r.wall),
        cpu_ms: r.cpu.map(millis),
        peak_memory_bytes: r.peak_memory_bytes,
        ..Outcome::default()
    };
    let stopped_by_us = r.terminated && !r.timed_out;
    if r.timed_out {
        o.failure = Some(FailureKind::Timeout);
        o.error = Some(format!("timed out after {} s", timeout.as_secs()));
    } else if r.oom_killed && o.exit_code != Some(0) {
        o.failure = Some(FailureKind::Oom);
        o.error = Some(format!("out of memory (limit {} MiB)", memory_bytes >> 20));
    } else if stopped_by_us {
        match stop {
            Some(JobCtl::Cancel(_)) => o.cancelled = true,
            Some(JobCtl::Abort(_)) | Some(JobCtl::Kill) => {
                o.failure = Some(FailureKind::Killed);
                o.error = Some("stopped because the agent shut down".into());
            }
            Some(JobCtl::Run) | None => {}
        }
    }
    o
}

/// Resolves with the first stop request (anything but [`JobCtl::Run`]); never if the core is
/// gone.
pub(crate) async fn stop_requested(ctl: &mut watch::Receiver<JobCtl>) -> JobCtl {
    loop {
        let c = *ctl.borrow_and_update();
        if c != JobCtl::Run {
            return c;
        }
        if ctl.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        Report {
            exit_code: None,
            signal: Some(15),
            oom_killed: false,
            pids_limit_hit: false,
            timed_out: false,
            terminated: true,
            wall: Duration::from_millis(1500),
            cpu: Some(Duration::from_millis(20)),
            peak_memory_bytes: Some(1 << 20),
            layers: vec![],
        }
    }

    #[test]
    fn cancel_timeout_oom_and_abort_map_to_outcomes() {
        let t = Duration::from_secs(5);
        let o = outcome_from(&report(), Some(JobCtl::Cancel(t)), t, 1 << 29);
        assert!(o.cancelled);
        assert_eq!(o.status(), cmdx_proto::JobStatus::Cancelled);
        assert_eq!((o.duration_ms, o.cpu_ms), (1500, Some(20)));

        let r = Report {
            timed_out: true,
            ..report()
        };
        let o = outcome_from(&r, None, t, 1 << 29);
        assert_eq!(o.failure, Some(FailureKind::Timeout));
        assert!(o.timed_out && !o.cancelled);

        let r = Report {
            oom_killed: true,
            terminated: false,
            signal: Some(9),
            ..report()
        };
        assert_eq!(
            outcome_from(&r, None, t, 1 << 29).failure,
            Some(FailureKind::Oom)
        );

        let o = outcome_from(&report(), Some(JobCtl::Abort(t)), t, 1 << 29);
        assert_eq!(o.failure, Some(FailureKind::Killed));

        let r = Report {
            terminated: false,
            exit_code: Some(3),
            signal: None,
            ..report()
        };
        let o = outcome_from(&r, Some(JobCtl::Cancel(t)), t, 1 << 29);
        assert!(!o.cancelled && o.failure.is_none());
        assert_eq!(o.failure_kind(), Some(FailureKind::ExitCode));
    }
}
