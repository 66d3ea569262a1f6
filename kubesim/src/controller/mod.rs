//! The control loop: one task that plays kube-controller-manager (Job controller, garbage
//! collector, TTL-after-finished) and the node's kubelet. It is event driven: it follows the
//! store's history like a watch, reacts to timers (start delays, deadlines, TTLs) and runner
//! exits, and resyncs everything when it falls behind the bounded history. It never serves HTTP.
//!
//! Depends on: `kubelet` (it drives the node), `timers`, `store`, `faults`, `logs`, `behaviour`,
//! `objects`. Nothing below it imports `controller` except `api` (the GC finalizer names).

pub mod ephemeral;
pub mod gc;
pub mod job;
pub mod namespace;

use std::collections::{BTreeSet, HashMap};

use crate::behaviour::Behaviour;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::faults::{Command, Faults};
use crate::kubelet::{Exit, Kubelet, Runner};
use crate::logs::Logs;
use crate::objects::controller_ref;
use crate::store::{EventType, Kind, ObjKey, Store};
use crate::timers::{Timer, Timers};

pub(crate) struct LoopConfig {
    pub store: Arc<Store>,
    pub logs: Arc<Logs>,
    pub runner: Arc<dyn Runner>,
    pub node_capacity: usize,
    pub start_delay: Duration,
    pub log_removal_delay: Option<Duration>,
    pub restart_backoff: Duration,
    pub faults: Faults,
    pub commands: mpsc::UnboundedReceiver<Command>,
    pub behaviour: Arc<Behaviour>,
}

struct Loop {
    store: Arc<Store>,
    kubelet: Kubelet,
    timers: Timers,
    dirty_jobs: BTreeSet<ObjKey>,
    gc: gc::Gc,
    job_cursor: u64,
    pod_cursor: u64,
    workload_cursor: u64,
    /// Cursors of the kinds only the garbage collector follows (Secrets, ConfigMaps, PVCs).
    gc_cursors: [u64; 3],
    resync: bool,
    behaviour: Arc<Behaviour>,
    create_failures: HashMap<String, u32>,
}

impl Loop {
    fn mark_owner_dirty(&mut self, pod: &Pod) {
        if let Some(o) = controller_ref(&pod.metadata) {
            if o.kind == "Job" {
                let ns = pod.metadata.namespace.clone().unwrap_or_default();
                self.dirty_jobs.insert((ns, o.name.clone()));
            }
        }
    }

    fn full_resync(&mut self) {
        let rv = self.store.current_rv();
        self.job_cursor = rv;
        self.pod_cursor = rv;
        self.workload_cursor = rv;
        self.gc_cursors = [rv; 3];
        let (jobs, _) = self.store.list::<Job>(None);
        for j in &jobs {
            let key = (
                j.metadata.namespace.clone().unwrap_or_default(),
                j.metadata.name.clone().unwrap_or_default(),
            );
            self.dirty_jobs.insert(key);
            self.gc.object_changed(&self.store, j.as_ref());
        }
        let (pods, _) = self.store.list::<Pod>(None);
        for p in &pods {
            ephemeral::sync_pod(&self.store, p);
            self.kubelet.reconcile(p, &mut self.timers);
            self.gc.object_changed(&self.store, p.as_ref());
            job::release_orphan(&self.store, p);
        }
        let (workloads, _) = self.store.list::<crate::kueue::Workload>(None);
        for w in &workloads {
            self.gc.object_changed(&self.store, w.as_ref());
        }
        self.resync_gc_only::<Secret>();
        self.resync_gc_only::<ConfigMap>();
        self.resync_gc_only::<PersistentVolumeClaim>();
        for pvc in self.store.list::<PersistentVolumeClaim>(None).0 {
            ephemeral::provision(&self.store, &pvc);
        }
        self.kubelet.reschedule(&mut self.timers);
    }

    fn resync_gc_only<K: Kind>(&mut self) {
        for obj in self.store.list::<K>(None).0 {
            self.gc.object_changed(&self.store, obj.as_ref());
        }
    }

