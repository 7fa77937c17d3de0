//! The original Node system's routes, for its worker agents (register, heartbeat, get-job,
//! stream-output, check-cancel, submit-result) and submitters (create, execute). They share the
//! dispatcher and store with the WebSocket agents: a job is assigned to exactly one worker
//! whichever door it came through. Bodies may arrive chunked without Content-Length.

use std::sync::Arc;

use cmdx_proto::legacy::{
    LegacyCheckCancel, LegacyCreateJob, LegacyGetJob, LegacyHeartbeat, LegacyJob, LegacyRegister,
    LegacyStreamOutput, LegacySubmitError, LegacySubmitResult,
};
use cmdx_proto::rest::SubmitRequest;
use cmdx_proto::{FailureKind, Outcome, StreamKind};
use warp::http::StatusCode;
use warp::reply::Response;

use super::{Req, json, json_status, read_json, user, worker};
use crate::Hub;
use crate::auth::WorkerCred;
use crate::error::{ApiError, ApiResult};
use crate::jobs::dispatcher::claim_legacy;
use crate::jobs::lifecycle::{self, FinishReport};
use crate::jobs::submit::submit_legacy;
use crate::store::{JobRecord, WorkerRecord, now_ms};

/// Checks that a legacy worker's credential may register, poll or heartbeat as `worker_id`.
async fn claim_identity(hub: &Hub, cred: &WorkerCred, worker_id: &str) -> ApiResult<()> {
    bind(cred, worker_id)?;
    if let WorkerCred::Token(tid) = cred
        && crate::ws_agent::id_taken_by_another_token(hub, worker_id, tid).await
    {
        return Err(ApiError::forbidden(format!(
            "worker id {worker_id} is enrolled with another worker token"
        )));
    }
    if !hub.dispatch.legacy_may_use(
        worker_id,
        &cred.token_id(),
        hub.config.legacy_offline_secs * 1000,
    ) {
        return Err(ApiError::conflict(format!(
            "worker id {worker_id} is in use by another connected worker"
        )));
    }
    Ok(())
}

/// Checks that a legacy worker's credential may speak for `worker_id`.
fn bind(cred: &WorkerCred, worker_id: &str) -> ApiResult<()> {
    if worker_id.is_empty() || worker_id.len() > 128 {
        return Err(ApiError::bad_request(
            "workerId required (at most 128 bytes)",
        ));
    }
    if !cred.speaks_for(worker_id) {
        return Err(ApiError::forbidden(
            "worker token was issued to another worker",
        ));
    }
    Ok(())
}

fn record(body: &LegacyRegister, token_id: &str) -> WorkerRecord {
    WorkerRecord {
        v: 1,
        id: body.worker_id.clone(),
        kind: "legacy".into(),
        hostname: body
            .hostname
            .clone()
            .unwrap_or_default()
            .chars()
            .take(256)
            .collect(),
        os: body
            .os
            .clone()
            .unwrap_or_default()
            .chars()
            .take(256)
            .collect(),
        version: "legacy".into(),
        cpu_count: body.cpu_count.unwrap_or(0),
        total_memory_mb: body.ram_total_mb.unwrap_or(0),
        tags: Vec::new(),
        slots: 1,
        isolation_active: Vec::new(),
        isolation_missing: vec!["all (legacy worker)".into()],
        isolation_mode: "none".into(),
        token_id: Some(token_id.to_string()),
        last_seen_ms: now_ms(),
    }
}

/// `POST /api/workers/register`.
pub async fn register(hub: &Arc<Hub>, mut req: Req) -> ApiResult<Response> {
    let cred = worker(hub, &req).await?;
    let body: LegacyRegister = read_json(&mut req, hub.config.max_json_bytes).await?;
    claim_identity(hub, &cred, &body.worker_id).await?;
    let rec = record(&body, &cred.token_id());
    hub.store.put_worker(&rec).await?;
    hub.store.sync().await?;
    hub.dispatch
        .legacy_seen(Some(rec), &body.worker_id, &cred.token_id());
    if let Some(v) = hub
        .dispatch
        .view(&body.worker_id, hub.config.legacy_offline_secs * 1000)
    {
        hub.emit(None, cmdx_proto::client::ServerMsg::Worker(v));
    }
    Ok(json(&serde_json::json!({
        "success": true,
        "workerId": body.worker_id,
        "message": "worker registered",
    })))
}

