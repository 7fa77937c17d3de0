//! A private OCI registry for tests and benchmarks: Debian's `docker-registry` (a
//! Distribution registry) on a free loopback port with its access log kept, images built
//! offline by `umoci` from `busybox-static` and pushed by `skopeo`, or pushed raw through the
//! registry's HTTP API.

use std::path::{Path, PathBuf};

use serde_json::json;
use sha2::{Digest as _, Sha256};

use crate::wait_for;

/// A private registry on a free loopback port; its access log goes to `log`.
pub struct Registry {
    child: tokio::process::Child,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    log: PathBuf,
    dir: tempfile::TempDir,
}

/// The path of a system tool; panics naming the Debian package when it is missing.
pub fn tool(name: &str) -> PathBuf {
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
    pub async fn start() -> Registry {
        Self::start_with_htpasswd(None).await
    }

    /// A registry that asks for HTTP basic credentials: `htpasswd` holds `user:bcrypt-hash`
    /// lines.
    pub async fn start_with_htpasswd(htpasswd: Option<&str>) -> Registry {
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
        if let Some(lines) = htpasswd {
            let path = dir.path().join("htpasswd");
            std::fs::write(&path, lines).unwrap();
            let mut c = std::fs::read_to_string(&config).unwrap();
            c.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: cmdx-test\n    path: {}\n",
                path.display()
            ));
            std::fs::write(&config, c).unwrap();
        }
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
        let http = crate::http_client().build().unwrap();
        wait_for("the registry", || async {
            http.get(&url)
                .send()
                .await
                .ok()
                .filter(|r| r.status() == 200 || r.status() == 401)
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
    pub fn push_layout(&self, layout: &Path, tag: &str, dest: &str) {
        self.push_layout_as(layout, tag, dest, None);
    }

    /// [`Registry::push_layout`] with `user:password` credentials.
    pub fn push_layout_as(&self, layout: &Path, tag: &str, dest: &str, creds: Option<&str>) {
        let mut cmd = std::process::Command::new(tool("skopeo"));
        if let Some(c) = creds {
            cmd.arg("copy").arg("--dest-creds").arg(c);
        } else {
            cmd.arg("copy");
        }
        run(cmd
            .args(["--quiet", "--dest-tls-verify=false"])
            .arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{}/{dest}", self.addr)));
    }

    /// Blob downloads (`GET …/blobs/…`) in the access log so far.
    pub fn blob_gets(&self, repo: &str) -> usize {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let needle = format!("\"GET /v2/{repo}/blobs/");
        log.lines().filter(|l| l.contains(&needle)).count()
    }

    /// Pushes `layers` (already compressed or plain tars, with their media types) and a config
    /// as `repo:tag` through the registry's HTTP API.
    pub async fn push_raw(&self, repo: &str, tag: &str, layers: &[(Vec<u8>, &str)]) {
        let http = crate::http_client().build().unwrap();
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

/// An OCI layout at `dir/layout` holding `busybox`: one layer with a static busybox, applet
/// links, an `/etc/os-release` of its own and `/etc/passwd`; `Env` sets `IMAGE_VAR`. Also
/// `workdir` (the same with `WorkingDir` `/opt/data`) and `layered` (a second layer with a
/// whiteout, an opaque directory and a hard link).
pub fn busybox_layout(dir: &Path) -> PathBuf {
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
    // The same image with a working directory of its own.
    run(std::process::Command::new(&umoci)
        .args(["config", "--image"])
        .arg(format!("{}:busybox", layout.display()))
        .args(["--tag", "workdir", "--config.workingdir", "/opt/data"]));
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

/// An OCI layout at `dir/big-layout` holding `big`: the busybox layer plus a second layer of
/// `bytes` of random (incompressible) data, for pull timings.
pub fn big_layout(dir: &Path, bytes: usize) -> PathBuf {
    let umoci = tool("umoci");
    let small = busybox_layout(dir);
    let layout = dir.join("big-layout");
    let bundle = dir.join("big-bundle");
    run(std::process::Command::new("cp")
        .arg("-a")
        .arg(&small)
        .arg(&layout));
    run(std::process::Command::new(&umoci)
        .args(["unpack", "--image"])
        .arg(format!("{}:busybox", layout.display()))
        .arg(&bundle));
    let mut data = vec![0u8; bytes];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for chunk in data.chunks_mut(8) {
        // xorshift: fast, and gzip cannot shrink it.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
    std::fs::write(bundle.join("rootfs/opt/blob"), data).unwrap();
    run(std::process::Command::new(&umoci)
        .args(["repack", "--image"])
        .arg(format!("{}:big", layout.display()))
        .arg(&bundle));
    layout
}
