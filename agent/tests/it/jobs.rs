//! Running jobs: live output, stdout/stderr, exit codes, cancel, timeout, environment, files.

use std::time::{Duration, Instant};

use cmdx_proto::agent::{AgentMsg, Cancel, HubMsg};
use cmdx_proto::{FailureKind, JobStatus, StreamKind};

use crate::helpers::*;
use crate::zipkit::{self, Entry};

#[tokio::test]
async fn output_arrives_while_the_job_runs() {
    let (_hub, agent, mut conn) = setup().await;
    let a = assignment(
        "live-1",
        "echo first; while [ ! -f go ]; do sleep 0.02; done; echo second",
    );
    let job = job_ref(&a);
    conn.assign(a).await;
    match conn.recv().await {
        AgentMsg::Started(s) => assert!(!s.isolation.is_empty()),
        m => panic!("expected started, got {m:?}"),
    }
    // "first" arrives although the job is still blocked waiting for `go`.
    match conn.recv().await {
        AgentMsg::Output(c) => {
            assert_eq!((c.seq, c.stream), (0, StreamKind::Stdout));
            assert_eq!(c.data.0, b"first\n");
            conn.ack_output(&job, 1).await;
        }
        m => panic!("expected output, got {m:?}"),
    }
    std::fs::write(agent.job_dir(&job).join("go"), "").unwrap();
    let run = conn.run_to_end(&job, true).await;
    assert_eq!(run.text(StreamKind::Stdout), "second\n");
    assert_eq!(run.chunks[0].0, 1);
    assert_eq!(run.finished_chunks, 2);
    let o = run.outcome();
    assert_eq!(o.exit_code, Some(0));
    assert_eq!(o.status(), JobStatus::Completed);
    assert!(o.duration_ms > 0);
    agent.abort(Some(&mut conn)).await;
}

#[tokio::test]
async fn stdout_and_stderr_keep_their_interleaving() {
    let (_hub, agent, mut conn) = setup().await;
    let a = assignment(
        "streams-1",
        "echo out1; sleep 0.1; echo err1 >&2; sleep 0.1; echo out2; sleep 0.1; echo err2 >&2; exit 3",
    );
    let job = job_ref(&a);
    conn.assign(a).await;
    let run = conn.run_to_end(&job, true).await;
    run.assert_contiguous();
    let order: Vec<(StreamKind, String)> = run
        .chunks
        .iter()
        .map(|c| (c.1, String::from_utf8(c.2.clone()).unwrap()))
        .collect();
    assert_eq!(
        order,
        vec![
            (StreamKind::Stdout, "out1\n".into()),
            (StreamKind::Stderr, "err1\n".into()),
            (StreamKind::Stdout, "out2\n".into()),
            (StreamKind::Stderr, "err2\n".into()),
        ]
    );
    let o = run.outcome();
    assert_eq!(o.exit_code, Some(3));
    assert_eq!(o.failure_kind(), Some(FailureKind::ExitCode));
    agent.abort(Some(&mut conn)).await;
}

#[tokio::test]
async fn large_output_is_batched_and_complete() {
    let (_hub, agent, mut conn) = setup().await;
    // 2 MiB through the pipe: chunks of at most 32 KiB, nothing lost.
    let a = assignment("big-1", "head -c 2097152 /dev/zero | tr '\\0' x");
    let job = job_ref(&a);
    conn.assign(a).await;
    let run = conn.run_to_end(&job, true).await;
    run.assert_contiguous();
    assert!(run.chunks.iter().all(|c| c.2.len() <= 32 * 1024));
    let out = run.text(StreamKind::Stdout);
    assert_eq!(out.len(), 2 << 20);
    assert!(out.bytes().all(|b| b == b'x'));
    agent.abort(Some(&mut conn)).await;
}

