//! TLS for the hub's clients: the agent here, and the `cmdx` CLI through [`client_config`].
//!
//! One rustls client configuration serves both the WebSocket (`wss://`) and the HTTP client
//! (`https://`). It uses the `ring` provider (no C toolchain beyond what `ring` builds, no cmake)
//! and is handed to each client explicitly, so nothing depends on a process-wide default
//! provider. It trusts the system's root certificates (`rustls-native-certs`: `/etc/ssl/certs`,
//! or `SSL_CERT_FILE` / `SSL_CERT_DIR` when set) plus, when given, every certificate of a PEM
//! file: a private CA the hub's certificate is signed by.

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;

use crate::error::AgentError;

/// The client configuration: system roots plus the certificates of `ca_file`.
///
/// A `ca_file` that cannot be read, holds no certificate or holds one rustls refuses is an
/// error (a typo must not silently fall back to the system roots). Missing or unreadable
/// system roots are not: with `ca_file` the private CA is enough, and without it an `https://`
/// hub fails with an untrusted-certificate error that names the cause.
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, AgentError> {
    let mut roots = RootCertStore::empty();
    let system = rustls_native_certs::load_native_certs();
    for e in &system.errors {
        tracing::debug!(error = %e, "a system root certificate could not be loaded");
    }
    let (added, ignored) = roots.add_parsable_certificates(system.certs);
    tracing::debug!(added, ignored, "system root certificates");
    if let Some(path) = ca_file {
        for cert in ca_certs(path)? {
            roots.add(cert).map_err(|e| AgentError::CaFile {
                path: path.to_path_buf(),
                reason: format!("a certificate is not usable as a trust anchor: {e}"),
            })?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| AgentError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Every certificate of the PEM file at `path` (at least one).
fn ca_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, AgentError> {
    let bad = |reason: String| AgentError::CaFile {
        path: path.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no PEM certificate (BEGIN CERTIFICATE) in it".into()));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = client_config(Some(&empty)).unwrap_err().to_string();
        assert!(e.contains("no PEM certificate"), "{e}");
        let missing = dir.path().join("missing.pem");
        let e = client_config(Some(&missing)).unwrap_err().to_string();
        assert!(e.contains("missing.pem"), "{e}");
    }

    #[test]
    fn system_roots_alone_make_a_config() {
        assert!(client_config(None).is_ok());
    }
}
