//! The original system's worker and submitter routes, with its payloads: chunked JSON bodies,
//! 202 for "no job", multi-megabyte results, PUT for failures, stragglers after the result.

use cmdx_e2e::{HubProc, zip_bytes};
use serde_json::{Value, json};

use crate::FAST;

/// Sends JSON chunked (no Content-Length), as the original agent does.
async fn chunked(
    hub: &HubProc,
    method: reqwest::Method,
    path: &str,
    token: &str,
    body: Value,
) -> (u16, Value) {
    let bytes = serde_json::to_vec(&body).unwrap();
    let parts: Vec<Result<Vec<u8>, std::io::Error>> =
        bytes.chunks(7).map(|c| Ok(c.to_vec())).collect();
    let r = hub
        .http
        .request(method, format!("{}{path}", hub.url))
        .header("x-worker-token", token)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            parts,
        )))
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

async fn get_job(hub: &HubProc, token: &str, worker: &str) -> (u16, Value) {
    let r = hub
        .http
        .get(format!("{}/api/jobs/get-job?workerId={worker}", hub.url))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_worker_runs_a_job_end_to_end() {
    let hub = HubProc::start(FAST).await;
    let admin = hub.admin().await;
    let wt = hub.worker_token(&admin).await;
    let user = hub.user(&admin, "legacy-user@test.local").await;
    let post = reqwest::Method::POST;

    let (s, _) = chunked(&hub, post.clone(), "/api/workers/register", &wt,
        json!({"workerId": "old-1", "hostname": "h", "os": "linux", "cpuCount": 4, "ramTotalMb": 2048, "extra": 1})).await;
    assert_eq!(s, 200);
    let (s, _) = chunked(
        &hub,
        post.clone(),
        "/api/workers/heartbeat",
        &wt,
        json!({"workerId": "old-1", "status": "idle"}),
    )
    .await;
    assert_eq!(s, 200);
    let (s, v) = get_job(&hub, &wt, "old-1").await;
    assert_eq!(s, 202);
    assert_eq!(v["success"], false);
    assert!(v["job"].is_null() && v["jobId"].is_null());

    // A legacy submitter uploads a ZIP and creates a job with its fileUrl.
    let zip = zip_bytes(&[("run.sh", b"echo legacy")]);
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(zip.clone()).file_name("p.zip"),
    );
    let up: Value = hub
        .http
        .post(format!("{}/api/files/upload", hub.url))
        .bearer_auth(&user)
        .multipart(form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let file_url = up["fileUrl"].as_str().unwrap().to_string();
    let created = hub.post_json(&user, "/api/jobs/create",
        json!({"command": "sh run.sh\necho second", "fileUrl": file_url, "filename": "p.zip", "timeoutMs": 30000})).await;
    let id = created["jobId"].as_str().unwrap().to_string();

    let (s, v) = get_job(&hub, &wt, "old-1").await;
    assert_eq!(s, 200);
    assert_eq!(v["success"], true);
    assert_eq!(v["job"]["jobId"], id.as_str());
    assert_eq!(v["jobId"], id.as_str(), "older flat shape too");
    assert_eq!(v["job"]["timeoutMs"], 30000);
    assert_eq!(v["timeout"], 30000);
    let url = v["job"]["fileUrl"].as_str().unwrap().to_string();
    assert!(url.starts_with("http://"), "{url}");
    let dl = hub
        .http
        .get(&url)
        .bearer_auth(&wt)
        .header("x-worker-token", &wt)
        .header("x-worker-id", "old-1")
        .send()
        .await
        .unwrap();
    assert_eq!(dl.status(), 200);
    assert_eq!(dl.bytes().await.unwrap().to_vec(), zip);
    // Another worker may not download it.
    let other = hub
        .http
        .get(&url)
        .bearer_auth(&wt)
        .header("x-worker-id", "old-2")
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 404);

    let (s, _) = chunked(
        &hub,
        post.clone(),
        "/api/jobs/stream-output",
        &wt,
        json!({"jobId": id, "data": "legacy\n", "type": "stdout"}),
    )
    .await;
    assert_eq!(s, 200);
    let r: Value = hub
        .http
        .get(format!("{}/api/jobs/check-cancel?jobId={id}", hub.url))
        .bearer_auth(&wt)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["success"], true);
    assert_eq!(r["cancelRequested"], false);

    // A multi-megabyte result whose stdout extends what was streamed.
    let big = format!("legacy\n{}", "x".repeat(3 << 20));
    let (s, v) = chunked(
        &hub,
        post.clone(),
        "/api/jobs/submit-result",
        &wt,
        json!({"jobId": id, "workerId": "old-1", "stdout": big, "stderr": "warn\n", "exitCode": 0}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let done = hub.job(&user, &id).await;
    assert_eq!(done["status"], "completed");
    assert_eq!(done["stdout"].as_str().unwrap().len(), big.len());
    assert!(
        done["stdout"].as_str().unwrap() == big,
        "stdout is exactly the result"
    );
    assert_eq!(done["stderr"], "warn\n");
    // A straggler after the result is accepted and ignored.
    let (s, _) = chunked(
        &hub,
        post,
        "/api/jobs/stream-output",
        &wt,
        json!({"jobId": id, "data": "late\n", "type": "stdout"}),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(
        hub.job(&user, &id).await["stdout"].as_str().unwrap().len(),
        big.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_legacy_result_is_rejected_with_409() {
    let hub = HubProc::start(FAST).await;
    let admin = hub.admin().await;
    let wt = hub.worker_token(&admin).await;
    for w in ["l1", "l2"] {
        let (s, _) = chunked(
            &hub,
            reqwest::Method::POST,
            "/api/workers/register",
            &wt,
            json!({"workerId": w}),
        )
        .await;
        assert_eq!(s, 200);
    }
    let id = hub.submit(&admin, json!({"command": "true"})).await;
    let (s, v) = get_job(&hub, &wt, "l1").await;
    assert_eq!((s, v["jobId"].as_str()), (200, Some(id.as_str())));
    // l1 is removed by an admin: its job goes back to the queue and l2 takes attempt 2.
    let r = hub
        .http
        .delete(format!("{}/api/workers/l1", hub.url))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (s, v) = get_job(&hub, &wt, "l2").await;
    assert_eq!((s, v["jobId"].as_str()), (200, Some(id.as_str())));
    assert_eq!(hub.job(&admin, &id).await["attempt"], 2);
    let (s, v) = chunked(
        &hub,
        reqwest::Method::POST,
        "/api/jobs/submit-result",
        &wt,
        json!({"jobId": id, "workerId": "l1", "stdout": "stale", "stderr": "", "exitCode": 0}),
    )
    .await;
    assert_eq!(s, 409, "{v}");
    assert_eq!(v["code"], "stale_attempt");
    let j = hub.job(&admin, &id).await;
    // A legacy worker starts a job as soon as it receives it.
    assert_eq!(j["status"], "running");
    assert_eq!(j["workerId"], "l2");
    assert_eq!(j["stdout"], "");
    // The holder reports a failure with PUT.
    let (s, _) = chunked(
        &hub,
        reqwest::Method::PUT,
        "/api/jobs/submit-result",
        &wt,
        json!({"jobId": id, "workerId": "l2", "errorMessage": "could not unzip"}),
    )
    .await;
    assert_eq!(s, 200);
    let j = hub.job(&admin, &id).await;
    assert_eq!(j["status"], "failed");
    assert_eq!(j["failure"], "setup");
    assert_eq!(j["error"], "could not unzip");
}
