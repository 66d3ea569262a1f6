//! Logging and metrics set-up: tracing to stderr, as text for people or JSON for log pipelines;
//! the process's Prometheus recorder, the metrics' descriptions, and the run metrics that more
//! than one module records. Loops and handlers record their own counters with `metrics::counter!`.

use crate::config::LogFormat;
use crate::domain::RunStatus;
use chrono::{DateTime, Utc};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use tracing_subscriber::EnvFilter;

pub fn init(format: LogFormat, filter: &str) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour codes only for a person at a terminal, not in files, pipes or log collectors.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init(),
    }
}

/// The Prometheus recorder of this process, installed on first use. Tests start several apps in
/// one process, so installing is idempotent; when another recorder was installed first (by an
/// embedding program), `/metrics` still answers, with only the gauges read from the database.
pub fn metrics() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full("vfi_http_request_duration_seconds".into()),
                &[
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ],
            )
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full("vfi_run_duration_seconds".into()),
                    &[
                        1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 10800.0, 43200.0,
                        86400.0,
                    ],
                )
            })
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full("vfi_run_queue_wait_seconds".into()),
                    &[
                        0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0,
                    ],
                )
            })
            .and_then(|b| {
                // A limit may hold a run for hours: the upper buckets reach that far.
                b.set_buckets_for_metric(
                    Matcher::Full("vfi_queue_admission_seconds".into()),
                    &[
                        0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
                        3600.0, 10800.0, 43200.0,
                    ],
                )
            })
            .expect("bucket lists are not empty")
            .build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("another metrics recorder was installed first; /metrics shows only the database gauges");
        }
        describe();
        handle
    })
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_histogram!(
        "vfi_http_request_duration_seconds",
        Unit::Seconds,
        "Time to answer an API request (to the response head), by method, matched route and status"
    );
    describe_counter!(
        "vfi_http_requests_total",
        "API requests answered, by method, matched route and status"
    );
    describe_histogram!(
        "vfi_run_duration_seconds",
        Unit::Seconds,
        "From a run's start (its creation when it never started) to its final status, by task and status"
    );
    describe_histogram!(
        "vfi_run_queue_wait_seconds",
        Unit::Seconds,
        "From a run's creation to the creation of its Job, by task"
    );
    describe_histogram!(
        "vfi_queue_admission_seconds",
        Unit::Seconds,
        "From a run's submission to its admission by the launcher (the time its queue held it)"
    );
    describe_counter!(
        "vfi_launcher_errors_total",
        "Failed Job creations and launcher database errors, by kind"
    );
    describe_counter!(
        "vfi_launcher_retries_total",
        "Job creations put back in the queue after a transient error"
    );
    describe_counter!(
        "vfi_watch_errors_total",
        "Watch stream errors (each restarts the watch with backoff), by kind"
    );
    describe_counter!(
        "vfi_watch_relists_total",
        "Completed re-lists of a watch, by kind"
    );
    describe_counter!(
        "vfi_reconcile_corrections_total",
        "Runs corrected by a reconcile against the cluster, by kind"
    );
    describe_counter!(
        "vfi_outbox_deliveries_total",
        "Attempts to deliver commit status reports and notifications, by provider (github, gitlab, gitea, receiver), kind (status, notification) and result (delivered, retry, failed)"
    );
    describe_gauge!(
        "vfi_outbox_depth",
        "Reports and notifications not delivered yet (all replicas; refreshed every 5 s)"
    );
    describe_gauge!(
        "vfi_outbox_oldest_age_seconds",
        Unit::Seconds,
        "Age of the oldest report or notification not delivered yet"
    );
}

/// The task label of a run's metrics: its task, or empty for an ad-hoc run.
fn task_label(task: Option<&str>) -> String {
    task.unwrap_or_default().to_string()
}

/// Records a run that just reached a final status (called by whoever made the change, so a
/// run is counted once however many replicas there are).
pub fn run_finished(
    task: Option<&str>,
    status: RunStatus,
    created_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
) {
    let end = finished_at.unwrap_or_else(Utc::now);
    let seconds = (end - started_at.unwrap_or(created_at))
        .as_seconds_f64()
        .max(0.0);
    metrics::histogram!(
        "vfi_run_duration_seconds",
        "task" => task_label(task),
        "status" => status.as_str(),
    )
    .record(seconds);
}

/// Records how long a run waited for its Job.
pub fn run_launched(task: Option<&str>, created_at: DateTime<Utc>) {
    let seconds = (Utc::now() - created_at).as_seconds_f64().max(0.0);
    metrics::histogram!("vfi_run_queue_wait_seconds", "task" => task_label(task)).record(seconds);
}
