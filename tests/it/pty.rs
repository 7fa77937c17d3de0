//! Jobs in a pseudo-terminal (the default) and on pipes (`"tty": false`), run by a real
//! `cmdx agent`: what the job sees, one ordered stream, `TIOCSTI` refused, cancel and timeout
//! still ending every process.

use std::time::Duration;

use cmdx_e2e::{AgentProc, HubProc, traversable_tempdir, wait_for};
use serde_json::{Value, json};

use crate::FAST;

/// Job uids of an agent started with `uid_base` (two slots).
fn procs_of_uids(uid_base: u32) -> Vec<String> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let Ok(st) = std::fs::read_to_string(e.path().join("status")) else {
            continue;
        };
        let uid = st
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|l| l.split_whitespace().next()?.parse::<u32>().ok());
        if uid.is_some_and(|u| (uid_base..uid_base + 2).contains(&u)) {
            v.push(st.lines().next().unwrap_or_default().to_owned());
        }
    }
    v
}

fn text<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_gets_a_terminal_by_default_and_pipes_when_it_asks() {
    let hub = HubProc::start(FAST).await;
    let admin = hub.admin().await;
    let wt = hub.worker_token(&admin).await;
    let dir = traversable_tempdir();
    let _agent = AgentProc::start(&hub, &wt, "pty-agent", &dir.path().join("a"), 46_400).await;
    let tty = hub
        .submit(
            &admin,
            json!({
                "command": "[ -t 1 ] && echo tty; echo $TERM $CI $COLUMNS $LINES; \
                            stty size </dev/tty; tput cols; cat; echo err >&2",
                "ttySize": {"cols": 120, "rows": 40},
            }),
        )
        .await;
    let plain = hub
        .submit(
            &admin,
            json!({"command": "[ -t 1 ] && echo tty; echo ${TERM:-none}"}),
        )
        .await;
    let pipes = hub
        .submit(
            &admin,
            json!({"command": "[ -t 1 ] || echo pipe; echo ${TERM:-none} $CI; echo err >&2", "tty": false}),
        )
        .await;
    let v = hub.wait_status(&admin, &tty, "completed").await;
    assert_eq!(
        text(&v, "stdout"),
        "tty\nxterm-256color true 120 40\n40 120\n120\nerr\n",
        "{v:#}"
    );
    assert_eq!(text(&v, "stderr"), "", "one stream: {v:#}");
    let v = hub.wait_status(&admin, &plain, "completed").await;
    assert_eq!(text(&v, "stdout"), "tty\nxterm-256color\n", "{v:#}");
    let v = hub.wait_status(&admin, &pipes, "completed").await;
    assert_eq!(text(&v, "stdout"), "pipe\nnone true\n", "{v:#}");
    assert_eq!(text(&v, "stderr"), "err\n", "{v:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdout_and_stderr_keep_their_order_in_a_terminal() {
    let hub = HubProc::start(FAST).await;
    let admin = hub.admin().await;
    let wt = hub.worker_token(&admin).await;
    let dir = traversable_tempdir();
    let _agent = AgentProc::start(&hub, &wt, "order-agent", &dir.path().join("a"), 46_100).await;
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(
            hub.submit(&admin, json!({"command": "echo a; echo b >&2; echo c"}))
                .await,
        );
    }
    for id in ids {
        let v = hub.wait_status(&admin, &id, "completed").await;
        assert_eq!(text(&v, "stdout"), "a\nb\nc\n", "{v:#}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_cannot_type_into_its_terminal() {
    let hub = HubProc::start(FAST).await;
    let admin = hub.admin().await;
    let wt = hub.worker_token(&admin).await;
    let dir = traversable_tempdir();
    let _agent = AgentProc::start(&hub, &wt, "sti-agent", &dir.path().join("a"), 46_200).await;
    let probe = "import fcntl, termios, errno, os\n\
                 for fd in (1, os.open('/dev/tty', os.O_RDWR)):\n\
                 \x20   try:\n\
                 \x20       fcntl.ioctl(fd, termios.TIOCSTI, b'x'); print('INJECTED')\n\
                 \x20   except OSError as e: print(errno.errorcode[e.errno])\n";
    let id = hub
        .submit(
            &admin,
            json!({"command": format!("python3 -c \"{probe}\"")}),
        )
        .await;
    let v = hub.wait_status(&admin, &id, "completed").await;
    assert_eq!(text(&v, "stdout"), "EPERM\nEPERM\n", "{v:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_and_timeout_end_every_process_of_a_terminal_job() {
    let hub = HubProc::start(FAST).await;
    let admin = hub.admin().await;
    let wt = hub.worker_token(&admin).await;
    let dir = traversable_tempdir();
    let base = 46_300;
    let _agent = AgentProc::start(&hub, &wt, "stop-agent", &dir.path().join("a"), base).await;
    // A child in a session of its own and one deaf to SIGHUP and SIGTERM.
    let command = "setsid sleep 1000 & (trap '' HUP TERM; sleep 1000) & echo started; wait";
    let id = hub.submit(&admin, json!({"command": command})).await;
    wait_for("job output", || async {
        let v = hub.job(&admin, &id).await;
        (v["stdout"] == "started\n").then_some(())
    })
    .await;
    hub.post_json(&admin, "/api/jobs/cancel", json!({"jobId": id}))
        .await;
    hub.wait_status(&admin, &id, "cancelled").await;
    wait_for("no process of the cancelled job", || async {
        procs_of_uids(base).is_empty().then_some(())
    })
    .await;

    let id = hub
        .submit(&admin, json!({"command": command, "timeout": 2}))
        .await;
    let v = hub.wait_status(&admin, &id, "failed").await;
    assert_eq!(text(&v, "failure"), "timeout", "{v:#}");
    assert_eq!(text(&v, "stdout"), "started\n", "{v:#}");
    let left = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if procs_of_uids(base).is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(left.is_ok(), "left: {:?}", procs_of_uids(base));
}
