//! Spawning a sandboxed command, and the handle to wait for, terminate or kill it.

use std::collections::HashSet;
use std::os::fd::AsRawFd;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

use tokio::process::{ChildStderr, ChildStdout};

use crate::caps::{caps, landlock_crate_abi};
use crate::cgroup::JobCgroup;
use crate::error::{Error, Result};
use crate::launch::{InitLaunch, MainProcess, Prepared};
use crate::preexec::{ChildSetup, LandlockOutcome, MountSetup, NetSetup, ParentCheck, SharedStep};
use crate::pty::Terminal;
use crate::{CgroupVersion, Mode, Spec, fs_policy, netns, pty, root, seccomp};

/// How long [`Child::wait`] lets a job's init exit on its own before the kill passes.
const INIT_EXIT_WAIT: Duration = Duration::from_millis(100);

/// How long [`Child::wait`] keeps killing and reaping before it gives up on a cgroup.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Main pids of live [`Child`]ren (reaped by tokio, never by the orphan reaper).
/// The lock is also held across `fork` so a new main process is registered atomically.
static MAIN_PIDS: Mutex<Option<HashSet<i32>>> = Mutex::new(None);
static SEQ: AtomicU64 = AtomicU64::new(0);
static SUBREAPER: Once = Once::new();

fn main_pids() -> std::sync::MutexGuard<'static, Option<HashSet<i32>>> {
    MAIN_PIDS.lock().unwrap_or_else(|e| e.into_inner())
}

/// How a sandboxed command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Exit code of the main process, if it exited normally.
    pub exit_code: Option<i32>,
    /// Signal that killed the main process, if any.
    pub signal: Option<i32>,
    /// The kernel OOM killer killed a process of the job (memory limit reached).
    pub oom_killed: bool,
    /// A fork or clone of the job failed because the pids limit was reached.
    pub pids_limit_hit: bool,
    /// The wall timeout expired and the job was killed.
    pub timed_out: bool,
    /// [`Child::terminate`] or [`Child::kill`] was called before the main process ended.
    pub terminated: bool,
    /// Time from spawn to the end of the main process.
    pub wall: Duration,
    /// CPU time of the whole job (all processes), from the cgroup.
    pub cpu: Option<Duration>,
    /// Peak memory of the job (RAM + tmpfs pages), from the cgroup.
    pub peak_memory_bytes: Option<u64>,
    /// Isolation layers that were active.
    pub layers: Vec<String>,
}

/// A running sandboxed command.
///
/// Read `stdout` and `stderr` concurrently with [`Child::wait`]: a process of the job (a
/// daemon, say) may hold the pipes open until `wait` kills the cgroup, so reading them to
/// the end *before* calling `wait` can block forever (the wall timeout is enforced by `wait`).
///
/// The same holds for `terminal`.
///
/// Dropping it without [`Child::wait`] kills the whole job; a background thread reaps it.
#[derive(Debug)]
pub struct Child {
    /// The command's standard output (`None` when it runs in a terminal).
    pub stdout: Option<ChildStdout>,
    /// The command's standard error (`None` when it runs in a terminal).
    pub stderr: Option<ChildStderr>,
    /// With [`Spec::terminal`]: the command's stdout and stderr as one ordered stream.
    pub terminal: Option<Terminal>,
    inner: Option<MainProcess>,
    pid: u32,
    run_uid: Option<u32>,
    cgroup: Option<JobCgroup>,
    layers: Vec<String>,
    started: Instant,
    deadline: Instant,
    status: Option<ExitStatus>,
    ended: Option<Instant>,
    timed_out: bool,
    terminated: bool,
    seen: HashSet<i32>,
    report: Option<Report>,
    /// The main process is the job's init (PID 1 of its PID namespace): it forwards
    /// signals to the program, so the polite TERM skips it.
    init: bool,
    /// The job's mount namespace, held so that it is torn down off the report's path (see
    /// `root::release`).
    mntns: Option<std::os::fd::OwnedFd>,
    /// The job's private network namespace, returned to the pool (see the `netns` module)
    /// once the job's cgroup is drained empty; `None` when it is not to be reused.
    netns: Option<std::os::fd::OwnedFd>,
}

