//! Lingering close for request bodies a handler did not read to the end.
//!
//! A handler may answer before the body has arrived (a 413 decided from `Content-Length`, a
//! 401, an upload over the cap half-way). hyper then closes the connection with the rest of the
//! body still unread in the socket's receive buffer, and Linux answers a close with unread
//! input by sending RST, not FIN. A client still writing its body then sees "connection reset"
//! or "broken pipe", and the RST can discard the answer before the client reads it: the user
//! gets a transport error instead of "upload exceeds the limit". nginx solves the same problem
//! with its lingering close; so does this: the rest of an abandoned body is read and thrown
//! away in the background, bounded in time and bytes, while the answer goes out.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use warp::http::HeaderMap;

use super::BodyStream;
use crate::Hub;

/// How long an abandoned body is read after the answer (nginx's `lingering_time` is 30 s; a
/// client that has our answer stops sending well within this).
const LINGER_FOR: Duration = Duration::from_secs(5);
/// How much of an abandoned body is read at most.
const LINGER_BYTES: u64 = 128 << 20;

/// A request body that, when dropped before its end, reads and discards the rest (bounded).
pub(super) struct Lingering {
    inner: Option<BodyStream>,
    /// The stream has ended (or failed: a body that stalled or broke is not worth waiting for).
    done: bool,
    /// Nothing has been read yet and the client waits for `100 Continue` before sending: hyper
    /// sends it on the first read, so not reading keeps the client from sending at all.
    awaits_continue: bool,
    hub: Arc<Hub>,
}

impl Lingering {
    /// Wraps `body` of a request with `headers`.
    pub(super) fn wrap(hub: Arc<Hub>, headers: &HeaderMap, body: BodyStream) -> BodyStream {
        let has_body = headers.contains_key("transfer-encoding")
            || headers
                .get("content-length")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .is_some_and(|n| n > 0);
        let awaits_continue = headers
            .get("expect")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
        Box::pin(Lingering {
            inner: Some(body),
            done: !has_body,
            awaits_continue,
            hub,
        })
    }
}

impl Stream for Lingering {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        this.awaits_continue = false;
        let item = inner.as_mut().poll_next(cx);
        if matches!(item, Poll::Ready(None | Some(Err(_)))) {
            this.done = true;
        }
        item
    }
}

impl Drop for Lingering {
    fn drop(&mut self) {
        if self.done || self.awaits_continue {
            return;
        }
        let Some(rest) = self.inner.take() else {
            return;
        };
        // Drops happen on the runtime (handlers run there); outside one there is nothing to
        // linger for.
        if tokio::runtime::Handle::try_current().is_ok() {
            self.hub.tasks.spawn(discard(rest));
        }
    }
}

/// Reads and throws away what is left of a body, for at most [`LINGER_FOR`] and
/// [`LINGER_BYTES`].
async fn discard(mut rest: BodyStream) {
    let _ = tokio::time::timeout(LINGER_FOR, async {
        let mut read = 0u64;
        while let Some(Ok(chunk)) = rest.next().await {
            read += chunk.len() as u64;
            if read > LINGER_BYTES {
                break;
            }
        }
    })
    .await;
}
