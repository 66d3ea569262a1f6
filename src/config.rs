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
