//! Hardening regressions, each the attack as an outside party plays it: another local user
//! reading the hub's data folder, and a cross-site page posting with a signed-in browser's
//! cookie.

use std::path::{Path, PathBuf};

use cmdx_e2e::{ADMIN_EMAIL, ADMIN_PASSWORD, HubProc, cmdx_bin, zip_bytes};
use serde_json::{Value, json};

use crate::FAST;

/// Every path below `dir` (not following symlinks).
fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        out.push(path.clone());
        if entry.file_type().unwrap().is_dir() {
            walk(&path, out);
        }
    }
}

/// The paths of `paths` the local user `nobody` can open for reading (files) or list (dirs).
fn readable_by_nobody(paths: &[PathBuf]) -> Vec<String> {
    let script = r#"for p in "$@"; do
        if [ -d "$p" ]; then ls "$p" >/dev/null 2>&1 && echo "$p"
        else head -c1 "$p" >/dev/null 2>&1 && echo "$p"; fi
    done; exit 0"#;
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .args(["sh", "-c", script, "sh"])
        .args(paths)
        .output()
        .expect("setpriv (util-linux) runs a shell as nobody");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// A hub started by hand from a shell with umask 0 (no systemd `UMask=`): nothing it writes, not
/// the store, uploads, signing keys or a backup, can be read by another local user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_local_user_reads_nothing_of_the_data_folder() {
    let hub = HubProc::start_with_umask(FAST, 0).await;
    let admin = hub.admin().await;
    hub.upload_zip(&admin, zip_bytes(&[("secret.txt", b"uploaded code")]))
        .await;
    hub.worker_token(&admin).await;
    // `cmdx backup` under the same umask, into a folder everyone may read.
    let shared = tempfile::tempdir().unwrap();
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(shared.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let archive = shared.path().join("backup.tar");
    let out = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(r#"umask 0; exec "$0" backup --hub "$1" --token "$2" --out "$3""#)
        .arg(cmdx_bin())
        .args([&hub.url, &admin])
        .arg(&archive)
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(archive.metadata().unwrap().len() > 0);

    let mut paths = vec![hub.data.clone()];
    walk(&hub.data, &mut paths);
    assert!(
        paths.iter().any(|p| p.starts_with(hub.data.join("blobs"))),
        "{paths:?}"
    );
    assert!(paths.iter().any(|p| p.ends_with("secrets/jwt.key")));
    paths.push(archive.clone());
    let leaked = readable_by_nobody(&paths);
    assert!(leaked.is_empty(), "readable by another user: {leaked:#?}");
    // The modes themselves, so the rule is clear: the data folder may be passed through,
    // nothing in it listed or read.
    use std::os::unix::fs::PermissionsExt as _;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&hub.data), 0o711);
    for dir in ["db", "blobs", "blobs/tmp", "secrets"] {
        assert_eq!(mode(&hub.data.join(dir)), 0o700, "{dir}");
    }
    assert_eq!(mode(&archive), 0o600);
}

