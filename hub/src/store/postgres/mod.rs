//! The PostgreSQL backend, for several hubs on one database (`cmdx hub --store postgres://…`).
//!
//! Every write is one autocommitted statement (or one transaction) on a connection opened with
//! `synchronous_commit=on`, so a write method returns only once its commit is durable and
//! [`Store::sync`] has nothing left to do. Job updates are a compare-and-swap on the row's
//! `version` column (read, apply the closure, `UPDATE … WHERE version = $seen`, retry on a
//! miss), the same contract as sled's; a batch of updates ([`Store::update_jobs`]) is one read
//! and one `UPDATE … FROM unnest(…)` whatever its size. The schema is in [`schema`].

pub mod schema;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;
use tokio_postgres::types::{Json, ToSql};

use super::*;

type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// PostgreSQL-backed [`Store`].
pub struct PgStore {
    pool: Pool,
    /// For the listening connection, which is not the pool's.
    config: tokio_postgres::Config,
    /// `next_seq` never returns at or below this.
    seq_floor: AtomicU64,
}

fn backend(op: &'static str) -> impl FnOnce(tokio_postgres::Error) -> StoreError {
    move |e| match e.as_db_error() {
        // Connection exceptions (08), operator intervention such as a shutdown (57): the
        // database is going away or not there yet.
        Some(db) if db.code().code().starts_with("08") || db.code().code().starts_with("57") => {
            StoreError::Unavailable {
                op,
                message: format!("{}: {}", db.code().code(), db.message()),
            }
        }
        Some(db) => StoreError::Backend {
            op,
            message: format!("{}: {}", db.code().code(), db.message()),
        },
        // No answer from the server at all: the connection broke.
        None => StoreError::Unavailable {
            op,
            message: e.to_string(),
        },
    }
}

fn corrupt(key: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        key: key.to_string(),
        message: e.to_string(),
    }
}

/// A JSON record column.
fn record<T: serde::de::DeserializeOwned>(row: &tokio_postgres::Row, col: usize) -> StoreResult<T> {
    row.try_get::<_, Json<T>>(col)
        .map(|j| j.0)
        .map_err(|e| corrupt(&format!("record column {col}"), e))
}

fn chunk(job_id: &str, row: &tokio_postgres::Row) -> StoreResult<ChunkRecord> {
    let idx: i64 = row.get(0);
    let raw: &[u8] = row.get(1);
    ChunkRecord::decode(idx as u64, raw)
        .ok_or_else(|| corrupt(&format!("{job_id}/{idx}"), "bad chunk"))
}

