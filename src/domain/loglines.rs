//! Log lines as the kubelet serves them with `timestamps=true`: `<RFC 3339 time> <text>\n`.
//! Splitting a byte stream into such lines and taking them apart. Pure.

use chrono::{DateTime, Utc};

/// Longest line kept whole; a longer one is cut into pieces of this size, so memory stays
/// bounded whatever a pod prints.
pub const MAX_LINE: usize = 64 * 1024;

/// Cuts a byte stream into lines (each with its `\n`, except possibly the last at the end).
#[derive(Debug, Default)]
pub struct LineSplitter {
    pending: Vec<u8>,
}

impl LineSplitter {
    /// Feeds bytes; returns the lines they complete.
    pub fn push(&mut self, mut bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut lines = Vec::new();
        while !bytes.is_empty() {
            let room = MAX_LINE - self.pending.len();
            let window = &bytes[..bytes.len().min(room)];
            match window.iter().position(|b| *b == b'\n') {
                Some(i) => {
                    self.pending.extend_from_slice(&window[..=i]);
                    lines.push(std::mem::take(&mut self.pending));
                    bytes = &bytes[i + 1..];
                }
                None => {
                    self.pending.extend_from_slice(window);
                    bytes = &bytes[window.len()..];
                    if self.pending.len() == MAX_LINE {
                        lines.push(std::mem::take(&mut self.pending));
                    }
                }
            }
        }
        lines
    }

    /// The last, unterminated line, if any.
    pub fn finish(&mut self) -> Option<Vec<u8>> {
        (!self.pending.is_empty()).then(|| std::mem::take(&mut self.pending))
    }
}

/// Splits `<time> <text>` into the time and the text. A line without a parsable time is all text.
pub fn split_timestamp(line: &[u8]) -> (Option<DateTime<Utc>>, &[u8]) {
    let Some(space) = line.iter().take(40).position(|b| *b == b' ') else {
        return (None, line);
    };
    match std::str::from_utf8(&line[..space])
        .ok()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
    {
        Some(time) => (Some(time.with_timezone(&Utc)), &line[space + 1..]),
        None => (None, line),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_cut_at_newlines_across_pushes() {
        let mut splitter = LineSplitter::default();
        assert!(splitter.push(b"par").is_empty());
        assert_eq!(
            splitter.push(b"tial\nwhole\nnext"),
            [b"partial\n".to_vec(), b"whole\n".to_vec()]
        );
        assert_eq!(splitter.finish(), Some(b"next".to_vec()));
        assert_eq!(splitter.finish(), None);
    }

    #[test]
    fn overlong_lines_are_cut_into_bounded_pieces() {
        let mut splitter = LineSplitter::default();
        let long = vec![b'x'; MAX_LINE * 2 + 10];
        let lines = splitter.push(&long);
        assert_eq!(lines.len(), 2);
        assert!(lines.iter().all(|l| l.len() == MAX_LINE));
        assert_eq!(splitter.finish().unwrap().len(), 10);
    }

    #[test]
    fn timestamps_are_split_off_and_parsed() {
        let (time, text) = split_timestamp(b"2026-11-27T10:00:00.123456789Z hello world\n");
        assert_eq!(
            time.unwrap().to_rfc3339(),
            "2026-11-27T10:00:00.123456789+00:00"
        );
        assert_eq!(text, b"hello world\n");
        let (time, text) = split_timestamp(b"no time here\n");
        assert!(time.is_none());
        assert_eq!(text, b"no time here\n");
    }
}
