//! The OpenAPI 3.1 document (generated from the handlers by utoipa), served at `/openapi.json`,
//! with a readable API page at `/docs`: Swagger UI, whose files are compiled into the binary
//! (utoipa-swagger-ui's `vendored` feature), so the page works on a cluster without internet.

use super::{events, health, hooks, logs, runs, tasks, tokens, triggers, AppState};
use axum::routing::get;
use axum::{Json, Router};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::OpenApi as Document;
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use utoipa_swagger_ui::{Config, SwaggerUi};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "vfi-orchestrator",
        description = "Runs batch tasks as Kubernetes Jobs from a REST API, with run history in PostgreSQL. \
            Errors are RFC 9457 problem+json documents naming the field at fault. \
            Every /v1 operation needs a bearer token whose scope (read, run or admin; each includes the ones before) \
            is named in its security requirement; webhook deliveries are authenticated by their signature instead.",
    ),
    modifiers(&BearerScheme),
    tags(
        (name = "tasks", description = "Named, reusable run definitions"),
        (name = "runs", description = "Executions: each run is exactly one Kubernetes Job"),
        (name = "triggers", description = "Webhook triggers: Git pushes start runs"),
        (name = "tokens", description = "API tokens"),
        (name = "events", description = "Live run and task changes (Server-Sent Events)"),
        (name = "health", description = "Probes"),
    )
)]
struct ApiDoc;

/// Declares the `bearer` scheme that operations' security requirements name.
struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, openapi: &mut Document) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let mut bearer = Http::new(HttpAuthScheme::Bearer);
        bearer.description = Some(
            "An API token (`vfi-orchestrator token create`, or POST /v1/tokens); the scopes in an operation's requirement name the least scope it needs".into(),
        );
        components.add_security_scheme("bearer", SecurityScheme::Http(bearer));
    }
}

pub(super) fn api_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(tasks::list_tasks))
        .routes(routes!(
            tasks::put_task,
            tasks::get_task,
            tasks::delete_task
        ))
        .routes(routes!(tasks::backfill))
        .routes(routes!(runs::start_task_run))
        .routes(routes!(runs::create_run, runs::list_runs))
        .routes(routes!(runs::get_run))
        .routes(routes!(runs::cancel_run))
        .routes(routes!(runs::rerun))
        .routes(routes!(runs::list_pods))
        .routes(routes!(runs::history))
        .routes(routes!(logs::run_logs))
        .routes(routes!(triggers::list_triggers))
        .routes(routes!(
            triggers::put_trigger,
            triggers::get_trigger,
            triggers::delete_trigger
        ))
        .routes(routes!(hooks::receive))
        .routes(routes!(tokens::post_token, tokens::list_tokens))
        .routes(routes!(tokens::delete_token))
        .routes(routes!(events::events))
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
}

pub(super) fn docs_router(doc: Document) -> Router<AppState> {
    let json = doc.clone();
    Router::new()
        .route("/openapi.json", get(move || async move { Json(json) }))
        .merge(
            // The validator would send the document to swagger.io: "none" keeps the page offline.
            SwaggerUi::new("/docs").config(Config::new(["/openapi.json"]).validator_url("none")),
        )
}

/// The OpenAPI document the server serves.
pub fn openapi() -> Document {
    api_router().split_for_parts().1
}
