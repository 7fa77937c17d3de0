//! The job's private root: a mount namespace built once per [`Root`] layout (the
//! *template*), which every job enters and then copies, adding only its own mounts.
//!
//! # The template (built once per layout, on a thread of its own)
//! The thread unshares a mount namespace (which also unshares its working directory and
//! root), makes every mount private, mounts a small tmpfs over a scratch directory and
//! `pivot_root`s into it, so the host tree sits at `/oldroot` for the build. Into the tmpfs
//! go, as in bubblewrap:
//! - each read-only bind of the layout, recursively, with `MOUNT_ATTR_RDONLY | NOSUID |
//!   NODEV` on every mount of the bind; a source that is a symlink on the host (`/bin` on a
//!   merged-`/usr` system) becomes the same symlink; a missing source is skipped;
//! - `/dev`: its own tmpfs holding bind mounts of the host's `null`, `zero`, `full`,
//!   `random`, `urandom` and `tty` nodes, the `fd`, `stdin`, `stdout` and `stderr` links
//!   into `/proc/self/fd`, `shm`, and `pts` with the `ptmx` link into it (a job with a
//!   terminal gets its own devpts instance there, see the `pty` module); then read-only
//!   (`nosuid`, `noexec`);
//! - empty mount points for `/proc` and for every read-write bind of the layout.
//!
//! The host tree is then detached (`umount2(MNT_DETACH)`) and the root tmpfs made
//! read-only. The namespace outlives the thread through a descriptor of it, kept with an
//! `O_PATH` descriptor of its root (landlock's read rule is attached to that root, so it
//! covers exactly what the job can see).
//!
//! # Per job (in the cloned child, raw system calls only)
//! `setns` into the template, `unshare(CLONE_NEWNS)` (a private copy of its dozen mounts),
//! `move_mount` of each read-write bind, detached trees the parent cloned with
//! `open_tree(OPEN_TREE_CLONE)` before the clone (the child never needs a host path), and of
//! the job's devpts instance when it has a terminal, a new
//! `/proc` for the job's PID namespace (`hidepid=invisible`, `nosuid,nodev,noexec`), and
//! `chdir` to the job's working directory. The job's mount namespace dies with its last
//! process. No directory is created or removed per job.
//!
//! Needs Linux 5.12 (`open_tree`/`move_mount` 5.2, `hidepid=invisible` 5.8,
//! `mount_setattr` 5.12) and `CAP_SYS_ADMIN`.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

use nix::mount::{MntFlags, MsFlags};

use crate::error::{Error, Result};

/// One bind mount into the job's root.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Bind {
    /// Absolute path on the host.
    pub source: PathBuf,
    /// Absolute path inside the job's root.
    pub target: PathBuf,
}

impl Bind {
    /// `source` on the host at `target` in the job's root.
    pub fn new(source: impl Into<PathBuf>, target: impl Into<PathBuf>) -> Self {
        Self {
            source: source.into(),
            target: target.into(),
        }
    }

    /// The same path on the host and in the job's root.
    pub fn same(path: impl Into<PathBuf>) -> Self {
        let p = path.into();
        Self::new(p.clone(), p)
    }
}

/// The root a job sees (see [`crate::Spec::root`]): nothing but these binds, its own
/// `/proc` and a minimal `/dev`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Root {
    /// Mounted read-only (and `nosuid,nodev`), shared by every job with the same layout:
    /// the system directories, or later an image's root.
    pub read_only: Vec<Bind>,
    /// Mounted read-write per job: the job's workspace, its tmp, its `/dev/shm`.
    pub read_write: Vec<Bind>,
}

impl Root {
    /// The host's system directories read-only (`/usr`, `/bin`, `/sbin`, `/lib*`, `/etc`,
    /// those that exist), `workspace` at `/workspace`, `tmp` at `/tmp` and `shm` at
    /// `/dev/shm` read-write. Nothing else of the host is visible: no `/home`, `/root`,
    /// `/var`, `/run`, host `/tmp` or the caller's own directories.
    pub fn host_system(workspace: &Path, tmp: &Path, shm: &Path) -> Self {
        Self {
            read_only: [
                "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc",
            ]
            .into_iter()
            .map(Bind::same)
            .collect(),
            read_write: vec![
                Bind::new(workspace, "/workspace"),
                Bind::new(tmp, "/tmp"),
                Bind::new(shm, "/dev/shm"),
            ],
        }
    }