/// Work out which layers this spec gets on this host, and which are missing.
fn plan(spec: &Spec) -> (Vec<String>, Vec<String>) {
    let c = caps();
    let mut on = Vec::new();
    let mut off = Vec::new();
    let mut put = |name: String, ok: bool| if ok { on.push(name) } else { off.push(name) };
    match c.cgroup {
        CgroupVersion::V1 => put("cgroup-v1".into(), true),
        CgroupVersion::V2 => put("cgroup-v2".into(), true),
        CgroupVersion::None => put("cgroup".into(), false),
    }
    put("session".into(), true);
    if !spec.network {
        put("netns".into(), c.netns);
    }
    put("ipcns".into(), c.ipcns);
    if spec.root.is_some() {
        put("pidns".into(), c.private_root);
        put("private-root".into(), c.private_root);
    }
    put("uid".into(), c.uid_drop && spec.run_as.is_some());
    put("pdeathsig".into(), true);
    put("rlimits".into(), true);
    put("close-fds".into(), true);
    put("clean-env".into(), true);
    let abi = c.landlock_abi.unwrap_or(0);
    if abi >= 1 {
        put(format!("landlock-abi{abi}"), true);
    } else {
        put("landlock".into(), false);
    }
    if !spec.network {
        put("landlock-tcp".into(), abi >= 4);
    }
    put("landlock-scopes".into(), abi >= 6);
    put("no_new_privs".into(), true);
    put("seccomp".into(), c.seccomp);
    (on, off)
}

