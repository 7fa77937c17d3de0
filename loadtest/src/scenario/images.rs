//! `images`: jobs in OCI images against a private registry (Debian's `docker-registry` on
//! loopback, images built offline by `umoci` from `busybox-static`), with one real hub and one
//! real `cmdx agent` (root). Measured in the same run, sequentially (one job at a time, so the
//! figures are latencies, not throughput):
//! - created -> completed (the hub's own timestamps) of `true` on the host's root and of `true`
//!   in a cached image, alternating, `--jobs` of each (default 30): medians and their ratio;
//! - `podman run --rm` of the same image from the same registry (the image already in podman's
//!   store), `/bin/sh -c true`, wall time per run, against the cmdx cached-image median;
//! - first use of a 30 MB image (a random, incompressible layer): the job's `pullMs` (download,
//!   digest checks, unpack).
//!
//! podman runs with `--runtime runc` and explicit `--ulimit`s when crun cannot run here (crun
//! refuses hybrid cgroup hosts; the default rlimits exceed this host's hard limits); a podman
//! that cannot run at all is reported as such in the notes.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use cmdx_e2e::registry::{Registry, big_layout, busybox_layout, tool};
use cmdx_e2e::{AgentProc, HubProc, traversable_tempdir};
use serde_json::{Value, json};

use super::note;
use crate::Cli;
use crate::stats::Report;

/// Milliseconds since midnight UTC of an RFC 3339 `…THH:MM:SS.mmmZ` timestamp.
fn day_ms(ts: &str) -> anyhow::Result<f64> {
    let t = ts
        .split('T')
        .nth(1)
        .and_then(|t| t.strip_suffix('Z'))
        .with_context(|| format!("timestamp {ts}"))?;
    let mut parts = t.split(':');
    let (h, m, s) = (
        parts.next().unwrap_or("0").parse::<f64>()?,
        parts.next().unwrap_or("0").parse::<f64>()?,
        parts.next().unwrap_or("0").parse::<f64>()?,
    );
    Ok(((h * 60.0 + m) * 60.0 + s) * 1000.0)
}

/// created -> completed of a finished job, in ms.
fn latency(v: &Value) -> anyhow::Result<f64> {
    let c = day_ms(v["createdAt"].as_str().context("createdAt")?)?;
    let d = day_ms(v["completedAt"].as_str().context("completedAt")?)?;
    Ok(if d >= c { d - c } else { d + 86_400_000.0 - c })
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

async fn run_job(hub: &HubProc, token: &str, body: Value) -> anyhow::Result<Value> {
    let id = hub.submit(token, body).await;
    let v = hub.wait_done(token, &id).await;
    if v["status"] != "completed" {
        bail!("job {id} did not complete: {v}");
    }
    Ok(v)
}

/// Runs the image benchmark.
pub async fn run(cli: &Cli) -> anyhow::Result<Report> {
    let n = cli.jobs.unwrap_or(30).max(3);
    let tmp = traversable_tempdir();
    let layout = busybox_layout(tmp.path());
    let big = big_layout(&tmp.path().join("big"), 30 << 20);
    let reg = Registry::start().await;
    reg.push_layout(&layout, "busybox", "bench/busybox:1");
    reg.push_layout(&big, "big", "bench/big:1");
    let hub = HubProc::start(&[
        "--rate-limit-per-min",
        "0",
        "--read-rate-limit-per-sec",
        "0",
    ])
    .await;
    let admin = hub.admin().await;
    let wt = hub.worker_token(&admin).await;
    let _agent =
        AgentProc::start(&hub, &wt, "bench-images", &tmp.path().join("agent"), 62_500).await;
    let image = format!("{}/bench/busybox:1", reg.addr);
    let host_job = json!({"command": "true", "tty": false});
    let image_job = json!({"command": "true", "tty": false, "image": image});
    // Warm both paths (the image is pulled here, and each root's template built).
    run_job(&hub, &admin, host_job.clone()).await?;
    run_job(&hub, &admin, image_job.clone()).await?;

    let (mut host, mut cached) = (Vec::new(), Vec::new());
    for _ in 0..n {
        host.push(latency(&run_job(&hub, &admin, host_job.clone()).await?)?);
        let v = run_job(&hub, &admin, image_job.clone()).await?;
        if v["pullMs"] != 0 {
            bail!("the cached image was pulled again: {v}");
        }
        cached.push(latency(&v)?);
    }
    let (host_ms, cached_ms) = (median(&mut host), median(&mut cached));

    let mut r = Report {
        scenario: "images".into(),
        ..Report::default()
    };
    note(&mut r, "jobs_each", n.to_string());
    note(
        &mut r,
        "host_root_created_to_completed_median_ms",
        format!("{host_ms:.1}"),
    );
    note(
        &mut r,
        "cached_image_created_to_completed_median_ms",
        format!("{cached_ms:.1}"),
    );
    note(
        &mut r,
        "cached_image_vs_host_root",
        format!("{:.2}x", cached_ms / host_ms),
    );

    let started = Instant::now();
    let v = run_job(
        &hub,
        &admin,
        json!({"command": "test -s /opt/blob", "tty": false,
               "image": format!("{}/bench/big:1", reg.addr)}),
    )
    .await?;
    note(
        &mut r,
        "first_pull_30mb_ms",
        format!(
            "{} (job created->completed {:.0} ms, wall {:.0} ms)",
            v["pullMs"],
            latency(&v)?,
            started.elapsed().as_secs_f64() * 1000.0
        ),
    );

    match podman(&image, n).await {
        Ok(mut walls) => {
            let p = median(&mut walls);
            note(&mut r, "podman_run_rm_median_ms", format!("{p:.1}"));
            note(
                &mut r,
                "podman_vs_cmdx_cached_image",
                format!("{:.1}x", p / cached_ms),
            );
        }
        Err(e) => note(&mut r, "podman", format!("could not run: {e:#}")),
    }
    Ok(r)
}

/// `podman run --rm IMAGE /bin/sh -c true` `n` times after one pull; wall ms of each run.
async fn podman(image: &str, n: usize) -> anyhow::Result<Vec<f64>> {
    let podman = tool("podman");
    // crun refuses this host's hybrid cgroups; podman's default rlimits exceed its hard limits.
    let args = |extra: &[&str]| {
        let mut a: Vec<String> = ["--runtime", "runc", "run", "--rm", "--tls-verify=false"]
            .map(String::from)
            .to_vec();
        a.extend(
            [
                "--ulimit",
                "nofile=1024:1024",
                "--ulimit",
                "nproc=1024:1024",
            ]
            .map(String::from),
        );
        a.extend(extra.iter().map(|s| s.to_string()));
        a.push(image.to_owned());
        a.extend(["/bin/sh", "-c", "true"].map(String::from));
        a
    };
    let first = tokio::process::Command::new(&podman)
        .args(args(&["--pull", "always"]))
        .output()
        .await?;
    if !first.status.success() {
        bail!("{}", String::from_utf8_lossy(&first.stderr).trim());
    }
    let mut walls = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        let out = tokio::process::Command::new(&podman)
            .args(args(&["--pull", "never"]))
            .output()
            .await?;
        if !out.status.success() {
            bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
        }
        walls.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let _ = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(&podman)
            .args(["rmi", "-f", image])
            .output(),
    )
    .await;
    Ok(walls)
}
