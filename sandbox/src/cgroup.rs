//! Job cgroups on v1 and v2: detect the hierarchy, create a cgroup with limits, let the child
//! join it before `exec`, kill everything in it, account CPU / peak memory / OOM, remove it.
//!
//! # What goes through `cgroups-rs` and what does not
//! Creating and removing each job directory, the limits (memory, swap, pids, CPU quota), the
//! process list and the pids-limit events use the crate's controllers
//! (`cgroups_rs::fs::{memory, pid, cpu}`), built directly on the paths detected here. Five
//! parts stay hand-written, each for a reason:
//! - **Detection** ([`Hierarchy::detect`]): `hierarchies::auto()` only picks v2 when
//!   `/sys/fs/cgroup` itself is cgroup2, so it misses the hybrid `unified` mount, and it has no
//!   notion of a delegated subtree next to the caller's own cgroup.
//! - **Enabling v2 controllers on the parent chain** ([`enable_v2_controllers`]): the crate's
//!   `Cgroup::create` enables every supported controller from `/sys/fs/cgroup` down, which
//!   fails (or is not allowed) in a delegated subtree, and it cannot move the caller into a
//!   leaf when the no-internal-processes rule bites (EBUSY).
//! - **Joining**: the child writes `0` to `cgroup.procs` files the parent opened, between
//!   `fork` and `exec` (no allocation allowed there); the crate only adds tasks by pid after
//!   they run, which races with forks.
//! - **Killing** ([`JobCgroup::kill_pass`]): the crate's `Cgroup::kill` is v2-only and needs a
//!   `Hierarchy`; v1 needs freeze, SIGKILL every pid, thaw, with the `FREEZING` state polled.
//!   The v2 OOM counter (`oom_kill` in `memory.events`) is not read by the crate either.
//! - **The end-of-job statistics** (CPU time, peak memory, OOM kills): one small file each.
//!   The crate only offers whole-controller snapshots: `memory_stat()` reads eleven files
//!   (`memory.stat` and `memory.numa_stat` among them) and `cpuacct()` seven (per-CPU ones
//!   too), which made them a visible part of every job's cost.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cgroups_rs::fs::Controller as _;
use cgroups_rs::fs::MaxValue;
use cgroups_rs::fs::cpu::CpuController;
use cgroups_rs::fs::memory::MemController;
use cgroups_rs::fs::pid::PidController;

use crate::Limits;
use crate::caps::{CgroupVersion, cgroup_parent_override};
use crate::error::{Error, Result};

/// CFS period used for the CPU quota.
const CPU_PERIOD_US: u64 = 100_000;

/// A cgroup hierarchy the sandbox can create job cgroups in.
#[derive(Debug, Clone)]
pub(crate) enum Hierarchy {
    /// One mount per controller (or per controller group such as `cpu,cpuacct`).
    V1 {
        /// Mount point of the memory controller.
        memory: PathBuf,
        /// Mount point of the pids controller.
        pids: PathBuf,
        /// Mount point of the cpu controller.
        cpu: PathBuf,
        /// Mount point of the cpuacct controller (CPU time accounting), if any.
        cpuacct: Option<PathBuf>,
        /// Mount point of the freezer controller (race-free kill), if any.
        freezer: Option<PathBuf>,
    },
    /// The unified hierarchy.
    V2 {
        /// Mount point of the cgroup2 filesystem.
        mount: PathBuf,
        /// The caller's own cgroup, relative to the mount (`/` when in the root).
        own: PathBuf,
    },
}

