//! The tracker, in the controller-runtime shape. Per namespace, the watches of this
//! installation's Jobs and pods (see [`crate::cluster::watch`]) only keep a cache of what they
//! report and put the Job's name on a work queue; one [`reconcile`] per Job takes the Job and its
//! pods from that cache and the run from Postgres, writes what changed through the guarded status
//! writer, and acts on final runs: deletes the Job of a run that ended without it (cancelled,
//! failed while pending), and releases the tracking finalizer once the outcome is stored. A
//! failed reconcile is logged with its cause chain and requeued with backoff (the error policy),
//! so a failed write never waits for a next event (a finished Job sends none). A Job queued
//! several times before its reconcile is reconciled once. Up to `tracker_concurrency` Jobs are
//! reconciled at once, never one Job twice at once: what changes while its reconcile runs is
//! written by the next one. Each reconcile mostly waits on PostgreSQL or the API server, so one
//! at a time made the tracker's lag grow with the events queued before a Job's (seconds behind
//! a burst of finishing Jobs); kube-runtime's `Controller` also runs its reconciles concurrently
//! (unbounded by default) and, like controller-runtime's work queue, never two for one key.
//!
//! A watch's re-list (`Init` .. `InitDone`) is the truth: after every one, and after the
//! periodic listing every `reconcile_interval`, each unfinished run whose Job is not in the cache
//! is queued to be looked up, and a Job that is really gone makes its run `lost`; so a lost
//! connection, a 410 Gone or a missed `Delete` can delay a final state but never lose it. While a
//! run is pending, why it cannot start (a pod's waiting reason or unschedulable condition, the
//! Job controller's `FailedCreate` Events) is recorded on it. Pods are handed to the log archiver
//! as their events come.
//!
//! Kueue: once a Job of the namespace is in a LocalQueue, the namespace's Workloads are watched
//! too, and each one's hold (Kueue's reason and message) is kept by the name of the Job that
//! owns it; a change queues that Job. While Kueue holds a Job suspended its run is `admitting`
//! with that message, and a pod seen running does not move it on (a pod of an evicted Job may
//! report `Running` while it is being removed): only the Job unsuspended does.

use super::requeue::Requeue;
use super::Runtime;
use crate::cluster::kueue::{self, Hold, Workload};
use crate::cluster::watch::{self, Event, SlimJob, Watch, WatchError};
use crate::cluster::{keys, observe};
use crate::domain::{JobRef, PodRecord, RunStatus};
use crate::store::{self, runs::Observation};
use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// What the work queue holds: a Job (by name; one tracker per namespace) or the check of the
/// unfinished runs against the cache.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Job(String),
    Resync,
}

impl Key {
    fn id(&self) -> String {
        match self {
            Key::Job(name) => format!("job/{name}"),
            Key::Resync => "resync".into(),
        }
    }
}

/// What the work queue does with a Job after a successful reconcile.
#[derive(Debug, PartialEq, Eq)]
enum Action {
    /// Nothing until the next event of the Job or one of its pods.
    AwaitChange,
    /// The Job and its pods need nothing more: drop them from the cache (a later event brings
    /// them back).
    Forget,
}

/// Keys to reconcile: each at most once in the ready queue, plus those waiting for their
/// backoff after a failure. A key both ready and waiting is reconciled now; its success drops
/// the wait, its failure lengthens it.
struct WorkQueue {
    ready: VecDeque<Key>,
    queued: HashSet<Key>,
    retry: Requeue<Key>,
    /// Keys whose reconcile is under way: at most one per key at a time.
    processing: HashSet<Key>,
    /// Keys added while their reconcile was under way: queued again when it ends.
    dirty: HashSet<Key>,
}

impl WorkQueue {
    fn new() -> Self {
        WorkQueue {
            ready: VecDeque::new(),
            queued: HashSet::new(),
            // 250 ms doubling up to 5 s: a database outage delays a final state by at most a
            // few seconds after it ends.
            retry: Requeue::new(Duration::from_millis(250), Duration::from_secs(5)),
            processing: HashSet::new(),
            dirty: HashSet::new(),
        }
    }

    fn add(&mut self, key: Key) {
        if self.processing.contains(&key) {
            self.dirty.insert(key);
        } else if self.queued.insert(key.clone()) {
            self.ready.push_back(key);
        }
    }

    /// Marks `key` under way; false (and the key queued again for after) when it already is.
    fn start(&mut self, key: &Key) -> bool {
        if self.processing.insert(key.clone()) {
            return true;
        }
        self.dirty.insert(key.clone());
        false
    }

    /// `key`'s reconcile ended: added again if something came for it meanwhile.
    fn finish(&mut self, key: &Key) {
        self.processing.remove(key);
        if self.dirty.remove(key) {
            self.add(key.clone());
        }
    }

    /// The next key to reconcile: a ready one, else the first whose backoff is over.
    async fn next(&mut self) -> Key {
        if let Some(key) = self.ready.pop_front() {
            self.queued.remove(&key);
            return key;
        }
        let (_, key) = self.retry.next().await;
        metrics::counter!("vfi_tracker_requeues_total").increment(1);
        key
    }

    fn succeeded(&mut self, key: &Key) {
        self.retry.succeeded(&key.id());
    }

    fn failed(&mut self, key: Key) {
        self.retry.failed(key.id(), key);
    }
}

