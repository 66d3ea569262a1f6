//! The log archiver: copies each pod's log into Postgres while the pod runs, in chunks, and
//! completes it when the container ends. Pods carry the service's log-capture finalizer, removed
//! here once the log is stored (or after `capture_timeout` of failing to read it, recording what
//! was lost), so a TTL, a cancellation or garbage collection cannot take a pod before its log is
//! safe. Captures are claimed in the database under a lease, so replicas never copy a pod twice;
//! a sweep takes over every capture whose lease lapsed (its replica died or lost the database)
//! at once, and a graceful shutdown hands its leases back. A reopened stream goes on after the
//! last archived line, found by content (see [`Resume`]), so a log rotated by the kubelet while
//! no stream was open is never called complete with lines missing; a stream that delivers
//! nothing for `stall_timeout` is reopened.

use crate::cluster::jobs::Cluster;
use crate::cluster::pods::{main_instance, main_status, LogOpenError, LogRead};
use crate::cluster::{keys, observe};
use crate::domain::loglines::{split_timestamp, Anchor, LineSplitter, Resume, Seen};
use crate::domain::masking::{MaskedLines, Masks};
use crate::store::logs::{self, Append};
use backon::BackoffBuilder;
use futures::AsyncReadExt;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use sqlx::PgPool;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Why lines may be missing after a reopened stream did not hold the last archived line.
const ROTATED: &str = "the kubelet rotated the log while it was not being read";

/// Chunks are written when they reach this size, or after `flush_interval`.
const CHUNK_BYTES: usize = 64 * 1024;

/// What one read of a log stream takes at most; each open capture holds a buffer of this size.
const READ_BYTES: usize = 8 * 1024;

#[derive(Debug, Clone)]
pub struct LogSettings {
    /// Largest log kept per pod; beyond it the head and the tail are kept, with a marker between.
    pub cap_bytes: i64,
    /// After a pod ended, how long capture may keep failing before its finalizer is removed anyway.
    pub capture_timeout: Duration,
    /// Pods captured at once by one replica.
    pub concurrency: usize,
    /// How long a capture claim holds without progress.
    pub lease: Duration,
    /// Longest time read lines wait before they are written.
    pub flush_interval: Duration,
    /// Archives older than this are deleted (their runs stay); `None` keeps them with their run.
    pub max_age: Option<Duration>,
    /// How often lapsed captures are looked for.
    pub sweep_interval: Duration,
    /// A log stream that delivers nothing for this long is reopened (a half-dead connection
    /// would otherwise hang its capture forever; a quiet container's stream is reopened too,
    /// which costs one request).
    pub stall_timeout: Duration,
}

/// Where a capture stands: lines archived, and the last of them (to find the place again).
struct Cursor {
    next_line: i64,
    /// The last archived piece and its line's time.
    last: Option<Anchor>,
    /// The time of the line of the last piece put into the chunk being written (the anchor's
    /// time once it is stored): a piece after the first of a line longer than 64 KiB has no
    /// timestamp of its own, and the service's own marker lines have none.
    pending_time: Option<chrono::DateTime<chrono::Utc>>,
    /// A stream was opened since the last look (progress: the failure clock resets).
    opened: bool,
    /// The last stream ended without the last archived line in it or anything after it: the
    /// kubelet rotated it away, and lines after it may be lost.
    unplaced: bool,
    /// The restart count of the container instance being read.
    restarts: i32,
    /// When the container instance started, while nothing of it is archived: a first stream
    /// opened late whose first line is late may have missed lines rotated away before it.
    started_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The run's secret parameter values, masked before anything is stored (issue 18).
    masks: Masks,
}

/// Pause between reopening a stream that brought nothing new while the pod runs (a pod
/// waiting to restart, an unscheduled pod): doubles from the first to the last.
const REOPEN_PAUSE: (Duration, Duration) = (Duration::from_millis(250), Duration::from_secs(8));

/// Hands pods to capture tasks. Cheap to clone.
#[derive(Clone)]
pub struct Archiver {
    inner: Arc<Inner>,
}

struct Inner {
    db: PgPool,
    cluster: Cluster,
    settings: LogSettings,
    instance: String,
    active: Mutex<HashSet<(Uuid, String)>>,
    permits: Arc<Semaphore>,
}

impl Archiver {
    pub fn new(db: PgPool, cluster: Cluster, settings: LogSettings, instance: String) -> Self {
        let permits = Arc::new(Semaphore::new(settings.concurrency.max(1)));
        Archiver {
            inner: Arc::new(Inner {
                db,
                cluster,
                settings,
                instance,
                active: Mutex::new(HashSet::new()),
                permits,
            }),
        }
    }

