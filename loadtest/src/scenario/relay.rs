//! `relay`: one job streams output chunks at R chunks/s for the duration to K browser-like
//! subscribers (`/ws/client`, `subscribeOutput` from offset 0). Each chunk carries its sequence
//! number and send time; every subscriber checks that its bytes are contiguous and that their
//! checksum and length equal what the worker sent. Measures chunk deliveries/s, ingest ->
//! subscriber latency and bytes lost.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use cmdx_proto::agent::{AgentMsg, Finished, HubMsg, JobRef, OutputChunk, Started};
use cmdx_proto::client::ServerMsg;
use cmdx_proto::{Bytes64, Outcome, StreamKind};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::{duration, note, sample_window, setup, us};
use crate::Cli;
use crate::stats::{Hist, Report, at_us, now_us, rate};
use crate::target::Target;
use crate::worker::{self, Ws};

/// Most chunks sent but not yet acknowledged (a real agent keeps them for resending too).
const WINDOW: u64 = 4096;

/// FNV-1a, 64 bit: cheap enough to run over every subscriber's bytes.
#[derive(Clone, Copy)]
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn update(&mut self, data: &[u8]) {
        for b in data {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// Chunk `seq`: `[seq u64 BE][send time µs u64 BE][filler]`, `size` bytes.
fn chunk(seq: u64, send_us: u64, size: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(size);
    v.extend_from_slice(&seq.to_be_bytes());
    v.extend_from_slice(&send_us.to_be_bytes());
    v.resize(size, b'a' + (seq % 26) as u8);
    v
}

struct SubResult {
    bytes: u64,
    hash: u64,
    hist: Hist,
    errors: u64,
}

/// Shared by subscribers: chunk deliveries and the latency window.
struct Live {
    deliveries: AtomicU64,
    warm_us: AtomicU64,
    end_us: AtomicU64,
}

async fn subscriber(mut ws: Ws, job_id: String, size: usize, live: Arc<Live>) -> SubResult {
    let mut res = SubResult {
        bytes: 0,
        hash: Fnv::new().0,
        hist: Hist::default(),
        errors: 0,
    };
    let mut fnv = Fnv::new();
    let sub = json!({"type": "subscribeOutput", "jobId": job_id, "offset": 0}).to_string();
    if ws.send(Message::text(sub)).await.is_err() {
        res.errors += 1;
        return res;
    }
    let mut expect = 0u64;
    loop {
        let msg = match tokio::time::timeout(Duration::from_secs(60), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => match serde_json::from_str::<ServerMsg>(&t) {
                Ok(m) => m,
                Err(_) => {
                    res.errors += 1;
                    continue;
                }
            },
            Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) | Err(_) => {
                res.errors += 1;
                break;
            }
            Ok(Some(Ok(_))) => continue,
        };
        match msg {
            ServerMsg::Output { offset, data, .. } => {
                let now = now_us();
                if offset != expect {
                    // A gap or a duplicate: the relay broke its promise.
                    res.errors += 1;
                }
                let data = data.0;
                let size = size as u64;
                let first = offset.div_ceil(size) * size;
                let (warm, end) = (
                    live.warm_us.load(Ordering::Relaxed),
                    live.end_us.load(Ordering::Relaxed),
                );
                let mut p = first;
                let mut n = 0;
                while p < offset + data.len() as u64 {
                    n += 1;
                    let i = (p - offset) as usize;
                    if let Some(h) = data.get(i + 8..i + 16) {
                        let sent = u64::from_be_bytes(h.try_into().unwrap_or([0; 8]));
                        if sent >= warm && sent < end {
                            res.hist.record_us(now.saturating_sub(sent));
                        }
                    }
                    p += size;
                }
                live.deliveries.fetch_add(n, Ordering::Relaxed);
                fnv.update(&data);
                expect = offset + data.len() as u64;
                res.bytes += data.len() as u64;
            }
            ServerMsg::OutputEnd { .. } => break,
            // Nothing is dropped or retried in this scenario.
            ServerMsg::OutputSkipped { .. }
            | ServerMsg::OutputAttempt { .. }
            | ServerMsg::Error(_) => res.errors += 1,
            ServerMsg::Queued { .. } | ServerMsg::Job(_) | ServerMsg::Worker(_) => {}
        }
    }
    res.hash = fnv.0;
    let _ = ws.close(None).await;
    res
}

async fn send(ws: &mut Ws, m: &AgentMsg) -> anyhow::Result<()> {
    worker::feed(ws, m).await?;
    ws.flush().await.context("flushing")
}

/// Runs the scenario.
pub async fn run(cli: &Cli, target: &Arc<Target>) -> anyhow::Result<Report> {
    let k = cli.subscribers.unwrap_or(100);
    let chunks_per_sec = cli.rate.unwrap_or(2500.0);
    let secs = duration(cli, 10.0);
    let warm = cli.warmup_for(secs);
    let size = cli.output_bytes.unwrap_or(256).max(16);
    let token = setup(target.worker_token().await, "worker token")?;
    let mut ws = setup(
        worker::enrol(target, &token, "relay-worker", 1, false).await,
        "relay worker",
    )?;
    let v = setup(
        target
            .call(
                http::Method::POST,
                "/api/jobs/submit",
                Some(&target.admin),
                Some(json!({"command": "relay", "timeout": 3600})),
            )
            .await,
        "submitting the relay job",
    )?;
    let job_id = v["jobId"].as_str().context("no jobId")?.to_string();
    let attempt = loop {
        match tokio::time::timeout(Duration::from_secs(30), worker::recv(&mut ws)).await {
            Ok(Ok(Some(HubMsg::Assign(a)))) if a.job_id == job_id => break a.attempt,
            Ok(Ok(Some(_))) => {}
            _ => bail!("setup: the relay job was not assigned"),
        }
    };
    let job = JobRef {
        job_id: job_id.clone(),
        attempt,
    };
    worker::feed(&mut ws, &AgentMsg::Accept(job.clone())).await?;
    send(
        &mut ws,
        &AgentMsg::Started(Started {
            job_id: job_id.clone(),
            attempt,
            isolation: Vec::new(),
        }),
    )
    .await?;

    // Subscribers, at a measured pace.
    let live = Arc::new(Live {
        deliveries: AtomicU64::new(0),
        warm_us: AtomicU64::new(u64::MAX),
        end_us: AtomicU64::new(u64::MAX),
    });
    let pace = cli.connect_rate.unwrap_or(2000.0);
    let gap = Duration::from_secs_f64(1.0 / pace.max(1.0));
    let mut subs = tokio::task::JoinSet::new();
    let mut connect_errors = 0u64;
    let t0 = Instant::now();
    for i in 0..k {
        tokio::time::sleep_until(t0 + gap * i as u32).await;
        match worker::connect_ws(target, "/ws/client", &target.admin, false).await {
            Ok(s) => {
                subs.spawn(subscriber(s, job_id.clone(), size, live.clone()));
            }
            Err(_) => connect_errors += 1,
        }
    }
    // Let every subscription reach the hub before streaming (a late one would replay anyway).
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Stream: acknowledgements are read by their own task.
    let (mut sink, mut stream) = ws.split();
    let acked = Arc::new(AtomicU64::new(0));
    let finished = Arc::new(AtomicBool::new(false));
    let reader = {
        let (acked, finished) = (acked.clone(), finished.clone());
        tokio::spawn(async move {
            while let Some(Ok(m)) = stream.next().await {
                if let Message::Text(t) = m {
                    match serde_json::from_str::<HubMsg>(&t) {
                        Ok(HubMsg::OutputAck(a)) => {
                            acked.fetch_max(a.stored_chunks, Ordering::Relaxed);
                        }
                        Ok(HubMsg::FinishedAck(_)) => {
                            finished.store(true, Ordering::Relaxed);
                            break;
                        }
                        _ => {}
                    }
                }
            }
        })
    };
    let total = (chunks_per_sec * secs).round() as u64;
    let start_us = now_us() + 100_000;
    let (warm_us, end_us) = (start_us + us(warm), start_us + us(secs));
    live.warm_us.store(warm_us, Ordering::Relaxed);
    live.end_us.store(end_us, Ordering::Relaxed);
    let counter = live.clone();
    let sampler = sample_window(target.pid, warm_us, end_us, move || {
        counter.deliveries.load(Ordering::Relaxed)
    });
    let gap_us = 1e6 / chunks_per_sec.max(1e-3);
    let mut fnv = Fnv::new();
    let mut sent_bytes = 0u64;
    let mut stalls = 0u64;
    for seq in 0..total {
        let intended = start_us + (seq as f64 * gap_us) as u64;
        tokio::time::sleep_until(at_us(intended).into()).await;
        while seq >= acked.load(Ordering::Relaxed) + WINDOW {
            stalls += 1;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let data = chunk(seq, now_us(), size);
        fnv.update(&data);
        sent_bytes += data.len() as u64;
        let m = AgentMsg::Output(OutputChunk {
            job_id: job_id.clone(),
            attempt,
            seq,
            stream: StreamKind::Stdout,
            data: Bytes64(data),
        });
        sink.send(Message::text(serde_json::to_string(&m)?))
            .await
            .context("streaming output")?;
    }
    let sampled = sampler.await??;
    let fin = AgentMsg::Finished(Finished {
        job_id: job_id.clone(),
        attempt,
        chunks: total,
        outcome: Outcome {
            exit_code: Some(0),
            ..Outcome::default()
        },
    });
    sink.send(Message::text(serde_json::to_string(&fin)?))
        .await
        .context("sending finished")?;
    let _ = tokio::time::timeout(Duration::from_secs(60), reader).await;

    let mut hist = Hist::default();
    let (mut errors, mut lost) = (connect_errors, connect_errors * sent_bytes);
    let wait = tokio::time::timeout(Duration::from_secs(120), async {
        let mut out = Vec::new();
        while let Some(r) = subs.join_next().await {
            out.push(r);
        }
        out
    })
    .await
    .context("subscribers did not finish within 120 s")?;
    for r in wait {
        match r {
            Ok(s) => {
                hist.merge(&s.hist);
                errors += s.errors;
                if s.bytes != sent_bytes || s.hash != fnv.0 {
                    errors += 1;
                }
                lost += sent_bytes.saturating_sub(s.bytes);
            }
            Err(_) => {
                errors += 1;
                lost += sent_bytes;
            }
        }
    }
    if !finished.load(Ordering::Relaxed) {
        errors += 1;
    }
    let mut r = sampled.report;
    r.workers = Some(1);
    r.deliveries_per_sec = Some(rate(sampled.count, sampled.secs));
    r.errors = errors;
    r.lost = lost;
    r.latency_ms.ingest_to_subscriber = hist.summary();
    note(&mut r, "subscribers", k.to_string());
    note(
        &mut r,
        "offered",
        format!("{chunks_per_sec:.0} chunks/s of {size} B x {k} subscribers"),
    );
    note(&mut r, "sent", format!("{total} chunks, {sent_bytes} B"));
    if stalls > 0 {
        note(&mut r, "ack-window stalls", stalls.to_string());
    }
    Ok(r)
}
