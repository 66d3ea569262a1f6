//! `GET /metrics`: the process's counters and histograms in the Prometheus text format, plus
//! `vfi_runs`, a gauge of runs by task and status read from the database at scrape time (so
//! every replica reports the same truth, and a restart loses nothing), and
//! `vfi_queue_waiting_runs`, queued runs per concurrency key and reason, read the same way. Not
//! in the OpenAPI
//! document: it is for Prometheus, not for API clients.

use crate::domain::{Caller, Denied, RunStatus, Scope};
use crate::error::{Error, Result};
use crate::store;
use crate::telemetry;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use sqlx::PgPool;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;

/// Who may read the metrics: they name every task and count its runs, so a caller needs a token
/// of at least `read` scope that is not limited to some tasks, unless the installation made
/// them public (`METRICS_PUBLIC`, for scrapers that cannot send a token; then only the network
/// protects them).
pub async fn metrics(
    State(db): State<PgPool>,
    State(limits): State<std::sync::Arc<super::Limits>>,
    caller: Option<Extension<Caller>>,
) -> Result<Response> {
    if let Some(Extension(caller)) = caller {
        caller.require(Scope::Read)?;
        if caller.tasks.is_some() {
            return Err(Error::Forbidden(Denied(
                "the metrics name every task; they need a token that is not limited to some tasks"
                    .into(),
            )));
        }
    }
    Ok(render(&db, &limits.admission).await)
}

async fn render(db: &PgPool, admission: &crate::domain::queue::Admission) -> Response {
    let handle = telemetry::metrics();
    handle.run_upkeep();
    let mut body = handle.render();
    match store::events::run_counts(db).await {
        Ok(counts) => render_runs(&mut body, &counts),
        // The process's own metrics are still worth having when the database is down.
        Err(error) => tracing::warn!(error = %error, "metrics: counting runs failed"),
    }
    let waiting = match db.acquire().await {
        Ok(mut conn) => store::queue::waiting_by_key(&mut conn, admission).await,
        Err(error) => Err(error),
    };
    match waiting {
        Ok(waiting) => render_waiting(&mut body, &waiting),
        Err(error) => tracing::warn!(error = %error, "metrics: counting waiting runs failed"),
    }
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// Appends the `vfi_runs` gauge: every status of every task that has runs, zeros included, so a
/// status that empties drops to 0 instead of vanishing.
fn render_runs(out: &mut String, counts: &[(Option<String>, RunStatus, i64)]) {
    let mut by_task: BTreeMap<&str, HashMap<RunStatus, i64>> = BTreeMap::new();
    for (task, status, count) in counts {
        *by_task
            .entry(task.as_deref().unwrap_or_default())
            .or_default()
            .entry(*status)
            .or_default() += count;
    }
    out.push_str(
        "# HELP vfi_runs Runs in the database by task (empty for ad-hoc runs) and status\n",
    );
    out.push_str("# TYPE vfi_runs gauge\n");
    for (task, statuses) in by_task {
        for status in RunStatus::ALL {
            let count = statuses.get(&status).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "vfi_runs{{task=\"{}\",status=\"{}\"}} {count}",
                escape(task),
                status.as_str()
            );
        }
    }
}

/// Appends the `vfi_queue_waiting_runs` gauge: queued runs per concurrency key and reason.
fn render_waiting(out: &mut String, waiting: &[(String, &'static str, i64)]) {
    out.push_str(
        "# HELP vfi_queue_waiting_runs Queued runs per concurrency key and why they wait\n",
    );
    out.push_str("# TYPE vfi_queue_waiting_runs gauge\n");
    for (key, reason, count) in waiting {
        let _ = writeln!(
            out,
            "vfi_queue_waiting_runs{{key=\"{}\",reason=\"{reason}\"}} {count}",
            escape(key)
        );
    }
}

/// A label value in the text format: backslash, double quote and newline escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_gauge_lists_every_status_of_a_task_and_escapes_its_name() {
        let mut out = String::new();
        render_runs(
            &mut out,
            &[
                (Some("a\"b".into()), RunStatus::Succeeded, 3),
                (None, RunStatus::Queued, 1),
            ],
        );
        assert!(
            out.contains("vfi_runs{task=\"a\\\"b\",status=\"succeeded\"} 3\n"),
            "{out}"
        );
        assert!(
            out.contains("vfi_runs{task=\"a\\\"b\",status=\"failed\"} 0\n"),
            "{out}"
        );
        assert!(
            out.contains("vfi_runs{task=\"\",status=\"queued\"} 1\n"),
            "{out}"
        );
        assert_eq!(out.matches("vfi_runs{").count(), 2 * RunStatus::ALL.len());
    }
}
