//! Exactly one worker gets a job; stale attempts are rejected; disconnected workers get a grace,
//! then lose their jobs to requeue, then to `worker_lost` after `maxAttempts`.

use cmdx_e2e::{FakeAgent, wait_for};
use cmdx_proto::agent::{AgentMsg, Finished, HeldJob, HubMsg, OutputChunk, Started};
use cmdx_proto::{Outcome, StreamKind};
use serde_json::json;

use crate::Backend;

on_both_stores!(
    two_workers_race_and_exactly_one_wins,
    two_workers_race_and_exactly_one_wins_on_postgres,
    two_workers_race_and_exactly_one_wins_on
);

async fn two_workers_race_and_exactly_one_wins_on(store: Backend) {
    let hub = store.hub(&[]).await;
    let admin = hub.admin().await;
    let wt = hub.worker_token(&admin).await;
    let (mut a, _) = FakeAgent::connect(&hub, &wt, "race-a", 1, vec![])
        .await
        .unwrap();
    let (mut b, _) = FakeAgent::connect(&hub, &wt, "race-b", 1, vec![])
        .await
        .unwrap();
    let id = hub.submit(&admin, json!({"command": "true"})).await;
    let got = tokio::select! {
        x = a.next_assignment() => ("race-a", x.unwrap()),
        x = b.next_assignment() => ("race-b", x.unwrap()),
    };
    assert_eq!(got.1.job_id, id);
    // The other one gets nothing for this job: a second job goes to it, proving it was free.
    let id2 = hub.submit(&admin, json!({"command": "true"})).await;
    let other = if got.0 == "race-a" { &mut b } else { &mut a };
    let second = other.next_assignment().await.unwrap();
    assert_eq!(
        second.job_id, id2,
        "the loser must not have received the first job"
    );
    let v = hub.job(&admin, &id).await;
    assert_eq!(v["workerId"], got.0);
    assert_eq!(v["attempt"], 1);
}

on_both_stores!(
    reconnect_within_grace_resumes_and_after_grace_requeues,
    reconnect_within_grace_resumes_and_after_grace_requeues_on_postgres,
    reconnect_within_grace_resumes_and_after_grace_requeues_on
);

async fn reconnect_within_grace_resumes_and_after_grace_requeues_on(store: Backend) {
    let hub = store.hub(&[]).await;
    let admin = hub.admin().await;
    let wt = hub.worker_token(&admin).await;
    let id = hub.submit(&admin, json!({"command": "sleep 1"})).await;
    let (mut a, _) = FakeAgent::connect(&hub, &wt, "resumer", 1, vec![])
        .await
        .unwrap();
    let asg = a.next_assignment().await.unwrap();
    a.send(&AgentMsg::Started(Started {
        job_id: id.clone(),
        attempt: 1,
        isolation: vec![],
    }))
    .await
    .unwrap();
    a.send(&AgentMsg::Output(OutputChunk {
        job_id: id.clone(),
        attempt: 1,
        seq: 0,
        stream: StreamKind::Stdout,
        data: b"one\n".as_slice().into(),
    }))
    .await
    .unwrap();
    a.recv_until(|m| matches!(m, HubMsg::OutputAck(_)).then_some(()))
        .await
        .unwrap();
    a.drop_connection();
    // Back within the 2 s grace, holding the job: resume from the stored chunk count.
    let held = vec![HeldJob {
        job_id: id.clone(),
        attempt: asg.attempt,
        chunks: 2,
        finished: None,
    }];
    let (mut a, welcome) = FakeAgent::connect(&hub, &wt, "resumer", 1, held)
        .await
        .unwrap();
    assert_eq!(welcome.resume.len(), 1, "{welcome:?}");
    assert_eq!(welcome.resume[0].stored_chunks, 1);
    assert!(welcome.abandon.is_empty());
    // Resend from seq 1 (and a duplicate of seq 0, which must be ignored).
    for (seq, d) in [(0u64, "one\n"), (1, "two\n")] {
        a.send(&AgentMsg::Output(OutputChunk {
            job_id: id.clone(),
            attempt: 1,
            seq,
            stream: StreamKind::Stdout,
            data: d.as_bytes().into(),
        }))
        .await
        .unwrap();
    }
    a.send(&AgentMsg::Finished(Finished {
        job_id: id.clone(),
        attempt: 1,
        chunks: 2,
        outcome: Outcome {
            exit_code: Some(0),
            ..Outcome::default()
        },
    }))
    .await
    .unwrap();
    let v = hub.wait_status(&admin, &id, "completed").await;
    assert_eq!(v["stdout"], "one\ntwo\n", "no gap, no duplicate");
    assert_eq!(v["attempt"], 1);

    // A second job: the worker vanishes past the grace; the job is requeued (attempt 2 elsewhere).
    let id2 = hub.submit(&admin, json!({"command": "true"})).await;
    let first = a.next_assignment().await.unwrap();
    assert_eq!(first.job_id, id2);
    a.drop_connection();
    wait_for("requeue after the grace", || async {
        (hub.job(&admin, &id2).await["status"] == "queued").then_some(())
    })
    .await;
    let (mut b, _) = FakeAgent::connect(&hub, &wt, "other", 1, vec![])
        .await
        .unwrap();
    let again = b.next_assignment().await.unwrap();
    assert_eq!(again.job_id, id2);
    assert_eq!(again.attempt, 2);

    // The stale worker comes back claiming attempt 1: told to abandon it, and its result is
    // refused without changing the job.
    let held = vec![HeldJob {
        job_id: id2.clone(),
        attempt: 1,
        chunks: 0,
        finished: None,
    }];
    let (mut stale, welcome) = FakeAgent::connect(&hub, &wt, "resumer", 1, held)
        .await
        .unwrap();
    assert_eq!(welcome.abandon.len(), 1);
    stale
        .send(&AgentMsg::Finished(Finished {
            job_id: id2.clone(),
            attempt: 1,
            chunks: 0,
            outcome: Outcome {
                exit_code: Some(9),
                ..Outcome::default()
            },
        }))
        .await
        .unwrap();
    stale
        .recv_until(|m| matches!(m, HubMsg::Abandon(ref x) if x.job_id == id2).then_some(()))
        .await
        .unwrap();
    let v = hub.job(&admin, &id2).await;
    assert_eq!(v["status"], "assigned");
    assert_eq!(v["workerId"], "other");
}

on_both_stores!(
    out_of_attempts_fails_as_worker_lost,
    out_of_attempts_fails_as_worker_lost_on_postgres,
    out_of_attempts_fails_as_worker_lost_on
);

async fn out_of_attempts_fails_as_worker_lost_on(store: Backend) {
    let hub = store.hub(&[]).await;
    let admin = hub.admin().await;
    let wt = hub.worker_token(&admin).await;
    let id = hub
        .submit(&admin, json!({"command": "true", "maxAttempts": 1}))
        .await;
    let (mut a, _) = FakeAgent::connect(&hub, &wt, "doomed", 1, vec![])
        .await
        .unwrap();
    a.next_assignment().await.unwrap();
    a.drop_connection();
    let v = hub.wait_status(&admin, &id, "failed").await;
    assert_eq!(v["failure"], "worker_lost");
    assert!(
        v["error"].as_str().unwrap().contains("attempt 1 of 1"),
        "{v}"
    );
}
