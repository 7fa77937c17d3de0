//! Bodies of the original Node system's routes, kept for its worker agents and submitters.
//! Field sets are loose on purpose: the original clients send extra fields.

use serde::{Deserialize, Serialize};

/// `POST /api/workers/register`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LegacyRegister {
    /// Worker id chosen by the worker.
    pub worker_id: String,
    /// Host name.
    #[serde(default)]
    pub hostname: Option<String>,
    /// OS.
    #[serde(default)]
    pub os: Option<String>,
    /// CPUs.
    #[serde(default)]
    pub cpu_count: Option<u32>,
    /// Memory.
    #[serde(default)]
    pub ram_total_mb: Option<u64>,
}

/// `POST /api/workers/heartbeat`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LegacyHeartbeat {
    /// Worker id.
    pub worker_id: String,
    /// `idle`, `busy`, ...
    #[serde(default)]
    pub status: Option<String>,
}

/// The job inside a `get-job` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LegacyJob {
    /// Id.
    pub job_id: String,
    /// Newline-separated commands.
    pub command: String,
    /// Where to download the ZIP (absolute hub URL path).
    pub file_url: Option<String>,
    /// File name of the ZIP.
    pub filename: Option<String>,
    /// Timeout in milliseconds.
    pub timeout_ms: u64,
}

/// `GET /api/jobs/get-job` answer: the new shape (`success`, `job`) and the older flat shape
/// (`jobId`, `command`, `fileUrl`, `timeout`) side by side.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LegacyGetJob {
    /// A job was assigned.
    pub success: bool,
    /// The job, or null.
    pub job: Option<LegacyJob>,
    /// Flat shape: id or null.
    pub job_id: Option<String>,
    /// Flat shape: command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Flat shape: file URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_url: Option<String>,
    /// Flat shape: timeout in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
}

/// `POST /api/jobs/stream-output`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LegacyStreamOutput {
    /// Job id.
    pub job_id: String,
    /// Text.
    #[serde(default)]
    pub data: String,
    /// `stdout` or `stderr`.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// Worker id (newer agents send it).
    #[serde(default)]
    pub worker_id: Option<String>,
}

/// `POST /api/jobs/submit-result`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LegacySubmitResult {
    /// Job id.
    pub job_id: String,
    /// Worker id.
    #[serde(default)]
    pub worker_id: Option<String>,
    /// Whole stdout.
    #[serde(default)]
    pub stdout: Option<String>,
    /// Whole stderr.
    #[serde(default)]
    pub stderr: Option<String>,
    /// Exit code.
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// The original agent's ZIP of the job folder, base64; kept as the job's artifacts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_zip_base64: Option<String>,
    /// Name of that ZIP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_zip_name: Option<String>,
}

/// `PUT /api/jobs/submit-result`: the worker could not run the job.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LegacySubmitError {
    /// Job id.
    pub job_id: String,
    /// Worker id.
    #[serde(default)]
    pub worker_id: Option<String>,
    /// What went wrong.
    #[serde(default)]
    pub error_message: Option<String>,
}

/// `POST /api/jobs/create`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LegacyCreateJob {
    /// Commands.
    pub command: String,
    /// File URL of an uploaded file.
    #[serde(default)]
    pub file_url: Option<String>,
    /// File name.
    #[serde(default)]
    pub filename: Option<String>,
    /// Timeout in milliseconds.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// `GET /api/jobs/check-cancel` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LegacyCheckCancel {
    /// Always true when the job exists.
    pub success: bool,
    /// Stop the job.
    pub cancel_requested: bool,
}
