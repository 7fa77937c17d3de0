//! Job artifacts on the hub: the glob rules checked at submission, and the inspection of an
//! uploaded artifact ZIP (every entry a normalised relative path to a regular file, counts and
//! bytes capped on what is actually read, each file hashed) before it is stored.
//!
//! Blocking (`zip` reads a seekable file): call from `spawn_blocking`.

use std::collections::HashSet;
use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::store::ArtifactFile;

/// Most globs per job.
pub const MAX_GLOBS: usize = 32;
/// Longest glob.
pub const MAX_GLOB_LEN: usize = 256;
/// Skipped paths listed per job (the rest are counted).
pub const MAX_SKIPPED_LISTED: usize = 100;

/// Checks and normalises submitted artifact globs: relative, no `..` component, no NUL, valid
/// glob syntax; a leading `./` is dropped.
pub fn validate_globs(globs: &[String]) -> Result<Vec<String>, String> {
    if globs.len() > MAX_GLOBS {
        return Err(format!("artifacts: at most {MAX_GLOBS} globs"));
    }
    let mut out = Vec::with_capacity(globs.len());
    for g in globs {
        let g = g.trim();
        let g = g.strip_prefix("./").unwrap_or(g);
        if g.is_empty() || g.len() > MAX_GLOB_LEN {
            return Err(format!(
                "artifacts: each glob must be 1 to {MAX_GLOB_LEN} bytes"
            ));
        }
        if g.starts_with('/') || g.contains('\0') || g.contains('\\') {
            return Err(format!(
                "artifacts: {g:?} must be a path relative to the job dir (no leading '/', NUL or '\\\\')"
            ));
        }
        if g.split('/').any(|c| c == ".." || c == ".") {
            return Err(format!(
                "artifacts: {g:?} must not contain '.' or '..' components"
            ));
        }
        globset::GlobBuilder::new(g)
            .literal_separator(true)
            .build()
            .map_err(|e| format!("artifacts: {g:?} is not a valid glob: {e}"))?;
        out.push(g.to_string());
    }
    Ok(out)
}

/// True for a ZIP entry name we list and serve (the rule the agent collects by).
pub use cmdx_proto::rest::is_clean_artifact_path as is_clean_path;

/// What an inspection found.
#[derive(Debug, Default)]
pub struct Inspection {
    /// Regular files, in ZIP order.
    pub files: Vec<ArtifactFile>,
    /// Entries left out (lenient mode only), with why.
    pub skipped: Vec<(String, String)>,
    /// All entries left out.
    pub skipped_total: u64,
}

/// Lists and hashes the files of the ZIP at `path`, reading at most `max_bytes` of content and
/// `max_files` entries.
///
/// `strict` (uploads from cmdx agents): any directory, symlink, unclean or duplicate name, or a
/// cap exceeded rejects the whole ZIP. Lenient (the original agent's `resultZipBase64`, which
/// zipped a whole folder): such entries are left out of the listing and reported as skipped.
pub fn inspect_zip(
    path: &Path,
    max_bytes: u64,
    max_files: u32,
    strict: bool,
) -> Result<Inspection, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("reading the upload: {e}"))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| format!("not a valid ZIP: {e}"))?;
    let mut out = Inspection::default();
    let mut seen = HashSet::new();
    let mut budget = max_bytes;
    let entries = zip.len();
    if strict && entries > max_files as usize {
        return Err(format!(
            "{entries} entries exceed the cap of {max_files} artifact files"
        ));
    }
    let skip = |out: &mut Inspection, name: &str, why: &str| -> Result<(), String> {
        if strict {
            return Err(format!("entry {name:?}: {why}"));
        }
        out.skipped_total += 1;
        if out.skipped.len() < MAX_SKIPPED_LISTED {
            out.skipped.push((name.to_string(), why.to_string()));
        }
        Ok(())
    };
    for i in 0..entries {
        let mut entry = zip
            .by_index(i)
            .map_err(|e| format!("entry {i} is unreadable: {e}"))?;
        let name = match entry.name() {
            Ok(n) => n.to_string(),
            Err(_) => {
                let raw = String::from_utf8_lossy(entry.name_raw()).into_owned();
                skip(&mut out, &raw, "name is not UTF-8")?;
                continue;
            }
        };
        if entry.is_dir() {
            if strict {
                return Err(format!("entry {name:?}: directories are not artifacts"));
            }
            continue;
        }
        if entry.is_symlink() {
            skip(&mut out, &name, "symlink entry")?;
            continue;
        }
        if !is_clean_path(&name) {
            skip(&mut out, &name, "unsafe path")?;
            continue;
        }
        if !seen.insert(name.clone()) {
            skip(&mut out, &name, "duplicate entry")?;
            continue;
        }
        if out.files.len() >= max_files as usize {
            skip(&mut out, &name, "over the artifact file cap")?;
            continue;
        }
        if entry.size() > budget {
            skip(&mut out, &name, "over the artifact byte cap")?;
            continue;
        }
        // Declared sizes can lie: count what is actually read, one byte past the budget.
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut buf = vec![0u8; 64 * 1024];
        let mut limited = (&mut entry).take(budget + 1);
        loop {
            let n = limited
                .read(&mut buf)
                .map_err(|e| format!("entry {name:?} is corrupt: {e}"))?;
            if n == 0 {
                break;
            }
            size += n as u64;
            hasher.update(&buf[..n]);
        }
        if size > budget {
            return Err(format!(
                "entry {name:?} inflates past the artifact byte cap of {max_bytes}"
            ));
        }
        budget -= size;
        out.files.push(ArtifactFile {
            path: name,
            size,
            sha256: hex::encode(hasher.finalize()),
        });
    }
    Ok(out)
}

