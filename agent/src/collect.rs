//! Artifact collection: after the command ended (its cgroup is empty), walk the job dir for
//! files matching the job's globs and zip them into an agent-private spool file.
//!
//! The job dir is hostile ground: the agent runs as root and the job could have planted
//! anything. So the walk never resolves a path: every directory is opened relative to its
//! parent's descriptor with `O_NOFOLLOW | O_DIRECTORY`, every file with `O_NOFOLLOW |
//! O_NONBLOCK`, and what was opened is checked again with `fstat` (a regular file, on the job
//! dir's filesystem, owned by the job's user, the same inode that matched). Symlinks, FIFOs,
//! sockets and devices are skipped and reported; sizes are capped on the bytes actually read;
//! the file count, the entries examined and the time spent are bounded.
//!
//! Blocking: run it in `spawn_blocking`.

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

use cmdx_proto::rest::ArtifactSkip;
use globset::{Glob, GlobMatcher, GlobSet, GlobSetBuilder};
use nix::fcntl::AtFlags;
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat, fstatat};

/// Skipped paths listed (the rest are only counted), as on the hub.
const MAX_SKIPPED_LISTED: usize = 100;
/// Deepest directory walked.
const MAX_DEPTH: usize = 64;

/// Bounds of one collection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CollectLimits {
    /// Total bytes of file content.
    pub max_bytes: u64,
    /// Files collected.
    pub max_files: u32,
    /// Directory entries examined (a job with millions of files cannot stall the agent).
    pub max_entries: u64,
    /// Wall time for the walk and the ZIP.
    pub max_time: Duration,
}

/// What was collected.
#[derive(Debug)]
pub(crate) struct Collected {
    /// The ZIP (deleted on drop).
    pub zip: tempfile::NamedTempFile,
    /// Files in it.
    pub files: u32,
    /// Content bytes in it.
    pub bytes: u64,
    /// Matching paths left out, with why (first 100).
    pub skipped: Vec<ArtifactSkip>,
    /// All paths left out, counted.
    pub skipped_total: u64,
}

/// One glob split into per-component matchers, to prune directories no glob can reach.
struct Pattern {
    /// `None` stands for `**`.
    parts: Vec<Option<GlobMatcher>>,
}