/// What the tracker knows of one Job and its pods.
#[derive(Default)]
struct Tracked {
    /// The Job as its watch last reported it; none before its first event and after it is gone.
    /// Slim and boxed: one per active run, and the map's table holds a slot per entry and
    /// half as many again free (issue 15: memory per active run).
    job: Option<Box<SlimJob>>,
    /// The Job's last state, from its `Delete` event, until its reconcile records it.
    deleted: Option<Box<SlimJob>>,
    /// The Job changed since its last successful reconcile.
    job_changed: bool,
    /// A check found this run unfinished and its Job not in the cache: look the Job up.
    check: Option<Uuid>,
    /// Counts the changes to the four fields above: a reconcile that started from an older
    /// count leaves their flags for the next one.
    generation: u64,
    pods: Pods,
}

/// A Job's pods, by name. Mostly one: a vector sized to them, where a hash map's smallest
/// table holds four (about 1.4 KB per active run; issue 15: memory per active run). A Job with
/// many pods is searched through, a few hundred comparisons of short names per event at most.
#[derive(Default)]
struct Pods(Vec<TrackedPod>);

impl Pods {
    fn get(&self, name: &str) -> Option<&TrackedPod> {
        self.0.iter().find(|p| p.record.name == name)
    }

    fn get_mut(&mut self, name: &str) -> Option<&mut TrackedPod> {
        self.0.iter_mut().find(|p| p.record.name == name)
    }

    /// Adds `pod`, or replaces the one of its name.
    fn insert(&mut self, pod: TrackedPod) {
        if let Some(known) = self.get_mut(&pod.record.name) {
            *known = pod;
            return;
        }
        if self.0.len() < 4 {
            // Room for exactly one more, not the four a first push reserves.
            self.0.reserve_exact(1);
        }
        self.0.push(pod);
    }

    fn remove(&mut self, name: &str) {
        self.0.retain(|p| p.record.name != name);
    }

    fn retain(&mut self, keep: impl FnMut(&TrackedPod) -> bool) {
        self.0.retain(keep);
    }

