//! The original Node system's worker agent, played call for call as it behaves in the field:
//! every JSON call (register, heartbeat, get-job, stream-output, check-cancel, submit-result)
//! carries no credentials at all, only `Content-Type: application/json` and its User-Agent, with
//! bodies sent chunked; the ZIP download carries `Authorization: Bearer T` and `X-Worker-Token: T`
//! where T is an HS256 JWT it signs itself with the shared legacy secret. The hub admits it with
//! `--legacy-open-cidrs` (JSON calls) and `--legacy-worker-jwt-secret` (download), and must treat
//! both as the same worker. The worker unpacks the ZIP and runs each line of the command with
//! `sh -c`, as the original does.

use std::path::Path;
use std::time::Duration;

use cmdx_e2e::{HubProc, wait_for, zip_bytes};
use serde_json::{Value, json};

use crate::FAST;

const SECRET: &str = "the-shared-legacy-secret";
const USER_AGENT: &str = "cmd-executor-worker/2.0.0-docker";

/// The hub as an operator runs it for original workers on its own host: JSON calls admitted
/// from 127.0.0.1 only, the download's JWT checked with the shared secret.
async fn legacy_hub() -> HubProc {
    let mut flags = FAST.to_vec();
    flags.extend([
        "--legacy-open-cidrs",
        "127.0.0.1/32",
        "--legacy-worker-jwt-secret",
        SECRET,
    ]);
    HubProc::start(&flags).await
}

/// An HS256 worker JWT as the original worker signs it.
fn worker_jwt(worker_id: &str, secret: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"workerId": worker_id, "hostname": "old-host", "type": "worker",
                "iat": now, "exp": now + 24 * 3600}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// A client whose connections come from `source` (127.0.0.1 is the admitted network; any other
