//! Safe application of one image layer (a tar, plain, gzip or zstd) onto a directory tree.
//!
//! Every path is walked from the tree's root descriptor one component at a time with
//! `O_NOFOLLOW | O_DIRECTORY`, so nothing is ever written through a symlink a layer planted;
//! new files are created with `O_CREAT | O_EXCL | O_NOFOLLOW`. What a hostile layer tries is
//! neutralised and counted, never followed:
//! - a path with a `..` component, or whose parent is a symlink or not a directory: skipped;
//! - device nodes, FIFOs and sockets: skipped (a job's `/dev` is the sandbox's own);
//! - setuid, setgid and sticky bits on files, setgid on directories: cleared (the root is
//!   mounted `nosuid` as well);
//! - a hard link whose target is not a regular file this same layer wrote: skipped.
//!
//! Symlinks are created as they are (an absolute target is resolved only inside the job's own
//! root). Whiteouts (`.wh.NAME`) remove `NAME` from the lower layers; an opaque marker
//! (`.wh..wh..opq`) empties its directory of everything lower layers put there. Everything is
//! owned by root; the job reads the tree through a read-only mount. Bytes and entries are
//! capped over the whole image; the uncompressed stream is hashed and checked against the
//! config's `diff_id`.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{FchmodatFlags, Mode, fchmodat, fstatat, mkdirat};
use nix::unistd::{UnlinkatFlags, linkat, symlinkat, unlinkat};
use sha2::{Digest as _, Sha256};

/// Caps over a whole image (all its layers together).
#[derive(Debug, Clone, Copy)]
pub(crate) struct UnpackLimits {
    /// Most file bytes written.
    pub max_bytes: u64,
    /// Most entries created.
    pub max_entries: u64,
}

/// Running totals over an image's layers.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Totals {
    /// File bytes written.
    pub bytes: u64,
    /// Entries created.
    pub entries: u64,
}

/// What one layer did.
#[derive(Debug, Default)]
pub(crate) struct LayerReport {
    /// Entries created.
    pub entries: u64,
    /// Entries skipped as unsafe (escaping paths, device nodes, outside hard links).
    pub neutralised: u64,
    /// setuid/setgid bits cleared.
    pub stripped_modes: u64,
    /// The first few skipped entries, for the log.
    pub examples: Vec<String>,
}

impl LayerReport {
    fn skip(&mut self, what: String) {
        self.neutralised += 1;
        if self.examples.len() < 5 {
            self.examples.push(what);
        }
    }
}

/// Why a layer could not be applied.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UnpackError {
    /// The image is larger than the caps.
    #[error("image exceeds the unpacked size cap ({what})")]
    TooLarge {
        /// Which cap.
        what: String,
    },
    /// The uncompressed layer does not match the config's diff id.
    #[error("layer content does not match its diff_id: expected {expected}, got {actual}")]
    DiffId {
        /// From the config.
        expected: String,
        /// Computed.
        actual: String,
    },
    /// The tar or its compression is malformed.
    #[error("malformed layer: {0}")]
    Malformed(String),
    /// A local write failed.
    #[error("cannot unpack {path}: {source}")]
    Io {
        /// Path in the image.
        path: String,
        /// The error.
        #[source]
        source: io::Error,
    },
}

fn io_at(path: &str) -> impl FnOnce(Errno) -> UnpackError + '_ {
    move |e| UnpackError::Io {
        path: path.to_owned(),
        source: io::Error::from_raw_os_error(e as i32),
    }
}

/// Applies the layer in `file` onto the tree whose root directory is `root`.
pub(crate) fn apply_layer(
    root: &OwnedFd,
    file: File,
    diff_id: Option<&str>,
    limits: UnpackLimits,
    totals: &mut Totals,
) -> Result<LayerReport, UnpackError> {
    let mut buffered = BufReader::with_capacity(256 * 1024, file);
    let magic = buffered
        .fill_buf()
        .map_err(|e| UnpackError::Malformed(e.to_string()))?;
    let decoded: Box<dyn Read> = if magic.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::bufread::MultiGzDecoder::new(buffered))
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(Zstd::new(buffered))
    } else {
        Box::new(buffered)
    };
    let mut hashed = Hashing {
        inner: decoded,
        hash: Sha256::new(),
    };
    let report = apply_tar(root, &mut hashed, limits, totals)?;
    // Whatever follows the tar's end (padding) is part of the diff id.
    io::copy(&mut hashed, &mut io::sink()).map_err(|e| UnpackError::Malformed(e.to_string()))?;
    if let Some(expected) = diff_id {
        let actual = format!("sha256:{}", hex::encode(hashed.hash.finalize()));
        if actual != expected {
            return Err(UnpackError::DiffId {
                expected: expected.to_owned(),
                actual,
            });
        }
    }
    Ok(report)
}

