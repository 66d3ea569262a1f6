//! The Job controller's sync: for one Job, count its pods (through the
//! `batch.kubernetes.io/job-tracking` finalizer, removed once a finished pod is counted),
//! decide success/failure (completions, backoffLimit, activeDeadlineSeconds, podFailurePolicy),
//! suspend/resume, create the missing pods and write status as kube-controller-manager does
//! (`SuccessCriteriaMet` then `Complete`; `FailureTarget` then `Failed`), and schedule the TTL
//! deletion of finished Jobs. It is the only writer of Job status and never writes pod status.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::{Job, JobCondition, JobSpec, JobStatus, UncountedTerminatedPods};
use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};

use super::gc::FOREGROUND;
use crate::behaviour::Behaviour;
use crate::events::JOB_CONTROLLER;
use crate::objects::{has_finalizer, is_terminal, phase, pod_delete_grace, pod_ready};
use crate::store::{ObjKey, Store};
use crate::time::{now_time, unix_now};
use crate::timers::{Timer, Timers};
use crate::validation::{
    generate_name, COMPLETION_INDEX, CONTROLLER_UID, JOB_NAME, JOB_TRACKING_FINALIZER,
    LEGACY_CONTROLLER_UID, LEGACY_JOB_NAME,
};

fn condition(ty: &str, reason: &str, message: &str, status: bool) -> JobCondition {
    let now = now_time();
    JobCondition {
        type_: ty.into(),
        status: if status { "True" } else { "False" }.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_probe_time: Some(now.clone()),
        last_transition_time: Some(now),
    }
}

fn find<'a>(conds: &'a [JobCondition], ty: &str) -> Option<&'a JobCondition> {
    conds.iter().find(|c| c.type_ == ty)
}

fn is_true(conds: &[JobCondition], ty: &str) -> bool {
    find(conds, ty).is_some_and(|c| c.status == "True")
}

/// Adds or flips a condition; unchanged conditions keep their times.
fn set(conds: &mut Vec<JobCondition>, c: JobCondition) {
    match conds.iter_mut().find(|x| x.type_ == c.type_) {
        Some(x) if x.status == c.status => {}
        Some(x) => *x = c,
        None => conds.push(c),
    }
}

/// Parses `completedIndexes` ("1,3-5") into a set.
pub fn parse_indexes(s: &str) -> BTreeSet<i32> {
    let mut out = BTreeSet::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<i32>(), b.parse::<i32>()) {
                    out.extend(a..=b);
                }
            }
            None => {
                if let Ok(a) = part.parse() {
                    out.insert(a);
                }
            }
        }
    }
    out
}

/// Formats a set of indexes the way the controller writes `completedIndexes` and
/// `failedIndexes`: `orderedIntervals.String()` in pkg/controller/job/indexed_job_utils.go
/// writes an interval of two as `a,b` and a longer one as `a-b` (the docs' per-index example
/// shows `completedIndexes: 2,3` and `failedIndexes: 0,1`).
pub fn format_indexes(set: &BTreeSet<i32>) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut iter = set.iter().peekable();
    while let Some(&start) = iter.next() {
        let mut end = start;
        while iter.peek().is_some_and(|&&n| n == end + 1) {
            end = *iter.next().unwrap_or(&end);
        }
        parts.push(if start == end {
            start.to_string()
        } else if end == start + 1 {
            format!("{start},{end}")
        } else {
            format!("{start}-{end}")
        });
    }
    parts.join(",")
}

/// The failures of an index before this pod (backoffLimitPerIndex): the controller writes it on
/// every pod it creates for the index (pkg/controller/job/indexed_job_utils.go,
/// `batch.kubernetes.io/job-index-failure-count`).
pub const INDEX_FAILURE_COUNT: &str = "batch.kubernetes.io/job-index-failure-count";
/// Failures of the index that an `Ignore` rule matched, written alongside.
pub const INDEX_IGNORED_FAILURE_COUNT: &str = "batch.kubernetes.io/job-index-ignored-failure-count";

fn annotation_count(p: &Pod, key: &str) -> i32 {
    p.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn pod_index(p: &Pod) -> Option<i32> {
    p.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(COMPLETION_INDEX))
        .and_then(|v| v.parse().ok())
}

/// What podFailurePolicy says about a failed pod.
enum PolicyVerdict {
    Count,
    Ignore,
    FailJob(String),
    /// `FailIndex`: the pod's index is failed at once and not restarted (needs
    /// backoffLimitPerIndex).
    FailIndex,
}

