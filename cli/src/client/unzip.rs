//! Safe unpacking of a job's artifact ZIP into a folder.
//!
//! Only the files the hub listed for the job are written, and only after every one of them was
//! found in the ZIP with its listed size and sha256 (checked by the same inspection the hub
//! lists with, [`cmdx_hub::artifacts::inspect_zip`]). Names must be clean relative paths (no
//! leading `/`, no `.` or `..` component, no backslash, NUL or control character); directories,
//! symlink entries and anything not listed are left out and reported. Inside the target folder
//! nothing is followed or overwritten: an existing symlink or file on the way is an error, new
//! folders are made with `mkdir` (which never follows) and files with `create_new` (`O_EXCL`,
//! which fails on an existing name, symlink or not). With `overwrite` (`--force`) an existing
//! regular file may be replaced: each file is written under a fresh temp name beside it, and
//! only when all are written are they renamed over their targets (a rename replaces the name,
//! never writes through it). Entries, files and bytes are capped, and
//! each file is read through a limit of its listed size. All or nothing: every target is checked
//! before the first byte is written, and a failure while writing removes what this run wrote.
//!
//! What this cannot stop: another process swapping a folder inside the target for a symlink
//! between our check and our write. Unpack into a folder nobody else writes to.
//!
//! Blocking: call from `spawn_blocking`.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{ErrorKind, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use cmdx_hub::artifacts::{inspect_zip, is_clean_path};
use cmdx_proto::rest::ArtifactView;

/// Most files unpacked from one ZIP (the hub's default cap is 10,000).
pub const MAX_FILES: usize = 100_000;
/// Most bytes unpacked from one ZIP (the hub's default cap is 256 MiB).
pub const MAX_BYTES: u64 = 16 << 30;
/// Most entries a ZIP may hold, listed or not.
pub const MAX_ENTRIES: usize = 200_000;

/// What [`unpack`] did.
#[derive(Debug, Default)]
pub struct Unpacked {
    /// Files written, in ZIP order (paths relative to the folder).
    pub written: Vec<ArtifactView>,
    /// ZIP entries left out, and why (not listed for the job, unsafe name, symlink, …).
    pub left_out: Vec<(String, String)>,
}

/// Unpacks the listed files of the ZIP at `zip` into `dir` (created if missing); existing
/// regular files are replaced only when `overwrite`.
pub fn unpack(
    zip: &Path,
    dir: &Path,
    listed: &[ArtifactView],
    overwrite: bool,
) -> anyhow::Result<Unpacked> {
    let expected = check_listing(listed)?;
    let file = fs::File::open(zip).with_context(|| format!("cannot open {}", zip.display()))?;
    let mut archive =
        zip::ZipArchive::new(file).map_err(|e| anyhow!("the artifact ZIP is not valid: {e}"))?;
    if archive.len() > MAX_ENTRIES {
        bail!(
            "the artifact ZIP has {} entries, over the cap of {MAX_ENTRIES}",
            archive.len()
        );
    }
    let mut out = Unpacked::default();
    let found = verified(zip, listed, &expected, &mut out.left_out)?;
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for a in listed {
        check_target(dir, &a.path, overwrite)?;
    }
    let mut made = Made::default();
    let written = write_all(
        &mut archive,
        dir,
        &expected,
        &found,
        overwrite,
        &mut made,
        &mut out,
    )
    .and_then(|()| made.commit());
    match written {
        Ok(()) => {
            made.keep();
            Ok(out)
        }
        Err(e) => {
            made.undo();
            Err(e)
        }
    }
}