    /// Called for every event of one of our pods: starts its capture once its container has
    /// started, and releases pods that never ran.
    pub fn observe(&self, pod: &Pod, shutdown: &CancellationToken) {
        let Some(run_id) = observe::run_id(pod.metadata.labels.as_ref()) else {
            return;
        };
        let key = (run_id, pod.name_any());
        let started = container_started(pod);
        let never_ran =
            !started && (pod.metadata.deletion_timestamp.is_some() || container_ended(pod));
        if !started && !never_ran {
            return;
        }
        if !self.inner.active.lock().unwrap().insert(key.clone()) {
            return;
        }
        let this = self.clone();
        let shutdown = shutdown.clone();
        // A capture's future is many KB: it is boxed, and made only once the capture has a slot.
        if never_ran {
            let pod = pod.clone();
            tokio::spawn(async move {
                Box::pin(this.give_up(
                    &key,
                    &pod,
                    "missing",
                    "the pod was deleted before its container started",
                ))
                .await;
                this.inner.active.lock().unwrap().remove(&key);
            });
            return;
        }
        if let Ok(permit) = self.inner.permits.clone().try_acquire_owned() {
            let pod = pod.clone();
            tokio::spawn(async move {
                Box::pin(this.capture(&key, &pod, &shutdown)).await;
                drop(permit);
                this.inner.active.lock().unwrap().remove(&key);
            });
            return;
        }
        // Every slot is taken, each maybe by a pod running for hours: with thousands of pods
        // running, most wait here (issue 15: memory per active run). A waiting pod keeps only
        // its name, not a copy of the pod (a few KB each), and is read again when its turn
        // comes, as it is then.
        let namespace = pod.namespace().unwrap_or_else(|| "default".into());
        tokio::spawn(async move {
            // The task's own future is what waits: kept to a few hundred bytes, with the pod's
            // read and its capture boxed once the slot is there.
            if let Ok(_permit) = this.inner.permits.acquire().await {
                Box::pin(this.read_and_capture(&key, namespace, &shutdown)).await;
            }
            this.inner.active.lock().unwrap().remove(&key);
        });
    }

