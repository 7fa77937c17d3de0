//! The pure transitions of a job record. Each one changes only the record it is given (no store,
//! no clock: `now` is passed in), so store updates can retry it and tests can check it alone.
//! Fencing (who may ask) is the caller's check; these check only what state they start from.

use cmdx_proto::{FailureKind, JobStatus, Outcome};

use crate::store::{AttemptRecord, FileRef, JobRecord, OutputMeta, TtyRecord};

/// Most refusals before a job fails: nobody wants it.
pub const MAX_REJECTIONS: u32 = 100;

/// Why a job's terminal cannot be resized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResizeRefusal {
    /// The job is queued or has ended.
    NotRunning(JobStatus),
    /// The job runs on pipes.
    NoTerminal,
    /// A legacy poller holds the job: it runs every job on pipes.
    LegacyWorker,
}

/// What a submission decides about a new job; the rest of its record starts empty.
#[derive(Debug, Clone, Default)]
pub struct NewJob {
    /// Job id.
    pub id: String,
    /// Owner (user id).
    pub owner: String,
    /// Shell command.
    pub command: String,
    /// Input ZIP, if any.
    pub file: Option<FileRef>,
    /// Wall-clock limit.
    pub timeout_secs: u64,
    /// Required worker tags, sorted and deduplicated.
    pub tags: Vec<String>,
    /// Environment for the job.
    pub env: std::collections::BTreeMap<String, String>,
    /// Attempts lost before the job fails.
    pub max_attempts: u32,
    /// Came in through a legacy route.
    pub legacy: bool,
    /// Artifact globs, checked.
    pub artifact_globs: Vec<String>,
    /// The job's pseudo-terminal; `None`: pipes.
    pub tty: Option<TtyRecord>,
    /// Higher runs first.
    pub priority: i32,
    /// The normalised image reference; `None`: the host's root.
    pub image: Option<String>,
}

impl JobRecord {
    /// A new job, queued under `queue_seq` at `now`.
    pub fn queued(new: NewJob, queue_seq: u64, now: u64) -> JobRecord {
        JobRecord {
            v: 1,
            id: new.id,
            owner: new.owner,
            command: new.command,
            file: new.file,
            timeout_secs: new.timeout_secs,
            tags: new.tags,
            env: new.env,
            max_attempts: new.max_attempts,
            status: JobStatus::Queued,
            attempt: 0,
            queue_seq: Some(queue_seq),
            worker_id: None,
            token_id: None,
            legacy: new.legacy,
            created_ms: now,
            assigned_ms: None,
            started_ms: None,
            completed_ms: None,
            cancel_requested: false,
            outcome: None,
            failure: None,
            error: None,
            output: OutputMeta::default(),
            attempts: Vec::new(),
            rejections: 0,
            artifact_globs: new.artifact_globs,
            artifacts: None,
            tty: new.tty,
            priority: new.priority,
            image: new.image,
        }
    }

    /// Assigns the job, queued under `queue_seq`, to `worker` as a new attempt. False (and no
    /// change) when it is not queued under that seq any more.
    pub fn claim(&mut self, queue_seq: u64, worker: &str, token_id: &str, now: u64) -> bool {
        if self.status != JobStatus::Queued || self.queue_seq != Some(queue_seq) {
            return false;
        }
        self.status = JobStatus::Assigned;
        self.queue_seq = None;
        self.attempt += 1;
        self.worker_id = Some(worker.to_string());
        self.token_id = Some(token_id.to_string());
        self.assigned_ms = Some(now);
        self.started_ms = None;
        self.attempts.push(AttemptRecord {
            attempt: self.attempt,
            worker_id: worker.to_string(),
            assigned_ms: now,
            ended_ms: None,
            end: None,
        });
        true
    }

    /// The worker started the assigned job; a repeated report changes nothing.
    pub fn start(&mut self, now: u64) {
        if self.status == JobStatus::Assigned {
            self.status = JobStatus::Running;
            self.started_ms = Some(now);
        }
    }

