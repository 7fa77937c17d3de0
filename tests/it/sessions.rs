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
