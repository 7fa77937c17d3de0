//! `cmdx job show` (everything about one job, for people; `--json` for the hub's document) and
//! `cmdx rerun` (the same job submitted again by the hub, then followed as `submit` does).

use std::time::SystemTime;

use cmdx_proto::JobStatus;
use cmdx_proto::rest::{JobView, SubmitResponse};

use super::api::{Api, one_line};
use super::submit::{Wait, encode_query, wait_for};
use super::table::{age, between, bytes, render};
use super::{JobArgs, JobCmd, RerunArgs, config};

/// `cmdx job`.
pub async fn job(args: JobArgs) -> anyhow::Result<i32> {
    let conn = config::resolve(&args.conn)?;
    let api = Api::new(&conn)?;
    api.token()?;
    match args.what {
        JobCmd::Show { job, json } => {
            // --json is the hub's whole document, output included.
            let view = api.job(job.trim(), json).await?;
            if json {
                super::out(&format!("{}\n", serde_json::to_string(&view)?))?;
            } else {
                super::out(&describe(&view, &api.hub, SystemTime::now()))?;
            }
            Ok(0)
        }
        JobCmd::Resize { job, size } => {
            let id = job.trim();
            let now = super::resize::resize(&api, id, size).await?;
            super::out(&format!(
                "job {id}: terminal is now {}x{}\n",
                now.cols, now.rows
            ))?;
            Ok(0)
        }
    }
}

/// `cmdx rerun`.
pub async fn rerun(args: RerunArgs) -> anyhow::Result<i32> {
    let conn = config::resolve(&args.conn)?;
    let api = Api::new(&conn)?;
    api.token()?;
    let id = args.job.trim();
    let old = api.job(id, false).await?;
    let resp: SubmitResponse = api
        .post_json(
            &format!("/api/jobs/{}/rerun", encode_query(id)),
            &serde_json::json!({}),
            &format!("rerun of job {id}"),
        )
        .await?;
    let wait = Wait {
        detach: !args.follow,
        json: args.json,
        quiet: args.quiet,
        download: None,
        force: false,
        // The new job's terminal starts at the old one's size; the user's resizes follow.
        tty: old.tty_size,
    };
    wait_for(&api, &resp.job_id, &old.tags, &wait).await
}

/// The job as `name  value` lines, then its attempts as a table.
fn describe(v: &JobView, hub: &str, now: SystemTime) -> String {
    let mut rows: Vec<(&str, String)> = Vec::new();
    let status = super::listing::status_cell(v.status.as_str(), v.failure, v.exit_code);
    let status = match v.signal {
        Some(sig) if v.status.is_terminal() => format!("{status}, signal {sig}"),
        _ => status,
    };
    rows.push(("job", v.job_id.clone()));
    rows.push(("status", status));
    if let (JobStatus::Queued, Some(pos)) = (v.status, v.queue_position) {
        let why = match (v.no_matching_worker, v.wait_reason) {
            (true, _) => "no connected worker can run it",
            (false, Some(r)) => r.describe(),
            (false, None) => "waiting for a free slot",
        };
        rows.push(("queue", format!("position {pos}, {why}")));
    }
    if v.cancel_requested && !v.status.is_terminal() {
        rows.push(("cancel", "requested".into()));
    }
    if let Some(e) = &v.error {
        rows.push(("error", one_line(e)));
    }
    rows.push(("command", one_line(&v.command)));
    if let Some(image) = &v.image {
        let digest = v
            .image_digest
            .as_deref()
            .map(|d| format!(" ({d})"))
            .unwrap_or_default();
        let pull = match v.pull_ms {
            Some(ms) if ms > 0 => format!(", pulled in {:.2}s", ms as f64 / 1000.0),
            Some(_) => ", cached".to_owned(),
            None => String::new(),
        };
        rows.push(("image", format!("{image}{digest}{pull}")));
    }
    rows.push(("tags", list_or_dash(&v.tags)));
    rows.push(("env", list_or_dash(&v.env_keys)));
    rows.push(("file", v.file_url.clone().unwrap_or_else(|| "-".into())));
    rows.push(("timeout", format!("{}s", v.timeout)));
    rows.push((
        "terminal",
        match v.tty_size {
            Some(t) => format!("{}x{}", t.cols, t.rows),
            None => "none (pipes)".into(),
        },
    ));
    rows.push(("priority", v.priority.to_string()));
    rows.push(("worker", v.worker_id.clone().unwrap_or_else(|| "-".into())));
    rows.push(("attempt", format!("{} of {}", v.attempt, v.max_attempts)));
    rows.push((
        "created",
        format!("{} ({} ago)", v.created_at, age(Some(&v.created_at), now)),
    ));
    if let Some(s) = &v.started_at {
        rows.push(("started", s.clone()));
    }
    if let Some(c) = &v.completed_at {
        rows.push(("ended", c.clone()));
    }
    if v.started_at.is_some() {
        rows.push((
            "ran",
            between(v.started_at.as_deref(), v.completed_at.as_deref(), now),
        ));
    }
    let truncated = if v.output_truncated {
        " (head dropped by the output cap)"
    } else {
        ""
    };
    rows.push((
        "output",
        format!(
            "{}{truncated}: cmdx logs {}",
            bytes(v.output_bytes),
            v.job_id
        ),
    ));
    if let Some(m) = v.peak_memory_bytes {
        rows.push(("memory", format!("{} peak", bytes(m))));
    }
    if let Some(c) = v.cpu_ms {
        rows.push(("cpu", format!("{:.2}s", c as f64 / 1000.0)));
    }
    if !v.artifact_patterns.is_empty() {
        rows.push(("artifacts", artifacts_line(v)));
    }
    rows.push(("url", format!("{hub}/jobs/{}", encode_query(&v.job_id))));
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (k, val) in rows {
        out.push_str(&format!("{k:<width$}  {val}\n"));
    }
    if !v.attempts.is_empty() {
        let table: Vec<Vec<String>> = v
            .attempts
            .iter()
            .map(|a| {
                vec![
                    a.attempt.to_string(),
                    a.worker_id.clone(),
                    a.assigned_at.clone(),
                    a.end.clone().unwrap_or_else(|| "-".into()),
                ]
            })
            .collect();
        out.push('\n');
        out.push_str(&render(&["ATTEMPT", "WORKER", "ASSIGNED", "END"], &table));
    }
    out
}

fn list_or_dash(items: &[String]) -> String {
    if items.is_empty() {
        "-".into()
    } else {
        items.join(",")
    }
}

/// `3 files, 1.2 MiB (dist/**): cmdx artifacts ID`, or why there are none.
fn artifacts_line(v: &JobView) -> String {
    let globs = v.artifact_patterns.join(" ");
    if let Some(e) = &v.artifacts_error {
        return format!("none kept ({globs}): {}", one_line(e));
    }
    if !v.status.is_terminal() {
        return format!("{globs}, collected when the job ends");
    }
    let total: u64 = v.artifacts.iter().map(|a| a.size).sum();
    let mut line = format!(
        "{} files, {} ({globs}): cmdx artifacts {}",
        v.artifacts.len(),
        bytes(total),
        v.job_id
    );
    if v.artifacts_skipped_total > 0 {
        line.push_str(&format!(", {} paths skipped", v.artifacts_skipped_total));
    }
    line
}
