//! One job attempt: workspace, download, safe extraction, sandboxed run, output, outcome.
//!
//! The task reports to the core through [`JobEvent`]s and always ends with exactly one
//! [`JobEvent::Done`] that hands back the workspace (the core removes it once the hub has the
//! result). Setup failures become a `finished` with failure `setup` (or `sandbox`) and a
//! clear `error`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cmdx_proto::agent::{Assignment, JobRef};
use cmdx_proto::{FailureKind, Outcome, WindowSize};
use cmdx_sandbox::{Limits, Mode, Workspace};
use tokio::sync::{Semaphore, mpsc, watch};
use tracing::Instrument as _;

use crate::collect;
use crate::core::JobEvent;
use crate::error::JobError;
use crate::extract::{self, ExtractLimits};
use crate::fetch::{Fetcher, UploadError};
use crate::output::OutputSink;
use crate::runner;

/// What the core asks of a running job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JobCtl {
    /// Keep going.
    Run,
    /// The hub cancelled the job: TERM, KILL after the grace; outcome `cancelled`.
    Cancel(Duration),
    /// The agent is aborting: TERM, KILL after the grace; outcome `failed/killed`.
    Abort(Duration),
    /// The attempt is stale: kill at once; nothing will be reported.
    Kill,
}

/// Settings shared by all job tasks.
pub(crate) struct JobSettings {
    /// Downloads job files.
    pub fetcher: Fetcher,
    /// Parent of the job workspaces.
    pub jobs_dir: PathBuf,
    /// Where ZIPs are spooled (agent-private).
    pub downloads_dir: PathBuf,
    /// Default limits.
    pub limits: Limits,
    /// Sandbox strictness.
    pub mode: Mode,
    /// Extraction caps (the job's disk limit lowers `max_bytes`).
    pub extract: ExtractLimits,
    /// Output cap.
    pub output_cap: Option<crate::output::OutputCap>,
    /// `Some(base)` when jobs run as `base + slot`.
    pub uid_base: Option<u32>,
    /// This agent's own cgroup group (`cmdx/<group>/<job>`), so a restarted agent can kill
    /// what a crashed one left without touching other agents' jobs.
    pub cgroup_group: String,
    /// The threads that start jobs (see the `spawner` module).
    pub spawner: crate::spawner::Spawner,
    /// The image cache and puller.
    pub images: crate::image::Images,
}

/// Starts the task for one accepted assignment. A panic in the task still reports a result.
pub(crate) fn spawn(
    settings: Arc<JobSettings>,
    assignment: Assignment,
    slot: u32,
    events: mpsc::Sender<JobEvent>,
    window: Arc<Semaphore>,
    ctl: watch::Receiver<JobCtl>,
    sizes: watch::Receiver<Option<WindowSize>>,
) {
    let job = JobRef {
        job_id: assignment.job_id.clone(),
        attempt: assignment.attempt,
    };
    let span = tracing::info_span!("job", job_id = %job.job_id, attempt = job.attempt, slot);
    let task = tokio::spawn(
        run(
            settings,
            assignment,
            slot,
            events.clone(),
            window,
            ctl,
            sizes,
        )
        .instrument(span),
    );
    tokio::spawn(async move {
        if let Err(e) = task.await {
            tracing::error!(job_id = %job.job_id, error = %e, "job task failed");
            let outcome = Outcome {
                failure: Some(FailureKind::Sandbox),
                error: Some("internal agent error while running the job".into()),
                ..Outcome::default()
            };
            let _ = events
                .send(JobEvent::Done {
                    job,
                    outcome: Box::new(outcome),
                    workspace: None,
                })
                .await;
        }
    });
}