    fn values(&self) -> impl Iterator<Item = &TrackedPod> {
        self.0.iter()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A pod as last reported, and whether that is written.
#[derive(Clone)]
struct TrackedPod {
    run_id: Uuid,
    record: PodRecord,
    /// Why it cannot start, if it cannot.
    waiting: Option<(String, String)>,
    /// Being deleted (it has a deletionTimestamp).
    terminating: bool,
    /// Why the control plane disrupted it (its `DisruptionTarget` condition's reason).
    disruption: Option<String>,
    written: bool,
}

impl TrackedPod {
    /// Nothing more will come of it: deleted, or ended with its log stored.
    fn settled(&self) -> bool {
        self.record.deleted
    }
}

/// One namespace's tracker: the cache, the work queue and the reconcile.
struct Tracker {
    runtime: Runtime,
    namespace: String,
    cache: HashMap<String, Tracked>,
    queue: WorkQueue,
    /// Pods listed by the pod watch's re-list under way.
    pods_listed: Option<HashSet<String>>,
    /// Jobs listed by the Job watch's re-list under way.
    jobs_listed: Option<HashSet<String>>,
    /// Kueue's hold on each Job that has a Workload, by Job name.
    holds: HashMap<String, Hold>,
    /// A Job in a Kueue queue was seen: the Workloads are to be watched.
    wants_workloads: bool,
    /// Jobs whose Workload the Workload watch's re-list under way showed.
    holds_listed: Option<HashSet<String>>,
}

/// One step of the loop, chosen by `select!` and carried out after it.
enum Step {
    Job(Box<Result<Event<Job>, WatchError>>),
    Pod(Box<Result<Event<Pod>, WatchError>>),
    Workload(Box<Result<Event<Workload>, WatchError>>),
    Reconcile(Key),
    Done(Key, Box<crate::error::Result<Option<Done>>>),
    ListAll,
}

/// Follows `namespace`'s Jobs and pods until `shutdown`.
pub async fn track(runtime: Runtime, namespace: String, shutdown: CancellationToken) {
    let timeout = runtime.settings.watch_timeout_secs;
    let mut jobs = runtime.cluster.watch_jobs(&namespace, timeout);
    let mut pods = runtime.cluster.watch_pods(&namespace, timeout);
    let interval = runtime.settings.reconcile_interval;
    let mut list_all = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    list_all.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tracker = Tracker {
        runtime,
        namespace,
        cache: HashMap::new(),
        queue: WorkQueue::new(),
        pods_listed: None,
        jobs_listed: None,
        holds: HashMap::new(),
        wants_workloads: false,
        holds_listed: None,
    };
    // Started once a Job in a Kueue queue is seen, then kept.
    let mut workloads: Option<Watch<Workload>> = None;
    let mut running = Reconciles::new();
    let concurrency = tracker.runtime.settings.tracker_concurrency.max(1);
    loop {
        if workloads.is_none() && tracker.wants_workloads {
            workloads = Some(
                tracker
                    .runtime
                    .cluster
                    .watch_workloads(&tracker.namespace, timeout),
            );
        }
        let next_workload = async {
            match workloads.as_mut() {
                Some(stream) => stream.next().await,
                None => std::future::pending().await,
            }
        };
        let step = tokio::select! {
            _ = shutdown.cancelled() => {
                // The reconciles under way end their writes (a restart would redo them).
                let drain = async { while running.next().await.is_some() {} };
                let _ = tokio::time::timeout(Duration::from_secs(5), drain).await;
                return;
            }
            event = jobs.next() => match event {
                Some(event) => Step::Job(Box::new(event)),
                None => return,
            },
            event = pods.next() => match event {
                Some(event) => Step::Pod(Box::new(event)),
                None => return,
            },
            event = next_workload => match event {
                Some(event) => Step::Workload(Box::new(event)),
                None => return,
            },
            key = tracker.queue.next(), if running.len() < concurrency => Step::Reconcile(key),
            Some((key, outcome)) = running.next(), if !running.is_empty() => Step::Done(key, Box::new(outcome)),
            _ = list_all.tick() => Step::ListAll,
        };
        match step {
            Step::Job(event) => tracker.job_event(*event),
            Step::Pod(event) => tracker.pod_event(*event, &shutdown),
            Step::Workload(event) => tracker.workload_event(*event),
            Step::Reconcile(key) => tracker.start(key, &mut running).await,
            Step::Done(key, outcome) => tracker.finish(key, *outcome),
            Step::ListAll => tracker.list_all().await,
        }
    }
}

/// The name of the Job controlling `pod`.
fn owning_job(pod: &Pod) -> Option<String> {
    pod.owner_references()
        .iter()
        .find(|o| o.controller == Some(true) && o.kind == "Job")
        .map(|o| o.name.clone())
}

impl Tracker {
    fn job_event(&mut self, event: Result<Event<Job>, WatchError>) {
        let namespace = &self.namespace;
        match event {
            Err(error) => {
                metrics::counter!("vfi_watch_errors_total", "kind" => "job").increment(1);
                tracing::warn!(%namespace, error = %crate::error::chain(&error), "job watch failed; it restarts with backoff");
            }
            Ok(Event::Init) => {
                metrics::counter!("vfi_watch_relists_total", "kind" => "job").increment(1);
                self.jobs_listed = Some(HashSet::new());
            }
            Ok(Event::InitApply(job)) => {
                if observe::run_id(job.metadata.labels.as_ref()).is_none() || settled_job(&job) {
                    // Not kept: should its run be unfinished after all, the check after the
                    // re-list looks the Job up.
                    return;
                }
                let name = job.name_any();
                if let Some(listed) = self.jobs_listed.as_mut() {
                    listed.insert(name.clone());
                }
                self.job_seen(name, job);
            }
            Ok(Event::InitDone) => {
                // Jobs the re-list did not show are gone (their `Delete` was missed): the check
                // looks up the unfinished runs' Jobs.
                let listed = self.jobs_listed.take().unwrap_or_default();
                for (name, tracked) in &mut self.cache {
                    if !listed.contains(name) {
                        tracked.job = None;
                        tracked.generation += 1;
                    }
                }
                self.queue.add(Key::Resync);
            }
            Ok(Event::Apply(job)) => {
                if observe::run_id(job.metadata.labels.as_ref()).is_some() {
                    self.job_seen(job.name_any(), job);
                }
            }
            Ok(Event::Delete(job)) => {
                if observe::run_id(job.metadata.labels.as_ref()).is_some() {
                    let name = job.name_any();
                    let tracked = self.cache.entry(name.clone()).or_default();
                    tracked.job = None;
                    tracked.deleted = Some(Box::new(SlimJob::from(job)));
                    tracked.job_changed = true;
                    tracked.generation += 1;
                    self.queue.add(Key::Job(name));
                }
            }
        }
    }

    fn job_seen(&mut self, name: String, job: Job) {
        if kueue::queue_name(&job).is_some() {
            self.wants_workloads = true;
        }
        let tracked = self.cache.entry(name.clone()).or_default();
        let unchanged = job.metadata.resource_version.is_some()
            && tracked.job.as_ref().map(|j| &j.metadata.resource_version)
                == Some(&job.metadata.resource_version)
            && !tracked.job_changed;
        tracked.job = Some(Box::new(SlimJob::from(job)));
        tracked.deleted = None;
        if !unchanged {
            tracked.generation += 1;
            tracked.job_changed = true;
            self.queue.add(Key::Job(name));
        }
    }

    fn workload_event(&mut self, event: Result<Event<Workload>, WatchError>) {
        let namespace = &self.namespace;
        match event {
            Err(error) => {
                metrics::counter!("vfi_watch_errors_total", "kind" => "workload").increment(1);
                tracing::warn!(%namespace, error = %crate::error::chain(&error), "Kueue Workload watch failed (is Kueue installed?); it restarts with backoff");
            }
            Ok(Event::Init) => {
                metrics::counter!("vfi_watch_relists_total", "kind" => "workload").increment(1);
                self.holds_listed = Some(HashSet::new());
            }
            Ok(Event::InitApply(workload) | Event::Apply(workload)) => {
                if let Some((job, hold)) = workload.hold() {
                    if let Some(listed) = self.holds_listed.as_mut() {
                        listed.insert(job.clone());
                    }
                    if self.holds.get(&job) != Some(&hold) {
                        self.holds.insert(job.clone(), hold);
                        self.hold_changed(job);
                    }
                }
            }
            Ok(Event::InitDone) => {
                let listed = self.holds_listed.take().unwrap_or_default();
                let gone: Vec<String> = (self.holds.keys())
                    .filter(|job| !listed.contains(*job))
                    .cloned()
                    .collect();
                for job in gone {
                    self.holds.remove(&job);
                    self.hold_changed(job);
                }
            }
            Ok(Event::Delete(workload)) => {
                if let Some((job, hold)) = workload.hold() {
                    // Only this Workload's entry: a re-created Job's may already be there.
                    if self.holds.get(&job).map(|h| &h.job_uid) == Some(&hold.job_uid) {
                        self.holds.remove(&job);
                        self.hold_changed(job);
                    }
                }
            }
        }
    }

    /// A Job's Workload changed: its run is looked at again, if the Job is tracked.
    fn hold_changed(&mut self, job: String) {
        if let Some(tracked) = self.cache.get_mut(&job) {
            if tracked.job.is_some() {
                tracked.job_changed = true;
                tracked.generation += 1;
                self.queue.add(Key::Job(job));
            }
        }
    }

    fn pod_event(&mut self, event: Result<Event<Pod>, WatchError>, shutdown: &CancellationToken) {
        let namespace = &self.namespace;
        match event {
            Err(error) => {
                metrics::counter!("vfi_watch_errors_total", "kind" => "pod").increment(1);
                tracing::warn!(%namespace, error = %crate::error::chain(&error), "pod watch failed; it restarts with backoff");
            }
            Ok(Event::Init) => {
                metrics::counter!("vfi_watch_relists_total", "kind" => "pod").increment(1);
                self.pods_listed = Some(HashSet::new());
            }
            Ok(Event::InitDone) => {
                // Pods the re-list did not show are gone; nothing more will be written of them.
                let listed = self.pods_listed.take().unwrap_or_default();
                for tracked in self.cache.values_mut() {
                    tracked.pods.retain(|pod| listed.contains(&pod.record.name));
                }
            }
            // A re-list (after a restart: every retained pod) skips settled pods.
            Ok(Event::InitApply(pod)) if settled_pod(&pod) => {}
            Ok(Event::InitApply(pod) | Event::Apply(pod)) => {
                if let Some(listed) = self.pods_listed.as_mut() {
                    listed.insert(pod.name_any());
                }
                // A settled pod's log is stored (or given up on): its capture's finalizer is
                // gone. Its later events (that removal itself, on every replica) would each cost
                // the archiver a futile claim, a read of the capture and a GET of the pod.
                if !settled_pod(&pod) {
                    self.runtime.archiver.observe(&pod, shutdown);
                }
                self.pod_seen(&pod, false);
            }
            Ok(Event::Delete(pod)) => self.pod_seen(&pod, true),
        }
    }

    /// Keeps what `pod` says to be written, and queues its Job when that changed.
    fn pod_seen(&mut self, pod: &Pod, deleted: bool) {
        let (Some(run_id), Some(job)) = (
            observe::run_id(pod.metadata.labels.as_ref()),
            owning_job(pod),
        ) else {
            return;
        };
        let record = observe::pod_record(pod, deleted);
        let waiting = (!deleted).then(|| observe::pod_waiting(pod)).flatten();
        let tracked = self.cache.entry(job.clone()).or_default();
        let disruption = observe::pod_disruption(pod);
        let unchanged = tracked.pods.get(&record.name).is_some_and(|p| {
            p.record == record && p.waiting == waiting && p.disruption == disruption
        });
        if !unchanged {
            tracked.pods.insert(TrackedPod {
                run_id,
                record,
                waiting,
                terminating: pod.metadata.deletion_timestamp.is_some(),
                disruption,
                written: false,
            });
            self.queue.add(Key::Job(job));
        }
    }

    /// Starts the reconcile of `key` (the check of unfinished runs is done here and now), unless
    /// one is under way for it: then it comes again after that one.
    async fn start(&mut self, key: Key, running: &mut Reconciles) {
        if !self.queue.start(&key) {
            return;
        }
        let name = match &key {
            Key::Resync => {
                let outcome = self.resync().await;
                self.finish(key, outcome.map(|()| None));
                return;
            }
            Key::Job(name) => name.clone(),
        };
        let Some(work) = self.work(&name) else {
            self.finish(key, Ok(None));
            return;
        };
        let runtime = self.runtime.clone();
        running.push(Box::pin(async move {
            let outcome = reconcile(runtime, work).await.map(Some);
            (key, outcome)
        }));
    }

    /// What the reconcile of Job `name` is to write, taken from the cache as it is now.
    fn work(&self, name: &str) -> Option<Work> {
        let tracked = self.cache.get(name)?;
        let hold = self.holds.get(name).cloned();
        // While Kueue holds the Job, only the Job unsuspended moves its run on.
        let current = tracked.job.as_ref().map(|job| job.to_job());
        let held = current.as_ref().is_some_and(kueue::held);
        let pods: Vec<TrackedPod> = (tracked.pods.values())
            .filter(|p| !p.written)
            .cloned()
            .collect();
        let job = if !(tracked.job_changed || tracked.check.is_some()) {
            JobWork::Nothing
        } else if let Some(job) = current {
            JobWork::Changed {
                // Every pod of the cache is written before the Job's status.
                pods_recorded: pods_accounted_for(&job, tracked.pods.values()),
                job,
                hold,
            }
        } else if let Some(job) = &tracked.deleted {
            JobWork::Gone(job.to_job())
        } else if let Some(run_id) = tracked.check {
            JobWork::Check { run_id, hold }
        } else {
            JobWork::Clear
        };
        Some(Work {
            namespace: self.namespace.clone(),
            name: name.to_string(),
            held,
            pods,
            job,
            generation: tracked.generation,
        })
    }

    /// A reconcile ended: what it wrote is marked so in the cache (unless it changed meanwhile,
    /// and so is to be written again), and the error policy is applied to a failure: log it
    /// with its cause chain and requeue the key with backoff.
    fn finish(&mut self, key: Key, outcome: crate::error::Result<Option<Done>>) {
        match outcome {
            Ok(done) => {
                self.queue.succeeded(&key);
                if let Some(done) = done {
                    if self.settle(done) == Action::Forget {
                        if let Key::Job(name) = &key {
                            self.cache.remove(name);
                        }
                    }
                }
            }
            Err(error) => {
                tracing::warn!(namespace = %self.namespace, key = %key.id(), error = %crate::error::chain(&error), "tracking failed; reconciling again with backoff");
                self.queue.failed(key.clone());
            }
        }
        self.queue.finish(&key);
    }

    /// Records in the cache what a reconcile wrote, and says what is left to keep.
    fn settle(&mut self, done: Done) -> Action {
        let Some(tracked) = self.cache.get_mut(&done.name) else {
            return Action::AwaitChange;
        };
        for pod in done.pods {
            let name = &pod.record.name;
            let Some(now) = tracked.pods.get_mut(name) else {
                continue;
            };
            if now.record != pod.record
                || now.waiting != pod.waiting
                || now.terminating != pod.terminating
                || now.disruption != pod.disruption
            {
                continue;
            }
            if now.settled() {
                tracked.pods.remove(name);
            } else {
                now.written = true;
            }
        }
        if done.job_done {
            if tracked.generation == done.generation {
                tracked.job_changed = false;
                tracked.check = None;
                tracked.deleted = None;
            } else {
                // The Job changed while its last state was written: write the new one.
                self.queue.add(Key::Job(done.name));
                return Action::AwaitChange;
            }
        }
        if tracked.job_changed || tracked.check.is_some() {
            return Action::AwaitChange;
        }
        // What is left to keep: an unsettled Job, or pods whose next change must be written.
        let keep_job = (tracked.job.as_ref()).is_some_and(|job| !settled_job(&job.to_job()));
        if keep_job || !tracked.pods.is_empty() {
            if !keep_job {
                tracked.job = None;
            }
            return Action::AwaitChange;
        }
        Action::Forget
    }

    /// Queues the Job of every unfinished run whose Job is not in the cache, to be looked up.
    async fn resync(&mut self) -> crate::error::Result<()> {
        let live = store::runs::live_with_jobs(&self.runtime.db, &self.namespace).await?;
        for run in live {
            let Some(job) = run.job else { continue };
            let tracked = self.cache.entry(job.name.clone()).or_default();
            if tracked.job.is_none() && tracked.deleted.is_none() {
                tracked.check = Some(run.id);
                tracked.generation += 1;
                self.queue.add(Key::Job(job.name));
            }
        }
        Ok(())
    }

    /// Lists the namespace's Jobs, as a safety net behind the watches: what changed is queued,
    /// and then the check of unfinished runs.
    async fn list_all(&mut self) {
        let mut continue_token = None;
        loop {
            let page = match self
                .runtime
                .cluster
                .list_jobs(&self.namespace, continue_token.as_deref())
                .await
            {
                Ok(page) => page,
                Err(error) => {
                    tracing::warn!(namespace = %self.namespace, error = %crate::error::chain(&error), "periodic listing of Jobs failed");
                    return;
                }
            };
            for mut job in page.items {
                if observe::run_id(job.metadata.labels.as_ref()).is_none() || settled_job(&job) {
                    continue;
                }
                watch::trim_job(&mut job);
                self.job_seen(job.name_any(), job);
            }
            continue_token = page.continue_token;
            if continue_token.is_none() {
                break;
            }
        }
        self.queue.add(Key::Resync);
    }
}

/// The reconciles under way, each ending with its key and what it wrote.
type Reconciles = futures::stream::FuturesUnordered<
    futures::future::BoxFuture<'static, (Key, crate::error::Result<Option<Done>>)>,
>;

/// What one reconcile is to write, taken from the cache when it starts: it runs beside the
/// watches, and what changes meanwhile is written by the next one.
struct Work {
    namespace: String,
    name: String,
    held: bool,
    /// The pods not yet written, as the cache had them.
    pods: Vec<TrackedPod>,
    job: JobWork,
    generation: u64,
}

/// What the Job's part of a reconcile does.
enum JobWork {
    Nothing,
    /// Nothing left to write, but the change flags are to be cleared.
    Clear,
    Changed {
        job: Job,
        hold: Option<Hold>,
        pods_recorded: bool,
    },
    Gone(Job),
    Check {
        run_id: Uuid,
        hold: Option<Hold>,
    },
}

/// What a reconcile wrote.
struct Done {
    name: String,
    pods: Vec<TrackedPod>,
    job_done: bool,
    generation: u64,
}

/// Brings the run of a Job in line with what the cache said of the Job and its pods: pods'
/// records first (a client that sees the run finished sees its pods), then the Job's status,
/// then what a final run needs done to its Job.
#[tracing::instrument(skip_all, fields(namespace = %work.namespace, job = %work.name))]
async fn reconcile(runtime: Runtime, work: Work) -> crate::error::Result<Done> {
    for pod in &work.pods {
        pod_changed(&runtime, pod, work.held).await?;
    }
    let job_done = match &work.job {
        JobWork::Nothing => false,
        JobWork::Clear => true,
        JobWork::Changed {
            job,
            hold,
            pods_recorded,
        } => {
            job_changed(&runtime, job, hold.as_ref(), *pods_recorded).await?;
            true
        }
        JobWork::Gone(job) => {
            job_gone(&runtime, job).await?;
            true
        }
        JobWork::Check { run_id, hold } => {
            check_missing(
                &runtime,
                &work.namespace,
                &work.name,
                *run_id,
                hold.as_ref(),
            )
            .await?;
            true
        }
    };
    Ok(Done {
        name: work.name,
        pods: work.pods,
        job_done,
        generation: work.generation,
    })
}

fn job_ref(job: &Job) -> JobRef {
    JobRef {
        namespace: job.namespace().unwrap_or_default(),
        name: job.name_any(),
        uid: job.uid(),
    }
}

/// Records what a Job says (with Kueue's `hold` on it, if its Workload was seen), then acts on
/// runs that are final: deletes the Job of a cancelled run, and releases the tracking finalizer
/// once the outcome is stored.
async fn job_changed(
    runtime: &Runtime,
    job: &Job,
    hold: Option<&Hold>,
    pods_recorded: bool,
) -> crate::error::Result<()> {
    let Some(run_id) = observe::run_id(job.metadata.labels.as_ref()) else {
        return Ok(());
    };
    let seen = observe::observe_job_in_queue(job, hold);
    record(runtime, run_id, job, &seen, pods_recorded).await
}

/// The tracker already holds (and so writes before the Job's status) a finished pod for each
/// one the Job counts: the Job controller counts a pod as succeeded or failed only once it saw
/// that pod finished (Kubernetes' Job controller, `trackJobStatusAndRemoveFinalizers`: a pod is
/// counted in `status.succeeded`/`failed` after its finished state is observed and its
/// tracking finalizer removed). Then the listing of the run's pods before its final status
/// (one API request, and a read of the run, per finished Job) would find nothing new.
///
/// Not with an `Ignore` rule in the Job's `podFailurePolicy` (the `retry` shorthand renders one
/// for disruptions): the controller never counts the pods it ignores, so finished pods in the
/// cache could stand in for a counted one not seen yet.
fn pods_accounted_for<'a>(job: &Job, pods: impl Iterator<Item = &'a TrackedPod>) -> bool {
    let ignores = job
        .spec
        .as_ref()
        .and_then(|s| s.pod_failure_policy.as_ref())
        .is_some_and(|p| p.rules.iter().any(|r| r.action == "Ignore"));
    if ignores {
        return false;
    }
    let status = job.status.as_ref();
    let counted = i64::from(status.and_then(|s| s.succeeded).unwrap_or(0))
        + i64::from(status.and_then(|s| s.failed).unwrap_or(0));
    let finished = pods
        .filter(|p| matches!(p.record.phase.as_str(), "Succeeded" | "Failed"))
        .count() as i64;
    counted > 0 && finished >= counted
}

/// A finished Job whose tracking finalizer is gone needs nothing: the finalizer is released only
/// once the run's outcome is stored. A re-list skips these (after a restart, thousands of
/// retained Jobs), and the check after it looks at any whose run is somehow still unfinished.
fn settled_job(job: &Job) -> bool {
    !job.finalizers()
        .iter()
        .any(|f| f == keys::TRACKING_FINALIZER)
        && observe::observe_job(job).status.is_final()
}

/// A pod that ended and whose log-capture finalizer is gone needs nothing: its log is stored (or
/// given up on) and its record was written when it ended, and again with its Job's final state.
fn settled_pod(pod: &Pod) -> bool {
    let ended = matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    );
    ended && !pod.finalizers().iter().any(|f| f == keys::LOG_FINALIZER)
}

