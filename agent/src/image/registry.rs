//! Talking to a registry through `oci-client`: the manifest (a manifest list resolved to
//! linux/amd64), the config, and each layer spooled to a file, all verified by digest.
//!
//! Plain HTTP is used only for loopback registries and the ones the operator lists as
//! insecure (as Docker does); everything else is HTTPS with the system's roots. Credentials
//! come from the agent's own configuration, per registry; a registry that answers with a
//! bearer challenge gets them at its token endpoint (the client does the exchange).

use std::path::Path;
use std::time::Duration;

use cmdx_proto::image::ImageRef;
use oci_client::client::{ClientConfig, ClientProtocol, linux_amd64_resolver};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::{OciDescriptor, OciImageManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use tokio::io::AsyncWrite;

use super::{ImageError, ImageSettings};
use crate::fetch::error_chain;

/// A connection to one image's registry.
pub(crate) struct Registry {
    client: Client,
    reference: Reference,
    auth: RegistryAuth,
    shown: String,
}

impl Registry {
    /// A client for `image` under the agent's settings.
    pub(crate) fn new(image: &ImageRef, settings: &ImageSettings) -> Result<Self, ImageError> {
        // oci-client builds its own reqwest client, which finds rustls's provider through
        // the process default: make it ring, as the rest of the agent uses (a no-op when one
        // is installed already).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let plain = is_loopback(image.host())
            || settings
                .insecure_registries
                .iter()
                .any(|r| r.eq_ignore_ascii_case(&image.registry));
        let protocol = if plain {
            ClientProtocol::HttpsExcept(vec![image.registry.clone()])
        } else {
            ClientProtocol::Https
        };
        let config = ClientConfig {
            protocol,
            platform_resolver: Some(Box::new(linux_amd64_resolver)),
            connect_timeout: Some(Duration::from_secs(10)),
            read_timeout: Some(Duration::from_secs(60)),
            max_concurrent_download: 4,
            ..ClientConfig::default()
        };
        let client = Client::try_from(config)
            .map_err(|e| ImageError::Registry(format!("cannot build the registry client: {e}")))?;
        let reference: Reference = image
            .canonical()
            .parse()
            .map_err(|e| ImageError::Reference(format!("{e}")))?;
        let auth = settings
            .credentials
            .iter()
            .find(|c| c.registry.eq_ignore_ascii_case(&image.registry))
            .map_or(RegistryAuth::Anonymous, |c| {
                RegistryAuth::Basic(c.username.clone(), c.password.clone())
            });
        Ok(Self {
            client,
            reference,
            auth,
            shown: image.canonical(),
        })
    }

    /// The image manifest (for linux/amd64) and its digest.
    pub(crate) async fn manifest(&self) -> Result<(OciImageManifest, String), ImageError> {
        self.client
            .pull_image_manifest(&self.reference, &self.auth)
            .await
            .map_err(|e| classify(&self.shown, e))
    }

    /// The config blob, at most `cap` bytes, verified by digest.
    pub(crate) async fn config(
        &self,
        desc: &OciDescriptor,
        cap: u64,
    ) -> Result<Vec<u8>, ImageError> {
        if u64::try_from(desc.size).unwrap_or(u64::MAX) > cap {
            return Err(ImageError::TooLarge(format!(
                "config of {} bytes (cap {cap})",
                desc.size
            )));
        }
        let mut out = Capped {
            inner: Vec::new(),
            left: cap,
        };
        self.client
            .pull_blob(&self.reference, desc, &mut out)
            .await
            .map_err(|e| classify(&self.shown, e))?;
        Ok(out.inner)
    }

    /// Downloads layer `desc` into `path` (at most its declared size), verified by digest.
    pub(crate) async fn layer(&self, desc: &OciDescriptor, path: &Path) -> Result<(), ImageError> {
        let file = tokio::fs::File::create(path)
            .await
            .map_err(|e| ImageError::Local(format!("cannot create {}: {e}", path.display())))?;
        let mut out = Capped {
            inner: tokio::io::BufWriter::with_capacity(256 * 1024, file),
            left: u64::try_from(desc.size).unwrap_or(0),
        };
        self.client
            .pull_blob(&self.reference, desc, &mut out)
            .await
            .map_err(|e| classify(&self.shown, e))
    }
}

/// Whether `host` is a loopback name or address.
fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The one-line reason a pull failed, by what went wrong.
fn classify(image: &str, e: OciDistributionError) -> ImageError {
    use OciDistributionError as E;
    match e {
        E::AuthenticationFailure(m) => ImageError::Auth(format!(
            "{image}: authentication refused by the registry ({m})"
        )),
        E::UnauthorizedError { .. } => ImageError::Auth(format!(
            "{image}: authentication refused by the registry (unauthorized)"
        )),
        E::ImageManifestNotFoundError(m) => {
            ImageError::NotFound(format!("{image}: image not found ({m})"))
        }
        E::RegistryError { envelope, .. } => {
            let codes: Vec<_> = envelope.errors.iter().map(|e| &e.code).collect();
            let text = envelope
                .errors
                .iter()
                .map(|e| e.message.clone())
                .collect::<Vec<_>>()
                .join("; ");
            if codes.iter().any(|c| {
                matches!(
                    c,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::NotFound
                        | OciErrorCode::BlobUnknown
                )
            }) {
                ImageError::NotFound(format!("{image}: image not found in the registry ({text})"))
            } else if codes
                .iter()
                .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
            {
                ImageError::Auth(format!(
                    "{image}: authentication refused by the registry ({text})"
                ))
            } else {
                ImageError::Registry(format!("{image}: registry error ({text})"))
            }
        }
        E::ServerError { code: 404, .. } => {
            ImageError::NotFound(format!("{image}: image not found in the registry"))
        }
        E::ServerError { code, message, .. } if code == 401 || code == 403 => ImageError::Auth(
            format!("{image}: authentication refused by the registry ({code} {message})"),
        ),
        E::DigestError(d) => ImageError::Digest(format!("{image}: {d}")),
        E::RequestError(r) if r.is_connect() || r.is_timeout() => ImageError::Unreachable(format!(
            "{image}: registry unreachable ({})",
            error_chain(&r)
        )),
        E::IoError(io) if io.kind() == std::io::ErrorKind::FileTooLarge => ImageError::TooLarge(
            format!("{image}: a blob is larger than its descriptor says"),
        ),
        other => ImageError::Registry(format!("{image}: {}", error_chain(&other))),
    }
}

/// A writer that fails once more than `left` bytes came (a registry sending more than the
/// descriptor's size is not believed, nor stored).
struct Capped<W> {
    inner: W,
    left: u64,
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Capped<W> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if buf.len() as u64 > self.left {
            return std::task::Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::FileTooLarge,
                "blob larger than its descriptor",
            )));
        }
        let this = &mut *self;
        let r = std::pin::Pin::new(&mut this.inner).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = &r {
            this.left -= *n as u64;
        }
        r
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
