//! `cmdx dev` from a clean data folder: a newcomer submits `echo hi` over REST and gets it back,
//! run by a real local agent in the real sandbox.

use cmdx_e2e::{ADMIN_EMAIL, ADMIN_PASSWORD, DevProc, wait_for};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newcomer_runs_echo_hi_through_cmdx_dev() {
    let dev = DevProc::start(1).await;
    let login: Value = dev
        .http
        .post(format!("{}/api/auth/login", dev.url))
        .json(&json!({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = login["token"].as_str().unwrap().to_string();
    let r: Value = dev
        .http
        .post(format!("{}/api/jobs/submit", dev.url))
        .bearer_auth(&token)
        .json(&json!({"command": "echo hi"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = r["jobId"].as_str().unwrap().to_string();
    let job = wait_for("echo hi to complete", || async {
        let v: Value = dev
            .http
            .get(format!("{}/api/jobs/status?jobId={id}", dev.url))
            .bearer_auth(&token)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        v["status"]
            .as_str()
            .filter(|s| *s == "completed" || *s == "failed")?;
        Some(v)
    })
    .await;
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(job["stdout"], "hi\n");
    assert_eq!(job["exitCode"], 0);
    assert_eq!(job["workerId"], "dev-agent-0");
    // The worker list shows the local agent with its active isolation layers.
    let w: Value = dev
        .http
        .get(format!("{}/api/workers/list", dev.url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let layers = w["workers"][0]["isolation"]["active"].as_array().unwrap();
    for needed in ["netns", "uid", "seccomp", "no_new_privs"] {
        assert!(
            layers.iter().any(|l| l == needed),
            "{needed} missing: {layers:?}"
        );
    }
    assert!(
        layers
            .iter()
            .any(|l| l.as_str().unwrap().starts_with("cgroup-v"))
    );
    assert!(
        layers
            .iter()
            .any(|l| l.as_str().unwrap().starts_with("landlock"))
    );
    let _ = dev.pid();
}
