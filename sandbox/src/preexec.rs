//! The code run in the child between `clone` and `exec`.
//!
//! Everything here must be async-signal-safe, and more: the child shares the parent's memory
//! while the parent's other threads (tokio) keep running (see the `launch` module), so it may
//! only make raw system calls on data prepared before the clone. No allocation, no locks, no
//! logging, no writes but the step marker. Which step is running is recorded in the marker
//! so the parent can name the failing step in its error.

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU32, Ordering};

use landlock::{RulesetCreated, RulesetStatus};

use crate::seccomp::Filters;

/// The steps of the child setup, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum Step {
    Fork = 0,
    JoinCgroup,
    Setsid,
    ControllingTerminal,
    UnshareNet,
    UnshareIpc,
    MountNs,
    DropUid,
    Pdeathsig,
    Rlimits,
    CloseFds,
    Landlock,
    NoNewPrivs,
    Seccomp,
    Exec,
}

impl Step {
    const ALL: [Step; 15] = [
        Step::Fork,
        Step::JoinCgroup,
        Step::Setsid,
        Step::ControllingTerminal,
        Step::UnshareNet,
        Step::UnshareIpc,
        Step::MountNs,
        Step::DropUid,
        Step::Pdeathsig,
        Step::Rlimits,
        Step::CloseFds,
        Step::Landlock,
        Step::NoNewPrivs,
        Step::Seccomp,
        Step::Exec,
    ];

    /// Human name used in [`crate::Error::Spawn`].
    pub(crate) fn name(self) -> &'static str {
        match self {
            Step::Fork => "fork",
            Step::JoinCgroup => "join cgroup",
            Step::Setsid => "setsid",
            Step::ControllingTerminal => "controlling terminal",
            Step::UnshareNet => "unshare network namespace",
            Step::UnshareIpc => "unshare IPC and UTS namespaces",
            Step::MountNs => "private root (mount namespace, /proc, working directory)",
            Step::DropUid => "drop uid/gid",
            Step::Pdeathsig => "parent death signal",
            Step::Rlimits => "rlimits",
            Step::CloseFds => "close inherited fds",
            Step::Landlock => "landlock",
            Step::NoNewPrivs => "no_new_privs",
            Step::Seccomp => "seccomp",
            Step::Exec => "exec",
        }
    }
}

/// Progress marker written by the child, read by the parent: the step that is running, the
/// landlock outcome ([`LandlockOutcome`]) and the errno of a failed step or `exec`. The child
/// shares the parent's memory (see the `launch` module), so plain atomics suffice.
#[derive(Debug, Default)]
pub(crate) struct SharedStep {
    step: AtomicU32,
    landlock: AtomicU32,
    errno: AtomicU32,
}

impl SharedStep {
    fn set(&self, s: Step) {
        self.step.store(s as u32, Ordering::SeqCst);
    }

    fn set_landlock(&self, o: LandlockOutcome) {
        self.landlock.store(o as u32, Ordering::SeqCst);
    }

    /// Records why the child gives up (a positive errno).
    pub(crate) fn set_errno(&self, errno: i32) {
        self.errno
            .store(u32::try_from(errno).unwrap_or(0), Ordering::SeqCst);
    }

    /// The errno the child failed with, if it failed.
    pub(crate) fn errno(&self) -> Option<i32> {
        match self.errno.load(Ordering::SeqCst) {
            0 => None,
            n => i32::try_from(n).ok(),
        }
    }

    /// What the child reported about landlock (valid once `exec` succeeded).
    pub(crate) fn landlock(&self) -> LandlockOutcome {
        match self.landlock.load(Ordering::SeqCst) {
            1 => LandlockOutcome::Full,
            2 => LandlockOutcome::Partial,
            3 => LandlockOutcome::NotEnforced,
            _ => LandlockOutcome::NotAttempted,
        }
    }

    /// The last step the child started.
    pub(crate) fn get(&self) -> Step {
        let v = self.step.load(Ordering::SeqCst) as usize;
        Step::ALL.get(v).copied().unwrap_or(Step::Fork)
    }
}

/// How landlock ended up in the child, as `RestrictionStatus::ruleset` reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum LandlockOutcome {
    /// No ruleset was applied.
    NotAttempted = 0,
    /// Every requested restriction is enforced.
    Full = 1,
    /// Only part of the ruleset is enforced (best-effort mode only).
    Partial = 2,
    /// The kernel enforced nothing (best-effort mode only).
    NotEnforced = 3,
}

/// The network namespace of the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NetSetup {
    /// The caller's (the spec allows network).
    Host,
    /// A new, empty one (`unshare`).
    New,
    /// An idle one from the pool (see the `netns` module), joined with `setns`.
    Join(RawFd),
}

