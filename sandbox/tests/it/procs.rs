//! Process isolation: whole-job kill, terminate, signals, ptrace, tty, env, fds, streaming.

use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};

use crate::{Fixture, PY, finish, procs_of_uid, require_root, run, wait_for};

#[tokio::test]
async fn setsid_double_fork_daemon_does_not_outlive_the_job() {
    if !require_root("setsid_double_fork_daemon_does_not_outlive_the_job") {
        return;
    }
    let f = Fixture::new(1 << 20);
    let cmd = "( setsid sh -c 'trap \"\" TERM HUP INT; echo $$ > \"$TMPDIR/daemon.pid\"; while :; do sleep 0.2; done' </dev/null >/dev/null 2>&1 & ); \
               while [ ! -s \"$TMPDIR/daemon.pid\" ]; do sleep 0.01; done; echo started";
    let mut child = cmdx_sandbox::spawn(&f.spec(cmd)).expect("spawn");
    let cg = child.cgroup_path().expect("cgroup").to_path_buf();
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(out.next_line().await.unwrap().as_deref(), Some("started"));
    let pid: i32 = std::fs::read_to_string(f.ws().tmp.join("daemon.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "daemon not running"
    );
    let report = child.wait().await.expect("wait");
    assert_eq!(report.exit_code, Some(0));
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "daemon {pid} survived (or is an unreaped zombie)"
    );
    assert!(
        procs_of_uid(f.uid).is_empty(),
        "processes of the job uid remain"
    );
    assert!(!cg.exists(), "cgroup {} not removed", cg.display());
}

#[tokio::test]
async fn terminate_ends_a_term_ignoring_job_after_the_grace() {
    if !require_root("terminate_ends_a_term_ignoring_job_after_the_grace") {
        return;
    }
    let f = Fixture::new(1 << 20);
    let mut child =
        cmdx_sandbox::spawn(&f.spec("trap '' TERM; echo ready; while :; do sleep 0.1; done"))
            .expect("spawn");
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(out.next_line().await.unwrap().as_deref(), Some("ready"));
    let start = Instant::now();
    child.terminate(Duration::from_millis(500)).await;
    let took = start.elapsed();
    let report = child.wait().await.expect("wait");
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(2),
        "terminate took {took:?}"
    );
    assert!(
        report.terminated && report.signal == Some(libc::SIGKILL),
        "{report:?}"
    );
    assert!(procs_of_uid(f.uid).is_empty());
}

#[tokio::test]
async fn terminate_lets_a_cooperative_job_exit_on_term() {
    if !require_root("terminate_lets_a_cooperative_job_exit_on_term") {
        return;
    }
    let f = Fixture::new(1 << 20);
    let mut child = cmdx_sandbox::spawn(&f.spec("echo ready; exec sleep 100")).expect("spawn");
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(out.next_line().await.unwrap().as_deref(), Some("ready"));
    let start = Instant::now();
    child.terminate(Duration::from_secs(10)).await;
    assert!(start.elapsed() < Duration::from_secs(2));
    let report = child.wait().await.expect("wait");
    assert_eq!(report.signal, Some(libc::SIGTERM), "{report:?}");
}

#[tokio::test]
async fn kill_is_immediate() {
    if !require_root("kill_is_immediate") {
        return;
    }
    let f = Fixture::new(1 << 20);
    let mut child =
        cmdx_sandbox::spawn(&f.spec("trap '' TERM; echo ready; sleep 100 & sleep 100; wait"))
            .expect("spawn");
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(out.next_line().await.unwrap().as_deref(), Some("ready"));
    let start = Instant::now();
    child.kill();
    let report = child.wait().await.expect("wait");
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(report.signal, Some(libc::SIGKILL));
    assert!(procs_of_uid(f.uid).is_empty());
}