    /// Reads the pod whose turn came, and captures its log. The read is retried with capped
    /// backoff, holding the slot, until it answers or the service stops: nothing else would
    /// retry it (no `pod_logs` row exists before the capture claims one, so the sweep cannot
    /// find it, and a pod that ended while it waited sends no further event), and the kubelet
    /// may remove a dead container's log if its capture waits for the next re-list.
    async fn read_and_capture(
        &self,
        key: &(Uuid, String),
        namespace: String,
        shutdown: &CancellationToken,
    ) {
        let mut delays = backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(10))
            .with_jitter()
            .without_max_times()
            .build();
        let current = loop {
            match self.inner.cluster.get_pod(&namespace, &key.1).await {
                Ok(current) => break current,
                Err(error) => {
                    tracing::warn!(run_id = %key.0, pod = %key.1, error = %crate::error::chain(&error), "reading a pod to capture its log failed; retrying");
                    let delay = delays.next().unwrap_or(Duration::from_secs(10));
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        };
        // A pod gone meanwhile goes through the capture as a stale copy would: its log is
        // found gone and recorded as missing.
        let pod = current.unwrap_or_else(|| Pod {
            metadata: kube::api::ObjectMeta {
                name: Some(key.1.clone()),
                namespace: Some(namespace),
                ..Default::default()
            },
            ..Default::default()
        });
        self.capture(key, &pod, shutdown).await;
    }

    #[tracing::instrument(skip_all, fields(run_id = %key.0, pod = %key.1))]
    async fn capture(&self, key: &(Uuid, String), pod: &Pod, shutdown: &CancellationToken) {
        let inner = &self.inner;
        let (run_id, name) = key;
        tracing::debug!("capturing the pod's log");
        let claimed = match logs::claim(
            &inner.db,
            *run_id,
            name,
            &inner.instance,
            inner.settings.lease,
        )
        .await
        {
            Ok(claimed) => claimed,
            Err(error) => {
                tracing::warn!(error = %crate::error::chain(&error), "claiming a log capture failed; the next pod event retries");
                return;
            }
        };
        let Some(archive) = claimed else {
            // Finished already, another replica holds it, or the pod belongs to no run.
            if finished_or_orphan(&inner.db, *run_id, name).await {
                self.release(pod).await;
            }
            return;
        };
        let namespace = pod.namespace().unwrap_or_else(|| "default".into());
        let last = if archive.lines > 0 {
            match logs::last_line(&inner.db, *run_id, name).await {
                Ok(last) => last,
                Err(error) => {
                    tracing::warn!(error = %crate::error::chain(&error), "reading the last archived line failed; the sweep retries");
                    return;
                }
            }
        } else {
            None
        };
        let masks = match masks_of_run(&inner.db, &inner.cluster, *run_id, &namespace).await {
            Ok(masks) => masks,
            Err(MasksError::Gone) => {
                // Storing the log unmasked would put the secret into Postgres.
                return self
                    .give_up(
                        key,
                        pod,
                        "missing",
                        "the run's secret parameter values could not be read (its Secret is gone), so its log cannot be masked and is not kept",
                    )
                    .await;
            }
            Err(MasksError::Failed(message)) => {
                tracing::warn!(error = %message, "reading the run's secret values to mask its log failed; the sweep retries");
                return;
            }
        };
        let mut cursor = Cursor {
            next_line: archive.lines,
            last,
            pending_time: None,
            opened: false,
            unplaced: false,
            restarts: instance_restarts(pod).unwrap_or(0),
            started_at: container_started_at(pod),
            masks,
        };
        if archive.lines == 0 {
            let attempt = cursor.restarts + 1;
            if let Err(error) = logs::begin_attempt(&inner.db, *run_id, name, attempt, 0).await {
                tracing::warn!(error = %crate::error::chain(&error), "recording the container's first attempt failed; the sweep retries");
                return;
            }
        }
        let mut failing_since: Option<Instant> = None;
        let mut pause = REOPEN_PAUSE.0;
        // The container was seen ended before the next stream opens. Only the end of such a
        // stream is the end of the log: a follow stream opened earlier ends the same way when
        // its connection is cut (or stalls), and a look at the pod after that end may already
        // find the container ended with lines printed after the cut still unread.
        let mut ended_before_open = container_ended(pod);
        // When the last stream ended (this process's clock).
        let mut stream_ended: Option<chrono::DateTime<chrono::Utc>> = None;
        loop {
            let before = cursor.next_line;
            let final_read = ended_before_open;
            let outcome = tokio::select! {
                _ = shutdown.cancelled() => return,
                outcome = self.copy(&namespace, key, &mut cursor, false) => outcome,
            };
            if outcome.is_ok() {
                stream_ended = Some(chrono::Utc::now());
            }
            // Any progress (a stream opened, lines stored) resets the failure clock: only
            // uninterrupted failure counts against the capture timeout.
            if std::mem::take(&mut cursor.opened) || cursor.next_line > before {
                failing_since = None;
            }
            if cursor.next_line > before {
                pause = REOPEN_PAUSE.0;
            }
            match outcome {
                Ok(partial) => {
                    // The stream ended: done if the container had ended before it was opened
                    // (else, if it has now, read once more), else it was cut or stalled
                    // (reopen, and read the unterminated last line again then), or the
                    // container restarted (restartPolicy OnFailure).
                    // Nothing new: pause before looking again (a pod waiting to restart or to be
                    // scheduled), right before the look, so the stream opened next is of the
                    // container instance the look saw.
                    if cursor.next_line == before && !final_read {
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(pause) => {}
                        }
                        pause = (pause * 2).min(REOPEN_PAUSE.1);
                    }
                    let current = match inner.cluster.get_pod(&namespace, name).await {
                        Ok(current) => current,
                        Err(error) => {
                            tracing::debug!(error = %crate::error::chain(&error), "reading the pod after its log ended failed");
                            continue;
                        }
                    };
                    let restarted = current
                        .as_ref()
                        .and_then(instance_restarts)
                        .filter(|restarts| *restarts > cursor.restarts);
                    if let Some(restarts) = restarted {
                        // The instance being read may have gone on printing after this stream
                        // was cut: its end is read first (the kubelet keeps the instance
                        // before the current one), or what may be missing is marked.
                        let partial = match self
                            .finish_instance(&namespace, key, &mut cursor, restarts, partial)
                            .await
                        {
                            Ok(partial) => partial,
                            Err(CopyError::LeaseLost) => return,
                            Err(_) => None,
                        };
                        // A new instance of the container: the stream now serves its log, a new
                        // file, which follows a marker line from its start.
                        let marker = format!(
                            "[vfi-orchestrator] attempt {} of the container (restart {restarts}) starts here\n",
                            restarts + 1
                        );
                        // The partial line keeps its time; the marker has none (it must
                        // not take the time of the line before it).
                        let pieces: Vec<_> = partial
                            .into_iter()
                            .map(|p| (p, cursor.pending_time))
                            .chain([(marker.into_bytes(), None)])
                            .collect();
                        for (mut piece, time) in pieces {
                            cursor.pending_time = time;
                            let mut lines = 1;
                            if let Err(CopyError::LeaseLost) = self
                                .flush(key, &mut cursor, &mut piece, &mut lines, 0)
                                .await
                            {
                                return;
                            }
                        }
                        let ended = current
                            .as_ref()
                            .and_then(previous_exit_code)
                            .map(|exit| (restarts, exit));
                        self.record_attempt(key, restarts + 1, cursor.next_line, ended)
                            .await;
                        cursor.restarts = restarts;
                        cursor.started_at = None;
                        ended_before_open = false;
                        continue;
                    }
                    let ended = current.as_ref().is_none_or(container_ended);
                    if ended && !final_read {
                        // Read once more from the last archived line: this stream may have
                        // been cut before the container's last lines.
                        ended_before_open = true;
                        continue;
                    }
                    ended_before_open = ended;
                    if ended {
                        if cursor.unplaced {
                            if let Err(CopyError::LeaseLost) =
                                self.record_gap_to_end(key, &cursor, ROTATED).await
                            {
                                return;
                            }
                        }
                        if let Some(mut last) = partial {
                            let mut lines = 1;
                            if let Err(CopyError::LeaseLost) =
                                self.flush(key, &mut cursor, &mut last, &mut lines, 0).await
                            {
                                return;
                            }
                        }
                        return self.complete(key, current.as_ref().unwrap_or(pod)).await;
                    }
                    continue;
                }
                Err(CopyError::Gone) => {
                    let (state, detail) = if cursor.next_line == 0 {
                        (
                            "missing",
                            "the pod was deleted before its log could be read",
                        )
                    } else {
                        (
                            "incomplete",
                            "the pod was deleted before its log was fully read",
                        )
                    };
                    return self.give_up(key, pod, state, detail).await;
                }
                Err(CopyError::LeaseLost) => return,
                Err(CopyError::Failed { message, refused }) => {
                    tracing::warn!(error = %message, "copying a pod's log failed; retrying");
                    // A kubelet that refuses the log of an ended pod being deleted has removed
                    // it with the pod's containers: nothing will bring it back.
                    if refused {
                        if let Ok(Some(current)) = inner.cluster.get_pod(&namespace, name).await {
                            if current.metadata.deletion_timestamp.is_some()
                                && container_ended(&current)
                            {
                                // The read meant to confirm the end found the log removed (a
                                // kubelet removes a deleted pod's dead containers at once:
                                // pkg/kubelet/kubelet.go, cleanUpContainersInPod). The stream
                                // before it ended no earlier than the second the container
                                // finished in: the container's end, not a cut, ended it.
                                let finished = container_finished_at(&current);
                                if ended_before_open
                                    && stream_ended.zip(finished).is_some_and(|(e, f)| e >= f)
                                {
                                    return self.complete(key, &current).await;
                                }
                                let detail = format!(
                                    "the pod was deleted and the kubelet removed its log before it was fully read ({} lines were captured; what followed is lost): {message}",
                                    cursor.next_line
                                );
                                let state = if cursor.next_line == 0 {
                                    "missing"
                                } else {
                                    "incomplete"
                                };
                                return self.give_up(key, &current, state, &detail).await;
                            }
                        }
                    }
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > inner.settings.capture_timeout {
                        let detail = format!(
                            "the log could not be read for {} s: {message}",
                            inner.settings.capture_timeout.as_secs()
                        );
                        let state = if cursor.next_line == 0 {
                            "missing"
                        } else {
                            "incomplete"
                        };
                        return self.give_up(key, pod, state, &detail).await;
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }

    /// Follows the pod's log from the last archived line on (asking from a second before its
    /// time), appending new lines in chunks. Returns when the stream ends or stalls, with its
    /// unterminated last line if that is new.
    /// With `previous`, reads the container's previous instance to its end instead.
    async fn copy(
        &self,
        namespace: &str,
        key: &(Uuid, String),
        cursor: &mut Cursor,
        previous: bool,
    ) -> Result<Option<Vec<u8>>, CopyError> {
        let inner = &self.inner;
        let name = &key.1;
        let mut resume = Resume::new(cursor.last.clone());
        let read = LogRead {
            follow: !previous,
            tail_lines: None,
            since_time: resume.since(),
            previous,
        };
        let mut reader = match inner.cluster.pod_log(namespace, name, &read).await {
            Ok(reader) => reader,
            Err(LogOpenError::Gone) => return Err(CopyError::Gone),
            Err(error) => {
                return Err(CopyError::Failed {
                    refused: matches!(error, LogOpenError::Refused(_)),
                    message: crate::error::chain(&error),
                })
            }
        };
        cursor.opened = true;
        let opened_at = chrono::Utc::now();
        let mut first_of_instance = cursor.next_line == 0 && cursor.last.is_none();
        let mut splitter = LineSplitter::default();
        let mut masked = MaskedLines::new(cursor.masks.clone());
        // Grown as lines come, not made whole at once: up to `log_capture_concurrency` captures
        // are open, most of them of quiet pods (issue 15: a full chunk and read buffer for each
        // of 256 open captures was 25 MB).
        let mut chunk = Vec::new();
        let mut chunk_lines = 0i32;
        // Where the chunk's last line starts (it becomes the cursor's anchor when stored).
        let mut last_start = 0usize;
        let mut buf = vec![0u8; READ_BYTES];
        let mut deadline = Instant::now() + inner.settings.flush_interval;
        let mut stall_at = Instant::now() + inner.settings.stall_timeout;
        let mut renewed = Instant::now();
        loop {
            let read = tokio::time::timeout_at(deadline.min(stall_at), reader.read(&mut buf)).await;
            let n = match read {
                Err(_) if Instant::now() >= stall_at => {
                    tracing::debug!("the log stream stalled; reopening it");
                    // What masking kept back of a cut line is stored as its own piece.
                    if let Some(kept) = masked.finish() {
                        last_start = chunk.len();
                        chunk.extend_from_slice(&kept);
                        chunk_lines += 1;
                    }
                    metrics::counter!("vfi_log_streams_stalled_total").increment(1);
                    self.flush(key, cursor, &mut chunk, &mut chunk_lines, last_start)
                        .await?;
                    return Ok(None);
                }
                Err(_) => 0,
                Ok(Ok(0)) => {
                    self.flush(key, cursor, &mut chunk, &mut chunk_lines, last_start)
                        .await?;
                    let partial = masked
                        .finish_with(splitter.finish())
                        .filter(|line| resume.classify(line) != Seen::Old);
                    // Stored by the caller, if at all, as the next piece.
                    cursor.pending_time = resume.line_time();
                    cursor.unplaced = !resume.placed();
                    return Ok(partial);
                }
                Ok(Ok(n)) => {
                    stall_at = Instant::now() + inner.settings.stall_timeout;
                    n
                }
                Ok(Err(error)) => {
                    self.flush(key, cursor, &mut chunk, &mut chunk_lines, last_start)
                        .await?;
                    return Err(CopyError::Failed {
                        message: format!(
                            "reading the log stream failed: {}",
                            crate::error::chain(&error)
                        ),
                        refused: false,
                    });
                }
            };
            for line in splitter.push(&buf[..n]) {
                // Masked before anything looks at it: the archive never holds a secret value,
                // and the resume anchor (the last stored line) compares masked with masked.
                let line = masked.push(line);
                match resume.classify(&line) {
                    Seen::Old => continue,
                    Seen::New if std::mem::take(&mut first_of_instance) => {
                        self.check_late_start(key, cursor, opened_at, &line).await?;
                    }
                    Seen::New => {}
                    Seen::NewAfterGap { after, before } => {
                        self.flush(key, cursor, &mut chunk, &mut chunk_lines, last_start)
                            .await?;
                        self.record_gap(key, cursor.next_line, after, before, ROTATED)
                            .await?;
                    }
                }
                last_start = chunk.len();
                chunk.extend_from_slice(&line);
                chunk_lines += 1;
                cursor.pending_time = resume.line_time();
                if chunk.len() >= CHUNK_BYTES {
                    self.flush(key, cursor, &mut chunk, &mut chunk_lines, last_start)
                        .await?;
                    renewed = Instant::now();
                }
            }
            if n == 0 || Instant::now() >= deadline {
                if chunk.is_empty() {
                    // A quiet pod: keep the lease, or another replica's sweep would take over.
                    if renewed.elapsed() >= inner.settings.lease / 3 {
                        self.renew(key).await?;
                        renewed = Instant::now();
                    }
                } else {
                    self.flush(key, cursor, &mut chunk, &mut chunk_lines, last_start)
                        .await?;
                    renewed = Instant::now();
                }
                deadline = Instant::now() + inner.settings.flush_interval;
            }
        }
    }

    /// The first line of a container's log, read by a stream opened more than a second after
    /// the container started, was written more than a second after that start: the kubelet
    /// may have rotated earlier lines away before any stream was open. Recorded as a possible
    /// gap (it cannot be told from a container that printed nothing at first).
    ///
    /// The API reports `startedAt` in whole seconds (metav1.Time marshals RFC 3339 without a
    /// fraction), so the container really started up to a second after `started`: both
    /// delays are measured against `started + 1 s`, the latest moment it can have started.
    /// Without that, a container printing at once at x.999 s was flagged whenever its
    /// capture opened late.
    ///
    /// No sharper signal exists through the API: the kubelet rotates a file only once it is
    /// over `containerLogMaxSize`, at checks every `containerLogMonitorInterval` (10 s) whose
    /// phase is unrelated to the container's start
    /// (https://kubernetes.io/docs/concepts/cluster-administration/logging/#log-rotation), and
    /// `pods/log` serves only the current file, with nothing saying a rotation happened. So a
    /// container that wrote past the rotation size in a burst right after starting and then
    /// fell quiet leaves a current file that starts late or is empty, and the latter cannot be
    /// told from a container that printed nothing; this check catches the former only.
    async fn check_late_start(
        &self,
        key: &(Uuid, String),
        cursor: &Cursor,
        opened_at: chrono::DateTime<chrono::Utc>,
        line: &[u8],
    ) -> Result<(), CopyError> {
        let (Some(started), Some(first)) = (cursor.started_at, split_timestamp(line).0) else {
            return Ok(());
        };
        let second = chrono::Duration::seconds(1);
        let latest_start = started + second;
        if first - latest_start <= second || opened_at - latest_start <= second {
            return Ok(());
        }
        let stamp = |t: chrono::DateTime<chrono::Utc>| {
            t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
        };
        let gap = format!(
            "lines written between the container's start ({}) and line 1 ({}) may be missing: the capture started {:.1} s after the container, and the kubelet may have rotated them away",
            stamp(started),
            stamp(first),
            (opened_at - started).num_milliseconds() as f64 / 1000.0
        );
        self.store_gap(key, &gap).await
    }

    async fn renew(&self, key: &(Uuid, String)) -> Result<(), CopyError> {
        let inner = &self.inner;
        match logs::renew(
            &inner.db,
            key.0,
            &key.1,
            &inner.instance,
            inner.settings.lease,
        )
        .await
        {
            Ok(true) => Ok(()),
            Ok(false) => Err(CopyError::LeaseLost),
            Err(error) => Err(CopyError::Failed {
                message: format!(
                    "renewing the capture lease failed: {}",
                    crate::error::chain(&error)
                ),
                refused: false,
            }),
        }
    }

    /// The container restarted (to instance `restarts`) while the instance in `cursor` was
    /// being read, and the stream that ended may have been cut before that instance's end:
    /// reads the rest of it from the kubelet's previous instance (resuming after the last
    /// archived line), or records what may be missing when the kubelet no longer has it (the
    /// container restarted more than once meanwhile, or its log is gone). Returns the
    /// instance's unterminated last line, if new (the cut stream's `partial` when the rest could
    /// not be read).
    async fn finish_instance(
        &self,
        namespace: &str,
        key: &(Uuid, String),
        cursor: &mut Cursor,
        restarts: i32,
        partial: Option<Vec<u8>>,
    ) -> Result<Option<Vec<u8>>, CopyError> {
        if restarts == cursor.restarts + 1 {
            match self.copy(namespace, key, cursor, true).await {
                Ok(rest) => {
                    if cursor.unplaced {
                        self.record_gap_to_end(key, cursor, ROTATED).await?;
                    }
                    return Ok(rest);
                }
                Err(CopyError::LeaseLost) => return Err(CopyError::LeaseLost),
                Err(CopyError::Gone) => {
                    self.record_gap_to_end(key, cursor, "the pod was deleted")
                        .await?;
                }
                Err(CopyError::Failed { message, .. }) => {
                    let why = format!(
                        "the log of attempt {} could not be read after the container restarted ({message})",
                        cursor.restarts + 1
                    );
                    self.record_gap_to_end(key, cursor, &why).await?;
                }
            }
        } else {
            let lost = match (cursor.restarts + 2, restarts) {
                (first, last) if first == last => format!("attempt {first} is"),
                (first, last) => format!("attempts {first} to {last} are"),
            };
            let why = format!(
                "the container restarted {} times while its log was not being read: the kubelet keeps only the instance before the current one, so {lost} lost",
                restarts - cursor.restarts,
            );
            self.record_gap_to_end(key, cursor, &why).await?;
        }
        Ok(partial)
    }

    /// Records that lines after the last archived one, up to the end of the container
    /// instance being read, may be missing, and why.
    async fn record_gap_to_end(
        &self,
        key: &(Uuid, String),
        cursor: &Cursor,
        why: &str,
    ) -> Result<(), CopyError> {
        match cursor.last.as_ref().and_then(|anchor| anchor.time) {
            Some(after) => {
                self.record_gap(key, cursor.next_line, after, None, why)
                    .await
            }
            None => {
                let gap = format!(
                    "lines of attempt {} after line {} may be missing: {why}",
                    cursor.restarts + 1,
                    cursor.next_line
                );
                self.store_gap(key, &gap).await
            }
        }
    }

    /// Records that the lines between the last archived one and the next could not be read,
    /// and why (e.g. [`ROTATED`]).
    async fn record_gap(
        &self,
        key: &(Uuid, String),
        archived: i64,
        after: chrono::DateTime<chrono::Utc>,
        before: Option<chrono::DateTime<chrono::Utc>>,
        why: &str,
    ) -> Result<(), CopyError> {
        let stamp = |t: chrono::DateTime<chrono::Utc>| {
            t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
        };
        let until = match before {
            Some(before) => format!("and before line {} ({})", archived + 1, stamp(before)),
            None => "up to the end of the log".to_string(),
        };
        let gap = format!(
            "lines written after line {archived} ({}) {until} may be missing: {why}",
            stamp(after),
        );
        self.store_gap(key, &gap).await
    }

    async fn store_gap(&self, key: &(Uuid, String), gap: &str) -> Result<(), CopyError> {
        let inner = &self.inner;
        tracing::warn!(run_id = %key.0, pod = %key.1, %gap, "pod log has a gap");
        metrics::counter!("vfi_log_gaps_total").increment(1);
        match logs::record_gap(&inner.db, key.0, &key.1, &inner.instance, gap).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(CopyError::LeaseLost),
            Err(error) => Err(CopyError::Failed {
                message: format!(
                    "recording a log gap failed: {}",
                    crate::error::chain(&error)
                ),
                refused: false,
            }),
        }
    }

    async fn flush(
        &self,
        key: &(Uuid, String),
        cursor: &mut Cursor,
        chunk: &mut Vec<u8>,
        lines: &mut i32,
        last_start: usize,
    ) -> Result<(), CopyError> {
        if chunk.is_empty() {
            return Ok(());
        }
        let inner = &self.inner;
        let write = async {
            let mut tx = inner.db.begin().await?;
            let kept = logs::append(
                &mut tx,
                key.0,
                &key.1,
                Append {
                    first_line: cursor.next_line,
                    line_count: *lines,
                    data: chunk,
                    cap_bytes: inner.settings.cap_bytes,
                    owner: &inner.instance,
                    lease: inner.settings.lease,
                },
            )
            .await?;
            tx.commit().await?;
            Ok::<bool, sqlx::Error>(kept)
        };
        match write.await {
            Ok(true) => {
                metrics::counter!("vfi_log_bytes_archived_total").increment(chunk.len() as u64);
                cursor.next_line += *lines as i64;
                cursor.last = Some(Anchor {
                    piece: chunk[last_start.min(chunk.len())..].to_vec(),
                    time: cursor.pending_time,
                });
                chunk.clear();
                *lines = 0;
                Ok(())
            }
            Ok(false) => Err(CopyError::LeaseLost),
            Err(error) => Err(CopyError::Failed {
                message: format!("storing log lines failed: {}", crate::error::chain(&error)),
                refused: false,
            }),
        }
    }

    /// Records where attempt `attempt` of the container begins in the archive, and how the
    /// attempt before it ended (`(attempt, exit code)`). A failure is logged: the log itself is
    /// whole, only the list of attempts lacks it.
    async fn record_attempt(
        &self,
        key: &(Uuid, String),
        attempt: i32,
        first_line: i64,
        ended: Option<(i32, i32)>,
    ) {
        let db = &self.inner.db;
        let mut result = logs::begin_attempt(db, key.0, &key.1, attempt, first_line).await;
        if let (Ok(()), Some((ended, exit_code))) = (&result, ended) {
            result = logs::end_attempt(db, key.0, &key.1, ended, exit_code).await;
        }
        if let Err(error) = result {
            tracing::warn!(error = %crate::error::chain(&error), attempt, "recording a container attempt failed");
        }
    }

    async fn complete(&self, key: &(Uuid, String), pod: &Pod) {
        let last = main_container(pod)
            .and_then(|s| s.terminated.as_ref())
            .zip(instance_restarts(pod));
        if let Some((terminated, restarts)) = last {
            let db = &self.inner.db;
            let (run_id, name) = key;
            let exit_code = terminated.exit_code;
            if let Err(error) = logs::end_attempt(db, *run_id, name, restarts + 1, exit_code).await
            {
                tracing::warn!(error = %crate::error::chain(&error), "recording how the container's last attempt ended failed");
            }
        }
        if let Err(error) = logs::finish(&self.inner.db, key.0, &key.1, "complete", None).await {
            tracing::warn!(error = %crate::error::chain(&error), "recording a finished log failed; the next pod event retries");
            return;
        }
        tracing::debug!("log archived");
        self.release(pod).await;
    }

    async fn give_up(&self, key: &(Uuid, String), pod: &Pod, state: &str, detail: &str) {
        tracing::warn!(run_id = %key.0, pod = %key.1, state, detail, "pod log not fully captured");
        metrics::counter!("vfi_log_captures_failed_total", "state" => state.to_string())
            .increment(1);
        if let Err(error) = logs::finish(&self.inner.db, key.0, &key.1, state, Some(detail)).await {
            tracing::warn!(error = %crate::error::chain(&error), "recording a lost log failed");
            return;
        }
        self.release(pod).await;
    }

    /// Removes our finalizer, from the pod as it is now (its finalizer list may have changed).
    async fn release(&self, pod: &Pod) {
        let namespace = pod.namespace().unwrap_or_else(|| "default".into());
        for _ in 0..3 {
            let current = match self
                .inner
                .cluster
                .get_pod(&namespace, &pod.name_any())
                .await
            {
                Ok(Some(current)) => current,
                Ok(None) => return,
                Err(error) => {
                    tracing::warn!(error = %crate::error::chain(&error), "reading a pod to release it failed");
                    return;
                }
            };
            if !current
                .finalizers()
                .iter()
                .any(|f| f == keys::LOG_FINALIZER)
            {
                return;
            }
            match self.inner.cluster.release_pod(&current).await {
                Ok(()) => return,
                Err(error) => {
                    tracing::debug!(error = %crate::error::chain(&error), "releasing a pod raced; retrying")
                }
            }
        }
    }
}

enum CopyError {
    /// The pod no longer exists.
    Gone,
    /// Another process took the capture over.
    LeaseLost,
    /// Reading or storing failed; `refused` when the API answered a client error (not 429).
    Failed { message: String, refused: bool },
}

/// Why a run's secret values could not be had for masking.
pub enum MasksError {
    /// The run has secret parameters but its Secret is gone.
    Gone,
    /// Reading failed (worth retrying).
    Failed(String),
}

/// The masks for a run's logs: its secret parameter values, read back from the run's Secret
/// (the service keeps them nowhere else, so this also works after a restart). None for a run
/// without secret parameters.
pub async fn masks_of_run(
    db: &PgPool,
    cluster: &Cluster,
    run_id: Uuid,
    namespace: &str,
) -> Result<Masks, MasksError> {
    let run = crate::store::runs::get(db, run_id)
        .await
        .map_err(|e| MasksError::Failed(crate::error::chain(&e)))?;
    let Some(run) = run.filter(|r| r.params.values().any(|p| p.is_secret())) else {
        return Ok(Masks::default());
    };
    masks_of(cluster, &run, namespace).await
}

/// [`masks_of_run`] for a run already read.
pub async fn masks_of(
    cluster: &Cluster,
    run: &crate::domain::Run,
    namespace: &str,
) -> Result<Masks, MasksError> {
    if !run.params.values().any(|p| p.is_secret()) {
        return Ok(Masks::default());
    }
    let values = cluster
        .param_secret_values(run.id, namespace)
        .await
        .map_err(|e| MasksError::Failed(crate::error::chain(&e)))?;
    if values.is_empty() {
        return Err(MasksError::Gone);
    }
    Ok(Masks::new(values))
}

async fn finished_or_orphan(db: &PgPool, run_id: Uuid, pod: &str) -> bool {
    match logs::get(db, run_id, pod).await {
        Ok(Some(log)) => log.state != "capturing",
        Ok(None) => matches!(crate::store::runs::get(db, run_id).await, Ok(None)),
        Err(_) => false,
    }
}

fn main_container(pod: &Pod) -> Option<&k8s_openapi::api::core::v1::ContainerState> {
    main_status(pod)?.state.as_ref()
}

/// The restart count of the container instance whose log the kubelet serves now: the current
/// one once it runs (or ran), the one before while it waits to restart (CrashLoopBackOff).
fn instance_restarts(pod: &Pod) -> Option<i32> {
    let instance = main_instance(pod)?;
    Some(if instance.waiting {
        (instance.restart_count - 1).max(0)
    } else {
        instance.restart_count
    })
}

/// How the main container's previous instance ended (its `lastState`).
fn previous_exit_code(pod: &Pod) -> Option<i32> {
    let last = main_status(pod)?.last_state.as_ref()?;
    Some(last.terminated.as_ref()?.exit_code)
}

/// When the main container's current instance started.
fn container_started_at(pod: &Pod) -> Option<chrono::DateTime<chrono::Utc>> {
    let state = main_container(pod)?;
    let started = state
        .running
        .as_ref()
        .and_then(|r| r.started_at.as_ref())
        .or_else(|| state.terminated.as_ref()?.started_at.as_ref())?;
    chrono::DateTime::from_timestamp(started.0.as_second(), started.0.subsec_nanosecond() as u32)
}

/// When the main container's current instance ended (whole seconds, as the API reports it).
fn container_finished_at(pod: &Pod) -> Option<chrono::DateTime<chrono::Utc>> {
    let finished = main_container(pod)?
        .terminated
        .as_ref()?
        .finished_at
        .as_ref()?;
    chrono::DateTime::from_timestamp(
        finished.0.as_second(),
        finished.0.subsec_nanosecond() as u32,
    )
}

/// The container has started (so it may have a log). A container marked terminated without
/// ever having started (e.g. `ContainerStatusUnknown` for a pod deleted while waiting) has none.
fn container_started(pod: &Pod) -> bool {
    main_container(pod).is_some_and(|s| {
        s.running.is_some()
            || s.terminated
                .as_ref()
                .is_some_and(|t| t.started_at.is_some())
    })
}

/// The container will write nothing more.
fn container_ended(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    matches!(phase, Some("Succeeded" | "Failed"))
        || main_container(pod).is_some_and(|s| s.terminated.is_some())
}

/// Takes over, every `sweep_interval`, the captures whose lease lapsed (their replica died,
/// shut down or lost the database), so no ended pod waits for a re-list to lose its finalizer:
/// a pod that still exists is captured again from the last archived line on; one that is gone
/// is finished with what was archived, saying what may be missing.
pub async fn sweep(archiver: Archiver, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(archiver.inner.settings.sweep_interval) => {}
        }
        if let Err(error) = archiver.sweep_once(&shutdown).await {
            tracing::warn!(error = %crate::error::chain(&error), "looking for lapsed log captures failed; retrying");
        }
    }
}

impl Archiver {
    async fn sweep_once(&self, shutdown: &CancellationToken) -> Result<(), sqlx::Error> {
        let inner = &self.inner;
        for capture in logs::lapsed(&inner.db, 500).await? {
            let key = (capture.run_id, capture.pod_name.clone());
            if inner.active.lock().unwrap().contains(&key) {
                continue;
            }
            let namespace = capture.namespace.as_deref().unwrap_or("default");
            match inner.cluster.get_pod(namespace, &capture.pod_name).await {
                Ok(Some(pod)) => {
                    metrics::counter!("vfi_log_captures_taken_over_total").increment(1);
                    tracing::info!(run_id = %key.0, pod = %key.1, "taking over a lapsed log capture");
                    self.observe(&pod, shutdown);
                }
                Ok(None) => {
                    let (state, detail) = if capture.lines == 0 {
                        (
                            "missing",
                            "the pod was deleted while no replica was capturing its log"
                                .to_string(),
                        )
                    } else {
                        (
                            "incomplete",
                            format!(
                                "the pod was deleted while no replica was capturing its log: the {} lines archived are kept, anything printed after them is lost",
                                capture.lines
                            ),
                        )
                    };
                    metrics::counter!("vfi_log_captures_failed_total", "state" => state.to_string())
                        .increment(1);
                    logs::finish(&inner.db, key.0, &key.1, state, Some(&detail)).await?;
                }
                Err(error) => {
                    tracing::debug!(run_id = %key.0, pod = %key.1, error = %crate::error::chain(&error), "looking up a lapsed capture's pod failed");
                }
            }
        }
        Ok(())
    }

