//! Helpers shared by the cmdx criterion benches (`benches/hub.rs`): record factories and a
//! throw-away sled store. The benches measure the hub's hot paths in-process: store writes
//! (submit, claim, finish) with and without the group-commit flush, dispatcher matching
//! (`Dispatch::plan`), and output append with live fan-out to subscribers.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

use std::collections::BTreeMap;

use cmdx_hub::store::{JobRecord, OutputMeta, SledStore, WorkerRecord, new_id, now_ms};
use cmdx_proto::JobStatus;

/// A fresh sled store in a temp folder (kept alive by the returned guard).
pub fn temp_store() -> (SledStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SledStore::open(&dir.path().join("db"), 64 << 20).expect("open sled store");
    (store, dir)
}

/// A queued job as `POST /api/jobs/submit` stores it.
pub fn queued_job(queue_seq: u64) -> JobRecord {
    JobRecord {
        v: 1,
        id: new_id(),
        owner: "bench-owner".into(),
        command: "true".into(),
        file: None,
        timeout_secs: 600,
        tags: Vec::new(),
        env: BTreeMap::new(),
        max_attempts: 3,
        status: JobStatus::Queued,
        attempt: 0,
        queue_seq: Some(queue_seq),
        worker_id: None,
        token_id: None,
        legacy: false,
        created_ms: now_ms(),
        assigned_ms: None,
        started_ms: None,
        completed_ms: None,
        cancel_requested: false,
        outcome: None,
        failure: None,
        error: None,
        output: OutputMeta::default(),
        attempts: Vec::new(),
        rejections: 0,
        artifact_globs: Vec::new(),
        artifacts: None,
        tty: None,
        priority: 0,
        image: None,
    }
}

/// A worker record with `slots` slots and `tags`.
pub fn worker(id: &str, slots: u32, tags: &[&str]) -> WorkerRecord {
    WorkerRecord {
        v: 1,
        id: id.to_string(),
        kind: "agent".into(),
        hostname: "bench".into(),
        os: "linux".into(),
        version: "bench".into(),
        cpu_count: 1,
        total_memory_mb: 1024,
        tags: tags.iter().map(|t| t.to_string()).collect(),
        slots,
        isolation_active: Vec::new(),
        isolation_missing: Vec::new(),
        isolation_mode: String::new(),
        token_id: Some("bench-token".into()),
        last_seen_ms: now_ms(),
    }
}
