//! Sandbox start overhead: median wall time of `true` through the sandbox, against a bare
//! `std::process::Command` spawn and, when `/usr/bin/bwrap` exists,
//! `bwrap --unshare-all --ro-bind / / true`, in the same run.
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

/// Median of `n` spawn + wait round trips of `spec`, and the layers the last one used.
async fn sandboxed(n: usize, spec: &Spec) -> (Duration, Vec<String>) {
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
    (median(times), layers)
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
    let mut spec = Spec::new("/bin/true", Vec::new(), &ws.dir);
    spec.read_write_paths = vec![ws.dir.clone(), ws.tmp.clone()];
    spec.run_as = caps.uid_drop.then_some((uid, uid));
    spec.mode = Mode::BestEffort;

    let (sand_t, layers) = sandboxed(n, &spec).await;
    let mut with_net = spec.clone();
    with_net.network = true;
    let (net_t, _) = sandboxed(n, &with_net).await;
    let bare_t = median(bare(n, "/bin/true", &[]));
    println!("runs: {n}; sandbox layers used: {}", layers.join(" "));
    println!(
        "bare spawn of true:      median {:>9.3} ms",
        bare_t.as_secs_f64() * 1e3
    );
    println!(
        "sandbox spawn+wait true: median {:>9.3} ms  ({:.1}x bare)",
        sand_t.as_secs_f64() * 1e3,
        sand_t.as_secs_f64() / bare_t.as_secs_f64()
    );
    println!(
        "  same, network on (no netns): median {:>6.3} ms  ({:.1}x bare)",
        net_t.as_secs_f64() * 1e3,
        net_t.as_secs_f64() / bare_t.as_secs_f64()
    );
    if Path::new("/usr/bin/bwrap").exists() {
        let bw = median(bare(
            n,
            "/usr/bin/bwrap",
            &["--unshare-all", "--ro-bind", "/", "/", "true"],
        ));
        println!(
            "bwrap --unshare-all true: median {:>8.3} ms  ({:.1}x bare; sandbox/bwrap {:.2})",
            bw.as_secs_f64() * 1e3,
            bw.as_secs_f64() / bare_t.as_secs_f64(),
            sand_t.as_secs_f64() / bw.as_secs_f64()
        );
    } else {
        println!("bwrap: /usr/bin/bwrap not installed (apt-get install bubblewrap)");
    }
    ws.remove().expect("remove workspace");
    let _ = std::fs::remove_dir(&parent);
}
