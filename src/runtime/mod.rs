//! Long-lived loops that act on the cluster: the launcher turns queued runs into Jobs, the
//! tracker reconciles each Job (and its pods) as their watches report changes and every
//! unfinished run after each re-list, the scheduler starts scheduled runs on time, the pruner
//! keeps the history within its limits, the reporter delivers the outbox (commit statuses and
//! notifications, through src/outbound/).
//! Each loop takes the shared state and a cancellation token, and never dies on one bad item.

pub mod archiver;
pub mod canceller;
pub mod launcher;
pub mod param_secrets;
pub mod pending;
pub mod pruner;
pub mod reporter;
pub mod requeue;
pub mod scheduler;
pub mod tracker;

use crate::clock::Clock;
use crate::cluster::jobs::Cluster;
use crate::store::notify::Notifications;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Settings of the loops.
#[derive(Debug, Clone)]
pub struct RuntimeSettings {
    /// This process's name in launch leases.
    pub instance: String,
    /// How long a launcher holds a run it is creating before another may take over.
    pub launch_lease: Duration,
    /// Jobs created at once.
    pub launch_concurrency: usize,
    /// A run still not launched after this long fails (reason `LaunchTimeout`).
    pub max_queue_wait: Duration,
    /// How often the launcher looks for due retries when nothing wakes it.
    pub launcher_poll: Duration,
    /// How often the whole cluster is listed and compared with the database.
    pub reconcile_interval: Duration,
    /// Jobs the tracker reconciles at once, per namespace.
    pub tracker_concurrency: usize,
    /// How the pruner keeps the history within its limits.
    pub retention: pruner::RetentionSettings,
    /// The `timeoutSeconds` of the tracker's watches.
    pub watch_timeout_secs: u32,
    /// How often the service's Kubernetes permissions are checked again.
    pub permission_check_interval: Duration,
    /// What a run may ask of the cluster; the scheduler checks each scheduled run against it, and
    /// the launcher each run right before creating its Job, since limits may have tightened
    /// after the run was queued or the task saved.
    pub policy: Arc<crate::domain::RunPolicy>,
    /// `ttlSecondsAfterFinished` given to finished Jobs that have none, once their outcome is
    /// recorded; `None` leaves them.
    pub finished_job_ttl_secs: Option<i32>,
    /// A run pending (its Job created, no pod running) longer than this fails with the reason
    /// it waited for.
    pub max_pending: Duration,
    /// The caps the scheduler's runs are held to, as the API's are.
    pub caps: crate::domain::Caps,
    /// How the reporter delivers the outbox.
    pub reporter: reporter::ReporterSettings,
    /// The installation's limits on active runs and the priority aging step.
    pub admission: crate::domain::queue::Admission,
}

/// What the loops share.
#[derive(Clone)]
pub struct Runtime {
    pub db: PgPool,
    pub cluster: Cluster,
    pub settings: RuntimeSettings,
    pub archiver: archiver::Archiver,
    /// The scheduler's time (the system clock, or a manual one in tests). Only the scheduler
    /// reads it; everything else keeps real time.
    pub clock: Arc<dyn Clock>,
    /// The process's one notification hub: the launcher, canceller and scheduler wake on it
    /// (and so do the event stream and token revocations under http/).
    pub notifications: Notifications,
    /// The API's cache of final runs: the pruner forgets the runs it deletes.
    pub final_runs: crate::store::runs::FinalRuns,
}

/// A running loop, named for the logs.
pub struct Loop {
    pub name: String,
    pub handle: JoinHandle<()>,
}

/// Starts every loop.
pub fn spawn(runtime: Runtime, shutdown: CancellationToken) -> Vec<Loop> {
    let mut loops = vec![
        Loop {
            name: "launcher".into(),
            handle: tokio::spawn(launcher::run(runtime.clone(), shutdown.clone())),
        },
        Loop {
            name: "canceller".into(),
            handle: tokio::spawn(canceller::run(runtime.clone(), shutdown.clone())),
        },
    ];
    for namespace in runtime.cluster.settings.namespaces.clone() {
        loops.push(Loop {
            name: format!("tracker/{namespace}"),
            handle: tokio::spawn(tracker::track(
                runtime.clone(),
                namespace.clone(),
                shutdown.clone(),
            )),
        });
        loops.push(Loop {
            name: format!("failed-create-tracker/{namespace}"),
            handle: tokio::spawn(tracker::track_failed_creates(
                runtime.clone(),
                namespace.clone(),
                shutdown.clone(),
            )),
        });
    }
    loops.push(Loop {
        name: "scheduler".into(),
        handle: tokio::spawn(scheduler::run(runtime.clone(), shutdown.clone())),
    });
    loops.push(Loop {
        name: "log-expiry".into(),
        handle: tokio::spawn(archiver::expire_logs(
            runtime.archiver.clone(),
            shutdown.clone(),
        )),
    });
    loops.push(Loop {
        name: "log-sweep".into(),
        handle: tokio::spawn(archiver::sweep(runtime.archiver.clone(), shutdown.clone())),
    });
    loops.push(Loop {
        name: "pruner".into(),
        handle: tokio::spawn(pruner::run(runtime.clone(), shutdown.clone())),
    });
    loops.push(Loop {
        name: "permission-check".into(),
        handle: tokio::spawn(check_permissions_periodically(
            runtime.clone(),
            shutdown.clone(),
        )),
    });
    loops.push(Loop {
        name: "reporter".into(),
        handle: tokio::spawn(reporter::run(runtime.clone(), shutdown.clone())),
    });
    loops.push(Loop {
        name: "param-secrets".into(),
        handle: tokio::spawn(param_secrets::run(runtime.clone(), shutdown.clone())),
    });
    loops.push(Loop {
        name: "pending-limit".into(),
        handle: tokio::spawn(pending::run(runtime.clone(), shutdown.clone())),
    });
    loops
}

/// Re-checks the service's Kubernetes permissions (a Role edited or deleted after start-up shows
/// in `/readyz` and the log). The start-up check is done by `App`.
async fn check_permissions_periodically(runtime: Runtime, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(runtime.settings.permission_check_interval) => {}
        }
        runtime.cluster.check_permissions().await;
    }
}
