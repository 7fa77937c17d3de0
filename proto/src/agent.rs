//! Messages on the agent WebSocket (`/ws/agent`); see the crate docs for the exchange.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Bytes64, Outcome, StreamKind};

/// Names one attempt of one job; every agent message about a job carries it (fencing).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobRef {
    /// The job's id.
    pub job_id: String,
    /// The attempt number the hub assigned (1 for the first assignment).
    pub attempt: u32,
}

/// Agent -> hub.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum AgentMsg {
    /// First message after the WebSocket opens.
    Hello(Hello),
    /// The agent took an assignment.
    Accept(JobRef),
    /// The agent cannot take an assignment (no slot, draining, bad spec); the hub requeues it.
    Reject(Reject),
    /// The sandboxed child is running.
    Started(Started),
    /// A batch of output.
    Output(OutputChunk),
    /// The attempt ended.
    Finished(Finished),
    /// Periodic liveness and load report.
    Heartbeat(Heartbeat),
}

/// The agent's introduction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Hello {
    /// Must equal the hub's [`crate::PROTOCOL_VERSION`].
    pub protocol_version: u32,
    /// Stable id of this agent (kept across reconnects so held jobs can resume).
    pub worker_id: String,
    /// Host name, for people.
    pub hostname: String,
    /// Operating system and kernel, for people.
    pub os: String,
    /// Agent version.
    pub version: String,
    /// Logical CPUs on the host.
    pub cpu_count: u32,
    /// Total memory on the host.
    pub total_memory_mb: u64,
    /// Tags this agent serves; a job with tags goes only to an agent advertising all of them.
    #[serde(default)]
    pub tags: Vec<String>,
    /// How many jobs this agent runs at once.
    pub concurrency: u32,
    /// Which sandbox layers are active on this agent.
    #[serde(default)]
    pub isolation: Isolation,
    /// Jobs this agent still holds from before a reconnect.
    #[serde(default)]
    pub held: Vec<HeldJob>,
}

/// Sandbox layers an agent has (reported so people can see how isolated their jobs are).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Isolation {
    /// Layers that are active, e.g. `cgroup-v1`, `netns`, `landlock-abi7`, `seccomp`, `uid`.
    #[serde(default)]
    pub active: Vec<String>,
    /// Layers that are unavailable on this host.
    #[serde(default)]
    pub missing: Vec<String>,
    /// `strict` or `best-effort`.
    #[serde(default)]
    pub mode: String,
}

/// A job an agent still holds when it (re)connects.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeldJob {
    /// Job id.
    pub job_id: String,
    /// Attempt the agent is running.
    pub attempt: u32,
    /// Number of output chunks produced so far.
    pub chunks: u64,
    /// Set when the attempt ended but the hub never acknowledged `finished`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<Outcome>,
}

/// Refusal of an assignment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Reject {
    /// Job id.
    pub job_id: String,
    /// Attempt.
    pub attempt: u32,
    /// Why, for logs.
    pub reason: String,
}

/// The child started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Started {
    /// Job id.
    pub job_id: String,
    /// Attempt.
    pub attempt: u32,
    /// Sandbox layers active for this job.
    #[serde(default)]
    pub isolation: Vec<String>,
}

/// A numbered batch of output bytes from one stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutputChunk {
    /// Job id.
    pub job_id: String,
    /// Attempt.
    pub attempt: u32,
    /// Chunk number, from 0 per attempt, contiguous.
    pub seq: u64,
    /// Which pipe.
    pub stream: StreamKind,
    /// The bytes (base64 in JSON).
    pub data: Bytes64,
}

/// The attempt ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Finished {
    /// Job id.
    pub job_id: String,
    /// Attempt.
    pub attempt: u32,
    /// Number of output chunks sent for this attempt (`seq` 0..chunks).
    pub chunks: u64,
    /// How it ended.
    pub outcome: Outcome,
}

/// Periodic liveness report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Heartbeat {
    /// Jobs currently held.
    #[serde(default)]
    pub running: Vec<JobRef>,
    /// Free slots.
    #[serde(default)]
    pub free_slots: u32,
    /// True while the agent drains (takes no new work).
    #[serde(default)]
    pub draining: bool,
}

/// Hub -> agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum HubMsg {
    /// Answer to `hello`.
    Welcome(Welcome),
    /// Run a job.
    Assign(Assignment),
    /// Output up to and including `seq` is durable.
    OutputAck(OutputAck),
    /// The result is durable; the agent may forget the job.
    FinishedAck(JobRef),
    /// Stop a job: TERM, then KILL after `graceSecs`.
    Cancel(Cancel),
    /// The job's terminal has a new window size (its viewer's terminal was resized). Agents
    /// that predate it log it as a malformed message and go on.
    Resize(Resize),
    /// The attempt is stale (reassigned or finished elsewhere): kill it, send nothing more.
    Abandon(Abandon),
    /// Take no new work; finish what is running.
    Drain,
    /// Protocol error; the hub closes the connection after it.
    Error(ErrorMsg),
}

/// Handshake answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Welcome {
    /// The hub's [`crate::PROTOCOL_VERSION`].
    pub protocol_version: u32,
    /// The worker id the hub registered.
    pub worker_id: String,
    /// How often the agent should send `heartbeat`.
    pub heartbeat_secs: u64,
    /// Held jobs the agent should keep running (and resend output after `ackedSeq`).
    #[serde(default)]
    pub resume: Vec<Resume>,
    /// Held jobs whose attempt is stale: kill and forget them.
    #[serde(default)]
    pub abandon: Vec<JobRef>,
}