/// `POST /api/workers/heartbeat`.
pub async fn heartbeat(hub: &Arc<Hub>, mut req: Req) -> ApiResult<Response> {
    let cred = worker(hub, &req).await?;
    let body: LegacyHeartbeat = read_json(&mut req, hub.config.max_json_bytes).await?;
    claim_identity(hub, &cred, &body.worker_id).await?;
    if !hub
        .dispatch
        .legacy_seen(None, &body.worker_id, &cred.token_id())
    {
        return Err(ApiError::not_found("worker not registered"));
    }
    Ok(json(&serde_json::json!({"success": true})))
}

fn absolute_url(hub: &Hub, req: &Req, path: &str) -> String {
    if let Some(base) = &hub.config.public_url {
        return format!("{}{path}", base.trim_end_matches('/'));
    }
    // Behind a trusted proxy, believe the scheme it reports.
    let peer_is_proxy = req.peer.is_some_and(|p| hub.auth.is_trusted_proxy(p));
    let scheme = match req
        .headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
    {
        Some("https") if peer_is_proxy => "https",
        _ if hub.tls.is_some() => "https",
        _ => "http",
    };
    match req.headers.get("host").and_then(|h| h.to_str().ok()) {
        Some(host) => format!("{scheme}://{host}{path}"),
        None => path.to_string(),
    }
}

/// `GET /api/jobs/get-job?workerId=`: 200 with a job, or 202 with none.
pub async fn get_job(hub: &Arc<Hub>, req: Req) -> ApiResult<Response> {
    let cred = worker(hub, &req).await?;
    let worker_id = req
        .param("workerId")
        .ok_or_else(|| ApiError::bad_request("workerId query parameter required"))?;
    claim_identity(hub, &cred, &worker_id).await?;
    if !hub.dispatch.legacy_seen(None, &worker_id, &cred.token_id()) {
        // Not registered (e.g. the hub restarted): register it with what we know.
        let body = LegacyRegister {
            worker_id: worker_id.clone(),
            ..LegacyRegister::default()
        };
        let rec = record(&body, &cred.token_id());
        hub.store.put_worker(&rec).await?;
        hub.dispatch
            .legacy_seen(Some(rec), &worker_id, &cred.token_id());
    }
    let Some(job) = claim_legacy(hub, &worker_id, &cred.token_id()).await? else {
        return Ok(json_status(
            &LegacyGetJob {
                success: false,
                job: None,
                job_id: None,
                command: None,
                file_url: None,
                timeout: None,
            },
            StatusCode::ACCEPTED,
        ));
    };
    // The worker id travels in the URL: a worker admitted by CIDR alone downloads with no
    // credential that names it, and a JWT-carrying one is checked against it.
    let file_url = job.file.as_ref().map(|f| {
        let worker: String = form_urlencoded::byte_serialize(worker_id.as_bytes()).collect();
        absolute_url(
            hub,
            &req,
            &format!(
                "{}?workerId={worker}",
                crate::urls::download_path(&f.file_id)
            ),
        )
    });
    let timeout_ms = job.timeout_secs * 1000;
    Ok(json(&LegacyGetJob {
        success: true,
        job: Some(LegacyJob {
            job_id: job.id.clone(),
            command: job.command.clone(),
            file_url: file_url.clone(),
            filename: job.file.as_ref().map(|f| f.filename.clone()),
            timeout_ms,
        }),
        job_id: Some(job.id.clone()),
        command: Some(job.command.clone()),
        file_url,
        timeout: Some(timeout_ms),
    }))
}

/// The job a legacy worker reports on, with the worker id it is bound to.
async fn held_job(
    hub: &Hub,
    cred: &WorkerCred,
    job_id: &str,
    worker_id: Option<&str>,
) -> ApiResult<(JobRecord, String)> {
    let job = hub
        .store
        .get_job(job_id)
        .await?
        .ok_or_else(|| ApiError::not_found("job not found"))?;
    let holder = job.worker_id.clone().unwrap_or_default();
    let worker_id = worker_id.map(str::to_string).unwrap_or(holder);
    bind(cred, &worker_id)?;
    Ok((job, worker_id))
}

