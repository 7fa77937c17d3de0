//! A submission: checked against the hub's limits, stored as a queued job, indexed for the
//! dispatcher and acknowledged once durable.

use std::sync::atomic::Ordering;

use cmdx_proto::WindowSize;
use cmdx_proto::image::{ImageRef, registry_matches};
use cmdx_proto::rest::SubmitRequest;

use super::record::NewJob;
use super::{LifecycleError, LifecycleResult};
use crate::Hub;
use crate::auth::Caller;
use crate::store::{FileRef, JobRecord, TtyRecord, new_id, now_ms};

/// Accepts a submission; returns the job id once it is durable.
pub async fn submit(hub: &Hub, caller: &Caller, req: SubmitRequest) -> LifecycleResult<String> {
    accept(hub, caller, req, false).await
}

/// Accepts a submission from the original system's submitters (`/api/jobs/create`,
/// `/api/execute`): the job record says it came in through a legacy route.
pub async fn submit_legacy(
    hub: &Hub,
    caller: &Caller,
    req: SubmitRequest,
) -> LifecycleResult<String> {
    accept(hub, caller, req, true).await
}

/// Submits job `job_id` (one `caller` may see) again as a new job of the caller's: the same
/// command, file, tags, env, timeout, attempts and artifact globs, through the same checks as
/// a submission (the file must still be there). Returns the new job's id once it is durable.
pub async fn rerun(hub: &Hub, caller: &Caller, job_id: &str) -> LifecycleResult<String> {
    let old = super::views::visible_job(hub, caller, job_id).await?;
    if let Some(f) = &old.file
        && hub.store.get_file(&f.file_id).await?.is_none()
    {
        return Err(LifecycleError::Store(crate::store::StoreError::Conflict(
            format!(
                "the ZIP of job {job_id} ({}) is gone: files unused for {} days are deleted; submit \
             the job again with its ZIP",
                f.filename,
                hub.config.file_retention_secs / 86_400
            ),
        )));
    }
    let req = SubmitRequest {
        command: old.command,
        file_id: old.file.map(|f| f.file_id),
        file_url: None,
        timeout: Some(old.timeout_secs),
        tags: old.tags,
        env: old.env,
        max_attempts: Some(old.max_attempts),
        artifacts: old.artifact_globs,
        // The same terminal (or pipes) as the first run.
        tty: Some(old.tty.is_some()),
        tty_size: old.tty.map(|t| cmdx_proto::WindowSize {
            cols: t.cols,
            rows: t.rows,
        }),
        // Through the same ceiling as a submission: a user cannot rerun an admin's priority.
        priority: Some(old.priority),
        image: old.image,
    };
    accept(hub, caller, req, old.legacy).await
}

