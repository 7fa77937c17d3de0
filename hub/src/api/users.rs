//! Sign-in, sessions, user administration, and the client WebSocket handshake.

use std::sync::Arc;

use cmdx_proto::rest::{LoginRequest, LoginResponse, QuotaRequest, RegisterRequest, UserView};
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
    let (token, ttl) = hub.auth.issue_session(&user.id, &user.email, &user.role);
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
    if body.password.len() < 8 || body.password.len() > 1024 {
        return Err(ApiError::bad_request(
            "password must have 8 to 1024 characters",
        ));
    }
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
    hub.dispatch
        .set_user_quota(&u.id, u.max_queued, u.max_running);
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