    /// Follows a kind only the garbage collector cares about; false when its history expired
    /// (the caller resyncs).
    fn drain_gc_only<K: Kind>(&mut self, slot: usize) -> Option<Vec<crate::store::Event<K>>> {
        match self.store.events_since::<K>(self.gc_cursors[slot]) {
            Ok((evs, _)) => {
                for ev in &evs {
                    self.gc_cursors[slot] = ev.rv;
                    match ev.kind {
                        EventType::Deleted => self.gc.object_deleted(ev.obj.as_ref()),
                        _ => self.gc.object_changed(&self.store, ev.obj.as_ref()),
                    }
                }
                Some(evs)
            }
            Err(_) => None,
        }
    }

    /// PVCs: the garbage collector follows them, the provisioner binds new ones, and a pod
    /// waiting for a claim may now be scheduled (or, its claim gone, get a new one).
    fn drain_pvcs(&mut self) -> bool {
        let Some(evs) = self.drain_gc_only::<PersistentVolumeClaim>(2) else {
            return false;
        };
        if evs.is_empty() {
            return true;
        }
        for ev in &evs {
            if ev.kind != EventType::Deleted {
                ephemeral::provision(&self.store, &ev.obj);
            }
        }
        for pod in self.store.list::<Pod>(None).0 {
            ephemeral::sync_pod(&self.store, &pod);
        }
        self.kubelet.reschedule(&mut self.timers);
        true
    }

    fn drain_events(&mut self) {
        if self.resync {
            self.resync = false;
            self.full_resync();
            return;
        }
        match self.store.events_since::<Job>(self.job_cursor) {
            Ok((evs, _)) => {
                for ev in evs {
                    self.job_cursor = ev.rv;
                    let j = &ev.obj;
                    let key = (
                        j.metadata.namespace.clone().unwrap_or_default(),
                        j.metadata.name.clone().unwrap_or_default(),
                    );
                    match ev.kind {
                        EventType::Deleted => self.gc.object_deleted(j.as_ref()),
                        _ => {
                            self.gc.object_changed(&self.store, j.as_ref());
                            self.dirty_jobs.insert(key);
                        }
                    }
                }
            }
            Err(_) => {
                self.full_resync();
                return;
            }
        }
        match self.store.events_since::<Pod>(self.pod_cursor) {
            Ok((evs, _)) => {
                for ev in evs {
                    self.pod_cursor = ev.rv;
                    let p = &ev.obj;
                    match ev.kind {
                        EventType::Deleted => {
                            self.kubelet.forget(p, &mut self.timers);
                            self.gc.object_deleted(p.as_ref());
                        }
                        _ => {
                            // The ephemeral volume controller runs first, so a pod's claims
                            // usually exist by the time the scheduler looks at it.
                            ephemeral::sync_pod(&self.store, p);
                            self.kubelet.reconcile(p, &mut self.timers);
                            self.gc.object_changed(&self.store, p.as_ref());
                            job::release_orphan(&self.store, p);
                        }
                    }
                    self.mark_owner_dirty(p);
                }
            }
            Err(_) => {
                self.full_resync();
                return;
            }
        }
        // Kueue's job reconciler watches its Workloads: a change (admission, eviction) is a
        // change of the owning Job. The garbage collector follows them as any kind.
        match self
            .store
            .events_since::<crate::kueue::Workload>(self.workload_cursor)
        {
            Ok((evs, _)) => {
                for ev in evs {
                    self.workload_cursor = ev.rv;
                    match ev.kind {
                        EventType::Deleted => self.gc.object_deleted(ev.obj.as_ref()),
                        _ => self.gc.object_changed(&self.store, ev.obj.as_ref()),
                    }
                    if let Some(o) = controller_ref(&ev.obj.metadata) {
                        if o.kind == "Job" {
                            let ns = ev.obj.metadata.namespace.clone().unwrap_or_default();
                            self.dirty_jobs.insert((ns, o.name.clone()));
                        }
                    }
                }
            }
            Err(_) => {
                self.full_resync();
                return;
            }
        }
        if self.drain_gc_only::<Secret>(0).is_none()
            || self.drain_gc_only::<ConfigMap>(1).is_none()
            || !self.drain_pvcs()
        {
            self.full_resync();
        }
    }

