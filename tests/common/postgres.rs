//! A PostgreSQL server of a test's own (not the shared one), which the test may stop and start
//! again: `pg_ctl stop -m fast` ends open sessions with SQLSTATE 57P01, as a real failover or
//! restart does.

use std::path::PathBuf;
use vfi_orchestrator::dev::Postgres;

pub struct OwnPostgres {
    server: Option<Postgres>,
    dir: PathBuf,
}

impl OwnPostgres {
    /// initdb in a fresh temporary folder and start on a free port, with migrations applied.
    pub async fn start() -> (OwnPostgres, sqlx::PgPool) {
        let dir = std::env::temp_dir().join(format!("vfi-test-pg-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        // The server runs as the postgres user when the tests run as root: it must reach the
        // data folder inside.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let data = dir.join("data");
        let server = tokio::task::spawn_blocking(move || Postgres::start(&data))
            .await
            .unwrap()
            .expect("a throwaway PostgreSQL starts");
        let pg = OwnPostgres {
            server: Some(server),
            dir,
        };
        let pool = vfi_orchestrator::store::pool(&pg.url(), 20).unwrap();
        vfi_orchestrator::store::migrate(&pool).await.unwrap();
        (pg, pool)
    }

    pub fn url(&self) -> String {
        self.server.as_ref().unwrap().url()
    }

    /// `pg_ctl stop -m fast`, waiting until it is down.
    pub async fn stop_fast(&mut self) {
        let mut server = self.server.take().unwrap();
        let server = tokio::task::spawn_blocking(move || {
            server.stop_fast();
            server
        })
        .await
        .unwrap();
        self.server = Some(server);
    }

    /// Starts it again on the same port, waiting until it accepts connections.
    pub async fn restart(&mut self) {
        let mut server = self.server.take().unwrap();
        let server = tokio::task::spawn_blocking(move || {
            server.restart().expect("PostgreSQL starts again");
            server
        })
        .await
        .unwrap();
        self.server = Some(server);
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.stop();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
