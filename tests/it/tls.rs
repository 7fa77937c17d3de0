//! TLS in the binary: a hub serving HTTPS itself (`--tls-cert/--tls-key`), reached by the `cmdx`
//! CLI over `https://` and `wss://` and by a real agent over `wss://`, each trusting a private CA
//! through `--ca-file`. The suite is its own CA (rcgen) and plays the other parties: a client
//! without the CA, a plain-HTTP client on the TLS port, a renewal that replaces the files and
//! sends SIGHUP, and a client that opens TCP and never finishes the handshake.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use cmdx_e2e::{ADMIN_EMAIL, ADMIN_PASSWORD, AgentProc, HubProc, WAIT, cmdx_bin, wait_for};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::FAST;

/// The suite's certificate authority, its PEM file, and the folder the hub's files live in.
struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    dir: tempfile::TempDir,
}

/// A certificate the test CA issued for `127.0.0.1`, with its key.
struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

impl TestCa {
    fn new() -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "cmdx test CA");
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), issuer.pem()).unwrap();
        TestCa { issuer, dir }
    }

    /// The CA's certificate as a PEM file (what `--ca-file` takes).
    fn pem_path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A new server certificate (fresh key, fresh serial) for the hub's loopback address.
    fn issue(&self, name: &str) -> Leaf {
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    /// Where the hub's certificate and key files are.
    fn hub_files(&self) -> (PathBuf, PathBuf) {
        (
            self.dir.path().join("hub.crt"),
            self.dir.path().join("hub.key"),
        )
    }

    /// Puts `leaf` in the hub's files as a renewal tool does: each written beside and renamed
    /// over the old one.
    fn install(&self, leaf: &Leaf) {
        let (cert, key) = self.hub_files();
        replace(&key, &leaf.key_pem);
        replace(&cert, &leaf.cert_pem);
    }

    /// A rustls client configuration trusting this CA only.
    fn client_config(&self) -> rustls::ClientConfig {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.issuer.der().clone()).unwrap();
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
    }
}

fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A hub serving HTTPS with a certificate of `ca`, whose test HTTP client trusts `ca`.
async fn tls_hub(ca: &TestCa, leaf: &Leaf) -> HubProc {
    ca.install(leaf);
    let (cert, key) = ca.hub_files();
    let mut flags: Vec<&str> = FAST.to_vec();
    flags.extend([
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    let mut hub = HubProc::start(&flags).await;
    assert!(hub.url.starts_with("https://127.0.0.1:"), "{}", hub.url);
    hub.http = cmdx_e2e::http_client()
        .tls_backend_preconfigured(ca.client_config())
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    hub
}

/// The leaf certificate the hub at `port` serves to a new connection.
async fn served_cert(ca: &TestCa, port: u16) -> CertificateDer<'static> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(ca.client_config()));
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let tls = tokio::time::timeout(WAIT, connector.connect(name, tcp))
        .await
        .expect("handshake in time")
        .expect("handshake");
    tls.get_ref().1.peer_certificates().expect("a certificate")[0].clone()
}

/// A `cmdx` client command with its own config file, no `CMDX_*` from the test's environment.
fn cmdx(config: &Path, args: &[&str]) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(cmdx_bin());
    c.args(args)
        .env_remove("CMDX_HUB")
        .env_remove("CMDX_TOKEN")
        .env_remove("CMDX_CA_FILE")
        .env("CMDX_CONFIG", config)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    c
}

