//! Issue 3's attack suite through the real agent path: every attack is a job submitted over
//! REST to a real hub and run by a real `cmdx agent` process in its sandbox, with the outcome
//! asserted (status, failure kind, error text, and the host state afterwards).
//!
//! Needs root (cgroups, network namespaces, uid drop, tmpfs, landlock): as anyone else every
//! test fails with a message saying so. Independent attacks run as concurrent jobs on one
//! agent with 4 slots.

use std::collections::HashMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use cmdx_e2e::{
    AgentProc, HubProc, cmdx_bin, mounted_under, traversable_tempdir, wait_for, zip_bytes,
};
use futures_util::future::join_all;
use serde_json::{Value, json};

use crate::FAST;

/// A worker id unique to this test run (job cgroups are grouped by worker id).
fn wid(name: &str) -> String {
    format!("{name}-{}", std::process::id())
}

/// Fails loudly unless the test runs as root.
fn require_root(test: &str) {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().nth(1))
        .expect("Uid line");
    assert_eq!(
        euid, "0",
        "{test}: the attack suite needs root (cgroups, network namespaces, uid drop, tmpfs \
         workspaces, landlock); run `cargo test -p cmdx-e2e -- attacks` as root"
    );
}

/// A hub, its admin, a worker token and one real agent.
struct Rig {
    hub: HubProc,
    admin: String,
    token: String,
    agent: AgentProc,
    /// World-traversable scratch dir (agent work dir and host files live here).
    dir: cmdx_e2e::TestDir,
    uid_base: u32,
    concurrency: u32,
    /// The agent's configured worker id, if any.
    fixed_id: Option<String>,
}

impl Rig {
    async fn start(
        hub_flags: &[&str],
        worker_id: Option<&str>,
        uid_base: u32,
        concurrency: u32,
    ) -> Rig {
        let mut flags: Vec<&str> = FAST.to_vec();
        flags.extend_from_slice(hub_flags);
        let hub = HubProc::start(&flags).await;
        let admin = hub.admin().await;
        let token = hub.worker_token(&admin).await;
        let dir = traversable_tempdir();
        let agent = AgentProc::start_with(
            &hub,
            &token,
            worker_id,
            &dir.path().join("agent"),
            uid_base,
            concurrency,
        )
        .await;
        Rig {
            hub,
            admin,
            token,
            agent,
            dir,
            uid_base,
            concurrency,
            fixed_id: worker_id.map(str::to_owned),
        }
    }

    /// Drains the agent (SIGTERM) and checks it exits cleanly, leaving no cgroup behind.
    async fn finish(mut self) {
        let worker_id = std::fs::read_to_string(self.work_dir().join("worker-id"))
            .ok()
            .map(|s| s.trim().to_owned());
        assert_eq!(self.agent.terminate().await, Some(0), "agent exit code");
        if let Some(id) = worker_id.or_else(|| self.fixed_id.clone()) {
            let prefix = format!("agent-{id}-");
            for root in ["/sys/fs/cgroup/pids/cmdx", "/sys/fs/cgroup/cmdx"] {
                for g in std::fs::read_dir(root).into_iter().flatten().flatten() {
                    assert!(
                        !g.file_name().to_string_lossy().starts_with(&prefix),
                        "the agent left its cgroup group {}",
                        g.path().display()
                    );
                }
            }
        }
    }

    fn work_dir(&self) -> PathBuf {
        self.agent.work_dir.clone()
    }

    async fn submit(&self, body: Value) -> String {
        self.hub.submit(&self.admin, body).await
    }

    /// Submits `command` (with `timeout` seconds) and waits for its end.
    async fn run(&self, command: &str, timeout: u64) -> Value {
        let id = self
            .submit(json!({"command": command, "timeout": timeout}))
            .await;
        self.hub.wait_done(&self.admin, &id).await
    }

    /// Runs several `(name, command, timeout)` jobs concurrently; returns their documents
    /// by name.
    async fn run_all(&self, jobs: &[(&str, String, u64)]) -> HashMap<String, Value> {
        let docs = join_all(jobs.iter().map(|(_, c, t)| self.run(c, *t))).await;
        jobs.iter()
            .map(|(n, _, _)| (*n).to_owned())
            .zip(docs)
            .collect()
    }

    /// The job's workspace root on the agent (`work_dir/jobs/<id>-<attempt>`).
    fn workspace(&self, id: &str) -> PathBuf {
        self.work_dir().join("jobs").join(format!("{id}-1"))
    }

    /// Live processes running as one of this agent's job uids.
    fn job_uid_processes(&self) -> Vec<(i32, u32, String)> {
        let uids = self.uid_base..self.uid_base + self.concurrency;
        processes()
            .into_iter()
            .filter(|(_, uid, state)| uids.contains(uid) && state != "Z")
            .map(|(pid, uid, _)| (pid, uid, comm(pid)))
            .collect()
    }
}

/// `(pid, real uid, state)` of every process.
fn processes() -> Vec<(i32, u32, String)> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        let field = |k: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .and_then(|v| v.split_whitespace().next())
                .map(str::to_owned)
        };
        if let (Some(uid), Some(state)) = (field("Uid:"), field("State:"))
            && let Ok(uid) = uid.parse()
        {
            v.push((pid, uid, state));
        }
    }
    v
}

fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// The host pid of the one live process named `comm` among the rig's job uids. Jobs cannot
/// tell it: they live in PID namespaces of their own, where `$$` is 2.
async fn host_pid(rig: &Rig, comm: &str) -> i32 {
    wait_for(&format!("a job process named {comm}"), || async {
        rig.job_uid_processes()
            .into_iter()
            .find(|(_, _, c)| c == comm)
            .map(|(p, ..)| p)
    })
    .await
}

/// True while `pid` exists and is not a zombie.
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().next())
            .is_some_and(|st| st != "Z")
    })
}

/// Job cgroups (`job-*` directories) of agent `worker_id`'s cgroup group, on any hierarchy.
fn job_cgroups(worker_id: &str) -> Vec<PathBuf> {
    let prefix = format!("agent-{worker_id}-");
    let mut found = Vec::new();
    // The pids hierarchy on v1 hosts, the unified one on v2 hosts.
    for root in ["/sys/fs/cgroup/pids/cmdx", "/sys/fs/cgroup/cmdx"] {
        let Ok(groups) = std::fs::read_dir(root) else {
            continue;
        };
        for g in groups.flatten() {
            if !g.file_name().to_string_lossy().starts_with(&prefix) {
                continue;
            }
            for j in std::fs::read_dir(g.path()).into_iter().flatten().flatten() {
                if j.file_type().is_ok_and(|t| t.is_dir())
                    && j.file_name().to_string_lossy().starts_with("job-")
                {
                    found.push(j.path());
                }
            }
        }
    }
    found
}

/// Available KiB on the filesystem holding `path` (`df`).
fn avail_kib(path: &Path) -> u64 {
    let out = std::process::Command::new("df")
        .args(["-k", "--output=avail"])
        .arg(path)
        .output()
        .expect("df");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .expect("df output")
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str().unwrap_or("")
}

