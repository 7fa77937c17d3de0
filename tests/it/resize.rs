//! A running job's terminal follows its viewer: `POST /api/jobs/resize` as the owner, an
//! admin and a stranger, with bad sizes and on jobs that are queued, ended or on pipes; a real
//! agent sets the size on the job's terminal and the job itself sees it (`SIGWINCH`, `stty
//! size`); on two hubs the resize reaches the agent through the hub holding it; `cmdx job
//! resize`, and a foreground `cmdx submit` in a real pseudo-terminal forwarding the resizes of
//! its terminal.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cmdx_e2e::{AgentProc, FakeAgent, HubProc, cmdx_bin, pg, traversable_tempdir, wait_for};
use cmdx_proto::agent::{AgentMsg, HubMsg, OutputChunk};
use cmdx_proto::{Bytes64, StreamKind};
use reqwest::Method;
use serde_json::{Value, json};

use crate::FAST;

/// A job that prints its terminal's size at the start and at each `SIGWINCH`, and ends after
/// `winches` of them (or after about 20 s).
fn winch_job(winches: u32) -> String {
    format!(
        "n=0; trap 'stty size </dev/tty; n=$((n+1))' WINCH; stty size </dev/tty; i=0; \
         while [ $n -lt {winches} ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done; \
         [ $n -ge {winches} ]"
    )
}

async fn resize(hub: &HubProc, token: &str, body: Value) -> (u16, Value) {
    hub.send_json(token, Method::POST, "/api/jobs/resize", body)
        .await
}

/// Asserts that resizing job `id` is refused with 409 `code`, its message saying `says`.
async fn refused(hub: &HubProc, token: &str, id: &str, code: &str, says: &str) {
    let (s, v) = resize(hub, token, json!({"jobId": id, "cols": 100, "rows": 30})).await;
    assert_eq!((s, v["code"].as_str()), (409, Some(code)), "{v}");
    assert!(v["error"].as_str().unwrap().contains(says), "{v}");
}

