//! Sign-in, sessions, user administration, and the client WebSocket handshake.

use std::sync::Arc;

use cmdx_proto::rest::{
    DeleteUserResponse, LoginRequest, LoginResponse, QuotaRequest, RegisterRequest,
    UpdateUserRequest, UserView,
};
use warp::http::StatusCode;
use warp::reply::Response;

use super::{Req, admin, charge, json, json_status, origin_allowed, read_json, user};
use crate::Hub;
use crate::auth::{COOKIE, hash_password};
use crate::error::{ApiError, ApiResult};
use crate::ratelimit::{Group, Principal};
use crate::store::{UserRecord, new_id, now_ms};
use crate::time::rfc3339;

fn view(u: &UserRecord) -> UserView {
    UserView {
        id: u.id.clone(),
        email: u.email.clone(),
        role: u.role.clone(),
        created_at: rfc3339(u.created_ms),
        max_queued: u.max_queued,
        max_running: u.max_running,
        disabled: u.disabled,
    }
}

fn set_cookie(resp: &mut Response, value: &str, max_age: u64, secure: bool) {
    let cookie = format!(
        "{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{}",
        if secure { "; Secure" } else { "" }
    );
    if let Ok(v) = warp::http::HeaderValue::from_str(&cookie) {
        resp.headers_mut().append("set-cookie", v);
    }
}

/// `POST /api/auth/login`.
pub async fn login(hub: &Arc<Hub>, mut req: Req) -> ApiResult<Response> {
    if let Some(ip) = req.ip {
        charge(hub, &req, Principal::Addr(ip), Group::Login)?;
    }
    let body: LoginRequest = read_json(&mut req, hub.config.max_json_bytes).await?;
    let email = body.email.trim().to_lowercase();
    let user = hub.store.get_user_by_email(&email).await?;
    let hash = user.as_ref().map(|u| u.password_hash.clone());
    let hub2 = hub.clone();
    let password = body.password;
    // argon2 is deliberately slow and memory-hard: off the async workers, a few at a time.
    let ok = hub
        .password_work(move || hub2.auth.verify_password(hash.as_deref(), &password))
        .await?;
    let user = match (ok, user) {
        (true, Some(u)) => u,
        _ => return Err(ApiError::unauthorized("wrong email or password")),
    };
    if user.disabled {
        return Err(ApiError::forbidden(
            "this account is disabled; ask an admin to enable it",
        ));
    }
    let (token, ttl) =
        hub.auth
            .issue_session(&user.id, &user.email, &user.role, user.session_epoch);
    let mut resp = json(&LoginResponse {
        token: token.clone(),
        user: view(&user),
    });
    set_cookie(&mut resp, &token, ttl, hub.cookie_secure());
    tracing::info!(user = %user.email, "signed in");
    Ok(resp)
}

/// `POST /api/auth/logout`: ends the session the request carries (bearer token or cookie): the
/// token answers 401 from now on, here and after a restart, and its client sockets close. The
/// cookie is cleared. A missing or already invalid token still gets 200 (signing out twice is
/// not an error).
pub async fn logout(hub: &Arc<Hub>, req: Req) -> ApiResult<Response> {
    let token =
        crate::auth::bearer(&req.headers).or_else(|| crate::auth::cookie(&req.headers, COOKIE));
    if let Some(caller) = token.and_then(|t| hub.auth.verify_session(t).ok())
        && !caller.session_id.is_empty()
    {
        hub.store
            .put_revoked_session(&caller.session_id, caller.expires_s)
            .await?;
        hub.store.sync().await?;
        hub.auth
            .revoke_session(&caller.session_id, caller.expires_s);
        hub.cluster.tell(crate::cluster::Note::SignedOut {
            sid: caller.session_id.clone(),
            exp_s: caller.expires_s,
        });
        tracing::info!(user = %caller.email, "signed out");
    }
    let mut resp = json(&serde_json::json!({"success": true}));
    set_cookie(&mut resp, "", 0, hub.cookie_secure());
    Ok(resp)
}

/// `GET /api/auth/me`.
pub async fn me(hub: &Arc<Hub>, req: Req) -> ApiResult<Response> {
    let caller = user(hub, &req)?;
    let u = hub
        .store
        .get_user_by_email(&caller.email)
        .await?
        .filter(|u| u.id == caller.user_id)
        .ok_or_else(|| ApiError::unauthorized("user no longer exists"))?;
    Ok(json(&view(&u)))
}

