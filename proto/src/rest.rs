//! REST request and response bodies (`/api/...`), camelCase JSON.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::agent::Isolation;
use crate::{FailureKind, JobStatus};

/// Every error response: `{"error": "...", "code": "..."}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Human-readable, lowercase, no trailing period.
    pub error: String,
    /// Machine-readable, e.g. `bad_request`, `unauthorized`, `not_found`, `stale_attempt`.
    pub code: String,
    /// With `quota_exceeded` (429): the quota the request would exceed
    /// (`max_queued_per_user`) and its value for this user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<QuotaHit>,
}

/// Which quota a refused submission would exceed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QuotaHit {
    /// The setting's name, e.g. `max_queued_per_user`.
    pub name: String,
    /// Its value for this user.
    pub limit: u32,
}

/// The lowest job priority.
pub const MIN_PRIORITY: i32 = -100;
/// The highest job priority.
pub const MAX_PRIORITY: i32 = 100;

/// `POST /api/auth/login`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoginRequest {
    /// Account email.
    pub email: String,
    /// Password.
    pub password: String,
}

impl std::fmt::Debug for LoginRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginRequest")
            .field("email", &self.email)
            .finish_non_exhaustive()
    }
}

/// Answer to a successful login (the same token is also set as the `auth_token` cookie).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoginResponse {
    /// Bearer JWT.
    pub token: String,
    /// Who signed in.
    pub user: UserView,
}

/// A user as shown to clients.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserView {
    /// Stable id.
    pub id: String,
    /// Email (login name).
    pub email: String,
    /// `admin` or `user`.
    pub role: String,
    /// RFC 3339.
    pub created_at: String,
    /// This user's own limit on queued jobs, set by an admin (`null`: the hub's
    /// `max_queued_per_user`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queued: Option<u32>,
    /// This user's own limit on running jobs (`null`: the hub's `max_running_per_user`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_running: Option<u32>,
    /// Disabled by an admin: cannot sign in. Older hubs omit it.
    #[serde(default)]
    pub disabled: bool,
}

/// `PATCH /api/users/{id}` (admin): what to change; absent fields stay. Disabling, a new
/// password and a new role end the user's sessions.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateUserRequest {
    /// Disable (`true`) or enable (`false`) the account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    /// `admin` or `user`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// A new password (8 to 1024 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

impl std::fmt::Debug for UpdateUserRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpdateUserRequest")
            .field("disabled", &self.disabled)
            .field("role", &self.role)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// `DELETE /api/users/{id}?jobs=keep|remove` (admin): what became of the user's jobs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeleteUserResponse {
    /// The deleted user.
    pub user_id: String,
    /// `kept` (the jobs stay, listed for admins under the old owner id) or `removed`.
    pub jobs: String,
    /// Jobs deleted with their output (0 when kept).
    pub jobs_removed: u64,
    /// Uploaded files deleted (0 when jobs are kept).
    pub files_removed: u64,
}

/// `PUT /api/users/{id}/quota` (admin): a user's own limits; `null` (or absent) puts a limit
/// back to the hub's setting, `0` means no limit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QuotaRequest {
    /// Most jobs queued at once.
    #[serde(default)]
    pub max_queued: Option<u32>,
    /// Most jobs assigned or running at once (more wait in the queue).
    #[serde(default)]
    pub max_running: Option<u32>,
}

/// `POST /api/auth/register` (admin only).
#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegisterRequest {
    /// Email.
    pub email: String,
    /// Password (at least 8 characters).
    pub password: String,
    /// `admin` or `user` (default).
    #[serde(default)]
    pub role: Option<String>,
}

impl std::fmt::Debug for RegisterRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegisterRequest")
            .field("email", &self.email)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// Answer to an upload, and one entry of `GET /api/files/list`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileView {
    /// Id to pass as `fileId` on submit.
    pub file_id: String,
    /// Download path on the hub.
    pub file_url: String,
    /// Name given at upload.
    pub filename: String,
    /// Bytes.
    pub size: u64,
    /// Hex sha256 of the content.
    pub sha256: String,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
}

