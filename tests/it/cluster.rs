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
    let mut agent = AgentProc::start(&hub, &wt, "pg-agent", &work.path().join("a"), 60_000).await;
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
/// hub B; a job submitted on A runs at once on an agent connected to B (A tells B it queued
/// it); a cancel issued on A reaches the agent on B, which ends the job itself; a drain on A
/// reaches it too; a sign-out on B holds on A after A restarts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hubs_on_one_database_share_credentials_queue_and_control() {
    let url = pg::fresh_database("two_hubs_e2e").expect("private PostgreSQL");
    let flags = on(&url);
    let (mut a, b) = tokio::join!(HubProc::start(&flags), HubProc::start(&flags));
    let admin_a = a.admin().await;
    let (status, me) = b.get(&admin_a, "/api/auth/me").await;
    assert_eq!(status, 200, "A's session is good on B: {me}");
    let alice = a.user(&admin_a, "alice@test.local").await;
    let alice_on_b = b.login("alice@test.local", "user-password-1").await;
    // A worker token minted on A enrols an agent on B.
    let wt = a.worker_token(&admin_a).await;
    let work = traversable_tempdir();
    let mut agent = AgentProc::start(&b, &wt, "on-b", &work.path().join("b"), 60_100).await;
    let id = a.submit(&alice, json!({"command": "echo from a"})).await;
    let done = b.wait_status(&alice_on_b, &id, "completed").await;
    assert_eq!(done["exitCode"], 0, "{done}");
    assert_eq!(done["workerId"], "on-b");
    assert_eq!(
        a.job(&alice, &id).await["stdout"],
        "from a\n",
        "A serves B's output"
    );
    // A lists the agent B holds, with the hub holding it and the same hub name B gives.
    let (_, on_a) = a.get(&admin_a, "/api/workers/list").await;
    let (_, on_b) = b.get(&admin_a, "/api/workers/list").await;
    let find = |list: &serde_json::Value| {
        list["workers"]
            .as_array()
            .and_then(|ws| ws.iter().find(|w| w["workerId"] == "on-b").cloned())
    };
    let (seen_a, seen_b) = (
        find(&on_a).expect("listed on A"),
        find(&on_b).expect("on B"),
    );
    assert_eq!(seen_a["status"], "online", "{seen_a}");
    assert!(seen_a["hub"].is_string(), "{seen_a}");
    assert_eq!(
        seen_a["hub"], seen_b["hub"],
        "one name for the hub holding it"
    );
    let (status, list) = b.get(&alice, "/api/jobs/list").await;
    assert_eq!(status, 200);
    assert_eq!(list["jobs"][0]["jobId"], id.as_str());

    // Cancel on A, agent on B: the agent is told and reports the end itself (a forced end by
    // the cancel watchdog would carry no exit code or signal).
    let long = a
        .submit(&alice, json!({"command": "echo started; sleep 1000"}))
        .await;
    wait_for("the long job's output", || async {
        (a.job(&alice, &long).await["stdout"] == "started\n").then_some(())
    })
    .await;
    // A lists what the agent B holds is busy with.
    let (_, on_a) = a.get(&admin_a, "/api/workers/list").await;
    let seen = find(&on_a).expect("listed on A");
    assert_eq!(seen["currentJobs"], json!([long]), "{seen}");
    assert_eq!(seen["slotsUsed"], 1, "{seen}");
    a.post_json(&alice, "/api/jobs/cancel", json!({"jobId": long}))
        .await;
    let v = a.wait_status(&alice, &long, "cancelled").await;
    assert!(
        v["signal"].is_number() || v["exitCode"].is_number(),
        "the agent ended it: {v}"
    );

    // Drain on A: the agent on B takes no more jobs.
    let r = a
        .http
        .post(format!("{}/api/workers/on-b/drain", a.url))
        .bearer_auth(&admin_a)
        .send()
        .await
        .expect("drain");
    assert_eq!(r.status(), 200);
    wait_for("the drain reaches the agent", || async {
        let (_, w) = b.get(&admin_a, "/api/workers/list").await;
        w["workers"]
            .as_array()?
            .iter()
            .any(|w| w["workerId"] == "on-b" && w["status"] == "draining")
            .then_some(())
    })
    .await;
    // A job submitted on B waits: B, which holds the agent, gives it nothing (a hub of a
    // cluster gives no no-worker verdict, so this looks a moment later). A resume on B
    // reaches A's view and the agent takes the job.
    let waiting = b
        .submit(&alice_on_b, json!({"command": "echo resumed"}))
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let v = b.job(&alice_on_b, &waiting).await;
    assert_eq!(v["status"], "queued", "{v}");
    let (status, body) = b
        .send_json(
            &admin_a,
            reqwest::Method::POST,
            "/api/workers/on-b/resume",
            json!({}),
        )
        .await;
    assert_eq!((status, &body["wasDrained"]), (200, &json!(true)), "{body}");
    let done = a.wait_status(&alice, &waiting, "completed").await;
    assert_eq!(done["workerId"], "on-b", "{done}");
    wait_for("the resume reaches A", || async {
        let (_, w) = a.get(&admin_a, "/api/workers/list").await;
        let w = find(&w)?;
        (w["status"] == "online" && w.get("drainedBy").is_none()).then_some(())
    })
    .await;

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