#[tokio::test]
async fn unacknowledged_output_pauses_the_job_instead_of_dropping_bytes() {
    let (_hub, agent, mut conn) = setup_with(|c| c.output_window_bytes = 128 * 1024).await;
    let a = assignment(
        "window-1",
        "head -c 1048576 /dev/zero | tr '\\0' y; echo end >&2",
    );
    let job = job_ref(&a);
    conn.assign(a).await;
    // Without acknowledgements at most the window (plus pipe buffers) leaves the agent.
    let mut got = 0usize;
    let mut chunks = Vec::new();
    let stalled = tokio::time::timeout(Duration::from_secs(1), async {
        loop {
            if let AgentMsg::Output(c) = conn.recv().await {
                got += c.data.len();
                chunks.push(c);
            }
        }
    })
    .await;
    assert!(stalled.is_err());
    assert!(got <= 128 * 1024, "sent {got} bytes beyond the window");
    assert!(got > 0);
    // Acknowledge what arrived; the rest follows.
    let last = chunks.last().unwrap().seq;
    conn.ack_output(&job, last + 1).await;
    let rest = conn.run_to_end(&job, true).await;
    assert_eq!(rest.chunks[0].0, last + 1);
    let total: usize = got
        + rest
            .chunks
            .iter()
            .filter(|c| c.1 == StreamKind::Stdout)
            .map(|c| c.2.len())
            .sum::<usize>();
    assert_eq!(total, 1 << 20);
    assert_eq!(rest.text(StreamKind::Stderr), "end\n");
    agent.abort(Some(&mut conn)).await;
}

#[tokio::test]
async fn cancel_ends_the_job_within_the_grace() {
    let (_hub, agent, mut conn) = setup().await;
    // The job ignores TERM, so only the KILL after the grace ends it.
    let a = assignment(
        "cancel-1",
        "trap '' TERM; echo ready; while true; do sleep 0.05; done",
    );
    let job = job_ref(&a);
    conn.assign(a).await;
    loop {
        if let AgentMsg::Output(_) = conn.recv().await {
            break;
        }
    }
    let t0 = Instant::now();
    conn.send(HubMsg::Cancel(Cancel {
        job_id: job.job_id.clone(),
        attempt: job.attempt,
        grace_secs: 1,
    }))
    .await;
    let run = conn.run_to_end(&job, true).await;
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "KILL came before the grace: {took:?}"
    );
    assert!(took < Duration::from_secs(4), "cancel took {took:?}");
    let o = run.outcome();
    assert!(o.cancelled);
    assert_eq!(o.status(), JobStatus::Cancelled);
    agent.abort(Some(&mut conn)).await;
}

#[tokio::test]
async fn timeout_fails_the_job_on_time() {
    let (_hub, agent, mut conn) = setup().await;
    let mut a = assignment("timeout-1", "sleep 1000");
    a.timeout_secs = 1;
    let job = job_ref(&a);
    let t0 = Instant::now();
    conn.assign(a).await;
    let run = conn.run_to_end(&job, true).await;
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    let o = run.outcome();
    assert!(o.timed_out);
    assert_eq!(o.failure, Some(FailureKind::Timeout));
    assert_eq!(o.status(), JobStatus::Failed);
    agent.abort(Some(&mut conn)).await;
}

#[tokio::test]
async fn environment_is_an_allow_list_plus_the_assignment() {
    let (_hub, agent, mut conn) = setup().await;
    let mut a = assignment(
        "env-1",
        "env | sort; pwd; id -u; cd \"$HOME\" && touch \"$TMPDIR/t\" && echo ok",
    );
    a.env.insert("GREETING".into(), "hello world".into());
    let job = job_ref(&a);
    conn.assign(a).await;
    let run = conn.run_to_end(&job, true).await;
    let out = run.text(StreamKind::Stdout);
    assert!(out.contains("GREETING=hello world\n"), "{out}");
    assert!(out.contains("LANG=C.UTF-8\n"), "{out}");
    assert!(out.contains("PATH=/usr/local/bin:/usr/bin:/bin\n"), "{out}");
    assert!(
        !out.contains(TOKEN),
        "the worker token leaked into the job: {out}"
    );
    assert!(
        !out.contains("CARGO"),
        "the agent's own env leaked into the job: {out}"
    );
    let home = out.lines().find_map(|l| l.strip_prefix("HOME=")).unwrap();
    let tmp = out.lines().find_map(|l| l.strip_prefix("TMPDIR=")).unwrap();
    if cmdx_sandbox::probe().private_root {
        // The job's private root: its workspace at /workspace, its tmp at /tmp.
        assert_eq!((home, tmp), ("/workspace", "/tmp"), "{out}");
    } else {
        assert!(home.ends_with("/jobs/env-1-1/job"), "{home}");
        assert!(tmp.ends_with("/jobs/env-1-1/tmp"), "{tmp}");
    }
    assert!(
        out.contains(&format!("\n{home}\n")),
        "cwd is the job dir: {out}"
    );
    assert_eq!(
        out.lines().last(),
        Some("ok"),
        "HOME and TMPDIR are usable: {out}"
    );
    let uid: u32 = out.lines().rev().nth(1).unwrap().parse().unwrap();
    assert_ne!(uid, 0, "jobs must not run as root");
    agent.abort(Some(&mut conn)).await;
}

