//! Store conformance: the same tests against both backends, sled in a temp folder and a real
//! PostgreSQL server (private, started from the system's binaries, a database per test), plus
//! what only a shared database has to show: a second hub's connection sees every write, shares
//! the secrets, and nothing acknowledged is lost when the server is killed.

use std::sync::Arc;

use cmdx_e2e::pg;
use cmdx_hub::store::{
    ChunkRecord, DrainRecord, FileRecord, JobQuery, JobRecord, PgStore, SledStore, Store,
    StoreError, UserRecord, WorkerRecord, WorkerTokenRecord,
};
use cmdx_proto::{JobStatus, StreamKind};

/// A store under test and what keeps it alive (the sled folder).
struct Backend {
    name: &'static str,
    store: Arc<dyn Store>,
    _dir: Option<tempfile::TempDir>,
}

async fn backends() -> Vec<Backend> {
    let dir = tempfile::tempdir().expect("tempdir");
    let sled = SledStore::open(dir.path(), 8 << 20).expect("sled store");
    let url = pg::fresh_database("conformance").expect("private PostgreSQL");
    let pg = PgStore::connect(&url, 8).await.expect("PostgreSQL store");
    vec![
        Backend {
            name: "sled",
            store: Arc::new(sled),
            _dir: Some(dir),
        },
        Backend {
            name: "postgres",
            store: Arc::new(pg),
            _dir: None,
        },
    ]
}

fn job(id: &str, owner: &str, seq: u64) -> JobRecord {
    let raw = format!(
        r#"{{"v":1,"id":"{id}","owner":"{owner}","command":"true","file":null,"timeout_secs":600,
        "tags":[],"env":{{}},"max_attempts":3,"status":"queued","attempt":0,
        "queue_seq":{seq},"worker_id":null,"token_id":null,"legacy":false,"created_ms":1,
        "assigned_ms":null,"started_ms":null,"completed_ms":null,"cancel_requested":false,
        "outcome":null,"failure":null,"error":null,"output":{{"first_index":0,
        "first_offset":0,"truncated":false,"total_bytes":0,"lines":0}},"attempts":[]}}"#
    );
    serde_json::from_str(&raw).expect("job record")
}

/// `(queue_seq, id)` of every queued job, in queue order: what recovery rebuilds.
async fn queued(store: &dyn Store) -> Vec<(u64, String)> {
    let mut out: Vec<(u64, String)> = store
        .unfinished_jobs()
        .await
        .expect("scan")
        .into_iter()
        .filter(|j| j.status == JobStatus::Queued)
        .filter_map(|j| j.queue_seq.map(|s| (s, j.id)))
        .collect();
    out.sort();
    out
}