/// The cluster's must-show: two hubs on one database; an agent given both URLs works through
/// A; a job submitted and watched on B; A is `kill -9`ed mid-job: the agent moves to B and
/// resumes there, and the job completes once with its whole output. Then A comes back and a
/// cancel issued through it reaches the agent on B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_hub_loses_nothing_its_agent_resumes_on_another() {
    let url = pg::fresh_database("failover").expect("private PostgreSQL");
    let flags = on(&url);
    let (mut a, b) = tokio::join!(HubProc::start(&flags), HubProc::start(&flags));
    let admin = b.admin().await;
    let wt = b.worker_token(&admin).await;
    let work = traversable_tempdir();
    let mut agent = AgentProc::start_on(
        &format!("{},{}", a.url, b.url),
        &wt,
        "mover",
        &work.path().join("m"),
        60_200,
    )
    .await;
    let admin_a = a.admin().await;
    wait_for(
        "the agent connects to A, the first hub of its list",
        || async {
            let (_, w) = a.get(&admin_a, "/api/workers/list").await;
            w["workers"]
                .as_array()?
                .iter()
                .any(|w| w["workerId"] == "mover" && w["status"] == "online")
                .then_some(())
        },
    )
    .await;
    let id = b
        .submit(
            &admin,
            json!({"command": "for i in $(seq 1 40); do echo line $i; sleep 0.05; done"}),
        )
        .await;
    wait_for("output before the kill", || async {
        let v = b.job(&admin, &id).await;
        v["stdout"].as_str()?.contains("line 3\n").then_some(())
    })
    .await;
    a.kill9().await;
    let done = b.wait_status(&admin, &id, "completed").await;
    let expected: String = (1..=40).map(|i| format!("line {i}\n")).collect();
    assert_eq!(done["stdout"], expected.as_str(), "whole, once, in order");
    assert_eq!(
        done["attempt"], 1,
        "completed by the attempt that started on A"
    );
    assert_eq!(done["exitCode"], 0);

    // A comes back; a cancel issued through it reaches the agent, which now lives on B.
    a.restart().await;
    let admin_a = a.admin().await;
    let long = b
        .submit(&admin, json!({"command": "echo started; sleep 1000"}))
        .await;
    wait_for("the long job's output", || async {
        (b.job(&admin, &long).await["stdout"] == "started\n").then_some(())
    })
    .await;
    a.post_json(&admin_a, "/api/jobs/cancel", json!({"jobId": long}))
        .await;
    let v = a.wait_status(&admin_a, &long, "cancelled").await;
    assert!(
        v["signal"].is_number() || v["exitCode"].is_number(),
        "the agent ended it: {v}"
    );
    agent.kill9().await;
}