struct Hashing<R> {
    inner: R,
    hash: Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

/// A zstd stream of any number of frames (skippable ones skipped).
struct Zstd<R: BufRead> {
    inner: R,
    dec: ruzstd::decoding::FrameDecoder,
    active: bool,
}

impl<R: BufRead> Zstd<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            dec: ruzstd::decoding::FrameDecoder::new(),
            active: false,
        }
    }
}

impl<R: BufRead> Read for Zstd<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use ruzstd::decoding::BlockDecodingStrategy;
        use ruzstd::decoding::errors::{FrameDecoderError, ReadFrameHeaderError};
        let bad = |e: FrameDecoderError| io::Error::new(io::ErrorKind::InvalidData, e.to_string());
        loop {
            if self.active {
                let n = self.dec.read(buf)?;
                if n > 0 || buf.is_empty() {
                    return Ok(n);
                }
                if self.dec.is_finished() && self.dec.can_collect() == 0 {
                    self.active = false;
                    continue;
                }
                self.dec
                    .decode_blocks(&mut self.inner, BlockDecodingStrategy::UptoBytes(1 << 20))
                    .map_err(bad)?;
                continue;
            }
            if self.inner.fill_buf()?.is_empty() {
                return Ok(0);
            }
            match self.dec.reset(&mut self.inner) {
                Ok(()) => self.active = true,
                Err(FrameDecoderError::ReadFrameHeaderError(ReadFrameHeaderError::SkipFrame {
                    length,
                    ..
                })) => {
                    io::copy(
                        &mut (&mut self.inner).take(u64::from(length)),
                        &mut io::sink(),
                    )?;
                }
                Err(e) => return Err(bad(e)),
            }
        }
    }
}

const OPAQUE: &[u8] = b".wh..wh..opq";
const WHITEOUT: &[u8] = b".wh.";