impl Hierarchy {
    /// Find a usable hierarchy from `/proc/self/mountinfo`.
    pub(crate) fn detect(privileged: bool) -> Option<Self> {
        let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
        let own = fs::read_to_string("/proc/self/cgroup")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("0::").map(PathBuf::from))
            })
            .unwrap_or_else(|| PathBuf::from("/"));
        let v2_ok = |m: &Path| {
            fs::read_to_string(m.join("cgroup.controllers")).is_ok_and(|c| {
                let c: Vec<&str> = c.split_whitespace().collect();
                ["memory", "pids", "cpu"].iter().all(|x| c.contains(x))
            })
        };
        let found = Self::choose(&info, own, &v2_ok)?;
        if !privileged {
            let probe_dir = match &found {
                Hierarchy::V1 { memory, .. } => memory.join(found.parent_rel()),
                Hierarchy::V2 { mount, .. } => mount.join(found.parent_rel()),
            };
            let writable = nix::unistd::access(&probe_dir, nix::unistd::AccessFlags::W_OK).is_ok()
                || probe_dir.parent().is_some_and(|p| {
                    nix::unistd::access(p, nix::unistd::AccessFlags::W_OK).is_ok()
                });
            if !writable {
                return None;
            }
        }
        Some(found)
    }

    /// Pick the hierarchy from a `mountinfo` text: pure v2 (`/sys/fs/cgroup` is cgroup2 with
    /// memory, pids and cpu) first, then v1 controllers, then a hybrid cgroup2 mount that has
    /// the controllers. `v2_ok` says whether a cgroup2 mount offers the controllers.
    fn choose(info: &str, own: PathBuf, v2_ok: &dyn Fn(&Path) -> bool) -> Option<Self> {
        let mut v1: Vec<(String, PathBuf)> = Vec::new();
        let mut v2: Vec<PathBuf> = Vec::new();
        for line in info.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let Some(mnt) = left.split(' ').nth(4) else {
                continue;
            };
            let mut r = right.split(' ');
            let (fstype, _src, opts) = (r.next(), r.next(), r.next().unwrap_or(""));
            match fstype {
                Some("cgroup") => {
                    for o in opts.split(',') {
                        if !v1.iter().any(|(c, _)| c == o) {
                            v1.push((o.to_owned(), PathBuf::from(mnt)));
                        }
                    }
                }
                Some("cgroup2") => v2.push(PathBuf::from(mnt)),
                _ => {}
            }
        }
        let get = |c: &str| v1.iter().find(|(n, _)| n == c).map(|(_, p)| p.clone());
        let pure_v2 = v2
            .iter()
            .find(|m| m.as_path() == Path::new("/sys/fs/cgroup"));
        if let Some(m) = pure_v2.filter(|m| v2_ok(m)) {
            Some(Hierarchy::V2 {
                mount: m.clone(),
                own,
            })
        } else if let (Some(memory), Some(pids), Some(cpu)) =
            (get("memory"), get("pids"), get("cpu"))
        {
            Some(Hierarchy::V1 {
                memory,
                pids,
                cpu,
                cpuacct: get("cpuacct"),
                freezer: get("freezer"),
            })
        } else {
            v2.iter().find(|m| v2_ok(m)).map(|m| Hierarchy::V2 {
                mount: m.clone(),
                own,
            })
        }
    }

    /// The version of this hierarchy.
    pub(crate) fn version(&self) -> CgroupVersion {
        match self {
            Hierarchy::V1 { .. } => CgroupVersion::V1,
            Hierarchy::V2 { .. } => CgroupVersion::V2,
        }
    }

    /// The parent of job cgroups of `group` (see [`crate::Spec::cgroup_group`]), relative to
    /// each mount.
    fn group_rel(&self, group: Option<&str>) -> PathBuf {
        let base = self.parent_rel();
        match group {
            Some(g) => base.join(g),
            None => base,
        }
    }

    /// The directories holding a group's job cgroups: one per distinct v1 controller mount,
    /// or the one v2 directory.
    fn group_dirs(&self, group: &str) -> Vec<PathBuf> {
        let rel = self.group_rel(Some(group));
        let dirs: Vec<PathBuf> = match self {
            Hierarchy::V1 {
                memory,
                pids,
                cpu,
                cpuacct,
                freezer,
            } => [
                Some(memory),
                Some(pids),
                Some(cpu),
                cpuacct.as_ref(),
                freezer.as_ref(),
            ]
            .into_iter()
            .flatten()
            .map(|m| m.join(&rel))
            .collect(),
            Hierarchy::V2 { mount, .. } => vec![mount.join(&rel)],
        };
        let mut uniq = Vec::new();
        for d in dirs {
            if !uniq.contains(&d) {
                uniq.push(d);
            }
        }
        uniq
    }

    /// The parent of job cgroups, relative to each mount.
    fn parent_rel(&self) -> PathBuf {
        if let Some(p) = cgroup_parent_override() {
            return p;
        }
        match self {
            Hierarchy::V1 { .. } => PathBuf::from("cmdx"),
            Hierarchy::V2 { own, .. } => {
                let own = own.strip_prefix("/").unwrap_or(own);
                match own.parent() {
                    // In the root cgroup (or one level below it): /sys/fs/cgroup/cmdx.
                    None => PathBuf::from("cmdx"),
                    Some(p) => p.join("cmdx"),
                }
            }
        }
    }
}

