//! Job artifacts through real parts: real `cmdx agent`s collecting from real sandboxed jobs,
//! the hub storing and serving them, hostile jobs gaining nothing, the upload fenced on the
//! attempt, the legacy `resultZipBase64`, and nobody but the owner (or an admin) reading them.

use std::io::Read;
use std::time::Duration;

use cmdx_e2e::{
    AgentProc, FakeAgent, HubProc, traversable_tempdir, wait_for, wait_for_within, zip_bytes,
};
use cmdx_proto::agent::{AgentMsg, JobRef, Started};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::FAST;

async fn get_bytes(
    hub: &HubProc,
    token: &str,
    path: &str,
) -> (u16, Vec<u8>, reqwest::header::HeaderMap) {
    let r = hub
        .http
        .get(format!("{}{path}", hub.url))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, r.bytes().await.unwrap().to_vec(), headers)
}

fn unzip(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut z = zip::ZipArchive::new(std::io::Cursor::new(bytes)).expect("a valid ZIP");
    (0..z.len())
        .map(|i| {
            let mut f = z.by_index(i).unwrap();
            let mut data = Vec::new();
            f.read_to_end(&mut data).unwrap();
            (f.name().unwrap().to_string(), data)
        })
        .collect()
}

fn sha_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn listed(job: &Value) -> Vec<(String, u64, String)> {
    job["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["path"].as_str().unwrap().to_string(),
                a["size"].as_u64().unwrap(),
                a["sha256"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn skipped(job: &Value) -> Vec<(String, String)> {
    job["artifactsSkipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["path"].as_str().unwrap().to_string(),
                s["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jobs_files_are_collected_listed_and_downloadable_by_its_owner_only() {
    let hub = HubProc::start(FAST).await;
    let admin = hub.admin().await;
    let wt = hub.worker_token(&admin).await;
    let alice = hub.user(&admin, "alice-art@test.local").await;
    let bob = hub.user(&admin, "bob-art@test.local").await;
    let dir = traversable_tempdir();
    let _agent = AgentProc::start(&hub, &wt, "art-agent", &dir.path().join("a"), 54_000).await;
    let id = hub
        .submit(
            &alice,
            json!({
                "command": "mkdir -p dist/sub reports && echo built > dist/app.txt \
                    && head -c 300000 /dev/urandom > dist/sub/blob.bin \
                    && echo '<r/>' > reports/r.xml && echo no > reports/notes.txt \
                    && sha256sum dist/app.txt dist/sub/blob.bin reports/r.xml",
                "artifacts": ["dist/**", "reports/*.xml"],
            }),
        )
        .await;
    let job = hub.wait_status(&alice, &id, "completed").await;
    assert_eq!(job["artifactPatterns"], json!(["dist/**", "reports/*.xml"]));
    // What the job itself hashed, inside the sandbox.
    let inside: Vec<(String, String)> = job["stdout"]
        .as_str()
        .unwrap()
        .lines()
        .map(|l| {
            let (sha, path) = l.split_once("  ").unwrap();
            (path.to_string(), sha.to_string())
        })
        .collect();
    let mut got = listed(&job);
    got.sort();
    let paths: Vec<&str> = got.iter().map(|(p, _, _)| p.as_str()).collect();
    assert_eq!(
        paths,
        ["dist/app.txt", "dist/sub/blob.bin", "reports/r.xml"]
    );
    for (path, sha) in &inside {
        let (_, _, listed_sha) = got.iter().find(|(p, _, _)| p == path).unwrap();
        assert_eq!(
            listed_sha, sha,
            "{path}: listed hash differs from the job's"
        );
    }
    assert_eq!(got[1].1, 300_000);
    assert!(job["artifactsSkipped"].as_array().unwrap().is_empty());
    assert!(job["artifactsError"].is_null());
    let url = job["artifactsUrl"].as_str().unwrap().to_string();
    assert_eq!(url, format!("/api/jobs/{id}/artifacts"));

    // The whole ZIP, byte-identical files.
    let (s, zip, h) = get_bytes(&hub, &alice, &url).await;
    assert_eq!(s, 200);
    assert_eq!(h["content-type"], "application/zip");
    assert_eq!(h["x-content-sha256"].to_str().unwrap(), sha_hex(&zip));
    let files = unzip(&zip);
    assert_eq!(files.len(), 3);
    for (name, data) in &files {
        let (_, sha) = inside.iter().find(|(p, _)| p == name).unwrap();
        assert_eq!(&sha_hex(data), sha, "{name} in the ZIP differs");
    }
    // One file, streamed out of the ZIP.
    let (s, blob, h) = get_bytes(&hub, &alice, &format!("{url}/dist/sub/blob.bin")).await;
    assert_eq!(s, 200);
    assert_eq!(blob.len(), 300_000);
    assert_eq!(sha_hex(&blob), inside[1].1);
    assert_eq!(h["content-type"], "application/octet-stream");
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert!(
        h["content-disposition"]
            .to_str()
            .unwrap()
            .contains("blob.bin")
    );
    // An admin may; another user gets the same 404 as for nothing at all.
    assert_eq!(get_bytes(&hub, &admin, &url).await.0, 200);
    for path in [
        url.clone(),
        format!("{url}/dist/app.txt"),
        format!("/api/jobs/{id}/output"),
    ] {
        assert_eq!(get_bytes(&hub, &bob, &path).await.0, 404, "{path}");
    }
    assert_eq!(
        get_bytes(&hub, &alice, &format!("{url}/dist/nope")).await.0,
        404
    );
    assert_eq!(
        get_bytes(&hub, &alice, &format!("{url}/reports/notes.txt"))
            .await
            .0,
        404
    );
    assert_eq!(
        get_bytes(&hub, &alice, "/api/jobs/nope/artifacts").await.0,
        404
    );
    // Artifact ZIPs are not listed among uploads.
    let (_, files) = hub.get(&alice, "/api/files/list").await;
    assert!(files["files"].as_array().unwrap().is_empty(), "{files}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifacts_are_collected_after_failure_timeout_and_cancel() {
    let hub = HubProc::start(FAST).await;
    let admin = hub.admin().await;
    let wt = hub.worker_token(&admin).await;
    let dir = traversable_tempdir();
    let _agent = AgentProc::start(&hub, &wt, "art-agent-2", &dir.path().join("a"), 54_100).await;
    let failed = hub
        .submit(
            &admin,
            json!({"command": "echo partial > out.log; exit 3", "artifacts": ["*.log"]}),
        )
        .await;
    let timed = hub
        .submit(
            &admin,
            json!({"command": "echo t > t.log; sleep 30", "artifacts": ["*.log"], "timeout": 1}),
        )
        .await;
    let cancelled = hub
        .submit(
            &admin,
            json!({"command": "echo c > c.log; echo ready; sleep 30", "artifacts": ["*.log"]}),
        )
        .await;
    wait_for("the cancel target to write its file", || async {
        (hub.job(&admin, &cancelled).await["stdout"] == "ready\n").then_some(())
    })
    .await;
    hub.post_json(&admin, "/api/jobs/cancel", json!({"jobId": cancelled}))
        .await;
    for (id, status, file) in [
        (&failed, "failed", "out.log"),
        (&timed, "failed", "t.log"),
        (&cancelled, "cancelled", "c.log"),
    ] {
        let job = hub.wait_done(&admin, id).await;
        assert_eq!(job["status"], status, "{job}");
        let got = listed(&job);
        assert_eq!(got.len(), 1, "{job}");
        assert_eq!(got[0].0, file);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_jobs_gain_nothing_and_are_told_what_was_skipped() {
    let caps = [
        "--max-artifact-files",
        "500",
        "--max-artifact-bytes",
        "10000000",
    ];
    let hub = HubProc::start(&[FAST, &caps].concat()).await;
    let admin = hub.admin().await;
    let wt = hub.worker_token(&admin).await;
    let dir = traversable_tempdir();
    // A workspace large enough (inodes: one per 4 KiB) for a million files.
    let mut agent = AgentProc::start_with_args(
        &hub,
        &wt,
        "hostile-agent",
        &dir.path().join("a"),
        54_200,
        &["--disk-mb", "6000", "--memory-mb", "3000"],
    )
    .await;
    let id = hub
        .submit(
            &admin,
            json!({
                "command": "mkdir -p dist many && echo fine > dist/ok.txt \
                    && ln -s /etc/shadow dist/x && ln -s /etc dist/etcdir \
                    && (ln /etc/passwd dist/hard 2>/dev/null || echo no-hardlink) \
                    && mkfifo dist/pipe.txt \
                    && (truncate -s 10G dist/sparse 2>/dev/null || truncate -s 1000M dist/sparse) \
                    && cd many && seq 1 1000000 | xargs touch && ls | wc -l",
                "artifacts": ["dist/**", "many/*"],
                "timeout": 600,
            }),
        )
        .await;
    // Making a million files takes a while on a busy 2-core machine.
    let job = wait_for_within(
        "the hostile job to end",
        Duration::from_secs(300),
        || async {
            let v = hub.job(&admin, &id).await;
            matches!(
                v["status"].as_str(),
                Some("completed" | "failed" | "cancelled")
            )
            .then_some(v)
        },
    )
    .await;
    assert_eq!(job["status"], "completed", "{job}");
    assert!(job["stdout"].as_str().unwrap().contains("1000000"), "{job}");
    let got = listed(&job);
    let paths: Vec<&str> = got.iter().map(|(p, _, _)| p.as_str()).collect();
    assert!(paths.contains(&"dist/ok.txt"), "{paths:?}");
    for bad in [
        "dist/x",
        "dist/etcdir",
        "dist/hard",
        "dist/pipe.txt",
        "dist/sparse",
    ] {
        assert!(!paths.iter().any(|p| p.starts_with(bad)), "{bad} collected");
    }
    assert!(got.len() <= 500, "file cap exceeded: {}", got.len());
    let total: u64 = got.iter().map(|(_, s, _)| s).sum();
    assert!(total <= 10_000_000);
    let why = skipped(&job);
    let reason = |p: &str| {
        why.iter()
            .find(|(path, _)| path == p)
            .map(|(_, r)| r.clone())
            .unwrap_or_else(|| panic!("{p} not reported as skipped: {why:?}"))
    };
    assert!(reason("dist/x").contains("symlink"));
    assert!(reason("dist/etcdir").contains("symlink"));
    assert!(reason("dist/pipe.txt").contains("FIFO"));
    assert!(reason("dist/sparse").contains("byte cap"));
    assert!(
        why.iter().any(|(_, r)| r.contains("file cap of 500")),
        "{why:?}"
    );
    // No byte from outside the job dir.
    let (s, zip, _) = get_bytes(&hub, &admin, &format!("/api/jobs/{id}/artifacts")).await;
    assert_eq!(s, 200);
    for (name, data) in unzip(&zip) {
        assert!(
            !String::from_utf8_lossy(&data).contains("root:"),
            "{name} holds a system file"
        );
    }
    // The agent is still healthy: the next job runs.
    let next = hub.submit(&admin, json!({"command": "echo next"})).await;
    hub.wait_status(&admin, &next, "completed").await;
    assert!(agent.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upload_is_fenced_checked_and_durable() {
    let mut hub = HubProc::start(FAST).await;
    let admin = hub.admin().await;
    let wt = hub.worker_token(&admin).await;
    let other_wt = hub.worker_token(&admin).await;
    // Globs that leave the job dir are refused at submission.
    for bad in [
        json!(["../x"]),
        json!(["/etc/*"]),
        json!(["a/../../b"]),
        json!(["["]),
    ] {
        let r = hub
            .http
            .post(format!("{}/api/jobs/submit", hub.url))
            .bearer_auth(&admin)
            .json(&json!({"command": "true", "artifacts": bad}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 400, "{bad}");
    }
    let (mut agent, _) = FakeAgent::connect(&hub, &wt, "fenced-art", 1, vec![])
        .await
        .unwrap();
    let plain = hub.submit(&admin, json!({"command": "true"})).await;
    let plain_attempt = agent.next_assignment().await.unwrap();
    assert!(plain_attempt.artifacts.is_empty());
    let upload = |token: String, worker: String, job: String, attempt: u32, zip: Vec<u8>| {
        upload_artifacts(&hub, token, worker, job, attempt, zip)
    };
    let good = zip_bytes(&[("dist/app.txt", b"hello"), ("r.xml", b"<r/>")]);
    // A job that asked for no artifacts takes none.
    let (s, _) = upload(wt.clone(), agent.id.clone(), plain.clone(), 1, good.clone()).await;
    assert_eq!(s, 409);
    agent.finish(&plain, 1, 0, 0).await.unwrap();

    let id = hub
        .submit(
            &admin,
            json!({"command": "true", "artifacts": ["dist/**", "*.xml"]}),
        )
        .await;
    let a = agent.next_assignment().await.unwrap();
    assert_eq!(a.artifacts, ["dist/**", "*.xml"]);
    assert_eq!(a.artifact_max_files, Some(10_000));
    assert_eq!(a.artifact_max_bytes, Some(256 << 20));
    agent
        .send(&AgentMsg::Accept(JobRef {
            job_id: id.clone(),
            attempt: 1,
        }))
        .await
        .unwrap();
    agent
        .send(&AgentMsg::Started(Started {
            job_id: id.clone(),
            attempt: 1,
            isolation: vec![],
        }))
        .await
        .unwrap();
    // Wrong attempt, another worker's token, another worker's id, a user token.
    let me = agent.id.clone();
    for (token, worker, attempt, want) in [
        (&wt, me.as_str(), 2, 409),
        (&other_wt, me.as_str(), 1, 409),
        (&wt, "someone-else", 1, 409),
        (&admin, me.as_str(), 1, 403),
    ] {
        let (s, v) = upload(
            token.clone(),
            worker.into(),
            id.clone(),
            attempt,
            good.clone(),
        )
        .await;
        assert_eq!(s, want, "{worker} attempt {attempt}: {v}");
    }
    // Hostile ZIPs are refused whole.
    for evil in [
        zip_bytes(&[("../escape", b"x")]),
        zip_bytes(&[("/abs", b"x")]),
        b"not a zip".to_vec(),
    ] {
        let (s, v) = upload(wt.clone(), agent.id.clone(), id.clone(), 1, evil).await;
        assert_eq!(s, 400, "{v}");
    }
    let (s, v) = upload(wt.clone(), agent.id.clone(), id.clone(), 1, good.clone()).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["artifacts"].as_array().unwrap().len(), 2);
    agent.finish(&id, 1, 0, 0).await.unwrap();
    let job = hub.wait_status(&admin, &id, "completed").await;
    assert_eq!(
        skipped(&job),
        [("dist/x".to_string(), "symlink (not followed)".to_string())]
    );
    assert_eq!(job["artifactsSkippedTotal"], 1);
    // After the result, the attempt is over: no more uploads.
    assert_eq!(
        upload(wt.clone(), agent.id.clone(), id.clone(), 1, good.clone())
            .await
            .0,
        409
    );

    // Acknowledged means durable: kill -9, restart, same bytes.
    let (_, before, _) = get_bytes(&hub, &admin, &format!("/api/jobs/{id}/artifacts")).await;
    drop(agent);
    hub.kill9().await;
    hub.restart().await;
    let admin = hub.admin().await;
    let (s, after, _) = get_bytes(&hub, &admin, &format!("/api/jobs/{id}/artifacts")).await;
    assert_eq!(s, 200);
    assert_eq!(before, after);
    assert_eq!(before, good);
    let (s, one, _) = get_bytes(
        &hub,
        &admin,
        &format!("/api/jobs/{id}/artifacts/dist/app.txt"),
    )
    .await;
    assert_eq!((s, one.as_slice()), (200, b"hello".as_slice()));
}

/// `PUT /api/jobs/{job}/artifacts?attempt=N` as an agent, with a one-entry skip manifest.
async fn upload_artifacts(
    hub: &HubProc,
    token: String,
    worker: String,
    job: String,
    attempt: u32,
    zip: Vec<u8>,
) -> (u16, Value) {
    let form = reqwest::multipart::Form::new()
        .text(
            "manifest",
            r#"{"skipped":[{"path":"dist/x","reason":"symlink (not followed)"}],"skippedTotal":1}"#,
        )
        .part(
            "file",
            reqwest::multipart::Part::bytes(zip).file_name("a.zip"),
        );
    let r = hub
        .http
        .put(format!(
            "{}/api/jobs/{job}/artifacts?attempt={attempt}",
            hub.url
        ))
        .header("x-worker-token", token)
        .header("x-worker-id", worker)
        .multipart(form)
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    (s, r.json::<Value>().await.unwrap_or(Value::Null))
}

/// Runs one job with artifacts through a scripted agent: assign, accept, start, upload `zip`,
/// finish. Returns the job id.
async fn job_with_artifacts(
    hub: &HubProc,
    agent: &mut FakeAgent,
    token: &str,
    wt: &str,
    zip: Vec<u8>,
) -> String {
    let id = hub
        .submit(token, json!({"command": "true", "artifacts": ["**"]}))
        .await;
    let a = agent.next_assignment().await.unwrap();
    assert_eq!(a.job_id, id);
    agent
        .send(&AgentMsg::Accept(JobRef {
            job_id: id.clone(),
            attempt: a.attempt,
        }))
        .await
        .unwrap();
    let (s, v) =
        upload_artifacts(hub, wt.into(), agent.id.clone(), id.clone(), a.attempt, zip).await;
    assert_eq!(s, 200, "{v}");
    agent.finish(&id, a.attempt, 0, 0).await.unwrap();
    hub.wait_status(token, &id, "completed").await;
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifacts_are_deleted_with_their_job_and_shared_content_stays() {
    let retention = [
        "--job-retention-secs",
        "2",
        "--file-retention-secs",
        "3600",
        "--janitor-interval-secs",
        "0",
    ];
    let hub = HubProc::start(&[FAST, &retention].concat()).await;
    let admin = hub.admin().await;
    let wt = hub.worker_token(&admin).await;
    let shared = zip_bytes(&[("same.txt", b"shared content")]);
    let own = zip_bytes(&[("own.txt", b"only this job")]);
    // The user also uploaded the shared bytes as an input file: one blob, two owners.
    let input = hub.upload_zip(&admin, shared.clone()).await;
    let (mut agent, _) = FakeAgent::connect(&hub, &wt, "jan-art", 1, vec![])
        .await
        .unwrap();
    let a = job_with_artifacts(&hub, &mut agent, &admin, &wt, shared.clone()).await;
    let b = job_with_artifacts(&hub, &mut agent, &admin, &wt, own.clone()).await;
    let blob = |bytes: &[u8]| hub.data.join("blobs").join(sha_hex(bytes));
    assert!(blob(&shared).exists() && blob(&own).exists());
    wait_for("both jobs to be collected", || async {
        hub.post_json(&admin, "/api/admin/janitor", json!({})).await;
        let gone_a = hub
            .get(&admin, &format!("/api/jobs/status?jobId={a}"))
            .await
            .0
            == 404;
        let gone_b = hub
            .get(&admin, &format!("/api/jobs/status?jobId={b}"))
            .await
            .0
            == 404;
        (gone_a && gone_b).then_some(())
    })
    .await;
    hub.post_json(&admin, "/api/admin/janitor", json!({})).await;
    assert!(!blob(&own).exists(), "an artifact blob outlived its job");
    assert!(
        blob(&shared).exists(),
        "a blob another file uses was deleted"
    );
    let (s, _, _) = get_bytes(&hub, &admin, &format!("/api/files/download/{input}")).await;
    assert_eq!(s, 200);
    assert_eq!(
        get_bytes(&hub, &admin, &format!("/api/jobs/{a}/artifacts"))
            .await
            .0,
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legacy_result_zip_becomes_the_jobs_artifacts() {
    let hub = HubProc::start(FAST).await;
    let admin = hub.admin().await;
    let wt = hub.worker_token(&admin).await;
    // The original agent zipped the whole job folder: directories, and worse, come along.
    let zip = zip_bytes(&[
        ("out/app.bin", b"\x00\x01binary"),
        ("../../etc/evil", b"x"),
        ("log.txt", b"done"),
    ]);
    let id = hub
        .legacy_job_with_result_zip(&wt, "old-art", &admin, &zip)
        .await;
    let job = hub.job(&admin, &id).await;
    let mut paths: Vec<String> = listed(&job).into_iter().map(|(p, _, _)| p).collect();
    paths.sort();
    assert_eq!(paths, ["log.txt", "out/app.bin"]);
    assert_eq!(
        skipped(&job),
        [("../../etc/evil".to_string(), "unsafe path".to_string())]
    );
    let (s, whole, _) = get_bytes(&hub, &admin, &format!("/api/jobs/{id}/artifacts")).await;
    assert_eq!((s, whole), (200, zip));
    let (s, one, _) = get_bytes(
        &hub,
        &admin,
        &format!("/api/jobs/{id}/artifacts/out/app.bin"),
    )
    .await;
    assert_eq!((s, one.as_slice()), (200, b"\x00\x01binary".as_slice()));
    // A result ZIP that is not one is reported, and the result still lands.
    let id2 = hub
        .legacy_job_with_result_zip(&wt, "old-art", &admin, b"not a zip")
        .await;
    let job = hub.job(&admin, &id2).await;
    assert!(job["artifacts"].as_array().unwrap().is_empty());
    assert!(
        job["artifactsError"]
            .as_str()
            .unwrap()
            .contains("not a valid ZIP"),
        "{job}"
    );
}

/// A job whose artifact folder holds names the hub does not serve (a newline, a backslash, a
/// control character) keeps its other artifacts: the agent leaves those names out and says so,
/// instead of uploading a ZIP the hub refuses whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_file_names_cost_only_themselves() {
    let hub = HubProc::start(FAST).await;
    let admin = hub.admin().await;
    let wt = hub.worker_token(&admin).await;
    let dir = traversable_tempdir();
    let _agent = AgentProc::start(&hub, &wt, "art-agent-odd", &dir.path().join("a"), 54_300).await;
    let id = hub
        .submit(
            &admin,
            json!({
                "command": "mkdir -p dist && echo ok > dist/ok.txt && echo n > \"$(printf 'dist/new\\nline')\" \
                            && echo b > 'dist/back\\slash' && echo e > \"$(printf 'dist/esc\\033x')\" \
                            && mkdir \"$(printf 'dist/dir\\tname')\" && echo d > \"$(printf 'dist/dir\\tname/in.txt')\"",
                "artifacts": ["dist/**"],
            }),
        )
        .await;
    let job = hub.wait_done(&admin, &id).await;
    assert_eq!(job["status"], "completed", "{job}");
    assert!(job["artifactsError"].is_null(), "{job}");
    let got = listed(&job);
    let paths: Vec<&str> = got.iter().map(|(p, _, _)| p.as_str()).collect();
    assert_eq!(paths, ["dist/ok.txt"], "{job}");
    let why = skipped(&job);
    // The hub shows skipped names with their control characters removed.
    for odd in [
        "dist/newline",
        "dist/back\\slash",
        "dist/escx",
        "dist/dirname",
    ] {
        assert!(
            why.iter()
                .any(|(p, r)| p == odd && r.contains("not a clean path")),
            "{odd:?} not reported: {why:?}"
        );
    }
    assert_eq!(why.len(), 4, "{why:?}");
}
