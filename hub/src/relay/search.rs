//! Literal search over a job's whole stored log, a page at a time
//! (`GET /api/jobs/{id}/output/search`).
//!
//! Lines are numbered from 1 at the first stored byte (later than offset 0 once the output cap
//! dropped the head). A request reads the store one page at a time from its cursor (a line
//! number and the byte offset where that line starts) and stops at the first line end after
//! [`SCAN_BUDGET`] bytes, after `limit` matches, or at the end of the stored log; the answer's
//! `next` cursor resumes exactly there, so the work and memory per request are bounded whatever
//! the log's size. A line is matched with its terminal escape sequences removed, as lossy UTF-8;
//! a line longer than [`LINE_CAP`] is matched on its first `LINE_CAP` bytes only.

use cmdx_proto::rest::{OutputMatch, OutputSearch};

use super::PAGE_BYTES;
use crate::store::{Store, StoreResult};

/// Bytes of the log one request reads at most (it finishes the line it is in).
pub const SCAN_BUDGET: u64 = 8 << 20;
/// Bytes of one line kept for matching.
pub const LINE_CAP: usize = 64 << 10;
/// Characters of a matching line returned.
pub const TEXT_CAP: usize = 1000;
/// Longest query, in bytes.
pub const MAX_QUERY: usize = 1024;

/// Where a search page starts: line `line` begins at byte `offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// 1-based line number.
    pub line: u64,
    /// Byte offset of that line's first byte.
    pub offset: u64,
}

impl Cursor {
    /// Reads `LINE:OFFSET` (what [`Cursor::encode`] writes).
    pub fn parse(s: &str) -> Option<Cursor> {
        let (line, offset) = s.split_once(':')?;
        let line = line.parse().ok().filter(|l| *l >= 1)?;
        Some(Cursor {
            line,
            offset: offset.parse().ok()?,
        })
    }

    /// The `next` cursor's text.
    pub fn encode(self) -> String {
        format!("{}:{}", self.line, self.offset)
    }
}

/// What to look for.
#[derive(Debug, Clone)]
pub struct Query {
    /// The literal text (lowercased when not case sensitive).
    needle: String,
    /// Compare exactly.
    case_sensitive: bool,
    /// Most matches per page.
    limit: usize,
}

impl Query {
    /// A query; `None` for an empty or oversize `text` (over [`MAX_QUERY`] bytes).
    pub fn new(text: &str, case_sensitive: bool, limit: usize) -> Option<Query> {
        if text.is_empty() || text.len() > MAX_QUERY {
            return None;
        }
        Some(Query {
            needle: if case_sensitive {
                text.to_string()
            } else {
                text.to_lowercase()
            },
            case_sensitive,
            limit: limit.max(1),
        })
    }

    /// The line's visible text when it matches.
    fn matches(&self, line: &[u8]) -> Option<String> {
        let text = String::from_utf8_lossy(&visible(line)).into_owned();
        let hit = if self.case_sensitive {
            text.contains(&self.needle)
        } else {
            text.to_lowercase().contains(&self.needle)
        };
        hit.then_some(text)
    }
}

/// Why a page could not be read.
#[derive(Debug)]
pub enum SearchEnd {
    /// The cursor points below the first stored byte: the output cap dropped that part.
    CursorGone,
}

/// One page of a search from `from` (the first stored line when `None`).
pub async fn search(
    store: &dyn Store,
    job_id: &str,
    query: &Query,
    from: Option<Cursor>,
) -> StoreResult<Result<OutputSearch, SearchEnd>> {
    let first = match store.chunk_index_at(job_id, 0).await? {
        Some(idx) => store.read_chunks(job_id, idx, 1).await?.into_iter().next(),
        None => None,
    };
    let start_offset = first.map_or(0, |c| c.offset);
    let mut at = from.unwrap_or(Cursor {
        line: 1,
        offset: start_offset,
    });
    if at.offset < start_offset {
        return Ok(Err(SearchEnd::CursorGone));
    }
    let mut out = OutputSearch {
        matches: Vec::new(),
        lines_scanned: 0,
        bytes_scanned: 0,
        start_offset,
        line: at.line,
        offset: at.offset,
        next: None,
    };
    let Some(mut idx) = store.chunk_index_at(job_id, at.offset).await? else {
        return Ok(Ok(out));
    };
    // The line being read: its first LINE_CAP bytes, and where the reader is.
    let mut cur: Vec<u8> = Vec::new();
    let mut pos = at.offset;
    let mut stopped = false;
    'pages: loop {
        let page = store.read_chunks(job_id, idx, PAGE_BYTES).await?;
        let Some(tail) = page.last() else { break };
        idx = tail.index + 1;
        let last_page = page.iter().map(|c| c.data.len()).sum::<usize>() < PAGE_BYTES;
        for c in &page {
            if c.end() <= pos {
                continue;
            }
            if c.offset > pos {
                return Ok(Err(SearchEnd::CursorGone));
            }
            let mut rest = &c.data[(pos - c.offset) as usize..];
            while !rest.is_empty() {
                let (seg, ended) = match rest.iter().position(|b| *b == b'\n') {
                    Some(n) => (&rest[..n], true),
                    None => (rest, false),
                };
                let room = LINE_CAP.saturating_sub(cur.len());
                cur.extend_from_slice(&seg[..seg.len().min(room)]);
                let took = seg.len() + usize::from(ended);
                pos += took as u64;
                out.bytes_scanned += took as u64;
                rest = &rest[took..];
                if !ended {
                    continue;
                }
                finish_line(query, &mut out, &mut at, &mut cur, pos);
                if out.matches.len() >= query.limit || out.bytes_scanned >= SCAN_BUDGET {
                    stopped = true;
                    break 'pages;
                }
            }
        }
        if last_page {
            break;
        }
    }
    if stopped {
        out.next = Some(at.encode());
    } else if !cur.is_empty() {
        // The stored log ends inside a line (a live job mid-line, or no final newline).
        finish_line(query, &mut out, &mut at, &mut cur, pos);
    }
    out.line = at.line;
    out.offset = at.offset;
    Ok(Ok(out))
}