/// The cgroup of one job (one directory per v1 hierarchy, or one v2 directory).
#[derive(Debug)]
pub(crate) struct JobCgroup {
    version: CgroupVersion,
    /// Every directory created for this job, one per distinct hierarchy.
    dirs: Vec<PathBuf>,
    memory: PathBuf,
    pids: PathBuf,
    /// The v1 cpu controller directory (the same directory as the others on v2).
    cpu: PathBuf,
    cpuacct: Option<PathBuf>,
    freezer: Option<PathBuf>,
}

fn cg_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Cgroup {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Maps an error of `cgroups-rs` to ours, keeping the OS error when there is one.
fn crate_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(cgroups_rs::fs::error::Error) -> Error + 'a {
    move |e| {
        use std::error::Error as _;
        let os = e
            .source()
            .and_then(|s| s.downcast_ref::<io::Error>())
            .and_then(io::Error::raw_os_error);
        let source = match os {
            Some(code) => io::Error::from_raw_os_error(code),
            None => io::Error::other(e.to_string()),
        };
        Error::Cgroup {
            op,
            path: path.to_path_buf(),
            source,
        }
    }
}

fn write_file(path: &Path, value: &str) -> Result<()> {
    fs::write(path, value).map_err(cg_err("write", path))
}

/// A file holding one number; `None` when it is missing or unreadable ("unknown").
fn read_u64(path: &Path) -> Option<u64> {
    read_small(path).ok()?.trim().parse().ok()
}

