//! Integration tests of the sandbox against real kernel features (cgroups, namespaces,
//! landlock, seccomp, tmpfs). They need root: as anyone else every test fails with a clear
//! message, unless `CMDX_SANDBOX_TESTS_UNPRIVILEGED=1` is set, in which case the tests that
//! need root say so on stderr and pass without checking anything.

mod fs;
mod limits;
mod net;
mod procs;
mod pty;
mod root;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use cmdx_sandbox::{Child, Limits, Mode, Report, Spec, Workspace};
use tokio::io::AsyncReadExt;

/// Global timeout for polling helpers.
pub const POLL_TIMEOUT: Duration = Duration::from_secs(20);

/// Env var that turns "needs root" failures into explicit, logged skips.
pub const UNPRIVILEGED_ENV: &str = "CMDX_SANDBOX_TESTS_UNPRIVILEGED";

/// Python used inside jobs (system python, readable under /usr).
pub const PY: &str = "/usr/bin/python3";

/// True if the test may run; panics with a clear message when root is missing, unless
/// `CMDX_SANDBOX_TESTS_UNPRIVILEGED=1`.
pub fn require_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        let caps = cmdx_sandbox::probe();
        assert!(
            caps.missing().is_empty(),
            "{test}: this host lacks sandbox layers {:?}; these tests need cgroups, landlock, seccomp, \
             namespaces and tmpfs (set {UNPRIVILEGED_ENV}=1 to skip them explicitly)",
            caps.missing()
        );
        return true;
    }
    if std::env::var(UNPRIVILEGED_ENV).as_deref() == Ok("1") {
        eprintln!("{test}: SKIPPED: needs root ({UNPRIVILEGED_ENV}=1 is set)");
        return false;
    }
    panic!(
        "{test}: needs root (cgroups, netns, uid drop, tmpfs); run as root or set {UNPRIVILEGED_ENV}=1"
    );
}

static NEXT_UID: AtomicU32 = AtomicU32::new(0);

/// A distinct unprivileged uid per job, like the agent's `200000 + slot`.
pub fn job_uid() -> u32 {
    200_000 + (std::process::id() % 1000) * 100 + NEXT_UID.fetch_add(1, Ordering::Relaxed)
}

/// A temporary parent dir plus a workspace inside it, owned by a fresh job uid.
pub struct Fixture {
    /// Keeps the parent alive.
    pub parent: tempfile::TempDir,
    /// The workspace (None once removed).
    pub ws: Option<Workspace>,
    /// uid == gid of the job.
    pub uid: u32,
}

impl Fixture {
    pub fn new(disk_bytes: u64) -> Fixture {
        let parent = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(parent.path(), std::fs::Permissions::from_mode(0o711))
            .expect("chmod parent");
        let uid = job_uid();
        let ws = Workspace::create(parent.path(), "ws", disk_bytes, Some((uid, uid)))
            .expect("workspace");
        Fixture {
            parent,
            ws: Some(ws),
            uid,
        }
    }

    pub fn ws(&self) -> &Workspace {
        self.ws.as_ref().expect("workspace")
    }

    /// `sh -c cmd` in the job dir, strict mode, no network, as the job uid.
    pub fn spec(&self, cmd: &str) -> Spec {
        let ws = self.ws();
        let mut spec = Spec::new("/bin/sh", vec!["-c".into(), cmd.into()], &ws.dir);
        spec.read_write_paths = vec![ws.dir.clone(), ws.tmp.clone()];
        spec.env = vec![
            ("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()),
            ("HOME".into(), ws.dir.display().to_string()),
            ("TMPDIR".into(), ws.tmp.display().to_string()),
        ];
        spec.run_as = Some((self.uid, self.uid));
        spec.mode = Mode::Strict;
        spec.limits = Limits {
            wall_timeout: Duration::from_secs(60),
            ..Limits::default()
        };
        spec
    }
}

impl Fixture {
    /// Like [`Fixture::spec`], in the job's private root: cwd and `HOME` `/workspace`,
    /// `TMPDIR` `/tmp`.
    pub fn root_spec(&self, cmd: &str) -> Spec {
        let mut spec = self.spec(cmd);
        spec.root = Some(self.ws().private_root());
        spec.cwd = PathBuf::from("/workspace");
        spec.env = vec![
            ("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()),
            ("HOME".into(), "/workspace".into()),
            ("TMPDIR".into(), "/tmp".into()),
        ];
        spec
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(ws) = self.ws.take() {
            ws.remove().expect("remove workspace");
        }
    }
}

/// Output and report of a finished job.
#[derive(Debug)]
pub struct Outcome {
    pub report: Report,
    pub stdout: String,
    pub stderr: String,
}

/// Read both pipes to the end while waiting.
pub async fn finish(mut child: Child) -> Outcome {
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let (mut so, mut se) = (Vec::new(), Vec::new());
    let (a, b, report) = tokio::join!(
        out.read_to_end(&mut so),
        err.read_to_end(&mut se),
        child.wait()
    );
    a.expect("read stdout");
    b.expect("read stderr");
    Outcome {
        report: report.expect("wait"),
        stdout: String::from_utf8_lossy(&so).into_owned(),
        stderr: String::from_utf8_lossy(&se).into_owned(),
    }
}

/// Spawn and finish.
pub async fn run(spec: &Spec) -> Outcome {
    let child = cmdx_sandbox::spawn(spec).unwrap_or_else(|e| panic!("spawn {spec:?}: {e}"));
    finish(child).await
}

/// Poll `cond` every 10 ms until it holds, panicking after [`POLL_TIMEOUT`].
pub async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < POLL_TIMEOUT,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Pids of every process whose real uid is `uid`.
pub fn procs_of_uid(uid: u32) -> Vec<i32> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(st) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        let u = st
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|l| l.split_whitespace().next()?.parse::<u32>().ok());
        if u == Some(uid) {
            v.push(pid);
        }
    }
    v
}