/// A hub dies with its agent: nobody comes back for the job. Another hub of the cluster sees,
/// by the database's clock, that no hub has held the worker for longer than the reconnect
/// grace, and requeues the job, which another agent runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_hub_and_agent_both_died_is_requeued_by_a_live_hub() {
    let url = pg::fresh_database("orphans").expect("private PostgreSQL");
    let flags = on(&url);
    let (mut a, b) = tokio::join!(HubProc::start(&flags), HubProc::start(&flags));
    let admin = b.admin().await;
    let wt = b.worker_token(&admin).await;
    let work = traversable_tempdir();
    let mut doomed = AgentProc::start(&a, &wt, "doomed", &work.path().join("d"), 60_300).await;
    let id = b
        .submit(&admin, json!({"command": "echo go; sleep 1000"}))
        .await;
    wait_for("the job runs on A's agent", || async {
        let v = b.job(&admin, &id).await;
        (v["status"] == "running" && v["workerId"] == "doomed").then_some(())
    })
    .await;
    doomed.kill9().await;
    a.kill9().await;
    let mut rescuer = AgentProc::start(&b, &wt, "rescuer", &work.path().join("r"), 60_400).await;
    let v = cmdx_e2e::wait_for_within(
        "another hub requeues the orphaned job",
        std::time::Duration::from_secs(60),
        || async {
            let v = b.job(&admin, &id).await;
            (v["workerId"] == "rescuer" && v["status"] == "running").then_some(v)
        },
    )
    .await;
    assert_eq!(v["attempt"], 2, "the lost attempt counted: {v}");
    rescuer.kill9().await;
}

/// Uploads and artifacts live in the database: a ZIP uploaded through hub A is run by an agent
/// that downloads it from hub B, and the artifacts it uploads to B are served by A. A backup
/// of a hub on PostgreSQL is refused with where to look instead (pg_dump).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_and_artifacts_cross_hubs() {
    let url = pg::fresh_database("blobs").expect("private PostgreSQL");
    let flags = on(&url);
    let (a, b) = tokio::join!(HubProc::start(&flags), HubProc::start(&flags));
    let admin = a.admin().await;
    let wt = a.worker_token(&admin).await;
    let work = traversable_tempdir();
    let mut agent = AgentProc::start(&b, &wt, "blob-agent", &work.path().join("a"), 60_500).await;
    // More than one 1 MiB part in the database.
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let zip = cmdx_e2e::zip_bytes(&[("hello.txt", b"hello from A\n"), ("big.bin", &big)]);
    let file_id = a.upload_zip(&admin, zip).await;
    let id = a
        .submit(
            &admin,
            json!({
                "command": "cat hello.txt; wc -c < big.bin; mkdir out; cp big.bin out/",
                "fileId": file_id,
                "artifacts": ["out/*"],
            }),
        )
        .await;
    let done = a.wait_status(&admin, &id, "completed").await;
    assert_eq!(done["stdout"], "hello from A\n3000000\n", "{done}");
    assert_eq!(done["workerId"], "blob-agent");
    let r = a
        .http
        .get(format!("{}/api/jobs/{id}/artifacts/out/big.bin", a.url))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("artifact");
    assert_eq!(r.status(), 200);
    assert!(
        r.bytes().await.expect("bytes").as_ref() == big.as_slice(),
        "the same bytes"
    );
    let r = a
        .http
        .get(format!("{}/api/admin/backup", a.url))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("backup");
    assert_eq!(r.status(), 501);
    assert!(r.text().await.unwrap_or_default().contains("pg_dump"));
    agent.kill9().await;
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Three hubs on one fresh database named `db`.
async fn three_hubs(db: &str) -> (HubProc, HubProc, HubProc) {
    let url = pg::fresh_database(db).expect("private PostgreSQL");
    let flags = on(&url);
    tokio::join!(
        HubProc::start(&flags),
        HubProc::start(&flags),
        HubProc::start(&flags)
    )
}

