//! ZIP extraction: arbitrary archive bytes go through the agent's extractor.
//!
//! Invariants: nothing is created outside the destination directory (a sibling directory and
//! the parent stay untouched), no symlink or special file is ever created, the staging
//! directory is gone afterwards, and the bytes on disk never exceed the byte cap.

#![no_main]

use std::fs;
use std::path::Path;

use cmdx_agent::fuzzing::{FuzzExtractLimits, extract_zip_for_fuzzing};
use libfuzzer_sys::fuzz_target;

const LIMITS: FuzzExtractLimits = FuzzExtractLimits {
    max_entries: 64,
    max_bytes: 1 << 20,
    max_ratio: 100,
    ratio_floor: 64 << 10,
};

/// Walks `dir` without following symlinks; returns (regular file bytes, entries).
fn walk(dir: &Path, bytes: &mut u64, entries: &mut Vec<String>) {
    for entry in fs::read_dir(dir).expect("read_dir") {
        let entry = entry.expect("dir entry");
        let path = entry.path();
        let ft = entry.file_type().expect("file type");
        entries.push(path.display().to_string());
        if ft.is_dir() {
            walk(&path, bytes, entries);
        } else if ft.is_file() {
            *bytes += entry.metadata().expect("metadata").len();
        } else {
            panic!("extraction created a non-regular file: {}", path.display());
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let tmp = tempfile::tempdir().expect("tempdir");
    let zip = tmp.path().join("in.zip");
    fs::write(&zip, data).expect("write zip");
    let root = tmp.path().join("root");
    let dest = root.join("job");
    let sibling = root.join("other");
    fs::create_dir_all(&dest).expect("dest");
    fs::create_dir_all(&sibling).expect("sibling");

    let result = extract_zip_for_fuzzing(&zip, &dest, LIMITS);

    // Nothing outside `dest`: the temp dir holds exactly in.zip and root/, root holds exactly
    // job/ and other/, other/ is empty.
    let mut top: Vec<_> = fs::read_dir(tmp.path())
        .expect("read tmp")
        .map(|e| e.expect("entry").file_name())
        .collect();
    top.sort();
    assert_eq!(
        top,
        ["in.zip", "root"],
        "something was written beside the root"
    );
    let mut under_root: Vec<_> = fs::read_dir(&root)
        .expect("read root")
        .map(|e| e.expect("entry").file_name())
        .collect();
    under_root.sort();
    assert_eq!(
        under_root,
        ["job", "other"],
        "something was written outside the job dir"
    );
    assert_eq!(fs::read_dir(&sibling).expect("read sibling").count(), 0);

    let mut bytes = 0;
    let mut entries = Vec::new();
    walk(&dest, &mut bytes, &mut entries);
    assert!(
        !entries.iter().any(|e| e.contains(".cmdx-extract-")),
        "staging dir left behind: {entries:?}"
    );
    assert!(
        bytes <= LIMITS.max_bytes,
        "{bytes} bytes on disk, over the cap"
    );
    match result {
        Ok((files, written)) => {
            assert_eq!(written, bytes, "reported bytes differ from bytes on disk");
            assert!(files <= LIMITS.max_entries);
        }
        Err(_) => assert!(entries.is_empty(), "a rejected archive left {entries:?}"),
    }
});