/// loopback address is outside it).
fn client_from(source: [u8; 4]) -> reqwest::Client {
    cmdx_e2e::http_client()
        .user_agent(USER_AGENT)
        .local_address(std::net::IpAddr::from(source))
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// One original worker.
struct OriginalWorker {
    http: reqwest::Client,
    hub: String,
    id: String,
    jwt: String,
}

/// One job as get-job handed it out.
struct Handed {
    job_id: String,
    command: String,
    file_url: Option<String>,
}

impl OriginalWorker {
    fn new(hub: &HubProc, id: &str) -> OriginalWorker {
        OriginalWorker {
            http: client_from([127, 0, 0, 1]),
            hub: hub.url.clone(),
            id: id.to_string(),
            jwt: worker_jwt(id, SECRET),
        }
    }

    /// A JSON call exactly as the original sends it: no credentials, chunked body.
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.hub))
            .header("content-type", "application/json");
        if let Some(body) = body {
            let bytes = serde_json::to_vec(&body).unwrap();
            let parts: Vec<Result<Vec<u8>, std::io::Error>> =
                bytes.chunks(64).map(|c| Ok(c.to_vec())).collect();
            req = req.body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                parts,
            )));
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn register(&self) -> u16 {
        let body = json!({"workerId": self.id, "hostname": "old-host", "os": "linux",
            "cpuCount": 2, "ramTotalMb": 4096, "platform": "linux", "arch": "x64",
            "dockerAvailable": true});
        self.call(reqwest::Method::POST, "/api/workers/register", Some(body))
            .await
            .0
    }

    async fn heartbeat(&self, status: &str) -> u16 {
        let body = json!({"workerId": self.id, "status": status, "cpuUsage": 3.5,
            "memoryUsage": 40.2});
        self.call(reqwest::Method::POST, "/api/workers/heartbeat", Some(body))
            .await
            .0
    }

    /// One poll of get-job: `Some` when a job was handed out.
    async fn poll(&self) -> Option<Handed> {
        let (status, v) = self
            .call(
                reqwest::Method::GET,
                &format!("/api/jobs/get-job?workerId={}", self.id),
                None,
            )
            .await;
        match status {
            202 => {
                assert_eq!(v["success"], false, "{v}");
                None
            }
            200 => {
                let job = &v["job"];
                Some(Handed {
                    job_id: job["jobId"].as_str().unwrap().to_string(),
                    command: job["command"].as_str().unwrap().to_string(),
                    file_url: job["fileUrl"].as_str().map(str::to_string),
                })
            }
            other => panic!("get-job answered {other}: {v}"),
        }
    }

    /// Polls (heartbeating now and then, as its timers do) until a job is handed out.
    async fn next_job(&self) -> Handed {
        wait_for("get-job to hand out a job", || async {
            assert_eq!(self.heartbeat("idle").await, 200);
            let job = self.poll().await;
            if job.is_none() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            job
        })
        .await
    }

    /// The ZIP download with the worker's JWT in both headers.
    async fn download(&self, url: &str) -> reqwest::Response {
        self.http
            .get(url)
            .header("authorization", format!("Bearer {}", self.jwt))
            .header("x-worker-token", &self.jwt)
            .send()
            .await
            .unwrap()
    }

    async fn stream_output(&self, job_id: &str, data: &str, kind: &str) {
        let body = json!({"jobId": job_id, "data": data, "type": kind});
        let (s, v) = self
            .call(reqwest::Method::POST, "/api/jobs/stream-output", Some(body))
            .await;
        assert_eq!(s, 200, "stream-output: {v}");
    }

    async fn cancel_requested(&self, job_id: &str) -> bool {
        let (s, v) = self
            .call(
                reqwest::Method::GET,
                &format!("/api/jobs/check-cancel?jobId={job_id}"),
                None,
            )
            .await;
        assert_eq!(s, 200, "check-cancel: {v}");
        assert_eq!(v["success"], true);
        v["cancelRequested"].as_bool().unwrap()
    }

    /// Downloads and unpacks the job's ZIP, runs each line with `sh -c` in it (stopping at the
    /// first failing line or when check-cancel says so), streams every piece of output as it
    /// appears and submits the result. Returns what it submitted.
    async fn run(&self, job: &Handed, dir: &Path) -> (String, String, i32) {
        if let Some(url) = &job.file_url {
            let r = self.download(url).await;
            assert_eq!(r.status(), 200, "the holder's download");
            let zip = r.bytes().await.unwrap();
            zip::ZipArchive::new(std::io::Cursor::new(zip))
                .unwrap()
                .extract(dir)
                .unwrap();
        }
        let (mut stdout, mut stderr, mut exit) = (String::new(), String::new(), 0);
        'lines: for line in job.command.lines().filter(|l| !l.trim().is_empty()) {
            let mut child = tokio::process::Command::new("sh")
                .arg("-c")
                .arg(line)
                .current_dir(dir)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .unwrap();
            let mut out = child.stdout.take().unwrap();
            let mut err = child.stderr.take().unwrap();
            let (mut out_open, mut err_open) = (true, true);
            let mut check = tokio::time::interval(Duration::from_millis(100));
            while out_open || err_open {
                use tokio::io::AsyncReadExt as _;
                let (mut a, mut b) = ([0u8; 4096], [0u8; 4096]);
                tokio::select! {
                    n = out.read(&mut a), if out_open => match n.unwrap() {
                        0 => out_open = false,
                        n => {
                            let s = String::from_utf8_lossy(&a[..n]).into_owned();
                            self.stream_output(&job.job_id, &s, "stdout").await;
                            stdout.push_str(&s);
                        }
                    },
                    n = err.read(&mut b), if err_open => match n.unwrap() {
                        0 => err_open = false,
                        n => {
                            let s = String::from_utf8_lossy(&b[..n]).into_owned();
                            self.stream_output(&job.job_id, &s, "stderr").await;
                            stderr.push_str(&s);
                        }
                    },
                    _ = check.tick() => {
                        if self.cancel_requested(&job.job_id).await {
                            child.kill().await.unwrap();
                            exit = 130;
                            break 'lines;
                        }
                    }
                }
            }
            exit = child.wait().await.unwrap().code().unwrap_or(1);
            if exit != 0 {
                break;
            }
        }
        let body = json!({"jobId": job.job_id, "workerId": self.id, "stdout": stdout,
            "stderr": stderr, "exitCode": exit});
        let (s, v) = self
            .call(reqwest::Method::POST, "/api/jobs/submit-result", Some(body))
            .await;
        assert_eq!(s, 200, "submit-result: {v}");
        (stdout, stderr, exit)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_original_worker_runs_jobs_call_for_call() {
    let hub = legacy_hub().await;
    let admin = hub.admin().await;
    let user = hub.user(&admin, "original@test.local").await;
    let worker = OriginalWorker::new(&hub, "orig-1");
    assert_eq!(worker.register().await, 200);
    assert_eq!(worker.heartbeat("idle").await, 200);
    assert!(worker.poll().await.is_none(), "nothing queued yet");

    // A job from a ZIP whose last line exits 4.
    let zip = zip_bytes(&[("run.sh", b"echo from-zip\necho oops >&2\nexit 4\n")]);
    let file_id = hub.upload_zip(&user, zip.clone()).await;
    let id = hub
        .submit(
            &user,
            json!({"command": "echo one\necho two >&2\nsh run.sh\necho never", "fileId": file_id}),
        )
        .await;
    let job = worker.next_job().await;
    assert_eq!(job.job_id, id);
    let url = job.file_url.clone().expect("a fileUrl");
    assert!(url.starts_with(&hub.url), "{url}");

    // Nobody else gets the ZIP: not another worker's valid JWT (from the admitted network or
    // outside it), not a JWT signed with another secret from outside, not a minted worker token
    // naming this worker, not a bare request from outside.
    let outside = client_from([127, 0, 0, 2]);
    let other_jwt = worker_jwt("orig-2", SECRET);
    let forged = worker_jwt("orig-1", "not-the-secret");
    let minted = hub.worker_token(&admin).await;
    for (who, client, token, extra) in [
        (
            "another worker's JWT",
            &worker.http,
            other_jwt.as_str(),
            None,
        ),
        (
            "another worker's JWT, outside",
            &outside,
            other_jwt.as_str(),
            None,
        ),
        ("a forged JWT, outside", &outside, forged.as_str(), None),
        ("a minted token", &outside, minted.as_str(), Some("orig-1")),
    ] {
        let mut r = client
            .get(&url)
            .header("authorization", format!("Bearer {token}"))
            .header("x-worker-token", token);
        if let Some(w) = extra {
            r = r.header("x-worker-id", w);
        }
        let status = r.send().await.unwrap().status().as_u16();
        assert!(
            [401, 403, 404].contains(&status),
            "{who} downloaded the ZIP ({status})"
        );
    }
    let bare = outside.get(&url).send().await.unwrap().status().as_u16();
    assert!([401, 403, 404].contains(&bare), "bare download: {bare}");
    // The holder's own JWT works from outside the admitted network too.
    let from_outside = OriginalWorker {
        http: outside.clone(),
        ..OriginalWorker::new(&hub, "orig-1")
    };
    assert_eq!(from_outside.download(&url).await.status(), 200);

    let dir = tempfile::tempdir().unwrap();
    let (stdout, stderr, exit) = worker.run(&job, dir.path()).await;
    assert_eq!(exit, 4);
    assert_eq!(stdout, "one\nfrom-zip\n");
    assert_eq!(stderr, "two\noops\n");
    let done = hub.job(&user, &id).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["failure"], "exit_code");
    assert_eq!(done["exitCode"], 4);
    assert_eq!(done["workerId"], "orig-1");
    // Streamed chunks and the final result are the same bytes, stored once.
    assert_eq!(done["stdout"], "one\nfrom-zip\n");
    assert_eq!(done["stderr"], "two\noops\n");
    let raw = hub
        .http
        .get(format!("{}/api/jobs/{id}/output", hub.url))
        .bearer_auth(&user)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(raw.len(), "one\nfrom-zip\ntwo\noops\n".len(), "{raw:?}");

    // A job cancelled by its owner while it runs: the worker learns it through check-cancel.
    let id = hub
        .submit(
            &user,
            json!({"command": "echo started\nsleep 30\necho never"}),
        )
        .await;
    let job = worker.next_job().await;
    assert_eq!(job.job_id, id);
    let dir = tempfile::tempdir().unwrap();
    let run = worker.run(&job, dir.path());
    let cancel = async {
        wait_for("the job to start printing", || async {
            let j = hub.job(&user, &id).await;
            (j["stdout"] == "started\n").then_some(())
        })
        .await;
        let v = hub
            .post_json(&user, "/api/jobs/cancel", json!({"jobId": id}))
            .await;
        assert_eq!(v["success"], true, "{v}");
    };
    let ((stdout, _, exit), ()) = tokio::join!(run, cancel);
    assert_eq!((stdout.as_str(), exit), ("started\n", 130));
    let done = hub.wait_status(&user, &id, "cancelled").await;
    assert_eq!(done["stdout"], "started\n", "{done}");
    assert_eq!(worker.heartbeat("idle").await, 200);
}

