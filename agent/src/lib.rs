//! The cmdx agent: connects to a hub, takes jobs, fetches and safely extracts their ZIPs,
//! runs each command in the sandbox, streams its output, and reconnects and resumes.
//!
//! Entry point: [`run`] with an [`AgentConfig`] and a [`Control`] watch channel (the `cmdx
//! agent` and `cmdx dev` commands drive it from signals).
//!
//! # Layout
//! - `core`: the coordinator task (connection, held jobs, unacknowledged output, control);
//! - `conn`: the WebSocket (`/ws/agent`, token in a header, bounded buffers);
//! - `job`: one attempt from workspace to outcome; `runner`: the sandbox seam;
//! - `output`: pipe pumping, batching (~20 ms or 32 KiB) and the back-pressure window;
//! - `telemetry`: the metrics the agent records (`metrics` facade);
//! - `fetch`: hub URLs, the capped, hashed ZIP download and the artifact upload; `extract`:
//!   safe extraction; `collect`: safe artifact collection;
//! - `image`: job images (registry pulls, safe layer unpacking, the cache, the image's root);
//! - `tls`: the rustls client configuration (system roots plus an optional private CA) of
//!   both the WebSocket and the HTTP client, also used by the `cmdx` CLI;
//! - `host`: host facts and the persistent worker id; `config`, `error`.
//!
//! # Work directory
//! `work_dir/worker-id` (the stable id), `work_dir/downloads/` (ZIPs being fetched and artifact ZIPs being uploaded, mode
//! 0700) and `work_dir/jobs/<job>-<attempt>/` (one [`cmdx_sandbox::Workspace`] per job, with
//! `job/`, `tmp/` and `shm/` bound at `/workspace` (cwd and `HOME`), `/tmp` (`TMPDIR`) and
//! `/dev/shm` of the job's private root; on a host without one, `job/` and `tmp/` by their host
//! paths). Jobs can reach only their own workspace: the agent's files are outside the private
//! root and every landlock rule. `work_dir/images/` is the job image cache (mode 0700; see the `image`
//! module). `work_dir/agent.lock` is
//! held (`flock`) while the agent runs: a second agent on the same work dir refuses to start.
//!
//! # Crash recovery
//! Job cgroups are grouped per agent (`cmdx/agent-<worker id>-<work dir hash>/<job>`, see
//! [`cmdx_sandbox::Spec::cgroup_group`]). `PR_SET_PDEATHSIG` kills a job's main process when
//! the agent dies (in a private root that is the job's init, and with it the whole job; without
//! one only the main process), so at start the agent kills every process left in its group's cgroups
//! (a previous process on the same work dir was `kill -9`'d) and unmounts and removes the
//! leftover workspaces ([`cmdx_sandbox::Workspace::remove_leftover`]); on a clean exit it
//! removes its empty group.
//!
//! # Metrics
//! Recorded through the `metrics` facade (no-ops until the binary installs a recorder):
//! `cmdx_agent_sandbox_start_seconds`, `cmdx_agent_jobs_total{outcome}`,
//! `cmdx_agent_kills_total{reason}`, `cmdx_agent_jobs_running`, `cmdx_agent_reconnects_total`,
//! `cmdx_agent_images_cached`, `cmdx_agent_image_cache_bytes`, `cmdx_agent_image_pulls_total`,
//! `cmdx_agent_image_pull_seconds` (details in the `telemetry` module).

#![warn(missing_docs)]
#![deny(unsafe_code)]

mod collect;
mod config;
mod conn;
mod core;
mod error;
mod extract;
mod fetch;
pub mod fuzzing;
mod host;
mod image;
mod job;
mod output;
mod runner;
mod spawner;
mod telemetry;
pub mod tls;
mod uids;

use std::fs;
use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::path::Path;
use std::sync::Arc;

use cmdx_proto::agent::Isolation;
use cmdx_sandbox::Mode;
use tokio::sync::watch;
use tracing::Instrument as _;