fn apply_tar(
    root: &OwnedFd,
    reader: &mut dyn Read,
    limits: UnpackLimits,
    totals: &mut Totals,
) -> Result<LayerReport, UnpackError> {
    let mut archive = tar::Archive::new(reader);
    let mut report = LayerReport::default();
    // Paths this layer wrote: opaque markers keep them, hard links may point only at them.
    let mut written: HashSet<Vec<u8>> = HashSet::new();
    let mut regular: HashSet<Vec<u8>> = HashSet::new();
    let entries = archive
        .entries()
        .map_err(|e| UnpackError::Malformed(e.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| UnpackError::Malformed(e.to_string()))?;
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let Some(parts) = clean(&raw) else {
            report.skip(format!("{shown} (escapes the root)"));
            continue;
        };
        let Some((name, dirs)) = parts.split_last() else {
            continue; // the root itself
        };
        let kind = entry.header().entry_type();
        let Some(parent) = walk(root, dirs, true).map_err(io_at(&shown))? else {
            report.skip(format!("{shown} (parent is not a directory)"));
            continue;
        };
        let key = parts.join(&b'/');
        if *name == OPAQUE {
            let dir_key = dirs.join(&b'/');
            empty_dir(&parent, &dir_key, &written).map_err(io_at(&shown))?;
            continue;
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT) {
            if !hidden.is_empty() && hidden != b"." && hidden != b".." {
                remove(&parent, hidden).map_err(io_at(&shown))?;
            }
            continue;
        }
        totals.entries += 1;
        if totals.entries > limits.max_entries {
            return Err(UnpackError::TooLarge {
                what: format!("more than {} entries", limits.max_entries),
            });
        }
        let mode = entry.header().mode().unwrap_or(0o644);
        let name_os = std::ffi::OsStr::from_bytes(name);
        use tar::EntryType as T;
        match kind {
            T::Directory => {
                let keep = existing_kind(&parent, name_os) == Some(Kind::Dir);
                if !keep {
                    remove(&parent, name).map_err(io_at(&shown))?;
                    mkdirat(parent.as_fd(), name_os, Mode::from_bits_truncate(0o700))
                        .map_err(io_at(&shown))?;
                }
                let clean_mode = mode & 0o1777;
                if mode & 0o6000 != 0 {
                    report.stripped_modes += 1;
                }
                fchmodat(
                    parent.as_fd(),
                    name_os,
                    Mode::from_bits_truncate(clean_mode),
                    FchmodatFlags::NoFollowSymlink,
                )
                .map_err(io_at(&shown))?;
            }
            T::Regular | T::Continuous => {
                remove(&parent, name).map_err(io_at(&shown))?;
                let fd = openat(
                    parent.as_fd(),
                    name_os,
                    OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_WRONLY
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o600),
                )
                .map_err(io_at(&shown))?;
                let mut out = File::from(fd);
                let left = limits.max_bytes.saturating_sub(totals.bytes);
                let n = io::copy(&mut (&mut entry).take(left + 1), &mut out).map_err(|source| {
                    UnpackError::Io {
                        path: shown.clone(),
                        source,
                    }
                })?;
                totals.bytes += n;
                if totals.bytes > limits.max_bytes {
                    return Err(UnpackError::TooLarge {
                        what: format!("more than {} bytes", limits.max_bytes),
                    });
                }
                if mode & 0o7000 != 0 {
                    report.stripped_modes += 1;
                }
                use std::os::unix::fs::PermissionsExt as _;
                out.set_permissions(std::fs::Permissions::from_mode(mode & 0o777))
                    .map_err(|source| UnpackError::Io {
                        path: shown.clone(),
                        source,
                    })?;
                regular.insert(key.clone());
            }
            T::Symlink => {
                let Some(target) = entry.link_name_bytes() else {
                    report.skip(format!("{shown} (symlink without a target)"));
                    continue;
                };
                if target.len() > 4096 || target.contains(&0) {
                    report.skip(format!("{shown} (bad symlink target)"));
                    continue;
                }
                remove(&parent, name).map_err(io_at(&shown))?;
                symlinkat(
                    std::ffi::OsStr::from_bytes(&target),
                    parent.as_fd(),
                    name_os,
                )
                .map_err(io_at(&shown))?;
            }
            T::Link => {
                let target = entry.link_name_bytes().map(|t| t.into_owned());
                let Some(tparts) = target.as_deref().and_then(clean) else {
                    report.skip(format!("{shown} (hard link escapes the root)"));
                    continue;
                };
                let tkey = tparts.join(&b'/');
                if !regular.contains(&tkey) || tkey == key {
                    report.skip(format!(
                        "{shown} (hard link to {} outside this layer)",
                        String::from_utf8_lossy(&tkey)
                    ));
                    continue;
                }
                let (tname, tdirs) = tparts.split_last().expect("a file has a name");
                let Some(tparent) = walk(root, tdirs, false).map_err(io_at(&shown))? else {
                    report.skip(format!("{shown} (hard link target vanished)"));
                    continue;
                };
                remove(&parent, name).map_err(io_at(&shown))?;
                linkat(
                    tparent.as_fd(),
                    std::ffi::OsStr::from_bytes(tname),
                    parent.as_fd(),
                    name_os,
                    AtFlags::empty(),
                )
                .map_err(io_at(&shown))?;
                regular.insert(key.clone());
            }
            T::Char | T::Block | T::Fifo => {
                report.skip(format!("{shown} (device node or fifo)"));
                continue;
            }
            _ => {
                // PAX and GNU long-name headers are consumed by the reader; anything else
                // (sparse files, unknown types) is not a plain filesystem object.
                report.skip(format!("{shown} (unsupported entry type)"));
                continue;
            }
        }
        report.entries += 1;
        written.insert(key);
    }
    Ok(report)
}

/// The normalised components of a tar path; `None` when it has a `..` component.
fn clean(raw: &[u8]) -> Option<Vec<&[u8]>> {
    let mut parts = Vec::new();
    for p in raw.split(|b| *b == b'/') {
        match p {
            b"" | b"." => {}
            b".." => return None,
            p if p.contains(&0) => return None,
            p => parts.push(p),
        }
    }
    Some(parts)
}

/// Opens `dirs` below `root` without following symlinks, creating missing directories
/// (mode 0755) when `create`. `None` when a component is not a directory (or a symlink).
fn walk(root: &OwnedFd, dirs: &[&[u8]], create: bool) -> Result<Option<OwnedFd>, Errno> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let mut cur = root.try_clone().map_err(|_| Errno::EMFILE)?;
    for d in dirs {
        let name = std::ffi::OsStr::from_bytes(d);
        let next = match openat(cur.as_fd(), name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) if create => {
                mkdirat(cur.as_fd(), name, Mode::from_bits_truncate(0o755))?;
                openat(cur.as_fd(), name, flags, Mode::empty())?
            }
            Err(Errno::ELOOP | Errno::ENOTDIR | Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(e),
        };
        cur = next;
    }
    Ok(Some(cur))
}

