//! Fault injection: the [`Faults`] handle that makes the API server misbehave the ways a real one
//! does (5xx/429 bursts with Retry-After, 410 Expired on watches, hung requests, latency,
//! outages, watch and log streams cut or stalled, evictions) and pauses the controller. It only
//! records what should go wrong; the HTTP middleware, the streams and the controller loop read it
//! and act.
//!
//! One implementation serves both doors: in-process tests call the methods below, and external
//! harnesses use the admin endpoint `/kubesim/faults` (see `api::admin`) or the `--fault-*`
//! start flags, all of which add a [`Fault`] (one enum of kinds, one JSON shape) through
//! [`Faults::add`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// Commands the controller loop executes on behalf of the fault handle.
#[derive(Debug)]
pub enum Command {
    Evict { namespace: String, name: String },
}

/// What goes wrong. Extend here (and in [`Fault::check`]) for new kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum FaultKind {
    /// Matching requests are answered `status` (a metav1.Status body, plus `Retry-After` when
    /// `retryAfter` is given), as an overloaded or failing API server answers.
    Error,
    /// Matching watch requests get HTTP 200 with one `ERROR` event carrying a 410 Expired
    /// Status, as a real server answers a watch from a compacted resourceVersion.
    WatchGone,
    /// Matching requests are accepted and not answered while the fault lasts; then they are
    /// carried out, even if their client has gone away meanwhile (a frozen API server's writes
    /// can land late).
    Hang,
    /// Matching requests first wait `delayMs`.
    Latency,
    /// Every request gets 503 and open watches are closed.
    Outage,
    /// Open watch and pod-log streams end now (one-shot; not kept in the list).
    CutStreams,
    /// Open watch and pod-log streams stay open but send no bytes while the fault lasts.
    StallStreams,
    /// The Job controller, GC, TTL and kubelet make no progress; the API keeps serving.
    PauseController,
}

/// One fault, as the admin endpoint takes it (JSON, camelCase) and lists it.
///
/// A fault lasts for `seconds` when given, applies to the next `count` matching requests when
/// given, and otherwise until it is deleted. `path` (a prefix of the request path) and `verb`
/// (the HTTP method) narrow the requests it applies to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Fault {
    pub kind: FaultKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds: Option<f64>,
    /// HTTP status of an `error` fault.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u32>,
    /// Delay of a `latency` fault, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verb: Option<String>,
}

impl Fault {
    pub fn new(kind: FaultKind) -> Fault {
        Fault {
            kind,
            count: None,
            seconds: None,
            status: None,
            retry_after: None,
            delay_ms: None,
            path: None,
            verb: None,
        }
    }

    /// Parses a start flag's value, `key=value` pairs separated by commas (the JSON fields,
    /// e.g. `status=503,count=10,verb=POST`), into a fault of `kind`.
    pub fn from_flag(kind: FaultKind, spec: &str) -> Result<Fault, String> {
        let mut map = serde_json::Map::new();
        map.insert("kind".into(), serde_json::to_value(kind).expect("a kind"));
        for pair in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| format!("{pair:?} is not key=value"))?;
            let value = serde_json::from_str(value)
                .unwrap_or_else(|_| serde_json::Value::String(value.into()));
            map.insert(key.trim().into(), value);
        }
        let fault: Fault =
            serde_json::from_value(serde_json::Value::Object(map)).map_err(|e| e.to_string())?;
        fault.check()?;
        Ok(fault)
    }

    /// Refuses a fault that cannot mean anything (names the field at fault).
    pub fn check(&self) -> Result<(), String> {
        if let Some(s) = self.seconds {
            if !(s.is_finite() && s > 0.0) {
                return Err("seconds: must be a positive number".into());
            }
        }
        if self.count == Some(0) {
            return Err("count: must be at least 1".into());
        }
        match self.kind {
            FaultKind::Error => match self.status {
                Some(400..=599) => Ok(()),
                _ => Err("status: an error fault needs an HTTP status between 400 and 599".into()),
            },
            FaultKind::Latency if self.delay_ms.is_none() => {
                Err("delayMs: a latency fault needs a delay".into())
            }
            _ => Ok(()),
        }
    }

    fn matches(&self, method: &str, path: &str) -> bool {
        self.verb
            .as_deref()
            .is_none_or(|v| v.eq_ignore_ascii_case(method))
            && self.path.as_deref().is_none_or(|p| path.starts_with(p))
    }
}

