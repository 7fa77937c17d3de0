//! Records as they are stored on disk. Separate from the wire types in `cmdx_proto` on purpose:
//! a REST field can be renamed without a data migration, and old records must keep loading
//! (see the fixtures test in `store::tests`). Every record carries a version `v`.

use std::collections::BTreeMap;

use cmdx_proto::{FailureKind, JobStatus, Outcome, StreamKind};
use serde::{Deserialize, Serialize};

/// Current version written for every record type.
pub const RECORD_VERSION: u32 = 1;

fn v1() -> u32 {
    RECORD_VERSION
}

/// A job and everything the hub knows about it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    /// Record version.
    #[serde(default = "v1")]
    pub v: u32,
    /// Id (time-sortable).
    pub id: String,
    /// Owner user id.
    pub owner: String,
    /// Shell command.
    pub command: String,
    /// The job's ZIP, if any.
    #[serde(default)]
    pub file: Option<FileRef>,
    /// Wall timeout in seconds.
    pub timeout_secs: u64,
    /// Required worker tags, sorted and deduplicated.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Extra environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Attempts allowed before `worker_lost`.
    pub max_attempts: u32,
    /// Lifecycle status.
    pub status: JobStatus,
    /// Current attempt (0 before the first assignment).
    #[serde(default)]
    pub attempt: u32,
    /// Queue key while `queued`.
    #[serde(default)]
    pub queue_seq: Option<u64>,
    /// Worker that holds the current attempt.
    #[serde(default)]
    pub worker_id: Option<String>,
    /// Worker token id the current attempt is bound to.
    #[serde(default)]
    pub token_id: Option<String>,
    /// Came in through a legacy route (affects how commands are run by legacy workers).
    #[serde(default)]
    pub legacy: bool,
    /// Milliseconds since the epoch.
    pub created_ms: u64,
    /// When the current attempt was assigned.
    #[serde(default)]
    pub assigned_ms: Option<u64>,
    /// When the current attempt started running.
    #[serde(default)]
    pub started_ms: Option<u64>,
    /// When the job became terminal.
    #[serde(default)]
    pub completed_ms: Option<u64>,
    /// Cancel requested by owner or admin.
    #[serde(default)]
    pub cancel_requested: bool,
    /// How the final attempt ended.
    #[serde(default)]
    pub outcome: Option<Outcome>,
    /// Failure kind of a failed job.
    #[serde(default)]
    pub failure: Option<FailureKind>,
    /// Human error of a failed job.
    #[serde(default)]
    pub error: Option<String>,
    /// Output log bookkeeping.
    #[serde(default)]
    pub output: OutputMeta,
    /// Attempt history.
    #[serde(default)]
    pub attempts: Vec<AttemptRecord>,
    /// Assignments the worker refused (no free slot, draining): they do not count against
    /// `max_attempts`.
    #[serde(default)]
    pub rejections: u32,
    /// Artifact globs asked for at submission.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub artifact_globs: Vec<String>,
    /// The artifacts stored for an attempt (only the current attempt's are shown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifacts: Option<ArtifactsRecord>,
    /// The pseudo-terminal the job runs in; `None`: stdout and stderr on pipes. Records
    /// written before jobs had terminals load as `None`, the pipes they were submitted with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tty: Option<TtyRecord>,
    /// Higher runs first (-100..=100); records written before priorities load as 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub priority: i32,
    /// The normalised image reference the job runs in; `None`: the agent host's root (and
    /// every record written before jobs had images).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

/// The size of a job's pseudo-terminal, in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TtyRecord {
    /// Columns.
    pub cols: u16,
    /// Rows.
    pub rows: u16,
}

impl JobRecord {
    /// The artifacts of the current attempt, if it uploaded any.
    pub fn current_artifacts(&self) -> Option<&ArtifactsRecord> {
        self.artifacts
            .as_ref()
            .filter(|a| a.attempt == self.attempt)
    }

