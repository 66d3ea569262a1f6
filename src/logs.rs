//! Reading a run's logs as one stream of lines: per pod from the archive once it is captured,
//! from the cluster while the pod lives, with no line repeated or lost at the switch (lines are
//! numbered per pod, and a switch resumes after the last line sent). Used by the HTTP layer;
//! reads only, so it may ask the cluster directly.

use crate::cluster::jobs::Cluster;
use crate::cluster::pods::{main_instance, Instance, LogRead};
use crate::domain::attempt::{self, Archived, PodWithAttempts};
use crate::domain::loglines::{lines, split_timestamp, LineSplitter, TextStart};
use crate::domain::masking::MaskedLines;
use crate::domain::{PodRecord, Run};
use crate::store;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::{AsyncReadExt, Stream};
use sqlx::PgPool;
use std::collections::HashSet;
use std::time::Duration;

/// What to read.
#[derive(Debug, Clone, Default)]
pub struct LogQuery {
    /// Keep streaming new output until the run ends.
    pub follow: bool,
    /// Only this pod.
    pub pod: Option<String>,
    /// Only the pod of this completion index.
    pub index: Option<i32>,
    /// Only the last lines of each pod.
    pub tail: Option<i64>,
    /// Only lines written at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Resume after this line of this pod (and skip the pods before it).
    pub after: Option<(String, i64)>,
    /// Only this attempt (1-based, by restart count) of each pod's container; its lines are
    /// numbered from 0 within the attempt. Pods without it are left out.
    pub attempt: Option<i32>,
    /// Following: the longest silence while waiting for pods to start, after which a note says
    /// what is awaited (so read timeouts of clients and proxies do not cut a follow).
    pub keepalive: Option<Duration>,
    /// The reader wants the lines' text alone (plain text without timestamps): archived lines
    /// may come as [`LogItem::Lines`], a block per stored chunk, instead of one item each.
    pub text_only: bool,
}

/// Says when a follower waiting for something has been silent for the keep-alive time.
struct KeepAlive {
    every: Option<Duration>,
    since: tokio::time::Instant,
}

impl KeepAlive {
    fn new(every: Option<Duration>) -> KeepAlive {
        KeepAlive {
            every,
            since: tokio::time::Instant::now(),
        }
    }

    /// Something was sent.
    fn reset(&mut self) {
        self.since = tokio::time::Instant::now();
    }

    /// The silence has lasted long enough for a note (which counts as sent).
    fn due(&mut self) -> bool {
        let due = self
            .every
            .is_some_and(|every| self.since.elapsed() >= every);
        if due {
            self.reset();
        }
        due
    }
}

