//! Files and folders of the data folder, created readable by the hub's user alone whatever the
//! umask (`cmdx dev` and a hand-run `cmdx hub` have no systemd `UMask`): the store holds password
//! hashes and job environments, `blobs/` users' code and artifacts, `secrets/` the signing keys,
//! and a backup all of them.
//!
//! The data folder itself is 0711: other users may pass through it (the local agents of `cmdx
//! dev` keep their job workspaces in `DATA/agents`, which jobs' unprivileged uids must reach)
//! but not list it; every folder the hub keeps in it is 0700 and every file it writes 0600.

use std::fs::{DirBuilder, File, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

/// Mode of the data folder: traversable, not listable, by others.
pub const DATA_DIR_MODE: u32 = 0o711;
/// Mode of every folder the hub keeps inside it.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every file the hub writes.
pub const FILE_MODE: u32 = 0o600;

/// Creates `path` (and missing parents, which get `mode` too) and sets its mode to `mode`,
/// tightening a folder an earlier version or the operator created more open.
pub fn dir(path: &Path, mode: u32) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(mode).create(path)?;
    std::fs::set_permissions(path, Permissions::from_mode(mode))
}

/// Options creating (or truncating) a file with mode [`FILE_MODE`].
pub fn file_options() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.write(true).create(true).truncate(true).mode(FILE_MODE);
    o
}

/// Creates (or truncates) a file with mode [`FILE_MODE`].
pub fn create_file(path: &Path) -> io::Result<File> {
    file_options().open(path)
}

/// [`create_file`] for async callers.
pub async fn create_file_async(path: &Path) -> io::Result<tokio::fs::File> {
    let mut o = tokio::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true).mode(FILE_MODE);
    o.open(path).await
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use nix::sys::stat::{Mode, umask};

    use super::*;

    /// The modes hold under the most open umask: set it for this process only while checking.
    #[test]
    fn modes_ignore_the_umask() {
        let tmp = tempfile::tempdir().unwrap();
        // Other tests of this binary create files only in their own temp folders, which a brief
        // 0 umask does not expose.
        let old = umask(Mode::empty());
        let d = tmp.path().join("a/b");
        dir(&d, DIR_MODE).unwrap();
        let f = d.join("f");
        create_file(&f).unwrap();
        umask(old);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&d), 0o700);
        assert_eq!(mode(&tmp.path().join("a")), 0o700);
        assert_eq!(mode(&f), 0o600);
        // A folder created open by someone else is tightened.
        let open = tmp.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, Permissions::from_mode(0o777)).unwrap();
        dir(&open, DIR_MODE).unwrap();
        assert_eq!(mode(&open), 0o700);
    }
}
