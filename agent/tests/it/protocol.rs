//! Handshake, reconnect and resume, drain, abort, slots.

use std::time::{Duration, Instant};

use cmdx_agent::Control;
use cmdx_proto::agent::{AgentMsg, HubMsg, JobRef, Welcome};
use cmdx_proto::{FailureKind, JobStatus, PROTOCOL_VERSION, StreamKind};

use crate::helpers::*;

#[tokio::test]
async fn hello_advertises_the_worker_and_uses_header_auth() {
    let mut hub = FakeHub::start().await;
    let (c, dir) = config(&hub);
    let agent = TestAgent::start(c, dir);
    let mut conn = hub.accept().await;
    assert_eq!(
        conn.headers.get("authorization").unwrap(),
        &format!("Bearer {TOKEN}")
    );
    let hello = conn.handshake().await;
    assert_eq!(hello.protocol_version, PROTOCOL_VERSION);
    let stored = std::fs::read_to_string(agent.work_dir.join("worker-id")).unwrap();
    assert_eq!(hello.worker_id, stored.trim());
    assert_eq!(conn.headers.get("x-worker-id").unwrap(), &hello.worker_id);
    assert!(!hello.hostname.is_empty());
    assert!(hello.os.starts_with("linux"), "{}", hello.os);
    assert!(hello.cpu_count >= 1);
    assert!(hello.total_memory_mb > 0);
    assert_eq!(hello.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(hello.tags, vec!["linux".to_owned(), "test".to_owned()]);
    assert_eq!(hello.concurrency, 2);
    assert!(hello.held.is_empty());
    assert_eq!(hello.isolation.mode, "strict");
    assert!(hello.isolation.missing.is_empty(), "{:?}", hello.isolation);
    assert!(
        hello
            .isolation
            .active
            .iter()
            .any(|l| l.starts_with("cgroup")),
        "{:?}",
        hello.isolation.active
    );
    // The token never appears in the URL.
    assert!(!format!("{:?}", conn.headers).contains("token="));
    // Heartbeats follow the welcome's period.
    let hb = within("a heartbeat", async {
        loop {
            if let AgentMsg::Heartbeat(hb) = conn.recv_any().await {
                return hb;
            }
        }
    })
    .await;
    assert_eq!(hb.free_slots, 2);
    assert!(!hb.draining);
    agent.abort(Some(&mut conn)).await;
}

#[tokio::test]
async fn a_refused_token_is_retried_without_crashing() {
    let hub = FakeHub::start().await;
    let (mut c, dir) = config(&hub);
    c.token = "wrong".into();
    let agent = TestAgent::start(c, dir);
    // The fake hub answers 401; the agent keeps retrying with backoff and stays alive.
    wait_for("several refused attempts", || hub.ws_attempts() >= 3).await;
    assert!(!agent.handle.is_finished());
    assert!(hub.downloads().is_empty());
    agent.abort(None).await;
}

#[tokio::test]
async fn reconnect_resumes_output_without_gap_or_duplicate() {
    let mut hub = FakeHub::start().await;
    let (c, dir) = config(&hub);
    let agent = TestAgent::start(c, dir);
    let mut conn = hub.accept().await;
    conn.handshake().await;
    let a = assignment(
        "resume-1",
        "for i in $(seq 1 30); do echo line$i; sleep 0.03; done; echo done >&2",
    );
    let job = job_ref(&a);
    conn.assign(a).await;

    // Store (acknowledge) the first chunk only, see a few more, then cut the connection.
    let mut stored = Vec::new();
    let mut seen_after = 0;
    while seen_after < 3 {
        match conn.recv().await {
            AgentMsg::Started(_) => {}
            AgentMsg::Output(c) => {
                if c.seq == 0 {
                    stored.push(c.data.0.clone());
                    conn.ack_output(&job, 1).await;
                } else {
                    seen_after += 1;
                }
            }
            m => panic!("unexpected {m:?}"),
        }
    }
    drop(conn);

    // The agent reconnects and presents the held job; the hub resumes it after chunk 0.
    let mut conn = hub.accept().await;
    let hello = conn.handshake_with(|_| 1).await;
    assert_eq!(hello.held.len(), 1);
    assert_eq!(hello.held[0].job_id, job.job_id);
    assert!(hello.held[0].chunks >= 4, "{:?}", hello.held);
    let run = conn.run_to_end(&job, true).await;
    let first = run.chunks.first().expect("resent chunks").0;
    assert_eq!(first, 1, "resend starts at storedChunks");
    let seqs: Vec<u64> = run.chunks.iter().map(|c| c.0).collect();
    let want: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, want, "no gap, no duplicate");
    assert_eq!(run.finished_chunks, seqs.len() as u64 + 1);
    let mut stdout = String::from_utf8(stored.concat()).unwrap();
    stdout.push_str(&run.text(StreamKind::Stdout));
    let want: String = (1..=30).map(|i| format!("line{i}\n")).collect();
    assert_eq!(stdout, want);
    assert_eq!(run.text(StreamKind::Stderr), "done\n");
    assert_eq!(run.outcome().exit_code, Some(0));
    agent.abort(Some(&mut conn)).await;
}

