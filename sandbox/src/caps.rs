//! What this host supports: cgroup version, landlock ABI, namespaces, seccomp, uid drop,
//! tmpfs disk caps. Probed once and cached.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use crate::cgroup::Hierarchy;

/// Which cgroup hierarchy the sandbox uses for limits and the final kill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    /// Legacy hierarchies, one mount per controller (`/sys/fs/cgroup/memory`, ...).
    V1,
    /// The unified hierarchy (`/sys/fs/cgroup` is `cgroup2`, or a hybrid `unified` mount
    /// with the controllers attached).
    V2,
    /// No usable memory + pids + cpu controllers (or no permission to create cgroups).
    None,
}

/// The isolation features this host offers to [`crate::spawn`].
#[derive(Debug, Clone)]
pub struct Capabilities {
    /// The cgroup hierarchy used for limits, accounting and the whole-job kill.
    pub cgroup: CgroupVersion,
    /// Landlock ABI of the running kernel (`None`: not built in or not enabled).
    pub landlock_abi: Option<i32>,
    /// `CAP_SYS_ADMIN`: a private, empty network namespace can be created per job.
    pub netns: bool,
    /// `CAP_SYS_ADMIN`: private IPC and UTS namespaces per job (SysV shared memory, message
    /// queues and semaphores die with the job and are invisible to other jobs; the host name
    /// is the job's own).
    pub ipcns: bool,
    /// `CAP_SYS_ADMIN`, PID and mount namespaces and the new mount API (Linux 5.12+): a
    /// job can get its own root ([`crate::Root`]) and PID namespace.
    pub private_root: bool,
    /// `CAP_SETUID` + `CAP_SETGID`: the job can be dropped to an unprivileged uid/gid.
    pub uid_drop: bool,
    /// seccomp-bpf filters are supported.
    pub seccomp: bool,
    /// `CAP_SYS_ADMIN` and tmpfs: [`crate::Workspace`] can be a size-capped tmpfs.
    pub disk_tmpfs: bool,
    /// Where job cgroups are created.
    pub(crate) hierarchy: Option<Hierarchy>,
}

impl Capabilities {
    /// The cgroup version in use.
    pub fn cgroup_version(&self) -> CgroupVersion {
        self.cgroup
    }

    /// Names of the layers this host can apply, e.g. `cgroup-v1`, `netns`, `landlock-abi7`.
    pub fn active_layers(&self) -> Vec<String> {
        self.layers()
            .into_iter()
            .filter(|(_, ok)| *ok)
            .map(|(n, _)| n)
            .collect()
    }

    /// Names of the layers this host cannot apply that [`crate::Mode::Strict`] requires:
    /// every missing layer, except landlock's TCP rules and scopes when the job has a
    /// private root and a network namespace. Those two are then a second wall: the network
    /// namespace already has no route out and holds the only abstract unix sockets the job
    /// can reach, and the job can neither see nor name (by pid) a process outside its PID
    /// namespace, while its uid keeps it from signalling other jobs.
    pub fn missing_required(&self) -> Vec<String> {
        let walls = self.private_root && self.netns;
        self.missing()
            .into_iter()
            .filter(|l| !(walls && is_second_wall(l)))
            .collect()
    }

    /// Names of the layers this host cannot apply (empty when everything is available).
    pub fn missing(&self) -> Vec<String> {
        self.layers()
            .into_iter()
            .filter(|(_, ok)| !*ok)
            .map(|(n, _)| n)
            .collect()
    }

    fn layers(&self) -> Vec<(String, bool)> {
        let abi = self.landlock_abi.unwrap_or(0);
        let mut v = vec![
            match self.cgroup {
                CgroupVersion::V1 => ("cgroup-v1".to_owned(), true),
                CgroupVersion::V2 => ("cgroup-v2".to_owned(), true),
                CgroupVersion::None => ("cgroup".to_owned(), false),
            },
            ("session".to_owned(), true),
            ("netns".to_owned(), self.netns),
            ("ipcns".to_owned(), self.ipcns),
            ("pidns".to_owned(), self.private_root),
            ("private-root".to_owned(), self.private_root),
            ("uid".to_owned(), self.uid_drop),
            ("no_new_privs".to_owned(), true),
            ("pdeathsig".to_owned(), true),
            ("rlimits".to_owned(), true),
            ("close-fds".to_owned(), true),
            ("clean-env".to_owned(), true),
        ];
        if abi >= 1 {
            v.push((format!("landlock-abi{abi}"), true));
        } else {
            v.push(("landlock".to_owned(), false));
        }
        v.push(("landlock-tcp".to_owned(), abi >= 4));
        v.push(("landlock-scopes".to_owned(), abi >= 6));
        v.push(("seccomp".to_owned(), self.seccomp));
        v.push(("disk-tmpfs".to_owned(), self.disk_tmpfs));
        v
    }
}

/// Layers that [`Capabilities::missing_required`] lets strict mode do without when the
/// private root and the network namespace stand.
pub(crate) fn is_second_wall(layer: &str) -> bool {
    layer == "landlock-tcp" || layer == "landlock-scopes"
}

