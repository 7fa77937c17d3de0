//! What `cmdx submit` (and `rerun`) says on stderr about a job it waits for, so a person never
//! stares at a blank screen: the job's id and dashboard URL once submitted, one
//! `queued (position N, waiting for …)` line while it waits (redrawn in place on a terminal,
//! a new line only when it changes otherwise), a warning when no connected worker can run it,
//! and a one-line summary when it ends with a non-zero code ([`summary`]). Stdout is never
//! touched: it carries only the job's output. `--quiet` silences all of it.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::Duration;

use cmdx_proto::rest::{JobView, WaitReason};
use cmdx_proto::{FailureKind, JobStatus};

/// Erases the current terminal line (carriage return, then "erase in line").
const ERASE: &str = "\r\x1b[2K";

/// The stderr status of one job being waited for. Shared by reference between the output
/// follower and the Ctrl-C handler, so its state sits behind a lock.
pub struct Progress {
    job_id: String,
    /// Tags the job asked for (shown in the queued line and the warning).
    tags: Vec<String>,
    quiet: bool,
    /// Stderr is a terminal: the queued line is redrawn in place.
    tty: bool,
    state: Mutex<State>,
    /// True once the job left the queue (see [`Progress::left`]).
    left: tokio::sync::watch::Sender<bool>,
}

/// What [`Progress`] has shown so far.
#[derive(Default)]
struct State {
    /// The queued line last shown, if any.
    shown: Option<String>,
    /// A queued line is drawn on the terminal without its newline.
    drawn: bool,
    /// The no-worker warning was given for the current stretch without a worker.
    warned: bool,
    /// The job left the queue: no more queued lines.
    done: bool,
}

impl Progress {
    /// Status for job `job_id` that asked for `tags`; prints nothing at all when `quiet`.
    pub fn new(job_id: &str, tags: &[String], quiet: bool) -> Progress {
        Progress {
            job_id: job_id.to_string(),
            tags: tags.to_vec(),
            quiet,
            tty: std::io::stderr().is_terminal(),
            state: Mutex::new(State::default()),
            left: tokio::sync::watch::Sender::new(false),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `job <id> submitted: <hub>/jobs/<id>` (the dashboard's page of the job).
    pub fn submitted(&self, hub: &str) {
        let id = &self.job_id;
        let url = format!("{}/jobs/{}", hub, super::submit::encode_query(id));
        self.line(&format!("job {id} submitted: {url}"));
    }

    /// The job waits at `position`; `no_worker`: no connected worker can run it; `reason`: why
    /// it waits (older hubs do not say).
    pub fn queued(&self, position: u32, no_worker: bool, reason: Option<WaitReason>) {
        if self.quiet {
            return;
        }
        let mut st = self.state();
        if st.done {
            return;
        }
        if no_worker && !st.warned {
            st.warned = true;
            let who = if self.tags.is_empty() {
                "no worker is connected".to_string()
            } else {
                format!("no connected worker serves tags {}", self.tags.join(","))
            };
            self.write_line(
                &mut st,
                &format!(
                    "cmdx: warning: {who}: job {} waits until one connects (cmdx workers lists \
                     them; Ctrl-C cancels)",
                    self.job_id
                ),
            );
        }
        st.warned &= no_worker;
        let waiting = match reason {
            Some(WaitReason::UserAtRunningQuota) => {
                "you have as many jobs running as your quota allows".to_string()
            }
            Some(WaitReason::BehindHigherPriority) => "behind higher-priority jobs".to_string(),
            _ if self.tags.is_empty() => "waiting for a free worker".to_string(),
            _ => format!("waiting for a worker with tags {}", self.tags.join(",")),
        };
        let text = format!("queued (position {position}, {waiting})");
        if st.shown.as_deref() == Some(text.as_str()) && (st.drawn || !self.tty) {
            return;
        }
        let mut err = std::io::stderr().lock();
        let _ = if self.tty {
            write!(err, "{ERASE}{text}")
        } else {
            writeln!(err, "{text}")
        };
        let _ = err.flush();
        st.drawn = self.tty;
        st.shown = Some(text);
    }

    /// The job left the queue (assigned, or ended): erases the queued line on a terminal.
    pub fn left_queue(&self) {
        let mut st = self.state();
        st.done = true;
        Self::erase(&mut st);
        self.left.send_replace(true);
    }

    /// Resolves once the job left the queue (what a terminal resize refused while it was
    /// queued waits for).
    pub fn left(&self) -> impl Future<Output = ()> + 'static {
        let mut left = self.left.subscribe();
        async move {
            let _ = left.wait_for(|l| *l).await;
        }
    }

    /// Prints one line on stderr (after erasing a drawn queued line, which comes back with the
    /// next queue update), unless quiet.
    pub fn line(&self, text: &str) {
        if self.quiet {
            return;
        }
        let mut st = self.state();
        self.write_line(&mut st, text);
    }

    /// Prints one line on stderr, whatever `quiet` says (Ctrl-C notes).
    pub fn always(&self, text: &str) {
        let mut st = self.state();
        self.write_line(&mut st, text);
    }

    fn write_line(&self, st: &mut State, text: &str) {
        Self::erase(st);
        super::note(text);
    }

    fn erase(st: &mut State) {
        if st.drawn {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "{ERASE}");
            let _ = err.flush();
            st.drawn = false;
        }
    }
}

/// The one line said when job `view` ended with a non-zero exit `code`:
/// `job <id> failed: exit 2 after 3.1s on worker w1`, or the failure kind, or `cancelled`.
pub fn summary(view: &JobView, code: i32) -> String {
    let id = &view.job_id;
    let ran = match (&view.started_at, &view.result) {
        (Some(_), Some(r)) => format!(
            " after {}",
            super::table::run_time(Duration::from_millis(r.duration))
        ),
        _ => String::new(),
    };
    let on = match (&view.worker_id, &view.started_at) {
        (Some(w), Some(_)) => format!(" on worker {w}"),
        _ => String::new(),
    };
    if view.status == JobStatus::Cancelled {
        let when = if view.started_at.is_none() {
            " while queued".to_string()
        } else {
            format!("{ran}{on}")
        };
        return format!("job {id} cancelled{when}");
    }
    let what = match (view.failure, view.signal, view.exit_code) {
        (Some(FailureKind::Timeout), ..) => format!("timed out ({}s timeout)", view.timeout),
        (Some(FailureKind::Oom), ..) => "out of memory".to_string(),
        (
            Some(
                k @ (FailureKind::Setup
                | FailureKind::Sandbox
                | FailureKind::WorkerLost
                | FailureKind::Image),
            ),
            ..,
        ) => {
            let why = view
                .error
                .as_deref()
                .map(|e| format!(": {}", super::api::one_line(e)))
                .unwrap_or_default();
            format!("{}{why}", k.as_str())
        }
        (_, Some(sig), _) => format!("killed by signal {sig}"),
        (_, None, Some(c)) => format!("exit {c}"),
        _ => format!("exit code {code}"),
    };
    format!("job {id} failed: {what}{ran}{on}")
}
