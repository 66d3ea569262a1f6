//! The OpenAPI 3.1 document (generated from the handlers by utoipa), served at `/openapi.json`,
//! with a readable API page at `/docs`.

use super::{events, health, runs, tasks, AppState};
use axum::routing::get;
use axum::{Json, Router};
use utoipa::openapi::OpenApi as Document;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use utoipa_scalar::{Scalar, Servable};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "vfi-orchestrator",
        description = "Runs batch tasks as Kubernetes Jobs from a REST API, with run history in PostgreSQL. \
            Errors are RFC 9457 problem+json documents naming the field at fault.",
    ),
    tags(
        (name = "tasks", description = "Named, reusable run definitions"),
        (name = "runs", description = "Executions: each run is exactly one Kubernetes Job"),
        (name = "events", description = "Live run and task changes (Server-Sent Events)"),
        (name = "health", description = "Probes"),
    )
)]
struct ApiDoc;

pub(super) fn api_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(tasks::list_tasks))
        .routes(routes!(
            tasks::put_task,
            tasks::get_task,
            tasks::delete_task
        ))
        .routes(routes!(runs::start_task_run))
        .routes(routes!(runs::create_run, runs::list_runs))
        .routes(routes!(runs::get_run))
        .routes(routes!(runs::cancel_run))
        .routes(routes!(runs::rerun))
        .routes(routes!(runs::list_pods))
        .routes(routes!(runs::history))
        .routes(routes!(events::events))
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
}

pub(super) fn docs_router(doc: Document) -> Router<AppState> {
    let json = doc.clone();
    Router::new()
        .route("/openapi.json", get(move || async move { Json(json) }))
        .merge(Scalar::with_url("/docs", doc))
}

/// The OpenAPI document the server serves.
pub fn openapi() -> Document {
    api_router().split_for_parts().1
}
