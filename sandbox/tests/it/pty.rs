//! Jobs in a pseudo-terminal: what the job sees, one ordered stream, what it cannot reach,
//! and the whole-job kill still ending everything.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use cmdx_sandbox::{Child, Report, Spec, TerminalSize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

use crate::{Fixture, PY, procs_of_uid, require_root};

const SIZE: TerminalSize = TerminalSize {
    cols: 132,
    rows: 43,
};

/// `spec` in a terminal of [`SIZE`], with the environment the agent gives such a job.
fn in_terminal(mut spec: Spec) -> Spec {
    spec.terminal = Some(SIZE);
    spec.env.push(("TERM".into(), "xterm-256color".into()));
    spec
}

/// Reads the terminal to its end while waiting.
async fn finish_tty(mut child: Child) -> (Report, String) {
    assert!(child.stdout.is_none() && child.stderr.is_none());
    let mut term = child.terminal.take().expect("a terminal");
    let mut out = Vec::new();
    let (read, report) = tokio::join!(term.read_to_end(&mut out), child.wait());
    read.expect("read the terminal");
    let out = String::from_utf8_lossy(&out).into_owned();
    (report.expect("wait"), out)
}

async fn run_tty(spec: &Spec) -> (Report, String) {
    let child = cmdx_sandbox::spawn(spec).unwrap_or_else(|e| panic!("spawn {spec:?}: {e}"));
    finish_tty(child).await
}

#[tokio::test]
async fn a_job_in_a_terminal_sees_one_of_the_size_asked_for() {
    if !require_root("a_job_in_a_terminal_sees_one_of_the_size_asked_for") {
        return;
    }
    let f = Fixture::new(1 << 20);
    // `cat` and `head` show that neither stdin nor /dev/tty leaves the job waiting.
    let cmd = "[ -t 1 ] && echo out-tty; [ -t 2 ] && echo err-tty; [ -t 0 ] || echo in-null; \
               stty size </dev/tty; tput cols; tput lines; readlink /proc/self/fd/1; cat; head -c1 /dev/tty; \
               echo tty-eof; echo uid=$(stat -c %u /dev/pts/0) mine=$(id -u); ls -1 /dev/pts; \
               stty onlcr </dev/tty; echo crlf";
    let (report, out) = run_tty(&in_terminal(f.root_spec(cmd))).await;
    assert_eq!(report.exit_code, Some(0), "{out}");
    let uid = f.uid;
    assert_eq!(
        out,
        format!(
            "out-tty\nerr-tty\nin-null\n43 132\n132\n43\n/dev/pts/0\ntty-eof\n\
             uid={uid} mine={uid}\n0\nptmx\ncrlf\r\n"
        )
    );
}

#[tokio::test]
async fn without_a_terminal_stdout_and_stderr_stay_apart() {
    if !require_root("without_a_terminal_stdout_and_stderr_stay_apart") {
        return;
    }
    let f = Fixture::new(1 << 20);
    let o = crate::run(&f.root_spec("[ -t 1 ] || echo no-tty; echo err >&2")).await;
    assert_eq!(
        (o.stdout.as_str(), o.stderr.as_str()),
        ("no-tty\n", "err\n")
    );
}

#[tokio::test]
async fn stdout_and_stderr_arrive_in_the_order_they_were_written() {
    if !require_root("stdout_and_stderr_arrive_in_the_order_they_were_written") {
        return;
    }
    let f = Fixture::new(1 << 20);
    for with_root in [true, false] {
        for i in 0..25 {
            let cmd = "echo a; echo b >&2; echo c";
            let spec = if with_root {
                f.root_spec(cmd)
            } else {
                f.spec(cmd)
            };
            let (report, out) = run_tty(&in_terminal(spec)).await;
            assert_eq!(report.exit_code, Some(0));
            assert_eq!(out, "a\nb\nc\n", "run {i}, private root {with_root}");
        }
    }
}

