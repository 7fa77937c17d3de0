//! The `cmdx` client commands, run as real processes against a real hub, with a scripted
//! worker (`FakeAgent`) producing the jobs' output and exit codes: output is relayed byte for
//! byte and live, exit codes map as documented, Ctrl-C cancels, `logs -f` misses nothing,
//! uploads honour ignore files and stream with flat memory, and every failure is one line with
//! exit code 125.

use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use cmdx_e2e::{FakeAgent, HubProc, WAIT, cmdx_bin, wait_for};
use cmdx_proto::agent::{AgentMsg, Assignment, Finished, HubMsg, JobRef, OutputChunk};
use cmdx_proto::{FailureKind, Outcome, StreamKind, WindowSize};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

use crate::FAST;

/// A `cmdx` command aimed at `hub` as the holder of `token`, with its own config file.
struct CliEnv {
    hub: String,
    token: Option<String>,
    config: tempfile::TempDir,
}

impl CliEnv {
    fn new(hub: &HubProc, token: &str) -> CliEnv {
        CliEnv {
            hub: hub.url.clone(),
            token: Some(token.to_string()),
            config: tempfile::tempdir().unwrap(),
        }
    }

    fn config_path(&self) -> std::path::PathBuf {
        self.config.path().join("cmdx").join("config.json")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(cmdx_bin());
        c.args(args)
            .env_remove("CMDX_HUB")
            .env_remove("CMDX_TOKEN")
            .env("CMDX_CONFIG", self.config_path())
            .env("RUST_LOG", "warn")
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        c.env("CMDX_HUB", &self.hub);
        if let Some(t) = &self.token {
            c.env("CMDX_TOKEN", t);
        }
        c
    }

    fn spawn(&self, args: &[&str]) -> Child {
        self.command(args).spawn().expect("spawn cmdx")
    }

    async fn run(&self, args: &[&str]) -> Out {
        finish(self.spawn(args)).await
    }

    async fn run_stdin(&self, args: &[&str], input: &str) -> Out {
        let mut c = self.command(args);
        c.stdin(Stdio::piped());
        let mut child = c.spawn().expect("spawn cmdx");
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input.as_bytes()).await.unwrap();
        drop(stdin);
        finish(child).await
    }
}

/// What a finished `cmdx` printed and how it exited.
struct Out {
    status: ExitStatus,
    stdout: Vec<u8>,
    stderr: String,
}

impl Out {
    fn code(&self) -> i32 {
        self.status.code().expect("exited, not killed")
    }

    /// Asserts a failure: exit 125 and exactly one line on stderr, `cmdx: ...` containing `want`.
    fn assert_one_line_error(&self, want: &str) {
        assert_eq!(self.code(), 125, "stderr: {}", self.stderr);
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "not one line: {:?}", self.stderr);
        assert!(lines[0].starts_with("cmdx: "), "{:?}", self.stderr);
        assert!(lines[0].contains(want), "{:?} lacks {want:?}", self.stderr);
        assert!(!self.stderr.contains("panicked"), "{}", self.stderr);
    }
}

async fn read_all<R: AsyncRead + Unpin>(r: Option<R>) -> Vec<u8> {
    let mut buf = Vec::new();
    if let Some(mut r) = r {
        r.read_to_end(&mut buf).await.unwrap();
    }
    buf
}

/// Waits for `child` to exit (within [`WAIT`]) and collects its output.
async fn finish(mut child: Child) -> Out {
    let out = tokio::spawn(read_all(child.stdout.take()));
    let err = tokio::spawn(read_all(child.stderr.take()));
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("cmdx exits in time")
        .unwrap();
    Out {
        status,
        stdout: out.await.unwrap(),
        stderr: String::from_utf8_lossy(&err.await.unwrap()).into_owned(),
    }
}

