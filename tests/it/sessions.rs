//! Sessions end when they should, as a signed-in user and an attacker holding a copied token see
//! it: logout revokes the token (REST, WebSocket, and after a restart), a client socket closes
//! when its token expires, and admin routes go by the account's role now, not the role a token
//! was signed with.

use std::time::{Duration, Instant};

use cmdx_e2e::HubProc;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::FAST;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn client_ws(hub: &HubProc, token: &str) -> Ws {
    let mut req = hub.ws_url("/ws/client").into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    ws.send(Message::text(r#"{"type":"subscribeJobs"}"#))
        .await
        .unwrap();
    ws
}

/// Reads until the hub closes the socket; returns the close reason and when it came.
async fn closed(ws: &mut Ws, within: Duration) -> (String, Instant) {
    let until = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(until, ws.next()).await {
            Err(_) => panic!("the socket stayed open"),
            Ok(Some(Ok(Message::Close(f)))) => {
                return (
                    f.map(|f| f.reason.to_string()).unwrap_or_default(),
                    Instant::now(),
                );
            }
            Ok(None | Some(Err(_))) => return (String::new(), Instant::now()),
            Ok(Some(Ok(_))) => {}
        }
    }
}

/// A session JWT signed with the hub's own key (the test runs as root beside the hub's data
/// folder), for claims the hub would not issue today.
fn forged_session(hub: &HubProc, sub: &str, email: &str, role: &str, ttl: u64) -> String {
    let key = hex::decode(
        std::fs::read_to_string(hub.data.join("secrets/jwt.key"))
            .unwrap()
            .trim(),
    )
    .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": sub, "email": email, "role": role, "iss": "cmdx-hub", "aud": "cmdx-api",
                "iat": now, "exp": now + ttl, "jti": format!("forged-{now}")}),
        &jsonwebtoken::EncodingKey::from_secret(&key),
    )
    .unwrap()
}

async fn logout(hub: &HubProc, token: &str) -> u16 {
    hub.http
        .post(format!("{}/api/auth/logout", hub.url))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// A copied token is dead once its owner signs out: its REST calls answer 401, its open client
/// socket closes at once, and a restart does not bring it back. The user's other session (another
/// browser) goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_revokes_the_session_everywhere() {
    let mut hub = HubProc::start(FAST).await;
    let admin = hub.admin().await;
    let copied = hub.user(&admin, "leaky@test.local").await;
    let other = hub.login("leaky@test.local", "user-password-1").await;
    let mut ws = client_ws(&hub, &copied).await;
    let mut other_ws = client_ws(&hub, &other).await;
    let (s, _) = hub.get(&copied, "/api/auth/me").await;
    assert_eq!(s, 200);

    let started = Instant::now();
    assert_eq!(logout(&hub, &copied).await, 200);
    let (s, v) = hub.get(&copied, "/api/auth/me").await;
    assert_eq!(s, 401, "{v}");
    let (reason, at) = closed(&mut ws, Duration::from_secs(5)).await;
    assert_eq!(reason, "signed out");
    assert!(at - started < Duration::from_secs(1), "{:?}", at - started);
    assert_eq!(
        logout(&hub, &copied).await,
        200,
        "signing out twice is fine"
    );

    // The other session is untouched.
    let (s, _) = hub.get(&other, "/api/jobs/list").await;
    assert_eq!(s, 200);
    let id = hub.submit(&other, json!({"command": "true"})).await;
    let event = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Some(Ok(Message::Text(t))) = other_ws.next().await
                && t.contains(&id)
            {
                return t.to_string();
            }
        }
    })
    .await
    .expect("the other session's socket still gets events");
    assert!(event.contains("\"job\""), "{event}");

    // Revocation survives a restart.
    hub.terminate().await;
    hub.restart().await;
    let (s, _) = hub.get(&copied, "/api/jobs/list").await;
    assert_eq!(s, 401, "a signed-out token works again after a restart");
    let (s, _) = hub.get(&other, "/api/jobs/list").await;
    assert_eq!(s, 200);
}