    /// Checks the layout: absolute paths, no `..`, no bind over `/`, `/proc`, `/dev` or
    /// `/dev/pts`.
    pub(crate) fn validate(&self) -> Result<()> {
        for b in self.read_only.iter().chain(&self.read_write) {
            let ok = |p: &Path| {
                p.is_absolute()
                    && !p.as_os_str().as_encoded_bytes().contains(&0)
                    && p.components().all(|c| !matches!(c, Component::ParentDir))
            };
            if !ok(&b.source) || !ok(&b.target) {
                return Err(Error::InvalidSpec(format!(
                    "root bind {} -> {} needs absolute paths without `..`",
                    b.source.display(),
                    b.target.display()
                )));
            }
            let t = relative(&b.target);
            if t.as_os_str().is_empty()
                || t == Path::new("proc")
                || t == Path::new("dev")
                || t == Path::new("dev/pts")
            {
                return Err(Error::InvalidSpec(format!(
                    "root bind target {} is reserved",
                    b.target.display()
                )));
            }
        }
        Ok(())
    }
}

/// What the template keeps alive: the namespace and its root.
#[derive(Debug)]
pub(crate) struct Template {
    ns: OwnedFd,
    root: OwnedFd,
}

impl Template {
    /// The mount namespace to `setns` into.
    pub(crate) fn ns_fd(&self) -> RawFd {
        self.ns.as_raw_fd()
    }

    /// An `O_PATH` descriptor of the template's `/` (for landlock's read rule).
    pub(crate) fn root_fd(&self) -> &OwnedFd {
        &self.root
    }
}

type Key = (Vec<Bind>, Vec<PathBuf>);

static TEMPLATES: Mutex<Option<HashMap<Key, Arc<Template>>>> = Mutex::new(None);

/// The template for `root`'s layout, built on first use.
pub(crate) fn template(root: &Root) -> Result<Arc<Template>> {
    let key: Key = (
        root.read_only.clone(),
        root.read_write.iter().map(|b| b.target.clone()).collect(),
    );
    let mut guard = TEMPLATES.lock().unwrap_or_else(|e| e.into_inner());
    let map = guard.get_or_insert_with(HashMap::new);
    if let Some(t) = map.get(&key) {
        return Ok(t.clone());
    }
    let (ro, rw) = (key.0.clone(), key.1.clone());
    let built = std::thread::Builder::new()
        .name("cmdx-sandbox-root".into())
        .spawn(move || build(&ro, &rw))
        .map_err(|source| root_err("start the root builder thread", source))?
        .join()
        .map_err(|_| root_err("build the job root", io::Error::other("builder panicked")))??;
    let t = Arc::new(built);
    map.insert(key, t.clone());
    Ok(t)
}

/// Forgets every template built over `read_only` (whatever its read-write mount points): the
/// next job with such a layout builds a fresh one. For a caller about to remove or replace the
/// directories those binds name (an evicted image); jobs running in an old template keep it
/// until they end.
pub fn release_template(read_only: &[Bind]) {
    let mut guard = TEMPLATES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(map) = guard.as_mut() {
        map.retain(|key, _| key.0 != read_only);
    }
}

fn root_err(op: &'static str, source: io::Error) -> Error {
    Error::Root { op, source }
}

