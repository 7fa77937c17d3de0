//! Job routes for users: submit, status, list, cancel, raw output.

use std::sync::Arc;

use cmdx_proto::rest::{
    CancelRequest, JobList, ResizeRequest, ResizeResponse, SubmitRequest, SubmitResponse,
};
use cmdx_proto::{JobStatus, WindowSize};
use warp::http::StatusCode;
use warp::reply::Response;

use super::{Req, json, json_status, read_json, user};
use crate::Hub;
use crate::error::{ApiError, ApiResult};
use crate::jobs;
use crate::store::JobQuery;

/// `POST /api/jobs/submit` -> 201 `{jobId}` once durable.
pub async fn submit(hub: &Arc<Hub>, mut req: Req) -> ApiResult<Response> {
    let caller = user(hub, &req)?;
    let body: SubmitRequest = read_json(&mut req, hub.config.max_json_bytes).await?;
    let job_id = jobs::submit::submit(hub, &caller, body).await?;
    Ok(json_status(&SubmitResponse { job_id }, StatusCode::CREATED))
}

/// `POST /api/jobs/{id}/rerun` -> 201 `{jobId}` of a new job with the same command, file, tags,
/// env, timeout, attempts and artifact globs, once durable.
pub async fn rerun(hub: &Arc<Hub>, req: Req, id: &str) -> ApiResult<Response> {
    let caller = user(hub, &req)?;
    let job_id = jobs::submit::rerun(hub, &caller, id).await?;
    Ok(json_status(&SubmitResponse { job_id }, StatusCode::CREATED))
}

/// `GET /api/jobs/status?jobId=`.
pub async fn status(hub: &Arc<Hub>, req: Req) -> ApiResult<Response> {
    let caller = user(hub, &req)?;
    let id = req
        .param("jobId")
        .ok_or_else(|| ApiError::bad_request("jobId query parameter required"))?;
    let with_output = match req.param("output").as_deref() {
        None | Some("true") => true,
        Some("false") => false,
        Some(_) => return Err(ApiError::bad_request("output must be true or false")),
    };
    let job = jobs::views::visible_job(hub, &caller, &id).await?;
    Ok(json(&jobs::views::view(hub, &job, with_output).await?))
}

/// `GET /api/jobs/list?status=&limit=&cursor=&q=`: newest first.
pub async fn list(hub: &Arc<Hub>, req: Req) -> ApiResult<Response> {
    let caller = user(hub, &req)?;
    let status = match req.param("status").filter(|s| !s.is_empty()) {
        Some(s) => Some(
            JobStatus::parse(&s)
                .ok_or_else(|| ApiError::bad_request(format!("unknown status {s}")))?,
        ),
        None => None,
    };
    let limit = page_limit(&req, 50)?;
    let cursor = req.param("cursor").filter(|c| !c.is_empty());
    let q = req
        .param("q")
        .filter(|q| !q.is_empty())
        .map(|q| q.to_lowercase());
    let all = caller.is_admin() && req.param("all").as_deref() != Some("false");
    let filter = move |j: &crate::store::JobRecord| {
        status.is_none_or(|s| j.status == s)
            && q.as_ref()
                .is_none_or(|q| j.command.to_lowercase().contains(q.as_str()))
    };
    let jobs = hub
        .store
        .list_jobs(JobQuery {
            owner: if all { None } else { Some(&caller.user_id) },
            before: cursor.as_deref(),
            limit: limit + 1,
            filter: &filter,
            max_scan: 200_000,
        })
        .await?;
    let more = jobs.len() > limit;
    let page: Vec<_> = jobs.iter().take(limit).map(jobs::views::summary).collect();
    let next_cursor = if more {
        page.last().map(|j| j.job_id.clone())
    } else {
        None
    };
    Ok(json(&JobList {
        count: page.len(),
        jobs: page,
        next_cursor,
    }))
}

/// The `limit` query parameter of a paged list: 1 to 1000, `default` when absent.
fn page_limit(req: &Req, default: usize) -> ApiResult<usize> {
    match req.param("limit") {
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=1000).contains(l))
            .ok_or_else(|| ApiError::bad_request("limit must be 1..=1000")),
        None => Ok(default),
    }
}

/// `POST /api/jobs/cancel {jobId}`.
pub async fn cancel(hub: &Arc<Hub>, mut req: Req) -> ApiResult<Response> {
    let caller = user(hub, &req)?;
    let body: CancelRequest = read_json(&mut req, hub.config.max_json_bytes).await?;
    let job = jobs::lifecycle::cancel(hub, &caller, &body.job_id).await?;
    Ok(json(&serde_json::json!({
        "success": true,
        "jobId": job.id,
        "status": job.status,
        "cancelRequested": job.cancel_requested,
    })))
}

