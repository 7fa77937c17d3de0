//! Errors of the hub library: [`HubError`] for start-up and run failures; one enum per room
//! for what its operations refuse ([`LifecycleError`], [`AuthError`], [`PasswordWorkError`],
//! [`HandshakeError`], [`BackupError`]); and [`ApiError`], what a request answers (status code +
//! `{"error","code"}` body), into which each of those is mapped here, once.

use cmdx_proto::rest::ErrorBody;
use warp::http::StatusCode;
use warp::reply::Response;

use crate::store::StoreError;

/// Failures starting or running the hub.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// The data folder could not be prepared.
    #[error("data folder {path}: {source}")]
    DataDir {
        /// Which path.
        path: std::path::PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Bad configuration.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The TLS certificate or key file cannot be used.
    #[error("TLS file {path}: {reason}")]
    Tls {
        /// The certificate or key file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// Why a lifecycle operation refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    /// The attempt named is not the job's current one, held by this worker with this credential
    /// (fencing): nothing changed.
    #[error("{0}")]
    Stale(String),
    /// No such job or file, or one the caller may not see (the same answer for both).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The request itself is wrong (a bad submission, an output chunk out of order).
    #[error("{0}")]
    Invalid(String),
    /// The hub takes no new work now (it is shutting down).
    #[error("{0}")]
    Unavailable(&'static str),
    /// The caller may not ask for this (a priority above the hub's ceiling for users).
    #[error("{0}")]
    Forbidden(String),
    /// The submission would exceed one of its owner's quotas.
    #[error(
        "{name} is {limit}: you have {limit} jobs queued; wait for some to start or cancel some"
    )]
    Quota {
        /// The setting, e.g. `max_queued_per_user`.
        name: &'static str,
        /// Its value for this user.
        limit: u32,
    },
    /// The job is not in a state that allows this (a resize of a job that is not running).
    #[error("{0}")]
    NotRunning(String),
    /// The job has no terminal (a resize of a job on pipes).
    #[error("{0}")]
    NoTerminal(String),
    /// The store failed, or refused an update on its own terms.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a credential was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Missing, invalid, expired or revoked.
    #[error("{0}")]
    Unauthorized(String),
    /// Valid, but of the wrong kind for this door (a worker token on a user API).
    #[error("{0}")]
    WrongKind(&'static str),
}

/// Why argon2 work (a sign-in, a password change) did not run.
#[derive(Debug, thiserror::Error)]
pub enum PasswordWorkError {
    /// Every permit stayed taken for [`crate::PASSWORD_WAIT`].
    #[error("too many sign-ins at once; retry in a few seconds")]
    Busy,
    /// The blocking pool failed the work.
    #[error("password work failed: {0}")]
    Failed(String),
}

/// Why a WebSocket handshake was refused.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// Not an upgrade request.
    #[error("this route expects a websocket upgrade")]
    NotUpgrade,
    /// A WebSocket version other than 13.
    #[error("websocket version 13 required")]
    BadVersion,
    /// A `sec-websocket-key` that is not 16 bytes in base64.
    #[error("malformed sec-websocket-key")]
    BadKey,
    /// The `101` response could not be built.
    #[error("building the handshake response: {0}")]
    Response(String),
}

/// Why a backup was not written.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The store could not be flushed first.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Writing the archive failed.
    #[error("backup failed: {0}")]
    Write(String),
    /// The hub's store is a database several hubs share: its backups are the database's own.
    #[error(
        "this hub stores in PostgreSQL: back it up with pg_dump (see docs/operations.md, Cluster)"
    )]
    SharedStore,
}

/// What a failed request answers.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Machine-readable code.
    pub code: &'static str,
    /// Human-readable message (lowercase, no trailing period).
    pub message: String,
    /// Seconds for `Retry-After` (429).
    pub retry_after: Option<u64>,
    /// The quota a refused submission would exceed (429 `quota_exceeded`).
    pub quota: Option<cmdx_proto::rest::QuotaHit>,
}

impl ApiError {
    /// Any status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
            quota: None,
        }
    }
    /// 400.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    /// 401.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }
    /// 403.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
    /// 404 (also for ids that exist but belong to someone else).
    pub fn not_found(what: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", what)
    }
    /// 409 for a stale attempt (fencing).
    pub fn stale(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "stale_attempt", message)
    }
    /// 409 for other state conflicts.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }
    /// 408: the client was too slow sending its request.
    pub fn too_slow(message: impl Into<String>) -> Self {
        Self::new(StatusCode::REQUEST_TIMEOUT, "request_timeout", message)
    }
    /// 413.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message)
    }
    /// 429 with `Retry-After`.
    pub fn rate_limited(retry_after: u64) -> Self {
        ApiError {
            retry_after: Some(retry_after.max(1)),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many requests, slow down",
            )
        }
    }
    /// 503.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }
    /// 500; the cause is logged, not sent.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error, see the hub log",
        )
    }

    /// The HTTP response.
    pub fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.message,
            code: self.code.to_string(),
            quota: self.quota,
        };
        let mut resp = warp::Reply::into_response(warp::reply::with_status(
            warp::reply::json(&body),
            self.status,
        ));
        if let Some(secs) = self.retry_after
            && let Ok(v) = warp::http::HeaderValue::from_str(&secs.to_string())
        {
            resp.headers_mut().insert("retry-after", v);
        }
        resp
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => ApiError::not_found(format!("{what} not found")),
            StoreError::Conflict(m) => ApiError::conflict(m),
            StoreError::Unavailable { op, message } => {
                tracing::warn!(op, %message, "store unavailable");
                ApiError {
                    retry_after: Some(2),
                    ..ApiError::unavailable("the store is unavailable; retry shortly")
                }
            }
            other => ApiError::internal(other),
        }
    }
}

