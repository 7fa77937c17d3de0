//! Jobs in OCI images, against a real Distribution registry (Debian's `docker-registry`) on
//! loopback, with images built offline by `umoci` from `busybox-static` and pushed by
//! `skopeo`, and a hostile layer written by hand and pushed through the registry's HTTP API.

use std::path::Path;

use cmdx_e2e::registry::{Registry, busybox_layout};
use cmdx_e2e::{AgentProc, HubProc, traversable_tempdir};
use serde_json::{Value, json};

use crate::FAST;

async fn run_job(hub: &HubProc, token: &str, body: Value) -> Value {
    let id = hub.submit(token, body).await;
    hub.wait_done(token, &id).await
}

fn out(v: &Value) -> String {
    format!(
        "{}{}",
        v["stdout"].as_str().unwrap_or(""),
        v["stderr"].as_str().unwrap_or("")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_runs_in_its_image_pulled_once() {
    let tmp = traversable_tempdir();
    let layout = busybox_layout(tmp.path());
    let reg = Registry::start().await;
    reg.push_layout(&layout, "busybox", "cmdx/busybox:1");
    reg.push_layout(&layout, "layered", "cmdx/layered:1");
    let hub = HubProc::start(FAST).await;
    let admin = hub.admin().await;
    let wt = hub.worker_token(&admin).await;
    let _agent = AgentProc::start(&hub, &wt, "img-agent", &tmp.path().join("a"), 62_000).await;
    let image = format!("{}/cmdx/busybox:1", reg.addr);

    let v = run_job(
        &hub,
        &admin,
        json!({"command": "cat /etc/os-release; id -u; echo var=$IMAGE_VAR; pwd; \
                           ls /usr/lib 2>&1 | wc -l; test -e /usr/bin/apt && echo HOST-USR; true",
               "image": image, "tty": false}),
    )
    .await;
    assert_eq!(v["status"], "completed", "{v}");
    let stdout = v["stdout"].as_str().unwrap();
    assert!(stdout.contains("ID=cmdxtest"), "{stdout}");
    let host_release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let host_id = host_release
        .lines()
        .find(|l| l.starts_with("ID="))
        .unwrap_or("ID=none");
    assert!(!stdout.contains(host_id), "the host's os-release: {stdout}");
    assert!(!stdout.contains("HOST-USR"), "the host's /usr: {stdout}");
    let uid: u32 = stdout
        .lines()
        .find_map(|l| l.trim().parse().ok())
        .expect("a uid line");
    assert!(uid >= 62_000, "unprivileged uid, got {uid}");
    assert!(stdout.contains("var=from-image"), "image Env: {stdout}");
    assert!(stdout.contains("/workspace"), "{stdout}");
    assert!(v["pullMs"].as_u64().is_some(), "{v}");
    assert!(
        v["imageDigest"]
            .as_str()
            .unwrap_or("")
            .starts_with("sha256:"),
        "{v}"
    );
    assert!(
        v["stderr"]
            .as_str()
            .unwrap()
            .contains("[cmdx] pulling image"),
        "pull progress in the job's output: {v}"
    );
    let fetched = reg.blob_gets("cmdx/busybox");
    assert!(fetched >= 2, "config and layer fetched: {fetched}");

    // Cached: the registry sees no request at all, and the job shows no pull.
    let v = run_job(
        &hub,
        &admin,
        json!({"command": "cat /etc/os-release", "image": image, "tty": false}),
    )
    .await;
    assert_eq!(v["status"], "completed", "{v}");
    assert_eq!(v["pullMs"], 0, "{v}");
    assert!(!out(&v).contains("[cmdx] pulling"), "{v}");
    assert_eq!(
        reg.blob_gets("cmdx/busybox"),
        fetched,
        "cached image fetched again"
    );

    // Whiteouts, an opaque directory and a hard link from a second layer; two jobs wanting
    // the image at once share one pull (each blob fetched once).
    let layered = json!({"command": "test -e /etc/gone && echo GONE-VISIBLE; ls /opt/data; \
                                     stat -c %i /opt/data/new /opt/data/linked",
                         "image": format!("{}/cmdx/layered:1", reg.addr), "tty": false});
    let (a, b) = tokio::join!(
        hub.submit(&admin, layered.clone()),
        hub.submit(&admin, layered.clone())
    );
    let (va, vb) = tokio::join!(hub.wait_done(&admin, &a), hub.wait_done(&admin, &b));
    for v in [&va, &vb] {
        assert_eq!(v["status"], "completed", "{v}");
        let s = v["stdout"].as_str().unwrap();
        assert!(!s.contains("GONE-VISIBLE") && !s.contains("old"), "{s}");
        let inodes: Vec<&str> = s.lines().rev().take(2).collect();
        assert_eq!(inodes[0], inodes[1], "hard link kept: {s}");
    }
    // Two jobs, one pull: the config and the two layers, once each.
    assert_eq!(reg.blob_gets("cmdx/layered"), 3, "one shared pull");
    assert!(
        va["stderr"].as_str().unwrap().contains("[cmdx] pulling")
            && vb["stderr"].as_str().unwrap().contains("[cmdx] pulling"),
        "both waiting jobs show the pull: {va} {vb}"
    );

    // The image's WorkingDir is the job's cwd; its files are still at /workspace.
    reg.push_layout(&layout, "workdir", "cmdx/workdir:1");
    let zip = cmdx_e2e::zip_bytes(&[("mine.txt", b"from the zip")]);
    let file_id = hub.upload_zip(&admin, zip).await;
    let v = run_job(
        &hub,
        &admin,
        json!({"command": "pwd; cat /workspace/mine.txt", "fileId": file_id,
               "image": format!("{}/cmdx/workdir:1", reg.addr), "tty": false}),
    )
    .await;
    assert_eq!(v["stdout"], "/opt/data\nfrom the zip", "{v}");

    // A job may write only its workspace and /tmp; the image is read-only.
    let v = run_job(
        &hub,
        &admin,
        json!({"command": "echo x > /etc/os-release", "image": image, "tty": false}),
    )
    .await;
    assert_eq!(v["status"], "failed", "{v}");

    // Missing image, unknown registry: failure kind image, one clear line; the agent serves on.
    let v = run_job(
        &hub,
        &admin,
        json!({"command": "true", "image": format!("{}/cmdx/nope:1", reg.addr)}),
    )
    .await;
    assert_eq!(
        (v["status"].as_str(), v["failure"].as_str()),
        (Some("failed"), Some("image")),
        "{v}"
    );
    assert!(v["error"].as_str().unwrap().contains("not found"), "{v}");
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_port = dead.local_addr().unwrap().port();
    drop(dead);
    let v = run_job(
        &hub,
        &admin,
        json!({"command": "true", "image": format!("127.0.0.1:{dead_port}/x:1")}),
    )
    .await;
    assert_eq!(v["failure"], "image", "{v}");
    assert!(v["error"].as_str().unwrap().contains("unreachable"), "{v}");
    let v = run_job(&hub, &admin, json!({"command": "echo still-serving"})).await;
    assert_eq!(v["status"], "completed", "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_layers_are_neutralised() {
    let tmp = traversable_tempdir();
    let layout = busybox_layout(tmp.path());
    let reg = Registry::start().await;
    reg.push_layout(&layout, "busybox", "cmdx/base:1");
    // Reuse the busybox layer (gzip) as the base of a hand-written hostile image.
    let base = base_layer(&layout);
    let marker = tmp.path().join("escaped-marker");
    let escape = format!("../../../../../../../..{}", marker.display());
    let hostile = tar_of(&[
        (escape.as_str(), b'0', 0o644, &b"pwned"[..], ""),
        ("bin/suid", b'0', 0o4755, b"#!/bin/sh\necho hi\n", ""),
        ("bin/sgid", b'0', 0o2755, b"#!/bin/sh\n", ""),
        ("dev/evil", b'3', 0o666, b"", ""),
        ("evil-null", b'3', 0o666, b"", ""),
        ("outside", b'2', 0o777, b"", "/../../../../../.."),
        ("outside/written-through", b'0', 0o644, b"x", ""),
        ("hl", b'1', 0o644, b"", "../../../../etc/shadow"),
    ]);
    reg.push_raw(
        "cmdx/hostile",
        "1",
        &[
            (base, "application/vnd.oci.image.layer.v1.tar+gzip"),
            (hostile, "application/vnd.oci.image.layer.v1.tar"),
        ],
    )
    .await;
    let hub = HubProc::start(FAST).await;
    let admin = hub.admin().await;
    let wt = hub.worker_token(&admin).await;
    let _agent = AgentProc::start(&hub, &wt, "img-hostile", &tmp.path().join("a"), 62_100).await;
    let v = run_job(
        &hub,
        &admin,
        json!({"command": "stat -c '%a %n' /bin/suid /bin/sgid; ls -la /evil-null 2>&1; \
                           readlink /outside; ls /outside/ | wc -l; ls /hl 2>&1; id -u",
               "image": format!("{}/cmdx/hostile:1", reg.addr), "tty": false}),
    )
    .await;
    assert_eq!(v["status"], "completed", "{v}");
    let s = v["stdout"].as_str().unwrap();
    assert!(
        s.contains("755 /bin/suid") && s.contains("755 /bin/sgid"),
        "setuid kept: {s}"
    );
    assert!(!marker.exists(), "a ../ path escaped the cache");
    assert!(
        s.contains("/evil-null") && s.contains("No such file"),
        "device node: {s}"
    );
    assert!(
        s.contains("/../../../../../.."),
        "the symlink stays a symlink: {s}"
    );
    assert!(!Path::new("/written-through").exists());
    assert!(
        v["stderr"].as_str().unwrap().contains("neutralised"),
        "the pull says what it skipped: {v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_evicts_the_least_recently_used_image_and_pulls_it_again() {
    let tmp = traversable_tempdir();
    let layout = busybox_layout(tmp.path());
    let reg = Registry::start().await;
    reg.push_layout(&layout, "busybox", "cmdx/one:1");
    reg.push_layout(&layout, "layered", "cmdx/two:1");
    let hub = HubProc::start(FAST).await;
    let admin = hub.admin().await;
    let wt = hub.worker_token(&admin).await;
    // A 1 MiB budget holds less than one image (busybox unpacks to about 2 MB).
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let _agent = AgentProc::start_with_args(
        &hub,
        &wt,
        "img-evict",
        &tmp.path().join("a"),
        62_600,
        &["--image-cache-mb", "1", "--metrics-listen", &metrics_addr],
    )
    .await;
    let job = |repo: &str| json!({"command": "grep ^ID= /etc/os-release", "image": format!("{}/{repo}", reg.addr), "tty": false});
    for (repo, pulls) in [("cmdx/one:1", 1), ("cmdx/two:1", 1), ("cmdx/one:1", 2)] {
        let v = run_job(&hub, &admin, job(repo)).await;
        assert_eq!(v["status"], "completed", "{v}");
        assert_eq!(v["stdout"], "ID=cmdxtest\n", "{v}");
        let name = repo.split(':').next().unwrap();
        // Config and layer per pull (`two` has two layers).
        let per_pull = if name == "cmdx/two" { 3 } else { 2 };
        assert_eq!(reg.blob_gets(name), per_pull * pulls, "{repo}");
    }
    let roots = tmp.path().join("a/images/roots");
    assert_eq!(
        std::fs::read_dir(roots).unwrap().count(),
        1,
        "one image kept"
    );
    // The agent's metrics say so.
    let text = cmdx_e2e::http_client()
        .build()
        .unwrap()
        .get(format!("http://{metrics_addr}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
    };
    assert_eq!(value("cmdx_agent_images_cached "), Some(1.0), "{text}");
    assert!(
        value("cmdx_agent_image_cache_bytes ").unwrap_or(0.0) > 1e6,
        "{text}"
    );
    assert!(
        text.contains("cmdx_agent_image_pulls_total{result=\"pulled\"} 3"),
        "{text}"
    );
}

/// `tester` / `s3cret` (bcrypt, cost 4).
const HTPASSWD: &str = "tester:$2b$04$dpnC2Gzx1bO216AX.G.QjOTIaMQYP..cAbfuxgx3qayiVbVJGrbQ6\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_credentials_come_from_the_agents_config() {
    let tmp = traversable_tempdir();
    let layout = busybox_layout(tmp.path());
    let reg = Registry::start_with_htpasswd(Some(HTPASSWD)).await;
    reg.push_layout_as(&layout, "busybox", "cmdx/private:1", Some("tester:s3cret"));
    let hub = HubProc::start(FAST).await;
    let admin = hub.admin().await;
    let wt = hub.worker_token(&admin).await;
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode("tester:s3cret");
    let creds = tmp.path().join("auth.json");
    std::fs::write(
        &creds,
        format!(r#"{{"auths": {{"{}": {{"auth": "{auth}"}}}}}}"#, reg.addr),
    )
    .unwrap();
    let creds_arg = creds.to_str().unwrap().to_owned();
    let _with = AgentProc::start_with_args(
        &hub,
        &wt,
        "img-creds",
        &tmp.path().join("a"),
        62_200,
        &["--tags", "creds", "--registry-auth-file", &creds_arg],
    )
    .await;
    let _without = AgentProc::start_with_args(
        &hub,
        &wt,
        "img-nocreds",
        &tmp.path().join("b"),
        62_300,
        &["--tags", "nocreds"],
    )
    .await;
    let image = format!("{}/cmdx/private:1", reg.addr);
    let v = run_job(
        &hub,
        &admin,
        json!({"command": "cat /etc/os-release", "image": image, "tags": ["nocreds"], "tty": false}),
    )
    .await;
    assert_eq!(v["failure"], "image", "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("authentication refused"),
        "{v}"
    );
    let v = run_job(
        &hub,
        &admin,
        json!({"command": "cat /etc/os-release", "image": image, "tags": ["creds"], "tty": false}),
    )
    .await;
    assert_eq!(v["status"], "completed", "{v}");
    assert!(v["stdout"].as_str().unwrap().contains("ID=cmdxtest"), "{v}");
    assert!(!out(&v).contains("s3cret"), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submissions_check_the_image() {
    let hub = HubProc::start(
        &[
            FAST,
            &["--allowed-registries", "127.0.0.1:5000,*.example.com"],
        ]
        .concat(),
    )
    .await;
    let admin = hub.admin().await;
    for (image, ok) in [
        ("127.0.0.1:5000/a/b:1", true),
        (
            "r.example.com/team/tool@sha256:0000000000000000000000000000000000000000000000000000000000000000",
            true,
        ),
        ("alpine", false),
        ("Bad Name", false),
        ("127.0.0.1:5001/a:1", false),
    ] {
        let (status, v) = hub
            .post_status(
                &admin,
                "/api/jobs/submit",
                json!({"command": "true", "image": image}),
            )
            .await;
        assert_eq!(status == 201, ok, "{image}: {status} {v}");
        if ok {
            let job = hub.job(&admin, v["jobId"].as_str().unwrap()).await;
            assert!(job["image"].as_str().unwrap().contains('/'), "{job}");
        } else {
            assert!(v["error"].as_str().unwrap().contains("image"), "{v}");
        }
    }
}

/// The one layer of `busybox:1` in the layout, as stored (gzip).
fn base_layer(layout: &Path) -> Vec<u8> {
    let index: Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let m = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == "busybox")
        .unwrap();
    let blob = |d: &str| {
        layout
            .join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(blob(m["digest"].as_str().unwrap())).unwrap())
            .unwrap();
    std::fs::read(blob(manifest["layers"][0]["digest"].as_str().unwrap())).unwrap()
}

/// A tar written byte by byte (so nothing sanitises the hostile names): entries of
/// `(path, type flag, mode, data, link name)`.
type RawEntry<'a> = (&'a str, u8, u32, &'a [u8], &'a str);

fn tar_of(entries: &[RawEntry<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for (path, kind, mode, data, link) in entries {
        let mut h = [0u8; 512];
        h[..path.len()].copy_from_slice(path.as_bytes());
        let octal = |v: u64, width: usize| format!("{v:0w$o}\0", w = width - 1);
        h[100..108].copy_from_slice(octal(u64::from(*mode), 8).as_bytes());
        h[108..116].copy_from_slice(octal(0, 8).as_bytes());
        h[116..124].copy_from_slice(octal(0, 8).as_bytes());
        h[124..136].copy_from_slice(octal(data.len() as u64, 12).as_bytes());
        h[136..148].copy_from_slice(octal(0, 12).as_bytes());
        h[156] = *kind;
        h[157..157 + link.len()].copy_from_slice(link.as_bytes());
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        if *kind == b'3' {
            h[329..337].copy_from_slice(octal(1, 8).as_bytes());
            h[337..345].copy_from_slice(octal(3, 8).as_bytes());
        }
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        out.extend_from_slice(&h);
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

/// A registry that lies: it serves `manifest` for `evil/x:1`, and for each blob digest the
/// bytes it was given (which need not match).
async fn lying_registry(blobs: Vec<(String, Vec<u8>)>, manifest: Value) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let manifest = serde_json::to_vec(&manifest).unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let (blobs, manifest) = (blobs.clone(), manifest.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf).into_owned();
                let path = head.split_whitespace().nth(1).unwrap_or("").to_owned();
                let (ctype, body): (&str, Vec<u8>) = if path == "/v2/" {
                    ("application/json", b"{}".to_vec())
                } else if path.ends_with("/manifests/1") {
                    ("application/vnd.oci.image.manifest.v1+json", manifest)
                } else if let Some((_, b)) = blobs.iter().find(|(d, _)| path.ends_with(d.as_str()))
                {
                    ("application/octet-stream", b.clone())
                } else {
                    let r =
                        "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
                    let _ = sock.write_all(r.as_bytes()).await;
                    return;
                };
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = sock.write_all(head.as_bytes()).await;
                let _ = sock.write_all(&body).await;
            });
        }
    });
    addr
}

fn sha(b: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(b)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lying_registry_fails_the_job_clearly() {
    let config = serde_json::to_vec(&json!({"architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [sha(b"x")]}}))
    .unwrap();
    let good = vec![1u8; 64];
    let manifest = |layer_digest: &str, layer_size: u64| {
        json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
               "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                          "digest": sha(&config), "size": config.len()},
               "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                           "digest": layer_digest, "size": layer_size}]})
    };
    // The layer served is not the one the manifest names.
    let swapped = lying_registry(
        vec![(sha(&config), config.clone()), (sha(&good), vec![2u8; 64])],
        manifest(&sha(&good), 64),
    )
    .await;
    // A layer larger than the agent accepts (declared 5 GiB; never downloaded).
    let huge = lying_registry(
        vec![(sha(&config), config.clone())],
        manifest(&sha(&good), 5 << 30),
    )
    .await;
    let tmp = traversable_tempdir();
    let hub = HubProc::start(FAST).await;
    let admin = hub.admin().await;
    let wt = hub.worker_token(&admin).await;
    let _agent = AgentProc::start(&hub, &wt, "img-liar", &tmp.path().join("a"), 62_700).await;
    for (addr, want) in [(swapped, "digest"), (huge, "too large")] {
        let v = run_job(
            &hub,
            &admin,
            json!({"command": "true", "image": format!("{addr}/evil/x:1")}),
        )
        .await;
        assert_eq!(v["failure"], "image", "{v}");
        assert!(v["error"].as_str().unwrap().contains(want), "{want}: {v}");
    }
    let v = run_job(&hub, &admin, json!({"command": "echo served"})).await;
    assert_eq!(v["status"], "completed", "{v}");
}