    /// At shutdown, after the loops stopped: waits briefly for the captures to let go, then
    /// hands this replica's leases back so another replica's sweep takes them over at once.
    pub async fn hand_back(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.inner.active.lock().unwrap().is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        match logs::hand_back(&self.inner.db, &self.inner.instance).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(captures = n, "handed log captures back"),
            Err(error) => {
                tracing::warn!(error = %crate::error::chain(&error), "handing log captures back failed; they lapse with their lease")
            }
        }
    }
}

/// Deletes archived logs past their own age limit, in batches, now and then. Runs keep their
/// records; reading such a run's log then says no log is available.
pub async fn expire_logs(archiver: Archiver, shutdown: CancellationToken) {
    let Some(max_age) = archiver.inner.settings.max_age else {
        return shutdown.cancelled().await;
    };
    loop {
        let before = chrono::Utc::now() - chrono::Duration::from_std(max_age).unwrap_or_default();
        loop {
            match logs::delete_completed_before(&archiver.inner.db, before, 500).await {
                Ok(0) => break,
                Ok(deleted) => {
                    metrics::counter!("vfi_log_archives_expired_total").increment(deleted);
                    tracing::info!(deleted, "expired archived pod logs");
                }
                Err(error) => {
                    tracing::warn!(error = %crate::error::chain(&error), "expiring archived logs failed; retrying later");
                    break;
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(300)) => {}
        }
    }
}
