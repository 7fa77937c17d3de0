//! Bad input gets a clear JSON error with the right status, and changes nothing.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use cmdx_e2e::{HubProc, zip_bytes};
use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::FAST;

async fn call(
    hub: &HubProc,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, Value) {
    let mut r = hub.http.request(method, format!("{}{path}", hub.url));
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    if let Some(b) = body {
        r = r
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let r = r.send().await.unwrap();
    let s = r.status().as_u16();
    let text = r.text().await.unwrap();
    let v: Value = serde_json::from_str(&text)
        .unwrap_or_else(|_| panic!("non-JSON error body for {path}: {text}"));
    if s >= 400 {
        assert!(
            v["error"].is_string() && v["code"].is_string(),
            "error shape for {path}: {v}"
        );
    }
    (s, v)
}

fn jwt_secret(hub: &HubProc) -> Vec<u8> {
    let hex_text = std::fs::read_to_string(hub.data.join("secrets/jwt.key")).unwrap();
    (0..hex_text.trim().len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex_text.trim()[i..i + 2], 16).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_and_forged_credentials_are_refused() {
    let hub = HubProc::start(FAST).await;
    let admin = hub.admin().await;
    let post = reqwest::Method::POST;
    let get = reqwest::Method::GET;
    let (s, v) = call(
        &hub,
        post.clone(),
        "/api/jobs/submit",
        Some(&admin),
        Some("{not json"),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    let (s, v) = call(
        &hub,
        post.clone(),
        "/api/jobs/submit",
        Some(&admin),
        Some(r#"{"command":"true","status":"completed","workerId":"me"}"#),
    )
    .await;
    assert_eq!(s, 400);
    assert!(
        v["error"].as_str().unwrap().contains("unknown field"),
        "{v}"
    );
    let (s, _) = call(
        &hub,
        post.clone(),
        "/api/jobs/submit",
        None,
        Some(r#"{"command":"true"}"#),
    )
    .await;
    assert_eq!(s, 401);
    let (s, _) = call(
        &hub,
        get.clone(),
        "/api/jobs/status?jobId=nope",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(s, 404);
    let (s, _) = call(&hub, get.clone(), "/api/nothing/here", Some(&admin), None).await;
    assert_eq!(s, 404);
    let (s, _) = call(
        &hub,
        reqwest::Method::DELETE,
        "/api/jobs/submit",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(s, 405);

    // Forged, expired, alg=none and wrong-alg tokens.
    let secret = jwt_secret(&hub);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = |exp: u64, iss: &str, aud: &str| json!({"sub": "x", "email": "admin@test.local", "role": "admin", "iss": iss, "aud": aud, "exp": exp, "iat": now});
    let sign = |alg: Algorithm, key: &[u8], c: Value| {
        jsonwebtoken::encode(&Header::new(alg), &c, &EncodingKey::from_secret(key)).unwrap()
    };
    let expired = sign(
        Algorithm::HS256,
        &secret,
        claims(now - 3600, "cmdx-hub", "cmdx-api"),
    );
    let wrong_key = sign(
        Algorithm::HS256,
        b"not-the-secret",
        claims(now + 3600, "cmdx-hub", "cmdx-api"),
    );
    let wrong_alg = sign(
        Algorithm::HS512,
        &secret,
        claims(now + 3600, "cmdx-hub", "cmdx-api"),
    );
    let wrong_iss = sign(
        Algorithm::HS256,
        &secret,
        claims(now + 3600, "evil", "cmdx-api"),
    );
    let wrong_aud = sign(
        Algorithm::HS256,
        &secret,
        claims(now + 3600, "cmdx-hub", "other"),
    );
    let no_exp = sign(
        Algorithm::HS256,
        &secret,
        json!({"sub": "x", "email": "a", "role": "admin", "iss": "cmdx-hub", "aud": "cmdx-api"}),
    );
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(claims(now + 3600, "cmdx-hub", "cmdx-api").to_string())
    );
    let good = sign(
        Algorithm::HS256,
        &secret,
        claims(now + 3600, "cmdx-hub", "cmdx-api"),
    );
    let (s, _) = call(&hub, get.clone(), "/api/jobs/list", Some(&good), None).await;
    assert_eq!(s, 200, "a correctly signed token must pass (control)");
    for (name, t) in [
        ("expired", &expired),
        ("wrong key", &wrong_key),
        ("HS512", &wrong_alg),
        ("wrong iss", &wrong_iss),
        ("wrong aud", &wrong_aud),
        ("no exp", &no_exp),
        ("alg none", &none),
    ] {
        let (s, _) = call(&hub, get.clone(), "/api/jobs/list", Some(t), None).await;
        assert_eq!(s, 401, "{name} token must be refused");
    }

    // Worker tokens on user routes and user tokens on worker routes.
    let wt = hub.worker_token(&admin).await;
    let (s, _) = call(&hub, get.clone(), "/api/jobs/list", Some(&wt), None).await;
    assert_eq!(s, 403);
    let (s, _) = call(
        &hub,
        get.clone(),
        "/api/jobs/get-job?workerId=w",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(s, 403);
    let mut tampered = wt.clone();
    tampered.pop();
    tampered.push(if wt.ends_with('A') { 'B' } else { 'A' });
    let (s, _) = call(
        &hub,
        get.clone(),
        "/api/jobs/get-job?workerId=w",
        Some(&tampered),
        None,
    )
    .await;
    assert_eq!(s, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_users_objects_answer_404() {
    let hub = HubProc::start(FAST).await;
    let admin = hub.admin().await;
    let a = hub.user(&admin, "a@test.local").await;
    let b = hub.user(&admin, "b@test.local").await;
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(zip_bytes(&[("x", b"1")])).file_name("a.zip"),
    );
    let up: Value = hub
        .http
        .post(format!("{}/api/files/upload", hub.url))
        .bearer_auth(&a)
        .multipart(form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let file_id = up["fileId"].as_str().unwrap();
    let job = hub
        .submit(&a, json!({"command": "true", "fileId": file_id}))
        .await;
    let get = reqwest::Method::GET;
    for path in [
        format!("/api/jobs/status?jobId={job}"),
        format!("/api/jobs/{job}/output"),
        format!("/api/files/download/{file_id}"),
    ] {
        let (s, _) = call(&hub, get.clone(), &path, Some(&b), None).await;
        assert_eq!(s, 404, "{path} must hide A's object from B");
        let owner = hub
            .http
            .get(format!("{}{path}", hub.url))
            .bearer_auth(&a)
            .send()
            .await
            .unwrap();
        assert!(
            owner.status().is_success(),
            "the owner must see {path}: {}",
            owner.status()
        );
    }
    let (s, _) = call(
        &hub,
        reqwest::Method::POST,
        "/api/jobs/cancel",
        Some(&b),
        Some(&format!(r#"{{"jobId":"{job}"}}"#)),
    )
    .await;
    assert_eq!(s, 404);
    // B cannot submit with A's file either.
    let (s, _) = call(
        &hub,
        reqwest::Method::POST,
        "/api/jobs/submit",
        Some(&b),
        Some(&format!(r#"{{"command":"true","fileId":"{file_id}"}}"#)),
    )
    .await;
    assert_eq!(s, 404);
    let (_, list) = call(&hub, get, "/api/jobs/list", Some(&b), None).await;
    assert_eq!(list["count"], 0);
    assert_eq!(hub.job(&a, &job).await["status"], "queued");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_answer_413_429_and_close_oversize_sockets() {
    let hub = HubProc::start(&[
        "--max-upload-bytes",
        "1000000",
        "--rate-limit-per-min",
        "20",
        "--login-rate-limit-per-min",
        "0",
        "--reconnect-grace-secs",
        "2",
    ])
    .await;
    let admin = hub.admin().await;
    // The client is still writing when the hub answers 413 from Content-Length: it must get
    // the answer, not "broken pipe" (the hub reads and discards the rest, as nginx does).
    // 16 MB does not fit in loopback socket buffers, so every try races the answer.
    let big = vec![7u8; 16_000_000];
    for _ in 0..3 {
        let r = hub
            .http
            .post(format!("{}/api/files/upload", hub.url))
            .bearer_auth(&admin)
            .header("content-type", "application/zip")
            .body(big.clone())
            .send()
            .await
            .expect("a 413, not a transport error");
        assert_eq!(r.status(), 413);
        assert!(r.text().await.unwrap().contains("exceeds the limit"));
    }
    // Chunked (no Content-Length) is counted as it arrives and answered the same way.
    let parts: Vec<Result<Vec<u8>, std::io::Error>> =
        big.chunks(65536).map(|c| Ok(c.to_vec())).collect();
    let r = hub
        .http
        .post(format!("{}/api/files/upload", hub.url))
        .bearer_auth(&admin)
        .header("content-type", "application/zip")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            parts,
        )))
        .send()
        .await
        .expect("a 413, not a transport error");
    assert_eq!(r.status(), 413);
    // A client that asks `Expect: 100-continue` (curl does for large bodies) gets the 413
    // without being told to send its body.
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", hub.port))
        .await
        .unwrap();
    let head = format!(
        "POST /api/files/upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {admin}\r\n\
         Content-Type: application/zip\r\nContent-Length: 16000000\r\n\
         Expect: 100-continue\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut answer))
        .await
        .expect("an answer without the body")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    // A browser WebSocket from a foreign origin.
    let mut req = hub.ws_url("/ws/client").into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {admin}").parse().unwrap());
    req.headers_mut()
        .insert("origin", "http://evil.example".parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 403),
        other => panic!("foreign origin accepted: {:?}", other.map(|_| ())),
    }
    // An oversize client message closes the socket.
    let mut req = hub.ws_url("/ws/client").into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {admin}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let _ = ws.send(Message::text("x".repeat(200_000))).await;
    let closed = tokio::time::timeout(cmdx_e2e::WAIT, async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) => return None,
                Some(Ok(Message::Close(f))) => return f.map(|f| u16::from(f.code)),
                Some(Ok(_)) => {}
            }
        }
    })
    .await
    .expect("socket closed in time");
    if let Some(code) = closed {
        assert_eq!(code, 1009, "close code for an oversize message");
    }

    // Rate limit: 20 writes per minute per user, then 429 with Retry-After.
    let mut limited = None;
    for _ in 0..30 {
        let r = hub
            .http
            .post(format!("{}/api/jobs/cancel", hub.url))
            .json(&json!({"jobId": "nope"}))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap();
        if r.status() == 429 {
            limited = Some(r);
            break;
        }
    }
    let r = limited.expect("429 after the budget");
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry));
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["code"], "rate_limited");
}