fn apply_failure_policy(job: &Job, pod: &Pod) -> PolicyVerdict {
    let Some(pfp) = job
        .spec
        .as_ref()
        .and_then(|s| s.pod_failure_policy.as_ref())
    else {
        return PolicyVerdict::Count;
    };
    let statuses = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.clone())
        .unwrap_or_default();
    for (i, rule) in pfp.rules.iter().enumerate() {
        let matched: Option<String> = if let Some(oe) = &rule.on_exit_codes {
            statuses.iter().find_map(|cs| {
                if oe.container_name.as_ref().is_some_and(|n| n != &cs.name) {
                    return None;
                }
                let code = cs.state.as_ref()?.terminated.as_ref()?.exit_code;
                let hit = match oe.operator.as_str() {
                    "In" => oe.values.contains(&code),
                    "NotIn" => code != 0 && !oe.values.contains(&code),
                    _ => false,
                };
                hit.then(|| {
                    format!(
                        "Container {} for pod {}/{} failed with exit code {} matching {} rule at index {}",
                        cs.name,
                        pod.metadata.namespace.as_deref().unwrap_or(""),
                        pod.metadata.name.as_deref().unwrap_or(""),
                        code,
                        rule.action,
                        i
                    )
                })
            })
        } else {
            rule.on_pod_conditions.iter().flatten().find_map(|pc| {
                let conds = pod.status.as_ref()?.conditions.as_ref()?;
                let want = pc.status.as_str();
                conds
                    .iter()
                    .any(|c| c.type_ == pc.type_ && c.status == want)
                    .then(|| {
                        format!(
                            "Pod {}/{} has condition {} matching {} rule at index {}",
                            pod.metadata.namespace.as_deref().unwrap_or(""),
                            pod.metadata.name.as_deref().unwrap_or(""),
                            pc.type_,
                            rule.action,
                            i
                        )
                    })
            })
        };
        if let Some(msg) = matched {
            return match rule.action.as_str() {
                "FailJob" => PolicyVerdict::FailJob(msg),
                "Ignore" => PolicyVerdict::Ignore,
                "FailIndex" => PolicyVerdict::FailIndex,
                _ => PolicyVerdict::Count,
            };
        }
    }
    PolicyVerdict::Count
}

fn remove_tracking_finalizer(store: &Store, pod: &Pod) {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let uid = pod.metadata.uid.clone();
    let _ = store.update::<Pod>(&ns, &name, |p| {
        if p.metadata.uid != uid {
            return Ok(());
        }
        if let Some(f) = p.metadata.finalizers.as_mut() {
            f.retain(|x| x != JOB_TRACKING_FINALIZER);
            if f.is_empty() {
                p.metadata.finalizers = None;
            }
        }
        Ok(())
    });
}

/// A pod with the tracking finalizer whose Job is gone (or that was orphaned) can never be
/// counted: the real controller removes the finalizer so the pod can go away.
pub fn release_orphan(store: &Store, pod: &Pod) {
    if !has_finalizer(&pod.metadata, JOB_TRACKING_FINALIZER) {
        return;
    }
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let owned = crate::objects::controller_ref(&pod.metadata)
        .filter(|o| o.kind == "Job")
        .and_then(|o| {
            store
                .get::<Job>(&ns, &o.name)
                .filter(|j| j.metadata.uid.as_deref() == Some(o.uid.as_str()))
        })
        .is_some();
    if !owned {
        remove_tracking_finalizer(store, pod);
    }
}

/// deleteJobPods: pods the controller removes on purpose (suspend, lower parallelism) lose
/// the tracking finalizer first, so they are never counted as failed.
fn delete_pod_uncounted(store: &Store, pod: &Pod) {
    remove_tracking_finalizer(store, pod);
    delete_pod(store, pod);
}

/// deleteActivePods: the finalizer stays, so the pod counts as failed (Job finishing).
fn delete_pod(store: &Store, pod: &Pod) {
    if pod.metadata.deletion_timestamp.is_some() {
        return;
    }
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let grace = pod_delete_grace(pod, None);
    let _ = store.delete::<Pod>(&ns, &name, grace, &[], pod.metadata.uid.as_deref());
}

/// A pod for `job` (with the completion index for Indexed Jobs), as the controller builds it.
pub fn new_pod(job: &Job, index: Option<i32>) -> Pod {
    new_pod_with_counts(job, index, None)
}