async fn run(
    settings: Arc<JobSettings>,
    a: Assignment,
    slot: u32,
    events: mpsc::Sender<JobEvent>,
    window: Arc<Semaphore>,
    mut ctl: watch::Receiver<JobCtl>,
    mut sizes: watch::Receiver<Option<WindowSize>>,
) {
    let job = JobRef {
        job_id: a.job_id.clone(),
        attempt: a.attempt,
    };
    let start = Instant::now();
    let owner = settings.uid_base.map(|b| (b + slot, b + slot));
    let mut workspace: Option<Workspace> = None;

    let outcome = async {
        // 1. Workspace (not cancellable: it is quick and must not leak a mount).
        let name = workspace_name(&job);
        let (parent, disk) = (settings.jobs_dir.clone(), settings.limits.disk_bytes);
        let ws =
            tokio::task::spawn_blocking(move || Workspace::create(&parent, &name, disk, owner))
                .await
                .expect("workspace creation does not panic")
                .map_err(|e| JobError::Workspace(e.to_string()));
        let ws = match ws {
            Ok(ws) => workspace.insert(ws),
            Err(e) => return setup_failed(e, start),
        };

        // 2. Files.
        if let Some(url) = a.file_url.as_deref().filter(|u| !u.is_empty()) {
            let fetch = settings.fetcher.download(
                url,
                a.file_sha256.as_deref(),
                a.file_size,
                &settings.downloads_dir,
            );
            let zip = tokio::select! {
                r = fetch => r,
                s = runner::stop_requested(&mut ctl) => return stopped_outcome(s, start),
            };
            let zip = match zip {
                Ok(z) => z,
                Err(e) => return setup_failed(e, start),
            };
            let mut limits = settings.extract;
            if settings.limits.disk_bytes > 0 {
                limits.max_bytes = limits.max_bytes.min(settings.limits.disk_bytes);
            }
            let dest = ws.dir.clone();
            let extracted = tokio::task::spawn_blocking(move || {
                let r = extract::extract_zip(zip.path(), &dest, limits, owner);
                drop(zip);
                r
            })
            .await
            .expect("extraction does not panic");
            match extracted {
                Ok(done) => tracing::debug!(
                    files = done.files,
                    bytes = done.bytes,
                    "extracted job files"
                ),
                Err(e) => return setup_failed(e, start),
            }
        }
        let now = *ctl.borrow();
        if now != JobCtl::Run {
            return stopped_outcome(now, start);
        }

        // 3. The image, when the job names one (pulled once, shared by concurrent jobs).
        let private = cmdx_sandbox::probe().private_root;
        let sink = OutputSink {
            job: job.clone(),
            window,
            events: events.clone(),
        };
        let lease = match a.image.as_deref() {
            None => None,
            Some(reference) => {
                let pull_start = Instant::now();
                let failed = |e: crate::image::ImageError| {
                    let mut o = setup_failed(JobError::Image(e), start);
                    o.pull_ms = Some(millis(pull_start.elapsed()));
                    o
                };
                if !private {
                    return failed(crate::image::ImageError::Unusable(
                        "this agent cannot run jobs in images: its host cannot build a private \
                         root (needs root, CAP_SYS_ADMIN and Linux 5.12)"
                            .into(),
                    ));
                }
                // A terminal is one stream; on pipes the agent's lines go to stderr.
                let stream = if a.tty.is_some() {
                    cmdx_proto::StreamKind::Stdout
                } else {
                    cmdx_proto::StreamKind::Stderr
                };
                let sink = &sink;
                let acquire = settings.images.acquire(reference, |line| async move {
                    sink.say(stream, &line).await;
                });
                let lease = tokio::select! {
                    r = acquire => r,
                    s = runner::stop_requested(&mut ctl) => return stopped_outcome(s, start),
                };
                match lease {
                    Ok(l) => Some(l),
                    Err(e) => return failed(e),
                }
            }
        };
        let now = *ctl.borrow();
        if now != JobCtl::Run {
            return stopped_outcome(now, start);
        }

        // 4. Run, in the job's private root (the image's, or the host's system directories)
        // when the host can build one.
        let image_env = lease.as_ref().map_or(&[][..], |l| &l.env[..]);
        // The latest size the hub sent (a resize may have come during the setup); later ones
        // reach the running terminal through `sizes`.
        let terminal = *sizes.borrow_and_update();
        let env = match job_env(ws, &a, terminal, private, image_env) {
            Ok(env) => env,
            Err(e) => return setup_failed(e, start),
        };
        let mut limits = settings.limits.clone();
        if a.timeout_secs > 0 {
            limits.wall_timeout = Duration::from_secs(a.timeout_secs);
        }
        let (root, cwd) = match &lease {
            Some(l) => match image_launch(l, ws) {
                Ok(rc) => rc,
                Err(e) => {
                    let mut o = setup_failed(JobError::Image(e), start);
                    o.pull_ms = Some(millis(l.pulled_for));
                    o.image_digest = Some(l.digest.clone());
                    return o;
                }
            },
            None if private => (Some(ws.private_root()), PathBuf::from(WORKSPACE)),
            None => (None, ws.dir.clone()),
        };
        let launch = runner::Launch {
            command: a.command.clone(),
            cwd,
            rw_paths: vec![ws.dir.clone(), ws.tmp.clone()],
            root,
            env,
            limits,
            run_as: owner,
            mode: settings.mode,
            output_cap: settings.output_cap,
            cgroup_group: settings.cgroup_group.clone(),
            terminal: terminal.map(|t| cmdx_sandbox::TerminalSize {
                cols: t.cols,
                rows: t.rows,
            }),
            sizes: sizes.clone(),
        };
        let mut outcome = runner::run(&settings.spawner, launch, sink, &mut ctl, start).await;
        if let Some(l) = &lease {
            outcome.pull_ms = Some(millis(l.pulled_for));
            outcome.image_digest = Some(l.digest.clone());
        }
        if !a.artifacts.is_empty() {
            let dir = ws.dir.clone();
            outcome.artifacts_error =
                artifacts(&settings, &a, &job, &dir, owner.map(|o| o.0), &mut ctl).await;
        }
        outcome
    }
    .await;

    crate::telemetry::record_job(&outcome);
    let _ = events
        .send(JobEvent::Done {
            job,
            outcome: Box::new(outcome),
            workspace,
        })
        .await;
}