/// One piece of a run's log stream.
#[derive(Debug, Clone)]
pub enum LogItem {
    /// The lines that follow belong to this pod.
    Pod(PodRecord),
    /// One line: its number in the pod's log (`None` when not known, e.g. a live tail), its
    /// time, and its text (with its newline, without the timestamp).
    Line {
        pod: String,
        number: Option<i64>,
        time: Option<DateTime<Utc>>,
        text: Bytes,
    },
    /// Consecutive whole lines of a pod, their text alone (timestamps removed), for a reader
    /// that asked for [`LogQuery::text_only`]: an archived log is served without per-line work
    /// beyond finding each line's timestamp (issue 15).
    Lines { pod: String, text: Bytes },
    /// A remark of the service's: a truncation, a log that could not be captured.
    Note { pod: String, text: String },
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// How long a reader waits for an ending pod's archive to be completed.
const ARCHIVE_WAIT: Duration = Duration::from_secs(30);
/// How often a following reader looks for new pods.
const FOLLOW_POLL: Duration = Duration::from_millis(250);

pub fn run_log(
    db: PgPool,
    cluster: Cluster,
    run: Run,
    query: LogQuery,
) -> impl Stream<Item = Result<LogItem, LogError>> + Send {
    async_stream::try_stream! {
        let mut streamed: HashSet<String> = HashSet::new();
        let mut resuming = query.after.clone();
        let mut keepalive = KeepAlive::new(query.keepalive);
        loop {
            let pods = selected_pods(&db, run.id, &query).await?;
            for pod in pods {
                if !streamed.insert(pod.name.clone()) {
                    continue;
                }
                let mut after_line = -1;
                if let Some((name, line)) = &resuming {
                    if *name != pod.name {
                        continue;
                    }
                    after_line = *line;
                    resuming = None;
                }
                yield LogItem::Pod(pod.clone());
                let lines = pod_log(&db, &cluster, &run, &pod, &query, after_line);
                for await item in lines {
                    yield item?;
                    keepalive.reset();
                }
            }
            if !query.follow {
                break;
            }
            let now = store::runs::get(&db, run.id).await?;
            let finished = now.as_ref().is_none_or(|r| r.status.is_final());
            if finished {
                // One more look: pods recorded just before the end.
                let remaining = selected_pods(&db, run.id, &query)
                    .await?
                    .iter()
                    .any(|p| !streamed.contains(&p.name));
                if !remaining {
                    break;
                }
            } else {
                if keepalive.due() {
                    let status = now.map(|r| r.status.to_string()).unwrap_or_default();
                    yield LogItem::Note {
                        pod: String::new(),
                        text: format!("waiting for the run's pods (the run is {status})"),
                    };
                }
                tokio::time::sleep(FOLLOW_POLL).await;
            }
        }
    }
}

/// The run's pods the query asks for: by name, by index, and having the attempt asked for.
async fn selected_pods(
    db: &PgPool,
    run_id: uuid::Uuid,
    query: &LogQuery,
) -> Result<Vec<PodRecord>, sqlx::Error> {
    let pods = store::pods::list(db, run_id)
        .await?
        .into_iter()
        .filter(|p| query.pod.as_ref().is_none_or(|name| &p.name == name))
        .filter(|p| query.index.is_none_or(|i| p.completion_index == Some(i)));
    let Some(attempt) = query.attempt else {
        return Ok(pods.collect());
    };
    let with_attempts = with_attempts(db, run_id, pods.collect()).await?;
    Ok(with_attempts
        .into_iter()
        .filter(|p| p.attempts.len() as i64 >= attempt as i64)
        .map(|p| p.pod)
        .collect())
}

/// A run's pods with their containers' attempts (what the cluster reports, and what the
/// archive holds).
pub async fn pods_with_attempts(
    db: &PgPool,
    run_id: uuid::Uuid,
) -> Result<Vec<PodWithAttempts>, sqlx::Error> {
    with_attempts(db, run_id, store::pods::list(db, run_id).await?).await
}

async fn with_attempts(
    db: &PgPool,
    run_id: uuid::Uuid,
    pods: Vec<PodRecord>,
) -> Result<Vec<PodWithAttempts>, sqlx::Error> {
    let archived = store::logs::attempts(db, run_id, None).await?;
    Ok(pods
        .into_iter()
        .map(|pod| {
            let known: Vec<Archived> = archived
                .iter()
                .filter(|a| a.pod_name == pod.name)
                .map(|a| Archived {
                    attempt: a.attempt,
                    exit_code: a.exit_code,
                })
                .collect();
            PodWithAttempts {
                attempts: attempt::attempts(&pod, &known),
                pod,
            }
        })
        .collect())
}

/// Which instance of its container the kubelet serves for an attempt, live.
enum Serving {
    /// The current instance.
    Current,
    /// The instance before the current one (`previous=true`).
    Previous,
    /// It has not started yet.
    NotYet,
    /// An older one: only the archive has it.
    Older,
}

fn serving(instance: Option<Instance>, attempt: i32) -> Serving {
    let Some(instance) = instance else {
        return Serving::NotYet;
    };
    let restarts = attempt - 1;
    if restarts == instance.restart_count && !instance.waiting {
        Serving::Current
    } else if restarts >= instance.restart_count {
        Serving::NotYet
    } else if restarts == instance.restart_count - 1 {
        Serving::Previous
    } else {
        Serving::Older
    }
}

/// One pod's lines after `after_line`, from wherever they are.
fn pod_log<'a>(
    db: &'a PgPool,
    cluster: &'a Cluster,
    run: &'a Run,
    pod: &'a PodRecord,
    query: &'a LogQuery,
    after_line: i64,
) -> impl Stream<Item = Result<LogItem, LogError>> + Send + 'a {
    async_stream::try_stream! {
        let mut pod = pod.clone();
        let mut last = after_line;
        let mut keepalive = KeepAlive::new(query.keepalive);
        let namespace = run.job.as_ref().map(|j| j.namespace.clone()).unwrap_or_else(|| "default".into());
        // Live from the cluster while the pod exists and its archive is not final. Following,
        // this keeps waiting for a pod that has not started (or not been scheduled) yet, and
        // reopens a stream that was cut; otherwise it answers at once with what there is.
        loop {
            let archive = store::logs::get(db, run.id, &pod.name).await?;
            if pod.deleted || archive.as_ref().is_some_and(|a| a.state != "capturing") {
                break;
            }
            // One attempt: the kubelet serves the container's current instance and the one
            // before it; older ones, and those the archive has read to their end, come from
            // the archive.
            let mut previous = false;
            if let Some(attempt) = query.attempt {
                if attempt_archived(db, run, &pod, attempt).await? {
                    break;
                }
                let current = match cluster.get_pod(&namespace, &pod.name).await {
                    Ok(Some(current)) => current,
                    Ok(None) => break,
                    Err(_) if query.follow => {
                        tokio::time::sleep(FOLLOW_POLL).await;
                        continue;
                    }
                    Err(_) => break,
                };
                match serving(main_instance(&current), attempt) {
                    Serving::Current => {}
                    Serving::Previous => previous = true,
                    Serving::Older => break,
                    Serving::NotYet if query.follow => {
                        if keepalive.due() {
                            yield LogItem::Note {
                                pod: pod.name.clone(),
                                text: format!("waiting for attempt {attempt} of pod {} to start", pod.name),
                            };
                        }
                        tokio::time::sleep(FOLLOW_POLL).await;
                        continue;
                    }
                    Serving::NotYet => {
                        yield LogItem::Note {
                            pod: pod.name.clone(),
                            text: format!("attempt {attempt} of pod {} has not started yet: it has no output so far", pod.name),
                        };
                        return;
                    }
                }
            }
            let read = LogRead {
                // The previous instance has ended: its log is read to its end.
                follow: query.follow && !previous,
                // A tail of a live pod is asked of the cluster; its line numbers are unknown.
                tail_lines: query.tail.filter(|_| after_line < 0 && last < 0),
                since_time: None,
                previous,
            };
            let numbered = read.tail_lines.is_none();
            // The run's secret values are masked before a line is served (issue 18). A run
            // whose values cannot be read is not served live (its archive is masked).
            let masks = match crate::runtime::archiver::masks_of(cluster, run, &namespace).await {
                Ok(masks) => masks,
                Err(_) if query.follow => {
                    tokio::time::sleep(FOLLOW_POLL).await;
                    continue;
                }
                Err(_) => break,
            };
            match cluster.pod_log(&namespace, &pod.name, &read).await {
                Ok(mut reader) => {
                    let before = last;
                    let mut splitter = LineSplitter::default();
                    let mut masked = MaskedLines::new(masks);
                    let mut buf = vec![0u8; 32 * 1024];
                    let mut number = -1i64;
                    loop {
                        let n = match reader.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        for raw in splitter.push(&buf[..n]) {
                            let raw = masked.push(raw);
                            number += 1;
                            if numbered && number <= last {
                                continue;
                            }
                            if let Some(item) = line_item(&pod.name, numbered.then_some(number), &raw, query) {
                                yield item;
                            }
                            if numbered {
                                last = number;
                            }
                        }
                    }
                    if let Some(raw) = masked.finish_with(splitter.finish()) {
                        number += 1;
                        if !numbered || number > last {
                            if let Some(item) = line_item(&pod.name, numbered.then_some(number), &raw, query) {
                                yield item;
                            }
                            if numbered {
                                last = number;
                            }
                        }
                    }
                    if !numbered {
                        return;
                    }
                    if last > before {
                        keepalive.reset();
                    }
                    // The live stream ended: if the archive has more (the stream was cut), go on
                    // there (an attempt's lines are numbered within it: the archive knows where).
                    let archive = store::logs::get(db, run.id, &pod.name).await?;
                    let more = |a: &store::logs::PodLog| query.attempt.is_some() || a.lines > last + 1;
                    if archive.is_some_and(|a| a.state != "capturing" && more(&a)) {
                        break;
                    }
                    if !query.follow || previous {
                        return;
                    }
                }
                Err(_) if !query.follow => {
                    if !pod_started(&pod) {
                        yield LogItem::Note {
                            pod: pod.name.clone(),
                            text: format!("pod {} has not started yet: it has no output so far", pod.name),
                        };
                        return;
                    }
                    // Gone from the cluster, or unreadable: what the archive holds, at once.
                    break;
                }
                Err(_) => {}
            }
            // Following a pod that has not ended: look again shortly, saying now and then what
            // is awaited while it has not started.
            if !pod_started(&pod) && keepalive.due() {
                let why = pod.reason.as_deref().unwrap_or(&pod.phase);
                yield LogItem::Note {
                    pod: pod.name.clone(),
                    text: format!("waiting for pod {} to start ({why})", pod.name),
                };
            }
            tokio::time::sleep(FOLLOW_POLL).await;
            match store::pods::list(db, run.id).await?.into_iter().find(|p| p.name == pod.name) {
                Some(current) => pod = current,
                None => break,
            }
            if pod_ended(&pod) {
                break;
            }
        }
        // From the archive: a follower waits for the archiver to finish with an ended pod; any
        // other reader gets what is archived at once, with a note when it is not final.
        let attempt_done = match query.attempt {
            Some(attempt) => attempt_archived(db, run, &pod, attempt).await?,
            None => false,
        };
        let wait = query.follow && !pod.deleted && !attempt_done;
        let deadline = tokio::time::Instant::now() + if wait { ARCHIVE_WAIT } else { Duration::ZERO };
        let archive = loop {
            match store::logs::get(db, run.id, &pod.name).await? {
                Some(a) if a.state != "capturing" => break Some(a),
                other if tokio::time::Instant::now() >= deadline => break other,
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        let Some(archive) = archive else {
            yield LogItem::Note {
                pod: pod.name.clone(),
                text: format!("the log of pod {} is not available: it is still being captured, or the pod is gone and nothing was captured", pod.name),
            };
            return;
        };
        if archive.state == "missing" {
            yield LogItem::Note {
                pod: pod.name.clone(),
                text: format!("no log was captured for pod {}: {}", pod.name, archive.detail.clone().unwrap_or_default()),
            };
            return;
        }
        // The archive's lines [base, end) are served, numbered from `base`: all of them, or
        // one attempt's (up to the marker line before the next).
        let (base, end) = match query.attempt {
            None => (0, archive.lines),
            Some(attempt) => {
                let archived = store::logs::attempts(db, run.id, Some(&pod.name)).await?;
                let Some(first) = archived.iter().find(|a| a.attempt == attempt) else {
                    yield LogItem::Note {
                        pod: pod.name.clone(),
                        text: format!("attempt {attempt} of pod {} was not archived: its container had restarted past it before its log could be read", pod.name),
                    };
                    return;
                };
                let end = archived
                    .iter()
                    .find(|a| a.attempt == attempt + 1)
                    .map_or(archive.lines, |next| next.first_line - 1);
                (first.first_line, end)
            }
        };
        let mut start = base + last + 1;
        if let Some(tail) = query.tail.filter(|_| after_line < 0) {
            start = start.max(end - tail);
        }
        let mut seq = 0;
        let mut marked = false;
        'chunks: loop {
            let chunks = store::logs::chunks(db, run.id, &pod.name, seq, 16).await?;
            if chunks.is_empty() {
                break;
            }
            for chunk in chunks {
                if chunk.first_line >= end {
                    break 'chunks;
                }
                seq = chunk.seq + 1;
                if chunk.part == "tail" && !marked && archive.dropped_lines > 0 {
                    marked = true;
                    if start < chunk.first_line {
                        yield LogItem::Note {
                            pod: pod.name.clone(),
                            text: format!(
                                "{} lines ({} bytes) omitted: the log exceeded the per-pod cap; its start and end are kept",
                                archive.dropped_lines, archive.dropped_bytes
                            ),
                        };
                    }
                }
                if chunk.first_line + chunk.line_count as i64 <= start {
                    continue;
                }
                if query.text_only && query.since.is_none() {
                    let (text, past_end) = chunk_text(&chunk.data, chunk.first_line, start, end);
                    if !text.is_empty() {
                        yield LogItem::Lines { pod: pod.name.clone(), text };
                    }
                    if past_end {
                        break 'chunks;
                    }
                    continue;
                }
                let mut splitter = LineSplitter::default();
                let mut lines = splitter.push(&chunk.data);
                lines.extend(splitter.finish());
                for (i, raw) in lines.into_iter().enumerate() {
                    let number = chunk.first_line + i as i64;
                    if number < start {
                        continue;
                    }
                    if number >= end {
                        break 'chunks;
                    }
                    if let Some(item) = line_item(&pod.name, Some(number - base), &raw, query) {
                        yield item;
                    }
                }
            }
        }
        if archive.state == "incomplete" {
            yield LogItem::Note {
                pod: pod.name.clone(),
                text: format!("the log of pod {} is incomplete: {}", pod.name, archive.detail.clone().unwrap_or_default()),
            };
        } else if archive.state == "capturing" {
            let text = if pod.deleted {
                format!("the capture of pod {}'s log was interrupted and the pod is gone: the {} lines above are what was archived; anything printed after them may be missing", pod.name, archive.lines)
            } else {
                format!("the log of pod {} is still being captured: the {} lines above are what is archived so far", pod.name, archive.lines)
            };
            yield LogItem::Note { pod: pod.name.clone(), text };
        }
    }
}

