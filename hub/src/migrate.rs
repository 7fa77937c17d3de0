//! `cmdx migrate --from DATA_DIR --to postgres://…`: copies a stopped sled hub (users, worker
//! tokens, revoked sessions, workers, files, jobs with their output, blobs and the session and
//! worker-token keys) into an empty PostgreSQL database, so a team that started with `cmdx dev`
//! or one hub moves to a cluster keeping its history, its signed-in sessions and its agents'
//! tokens.

use std::path::Path;

use crate::blobs::Blobs;
use crate::error::HubError;
use crate::store::{JobQuery, PgStore, SECRET_JWT, SECRET_WORKER, SledStore, Store, StoreError};

/// What was copied.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Copied {
    /// User accounts.
    pub users: u64,
    /// Worker tokens, revoked sessions and workers.
    pub credentials: u64,
    /// File records.
    pub files: u64,
    /// Jobs.
    pub jobs: u64,
    /// Output chunks.
    pub chunks: u64,
    /// Blobs (uploaded contents, artifacts).
    pub blobs: u64,
}

fn refuse(message: impl Into<String>) -> HubError {
    HubError::Config(message.into())
}

/// Copies the sled hub in `data_dir` (stopped: sled locks its folder) into the empty database
/// at `url`; `progress` hears each step.
pub async fn migrate(
    data_dir: &Path,
    url: &str,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<Copied, HubError> {
    let db = data_dir.join("db");
    if !db.is_dir() {
        return Err(refuse(format!(
            "{} has no sled store (db/): is it a hub's data folder?",
            data_dir.display()
        )));
    }
    let from = SledStore::open(&db, 64 << 20).map_err(|e| {
        refuse(format!(
            "cannot open {} ({e}); stop the hub that uses it first",
            db.display()
        ))
    })?;
    let to = PgStore::connect(url, 8).await?;
    if to.job_count().await? > 0 || !to.list_users().await?.is_empty() {
        return Err(refuse(
            "the database already holds users or jobs: migrate into an empty database",
        ));
    }
    let mut copied = Copied::default();

    // The keys first: sessions and worker tokens issued by the sled hub stay valid.
    for (name, file) in [(SECRET_JWT, "jwt.key"), (SECRET_WORKER, "worker.key")] {
        let path = data_dir.join("secrets").join(file);
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let key =
            hex::decode(text.trim()).map_err(|e| refuse(format!("{}: {e}", path.display())))?;
        let stored = to.shared_secret(name, &key).await?;
        if stored.as_deref() != Some(key.as_slice()) {
            return Err(refuse(format!(
                "the database already has another {name} key (a hub ran on it): migrate into an \
                 empty database"
            )));
        }
    }
    progress("keys");

    for user in from.list_users().await? {
        to.insert_user(&user).await?;
        copied.users += 1;
    }
    for token in from.list_worker_tokens().await? {
        to.put_worker_token(&token).await?;
        copied.credentials += 1;
    }
    for (sid, exp) in from.revoked_sessions().await? {
        to.put_revoked_session(&sid, exp).await?;
        copied.credentials += 1;
    }
    for worker in from.list_workers().await? {
        to.put_worker(&worker).await?;
        copied.credentials += 1;
    }
    for drain in from.list_drains().await? {
        to.put_drain(&drain).await?;
        copied.credentials += 1;
    }
    progress("users, tokens and workers");

    // Blobs before the records that name them.
    let blobs = Blobs::in_data_dir(data_dir);
    let names = tokio::task::spawn_blocking({
        let blobs = blobs.clone();
        move || blobs.list_blocking()
    })
    .await
    .map_err(|e| refuse(e.to_string()))?
    .map_err(|source| HubError::DataDir {
        path: data_dir.join("blobs"),
        source,
    })?;
    for sha in names {
        to.put_blob(&sha, &data_dir.join("blobs").join(&sha))
            .await?;
        copied.blobs += 1;
    }
    for file in from.all_files().await? {
        to.put_file(&file).await?;
        copied.files += 1;
    }
    progress("files and blobs");

    let all = |_: &crate::store::JobRecord| true;
    let jobs = from
        .list_jobs(JobQuery {
            owner: None,
            before: None,
            limit: usize::MAX,
            filter: &all,
            max_scan: usize::MAX,
        })
        .await?;
    for job in jobs {
        // Output first: a job is never in the database without its log.
        let mut from_index = 0;
        loop {
            let page = from.read_chunks(&job.id, from_index, 1 << 20).await?;
            let Some(last) = page.last() else { break };
            from_index = last.index + 1;
            for chunk in &page {
                to.append_chunk(&job.id, chunk).await?;
                copied.chunks += 1;
            }
        }
        to.insert_job(&job).await?;
        copied.jobs += 1;
        if copied.jobs.is_multiple_of(1000) {
            progress(&format!("{} jobs", copied.jobs));
        }
    }
    progress("jobs and output");
    if to.job_count().await? != copied.jobs {
        return Err(HubError::Store(StoreError::Conflict(
            "the database's job count differs from the jobs copied: was a hub writing to it?"
                .into(),
        )));
    }
    Ok(copied)
}
