//! The command line and configuration: every setting is a flag with an environment variable and
//! a default, listed in the README.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;

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
pub enum Command {
    /// Run the service.
    Serve(ServeArgs),
    /// Apply database migrations and exit.
    Migrate(DatabaseArgs),
    /// Print the OpenAPI document and exit.
    Openapi,
    /// Try it on one machine: a local PostgreSQL, kubesim in-process (running commands on this
    /// machine), migrations and the API, without authentication. Ctrl-C stops everything.
    Dev(DevArgs),
    /// Manage API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create an API token and print it (once: only its hash is stored).
    Create(TokenCreateArgs),
}

#[derive(Debug, Clone, Args)]
pub struct TokenCreateArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Who or what uses the token, e.g. `ci` or `alice`.
    #[arg(long)]
    pub name: String,
    /// read (history, logs), run (also start, cancel, re-run) or admin (also tasks, triggers,
    /// tokens). Each includes the ones before.
    #[arg(long, value_enum)]
    pub scope: ScopeArg,
    /// Limit the token to this task (repeat for several); every task when left out.
    #[arg(long = "task")]
    pub tasks: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ScopeArg {
    Read,
    Run,
    Admin,
}

impl From<ScopeArg> for crate::domain::Scope {
    fn from(scope: ScopeArg) -> Self {
        match scope {
            ScopeArg::Read => crate::domain::Scope::Read,
            ScopeArg::Run => crate::domain::Scope::Run,
            ScopeArg::Admin => crate::domain::Scope::Admin,
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct DevArgs {
    /// Address of the API and dashboard (keep it on loopback: dev mode has no authentication).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Folder for dev mode's state: PostgreSQL's data in `postgres/`, kubesim's kubeconfig.
    /// A second `dev` with the same folder reuses the data.
    #[arg(long, env = "DEV_DATA_DIR", default_value = ".dev")]
    pub data_dir: PathBuf,
    /// Use this PostgreSQL instead of starting one.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// Where runs go: kubesim in this process, or the cluster of the kubeconfig (`KUBECONFIG`,
    /// `~/.kube/config`).
    #[arg(long, value_enum, default_value_t = DevCluster::Kubesim)]
    pub cluster: DevCluster,
    /// How kubesim runs containers: `host` really runs their command on this machine (the
    /// image is ignored), `scripted` only pretends (see kubesim's README).
    #[arg(long, value_enum, default_value_t = DevRunner::Host)]
    pub runner: DevRunner,
    #[command(flatten)]
    pub cluster_args: ClusterArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DevCluster {
    Kubesim,
    Kubeconfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DevRunner {
    Host,
    Scripted,
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
    pub security: SecurityArgs,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// Who may call the API, and how much (see docs/security.md).
#[derive(Debug, Clone, Args)]
pub struct SecurityArgs {
    /// Turn off API authentication: every caller may do everything. For local use only; the
    /// service logs a warning at start.
    #[arg(long, env = "AUTH_DISABLED", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub auth_disabled: bool,
    /// Requests per second one token may make on average (and webhook deliveries per trigger);
    /// 0 turns the limit off.
    #[arg(long, env = "RATE_LIMIT_PER_SECOND", default_value_t = 20)]
    pub rate_limit_per_second: u32,
    /// Requests one token may make in a burst, above the average rate.
    #[arg(long, env = "RATE_LIMIT_BURST", default_value_t = 50)]
    pub rate_limit_burst: u32,
    /// Queued runs a task may have; more are refused with 429 (0: no cap).
    #[arg(long, env = "MAX_QUEUED_RUNS_PER_TASK", default_value_t = 100)]
    pub max_queued_runs_per_task: u32,
    /// Browser origins allowed to call the API (CORS), comma-separated, e.g.
    /// `https://dash.example.com`; none by default.
    #[arg(long, env = "CORS_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub cors_allowed_origins: Vec<String>,
    /// Seconds a client has to send a request's headers before the connection is closed.
    #[arg(long, env = "HEADER_READ_TIMEOUT_SECS", default_value_t = 10)]
    pub header_read_timeout_secs: u64,
    /// Largest request header section accepted, in bytes (at least 8192); larger gets a 431.
    #[arg(long, env = "MAX_HEADER_BYTES", default_value_t = 64 * 1024)]
    pub max_header_bytes: usize,
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
    /// Require run containers to run as a non-root user (Pod Security Standards' restricted
    /// profile). Off by default because common images (e.g. perl) run as root.
    #[arg(long, env = "RUN_AS_NON_ROOT", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub run_as_non_root: bool,
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
    /// Archived pod logs older than this many hours are deleted even while their run is kept;
    /// 0 keeps them as long as their run.
    #[arg(long, env = "LOG_MAX_AGE_HOURS", default_value_t = 0)]
    pub log_max_age_hours: u64,
    /// Seconds a run may stay pending (its Job created, no pod running: image pull failures,
    /// no node that fits, pods refused by admission) before it fails with the reason it waited for.
    #[arg(long, env = "MAX_PENDING_SECS", default_value_t = 600)]
    pub max_pending_secs: u64,
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

    #[test]
    fn authentication_is_on_unless_explicitly_turned_off() {
        let serve = |extra: &[&str]| {
            let mut argv = vec![
                "vfi-orchestrator",
                "serve",
                "--database-url",
                "postgres://x",
            ];
            argv.extend_from_slice(extra);
            match Cli::try_parse_from(argv).unwrap().command {
                Command::Serve(args) => args,
                _ => unreachable!(),
            }
        };
        assert!(!serve(&[]).security.auth_disabled);
        assert!(serve(&["--auth-disabled"]).security.auth_disabled);
        assert!(!serve(&["--auth-disabled", "false"]).security.auth_disabled);
        assert!(serve(&[]).security.cors_allowed_origins.is_empty());
    }
}