impl PgStore {
    /// Connects to `url` (`postgres://USER@HOST:PORT/DB`), with at most `pool_size`
    /// connections, and brings the schema up to date.
    pub async fn connect(url: &str, pool_size: usize) -> StoreResult<PgStore> {
        let mut cfg: tokio_postgres::Config = url.parse().map_err(|e| StoreError::Backend {
            op: "parse the store URL",
            message: format!("{e}"),
        })?;
        // Acknowledgements follow durable commits, whatever the server's default.
        cfg.options("-c synchronous_commit=on");
        if cfg.get_application_name().is_none() {
            cfg.application_name("cmdx-hub");
        }
        if cfg.get_connect_timeout().is_none() {
            cfg.connect_timeout(Duration::from_secs(10));
        }
        let manager = Manager::from_config(
            cfg.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size.max(2))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(10)))
            .create_timeout(Some(Duration::from_secs(10)))
            .recycle_timeout(Some(Duration::from_secs(5)))
            .build()
            .map_err(|e| StoreError::Backend {
                op: "connection pool",
                message: e.to_string(),
            })?;
        let store = PgStore {
            pool,
            config: cfg,
            seq_floor: AtomicU64::new(0),
        };
        store.migrate().await?;
        Ok(store)
    }

    async fn client(&self, op: &'static str) -> StoreResult<Object> {
        self.pool.get().await.map_err(|e| StoreError::Unavailable {
            op,
            message: format!("no database connection: {e}"),
        })
    }

    async fn query(
        &self,
        op: &'static str,
        sql: &str,
        params: Params<'_>,
    ) -> StoreResult<Vec<tokio_postgres::Row>> {
        let client = self.client(op).await?;
        let statement = client.prepare_cached(sql).await.map_err(backend(op))?;
        client.query(&statement, params).await.map_err(backend(op))
    }

    async fn query_opt(
        &self,
        op: &'static str,
        sql: &str,
        params: Params<'_>,
    ) -> StoreResult<Option<tokio_postgres::Row>> {
        Ok(self.query(op, sql, params).await?.into_iter().next())
    }

    async fn execute(&self, op: &'static str, sql: &str, params: Params<'_>) -> StoreResult<u64> {
        let client = self.client(op).await?;
        let statement = client.prepare_cached(sql).await.map_err(backend(op))?;
        client
            .execute(&statement, params)
            .await
            .map_err(backend(op))
    }

    async fn records<T: serde::de::DeserializeOwned>(
        &self,
        op: &'static str,
        sql: &str,
        params: Params<'_>,
    ) -> StoreResult<Vec<T>> {
        self.query(op, sql, params)
            .await?
            .iter()
            .map(|row| record(row, 0))
            .collect()
    }

    async fn one_record<T: serde::de::DeserializeOwned>(
        &self,
        op: &'static str,
        sql: &str,
        params: Params<'_>,
    ) -> StoreResult<Option<T>> {
        self.query_opt(op, sql, params)
            .await?
            .map(|row| record(&row, 0))
            .transpose()
    }

    /// Applies the migrations this database lacks, one hub at a time (advisory lock).
    async fn migrate(&self) -> StoreResult<()> {
        let op = "migrate the schema";
        let mut client = self.client(op).await?;
        client
            .execute("SELECT pg_advisory_lock($1)", &[&schema::MIGRATION_LOCK])
            .await
            .map_err(backend(op))?;
        let result = async {
            client
                .batch_execute(
                    "CREATE TABLE IF NOT EXISTS cmdx_schema (version int PRIMARY KEY, \
                     applied_at timestamptz NOT NULL DEFAULT now())",
                )
                .await
                .map_err(backend(op))?;
            let applied: i32 = client
                .query_one("SELECT coalesce(max(version), 0) FROM cmdx_schema", &[])
                .await
                .map_err(backend(op))?
                .get(0);
            let known = schema::MIGRATIONS.last().map_or(0, |m| m.0);
            if applied > known {
                return Err(StoreError::Backend {
                    op,
                    message: format!(
                        "the database's schema is version {applied}, newer than this cmdx knows \
                         ({known}): upgrade cmdx"
                    ),
                });
            }
            for (version, sql) in schema::MIGRATIONS.iter().filter(|m| m.0 > applied) {
                let tx = client.transaction().await.map_err(backend(op))?;
                tx.batch_execute(sql).await.map_err(backend(op))?;
                tx.execute("INSERT INTO cmdx_schema (version) VALUES ($1)", &[version])
                    .await
                    .map_err(backend(op))?;
                tx.commit().await.map_err(backend(op))?;
                tracing::info!(version, "store schema migrated");
            }
            Ok(())
        }
        .await;
        let unlocked = client
            .execute("SELECT pg_advisory_unlock($1)", &[&schema::MIGRATION_LOCK])
            .await;
        result?;
        unlocked.map_err(backend(op))?;
        Ok(())
    }

    /// One job's compare-and-swap token and record.
    async fn versioned_job(&self, id: &str) -> StoreResult<Option<(i64, JobRecord)>> {
        let row = self
            .query_opt(
                "get job",
                "SELECT version, record FROM jobs WHERE id = $1",
                &[&id],
            )
            .await?;
        row.map(|r| Ok((r.get(0), record(&r, 1)?))).transpose()
    }
}

/// Bytes of a blob per row of `blob_parts`.
const BLOB_PART: usize = 1 << 20;

/// The channel hubs publish notes on.
const CHANNEL: &str = "cmdx";

/// Largest payload of one `NOTIFY` (the server's limit is 8000 bytes).
const NOTIFY_PAYLOAD: usize = 7900;

