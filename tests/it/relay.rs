//! Output relay: a subscriber joining mid-stream sees every byte once, in order; a subscriber
//! that never reads neither grows hub memory past its bound nor slows the worker.

use cmdx_e2e::{FakeAgent, HubProc, WAIT};
use cmdx_proto::agent::{AgentMsg, Finished, HubMsg, OutputChunk};
use cmdx_proto::client::{ClientMsg, ServerMsg};
use cmdx_proto::{Outcome, StreamKind};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::{Backend, FAST};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn client(hub: &HubProc, token: &str) -> Ws {
    let mut req = hub.ws_url("/ws/client").into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    tokio_tungstenite::connect_async(req).await.unwrap().0
}

async fn send(ws: &mut Ws, m: &ClientMsg) {
    ws.send(Message::text(serde_json::to_string(m).unwrap()))
        .await
        .unwrap();
}

/// Reads output messages until `outputEnd`; returns the bytes and checks offsets are contiguous.
async fn collect(ws: &mut Ws, mut expect_offset: u64) -> (Vec<u8>, ServerMsg) {
    let mut out = Vec::new();
    loop {
        let m = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("output in time")
            .unwrap()
            .unwrap();
        let Message::Text(t) = m else { continue };
        let msg: ServerMsg = serde_json::from_str(&t).unwrap();
        match msg {
            ServerMsg::Output { offset, data, .. } => {
                assert_eq!(offset, expect_offset, "gap or duplicate at offset {offset}");
                expect_offset += data.len() as u64;
                out.extend_from_slice(&data);
            }
            end @ ServerMsg::OutputEnd { .. } => return (out, end),
            ServerMsg::Error(e) => panic!("error {e:?}"),
            _ => {}
        }
    }
}

fn chunk(id: &str, seq: u64) -> (AgentMsg, Vec<u8>) {
    let data = format!("line {seq:05} {}\n", "y".repeat((seq % 50) as usize)).into_bytes();
    let stream = if seq.is_multiple_of(7) {
        StreamKind::Stderr
    } else {
        StreamKind::Stdout
    };
    (
        AgentMsg::Output(OutputChunk {
            job_id: id.into(),
            attempt: 1,
            seq,
            stream,
            data: data.clone().into(),
        }),
        data,
    )
}

on_both_stores!(
    subscriber_joining_mid_stream_sees_every_byte_once,
    subscriber_joining_mid_stream_sees_every_byte_once_on_postgres,
    subscriber_joining_mid_stream_sees_every_byte_once_on
);