/// The job's private root, entered by the child (see the `root` module).
pub(crate) struct MountSetup {
    /// The template mount namespace to `setns` into.
    pub(crate) template_ns: RawFd,
    /// Detached read-write binds and where they go.
    pub(crate) binds: Vec<(RawFd, std::ffi::CString)>,
}

/// How the child checks that its parent did not die before PDEATHSIG was armed.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ParentCheck {
    /// `getppid()` must still be this pid.
    Ppid(libc::pid_t),
    /// This pidfd of the parent process must not be readable (readable = exited).
    Pidfd(RawFd),
}

/// Everything the child needs, prepared by the parent.
pub(crate) struct ChildSetup {
    /// `cgroup.procs` files (kept open by the parent until `spawn` returns).
    pub(crate) cgroup_fds: Vec<RawFd>,
    /// Make stdout (the job's pseudo-terminal) the controlling terminal of the new session.
    pub(crate) ctty: bool,
    /// Which network namespace the job gets.
    pub(crate) netns: NetSetup,
    /// New IPC and UTS namespaces for the job.
    pub(crate) ipc_uts: bool,
    /// The private root (the child is then PID 1 of a new PID namespace).
    pub(crate) mounts: Option<MountSetup>,
    /// Working directory of the command (inside the private root when there is one).
    pub(crate) cwd: std::ffi::CString,
    /// Drop to this uid/gid.
    pub(crate) run_as: Option<(u32, u32)>,
    /// The spawning process, for the check after PDEATHSIG that it is still alive:
    /// `getppid` against its pid, or (in a new PID namespace, where `getppid` is 0) a poll
    /// of a pidfd of it.
    pub(crate) parent: ParentCheck,
    /// Write end of the init's status channel, placed at descriptor 3 before `exec`.
    pub(crate) status_fd: Option<RawFd>,
    /// Hard and soft rlimits to set.
    pub(crate) rlimits: [(libc::__rlimit_resource_t, u64); 3],
    /// The landlock ruleset to enforce.
    pub(crate) landlock: Option<RulesetCreated>,
    /// Fail unless landlock is fully enforced.
    pub(crate) strict: bool,
    /// The seccomp programs.
    pub(crate) seccomp: Option<&'static Filters>,
    /// Progress marker shared with the parent.
    pub(crate) step: SharedStep,
}

