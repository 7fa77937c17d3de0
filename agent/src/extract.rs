//! Safe extraction of a job's ZIP into its job directory.
//!
//! A ZIP comes from a user and is hostile until proven otherwise. Before anything is written
//! the archive must have at most `max_entries` entries, no duplicate names, and every name must
//! be a plain relative path (no `..`, no absolute path, no NUL). While writing, only regular
//! files and directories are created (symlink, device, fifo and socket entries are rejected),
//! every file is created with `create_new` (never through an existing path), modes are masked
//! to `0o755`/`0o644`, and the bytes actually decompressed are counted (declared sizes lie):
//! the total is capped, and so is the ratio of decompressed to compressed bytes. Everything is
//! extracted into a fresh staging directory inside the job directory and moved into place only
//! when the whole archive passed, so a rejected archive leaves nothing behind.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, Read as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use crate::error::JobError;

/// Caps applied while extracting.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ExtractLimits {
    /// Most entries (files and directories).
    pub max_entries: usize,
    /// Most decompressed bytes in total.
    pub max_bytes: u64,
    /// Largest decompressed/compressed ratio, per entry and for the archive.
    pub max_ratio: u64,
    /// Ratio checks apply only above this many decompressed bytes.
    pub ratio_floor: u64,
}

/// What an extraction wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Extracted {
    /// Regular files written.
    pub files: usize,
    /// Bytes written.
    pub bytes: u64,
}

/// Extracts `zip_path` into `dest` (an existing, empty directory), then hands every created
/// path to `owner` (uid, gid) when given. Blocking: run it on a blocking thread.
pub(crate) fn extract_zip(
    zip_path: &Path,
    dest: &Path,
    limits: ExtractLimits,
    owner: Option<(u32, u32)>,
) -> Result<Extracted, JobError> {
    let staging = dest.join(format!(".cmdx-extract-{:016x}", rand::random::<u64>()));
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&staging)
        .map_err(|e| JobError::io("create", &staging, e))?;
    let result = extract_into(zip_path, &staging, limits).and_then(|done| {
        if let Some((uid, gid)) = owner {
            chown_tree(&staging, uid, gid)?;
        }
        move_children(&staging, dest)?;
        Ok(done)
    });
    // On success the staging dir is empty; on failure it holds the partial extraction.
    // remove_dir_all never follows symlinks, and extraction creates none.
    if let Err(e) = fs::remove_dir_all(&staging)
        && e.kind() != io::ErrorKind::NotFound
    {
        tracing::warn!(path = %staging.display(), error = %e, "cannot remove staging dir");
    }
    result
}

fn bad(msg: impl Into<String>) -> JobError {
    JobError::Extract(msg.into())
}

fn extract_into(
    zip_path: &Path,
    staging: &Path,
    limits: ExtractLimits,
) -> Result<Extracted, JobError> {
    let file = File::open(zip_path).map_err(|e| JobError::io("open", zip_path, e))?;
    let archive_size = file
        .metadata()
        .map_err(|e| JobError::io("stat", zip_path, e))?
        .len();
    let mut archive =
        zip::ZipArchive::new(io::BufReader::new(file)).map_err(|e| bad(format!("{e}")))?;
    if archive.len() > limits.max_entries {
        return Err(bad(format!(
            "{} entries, more than the limit of {}",
            archive.len(),
            limits.max_entries
        )));
    }
    if archive.has_duplicate_names() {
        return Err(bad("duplicate entry names"));
    }

    // First pass: validate every name before writing anything.
    let mut seen = HashSet::with_capacity(archive.len());
    let mut plan = Vec::with_capacity(archive.len());
    for i in 0..archive.len() {
        let entry = archive
            .by_index_raw(i)
            .map_err(|e| bad(format!("entry {i}: {e}")))?;
        let name = entry
            .name()
            .map_err(|e| bad(format!("entry {i}: bad name: {e}")))?
            .into_owned();
        let rel = safe_relative_path(&name).map_err(|why| bad(format!("entry {name:?}: {why}")))?;
        let kind = entry_kind(entry.unix_mode(), entry.is_dir())
            .map_err(|why| bad(format!("entry {name:?}: {why}")))?;
        if !seen.insert(rel.clone()) {
            return Err(bad(format!("duplicate entry name {name:?}")));
        }
        plan.push((rel, kind, name));
    }

    // Second pass: write.
    let mut done = Extracted { files: 0, bytes: 0 };
    for (i, (rel, kind, name)) in plan.into_iter().enumerate() {
        let target = staging.join(&rel);
        match kind {
            EntryKind::Dir => create_dirs(staging, &rel)?,
            EntryKind::File { executable } => {
                if let Some(parent) = rel.parent() {
                    create_dirs(staging, parent)?;
                }
                let mut entry = archive
                    .by_index(i)
                    .map_err(|e| bad(format!("entry {name:?}: {e}")))?;
                let compressed = entry.compressed_size();
                let mut out = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(if executable { 0o755 } else { 0o644 })
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&target)
                    .map_err(|e| JobError::io("create", &target, e))?;
                let budget = limits.max_bytes - done.bytes;
                let written = io::copy(&mut (&mut entry).take(budget.saturating_add(1)), &mut out)
                    .map_err(|e| bad(format!("entry {name:?}: {e}")))?;
                done.bytes += written;
                if written > budget {
                    return Err(bad(format!(
                        "extracted size exceeds the limit of {} bytes",
                        limits.max_bytes
                    )));
                }
                if written > limits.ratio_floor && written / compressed.max(1) > limits.max_ratio {
                    return Err(bad(format!(
                        "entry {name:?}: compression ratio above {} (possible zip bomb)",
                        limits.max_ratio
                    )));
                }
                if done.bytes > limits.ratio_floor
                    && done.bytes / archive_size.max(1) > limits.max_ratio
                {
                    return Err(bad(format!(
                        "archive compression ratio above {} (possible zip bomb)",
                        limits.max_ratio
                    )));
                }
                done.files += 1;
            }
        }
    }
    Ok(done)
}

