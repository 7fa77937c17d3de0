//! The queue's order and quotas, played through a real hub process by scripted workers (a
//! WebSocket agent with one slot, a legacy REST poller): priorities go first, users take turns
//! within a priority, each user's jobs stay FIFO, the running quota holds jobs back without
//! wasting a slot, and submissions beyond the queued quota are refused with 429.

use cmdx_e2e::{FakeAgent, HubProc};
use serde_json::{Value, json};

use crate::{Backend, FAST};

on_both_stores!(
    a_burst_waits_its_turn_and_a_priority_job_goes_first,
    a_burst_waits_its_turn_and_a_priority_job_goes_first_on_postgres,
    a_burst_waits_its_turn_and_a_priority_job_goes_first_on
);

/// The scenario: one slot busy, user A queues 30, user B then queues 3, then a job of
/// priority 10. The priority job starts next, all of B's start among the next 8, and A's keep
/// their order.
async fn a_burst_waits_its_turn_and_a_priority_job_goes_first_on(store: Backend) {
    let hub = store.hub(&[]).await;
    let admin = hub.admin().await;
    let wt = hub.worker_token(&admin).await;
    let a = hub.user(&admin, "burst-a@test.local").await;
    let b = hub.user(&admin, "burst-b@test.local").await;
    let (mut agent, _) = FakeAgent::connect(&hub, &wt, "one-slot", 1, vec![])
        .await
        .unwrap();
    let busy = hub.submit(&a, json!({"command": "busy"})).await;
    let first = agent.next_assignment().await.unwrap();
    assert_eq!(first.job_id, busy);

    let mut a_jobs = Vec::new();
    for i in 0..30 {
        a_jobs.push(hub.submit(&a, json!({"command": format!("a{i}")})).await);
    }
    let mut b_jobs = Vec::new();
    for i in 0..3 {
        b_jobs.push(hub.submit(&b, json!({"command": format!("b{i}")})).await);
    }
    // B's first job is next in line: A already has a job running.
    let b0 = hub.job(&b, &b_jobs[0]).await;
    assert_eq!(b0["queuePosition"], 1, "{b0}");
    assert_eq!(b0["waitReason"], "no_free_slot");
    assert_eq!(b0["priority"], 0);
    let urgent = hub
        .submit(&a, json!({"command": "urgent", "priority": 10}))
        .await;
    let b0 = hub.job(&b, &b_jobs[0]).await;
    assert_eq!(b0["queuePosition"], 2, "{b0}");
    assert_eq!(b0["waitReason"], "behind_higher_priority");
    assert_eq!(hub.job(&a, &urgent).await["queuePosition"], 1);
    // A's last job waits behind the priority job, its 29 older ones and B's 3.
    assert_eq!(hub.job(&a, &a_jobs[29]).await["queuePosition"], 34);
    let (_, metrics) = metrics_text(&hub).await;
    assert!(
        metrics.contains("cmdx_queue_depth_by_priority{band=\"high\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("cmdx_queue_depth_by_priority{band=\"normal\"} 33"),
        "{metrics}"
    );

    // One slot: each job finishes before the next is assigned.
    agent.finish(&busy, 1, 0, 0).await.unwrap();
    let mut order = Vec::new();
    for _ in 0..34 {
        let asg = agent.next_assignment().await.unwrap();
        order.push(asg.job_id.clone());
        agent.finish(&asg.job_id, asg.attempt, 0, 0).await.unwrap();
    }
    assert_eq!(order[0], urgent, "the priority job starts next");
    let next8 = &order[1..9];
    for j in &b_jobs {
        assert!(next8.contains(j), "B's {j} not among the next 8: {order:?}");
    }
    let a_order: Vec<&String> = order.iter().filter(|j| a_jobs.contains(j)).collect();
    let a_expected: Vec<&String> = a_jobs.iter().collect();
    assert_eq!(a_order, a_expected, "A's jobs keep FIFO");
    for j in &order {
        let owner = if b_jobs.contains(j) { &b } else { &a };
        assert_eq!(hub.job(owner, j).await["status"], "completed");
    }
}

async fn metrics_text(hub: &HubProc) -> (u16, String) {
    let r = hub
        .http
        .get(format!("{}/metrics", hub.url))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn try_submit(hub: &HubProc, token: &str, body: Value) -> (u16, Value) {
    hub.send_json(token, reqwest::Method::POST, "/api/jobs/submit", body)
        .await
}

async fn put_quota(hub: &HubProc, token: &str, user: &str, body: Value) -> (u16, Value) {
    let path = format!("/api/users/{user}/quota");
    hub.send_json(token, reqwest::Method::PUT, &path, body)
        .await
}

on_both_stores!(
    quotas_refuse_extra_submissions_and_hold_back_running_jobs,
    quotas_refuse_extra_submissions_and_hold_back_running_jobs_on_postgres,
    quotas_refuse_extra_submissions_and_hold_back_running_jobs_on
);

async fn quotas_refuse_extra_submissions_and_hold_back_running_jobs_on(store: Backend) {
    let hub = store
        .hub(&["--max-queued-per-user", "3", "--max-running-per-user", "1"])
        .await;
    let admin = hub.admin().await;
    let wt = hub.worker_token(&admin).await;
    let u = hub.user(&admin, "quota-u@test.local").await;
    let v = hub.user(&admin, "quota-v@test.local").await;
    let u_id = hub.user_id(&admin, "quota-u@test.local").await;

    // Queued quota: three queued, the fourth refused with which quota and its value.
    let mut mine = Vec::new();
    for i in 0..3 {
        mine.push(hub.submit(&u, json!({"command": format!("u{i}")})).await);
    }
    let (s, body) = try_submit(&hub, &u, json!({"command": "one too many"})).await;
    assert_eq!(s, 429, "{body}");
    assert_eq!(body["code"], "quota_exceeded");
    assert_eq!(
        body["quota"],
        json!({"name": "max_queued_per_user", "limit": 3})
    );
    let msg = body["error"].as_str().unwrap();
    assert!(msg.contains("max_queued_per_user is 3"), "{msg}");
    // Another user is not affected.
    let theirs = hub.submit(&v, json!({"command": "v0"})).await;

    // Only admins set quotas; unknown users are 404; bad bodies 400.
    let (s, _) = put_quota(&hub, &u, &u_id, json!({"maxQueued": 100})).await;
    assert_eq!(s, 403);
    let (s, _) = put_quota(&hub, &admin, "no-such-user", json!({"maxQueued": 5})).await;
    assert_eq!(s, 404);
    let (s, _) = put_quota(&hub, &admin, &u_id, json!({"maxQueued": -1})).await;
    assert_eq!(s, 400);
    let (s, _) = put_quota(&hub, &admin, &u_id, json!({"maxQueud": 5})).await;
    assert_eq!(s, 400, "unknown fields are refused");
    let (s, view) = put_quota(&hub, &admin, &u_id, json!({"maxQueued": 4})).await;
    assert_eq!(s, 200, "{view}");
    assert_eq!(view["maxQueued"], 4);
    assert!(view.get("maxRunning").is_none(), "{view}");
    mine.push(hub.submit(&u, json!({"command": "u3"})).await);
    let (s, body) = try_submit(&hub, &u, json!({"command": "u4"})).await;
    assert_eq!((s, &body["quota"]["limit"]), (429, &json!(4)), "{body}");

    // Running quota: two free slots, u may run one job; the other slot goes to v, not idle.
    let (mut agent, _) = FakeAgent::connect(&hub, &wt, "two-slots", 2, vec![])
        .await
        .unwrap();
    let x = agent.next_assignment().await.unwrap();
    let y = agent.next_assignment().await.unwrap();
    let mut got = [x.job_id.clone(), y.job_id.clone()];
    got.sort();
    let mut want = [mine[0].clone(), theirs.clone()];
    want.sort();
    assert_eq!(got, want, "one of u's and v's");
    let waiting = hub.job(&u, &mine[1]).await;
    assert_eq!(waiting["waitReason"], "user_at_running_quota", "{waiting}");
    // v's job ends: its slot stays free, u is at quota.
    agent.finish(&theirs, 1, 0, 0).await.unwrap();
    assert_eq!(hub.job(&u, &mine[1]).await["status"], "queued");
    // u's job ends: the next of u's starts.
    agent.finish(&mine[0], 1, 0, 0).await.unwrap();
    let next = agent.next_assignment().await.unwrap();
    assert_eq!(next.job_id, mine[1]);
    // An admin lifts u's running limit: the rest start at once.
    let (s, _) = put_quota(
        &hub,
        &admin,
        &u_id,
        json!({"maxQueued": 4, "maxRunning": 0}),
    )
    .await;
    assert_eq!(s, 200);
    let more = agent.next_assignment().await.unwrap();
    assert_eq!(more.job_id, mine[2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priorities_above_the_ceiling_are_for_admins() {
    let hub = HubProc::start(FAST).await;
    let admin = hub.admin().await;
    let u = hub.user(&admin, "prio-u@test.local").await;
    let (s, body) = try_submit(&hub, &u, json!({"command": "x", "priority": 51})).await;
    assert_eq!(s, 403, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("above 50"),
        "{body}"
    );
    for bad in [101, -101] {
        let (s, body) = try_submit(&hub, &u, json!({"command": "x", "priority": bad})).await;
        assert_eq!(s, 400, "{bad}: {body}");
    }
    let (s, body) = try_submit(&hub, &u, json!({"command": "x", "priority": "high"})).await;
    assert_eq!(s, 400, "{body}");
    let ok = hub
        .submit(&u, json!({"command": "x", "priority": 50}))
        .await;
    assert_eq!(hub.job(&u, &ok).await["priority"], 50);
    let low = hub
        .submit(&u, json!({"command": "x", "priority": -100}))
        .await;
    assert_eq!(hub.job(&u, &low).await["priority"], -100);
    let top = hub
        .submit(&admin, json!({"command": "x", "priority": 100}))
        .await;
    let (_, list) = hub.get(&admin, "/api/jobs/list").await;
    let listed = list["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["jobId"] == top.as_str())
        .expect("listed")
        .clone();
    assert_eq!(listed["priority"], 100);
    // A rerun keeps the priority, through the same ceiling: a user cannot rerun an admin's
    // priority-100 job (they cannot see it anyway) and gets their own back.
    let r = hub
        .post_json(&u, &format!("/api/jobs/{ok}/rerun"), json!({}))
        .await;
    let rerun = r["jobId"].as_str().unwrap();
    assert_eq!(hub.job(&u, rerun).await["priority"], 50);
}

/// The original REST workers poll `get-job`: they get jobs in the same order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_pollers_take_jobs_in_the_same_order() {
    let hub = HubProc::start(FAST).await;
    let admin = hub.admin().await;
    let wt = hub.worker_token(&admin).await;
    let a = hub.user(&admin, "legacy-a@test.local").await;
    let b = hub.user(&admin, "legacy-b@test.local").await;
    let call = |path: &str, body: Value| {
        hub.http
            .post(format!("{}{path}", hub.url))
            .header("x-worker-token", &wt)
            .json(&body)
            .send()
    };
    let r = call(
        "/api/workers/register",
        json!({"workerId": "poller", "hostname": "h", "os": "linux", "cpuCount": 1, "ramTotalMb": 512}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let a_jobs = [
        hub.submit(&a, json!({"command": "a0"})).await,
        hub.submit(&a, json!({"command": "a1"})).await,
    ];
    let b_job = hub.submit(&b, json!({"command": "b0"})).await;
    let urgent = hub
        .submit(&b, json!({"command": "urgent", "priority": 5}))
        .await;
    let mut order = Vec::new();
    for _ in 0..4 {
        let r = hub
            .http
            .get(format!("{}/api/jobs/get-job?workerId=poller", hub.url))
            .bearer_auth(&wt)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        let id = v["jobId"].as_str().expect("a job").to_string();
        let r = call(
            "/api/jobs/submit-result",
            json!({"jobId": id, "workerId": "poller", "stdout": "", "stderr": "", "exitCode": 0}),
        )
        .await
        .unwrap();
        assert_eq!(r.status(), 200);
        order.push(id);
    }
    // The priority job, then users in turn (b ran the last one, so a), FIFO within a.
    assert_eq!(
        order,
        [urgent, a_jobs[0].clone(), b_job.clone(), a_jobs[1].clone()]
    );
}

/// Two hubs on one database: user A's burst goes in through one hub, user B's jobs through the
/// other, the only worker is on the first. B's jobs still take their turn: the queue notes carry
/// owner and priority, and every hub orders its mirror of the one queue the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_take_turns_across_hubs() {
    let url = cmdx_e2e::pg::fresh_database("fair_two_hubs").expect("private PostgreSQL");
    let mut flags = FAST.to_vec();
    flags.extend(["--store", url.as_str()]);
    let (hub_a, hub_b) = tokio::join!(HubProc::start(&flags), HubProc::start(&flags));
    let admin = hub_a.admin().await;
    let wt = hub_a.worker_token(&admin).await;
    let a = hub_a.user(&admin, "fair-a@test.local").await;
    let b = hub_a.user(&admin, "fair-b@test.local").await;
    let (mut agent, _) = FakeAgent::connect(&hub_a, &wt, "only-slot", 1, vec![])
        .await
        .unwrap();
    let busy = hub_a.submit(&a, json!({"command": "busy"})).await;
    assert_eq!(agent.next_assignment().await.unwrap().job_id, busy);
    let mut a_jobs = Vec::new();
    for i in 0..10 {
        a_jobs.push(hub_a.submit(&a, json!({"command": format!("a{i}")})).await);
    }
    let mut b_jobs = Vec::new();
    for i in 0..3 {
        b_jobs.push(hub_b.submit(&b, json!({"command": format!("b{i}")})).await);
    }
    // Hub A has heard of B's jobs once A's last job stands behind them: 9 of A's and 3 of B's.
    cmdx_e2e::wait_for("hub A's mirror holds B's jobs", || async {
        (hub_a.job(&a, &a_jobs[9]).await["queuePosition"] == 13).then_some(())
    })
    .await;
    agent.finish(&busy, 1, 0, 0).await.unwrap();
    let mut order = Vec::new();
    for _ in 0..13 {
        let asg = agent.next_assignment().await.unwrap();
        order.push(asg.job_id.clone());
        agent.finish(&asg.job_id, asg.attempt, 0, 0).await.unwrap();
    }
    for j in &b_jobs {
        let at = order.iter().position(|x| x == j).expect("ran");
        assert!(at < 6, "B's {j} ran {at}th: {order:?}");
    }
    let a_order: Vec<&String> = order.iter().filter(|j| a_jobs.contains(j)).collect();
    assert_eq!(a_order, a_jobs.iter().collect::<Vec<_>>(), "A's keep FIFO");
}

/// What an autoscaler reads: queue depth per tag set, one series each, gone when drained.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_give_queue_depth_per_tag_set() {
    let hub = HubProc::start(FAST).await;
    let admin = hub.admin().await;
    let (_, text) = metrics_text(&hub).await;
    assert!(
        text.contains("cmdx_queue_depth_by_tags{tags=\"\"} 0"),
        "{text}"
    );
    let mut gpu = Vec::new();
    for _ in 0..3 {
        gpu.push(
            hub.submit(&admin, json!({"command": "x", "tags": ["linux", "gpu"]}))
                .await,
        );
    }
    hub.submit(&admin, json!({"command": "x"})).await;
    let (_, text) = metrics_text(&hub).await;
    assert!(
        text.contains("cmdx_queue_depth_by_tags{tags=\"gpu,linux\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("cmdx_queue_depth_by_tags{tags=\"\"} 1"),
        "{text}"
    );
    for id in &gpu {
        hub.post_json(&admin, "/api/jobs/cancel", json!({"jobId": id}))
            .await;
    }
    let (_, text) = metrics_text(&hub).await;
    assert!(
        !text.contains("gpu,linux"),
        "a drained tag set has no series: {text}"
    );
    assert!(
        text.contains("\ncmdx_queue_depth_other_tag_sets 0\n"),
        "{text}"
    );
    // Past the 50 deepest tag sets the rest are summed apart, never under a `tags` value a
    // real tag set could have (here a job tagged `_other`, which gets its own series).
    for i in 0..TAG_SETS {
        let tags = if i == 0 {
            json!(["_other"])
        } else {
            json!([format!("t{i}")])
        };
        let n = if i < 50 { 2 } else { 1 };
        for _ in 0..n {
            hub.submit(&admin, json!({"command": "x", "tags": tags}))
                .await;
        }
    }
    let (_, text) = metrics_text(&hub).await;
    let series = text
        .lines()
        .filter(|l| l.starts_with("cmdx_queue_depth_by_tags{"))
        .count();
    assert_eq!(series, 50, "{text}");
    assert!(
        text.contains("cmdx_queue_depth_by_tags{tags=\"_other\"} 2"),
        "{text}"
    );
    // Untagged (1 job), t50 and t51 (1 each) are the rest.
    assert!(
        text.contains("\ncmdx_queue_depth_other_tag_sets 3\n"),
        "{text}"
    );
}

/// Tag sets submitted by the overflow part of `metrics_give_queue_depth_per_tag_set`.
const TAG_SETS: usize = 52;
