//! The `kueue.x-k8s.io/v1beta1` API when the Kueue switch is on (the Workload CRD: create, get,
//! list, watch, patch, delete, as for any custom resource; status written by the simulated
//! Kueue), its discovery documents, and
//! kubesim's admission endpoints, served outside the Kubernetes API paths like the fault admin:
//!
//! - `POST /kubesim/kueue/admit/{ns}/{workload}`: admit the Workload, as Kueue's scheduler does
//!   once quota is reserved (200 with the Workload);
//! - `POST /kubesim/kueue/evict/{ns}/{workload}`: evict it, as preemption does.
//!
//! `PATCH .../workloads/{name}/status` (merge, JSON or strategic) changes only the status, as
//! the CRD's status subresource does: an external admitter can write `Admitted` True
//! (`kubectl patch workload NAME --subresource=status --type=merge -p ...`) and kubesim's Kueue
//! runs the Job as after its own admission.
//!
//! With the switch off these paths do not exist (404), as on a cluster without Kueue.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};

use super::kinds::to_json;
use super::{content_type, delete, json_response, list, resources as r, respond, AppState};
use crate::error::Status;
use crate::kueue::{self, Workload};
use crate::patch::{self, PatchKind};

pub const ADMIT_PATH: &str = "/kubesim/kueue/admit/{ns}/{name}";
pub const EVICT_PATH: &str = "/kubesim/kueue/evict/{ns}/{name}";

pub fn group_doc() -> serde_json::Value {
    json!({
        "name": kueue::GROUP,
        "versions": [{"groupVersion": kueue::API_VERSION, "version": "v1beta1"}],
        "preferredVersion": {"groupVersion": kueue::API_VERSION, "version": "v1beta1"}
    })
}

async fn group() -> Response {
    let mut g = group_doc();
    g["kind"] = json!("APIGroup");
    g["apiVersion"] = json!("v1");
    json_response(StatusCode::OK, &g)
}

async fn v1beta1() -> Response {
    json_response(
        StatusCode::OK,
        &json!({
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": kueue::API_VERSION,
            "resources": [
                {"name": "workloads", "singularName": "workload", "namespaced": true, "kind": "Workload",
                 "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
                 "shortNames": ["wl"], "categories": ["kueue"]},
                {"name": "workloads/status", "singularName": "", "namespaced": true, "kind": "Workload", "verbs": ["get", "patch"]}
            ]
        }),
    )
}

/// The Workload API, added to the Kubernetes API routes (inside the fault and RBAC layers).
pub fn api_routes(router: Router<AppState>) -> Router<AppState> {
    router
        .route("/apis/kueue.x-k8s.io", get(group))
        .route("/apis/kueue.x-k8s.io/v1beta1", get(v1beta1))
        .route(
            "/apis/kueue.x-k8s.io/v1beta1/workloads",
            get(list::list_all::<Workload>),
        )
        .route(
            "/apis/kueue.x-k8s.io/v1beta1/namespaces/{ns}/workloads",
            get(list::list_ns::<Workload>)
                .post(r::create::<Workload>)
                .delete(delete::delete_collection::<Workload>),
        )
        .route(
            "/apis/kueue.x-k8s.io/v1beta1/namespaces/{ns}/workloads/{name}",
            get(r::get_one::<Workload>)
                .delete(delete::delete_one::<Workload>)
                .patch(r::patch_one::<Workload>)
                .put(r::replace_one::<Workload>),
        )
        .route(
            "/apis/kueue.x-k8s.io/v1beta1/namespaces/{ns}/workloads/{name}/status",
            get(r::get_one::<Workload>)
                .patch(patch_status)
                .put(r::status_write_refused),
        )
}

async fn patch_status(
    State(state): State<AppState>,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    respond(patch_status_impl(&state, &ns, &name, &headers, &body))
}

fn patch_status_impl(
    state: &AppState,
    ns: &str,
    name: &str,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, Status> {
    let ct = content_type(headers);
    let kind =
        PatchKind::from_content_type(&ct).ok_or_else(|| Status::unsupported_media_type(&ct))?;
    let p: Value = serde_json::from_slice(body)
        .map_err(|e| Status::bad_request(format!("error decoding patch: {e}")))?;
    let wl = state
        .store
        .update::<Workload>(ns, name, |cur| {
            let patched = patch::apply(kind, &to_json(cur), &p)?;
            cur.status = patched.get("status").cloned().filter(|s| !s.is_null());
            Ok(())
        })?
        .ok_or_else(|| Status::not_found("workloads.kueue.x-k8s.io", name))?;
    Ok(json_response(StatusCode::OK, &to_json(wl.as_ref())))
}

/// `kueue::admit` or `kueue::evict`.
type AdmissionStep = fn(
    &crate::store::Store,
    &kueue::KueueConfig,
    &str,
    &str,
) -> Result<std::sync::Arc<Workload>, Status>;

fn admission(state: &AppState, ns: &str, name: &str, f: AdmissionStep) -> Result<Response, Status> {
    let cfg = state
        .behaviour
        .kueue
        .as_ref()
        .ok_or_else(|| Status::not_found("workloads.kueue.x-k8s.io", name))?;
    let wl = f(&state.store, cfg, ns, name)?;
    Ok(json_response(StatusCode::OK, &to_json(wl.as_ref())))
}

async fn admit(
    State(state): State<AppState>,
    Path((ns, name)): Path<(String, String)>,
) -> Response {
    respond(admission(&state, &ns, &name, kueue::admit))
}

async fn evict(
    State(state): State<AppState>,
    Path((ns, name)): Path<(String, String)>,
) -> Response {
    respond(admission(&state, &ns, &name, kueue::evict))
}

/// kubesim's admission endpoints (outside the fault and RBAC layers).
pub fn admin_routes(router: Router<AppState>) -> Router<AppState> {
    router
        .route(ADMIT_PATH, post(admit))
        .route(EVICT_PATH, post(evict))
}
