//! Filesystem policy: landlock + uid drop + workspace.

use std::os::unix::fs::MetadataExt;

use crate::{Fixture, in_job, require_root, run};

#[tokio::test]
async fn read_etc_shadow_denied_but_passwd_readable() {
    if !require_root("read_etc_shadow_denied_but_passwd_readable") {
        return;
    }
    let f = Fixture::new(1 << 20);
    let o = run(
        &f.spec("head -c1 /etc/passwd >/dev/null && echo passwd-ok; cat /etc/shadow && echo LEAK")
    )
    .await;
    assert!(o.stdout.contains("passwd-ok"), "{o:?}");
    assert!(
        !o.stdout.contains("LEAK") && !o.stdout.contains("root:"),
        "{o:?}"
    );
    assert!(o.stderr.contains("Permission denied"), "{o:?}");
}

#[tokio::test]
async fn job_dir_and_tmp_writable() {
    if !require_root("job_dir_and_tmp_writable") {
        return;
    }
    let f = Fixture::new(1 << 20);
    let o = run(&f.spec("echo a > a.txt && mkdir d && echo b > \"$TMPDIR/b\" && cat a.txt \"$TMPDIR/b\" && echo x > /dev/null")).await;
    assert_eq!(o.report.exit_code, Some(0), "{o:?}");
    assert_eq!(o.stdout, "a\nb\n");
    assert_eq!(std::fs::read_to_string(in_job(&f, "a.txt")).unwrap(), "a\n");
}

#[tokio::test]
async fn write_outside_job_dir_denied() {
    if !require_root("write_outside_job_dir_denied") {
        return;
    }
    let f = Fixture::new(1 << 20);
    let marker = format!("cmdx-sandbox-test-{}", f.uid);
    let outside = f.parent.path().join("outside");
    let cmd = format!(
        "for p in /tmp/{marker} /usr/{marker} /var/tmp/{marker} /{marker} {outside} /dev/shm/{marker}; do \
           if echo x > \"$p\" 2>/dev/null; then echo \"WROTE $p\"; else echo \"denied $p\"; fi; done; \
         mkdir /tmp/{marker}-d 2>/dev/null && echo MKDIR; \
         ln -s /etc/passwd /tmp/{marker}-l 2>/dev/null && echo LINK; true",
        outside = outside.display()
    );
    let o = run(&f.spec(&cmd)).await;
    assert!(
        !o.stdout.contains("WROTE") && !o.stdout.contains("MKDIR") && !o.stdout.contains("LINK"),
        "{o:?}"
    );
    assert_eq!(o.stdout.matches("denied").count(), 6, "{o:?}");
    for p in [
        format!("/tmp/{marker}"),
        format!("/usr/{marker}"),
        format!("/tmp/{marker}-d"),
    ] {
        assert!(std::fs::symlink_metadata(&p).is_err(), "{p} exists");
    }
    assert!(!outside.exists());
}

#[tokio::test]
async fn chmod_chown_of_host_file_denied() {
    if !require_root("chmod_chown_of_host_file_denied") {
        return;
    }
    let f = Fixture::new(1 << 20);
    // A host file the job could otherwise see (world-readable, outside the workspace).
    let host = f.parent.path().join("host-file");
    std::fs::write(&host, "host").unwrap();
    let before = std::fs::metadata(&host).unwrap();
    let cmd = format!(
        "chmod 777 {h} && echo CHMOD; chown {u} {h} && echo CHOWN; chmod 777 /etc/hostname && echo CHMOD2; \
         chown {u} /etc/hostname && echo CHOWN2; true",
        h = host.display(),
        u = f.uid
    );
    let o = run(&f.spec(&cmd)).await;
    assert!(
        !o.stdout.contains("CHMOD") && !o.stdout.contains("CHOWN"),
        "{o:?}"
    );
    let after = std::fs::metadata(&host).unwrap();
    assert_eq!((before.mode(), before.uid()), (after.mode(), after.uid()));
}