/// Fencing by attempt holds for original workers: once a job went to another worker, the
/// first one can no longer download its ZIP, report output or finish it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_original_worker_that_lost_its_job_is_fenced_off() {
    let hub = legacy_hub().await;
    let admin = hub.admin().await;
    let first = OriginalWorker::new(&hub, "orig-a");
    let second = OriginalWorker::new(&hub, "orig-b");
    assert_eq!(first.register().await, 200);
    let file_id = hub
        .upload_zip(&admin, zip_bytes(&[("a.txt", b"payload")]))
        .await;
    let id = hub
        .submit(&admin, json!({"command": "cat a.txt", "fileId": file_id}))
        .await;
    let job = first.next_job().await;
    let stale_url = job.file_url.clone().unwrap();
    // An admin removes the first worker: the job goes back to the queue, the second takes it.
    let r = hub
        .http
        .delete(format!("{}/api/workers/orig-a", hub.url))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(second.register().await, 200);
    let job2 = second.next_job().await;
    assert_eq!(job2.job_id, id);
    assert_eq!(hub.job(&admin, &id).await["attempt"], 2);
    assert_eq!(first.download(&stale_url).await.status(), 404);
    let (s, _) = first
        .call(
            reqwest::Method::POST,
            "/api/jobs/submit-result",
            Some(
                json!({"jobId": id, "workerId": "orig-a", "stdout": "forged",
                "stderr": "", "exitCode": 0}),
            ),
        )
        .await;
    assert_eq!(s, 409);
    let dir = tempfile::tempdir().unwrap();
    let (stdout, _, exit) = second.run(&job2, dir.path()).await;
    assert_eq!((stdout.as_str(), exit), ("payload", 0));
    let done = hub.job(&admin, &id).await;
    assert_eq!(done["status"], "completed");
    assert_eq!(done["stdout"], "payload");
    assert_eq!(done["workerId"], "orig-b");
}