/// The listing as a map from path to the file, after checking its names and caps.
fn check_listing(listed: &[ArtifactView]) -> anyhow::Result<HashMap<&str, &ArtifactView>> {
    if listed.len() > MAX_FILES {
        bail!(
            "the job lists {} artifact files, over the cap of {MAX_FILES}",
            listed.len()
        );
    }
    listed
        .iter()
        .try_fold(0u64, |sum, a| sum.checked_add(a.size))
        .filter(|total| *total <= MAX_BYTES)
        .ok_or_else(|| anyhow!("the job's artifacts are over the cap of {MAX_BYTES} bytes"))?;
    let mut expected = HashMap::with_capacity(listed.len());
    for a in listed {
        if !is_clean_path(&a.path) {
            bail!(
                "the job lists an unsafe artifact path {:?}: nothing written",
                a.path
            );
        }
        if expected.insert(a.path.as_str(), a).is_some() {
            bail!("the job lists artifact {:?} twice", a.path);
        }
    }
    Ok(expected)
}

/// Inspects the ZIP (reading at most the listed bytes and files) and checks that every listed
/// file is in it with its listed size and sha256. Returns the paths to write; entries left out
/// go to `left_out`.
fn verified(
    zip: &Path,
    listed: &[ArtifactView],
    expected: &HashMap<&str, &ArtifactView>,
    left_out: &mut Vec<(String, String)>,
) -> anyhow::Result<HashSet<String>> {
    let budget: u64 = listed.iter().map(|a| a.size).sum();
    let files = u32::try_from(listed.len()).unwrap_or(u32::MAX);
    let seen = inspect_zip(zip, budget, files, false)
        .map_err(|e| anyhow!("the artifact ZIP does not match the job's listing: {e}"))?;
    // The caps given are the listing's: an entry over them is one the job did not list.
    left_out.extend(seen.skipped.into_iter().map(|(path, why)| {
        if why.contains(" cap") {
            (path, "not listed for the job".to_string())
        } else {
            (path, why)
        }
    }));
    let mut found = HashSet::with_capacity(listed.len());
    for f in seen.files {
        match expected.get(f.path.as_str()) {
            Some(want) if want.size == f.size && want.sha256.eq_ignore_ascii_case(&f.sha256) => {
                found.insert(f.path);
            }
            Some(want) => bail!(
                "{} in the downloaded ZIP differs from the job's listing \
                 ({} bytes, sha256 {}; listed {} bytes, sha256 {}): nothing written",
                f.path,
                f.size,
                f.sha256,
                want.size,
                want.sha256
            ),
            None => left_out.push((f.path, "not listed for the job".into())),
        }
    }
    if let Some(missing) = listed.iter().find(|a| !found.contains(&a.path)) {
        bail!(
            "{} is listed for the job but missing from the downloaded ZIP: nothing written",
            missing.path
        );
    }
    Ok(found)
}

/// Checks, without writing, that `rel` can be created in `dir`: no component on the way is a
/// symlink or a file, and the file itself does not exist yet (or, with `overwrite`, is a
/// regular file).
fn check_target(dir: &Path, rel: &str, overwrite: bool) -> anyhow::Result<()> {
    let parts: Vec<&str> = rel.split('/').collect();
    let mut path = dir.to_path_buf();
    for (i, part) in parts.iter().enumerate() {
        path.push(part);
        let meta = match fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) => bail!("cannot check {}: {e}", path.display()),
        };
        if meta.file_type().is_symlink() {
            bail!(
                "{} is a symlink: not followed, nothing written",
                path.display()
            );
        }
        if i + 1 == parts.len() && overwrite && meta.is_file() {
            return Ok(());
        }
        if i + 1 == parts.len() {
            bail!(
                "{} already exists: not overwritten (--force replaces it), nothing written",
                path.display()
            );
        }
        if !meta.is_dir() {
            bail!(
                "{} is not a folder: cannot write {rel}, nothing written",
                path.display()
            );
        }
    }
    Ok(())
}

/// Files and folders this run created, removed again by [`Made::undo`] after a failure.
#[derive(Default)]
struct Made {
    files: Vec<PathBuf>,
    dirs: Vec<PathBuf>,
    /// Files written under a temp name, each with the name it replaces at [`Made::commit`].
    renames: Vec<(PathBuf, PathBuf)>,
}

