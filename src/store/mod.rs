//! All SQL of the service. Functions take any executor (pool, connection or transaction) so the
//! caller decides what is atomic. This is the only module that writes run status,
//! all of it through [`status::write`].

pub mod event_feed;
pub mod events;
pub mod idempotency;
pub mod logs;
pub mod notify;
pub mod outbox;
pub mod pods;
pub mod queue;
pub mod retention;
pub mod runs;
pub mod schedules;
pub mod status;
pub mod tasks;
pub mod tokens;
pub mod triggers;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use std::str::FromStr;
use std::time::Duration;

/// The migrations in `migrations/`, embedded in the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!();

/// Opens a connection pool. Connections are made lazily, so the service starts (and answers
/// `/healthz`, and `/readyz` with 503) while the database is still coming up.
pub fn pool(database_url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    let options = PgConnectOptions::from_str(database_url)?.application_name("vfi-orchestrator");
    // A call that cannot get a connection within 5 s fails (503 for a request, another look
    // later for a loop) rather than waiting for the database to return.
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(options))
}

/// Applies pending migrations. Safe to run from several replicas at once: sqlx takes a Postgres
/// advisory lock around it.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}

/// True when every embedded migration has been applied successfully.
pub async fn migrations_applied(pool: &PgPool) -> Result<bool, sqlx::Error> {
    let applied: Vec<i64> = match sqlx::query_scalar(
        "SELECT version FROM _sqlx_migrations WHERE success ORDER BY version",
    )
    .fetch_all(pool)
    .await
    {
        Ok(versions) => versions,
        // No migrations table yet: nothing applied.
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P01") => return Ok(false),
        Err(e) => return Err(e),
    };
    Ok(MIGRATOR
        .iter()
        .all(|m| applied.binary_search(&m.version).is_ok()))
}
