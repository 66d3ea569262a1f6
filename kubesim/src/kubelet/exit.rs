//! A container instance exited: the pod's restartPolicy decides between a restart (at once,
//! or after the CrashLoopBackOff back-off) and a terminal pod (Succeeded, or Failed with the
//! reason of a kill: eviction or activeDeadlineSeconds); the restart when a back-off elapses.
//!
//! Depends on: the [`Kubelet`] state in `kubelet`, `start` (launch), `binding` (a freed slot
//! schedules the next pod), `status`, `timers`, `store`.

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateTerminated, ContainerStateWaiting, ContainerStatus, Pod,
};

use super::status::{
    cond, container_id, first_container, running_since, set_cond, unready_message,
};
use super::{Exit, KillReason, Kubelet};
use crate::store::ObjKey;
use crate::time::now_time;
use crate::timers::{Timer, Timers};

impl Kubelet {
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
        let started_at = first_container(&pod)
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
                    count_restart(cs, last);
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
            // A restart builds the container's config again: a Secret deleted meanwhile holds
            // it in CreateContainerConfigError, retried like a first start.
            if let Some(message) = self.config_error(&pod) {
                self.wait_for_config(&key, &exit.uid, &message, |cs| {
                    let last = terminated(cs.container_id.clone());
                    count_restart(cs, last);
                });
                let retry = self.behaviour.config_retry;
                timers.add(retry, Timer::RestartContainer(key, exit.uid));
                return;
            }
            let Some(pod) = self.write(&key, &exit.uid, |p| {
                let st = p.status.get_or_insert_with(Default::default);
                for cs in st.container_statuses.iter_mut().flatten().take(1) {
                    let last = terminated(cs.container_id.clone());
                    count_restart(cs, last);
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
    pub fn restart(&mut self, key: &ObjKey, uid: &str, timers: &mut Timers) {
        let Some(current) = self.startable(key, uid) else {
            return;
        };
        if let Some(message) = self.config_error(&current) {
            self.wait_for_config(key, uid, &message, |_| {});
            let retry = self.behaviour.config_retry;
            timers.add(retry, Timer::RestartContainer(key.clone(), uid.to_string()));
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
        let rc = first_container(&pod).map(|c| c.restart_count).unwrap_or(0);
        self.launch(&pod, rc);
    }
}

/// The exited instance becomes the container's `lastState`, and its restart count goes up.
fn count_restart(cs: &mut ContainerStatus, last: ContainerStateTerminated) {
    cs.last_state = Some(ContainerState {
        terminated: Some(last),
        ..Default::default()
    });
    cs.restart_count += 1;
}
