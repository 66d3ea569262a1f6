//! Discovery documents: `/version`, `/api`, `/apis`, `/api/v1`, `/apis/batch/v1`. Served as
//! plain `application/json` so kubectl's aggregated-discovery request falls back to the legacy
//! documents, as it does against a server without aggregated discovery.

use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::json;

use axum::extract::State;

use super::{json_response, AppState};

pub async fn ok() -> &'static str {
    "ok"
}

pub async fn version() -> Response {
    json_response(
        StatusCode::OK,
        &json!({
            "major": "1",
            "minor": "33",
            "gitVersion": "v1.33.0",
            "gitCommit": "60a317eadfcb839692a68eab88b2096f4d708f4f",
            "gitTreeState": "clean",
            "buildDate": "2025-04-23T13:00:00Z",
            "goVersion": "go1.24.2",
            "compiler": "gc",
            "platform": "linux/amd64"
        }),
    )
}

pub async fn api_versions(headers: HeaderMap) -> Response {
    let host = headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1")
        .to_string();
    json_response(
        StatusCode::OK,
        &json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": host}]
        }),
    )
}

fn batch_group_doc() -> serde_json::Value {
    json!({
        "name": "batch",
        "versions": [{"groupVersion": "batch/v1", "version": "v1"}],
        "preferredVersion": {"groupVersion": "batch/v1", "version": "v1"}
    })
}

fn events_group_doc() -> serde_json::Value {
    json!({
        "name": "events.k8s.io",
        "versions": [{"groupVersion": "events.k8s.io/v1", "version": "v1"}],
        "preferredVersion": {"groupVersion": "events.k8s.io/v1", "version": "v1"}
    })
}

/// `/apis`: batch and events.k8s.io, plus kueue.x-k8s.io when the Kueue switch is on.
pub async fn api_groups(State(state): State<AppState>) -> Response {
    let mut groups = vec![batch_group_doc(), events_group_doc()];
    if state.behaviour.kueue.is_some() {
        groups.push(super::kueue::group_doc());
    }
    json_response(
        StatusCode::OK,
        &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}),
    )
}

pub async fn events_group() -> Response {
    let mut g = events_group_doc();
    g["kind"] = json!("APIGroup");
    g["apiVersion"] = json!("v1");
    json_response(StatusCode::OK, &g)
}

pub async fn events_v1() -> Response {
    json_response(
        StatusCode::OK,
        &json!({
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": "events.k8s.io/v1",
            "resources": [
                {"name": "events", "singularName": "event", "namespaced": true, "kind": "Event",
                 "verbs": ["create", "get", "list", "watch"], "shortNames": ["ev"],
                 "storageVersionHash": "r2yiGXH7wu8="}
            ]
        }),
    )
}

pub async fn batch_group() -> Response {
    let mut g = batch_group_doc();
    g["kind"] = json!("APIGroup");
    g["apiVersion"] = json!("v1");
    json_response(StatusCode::OK, &g)
}

pub async fn core_v1() -> Response {
    json_response(
        StatusCode::OK,
        &json!({
            "kind": "APIResourceList",
            "groupVersion": "v1",
            "resources": [
                {"name": "configmaps", "singularName": "configmap", "namespaced": true, "kind": "ConfigMap",
                 "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
                 "shortNames": ["cm"], "storageVersionHash": "qFsyl6wFWjQ="},
                {"name": "events", "singularName": "event", "namespaced": true, "kind": "Event",
                 "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
                 "shortNames": ["ev"], "storageVersionHash": "r2yiGXH7wu8="},
                {"name": "namespaces", "singularName": "namespace", "namespaced": false, "kind": "Namespace",
                 "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"], "shortNames": ["ns"],
                 "storageVersionHash": "Q3oi5N2YM8M="},
                {"name": "persistentvolumeclaims", "singularName": "persistentvolumeclaim", "namespaced": true,
                 "kind": "PersistentVolumeClaim",
                 "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
                 "shortNames": ["pvc"], "storageVersionHash": "QWTyNDq0dC4="},
                {"name": "persistentvolumeclaims/status", "singularName": "", "namespaced": true,
                 "kind": "PersistentVolumeClaim", "verbs": ["get"]},
                {"name": "pods", "singularName": "pod", "namespaced": true, "kind": "Pod",
                 "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
                 "shortNames": ["po"], "categories": ["all"], "storageVersionHash": "xPOwRZ+Yhw8="},
                {"name": "pods/log", "singularName": "", "namespaced": true, "kind": "Pod", "verbs": ["get"]},
                {"name": "pods/status", "singularName": "", "namespaced": true, "kind": "Pod", "verbs": ["get"]},
                {"name": "secrets", "singularName": "secret", "namespaced": true, "kind": "Secret",
                 "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
                 "storageVersionHash": "S6u1pOWzb84="}
            ]
        }),
    )
}