fn nix_io(e: nix::errno::Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// `/a/b` -> `a/b` (paths are used relative to the new root while it is built).
fn relative(p: &Path) -> PathBuf {
    p.components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .collect()
}

const OLD: &str = "oldroot";
const DEV_NODES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];
const DEV_LINKS: [(&str, &str); 5] = [
    ("fd", "/proc/self/fd"),
    ("ptmx", "pts/ptmx"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
];

const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;
const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;

/// `mount_setattr(dirfd, path, flags, {attr_set})`.
fn set_attr(dirfd: RawFd, path: &CString, flags: libc::c_int, set: u64) -> io::Result<()> {
    let attr = libc::mount_attr {
        attr_set: set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: path is NUL-terminated; attr is a valid mount_attr of the size passed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            dirfd,
            path.as_ptr(),
            flags,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Builds a template; runs on a thread of its own (its mount namespace, root and working
/// directory change).
fn build(read_only: &[Bind], read_write: &[PathBuf]) -> Result<Template> {
    let step = |op: &'static str| move |source: io::Error| root_err(op, source);
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
        .map_err(|e| step("unshare a mount namespace")(nix_io(e)))?;
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| step("make mounts private")(nix_io(e)))?;
    // Any existing directory will do as the scratch mount point: the mount is only in this
    // namespace.
    let scratch = ["/tmp", "/mnt", "/run", "/var/tmp"]
        .into_iter()
        .find(|d| Path::new(d).is_dir())
        .ok_or_else(|| {
            step("find a scratch directory")(io::Error::from_raw_os_error(libc::ENOENT))
        })?;
    nix::mount::mount(
        Some("cmdx-root"),
        scratch,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755,size=1m,nr_inodes=4096"),
    )
    .map_err(|e| step("mount the root tmpfs")(nix_io(e)))?;
    std::env::set_current_dir(scratch).map_err(step("enter the root tmpfs"))?;
    fs::create_dir(OLD).map_err(step("create /oldroot"))?;
    nix::unistd::pivot_root(".", OLD).map_err(|e| step("pivot_root")(nix_io(e)))?;
    std::env::set_current_dir("/").map_err(step("enter the new root"))?;
    let ns = fs::File::open(format!("/{OLD}/proc/thread-self/ns/mnt"))
        .map_err(step("open the mount namespace"))?;

    let old = Path::new("/").join(OLD);
    for b in read_only {
        bind_read_only(&old, b)?;
    }
    build_dev(&old)?;
    fs::DirBuilder::new()
        .mode(0o555)
        .create("/proc")
        .map_err(step("create /proc"))?;
    for t in read_write {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(Path::new("/").join(relative(t)))
            .map_err(step("create a read-write mount point"))?;
    }
    // /dev read-only once its mount points exist.
    nix::mount::mount(
        None::<&str>,
        "/dev",
        None::<&str>,
        MsFlags::MS_REMOUNT
            | MsFlags::MS_BIND
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|e| step("make /dev read-only")(nix_io(e)))?;
    nix::mount::umount2(&old, MntFlags::MNT_DETACH)
        .map_err(|e| step("detach the host tree")(nix_io(e)))?;
    fs::remove_dir(&old).map_err(step("remove /oldroot"))?;
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REMOUNT
            | MsFlags::MS_BIND
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV,
        None::<&str>,
    )
    .map_err(|e| step("make / read-only")(nix_io(e)))?;
    let root = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open("/")
        .map_err(step("open the new root"))?;
    Ok(Template {
        ns: OwnedFd::from(ns),
        root: OwnedFd::from(root),
    })
}

fn bind_read_only(old: &Path, b: &Bind) -> Result<()> {
    let step = |op: &'static str| move |source: io::Error| root_err(op, source);
    let src = old.join(relative(&b.source));
    let dst = Path::new("/").join(relative(&b.target));
    let Ok(meta) = fs::symlink_metadata(&src) else {
        return Ok(());
    };
    if let Some(parent) = dst.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)
            .map_err(step("create a bind's parent"))?;
    }
    if meta.file_type().is_symlink() {
        let link = fs::read_link(&src).map_err(step("read a system symlink"))?;
        std::os::unix::fs::symlink(link, &dst).map_err(step("copy a system symlink"))?;
        return Ok(());
    }
    if meta.is_dir() {
        fs::DirBuilder::new()
            .mode(0o755)
            .create(&dst)
            .map_err(step("create a bind mount point"))?;
    } else {
        fs::File::create(&dst).map_err(step("create a bind mount point"))?;
    }
    nix::mount::mount(
        Some(&src),
        &dst,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| step("bind a read-only path")(nix_io(e)))?;
    set_attr(
        libc::AT_FDCWD,
        &cpath(&dst).map_err(step("bind a read-only path"))?,
        libc::AT_RECURSIVE,
        MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
    )
    .map_err(step("make a bind read-only"))
}

