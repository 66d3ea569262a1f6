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
        .routes(routes!(runs::create_runs))
        .routes(routes!(runs::get_run))
        .routes(routes!(runs::cancel_run))
        .routes(routes!(runs::rerun))
        .routes(routes!(runs::indexes))
        .routes(routes!(runs::list_pods))
        .routes(routes!(runs::history))
        .routes(routes!(runs::deliveries))
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

/// The API's routes and their finished OpenAPI document.
pub(super) fn split() -> (Router<AppState>, Document) {
    let (router, mut doc) = api_router().split_for_parts();
    complete(&mut doc);
    (router, doc)
}

const DNS1123_LABEL: &str = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
const DNS1123_SUBDOMAIN: &str =
    "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$";
const STATUS: &str = "(queued|creating|admitting|pending|running|succeeded|failed|cancelled|lost)";

/// States in the document what the server enforces for every operation alike, which the
/// handlers' annotations do not repeat one by one: the refusals any operation may answer (400
/// for a malformed parameter, header or body; 413 and 415 for bodies; 429 for the per-token
/// and per-trigger rate limits) and the limits on parameters (DNS-1123 names, run ids, page
/// sizes, status lists, the Idempotency-Key). schemathesis (`scripts/schemathesis`) checks the
/// result against the server.
fn complete(doc: &mut Document) {
    refuse_unknown_task_fields(doc);
    refuse_unknown_volume_kinds(doc);
    for (path, item) in doc.paths.paths.iter_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ];
        for operation in operations.into_iter().flatten() {
            complete_operation(path, operation);
        }
    }
}

/// A `Volume` is read through a catch-all so that an unsupported kind is refused naming
/// `volumes[i]` (src/domain/template/volumes.rs), which hides from utoipa that no other key is
/// accepted: say it here.
fn refuse_unknown_volume_kinds(doc: &mut Document) {
    use utoipa::openapi::schema::{AdditionalProperties, Schema};
    use utoipa::openapi::RefOr;
    let schemas = doc.components.as_mut().map(|c| &mut c.schemas);
    if let Some(RefOr::T(Schema::Object(volume))) = schemas.and_then(|s| s.get_mut("Volume")) {
        volume.additional_properties = Some(Box::new(AdditionalProperties::FreeForm(false)));
    }
}

/// `TaskSpec` flattens `ScheduleSpec` (an `allOf` in the document) and the server refuses
/// unknown fields of either; JSON Schema 2020-12 says that across an `allOf` with
/// `unevaluatedProperties: false`, which utoipa cannot derive.
fn refuse_unknown_task_fields(doc: &mut Document) {
    use utoipa::openapi::{extensions::Extensions, schema::Schema, RefOr};
    let schemas = doc.components.as_mut().map(|c| &mut c.schemas);
    if let Some(RefOr::T(Schema::AllOf(all))) = schemas.and_then(|s| s.get_mut("TaskSpec")) {
        all.extensions
            .get_or_insert_with(Default::default)
            .merge(Extensions::from_iter([("unevaluatedProperties", false)]));
    }
}

/// A piece of the document written as JSON.
fn piece<T: serde::de::DeserializeOwned>(json: serde_json::Value) -> T {
    serde_json::from_value(json).expect("a valid OpenAPI piece")
}

fn complete_operation(path: &str, operation: &mut utoipa::openapi::path::Operation) {
    use serde_json::json;
    use utoipa::openapi::{RefOr, Response};
    let has_parameters = operation.parameters.as_ref().is_some_and(|p| !p.is_empty());
    let has_body = operation.request_body.is_some();
    let webhook = path.starts_with("/v1/hooks/");
    let rate_limited = webhook || operation.security.as_ref().is_some_and(|s| !s.is_empty());
    for parameter in operation.parameters.iter_mut().flatten() {
        constrain(path, parameter);
    }
    let problem = |description: &str| -> RefOr<Response> {
        piece(json!({
            "description": description,
            "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }))
    };
    let responses = &mut operation.responses.responses;
    if has_parameters || has_body {
        responses
            .entry("400".into())
            .or_insert_with(|| problem("A malformed parameter, header or body"));
    }
    if has_body {
        responses
            .entry("413".into())
            .or_insert_with(|| problem("The body is larger than the server accepts"));
        if !webhook {
            responses
                .entry("415".into())
                .or_insert_with(|| problem("The body is not application/json"));
        }
    }
    if rate_limited {
        const RATE_LIMITED: &str =
            "Too many requests from this token (or to this trigger): retry after `Retry-After` seconds";
        let retry_after: utoipa::openapi::header::Header =
            piece(json!({"schema": {"type": "integer", "minimum": 0}}));
        match responses
            .entry("429".into())
            .or_insert_with(|| problem(RATE_LIMITED))
        {
            // An operation's own 429 (a queue or run cap) keeps its text; the rate limit is
            // answered on every operation alike, so it is named beside it.
            RefOr::T(response) => {
                if response.description != RATE_LIMITED {
                    response.description = format!(
                        "{}; or too many requests{}",
                        response.description,
                        RATE_LIMITED.trim_start_matches("Too many requests")
                    );
                }
                response
                    .headers
                    .entry("Retry-After".into())
                    .or_insert(retry_after);
            }
            RefOr::Ref(_) => {}
        }
    }
}

/// The limits the server enforces on a parameter, by where it is and its name.
fn constrain(path: &str, parameter: &mut utoipa::openapi::path::Parameter) {
    use serde_json::json;
    use utoipa::openapi::path::ParameterIn;
    let place = match parameter.parameter_in {
        ParameterIn::Path => "path",
        ParameterIn::Query => "query",
        ParameterIn::Header => "header",
        ParameterIn::Cookie => "cookie",
    };
    let limits = match (place, parameter.name.as_str()) {
        ("path", "name") | ("query", "task") => json!({
            "type": "string", "pattern": DNS1123_LABEL, "minLength": 1,
            "maxLength": crate::domain::task::MAX_TASK_NAME,
        }),
        ("path", "trigger") => json!({
            "type": "string", "pattern": DNS1123_LABEL, "minLength": 1, "maxLength": 63,
        }),
        ("path", "id") => json!({"type": "string", "format": "uuid"}),
        ("query", "limit") if path != "/v1/runs/{id}/logs" => {
            json!({"type": "integer", "format": "int64", "minimum": 1, "maximum": super::pagination::MAX_LIMIT})
        }
        ("query", "status") => json!({
            "type": "string", "pattern": format!("^{STATUS}(,{STATUS})*$"),
        }),
        ("query", "pod") => json!({
            "type": "string", "pattern": DNS1123_SUBDOMAIN, "minLength": 1, "maxLength": 253,
        }),
        ("query", "tail") => json!({"type": "integer", "format": "int64", "minimum": 0}),
        ("query", "limitBytes") => json!({"type": "integer", "format": "int64", "minimum": 1}),
        ("query", "since") => json!({"type": "string", "format": "date-time"}),
        ("header", "Idempotency-Key") => json!({
            "type": "string", "pattern": "^[!-~]{1,255}$", "minLength": 1, "maxLength": 255,
        }),
        _ => return,
    };
    parameter.schema = Some(piece(limits));
}

pub(super) fn docs_router(doc: Document) -> Router<AppState> {
    Router::new()
        .route("/openapi.json", get(move || async move { Json(doc) }))
        .merge(
            // The validator would send the document to swagger.io: "none" keeps the page offline.
            SwaggerUi::new("/docs").config(Config::new(["/openapi.json"]).validator_url("none")),
        )
}

/// The OpenAPI document the server serves.
pub fn openapi() -> Document {
    split().1
}