/// Signs in through the login route and returns the session cookie (`auth_token=…`).
async fn session_cookie(hub: &HubProc) -> String {
    let r = hub
        .http
        .post(format!("{}/api/auth/login", hub.url))
        .json(&json!({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let cookie = r.headers()["set-cookie"].to_str().unwrap();
    cookie.split(';').next().unwrap().to_string()
}

/// A cross-site page cannot make a signed-in browser submit a job: the browser attaches the
/// session cookie, but the page can only send `text/plain` (or a form) without a preflight, and
/// the browser says where the request came from. Same-origin JSON from the dashboard works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cross_site_page_cannot_post_with_the_session_cookie() {
    let hub = HubProc::start(FAST).await;
    let cookie = session_cookie(&hub).await;
    let submit = |content_type: &'static str, headers: &[(&'static str, String)]| {
        let mut r = hub
            .http
            .post(format!("{}/api/jobs/submit", hub.url))
            .header("cookie", &cookie)
            .header("content-type", content_type)
            .body(r#"{"command":"echo forged"}"#);
        for (k, v) in headers {
            r = r.header(*k, v);
        }
        r.send()
    };
    let evil = "https://evil.example".to_string();
    let own = hub.url.clone();
    /// (what, Content-Type, extra headers, expected status).
    type Case<'a> = (&'a str, &'a str, Vec<(&'a str, String)>, u16);
    let cases: Vec<Case> = vec![
        // The classic forged form post: text/plain from another origin.
        (
            "text/plain from another origin",
            "text/plain",
            vec![
                ("origin", evil.clone()),
                ("sec-fetch-site", "cross-site".into()),
            ],
            403,
        ),
        (
            "JSON from another origin",
            "application/json",
            vec![("origin", evil.clone())],
            403,
        ),
        (
            "JSON, cross-site by Fetch metadata",
            "application/json",
            vec![("sec-fetch-site", "cross-site".into())],
            403,
        ),
        (
            "an opaque origin",
            "application/json",
            vec![("origin", "null".into())],
            403,
        ),
        ("no origin at all", "application/json", vec![], 403),
        (
            "text/plain from the hub's own origin",
            "text/plain",
            vec![("origin", own.clone())],
            415,
        ),
        (
            "a form from the hub's own origin",
            "application/x-www-form-urlencoded",
            vec![
                ("origin", own.clone()),
                ("sec-fetch-site", "same-origin".into()),
            ],
            415,
        ),
    ];
    for (what, ct, headers, want) in cases {
        let r = submit(ct, &headers).await.unwrap();
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        assert_eq!(status, want, "{what}: {body}");
        assert!(body["error"].is_string(), "{what}: {body}");
    }
    let admin = hub.admin().await;
    let (_, list) = hub.get(&admin, "/api/jobs/list").await;
    assert_eq!(list["count"], 0, "a forged submission was accepted: {list}");
    // The dashboard's own requests: same-origin JSON, and a body-less logout.
    let r = submit(
        "application/json",
        &[
            ("origin", own.clone()),
            ("sec-fetch-site", "same-origin".into()),
        ],
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 201);
    let r = hub
        .http
        .post(format!("{}/api/auth/logout", hub.url))
        .header("cookie", &cookie)
        .header("origin", &own)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Bearer-token clients are not browsers' ambient credentials: unaffected.
    let r = hub
        .http
        .post(format!("{}/api/jobs/submit", hub.url))
        .bearer_auth(&admin)
        .header("content-type", "text/plain")
        .body(r#"{"command":"echo scripted"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
}

/// A request whose path or query has a `%` before a multi-byte character (the two "hex digits"
/// cut a UTF-8 sequence) once panicked the hub's decoder on an unauthenticated route; the hub
/// survived only because the panic unwound. Each now gets an ordinary answer on a connection that
/// stays usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_percent_escapes_get_an_answer_not_a_panic() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let hub = HubProc::start(FAST).await;
    let addr = hub.url.trim_start_matches("http://").to_string();
    for target in [
        &b"/api/jobs/x/artifacts/%a\xc3\xa9"[..],
        b"/api/jobs/status?jobId=%a\xc3\xa9",
        b"/api/files/download/%\xe2\x82\xac?workerId=%\xc3",
        b"/api/jobs/%\xc3\xa9/output?offset=%",
    ] {
        let mut sock = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let mut req = b"GET ".to_vec();
        req.extend_from_slice(target);
        req.extend_from_slice(b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        sock.write_all(&req).await.unwrap();
        let mut resp = Vec::new();
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            sock.read_to_end(&mut resp),
        )
        .await
        .expect("an answer in time")
        .unwrap();
        let head = String::from_utf8_lossy(&resp[..resp.len().min(12)]).to_string();
        assert!(
            ["HTTP/1.1 400", "HTTP/1.1 401", "HTTP/1.1 404"]
                .iter()
                .any(|s| head.starts_with(s)),
            "{} answered {head:?}",
            String::from_utf8_lossy(target)
        );
    }
    let (s, _) = hub.get("none", "/api/jobs/list").await;
    assert_eq!(s, 401, "the hub still answers");
}