/// `POST /api/auth/register` (admin).
pub async fn register(hub: &Arc<Hub>, mut req: Req) -> ApiResult<Response> {
    admin(hub, &req).await?;
    let body: RegisterRequest = read_json(&mut req, hub.config.max_json_bytes).await?;
    let email = body.email.trim().to_lowercase();
    if !email.contains('@') || email.len() > 254 || email.chars().any(char::is_whitespace) {
        return Err(ApiError::bad_request("email must look like name@domain"));
    }
    check_password(&body.password)?;
    let role = body.role.unwrap_or_else(|| "user".into());
    if role != "user" && role != "admin" {
        return Err(ApiError::bad_request("role must be user or admin"));
    }
    let password = body.password;
    let hash = hub
        .password_work(move || hash_password(&password))
        .await?
        .map_err(ApiError::internal)?;
    let u = UserRecord {
        v: 1,
        id: new_id(),
        email,
        password_hash: hash,
        role,
        created_ms: now_ms(),
        max_queued: None,
        max_running: None,
        disabled: false,
        session_epoch: 0,
    };
    hub.store.insert_user(&u).await?;
    hub.store.sync().await?;
    Ok(json_status(&view(&u), StatusCode::CREATED))
}

/// `GET /api/users/list` (admin).
pub async fn list(hub: &Arc<Hub>, req: Req) -> ApiResult<Response> {
    admin(hub, &req).await?;
    let users: Vec<UserView> = hub.store.list_users().await?.iter().map(view).collect();
    Ok(json(&serde_json::json!({ "users": users })))
}

/// `PATCH /api/users/{id}` (admin): disable or enable the account, set its role, reset its
/// password. Disabling, a new password and another role end the user's sessions at once (REST
/// answers 401, open sockets close), on every hub. The last active admin cannot be disabled or
/// demoted (409).
pub async fn update(hub: &Arc<Hub>, mut req: Req, id: &str) -> ApiResult<Response> {
    let caller = admin(hub, &req).await?;
    let body: UpdateUserRequest = read_json(&mut req, hub.config.max_json_bytes).await?;
    let mut u = known_user(hub, id).await?;
    if let Some(role) = &body.role
        && role != "user"
        && role != "admin"
    {
        return Err(ApiError::bad_request("role must be user or admin"));
    }
    if let Some(p) = &body.password {
        check_password(p)?;
    }
    let demoted = u.role == "admin" && body.role.as_deref() == Some("user");
    let disabled = !u.disabled && body.disabled == Some(true);
    if (demoted || disabled) && u.role == "admin" {
        another_active_admin(hub, &u).await?;
    }
    let mut end_sessions = false;
    if let Some(password) = body.password {
        u.password_hash = hub
            .password_work(move || hash_password(&password))
            .await?
            .map_err(ApiError::internal)?;
        end_sessions = true;
    }
    if let Some(role) = body.role
        && role != u.role
    {
        u.role = role;
        end_sessions = true;
    }
    if let Some(d) = body.disabled
        && d != u.disabled
    {
        u.disabled = d;
        end_sessions |= d;
    }
    if end_sessions {
        u.session_epoch += 1;
    }
    hub.store.replace_user(&u).await?;
    hub.store.sync().await?;
    hub.user_changed(&u);
    tracing::info!(
        by = %caller.email,
        user = %u.email,
        role = %u.role,
        disabled = u.disabled,
        sessions_ended = end_sessions,
        "user updated"
    );
    Ok(json(&view(&u)))
}

