//! Operating the hub: metrics move, readiness drains, SIGTERM mid-job loses nothing, the janitor
//! deletes only what is old, and a backup taken under load restores every acknowledged job.

use cmdx_e2e::{AgentProc, FakeAgent, HubProc, cmdx_bin, traversable_tempdir, wait_for};
use cmdx_proto::Outcome;
use cmdx_proto::agent::{AgentMsg, Finished};
use serde_json::json;

use crate::FAST;

async fn metrics(hub: &HubProc) -> String {
    hub.http
        .get(format!("{}/metrics", hub.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of a metric line `name{labels} value` (labels matched as a substring).
fn metric(text: &str, name: &str, labels: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']) && l.contains(labels)
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn finish_one(agent: &mut FakeAgent, exit: i32) -> String {
    let asg = agent.next_assignment().await.unwrap();
    agent
        .send(&AgentMsg::Finished(Finished {
            job_id: asg.job_id.clone(),
            attempt: asg.attempt,
            chunks: 0,
            outcome: Outcome {
                exit_code: Some(exit),
                ..Outcome::default()
            },
        }))
        .await
        .unwrap();
    asg.job_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_when_jobs_run() {
    let hub = HubProc::start(FAST).await;
    let admin = hub.admin().await;
    let wt = hub.worker_token(&admin).await;
    for _ in 0..3 {
        hub.submit(&admin, json!({"command": "true"})).await;
    }
    let m = metrics(&hub).await;
    assert_eq!(
        metric(&m, "cmdx_jobs_submitted_total", ""),
        Some(3.0),
        "{m}"
    );
    assert_eq!(metric(&m, "cmdx_queue_depth", ""), Some(3.0));
    assert_eq!(
        metric(&m, "cmdx_jobs_stored", ""),
        Some(3.0),
        "a kept count, not a scan"
    );
    assert_eq!(metric(&m, "cmdx_workers_connected", ""), Some(0.0));
    assert!(
        metric(&m, "cmdx_http_requests_total", "route=\"/api/jobs/submit\"")
            .is_some_and(|v| v >= 3.0)
    );
    let (mut a, _) = FakeAgent::connect(&hub, &wt, "metrics-w", 1, vec![])
        .await
        .unwrap();
    let id = finish_one(&mut a, 0).await;
    hub.wait_status(&admin, &id, "completed").await;
    // The status reads `completed` as soon as the record is written; the counter moves once the
    // write is flushed and acknowledged.
    let m = wait_for("the finished counter to move", || async {
        let m = metrics(&hub).await;
        metric(&m, "cmdx_jobs_finished_total", "status=\"completed\"")
            .is_some()
            .then_some(m)
    })
    .await;
    assert_eq!(
        metric(&m, "cmdx_jobs_finished_total", "status=\"completed\""),
        Some(1.0),
        "{m}"
    );
    assert_eq!(metric(&m, "cmdx_workers_connected", ""), Some(1.0));
    assert!(metric(&m, "cmdx_dispatch_latency_seconds_count", "").is_some_and(|v| v >= 1.0));
    assert!(metric(&m, "cmdx_store_flush_seconds_count", "").is_some_and(|v| v >= 1.0));
    assert!(metric(&m, "cmdx_data_dir_bytes", "").is_some_and(|v| v > 0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_answers_503_while_draining() {
    let mut hub = HubProc::start(&[
        "--drain-delay-secs",
        "3",
        "--rate-limit-per-min",
        "0",
        "--read-rate-limit-per-sec",
        "0",
        "--login-rate-limit-per-min",
        "0",
    ])
    .await;
    let admin = hub.admin().await;
    let ready = hub
        .http
        .get(format!("{}/readyz", hub.url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    hub.sigterm();
    wait_for("readyz to answer 503", || async {
        let r = hub
            .http
            .get(format!("{}/readyz", hub.url))
            .send()
            .await
            .ok()?;
        (r.status() == 503).then_some(())
    })
    .await;
    // New work is refused while draining, with a clear error.
    let r = hub
        .http
        .post(format!("{}/api/jobs/submit", hub.url))
        .bearer_auth(&admin)
        .json(&json!({"command": "true"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(hub.wait_exit().await, Some(0), "graceful exit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_running_job_then_restart_completes_it() {
    let mut hub = HubProc::start(&[
        "--drain-delay-secs",
        "0",
        "--reconnect-grace-secs",
        "30",
        "--rate-limit-per-min",
        "0",
        "--read-rate-limit-per-sec",
        "0",
        "--login-rate-limit-per-min",
        "0",
    ])
    .await;
    let admin = hub.admin().await;
    let wt = hub.worker_token(&admin).await;
    let dir = traversable_tempdir();
    let _agent = AgentProc::start(&hub, &wt, "term-agent", &dir.path().join("a"), 46_000).await;
    let id = hub
        .submit(&admin, json!({"command": "echo start; sleep 3; echo done"}))
        .await;
    wait_for("the job to run", || async {
        (hub.job(&admin, &id).await["stdout"] == "start\n").then_some(())
    })
    .await;
    hub.sigterm();
    assert_eq!(hub.wait_exit().await, Some(0));
    hub.restart().await;
    let admin = hub.admin().await;
    let v = hub.wait_status(&admin, &id, "completed").await;
    assert_eq!(v["stdout"], "start\ndone\n");
    assert_eq!(
        v["attempt"], 1,
        "the same attempt finished: nothing was lost or rerun"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn janitor_deletes_only_what_is_old() {
    let hub = HubProc::start(&[
        "--job-retention-secs",
        "2",
        "--file-retention-secs",
        "2",
        "--janitor-interval-secs",
        "0",
        "--rate-limit-per-min",
        "0",
        "--read-rate-limit-per-sec",
        "0",
        "--login-rate-limit-per-min",
        "0",
    ])
    .await;
    let admin = hub.admin().await;
    let wt = hub.worker_token(&admin).await;
    let upload = |name: &'static str| {
        let hub = &hub;
        let admin = admin.clone();
        async move {
            let r: serde_json::Value = hub
                .http
                .post(format!("{}/api/files/upload?filename={name}", hub.url))
                .bearer_auth(&admin)
                .header("content-type", "application/zip")
                .body(cmdx_e2e::zip_bytes(&[(name, name.as_bytes())]))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            r["fileId"].as_str().unwrap().to_string()
        }
    };
    let unused = upload("unused.txt").await;
    let used = upload("used.txt").await;
    let (mut a, _) = FakeAgent::connect(&hub, &wt, "jan-w", 1, vec![])
        .await
        .unwrap();
    let old = hub.submit(&admin, json!({"command": "true"})).await;
    assert_eq!(finish_one(&mut a, 0).await, old);
    hub.wait_status(&admin, &old, "completed").await;
    a.drop_connection();
    // Waits in the queue (no worker), using `used`: it and its file must survive.
    let waiting = hub
        .submit(
            &admin,
            json!({"command": "true", "fileId": used, "tags": ["nobody"]}),
        )
        .await;
    wait_for("the old job to be collected", || async {
        let r: serde_json::Value = hub.post_json(&admin, "/api/admin/janitor", json!({})).await;
        assert_eq!(hub.job(&admin, &waiting).await["status"], "queued");
        let (s, _) = hub
            .get(&admin, &format!("/api/jobs/status?jobId={old}"))
            .await;
        (s == 404).then_some(r)
    })
    .await;
    let file_status = |id: String| {
        let hub = &hub;
        let admin = admin.clone();
        async move {
            hub.http
                .get(format!("{}/api/files/download/{id}", hub.url))
                .bearer_auth(&admin)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    wait_for("the unused file to be collected", || async {
        hub.post_json(&admin, "/api/admin/janitor", json!({})).await;
        (file_status(unused.clone()).await == 404).then_some(())
    })
    .await;
    assert_eq!(
        file_status(used.clone()).await,
        200,
        "a file a queued job uses stays"
    );
    assert_eq!(hub.job(&admin, &waiting).await["status"], "queued");
    // A job that just finished stays.
    let (mut b, _) = FakeAgent::connect(&hub, &wt, "jan-w2", 1, vec![])
        .await
        .unwrap();
    let fresh = hub.submit(&admin, json!({"command": "true"})).await;
    assert_eq!(finish_one(&mut b, 0).await, fresh);
    hub.wait_status(&admin, &fresh, "completed").await;
    let r = hub.post_json(&admin, "/api/admin/janitor", json!({})).await;
    assert_eq!(r["jobsDeleted"], 0, "{r}");
    assert_eq!(hub.job(&admin, &fresh).await["status"], "completed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_taken_under_load_restores_every_acknowledged_job() {
    let hub = HubProc::start(FAST).await;
    let admin = hub.admin().await;
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = tokio::task::JoinSet::new();
    for t in 0..4 {
        let (url, http, token) = (hub.url.clone(), hub.http.clone(), admin.clone());
        let (acked, stop) = (acked.clone(), stop.clone());
        load.spawn(async move {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) && i < 2000 {
                let r = http
                    .post(format!("{url}/api/jobs/submit"))
                    .bearer_auth(&token)
                    .json(&json!({"command": format!("echo {t}-{i}")}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 201);
                let v: serde_json::Value = r.json().await.unwrap();
                acked
                    .lock()
                    .unwrap()
                    .push(v["jobId"].as_str().unwrap().to_string());
                i += 1;
            }
        });
    }
    wait_for("some load", || async {
        (acked.lock().unwrap().len() >= 100).then_some(())
    })
    .await;
    let before: Vec<String> = acked.lock().unwrap().clone();
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("backup.tar");
    let out = tokio::process::Command::new(cmdx_bin())
        .args(["backup", "--hub", &hub.url, "--out"])
        .arg(&archive)
        .env("CMDX_TOKEN", &admin)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    while load.join_next().await.is_some() {}
    let restored = dir.path().join("restored");
    let out = tokio::process::Command::new(cmdx_bin())
        .args(["restore", "--from"])
        .arg(&archive)
        .arg("--data")
        .arg(&restored)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let again = HubProc::start_on(restored, FAST).await;
    // The restored hub keeps the secrets: the old session token still works.
    let mut seen = std::collections::HashSet::new();
    let mut cursor = String::new();
    loop {
        let (s, v) = again
            .get(
                &admin,
                &format!("/api/jobs/list?limit=1000&cursor={cursor}"),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        for j in v["jobs"].as_array().unwrap() {
            seen.insert(j["jobId"].as_str().unwrap().to_string());
        }
        match v["nextCursor"].as_str() {
            Some(c) => cursor = c.to_string(),
            None => break,
        }
    }
    for id in &before {
        assert!(
            seen.contains(id),
            "job {id} acknowledged before the backup is missing"
        );
    }
    // And the restored queue is live: a worker gets the oldest job.
    let wt = again.worker_token(&admin).await;
    let (mut w, _) = FakeAgent::connect(&again, &wt, "after-restore", 1, vec![])
        .await
        .unwrap();
    let first = finish_one(&mut w, 0).await;
    assert!(seen.contains(&first));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cmdx_workers_drain_stops_new_work_for_that_worker() {
    let hub = HubProc::start(FAST).await;
    let admin = hub.admin().await;
    let wt = hub.worker_token(&admin).await;
    let (_drained, _) = FakeAgent::connect(&hub, &wt, "to-drain", 2, vec![])
        .await
        .unwrap();
    let out = tokio::process::Command::new(cmdx_bin())
        .args([
            "workers", "drain", "to-drain", "--hub", &hub.url, "--token", &admin,
        ])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The drain is the hub's: the agent is not told (nothing on it to undo at a resume).
    let (_, list) = hub.get(&admin, "/api/workers/list").await;
    assert_eq!(list["workers"][0]["status"], "draining", "{list}");
    // New work goes to another worker, not the draining one.
    let id = hub.submit(&admin, json!({"command": "true"})).await;
    let (mut b, _) = FakeAgent::connect(&hub, &wt, "fresh", 1, vec![])
        .await
        .unwrap();
    assert_eq!(finish_one(&mut b, 0).await, id);
    hub.wait_status(&admin, &id, "completed").await;
    assert_eq!(hub.job(&admin, &id).await["workerId"], "fresh");
}
