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
    /// Uninstalling: remove this service's finalizers from its Jobs and pods (with the
    /// kubeconfig's credentials), so deleting their namespace cannot hang while the service is
    /// gone. See deploy/README.md.
    ReleaseFinalizers(ReleaseFinalizersArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ReleaseFinalizersArgs {
    /// The installation whose objects are released.
    #[arg(long, env = "INSTALLATION", default_value = "default")]
    pub installation: String,
    /// Namespaces to release in (comma-separated): those the service ran Jobs in.
    #[arg(long, env = "JOB_NAMESPACES", value_delimiter = ',', required = true)]
    pub namespaces: Vec<String>,
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
    /// Runs the token may have unfinished at once, replacing MAX_ACTIVE_RUNS_PER_TOKEN (0: no
    /// limit).
    #[arg(long)]
    pub max_active_runs: Option<u32>,
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
    /// Requests per second one client address may make without a valid token (the docs, the
    /// OpenAPI document, refused requests); 0 turns the limit off. Probes and webhooks are not
    /// counted.
    #[arg(long, env = "ANONYMOUS_RATE_LIMIT_PER_SECOND", default_value_t = 5)]
    pub anonymous_rate_limit_per_second: u32,
    /// Requests one client address may make in a burst without a valid token.
    #[arg(long, env = "ANONYMOUS_RATE_LIMIT_BURST", default_value_t = 50)]
    pub anonymous_rate_limit_burst: u32,
    /// Seconds a connection with no request in progress may send nothing before it is closed
    /// (also one that never sends a byte, or only the HTTP/2 preface).
    #[arg(long, env = "IDLE_CONNECTION_TIMEOUT_SECS", default_value_t = 60)]
    pub idle_connection_timeout_secs: u64,
    /// Connections served at once; more wait to be accepted. Lowered at start to what the
    /// open-file limit allows (whose soft limit is first raised to the hard one).
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,
    /// HTTP/2 requests (streams) one connection may have open at once.
    #[arg(long, env = "HTTP2_MAX_CONCURRENT_STREAMS", default_value_t = 100)]
    pub http2_max_concurrent_streams: u32,
    /// Seconds between HTTP/2 keep-alive pings; a peer that does not answer one within
    /// HTTP2_KEEPALIVE_TIMEOUT_SECS is disconnected.
    #[arg(long, env = "HTTP2_KEEPALIVE_INTERVAL_SECS", default_value_t = 30)]
    pub http2_keepalive_interval_secs: u64,
    /// Seconds an HTTP/2 peer has to answer a keep-alive ping.
    #[arg(long, env = "HTTP2_KEEPALIVE_TIMEOUT_SECS", default_value_t = 20)]
    pub http2_keepalive_timeout_secs: u64,
    /// Serve `/metrics` without a token. They name every task and count its runs, so by default
    /// they need a token (read scope, not limited to tasks); turn this on only where the network
    /// keeps others out.
    #[arg(long, env = "METRICS_PUBLIC", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub metrics_public: bool,
}

/// Where runs go and how the loops behave.
#[derive(Debug, Clone, Args)]
pub struct ClusterArgs {
    /// This installation's name. Its Jobs are labelled with it, and it only touches Jobs that
    /// carry it, so several installations can share a cluster.
    #[arg(long, env = "INSTALLATION", default_value = "default")]
    pub installation: String,
    /// Namespaces runs may use (comma-separated); the first is the default for runs naming none.
    /// When unset: the service's own namespace (`POD_NAMESPACE`, from the downward API), else
    /// `default`.
    #[arg(long, env = "JOB_NAMESPACES", value_delimiter = ',')]
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
    /// Runs active at once in the whole installation (their Jobs not finished); more wait in
    /// the queue (0: no limit).
    #[arg(long, env = "MAX_ACTIVE_RUNS", default_value_t = 0)]
    pub max_active_runs: u32,
    /// Runs active at once per namespace; more wait in the queue (0: no limit).
    #[arg(long, env = "MAX_ACTIVE_RUNS_PER_NAMESPACE", default_value_t = 0)]
    pub max_active_runs_per_namespace: u32,
    /// A waiting run gains one priority level per this many seconds waited, so low priorities
    /// cannot starve (0: no aging).
    #[arg(long, env = "PRIORITY_AGING_SECS", default_value_t = 60)]
    pub priority_aging_secs: u64,
    /// Milliseconds between launcher polls for due retries (new runs wake it at once).
    #[arg(long, env = "LAUNCHER_POLL_MS", default_value_t = 1000)]
    pub launcher_poll_ms: u64,
    /// Seconds between full re-lists of the cluster, behind the watches.
    #[arg(long, env = "RECONCILE_INTERVAL_SECS", default_value_t = 300)]
    pub reconcile_interval_secs: u64,
    /// Jobs whose changes the tracker writes at once, per namespace (never one Job twice).
    #[arg(long, env = "TRACKER_CONCURRENCY", default_value_t = 8)]
    pub tracker_concurrency: usize,
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
    /// Seconds to open a connection to the Kubernetes API before the call fails (and is retried).
    #[arg(long, env = "KUBE_CONNECT_TIMEOUT_SECS", default_value_t = 10)]
    pub kube_connect_timeout_secs: u64,
    /// Seconds every Kubernetes API call may wait for its answer before it fails as a transient
    /// error; for watches and log streams, the wait for the stream to start.
    #[arg(long, env = "KUBE_REQUEST_TIMEOUT_SECS", default_value_t = 30)]
    pub kube_request_timeout_secs: u64,
    /// Seconds after which the API server ends each watch (`timeoutSeconds`) and it is resumed;
    /// a watch silent for 5 s longer is taken as dead and restarted.
    #[arg(long, env = "KUBE_WATCH_TIMEOUT_SECS", default_value_t = 290)]
    pub kube_watch_timeout_secs: u32,
    /// The namespace the service runs in (set from the downward API in deploy/); Jobs go there
    /// unless `JOB_NAMESPACES` says otherwise.
    #[arg(long, env = "POD_NAMESPACE")]
    pub pod_namespace: Option<String>,
    /// Seconds between checks that the service account still has every permission the
    /// service needs (SelfSubjectAccessReview); what is missing makes `/readyz` answer 503.
    #[arg(long, env = "PERMISSION_CHECK_INTERVAL_SECS", default_value_t = 60)]
    pub permission_check_interval_secs: u64,
    /// Milliseconds between looks for log captures whose replica stopped (lease lapsed), which
    /// are then taken over.
    #[arg(long, env = "LOG_SWEEP_INTERVAL_MS", default_value_t = 1000)]
    pub log_sweep_interval_ms: u64,
    /// Seconds a pod's log stream may deliver nothing before it is reopened (detects silently
    /// dead connections; a quiet container's stream is reopened too, at the cost of a request).
    #[arg(long, env = "LOG_STALL_TIMEOUT_SECS", default_value_t = 60)]
    pub log_stall_timeout_secs: u64,
    #[command(flatten)]
    pub run_limits: RunLimitsArgs,
    #[command(flatten)]
    pub sandbox: SandboxArgs,
    #[command(flatten)]
    pub report: ReportArgs,
    /// Seconds a finished Job stays in the cluster once its outcome is recorded (set as its
    /// `ttlSecondsAfterFinished` when the template gives none); negative: Jobs stay until
    /// someone deletes them. The run, its pod records and logs stay in the database either way.
    #[arg(
        long,
        env = "FINISHED_JOB_TTL_SECS",
        default_value_t = 3600,
        allow_negative_numbers = true
    )]
    pub finished_job_ttl_secs: i32,
    /// Seconds a plain-text `follow` of a run's log may stay silent while it waits for pods
    /// that have not started, before a `[vfi-orchestrator] waiting for ...` line is written (so
    /// clients' and proxies' read timeouts do not cut it); 0: no such lines.
    #[arg(long, env = "LOG_FOLLOW_KEEPALIVE_SECS", default_value_t = 15)]
    pub log_follow_keepalive_secs: u64,
}

