//! Tests of what only the sled backend has (backups, retired trees); what every backend must do
//! is in the store conformance suite (`tests/it/store.rs`), run on sled and PostgreSQL.

use super::*;

fn queued_job(id: &str, seq: u64) -> JobRecord {
    let raw = format!(
        r#"{{"v":1,"id":"{id}","owner":"u1","command":"true","file":null,"timeout_secs":600,
        "tags":[],"env":{{}},"max_attempts":3,"status":"queued","attempt":0,
        "queue_seq":{seq},"worker_id":null,"token_id":null,"legacy":false,"created_ms":1,
        "assigned_ms":null,"started_ms":null,"completed_ms":null,"cancel_requested":false,
        "outcome":null,"failure":null,"error":null,"output":{{"first_index":0,
        "first_offset":0,"truncated":false,"total_bytes":0,"lines":0}},"attempts":[]}}"#
    );
    serde_json::from_str(&raw).expect("job record")
}

/// `(queue_seq, id)` of every queued job, in queue order: what recovery rebuilds.
async fn queued(store: &SledStore) -> Vec<(u64, String)> {
    let mut out: Vec<(u64, String)> = store
        .unfinished_jobs()
        .await
        .expect("scan")
        .into_iter()
        .filter(|j| j.status == cmdx_proto::JobStatus::Queued)
        .filter_map(|j| j.queue_seq.map(|s| (s, j.id)))
        .collect();
    out.sort();
    out
}

/// `job_count` is a counter (a scrape of `/metrics` must not walk the jobs tree): it follows
/// inserts, re-inserts, deletes and deletes of missing ids (the count at open is checked by
/// the import test below).
#[tokio::test]
async fn a_backup_from_before_the_queue_tree_was_retired_still_imports() {
    let src = tempfile::tempdir().expect("tempdir");
    let store = SledStore::open(src.path(), 8 << 20).expect("store");
    store
        .insert_job(&queued_job("q1", 7))
        .await
        .expect("insert");
    let mut stream = Vec::new();
    let n = store.export_records(&mut stream).expect("export");
    drop(store);
    // What an older hub also wrote: the queue index entry of that job.
    let (name, k, v) = ("queue", 7u64.to_be_bytes(), b"q1");
    stream.push(name.len() as u8);
    stream.extend_from_slice(name.as_bytes());
    stream.extend_from_slice(&(k.len() as u32).to_be_bytes());
    stream.extend_from_slice(&k);
    stream.extend_from_slice(&(v.len() as u32).to_be_bytes());
    stream.extend_from_slice(v);
    let dst = tempfile::tempdir().expect("tempdir");
    let imported =
        SledStore::import_records(&dst.path().join("db"), &mut stream.as_slice()).expect("import");
    assert_eq!(imported, n, "the retired tree's record is read and dropped");
    // A data folder an older hub left behind still has the tree: opening drops it.
    {
        // Dropped after `raw`: waits until sled's IO pool let go of the folder's lock.
        let _released = super::background::LockRelease(dst.path().join("db").join("db"));
        // No background flusher: it would hold the folder's lock a moment past the drop.
        let raw = sled::Config::new()
            .path(dst.path().join("db"))
            .flush_every_ms(None)
            .open()
            .expect("raw open");
        let queue = raw.open_tree("queue").expect("queue tree");
        queue
            .insert(7u64.to_be_bytes(), &b"q1"[..])
            .expect("queue entry");
        raw.flush().expect("flush");
    }
    let restored = SledStore::open(&dst.path().join("db"), 8 << 20).expect("open");
    assert_eq!(queued(&restored).await, vec![(7, "q1".into())]);
    assert_eq!(restored.job_count().await.unwrap(), 1, "counted at open");
    assert!(
        !restored
            .db
            .tree_names()
            .iter()
            .any(|t| t.as_ref() == b"queue"),
        "no queue tree after open"
    );
}
