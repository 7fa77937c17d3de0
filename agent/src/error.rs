//! Error types of the agent library.
//!
//! [`AgentError`] ends [`crate::run`]; [`JobError`] ends one job before its command ran (download,
//! extraction, sandbox) and becomes the `error` text of that job's `finished` outcome, so its
//! messages are written for the person who submitted the job.

use std::io;
use std::path::PathBuf;

use cmdx_proto::FailureKind;

/// Why [`crate::run`] could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The hub URL is not an `http(s)://` or `ws(s)://` URL.
    #[error("invalid hub url {url:?}: {reason}")]
    HubUrl {
        /// The URL as configured.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A configuration value is out of range.
    #[error("invalid agent config: {0}")]
    Config(String),
    /// The work directory (or a file in it) could not be prepared.
    #[error("cannot {op} {path}: {source}")]
    WorkDir {
        /// What the agent tried to do.
        op: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// `--sandbox strict` was asked for but some isolation layers are unavailable.
    #[error("sandbox mode is strict but these isolation layers are unavailable: {}", missing.join(", "))]
    SandboxUnavailable {
        /// The missing layers, as the sandbox names them.
        missing: Vec<String>,
    },
    /// The private CA file (`--ca-file`) cannot be used.
    #[error("CA file {path}: {reason}")]
    CaFile {
        /// The file as configured.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The TLS client configuration could not be built.
    #[error("cannot set up TLS: {0}")]
    Tls(String),
    /// The HTTP client for downloads could not be built.
    #[error("cannot build the download client: {0}")]
    HttpClient(#[source] reqwest::Error),
}

/// Why one job failed before or while its command was started; reported in `finished`.
#[derive(Debug, thiserror::Error)]
pub(crate) enum JobError {
    /// The job's workspace could not be created.
    #[error("cannot create the job workspace: {0}")]
    Workspace(String),
    /// The job's ZIP could not be downloaded.
    #[error("download of {url} failed: {reason}")]
    Download {
        /// The URL (hub path or absolute URL) from the assignment.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The ZIP is larger than the agent accepts.
    #[error("download of {url} exceeds the limit of {limit} bytes")]
    DownloadTooLarge {
        /// The URL from the assignment.
        url: String,
        /// The configured cap.
        limit: u64,
    },
    /// The downloaded bytes do not match the sha256 of the assignment.
    #[error("sha256 mismatch for {url}: expected {expected}, got {actual}")]
    Sha256Mismatch {
        /// The URL from the assignment.
        url: String,
        /// Hex digest the hub announced.
        expected: String,
        /// Hex digest of what arrived.
        actual: String,
    },
    /// The downloaded size differs from the size the hub announced.
    #[error("size mismatch for {url}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        /// The URL from the assignment.
        url: String,
        /// Size the hub announced.
        expected: u64,
        /// Size that arrived.
        actual: u64,
    },
    /// The ZIP is malformed or unsafe to extract.
    #[error("unsafe or invalid zip: {0}")]
    Extract(String),
    /// A local I/O step of the job setup failed.
    #[error("cannot {op} {path}: {source}")]
    Io {
        /// What the agent tried to do.
        op: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The assignment itself is unusable (for example an env name with `=`).
    #[error("invalid assignment: {0}")]
    Assignment(String),
    /// The sandbox refused to start the command.
    #[error("sandbox failed: {0}")]
    Sandbox(String),
    /// The job's image could not be pulled, unpacked or run.
    #[error("{0}")]
    Image(#[from] crate::image::ImageError),
}

impl JobError {
    /// The failure kind this error reports to the hub.
    pub fn failure_kind(&self) -> FailureKind {
        match self {
            Self::Sandbox(_) | Self::Workspace(_) => FailureKind::Sandbox,
            Self::Image(_) => FailureKind::Image,
            _ => FailureKind::Setup,
        }
    }

    /// Shorthand for an [`JobError::Io`] error.
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io {
            op,
            path: path.into(),
            source,
        }
    }
}
