//! Launch one command under limits and isolation, and report how it ended.
//!
//! The sandbox knows nothing about jobs, hubs or networks: it takes a [`Spec`] (argv, cwd,
//! environment, [`Limits`], filesystem policy, network on/off, uid/gid, [`Mode`]) and
//! returns a [`Child`] with stdout/stderr pipes, or with [`Spec::terminal`] the master of
//! its pseudo-terminal. [`Child::wait`] enforces the wall timeout,
//! kills the *whole* job cgroup once the main process ends, reaps everything, and returns a
//! [`Report`] (exit code or signal, OOM, timeout, wall and CPU time, peak memory, layers).
//!
//! # Layers, in the order they are applied in the child (between `clone` and `exec`)
//! 1. join the job cgroup (memory, pids, cpu; v1 or v2) by writing `0` to `cgroup.procs`
//!    files opened by the parent (so no fork can escape the limits);
//! 2. `setsid` (new session, no controlling tty), then with [`Spec::terminal`] `TIOCSCTTY`
//!    on the job's pseudo-terminal (its controlling terminal);
//! 3. a private network namespace when `spec.network` is false (only a down `lo`):
//!    `unshare(CLONE_NEWNET)`, or `setns` into an idle one an earlier job left once its
//!    cgroup was empty (strict mode with landlock scopes only; the `netns` module says why
//!    that is safe);
//! 4. new IPC and UTS namespaces;
//! 5. with a [`Root`]: the job's mount namespace (a copy of the root's template, see the
//!    `root` module), its read-write binds, its devpts instance at `/dev/pts` when it has a
//!    terminal, a `/proc` of its PID namespace (the child was cloned into a new one), and the
//!    working directory;
//! 6. drop to `spec.run_as` (`setgroups`, `setresgid`, `setresuid`);
//! 7. `PR_SET_PDEATHSIG(SIGKILL)` (after the uid drop, which clears it) plus a check that the
//!    caller is still alive (`getppid`, or a pidfd of it in a new PID namespace);
//! 8. rlimits (core 0, file size, open files);
//! 9. every inherited fd above 2 marked close-on-exec (`close_range`);
//! 10. landlock (system paths, or the private root, read-only; job dir + tmp read-write; TCP
//!     denied without network; abstract-unix-socket and signal scopes), which also sets
//!     `no_new_privs`;
//! 11. seccomp-bpf deny list modelled on Docker's default profile, applied last;
//! 12. `exec` of the program, or with a [`Root`] of `cmdx-init` (the `init` module), PID 1 of
//!     the job's namespace, which starts the program as its child.
//!
//! Everything the child needs is prepared in the parent: the child, started with
//! `clone(CLONE_VM | CLONE_VFORK)` on the parent's memory (the `launch` module), only makes
//! raw system calls until `exec` (no allocation, no locks, no glibc setxid wrappers).
//!
//! The disk cap is a [`Workspace`]: a size-limited tmpfs holding the job dir and its private
//! tmp (tmpfs pages are also charged to the writer's memory cgroup).
//!
//! # Cgroups
//! Job cgroups live under `cmdx/` of each v1 controller mount (memory, pids, cpu, cpuacct,
//! freezer), or on v2 in a `cmdx` sibling of the caller's cgroup with memory, pids and cpu
//! enabled in `subtree_control` (if the caller sits on that path, e.g. at the root of a
//! container's cgroup namespace, it moves itself into a `cmdx-agent` leaf first);
//! [`set_cgroup_parent`] overrides the location (process-wide); [`Spec::cgroup_group`] puts
//! a job one level deeper, in a group of its caller (`cmdx/<group>/<job>`), so a restarted
//! caller can kill what its crashed predecessor left with [`kill_cgroup_group`]. Directories,
//! limits and statistics go through `cgroups-rs`; detection, joining and killing are
//! hand-written (the `cgroup` module says why). When the main process ends (or the wall
//! timeout expires) the whole cgroup is killed (v2 `cgroup.kill`; v1 freeze, SIGKILL every
//! pid, thaw, repeated until empty) and every process is reaped: the first [`spawn`] makes
//! this process a child subreaper, and orphans of a job are reaped by pid, never with
//! `waitpid(-1)`, so other children of the caller are left alone.
//!
//! # What the caller must know
//! - Read a [`Child`]'s pipes (or terminal) concurrently with [`Child::wait`].
//! - Call [`spawn`] from a long-lived thread (a runtime worker): `PR_SET_PDEATHSIG` fires
//!   when the spawning *thread* exits.
//! - Give every concurrent job its own `run_as` uid. Without a [`Root`], every ancestor of a
//!   workspace's parent must be traversable (`o+x`) by that uid, and `/proc` is the host's:
//!   other processes' `environ` and `mem` are not readable (different uid), but every
//!   process's command line is. With a [`Root`] the job sees its own processes and its binds
//!   only, and the host path of a bind is never walked by the job's uid.
#![warn(missing_docs)]

