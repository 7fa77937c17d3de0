//! Errors of the sandbox crate.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong while preparing, starting or reaping a sandboxed command.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `Mode::Strict` was requested but some isolation layers are unavailable on this host.
    #[error("strict sandbox mode but layers are missing: {}", missing.join(", "))]
    MissingLayers {
        /// Names of the layers that could not be applied.
        missing: Vec<String>,
    },
    /// A cgroup file or directory operation failed.
    #[error("cgroup {op} {}: {source}", path.display())]
    Cgroup {
        /// What was being done (`create`, `write`, `read`, `remove`, ...).
        op: &'static str,
        /// The cgroup file or directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Building the landlock ruleset in the parent failed.
    #[error("landlock ruleset: {0}")]
    Landlock(#[from] landlock::RulesetError),
    /// Building the seccomp filter in the parent failed.
    #[error("seccomp filter: {0}")]
    Seccomp(String),
    /// The spec is unusable (e.g. a NUL byte in an argument or an empty program path).
    #[error("invalid spec: {0}")]
    InvalidSpec(String),
    /// `fork`/`exec` or one of the isolation steps run in the child before `exec` failed.
    #[error("spawn {}: {step}: {source}", program.display())]
    Spawn {
        /// The program that was being started.
        program: PathBuf,
        /// The step that failed (`exec`, `join cgroup`, `unshare netns`, `landlock`, ...).
        step: &'static str,
        /// The underlying error.
        source: io::Error,
    },
    /// Waiting for the child, or killing and reaping its cgroup, failed.
    #[error("wait for pid {pid}: {source}")]
    Wait {
        /// The main process of the job.
        pid: u32,
        /// The underlying error.
        source: io::Error,
    },
    /// Building a job's private root (the mount namespace template, see [`crate::Root`])
    /// failed.
    #[error("private root: {op}: {source}")]
    Root {
        /// The step that failed.
        op: &'static str,
        /// The underlying error.
        source: io::Error,
    },
    /// Making the job's pseudo-terminal (see [`crate::Spec::terminal`]) failed.
    #[error("pseudo-terminal: {source}")]
    Terminal {
        /// The underlying error.
        source: io::Error,
    },
    /// A workspace operation (mount, chown, unmount, delete) failed.
    #[error("workspace {op} {}: {source}", path.display())]
    Workspace {
        /// What was being done (`create`, `mount tmpfs`, `chown`, `unmount`, `remove`, ...).
        op: &'static str,
        /// The path concerned.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
