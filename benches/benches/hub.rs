//! Criterion benches of the hub's hot paths.
//!
//! - `store/*`: a job's three durable writes (submit = insert, claim = queued -> assigned,
//!   finish = running -> completed) on a real sled store, alone and as a batch of 100 sharing
//!   one group-commit flush (what the hub does under load).
//! - `dispatch/plan`: matching 512 queued jobs to free slots among 1,000 workers, tagless and
//!   with 8 tag sets.
//! - `relay/*`: appending an output chunk (store + broadcast) and fanning 100 chunks out to 100
//!   live subscribers through `relay::subscribe`, including the JSON encoding (shared by
//!   subscribers of the same chunk).
//!
//! ZIP extraction is not benched here: it lives in the agent's private `extract` module and the
//! agent crate exposes no function for it.

#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use cmdx_benches::{queued_job, temp_store, worker};
use cmdx_hub::dispatch::Dispatch;
use cmdx_hub::queue::Entry;
use cmdx_hub::relay::{self, Relay};
use cmdx_hub::store::{JobRecord, Store};
use cmdx_proto::agent::HubMsg;
use cmdx_proto::{JobStatus, Outcome, StreamKind};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use tokio::sync::mpsc;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn claim(job: &mut JobRecord) -> cmdx_hub::store::StoreResult<()> {
    job.status = JobStatus::Assigned;
    job.queue_seq = None;
    job.attempt += 1;
    job.worker_id = Some("w".into());
    job.token_id = Some("t".into());
    Ok(())
}

fn finish(job: &mut JobRecord) -> cmdx_hub::store::StoreResult<()> {
    job.status = JobStatus::Completed;
    job.outcome = Some(Outcome {
        exit_code: Some(0),
        ..Outcome::default()
    });
    Ok(())
}

fn store(c: &mut Criterion) {
    let rt = rt();
    let (store, _dir) = temp_store();
    let mut g = c.benchmark_group("store");
    g.throughput(Throughput::Elements(1));
    g.bench_function("submit", |b| {
        b.iter(|| {
            let job = queued_job(store.next_seq().expect("seq"));
            rt.block_on(store.insert_job(&job)).expect("insert");
        })
    });
    g.bench_function("claim", |b| {
        b.iter_batched(
            || {
                let job = queued_job(store.next_seq().expect("seq"));
                rt.block_on(store.insert_job(&job)).expect("insert");
                job.id
            },
            |id| rt.block_on(store.update_job(&id, &claim)).expect("claim"),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("finish", |b| {
        b.iter_batched(
            || {
                let job = queued_job(store.next_seq().expect("seq"));
                rt.block_on(store.insert_job(&job)).expect("insert");
                rt.block_on(store.update_job(&job.id, &claim))
                    .expect("claim");
                job.id
            },
            |id| rt.block_on(store.update_job(&id, &finish)).expect("finish"),
            BatchSize::SmallInput,
        )
    });
    g.throughput(Throughput::Elements(100));
    g.sample_size(20);
    g.bench_function("lifecycle_x100_one_flush_each_step", |b| {
        b.iter(|| {
            rt.block_on(async {
                let mut ids = Vec::with_capacity(100);
                for _ in 0..100 {
                    let job = queued_job(store.next_seq().expect("seq"));
                    store.insert_job(&job).await.expect("insert");
                    ids.push(job.id);
                }
                store.sync().await.expect("sync");
                for id in &ids {
                    store.update_job(id, &claim).await.expect("claim");
                }
                store.sync().await.expect("sync");
                for id in &ids {
                    store.update_job(id, &finish).await.expect("finish");
                }
                store.sync().await.expect("sync");
            })
        })
    });
    g.finish();
}

fn dispatch_plan(c: &mut Criterion) {
    let mut g = c.benchmark_group("dispatch");
    // One user, then 100 users with mixed priorities (the fair queue's worst ordinary case).
    for (tag_sets, users) in [(1usize, 1usize), (8, 1), (1, 100), (8, 100)] {
        let d = Dispatch::default();
        let mut rxs = Vec::new();
        let tags: Vec<Vec<String>> = (0..tag_sets)
            .map(|i| {
                if i == 0 {
                    Vec::new()
                } else {
                    vec![format!("t{i}")]
                }
            })
            .collect();
        for w in 0..1000 {
            let (tx, rx) = mpsc::channel::<Box<HubMsg>>(4);
            rxs.push(rx);
            let wtags: Vec<&str> = tags[w % tag_sets].iter().map(String::as_str).collect();
            d.connect(
                worker(&format!("w{w}"), 1, &wtags),
                "bench-token".into(),
                tx,
                tokio_util::sync::CancellationToken::new(),
            );
        }
        let mut seq = 0u64;
        g.throughput(Throughput::Elements(512));
        g.bench_function(
            format!("plan_512_of_1000_workers_{tag_sets}_tag_sets_{users}_users"),
            |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        for i in 0..512 {
                            seq += 1;
                            let entry = Entry {
                                seq,
                                job_id: format!("job{seq}"),
                                priority: if users > 1 { (i % 3) as i32 - 1 } else { 0 },
                                owner: format!("user{}", i % users),
                            };
                            d.enqueue(&tags[i % tag_sets], entry);
                        }
                        let t = Instant::now();
                        let planned = d.plan(512);
                        total += t.elapsed();
                        // Every job has free matching workers: the index is empty again.
                        assert_eq!(planned.len(), 512, "all jobs matched");
                        for p in planned {
                            d.release(&p.worker_id, &p.job_id);
                        }
                    }
                    total
                })
            },
        );
        drop(rxs);
    }
    g.finish();
}