/// The archive has read attempt `attempt` of the pod's container to its end (the next one
/// began).
async fn attempt_archived(
    db: &PgPool,
    run: &Run,
    pod: &PodRecord,
    attempt: i32,
) -> Result<bool, sqlx::Error> {
    Ok(store::logs::attempts(db, run.id, Some(&pod.name))
        .await?
        .iter()
        .any(|a| a.attempt > attempt))
}

/// The pod's container has started (it may have output): a pod stays `Pending` until it has
/// (its `startTime` is set earlier, when it is bound to a node).
fn pod_started(pod: &PodRecord) -> bool {
    !matches!(pod.phase.as_str(), "Pending" | "")
}

/// The pod will print nothing more.
fn pod_ended(pod: &PodRecord) -> bool {
    pod.deleted || matches!(pod.phase.as_str(), "Succeeded" | "Failed")
}

/// The text (timestamps removed) of a stored chunk's lines numbered in `[start, end)`, the
/// chunk's first line being `first_line`, as one buffer; and whether the chunk reaches `end`.
/// The same lines and text as [`LineSplitter`] and [`split_timestamp`] make of the chunk (each
/// line's timestamp found by [`TextStart`], never parsed into a time).
fn chunk_text(data: &[u8], first_line: i64, start: i64, end: i64) -> (Bytes, bool) {
    let mut text = Vec::with_capacity(data.len());
    let mut text_start = TextStart::default();
    for (i, raw) in lines(data).enumerate() {
        let number = first_line + i as i64;
        if number < start {
            continue;
        }
        if number >= end {
            return (Bytes::from(text), true);
        }
        text.extend_from_slice(&raw[text_start.of(raw)..]);
    }
    (Bytes::from(text), false)
}

