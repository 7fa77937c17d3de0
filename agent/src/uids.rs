//! Host-wide claims on job uid ranges. Jobs run as `uid_base + slot`; two agents on one host
//! whose ranges overlap would run jobs of different tenants as the same uid (they could signal
//! each other, read each other's files and SysV objects). Each root agent therefore claims its
//! range `[base, base + slots)` for as long as it runs: a file `START-END` in
//! [`CLAIMS_DIR`], held with `flock` (released by the kernel when the agent dies, even by
//! `kill -9`). Claims are made under one host-wide lock (`.lock` in the same folder), so two
//! agents starting together cannot both take overlapping ranges.
//!
//! An agent given an explicit `--uid-base` takes exactly that range or refuses to start, naming
//! the overlap; without one (and for `cmdx dev`'s agents) it takes the first free range at or
//! above the default, in steps of 1,000.

use std::fs;
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use crate::error::AgentError;

/// Where claims live: a tmpfs that a reboot empties.
pub const CLAIMS_DIR: &str = "/run/cmdx/uid-ranges";

/// Step between candidate bases when the base is chosen automatically.
const STEP: u32 = 1_000;
/// Candidates tried before giving up.
const TRIES: u32 = 1_000;

/// A claimed range, held until dropped.
#[derive(Debug)]
pub struct UidClaim {
    /// First uid.
    pub base: u32,
    /// One past the last uid.
    pub end: u32,
    _file: fs::File,
    path: PathBuf,
}

impl Drop for UidClaim {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

#[expect(unsafe_code, reason = "flock(2), blocking or not, with its errno")]
fn open_locked(path: &Path, blocking: bool) -> std::io::Result<Option<fs::File>> {
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(path)?;
    let op = if blocking {
        libc::LOCK_EX
    } else {
        libc::LOCK_EX | libc::LOCK_NB
    };
    // SAFETY: flock(2) on a file descriptor owned by `file`, which outlives the call.
    if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
        return Ok(Some(file));
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(None)
    } else {
        Err(e)
    }
}

fn parse(name: &str) -> Option<(u32, u32)> {
    let (a, b) = name.split_once('-')?;
    let (a, b) = (a.parse().ok()?, b.parse().ok()?);
    (a < b).then_some((a, b))
}

/// Claims `slots` uids from `base` in `dir` (exactly there unless `auto`); see the module doc.
pub fn claim(dir: &Path, base: u32, slots: u32, auto: bool) -> Result<UidClaim, AgentError> {
    let io = |op: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| AgentError::WorkDir { op, path, source }
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io("create", dir))?;
    let lock_path = dir.join(".lock");
    let _host_lock = open_locked(&lock_path, true)
        .map_err(io("lock", &lock_path))?
        .expect("a blocking flock either succeeds or fails");
    // The ranges of live agents; stale claims (their agent died) are removed.
    let mut live = Vec::new();
    for entry in fs::read_dir(dir).map_err(io("list", dir))?.flatten() {
        let name = entry.file_name();
        let Some(range) = name.to_str().and_then(parse) else {
            continue;
        };
        match open_locked(&entry.path(), false) {
            Ok(Some(_stale)) => {
                let _ = fs::remove_file(entry.path());
            }
            Ok(None) => live.push(range),
            Err(e) => return Err(io("lock", &entry.path())(e)),
        }
    }
    let slots = slots.max(1);
    let overlap = |b: u32| {
        let e = b.saturating_add(slots);
        live.iter().copied().find(|&(s, t)| b < t && s < e)
    };
    let base = if auto {
        let step = slots.div_ceil(STEP).max(1) * STEP;
        (0..TRIES)
            .map(|i| base.saturating_add(i * step))
            .find(|&b| overlap(b).is_none())
            .ok_or_else(|| {
                AgentError::Config(format!(
                    "no free range of {slots} job uids at or above {base} on this host"
                ))
            })?
    } else if let Some((s, t)) = overlap(base) {
        return Err(AgentError::Config(format!(
            "job uids {base}..{} overlap the range {s}..{t} another agent on this host is using \
             ({}); give this agent another --uid-base",
            base.saturating_add(slots),
            dir.join(format!("{s}-{t}")).display()
        )));
    } else {
        base
    };
    let end = base.saturating_add(slots);
    let path = dir.join(format!("{base}-{end}"));
    let file = open_locked(&path, false)
        .map_err(io("claim", &path))?
        .ok_or_else(|| AgentError::Config(format!("{} is held", path.display())))?;
    Ok(UidClaim {
        base,
        end,
        _file: file,
        path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_never_overlap_and_free_up_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let a = claim(dir.path(), 40_000, 4, false).unwrap();
        assert_eq!((a.base, a.end), (40_000, 40_004));
        // Explicit and overlapping: refused, naming the other range.
        let e = claim(dir.path(), 40_003, 2, false).unwrap_err().to_string();
        assert!(e.contains("40000..40004"), "{e}");
        // Explicit and adjacent: fine.
        let b = claim(dir.path(), 40_004, 2, false).unwrap();
        // Automatic: the first free step.
        let c = claim(dir.path(), 40_000, 8, true).unwrap();
        assert_eq!(c.base, 41_000);
        let d = claim(dir.path(), 40_000, 2_500, true).unwrap();
        assert_eq!((d.base, d.end), (43_000, 45_500));
        drop(a);
        let again = claim(dir.path(), 40_000, 4, false).unwrap();
        assert_eq!(again.base, 40_000);
        drop((b, c, d, again));
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "only the host lock is left"
        );
    }

    /// A claim whose agent died (its file left behind, unlocked) does not block anyone.
    #[test]
    fn a_dead_agents_claim_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("40000-40004"), b"").unwrap();
        let a = claim(dir.path(), 40_000, 4, false).unwrap();
        assert_eq!(a.base, 40_000);
    }
}