/// The value of `key` in a flat-keyed file (`key value` lines: `cpu.stat`, `memory.events`,
/// `memory.oom_control`).
fn keyed_u64(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

fn read_small(path: &Path) -> io::Result<String> {
    let mut s = String::new();
    File::open(path)?.read_to_string(&mut s)?;
    Ok(s)
}

impl JobCgroup {
    /// The paths of job cgroup `name` of `group` (nothing is created).
    fn at(h: &Hierarchy, group: Option<&str>, name: &str) -> JobCgroup {
        let rel = h.group_rel(group);
        match h {
            Hierarchy::V1 {
                memory,
                pids,
                cpu,
                cpuacct,
                freezer,
            } => {
                let job = |m: &Path| m.join(&rel).join(name);
                JobCgroup {
                    version: CgroupVersion::V1,
                    dirs: Vec::new(),
                    memory: job(memory),
                    pids: job(pids),
                    cpu: job(cpu),
                    cpuacct: cpuacct.as_deref().map(job),
                    freezer: freezer.as_deref().map(job),
                }
                .with_dirs()
            }
            Hierarchy::V2 { mount, .. } => {
                let dir = mount.join(&rel).join(name);
                JobCgroup {
                    version: CgroupVersion::V2,
                    dirs: Vec::new(),
                    memory: dir.clone(),
                    pids: dir.clone(),
                    cpu: dir.clone(),
                    cpuacct: Some(dir.clone()),
                    freezer: Some(dir),
                }
                .with_dirs()
            }
        }
    }

    /// Create the cgroup `name` under the configured parent (in `group` when given) and
    /// apply `limits`.
    pub(crate) fn create(
        h: &Hierarchy,
        group: Option<&str>,
        name: &str,
        limits: &Limits,
    ) -> Result<JobCgroup> {
        let rel = h.group_rel(group);
        let mut cg = match h {
            Hierarchy::V1 { .. } => JobCgroup::at(h, group, name),
            Hierarchy::V2 { mount, own } => {
                let base = mount.join(&rel);
                fs::create_dir_all(&base).map_err(cg_err("create", &base))?;
                match enable_v2_controllers(mount, &base) {
                    // No-internal-processes rule: we sit in a cgroup on the path (typically
                    // the root of a container's cgroup namespace). Move ourselves into a
                    // leaf next to the jobs and try again.
                    Err(Error::Cgroup { source, path, .. })
                        if source.raw_os_error() == Some(libc::EBUSY) =>
                    {
                        let own_dir = mount.join(own.strip_prefix("/").unwrap_or(own));
                        if !path.starts_with(&own_dir) {
                            return Err(Error::Cgroup {
                                op: "enable controllers",
                                path,
                                source,
                            });
                        }
                        let leaf = own_dir.join("cmdx-agent");
                        fs::create_dir_all(&leaf).map_err(cg_err("create", &leaf))?;
                        write_file(&leaf.join("cgroup.procs"), &std::process::id().to_string())?;
                        tracing::info!(leaf = %leaf.display(), "moved this process into a leaf cgroup");
                        enable_v2_controllers(mount, &base)?;
                    }
                    r => r?,
                }
                JobCgroup::at(h, group, name)
            }
        };
        let mut created = Vec::new();
        for d in std::mem::take(&mut cg.dirs) {
            // Job names are unique per process, so an existing directory is a leftover of
            // another process with our pid: never adopt it (it could hold processes).
            let ctl = PidController::new(d.clone(), PathBuf::new(), cg.v2());
            let r = if ctl.exists() {
                Err(Error::Cgroup {
                    op: "create",
                    path: d.clone(),
                    source: io::Error::from_raw_os_error(libc::EEXIST),
                })
            } else {
                ctl.create().map_err(crate_err("create", &d))
            };
            match r {
                Ok(()) => created.push(d),
                Err(e) => {
                    cg.dirs = created;
                    cg.remove_dirs();
                    return Err(e);
                }
            }
        }
        cg.dirs = created;
        if let Err(e) = cg.apply_limits(limits) {
            cg.remove_dirs();
            return Err(e);
        }
        Ok(cg)
    }

    /// Fill `dirs` with the distinct directories.
    fn with_dirs(mut self) -> Self {
        let mut dirs = vec![self.memory.clone(), self.pids.clone(), self.cpu.clone()];
        dirs.extend(self.cpuacct.clone());
        dirs.extend(self.freezer.clone());
        let mut uniq: Vec<PathBuf> = Vec::new();
        for d in dirs {
            if !uniq.contains(&d) {
                uniq.push(d);
            }
        }
        self.dirs = uniq;
        self
    }

    fn v2(&self) -> bool {
        self.version == CgroupVersion::V2
    }

    fn mem_ctl(&self) -> MemController {
        MemController::new(self.memory.clone(), PathBuf::new(), self.v2())
    }

    fn pid_ctl(&self) -> PidController {
        PidController::new(self.pids.clone(), PathBuf::new(), self.v2())
    }

    fn cpu_ctl(&self) -> CpuController {
        CpuController::new(self.cpu.clone(), PathBuf::new(), self.v2())
    }

    fn apply_limits(&self, limits: &Limits) -> Result<()> {
        // The kernel refuses CFS quotas below 1 ms.
        let quota = (u64::from(limits.cpu_millis) * CPU_PERIOD_US / 1000).max(1000);
        let memory = i64::try_from(limits.memory_bytes).unwrap_or(i64::MAX);
        let mem = self.mem_ctl();
        mem.set_limit(memory)
            .map_err(crate_err("set memory limit", &self.memory))?;
        if self.v2() {
            // memory.swap.max: no swap at all.
            if self.memory.join("memory.swap.max").exists() {
                mem.set_memswap_limit(0)
                    .map_err(crate_err("set swap limit", &self.memory))?;
            }
        } else {
            // memory.memsw.limit_in_bytes: RAM + swap, so no swap beyond the RAM limit.
            if self.memory.join("memory.memsw.limit_in_bytes").exists() {
                mem.set_memswap_limit(memory)
                    .map_err(crate_err("set memory+swap limit", &self.memory))?;
            }
            if self.memory.join("memory.swappiness").exists() {
                // Not fatal: the root memory cgroup may refuse it on some kernels.
                let _ = mem.set_swappiness(0);
            }
        }
        let pids = i64::try_from(limits.pids).unwrap_or(i64::MAX);
        self.pid_ctl()
            .set_pid_max(MaxValue::Value(pids))
            .map_err(crate_err("set pids limit", &self.pids))?;
        self.cpu_ctl()
            .set_cfs_quota_and_period(
                Some(i64::try_from(quota).unwrap_or(i64::MAX)),
                Some(CPU_PERIOD_US),
            )
            .map_err(crate_err("set cpu quota", &self.cpu))?;
        Ok(())
    }

    /// Open every `cgroup.procs` file for writing; the child writes `0` into each one before
    /// `exec` to join the cgroup (the files are close-on-exec).
    pub(crate) fn open_procs_files(&self) -> Result<Vec<File>> {
        self.dirs
            .iter()
            .map(|d| {
                let p = d.join("cgroup.procs");
                OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_CLOEXEC)
                    .open(&p)
                    .map_err(cg_err("open", &p))
            })
            .collect()
    }

    /// Pids currently in the cgroup (zombies are not listed).
    pub(crate) fn procs(&self) -> Vec<i32> {
        self.pid_ctl()
            .procs()
            .into_iter()
            .filter_map(|p| i32::try_from(p.pid).ok())
            .filter(|&p| p > 0)
            .collect()
    }

    /// Tasks charged to the pids controller, zombies included (until reaped).
    pub(crate) fn pids_current(&self) -> Option<u64> {
        self.pid_ctl().get_pid_current().ok()
    }

    /// True when no process of the job is left, not even an unreaped zombie.
    pub(crate) fn is_empty(&self) -> bool {
        self.procs().is_empty() && self.pids_current().is_none_or(|n| n == 0)
    }

    /// Send `sig` to every process in the cgroup but `skip` (no freezing: used for the
    /// polite TERM).
    pub(crate) fn signal_all(&self, sig: libc::c_int, skip: Option<i32>) {
        for pid in self.procs().into_iter().filter(|&p| Some(p) != skip) {
            // SAFETY: kill(2) with a pid read from the job's cgroup and a valid signal number.
            unsafe { libc::kill(pid, sig) };
        }
    }

    /// One kill pass: `cgroup.kill` on v2; on v1 freeze, SIGKILL every pid, thaw (so no fork
    /// can slip in between listing and killing). Returns the pids that were listed.
    pub(crate) fn kill_pass(&self) -> Vec<i32> {
        let procs;
        match (self.version, &self.freezer) {
            (CgroupVersion::V2, _) if self.memory.join("cgroup.kill").exists() => {
                procs = self.procs();
                let _ = fs::write(self.memory.join("cgroup.kill"), "1");
            }
            (CgroupVersion::V2, _) => {
                let f = self.memory.join("cgroup.freeze");
                let _ = fs::write(&f, "1");
                procs = self.procs();
                self.signal_all(libc::SIGKILL, None);
                let _ = fs::write(&f, "0");
            }
            (_, Some(fz)) => {
                let state = fz.join("freezer.state");
                let _ = fs::write(&state, "FROZEN");
                for _ in 0..200 {
                    match read_small(&state) {
                        Ok(s) if s.trim() == "FREEZING" => {
                            std::thread::sleep(Duration::from_micros(200))
                        }
                        _ => break,
                    }
                }
                procs = self.procs();
                self.signal_all(libc::SIGKILL, None);
                let _ = fs::write(&state, "THAWED");
            }
            (_, None) => {
                procs = self.procs();
                self.signal_all(libc::SIGKILL, None);
            }
        }
        procs
    }

    /// CPU time used by the whole job (v1 `cpuacct.usage`, v2 `usage_usec` of `cpu.stat`).
    pub(crate) fn cpu_time(&self) -> Option<Duration> {
        let d = self.cpuacct.as_ref()?;
        if self.v2() {
            keyed_u64(&read_small(&d.join("cpu.stat")).ok()?, "usage_usec")
                .map(Duration::from_micros)
        } else {
            read_u64(&d.join("cpuacct.usage")).map(Duration::from_nanos)
        }
    }

    /// Peak memory charged to the job (v1 `memory.max_usage_in_bytes`, v2 `memory.peak`).
    pub(crate) fn peak_memory(&self) -> Option<u64> {
        let f = if self.v2() {
            "memory.peak"
        } else {
            "memory.max_usage_in_bytes"
        };
        read_u64(&self.memory.join(f))
    }

    /// Whether the kernel OOM killer killed a process of the job (`oom_kill` in v2
    /// `memory.events`, v1 `memory.oom_control`).
    pub(crate) fn oom_killed(&self) -> bool {
        let f = if self.v2() {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        read_small(&self.memory.join(f))
            .ok()
            .and_then(|s| keyed_u64(&s, "oom_kill"))
            .is_some_and(|n| n > 0)
    }

    /// Whether a fork or clone of the job failed because the pids limit was reached
    /// (`max` in `pids.events`, v1 and v2).
    pub(crate) fn pids_limit_hit(&self) -> bool {
        self.pid_ctl().get_pid_events().is_ok_and(|n| n > 0)
    }

    /// Remove the job's directories (fails with EBUSY while processes remain; the crate
    /// retries a few times with short pauses, which only matters in that case).
    pub(crate) fn remove(&self) -> Result<()> {
        let mut first = None;
        for d in &self.dirs {
            let ctl = PidController::new(d.clone(), PathBuf::new(), self.v2());
            if let Err(e) = ctl.delete()
                && first.is_none()
            {
                first = Some(crate_err("remove", d)(e));
            }
        }
        first.map_or(Ok(()), Err)
    }

    fn remove_dirs(&self) {
        for d in &self.dirs {
            let _ = PidController::new(d.clone(), PathBuf::new(), self.v2()).delete();
        }
    }

    /// The main directory (v2) or the pids directory (v1), for diagnostics and tests.
    pub(crate) fn path(&self) -> &Path {
        &self.pids
    }
}

/// Kill every process in every job cgroup of `group` and remove those cgroups and the group
/// itself (see [`crate::kill_cgroup_group`]). Returns how many job cgroups were removed.
pub(crate) fn kill_group(h: &Hierarchy, group: &str, timeout: Duration) -> Result<usize> {
    let mut names: Vec<String> = Vec::new();
    for d in h.group_dirs(group) {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir())
                && let Some(n) = e.file_name().to_str()
                && !names.iter().any(|x| x == n)
            {
                names.push(n.to_owned());
            }
        }
    }
    let start = std::time::Instant::now();
    let mut removed = 0;
    let mut first_err = None;
    for name in &names {
        let mut cg = JobCgroup::at(h, Some(group), name);
        cg.dirs.retain(|d| d.is_dir());
        // The processes are orphans of a dead agent (reparented to init or another
        // subreaper): kill until the cgroup lists none; zombies are reaped by their new parent.
        loop {
            if cg.procs().is_empty() && cg.remove().is_ok() {
                removed += 1;
                break;
            }
            cg.kill_pass();
            if start.elapsed() > timeout {
                first_err.get_or_insert(Error::Cgroup {
                    op: "kill leftover",
                    path: cg.path().to_path_buf(),
                    source: io::Error::from_raw_os_error(libc::EBUSY),
                });
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    for d in h.group_dirs(group) {
        if let Err(e) = fs::remove_dir(&d)
            && e.kind() != io::ErrorKind::NotFound
        {
            first_err.get_or_insert(Error::Cgroup {
                op: "remove",
                path: d,
                source: e,
            });
        }
    }
    first_err.map_or(Ok(removed), Err)
}

/// Make memory, pids and cpu available to children of `base` (v2), enabling them on every
/// ancestor below the mount too. `base` must hold no processes (no-internal-processes rule).
fn enable_v2_controllers(mount: &Path, base: &Path) -> Result<()> {
    let mut chain: Vec<&Path> = base
        .ancestors()
        .take_while(|p| p.starts_with(mount))
        .collect();
    chain.reverse();
    for dir in chain {
        let sc = dir.join("cgroup.subtree_control");
        let have = read_small(&sc).unwrap_or_default();
        let missing: Vec<String> = ["memory", "pids", "cpu"]
            .iter()
            .filter(|c| !have.split_whitespace().any(|h| h == **c))
            .map(|c| format!("+{c}"))
            .collect();
        if !missing.is_empty() {
            write_file(&sc, &missing.join(" "))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1_HOST: &str = "\
35 25 0:30 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
36 35 0:31 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
37 35 0:32 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
39 35 0:34 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
42 35 0:37 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
43 35 0:38 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
44 35 0:39 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    const V2_HOST: &str = "\
30 25 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate
";

    const V1_COMBINED: &str = "\
36 35 0:31 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
39 35 0:34 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
42 35 0:37 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
";

    #[test]
    fn v1_host_with_empty_unified_mount_is_v1() {
        let h = Hierarchy::choose(V1_HOST, "/".into(), &|_| false).expect("hierarchy");
        match h {
            Hierarchy::V1 {
                memory,
                pids,
                cpu,
                cpuacct,
                freezer,
            } => {
                assert_eq!(memory, Path::new("/sys/fs/cgroup/memory"));
                assert_eq!(pids, Path::new("/sys/fs/cgroup/pids"));
                assert_eq!(cpu, Path::new("/sys/fs/cgroup/cpu"));
                assert_eq!(
                    cpuacct.as_deref(),
                    Some(Path::new("/sys/fs/cgroup/cpuacct"))
                );
                assert_eq!(
                    freezer.as_deref(),
                    Some(Path::new("/sys/fs/cgroup/freezer"))
                );
            }
            other => panic!("expected v1, got {other:?}"),
        }
    }

    #[test]
    fn combined_cpu_cpuacct_mount_is_shared() {
        let h = Hierarchy::choose(V1_COMBINED, "/".into(), &|_| false).expect("hierarchy");
        let Hierarchy::V1 {
            cpu,
            cpuacct,
            freezer,
            ..
        } = h
        else {
            panic!("expected v1")
        };
        assert_eq!(Some(cpu), cpuacct);
        assert_eq!(freezer, None);
    }

    #[test]
    fn pure_v2_host_is_v2_and_jobs_go_next_to_the_caller() {
        let h = Hierarchy::choose(V2_HOST, "/system.slice/cmdx-agent.service".into(), &|_| {
            true
        })
        .expect("hierarchy");
        assert_eq!(h.version(), CgroupVersion::V2);
        if cgroup_parent_override().is_none() {
            assert_eq!(h.parent_rel(), Path::new("system.slice/cmdx"));
            let root = Hierarchy::choose(V2_HOST, "/".into(), &|_| true).expect("hierarchy");
            assert_eq!(root.parent_rel(), Path::new("cmdx"));
        }
        assert!(Hierarchy::choose(V2_HOST, "/".into(), &|_| false).is_none());
    }

    /// Exercises the v2 join / `cgroup.kill` / empty / remove path on whichever cgroup2
    /// mount this host has (the hybrid `unified` mount here, `/sys/fs/cgroup` on v2 hosts).
    #[test]
    fn v2_cgroup_kill_empties_the_cgroup() {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        let mount = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
            .into_iter()
            .map(Path::new)
            .find(|m| {
                nix::sys::statfs::statfs(*m)
                    .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
            });
        let Some(mount) = mount.filter(|_| nix::unistd::geteuid().is_root()) else {
            assert_eq!(
                std::env::var("CMDX_SANDBOX_TESTS_UNPRIVILEGED").as_deref(),
                Ok("1"),
                "v2_cgroup_kill_empties_the_cgroup needs root and a cgroup2 mount (set CMDX_SANDBOX_TESTS_UNPRIVILEGED=1 to skip)"
            );
            eprintln!("v2_cgroup_kill_empties_the_cgroup: SKIPPED (no root or cgroup2 mount)");
            return;
        };
        let dir = mount.join(format!("cmdx-unit-{}", std::process::id()));
        fs::create_dir(&dir).expect("create cgroup");
        let cg = JobCgroup {
            version: CgroupVersion::V2,
            dirs: vec![dir.clone()],
            memory: dir.clone(),
            pids: dir.clone(),
            cpu: dir.clone(),
            cpuacct: Some(dir.clone()),
            freezer: Some(dir.clone()),
        };
        let files = cg.open_procs_files().expect("open procs");
        let fd = files[0].as_raw_fd();
        let mut cmd = std::process::Command::new("/bin/sh");
        cmd.args(["-c", "sleep 100 & sleep 100 & wait"]);
        // SAFETY: the closure only calls write(2) on an fd opened above.
        unsafe {
            cmd.pre_exec(move || {
                if libc::write(fd, b"0".as_ptr().cast(), 1) == 1 {
                    Ok(())
                } else {
                    Err(io::Error::last_os_error())
                }
            });
        }
        let mut child = cmd.spawn().expect("spawn");
        drop(files);
        let start = std::time::Instant::now();
        while cg.procs().len() < 3 {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "processes never joined: {:?}",
                cg.procs()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(!cg.is_empty());
        let listed = cg.kill_pass();
        assert_eq!(listed.len(), 3);
        let st = child.wait().expect("wait");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&st),
            Some(libc::SIGKILL)
        );
        while !cg.is_empty() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "cgroup never emptied: {:?}",
                cg.procs()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        cg.remove().expect("remove");
        assert!(!dir.exists());
    }
}