/// A Job vanished from the API. With the tracking finalizer this only happens after the outcome
/// was recorded, unless someone removed the finalizer: then whatever it last said is final.
async fn job_gone(runtime: &Runtime, job: &Job) -> crate::error::Result<()> {
    let Some(run_id) = observe::run_id(job.metadata.labels.as_ref()) else {
        return Ok(());
    };
    let mut seen = observe::observe_job(job);
    if !seen.status.is_final() {
        seen.status = RunStatus::Lost;
        seen.reason = Some("JobDeleted".into());
        seen.message = Some("the Job was deleted before it finished".into());
    }
    record(runtime, run_id, job, &seen, false).await
}

/// Records what a Job says about its run, then acts on runs that are final. A failed write or
/// API call is returned, for the caller to look at the Job again.
async fn record(
    runtime: &Runtime,
    run_id: Uuid,
    job: &Job,
    seen: &observe::JobObservation,
    pods_recorded: bool,
) -> crate::error::Result<()> {
    let job_ref = job_ref(job);
    if seen.status.is_final() && !pods_recorded {
        // Pod events may trail the Job's: record the pods as the API has them now, so a client
        // that sees the run finished also sees all its pods.
        if let Some(run) = store::runs::get(&runtime.db, run_id).await? {
            if !run.status.is_final() {
                sync_pods(runtime, &job_ref.namespace, run_id).await?;
            }
        }
    }
    let observation = Observation {
        status: seen.status,
        reason: seen.reason.as_deref(),
        message: seen.message.as_deref(),
        counts: seen.counts,
        started_at: seen.started_at,
        finished_at: seen.finished_at,
        job: Some(&job_ref),
    };
    let observed = store::runs::observe_with(
        &runtime.db,
        run_id,
        &observation,
        Some(&runtime.settings.policy),
    )
    .await?;
    let holds_finalizer = job
        .finalizers()
        .iter()
        .any(|f| f == keys::TRACKING_FINALIZER);
    let Some(observed) = observed else {
        metrics::counter!("vfi_orphan_jobs_total").increment(1);
        tracing::warn!(%run_id, job = %job_ref.name, namespace = %job_ref.namespace,
            "a Job labelled as this installation's has no run; leaving it alone");
        if seen.deleting && holds_finalizer {
            release(runtime, job).await?;
        }
        return Ok(());
    };
    if observed.previous != observed.current {
        tracing::info!(%run_id, from = %observed.previous, to = %observed.current, "run status changed");
    }
    if !observed.current.is_final() {
        return Ok(());
    }
    // The run is over but its Job is not: cancelled; failed by the pending limit (a Job that
    // fails by itself says so; one still pending was failed by the service); or failed before
    // the Job came (e.g. LaunchTimeout while the create hung, and the API server carried the
    // create out later). The Job must not run on unrecorded: delete it.
    let leftover = observed.current == RunStatus::Cancelled
        || (observed.current == RunStatus::Failed
            && matches!(seen.status, RunStatus::Pending | RunStatus::Admitting))
        || (!seen.status.is_final() && !observed.job_recorded);
    if leftover && !seen.deleting {
        runtime
            .cluster
            .delete_job(&job_ref.namespace, &job_ref.name)
            .await
            .map_err(|error| anyhow::Error::from(error).context("deleting a finished run's Job"))?;
    } else if holds_finalizer {
        release(runtime, job).await?;
    }
    Ok(())
}

