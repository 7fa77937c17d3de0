//! Resource limits: pids, memory, wall time, CPU share, disk.

use std::time::{Duration, Instant};

use crate::{Fixture, PY, finish, require_root, run, wait_for};

#[tokio::test]
async fn fork_bomb_is_stopped_by_pids_limit() {
    if !require_root("fork_bomb_is_stopped_by_pids_limit") {
        return;
    }
    let f = Fixture::new(1 << 20);
    let mut spec = f.spec("b() { b | b & }; b; i=0; while [ $i -lt 40 ]; do i=$((i+1)); sleep 0.05; done; echo survived");
    spec.limits.pids = 64;
    let mut child = cmdx_sandbox::spawn(&spec).expect("spawn");
    let cg = child.cgroup_path().expect("cgroup").to_path_buf();
    let current = || {
        std::fs::read_to_string(cg.join("pids.current"))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
    };
    wait_for("fork bomb to reach the pids limit", || {
        current().is_some_and(|n| n >= 60)
    })
    .await;
    let mut max_seen = 0;
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(300) {
        max_seen = max_seen.max(current().unwrap_or(0));
        // The host can still fork while the bomb runs.
        assert!(
            std::process::Command::new("/bin/true")
                .status()
                .expect("host spawn")
                .success()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(max_seen <= 64, "pids.current {max_seen} above limit");
    child.kill();
    let o = finish(child).await;
    assert!(o.report.terminated, "{o:?}");
    assert!(o.report.pids_limit_hit, "pids.events not reported: {o:?}");
    assert!(
        crate::procs_of_uid(f.uid).is_empty(),
        "bomb processes survived"
    );
    assert!(!cg.exists(), "cgroup not removed");
}

#[tokio::test]
async fn memory_bomb_is_oom_killed() {
    if !require_root("memory_bomb_is_oom_killed") {
        return;
    }
    let f = Fixture::new(1 << 20);
    let mut spec = f.spec(&format!(
        "exec {PY} -c 'a = bytearray(512 << 20); print(\"ALLOCATED\")'"
    ));
    spec.limits.memory_bytes = 64 << 20;
    let o = run(&spec).await;
    assert!(o.report.oom_killed, "{o:?}");
    assert_eq!(o.report.signal, Some(libc::SIGKILL), "{o:?}");
    assert!(!o.stdout.contains("ALLOCATED"));
    let peak = o.report.peak_memory_bytes.expect("peak");
    assert!(peak <= 64 << 20 && peak > 32 << 20, "peak {peak}");
}

#[tokio::test]
async fn sleep_is_killed_at_wall_timeout() {
    if !require_root("sleep_is_killed_at_wall_timeout") {
        return;
    }
    let f = Fixture::new(1 << 20);
    let mut spec = f.spec("sleep 1000");
    spec.limits.wall_timeout = Duration::from_secs(1);
    let start = Instant::now();
    let o = run(&spec).await;
    let took = start.elapsed();
    assert!(o.report.timed_out, "{o:?}");
    assert_eq!(o.report.signal, Some(libc::SIGKILL));
    assert!(
        o.report.wall >= Duration::from_secs(1) && o.report.wall < Duration::from_millis(1500),
        "{o:?}"
    );
    assert!(took < Duration::from_secs(3), "wait took {took:?}");
    assert!(crate::procs_of_uid(f.uid).is_empty());
}

#[tokio::test]
async fn cpu_spin_is_limited_to_its_share() {
    if !require_root("cpu_spin_is_limited_to_its_share") {
        return;
    }
    let f = Fixture::new(1 << 20);
    // Two spinning processes, 1.5 s of wall time, half a core for the whole job.
    let spin = format!("{PY} -c 'import time\nt=time.time()+1.5\nwhile time.time()<t: pass'");
    let mut spec = f.spec(&format!("{spin} & {spin}; wait"));
    spec.limits.cpu_millis = 500;
    let o = run(&spec).await;
    assert_eq!(o.report.exit_code, Some(0), "{o:?}");
    let cpu = o.report.cpu.expect("cpu").as_secs_f64();
    let ratio = cpu / o.report.wall.as_secs_f64();
    eprintln!(
        "cpu {cpu:.3}s wall {:.3}s ratio {ratio:.2}",
        o.report.wall.as_secs_f64()
    );
    assert!(
        ratio <= 0.6,
        "job used {ratio:.2} cores with a 0.5 core limit"
    );
    assert!(ratio >= 0.2, "job got only {ratio:.2} cores");
}

fn is_tmpfs(p: &std::path::Path) -> bool {
    nix::sys::statfs::statfs(p)
        .expect("statfs")
        .filesystem_type()
        == nix::sys::statfs::TMPFS_MAGIC
}

#[tokio::test]
async fn disk_fill_one_huge_file_is_capped() {
    if !require_root("disk_fill_one_huge_file_is_capped") {
        return;
    }
    let f = Fixture::new(16 << 20);
    assert!(is_tmpfs(&f.ws().dir), "job dir is not on the capped tmpfs");
    let o = run(&f.spec("dd if=/dev/zero of=big bs=1M count=100; echo rc=$?; dd if=/dev/zero of=$TMPDIR/big2 bs=1M count=100; echo rc=$?")).await;
    assert!(o.stderr.contains("No space left on device"), "{o:?}");
    assert!(o.stdout.contains("rc=1"), "{o:?}");
    let size = std::fs::metadata(f.ws().dir.join("big"))
        .expect("big")
        .len();
    let size2 = std::fs::metadata(f.ws().tmp.join("big2"))
        .expect("big2")
        .len();
    assert!(
        size + size2 <= 16 << 20,
        "wrote {size} + {size2} bytes into a 16 MiB workspace"
    );
    // Nothing landed on the host disk: the data lives in the workspace tmpfs only.
    let st = nix::sys::statvfs::statvfs(&f.ws().dir).expect("statvfs");
    assert!(
        st.blocks_available() * st.fragment_size() < 1 << 20,
        "tmpfs not full"
    );
}

#[tokio::test]
async fn disk_fill_many_small_files_is_capped() {
    if !require_root("disk_fill_many_small_files_is_capped") {
        return;
    }
    let f = Fixture::new(4 << 20);
    let o = run(&f.spec("i=0; while [ $i -lt 100000 ]; do printf '' > f$i 2>/dev/null || break; i=$((i+1)); done; echo $i")).await;
    let n: u64 = o.stdout.trim().parse().unwrap_or_else(|_| panic!("{o:?}"));
    assert!(n < 2000, "created {n} empty files in a 4 MiB workspace");
    let o2 = run(&f.spec("printf x > one-more && echo CREATED")).await;
    assert!(!o2.stdout.contains("CREATED"), "{o2:?}");
}

#[tokio::test]
async fn workspace_pages_are_charged_to_the_job_memory_cgroup() {
    if !require_root("workspace_pages_are_charged_to_the_job_memory_cgroup") {
        return;
    }
    let f = Fixture::new(512 << 20);
    let mut spec = f.spec("dd if=/dev/zero of=big bs=1M count=256 2>&1; echo rc=$?");
    spec.limits.memory_bytes = 48 << 20;
    let o = run(&spec).await;
    let size = std::fs::metadata(f.ws().dir.join("big"))
        .map(|m| m.len())
        .unwrap_or(0);
    eprintln!("{o:?} size={size}");
    assert!(
        size <= 48 << 20,
        "wrote {size} bytes of tmpfs under a 48 MiB memory limit"
    );
    assert!(
        o.report.oom_killed || o.report.exit_code != Some(0) || !o.stdout.contains("rc=0"),
        "{o:?}"
    );
    let peak = o.report.peak_memory_bytes.expect("peak");
    assert!(peak > 40 << 20, "tmpfs pages not charged: peak {peak}");
}