impl Made {
    /// Renames the files written under temp names over their targets.
    fn commit(&mut self) -> anyhow::Result<()> {
        for (tmp, target) in &self.renames {
            fs::rename(tmp, target)
                .with_context(|| format!("cannot replace {}", target.display()))?;
        }
        Ok(())
    }

    fn keep(&mut self) {
        self.files.clear();
        self.dirs.clear();
    }

    fn undo(&mut self) {
        for f in self.files.drain(..) {
            let _ = fs::remove_file(f);
        }
        for d in self.dirs.drain(..).rev() {
            let _ = fs::remove_dir(d);
        }
    }
}

/// Writes every entry whose name is in `found` (its first occurrence) into `dir`, reading no
/// more than its listed size.
fn write_all<R: Read + std::io::Seek>(
    archive: &mut zip::ZipArchive<R>,
    dir: &Path,
    expected: &HashMap<&str, &ArtifactView>,
    found: &HashSet<String>,
    overwrite: bool,
    made: &mut Made,
    out: &mut Unpacked,
) -> anyhow::Result<()> {
    let mut done: HashSet<String> = HashSet::with_capacity(found.len());
    for i in 0..archive.len() {
        let mut entry = archive
            .by_index(i)
            .map_err(|e| anyhow!("entry {i} of the artifact ZIP is unreadable: {e}"))?;
        let Ok(name) = entry.name().map(|n| n.to_string()) else {
            continue;
        };
        let listed = match expected.get(name.as_str()) {
            Some(a) if found.contains(&name) && !done.contains(&name) => *a,
            _ => continue,
        };
        if entry.is_dir() || entry.is_symlink() || !is_clean_path(&name) {
            continue;
        }
        let target = make_parents(dir, &name, made)?;
        let exec = entry.unix_mode().is_some_and(|m| m & 0o111 != 0);
        // An existing file (checked to be a regular one) is replaced by a rename at the end.
        let exists = overwrite && fs::symlink_metadata(&target).is_ok();
        let path = if exists {
            let parent = target.parent().unwrap_or(dir);
            parent.join(format!(".cmdx-new-{}-{i}", std::process::id()))
        } else {
            target.clone()
        };
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(if exec { 0o755 } else { 0o644 })
            .open(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        made.files.push(path.clone());
        if exists {
            made.renames.push((path, target.clone()));
        }
        let want = listed.size;
        let n = std::io::copy(&mut (&mut entry).take(want.saturating_add(1)), &mut f)
            .with_context(|| format!("cannot write {}", target.display()))?;
        if n != want {
            bail!("{name} inflated to {n} bytes, not the {want} listed");
        }
        done.insert(name);
        out.written.push(listed.clone());
    }
    if done.len() != found.len() {
        bail!("the artifact ZIP changed while it was unpacked");
    }
    Ok(())
}

/// Creates the folders leading to `rel` inside `dir` (never through a symlink) and returns the
/// file's path.
fn make_parents(dir: &Path, rel: &str, made: &mut Made) -> anyhow::Result<PathBuf> {
    let mut path = dir.to_path_buf();
    let parts: Vec<&str> = rel.split('/').collect();
    let (file, folders) = parts.split_last().ok_or_else(|| anyhow!("empty name"))?;
    for part in folders {
        path.push(part);
        match fs::create_dir(&path) {
            Ok(()) => made.dirs.push(path.clone()),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                let meta = fs::symlink_metadata(&path)
                    .with_context(|| format!("cannot check {}", path.display()))?;
                if meta.file_type().is_symlink() || !meta.is_dir() {
                    bail!("{} is not a plain folder: not followed", path.display());
                }
            }
            Err(e) => bail!("cannot create {}: {e}", path.display()),
        }
    }
    path.push(file);
    Ok(path)
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::fs::{PermissionsExt, symlink};

    use zip::write::SimpleFileOptions;

    use super::*;

    const HELLO: &str = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
    const ABC: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    const X: &str = "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881";

    /// An entry of a test ZIP.
    enum E<'a> {
        File(&'a str, &'a [u8]),
        Exec(&'a str, &'a [u8]),
        Dir(&'a str),
        Link(&'a str, &'a str),
    }

    fn zip_of(entries: &[E]) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        let mut w = zip::ZipWriter::new(f.reopen().unwrap());
        let opts = SimpleFileOptions::default();
        for e in entries {
            match e {
                E::File(name, data) | E::Exec(name, data) => {
                    let mode = if matches!(e, E::Exec(..)) {
                        0o755
                    } else {
                        0o644
                    };
                    w.start_file(*name, opts.unix_permissions(mode)).unwrap();
                    w.write_all(data).unwrap();
                }
                E::Dir(name) => w.add_directory(*name, opts).unwrap(),
                E::Link(name, target) => w.add_symlink(*name, *target, opts).unwrap(),
            }
        }
        w.finish().unwrap();
        f
    }

    fn art(path: &str, size: u64, sha256: &str) -> ArtifactView {
        ArtifactView {
            path: path.into(),
            size,
            sha256: sha256.into(),
        }
    }

    /// Every path under `root`, relative, sorted (symlinks listed, not followed).
    fn tree(root: &Path) -> Vec<String> {
        fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
            for e in fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                out.push(p.strip_prefix(root).unwrap().display().to_string());
                let m = fs::symlink_metadata(&p).unwrap();
                if m.is_dir() {
                    walk(root, &p, out);
                }
            }
        }
        let mut out = Vec::new();
        walk(root, root, &mut out);
        out.sort();
        out
    }

    #[test]
    fn writes_the_listed_files_byte_for_byte() {
        let z = zip_of(&[
            E::Dir("dist/"),
            E::File("dist/app.txt", b"hello"),
            E::Exec("dist/bin/run", b"abc"),
        ]);
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("new/out");
        let listed = [art("dist/app.txt", 5, HELLO), art("dist/bin/run", 3, ABC)];
        let done = unpack(z.path(), &dir, &listed, false).unwrap();
        assert_eq!(done.written, listed);
        assert!(done.left_out.is_empty(), "{:?}", done.left_out);
        assert_eq!(fs::read(dir.join("dist/app.txt")).unwrap(), b"hello");
        assert_eq!(fs::read(dir.join("dist/bin/run")).unwrap(), b"abc");
        let mode = |p: &str| fs::metadata(dir.join(p)).unwrap().permissions().mode();
        assert_eq!(mode("dist/bin/run") & 0o111, 0o111, "exec bit kept");
        assert_eq!(mode("dist/app.txt") & 0o111, 0, "no exec bit added");
        assert_eq!(
            tree(&dir),
            ["dist", "dist/app.txt", "dist/bin", "dist/bin/run"]
        );
    }

    #[test]
    fn hostile_entries_are_left_out_and_nothing_lands_outside() {
        let z = zip_of(&[
            E::File("../../escape", b"x"),
            E::File("/abs", b"x"),
            E::File("a\\..\\..\\win", b"x"),
            E::File("ok/./dot", b"x"),
            E::Link("link", "/etc/passwd"),
            E::Link("ok/up", "../../.."),
            E::File("ok/file", b"hello"),
            E::File("extra.txt", b"x"),
        ]);
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/b/out");
        let done = unpack(z.path(), &dir, &[art("ok/file", 5, HELLO)], false).unwrap();
        assert_eq!(done.written, [art("ok/file", 5, HELLO)]);
        assert_eq!(
            tree(root.path()),
            ["a", "a/b", "a/b/out", "a/b/out/ok", "a/b/out/ok/file"]
        );
        assert_eq!(
            fs::read(dir.join("ok/file")).unwrap(),
            b"hello",
            "first entry wins"
        );
        let left: Vec<&str> = done.left_out.iter().map(|(p, _)| p.as_str()).collect();
        for bad in [
            "../../escape",
            "/abs",
            "a\\..\\..\\win",
            "ok/./dot",
            "link",
            "ok/up",
        ] {
            assert!(left.contains(&bad), "{bad} not reported: {left:?}");
        }
        assert!(
            done.left_out
                .iter()
                .any(|(p, why)| p == "extra.txt" && why.contains("not listed")),
            "{:?}",
            done.left_out
        );
    }

    #[test]
    fn an_unsafe_listing_is_refused_before_anything_is_written() {
        let z = zip_of(&[E::File("../x", b"x"), E::File("a", b"x")]);
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("out");
        for bad in ["../x", "/x", "a/../../x", "a\\b", "a\0b", "", "a//b", "./a"] {
            let listed = [art("a", 1, X), art(bad, 1, X)];
            let e = unpack(z.path(), &dir, &listed, false).unwrap_err();
            assert!(format!("{e:#}").contains("unsafe"), "{bad:?}: {e:#}");
        }
        assert!(!dir.exists());
        let twice = unpack(z.path(), &dir, &[art("a", 1, X), art("a", 1, X)], false).unwrap_err();
        assert!(format!("{twice:#}").contains("twice"));
    }

    #[test]
    fn a_file_that_differs_from_the_listing_stops_everything() {
        let z = zip_of(&[E::File("a.txt", b"hello"), E::File("b.txt", b"abc")]);
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("out");
        let cases = [
            // wrong hash, same size
            vec![art("a.txt", 5, HELLO), art("b.txt", 3, HELLO)],
            // listed smaller than the entry inflates to
            vec![art("a.txt", 5, HELLO), art("b.txt", 2, ABC)],
            // listed but not in the ZIP
            vec![art("a.txt", 5, HELLO), art("c.txt", 1, X)],
        ];
        for listed in cases {
            let e = unpack(z.path(), &dir, &listed, false).unwrap_err();
            assert!(format!("{e:#}").contains("nothing written"), "{e:#}");
            assert!(!dir.join("a.txt").exists(), "a.txt written despite {e:#}");
        }
    }

    #[test]
    fn overwrite_replaces_regular_files_and_still_never_follows_a_symlink() {
        let z = zip_of(&[E::File("a.txt", b"hello"), E::File("sub/b.txt", b"abc")]);
        let listed = [art("a.txt", 5, HELLO), art("sub/b.txt", 3, ABC)];
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("out");
        unpack(z.path(), &dir, &listed, false).unwrap();
        fs::write(dir.join("a.txt"), b"old").unwrap();
        let e = unpack(z.path(), &dir, &listed, false).unwrap_err();
        assert!(format!("{e:#}").contains("--force"), "{e:#}");
        let done = unpack(z.path(), &dir, &listed, true).unwrap();
        assert_eq!(done.written.len(), 2);
        assert_eq!(fs::read(dir.join("a.txt")).unwrap(), b"hello");
        assert_eq!(fs::read(dir.join("sub/b.txt")).unwrap(), b"abc");
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "no temp file left: {names:?}");
        // A symlink where a file goes is refused even so, and nothing is written.
        let outside = root.path().join("outside");
        fs::write(&outside, b"keep").unwrap();
        fs::remove_file(dir.join("sub/b.txt")).unwrap();
        symlink(&outside, dir.join("sub/b.txt")).unwrap();
        fs::write(dir.join("a.txt"), b"old").unwrap();
        let e = unpack(z.path(), &dir, &listed, true).unwrap_err();
        assert!(format!("{e:#}").contains("symlink"), "{e:#}");
        assert_eq!(fs::read(&outside).unwrap(), b"keep");
        assert_eq!(fs::read(dir.join("a.txt")).unwrap(), b"old");
    }

    #[test]
    fn symlinks_and_files_in_the_folder_are_not_followed_or_overwritten() {
        let z = zip_of(&[E::File("a.txt", b"hello"), E::File("sub/b.txt", b"abc")]);
        let listed = [art("a.txt", 5, HELLO), art("sub/b.txt", 3, ABC)];
        let root = tempfile::tempdir().unwrap();
        let outside = root.path().join("outside");
        fs::create_dir(&outside).unwrap();

        // A symlinked folder on the way.
        let dir = root.path().join("one");
        fs::create_dir(&dir).unwrap();
        symlink(&outside, dir.join("sub")).unwrap();
        let e = unpack(z.path(), &dir, &listed, false).unwrap_err();
        assert!(format!("{e:#}").contains("symlink"), "{e:#}");
        assert!(tree(&outside).is_empty(), "wrote through the symlink");
        assert!(!dir.join("a.txt").exists(), "not all or nothing");

        // A dangling symlink where a file goes.
        let dir = root.path().join("two");
        fs::create_dir(&dir).unwrap();
        symlink(outside.join("created"), dir.join("a.txt")).unwrap();
        let e = unpack(z.path(), &dir, &listed, false).unwrap_err();
        assert!(format!("{e:#}").contains("symlink"), "{e:#}");
        assert!(tree(&outside).is_empty(), "created the symlink's target");

        // An existing file.
        let dir = root.path().join("three");
        fs::create_dir_all(dir.join("sub")).unwrap();
        fs::write(dir.join("sub/b.txt"), b"mine").unwrap();
        let e = unpack(z.path(), &dir, &listed, false).unwrap_err();
        assert!(format!("{e:#}").contains("already exists"), "{e:#}");
        assert_eq!(fs::read(dir.join("sub/b.txt")).unwrap(), b"mine");
        assert!(!dir.join("a.txt").exists());

        // A file where a folder goes.
        let dir = root.path().join("four");
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join("sub"), b"file").unwrap();
        let e = unpack(z.path(), &dir, &listed, false).unwrap_err();
        assert!(format!("{e:#}").contains("not a folder"), "{e:#}");
    }

    #[test]
    fn a_failure_while_writing_removes_what_was_written() {
        // The same name twice in the listing's folders: `d` as a file, then `d/e` needs it as a
        // folder. Each target passes the check (neither exists yet); the write of `d/e` fails.
        let z = zip_of(&[E::File("d", b"hello"), E::File("d/e", b"abc")]);
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("out");
        let e = unpack(
            z.path(),
            &dir,
            &[art("d", 5, HELLO), art("d/e", 3, ABC)],
            false,
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("not a plain folder"), "{e:#}");
        assert!(tree(&dir).is_empty(), "{:?}", tree(&dir));
    }

    #[test]
    fn caps_are_checked_before_reading() {
        let z = zip_of(&[E::File("a", b"x")]);
        let root = tempfile::tempdir().unwrap();
        let many: Vec<ArtifactView> = (0..=MAX_FILES)
            .map(|i| art(&format!("f{i}"), 1, X))
            .collect();
        let e = unpack(z.path(), root.path(), &many, false).unwrap_err();
        assert!(format!("{e:#}").contains("cap"), "{e:#}");
        let huge = [art("a", MAX_BYTES, X), art("b", 1, X)];
        let e = unpack(z.path(), root.path(), &huge, false).unwrap_err();
        assert!(format!("{e:#}").contains("cap"), "{e:#}");
        let garbage = tempfile::NamedTempFile::new().unwrap();
        fs::write(garbage.path(), b"not a zip").unwrap();
        let e = unpack(garbage.path(), root.path(), &[art("a", 1, X)], false).unwrap_err();
        assert!(format!("{e:#}").contains("not valid"), "{e:#}");
    }
}