async fn release(runtime: &Runtime, job: &Job) -> crate::error::Result<()> {
    runtime
        .cluster
        .release_job(job, runtime.settings.finished_job_ttl_secs)
        .await
        .map_err(|error| anyhow::Error::from(error).context("releasing the Job's finalizer"))?;
    Ok(())
}

/// An unfinished run whose Job is not in the cache: the Job is looked up (it may have been
/// created after the list was taken); one that is really gone makes the run `lost`.
async fn check_missing(
    runtime: &Runtime,
    namespace: &str,
    name: &str,
    run_id: Uuid,
    hold: Option<&Hold>,
) -> crate::error::Result<()> {
    let job = runtime
        .cluster
        .get_job(namespace, name)
        .await
        .map_err(|error| {
            anyhow::Error::from(error).context("looking up an unfinished run's Job")
        })?;
    if let Some(job) = job {
        return job_changed(runtime, &job, hold, false).await;
    }
    let Some(run) = store::runs::get(&runtime.db, run_id).await? else {
        return Ok(());
    };
    if run.status.is_final() {
        return Ok(());
    }
    metrics::counter!("vfi_reconcile_corrections_total", "kind" => "lost").increment(1);
    tracing::warn!(%run_id, job = %name, "reconcile: the run's Job is gone; the run is lost");
    let observation = Observation {
        status: RunStatus::Lost,
        reason: Some("JobMissing"),
        message: Some("the Job was no longer in the cluster before the run finished"),
        counts: run.pods,
        started_at: None,
        finished_at: None,
        job: None,
    };
    store::runs::observe_with(
        &runtime.db,
        run.id,
        &observation,
        Some(&runtime.settings.policy),
    )
    .await?;
    Ok(())
}

