//! Hostile ZIPs and download failures: each ends the job with `failed/setup`, a clear error,
//! and nothing written outside the job directory.

use std::path::PathBuf;

use cmdx_proto::{FailureKind, JobStatus};

use crate::helpers::*;
use crate::zipkit::{self, Entry};

/// A unique host path an escaping entry would create.
fn escape_target(tag: &str) -> PathBuf {
    PathBuf::from(format!("/tmp/cmdx-escape-{tag}-{:x}", rand_u64()))
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id().into());
    h.finish()
}

/// Runs a job whose ZIP is `zip` and returns its outcome, asserting the command never ran.
async fn setup_failure(
    hub: &FakeHub,
    conn: &mut HubConn,
    id: &str,
    zip: Vec<u8>,
    sha: Option<String>,
) -> cmdx_proto::Outcome {
    let path = format!("/api/files/download/{id}");
    let real_sha = hub.put_file(&path, zip);
    let mut a = assignment(id, "echo the command ran; touch ran");
    a.file_url = Some(path);
    a.file_sha256 = Some(sha.unwrap_or(real_sha));
    let job = job_ref(&a);
    conn.assign(a).await;
    let run = conn.run_to_end(&job, true).await;
    assert!(!run.started, "the command must not start");
    assert!(run.chunks.is_empty());
    let o = run.outcome().clone();
    assert_eq!(o.status(), JobStatus::Failed, "{o:?}");
    assert_eq!(o.failure, Some(FailureKind::Setup), "{o:?}");
    o
}

#[tokio::test]
async fn hostile_zips_fail_setup_and_write_nothing_outside() {
    // Build every archive first: the fake hub answers no pings while the test computes.
    let dotdot = escape_target("dotdot");
    let absolute = escape_target("abs");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "dotdot",
            zipkit::build(&[
                Entry::file("ok.txt", b"fine"),
                Entry::file(
                    &format!("../../../../../../../..{}", dotdot.display()),
                    b"pwned",
                ),
            ]),
            "parent directory",
        ),
        (
            "dotdot-inner",
            zipkit::build(&[Entry::file("a/../../escape.txt", b"pwned")]),
            "parent directory",
        ),
        (
            "absolute",
            zipkit::build(&[Entry::file(&absolute.display().to_string(), b"pwned")]),
            "absolute path",
        ),
        (
            "symlink",
            zipkit::build(&[
                Entry::file("etc", b"/etc").mode(0o120_777),
                Entry::file("etc/passwd-copy", b"x"),
            ]),
            "symlink",
        ),
        (
            "duplicate",
            zipkit::build(&[Entry::file("a.txt", b"one"), Entry::file("a.txt", b"two")]),
            "duplicate",
        ),
        (
            "duplicate-normalized",
            zipkit::build(&[
                Entry::file("d/a.txt", b"one"),
                Entry::file("d//./a.txt", b"two"),
            ]),
            "duplicate",
        ),
        (
            "device",
            zipkit::build(&[Entry::file("null", b"").mode(0o020_666)]),
            "special file",
        ),
        (
            // 64 MiB of zeros claiming to be 100 bytes.
            "lying-bomb",
            zipkit::build(&[Entry::file("bomb.bin", &vec![0u8; 64 << 20])
                .deflated()
                .declare(100)]),
            "bomb.bin",
        ),
        (
            // Honest sizes, but far over the extraction cap and the ratio.
            "honest-bomb",
            zipkit::build(&[Entry::file("bomb.bin", &vec![0u8; 64 << 20]).deflated()]),
            "exceeds the limit",
        ),
        (
            // Under the size cap, but a compression ratio no real project has.
            "ratio-bomb",
            zipkit::build(&[Entry::file("bomb.bin", &vec![0u8; 8 << 20]).deflated()]),
            "compression ratio",
        ),
        (
            "too-many-entries",
            zipkit::build(
                &(0..100_000)
                    .map(|i| Entry::file(&format!("f{i}"), b""))
                    .collect::<Vec<_>>(),
            ),
            "entries",
        ),
        ("not-a-zip", b"this is not a zip file".to_vec(), "zip"),
    ];
    let (hub, agent, mut conn) = setup_with(|c| {
        c.max_extract_bytes = 16 << 20;
        c.concurrency = 1;
    })
    .await;
    for (id, zip, want) in cases {
        let o = setup_failure(&hub, &mut conn, id, zip, None).await;
        let err = o.error.clone().unwrap_or_default();
        eprintln!("{id}: {err}");
        assert!(
            err.contains(want),
            "{id}: error {err:?} should mention {want:?}"
        );
        assert!(!err.is_empty(), "{id}: empty error");
        // The workspace is gone once the result is acknowledged; nothing escaped.
        wait_for("workspace removal", || {
            dir_entries(&agent.jobs_dir()).is_empty()
        })
        .await;
        assert!(
            !dotdot.exists() && !absolute.exists(),
            "{id}: a file escaped the job dir"
        );
        assert_eq!(
            dir_entries(&agent.work_dir),
            vec!["agent.lock", "downloads", "images", "jobs", "worker-id"],
            "{id}: stray files in the work dir"
        );
        assert!(dir_entries(&agent.work_dir.join("downloads")).is_empty());
    }
    agent.abort(Some(&mut conn)).await;
}

#[tokio::test]
async fn sha256_mismatch_fails_setup() {
    let (hub, agent, mut conn) = setup().await;
    let zip = zipkit::build(&[Entry::file("a.txt", b"a")]);
    let o = setup_failure(&hub, &mut conn, "sha-1", zip, Some("00".repeat(32))).await;
    assert!(o.error.unwrap().contains("sha256 mismatch"));
    agent.abort(Some(&mut conn)).await;
}

#[tokio::test]
async fn oversized_and_missing_downloads_fail_setup() {
    let (hub, agent, mut conn) = setup_with(|c| c.max_download_bytes = 1024).await;
    let zip = zipkit::build(&[Entry::file("big.bin", &vec![7u8; 4096])]);
    let o = setup_failure(&hub, &mut conn, "big-dl", zip, None).await;
    assert!(o.error.unwrap().contains("exceeds the limit"));

    let mut a = assignment("missing-dl", "true");
    a.file_url = Some("/api/files/download/nope".into());
    let job = job_ref(&a);
    conn.assign(a).await;
    let run = conn.run_to_end(&job, true).await;
    let o = run.outcome();
    assert_eq!(o.failure, Some(FailureKind::Setup));
    assert!(o.error.as_ref().unwrap().contains("404"), "{o:?}");
    assert!(run.chunks.is_empty() && !run.started);
    agent.abort(Some(&mut conn)).await;
}