/// `GET /api/files/list`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileList {
    /// The caller's files, newest first.
    pub files: Vec<FileView>,
}

/// `POST /api/jobs/submit`. Unknown fields are rejected (400) so that clients cannot set
/// server-owned fields such as `status` or `workerId`.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SubmitRequest {
    /// Shell command (`sh -c`).
    pub command: String,
    /// A file uploaded by the caller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_id: Option<String>,
    /// A hub file URL (`/api/files/download/ID`) of the caller's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_url: Option<String>,
    /// Wall-clock timeout in seconds (default 600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
    /// Only workers advertising all these tags may run the job.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Extra environment for the job.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Attempts before `worker_lost` (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// Globs of result files to keep, relative to the job dir (`dist/**`, `reports/*.xml`):
    /// `*` stays within one path component, `**` crosses them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub artifacts: Vec<String>,
    /// Run the command in a pseudo-terminal (the default: `None` or `true`): `TERM`,
    /// `COLUMNS` and `LINES` set, stdout and stderr one ordered stream. `false`: stdout and
    /// stderr on pipes of their own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tty: Option<bool>,
    /// The terminal's size, e.g. the submitter's own window (default 80x24; each side 1 to
    /// 1000). Only with a terminal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tty_size: Option<crate::WindowSize>,
    /// Higher runs first, from -100 to 100 (default 0); above the hub's `max_user_priority`
    /// (default 50) only for admins. A running job is never preempted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    /// Run the command in this OCI image's root instead of the agent host's
    /// (`registry/repository:tag`, `…@sha256:` to pin; see `cmdx_proto::image`). Absent: the
    /// hub's default image if it has one, else the host's root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

impl std::fmt::Debug for SubmitRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubmitRequest")
            .field("command_len", &self.command.len())
            .field("file_id", &self.file_id)
            .field("file_url", &self.file_url)
            .field("timeout", &self.timeout)
            .field("tags", &self.tags)
            .field("env_keys", &self.env.keys().collect::<Vec<_>>())
            .field("max_attempts", &self.max_attempts)
            .field("artifacts", &self.artifacts)
            .field("tty", &self.tty)
            .field("tty_size", &self.tty_size)
            .field("priority", &self.priority)
            .field("image", &self.image)
            .finish()
    }
}

/// `201` answer to a submission.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubmitResponse {
    /// The new job's id.
    pub job_id: String,
}

/// `POST /api/jobs/cancel`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CancelRequest {
    /// Job to cancel.
    pub job_id: String,
}

/// `POST /api/jobs/resize`: a new window size for a running job's terminal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResizeRequest {
    /// Job to resize.
    pub job_id: String,
    /// Columns, 1 to [`crate::WindowSize::MAX_SIDE`] (wider than a side so that a size out
    /// of range gets the hub's own refusal).
    pub cols: u32,
    /// Rows, 1 to [`crate::WindowSize::MAX_SIDE`].
    pub rows: u32,
}

/// `200` answer to a resize.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResizeResponse {
    /// Always true.
    pub success: bool,
    /// The job.
    pub job_id: String,
    /// The size the job's terminal has now (stored in the job).
    pub tty_size: crate::WindowSize,
}

/// Summary of a finished job, for the original system's clients.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobResult {
    /// `status == completed`.
    pub success: bool,
    /// Run time in milliseconds.
    pub duration: u64,
    /// Number of output lines.
    pub lines: u64,
}

/// One attempt of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttemptView {
    /// Attempt number.
    pub attempt: u32,
    /// Worker that held it.
    pub worker_id: String,
    /// RFC 3339.
    pub assigned_at: String,
    /// RFC 3339, when it ended (finished, lost or cancelled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<String>,
    /// How it ended, e.g. `completed`, `failed`, `worker_lost`, `requeued`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<String>,
}

