//! Reading a job's stdout and stderr into numbered-later output batches.
//!
//! One pump per job reads both pipes and emits a batch when it reaches [`BATCH_BYTES`], when
//! [`BATCH_DELAY`] passed since its first byte, or when the other stream produces bytes (a
//! chunk carries one stream; switching flushes, so the interleaving the agent saw is kept).
//! Before emitting, the pump takes as many permits from the job's output window as the batch
//! has bytes; the core returns them when the hub acknowledges the chunk. A full window
//! therefore stops the pump reading, the pipes fill up, and the job blocks on `write`:
//! output is never dropped.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use cmdx_proto::StreamKind;
use cmdx_proto::agent::JobRef;
use tokio::io::{AsyncRead, AsyncReadExt as _};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::Instant;

use crate::core::JobEvent;

/// Largest batch.
pub(crate) const BATCH_BYTES: usize = 32 * 1024;
/// Longest time a byte waits in a batch.
pub(crate) const BATCH_DELAY: Duration = Duration::from_millis(20);
/// How long the pump keeps reading after the job ended (pipes normally hit EOF at once, as
/// the sandbox kills the job's cgroup; this bounds a pipe held open by anything else).
const LINGER: Duration = Duration::from_secs(2);

/// Where a pump delivers its batches.
pub(crate) struct OutputSink {
    /// The job the output belongs to.
    pub job: JobRef,
    /// Unacknowledged-bytes window of the job.
    pub window: Arc<Semaphore>,
    /// The core's event channel.
    pub events: mpsc::Sender<JobEvent>,
}

impl OutputSink {
    /// Waits for window space, then hands the batch to the core. False when the job is
    /// abandoned (window closed) or the core is gone: stop reading.
    /// Sends a line of the agent's own (a pull's progress) in the job's output.
    pub(crate) async fn say(&self, stream: StreamKind, text: &str) -> bool {
        for part in text.as_bytes().chunks(BATCH_BYTES) {
            if !self.emit(stream, part.to_vec()).await {
                return false;
            }
        }
        true
    }

    async fn emit(&self, stream: StreamKind, data: Vec<u8>) -> bool {
        let n = u32::try_from(data.len()).expect("batches are at most 32 KiB");
        match self.window.acquire_many(n).await {
            Ok(permit) => permit.forget(),
            Err(_) => return false,
        }
        self.events
            .send(JobEvent::Output {
                job: self.job.clone(),
                stream,
                data,
            })
            .await
            .is_ok()
    }
}

/// Output cap of one job: the first `head` bytes stream live; after that only the last
/// `tail` bytes are kept and sent when the job ends, after a line saying how much was
/// omitted. The job keeps running (its pipes are still drained), so it ends on its own terms.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OutputCap {
    /// Bytes streamed live.
    pub head: u64,
    /// Bytes kept from the end.
    pub tail: usize,
}

/// What a pump did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct PumpStats {
    /// Bytes read from the pipes.
    pub bytes: u64,
    /// The cap was hit and bytes were omitted.
    pub truncated: bool,
}

/// Tracks the cap: how much may still stream live, and the kept tail.
struct Limiter {
    head_left: u64,
    tail_cap: usize,
    ring: VecDeque<(StreamKind, Vec<u8>)>,
    ring_len: usize,
    omitted: u64,
    capped: bool,
}

impl Limiter {
    fn new(cap: Option<OutputCap>) -> Self {
        Self {
            head_left: cap.map_or(u64::MAX, |c| c.head),
            tail_cap: cap.map_or(0, |c| c.tail),
            ring: VecDeque::new(),
            ring_len: 0,
            omitted: 0,
            capped: false,
        }
    }

    /// How many of the next `n` bytes may stream live.
    fn take_head(&mut self, n: usize) -> usize {
        let keep = usize::try_from(self.head_left).unwrap_or(usize::MAX).min(n);
        self.head_left -= keep as u64;
        keep
    }

    /// Keeps `data` as part of the tail, dropping the oldest kept bytes beyond the cap.
    fn push_tail(&mut self, stream: StreamKind, data: &[u8]) {
        self.capped = true;
        match self.ring.back_mut() {
            Some((s, last)) if *s == stream => last.extend_from_slice(data),
            _ => self.ring.push_back((stream, data.to_vec())),
        }
        self.ring_len += data.len();
        while self.ring_len > self.tail_cap {
            let excess = self.ring_len - self.tail_cap;
            let (_, front) = self.ring.front_mut().expect("ring holds the excess");
            if front.len() <= excess {
                let n = front.len();
                self.ring.pop_front();
                self.ring_len -= n;
                self.omitted += n as u64;
            } else {
                front.drain(..excess);
                self.ring_len -= excess;
                self.omitted += excess as u64;
            }
        }
    }
}

/// Reads from `r` if present; never completes otherwise.
async fn read_opt<R: AsyncRead + Unpin>(r: &mut Option<R>, buf: &mut [u8]) -> io::Result<usize> {
    match r {
        Some(r) => r.read(buf).await,
        None => std::future::pending().await,
    }
}