#[tokio::test]
async fn output_streams_while_the_job_runs() {
    if !require_root("output_streams_while_the_job_runs") {
        return;
    }
    let f = Fixture::new(1 << 20);
    let child = cmdx_sandbox::spawn(&f.spec(
        "echo first; echo err-first >&2; while [ ! -e go ]; do sleep 0.01; done; echo second",
    ))
    .expect("spawn");
    let mut child = child;
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut err = BufReader::new(child.stderr.take().unwrap()).lines();
    let t = Instant::now();
    assert_eq!(out.next_line().await.unwrap().as_deref(), Some("first"));
    assert_eq!(err.next_line().await.unwrap().as_deref(), Some("err-first"));
    assert!(t.elapsed() < Duration::from_secs(2));
    // The job is still blocked: both lines arrived before it could end.
    assert!(child.cgroup_path().is_some_and(|p| p.exists()));
    std::fs::write(f.ws().dir.join("go"), "").unwrap();
    assert_eq!(out.next_line().await.unwrap().as_deref(), Some("second"));
    assert_eq!(child.wait().await.unwrap().exit_code, Some(0));
}

#[tokio::test]
async fn signal_and_ptrace_of_other_processes_denied() {
    if !require_root("signal_and_ptrace_of_other_processes_denied") {
        return;
    }
    let f = Fixture::new(1 << 20);
    let me = std::process::id();
    // Another job as a victim, once with a different uid and once with the same uid.
    let other = Fixture::new(1 << 20);
    let mut victim =
        cmdx_sandbox::spawn(&other.spec("echo up; exec sleep 100")).expect("spawn victim");
    let mut vout = BufReader::new(victim.stdout.take().unwrap()).lines();
    assert_eq!(vout.next_line().await.unwrap().as_deref(), Some("up"));
    let mut same_uid_spec = f.spec("echo up; exec sleep 100");
    same_uid_spec.run_as = Some((f.uid, f.uid));
    let mut same = cmdx_sandbox::spawn(&same_uid_spec).expect("spawn same-uid victim");
    let mut sout = BufReader::new(same.stdout.take().unwrap()).lines();
    assert_eq!(sout.next_line().await.unwrap().as_deref(), Some("up"));
    let (v, s) = (victim.pid(), same.pid());
    let script = format!(
        "import ctypes, os, errno\n\
         libc = ctypes.CDLL(None, use_errno=True)\n\
         for pid in ({me}, {v}, {s}, 1):\n\
         \x20   for sig in (0, 15):\n\
         \x20       try:\n\
         \x20           os.kill(pid, sig); print('SIGNALLED', pid, sig)\n\
         \x20       except OSError as e: print('kill denied', pid, sig, errno.errorcode[e.errno])\n\
         \x20   r = libc.ptrace(16, pid, 0, 0)\n\
         \x20   print('PTRACED' if r == 0 else 'ptrace denied', pid, errno.errorcode[ctypes.get_errno()])\n\
         \x20   try:\n\
         \x20       open('/proc/%d/environ' % pid, 'rb').read(); print('ENVIRON READ', pid)\n\
         \x20   except OSError as e: print('environ denied', pid)\n"
    );
    std::fs::write(f.ws().dir.join("t.py"), script).unwrap();
    let o = run(&f.spec(&format!("{PY} t.py"))).await;
    assert_eq!(o.report.exit_code, Some(0), "{o:?}");
    assert!(
        !o.stdout.contains("SIGNALLED")
            && !o.stdout.contains("PTRACED")
            && !o.stdout.contains("ENVIRON READ"),
        "{o:?}"
    );
    assert_eq!(o.stdout.matches("kill denied").count(), 8, "{o:?}");
    assert_eq!(o.stdout.matches("ptrace denied").count(), 4, "{o:?}");
    assert!(
        std::path::Path::new(&format!("/proc/{v}")).exists()
            && std::path::Path::new(&format!("/proc/{s}")).exists()
    );
    victim.kill();
    same.kill();
    victim.wait().await.unwrap();
    same.wait().await.unwrap();
}

