//! Job artifacts: the agent's upload (bound to its attempt), the ZIP and single-file downloads
//! (owner or admin; anyone else gets 404), and the legacy `resultZipBase64`.

use std::sync::Arc;

use cmdx_proto::rest::{ArtifactList, ArtifactManifest, ArtifactView};
use warp::http::HeaderValue;
use warp::reply::Response;

use super::files::{Spool, receive_spool};
use super::{Req, json, user, worker, worker_id};
use crate::Hub;
use crate::artifacts::{Inspection, MAX_SKIPPED_LISTED, inspect_zip};
use crate::error::{ApiError, ApiResult};
use crate::jobs;
use crate::store::{ArtifactsRecord, FileRecord, JobRecord, new_id, now_ms};

/// ZIP framing allowed on top of the artifact byte cap: local and central headers and names.
fn zip_overhead(max_files: u32) -> u64 {
    u64::from(max_files) * 1024 + (1 << 20)
}

/// `PUT /api/jobs/{id}/artifacts?attempt=N`: multipart `manifest` (JSON
/// [`ArtifactManifest`]) and `file` (the ZIP), from the worker holding attempt N.
pub async fn upload(hub: &Arc<Hub>, mut req: Req, job_id: &str) -> ApiResult<Response> {
    let cred = worker(hub, &req).await?;
    let worker_id = worker_id(&req, &cred)
        .ok_or_else(|| ApiError::bad_request("x-worker-id header required"))?;
    let attempt: u32 = req
        .param("attempt")
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| ApiError::bad_request("attempt query parameter required"))?;
    let token_id = cred.token_id();
    let job = hub
        .store
        .get_job(job_id)
        .await?
        .ok_or_else(|| ApiError::not_found("job not found"))?;
    jobs::check_current(&job, &worker_id, &token_id, attempt)?;
    if job.artifact_globs.is_empty() {
        return Err(ApiError::conflict("the job asked for no artifacts"));
    }
    let (max_bytes, max_files) = (hub.config.max_artifact_bytes, hub.config.max_artifact_files);
    let limit = max_bytes + zip_overhead(max_files);
    let (spool, _, fields) = receive_spool(hub, &mut req, limit).await?;
    let manifest: ArtifactManifest = match fields.get("manifest") {
        Some(m) => match serde_json::from_str(m) {
            Ok(m) => m,
            Err(e) => {
                spool.discard().await;
                return Err(ApiError::bad_request(format!("bad manifest: {e}")));
            }
        },
        None => ArtifactManifest::default(),
    };
    let (spool, found) = inspected(spool, max_bytes, max_files, true).await?;
    let skipped: Vec<(String, String)> = manifest
        .skipped
        .into_iter()
        .take(MAX_SKIPPED_LISTED)
        .map(|s| (clip(&s.path, 512), clip(&s.reason, 256)))
        .collect();
    let skipped_total = manifest.skipped_total.max(skipped.len() as u64);
    let job = store(
        hub,
        &job,
        spool,
        found,
        skipped,
        skipped_total,
        &worker_id,
        &token_id,
    )
    .await?;
    let list = job
        .current_artifacts()
        .map(|a| a.files.iter().map(view).collect())
        .unwrap_or_default();
    Ok(json(&ArtifactList { artifacts: list }))
}

/// Stores the legacy `resultZipBase64` of the current attempt of `job` as its artifacts.
/// Returns why it could not, for the job's `artifactsError`.
pub async fn store_legacy_zip(
    hub: &Hub,
    job: &JobRecord,
    worker_id: &str,
    token_id: &str,
    zip_base64: &str,
) -> Result<(), String> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(zip_base64.trim())
        .map_err(|e| format!("resultZipBase64 is not base64: {e}"))?;
    let (max_bytes, max_files) = (hub.config.max_artifact_bytes, hub.config.max_artifact_files);
    let mut spool = Spool::new(hub, max_bytes + zip_overhead(max_files))
        .await
        .map_err(|e| e.message)?;
    if let Err(e) = spool.write(&bytes).await {
        spool.discard().await;
        return Err(e.message);
    }
    drop(bytes);
    let (spool, found) = inspected(spool, max_bytes, max_files, false)
        .await
        .map_err(|e| e.message)?;
    let (skipped, total) = (found.skipped.clone(), found.skipped_total);
    store(hub, job, spool, found, skipped, total, worker_id, token_id)
        .await
        .map(|_| ())
        .map_err(|e| e.message)
}

/// Flushes the spool and inspects its ZIP (off the runtime); a bad ZIP is discarded with 400.
async fn inspected(
    mut spool: Spool,
    max_bytes: u64,
    max_files: u32,
    strict: bool,
) -> ApiResult<(Spool, Inspection)> {
    spool.flush().await?;
    let path = spool.path().to_path_buf();
    let found =
        tokio::task::spawn_blocking(move || inspect_zip(&path, max_bytes, max_files, strict))
            .await
            .map_err(ApiError::internal)?;
    match found {
        Ok(found) => Ok((spool, found)),
        Err(e) => {
            spool.discard().await;
            Err(ApiError::bad_request(format!("artifact ZIP rejected: {e}")))
        }
    }
}

