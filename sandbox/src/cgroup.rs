//! Job cgroups on v1 and v2: detect the hierarchy, create a cgroup with limits, let the child
//! join it before `exec`, kill everything in it, account CPU / peak memory / OOM, remove it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

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

fn write_file(path: &Path, value: &str) -> Result<()> {
    fs::write(path, value).map_err(cg_err("write", path))
}

fn read_small(path: &Path) -> io::Result<String> {
    let mut s = String::new();
    File::open(path)?.read_to_string(&mut s)?;
    Ok(s)
}

impl JobCgroup {
    /// Create the cgroup `name` under the configured parent and apply `limits`.
    pub(crate) fn create(h: &Hierarchy, name: &str, limits: &Limits) -> Result<JobCgroup> {
        let rel = h.parent_rel();
        let mut cg = match h {
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
                    cpuacct: cpuacct.as_deref().map(job),
                    freezer: freezer.as_deref().map(job),
                }
                .with_dirs(job(cpu))
            }
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
                let dir = base.join(name);
                JobCgroup {
                    version: CgroupVersion::V2,
                    dirs: Vec::new(),
                    memory: dir.clone(),
                    pids: dir.clone(),
                    cpuacct: Some(dir.clone()),
                    freezer: Some(dir),
                }
                .with_dirs(PathBuf::new())
            }
        };
        let mut created = Vec::new();
        for d in std::mem::take(&mut cg.dirs) {
            if let Some(parent) = d.parent() {
                fs::create_dir_all(parent).map_err(cg_err("create", parent))?;
            }
            match fs::create_dir(&d) {
                Ok(()) => created.push(d),
                Err(e) => {
                    cg.dirs = created;
                    cg.remove_dirs();
                    return Err(Error::Cgroup {
                        op: "create",
                        path: d,
                        source: e,
                    });
                }
            }
        }
        cg.dirs = created;
        if let Err(e) = cg.apply_limits(limits, h) {
            cg.remove_dirs();
            return Err(e);
        }
        Ok(cg)
    }

    /// Fill `dirs` with the distinct directories (plus `extra`, the v1 cpu dir).
    fn with_dirs(mut self, extra: PathBuf) -> Self {
        let mut dirs = vec![self.memory.clone(), self.pids.clone()];
        if !extra.as_os_str().is_empty() {
            dirs.push(extra);
        }
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

    fn apply_limits(&self, limits: &Limits, h: &Hierarchy) -> Result<()> {
        let quota = u64::from(limits.cpu_millis).max(1) * CPU_PERIOD_US / 1000;
        match h {
            Hierarchy::V1 { cpu, .. } => {
                let cpu_dir = cpu
                    .join(h.parent_rel())
                    .join(self.pids.file_name().unwrap_or_default());
                write_file(
                    &self.memory.join("memory.limit_in_bytes"),
                    &limits.memory_bytes.to_string(),
                )?;
                let memsw = self.memory.join("memory.memsw.limit_in_bytes");
                if memsw.exists() {
                    write_file(&memsw, &limits.memory_bytes.to_string())?;
                }
                let swappiness = self.memory.join("memory.swappiness");
                if swappiness.exists() {
                    // Not fatal: the root memory cgroup may refuse it on some kernels.
                    let _ = fs::write(&swappiness, "0");
                }
                write_file(&self.pids.join("pids.max"), &limits.pids.to_string())?;
                write_file(
                    &cpu_dir.join("cpu.cfs_period_us"),
                    &CPU_PERIOD_US.to_string(),
                )?;
                write_file(&cpu_dir.join("cpu.cfs_quota_us"), &quota.to_string())?;
            }
            Hierarchy::V2 { .. } => {
                let d = &self.memory;
                write_file(&d.join("memory.max"), &limits.memory_bytes.to_string())?;
                let swap = d.join("memory.swap.max");
                if swap.exists() {
                    write_file(&swap, "0")?;
                }
                write_file(&d.join("pids.max"), &limits.pids.to_string())?;
                write_file(&d.join("cpu.max"), &format!("{quota} {CPU_PERIOD_US}"))?;
            }
        }
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
        read_small(&self.pids.join("cgroup.procs"))
            .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    /// Tasks charged to the pids controller, zombies included (until reaped).
    pub(crate) fn pids_current(&self) -> Option<u64> {
        read_small(&self.pids.join("pids.current"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    /// True when no process of the job is left, not even an unreaped zombie.
    pub(crate) fn is_empty(&self) -> bool {
        self.procs().is_empty() && self.pids_current().is_none_or(|n| n == 0)
    }

    /// Send `sig` to every process in the cgroup (no freezing: used for the polite TERM).
    pub(crate) fn signal_all(&self, sig: libc::c_int) {
        for pid in self.procs() {
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
                self.signal_all(libc::SIGKILL);
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
                self.signal_all(libc::SIGKILL);
                let _ = fs::write(&state, "THAWED");
            }
            (_, None) => {
                procs = self.procs();
                self.signal_all(libc::SIGKILL);
            }
        }
        procs
    }

    /// CPU time used by the whole job.
    pub(crate) fn cpu_time(&self) -> Option<Duration> {
        let d = self.cpuacct.as_ref()?;
        match self.version {
            CgroupVersion::V2 => read_small(&d.join("cpu.stat")).ok().and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("usage_usec "))
                    .and_then(|v| v.trim().parse().ok())
                    .map(Duration::from_micros)
            }),
            _ => read_small(&d.join("cpuacct.usage"))
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .map(Duration::from_nanos),
        }
    }

    /// Peak memory charged to the job (v1 `memory.max_usage_in_bytes`, v2 `memory.peak`).
    pub(crate) fn peak_memory(&self) -> Option<u64> {
        let f = match self.version {
            CgroupVersion::V2 => "memory.peak",
            _ => "memory.max_usage_in_bytes",
        };
        read_small(&self.memory.join(f))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    /// Whether the kernel OOM killer killed a process of the job.
    pub(crate) fn oom_killed(&self) -> bool {
        let f = match self.version {
            CgroupVersion::V2 => "memory.events",
            _ => "memory.oom_control",
        };
        read_small(&self.memory.join(f)).ok().is_some_and(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("oom_kill "))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .is_some_and(|n| n > 0)
        })
    }

    /// Remove the job's directories (fails with EBUSY while processes remain).
    pub(crate) fn remove(&self) -> Result<()> {
        let mut first = None;
        for d in &self.dirs {
            if let Err(e) = fs::remove_dir(d)
                && e.kind() != io::ErrorKind::NotFound
                && first.is_none()
            {
                first = Some(Error::Cgroup {
                    op: "remove",
                    path: d.clone(),
                    source: e,
                });
            }
        }
        first.map_or(Ok(()), Err)
    }

    fn remove_dirs(&self) {
        for d in &self.dirs {
            let _ = fs::remove_dir(d);
        }
    }

    /// The main directory (v2) or the pids directory (v1), for diagnostics and tests.
    pub(crate) fn path(&self) -> &Path {
        &self.pids
    }
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
