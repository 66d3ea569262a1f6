//! The fault-injection admin endpoint, served on kubesim's listener outside the Kubernetes API
//! paths and outside the fault layer (a fault never blocks its own removal):
//!
//! - `POST /kubesim/faults` with a [`Fault`] (JSON) puts it in force: 201 with its id;
//! - `GET /kubesim/faults` lists the faults in force;
//! - `DELETE /kubesim/faults` ends them all, `DELETE /kubesim/faults/{id}` one.
//!
//! Refused input is a 422 naming the field; it changes nothing.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AppState;
use crate::faults::Fault;

pub const FAULTS_PATH: &str = "/kubesim/faults";

fn invalid(message: String) -> Response {
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        axum::Json(json!({ "error": message })),
    )
        .into_response()
}

pub async fn add_fault(State(state): State<AppState>, body: Bytes) -> Response {
    let mut de = serde_json::Deserializer::from_slice(&body);
    let fault: Fault = match serde_path_to_error::deserialize(&mut de) {
        Ok(fault) => fault,
        Err(e) => return invalid(format!("{}: {}", e.path(), e.inner())),
    };
    match state.faults.add(fault) {
        Ok(id) => {
            tracing::info!(id, "fault injected through the admin endpoint");
            (StatusCode::CREATED, axum::Json(json!({ "id": id }))).into_response()
        }
        Err(message) => invalid(message),
    }
}

pub async fn list_faults(State(state): State<AppState>) -> Response {
    axum::Json(json!({ "faults": state.faults.list() })).into_response()
}

pub async fn clear_faults(State(state): State<AppState>) -> Response {
    state.faults.clear();
    StatusCode::NO_CONTENT.into_response()
}

pub async fn remove_fault(State(state): State<AppState>, Path(id): Path<u64>) -> Response {
    if state.faults.remove(id) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        (
            StatusCode::NOT_FOUND,
            axum::Json(json!({ "error": format!("no fault {id}") })),
        )
            .into_response()
    }
}