/// Lists a run's pods and records each. A failed list is logged (the run's final state is not
/// held up by it); a failed write is returned.
async fn sync_pods(runtime: &Runtime, namespace: &str, run_id: Uuid) -> crate::error::Result<()> {
    match runtime.cluster.run_pods(namespace, run_id).await {
        Ok(pods) => {
            for pod in &pods {
                let tracked = TrackedPod {
                    run_id,
                    record: observe::pod_record(pod, false),
                    waiting: observe::pod_waiting(pod),
                    terminating: pod.metadata.deletion_timestamp.is_some(),
                    disruption: observe::pod_disruption(pod),
                    written: false,
                };
                pod_changed(runtime, &tracked, false).await?;
            }
        }
        Err(error) => {
            tracing::warn!(%run_id, error = %crate::error::chain(&error), "listing a finished run's pods failed")
        }
    }
    Ok(())
}

/// Writes a pod's record, why it waits, and the run's start when it runs (not while Kueue
/// `held` its Job: a pod of an evicted Job can still report `Running`).
async fn pod_changed(runtime: &Runtime, pod: &TrackedPod, held: bool) -> crate::error::Result<()> {
    if held && (pod.terminating || pod.record.deleted) {
        // Removed because Kueue suspended the Job: the Job controller does not count it as
        // failed, and neither does its record.
        let mut record = pod.record.clone();
        kueue::removed_by_suspension(&mut record);
        store::pods::upsert(&runtime.db, pod.run_id, &record).await?;
        return Ok(());
    }
    store::pods::upsert(&runtime.db, pod.run_id, &pod.record).await?;
    if let Some(reason) = &pod.disruption {
        count_disruption(runtime, pod, reason).await?;
    }
    if let Some((reason, message)) = &pod.waiting {
        let waiting = store::runs::Waiting { reason, message };
        store::runs::note_waiting(&runtime.db, pod.run_id, &waiting).await?;
    }
    // A running pod is the earliest sign a run is running; the Job's status follows later.
    if pod.record.phase == "Running" && !pod.record.deleted && !held {
        store::runs::advance(&runtime.db, pod.run_id, RunStatus::Running).await?;
    }
    Ok(())
}