/// `POST /api/jobs/resize {jobId, cols, rows}`: a new window size for the running job's
/// terminal, sent to its agent.
pub async fn resize(hub: &Arc<Hub>, mut req: Req) -> ApiResult<Response> {
    let caller = user(hub, &req)?;
    let body: ResizeRequest = read_json(&mut req, hub.config.max_json_bytes).await?;
    // A side beyond u16 is out of range like 0: the lifecycle's refusal says the range.
    let side = |n: u32| u16::try_from(n).unwrap_or(0);
    let size = WindowSize {
        cols: side(body.cols),
        rows: side(body.rows),
    };
    let job = jobs::lifecycle::resize(hub, &caller, &body.job_id, size).await?;
    let tty = job.tty.map_or(size, |t| WindowSize {
        cols: t.cols,
        rows: t.rows,
    });
    Ok(json(&ResizeResponse {
        success: true,
        job_id: job.id,
        tty_size: tty,
    }))
}

/// `GET /api/jobs/{id}/output?offset=N&limit=M&since=T`: raw bytes of the combined log (from
/// the first chunk stored at or after the RFC 3339 time `T`, if given and later). The
/// `x-output-offset` header says where the bytes start (later than asked when the cap dropped
/// the head), `x-output-end` where they end (at most where the stored log ends now). The body
/// streams from the store a page at a time as the client reads it, with its `Content-Length`.
pub async fn output(hub: &Arc<Hub>, req: Req, id: &str) -> ApiResult<Response> {
    let caller = user(hub, &req)?;
    let job = jobs::views::visible_job(hub, &caller, id).await?;
    let offset = match req.param("offset") {
        Some(o) => o
            .parse::<u64>()
            .map_err(|_| ApiError::bad_request("offset must be a byte count"))?,
        None => 0,
    };
    let since_ms = match req.param("since").filter(|s| !s.is_empty()) {
        Some(s) => Some(
            humantime::parse_rfc3339_weak(&s)
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .ok_or_else(|| ApiError::bad_request("since must be an RFC 3339 time"))?
                .as_millis() as u64,
        ),
        None => None,
    };
    let limit = match req.param("limit") {
        Some(l) => l
            .parse::<usize>()
            .map_err(|_| ApiError::bad_request("limit must be a byte count"))?,
        None => hub.config.output_cap_bytes as usize,
    }
    .min(hub.config.output_cap_bytes as usize + (1 << 20));
    let offset = match since_ms {
        Some(ms) => offset.max(crate::relay::offset_since(hub.store.as_ref(), &job.id, ms).await?),
        None => offset,
    };
    let (start, end, idx) =
        crate::relay::raw_bounds(hub.store.as_ref(), &job.id, offset, limit as u64).await?;
    let mut resp = match idx {
        Some(idx) => warp::reply::Reply::into_response(warp::reply::stream(
            crate::relay::raw_stream(hub.store.clone(), job.id.clone(), idx, start, end),
        )),
        None => Response::new(Vec::<u8>::new().into()),
    };
    let h = resp.headers_mut();
    h.insert(
        "content-type",
        warp::http::HeaderValue::from_static("application/octet-stream"),
    );
    for (k, v) in [
        ("content-length", (end - start).to_string()),
        ("x-output-offset", start.to_string()),
        ("x-output-end", end.to_string()),
        ("x-job-status", job.status.as_str().to_string()),
    ] {
        if let Ok(v) = warp::http::HeaderValue::from_str(&v) {
            h.insert(k, v);
        }
    }
    Ok(resp)
}

/// `GET /api/jobs/{id}/output/search?q=TEXT&cursor=LINE:OFFSET&limit=N&case=sensitive`: one
/// page of a literal search over the whole stored log (see `relay::search`), with the same
/// visibility as the log itself.
pub async fn search_output(hub: &Arc<Hub>, req: Req, id: &str) -> ApiResult<Response> {
    use crate::relay::search;
    let caller = user(hub, &req)?;
    let q = req.param("q").unwrap_or_default();
    if q.is_empty() || q.len() > search::MAX_QUERY {
        return Err(ApiError::bad_request(format!(
            "q must be 1 to {} bytes of text",
            search::MAX_QUERY
        )));
    }
    let case_sensitive = match req.param("case").as_deref() {
        None | Some("insensitive") => false,
        Some("sensitive") => true,
        Some(_) => {
            return Err(ApiError::bad_request(
                "case must be sensitive or insensitive",
            ));
        }
    };
    let limit = page_limit(&req, 100)?;
    let from = match req.param("cursor").filter(|c| !c.is_empty()) {
        Some(c) => Some(search::Cursor::parse(&c).ok_or_else(|| {
            ApiError::bad_request("cursor must be LINE:OFFSET, as the last page's next")
        })?),
        None => None,
    };
    let query = search::Query::new(&q, case_sensitive, limit)
        .ok_or_else(|| ApiError::bad_request("q must not be empty"))?;
    let job = jobs::views::visible_job(hub, &caller, id).await?;
    match search::search(hub.store.as_ref(), &job.id, &query, from).await? {
        Ok(page) => Ok(json(&page)),
        Err(search::SearchEnd::CursorGone) => Err(ApiError::conflict(
            "the output cap dropped that part of the log meanwhile: search again from the start",
        )),
    }
}
