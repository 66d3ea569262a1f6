//! The simulated nodes: scheduling (a fixed pod capacity, and the configured nodes' fit), the pod lifecycle a kubelet drives
//! (Pending/unschedulable -> ContainerCreating -> Running -> Succeeded/Failed, restarts under
//! `OnFailure`, kills on deletion, evictions, pod activeDeadlineSeconds) and the status it
//! reports. It is the only writer of pod *status*; it never touches Jobs. Containers are run by
//! a pluggable [`Runner`]: [`ScriptedRunner`] (default) or [`HostRunner`].
//!
//! Depends on: `timers` (it schedules its own start/deadline/restart/log-removal timers),
//! `store`, `logs`, `events`, `scheduling`, `behaviour`, `objects`, `validation`; never on
//! `controller`, which drives it.

pub mod host;
pub mod runner;
pub mod scripted;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, HostIP, Pod, PodCondition, PodIP, PodStatus,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use host::HostRunner;
pub use runner::{RunOutcome, RunSpec, Runner};
pub use scripted::ScriptedRunner;

use crate::behaviour::Behaviour;
use crate::events::{Source, KUBELET, SCHEDULER};
use crate::logs::Logs;
use crate::objects::{controller_ref, is_terminal, phase};
use crate::scheduling::{pick_node, requests};
use crate::store::{ObjKey, Store};
use crate::time::now_time;
use crate::timers::{Timer, Timers};
use crate::validation::COMPLETION_INDEX;

pub const NODE_NAME: &str = "kubesim-node-1";
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

fn cond(ty: &str, status: bool, reason: Option<&str>, message: Option<String>) -> PodCondition {
    PodCondition {
        type_: ty.into(),
        status: if status { "True" } else { "False" }.into(),
        reason: reason.map(Into::into),
        message,
        last_transition_time: Some(now_time()),
        ..Default::default()
    }
}

/// Sets a condition, keeping lastTransitionTime when the status does not change.
fn set_cond(status: &mut PodStatus, c: PodCondition) {
    let conds = status.conditions.get_or_insert_with(Vec::new);
    match conds.iter_mut().find(|x| x.type_ == c.type_) {
        Some(x) => {
            if x.status != c.status {
                *x = c;
            } else {
                x.reason = c.reason;
                x.message = c.message;
            }
        }
        None => conds.push(c),
    }
}