/// A fault in force, as listed by `GET /kubesim/faults`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ActiveFault {
    pub id: u64,
    #[serde(flatten)]
    pub fault: Fault,
    /// Matching requests still to be affected (for faults with a `count`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remaining: Option<u32>,
    /// Seconds until the fault ends (for faults with `seconds`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remaining_seconds: Option<f64>,
    #[serde(skip)]
    until: Option<Instant>,
}

impl ActiveFault {
    /// Still in its time (or without one).
    fn in_force(&self, now: Instant) -> bool {
        self.until.is_none_or(|u| now < u)
    }

    /// Applies to new requests.
    fn live(&self, now: Instant) -> bool {
        self.remaining != Some(0) && self.in_force(now)
    }

    /// Stays listed: live, or a hang whose count is used up while requests it caught still
    /// wait for its end.
    fn keep(&self, now: Instant) -> bool {
        self.live(now) || (self.fault.kind == FaultKind::Hang && self.in_force(now))
    }
}

/// What the request middleware must do with one request.
#[derive(Debug, Default)]
pub(crate) struct RequestFaults {
    pub(crate) outage: bool,
    /// Hold the request until this watch says the hang is over.
    pub(crate) hang: Option<(u64, Option<Instant>)>,
    pub(crate) latency: Duration,
    pub(crate) error: Option<(u16, Option<u32>)>,
}

pub(crate) struct FaultState {
    /// Bumped to close every open watch stream.
    pub(crate) drop_watches: watch::Sender<u64>,
    /// Bumped to close every open watch and log stream.
    pub(crate) cut_streams: watch::Sender<u64>,
    /// Streams send nothing until this time (`None`: not stalled).
    pub(crate) stalled_until: watch::Sender<Option<Instant>>,
    pub(crate) paused: watch::Sender<bool>,
    /// Bumped whenever the list changes, so hung requests notice their fault ended.
    changed: watch::Sender<u64>,
    active: Mutex<Vec<ActiveFault>>,
    next_id: AtomicU64,
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

/// Far enough to mean "until deleted" for stalls.
const FOREVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

impl Faults {
    pub(crate) fn new(commands: mpsc::UnboundedSender<Command>) -> Faults {
        Faults {
            state: Arc::new(FaultState {
                drop_watches: watch::channel(0).0,
                cut_streams: watch::channel(0).0,
                stalled_until: watch::channel(None).0,
                paused: watch::channel(false).0,
                changed: watch::channel(0).0,
                active: Mutex::new(Vec::new()),
                next_id: AtomicU64::new(1),
                cut_logs: watch::channel(0).0,
                stall_logs: watch::channel(0).0,
                log_requests: std::sync::atomic::AtomicU64::new(0),
                commands,
            }),
        }
    }

    fn active(&self) -> std::sync::MutexGuard<'_, Vec<ActiveFault>> {
        self.state.active.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Puts `fault` in force and returns its id. Must run inside a Tokio runtime when the fault
    /// has `seconds` (a timer ends it).
    pub fn add(&self, fault: Fault) -> Result<u64, String> {
        fault.check()?;
        let id = self.state.next_id.fetch_add(1, Ordering::SeqCst);
        let until = fault
            .seconds
            .map(|s| Instant::now() + Duration::from_secs_f64(s));
        match fault.kind {
            FaultKind::CutStreams => {
                self.cut_streams();
                return Ok(id);
            }
            FaultKind::Outage => self.drop_watches(),
            _ => {}
        }
        let kind = fault.kind;
        self.active().push(ActiveFault {
            id,
            remaining: fault.count,
            remaining_seconds: None,
            fault,
            until,
        });
        self.sync();
        if let Some(until) = until {
            if matches!(kind, FaultKind::PauseController | FaultKind::StallStreams) {
                let me = self.clone();
                tokio::spawn(async move {
                    tokio::time::sleep_until(until).await;
                    me.sync();
                });
            }
        }
        Ok(id)
    }

    /// The faults in force.
    pub fn list(&self) -> Vec<ActiveFault> {
        let now = Instant::now();
        let mut active = self.active();
        active.retain(|f| f.keep(now));
        active
            .iter()
            .cloned()
            .map(|mut f| {
                f.remaining_seconds = f.until.map(|u| (u - now).as_secs_f64());
                f
            })
            .collect()
    }