#[tokio::test]
async fn workspace_removal_does_not_follow_planted_symlinks() {
    if !require_root("workspace_removal_does_not_follow_planted_symlinks") {
        return;
    }
    let mut f = Fixture::new(1 << 20);
    let victim_dir = f.parent.path().join("victim");
    std::fs::create_dir(&victim_dir).unwrap();
    std::fs::write(victim_dir.join("keep"), "keep").unwrap();
    let cmd = format!(
        "ln -s {v} link && ln -s {v}/keep filelink && ln -s / root && echo ok",
        v = victim_dir.display()
    );
    let o = run(&f.spec(&cmd)).await;
    assert_eq!(o.stdout, "ok\n", "{o:?}");
    let ws = f.ws.take().unwrap();
    assert!(ws.is_size_capped());
    let root = ws.root().to_path_buf();
    ws.remove().expect("remove");
    assert!(!root.exists());
    assert_eq!(
        std::fs::read_to_string(victim_dir.join("keep")).unwrap(),
        "keep"
    );
}

#[tokio::test]
async fn setuid_binary_gives_no_privilege() {
    if !require_root("setuid_binary_gives_no_privilege") {
        return;
    }
    let f = Fixture::new(1 << 20);
    // su is setuid root: with no_new_privs it runs without privilege and cannot switch user.
    let o = run(&f.spec("ls -l /usr/bin/su; echo | su -c 'id -u' root; echo rc=$?; cat /proc/self/status | grep -E '^(NoNewPrivs|Uid|CapEff)'")).await;
    assert!(o.stdout.contains("-rws"), "test needs a setuid su: {o:?}");
    assert!(
        !o.stdout.lines().any(|l| l.trim() == "0"),
        "got root: {o:?}"
    );
    assert!(o.stdout.contains("NoNewPrivs:\t1"), "{o:?}");
    assert!(o.stdout.contains("CapEff:\t0000000000000000"), "{o:?}");
    assert!(
        o.stdout
            .contains(&format!("Uid:\t{u}\t{u}\t{u}\t{u}", u = f.uid)),
        "{o:?}"
    );
}

#[tokio::test]
async fn leftover_workspace_is_unmounted_and_removed_without_following_symlinks() {
    if !require_root("leftover_workspace_is_unmounted_and_removed_without_following_symlinks") {
        return;
    }
    let mut f = Fixture::new(1 << 20);
    let victim = f.parent.path().join("victim");
    std::fs::create_dir(&victim).unwrap();
    std::fs::write(victim.join("keep"), "keep").unwrap();
    let o = run(&f.spec(&format!(
        "ln -s {v} link && mkdir -p a/b && ln -s {v} a/b/l && echo ok",
        v = victim.display()
    )))
    .await;
    assert_eq!(o.stdout, "ok\n", "{o:?}");
    // Simulate a crash: forget the handle, keep the mount.
    let ws = f.ws.take().unwrap();
    let root = ws.root().to_path_buf();
    std::mem::forget(ws);
    cmdx_sandbox::Workspace::remove_leftover(&root).expect("remove leftover");
    assert!(!root.exists());
    assert_eq!(
        std::fs::read_to_string(victim.join("keep")).unwrap(),
        "keep"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&root.display().to_string()),
        "still mounted"
    );
    // A symlink at the root itself is removed, not followed.
    let link = f.parent.path().join("ws-link");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    cmdx_sandbox::Workspace::remove_leftover(&link).expect("remove link");
    assert!(victim.join("keep").exists() && std::fs::symlink_metadata(&link).is_err());
    cmdx_sandbox::Workspace::remove_leftover(&link).expect("missing is fine");
}

#[tokio::test]
async fn proc_can_be_left_out_of_the_policy() {
    if !require_root("proc_can_be_left_out_of_the_policy") {
        return;
    }
    let f = Fixture::new(1 << 20);
    let mut spec = f.spec("echo ok; cat /proc/1/cmdline >/dev/null 2>&1 && echo PROC; ls / >/dev/null 2>&1 && echo ROOTLIST; true");
    spec.read_only_paths
        .retain(|p| p != std::path::Path::new("/proc"));
    let o = run(&spec).await;
    assert_eq!(o.stdout, "ok\n", "{o:?}");
}
