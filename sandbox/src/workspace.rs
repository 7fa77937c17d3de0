//! The job's filesystem: a job dir, a private tmp and shm on one size-capped tmpfs.
//!
//! The tmpfs (`size=disk_bytes`, `nr_inodes` proportional, `nosuid,nodev`) is mounted at
//! `parent/name`, with `job/`, `tmp/` and `shm/` inside owned by the job's uid. The job can fill it
//! but not the host disk; its pages are also charged to the writing job's memory cgroup.
//! Removal unmounts (lazily, without following symlinks) and deletes the empty mount point,
//! so nothing the job planted inside is ever followed. Without `CAP_SYS_ADMIN` the workspace
//! falls back to plain directories without a size cap ([`Workspace::is_size_capped`]).

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};

use crate::error::{Error, Result};

/// The job dir and private tmp of one job.
///
/// Every ancestor of `parent` must be traversable (`o+x`) by the job's uid, or absolute
/// paths into the workspace will fail inside the job.
#[derive(Debug)]
pub struct Workspace {
    /// The job's working directory (read-write for the job).
    pub dir: PathBuf,
    /// The job's private temporary directory (read-write for the job; pass it as `TMPDIR`).
    pub tmp: PathBuf,
    /// The job's `/dev/shm` under a private root ([`Workspace::private_root`]).
    pub shm: PathBuf,
    /// `parent/name`: the tmpfs mount point (or plain directory) holding `dir` and `tmp`.
    root: PathBuf,
    /// Whether `root` is a tmpfs mounted by us.
    mounted: bool,
}

fn ws_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Workspace {
        op,
        path: path.to_path_buf(),
        source,
    }
}

fn nix_err(e: nix::errno::Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

impl Workspace {
    /// Create `parent/name` as a tmpfs of `disk_bytes` (when this process may mount), with
    /// `job/` (mode 0755) and `tmp/` (mode 0700) inside, owned by `owner` when given.
    pub fn create(
        parent: &Path,
        name: &str,
        disk_bytes: u64,
        owner: Option<(u32, u32)>,
    ) -> Result<Workspace> {
        if name.is_empty()
            || name == "."
            || name == ".."
            || name.contains('/')
            || name.contains('\0')
        {
            return Err(Error::InvalidSpec(format!(
                "workspace name {name:?} is not a plain file name"
            )));
        }
        let root = parent.join(name);
        fs::DirBuilder::new()
            .mode(0o755)
            .create(&root)
            .map_err(ws_err("create", &root))?;
        let mounted = crate::caps::caps().disk_tmpfs;
        if mounted {
            let inodes = (disk_bytes / 4096).max(1024);
            let opts = format!("size={disk_bytes},nr_inodes={inodes},mode=0755");
            if let Err(e) = nix::mount::mount(
                Some("cmdx-job"),
                &root,
                Some("tmpfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                Some(opts.as_str()),
            ) {
                let _ = fs::remove_dir(&root);
                return Err(Error::Workspace {
                    op: "mount tmpfs",
                    path: root,
                    source: nix_err(e),
                });
            }
        } else {
            tracing::warn!(path = %root.display(), "workspace without disk cap: cannot mount tmpfs");
        }
        let ws = Workspace {
            dir: root.join("job"),
            tmp: root.join("tmp"),
            shm: root.join("shm"),
            root,
            mounted,
        };
        if let Err(e) = ws.populate(owner) {
            let _ = ws.remove_inner();
            return Err(e);
        }
        Ok(ws)
    }

    fn populate(&self, owner: Option<(u32, u32)>) -> Result<()> {
        for (d, mode) in [(&self.dir, 0o755), (&self.tmp, 0o700), (&self.shm, 0o700)] {
            fs::DirBuilder::new()
                .mode(mode)
                .create(d)
                .map_err(ws_err("create", d))?;
            fs::set_permissions(d, fs::Permissions::from_mode(mode)).map_err(ws_err("chmod", d))?;
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::lchown(d, Some(uid), Some(gid)).map_err(ws_err("chown", d))?;
            }
        }
        Ok(())
    }

    /// The job's root with the host's system directories: `dir` at `/workspace`, `tmp` at
    /// `/tmp` and `shm` at `/dev/shm` (see [`crate::Root::host_system`]), all three inside
    /// this workspace's size cap.
    pub fn private_root(&self) -> crate::Root {
        crate::Root::host_system(&self.dir, &self.tmp, &self.shm)
    }

    /// The mount point holding `dir`, `tmp` and `shm`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether the workspace is a size-capped tmpfs (false: plain directories, no cap).
    pub fn is_size_capped(&self) -> bool {
        self.mounted
    }

    /// Unmount and delete the workspace without following any symlink the job planted.
    ///
    /// The tmpfs is detached (`MNT_DETACH | UMOUNT_NOFOLLOW`), which discards its content
    /// without walking it; only the then-empty mount point is removed. Plain-directory
    /// workspaces are deleted with `remove_dir_all`, which never follows symlinks.
    pub fn remove(self) -> Result<()> {
        self.remove_inner()
    }

    /// Remove a workspace left behind by a previous run of the caller (after a crash), given
    /// its root `parent/name`: a tmpfs mounted there is detached first. Never follows a
    /// symlink: a symlink at `root` is removed itself, and directory trees are deleted with
    /// `remove_dir_all`, which does not follow symlinks either. A missing `root` is fine.
    pub fn remove_leftover(root: &Path) -> Result<()> {
        use std::os::unix::fs::MetadataExt;
        let meta = match fs::symlink_metadata(root) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                return Err(Error::Workspace {
                    op: "stat",
                    path: root.to_path_buf(),
                    source: e,
                });
            }
        };
        if !meta.is_dir() {
            return fs::remove_file(root).map_err(ws_err("remove", root));
        }
        let parent = root.parent().unwrap_or(Path::new("/"));
        let parent_dev = fs::metadata(parent).map_err(ws_err("stat", parent))?.dev();
        if meta.dev() != parent_dev {
            nix::mount::umount2(root, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW).map_err(
                |e| Error::Workspace {
                    op: "unmount",
                    path: root.to_path_buf(),
                    source: nix_err(e),
                },
            )?;
        }
        fs::remove_dir_all(root).map_err(ws_err("remove", root))
    }

    fn remove_inner(&self) -> Result<()> {
        if self.mounted {
            nix::mount::umount2(&self.root, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW)
                .map_err(|e| Error::Workspace {
                    op: "unmount",
                    path: self.root.clone(),
                    source: nix_err(e),
                })?;
            fs::remove_dir(&self.root).map_err(ws_err("remove", &self.root))
        } else {
            fs::remove_dir_all(&self.root).map_err(ws_err("remove", &self.root))
        }
    }
}
