//! Container logs: one bounded, timestamped buffer per container instance (pod uid, container,
//! restart number), written by runners and read by the `pods/log` handler.
//!
//! Like a kubelet's rotated log files, a buffer keeps at most [`LOG_CAP_BYTES`] of stored text
//! and drops the oldest lines beyond that. Huge generated output (the scripted runner's
//! `KUBESIM_LOG_BYTES`) is stored as a *description* and produced on the fly when read, so a
//! 200 MB log costs no memory. The module must not know about pods or HTTP.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio::sync::watch;

/// Stored bytes kept per container before the oldest lines are dropped.
pub const LOG_CAP_BYTES: usize = 64 * 1024 * 1024;
/// Every generated line is exactly this long, newline included.
pub const GENERATED_LINE: u64 = 64;

#[derive(Debug, Clone)]
enum Chunk {
    /// One line (ends with `\n` unless it is an unterminated final line).
    Line { ts: DateTime<Utc>, data: Bytes },
    /// `len` bytes of [`generated_bytes`] text, starting at generated offset 0.
    Generated { ts: DateTime<Utc>, len: u64 },
}

impl Chunk {
    fn ts(&self) -> DateTime<Utc> {
        match self {
            Chunk::Line { ts, .. } | Chunk::Generated { ts, .. } => *ts,
        }
    }
    fn lines(&self) -> u64 {
        match self {
            Chunk::Line { .. } => 1,
            Chunk::Generated { len, .. } => len.div_ceil(GENERATED_LINE),
        }
    }
}

#[derive(Default)]
struct Inner {
    chunks: VecDeque<Chunk>,
    /// Sequence number of `chunks[0]`.
    first_seq: u64,
    stored: usize,
    done: bool,
}

/// One container instance's log.
pub struct LogBuf {
    inner: Mutex<Inner>,
    /// Bumped on every append and on close; followers wait on it.
    changed: watch::Sender<u64>,
    cap: usize,
}

impl Default for LogBuf {
    fn default() -> Self {
        LogBuf::with_cap(LOG_CAP_BYTES)
    }
}

/// Text of generated log line `n` (0-based): 64 bytes including the newline.
fn generated_line(n: u64) -> [u8; GENERATED_LINE as usize] {
    let mut line = [b'x'; GENERATED_LINE as usize];
    let head = format!("kubesim generated log line {n:012} ");
    line[..head.len()].copy_from_slice(head.as_bytes());
    line[GENERATED_LINE as usize - 1] = b'\n';
    line
}

/// Bytes `[offset, offset+len)` of the generated text.
pub fn generated_bytes(offset: u64, len: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len as usize);
    let mut pos = offset;
    let end = offset + len;
    while pos < end {
        let n = pos / GENERATED_LINE;
        let line = generated_line(n);
        let from = (pos % GENERATED_LINE) as usize;
        let to = ((end - n * GENERATED_LINE).min(GENERATED_LINE)) as usize;
        out.extend_from_slice(&line[from..to]);
        pos = n * GENERATED_LINE + to as u64;
    }
    out
}

