//! Every message survives encode -> decode unchanged (property tests), and the JSON shapes other
//! programs rely on stay as documented.

use std::collections::BTreeMap;

use cmdx_proto::agent::*;
use cmdx_proto::client::{ClientMsg, ServerMsg};
use cmdx_proto::{Bytes64, FailureKind, JobStatus, Outcome, StreamKind, WindowSize};
use proptest::prelude::*;

fn id() -> impl Strategy<Value = String> {
    "[a-z0-9]{1,20}"
}

fn stream() -> impl Strategy<Value = StreamKind> {
    prop_oneof![Just(StreamKind::Stdout), Just(StreamKind::Stderr)]
}

fn failure() -> impl Strategy<Value = Option<FailureKind>> {
    prop::option::of(prop_oneof![
        Just(FailureKind::ExitCode),
        Just(FailureKind::Timeout),
        Just(FailureKind::Oom),
        Just(FailureKind::Killed),
        Just(FailureKind::Setup),
        Just(FailureKind::Sandbox),
        Just(FailureKind::WorkerLost),
        Just(FailureKind::Image),
    ])
}

fn outcome() -> impl Strategy<Value = Outcome> {
    (
        prop::option::of(any::<i32>()),
        prop::option::of(1i32..64),
        failure(),
        prop::option::of(".{0,40}"),
        any::<(bool, bool, bool, bool)>(),
        any::<u64>(),
        prop::option::of(any::<u64>()),
        (prop::option::of(any::<u64>()), prop::option::of(".{0,20}")),
    )
        .prop_map(
            |(exit_code, signal, failure, error, (t, o, c, tr), d, cpu, (mem, artifacts_error))| {
                Outcome {
                    exit_code,
                    signal,
                    failure,
                    error,
                    timed_out: t,
                    oom_killed: o,
                    cancelled: c,
                    duration_ms: d,
                    cpu_ms: cpu,
                    peak_memory_bytes: mem,
                    output_truncated: tr,
                    artifacts_error,
                    pull_ms: cpu.map(|c| c / 2),
                    image_digest: None,
                }
            },
        )
}

fn agent_msg() -> impl Strategy<Value = AgentMsg> {
    prop_oneof![
        (
            id(),
            any::<u32>(),
            prop::collection::vec(id(), 0..4),
            prop::collection::vec(
                (
                    id(),
                    any::<u32>(),
                    any::<u64>(),
                    prop::option::of(outcome())
                ),
                0..3
            )
        )
            .prop_map(|(w, c, tags, held)| AgentMsg::Hello(Hello {
                protocol_version: cmdx_proto::PROTOCOL_VERSION,
                worker_id: w.clone(),
                hostname: w,
                os: "linux".into(),
                version: "1".into(),
                cpu_count: c % 512,
                total_memory_mb: u64::from(c),
                tags,
                concurrency: c % 64 + 1,
                isolation: Isolation {
                    active: vec!["netns".into()],
                    missing: vec![],
                    mode: "strict".into()
                },
                held: held
                    .into_iter()
                    .map(|(job_id, attempt, chunks, finished)| HeldJob {
                        job_id,
                        attempt,
                        chunks,
                        finished
                    })
                    .collect(),
            })),
        (id(), any::<u32>())
            .prop_map(|(job_id, attempt)| AgentMsg::Accept(JobRef { job_id, attempt })),
        (id(), any::<u32>(), ".{0,30}").prop_map(|(job_id, attempt, reason)| AgentMsg::Reject(
            Reject {
                job_id,
                attempt,
                reason
            }
        )),
        (id(), any::<u32>()).prop_map(|(job_id, attempt)| AgentMsg::Started(Started {
            job_id,
            attempt,
            isolation: vec!["seccomp".into()]
        })),
        (
            id(),
            any::<u32>(),
            any::<u64>(),
            stream(),
            prop::collection::vec(any::<u8>(), 0..300)
        )
            .prop_map(|(job_id, attempt, seq, stream, data)| AgentMsg::Output(
                OutputChunk {
                    job_id,
                    attempt,
                    seq,
                    stream,
                    data: Bytes64(data)
                }
            )),
        (id(), any::<u32>(), any::<u64>(), outcome()).prop_map(
            |(job_id, attempt, chunks, outcome)| AgentMsg::Finished(Finished {
                job_id,
                attempt,
                chunks,
                outcome
            })
        ),
        (any::<u32>(), any::<bool>()).prop_map(|(free_slots, draining)| AgentMsg::Heartbeat(
            Heartbeat {
                running: vec![],
                free_slots,
                draining
            }
        )),
    ]
}

