//! Hubs on PostgreSQL (`cmdx hub --store postgres://…`), played as an operator would: a hub
//! `kill -9`ed and restarted on the database, a second hub on the same database that must
//! accept what the first issued, and the database itself going away under a hub.

use cmdx_e2e::pg;
use cmdx_e2e::{AgentProc, HubProc, traversable_tempdir, wait_for};
use serde_json::json;

use crate::FAST;

/// FAST flags plus `--store URL`.
fn on(url: &str) -> Vec<&str> {
    let mut flags = FAST.to_vec();
    flags.extend(["--store", url]);
    flags
}

/// A real agent runs a job for a hub on PostgreSQL; the hub is killed with SIGKILL and
/// restarted with an empty data folder of its own (all it knows comes from the database): the
/// job, its output, the user's session and the worker token are all still there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_on_postgres_keeps_everything_in_the_database() {
    let url = pg::fresh_database("one_hub").expect("private PostgreSQL");
    let mut hub = HubProc::start(&on(&url)).await;
    let admin = hub.admin().await;
    let wt = hub.worker_token(&admin).await;
    let user = hub.user(&admin, "alice@test.local").await;
    let work = traversable_tempdir();
    let mut agent = AgentProc::start(&hub, &wt, "pg-agent", &work.path().join("a"), 51_000).await;
    let id = hub
        .submit(
            &user,
            json!({"command": "for i in 1 2 3; do echo line $i; done"}),
        )
        .await;
    let done = hub.wait_status(&user, &id, "completed").await;
    assert_eq!(done["exitCode"], 0, "{done}");
    let output = |hub: &HubProc| {
        let (http, url, user, id) = (hub.http.clone(), hub.url.clone(), user.clone(), id.clone());
        async move {
            http.get(format!("{url}/api/jobs/{id}/output?offset=0"))
                .bearer_auth(&user)
                .send()
                .await
                .expect("output")
                .text()
                .await
                .expect("text")
        }
    };
    let before = output(&hub).await;
    assert!(before.contains("line 3"), "{before}");

    hub.kill9().await;
    // A new machine: nothing of the old hub's data folder.
    std::fs::remove_dir_all(&hub.data).expect("wipe the data folder");
    hub.restart().await;
    assert_eq!(
        hub.job(&user, &id).await["status"],
        "completed",
        "the session still holds"
    );
    assert_eq!(output(&hub).await, before, "the output is whole");
    // The agent reconnects to the restarted hub with its old token and runs a new job.
    let again = hub.submit(&user, json!({"command": "echo again"})).await;
    let done = hub.wait_status(&user, &again, "completed").await;
    assert_eq!(done["exitCode"], 0, "{done}");
    agent.kill9().await;
}

/// Two hubs on one database: a session, a user and a worker token issued by hub A are good on
/// hub B; a job submitted on A is seen on B; a sign-out on B holds on A after A restarts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hubs_on_one_database_accept_each_others_credentials() {
    let url = pg::fresh_database("two_hubs_e2e").expect("private PostgreSQL");
    let flags = on(&url);
    let (mut a, b) = tokio::join!(HubProc::start(&flags), HubProc::start(&flags));
    let admin_a = a.admin().await;
    let (status, me) = b.get(&admin_a, "/api/auth/me").await;
    assert_eq!(status, 200, "A's session is good on B: {me}");
    let alice = a.user(&admin_a, "alice@test.local").await;
    let alice_on_b = b.login("alice@test.local", "user-password-1").await;
    let id = a.submit(&alice, json!({"command": "echo from a"})).await;
    assert_eq!(b.job(&alice_on_b, &id).await["status"], "queued");
    let (status, list) = b.get(&alice, "/api/jobs/list").await;
    assert_eq!(status, 200);
    assert_eq!(list["jobs"][0]["jobId"], id.as_str());
    // A worker token minted on A enrols an agent on B, which runs A's job.
    let wt = a.worker_token(&admin_a).await;
    let work = traversable_tempdir();
    let mut agent = AgentProc::start(&b, &wt, "on-b", &work.path().join("b"), 52_000).await;
    // B learns of A's queued job (today at the latest when it restarts; see ARCHITECTURE).
    let b2 = HubProc::start(&flags).await;
    let mut agent2 = AgentProc::start(&b2, &wt, "on-b2", &work.path().join("c"), 53_000).await;
    let done = b.wait_status(&alice_on_b, &id, "completed").await;
    assert_eq!(done["exitCode"], 0, "{done}");
    // Signing out on B is known to A once A restarts (the revocation is in the database).
    let r = b
        .http
        .post(format!("{}/api/auth/logout", b.url))
        .bearer_auth(&alice_on_b)
        .send()
        .await
        .expect("logout");
    assert!(r.status().is_success(), "{}", r.status());
    a.kill9().await;
    a.restart().await;
    let (status, _) = a.get(&alice_on_b, "/api/auth/me").await;
    assert_eq!(status, 401, "signed out everywhere");
    agent.kill9().await;
    agent2.kill9().await;
}

/// The database goes away under a running hub: `/readyz` says 503, a submission gets 503 with
/// `Retry-After` (not a 500, and nothing half-written), and once the database is back the hub
/// serves again by itself, with everything acknowledged before still there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_whose_database_is_down_answers_503_and_recovers() {
    let mut server = pg::PrivateServer::start().expect("private PostgreSQL");
    let url = server.create_database("outage").expect("database");
    let hub = HubProc::start(&on(&url)).await;
    let admin = hub.admin().await;
    let before = hub.submit(&admin, json!({"command": "echo before"})).await;
    server.stop(true);
    let ready = hub
        .http
        .get(format!("{}/readyz", hub.url))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 503);
    let r = hub
        .http
        .post(format!("{}/api/jobs/submit", hub.url))
        .bearer_auth(&admin)
        .json(&json!({"command": "echo during"}))
        .send()
        .await
        .expect("submit");
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"), "{:?}", r.headers());
    server.resume().expect("database back");
    let after = wait_for("the hub serves again", || async {
        let r = hub
            .http
            .post(format!("{}/api/jobs/submit", hub.url))
            .bearer_auth(&admin)
            .json(&json!({"command": "echo after"}))
            .send()
            .await
            .ok()?;
        if r.status() != 201 {
            return None;
        }
        let v: serde_json::Value = r.json().await.ok()?;
        Some(v["jobId"].as_str()?.to_string())
    })
    .await;
    assert_eq!(hub.job(&admin, &after).await["status"], "queued");
    let (_, list) = hub.get(&admin, "/api/jobs/list").await;
    assert_eq!(
        list["jobs"].as_array().map(Vec::len),
        Some(2),
        "the refused submission left nothing behind: {list}"
    );
    assert_eq!(hub.job(&admin, &before).await["status"], "queued");
}