/// A sign-out that comes while the hub is still setting up a just-opened socket closes it too:
/// the socket is opened and its session signed out at once, again and again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_signed_out_as_it_opens_still_closes() {
    let hub = HubProc::start(FAST).await;
    let admin = hub.admin().await;
    hub.user(&admin, "quick@test.local").await;
    for round in 0..20 {
        let token = hub.login("quick@test.local", "user-password-1").await;
        let mut req = hub.ws_url("/ws/client").into_client_request().unwrap();
        req.headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
        assert_eq!(logout(&hub, &token).await, 200);
        let (reason, _) = closed(&mut ws, Duration::from_secs(5)).await;
        assert_eq!(reason, "signed out", "round {round}");
    }
}

/// A client socket opened with a token that expires in 3 s is closed when it expires (the JWT
/// check allows 5 s of clock skew, the socket does not).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_socket_closes_when_its_session_expires() {
    let hub = HubProc::start(FAST).await;
    let admin = hub.admin().await;
    let (_, me) = hub.get(&admin, "/api/auth/me").await;
    let short = forged_session(
        &hub,
        me["id"].as_str().unwrap(),
        me["email"].as_str().unwrap(),
        "admin",
        3,
    );
    let started = Instant::now();
    let mut ws = client_ws(&hub, &short).await;
    let (reason, at) = closed(&mut ws, Duration::from_secs(15)).await;
    assert!(reason.contains("session expired"), "{reason}");
    let lived = at - started;
    assert!(
        lived >= Duration::from_secs(2) && lived < Duration::from_secs(6),
        "{lived:?}"
    );
}

/// Roles come from the account, not the token: a token that says `admin` for an account that is
/// a plain user (demoted since, or forged with a leaked key for a user) gets 403 on admin routes
/// and works as the user it is on user routes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_routes_check_the_accounts_role_now() {
    let hub = HubProc::start(FAST).await;
    let admin = hub.admin().await;
    let plain = hub.user(&admin, "plain@test.local").await;
    let (_, me) = hub.get(&plain, "/api/auth/me").await;
    assert_eq!(me["role"], "user");
    let stale = forged_session(
        &hub,
        me["id"].as_str().unwrap(),
        "plain@test.local",
        "admin",
        600,
    );
    for (method, path) in [
        (reqwest::Method::GET, "/api/users/list"),
        (reqwest::Method::POST, "/api/workers/tokens"),
        (reqwest::Method::GET, "/api/workers/tokens"),
        (reqwest::Method::POST, "/api/admin/janitor"),
    ] {
        let r = hub
            .http
            .request(method.clone(), format!("{}{path}", hub.url))
            .bearer_auth(&stale)
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{method} {path}");
    }
    let (s, _) = hub.get(&stale, "/api/jobs/list").await;
    assert_eq!(s, 200);
    // A token for an account that does not exist is refused on admin routes too.
    let ghost = forged_session(&hub, "no-such-user", "ghost@test.local", "admin", 600);
    let (s, v): (u16, Value) = hub.get(&ghost, "/api/users/list").await;
    assert_eq!(s, 401, "{v}");
}

async fn patch_user(hub: &HubProc, token: &str, id: &str, body: Value) -> (u16, Value) {
    let path = format!("/api/users/{id}");
    hub.send_json(token, reqwest::Method::PATCH, &path, body)
        .await
}

async fn delete_user(hub: &HubProc, token: &str, id: &str, jobs: &str) -> (u16, Value) {
    let path = format!("/api/users/{id}{jobs}");
    hub.send_json(token, reqwest::Method::DELETE, &path, Value::Null)
        .await
}