#[tokio::test]
async fn hub_restart_on_the_same_port_resends_an_unacknowledged_result() {
    let mut hub = FakeHub::start().await;
    let addr = hub.addr;
    let (c, dir) = config(&hub);
    let agent = TestAgent::start(c, dir);
    let mut conn = hub.accept().await;
    conn.handshake().await;
    let a = assignment("restart-1", "echo hello");
    let job = job_ref(&a);
    conn.assign(a).await;
    // Receive everything up to finished, but acknowledge nothing; then the hub "crashes".
    loop {
        if let AgentMsg::Finished(f) = conn.recv().await {
            assert_eq!(f.outcome.exit_code, Some(0));
            break;
        }
    }
    drop(conn);
    hub.stop().await;
    let mut hub = FakeHub::start_on(addr).await;
    let mut conn = hub.accept().await;
    let hello = conn.handshake_with(|_| 0).await;
    let held = &hello.held[0];
    assert_eq!(held.job_id, job.job_id);
    assert!(
        held.finished
            .as_ref()
            .is_some_and(|o| o.exit_code == Some(0))
    );
    let run = conn.run_to_end(&job, true).await;
    run.assert_contiguous();
    assert_eq!(run.text(StreamKind::Stdout), "hello\n");
    // After finishedAck the workspace goes away.
    wait_for("workspace removal", || {
        dir_entries(&agent.jobs_dir()).is_empty()
    })
    .await;
    agent.abort(Some(&mut conn)).await;
}

#[tokio::test]
async fn abandoned_attempts_are_killed_and_forgotten() {
    let mut hub = FakeHub::start().await;
    let (c, dir) = config(&hub);
    let agent = TestAgent::start(c, dir);
    let mut conn = hub.accept().await;
    conn.handshake().await;
    let a = assignment("abandon-1", "echo started; sleep 100");
    let job = job_ref(&a);
    conn.assign(a).await;
    loop {
        if let AgentMsg::Output(_) = conn.recv().await {
            break;
        }
    }
    drop(conn);
    // The hub reassigned the job meanwhile: welcome abandons the held attempt.
    let mut conn = hub.accept().await;
    let hello = match conn.recv().await {
        AgentMsg::Hello(h) => h,
        m => panic!("{m:?}"),
    };
    assert_eq!(hello.held.len(), 1);
    conn.send(HubMsg::Welcome(Welcome {
        protocol_version: PROTOCOL_VERSION,
        worker_id: hello.worker_id,
        heartbeat_secs: 1,
        resume: vec![],
        abandon: vec![job.clone()],
    }))
    .await;
    // Killed and cleaned up without any further message about it.
    wait_for("workspace removal", || {
        dir_entries(&agent.jobs_dir()).is_empty()
    })
    .await;
    let hb = within("a heartbeat with the slot free", async {
        loop {
            match conn.recv_any().await {
                AgentMsg::Heartbeat(hb) if hb.free_slots == 2 => return hb,
                AgentMsg::Heartbeat(_) => {}
                m => panic!("nothing may be sent about an abandoned job: {m:?}"),
            }
        }
    })
    .await;
    assert!(hb.running.is_empty());
    agent.abort(Some(&mut conn)).await;
}

#[tokio::test]
async fn assignments_beyond_the_slots_are_rejected() {
    let (_hub, agent, mut conn) = setup_with(|c| c.concurrency = 1).await;
    let a = assignment("slot-1", "sleep 100");
    conn.assign(a).await;
    conn.send(HubMsg::Assign(assignment("slot-2", "true")))
        .await;
    loop {
        match conn.recv().await {
            AgentMsg::Reject(r) => {
                assert_eq!(r.job_id, "slot-2");
                assert!(r.reason.contains("slot"), "{}", r.reason);
                break;
            }
            AgentMsg::Started(_) => {}
            m => panic!("{m:?}"),
        }
    }
    agent.abort(Some(&mut conn)).await;
}

