//! Builds the application state, runs the HTTP server and the loops, and owns shutdown: one
//! cancellation token stops them all, with a deadline for in-flight requests.

use crate::cluster::jobs::Cluster;
use crate::cluster::ClusterSettings;
use crate::config::{ClusterArgs, ServeArgs};
use crate::domain::RunPolicy;
use crate::http::{self, AppState, EventHub, Limits};
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
    pub shutdown_timeout: Duration,
}

impl App {
    /// Connects to the database and to the cluster of the kubeconfig (or the in-cluster service
    /// account), and binds the listener.
    pub async fn build(args: &ServeArgs) -> anyhow::Result<App> {
        let client = kube::Client::try_default()
            .await
            .context("no Kubernetes configuration: set KUBECONFIG, or run in a cluster")?;
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
        let state = AppState {
            db: db.clone(),
            limits: Arc::new(Limits {
                max_body_bytes: args.max_body_bytes,
                request_timeout: Duration::from_secs(args.request_timeout_secs),
            }),
            policy: Arc::new(policy(&args.cluster)),
            events: EventHub::new(db.clone()),
        };
        Ok(App {
            state,
            runtime: runtime(&args.cluster, db, client),
            listener,
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
        let server = axum::serve(self.listener, router).with_graceful_shutdown({
            let shutdown = shutdown.clone();
            // Event streams never end by themselves: end them, or they would hold the server up.
            async move {
                shutdown.cancelled().await;
                events.close();
            }
        });
        let server = tokio::spawn(std::future::IntoFuture::into_future(server));

        let (names, handles): (Vec<_>, Vec<_>) =
            loops.into_iter().map(|l| (l.name, l.handle)).unzip();
        let mut handles = futures::future::select_all(handles);
        tokio::select! {
            _ = shutdown.cancelled() => {}
            (result, index, rest) = &mut handles => {
                tracing::error!(loop_name = %names[index], ?result, "a loop stopped on its own; shutting down");
                shutdown.cancel();
                handles = futures::future::select_all(rest);
            }
        }
        match tokio::time::timeout(self.shutdown_timeout, server).await {
            Ok(joined) => joined.context("server task")?.context("server")?,
            Err(_) => tracing::warn!("in-flight requests did not finish in time; stopping anyway"),
        }
        for handle in handles.into_inner() {
            let _ = tokio::time::timeout(Duration::from_secs(5), handle).await;
        }
        self.state.db.close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

fn policy(args: &ClusterArgs) -> RunPolicy {
    RunPolicy {
        namespaces: args.namespaces.clone(),
        service_accounts: args.service_accounts.clone(),
    }
}

fn runtime(args: &ClusterArgs, db: sqlx::PgPool, client: kube::Client) -> Runtime {
    Runtime {
        db,
        cluster: Cluster {
            client,
            settings: Arc::new(ClusterSettings {
                installation: args.installation.clone(),
                namespaces: args.namespaces.clone(),
                job_name_prefix: args.job_name_prefix.clone(),
            }),
        },
        settings: RuntimeSettings {
            instance: format!(
                "{}-{}",
                std::env::var("POD_NAME").unwrap_or_else(|_| "local".into()),
                uuid::Uuid::new_v4().simple()
            ),
            launch_lease: Duration::from_secs(args.launch_lease_secs),
            launch_concurrency: args.launch_concurrency.max(1),
            max_queue_wait: Duration::from_secs(args.max_queue_wait_secs),
            launcher_poll: Duration::from_millis(args.launcher_poll_ms.max(10)),
            reconcile_interval: Duration::from_secs(args.reconcile_interval_secs.max(1)),
        },
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
