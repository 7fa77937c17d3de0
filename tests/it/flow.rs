//! A job submitted over REST runs on a WebSocket worker; its result comes back through
//! `/api/jobs/status` and `/api/jobs/list`.

use cmdx_e2e::FakeAgent;
use cmdx_proto::agent::{AgentMsg, Finished, HubMsg, JobRef, OutputChunk, Started};
use cmdx_proto::{Outcome, StreamKind};
use serde_json::json;

use crate::Backend;

on_both_stores!(
    websocket_worker_runs_a_submitted_job,
    websocket_worker_runs_a_submitted_job_on_postgres,
    websocket_worker_runs_a_submitted_job_on
);

async fn websocket_worker_runs_a_submitted_job_on(store: Backend) {
    let hub = store.hub(&[]).await;
    let admin = hub.admin().await;
    let wt = hub.worker_token(&admin).await;
    let user = hub.user(&admin, "alice@test.local").await;
    let id = hub
        .submit(&user, json!({"command": "echo hi; echo warn >&2"}))
        .await;
    let queued = hub.job(&user, &id).await;
    assert_eq!(queued["status"], "queued");
    assert!(queued["createdAt"].as_str().unwrap().ends_with('Z'));

    let (mut a, welcome) = FakeAgent::connect(&hub, &wt, "w1", 2, vec![])
        .await
        .unwrap();
    assert_eq!(welcome.worker_id, "w1");
    let asg = a
        .recv_until(|m| match m {
            HubMsg::Assign(x) => Some(x),
            _ => None,
        })
        .await
        .unwrap();
    assert_eq!(asg.job_id, id);
    assert_eq!(asg.attempt, 1);
    assert_eq!(asg.command, "echo hi; echo warn >&2");
    assert_eq!(hub.job(&user, &id).await["status"], "assigned");

    let r = JobRef {
        job_id: id.clone(),
        attempt: 1,
    };
    a.send(&AgentMsg::Accept(r.clone())).await.unwrap();
    a.send(&AgentMsg::Started(Started {
        job_id: id.clone(),
        attempt: 1,
        isolation: vec![],
    }))
    .await
    .unwrap();
    hub.wait_status(&user, &id, "running").await;
    for (seq, stream, data) in [
        (0, StreamKind::Stdout, "hi\n"),
        (1, StreamKind::Stderr, "warn\n"),
    ] {
        a.send(&AgentMsg::Output(OutputChunk {
            job_id: id.clone(),
            attempt: 1,
            seq,
            stream,
            data: data.as_bytes().into(),
        }))
        .await
        .unwrap();
    }
    let acked = a
        .recv_until(|m| match m {
            HubMsg::OutputAck(x) if x.stored_chunks == 2 => Some(x),
            _ => None,
        })
        .await
        .unwrap();
    assert_eq!(acked.job_id, id);
    a.send(&AgentMsg::Finished(Finished {
        job_id: id.clone(),
        attempt: 1,
        chunks: 2,
        outcome: Outcome {
            exit_code: Some(0),
            duration_ms: 12,
            ..Outcome::default()
        },
    }))
    .await
    .unwrap();
    a.recv_until(|m| matches!(m, HubMsg::FinishedAck(ref x) if *x == r).then_some(()))
        .await
        .unwrap();

    let done = hub.job(&user, &id).await;
    assert_eq!(done["status"], "completed");
    assert_eq!(done["stdout"], "hi\n");
    assert_eq!(done["stderr"], "warn\n");
    assert_eq!(done["exitCode"], 0);
    assert_eq!(done["workerId"], "w1");
    assert_eq!(done["attempt"], 1);
    assert_eq!(done["result"]["success"], true);
    assert_eq!(done["result"]["lines"], 2);
    // The same document without the log, for clients that only say how the job went.
    let (s, lean) = hub
        .get(&user, &format!("/api/jobs/status?jobId={id}&output=false"))
        .await;
    assert_eq!(s, 200);
    assert_eq!((&lean["stdout"], &lean["stderr"]), (&json!(""), &json!("")));
    assert_eq!(lean["outputBytes"], done["outputBytes"]);
    assert_eq!(lean["exitCode"], 0);
    let (s, bad) = hub
        .get(&user, &format!("/api/jobs/status?jobId={id}&output=maybe"))
        .await;
    assert_eq!(s, 400, "{bad}");
    for k in ["createdAt", "startedAt", "completedAt"] {
        assert!(done[k].is_string(), "{k} missing: {done}");
    }
    let (s, list) = hub.get(&user, "/api/jobs/list?status=completed").await;
    assert_eq!(s, 200);
    assert_eq!(list["count"], 1);
    assert_eq!(list["jobs"][0]["jobId"], id.as_str());
    assert_eq!(list["jobs"][0]["exitCode"], 0);

    // The raw log keeps the interleaving.
    let raw = hub
        .http
        .get(format!("{}/api/jobs/{id}/output?offset=0", hub.url))
        .bearer_auth(&user)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(&raw[..], b"hi\nwarn\n");
}

