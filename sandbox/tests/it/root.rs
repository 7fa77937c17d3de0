//! The private root: PID and mount namespaces, the tiny init, what the job can see.

use std::time::Duration;

use crate::{Fixture, finish, require_root, run};

#[tokio::test]
async fn a_job_sees_its_own_processes_and_root_only() {
    if !require_root("a_job_sees_its_own_processes_and_root_only") {
        return;
    }
    let marker = std::env::temp_dir().join(format!("cmdx-host-marker-{}", std::process::id()));
    std::fs::write(&marker, "host").expect("marker");
    let f = Fixture::new(64 << 20);
    let cmd = format!(
        "echo pid=$$; tr '\\0' ' ' </proc/1/cmdline; echo; ls /proc | grep -E '^[0-9]+$' | tr '\\n' ' '; echo; \
         echo pwd=$(pwd) home=$HOME tmp=$TMPDIR; ls /; ls -A /dev | tr '\\n' ' '; echo; \
         test -e {} && echo host-tmp-visible; test -e /root && echo root-visible; \
         test -e /home && echo home-visible; echo x >/workspace/w && echo x >/tmp/t && echo x >/dev/shm/s && echo writes-ok; \
         (echo x >/usr/x) 2>/dev/null || echo usr-read-only; (echo x >/newfile) 2>/dev/null || echo root-read-only",
        marker.display()
    );
    let o = run(&f.root_spec(&cmd)).await;
    let _ = std::fs::remove_file(&marker);
    assert_eq!(o.report.exit_code, Some(0), "{o:?}");
    let lines: Vec<&str> = o.stdout.lines().collect();
    // The shell is the init's child: pid 2 of its namespace; pid 1 is the init.
    assert_eq!(lines[0], "pid=2", "{o:?}");
    assert_eq!(
        lines[1].trim(),
        "cmdx-init /bin/sh -c ".to_owned() + &cmd,
        "{o:?}"
    );
    let pids: Vec<u32> = lines[2]
        .split_whitespace()
        .map(|p| p.parse().expect("pid"))
        .collect();
    assert!(
        pids.len() <= 8 && pids.contains(&1) && pids.contains(&2),
        "{o:?}"
    );
    assert!(pids.iter().all(|&p| p < 10), "host pids visible: {o:?}");
    assert_eq!(lines[3], "pwd=/workspace home=/workspace tmp=/tmp", "{o:?}");
    let rest = lines[4..].join("\n");
    for absent in ["host-tmp-visible", "root-visible", "home-visible"] {
        assert!(!rest.contains(absent), "{absent}: {o:?}");
    }
    for present in ["writes-ok", "usr-read-only", "root-read-only", "workspace"] {
        assert!(rest.contains(present), "{present}: {o:?}");
    }
    let dev_line = lines
        .iter()
        .find(|l| l.contains("urandom"))
        .expect("a /dev listing");
    let mut dev: Vec<&str> = dev_line.split_whitespace().collect();
    dev.sort_unstable();
    assert_eq!(
        dev,
        [
            "fd", "full", "null", "ptmx", "pts", "random", "shm", "stderr", "stdin", "stdout",
            "tty", "urandom", "zero"
        ],
        "{o:?}"
    );
    assert!(o.report.layers.iter().any(|l| l == "pidns"), "{o:?}");
    assert!(o.report.layers.iter().any(|l| l == "private-root"), "{o:?}");
}

#[tokio::test]
async fn the_job_cannot_mount_unshare_or_setns() {
    if !require_root("the_job_cannot_mount_unshare_or_setns") {
        return;
    }
    let f = Fixture::new(16 << 20);
    let o = run(&f.root_spec(
        "mount -t tmpfs x /tmp 2>/dev/null && echo mounted; \
         unshare -m true 2>/dev/null && echo unshared-m; \
         unshare -p -f true 2>/dev/null && echo unshared-p; \
         nsenter -t 1 -m true 2>/dev/null && echo entered; \
         umount /proc 2>/dev/null && echo unmounted; echo done",
    ))
    .await;
    assert_eq!(o.stdout, "done\n", "{o:?}");
}

#[tokio::test]
async fn exit_codes_and_signals_come_through_the_init() {
    if !require_root("exit_codes_and_signals_come_through_the_init") {
        return;
    }
    let f = Fixture::new(1 << 20);
    let o = run(&f.root_spec("exit 7")).await;
    assert_eq!((o.report.exit_code, o.report.signal), (Some(7), None));
    let o = run(&f.root_spec("kill -SEGV $$")).await;
    assert_eq!(
        (o.report.exit_code, o.report.signal),
        (None, Some(libc::SIGSEGV)),
        "{o:?}"
    );
    // A program that cannot be executed is a spawn error, as without the init.
    let mut spec = f.root_spec("true");
    spec.program = "/nonexistent/program".into();
    match cmdx_sandbox::spawn(&spec) {
        Err(cmdx_sandbox::Error::Spawn { step, source, .. }) => {
            assert_eq!(step, "exec");
            assert_eq!(source.raw_os_error(), Some(libc::ENOENT));
        }
        other => panic!("expected a spawn error, got {other:?}"),
    }
}

#[tokio::test]
async fn orphans_die_with_the_job_and_terminate_reaches_the_program() {
    if !require_root("orphans_die_with_the_job_and_terminate_reaches_the_program") {
        return;
    }
    let f = Fixture::new(16 << 20);
    // A daemon that outlives the shell: it must die when the shell ends.
    let o = run(&f.root_spec("(setsid sleep 300 &) ; echo started")).await;
    assert_eq!(o.stdout, "started\n", "{o:?}");
    assert!(
        crate::procs_of_uid(f.uid).is_empty(),
        "an orphan outlived the job"
    );

    // SIGTERM reaches a program with a handler exactly once, through the init.
    let child = cmdx_sandbox::spawn(&f.root_spec(
        "n=0; trap 'n=$((n+1)); echo term-$n' TERM; echo ready; \
         while [ $n -eq 0 ]; do sleep 0.05; done; sleep 0.3; exit 3",
    ))
    .expect("spawn");
    let mut child = child;
    let mut out = child.stdout.take().expect("stdout");
    let mut first = [0u8; 6];
    tokio::io::AsyncReadExt::read_exact(&mut out, &mut first)
        .await
        .expect("ready");
    assert_eq!(&first, b"ready\n");
    child.terminate(Duration::from_secs(10)).await;
    let mut rest = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut out, &mut rest)
        .await
        .expect("rest");
    let report = child.wait().await.expect("wait");
    assert_eq!(rest, "term-1\n", "{report:?}");
    assert_eq!(report.exit_code, Some(3), "{report:?}");
    assert!(crate::procs_of_uid(f.uid).is_empty());
}

#[tokio::test]
async fn zombies_are_reaped_by_the_init() {
    if !require_root("zombies_are_reaped_by_the_init") {
        return;
    }
    let f = Fixture::new(16 << 20);
    // 40 orphans that exit at once, under a pids limit of 16: only an init that reaps lets
    // the job go on forking.
    let mut spec = f.root_spec(
        "for i in $(seq 40); do (sh -c 'exit 0' &) ; sleep 0.01; done; \
         sleep 0.2; echo $(ls /proc | grep -cE '^[0-9]+$')",
    );
    spec.limits.pids = 16;
    let o = finish(cmdx_sandbox::spawn(&spec).expect("spawn")).await;
    assert_eq!(o.report.exit_code, Some(0), "{o:?}");
    let n: u32 = o.stdout.trim().parse().expect("count");
    assert!(n <= 5, "{n} processes left: zombies not reaped ({o:?})");
}