mod caps;
mod cgroup;
mod child;
mod error;
mod fs_policy;
mod init;
mod launch;
mod netns;
mod preexec;
mod pty;
mod root;
mod seccomp;
mod workspace;

use std::path::PathBuf;
use std::time::Duration;

pub use caps::{Capabilities, CgroupVersion, LANDLOCK_ABI_MAX_ENV, probe, set_cgroup_parent};
pub use child::{Child, Report, spawn};
pub use error::{Error, Result};
pub use pty::{MAX_PTYS, Resizer, Terminal, TerminalSize};
pub use root::{Bind, Root, release_template};
pub use workspace::Workspace;

/// Whether `group` can name a cgroup group ([`Spec::cgroup_group`]): 1 to 200 bytes, a plain
/// directory name (no `/`, NUL, `.` or `..`).
pub fn valid_cgroup_group(group: &str) -> bool {
    !group.is_empty()
        && group.len() <= 200
        && group != "."
        && group != ".."
        && !group.contains('/')
        && !group.contains('\0')
}

/// Kill every process left in the job cgroups of `group` (see [`Spec::cgroup_group`]) and
/// remove those cgroups and the group itself: what a caller that crashed (`kill -9`) left
/// behind, since `PR_SET_PDEATHSIG` reaches only each job's main process. Call it before
/// spawning jobs in `group`, never while jobs of the group run. Returns how many job cgroups
/// were removed (0 when there is no cgroup layer or nothing was left).
pub fn kill_cgroup_group(group: &str) -> Result<usize> {
    if !valid_cgroup_group(group) {
        return Err(Error::InvalidSpec(format!(
            "cgroup group {group:?} is not a plain directory name"
        )));
    }
    match &caps::caps().hierarchy {
        Some(h) => cgroup::kill_group(h, group, Duration::from_secs(10)),
        None => Ok(0),
    }
}

/// What to do when an isolation layer is not available on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// [`spawn`] fails with [`Error::MissingLayers`] if any layer the spec needs is missing.
    #[default]
    Strict,
    /// Apply whatever is available; the missing layers are logged and absent from
    /// [`Child::layers`].
    BestEffort,
}

/// Resource limits of one job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Memory cgroup limit (RAM, plus tmpfs pages written by the job); swap is not allowed.
    pub memory_bytes: u64,
    /// Maximum number of processes and threads alive at once in the job cgroup.
    pub pids: u64,
    /// CPU share in millicores: 1000 = one full core, 500 = half a core.
    pub cpu_millis: u32,
    /// Wall-clock limit from spawn; [`Child::wait`] kills the job when it is exceeded.
    pub wall_timeout: Duration,
    /// `RLIMIT_FSIZE`: largest file the job may write (SIGXFSZ / EFBIG beyond).
    pub file_size_bytes: u64,
    /// `RLIMIT_NOFILE`: open file descriptors per process.
    pub open_files: u64,
    /// Size of the [`Workspace`] tmpfs (job dir + tmp together); used by the caller when it
    /// creates the workspace.
    pub disk_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_bytes: 512 << 20,
            pids: 256,
            cpu_millis: 1000,
            wall_timeout: Duration::from_secs(600),
            file_size_bytes: 1 << 30,
            open_files: 1024,
            disk_bytes: 1 << 30,
        }
    }
}

