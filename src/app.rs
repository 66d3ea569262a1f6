//! Builds the application state, runs the HTTP server and the loops, and owns shutdown: one
//! cancellation token stops them all, with a deadline for in-flight requests.

use crate::clock::SystemClock;
use crate::cluster::jobs::Cluster;
use crate::cluster::ClusterSettings;
use crate::config::{ClusterArgs, ReportArgs, RetentionArgs, SecurityArgs, ServeArgs};
use crate::domain::policy::RunLimits;
use crate::domain::sandbox::{Sandbox, SandboxSettings};
use crate::domain::{Caps, RunPolicy};
use crate::http::server::ServerLimits;
use crate::http::{self, AppState, AuthSettings, EventHub, Limits, RateLimit, Revocations};
use crate::runtime::archiver::{Archiver, LogSettings};
use crate::runtime::pruner::RetentionSettings;
use crate::runtime::reporter::ReporterSettings;
use crate::runtime::{self, Runtime, RuntimeSettings};
use crate::store;
use anyhow::Context;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Everything `serve` needs, already connected.
pub struct App {
    pub state: AppState,
    pub runtime: Runtime,
    pub listener: TcpListener,
    pub server_limits: ServerLimits,
    pub shutdown_timeout: Duration,
}

impl App {
    /// Connects to the database and to the cluster of the kubeconfig (or the in-cluster service
    /// account), and binds the listener.
    pub async fn build(args: &ServeArgs) -> anyhow::Result<App> {
        let mut config = kube::Config::infer()
            .await
            .context("no Kubernetes configuration: set KUBECONFIG, or run in a cluster")?;
        config.connect_timeout = Some(Duration::from_secs(
            args.cluster.kube_connect_timeout_secs.max(1),
        ));
        let client =
            kube::Client::try_from(config).context("cannot build the Kubernetes client")?;
        let db = store::pool(
            &args.database.database_url,
            args.database.db_max_connections,
        )
        .context("invalid DATABASE_URL")?;
        App::new(args, db, client).await
    }