/// Environment variable capping the landlock ABI the sandbox uses (an integer): reproduces
/// an older kernel's sandbox on a newer one (tests, or an operator comparing hosts).
pub const LANDLOCK_ABI_MAX_ENV: &str = "CMDX_SANDBOX_LANDLOCK_ABI_MAX";

static CAPS: OnceLock<Capabilities> = OnceLock::new();
static CGROUP_PARENT: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Probe the host once (cheap: a few `/proc` reads and one landlock syscall) and cache it.
pub fn probe() -> Capabilities {
    caps().clone()
}

/// The cached probe result.
pub(crate) fn caps() -> &'static Capabilities {
    CAPS.get_or_init(probe_uncached)
}

/// Set where job cgroups are created, relative to each hierarchy's mount point
/// (v1: `/sys/fs/cgroup/<controller>/<parent>`, v2: `<mount>/<parent>`).
///
/// Default: `cmdx` on v1; on v2 `cmdx` when the caller sits in the root cgroup, otherwise a
/// `cmdx` sibling of the caller's own cgroup (a delegated subtree, e.g. systemd
/// `Delegate=yes`). Takes effect for cgroups created after the call.
pub fn set_cgroup_parent(parent: impl Into<PathBuf>) {
    let p = parent.into();
    let rel = p.strip_prefix("/").unwrap_or(&p).to_path_buf();
    *CGROUP_PARENT.lock().unwrap_or_else(|e| e.into_inner()) = Some(rel);
}

pub(crate) fn cgroup_parent_override() -> Option<PathBuf> {
    CGROUP_PARENT
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
}

fn probe_uncached() -> Capabilities {
    let caps = effective_caps();
    let has = |bit: u32| caps & (1u64 << bit) != 0;
    let (sys_admin, setuid, setgid) = (has(21), has(7), has(6));
    let hierarchy = Hierarchy::detect(sys_admin || nix::unistd::geteuid().is_root());
    // SAFETY: prctl(PR_GET_SECCOMP) only reads the calling thread's seccomp mode.
    let seccomp = unsafe { libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0) } >= 0;
    let tmpfs = std::fs::read_to_string("/proc/filesystems")
        .map(|s| {
            s.lines()
                .any(|l| l.split_whitespace().last() == Some("tmpfs"))
        })
        .unwrap_or(false);
    Capabilities {
        cgroup: hierarchy
            .as_ref()
            .map_or(CgroupVersion::None, Hierarchy::version),
        landlock_abi: landlock_abi().and_then(|abi| {
            match std::env::var(LANDLOCK_ABI_MAX_ENV)
                .ok()
                .and_then(|v| v.trim().parse::<i32>().ok())
            {
                Some(max) if max < 1 => None,
                Some(max) => Some(abi.min(max)),
                None => Some(abi),
            }
        }),
        netns: sys_admin && Path::new("/proc/self/ns/net").exists(),
        ipcns: sys_admin
            && Path::new("/proc/self/ns/ipc").exists()
            && Path::new("/proc/self/ns/uts").exists(),
        private_root: sys_admin
            && Path::new("/proc/self/ns/pid").exists()
            && Path::new("/proc/self/ns/mnt").exists()
            && has_mount_setattr(),
        uid_drop: setuid && setgid,
        seccomp,
        disk_tmpfs: sys_admin && tmpfs,
        hierarchy,
    }
}

/// Whether the kernel has `mount_setattr` (5.12, the newest call the private root uses):
/// with a bad descriptor it fails with `EBADF`, or `ENOSYS` when it does not exist.
fn has_mount_setattr() -> bool {
    // SAFETY: the kernel rejects descriptor -1 before it reads the (null) attribute pointer.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            -1,
            c"".as_ptr(),
            0,
            std::ptr::null::<libc::c_void>(),
            0usize,
        )
    };
    r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ENOSYS)
}

/// `CapEff` of this process from `/proc/self/status`.
fn effective_caps() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

/// The kernel's landlock ABI version, via `landlock_create_ruleset(NULL, 0, VERSION)`.
fn landlock_abi() -> Option<i32> {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: with a NULL attribute pointer, size 0 and the VERSION flag the syscall only
    // returns the ABI version; no memory is read or written.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    (v >= 1).then(|| i32::try_from(v).unwrap_or(i32::MAX))
}

/// The landlock crate's ABI value for a kernel ABI number (capped at the newest it knows).
pub(crate) fn landlock_crate_abi(abi: i32) -> landlock::ABI {
    use landlock::ABI;
    match abi {
        i32::MIN..=0 => ABI::Unsupported,
        1 => ABI::V1,
        2 => ABI::V2,
        3 => ABI::V3,
        4 => ABI::V4,
        5 => ABI::V5,
        6 => ABI::V6,
        7 => ABI::V7,
        8 => ABI::V8,
        9 => ABI::V9,
        _ => ABI::V10,
    }
}