fn hub_msg() -> impl Strategy<Value = HubMsg> {
    prop_oneof![
        (
            id(),
            any::<u64>(),
            prop::collection::vec((id(), any::<u32>(), any::<u64>(), any::<bool>()), 0..3)
        )
            .prop_map(|(w, hb, r)| HubMsg::Welcome(Welcome {
                protocol_version: 1,
                worker_id: w,
                heartbeat_secs: hb,
                resume: r
                    .into_iter()
                    .map(|(job_id, attempt, stored_chunks, finished)| Resume {
                        job_id,
                        attempt,
                        stored_chunks,
                        finished
                    })
                    .collect(),
                abandon: vec![],
            })),
        (
            id(),
            any::<u32>(),
            ".{0,50}",
            prop::option::of(id()),
            any::<u64>(),
            prop::collection::btree_map("[A-Z]{1,5}", ".{0,10}", 0..3),
            prop::collection::vec("[a-z*/]{1,12}", 0..3),
            prop::option::of((any::<u16>(), any::<u16>())),
        )
            .prop_map(
                |(job_id, attempt, command, f, timeout_secs, env, artifacts, tty)| HubMsg::Assign(
                    Assignment {
                        job_id,
                        attempt,
                        command,
                        file_url: f.clone().map(|f| format!("/api/files/download/{f}")),
                        file_sha256: f,
                        file_size: None,
                        timeout_secs,
                        env: env.into_iter().collect::<BTreeMap<_, _>>(),
                        artifact_max_bytes: (!artifacts.is_empty()).then_some(1 << 20),
                        artifact_max_files: (!artifacts.is_empty()).then_some(100),
                        artifacts,
                        tty: tty.map(|(cols, rows)| WindowSize { cols, rows }),
                        image: (timeout_secs % 2 == 0)
                            .then(|| "127.0.0.1:5000/team/tool:1".to_owned()),
                    }
                )
            ),
        (id(), any::<u32>(), any::<u64>()).prop_map(|(job_id, attempt, stored_chunks)| {
            HubMsg::OutputAck(OutputAck {
                job_id,
                attempt,
                stored_chunks,
            })
        }),
        (id(), any::<u32>())
            .prop_map(|(job_id, attempt)| HubMsg::FinishedAck(JobRef { job_id, attempt })),
        (id(), any::<u32>(), any::<u64>()).prop_map(
            |(job_id, attempt, grace_secs)| HubMsg::Cancel(Cancel {
                job_id,
                attempt,
                grace_secs
            })
        ),
        (id(), any::<u32>()).prop_map(|(job_id, attempt)| HubMsg::Abandon(Abandon {
            job_id,
            attempt,
            reason: "stale".into()
        })),
        Just(HubMsg::Drain),
    ]
}

proptest! {
    #[test]
    fn agent_messages_round_trip(m in agent_msg()) {
        let text = serde_json::to_string(&m).unwrap();
        prop_assert_eq!(serde_json::from_str::<AgentMsg>(&text).unwrap(), m);
    }

    #[test]
    fn hub_messages_round_trip(m in hub_msg()) {
        let text = serde_json::to_string(&m).unwrap();
        prop_assert_eq!(serde_json::from_str::<HubMsg>(&text).unwrap(), m);
    }

    #[test]
    fn client_messages_round_trip(job_id in id(), offset in any::<u64>(), data in prop::collection::vec(any::<u8>(), 0..200), s in stream()) {
        for m in [
            ClientMsg::SubscribeOutput { job_id: job_id.clone(), offset },
            ClientMsg::UnsubscribeOutput { job_id: job_id.clone() },
            ClientMsg::SubscribeJobs,
            ClientMsg::SubscribeWorkers,
        ] {
            let text = serde_json::to_string(&m).unwrap();
            prop_assert_eq!(serde_json::from_str::<ClientMsg>(&text).unwrap(), m);
        }
        let m = ServerMsg::Output { job_id, offset, stream: s, data: Bytes64(data), time_ms: offset / 3 };
        let text = serde_json::to_string(&m).unwrap();
        prop_assert_eq!(serde_json::from_str::<ServerMsg>(&text).unwrap(), m);
    }

    #[test]
    fn outcome_status_is_consistent(o in outcome()) {
        let status = o.status();
        prop_assert!(status.is_terminal());
        prop_assert_eq!(o.failure_kind().is_some(), status == JobStatus::Failed);
    }
}

#[test]
fn documented_json_shapes() {
    let m = ClientMsg::SubscribeOutput {
        job_id: "j1".into(),
        offset: 5,
    };
    assert_eq!(
        serde_json::to_value(&m).unwrap(),
        serde_json::json!({"type": "subscribeOutput", "jobId": "j1", "offset": 5})
    );
    let o = ServerMsg::Output {
        job_id: "j1".into(),
        offset: 0,
        stream: StreamKind::Stderr,
        data: Bytes64(b"hi".to_vec()),
        time_ms: 1_767_225_600_000,
    };
    assert_eq!(
        serde_json::to_value(&o).unwrap(),
        serde_json::json!({"type": "output", "jobId": "j1", "offset": 0, "stream": "stderr", "data": "aGk=", "timeMs": 1_767_225_600_000_u64})
    );
    // A hub before `timeMs` sent none: it reads as 0 (unknown).
    let old: ServerMsg = serde_json::from_str(
        r#"{"type": "output", "jobId": "j1", "offset": 0, "stream": "stdout", "data": "aGk="}"#,
    )
    .unwrap();
    assert!(matches!(old, ServerMsg::Output { time_ms: 0, .. }));
    assert_eq!(
        serde_json::to_value(FailureKind::WorkerLost).unwrap(),
        "worker_lost"
    );
    assert_eq!(
        serde_json::to_value(JobStatus::Cancelled).unwrap(),
        "cancelled"
    );
    // Clients may not smuggle extra fields into subscriptions.
    assert!(
        serde_json::from_str::<ClientMsg>(r#"{"type":"subscribeOutput","jobId":"j","owner":"x"}"#)
            .is_err()
    );
}