/// A `/ws/client` socket following `job_id` from `offset`.
async fn follow(hub: &HubProc, token: &str, job_id: &str, offset: u64) -> Ws {
    client_socket(
        hub,
        token,
        cmdx_proto::client::ClientMsg::SubscribeOutput {
            job_id: job_id.to_string(),
            offset,
        },
    )
    .await
}

/// A `/ws/client` socket that has sent `first`.
async fn client_socket(hub: &HubProc, token: &str, first: cmdx_proto::client::ClientMsg) -> Ws {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = hub.ws_url("/ws/client").into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let mut ws = tokio_tungstenite::connect_async(req).await.unwrap().0;
    ws.send(tokio_tungstenite::tungstenite::Message::text(
        serde_json::to_string(&first).unwrap(),
    ))
    .await
    .unwrap();
    ws
}

/// The statuses `job_id` goes through on a jobs feed, until it is `last`.
async fn statuses_until(feed: &mut Ws, job_id: &str, last: &str) -> Vec<String> {
    use futures_util::StreamExt;
    let mut seen = Vec::new();
    // One deadline for the whole wait: the hub's pings must not keep it going.
    let deadline = tokio::time::Instant::now() + cmdx_e2e::WAIT;
    while seen.last().is_none_or(|s| s != last) {
        let m = tokio::time::timeout_at(deadline, feed.next())
            .await
            .unwrap_or_else(|_| panic!("{job_id} never became {last}: {seen:?}"))
            .expect("socket open")
            .expect("frame");
        let tokio_tungstenite::tungstenite::Message::Text(t) = m else {
            continue;
        };
        let v: serde_json::Value = serde_json::from_str(&t).unwrap();
        if v["type"] == "job" && v["jobId"] == job_id {
            seen.push(v["status"].as_str().unwrap().to_string());
        }
    }
    seen
}

/// A dashboard on hub C sees live every change of a job submitted on A and run by an agent on
/// B (each hub rereads a job another hub changed when a client of its own is watching).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_changes_reach_dashboards_on_every_hub() {
    let (a, b, c) = three_hubs("job_feed").await;
    let admin = a.admin().await;
    let wt = a.worker_token(&admin).await;
    let mut feed = client_socket(&c, &admin, cmdx_proto::client::ClientMsg::SubscribeJobs).await;
    // The feed is on once it shows a job submitted on C itself; a probe submitted before the
    // subscription took effect is never shown, so probe until one is.
    let mut on = false;
    for _ in 0..30 {
        let probe = c
            .submit(&admin, json!({"command": "probe", "tags": ["nobody"]}))
            .await;
        let seen = tokio::time::timeout(
            std::time::Duration::from_secs(1),
            statuses_until(&mut feed, &probe, "queued"),
        )
        .await;
        if let Ok(seen) = seen {
            assert_eq!(seen, ["queued"]);
            on = true;
            break;
        }
    }
    assert!(on, "the jobs feed on C never showed a job");

    // Each step waits for C to show it: queued (on A), assigned and running (on B), completed.
    let id = a.submit(&admin, json!({"command": "elsewhere"})).await;
    assert_eq!(statuses_until(&mut feed, &id, "queued").await, ["queued"]);
    let (mut agent, _) = cmdx_e2e::FakeAgent::connect(&b, &wt, "on-b", 1, vec![])
        .await
        .unwrap();
    let asg = agent.start_next().await.unwrap();
    assert_eq!(asg.job_id, id);
    let seen = statuses_until(&mut feed, &id, "running").await;
    assert!(
        seen.iter().all(|s| s == "assigned" || s == "running"),
        "{seen:?}"
    );
    agent.finish(&id, asg.attempt, 0, 0).await.unwrap();
    assert_eq!(
        statuses_until(&mut feed, &id, "completed").await,
        ["completed"]
    );
}