#[tokio::test]
async fn tiocsti_and_tty_unavailable() {
    if !require_root("tiocsti_and_tty_unavailable") {
        return;
    }
    let f = Fixture::new(1 << 20);
    let script = "import fcntl, termios, errno, os\n\
                  for fd in (0, 1, 2):\n\
                  \x20   try:\n\
                  \x20       fcntl.ioctl(fd, termios.TIOCSTI, b'x'); print('INJECTED')\n\
                  \x20   except OSError as e: print('tiocsti', errno.errorcode[e.errno])\n\
                  try:\n\
                  \x20   os.open('/dev/tty', os.O_RDWR); print('TTY OPEN')\n\
                  except OSError as e: print('no tty', errno.errorcode[e.errno])\n\
                  print('sid', os.getsid(0) == os.getpid())\n";
    std::fs::write(f.ws().dir.join("t.py"), script).unwrap();
    let o = run(&f.spec(&format!("exec {PY} t.py"))).await;
    assert!(
        !o.stdout.contains("INJECTED") && !o.stdout.contains("TTY OPEN"),
        "{o:?}"
    );
    // seccomp answers EPERM before any driver sees the request.
    assert_eq!(o.stdout.matches("tiocsti EPERM").count(), 3, "{o:?}");
    assert!(o.stdout.contains("sid True"), "{o:?}");
}

#[tokio::test]
async fn environment_is_exactly_the_spec() {
    if !require_root("environment_is_exactly_the_spec") {
        return;
    }
    let f = Fixture::new(1 << 20);
    let mut spec = f.spec("");
    spec.program = "/usr/bin/env".into();
    spec.args.clear();
    spec.env.push(("FOO".into(), "bar baz".into()));
    let o = run(&spec).await;
    let mut got: Vec<&str> = o.stdout.lines().collect();
    got.sort_unstable();
    let mut want: Vec<String> = spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    want.sort_unstable();
    assert_eq!(got, want, "{o:?}");
}

#[tokio::test]
async fn inherited_fd_is_not_present_in_the_child() {
    if !require_root("inherited_fd_is_not_present_in_the_child") {
        return;
    }
    let f = Fixture::new(1 << 20);
    // SAFETY: open(2) with a valid NUL-terminated path; deliberately without O_CLOEXEC.
    let opened = unsafe { libc::open(c"/etc/hostname".as_ptr(), libc::O_RDONLY) };
    assert!(opened > 2);
    // Move it well above ls's own directory fd (3): which number open(2) returns depends on
    // what else the test process has open. F_DUPFD does not set close-on-exec either.
    // SAFETY: fcntl/close on the fd just opened.
    let fd = unsafe { libc::fcntl(opened, libc::F_DUPFD, 100) };
    // SAFETY: as above.
    unsafe { libc::close(opened) };
    assert!(fd >= 100, "F_DUPFD failed");
    let mut spec = f.spec("");
    spec.program = "/bin/ls".into();
    spec.args = vec!["/proc/self/fd".into()];
    let o = run(&spec).await;
    // SAFETY: closing the fd opened above.
    unsafe { libc::close(fd) };
    let fds: Vec<&str> = o.stdout.split_whitespace().collect();
    // 0-2 are stdio, 3 is the directory ls is reading.
    assert_eq!(fds, ["0", "1", "2", "3"], "{o:?}");
}

#[tokio::test]
async fn dangerous_syscalls_are_filtered() {
    if !require_root("dangerous_syscalls_are_filtered") {
        return;
    }
    let f = Fixture::new(1 << 20);
    let script = "import ctypes, errno, os\n\
                  libc = ctypes.CDLL(None, use_errno=True)\n\
                  def t(name, nr, *a):\n\
                  \x20   r = libc.syscall(nr, *a); print(name, r, errno.errorcode.get(ctypes.get_errno()))\n\
                  t('keyctl', 250, 0, 0, 0)\n\
                  t('bpf', 321, 0, 0, 0)\n\
                  t('perf_event_open', 298, 0, 0, -1, -1, 0)\n\
                  t('userfaultfd', 323, 0)\n\
                  t('unshare_user', 272, 0x10000000)\n\
                  t('clone3', 435, 0, 0)\n\
                  t('mount', 165, 0, 0, 0, 0, 0)\n\
                  t('x32_getpid', 0x40000000 + 39)\n";
    std::fs::write(f.ws().dir.join("t.py"), script).unwrap();
    let o = run(&f.spec(&format!("exec {PY} t.py"))).await;
    for (name, errno) in [
        ("keyctl", "EPERM"),
        ("bpf", "EPERM"),
        ("perf_event_open", "EPERM"),
        ("userfaultfd", "EPERM"),
        ("unshare_user", "EPERM"),
        ("clone3", "ENOSYS"),
        ("mount", "EPERM"),
        ("x32_getpid", "ENOSYS"),
    ] {
        assert!(
            o.stdout.contains(&format!("{name} -1 {errno}")),
            "{name}: {o:?}"
        );
    }
    // Ordinary process creation (fork via clone without namespace flags) still works.
    let o = run(&f.spec("echo $(echo nested) | cat")).await;
    assert_eq!(o.stdout, "nested\n");
}