fn check(rc: libc::c_long) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl ChildSetup {
    /// Apply every layer, in order. Runs in the cloned child, on the parent's memory: raw
    /// system calls only, nothing written but the step marker (see the `launch` module).
    pub(crate) fn run(&self) -> io::Result<()> {
        self.step.set(Step::JoinCgroup);
        for &fd in &self.cgroup_fds {
            // SAFETY: fd is an open cgroup.procs file; the buffer is a 1-byte static.
            let n = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
            if n != 1 {
                return Err(io::Error::last_os_error());
            }
        }

        self.step.set(Step::Setsid);
        // SAFETY: setsid has no memory arguments.
        check(unsafe { libc::setsid() }.into())?;

        if self.ctty {
            self.step.set(Step::ControllingTerminal);
            // The session leader (the job's init, or its program) takes its terminal: the
            // job then runs in the terminal's foreground process group, and `/dev/tty` is it.
            // SAFETY: an ioctl with an integer argument on descriptor 1 (the pty slave).
            check(unsafe { libc::ioctl(1, libc::TIOCSCTTY, 0) }.into())?;
        }

        match self.netns {
            NetSetup::Host => {}
            NetSetup::New => {
                self.step.set(Step::UnshareNet);
                // SAFETY: unshare has no memory arguments.
                check(unsafe { libc::unshare(libc::CLONE_NEWNET) }.into())?;
            }
            NetSetup::Join(fd) => {
                self.step.set(Step::UnshareNet);
                // SAFETY: fd is a network namespace fd kept open by the parent.
                check(unsafe { libc::setns(fd, libc::CLONE_NEWNET) }.into())?;
            }
        }

        if self.ipc_uts {
            self.step.set(Step::UnshareIpc);
            // SAFETY: unshare has no memory arguments.
            check(unsafe { libc::unshare(libc::CLONE_NEWIPC | libc::CLONE_NEWUTS) }.into())?;
        }

        self.step.set(Step::MountNs);
        if let Some(m) = &self.mounts {
            // SAFETY: raw system calls on descriptors the parent keeps open and on
            // NUL-terminated strings it owns; the mount options are static.
            unsafe {
                check(libc::setns(m.template_ns, libc::CLONE_NEWNS).into())?;
                check(libc::unshare(libc::CLONE_NEWNS).into())?;
                for (tree, target) in &m.binds {
                    check(crate::root::attach(*tree, target))?;
                }
                let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
                let mut r = libc::mount(
                    c"proc".as_ptr(),
                    c"/proc".as_ptr(),
                    c"proc".as_ptr(),
                    flags,
                    c"hidepid=invisible".as_ptr().cast(),
                );
                if r != 0 && *libc::__errno_location() == libc::EINVAL {
                    // Before Linux 5.8: the numeric form of the same option.
                    r = libc::mount(
                        c"proc".as_ptr(),
                        c"/proc".as_ptr(),
                        c"proc".as_ptr(),
                        flags,
                        c"hidepid=2".as_ptr().cast(),
                    );
                }
                check(r.into())?;
            }
        }
        // SAFETY: cwd is a NUL-terminated string owned by the parent.
        check(unsafe { libc::chdir(self.cwd.as_ptr()) }.into())?;

        if let Some((uid, gid)) = self.run_as {
            self.step.set(Step::DropUid);
            // Raw system calls: glibc's wrappers would apply the change to every thread of
            // the parent too (setxid broadcast), since the child shares its memory.
            // SAFETY: a zero-length group list with a null pointer clears supplementary groups;
            // setresgid/setresuid take plain integers.
            unsafe {
                check(libc::syscall(
                    libc::SYS_setgroups,
                    0,
                    std::ptr::null::<libc::gid_t>(),
                ))?;
                check(libc::syscall(libc::SYS_setresgid, gid, gid, gid))?;
                check(libc::syscall(libc::SYS_setresuid, uid, uid, uid))?;
            }
        }

        self.step.set(Step::Pdeathsig);
        // SAFETY: prctl with integer arguments; getppid has none.
        unsafe {
            check(
                libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                )
                .into(),
            )?;
            let parent_gone = match self.parent {
                ParentCheck::Ppid(pid) => libc::getppid() != pid,
                ParentCheck::Pidfd(fd) => {
                    let mut p = libc::pollfd {
                        fd,
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    libc::poll(&mut p, 1, 0) != 0
                }
            };
            if parent_gone {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
        }

        self.step.set(Step::Rlimits);
        for &(res, v) in &self.rlimits {
            let lim = libc::rlimit {
                rlim_cur: v,
                rlim_max: v,
            };
            // SAFETY: lim is a valid rlimit on the stack.
            check(unsafe { libc::setrlimit(res, &lim) }.into())?;
        }

        self.step.set(Step::CloseFds);
        // SAFETY: marks every fd >= 3 close-on-exec (the std exec-error pipe keeps working).
        check(unsafe {
            libc::syscall(
                libc::SYS_close_range,
                3u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            )
        })?;
        if let Some(fd) = self.status_fd {
            // SAFETY: dup2 onto 3 clears close-on-exec there; when the pipe already is
            // descriptor 3, clear the flag by hand.
            unsafe {
                if fd == crate::init::STATUS_FD {
                    check(libc::fcntl(fd, libc::F_SETFD, 0).into())?;
                } else {
                    check(libc::dup2(fd, crate::init::STATUS_FD).into())?;
                }
            }
        }

        if let Some(ruleset) = &self.landlock {
            self.step.set(Step::Landlock);
            // SAFETY: a bitwise copy the child consumes: `RulesetCreated` owns no heap memory,
            // only the ruleset fd, and the copy's drop closes the *child's* entry for it (the
            // fd table is not shared); the parent's value stays intact and is dropped there.
            let ruleset = unsafe { std::ptr::read(ruleset) };
            match ruleset.restrict_self() {
                Ok(st) => {
                    let outcome = match st.ruleset {
                        RulesetStatus::FullyEnforced => LandlockOutcome::Full,
                        RulesetStatus::PartiallyEnforced => LandlockOutcome::Partial,
                        RulesetStatus::NotEnforced => LandlockOutcome::NotEnforced,
                    };
                    self.step.set_landlock(outcome);
                    if self.strict && outcome != LandlockOutcome::Full {
                        return Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP));
                    }
                }
                Err(_) => {
                    let e = io::Error::last_os_error();
                    return Err(if e.raw_os_error() == Some(0) {
                        io::Error::from_raw_os_error(libc::EPERM)
                    } else {
                        e
                    });
                }
            }
        }

        self.step.set(Step::NoNewPrivs);
        // SAFETY: prctl with integer arguments.
        check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) }.into())?;

        if let Some(f) = self.seccomp {
            self.step.set(Step::Seccomp);
            let prog = libc::sock_fprog {
                len: f.guard.len() as libc::c_ushort,
                filter: f.guard.as_ptr().cast_mut(),
            };
            // SAFETY: prog points at the guard program, alive in self for the duration.
            check(unsafe {
                libc::syscall(
                    libc::SYS_seccomp,
                    libc::SECCOMP_SET_MODE_FILTER,
                    0u32,
                    &prog as *const libc::sock_fprog,
                )
            })?;
            if seccompiler::apply_filter(&f.deny).is_err() {
                return Err(io::Error::last_os_error());
            }
        }
        self.step.set(Step::Exec);
        Ok(())
    }
}