/// Runs `command` with `stdin` written to it; its output, within [`WAIT`].
async fn run(mut command: tokio::process::Command, stdin: &str) -> Output {
    let mut child = command.spawn().expect("spawn cmdx");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).await.unwrap();
    drop(input);
    tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .expect("cmdx ends in time")
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `cmdx login` then `cmdx submit` over https:// (the CA remembered from the login), the job run
/// by a real agent connected over wss://, its output streamed while it runs and its exit code
/// returned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_runs_end_to_end_over_https_and_wss() {
    let ca = TestCa::new();
    let hub = tls_hub(&ca, &ca.issue("hub")).await;
    let admin = hub.admin().await;
    let wt = hub.worker_token(&admin).await;
    let work = cmdx_e2e::traversable_tempdir();
    let ca_file = ca.pem_path();
    let _agent = AgentProc::start_with_args(
        &hub,
        &wt,
        "tls-agent",
        &work.path().join("a"),
        47_000,
        &["--ca-file", ca_file.to_str().unwrap()],
    )
    .await;
    wait_for("the agent to connect over wss://", || async {
        let (_, v) = hub.get(&admin, "/api/workers/list").await;
        v.to_string().contains("tls-agent").then_some(())
    })
    .await;

    let cfg = tempfile::tempdir().unwrap();
    let config = cfg.path().join("config.json");
    let login = run(
        cmdx(
            &config,
            &[
                "login",
                "--hub",
                &hub.url,
                "--ca-file",
                ca_file.to_str().unwrap(),
                "--email",
                ADMIN_EMAIL,
                "--password-stdin",
            ],
        ),
        &format!("{ADMIN_PASSWORD}\n"),
    )
    .await;
    assert!(login.status.success(), "login: {}", text(&login.stderr));
    assert!(
        text(&login.stderr).contains(&format!("signed in to {}", hub.url)),
        "{}",
        text(&login.stderr)
    );

    // No --hub, no --ca-file: both come from the login.
    let mut submit = cmdx(
        &config,
        &[
            "submit",
            // Pipes, so stderr is checked apart below.
            "--no-tty",
            "--",
            "echo first; echo to-stderr >&2; sleep 2; echo second; exit 3",
        ],
    )
    .spawn()
    .unwrap();
    drop(submit.stdin.take());
    let mut stdout = BufReader::new(submit.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(WAIT, stdout.next_line())
        .await
        .expect("first line in time")
        .unwrap();
    assert_eq!(first.as_deref(), Some("first"));
    assert!(
        submit.try_wait().unwrap().is_none(),
        "the first line arrives while the job still runs"
    );
    let second = tokio::time::timeout(WAIT, stdout.next_line())
        .await
        .expect("second line in time")
        .unwrap();
    assert_eq!(second.as_deref(), Some("second"));
    let mut stderr = String::new();
    submit
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .await
        .unwrap();
    let status = tokio::time::timeout(WAIT, submit.wait())
        .await
        .expect("submit ends in time")
        .unwrap();
    assert_eq!(status.code(), Some(3), "stderr: {stderr}");
    assert!(stderr.contains("to-stderr"), "{stderr}");
}

/// Without the CA the CLI says the certificate is not trusted and how to trust it, with exit
/// code 125: not "not signed in", for a login nor for a signed-in command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_ca_the_cli_names_the_untrusted_certificate() {
    let ca = TestCa::new();
    let hub = tls_hub(&ca, &ca.issue("hub")).await;
    let admin = hub.admin().await;
    let cfg = tempfile::tempdir().unwrap();
    let config = cfg.path().join("config.json");

    let login = run(
        cmdx(
            &config,
            &[
                "login",
                "--hub",
                &hub.url,
                "--email",
                ADMIN_EMAIL,
                "--password-stdin",
            ],
        ),
        &format!("{ADMIN_PASSWORD}\n"),
    )
    .await;
    let mut submit = cmdx(&config, &["submit", "--", "true"]);
    submit.env("CMDX_HUB", &hub.url).env("CMDX_TOKEN", &admin);
    let submit = run(submit, "").await;
    let mut follow = cmdx(&config, &["logs", "-f", "some-job"]);
    follow.env("CMDX_HUB", &hub.url).env("CMDX_TOKEN", &admin);
    let follow = run(follow, "").await;

    for (what, out) in [("login", login), ("submit", submit), ("logs -f", follow)] {
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "{what}: {err}");
        assert_eq!(err.lines().count(), 1, "{what}: not one line: {err}");
        assert!(err.contains("does not trust"), "{what}: {err}");
        assert!(err.contains("--ca-file"), "{what}: {err}");
        assert!(!err.contains("not signed in"), "{what}: {err}");
    }
    assert!(!config.exists(), "a failed login wrote the config");
}

