//! Starting a job's main process with `clone(CLONE_VM | CLONE_VFORK | CLONE_PIDFD)` instead
//! of `fork`, and waiting for it through its pidfd.
//!
//! Why not `fork` (what `std`/`tokio::process::Command` do once a `pre_exec` closure is set):
//! `fork` copies the caller's page tables, and every page the child touches before `exec`
//! (its stack, the step marker, libc state) is then copied on write; `exec` throws it all
//! away. For a short job that was the largest single cost of a start (profile of
//! `loadtest sandbox`: page-table copy in the agent plus copy-on-write faults in the child).
//! With `CLONE_VM` the child runs on the parent's memory, on a stack of its own, and the
//! calling thread sleeps until the child has called `exec` or exited (`CLONE_VFORK`), as
//! glibc's `posix_spawn` does.
//!
//! # Rules for the code the child runs
//! The child shares the parent's memory while other parent threads keep running, so on top
//! of the `fork` rules (no allocation, no locks):
//! - nothing may be freed or written except the child's own stack and the shared step page;
//! - no glibc wrapper that acts on "the process" through the thread list: `setresuid`,
//!   `setresgid` and `setgroups` would signal every *parent* thread (glibc's setxid
//!   broadcast), so the child uses the raw system calls, which change only the calling task;
//! - all signals are blocked around `clone`; the child resets every caught signal to its
//!   default before it unblocks them, so no parent handler ever runs on the child's stack;
//! - it ends with `exec` or `_exit`, never `exit` (no atexit handlers, no stdio flush).
//!
//! Everything else is per task in the kernel and not shared by `CLONE_VM` (no `CLONE_FILES`,
//! `CLONE_FS`, `CLONE_SIGHAND` or `CLONE_THREAD`): the fd table, cwd, credentials,
//! namespaces, rlimits, landlock domain and seccomp filters of the child are its own.

use std::ffi::{CString, c_char, c_int, c_void};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use tokio::io::unix::AsyncFd;
use tokio::process::{ChildStderr, ChildStdout};

use crate::preexec::{ChildSetup, Step};

/// Stack of the cloned child until `exec`: the setup makes a few shallow calls only.
const CHILD_STACK: usize = 128 << 10;

/// `argv`, `envp`, program and cwd as C strings, built before the clone.
pub(crate) struct Prepared {
    program: CString,
    cwd: CString,
    _strings: Vec<CString>,
    argv: Vec<*const c_char>,
    envp: Vec<*const c_char>,
}

// SAFETY: the raw pointers point into `_strings`, owned by the same value and never mutated.
unsafe impl Send for Prepared {}

impl Prepared {
    /// Converts the command line; the caller has already rejected NUL bytes.
    pub(crate) fn new(
        program: &std::path::Path,
        args: &[String],
        env: &[(String, String)],
        cwd: &std::path::Path,
    ) -> io::Result<Self> {
        let c = |b: &[u8]| CString::new(b).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL));
        let program = c(program.as_os_str().as_encoded_bytes())?;
        let cwd = c(cwd.as_os_str().as_encoded_bytes())?;
        let mut strings = Vec::with_capacity(1 + args.len() + env.len());
        strings.push(program.clone());
        for a in args {
            strings.push(c(a.as_bytes())?);
        }
        for (k, v) in env {
            strings.push(c(format!("{k}={v}").as_bytes())?);
        }
        let n_argv = 1 + args.len();
        let mut argv: Vec<*const c_char> = strings[..n_argv].iter().map(|s| s.as_ptr()).collect();
        argv.push(std::ptr::null());
        let mut envp: Vec<*const c_char> = strings[n_argv..].iter().map(|s| s.as_ptr()).collect();
        envp.push(std::ptr::null());
        Ok(Self {
            program,
            cwd,
            _strings: strings,
            argv,
            envp,
        })
    }
}

/// What the child reads: all of it prepared and owned by the parent thread, which sleeps
/// until the child has called `exec` or exited.
struct ChildCtx<'a> {
    setup: &'a ChildSetup,
    prep: &'a Prepared,
    stdin: RawFd,
    stdout: RawFd,
    stderr: RawFd,
}

