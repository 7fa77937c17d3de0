//! `cmdx submit` and `cmdx logs`: zip and upload (streamed, with a progress bar on a terminal),
//! submit, follow the output, and exit with the job's code. Ctrl-C once cancels the remote job,
//! twice detaches.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use cmdx_proto::rest::{CancelRequest, FileView, SubmitRequest, SubmitResponse};
use cmdx_proto::{FailureKind, JobStatus, WindowSize};
use futures_util::StreamExt;
use tokio::signal::unix::{SignalKind, signal};

use super::api::{Api, one_line};
use super::follow::{End, Stop, follow};
use super::progress::{Progress, summary};
use super::{LogsArgs, SubmitArgs, config, detail};

/// Exit code of a job stopped by its timeout (as `timeout(1)`).
pub const EXIT_TIMEOUT: i32 = 124;
/// Exit code of a cancelled job, or of a CLI that detached on a second Ctrl-C (128 + SIGINT).
pub const EXIT_CANCELLED: i32 = 130;
/// Exit code of `submit --download` when the job completed but its artifacts could not be
/// downloaded or unpacked: a CLI error, as the CLI contract has it.
pub const EXIT_ARTIFACTS: i32 = 125;

/// The job's environment: the `--env-file` files in order, then `--env` flags over them.
fn job_env(args: &SubmitArgs) -> anyhow::Result<BTreeMap<String, String>> {
    let mut env = BTreeMap::new();
    for path in &args.env_files {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read env file {}", path.display()))?;
        for (i, line) in text.lines().enumerate() {
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line.trim().is_empty() || line.trim_start().starts_with('#') {
                continue;
            }
            let (k, v) =
                super::env_entry(line).map_err(|e| anyhow!("{}:{}: {e}", path.display(), i + 1))?;
            env.insert(k, v);
        }
    }
    env.extend(args.env.iter().cloned());
    Ok(env)
}

/// `cmdx submit`.
pub async fn submit(args: SubmitArgs) -> anyhow::Result<i32> {
    if args.command.is_empty() {
        // A usage mistake, answered like clap's own (exit code 2), with the fix spelled out.
        eprintln!("cmdx: {}", missing_command_hint(args.dir.as_deref()));
        return Ok(2);
    }
    if let Some(zip) = &args.zip {
        // Checked here, not only by the agent after upload, queueing and download.
        check_zip(zip)?;
    }
    let env = job_env(&args)?;
    let conn = config::resolve(&args.conn)?;
    let api = Api::new(&conn)?;
    api.token()?;
    let command = args.command.join(" ");
    if command.trim().is_empty() {
        bail!("the command is empty: put it after `--`, e.g. cmdx submit . -- make test");
    }
    let file = if let Some(dir) = &args.dir {
        let dir = dir.clone();
        let shown = dir.display().to_string();
        let zipped = tokio::task::spawn_blocking(move || super::zipdir::zip_dir(&dir))
            .await
            .map_err(|e| anyhow!("zipping {shown} failed: {e}"))??;
        detail(format_args!(
            "zipped {} files ({} bytes) into {} bytes",
            zipped.files, zipped.content_bytes, zipped.size
        ));
        let name = folder_name(args.dir.as_deref().unwrap_or(Path::new(".")));
        Some(upload(&api, zipped.file.path(), zipped.size, &name).await?)
    } else if let Some(zip) = &args.zip {
        let size = tokio::fs::metadata(zip)
            .await
            .with_context(|| format!("cannot read {}", zip.display()))?
            .len();
        let name = zip
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("upload.zip")
            .to_string();
        Some(upload(&api, zip, size, &name).await?)
    } else {
        None
    };
    let req = SubmitRequest {
        command,
        file_id: file.map(|f| f.file_id),
        timeout: args.timeout,
        tags: args.tags.clone(),
        env,
        artifacts: args.artifacts.clone(),
        tty: args.no_tty.then_some(false),
        tty_size: if args.no_tty || args.detach || args.json {
            None
        } else {
            window_size()
        },
        priority: args.priority,
        image: args.image.clone(),
        ..Default::default()
    };
    let resp: SubmitResponse = api
        .post_json("/api/jobs/submit", &req, "job submission")
        .await?;
    let wait = Wait {
        detach: args.detach,
        json: args.json,
        quiet: args.quiet,
        download: args.download.clone(),
        force: args.force,
        tty: req.tty_size,
    };
    wait_for(&api, &resp.job_id, &args.tags, &wait).await
}