#[tokio::test]
async fn wait_for_helper_sanity() {
    // Ensures the polling helper itself terminates (no root needed).
    let mut n = 0;
    wait_for("counter", || {
        n += 1;
        n > 3
    })
    .await;
    let _ = finish;
}

#[tokio::test]
async fn dropping_a_child_kills_and_reaps_the_job() {
    if !require_root("dropping_a_child_kills_and_reaps_the_job") {
        return;
    }
    let f = Fixture::new(1 << 20);
    let mut child =
        cmdx_sandbox::spawn(&f.spec("echo up; sleep 100 & exec sleep 100")).expect("spawn");
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(out.next_line().await.unwrap().as_deref(), Some("up"));
    let cg = child.cgroup_path().expect("cgroup").to_path_buf();
    drop(child);
    wait_for(
        "dropped job to be killed, reaped and its cgroup removed",
        || procs_of_uid(f.uid).is_empty() && !cg.exists(),
    )
    .await;
}

#[tokio::test]
async fn spawn_errors_name_the_failing_step() {
    if !require_root("spawn_errors_name_the_failing_step") {
        return;
    }
    let f = Fixture::new(1 << 20);
    let mut spec = f.spec("");
    spec.program = "/nonexistent/program".into();
    spec.args.clear();
    match cmdx_sandbox::spawn(&spec) {
        Err(cmdx_sandbox::Error::Spawn { step, source, .. }) => {
            assert_eq!(step, "exec");
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("expected a spawn error, got {other:?}"),
    }
    // A program the job uid may not execute (outside the landlock policy).
    let blocked = f.parent.path().join("prog");
    std::fs::copy("/bin/true", &blocked).unwrap();
    spec.program = blocked;
    match cmdx_sandbox::spawn(&spec) {
        Err(cmdx_sandbox::Error::Spawn { step, .. }) => assert_eq!(step, "exec"),
        other => panic!("expected a spawn error, got {other:?}"),
    }
    spec.program = "relative/sh".into();
    assert!(matches!(
        cmdx_sandbox::spawn(&spec),
        Err(cmdx_sandbox::Error::InvalidSpec(_))
    ));
    let mut bad = f.spec("echo a\0b");
    assert!(matches!(
        cmdx_sandbox::spawn(&bad),
        Err(cmdx_sandbox::Error::InvalidSpec(_))
    ));
    bad = f.spec("true");
    bad.env.push(("A=B".into(), "c".into()));
    assert!(matches!(
        cmdx_sandbox::spawn(&bad),
        Err(cmdx_sandbox::Error::InvalidSpec(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_jobs_with_orphans_are_all_reaped() {
    if !require_root("concurrent_jobs_with_orphans_are_all_reaped") {
        return;
    }
    let shared = Fixture::new(1 << 20);
    let own: Vec<Fixture> = (0..6).map(|_| Fixture::new(1 << 20)).collect();
    let mut tasks = Vec::new();
    // Six jobs with their own uid and six sharing one uid, all leaving orphans behind.
    for (i, f) in own
        .iter()
        .chain(std::iter::repeat_n(&shared, 6))
        .enumerate()
    {
        let spec = f.spec(&format!(
            "(sleep 30 &) ; (exit 3) ; echo job{i}; exit {}",
            i % 5
        ));
        tasks.push(tokio::spawn(async move { (i, run(&spec).await) }));
    }
    for t in tasks {
        let (i, o) = t.await.expect("task");
        assert_eq!(o.report.exit_code, Some((i % 5) as i32), "{o:?}");
        assert_eq!(o.stdout, format!("job{i}\n"));
    }
    for f in own.iter().chain([&shared]) {
        assert!(
            procs_of_uid(f.uid).is_empty(),
            "uid {} still has processes",
            f.uid
        );
    }
}

/// What a crashed caller leaves (the `Child` is never waited for nor dropped) is found by its
/// cgroup group and killed, and the group's cgroups are removed.
#[tokio::test]
async fn leftover_cgroup_group_is_killed_and_removed() {
    if !require_root("leftover_cgroup_group_is_killed_and_removed") {
        return;
    }
    let f = Fixture::new(1 << 20);
    let group = format!("test-leftover-{}", std::process::id());
    let mut spec = f.spec("sleep 1000 & echo $!; wait");
    spec.cgroup_group = Some(group.clone());
    let mut child = cmdx_sandbox::spawn(&spec).expect("spawn");
    let cg = child.cgroup_path().expect("cgroup").to_path_buf();
    assert_eq!(
        cg.parent().and_then(|p| p.file_name()),
        Some(std::ffi::OsStr::new(&group)),
        "job cgroup {} is not in its group",
        cg.display()
    );
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let grandchild: i32 = out.next_line().await.unwrap().unwrap().parse().unwrap();
    let main = child.pid() as i32;
    // Simulate a crash of the caller: nobody waits for or kills the job.
    std::mem::forget(child);
    assert!(std::path::Path::new(&format!("/proc/{grandchild}")).exists());

    let g = group.clone();
    let removed = tokio::task::spawn_blocking(move || cmdx_sandbox::kill_cgroup_group(&g))
        .await
        .unwrap()
        .expect("kill the leftover group");
    assert_eq!(removed, 1);
    assert!(!cg.exists(), "job cgroup {} left", cg.display());
    assert!(!cg.parent().unwrap().exists(), "group dir left");
    // Both were our children (we are their subreaper): reap them to prove they died.
    for pid in [main, grandchild] {
        let st = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None).expect("reap");
        assert!(
            matches!(
                st,
                nix::sys::wait::WaitStatus::Signaled(_, nix::sys::signal::SIGKILL, _)
            ),
            "{pid}: {st:?}"
        );
    }
    assert!(procs_of_uid(f.uid).is_empty());
    // Nothing left: a second call is a no-op.
    assert_eq!(cmdx_sandbox::kill_cgroup_group(&group).expect("again"), 0);
    assert!(cmdx_sandbox::kill_cgroup_group("../escape").is_err());
    let mut bad = f.spec("true");
    bad.cgroup_group = Some("a/b".into());
    assert!(matches!(
        cmdx_sandbox::spawn(&bad),
        Err(cmdx_sandbox::Error::InvalidSpec(_))
    ));
}

/// The job's main process is started with `clone(CLONE_VM | CLONE_VFORK)` on the caller's
/// memory: the caller must keep its own credentials on every thread (a glibc `setresuid` in
/// the child would have changed them all), and the job must start with no signal blocked and
/// SIGPIPE at its default (the Rust runtime ignores it in the caller).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawning_leaves_the_caller_alone_and_the_job_signals_default() {
    if !require_root("spawning_leaves_the_caller_alone_and_the_job_signals_default") {
        return;
    }
    let f = Fixture::new(1 << 20);
    for _ in 0..5 {
        let o = run(&f.spec("cat /proc/self/status")).await;
        assert_eq!(o.report.exit_code, Some(0), "{o:?}");
        let field = |name: &str| {
            o.stdout
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_owned())
        };
        assert_eq!(field("SigBlk:").as_deref(), Some("0000000000000000"));
        // What the caller ignores stays ignored (as with std's spawn), but never SIGPIPE.
        let ign = u64::from_str_radix(&field("SigIgn:").expect("SigIgn"), 16).expect("hex");
        assert_eq!(
            ign & (1 << (libc::SIGPIPE - 1)),
            0,
            "SIGPIPE ignored: {ign:x}"
        );
        let uid = f.uid.to_string();
        assert_eq!(
            field("Uid:").map(|u| u.split_whitespace().all(|x| x == uid)),
            Some(true),
            "{o:?}"
        );
    }
    for t in std::fs::read_dir("/proc/self/task")
        .expect("tasks")
        .flatten()
    {
        let st = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
        for name in ["Uid:", "Gid:"] {
            let ids = st.lines().find_map(|l| l.strip_prefix(name)).unwrap_or("");
            assert!(
                ids.split_whitespace().all(|x| x == "0"),
                "thread {:?} {name} {ids}",
                t.file_name()
            );
        }
    }
}
