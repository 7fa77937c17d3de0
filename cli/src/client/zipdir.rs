//! Zips a folder into a temporary file for upload, honouring `.gitignore` (with or without a git
//! repository), `.ignore` and `.cmdxignore` files, and skipping `.git`. Files are streamed into
//! the archive through a fixed buffer, so memory stays flat whatever the folder's size.

use std::fs::File;
use std::io::{BufWriter, Seek, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context, bail};
use zip::CompressionMethod;
use zip::write::SimpleFileOptions;

/// The custom ignore file cmdx honours on top of `.gitignore`.
pub const IGNORE_FILE: &str = ".cmdxignore";

/// A zipped folder waiting to be uploaded (deleted when dropped).
pub struct Zipped {
    /// The archive.
    pub file: tempfile::NamedTempFile,
    /// Its size in bytes.
    pub size: u64,
    /// Files in it.
    pub files: u64,
    /// Bytes of file content before compression.
    pub content_bytes: u64,
}

/// Extensions of formats that are already compressed: stored as is, not deflated again.
const STORED: &[&str] = &[
    "zip", "gz", "tgz", "bz2", "xz", "zst", "7z", "jar", "whl", "png", "jpg", "jpeg", "gif",
    "webp", "mp4", "mp3", "woff2",
];

/// Zips `dir` into a temp file. Blocking: call it from `spawn_blocking`.
pub fn zip_dir(dir: &Path) -> anyhow::Result<Zipped> {
    let meta =
        std::fs::metadata(dir).with_context(|| format!("cannot read folder {}", dir.display()))?;
    if !meta.is_dir() {
        bail!(
            "{} is not a folder (use --zip FILE for an archive)",
            dir.display()
        );
    }
    let tmp = tempfile::Builder::new()
        .prefix("cmdx-upload-")
        .suffix(".zip")
        .tempfile()
        .context("cannot create a temp file for the archive")?;
    let out = tmp
        .reopen()
        .context("cannot open the temp file for the archive")?;
    let mut z = zip::ZipWriter::new(BufWriter::with_capacity(64 * 1024, out));
    let (files, content_bytes) = add_tree(&mut z, dir)?;
    let mut w = z.finish().context("cannot finish the archive")?;
    w.flush().context("cannot write the archive")?;
    let size = w
        .get_mut()
        .stream_position()
        .context("cannot size the archive")?;
    Ok(Zipped {
        file: tmp,
        size,
        files,
        content_bytes,
    })
}

fn add_tree<W: Write + Seek>(z: &mut zip::ZipWriter<W>, dir: &Path) -> anyhow::Result<(u64, u64)> {
    let walk = ignore::WalkBuilder::new(dir)
        .hidden(false)
        .git_ignore(true)
        .git_exclude(true)
        .git_global(false)
        .require_git(false)
        .follow_links(false)
        .add_custom_ignore_filename(IGNORE_FILE)
        .filter_entry(|e| e.file_name() != ".git")
        .sort_by_file_name(std::cmp::Ord::cmp)
        .build();
    let (mut files, mut bytes) = (0u64, 0u64);
    for entry in walk {
        let entry = entry.with_context(|| format!("cannot walk {}", dir.display()))?;
        let path = entry.path();
        let rel = path.strip_prefix(dir).unwrap_or(path);
        if rel.as_os_str().is_empty() {
            continue;
        }
        let Some(name) = rel.to_str() else {
            bail!("file name {} is not UTF-8", path.display());
        };
        let Some(ft) = entry.file_type() else {
            continue;
        };
        let meta = entry
            .metadata()
            .with_context(|| format!("cannot stat {}", path.display()))?;
        let mode = meta.permissions().mode() & 0o777;
        if ft.is_dir() {
            z.add_directory(
                format!("{name}/"),
                SimpleFileOptions::default().unix_permissions(mode | 0o700),
            )
            .with_context(|| format!("cannot add {name} to the archive"))?;
        } else if ft.is_file() {
            let ext = rel
                .extension()
                .and_then(|e| e.to_str())
                .map(str::to_ascii_lowercase)
                .unwrap_or_default();
            let method = if STORED.contains(&ext.as_str()) || meta.len() < 64 {
                CompressionMethod::Stored
            } else {
                CompressionMethod::Deflated
            };
            let opts = SimpleFileOptions::default()
                .compression_method(method)
                .unix_permissions(mode)
                .large_file(meta.len() >= u32::MAX as u64);
            z.start_file(name, opts)
                .with_context(|| format!("cannot add {name} to the archive"))?;
            let mut f =
                File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
            bytes += std::io::copy(&mut f, z)
                .with_context(|| format!("cannot archive {}", path.display()))?;
            files += 1;
        } else if ft.is_symlink() {
            super::detail(format_args!("skipping symlink {name}"));
        }
    }
    Ok((files, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(z: &Zipped) -> Vec<String> {
        let f = z.file.reopen().unwrap();
        let mut a = zip::ZipArchive::new(f).unwrap();
        (0..a.len())
            .map(|i| a.by_index(i).unwrap().name().unwrap().to_string())
            .collect()
    }

    #[test]
    fn ignores_gitignored_cmdxignored_and_git() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        std::fs::write(p.join(".gitignore"), "target/\n*.log\n").unwrap();
        std::fs::write(p.join(IGNORE_FILE), "secret.txt\n").unwrap();
        std::fs::create_dir_all(p.join("target")).unwrap();
        std::fs::write(p.join("target/big.bin"), b"x").unwrap();
        std::fs::write(p.join("a.log"), b"x").unwrap();
        std::fs::write(p.join("secret.txt"), b"x").unwrap();
        std::fs::create_dir_all(p.join(".git")).unwrap();
        std::fs::write(p.join(".git/HEAD"), b"ref").unwrap();
        std::fs::create_dir_all(p.join("src")).unwrap();
        std::fs::write(p.join("src/main.sh"), b"echo hi\n").unwrap();
        std::fs::write(p.join(".env.example"), b"A=1\n").unwrap();
        let z = zip_dir(p).unwrap();
        let n = names(&z);
        assert!(n.contains(&"src/main.sh".to_string()), "{n:?}");
        assert!(n.contains(&".env.example".to_string()), "{n:?}");
        assert!(n.contains(&".gitignore".to_string()), "{n:?}");
        for gone in ["target/big.bin", "a.log", "secret.txt", ".git/HEAD"] {
            assert!(!n.iter().any(|x| x == gone), "{gone} uploaded: {n:?}");
        }
        assert_eq!(z.files, 4);
    }
}