/// Everything needed to start one sandboxed command.
#[derive(Clone, PartialEq, Eq)]
pub struct Spec {
    /// Absolute path of the program to execute (no `PATH` lookup), e.g. `/bin/sh`.
    pub program: PathBuf,
    /// Arguments after `argv[0]` (which is set to `program`), e.g. `["-c", cmd]`.
    pub args: Vec<String>,
    /// Working directory of the command (normally the workspace's job dir).
    pub cwd: PathBuf,
    /// The complete environment of the command; nothing is inherited from the caller.
    pub env: Vec<(String, String)>,
    /// Resource limits.
    pub limits: Limits,
    /// Paths the command may read and execute but not modify
    /// (see [`Spec::system_read_only_paths`]). Paths that do not exist are skipped.
    pub read_only_paths: Vec<PathBuf>,
    /// Paths the command may read, write, create and delete in (job dir + private tmp).
    /// `/dev/null`, `/dev/zero`, `/dev/full`, `/dev/random` and `/dev/urandom` are always
    /// usable as files.
    pub read_write_paths: Vec<PathBuf>,
    /// `false` puts the command in its own empty network namespace (and denies TCP through
    /// landlock as a second layer).
    pub network: bool,
    /// `(uid, gid)` to drop to (supplementary groups cleared). Required in
    /// [`Mode::Strict`] when the caller is root. Give every concurrent job its own uid so
    /// jobs cannot signal or trace each other.
    pub run_as: Option<(u32, u32)>,
    /// Whether a missing layer is an error.
    pub mode: Mode,
    /// Sub-group of the job cgroup parent this job's cgroup is created in
    /// (`<parent>/<group>/<job>`; a plain name, no `/`). One group per caller (e.g. per
    /// agent) lets a restarted caller find and kill what its crashed predecessor left with
    /// [`kill_cgroup_group`]; the parent itself ([`set_cgroup_parent`]) is process-global.
    /// `None`: directly under the parent.
    pub cgroup_group: Option<String>,
    /// The job's own root (see [`Root`]): with it the command starts as the child of a tiny
    /// init that is PID 1 of a new PID namespace, in a new mount namespace that holds only
    /// the root's binds, a `/proc` of its own and a minimal `/dev`; `cwd` and `program` are
    /// then paths inside that root, and landlock grants reads on that root (all of it) and
    /// writes on the read-write binds, instead of `read_only_paths` and `read_write_paths`.
    /// `None`: the host's tree, behind landlock.
    pub root: Option<Root>,
    /// Run the command in a pseudo-terminal of this size (see the `pty` module): stdout and
    /// stderr are the terminal, which is also the job's controlling terminal, and reach the
    /// caller as one ordered stream ([`Child::terminal`]); stdin stays `/dev/null`. On a
    /// devpts instance of the job's own (at `/dev/pts` in a [`Root`]). `None`: stdout and
    /// stderr on pipes of their own ([`Child::stdout`], [`Child::stderr`]). The environment
    /// (`TERM`, `COLUMNS`, `LINES`) is the caller's to set.
    pub terminal: Option<TerminalSize>,
}

impl std::fmt::Debug for Spec {
    // Hand-written: the environment may hold secrets, only its variable names are shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spec")
            .field("program", &self.program)
            .field("args", &self.args)
            .field("cwd", &self.cwd)
            .field(
                "env_names",
                &self.env.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .field("limits", &self.limits)
            .field("read_only_paths", &self.read_only_paths)
            .field("read_write_paths", &self.read_write_paths)
            .field("network", &self.network)
            .field("run_as", &self.run_as)
            .field("mode", &self.mode)
            .field("cgroup_group", &self.cgroup_group)
            .field("root", &self.root)
            .field("terminal", &self.terminal)
            .finish()
    }
}

impl Spec {
    /// A spec with the defaults: no network, system paths read-only, `cwd` read-write,
    /// default limits, empty environment, no uid drop, [`Mode::Strict`].
    pub fn new(program: impl Into<PathBuf>, args: Vec<String>, cwd: impl Into<PathBuf>) -> Self {
        let cwd = cwd.into();
        Self {
            program: program.into(),
            args,
            read_write_paths: vec![cwd.clone()],
            cwd,
            env: Vec::new(),
            limits: Limits::default(),
            read_only_paths: Self::system_read_only_paths(),
            network: false,
            run_as: None,
            mode: Mode::Strict,
            cgroup_group: None,
            root: None,
            terminal: None,
        }
    }

    /// System paths a shell and ordinary tools need to read: `/usr`, `/bin`, `/sbin`, `/lib*`,
    /// `/etc` and `/proc`.
    ///
    /// `/etc` is readable as a whole (`sh` needs `/etc/passwd`, resolvers need `/etc/hosts`);
    /// secrets such as `/etc/shadow` (mode 0640 root:shadow) are protected by the uid drop,
    /// not by landlock. `/proc` is readable, but another uid's `/proc/<pid>/environ` or `mem`
    /// is not.
    pub fn system_read_only_paths() -> Vec<PathBuf> {
        [
            "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/proc",
        ]
        .iter()
        .map(PathBuf::from)
        .collect()
    }
}