/// Joins `notes` into payloads of at most [`NOTIFY_PAYLOAD`] bytes, one note per line (a note
/// longer than that alone is dropped: notes are ids and tags, far shorter).
fn payloads(notes: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut cur = String::new();
    for note in notes
        .iter()
        .filter(|n| n.len() < NOTIFY_PAYLOAD && !n.contains('\n'))
    {
        if !cur.is_empty() && cur.len() + 1 + note.len() > NOTIFY_PAYLOAD {
            out.push(std::mem::take(&mut cur));
        }
        if !cur.is_empty() {
            cur.push('\n');
        }
        cur.push_str(note);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[async_trait]
impl Store for PgStore {
    fn shared(&self) -> bool {
        true
    }

    async fn publish(&self, notes: &[String]) -> StoreResult<()> {
        // A transaction that notifies takes a database-wide lock at commit: one statement per
        // batch, never one per note.
        for payload in payloads(notes) {
            self.execute(
                "publish notes",
                "SELECT pg_notify($1, $2)",
                &[&CHANNEL, &payload],
            )
            .await?;
        }
        Ok(())
    }

    async fn listen(&self) -> StoreResult<Option<Listener>> {
        use tokio_postgres::AsyncMessage;
        let op = "listen for notes";
        let (client, mut conn) = self.config.connect(NoTls).await.map_err(backend(op))?;
        let (tx, notes) = tokio::sync::mpsc::unbounded_channel();
        let forward = move |msg: AsyncMessage| {
            if let AsyncMessage::Notification(n) = msg {
                for line in n.payload().lines() {
                    let _ = tx.send(line.to_string());
                }
            }
        };
        // The connection must be driven while LISTEN runs.
        {
            let statement = format!("LISTEN {CHANNEL}");
            let listen = client.batch_execute(&statement);
            tokio::pin!(listen);
            loop {
                tokio::select! {
                    done = &mut listen => {
                        done.map_err(backend(op))?;
                        break;
                    }
                    msg = std::future::poll_fn(|cx| conn.poll_message(cx)) => match msg {
                        Some(Ok(m)) => forward(m),
                        Some(Err(e)) => return Err(backend(op)(e)),
                        None => return Err(StoreError::Unavailable {
                            op,
                            message: "connection closed".into(),
                        }),
                    },
                }
            }
        }
        let driver = async move {
            // Holding the client keeps the session (and so the LISTEN) open.
            let _client = client;
            while let Some(Ok(msg)) = std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                forward(msg);
            }
        };
        Ok(Some(Listener {
            notes,
            driver: Box::pin(driver),
        }))
    }

    async fn sync(&self) -> StoreResult<()> {
        // Every write committed (synchronous_commit=on) before it returned.
        Ok(())
    }

    fn next_seq(&self) -> StoreResult<u64> {
        // Microseconds since the epoch, strictly increasing in this hub: queue order across
        // hubs is submission time (as exact as the hubs' clocks agree), with no round trip.
        let now_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        Ok(super::next_above(&self.seq_floor, now_us))
    }

    fn note_seq(&self, seq: u64) {
        self.seq_floor.fetch_max(seq, Ordering::SeqCst);
    }

    fn export_records(&self, _out: &mut dyn std::io::Write) -> StoreResult<u64> {
        Err(StoreError::Backend {
            op: "export",
            message: "a PostgreSQL store is backed up with pg_dump (see docs/operations.md)".into(),
        })
    }

    async fn shared_secret(&self, name: &str, candidate: &[u8]) -> StoreResult<Option<Vec<u8>>> {
        self.execute(
            "store a shared secret",
            "INSERT INTO secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
            &[&name, &candidate],
        )
        .await?;
        let row = self
            .query_opt(
                "read a shared secret",
                "SELECT value FROM secrets WHERE name = $1",
                &[&name],
            )
            .await?;
        Ok(row.map(|r| r.get::<_, Vec<u8>>(0)))
    }

    async fn mark_present(&self, hub_id: &str, workers: &[String]) -> StoreResult<()> {
        if workers.is_empty() {
            return Ok(());
        }
        self.execute(
            "mark workers present",
            "INSERT INTO presence (worker_id, hub_id, seen_at) \
             SELECT w, $2, now() FROM unnest($1::text[]) AS w \
             ON CONFLICT (worker_id) DO UPDATE SET hub_id = EXCLUDED.hub_id, \
             seen_at = EXCLUDED.seen_at",
            &[&workers, &hub_id],
        )
        .await?;
        Ok(())
    }

    async fn present_workers(&self, secs: u64) -> StoreResult<Option<Vec<(String, String)>>> {
        let rows = self
            .query(
                "present workers",
                "SELECT worker_id, hub_id FROM presence \
                 WHERE seen_at > now() - make_interval(secs => $1)",
                &[&(secs as f64)],
            )
            .await?;
        Ok(Some(rows.iter().map(|r| (r.get(0), r.get(1))).collect()))
    }

    async fn put_blob(&self, sha256: &str, path: &std::path::Path) -> StoreResult<()> {
        use tokio::io::AsyncReadExt;
        let op = "store a blob";
        let io = |e: std::io::Error| StoreError::Backend {
            op,
            message: e.to_string(),
        };
        if self
            .query_opt(op, "SELECT 1 FROM blobs WHERE sha256 = $1", &[&sha256])
            .await?
            .is_some()
        {
            return Ok(());
        }
        let mut file = tokio::fs::File::open(path).await.map_err(io)?;
        let mut client = self.client(op).await?;
        let tx = client.transaction().await.map_err(backend(op))?;
        let insert = tx
            .prepare(
                "INSERT INTO blob_parts (sha256, part, data) VALUES ($1, $2, $3) \
                 ON CONFLICT DO NOTHING",
            )
            .await
            .map_err(backend(op))?;
        let mut buf = vec![0u8; BLOB_PART];
        let (mut part, mut size) = (0i32, 0i64);
        loop {
            let mut filled = 0;
            while filled < BLOB_PART {
                let n = file.read(&mut buf[filled..]).await.map_err(io)?;
                if n == 0 {
                    break;
                }
                filled += n;
            }
            if filled == 0 && part > 0 {
                break;
            }
            tx.execute(&insert, &[&sha256, &part, &&buf[..filled]])
                .await
                .map_err(backend(op))?;
            part += 1;
            size += filled as i64;
            if filled < BLOB_PART {
                break;
            }
        }
        tx.execute(
            "INSERT INTO blobs (sha256, size, parts) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            &[&sha256, &size, &part],
        )
        .await
        .map_err(backend(op))?;
        tx.commit().await.map_err(backend(op))
    }

    async fn get_blob(&self, sha256: &str, dest: &std::path::Path) -> StoreResult<bool> {
        use tokio::io::AsyncWriteExt;
        let op = "read a blob";
        let io = |e: std::io::Error| StoreError::Backend {
            op,
            message: e.to_string(),
        };
        let Some(row) = self
            .query_opt(op, "SELECT parts FROM blobs WHERE sha256 = $1", &[&sha256])
            .await?
        else {
            return Ok(false);
        };
        let parts: i32 = row.get(0);
        let mut out = crate::private::create_file_async(dest).await.map_err(io)?;
        for part in 0..parts {
            let row = self
                .query_opt(
                    op,
                    "SELECT data FROM blob_parts WHERE sha256 = $1 AND part = $2",
                    &[&sha256, &part],
                )
                .await?
                .ok_or_else(|| corrupt(sha256, format!("part {part} missing")))?;
            out.write_all(row.get::<_, &[u8]>(0)).await.map_err(io)?;
        }
        out.flush().await.map_err(io)?;
        out.sync_all().await.map_err(io)?;
        Ok(true)
    }

    async fn delete_blob(&self, sha256: &str) -> StoreResult<u64> {
        let op = "delete a blob";
        let mut client = self.client(op).await?;
        let tx = client.transaction().await.map_err(backend(op))?;
        let size: Option<i64> = tx
            .query_opt(
                "DELETE FROM blobs WHERE sha256 = $1 RETURNING size",
                &[&sha256],
            )
            .await
            .map_err(backend(op))?
            .map(|r| r.get(0));
        tx.execute("DELETE FROM blob_parts WHERE sha256 = $1", &[&sha256])
            .await
            .map_err(backend(op))?;
        tx.commit().await.map_err(backend(op))?;
        Ok(size.unwrap_or(0) as u64)
    }

    async fn insert_job(&self, job: &JobRecord) -> StoreResult<()> {
        self.execute(
            "insert job",
            "INSERT INTO jobs (id, owner, unfinished, record) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (id) DO UPDATE SET owner = EXCLUDED.owner, \
             unfinished = EXCLUDED.unfinished, record = EXCLUDED.record, \
             version = jobs.version + 1",
            &[&job.id, &job.owner, &!job.status.is_terminal(), &Json(job)],
        )
        .await?;
        Ok(())
    }

    async fn get_job(&self, id: &str) -> StoreResult<Option<JobRecord>> {
        self.one_record("get job", "SELECT record FROM jobs WHERE id = $1", &[&id])
            .await
    }

    async fn update_job(&self, id: &str, update: JobUpdate<'_>) -> StoreResult<JobRecord> {
        loop {
            let (version, mut job) = self
                .versioned_job(id)
                .await?
                .ok_or_else(|| StoreError::NotFound(id.to_string()))?;
            update(&mut job)?;
            let swapped = self
                .execute(
                    "update job",
                    "UPDATE jobs SET record = $3, unfinished = $4, version = version + 1 \
                     WHERE id = $1 AND version = $2",
                    &[&id, &version, &Json(&job), &!job.status.is_terminal()],
                )
                .await?;
            if swapped == 1 {
                return Ok(job);
            }
        }
    }

    async fn update_jobs(
        &self,
        ids: &[String],
        update: BatchUpdate<'_>,
    ) -> StoreResult<Vec<StoreResult<JobRecord>>> {
        let mut unique = ids.to_vec();
        unique.sort();
        unique.dedup();
        if unique.len() != ids.len() {
            // The one-statement swap below needs one row per id.
            let mut out = Vec::with_capacity(ids.len());
            for (i, id) in ids.iter().enumerate() {
                out.push(self.update_job(id, &|job| update(i, job)).await);
            }
            return Ok(out);
        }
        let rows = self
            .query(
                "get jobs",
                "SELECT id, version, record FROM jobs WHERE id = ANY($1)",
                &[&ids],
            )
            .await?;
        let mut seen = std::collections::HashMap::with_capacity(rows.len());
        for row in &rows {
            let id: String = row.get(0);
            let version: i64 = row.get(1);
            seen.insert(id, (version, record::<JobRecord>(row, 2)?));
        }
        let mut out: Vec<Option<StoreResult<JobRecord>>> = Vec::with_capacity(ids.len());
        let (mut swap_ids, mut versions, mut records, mut unfinished) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (i, id) in ids.iter().enumerate() {
            match seen.remove(id) {
                None => out.push(Some(Err(StoreError::NotFound(id.clone())))),
                Some((version, mut job)) => match update(i, &mut job) {
                    Err(e) => out.push(Some(Err(e))),
                    Ok(()) => {
                        swap_ids.push(id.clone());
                        versions.push(version);
                        unfinished.push(!job.status.is_terminal());
                        records.push(Json(job));
                        out.push(None);
                    }
                },
            }
        }
        let swapped: std::collections::HashSet<String> = if swap_ids.is_empty() {
            Default::default()
        } else {
            self.query(
                "update jobs",
                "UPDATE jobs AS j SET record = u.record, unfinished = u.unfinished, \
                 version = j.version + 1 \
                 FROM unnest($1::text[], $2::bigint[], $3::jsonb[], $4::bool[]) \
                 AS u(id, version, record, unfinished) \
                 WHERE j.id = u.id AND j.version = u.version RETURNING j.id",
                &[&swap_ids, &versions, &records, &unfinished],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect()
        };
        let mut records = records.into_iter();
        let mut result = Vec::with_capacity(ids.len());
        for (i, (id, slot)) in ids.iter().zip(out).enumerate() {
            result.push(match slot {
                Some(done) => done,
                None => {
                    let job = records.next().map(|j| j.0);
                    match job {
                        Some(job) if swapped.contains(id) => Ok(job),
                        // Changed underneath: this one goes the single-row way.
                        _ => self.update_job(id, &|job| update(i, job)).await,
                    }
                }
            });
        }
        Ok(result)
    }

    async fn unfinished_jobs(&self) -> StoreResult<Vec<JobRecord>> {
        self.records(
            "unfinished jobs",
            "SELECT record FROM jobs WHERE unfinished",
            &[],
        )
        .await
    }

    async fn held_jobs(&self) -> StoreResult<Vec<(String, String)>> {
        Ok(self
            .query(
                "jobs held by workers",
                "SELECT record->>'worker_id', id FROM jobs WHERE unfinished \
                 AND record->>'status' IN ('assigned', 'running') \
                 AND record->>'worker_id' IS NOT NULL",
                &[],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
    }

    async fn jobs_held_by(&self, worker: &str) -> StoreResult<Vec<String>> {
        Ok(self
            .query(
                "jobs held by a worker",
                "SELECT id FROM jobs WHERE unfinished AND record->>'worker_id' = $1 \
                 AND record->>'status' IN ('assigned', 'running')",
                &[&worker],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    async fn list_jobs(&self, q: JobQuery<'_>) -> StoreResult<Vec<JobRecord>> {
        let mut out = Vec::new();
        let mut scanned = 0usize;
        let mut before = q.before.map(str::to_string);
        let mut page = q.limit.clamp(1, 500) as i64;
        loop {
            let rows = match q.owner {
                Some(owner) => {
                    self.query(
                        "list jobs",
                        "SELECT id, record FROM jobs WHERE owner = $1 \
                         AND ($2::text IS NULL OR id < $2) ORDER BY id DESC LIMIT $3",
                        &[&owner, &before, &page],
                    )
                    .await?
                }
                None => {
                    self.query(
                        "list jobs",
                        "SELECT id, record FROM jobs WHERE ($1::text IS NULL OR id < $1) \
                         ORDER BY id DESC LIMIT $2",
                        &[&before, &page],
                    )
                    .await?
                }
            };
            let short = (rows.len() as i64) < page;
            for row in &rows {
                before = Some(row.get(0));
                let job: JobRecord = record(row, 1)?;
                scanned += 1;
                if (q.filter)(&job) {
                    out.push(job);
                }
                if out.len() >= q.limit || scanned >= q.max_scan {
                    return Ok(out);
                }
            }
            if short {
                return Ok(out);
            }
            page = 500;
        }
    }

    async fn job_count(&self) -> StoreResult<u64> {
        let row = self
            .query_opt("count jobs", "SELECT count(*) FROM jobs", &[])
            .await?;
        Ok(row.map_or(0, |r| r.get::<_, i64>(0) as u64))
    }

    async fn ping(&self) -> StoreResult<()> {
        self.query("ping", "SELECT 1", &[]).await?;
        Ok(())
    }

    async fn append_chunk(&self, job_id: &str, chunk: &ChunkRecord) -> StoreResult<()> {
        self.execute(
            "append chunk",
            "INSERT INTO output (job_id, idx, byte_offset, chunk) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (job_id, idx) DO UPDATE SET byte_offset = EXCLUDED.byte_offset, \
             chunk = EXCLUDED.chunk",
            &[
                &job_id,
                &(chunk.index as i64),
                &(chunk.offset as i64),
                &chunk.encode(),
            ],
        )
        .await?;
        Ok(())
    }

    async fn append_chunks(&self, job_id: &str, chunks: &[ChunkRecord]) -> StoreResult<()> {
        if chunks.len() == 1 {
            return self.append_chunk(job_id, &chunks[0]).await;
        }
        let indexes: Vec<i64> = chunks.iter().map(|c| c.index as i64).collect();
        let offsets: Vec<i64> = chunks.iter().map(|c| c.offset as i64).collect();
        let encoded: Vec<Vec<u8>> = chunks.iter().map(ChunkRecord::encode).collect();
        self.execute(
            "append chunks",
            "INSERT INTO output (job_id, idx, byte_offset, chunk) \
             SELECT $1, i, o, c FROM unnest($2::bigint[], $3::bigint[], $4::bytea[]) AS u(i, o, c) \
             ON CONFLICT (job_id, idx) DO UPDATE SET byte_offset = EXCLUDED.byte_offset, \
             chunk = EXCLUDED.chunk",
            &[&job_id, &indexes, &offsets, &encoded],
        )
        .await?;
        Ok(())
    }

    async fn read_chunks(
        &self,
        job_id: &str,
        from_index: u64,
        max_bytes: usize,
    ) -> StoreResult<Vec<ChunkRecord>> {
        const PAGE: i64 = 256;
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut from = from_index.min(i64::MAX as u64) as i64;
        loop {
            let rows = self
                .query(
                    "read chunks",
                    "SELECT idx, chunk FROM output WHERE job_id = $1 AND idx >= $2 \
                     ORDER BY idx LIMIT $3",
                    &[&job_id, &from, &PAGE],
                )
                .await?;
            let short = (rows.len() as i64) < PAGE;
            for row in &rows {
                let c = chunk(job_id, row)?;
                from = c.index as i64 + 1;
                bytes += c.data.len();
                out.push(c);
                if bytes >= max_bytes {
                    return Ok(out);
                }
            }
            if short {
                return Ok(out);
            }
        }
    }

    async fn last_chunk(&self, job_id: &str) -> StoreResult<Option<ChunkRecord>> {
        self.query_opt(
            "last chunk",
            "SELECT idx, chunk FROM output WHERE job_id = $1 ORDER BY idx DESC LIMIT 1",
            &[&job_id],
        )
        .await?
        .map(|row| chunk(job_id, &row))
        .transpose()
    }

    async fn chunk_index_at(&self, job_id: &str, offset: u64) -> StoreResult<Option<u64>> {
        let Some(last) = self.last_chunk(job_id).await? else {
            return Ok(None);
        };
        if offset >= last.end() {
            return Ok(None);
        }
        let offset = offset.min(i64::MAX as u64) as i64;
        // The chunk starting at or before `offset`, else (the head was dropped) the first one.
        let row = self
            .query_opt(
                "chunk index",
                "SELECT coalesce(\
                   (SELECT idx FROM output WHERE job_id = $1 AND byte_offset <= $2 \
                    ORDER BY idx DESC LIMIT 1), \
                   (SELECT min(idx) FROM output WHERE job_id = $1))",
                &[&job_id, &offset],
            )
            .await?;
        Ok(row
            .and_then(|r| r.get::<_, Option<i64>>(0))
            .map(|i| i as u64))
    }

    async fn delete_chunks_before(&self, job_id: &str, index: u64) -> StoreResult<()> {
        self.execute(
            "delete chunks",
            "DELETE FROM output WHERE job_id = $1 AND idx < $2",
            &[&job_id, &(index.min(i64::MAX as u64) as i64)],
        )
        .await?;
        Ok(())
    }

    async fn get_user_by_email(&self, email: &str) -> StoreResult<Option<UserRecord>> {
        self.one_record(
            "get user",
            "SELECT record FROM users WHERE email = $1",
            &[&email],
        )
        .await
    }

    async fn get_user(&self, id: &str) -> StoreResult<Option<UserRecord>> {
        self.one_record("get user", "SELECT record FROM users WHERE id = $1", &[&id])
            .await
    }

    async fn insert_user(&self, user: &UserRecord) -> StoreResult<()> {
        let inserted = self
            .execute(
                "insert user",
                "INSERT INTO users (id, email, record) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                &[&user.id, &user.email, &Json(user)],
            )
            .await?;
        if inserted == 0 {
            return Err(StoreError::Conflict(format!("user {} exists", user.email)));
        }
        Ok(())
    }

    async fn list_users(&self) -> StoreResult<Vec<UserRecord>> {
        self.records("list users", "SELECT record FROM users ORDER BY email", &[])
            .await
    }

    async fn delete_user(&self, user: &UserRecord) -> StoreResult<()> {
        let deleted = self
            .execute(
                "delete user",
                "DELETE FROM users WHERE id = $1 AND email = $2",
                &[&user.id, &user.email],
            )
            .await?;
        if deleted == 0 {
            return Err(StoreError::NotFound(format!("user {}", user.id)));
        }
        Ok(())
    }

    async fn replace_user(&self, user: &UserRecord) -> StoreResult<()> {
        let updated = self
            .execute(
                "replace user",
                "UPDATE users SET record = $3 WHERE id = $1 AND email = $2",
                &[&user.id, &user.email, &Json(user)],
            )
            .await?;
        if updated == 0 {
            return Err(StoreError::NotFound(format!("user {}", user.id)));
        }
        Ok(())
    }

    async fn put_file(&self, file: &FileRecord) -> StoreResult<()> {
        self.execute(
            "put file",
            "INSERT INTO files (id, owner, record) VALUES ($1, $2, $3) \
             ON CONFLICT (id) DO UPDATE SET owner = EXCLUDED.owner, record = EXCLUDED.record",
            &[&file.id, &file.owner, &Json(file)],
        )
        .await?;
        Ok(())
    }

    async fn get_file(&self, id: &str) -> StoreResult<Option<FileRecord>> {
        self.one_record("get file", "SELECT record FROM files WHERE id = $1", &[&id])
            .await
    }

    async fn list_files(&self, owner: &str) -> StoreResult<Vec<FileRecord>> {
        self.records(
            "list files",
            "SELECT record FROM files WHERE owner = $1 ORDER BY id DESC",
            &[&owner],
        )
        .await
    }

    async fn all_files(&self) -> StoreResult<Vec<FileRecord>> {
        self.records("list files", "SELECT record FROM files ORDER BY id", &[])
            .await
    }

    async fn delete_file(&self, id: &str) -> StoreResult<()> {
        self.execute("delete file", "DELETE FROM files WHERE id = $1", &[&id])
            .await?;
        Ok(())
    }

    async fn delete_job(&self, id: &str) -> StoreResult<u64> {
        let op = "delete job";
        let mut client = self.client(op).await?;
        let tx = client.transaction().await.map_err(backend(op))?;
        let exists = tx
            .query_opt("SELECT 1 FROM jobs WHERE id = $1 FOR UPDATE", &[&id])
            .await
            .map_err(backend(op))?;
        if exists.is_none() {
            return Ok(0);
        }
        let freed: i64 = tx
            .query_one(
                "WITH d AS (DELETE FROM output WHERE job_id = $1 RETURNING length(chunk) AS n) \
                 SELECT coalesce(sum(n), 0)::bigint FROM d",
                &[&id],
            )
            .await
            .map_err(backend(op))?
            .get(0);
        tx.execute("DELETE FROM jobs WHERE id = $1", &[&id])
            .await
            .map_err(backend(op))?;
        tx.commit().await.map_err(backend(op))?;
        Ok(freed as u64)
    }

    async fn put_worker(&self, worker: &WorkerRecord) -> StoreResult<()> {
        self.execute(
            "put worker",
            "INSERT INTO workers (id, record) VALUES ($1, $2) \
             ON CONFLICT (id) DO UPDATE SET record = EXCLUDED.record",
            &[&worker.id, &Json(worker)],
        )
        .await?;
        Ok(())
    }

    async fn list_workers(&self) -> StoreResult<Vec<WorkerRecord>> {
        self.records(
            "list workers",
            "SELECT record FROM workers ORDER BY id",
            &[],
        )
        .await
    }

    async fn put_drain(&self, drain: &DrainRecord) -> StoreResult<()> {
        self.execute(
            "put drain",
            "INSERT INTO drains (worker_id, record) VALUES ($1, $2) \
             ON CONFLICT (worker_id) DO UPDATE SET record = EXCLUDED.record",
            &[&drain.worker_id, &Json(drain)],
        )
        .await?;
        Ok(())
    }

    async fn list_drains(&self) -> StoreResult<Vec<DrainRecord>> {
        self.records(
            "list drains",
            "SELECT record FROM drains ORDER BY worker_id",
            &[],
        )
        .await
    }

    async fn delete_drain(&self, worker_id: &str) -> StoreResult<bool> {
        let n = self
            .execute(
                "delete drain",
                "DELETE FROM drains WHERE worker_id = $1",
                &[&worker_id],
            )
            .await?;
        Ok(n > 0)
    }

    async fn delete_worker(&self, id: &str) -> StoreResult<()> {
        self.execute("delete worker", "DELETE FROM workers WHERE id = $1", &[&id])
            .await?;
        Ok(())
    }

    async fn put_worker_token(&self, token: &WorkerTokenRecord) -> StoreResult<()> {
        self.execute(
            "put token",
            "INSERT INTO worker_tokens (id, record) VALUES ($1, $2) \
             ON CONFLICT (id) DO UPDATE SET record = EXCLUDED.record",
            &[&token.id, &Json(token)],
        )
        .await?;
        Ok(())
    }

    async fn get_worker_token(&self, id: &str) -> StoreResult<Option<WorkerTokenRecord>> {
        self.one_record(
            "get token",
            "SELECT record FROM worker_tokens WHERE id = $1",
            &[&id],
        )
        .await
    }

    async fn put_revoked_session(&self, sid: &str, exp_s: u64) -> StoreResult<()> {
        self.execute(
            "revoke session",
            "INSERT INTO revoked_sessions (sid, exp_s) VALUES ($1, $2) \
             ON CONFLICT (sid) DO UPDATE SET exp_s = EXCLUDED.exp_s",
            &[&sid, &(exp_s.min(i64::MAX as u64) as i64)],
        )
        .await?;
        Ok(())
    }

    async fn revoked_sessions(&self) -> StoreResult<Vec<(String, u64)>> {
        Ok(self
            .query(
                "list revoked sessions",
                "SELECT sid, exp_s FROM revoked_sessions",
                &[],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get::<_, i64>(1) as u64))
            .collect())
    }

    async fn delete_revoked_session(&self, sid: &str) -> StoreResult<()> {
        self.execute(
            "forget revoked session",
            "DELETE FROM revoked_sessions WHERE sid = $1",
            &[&sid],
        )
        .await?;
        Ok(())
    }

    async fn list_worker_tokens(&self) -> StoreResult<Vec<WorkerTokenRecord>> {
        self.records(
            "list tokens",
            "SELECT record FROM worker_tokens ORDER BY id",
            &[],
        )
        .await
    }

    async fn delete_worker_token(&self, id: &str) -> StoreResult<bool> {
        Ok(self
            .execute(
                "delete token",
                "DELETE FROM worker_tokens WHERE id = $1",
                &[&id],
            )
            .await?
            > 0)
    }
}