fn build_dev(old: &Path) -> Result<()> {
    let step = |op: &'static str| move |source: io::Error| root_err(op, source);
    fs::DirBuilder::new()
        .mode(0o755)
        .create("/dev")
        .map_err(step("create /dev"))?;
    nix::mount::mount(
        Some("cmdx-dev"),
        "/dev",
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=0755,size=64k,nr_inodes=64"),
    )
    .map_err(|e| step("mount /dev")(nix_io(e)))?;
    for n in DEV_NODES {
        let dst = Path::new("/dev").join(n);
        let src = old.join("dev").join(n);
        if fs::symlink_metadata(&src).is_err() {
            continue;
        }
        fs::File::create(&dst).map_err(step("create a device mount point"))?;
        nix::mount::mount(
            Some(&src),
            &dst,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| step("bind a device node")(nix_io(e)))?;
    }
    for (name, to) in DEV_LINKS {
        std::os::unix::fs::symlink(to, Path::new("/dev").join(name))
            .map_err(step("create a /dev link"))?;
    }
    fs::DirBuilder::new()
        .mode(0o755)
        .create("/dev/shm")
        .map_err(step("create /dev/shm"))?;
    // Where a job with a terminal gets its devpts instance (empty for the others).
    fs::DirBuilder::new()
        .mode(0o755)
        .create("/dev/pts")
        .map_err(step("create /dev/pts"))?;
    Ok(())
}

/// Closes `fd`, a job's mount namespace, on a thread of its own. Its last close unmounts the
/// job's tree, which waits for an RCU grace period (milliseconds on a busy host): held by the
/// caller until the job is over, the namespace is not torn down in the init's exit, on the
/// path every job's report waits for.
pub(crate) fn release(fd: OwnedFd) {
    static CLOSER: Mutex<Option<std::sync::mpsc::Sender<OwnedFd>>> = Mutex::new(None);
    let mut guard = CLOSER.lock().unwrap_or_else(|e| e.into_inner());
    let tx = guard.get_or_insert_with(|| {
        let (tx, rx) = std::sync::mpsc::channel::<OwnedFd>();
        let spawned = std::thread::Builder::new()
            .name("cmdx-sandbox-ns-release".into())
            .spawn(move || rx.into_iter().for_each(drop));
        if spawned.is_err() {
            tracing::warn!("no thread to release job namespaces on: closing them inline");
        }
        tx
    });
    if let Err(e) = tx.send(fd) {
        // The closer is gone: close it here.
        *guard = None;
        drop(e.0);
    }
}

/// A descriptor of the mount namespace of process `pid` (see [`release`]).
pub(crate) fn hold_namespace(pid: i32) -> Option<OwnedFd> {
    fs::File::open(format!("/proc/{pid}/ns/mnt"))
        .ok()
        .map(OwnedFd::from)
}

/// One read-write bind of one job, cloned by the parent before the child is started.
#[derive(Debug)]
pub(crate) struct JobBind {
    /// The detached mount tree (`open_tree(OPEN_TREE_CLONE)`).
    pub(crate) tree: OwnedFd,
    /// Where it goes in the job's root.
    pub(crate) target: CString,
}

/// Clones every read-write bind of `root` as a detached mount (`nosuid,nodev`).
pub(crate) fn job_binds(root: &Root) -> Result<Vec<JobBind>> {
    let step = |op: &'static str| move |source: io::Error| root_err(op, source);
    root.read_write
        .iter()
        .map(|b| {
            let src = cpath(&b.source).map_err(step("clone a read-write bind"))?;
            // SAFETY: src is NUL-terminated; open_tree returns a new descriptor or -1.
            let fd = unsafe {
                libc::syscall(
                    libc::SYS_open_tree,
                    libc::AT_FDCWD,
                    src.as_ptr(),
                    OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
                )
            };
            if fd < 0 {
                return Err(Error::Workspace {
                    op: "clone a read-write bind of",
                    path: b.source.clone(),
                    source: io::Error::last_os_error(),
                });
            }
            // SAFETY: open_tree returned a new descriptor that nobody else owns.
            let tree = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
            set_attr(
                tree.as_raw_fd(),
                &CString::default(),
                libc::AT_EMPTY_PATH,
                MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
            )
            .map_err(step("set nosuid,nodev on a read-write bind"))?;
            Ok(JobBind {
                tree,
                target: cpath(&b.target).map_err(step("clone a read-write bind"))?,
            })
        })
        .collect()
}

/// `move_mount(tree, "", AT_FDCWD, target, MOVE_MOUNT_F_EMPTY_PATH)`: raw, for the child.
pub(crate) fn attach(tree: RawFd, target: &CString) -> libc::c_long {
    // SAFETY: an empty NUL-terminated source path and a NUL-terminated target, both alive
    // for the call.
    unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree,
            c"".as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    }
}