/// Reads output into `got` (checking each message starts where the last ended) until it holds
/// `until` bytes, or until `outputEnd` when `until` is `None`.
async fn read_output(ws: &mut Ws, got: &mut Vec<u8>, start: u64, until: Option<usize>) {
    use cmdx_proto::client::ServerMsg;
    use futures_util::StreamExt;
    while until.is_none_or(|n| got.len() < n) {
        let m = tokio::time::timeout(cmdx_e2e::WAIT, ws.next())
            .await
            .expect("output in time")
            .expect("socket open")
            .expect("message");
        let tokio_tungstenite::tungstenite::Message::Text(t) = m else {
            continue;
        };
        match serde_json::from_str::<ServerMsg>(&t).unwrap() {
            ServerMsg::Output { offset, data, .. } => {
                assert_eq!(offset, start + got.len() as u64, "gap or duplicate");
                got.extend_from_slice(&data);
            }
            ServerMsg::OutputEnd { .. } if until.is_none() => return,
            ServerMsg::OutputEnd { .. } => panic!("ended before {until:?} bytes"),
            ServerMsg::Error(e) => panic!("error {e:?}"),
            _ => {}
        }
    }
}

/// Output across hubs: a job submitted on A runs on an agent connected to B and is watched on
/// C, live (the first half arrives on C before the agent has sent the second), with no gap and
/// no duplicate, by a watcher there from the start, one joining mid-stream and one from an
/// offset after the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_streams_live_to_watchers_on_another_hub() {
    use cmdx_proto::agent::{AgentMsg, Finished, OutputChunk};
    let (a, b, c) = three_hubs("relay").await;
    let admin = a.admin().await;
    let wt = a.worker_token(&admin).await;
    let id = a.submit(&admin, json!({"command": "stream"})).await;
    let (mut agent, _) = cmdx_e2e::FakeAgent::connect(&b, &wt, "streamer", 1, vec![])
        .await
        .unwrap();
    let asg = agent.next_assignment().await.unwrap();
    assert_eq!(asg.job_id, id);
    let mut early = follow(&c, &admin, &id, 0).await;
    const N: u64 = 2000;
    let line = |seq: u64| format!("line {seq:05} {}\n", "z".repeat((seq % 40) as usize));
    let expected: Vec<u8> = (0..N).flat_map(|s| line(s).into_bytes()).collect();
    let half: usize = (0..N / 2).map(|s| line(s).len()).sum();
    let chunk = |seq: u64| {
        AgentMsg::Output(OutputChunk {
            job_id: id.clone(),
            attempt: 1,
            seq,
            stream: cmdx_proto::StreamKind::Stdout,
            data: line(seq).into_bytes().into(),
        })
    };
    for seq in 0..N / 2 {
        agent.send(&chunk(seq)).await.unwrap();
    }
    let mut got_early = Vec::new();
    read_output(&mut early, &mut got_early, 0, Some(half)).await;
    let mut late = follow(&c, &admin, &id, 0).await;
    for seq in N / 2..N {
        agent.send(&chunk(seq)).await.unwrap();
    }
    agent
        .send(&AgentMsg::Finished(Finished {
            job_id: id.clone(),
            attempt: 1,
            chunks: N,
            outcome: cmdx_proto::Outcome {
                exit_code: Some(0),
                ..Default::default()
            },
        }))
        .await
        .unwrap();
    read_output(&mut early, &mut got_early, 0, None).await;
    assert!(got_early == expected, "the early watcher's bytes differ");
    let mut got_late = Vec::new();
    read_output(&mut late, &mut got_late, 0, None).await;
    assert!(got_late == expected, "the late watcher's bytes differ");
    let from = expected.len() as u64 - 50;
    let mut tail = follow(&c, &admin, &id, from).await;
    let mut got_tail = Vec::new();
    read_output(&mut tail, &mut got_tail, from, None).await;
    assert_eq!(got_tail, expected[expected.len() - 50..].to_vec());
}