/// Start `spec.program` in the sandbox. Must be called inside a tokio runtime.
///
/// In [`Mode::Strict`] this fails with [`Error::MissingLayers`] unless every layer the spec
/// needs is available (including `uid`: pass `run_as` when running as root). The process
/// that calls `spawn` should stay alive while the job runs: the child gets `SIGKILL` when the
/// spawning *thread* exits (`PR_SET_PDEATHSIG`), so call it from a runtime worker thread,
/// not from a short-lived blocking thread.
///
/// The first call makes this process a child subreaper so orphans of jobs can be reaped.
pub fn spawn(spec: &Spec) -> Result<Child> {
    let has_nul = |s: &[u8]| s.contains(&0);
    if has_nul(spec.program.as_os_str().as_encoded_bytes())
        || has_nul(spec.cwd.as_os_str().as_encoded_bytes())
        || spec.args.iter().any(|a| has_nul(a.as_bytes()))
        || spec
            .env
            .iter()
            .any(|(k, v)| has_nul(k.as_bytes()) || has_nul(v.as_bytes()))
    {
        return Err(Error::InvalidSpec(
            "NUL byte in program, cwd, argument or environment".into(),
        ));
    }
    if let Some((k, _)) = spec
        .env
        .iter()
        .find(|(k, _)| k.is_empty() || k.contains('='))
    {
        return Err(Error::InvalidSpec(format!(
            "invalid environment variable name {k:?}"
        )));
    }
    if let Some(g) = &spec.cgroup_group
        && !crate::valid_cgroup_group(g)
    {
        return Err(Error::InvalidSpec(format!(
            "cgroup group {g:?} is not a plain directory name"
        )));
    }
    if let Some(r) = &spec.root {
        r.validate()?;
        if !spec.cwd.is_absolute() {
            return Err(Error::InvalidSpec(format!(
                "cwd {} is not an absolute path in the job's root",
                spec.cwd.display()
            )));
        }
    }
    if !spec.program.is_absolute() {
        return Err(Error::InvalidSpec(format!(
            "program {} is not an absolute path",
            spec.program.display()
        )));
    }
    let (layers, missing) = plan(spec);
    // A private root cannot be approximated: its paths exist nowhere else.
    let root_missing = spec.root.is_some() && !caps().private_root;
    // Strict mode wants the guarantees, not every wall: see `Capabilities::missing_required`.
    let walls = spec.root.is_some() && caps().private_root && caps().netns && !spec.network;
    let required: Vec<String> = missing
        .iter()
        .filter(|l| !(walls && crate::caps::is_second_wall(l)))
        .cloned()
        .collect();
    if (spec.mode == Mode::Strict || root_missing) && !required.is_empty() {
        return Err(Error::MissingLayers { missing: required });
    }
    if !required.is_empty() {
        tracing::warn!(missing = ?required, "sandbox layers missing (best-effort mode)");
    } else if !missing.is_empty() {
        tracing::debug!(absent = ?missing, "second-wall layers absent: the private root and network namespace stand");
    }
    let c = caps();
    let strict = spec.mode == Mode::Strict;
    SUBREAPER.call_once(|| {
        // SAFETY: prctl with integer arguments; affects only this process.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    });

    let name = format!(
        "job-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
    let mut layers = layers;
    // The init is one more process of the job: the program keeps the pids it was given.
    let mut limits = spec.limits.clone();
    if spec.root.is_some() {
        limits.pids = limits.pids.saturating_add(1);
    }
    let cgroup = match &c.hierarchy {
        Some(h) => match JobCgroup::create(h, spec.cgroup_group.as_deref(), &name, &limits) {
            Ok(cg) => Some(cg),
            Err(e) if strict => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, "no job cgroup (best-effort mode): no limits, no whole-job kill");
                layers.retain(|l| !l.starts_with("cgroup"));
                None
            }
        },
        None => None,
    };
    let result = spawn_in(spec, c, strict, cgroup.as_ref(), &mut layers);
    let Started {
        main: inner,
        pipes,
        terminal,
        netns: job_netns,
        mntns,
    } = match result {
        Ok(x) => x,
        Err(e) => {
            if let Some(cg) = &cgroup {
                let _ = cg.remove();
            }
            return Err(e);
        }
    };
    let started = Instant::now();
    let pid = u32::try_from(inner.pid()).unwrap_or(0);
    let (stdout, stderr) = pipes.unzip();
    Ok(Child {
        stdout,
        stderr,
        terminal,
        inner: Some(inner),
        pid,
        // Orphans are recognised by uid only when the job has a uid of its own; a job running
        // as our own uid would make every zombie child of ours look like one of its orphans.
        run_uid: spec
            .run_as
            .filter(|&(u, _)| c.uid_drop && u != nix::unistd::geteuid().as_raw())
            .map(|(u, _)| u),
        cgroup,
        layers,
        started,
        deadline: started + spec.limits.wall_timeout,
        status: None,
        ended: None,
        timed_out: false,
        terminated: false,
        seen: HashSet::new(),
        report: None,
        init: spec.root.is_some(),
        netns: job_netns,
        mntns,
    })
}

/// A pidfd of this process, for the child's parent-alive check in a PID namespace.
fn self_pidfd() -> std::io::Result<i32> {
    static FD: std::sync::OnceLock<std::result::Result<std::os::fd::OwnedFd, i32>> =
        std::sync::OnceLock::new();
    let fd = FD.get_or_init(|| {
        // SAFETY: pidfd_open with our own pid and no flags returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0) };
        if fd < 0 {
            Err(std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO))
        } else {
            // SAFETY: a new descriptor nobody else owns (pidfds are close-on-exec).
            Ok(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) })
        }
    });
    match fd {
        Ok(fd) => Ok(fd.as_raw_fd()),
        Err(e) => Err(std::io::Error::from_raw_os_error(*e)),
    }
}

/// A started main process: its pipes or terminal, and the namespaces held for the job's end.
struct Started {
    main: MainProcess,
    /// Stdout and stderr, without a terminal.
    pipes: Option<(ChildStdout, ChildStderr)>,
    /// The terminal's master, with one.
    terminal: Option<Terminal>,
    /// The network namespace to return to the pool once the job is drained.
    netns: Option<std::os::fd::OwnedFd>,
    /// The job's mount namespace (see `root::release`).
    mntns: Option<std::os::fd::OwnedFd>,
}

