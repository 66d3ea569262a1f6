//! RFC 9457 problem+json: the one place where errors become HTTP statuses. Responses never carry
//! internal error text; the cause chain goes to the log (inside the request's span) instead.

use crate::domain::FieldError;
use crate::error::Error;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// An RFC 9457 problem document.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Problem {
    /// A URI identifying the kind of problem.
    #[serde(rename = "type")]
    pub kind: String,
    /// Short summary of the kind of problem.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong with this request.
    pub detail: String,
    /// The fields at fault, for validation problems.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// The concurrency key, for problems of a run's queue (`too-many-waiting`,
    /// `concurrency-forbidden`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// How many runs wait on the key (`too-many-waiting`), or are unfinished
    /// (`concurrency-forbidden`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub depth: Option<i64>,
}

impl Problem {
    pub fn new(status: StatusCode, slug: &str, title: &str, detail: impl Into<String>) -> Self {
        Problem {
            kind: format!("urn:vfi-orchestrator:problem:{slug}"),
            title: title.to_string(),
            status: status.as_u16(),
            detail: detail.into(),
            errors: Vec::new(),
            key: None,
            depth: None,
        }
    }

    fn with_queue(mut self, key: &str, depth: i64) -> Self {
        self.key = Some(key.to_string());
        self.depth = Some(depth);
        self
    }

    pub fn with_errors(mut self, errors: Vec<FieldError>) -> Self {
        self.errors = errors;
        self
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, axum::Json(self)).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        response
    }
}

fn describe(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(|e| format!("{}: {}", e.field, e.message))
        .collect::<Vec<_>>()
        .join("; ")
}

impl From<&Error> for Problem {
    fn from(error: &Error) -> Problem {
        match error {
            Error::Invalid(invalid) => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid",
                "Invalid request",
                describe(&invalid.0),
            )
            .with_errors(invalid.0.clone()),
            Error::BadRequest(invalid) => Problem::new(
                StatusCode::BAD_REQUEST,
                "bad-request",
                "Bad request",
                describe(&invalid.0),
            )
            .with_errors(invalid.0.clone()),
            Error::MalformedBody { message, field } => {
                let problem = Problem::new(
                    StatusCode::BAD_REQUEST,
                    "malformed-body",
                    "Malformed request body",
                    message.clone(),
                );
                match field {
                    Some(field) => problem.with_errors(vec![FieldError {
                        field: field.clone(),
                        message: message.clone(),
                    }]),
                    None => problem,
                }
            }
            Error::UnsupportedMediaType(message) => Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
                message.clone(),
            ),
            Error::BodyTooLarge { limit } => Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body-too-large",
                "Request body too large",
                format!("the request body must be at most {limit} bytes"),
            ),
            Error::NotFound { kind, name } => Problem::new(
                StatusCode::NOT_FOUND,
                "not-found",
                "Not found",
                format!("{kind} {name:?} does not exist"),
            ),
            Error::RunIsFinal { status } => Problem::new(
                StatusCode::CONFLICT,
                "run-finished",
                "Run already finished",
                format!("the run is already {status}"),
            ),
            Error::NothingToRerun { message } => Problem::new(
                StatusCode::CONFLICT,
                "nothing-to-rerun",
                "Nothing to rerun",
                message.clone(),
            ),
            Error::IdempotencyMismatch => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency-key-reused",
                "Idempotency-Key reused",
                "this Idempotency-Key was already used with a different request body; use a new key for a new request",
            )
            .with_errors(vec![FieldError {
                field: "Idempotency-Key".into(),
                message: "already used with a different request body".into(),
            }]),
            Error::Unauthenticated(detail) => Problem::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "Authentication required",
                *detail,
            ),
            Error::Forbidden(denied) => Problem::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "Forbidden",
                denied.0.clone(),
            ),
            Error::RateLimited { retry_after } => Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                "Too many requests",
                format!(
                    "too many requests from this caller (its token, or its address when it sends none); retry after {} s",
                    retry_after_secs(*retry_after)
                ),
            ),
            Error::QueueFull { task, limit } => Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "queue-full",
                "Too many queued runs",
                format!(
                    "task {task:?} already has {limit} queued runs, the most allowed; wait for some to start, or cancel some"
                ),
            ),
            Error::TooManyActiveRuns { limit } => Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too-many-active-runs",
                "Too many unfinished runs",
                format!(
                    "this token already has {limit} unfinished runs, its limit (maxActiveRuns, or the installation's MAX_ACTIVE_RUNS_PER_TOKEN); wait for some to finish, or cancel some"
                ),
            )
            .with_errors(vec![FieldError {
                field: "maxActiveRuns".into(),
                message: format!("at most {limit} unfinished runs per token"),
            }]),
            Error::TooManyWaiting {
                key,
                depth,
                max_waiting,
            } => Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too-many-waiting",
                "Too many runs waiting on the concurrency key",
                format!(
                    "{depth} runs already wait on concurrency key {key:?}, its maxWaiting ({max_waiting}); nothing was queued"
                ),
            )
            .with_queue(key, *depth)
            .with_errors(vec![FieldError {
                field: "concurrency.maxWaiting".into(),
                message: format!("at most {max_waiting} runs may wait on key {key:?}"),
            }]),
            Error::QueueForbidden { key, active } => Problem::new(
                StatusCode::CONFLICT,
                "concurrency-forbidden",
                "The concurrency key is busy",
                format!(
                    "concurrency key {key:?} has {active} unfinished runs, its limit, and its policy is Forbid; nothing was queued"
                ),
            )
            .with_queue(key, *active),
            Error::WebhookRejected(_) => Problem::new(
                StatusCode::UNAUTHORIZED,
                "webhook-unauthenticated",
                "Webhook authentication failed",
                "the delivery's signature or token does not match this trigger's secret",
            ),
            Error::Unavailable(_) => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Service unavailable",
                "the database is unavailable; retry later",
            ),
            Error::Database(_) | Error::Internal(_) => Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal error",
                "the server failed to handle the request; the cause is in its logs",
            ),
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let problem = Problem::from(&self);
        let mut response = problem.into_response();
        match &self {
            Error::Unauthenticated(_) => {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"vfi-orchestrator\""),
                );
            }
            Error::RateLimited { retry_after } => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, retry_after_secs(*retry_after).into());
            }
            Error::Unavailable(_) => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, UNAVAILABLE_RETRY_AFTER_SECS.into());
            }
            _ => {}
        }
        // The logging middleware reports the cause chain of server-side errors.
        if response.status().is_server_error() {
            response
                .extensions_mut()
                .insert(ErrorChain(crate::error::chain(&self)));
        }
        response
    }
}

/// How long a client should wait after a 503 for an unavailable database: long enough for a
/// restart's connection refusals to pass, short enough not to hold up a client for nothing.
const UNAVAILABLE_RETRY_AFTER_SECS: u64 = 2;

/// Whole seconds to wait, at least one.
fn retry_after_secs(wait: std::time::Duration) -> u64 {
    (wait.as_secs_f64().ceil() as u64).max(1)
}

/// The cause chain of a 5xx, carried to the logging middleware on the response.
#[derive(Clone)]
pub struct ErrorChain(pub String);