/// Most entries the artifact walk examines.
const ARTIFACT_MAX_ENTRIES: u64 = 2_000_000;
/// Longest artifact walk.
const ARTIFACT_MAX_TIME: Duration = Duration::from_secs(120);
/// How long an artifact upload is retried while the hub is unreachable.
const ARTIFACT_UPLOAD_RETRY: Duration = Duration::from_secs(600);

/// Collects the job's artifacts (the command has ended and its cgroup is empty) and uploads
/// them, retrying while the hub is unreachable. Returns why there are none, if so.
async fn artifacts(
    settings: &JobSettings,
    a: &Assignment,
    job: &JobRef,
    dir: &std::path::Path,
    uid: Option<u32>,
    ctl: &mut watch::Receiver<JobCtl>,
) -> Option<String> {
    match *ctl.borrow() {
        JobCtl::Kill => return Some("attempt abandoned".into()),
        JobCtl::Abort(_) => return Some("the agent shut down before collecting artifacts".into()),
        JobCtl::Run | JobCtl::Cancel(_) => {}
    }
    let matcher = match collect::Matcher::new(&a.artifacts) {
        Ok(m) => m,
        Err(e) => return Some(e),
    };
    let limits = collect::CollectLimits {
        max_bytes: a.artifact_max_bytes.unwrap_or(256 << 20),
        max_files: a.artifact_max_files.unwrap_or(10_000),
        max_entries: ARTIFACT_MAX_ENTRIES,
        max_time: ARTIFACT_MAX_TIME,
    };
    let (dir, spool) = (dir.to_path_buf(), settings.downloads_dir.clone());
    let started = Instant::now();
    let collected =
        tokio::task::spawn_blocking(move || collect::collect(&dir, &matcher, limits, uid, &spool))
            .await
            .expect("artifact collection does not panic");
    let c = match collected {
        Ok(c) => c,
        Err(e) => return Some(format!("collecting artifacts failed: {e}")),
    };
    tracing::info!(
        files = c.files,
        bytes = c.bytes,
        skipped = c.skipped_total,
        ms = millis(started.elapsed()),
        "artifacts collected"
    );
    let manifest = cmdx_proto::rest::ArtifactManifest {
        skipped: c.skipped.clone(),
        skipped_total: c.skipped_total,
    };
    let deadline = Instant::now() + ARTIFACT_UPLOAD_RETRY;
    let mut backoff = Duration::from_millis(500);
    loop {
        let err = match settings
            .fetcher
            .upload_artifacts(job, c.zip.path(), &manifest)
            .await
        {
            Ok(n) => {
                tracing::info!(files = n, "artifacts uploaded");
                return None;
            }
            Err(UploadError::Stale(e)) => return Some(format!("artifacts not stored: {e}")),
            Err(UploadError::Rejected(e)) => {
                tracing::warn!(error = %e, "artifacts rejected");
                return Some(format!("artifacts rejected: {e}"));
            }
            Err(UploadError::Failed(e)) => e,
        };
        if Instant::now() + backoff > deadline {
            return Some(format!("artifact upload failed: {err}"));
        }
        tracing::warn!(error = %err, retry_in = ?backoff, "artifact upload failed; retrying");
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = killed(ctl) => return Some("attempt abandoned".into()),
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// Resolves when the core kills the attempt (it became stale); never otherwise.
async fn killed(ctl: &mut watch::Receiver<JobCtl>) {
    loop {
        if *ctl.borrow_and_update() == JobCtl::Kill {
            return;
        }
        if ctl.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

/// `jobid-attempt`, restricted to file-name-safe characters (job ids come from the hub); an
/// id that had to be changed gets a hash suffix so two ids never share a workspace.
fn workspace_name(job: &JobRef) -> String {
    let safe: String = job
        .job_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(96)
        .collect();
    if safe == job.job_id {
        format!("{safe}-{}", job.attempt)
    } else {
        use sha2::Digest as _;
        let hash = hex::encode(&sha2::Sha256::digest(job.job_id.as_bytes())[..6]);
        format!("{safe}-{hash}-{}", job.attempt)
    }
}

/// Where the job's workspace is in its private root (its cwd and `HOME`).
const WORKSPACE: &str = "/workspace";

/// The job's complete environment: a fixed base plus the assignment's variables. In the
/// private root `HOME` is `/workspace` and `TMPDIR` `/tmp` (both in the workspace's size
/// cap); without one, their host paths. `CI=true` always; with a terminal (of size `tty`) also
/// `TERM`, `COLUMNS` and `LINES`, the size at the start (a later resize reaches the terminal,
/// not the environment). The assignment's variables override any of these.
fn job_env(
    ws: &Workspace,
    a: &Assignment,
    tty: Option<WindowSize>,
    private: bool,
    image_env: &[String],
) -> Result<Vec<(String, String)>, JobError> {
    let (home, tmp) = if private {
        (WORKSPACE.to_owned(), "/tmp".to_owned())
    } else {
        (ws.dir.display().to_string(), ws.tmp.display().to_string())
    };
    let mut env: Vec<(String, String)> = vec![
        ("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()),
        ("HOME".into(), home),
        ("TMPDIR".into(), tmp),
        ("LANG".into(), "C.UTF-8".into()),
        // Tools that behave differently under CI (no prompts, no spinners) know they are.
        ("CI".into(), "true".into()),
    ];
    if let Some(t) = tty {
        // What a terminal emulator tells its programs: colours, and the window's size for
        // tools that read the variables rather than ask the terminal.
        env.push(("TERM".into(), "xterm-256color".into()));
        env.push(("COLUMNS".into(), t.cols.to_string()));
        env.push(("LINES".into(), t.rows.to_string()));
    }
    // The image's variables (its PATH, language settings), except those that place the job in
    // its sandbox: its home, tmp, terminal and CI marker stay the agent's.
    for kv in image_env {
        let Some((k, v)) = kv.split_once('=') else {
            continue;
        };
        if k.is_empty()
            || k.contains('\0')
            || v.contains('\0')
            || matches!(k, "HOME" | "TMPDIR" | "CI" | "TERM" | "COLUMNS" | "LINES")
        {
            continue;
        }
        match env.iter_mut().find(|(name, _)| name == k) {
            Some(slot) => v.clone_into(&mut slot.1),
            None => env.push((k.to_owned(), v.to_owned())),
        }
    }
    for (k, v) in &a.env {
        if k.is_empty() || k.contains('=') || k.contains('\0') {
            return Err(JobError::Assignment(format!(
                "invalid environment variable name {k:?}"
            )));
        }
        if v.contains('\0') {
            // The value is not echoed: it may be a secret.
            return Err(JobError::Assignment(format!(
                "environment variable {k} contains a NUL byte"
            )));
        }
        match env.iter_mut().find(|(name, _)| name == k) {
            Some(slot) => slot.1.clone_from(v),
            None => env.push((k.clone(), v.clone())),
        }
    }
    Ok(env)
}

/// The root and working directory of a job in the image `l`: the image's tree read-only with
/// the job's workspace, tmp and shm; the image's `WorkingDir` when it is a directory of the
/// image, else `/workspace`. Fails when the image has no `/bin/sh` to run the command with.
fn image_launch(
    l: &crate::image::Lease,
    ws: &Workspace,
) -> Result<(Option<cmdx_sandbox::Root>, PathBuf), crate::image::ImageError> {
    use crate::image::{ImageError, image_root, resolve_in};
    use std::os::unix::fs::PermissionsExt as _;
    let shell = resolve_in(&l.root, "/bin/sh").and_then(|p| std::fs::metadata(p).ok());
    if !shell.is_some_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0) {
        return Err(ImageError::Unusable(
            "the image has no /bin/sh (a job's command runs as /bin/sh -c COMMAND)".into(),
        ));
    }
    let root = image_root(&l.root, &ws.private_root().read_write)
        .map_err(|e| ImageError::Local(format!("cannot read the image's tree: {e}")))?;
    let cwd = l
        .working_dir
        .as_deref()
        .filter(|w| w.starts_with('/') && *w != "/")
        .filter(|w| resolve_in(&l.root, w).is_some_and(|p| p.is_dir()))
        .map_or_else(|| PathBuf::from(WORKSPACE), PathBuf::from);
    Ok((Some(root), cwd))
}

fn setup_failed(e: JobError, start: Instant) -> Outcome {
    tracing::warn!(error = %e, "job setup failed");
    Outcome {
        failure: Some(e.failure_kind()),
        error: Some(e.to_string()),
        duration_ms: millis(start.elapsed()),
        ..Outcome::default()
    }
}

fn stopped_outcome(s: JobCtl, start: Instant) -> Outcome {
    let mut o = Outcome {
        duration_ms: millis(start.elapsed()),
        ..Outcome::default()
    };
    if let JobCtl::Cancel(_) = s {
        o.cancelled = true;
        o.error = Some("cancelled before the command started".into());
    } else {
        o.failure = Some(FailureKind::Killed);
        o.error = Some("agent shut down before the command started".into());
    }
    o
}

/// Milliseconds, saturating.
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspace_names_are_plain_file_names() {
        let j = JobRef {
            job_id: "../a/b c".into(),
            attempt: 3,
        };
        let name = workspace_name(&j);
        assert!(
            name.starts_with("___a_b_c-") && name.ends_with("-3"),
            "{name}"
        );
        assert_ne!(name, "___a_b_c-3");
        let plain = JobRef {
            job_id: "j-1_x".into(),
            attempt: 1,
        };
        assert_eq!(workspace_name(&plain), "j-1_x-1");
    }
}