impl LogBuf {
    pub fn with_cap(cap: usize) -> LogBuf {
        LogBuf {
            inner: Mutex::new(Inner::default()),
            changed: watch::channel(0).0,
            cap,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    /// Appends one line (keep the trailing newline, if any).
    pub fn push_line(&self, data: Bytes) {
        if data.is_empty() {
            return;
        }
        {
            let mut g = self.lock();
            g.stored += data.len();
            g.chunks.push_back(Chunk::Line {
                ts: Utc::now(),
                data,
            });
            while g.stored > self.cap && g.chunks.len() > 1 {
                if let Some(Chunk::Line { data, .. }) = g.chunks.pop_front() {
                    g.stored -= data.len();
                }
                g.first_seq += 1;
            }
        }
        self.bump();
    }

    /// Appends `len` bytes of generated text without storing them.
    pub fn push_generated(&self, len: u64) {
        if len == 0 {
            return;
        }
        self.lock().chunks.push_back(Chunk::Generated {
            ts: Utc::now(),
            len,
        });
        self.bump();
    }

    /// No more output will come (the container terminated).
    pub fn close(&self) {
        self.lock().done = true;
        self.bump();
    }

    pub fn is_closed(&self) -> bool {
        self.lock().done
    }

    /// All current content, without timestamps (for tests and small reads).
    pub fn snapshot(&self) -> Vec<u8> {
        let g = self.lock();
        let mut out = Vec::new();
        for c in &g.chunks {
            match c {
                Chunk::Line { data, .. } => out.extend_from_slice(data),
                Chunk::Generated { len, .. } => out.extend_from_slice(&generated_bytes(0, *len)),
            }
        }
        out
    }

    /// Streams the log with the `pods/log` options into `tx`, in blocks. Returns when done,
    /// when the limit is reached, or when the receiver goes away.
    pub async fn stream(self: Arc<Self>, opts: ReadOptions, tx: tokio::sync::mpsc::Sender<Bytes>) {
        let mut rx = self.changed.subscribe();
        // Position: chunk sequence number and the generated line within it.
        let (mut seq, mut line_in_chunk) = {
            let g = self.lock();
            match opts.tail_lines {
                Some(n) => {
                    let mut remaining = n;
                    let mut seq = g.first_seq + g.chunks.len() as u64;
                    let mut line = 0;
                    for c in g.chunks.iter().rev() {
                        if remaining == 0 {
                            break;
                        }
                        let l = c.lines();
                        seq -= 1;
                        if l > remaining {
                            line = l - remaining;
                            remaining = 0;
                        } else {
                            remaining -= l;
                        }
                    }
                    (seq, line)
                }
                None => (g.first_seq, 0),
            }
        };
        let mut sent: u64 = 0;
        loop {
            rx.borrow_and_update();
            let (batch, done) = {
                let g = self.lock();
                if seq < g.first_seq {
                    seq = g.first_seq;
                    line_in_chunk = 0;
                }
                let start = (seq - g.first_seq) as usize;
                let batch: Vec<Chunk> = g.chunks.iter().skip(start).take(256).cloned().collect();
                (batch, g.done)
            };
            let caught_up = batch.is_empty();
            for chunk in batch {
                if opts.since.is_some_and(|s| chunk.ts() < s) {
                    seq += 1;
                    line_in_chunk = 0;
                    continue;
                }
                let prefix = if opts.timestamps {
                    format!("{} ", crate::time::rfc3339_nano(chunk.ts()))
                } else {
                    String::new()
                };
                match &chunk {
                    Chunk::Line { data, .. } => {
                        let mut out = Vec::with_capacity(prefix.len() + data.len());
                        out.extend_from_slice(prefix.as_bytes());
                        out.extend_from_slice(data);
                        if !self
                            .send_limited(&tx, out, &mut sent, opts.limit_bytes)
                            .await
                        {
                            return;
                        }
                    }
                    Chunk::Generated { len, .. } => {
                        let total_lines = chunk.lines();
                        while line_in_chunk < total_lines {
                            // ~64 KiB per block.
                            let n = (total_lines - line_in_chunk).min(1024);
                            let mut out = Vec::with_capacity((n * (GENERATED_LINE + 40)) as usize);
                            for l in line_in_chunk..line_in_chunk + n {
                                let from = l * GENERATED_LINE;
                                let to = ((l + 1) * GENERATED_LINE).min(*len);
                                out.extend_from_slice(prefix.as_bytes());
                                out.extend_from_slice(&generated_bytes(from, to - from));
                            }
                            line_in_chunk += n;
                            if !self
                                .send_limited(&tx, out, &mut sent, opts.limit_bytes)
                                .await
                            {
                                return;
                            }
                        }
                    }
                }
                seq += 1;
                line_in_chunk = 0;
            }
            if caught_up {
                if done || !opts.follow {
                    return;
                }
                tokio::select! {
                    r = rx.changed() => if r.is_err() { return },
                    _ = tx.closed() => return,
                }
            }
        }
    }

    async fn send_limited(
        &self,
        tx: &tokio::sync::mpsc::Sender<Bytes>,
        mut out: Vec<u8>,
        sent: &mut u64,
        limit: Option<u64>,
    ) -> bool {
        let mut last = false;
        if let Some(limit) = limit {
            let room = limit.saturating_sub(*sent);
            if out.len() as u64 >= room {
                out.truncate(room as usize);
                last = true;
            }
        }
        *sent += out.len() as u64;
        if !out.is_empty() && tx.send(Bytes::from(out)).await.is_err() {
            return false;
        }
        !last
    }
}

/// The `pods/log` query options the buffer itself implements.
#[derive(Debug, Clone, Default)]
pub struct ReadOptions {
    pub follow: bool,
    pub tail_lines: Option<u64>,
    pub limit_bytes: Option<u64>,
    pub since: Option<DateTime<Utc>>,
    pub timestamps: bool,
}

/// `(pod uid, container name, restart number)`.
pub type LogKey = (String, String, i32);

/// Every container instance's log.
#[derive(Default)]
pub struct Logs {
    bufs: Mutex<HashMap<LogKey, Arc<LogBuf>>>,
}

impl Logs {
    pub fn open(&self, key: LogKey) -> Arc<LogBuf> {
        self.bufs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key)
            .or_default()
            .clone()
    }

    pub fn get(&self, key: &LogKey) -> Option<Arc<LogBuf>> {
        self.bufs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
    }

    /// Forgets every log of a pod (the pod object is gone).
    pub fn remove_pod(&self, uid: &str) {
        self.bufs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(u, _, _), _| u != uid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read(buf: Arc<LogBuf>, opts: ReadOptions) -> Vec<u8> {
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        let h = tokio::spawn(buf.stream(opts, tx));
        let mut out = Vec::new();
        while let Some(b) = rx.recv().await {
            out.extend_from_slice(&b);
        }
        h.await.unwrap();
        out
    }

    #[test]
    fn generated_text_is_consistent_at_any_offset() {
        let all = generated_bytes(0, 1000);
        assert_eq!(all.len(), 1000);
        assert_eq!(generated_bytes(100, 300), all[100..400].to_vec());
        assert!(all.starts_with(b"kubesim generated log line 000000000000 x"));
        assert_eq!(all[63], b'\n');
    }

    #[tokio::test]
    async fn tail_lines_and_limit_bytes_apply() {
        let buf = Arc::new(LogBuf::default());
        for i in 0..5 {
            buf.push_line(Bytes::from(format!("line {i}\n")));
        }
        buf.close();
        let tail = read(
            buf.clone(),
            ReadOptions {
                tail_lines: Some(2),
                ..Default::default()
            },
        )
        .await;
        assert_eq!(tail, b"line 3\nline 4\n");
        let limited = read(
            buf,
            ReadOptions {
                limit_bytes: Some(9),
                ..Default::default()
            },
        )
        .await;
        assert_eq!(limited, b"line 0\nli");
    }

    #[tokio::test]
    async fn oldest_lines_are_dropped_beyond_the_cap() {
        let buf = Arc::new(LogBuf::with_cap(20));
        for i in 0..5 {
            buf.push_line(Bytes::from(format!("line {i}\n")));
        }
        buf.close();
        let out = read(buf, ReadOptions::default()).await;
        assert_eq!(out, b"line 3\nline 4\n");
    }

    #[tokio::test]
    async fn huge_generated_logs_stream_without_being_stored() {
        let buf = Arc::new(LogBuf::default());
        buf.push_generated(10 * 1024 * 1024 + 5);
        buf.close();
        let out = read(buf, ReadOptions::default()).await;
        assert_eq!(out.len(), 10 * 1024 * 1024 + 5);
        assert_eq!(&out[..], &generated_bytes(0, out.len() as u64)[..]);
    }
}