    /// Ends one fault; false when there is no such fault.
    pub fn remove(&self, id: u64) -> bool {
        let removed = {
            let mut active = self.active();
            let before = active.len();
            active.retain(|f| f.id != id);
            active.len() != before
        };
        self.sync();
        removed
    }

    /// Ends every fault.
    pub fn clear(&self) {
        self.active().clear();
        self.sync();
    }

    fn remove_kind(&self, kind: FaultKind) {
        self.active().retain(|f| f.fault.kind != kind);
    }

    /// Brings the channels the controller and the streams read in line with the list.
    fn sync(&self) {
        let now = Instant::now();
        let (paused, stall) = {
            let mut active = self.active();
            active.retain(|f| f.keep(now));
            let paused = active
                .iter()
                .any(|f| f.fault.kind == FaultKind::PauseController);
            let stall = active
                .iter()
                .filter(|f| f.fault.kind == FaultKind::StallStreams)
                .map(|f| f.until.unwrap_or(now + FOREVER))
                .max();
            (paused, stall)
        };
        self.state.paused.send_if_modified(|p| {
            let modified = *p != paused;
            *p = paused;
            modified
        });
        self.state.stalled_until.send_if_modified(|s| {
            let modified = *s != stall;
            *s = stall;
            modified
        });
        self.state.changed.send_modify(|g| *g += 1);
    }

    /// Closes every open watch stream now (clients see the connection end and re-watch).
    pub fn drop_watches(&self) {
        self.state.drop_watches.send_modify(|g| *g += 1);
    }

    /// Closes every open watch and pod-log stream now.
    pub fn cut_streams(&self) {
        self.drop_watches();
        self.state.cut_streams.send_modify(|g| *g += 1);
    }

    /// Open and new watch and log streams send nothing for `duration` (they stay open).
    pub fn stall_streams(&self, duration: Duration) {
        let _ = self.add(Fault {
            seconds: Some(duration.as_secs_f64()),
            ..Fault::new(FaultKind::StallStreams)
        });
    }

    /// The next `n` watch requests are answered with a 410 Expired ERROR event, as a real server
    /// answers a watch from a compacted resourceVersion.
    pub fn next_watches_gone(&self, n: u32) {
        self.remove_kind(FaultKind::WatchGone);
        if n > 0 {
            let _ = self.add(Fault {
                count: Some(n),
                ..Fault::new(FaultKind::WatchGone)
            });
        }
        self.sync();
    }

    /// The next `n` API requests fail with `status` (a metav1.Status body, plus `Retry-After`
    /// when given, e.g. 429 with Some(1)).
    pub fn fail_requests(&self, n: u32, status: u16, retry_after: Option<u32>) {
        self.remove_kind(FaultKind::Error);
        if n > 0 {
            let _ = self.add(Fault {
                count: Some(n),
                status: Some(status),
                retry_after,
                ..Fault::new(FaultKind::Error)
            });
        }
        self.sync();
    }

    /// Adds this delay before every API request is handled.
    pub fn set_latency(&self, latency: Duration) {
        self.remove_kind(FaultKind::Latency);
        if !latency.is_zero() {
            let _ = self.add(Fault {
                delay_ms: Some(latency.as_millis() as u64),
                ..Fault::new(FaultKind::Latency)
            });
        }
        self.sync();
    }

    /// While true, every request gets 503 and open watches are closed.
    pub fn set_outage(&self, on: bool) {
        self.remove_kind(FaultKind::Outage);
        if on {
            let _ = self.add(Fault::new(FaultKind::Outage));
        }
        self.sync();
    }