/// Waits until the job's stored output is `want`.
async fn wait_output(hub: &HubProc, token: &str, id: &str, want: &str) {
    wait_for(&format!("job output {want:?}"), || async {
        (hub.job(token, id).await["stdout"] == want).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_or_an_admin_resizes_a_running_job_and_the_job_sees_it() {
    let hub = HubProc::start(FAST).await;
    let admin = hub.admin().await;
    let wt = hub.worker_token(&admin).await;
    let alice = hub.user(&admin, "alice@test.local").await;
    let bob = hub.user(&admin, "bob@test.local").await;
    let dir = traversable_tempdir();
    let _agent = AgentProc::start(&hub, &wt, "resize-agent", &dir.path().join("a"), 68_000).await;

    // Not running yet: queued (no worker serves the tag).
    let queued = hub
        .submit(&alice, json!({"command": "true", "tags": ["nowhere"]}))
        .await;
    refused(&hub, &alice, &queued, "not_running", "not running").await;
    hub.post_json(&alice, "/api/jobs/cancel", json!({"jobId": queued}))
        .await;

    let id = hub
        .submit(
            &alice,
            json!({"command": winch_job(2), "ttySize": {"cols": 80, "rows": 24}}),
        )
        .await;
    assert_eq!(
        hub.job(&alice, &id).await["ttySize"],
        json!({"cols": 80, "rows": 24})
    );
    wait_output(&hub, &alice, &id, "24 80\n").await;

    // Another user: the same 404 as an unknown id, and nothing changes.
    let (s, v) = resize(&hub, &bob, json!({"jobId": id, "cols": 100, "rows": 30})).await;
    assert_eq!(s, 404, "{v}");
    let (s, v) = resize(
        &hub,
        &alice,
        json!({"jobId": "no-such-job", "cols": 100, "rows": 30}),
    )
    .await;
    assert_eq!(s, 404, "{v}");

    // Sizes out of range and bodies that are not a resize: 400, with what is wrong.
    for bad in [
        json!({"jobId": id, "cols": 0, "rows": 30}),
        json!({"jobId": id, "cols": 100, "rows": 1001}),
        json!({"jobId": id, "cols": 70000, "rows": 30}),
    ] {
        let (s, v) = resize(&hub, &alice, bad.clone()).await;
        assert_eq!(s, 400, "{bad}: {v}");
        assert!(
            v["error"].as_str().unwrap().contains("between 1 and 1000"),
            "{bad}: {v}"
        );
    }
    for bad in [
        json!({"jobId": id, "cols": -1, "rows": 30}),
        json!({"jobId": id, "cols": 100}),
        json!({"cols": 100, "rows": 30}),
    ] {
        let (s, v) = resize(&hub, &alice, bad.clone()).await;
        assert_eq!(s, 400, "{bad}: {v}");
    }
    let r = hub
        .http
        .post(format!("{}/api/jobs/resize", hub.url))
        .bearer_auth(&alice)
        .header("content-type", "application/json")
        .body("{\"jobId\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert!(v["error"].as_str().unwrap().contains("invalid json"), "{v}");
    assert_eq!(
        hub.job(&alice, &id).await["stdout"],
        "24 80\n",
        "no resize reached it"
    );

    // An admin may; the job's own terminal reports the new size.
    let (s, v) = resize(&hub, &admin, json!({"jobId": id, "cols": 90, "rows": 25})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v,
        json!({"success": true, "jobId": id, "ttySize": {"cols": 90, "rows": 25}})
    );
    wait_output(&hub, &alice, &id, "24 80\n25 90\n").await;

    // The owner; the job view shows the size the terminal has now.
    let (s, v) = resize(&hub, &alice, json!({"jobId": id, "cols": 100, "rows": 30})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["ttySize"], json!({"cols": 100, "rows": 30}));
    let done = hub.wait_status(&alice, &id, "completed").await;
    assert_eq!(done["stdout"], "24 80\n25 90\n30 100\n", "{done}");
    assert_eq!(done["ttySize"], json!({"cols": 100, "rows": 30}), "{done}");

    // Ended: 409, saying so.
    refused(&hub, &alice, &id, "not_running", "it is completed").await;

    // A job on pipes has no terminal: 409, saying so; its view says null.
    let pipes = hub
        .submit(
            &alice,
            json!({"command": "echo up; sleep 30", "tty": false}),
        )
        .await;
    wait_output(&hub, &alice, &pipes, "up\n").await;
    let v = hub.job(&alice, &pipes).await;
    assert_eq!(v["ttySize"], Value::Null, "{v}");
    refused(&hub, &alice, &pipes, "no_terminal", "no terminal").await;
    hub.post_json(&alice, "/api/jobs/cancel", json!({"jobId": pipes}))
        .await;
    hub.wait_status(&alice, &pipes, "cancelled").await;
}

/// Two hubs on one database, the agent on B: a resize asked of A reaches the job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resize_on_another_hub_reaches_the_agent() {
    let url = pg::fresh_database("resize_two_hubs").expect("private PostgreSQL");
    let mut flags = FAST.to_vec();
    flags.extend(["--store", url.as_str()]);
    let (a, b) = tokio::join!(HubProc::start(&flags), HubProc::start(&flags));
    let admin = a.admin().await;
    let alice = a.user(&admin, "alice@test.local").await;
    let wt = a.worker_token(&admin).await;
    let work = traversable_tempdir();
    let mut agent = AgentProc::start(&b, &wt, "resize-on-b", &work.path().join("b"), 68_100).await;
    let id = a
        .submit(
            &alice,
            json!({"command": winch_job(1), "ttySize": {"cols": 80, "rows": 24}}),
        )
        .await;
    wait_output(&a, &alice, &id, "24 80\n").await;
    assert_eq!(a.job(&alice, &id).await["workerId"], "resize-on-b");
    let (s, v) = resize(&a, &alice, json!({"jobId": id, "cols": 100, "rows": 30})).await;
    assert_eq!(s, 200, "{v}");
    let done = a.wait_status(&alice, &id, "completed").await;
    assert_eq!(done["stdout"], "24 80\n30 100\n", "{done}");
    assert_eq!(
        b.job(&alice, &id).await["ttySize"],
        json!({"cols": 100, "rows": 30})
    );
    agent.kill9().await;
}

/// A hub with a user and a scripted worker holding a running job with a terminal of `size`.
async fn running_job(size: Value) -> (HubProc, String, FakeAgent, String) {
    let hub = HubProc::start(FAST).await;
    let admin = hub.admin().await;
    let wt = hub.worker_token(&admin).await;
    let user = hub.user(&admin, "carol@test.local").await;
    let (mut agent, _) = FakeAgent::connect(&hub, &wt, "resize-worker", 1, vec![])
        .await
        .unwrap();
    let id = hub
        .submit(&user, json!({"command": "vim", "ttySize": size}))
        .await;
    assert_eq!(agent.start_next().await.unwrap().job_id, id);
    (hub, user, agent, id)
}

/// The next `resize` the scripted worker gets, as `(attempt, cols, rows)`.
async fn next_resize(agent: &mut FakeAgent, id: &str) -> (u32, u16, u16) {
    agent
        .recv_until(|m| match m {
            HubMsg::Resize(r) if r.job_id == id => Some((r.attempt, r.cols, r.rows)),
            _ => None,
        })
        .await
        .expect("a resize")
}

fn cmdx(hub: &HubProc, token: &str, args: &[&str]) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(cmdx_bin());
    c.args(args)
        .env("CMDX_HUB", &hub.url)
        .env("CMDX_TOKEN", token)
        .env("CMDX_CONFIG", "/nonexistent/cmdx-config.json")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cmdx_job_resize_sends_the_size_to_the_agent() {
    let (hub, user, mut agent, id) = running_job(json!({"cols": 80, "rows": 24})).await;
    let out = cmdx(&hub, &user, &["job", "resize", &id, "100x30"])
        .output()
        .await
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(stdout, format!("job {id}: terminal is now 100x30\n"));
    assert_eq!(next_resize(&mut agent, &id).await, (1, 100, 30));
    assert_eq!(
        hub.job(&user, &id).await["ttySize"],
        json!({"cols": 100, "rows": 30})
    );
    // `cmdx job show` says the size the job's terminal has now.
    let out = cmdx(&hub, &user, &["job", "show", &id])
        .output()
        .await
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown
            .lines()
            .any(|l| l.starts_with("terminal") && l.ends_with(" 100x30")),
        "{shown}"
    );

    // A size that is not one: a usage error before anything is sent.
    for bad in ["100", "0x30", "100x1001"] {
        let out = cmdx(&hub, &user, &["job", "resize", &id, bad])
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad}: {stderr}");
        assert!(
            stderr.contains("COLSxROWS") || stderr.contains("between 1 and 1000"),
            "{stderr}"
        );
    }

    // Once the job ended: the hub's refusal, one line, exit 125.
    agent.finish(&id, 1, 0, 0).await.unwrap();
    hub.wait_status(&user, &id, "completed").await;
    let out = cmdx(&hub, &user, &["job", "resize", &id, "120x40"])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    assert!(stderr.contains("not running"), "{stderr}");
}

/// A pseudo-terminal of `cols` x `rows` for a process under test: (master, slave).
fn openpty(cols: u16, rows: u16) -> (OwnedFd, OwnedFd) {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: openpty fills two descriptors; the name buffer is null, the sizes are ours.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &ws,
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: two new descriptors that nobody else owns.
    unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) }
}

