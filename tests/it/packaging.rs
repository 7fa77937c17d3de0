//! The shipped deployment files, read as systemd reads them: the env templates parse, name only
//! variables the binary knows, and set what the service needs; the units pass
//! `systemd-analyze verify` with the real binary behind `ExecStart`.

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
