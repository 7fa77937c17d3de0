//! `cmdx jobs`, `cmdx workers` and `cmdx cancel`: tables on a terminal, JSON lines for scripts.

use std::io::IsTerminal;
use std::time::SystemTime;

use anyhow::Context;
use cmdx_proto::FailureKind;
use cmdx_proto::rest::{CancelRequest, JobList, WorkerList};

use super::api::Api;
use super::table::{age, between, clip, render};
use super::{CancelArgs, JobsArgs, WorkersArgs, config};

/// Whether to print JSON lines: asked for, or stdout is not a terminal.
fn json_lines(asked: bool) -> bool {
    asked || !std::io::stdout().is_terminal()
}

/// Prints each value as one JSON line.
fn print_lines<T: serde::Serialize>(items: &[T]) -> anyhow::Result<()> {
    let mut text = String::new();
    for item in items {
        text.push_str(&serde_json::to_string(item).context("encoding JSON")?);
        text.push('\n');
    }
    super::out(&text)
}

/// `cmdx jobs`.
pub async fn jobs(args: JobsArgs) -> anyhow::Result<i32> {
    let conn = config::resolve(&args.conn)?;
    let api = Api::new(&conn)?;
    api.token()?;
    let mut path = format!("/api/jobs/list?limit={}", args.limit);
    if let Some(s) = &args.status {
        path.push_str(&format!("&status={s}"));
    }
    let list: JobList = api.get_json(&path, "listing jobs").await?;
    if json_lines(args.json) {
        print_lines(&list.jobs)?;
        return Ok(0);
    }
    let now = SystemTime::now();
    let rows: Vec<Vec<String>> = list
        .jobs
        .iter()
        .map(|j| {
            let status = status_cell(j.status.as_str(), j.failure, j.exit_code);
            vec![
                j.job_id.clone(),
                status,
                j.worker_id.clone().unwrap_or_else(|| "-".into()),
                age(Some(&j.created_at), now),
                between(j.started_at.as_deref(), j.completed_at.as_deref(), now),
                clip(&j.command, 60),
            ]
        })
        .collect();
    super::out(&render(
        &["ID", "STATUS", "WORKER", "AGE", "DURATION", "COMMAND"],
        &rows,
    ))?;
    if list.next_cursor.is_some() {
        super::note(format_args!("(more jobs: raise --limit)"));
    }
    Ok(0)
}

/// `cmdx workers`.
pub async fn workers(args: WorkersArgs) -> anyhow::Result<i32> {
    let conn = config::resolve(&args.conn)?;
    let api = Api::new(&conn)?;
    api.token()?;
    if let Some(action) = &args.action {
        use super::WorkersAction::{Drain, Remove, Resume};
        let (id, method, path, done) = match action {
            Drain { id } => (
                id,
                reqwest::Method::POST,
                format!("/api/workers/{id}/drain"),
                format!(
                    "worker {id} is drained: it takes no new jobs and finishes its running ones, \
                     until `cmdx workers resume {id}`"
                ),
            ),
            Resume { id } => (
                id,
                reqwest::Method::POST,
                format!("/api/workers/{id}/resume"),
                format!("worker {id} takes jobs again"),
            ),
            Remove { id } => (
                id,
                reqwest::Method::DELETE,
                format!("/api/workers/{id}"),
                format!("worker {id} removed: its running jobs, if any, are queued again"),
            ),
        };
        let _: serde_json::Value = api
            .send_json(
                method,
                &path,
                &serde_json::json!({}),
                &format!("worker {id}"),
            )
            .await?;
        super::note(format_args!("{done}"));
        return Ok(0);
    }
    let list: WorkerList = api.get_json("/api/workers/list", "listing workers").await?;
    if json_lines(args.json) {
        print_lines(&list.workers)?;
        return Ok(0);
    }
    let now = SystemTime::now();
    let rows: Vec<Vec<String>> = list
        .workers
        .iter()
        .map(|w| {
            vec![
                w.worker_id.clone(),
                w.hostname.clone(),
                match (&w.drained_by, w.status.as_str()) {
                    (Some(by), "draining") => format!("drained by {by}"),
                    (Some(_), status) => format!("{status}, drained"),
                    (None, status) => status.to_string(),
                },
                format!("{}/{}", w.slots_used, w.slots),
                if w.current_jobs.is_empty() {
                    "-".into()
                } else {
                    clip(&w.current_jobs.join(","), 60)
                },
                age(w.last_heartbeat.as_deref(), now),
            ]
        })
        .collect();
    super::out(&render(
        &["ID", "HOSTNAME", "STATUS", "SLOTS", "JOBS", "HEARTBEAT"],
        &rows,
    ))?;
    Ok(0)
}

/// `cmdx cancel`.
pub async fn cancel(args: CancelArgs) -> anyhow::Result<i32> {
    let conn = config::resolve(&args.conn)?;
    let api = Api::new(&conn)?;
    api.token()?;
    let id = args.job.trim().to_string();
    let v: serde_json::Value = api
        .post_json(
            "/api/jobs/cancel",
            &CancelRequest { job_id: id.clone() },
            &format!("job {id}"),
        )
        .await?;
    let status = v["status"].as_str().unwrap_or("unknown");
    match status {
        "cancelled" => super::note(format_args!("job {id} cancelled")),
        "completed" | "failed" => {
            super::note(format_args!("job {id} had already ended ({status})"))
        }
        _ => super::note(format_args!(
            "job {id}: cancel requested (the worker is stopping it)"
        )),
    }
    Ok(0)
}

/// A job's STATUS cell: a failed job says why, and a non-zero exit says its code
/// (`failed (exit 2)`), so a glance at the table tells a test failure from a crash.
pub fn status_cell(status: &str, failure: Option<FailureKind>, exit_code: Option<i32>) -> String {
    match (failure, exit_code) {
        (Some(FailureKind::ExitCode), Some(code)) => format!("{status} (exit {code})"),
        (Some(f), _) => format!("{status} ({})", f.as_str()),
        _ => status.to_string(),
    }
}

#[cfg(test)]
mod status_tests {
    use super::*;

    #[test]
    fn failed_jobs_show_their_exit_code_or_failure_kind() {
        assert_eq!(
            status_cell("failed", Some(FailureKind::ExitCode), Some(2)),
            "failed (exit 2)"
        );
        assert_eq!(
            status_cell("failed", Some(FailureKind::Oom), Some(137)),
            "failed (oom)"
        );
        assert_eq!(status_cell("completed", None, Some(0)), "completed");
    }
}