on_both_stores!(
    failed_and_tagged_jobs_route_correctly,
    failed_and_tagged_jobs_route_correctly_on_postgres,
    failed_and_tagged_jobs_route_correctly_on
);

async fn failed_and_tagged_jobs_route_correctly_on(store: Backend) {
    let hub = store.hub(&[]).await;
    let admin = hub.admin().await;
    let wt = hub.worker_token(&admin).await;
    let tagged = hub
        .submit(&admin, json!({"command": "make gpu", "tags": ["gpu"]}))
        .await;
    let plain = hub.submit(&admin, json!({"command": "exit 3"})).await;
    // An untagged worker must get only the plain job, even though the tagged one is older.
    let (mut a, _) = FakeAgent::connect(&hub, &wt, "plain-w", 4, vec![])
        .await
        .unwrap();
    let asg = a
        .recv_until(|m| match m {
            HubMsg::Assign(x) => Some(x),
            _ => None,
        })
        .await
        .unwrap();
    assert_eq!(asg.job_id, plain);
    a.send(&AgentMsg::Finished(Finished {
        job_id: plain.clone(),
        attempt: 1,
        chunks: 0,
        outcome: Outcome {
            exit_code: Some(3),
            ..Outcome::default()
        },
    }))
    .await
    .unwrap();
    let v = hub.wait_status(&admin, &plain, "failed").await;
    assert_eq!(v["failure"], "exit_code");
    assert_eq!(v["exitCode"], 3);
    assert_eq!(hub.job(&admin, &tagged).await["status"], "queued");
}

on_both_stores!(
    cancel_reaches_the_worker_and_queued_jobs_cancel_at_once,
    cancel_reaches_the_worker_and_queued_jobs_cancel_at_once_on_postgres,
    cancel_reaches_the_worker_and_queued_jobs_cancel_at_once_on
);