/// A held job the hub still wants.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resume {
    /// Job id.
    pub job_id: String,
    /// Attempt.
    pub attempt: u32,
    /// Number of chunks durably stored (the agent resends from this `seq`).
    pub stored_chunks: u64,
    /// True when the hub already recorded the result (the agent can forget the job).
    #[serde(default)]
    pub finished: bool,
}

/// A job for the agent to run.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Assignment {
    /// Job id.
    pub job_id: String,
    /// Attempt number; echo it in every message about this job.
    pub attempt: u32,
    /// Shell command, run as `sh -c COMMAND` in the job directory.
    pub command: String,
    /// Where to download the job's ZIP (a hub path like `/api/files/download/ID`, or a URL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_url: Option<String>,
    /// Expected sha256 of the ZIP, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_sha256: Option<String>,
    /// Expected size of the ZIP in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_size: Option<u64>,
    /// Wall-clock timeout in seconds.
    pub timeout_secs: u64,
    /// Extra environment for the job (on top of the sandbox's allow-list).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Globs (relative to the job dir) of files to collect after the command ends and upload
    /// with `PUT /api/jobs/{jobId}/artifacts?attempt=N`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub artifacts: Vec<String>,
    /// The hub's cap on artifact bytes (uncompressed) for this job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_max_bytes: Option<u64>,
    /// The hub's cap on the number of artifact files for this job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_max_files: Option<u32>,
    /// Run the command in a pseudo-terminal of this size (stdout and stderr one ordered
    /// stream, reported as `stdout`); absent: stdout and stderr on pipes of their own, as
    /// before this field existed (so an older hub's assignments keep their pipes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tty: Option<crate::WindowSize>,
    /// Run in this image's root (a normalised reference the hub checked); absent: the host's
    /// root, as before this field existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

impl std::fmt::Debug for Assignment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // env may hold secrets: only its keys reach a log.
        f.debug_struct("Assignment")
            .field("job_id", &self.job_id)
            .field("attempt", &self.attempt)
            .field("command_len", &self.command.len())
            .field("file_url", &self.file_url)
            .field("timeout_secs", &self.timeout_secs)
            .field("env_keys", &self.env.keys().collect::<Vec<_>>())
            .field("artifacts", &self.artifacts)
            .field("tty", &self.tty)
            .field("image", &self.image)
            .finish()
    }
}

/// Cumulative output acknowledgement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutputAck {
    /// Job id.
    pub job_id: String,
    /// Attempt.
    pub attempt: u32,
    /// Number of chunks durably stored (all `seq < storedChunks`).
    pub stored_chunks: u64,
}

/// Cancel request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cancel {
    /// Job id.
    pub job_id: String,
    /// Attempt.
    pub attempt: u32,
    /// Seconds between TERM and KILL.
    pub grace_secs: u64,
}

/// New window size for a running job's pseudo-terminal. It can overtake the job's
/// `assign` (the hub accepts a resize once the job is claimed): an agent keeps the newest few
/// for attempts it does not hold yet and starts such a job at that size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resize {
    /// Job id.
    pub job_id: String,
    /// Attempt; a resize for another attempt than the one the agent runs is ignored.
    pub attempt: u32,
    /// Columns.
    pub cols: u16,
    /// Rows.
    pub rows: u16,
}

impl Resize {
    /// The new size.
    pub fn size(&self) -> crate::WindowSize {
        crate::WindowSize {
            cols: self.cols,
            rows: self.rows,
        }
    }
}

/// Stale attempt notice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Abandon {
    /// Job id.
    pub job_id: String,
    /// The stale attempt.
    pub attempt: u32,
    /// Why, for logs.
    pub reason: String,
}

/// A protocol error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorMsg {
    /// Machine-readable code, e.g. `protocol_version`, `bad_message`.
    pub code: String,
    /// Human-readable text.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_round_trips_with_its_wire_names() {
        let m = HubMsg::Resize(Resize {
            job_id: "j1".into(),
            attempt: 2,
            cols: 100,
            rows: 30,
        });
        let text = serde_json::to_string(&m).unwrap();
        assert_eq!(
            text,
            r#"{"type":"resize","jobId":"j1","attempt":2,"cols":100,"rows":30}"#
        );
        assert_eq!(serde_json::from_str::<HubMsg>(&text).unwrap(), m);
        let HubMsg::Resize(r) = m else { unreachable!() };
        assert_eq!(
            r.size(),
            crate::WindowSize {
                cols: 100,
                rows: 30
            }
        );
    }

    #[test]
    fn a_resize_out_of_range_for_u16_is_refused() {
        let bad = r#"{"type":"resize","jobId":"j1","attempt":1,"cols":70000,"rows":30}"#;
        assert!(serde_json::from_str::<HubMsg>(bad).is_err());
        let missing = r#"{"type":"resize","jobId":"j1","attempt":1,"cols":80}"#;
        assert!(serde_json::from_str::<HubMsg>(missing).is_err());
    }

    /// What an agent that predates a message sees: a parse error it can skip (the agent
    /// logs and ignores a message it cannot parse), never a panic.
    #[test]
    fn an_unknown_hub_message_is_a_parse_error() {
        let future = r#"{"type":"somethingNew","jobId":"j1"}"#;
        assert!(serde_json::from_str::<HubMsg>(future).is_err());
    }
}