async fn login_status(hub: &HubProc, email: &str, password: &str) -> (u16, Value) {
    let r = hub
        .http
        .post(format!("{}/api/auth/login", hub.url))
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// An admin disables a user: the user's live session answers 401 at once (REST) and its open
/// socket closes, they cannot sign in (403, saying why), another user is untouched; enabled
/// again, they sign in. Only admins may do it, and unknown users are 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_user_is_signed_out_at_once_and_cannot_sign_in() {
    let hub = HubProc::start(FAST).await;
    let admin = hub.admin().await;
    let mallory = hub.user(&admin, "mallory@test.local").await;
    let bob = hub.user(&admin, "bob@test.local").await;
    let id = hub.user_id(&admin, "mallory@test.local").await;
    let job = hub.submit(&mallory, json!({"command": "true"})).await;
    let mut ws = client_ws(&hub, &mallory).await;

    let (s, _) = patch_user(&hub, &bob, &id, json!({"disabled": true})).await;
    assert_eq!(s, 403, "a user cannot disable another");
    let (s, _) = patch_user(&hub, &admin, "no-such-user", json!({"disabled": true})).await;
    assert_eq!(s, 404);
    let (s, _) = patch_user(&hub, &admin, &id, json!({"disabled": "yes"})).await;
    assert_eq!(s, 400);

    let started = Instant::now();
    let (s, v) = patch_user(&hub, &admin, &id, json!({"disabled": true})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["disabled"], true);
    let (s, v) = hub.get(&mallory, "/api/jobs/list").await;
    assert_eq!(s, 401, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("an admin changed or disabled"),
        "{v}"
    );
    let (reason, at) = closed(&mut ws, Duration::from_secs(5)).await;
    assert!(reason.contains("an admin changed this account"), "{reason}");
    assert!(at - started < Duration::from_secs(1), "{:?}", at - started);
    let (s, v) = login_status(&hub, "mallory@test.local", "user-password-1").await;
    assert_eq!(s, 403, "{v}");
    assert!(v["error"].as_str().unwrap().contains("disabled"), "{v}");
    let (s, v) = login_status(&hub, "mallory@test.local", "wrong-password").await;
    assert_eq!(
        s, 401,
        "a wrong password does not learn the account is disabled: {v}"
    );
    let (s, _) = hub.get(&bob, "/api/jobs/list").await;
    assert_eq!(s, 200, "others are untouched");
    // Their job is kept as it was.
    assert_eq!(hub.job(&admin, &job).await["status"], "queued");
    let (_, list) = hub.get(&admin, "/api/users/list").await;
    assert!(list.to_string().contains("\"disabled\":true"), "{list}");

    let (s, _) = patch_user(&hub, &admin, &id, json!({"disabled": false})).await;
    assert_eq!(s, 200);
    let again = hub.login("mallory@test.local", "user-password-1").await;
    let (s, _) = hub.get(&again, "/api/jobs/list").await;
    assert_eq!(s, 200);
    let (s, _) = hub.get(&mallory, "/api/jobs/list").await;
    assert_eq!(s, 401, "enabling does not bring old sessions back");
}

/// A new password or another role ends the user's sessions; the new password works, the old
/// does not; the promoted user's new session is an admin's. The last active admin cannot be
/// demoted, disabled or deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_resets_and_role_changes_end_sessions_and_the_last_admin_stays() {
    let mut hub = HubProc::start(FAST).await;
    let admin = hub.admin().await;
    let carol = hub.user(&admin, "carol@test.local").await;
    let id = hub.user_id(&admin, "carol@test.local").await;
    let (s, _) = patch_user(&hub, &admin, &id, json!({"password": "short"})).await;
    assert_eq!(s, 400);
    let (s, _) = patch_user(&hub, &admin, &id, json!({"password": "brand-new-pass"})).await;
    assert_eq!(s, 200);
    assert_eq!(hub.get(&carol, "/api/jobs/list").await.0, 401);
    assert_eq!(
        login_status(&hub, "carol@test.local", "user-password-1")
            .await
            .0,
        401
    );
    let carol = hub.login("carol@test.local", "brand-new-pass").await;

    let admin_id = hub.user_id(&admin, cmdx_e2e::ADMIN_EMAIL).await;
    for change in [json!({"role": "user"}), json!({"disabled": true})] {
        let (s, v) = patch_user(&hub, &admin, &admin_id, change).await;
        assert_eq!(s, 409, "{v}");
        assert!(
            v["error"].as_str().unwrap().contains("last active admin"),
            "{v}"
        );
    }
    let (s, _) = delete_user(&hub, &admin, &admin_id, "?jobs=keep").await;
    assert_eq!(s, 409);

    let (s, v) = patch_user(&hub, &admin, &id, json!({"role": "admin"})).await;
    assert_eq!((s, &v["role"]), (200, &json!("admin")));
    assert_eq!(hub.get(&carol, "/api/jobs/list").await.0, 401);
    let carol = hub.login("carol@test.local", "brand-new-pass").await;
    assert_eq!(
        hub.get(&carol, "/api/users/list").await.0,
        200,
        "an admin now"
    );
    // Now the first admin may step down: carol remains.
    let (s, _) = patch_user(&hub, &carol, &admin_id, json!({"role": "user"})).await;
    assert_eq!(s, 200);
    assert_eq!(hub.get(&admin, "/api/users/list").await.0, 401);
    // Everything holds after a restart (the epochs live in the records).
    hub.terminate().await;
    hub.restart().await;
    assert_eq!(hub.get(&admin, "/api/jobs/list").await.0, 401);
    assert_eq!(hub.get(&carol, "/api/users/list").await.0, 200);
}

