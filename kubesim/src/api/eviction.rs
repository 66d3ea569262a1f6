//! `POST /api/v1/namespaces/{ns}/pods/{name}/eviction` (policy/v1 Eviction) and kubesim's
//! `POST /kubesim/preempt/{ns}/{name}`; both in `crate::disruption`.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{json, Value};

use super::{json_response, respond, AppState};
use crate::disruption;
use crate::error::Status;

pub const PREEMPT_PATH: &str = "/kubesim/preempt/{ns}/{name}";

/// The eviction subresource: 201 with a `Success` Status, as eviction.go answers.
pub async fn evict(
    State(state): State<AppState>,
    Path((ns, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    respond(evict_impl(&state, &ns, &name, &body))
}

fn evict_impl(state: &AppState, ns: &str, name: &str, body: &[u8]) -> Result<Response, Status> {
    let eviction: Value = if body.is_empty() {
        json!({})
    } else {
        serde_json::from_slice(body)
            .map_err(|e| Status::bad_request(format!("invalid Eviction: {e}")))?
    };
    if let Some(given) = eviction.pointer("/metadata/name").and_then(Value::as_str) {
        if given != name {
            return Err(Status::bad_request(
                "name in URL does not match name in Eviction object",
            ));
        }
    }
    let grace = eviction
        .pointer("/deleteOptions/gracePeriodSeconds")
        .and_then(Value::as_i64);
    disruption::disrupt(
        &state.store,
        ns,
        name,
        disruption::EVICTION_BY_API,
        disruption::EVICTION_MESSAGE,
        grace,
    )?;
    Ok(json_response(
        StatusCode::CREATED,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}),
    ))
}

/// Preempts a pod as the scheduler would (kubesim has no priorities to decide it itself).
pub async fn preempt(
    State(state): State<AppState>,
    Path((ns, name)): Path<(String, String)>,
) -> Response {
    respond(disruption::preempt(&state.store, &ns, &name).map(|()| {
        json_response(
            StatusCode::OK,
            &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}),
        )
    }))
}