/// The running main process: its pid and a pidfd that becomes readable when it exits.
#[derive(Debug)]
pub(crate) struct MainProcess {
    pid: i32,
    pidfd: AsyncFd<OwnedFd>,
    status: Option<ExitStatus>,
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as c_int; 2];
    // SAFETY: fds is a valid two-int array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 returned two new descriptors owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Starts the child: stdin `/dev/null`, stdout and stderr piped, `setup` applied, then
/// `exec`. Returns the process and the read ends of its pipes, or the step that failed.
/// Must run inside a tokio runtime (the pidfd and pipes are registered with it).
pub(crate) fn spawn(
    prep: &Prepared,
    setup: &ChildSetup,
) -> Result<(MainProcess, ChildStdout, ChildStderr), (Step, io::Error)> {
    let fork_err = |e| (Step::Fork, e);
    let devnull = std::fs::File::open("/dev/null").map_err(fork_err)?;
    let (out_r, out_w) = pipe().map_err(fork_err)?;
    let (err_r, err_w) = pipe().map_err(fork_err)?;
    let ctx = ChildCtx {
        setup,
        prep,
        stdin: devnull.as_raw_fd(),
        stdout: out_w.as_raw_fd(),
        stderr: err_w.as_raw_fd(),
    };
    let mut stack: Vec<u8> = Vec::with_capacity(CHILD_STACK);
    // The stack grows down from its 16-byte aligned top.
    let top = (stack.as_mut_ptr() as usize + CHILD_STACK) & !15;
    let mut pidfd: c_int = -1;
    // SAFETY: sigset_t is plain data; sigfillset/pthread_sigmask only write to them.
    let pid = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        // SAFETY: the child runs `child_main` on its own stack (`stack`, alive until clone
        // returns, which with CLONE_VFORK is after the child's exec or exit) and only reads
        // `ctx`, which outlives that too; see the module docs for what it may do.
        let pid = libc::clone(
            child_main,
            top as *mut c_void,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PIDFD | libc::SIGCHLD,
            std::ptr::from_ref(&ctx).cast_mut().cast::<c_void>(),
            &mut pidfd as *mut c_int,
        );
        let clone_err = io::Error::last_os_error();
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        if pid < 0 {
            return Err((Step::Fork, clone_err));
        }
        pid
    };
    drop(stack);
    drop((out_w, err_w, devnull));
    // SAFETY: CLONE_PIDFD stored a new close-on-exec pidfd that nobody else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    if let Some(errno) = setup.step.errno() {
        // The child failed before or at exec and has exited: reap it.
        let mut st = 0;
        // SAFETY: pid is our unreaped child.
        unsafe { libc::waitpid(pid, &mut st, 0) };
        return Err((setup.step.get(), io::Error::from_raw_os_error(errno)));
    }
    let finish = || -> io::Result<_> {
        let stdout = ChildStdout::from_std(std::process::ChildStdout::from(out_r))?;
        let stderr = ChildStderr::from_std(std::process::ChildStderr::from(err_r))?;
        // SAFETY: the AsyncFd owns the pidfd, so it stays open and the same for its lifetime.
        let pidfd =
            unsafe { AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE) }
                .map_err(io::Error::from)?;
        Ok((stdout, stderr, pidfd))
    };
    match finish() {
        Ok((stdout, stderr, pidfd)) => Ok((
            MainProcess {
                pid,
                pidfd,
                status: None,
            },
            stdout,
            stderr,
        )),
        Err(e) => {
            // SAFETY: kill and reap our own unreaped child (nobody else waits for it).
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
            Err((Step::Exec, e))
        }
    }
}