/// A disrupted pod counts against its run's `retry.onInfrastructureFailure`: past it, the run
/// fails (`InfrastructureFailuresExceeded`) and its Job is deleted, since the Job's `Ignore`
/// rule would replace the pod forever.
async fn count_disruption(
    runtime: &Runtime,
    pod: &TrackedPod,
    reason: &str,
) -> crate::error::Result<()> {
    let failed =
        store::runs::count_disruption(&runtime.db, pod.run_id, &pod.record.name, reason).await?;
    if let Some(job) = failed.and_then(|run| run.job) {
        tracing::warn!(run_id = %pod.run_id, pod = %pod.record.name, reason, "run failed: more infrastructure failures than retry.onInfrastructureFailure allows");
        runtime
            .cluster
            .delete_job(&job.namespace, &job.name)
            .await
            .map_err(|error| {
                anyhow::Error::from(error).context("deleting the Job of a run past its disruptions")
            })?;
    }
    Ok(())
}

/// Follows the Job controller's `FailedCreate` Events in `namespace` (pods refused by admission,
/// quota, ...): the run of that Job records the API server's message while it is pending.
pub async fn track_failed_creates(
    runtime: Runtime,
    namespace: String,
    shutdown: CancellationToken,
) {
    let mut events = runtime.cluster.watch_failed_creates(&namespace);
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return,
            event = events.next() => event,
        };
        match event {
            None => return,
            Some(Err(error)) => {
                metrics::counter!("vfi_watch_errors_total", "kind" => "event").increment(1);
                tracing::warn!(%namespace, error = %crate::error::chain(&error), "event watch failed; it restarts with backoff");
            }
            Some(Ok(event)) => {
                let Some((job, message)) = observe::failed_create(&event) else {
                    continue;
                };
                let waiting = store::runs::Waiting {
                    reason: "FailedCreate",
                    message: &message,
                };
                if let Err(error) =
                    store::runs::note_waiting_for_job(&runtime.db, &job, &waiting).await
                {
                    tracing::warn!(job = %job.name, error = %crate::error::chain(&error), "recording a FailedCreate failed");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_job_queued_many_times_is_reconciled_once_and_a_failure_comes_back_after_backoff() {
        let mut queue = WorkQueue::new();
        let job = Key::Job("run-1".into());
        queue.add(job.clone());
        queue.add(Key::Resync);
        queue.add(job.clone());
        assert_eq!(queue.next().await, job);
        assert_eq!(queue.next().await, Key::Resync);
        let nothing = tokio::time::timeout(Duration::from_millis(100), queue.next()).await;
        assert!(
            nothing.is_err(),
            "the second add of a queued key adds nothing"
        );

        // The error policy: the key comes back by itself after its backoff.
        queue.failed(job.clone());
        let started = tokio::time::Instant::now();
        assert_eq!(queue.next().await, job);
        assert!(started.elapsed() >= Duration::from_millis(100));
        queue.succeeded(&job);
        let nothing = tokio::time::timeout(Duration::from_secs(1), queue.next()).await;
        assert!(nothing.is_err(), "a reconciled key does not come back");
    }

    fn tracked_pod(phase: &str) -> TrackedPod {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("p-{phase}")}, "status": {"phase": phase}}))
        .unwrap();
        TrackedPod {
            run_id: Uuid::nil(),
            record: observe::pod_record(&pod, false),
            waiting: None,
            terminating: false,
            disruption: None,
            written: true,
        }
    }

    #[test]
    fn a_finished_jobs_pods_are_listed_again_unless_the_cache_holds_every_pod_it_counted() {
        let job = |status: serde_json::Value| -> Job {
            serde_json::from_value(serde_json::json!({"metadata": {"name": "j"}, "status": status}))
                .unwrap()
        };
        let failed_one = job(serde_json::json!({"failed": 1}));
        assert!(pods_accounted_for(
            &failed_one,
            [tracked_pod("Failed")].iter()
        ));
        assert!(
            !pods_accounted_for(&failed_one, [tracked_pod("Running")].iter()),
            "the pod's end not seen yet: its pods are listed"
        );
        let two = job(serde_json::json!({"succeeded": 1, "failed": 1}));
        assert!(!pods_accounted_for(&two, [tracked_pod("Failed")].iter()));
        assert!(
            !pods_accounted_for(&job(serde_json::json!({})), [].iter()),
            "a Job that counts no pod (deleted before any ran) is listed"
        );
        // An ignored (disrupted) pod is finished in the cache but not counted by the Job
        // controller: it cannot stand in for the counted failure not seen yet.
        let ignoring: Job = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "j"},
            "spec": {"template": {}, "podFailurePolicy": {"rules": [{"action": "Ignore",
                "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}]}},
            "status": {"failed": 1}}))
        .unwrap();
        assert!(!pods_accounted_for(
            &ignoring,
            [tracked_pod("Failed")].iter()
        ));
    }

    #[tokio::test]
    async fn a_job_changed_during_its_reconcile_is_reconciled_again_after_it_never_beside_it() {
        let mut queue = WorkQueue::new();
        let job = Key::Job("run-1".into());
        queue.add(job.clone());
        let key = queue.next().await;
        assert!(queue.start(&key));

        // An event for the Job while its reconcile runs: not a second reconcile beside it.
        queue.add(job.clone());
        let nothing = tokio::time::timeout(Duration::from_millis(100), queue.next()).await;
        assert!(
            nothing.is_err(),
            "the key is not handed out while under way"
        );
        // Nor from its backoff (a failure's retry that comes due meanwhile).
        assert!(!queue.start(&job));

        // Once it ends, the key comes once more.
        queue.finish(&job);
        assert_eq!(queue.next().await, job);
        assert!(queue.start(&job));
        queue.finish(&job);
        let nothing = tokio::time::timeout(Duration::from_millis(100), queue.next()).await;
        assert!(nothing.is_err(), "then nothing more");
    }
}
