//! Rate limits as real clients meet them, on a hub with its default budgets: the original browser
//! client (multipart `POST /api/execute`, status every 500 ms, the worker list every 5 s) is never
//! refused; a submission flood is; two users behind one address have budgets of their own; a
//! refusal carries `Retry-After`, the draft `RateLimit` headers and a counter on `/metrics`.
//! The three-minute run of the same poller is `hub::ratelimit::tests` on a paused clock.

use std::time::{Duration, Instant};

use cmdx_e2e::{AgentProc, HubProc, traversable_tempdir, zip_bytes};
use serde_json::{Value, json};

/// `"group";r=N;t=S` → N.
fn remaining(h: &reqwest::header::HeaderMap) -> u32 {
    let v = h
        .get("ratelimit")
        .expect("RateLimit header")
        .to_str()
        .unwrap();
    let r = v.split(';').find_map(|p| p.strip_prefix("r=")).unwrap();
    r.parse().unwrap()
}

/// The original web UI, call for call, against a hub started with no rate-limit flags.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_original_browser_client_polling_at_2_hz_is_never_refused() {
    let hub = HubProc::start(&[]).await;
    let admin = hub.admin().await;
    let wt = hub.worker_token(&admin).await;
    let dir = traversable_tempdir();
    let _agent = AgentProc::start(&hub, &wt, "rl-agent", &dir.path().join("a"), 53_000).await;
    let user = hub.user(&admin, "browser@test.local").await;

    let form = reqwest::multipart::Form::new()
        .part(
            "file",
            reqwest::multipart::Part::bytes(zip_bytes(&[("hello.txt", b"hi\n")]))
                .file_name("project.zip")
                .mime_str("application/zip")
                .unwrap(),
        )
        .text("commands", "sleep 8; cat hello.txt")
        .text("mode", "distributed");
    let r = hub
        .http
        .post(format!("{}/api/execute", hub.url))
        .bearer_auth(&user)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(
        r.headers()["ratelimit-policy"],
        "\"write\";q=100;w=60",
        "the submission is charged to the write budget"
    );
    let job = r.json::<Value>().await.unwrap()["jobId"]
        .as_str()
        .unwrap()
        .to_string();

    let started = Instant::now();
    let mut polls = 0;
    let mut lowest = u32::MAX;
    let mut done = false;
    // Poll at 2 Hz while the job runs (about 8 s), then 4 s more as a tab left open does.
    while started.elapsed() < Duration::from_secs(30) && !(done && polls >= 24) {
        if polls % 10 == 0 {
            let r = hub
                .http
                .get(format!("{}/api/workers/list", hub.url))
                .bearer_auth(&user)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "workers list refused after {polls} polls");
        }
        let r = hub
            .http
            .get(format!("{}/api/jobs/status?jobId={job}", hub.url))
            .bearer_auth(&user)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "status poll {polls} refused");
        lowest = lowest.min(remaining(r.headers()));
        let v: Value = r.json().await.unwrap();
        done = done || v["status"] == "completed" || v["status"] == "failed";
        polls += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(done, "the job did not finish in 30 s");
    assert!(
        lowest >= 35,
        "a 2 Hz poller used {} of its 40 read burst",
        40 - lowest
    );
    let (_, v) = hub
        .get(&user, &format!("/api/jobs/status?jobId={job}"))
        .await;
    assert_eq!(v["status"], "completed", "{v}");
}

/// A submission flood from one user is refused after 100 in a burst, with `Retry-After`, the
/// draft headers and a `group="write"` refusal on `/metrics`; the same user can still read, and a
/// second user behind the same address can still submit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submit_flood_gets_429_and_users_behind_one_address_keep_their_own_budget() {
    let hub = HubProc::start(&["--login-rate-limit-per-min", "0"]).await;
    let admin = hub.admin().await;
    let flooder = hub.user(&admin, "flooder@test.local").await;
    let neighbour = hub.user(&admin, "neighbour@test.local").await;
    let submit = |token: String| {
        let http = hub.http.clone();
        let url = format!("{}/api/jobs/submit", hub.url);
        async move {
            http.post(url)
                .bearer_auth(token)
                .json(&json!({"command": "true"}))
                .send()
                .await
                .unwrap()
        }
    };
    let mut accepted = 0;
    let refused = loop {
        let r = submit(flooder.clone()).await;
        match r.status().as_u16() {
            201 => accepted += 1,
            429 => break r,
            other => panic!("submit answered {other}"),
        }
        assert!(accepted <= 101, "no 429 after {accepted} submissions");
    };
    assert!(
        (100..=101).contains(&accepted),
        "the write burst is 100: {accepted}"
    );
    let h = refused.headers();
    let retry: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(
        (1..=2).contains(&retry),
        "one write returns every 0.6 s: {retry}"
    );
    assert_eq!(h["ratelimit-policy"], "\"write\";q=100;w=60");
    assert!(
        h["ratelimit"]
            .to_str()
            .unwrap()
            .starts_with("\"write\";r=0;t="),
        "{:?}",
        h["ratelimit"]
    );
    let v: Value = refused.json().await.unwrap();
    assert_eq!(v["code"], "rate_limited");

    // Reads are a budget of their own.
    let (s, list) = hub.get(&flooder, "/api/jobs/list?limit=1000").await;
    assert_eq!(s, 200);
    assert_eq!(
        list["count"].as_u64().unwrap(),
        accepted,
        "every accepted submission is kept, no refused one"
    );
    // Same address, another user: not affected.
    assert_eq!(submit(neighbour.clone()).await.status(), 201);

    let metrics = hub
        .http
        .get(format!("{}/metrics", hub.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let refused_writes = metrics
        .lines()
        .find(|l| l.starts_with("cmdx_rate_limited_total{") && l.contains("group=\"write\""))
        .unwrap_or_else(|| panic!("no write refusals on /metrics:\n{metrics}"));
    let n: f64 = refused_writes.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(n >= 1.0, "{refused_writes}");
}

/// Anonymous calls are charged to the address: a flood of calls without a session (or with a
/// forged one) is refused once the read burst is spent, while a signed-in user on the same
/// address reads on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_floods_are_charged_to_the_address_not_to_its_users() {
    let hub = HubProc::start(&[
        "--read-rate-limit-per-sec",
        "1",
        "--read-rate-limit-burst",
        "10",
        "--login-rate-limit-per-min",
        "0",
    ])
    .await;
    let admin = hub.admin().await;
    let mut codes = Vec::new();
    for i in 0..30 {
        let mut r = hub.http.get(format!("{}/api/jobs/list", hub.url));
        if i % 2 == 1 {
            r = r.bearer_auth("forged.token.value");
        }
        let s = r.send().await.unwrap().status().as_u16();
        codes.push(s);
        if s == 429 {
            break;
        }
    }
    assert_eq!(codes.last(), Some(&429), "{codes:?}");
    assert!(
        codes.len() <= 12 && codes[..codes.len() - 1].iter().all(|c| *c == 401),
        "{codes:?}"
    );
    let (s, _) = hub.get(&admin, "/api/jobs/list").await;
    assert_eq!(s, 200, "the signed-in admin has a budget of its own");
}
