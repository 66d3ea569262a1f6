//! Liveness and readiness probes. Liveness never touches the database, so an outage does not get
//! the pods restarted; readiness says whether this replica can serve.

use super::problem::Problem;
use crate::cluster::jobs::Cluster;
use crate::store;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use sqlx::PgPool;
use utoipa::ToSchema;

#[derive(Serialize, ToSchema)]
pub struct Health {
    /// Always `ok` when answered.
    status: &'static str,
}

/// Alive: the process answers HTTP.
#[utoipa::path(get, path = "/healthz", tag = "health", security(()), responses((status = 200, body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// Ready: the database is reachable, every migration is applied, and the last check of the
/// service's Kubernetes permissions found none missing (the 503 names what is).
#[utoipa::path(
    get, path = "/readyz", tag = "health",
    security(()),
    responses(
        (status = 200, body = Health),
        (status = 503, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn readyz(State(db): State<PgPool>, State(cluster): State<Cluster>) -> Response {
    let unready = |detail: &str| {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not-ready",
            "Not ready",
            detail,
        )
        .into_response()
    };
    match store::migrations_applied(&db).await {
        Ok(true) => {
            let missing = cluster.permissions.missing();
            if missing.is_empty() {
                return Json(Health { status: "ok" }).into_response();
            }
            let list: Vec<String> = missing.iter().map(ToString::to_string).collect();
            unready(&format!(
                "the service account lacks Kubernetes permissions: {}",
                list.join(", ")
            ))
        }
        Ok(false) => unready("database migrations are not applied; run `vfi-orchestrator migrate`"),
        Err(error) => {
            tracing::warn!(error = %error, "readiness check failed");
            unready("the database is unreachable")
        }
    }
}
