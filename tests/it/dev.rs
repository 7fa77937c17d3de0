//! `cmdx dev` from a clean data folder: a newcomer submits `echo hi` over REST and gets it back,
//! run by a real local agent in the real sandbox.

use cmdx_e2e::{ADMIN_EMAIL, ADMIN_PASSWORD, DevProc, wait_for};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newcomer_runs_echo_hi_through_cmdx_dev() {
    let dev = DevProc::start(1).await;
    let (token, job) = run_on_dev(&dev, "echo hi").await;
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(job["stdout"], "hi\n");
    assert_eq!(job["exitCode"], 0);
    assert_eq!(job["workerId"], "dev-agent-0");
    // The worker list shows the local agent with its active isolation layers.
    let w = dev
        .get(&token, "/api/workers/list")
        .await
        .expect("the worker list");
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

/// `cmdx dev` started again on its data folder, after a clean stop, after `kill -9`, and from a
/// folder an earlier version left (no saved agent token): its local agents enrol each time and
/// run jobs (an agent id stays with the token that enrolled it, so a token minted anew each start
/// found the ids taken and no job ever ran), and one worker token serves them all along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cmdx_dev_runs_jobs_again_after_every_kind_of_restart() {
    let mut dev = DevProc::start(1).await;
    let (_, job) = run_on_dev(&dev, "echo first").await;
    assert_eq!(job["stdout"], "first\n", "{job}");
    assert_eq!(dev.terminate().await, Some(0));
    for (how, kill9) in [
        ("a clean stop", false),
        ("kill -9", true),
        ("no saved token", true),
    ] {
        if how == "no saved token" {
            std::fs::remove_file(dev.data.join("dev-agents.token")).unwrap();
        }
        dev = dev.restart(1, kill9).await;
        let (token, job) = run_on_dev(&dev, "echo again").await;
        assert_eq!(job["status"], "completed", "after {how}: {job}");
        assert_eq!(job["stdout"], "again\n", "after {how}");
        let tokens = dev
            .get(&token, "/api/workers/tokens")
            .await
            .expect("the token list");
        let tokens = tokens["tokens"].as_array().unwrap();
        assert_eq!(tokens.len(), 1, "after {how}: {tokens:?}");
        assert_eq!(tokens[0]["workers"], json!(["dev-agent-0"]), "after {how}");
    }
}

/// Signs in as the bootstrap admin of a `cmdx dev`, submits `command` and waits for its end;
/// returns the admin's token and the finished job.
async fn run_on_dev(dev: &DevProc, command: &str) -> (String, Value) {
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
        .json(&json!({ "command": command }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = r["jobId"].as_str().expect("a job id").to_string();
    let job = wait_for("the job to end", || async {
        let v = dev
            .get(&token, &format!("/api/jobs/status?jobId={id}"))
            .await?;
        v["status"]
            .as_str()
            .filter(|s| *s == "completed" || *s == "failed")?;
        Some(v)
    })
    .await;
    (token, job)
}

/// Root's home is 0700 on Debian, and so is every new home: a newcomer who clones there and
/// runs the README's first command must get a working cluster. The test plays that newcomer:
/// `cmdx dev` with no `--data`, from a project folder inside a 0700 folder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newcomer_runs_cmdx_dev_from_a_private_home() {
    use std::os::unix::fs::PermissionsExt as _;
    let home = cmdx_e2e::traversable_tempdir();
    std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let project = home.path().join("cmdx");
    std::fs::create_dir(&project).unwrap();
    let mut dev = DevProc::start_in(&project, home, 1).await;
    let (_, job) = run_on_dev(&dev, "echo hi; pwd").await;
    assert_eq!(job["status"], "completed", "{job}");
    let out = job["stdout"].as_str().unwrap();
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("hi"), "{out}");
    // The job ran in its private root: the 0700 home is no obstacle, since the agent
    // bind-mounts the workspace and the job's uid never walks the host path.
    assert_eq!(lines.next(), Some("/workspace"), "{out}");
    assert_eq!(dev.data, project.join("cmdx-data"));
    assert!(dev.data.is_dir());
    assert!(
        dev.data.join("agents").is_dir(),
        "the agents do not live in the data folder"
    );
    assert_eq!(dev.terminate().await, Some(0));
}

/// `cmdx agent` itself does not move: an operator's `--work-dir` the job users cannot reach is
/// refused at start with a message that says why and what to do.
/// An operator who puts the agent's work dir under a 0700 folder (root's home, say): with the
/// private root the job's uid never walks that path, so the agent starts and runs jobs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_under_a_private_folder_runs_jobs() {
    use std::os::unix::fs::PermissionsExt as _;
    assert!(
        cmdx_sandbox::probe().private_root,
        "this host cannot give jobs a private root: the test needs one"
    );
    let private = tempfile::tempdir().unwrap();
    std::fs::set_permissions(private.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let hub = cmdx_e2e::HubProc::start(crate::FAST).await;
    let admin = hub.admin().await;
    let token = hub.worker_token(&admin).await;
    let _agent = cmdx_e2e::AgentProc::start_with(
        &hub,
        &token,
        Some("private-folder"),
        &private.path().join("agent"),
        51_100,
        1,
    )
    .await;
    let id = hub
        .submit(&admin, json!({"command": "pwd; echo x > f && cat f"}))
        .await;
    let v = hub.wait_done(&admin, &id).await;
    assert_eq!(v["status"], "completed", "{v}");
    assert_eq!(v["stdout"], "/workspace\nx\n", "{v}");
}
