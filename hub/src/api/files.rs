//! Uploads (streamed to disk, hashed, size-capped, stored once per sha256), downloads (owner,
//! admin, or the worker holding a job that uses the file) and listings.

use std::collections::HashMap;
use std::sync::Arc;

use cmdx_proto::rest::{FileList, FileView};
use futures_util::StreamExt;
use warp::http::StatusCode;
use warp::reply::Response;

use super::{Req, json, json_status, user};
use crate::Hub;
use crate::blobs;
use crate::error::{ApiError, ApiResult};
use crate::store::{FileRecord, new_id, now_ms};
use crate::time::rfc3339;

fn view(f: &FileRecord) -> FileView {
    FileView {
        file_id: f.id.clone(),
        file_url: crate::urls::download_path(&f.id),
        filename: f.filename.clone(),
        size: f.size,
        sha256: f.sha256.clone(),
        created_at: Some(rfc3339(f.created_ms)),
    }
}

fn clean_name(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or("");
    let cleaned: String = base.chars().filter(|c| !c.is_control()).take(200).collect();
    if cleaned.is_empty() || cleaned == "." || cleaned == ".." {
        "upload.zip".to_string()
    } else {
        cleaned
    }
}

/// An upload arriving over HTTP: a blob spool under the request's size limit and minimum
/// speed.
pub(super) struct Spool {
    blob: blobs::Spool,
    limit: u64,
    started: std::time::Instant,
}

impl Spool {
    pub(super) async fn new(hub: &Hub, limit: u64) -> ApiResult<Spool> {
        let blob = hub.blobs.spool().await.map_err(ApiError::internal)?;
        Ok(Spool {
            blob,
            limit,
            started: std::time::Instant::now(),
        })
    }

    pub(super) async fn write(&mut self, data: &[u8]) -> ApiResult<()> {
        let size = self.blob.size() + data.len() as u64;
        if size > self.limit {
            return Err(ApiError::too_large(format!(
                "upload exceeds the limit of {} bytes",
                self.limit
            )));
        }
        // After 30 s an upload must average at least 16 KiB/s (trickled uploads hold a
        // connection and a temp file).
        let secs = self.started.elapsed().as_secs();
        if secs > 30 && size < secs * 16 * 1024 {
            return Err(ApiError::too_slow(format!(
                "upload too slow: {size} bytes in {secs} s"
            )));
        }
        self.blob.write(data).await.map_err(ApiError::internal)
    }

    /// The temp file (complete once [`Spool::flush`] returned).
    pub(super) fn path(&self) -> &std::path::Path {
        self.blob.path()
    }

    /// Makes everything written durable in the temp file.
    pub(super) async fn flush(&mut self) -> ApiResult<()> {
        self.blob.flush().await.map_err(ApiError::internal)
    }

    /// Stores the content as a blob; returns (sha256, size).
    pub(super) async fn finish(self, hub: &Hub) -> ApiResult<(String, u64)> {
        hub.blobs
            .commit(self.blob)
            .await
            .map_err(ApiError::internal)
    }

    pub(super) async fn discard(self) {
        self.blob.discard().await;
    }
}

/// `POST /api/files/upload`: multipart field `file`, or a raw `application/zip` body.
pub async fn upload(hub: &Arc<Hub>, mut req: Req) -> ApiResult<Response> {
    let caller = user(hub, &req)?;
    let (rec, _) = receive(hub, &mut req, &caller.user_id).await?;
    Ok(json_status(&view(&rec), StatusCode::CREATED))
}

/// Receives an upload for `owner`; returns the durable file record and the other (text)
/// multipart fields.
pub async fn receive(
    hub: &Hub,
    req: &mut Req,
    owner: &str,
) -> ApiResult<(FileRecord, HashMap<String, String>)> {
    let (spool, filename, fields) = receive_spool(hub, req, hub.config.max_upload_bytes).await?;
    let (sha256, size) = spool.finish(hub).await?;
    let rec = FileRecord {
        v: 1,
        id: new_id(),
        owner: owner.to_string(),
        filename,
        size,
        sha256,
        created_ms: now_ms(),
        last_used_ms: None,
        artifacts_of: None,
    };
    hub.store.put_file(&rec).await?;
    hub.store.sync().await?;
    Ok((rec, fields))
}

/// Receives a multipart (`file` plus text fields) or raw ZIP body of at most `limit` bytes into
/// a spool; returns it with the file name and the text fields.
pub(super) async fn receive_spool(
    hub: &Hub,
    req: &mut Req,
    limit: u64,
) -> ApiResult<(Spool, String, HashMap<String, String>)> {
    if let Some(len) = req
        .headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        // Multipart framing adds a little; the part itself is counted exactly below.
        if len > limit + 64 * 1024 {
            return Err(ApiError::too_large(format!(
                "upload of {len} bytes exceeds the limit of {limit} bytes"
            )));
        }
    }
    let ctype = req
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let mut spool = Spool::new(hub, limit).await?;
    let mut fields = HashMap::new();
    let result = if ctype.starts_with("multipart/form-data") {
        receive_multipart(req, &ctype, &mut spool, &mut fields).await
    } else if ctype.starts_with("application/zip") || ctype.starts_with("application/octet-stream")
    {
        let name = req.param("filename").unwrap_or_else(|| "upload.zip".into());
        receive_raw(req, &mut spool).await.map(|_| name)
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send multipart/form-data with a 'file' field, or an application/zip body",
        ))
    };
    let filename = match result {
        Ok(n) => clean_name(&n),
        Err(e) => {
            spool.discard().await;
            return Err(e);
        }
    };
    Ok((spool, filename, fields))
}