fn spawn_in(
    spec: &Spec,
    c: &crate::Capabilities,
    strict: bool,
    cgroup: Option<&JobCgroup>,
    layers: &mut Vec<String>,
) -> Result<Started> {
    let abi = c.landlock_abi.unwrap_or(0);
    let template = match &spec.root {
        Some(r) => Some(root::template(r)?),
        None => None,
    };
    let job_binds = match &spec.root {
        Some(r) => root::job_binds(r)?,
        None => Vec::new(),
    };
    let landlock_planned = abi >= 1;
    // The job's terminal (see the `pty` module): the master is the caller's from here on,
    // the slave and the devpts instance are held until the child has started.
    let (terminal, slave, devpts) = match spec.terminal {
        Some(size) => {
            let owner = spec.run_as.filter(|_| c.uid_drop);
            let p = pty::open(size, owner, spec.root.is_none())
                .and_then(|p| Ok((Terminal::new(p.master)?, p.slave, p.devpts)))
                .map_err(|source| Error::Terminal { source })?;
            (Some(p.0), Some(p.1), p.2)
        }
        None => (None, None, None),
    };
    let landlock = if landlock_planned {
        Some(fs_policy::build(
            landlock_crate_abi(abi),
            spec,
            strict,
            template.as_ref().map(|t| t.root_fd()),
            devpts.as_ref().or(slave.as_ref()),
        )?)
    } else {
        None
    };
    let spawn_err = |step: &'static str| {
        move |source| Error::Spawn {
            program: spec.program.clone(),
            step,
            source,
        }
    };
    let init = match &template {
        Some(_) => {
            let program = crate::init::program().map_err(spawn_err("load the job init"))?;
            let (status_rx, status_tx) =
                crate::launch::pipe().map_err(spawn_err("status channel"))?;
            Some(InitLaunch {
                program,
                status_rx,
                status_tx,
            })
        }
        None => None,
    };
    let parent = if template.is_some() {
        ParentCheck::Pidfd(self_pidfd().map_err(spawn_err("pidfd of the caller"))?)
    } else {
        ParentCheck::Ppid(std::process::id() as libc::pid_t)
    };
    let cwd = std::ffi::CString::new(spec.cwd.as_os_str().as_encoded_bytes())
        .map_err(|_| Error::InvalidSpec("NUL byte in cwd".into()))?;
    let filters = if c.seccomp {
        Some(seccomp::filters()?)
    } else {
        None
    };
    let procs_files = match cgroup {
        Some(cg) => cg.open_procs_files()?,
        None => Vec::new(),
    };
    // Namespaces are reused only where the `netns` module says it is safe: landlock's
    // abstract-unix-socket scope required (strict mode, ABI 6+) and a cgroup to prove the
    // previous job is gone.
    let reuse_netns = !spec.network && c.netns && strict && abi >= 6 && cgroup.is_some();
    let pooled = if reuse_netns { netns::take() } else { None };
    let net = match &pooled {
        _ if spec.network || !c.netns => NetSetup::Host,
        Some(fd) => NetSetup::Join(fd.as_raw_fd()),
        None => NetSetup::New,
    };
    let setup = ChildSetup {
        cgroup_fds: procs_files.iter().map(AsRawFd::as_raw_fd).collect(),
        ctty: slave.is_some(),
        netns: net,
        ipc_uts: c.ipcns,
        mounts: template.as_ref().map(|t| MountSetup {
            template_ns: t.ns_fd(),
            binds: job_binds
                .iter()
                .map(|b| (b.tree.as_raw_fd(), b.target.clone()))
                .chain(
                    devpts
                        .as_ref()
                        .map(|d| (d.as_raw_fd(), pty::PTS_TARGET.to_owned())),
                )
                .collect(),
        }),
        cwd,
        run_as: spec.run_as.filter(|_| c.uid_drop),
        parent,
        status_fd: init.as_ref().map(|i| i.status_tx.as_raw_fd()),
        rlimits: [
            (libc::RLIMIT_CORE, 0),
            (libc::RLIMIT_FSIZE, spec.limits.file_size_bytes),
            (libc::RLIMIT_NOFILE, spec.limits.open_files),
        ],
        landlock,
        strict,
        seccomp: filters,
        step: SharedStep::default(),
    };
    let prepared = Prepared::new(&spec.program, &spec.args, &spec.env)
        .map_err(spawn_err("prepare arguments"))?;
    // Held across the clone so the new main process is registered before anyone can look for
    // orphans.
    let mut pids = main_pids();
    let (child, pipes) = crate::launch::spawn(
        &prepared,
        &setup,
        init,
        slave.as_ref().map(AsRawFd::as_raw_fd),
    )
    .map_err(|(step, source)| Error::Spawn {
        program: spec.program.clone(),
        step: step.name(),
        source,
    })?;
    pids.get_or_insert_with(HashSet::new).insert(child.pid());
    drop(pids);
    // The job holds its end of the terminal now: the master reads end-of-file once the job's
    // last process closed it.
    drop((procs_files, job_binds, slave, devpts));
    let job_netns = match (pooled, net) {
        (Some(fd), _) => Some(fd),
        (None, NetSetup::New) if reuse_netns => netns::of_child(child.pid()),
        _ => None,
    };
    let mntns = template
        .as_ref()
        .and_then(|_| root::hold_namespace(child.pid()));
    let step = &setup.step;
    // exec succeeded, so the child's landlock report is complete: trust it, not the plan.
    let outcome = step.landlock();
    if landlock_planned && outcome != LandlockOutcome::Full {
        tracing::warn!(?outcome, "landlock not fully enforced (best-effort mode)");
        layers.retain(|l| !l.starts_with("landlock"));
        if outcome == LandlockOutcome::Partial {
            layers.push("landlock-partial".to_owned());
        }
    }
    Ok(Started {
        main: child,
        pipes,
        terminal,
        netns: job_netns,
        mntns,
    })
}

