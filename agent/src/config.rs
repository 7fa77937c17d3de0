//! Agent configuration and the control signal the embedding binary drives.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use cmdx_sandbox::{Limits, Mode};

/// Everything [`crate::run`] needs. Build it with [`AgentConfig::new`] and adjust fields.
#[derive(Clone)]
pub struct AgentConfig {
    /// Base URL of the hub, `http://host:port` or `https://host:port` (`ws://` and `wss://` are
    /// accepted too); the agent connects to `/ws/agent` below it and resolves hub-relative file
    /// URLs against it.
    pub hub_url: String,
    /// A PEM file of CA certificates trusted besides the system's roots, for a hub whose
    /// `https://` certificate a private CA signed.
    pub ca_file: Option<PathBuf>,
    /// Worker token, sent in the WebSocket handshake and on file downloads; never logged.
    pub token: String,
    /// Fixed worker id; when `None` the agent keeps a generated id in `work_dir/worker-id`
    /// so held jobs can resume after a reconnect and the hub recognises the worker.
    pub worker_id: Option<String>,
    /// Jobs run at once (slots advertised to the hub).
    pub concurrency: u32,
    /// Tags this agent serves.
    pub tags: Vec<String>,
    /// Agent state: worker id, downloads, job workspaces. Two agents must not share one.
    /// When the agent runs as root every parent directory must be world-traversable
    /// (`o+x`), because jobs run as unprivileged uids.
    pub work_dir: PathBuf,
    /// `Strict` refuses to start unless every isolation layer is available.
    pub sandbox_mode: Mode,
    /// Default limits for each job; an assignment's timeout replaces `wall_timeout`.
    pub limits: Limits,
    /// Time between TERM and KILL when a job is cancelled or the agent aborts.
    pub cancel_grace: Duration,
    /// Largest ZIP the agent downloads.
    pub max_download_bytes: u64,
    /// Most entries a ZIP may have.
    pub max_zip_entries: usize,
    /// Most bytes extraction may write (counted on bytes actually decompressed); the job's
    /// disk limit lowers it further when set.
    pub max_extract_bytes: u64,
    /// Largest accepted ratio of decompressed to compressed bytes, checked per entry and for
    /// the whole archive once more than `ratio_floor_bytes` were written.
    pub max_compression_ratio: u64,
    /// Below this many decompressed bytes the ratio check does not apply (tiny, highly
    /// compressible files are normal).
    pub ratio_floor_bytes: u64,
    /// Bytes of output per job sent but not yet acknowledged by the hub; when full the agent
    /// stops reading the job's pipes, which pauses the job instead of dropping output.
    pub output_window_bytes: u32,
    /// Output cap per job (0: none): the first `max_output_bytes - output_tail_bytes` bytes
    /// stream live, then only the last `output_tail_bytes` are kept and sent at the end after
    /// a note saying how much was omitted (`outcome.outputTruncated`). The job keeps running.
    pub max_output_bytes: u64,
    /// Bytes kept from the end of a capped job's output.
    pub output_tail_bytes: u32,
    /// Jobs run as `uid_base + slot` (uid and gid) when the agent runs as root. Agents on
    /// one host never share a job uid: each claims its range host-wide (see the `uids`
    /// module).
    pub uid_base: u32,
    /// Take the first free range at or above `uid_base` (in steps of 1,000) instead of exactly
    /// `uid_base` (which refuses to start when another agent on the host holds an overlapping
    /// range).
    pub uid_base_auto: bool,
    /// Where uid range claims are kept (host-wide; `/run/cmdx/uid-ranges`).
    pub uid_claims_dir: PathBuf,
    /// Longest time a connection attempt (TCP + WebSocket handshake) and the wait for
    /// `welcome` may take.
    pub connect_timeout: Duration,
    /// Longest pause between reconnection attempts (exponential backoff with jitter).
    pub max_backoff: Duration,
    /// Longest time a ZIP download may take.
    pub download_timeout: Duration,
    /// Job images: cache budget, size caps, insecure registries, credentials.
    pub images: crate::image::ImageSettings,
}

impl AgentConfig {
    /// A configuration with the documented defaults: 2 slots, `./cmdx-agent` work dir,
    /// strict sandbox, default limits, 10 s cancel grace, 256 MiB download cap, 10,000 entries,
    /// 1 GiB extracted, ratio 200, 8 MiB output window, 64 MiB output cap keeping a 1 MiB tail,
    /// uid base 40000.
    pub fn new(hub_url: impl Into<String>, token: impl Into<String>) -> Self {
        Self {
            hub_url: hub_url.into(),
            ca_file: None,
            token: token.into(),
            worker_id: None,
            concurrency: 2,
            tags: Vec::new(),
            work_dir: PathBuf::from("cmdx-agent"),
            sandbox_mode: Mode::Strict,
            limits: Limits::default(),
            cancel_grace: Duration::from_secs(10),
            max_download_bytes: 256 << 20,
            max_zip_entries: 10_000,
            max_extract_bytes: 1 << 30,
            max_compression_ratio: 200,
            ratio_floor_bytes: 1 << 20,
            output_window_bytes: 8 << 20,
            max_output_bytes: 64 << 20,
            output_tail_bytes: 1 << 20,
            uid_base: 40_000,
            uid_base_auto: true,
            uid_claims_dir: PathBuf::from(crate::uids::CLAIMS_DIR),
            connect_timeout: Duration::from_secs(10),
            max_backoff: Duration::from_secs(5),
            download_timeout: Duration::from_secs(600),
            images: crate::image::ImageSettings::default(),
        }
    }
}

impl fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The token is a credential: only whether it is set reaches a log.
        f.debug_struct("AgentConfig")
            .field("hub_url", &self.hub_url)
            .field("ca_file", &self.ca_file)
            .field(
                "token",
                &if self.token.is_empty() {
                    "<empty>"
                } else {
                    "<redacted>"
                },
            )
            .field("worker_id", &self.worker_id)
            .field("concurrency", &self.concurrency)
            .field("tags", &self.tags)
            .field("work_dir", &self.work_dir)
            .field("sandbox_mode", &self.sandbox_mode)
            .field("limits", &self.limits)
            .field("cancel_grace", &self.cancel_grace)
            .field("max_download_bytes", &self.max_download_bytes)
            .field("max_zip_entries", &self.max_zip_entries)
            .field("max_extract_bytes", &self.max_extract_bytes)
            .field("max_compression_ratio", &self.max_compression_ratio)
            .field("ratio_floor_bytes", &self.ratio_floor_bytes)
            .field("output_window_bytes", &self.output_window_bytes)
            .field("max_output_bytes", &self.max_output_bytes)
            .field("output_tail_bytes", &self.output_tail_bytes)
            .field("uid_base", &self.uid_base)
            .field("uid_base_auto", &self.uid_base_auto)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_backoff", &self.max_backoff)
            .field("download_timeout", &self.download_timeout)
            .field("images", &self.images)
            .finish()
    }
}

/// What the embedding binary wants the agent to do; sent through a
/// `tokio::sync::watch::Receiver<Control>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Control {
    /// Normal operation: take jobs.
    #[default]
    Run,
    /// Take no new jobs, finish the running ones, wait for the hub to acknowledge their
    /// results, then return (first SIGTERM).
    Drain,
    /// Terminate running jobs (TERM, KILL after the cancel grace), report them, return
    /// (second SIGTERM or SIGQUIT).
    Abort,
}