async fn accept(
    hub: &Hub,
    caller: &Caller,
    req: SubmitRequest,
    legacy: bool,
) -> LifecycleResult<String> {
    if hub.draining.load(Ordering::SeqCst) {
        return Err(LifecycleError::Unavailable("hub is shutting down"));
    }
    if req.command.trim().is_empty() {
        return Err(invalid("command must not be empty"));
    }
    if req.command.len() > 64 * 1024 {
        return Err(invalid("command longer than 64 KiB"));
    }
    let timeout = req.timeout.unwrap_or(hub.config.default_timeout_secs);
    if timeout == 0 || timeout > hub.config.max_timeout_secs {
        return Err(invalid(format!(
            "timeout must be between 1 and {} seconds",
            hub.config.max_timeout_secs
        )));
    }
    let max_attempts = req.max_attempts.unwrap_or(hub.config.default_max_attempts);
    if max_attempts == 0 || max_attempts > hub.config.max_attempts_limit {
        return Err(invalid(format!(
            "maxAttempts must be between 1 and {}",
            hub.config.max_attempts_limit
        )));
    }
    if req.tags.len() > 32 {
        return Err(invalid("at most 32 tags"));
    }
    // Checked as they are kept: trimmed, empty ones dropped.
    if let Some(e) = sorted_tags(&req.tags)
        .iter()
        .find_map(|t| cmdx_proto::tag_error(t))
    {
        return Err(invalid(e));
    }
    if req.env.len() > 128
        || req.env.iter().any(|(k, v)| {
            k.is_empty()
                || k.len() > 256
                || v.len() > 32 * 1024
                || k.contains('=')
                || k.contains('\0')
                || v.contains('\0')
        })
    {
        return Err(invalid(
            "env: at most 128 variables, names without '=' or NUL",
        ));
    }
    let tty = terminal(&req, legacy)?;
    let priority = priority(hub, caller, req.priority)?;
    let image = image(&hub.config, &req, legacy)?;
    let artifact_globs =
        crate::artifacts::validate_globs(&req.artifacts).map_err(LifecycleError::Invalid)?;
    let file_id =
        match (&req.file_id, &req.file_url) {
            (Some(id), _) => Some(id.clone()),
            (None, Some(url)) => Some(crate::urls::file_id_from_url(url).ok_or_else(|| {
                invalid("fileUrl must be a hub file URL (/api/files/download/ID)")
            })?),
            (None, None) => None,
        };
    let file = match file_id {
        Some(id) => {
            let mut f = hub
                .store
                .get_file(&id)
                .await?
                .filter(|f| caller.can_see(&f.owner))
                .ok_or(LifecycleError::NotFound("file"))?;
            f.last_used_ms = Some(now_ms());
            hub.store.put_file(&f).await?;
            Some(FileRef {
                file_id: f.id,
                sha256: f.sha256,
                size: f.size,
                filename: f.filename,
            })
        }
        None => None,
    };
    let tags = sorted_tags(&req.tags);
    // Counted against the owner's queued quota from here until it is in the queue.
    let admission = hub
        .dispatch
        .admit(&caller.user_id)
        .map_err(|limit| LifecycleError::Quota {
            name: "max_queued_per_user",
            limit,
        })?;
    let seq = hub.store.next_seq()?;
    let new = NewJob {
        id: new_id(),
        owner: caller.user_id.clone(),
        command: req.command,
        file,
        timeout_secs: timeout,
        tags: tags.clone(),
        env: req.env,
        max_attempts,
        legacy,
        artifact_globs,
        tty,
        priority,
        image,
    };
    let job = JobRecord::queued(new, seq, now_ms());
    hub.store.insert_job(&job).await?;
    // The dispatcher may take the job before this submission's flush: its claim is a later write
    // and it pushes the assignment only after a flush that started after the claim, which covers
    // this insert as well. So the job is durable before any worker hears of it, while the
    // submission and the claim share one flush instead of waiting for two in a row. (The event
    // goes out first so that watchers never see `queued` after `assigned`.)
    hub.publish(&job);
    hub.enqueue(seq, &job);
    drop(admission);
    hub.store.sync().await?;
    metrics::counter!("cmdx_jobs_submitted_total").increment(1);
    tracing::info!(job_id = %job.id, owner = %job.owner, "job submitted");
    Ok(job.id)
}

/// The job's pseudo-terminal: by default one of the size asked for (80x24 without one),
/// none with `tty: false`. Jobs from the legacy routes keep the pipes the original workers
/// gave them.
fn terminal(req: &SubmitRequest, legacy: bool) -> LifecycleResult<Option<TtyRecord>> {
    if legacy {
        return Ok(None);
    }
    match (req.tty, req.tty_size) {
        (Some(false), Some(_)) => Err(invalid("ttySize needs a terminal (tty is false)")),
        (Some(false), None) => Ok(None),
        (_, size) => {
            let size = size.unwrap_or(WindowSize::DEFAULT);
            if !size.is_valid() {
                return Err(invalid(format!(
                    "ttySize: cols and rows must be between 1 and {}",
                    WindowSize::MAX_SIDE
                )));
            }
            Ok(Some(TtyRecord {
                cols: size.cols,
                rows: size.rows,
            }))
        }
    }
}