impl ClusterArgs {
    /// The namespaces runs may use: `JOB_NAMESPACES`, else the service's own namespace, else
    /// `default`.
    pub fn job_namespaces(&self) -> Vec<String> {
        let listed: Vec<String> = self
            .namespaces
            .iter()
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty())
            .collect();
        if !listed.is_empty() {
            return listed;
        }
        let own = self
            .pod_namespace
            .as_deref()
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .unwrap_or("default");
        vec![own.to_string()]
    }
}

/// Delivering the outbox: commit statuses to Git hosts and notifications to receivers.
#[derive(Debug, Clone, Args)]
pub struct ReportArgs {
    /// The service's public URL (e.g. `https://ci.example.com`): commit statuses and
    /// notifications link to the run's dashboard page under it. Unset: no link unless a trigger
    /// names its own `targetUrl`.
    #[arg(long, env = "PUBLIC_BASE_URL")]
    pub public_base_url: Option<String>,
    /// Reports and notifications delivered at once per replica (0: this replica delivers none).
    #[arg(long, env = "REPORT_CONCURRENCY", default_value_t = 32)]
    pub report_concurrency: usize,
    /// Milliseconds between looks for due retries when nothing wakes the reporter.
    #[arg(long, env = "REPORT_POLL_MS", default_value_t = 1000)]
    pub report_poll_ms: u64,
    /// Seconds one delivery may take (connect, send, answer); then it is retried.
    #[arg(long, env = "REPORT_TIMEOUT_SECS", default_value_t = 10)]
    pub report_timeout_secs: u64,
    /// Milliseconds before the first retry of a transient failure; each next one doubles, with
    /// jitter, up to `REPORT_RETRY_MAX_SECS` (a longer `Retry-After` is honoured).
    #[arg(long, env = "REPORT_RETRY_MIN_MS", default_value_t = 1000)]
    pub report_retry_min_ms: u64,
    #[arg(long, env = "REPORT_RETRY_MAX_SECS", default_value_t = 300)]
    pub report_retry_max_secs: u64,
    /// Hours after which an undelivered report or notification is given up.
    #[arg(long, env = "REPORT_GIVE_UP_HOURS", default_value_t = 24)]
    pub report_give_up_hours: u64,
}