/// `DELETE /api/users/{id}?jobs=keep|remove` (admin): deletes the account and ends its
/// sessions. `jobs` is required: `keep` leaves the user's jobs and their output (admins still
/// see them, under the old owner id); `remove` deletes them with their output and the user's
/// uploaded files (their contents go at the janitor's next pass), and is refused (409) while
/// any of the jobs has not finished. The last active admin cannot be deleted (409).
pub async fn delete(hub: &Arc<Hub>, req: Req, id: &str) -> ApiResult<Response> {
    let caller = admin(hub, &req).await?;
    let remove = match req.param("jobs").as_deref() {
        Some("keep") => false,
        Some("remove") => true,
        _ => {
            return Err(ApiError::bad_request(
                "say what becomes of the user's jobs: jobs=keep (they stay, for admins) or \
                 jobs=remove (deleted with their output and the user's files)",
            ));
        }
    };
    let u = known_user(hub, id).await?;
    if u.role == "admin" {
        another_active_admin(hub, &u).await?;
    }
    let mut jobs_removed = 0;
    let mut files_removed = 0;
    if remove {
        let jobs = hub
            .store
            .list_jobs(crate::store::JobQuery {
                owner: Some(&u.id),
                before: None,
                limit: usize::MAX,
                filter: &|_| true,
                max_scan: usize::MAX,
            })
            .await?;
        let unfinished = jobs.iter().filter(|j| !j.status.is_terminal()).count();
        if unfinished > 0 {
            return Err(ApiError::conflict(format!(
                "{unfinished} of {}'s jobs have not finished: cancel them first, or keep the jobs",
                u.email
            )));
        }
        for j in &jobs {
            hub.store.delete_job(&j.id).await?;
            jobs_removed += 1;
        }
        for f in hub.store.list_files(&u.id).await? {
            hub.store.delete_file(&f.id).await?;
            files_removed += 1;
        }
    }
    hub.store.delete_user(&u).await?;
    hub.store.sync().await?;
    hub.user_deleted(&u.id);
    tracing::info!(by = %caller.email, user = %u.email, jobs_removed, files_removed, "user deleted");
    Ok(json(&DeleteUserResponse {
        user_id: u.id,
        jobs: if remove { "removed" } else { "kept" }.to_string(),
        jobs_removed,
        files_removed,
    }))
}

async fn known_user(hub: &Hub, id: &str) -> ApiResult<UserRecord> {
    hub.store
        .get_user(id)
        .await?
        .ok_or_else(|| ApiError::not_found("user not found"))
}

/// Refuses (409) to take away `u`, an admin, unless another enabled admin remains.
async fn another_active_admin(hub: &Hub, u: &UserRecord) -> ApiResult<()> {
    let others = hub
        .store
        .list_users()
        .await?
        .iter()
        .filter(|o| o.id != u.id && o.role == "admin" && !o.disabled)
        .count();
    if others == 0 {
        return Err(ApiError::conflict(format!(
            "{} is the last active admin: make another user an admin first",
            u.email
        )));
    }
    Ok(())
}

fn check_password(p: &str) -> ApiResult<()> {
    if p.len() < 8 || p.len() > 1024 {
        return Err(ApiError::bad_request(
            "password must have 8 to 1024 characters",
        ));
    }
    Ok(())
}

/// `PUT /api/users/{id}/quota` (admin): a user's own limits on queued and running jobs
/// (`null`: the hub's setting; 0: none). Takes effect at once on this hub, within the cluster's
/// catch-up period on the others.
pub async fn set_quota(hub: &Arc<Hub>, mut req: Req, id: &str) -> ApiResult<Response> {
    admin(hub, &req).await?;
    let body: QuotaRequest = read_json(&mut req, hub.config.max_json_bytes).await?;
    let mut u = hub
        .store
        .get_user(id)
        .await?
        .ok_or_else(|| ApiError::not_found("user not found"))?;
    u.max_queued = body.max_queued;
    u.max_running = body.max_running;
    hub.store.replace_user(&u).await?;
    hub.store.sync().await?;
    hub.user_changed(&u);
    tracing::info!(user = %u.id, max_queued = ?u.max_queued, max_running = ?u.max_running, "quota set");
    Ok(json(&view(&u)))
}

/// `GET /ws/client`: browser and CLI live socket.
pub async fn client_socket(hub: &Arc<Hub>, mut req: Req) -> ApiResult<Response> {
    if !origin_allowed(hub, &req.headers) {
        return Err(ApiError::forbidden("websocket origin not allowed"));
    }
    let caller = user(hub, &req)?;
    let slot = crate::ws::Sessions::reserve_client(hub, &caller.user_id).map_err(|e| match e {
        crate::ws::SlotRefused::UserFull => ApiError {
            retry_after: Some(5),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_sockets",
                format!(
                    "this account already has {} live sockets open; close some (each browser \
                     tab and `cmdx logs -f` holds one)",
                    hub.config.max_client_sockets_per_user
                ),
            )
        },
        crate::ws::SlotRefused::Full => ApiError::unavailable("too many open client sockets"),
    })?;
    let resp = crate::ws::handshake(&req.headers)?;
    let on_upgrade = req
        .upgrade
        .take()
        .ok_or_else(|| ApiError::bad_request("connection cannot be upgraded"))?;
    let hub2 = hub.clone();
    let max = hub.config.max_ws_message_bytes.min(64 * 1024);
    hub.tasks.spawn(async move {
        if let Some(ws) = crate::ws::accept(on_upgrade, max, 32 * 1024).await {
            crate::ws_client::session(hub2, ws, caller).await;
        }
        drop(slot);
    });
    Ok(resp)
}