/// `GET /api/jobs/status?jobId=`: the whole job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobView {
    /// Id.
    pub job_id: String,
    /// Shell command.
    pub command: String,
    /// Download path of the job's ZIP, if any.
    pub file_url: Option<String>,
    /// Lifecycle status.
    pub status: JobStatus,
    /// Worker holding (or that last held) the job.
    pub worker_id: Option<String>,
    /// Current attempt (0 while never assigned).
    pub attempt: u32,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// Owner's user id.
    pub owner: String,
    /// Required worker tags.
    pub tags: Vec<String>,
    /// Names of the extra env variables (values are not echoed).
    pub env_keys: Vec<String>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub started_at: Option<String>,
    /// RFC 3339.
    pub completed_at: Option<String>,
    /// Stdout bytes (lossy UTF-8), up to a response cap; the full log is at `/output`.
    pub stdout: String,
    /// Stderr bytes (lossy UTF-8), as `stdout`.
    pub stderr: String,
    /// Exit code.
    pub exit_code: Option<i32>,
    /// Signal that killed the command.
    pub signal: Option<i32>,
    /// Timeout in seconds.
    pub timeout: u64,
    /// Human-readable error.
    pub error: Option<String>,
    /// Failure kind.
    pub failure: Option<FailureKind>,
    /// Legacy summary, once terminal.
    pub result: Option<JobResult>,
    /// A cancel was requested.
    pub cancel_requested: bool,
    /// Total bytes of output ever produced.
    pub output_bytes: u64,
    /// The output cap dropped the head of the log.
    pub output_truncated: bool,
    /// Peak memory in bytes.
    pub peak_memory_bytes: Option<u64>,
    /// CPU time in milliseconds.
    pub cpu_ms: Option<u64>,
    /// The image the job runs in (normalised reference); `null`: the agent host's root.
    #[serde(default)]
    pub image: Option<String>,
    /// The manifest digest the agent ran, once known.
    #[serde(default)]
    pub image_digest: Option<String>,
    /// Time the agent spent pulling and unpacking the image for this attempt, in milliseconds
    /// (0 when it was cached; `null` without an image).
    #[serde(default)]
    pub pull_ms: Option<u64>,
    /// Attempt history.
    pub attempts: Vec<AttemptView>,
    /// The artifact globs asked for at submission.
    pub artifact_patterns: Vec<String>,
    /// Collected artifact files of the current attempt (`[]` until uploaded).
    pub artifacts: Vec<ArtifactView>,
    /// Download path of all artifacts as one ZIP, once there are any.
    pub artifacts_url: Option<String>,
    /// Matching paths the agent did not collect, and why (at most 100 listed).
    pub artifacts_skipped: Vec<ArtifactSkip>,
    /// How many matching paths were skipped in all (may exceed the list).
    pub artifacts_skipped_total: u64,
    /// Why no artifacts could be collected or stored, if so.
    pub artifacts_error: Option<String>,
    /// While `queued`: 1 + the number of older queued jobs that could be taken before this one
    /// by a worker able to run it (the jobs whose tags are served by one of the connected,
    /// non-draining workers that match this job; with none connected, the older jobs whose tags
    /// are a subset of this job's). `null` once the job left the queue. Older hubs omit it.
    #[serde(default)]
    pub queue_position: Option<u32>,
    /// While `queued`: no connected, non-draining worker serves all of the job's tags (and, for a
    /// tagless job, no legacy worker is online), so it waits until one connects. Always `false`
    /// on a hub of a cluster, which sees only the workers connected to itself.
    #[serde(default)]
    pub no_matching_worker: bool,
    /// While `queued`: why it waits (see [`WaitReason`]). Older hubs omit it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_reason: Option<WaitReason>,
    /// Higher runs first (-100 to 100). Older hubs omit it (0).
    #[serde(default)]
    pub priority: i32,
    /// The size of the job's pseudo-terminal now (the submitted one, or the last resize);
    /// `null` for a job on pipes. Older hubs omit it.
    #[serde(default)]
    pub tty_size: Option<crate::WindowSize>,
}

/// Why a queued job has not started yet (the first that applies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WaitReason {
    /// No connected, non-draining worker serves all its tags.
    NoMatchingWorker,
    /// Its owner has as many jobs assigned or running as their `max_running_per_user`.
    UserAtRunningQuota,
    /// Jobs of a higher priority that its workers could run are queued.
    BehindHigherPriority,
    /// Every slot of the workers that could run it is busy (or goes first to other jobs of its
    /// priority: other users' in turn, then its owner's older ones).
    NoFreeSlot,
}