/// Moves the ZIP to the blob store, records it as a file of the job's owner and binds it to
/// the job (fenced on the attempt), durably.
#[expect(
    clippy::too_many_arguments,
    reason = "both doors pass the same fenced identity"
)]
async fn store(
    hub: &Hub,
    job: &JobRecord,
    spool: Spool,
    found: Inspection,
    skipped: Vec<(String, String)>,
    skipped_total: u64,
    worker_id: &str,
    token_id: &str,
) -> ApiResult<JobRecord> {
    let (sha256, size) = spool.finish(hub).await?;
    let file = FileRecord {
        v: 1,
        id: new_id(),
        owner: job.owner.clone(),
        filename: format!("{}-artifacts.zip", job.id),
        size,
        sha256: sha256.clone(),
        created_ms: now_ms(),
        last_used_ms: None,
        artifacts_of: Some(job.id.clone()),
    };
    hub.store.put_file(&file).await?;
    let attempt = job.attempt;
    let record = ArtifactsRecord {
        attempt,
        file_id: file.id.clone(),
        sha256,
        size,
        files: found.files,
        skipped,
        skipped_total,
    };
    // An unbound file record left by a stale upload is removed by the janitor.
    let job = jobs::update_held(hub, &job.id, worker_id, token_id, attempt, &|j| {
        j.artifacts = Some(record.clone());
    })
    .await?;
    hub.store.sync().await?;
    let a = job.artifacts.as_ref().map_or(0, |a| a.files.len());
    tracing::info!(job_id = %job.id, attempt, files = a, bytes = size, "artifacts stored");
    Ok(job)
}

fn clip(s: &str, n: usize) -> String {
    s.chars().filter(|c| !c.is_control()).take(n).collect()
}

fn view(f: &crate::store::ArtifactFile) -> ArtifactView {
    ArtifactView {
        path: f.path.clone(),
        size: f.size,
        sha256: f.sha256.clone(),
    }
}

/// The caller's job and its current artifacts, or 404.
async fn visible_artifacts(
    hub: &Hub,
    req: &Req,
    job_id: &str,
) -> ApiResult<(JobRecord, ArtifactsRecord)> {
    let caller = user(hub, req)?;
    let job = jobs::views::visible_job(hub, &caller, job_id).await?;
    let a = job
        .current_artifacts()
        .cloned()
        .ok_or_else(|| ApiError::not_found("the job has no artifacts (yet)"))?;
    Ok((job, a))
}

/// `GET /api/jobs/{id}/artifacts`: all artifacts as one ZIP.
pub async fn download_zip(hub: &Arc<Hub>, req: Req, job_id: &str) -> ApiResult<Response> {
    let (job, a) = visible_artifacts(hub, &req, job_id).await?;
    let f = hub
        .blobs
        .open(&a.sha256)
        .await
        .map_err(|_| ApiError::not_found("artifact content missing"))?;
    let stream = tokio_util::io::ReaderStream::new(f);
    let mut resp = warp::reply::Reply::into_response(warp::reply::stream(stream));
    headers(
        &mut resp,
        "application/zip",
        &format!("{}-artifacts.zip", job.id),
        a.size,
        &a.sha256,
    );
    Ok(resp)
}

/// `GET /api/jobs/{id}/artifacts/{path}`: one listed file, as an attachment.
pub async fn download_file(
    hub: &Arc<Hub>,
    req: Req,
    job_id: &str,
    path: &str,
) -> ApiResult<Response> {
    let (_, a) = visible_artifacts(hub, &req, job_id).await?;
    let entry = a
        .files
        .iter()
        .find(|f| f.path == path)
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("no artifact {path:?}")))?;
    // Uploaded through another hub of a cluster: into this hub's folder first.
    hub.blobs
        .fetch(&a.sha256)
        .await
        .map_err(ApiError::internal)?;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let (blobs, sha256) = (hub.blobs.clone(), a.sha256.clone());
    let name = entry.path.clone();
    tokio::task::spawn_blocking(move || match blobs.open_blocking(&sha256) {
        Ok(zip) => crate::artifacts::stream_entry(zip, &name, tx),
        Err(e) => {
            let _ = tx.blocking_send(Err(e));
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    let mut resp = warp::reply::Reply::into_response(warp::reply::stream(stream));
    let base = entry.path.rsplit('/').next().unwrap_or("artifact");
    headers(
        &mut resp,
        "application/octet-stream",
        base,
        entry.size,
        &entry.sha256,
    );
    Ok(resp)
}

/// Download headers. Artifacts are job-made content: always an attachment, never sniffed, so
/// an HTML artifact cannot run script on the hub's origin.
fn headers(resp: &mut Response, ctype: &'static str, filename: &str, size: u64, sha: &str) {
    let h = resp.headers_mut();
    h.insert("content-type", HeaderValue::from_static(ctype));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        "content-security-policy",
        HeaderValue::from_static("default-src 'none'; sandbox"),
    );
    let safe: String = filename
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{safe}\"")) {
        h.insert("content-disposition", v);
    }
    if let Ok(v) = HeaderValue::from_str(&size.to_string()) {
        h.insert("content-length", v);
    }
    if let Ok(v) = HeaderValue::from_str(sha) {
        h.insert("x-content-sha256", v);
    }
}