/// Runs in the cloned child, on its own stack, sharing the parent's memory.
extern "C" fn child_main(arg: *mut c_void) -> c_int {
    // SAFETY: arg is the ChildCtx the parent passed; it stays alive until we exec or exit.
    let ctx = unsafe { &*arg.cast::<ChildCtx<'_>>() };
    let r = child_setup(ctx);
    let e = match r {
        Ok(()) => {
            // SAFETY: NUL-terminated strings and NULL-terminated arrays owned by the parent.
            unsafe {
                libc::execve(
                    ctx.prep.program.as_ptr(),
                    ctx.prep.argv.as_ptr(),
                    ctx.prep.envp.as_ptr(),
                )
            };
            io::Error::last_os_error()
        }
        Err(e) => e,
    };
    ctx.setup
        .step
        .set_errno(e.raw_os_error().filter(|&n| n != 0).unwrap_or(libc::EIO));
    // SAFETY: _exit ends the child without running any handler of the parent.
    unsafe { libc::_exit(127) }
}

fn child_setup(ctx: &ChildCtx<'_>) -> io::Result<()> {
    // SAFETY: plain system calls on integers and on sigaction structs on our own stack.
    unsafe {
        // No parent handler may run in the child: caught signals go back to their default
        // (ignored ones stay ignored, except SIGPIPE, as std's spawn does).
        for sig in 1..=libc::SIGRTMAX() {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut old) != 0 {
                continue;
            }
            if old.sa_sigaction == libc::SIG_DFL
                || (old.sa_sigaction == libc::SIG_IGN && sig != libc::SIGPIPE)
            {
                continue;
            }
            let mut dfl: libc::sigaction = std::mem::zeroed();
            dfl.sa_sigaction = libc::SIG_DFL;
            libc::sigaction(sig, &dfl, std::ptr::null_mut());
        }
        for (from, to) in [(ctx.stdin, 0), (ctx.stdout, 1), (ctx.stderr, 2)] {
            if libc::dup2(from, to) < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        if libc::chdir(ctx.prep.cwd.as_ptr()) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    ctx.setup.run()?;
    // The raw call: glibc's wrapper keeps its internal signals (32, 33) out of any change,
    // and the mask is inherited by the program we exec. The kernel's set is 8 bytes.
    let none: u64 = 0;
    // SAFETY: rt_sigprocmask reads 8 bytes from `none`, on our stack.
    check(unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &none as *const u64,
            std::ptr::null_mut::<u64>(),
            8usize,
        )
    })?;
    Ok(())
}

fn check(rc: libc::c_long) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `waitpid(pid, WNOHANG)`: the status once the process has ended.
fn try_reap(pid: i32) -> io::Result<Option<ExitStatus>> {
    let mut st = 0;
    loop {
        // SAFETY: waitpid on our own child with a valid status pointer.
        let r = unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG) };
        if r == pid {
            return Ok(Some(ExitStatus::from_raw(st)));
        }
        if r == 0 {
            return Ok(None);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

impl MainProcess {
    /// Pid of the process.
    pub(crate) fn pid(&self) -> i32 {
        self.pid
    }

    /// Waits for the process to end and reaps it (cancel-safe; the status is kept).
    pub(crate) async fn wait(&mut self) -> io::Result<ExitStatus> {
        if let Some(st) = self.status {
            return Ok(st);
        }
        loop {
            if let Some(st) = try_reap(self.pid)? {
                self.status = Some(st);
                return Ok(st);
            }
            let mut ready = self.pidfd.readable().await?;
            if let Some(st) = try_reap(self.pid)? {
                self.status = Some(st);
                return Ok(st);
            }
            ready.clear_ready();
        }
    }

    /// Blocks until the process has ended and reaps it, through the pidfd so a recycled pid
    /// is never waited for (for the drop path, off the runtime). Returns at once if someone
    /// else reaped it.
    pub(crate) fn wait_blocking(&mut self) {
        if self.status.is_some() {
            return;
        }
        loop {
            // SAFETY: siginfo_t is plain data; waitid writes into it. P_PIDFD is 3.
            let r = unsafe {
                let mut info: libc::siginfo_t = std::mem::zeroed();
                libc::waitid(
                    3,
                    self.pidfd.get_ref().as_raw_fd() as libc::id_t,
                    &mut info,
                    libc::WEXITED,
                )
            };
            if r == 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                return;
            }
        }
    }
}