/// What to do once a job is submitted (`submit` and `rerun` share it).
pub struct Wait {
    /// Print the id and return.
    pub detach: bool,
    /// Machine output (see `--json`).
    pub json: bool,
    /// No status lines on stderr.
    pub quiet: bool,
    /// `--download[=DIR]`: `Some(None)` is the default folder, `./cmdx-artifacts/<job id>`.
    pub download: Option<Option<std::path::PathBuf>>,
    /// Replace existing files when downloading.
    pub force: bool,
    /// The size the job's terminal starts with, when it has one and its output is followed in
    /// the user's terminal: the user's resizes are then sent to the job (`SIGWINCH`).
    pub tty: Option<WindowSize>,
}

/// The folder `--download` without a value unpacks into: one per job, so a command run twice
/// never meets its previous run's files.
pub fn default_download_dir(id: &str) -> std::path::PathBuf {
    Path::new(super::artifacts::DOWNLOAD_ROOT).join(id)
}

/// Says that job `id` (asking for `tags`) was submitted, then follows it as `wait` says and
/// returns the exit code.
pub async fn wait_for(api: &Api, id: &str, tags: &[String], wait: &Wait) -> anyhow::Result<i32> {
    let progress = Progress::new(id, tags, wait.quiet);
    progress.submitted(&api.hub);
    if wait.detach {
        if wait.json {
            super::out(&format!("{}\n", serde_json::json!({ "jobId": id })))?;
        } else {
            super::out(&format!("{id}\n"))?;
        }
        return Ok(0);
    }
    let download = wait
        .download
        .as_ref()
        .map(|d| d.clone().unwrap_or_else(|| default_download_dir(id)));
    let download = download.as_deref().map(|dir| (dir, wait.force));
    if wait.json {
        let end = watch(api, id, None, &progress, None).await?;
        let Some(end) = end else {
            return Ok(EXIT_CANCELLED);
        };
        // The hub's whole document, output included.
        let view = api.job(id, true).await?;
        super::out(&format!("{}\n", serde_json::to_string(&view)?))?;
        return ended(api, id, &end, download, &progress).await;
    }
    match watch(api, id, Some(0), &progress, wait.tty).await? {
        Some(end) => ended(api, id, &end, download, &progress).await,
        None => Ok(EXIT_CANCELLED),
    }
}

/// The size of the terminal the job's output is followed in (stdout), for the job's own
/// terminal; `None` when stdout is no terminal or its size is unknown or out of range.
pub(crate) fn window_size() -> Option<WindowSize> {
    let (rows, cols) = console::Term::stdout().size_checked()?;
    let size = WindowSize { cols, rows };
    size.is_valid().then_some(size)
}

/// The exit code for how job `id` ended, after downloading its artifacts into `download` (the
/// folder, and whether to replace existing files) when asked. A failed download turns success
/// into [`EXIT_ARTIFACTS`]; any other code stays.
async fn ended(
    api: &Api,
    id: &str,
    end: &End,
    download: Option<(&Path, bool)>,
    progress: &Progress,
) -> anyhow::Result<i32> {
    let code = exit_code(api, id, end, progress, true).await;
    let Some((dir, force)) = download else {
        return code;
    };
    match super::artifacts::after_job(api, id, dir, force).await {
        Ok(()) => code,
        Err(e) => {
            super::note(format_args!("cmdx: {e:#}"));
            match code {
                Ok(0) => Ok(EXIT_ARTIFACTS),
                other => other,
            }
        }
    }
}