/// Everything the job printed: in its terminal (the default) stderr comes in the same
/// stream as stdout.
fn printed(v: &Value) -> String {
    format!("{}{}", s(v, "stdout"), s(v, "stderr"))
}

/// Asserts a job ended with `status` (and `failure` when given), printing the document
/// otherwise.
#[track_caller]
fn assert_end(name: &str, v: &Value, status: &str, failure: Option<&str>) {
    assert_eq!(
        s(v, "status"),
        status,
        "{name}: expected {status}, got {v:#}"
    );
    if let Some(f) = failure {
        assert_eq!(
            s(v, "failure"),
            f,
            "{name}: expected failure {f}, got {v:#}"
        );
    }
}

/// Asserts every marker of `denied` is in stdout and no `LEAK` line is.
#[track_caller]
fn assert_denied(name: &str, v: &Value, denied: &[&str]) {
    let out = s(v, "stdout");
    assert!(!out.contains("LEAK"), "{name}: an attack succeeded: {v:#}");
    for d in denied {
        assert!(
            out.lines().any(|l| l == format!("DENIED {d}")),
            "{name}: missing `DENIED {d}`: {v:#}"
        );
    }
}

/// `sh` snippet: run `cmd` (output discarded) and print `LEAK <tag>` if it succeeded,
/// `DENIED <tag>` otherwise.
fn attempt(tag: &str, cmd: &str) -> String {
    format!("if {cmd} >/dev/null 2>&1; then echo 'LEAK {tag}'; else echo 'DENIED {tag}'; fi\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_other_jobs_and_the_agent_are_out_of_reach() {
    require_root("secrets_other_jobs_and_the_agent_are_out_of_reach");
    let mut rig = Rig::start(&[], None, 50_000, 4).await;
    let work = rig.work_dir();
    // A victim job that keeps a secret in its dir and runs while the attacks run.
    let victim = rig
        .submit(json!({
            "command": "echo victim-secret-7f3a > secret.txt; echo pid=$$; exec sleep 60",
            "timeout": 90,
        }))
        .await;
    let _: i32 = wait_for("the victim to start", || async {
        let v = rig.hub.job(&rig.admin, &victim).await;
        s(&v, "stdout")
            .strip_prefix("pid=")
            .and_then(|p| p.trim().parse().ok())
    })
    .await;
    // The attackers are handed the victim's host pid, which no job could learn by itself.
    let vpid = host_pid(&rig, "sleep").await;
    let vdir = rig.workspace(&victim).join("job");
    assert_eq!(
        std::fs::read_to_string(vdir.join("secret.txt")).expect("victim's secret (as root)"),
        "victim-secret-7f3a\n"
    );
    let apid = rig.agent.pid().expect("agent pid");
    let worker_id = std::fs::read_to_string(work.join("worker-id")).expect("worker-id file");
    let worker_id = worker_id.trim().to_owned();
    let (work_s, vdir_s, data_s) = (
        work.display().to_string(),
        vdir.display().to_string(),
        rig.hub.data.display().to_string(),
    );

    let ptrace = format!(
        "python3 - {apid} {vpid} <<'EOF'\n\
         import ctypes, sys\n\
         libc = ctypes.CDLL(None, use_errno=True)\n\
         for pid in sys.argv[1:]:\n\
         \x20   r = libc.ptrace(16, int(pid), 0, 0)\n\
         \x20   print('LEAK ptrace' if r == 0 else 'DENIED ptrace ' + pid, ctypes.get_errno())\n\
         EOF\n"
    );
    let jobs = [
        ("shadow", "cat /etc/shadow".to_owned(), 30),
        (
            "victim dir",
            attempt("victim-file", &format!("cat {vdir_s}/secret.txt"))
                + &attempt("victim-ls", &format!("ls {vdir_s}"))
                + &attempt("victim-write", &format!("touch {vdir_s}/pwned")),
            30,
        ),
        (
            "agent state",
            attempt("work-ls", &format!("ls {work_s}"))
                + &attempt("worker-id", &format!("cat {work_s}/worker-id"))
                + &attempt("jobs-ls", &format!("ls {work_s}/jobs"))
                + &attempt("downloads-ls", &format!("ls {work_s}/downloads"))
                + &attempt("lock", &format!("cat {work_s}/agent.lock"))
                + &attempt("hub-data", &format!("ls {data_s}")),
            30,
        ),
        (
            "agent environ",
            attempt("environ", &format!("cat /proc/{apid}/environ"))
                + &attempt("mem", &format!("head -c 1 /proc/{apid}/mem"))
                + &attempt("victim-environ", &format!("cat /proc/{vpid}/environ")),
            30,
        ),
        (
            "agent cmdline",
            format!("tr '\\0' ' ' < /proc/{apid}/cmdline; echo end"),
            30,
        ),
        ("env", "env".to_owned(), 30),
        (
            "signals",
            attempt("kill-agent", &format!("kill -KILL {apid}"))
                + &attempt("stop-agent", &format!("kill -STOP {apid}"))
                + &attempt("kill-victim", &format!("kill -KILL {vpid}")),
            30,
        ),
        ("ptrace", ptrace, 30),
    ];
    let r = rig.run_all(&jobs).await;

    let v = &r["shadow"];
    assert_end("shadow", v, "failed", Some("exit_code"));
    assert!(printed(v).contains("Permission denied"), "shadow: {v:#}");
    // Only cat's complaint was printed (in the job's terminal, on the one stream).
    assert_eq!(printed(v).lines().count(), 1, "shadow leaked: {v:#}");

    let v = &r["victim dir"];
    assert_end("victim dir", v, "completed", None);
    assert_denied(
        "victim dir",
        v,
        &["victim-file", "victim-ls", "victim-write"],
    );
    assert!(!vdir.join("pwned").exists());

    let v = &r["agent state"];
    assert_end("agent state", v, "completed", None);
    assert_denied(
        "agent state",
        v,
        &[
            "work-ls",
            "worker-id",
            "jobs-ls",
            "downloads-ls",
            "lock",
            "hub-data",
        ],
    );

    let v = &r["agent environ"];
    assert_end("agent environ", v, "completed", None);
    assert_denied("agent environ", v, &["environ", "mem", "victim-environ"]);

    // The agent is outside the job's PID namespace: its command line cannot even be read.
    let v = &r["agent cmdline"];
    assert_end("agent cmdline", v, "completed", None);
    assert!(!s(v, "stdout").contains(" agent "), "cmdline read: {v:#}");
    assert!(printed(v).contains("No such file"), "{v:#}");

    let v = &r["env"];
    assert_end("env", v, "completed", None);
    let allowed = [
        "PATH", "HOME", "TMPDIR", "LANG", "PWD", "SHLVL", "_", "OLDPWD", "CI", "TERM", "COLUMNS",
        "LINES",
    ];
    for line in s(v, "stdout").lines() {
        let name = line.split('=').next().unwrap_or("");
        assert!(
            allowed.contains(&name),
            "env: unexpected variable {line:?} in the job's environment"
        );
    }

    let v = &r["signals"];
    assert_end("signals", v, "completed", None);
    assert_denied("signals", v, &["kill-agent", "stop-agent", "kill-victim"]);

    let v = &r["ptrace"];
    assert_end("ptrace", v, "completed", None);
    assert_denied("ptrace", v, &[]);
    for pid in [apid as i32, vpid] {
        assert!(
            s(v, "stdout")
                .lines()
                .any(|l| l.starts_with(&format!("DENIED ptrace {pid} "))),
            "ptrace of {pid} not denied: {v:#}"
        );
    }

    // The token and the worker id appear in nothing any job printed.
    for (name, v) in &r {
        for secret in [rig.token.as_str(), worker_id.as_str()] {
            assert!(
                !s(v, "stdout").contains(secret) && !s(v, "stderr").contains(secret),
                "{name}: a job read the agent's token or worker id: {v:#}"
            );
        }
    }
    // The agent and the victim survived every attack.
    assert!(rig.agent.is_running(), "the agent died");
    assert!(alive(vpid), "the victim job was killed");
    assert_eq!(rig.hub.job(&rig.admin, &victim).await["status"], "running");
    rig.hub
        .post_json(&rig.admin, "/api/jobs/cancel", json!({"jobId": victim}))
        .await;
    rig.hub.wait_status(&rig.admin, &victim, "cancelled").await;
    rig.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_outside_the_job_dir_are_denied_and_planted_symlinks_never_followed() {
    require_root("writes_outside_the_job_dir_are_denied_and_planted_symlinks_never_followed");
    let rig = Rig::start(&[], Some(&wid("attack-writes")), 50_100, 4).await;
    let host_dir = rig.dir.path().join("host");
    std::fs::create_dir(&host_dir).unwrap();
    std::fs::set_permissions(&host_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let target = host_dir.join("precious.txt");
    std::fs::write(&target, "precious\n").unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o644)).unwrap();
    let before = std::fs::metadata(&target).unwrap();
    let bin = cmdx_bin();
    let bin_before = std::fs::metadata(&bin).unwrap();
    let tag = std::process::id();
    let host_tmp = PathBuf::from(format!("/tmp/cmdx-attack-{tag}.txt"));
    std::fs::write(&host_tmp, "host\n").unwrap();
    std::fs::set_permissions(&host_tmp, std::fs::Permissions::from_mode(0o644)).unwrap();
    let usr_file = PathBuf::from(format!("/usr/cmdx-attack-{tag}"));
    let usr_dir = PathBuf::from(format!("/usr/local/cmdx-attack-{tag}"));
    let (t, b) = (target.display(), bin.display());

    let jobs = [
        (
            "host tmp",
            // The job's /tmp is its own: the host's file is not there to read, and a write
            // to the same path lands in the job's tmp.
            attempt("host-tmp", &format!("grep -q host {}", host_tmp.display()))
                + &format!("echo pwned > {}\n", host_tmp.display()),
            30,
        ),
        (
            "usr",
            attempt("usr-file", &format!("touch {}", usr_file.display()))
                + &attempt("usr-dir", &format!("mkdir {}", usr_dir.display())),
            30,
        ),
        (
            "agent binary",
            attempt("bin-append", &format!("sh -c 'echo x >> {b}'"))
                + &attempt("bin-replace", &format!("cp /bin/true {b}"))
                + &attempt("bin-chmod", &format!("chmod 777 {b}")),
            30,
        ),
        (
            "host file",
            attempt("file-append", &format!("sh -c 'echo x >> {t}'"))
                + &attempt("file-chmod", &format!("chmod 666 {t}"))
                + &attempt("file-chown", &format!("chown {} {t}", rig.uid_base))
                + &attempt("file-unlink", &format!("rm {t}"))
                + &attempt("file-hardlink", &format!("ln {t} hard")),
            30,
        ),
        (
            "symlinks",
            format!(
                "ln -s {t} planted && ln -s / rootlink && ln -s {h} dirlink && \
                 ln -s {t} \"$TMPDIR/planted\" && mkdir -p sub && ln -s {h} sub/deep && \
                 echo planted\n{}",
                attempt("write-through", "sh -c 'echo pwned > planted'"),
                h = host_dir.display()
            ),
            30,
        ),
    ];
    let r = rig.run_all(&jobs).await;

    assert_end("host tmp", &r["host tmp"], "completed", None);
    assert_denied("host tmp", &r["host tmp"], &["host-tmp"]);
    assert_eq!(
        std::fs::read_to_string(&host_tmp).expect("host tmp file"),
        "host\n",
        "a job wrote the host's /tmp"
    );
    let _ = std::fs::remove_file(&host_tmp);
    assert_end("usr", &r["usr"], "completed", None);
    assert_denied("usr", &r["usr"], &["usr-file", "usr-dir"]);
    assert!(!usr_file.exists() && !usr_dir.exists(), "a job wrote /usr");
    assert_end("agent binary", &r["agent binary"], "completed", None);
    assert_denied(
        "agent binary",
        &r["agent binary"],
        &["bin-append", "bin-replace", "bin-chmod"],
    );
    let bin_after = std::fs::metadata(&bin).unwrap();
    assert_eq!(
        (bin_after.len(), bin_after.mtime(), bin_after.mode()),
        (bin_before.len(), bin_before.mtime(), bin_before.mode()),
        "the agent binary changed"
    );
    assert_end("host file", &r["host file"], "completed", None);
    assert_denied(
        "host file",
        &r["host file"],
        &[
            "file-append",
            "file-chmod",
            "file-chown",
            "file-unlink",
            "file-hardlink",
        ],
    );

    let v = &r["symlinks"];
    assert_end("symlinks", v, "completed", None);
    assert!(s(v, "stdout").starts_with("planted\n"), "symlinks: {v:#}");
    assert_denied("symlinks", v, &["write-through"]);
    // The agent collected the output, reported, and removed the workspace (with the planted
    // links in it) without following any of them.
    let ws = rig.workspace(s(v, "jobId"));
    wait_for("the symlink job's workspace to be removed", || async {
        (!ws.exists()).then_some(())
    })
    .await;
    assert!(!mounted_under(&ws), "workspace still mounted");
    let after = std::fs::metadata(&target).expect("host file still exists");
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious\n");
    assert_eq!(
        (after.mode(), after.uid(), after.gid(), after.ino()),
        (before.mode(), before.uid(), before.gid(), before.ino()),
        "host file metadata changed"
    );
    assert_eq!(
        std::fs::read_dir(&host_dir).unwrap().count(),
        1,
        "host dir changed"
    );
    assert!(Path::new("/usr/bin").exists() && Path::new("/etc/passwd").exists());
    rig.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fork_and_memory_bombs_cpu_spin_and_sleep_are_contained() {
    require_root("fork_and_memory_bombs_cpu_spin_and_sleep_are_contained");
    let mut rig = Rig::start(&[], Some(&wid("attack-bombs")), 50_200, 4).await;
    let fork = rig
        .submit(json!({"command": "f() { f | f; }; f", "timeout": 6}))
        .await;
    let mem = rig
        .submit(json!({
            "command": "python3 -c \"a = []\nwhile True: a.append(bytearray(b'x' * (32 << 20)))\"",
            "timeout": 60,
        }))
        .await;
    let sleep = rig
        .submit(json!({"command": "sleep 1000", "timeout": 2}))
        .await;
    // While the bombs run, another job on the same agent completes normally.
    wait_for("the fork bomb to run", || async {
        (rig.hub.job(&rig.admin, &fork).await["status"] == "running").then_some(())
    })
    .await;
    let bystander = rig.run("echo alive", 30).await;
    assert_end("bystander", &bystander, "completed", None);
    assert_eq!(s(&bystander, "stdout"), "alive\n");

    let v = rig.hub.wait_done(&rig.admin, &fork).await;
    assert_eq!(s(&v, "status"), "failed", "fork bomb: {v:#}");
    assert!(
        printed(&v).contains("fork"),
        "fork bomb: the pids limit should have refused forks: {v:#}"
    );

    let v = rig.hub.wait_done(&rig.admin, &mem).await;
    assert_end("memory bomb", &v, "failed", Some("oom"));
    assert!(
        s(&v, "error").contains("out of memory"),
        "memory bomb: {v:#}"
    );

    // CPU spin, once the bombs are over: three spinners get one core between them.
    let v = rig
        .run(
            "for i in 1 2 3; do (while :; do :; done) & done; sleep 3",
            30,
        )
        .await;
    assert_end("cpu spin", &v, "completed", None);
    let cpu_ms = v["cpuMs"].as_u64().expect("cpuMs");
    let wall_ms = v["result"]["duration"].as_u64().expect("duration");
    eprintln!("cpu spin: 3 spinners used {cpu_ms} ms CPU in {wall_ms} ms wall (limit 1 core)");
    assert!(
        cpu_ms < wall_ms * 13 / 10 + 200,
        "cpu spin: {cpu_ms} ms CPU in {wall_ms} ms is more than one core"
    );
    assert!(cpu_ms > 300, "cpu spin: the spinners barely ran: {v:#}");

    let v = rig.hub.wait_done(&rig.admin, &sleep).await;
    assert_end("sleep", &v, "failed", Some("timeout"));
    let ms = v["result"]["duration"].as_u64().expect("duration");
    assert!(
        (1900..4000).contains(&ms),
        "sleep 1000 with timeout 2 ended after {ms} ms"
    );

    // The agent is unaffected: it still runs jobs, and nothing of the bombs is left.
    assert!(rig.agent.is_running(), "the agent died");
    let after = rig.run("echo still-here", 30).await;
    assert_end("after", &after, "completed", None);
    wait_for("the bombs' processes to be gone", || async {
        let left: Vec<_> = processes()
            .into_iter()
            .filter(|(_, u, st)| (50_200..50_204).contains(u) && st != "Z")
            .collect();
        left.is_empty().then_some(())
    })
    .await;
    assert!(job_cgroups(&wid("attack-bombs")).is_empty());
    rig.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_fills_and_output_floods_are_capped() {
    require_root("disk_fills_and_output_floods_are_capped");
    // The hub keeps 1 MiB of output per job (the tail).
    let rig = Rig::start(
        &["--output-cap-bytes", "1048576"],
        Some(&wid("attack-disk")),
        50_300,
        4,
    )
    .await;
    let host_avail = avail_kib(rig.dir.path());
    let tmp_avail = avail_kib(Path::new("/tmp"));
    let jobs = [
        (
            "huge file",
            "stat -f -c fs=%T .; head -c 4G /dev/zero > big && echo wrote-everything".to_owned(),
            60,
        ),
        (
            "small files",
            "python3 -c \"\nimport os\nfor i in range(1000000):\n    open('f%d' % i, 'w').close()\nprint('created-everything')\"".to_owned(),
            60,
        ),
        ("flood", "yes".to_owned(), 4),
    ];
    let started = Instant::now();
    let r = rig.run_all(&jobs).await;
    eprintln!("disk and output attacks took {:?}", started.elapsed());

    let v = &r["huge file"];
    assert_eq!(s(v, "status"), "failed", "huge file: {v:#}");
    assert!(
        !s(v, "stdout").contains("wrote-everything"),
        "huge file: {v:#}"
    );
    // The job dir is the size-capped tmpfs, not the host disk.
    assert!(s(v, "stdout").starts_with("fs=tmpfs\n"), "huge file: {v:#}");
    eprintln!(
        "huge file stopped: failure {} ({})",
        s(v, "failure"),
        s(v, "error")
    );
    let v = &r["small files"];
    assert_eq!(s(v, "status"), "failed", "small files: {v:#}");
    assert!(
        !s(v, "stdout").contains("created-everything"),
        "small files: {v:#}"
    );
    assert!(
        printed(v).contains("No space left on device") || s(v, "failure") == "oom",
        "small files: {v:#}"
    );
    let grew = host_avail.saturating_sub(avail_kib(rig.dir.path()));
    let tmp_grew = tmp_avail.saturating_sub(avail_kib(Path::new("/tmp")));
    // A leak would put at least the 1 GiB RLIMIT_FSIZE on disk; the slack absorbs other
    // processes writing to the same disk meanwhile (builds).
    assert!(
        grew < 512 * 1024 && tmp_grew < 512 * 1024,
        "the host disk lost {grew} KiB (/tmp {tmp_grew} KiB)"
    );

    let v = &r["flood"];
    assert_end("flood", v, "failed", Some("timeout"));
    assert_eq!(v["outputTruncated"], true, "flood: output not capped");
    let total = v["outputBytes"].as_u64().unwrap_or(0);
    let id = s(v, "jobId");
    let (status, _) = rig
        .hub
        .get(&rig.admin, &format!("/api/jobs/{id}/output"))
        .await;
    assert_eq!(status, 200);
    let kept = rig
        .hub
        .http
        .get(format!("{}/api/jobs/{id}/output", rig.hub.url))
        .bearer_auth(&rig.admin)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    eprintln!(
        "flood: {total} bytes produced, {} kept, ended after {} ms",
        kept.len(),
        v["result"]["duration"]
    );
    assert!(
        kept.len() <= 1_100_000,
        "flood: {} bytes kept over a 1 MiB cap",
        kept.len()
    );
    assert!(total > kept.len() as u64, "flood: nothing was dropped");
    // The last bytes `yes` wrote, whole lines or (in a terminal, which may take part of a
    // write before the kill) a cut last line.
    let tail = &kept[kept.len().saturating_sub(64)..];
    assert!(
        tail.len() == 64
            && tail.iter().all(|b| matches!(b, b'y' | b'\n'))
            && tail.windows(3).any(|w| w == b"y\ny"),
        "flood: the tail was not kept: {:?}",
        String::from_utf8_lossy(tail)
    );
    let ms = v["result"]["duration"].as_u64().expect("duration");
    assert!(ms < 8000, "flood: the job ran {ms} ms with a 4 s timeout");
    rig.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemons_do_not_outlive_their_job() {
    require_root("daemons_do_not_outlive_their_job");
    let rig = Rig::start(&[], Some(&wid("attack-daemon")), 50_400, 2).await;
    let py = "python3 - <<'EOF'\n\
        import os, signal\n\
        r, w = os.pipe()\n\
        if os.fork() == 0:\n\
        \x20   os.setsid()\n\
        \x20   if os.fork() == 0:\n\
        \x20       signal.signal(signal.SIGHUP, signal.SIG_IGN)\n\
        \x20       signal.signal(signal.SIGTERM, signal.SIG_IGN)\n\
        \x20       os.write(w, str(os.getpid()).encode())\n\
        \x20       os.close(w)\n\
        \x20       for fd in (0, 1, 2):\n\
        \x20           os.close(fd)\n\
        \x20       os.execv('/bin/sleep', ['sleep', '1000'])\n\
        \x20   os._exit(0)\n\
        os.close(w)\n\
        print('daemon', os.read(r, 32).decode(), flush=True)\n\
        EOF\n\
        setsid sh -c 'trap \"\" HUP TERM; exec nohup sleep 999' </dev/null >/dev/null 2>&1 &\n\
        echo shell-daemon $!\n";
    let v = rig.run(py, 30).await;
    assert_end("daemon", &v, "completed", None);
    let pid: i32 = s(&v, "stdout")
        .lines()
        .find_map(|l| l.strip_prefix("daemon "))
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("daemon pid: {v:#}"));
    // The daemon's pid is one of the job's PID namespace, not the host's.
    assert!(
        pid < 100,
        "daemon pid {pid} is not a pid of the job's namespace"
    );
    // The result is reported only after the whole cgroup was killed and reaped.
    let left = rig.job_uid_processes();
    assert!(
        left.is_empty(),
        "processes of the job's uid survived: {left:?}"
    );
    assert!(
        job_cgroups(&wid("attack-daemon")).is_empty(),
        "job cgroups left: {:?}",
        job_cgroups(&wid("attack-daemon"))
    );
    rig.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_tty_setuid_and_inherited_fds_give_nothing() {
    require_root("network_tty_setuid_and_inherited_fds_give_nothing");
    let rig = Rig::start(&[], Some(&wid("attack-net")), 50_500, 4).await;
    // An abstract unix socket of the host, listening.
    let name = format!("cmdx-attack-{}", std::process::id());
    let addr =
        <std::os::unix::net::SocketAddr as std::os::linux::net::SocketAddrExt>::from_abstract_name(
            name.as_bytes(),
        )
        .unwrap();
    let listener = std::os::unix::net::UnixListener::bind_addr(&addr).expect("abstract socket");
    listener.set_nonblocking(true).unwrap();
    // A setuid-root copy of `id` in a system path the jobs may execute.
    let suid = PathBuf::from(format!(
        "/usr/local/bin/cmdx-attack-suid-id-{}",
        std::process::id()
    ));
    std::fs::copy("/usr/bin/id", &suid).expect("copy id");
    std::fs::set_permissions(&suid, std::fs::Permissions::from_mode(0o4755)).unwrap();
    struct Remove(PathBuf);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _suid_guard = Remove(suid.clone());

    let net = format!(
        "python3 - <<'EOF'\n\
         import socket\n\
         def t(name, f):\n\
         \x20   try:\n\
         \x20       f()\n\
         \x20       print('LEAK', name)\n\
         \x20   except OSError as e:\n\
         \x20       print('DENIED', name)\n\
         \x20       print('  ', name, e)\n\
         def udp():\n\
         \x20   s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         \x20   s.settimeout(3)\n\
         \x20   s.sendto(b'x', ('8.8.8.8', 53))\n\
         \x20   s.recvfrom(10)\n\
         def unix():\n\
         \x20   s = socket.socket(socket.AF_UNIX)\n\
         \x20   s.settimeout(3)\n\
         \x20   s.connect('\\0{name}')\n\
         t('tcp', lambda: socket.create_connection(('1.1.1.1', 80), timeout=3))\n\
         t('tcp6', lambda: socket.create_connection(('2606:4700:4700::1111', 80), timeout=3))\n\
         t('udp', udp)\n\
         t('dns', lambda: socket.getaddrinfo('example.com', 80))\n\
         t('hub', lambda: socket.create_connection(('127.0.0.1', {port}), timeout=3))\n\
         t('abstract-unix', unix)\n\
         EOF\n{}",
        attempt("getent", "getent hosts example.com"),
        port = rig.hub.port,
    );
    let tty = "python3 - <<'EOF'\n\
        import fcntl, os, termios\n\
        fds = [0, 1, 2]\n\
        try:\n\
        \x20   tty = os.open('/dev/tty', os.O_RDWR)\n\
        \x20   fds.append(tty)\n\
        \x20   os.write(tty, b'own-terminal\\n')\n\
        \x20   print('DENIED tty')\n\
        except OSError:\n\
        \x20   print('DENIED tty')\n\
        for i, fd in enumerate(fds):\n\
        \x20   try:\n\
        \x20       fcntl.ioctl(fd, termios.TIOCSTI, b'x')\n\
        \x20       print('LEAK tiocsti', i)\n\
        \x20   except OSError:\n\
        \x20       print('DENIED tiocsti-%d' % i)\n\
        EOF\n"
        .to_owned();
    let setuid = format!(
        "{} -u; {} ; grep NoNewPrivs /proc/self/status\n{}",
        suid.display(),
        suid.display(),
        attempt("su", "su -c true root")
    );
    let fds = "ls -l /proc/self/fd/; readlink /proc/self/fd/0".to_owned();
    let jobs = [
        ("network", net, 30),
        ("tty", tty, 30),
        ("setuid", setuid, 30),
        ("fds", fds, 30),
    ];
    let r = rig.run_all(&jobs).await;

    let v = &r["network"];
    assert_end("network", v, "completed", None);
    assert_denied(
        "network",
        v,
        &[
            "tcp",
            "tcp6",
            "udp",
            "dns",
            "hub",
            "abstract-unix",
            "getent",
        ],
    );
    assert!(
        matches!(listener.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "a job reached the host's abstract unix socket"
    );

    let v = &r["tty"];
    assert_end("tty", v, "completed", None);
    // `/dev/tty` is at most the job's own terminal (it runs in one by default), and
    // nothing can be typed into any terminal it holds.
    assert_denied(
        "tty",
        v,
        &["tty", "tiocsti-0", "tiocsti-1", "tiocsti-2", "tiocsti-3"],
    );
    // What it wrote to `/dev/tty` landed in its own log.
    assert!(s(v, "stdout").lines().any(|l| l == "own-terminal"), "{v:#}");

    let v = &r["setuid"];
    assert_end("setuid", v, "completed", None);
    let out = s(v, "stdout");
    let mut lines = out.lines();
    let euid: u32 = lines
        .next()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("setuid: {v:#}"));
    assert!(
        (50_500..50_504).contains(&euid),
        "setuid: a setuid-root binary ran with euid {euid}: {v:#}"
    );
    assert!(!out.contains("euid=0"), "setuid: privilege gained: {v:#}");
    assert!(out.contains("NoNewPrivs:\t1"), "setuid: {v:#}");
    assert_denied("setuid", v, &["su"]);

    let v = &r["fds"];
    assert_end("fds", v, "completed", None);
    let out = s(v, "stdout");
    // Only stdin, stdout, stderr, and the directory `ls` itself is reading.
    let fds: Vec<(&str, &str)> = out
        .lines()
        .filter_map(|l| l.split_once(" -> "))
        .map(|(l, target)| (l.rsplit(' ').next().unwrap_or(""), target))
        .collect();
    assert!(fds.len() >= 3, "fds: {v:#}");
    for (fd, target) in &fds {
        let n: u32 = fd.parse().unwrap_or(99);
        assert!(
            n <= 2 || target.starts_with("/proc/"),
            "fds: inherited fd {fd} -> {target}: {v:#}"
        );
    }
    assert!(out.lines().last() == Some("/dev/null"), "fds: stdin: {v:#}");
    rig.finish().await;
}

/// Renames `from` to `to` in a ZIP's local and central headers (same length).
fn rename_entry(zip: &mut [u8], from: &str, to: &str) {
    assert_eq!(from.len(), to.len());
    let (f, t) = (from.as_bytes(), to.as_bytes());
    let mut n = 0;
    let mut i = 0;
    while i + f.len() <= zip.len() {
        if &zip[i..i + f.len()] == f {
            zip[i..i + f.len()].copy_from_slice(t);
            n += 1;
            i += f.len();
        } else {
            i += 1;
        }
    }
    assert_eq!(n, 2, "{from} in local and central header");
}

/// Sets the declared uncompressed size of every entry (local + central headers).
fn lie_about_sizes(zip: &mut [u8], size: u32) {
    let mut i = 0;
    while i + 4 <= zip.len() {
        match &zip[i..i + 4] {
            b"PK\x03\x04" => zip[i + 22..i + 26].copy_from_slice(&size.to_le_bytes()),
            b"PK\x01\x02" => zip[i + 24..i + 28].copy_from_slice(&size.to_le_bytes()),
            _ => {}
        }
        i += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_zips_fail_setup_and_write_nothing_outside() {
    use std::io::Write as _;
    require_root("hostile_zips_fail_setup_and_write_nothing_outside");
    let rig = Rig::start(&[], Some(&wid("attack-zip")), 50_600, 4).await;
    let tag = std::process::id();
    let escape = format!("/tmp/cmdx-zip-escape-{tag}.txt");
    let via_link = format!("/tmp/cmdx-zip-via-link-{tag}.txt");

    let name = format!("../../../../../../../../{}", &escape[1..]);
    let placeholder = "X".repeat(name.len());
    let mut dotdot = zip_bytes(&[("ok.txt", b"1"), (placeholder.as_str(), b"evil")]);
    rename_entry(&mut dotdot, &placeholder, &name);
    let mut absolute = zip_bytes(&[
        ("ok.txt", b"1"),
        ("Y".repeat(escape.len()).as_str(), b"evil"),
    ]);
    rename_entry(&mut absolute, &"Y".repeat(escape.len()), &escape);
    let symlink = {
        let mut buf = std::io::Cursor::new(Vec::new());
        let mut z = zip::ZipWriter::new(&mut buf);
        let o = zip::write::SimpleFileOptions::default();
        z.add_symlink("evil-link", "/tmp", o).unwrap();
        z.start_file(
            format!("evil-link/{}", via_link.trim_start_matches("/tmp/")),
            o,
        )
        .unwrap();
        z.write_all(b"evil").unwrap();
        z.finish().unwrap();
        buf.into_inner()
    };
    let mut duplicate = zip_bytes(&[("dupA.txt", b"first"), ("dupB.txt", b"second")]);
    rename_entry(&mut duplicate, "dupB.txt", "dupA.txt");
    let bomb = {
        let mut buf = std::io::Cursor::new(Vec::new());
        let mut z = zip::ZipWriter::new(&mut buf);
        let o = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .large_file(false);
        z.start_file("bomb.bin", o).unwrap();
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..64 {
            z.write_all(&zeros).unwrap();
        }
        z.finish().unwrap();
        let mut b = buf.into_inner();
        lie_about_sizes(&mut b, 1000);
        b
    };
    let many = {
        let mut buf = std::io::Cursor::new(Vec::new());
        let mut z = zip::ZipWriter::new(&mut buf);
        let o = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        for i in 0..100_000 {
            z.start_file(format!("f{i}"), o).unwrap();
        }
        z.finish().unwrap();
        buf.into_inner()
    };
    let cases: Vec<(&str, Vec<u8>, &[&str])> = vec![
        ("dotdot", dotdot, &["parent directory"]),
        ("absolute", absolute, &["absolute path"]),
        ("symlink", symlink, &["symlink"]),
        ("duplicate", duplicate, &["duplicate"]),
        ("bomb", bomb, &[]),
        ("100k entries", many, &["entries"]),
    ];
    let mut ids = Vec::new();
    for (name, zip, _) in &cases {
        let file_id = rig.hub.upload_zip(&rig.admin, zip.clone()).await;
        let id = rig
            .submit(json!({"command": "echo ran > ran.txt; echo ran", "fileId": file_id, "timeout": 30}))
            .await;
        ids.push((*name, id));
    }
    for ((name, id), (_, _, words)) in ids.iter().zip(&cases) {
        let v = rig.hub.wait_done(&rig.admin, id).await;
        assert_end(name, &v, "failed", Some("setup"));
        let err = s(&v, "error");
        eprintln!("zip {name}: {err}");
        assert!(!err.is_empty(), "{name}: no error text: {v:#}");
        for w in *words {
            assert!(
                err.to_lowercase().contains(w),
                "{name}: error {err:?} should mention {w:?}"
            );
        }
        assert_eq!(s(&v, "stdout"), "", "{name}: the command ran: {v:#}");
    }
    let work = rig.work_dir();
    for p in [
        PathBuf::from(&escape),
        PathBuf::from(&via_link),
        work.join("jobs").join("evil.txt"),
    ] {
        assert!(
            !p.exists(),
            "{} was written outside the job dir",
            p.display()
        );
    }
    // Nothing but the agent's own entries in its work dir, and every workspace removed.
    wait_for("the failed jobs' workspaces to be removed", || async {
        std::fs::read_dir(work.join("jobs"))
            .unwrap()
            .next()
            .is_none()
            .then_some(())
    })
    .await;
    let mut top: Vec<String> = std::fs::read_dir(&work)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    assert_eq!(top, ["agent.lock", "downloads", "images", "jobs"]);
    rig.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_cleans_up_what_a_killed_one_left() {
    require_root("a_restarted_agent_cleans_up_what_a_killed_one_left");
    let mut rig = Rig::start(&[], Some(&wid("attack-crash")), 50_700, 2).await;
    let id = rig
        .submit(json!({
            "command": "sleep 1000 & echo grandchild=$!; echo x > $TMPDIR/t; wait",
            "timeout": 600,
            "maxAttempts": 1,
        }))
        .await;
    let _: i32 = wait_for("the grandchild to start", || async {
        let v = rig.hub.job(&rig.admin, &id).await;
        s(&v, "stdout")
            .strip_prefix("grandchild=")
            .and_then(|p| p.trim().parse().ok())
    })
    .await;
    let pid = host_pid(&rig, "sleep").await;
    let ws = rig.workspace(&id);
    assert!(alive(pid) && mounted_under(&ws));
    rig.agent.kill9().await;
    // PDEATHSIG takes the job's init, and with it the whole PID namespace: the grandchild
    // dies at once. The workspace mount and the job cgroup remain for the next agent.
    wait_for("the grandchild to die with the agent", || async {
        (!alive(pid)).then_some(())
    })
    .await;
    assert_eq!(job_cgroups(&wid("attack-crash")).len(), 1);
    assert!(mounted_under(&ws));

    let work = rig.work_dir();
    rig.agent = AgentProc::start_with(
        &rig.hub,
        &rig.token,
        Some(&wid("attack-crash")),
        &work,
        rig.uid_base,
        2,
    )
    .await;
    wait_for("the restarted agent to kill the leftover job", || async {
        (!alive(pid)
            && !mounted_under(&ws)
            && !ws.exists()
            && job_cgroups(&wid("attack-crash")).is_empty())
        .then_some(())
    })
    .await;
    // The restarted agent works.
    let v = rig.run("echo back", 30).await;
    assert_end("after restart", &v, "completed", None);
    rig.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_agent_on_the_same_work_dir_is_refused() {
    require_root("a_second_agent_on_the_same_work_dir_is_refused");
    let mut rig = Rig::start(&[], Some(&wid("attack-lock")), 50_800, 1).await;
    let v = rig.run("echo first", 30).await;
    assert_end("first", &v, "completed", None);
    let mut second = AgentProc::start_with(
        &rig.hub,
        &rig.token,
        Some(&wid("attack-lock-2")),
        &rig.work_dir(),
        50_900,
        1,
    )
    .await;
    let code = second.wait_exit().await;
    assert_ne!(
        code,
        Some(0),
        "a second agent on the same work dir must refuse to start"
    );
    assert!(rig.agent.is_running());
    let v = rig.run("echo still-first", 30).await;
    assert_end("first again", &v, "completed", None);
    assert_eq!(v["workerId"], wid("attack-lock").as_str());
    rig.finish().await;
}

/// Objects the kernel keeps outside the filesystem, as a security review found them: a job's
/// SysV shared memory and message queues outlived it and were readable by the next job on the
/// same slot uid (three finished jobs left 900 MiB of shared memory outside any limit);
/// `AF_VSOCK` sockets could be created with no network; `personality()` took any persona. Now
/// each job has its own IPC (and UTS) namespace, so its IPC objects die with it and no other
/// job sees them, and seccomp refuses `AF_VSOCK` and personas outside Docker's list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipc_objects_vsock_and_personas_stay_inside_the_job() {
    require_root("ipc_objects_vsock_and_personas_stay_inside_the_job");
    // One slot: both jobs run as the same uid, the case the review exploited.
    let rig = Rig::start(&[], Some(&wid("attack-ipc")), 50_900, 1).await;
    let host_ns = |kind: &str| {
        std::fs::read_link(format!("/proc/self/ns/{kind}"))
            .unwrap()
            .to_string_lossy()
            .into_owned()
    };
    let a = rig
        .run(
            "ipcmk -M 1048576 && ipcmk -Q && ipcs -m | grep -c 1048576; \
             readlink /proc/self/ns/ipc /proc/self/ns/uts",
            30,
        )
        .await;
    assert_end("ipc-a", &a, "completed", None);
    let out = s(&a, "stdout");
    assert!(out.contains("Shared memory id"), "{a:#}");
    for kind in ["ipc", "uts"] {
        assert!(out.contains(&format!("{kind}:[")), "{out}");
        assert!(
            !out.contains(&host_ns(kind)),
            "the job ran in the host's {kind} namespace: {out}"
        );
    }
    // Nothing of the job's is left in the host's IPC namespace.
    let uid = rig.uid_base.to_string();
    for flag in ["-m", "-q"] {
        let host = std::process::Command::new("ipcs")
            .args([flag, "-c"])
            .output()
            .unwrap();
        let listing = String::from_utf8_lossy(&host.stdout);
        assert!(
            !listing
                .lines()
                .any(|l| l.split_whitespace().any(|w| w == uid)),
            "job {flag} objects outlived the job in the host namespace:\n{listing}"
        );
    }
    // The next job on the same uid sees no IPC object at all.
    let b = rig
        .run(
            "ipcs -m | grep -c 1048576; ipcs -q | grep -c '^0x'; true",
            30,
        )
        .await;
    assert_end("ipc-b", &b, "completed", None);
    assert_eq!(s(&b, "stdout"), "0\n0\n", "{b:#}");

    let py = "python3 - <<'EOF'\n\
        import ctypes, socket\n\
        try:\n\
        \x20   socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)\n\
        \x20   print('vsock created')\n\
        except OSError as e:\n\
        \x20   print('vsock', e.errno)\n\
        libc = ctypes.CDLL(None, use_errno=True)\n\
        r = libc.personality(0x0400000)\n\
        print('read-implies-exec', r, ctypes.get_errno())\n\
        print('query', libc.personality(0xffffffff) >= 0)\n\
        EOF\n";
    let v = rig.run(py, 30).await;
    assert_end("vsock-persona", &v, "completed", None);
    assert_eq!(
        s(&v, "stdout"),
        "vsock 1\nread-implies-exec -1 1\nquery True\n",
        "{v:#}"
    );
    rig.finish().await;
}

/// The private root, played as a second tenant would: while another user's job runs with a
/// secret in its command line and environment, this job looks at every process and path it
/// can find.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_sees_only_its_own_processes_and_root() {
    require_root("a_job_sees_only_its_own_processes_and_root");
    let rig = Rig::start(&[], Some(&wid("attack-root")), 51_000, 2).await;
    let victim = rig
        .submit(json!({
            "command": "sleep 15; echo 'my-api-key=SECRET123'",
            "env": {"VICTIM_TOKEN": "SECRET456"},
            "timeout": 60,
        }))
        .await;
    host_pid(&rig, "sleep").await;
    let marker = PathBuf::from(format!("/tmp/cmdx-root-marker-{}", std::process::id()));
    std::fs::write(&marker, "host").unwrap();
    std::fs::set_permissions(&marker, std::fs::Permissions::from_mode(0o644)).unwrap();
    let probe = format!(
        "echo pids $(ls /proc | grep -E '^[0-9]+$' | sort -n | tr '\\n' ' ')\n\
         for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null; cat $p/environ 2>/dev/null | tr '\\0' ' '; echo; done > seen.txt\n\
         grep -c . seen.txt | sed 's/^/lines /'\n\
         grep -qE 'my-api-''key|SECRET''456' seen.txt && echo LEAK-secret\n\
         grep -qE 'cmdx (hub|agent|serve|dev)|system''d|/sbin/in''it' seen.txt && echo LEAK-host-process\n\
         echo init $(head -c 9 /proc/1/cmdline)\n\
         echo pwd $(pwd) home $HOME tmpdir $TMPDIR\n\
         test -e {m} && echo LEAK-host-tmp\n\
         test -e /root && echo LEAK-root\n\
         test -e /home && echo LEAK-home\n\
         test -e /var && echo LEAK-var\n\
         test -e /run && echo LEAK-run\n\
         echo dev $(ls -A /dev | sort | tr '\\n' ' ')\n\
         {}{}{}{}{}\
         sh -c 'echo sh-runs'\n\
         python3 -c 'print(\"python-runs\")'\n\
         (setsid sleep 300 &) ; echo orphan-started\n",
        attempt("mount", "mount -t tmpfs none /tmp"),
        attempt("unshare-m", "unshare -m true"),
        attempt("unshare-p", "unshare -p -f true"),
        attempt("setns", "nsenter -t 1 -m true"),
        attempt("umount-proc", "umount /proc"),
        m = marker.display(),
    );
    let v = rig.run(&probe, 30).await;
    let _ = std::fs::remove_file(&marker);
    assert_end("probe", &v, "completed", None);
    assert_denied(
        "probe",
        &v,
        &["mount", "unshare-m", "unshare-p", "setns", "umount-proc"],
    );
    let out = s(&v, "stdout");
    let line = |k: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{k} ")))
            .unwrap_or_else(|| panic!("no `{k}` line: {v:#}"))
            .trim()
            .to_owned()
    };
    // Its own pids only: init (1), the shell (2) and what the shell runs, all small.
    let pids: Vec<u32> = line("pids")
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert!(pids.starts_with(&[1, 2]) && pids.len() <= 8, "{pids:?}");
    assert!(pids.iter().all(|&p| p < 20), "foreign pids: {pids:?}");
    assert_eq!(line("init"), "cmdx-init");
    assert_eq!(line("pwd"), "/workspace home /workspace tmpdir /tmp");
    assert_eq!(
        line("dev"),
        "fd full null ptmx pts random shm stderr stdin stdout tty urandom zero"
    );
    for ok in ["sh-runs", "python-runs", "orphan-started"] {
        assert!(out.lines().any(|l| l == ok), "{ok}: {v:#}");
    }
    // The orphan died with its job, before the result was reported.
    let orphans: Vec<_> = rig
        .job_uid_processes()
        .into_iter()
        .filter(|(p, ..)| {
            std::fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| c == b"sleep\x00300\x00")
        })
        .collect();
    assert!(
        orphans.is_empty(),
        "the orphan outlived its job: {orphans:?}"
    );
    // The victim was untouched and its secret never reached the prober.
    let done = rig.hub.wait_done(&rig.admin, &victim).await;
    assert_end("victim", &done, "completed", None);
    assert_eq!(s(&done, "stdout"), "my-api-key=SECRET123\n");
    rig.finish().await;
}

/// Strict mode on an older kernel (landlock ABI 3, as on Linux 6.1: no TCP rules, no scopes):
/// the agent starts, and the guarantees those landlock layers gave still hold through the
/// private root and the network namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_mode_on_an_older_landlock_keeps_its_guarantees() {
    require_root("strict_mode_on_an_older_landlock_keeps_its_guarantees");
    let hub = HubProc::start(FAST).await;
    let admin = hub.admin().await;
    let token = hub.worker_token(&admin).await;
    let dir = traversable_tempdir();
    let id = wid("attack-abi3");
    let mut agent = tokio::process::Command::new(cmdx_bin())
        .args([
            "agent",
            "--hub",
            &hub.url,
            "--sandbox",
            "strict",
            "--worker-id",
            &id,
        ])
        .arg("--work-dir")
        .arg(dir.path().join("agent"))
        .args(["--uid-base", "51200", "--concurrency", "1"])
        .env("CMDX_AGENT_TOKEN", &token)
        .env(cmdx_sandbox::LANDLOCK_ABI_MAX_ENV, "3")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let w: Value = wait_for("the capped agent online", || async {
        let (_, v) = hub.get(&admin, "/api/workers/list").await;
        v["workers"]
            .as_array()?
            .iter()
            .find(|w| w["workerId"] == id.as_str() && w["status"] == "online")
            .cloned()
    })
    .await;
    let iso = &w["isolation"];
    assert_eq!(iso["mode"], "strict", "{w:#}");
    let has = |k: &str, l: &str| iso[k].as_array().unwrap().iter().any(|x| x == l);
    assert!(
        has("active", "landlock-abi3") && has("active", "private-root"),
        "{w:#}"
    );
    assert!(
        has("missing", "landlock-tcp") && has("missing", "landlock-scopes"),
        "{w:#}"
    );

    let name = format!("cmdx-abi3-{}", std::process::id());
    let addr =
        <std::os::unix::net::SocketAddr as std::os::linux::net::SocketAddrExt>::from_abstract_name(
            name.as_bytes(),
        )
        .unwrap();
    let _listener = std::os::unix::net::UnixListener::bind_addr(&addr).expect("abstract socket");
    let apid = agent.id().unwrap();
    let probe = format!(
        "python3 - <<'EOF'\n\
         import socket\n\
         def t(name, f):\n\
         \x20   try:\n\
         \x20       f()\n\
         \x20       print('LEAK', name)\n\
         \x20   except OSError:\n\
         \x20       print('DENIED', name)\n\
         def unix():\n\
         \x20   s = socket.socket(socket.AF_UNIX)\n\
         \x20   s.connect('\\0{name}')\n\
         t('hub', lambda: socket.create_connection(('127.0.0.1', {port}), timeout=3))\n\
         t('abstract-unix', unix)\n\
         EOF\n{}{}",
        attempt("signal-agent", &format!("kill -0 {apid}")),
        attempt("agent-proc", &format!("test -e /proc/{apid}")),
        port = hub.port,
    );
    let job = hub
        .submit(&admin, json!({"command": probe, "timeout": 30}))
        .await;
    let v = hub.wait_done(&admin, &job).await;
    assert_end("abi3", &v, "completed", None);
    assert_denied(
        "abi3",
        &v,
        &["hub", "abstract-unix", "signal-agent", "agent-proc"],
    );
    let _ = agent.start_kill();
    let _ = agent.wait().await;
}
