//! The HTTP API server (axum): routes for discovery, Jobs, Pods (with `log`), Namespaces, Events,
//! Secrets, ConfigMaps, PersistentVolumeClaims,
//! Kueue's Workloads when that switch is on (`kueue`), the fault-injection middleware, and the request plumbing shared by the handlers (query
//! parameters, content negotiation, body decoding). Handlers only read and write the store;
//! controllers act on what they write.
//!
//! Handlers over the stored kinds: `resources` (get, create, replace, patch), `list` (with
//! `watch`), `delete`; their per-kind rules are in `kinds`, list selection in `filter`. Arrows
//! point one way: list -> watch -> kinds/filter; resources and delete -> kinds (delete also
//! filter); kinds -> tables and this module's plumbing.

pub mod admin;
pub mod config_kinds;
pub mod delete;
pub mod discovery;
pub mod events_v1;
pub mod eviction;
pub mod filter;
pub mod kinds;
pub mod kueue;
pub mod list;
pub mod logs;
pub mod protobuf;
pub mod rbac;
pub mod resources;
pub mod tables;
pub mod watch;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Namespace, PersistentVolumeClaim, Pod, Secret};
use tokio_util::sync::CancellationToken;

use crate::error::Status;
use crate::faults::Faults;
use crate::logs::Logs;
use crate::store::Store;

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<Store>,
    pub logs: Arc<Logs>,
    pub faults: Faults,
    pub shutdown: CancellationToken,
    /// How often watches with allowWatchBookmarks get a BOOKMARK.
    pub bookmark_interval: Duration,
    /// RBAC mode: authentication and authorization of every request (None: all allowed).
    pub rbac: Option<Arc<crate::rbac::Rbac>>,
    /// Admission and the other switchable cluster behaviours.
    pub behaviour: Arc<crate::behaviour::Behaviour>,
}

/// Query parameters as a map (the API server accepts many, each handler picks its own).
pub type Query = HashMap<String, String>;

pub fn flag(q: &Query, key: &str) -> bool {
    matches!(
        q.get(key).map(String::as_str),
        Some("1") | Some("true") | Some("True")
    )
}

/// True when the client asked for meta.k8s.io Table output.
pub fn wants_table(headers: &HeaderMap) -> bool {
    headers
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.split(',').any(|part| part.contains("as=Table")))
}

/// True when the client asked for meta.k8s.io PartialObjectMetadata (kube-rs
/// `list_metadata` / `metadata_watcher`).
pub fn wants_metadata(headers: &HeaderMap) -> bool {
    headers
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| {
            a.split(',')
                .next()
                .is_some_and(|first| first.contains("as=PartialObjectMetadata"))
        })
}

/// The object reduced to PartialObjectMetadata.
pub fn partial_metadata(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> serde_json::Value {
    serde_json::json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": meta,
    })
}

/// The real server answers JSON whenever the Accept header allows it (kubectl lists
/// `application/json` after protobuf); only an Accept that excludes JSON is refused.
pub fn check_accept(headers: &HeaderMap) -> Result<(), Status> {
    let Some(accept) = headers.get("accept").and_then(|v| v.to_str().ok()) else {
        return Ok(());
    };
    let ok = accept.split(',').any(|p| {
        let base = p.split(';').next().unwrap_or("").trim();
        base.is_empty()
            || base == "*/*"
            || base == "application/*"
            || base == "application/json"
            || base.starts_with("application/json")
    });
    if ok {
        Ok(())
    } else {
        Err(Status::new(
            406,
            "NotAcceptable",
            format!("only the following media types are accepted: application/json, application/yaml, application/vnd.kubernetes.protobuf (asked for {accept})"),
        ))
    }
}

pub fn content_type(headers: &HeaderMap) -> String {
    headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_string()
}