impl WaitReason {
    /// A short sentence for people.
    pub fn describe(self) -> &'static str {
        match self {
            WaitReason::NoMatchingWorker => "no connected worker has its tags",
            WaitReason::UserAtRunningQuota => "its owner is at their running-jobs quota",
            WaitReason::BehindHigherPriority => "behind jobs of a higher priority",
            WaitReason::NoFreeSlot => "waiting for a free slot",
        }
    }
}

/// One collected artifact file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArtifactView {
    /// Path relative to the job dir, `/`-separated.
    pub path: String,
    /// Bytes.
    pub size: u64,
    /// Hex sha256 of the content.
    pub sha256: String,
}

/// A path that matched an artifact glob but was not collected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArtifactSkip {
    /// Path relative to the job dir (or a glob, for limits that stopped the walk).
    pub path: String,
    /// Why, e.g. `symlink`, `not a regular file`, `over the byte cap`.
    pub reason: String,
}

/// True for an artifact path both sides accept (a ZIP entry name the hub lists and serves, and
/// the agent collects): relative, `/`-separated, at most 4,096 bytes, no empty, `.` or `..`
/// components, no NUL, backslash or control characters. The agent skips (and reports) any
/// other name, so one odd file name never costs a job its whole artifact ZIP.
pub fn is_clean_artifact_path(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 4096
        && !name.starts_with('/')
        && !name.chars().any(|c| c.is_control() || c == '\\')
        && name
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
}

/// The `manifest` part of an agent's artifact upload (`PUT /api/jobs/{jobId}/artifacts`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArtifactManifest {
    /// Paths skipped (at most 100).
    #[serde(default)]
    pub skipped: Vec<ArtifactSkip>,
    /// All skipped paths, counted.
    #[serde(default)]
    pub skipped_total: u64,
}

/// Answer to an artifact upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArtifactList {
    /// The stored files.
    pub artifacts: Vec<ArtifactView>,
}

/// A job without its output, for lists and live events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobSummary {
    /// Id.
    pub job_id: String,
    /// Shell command.
    pub command: String,
    /// Lifecycle status.
    pub status: JobStatus,
    /// Worker holding (or that last held) the job.
    pub worker_id: Option<String>,
    /// Current attempt.
    pub attempt: u32,
    /// Owner's user id.
    pub owner: String,
    /// Required tags.
    pub tags: Vec<String>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub started_at: Option<String>,
    /// RFC 3339.
    pub completed_at: Option<String>,
    /// Exit code.
    pub exit_code: Option<i32>,
    /// Failure kind.
    pub failure: Option<FailureKind>,
    /// Total output bytes so far.
    pub output_bytes: u64,
    /// Higher runs first. Older hubs omit it (0).
    #[serde(default)]
    pub priority: i32,
}

/// `GET /api/jobs/list`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobList {
    /// Newest first.
    pub jobs: Vec<JobSummary>,
    /// `jobs.len()`.
    pub count: usize,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// A worker as shown to people (`GET /api/workers/list`, `worker` events).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkerView {
    /// Id.
    pub worker_id: String,
    /// `online`, `draining` or `offline`.
    pub status: String,
    /// `agent` (WebSocket) or `legacy` (REST polling).
    pub kind: String,
    /// Host name.
    pub hostname: String,
    /// OS description.
    pub os: String,
    /// Agent version.
    pub version: String,
    /// Logical CPUs.
    pub cpu_count: u32,
    /// Memory in MiB.
    pub total_memory_mb: u64,
    /// Tags served.
    pub tags: Vec<String>,
    /// Concurrency.
    pub slots: u32,
    /// Slots in use.
    pub slots_used: u32,
    /// Jobs held now.
    pub current_jobs: Vec<String>,
    /// Sandbox layers.
    pub isolation: Isolation,
    /// RFC 3339.
    pub connected_at: Option<String>,
    /// RFC 3339.
    pub last_heartbeat: Option<String>,
    /// On a cluster of hubs: the hub holding the worker's connection (absent on a single hub).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hub: Option<String>,
    /// Email of the admin who drained it: it takes no new jobs, across reconnects and hub
    /// restarts, until resumed (`POST /api/workers/{id}/resume`). Absent when not drained.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drained_by: Option<String>,
    /// RFC 3339: when it was drained.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drained_at: Option<String>,
}

