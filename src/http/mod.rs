//! The HTTP API (axum only): routers per resource, extractors, problem+json, OpenAPI.
//! Handlers record intent in the store and return; they never talk to the cluster.

mod dashboard;
mod events;
mod extract;
mod health;
mod idempotency;
mod metrics;
mod middleware;
mod openapi;
mod pagination;
pub mod problem;
mod runs;
mod tasks;

use crate::domain::RunPolicy;
use axum::extract::FromRef;
use axum::Router;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;

pub use events::{ChangeEvent, EventHub};
pub use openapi::openapi;

/// Request limits, from the configuration.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
}

/// What handlers share. Cheap to clone.
#[derive(Clone, FromRef)]
pub struct AppState {
    pub db: PgPool,
    pub limits: Arc<Limits>,
    /// What run templates may ask of the cluster.
    pub policy: Arc<RunPolicy>,
    /// The process's fan-out of run and task events to `/v1/events` clients.
    pub events: EventHub,
}

/// The whole HTTP application: API routes, OpenAPI document and docs page, metrics, the
/// dashboard, middleware.
pub fn router(state: AppState) -> Router {
    let (api, doc) = openapi::api_router().split_for_parts();
    let limits = state.limits.clone();
    let app = api
        .merge(openapi::docs_router(doc))
        .route("/metrics", axum::routing::get(metrics::metrics))
        .merge(dashboard::router())
        .fallback(middleware::not_found)
        .method_not_allowed_fallback(middleware::method_not_allowed)
        .with_state(state);
    middleware::wrap(app, &limits)
}