    /// True when `(worker, attempt)` is the job's current, live assignment.
    pub fn is_current(&self, worker_id: &str, attempt: u32) -> bool {
        self.attempt == attempt
            && self.worker_id.as_deref() == Some(worker_id)
            && matches!(self.status, JobStatus::Assigned | JobStatus::Running)
    }

    /// True when `(worker, attempt)` is the current assignment and it was claimed with the
    /// credential `token_id` (fencing: output, results and downloads from any other pair are
    /// refused).
    pub fn held_by(&self, worker_id: &str, attempt: u32, token_id: &str) -> bool {
        self.is_current(worker_id, attempt)
            && self
                .token_id
                .as_deref()
                .is_some_and(|t| same_credential(t, token_id))
    }
}

/// The credential id every legacy worker credential shares (an admitted CIDR, a legacy JWT):
/// the original worker sends no credentials on its JSON calls and a JWT on its download, and
/// both must be the same worker. The worker id itself is checked separately (a JWT names one).
pub const LEGACY_CREDENTIAL: &str = "legacy";

/// Whether a stored claim's credential id and a presented one are the same credential.
/// Assignments stored before legacy credentials were merged name `open-cidr` or
/// `legacy-jwt:<worker>`: they count as [`LEGACY_CREDENTIAL`], so a legacy job in flight across
/// an upgrade is not fenced off.
fn same_credential(stored: &str, presented: &str) -> bool {
    stored == presented || (is_legacy_credential(stored) && is_legacy_credential(presented))
}

/// Whether a stored claim's credential id is a legacy worker's (including the ids stored
/// before legacy credentials were merged).
pub fn is_legacy_credential(t: &str) -> bool {
    t == LEGACY_CREDENTIAL || t == "open-cidr" || t.starts_with("legacy-jwt:")
}

/// A job's stored artifacts: one ZIP (a [`FileRecord`] with `artifacts_of`) and its listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactsRecord {
    /// Attempt that uploaded them.
    pub attempt: u32,
    /// The ZIP's file record.
    pub file_id: String,
    /// The ZIP's sha256 (its blob).
    pub sha256: String,
    /// The ZIP's size.
    pub size: u64,
    /// Regular files in the ZIP, in ZIP order.
    pub files: Vec<ArtifactFile>,
    /// Matching paths not collected (at most 100).
    #[serde(default)]
    pub skipped: Vec<(String, String)>,
    /// All skipped paths, counted.
    #[serde(default)]
    pub skipped_total: u64,
}

/// One file inside a job's artifact ZIP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactFile {
    /// Path in the ZIP (relative, `/`-separated, normalised).
    pub path: String,
    /// Uncompressed bytes.
    pub size: u64,
    /// Hex sha256 of the content.
    pub sha256: String,
}

/// Reference from a job to its uploaded file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRef {
    /// File id.
    pub file_id: String,
    /// Hex sha256.
    pub sha256: String,
    /// Bytes.
    pub size: u64,
    /// Name at upload.
    pub filename: String,
}

/// Bookkeeping of a job's output log; chunks live in the `output` tree keyed by
/// `(job id, index)`, with `index` counting every chunk ever stored for the job.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputMeta {
    /// First index still stored (older chunks were dropped by the cap or a new attempt).
    #[serde(default)]
    pub first_index: u64,
    /// Byte offset of the first stored chunk.
    #[serde(default)]
    pub first_offset: u64,
    /// The cap dropped bytes of this job's log.
    #[serde(default)]
    pub truncated: bool,
    /// Final totals, set when the job is terminal.
    #[serde(default)]
    pub total_bytes: u64,
    /// Final line count (newlines in the whole log), set when terminal.
    #[serde(default)]
    pub lines: u64,
}

/// One attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// Attempt number.
    pub attempt: u32,
    /// Worker.
    pub worker_id: String,
    /// Assigned at (ms).
    pub assigned_ms: u64,
    /// Ended at (ms).
    #[serde(default)]
    pub ended_ms: Option<u64>,
    /// How it ended.
    #[serde(default)]
    pub end: Option<String>,
}