/// `GET /api/workers/list`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkerList {
    /// Known workers, online first.
    pub workers: Vec<WorkerView>,
}

/// `POST /api/workers/tokens` (admin).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MintTokenRequest {
    /// Label for people.
    #[serde(default)]
    pub name: Option<String>,
    /// Lifetime in seconds (default 30 days).
    #[serde(default)]
    pub ttl_secs: Option<u64>,
    /// Scope: agents enrolled with this token may advertise only these tags (so they can only
    /// receive jobs that ask for these tags, or no tag). `None`: any tags.
    #[serde(default)]
    pub tags: Option<Vec<String>>,
}

/// A freshly minted worker token (shown once).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MintTokenResponse {
    /// The token to give to `cmdx agent --token`.
    pub token: String,
    /// Token id (for revocation and audit).
    pub token_id: String,
    /// RFC 3339.
    pub expires_at: String,
}

/// One minted worker token, as admins see it (`GET /api/workers/tokens`); never the secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkerTokenView {
    /// Token id.
    pub token_id: String,
    /// Label for people.
    pub name: Option<String>,
    /// Admin (user id) who minted it.
    pub created_by: String,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub expires_at: String,
    /// Tag scope (`None`: any tags).
    pub tags: Option<Vec<String>>,
    /// Worker ids enrolled with it.
    pub workers: Vec<String>,
}

/// `GET /api/workers/tokens` (admin): live tokens, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkerTokenList {
    /// Tokens.
    pub tokens: Vec<WorkerTokenView>,
}

impl std::fmt::Debug for MintTokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MintTokenResponse")
            .field("token_id", &self.token_id)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// `GET /api/jobs/{id}/output/search`: one page of a literal search over the stored log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutputSearch {
    /// Matching lines, in log order.
    pub matches: Vec<OutputMatch>,
    /// Lines this request read (a line is counted once it ends or the log ends).
    pub lines_scanned: u64,
    /// Bytes this request read.
    pub bytes_scanned: u64,
    /// Byte offset of the first stored byte: line 1 starts here (later than 0 when the output
    /// cap dropped the head).
    pub start_offset: u64,
    /// Where this request stopped: the line number and byte offset of the next line to read.
    pub line: u64,
    /// Byte offset matching `line`.
    pub offset: u64,
    /// Pass as `cursor` to read on; absent once the stored log was read to its end.
    pub next: Option<String>,
}

/// One matching line of an [`OutputSearch`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutputMatch {
    /// Line number, 1-based from the first stored byte.
    pub line: u64,
    /// Byte offset of the line's first byte in the combined log.
    pub offset: u64,
    /// The line without terminal escape sequences, lossy UTF-8, capped.
    pub text: String,
    /// The line was longer than `text`.
    pub text_truncated: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_bodies_use_their_wire_names() {
        let req: ResizeRequest =
            serde_json::from_str(r#"{"jobId":"j1","cols":100,"rows":30}"#).unwrap();
        assert_eq!(
            req,
            ResizeRequest {
                job_id: "j1".into(),
                cols: 100,
                rows: 30
            }
        );
        // Wider than a side, so the hub answers an out-of-range size itself.
        let wide: ResizeRequest =
            serde_json::from_str(r#"{"jobId":"j1","cols":70000,"rows":30}"#).unwrap();
        assert_eq!(wide.cols, 70000);
        assert!(serde_json::from_str::<ResizeRequest>(r#"{"jobId":"j1","cols":1}"#).is_err());
        let resp = ResizeResponse {
            success: true,
            job_id: "j1".into(),
            tty_size: crate::WindowSize {
                cols: 100,
                rows: 30,
            },
        };
        assert_eq!(
            serde_json::to_string(&resp).unwrap(),
            r#"{"success":true,"jobId":"j1","ttySize":{"cols":100,"rows":30}}"#
        );
    }
}