impl From<LifecycleError> for ApiError {
    fn from(e: LifecycleError) -> Self {
        match e {
            LifecycleError::Stale(m) => ApiError::stale(m),
            LifecycleError::NotFound(what) => ApiError::not_found(format!("{what} not found")),
            LifecycleError::Invalid(m) => ApiError::bad_request(m),
            LifecycleError::Unavailable(m) => ApiError::unavailable(m),
            LifecycleError::Forbidden(m) => ApiError::forbidden(m),
            LifecycleError::NotRunning(m) => ApiError::new(StatusCode::CONFLICT, "not_running", m),
            LifecycleError::NoTerminal(m) => ApiError::new(StatusCode::CONFLICT, "no_terminal", m),
            e @ LifecycleError::Quota { name, limit } => ApiError {
                quota: Some(cmdx_proto::rest::QuotaHit {
                    name: name.to_string(),
                    limit,
                }),
                ..ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "quota_exceeded",
                    e.to_string(),
                )
            },
            LifecycleError::Store(e) => e.into(),
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Unauthorized(m) => ApiError::unauthorized(m),
            AuthError::WrongKind(m) => ApiError::forbidden(m),
        }
    }
}

impl From<PasswordWorkError> for ApiError {
    fn from(e: PasswordWorkError) -> Self {
        match e {
            PasswordWorkError::Busy => ApiError {
                retry_after: Some(2),
                ..ApiError::unavailable(e.to_string())
            },
            PasswordWorkError::Failed(_) => ApiError::internal(e),
        }
    }
}

impl From<HandshakeError> for ApiError {
    fn from(e: HandshakeError) -> Self {
        match e {
            HandshakeError::NotUpgrade => ApiError::new(
                StatusCode::UPGRADE_REQUIRED,
                "upgrade_required",
                e.to_string(),
            ),
            HandshakeError::BadVersion => ApiError::new(
                StatusCode::UPGRADE_REQUIRED,
                "bad_websocket_version",
                e.to_string(),
            ),
            HandshakeError::BadKey => ApiError::bad_request(e.to_string()),
            HandshakeError::Response(_) => ApiError::internal(e),
        }
    }
}

impl From<BackupError> for ApiError {
    fn from(e: BackupError) -> Self {
        match e {
            BackupError::Store(e) => e.into(),
            BackupError::Write(_) => ApiError::internal(e),
            BackupError::SharedStore => ApiError::new(
                StatusCode::NOT_IMPLEMENTED,
                "backup_with_pg_dump",
                e.to_string(),
            ),
        }
    }
}

/// Result of a handler.
pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(e: impl Into<ApiError>) -> (u16, &'static str, String, Option<u64>) {
        let e = e.into();
        (e.status.as_u16(), e.code, e.message, e.retry_after)
    }

    /// Each room's refusals answer HTTP clients exactly as the lifecycle's `ApiError`s did.
    #[test]
    fn each_refusal_keeps_its_status_code_and_message() {
        let stale = LifecycleError::Stale("stale attempt".into());
        assert_eq!(
            answer(stale),
            (409, "stale_attempt", "stale attempt".into(), None)
        );
        let missing = LifecycleError::NotFound("job");
        assert_eq!(
            answer(missing),
            (404, "not_found", "job not found".into(), None)
        );
        let bad = LifecycleError::Invalid("command must not be empty".into());
        assert_eq!(answer(bad).0, 400);
        let draining = LifecycleError::Unavailable("hub is shutting down");
        assert_eq!(answer(draining).1, "unavailable");
        let gone = LifecycleError::Store(StoreError::NotFound("job j1".into()));
        assert_eq!(
            answer(gone),
            (404, "not_found", "job j1 not found".into(), None)
        );
        let moved = LifecycleError::Store(StoreError::Conflict("moved on".into()));
        assert_eq!(answer(moved).1, "conflict");
        let unauthorized = AuthError::Unauthorized("worker token expired".into());
        assert_eq!(answer(unauthorized).0, 401);
        let wrong = AuthError::WrongKind("worker tokens cannot call user apis");
        assert_eq!(answer(wrong).1, "forbidden");
        assert_eq!(
            answer(PasswordWorkError::Busy),
            (
                503,
                "unavailable",
                "too many sign-ins at once; retry in a few seconds".into(),
                Some(2)
            )
        );
        assert_eq!(answer(HandshakeError::NotUpgrade).1, "upgrade_required");
        assert_eq!(
            answer(HandshakeError::BadVersion),
            (
                426,
                "bad_websocket_version",
                "websocket version 13 required".into(),
                None
            )
        );
        assert_eq!(answer(HandshakeError::BadKey).0, 400);
    }
}
