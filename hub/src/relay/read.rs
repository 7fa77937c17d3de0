//! Reads of a job's stored log outside subscriptions: the whole log split by stream (status
//! views), and raw byte ranges streamed page by page (`/api/jobs/{id}/output`).

use std::sync::Arc;

use cmdx_proto::StreamKind;
use tokio::sync::mpsc;

use super::PAGE_BYTES;
use crate::store::{ChunkRecord, Store, StoreResult};

/// Whether a page from `read_chunks(.., PAGE_BYTES)` is the rest of the log: the store stops a
/// page only once it holds `PAGE_BYTES`, so a shorter one ran out of chunks (no second read for
/// a status poll of a job with little output).
fn is_last_page(page: &[ChunkRecord]) -> bool {
    page.iter().map(|c| c.data.len()).sum::<usize>() < PAGE_BYTES
}

/// Reads the whole stored log as (stdout, stderr, total stored bytes), each stream capped at
/// `cap_each` bytes (the head is kept).
pub async fn read_split(
    store: &dyn Store,
    job_id: &str,
    cap_each: usize,
) -> StoreResult<(Vec<u8>, Vec<u8>)> {
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let mut idx = 0;
    loop {
        let page = store.read_chunks(job_id, idx, PAGE_BYTES).await?;
        let Some(tail) = page.last() else { break };
        idx = tail.index + 1;
        let last_page = is_last_page(&page);
        for c in page {
            let buf = match c.stream {
                StreamKind::Stdout => &mut stdout,
                StreamKind::Stderr => &mut stderr,
            };
            let room = cap_each.saturating_sub(buf.len());
            buf.extend_from_slice(&c.data[..c.data.len().min(room)]);
        }
        if last_page || (stdout.len() >= cap_each && stderr.len() >= cap_each) {
            break;
        }
    }
    Ok((stdout, stderr))
}

/// Where a raw read from `offset` of at most `max` bytes starts and ends in the stored log:
/// `(start, end, first chunk index)`. `start` is later than `offset` when the cap dropped the
/// head; `end` is at most the end of what is stored now. `None` index: nothing to read.
pub async fn raw_bounds(
    store: &dyn Store,
    job_id: &str,
    offset: u64,
    max: u64,
) -> StoreResult<(u64, u64, Option<u64>)> {
    let Some(idx) = store.chunk_index_at(job_id, offset).await? else {
        return Ok((offset, offset, None));
    };
    let (Some(first), Some(last)) = (
        store.read_chunks(job_id, idx, 1).await?.into_iter().next(),
        store.last_chunk(job_id).await?,
    ) else {
        return Ok((offset, offset, None));
    };
    let start = offset.max(first.offset);
    let end = start.saturating_add(max).min(last.end()).max(start);
    Ok((start, end, Some(idx)))
}

/// The stored log's bytes `[start, end)` from chunk `idx` on, one store page (256 KiB) at a time
/// as the reader takes them (a task reads the next page once the last is taken): a client that
/// reads slowly, or not at all, holds about two pages of hub memory, not the whole range. Ends
/// with an error if the range is no longer all stored (the cap dropped it meanwhile), so a
/// `Content-Length` reader sees a short body, never a gap.
pub fn raw_stream(
    store: Arc<dyn Store>,
    job_id: String,
    idx: u64,
    start: u64,
    end: u64,
) -> tokio_stream::wrappers::ReceiverStream<Result<bytes::Bytes, std::io::Error>> {
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        let (mut idx, mut pos) = (idx, start);
        while pos < end {
            let page = match raw_page(store.as_ref(), &job_id, idx, pos, end).await {
                Ok((page, next, at)) => {
                    (idx, pos) = (next, at);
                    Ok(page)
                }
                Err(e) => Err(e),
            };
            let failed = page.is_err();
            if tx.send(page).await.is_err() || failed {
                return;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// One page of [`raw_stream`]: the bytes from `pos` (before `end`) in the page starting at chunk
/// `idx`, the next chunk index, and the offset reached.
async fn raw_page(
    store: &dyn Store,
    job_id: &str,
    idx: u64,
    pos: u64,
    end: u64,
) -> Result<(bytes::Bytes, u64, u64), std::io::Error> {
    let page = store
        .read_chunks(job_id, idx, PAGE_BYTES)
        .await
        .map_err(std::io::Error::other)?;
    let Some(tail) = page.last() else {
        return Err(std::io::Error::other("the output ended early"));
    };
    let next = tail.index + 1;
    let mut out = Vec::with_capacity(PAGE_BYTES.min((end - pos) as usize));
    let mut at = pos;
    for c in &page {
        if c.end() <= at {
            continue;
        }
        if c.offset > at {
            return Err(std::io::Error::other(
                "the output cap dropped bytes while they were read",
            ));
        }
        let skip = (at - c.offset) as usize;
        let take = (c.data.len() - skip).min((end - at) as usize);
        out.extend_from_slice(&c.data[skip..skip + take]);
        at += take as u64;
        if at >= end {
            break;
        }
    }
    Ok((bytes::Bytes::from(out), next, at))
}

/// Offset of the first stored chunk stored at or after `since_ms` (epoch ms): where the output
/// printed since then begins; the end of the stored log when nothing was stored since, 0 for
/// an empty log. Reads the chunks' headers page by page from the first stored one (chunks are
/// stored in time order), so the work is bounded by the output cap.
pub async fn offset_since(store: &dyn Store, job_id: &str, since_ms: u64) -> StoreResult<u64> {
    let Some(mut idx) = store.chunk_index_at(job_id, 0).await? else {
        return Ok(0);
    };
    let mut end = 0;
    loop {
        let page = store.read_chunks(job_id, idx, PAGE_BYTES).await?;
        let Some(tail) = page.last() else {
            return Ok(end);
        };
        if let Some(c) = page.iter().find(|c| c.time_ms >= since_ms) {
            return Ok(c.offset);
        }
        (idx, end) = (tail.index + 1, tail.end());
        if is_last_page(&page) {
            return Ok(end);
        }
    }
}
