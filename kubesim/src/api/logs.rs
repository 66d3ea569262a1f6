//! `GET pods/{name}/log`: picks the container instance (`container`, `previous`) and streams its
//! log with `follow`, `tailLines`, `limitBytes`, `sinceSeconds`/`sinceTime` and `timestamps`,
//! answering the errors a real kubelet/API server gives for pods that have not started.
//!
//! A pod not yet bound to a node gets an empty `200`: the API server has no kubelet to ask and
//! streams an empty body (kubernetes/kubernetes `pkg/registry/core/pod/strategy.go`,
//! `LogLocation`: "If pod has not been assigned a host, return an empty location", and
//! `pkg/registry/core/pod/rest/log.go` streams nothing for a nil location). A bound pod whose
//! container has not started gets the kubelet's 400 "is waiting to start".

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query as AxQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::core::v1::Pod;
use tokio::sync::mpsc;

use super::{flag, AppState, Query};
use crate::error::Status;
use crate::logs::ReadOptions;

fn pick_container(pod: &Pod, name: &str, asked: Option<&String>) -> Result<String, Status> {
    let names: Vec<String> = pod
        .spec
        .as_ref()
        .map(|s| s.containers.iter().map(|c| c.name.clone()).collect())
        .unwrap_or_default();
    match asked.filter(|c| !c.is_empty()) {
        Some(c) if names.contains(c) => Ok(c.clone()),
        Some(c) => Err(Status::bad_request(format!(
            "container {c} is not valid for pod {name}"
        ))),
        None if names.len() == 1 => Ok(names[0].clone()),
        None => Err(Status::bad_request(format!(
            "a container name must be specified for pod {name}, choose one of: [{}]",
            names.join(" ")
        ))),
    }
}

async fn log_impl(state: AppState, ns: String, name: String, q: Query) -> Result<Response, Status> {
    state
        .faults
        .state
        .log_requests
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let pod = state
        .store
        .get::<Pod>(&ns, &name)
        .ok_or_else(|| Status::not_found("pods", &name))?;
    let container = pick_container(&pod, &name, q.get("container"))?;
    let unscheduled = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .is_none_or(str::is_empty);
    if unscheduled {
        return Ok(Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "text/plain")
            .body(Body::empty())
            .unwrap_or_default());
    }
    let cs = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.iter().find(|c| c.name == container).cloned());
    let restart = cs.as_ref().map(|c| c.restart_count).unwrap_or(0);
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    // A container waiting to restart (CrashLoopBackOff) serves its last terminated instance,
    // as the kubelet does (pkg/kubelet/kubelet_pods.go, validateContainerLogStatus: the
    // lastState.Terminated case comes before the Waiting one).
    let backing_off = cs.as_ref().is_some_and(|c| {
        c.state.as_ref().is_some_and(|s| s.waiting.is_some())
            && c.last_state
                .as_ref()
                .is_some_and(|s| s.terminated.is_some())
    });
    let instance = if flag(&q, "previous") {
        if restart == 0 {
            return Err(Status::bad_request(format!(
                "previous terminated container \"{container}\" in pod \"{name}\" not found"
            )));
        }
        restart - 1
    } else if backing_off && restart > 0 {
        restart - 1
    } else {
        restart
    };
    let Some(buf) = state.logs.get(&(uid, container.clone(), instance)) else {
        // A container that ran but whose log is gone was garbage-collected with its pod (the
        // kubelet answers 400 with the runtime's error).
        let ran = cs
            .as_ref()
            .and_then(|c| c.state.as_ref())
            .is_some_and(|s| s.terminated.is_some() || s.running.is_some());
        if ran {
            let id = cs
                .as_ref()
                .and_then(|c| c.container_id.clone())
                .unwrap_or_default();
            return Err(Status::bad_request(format!(
                "unable to retrieve container logs for {id}"
            )));
        }
        let reason = cs
            .and_then(|c| c.state)
            .and_then(|s| s.waiting)
            .and_then(|w| w.reason)
            .unwrap_or_else(|| "ContainerCreating".into());
        return Err(Status::bad_request(format!(
            "container \"{container}\" in pod \"{name}\" is waiting to start: {reason}"
        )));
    };
    let num = |k: &str| -> Result<Option<u64>, Status> {
        match q.get(k) {
            None => Ok(None),
            Some(v) => v
                .parse::<i64>()
                .ok()
                .filter(|n| *n >= 0)
                .map(|n| Some(n as u64))
                .ok_or_else(|| {
                    Status::invalid(
                        "PodLogOptions",
                        "",
                        "",
                        vec![crate::error::Cause::invalid(
                            k,
                            v,
                            "must be greater than or equal to 0",
                        )],
                    )
                }),
        }
    };
    let since = match (num("sinceSeconds")?, q.get("sinceTime")) {
        (Some(s), _) => Some(chrono::Utc::now() - chrono::Duration::seconds(s as i64)),
        (None, Some(t)) => chrono::DateTime::parse_from_rfc3339(t)
            .ok()
            .map(|t| t.with_timezone(&chrono::Utc)),
        _ => None,
    };
    let opts = ReadOptions {
        follow: flag(&q, "follow"),
        tail_lines: num("tailLines")?,
        limit_bytes: num("limitBytes")?,
        since,
        timestamps: flag(&q, "timestamps"),
    };
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    let shutdown = state.shutdown.clone();
    let mut cut = state.faults.state.cut_logs.subscribe();
    let mut stall = state.faults.state.stall_logs.subscribe();
    tokio::spawn(async move {
        let held = tx.clone();
        tokio::select! {
            _ = buf.stream(opts, tx) => {},
            _ = shutdown.cancelled() => {},
            // Injected faults (see `Faults::cut_log_streams` / `stall_log_streams`).
            _ = cut.changed() => {},
            _ = stall.changed() => {
                // Silent but open until the client gives up (or the simulator stops).
                tokio::select! {
                    _ = held.closed() => {},
                    _ = shutdown.cancelled() => {},
                }
            },
        }
    });
    // Injected stream cuts and stalls apply to log streams as to watches.
    let stream = state.faults.guard_stream(rx);
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "text/plain")
        .body(Body::from_stream(stream))
        .unwrap_or_default())
}

pub async fn pod_log(
    State(state): State<AppState>,
    Path((ns, name)): Path<(String, String)>,
    AxQuery(q): AxQuery<Query>,
) -> Response {
    log_impl(state, ns, name, q)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}