/// Resizes the terminal whose master is `master`, as a terminal emulator does when its window
/// changes: the kernel sends `SIGWINCH` to the terminal's foreground process group.
fn set_size(master: &OwnedFd, cols: u16, rows: u16) {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: an ioctl on our descriptor with a pointer to a value on the stack.
    let rc = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    assert_eq!(rc, 0, "TIOCSWINSZ: {}", std::io::Error::last_os_error());
}

/// `cmdx submit` in the foreground in a real terminal: the job's terminal starts at the
/// user's size, and when the user's terminal is resized (`SIGWINCH`) the new size reaches the
/// worker: a resize while the job waits in the queue once it starts, and the burst of a dragged
/// window once, its last size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreground_submit_forwards_its_terminal_resizes() {
    let hub = HubProc::start(FAST).await;
    let admin = hub.admin().await;
    let wt = hub.worker_token(&admin).await;
    let user = hub.user(&admin, "dave@test.local").await;

    let (master, slave) = openpty(91, 27);
    let mut c = cmdx(&hub, &user, &["submit", "--", "vim"]);
    c.stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::from(slave.try_clone().unwrap()));
    // SAFETY: only async-signal-safe calls between fork and exec: a new session whose
    // controlling terminal is the pty (stdin), so cmdx is its foreground process group.
    unsafe {
        c.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = c.spawn().expect("spawn cmdx");
    // Only cmdx holds the terminal's slave now: the reader sees its end when cmdx exits.
    drop(c);
    drop(slave);
    // What cmdx writes to its terminal.
    let screen = Arc::new(Mutex::new(Vec::<u8>::new()));
    let reader = {
        let (screen, master) = (screen.clone(), master.try_clone().unwrap());
        std::thread::spawn(move || {
            use std::io::Read;
            let mut f = std::fs::File::from(master);
            let mut buf = [0u8; 4096];
            // Ends with EIO once cmdx (the last holder of the slave) exits.
            while let Ok(n) = f.read(&mut buf) {
                if n == 0 {
                    break;
                }
                screen.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        })
    };

    // No worker yet: the job waits in the queue, and cmdx says so (it follows the job, and its
    // terminal's resizes, from now on).
    wait_for("the queued line on the user's terminal", || async {
        String::from_utf8_lossy(&screen.lock().unwrap())
            .contains("queued")
            .then_some(())
    })
    .await;
    let (_, list) = hub.get(&user, "/api/jobs/list").await;
    let id = list["jobs"][0]["jobId"].as_str().unwrap().to_string();
    set_size(&master, 100, 30);
    // The hub refuses a size for a queued job: the job keeps the size it was submitted with.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let v = hub.job(&user, &id).await;
    assert_eq!(v["status"], "queued");
    assert_eq!(v["ttySize"], json!({"cols": 91, "rows": 27}), "{v}");

    let (mut agent, _) = FakeAgent::connect(&hub, &wt, "winch-worker", 1, vec![])
        .await
        .unwrap();
    let a = agent.start_next().await.unwrap();
    assert_eq!(a.job_id, id);
    assert_eq!(
        a.tty,
        Some(cmdx_proto::WindowSize { cols: 91, rows: 27 }),
        "the job's terminal starts at the user's size at submission"
    );
    // Once the job left the queue, cmdx sends the size the terminal has had since.
    assert_eq!(next_resize(&mut agent, &id).await, (a.attempt, 100, 30));
    agent
        .send(&AgentMsg::Output(OutputChunk {
            job_id: id.clone(),
            attempt: a.attempt,
            seq: 0,
            stream: StreamKind::Stdout,
            data: Bytes64(b"ready\n".to_vec()),
        }))
        .await
        .unwrap();
    // Once its output shows, cmdx follows the job (and its terminal's resizes).
    wait_for("the job's output on the user's terminal", || async {
        String::from_utf8_lossy(&screen.lock().unwrap())
            .contains("ready")
            .then_some(())
    })
    .await;

    // A window dragged by its corner: many sizes in a row (well within the 100 ms cmdx waits
    // for the window to settle; the debounce's timing is unit-tested on a paused clock).
    for cols in 105..=110 {
        set_size(&master, cols, 35);
    }
    assert_eq!(next_resize(&mut agent, &id).await, (a.attempt, 110, 35));
    assert_eq!(
        hub.job(&user, &id).await["ttySize"],
        json!({"cols": 110, "rows": 35})
    );
    // Once, the last size: nothing else comes before the next resize.
    set_size(&master, 120, 40);
    assert_eq!(next_resize(&mut agent, &id).await, (a.attempt, 120, 40));

    agent.finish(&id, a.attempt, 1, 0).await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("cmdx ends with the job")
        .unwrap();
    assert_eq!(status.code(), Some(0));
    drop(master);
    reader.join().unwrap();
}

/// A legacy polling worker runs every job on pipes: a job it holds has no terminal to resize,
/// whatever it was submitted with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_a_legacy_worker_holds_has_no_terminal() {
    let hub = HubProc::start(FAST).await;
    let admin = hub.admin().await;
    let wt = hub.worker_token(&admin).await;
    let user = hub.user(&admin, "erin@test.local").await;
    let (s, v) = hub
        .send_json(
            &wt,
            Method::POST,
            "/api/workers/register",
            json!({"workerId": "old-1", "hostname": "h", "os": "linux", "cpuCount": 2, "ramTotalMb": 1024}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let id = hub.submit(&user, json!({"command": "sleep 5"})).await;
    assert_eq!(
        hub.job(&user, &id).await["ttySize"],
        json!({"cols": 80, "rows": 24})
    );
    let (s, v) = hub.get(&wt, "/api/jobs/get-job?workerId=old-1").await;
    assert_eq!((s, v["jobId"].as_str()), (200, Some(id.as_str())), "{v}");
    refused(&hub, &user, &id, "no_terminal", "legacy worker").await;
}