async fn subscriber_joining_mid_stream_sees_every_byte_once_on(store: Backend) {
    let hub = store.hub(&[]).await;
    let admin = hub.admin().await;
    let wt = hub.worker_token(&admin).await;
    let user = hub.user(&admin, "watcher@test.local").await;
    let id = hub.submit(&user, json!({"command": "stream"})).await;
    let (mut a, _) = FakeAgent::connect(&hub, &wt, "streamer", 1, vec![])
        .await
        .unwrap();
    a.next_assignment().await.unwrap();
    let mut expected = Vec::new();
    const N: u64 = 3000;
    let mut early = client(&hub, &user).await;
    send(
        &mut early,
        &ClientMsg::SubscribeOutput {
            job_id: id.clone(),
            offset: 0,
        },
    )
    .await;
    let mut late = None;
    for seq in 0..N {
        let (m, d) = chunk(&id, seq);
        a.send(&m).await.unwrap();
        expected.extend_from_slice(&d);
        if seq == N / 2 {
            // Join mid-stream, from the start: replay then live with no seam.
            let mut ws = client(&hub, &user).await;
            send(
                &mut ws,
                &ClientMsg::SubscribeOutput {
                    job_id: id.clone(),
                    offset: 0,
                },
            )
            .await;
            late = Some(ws);
        }
    }
    a.send(&AgentMsg::Finished(Finished {
        job_id: id.clone(),
        attempt: 1,
        chunks: N,
        outcome: Outcome {
            exit_code: Some(0),
            ..Outcome::default()
        },
    }))
    .await
    .unwrap();
    let (got_late, end) = collect(late.as_mut().unwrap(), 0).await;
    assert_eq!(got_late.len(), expected.len());
    assert!(got_late == expected, "late subscriber bytes differ");
    match end {
        ServerMsg::OutputEnd {
            status,
            offset,
            exit_code,
            ..
        } => {
            assert_eq!(status, cmdx_proto::JobStatus::Completed);
            assert_eq!(offset, expected.len() as u64);
            assert_eq!(exit_code, Some(0));
        }
        other => panic!("{other:?}"),
    }
    let (got_early, _) = collect(&mut early, 0).await;
    assert!(got_early == expected, "early subscriber bytes differ");
    // And from an offset after the end of the job: just the tail.
    let mut tail = client(&hub, &user).await;
    let from = expected.len() as u64 - 100;
    send(
        &mut tail,
        &ClientMsg::SubscribeOutput {
            job_id: id.clone(),
            offset: from,
        },
    )
    .await;
    let (got_tail, _) = collect(&mut tail, from).await;
    assert_eq!(got_tail, expected[expected.len() - 100..].to_vec());
    // Another user cannot subscribe: not found.
    let other = hub.user(&admin, "nosy@test.local").await;
    let mut nosy = client(&hub, &other).await;
    send(
        &mut nosy,
        &ClientMsg::SubscribeOutput {
            job_id: id.clone(),
            offset: 0,
        },
    )
    .await;
    let m = tokio::time::timeout(WAIT, nosy.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let msg: ServerMsg = serde_json::from_str(m.to_text().unwrap()).unwrap();
    assert!(
        matches!(msg, ServerMsg::Error(ref e) if e.code == "not_found"),
        "{msg:?}"
    );
}

/// Streams 48 MiB through a fresh hub with `stalled` subscribers that never read; returns the
/// hub's RSS growth in MiB, after checking the worker got every ack and a reader gets every byte.
async fn flood_with_stalled(stalled_n: usize) -> u64 {
    let hub = HubProc::start(FAST).await;
    let admin = hub.admin().await;
    let wt = hub.worker_token(&admin).await;
    let id = hub.submit(&admin, json!({"command": "flood"})).await;
    let (mut a, _) = FakeAgent::connect(&hub, &wt, "flooder", 1, vec![])
        .await
        .unwrap();
    a.next_assignment().await.unwrap();
    let mut stalled = Vec::new();
    for _ in 0..stalled_n {
        let mut ws = client(&hub, &admin).await;
        send(
            &mut ws,
            &ClientMsg::SubscribeOutput {
                job_id: id.clone(),
                offset: 0,
            },
        )
        .await;
        stalled.push(ws);
    }
    let before = hub.rss_kb();
    let block = vec![b'z'; 32 * 1024];
    const N: u64 = 1536;
    for seq in 0..N {
        a.send(&AgentMsg::Output(OutputChunk {
            job_id: id.clone(),
            attempt: 1,
            seq,
            stream: StreamKind::Stdout,
            data: block.clone().into(),
        }))
        .await
        .unwrap();
    }
    // The worker is not held back: every chunk is acknowledged.
    a.recv_until(|m| matches!(m, HubMsg::OutputAck(ref x) if x.stored_chunks == N).then_some(()))
        .await
        .unwrap();
    let growth_mb = hub.rss_kb().saturating_sub(before) / 1024;
    a.send(&AgentMsg::Finished(Finished {
        job_id: id.clone(),
        attempt: 1,
        chunks: N,
        outcome: Outcome {
            exit_code: Some(0),
            ..Outcome::default()
        },
    }))
    .await
    .unwrap();
    let mut reader = client(&hub, &admin).await;
    send(
        &mut reader,
        &ClientMsg::SubscribeOutput {
            job_id: id.clone(),
            offset: 0,
        },
    )
    .await;
    let (got, _) = collect(&mut reader, 0).await;
    assert_eq!(got.len() as u64, N * 32 * 1024);
    assert!(got.iter().all(|b| *b == b'z'));
    drop(stalled);
    growth_mb
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_never_reads_is_bounded() {
    // One stalled subscriber as the baseline: it already makes the hub read the log back through
    // sled's (bounded) page cache; nine more must add only their own small buffers.
    let one = flood_with_stalled(1).await;
    let ten = flood_with_stalled(10).await;
    eprintln!("48 MiB of output: hub RSS +{one} MiB with 1 stalled subscriber, +{ten} MiB with 10");
    // Unbounded buffering would pin 9 x 48 MiB more. The bound per stalled subscriber is its
    // outgoing queue (16 messages of at most one 32 KiB chunk), one store page being replayed
    // (256 KiB) and the socket's write buffer: about 1 MiB.
    assert!(
        ten.saturating_sub(one) < 36,
        "9 more stalled subscribers cost {} MiB",
        ten.saturating_sub(one)
    );
}
