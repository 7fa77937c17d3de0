//! Real `cmdx agent` processes running real sandboxed jobs against a real hub: live output,
//! cancel, agent loss (kill -9) and hub restart mid-job.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cmdx_e2e::{AgentProc, HubProc, WAIT, mounted_under, traversable_tempdir, wait_for};
use cmdx_proto::client::{ClientMsg, ServerMsg};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::FAST;

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_arrives_while_the_job_runs() {
    let hub = HubProc::start(FAST).await;
    let admin = hub.admin().await;
    let wt = hub.worker_token(&admin).await;
    let dir = traversable_tempdir();
    let _agent = AgentProc::start(&hub, &wt, "live-agent", &dir.path().join("a"), 41_000).await;
    let id = hub
        .submit(
            &admin,
            json!({"command": "date +%s%N; sleep 2; echo second"}),
        )
        .await;
    let mut req = hub.ws_url("/ws/client").into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {admin}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    ws.send(Message::text(
        serde_json::to_string(&ClientMsg::SubscribeOutput {
            job_id: id.clone(),
            offset: 0,
        })
        .unwrap(),
    ))
    .await
    .unwrap();
    let (written_ns, got_ns) = tokio::time::timeout(WAIT, async {
        loop {
            let Some(Ok(Message::Text(t))) = ws.next().await else {
                continue;
            };
            if let Ok(ServerMsg::Output { data, .. }) = serde_json::from_str::<ServerMsg>(&t) {
                let text = String::from_utf8_lossy(&data).to_string();
                let ns: u128 = text.lines().next().unwrap().trim().parse().unwrap();
                return (ns, now_ns());
            }
        }
    })
    .await
    .expect("first output in time");
    let latency_ms = (got_ns.saturating_sub(written_ns)) as f64 / 1e6;
    eprintln!("first output byte reached a subscriber {latency_ms:.1} ms after it was written");
    // The job sleeps 2 s after its first line: the line must arrive well before the end.
    assert!(latency_ms < 1000.0, "first output took {latency_ms} ms");
    assert_ne!(hub.job(&admin, &id).await["status"], "completed");
    let v = hub.wait_status(&admin, &id, "completed").await;
    assert!(v["stdout"].as_str().unwrap().ends_with("second\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_ends_a_running_job_within_the_grace() {
    let hub = HubProc::start(FAST).await;
    let admin = hub.admin().await;
    let wt = hub.worker_token(&admin).await;
    let dir = traversable_tempdir();
    let _agent = AgentProc::start(&hub, &wt, "cancel-agent", &dir.path().join("a"), 42_000).await;
    let id = hub
        .submit(
            &admin,
            json!({"command": "trap '' TERM; echo started; sleep 1000"}),
        )
        .await;
    wait_for("job output", || async {
        let v = hub.job(&admin, &id).await;
        (v["stdout"] == "started\n").then_some(())
    })
    .await;
    let asked = std::time::Instant::now();
    hub.post_json(&admin, "/api/jobs/cancel", json!({"jobId": id}))
        .await;
    let v = hub.wait_status(&admin, &id, "cancelled").await;
    let took = asked.elapsed();
    eprintln!("cancel of a TERM-ignoring job took {took:?} (grace 10 s)");
    assert!(took < Duration::from_secs(20), "cancel took {took:?}");
    assert!(v["failure"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_agent_loses_its_job_to_another_agent() {
    let hub = HubProc::start(FAST).await;
    let admin = hub.admin().await;
    let wt = hub.worker_token(&admin).await;
    let dir = traversable_tempdir();
    let mut a = AgentProc::start(&hub, &wt, "agent-a", &dir.path().join("a"), 43_000).await;
    let id = hub
        .submit(&admin, json!({"command": "echo begin; sleep 3; echo end"}))
        .await;
    wait_for("the job to run on agent-a", || async {
        let v = hub.job(&admin, &id).await;
        (v["status"] == "running" && v["workerId"] == "agent-a").then_some(())
    })
    .await;
    let _b = AgentProc::start(&hub, &wt, "agent-b", &dir.path().join("b"), 44_000).await;
    a.kill9().await;
    let v = hub.wait_status(&admin, &id, "completed").await;
    assert_eq!(v["workerId"], "agent-b");
    assert_eq!(v["attempt"], 2);
    assert_eq!(
        v["stdout"], "begin\nend\n",
        "the log is the final attempt's output"
    );
    let attempts = v["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[0]["end"], "reconnect grace expired");
    // The killed agent left its job's workspace mount and cgroup behind (PDEATHSIG ends the job's
    // process, not the mount): an agent started on the same work dir clears them, as in
    // production, instead of leaving one mount per test run on the machine.
    drop(a);
    let work = dir.path().join("a");
    let _a2 = AgentProc::start(&hub, &wt, "agent-a", &work, 43_000).await;
    wait_for(
        "the restarted agent-a to clear the dead one's workspace",
        || async {
            let jobs_left = std::fs::read_dir(work.join("jobs"))
                .map(|d| d.count())
                .unwrap_or(0);
            (!mounted_under(&work) && jobs_left == 0).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_restart_mid_job_keeps_the_output_whole() {
    let mut hub = HubProc::start(FAST).await;
    let admin = hub.admin().await;
    let wt = hub.worker_token(&admin).await;
    let dir = traversable_tempdir();
    let _agent = AgentProc::start(&hub, &wt, "steady", &dir.path().join("a"), 45_000).await;
    let id = hub
        .submit(
            &admin,
            json!({"command": "for i in 1 2 3 4 5 6 7 8; do echo line-$i; sleep 0.4; done"}),
        )
        .await;
    wait_for("the first lines", || async {
        let v = hub.job(&admin, &id).await;
        v["stdout"]
            .as_str()
            .unwrap_or("")
            .contains("line-2")
            .then_some(())
    })
    .await;
    hub.kill9().await;
    hub.restart().await;
    let admin = hub.admin().await;
    let v = hub.wait_status(&admin, &id, "completed").await;
    let want: String = (1..=8).map(|i| format!("line-{i}\n")).collect();
    assert_eq!(
        v["stdout"],
        want.as_str(),
        "no gap and no duplicate across the restart"
    );
    assert_eq!(v["attempt"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_flag_never_reaches_a_job_and_agent_metrics_are_served() {
    let hub = HubProc::start(FAST).await;
    let admin = hub.admin().await;
    let wt = hub.worker_token(&admin).await;
    let dir = traversable_tempdir();
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut agent = tokio::process::Command::new(cmdx_e2e::cmdx_bin())
        .args([
            "agent",
            "--hub",
            &hub.url,
            "--token",
            &wt,
            "--worker-id",
            "tokflag",
        ])
        .arg("--work-dir")
        .arg(dir.path().join("a"))
        .args(["--uid-base", "47000", "--metrics-listen"])
        .arg(format!("127.0.0.1:{metrics_port}"))
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let cmdline = argv_once_online(&hub, &admin, "tokflag", agent.id().unwrap()).await;
    assert!(
        !cmdline.contains(&wt),
        "the token is still in argv: {cmdline}"
    );
    assert!(
        cmdline.contains("tokflag"),
        "argv otherwise intact: {cmdline}"
    );
    // A job reading every command line on the host does not find it.
    let id = hub
        .submit(
            &admin,
            json!({"command": "cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' '; echo"}),
        )
        .await;
    let v = hub.wait_status(&admin, &id, "completed").await;
    let out = v["stdout"].as_str().unwrap();
    assert!(!out.contains(&wt), "a job read the worker token");
    // It reads its own command lines only: the agent is outside its PID namespace.
    assert!(
        out.contains("cmdx-init /bin/sh -c cat") && !out.contains("tokflag"),
        "the job read command lines beyond its own: {out}"
    );
    // The agent's own metrics endpoint counts the job.
    let text = reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("cmdx_agent_jobs_total"), "{text}");
    let _ = agent.start_kill();
    let _ = agent.wait().await;
}

/// Removes worker `id` (admin).
async fn delete_worker(hub: &HubProc, admin: &str, id: &str) -> (u16, String) {
    let r = hub
        .http
        .delete(format!("{}/api/workers/{id}", hub.url))
        .bearer_auth(admin)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

/// The command line of process `pid` (an agent), read once the agent `id` is online.
async fn argv_once_online(hub: &HubProc, admin: &str, id: &str, pid: u32) -> String {
    wait_for("the agent to connect", || async {
        let (_, v) = hub.get(admin, "/api/workers/list").await;
        v["workers"]
            .as_array()?
            .iter()
            .any(|w| w["workerId"] == id && w["status"] == "online")
            .then_some(())
    })
    .await;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    String::from_utf8_lossy(&cmdline).replace('\0', " ")
}

/// The worker token leaves argv whatever stands before the subcommand (`cmdx -v agent --token T`
/// once kept it there, and a job printed it from /proc), and `--token-file` keeps it off the
/// command line altogether; a token file that other users may read is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_leaves_argv_whatever_the_flag_order() {
    use std::os::unix::fs::PermissionsExt as _;
    let hub = HubProc::start(FAST).await;
    let admin = hub.admin().await;
    let wt = hub.worker_token(&admin).await;
    let dir = traversable_tempdir();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{wt}\n")).unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let file = token_file.to_str().unwrap().to_string();
    let token_eq = format!("--token={wt}");
    let layouts: [(&str, Vec<&str>); 3] = [
        ("argv-v", vec!["-v", "agent", "--token", &wt]),
        (
            "argv-json",
            vec!["--log-format", "json", "agent", &token_eq],
        ),
        ("argv-file", vec!["agent", "--token-file", &file]),
    ];
    for (i, (id, argv)) in layouts.into_iter().enumerate() {
        let mut agent = tokio::process::Command::new(cmdx_e2e::cmdx_bin())
            .args(&argv)
            .args(["--hub", &hub.url, "--worker-id", id, "--uid-base"])
            .arg((48_000 + i * 100).to_string())
            .arg("--work-dir")
            .arg(dir.path().join(id))
            .env_remove("CMDX_AGENT_TOKEN")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let cmdline = argv_once_online(&hub, &admin, id, agent.id().unwrap()).await;
        assert!(
            !cmdline.contains(&wt),
            "{id}: the token is in argv: {cmdline}"
        );
        assert!(
            cmdline.contains(id),
            "{id}: argv otherwise intact: {cmdline}"
        );
        // The attack itself: a job on that agent reads every command line on the host.
        let job = hub
            .submit(
                &admin,
                json!({"command": "cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' '; echo"}),
            )
            .await;
        let v = hub.wait_status(&admin, &job, "completed").await;
        let out = v["stdout"].as_str().unwrap();
        assert_eq!(v["workerId"], id);
        assert!(!out.contains(&wt), "{id}: a job read the worker token");
        assert!(
            out.contains("cmdx-init /bin/sh -c cat") && !out.contains(id),
            "{id}: the job read command lines beyond its own: {out}"
        );
        let _ = agent.start_kill();
        let _ = agent.wait().await;
        // The next layout's agent must get the next job.
        let (_, _) = delete_worker(&hub, &admin, id).await;
    }
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = tokio::process::Command::new(cmdx_e2e::cmdx_bin())
        .args(["agent", "--hub", &hub.url, "--token-file", &file])
        .env_remove("CMDX_AGENT_TOKEN")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("other users could read the worker token"),
        "{stderr}"
    );
}

/// Two agents on one host never run jobs as the same uid (both once defaulted to 40000): an
/// explicit `--uid-base` that overlaps a running agent's range is refused, naming it; an agent
/// without one takes a free range.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_on_one_host_never_share_job_uids() {
    let hub = HubProc::start(FAST).await;
    let admin = hub.admin().await;
    let wt = hub.worker_token(&admin).await;
    let dir = traversable_tempdir();
    let a = AgentProc::start(&hub, &wt, "uid-a", &dir.path().join("a"), 55_000).await;
    // Online means it has claimed its range (the claim comes before it connects).
    argv_once_online(&hub, &admin, "uid-a", a.pid().unwrap()).await;
    let out = tokio::time::timeout(
        WAIT,
        tokio::process::Command::new(cmdx_e2e::cmdx_bin())
            .args(["agent", "--hub", &hub.url, "--worker-id", "uid-b"])
            .args(["--uid-base", "55001", "--work-dir"])
            .arg(dir.path().join("b"))
            .env("CMDX_AGENT_TOKEN", &wt)
            .output(),
    )
    .await
    .expect("the overlapping agent to refuse in time")
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("overlap the range 55000..55002"),
        "{stderr}"
    );

    let mut c = tokio::process::Command::new(cmdx_e2e::cmdx_bin())
        .args(["agent", "--hub", &hub.url, "--worker-id", "uid-c"])
        .args(["--tags", "uid-c", "--work-dir"])
        .arg(dir.path().join("c"))
        .env("CMDX_AGENT_TOKEN", &wt)
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    argv_once_online(&hub, &admin, "uid-c", c.id().unwrap()).await;
    let job = hub
        .submit(&admin, json!({"command": "id -u", "tags": ["uid-c"]}))
        .await;
    let v = hub.wait_status(&admin, &job, "completed").await;
    let uid: u32 = v["stdout"].as_str().unwrap().trim().parse().unwrap();
    assert!(
        uid >= 40_000 && !(55_000..55_002).contains(&uid),
        "the automatic range gave uid {uid}"
    );
    let _ = c.start_kill();
    let _ = c.wait().await;
}

/// How Kubernetes and systemd stop an agent: SIGTERM. It takes no new job (the hub lists it as
/// draining and gives the next job to nobody else's slot of it), finishes the job it runs,
/// reports it and exits 0; the queued job waits for another agent, which then runs it. A second
/// SIGTERM stops what runs: the job fails as `killed`, saying the agent shut down (never lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_the_agent_and_a_second_one_stops_its_jobs() {
    let hub = HubProc::start(FAST).await;
    let admin = hub.admin().await;
    let wt = hub.worker_token(&admin).await;
    let work = traversable_tempdir();
    let status_of = |id: &'static str| {
        let (hub, admin) = (&hub, admin.clone());
        async move {
            let (_, list) = hub.get(&admin, "/api/workers/list").await;
            list["workers"]
                .as_array()
                .unwrap()
                .iter()
                .find(|w| w["workerId"] == id)
                .map(|w| w["status"].as_str().unwrap_or_default().to_string())
        }
    };
    let mut a = AgentProc::start_with(
        &hub,
        &wt,
        Some("drain-me"),
        &work.path().join("a"),
        65_000,
        1,
    )
    .await;
    let first = hub
        .submit(&admin, json!({"command": "sleep 3; echo finished"}))
        .await;
    hub.wait_status(&admin, &first, "running").await;
    a.sigterm();
    wait_for("the agent to say it is draining", || async {
        (status_of("drain-me").await.as_deref() == Some("draining")).then_some(())
    })
    .await;
    let second = hub.submit(&admin, json!({"command": "echo second"})).await;
    let done = hub.wait_status(&admin, &first, "completed").await;
    assert_eq!(done["stdout"], "finished\n", "{done}");
    assert_eq!(a.wait_exit().await, Some(0), "a drained agent exits 0");
    assert_eq!(hub.job(&admin, &second).await["status"], "queued");

    let mut b = AgentProc::start_with(
        &hub,
        &wt,
        Some("stop-me"),
        &work.path().join("b"),
        65_010,
        1,
    )
    .await;
    hub.wait_status(&admin, &second, "completed").await;
    let long = hub.submit(&admin, json!({"command": "sleep 300"})).await;
    hub.wait_status(&admin, &long, "running").await;
    b.sigterm();
    wait_for("the second agent to drain", || async {
        (status_of("stop-me").await.as_deref() == Some("draining")).then_some(())
    })
    .await;
    b.sigterm();
    let v = hub.wait_status(&admin, &long, "failed").await;
    assert_eq!(v["failure"], "killed", "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap_or_default()
            .contains("agent shut down"),
        "{v}"
    );
    assert!(b.wait_exit().await.is_some(), "the agent exits");
}