fn line_item(pod: &str, number: Option<i64>, raw: &[u8], query: &LogQuery) -> Option<LogItem> {
    let (time, text) = split_timestamp(raw);
    if let (Some(since), Some(time)) = (query.since, time) {
        if time < since {
            return None;
        }
    }
    Some(LogItem::Line {
        pod: pod.to_string(),
        number,
        time,
        text: Bytes::copy_from_slice(text),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::loglines::MAX_LINE;

    /// What the line path (`since`, `timestamps`, event streams) makes of a stored chunk's
    /// lines numbered in `[start, end)`: each piece's text, as [`line_item`] gives it.
    fn line_path_text(data: &[u8], first_line: i64, start: i64, end: i64) -> Vec<u8> {
        let query = LogQuery::default();
        let mut splitter = LineSplitter::default();
        let mut pieces = splitter.push(data);
        pieces.extend(splitter.finish());
        let mut text = Vec::new();
        for (i, raw) in pieces.iter().enumerate() {
            let number = first_line + i as i64;
            if number < start || number >= end {
                continue;
            }
            match line_item("pod", Some(number), raw, &query) {
                Some(LogItem::Line { text: line, .. }) => text.extend_from_slice(&line),
                other => panic!("{other:?}"),
            }
        }
        text
    }

    /// Content that a plain read might get wrong if it took any shortcut: lines whose text
    /// starts with a time (the kubelet's prefix goes, the text's own stays), first words that
    /// only look like times (invalid dates, leap seconds, offsets, lower case), CRLF, bytes
    /// that are not UTF-8, a line longer than 64 KiB whose cut falls inside a two-byte
    /// character and whose next piece starts with something time-like, and no final newline.
    fn tricky_chunk() -> Vec<u8> {
        let mut data = Vec::new();
        let mut line = |text: &[u8]| data.extend_from_slice(text);
        line(b"2026-12-03T08:00:00.123456789Z 2026-12-03T08:00:00Z a time as text\n");
        line(b"2026-12-03T08:00:00.5Z plain\r\n");
        line(b"2026-12-03T08:00:01Z \n");
        line(b"2026-12-03T08:00:01Z\n");
        line(b"2026-02-29T08:00:01Z not a date this year\n");
        line(b"2024-02-29T08:00:01Z a date that year\n");
        line(b"2016-12-31T23:59:60Z leap second\n");
        line(b"2026-12-03T08:00:02+01:00 an offset\n");
        line(b"2026-12-03t08:00:02z lower case\n");
        line(b"2026-12-03T08:00:02.1234567890Z ten digits\n");
        line(b"2026-12-03T24:00:02Z hour 24\n");
        line(b"2026-12-03T08:00:02Z not \xff\xfe utf-8\r\n");
        // 31 bytes of time, then two-byte characters: the 64 KiB cut splits one; the next cut
        // is followed by a time-like word.
        let mut long = b"2026-12-03T08:00:03.000000001Z ".to_vec();
        while long.len() < MAX_LINE {
            long.extend_from_slice("é".as_bytes());
        }
        assert_eq!(long.len(), MAX_LINE + 1, "the cut falls inside a character");
        long.resize(2 * MAX_LINE, b'x');
        long.extend_from_slice(b"2026-12-03T08:00:03Z after the second cut\n");
        line(&long);
        line(b"2026-12-03T08:00:04Z no final newline");
        data
    }

    #[test]
    fn plain_text_of_a_chunk_is_the_line_paths_text_byte_for_byte() {
        let data = tricky_chunk();
        let count = lines(&data).count() as i64;
        assert_eq!(count, 16, "the long line is three pieces");
        for first_line in [0, 100] {
            for start in 0..=count {
                for end in [start, start + 1, count - 1, count, count + 5] {
                    let (start, end) = (first_line + start, first_line + end);
                    let (text, past_end) = chunk_text(&data, first_line, start, end);
                    assert_eq!(
                        text.as_ref(),
                        line_path_text(&data, first_line, start, end),
                        "lines [{start}, {end}) of a chunk starting at {first_line}"
                    );
                    // It says so once it meets a line at or past both ends.
                    assert_eq!(past_end, start.max(end) < first_line + count);
                }
            }
        }
    }
}