fn relay_bench(c: &mut Criterion) {
    let rt = rt();
    let (store, _dir) = temp_store();
    let store: Arc<dyn Store> = Arc::new(store);
    let mut g = c.benchmark_group("relay");
    let data = vec![b'x'; 256];

    // Append only (no subscriber): store write + broadcast.
    let relay = Relay::new(64 << 20);
    let mut log = rt.block_on(relay.log("append-job"));
    rt.block_on(log.load(store.as_ref(), 1, ("w".into(), "t".into()), 0))
        .expect("state");
    g.throughput(Throughput::Elements(1));
    g.bench_function("append_256B", |b| {
        b.iter(|| {
            rt.block_on(log.append(store.as_ref(), StreamKind::Stdout, data.clone()))
                .expect("append")
        })
    });

    // Fan-out: 100 live subscribers, 100 chunks per iteration, each message JSON-encoded as the
    // client socket does.
    const SUBS: usize = 100;
    const CHUNKS: usize = 100;
    g.throughput(Throughput::Elements((SUBS * CHUNKS) as u64));
    g.sample_size(20);
    let mut n = 0u64;
    g.bench_function("fanout_100_chunks_to_100_subscribers", |b| {
        b.iter(|| {
            n += 1;
            let job = format!("fan-{n}");
            let relay = Arc::new(Relay::new(64 << 20));
            rt.block_on(async {
                let mut log = relay.log(&job).await;
                log.load(store.as_ref(), 1, ("w".into(), "t".into()), 0)
                    .await
                    .expect("state");
                let mut readers = Vec::with_capacity(SUBS);
                for _ in 0..SUBS {
                    let (tx, mut rx) = mpsc::channel::<relay::Queued>(16);
                    let out = relay::Outbox::new(tx, 512 * 1024);
                    let (store, relay, job) = (store.clone(), relay.clone(), job.clone());
                    tokio::spawn(async move {
                        let _ = relay::subscribe(store.as_ref(), &relay, &job, 0, &out, || async {
                            Ok(false)
                        })
                        .await;
                    });
                    readers.push(tokio::spawn(async move {
                        let mut got = 0usize;
                        while got < CHUNKS {
                            match rx.recv().await {
                                Some(q) if q.msg.starts_with(r#"{"type":"output""#) => {
                                    std::hint::black_box(q);
                                    got += 1;
                                }
                                Some(_) => {}
                                None => break,
                            }
                        }
                        got
                    }));
                }
                // Let the subscriptions attach before appending.
                while relay.subscribers() < SUBS {
                    tokio::task::yield_now().await;
                }
                for _ in 0..CHUNKS {
                    log.append(store.as_ref(), StreamKind::Stdout, data.clone())
                        .await
                        .expect("append");
                }
                for r in readers {
                    r.await.expect("reader");
                }
                relay.end(&job);
            })
        })
    });
    g.finish();
}

criterion_group!(benches, store, dispatch_plan, relay_bench);
criterion_main!(benches);