/// `POST /api/jobs/stream-output {jobId, data, type}`: appended to the live log; ignored once the
/// job is terminal (the original agent sends stragglers after the result).
pub async fn stream_output(hub: &Arc<Hub>, mut req: Req) -> ApiResult<Response> {
    let cred = worker(hub, &req).await?;
    let body: LegacyStreamOutput = read_json(&mut req, hub.config.max_json_bytes).await?;
    let (job, worker_id) = held_job(hub, &cred, &body.job_id, body.worker_id.as_deref()).await?;
    if job.status.is_terminal() {
        return Ok(json(&serde_json::json!({"success": true, "ignored": true})));
    }
    let stream = match body.kind.as_deref() {
        Some("stderr") => StreamKind::Stderr,
        _ => StreamKind::Stdout,
    };
    lifecycle::append_legacy_output(
        hub,
        &worker_id,
        &cred.token_id(),
        &job.id,
        stream,
        body.data.into_bytes(),
    )
    .await?;
    Ok(json(&serde_json::json!({"success": true})))
}

/// `GET /api/jobs/check-cancel?jobId=`.
pub async fn check_cancel(hub: &Arc<Hub>, req: Req) -> ApiResult<Response> {
    let cred = worker(hub, &req).await?;
    let job_id = req
        .param("jobId")
        .ok_or_else(|| ApiError::bad_request("jobId query parameter required"))?;
    let worker_id = req.param("workerId");
    let (job, worker) = held_job(hub, &cred, &job_id, worker_id.as_deref()).await?;
    // Only the worker holding the job (with the token it claimed it with) may ask.
    if !job.held_by(&worker, job.attempt, &cred.token_id()) {
        return Err(ApiError::not_found("job not found"));
    }
    Ok(json(&LegacyCheckCancel {
        success: true,
        cancel_requested: job.cancel_requested || job.status == cmdx_proto::JobStatus::Cancelled,
    }))
}

/// Makes the stored log hold exactly the result's `stdout`/`stderr`: streamed bytes that are a
/// prefix are kept and the rest appended; a log that disagrees (out-of-order stragglers) is
/// replaced.
async fn reconcile_output(
    hub: &Hub,
    worker_id: &str,
    token_id: &str,
    job: &JobRecord,
    stdout: Option<String>,
    stderr: Option<String>,
) -> ApiResult<()> {
    let (got_out, got_err) =
        crate::relay::read_split(hub.store.as_ref(), &job.id, usize::MAX).await?;
    // An empty field means "nothing beyond what was streamed" (the original agent sends empty
    // strings when it streamed everything); only non-empty results are authoritative.
    let want_out = stdout.filter(|s| !s.is_empty()).map(String::into_bytes);
    let want_err = stderr.filter(|s| !s.is_empty()).map(String::into_bytes);
    let prefix_ok =
        |got: &[u8], want: &Option<Vec<u8>>| want.as_ref().is_none_or(|w| w.starts_with(got));
    if !(prefix_ok(&got_out, &want_out) && prefix_ok(&got_err, &want_err)) {
        // Replace: drop what was streamed, write the result.
        lifecycle::clear_legacy_output(hub, worker_id, token_id, &job.id).await?;
        for (stream, want) in [
            (StreamKind::Stdout, want_out),
            (StreamKind::Stderr, want_err),
        ] {
            if let Some(w) = want {
                for piece in w.chunks(32 * 1024) {
                    lifecycle::append_legacy_output(
                        hub,
                        worker_id,
                        token_id,
                        &job.id,
                        stream,
                        piece.to_vec(),
                    )
                    .await?;
                }
            }
        }
        return Ok(());
    }
    for (stream, got, want) in [
        (StreamKind::Stdout, got_out, want_out),
        (StreamKind::Stderr, got_err, want_err),
    ] {
        if let Some(w) = want {
            for piece in w[got.len()..].chunks(32 * 1024) {
                lifecycle::append_legacy_output(
                    hub,
                    worker_id,
                    token_id,
                    &job.id,
                    stream,
                    piece.to_vec(),
                )
                .await?;
            }
        }
    }
    Ok(())
}

