//! Worker administration (list, tokens, drain, delete) and the agent WebSocket handshake.

use std::sync::Arc;

use cmdx_proto::rest::{
    MintTokenRequest, MintTokenResponse, WorkerList, WorkerTokenList, WorkerTokenView,
};
use warp::http::StatusCode;
use warp::reply::Response;

use super::{Req, admin, json, json_status, read_json, user, worker};
use crate::Hub;
use crate::auth::WorkerCred;
use crate::error::{ApiError, ApiResult};
use crate::store::{DrainRecord, WorkerTokenRecord, new_id, now_ms};
use crate::time::rfc3339;

/// `GET /ws/agent`: the agent protocol. Needs a minted worker token in a header.
pub async fn agent_socket(hub: &Arc<Hub>, mut req: Req) -> ApiResult<Response> {
    let cred = worker(hub, &req).await?;
    let WorkerCred::Token(token_id) = cred else {
        return Err(ApiError::forbidden("agents need a minted worker token"));
    };
    if hub.draining.load(std::sync::atomic::Ordering::SeqCst) {
        return Err(ApiError::unavailable("hub is shutting down"));
    }
    let slot = crate::ws::Sessions::reserve_agent(hub)
        .map_err(|_| ApiError::unavailable("too many open agent sockets"))?;
    let resp = crate::ws::handshake(&req.headers)?;
    let on_upgrade = req
        .upgrade
        .take()
        .ok_or_else(|| ApiError::bad_request("connection cannot be upgraded"))?;
    let hub2 = hub.clone();
    let max = hub.config.max_ws_message_bytes;
    hub.tasks.spawn(async move {
        if let Some(ws) = crate::ws::accept(on_upgrade, max, 8 * 1024).await {
            crate::ws_agent::session(hub2, ws, token_id).await;
        }
        drop(slot);
    });
    Ok(resp)
}

/// `GET /api/workers/list`: any signed-in user; job ids only for admins and the jobs' owners.
pub async fn list(hub: &Arc<Hub>, req: Req) -> ApiResult<Response> {
    let caller = user(hub, &req)?;
    let mut workers = Vec::new();
    for v in crate::cluster::worker_views(hub).await? {
        workers.push(crate::jobs::views::worker_view_for(hub, &caller, v).await);
    }
    Ok(json(&WorkerList { workers }))
}

/// Mints a worker token (used by the route and by `cmdx dev`).
pub async fn mint(
    hub: &Hub,
    created_by: &str,
    name: Option<String>,
    ttl_secs: Option<u64>,
    tags: Option<Vec<String>>,
) -> ApiResult<MintTokenResponse> {
    let ttl = ttl_secs.unwrap_or(hub.config.worker_token_ttl_secs);
    if ttl == 0 || ttl > 10 * 365 * 24 * 3600 {
        return Err(ApiError::bad_request(
            "ttlSecs must be between 1 and ten years",
        ));
    }
    if let Some(tags) = &tags {
        if tags.len() > 64 {
            return Err(ApiError::bad_request("tags: at most 64"));
        }
        if let Some(e) = tags.iter().find_map(|t| cmdx_proto::tag_error(t)) {
            return Err(ApiError::bad_request(e));
        }
    }
    let now = now_ms();
    let rec = WorkerTokenRecord {
        v: 1,
        id: new_id(),
        name,
        created_by: created_by.to_string(),
        created_ms: now,
        expires_ms: now + ttl * 1000,
        tags,
    };
    hub.store.put_worker_token(&rec).await?;
    hub.store.sync().await?;
    Ok(MintTokenResponse {
        token: hub.auth.mint_worker_token(&rec.id, rec.expires_ms),
        token_id: rec.id,
        expires_at: rfc3339(rec.expires_ms),
    })
}

