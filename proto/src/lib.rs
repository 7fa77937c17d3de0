//! Wire types shared by the cmdx hub, agents and clients.
//!
//! This crate holds only data: no runtime, no server, no store. Every type here is
//! serialized as JSON with camelCase field names; timestamps are RFC 3339 UTC strings.
//!
//! # Agent protocol (`/ws/agent`)
//!
//! One WebSocket per agent process, opened with the worker token in the
//! `Authorization: Bearer` (or `x-worker-token`) header, never in the URL. Text frames carry
//! one JSON object each, tagged by `"type"` ([`agent::AgentMsg`] upstream, [`agent::HubMsg`]
//! downstream).
//!
//! 1. **Handshake.** The agent sends `hello` with [`PROTOCOL_VERSION`], its stable worker id,
//!    capabilities (hostname, cpus, memory, tags, concurrency, isolation layers) and the jobs it
//!    still holds (`running`: job id, attempt, and for a finished job the unacknowledged result).
//!    The hub answers `welcome` with the worker id, the heartbeat period, and for each held job
//!    either `resume` (with the last output sequence number it has durably stored) or `abandon`
//!    (the attempt is stale: kill it and forget it). A version mismatch gets `error` and a close.
//! 2. **Assignment.** The hub pushes `assign` (job id, `attempt`, command, file URL and sha256,
//!    timeout, env, and `tty`, the window size of the job's pseudo-terminal, absent for a job
//!    that wants pipes) while the agent has free slots. The agent answers `accept` or `reject`, then
//!    `started` once the sandboxed child runs.
//! 3. **Output.** The agent batches output (about 20 ms or 32 KiB) into `output` chunks numbered
//!    by `seq` from 0 per attempt. The hub stores chunk `seq` only if it is the next one expected
//!    (older ones are duplicates and ignored) and answers `outputAck` with the highest contiguous
//!    durable `seq`. The agent keeps unacknowledged chunks and resends them after a reconnect:
//!    no gaps, no duplicates.
//! 4. **Artifacts.** When the assignment names `artifacts` globs, the agent collects the matching
//!    files after the command ended (whatever the outcome) and uploads them as one ZIP with
//!    `PUT /api/jobs/{jobId}/artifacts?attempt=N` (REST, worker token, fenced like every
//!    message) *before* `finished`, so a terminal job already lists its artifacts. An upload
//!    that cannot land sets the outcome's `artifactsError`.
//! 5. **Finish.** `finished` carries the outcome (exit code or signal, OOM, timeout, cancel,
//!    durations, peak memory) and `chunks`, the number of output chunks sent. The hub records it
//!    once every chunk is stored and answers `finishedAck`; until then the agent resends it
//!    after each reconnect.
//! 6. **Control.** `cancel` asks the agent to stop a job (TERM, then KILL after `graceSecs`);
//!    `abandon` tells it an attempt is stale (fencing); `drain` asks it to take no more work;
//!    `resize` gives a running job's terminal a new window size (the agent ignores it for an
//!    attempt it does not run or a job on pipes; an agent that predates it skips it as a
//!    message it cannot parse, as agents skip every unknown message).
//!    Every agent message names `(jobId, attempt)`; the hub ignores and answers `abandon` to any
//!    attempt that is not the job's current one.
//! 7. **Liveness.** WebSocket ping/pong from the hub plus an app-level `heartbeat` listing the
//!    held jobs and free slots.
//!
//! # Client protocol (`/ws/client`)
//!
//! Browsers and the CLI authenticate with the session cookie or a bearer token (browsers must
//! also send an allowed `Origin`). They send [`client::ClientMsg`] requests to subscribe to a
//! job's output from a byte offset, or to live job and worker events; the hub answers with
//! [`client::ServerMsg`]. Output is the job's combined log (stdout and stderr interleaved in the
//! order the agent sent them) addressed by byte offset: the hub replays stored bytes from the
//! requested offset, then follows live, with no gap or duplicate at the seam. A subscriber that
//! falls behind is resynced from the store; `outputEnd` marks the end of a finished job's log.
//! A job retried after its attempt was lost logs its current attempt only: bytes asked for that
//! are gone come as `outputSkipped` (with `reason`: the output cap, or an earlier attempt), and a
//! subscriber that was sent an earlier attempt's output gets `outputAttempt` where the new
//! attempt's output starts.
//! While the subscribed job is still queued the hub also sends `queued` (its queue position and
//! whether any connected worker can run it) whenever that changes, and one `job` when it leaves
//! the queue; after that, a `job` for each change of the job's state made on that hub (so a
//! subscriber sees a lost attempt's job go back to the queue).

#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod agent;
pub mod bytes64;
pub mod client;
pub mod image;
pub mod job;
pub mod legacy;
pub mod rest;

pub use bytes64::Bytes64;
pub use job::{FailureKind, JobStatus, MAX_TAG_BYTES, Outcome, StreamKind, WindowSize, tag_error};

/// Version of the agent and client WebSocket protocols; exchanged in `hello`/`welcome`.
pub const PROTOCOL_VERSION: u32 = 1;

/// Header an agent or legacy worker may use instead of `Authorization: Bearer`.
pub const WORKER_TOKEN_HEADER: &str = "x-worker-token";
