//! Jobs in OCI images, against a real Distribution registry (Debian's `docker-registry`) on
//! loopback, with images built offline by `umoci` from `busybox-static` and pushed by
//! `skopeo`, and a hostile layer written by hand and pushed through the registry's HTTP API.

use std::path::{Path, PathBuf};

use cmdx_e2e::{AgentProc, HubProc, traversable_tempdir, wait_for};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::FAST;

/// A private registry on a free loopback port; its access log goes to `log`.
pub(crate) struct Registry {
    child: tokio::process::Child,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    log: PathBuf,
    dir: tempfile::TempDir,
}

fn tool(name: &str) -> PathBuf {
    for d in ["/usr/bin", "/usr/sbin", "/bin"] {
        let p = Path::new(d).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("{name} is missing: install Debian's docker-registry skopeo umoci busybox-static");
}

fn run(cmd: &mut std::process::Command) {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Registry {
    pub(crate) async fn start() -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                 http:\n  addr: {addr}\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let log = dir.path().join("registry.log");
        let child = tokio::process::Command::new(tool("docker-registry"))
            .arg("serve")
            .arg(&config)
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::OpenOptions::new().append(true).open(&log).unwrap())
            .kill_on_drop(true)
            .spawn()
            .expect("start docker-registry");
        let url = format!("http://{addr}/v2/");
        let http = cmdx_e2e::http_client().build().unwrap();
        wait_for("the registry", || async {
            http.get(&url)
                .send()
                .await
                .ok()
                .filter(|r| r.status() == 200)
                .map(|_| ())
        })
        .await;
        Registry {
            child,
            addr,
            log,
            dir,
        }
    }

    /// Copies image `tag` of the OCI layout `layout` to `repo:tag2` in the registry.
    pub(crate) fn push_layout(&self, layout: &Path, tag: &str, dest: &str) {
        run(std::process::Command::new(tool("skopeo"))
            .args(["copy", "--quiet", "--dest-tls-verify=false"])
            .arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{}/{dest}", self.addr)));
    }

    /// Blob downloads (`GET …/blobs/…`) in the access log so far.
    pub(crate) fn blob_gets(&self, repo: &str) -> usize {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let needle = format!("\"GET /v2/{repo}/blobs/");
        log.lines().filter(|l| l.contains(&needle)).count()
    }

    /// Pushes `layers` (already compressed or plain tars, with their media types) and a config
    /// as `repo:tag` through the registry's HTTP API.
    pub(crate) async fn push_raw(&self, repo: &str, tag: &str, layers: &[(Vec<u8>, &str)]) {
        let http = cmdx_e2e::http_client().build().unwrap();
        let base = format!("http://{}/v2/{repo}", self.addr);
        let put_blob = |bytes: Vec<u8>| {
            let (http, base) = (http.clone(), base.clone());
            async move {
                let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
                let r = http
                    .post(format!("{base}/blobs/uploads/"))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 202, "start upload");
                let loc = r.headers()["location"].to_str().unwrap().to_owned();
                let loc = if loc.starts_with("http") {
                    loc
                } else {
                    format!("http://{}{loc}", self.addr)
                };
                let sep = if loc.contains('?') { '&' } else { '?' };
                let size = bytes.len();
                let r = http
                    .put(format!("{loc}{sep}digest={digest}"))
                    .header("content-type", "application/octet-stream")
                    .body(bytes)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 201, "finish upload");
                (digest, size)
            }
        };
        let mut descs = Vec::new();
        let mut diff_ids = Vec::new();
        for (bytes, media) in layers {
            let plain = if media.ends_with("gzip") {
                let mut out = Vec::new();
                std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&bytes[..]), &mut out)
                    .unwrap();
                out
            } else {
                bytes.clone()
            };
            diff_ids.push(format!("sha256:{}", hex::encode(Sha256::digest(&plain))));
            let (digest, size) = put_blob(bytes.clone()).await;
            descs.push(json!({"mediaType": media, "digest": digest, "size": size}));
        }
        let config = serde_json::to_vec(&json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Env": ["PATH=/bin"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }))
        .unwrap();
        let (cdigest, csize) = put_blob(config).await;
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cdigest, "size": csize},
            "layers": descs,
        });
        let r = http
            .put(format!("{base}/manifests/{tag}"))
            .header("content-type", "application/vnd.oci.image.manifest.v1+json")
            .body(serde_json::to_vec(&manifest).unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "manifest: {}", r.text().await.unwrap());
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = &self.dir;
    }
}

/// An OCI layout at `dir/layout` holding `busybox:1`: one layer with a static busybox, applet
/// links, an `/etc/os-release` of its own and `/etc/passwd`; `Env` sets `IMAGE_VAR`.
pub(crate) fn busybox_layout(dir: &Path) -> PathBuf {
    let umoci = tool("umoci");
    let layout = dir.join("layout");
    let bundle = dir.join("bundle");
    run(std::process::Command::new(&umoci)
        .args(["init", "--layout"])
        .arg(&layout));
    run(std::process::Command::new(&umoci)
        .args(["new", "--image"])
        .arg(format!("{}:busybox", layout.display())));
    run(std::process::Command::new(&umoci)
        .args(["unpack", "--image"])
        .arg(format!("{}:busybox", layout.display()))
        .arg(&bundle));
    let root = bundle.join("rootfs");
    for d in ["bin", "etc", "usr/bin", "opt/data"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy(tool("busybox"), root.join("bin/busybox")).unwrap();
    for a in [
        "sh", "cat", "id", "ls", "echo", "stat", "test", "env", "pwd", "readlink", "wc", "sleep",
        "true",
    ] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(a)).unwrap();
    }
    std::fs::write(
        root.join("etc/os-release"),
        "NAME=\"cmdx test image\"\nID=cmdxtest\n",
    )
    .unwrap();
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(root.join("etc/gone"), "lower layer\n").unwrap();
    std::fs::write(root.join("opt/data/old"), "lower layer\n").unwrap();
    run(std::process::Command::new(&umoci)
        .args(["repack", "--image"])
        .arg(format!("{}:busybox", layout.display()))
        .arg(&bundle));
    run(std::process::Command::new(&umoci)
        .args(["config", "--image"])
        .arg(format!("{}:busybox", layout.display()))
        .args([
            "--config.env",
            "IMAGE_VAR=from-image",
            "--config.env",
            "PATH=/bin",
        ]));
    // A second image on top: a whiteout, an opaque directory and a hard link.
    run(std::process::Command::new(&umoci)
        .args(["unpack", "--image"])
        .arg(format!("{}:busybox", layout.display()))
        .arg(dir.join("bundle2")));
    let root2 = dir.join("bundle2/rootfs");
    std::fs::remove_file(root2.join("etc/gone")).unwrap();
    std::fs::remove_dir_all(root2.join("opt/data")).unwrap();
    std::fs::create_dir(root2.join("opt/data")).unwrap();
    std::fs::write(root2.join("opt/data/new"), "upper layer\n").unwrap();
    std::fs::hard_link(root2.join("opt/data/new"), root2.join("opt/data/linked")).unwrap();
    run(std::process::Command::new(&umoci)
        .args(["repack", "--image"])
        .arg(format!("{}:layered", layout.display()))
        .arg(dir.join("bundle2")));
    layout
}

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
