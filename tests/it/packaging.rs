//! The shipped deployment files, read as systemd reads them: the env templates parse, name only
//! variables the binary knows, and set what the service needs; the units pass
//! `systemd-analyze verify` with the real binary behind `ExecStart`. The Kubernetes manifests
//! parse as YAML, and every flag and `CMDX_*` variable they (and the Containerfile) give the
//! binary is one it reads.

use std::path::{Path, PathBuf};

fn packaging() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("packaging")
        .join("systemd")
}

/// `KEY=VALUE` pairs of an environment file as systemd's `EnvironmentFile=` reads it (blank
/// lines and lines starting with `#` or `;` are comments); the commented-out examples
/// (`#KEY=VALUE`) are returned apart. Panics on a line systemd would reject or drop.
fn parse_env_file(path: &Path) -> (Vec<(String, String)>, Vec<String>) {
    let text = std::fs::read_to_string(path).unwrap();
    let valid = |k: &str| {
        !k.is_empty()
            && !k.starts_with(|c: char| c.is_ascii_digit())
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    let (mut set, mut examples) = (Vec::new(), Vec::new());
    for (n, line) in text.lines().enumerate() {
        let t = line.trim_start();
        if t.is_empty() {
            continue;
        }
        if let Some(c) = t.strip_prefix('#').or_else(|| t.strip_prefix(';')) {
            if let Some((k, _)) = c.split_once('=')
                && valid(k)
            {
                examples.push(k.to_owned());
            }
            continue;
        }
        let (k, v) = t
            .split_once('=')
            .unwrap_or_else(|| panic!("{}:{}: not KEY=VALUE: {line:?}", path.display(), n + 1));
        assert!(
            valid(k.trim_end()),
            "{}:{}: {k:?} is not a variable name systemd accepts",
            path.display(),
            n + 1
        );
        set.push((k.trim_end().to_owned(), v.trim().to_owned()));
    }
    (set, examples)
}

fn help(sub: &str) -> String {
    let out = std::process::Command::new(cmdx_e2e::cmdx_bin())
        .args([sub, "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn env_templates_parse_and_name_real_settings() {
    for (file, sub, needed) in [
        (
            "agent.env.example",
            "agent",
            &["CMDX_HUB", "CMDX_AGENT_TOKEN"][..],
        ),
        ("hub.env.example", "hub", &[][..]),
    ] {
        let path = packaging().join(file);
        let (set, examples) = parse_env_file(&path);
        let keys: Vec<&str> = set.iter().map(|(k, _)| k.as_str()).collect();
        for k in needed {
            assert!(keys.contains(k), "{file} does not set {k}: {keys:?}");
        }
        let help = help(sub);
        for k in keys
            .iter()
            .copied()
            .chain(examples.iter().map(String::as_str))
        {
            if k == "RUST_LOG" || k == "CMDX_ADMIN_EMAIL" || k == "CMDX_ADMIN_PASSWORD" {
                continue;
            }
            assert!(
                help.contains(&format!("{k}=")) || help.contains(&format!("env: {k}")),
                "{file} names {k}, which `cmdx {sub}` does not read"
            );
        }
    }
}

#[test]
fn units_pass_systemd_analyze_verify() {
    let analyze = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("systemd-analyze is missing: install Debian's systemd package");
    let dir = tempfile::tempdir().unwrap();
    let bin = cmdx_e2e::cmdx_bin();
    let mut units = Vec::new();
    for unit in ["cmdx-agent.service", "cmdx-hub.service"] {
        let text = std::fs::read_to_string(packaging().join(unit))
            .unwrap()
            .replace("/usr/local/bin/cmdx", &bin.display().to_string())
            .replace("/etc/cmdx/", &format!("{}/", dir.path().display()));
        let path = dir.path().join(unit);
        std::fs::write(&path, text).unwrap();
        units.push(path);
    }
    for (env, example) in [
        ("agent.env", "agent.env.example"),
        ("hub.env", "hub.env.example"),
    ] {
        std::fs::copy(packaging().join(example), dir.path().join(env)).unwrap();
    }
    let out = std::process::Command::new(analyze)
        .arg("verify")
        .args(&units)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{stderr}"
    );
    for line in stderr.lines() {
        // `DelegateSubgroup=` is systemd 254+; older versions ignore it (the unit still works,
        // see docs/operations.md).
        assert!(
            line.contains("DelegateSubgroup"),
            "systemd-analyze verify: {line}"
        );
    }
}

/// Every `cmdx` flag and `CMDX_*` variable a Kubernetes container (or the Containerfile) gives,
/// checked against `cmdx hub --help` / `cmdx agent --help`; the manifests parse as YAML, and
/// the agents are told to drain within a grace that leaves jobs time to finish.
#[test]
fn kubernetes_manifests_parse_and_give_the_binary_only_what_it_reads() {
    use serde::Deserialize as _;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "{files:?}");
    let helps = [("hub", help("hub")), ("agent", help("agent"))];
    let reads = |sub: &str, what: &str| {
        let h = &helps
            .iter()
            .find(|(s, _)| *s == sub)
            .expect("hub or agent")
            .1;
        if what.starts_with("--") {
            h.contains(&format!("{what} "))
                || h.contains(&format!("{what}="))
                || h.contains(&format!("{what}\n"))
        } else {
            // `[env: NAME=]`, or `[env: NAME]` for settings whose values are hidden (tokens).
            h.contains(&format!("env: {what}=")) || h.contains(&format!("env: {what}]"))
        }
    };
    // Read at the first start only, documented in docs/operations.md, not flags.
    let bootstrap = ["CMDX_ADMIN_EMAIL", "CMDX_ADMIN_PASSWORD"];
    let mut kinds = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v = serde_yaml::Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{}: not YAML: {e}", file.display()));
            let kind = v["kind"].as_str().unwrap_or_default().to_string();
            kinds.push(kind.clone());
            let pod = &v["spec"]["template"]["spec"];
            let Some(containers) = pod["containers"].as_sequence() else {
                continue;
            };
            for c in containers {
                let args: Vec<&str> = c["args"]
                    .as_sequence()
                    .map(|a| a.iter().filter_map(|x| x.as_str()).collect())
                    .unwrap_or_default();
                let sub = args.first().copied().unwrap_or("hub");
                assert!(
                    sub == "hub" || sub == "agent",
                    "{}: args {args:?}",
                    file.display()
                );
                for flag in args.iter().filter(|a| a.starts_with("--")) {
                    assert!(
                        reads(sub, flag),
                        "{}: `cmdx {sub}` has no {flag}",
                        file.display()
                    );
                }
                for e in c["env"].as_sequence().into_iter().flatten() {
                    let name = e["name"].as_str().unwrap_or_default();
                    if name.starts_with("CMDX_") && !bootstrap.contains(&name) {
                        assert!(
                            reads(sub, name),
                            "{}: `cmdx {sub}` does not read {name}",
                            file.display()
                        );
                    }
                }
                if sub == "agent" {
                    assert_eq!(
                        c["securityContext"]["privileged"].as_bool(),
                        Some(true),
                        "{}",
                        file.display()
                    );
                    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap_or(30);
                    assert!(
                        grace >= 600,
                        "{}: agents drain: give jobs time ({grace} s)",
                        file.display()
                    );
                } else {
                    assert_eq!(
                        c["securityContext"]["allowPrivilegeEscalation"].as_bool(),
                        Some(false)
                    );
                    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
                }
            }
        }
    }
    for k in [
        "Deployment",
        "DaemonSet",
        "Service",
        "PersistentVolumeClaim",
        "ScaledObject",
    ] {
        assert!(kinds.iter().any(|x| x == k), "no {k} among {kinds:?}");
    }
    // The KEDA trigger reads a metric the hub serves.
    let scaled = std::fs::read_to_string(dir.join("agent-autoscaled.yaml")).unwrap();
    assert!(scaled.contains("cmdx_queue_depth_by_tags"));
    // The Containerfile's default command is a hub the binary can start.
    let containerfile = std::fs::read_to_string(dir.join("../container/Containerfile")).unwrap();
    let cmd = containerfile
        .lines()
        .find_map(|l| l.strip_prefix("CMD "))
        .expect("a CMD line");
    let cmd: Vec<String> = serde_json::from_str(cmd).expect("CMD in exec form");
    assert_eq!(cmd[0], "hub");
    for flag in cmd.iter().filter(|a| a.starts_with("--")) {
        assert!(
            reads("hub", flag),
            "Containerfile: `cmdx hub` has no {flag}"
        );
    }
}