async fn receive_raw(req: &mut Req, spool: &mut Spool) -> ApiResult<()> {
    let mut body = req.take_body();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request(format!("reading body: {e}")))?;
        spool.write(&chunk).await?;
    }
    Ok(())
}

async fn receive_multipart(
    req: &mut Req,
    ctype: &str,
    spool: &mut Spool,
    fields: &mut HashMap<String, String>,
) -> ApiResult<String> {
    let boundary = multer::parse_boundary(ctype)
        .map_err(|e| ApiError::bad_request(format!("bad multipart content type: {e}")))?;
    let body = req.take_body();
    let mut mp = multer::Multipart::new(body, boundary);
    let mut name = None;
    while let Some(mut field) = mp
        .next_field()
        .await
        .map_err(|e| ApiError::bad_request(format!("bad multipart body: {e}")))?
    {
        if field.name() != Some("file") {
            let key = field.name().unwrap_or("").to_string();
            let mut text = Vec::new();
            while let Some(chunk) = field
                .chunk()
                .await
                .map_err(|e| ApiError::bad_request(format!("bad multipart body: {e}")))?
            {
                if text.len() + chunk.len() > 256 * 1024 || fields.len() >= 32 {
                    return Err(ApiError::too_large("multipart text fields are too large"));
                }
                text.extend_from_slice(&chunk);
            }
            fields.insert(key, String::from_utf8_lossy(&text).into_owned());
            continue;
        }
        if name.is_some() {
            return Err(ApiError::bad_request("only one 'file' field is accepted"));
        }
        name = Some(field.file_name().unwrap_or("upload.zip").to_string());
        while let Some(chunk) = field
            .chunk()
            .await
            .map_err(|e| ApiError::bad_request(format!("bad multipart body: {e}")))?
        {
            spool.write(&chunk).await?;
        }
    }
    name.ok_or_else(|| ApiError::bad_request("multipart body has no 'file' field"))
}

/// `GET /api/files/download/{id}`.
pub async fn download(hub: &Arc<Hub>, req: Req, id: &str) -> ApiResult<Response> {
    let file = hub.store.get_file(id).await?;
    let is_worker = req.headers.contains_key(cmdx_proto::WORKER_TOKEN_HEADER)
        || crate::auth::bearer(&req.headers)
            .is_some_and(|t| t.starts_with(crate::auth::WORKER_TOKEN_PREFIX))
        || req.headers.contains_key("x-worker-id");
    let file = if is_worker {
        let cred = super::worker(hub, &req).await?;
        let worker_id = super::worker_id(&req, &cred);
        let file = file.ok_or_else(|| ApiError::not_found("file not found"))?;
        let allowed = match worker_id {
            Some(w) => worker_holds_file(hub, &w, &cred.token_id(), &file.id).await?,
            None => false,
        };
        if !allowed {
            return Err(ApiError::not_found("file not found"));
        }
        file
    } else {
        let caller = user(hub, &req)?;
        file.filter(|f| caller.can_see(&f.owner))
            .ok_or_else(|| ApiError::not_found("file not found"))?
    };
    let f = hub
        .blobs
        .open(&file.sha256)
        .await
        .map_err(|_| ApiError::not_found("file content missing"))?;
    let stream = tokio_util::io::ReaderStream::new(f);
    let mut resp = warp::reply::Reply::into_response(warp::reply::stream(stream));
    let h = resp.headers_mut();
    h.insert(
        "content-type",
        warp::http::HeaderValue::from_static("application/zip"),
    );
    if let Ok(v) = warp::http::HeaderValue::from_str(&file.size.to_string()) {
        h.insert("content-length", v);
    }
    if let Ok(v) = warp::http::HeaderValue::from_str(&format!(
        "attachment; filename=\"{}\"",
        file.filename.replace(['"', '\\'], "_")
    )) {
        h.insert("content-disposition", v);
    }
    if let Ok(v) = warp::http::HeaderValue::from_str(&file.sha256) {
        h.insert("x-content-sha256", v);
    }
    Ok(resp)
}

/// Whether worker `w` (with token `token_id`) holds a job that uses file `file_id`.
async fn worker_holds_file(hub: &Hub, w: &str, token_id: &str, file_id: &str) -> ApiResult<bool> {
    for job_id in hub.dispatch.held(w) {
        if let Some(job) = hub.store.get_job(&job_id).await?
            && job.held_by(w, job.attempt, token_id)
            && job.file.as_ref().is_some_and(|f| f.file_id == file_id)
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// `GET /api/files/list`: the caller's files.
pub async fn list(hub: &Arc<Hub>, req: Req) -> ApiResult<Response> {
    let caller = user(hub, &req)?;
    let files = hub.store.list_files(&caller.user_id).await?;
    Ok(json(&FileList {
        // A job's artifact ZIP is listed with its job, not among uploads.
        files: files
            .iter()
            .filter(|f| f.artifacts_of.is_none())
            .map(view)
            .collect(),
    }))
}