#[tokio::test]
async fn a_zip_is_downloaded_with_credentials_and_extracted() {
    let (hub, agent, mut conn) = setup().await;
    let zip = zipkit::build(&[
        Entry::file("hello.txt", b"hi from the zip\n"),
        Entry::file("bin/run.sh", b"#!/bin/sh\necho ran $1\n").mode(0o100_777),
        Entry::file("data/big.txt", &vec![b'z'; 100_000]).deflated(),
        Entry::file("secret-mode.txt", b"x").mode(0o104_777),
    ]);
    let sha = hub.put_file("/api/files/download/f1", zip.clone());
    let mut a = assignment(
        "zip-ok",
        "cat hello.txt; ./bin/run.sh arg; wc -c < data/big.txt; stat -c '%a %U' bin/run.sh secret-mode.txt hello.txt",
    );
    a.file_url = Some("/api/files/download/f1".into());
    a.file_sha256 = Some(sha);
    a.file_size = Some(zip.len() as u64);
    let job = job_ref(&a);
    conn.assign(a).await;
    let run = conn.run_to_end(&job, true).await;
    let out = run.text(StreamKind::Stdout);
    let o = run.outcome();
    assert_eq!(
        o.status(),
        JobStatus::Completed,
        "{o:?} {out} {}",
        run.text(StreamKind::Stderr)
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "hi from the zip");
    assert_eq!(lines[1], "ran arg");
    assert_eq!(lines[2], "100000");
    // Modes masked to 0755/0644 (no setuid, no world-write); owned by the job's user.
    assert!(lines[3].starts_with("755 "), "{out}");
    assert!(lines[4].starts_with("755 "), "{out}");
    assert!(lines[5].starts_with("644 "), "{out}");
    assert!(!lines[3].ends_with("root"), "{out}");
    let downloads = hub.downloads();
    assert_eq!(downloads.len(), 1);
    let (path, headers) = &downloads[0];
    assert_eq!(path, "/api/files/download/f1");
    assert_eq!(
        headers.get("authorization").unwrap(),
        &format!("Bearer {TOKEN}")
    );
    assert_eq!(headers.get("x-worker-token").unwrap(), TOKEN);
    assert!(headers.contains_key("x-worker-id"));
    // Downloads are spooled outside the job and removed.
    assert!(dir_entries(&agent.work_dir.join("downloads")).is_empty());
    agent.abort(Some(&mut conn)).await;
}

#[tokio::test]
async fn a_job_without_a_file_runs_in_an_empty_directory() {
    let (_hub, agent, mut conn) = setup().await;
    let a = assignment("empty-1", "ls -A | wc -l");
    let job = job_ref(&a);
    conn.assign(a).await;
    let run = conn.run_to_end(&job, true).await;
    assert_eq!(run.text(StreamKind::Stdout).trim(), "0");
    agent.abort(Some(&mut conn)).await;
}

