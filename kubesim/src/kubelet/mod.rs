//! The simulated nodes: scheduling (a fixed pod capacity, and the configured nodes' fit), the pod lifecycle a kubelet drives
//! (Pending/unschedulable -> ContainerCreating -> Running -> Succeeded/Failed, restarts under
//! `OnFailure`, kills on deletion, evictions, pod activeDeadlineSeconds) and the status it
//! reports. It is the only writer of pod *status*; it never touches Jobs. Containers are run by
//! a pluggable [`Runner`]: [`ScriptedRunner`] (default) or [`HostRunner`].
//!
//! Depends on: `timers` (it schedules its own start/deadline/restart/log-removal timers),
//! `store`, `logs`, `events`, `scheduling`, `behaviour`, `objects`, `validation`; never on
//! `controller`, which drives it.
//!
//! Here: the node's state, the pod lifecycle's entry points (`reconcile` of each pod event,
//! `forget`, eviction, deadline, log removal). Binding queued pods is in `binding`, starting a
//! container (image pull, runner launch) in `start`, container exits (restart policy,
//! CrashLoopBackOff, terminal status) in `exit`, the status pieces in `status`.

mod binding;
pub mod env;
mod exit;
pub mod host;
mod mount;
pub mod runner;
pub mod scripted;
mod start;
mod status;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ContainerState, ContainerStateTerminated, Pod};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use host::HostRunner;
pub use runner::{RunOutcome, RunSpec, Runner};
pub use scripted::ScriptedRunner;

use crate::behaviour::Behaviour;
use crate::events::Source;
use crate::logs::Logs;
use crate::objects::{is_terminal, phase};
use crate::store::{ObjKey, Store};
use crate::timers::{Timer, Timers};
use status::{cond, first_container, set_cond};

pub use crate::scheduling::NODE_NAME;
pub const HOST_IP: &str = "10.0.0.10";

/// A container instance finished.
#[derive(Debug)]
pub struct Exit {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub restart_count: i32,
    pub outcome: RunOutcome,
}

struct Running {
    kill: CancellationToken,
    restart_count: i32,
}

/// Why the kubelet is stopping a running container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KillReason {
    Deleted,
    Evicted,
    Deadline,
}

pub struct Kubelet {
    store: Arc<Store>,
    logs: Arc<Logs>,
    runner: Arc<dyn Runner>,
    capacity: usize,
    start_delay: Duration,
    /// Pods bound to the node and not yet terminal: what capacity counts.
    bound: HashSet<String>,
    queue: VecDeque<(ObjKey, String)>,
    queued: HashSet<String>,
    running: HashMap<String, Running>,
    killing: HashMap<String, KillReason>,
    /// Queued pods already reported Unschedulable.
    marked_unschedulable: HashSet<String>,
    /// Pods with a start timer pending (so repeated events do not add more timers).
    starting: HashSet<String>,
    attempts: HashMap<String, u32>,
    exits: mpsc::UnboundedSender<Exit>,
    next_ip: AtomicU64,
    behaviour: Arc<Behaviour>,
    /// The node and the resources of each bound pod, by pod uid (what the scheduler counts as
    /// in use).
    bound_requests: HashMap<String, (String, BTreeMap<String, f64>)>,
    /// Pods whose image could not be pulled, with the number of attempts so far.
    pull_failures: HashMap<String, u32>,
    /// How long after a deleted pod's containers ended their logs are removed (see
    /// `SimConfig::log_removal_delay`); `None` keeps them.
    pub log_removal_delay: Option<Duration>,
    /// Deleted pods whose log removal is scheduled.
    removing_logs: HashSet<String>,
    /// The first restart back-off of a failed container (see `SimConfig::restart_backoff`);
    /// zero restarts at once.
    pub restart_backoff: Duration,
}