/// The job's priority: -100 to 100, above the hub's `max_user_priority` for admins only.
fn priority(hub: &Hub, caller: &Caller, asked: Option<i32>) -> LifecycleResult<i32> {
    use cmdx_proto::rest::{MAX_PRIORITY, MIN_PRIORITY};
    let p = asked.unwrap_or(0);
    if !(MIN_PRIORITY..=MAX_PRIORITY).contains(&p) {
        return Err(invalid(format!(
            "priority must be between {MIN_PRIORITY} and {MAX_PRIORITY}"
        )));
    }
    let ceiling = hub.config.max_user_priority;
    if p > ceiling && !caller.is_admin() {
        return Err(LifecycleError::Forbidden(format!(
            "priority above {ceiling} is for admins"
        )));
    }
    Ok(p)
}

/// The job's image, normalised: the one asked for, else (for legacy submitters with the
/// mapping on) the one the original system picked from the command, else the hub's default;
/// refused when malformed or from a registry the operator did not allow.
fn image(
    config: &crate::config::HubConfig,
    req: &SubmitRequest,
    legacy: bool,
) -> LifecycleResult<Option<String>> {
    let asked = req
        .image
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned);
    let chosen = asked
        .or_else(|| {
            (legacy && config.legacy_image_mapping).then(|| legacy_image(&req.command).to_owned())
        })
        .or_else(|| config.default_image.clone());
    let Some(reference) = chosen else {
        return Ok(None);
    };
    let parsed = ImageRef::parse(&reference).map_err(|e| invalid(format!("image: {e}")))?;
    if !config.allowed_registries.is_empty()
        && !config
            .allowed_registries
            .iter()
            .any(|p| registry_matches(p, &parsed.registry))
    {
        return Err(invalid(format!(
            "image: registry {} is not allowed on this hub (allowed: {})",
            parsed.registry,
            config.allowed_registries.join(", ")
        )));
    }
    Ok(Some(parsed.canonical()))
}

/// The image the original system ran a command in, chosen by its first word.
pub(crate) fn legacy_image(command: &str) -> &'static str {
    let first = command.split_whitespace().next().unwrap_or("");
    let program = first.rsplit('/').next().unwrap_or(first);
    if program.starts_with("python") || program == "pip" || program == "pip3" {
        "python:3.11-slim"
    } else if matches!(program, "node" | "npm" | "npx") {
        "node:22-alpine"
    } else if matches!(program, "gcc" | "g++" | "cc" | "make") {
        "gcc:14-alpine"
    } else if matches!(program, "java" | "javac") {
        "eclipse-temurin:21-alpine"
    } else {
        "alpine:latest"
    }
}

fn sorted_tags(tags: &[String]) -> Vec<String> {
    let mut t: Vec<String> = tags
        .iter()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .collect();
    t.sort();
    t.dedup();
    t
}

