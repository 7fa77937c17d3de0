//! Sandbox start overhead: median wall time of `true` through the sandbox (with the private
//! root, as the agent runs jobs, and without), against a bare `std::process::Command` spawn
//! and, when `/usr/bin/bwrap` exists, bubblewrap with the same isolation as the private
//! root (every namespace, read-only system binds, its own `/proc`, `/dev` and `/tmp`), in
//! the same run, interleaved in rounds so a busy machine slows all of them alike.
//!
//! Run as root: `cargo run --release -p cmdx-sandbox --example spawn_overhead -- [N]`
//! (N defaults to 200).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cmdx_sandbox::{Mode, Spec, Workspace};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v[v.len() / 2]
}

fn bare(n: usize, program: &str, args: &[&str]) -> Vec<Duration> {
    (0..n)
        .map(|_| {
            let t = Instant::now();
            let st = Command::new(program)
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("spawn");
            assert!(st.success(), "{program} failed");
            t.elapsed()
        })
        .collect()
}

/// bubblewrap with the isolation of the private root: every namespace, the system
/// directories read-only, its own `/proc`, `/dev`, `/tmp`, the workspace at `/workspace`,
/// the job's uid, dying with its parent.
fn bwrap_args(workspace: &Path, uid: u32) -> Vec<String> {
    let mut a: Vec<String> = ["--unshare-all", "--die-with-parent", "--new-session"]
        .map(String::from)
        .to_vec();
    for d in ["/usr", "/etc"] {
        a.extend(["--ro-bind".into(), d.into(), d.into()]);
    }
    for d in ["/bin", "/sbin", "/lib", "/lib64"] {
        let p = Path::new(d);
        match std::fs::read_link(p) {
            Ok(to) => a.extend(["--symlink".into(), to.display().to_string(), d.into()]),
            Err(_) if p.exists() => a.extend(["--ro-bind".into(), d.into(), d.into()]),
            Err(_) => {}
        }
    }
    a.extend(
        [
            "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--bind",
        ]
        .map(String::from),
    );
    a.extend([workspace.display().to_string(), "/workspace".into()]);
    a.extend(["--chdir", "/workspace", "--uid"].map(String::from));
    a.extend([
        uid.to_string(),
        "--gid".into(),
        uid.to_string(),
        "true".into(),
    ]);
    a
}

/// Median of `n` spawn + wait round trips of `spec`, and the layers the last one used.
async fn sandboxed(n: usize, spec: &Spec) -> (Duration, Vec<String>) {
    let (times, layers) = sandboxed_all(n, spec).await;
    (median(times), layers)
}

/// Every one of `n` spawn + wait round trips of `spec`, and the layers the last one used.
async fn sandboxed_all(n: usize, spec: &Spec) -> (Vec<Duration>, Vec<String>) {
    let mut times = Vec::with_capacity(n);
    let mut layers = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        let mut child = cmdx_sandbox::spawn(spec).expect("sandbox spawn");
        let report = child.wait().await.expect("wait");
        times.push(t.elapsed());
        assert_eq!(report.exit_code, Some(0));
        layers = report.layers;
    }
    (times, layers)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let caps = cmdx_sandbox::probe();
    println!("layers available: {}", caps.active_layers().join(" "));
    if !caps.missing().is_empty() {
        println!("layers missing:   {}", caps.missing().join(" "));
    }
    let parent = std::env::temp_dir().join(format!("cmdx-spawn-overhead-{}", std::process::id()));
    std::fs::create_dir_all(&parent).expect("parent dir");
    let uid = 299_000;
    let ws = Workspace::create(&parent, "ws", 64 << 20, Some((uid, uid))).expect("workspace");
    let mut host = Spec::new("/bin/true", Vec::new(), &ws.dir);
    host.read_write_paths = vec![ws.dir.clone(), ws.tmp.clone()];
    host.run_as = caps.uid_drop.then_some((uid, uid));
    host.mode = if caps.missing().is_empty() {
        Mode::Strict
    } else {
        Mode::BestEffort
    };
    let mut private = host.clone();
    private.root = caps.private_root.then(|| ws.private_root());
    private.cwd = "/workspace".into();
    let bwrap = Path::new("/usr/bin/bwrap").exists();
    let bwrap_args = bwrap_args(&ws.dir, uid);

    // Warm up (the private root's template and the netns pool are built on first use).
    sandboxed(5, &private).await;
    let rounds = 10;
    let per = n.div_ceil(rounds);
    let (mut p_all, mut h_all, mut b_all, mut w_all) = (vec![], vec![], vec![], vec![]);
    let mut layers = Vec::new();
    for _ in 0..rounds {
        let (p, l) = sandboxed_all(per, &private).await;
        layers = l;
        p_all.extend(p);
        h_all.extend(sandboxed_all(per, &host).await.0);
        b_all.extend(bare(per, "/bin/true", &[]));
        if bwrap {
            let args: Vec<&str> = bwrap_args.iter().map(String::as_str).collect();
            w_all.extend(bare(per, "/usr/bin/bwrap", &args));
        }
    }
    let (p_t, h_t, bare_t) = (median(p_all), median(h_all), median(b_all));
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "runs: {} of each, in {rounds} interleaved rounds",
        per * rounds
    );
    println!("private-root layers: {}", layers.join(" "));
    println!(
        "bare spawn of true:                 median {:>7.3} ms",
        ms(bare_t)
    );
    println!(
        "sandbox, private root (agent's way): median {:>7.3} ms  ({:.1}x bare)",
        ms(p_t),
        p_t.as_secs_f64() / bare_t.as_secs_f64()
    );
    println!(
        "sandbox, host tree:                 median {:>7.3} ms  ({:.1}x bare)",
        ms(h_t),
        h_t.as_secs_f64() / bare_t.as_secs_f64()
    );
    if bwrap {
        let w_t = median(w_all);
        println!(
            "bwrap, same isolation:              median {:>7.3} ms  ({:.1}x bare)",
            ms(w_t),
            w_t.as_secs_f64() / bare_t.as_secs_f64()
        );
        println!(
            "private root / bwrap: {:.2}   (bwrap {})",
            p_t.as_secs_f64() / w_t.as_secs_f64(),
            bwrap_args.join(" ")
        );
    } else {
        println!("bwrap: /usr/bin/bwrap not installed (apt-get install bubblewrap)");
    }
    ws.remove().expect("remove workspace");
    let _ = std::fs::remove_dir(&parent);
}