/// One stored output chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkRecord {
    /// Index in the job's log.
    pub index: u64,
    /// Attempt that produced it.
    pub attempt: u32,
    /// The agent's sequence number within the attempt.
    pub seq: u64,
    /// Byte offset in the combined log.
    pub offset: u64,
    /// Which pipe.
    pub stream: StreamKind,
    /// Stored at (ms).
    pub time_ms: u64,
    /// Bytes.
    pub data: Vec<u8>,
}

impl ChunkRecord {
    /// Offset just past this chunk.
    pub fn end(&self) -> u64 {
        self.offset + self.data.len() as u64
    }

    /// Binary encoding: `[1 version][1 stream][4 attempt][8 seq][8 offset][8 time][data]`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(30 + self.data.len());
        out.push(1u8);
        out.push(match self.stream {
            StreamKind::Stdout => 1,
            StreamKind::Stderr => 2,
        });
        out.extend_from_slice(&self.attempt.to_be_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.offset.to_be_bytes());
        out.extend_from_slice(&self.time_ms.to_be_bytes());
        out.extend_from_slice(&self.data);
        out
    }

    /// Inverse of [`ChunkRecord::encode`]; `None` for a corrupt value.
    pub fn decode(index: u64, raw: &[u8]) -> Option<ChunkRecord> {
        if raw.len() < 30 || raw[0] != 1 {
            return None;
        }
        let stream = match raw[1] {
            1 => StreamKind::Stdout,
            2 => StreamKind::Stderr,
            _ => return None,
        };
        let u32_at = |i: usize| u32::from_be_bytes(raw[i..i + 4].try_into().unwrap_or([0; 4]));
        let u64_at = |i: usize| u64::from_be_bytes(raw[i..i + 8].try_into().unwrap_or([0; 8]));
        Some(ChunkRecord {
            index,
            attempt: u32_at(2),
            seq: u64_at(6),
            offset: u64_at(14),
            time_ms: u64_at(22),
            stream,
            data: raw[30..].to_vec(),
        })
    }
}

/// A user account.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    /// Record version.
    #[serde(default = "v1")]
    pub v: u32,
    /// Id.
    pub id: String,
    /// Email, lowercased.
    pub email: String,
    /// argon2id PHC string.
    pub password_hash: String,
    /// `admin` or `user`.
    pub role: String,
    /// Created (ms).
    pub created_ms: u64,
    /// This user's own limit on queued jobs, set by an admin (`None`: the hub's setting; 0: no
    /// limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queued: Option<u32>,
    /// This user's own limit on running jobs (`None`: the hub's setting; 0: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_running: Option<u32>,
    /// Disabled by an admin: cannot sign in, sessions ended.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disabled: bool,
    /// Raised by an admin's change (disable, password, role): sessions issued under a lower
    /// epoch are refused.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub session_epoch: u64,
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}

impl std::fmt::Debug for UserRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserRecord")
            .field("id", &self.id)
            .field("email", &self.email)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// An uploaded file (content lives in the blob folder under its sha256).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    /// Record version.
    #[serde(default = "v1")]
    pub v: u32,
    /// Id.
    pub id: String,
    /// Owner user id.
    pub owner: String,
    /// Name at upload.
    pub filename: String,
    /// Bytes.
    pub size: u64,
    /// Hex sha256 (the blob's name).
    pub sha256: String,
    /// Uploaded (ms).
    pub created_ms: u64,
    /// Last submitted with a job (ms); retention counts from the later of this and upload.
    #[serde(default)]
    pub last_used_ms: Option<u64>,
    /// Set for a job's artifact ZIP: the file lives as long as that job references it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifacts_of: Option<String>,
}