impl Pattern {
    fn new(glob: &str) -> Result<Pattern, String> {
        let parts = glob
            .split('/')
            .map(|c| {
                if c == "**" {
                    Ok(None)
                } else {
                    Glob::new(c)
                        .map(|g| Some(g.compile_matcher()))
                        .map_err(|e| format!("bad artifact glob {glob:?}: {e}"))
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(Pattern { parts })
    }

    /// Whether a file below directory `dir` (its components) could match.
    fn may_descend(&self, dir: &[&str]) -> bool {
        for (i, part) in self.parts.iter().enumerate() {
            match part {
                None => return true,
                Some(m) => {
                    let Some(c) = dir.get(i) else {
                        // `dir` is a strict prefix of what this pattern can match.
                        return true;
                    };
                    if !m.is_match(c) {
                        return false;
                    }
                }
            }
        }
        false
    }
}

/// The globs of one job.
pub(crate) struct Matcher {
    set: GlobSet,
    patterns: Vec<Pattern>,
}

impl Matcher {
    /// Compiles `globs` (`*` within a component, `**` across).
    pub fn new(globs: &[String]) -> Result<Matcher, String> {
        let mut b = GlobSetBuilder::new();
        let mut patterns = Vec::new();
        for g in globs {
            let g = g.strip_prefix("./").unwrap_or(g);
            if g.starts_with('/') || g.split('/').any(|c| c == "..") {
                return Err(format!("artifact glob {g:?} leaves the job dir"));
            }
            b.add(
                globset::GlobBuilder::new(g)
                    .literal_separator(true)
                    .build()
                    .map_err(|e| format!("bad artifact glob {g:?}: {e}"))?,
            );
            patterns.push(Pattern::new(g)?);
        }
        let set = b.build().map_err(|e| format!("bad artifact globs: {e}"))?;
        Ok(Matcher { set, patterns })
    }

    fn matches(&self, rel: &str) -> bool {
        self.set.is_match(rel)
    }

    fn may_descend(&self, rel: &str) -> bool {
        let comps: Vec<&str> = rel.split('/').collect();
        self.patterns.iter().any(|p| p.may_descend(&comps))
    }
}

struct Walk<'a> {
    matcher: &'a Matcher,
    limits: CollectLimits,
    root_dev: u64,
    uid: Option<u32>,
    started: Instant,
    examined: u64,
    files: u32,
    bytes: u64,
    skipped: Vec<ArtifactSkip>,
    skipped_total: u64,
    stopped: bool,
    zip: zip::ZipWriter<std::fs::File>,
    buf: Vec<u8>,
}

impl Walk<'_> {
    fn skip(&mut self, path: &str, reason: impl Into<String>) {
        self.skipped_total += 1;
        if self.skipped.len() < MAX_SKIPPED_LISTED {
            self.skipped.push(ArtifactSkip {
                path: path.to_string(),
                reason: reason.into(),
            });
        }
    }

    /// Stops the walk for a reason that applies to everything not yet examined.
    fn stop(&mut self, reason: String) {
        if !self.stopped {
            self.stopped = true;
            self.skip("*", reason);
        }
    }

    /// Walks the directory open as `dir` (`rel` is its path, "" for the job dir). `whole` is
    /// set below a directory that itself matched a glob: everything in it is collected.
    fn dir(&mut self, dir: OwnedFd, rel: &str, depth: usize, whole: bool) -> std::io::Result<()> {
        let listing = nix::dir::Dir::from_fd(dir.try_clone()?)?;
        let mut names = Vec::new();
        for entry in listing {
            let entry = entry?;
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            self.examined += 1;
            if self.examined > self.limits.max_entries {
                self.stop(format!(
                    "walk stopped after examining {} entries",
                    self.limits.max_entries
                ));
                break;
            }
            names.push(std::ffi::OsStr::from_bytes(name).to_os_string());
        }
        names.sort();
        for name in names {
            if self.stopped {
                return Ok(());
            }
            if self.started.elapsed() > self.limits.max_time {
                self.stop(format!(
                    "walk stopped after {} s",
                    self.limits.max_time.as_secs()
                ));
                return Ok(());
            }
            let Some(name_str) = name.to_str() else {
                let lossy = name.to_string_lossy();
                let path = join(rel, &lossy);
                if whole || self.matcher.matches(&path) {
                    self.skip(&path, "name is not UTF-8");
                }
                continue;
            };
            let path = join(rel, name_str);
            if !cmdx_proto::rest::is_clean_artifact_path(&path) {
                // The hub refuses a ZIP holding such a name: leave the file out, not the ZIP.
                if whole || self.matcher.matches(&path) || self.matcher.may_descend(&path) {
                    self.skip(
                        &path,
                        "not a clean path (control character, backslash or too long)",
                    );
                }
                continue;
            }
            let st = match fstatat(dir.as_fd(), name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(_) => continue, // gone since the listing
            };
            let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
            let matched = whole || self.matcher.matches(&path);
            if kind == SFlag::S_IFDIR {
                if depth >= MAX_DEPTH {
                    if matched || self.matcher.may_descend(&path) {
                        self.skip(&path, format!("deeper than {MAX_DEPTH} directories"));
                    }
                    continue;
                }
                if !(matched || self.matcher.may_descend(&path)) {
                    continue;
                }
                if st.st_dev != self.root_dev {
                    self.skip(&path, "another filesystem");
                    continue;
                }
                let flags = OFlag::O_RDONLY
                    | OFlag::O_DIRECTORY
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC
                    | OFlag::O_NONBLOCK;
                match openat(dir.as_fd(), name.as_os_str(), flags, Mode::empty()) {
                    Ok(sub) => {
                        let same = fstat(sub.as_fd())
                            .is_ok_and(|s| s.st_dev == st.st_dev && s.st_ino == st.st_ino);
                        if same {
                            self.dir(sub, &path, depth + 1, matched)?;
                        } else {
                            self.skip(&path, "changed while collecting");
                        }
                    }
                    Err(_) => self.skip(&path, "changed while collecting"),
                }
                continue;
            }
            if !matched {
                continue;
            }
            match kind {
                SFlag::S_IFREG => self.file(&dir, &name, &path, &st)?,
                SFlag::S_IFLNK => self.skip(&path, "symlink (not followed)"),
                SFlag::S_IFIFO => self.skip(&path, "not a regular file (FIFO)"),
                SFlag::S_IFSOCK => self.skip(&path, "not a regular file (socket)"),
                SFlag::S_IFCHR | SFlag::S_IFBLK => self.skip(&path, "not a regular file (device)"),
                _ => self.skip(&path, "not a regular file"),
            }
        }
        Ok(())
    }

    fn file(
        &mut self,
        dir: &OwnedFd,
        name: &std::ffi::OsStr,
        path: &str,
        st: &FileStat,
    ) -> std::io::Result<()> {
        if self.files >= self.limits.max_files {
            self.stop(format!(
                "file cap of {} reached; further matches not examined",
                self.limits.max_files
            ));
            return Ok(());
        }
        if st.st_dev != self.root_dev {
            self.skip(path, "another filesystem");
            return Ok(());
        }
        if self.uid.is_some_and(|u| st.st_uid != u) {
            self.skip(path, "not owned by the job's user");
            return Ok(());
        }
        let size = u64::try_from(st.st_size).unwrap_or(0);
        let left = self.limits.max_bytes - self.bytes;
        if size > left {
            self.skip(
                path,
                format!(
                    "{size} bytes exceed what is left of the artifact byte cap ({left} of {})",
                    self.limits.max_bytes
                ),
            );
            return Ok(());
        }
        // O_NONBLOCK: a FIFO swapped in after the stat must not block the open.
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
        let fd = match openat(dir.as_fd(), name, flags | OFlag::O_NOCTTY, Mode::empty()) {
            Ok(fd) => fd,
            Err(_) => {
                self.skip(path, "changed while collecting");
                return Ok(());
            }
        };
        let now = match fstat(fd.as_fd()) {
            Ok(s) => s,
            Err(_) => {
                self.skip(path, "changed while collecting");
                return Ok(());
            }
        };
        let is_reg = SFlag::from_bits_truncate(now.st_mode) & SFlag::S_IFMT == SFlag::S_IFREG;
        if !is_reg || now.st_dev != st.st_dev || now.st_ino != st.st_ino {
            self.skip(path, "changed while collecting");
            return Ok(());
        }
        let mode = if now.st_mode & 0o111 != 0 {
            0o755
        } else {
            0o644
        };
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .compression_level(Some(1))
            .unix_permissions(mode)
            .large_file(size >= u64::from(u32::MAX));
        self.zip.start_file(path, options)?;
        // Read at most the size that was checked against the cap: a file that grows while
        // being read gains nothing.
        let mut reader = std::fs::File::from(fd).take(size);
        let mut written = 0u64;
        loop {
            let n = match reader.read(&mut self.buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if n == 0 {
                break;
            }
            self.zip.write_all(&self.buf[..n])?;
            written += n as u64;
            if self.started.elapsed() > self.limits.max_time {
                break;
            }
        }
        self.files += 1;
        self.bytes += written;
        Ok(())
    }
}

fn join(rel: &str, name: &str) -> String {
    if rel.is_empty() {
        name.to_string()
    } else {
        format!("{rel}/{name}")
    }
}

/// Collects the files of `job_dir` matching `matcher` into a ZIP in `spool_dir`. `uid` is the
/// job's user: files owned by anyone else (a hard link to a foreign file) are skipped.
pub(crate) fn collect(
    job_dir: &Path,
    matcher: &Matcher,
    limits: CollectLimits,
    uid: Option<u32>,
    spool_dir: &Path,
) -> std::io::Result<Collected> {
    let root = nix::fcntl::open(
        job_dir,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let root_dev = fstat(root.as_fd())?.st_dev;
    let spool = tempfile::Builder::new()
        .prefix("artifacts-")
        .suffix(".zip")
        .tempfile_in(spool_dir)?;
    let mut walk = Walk {
        matcher,
        limits,
        root_dev,
        uid,
        started: Instant::now(),
        examined: 0,
        files: 0,
        bytes: 0,
        skipped: Vec::new(),
        skipped_total: 0,
        stopped: false,
        zip: zip::ZipWriter::new(spool.reopen()?),
        buf: vec![0u8; 64 * 1024],
    };
    walk.dir(root, "", 0, false)?;
    let mut file = walk.zip.finish()?;
    file.flush()?;
    Ok(Collected {
        zip: spool,
        files: walk.files,
        bytes: walk.bytes,
        skipped: walk.skipped,
        skipped_total: walk.skipped_total,
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    fn limits() -> CollectLimits {
        CollectLimits {
            max_bytes: 1 << 20,
            max_files: 100,
            max_entries: 10_000,
            max_time: Duration::from_secs(30),
        }
    }

    fn names(c: &Collected) -> Vec<String> {
        let mut z = zip::ZipArchive::new(std::fs::File::open(c.zip.path()).unwrap()).unwrap();
        (0..z.len())
            .map(|i| z.by_index(i).unwrap().name().unwrap().to_string())
            .collect()
    }

    #[test]
    fn globs_prune_and_match() {
        let m = Matcher::new(&["dist/**".into(), "reports/*.xml".into()]).unwrap();
        assert!(m.may_descend("dist"));
        assert!(m.may_descend("dist/a/b"));
        assert!(m.may_descend("reports"));
        assert!(!m.may_descend("reports/sub"));
        assert!(!m.may_descend("src"));
        assert!(m.matches("reports/r.xml"));
        assert!(!m.matches("reports/sub/r.xml"));
        assert!(m.matches("dist/a/b/c.txt"));
        assert!(Matcher::new(&["../x".into()]).is_err());
    }

    #[test]
    fn collects_regular_files_and_reports_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("dist/sub")).unwrap();
        std::fs::create_dir_all(root.join("reports")).unwrap();
        std::fs::write(root.join("dist/app.txt"), b"app").unwrap();
        std::fs::write(root.join("dist/sub/deep.bin"), b"deep").unwrap();
        std::fs::write(root.join("reports/r.xml"), b"<r/>").unwrap();
        std::fs::write(root.join("reports/r.txt"), b"no").unwrap();
        symlink("/etc/passwd", root.join("dist/x")).unwrap();
        symlink("/etc", root.join("dist/etc")).unwrap();
        nix::unistd::mkfifo(&root.join("reports/f.xml"), Mode::from_bits_truncate(0o644)).unwrap();
        let m = Matcher::new(&["dist/**".into(), "reports/*.xml".into()]).unwrap();
        let spool = tempfile::tempdir().unwrap();
        let c = collect(root, &m, limits(), None, spool.path()).unwrap();
        let mut got = names(&c);
        got.sort();
        assert_eq!(got, ["dist/app.txt", "dist/sub/deep.bin", "reports/r.xml"]);
        let reasons: Vec<(&str, &str)> = c
            .skipped
            .iter()
            .map(|s| (s.path.as_str(), s.reason.as_str()))
            .collect();
        assert!(
            reasons.contains(&("dist/x", "symlink (not followed)")),
            "{reasons:?}"
        );
        assert!(
            reasons.contains(&("dist/etc", "symlink (not followed)")),
            "{reasons:?}"
        );
        assert!(
            reasons.contains(&("reports/f.xml", "not a regular file (FIFO)")),
            "{reasons:?}"
        );
        assert_eq!(c.files, 3);
    }

    #[test]
    fn caps_bound_bytes_files_and_entries() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..20 {
            std::fs::write(dir.path().join(format!("f{i:02}")), vec![b'x'; 100]).unwrap();
        }
        let sparse = std::fs::File::create(dir.path().join("sparse")).unwrap();
        sparse.set_len(10 << 30).unwrap();
        let m = Matcher::new(&["*".into()]).unwrap();
        let spool = tempfile::tempdir().unwrap();
        let small = CollectLimits {
            max_bytes: 550,
            ..limits()
        };
        let c = collect(dir.path(), &m, small, None, spool.path()).unwrap();
        assert_eq!((c.files, c.bytes), (5, 500));
        assert!(c.skipped.iter().any(|s| s.path == "sparse"));
        let few = CollectLimits {
            max_files: 3,
            ..limits()
        };
        let c = collect(dir.path(), &m, few, None, spool.path()).unwrap();
        assert_eq!(c.files, 3);
        assert!(c.skipped.last().unwrap().reason.contains("file cap"));
        let scan = CollectLimits {
            max_entries: 5,
            ..limits()
        };
        let c = collect(dir.path(), &m, scan, None, spool.path()).unwrap();
        assert!(c.files <= 5);
        assert!(c.skipped[0].reason.contains("examining 5 entries"));
    }

    /// A job cannot win the race between the match and the open: a file swapped for a symlink
    /// to a secret, or for a FIFO, is skipped (never read through, never blocking).
    #[test]
    fn swapping_a_file_for_a_symlink_or_fifo_gains_nothing() {
        let outside = tempfile::tempdir().unwrap();
        let secret = outside.path().join("secret");
        std::fs::write(&secret, b"SECRET").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        std::fs::create_dir(root.join("dist")).unwrap();
        std::fs::write(root.join("dist/a.txt"), b"OK").unwrap();
        let swaps = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let swapper = {
            let (root, stop, swaps) = (root.clone(), stop.clone(), swaps.clone());
            std::thread::spawn(move || {
                let target = root.join("dist/a.txt");
                let mut i = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let tmp = root.join(format!("dist/.t{i}"));
                    match i % 3 {
                        0 => symlink(&secret, &tmp).unwrap(),
                        1 => nix::unistd::mkfifo(&tmp, Mode::from_bits_truncate(0o644)).unwrap(),
                        _ => std::fs::write(&tmp, b"OK").unwrap(),
                    }
                    std::fs::rename(&tmp, &target).unwrap();
                    i += 1;
                    swaps.store(i, std::sync::atomic::Ordering::Relaxed);
                }
            })
        };
        let m = Matcher::new(&["dist/a.txt".into()]).unwrap();
        let spool = tempfile::tempdir().unwrap();
        let mut seen = std::collections::BTreeSet::new();
        let started = Instant::now();
        let mut rounds = 0;
        // Until both outcomes the test needs were met and 300 rounds ran (or 60 s): the swapper
        // runs concurrently, and on a loaded host other outcomes ("changed while collecting",
        // a FIFO) can fill the first rounds.
        let needed = ["collected", "symlink (not followed)"];
        while (!needed.iter().all(|k| seen.contains(*k)) || rounds < 300)
            && started.elapsed() < Duration::from_secs(60)
        {
            rounds += 1;
            let c = collect(&root, &m, limits(), None, spool.path()).unwrap();
            let mut z = zip::ZipArchive::new(std::fs::File::open(c.zip.path()).unwrap()).unwrap();
            for i in 0..z.len() {
                let mut data = Vec::new();
                z.by_index(i).unwrap().read_to_end(&mut data).unwrap();
                assert_eq!(data, b"OK", "read through a swapped-in link");
                seen.insert("collected".to_string());
            }
            for s in &c.skipped {
                seen.insert(s.reason.clone());
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        swapper.join().unwrap();
        let swaps = swaps.load(std::sync::atomic::Ordering::Relaxed);
        assert!(seen.contains("collected"), "{seen:?} after {swaps} swaps");
        assert!(
            seen.contains("symlink (not followed)"),
            "{seen:?} after {swaps} swaps"
        );
    }

    #[test]
    fn a_foreign_owner_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("mine"), b"1").unwrap();
        let me = nix::unistd::getuid().as_raw();
        let m = Matcher::new(&["*".into()]).unwrap();
        let spool = tempfile::tempdir().unwrap();
        let c = collect(dir.path(), &m, limits(), Some(me + 1), spool.path()).unwrap();
        assert_eq!(c.files, 0);
        assert_eq!(c.skipped[0].reason, "not owned by the job's user");
        let c = collect(dir.path(), &m, limits(), Some(me), spool.path()).unwrap();
        assert_eq!(c.files, 1);
    }
}