impl Kubelet {
    pub fn new(
        store: Arc<Store>,
        logs: Arc<Logs>,
        runner: Arc<dyn Runner>,
        capacity: usize,
        start_delay: Duration,
        exits: mpsc::UnboundedSender<Exit>,
        behaviour: Arc<Behaviour>,
    ) -> Kubelet {
        Kubelet {
            store,
            logs,
            runner,
            capacity: capacity.max(1),
            start_delay,
            bound: HashSet::new(),
            queue: VecDeque::new(),
            queued: HashSet::new(),
            running: HashMap::new(),
            killing: HashMap::new(),
            starting: HashSet::new(),
            marked_unschedulable: HashSet::new(),
            attempts: HashMap::new(),
            exits,
            next_ip: AtomicU64::new(0),
            behaviour,
            bound_requests: HashMap::new(),
            pull_failures: HashMap::new(),
            log_removal_delay: None,
            removing_logs: HashSet::new(),
            restart_backoff: Duration::ZERO,
        }
    }

    fn key(pod: &Pod) -> ObjKey {
        (
            pod.metadata.namespace.clone().unwrap_or_default(),
            pod.metadata.name.clone().unwrap_or_default(),
        )
    }

    fn uid(pod: &Pod) -> String {
        pod.metadata.uid.clone().unwrap_or_default()
    }

    /// Writes a pod's status if it is still the same pod (uid) and the closure wants to.
    fn write(&self, key: &ObjKey, uid: &str, f: impl FnOnce(&mut Pod)) -> Option<Arc<Pod>> {
        self.store
            .update::<Pod>(&key.0, &key.1, |p| {
                if p.metadata.uid.as_deref() != Some(uid) {
                    return Err(crate::error::Status::conflict("pods", &key.1));
                }
                f(p);
                Ok(())
            })
            .ok()
            .flatten()
    }

    /// The pod at `key` if it is still the pod `uid`, not being deleted, not finished, and
    /// without a running container: one whose container may (re)start.
    fn startable(&self, key: &ObjKey, uid: &str) -> Option<Arc<Pod>> {
        let pod = self.store.get::<Pod>(&key.0, &key.1)?;
        let stale = Self::uid(&pod) != uid
            || pod.metadata.deletion_timestamp.is_some()
            || is_terminal(&pod)
            || self.running.contains_key(uid);
        (!stale).then_some(pod)
    }

    /// Brings the node's view of one pod in line with the stored object. Idempotent: called for
    /// every pod event and on resync.
    pub fn reconcile(&mut self, pod: &Pod, timers: &mut Timers) {
        let uid = Self::uid(pod);
        let key = Self::key(pod);
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        if pod.metadata.deletion_timestamp.is_some() {
            if let Some(r) = self.running.get(&uid) {
                self.killing
                    .entry(uid.clone())
                    .or_insert(KillReason::Deleted);
                r.kill.cancel();
                return;
            }
            if !is_terminal(pod) {
                let started = pod
                    .status
                    .as_ref()
                    .and_then(|s| s.container_statuses.as_ref())
                    .is_some();
                self.write(&key, &uid, |p| {
                    let st = p.status.get_or_insert_with(Default::default);
                    st.phase = Some("Failed".into());
                    if started {
                        for cs in st.container_statuses.iter_mut().flatten() {
                            cs.ready = false;
                            cs.started = Some(false);
                            cs.state = Some(ContainerState {
                                terminated: Some(ContainerStateTerminated {
                                    exit_code: 137,
                                    reason: Some("ContainerStatusUnknown".into()),
                                    message: Some("The container could not be located when the pod was terminated".into()),
                                    ..Default::default()
                                }),
                                ..Default::default()
                            });
                        }
                    }
                });
            }
            self.release(&uid);
            if pod.metadata.deletion_grace_period_seconds.unwrap_or(0) != 0 {
                self.finish_deletion(&key, &uid);
            }
            // The containers of a deleted pod are garbage-collected, logs included, even while
            // a finalizer keeps the pod object.
            if let Some(delay) = self.log_removal_delay {
                if self.removing_logs.insert(uid.clone()) {
                    timers.add(delay, Timer::RemoveLogs(uid));
                }
            }
            self.try_schedule(timers);
            return;
        }
        if is_terminal(pod) {
            self.release(&uid);
            self.try_schedule(timers);
            return;
        }
        if node.is_empty() {
            if self.queued.insert(uid.clone()) {
                self.queue.push_back((key, uid));
            }
            self.try_schedule(timers);
            return;
        }
        if !self.bound.contains(&uid) {
            // Bound by someone else (created with nodeName) or seen again after a resync.
            self.bound.insert(uid.clone());
        }
        let waiting = first_container(pod)
            .and_then(|c| c.state.as_ref())
            .is_some_and(|s| s.waiting.is_some());
        let no_status = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .is_none();
        if (waiting || no_status)
            && !self.pull_failures.contains_key(&uid)
            && !self.running.contains_key(&uid)
            && phase(pod) == "Pending"
            && self.starting.insert(uid.clone())
        {
            timers.add(self.start_delay_of(pod), Timer::StartPod(key, uid));
        }
    }

