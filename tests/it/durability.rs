//! Acknowledged means durable: `kill -9` of the hub loses no acknowledged submission.

use serde_json::json;

use crate::Backend;

on_both_stores!(
    kill_dash_nine_loses_no_acknowledged_job,
    kill_dash_nine_loses_no_acknowledged_job_on_postgres,
    kill_dash_nine_loses_no_acknowledged_job_on
);

async fn kill_dash_nine_loses_no_acknowledged_job_on(store: Backend) {
    let mut hub = store.hub(&[]).await;
    let admin = hub.admin().await;
    const N: usize = 400;
    let mut ids = Vec::with_capacity(N);
    // 16 concurrent submitters so that acknowledgements share group-commit flushes.
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..16 {
        let url = hub.url.clone();
        let http = hub.http.clone();
        let token = admin.clone();
        tasks.spawn(async move {
            let mut mine = Vec::new();
            for i in 0..N / 16 {
                let r = http
                    .post(format!("{url}/api/jobs/submit"))
                    .bearer_auth(&token)
                    .json(&json!({"command": format!("echo {t}-{i}")}))
                    .send()
                    .await
                    .expect("submit");
                assert_eq!(r.status(), 201);
                let v: serde_json::Value = r.json().await.expect("json");
                mine.push(v["jobId"].as_str().expect("id").to_string());
            }
            mine
        });
    }
    while let Some(r) = tasks.join_next().await {
        ids.extend(r.expect("task"));
    }
    assert_eq!(ids.len(), N);
    // Right after the last acknowledgement: SIGKILL.
    hub.kill9().await;
    hub.restart().await;
    let admin = hub.admin().await;
    let mut seen = std::collections::HashSet::new();
    let mut cursor = String::new();
    loop {
        let (s, v) = hub
            .get(
                &admin,
                &format!("/api/jobs/list?limit=1000&cursor={cursor}"),
            )
            .await;
        assert_eq!(s, 200);
        for j in v["jobs"].as_array().expect("jobs") {
            assert_eq!(j["status"], "queued");
            seen.insert(j["jobId"].as_str().expect("id").to_string());
        }
        match v["nextCursor"].as_str() {
            Some(c) => cursor = c.to_string(),
            None => break,
        }
    }
    for id in &ids {
        assert!(
            seen.contains(id),
            "acknowledged job {id} lost after kill -9"
        );
    }
}
