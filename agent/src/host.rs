//! Facts about the host for `hello`, and the agent's stable worker id.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use crate::error::AgentError;

/// Host facts advertised in `hello`.
#[derive(Debug, Clone)]
pub(crate) struct HostInfo {
    /// Host name from the kernel.
    pub hostname: String,
    /// `linux <release>`.
    pub os: String,
    /// Logical CPUs available to this process.
    pub cpu_count: u32,
    /// `MemTotal` from `/proc/meminfo`, in MiB.
    pub total_memory_mb: u64,
}

impl HostInfo {
    /// Reads the facts; anything unreadable becomes `unknown` or 0 rather than an error.
    pub fn gather() -> Self {
        let read = |p: &str| {
            std::fs::read_to_string(p)
                .map(|s| s.trim().to_owned())
                .ok()
                .filter(|s| !s.is_empty())
        };
        let hostname = read("/proc/sys/kernel/hostname").unwrap_or_else(|| "unknown".into());
        let os = match read("/proc/sys/kernel/osrelease") {
            Some(release) => format!("{} {release}", std::env::consts::OS),
            None => std::env::consts::OS.to_owned(),
        };
        let cpu_count = std::thread::available_parallelism()
            .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
            .unwrap_or(1);
        let total_memory_mb = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|s| parse_mem_total_kib(&s))
            .map_or(0, |kib| kib / 1024);
        Self {
            hostname,
            os,
            cpu_count,
            total_memory_mb,
        }
    }
}

/// Parses `MemTotal:  16384 kB` out of `/proc/meminfo` text, in KiB.
pub(crate) fn parse_mem_total_kib(meminfo: &str) -> Option<u64> {
    meminfo.lines().find_map(|line| {
        let rest = line.strip_prefix("MemTotal:")?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// The effective uid of this process, read from `/proc/self/status`.
pub(crate) fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// Returns the configured worker id, or the one stored in `work_dir/worker-id`, creating it
/// (from the host name and random bits) on first start.
pub(crate) fn worker_id(
    configured: Option<&str>,
    work_dir: &Path,
    hostname: &str,
) -> Result<String, AgentError> {
    if let Some(id) = configured {
        return Ok(id.to_owned());
    }
    let path = work_dir.join("worker-id");
    match std::fs::read_to_string(&path) {
        Ok(s) if valid_id(s.trim()) => return Ok(s.trim().to_owned()),
        Ok(_) => tracing::warn!(path = %path.display(), "ignoring malformed worker id file"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(AgentError::WorkDir {
                op: "read",
                path,
                source,
            });
        }
    }
    let host: String = hostname
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(32)
        .collect();
    let id = format!(
        "{}-{:016x}",
        if host.is_empty() { "worker" } else { &host },
        rand::random::<u64>()
    );
    let write = || -> std::io::Result<()> {
        let tmp = work_dir.join("worker-id.tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        writeln!(f, "{id}")?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)
    };
    write().map_err(|source| AgentError::WorkDir {
        op: "write",
        path: work_dir.join("worker-id"),
        source,
    })?;
    Ok(id)
}

/// Worker ids the hub accepts: 1 to 128 characters from `[A-Za-z0-9._:-]`.
pub(crate) fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_total_is_parsed_from_meminfo() {
        let text = "MemFree:  10 kB\nMemTotal:       24576000 kB\n";
        assert_eq!(parse_mem_total_kib(text), Some(24_576_000));
        assert_eq!(parse_mem_total_kib("nothing"), None);
    }

    #[test]
    fn worker_id_is_generated_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let a = worker_id(None, dir.path(), "my host!").unwrap();
        assert!(a.starts_with("myhost-"), "{a}");
        let b = worker_id(None, dir.path(), "other").unwrap();
        assert_eq!(a, b);
        assert_eq!(worker_id(Some("fixed"), dir.path(), "h").unwrap(), "fixed");
    }
}