/// Growing up: a sled hub with history (a user, a finished job with output, an uploaded file, a
/// worker token, a signed-in session) is stopped and `cmdx migrate`d into PostgreSQL; a hub on
/// the database, on a fresh data folder, has it all, and the old session and worker token
/// still work. A second migration into the now full database is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cmdx_migrate_moves_a_sled_hub_into_postgres() {
    let mut old = HubProc::start(FAST).await;
    let admin = old.admin().await;
    let wt = old.worker_token(&admin).await;
    let alice = old.user(&admin, "alice@test.local").await;
    let file_id = old
        .upload_zip(&alice, cmdx_e2e::zip_bytes(&[("a.txt", b"kept\n")]))
        .await;
    let id = old
        .submit(&alice, json!({"command": "cat a.txt", "fileId": file_id}))
        .await;
    let (mut agent, _) = cmdx_e2e::FakeAgent::connect(&old, &wt, "w-old", 1, vec![])
        .await
        .unwrap();
    agent.next_assignment().await.unwrap();
    agent
        .send(&cmdx_proto::agent::AgentMsg::Output(
            cmdx_proto::agent::OutputChunk {
                job_id: id.clone(),
                attempt: 1,
                seq: 0,
                stream: cmdx_proto::StreamKind::Stdout,
                data: b"kept\n".to_vec().into(),
            },
        ))
        .await
        .unwrap();
    agent.finish(&id, 1, 1, 0).await.unwrap();
    drop(agent);
    assert_eq!(old.terminate().await, Some(0));

    let url = pg::fresh_database("migrate").expect("private PostgreSQL");
    let run = |url: String, data: std::path::PathBuf| async move {
        tokio::process::Command::new(cmdx_e2e::cmdx_bin())
            .args(["migrate", "--from"])
            .arg(&data)
            .args(["--to", &url])
            .output()
            .await
            .expect("cmdx migrate")
    };
    let out = run(url.clone(), old.data.clone()).await;
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{said}");
    assert!(said.contains("1 jobs"), "{said}");

    let new = HubProc::start(&on(&url)).await;
    let (status, me) = new.get(&alice, "/api/auth/me").await;
    assert_eq!(status, 200, "the sled hub's session still works: {me}");
    let job = new.job(&alice, &id).await;
    assert_eq!(job["status"], "completed");
    assert_eq!(job["stdout"], "kept\n");
    let r = new
        .http
        .get(format!("{}/api/files/download/{file_id}", new.url))
        .bearer_auth(&alice)
        .send()
        .await
        .expect("download");
    assert_eq!(r.status(), 200, "the uploaded file came along");
    let (_agent, welcome) = cmdx_e2e::FakeAgent::connect(&new, &wt, "w-old", 1, vec![])
        .await
        .expect("the old worker token still enrols");
    assert_eq!(welcome.worker_id, "w-old");

    let again = run(url, old.data.clone()).await;
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("empty database"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
}

