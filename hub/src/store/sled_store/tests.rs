//! Tests of the sled backend.

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
async fn the_job_count_is_kept_not_scanned() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SledStore::open(dir.path(), 8 << 20).expect("store");
    for (i, id) in ["a", "b", "c"].iter().enumerate() {
        store
            .insert_job(&queued_job(id, i as u64))
            .await
            .expect("insert");
    }
    store
        .insert_job(&queued_job("a", 9))
        .await
        .expect("re-insert");
    assert_eq!(store.job_count().await.unwrap(), 3);
    store.delete_job("b").await.expect("delete");
    store.delete_job("missing").await.expect("delete missing");
    assert_eq!(store.job_count().await.unwrap(), 2);
    store.ping().await.expect("ping");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_updates_are_not_lost_and_queue_moves_stay_in_the_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = std::sync::Arc::new(SledStore::open(dir.path(), 8 << 20).expect("store"));
    store
        .insert_job(&queued_job("j1", 5))
        .await
        .expect("insert");
    // Single-key updates (compare-and-swap, retried) from several threads at once.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..50 {
                store
                    .update_job("j1", &|j: &mut JobRecord| {
                        j.rejections += 1;
                        Ok(())
                    })
                    .await
                    .expect("update");
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let job = store.get_job("j1").await.expect("get").expect("job");
    assert_eq!(job.rejections, 400, "no update lost");
    assert_eq!(queued(&store).await, vec![(5, "j1".into())]);
    // A failed update changes nothing.
    let failed = store
        .update_job("j1", &|j: &mut JobRecord| {
            j.rejections = 0;
            Err(StoreError::Conflict("no".into()))
        })
        .await;
    assert!(matches!(failed, Err(StoreError::Conflict(_))));
    // Leaving and re-entering the queue moves the index entry with the record.
    store
        .update_job("j1", &|j: &mut JobRecord| {
            j.queue_seq = None;
            j.status = cmdx_proto::JobStatus::Assigned;
            Ok(())
        })
        .await
        .expect("claim");
    assert!(queued(&store).await.is_empty());
    store
        .update_job("j1", &|j: &mut JobRecord| {
            j.queue_seq = Some(9);
            j.status = cmdx_proto::JobStatus::Queued;
            Ok(())
        })
        .await
        .expect("requeue");
    assert_eq!(queued(&store).await, vec![(9, "j1".into())]);
    let job = store.get_job("j1").await.expect("get").expect("job");
    assert_eq!((job.rejections, job.queue_seq), (400, Some(9)));
    assert!(matches!(
        store.update_job("nope", &|_: &mut JobRecord| Ok(())).await,
        Err(StoreError::NotFound(_))
    ));
}

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

#[tokio::test]
async fn a_batch_applies_each_update_and_reports_each_refusal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SledStore::open(dir.path(), 8 << 20).expect("store");
    store.insert_job(&queued_job("a", 1)).await.expect("a");
    store.insert_job(&queued_job("b", 2)).await.expect("b");
    let ids = ["a".to_string(), "b".to_string(), "gone".to_string()];
    let results = store
        .update_jobs(&ids, &|i: usize, j: &mut JobRecord| {
            if i == 1 {
                return Err(StoreError::Conflict("not this one".into()));
            }
            j.queue_seq = None;
            j.attempt += 1;
            Ok(())
        })
        .await
        .expect("batch");
    assert!(matches!(&results[0], Ok(j) if j.attempt == 1 && j.queue_seq.is_none()));
    assert!(matches!(&results[1], Err(StoreError::Conflict(_))));
    assert!(matches!(&results[2], Err(StoreError::NotFound(_))));
    assert_eq!(queued(&store).await, vec![(2, "b".into())]);
    let b = store.get_job("b").await.expect("get").expect("b");
    assert_eq!(
        (b.attempt, b.queue_seq),
        (0, Some(2)),
        "a refused update changes nothing"
    );
}