#[tokio::test]
async fn drain_rejects_new_work_finishes_running_jobs_then_returns() {
    let (_hub, mut agent, mut conn) = setup().await;
    let a = assignment(
        "drain-1",
        "while [ ! -f go ]; do sleep 0.02; done; echo finished",
    );
    let job = job_ref(&a);
    conn.assign(a).await;
    match conn.recv().await {
        AgentMsg::Started(_) => {}
        m => panic!("{m:?}"),
    }
    agent.control.send_replace(Control::Drain);
    // Once the agent reports draining, new work is refused.
    within("a draining heartbeat", async {
        loop {
            match conn.recv_any().await {
                AgentMsg::Heartbeat(hb) if hb.draining => return,
                AgentMsg::Heartbeat(_) => {}
                m => panic!("{m:?}"),
            }
        }
    })
    .await;
    conn.send(HubMsg::Assign(assignment("drain-2", "true")))
        .await;
    let reject = match conn.recv().await {
        AgentMsg::Reject(r) => r,
        m => panic!("expected a reject while draining, got {m:?}"),
    };
    assert!(reject.reason.contains("draining"), "{}", reject.reason);
    assert!(!agent.handle.is_finished());
    std::fs::write(agent.job_dir(&job).join("go"), "").unwrap();
    // The running job completes; the agent waits for finishedAck before returning.
    let mut run = crate::helpers::Run::default();
    loop {
        match conn.recv().await {
            AgentMsg::Output(c) => run.chunks.push((c.seq, c.stream, c.data.0)),
            AgentMsg::Finished(f) => {
                run.finished_chunks = f.chunks;
                run.outcome = Some(f.outcome);
                break;
            }
            m => panic!("{m:?}"),
        }
    }
    assert_eq!(run.outcome().status(), JobStatus::Completed);
    assert_eq!(run.text(StreamKind::Stdout), "finished\n");
    assert!(!agent.handle.is_finished(), "must wait for finishedAck");
    conn.send(HubMsg::FinishedAck(job)).await;
    within("drained agent to return", &mut agent.handle)
        .await
        .unwrap()
        .unwrap();
    assert!(dir_entries(&agent.work_dir.join("jobs")).is_empty());
}

#[tokio::test]
async fn abort_terminates_running_jobs_and_reports_them() {
    let (_hub, mut agent, mut conn) = setup().await;
    let a = assignment("abort-1", "echo up; sleep 100");
    let job = job_ref(&a);
    conn.assign(a).await;
    loop {
        if let AgentMsg::Output(_) = conn.recv().await {
            break;
        }
    }
    let t0 = Instant::now();
    agent.control.send_replace(Control::Abort);
    let outcome = loop {
        if let AgentMsg::Finished(f) = conn.recv().await {
            break f.outcome;
        }
    };
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    assert_eq!(outcome.failure, Some(FailureKind::Killed));
    conn.send(HubMsg::FinishedAck(JobRef { ..job })).await;
    within("aborted agent to return", &mut agent.handle)
        .await
        .unwrap()
        .unwrap();
    assert!(dir_entries(&agent.work_dir.join("jobs")).is_empty());
}

#[tokio::test]
async fn abort_without_a_hub_still_returns() {
    let mut hub = FakeHub::start().await;
    let (c, dir) = config(&hub);
    let agent = TestAgent::start(c, dir);
    let mut conn = hub.accept().await;
    conn.handshake().await;
    conn.assign(assignment("nohub-1", "echo up; sleep 100"))
        .await;
    loop {
        if let AgentMsg::Output(_) = conn.recv().await {
            break;
        }
    }
    // The hub goes away for good; the job keeps running until the abort.
    drop(conn);
    hub.stop().await;
    let t0 = Instant::now();
    agent.abort(None).await;
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
}

#[tokio::test]
async fn bad_configurations_are_refused_up_front() {
    let hub = FakeHub::start().await;
    for (tweak, want) in [
        (
            Box::new(|c: &mut cmdx_agent::AgentConfig| c.concurrency = 0)
                as Box<dyn Fn(&mut cmdx_agent::AgentConfig)>,
            "concurrency",
        ),
        (Box::new(|c| c.hub_url = "ftp://x".into()), "scheme"),
        // https:// is spoken now; a CA file that is not one stops the agent at once.
        (
            Box::new(|c| {
                c.hub_url = "https://hub.example".into();
                c.ca_file = Some("/nonexistent/ca.pem".into());
            }),
            "/nonexistent/ca.pem",
        ),
        (Box::new(|c| c.token = "two words".into()), "token"),
        (Box::new(|c| c.worker_id = Some("a/b".into())), "worker id"),
        (Box::new(|c| c.output_window_bytes = 1024), "output window"),
    ] {
        let (mut c, _dir) = config(&hub);
        tweak(&mut c);
        let (_tx, rx) = tokio::sync::watch::channel(Control::Run);
        let err = within("run to fail", cmdx_agent::run(c, rx))
            .await
            .expect_err("bad config must fail");
        assert!(
            err.to_string().contains(want),
            "{err} should mention {want}"
        );
    }
    // The token never shows in the config's Debug output.
    let (c, _dir) = config(&hub);
    assert!(!format!("{c:?}").contains(TOKEN));
}
