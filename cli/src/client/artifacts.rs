//! `cmdx artifacts` and `cmdx submit --download`: list a job's artifacts, download their ZIP
//! (streamed into a temp file, never held in memory) and unpack it safely ([`super::unzip`]).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use cmdx_proto::rest::JobView;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

use super::api::{Api, one_line};
use super::table::{bytes, clip, render};
use super::unzip::{Unpacked, unpack};
use super::{ArtifactsArgs, config, detail, note};

/// Largest artifact ZIP the CLI downloads.
pub const MAX_ZIP_BYTES: u64 = 4 << 30;
/// How long a download may go without receiving a byte.
const STALL: Duration = Duration::from_secs(60);

/// `cmdx artifacts`.
pub async fn artifacts(args: ArtifactsArgs) -> anyhow::Result<i32> {
    let conn = config::resolve(&args.conn)?;
    let api = Api::new(&conn)?;
    api.token()?;
    let id = args.job.trim().to_string();
    let view = api.job(&id, false).await?;
    if args.out.is_none() && args.zip.is_none() {
        return list(&view, args.json);
    }
    if !view.status.is_terminal() {
        bail!(
            "job {id} is still {}: its artifacts are collected when it ends (cmdx logs -f {id} waits)",
            view.status.as_str()
        );
    }
    if view.artifacts.is_empty() {
        report(&view);
        note(format_args!(
            "cmdx: job {id} has no artifacts: nothing written"
        ));
        return Ok(0);
    }
    if let Some(file) = &args.zip {
        let size = save_zip(&api, &view, file).await?;
        note(format_args!(
            "cmdx: saved {} ({})",
            file.display(),
            bytes(size)
        ));
    }
    if let Some(dir) = &args.out {
        let done = match &args.zip {
            Some(file) => unpack_blocking(file.clone(), dir.clone(), &view, args.force).await?,
            None => download(&api, &view, dir, args.force).await?,
        };
        let mut text = String::new();
        for f in &done.written {
            text.push_str(&format!("{}\n", dir.join(&f.path).display()));
        }
        super::out(&text)?;
        report(&view);
        left_out(&done, &view);
    } else {
        report(&view);
    }
    Ok(0)
}

/// After `cmdx submit --download DIR`: reports what the job skipped, then downloads and unpacks
/// its artifacts into `dir` (replacing existing files when `force`), listing what was written
/// on stderr (stdout is the job's).
pub async fn after_job(api: &Api, id: &str, dir: &Path, force: bool) -> anyhow::Result<()> {
    let view = api.job(id, false).await?;
    report(&view);
    if view.artifacts.is_empty() {
        note(format_args!(
            "cmdx: job {id} has no artifacts: nothing downloaded"
        ));
        return Ok(());
    }
    let done = download(api, &view, dir, force)
        .await
        .with_context(|| format!("downloading the artifacts of job {id} failed"))?;
    for f in &done.written {
        note(format_args!(
            "cmdx: wrote {} ({})",
            dir.join(&f.path).display(),
            bytes(f.size)
        ));
    }
    left_out(&done, &view);
    Ok(())
}