    fn run_timers(&mut self) {
        let now = Instant::now();
        while let Some(t) = self.timers.pop_due(now) {
            match t {
                Timer::StartPod(key, uid) => self.kubelet.start(&key, &uid, &mut self.timers),
                Timer::PodDeadline(key, uid) => self.kubelet.deadline(&key, &uid),
                Timer::RemoveLogs(uid) => self.kubelet.remove_logs(&uid),
                Timer::RestartContainer(key, uid) => {
                    self.kubelet.restart(&key, &uid, &mut self.timers)
                }
                Timer::SyncJob(key) => {
                    self.dirty_jobs.insert(key);
                }
            }
        }
    }

    fn sync_dirty(&mut self) {
        namespace::sync(&self.store);
        self.gc.run(&self.store);
        let dirty = std::mem::take(&mut self.dirty_jobs);
        for key in dirty {
            if let Some(cfg) = &self.behaviour.kueue {
                crate::kueue::sync_job(&self.store, cfg, &self.behaviour.events, &key.0, &key.1);
            }
            let mut ctl = job::Ctl {
                behaviour: &self.behaviour,
                create_failures: &mut self.create_failures,
            };
            job::sync(&self.store, &mut ctl, &key, &mut self.timers);
        }
    }
}

/// Runs the loop until `cancel` fires.
pub(crate) async fn run(cfg: LoopConfig, cancel: CancellationToken) {
    let LoopConfig {
        store,
        logs,
        runner,
        node_capacity,
        start_delay,
        log_removal_delay,
        restart_backoff,
        faults,
        mut commands,
        behaviour,
    } = cfg;
    let (exit_tx, mut exits) = mpsc::unbounded_channel::<Exit>();
    let mut changes = store.subscribe();
    let mut paused = faults.state.paused.subscribe();
    let mut kubelet = Kubelet::new(
        store.clone(),
        logs,
        runner,
        node_capacity,
        start_delay,
        exit_tx,
        behaviour.clone(),
    );
    kubelet.log_removal_delay = log_removal_delay;
    kubelet.restart_backoff = restart_backoff;
    let mut lp = Loop {
        store,
        kubelet,
        timers: Timers::default(),
        dirty_jobs: BTreeSet::new(),
        gc: gc::Gc::default(),
        job_cursor: 0,
        pod_cursor: 0,
        workload_cursor: 0,
        gc_cursors: [0; 3],
        resync: true,
        behaviour,
        create_failures: HashMap::new(),
    };
    let mut pending_exits: Vec<Exit> = Vec::new();
    let mut pending_cmds: Vec<Command> = Vec::new();
    loop {
        if *paused.borrow_and_update() {
            tokio::select! {
                _ = cancel.cancelled() => {
                lp.kubelet.kill_all();
                return;
            }
                r = paused.changed() => if r.is_err() { return },
            }
            continue;
        }
        changes.borrow_and_update();
        // One bad object must not stop the simulated cluster: a panic in a step is logged and
        // the next iteration starts with a full resync.
        let step = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            lp.drain_events();
            lp.run_timers();
            for exit in pending_exits.drain(..) {
                lp.kubelet.on_exit(exit, &mut lp.timers);
            }
            for cmd in pending_cmds.drain(..) {
                match cmd {
                    Command::Evict { namespace, name } => lp.kubelet.evict(&namespace, &name),
                }
            }
            while let Ok(exit) = exits.try_recv() {
                lp.kubelet.on_exit(exit, &mut lp.timers);
            }
            while let Ok(cmd) = commands.try_recv() {
                match cmd {
                    Command::Evict { namespace, name } => lp.kubelet.evict(&namespace, &name),
                }
            }
            lp.sync_dirty();
        }));
        if step.is_err() {
            tracing::error!("kubesim control loop step panicked; resyncing");
            lp.resync = true;
            lp.dirty_jobs.clear();
            tokio::task::yield_now().await;
            continue;
        }
        if changes.has_changed().unwrap_or(false) {
            // Our own writes produced events; handle them before sleeping.
            tokio::task::yield_now().await;
            continue;
        }
        let next = lp.timers.next_deadline();
        tokio::select! {
            _ = cancel.cancelled() => {
                lp.kubelet.kill_all();
                return;
            }
            r = changes.changed() => if r.is_err() { return },
            Some(exit) = exits.recv() => pending_exits.push(exit),
            Some(cmd) = commands.recv() => pending_cmds.push(cmd),
            _ = async { match next { Some(t) => tokio::time::sleep_until(t).await, None => futures::future::pending().await } } => {},
            r = paused.changed() => if r.is_err() { return },
        }
    }
}