/// Plain HTTP to the TLS port is answered 400 "use https://" and closed; the CLI shows that
/// answer; the hub goes on serving HTTPS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_to_the_tls_port_fails_cleanly_and_the_hub_keeps_serving() {
    let ca = TestCa::new();
    let hub = tls_hub(&ca, &ca.issue("hub")).await;
    let plain = format!("http://127.0.0.1:{}", hub.port);

    let http = cmdx_e2e::http_client().build().unwrap();
    for _ in 0..3 {
        let r = http
            .get(format!("{plain}/healthz"))
            .send()
            .await
            .expect("an answer");
        assert_eq!(r.status(), 400);
        assert!(r.text().await.unwrap().contains("https://"));
    }

    let cfg = tempfile::tempdir().unwrap();
    let login = run(
        cmdx(
            &cfg.path().join("config.json"),
            &[
                "login",
                "--hub",
                &plain,
                "--email",
                ADMIN_EMAIL,
                "--password-stdin",
            ],
        ),
        &format!("{ADMIN_PASSWORD}\n"),
    )
    .await;
    let err = text(&login.stderr);
    assert_eq!(login.status.code(), Some(125), "{err}");
    assert!(err.contains("https://"), "{err}");

    let admin = hub.admin().await;
    let (status, _) = hub.get(&admin, "/api/auth/me").await;
    assert_eq!(status, 200);
}

/// SIGHUP after the files were replaced: new connections get the new certificate, never the
/// old one again. A pair that does not load is logged and changes nothing (the hub survives
/// it and takes the next good pair).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_serves_the_renewed_certificate_to_new_connections() {
    let ca = TestCa::new();
    let old = ca.issue("hub, first");
    let hub = tls_hub(&ca, &old).await;
    let pid = nix::unistd::Pid::from_raw(hub.pid().unwrap() as i32);
    let hup = || nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    assert_eq!(served_cert(&ca, hub.port).await, old.der);

    let renewed = ca.issue("hub, renewed");
    assert_ne!(renewed.der, old.der);
    ca.install(&renewed);
    hup();
    wait_for("the renewed certificate to be served", || async {
        (served_cert(&ca, hub.port).await == renewed.der).then_some(())
    })
    .await;
    for _ in 0..5 {
        assert_eq!(served_cert(&ca, hub.port).await, renewed.der);
    }

    // A broken renewal: the hub keeps the pair it has and stays up.
    let (cert, _) = ca.hub_files();
    replace(&cert, "-----BEGIN CERTIFICATE-----\nnot base64\n");
    hup();
    let third = ca.issue("hub, third");
    ca.install(&third);
    hup();
    wait_for("the third certificate to be served", || async {
        (served_cert(&ca, hub.port).await == third.der).then_some(())
    })
    .await;
    let admin = hub.admin().await;
    let (status, _) = hub.get(&admin, "/api/auth/me").await;
    assert_eq!(status, 200);
}

/// Clients that open TCP and never finish the handshake (silent, or stopping inside a TLS
/// record) do not hold up anyone else, and are closed by the hub after its handshake timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_handshake_does_not_hold_up_other_clients() {
    let ca = TestCa::new();
    let hub = tls_hub(&ca, &ca.issue("hub")).await;
    let mut stalled = Vec::new();
    for i in 0..4 {
        let mut s = TcpStream::connect(("127.0.0.1", hub.port)).await.unwrap();
        if i % 2 == 1 {
            // The start of a handshake record, then nothing.
            s.write_all(&[0x16, 0x03, 0x01, 0x02]).await.unwrap();
        }
        stalled.push(s);
    }
    let served = tokio::time::timeout(Duration::from_secs(5), async {
        let admin = hub.admin().await;
        hub.get(&admin, "/api/auth/me").await.0
    })
    .await
    .expect("served while the stalled handshakes wait");
    assert_eq!(served, 200);

    // The hub gives up on them (10 s header timeout by default): each read ends.
    for mut s in stalled {
        let mut buf = [0u8; 64];
        let end = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .expect("the hub closes a stalled handshake");
        assert!(matches!(end, Ok(0) | Err(_)), "{end:?}");
    }
}