/// A container state `running` since `started`.
fn running_since(started: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> ContainerState {
    ContainerState {
        running: Some(ContainerStateRunning {
            started_at: Some(started.clone()),
        }),
        ..Default::default()
    }
}

fn container_id() -> String {
    format!(
        "containerd://{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

fn image_id(image: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    image.hash(&mut h);
    let digest = format!("{:016x}", h.finish());
    let repo = image.split(':').next().unwrap_or(image);
    let repo = if repo.contains('/') {
        repo.to_string()
    } else {
        format!("docker.io/library/{repo}")
    };
    format!("{repo}@sha256:{digest:0>64}")
}

fn container_names(pod: &Pod) -> Vec<(String, String)> {
    pod.spec
        .as_ref()
        .map(|s| {
            s.containers
                .iter()
                .map(|c| (c.name.clone(), c.image.clone().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default()
}

fn unready_message(pod: &Pod) -> String {
    let names: Vec<String> = container_names(pod).into_iter().map(|(n, _)| n).collect();
    format!("containers with unready status: [{}]", names.join(" "))
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
        let waiting = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|c| c.first())
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

    fn record(&self, pod: &Pod, warning: bool, reason: &str, message: &str, source: Source) {
        self.behaviour
            .events
            .record(&self.store, pod, warning, reason, message, source);
    }

    /// What bound pods use of each resource, by node.
    fn in_use(&self) -> BTreeMap<String, BTreeMap<String, f64>> {
        let mut used: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
        for (node, r) in self.bound_requests.values() {
            let on_node = used.entry(node.clone()).or_default();
            for (k, v) in r {
                *on_node.entry(k.clone()).or_insert(0.0) += v;
            }
        }
        used
    }

    fn finish_deletion(&self, key: &ObjKey, uid: &str) {
        self.write(key, uid, |p| {
            p.metadata.deletion_grace_period_seconds = Some(0);
        });
    }

    /// Binds every queued pod that fits, in order; the others stay queued and are reported
    /// Unschedulable once (PodScheduled=False with the scheduler's message, and a
    /// FailedScheduling Event), as kube-scheduler does.
    fn try_schedule(&mut self, timers: &mut Timers) {
        let mut still = VecDeque::new();
        while let Some((key, uid)) = self.queue.pop_front() {
            let full = self.bound.len() >= self.capacity;
            if full && self.marked_unschedulable.contains(&uid) {
                still.push_back((key, uid));
                continue;
            }
            let Some(pod) = self.store.get::<Pod>(&key.0, &key.1) else {
                self.queued.remove(&uid);
                self.marked_unschedulable.remove(&uid);
                continue;
            };
            if Self::uid(&pod) != uid
                || pod.metadata.deletion_timestamp.is_some()
                || is_terminal(&pod)
            {
                self.queued.remove(&uid);
                self.marked_unschedulable.remove(&uid);
                continue;
            }
            let placed = if full {
                let cap = self.capacity;
                Err(format!("0/1 nodes are available: 1 Too many pods (node capacity {cap}). preemption: 0/1 nodes are available: 1 No preemption victims found for incoming pod."))
            } else {
                pick_node(&self.behaviour.nodes, &pod, &self.in_use())
            };
            let message = match placed {
                Ok(node) => {
                    self.queued.remove(&uid);
                    self.marked_unschedulable.remove(&uid);
                    self.bound_requests
                        .insert(uid.clone(), (node.clone(), requests(&pod)));
                    self.bind(&key, &uid, &pod, &node);
                    self.starting.insert(uid.clone());
                    timers.add(self.start_delay_of(&pod), Timer::StartPod(key, uid));
                    continue;
                }
                Err(message) => message,
            };
            if self.marked_unschedulable.insert(uid.clone()) {
                let current = pod
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .and_then(|c| c.iter().find(|c| c.type_ == "PodScheduled"))
                    .and_then(|c| c.message.clone());
                if current.as_deref() != Some(message.as_str()) {
                    self.write(&key, &uid, |p| {
                        let st = p.status.get_or_insert_with(Default::default);
                        st.phase = Some("Pending".into());
                        set_cond(
                            st,
                            cond(
                                "PodScheduled",
                                false,
                                Some("Unschedulable"),
                                Some(message.clone()),
                            ),
                        );
                    });
                    self.record(&pod, true, "FailedScheduling", &message, SCHEDULER);
                }
            }
            still.push_back((key, uid));
        }
        self.queue = still;
    }

    fn bind(&mut self, key: &ObjKey, uid: &str, pod: &Pod, node: &str) {
        self.bound.insert(uid.to_string());
        self.record(
            pod,
            false,
            "Scheduled",
            &format!(
                "Successfully assigned {}/{} to {node}",
                pod.metadata.namespace.as_deref().unwrap_or(""),
                pod.metadata.name.as_deref().unwrap_or("")
            ),
            SCHEDULER,
        );
        let names = container_names(pod);
        let unready = unready_message(pod);
        self.write(key, uid, |p| {
            if let Some(s) = p.spec.as_mut() {
                s.node_name = Some(node.into());
            }
            let st = p.status.get_or_insert_with(Default::default);
            st.phase = Some("Pending".into());
            st.host_ip = Some(HOST_IP.into());
            st.host_ips = Some(vec![HostIP { ip: HOST_IP.into() }]);
            st.start_time = Some(now_time());
            st.qos_class.get_or_insert_with(|| "BestEffort".into());
            set_cond(st, cond("PodScheduled", true, None, None));
            set_cond(st, cond("PodReadyToStartContainers", false, None, None));
            set_cond(st, cond("Initialized", true, None, None));
            set_cond(
                st,
                cond(
                    "Ready",
                    false,
                    Some("ContainersNotReady"),
                    Some(unready.clone()),
                ),
            );
            set_cond(
                st,
                cond(
                    "ContainersReady",
                    false,
                    Some("ContainersNotReady"),
                    Some(unready),
                ),
            );
            st.container_statuses = Some(
                names
                    .iter()
                    .map(|(n, image)| ContainerStatus {
                        name: n.clone(),
                        image: image.clone(),
                        image_id: String::new(),
                        ready: false,
                        restart_count: 0,
                        started: Some(false),
                        state: Some(ContainerState {
                            waiting: Some(ContainerStateWaiting {
                                reason: Some("ContainerCreating".into()),
                                message: None,
                            }),
                            ..Default::default()
                        }),
                        ..Default::default()
                    })
                    .collect(),
            );
        });
    }

    fn pod_ip(&self) -> String {
        let n = self.next_ip.fetch_add(1, Ordering::Relaxed);
        format!("10.244.{}.{}", (n / 250) % 256, n % 250 + 2)
    }

    /// The start delay passed: the container starts running.
    pub fn start(&mut self, key: &ObjKey, uid: &str, timers: &mut Timers) {
        self.starting.remove(uid);
        let Some(pod) = self.store.get::<Pod>(&key.0, &key.1) else {
            return;
        };
        if Self::uid(&pod) != uid
            || pod.metadata.deletion_timestamp.is_some()
            || is_terminal(&pod)
            || self.running.contains_key(uid)
            || !self.bound.contains(uid)
        {
            return;
        }
        if self.image_pull_failed(key, uid, &pod, timers) {
            return;
        }
        let ip = self.pod_ip();
        let now = now_time();
        let restart_count = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|c| c.first())
            .map(|c| c.restart_count)
            .unwrap_or(0);
        let Some(pod) = self.write(key, uid, |p| {
            let st = p.status.get_or_insert_with(Default::default);
            st.phase = Some("Running".into());
            if st.pod_ip.is_none() {
                st.pod_ip = Some(ip.clone());
                st.pod_ips = Some(vec![PodIP { ip: ip.clone() }]);
            }
            set_cond(st, cond("PodReadyToStartContainers", true, None, None));
            set_cond(st, cond("Initialized", true, None, None));
            set_cond(st, cond("Ready", true, None, None));
            set_cond(st, cond("ContainersReady", true, None, None));
            set_cond(st, cond("PodScheduled", true, None, None));
            for cs in st.container_statuses.iter_mut().flatten() {
                cs.ready = true;
                cs.started = Some(true);
                cs.container_id = Some(container_id());
                cs.image_id = image_id(&cs.image);
                cs.state = Some(running_since(&now));
            }
        }) else {
            return;
        };
        if let Some(ads) = pod.spec.as_ref().and_then(|s| s.active_deadline_seconds) {
            let started = pod.status.as_ref().and_then(|s| s.start_time.clone());
            let elapsed = started
                .map(|t| crate::time::unix_now() - t.0.as_second())
                .unwrap_or(0);
            let left = (ads - elapsed).max(0) as u64;
            timers.add(
                Duration::from_secs(left),
                Timer::PodDeadline(key.clone(), uid.to_string()),
            );
        }
        self.launch(&pod, restart_count);
    }

    /// Pulls the first container's image: when it cannot be pulled the container waits with
    /// ErrImagePull, then ImagePullBackOff while the kubelet backs off, retrying for as long as
    /// the pod exists (https://kubernetes.io/docs/concepts/containers/images/#imagepullbackoff).
    fn image_pull_failed(
        &mut self,
        key: &ObjKey,
        uid: &str,
        pod: &Pod,
        timers: &mut Timers,
    ) -> bool {
        let Some(container) = pod.spec.as_ref().and_then(|s| s.containers.first()) else {
            return false;
        };
        let image = container.image.clone().unwrap_or_default();
        let env = resolve_env(pod, container);
        if !self.behaviour.image_pull.fails(&image, &env) {
            let pulled = if self.pull_failures.remove(uid).is_some() {
                format!("Successfully pulled image \"{image}\"")
            } else {
                format!("Container image \"{image}\" already present on machine")
            };
            self.record(pod, false, "Pulled", &pulled, KUBELET);
            self.record(
                pod,
                false,
                "Created",
                &format!("Created container: {}", container.name),
                KUBELET,
            );
            self.record(
                pod,
                false,
                "Started",
                &format!("Started container {}", container.name),
                KUBELET,
            );
            return false;
        }
        let n = {
            let n = self.pull_failures.entry(uid.to_string()).or_insert(0);
            *n += 1;
            *n
        };
        // Attempts alternate as the kubelet's do: a pull that fails (ErrImagePull), then the
        // back-off before the next (ImagePullBackOff).
        let (reason, message) = if n % 2 == 1 {
            self.record(
                pod,
                false,
                "Pulling",
                &format!("Pulling image \"{image}\""),
                KUBELET,
            );
            let detail = format!("rpc error: code = NotFound desc = failed to pull and unpack image \"{image}\": failed to resolve reference \"{image}\": {image}: not found");
            self.record(
                pod,
                true,
                "Failed",
                &format!("Failed to pull image \"{image}\": {detail}"),
                KUBELET,
            );
            ("ErrImagePull", detail)
        } else {
            let detail = format!("Back-off pulling image \"{image}\"");
            self.record(pod, false, "BackOff", &detail, KUBELET);
            ("ImagePullBackOff", detail)
        };
        self.record(pod, true, "Failed", &format!("Error: {reason}"), KUBELET);
        self.write(key, uid, |p| {
            let st = p.status.get_or_insert_with(Default::default);
            for cs in st.container_statuses.iter_mut().flatten() {
                cs.state = Some(ContainerState {
                    waiting: Some(ContainerStateWaiting {
                        reason: Some(reason.into()),
                        message: Some(message.clone()),
                    }),
                    ..Default::default()
                });
            }
        });
        let delay = if n % 2 == 1 {
            // The back-off state follows the failed pull after the kubelet's next sync.
            Duration::from_millis(500).min(self.behaviour.image_pull.initial_backoff)
        } else {
            self.behaviour.image_pull.backoff(n / 2)
        };
        self.starting.insert(uid.to_string());
        timers.add(delay, Timer::StartPod(key.clone(), uid.to_string()));
        true
    }

    fn launch(&mut self, pod: &Pod, restart_count: i32) {
        let uid = Self::uid(pod);
        let Some(spec) = pod.spec.as_ref() else {
            return;
        };
        let Some(container) = spec.containers.first().cloned() else {
            return;
        };
        let attempt_key = controller_ref(&pod.metadata)
            .map(|o| o.uid.clone())
            .unwrap_or_else(|| uid.clone());
        let attempt = {
            let n = self.attempts.entry(attempt_key).or_insert(0);
            *n += 1;
            *n - 1
        };
        let index = pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(COMPLETION_INDEX))
            .and_then(|i| i.parse::<u32>().ok());
        let env = resolve_env(pod, &container);
        let run = RunSpec {
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            pod_name: pod.metadata.name.clone().unwrap_or_default(),
            container: container.clone(),
            env,
            completion_index: index,
            attempt,
            grace: Duration::from_secs(
                spec.termination_grace_period_seconds.unwrap_or(30).max(0) as u64
            ),
        };
        let log = self
            .logs
            .open((uid.clone(), container.name.clone(), restart_count));
        let kill = CancellationToken::new();
        self.running.insert(
            uid.clone(),
            Running {
                kill: kill.clone(),
                restart_count,
            },
        );
        let fut = self.runner.run(run, log.clone(), kill);
        let tx = self.exits.clone();
        let (ns, name) = Self::key(pod);
        tokio::spawn(async move {
            let outcome = fut.await;
            log.close();
            let _ = tx.send(Exit {
                namespace: ns,
                name,
                uid,
                restart_count,
                outcome,
            });
        });
    }

    /// A container instance exited: restart it, or make the pod terminal.
    pub fn on_exit(&mut self, exit: Exit, timers: &mut Timers) {
        let Some(r) = self.running.get(&exit.uid) else {
            return;
        };
        if r.restart_count != exit.restart_count {
            return;
        }
        self.running.remove(&exit.uid);
        let killed = self.killing.remove(&exit.uid);
        let key = (exit.namespace.clone(), exit.name.clone());
        let Some(pod) = self.store.get::<Pod>(&key.0, &key.1) else {
            self.release(&exit.uid);
            self.try_schedule(timers);
            return;
        };
        if Self::uid(&pod) != exit.uid {
            return;
        }
        let now = now_time();
        let started_at = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|c| c.first())
            .and_then(|c| c.state.as_ref())
            .and_then(|s| s.running.as_ref())
            .and_then(|r| r.started_at.clone());
        let out = &exit.outcome;
        let reason = out.reason.clone().unwrap_or_else(|| {
            if out.exit_code == 0 {
                "Completed"
            } else {
                "Error"
            }
            .to_string()
        });
        let terminated = |cid: Option<String>| ContainerStateTerminated {
            exit_code: out.exit_code,
            reason: Some(reason.clone()),
            message: out.message.clone(),
            started_at: started_at.clone(),
            finished_at: Some(now.clone()),
            container_id: cid,
            ..Default::default()
        };
        let restart_policy = pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.clone())
            .unwrap_or_else(|| "Always".into());
        let restart = killed.is_none()
            && pod.metadata.deletion_timestamp.is_none()
            && (restart_policy == "Always"
                || (restart_policy == "OnFailure" && out.exit_code != 0));
        // The kubelet's CrashLoopBackOff: 10 s after the first exit, doubling per restart, at
        // most 5 min (pkg/kubelet/kubelet.go: backOffPeriod, MaxContainerBackOff); scaled here
        // by `restart_backoff`. Meanwhile the container waits with reason CrashLoopBackOff.
        let backoff = self
            .restart_backoff
            .saturating_mul(1u32 << exit.restart_count.clamp(0, 5))
            .min(self.restart_backoff.saturating_mul(30));
        if restart && !backoff.is_zero() {
            let pod_name = exit.name.clone();
            self.write(&key, &exit.uid, |p| {
                let st = p.status.get_or_insert_with(Default::default);
                for cs in st.container_statuses.iter_mut().flatten().take(1) {
                    let last = terminated(cs.container_id.clone());
                    cs.last_state = Some(ContainerState {
                        terminated: Some(last),
                        ..Default::default()
                    });
                    cs.restart_count += 1;
                    cs.ready = false;
                    cs.started = Some(false);
                    cs.state = Some(ContainerState {
                        waiting: Some(ContainerStateWaiting {
                            reason: Some("CrashLoopBackOff".into()),
                            message: Some(format!(
                                "back-off {}s restarting failed container={} pod={pod_name}",
                                backoff.as_secs(),
                                cs.name
                            )),
                        }),
                        ..Default::default()
                    });
                }
            });
            timers.add(backoff, Timer::RestartContainer(key, exit.uid));
            return;
        }
        if restart {
            let Some(pod) = self.write(&key, &exit.uid, |p| {
                let st = p.status.get_or_insert_with(Default::default);
                for cs in st.container_statuses.iter_mut().flatten().take(1) {
                    let last = terminated(cs.container_id.clone());
                    cs.last_state = Some(ContainerState {
                        terminated: Some(last),
                        ..Default::default()
                    });
                    cs.restart_count += 1;
                    cs.container_id = Some(container_id());
                    cs.state = Some(running_since(&now));
                }
            }) else {
                return;
            };
            let rc = exit.restart_count + 1;
            self.launch(&pod, rc);
            return;
        }
        let unready = unready_message(&pod);
        let succeeded = out.exit_code == 0 && killed.is_none();
        self.write(&key, &exit.uid, |p| {
            let st = p.status.get_or_insert_with(Default::default);
            st.phase = Some(if succeeded { "Succeeded" } else { "Failed" }.into());
            let why = if succeeded { "PodCompleted" } else { "PodFailed" };
            set_cond(st, cond("Ready", false, Some(why), Some(unready.clone())));
            set_cond(st, cond("ContainersReady", false, Some(why), Some(unready)));
            set_cond(st, cond("PodReadyToStartContainers", false, None, None));
            match killed {
                Some(KillReason::Evicted) => {
                    st.reason = Some("Evicted".into());
                    st.message = Some("The node was low on resource: memory. Threshold quantity: 100Mi, available: 50Mi. ".into());
                    set_cond(st, cond("DisruptionTarget", true, Some("TerminationByKubelet"), Some("The node was low on resource: memory. Threshold quantity: 100Mi, available: 50Mi. ".into())));
                }
                Some(KillReason::Deadline) => {
                    st.reason = Some("DeadlineExceeded".into());
                    st.message = Some("Pod was active on the node longer than the specified deadline".into());
                }
                _ => {}
            }
            for cs in st.container_statuses.iter_mut().flatten() {
                cs.ready = false;
                // The eviction manager fails the pod without a final container state, which
                // is why kubectl shows such pods as `Evicted`.
                if killed == Some(KillReason::Evicted) {
                    continue;
                }
                cs.started = Some(false);
                cs.state = Some(ContainerState {
                    terminated: Some(terminated(cs.container_id.clone())),
                    ..Default::default()
                });
            }
        });
        self.release(&exit.uid);
        if pod.metadata.deletion_timestamp.is_some() {
            self.finish_deletion(&key, &exit.uid);
        }
        self.try_schedule(timers);
    }

    /// A restart back-off elapsed: the container starts again (as its next instance).
    pub fn restart(&mut self, key: &ObjKey, uid: &str) {
        let Some(pod) = self.store.get::<Pod>(&key.0, &key.1) else {
            return;
        };
        if Self::uid(&pod) != uid
            || pod.metadata.deletion_timestamp.is_some()
            || is_terminal(&pod)
            || self.running.contains_key(uid)
        {
            return;
        }
        let now = now_time();
        let Some(pod) = self.write(key, uid, |p| {
            let st = p.status.get_or_insert_with(Default::default);
            for cs in st.container_statuses.iter_mut().flatten().take(1) {
                cs.ready = true;
                cs.started = Some(true);
                cs.container_id = Some(container_id());
                cs.state = Some(running_since(&now));
            }
        }) else {
            return;
        };
        let rc = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|c| c.first())
            .map(|c| c.restart_count)
            .unwrap_or(0);
        self.launch(&pod, rc);
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

/// The container's env as the kubelet would give it: literal values, plus the downward-API
/// fields the simulator knows (JOB_COMPLETION_INDEX comes from an annotation fieldRef).
fn resolve_env(pod: &Pod, c: &k8s_openapi::api::core::v1::Container) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for e in c.env.iter().flatten() {
        let v = if let Some(v) = &e.value {
            v.clone()
        } else if let Some(f) = e.value_from.as_ref().and_then(|v| v.field_ref.as_ref()) {
            let path = f.field_path.as_str();
            let meta = &pod.metadata;
            let from_map = |m: &Option<std::collections::BTreeMap<String, String>>,
                            prefix: &str| {
                path.strip_prefix(prefix)
                    .and_then(|r| r.strip_suffix("']"))
                    .and_then(|k| m.as_ref().and_then(|m| m.get(k)).cloned())
            };
            match path {
                "metadata.name" => meta.name.clone().unwrap_or_default(),
                "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
                "metadata.uid" => meta.uid.clone().unwrap_or_default(),
                "spec.nodeName" => pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.node_name.clone())
                    .unwrap_or_else(|| NODE_NAME.into()),
                "status.hostIP" => HOST_IP.into(),
                _ => from_map(&meta.annotations, "metadata.annotations['")
                    .or_else(|| from_map(&meta.labels, "metadata.labels['"))
                    .unwrap_or_default(),
            }
        } else {
            String::new()
        };
        out.push((e.name.clone(), v));
    }
    out
}