pub use config::{AgentConfig, Control};
pub use error::AgentError;
pub use image::{ImageSettings, RegistryCredential, read_credentials};

/// Runs the agent until `control` asks it to drain (and the held jobs are done and
/// acknowledged) or to abort (running jobs terminated and reported).
///
/// Fails early on a bad configuration, an unusable work directory, or `--sandbox strict` on a
/// host missing isolation layers. Once running it never fails: a lost hub connection is
/// retried forever with backoff while jobs keep running.
pub async fn run(config: AgentConfig, control: watch::Receiver<Control>) -> Result<(), AgentError> {
    if config.concurrency == 0 || config.concurrency > 1024 {
        return Err(AgentError::Config(
            "concurrency must be between 1 and 1024".into(),
        ));
    }
    if config.output_window_bytes < 2 * output::BATCH_BYTES as u32 {
        return Err(AgentError::Config(format!(
            "output window must be at least {} bytes",
            2 * output::BATCH_BYTES
        )));
    }
    let hubs = fetch::HubSet::parse(&config.hub_url)?;
    // Built once: a bad CA file stops the agent now instead of failing every connection.
    let tls = tls::client_config(config.ca_file.as_deref())?;
    if config.token.is_empty() || !config.token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(AgentError::Config(
            "the worker token must be non-empty printable ASCII without spaces".into(),
        ));
    }
    if let Some(id) = &config.worker_id
        && !host::valid_id(id)
    {
        return Err(AgentError::Config(
            "the worker id must be 1 to 128 characters from [A-Za-z0-9._:-]".into(),
        ));
    }

    make_dir(&config.work_dir, 0o711)?;
    let work_dir = &fs::canonicalize(&config.work_dir).map_err(|source| AgentError::WorkDir {
        op: "resolve",
        path: config.work_dir.clone(),
        source,
    })?;
    let jobs_dir = work_dir.join("jobs");
    make_dir(&jobs_dir, 0o711)?;
    let downloads_dir = work_dir.join("downloads");
    make_dir(&downloads_dir, 0o700)?;
    // Held for the agent's lifetime: a second agent on this work dir would clean up (kill)
    // the first one's jobs below.
    let _lock = lock_work_dir(work_dir, LOCK_WAIT).await?;
    // Partial downloads and artifact ZIPs a killed predecessor left (no one else uses them:
    // the lock is ours).
    if let Ok(entries) = std::fs::read_dir(&downloads_dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_file()) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    let host = host::HostInfo::gather();
    let worker_id = host::worker_id(config.worker_id.as_deref(), work_dir, &host.hostname)?;
    let cgroup_group = cgroup_group(&worker_id, work_dir);
    // What a previous agent process on this work dir left (it was killed mid-job): processes
    // of its jobs (PDEATHSIG reaches only each job's main process) and mounted workspaces.
    let group = cgroup_group.clone();
    match tokio::task::spawn_blocking(move || cmdx_sandbox::kill_cgroup_group(&group)).await {
        Ok(Ok(0)) => {}
        Ok(Ok(n)) => tracing::warn!(
            cgroups = n,
            "killed the jobs a previous agent process left running"
        ),
        Ok(Err(e)) => tracing::warn!(error = %e, "cannot clean up a previous agent's job cgroups"),
        Err(e) => tracing::warn!(error = %e, "cgroup cleanup task failed"),
    }
    remove_stale(&jobs_dir);
    remove_stale(&downloads_dir);

    let caps = cmdx_sandbox::probe();
    let missing = caps.missing();
    let mode_name = match config.sandbox_mode {
        Mode::Strict => "strict",
        Mode::BestEffort => "best-effort",
    };
    let required = caps.missing_required();
    if !missing.is_empty() && required.is_empty() && config.sandbox_mode == Mode::Strict {
        tracing::info!(
            absent = %missing.join(", "),
            "strict sandbox: the private root and network namespace stand in for these landlock layers this kernel lacks"
        );
    } else if !missing.is_empty() {
        if config.sandbox_mode == Mode::Strict {
            return Err(AgentError::SandboxUnavailable { missing: required });
        }
        tracing::warn!(
            missing = %missing.join(", "),
            "SANDBOX IS INCOMPLETE: jobs run with these isolation layers missing (best-effort mode)"
        );
    }
    let isolation = Isolation {
        active: caps.active_layers(),
        missing,
        mode: mode_name.to_owned(),
    };
    let root = host::effective_uid() == Some(0);
    // In a private root the job's workspace is bind-mounted by the agent: the job's uid never
    // walks the host path, so the work dir's parents may be closed to it.
    if root && !caps.private_root {
        check_traversable(work_dir)?;
    }
    // Held for the agent's lifetime: no other agent on this host runs jobs as these uids.
    let uid_claim = if root {
        let c = uids::claim(
            &config.uid_claims_dir,
            config.uid_base,
            config.concurrency,
            config.uid_base_auto,
        )?;
        tracing::info!(first = c.base, end = c.end, "job uids claimed");
        Some(c)
    } else {
        None
    };
    tracing::info!(
        %worker_id,
        hubs = ?hubs.bases(),
        concurrency = config.concurrency,
        layers = ?isolation.active,
        root,
        "agent starting"
    );

    let fetcher = fetch::Fetcher::new(
        hubs.clone(),
        &tls,
        config.token.clone(),
        worker_id.clone(),
        config.max_download_bytes,
        config.connect_timeout,
        config.download_timeout,
    )?;
    let job_settings = Arc::new(job::JobSettings {
        fetcher,
        jobs_dir,
        downloads_dir,
        limits: config.limits.clone(),
        mode: config.sandbox_mode,
        extract: extract::ExtractLimits {
            max_entries: config.max_zip_entries,
            max_bytes: config.max_extract_bytes,
            max_ratio: config.max_compression_ratio,
            ratio_floor: config.ratio_floor_bytes,
        },
        output_cap: (config.max_output_bytes > 0).then(|| output::OutputCap {
            head: config
                .max_output_bytes
                .saturating_sub(u64::from(config.output_tail_bytes)),
            tail: config.output_tail_bytes as usize,
        }),
        uid_base: uid_claim.as_ref().map(|c| c.base),
        cgroup_group: cgroup_group.clone(),
        spawner: spawner::Spawner::new(config.concurrency, tokio::runtime::Handle::current())
            .map_err(|source| AgentError::WorkDir {
                op: "start the job starter threads for",
                path: work_dir.to_path_buf(),
                source,
            })?,
        images: image::Images::open(work_dir, config.images.clone()).map_err(|source| {
            AgentError::WorkDir {
                op: "open the image cache in",
                path: work_dir.join("images"),
                source,
            }
        })?,
    });
    let core = core::Core::new(
        core::CoreSettings {
            job: job_settings,
            hubs,
            tls,
            token: config.token.clone(),
            worker_id,
            host,
            isolation,
            tags: config.tags.clone(),
            concurrency: config.concurrency,
            output_window: config.output_window_bytes,
            connect_timeout: config.connect_timeout,
            max_backoff: config.max_backoff,
            cancel_grace: config.cancel_grace,
        },
        control,
    );
    let span = tracing::info_span!("agent", worker_id = %core.worker_id());
    core.run().instrument(span).await;
    // Every job has ended: remove the (now empty) group of job cgroups.
    if let Ok(Err(e)) =
        tokio::task::spawn_blocking(move || cmdx_sandbox::kill_cgroup_group(&cgroup_group)).await
    {
        tracing::warn!(error = %e, "cannot remove the agent's cgroup group");
    }
    Ok(())
}