fn invalid(message: impl Into<String>) -> LifecycleError {
    LifecycleError::Invalid(message.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::testkit::{Kit, owner};

    fn req(tty: Option<bool>, tty_size: Option<WindowSize>) -> SubmitRequest {
        SubmitRequest {
            command: "true".into(),
            tty,
            tty_size,
            ..SubmitRequest::default()
        }
    }

    #[tokio::test]
    async fn jobs_get_a_terminal_unless_they_ask_for_pipes_or_come_from_a_legacy_route() {
        let kit = Kit::open(|_| {}).await;
        let hub = &kit.hub;
        let caller = owner();
        let default = submit(hub, &caller, req(None, None)).await.expect("submit");
        assert_eq!(
            kit.record(&default).await.tty,
            Some(TtyRecord { cols: 80, rows: 24 })
        );
        let size = WindowSize {
            cols: 132,
            rows: 50,
        };
        let sized = submit(hub, &caller, req(Some(true), Some(size)))
            .await
            .expect("submit");
        assert_eq!(
            kit.record(&sized).await.tty,
            Some(TtyRecord {
                cols: 132,
                rows: 50
            })
        );
        let pipes = submit(hub, &caller, req(Some(false), None))
            .await
            .expect("submit");
        assert_eq!(kit.record(&pipes).await.tty, None);
        let legacy = submit_legacy(hub, &caller, req(None, None))
            .await
            .expect("submit");
        assert_eq!(
            kit.record(&legacy).await.tty,
            None,
            "legacy jobs keep pipes"
        );
        for bad in [
            req(Some(false), Some(size)),
            req(None, Some(WindowSize { cols: 0, rows: 24 })),
            req(
                None,
                Some(WindowSize {
                    cols: 80,
                    rows: 1001,
                }),
            ),
        ] {
            assert!(matches!(
                submit(hub, &caller, bad).await,
                Err(LifecycleError::Invalid(_))
            ));
        }
        kit.shutdown().await;
    }

    #[tokio::test]
    async fn images_are_normalised_defaulted_and_mapped_for_legacy_submitters() {
        let image = |image: &str| SubmitRequest {
            image: Some(image.into()),
            ..req(None, None)
        };
        let kit = Kit::open(|_| {}).await;
        let (hub, caller) = (&kit.hub, owner());
        let id = submit(hub, &caller, image("alpine:3.20"))
            .await
            .expect("submit");
        assert_eq!(
            kit.record(&id).await.image.as_deref(),
            Some("docker.io/library/alpine:3.20")
        );
        let id = submit(hub, &caller, req(None, None)).await.expect("submit");
        assert_eq!(kit.record(&id).await.image, None, "host root");
        let bad = submit(hub, &caller, image("Not An Image")).await;
        assert!(matches!(bad, Err(LifecycleError::Invalid(_))), "{bad:?}");

        let kit = Kit::open(|c| {
            c.legacy_image_mapping = true;
            c.default_image = Some("registry.example.com/base:1".into());
            c.allowed_registries = vec!["docker.io".into(), "registry.example.com".into()];
        })
        .await;
        let hub = &kit.hub;
        let python = SubmitRequest {
            command: "python3 main.py".into(),
            ..req(None, None)
        };
        let id = submit_legacy(hub, &caller, python.clone())
            .await
            .expect("submit");
        assert_eq!(
            kit.record(&id).await.image.as_deref(),
            Some("docker.io/library/python:3.11-slim")
        );
        let id = submit(hub, &caller, python).await.expect("submit");
        assert_eq!(
            kit.record(&id).await.image.as_deref(),
            Some("registry.example.com/base:1"),
            "the mapping is for legacy submitters only"
        );
        let refused = submit(hub, &caller, image("quay.io/x/y:1")).await;
        assert!(matches!(refused, Err(LifecycleError::Invalid(m)) if m.contains("not allowed")));
    }

    #[tokio::test]
    async fn legacy_workers_leave_image_jobs_to_the_agents() {
        use crate::jobs::testkit::{TOKEN_ID, WORKERS};
        let kit = Kit::open(|_| {}).await;
        let (hub, caller) = (&kit.hub, owner());
        let in_image = SubmitRequest {
            image: Some("127.0.0.1:5000/tools:1".into()),
            ..req(None, None)
        };
        let image_job = submit(hub, &caller, in_image).await.expect("submit");
        let plain = submit(hub, &caller, req(None, None)).await.expect("submit");
        let w = WORKERS[0];
        let got = crate::jobs::dispatcher::claim_legacy(hub, w, TOKEN_ID)
            .await
            .expect("claim");
        assert_eq!(
            got.map(|j| j.id),
            Some(plain),
            "the older image job is stepped over"
        );
        let again = crate::jobs::dispatcher::claim_legacy(hub, w, TOKEN_ID)
            .await
            .expect("claim");
        assert!(again.is_none());
        assert_eq!(
            kit.record(&image_job).await.status,
            cmdx_proto::JobStatus::Queued
        );
        assert_eq!(
            hub.dispatch.queue_depth(),
            1,
            "the image job is back in the queue"
        );
    }
}