    /// Every matching request (all when `path`/`verb` are `None`) is accepted and left
    /// unanswered for `duration`.
    pub fn hang_requests(&self, duration: Duration) {
        let _ = self.add(Fault {
            seconds: Some(duration.as_secs_f64()),
            ..Fault::new(FaultKind::Hang)
        });
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
        self.remove_kind(FaultKind::PauseController);
        if paused {
            let _ = self.add(Fault::new(FaultKind::PauseController));
        }
        self.sync();
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

    /// Decides what happens to one request, taking one from each counted fault it meets.
    pub(crate) fn for_request(&self, method: &str, path: &str) -> RequestFaults {
        let now = Instant::now();
        let mut out = RequestFaults::default();
        let mut active = self.active();
        for f in active.iter_mut() {
            if !f.live(now) || !f.fault.matches(method, path) {
                continue;
            }
            let take = match f.fault.kind {
                FaultKind::Outage => {
                    out.outage = true;
                    false
                }
                FaultKind::Hang if out.hang.is_none() => {
                    out.hang = Some((f.id, f.until));
                    true
                }
                FaultKind::Latency => {
                    out.latency += Duration::from_millis(f.fault.delay_ms.unwrap_or(0));
                    true
                }
                FaultKind::Error if out.error.is_none() => {
                    out.error = Some((f.fault.status.unwrap_or(500), f.fault.retry_after));
                    true
                }
                _ => false,
            };
            if let (true, Some(n)) = (take, f.remaining.as_mut()) {
                *n = n.saturating_sub(1);
            }
        }
        active.retain(|f| f.keep(now));
        out
    }

    /// Waits while the hang fault `id` is in force (it ends with its time, or when deleted).
    pub(crate) async fn hang(&self, id: u64, until: Option<Instant>) {
        let mut changed = self.state.changed.subscribe();
        loop {
            let in_force = self.active().iter().any(|f| f.id == id);
            if !in_force {
                return;
            }
            tokio::select! {
                _ = async { match until { Some(u) => tokio::time::sleep_until(u).await, None => std::future::pending().await } } => return,
                r = changed.changed() => if r.is_err() { return },
            }
        }
    }

    /// Takes one injected "watch gone" for a watch of `path`, if any are in force.
    pub(crate) fn take_watch_gone(&self, path: &str) -> bool {
        let now = Instant::now();
        let mut active = self.active();
        let hit = active.iter_mut().find(|f| {
            f.fault.kind == FaultKind::WatchGone && f.live(now) && f.fault.matches("GET", path)
        });
        match hit {
            Some(f) => {
                if let Some(n) = f.remaining.as_mut() {
                    *n -= 1;
                }
                true
            }
            None => false,
        }
    }

    /// Wraps a watch or log stream's chunks so that [`Faults::cut_streams`] ends it and a stall
    /// holds its bytes back (the connection stays open).
    pub(crate) fn guard_stream(
        &self,
        rx: mpsc::Receiver<axum::body::Bytes>,
    ) -> impl futures::Stream<Item = Result<axum::body::Bytes, std::io::Error>> + Send + 'static
    {
        let mut cut = self.state.cut_streams.subscribe();
        cut.borrow_and_update();
        let stall = self.state.stalled_until.subscribe();
        futures::stream::unfold(
            (rx, cut, stall),
            |(mut rx, mut cut, mut stall)| async move {
                let chunk = tokio::select! {
                    chunk = rx.recv() => chunk?,
                    _ = cut.changed() => return None,
                };
                // A stalled stream keeps the chunk until the stall ends (or the stream is cut).
                loop {
                    let until = *stall.borrow_and_update();
                    match until {
                        Some(u) if u > Instant::now() => tokio::select! {
                            _ = tokio::time::sleep_until(u) => {}
                            r = stall.changed() => if r.is_err() { break },
                            _ = cut.changed() => return None,
                        },
                        _ => break,
                    }
                }
                Some((Ok(chunk), (rx, cut, stall)))
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_into_the_same_shape_as_the_endpoint() {
        let f = Fault::from_flag(FaultKind::Error, "status=503,count=10,verb=POST").unwrap();
        assert_eq!(f.status, Some(503));
        assert_eq!(f.count, Some(10));
        assert_eq!(f.verb.as_deref(), Some("POST"));
        let json: Fault = serde_json::from_value(serde_json::json!(
            {"kind": "error", "status": 503, "count": 10, "verb": "POST"}
        ))
        .unwrap();
        assert_eq!(f, json);
        assert!(Fault::from_flag(FaultKind::Error, "count=1")
            .unwrap_err()
            .contains("status"));
        assert!(Fault::from_flag(FaultKind::Hang, "seconds=-1").is_err());
        assert!(Fault::from_flag(FaultKind::Hang, "bogus=1").is_err());
    }
}
