//! Builds the application state, runs the HTTP server, and owns shutdown: one cancellation token
//! stops the server (and later the loops), with a deadline for in-flight requests.

use crate::config::ServeArgs;
use crate::http::{self, AppState, Limits};
use crate::store;
use anyhow::Context;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Everything `serve` needs, already connected.
pub struct App {
    pub state: AppState,
    pub listener: TcpListener,
    pub shutdown_timeout: Duration,
}

impl App {
    pub async fn build(args: &ServeArgs) -> anyhow::Result<App> {
        let db = store::pool(
            &args.database.database_url,
            args.database.db_max_connections,
        )
        .context("invalid DATABASE_URL")?;
        if args.migrate_on_start {
            store::migrate(&db).await.context("applying migrations")?;
        }
        let listener = TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let state = AppState {
            db,
            limits: Arc::new(Limits {
                max_body_bytes: args.max_body_bytes,
                request_timeout: Duration::from_secs(args.request_timeout_secs),
            }),
        };
        Ok(App {
            state,
            listener,
            shutdown_timeout: Duration::from_secs(args.shutdown_timeout_secs),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` is cancelled, then lets in-flight requests finish (up to the
    /// shutdown timeout).
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(addr = %self.listener.local_addr()?, "listening");
        let router = http::router(self.state.clone());
        let server = axum::serve(self.listener, router)
            .with_graceful_shutdown(shutdown.clone().cancelled_owned());
        let server = tokio::spawn(std::future::IntoFuture::into_future(server));
        shutdown.cancelled().await;
        match tokio::time::timeout(self.shutdown_timeout, server).await {
            Ok(joined) => joined.context("server task")?.context("server")?,
            Err(_) => tracing::warn!("in-flight requests did not finish in time; stopping anyway"),
        }
        self.state.db.close().await;
        tracing::info!("stopped");
        Ok(())
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