    /// The pod object is gone.
    pub fn forget(&mut self, pod: &Pod, timers: &mut Timers) {
        let uid = Self::uid(pod);
        if let Some(r) = self.running.get(&uid) {
            r.kill.cancel();
        }
        self.release(&uid);
        self.queued.remove(&uid);
        self.starting.remove(&uid);
        self.marked_unschedulable.remove(&uid);
        self.pull_failures.remove(&uid);
        self.removing_logs.remove(&uid);
        self.logs.remove_pod(&uid);
        self.try_schedule(timers);
    }

    /// How long this pod's container takes to start: the scripted `KUBESIM_START_DELAY_MS` of
    /// its first container (slow image pulls, init work), else the simulator's start delay.
    fn start_delay_of(&self, pod: &Pod) -> Duration {
        pod.spec
            .as_ref()
            .and_then(|s| s.containers.first())
            .and_then(|c| c.env.as_ref())
            .and_then(|env| {
                env.iter()
                    .rev()
                    .find(|e| e.name == "KUBESIM_START_DELAY_MS")
            })
            .and_then(|e| e.value.as_deref()?.trim().parse().ok())
            .map(Duration::from_millis)
            .unwrap_or(self.start_delay)
    }

    /// Container garbage collection of a deleted pod: its logs are gone.
    pub fn remove_logs(&mut self, uid: &str) {
        self.removing_logs.remove(uid);
        self.logs.remove_pod(uid);
    }

    fn release(&mut self, uid: &str) {
        self.bound.remove(uid);
        self.bound_requests.remove(uid);
    }

    /// Tries the queued pods again (something they wait for, such as a claim, changed).
    pub fn reschedule(&mut self, timers: &mut Timers) {
        self.try_schedule(timers);
    }

    fn record(&self, pod: &Pod, warning: bool, reason: &str, message: &str, source: Source) {
        self.behaviour
            .events
            .record(&self.store, pod, warning, reason, message, source);
    }

    fn finish_deletion(&self, key: &ObjKey, uid: &str) {
        self.write(key, uid, |p| {
            p.metadata.deletion_grace_period_seconds = Some(0);
        });
    }

    /// Kills every running container (the simulator is shutting down).
    pub fn kill_all(&mut self) {
        for r in self.running.values() {
            r.kill.cancel();
        }
    }

    /// Node-pressure eviction of a pod: its container is killed and the pod fails (it is not
    /// deleted; the Job controller sees a Failed pod).
    pub fn evict(&mut self, namespace: &str, name: &str) {
        let Some(pod) = self.store.get::<Pod>(namespace, name) else {
            return;
        };
        let uid = Self::uid(&pod);
        if let Some(r) = self.running.get(&uid) {
            self.killing.insert(uid.clone(), KillReason::Evicted);
            r.kill.cancel();
        } else if !is_terminal(&pod) {
            let key = Self::key(&pod);
            self.write(&key, &uid, |p| {
                let st = p.status.get_or_insert_with(Default::default);
                st.phase = Some("Failed".into());
                st.reason = Some("Evicted".into());
                st.message = Some("The node was low on resource: memory. ".into());
                set_cond(
                    st,
                    cond("DisruptionTarget", true, Some("TerminationByKubelet"), None),
                );
            });
            self.release(&uid);
        }
    }

    /// Pod-level activeDeadlineSeconds elapsed.
    pub fn deadline(&mut self, key: &ObjKey, uid: &str) {
        if let Some(r) = self.running.get(uid) {
            self.killing.insert(uid.to_string(), KillReason::Deadline);
            r.kill.cancel();
        }
        let _ = key;
    }
}