/// What run pods' annotations, tolerations and node selectors may say (keys or glob patterns,
/// comma-separated). `*` allows every ordinary key; keys that can weaken the sandbox (AppArmor,
/// seccomp, Multus, `kubernetes.io/`, control-plane nodes, ...) need a pattern of their own.
#[derive(Debug, Clone, Args)]
pub struct SandboxArgs {
    /// Annotation keys runs may set.
    #[arg(
        long,
        env = "ALLOWED_ANNOTATIONS",
        value_delimiter = ',',
        default_value = "*"
    )]
    pub allowed_annotations: Vec<String>,
    /// Taint keys runs may tolerate.
    #[arg(
        long,
        env = "ALLOWED_TOLERATIONS",
        value_delimiter = ',',
        default_value = "*"
    )]
    pub allowed_tolerations: Vec<String>,
    /// Node label keys runs may select on.
    #[arg(
        long,
        env = "ALLOWED_NODE_SELECTORS",
        value_delimiter = ',',
        default_value = "*"
    )]
    pub allowed_node_selectors: Vec<String>,
    /// Who may read container env from Secrets and ConfigMaps (`env[].valueFrom`, `envFrom`):
    /// `tasks` (task definitions, which need an `admin` token), `all` (ad-hoc runs too) or
    /// `none`. Per-run overrides never may.
    #[arg(
        long,
        env = "ALLOW_ENV_FROM_CLUSTER",
        value_enum,
        default_value = "tasks"
    )]
    pub allow_env_from_cluster: crate::domain::template::EnvFromCluster,
    /// Volume kinds run templates may use beyond `scratch` (comma-separated: `emptyDir`,
    /// `configMap`, `secret`, `persistentVolumeClaim`; empty: none). `hostPath` is always refused,
    /// so naming it stops the service from starting. configMap and secret volumes also follow
    /// `ALLOW_ENV_FROM_CLUSTER`.
    #[arg(long, env = "ALLOWED_VOLUME_KINDS", value_delimiter = ',')]
    pub allowed_volume_kinds: Vec<String>,
    /// Allow tolerations without a key (`operator: Exists`), which tolerate every taint.
    #[arg(long, env = "ALLOW_TOLERATE_ALL_TAINTS", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub allow_tolerate_all_taints: bool,
}