#[derive(Debug, PartialEq, Eq)]
enum Kind {
    Dir,
    Other,
}

fn existing_kind(parent: &OwnedFd, name: &std::ffi::OsStr) -> Option<Kind> {
    let st = fstatat(parent.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW).ok()?;
    Some(if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
        Kind::Dir
    } else {
        Kind::Other
    })
}

/// Removes `name` in `parent` (a directory with everything in it), if it exists.
fn remove(parent: &OwnedFd, name: &[u8]) -> Result<(), Errno> {
    let os = std::ffi::OsStr::from_bytes(name);
    match existing_kind(parent, os) {
        None => Ok(()),
        Some(Kind::Other) => unlinkat(parent.as_fd(), os, UnlinkatFlags::NoRemoveDir),
        Some(Kind::Dir) => {
            let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
            let dir = openat(parent.as_fd(), os, flags, Mode::empty())?;
            for child in children(&dir)? {
                remove(&dir, &child)?;
            }
            unlinkat(parent.as_fd(), os, UnlinkatFlags::RemoveDir)
        }
    }
}

fn children(dir: &OwnedFd) -> Result<Vec<Vec<u8>>, Errno> {
    let fd = dir.try_clone().map_err(|_| Errno::EMFILE)?;
    let mut d = nix::dir::Dir::from_fd(fd)?;
    Ok(d.iter()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_bytes().to_vec())
        .filter(|n| n != b"." && n != b"..")
        .collect())
}

/// An opaque directory: removes what lower layers put in `dir` (keeps this layer's entries).
fn empty_dir(dir: &OwnedFd, dir_key: &[u8], written: &HashSet<Vec<u8>>) -> Result<(), Errno> {
    for child in children(dir)? {
        let key = if dir_key.is_empty() {
            child.clone()
        } else {
            [dir_key, b"/", &child].concat()
        };
        if !written.contains(&key) {
            remove(dir, &child)?;
        }
    }
    Ok(())
}