/// The worker token `cmdx dev` gives its local agents, `worker_ids`, minted by admin
/// `created_by`. It is kept in `DATA/dev-agents.token` and given again on the next start while
/// it has a day left: an agent id stays with the token that enrolled it, so a new token every
/// start would find the ids taken. When a new token is minted, the tokens that enrolled those
/// ids before (an earlier run's, expiring, or from a version that did not keep it) are revoked:
/// the ids are `cmdx dev`'s own.
pub async fn local_agents_token(
    hub: &Hub,
    created_by: &str,
    worker_ids: &[String],
) -> ApiResult<String> {
    let path = hub.config.data_dir.join("dev-agents.token");
    let saved = std::fs::read_to_string(&path).unwrap_or_default();
    let saved = saved.trim();
    if let Ok(id) = hub.auth.verify_worker_token(saved)
        && let Some(rec) = hub.store.get_worker_token(&id).await?
        && rec.expires_ms > now_ms() + 24 * 3600 * 1000
    {
        return Ok(saved.to_string());
    }
    let minted = mint(hub, created_by, Some("cmdx dev".into()), None, None).await?;
    for w in worker_ids {
        if let Some(old) = hub.dispatch.bound_token(w)
            && old != minted.token_id
        {
            hub.store.delete_worker_token(&old).await?;
        }
    }
    hub.store.sync().await?;
    crate::auth::write_private(&path, minted.token.as_bytes())
        .map_err(|e| ApiError::internal(format!("{}: {e}", path.display())))?;
    Ok(minted.token)
}

/// `POST /api/workers/tokens` (admin).
pub async fn mint_token(hub: &Arc<Hub>, mut req: Req) -> ApiResult<Response> {
    let caller = admin(hub, &req).await?;
    let body: MintTokenRequest = if req
        .headers
        .get("content-length")
        .is_some_and(|v| v.as_bytes() == b"0")
    {
        MintTokenRequest::default()
    } else {
        read_json(&mut req, hub.config.max_json_bytes).await?
    };
    let resp = mint(hub, &caller.user_id, body.name, body.ttl_secs, body.tags).await?;
    Ok(json_status(&resp, StatusCode::CREATED))
}

/// `GET /api/workers/tokens` (admin): the live (unexpired, unrevoked) worker tokens, newest
/// first, with the workers enrolled with each. Never the token itself.
pub async fn list_tokens(hub: &Arc<Hub>, req: Req) -> ApiResult<Response> {
    admin(hub, &req).await?;
    let now = now_ms();
    let mut records = hub.store.list_worker_tokens().await?;
    records.retain(|t| t.expires_ms > now);
    records.sort_by(|a, b| b.created_ms.cmp(&a.created_ms).then(b.id.cmp(&a.id)));
    let tokens = records
        .into_iter()
        .map(|t| WorkerTokenView {
            workers: hub
                .dispatch
                .by_token(&t.id)
                .into_iter()
                .map(|(w, _)| w)
                .collect(),
            token_id: t.id,
            name: t.name,
            created_by: t.created_by,
            created_at: rfc3339(t.created_ms),
            expires_at: rfc3339(t.expires_ms),
            tags: t.tags,
        })
        .collect();
    Ok(json(&WorkerTokenList { tokens }))
}

/// `DELETE /api/workers/tokens/{id}` (admin): revokes a worker token. Its record goes (so every
/// later call or reconnect with it answers 401), and every live agent session enrolled with it
/// is closed now; their jobs are requeued once the reconnect grace passes without them.
pub async fn revoke_token(hub: &Arc<Hub>, req: Req, id: &str) -> ApiResult<Response> {
    let caller = admin(hub, &req).await?;
    if !hub.store.delete_worker_token(id).await? {
        return Err(ApiError::not_found("worker token not found"));
    }
    hub.store.sync().await?;
    let mut closed = Vec::new();
    for (worker_id, conn) in hub.dispatch.by_token(id) {
        if let Some(conn) = conn {
            conn.kick.cancel();
            closed.push(worker_id);
        }
    }
    hub.cluster.tell(crate::cluster::Note::Revoked {
        token_id: id.to_string(),
    });
    tracing::warn!(token_id = %id, by = %caller.email, sessions = closed.len(), "worker token revoked");
    Ok(json(&serde_json::json!({
        "success": true,
        "tokenId": id,
        "closedSessions": closed,
    })))
}