/// [`new_pod`] for a Job with backoffLimitPerIndex: the pod carries its index's failure counts
/// so far (counted, ignored).
fn new_pod_with_counts(job: &Job, index: Option<i32>, counts: Option<(i32, i32)>) -> Pod {
    let name = job.metadata.name.clone().unwrap_or_default();
    let uid = job.metadata.uid.clone().unwrap_or_default();
    let spec = job.spec.clone().unwrap_or_default();
    let tmeta = spec.template.metadata.clone().unwrap_or_default();
    let mut labels = tmeta.labels.clone().unwrap_or_default();
    labels.insert(CONTROLLER_UID.into(), uid.clone());
    labels.insert(LEGACY_CONTROLLER_UID.into(), uid.clone());
    labels.insert(JOB_NAME.into(), name.clone());
    labels.insert(LEGACY_JOB_NAME.into(), name.clone());
    let mut annotations = tmeta.annotations.clone().unwrap_or_default();
    let mut pod_spec = spec.template.spec.clone().unwrap_or_default();
    let prefix = match index {
        Some(i) => {
            labels.insert(COMPLETION_INDEX.into(), i.to_string());
            annotations.insert(COMPLETION_INDEX.into(), i.to_string());
            if let Some((failed, ignored)) = counts {
                annotations.insert(INDEX_FAILURE_COUNT.into(), failed.to_string());
                annotations.insert(INDEX_IGNORED_FAILURE_COUNT.into(), ignored.to_string());
            }
            let env = EnvVar {
                name: "JOB_COMPLETION_INDEX".into(),
                value: None,
                value_from: Some(EnvVarSource {
                    field_ref: Some(ObjectFieldSelector {
                        api_version: Some("v1".into()),
                        field_path: format!("metadata.annotations['{COMPLETION_INDEX}']"),
                    }),
                    ..Default::default()
                }),
            };
            for c in pod_spec
                .containers
                .iter_mut()
                .chain(pod_spec.init_containers.iter_mut().flatten())
            {
                c.env.get_or_insert_with(Vec::new).push(env.clone());
            }
            if pod_spec.hostname.is_none() {
                pod_spec.hostname = Some(format!("{name}-{i}"));
            }
            format!("{name}-{i}-")
        }
        None => format!("{name}-"),
    };
    let mut finalizers = tmeta.finalizers.clone().unwrap_or_default();
    finalizers.push(JOB_TRACKING_FINALIZER.into());
    let mut pod = Pod {
        metadata: ObjectMeta {
            generate_name: Some(prefix.clone()),
            name: Some(generate_name(&prefix)),
            namespace: job.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: (!annotations.is_empty()).then_some(annotations),
            finalizers: Some(finalizers),
            owner_references: Some(vec![OwnerReference {
                api_version: "batch/v1".into(),
                kind: "Job".into(),
                name: name.clone(),
                uid,
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..Default::default()
        },
        spec: Some(pod_spec),
        status: None,
    };
    crate::validation::default_pod(&mut pod);
    pod
}

/// What the Job controller keeps between syncs: the cluster's behaviours and, per Job uid, the
/// pod creations refused in a row (the back-off of its work queue).
pub struct Ctl<'a> {
    pub behaviour: &'a Behaviour,
    pub create_failures: &'a mut HashMap<String, u32>,
}

/// The controller's per-item rate limiter after refused creates
/// (`workqueue.DefaultControllerRateLimiter`: 5 ms doubling, capped at 1000 s).
fn create_backoff(failures: u32) -> Duration {
    Duration::from_millis(5)
        .saturating_mul(1u32 << failures.min(20))
        .min(Duration::from_secs(1000))
}

/// Creates one pod through admission. A refusal is recorded on the Job as a `FailedCreate`
/// Event with the API server's message (`Error creating: ...`), as the real controller does
/// (pkg/controller/controller_utils.go `CreatePods`), and returned so the sync backs off.
fn create_pod(
    store: &Store,
    ctl: &Ctl,
    job: &Job,
    index: Option<i32>,
    counts: Option<(i32, i32)>,
) -> Result<(), ()> {
    for _ in 0..5 {
        let pod = new_pod_with_counts(job, index, counts);
        if let Err(refused) = ctl.behaviour.admission.admit_in(store, &pod) {
            ctl.behaviour.events.record(
                store,
                job,
                true,
                "FailedCreate",
                &format!("Error creating: {}", refused.message),
                JOB_CONTROLLER,
            );
            return Err(());
        }
        if let Ok(created) = store.create(pod) {
            ctl.behaviour.events.record(
                store,
                job,
                false,
                "SuccessfulCreate",
                &format!(
                    "Created pod: {}",
                    created.metadata.name.as_deref().unwrap_or("")
                ),
                JOB_CONTROLLER,
            );
            return Ok(());
        }
    }
    Ok(())
}

/// Syncs one Job, in the steps of the real controller's `syncJob`
/// (pkg/controller/job/job_controller.go): get the Job's pods, count the finished ones that
/// still carry the tracking finalizer, then either manage the pods (suspend, or start/resume,
/// check the failure and success criteria, delete the surplus and create the missing) or, once
/// a failure or success target is met, delete the active pods and finish; last, write status
/// and only then release the counted pods (`trackJobStatusAndRemoveFinalizers`), record the
/// finishing Event and schedule the TTL deletion. Safe to call any number of times.
pub fn sync(store: &Store, ctl: &mut Ctl, key: &ObjKey, timers: &mut Timers) {
    let Some(job) = store.get::<Job>(&key.0, &key.1) else {
        return;
    };
    let pods = pods_for_job(store, &job);
    let mut cx = SyncJobCtx::new(job, pods);
    if !cx.finished {
        if !cx.has_target() && cx.job.metadata.deletion_timestamp.is_none() {
            if cx.spec.suspend == Some(true) {
                cx.suspend(store);
            } else {
                cx.manage_active_job(store, ctl, key, timers);
            }
        }
        cx.finish_when_targets_met(store);
    }
    let finished_now = cx.update_status(store, key);
    // Counted pods lose their finalizer only after the count is stored.
    for p in &cx.counted {
        remove_tracking_finalizer(store, p);
    }
    if finished_now && !cx.finished {
        ctl.create_failures.remove(&cx.uid);
        record_finished(store, ctl, &cx.job, &cx.st);
    }
    if finished_now {
        schedule_ttl(store, &cx.job, &cx.st, key, timers);
    }
}

/// getPodsForJob: the pods whose controller reference is this Job (by uid).
fn pods_for_job(store: &Store, job: &Job) -> Vec<Arc<Pod>> {
    let uid = job.metadata.uid.clone().unwrap_or_default();
    store
        .dependents::<Pod>(&uid)
        .into_iter()
        .filter(|p| {
            p.metadata
                .owner_references
                .iter()
                .flatten()
                .any(|o| o.uid == uid && o.controller == Some(true))
        })
        .collect()
}

/// One sync's view of its Job (the real controller's `syncJobCtx`): the Job and its pods, the
/// finished pods counted in this sync, and the status being built.
struct SyncJobCtx {
    job: Arc<Job>,
    uid: String,
    spec: JobSpec,
    pods: Vec<Arc<Pod>>,
    /// The status as read, so that it is written only when it changed.
    old_status: JobStatus,
    st: JobStatus,
    conds: Vec<JobCondition>,
    /// The Job already had `Complete` or `Failed` when the sync began.
    finished: bool,
    indexed: bool,
    succeeded: i32,
    failed: i32,
    completed: BTreeSet<i32>,
    /// backoffLimitPerIndex, when set.
    per_index: Option<i32>,
    /// Indexes failed for good (`status.failedIndexes`, with backoffLimitPerIndex).
    failed_indexes: BTreeSet<i32>,
    /// Finished pods counted in this sync; they lose the tracking finalizer after the status
    /// write.
    counted: Vec<Arc<Pod>>,
    /// The message of a podFailurePolicy `FailJob` rule a counted pod matched.
    policy_failure: Option<String>,
    /// Pods neither terminal nor counted.
    live: Vec<Arc<Pod>>,
    /// Live pods not being deleted.
    active: Vec<Arc<Pod>>,
    /// Pods being deleted that have not ended yet.
    terminating: usize,
}

impl SyncJobCtx {
    fn new(job: Arc<Job>, pods: Vec<Arc<Pod>>) -> SyncJobCtx {
        let spec = job.spec.clone().unwrap_or_default();
        let old_status = job.status.clone().unwrap_or_default();
        let st = old_status.clone();
        let conds = st.conditions.clone().unwrap_or_default();
        let mut cx = SyncJobCtx {
            uid: job.metadata.uid.clone().unwrap_or_default(),
            finished: is_true(&conds, "Complete") || is_true(&conds, "Failed"),
            indexed: spec.completion_mode.as_deref() == Some("Indexed"),
            succeeded: st.succeeded.unwrap_or(0),
            failed: st.failed.unwrap_or(0),
            completed: parse_indexes(st.completed_indexes.as_deref().unwrap_or("")),
            per_index: spec.backoff_limit_per_index,
            failed_indexes: parse_indexes(st.failed_indexes.as_deref().unwrap_or("")),
            counted: Vec::new(),
            policy_failure: None,
            live: Vec::new(),
            active: Vec::new(),
            terminating: 0,
            job,
            spec,
            pods,
            old_status,
            st,
            conds,
        };
        cx.count_finished_pods();
        cx.sort_unfinished_pods();
        cx
    }

    /// getNewFinishedPods: finished pods that still carry the tracking finalizer are added to
    /// the counters (indexes for Indexed Jobs) and, through podFailurePolicy, may fail the Job.
    /// A Job that already finished counts nothing more; it only releases its pods.
    fn count_finished_pods(&mut self) {
        let completions = self.spec.completions;
        // isPodFailed: with podReplacementPolicy TerminatingOrFailed a deleted pod that has not
        // succeeded counts as failed right away; with Failed only the terminal phase does.
        let only_failed_phase = self.spec.pod_replacement_policy.as_deref() == Some("Failed");
        for p in &self.pods {
            if !has_finalizer(&p.metadata, JOB_TRACKING_FINALIZER) {
                continue;
            }
            if self.finished {
                self.counted.push(p.clone());
                continue;
            }
            match phase(p) {
                "Succeeded" => {
                    if self.indexed {
                        if let Some(i) = pod_index(p) {
                            if completions.is_some_and(|c| i >= 0 && i < c) {
                                self.completed.insert(i);
                            }
                        }
                    } else {
                        self.succeeded += 1;
                    }
                    self.counted.push(p.clone());
                }
                ph if ph == "Failed"
                    || (!only_failed_phase && p.metadata.deletion_timestamp.is_some()) =>
                {
                    let index = pod_index(p).filter(|_| self.indexed);
                    match apply_failure_policy(&self.job, p) {
                        PolicyVerdict::Ignore => {}
                        PolicyVerdict::Count => {
                            self.failed += 1;
                            // isIndexFailed: the index used up its backoffLimitPerIndex.
                            if let (Some(limit), Some(i)) = (self.per_index, index) {
                                if annotation_count(p, INDEX_FAILURE_COUNT) + 1 > limit {
                                    self.failed_indexes.insert(i);
                                }
                            }
                        }
                        PolicyVerdict::FailIndex => {
                            self.failed += 1;
                            if let (Some(_), Some(i)) = (self.per_index, index) {
                                self.failed_indexes.insert(i);
                            }
                        }
                        PolicyVerdict::FailJob(msg) => {
                            self.failed += 1;
                            self.policy_failure.get_or_insert(msg);
                        }
                    }
                    self.counted.push(p.clone());
                }
                _ => {}
            }
        }
        if self.indexed {
            self.succeeded = self.completed.len() as i32;
            self.st.completed_indexes = Some(format_indexes(&self.completed));
            if self.per_index.is_some() {
                // An index that failed for good and later succeeded (a pod still running when
                // it failed) counts as completed.
                let completed = &self.completed;
                self.failed_indexes.retain(|i| !completed.contains(i));
                self.st.failed_indexes = Some(format_indexes(&self.failed_indexes));
            }
        }
    }

    /// The failure counts (counted, ignored) of index `i` so far, from its newest pods'
    /// annotations plus their own outcome (getNewIndexFailureCounts).
    fn index_failure_counts(&self, i: i32) -> (i32, i32) {
        let mut counts = (0, 0);
        for p in self.pods.iter().filter(|p| pod_index(p) == Some(i)) {
            let mut failed = annotation_count(p, INDEX_FAILURE_COUNT);
            let mut ignored = annotation_count(p, INDEX_IGNORED_FAILURE_COUNT);
            if phase(p) == "Failed" || p.metadata.deletion_timestamp.is_some() {
                match apply_failure_policy(&self.job, p) {
                    PolicyVerdict::Ignore => ignored += 1,
                    _ => failed += 1,
                }
            }
            counts = counts.max((failed, ignored));
        }
        counts
    }

    /// The pods not yet finished: live (neither terminal nor counted), active (live and not
    /// being deleted, `controller.FilterActivePods`) and terminating.
    fn sort_unfinished_pods(&mut self) {
        let counted_uids: BTreeSet<String> = self
            .counted
            .iter()
            .filter_map(|p| p.metadata.uid.clone())
            .collect();
        self.live = self
            .pods
            .iter()
            .filter(|p| {
                !is_terminal(p) && !counted_uids.contains(p.metadata.uid.as_deref().unwrap_or(""))
            })
            .cloned()
            .collect();
        self.active = self
            .live
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .cloned()
            .collect();
        self.terminating = self
            .pods
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_some() && !is_terminal(p))
            .count();
    }

    /// `FailureTarget` or `SuccessCriteriaMet` is already set: the Job is finishing.
    fn has_target(&self) -> bool {
        find(&self.conds, "FailureTarget").is_some_and(|c| c.status == "True")
            || is_true(&self.conds, "SuccessCriteriaMet")
    }

    /// manageJob for a suspended Job: its active pods go without being counted as failed, and
    /// the `Suspended` condition is set.
    fn suspend(&mut self, store: &Store) {
        for p in &self.active {
            delete_pod_uncounted(store, p);
        }
        self.active.clear();
        if !is_true(&self.conds, "Suspended") {
            set(
                &mut self.conds,
                condition("Suspended", "JobSuspended", "Job suspended", true),
            );
        }
    }

    /// A Job that runs: start (or resume) it, check the failure and success criteria, and
    /// while neither is met manage its pods and re-sync at its activeDeadlineSeconds.
    fn manage_active_job(
        &mut self,
        store: &Store,
        ctl: &mut Ctl,
        key: &ObjKey,
        timers: &mut Timers,
    ) {
        self.start_or_resume();
        let now = unix_now();
        let started = self
            .st
            .start_time
            .as_ref()
            .map(|t| t.0.as_second())
            .unwrap_or(now);
        if let Some((reason, msg)) = self.failure_criteria(now, started) {
            set(
                &mut self.conds,
                condition("FailureTarget", reason, &msg, true),
            );
        } else if self.success_criteria_met() {
            set(
                &mut self.conds,
                condition(
                    "SuccessCriteriaMet",
                    "CompletionsReached",
                    "Reached expected number of succeeded pods",
                    true,
                ),
            );
        } else {
            self.manage_job(store, ctl, key, timers);
            if let Some(ads) = self.spec.active_deadline_seconds {
                let left = started.saturating_add(ads).saturating_sub(now).max(0) as u64;
                timers.add(
                    Duration::from_secs(left).saturating_add(Duration::from_millis(5)),
                    Timer::SyncJob(key.clone()),
                );
            }
        }
    }

    /// Sets the start time on first start, and resets it on resume (activeDeadlineSeconds
    /// counts the time a Job is continuously active).
    fn start_or_resume(&mut self) {
        if is_true(&self.conds, "Suspended") {
            set(
                &mut self.conds,
                condition("Suspended", "JobResumed", "Job resumed", false),
            );
            self.st.start_time = Some(now_time());
        }
        if self.st.start_time.is_none() {
            self.st.start_time = Some(now_time());
        }
    }

    /// Container restarts of the unfinished pods, which count against backoffLimit under
    /// `restartPolicy: OnFailure` (pastBackoffLimitOnFailure).
    fn restarts_on_failure(&self) -> i32 {
        let on_failure = self
            .spec
            .template
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.as_deref())
            == Some("OnFailure");
        if !on_failure {
            return 0;
        }
        self.pods
            .iter()
            .filter(|p| !is_terminal(p))
            .flat_map(|p| {
                p.status
                    .iter()
                    .flat_map(|s| s.container_statuses.iter().flatten())
            })
            .map(|c| c.restart_count)
            .sum()
    }

    /// Why the Job fails, if it does: a podFailurePolicy `FailJob` rule (getFailJobMessage),
    /// backoffLimit, then activeDeadlineSeconds (pastActiveDeadline).
    fn failure_criteria(&mut self, now: i64, started: i64) -> Option<(&'static str, String)> {
        let backoff = self.spec.backoff_limit.unwrap_or(6);
        let deadline_passed = self
            .spec
            .active_deadline_seconds
            .is_some_and(|ads| now >= started.saturating_add(ads));
        let max_failed = self.spec.max_failed_indexes;
        let all_done = self.indexed
            && !self.failed_indexes.is_empty()
            && (self.completed.len() + self.failed_indexes.len()) as i32
                >= self.spec.completions.unwrap_or(0)
            && self
                .active
                .iter()
                .all(|p| pod_index(p).is_some_and(|i| self.failed_indexes.contains(&i)));
        if let Some(msg) = self.policy_failure.take() {
            Some(("PodFailurePolicy", msg))
        } else if max_failed.is_some_and(|m| self.failed_indexes.len() as i32 > m) {
            // The Job controller's JobReasonMaxFailedIndexesExceeded.
            Some((
                "MaxFailedIndexesExceeded",
                "Job has exceeded the specified maximal number of failed indexes".to_string(),
            ))
        } else if all_done {
            // Every index finished and some failed: JobReasonFailedIndexes.
            Some(("FailedIndexes", "Job has failed indexes".to_string()))
        } else if self.failed + self.restarts_on_failure() > backoff {
            Some((
                "BackoffLimitExceeded",
                "Job has reached the specified backoff limit".to_string(),
            ))
        } else if deadline_passed {
            Some((
                "DeadlineExceeded",
                "Job was active longer than specified deadline".to_string(),
            ))
        } else {
            None
        }
    }

    /// Enough completions (or indexes) succeeded; without `completions`, one pod succeeded and
    /// none is active.
    fn success_criteria_met(&self) -> bool {
        match (self.indexed, self.spec.completions) {
            (true, Some(c)) => self.completed.len() as i32 >= c,
            (false, Some(c)) => self.succeeded >= c,
            (_, None) => self.succeeded > 0 && self.active.is_empty(),
        }
    }

    /// manageJob: delete the active pods beyond what is wanted, create the missing ones, and
    /// after a refused create re-sync with the work queue's back-off.
    fn manage_job(&mut self, store: &Store, ctl: &mut Ctl, key: &ObjKey, timers: &mut Timers) {
        self.delete_surplus_pods(store);
        if self.create_missing_pods(store, ctl) {
            let n = ctl.create_failures.entry(self.uid.clone()).or_insert(0);
            timers.add(create_backoff(*n), Timer::SyncJob(key.clone()));
            *n += 1;
        } else {
            ctl.create_failures.remove(&self.uid);
        }
    }

    /// Too many active pods (parallelism lowered): delete the surplus, not-ready and newest
    /// first, as the real controller prefers.
    fn delete_surplus_pods(&self, store: &Store) {
        let parallelism = self.spec.parallelism.unwrap_or(1).max(0);
        let want_active = match (self.indexed, self.spec.completions) {
            (true, Some(c)) => parallelism.min(c - self.completed.len() as i32),
            (false, Some(c)) => parallelism.min(c - self.succeeded),
            (_, None) => parallelism,
        }
        .max(0) as usize;
        if self.active.len() > want_active {
            let mut victims: Vec<&Arc<Pod>> = self.active.iter().collect();
            victims.sort_by_key(|p| {
                (
                    pod_ready(p),
                    std::cmp::Reverse(
                        p.metadata
                            .creation_timestamp
                            .as_ref()
                            .map(|t| t.0.as_second()),
                    ),
                )
            });
            for p in victims.iter().take(self.active.len() - want_active) {
                delete_pod_uncounted(store, p);
            }
        }
    }

    /// Creates the missing pods (the free indexes of an Indexed Job), up to parallelism;
    /// true when admission refused one, which stops this round.
    fn create_missing_pods(&self, store: &Store, ctl: &Ctl) -> bool {
        let parallelism = self.spec.parallelism.unwrap_or(1).max(0);
        let completions = self.spec.completions;
        if self.indexed {
            let c = completions.unwrap_or(0);
            let busy: BTreeSet<i32> = self.active.iter().filter_map(|p| pod_index(p)).collect();
            let mut room = parallelism - self.active.len() as i32;
            for i in 0..c {
                if room <= 0 {
                    break;
                }
                if self.completed.contains(&i) || busy.contains(&i) {
                    continue;
                }
                if self.failed_indexes.contains(&i) {
                    continue;
                }
                let counts = self.per_index.map(|_| self.index_failure_counts(i));
                if create_pod(store, ctl, &self.job, Some(i), counts).is_err() {
                    return true;
                }
                room -= 1;
            }
        } else {
            let remaining = match completions {
                Some(c) => c - self.succeeded,
                None => parallelism,
            };
            let want = remaining.min(parallelism) - self.active.len() as i32;
            for _ in 0..want.max(0) {
                if create_pod(store, ctl, &self.job, None, None).is_err() {
                    return true;
                }
            }
        }
        false
    }

    /// Targets reached: stop the remaining pods (deleteActivePods, which keeps the finalizer so
    /// they count as failed), then finish (`Failed` or `Complete`) once none is left running.
    fn finish_when_targets_met(&mut self, store: &Store) {
        let failure_target = find(&self.conds, "FailureTarget")
            .filter(|c| c.status == "True")
            .cloned();
        let success_target = find(&self.conds, "SuccessCriteriaMet")
            .filter(|c| c.status == "True")
            .cloned();
        if failure_target.is_none() && success_target.is_none() {
            return;
        }
        for p in &self.active {
            delete_pod(store, p);
        }
        // The terminal condition waits until no pod of the Job is still running.
        if self.pods.iter().all(|p| is_terminal(p)) {
            if let Some(ft) = failure_target {
                set(
                    &mut self.conds,
                    condition(
                        "Failed",
                        ft.reason.as_deref().unwrap_or(""),
                        ft.message.as_deref().unwrap_or(""),
                        true,
                    ),
                );
            } else if success_target.is_some() {
                set(
                    &mut self.conds,
                    condition(
                        "Complete",
                        "CompletionsReached",
                        "Reached expected number of succeeded pods",
                        true,
                    ),
                );
                self.st.completion_time = Some(now_time());
            }
        }
        self.active.clear();
    }

    /// Builds the status from this sync's counts and writes it when it changed (guarded by the
    /// Job's uid); true when the Job is now finished.
    fn update_status(&mut self, store: &Store, key: &ObjKey) -> bool {
        let active_n = self
            .live
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .count() as i32;
        let ready_n = self
            .live
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none() && pod_ready(p))
            .count() as i32;
        let conds = std::mem::take(&mut self.conds);
        let finished_now = is_true(&conds, "Complete") || is_true(&conds, "Failed");
        let st = &mut self.st;
        st.active = (active_n > 0 && !finished_now).then_some(active_n);
        st.ready = Some(if finished_now { 0 } else { ready_n });
        st.terminating = Some(self.terminating as i32);
        st.succeeded = (self.succeeded > 0).then_some(self.succeeded);
        st.failed = (self.failed > 0).then_some(self.failed);
        st.uncounted_terminated_pods = Some(UncountedTerminatedPods::default());
        st.conditions = (!conds.is_empty()).then_some(conds);
        if self.st != self.old_status {
            let _ = store.update::<Job>(&key.0, &key.1, |j| {
                if j.metadata.uid.as_deref() == Some(self.uid.as_str()) {
                    j.status = Some(self.st.clone());
                }
                Ok(())
            });
        }
        finished_now
    }
}

