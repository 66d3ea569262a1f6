//! The HTTP API (axum only): routers per resource, extractors, problem+json, OpenAPI.
//! Handlers record intent in the store and return; they never talk to the cluster.

pub mod auth;
mod dashboard;
mod events;
mod extract;
mod health;
mod hooks;
mod idempotency;
mod logs;
mod metrics;
mod middleware;
mod openapi;
mod pagination;
pub mod problem;
mod revocation;
mod runs;
pub mod server;
mod tasks;
pub mod tokens;
mod triggers;

use crate::cluster::jobs::Cluster;
use crate::domain::RunPolicy;
use axum::extract::FromRef;
use axum::http::{header, HeaderName, HeaderValue, Method};
use axum::Router;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;

pub use auth::{AuthSettings, RateLimit};
pub use events::{ChangeEvent, EventHub};
pub use openapi::openapi;
pub use revocation::Revocations;

/// Request limits, from the configuration.
#[derive(Debug, Clone, Default)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
    /// Queued runs a task may have before new ones are refused (0: no cap).
    pub max_queued_runs_per_task: u32,
    /// Unfinished runs one token may have (0: no cap; a token's own `maxActiveRuns` wins).
    pub max_active_runs_per_token: u32,
    /// Longest silence of a plain-text log follow waiting for pods to start (`None`: no limit).
    pub log_follow_keepalive: Option<Duration>,
    /// Most runs one batch submission may hold.
    pub max_batch_runs: usize,
    /// Most one-index runs one `rerun?only=failed-indexes` may start.
    pub max_rerun_indexes: usize,
    /// The installation's limits on active runs and the priority aging step (a waiting run's
    /// `queue` is read with them).
    pub admission: crate::domain::queue::Admission,
}

impl Limits {
    /// The caps every submission is held to.
    pub fn caps(&self) -> crate::domain::Caps {
        crate::domain::Caps {
            max_queued_runs_per_task: self.max_queued_runs_per_task,
            max_active_runs_per_token: self.max_active_runs_per_token,
        }
    }
}

/// What handlers share. Cheap to clone.
#[derive(Clone, FromRef)]
pub struct AppState {
    pub db: PgPool,
    pub limits: Arc<Limits>,
    /// What run templates may ask of the cluster.
    pub policy: Arc<RunPolicy>,
    /// For reading live pod logs.
    pub cluster: Cluster,
    /// Who may call: tokens, rate limits, browser origins.
    pub auth: Arc<AuthSettings>,
    /// The process's fan-out of run and task events to `/v1/events` clients.
    pub events: EventHub,
    /// Ends the streams of revoked tokens.
    pub revocations: Revocations,
    /// Final runs as `GET /v1/runs/{id}` answers them (shared with the pruner, which forgets
    /// what it deletes).
    pub final_runs: crate::store::runs::FinalRuns,
}

/// The whole HTTP application: API routes, OpenAPI document and docs page, metrics, the
/// dashboard, middleware.
pub fn router(state: AppState) -> Router {
    let (api, doc) = openapi::split();
    let limits = state.limits.clone();
    let cors = cors(&state.auth.cors_origins);
    let app = api
        .merge(openapi::docs_router(doc))
        .route("/metrics", axum::routing::get(metrics::metrics))
        .merge(dashboard::router())
        .fallback(middleware::not_found)
        .method_not_allowed_fallback(middleware::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ))
        .with_state(state);
    let app = middleware::wrap(app, &limits);
    // Outermost, so browsers' preflight requests are answered without a token.
    match cors {
        Some(cors) => app.layer(cors),
        None => app,
    }
}

/// CORS for browser dashboards on the configured origins; none (no CORS headers at all) by
/// default.
fn cors(origins: &[HeaderValue]) -> Option<tower_http::cors::CorsLayer> {
    use tower_http::cors::{AllowOrigin, CorsLayer};
    (!origins.is_empty()).then(|| {
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins.iter().cloned()))
            .allow_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                HeaderName::from_static("idempotency-key"),
            ])
            .expose_headers([
                header::LOCATION,
                header::RETRY_AFTER,
                HeaderName::from_static("x-request-id"),
            ])
            .max_age(Duration::from_secs(3600))
    })
}
