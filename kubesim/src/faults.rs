//! Fault injection: the [`Faults`] handle tests use to make the API server misbehave the ways a
//! real one does (dropped watches, 410 Expired, 5xx/429 with Retry-After, latency, outages,
//! evictions) and to pause the controller. It only records what should go wrong; the HTTP
//! middleware, the watch streams and the controller loop read it and act.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

/// Commands the controller loop executes on behalf of the fault handle.
#[derive(Debug)]
pub enum Command {
    Evict { namespace: String, name: String },
}

#[derive(Debug, Default, Clone, Copy)]
struct FailRequests {
    remaining: u32,
    status: u16,
    retry_after: Option<u32>,
}

pub(crate) struct FaultState {
    /// Bumped to close every open watch stream.
    pub(crate) drop_watches: watch::Sender<u64>,
    watches_gone: AtomicU32,
    fail: Mutex<FailRequests>,
    latency: Mutex<Duration>,
    outage: AtomicBool,
    pub(crate) paused: watch::Sender<bool>,
    /// Bumped to end every open `pods/log` stream.
    pub(crate) cut_logs: watch::Sender<u64>,
    /// Bumped to make every open `pods/log` stream go silent while staying open.
    pub(crate) stall_logs: watch::Sender<u64>,
    /// `pods/log` requests served so far.
    pub(crate) log_requests: std::sync::atomic::AtomicU64,
    commands: mpsc::UnboundedSender<Command>,
}

/// A cheap-to-clone handle that injects faults into a running [`crate::KubeSim`].
#[derive(Clone)]
pub struct Faults {
    pub(crate) state: Arc<FaultState>,
}

impl Faults {
    pub(crate) fn new(commands: mpsc::UnboundedSender<Command>) -> Faults {
        Faults {
            state: Arc::new(FaultState {
                drop_watches: watch::channel(0).0,
                watches_gone: AtomicU32::new(0),
                fail: Mutex::new(FailRequests::default()),
                latency: Mutex::new(Duration::ZERO),
                outage: AtomicBool::new(false),
                paused: watch::channel(false).0,
                cut_logs: watch::channel(0).0,
                stall_logs: watch::channel(0).0,
                log_requests: std::sync::atomic::AtomicU64::new(0),
                commands,
            }),
        }
    }

    /// Closes every open watch stream now (clients see the connection end and re-watch).
    pub fn drop_watches(&self) {
        self.state.drop_watches.send_modify(|g| *g += 1);
    }

    /// The next `n` watch requests are answered with a 410 Expired ERROR event, as a real server
    /// answers a watch from a compacted resourceVersion.
    pub fn next_watches_gone(&self, n: u32) {
        self.state.watches_gone.store(n, Ordering::SeqCst);
    }

    /// The next `n` API requests fail with `status` (a metav1.Status body, plus `Retry-After`
    /// when given, e.g. 429 with Some(1)).
    pub fn fail_requests(&self, n: u32, status: u16, retry_after: Option<u32>) {
        *self.state.fail.lock().unwrap_or_else(|p| p.into_inner()) = FailRequests {
            remaining: n,
            status,
            retry_after,
        };
    }

    /// Adds this delay before every API request is handled.
    pub fn set_latency(&self, latency: Duration) {
        *self.state.latency.lock().unwrap_or_else(|p| p.into_inner()) = latency;
    }

    /// While true, every request gets 503 and open watches are closed.
    pub fn set_outage(&self, on: bool) {
        self.state.outage.store(on, Ordering::SeqCst);
        if on {
            self.drop_watches();
        }
    }

    /// Fails a running pod as a kubelet eviction does: phase Failed, reason Evicted.
    pub fn evict_pod(&self, namespace: &str, name: &str) {
        let _ = self.state.commands.send(Command::Evict {
            namespace: namespace.into(),
            name: name.into(),
        });
    }

    /// While true the Job controller and kubelet make no progress.
    pub fn pause_controller(&self, paused: bool) {
        self.state.paused.send_replace(paused);
    }

    /// Ends every open `pods/log` stream now, as a dropped connection between the API server
    /// and a kubelet (or a load balancer's idle cut) does: clients see the body end early and
    /// must reconnect. Streams opened afterwards are not affected.
    pub fn cut_log_streams(&self) {
        self.state.cut_logs.send_modify(|g| *g += 1);
    }

    /// Makes every open `pods/log` stream go silent without closing it, as a half-dead
    /// connection does (no FIN, no RST, no data): only a client-side progress timeout notices.
    /// Streams opened afterwards are not affected.
    pub fn stall_log_streams(&self) {
        self.state.stall_logs.send_modify(|g| *g += 1);
    }

    /// How many `pods/log` requests the API has received (to bound a client's retry loop).
    pub fn log_requests(&self) -> u64 {
        self.state.log_requests.load(Ordering::SeqCst)
    }

    pub(crate) fn latency(&self) -> Duration {
        *self.state.latency.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn outage(&self) -> bool {
        self.state.outage.load(Ordering::SeqCst)
    }

    /// Takes one injected request failure, if any are left.
    pub(crate) fn take_failure(&self) -> Option<(u16, Option<u32>)> {
        let mut f = self.state.fail.lock().unwrap_or_else(|p| p.into_inner());
        if f.remaining == 0 {
            return None;
        }
        f.remaining -= 1;
        Some((f.status, f.retry_after))
    }

    /// Takes one injected "watch gone", if any are left.
    pub(crate) fn take_watch_gone(&self) -> bool {
        self.state
            .watches_gone
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }
}
