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
    _strings: Vec<CString>,
    argv: Vec<*const c_char>,
    /// `cmdx-init PROGRAM ARGS...`: the argv when the job runs under its init.
    init_argv: Vec<*const c_char>,
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
    ) -> io::Result<Self> {
        let c = |b: &[u8]| CString::new(b).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL));
        let program = c(program.as_os_str().as_encoded_bytes())?;
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
        let mut init_argv = Vec::with_capacity(argv.len() + 1);
        init_argv.push(crate::init::NAME.as_ptr());
        init_argv.extend_from_slice(&argv);
        let mut envp: Vec<*const c_char> = strings[n_argv..].iter().map(|s| s.as_ptr()).collect();
        envp.push(std::ptr::null());
        Ok(Self {
            program,
            _strings: strings,
            argv,
            init_argv,
            envp,
        })
    }
}

/// The init to start instead of the program (see the `init` module).
pub(crate) struct InitLaunch {
    /// The init executable (sealed memfd).
    pub(crate) program: RawFd,
    /// Read end of the status channel.
    pub(crate) status_rx: OwnedFd,
    /// Write end of the status channel (`ChildSetup::status_fd`), closed here once the
    /// child has started.
    pub(crate) status_tx: OwnedFd,
}

/// What the child reads: all of it prepared and owned by the parent thread, which sleeps
/// until the child has called `exec` or exited.
struct ChildCtx<'a> {
    setup: &'a ChildSetup,
    prep: &'a Prepared,
    /// The init executable (a memfd) to `execveat` instead of the program.
    init_fd: Option<RawFd>,
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
    /// The init's status channel (see the `init` module) when the process is the job's
    /// init: the job's main process ended when its record arrives.
    init: Option<InitChannel>,
    /// Whether `pid` itself has been reaped.
    reaped: bool,
}

/// The read end of an init's status channel and the record read so far.
#[derive(Debug)]
struct InitChannel {
    rx: tokio::net::unix::pipe::Receiver,
    buf: [u8; 8],
    len: usize,
}

pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as c_int; 2];
    // SAFETY: fds is a valid two-int array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 returned two new descriptors owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The read ends of a job's stdout and stderr pipes.
pub(crate) type Pipes = (ChildStdout, ChildStderr);