/// Follows job `id` (streaming output from `offset`, or silently when `None`) until it ends,
/// telling `progress` where it stands while queued, and handling Ctrl-C: the first cancels the
/// remote job, the second detaches (returns `None`). With `tty` (the size the job's terminal
/// started with), the user's terminal resizes are sent to the job meanwhile.
async fn watch(
    api: &Api,
    id: &str,
    offset: Option<u64>,
    progress: &Progress,
    tty: Option<WindowSize>,
) -> anyhow::Result<Option<End>> {
    let mut sigint = signal(SignalKind::interrupt()).context("cannot handle Ctrl-C")?;
    let fut = async {
        match offset {
            Some(o) => follow(api, id, o, None, Some(progress)).await,
            None => wait_quietly(api, id, progress).await,
        }
    };
    tokio::pin!(fut);
    let resizes = super::resize::forward_winch(api, id, tty, progress.left());
    tokio::pin!(resizes);
    let mut forwarding = tty.is_some();
    let mut presses = 0;
    loop {
        tokio::select! {
            () = &mut resizes, if forwarding => forwarding = false,
            r = &mut fut => {
                return match r? {
                    Stop::Ended(end) => Ok(Some(end)),
                    Stop::Reached => Err(anyhow!("the output stream of job {id} ended early")),
                };
            }
            _ = sigint.recv() => {
                presses += 1;
                if presses == 1 {
                    progress.always(&format!("cmdx: cancelling job {id} (Ctrl-C again to detach)"));
                    let r: anyhow::Result<serde_json::Value> = api
                        .post_json(
                            "/api/jobs/cancel",
                            &CancelRequest { job_id: id.to_string() },
                            &format!("job {id}"),
                        )
                        .await;
                    if let Err(e) = r {
                        progress.always(&format!("cmdx: cancelling job {id} failed: {e:#}"));
                    }
                } else {
                    progress.always(&format!("cmdx: detached; job {id} goes on: cmdx logs -f {id}"));
                    return Ok(None);
                }
            }
        }
    }
}

/// Waits for the end of job `id` without printing its output (`--json`), polling its status
/// (which also says where it stands in the queue).
async fn wait_quietly(api: &Api, id: &str, progress: &Progress) -> anyhow::Result<Stop> {
    loop {
        let view = api.job(id, false).await?;
        match view.queue_position {
            Some(pos) if view.status == JobStatus::Queued => {
                progress.queued(pos, view.no_matching_worker, view.wait_reason);
            }
            _ => progress.left_queue(),
        }
        if view.status.is_terminal() {
            return Ok(Stop::Ended(End {
                status: view.status,
                exit_code: view.exit_code,
                signal: view.signal,
                failure: view.failure,
            }));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The process exit code for how job `id` ended. A non-zero code comes with a one-line
/// summary on stderr through `progress` (what ended it, after how long, on which worker);
/// a plain non-zero exit of the command only when `say_exit` (`logs -f` leaves the job's
/// stderr as it was, and says only what the output cannot: timeout, signal, cancel). Setup,
/// sandbox and lost-worker failures are errors (125) carrying the hub's `error` text.
pub async fn exit_code(
    api: &Api,
    id: &str,
    end: &End,
    progress: &Progress,
    say_exit: bool,
) -> anyhow::Result<i32> {
    progress.left_queue();
    let plain_exit = end.status == JobStatus::Failed
        && end.signal.is_none()
        && matches!(end.failure, None | Some(FailureKind::ExitCode));
    let code = match end.status {
        JobStatus::Completed => return Ok(0),
        JobStatus::Cancelled => EXIT_CANCELLED,
        _ => match end.failure {
            Some(FailureKind::Timeout) => EXIT_TIMEOUT,
            Some(FailureKind::Oom) => 128 + end.signal.unwrap_or(9),
            Some(
                FailureKind::Setup
                | FailureKind::Sandbox
                | FailureKind::WorkerLost
                | FailureKind::Image,
            ) => EXIT_ARTIFACTS,
            _ => match (end.signal, end.exit_code) {
                (Some(sig), _) => 128 + sig,
                (None, Some(code)) => code,
                (None, None) => 1,
            },
        },
    };
    let view = api.job(id, false).await;
    let line = match &view {
        Ok(v) => summary(v, code),
        Err(_) => format!("job {id} ended with exit code {code}"),
    };
    if let Some(
        kind @ (FailureKind::Setup
        | FailureKind::Sandbox
        | FailureKind::WorkerLost
        | FailureKind::Image),
    ) = end.failure.filter(|_| end.status == JobStatus::Failed)
    {
        // An error, printed once by `main` (also under --quiet).
        let error = view
            .ok()
            .and_then(|v| v.error)
            .map(|e| one_line(&e))
            .unwrap_or_else(|| "no detail".into());
        return Err(anyhow!("job {id} failed ({}): {error}", kind.as_str()));
    }
    if say_exit || !plain_exit {
        progress.line(&line);
    }
    Ok(code)
}

/// The archive name for a folder: its last component, `.zip` added.
fn folder_name(dir: &Path) -> String {
    let abs = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    let base = abs
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| !n.is_empty())
        .unwrap_or("upload");
    format!("{base}.zip")
}

/// Streams `path` (a ZIP of `size` bytes) to the hub as a raw `application/zip` body with a
/// known length, a progress bar on a terminal; returns the stored file.
async fn upload(api: &Api, path: &Path, size: u64, name: &str) -> anyhow::Result<FileView> {
    let file = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("cannot open {}", path.display()))?;
    let bar = if std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new(size);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "uploading {bar:30} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec}",
        ) {
            bar.set_style(style);
        }
        Some(bar)
    } else {
        None
    };
    let counted = bar.clone();
    let stream = tokio_util::io::ReaderStream::with_capacity(file, 64 * 1024).map(move |chunk| {
        if let (Ok(c), Some(b)) = (&chunk, &counted) {
            b.inc(c.len() as u64);
        }
        chunk
    });
    let query = format!("/api/files/upload?filename={}", encode_query(name));
    let rb = api
        .request(reqwest::Method::POST, &query)
        .header("content-type", "application/zip")
        .header("content-length", size)
        .body(reqwest::Body::wrap_stream(stream));
    let result = api.send(rb, "upload").await;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let resp = match result {
        Ok(r) => r,
        Err(e) if super::api::hub_status(&e).is_none() => {
            // A hub refusing a large body answers and closes while we still write: the answer
            // is often lost to a broken pipe. Ask again with the headers alone to learn why.
            return Err(probe_refusal(api, &query, size).await.unwrap_or(e));
        }
        Err(e) => return Err(e),
    };
    let view: FileView = super::api::decode(resp, "upload").await?;
    detail(format_args!("uploaded {} as file {}", name, view.file_id));
    Ok(view)
}

