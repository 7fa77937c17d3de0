//! HTTPS served by the hub itself (`tls_cert` + `tls_key`), so no TLS-terminating proxy is
//! needed in front of it.
//!
//! The certificate chain and key are PEM files read at start (a bad pair stops the hub with the
//! file and the reason) and again by [`Tls::reload`], which `cmdx hub` calls on SIGHUP: a
//! renewed certificate is served to every connection accepted afterwards, connections already
//! open keep theirs, and a pair that does not load leaves the current one in place. rustls
//! uses the `ring` provider; only HTTP/1.1 is offered (ALPN), as the server speaks nothing else.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::HubError;
use crate::config::HubConfig;

/// The hub's TLS server configuration and where it came from, replaceable while serving.
pub struct Tls {
    /// PEM certificate chain, leaf first.
    cert: PathBuf,
    /// PEM private key of the leaf.
    key: PathBuf,
    /// What new connections are served with; swapped whole by [`Tls::reload`].
    current: RwLock<Arc<ServerConfig>>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// The TLS configuration `config` asks for: `None` when neither `tls_cert` nor `tls_key` is
    /// set; an error when only one is, or when the pair does not load.
    pub fn from_config(config: &HubConfig) -> Result<Option<Arc<Tls>>, HubError> {
        match (&config.tls_cert, &config.tls_key) {
            (None, None) => Ok(None),
            (Some(cert), Some(key)) => {
                let server = load(cert, key)?;
                Ok(Some(Arc::new(Tls {
                    cert: cert.clone(),
                    key: key.clone(),
                    current: RwLock::new(Arc::new(server)),
                })))
            }
            (Some(_), None) | (None, Some(_)) => Err(HubError::Config(
                "tls_cert and tls_key go together (--tls-cert and --tls-key, or \
                 CMDX_TLS_CERT and CMDX_TLS_KEY): give both to serve HTTPS, or neither"
                    .into(),
            )),
        }
    }

    /// Reads the certificate and key files again and serves them to new connections. On an
    /// error nothing changes: the hub keeps serving the pair it had.
    pub fn reload(&self) -> Result<(), HubError> {
        let server = Arc::new(load(&self.cert, &self.key)?);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = server;
        Ok(())
    }

    /// An acceptor with the current configuration, for one new connection.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        tokio_rustls::TlsAcceptor::from(Arc::clone(&current))
    }
}

/// A server configuration from a PEM chain and its key (checked to belong together).
fn load(cert: &Path, key: &Path) -> Result<ServerConfig, HubError> {
    let bad = |path: &Path, reason: String| HubError::Tls {
        path: path.to_path_buf(),
        reason,
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad(cert, e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(bad(
            cert,
            "no PEM certificate (BEGIN CERTIFICATE) in it".into(),
        ));
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(cert, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| bad(cert, format!("with key {}: {e}", key.display())))?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(server)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate for `127.0.0.1` and its key, as PEM files in `dir`.
    fn pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (c, k) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    fn config(cert: Option<PathBuf>, key: Option<PathBuf>) -> HubConfig {
        HubConfig {
            tls_cert: cert,
            tls_key: key,
            ..HubConfig::default()
        }
    }

    #[test]
    fn cert_and_key_go_together() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = pair(dir.path(), "a");
        assert!(Tls::from_config(&config(None, None)).unwrap().is_none());
        assert!(
            Tls::from_config(&config(Some(c.clone()), Some(k.clone())))
                .unwrap()
                .is_some()
        );
        for half in [config(Some(c), None), config(None, Some(k))] {
            let e = Tls::from_config(&half).unwrap_err().to_string();
            assert!(e.contains("--tls-cert and --tls-key"), "{e}");
        }
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (c, _) = pair(dir.path(), "a");
        let (_, other_key) = pair(dir.path(), "b");
        let e = Tls::from_config(&config(Some(c), Some(other_key)))
            .unwrap_err()
            .to_string();
        assert!(e.contains("a.crt"), "{e}");
    }

    #[test]
    fn a_reload_that_fails_keeps_the_served_pair() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = pair(dir.path(), "a");
        let tls = Tls::from_config(&config(Some(c.clone()), Some(k.clone())))
            .unwrap()
            .unwrap();
        let served = |t: &Tls| Arc::clone(&t.current.read().unwrap());
        let before = served(&tls);
        std::fs::write(&c, "-----BEGIN CERTIFICATE-----\n").unwrap();
        let e = tls.reload().unwrap_err().to_string();
        assert!(e.contains("a.crt"), "{e}");
        assert!(Arc::ptr_eq(&before, &served(&tls)));

        let (c2, k2) = pair(dir.path(), "b");
        std::fs::rename(c2, &c).unwrap();
        std::fs::rename(k2, &k).unwrap();
        tls.reload().unwrap();
        assert!(!Arc::ptr_eq(&before, &served(&tls)));
    }
}