#[tokio::test]
async fn tiocsti_tioclinux_and_tiocsetd_are_refused_on_the_terminal() {
    if !require_root("tiocsti_tioclinux_and_tiocsetd_are_refused_on_the_terminal") {
        return;
    }
    let f = Fixture::new(1 << 20);
    // TIOCSETD (0x5423) would switch the terminal's line discipline: N_HDLC, N_GSM and the
    // like have been the way into kernel bugs from an unprivileged terminal owner.
    let script = "import fcntl, termios, errno, os, struct\n\
                  tty = os.open('/dev/tty', os.O_RDWR)\n\
                  for fd in (1, 2, tty):\n\
                  \x20   for name, req, arg in (('tiocsti', termios.TIOCSTI, b'x'), ('tioclinux', 0x541C, b'\\x0b'), ('tiocsetd', 0x5423, struct.pack('i', 0))):\n\
                  \x20       try:\n\
                  \x20           fcntl.ioctl(fd, req, arg); print(name, 'ALLOWED')\n\
                  \x20       except OSError as e: print(name, errno.errorcode[e.errno])\n";
    std::fs::write(f.ws().dir.join("t.py"), script).expect("script");
    for spec in [f.root_spec(""), f.spec("")] {
        let mut spec = in_terminal(spec);
        spec.program = PY.into();
        spec.args = vec!["t.py".into()];
        let (report, out) = run_tty(&spec).await;
        assert_eq!(report.exit_code, Some(0), "{out}");
        assert_eq!(out.matches("tiocsti EPERM").count(), 3, "{out}");
        assert_eq!(out.matches("tioclinux EPERM").count(), 3, "{out}");
        assert_eq!(out.matches("tiocsetd EPERM").count(), 3, "{out}");
    }
}

/// A pty of the test process on the host's devpts: (master, its number).
fn host_pty() -> (OwnedFd, u32) {
    // SAFETY: posix_openpt/grantpt/unlockpt on a descriptor we own; ptsname_r writes into a
    // buffer of the given size.
    unsafe {
        let fd = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
        assert!(fd >= 0, "posix_openpt: {}", std::io::Error::last_os_error());
        let master = OwnedFd::from_raw_fd(fd);
        assert_eq!(libc::grantpt(fd), 0);
        assert_eq!(libc::unlockpt(fd), 0);
        let mut n: libc::c_uint = 0;
        assert_eq!(libc::ioctl(master.as_raw_fd(), libc::TIOCGPTN, &mut n), 0);
        (master, n)
    }
}

#[tokio::test]
async fn a_job_reaches_no_terminal_but_its_own() {
    if !require_root("a_job_reaches_no_terminal_but_its_own") {
        return;
    }
    let f = Fixture::new(1 << 20);
    let (_master, n) = host_pty();
    // In its private root the job's /dev/pts is its own instance: the host's pty is not
    // there, and the pty the job opens is numbered on its instance.
    let cmd = format!(
        "test -e /dev/pts/{n} && [ {n} != 0 ] && echo HOST-PTY; \
         {PY} -c 'import os; m, s = os.openpty(); print(\"own\", os.ttyname(s))'"
    );
    let (report, out) = run_tty(&in_terminal(f.root_spec(&cmd))).await;
    assert_eq!(report.exit_code, Some(0), "{out}");
    assert_eq!(out, "own /dev/pts/1\n");
    // Without a private root the host's /dev/pts is in view, but nothing on it opens.
    let cmd = format!("echo x >/dev/pts/{n} && echo WROTE; cat /dev/pts/{n} && echo READ; true");
    let (report, out) = run_tty(&in_terminal(f.spec(&cmd))).await;
    assert_eq!(report.exit_code, Some(0), "{out}");
    assert!(!out.contains("WROTE") && !out.contains("READ"), "{out}");
}

#[tokio::test]
async fn terminate_and_timeout_end_every_process_of_a_terminal_job() {
    if !require_root("terminate_and_timeout_end_every_process_of_a_terminal_job") {
        return;
    }
    // A child in a session of its own (off the terminal's) and one that ignores SIGHUP and
    // SIGTERM: the cgroup kill still ends them all.
    let cmd = "setsid sleep 1000 & (trap '' HUP TERM; sleep 1000) & echo ready; wait";
    for with_root in [true, false] {
        let f = Fixture::new(1 << 20);
        let spec = in_terminal(if with_root {
            f.root_spec(cmd)
        } else {
            f.spec(cmd)
        });
        let mut child = cmdx_sandbox::spawn(&spec).expect("spawn");
        let mut lines = BufReader::new(child.terminal.take().expect("terminal")).lines();
        assert_eq!(
            lines.next_line().await.expect("read").as_deref(),
            Some("ready")
        );
        child.terminate(Duration::from_millis(300)).await;
        let report = child.wait().await.expect("wait");
        assert!(report.terminated, "{report:?}");
        assert_eq!(lines.next_line().await.expect("read to the end"), None);
        assert!(procs_of_uid(f.uid).is_empty(), "private root {with_root}");

        let mut spec = spec.clone();
        spec.limits.wall_timeout = Duration::from_secs(1);
        let start = Instant::now();
        let (report, out) = run_tty(&spec).await;
        assert!(report.timed_out, "{report:?}");
        assert!(start.elapsed() < Duration::from_secs(10), "{out}");
        assert_eq!(out, "ready\n");
        assert!(procs_of_uid(f.uid).is_empty(), "private root {with_root}");
    }
}