/// Pumps both pipes until both reach EOF (or [`LINGER`] after `exited` turns true, or the
/// sink closes), applying the output cap when given.
pub(crate) async fn pump<O, E>(
    stdout: Option<O>,
    stderr: Option<E>,
    sink: OutputSink,
    mut exited: watch::Receiver<bool>,
    cap: Option<OutputCap>,
) -> PumpStats
where
    O: AsyncRead + Unpin,
    E: AsyncRead + Unpin,
{
    let mut out = stdout;
    let mut err = stderr;
    let mut buf_out = vec![0u8; BATCH_BYTES];
    let mut buf_err = vec![0u8; BATCH_BYTES];
    let mut batch: Vec<u8> = Vec::with_capacity(BATCH_BYTES);
    let mut batch_stream = StreamKind::Stdout;
    let mut flush_at: Option<Instant> = None;
    let mut linger_until: Option<Instant> = None;
    let mut exited_open = true;
    let mut total = 0u64;
    let mut limiter = Limiter::new(cap);

    macro_rules! flush {
        () => {
            flush_at = None;
            if !batch.is_empty() {
                let data = std::mem::replace(&mut batch, Vec::with_capacity(BATCH_BYTES));
                if !sink.emit(batch_stream, data).await {
                    return PumpStats {
                        bytes: total,
                        truncated: limiter.capped,
                    };
                }
            }
        };
    }

    loop {
        if out.is_none() && err.is_none() {
            break;
        }
        let room = |s: StreamKind, len: usize, cur: StreamKind| {
            if s == cur {
                BATCH_BYTES - len
            } else {
                BATCH_BYTES
            }
        };
        let room_out = room(StreamKind::Stdout, batch.len(), batch_stream);
        let room_err = room(StreamKind::Stderr, batch.len(), batch_stream);
        let (stream, n) = tokio::select! {
            biased;
            () = sleep_opt(flush_at) => {
                flush!();
                continue;
            }
            () = sleep_opt(linger_until) => break,
            r = read_opt(&mut out, &mut buf_out[..room_out]) => match r {
                Ok(0) | Err(_) => { out = None; continue; }
                Ok(n) => (StreamKind::Stdout, n),
            },
            r = read_opt(&mut err, &mut buf_err[..room_err]) => match r {
                Ok(0) | Err(_) => { err = None; continue; }
                Ok(n) => (StreamKind::Stderr, n),
            },
            changed = exited.changed(), if exited_open => {
                match changed {
                    Ok(()) if *exited.borrow() => linger_until = Some(Instant::now() + LINGER),
                    Ok(()) => {}
                    Err(_) => exited_open = false,
                }
                continue;
            }
        };
        total += n as u64;
        let src = match stream {
            StreamKind::Stdout => &buf_out[..n],
            StreamKind::Stderr => &buf_err[..n],
        };
        let live = limiter.take_head(n);
        if live < n {
            limiter.push_tail(stream, &src[live..]);
        }
        if live == 0 {
            continue;
        }
        if stream != batch_stream && !batch.is_empty() {
            flush!();
        }
        batch_stream = stream;
        batch.extend_from_slice(&src[..live]);
        if batch.len() >= BATCH_BYTES || live < n {
            flush!();
        } else if flush_at.is_none() {
            flush_at = Some(Instant::now() + BATCH_DELAY);
        }
    }
    if !batch.is_empty() && !sink.emit(batch_stream, batch).await {
        return PumpStats {
            bytes: total,
            truncated: limiter.capped,
        };
    }
    if limiter.capped {
        let note = format!(
            "\n[cmdx: output cap reached, {} bytes omitted; the last {} bytes follow]\n",
            limiter.omitted, limiter.ring_len
        );
        let mut pieces = vec![(StreamKind::Stderr, note.into_bytes())];
        pieces.extend(limiter.ring.drain(..));
        'emit: for (stream, data) in pieces {
            for part in data.chunks(BATCH_BYTES) {
                if !sink.emit(stream, part.to_vec()).await {
                    break 'emit;
                }
            }
        }
    }
    PumpStats {
        bytes: total,
        truncated: limiter.capped,
    }
}

