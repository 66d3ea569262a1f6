//! The service's one error type. Which HTTP status each variant becomes is decided in
//! `http::problem`, and nowhere else.

use crate::domain::{CapReached, Denied, FieldError, Invalid, RunStatus};
use std::time::Duration;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request's body names invalid fields (422).
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// The request's path, query or headers are malformed (400).
    #[error("bad request: {0}")]
    BadRequest(Invalid),
    /// The body is not JSON at all, or not of the expected content type (400 / 415).
    #[error("malformed body: {message}")]
    MalformedBody {
        message: String,
        field: Option<String>,
    },
    #[error("unsupported media type: {0}")]
    UnsupportedMediaType(String),
    /// The body is larger than allowed (413).
    #[error("request body larger than {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("{kind} {name:?} not found")]
    NotFound { kind: &'static str, name: String },
    /// The operation does not fit the resource's current state (409).
    #[error("run is {status}")]
    RunIsFinal { status: RunStatus },
    /// A partial rerun found nothing to run again: no index failed (409).
    #[error("no failed index to rerun")]
    NothingToRerun { message: String },
    /// An Idempotency-Key was reused with a different request (422).
    #[error("Idempotency-Key reused with a different request")]
    IdempotencyMismatch,
    /// No bearer token, or one that is not (or no longer) valid (401).
    #[error("unauthenticated: {0}")]
    Unauthenticated(&'static str),
    /// The token does not allow this operation (403).
    #[error("forbidden: {0}")]
    Forbidden(#[from] Denied),
    /// The caller sent too many requests; it may try again after the given time (429).
    #[error("rate limited")]
    RateLimited { retry_after: Duration },
    /// The task already has as many queued runs as allowed (429).
    #[error("task {task:?} has {limit} queued runs already")]
    QueueFull { task: String, limit: u32 },
    /// The caller's token already has as many unfinished runs as allowed (429).
    #[error("the token has {limit} unfinished runs already")]
    TooManyActiveRuns { limit: u32 },
    /// `maxWaiting` of a concurrency key: `depth` runs already wait on it (429).
    #[error("{depth} runs wait on concurrency key {key:?} already")]
    TooManyWaiting {
        key: String,
        depth: i64,
        max_waiting: i32,
    },
    /// Concurrency policy `Forbid` while the key is busy (409).
    #[error("concurrency key {key:?} is busy and its policy is Forbid")]
    QueueForbidden { key: String, active: i64 },
    /// A webhook delivery whose signature or token does not check out (401). The reason is for
    /// the logs only; the answer is always the same.
    #[error("webhook delivery refused: {0}")]
    WebhookRejected(String),
    /// The database is unreachable, shutting down, starting up or overloaded (503 with
    /// Retry-After): see [`database_unavailable`].
    #[error("database unavailable")]
    Unavailable(#[source] sqlx::Error),
    #[error("database error")]
    Database(#[source] sqlx::Error),
    #[error("internal error")]
    Internal(anyhow::Error),
}

impl From<sqlx::Error> for Error {
    fn from(error: sqlx::Error) -> Self {
        if database_unavailable(&error) {
            Error::Unavailable(error)
        } else {
            Error::Database(error)
        }
    }
}

impl From<anyhow::Error> for Error {
    fn from(error: anyhow::Error) -> Self {
        // A database error that travelled through anyhow is still a database error.
        match error.downcast::<sqlx::Error>() {
            Ok(sqlx) => Error::from(sqlx),
            Err(other) => Error::Internal(other),
        }
    }
}

/// True when `error` says the database cannot serve now but may soon: nothing to do with the
/// request, so worth retrying. Connection failures and pool timeouts, and the SQLSTATEs of
/// <https://www.postgresql.org/docs/current/errcodes-appendix.html> for a server going away or
/// not there yet: class 08 (connection exception), 57P01 admin_shutdown (`pg_ctl stop -m fast`
/// ends sessions with it), 57P02 crash_shutdown, 57P03 cannot_connect_now (starting up or
/// shutting down), 57P05 idle_session_timeout, 53300 too_many_connections, 40001/40P01
/// (serialization failure, deadlock: the transaction may simply be retried).
pub fn database_unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08")
                || matches!(
                    code.as_ref(),
                    "57P01" | "57P02" | "57P03" | "57P05" | "53300" | "40001" | "40P01"
                )
        }),
        _ => false,
    }
}

impl From<CapReached> for Error {
    fn from(reached: CapReached) -> Error {
        match reached {
            CapReached::QueueFull { task, limit } => Error::QueueFull { task, limit },
            CapReached::TooManyActiveRuns { limit } => Error::TooManyActiveRuns { limit },
            CapReached::TooManyWaiting {
                key,
                depth,
                max_waiting,
            } => Error::TooManyWaiting {
                key,
                depth,
                max_waiting,
            },
            CapReached::Forbidden { key, active } => Error::QueueForbidden { key, active },
        }
    }
}

impl Error {
    pub fn bad_request(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::BadRequest(Invalid::one(field, message))
    }

    pub fn field_errors(&self) -> &[FieldError] {
        match self {
            Error::Invalid(invalid) | Error::BadRequest(invalid) => &invalid.0,
            _ => &[],
        }
    }
}

/// An error with its causes, `top: cause: cause`, for the logs.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
