//! Starting a bound pod's container once its start delay passed: the image pull (with
//! ErrImagePull / ImagePullBackOff when it fails), the Running status, the pod-level
//! activeDeadlineSeconds timer, and the launch of the container on the [`Runner`](super::Runner) with its
//! resolved env and a log file; the runner's exit comes back to the control loop as an
//! [`Exit`].
//!
//! Depends on: the [`Kubelet`] state in `kubelet`, `runner`, `status`, `logs`, `events`,
//! `timers`, `store`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ContainerState, ContainerStateWaiting, Pod, PodIP};
use tokio_util::sync::CancellationToken;

use super::status::{cond, container_id, first_container, image_id, running_since, set_cond};
use super::{env, Exit, Kubelet, RunSpec, Running};
use crate::events::KUBELET;
use crate::objects::controller_ref;
use crate::store::ObjKey;
use crate::time::now_time;
use crate::timers::{Timer, Timers};
use crate::validation::COMPLETION_INDEX;

impl Kubelet {
    fn pod_ip(&self) -> String {
        let n = self.next_ip.fetch_add(1, Ordering::Relaxed);
        format!("10.244.{}.{}", (n / 250) % 256, n % 250 + 2)
    }

    /// The start delay passed: the container starts running.
    pub fn start(&mut self, key: &ObjKey, uid: &str, timers: &mut Timers) {
        self.starting.remove(uid);
        let Some(pod) = self.startable(key, uid) else {
            return;
        };
        if !self.bound.contains(uid) {
            return;
        }
        // Volumes are set up before the image is pulled (`SyncPod`), see `mount`.
        if self.mount_failed(key, uid, &pod, timers) {
            return;
        }
        if self.image_pull_failed(key, uid, &pod, timers) {
            return;
        }
        if self.config_failed(key, uid, &pod, timers) {
            return;
        }
        if let Some(container) = pod.spec.as_ref().and_then(|s| s.containers.first()) {
            let name = container.name.clone();
            self.record(
                &pod,
                false,
                "Created",
                &format!("Created container: {name}"),
                KUBELET,
            );
            self.record(
                &pod,
                false,
                "Started",
                &format!("Started container {name}"),
                KUBELET,
            );
        }
        let ip = self.pod_ip();
        let now = now_time();
        let restart_count = first_container(&pod).map(|c| c.restart_count).unwrap_or(0);
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
        // The image pull looks at literal env values only (`KUBESIM_IMAGE_PULL`): it comes
        // before the container's config, as in the kubelet's `startContainer`.
        let env: Vec<(String, String)> = container
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
            .collect();
        if !self.behaviour.image_pull.fails(&image, &env) {
            let pulled = if self.pull_failures.remove(uid).is_some() {
                format!("Successfully pulled image \"{image}\"")
            } else {
                format!("Container image \"{image}\" already present on machine")
            };
            self.record(pod, false, "Pulled", &pulled, KUBELET);
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

    /// Builds the container's config (its environment from Secrets, ConfigMaps and the
    /// downward API): when that fails the container waits with `CreateContainerConfigError` and
    /// the kubelet's message, a `Failed` Event says `Error: <message>`
    /// (kuberuntime_container.go `startContainer`), and the pod worker retries after its
    /// back-off (`behaviour.config_retry`), so the pod starts once the Secret or key exists.
    pub(super) fn config_failed(
        &mut self,
        key: &ObjKey,
        uid: &str,
        pod: &Pod,
        timers: &mut Timers,
    ) -> bool {
        let Some(message) = self.config_error(pod) else {
            return false;
        };
        self.wait_for_config(key, uid, &message, |_| {});
        self.starting.insert(uid.to_string());
        timers.add(
            self.behaviour.config_retry,
            Timer::StartPod(key.clone(), uid.to_string()),
        );
        true
    }

    /// The message of the container's `CreateContainerConfigError`, if its config cannot be
    /// built now (with the `Failed` Event recorded), else None (with any
    /// `InvalidEnvironmentVariableNames` warning recorded).
    pub(super) fn config_error(&mut self, pod: &Pod) -> Option<String> {
        let container = pod.spec.as_ref().and_then(|s| s.containers.first())?;
        match env::resolve(&self.store, pod, container) {
            Ok(resolved) => {
                for w in &resolved.warnings {
                    self.record(pod, true, "InvalidEnvironmentVariableNames", w, KUBELET);
                }
                None
            }
            Err(message) => {
                self.record(pod, true, "Failed", &format!("Error: {message}"), KUBELET);
                Some(message)
            }
        }
    }

    /// Writes the first container waiting in `CreateContainerConfigError`; `also` edits its
    /// status in the same write (a restart counts the exited instance).
    pub(super) fn wait_for_config(
        &mut self,
        key: &ObjKey,
        uid: &str,
        message: &str,
        also: impl FnOnce(&mut k8s_openapi::api::core::v1::ContainerStatus),
    ) {
        self.write(key, uid, |p| {
            let st = p.status.get_or_insert_with(Default::default);
            if let Some(cs) = st.container_statuses.iter_mut().flatten().next() {
                also(cs);
                cs.ready = false;
                cs.started = Some(false);
                cs.state = Some(ContainerState {
                    waiting: Some(ContainerStateWaiting {
                        reason: Some("CreateContainerConfigError".into()),
                        message: Some(message.to_string()),
                    }),
                    ..Default::default()
                });
            }
        });
    }

    pub(super) fn launch(&mut self, pod: &Pod, restart_count: i32) {
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
        // Checked just before (`config_error`), in the same control-loop step.
        let env = env::resolve(&self.store, pod, &container)
            .map(|r| r.env)
            .unwrap_or_default();
        let mut container = container;
        env::expand_command_and_args(&mut container, &env);
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
}