async fn sleep_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt as _;

    fn sink(window: u32) -> (OutputSink, mpsc::Receiver<JobEvent>, Arc<Semaphore>) {
        let (tx, rx) = mpsc::channel(64);
        let window = Arc::new(Semaphore::new(window as usize));
        (
            OutputSink {
                job: JobRef {
                    job_id: "j".into(),
                    attempt: 1,
                },
                window: window.clone(),
                events: tx,
            },
            rx,
            window,
        )
    }

    fn output(ev: JobEvent) -> (StreamKind, Vec<u8>) {
        match ev {
            JobEvent::Output { stream, data, .. } => (stream, data),
            _ => panic!("expected output"),
        }
    }

    #[tokio::test]
    async fn batches_by_size_and_switches_streams() {
        let (sink, mut rx, _) = sink(1 << 20);
        let (mut w_out, r_out) = tokio::io::duplex(1 << 20);
        let (mut w_err, r_err) = tokio::io::duplex(1 << 20);
        let (_tx, exited) = watch::channel(false);
        let task = tokio::spawn(pump(Some(r_out), Some(r_err), sink, exited, None));
        w_out
            .write_all(&vec![b'a'; BATCH_BYTES + 10])
            .await
            .unwrap();
        let (s, d) = output(rx.recv().await.unwrap());
        assert_eq!((s, d.len()), (StreamKind::Stdout, BATCH_BYTES));
        w_err.write_all(b"err").await.unwrap();
        let (s, d) = output(rx.recv().await.unwrap());
        assert_eq!((s, d), (StreamKind::Stdout, vec![b'a'; 10]));
        let (s, d) = output(rx.recv().await.unwrap());
        assert_eq!((s, d), (StreamKind::Stderr, b"err".to_vec()));
        drop(w_out);
        drop(w_err);
        assert_eq!(task.await.unwrap().bytes, BATCH_BYTES as u64 + 13);
        assert!(rx.recv().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn small_writes_are_flushed_after_the_batch_delay() {
        let (sink, mut rx, _) = sink(1 << 20);
        let (mut w_out, r_out) = tokio::io::duplex(1024);
        let (_tx, exited) = watch::channel(false);
        let _task = tokio::spawn(pump(
            Some(r_out),
            None::<tokio::io::DuplexStream>,
            sink,
            exited,
            None,
        ));
        w_out.write_all(b"hi").await.unwrap();
        let t0 = Instant::now();
        let (_, d) = output(rx.recv().await.unwrap());
        assert_eq!(d, b"hi");
        assert_eq!(t0.elapsed(), BATCH_DELAY);
    }

    #[tokio::test]
    async fn a_full_window_stops_reading_until_permits_return() {
        let (sink, mut rx, window) = sink(BATCH_BYTES as u32);
        let (mut w_out, r_out) = tokio::io::duplex(BATCH_BYTES);
        let (_tx, exited) = watch::channel(false);
        let _task = tokio::spawn(pump(
            Some(r_out),
            None::<tokio::io::DuplexStream>,
            sink,
            exited,
            None,
        ));
        w_out.write_all(&vec![1; BATCH_BYTES]).await.unwrap();
        assert_eq!(output(rx.recv().await.unwrap()).1.len(), BATCH_BYTES);
        // The window is now empty: the pump may read one more batch but not emit it, so the
        // writer blocks once the duplex buffer is full too.
        let big = vec![2; 3 * BATCH_BYTES];
        let write = tokio::spawn(async move { w_out.write_all(&big).await });
        let blocked = tokio::time::timeout(Duration::from_millis(200), rx.recv()).await;
        assert!(
            blocked.is_err(),
            "no chunk may be emitted while the window is full"
        );
        assert!(!write.is_finished());
        window.add_permits(3 * BATCH_BYTES);
        let mut got = 0;
        while got < 3 * BATCH_BYTES {
            got += output(rx.recv().await.unwrap()).1.len();
        }
        assert_eq!(got, 3 * BATCH_BYTES);
        write.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn the_cap_streams_the_head_and_keeps_the_tail() {
        let (sink, mut rx, _) = sink(16 << 20);
        let (mut w_out, r_out) = tokio::io::duplex(1 << 16);
        let (mut w_err, r_err) = tokio::io::duplex(1 << 16);
        let (_tx, exited) = watch::channel(false);
        let cap = OutputCap {
            head: 100_000,
            tail: 1000,
        };
        let task = tokio::spawn(pump(Some(r_out), Some(r_err), sink, exited, Some(cap)));
        let mut data = Vec::new();
        for i in 0..50_000u32 {
            data.extend_from_slice(format!("{i:08}\n").as_bytes());
        }
        w_out.write_all(&data).await.unwrap();
        drop(w_out);
        w_err.write_all(b"the end\n").await.unwrap();
        drop(w_err);
        let stats = task.await.unwrap();
        assert_eq!(stats.bytes, data.len() as u64 + 8);
        assert!(stats.truncated);
        let mut events = Vec::new();
        while let Ok(ev) = rx.try_recv() {
            events.push(output(ev));
        }
        let head: Vec<u8> = events
            .iter()
            .take_while(|(s, _)| *s == StreamKind::Stdout)
            .flat_map(|(_, d)| d.clone())
            .collect();
        assert_eq!(head, data[..100_000]);
        let rest = &events[events
            .iter()
            .position(|(s, _)| *s == StreamKind::Stderr)
            .unwrap()..];
        let note = String::from_utf8(rest[0].1.clone()).unwrap();
        let omitted = data.len() + 8 - 100_000 - 1000;
        assert!(note.contains(&format!("{omitted} bytes omitted")), "{note}");
        let tail: Vec<u8> = rest[1..].iter().flat_map(|(_, d)| d.clone()).collect();
        let mut want = data[data.len() - 992..].to_vec();
        want.extend_from_slice(b"the end\n");
        assert_eq!(tail, want);
        assert_eq!(rest.last().unwrap().0, StreamKind::Stderr);
    }
}