async fn cancel_reaches_the_worker_and_queued_jobs_cancel_at_once_on(store: Backend) {
    use cmdx_e2e::WAIT;
    use cmdx_proto::client::{ClientMsg, ServerMsg};
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    let hub = store.hub(&[]).await;
    let admin = hub.admin().await;
    let wt = hub.worker_token(&admin).await;
    let user = hub.user(&admin, "canceller@test.local").await;
    // Live job events for this user.
    let mut req = hub.ws_url("/ws/client").into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {user}").parse().unwrap());
    let (mut events, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    events
        .send(Message::text(
            serde_json::to_string(&ClientMsg::SubscribeJobs).unwrap(),
        ))
        .await
        .unwrap();

    let running = hub.submit(&user, json!({"command": "sleep 100"})).await;
    let (mut a, _) = FakeAgent::connect(&hub, &wt, "cw", 1, vec![])
        .await
        .unwrap();
    a.recv_until(|m| matches!(m, HubMsg::Assign(_)).then_some(()))
        .await
        .unwrap();
    a.send(&AgentMsg::Started(Started {
        job_id: running.clone(),
        attempt: 1,
        isolation: vec![],
    }))
    .await
    .unwrap();
    hub.wait_status(&user, &running, "running").await;
    // A second job waits in the queue (one slot); cancelling it is immediate.
    let queued = hub.submit(&user, json!({"command": "true"})).await;
    let v = hub
        .post_json(&user, "/api/jobs/cancel", json!({"jobId": queued}))
        .await;
    assert_eq!(v["status"], "cancelled");
    // Cancelling the running one goes to the worker, which stops it and reports.
    let v = hub
        .post_json(&user, "/api/jobs/cancel", json!({"jobId": running}))
        .await;
    assert_eq!(v["cancelRequested"], true);
    let c = a
        .recv_until(|m| match m {
            HubMsg::Cancel(c) => Some(c),
            _ => None,
        })
        .await
        .unwrap();
    assert_eq!(c.job_id, running);
    a.send(&AgentMsg::Finished(Finished {
        job_id: running.clone(),
        attempt: 1,
        chunks: 0,
        outcome: Outcome {
            signal: Some(15),
            cancelled: true,
            ..Outcome::default()
        },
    }))
    .await
    .unwrap();
    let v = hub.wait_status(&user, &running, "cancelled").await;
    assert!(v["failure"].is_null());
    // The event stream saw the running job go to cancelled without a reload.
    let saw = tokio::time::timeout(WAIT, async {
        while let Some(Ok(m)) = events.next().await {
            if let Message::Text(t) = m
                && let Ok(ServerMsg::Job(j)) = serde_json::from_str::<ServerMsg>(&t)
                && j.job_id == running
                && j.status == cmdx_proto::JobStatus::Cancelled
            {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    assert!(saw, "no live 'cancelled' event for the job");
}

on_both_stores!(
    hub_restart_mid_job_resumes_without_gap_or_duplicate,
    hub_restart_mid_job_resumes_without_gap_or_duplicate_on_postgres,
    hub_restart_mid_job_resumes_without_gap_or_duplicate_on
);

async fn hub_restart_mid_job_resumes_without_gap_or_duplicate_on(store: Backend) {
    let mut hub = store.hub(&[]).await;
    let admin = hub.admin().await;
    let wt = hub.worker_token(&admin).await;
    let id = hub.submit(&admin, json!({"command": "long"})).await;
    let (mut a, _) = FakeAgent::connect(&hub, &wt, "survivor", 1, vec![])
        .await
        .unwrap();
    a.recv_until(|m| matches!(m, HubMsg::Assign(_)).then_some(()))
        .await
        .unwrap();
    a.send(&AgentMsg::Started(Started {
        job_id: id.clone(),
        attempt: 1,
        isolation: vec![],
    }))
    .await
    .unwrap();
    for seq in 0..3u64 {
        a.send(&AgentMsg::Output(OutputChunk {
            job_id: id.clone(),
            attempt: 1,
            seq,
            stream: StreamKind::Stdout,
            data: format!("{seq}\n").as_bytes().into(),
        }))
        .await
        .unwrap();
    }
    let acked = a
        .recv_until(|m| match m {
            HubMsg::OutputAck(x) if x.stored_chunks == 3 => Some(x.stored_chunks),
            _ => None,
        })
        .await
        .unwrap();
    assert_eq!(acked, 3);
    hub.kill9().await;
    hub.restart().await;
    // The agent comes back with the job and all 5 chunks it produced meanwhile.
    let held = vec![cmdx_proto::agent::HeldJob {
        job_id: id.clone(),
        attempt: 1,
        chunks: 5,
        finished: None,
    }];
    let (mut a, welcome) = FakeAgent::connect(&hub, &wt, "survivor", 1, held)
        .await
        .unwrap();
    assert_eq!(welcome.resume.len(), 1, "{welcome:?}");
    let from = welcome.resume[0].stored_chunks;
    assert_eq!(from, 3, "acknowledged chunks survive kill -9");
    for seq in from..5 {
        a.send(&AgentMsg::Output(OutputChunk {
            job_id: id.clone(),
            attempt: 1,
            seq,
            stream: StreamKind::Stdout,
            data: format!("{seq}\n").as_bytes().into(),
        }))
        .await
        .unwrap();
    }
    a.send(&AgentMsg::Finished(Finished {
        job_id: id.clone(),
        attempt: 1,
        chunks: 5,
        outcome: Outcome {
            exit_code: Some(0),
            ..Outcome::default()
        },
    }))
    .await
    .unwrap();
    let admin = hub.admin().await;
    let v = hub.wait_status(&admin, &id, "completed").await;
    assert_eq!(v["stdout"], "0\n1\n2\n3\n4\n");
    assert_eq!(v["attempt"], 1);
}
