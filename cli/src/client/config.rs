//! The client config file (hub URL, session token and CA file written by `cmdx login`) and the
//! resolution of the hub, token and CA file for a command: flags > `CMDX_HUB`/`CMDX_TOKEN`/
//! `CMDX_CA_FILE` > file > defaults.
//!
//! The file is `$CMDX_CONFIG`, else `$XDG_CONFIG_HOME/cmdx/config.json`, else
//! `~/.config/cmdx/config.json`; it is written with mode 0600 (it holds a bearer token).

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use super::ConnArgs;

/// The hub of `cmdx dev`, used when nothing else names one.
pub const DEFAULT_HUB: &str = "http://127.0.0.1:8080";

/// What `cmdx login` remembers.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigFile {
    /// Hub base URL, e.g. `http://127.0.0.1:8080`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hub: Option<String>,
    /// Session bearer token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// PEM file of the private CA that signed the hub's certificate (`--ca-file` at login),
    /// trusted besides the system's roots for this hub only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Who signed in, for people reading the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
}

impl std::fmt::Debug for ConfigFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigFile")
            .field("hub", &self.hub)
            .field("ca_file", &self.ca_file)
            .field("email", &self.email)
            .field("has_token", &self.token.is_some())
            .finish()
    }
}

/// The config file's path.
pub fn path() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("CMDX_CONFIG").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    if let Some(x) = std::env::var_os("XDG_CONFIG_HOME").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(x).join("cmdx").join("config.json"));
    }
    match std::env::var_os("HOME").filter(|p| !p.is_empty()) {
        Some(h) => Ok(PathBuf::from(h)
            .join(".config")
            .join("cmdx")
            .join("config.json")),
        None => bail!("cannot find a config folder: set HOME, XDG_CONFIG_HOME or CMDX_CONFIG"),
    }
}

/// Reads the config file; a missing file is an empty config.
pub fn load() -> anyhow::Result<ConfigFile> {
    let p = path()?;
    load_from(&p)
}

fn load_from(p: &Path) -> anyhow::Result<ConfigFile> {
    match std::fs::read(p) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .with_context(|| format!("config file {} is not valid JSON", p.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ConfigFile::default()),
        Err(e) => Err(e).with_context(|| format!("cannot read config file {}", p.display())),
    }
}

/// Writes the config file atomically with mode 0600; returns its path.
pub fn save(cfg: &ConfigFile) -> anyhow::Result<PathBuf> {
    let p = path()?;
    if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create config folder {}", dir.display()))?;
    }
    let tmp = p.with_extension("json.tmp");
    let body = serde_json::to_vec_pretty(cfg).context("encoding the config")?;
    let write = || -> std::io::Result<()> {
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&body)?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&tmp, &p)
    };
    write().with_context(|| format!("cannot write config file {}", p.display()))?;
    Ok(p)
}

/// Normalizes a hub URL: adds `http://` when no scheme is given, drops trailing slashes.
pub fn normalize_hub(s: &str) -> anyhow::Result<String> {
    let s = s.trim();
    if s.is_empty() {
        bail!("the hub URL is empty");
    }
    let with_scheme = if s.contains("://") {
        s.to_string()
    } else {
        format!("http://{s}")
    };
    let url = with_scheme.trim_end_matches('/').to_string();
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        bail!("hub URL {url} must start with http:// or https://");
    }
    Ok(url)
}

/// Resolved connection settings for one command.
#[derive(Clone)]
pub struct Conn {
    /// Hub base URL.
    pub hub: String,
    /// Bearer token, when signed in.
    pub token: Option<String>,
    /// PEM file of a private CA trusted besides the system's roots.
    pub ca_file: Option<PathBuf>,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Resolves the hub, token and CA file: flags > env > config file > defaults. The file's token
/// and CA file are used only with the file's hub: a token is never sent to a hub it was not
/// issued by, and a CA trusted for one hub is not trusted for another.
pub fn resolve(args: &ConnArgs) -> anyhow::Result<Conn> {
    let file = load()?;
    let file_hub = file.hub.as_deref().and_then(|h| normalize_hub(h).ok());
    let hub = match args.hub.clone().or_else(|| env("CMDX_HUB")) {
        Some(h) => normalize_hub(&h)?,
        None => file_hub.clone().unwrap_or_else(|| DEFAULT_HUB.to_string()),
    };
    let same_hub = file_hub.as_deref() == Some(hub.as_str());
    let token = args
        .token
        .clone()
        .or_else(|| env("CMDX_TOKEN"))
        .or_else(|| file.token.filter(|_| same_hub));
    let ca_file = args
        .ca_file
        .clone()
        .or_else(|| env("CMDX_CA_FILE").map(PathBuf::from))
        .or_else(|| file.ca_file.filter(|_| same_hub));
    Ok(Conn {
        hub,
        token: token.map(|t| t.trim().to_string()),
        ca_file,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_urls_are_normalized() {
        assert_eq!(
            normalize_hub("127.0.0.1:8080/").unwrap(),
            "http://127.0.0.1:8080"
        );
        assert_eq!(
            normalize_hub("https://hub.example/").unwrap(),
            "https://hub.example"
        );
        assert!(normalize_hub("ftp://x").is_err());
        assert!(normalize_hub("  ").is_err());
    }

    #[test]
    fn missing_file_is_empty_config() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = load_from(&dir.path().join("nope.json")).unwrap();
        assert!(cfg.hub.is_none() && cfg.token.is_none());
    }
}