/// Matches the line in `cur` (line `at`), then moves `at` to the next line, starting at `next`.
fn finish_line(
    query: &Query,
    out: &mut OutputSearch,
    at: &mut Cursor,
    cur: &mut Vec<u8>,
    next: u64,
) {
    if let Some(text) = query.matches(cur) {
        let text_truncated = text.chars().count() > TEXT_CAP || cur.len() >= LINE_CAP;
        out.matches.push(OutputMatch {
            line: at.line,
            offset: at.offset,
            text: text.chars().take(TEXT_CAP).collect(),
            text_truncated,
        });
    }
    cur.clear();
    out.lines_scanned += 1;
    *at = Cursor {
        line: at.line + 1,
        offset: next,
    };
}

/// A line as a terminal shows it, roughly: CSI, OSC and other escape sequences and control
/// bytes (but tab) removed, a carriage return ending the text so far (a progress bar's last
/// state is what remains) unless nothing follows it.
pub fn visible(line: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(line.len());
    let mut i = 0;
    while i < line.len() {
        let b = line[i];
        i += 1;
        match b {
            0x1b => match line.get(i) {
                Some(b'[') => {
                    i += 1;
                    while i < line.len() && !(0x40..=0x7e).contains(&line[i]) {
                        i += 1;
                    }
                    i += 1;
                }
                Some(b']') => {
                    i += 1;
                    while i < line.len() && line[i] != 0x07 && line[i] != 0x1b {
                        i += 1;
                    }
                    // BEL, or ESC of the `ESC \` terminator.
                    i += if line.get(i) == Some(&0x1b) { 2 } else { 1 };
                }
                Some(_) => i += 1,
                None => {}
            },
            b'\r' => {
                if line[i..].iter().any(|b| !b.is_ascii_whitespace()) {
                    out.clear();
                }
            }
            b'\t' => out.push(b),
            0..=0x1f | 0x7f => {}
            _ => out.push(b),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visible_drops_escapes_and_keeps_a_progress_bars_last_state() {
        assert_eq!(visible(b"\x1b[1;31mERROR\x1b[0m: x"), b"ERROR: x");
        assert_eq!(visible(b"\x1b]8;;http://a\x07link\x1b]8;;\x1b\\"), b"link");
        assert_eq!(visible(b"10%\r50%\r100% done"), b"100% done");
        assert_eq!(visible(b"crlf line\r"), b"crlf line");
        assert_eq!(visible(b"a\tb\x07c"), b"a\tbc");
    }

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let c = Cursor {
            line: 12,
            offset: 345,
        };
        assert_eq!(Cursor::parse(&c.encode()), Some(c));
        for bad in ["", "12", "0:5", "x:1", "1:-1", "1:2:3"] {
            assert_eq!(Cursor::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn queries_fold_case_unless_asked_not_to() {
        let q = Query::new("échec", false, 10).expect("valid");
        assert!(q.matches("TOTAL ÉCHEC".as_bytes()).is_some());
        let q = Query::new("Error", true, 10).expect("valid");
        assert!(q.matches(b"error").is_none());
        assert!(q.matches(b"\x1b[31mError\x1b[0m").is_some());
        assert!(Query::new("", false, 10).is_none());
        assert!(Query::new(&"x".repeat(MAX_QUERY + 1), false, 10).is_none());
    }
}