    /// Builds the app on a given pool and Kubernetes client (`args.database` is not used).
    pub async fn new(
        args: &ServeArgs,
        db: sqlx::PgPool,
        client: kube::Client,
    ) -> anyhow::Result<App> {
        crate::telemetry::metrics();
        if args.migrate_on_start {
            store::migrate(&db).await.context("applying migrations")?;
        }
        let listener = TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let policy = Arc::new(policy(&args.cluster)?);
        let caps = Caps {
            max_queued_runs_per_task: args.security.max_queued_runs_per_task,
            max_active_runs_per_token: args.cluster.run_limits.max_active_runs_per_token,
        };
        // One LISTEN connection per process, shared by the loops, the event stream and the
        // token revocations.
        let notifications = store::notify::Notifications::new(db.clone());
        let runtime = runtime(
            &args.cluster,
            db.clone(),
            client,
            policy.clone(),
            notifications.clone(),
            caps,
        );
        // Start-up self-check: a missing permission is logged (and fails /readyz) at once,
        // not discovered by the first run that needs it.
        if tokio::time::timeout(Duration::from_secs(10), runtime.cluster.check_permissions())
            .await
            .is_err()
        {
            tracing::warn!("the Kubernetes permission check did not answer within 10 s");
        }
        let state = AppState {
            db: db.clone(),
            limits: Arc::new(Limits {
                max_body_bytes: args.max_body_bytes,
                request_timeout: Duration::from_secs(args.request_timeout_secs),
                max_queued_runs_per_task: caps.max_queued_runs_per_task,
                max_active_runs_per_token: caps.max_active_runs_per_token,
                log_follow_keepalive: Some(args.cluster.log_follow_keepalive_secs)
                    .filter(|secs| *secs > 0)
                    .map(Duration::from_secs),
                max_batch_runs: args.cluster.run_limits.max_batch_runs,
                max_rerun_indexes: args.cluster.run_limits.max_rerun_indexes,
                admission: runtime.settings.admission.clone(),
            }),
            policy,
            cluster: runtime.cluster.clone(),
            auth: Arc::new(auth(&args.security)?),
            events: EventHub::new(db.clone(), notifications.clone()),
            revocations: Revocations::new(db.clone(), notifications),
            final_runs: runtime.final_runs.clone(),
        };
        Ok(App {
            state,
            runtime,
            listener,
            server_limits: ServerLimits {
                header_read_timeout: Duration::from_secs(args.security.header_read_timeout_secs),
                max_header_bytes: args.security.max_header_bytes,
                idle_timeout: Duration::from_secs(args.security.idle_connection_timeout_secs),
                max_connections: args.security.max_connections,
                http2_max_concurrent_streams: args.security.http2_max_concurrent_streams,
                http2_keep_alive_interval: Duration::from_secs(
                    args.security.http2_keepalive_interval_secs,
                ),
                http2_keep_alive_timeout: Duration::from_secs(
                    args.security.http2_keepalive_timeout_secs,
                ),
            },
            shutdown_timeout: Duration::from_secs(args.shutdown_timeout_secs),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves and runs the loops until `shutdown` is cancelled or a loop stops on its own; then
    /// lets in-flight requests finish (up to the shutdown timeout) and stops the loops.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(addr = %self.listener.local_addr()?, "listening");
        let loops = runtime::spawn(self.runtime.clone(), shutdown.clone());
        let router = http::router(self.state.clone());
        let events = self.state.events.clone();
        let server = tokio::spawn(http::server::serve(
            self.listener,
            router,
            self.server_limits,
            {
                let shutdown = shutdown.clone();
                // Event streams never end by themselves: end them, or they would hold the
                // server up.
                async move {
                    shutdown.cancelled().await;
                    events.close();
                }
            },
        ));

        let (names, handles): (Vec<_>, Vec<_>) =
            loops.into_iter().map(|l| (l.name, l.handle)).unzip();
        let mut handles = futures::future::select_all(handles);
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => {}
            (result, index, rest) = &mut handles => {
                // Loops end when shutdown is asked; only an end before that is an error.
                if !shutdown.is_cancelled() {
                    tracing::error!(loop_name = %names[index], ?result, "a loop stopped on its own; shutting down");
                    shutdown.cancel();
                }
                handles = futures::future::select_all(rest);
            }
        }
        match tokio::time::timeout(self.shutdown_timeout, server).await {
            Ok(joined) => joined.context("server task")?,
            Err(_) => tracing::warn!("in-flight requests did not finish in time; stopping anyway"),
        }
        for handle in handles.into_inner() {
            let _ = tokio::time::timeout(Duration::from_secs(5), handle).await;
        }
        self.runtime.archiver.hand_back().await;
        self.state.db.close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

fn auth(args: &SecurityArgs) -> anyhow::Result<AuthSettings> {
    if args.auth_disabled {
        tracing::warn!(
            "API authentication is DISABLED (AUTH_DISABLED): anyone who can reach this service may do anything. Use this only locally."
        );
    }
    let cors_origins = args
        .cors_allowed_origins
        .iter()
        .map(|origin| origin.trim())
        .filter(|origin| !origin.is_empty())
        .map(|origin| {
            origin
                .parse()
                .with_context(|| format!("CORS_ALLOWED_ORIGINS: {origin:?} is not a valid origin"))
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(AuthSettings {
        enabled: !args.auth_disabled,
        rate_limit: RateLimit::new(args.rate_limit_per_second, args.rate_limit_burst),
        anonymous_rate_limit: RateLimit::new(
            args.anonymous_rate_limit_per_second,
            args.anonymous_rate_limit_burst,
        ),
        metrics_public: args.metrics_public,
        cors_origins,
    })
}

fn policy(args: &ClusterArgs) -> anyhow::Result<RunPolicy> {
    let limits = &args.run_limits;
    let limits = RunLimits {
        max_completions: Some(limits.max_run_completions),
        max_parallelism: Some(limits.max_run_parallelism),
        max_pods: Some(limits.max_run_pods),
        max_cpu: Some(limits.max_run_cpu.clone()),
        max_memory: Some(limits.max_run_memory.clone()),
        max_extended_resource: Some(limits.max_run_extended_resource),
        max_active_deadline_seconds: Some(limits.max_run_active_deadline_seconds),
    };
    let mut errors = crate::domain::validation::Errors::new();
    limits.collect_errors("run limits", &mut errors);
    errors.finish().context("MAX_RUN_* settings")?;
    let mut sandbox = Sandbox::new(&SandboxSettings {
        annotations: &args.sandbox.allowed_annotations,
        tolerations: &args.sandbox.allowed_tolerations,
        node_selectors: &args.sandbox.allowed_node_selectors,
        tolerate_all_taints: args.sandbox.allow_tolerate_all_taints,
    })
    .map_err(anyhow::Error::msg)?;
    sandbox.env_from_cluster = args.sandbox.allow_env_from_cluster;
    sandbox.volume_kinds =
        crate::domain::template::VolumeKinds::parse(&args.sandbox.allowed_volume_kinds)
            .map_err(anyhow::Error::msg)?;
    Ok(RunPolicy {
        namespaces: args.job_namespaces(),
        job_name_prefix: args.job_name_prefix.clone(),
        service_accounts: args.service_accounts.clone(),
        limits,
        sandbox,
    })
}

fn runtime(
    args: &ClusterArgs,
    db: sqlx::PgPool,
    client: kube::Client,
    policy: Arc<RunPolicy>,
    notifications: store::notify::Notifications,
    caps: Caps,
) -> Runtime {
    let cluster = Cluster::new(
        crate::cluster::with_timeout(
            client,
            Duration::from_secs(args.kube_request_timeout_secs.max(1)),
        ),
        ClusterSettings {
            installation: args.installation.clone(),
            namespaces: args.job_namespaces(),
            job_name_prefix: args.job_name_prefix.clone(),
            run_as_non_root: args.run_as_non_root,
        },
    );
    let instance = format!(
        "{}-{}",
        std::env::var("POD_NAME").unwrap_or_else(|_| "local".into()),
        uuid::Uuid::new_v4().simple()
    );
    let archiver = Archiver::new(
        db.clone(),
        cluster.clone(),
        LogSettings {
            cap_bytes: args.log_cap_bytes.max(1024),
            capture_timeout: Duration::from_secs(args.log_capture_timeout_secs),
            concurrency: args.log_capture_concurrency.max(1),
            lease: Duration::from_secs(args.launch_lease_secs.max(5)),
            flush_interval: Duration::from_millis(args.log_flush_ms.max(10)),
            max_age: (args.log_max_age_hours > 0)
                .then(|| Duration::from_secs(args.log_max_age_hours * 3600)),
            sweep_interval: Duration::from_millis(args.log_sweep_interval_ms.max(10)),
            stall_timeout: Duration::from_secs(args.log_stall_timeout_secs.max(1)),
        },
        instance.clone(),
    );
    let default_namespace = policy
        .namespaces
        .first()
        .cloned()
        .unwrap_or_else(|| "default".into());
    Runtime {
        db,
        cluster,
        archiver,
        settings: RuntimeSettings {
            instance,
            launch_lease: Duration::from_secs(args.launch_lease_secs),
            launch_concurrency: args.launch_concurrency.max(1),
            max_queue_wait: Duration::from_secs(args.max_queue_wait_secs),
            launcher_poll: Duration::from_millis(args.launcher_poll_ms.max(10)),
            reconcile_interval: Duration::from_secs(args.reconcile_interval_secs.max(1)),
            tracker_concurrency: args.tracker_concurrency.max(1),
            retention: retention(&args.retention),
            watch_timeout_secs: args.kube_watch_timeout_secs.max(1),
            permission_check_interval: Duration::from_secs(
                args.permission_check_interval_secs.max(1),
            ),
            policy,
            finished_job_ttl_secs: (args.finished_job_ttl_secs >= 0)
                .then_some(args.finished_job_ttl_secs),
            max_pending: Duration::from_secs(args.max_pending_secs.max(1)),
            caps,
            reporter: reporter(&args.report),
            admission: crate::domain::queue::Admission {
                max_active: args.max_active_runs,
                max_active_per_namespace: args.max_active_runs_per_namespace,
                default_namespace,
                aging_secs: args.priority_aging_secs,
            },
        },
        clock: Arc::new(SystemClock),
        notifications,
        final_runs: Default::default(),
    }
}

fn reporter(args: &ReportArgs) -> ReporterSettings {
    ReporterSettings {
        concurrency: args.report_concurrency,
        poll: Duration::from_millis(args.report_poll_ms.max(10)),
        timeout: Duration::from_secs(args.report_timeout_secs.max(1)),
        retry_min: Duration::from_millis(args.report_retry_min_ms.max(1)),
        retry_max: Duration::from_secs(args.report_retry_max_secs.max(1)),
        give_up_after: Duration::from_secs(args.report_give_up_hours.saturating_mul(3600).max(60)),
        public_base_url: args
            .public_base_url
            .as_deref()
            .map(str::trim)
            .filter(|url| !url.is_empty())
            .map(str::to_owned),
    }
}

fn retention(args: &RetentionArgs) -> RetentionSettings {
    const HOUR: u64 = 3600;
    RetentionSettings {
        interval: Duration::from_millis(args.prune_interval_ms.max(10)),
        batch_size: i64::from(args.prune_batch_size.max(1)),
        pause: Duration::from_millis(args.prune_pause_ms),
        max_age: (args.run_max_age_hours > 0)
            .then(|| Duration::from_secs(args.run_max_age_hours.saturating_mul(HOUR))),
        max_count: (args.run_max_count > 0).then(|| args.run_max_count.min(i64::MAX as u64) as i64),
        schedule_record_max_age: Duration::from_secs(
            args.schedule_record_max_age_hours.saturating_mul(HOUR),
        ),
    }
}

/// Cancels `token` on SIGTERM or Ctrl-C.
pub fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("installing the SIGTERM handler");
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutdown requested");
        token.cancel();
    });
}

#[cfg(test)]
mod tests {
    use crate::config::{Cli, Command};
    use clap::Parser;

    fn policy(extra: &[&str]) -> anyhow::Result<crate::domain::RunPolicy> {
        let mut argv = vec![
            "vfi-orchestrator",
            "serve",
            "--database-url",
            "postgres://x",
        ];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Serve(args) => super::policy(&args.cluster),
            _ => unreachable!(),
        }
    }

    /// Issue 18: `ALLOWED_VOLUME_KINDS` is none by default; hostPath in it is a start-up error
    /// (it is always refused), as is a kind the service does not know.
    #[test]
    fn allowed_volume_kinds_default_to_none_and_host_path_stops_the_start() {
        use crate::domain::template::VolumeKind;
        let kinds = policy(&[]).unwrap().sandbox.volume_kinds;
        assert!(!kinds.allows(VolumeKind::EmptyDir));
        let kinds = policy(&["--allowed-volume-kinds", "emptyDir,configMap"])
            .unwrap()
            .sandbox
            .volume_kinds;
        assert!(kinds.allows(VolumeKind::EmptyDir) && kinds.allows(VolumeKind::ConfigMap));
        let error = policy(&["--allowed-volume-kinds", "emptyDir,hostPath"]).unwrap_err();
        assert!(error.to_string().contains("always refused"), "{error}");
        assert!(policy(&["--allowed-volume-kinds", "nfs"]).is_err());
    }
}