/// How big one run may be, and how many one token may have unfinished (0: no limit). A task's
/// `limits` replace the size limits for its runs; a token's `maxActiveRuns` replaces the last.
#[derive(Debug, Clone, Args)]
pub struct RunLimitsArgs {
    /// Most `completions` of one run.
    #[arg(long, env = "MAX_RUN_COMPLETIONS", default_value_t = 1000)]
    pub max_run_completions: i32,
    /// Most `parallelism` of one run.
    #[arg(long, env = "MAX_RUN_PARALLELISM", default_value_t = 100)]
    pub max_run_parallelism: i32,
    /// Most pods one run may create: completions (or parallelism) plus backoffLimit.
    #[arg(long, env = "MAX_RUN_PODS", default_value_t = 1100)]
    pub max_run_pods: i64,
    /// Most CPU one run container may request or be limited to (a quantity; 0: no limit).
    #[arg(long, env = "MAX_RUN_CPU", default_value = "16")]
    pub max_run_cpu: String,
    /// Most memory one run container may request or be limited to (a quantity; 0: no limit).
    #[arg(long, env = "MAX_RUN_MEMORY", default_value = "64Gi")]
    pub max_run_memory: String,
    /// Most units of any one extended resource (GPUs) per run container.
    #[arg(long, env = "MAX_RUN_EXTENDED_RESOURCE", default_value_t = 8)]
    pub max_run_extended_resource: i64,
    /// Largest `activeDeadlineSeconds` a run may ask for (default 7 days).
    #[arg(long, env = "MAX_RUN_ACTIVE_DEADLINE_SECONDS", default_value_t = 7 * 24 * 3600)]
    pub max_run_active_deadline_seconds: i64,
    /// Runs one API token may have unfinished (queued to running) at once; more get 429.
    #[arg(long, env = "MAX_ACTIVE_RUNS_PER_TOKEN", default_value_t = 100)]
    pub max_active_runs_per_token: u32,
    /// Most runs one `POST /v1/runs/batch` may submit.
    #[arg(long, env = "MAX_BATCH_RUNS", default_value_t = 500)]
    pub max_batch_runs: usize,
    /// Most runs one `POST /v1/runs/{id}/rerun?only=failed-indexes` may start (one per failed
    /// index); more failed indexes are refused with 422.
    #[arg(long, env = "MAX_RERUN_INDEXES", default_value_t = 100)]
    pub max_rerun_indexes: usize,
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

    /// `serve`'s arguments from `extra` flags.
    fn serve(extra: &[&str]) -> ServeArgs {
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
    }

    #[test]
    fn authentication_is_on_unless_explicitly_turned_off() {
        assert!(!serve(&[]).security.auth_disabled);
        assert!(serve(&["--auth-disabled"]).security.auth_disabled);
        assert!(!serve(&["--auth-disabled", "false"]).security.auth_disabled);
        assert!(serve(&[]).security.cors_allowed_origins.is_empty());
    }

    #[test]
    fn jobs_go_to_the_services_own_namespace_unless_job_namespaces_says_otherwise() {
        let namespaces = |extra: &[&str]| serve(extra).cluster.job_namespaces();
        assert_eq!(namespaces(&[]), ["default"]);
        assert_eq!(namespaces(&["--pod-namespace", "vfi"]), ["vfi"]);
        assert_eq!(
            namespaces(&["--pod-namespace", "vfi", "--namespaces", "a,b"]),
            ["a", "b"]
        );
    }
}