/// `POST /api/workers/{id}/drain` (admin): the worker takes no new jobs, across its
/// reconnects and the hubs' restarts, until an admin resumes it; its running jobs finish. The
/// drain is the hubs' (stored, every hub's dispatch skips the worker): the agent is not told,
/// so nothing of it has to be undone on the agent. Draining a drained worker keeps the first
/// drain's who and when.
pub async fn drain(hub: &Arc<Hub>, req: Req, id: &str) -> ApiResult<Response> {
    let caller = admin(hub, &req).await?;
    known_worker(hub, id).await?;
    let drain = hub.dispatch.drained(id).unwrap_or_else(|| DrainRecord {
        v: 1,
        worker_id: id.to_string(),
        by: caller.email.clone(),
        at_ms: now_ms(),
    });
    hub.store.put_drain(&drain).await?;
    hub.store.sync().await?;
    hub.dispatch.drain(drain.clone());
    hub.cluster.tell(crate::cluster::Note::Drain {
        worker_id: id.to_string(),
    });
    tracing::info!(worker_id = %id, by = %caller.email, "worker drained");
    Ok(json(&serde_json::json!({
        "success": true,
        "workerId": id,
        "drainedBy": drain.by,
        "drainedAt": rfc3339(drain.at_ms),
    })))
}

/// `POST /api/workers/{id}/resume` (admin): a drained worker takes jobs again. `wasDrained`
/// says whether it was drained (resuming one that is not is no error).
pub async fn resume(hub: &Arc<Hub>, req: Req, id: &str) -> ApiResult<Response> {
    let caller = admin(hub, &req).await?;
    known_worker(hub, id).await?;
    let was_drained = end_drain(hub, id).await?;
    hub.store.sync().await?;
    tracing::info!(worker_id = %id, by = %caller.email, "worker resumed");
    Ok(json(&serde_json::json!({
        "success": true,
        "workerId": id,
        "wasDrained": was_drained,
    })))
}

/// Ends an admin's drain of `id` in the store, here and on the other hubs; true when it was
/// drained.
async fn end_drain(hub: &Hub, id: &str) -> ApiResult<bool> {
    let stored = hub.store.delete_drain(id).await?;
    let here = hub.dispatch.resume(id);
    hub.cluster.tell(crate::cluster::Note::Resume {
        worker_id: id.to_string(),
    });
    Ok(stored || here)
}

/// 404 unless some hub knows the worker.
async fn known_worker(hub: &Hub, id: &str) -> ApiResult<()> {
    if hub.dispatch.knows(id) || hub.store.list_workers().await?.iter().any(|w| w.id == id) {
        Ok(())
    } else {
        Err(ApiError::not_found("worker not found"))
    }
}

/// `DELETE /api/workers/{id}` (admin): forgets a worker; its jobs are requeued.
pub async fn delete(hub: &Arc<Hub>, req: Req, id: &str) -> ApiResult<Response> {
    admin(hub, &req).await?;
    crate::jobs::liveness::expire_worker_jobs(hub, id, "worker deleted").await;
    if let Some(conn) = hub.dispatch.conn(id) {
        conn.kick.cancel();
    }
    if hub.dispatch.remove(id).is_none() {
        return Err(ApiError::not_found("worker not found"));
    }
    // A removed worker enrols afresh: its drain goes with it.
    end_drain(hub, id).await?;
    hub.store.delete_worker(id).await?;
    hub.store.sync().await?;
    Ok(json(&serde_json::json!({"success": true, "workerId": id})))
}
