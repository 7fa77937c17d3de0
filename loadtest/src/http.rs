//! A small HTTP/1.1 client over hyper: one keep-alive connection per in-flight request, taken
//! from a bounded pool. Lighter than a full client, so the generator spends its share of the two
//! cores on load rather than on itself.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

/// Longest any single request may take before it counts as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// One HTTP/1.1 connection to the hub.
pub struct Conn {
    send: SendRequest<Full<Bytes>>,
}

/// A response: status and body.
pub struct Resp {
    /// Status code.
    pub status: u16,
    /// Body bytes.
    pub body: Bytes,
}

impl Conn {
    /// Opens a connection to `addr` (`host:port`).
    pub async fn open(addr: &str) -> anyhow::Result<Conn> {
        let tcp = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        tcp.set_nodelay(true).context("TCP_NODELAY")?;
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .context("HTTP handshake")?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Conn { send })
    }

    /// Whether the connection can still carry requests.
    pub fn is_open(&self) -> bool {
        !self.send.is_closed()
    }

    /// Sends one request; `headers` are `(name, value)` pairs.
    pub async fn request(
        &mut self,
        method: http::Method,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Bytes>,
    ) -> anyhow::Result<Resp> {
        let mut b = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", host);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        if body.is_some() {
            b = b.header("content-type", "application/json");
        }
        let req = b
            .body(Full::new(body.unwrap_or_default()))
            .context("building request")?;
        let fut = async {
            self.send.ready().await.context("connection not ready")?;
            let resp = self.send.send_request(req).await.context("request")?;
            let status = resp.status().as_u16();
            let body = resp
                .into_body()
                .collect()
                .await
                .context("reading body")?
                .to_bytes();
            Ok::<_, anyhow::Error>(Resp { status, body })
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, fut).await {
            Ok(r) => r,
            Err(_) => bail!("{path}: no answer within {REQUEST_TIMEOUT:?}"),
        }
    }
}

/// A bounded pool of connections: at most `size` requests in flight, new connections spread
/// over the hubs in turn.
pub struct Pool {
    addrs: Vec<String>,
    next: std::sync::atomic::AtomicUsize,
    idle: Mutex<Vec<(usize, Conn)>>,
    permits: Semaphore,
}

impl Pool {
    /// A pool of up to `size` connections to `addr`.
    pub fn new(addr: &str, size: usize) -> Arc<Pool> {
        Self::spread(&[addr.to_string()], size)
    }

    /// A pool of up to `size` connections, opened to each of `addrs` in turn (several hubs).
    pub fn spread(addrs: &[String], size: usize) -> Arc<Pool> {
        Arc::new(Pool {
            addrs: addrs.to_vec(),
            next: std::sync::atomic::AtomicUsize::new(0),
            idle: Mutex::new(Vec::with_capacity(size)),
            permits: Semaphore::new(size),
        })
    }

    /// Sends one request on a pooled connection (waits for a free one when all are busy).
    pub async fn request(
        &self,
        method: http::Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Bytes>,
    ) -> anyhow::Result<Resp> {
        let _permit = self.permits.acquire().await.context("pool closed")?;
        let pooled = self
            .idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
            .filter(|(_, c)| c.is_open());
        let (at, mut conn) = match pooled {
            Some(c) => c,
            None => {
                let at =
                    self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % self.addrs.len();
                (at, Conn::open(&self.addrs[at]).await?)
            }
        };
        let r = conn
            .request(method, &self.addrs[at], path, headers, body)
            .await?;
        if conn.is_open() {
            self.idle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((at, conn));
        }
        Ok(r)
    }
}