impl Child {
    /// Pid of the main process.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The layers active for this child (`cgroup-v1`, `netns`, `landlock-abi7`, ...).
    pub fn layers(&self) -> &[String] {
        &self.layers
    }

    /// The job's cgroup directory (v2) or its pids-controller directory (v1).
    pub fn cgroup_path(&self) -> Option<&std::path::Path> {
        self.cgroup.as_ref().map(JobCgroup::path)
    }

    /// Wait for the main process (at most until the wall timeout, then kill the job), then
    /// kill the whole cgroup, reap everything, and return the report. Calling it again
    /// returns the same report.
    pub async fn wait(&mut self) -> Result<Report> {
        if let Some(r) = &self.report {
            return Ok(r.clone());
        }
        if self.status.is_none() {
            let deadline = tokio::time::Instant::from_std(self.deadline);
            let pid = self.pid;
            let main = self.inner.as_mut().expect("main process held until reaped");
            let st = match tokio::time::timeout_at(deadline, main.wait()).await {
                Ok(r) => r.map_err(|source| Error::Wait { pid, source })?,
                Err(_) => {
                    self.timed_out = true;
                    self.kill_now();
                    let main = self.inner.as_mut().expect("main process held until reaped");
                    main.wait()
                        .await
                        .map_err(|source| Error::Wait { pid, source })?
                }
            };
            self.main_exited(st);
        }
        if self.init
            && let Some(main) = self.inner.as_mut()
        {
            // The init exits (and its namespace kills the rest of the job) right after it
            // reported the program's end: give it that moment before any kill pass.
            let _ = tokio::time::timeout(INIT_EXIT_WAIT, main.wait_exit()).await;
        }
        let drained = self.drain().await;
        if let Some(ns) = self.netns.take()
            && drained
        {
            netns::give_back(ns);
        }
        if let Some(ns) = self.mntns.take() {
            root::release(ns);
        }
        let status = self
            .status
            .unwrap_or_else(|| ExitStatus::from_raw(libc::SIGKILL));
        let (cpu, peak, oom, pids_hit) = match &self.cgroup {
            Some(cg) => (
                cg.cpu_time(),
                cg.peak_memory(),
                cg.oom_killed(),
                cg.pids_limit_hit(),
            ),
            None => (None, None, false, false),
        };
        if let Some(cg) = self.cgroup.take()
            && let Err(e) = cg.remove()
        {
            tracing::warn!(error = %e, "job cgroup not removed");
        }
        let report = Report {
            exit_code: status.code(),
            signal: status.signal(),
            oom_killed: oom,
            pids_limit_hit: pids_hit,
            timed_out: self.timed_out,
            terminated: self.terminated,
            wall: self
                .ended
                .unwrap_or_else(Instant::now)
                .duration_since(self.started),
            cpu,
            peak_memory_bytes: peak,
            layers: self.layers.clone(),
        };
        self.report = Some(report.clone());
        Ok(report)
    }

