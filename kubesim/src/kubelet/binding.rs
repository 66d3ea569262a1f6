//! The scheduler's part of the simulated node: queued pods are bound in order while they fit
//! (the node's pod capacity, and the configured nodes' resources through
//! [`crate::scheduling::pick_node`]); a pod that does not fit is reported Unschedulable once,
//! as kube-scheduler does. Binding writes `spec.nodeName`, the Pending status with
//! `ContainerCreating` containers, and a `Scheduled` Event, and sets the start timer.
//!
//! Depends on: the [`Kubelet`] state in `kubelet`, `status`, `scheduling`, `events`, `timers`,
//! `store`.

use std::collections::{BTreeMap, VecDeque};

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateWaiting, ContainerStatus, HostIP, Pod,
};

use super::status::{cond, container_names, set_cond, unready_message};
use super::{Kubelet, HOST_IP};
use crate::events::SCHEDULER;
use crate::objects::is_terminal;
use crate::scheduling::{pick_node, requests};
use crate::store::ObjKey;
use crate::time::now_time;
use crate::timers::{Timer, Timers};

impl Kubelet {
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

    /// Binds every queued pod that fits, in order; the others stay queued and are reported
    /// Unschedulable once (PodScheduled=False with the scheduler's message, and a
    /// FailedScheduling Event), as kube-scheduler does.
    pub(super) fn try_schedule(&mut self, timers: &mut Timers) {
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
            } else if let Some(reason) = crate::volumes::unschedulable_reason(&self.store, &pod) {
                // The VolumeBinding plugin's PreFilter rejects the pod on every node.
                let n = self.behaviour.nodes.len();
                Err(format!("0/{n} nodes are available: {reason}. preemption: 0/{n} nodes are available: {n} Preemption is not helpful for scheduling."))
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
}