/// Path of a file under the workspace's job dir.
pub fn in_job(f: &Fixture, name: &str) -> PathBuf {
    f.ws().dir.join(name)
}

#[tokio::test]
async fn echo_runs_with_all_layers() {
    if !require_root("echo_runs_with_all_layers") {
        return;
    }
    let f = Fixture::new(64 << 20);
    let o = run(&f.spec("echo hi; id -u; echo err >&2")).await;
    assert_eq!(o.report.exit_code, Some(0), "{o:?}");
    assert_eq!(o.stdout, format!("hi\n{}\n", f.uid));
    assert_eq!(o.stderr, "err\n");
    for l in [
        "cgroup-v1",
        "session",
        "netns",
        "uid",
        "no_new_privs",
        "pdeathsig",
        "rlimits",
        "seccomp",
        "landlock-scopes",
    ] {
        assert!(
            o.report
                .layers
                .iter()
                .any(|x| x == l || (l == "cgroup-v1" && x == "cgroup-v2")),
            "layer {l} missing from {:?}",
            o.report.layers
        );
    }
    assert!(
        o.report.cpu.is_some() && o.report.peak_memory_bytes.is_some(),
        "{o:?}"
    );
}

#[tokio::test]
async fn strict_mode_refuses_root_job_without_uid_drop() {
    if !require_root("strict_mode_refuses_root_job_without_uid_drop") {
        return;
    }
    let f = Fixture::new(1 << 20);
    let mut spec = f.spec("true");
    spec.run_as = None;
    match cmdx_sandbox::spawn(&spec) {
        Err(cmdx_sandbox::Error::MissingLayers { missing }) => {
            assert_eq!(missing, vec!["uid".to_string()])
        }
        other => panic!("expected MissingLayers, got {other:?}"),
    }
}

#[tokio::test]
async fn exit_code_and_signal_reported() {
    if !require_root("exit_code_and_signal_reported") {
        return;
    }
    let f = Fixture::new(1 << 20);
    let o = run(&f.spec("exit 7")).await;
    assert_eq!((o.report.exit_code, o.report.signal), (Some(7), None));
    let o = run(&f.spec("kill -SEGV $$")).await;
    assert_eq!(
        (o.report.exit_code, o.report.signal),
        (None, Some(libc::SIGSEGV))
    );
}

#[test]
fn probe_reports_layers() {
    let caps = cmdx_sandbox::probe();
    let active = caps.active_layers();
    if nix::unistd::geteuid().is_root() {
        assert!(
            active.iter().any(|l| l.starts_with("cgroup-v")),
            "{active:?}"
        );
        assert!(
            active.iter().any(|l| l.starts_with("landlock-abi")),
            "{active:?}"
        );
    }
    assert!(active.iter().all(|l| !caps.missing().contains(l)));
}

#[tokio::test]
async fn best_effort_mode_runs_and_reports_missing_layers() {
    if !require_root("best_effort_mode_runs_and_reports_missing_layers") {
        return;
    }
    let f = Fixture::new(1 << 20);
    let mut spec = f.spec("id -u; cat /etc/shadow >/dev/null 2>&1 || echo shadow-denied");
    spec.run_as = None;
    spec.mode = Mode::BestEffort;
    let o = run(&spec).await;
    assert!(!o.report.layers.iter().any(|l| l == "uid"), "{o:?}");
    assert!(
        o.report
            .layers
            .iter()
            .any(|l| l.starts_with("landlock-abi")),
        "{o:?}"
    );
    // Still root: landlock lets /etc be read, so only the uid layer protects /etc/shadow,
    // which is why strict mode insists on it.
    assert!(o.stdout.starts_with("0\n"), "{o:?}");
}