/// PostgreSQL restarted under load: 8 clients submit without pause while the database is
/// `kill -9`ed and started again, and an agent keeps taking jobs. Every submission answered 201
/// is there afterwards and runs to completion; the others got 503 (never a 500), and the hub
/// took up work again by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_under_load_loses_no_acknowledged_job() {
    let mut server = pg::PrivateServer::start().expect("private PostgreSQL");
    let url = server.create_database("restart").expect("database");
    let hub = HubProc::start(&on(&url)).await;
    let admin = hub.admin().await;
    let wt = hub.worker_token(&admin).await;
    let work = traversable_tempdir();
    let mut agent = AgentProc::start(&hub, &wt, "steady", &work.path().join("s"), 60_600).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut submitters = tokio::task::JoinSet::new();
    for t in 0..8 {
        let (http, base, token, stop) = (
            hub.http.clone(),
            hub.url.clone(),
            admin.clone(),
            stop.clone(),
        );
        submitters.spawn(async move {
            let (mut acked, mut refused) = (Vec::new(), 0u32);
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                let r = http
                    .post(format!("{base}/api/jobs/submit"))
                    .bearer_auth(&token)
                    .json(&json!({"command": format!("echo {t}-{i}")}))
                    .send()
                    .await
                    .expect("the hub answers");
                match r.status().as_u16() {
                    201 => {
                        let v: serde_json::Value = r.json().await.expect("json");
                        acked.push(v["jobId"].as_str().expect("id").to_string());
                    }
                    503 => {
                        refused += 1;
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    }
                    other => panic!("submission answered {other}"),
                }
            }
            (acked, refused)
        });
    }
    wait_for("submissions before the crash", || async {
        let (_, v) = hub.get(&admin, "/api/jobs/list?limit=50").await;
        (v["jobs"].as_array()?.len() >= 50).then_some(())
    })
    .await;
    server.stop(true);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    server.resume().expect("the database restarts");
    wait_for("submissions after the restart", || async {
        let r = hub
            .http
            .post(format!("{}/api/jobs/submit", hub.url))
            .bearer_auth(&admin)
            .json(&json!({"command": "echo probe"}))
            .send()
            .await
            .ok()?;
        (r.status() == 201).then_some(())
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut acked, mut refused) = (Vec::new(), 0);
    while let Some(r) = submitters.join_next().await {
        let (a, n) = r.expect("submitter");
        acked.extend(a);
        refused += n;
    }
    eprintln!(
        "acknowledged {}, refused with 503 while the database was down {refused}",
        acked.len()
    );
    assert!(refused > 0, "the crash was seen");
    let deadline = std::time::Instant::now() + cmdx_e2e::WAIT;
    for id in &acked {
        loop {
            let job = hub.job(&admin, id).await;
            if job["status"] == "completed" {
                break;
            }
            if std::time::Instant::now() > deadline {
                let (_, workers) = hub.get(&admin, "/api/workers/list").await;
                panic!("acknowledged job {id} did not complete: {job}\nworkers: {workers}");
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    agent.kill9().await;
}

/// Two hubs on one database: an admin disables a user through hub A, and the user's session on
/// hub B answers 401 and its open socket there closes; a sign-out through A ends the session on
/// B too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_changes_and_sign_outs_reach_every_hub() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let url = pg::fresh_database("users_two_hubs").expect("private PostgreSQL");
    let flags = on(&url);
    let (a, b) = tokio::join!(HubProc::start(&flags), HubProc::start(&flags));
    let admin = a.admin().await;
    let frank = a.user(&admin, "frank@test.local").await;
    let frank_b = b.login("frank@test.local", "user-password-1").await;
    let id = a.user_id(&admin, "frank@test.local").await;
    let mut req = b.ws_url("/ws/client").into_client_request().unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {frank_b}").parse().unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    ws.send(Message::text(r#"{"type":"subscribeJobs"}"#))
        .await
        .unwrap();
    assert_eq!(b.get(&frank_b, "/api/jobs/list").await.0, 200);

    let path = format!("/api/users/{id}");
    let (status, _) = a
        .send_json(
            &admin,
            reqwest::Method::PATCH,
            &path,
            json!({"disabled": true}),
        )
        .await;
    assert_eq!(status, 200);
    wait_for("hub B to end frank's session", || async {
        (b.get(&frank_b, "/api/jobs/list").await.0 == 401).then_some(())
    })
    .await;
    let closed = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                _ => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "frank's socket on hub B stayed open");
    assert_eq!(a.get(&frank, "/api/jobs/list").await.0, 401);

    // A sign-out through A ends that session on B as well.
    let admin_b = b
        .login(cmdx_e2e::ADMIN_EMAIL, cmdx_e2e::ADMIN_PASSWORD)
        .await;
    assert_eq!(b.get(&admin_b, "/api/jobs/list").await.0, 200);
    let r = a
        .http
        .post(format!("{}/api/auth/logout", a.url))
        .bearer_auth(&admin_b)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    wait_for("hub B to hear of the sign-out", || async {
        (b.get(&admin_b, "/api/jobs/list").await.0 == 401).then_some(())
    })
    .await;
}