    /// Records the end of the current attempt with its `outcome` and stored `output`. A child
    /// killed when nobody asked for a cancel failed: only the hub cancels.
    pub fn finish(&mut self, outcome: &Outcome, output: OutputMeta, now: u64) {
        let mut status = outcome.status();
        if status == JobStatus::Cancelled && !self.cancel_requested {
            status = JobStatus::Failed;
        }
        self.status = status;
        self.failure = match status {
            JobStatus::Failed => Some(outcome.failure_kind().unwrap_or(FailureKind::Killed)),
            _ => None,
        };
        self.error = outcome.error.clone().or_else(|| match self.failure {
            Some(FailureKind::Timeout) => Some(format!("timed out after {} s", self.timeout_secs)),
            Some(FailureKind::Oom) => Some("killed: out of memory".into()),
            Some(FailureKind::ExitCode) => Some(format!(
                "exited with code {}",
                outcome.exit_code.unwrap_or(-1)
            )),
            Some(FailureKind::Killed) => {
                Some(format!("killed by signal {}", outcome.signal.unwrap_or(0)))
            }
            _ => None,
        });
        self.outcome = Some(outcome.clone());
        self.completed_ms = Some(now);
        self.output = output;
        self.end_attempt(status.as_str(), now);
    }

    /// The current attempt is lost (`reason`): the job is cancelled if a cancel was asked for,
    /// failed as `worker_lost` once `max_attempts` attempts were lost (refusals do not count),
    /// and queued again under `requeue_seq` otherwise.
    pub fn lose_attempt(&mut self, reason: &str, requeue_seq: u64, now: u64) {
        self.end_attempt(reason, now);
        let lost = self.attempt.saturating_sub(self.rejections);
        if self.cancel_requested {
            self.status = JobStatus::Cancelled;
            self.completed_ms = Some(now);
        } else if lost >= self.max_attempts {
            self.status = JobStatus::Failed;
            self.failure = Some(FailureKind::WorkerLost);
            self.error = Some(format!(
                "worker lost ({reason}) on attempt {lost} of {}",
                self.max_attempts
            ));
            self.completed_ms = Some(now);
        } else {
            self.status = JobStatus::Queued;
            self.queue_seq = Some(requeue_seq);
            self.started_ms = None;
        }
    }

    /// A worker refused the assignment (counted up to [`MAX_REJECTIONS`]).
    pub fn count_rejection(&mut self) {
        if self.rejections < MAX_REJECTIONS {
            self.rejections += 1;
        }
    }

    /// True once [`MAX_REJECTIONS`] workers refused the job: it fails instead of bouncing.
    pub fn refused_by_all(&self) -> bool {
        self.rejections >= MAX_REJECTIONS
    }

    /// A user asked for a cancel: a queued job is cancelled at once, a held one is marked (its
    /// worker is told); a terminal job stays as it is.
    pub fn request_cancel(&mut self, now: u64) {
        if self.status.is_terminal() {
            return;
        }
        self.cancel_requested = true;
        if self.status == JobStatus::Queued {
            self.status = JobStatus::Cancelled;
            self.completed_ms = Some(now);
            self.queue_seq = None;
        }
    }

    /// Ends the held attempt as cancelled without the worker's report.
    pub fn cancel_now(&mut self, now: u64) {
        self.status = JobStatus::Cancelled;
        self.completed_ms = Some(now);
        self.end_attempt("cancelled", now);
    }

    /// Gives the held job's terminal a new `size` (the record keeps the size the job's terminal
    /// has now). True when it changed. Refused for a job that is not assigned or running, a
    /// job on pipes, and a job a legacy poller holds (it runs every job on pipes).
    pub fn resize(&mut self, size: TtyRecord) -> Result<bool, ResizeRefusal> {
        if !matches!(self.status, JobStatus::Assigned | JobStatus::Running) {
            return Err(ResizeRefusal::NotRunning(self.status));
        }
        let Some(now) = self.tty else {
            return Err(ResizeRefusal::NoTerminal);
        };
        if self
            .token_id
            .as_deref()
            .is_some_and(crate::store::is_legacy_credential)
        {
            return Err(ResizeRefusal::LegacyWorker);
        }
        self.tty = Some(size);
        Ok(now != size)
    }