    fn main_exited(&mut self, st: ExitStatus) {
        self.status = Some(st);
        self.ended.get_or_insert_with(Instant::now);
        if let Some(set) = main_pids().as_mut() {
            set.remove(&(self.pid as i32));
        }
    }

    /// Send SIGTERM to every process of the job, give it `grace` to end, then kill the whole
    /// cgroup. [`Child::wait`] then returns the report.
    pub async fn terminate(&mut self, grace: Duration) {
        if self.report.is_some() {
            return;
        }
        if self.status.is_none() {
            self.terminated = true;
        }
        // The init forwards what it gets to the program: skip it, or the program would get
        // every signal twice.
        let skip = (self.init && self.status.is_none()).then_some(self.pid as i32);
        match &self.cgroup {
            Some(cg) => {
                cg.signal_all(libc::SIGTERM, skip);
                cg.signal_all(libc::SIGCONT, skip);
            }
            None => self.signal_group(libc::SIGTERM),
        }
        if self.status.is_none() {
            let main = self.inner.as_mut().expect("main process held until reaped");
            if let Ok(Ok(st)) = tokio::time::timeout(grace, main.wait()).await {
                self.main_exited(st);
            }
        } else if let Some(cg) = &self.cgroup {
            let end = tokio::time::Instant::now() + grace;
            while !cg.procs().is_empty() && tokio::time::Instant::now() < end {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        self.kill_now();
    }

    /// Kill the whole job immediately (cgroup kill). [`Child::wait`] then returns the report.
    pub fn kill(&mut self) {
        if self.report.is_none() && self.status.is_none() {
            self.terminated = true;
        }
        self.kill_now();
    }

    fn kill_now(&mut self) {
        if let Some(cg) = &self.cgroup {
            self.seen.extend(cg.kill_pass());
        }
        if self.status.is_none() {
            self.signal_group(libc::SIGKILL);
        }
    }

    fn signal_group(&self, sig: libc::c_int) {
        if self.status.is_some() || self.pid == 0 {
            return;
        }
        // SAFETY: the main process is our unreaped child, so its pid (and the process group
        // it leads after setsid) cannot have been reused.
        unsafe {
            libc::kill(-(self.pid as i32), sig);
            libc::kill(self.pid as i32, sig);
        }
    }

    /// Kill and reap until the cgroup is empty (zombies included). True when the cgroup was
    /// seen empty (false without a cgroup, or when it never emptied).
    async fn drain(&mut self) -> bool {
        let Some(cg) = &self.cgroup else {
            // No cgroup (best-effort mode): kill and reap what is left of the job's session.
            // A process that left the session with setsid is out of reach: that is what the
            // cgroup layer is for.
            let start = Instant::now();
            while reap_orphans(self.run_uid, &self.seen, self.pid as i32, true) > 0
                && start.elapsed() < DRAIN_TIMEOUT
            {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            reap_orphans(self.run_uid, &self.seen, self.pid as i32, false);
            return false;
        };
        let start = Instant::now();
        let mut pause = Duration::from_micros(500);
        loop {
            // Fast path: the main process was the last one (already reaped).
            if cg.is_empty() {
                return true;
            }
            if !cg.procs().is_empty() {
                self.seen.extend(cg.kill_pass());
            }
            // Killed or exited orphans were reparented to us (subreaper): reap them, or the
            // pids controller keeps counting them. So is an init whose program's end it
            // reported.
            // Under an init nothing is re-parented to us: the init reaps its namespace.
            if let Some(main) = self.inner.as_mut() {
                main.reap();
            }
            if !self.init {
                reap_orphans(self.run_uid, &self.seen, self.pid as i32, false);
            }
            if cg.is_empty() {
                return true;
            }
            if start.elapsed() > DRAIN_TIMEOUT {
                tracing::warn!(cgroup = %cg.path().display(), "job cgroup still not empty after kill");
                return false;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if self.report.is_some() {
            return;
        }
        self.kill_now();
        let cg = self.cgroup.take();
        let (uid, seen, pid) = (
            self.run_uid,
            std::mem::take(&mut self.seen),
            self.pid as i32,
        );
        if cg.is_some()
            && let Some(set) = main_pids().as_mut()
        {
            // Nobody will wait for the main process through tokio any more: let the reaper
            // thread reap it like any other process of the job.
            set.remove(&(self.pid as i32));
        }
        let main = self.inner.take();
        // Kill, reap and remove the cgroup off the caller's thread.
        let _ = std::thread::Builder::new()
            .name("cmdx-sandbox-reap".into())
            .spawn(move || {
                let start = Instant::now();
                if cg.is_none()
                    && let Some(mut main) = main
                {
                    // No cgroup: the main process got SIGKILL from kill_now.
                    main.wait_blocking();
                } else if let Some(cg) = cg {
                    let mut seen = seen;
                    while start.elapsed() < DRAIN_TIMEOUT {
                        seen.extend(cg.kill_pass());
                        reap_orphans(uid, &seen, pid, false);
                        if cg.is_empty() {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    let _ = cg.remove();
                }
            });
    }
}

/// Reap zombie children of this process that belong to a job: reparented orphans (we are a
/// subreaper). A zombie qualifies if it runs as the job's uid, or (without a uid drop) if
/// its pid was seen in the job's cgroup or it is still in the job's session `sid`; main
/// processes of live children are left to tokio. With `kill_session`, live processes of the
/// session get SIGKILL (the fallback whole-job kill when there is no cgroup).
///
/// Returns how many live (non-zombie) processes of the session remain.
fn reap_orphans(uid: Option<u32>, seen: &HashSet<i32>, sid: i32, kill_session: bool) -> usize {
    let me = std::process::id() as i32;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let guard = main_pids();
    let mut alive = 0;
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        // Fields after the command: state ppid pgrp session ...
        let f: Vec<&str> = rest.split_whitespace().take(4).collect();
        let [state, ppid, _pgrp, session] = f[..] else {
            continue;
        };
        let in_session = sid > 0 && session.parse::<i32>().ok() == Some(sid);
        if state != "Z" {
            if in_session {
                alive += 1;
                if kill_session {
                    // SAFETY: kill(2) of a live process of the job's session (a session id
                    // cannot be reused while a member of the session lives).
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
            continue;
        }
        if ppid.parse::<i32>().ok() != Some(me) || guard.as_ref().is_some_and(|s| s.contains(&pid))
        {
            continue;
        }
        let ours = match uid {
            Some(u) => proc_uid(pid) == Some(u),
            None => seen.contains(&pid) || in_session,
        };
        if ours {
            // SAFETY: waitpid on a specific zombie child of ours that nobody else waits for.
            unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
        }
    }
    alive
}

/// Real uid of a process from `/proc/<pid>/status`.
fn proc_uid(pid: i32) -> Option<u32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}
