//! The log archiver: copies each pod's log into Postgres while the pod runs, in chunks, and
//! completes it when the container ends. Pods carry the service's log-capture finalizer, removed
//! here once the log is stored (or after `capture_timeout` of failing to read it, recording what
//! was lost), so a TTL, a cancellation or garbage collection cannot take a pod before its log is
//! safe. Captures are claimed in the database under a lease, so replicas never copy a pod twice
//! and a replica that dies mid-capture is taken over.

use crate::cluster::jobs::Cluster;
use crate::cluster::pods::LogRead;
use crate::cluster::{keys, observe};
use crate::domain::loglines::LineSplitter;
use crate::store::logs::{self, Append};
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

/// Chunks are written when they reach this size, or after `flush_interval`.
const CHUNK_BYTES: usize = 64 * 1024;

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
}

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
    permits: Semaphore,
}

impl Archiver {
    pub fn new(db: PgPool, cluster: Cluster, settings: LogSettings, instance: String) -> Self {
        let permits = Semaphore::new(settings.concurrency.max(1));
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
        let pod = pod.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            if never_ran {
                this.give_up(
                    &key,
                    &pod,
                    "missing",
                    "the pod was deleted before its container started",
                )
                .await;
            } else {
                this.capture(&key, &pod, &shutdown).await;
            }
            this.inner.active.lock().unwrap().remove(&key);
        });
    }

    #[tracing::instrument(skip_all, fields(run_id = %key.0, pod = %key.1))]
    async fn capture(&self, key: &(Uuid, String), pod: &Pod, shutdown: &CancellationToken) {
        let inner = &self.inner;
        let Ok(_permit) = inner.permits.acquire().await else {
            return;
        };
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
                tracing::warn!(error = %error, "claiming a log capture failed; the next pod event retries");
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
        let mut next_line = archive.lines;
        let mut failing_since: Option<Instant> = None;
        loop {
            let outcome = tokio::select! {
                _ = shutdown.cancelled() => return,
                outcome = self.copy(&namespace, key, &mut next_line) => outcome,
            };
            match outcome {
                Ok(partial) => {
                    // The stream ended: done if the container has, else it was cut (reconnect,
                    // and read the unterminated last line again then).
                    let current = match inner.cluster.pods(&namespace).get_opt(name).await {
                        Ok(Some(current)) if !container_ended(&current) => continue,
                        Ok(current) => current,
                        Err(error) => {
                            tracing::debug!(error = %error, "reading the pod after its log ended failed");
                            continue;
                        }
                    };
                    if let Some(mut last) = partial {
                        let mut lines = 1;
                        if let Err(CopyError::LeaseLost) =
                            self.flush(key, &mut next_line, &mut last, &mut lines).await
                        {
                            return;
                        }
                    }
                    return self.complete(key, current.as_ref().unwrap_or(pod)).await;
                }
                Err(CopyError::Gone) => {
                    let (state, detail) = if next_line == 0 {
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
                Err(CopyError::Failed(error)) => {
                    tracing::warn!(error = %error, "copying a pod's log failed; retrying");
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > inner.settings.capture_timeout {
                        let detail = format!(
                            "the log could not be read for {} s: {error}",
                            inner.settings.capture_timeout.as_secs()
                        );
                        let state = if next_line == 0 {
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

    /// Follows the pod's log from the start, skipping the lines already archived, and appends the
    /// rest in chunks. Returns when the stream ends, with its unterminated last line if any.
    async fn copy(
        &self,
        namespace: &str,
        key: &(Uuid, String),
        next_line: &mut i64,
    ) -> Result<Option<Vec<u8>>, CopyError> {
        let inner = &self.inner;
        let name = &key.1;
        let read = LogRead {
            follow: true,
            tail_lines: None,
        };
        let mut reader = match inner.cluster.pod_log(namespace, name, &read).await {
            Ok(reader) => reader,
            Err(kube::Error::Api(status)) if status.is_not_found() => return Err(CopyError::Gone),
            Err(error) => return Err(CopyError::Failed(error.to_string())),
        };
        let mut skip = *next_line;
        let mut splitter = LineSplitter::default();
        let mut chunk = Vec::with_capacity(CHUNK_BYTES);
        let mut chunk_lines = 0i32;
        let mut buf = vec![0u8; 32 * 1024];
        let mut deadline = Instant::now() + inner.settings.flush_interval;
        loop {
            let read = tokio::time::timeout_at(deadline, reader.read(&mut buf)).await;
            let n = match read {
                Err(_) => 0,
                Ok(Ok(0)) => {
                    self.flush(key, next_line, &mut chunk, &mut chunk_lines)
                        .await?;
                    return Ok(splitter.finish().filter(|_| skip == 0));
                }
                Ok(Ok(n)) => n,
                Ok(Err(error)) => {
                    self.flush(key, next_line, &mut chunk, &mut chunk_lines)
                        .await?;
                    return Err(CopyError::Failed(error.to_string()));
                }
            };
            for line in splitter.push(&buf[..n]) {
                if skip > 0 {
                    skip -= 1;
                    continue;
                }
                chunk.extend_from_slice(&line);
                chunk_lines += 1;
                if chunk.len() >= CHUNK_BYTES {
                    self.flush(key, next_line, &mut chunk, &mut chunk_lines)
                        .await?;
                }
            }
            if n == 0 || Instant::now() >= deadline {
                self.flush(key, next_line, &mut chunk, &mut chunk_lines)
                    .await?;
                deadline = Instant::now() + inner.settings.flush_interval;
            }
        }
    }

    async fn flush(
        &self,
        key: &(Uuid, String),
        next_line: &mut i64,
        chunk: &mut Vec<u8>,
        lines: &mut i32,
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
                    first_line: *next_line,
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
                *next_line += *lines as i64;
                chunk.clear();
                *lines = 0;
                Ok(())
            }
            Ok(false) => Err(CopyError::LeaseLost),
            Err(error) => Err(CopyError::Failed(format!(
                "storing log lines failed: {error}"
            ))),
        }
    }

    async fn complete(&self, key: &(Uuid, String), pod: &Pod) {
        if let Err(error) = logs::finish(&self.inner.db, key.0, &key.1, "complete", None).await {
            tracing::warn!(error = %error, "recording a finished log failed; the next pod event retries");
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
            tracing::warn!(error = %error, "recording a lost log failed");
            return;
        }
        self.release(pod).await;
    }

    /// Removes our finalizer, from the pod as it is now (its finalizer list may have changed).
    async fn release(&self, pod: &Pod) {
        let namespace = pod.namespace().unwrap_or_else(|| "default".into());
        let api = self.inner.cluster.pods(&namespace);
        for _ in 0..3 {
            let current = match api.get_opt(&pod.name_any()).await {
                Ok(Some(current)) => current,
                Ok(None) => return,
                Err(error) => {
                    tracing::warn!(error = %error, "reading a pod to release it failed");
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
                Err(error) => tracing::debug!(error = %error, "releasing a pod raced; retrying"),
            }
        }
    }
}

enum CopyError {
    /// The pod no longer exists.
    Gone,
    /// Another process took the capture over.
    LeaseLost,
    Failed(String),
}

async fn finished_or_orphan(db: &PgPool, run_id: Uuid, pod: &str) -> bool {
    match logs::get(db, run_id, pod).await {
        Ok(Some(log)) => log.state != "capturing",
        Ok(None) => matches!(crate::store::runs::get(db, run_id).await, Ok(None)),
        Err(_) => false,
    }
}

fn main_container(pod: &Pod) -> Option<&k8s_openapi::api::core::v1::ContainerState> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == crate::cluster::render::CONTAINER)?
        .state
        .as_ref()
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
                    tracing::warn!(error = %error, "expiring archived logs failed; retrying later");
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