#[tokio::test]
async fn an_output_flood_is_capped_keeping_the_tail_and_the_job_ends_on_its_own() {
    let (_hub, agent, mut conn) = setup_with(|c| {
        c.max_output_bytes = 256 * 1024;
        c.output_tail_bytes = 1000;
    })
    .await;
    let a = assignment(
        "flood-1",
        "yes | head -c 20000000; echo; echo last line; exit 7",
    );
    let job = job_ref(&a);
    conn.assign(a).await;
    let run = conn.run_to_end(&job, true).await;
    run.assert_contiguous();
    let o = run.outcome();
    assert!(o.output_truncated);
    assert_eq!(o.exit_code, Some(7), "the job ran to its own end: {o:?}");
    let stdout = run.text(StreamKind::Stdout);
    assert!(stdout.len() <= 256 * 1024, "{}", stdout.len());
    assert!(stdout.ends_with("y\n\nlast line\n"), "tail kept");
    assert!(run.text(StreamKind::Stderr).contains("bytes omitted"));
    agent.abort(Some(&mut conn)).await;
}

#[tokio::test]
async fn symlinks_planted_by_a_job_are_never_followed_at_cleanup() {
    let (_hub, agent, mut conn) = setup().await;
    let victim = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        victim.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::write(victim.path().join("keep.txt"), "precious").unwrap();
    let cmd = format!(
        "ln -s {v} victim-dir; ln -s {v}/keep.txt victim-file; ln -s / root; mkdir d; ln -s {v} d/x",
        v = victim.path().display()
    );
    let a = assignment("symlink-1", &cmd);
    let job = job_ref(&a);
    conn.assign(a).await;
    let run = conn.run_to_end(&job, true).await;
    assert_eq!(
        run.outcome().exit_code,
        Some(0),
        "{}",
        run.text(StreamKind::Stderr)
    );
    wait_for("workspace removal", || {
        dir_entries(&agent.jobs_dir()).is_empty()
    })
    .await;
    assert_eq!(
        std::fs::read_to_string(victim.path().join("keep.txt")).unwrap(),
        "precious"
    );
    assert!(std::path::Path::new("/etc/passwd").exists());
    agent.abort(Some(&mut conn)).await;
}

#[tokio::test]
async fn first_output_bytes_reach_the_hub_within_100_ms() {
    let (_hub, agent, mut conn) = setup().await;
    // The job prints the wall clock (ns) at the moment it writes; the hub compares on receipt.
    let a = assignment("latency-1", "sleep 0.3; date +%s%N; sleep 0.3; date +%s%N");
    let job = job_ref(&a);
    conn.assign(a).await;
    let mut latencies = Vec::new();
    loop {
        match conn.recv().await {
            AgentMsg::Output(c) => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos();
                conn.ack_output(&job, c.seq + 1).await;
                for line in String::from_utf8(c.data.0).unwrap().lines() {
                    let written: u128 = line.trim().parse().unwrap();
                    latencies.push(Duration::from_nanos((now - written) as u64));
                }
            }
            AgentMsg::Finished(f) => {
                conn.send(HubMsg::FinishedAck(job.clone())).await;
                assert_eq!(f.outcome.exit_code, Some(0));
                break;
            }
            AgentMsg::Started(_) => {}
            m => panic!("{m:?}"),
        }
    }
    assert_eq!(latencies.len(), 2);
    for l in latencies {
        assert!(
            l < Duration::from_millis(100),
            "output took {l:?} to arrive"
        );
    }
    agent.abort(Some(&mut conn)).await;
}

#[tokio::test]
async fn a_memory_bomb_fails_with_oom_and_the_agent_carries_on() {
    let (_hub, agent, mut conn) = setup_with(|c| c.limits.memory_bytes = 64 << 20).await;
    // A command substitution holds the whole output in the shell's memory.
    let a = assignment(
        "oom-1",
        "x=$(head -c 400000000 /dev/zero | tr '\\0' a); echo ${#x}",
    );
    let job = job_ref(&a);
    conn.assign(a).await;
    let run = conn.run_to_end(&job, true).await;
    let o = run.outcome();
    assert!(o.oom_killed, "{o:?}");
    assert_eq!(o.failure_kind(), Some(FailureKind::Oom), "{o:?}");
    assert!(o.peak_memory_bytes.is_some_and(|p| p >= 32 << 20), "{o:?}");
    // The next job runs normally.
    let a = assignment("oom-2", "echo still fine");
    let job = job_ref(&a);
    conn.assign(a).await;
    let run = conn.run_to_end(&job, true).await;
    assert_eq!(run.text(StreamKind::Stdout), "still fine\n");
    agent.abort(Some(&mut conn)).await;
}