/// Deleting a user says what becomes of their jobs, and nothing is implied: `jobs` is required.
/// Kept jobs stay for admins; removed ones go with their output and files, but not while one has
/// not finished. The deleted user's sessions end and they cannot sign in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_user_keeps_or_removes_their_jobs_as_asked() {
    let hub = HubProc::start(FAST).await;
    let admin = hub.admin().await;
    let dave = hub.user(&admin, "dave@test.local").await;
    let erin = hub.user(&admin, "erin@test.local").await;
    let dave_id = hub.user_id(&admin, "dave@test.local").await;
    let erin_id = hub.user_id(&admin, "erin@test.local").await;
    let dave_job = hub.submit(&dave, json!({"command": "true"})).await;
    let file = hub
        .upload_zip(&erin, cmdx_e2e::zip_bytes(&[("a.txt", b"a")]))
        .await;
    let erin_job = hub
        .submit(&erin, json!({"command": "true", "fileId": file}))
        .await;

    let (s, v) = delete_user(&hub, &admin, &dave_id, "").await;
    assert_eq!(s, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("jobs=keep"), "{v}");
    let (s, _) = delete_user(&hub, &erin, &dave_id, "?jobs=keep").await;
    assert_eq!(s, 403);

    let (s, v) = delete_user(&hub, &admin, &dave_id, "?jobs=keep").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v,
        json!({"userId": dave_id, "jobs": "kept", "jobsRemoved": 0, "filesRemoved": 0})
    );
    assert_eq!(hub.get(&dave, "/api/jobs/list").await.0, 401);
    assert_eq!(
        login_status(&hub, "dave@test.local", "user-password-1")
            .await
            .0,
        401
    );
    assert_eq!(hub.job(&admin, &dave_job).await["owner"], dave_id.as_str());
    let (s, _) = delete_user(&hub, &admin, &dave_id, "?jobs=keep").await;
    assert_eq!(s, 404, "gone");

    // erin's job has not run: removing is refused until it is cancelled.
    let (s, v) = delete_user(&hub, &admin, &erin_id, "?jobs=remove").await;
    assert_eq!(s, 409, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("cancel them first"),
        "{v}"
    );
    hub.post_json(&admin, "/api/jobs/cancel", json!({"jobId": erin_job}))
        .await;
    let (s, v) = delete_user(&hub, &admin, &erin_id, "?jobs=remove").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["jobs"], "removed");
    assert_eq!(v["jobsRemoved"], 1);
    assert_eq!(v["filesRemoved"], 1);
    let (s, _) = hub
        .get(&admin, &format!("/api/jobs/status?jobId={erin_job}"))
        .await;
    assert_eq!(s, 404);
    // A new account may take the email again, with nothing of the old one.
    let erin2 = hub.user(&admin, "erin@test.local").await;
    let (_, list) = hub.get(&erin2, "/api/jobs/list").await;
    assert_eq!(list["count"], 0, "{list}");
    assert_eq!(
        hub.get(&erin, "/api/jobs/list").await.0,
        401,
        "the old session stays dead"
    );
}