/// A worker known to the hub (kept across restarts so lists survive them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerRecord {
    /// Record version.
    #[serde(default = "v1")]
    pub v: u32,
    /// Id.
    pub id: String,
    /// `agent` or `legacy`.
    pub kind: String,
    /// Host name.
    pub hostname: String,
    /// OS.
    pub os: String,
    /// Agent version.
    #[serde(default)]
    pub version: String,
    /// CPUs.
    pub cpu_count: u32,
    /// Memory MiB.
    pub total_memory_mb: u64,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Slots.
    pub slots: u32,
    /// Isolation layers active.
    #[serde(default)]
    pub isolation_active: Vec<String>,
    /// Isolation layers missing.
    #[serde(default)]
    pub isolation_missing: Vec<String>,
    /// Sandbox mode.
    #[serde(default)]
    pub isolation_mode: String,
    /// Token id it enrolled with.
    #[serde(default)]
    pub token_id: Option<String>,
    /// Last seen (ms).
    pub last_seen_ms: u64,
}

/// An admin's drain of a worker: it takes no new jobs, across its reconnects and hub restarts,
/// until an admin resumes it (its existence is the drain; delete = resume). Kept apart from
/// [`WorkerRecord`], which every connect of the worker rewrites.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DrainRecord {
    /// Record version.
    #[serde(default = "v1")]
    pub v: u32,
    /// The worker.
    pub worker_id: String,
    /// Email of the admin who drained it.
    pub by: String,
    /// When (ms).
    pub at_ms: u64,
}

/// A minted worker token (its existence is what makes the token valid; delete = revoke).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerTokenRecord {
    /// Record version.
    #[serde(default = "v1")]
    pub v: u32,
    /// Token id.
    pub id: String,
    /// Label.
    #[serde(default)]
    pub name: Option<String>,
    /// Admin who minted it.
    pub created_by: String,
    /// Minted (ms).
    pub created_ms: u64,
    /// Expires (ms).
    pub expires_ms: u64,
    /// Tag scope: agents using it may advertise only these tags (`None`: any).
    #[serde(default)]
    pub tags: Option<Vec<String>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records as the first release wrote them must keep loading (fields added since default).
    #[test]
    fn version_one_records_still_load() {
        let job = r#"{"v":1,"id":"01a21ad6ea299f735076","owner":"u1","command":"echo hi",
            "file":null,"timeout_secs":600,"tags":[],"env":{},"max_attempts":3,
            "status":"completed","attempt":1,"queue_seq":null,"worker_id":"w1","token_id":"t1",
            "legacy":false,"created_ms":1,"assigned_ms":2,"started_ms":3,"completed_ms":4,
            "cancel_requested":false,"outcome":{"exitCode":0,"timedOut":false,"oomKilled":false,
            "cancelled":false,"durationMs":1,"outputTruncated":false},"failure":null,"error":null,
            "output":{"first_index":0,"first_offset":0,"truncated":false,"total_bytes":3,"lines":1},
            "attempts":[{"attempt":1,"worker_id":"w1","assigned_ms":2,"ended_ms":4,
            "end":"completed"}]}"#;
        let j: JobRecord = serde_json::from_str(job).expect("v1 job loads");
        assert_eq!(j.rejections, 0);
        assert_eq!(j.status, cmdx_proto::JobStatus::Completed);
        assert_eq!(j.tty, None, "an old job keeps its pipes");
        let file = r#"{"v":1,"id":"f1","owner":"u1","filename":"a.zip","size":3,
            "sha256":"ab","created_ms":5}"#;
        let f: FileRecord = serde_json::from_str(file).expect("v1 file loads");
        assert_eq!(f.last_used_ms, None);
        let chunk = ChunkRecord {
            index: 7,
            attempt: 2,
            seq: 3,
            offset: 100,
            stream: cmdx_proto::StreamKind::Stderr,
            time_ms: 9,
            data: b"abc".to_vec(),
        };
        assert_eq!(ChunkRecord::decode(7, &chunk.encode()), Some(chunk));
    }
}
