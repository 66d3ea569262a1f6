//! The command line and configuration: every setting is a flag with an environment variable and
//! a default, listed in the README.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;

#[derive(Debug, Parser)]
#[command(
    name = "vfi-orchestrator",
    version,
    about = "Runs batch tasks as Kubernetes Jobs from a REST API"
)]
pub struct Cli {
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    /// Log filter, in tracing's EnvFilter syntax.
    #[arg(long, env = "RUST_LOG", default_value = "info", global = true)]
    pub log_level: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

// Parsed once at start-up; boxing the big variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once at start-up
pub enum Command {
    /// Run the service.
    Serve(ServeArgs),
    /// Apply database migrations and exit.
    Migrate(DatabaseArgs),
    /// Print the OpenAPI document and exit.
    Openapi,
}

#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// PostgreSQL connection URL.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: String,
    /// Largest number of database connections this process opens.
    #[arg(long, env = "DB_MAX_CONNECTIONS", default_value_t = 20)]
    pub db_max_connections: u32,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Address the HTTP server listens on.
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Apply pending migrations at start-up.
    #[arg(long, env = "MIGRATE_ON_START", default_value_t = true, action = clap::ArgAction::Set)]
    pub migrate_on_start: bool,
    /// Largest request body accepted, in bytes.
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Longest time a (non-streaming) request may take, in seconds.
    #[arg(long, env = "REQUEST_TIMEOUT_SECS", default_value_t = 30)]
    pub request_timeout_secs: u64,
    /// How long shutdown waits for in-flight requests, in seconds.
    #[arg(long, env = "SHUTDOWN_TIMEOUT_SECS", default_value_t = 25)]
    pub shutdown_timeout_secs: u64,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// Where runs go and how the loops behave.
#[derive(Debug, Clone, Args)]
pub struct ClusterArgs {
    /// This installation's name. Its Jobs are labelled with it, and it only touches Jobs that
    /// carry it, so several installations can share a cluster.
    #[arg(long, env = "INSTALLATION", default_value = "default")]
    pub installation: String,
    /// Namespaces runs may use (comma-separated); the first is the default for runs naming none.
    #[arg(
        long,
        env = "JOB_NAMESPACES",
        value_delimiter = ',',
        default_value = "default"
    )]
    pub namespaces: Vec<String>,
    /// Service accounts runs may use (comma-separated).
    #[arg(
        long,
        env = "ALLOWED_SERVICE_ACCOUNTS",
        value_delimiter = ',',
        default_value = "default"
    )]
    pub service_accounts: Vec<String>,
    /// Prepended to Job names (for installations that share a namespace).
    #[arg(long, env = "JOB_NAME_PREFIX", default_value = "")]
    pub job_name_prefix: String,
    /// Seconds a launcher holds a run it is creating before another replica may take over.
    #[arg(long, env = "LAUNCH_LEASE_SECS", default_value_t = 30)]
    pub launch_lease_secs: u64,
    /// Jobs created concurrently by one replica.
    #[arg(long, env = "LAUNCH_CONCURRENCY", default_value_t = 16)]
    pub launch_concurrency: usize,
    /// Seconds a run may wait for its Job to be created before it fails (LaunchTimeout).
    #[arg(long, env = "MAX_QUEUE_WAIT_SECS", default_value_t = 3600)]
    pub max_queue_wait_secs: u64,
    /// Milliseconds between launcher polls for due retries (new runs wake it at once).
    #[arg(long, env = "LAUNCHER_POLL_MS", default_value_t = 1000)]
    pub launcher_poll_ms: u64,
    /// Seconds between full re-lists of the cluster, behind the watches.
    #[arg(long, env = "RECONCILE_INTERVAL_SECS", default_value_t = 300)]
    pub reconcile_interval_secs: u64,
    /// Largest log archived per pod, in bytes; beyond it the head and the tail are kept.
    #[arg(long, env = "LOG_CAP_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub log_cap_bytes: i64,
    /// Seconds a pod's log may keep failing to be read after the pod ended before its
    /// finalizer is removed anyway (the run then records the log as incomplete).
    #[arg(long, env = "LOG_CAPTURE_TIMEOUT_SECS", default_value_t = 600)]
    pub log_capture_timeout_secs: u64,
    /// Pod logs captured at once by one replica.
    #[arg(long, env = "LOG_CAPTURE_CONCURRENCY", default_value_t = 256)]
    pub log_capture_concurrency: usize,
    /// Milliseconds read log lines may wait before they are written to the archive.
    #[arg(long, env = "LOG_FLUSH_MS", default_value_t = 1000)]
    pub log_flush_ms: u64,
    #[command(flatten)]
    pub retention: RetentionArgs,
}

/// How long run history is kept (see docs/schedules.md). Per-task history limits are part of
/// each task; these are the global ones and the pruner's pace.
#[derive(Debug, Clone, Args)]
pub struct RetentionArgs {
    /// Finished runs (of tasks and ad hoc) older than this many hours are deleted; 0 keeps
    /// them however old they are.
    #[arg(long, env = "RUN_MAX_AGE_HOURS", default_value_t = 90 * 24)]
    pub run_max_age_hours: u64,
    /// At most this many finished runs are kept overall (the newest); 0 means no limit.
    #[arg(long, env = "RUN_MAX_COUNT", default_value_t = 0)]
    pub run_max_count: u64,
    /// Schedule records (scheduled times started or skipped) older than this many hours are
    /// deleted.
    #[arg(long, env = "SCHEDULE_RECORD_MAX_AGE_HOURS", default_value_t = 30 * 24)]
    pub schedule_record_max_age_hours: u64,
    /// Milliseconds between pruning passes.
    #[arg(long, env = "PRUNE_INTERVAL_MS", default_value_t = 60_000)]
    pub prune_interval_ms: u64,
    /// Runs deleted per transaction while pruning.
    #[arg(long, env = "PRUNE_BATCH_SIZE", default_value_t = 500)]
    pub prune_batch_size: u32,
    /// Milliseconds the pruner pauses between batches, leaving room to other work.
    #[arg(long, env = "PRUNE_PAUSE_MS", default_value_t = 10)]
    pub prune_pause_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }
}