/// Prints the artifacts as a table (then the skipped paths), or as one JSON line.
fn list(view: &JobView, json: bool) -> anyhow::Result<i32> {
    let id = &view.job_id;
    if json || !std::io::stdout().is_terminal() {
        let doc = serde_json::json!({
            "jobId": view.job_id,
            "status": view.status,
            "artifactPatterns": view.artifact_patterns,
            "artifacts": view.artifacts,
            "artifactsUrl": view.artifacts_url,
            "artifactsSkipped": view.artifacts_skipped,
            "artifactsSkippedTotal": view.artifacts_skipped_total,
            "artifactsError": view.artifacts_error,
        });
        super::out(&format!("{doc}\n"))?;
        return Ok(0);
    }
    if view.artifact_patterns.is_empty() {
        note(format_args!("job {id} asked for no artifacts"));
        return Ok(0);
    }
    if !view.status.is_terminal() {
        note(format_args!(
            "job {id} is {}: files matching {} are collected when it ends",
            view.status.as_str(),
            view.artifact_patterns.join(" ")
        ));
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = view
        .artifacts
        .iter()
        .map(|a| vec![clip(&a.path, 100), bytes(a.size), a.sha256.clone()])
        .collect();
    let mut text = render(&["PATH", "SIZE", "SHA256"], &rows);
    if !view.artifacts_skipped.is_empty() {
        let rows: Vec<Vec<String>> = view
            .artifacts_skipped
            .iter()
            .map(|s| vec![clip(&s.path, 100), clip(&s.reason, 100)])
            .collect();
        text.push('\n');
        text.push_str(&render(&["SKIPPED", "REASON"], &rows));
    }
    super::out(&text)?;
    let unlisted = view
        .artifacts_skipped_total
        .saturating_sub(view.artifacts_skipped.len() as u64);
    if unlisted > 0 {
        note(format_args!("({unlisted} more skipped paths not listed)"));
    }
    if let Some(e) = &view.artifacts_error {
        note(format_args!("cmdx: job {id}: {}", one_line(e)));
    }
    Ok(0)
}

/// Prints the job's skipped paths and artifact error on stderr.
fn report(view: &JobView) {
    for s in &view.artifacts_skipped {
        note(format_args!(
            "cmdx: not collected: {}: {}",
            one_line(&s.path),
            one_line(&s.reason)
        ));
    }
    let unlisted = view
        .artifacts_skipped_total
        .saturating_sub(view.artifacts_skipped.len() as u64);
    if unlisted > 0 {
        note(format_args!(
            "cmdx: … and {unlisted} more paths not collected"
        ));
    }
    if let Some(e) = &view.artifacts_error {
        note(format_args!(
            "cmdx: job {}: no artifacts kept: {}",
            view.job_id,
            one_line(e)
        ));
    }
}

/// Prints the ZIP entries the unpacker left out on stderr, but for those the hub already
/// listed as skipped.
fn left_out(done: &Unpacked, view: &JobView) {
    let known: std::collections::HashSet<&str> = view
        .artifacts_skipped
        .iter()
        .map(|s| s.path.as_str())
        .collect();
    for (path, why) in done
        .left_out
        .iter()
        .filter(|(p, _)| !known.contains(p.as_str()))
    {
        note(format_args!(
            "cmdx: left out of the folder: {}: {}",
            one_line(path),
            one_line(why)
        ));
    }
}

/// The folder `cmdx submit --download` unpacks into, one subfolder per job.
pub const DOWNLOAD_ROOT: &str = "cmdx-artifacts";

/// Puts a `.gitignore` of `*` in `dir` unless it has one (as Python's venv and pytest's cache
/// do): downloaded artifacts stay out of git and out of the next `cmdx submit .` upload, which
/// honours `.gitignore`. Deleting the file opts back in.
async fn ignore_all(dir: &Path) -> anyhow::Result<()> {
    let file = dir.join(".gitignore");
    let text = "# Made by cmdx: job artifacts downloaded by `cmdx submit --download`.\n*\n";
    match tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&file)
        .await
    {
        Ok(mut f) => {
            use tokio::io::AsyncWriteExt as _;
            f.write_all(text.as_bytes())
                .await
                .with_context(|| format!("cannot write {}", file.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot create {}", file.display())),
    }
}

/// Downloads the job's artifact ZIP into a temp file inside `dir` (created if missing) and
/// unpacks it there (replacing existing files when `force`); the temp file is removed either
/// way.
pub async fn download(
    api: &Api,
    view: &JobView,
    dir: &Path,
    force: bool,
) -> anyhow::Result<Unpacked> {
    tokio::fs::create_dir_all(dir)
        .await
        .with_context(|| format!("cannot create {}", dir.display()))?;
    if dir.parent() == Some(Path::new(DOWNLOAD_ROOT)) {
        ignore_all(Path::new(DOWNLOAD_ROOT)).await?;
    }
    let spool = tempfile::Builder::new()
        .prefix(".cmdx-artifacts-")
        .suffix(".zip")
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a temp file in {}", dir.display()))?;
    fetch_zip(api, view, spool.path()).await?;
    let path = spool.path().to_path_buf();
    let done = unpack_blocking(path, dir.to_path_buf(), view, force).await;
    drop(spool);
    done
}

/// Downloads the job's artifact ZIP to `file` (through a temp file next to it, renamed into
/// place when complete); returns its size.
async fn save_zip(api: &Api, view: &JobView, file: &Path) -> anyhow::Result<u64> {
    let parent = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = tempfile::Builder::new()
        .prefix(".cmdx-artifacts-")
        .suffix(".zip")
        .tempfile_in(&parent)
        .with_context(|| format!("cannot create a temp file in {}", parent.display()))?;
    let size = fetch_zip(api, view, tmp.path()).await?;
    tmp.persist(file)
        .map_err(|e| anyhow!("cannot write {}: {}", file.display(), e.error))?;
    Ok(size)
}

async fn unpack_blocking(
    zip: PathBuf,
    dir: PathBuf,
    view: &JobView,
    force: bool,
) -> anyhow::Result<Unpacked> {
    let listed = view.artifacts.clone();
    tokio::task::spawn_blocking(move || unpack(&zip, &dir, &listed, force))
        .await
        .map_err(|e| anyhow!("unpacking failed: {e}"))?
}

/// Streams the job's artifact ZIP into `dest` (capped at [`MAX_ZIP_BYTES`], a progress bar on a
/// terminal); returns the bytes written.
async fn fetch_zip(api: &Api, view: &JobView, dest: &Path) -> anyhow::Result<u64> {
    let id = &view.job_id;
    let what = format!("artifacts of job {id}");
    let path = view
        .artifacts_url
        .clone()
        .unwrap_or_else(|| format!("/api/jobs/{}/artifacts", super::submit::encode_query(id)));
    let resp = api
        .send(api.request(reqwest::Method::GET, &path), &what)
        .await?;
    if let Some(len) = resp.content_length()
        && len > MAX_ZIP_BYTES
    {
        bail!("the artifact ZIP of job {id} is {len} bytes, over the cap of {MAX_ZIP_BYTES}");
    }
    let bar = (std::io::stderr().is_terminal()).then(|| {
        let bar = indicatif::ProgressBar::new(resp.content_length().unwrap_or(0));
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "downloading {bar:30} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec}",
        ) {
            bar.set_style(style);
        }
        bar
    });
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(dest)
        .await
        .with_context(|| format!("cannot open {}", dest.display()))?;
    let mut stream = resp.bytes_stream();
    let mut total = 0u64;
    let result = loop {
        let chunk = match tokio::time::timeout(STALL, stream.next()).await {
            Err(_) => break Err(anyhow!("the download of {what} stalled")),
            Ok(None) => break Ok(()),
            Ok(Some(Err(e))) => break Err(api.transport_error(&e)),
            Ok(Some(Ok(c))) => c,
        };
        total += chunk.len() as u64;
        if total > MAX_ZIP_BYTES {
            break Err(anyhow!(
                "the artifact ZIP of job {id} is over the cap of {MAX_ZIP_BYTES} bytes"
            ));
        }
        if let Err(e) = file.write_all(&chunk).await {
            break Err(anyhow!("cannot write {}: {e}", dest.display()));
        }
        if let Some(b) = &bar {
            b.inc(chunk.len() as u64);
        }
    };
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    result?;
    file.flush()
        .await
        .with_context(|| format!("cannot write {}", dest.display()))?;
    detail(format_args!("downloaded {total} bytes of {what}"));
    Ok(total)
}