/// Sends the upload's headers (with its Content-Length) and no body: a hub that refuses the
/// size outright answers at once (413 with its limit). `None` when it does not.
async fn probe_refusal(api: &Api, path: &str, size: u64) -> Option<anyhow::Error> {
    let never = futures_util::stream::pending::<Result<Vec<u8>, std::io::Error>>();
    let rb = api
        .request(reqwest::Method::POST, path)
        .header("content-type", "application/zip")
        .header("content-length", size)
        .timeout(Duration::from_secs(5))
        .body(reqwest::Body::wrap_stream(never));
    let resp = rb.send().await.ok()?;
    if resp.status().is_success() {
        return None;
    }
    super::api::check(resp, "upload").await.err()
}

/// Percent-encodes a query value or a path segment.
pub fn encode_query(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `cmdx logs`.
pub async fn logs(args: LogsArgs) -> anyhow::Result<i32> {
    let conn = config::resolve(&args.conn)?;
    let api = Api::new(&conn)?;
    api.token()?;
    let id = args.job.trim().to_string();
    let view = api.job(&id, false).await?;
    let mut start = match args.tail {
        Some(lines) => tail_offset(&api, &id, view.output_bytes, lines).await?,
        None => 0,
    };
    if let Some(since) = args.since {
        start = start.max(since_offset(&api, &id, since).await?);
    }
    if !args.follow {
        // Everything stored now; a finished job's log is complete.
        let stop_at = (!view.status.is_terminal()).then_some(view.output_bytes);
        follow(&api, &id, start, stop_at, None).await?;
        return Ok(0);
    }
    // Ctrl-C here just stops watching (the default signal action): the job goes on. The job
    // is not this command's: no queued line, but the summary of a non-zero end.
    let progress = Progress::new(&id, &view.tags, false);
    let from = if args.no_replay {
        view.output_bytes
    } else {
        start
    };
    match follow(&api, &id, from, None, None).await? {
        Stop::Ended(end) => exit_code(&api, &id, &end, &progress, false).await,
        Stop::Reached => Err(anyhow!("the output stream of job {id} ended early")),
    }
}

/// Where the last `lines` lines of job `id`'s log begin, the log ending at `end` now: reads
/// the stored log backwards in growing windows (raw `GET /api/jobs/{id}/output` ranges) until
/// it has seen that many line ends, or reaches what the hub kept. A last line without its
/// newline counts as a line.
async fn tail_offset(api: &Api, id: &str, end: u64, lines: u64) -> anyhow::Result<u64> {
    if lines == 0 {
        return Ok(end);
    }
    let mut window = 64 * 1024u64;
    loop {
        let want = end.saturating_sub(window);
        let path = format!(
            "/api/jobs/{}/output?offset={want}&limit={}",
            encode_query(id),
            end - want
        );
        let resp = api
            .send(api.request(reqwest::Method::GET, &path), "the job's output")
            .await?;
        let resp = super::api::check(resp, &format!("job {id}")).await?;
        let got: u64 = resp
            .headers()
            .get("x-output-offset")
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .unwrap_or(want);
        let bytes = resp.bytes().await.map_err(|e| api.transport_error(&e))?;
        let body = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
        let mut seen = 0;
        for (i, b) in body.iter().enumerate().rev() {
            if *b == b'\n' {
                seen += 1;
                if seen == lines {
                    return Ok(got + i as u64 + 1);
                }
            }
        }
        // The whole kept log holds fewer lines: all of it.
        if got > want || want == 0 {
            return Ok(got);
        }
        window = window.saturating_mul(4);
    }
}

/// Where the output job `id`'s hub stored since `since` begins (`GET /api/jobs/{id}/output`
/// with `since` and no bytes: the `x-output-offset` header).
async fn since_offset(api: &Api, id: &str, since: std::time::SystemTime) -> anyhow::Result<u64> {
    let path = format!(
        "/api/jobs/{}/output?since={}&limit=0",
        encode_query(id),
        encode_query(&humantime::format_rfc3339_millis(since).to_string())
    );
    let resp = api
        .send(api.request(reqwest::Method::GET, &path), "the job's output")
        .await?;
    let resp = super::api::check(resp, &format!("job {id}")).await?;
    resp.headers()
        .get("x-output-offset")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .ok_or_else(|| anyhow!("the hub did not say where the output since then starts"))
}

/// `--zip FILE` must be a readable ZIP archive (its central directory parses).
fn check_zip(path: &Path) -> anyhow::Result<()> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    zip::ZipArchive::new(std::io::BufReader::new(file))
        .map(drop)
        .map_err(|e| {
            anyhow!(
                "{} is not a ZIP file ({e}): give --zip an archive, or the folder as DIR",
                path.display()
            )
        })
}

/// What to say when `cmdx submit` got no command after `--`. The usual slip is the command
/// itself in the DIR position (`cmdx submit 'make test'`): then show it after `--`.
fn missing_command_hint(dir: Option<&Path>) -> String {
    match dir {
        Some(d) if !d.is_dir() => {
            let d = d.display();
            format!(
                "`{d}` is not a folder to upload: the command goes after `--`, as in \
                 `cmdx submit -- {d}` (or `cmdx submit . -- {d}` to run it on this folder's files)"
            )
        }
        _ => "no command: put it after `--`, as in `cmdx submit . -- make test`".to_owned(),
    }
}

#[cfg(test)]
mod hint_tests {
    use super::*;

    #[test]
    fn a_command_in_the_folder_position_is_shown_after_the_dashes() {
        let h = missing_command_hint(Some(Path::new("echo hi")));
        assert!(h.contains("`cmdx submit -- echo hi`"), "{h}");
        let h = missing_command_hint(Some(Path::new(".")));
        assert!(h.starts_with("no command"), "{h}");
        assert!(missing_command_hint(None).starts_with("no command"));
    }
}