/// Without a private root ([`cmdx_sandbox::Capabilities::private_root`]) jobs reach their
/// directory by its host path as unprivileged uids: every ancestor of the work dir must let
/// them through (`o+x`), or every job fails to enter its directory. `cmdx dev` asks this
/// before it picks where its local agents live.
pub fn check_traversable(work_dir: &Path) -> Result<(), AgentError> {
    for dir in work_dir.ancestors() {
        let meta = fs::metadata(dir).map_err(|source| AgentError::WorkDir {
            op: "stat",
            path: dir.to_path_buf(),
            source,
        })?;
        if meta.permissions().mode() & 0o001 == 0 {
            return Err(AgentError::Config(format!(
                "{} (mode {:o}) is not traversable by the unprivileged job users; \
                 choose a work dir whose parents are all world-executable (e.g. under /var/lib)",
                dir.display(),
                meta.permissions().mode() & 0o7777
            )));
        }
    }
    Ok(())
}

fn make_dir(path: &Path, mode: u32) -> Result<(), AgentError> {
    let err = |op, source| AgentError::WorkDir {
        op,
        path: path.to_path_buf(),
        source,
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .map_err(|e| err("create", e))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|e| err("chmod", e))
}

/// How long a starting agent waits for `agent.lock`. A predecessor killed a moment ago (`kill
/// -9`, then an immediate restart) can still have its lock shared by a job child it was forking:
/// the copy closes only at that child's exec or exit, a few milliseconds later. Found by
/// `loadtest chaos`: the restarted agent refused to start and the slot stayed dead.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Takes an exclusive `flock` on `work_dir/agent.lock` (released by the kernel when the
/// process dies, even by `kill -9`, and every child sharing it has exec'd or exited); fails if
/// another agent still holds it after `wait`.
async fn lock_work_dir(work_dir: &Path, wait: std::time::Duration) -> Result<fs::File, AgentError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let path = work_dir.join("agent.lock");
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(&path)
        .map_err(|source| AgentError::WorkDir {
            op: "open lock",
            path: path.clone(),
            source,
        })?;
    let until = tokio::time::Instant::now() + wait;
    loop {
        // flock(2) on Linux: held until the file is closed, released if the agent dies.
        if file.try_lock().is_ok() {
            return Ok(file);
        }
        if tokio::time::Instant::now() >= until {
            return Err(AgentError::Config(format!(
                "another agent is using the work dir {} (it holds {})",
                work_dir.display(),
                path.display()
            )));
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The agent's cgroup group: its worker id plus a hash of its work dir (two agents with one
/// id but different work dirs never clean up each other's jobs).
fn cgroup_group(worker_id: &str, work_dir: &Path) -> String {
    use sha2::Digest as _;
    let hash = sha2::Sha256::digest(work_dir.as_os_str().as_encoded_bytes());
    format!("agent-{worker_id}-{}", hex::encode(&hash[..4]))
}

/// Removes what a previous agent process left behind (it was killed mid-job): workspaces
/// (a still-mounted tmpfs is detached first, nothing inside is followed) and downloads.
fn remove_stale(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let r = cmdx_sandbox::Workspace::remove_leftover(&path);
        match r {
            Ok(()) => {
                tracing::info!(path = %path.display(), "removed leftover from a previous run")
            }
            Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot remove leftover"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::lock_work_dir;

    /// Regression (found by `loadtest chaos`): an agent restarted right after `kill -9` of its
    /// predecessor met the lock still held by a child that predecessor was forking, and exited.
    /// A holder that lets go within the wait is waited for.
    #[tokio::test]
    async fn a_lock_released_a_moment_later_is_waited_for() {
        let dir = tempfile::tempdir().expect("temp dir");
        let held = lock_work_dir(dir.path(), Duration::ZERO)
            .await
            .expect("first lock");
        let release = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            drop(held);
        });
        lock_work_dir(dir.path(), Duration::from_secs(5))
            .await
            .expect("the lock once the dying holder let go");
        release.await.expect("release task");
    }

    /// A live agent's lock is still a refusal, once the wait is over.
    #[tokio::test]
    async fn a_lock_held_past_the_wait_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let _held = lock_work_dir(dir.path(), Duration::ZERO)
            .await
            .expect("first lock");
        let e = lock_work_dir(dir.path(), Duration::from_millis(200))
            .await
            .expect_err("a second lock while the first is held");
        assert!(
            e.to_string()
                .contains("another agent is using the work dir"),
            "{e}"
        );
    }
}