/// The controller's Events on finishing (pkg/controller/job/job_controller.go).
fn record_finished(store: &Store, ctl: &Ctl, job: &Job, st: &JobStatus) {
    let (warning, reason, message) =
        match find(st.conditions.as_deref().unwrap_or_default(), "Failed")
            .filter(|c| c.status == "True")
        {
            Some(c) => (
                true,
                c.reason.clone().unwrap_or_default(),
                c.message.clone().unwrap_or_default(),
            ),
            None => (false, "Completed".to_string(), "Job completed".to_string()),
        };
    ctl.behaviour
        .events
        .record(store, job, warning, &reason, &message, JOB_CONTROLLER);
}

fn finish_time(st: &JobStatus) -> Option<i64> {
    st.conditions
        .iter()
        .flatten()
        .filter(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        .filter_map(|c| c.last_transition_time.as_ref())
        .map(|t: &Time| t.0.as_second())
        .next()
}

fn schedule_ttl(store: &Store, job: &Job, st: &JobStatus, key: &ObjKey, timers: &mut Timers) {
    let Some(ttl) = job.spec.as_ref().and_then(|s| s.ttl_seconds_after_finished) else {
        return;
    };
    if job.metadata.deletion_timestamp.is_some() {
        return;
    }
    let Some(done) = finish_time(st) else {
        return;
    };
    let expire = done + ttl as i64;
    let now = unix_now();
    if now >= expire {
        // The TTL-after-finished controller deletes with foreground propagation and a uid
        // precondition.
        let _ = store.delete::<Job>(
            &key.0,
            &key.1,
            0,
            &[FOREGROUND],
            job.metadata.uid.as_deref(),
        );
    } else {
        timers.add(
            Duration::from_secs((expire - now) as u64) + Duration::from_millis(5),
            Timer::SyncJob(key.clone()),
        );
    }
}

/// Labels the real controller puts on a Job's pods (for tests and table output).
pub fn pod_labels(job: &Job) -> BTreeMap<String, String> {
    new_pod(job, None).metadata.labels.unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completed_indexes_round_trip_as_ranges() {
        let set: BTreeSet<i32> = [0, 1, 2, 4, 6, 7].into_iter().collect();
        assert_eq!(format_indexes(&set), "0-2,4,6,7");
        assert_eq!(parse_indexes("0-2,4,6,7"), set);
        assert_eq!(parse_indexes("0-2,4,6-7"), set);
    }
}