/// Streams entry `name` of the ZIP `file` into `tx` in 64 KiB pieces (blocking).
pub fn stream_entry(
    file: std::fs::File,
    name: &str,
    tx: tokio::sync::mpsc::Sender<Result<bytes::Bytes, std::io::Error>>,
) {
    let result = (|| -> Result<(), std::io::Error> {
        let mut zip = zip::ZipArchive::new(file).map_err(std::io::Error::other)?;
        let mut entry = zip.by_name(name).map_err(std::io::Error::other)?;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = entry.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            if tx
                .blocking_send(Ok(bytes::Bytes::copy_from_slice(&buf[..n])))
                .is_err()
            {
                return Ok(()); // the client went away
            }
        }
    })();
    if let Err(e) = result {
        let _ = tx.blocking_send(Err(e));
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn zip_of(entries: &[(&str, &[u8])]) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        let mut w = zip::ZipWriter::new(f.reopen().unwrap());
        for (name, data) in entries {
            if name.ends_with('/') {
                w.add_directory(*name, zip::write::SimpleFileOptions::default())
                    .unwrap();
            } else {
                w.start_file(*name, zip::write::SimpleFileOptions::default())
                    .unwrap();
                w.write_all(data).unwrap();
            }
        }
        w.finish().unwrap();
        f
    }

    #[test]
    fn globs_must_stay_inside_the_job_dir() {
        let ok = validate_globs(&["./dist/**".into(), "reports/*.xml".into()]).unwrap();
        assert_eq!(ok, vec!["dist/**", "reports/*.xml"]);
        for bad in ["/etc/*", "../x", "a/../../b", "", "a\\b", "[", "a/./b"] {
            assert!(validate_globs(&[bad.into()]).is_err(), "{bad:?} accepted");
        }
        assert!(validate_globs(&vec!["a".to_string(); MAX_GLOBS + 1]).is_err());
    }

    #[test]
    fn strict_inspection_lists_and_hashes_regular_files() {
        let z = zip_of(&[("dist/app.txt", b"hello"), ("r.xml", b"<r/>")]);
        let got = inspect_zip(z.path(), 1 << 20, 10, true).unwrap();
        assert_eq!(got.files.len(), 2);
        assert_eq!(got.files[0].path, "dist/app.txt");
        assert_eq!(got.files[0].size, 5);
        assert_eq!(got.files[0].sha256, hex::encode(Sha256::digest(b"hello")),);
    }

    #[test]
    fn strict_inspection_rejects_what_lenient_skips() {
        let z = zip_of(&[("ok.txt", b"1"), ("../evil", b"2"), ("d/", b"")]);
        assert!(inspect_zip(z.path(), 1 << 20, 10, true).is_err());
        let got = inspect_zip(z.path(), 1 << 20, 10, false).unwrap();
        assert_eq!(got.files.len(), 1);
        assert_eq!(got.skipped_total, 1);
        assert_eq!(got.skipped[0].1, "unsafe path");
    }

    #[test]
    fn caps_are_counted_on_bytes_read() {
        let z = zip_of(&[("a", &[0u8; 1000]), ("b", &[0u8; 1000])]);
        assert!(inspect_zip(z.path(), 1500, 10, true).is_err());
        assert!(inspect_zip(z.path(), 5000, 1, true).is_err());
        let lenient = inspect_zip(z.path(), 1500, 10, false).unwrap();
        assert_eq!(lenient.files.len(), 1);
        assert_eq!(lenient.skipped[0].1, "over the artifact byte cap");
    }

    #[test]
    fn garbage_is_not_a_zip() {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), b"not a zip at all").unwrap();
        assert!(inspect_zip(f.path(), 100, 10, false).is_err());
    }
}