/// `POST /api/jobs/submit-result {jobId, workerId, stdout, stderr, exitCode}`.
pub async fn submit_result(hub: &Arc<Hub>, mut req: Req) -> ApiResult<Response> {
    let cred = worker(hub, &req).await?;
    let body: LegacySubmitResult = read_json(&mut req, hub.config.max_legacy_result_bytes).await?;
    let (job, worker_id) = held_job(hub, &cred, &body.job_id, body.worker_id.as_deref()).await?;
    let token_id = cred.token_id();
    let mut artifacts_error = None;
    if job.held_by(&worker_id, job.attempt, &token_id) {
        reconcile_output(hub, &worker_id, &token_id, &job, body.stdout, body.stderr).await?;
        if let Some(zip) = body.result_zip_base64.as_deref().filter(|z| !z.is_empty()) {
            let stored =
                super::artifacts::store_legacy_zip(hub, &job, &worker_id, &token_id, zip).await;
            if let Err(e) = stored {
                tracing::warn!(job_id = %job.id, error = %e, "legacy result ZIP not kept");
                artifacts_error = Some(e);
            }
        }
    }
    let exit = body.exit_code.unwrap_or(-1);
    let outcome = Outcome {
        artifacts_error,
        exit_code: Some(exit),
        cancelled: job.cancel_requested,
        duration_ms: job
            .started_ms
            .or(job.assigned_ms)
            .map(|s| now_ms().saturating_sub(s))
            .unwrap_or(0),
        ..Outcome::default()
    };
    let done = lifecycle::finish(
        hub,
        &worker_id,
        &token_id,
        &job.id,
        FinishReport {
            attempt: None,
            chunks: None,
            outcome,
        },
    )
    .await?;
    Ok(json(
        &serde_json::json!({"success": true, "jobId": done.id, "status": done.status}),
    ))
}

/// `PUT /api/jobs/submit-result {jobId, workerId, errorMessage}`: the worker could not run it.
pub async fn submit_error(hub: &Arc<Hub>, mut req: Req) -> ApiResult<Response> {
    let cred = worker(hub, &req).await?;
    let body: LegacySubmitError = read_json(&mut req, hub.config.max_legacy_result_bytes).await?;
    let (job, worker_id) = held_job(hub, &cred, &body.job_id, body.worker_id.as_deref()).await?;
    let outcome = Outcome {
        failure: Some(FailureKind::Setup),
        error: Some(
            body.error_message
                .unwrap_or_else(|| "the worker reported an error".into())
                .chars()
                .take(4096)
                .collect(),
        ),
        ..Outcome::default()
    };
    let done = lifecycle::finish(
        hub,
        &worker_id,
        &cred.token_id(),
        &job.id,
        FinishReport {
            attempt: None,
            chunks: None,
            outcome,
        },
    )
    .await?;
    Ok(json(
        &serde_json::json!({"success": true, "jobId": done.id, "status": done.status}),
    ))
}

/// `POST /api/jobs/create {command, fileUrl, filename, timeoutMs}` (legacy submitters).
pub async fn create(hub: &Arc<Hub>, mut req: Req) -> ApiResult<Response> {
    let caller = user(hub, &req)?;
    let body: LegacyCreateJob = read_json(&mut req, hub.config.max_json_bytes).await?;
    let submit = SubmitRequest {
        command: body.command,
        file_url: body.file_url,
        timeout: body.timeout_ms.map(|ms| ms.div_ceil(1000).max(1)),
        ..SubmitRequest::default()
    };
    let job_id = submit_legacy(hub, &caller, submit).await?;
    Ok(json_status(
        &serde_json::json!({"success": true, "jobId": job_id}),
        StatusCode::CREATED,
    ))
}

/// `POST /api/execute` (multipart `file`, `commands`, `mode=distributed`).
pub async fn execute(hub: &Arc<Hub>, mut req: Req) -> ApiResult<Response> {
    let caller = user(hub, &req)?;
    let (file, fields) = super::files::receive(hub, &mut req, &caller.user_id).await?;
    let commands = fields
        .get("commands")
        .or_else(|| fields.get("command"))
        .cloned()
        .unwrap_or_default();
    if let Some(mode) = fields.get("mode")
        && mode != "distributed"
    {
        return Err(ApiError::bad_request(format!(
            "mode {mode} is not supported; use distributed"
        )));
    }
    let timeout = fields
        .get("timeoutMs")
        .and_then(|t| t.parse::<u64>().ok())
        .map(|ms| ms.div_ceil(1000).max(1));
    let submit = SubmitRequest {
        command: commands,
        file_id: Some(file.id.clone()),
        timeout,
        ..SubmitRequest::default()
    };
    let job_id = submit_legacy(hub, &caller, submit).await?;
    Ok(json_status(
        &serde_json::json!({"success": true, "jobId": job_id, "fileId": file.id}),
        StatusCode::CREATED,
    ))
}
