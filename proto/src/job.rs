//! Job vocabulary shared by every protocol: status, failure kinds, output streams, outcomes.

use serde::{Deserialize, Serialize};

/// Where a job is in its lifecycle: `queued -> assigned -> running -> completed | failed | cancelled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    /// Waiting for a worker with free slots and matching tags.
    Queued,
    /// Pushed to (or claimed by) a worker; not yet running.
    Assigned,
    /// The worker reported the sandboxed child started.
    Running,
    /// The command exited 0.
    Completed,
    /// Anything else; see [`FailureKind`].
    Failed,
    /// Cancelled by its owner or an admin.
    Cancelled,
}

impl JobStatus {
    /// True for `completed`, `failed` and `cancelled`: nothing changes a terminal job again.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }

    /// The lowercase name used in JSON and query strings.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Assigned => "assigned",
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// Parses the lowercase name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => Self::Queued,
            "assigned" => Self::Assigned,
            "running" => Self::Running,
            "completed" => Self::Completed,
            "failed" => Self::Failed,
            "cancelled" => Self::Cancelled,
            _ => return None,
        })
    }
}

/// Why a job failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The command exited non-zero.
    ExitCode,
    /// The wall-clock timeout expired.
    Timeout,
    /// The memory limit was hit and the kernel OOM killer fired.
    Oom,
    /// The command was killed by a signal it did not ask for.
    Killed,
    /// Download or extraction of the job's files failed.
    Setup,
    /// The sandbox could not be set up.
    Sandbox,
    /// The worker vanished and the job ran out of attempts.
    WorkerLost,
    /// The job's image could not be used: unknown, registry unreachable, authentication
    /// refused, digest mismatch, over the size cap, unsafe or without a shell.
    Image,
}

impl FailureKind {
    /// The snake_case name used in JSON and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ExitCode => "exit_code",
            Self::Timeout => "timeout",
            Self::Oom => "oom",
            Self::Killed => "killed",
            Self::Setup => "setup",
            Self::Sandbox => "sandbox",
            Self::WorkerLost => "worker_lost",
            Self::Image => "image",
        }
    }
}

/// Which of the child's output pipes a chunk came from. A job run in a pseudo-terminal has
/// one ordered stream, reported as [`StreamKind::Stdout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StreamKind {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// The size of a job's terminal in character cells (`COLUMNS` x `LINES`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct WindowSize {
    /// Columns (`COLUMNS`, `tput cols`).
    pub cols: u16,
    /// Rows (`LINES`, `tput lines`).
    pub rows: u16,
}

impl WindowSize {
    /// The size a job's terminal gets when the submitter sent none: a classic 80x24.
    pub const DEFAULT: WindowSize = WindowSize { cols: 80, rows: 24 };
    /// The largest side a submitter may ask for.
    pub const MAX_SIDE: u16 = 1000;

    /// Whether both sides are between 1 and [`WindowSize::MAX_SIDE`].
    pub fn is_valid(self) -> bool {
        (1..=Self::MAX_SIDE).contains(&self.cols) && (1..=Self::MAX_SIDE).contains(&self.rows)
    }
}

/// How one attempt of a job ended, as reported by the agent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Outcome {
    /// Exit code when the child exited normally.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Signal number when the child was killed by a signal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// Failure kind decided by the agent (setup, sandbox, timeout, oom, ...); `None` when the
    /// command ran to its own end (the hub then derives `exit_code` or `killed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<FailureKind>,
    /// Human-readable error for failures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The wall-clock timeout fired.
    #[serde(default)]
    pub timed_out: bool,
    /// The cgroup's OOM killer fired.
    #[serde(default)]
    pub oom_killed: bool,
    /// The job was stopped because the hub asked to cancel it.
    #[serde(default)]
    pub cancelled: bool,
    /// Wall time from spawn to exit, in milliseconds.
    #[serde(default)]
    pub duration_ms: u64,
    /// CPU time (user + system) used by the job's processes, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_ms: Option<u64>,
    /// Peak memory of the job's cgroup, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_memory_bytes: Option<u64>,
    /// The agent's output cap was hit; the stored log keeps the tail.
    #[serde(default)]
    pub output_truncated: bool,
    /// The job asked for artifacts but none could be collected or uploaded (why). Files
    /// skipped one by one are listed with the artifacts instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifacts_error: Option<String>,
    /// Time spent pulling and unpacking the job's image before the command started, in
    /// milliseconds (0: it was cached); absent for jobs without an image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_ms: Option<u64>,
    /// The manifest digest of the image the job ran in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_digest: Option<String>,
}

impl Outcome {
    /// The final job status this outcome implies.
    pub fn status(&self) -> JobStatus {
        if self.cancelled {
            JobStatus::Cancelled
        } else if self.failure.is_none() && self.exit_code == Some(0) && self.signal.is_none() {
            JobStatus::Completed
        } else {
            JobStatus::Failed
        }
    }

    /// The failure kind for a failed outcome, derived when the agent did not set one.
    pub fn failure_kind(&self) -> Option<FailureKind> {
        match self.status() {
            JobStatus::Failed => Some(self.failure.unwrap_or(if self.timed_out {
                FailureKind::Timeout
            } else if self.oom_killed {
                FailureKind::Oom
            } else if self.signal.is_some() {
                FailureKind::Killed
            } else {
                FailureKind::ExitCode
            })),
            _ => None,
        }
    }
}

/// Longest tag, in bytes.
pub const MAX_TAG_BYTES: usize = 64;

/// Why `tag` cannot be a tag, if it cannot: tags are what jobs ask for and agents serve, matched
/// exactly, and written comma-separated (`--tags gpu,linux`, the `tags` label of
/// `cmdx_queue_depth_by_tags`): 1 to [`MAX_TAG_BYTES`] bytes without commas, white space or
/// control characters.
pub fn tag_error(tag: &str) -> Option<String> {
    if tag.is_empty() || tag.len() > MAX_TAG_BYTES {
        return Some(format!(
            "tag {tag:?} is not 1 to {MAX_TAG_BYTES} bytes long"
        ));
    }
    tag.chars()
        .any(|c| c == ',' || c.is_whitespace() || c.is_control())
        .then(|| {
            format!(
                "tag {tag:?} has a comma, a space or a control character: each tag is one word \
                 (gpu,linux is two tags, given apart)"
            )
        })
}

#[cfg(test)]
mod tag_tests {
    use super::tag_error;

    #[test]
    fn tags_are_words_without_separators() {
        for ok in ["gpu", "linux/arm64", "region=eu-1", "x86_64", "ü"] {
            assert_eq!(tag_error(ok), None, "{ok}");
        }
        for bad in [
            "",
            "gpu,linux",
            "gpu linux",
            "tab\there",
            "nl\n",
            &"a".repeat(65),
        ] {
            assert!(tag_error(bad).is_some(), "{bad:?}");
        }
        assert_eq!(tag_error(&"a".repeat(64)), None);
    }
}