/// Reads from `r` until `want` has been read in full (or fails after [`WAIT`]).
async fn read_until<R: AsyncRead + Unpin>(r: &mut R, got: &mut Vec<u8>, want: &[u8]) {
    tokio::time::timeout(WAIT, async {
        while !got.ends_with(want) {
            let mut buf = [0u8; 4096];
            let n = r.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "stream closed; got {:?}",
                String::from_utf8_lossy(got)
            );
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {want:?}; got {got:?}"));
}

/// One job run by the scripted worker.
struct Run<'a> {
    agent: &'a mut FakeAgent,
    job_id: String,
    attempt: u32,
    seq: u64,
}

impl<'a> Run<'a> {
    /// Takes the next assignment, accepts it and reports the child started.
    async fn start(agent: &'a mut FakeAgent) -> (Run<'a>, Assignment) {
        let asg = agent.start_next().await.unwrap();
        (
            Run {
                agent,
                job_id: asg.job_id.clone(),
                attempt: asg.attempt,
                seq: 0,
            },
            asg,
        )
    }

    async fn out(&mut self, stream: StreamKind, data: &[u8]) {
        self.agent
            .send(&AgentMsg::Output(OutputChunk {
                job_id: self.job_id.clone(),
                attempt: self.attempt,
                seq: self.seq,
                stream,
                data: data.into(),
            }))
            .await
            .unwrap();
        self.seq += 1;
    }

    async fn finish(self, outcome: Outcome) {
        self.agent
            .send(&AgentMsg::Finished(Finished {
                job_id: self.job_id.clone(),
                attempt: self.attempt,
                chunks: self.seq,
                outcome,
            }))
            .await
            .unwrap();
        let r = JobRef {
            job_id: self.job_id.clone(),
            attempt: self.attempt,
        };
        self.agent
            .recv_until(|m| matches!(m, HubMsg::FinishedAck(ref x) if *x == r).then_some(()))
            .await
            .unwrap();
    }
}

fn exited(code: i32) -> Outcome {
    Outcome {
        exit_code: Some(code),
        duration_ms: 5,
        ..Outcome::default()
    }
}

/// A hub with a signed-in user and one scripted worker.
async fn setup(email: &str) -> (HubProc, String, FakeAgent) {
    let hub = HubProc::start(FAST).await;
    let admin = hub.admin().await;
    let wt = hub.worker_token(&admin).await;
    let user = hub.user(&admin, email).await;
    let (agent, _) = FakeAgent::connect(&hub, &wt, "cli-worker", 1, vec![])
        .await
        .unwrap();
    (hub, user, agent)
}

/// Names inside the ZIP a job runs with, downloaded as its owner.
async fn uploaded_names(hub: &HubProc, token: &str, job_id: &str) -> Vec<String> {
    let job = hub.job(token, job_id).await;
    let url = job["fileUrl"].as_str().expect("job has a file").to_string();
    let resp = hub
        .http
        .get(format!("{}{url}", hub.url))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let bytes = resp.bytes().await.unwrap();
    let mut z = zip::ZipArchive::new(std::io::Cursor::new(bytes.to_vec())).unwrap();
    let mut names: Vec<String> = (0..z.len())
        .map(|i| z.by_index(i).unwrap().name().unwrap().to_string())
        .collect();
    names.sort();
    names
}

fn write(dir: &Path, rel: &str, content: &[u8]) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, content).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_no_tty_asks_for_pipes() {
    let (hub, user, mut agent) = setup("pipes@test.local").await;
    let cli = CliEnv::new(&hub, &user);
    let child = cli.spawn(&["submit", "--no-tty", "--", "echo out"]);
    let (run, asg) = Run::start(&mut agent).await;
    assert_eq!(asg.tty, None);
    run.finish(exited(0)).await;
    let out = finish(child).await;
    assert_eq!(out.code(), 0, "stderr: {}", out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_relays_stdout_stderr_and_exit_code_byte_for_byte() {
    let (hub, user, mut agent) = setup("relay@test.local").await;
    let cli = CliEnv::new(&hub, &user);
    let fixture = tempfile::tempdir().unwrap();
    write(
        fixture.path(),
        "run.sh",
        b"echo out; echo err >&2; exit 7\n",
    );
    let dir = fixture.path().to_str().unwrap();
    let child = cli.spawn(&[
        "submit",
        dir,
        "--env",
        "GREETING=hi=there",
        "--",
        "echo out; echo err >&2; exit 7",
    ]);
    let (mut run, asg) = Run::start(&mut agent).await;
    assert_eq!(asg.command, "echo out; echo err >&2; exit 7");
    // A terminal by default; the CLI's stdout is a pipe here, so it sends no size.
    assert_eq!(asg.tty, Some(WindowSize::DEFAULT));
    assert_eq!(
        asg.env.get("GREETING").map(String::as_str),
        Some("hi=there")
    );
    assert!(asg.file_url.is_some(), "the folder was uploaded");
    assert_eq!(
        uploaded_names(&hub, &user, &run.job_id).await,
        vec!["run.sh".to_string()]
    );
    // Colours, carriage returns and invalid UTF-8 pass through unmodified.
    let fancy: &[u8] = b"\x1b[31mred\x1b[0m\rover\xff\xfe\n";
    run.out(StreamKind::Stdout, b"out\n").await;
    run.out(StreamKind::Stderr, b"err\n").await;
    run.out(StreamKind::Stdout, fancy).await;
    let id = run.job_id.clone();
    run.finish(exited(7)).await;
    let out = finish(child).await;
    assert_eq!(out.code(), 7, "stderr: {}", out.stderr);
    assert_eq!(out.stdout, [b"out\n".as_slice(), fancy].concat());
    // Stderr: the id and dashboard URL, the job's own stderr, the summary of the failure.
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 3, "{:?}", out.stderr);
    assert_eq!(
        lines[0],
        format!("job {id} submitted: {}/jobs/{id}", hub.url)
    );
    assert_eq!(lines[1], "err");
    assert!(
        lines[2].starts_with(&format!("job {id} failed: exit 7 after "))
            && lines[2].ends_with("s on worker cli-worker"),
        "{:?}",
        lines[2]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_follow_how_the_job_ended() {
    let (hub, user, mut agent) = setup("codes@test.local").await;
    let cli = CliEnv::new(&hub, &user);
    let cases: Vec<(Outcome, i32, &str)> = vec![
        (exited(0), 0, ""),
        (
            Outcome {
                timed_out: true,
                failure: Some(FailureKind::Timeout),
                signal: Some(9),
                ..Outcome::default()
            },
            124,
            "timed out",
        ),
        (
            Outcome {
                signal: Some(15),
                ..Outcome::default()
            },
            143,
            "signal 15",
        ),
        (
            Outcome {
                oom_killed: true,
                failure: Some(FailureKind::Oom),
                signal: Some(9),
                ..Outcome::default()
            },
            137,
            "out of memory",
        ),
        (
            Outcome {
                failure: Some(FailureKind::Setup),
                error: Some("zip entry escapes the job folder".into()),
                ..Outcome::default()
            },
            125,
            "zip entry escapes the job folder",
        ),
    ];
    for (outcome, code, note) in cases {
        let child = cli.spawn(&["submit", "--timeout", "5", "--", "sleep 100"]);
        let (run, asg) = Run::start(&mut agent).await;
        assert_eq!(asg.timeout_secs, 5);
        assert!(asg.file_url.is_none(), "no folder, no upload");
        run.finish(outcome).await;
        let out = finish(child).await;
        assert_eq!(out.code(), code, "stderr: {}", out.stderr);
        assert!(out.stderr.contains(note), "{:?} lacks {note:?}", out.stderr);
        // The submitted line, then one line saying how it ended (none for a success).
        let lines: Vec<&str> = out.stderr.lines().collect();
        assert!(lines[0].contains(" submitted: "), "{:?}", out.stderr);
        assert_eq!(
            lines.len(),
            if code == 0 { 1 } else { 2 },
            "{:?}",
            out.stderr
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_output_appears_line_by_line() {
    let (hub, user, mut agent) = setup("slow@test.local").await;
    let cli = CliEnv::new(&hub, &user);
    let mut child = cli.spawn(&["submit", "--", "for i in 1 2 3; do echo $i; sleep 1; done"]);
    let mut stdout = child.stdout.take().unwrap();
    let (mut run, _) = Run::start(&mut agent).await;
    let mut got = Vec::new();
    for line in ["1\n", "2\n", "3\n"] {
        // The worker sends the next line only once the CLI printed the previous one.
        run.out(StreamKind::Stdout, line.as_bytes()).await;
        read_until(&mut stdout, &mut got, line.as_bytes()).await;
    }
    assert_eq!(got, b"1\n2\n3\n");
    run.finish(exited(0)).await;
    let out = finish(child).await;
    assert_eq!(out.code(), 0, "stderr: {}", out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_cancels_the_remote_job() {
    let (hub, user, mut agent) = setup("sigint@test.local").await;
    let cli = CliEnv::new(&hub, &user);
    let mut child = cli.spawn(&["submit", "--", "sleep 600"]);
    let mut stdout = child.stdout.take().unwrap();
    let (mut run, _) = Run::start(&mut agent).await;
    run.out(StreamKind::Stdout, b"working\n").await;
    let mut got = Vec::new();
    read_until(&mut stdout, &mut got, b"working\n").await;
    let pid = child.id().unwrap().to_string();
    let st = Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .await
        .unwrap();
    assert!(st.success());
    let cancel = run
        .agent
        .recv_until(|m| match m {
            HubMsg::Cancel(c) => Some(c),
            _ => None,
        })
        .await
        .unwrap();
    assert_eq!(cancel.job_id, run.job_id);
    let id = run.job_id.clone();
    run.finish(Outcome {
        cancelled: true,
        signal: Some(15),
        ..Outcome::default()
    })
    .await;
    let out = finish(child).await;
    assert_eq!(out.code(), 130, "stderr: {}", out.stderr);
    assert!(out.stderr.contains("cancelling job"), "{}", out.stderr);
    assert_eq!(hub.job(&user, &id).await["status"], "cancelled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_follow_attached_mid_run_prints_every_byte_once_in_order() {
    let (hub, user, mut agent) = setup("logs@test.local").await;
    let cli = CliEnv::new(&hub, &user);
    let id = hub.submit(&user, json!({"command": "make noise"})).await;
    let (mut run, _) = Run::start(&mut agent).await;
    let (mut out_all, mut err_all) = (Vec::new(), Vec::new());
    let line = |i: u32| format!("line {i:04} {}\n", "z".repeat((i % 40) as usize)).into_bytes();
    for i in 0..300 {
        let data = line(i);
        if i % 5 == 0 {
            run.out(StreamKind::Stderr, &data).await;
            err_all.extend_from_slice(&data);
        } else {
            run.out(StreamKind::Stdout, &data).await;
            out_all.extend_from_slice(&data);
        }
    }
    let stored = out_all.len() + err_all.len();
    wait_for("the first half to be stored", || async {
        (hub.job(&user, &id).await["outputBytes"].as_u64() == Some(stored as u64)).then_some(())
    })
    .await;
    // Plain -f replays first, as `docker logs -f` does; --no-replay attaches at the end of the
    // log as it is when it starts: send ticks until it prints one, so that it is surely
    // following before the second half.
    let from_start = cli.spawn(&["logs", "-f", &id]);
    let mut tail = cli.spawn(&["logs", "-f", "--no-replay", &id]);
    let mut tail_out = tail.stdout.take().unwrap();
    let mut tail_got = Vec::new();
    let mut tick = 0;
    while tail_got.is_empty() {
        assert!(tick < 500, "logs -f --no-replay never printed anything");
        let data = format!("tick {tick}\n").into_bytes();
        run.out(StreamKind::Stdout, &data).await;
        out_all.extend_from_slice(&data);
        tick += 1;
        let mut buf = [0u8; 4096];
        if let Ok(n) =
            tokio::time::timeout(Duration::from_millis(100), tail_out.read(&mut buf)).await
        {
            let n = n.unwrap();
            assert!(n > 0, "logs -f --no-replay exited early");
            tail_got.extend_from_slice(&buf[..n]);
        }
    }
    for i in 300..600 {
        let data = line(i);
        if i % 5 == 0 {
            run.out(StreamKind::Stderr, &data).await;
            err_all.extend_from_slice(&data);
        } else {
            run.out(StreamKind::Stdout, &data).await;
            out_all.extend_from_slice(&data);
        }
    }
    run.finish(exited(3)).await;
    let full = finish(from_start).await;
    assert_eq!(full.code(), 3, "stderr: {}", full.stderr);
    assert!(full.stdout == out_all, "stdout differs");
    assert_eq!(full.stderr.as_bytes(), &err_all[..]);
    let rest = finish(tail).await;
    assert_eq!(rest.code(), 3);
    tail_out.read_to_end(&mut tail_got).await.unwrap();
    assert!(
        out_all.ends_with(&tail_got) && tail_got.starts_with(b"tick "),
        "-f --no-replay printed something other than the output after it attached: {:?}",
        String::from_utf8_lossy(&tail_got[..tail_got.len().min(200)])
    );
    // Without -f: the stored log, exit 0.
    let stored = cli.run(&["logs", &id]).await;
    assert_eq!(stored.code(), 0);
    assert!(stored.stdout == out_all);
    // -f on the finished job: its whole log, then its exit code (it used to print nothing).
    let again = cli.run(&["logs", "-f", &id]).await;
    assert_eq!(again.code(), 3, "stderr: {}", again.stderr);
    assert!(again.stdout == out_all, "logs -f of a finished job differs");
    assert_eq!(again.stderr.as_bytes(), &err_all[..]);
    // --tail N: the last N lines of the log (both streams, in order), as docker and kubectl.
    let last3: Vec<u8> = (597..600).flat_map(line).collect();
    let tail3 = cli.run(&["logs", "--tail", "3", &id]).await;
    assert_eq!(tail3.code(), 0, "stderr: {}", tail3.stderr);
    assert_eq!(
        String::from_utf8_lossy(&tail3.stdout),
        String::from_utf8_lossy(&last3)
    );
    assert_eq!(
        tail3.stderr, "",
        "line 595, on stderr, is not among the last 3"
    );
    let tail6 = cli.run(&["logs", "-f", "--tail", "6", &id]).await;
    assert_eq!(tail6.code(), 3, "with -f: the job's code, as before");
    let last6_out: Vec<u8> = [594u32, 596, 597, 598, 599]
        .into_iter()
        .flat_map(line)
        .collect();
    assert_eq!(
        String::from_utf8_lossy(&tail6.stdout),
        String::from_utf8_lossy(&last6_out)
    );
    assert_eq!(tail6.stderr.as_bytes(), &line(595)[..]);
    let none = cli.run(&["logs", "--tail", "0", &id]).await;
    assert!(none.stdout.is_empty() && none.code() == 0);
    let all = cli.run(&["logs", "--tail", "100000", &id]).await;
    assert!(all.stdout == out_all, "more lines than the log: all of it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ignored_files_are_not_uploaded() {
    let hub = HubProc::start(FAST).await;
    let admin = hub.admin().await;
    let user = hub.user(&admin, "zip@test.local").await;
    let cli = CliEnv::new(&hub, &user);
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    write(p, ".gitignore", b"target/\n*.log\n/secret.env\n");
    write(p, ".cmdxignore", b"data/\n");
    write(p, "src/main.rs", b"fn main() {}\n");
    write(p, "src/nested/.gitignore", b"gen.txt\n");
    write(p, "src/nested/gen.txt", b"generated\n");
    write(p, "src/nested/keep.txt", b"keep\n");
    write(p, "target/debug/app", b"binary");
    write(p, "build.log", b"log");
    write(p, "secret.env", b"TOKEN=x");
    write(p, "data/big.csv", b"1,2,3");
    write(p, ".git/HEAD", b"ref: refs/heads/main\n");
    write(p, ".hidden", b"kept: dotfiles are not ignored by default");
    let out = cli
        .run(&["submit", p.to_str().unwrap(), "--detach", "--", "ls -R"])
        .await;
    assert_eq!(out.code(), 0, "stderr: {}", out.stderr);
    let id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(!id.is_empty());
    assert_eq!(
        uploaded_names(&hub, &user, &id).await,
        vec![
            ".cmdxignore",
            ".gitignore",
            ".hidden",
            "src/",
            "src/main.rs",
            "src/nested/",
            "src/nested/.gitignore",
            "src/nested/keep.txt",
        ]
    );
    // --zip uploads the archive as is.
    let archive = cmdx_e2e::zip_bytes(&[("made/elsewhere.txt", b"zipped by hand")]);
    let zip_path = d.path().join("target").join("prebuilt.zip");
    std::fs::write(&zip_path, &archive).unwrap();
    let out = cli
        .run(&[
            "submit",
            "--zip",
            zip_path.to_str().unwrap(),
            "--detach",
            "--",
            "ls",
        ])
        .await;
    assert_eq!(out.code(), 0, "stderr: {}", out.stderr);
    let id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let url = hub.job(&user, &id).await["fileUrl"]
        .as_str()
        .unwrap()
        .to_string();
    let got = hub
        .http
        .get(format!("{}{url}", hub.url))
        .bearer_auth(&user)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(got[..] == archive[..], "the ZIP changed on the way");

    // --detach --json prints the id as JSON.
    let out = cli
        .run(&["submit", "--detach", "--json", "--", "true"])
        .await;
    assert_eq!(out.code(), 0, "stderr: {}", out.stderr);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["jobId"].is_string());
}

/// `len` bytes of xorshift noise (incompressible).
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ seed;
    let mut buf = Vec::with_capacity(len + 8);
    while buf.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        buf.extend_from_slice(&x.to_le_bytes());
    }
    buf.truncate(len);
    buf
}

/// Peak resident memory (VmHWM) of a running process in KiB; `None` once it exited.
fn peak_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_50_mb_folder_uploads_with_flat_memory() {
    let hub = HubProc::start(FAST).await;
    let admin = hub.admin().await;
    let user = hub.user(&admin, "big@test.local").await;
    let cli = CliEnv::new(&hub, &user);
    let d = tempfile::tempdir().unwrap();
    // 50 MiB that does not compress: five 10 MiB files of xorshift noise (one deflated, the
    // others stored as already-compressed formats).
    for (i, name) in ["a.bin", "b.gz", "c.gz", "d.zip", "e.png"]
        .iter()
        .enumerate()
    {
        std::fs::write(d.path().join(name), noise(10 << 20, i as u64 + 1)).unwrap();
    }
    let mut child = cli.spawn(&[
        "submit",
        d.path().to_str().unwrap(),
        "--detach",
        "--",
        "true",
    ]);
    let pid = child.id().unwrap();
    let out = tokio::spawn(read_all(child.stdout.take()));
    let err = tokio::spawn(read_all(child.stderr.take()));
    // VmHWM is a high-water mark: the last reading before exit covers the whole upload.
    let mut peak = 0;
    let status = loop {
        if let Some(kb) = peak_kb(pid) {
            peak = peak.max(kb);
        }
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let stderr = String::from_utf8_lossy(&err.await.unwrap()).into_owned();
    assert_eq!(status.code(), Some(0), "stderr: {stderr}");
    let id = String::from_utf8(out.await.unwrap())
        .unwrap()
        .trim()
        .to_string();
    let job = hub.job(&user, &id).await;
    let file_id = job["fileUrl"].as_str().unwrap().rsplit('/').next().unwrap();
    let (s, files) = hub.get(&user, "/api/files/list").await;
    assert_eq!(s, 200);
    let size = files["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["fileId"] == file_id)
        .and_then(|f| f["size"].as_u64())
        .unwrap();
    assert!(size > 50 << 20, "uploaded {size} bytes");
    println!("cmdx submit of a 50 MiB folder: peak RSS {peak} KiB");
    assert!(peak > 0, "never sampled the CLI's memory");
    assert!(peak < 64 * 1024, "peak RSS {peak} KiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_one_line_with_exit_125() {
    let hub = HubProc::start(&[
        "--reconnect-grace-secs",
        "2",
        "--rate-limit-per-min",
        "0",
        "--read-rate-limit-per-sec",
        "0",
        "--login-rate-limit-per-min",
        "0",
        "--max-upload-bytes",
        "4096",
    ])
    .await;
    let admin = hub.admin().await;
    let user = hub.user(&admin, "errors@test.local").await;
    let cli = CliEnv::new(&hub, &user);

    // Wrong password.
    let out = cli
        .run_stdin(
            &["login", "--email", "errors@test.local", "--password-stdin"],
            "not-the-password\n",
        )
        .await;
    out.assert_one_line_error("wrong email or password");

    // Unreachable hub (a port nobody listens on).
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let out = cli.run(&["jobs", "--hub", &dead]).await;
    out.assert_one_line_error("cannot reach the hub");
    let out = cli.run(&["submit", "--hub", &dead, "--", "true"]).await;
    out.assert_one_line_error("cannot reach the hub");

    // Unknown job id.
    for args in [
        vec!["logs", "no-such-job"],
        vec!["logs", "-f", "no-such-job"],
        vec!["cancel", "no-such-job"],
    ] {
        let out = cli.run(&args).await;
        out.assert_one_line_error("job no-such-job not found");
    }

    // Not signed in, or a bad token.
    let signed_out = CliEnv {
        token: None,
        ..CliEnv::new(&hub, "")
    };
    let out = signed_out.run(&["jobs"]).await;
    out.assert_one_line_error("run cmdx login");
    let bad = CliEnv::new(&hub, "not-a-token");
    let out = bad.run(&["submit", "--", "true"]).await;
    out.assert_one_line_error("not signed in or session expired: run cmdx login");

    // Upload over the hub's limit: says so, with the limit. (Just over it: the hub reads the
    // body and stops at the limit; far over it: the hub refuses on Content-Length alone.)
    for size in [20_000, 400_000] {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("noise.bin"), noise(size, 7)).unwrap();
        let out = cli
            .run(&["submit", d.path().to_str().unwrap(), "--", "true"])
            .await;
        out.assert_one_line_error("upload too large");
        assert!(out.stderr.contains("4096"), "{}", out.stderr);
    }

    // Admin-only commands as a plain user.
    let out = cli.run(&["token", "worker"]).await;
    out.assert_one_line_error("permission denied");

    // A missing folder.
    let out = cli.run(&["submit", "/no/such/folder", "--", "true"]).await;
    out.assert_one_line_error("/no/such/folder");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_config_and_admin_commands() {
    let hub = HubProc::start(FAST).await;
    let admin_token = hub.admin().await;
    let wt = hub.worker_token(&admin_token).await;
    let (_agent, _) = FakeAgent::connect(&hub, &wt, "listed-worker", 3, vec![])
        .await
        .unwrap();
    let cli = CliEnv {
        token: None,
        ..CliEnv::new(&hub, "")
    };
    let out = cli
        .run_stdin(
            &[
                "login",
                "--hub",
                &hub.url,
                "--email",
                cmdx_e2e::ADMIN_EMAIL,
                "--password-stdin",
            ],
            &format!("{}\n", cmdx_e2e::ADMIN_PASSWORD),
        )
        .await;
    assert_eq!(out.code(), 0, "stderr: {}", out.stderr);
    let cfg_path = cli.config_path();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&cfg_path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let cfg: Value = serde_json::from_slice(&std::fs::read(&cfg_path).unwrap()).unwrap();
    assert_eq!(cfg["hub"], hub.url.as_str());
    assert!(cfg["token"].is_string());

    // The config file alone is enough now (no CMDX_HUB / CMDX_TOKEN).
    let from_file = |args: &[&str]| {
        let mut c = cli.command(args);
        c.env_remove("CMDX_HUB");
        c
    };
    let out = finish(from_file(&["workers", "--json"]).spawn().unwrap()).await;
    assert_eq!(out.code(), 0, "stderr: {}", out.stderr);
    let w: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(w["workerId"], "listed-worker");
    assert_eq!(w["slots"], 3);

    // user add, then that user signs in.
    let out = finish({
        let mut c = from_file(&["user", "add", "bob@test.local", "--password-stdin"]);
        c.stdin(Stdio::piped());
        let mut child = c.spawn().unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"bob-password-1\n").await.unwrap();
        drop(stdin);
        child
    })
    .await;
    assert_eq!(out.code(), 0, "stderr: {}", out.stderr);
    hub.login("bob@test.local", "bob-password-1").await;

    // token worker prints a token an agent can use.
    let out = finish(
        from_file(&["token", "worker", "--name", "ci", "--ttl", "2d"])
            .spawn()
            .unwrap(),
    )
    .await;
    assert_eq!(out.code(), 0, "stderr: {}", out.stderr);
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    FakeAgent::connect(&hub, &token, "minted", 1, vec![])
        .await
        .expect("the minted token admits a worker");

    // jobs lists what was submitted, as JSON lines when piped.
    // (Tagged so that no worker takes them.)
    let a = hub
        .submit(
            &admin_token,
            json!({"command": "first", "tags": ["nowhere"]}),
        )
        .await;
    let b = hub
        .submit(
            &admin_token,
            json!({"command": "second", "tags": ["nowhere"]}),
        )
        .await;
    let out = finish(from_file(&["jobs", "--limit", "5"]).spawn().unwrap()).await;
    assert_eq!(out.code(), 0, "stderr: {}", out.stderr);
    let ids: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["jobId"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let mut both = ids.clone();
    both.sort();
    let mut want = vec![a.clone(), b.clone()];
    want.sort();
    assert_eq!(
        both, want,
        "(ids made in the same millisecond may come in any order)"
    );

    // cancel a queued job.
    let out = finish(from_file(&["cancel", &a]).spawn().unwrap()).await;
    assert_eq!(out.code(), 0, "stderr: {}", out.stderr);
    assert_eq!(hub.job(&admin_token, &a).await["status"], "cancelled");

    // The saved token is never sent to another hub.
    let out = finish(
        from_file(&["jobs", "--hub", "http://127.0.0.1:9"])
            .spawn()
            .unwrap(),
    )
    .await;
    out.assert_one_line_error("run cmdx login");

    // completions.
    let out = cli.run(&["completions", "bash"]).await;
    assert_eq!(out.code(), 0);
    assert!(String::from_utf8_lossy(&out.stdout).contains("submit"));

    // logout forgets the token.
    let out = finish(from_file(&["logout"]).spawn().unwrap()).await;
    assert_eq!(out.code(), 0, "stderr: {}", out.stderr);
    let out = finish(from_file(&["jobs"]).spawn().unwrap()).await;
    out.assert_one_line_error("run cmdx login");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_twice_detaches_and_leaves_the_job_to_its_worker() {
    let (hub, user, mut agent) = setup("detach@test.local").await;
    let cli = CliEnv::new(&hub, &user);
    let mut child = cli.spawn(&["submit", "--", "sleep 600"]);
    let mut stdout = child.stdout.take().unwrap();
    let (mut run, _) = Run::start(&mut agent).await;
    run.out(StreamKind::Stdout, b"working\n").await;
    read_until(&mut stdout, &mut Vec::new(), b"working\n").await;
    let pid = child.id().unwrap().to_string();
    let interrupt = || Command::new("kill").args(["-INT", &pid]).status();
    assert!(interrupt().await.unwrap().success());
    run.agent
        .recv_until(|m| matches!(m, HubMsg::Cancel(_)).then_some(()))
        .await
        .unwrap();
    assert!(interrupt().await.unwrap().success());
    let out = finish(child).await;
    assert_eq!(out.code(), 130, "stderr: {}", out.stderr);
    assert!(out.stderr.contains("detached"), "{}", out.stderr);
    // The job is the worker's to end; here it stops as asked.
    let id = run.job_id.clone();
    assert_eq!(hub.job(&user, &id).await["status"], "running");
    run.finish(Outcome {
        cancelled: true,
        ..Outcome::default()
    })
    .await;
    hub.wait_status(&user, &id, "cancelled").await;
}

/// A `cmdx dev` process (hub + real sandboxed agents) on a free loopback port.
struct DevProc {
    _child: Child,
    url: String,
    _data: tempfile::TempDir,
}

impl DevProc {
    async fn start() -> DevProc {
        use tokio::io::AsyncBufReadExt;
        let data = tempfile::tempdir().unwrap();
        let mut child = Command::new(cmdx_bin())
            .args(["dev", "--listen", "127.0.0.1:0", "--agents", "1", "--data"])
            .arg(data.path().join("data"))
            .env("CMDX_ADMIN_EMAIL", cmdx_e2e::ADMIN_EMAIL)
            .env("CMDX_ADMIN_PASSWORD", cmdx_e2e::ADMIN_PASSWORD)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn cmdx dev");
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let url = tokio::time::timeout(WAIT, async {
            while let Some(l) = lines.next_line().await.unwrap() {
                if let Some(rest) = l.strip_prefix("cmdx dev ready: ") {
                    return rest.split_whitespace().next().unwrap().to_string();
                }
            }
            panic!("cmdx dev exited before it was ready");
        })
        .await
        .expect("cmdx dev ready in time");
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        DevProc {
            _child: child,
            url,
            _data: data,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_jobs_on_cmdx_dev() {
    let dev = DevProc::start().await;
    let cli = CliEnv {
        hub: dev.url.clone(),
        token: None,
        config: tempfile::tempdir().unwrap(),
    };
    let out = cli
        .run_stdin(
            &[
                "login",
                "--email",
                cmdx_e2e::ADMIN_EMAIL,
                "--password-stdin",
            ],
            &format!("{}\n", cmdx_e2e::ADMIN_PASSWORD),
        )
        .await;
    assert_eq!(out.code(), 0, "stderr: {}", out.stderr);
    let workers = cli.run(&["workers", "--json"]).await;
    assert_eq!(workers.code(), 0, "stderr: {}", workers.stderr);

    // The fixture folder (with an ignored file) really runs.
    let fixture = tempfile::tempdir().unwrap();
    write(fixture.path(), "data.txt", b"from the folder\n");
    write(fixture.path(), ".gitignore", b"junk.txt\n");
    write(fixture.path(), "junk.txt", b"junk\n");
    let dir = fixture.path().to_str().unwrap();
    let out = cli
        .run(&[
            "submit",
            dir,
            // Pipes: stdout and stderr arrive apart (a terminal, the default, has one stream).
            "--no-tty",
            "--",
            "cat data.txt; test ! -e junk.txt; echo out; echo err >&2; exit 7",
        ])
        .await;
    assert_eq!(out.code(), 7, "stderr: {}", out.stderr);
    assert_eq!(out.stdout, b"from the folder\nout\n");
    assert_eq!(without_status(&out.stderr), "err\n");

    // Timeout.
    let out = cli
        .run(&["submit", "--timeout", "1", "--", "sleep 30"])
        .await;
    assert_eq!(out.code(), 124, "stderr: {}", out.stderr);

    // Lines arrive as the job prints them, a second apart, not all at the end.
    let mut child = cli.spawn(&["submit", "--", "for i in 1 2 3; do echo $i; sleep 1; done"]);
    let mut stdout = child.stdout.take().unwrap();
    let mut got = Vec::new();
    let mut seen = Vec::new();
    for line in ["1\n", "2\n", "3\n"] {
        read_until(&mut stdout, &mut got, line.as_bytes()).await;
        seen.push(std::time::Instant::now());
    }
    assert_eq!(got, b"1\n2\n3\n");
    let spread = seen[2] - seen[0];
    assert!(
        spread > Duration::from_millis(1500),
        "lines came together ({spread:?})"
    );
    assert_eq!(finish(child).await.code(), 0);

    // Ctrl-C cancels the real job.
    let mut child = cli.spawn(&["submit", "--", "echo started; sleep 60"]);
    let mut stdout = child.stdout.take().unwrap();
    read_until(&mut stdout, &mut Vec::new(), b"started\n").await;
    let pid = child.id().unwrap().to_string();
    assert!(
        Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .await
            .unwrap()
            .success()
    );
    let out = finish(child).await;
    assert_eq!(out.code(), 130, "stderr: {}", out.stderr);
    let jobs = cli.run(&["jobs", "--json", "--limit", "1"]).await;
    let last: Value = serde_json::from_slice(&jobs.stdout).unwrap();
    assert_eq!(last["status"], "cancelled", "{last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_keeps_following_across_a_hub_restart() {
    let mut hub = HubProc::start(FAST).await;
    let admin = hub.admin().await;
    let wt = hub.worker_token(&admin).await;
    let user = hub.user(&admin, "restart@test.local").await;
    let (mut agent, _) = FakeAgent::connect(&hub, &wt, "sturdy", 1, vec![])
        .await
        .unwrap();
    let cli = CliEnv::new(&hub, &user);
    let mut child = cli.spawn(&["submit", "--", "long job"]);
    let mut stdout = child.stdout.take().unwrap();
    let (mut run, _) = Run::start(&mut agent).await;
    run.out(StreamKind::Stdout, b"before\n").await;
    run.agent
        .recv_until(|m| matches!(m, HubMsg::OutputAck(ref a) if a.stored_chunks == 1).then_some(()))
        .await
        .unwrap();
    let mut got = Vec::new();
    read_until(&mut stdout, &mut got, b"before\n").await;
    let id = run.job_id.clone();
    hub.kill9().await;
    hub.restart().await;
    let held = cmdx_proto::agent::HeldJob {
        job_id: id.clone(),
        attempt: 1,
        chunks: 1,
        finished: None,
    };
    let (mut agent, welcome) = FakeAgent::connect(&hub, &wt, "sturdy", 1, vec![held])
        .await
        .unwrap();
    assert_eq!(welcome.resume.len(), 1, "{welcome:?}");
    let mut run = Run {
        agent: &mut agent,
        job_id: id,
        attempt: 1,
        seq: 1,
    };
    run.out(StreamKind::Stdout, b"after\n").await;
    run.finish(exited(0)).await;
    let out = finish(child).await;
    stdout.read_to_end(&mut got).await.unwrap();
    assert_eq!(out.code(), 0, "stderr: {}", out.stderr);
    assert_eq!(got, b"before\nafter\n");
}

/// Hex sha256 of a file's content.
fn sha_of(path: &Path) -> String {
    use sha2::Digest;
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    hex::encode(sha2::Sha256::digest(data))
}

/// Every path under `root`, relative and sorted; symlinks are listed, not followed.
fn tree(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            out.push(p.strip_prefix(root).unwrap().display().to_string());
            if std::fs::symlink_metadata(&p).unwrap().is_dir() {
                walk(root, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    if root.exists() {
        walk(root, root, &mut out);
    }
    out.sort();
    out
}

/// `(path, sha256)` pairs from `sha256sum` output, as printed by a job.
fn sums(stdout: &[u8]) -> Vec<(String, String)> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|l| {
            let (sha, path) = l.split_once("  ").expect("a sha256sum line");
            (path.to_string(), sha.to_string())
        })
        .collect()
}

/// Asserts `dir` holds exactly the files in `want` (and their folders), each with the hash the
/// job computed inside its sandbox.
fn assert_unpacked(dir: &Path, want: &[(String, String)], folders: &[&str]) {
    let mut expected: Vec<String> = want.iter().map(|(p, _)| p.clone()).collect();
    expected.extend(folders.iter().map(|f| f.to_string()));
    expected.sort();
    assert_eq!(tree(dir), expected, "in {}", dir.display());
    for (path, sha) in want {
        assert_eq!(
            &sha_of(&dir.join(path)),
            sha,
            "{path} differs from the job's"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifacts_of_a_real_job_are_downloaded_and_unpacked_byte_for_byte() {
    let hub = HubProc::start(FAST).await;
    let admin = hub.admin().await;
    let wt = hub.worker_token(&admin).await;
    let alice = hub.user(&admin, "alice-cli-art@test.local").await;
    let bob = hub.user(&admin, "bob-cli-art@test.local").await;
    let work = cmdx_e2e::traversable_tempdir();
    let _agent =
        cmdx_e2e::AgentProc::start(&hub, &wt, "cli-art", &work.path().join("a"), 52_000).await;
    let cli = CliEnv::new(&hub, &alice);
    let out_root = tempfile::tempdir().unwrap();
    let dl = out_root.path().join("dl");
    let out = cli
        .run(&[
            "submit",
            "--artifacts",
            "dist/**",
            "--artifacts",
            "reports/*.xml",
            "--download",
            dl.to_str().unwrap(),
            "--",
            "mkdir -p dist/sub reports && echo built > dist/app.txt \
             && head -c 200000 /dev/urandom > dist/sub/blob.bin \
             && echo '<r/>' > reports/r.xml && echo no > reports/notes.txt \
             && ln -s /etc/passwd dist/link \
             && sha256sum dist/app.txt dist/sub/blob.bin reports/r.xml",
        ])
        .await;
    assert_eq!(out.code(), 0, "stderr: {}", out.stderr);
    let want = sums(&out.stdout);
    assert_eq!(want.len(), 3, "{:?}", String::from_utf8_lossy(&out.stdout));
    let folders = ["dist", "dist/sub", "reports"];
    assert_unpacked(&dl, &want, &folders);
    // What was written and what the job skipped are on stderr; stdout stays the job's.
    for (path, _) in &want {
        assert!(
            out.stderr
                .contains(&format!("wrote {}", dl.join(path).display())),
            "{}",
            out.stderr
        );
    }
    assert!(
        out.stderr.contains("not collected: dist/link: symlink"),
        "{}",
        out.stderr
    );
    let (_, list) = hub.get(&alice, "/api/jobs/list?limit=1").await;
    let id = list["jobs"][0]["jobId"].as_str().unwrap().to_string();

    // `cmdx artifacts`: the listing, as JSON and as a table.
    let out = cli.run(&["artifacts", &id, "--json"]).await;
    assert_eq!(out.code(), 0, "stderr: {}", out.stderr);
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut listed: Vec<(String, String)> = doc["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["path"].as_str().unwrap().to_string(),
                a["sha256"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    listed.sort();
    let mut sorted = want.clone();
    sorted.sort();
    assert_eq!(listed, sorted);
    assert_eq!(doc["artifactPatterns"], json!(["dist/**", "reports/*.xml"]));
    assert_eq!(doc["artifactsSkipped"][0]["path"], "dist/link");

    // `--out` unpacks the same bytes and prints the paths written; `--zip` keeps the ZIP.
    let again = out_root.path().join("again");
    let zip_file = out_root.path().join("all.zip");
    let out = cli
        .run(&[
            "artifacts",
            &id,
            "--out",
            again.to_str().unwrap(),
            "--zip",
            zip_file.to_str().unwrap(),
        ])
        .await;
    assert_eq!(out.code(), 0, "stderr: {}", out.stderr);
    assert_unpacked(&again, &want, &folders);
    let mut printed: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    printed.sort();
    let mut expected: Vec<String> = want
        .iter()
        .map(|(p, _)| again.join(p).display().to_string())
        .collect();
    expected.sort();
    assert_eq!(printed, expected);
    let mut z = zip::ZipArchive::new(std::fs::File::open(&zip_file).unwrap()).unwrap();
    assert_eq!(z.len(), 3);
    let mut blob = Vec::new();
    std::io::Read::read_to_end(&mut z.by_name("dist/sub/blob.bin").unwrap(), &mut blob).unwrap();
    assert_eq!(blob.len(), 200_000);
    assert_eq!(
        tree(out_root.path())
            .iter()
            .filter(|p| p.contains(".cmdx-"))
            .count(),
        0,
        "temp files left"
    );

    // Someone else's job does not exist for them, and nothing is written.
    let bob_cli = CliEnv::new(&hub, &bob);
    let denied = out_root.path().join("bob");
    for args in [
        vec!["artifacts", id.as_str()],
        vec!["artifacts", id.as_str(), "--out", denied.to_str().unwrap()],
    ] {
        bob_cli
            .run(&args)
            .await
            .assert_one_line_error(&format!("job {id} not found"));
    }
    assert!(!denied.exists());

    // Any outcome: a failing job's artifacts are downloaded and its exit code kept.
    let failed = out_root.path().join("failed");
    let out = cli
        .run(&[
            "submit",
            "--artifacts",
            "*.log",
            "--download",
            failed.to_str().unwrap(),
            "--",
            "echo partial > out.log; exit 3",
        ])
        .await;
    assert_eq!(out.code(), 3, "stderr: {}", out.stderr);
    assert_eq!(std::fs::read(failed.join("out.log")).unwrap(), b"partial\n");

    // A download that cannot complete (the file is already there, and is not overwritten):
    // a completed job exits 125 (a CLI error) with the reason; a failed one keeps its own code.
    for (command, code) in [
        ("echo new > out.log", 125),
        ("echo new > out.log; exit 4", 4),
    ] {
        let out = cli
            .run(&[
                "submit",
                "--artifacts",
                "out.log",
                "--download",
                failed.to_str().unwrap(),
                "--",
                command,
            ])
            .await;
        assert_eq!(out.code(), code, "stderr: {}", out.stderr);
        assert!(out.stderr.contains("already exists"), "{}", out.stderr);
        assert_eq!(std::fs::read(failed.join("out.log")).unwrap(), b"partial\n");
    }
}

/// Builds a ZIP with regular files and symlink entries (`(name, target)`).
fn hostile_zip(files: &[(&str, &[u8])], links: &[(&str, &str)]) -> Vec<u8> {
    use std::io::Write;
    let mut buf = std::io::Cursor::new(Vec::new());
    let mut z = zip::ZipWriter::new(&mut buf);
    let opts = zip::write::SimpleFileOptions::default();
    for (name, data) in files {
        z.start_file(*name, opts).unwrap();
        z.write_all(data).unwrap();
    }
    for (name, target) in links {
        z.add_symlink(*name, *target, opts).unwrap();
    }
    z.finish().unwrap();
    buf.into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_artifact_zip_writes_nothing_outside_the_folder() {
    let hub = HubProc::start(FAST).await;
    let admin = hub.admin().await;
    let wt = hub.worker_token(&admin).await;
    let user = hub.user(&admin, "hostile-zip@test.local").await;
    let zip = hostile_zip(
        &[
            ("out/app.bin", b"\x00\x01binary"),
            ("../../escape", b"x"),
            ("/abs", b"x"),
            ("..\\..\\win", b"x"),
            ("ok.txt", b"fine"),
        ],
        &[("link", "/etc/passwd"), ("out/up", "../../..")],
    );
    // The legacy worker's `resultZipBase64` is kept as the job's artifacts as it came, with
    // only its safe regular files listed: the CLI downloads that ZIP whole.
    let id = hub
        .legacy_job_with_result_zip(&wt, "old-cli", &user, &zip)
        .await;

    let cli = CliEnv::new(&hub, &user);
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("a/b/out");
    let out = cli
        .run(&["artifacts", &id, "--out", dir.to_str().unwrap()])
        .await;
    assert_eq!(out.code(), 0, "stderr: {}", out.stderr);
    assert_eq!(
        tree(root.path()),
        [
            "a",
            "a/b",
            "a/b/out",
            "a/b/out/ok.txt",
            "a/b/out/out",
            "a/b/out/out/app.bin"
        ]
    );
    assert_eq!(
        std::fs::read(dir.join("out/app.bin")).unwrap(),
        b"\x00\x01binary"
    );
    for bad in ["../../escape", "link", "out/up"] {
        assert!(
            out.stderr.contains(&format!("not collected: {bad}: ")),
            "{bad} not reported: {}",
            out.stderr
        );
    }

    // A symlink planted in the folder is not written through.
    let outside = root.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let planted = root.path().join("planted");
    std::fs::create_dir(&planted).unwrap();
    std::os::unix::fs::symlink(&outside, planted.join("out")).unwrap();
    let out = cli
        .run(&["artifacts", &id, "--out", planted.to_str().unwrap()])
        .await;
    out.assert_one_line_error("is a symlink: not followed");
    assert!(tree(&outside).is_empty(), "wrote through the symlink");
    assert_eq!(tree(&planted), ["out"], "not all or nothing");
}

/// The usual slip of a newcomer: the command where the folder goes. Answered at once (no hub
/// needed), exit code 2 like any usage error, with the corrected command line.
#[tokio::test]
async fn a_command_without_dashes_gets_the_corrected_line() {
    let out = Command::new(cmdx_bin())
        .args(["submit", "--hub", "http://127.0.0.1:9", "echo hi"])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("`cmdx submit -- echo hi`"), "{stderr}");
    let out = Command::new(cmdx_bin())
        .args(["submit", "--hub", "http://127.0.0.1:9"])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("put it after `--`"), "{stderr}");
}

/// `--zip` with a file that is not a ZIP fails at once, before anything is uploaded or queued.
#[tokio::test]
async fn a_non_zip_given_to_zip_fails_before_any_upload() {
    let dir = tempfile::tempdir().unwrap();
    let not_zip = dir.path().join("project.zip");
    std::fs::write(&not_zip, b"just some text\n").unwrap();
    let out = Command::new(cmdx_bin())
        .args(["submit", "--hub", "http://127.0.0.1:9", "--zip"])
        .arg(&not_zip)
        .args(["--", "true"])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("is not a ZIP file"), "{stderr}");
}

/// `cmdx jobs` tells at a glance how a failed job ended: its exit code, not only "failed".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jobs_table_shows_a_failed_jobs_exit_code() {
    let (hub, user, mut agent) = setup("table@test.local").await;
    let cli = CliEnv::new(&hub, &user);
    let id = hub.submit(&user, json!({"command": "make test"})).await;
    let (run, _) = Run::start(&mut agent).await;
    run.finish(Outcome {
        failure: Some(FailureKind::ExitCode),
        ..exited(2)
    })
    .await;
    wait_for("the job to fail", || async {
        (hub.job(&user, &id).await["status"] == "failed").then_some(())
    })
    .await;
    // The table is for terminals (a pipe gets JSON lines): run it on a pseudo-terminal.
    let mut c = Command::new("script");
    c.args([
        "-qec",
        &format!("{} jobs", cmdx_bin().display()),
        "/dev/null",
    ])
    .env("CMDX_CONFIG", cli.config_path())
    .env("CMDX_HUB", &cli.hub)
    .env("CMDX_TOKEN", cli.token.as_deref().unwrap())
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    let out = finish(c.spawn().expect("script")).await;
    assert_eq!(out.code(), 0, "stderr: {}", out.stderr);
    let table = String::from_utf8_lossy(&out.stdout);
    let row = table
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("no row for {id}: {table}"));
    assert!(row.contains("failed (exit 2)"), "{row}");
}

/// `stderr` without the CLI's status lines (`job … submitted: …`, `queued (…)`, `job … failed:
/// …`): what is left is the job's own stderr.
fn without_status(stderr: &str) -> String {
    stderr
        .lines()
        .filter(|l| !(l.starts_with("job ") || l.starts_with("queued (")))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// Reads from `r` until what was read contains `want` (or fails after [`WAIT`]).
async fn read_until_contains<R: AsyncRead + Unpin>(r: &mut R, got: &mut Vec<u8>, want: &str) {
    tokio::time::timeout(WAIT, async {
        while !String::from_utf8_lossy(got).contains(want) {
            let mut buf = [0u8; 4096];
            let n = r.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "stream closed; got {:?}",
                String::from_utf8_lossy(got)
            );
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "timed out waiting for {want:?}; got {:?}",
            String::from_utf8_lossy(got)
        )
    });
}

/// The job id in a `job <id> submitted: <url>` line.
fn submitted_id(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let line = text
        .lines()
        .find(|l| l.contains(" submitted: "))
        .unwrap_or_else(|| panic!("no submitted line in {text:?}"));
    line["job ".len()..line.find(" submitted").unwrap()].to_string()
}

/// A single-slot worker busy with one job: the next two submissions wait at positions 1 and 2,
/// say so on stderr (a new line per change, stderr not being a terminal), move up when the
/// slot frees, and each one's stdout is exactly its job's output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_submissions_say_their_position_and_move_up() {
    let (hub, user, mut agent) = setup("queue-pos@test.local").await;
    let cli = CliEnv::new(&hub, &user);
    let first = cli.spawn(&["submit", "--", "first"]);
    let (run1, _) = Run::start(&mut agent).await;
    let id1 = run1.job_id.clone();

    let mut second = cli.spawn(&["submit", "--", "second"]);
    let mut err2 = second.stderr.take().unwrap();
    let mut got2 = Vec::new();
    read_until_contains(
        &mut err2,
        &mut got2,
        "queued (position 1, waiting for a free worker)\n",
    )
    .await;
    let id2 = submitted_id(&got2);
    let mut third = cli.spawn(&["submit", "--", "third"]);
    let mut err3 = third.stderr.take().unwrap();
    let mut got3 = Vec::new();
    read_until_contains(
        &mut err3,
        &mut got3,
        "queued (position 2, waiting for a free worker)\n",
    )
    .await;
    let id3 = submitted_id(&got3);
    assert!(
        !String::from_utf8_lossy(&got3).contains("warning"),
        "a worker is connected: {:?}",
        String::from_utf8_lossy(&got3)
    );
    let (_, view) = hub
        .get(&user, &format!("/api/jobs/status?jobId={id3}"))
        .await;
    assert_eq!(view["queuePosition"], 2, "{view}");
    assert_eq!(view["noMatchingWorker"], false, "{view}");

    // The first ends with exit 2: its summary; the second takes the slot, the third moves up.
    run1.finish(exited(2)).await;
    let out1 = finish(first).await;
    assert_eq!(out1.code(), 2, "stderr: {}", out1.stderr);
    assert!(out1.stdout.is_empty());
    assert!(
        out1.stderr
            .contains(&format!("job {id1} failed: exit 2 after ")),
        "{}",
        out1.stderr
    );
    let (mut run2, asg2) = Run::start(&mut agent).await;
    assert_eq!(asg2.job_id, id2);
    read_until_contains(
        &mut err3,
        &mut got3,
        "queued (position 1, waiting for a free worker)\n",
    )
    .await;
    run2.out(StreamKind::Stdout, b"two\n").await;
    run2.finish(exited(0)).await;
    let (mut run3, asg3) = Run::start(&mut agent).await;
    assert_eq!(asg3.job_id, id3);
    run3.out(StreamKind::Stdout, b"three\n").await;
    run3.finish(exited(0)).await;
    for (child, got, err, want) in [
        (second, got2, err2, b"two\n".as_slice()),
        (third, got3, err3, b"three\n".as_slice()),
    ] {
        let mut child = child;
        child.stderr = None;
        let out = finish(child).await;
        let mut err = err;
        let mut rest = got;
        err.read_to_end(&mut rest).await.unwrap();
        let stderr = String::from_utf8_lossy(&rest);
        assert_eq!(out.code(), 0, "stderr: {stderr}");
        assert_eq!(out.stdout, want, "stdout is the job's output only");
        assert_eq!(without_status(&stderr), "", "{stderr}");
    }
}

/// A job whose tags no connected worker serves: a warning and the queued line, on the CLI and
/// in the job view, until it is cancelled; `-q` says nothing of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_no_worker_can_run_is_flagged_until_cancelled() {
    let (hub, user, _agent) = setup("no-worker@test.local").await;
    let cli = CliEnv::new(&hub, &user);
    let mut child = cli.spawn(&["submit", "--tag", "gpu", "--tag", "arm", "--", "true"]);
    let mut err = child.stderr.take().unwrap();
    let mut got = Vec::new();
    read_until_contains(
        &mut err,
        &mut got,
        "queued (position 1, waiting for a worker with tags gpu,arm)\n",
    )
    .await;
    let id = submitted_id(&got);
    let text = String::from_utf8_lossy(&got).into_owned();
    assert!(
        text.contains(&format!(
            "cmdx: warning: no connected worker serves tags gpu,arm: job {id} waits"
        )),
        "{text}"
    );
    let (_, view) = hub
        .get(&user, &format!("/api/jobs/status?jobId={id}"))
        .await;
    assert_eq!(view["noMatchingWorker"], true, "{view}");
    assert_eq!(view["queuePosition"], 1, "{view}");
    let show = cli.run(&["job", "show", &id]).await;
    assert_eq!(show.code(), 0, "stderr: {}", show.stderr);
    let shown = String::from_utf8_lossy(&show.stdout);
    assert!(
        shown.contains("position 1, no connected worker can run it"),
        "{shown}"
    );
    assert!(shown.contains("arm,gpu"), "{shown}");

    // Quiet: no status lines at all, only the cancellation's error-free exit code.
    let mut quiet = cli.spawn(&["submit", "-q", "--tag", "gpu", "--", "true"]);
    let quiet_id = wait_for("the quiet job", || async {
        let (_, list) = hub.get(&user, "/api/jobs/list?limit=1").await;
        let j = &list["jobs"][0];
        (j["tags"] == json!(["gpu"])).then(|| j["jobId"].as_str().unwrap().to_string())
    })
    .await;

    let c = cli.run(&["cancel", &id]).await;
    assert_eq!(c.code(), 0, "stderr: {}", c.stderr);
    let out = finish(child).await;
    err.read_to_end(&mut got).await.unwrap();
    assert_eq!(out.code(), 130, "stderr: {}", String::from_utf8_lossy(&got));
    assert!(out.stdout.is_empty());
    assert!(
        String::from_utf8_lossy(&got).contains(&format!("job {id} cancelled while queued")),
        "{}",
        String::from_utf8_lossy(&got)
    );

    let c = cli.run(&["cancel", &quiet_id]).await;
    assert_eq!(c.code(), 0, "stderr: {}", c.stderr);
    let mut err_q = quiet.stderr.take().unwrap();
    let out = finish(quiet).await;
    let mut q = Vec::new();
    err_q.read_to_end(&mut q).await.unwrap();
    assert_eq!(out.code(), 130);
    assert_eq!(String::from_utf8_lossy(&q), "", "quiet is quiet");
}

/// `--artifacts GLOB` takes one value, so the project folder after it (`.`) is the folder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_folder_after_artifacts_is_uploaded_not_taken_as_a_glob() {
    let (hub, user, mut agent) = setup("glob-dot@test.local").await;
    let cli = CliEnv::new(&hub, &user);
    let fixture = tempfile::tempdir().unwrap();
    write(fixture.path(), "src.txt", b"x\n");
    let mut c = cli.command(&["submit", "--artifacts", "dist/**", ".", "--", "true"]);
    c.current_dir(fixture.path());
    let child = c.spawn().unwrap();
    let (run, asg) = Run::start(&mut agent).await;
    assert_eq!(asg.artifacts, vec!["dist/**".to_string()]);
    assert_eq!(
        uploaded_names(&hub, &user, &run.job_id).await,
        vec!["src.txt".to_string()]
    );
    run.finish(exited(0)).await;
    let out = finish(child).await;
    assert_eq!(out.code(), 0, "stderr: {}", out.stderr);
}

/// `PUT /api/jobs/{job}/artifacts?attempt=N` as the scripted worker.
async fn upload_as_worker(
    hub: &HubProc,
    wt: &str,
    worker: &str,
    job: &str,
    attempt: u32,
    zip: Vec<u8>,
) {
    let form = reqwest::multipart::Form::new()
        .text("manifest", r#"{"skipped":[],"skippedTotal":0}"#)
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
        .header("x-worker-token", wt)
        .header("x-worker-id", worker)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// `--download` twice: each run unpacks into its own `./cmdx-artifacts/<job id>/`; into one
/// named folder the second run refuses to overwrite unless `--force`. `./cmdx-artifacts` ignores
/// itself, so a later `cmdx submit .` does not upload earlier downloads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_twice_works_per_job_and_with_force() {
    let hub = HubProc::start(FAST).await;
    let admin = hub.admin().await;
    let wt = hub.worker_token(&admin).await;
    let user = hub.user(&admin, "download-twice@test.local").await;
    let (mut agent, _) = FakeAgent::connect(&hub, &wt, "dl-worker", 1, vec![])
        .await
        .unwrap();
    let cli = CliEnv::new(&hub, &user);
    let cwd = tempfile::tempdir().unwrap();
    let named = cwd.path().join("out");
    let named_arg = format!("--download={}", named.display());
    let runs: [(&[&str], &[u8], i32); 5] = [
        (&["--download"], b"one", 0),
        (&["--download"], b"two", 0),
        (&[named_arg.as_str()], b"three", 0),
        (&[named_arg.as_str()], b"four", 125),
        (&[named_arg.as_str(), "--force"], b"five", 0),
    ];
    let mut ids = Vec::new();
    for (flags, content, code) in runs {
        let mut args = vec!["submit", "--artifacts", "out.txt"];
        args.extend_from_slice(flags);
        args.extend(["--", "true"]);
        let mut c = cli.command(&args);
        c.current_dir(cwd.path());
        let child = c.spawn().unwrap();
        let (run, asg) = Run::start(&mut agent).await;
        upload_as_worker(
            &hub,
            &wt,
            "dl-worker",
            &asg.job_id,
            asg.attempt,
            hostile_zip(&[("out.txt", content)], &[]),
        )
        .await;
        ids.push(run.job_id.clone());
        run.finish(exited(0)).await;
        let out = finish(child).await;
        assert_eq!(out.code(), code, "{flags:?}: {}", out.stderr);
        if code != 0 {
            assert!(out.stderr.contains("--force"), "{}", out.stderr);
        }
    }
    for (id, content) in ids.iter().zip([b"one", b"two"]) {
        let file = cwd.path().join("cmdx-artifacts").join(id).join("out.txt");
        assert_eq!(std::fs::read(&file).unwrap(), content, "{}", file.display());
    }
    assert_eq!(std::fs::read(named.join("out.txt")).unwrap(), b"five");

    // The downloads stay out of git and out of the next upload of this folder.
    let ignore = std::fs::read_to_string(cwd.path().join("cmdx-artifacts/.gitignore")).unwrap();
    assert_eq!(ignore.lines().last(), Some("*"), "{ignore}");
    let mut c = cli.command(&["submit", ".", "--", "true"]);
    c.current_dir(cwd.path());
    let child = c.spawn().unwrap();
    let (run, _) = Run::start(&mut agent).await;
    let id = run.job_id.clone();
    run.finish(exited(0)).await;
    assert_eq!(finish(child).await.code(), 0);
    let names = uploaded_names(&hub, &user, &id).await;
    assert!(names.contains(&"out/out.txt".to_string()), "{names:?}");
    assert!(
        names
            .iter()
            .all(|n| !n.starts_with("cmdx-artifacts/") || n == "cmdx-artifacts/"),
        "{names:?}"
    );
}

/// Secrets stay off the command line: `--env NAME` passes the shell's value, `--env-file` reads
/// NAME=VALUE lines (comments and blank lines skipped, the value kept as it is), and `--env`
/// wins over a file. A name that is not set, or a bad line, is refused before anything is
/// submitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_values_come_from_the_shell_or_a_file() {
    let hub = HubProc::start(FAST).await;
    let admin = hub.admin().await;
    let wt = hub.worker_token(&admin).await;
    let user = hub.user(&admin, "env-user@test.local").await;
    let (mut agent, _) = FakeAgent::connect(&hub, &wt, "env-worker", 1, vec![])
        .await
        .unwrap();
    let cli = CliEnv::new(&hub, &user);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("deploy.env");
    std::fs::write(
        &file,
        "# the deploy's settings\n\nAPI_URL=https://x.example/a=b c\nTOKEN\nLEVEL=file\r\n",
    )
    .unwrap();
    let file_s = file.to_str().unwrap();
    let mut c = cli.command(&[
        "submit",
        "--detach",
        "--env-file",
        file_s,
        "--env",
        "LEVEL=flag",
        "--env",
        "REGION",
        "--",
        "true",
    ]);
    c.env("TOKEN", "s3cret").env("REGION", "eu-1");
    let out = finish(c.spawn().unwrap()).await;
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let asg = agent.next_assignment().await.unwrap();
    let want: std::collections::BTreeMap<String, String> = [
        ("API_URL", "https://x.example/a=b c"),
        ("LEVEL", "flag"),
        ("REGION", "eu-1"),
        ("TOKEN", "s3cret"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(asg.env, want);

    let mut c = cli.command(&["submit", "--env", "NOT_SET_HERE", "--", "true"]);
    c.env_remove("NOT_SET_HERE");
    let out = finish(c.spawn().unwrap()).await;
    assert_eq!(out.code(), 2, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("NOT_SET_HERE is not set in this environment"),
        "{}",
        out.stderr
    );
    std::fs::write(&file, "OK=1\nnot a variable\n").unwrap();
    cli.run(&["submit", "--env-file", file_s, "--", "true"])
        .await
        .assert_one_line_error(&format!("{file_s}:2: expected NAME=VALUE or NAME"));
    let (_, list) = hub.get(&user, "/api/jobs/list").await;
    assert_eq!(list["jobs"].as_array().unwrap().len(), 1, "{list}");
}

/// An admin drains and removes a worker from the CLI: the removed worker's running job goes
/// back to the queue; an unknown id and a plain user are refused with a clear message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_are_drained_and_removed_from_the_cli() {
    let hub = HubProc::start(FAST).await;
    let admin = hub.admin().await;
    let wt = hub.worker_token(&admin).await;
    let user = hub.user(&admin, "not-admin@test.local").await;
    let (mut agent, _) = FakeAgent::connect(&hub, &wt, "old-host", 1, vec![])
        .await
        .unwrap();
    let job = hub.submit(&admin, json!({"command": "sleep 100"})).await;
    let (run, _) = Run::start(&mut agent).await;
    assert_eq!(run.job_id, job);
    let cli = CliEnv::new(&hub, &admin);

    let out = cli.run(&["workers", "drain", "old-host"]).await;
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert!(
        out.stderr.contains("worker old-host is drained"),
        "{}",
        out.stderr
    );
    let (_, list) = hub.get(&admin, "/api/workers/list").await;
    assert_eq!(list["workers"][0]["status"], "draining", "{list}");

    let out = cli.run(&["workers", "remove", "old-host"]).await;
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert!(
        out.stderr.contains("worker old-host removed"),
        "{}",
        out.stderr
    );
    assert_eq!(hub.job(&admin, &job).await["status"], "queued");
    let (_, list) = hub.get(&admin, "/api/workers/list").await;
    assert_eq!(list["workers"], json!([]), "{list}");

    cli.run(&["workers", "remove", "old-host"])
        .await
        .assert_one_line_error("worker old-host not found");
    CliEnv::new(&hub, &user)
        .run(&["workers", "remove", "anything"])
        .await
        .assert_one_line_error("admin");
}

/// An operator drains a worker to look at its host: the drain holds while the agent restarts
/// and while the hub restarts (a drain that a reconnect ended would hand the host work in the
/// middle of the investigation), `cmdx workers` says who drained it, and only `cmdx workers
/// resume` gives it jobs again. A removed worker's drain goes with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_worker_stays_drained_across_restarts_until_resumed() {
    let mut hub = HubProc::start(FAST).await;
    let admin = hub.admin().await;
    let wt = hub.worker_token(&admin).await;
    let user = hub.user(&admin, "drain-user@test.local").await;
    let cli = CliEnv::new(&hub, &admin);
    let (agent, _) = FakeAgent::connect(&hub, &wt, "box-1", 1, vec![])
        .await
        .unwrap();

    let out = cli.run(&["workers", "drain", "box-1"]).await;
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert!(
        out.stderr.contains("until `cmdx workers resume box-1`"),
        "{}",
        out.stderr
    );
    // The agent restarts; then the hub does.
    agent.drop_connection();
    let (agent, _) = FakeAgent::connect(&hub, &wt, "box-1", 1, vec![])
        .await
        .unwrap();
    let job = hub.submit(&user, json!({"command": "make"})).await;
    let view = hub.job(&user, &job).await;
    assert_eq!(
        (&view["status"], &view["noMatchingWorker"]),
        (&json!("queued"), &json!(true)),
        "the reconnected worker took the drained one's place: {view}"
    );
    agent.drop_connection();
    hub.kill9().await;
    hub.restart().await;
    let (mut agent, _) = FakeAgent::connect(&hub, &wt, "box-1", 1, vec![])
        .await
        .unwrap();
    let view = hub.job(&user, &job).await;
    assert_eq!(
        (&view["status"], &view["noMatchingWorker"]),
        (&json!("queued"), &json!(true)),
        "after the hub's restart: {view}"
    );
    let (_, list) = hub.get(&admin, "/api/workers/list").await;
    let w = &list["workers"][0];
    assert_eq!(
        (&w["status"], &w["drainedBy"]),
        (&json!("draining"), &json!("admin@test.local")),
        "{list}"
    );
    assert!(
        w["drainedAt"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{list}"
    );
    // Piped, `cmdx workers` prints a JSON line per worker, the drain in it.
    let out = cli.run(&["workers"]).await;
    let line: Value = serde_json::from_slice(&out.stdout).expect("one JSON line");
    assert_eq!(line["drainedBy"], "admin@test.local", "{line}");

    // Only a plain user's resume is refused; the admin's gives the worker the waiting job.
    CliEnv::new(&hub, &user)
        .run(&["workers", "resume", "box-1"])
        .await
        .assert_one_line_error("admin");
    let out = cli.run(&["workers", "resume", "box-1"]).await;
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert!(
        out.stderr.contains("worker box-1 takes jobs again"),
        "{}",
        out.stderr
    );
    let asg = agent.start_next().await.expect("the waiting job");
    assert_eq!(asg.job_id, job);
    let (_, list) = hub.get(&admin, "/api/workers/list").await;
    assert_eq!(list["workers"][0].get("drainedBy"), None, "{list}");
    let (status, body) = hub
        .send_json(
            &admin,
            reqwest::Method::POST,
            "/api/workers/box-1/resume",
            json!({}),
        )
        .await;
    assert_eq!(
        (status, &body["wasDrained"]),
        (200, &json!(false)),
        "{body}"
    );
    cli.run(&["workers", "resume", "nope"])
        .await
        .assert_one_line_error("worker nope not found");

    // Drained, then removed: the agent enrols again at its next connect, not drained.
    cli.run(&["workers", "drain", "box-1"]).await;
    cli.run(&["workers", "remove", "box-1"]).await;
    agent.drop_connection();
    let (_agent, _) = FakeAgent::connect(&hub, &wt, "box-1", 1, vec![])
        .await
        .unwrap();
    let (_, list) = hub.get(&admin, "/api/workers/list").await;
    assert_eq!(
        (
            &list["workers"][0]["status"],
            list["workers"][0].get("drainedBy")
        ),
        (&json!("online"), None),
        "{list}"
    );
}

/// A job retried after its worker was lost, as its user sees it: `cmdx submit` following it
/// live says where the new attempt starts (the earlier attempt's output stays on screen above),
/// and `cmdx logs` afterwards says the earlier attempt's output is not kept, not that the output
/// cap dropped it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_job_says_so_live_and_in_its_log() {
    let hub = HubProc::start(FAST).await;
    let admin = hub.admin().await;
    let wt = hub.worker_token(&admin).await;
    let user = hub.user(&admin, "retried@test.local").await;
    let cli = CliEnv::new(&hub, &user);
    let (mut lost, _) = FakeAgent::connect(&hub, &wt, "lost-worker", 1, vec![])
        .await
        .unwrap();
    let mut child = cli.spawn(&["submit", "--", "make"]);
    let (mut run, _) = Run::start(&mut lost).await;
    let id = run.job_id.clone();
    run.out(StreamKind::Stdout, b"first try\n").await;
    let mut stdout = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    read_until(&mut stdout, &mut seen, b"first try\n").await;
    child.stdout = Some(stdout);

    lost.drop_connection();
    let (mut other, _) = FakeAgent::connect(&hub, &wt, "other-worker", 1, vec![])
        .await
        .unwrap();
    let (mut run, asg) = Run::start(&mut other).await;
    assert_eq!((asg.job_id.as_str(), asg.attempt), (id.as_str(), 2));
    run.out(StreamKind::Stdout, b"again\n").await;
    run.finish(exited(0)).await;
    let out = finish(child).await;
    assert_eq!(out.code(), 0, "{}", out.stderr);
    seen.extend_from_slice(&out.stdout);
    assert_eq!(String::from_utf8_lossy(&seen), "first try\nagain\n");
    let requeued =
        format!("attempt 1 on worker lost-worker did not finish; job {id} is queued again");
    let restarted = "the job was retried (the earlier attempt did not finish); attempt 2's";
    let at = |what: &str| {
        out.stderr
            .find(what)
            .unwrap_or_else(|| panic!("{what:?} missing: {}", out.stderr))
    };
    assert!(at(&requeued) < at(restarted), "{}", out.stderr);

    let logs = cli.run(&["logs", &id]).await;
    assert_eq!(logs.code(), 0, "{}", logs.stderr);
    assert_eq!(String::from_utf8_lossy(&logs.stdout), "again\n");
    assert!(
        logs.stderr
            .contains("the job was retried; the 10 bytes of output of its earlier attempts"),
        "{}",
        logs.stderr
    );
    assert!(!logs.stderr.contains("output cap"), "{}", logs.stderr);
}

/// `cmdx job show` tells everything about a job (and `--json` is the hub's document);
/// `cmdx rerun` submits the same command, tags, env and timeout again and prints the new id,
/// or follows it with `--follow`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_show_and_rerun() {
    let hub = HubProc::start(FAST).await;
    let admin = hub.admin().await;
    let wt = hub.worker_token(&admin).await;
    let user = hub.user(&admin, "rerun@test.local").await;
    let (mut agent, _) =
        FakeAgent::connect_tagged(&hub, &wt, "rr-worker", 1, vec![], vec!["linux".into()])
            .await
            .unwrap();
    let cli = CliEnv::new(&hub, &user);
    let child = cli.spawn(&[
        "submit",
        "--tag",
        "linux",
        "--env",
        "SECRET=s3",
        "--timeout",
        "42",
        "--",
        "make test",
    ]);
    let (mut run, _) = Run::start(&mut agent).await;
    let id = run.job_id.clone();
    run.out(StreamKind::Stdout, b"ok\n").await;
    run.finish(exited(3)).await;
    assert_eq!(finish(child).await.code(), 3);

    let show = cli.run(&["job", "show", &id]).await;
    assert_eq!(show.code(), 0, "stderr: {}", show.stderr);
    let text = String::from_utf8_lossy(&show.stdout);
    let first = text.lines().next().unwrap_or_default();
    assert!(first.starts_with("job ") && first.ends_with(&id), "{text}");
    for want in [
        "failed (exit 3)".to_string(),
        "make test".to_string(),
        "rr-worker".to_string(),
        "SECRET".to_string(),
        "42s".to_string(),
        format!("{}/jobs/{id}", hub.url),
    ] {
        assert!(text.contains(&want), "{want:?} not in {text}");
    }
    assert!(!text.contains("s3"), "env values are never shown: {text}");
    let json_show = cli.run(&["job", "show", &id, "--json"]).await;
    let doc: Value = serde_json::from_slice(&json_show.stdout).unwrap();
    assert_eq!(doc["jobId"], id.as_str());
    assert_eq!(doc["exitCode"], 3);

    // rerun: a new id on stdout, the same job for the worker.
    let out = cli.run(&["rerun", &id]).await;
    assert_eq!(out.code(), 0, "stderr: {}", out.stderr);
    let new_id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_ne!(new_id, id);
    assert!(
        out.stderr.contains(&format!("job {new_id} submitted: ")),
        "{}",
        out.stderr
    );
    let (run, asg) = Run::start(&mut agent).await;
    assert_eq!(asg.job_id, new_id);
    assert_eq!(asg.command, "make test");
    assert_eq!(asg.timeout_secs, 42);
    assert_eq!(asg.env.get("SECRET").map(String::as_str), Some("s3"));
    run.finish(exited(0)).await;
    let (_, v) = hub
        .get(&user, &format!("/api/jobs/status?jobId={new_id}"))
        .await;
    assert_eq!(v["tags"], json!(["linux"]));

    // rerun --follow streams like submit and exits with the job's code.
    let child = cli.spawn(&["rerun", "--follow", &id]);
    let (mut run, _) = Run::start(&mut agent).await;
    run.out(StreamKind::Stdout, b"again\n").await;
    run.finish(exited(5)).await;
    let out = finish(child).await;
    assert_eq!(out.code(), 5, "stderr: {}", out.stderr);
    assert_eq!(out.stdout, b"again\n");

    // Someone else's job is not found.
    let other = hub.user(&admin, "rerun-other@test.local").await;
    CliEnv::new(&hub, &other)
        .run(&["rerun", &id])
        .await
        .assert_one_line_error(&format!("job {id} not found"));
}

/// `cmdx backup` with nothing but the login saved by `cmdx login`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_uses_the_saved_login() {
    let hub = HubProc::start(FAST).await;
    let cli = CliEnv {
        hub: hub.url.clone(),
        token: None,
        config: tempfile::tempdir().unwrap(),
    };
    let login = cli
        .run_stdin(
            &[
                "login",
                "--email",
                cmdx_e2e::ADMIN_EMAIL,
                "--password-stdin",
            ],
            &format!("{}\n", cmdx_e2e::ADMIN_PASSWORD),
        )
        .await;
    assert_eq!(login.code(), 0, "stderr: {}", login.stderr);
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("b.tar");
    let out = cli
        .run(&["backup", "--out", archive.to_str().unwrap()])
        .await;
    assert_eq!(out.code(), 0, "stderr: {}", out.stderr);
    assert!(std::fs::metadata(&archive).unwrap().len() > 0);
    // Signed out: one line saying so, nothing written.
    let logout = cli.run(&["logout"]).await;
    assert_eq!(logout.code(), 0, "stderr: {}", logout.stderr);
    let again = dir.path().join("c.tar");
    cli.run(&["backup", "--out", again.to_str().unwrap()])
        .await
        .assert_one_line_error("cmdx login");
    assert!(!again.exists());
}

/// `cmdx submit --priority`, the refusals it can meet (above the users' ceiling, over the queued
/// quota: one line each, exit 125; out of range: the flag itself), `cmdx job show` saying why a
/// job waits, and `cmdx user quota` showing and setting a user's own limits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priorities_and_quotas_from_the_command_line() {
    let mut flags = FAST.to_vec();
    flags.extend(["--max-queued-per-user", "2"]);
    let hub = HubProc::start(&flags).await;
    let admin = hub.admin().await;
    let user = hub.user(&admin, "prio-cli@test.local").await;
    let cli = CliEnv::new(&hub, &user);
    let as_admin = CliEnv::new(&hub, &admin);

    let low = cli
        .run(&["submit", "--detach", "--priority", "-5", "--", "true"])
        .await;
    assert_eq!(low.code(), 0, "stderr: {}", low.stderr);
    let low_id = String::from_utf8_lossy(&low.stdout).trim().to_string();
    let high = as_admin
        .run(&["submit", "--detach", "--priority", "90", "--", "true"])
        .await;
    assert_eq!(high.code(), 0, "stderr: {}", high.stderr);
    cli.run(&["submit", "--detach", "--priority", "60", "--", "true"])
        .await
        .assert_one_line_error("priority above 50 is for admins");
    let out_of_range = cli
        .run(&["submit", "--detach", "--priority", "101", "--", "true"])
        .await;
    assert_eq!(
        out_of_range.code(),
        2,
        "a usage error: {}",
        out_of_range.stderr
    );

    // No worker: the low job waits behind the admin's; `job show` says so.
    let show = cli.run(&["job", "show", &low_id]).await;
    let text = String::from_utf8_lossy(&show.stdout);
    assert!(text.contains("-5"), "{text}");
    assert!(text.contains("position 2"), "{text}");

    cli.run(&["submit", "--detach", "--", "true"]).await;
    cli.run(&["submit", "--detach", "--", "one too many"])
        .await
        .assert_one_line_error("max_queued_per_user is 2");

    let shown = as_admin
        .run(&["user", "quota", "prio-cli@test.local"])
        .await;
    assert_eq!(shown.code(), 0, "stderr: {}", shown.stderr);
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(text.contains("max queued: hub default"), "{text}");
    let set = as_admin
        .run(&["user", "quota", "prio-cli@test.local", "--max-queued", "3"])
        .await;
    assert_eq!(set.code(), 0, "stderr: {}", set.stderr);
    assert!(String::from_utf8_lossy(&set.stdout).contains("max queued: 3"));
    let third = cli.run(&["submit", "--detach", "--", "true"]).await;
    assert_eq!(
        third.code(),
        0,
        "the raised quota admits one more: {}",
        third.stderr
    );
    cli.run(&["user", "quota", "prio-cli@test.local", "--max-queued", "99"])
        .await
        .assert_one_line_error("permission denied");
    as_admin
        .run(&["user", "quota", "nobody@test.local"])
        .await
        .assert_one_line_error("no user nobody@test.local");
    let bad = as_admin
        .run(&[
            "user",
            "quota",
            "prio-cli@test.local",
            "--max-queued",
            "lots",
        ])
        .await;
    assert_eq!(bad.code(), 2, "{}", bad.stderr);
    assert!(
        bad.stderr.contains("is not a number of jobs or `default`"),
        "{}",
        bad.stderr
    );
}

/// `cmdx rerun` of a job whose ZIP the janitor has deleted says so (409), instead of calling the
/// job missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerun_of_a_job_whose_zip_is_gone_says_so() {
    let mut flags = FAST.to_vec();
    flags.extend(["--file-retention-secs", "1"]);
    let hub = HubProc::start(&flags).await;
    let admin = hub.admin().await;
    let wt = hub.worker_token(&admin).await;
    let user = hub.user(&admin, "rerun-gone@test.local").await;
    let file = hub
        .upload_zip(&user, cmdx_e2e::zip_bytes(&[("a.txt", b"a")]))
        .await;
    let id = hub
        .submit(&user, json!({"command": "cat a.txt", "fileId": file}))
        .await;
    let (mut agent, _) = FakeAgent::connect(&hub, &wt, "gone-w", 1, vec![])
        .await
        .unwrap();
    let asg = agent.next_assignment().await.unwrap();
    agent.finish(&asg.job_id, asg.attempt, 0, 0).await.unwrap();
    hub.wait_status(&user, &id, "completed").await;
    wait_for("the unused ZIP to be deleted", || async {
        hub.post_json(&admin, "/api/admin/janitor", json!({})).await;
        let (s, _) = hub.get(&user, &format!("/api/files/download/{file}")).await;
        (s == 404).then_some(())
    })
    .await;
    let cli = CliEnv::new(&hub, &user);
    cli.run(&["rerun", &id])
        .await
        .assert_one_line_error(&format!("the ZIP of job {id} (upload.zip) is gone"));
}

/// `cmdx user list|disable|enable|role|passwd|delete` as an admin would type them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_are_managed_from_the_command_line() {
    let hub = HubProc::start(FAST).await;
    let admin = hub.admin().await;
    let gina = hub.user(&admin, "gina@test.local").await;
    let cli = CliEnv::new(&hub, &admin);
    let list = cli.run(&["user", "list"]).await;
    assert_eq!(list.code(), 0, "{}", list.stderr);
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(text.contains("gina@test.local\tuser\tactive"), "{text}");

    let out = cli.run(&["user", "disable", "gina@test.local"]).await;
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert!(
        out.stderr.contains("gina@test.local disabled"),
        "{}",
        out.stderr
    );
    assert_eq!(hub.get(&gina, "/api/jobs/list").await.0, 401);
    let text = String::from_utf8_lossy(&cli.run(&["user", "list"]).await.stdout).to_string();
    assert!(text.contains("gina@test.local\tuser\tdisabled"), "{text}");
    assert_eq!(
        cli.run(&["user", "enable", "gina@test.local"]).await.code(),
        0
    );
    let out = cli
        .run_stdin(
            &["user", "passwd", "gina@test.local", "--password-stdin"],
            "another-pass-9\n",
        )
        .await;
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let gina = hub.login("gina@test.local", "another-pass-9").await;
    // Refusals are one line each.
    cli.run(&["user", "role", "admin@test.local", "user"])
        .await
        .assert_one_line_error("last active admin");
    assert_eq!(
        cli.run(&["user", "role", "gina@test.local", "admin"])
            .await
            .code(),
        0
    );
    assert_eq!(hub.get(&gina, "/api/jobs/list").await.0, 401);
    cli.run(&["user", "disable", "nobody@test.local"])
        .await
        .assert_one_line_error("no user nobody@test.local");
    let bare = cli.run(&["user", "delete", "gina@test.local"]).await;
    assert_eq!(
        bare.code(),
        2,
        "--keep-jobs or --remove-jobs is required: {}",
        bare.stderr
    );
    let out = cli
        .run(&["user", "delete", "gina@test.local", "--keep-jobs"])
        .await;
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert!(out.stderr.contains("their jobs kept"), "{}", out.stderr);
    CliEnv::new(&hub, &gina)
        .run(&["user", "list"])
        .await
        .assert_one_line_error("");
}

/// `cmdx submit --image`: the job runs in the image, its output on stdout and the exit code
/// its own; an image that does not exist is one line on stderr and exit 125.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_runs_the_command_in_the_image_it_names() {
    use cmdx_e2e::registry::{Registry, busybox_layout};
    let work = cmdx_e2e::traversable_tempdir();
    let layout = busybox_layout(work.path());
    let reg = Registry::start().await;
    reg.push_layout(&layout, "busybox", "cli/busybox:1");
    let hub = HubProc::start(FAST).await;
    let admin = hub.admin().await;
    let wt = hub.worker_token(&admin).await;
    let _agent =
        cmdx_e2e::AgentProc::start(&hub, &wt, "cli-img", &work.path().join("a"), 62_400).await;
    let cli = CliEnv::new(&hub, &admin);
    let image = format!("{}/cli/busybox:1", reg.addr);
    let out = cli
        .run(&[
            "submit",
            "-q",
            "--no-tty",
            "--image",
            &image,
            "--",
            "grep ^ID= /etc/os-release; exit 3",
        ])
        .await;
    assert_eq!(out.code(), 3, "stderr: {}", out.stderr);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ID=cmdxtest\n");
    let missing = format!("{}/cli/missing:1", reg.addr);
    let out = cli
        .run(&["submit", "-q", "--image", &missing, "--", "true"])
        .await;
    out.assert_one_line_error("image not found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_since_prints_what_the_hub_stored_after_a_time() {
    let (hub, user, mut agent) = setup("since@test.local").await;
    let cli = CliEnv::new(&hub, &user);
    let id = hub.submit(&user, json!({"command": "two phases"})).await;
    let (mut run, _) = Run::start(&mut agent).await;
    run.out(StreamKind::Stdout, b"before 1\nbefore 2\n").await;
    wait_for("the first phase to be stored", || async {
        (hub.job(&user, &id).await["outputBytes"].as_u64() == Some(18)).then_some(())
    })
    .await;
    // A millisecond after everything of the first phase was stored, before the second.
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    let cut = now_ms() + 1;
    wait_for("the clock to pass the cut", || async {
        (now_ms() > cut).then_some(())
    })
    .await;
    run.out(StreamKind::Stdout, b"after 1\n").await;
    run.out(StreamKind::Stderr, b"after 2\n").await;
    run.finish(exited(0)).await;
    let at = cmdx_hub::time::rfc3339(cut);
    let since = cli.run(&["logs", "--since", &at, &id]).await;
    assert_eq!(since.code(), 0, "stderr: {}", since.stderr);
    assert_eq!(String::from_utf8_lossy(&since.stdout), "after 1\n");
    assert_eq!(since.stderr, "after 2\n");
    // A duration: the last hour is all of it; with -f, the job's code too.
    let hour = cli.run(&["logs", "-f", "--since", "1h", &id]).await;
    assert_eq!(hour.code(), 0, "stderr: {}", hour.stderr);
    assert_eq!(
        String::from_utf8_lossy(&hour.stdout),
        "before 1\nbefore 2\nafter 1\n"
    );
    // After the end: nothing. --tail and --since together: whichever starts later.
    let later = cli
        .run(&["logs", "--since", "2999-01-01T00:00:00Z", &id])
        .await;
    assert!(later.stdout.is_empty() && later.stderr.is_empty() && later.code() == 0);
    let both = cli
        .run(&["logs", "--since", "1h", "--tail", "1", &id])
        .await;
    assert_eq!(both.stderr, "after 2\n");
    assert!(both.stdout.is_empty());
    // Bad input is a usage error that says what it wants.
    let bad = cli.run(&["logs", "--since", "yesterday-ish", &id]).await;
    assert_eq!(bad.code(), 2);
    assert!(bad.stderr.contains("RFC 3339"), "{}", bad.stderr);
    let (s, body) = hub
        .get(&user, &format!("/api/jobs/{id}/output?since=nope"))
        .await;
    assert_eq!(s, 400, "{body}");
}
