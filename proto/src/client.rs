//! Messages on the browser/CLI WebSocket (`/ws/client`); see the crate docs for the exchange.

use serde::{Deserialize, Serialize};

use crate::Bytes64;
use crate::agent::ErrorMsg;
use crate::rest::{JobSummary, WorkerView};
use crate::{FailureKind, JobStatus, StreamKind};

/// Client -> hub.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase", deny_unknown_fields)]
pub enum ClientMsg {
    /// Stream a job's combined output from byte `offset` (0 = from the start), then live.
    #[serde(rename_all = "camelCase")]
    SubscribeOutput {
        /// Job id.
        job_id: String,
        /// First byte wanted.
        #[serde(default)]
        offset: u64,
    },
    /// Stop streaming a job's output.
    #[serde(rename_all = "camelCase")]
    UnsubscribeOutput {
        /// Job id.
        job_id: String,
    },
    /// Receive `job` events for jobs the caller can see.
    SubscribeJobs,
    /// Receive `worker` events (any signed-in user).
    SubscribeWorkers,
}

/// Hub -> client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum ServerMsg {
    /// Bytes of a job's combined output starting at `offset`.
    #[serde(rename_all = "camelCase")]
    Output {
        /// Job id.
        job_id: String,
        /// Byte offset of `data[0]` in the combined log.
        offset: u64,
        /// Which pipe these bytes came from.
        stream: StreamKind,
        /// The bytes.
        data: Bytes64,
        /// When the hub stored them (Unix time, ms): the time of the output, for per-line
        /// timestamps. 0 from a hub before this field.
        #[serde(default)]
        time_ms: u64,
    },
    /// The requested bytes are not stored (see `reason`); the stream continues at `offset`.
    #[serde(rename_all = "camelCase")]
    OutputSkipped {
        /// Job id.
        job_id: String,
        /// The first byte still stored.
        offset: u64,
        /// Why they are not: the output cap, or they were an earlier attempt's output (a job
        /// retried after its worker was lost logs its current attempt only). `cap` from a hub
        /// before this field.
        #[serde(default)]
        reason: SkipReason,
    },
    /// From byte `offset` on, the log is the output of attempt `attempt`: the job was retried
    /// (its earlier attempt did not finish, e.g. its worker was lost) while this subscription
    /// was sending the earlier attempt's output. Sent just before that attempt's first bytes.
    #[serde(rename_all = "camelCase")]
    OutputAttempt {
        /// Job id.
        job_id: String,
        /// Where the attempt's output starts.
        offset: u64,
        /// The attempt.
        attempt: u32,
    },
    /// The job is terminal and every byte up to `offset` was sent.
    #[serde(rename_all = "camelCase")]
    OutputEnd {
        /// Job id.
        job_id: String,
        /// Total bytes in the log.
        offset: u64,
        /// Final status.
        status: JobStatus,
        /// Exit code, if the command exited.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exit_code: Option<i32>,
        /// Signal, if the command was killed by one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signal: Option<i32>,
        /// Failure kind, for failed jobs.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        failure: Option<FailureKind>,
    },
    /// Sent on an output subscription while the job waits in the queue: at once, then whenever
    /// its position or the no-worker verdict changes (checked about once a second). When the job
    /// leaves the queue the subscription gets one `job` message with its new status. The fields
    /// mean what `queuePosition` and `noMatchingWorker` of the REST job view mean.
    #[serde(rename_all = "camelCase")]
    Queued {
        /// Job id.
        job_id: String,
        /// 1-based place in the queue of the workers that could run the job.
        position: u32,
        /// No connected worker can run the job.
        no_matching_worker: bool,
        /// Why it waits (older hubs omit it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<crate::rest::WaitReason>,
    },
    /// A job changed (created, assigned, started, finished); on an output subscription, the
    /// job left the queue.
    Job(JobSummary),
    /// A worker connected, changed load, or went offline.
    Worker(WorkerView),
    /// A request failed (unknown job: `not_found`; bad message: `bad_message`).
    Error(ErrorMsg),
}

/// Why bytes of a job's log are not stored (see [`ServerMsg::OutputSkipped`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum SkipReason {
    /// The output cap dropped the head of the log.
    #[default]
    Cap,
    /// They were the output of an earlier attempt: the log holds the current attempt's.
    EarlierAttempt,
}
