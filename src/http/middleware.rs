//! Cross-cutting layers: request ids, tracing spans, panics and timeouts as problem+json, body
//! limits, and logging of server-side error chains inside the request's span.

use super::problem::{ErrorChain, Problem};
use super::Limits;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use std::time::{Duration, Instant};
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

pub fn wrap(app: Router, limits: &Limits) -> Router {
    let timeout = limits.request_timeout;
    app.layer(
        ServiceBuilder::new()
            .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
            .layer(
                TraceLayer::new_for_http().make_span_with(|request: &Request| {
                    let request_id = request
                        .headers()
                        .get("x-request-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    tracing::info_span!(
                        "request",
                        method = %request.method(),
                        path = %request.uri().path(),
                        request_id,
                    )
                }),
            )
            .layer(PropagateRequestIdLayer::x_request_id())
            .layer(CatchPanicLayer::custom(
                |_: Box<dyn std::any::Any + Send>| {
                    tracing::error!("handler panicked");
                    Problem::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "internal",
                        "Internal error",
                        "the server failed to handle the request; the cause is in its logs",
                    )
                    .into_response()
                },
            ))
            .layer(axum::middleware::from_fn(record_metrics))
            .layer(axum::middleware::from_fn(log_server_errors))
            .layer(axum::middleware::from_fn(move |req, next| {
                with_timeout(timeout, req, next)
            }))
            .layer(DefaultBodyLimit::max(limits.max_body_bytes)),
    )
}

/// Counts requests and their latency by method, matched route (never the raw path, whose ids
/// would make a series per run) and status.
async fn record_metrics(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let method = request.method().to_string();
    let response = next.run(request).await;
    let labels = [
        ("method", method),
        ("route", route),
        ("status", response.status().as_u16().to_string()),
    ];
    metrics::counter!("vfi_http_requests_total", &labels).increment(1);
    metrics::histogram!("vfi_http_request_duration_seconds", &labels)
        .record(started.elapsed().as_secs_f64());
    response
}

/// Logs the cause chain of 5xx answers (the body only says "see the logs").
async fn log_server_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    if let Some(ErrorChain(chain)) = response.extensions().get::<ErrorChain>() {
        tracing::error!(error = ?chain, status = response.status().as_u16(), "request failed");
    }
    response
}

async fn with_timeout(timeout: Duration, request: Request, next: Next) -> Response {
    match tokio::time::timeout(timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            "Request timed out",
            format!("the request took longer than {} s", timeout.as_secs()),
        )
        .into_response(),
    }
}

pub async fn not_found(request: Request) -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "not-found",
        "Not found",
        format!("no route for {}", request.uri().path()),
    )
}

pub async fn method_not_allowed(request: Request) -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "Method not allowed",
        format!(
            "{} is not allowed on {}",
            request.method(),
            request.uri().path()
        ),
    )
}