/// Opens `path` as the root descriptor of a tree being unpacked.
pub(crate) fn open_root(path: &Path) -> io::Result<OwnedFd> {
    openat(
        nix::fcntl::AT_FDCWD,
        path,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io::Error::from_raw_os_error(e as i32))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};

    fn header(path: &str, kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        // Raw bytes: the tar crate's own setters refuse `..`, which is what a hostile tool
        // would write anyway.
        let name = &mut h.as_old_mut().name;
        name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_cksum();
        h
    }

    /// `(path, type, mode, data, link target)`.
    type Entry<'a> = (&'a str, tar::EntryType, u32, &'a [u8], Option<&'a str>);

    fn layer(entries: &[Entry<'_>]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, mode, data, link) in entries {
            let mut h = header(path, *kind, *mode, data.len() as u64);
            if let Some(l) = link {
                h.as_old_mut().linkname[..l.len()].copy_from_slice(l.as_bytes());
                h.set_cksum();
            }
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn apply(root: &Path, bytes: Vec<u8>) -> Result<LayerReport, UnpackError> {
        use std::io::{Seek as _, Write as _};
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&bytes).unwrap();
        f.rewind().unwrap();
        let fd = open_root(root).unwrap();
        let limits = UnpackLimits {
            max_bytes: 1 << 20,
            max_entries: 100,
        };
        apply_layer(&fd, f, None, limits, &mut Totals::default())
    }

    #[test]
    fn hostile_entries_are_neutralised() {
        use tar::EntryType as T;
        let outer = tempfile::tempdir().unwrap();
        let root = outer.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let report = apply(
            &root,
            layer(&[
                ("../escaped", T::Regular, 0o644, b"x", None),
                ("a/../../escaped2", T::Regular, 0o644, b"x", None),
                ("out", T::Symlink, 0o777, b"", Some("../../..")),
                ("out/through", T::Regular, 0o644, b"x", None),
                ("dev/evil", T::Char, 0o666, b"", None),
                ("bin/suid", T::Regular, 0o4755, b"#!/bin/sh\n", None),
                ("hl", T::Link, 0o644, b"", Some("/etc/passwd")),
            ]),
        )
        .unwrap();
        assert!(!outer.path().join("escaped").exists());
        assert!(!outer.path().join("escaped2").exists());
        assert!(!outer.path().join("through").exists());
        assert!(root.join("out").symlink_metadata().unwrap().is_symlink());
        assert!(!root.join("dev/evil").exists());
        let mode = std::fs::metadata(root.join("bin/suid"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o755);
        assert!(!root.join("hl").exists());
        assert_eq!((report.neutralised, report.stripped_modes), (5, 1));
    }

    #[test]
    fn whiteouts_opaque_dirs_and_hard_links() {
        use tar::EntryType as T;
        let outer = tempfile::tempdir().unwrap();
        let root = outer.path().join("root");
        std::fs::create_dir(&root).unwrap();
        apply(
            &root,
            layer(&[
                ("etc/", T::Directory, 0o755, b"", None),
                ("etc/gone", T::Regular, 0o644, b"1", None),
                ("etc/kept", T::Regular, 0o644, b"1", None),
                ("opt/old", T::Regular, 0o644, b"1", None),
            ]),
        )
        .unwrap();
        apply(
            &root,
            layer(&[
                ("etc/.wh.gone", T::Regular, 0o644, b"", None),
                ("opt/new", T::Regular, 0o644, b"2", None),
                ("opt/.wh..wh..opq", T::Regular, 0o644, b"", None),
                ("opt/link", T::Link, 0o644, b"", Some("opt/new")),
            ]),
        )
        .unwrap();
        assert!(!root.join("etc/gone").exists());
        assert!(root.join("etc/kept").exists());
        assert!(!root.join("opt/old").exists());
        let a = std::fs::metadata(root.join("opt/new")).unwrap();
        let b = std::fs::metadata(root.join("opt/link")).unwrap();
        assert_eq!(a.ino(), b.ino());
    }

    #[test]
    fn a_layer_that_is_not_its_diff_id_is_refused() {
        use std::io::{Seek as _, Write as _};
        use tar::EntryType as T;
        let outer = tempfile::tempdir().unwrap();
        let bytes = layer(&[("f", T::Regular, 0o644, b"x", None)]);
        let right = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
        for (diff_id, ok) in [(right.as_str(), true), ("sha256:00", false)] {
            let mut f = tempfile::tempfile().unwrap();
            f.write_all(&bytes).unwrap();
            f.rewind().unwrap();
            let fd = open_root(outer.path()).unwrap();
            let limits = UnpackLimits {
                max_bytes: 1 << 20,
                max_entries: 100,
            };
            let r = apply_layer(&fd, f, Some(diff_id), limits, &mut Totals::default());
            assert_eq!(r.is_ok(), ok, "{diff_id}");
            if !ok {
                assert!(matches!(r, Err(UnpackError::DiffId { .. })));
            }
        }
    }

    #[test]
    fn gzip_and_multi_frame_zstd_layers_unpack() {
        use ruzstd::encoding::{CompressionLevel, compress_to_vec};
        use std::io::Write as _;
        use tar::EntryType as T;
        let plain = layer(&[
            ("a/one", T::Regular, 0o644, b"first", None),
            ("a/two", T::Regular, 0o644, &[7u8; 100_000], None),
        ]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&plain).unwrap();
        let gz = gz.finish().unwrap();
        // Two zstd frames (as zstd:chunked writes), then a skippable frame.
        let (head, tail) = plain.split_at(1000);
        let mut zst = compress_to_vec(head, CompressionLevel::Fastest);
        zst.extend(compress_to_vec(tail, CompressionLevel::Fastest));
        zst.extend([0x50, 0x2a, 0x4d, 0x18, 3, 0, 0, 0, 1, 2, 3]);
        for bytes in [gz, zst] {
            let outer = tempfile::tempdir().unwrap();
            apply(outer.path(), bytes).unwrap();
            assert_eq!(std::fs::read(outer.path().join("a/one")).unwrap(), b"first");
            assert_eq!(
                std::fs::read(outer.path().join("a/two")).unwrap().len(),
                100_000
            );
        }
    }

    #[test]
    fn caps_stop_a_large_layer() {
        use tar::EntryType as T;
        let outer = tempfile::tempdir().unwrap();
        let big = vec![0u8; (1 << 20) + 10];
        let err = apply(
            outer.path(),
            layer(&[("big", T::Regular, 0o644, &big, None)]),
        )
        .unwrap_err();
        assert!(matches!(err, UnpackError::TooLarge { .. }), "{err}");
    }
}