fn chunk(index: u64, offset: u64, data: &str) -> ChunkRecord {
    ChunkRecord {
        index,
        attempt: 1,
        seq: index,
        offset,
        stream: StreamKind::Stdout,
        time_ms: 7,
        data: data.as_bytes().to_vec(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jobs_insert_update_and_delete_alike_on_both_backends() {
    for b in backends().await {
        let s = b.store.as_ref();
        let name = b.name;
        for (i, id) in ["a", "b", "c"].iter().enumerate() {
            s.insert_job(&job(id, "u1", i as u64))
                .await
                .expect("insert");
        }
        s.insert_job(&job("a", "u1", 9)).await.expect("re-insert");
        assert_eq!(s.job_count().await.unwrap(), 3, "{name}");
        assert_eq!(
            s.get_job("a").await.unwrap().and_then(|j| j.queue_seq),
            Some(9),
            "{name}: a re-insert replaces"
        );
        s.append_chunk("b", &chunk(0, 0, "hello")).await.unwrap();
        let freed = s.delete_job("b").await.expect("delete");
        assert!(freed >= 5, "{name}: freed {freed}");
        assert_eq!(s.delete_job("missing").await.expect("delete missing"), 0);
        assert_eq!(s.job_count().await.unwrap(), 2, "{name}");
        assert!(s.get_job("b").await.unwrap().is_none(), "{name}");
        assert!(
            s.read_chunks("b", 0, 1 << 20).await.unwrap().is_empty(),
            "{name}"
        );
        s.ping().await.expect("ping");

        // Compare-and-swap updates from several tasks at once: none is lost.
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let store = b.store.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..25 {
                    store
                        .update_job("a", &|j: &mut JobRecord| {
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
        let a = s.get_job("a").await.unwrap().expect("a");
        assert_eq!(a.rejections, 200, "{name}: no update lost");
        // A refused update changes nothing; a missing job is NotFound.
        let refused = s
            .update_job("a", &|j: &mut JobRecord| {
                j.rejections = 0;
                Err(StoreError::Conflict("no".into()))
            })
            .await;
        assert!(matches!(refused, Err(StoreError::Conflict(_))), "{name}");
        assert!(matches!(
            s.update_job("nope", &|_: &mut JobRecord| Ok(())).await,
            Err(StoreError::NotFound(_))
        ));
        // Leaving the queue and finishing moves the job out of the unfinished set.
        assert_eq!(
            queued(s).await,
            vec![(2, "c".into()), (9, "a".into())],
            "{name}"
        );
        s.update_job("a", &|j: &mut JobRecord| {
            j.queue_seq = None;
            j.status = JobStatus::Completed;
            Ok(())
        })
        .await
        .expect("finish");
        assert_eq!(queued(s).await, vec![(2, "c".into())], "{name}");
        assert_eq!(s.unfinished_jobs().await.unwrap().len(), 1, "{name}");
        // What workers hold: assigned and running jobs, not queued or finished ones.
        assert!(s.held_jobs().await.unwrap().is_empty(), "{name}");
        for (id, status, seq) in [
            ("h1", JobStatus::Assigned, 20),
            ("h2", JobStatus::Running, 21),
        ] {
            let mut j = job(id, "u1", seq);
            j.queue_seq = None;
            j.status = status;
            j.worker_id = Some("w9".into());
            s.insert_job(&j).await.expect("insert held");
        }
        let mut held = s.held_jobs().await.unwrap();
        held.sort();
        assert_eq!(
            held,
            vec![("w9".into(), "h1".into()), ("w9".into(), "h2".into())],
            "{name}"
        );
        assert_eq!(s.jobs_held_by("w9").await.unwrap().len(), 2, "{name}");
        assert!(s.jobs_held_by("other").await.unwrap().is_empty(), "{name}");
        for id in ["h1", "h2"] {
            s.delete_job(id).await.expect("delete held");
        }
        let a = s.get_job("a").await.unwrap().expect("a");
        assert_eq!(
            (a.rejections, a.status),
            (200, JobStatus::Completed),
            "{name}"
        );
    }
}

#[tokio::test]
async fn a_batch_applies_each_update_and_reports_each_refusal() {
    for b in backends().await {
        let s = b.store.as_ref();
        let name = b.name;
        for (i, id) in ["a", "b", "c", "d"].iter().enumerate() {
            s.insert_job(&job(id, "u1", i as u64 + 1))
                .await
                .expect("insert");
        }
        let ids: Vec<String> = ["a", "b", "gone", "d"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let results = s
            .update_jobs(&ids, &|i: usize, j: &mut JobRecord| {
                if i == 1 {
                    return Err(StoreError::Conflict("not this one".into()));
                }
                j.queue_seq = None;
                j.status = JobStatus::Assigned;
                j.attempt += 1;
                Ok(())
            })
            .await
            .expect("batch");
        assert_eq!(results.len(), 4, "{name}");
        assert!(
            matches!(&results[0], Ok(j) if j.id == "a" && j.attempt == 1),
            "{name}"
        );
        assert!(
            matches!(&results[1], Err(StoreError::Conflict(_))),
            "{name}"
        );
        assert!(
            matches!(&results[2], Err(StoreError::NotFound(_))),
            "{name}"
        );
        assert!(
            matches!(&results[3], Ok(j) if j.id == "d" && j.attempt == 1),
            "{name}"
        );
        assert_eq!(
            queued(s).await,
            vec![(2, "b".into()), (3, "c".into())],
            "{name}"
        );
        let d = s.get_job("d").await.unwrap().expect("d");
        assert_eq!(
            (d.attempt, d.status),
            (1, JobStatus::Assigned),
            "{name}: stored"
        );
        // The same id twice in one batch: each update applies once, in order.
        let twice = vec!["c".to_string(), "c".to_string()];
        let results = s
            .update_jobs(&twice, &|_, j: &mut JobRecord| {
                j.attempt += 1;
                Ok(())
            })
            .await
            .expect("batch");
        assert!(matches!(&results[1], Ok(j) if j.attempt == 2), "{name}");
    }
}

#[tokio::test]
async fn output_chunks_page_resume_at_offsets_and_drop_their_head() {
    for b in backends().await {
        let s = b.store.as_ref();
        let name = b.name;
        s.insert_job(&job("j", "u1", 1)).await.unwrap();
        // 600 chunks of 10 bytes: more than one page of any backend.
        for i in 0..600u64 {
            s.append_chunk("j", &chunk(i, i * 10, &format!("{i:09}\n")))
                .await
                .unwrap();
        }
        // Another job's output is never mixed in.
        s.append_chunk("j2", &chunk(0, 0, "other\n")).await.unwrap();
        let all = s.read_chunks("j", 0, usize::MAX).await.unwrap();
        assert_eq!(all.len(), 600, "{name}");
        assert!(
            all.iter().enumerate().all(|(i, c)| c.index == i as u64),
            "{name}"
        );
        assert_eq!(
            all[599],
            chunk(599, 5990, "000000599\n"),
            "{name}: round trip"
        );
        // A byte budget stops at the chunk that reaches it.
        let some = s.read_chunks("j", 100, 25).await.unwrap();
        assert_eq!(
            some.iter().map(|c| c.index).collect::<Vec<_>>(),
            vec![100, 101, 102],
            "{name}"
        );
        assert_eq!(s.last_chunk("j").await.unwrap().map(|c| c.index), Some(599));
        assert_eq!(s.chunk_index_at("j", 0).await.unwrap(), Some(0), "{name}");
        assert_eq!(
            s.chunk_index_at("j", 1234).await.unwrap(),
            Some(123),
            "{name}"
        );
        assert_eq!(
            s.chunk_index_at("j", 5999).await.unwrap(),
            Some(599),
            "{name}"
        );
        assert_eq!(
            s.chunk_index_at("j", 6000).await.unwrap(),
            None,
            "{name}: past the end"
        );
        assert_eq!(s.chunk_index_at("none", 0).await.unwrap(), None, "{name}");
        // The head dropped (output cap): an offset in it resumes at the first chunk kept.
        s.delete_chunks_before("j", 300).await.unwrap();
        let kept = s.read_chunks("j", 0, usize::MAX).await.unwrap();
        assert_eq!(kept.first().map(|c| c.index), Some(300), "{name}");
        assert_eq!(kept.len(), 300, "{name}");
        assert_eq!(
            s.chunk_index_at("j", 50).await.unwrap(),
            Some(300),
            "{name}"
        );
        assert_eq!(
            s.chunk_index_at("j", 3005).await.unwrap(),
            Some(300),
            "{name}"
        );
        assert_eq!(
            s.read_chunks("j2", 0, 100).await.unwrap().len(),
            1,
            "{name}"
        );
    }
}

#[tokio::test]
async fn listings_page_newest_first_per_owner_with_filters_and_scan_bounds() {
    for b in backends().await {
        let s = b.store.as_ref();
        let name = b.name;
        for i in 0..30u64 {
            let owner = if i % 3 == 0 { "alice" } else { "bob" };
            s.insert_job(&job(&format!("job{i:03}"), owner, i))
                .await
                .unwrap();
        }
        let ids = |jobs: Vec<JobRecord>| jobs.into_iter().map(|j| j.id).collect::<Vec<_>>();
        let all = |_: &JobRecord| true;
        let first = s
            .list_jobs(JobQuery {
                owner: Some("alice"),
                before: None,
                limit: 3,
                filter: &all,
                max_scan: 1000,
            })
            .await
            .unwrap();
        assert_eq!(ids(first), ["job027", "job024", "job021"], "{name}");
        let next = s
            .list_jobs(JobQuery {
                owner: Some("alice"),
                before: Some("job021"),
                limit: 100,
                filter: &all,
                max_scan: 1000,
            })
            .await
            .unwrap();
        assert_eq!(
            ids(next),
            [
                "job018", "job015", "job012", "job009", "job006", "job003", "job000"
            ],
            "{name}"
        );
        let odd = |j: &JobRecord| j.queue_seq.is_some_and(|s| s % 2 == 1);
        let everyone = s
            .list_jobs(JobQuery {
                owner: None,
                before: Some("job010"),
                limit: 3,
                filter: &odd,
                max_scan: 1000,
            })
            .await
            .unwrap();
        assert_eq!(ids(everyone), ["job009", "job007", "job005"], "{name}");
        let bounded = s
            .list_jobs(JobQuery {
                owner: None,
                before: None,
                limit: 100,
                filter: &odd,
                max_scan: 4,
            })
            .await
            .unwrap();
        assert_eq!(
            ids(bounded),
            ["job029", "job027"],
            "{name}: scan stops at 4 records"
        );
    }
}

#[tokio::test]
async fn users_files_workers_tokens_and_revoked_sessions_round_trip() {
    for b in backends().await {
        let s = b.store.as_ref();
        let name = b.name;
        let user = |id: &str, email: &str| UserRecord {
            v: 1,
            id: id.into(),
            email: email.into(),
            password_hash: "$argon2id$x".into(),
            role: "user".into(),
            created_ms: 1,
            max_queued: None,
            max_running: None,
            disabled: false,
            session_epoch: 0,
        };
        s.insert_user(&user("u1", "a@x")).await.unwrap();
        s.insert_user(&user("u2", "b@x")).await.unwrap();
        assert!(
            matches!(
                s.insert_user(&user("u3", "a@x")).await,
                Err(StoreError::Conflict(_))
            ),
            "{name}: an email is taken once"
        );
        assert_eq!(
            s.get_user_by_email("b@x").await.unwrap().map(|u| u.id),
            Some("u2".into())
        );
        assert_eq!(
            s.get_user("u1").await.unwrap().map(|u| u.email),
            Some("a@x".into())
        );
        assert!(s.get_user("u3").await.unwrap().is_none(), "{name}");
        assert_eq!(s.list_users().await.unwrap().len(), 2, "{name}");
        let mut limited = user("u2", "b@x");
        limited.max_queued = Some(7);
        s.replace_user(&limited).await.unwrap();
        assert_eq!(
            s.get_user("u2").await.unwrap().and_then(|u| u.max_queued),
            Some(7),
            "{name}: replaced"
        );
        assert_eq!(
            s.get_user_by_email("b@x")
                .await
                .unwrap()
                .and_then(|u| u.max_queued),
            Some(7),
            "{name}"
        );
        assert!(
            matches!(
                s.replace_user(&user("u9", "b@x")).await,
                Err(StoreError::NotFound(_))
            ),
            "{name}: another id under that email is not replaced"
        );
        assert!(
            matches!(
                s.replace_user(&user("u9", "z@x")).await,
                Err(StoreError::NotFound(_))
            ),
            "{name}: nobody to replace"
        );
        s.insert_user(&user("u4", "d@x")).await.unwrap();
        assert!(
            matches!(
                s.delete_user(&user("u9", "d@x")).await,
                Err(StoreError::NotFound(_))
            ),
            "{name}: another id under that email is not deleted"
        );
        s.delete_user(&user("u4", "d@x")).await.unwrap();
        assert!(s.get_user("u4").await.unwrap().is_none(), "{name}");
        assert!(
            s.get_user_by_email("d@x").await.unwrap().is_none(),
            "{name}"
        );
        assert!(
            matches!(
                s.delete_user(&user("u4", "d@x")).await,
                Err(StoreError::NotFound(_))
            ),
            "{name}: deleted once"
        );

        let file = |id: &str, owner: &str| FileRecord {
            v: 1,
            id: id.into(),
            owner: owner.into(),
            filename: "a.zip".into(),
            size: 3,
            sha256: "ab".repeat(32),
            created_ms: 1,
            last_used_ms: None,
            artifacts_of: None,
        };
        for (id, owner) in [("f1", "u1"), ("f2", "u2"), ("f3", "u1")] {
            s.put_file(&file(id, owner)).await.unwrap();
        }
        let mine: Vec<String> = s
            .list_files("u1")
            .await
            .unwrap()
            .into_iter()
            .map(|f| f.id)
            .collect();
        assert_eq!(mine, ["f3", "f1"], "{name}: newest first");
        let mut used = file("f1", "u1");
        used.last_used_ms = Some(9);
        s.put_file(&used).await.unwrap();
        assert_eq!(s.get_file("f1").await.unwrap(), Some(used), "{name}");
        s.delete_file("f2").await.unwrap();
        assert_eq!(s.all_files().await.unwrap().len(), 2, "{name}");

        let worker = WorkerRecord {
            v: 1,
            id: "w1".into(),
            kind: "agent".into(),
            hostname: "h".into(),
            os: "linux".into(),
            version: "0".into(),
            cpu_count: 2,
            total_memory_mb: 1,
            tags: vec!["gpu".into()],
            slots: 2,
            isolation_active: vec![],
            isolation_missing: vec![],
            isolation_mode: "strict".into(),
            token_id: Some("t1".into()),
            last_seen_ms: 5,
        };
        s.put_worker(&worker).await.unwrap();
        assert_eq!(
            s.list_workers().await.unwrap(),
            vec![worker.clone()],
            "{name}"
        );
        s.delete_worker("w1").await.unwrap();
        assert!(s.list_workers().await.unwrap().is_empty(), "{name}");

        // A drain is kept apart from the worker record its connects rewrite.
        let drain = |id: &str, at_ms| DrainRecord {
            v: 1,
            worker_id: id.into(),
            by: "admin@x".into(),
            at_ms,
        };
        s.put_drain(&drain("w2", 7)).await.unwrap();
        s.put_drain(&drain("w1", 8)).await.unwrap();
        s.put_drain(&drain("w1", 9)).await.unwrap();
        let mut drains = s.list_drains().await.unwrap();
        drains.sort_by(|a, b| a.worker_id.cmp(&b.worker_id));
        assert_eq!(drains, vec![drain("w1", 9), drain("w2", 7)], "{name}");
        assert!(s.delete_drain("w1").await.unwrap(), "{name}");
        assert!(!s.delete_drain("w1").await.unwrap(), "{name}: gone already");
        assert_eq!(
            s.list_drains().await.unwrap(),
            vec![drain("w2", 7)],
            "{name}"
        );

        let token = WorkerTokenRecord {
            v: 1,
            id: "t1".into(),
            name: Some("ci".into()),
            created_by: "u1".into(),
            created_ms: 1,
            expires_ms: 2,
            tags: Some(vec!["gpu".into()]),
        };
        s.put_worker_token(&token).await.unwrap();
        assert_eq!(s.get_worker_token("t1").await.unwrap(), Some(token.clone()));
        assert_eq!(s.list_worker_tokens().await.unwrap(), vec![token], "{name}");
        assert!(s.delete_worker_token("t1").await.unwrap(), "{name}");
        assert!(
            !s.delete_worker_token("t1").await.unwrap(),
            "{name}: gone already"
        );

        s.put_revoked_session("sid1", 100).await.unwrap();
        s.put_revoked_session("sid2", u64::MAX / 2).await.unwrap();
        let mut revoked = s.revoked_sessions().await.unwrap();
        revoked.sort();
        assert_eq!(
            revoked,
            vec![("sid1".into(), 100), ("sid2".into(), u64::MAX / 2)]
        );
        s.delete_revoked_session("sid1").await.unwrap();
        assert_eq!(s.revoked_sessions().await.unwrap().len(), 1, "{name}");

        // Queue order numbers rise, above any noted one.
        let a = s.next_seq().unwrap();
        let b2 = s.next_seq().unwrap();
        assert!(b2 > a, "{name}");
        s.note_seq(b2 + 1_000_000_000_000_000);
        assert!(s.next_seq().unwrap() > b2 + 1_000_000_000_000_000, "{name}");
    }
}

/// Two hubs' connections to one database: each sees the other's writes at once, the first
/// hub's secret is the one both use, and the schema migrates once when both start together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hubs_on_one_database_share_records_and_secrets() {
    let url = pg::fresh_database("two_hubs").expect("private PostgreSQL");
    let (a, b) = tokio::join!(PgStore::connect(&url, 4), PgStore::connect(&url, 4));
    let (a, b) = (a.expect("hub A connects"), b.expect("hub B connects"));
    a.insert_job(&job("j1", "u1", 1)).await.unwrap();
    assert_eq!(
        b.get_job("j1").await.unwrap().map(|j| j.id),
        Some("j1".into())
    );
    b.update_job("j1", &|j: &mut JobRecord| {
        j.status = JobStatus::Cancelled;
        Ok(())
    })
    .await
    .unwrap();
    assert!(a.unfinished_jobs().await.unwrap().is_empty());
    let first = a.shared_secret("jwt", b"from-a").await.unwrap();
    let second = b.shared_secret("jwt", b"from-b").await.unwrap();
    assert_eq!(first.as_deref(), Some(&b"from-a"[..]));
    assert_eq!(second, first, "the first hub's secret wins");
    // sled is one hub's own: it shares nothing.
    let dir = tempfile::tempdir().unwrap();
    let sled = SledStore::open(dir.path(), 8 << 20).unwrap();
    assert_eq!(sled.shared_secret("jwt", b"x").await.unwrap(), None);
}

/// A database written by a newer cmdx is refused with a message, not misread.
#[tokio::test]
async fn a_newer_schema_is_refused() {
    let url = pg::fresh_database("newer").expect("private PostgreSQL");
    drop(PgStore::connect(&url, 2).await.expect("migrates"));
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    client
        .execute("INSERT INTO cmdx_schema (version) VALUES (9999)", &[])
        .await
        .unwrap();
    let err = PgStore::connect(&url, 2).await.err().expect("refused");
    assert!(err.to_string().contains("newer than this cmdx"), "{err}");
}

/// Every write acknowledged before the server was SIGKILLed is there after it restarts, and
/// the store reconnects on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_a_killed_server() {
    let mut server = pg::PrivateServer::start().expect("private PostgreSQL");
    let url = server.create_database("crash").unwrap();
    let s = PgStore::connect(&url, 4).await.unwrap();
    for i in 0..200u64 {
        s.insert_job(&job(&format!("j{i:03}"), "u1", i))
            .await
            .unwrap();
        s.append_chunk(&format!("j{i:03}"), &chunk(0, 0, "out\n"))
            .await
            .unwrap();
    }
    server.stop(true);
    assert!(
        s.ping().await.is_err(),
        "the store says when the database is gone"
    );
    server.resume().expect("restart");
    let count = cmdx_e2e::wait_for("the store reconnects", || async {
        s.job_count().await.ok()
    })
    .await;
    assert_eq!(count, 200);
    assert_eq!(s.read_chunks("j199", 0, 100).await.unwrap().len(), 1);
}