    fn end_attempt(&mut self, end: &str, now: u64) {
        if let Some(a) = self.attempts.last_mut() {
            a.ended_ms = Some(now);
            a.end = Some(end.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queued(seq: u64) -> JobRecord {
        let new = NewJob {
            id: "j1".into(),
            owner: "u1".into(),
            command: "true".into(),
            timeout_secs: 60,
            max_attempts: 2,
            ..NewJob::default()
        };
        JobRecord::queued(new, seq, 1)
    }

    fn claimed() -> JobRecord {
        let mut job = queued(7);
        assert!(job.claim(7, "w1", "t1", 10));
        job
    }

    #[test]
    fn only_a_held_job_with_a_terminal_on_an_agent_is_resized() {
        let size = |cols, rows| TtyRecord { cols, rows };
        let mut job = queued(7);
        job.tty = Some(size(80, 24));
        assert_eq!(
            job.resize(size(100, 30)),
            Err(ResizeRefusal::NotRunning(JobStatus::Queued))
        );
        assert!(job.claim(7, "w1", "t1", 10));
        assert_eq!(job.resize(size(100, 30)), Ok(true), "assigned");
        job.start(11);
        assert_eq!(job.resize(size(100, 30)), Ok(false), "the same size");
        assert_eq!(job.resize(size(120, 40)), Ok(true));
        assert_eq!(job.tty, Some(size(120, 40)));

        let mut legacy = job.clone();
        legacy.token_id = Some(crate::store::LEGACY_CREDENTIAL.into());
        assert_eq!(legacy.resize(size(1, 1)), Err(ResizeRefusal::LegacyWorker));
        let mut pipes = job.clone();
        pipes.tty = None;
        assert_eq!(pipes.resize(size(1, 1)), Err(ResizeRefusal::NoTerminal));
        assert_eq!(pipes.tty, None);

        job.finish(&Outcome::default(), OutputMeta::default(), 20);
        assert_eq!(
            job.resize(size(1, 1)),
            Err(ResizeRefusal::NotRunning(job.status))
        );
        assert_eq!(job.tty, Some(size(120, 40)), "refusals change nothing");
    }

    #[test]
    fn claim_opens_a_new_attempt_held_by_the_claimer() {
        let job = claimed();
        assert_eq!(job.status, JobStatus::Assigned);
        assert_eq!(job.attempt, 1);
        assert_eq!(job.queue_seq, None);
        assert!(job.held_by("w1", 1, "t1"));
        assert!(!job.held_by("w1", 1, "t2"));
        assert_eq!(job.attempts.len(), 1);
        assert_eq!(job.attempts[0].assigned_ms, 10);
    }

    #[test]
    fn claim_refuses_a_job_not_queued_under_that_seq() {
        let mut job = queued(7);
        assert!(!job.claim(8, "w1", "t1", 10));
        assert_eq!(job.status, JobStatus::Queued);
        let mut job = claimed();
        assert!(!job.claim(7, "w2", "t2", 11));
        assert_eq!(job.worker_id.as_deref(), Some("w1"));
        assert_eq!(job.attempt, 1);
    }

    #[test]
    fn start_is_idempotent() {
        let mut job = claimed();
        job.start(20);
        job.start(30);
        assert_eq!(job.status, JobStatus::Running);
        assert_eq!(job.started_ms, Some(20));
    }

    #[test]
    fn finish_records_the_outcome_and_ends_the_attempt() {
        let mut job = claimed();
        let outcome = Outcome {
            exit_code: Some(3),
            ..Outcome::default()
        };
        let meta = OutputMeta {
            total_bytes: 5,
            lines: 1,
            ..OutputMeta::default()
        };
        job.finish(&outcome, meta, 40);
        assert_eq!(job.status, JobStatus::Failed);
        assert_eq!(job.failure, Some(FailureKind::ExitCode));
        assert_eq!(job.error.as_deref(), Some("exited with code 3"));
        assert_eq!(job.output.total_bytes, 5);
        assert_eq!(job.completed_ms, Some(40));
        assert_eq!(job.attempts[0].end.as_deref(), Some("failed"));
        assert!(job.status.is_terminal());
    }

    #[test]
    fn a_cancel_nobody_asked_for_is_a_failure() {
        let cancelled = Outcome {
            cancelled: true,
            ..Outcome::default()
        };
        let mut job = claimed();
        job.finish(&cancelled, OutputMeta::default(), 40);
        assert_eq!(job.status, JobStatus::Failed);
        let mut job = claimed();
        job.request_cancel(30);
        job.finish(&cancelled, OutputMeta::default(), 40);
        assert_eq!(job.status, JobStatus::Cancelled);
        assert_eq!(job.failure, None);
    }

    #[test]
    fn a_lost_attempt_requeues_until_max_attempts_then_fails() {
        let mut job = claimed();
        job.lose_attempt("reconnect grace expired", 9, 50);
        assert_eq!(job.status, JobStatus::Queued);
        assert_eq!(job.queue_seq, Some(9));
        assert_eq!(
            job.attempts[0].end.as_deref(),
            Some("reconnect grace expired")
        );
        assert!(job.claim(9, "w2", "t2", 60));
        assert_eq!(job.attempt, 2);
        job.lose_attempt("agent restarted", 10, 70);
        assert_eq!(job.status, JobStatus::Failed);
        assert_eq!(job.failure, Some(FailureKind::WorkerLost));
        assert_eq!(
            job.error.as_deref(),
            Some("worker lost (agent restarted) on attempt 2 of 2")
        );
    }

    #[test]
    fn refusals_do_not_use_up_attempts() {
        let mut job = claimed();
        job.count_rejection();
        assert!(!job.refused_by_all());
        job.lose_attempt("rejected by worker", 9, 50);
        assert!(job.claim(9, "w2", "t2", 60));
        job.lose_attempt("reconnect grace expired", 10, 70);
        assert_eq!(
            job.status,
            JobStatus::Queued,
            "one refusal and one loss of two"
        );
    }

    #[test]
    fn rejections_stop_counting_at_the_limit() {
        let mut job = claimed();
        for _ in 1..MAX_REJECTIONS {
            job.count_rejection();
            assert!(!job.refused_by_all());
        }
        job.count_rejection();
        assert!(job.refused_by_all());
        job.count_rejection();
        assert_eq!(job.rejections, MAX_REJECTIONS);
    }

    #[test]
    fn a_lost_attempt_of_a_cancelled_job_ends_it() {
        let mut job = claimed();
        job.request_cancel(30);
        assert!(job.cancel_requested);
        assert_eq!(job.status, JobStatus::Assigned);
        job.lose_attempt("reconnect grace expired", 9, 50);
        assert_eq!(job.status, JobStatus::Cancelled);
        assert_eq!(job.queue_seq, None);
    }

    #[test]
    fn cancel_of_a_queued_job_is_immediate_and_of_a_terminal_one_is_nothing() {
        let mut job = queued(7);
        job.request_cancel(30);
        assert_eq!(job.status, JobStatus::Cancelled);
        assert_eq!(job.queue_seq, None);
        assert_eq!(job.completed_ms, Some(30));
        let mut done = claimed();
        done.finish(&Outcome::default(), OutputMeta::default(), 40);
        let before = done.status;
        done.request_cancel(50);
        assert_eq!(done.status, before);
        assert!(!done.cancel_requested);
    }

    #[test]
    fn cancel_now_ends_the_held_attempt() {
        let mut job = claimed();
        job.start(20);
        job.cancel_now(30);
        assert_eq!(job.status, JobStatus::Cancelled);
        assert_eq!(job.attempts[0].end.as_deref(), Some("cancelled"));
        assert_eq!(job.attempts[0].ended_ms, Some(30));
    }
}
