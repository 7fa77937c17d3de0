//! The code run in the child between `fork` and `exec`.
//!
//! Everything here must be async-signal-safe: the parent may have other threads (tokio), so
//! the child may only make raw system calls on data prepared before the fork. No allocation,
//! no locks, no logging. Which step is running is recorded in a shared anonymous page so the
//! parent can name the failing step in its error.

use std::io;
use std::os::fd::RawFd;
use std::ptr::NonNull;
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
    UnshareNet,
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
    const ALL: [Step; 12] = [
        Step::Fork,
        Step::JoinCgroup,
        Step::Setsid,
        Step::UnshareNet,
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
            Step::UnshareNet => "unshare network namespace",
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

/// One `u32` in a `MAP_SHARED` anonymous page, written by the child, read by the parent.
/// The second `u32` holds the landlock outcome ([`LandlockOutcome`]).
pub(crate) struct SharedStep(NonNull<[AtomicU32; 2]>);

// SAFETY: the pointer targets a private mapping owned by this value; it is only accessed
// through an AtomicU32, which is safe to share between threads and (being MAP_SHARED) with
// the forked child.
unsafe impl Send for SharedStep {}
// SAFETY: see above: all access goes through atomic operations.
unsafe impl Sync for SharedStep {}

impl SharedStep {
    /// Map one shared page.
    pub(crate) fn new() -> io::Result<Self> {
        // SAFETY: anonymous shared mapping of one page, no file, no fixed address.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let p = NonNull::new(p.cast::<[AtomicU32; 2]>()).ok_or_else(io::Error::last_os_error)?;
        Ok(Self(p))
    }

    fn atomic(&self) -> &[AtomicU32; 2] {
        // SAFETY: the page is mapped for the lifetime of self, zero-initialised (a valid
        // AtomicU32 pair), page-aligned.
        unsafe { self.0.as_ref() }
    }

    fn set(&self, s: Step) {
        self.atomic()[0].store(s as u32, Ordering::SeqCst);
    }

    fn set_landlock(&self, o: LandlockOutcome) {
        self.atomic()[1].store(o as u32, Ordering::SeqCst);
    }

    /// What the child reported about landlock (valid once `exec` succeeded).
    pub(crate) fn landlock(&self) -> LandlockOutcome {
        match self.atomic()[1].load(Ordering::SeqCst) {
            1 => LandlockOutcome::Full,
            2 => LandlockOutcome::Partial,
            3 => LandlockOutcome::NotEnforced,
            _ => LandlockOutcome::NotAttempted,
        }
    }

    /// The last step the child started.
    pub(crate) fn get(&self) -> Step {
        let v = self.atomic()[0].load(Ordering::SeqCst) as usize;
        Step::ALL.get(v).copied().unwrap_or(Step::Fork)
    }
}

impl Drop for SharedStep {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the page mapped in new(); no reference outlives self.
        unsafe { libc::munmap(self.0.as_ptr().cast(), 4096) };
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

/// Everything the child needs, prepared by the parent.
pub(crate) struct ChildSetup {
    /// `cgroup.procs` files (kept open by the parent until `spawn` returns).
    pub(crate) cgroup_fds: Vec<RawFd>,
    /// Create a private network namespace.
    pub(crate) new_netns: bool,
    /// Drop to this uid/gid.
    pub(crate) run_as: Option<(u32, u32)>,
    /// The spawning process, for the `getppid` check after PDEATHSIG.
    pub(crate) parent_pid: libc::pid_t,
    /// Hard and soft rlimits to set.
    pub(crate) rlimits: [(libc::__rlimit_resource_t, u64); 3],
    /// The landlock ruleset to enforce.
    pub(crate) landlock: Option<RulesetCreated>,
    /// Fail unless landlock is fully enforced.
    pub(crate) strict: bool,
    /// The seccomp programs.
    pub(crate) seccomp: Option<&'static Filters>,
    /// Progress marker shared with the parent.
    pub(crate) step: std::sync::Arc<SharedStep>,
}

fn check(rc: libc::c_long) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl ChildSetup {
    /// Apply every layer, in order. Runs in the forked child: raw syscalls only.
    pub(crate) fn run(&mut self) -> io::Result<()> {
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

        if self.new_netns {
            self.step.set(Step::UnshareNet);
            // SAFETY: unshare has no memory arguments.
            check(unsafe { libc::unshare(libc::CLONE_NEWNET) }.into())?;
        }

        if let Some((uid, gid)) = self.run_as {
            self.step.set(Step::DropUid);
            // SAFETY: a zero-length group list with a null pointer clears supplementary groups;
            // setresgid/setresuid take plain integers.
            unsafe {
                check(libc::setgroups(0, std::ptr::null()).into())?;
                check(libc::setresgid(gid, gid, gid).into())?;
                check(libc::setresuid(uid, uid, uid).into())?;
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
            if libc::getppid() != self.parent_pid {
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

        if let Some(ruleset) = self.landlock.take() {
            self.step.set(Step::Landlock);
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