/// Starts the child: stdin `/dev/null`, stdout and stderr piped, or both on `terminal`
/// (the slave of the job's pseudo-terminal, which `setup.ctty` makes its controlling
/// terminal), `setup` applied, then `exec` (of the program, or of the init in a new PID
/// namespace when `setup.mounts` is set and `status` is the read end of the pipe whose write
/// end is `setup.status_fd`). Returns the process and the read ends of its pipes (none with
/// a terminal), or the step that failed. Must run inside a tokio runtime (the pidfd and
/// pipes are registered with it).
pub(crate) fn spawn(
    prep: &Prepared,
    setup: &ChildSetup,
    init: Option<InitLaunch>,
    terminal: Option<RawFd>,
) -> Result<(MainProcess, Option<Pipes>), (Step, io::Error)> {
    let fork_err = |e| (Step::Fork, e);
    let (init_fd, status_rx, status_tx) = match init {
        Some(i) => (Some(i.program), Some(i.status_rx), Some(i.status_tx)),
        None => (None, None, None),
    };
    let devnull = std::fs::File::open("/dev/null").map_err(fork_err)?;
    let pipes = match terminal {
        Some(_) => None,
        None => Some((pipe().map_err(fork_err)?, pipe().map_err(fork_err)?)),
    };
    let (stdout, stderr) = match (&pipes, terminal) {
        (Some(((_, out_w), (_, err_w))), _) => (out_w.as_raw_fd(), err_w.as_raw_fd()),
        (None, Some(slave)) => (slave, slave),
        (None, None) => unreachable!("pipes are made when there is no terminal"),
    };
    let ctx = ChildCtx {
        setup,
        prep,
        init_fd,
        stdin: devnull.as_raw_fd(),
        stdout,
        stderr,
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
        let pidns = if init_fd.is_some() {
            libc::CLONE_NEWPID
        } else {
            0
        };
        let pid = libc::clone(
            child_main,
            top as *mut c_void,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PIDFD | libc::SIGCHLD | pidns,
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
    // Our copy of the status channel's write end goes now: the channel ends (EOF) when the
    // init does.
    let pipes = pipes.map(|((out_r, out_w), (err_r, err_w))| {
        drop((out_w, err_w));
        (out_r, err_r)
    });
    drop((devnull, status_tx));
    // SAFETY: CLONE_PIDFD stored a new close-on-exec pidfd that nobody else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    if let Some(errno) = setup.step.errno() {
        // The child failed before or at exec and has exited: reap it.
        let mut st = 0;
        // SAFETY: pid is our unreaped child.
        unsafe { libc::waitpid(pid, &mut st, 0) };
        return Err((setup.step.get(), io::Error::from_raw_os_error(errno)));
    }
    let mut init = None;
    if let Some(rx) = status_rx {
        // The init is running: wait for the job's own exec (the init's first record).
        let mut file = std::fs::File::from(rx);
        let exec = crate::init::read_exec_record(&mut file);
        if !matches!(exec, Ok(None)) {
            let errno = match exec {
                Ok(Some(e)) => e,
                Ok(None) => 0,
                Err(e) => e.raw_os_error().unwrap_or(libc::EIO),
            };
            // SAFETY: kill and reap our own unreaped child (nobody else waits for it).
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
            return Err((Step::Exec, io::Error::from_raw_os_error(errno)));
        }
        init = Some(file);
    }
    let finish = || -> io::Result<_> {
        let init = match init {
            Some(file) => Some(InitChannel {
                rx: tokio::net::unix::pipe::Receiver::from_owned_fd(OwnedFd::from(file))?,
                buf: [0; 8],
                len: 0,
            }),
            None => None,
        };
        let pipes = match pipes {
            Some((out_r, err_r)) => Some((
                ChildStdout::from_std(std::process::ChildStdout::from(out_r))?,
                ChildStderr::from_std(std::process::ChildStderr::from(err_r))?,
            )),
            None => None,
        };
        // SAFETY: the AsyncFd owns the pidfd, so it stays open and the same for its lifetime.
        let pidfd =
            unsafe { AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE) }
                .map_err(io::Error::from)?;
        Ok((pipes, pidfd, init))
    };
    match finish() {
        Ok((pipes, pidfd, init)) => Ok((
            MainProcess {
                pid,
                pidfd,
                status: None,
                init,
                reaped: false,
            },
            pipes,
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
            // SAFETY: NUL-terminated strings and NULL-terminated arrays owned by the parent;
            // the init descriptor is a sealed memfd the parent keeps open.
            unsafe {
                match ctx.init_fd {
                    Some(fd) => libc::syscall(
                        libc::SYS_execveat,
                        fd,
                        c"".as_ptr(),
                        ctx.prep.init_argv.as_ptr(),
                        ctx.prep.envp.as_ptr(),
                        libc::AT_EMPTY_PATH,
                    ) as c_int,
                    None => libc::execve(
                        ctx.prep.program.as_ptr(),
                        ctx.prep.argv.as_ptr(),
                        ctx.prep.envp.as_ptr(),
                    ),
                }
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

    /// Waits for the job's main process to end (cancel-safe; the status is kept): the
    /// process itself, reaped here, or, under an init, the program the init started (the
    /// init reports it and is reaped later with [`MainProcess::reap`] or by the orphan
    /// reaper). An init that dies without a report (killed) stands for its program.
    pub(crate) async fn wait(&mut self) -> io::Result<ExitStatus> {
        if let Some(st) = self.status {
            return Ok(st);
        }
        if let Some(ch) = &mut self.init {
            use tokio::io::AsyncReadExt as _;
            while ch.len < ch.buf.len() {
                let n = ch.rx.read(&mut ch.buf[ch.len..]).await?;
                if n == 0 {
                    break;
                }
                ch.len += n;
            }
            let rec = (ch.len == ch.buf.len())
                .then(|| crate::init::decode(ch.buf))
                .flatten();
            self.init = None;
            if let Some(crate::init::Record::Exit(raw)) = rec {
                let st = ExitStatus::from_raw(raw);
                self.status = Some(st);
                return Ok(st);
            }
        }
        loop {
            if let Some(st) = try_reap(self.pid)? {
                self.reaped = true;
                self.status = Some(st);
                return Ok(st);
            }
            let mut ready = self.pidfd.readable().await?;
            if let Some(st) = try_reap(self.pid)? {
                self.reaped = true;
                self.status = Some(st);
                return Ok(st);
            }
            ready.clear_ready();
        }
    }

    /// Waits until the process itself has ended and reaps it (an init exits right after
    /// reporting its program's end). Cancel-safe.
    pub(crate) async fn wait_exit(&mut self) -> io::Result<()> {
        loop {
            self.reap();
            if self.reaped {
                return Ok(());
            }
            let mut ready = self.pidfd.readable().await?;
            if !matches!(try_reap(self.pid), Ok(None)) {
                self.reaped = true;
                return Ok(());
            }
            ready.clear_ready();
        }
    }

    /// Reaps the process if it has ended and nobody reaped it yet (an init whose program's
    /// status came through the channel). Never blocks.
    pub(crate) fn reap(&mut self) {
        if !self.reaped && !matches!(try_reap(self.pid), Ok(None)) {
            self.reaped = true;
        }
    }

    /// Blocks until the process has ended and reaps it, through the pidfd so a recycled pid
    /// is never waited for (for the drop path, off the runtime). Returns at once if someone
    /// else reaped it.
    pub(crate) fn wait_blocking(&mut self) {
        if self.reaped {
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
                self.reaped = true;
                return;
            }
        }
    }
}