#[derive(Debug, Clone, Copy)]
enum EntryKind {
    Dir,
    File { executable: bool },
}

/// Classifies an entry by its unix mode; anything but a regular file or directory is refused.
fn entry_kind(unix_mode: Option<u32>, is_dir: bool) -> Result<EntryKind, &'static str> {
    const S_IFMT: u32 = 0o170_000;
    const S_IFREG: u32 = 0o100_000;
    const S_IFDIR: u32 = 0o040_000;
    const S_IFLNK: u32 = 0o120_000;
    let mode = unix_mode.unwrap_or(0);
    match mode & S_IFMT {
        S_IFLNK => Err("symlink entries are not allowed"),
        S_IFDIR => Ok(EntryKind::Dir),
        0 if is_dir => Ok(EntryKind::Dir),
        S_IFREG | 0 if is_dir => Err("entry is both a file and a directory"),
        S_IFREG | 0 => Ok(EntryKind::File {
            executable: mode & 0o111 != 0,
        }),
        _ => Err("special file entries (device, fifo, socket) are not allowed"),
    }
}

/// Turns a ZIP entry name into a relative path of normal components, or says why not.
pub(crate) fn safe_relative_path(name: &str) -> Result<PathBuf, &'static str> {
    if name.contains('\0') {
        return Err("name contains a NUL byte");
    }
    if name.starts_with('/') || name.starts_with('\\') {
        return Err("absolute path");
    }
    let bytes = name.as_bytes();
    if bytes.len() >= 2 && bytes[0].is_ascii_alphabetic() && bytes[1] == b':' {
        return Err("absolute path (drive letter)");
    }
    let mut out = PathBuf::new();
    for part in name.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err("parent directory component"),
            p => out.push(p),
        }
    }
    if out.as_os_str().is_empty() {
        return Err("empty path");
    }
    Ok(out)
}

/// Creates `rel` and its ancestors below `root` with mode 0o755, refusing to pass through
/// anything that is not a real directory.
fn create_dirs(root: &Path, rel: &Path) -> Result<(), JobError> {
    let mut cur = root.to_path_buf();
    for comp in rel.components() {
        cur.push(comp);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(bad(format!(
                    "{} is both a file and a directory",
                    rel.display()
                )));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => fs::DirBuilder::new()
                .mode(0o755)
                .create(&cur)
                .map_err(|e| JobError::io("create", &cur, e))?,
            Err(e) => return Err(JobError::io("stat", &cur, e)),
        }
    }
    Ok(())
}

/// Gives every path below `root` (and `root`) to `uid:gid`, without following symlinks.
fn chown_tree(root: &Path, uid: u32, gid: u32) -> Result<(), JobError> {
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        std::os::unix::fs::lchown(&dir, Some(uid), Some(gid))
            .map_err(|e| JobError::io("chown", &dir, e))?;
        for entry in fs::read_dir(&dir).map_err(|e| JobError::io("read", &dir, e))? {
            let entry = entry.map_err(|e| JobError::io("read", &dir, e))?;
            let path = entry.path();
            let ft = entry
                .file_type()
                .map_err(|e| JobError::io("stat", &path, e))?;
            if ft.is_dir() {
                stack.push(path);
            } else {
                std::os::unix::fs::lchown(&path, Some(uid), Some(gid))
                    .map_err(|e| JobError::io("chown", &path, e))?;
            }
        }
    }
    Ok(())
}

/// Moves the children of `staging` into `dest` (same file system, so a rename each).
fn move_children(staging: &Path, dest: &Path) -> Result<(), JobError> {
    for entry in fs::read_dir(staging).map_err(|e| JobError::io("read", staging, e))? {
        let entry = entry.map_err(|e| JobError::io("read", staging, e))?;
        let to = dest.join(entry.file_name());
        if fs::symlink_metadata(&to).is_ok() {
            return Err(bad(format!(
                "entry {:?} collides with the job directory layout",
                entry.file_name()
            )));
        }
        fs::rename(entry.path(), &to).map_err(|e| JobError::io("move into place", &to, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        assert_eq!(
            safe_relative_path("a/b.txt").unwrap(),
            PathBuf::from("a/b.txt")
        );
        assert_eq!(safe_relative_path("./a//b/").unwrap(), PathBuf::from("a/b"));
        assert!(safe_relative_path("../x").is_err());
        assert!(safe_relative_path("a/../../x").is_err());
        assert!(safe_relative_path("a/../b").is_err());
        assert!(safe_relative_path("/etc/passwd").is_err());
        assert!(safe_relative_path("C:/x").is_err());
        assert!(safe_relative_path("a\0b").is_err());
        assert!(safe_relative_path("./").is_err());
    }

    #[test]
    fn entry_kinds() {
        assert!(matches!(
            entry_kind(Some(0o100_755), false),
            Ok(EntryKind::File { executable: true })
        ));
        assert!(matches!(
            entry_kind(None, false),
            Ok(EntryKind::File { executable: false })
        ));
        assert!(matches!(entry_kind(None, true), Ok(EntryKind::Dir)));
        assert!(entry_kind(Some(0o120_777), false).is_err());
        assert!(entry_kind(Some(0o060_644), false).is_err());
    }
}
