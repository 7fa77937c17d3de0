//! Image references (`registry/repository:tag`, `…@sha256:HEX`) as jobs name them.
//!
//! The grammar is the one `docker pull` accepts (the distribution project's reference
//! grammar), normalised the same way: a first component without a `.` or `:` and other than
//! `localhost` is not a registry, so `alpine` means `docker.io/library/alpine:latest`. The hub
//! checks a submitted reference with [`ImageRef::parse`] (and the registry against its allowed
//! list); the agent pulls the [`ImageRef::canonical`] form.

use std::fmt;

/// The registry of references that name none.
pub const DEFAULT_REGISTRY: &str = "docker.io";
/// Longest reference accepted (the distribution project's limit on a repository name is 255;
/// a registry, a tag and a digest come on top).
pub const MAX_REFERENCE_LEN: usize = 512;

/// A parsed, normalised image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    /// Registry host, with a port when it has one (`docker.io`, `127.0.0.1:5000`).
    pub registry: String,
    /// Repository path (`library/alpine`, `team/tools`).
    pub repository: String,
    /// Tag (`latest` when neither a tag nor a digest was given).
    pub tag: Option<String>,
    /// Pinned manifest digest, `sha256:` + 64 lowercase hex digits.
    pub digest: Option<String>,
}

impl ImageRef {
    /// Parses and normalises `s`; the error says what is wrong with it.
    pub fn parse(s: &str) -> Result<ImageRef, String> {
        if s.is_empty() {
            return Err("image reference is empty".into());
        }
        if s.len() > MAX_REFERENCE_LEN {
            return Err(format!(
                "image reference longer than {MAX_REFERENCE_LEN} bytes"
            ));
        }
        if s.bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return Err("image reference contains whitespace or control characters".into());
        }
        let (name, digest) = match s.split_once('@') {
            Some((n, d)) => (n, Some(parse_digest(d)?)),
            None => (s, None),
        };
        // A tag is after the last `:` that follows the last `/` (a registry port is before it).
        let last_slash = name.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name[last_slash..].rfind(':') {
            Some(i) => {
                let at = last_slash + i;
                let tag = &name[at + 1..];
                if !valid_tag(tag) {
                    return Err(format!(
                        "invalid tag {tag:?}: up to 128 of [A-Za-z0-9_.-], not starting with . or -"
                    ));
                }
                (&name[..at], Some(tag.to_owned()))
            }
            None => (name, None),
        };
        let (registry, path) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_owned(), rest.to_owned())
            }
            _ => (DEFAULT_REGISTRY.to_owned(), name.to_owned()),
        };
        if !valid_registry(&registry) {
            return Err(format!("invalid registry {registry:?}"));
        }
        let repository = if registry == DEFAULT_REGISTRY && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        if repository.len() > 255 || !repository.split('/').all(valid_path_component) {
            return Err(format!(
                "invalid repository {repository:?}: lowercase components of [a-z0-9] joined by . _ __ or -"
            ));
        }
        let tag = match (&tag, &digest) {
            (None, None) => Some("latest".to_owned()),
            _ => tag,
        };
        Ok(ImageRef {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The full normalised form: `registry/repository[:tag][@digest]`.
    pub fn canonical(&self) -> String {
        self.to_string()
    }

    /// The registry's host without its port (`127.0.0.1`, `[::1]` -> `::1`).
    pub fn host(&self) -> &str {
        registry_host(&self.registry)
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// The host of a registry name without its port: `host:5000` -> `host`, `[::1]:5000` -> `::1`.
pub fn registry_host(registry: &str) -> &str {
    if let Some(rest) = registry.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    registry.split(':').next().unwrap_or(registry)
}

/// Whether `pattern` (an operator's allowed-registry entry) covers `registry`: equal names
/// (case-insensitive), or `*.example.com` for any host under `example.com` (any port).
pub fn registry_matches(pattern: &str, registry: &str) -> bool {
    let (p, r) = (pattern.to_ascii_lowercase(), registry.to_ascii_lowercase());
    if p == r {
        return true;
    }
    match p.strip_prefix("*.") {
        Some(suffix) => registry_host(&r).ends_with(&format!(".{suffix}")),
        None => false,
    }
}

fn parse_digest(d: &str) -> Result<String, String> {
    match d.strip_prefix("sha256:") {
        Some(hex)
            if hex.len() == 64
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
        {
            Ok(d.to_owned())
        }
        _ => Err(format!(
            "invalid digest {d:?}: expected sha256: and 64 lowercase hex digits"
        )),
    }
}

fn valid_tag(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 128
        && !t.starts_with(['.', '-'])
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn valid_registry(r: &str) -> bool {
    if r.is_empty() || r.len() > 255 {
        return false;
    }
    if let Some(rest) = r.strip_prefix('[') {
        let Some((addr, port)) = rest.split_once(']') else {
            return false;
        };
        return !addr.is_empty()
            && addr.bytes().all(|b| b.is_ascii_hexdigit() || b == b':')
            && (port.is_empty() || valid_port(port.strip_prefix(':').unwrap_or("x")));
    }
    let (host, port) = match r.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (r, None),
    };
    !host.is_empty()
        && host.split('.').all(|l| {
            !l.is_empty()
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        && port.is_none_or(valid_port)
}

fn valid_port(p: &str) -> bool {
    !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit())
}

/// `[a-z0-9]+` joined by `.`, `_`, `__` or any number of `-`.
fn valid_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !b[0].is_ascii_alphanumeric() || !b[b.len() - 1].is_ascii_alphanumeric() {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        let ch = b[i];
        if ch.is_ascii_lowercase() || ch.is_ascii_digit() {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && matches!(b[i], b'.' | b'_' | b'-') {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|s| s == b'-');
        if !ok || sep.is_empty() {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_normalise_like_docker() {
        let r = ImageRef::parse("alpine").unwrap();
        assert_eq!(r.canonical(), "docker.io/library/alpine:latest");
        let r = ImageRef::parse("team/tool:1.2").unwrap();
        assert_eq!(r.canonical(), "docker.io/team/tool:1.2");
        let r = ImageRef::parse("127.0.0.1:5000/cmdx/busybox:1").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
            ("127.0.0.1:5000", "cmdx/busybox", Some("1"))
        );
        assert_eq!(r.host(), "127.0.0.1");
        let r = ImageRef::parse("localhost/x").unwrap();
        assert_eq!(r.registry, "localhost");
        let d = format!("sha256:{}", "a".repeat(64));
        let r = ImageRef::parse(&format!("[::1]:5000/x@{d}")).unwrap();
        assert_eq!((r.host(), r.tag.as_deref()), ("::1", None));
        assert_eq!(r.digest.as_deref(), Some(d.as_str()));
    }

    #[test]
    fn bad_references_are_refused_with_a_reason() {
        for bad in [
            "",
            "Alpine",
            "a b",
            "x:",
            "x@sha256:abc",
            "x:-tag",
            "host:port/x",
            "a//b",
            "a/-b",
            "x\n",
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn allowed_registry_patterns() {
        assert!(registry_matches("docker.io", "Docker.io"));
        assert!(registry_matches("*.example.com", "r.example.com:443"));
        assert!(!registry_matches("*.example.com", "example.com.evil"));
        assert!(!registry_matches("127.0.0.1:5000", "127.0.0.1:5001"));
    }
}