pub fn json_response(code: axum::http::StatusCode, v: &serde_json::Value) -> Response {
    let body = serde_json::to_vec(v).unwrap_or_default();
    (
        code,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

/// The handler's response, or its error as a Status.
pub fn respond(r: Result<Response, Status>) -> Response {
    r.unwrap_or_else(IntoResponse::into_response)
}

/// Decodes a JSON body into `T`, answering 400/415 like the real server.
pub fn decode_json<T: serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    body: &Bytes,
    kind: &str,
) -> Result<T, Status> {
    let ct = content_type(headers);
    let base = ct.split(';').next().unwrap_or("").trim();
    if base != "application/json" && base != "*/*" && !base.is_empty() {
        return Err(Status::unsupported_media_type(&ct));
    }
    serde_json::from_slice(body).map_err(|e| {
        Status::bad_request(format!(
            "{kind} in version \"v1\" cannot be handled as a {kind}: {e}"
        ))
    })
}

async fn faults_layer(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let faults = &state.faults;
    let hit = faults.for_request(req.method().as_str(), req.uri().path());
    if hit.outage {
        return Status::from_code(503, None).into_response();
    }
    if let Some((id, until)) = hit.hang {
        tracing::debug!(method = %req.method(), uri = %req.uri(), "request hung by a fault");
        // A held request is carried out when the hang ends even if its client has gone away
        // meanwhile, as a frozen server's write can land late: its own task, not the
        // connection's, so a client disconnect does not cancel it.
        let faults = faults.clone();
        let held = tokio::spawn(async move {
            faults.hang(id, until).await;
            tracing::debug!(method = %req.method(), uri = %req.uri(), "held request carried out");
            after_hang(hit, req, next).await
        });
        return held
            .await
            .unwrap_or_else(|_| Status::from_code(500, None).into_response());
    }
    after_hang(hit, req, next).await
}

async fn after_hang(hit: crate::faults::RequestFaults, req: Request, next: Next) -> Response {
    if !hit.latency.is_zero() {
        tokio::time::sleep(hit.latency).await;
    }
    if let Some((code, retry_after)) = hit.error {
        return Status::from_code(code, retry_after).into_response();
    }
    tracing::debug!(method = %req.method(), uri = %req.uri(), "request");
    next.run(req).await
}

async fn not_found() -> Response {
    Status::new(
        404,
        "NotFound",
        "the server could not find the requested resource",
    )
    .into_response()
}

pub fn router(state: AppState) -> Router {
    use resources as r;
    let kueue_on = state.behaviour.kueue.is_some();
    let api = Router::new()
        .route("/version", get(discovery::version))
        .route("/healthz", get(discovery::ok))
        .route("/livez", get(discovery::ok))
        .route("/readyz", get(discovery::ok))
        .route("/api", get(discovery::api_versions))
        .route("/apis", get(discovery::api_groups))
        .route("/api/v1", get(discovery::core_v1))
        .route("/apis/batch", get(discovery::batch_group))
        .route("/apis/batch/v1", get(discovery::batch_v1))
        .route("/openapi/v3", get(discovery::openapi_v3_root))
        .route("/openapi/v3/api/v1", get(discovery::openapi_v3_core))
        .route(
            "/openapi/v3/apis/batch/v1",
            get(discovery::openapi_v3_batch),
        )
        // Jobs
        .route("/apis/batch/v1/jobs", get(list::list_all::<Job>))
        .route(
            "/apis/batch/v1/namespaces/{ns}/jobs",
            get(list::list_ns::<Job>)
                .post(r::create::<Job>)
                .delete(delete::delete_collection::<Job>),
        )
        .route(
            "/apis/batch/v1/namespaces/{ns}/jobs/{name}",
            get(r::get_one::<Job>)
                .delete(delete::delete_one::<Job>)
                .patch(r::patch_one::<Job>)
                .put(r::replace_one::<Job>),
        )
        .route(
            "/apis/batch/v1/namespaces/{ns}/jobs/{name}/status",
            get(r::get_one::<Job>)
                .patch(r::status_write_refused)
                .put(r::status_write_refused),
        )
        // Pods
        .route("/api/v1/pods", get(list::list_all::<Pod>))
        .route(
            "/api/v1/namespaces/{ns}/pods",
            get(list::list_ns::<Pod>)
                .post(r::create::<Pod>)
                .delete(delete::delete_collection::<Pod>),
        )
        .route(
            "/api/v1/namespaces/{ns}/pods/{name}",
            get(r::get_one::<Pod>)
                .delete(delete::delete_one::<Pod>)
                .patch(r::patch_one::<Pod>)
                .put(r::replace_one::<Pod>),
        )
        .route(
            "/api/v1/namespaces/{ns}/pods/{name}/status",
            get(r::get_one::<Pod>)
                .patch(r::status_write_refused)
                .put(r::status_write_refused),
        )
        .route(
            "/api/v1/namespaces/{ns}/pods/{name}/log",
            get(logs::pod_log),
        )
        // Secrets, ConfigMaps, PersistentVolumeClaims (core/v1)
        .route("/api/v1/secrets", get(list::list_all::<Secret>))
        .route(
            "/api/v1/namespaces/{ns}/secrets",
            get(list::list_ns::<Secret>)
                .post(r::create::<Secret>)
                .delete(delete::delete_collection::<Secret>),
        )
        .route(
            "/api/v1/namespaces/{ns}/secrets/{name}",
            get(r::get_one::<Secret>)
                .delete(delete::delete_one::<Secret>)
                .patch(r::patch_one::<Secret>)
                .put(r::replace_one::<Secret>),
        )
        .route("/api/v1/configmaps", get(list::list_all::<ConfigMap>))
        .route(
            "/api/v1/namespaces/{ns}/configmaps",
            get(list::list_ns::<ConfigMap>)
                .post(r::create::<ConfigMap>)
                .delete(delete::delete_collection::<ConfigMap>),
        )
        .route(
            "/api/v1/namespaces/{ns}/configmaps/{name}",
            get(r::get_one::<ConfigMap>)
                .delete(delete::delete_one::<ConfigMap>)
                .patch(r::patch_one::<ConfigMap>)
                .put(r::replace_one::<ConfigMap>),
        )
        .route(
            "/api/v1/persistentvolumeclaims",
            get(list::list_all::<PersistentVolumeClaim>),
        )
        .route(
            "/api/v1/namespaces/{ns}/persistentvolumeclaims",
            get(list::list_ns::<PersistentVolumeClaim>)
                .post(r::create::<PersistentVolumeClaim>)
                .delete(delete::delete_collection::<PersistentVolumeClaim>),
        )
        .route(
            "/api/v1/namespaces/{ns}/persistentvolumeclaims/{name}",
            get(r::get_one::<PersistentVolumeClaim>)
                .delete(delete::delete_one::<PersistentVolumeClaim>)
                .patch(r::patch_one::<PersistentVolumeClaim>)
                .put(r::replace_one::<PersistentVolumeClaim>),
        )
        .route(
            "/api/v1/namespaces/{ns}/persistentvolumeclaims/{name}/status",
            get(r::get_one::<PersistentVolumeClaim>)
                .patch(r::status_write_refused)
                .put(r::status_write_refused),
        )
        .route(
            "/api/v1/namespaces/{ns}/pods/{name}/eviction",
            axum::routing::post(eviction::evict),
        )
        // Events (core/v1)
        .route("/api/v1/events", get(list::list_all::<Event>))
        .route(
            "/api/v1/namespaces/{ns}/events",
            get(list::list_ns::<Event>)
                .post(r::create::<Event>)
                .delete(delete::delete_collection::<Event>),
        )
        .route(
            "/api/v1/namespaces/{ns}/events/{name}",
            get(r::get_one::<Event>)
                .delete(delete::delete_one::<Event>)
                .patch(r::patch_one::<Event>)
                .put(r::replace_one::<Event>),
        )
        // Events (events.k8s.io/v1, the same objects)
        .route("/apis/events.k8s.io", get(discovery::events_group))
        .route("/apis/events.k8s.io/v1", get(discovery::events_v1))
        .route("/apis/events.k8s.io/v1/events", get(events_v1::list_all))
        .route(
            "/apis/events.k8s.io/v1/namespaces/{ns}/events",
            get(events_v1::list_ns).post(events_v1::create),
        )
        .route(
            "/apis/events.k8s.io/v1/namespaces/{ns}/events/{name}",
            get(events_v1::get_one),
        )
        // Namespaces
        .route(
            "/api/v1/namespaces",
            get(list::list_cluster::<Namespace>).post(r::create_cluster::<Namespace>),
        )
        .route(
            "/api/v1/namespaces/{name}",
            get(r::get_cluster::<Namespace>)
                .patch(r::patch_cluster::<Namespace>)
                .put(r::replace_cluster::<Namespace>)
                .delete(delete::delete_namespace),
        )
        // RBAC and access reviews
        .route(
            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
            axum::routing::post(rbac::self_subject_access_review),
        )
        .route(
            "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/{plural}",
            get(rbac::ns_collection_get).post(rbac::ns_collection_post),
        )
        .route(
            "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/{plural}/{name}",
            get(rbac::ns_item_get)
                .put(rbac::ns_item_put)
                .delete(rbac::ns_item_delete),
        )
        .route(
            "/apis/rbac.authorization.k8s.io/v1/{plural}",
            get(rbac::collection_get).post(rbac::collection_post),
        )
        .route(
            "/apis/rbac.authorization.k8s.io/v1/{plural}/{name}",
            get(rbac::item_get)
                .put(rbac::item_put)
                .delete(rbac::item_delete),
        );
    let api = if kueue_on {
        kueue::api_routes(api)
    } else {
        api
    };
    let app = api
        .fallback(not_found)
        .method_not_allowed_fallback(|| async {
            Status::method_not_allowed(
                "the server does not allow this method on the requested resource",
            )
            .into_response()
        })
        // The real server accepts request bodies up to 3 MiB (axum's default is 2 MiB).
        .layer(axum::extract::DefaultBodyLimit::max(3 * 1024 * 1024))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            rbac::authorize_layer,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), faults_layer))
        // Added after the fault layer, so faults never block their own removal.
        .route(
            admin::FAULTS_PATH,
            get(admin::list_faults)
                .post(admin::add_fault)
                .delete(admin::clear_faults),
        )
        .route(
            &format!("{}/{{id}}", admin::FAULTS_PATH),
            axum::routing::delete(admin::remove_fault),
        )
        .route(
            eviction::PREEMPT_PATH,
            axum::routing::post(eviction::preempt),
        );
    let app = if kueue_on {
        kueue::admin_routes(app)
    } else {
        app
    };
    app.with_state(state)
}