pub async fn batch_v1() -> Response {
    json_response(
        StatusCode::OK,
        &json!({
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": "batch/v1",
            "resources": [
                {"name": "jobs", "singularName": "job", "namespaced": true, "kind": "Job",
                 "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
                 "categories": ["all"], "storageVersionHash": "mudhfqk/qZY="},
                {"name": "jobs/status", "singularName": "", "namespaced": true, "kind": "Job", "verbs": ["get"]}
            ]
        }),
    )
}

/// `/openapi/v3`: the index of group-version documents, as the real server serves it.
pub async fn openapi_v3_root() -> Response {
    json_response(
        StatusCode::OK,
        &json!({"paths": {
            "api/v1": {"serverRelativeURL": "/openapi/v3/api/v1?hash=KUBESIM0001"},
            "apis/batch/v1": {"serverRelativeURL": "/openapi/v3/apis/batch/v1?hash=KUBESIM0001"}
        }}),
    )
}

/// A PATCH operation with the query parameters kubectl probes for (`fieldValidation`,
/// `dryRun`) and the GVK extension it matches on.
fn patch_op(group: &str, version: &str, kind: &str) -> serde_json::Value {
    let qp = |name: &str| json!({"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": true}});
    json!({
        "patch": {
            "operationId": format!("patch{kind}"),
            "parameters": [qp("dryRun"), qp("fieldManager"), qp("fieldValidation"), qp("force")],
            "responses": {"200": {"description": "OK"}},
            "x-kubernetes-action": "patch",
            "x-kubernetes-group-version-kind": {"group": group, "kind": kind, "version": version}
        }
    })
}

fn openapi_doc(paths: serde_json::Value) -> Response {
    json_response(
        StatusCode::OK,
        &json!({
            "openapi": "3.0.0",
            "info": {"title": "Kubernetes", "version": "v1.33.0"},
            "paths": paths,
            "components": {"schemas": {}}
        }),
    )
}

/// `/openapi/v3/api/v1`: just enough for kubectl's server-side field validation probe.
pub async fn openapi_v3_core() -> Response {
    openapi_doc(json!({
        "/api/v1/namespaces/{namespace}/pods/{name}": patch_op("", "v1", "Pod"),
        "/api/v1/namespaces/{name}": patch_op("", "v1", "Namespace"),
        "/api/v1/namespaces/{namespace}/secrets/{name}": patch_op("", "v1", "Secret"),
        "/api/v1/namespaces/{namespace}/configmaps/{name}": patch_op("", "v1", "ConfigMap"),
        "/api/v1/namespaces/{namespace}/persistentvolumeclaims/{name}": patch_op("", "v1", "PersistentVolumeClaim"),
    }))
}

/// `/openapi/v3/apis/batch/v1`
pub async fn openapi_v3_batch() -> Response {
    openapi_doc(json!({
        "/apis/batch/v1/namespaces/{namespace}/jobs/{name}": patch_op("batch", "v1", "Job"),
    }))
}
