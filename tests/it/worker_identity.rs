//! A worker is who its token says, played as the attacker and the operator do it: another
//! token's `hello` with a victim agent's id (ids are public in `/api/workers/list`), a pool-B
//! token advertising pool-A tags, a revoked token reconnecting, and a tenant reading another
//! tenant's job ids off the worker list.

use std::time::{Duration, Instant};

use cmdx_e2e::{FakeAgent, HubProc, cmdx_bin};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::FAST;

async fn mint(hub: &HubProc, admin: &str, body: Value) -> (String, String) {
    let v = hub.post_json(admin, "/api/workers/tokens", body).await;
    (
        v["token"].as_str().unwrap().to_string(),
        v["tokenId"].as_str().unwrap().to_string(),
    )
}

async fn delete(hub: &HubProc, token: &str, path: &str) -> (u16, Value) {
    let r = hub
        .http
        .delete(format!("{}{path}", hub.url))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

/// The impostor attack from the review: token B says `hello` with the id of an agent enrolled
/// with token A while it runs a job whose env holds a secret. Before, the victim was kicked, its
/// job lost its attempt, and the impostor received the job with its secret and reported forged
/// output. Now the impostor is refused (as a WebSocket agent and as a REST worker), the victim
/// keeps its job and finishes it, and only an admin removing the worker frees the id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_token_cannot_take_over_a_worker_id() {
    let hub = HubProc::start(FAST).await;
    let admin = hub.admin().await;
    let user = hub.user(&admin, "victim-owner@test.local").await;
    let (token_a, _) = mint(&hub, &admin, json!({"name": "host-a"})).await;
    let (token_b, _) = mint(&hub, &admin, json!({"name": "host-b"})).await;
    let (mut victim, _) = FakeAgent::connect(&hub, &token_a, "victim", 1, vec![])
        .await
        .unwrap();
    let job = hub
        .submit(
            &user,
            json!({"command": "deploy", "env": {"API_KEY": "SECRET123"}, "maxAttempts": 1}),
        )
        .await;
    let a = victim.next_assignment().await.unwrap();
    assert_eq!(a.job_id, job);

    let err = FakeAgent::connect(&hub, &token_b, "victim", 1, vec![])
        .await
        .err()
        .expect("the impostor's hello must be refused");
    assert!(err.to_string().contains("worker_id_taken"), "{err}");
    // The same through the REST worker routes with token B.
    let r = hub
        .http
        .post(format!("{}/api/workers/register", hub.url))
        .header("x-worker-token", &token_b)
        .json(&json!({"workerId": "victim", "hostname": "evil"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = hub
        .http
        .get(format!("{}/api/jobs/get-job?workerId=victim", hub.url))
        .header("x-worker-token", &token_b)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    // The victim was not kicked and still holds its attempt.
    victim.finish(&job, a.attempt, 0, 0).await.unwrap();
    let v = hub.wait_status(&user, &job, "completed").await;
    assert_eq!(v["workerId"], "victim");

    // An admin removes the worker: the id is free, and token B may enrol it.
    let (s, _) = delete(&hub, &admin, "/api/workers/victim").await;
    assert_eq!(s, 200);
    FakeAgent::connect(&hub, &token_b, "victim", 1, vec![])
        .await
        .expect("an id an admin freed can be enrolled again");
}

/// A token minted for pool B (`--tags pool-b`) cannot advertise pool A's tag, so it never
/// receives pool A's jobs; within its scope it enrols as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scoped_token_advertises_only_its_tags() {
    let hub = HubProc::start(FAST).await;
    let admin = hub.admin().await;
    let (pool_b, _) = mint(&hub, &admin, json!({"name": "pool-b", "tags": ["pool-b"]})).await;
    let err = FakeAgent::connect_tagged(
        &hub,
        &pool_b,
        "b-1",
        1,
        vec![],
        vec!["pool-b".into(), "pool-a".into()],
    )
    .await
    .err()
    .expect("pool-a is outside the token's scope");
    assert!(err.to_string().contains("tags_out_of_scope"), "{err}");
    let job_a = hub
        .submit(&admin, json!({"command": "true", "tags": ["pool-a"]}))
        .await;
    let (mut agent, _) =
        FakeAgent::connect_tagged(&hub, &pool_b, "b-1", 1, vec![], vec!["pool-b".into()])
            .await
            .unwrap();
    let job_b = hub
        .submit(&admin, json!({"command": "true", "tags": ["pool-b"]}))
        .await;
    let a = agent.next_assignment().await.unwrap();
    assert_eq!(
        a.job_id, job_b,
        "the pool-b agent gets pool-b's job, not pool-a's"
    );
    assert_eq!(hub.job(&admin, &job_a).await["status"], "queued");
    // Scopes are validated when minted.
    let r = hub
        .http
        .post(format!("{}/api/workers/tokens", hub.url))
        .bearer_auth(&admin)
        .json(&json!({"tags": ["has space"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

/// A tag is one word: `"gpu, linux"` given as one tag (a job's, a token scope's, an agent's)
/// could never match what the other side calls `gpu` and `linux`, so the job would wait for
/// ever. Each is refused where it is given, saying why; spaces around a job's tag are trimmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_with_a_separator_is_refused_where_it_is_given() {
    let hub = HubProc::start(FAST).await;
    let admin = hub.admin().await;
    let long = "t".repeat(65);
    for bad in ["gpu, linux", "gpu linux", "a\nb", "", long.as_str()] {
        let (status, body) = hub
            .send_json(
                &admin,
                reqwest::Method::POST,
                "/api/jobs/submit",
                json!({"command": "true", "tags": ["ok", bad]}),
            )
            .await;
        let msg = body["error"].as_str().unwrap_or_default().to_string();
        if bad.is_empty() {
            // An empty tag is dropped with the white space around the others.
            assert_eq!(status, 201, "{body}");
            continue;
        }
        assert_eq!(status, 400, "{bad:?}: {body}");
        assert!(msg.contains("tag "), "{bad:?}: {msg}");
    }
    let (status, body) = hub
        .send_json(
            &admin,
            reqwest::Method::POST,
            "/api/jobs/submit",
            json!({"command": "true", "tags": ["gpu,linux"]}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|m| m.contains("each tag is one word (gpu,linux is two tags")),
        "{body}"
    );
    let id = hub
        .submit(&admin, json!({"command": "true", "tags": [" gpu "]}))
        .await;
    assert_eq!(hub.job(&admin, &id).await["tags"], json!(["gpu"]));

    let (status, body) = hub
        .send_json(
            &admin,
            reqwest::Method::POST,
            "/api/workers/tokens",
            json!({"tags": ["pool,a"]}),
        )
        .await;
    assert_eq!(status, 400, "{body}");

    let (token, _) = mint(&hub, &admin, json!({"name": "tags"})).await;
    let err = FakeAgent::connect_tagged(&hub, &token, "t-1", 1, vec![], vec!["a b".into()])
        .await
        .err()
        .expect("the hub refuses the agent's tag");
    assert!(err.to_string().contains("invalid_tags"), "{err}");
    // `cmdx agent` says so itself, before it connects anywhere.
    let out = tokio::process::Command::new(cmdx_bin())
        .args(["agent", "--hub", &hub.url, "--tags", "gpu,has space"])
        .env("CMDX_AGENT_TOKEN", &token)
        .output()
        .await
        .expect("run cmdx agent");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("--tags: tag \"has space\" has a comma, a space"),
        "{stderr}"
    );
}

/// Revoking one token (REST and CLI): it is listed (never its secret) with its agent, the revoke
/// closes the agent's session within a second with a clear reason, the token cannot reconnect or
/// make a REST call, and other tokens go on working. Expired token records go with the janitor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_is_refused_and_its_sessions_close_within_a_second() {
    let hub = HubProc::start(FAST).await;
    let admin = hub.admin().await;
    let (doomed, doomed_id) = mint(&hub, &admin, json!({"name": "doomed"})).await;
    let (kept, kept_id) = mint(&hub, &admin, json!({"name": "kept"})).await;
    let (mut agent, _) = FakeAgent::connect(&hub, &doomed, "rev-agent", 1, vec![])
        .await
        .unwrap();
    let (mut other, _) = FakeAgent::connect(&hub, &kept, "kept-agent", 1, vec![])
        .await
        .unwrap();

    let cli = |args: &[&str]| {
        let out = std::process::Command::new(cmdx_bin())
            .args(args)
            .args(["--hub", &hub.url])
            .env("CMDX_TOKEN", &admin)
            .env("CMDX_CONFIG", "/nonexistent/cmdx.toml")
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        (
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (listed, _) = cli(&["token", "list", "--json"]);
    let list: Value = serde_json::from_str(&listed).unwrap();
    let row = list["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tokenId"] == doomed_id.as_str())
        .expect("the token is listed");
    assert_eq!(row["name"], "doomed");
    assert_eq!(row["workers"], json!(["rev-agent"]));
    assert!(!listed.contains(&doomed), "the list shows a token's secret");

    let started = Instant::now();
    let (_, said) = cli(&["token", "revoke", &doomed_id]);
    assert!(said.contains("1 agent session"), "{said}");
    let err = agent.recv().await.expect_err("the session is closed");
    let elapsed = started.elapsed();
    assert!(err.to_string().contains("worker token revoked"), "{err}");
    assert!(elapsed < Duration::from_secs(2), "closed after {elapsed:?}");

    // It cannot come back, by WebSocket or REST.
    let mut req = hub.ws_url("/ws/agent").into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {doomed}").parse().unwrap());
    assert!(tokio_tungstenite::connect_async(req).await.is_err());
    let r = hub
        .http
        .get(format!("{}/api/jobs/get-job?workerId=rev-agent", hub.url))
        .header("x-worker-token", &doomed)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let (s, _) = delete(&hub, &admin, &format!("/api/workers/tokens/{doomed_id}")).await;
    assert_eq!(s, 404, "a second revoke finds nothing");
    let (s, _) = delete(
        &hub,
        "not-a-session",
        &format!("/api/workers/tokens/{kept_id}"),
    )
    .await;
    assert_eq!(s, 401);

    // The other token's agent is untouched.
    let job = hub.submit(&admin, json!({"command": "true"})).await;
    assert_eq!(other.next_assignment().await.unwrap().job_id, job);

    // An expired token record is dropped by the janitor.
    let (_, short_id) = mint(&hub, &admin, json!({"name": "short", "ttlSecs": 1})).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let report = hub.post_json(&admin, "/api/admin/janitor", json!({})).await;
    assert!(report["tokensDeleted"].as_u64().unwrap() >= 1, "{report}");
    let (_, v) = hub.get(&admin, "/api/workers/tokens").await;
    let ids: Vec<&str> = v["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["tokenId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![kept_id.as_str()], "{v}");
    assert!(!ids.contains(&short_id.as_str()));
}

/// Another tenant's job ids are not on the worker list or the workers feed: a user sees a busy
/// slot, not whose job fills it; the job's owner and admins see the id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_views_show_job_ids_only_to_their_owners_and_admins() {
    let hub = HubProc::start(FAST).await;
    let admin = hub.admin().await;
    let alice = hub.user(&admin, "alice-w@test.local").await;
    let bob = hub.user(&admin, "bob-w@test.local").await;
    let wt = hub.worker_token(&admin).await;
    let (mut agent, _) = FakeAgent::connect(&hub, &wt, "shared", 2, vec![])
        .await
        .unwrap();
    let job = hub.submit(&alice, json!({"command": "sleep 60"})).await;
    assert_eq!(agent.next_assignment().await.unwrap().job_id, job);
    let current = |v: &Value| v["workers"][0]["currentJobs"].clone();
    let (_, v) = hub.get(&alice, "/api/workers/list").await;
    assert_eq!(current(&v), json!([job]));
    let (_, v) = hub.get(&admin, "/api/workers/list").await;
    assert_eq!(current(&v), json!([job]));
    let (_, v) = hub.get(&bob, "/api/workers/list").await;
    assert_eq!(current(&v), json!([]), "bob sees alice's job id: {v}");
    assert_eq!(v["workers"][0]["slotsUsed"], 1);

    // The feed's snapshot and its live events, as bob.
    let mut req = hub.ws_url("/ws/client").into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {bob}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    ws.send(Message::text(r#"{"type":"subscribeWorkers"}"#))
        .await
        .unwrap();
    // A second agent connecting makes a live worker event; the first's snapshot came before.
    let (_second, _) = FakeAgent::connect(&hub, &wt, "second", 1, vec![])
        .await
        .unwrap();
    let mut seen = Vec::new();
    let until = tokio::time::Instant::now() + Duration::from_secs(2);
    while let Ok(Some(Ok(m))) = tokio::time::timeout_at(until, ws.next()).await {
        if let Message::Text(t) = m {
            seen.push(t.to_string());
        }
    }
    assert!(seen.iter().any(|t| t.contains("\"shared\"")), "{seen:?}");
    assert!(
        !seen.iter().any(|t| t.contains(&job)),
        "bob's feed carries alice's job id: {seen:?}"
    );
    drop(agent);
}
