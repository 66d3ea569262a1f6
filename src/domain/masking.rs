//! Masking secret parameter values in log lines (issue 18): every exact occurrence of a run's
//! secret values in its log is replaced by `***`, in the archive and in the live stream. Pure.
//!
//! Logs arrive as lines cut by [`super::loglines::LineSplitter`]: a line longer than
//! [`MAX_LINE`] comes as several pieces, and a value may straddle two of them (or, seen from
//! the archive, two 64 KiB chunks). [`MaskedLines`] therefore keeps back the last
//! `longest value - 1` bytes of a piece that does not end its line and masks them with the next
//! piece. Values are matched in the text after the kubelet's timestamp only, so a line's time
//! stays readable. A value with several lines is masked line by line (each of its lines of at
//! least [`MIN_MASKED`] bytes), as the kubelet prefixes each line with a timestamp. Without
//! values nothing is changed, byte for byte.

use super::loglines::{split_timestamp, MAX_LINE};
use super::params::MASK;
use aho_corasick::{AhoCorasick, MatchKind};

/// Values (and lines of values) shorter than this are not masked: masking `1` or `a` would
/// make every log unreadable while hiding nothing.
pub const MIN_MASKED: usize = 3;

/// The values to mask in one run's logs.
#[derive(Clone, Default)]
pub struct Masks {
    matcher: Option<AhoCorasick>,
    longest: usize,
}

impl std::fmt::Debug for Masks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Masks")
            .field("active", &self.matcher.is_some())
            .finish()
    }
}

impl Masks {
    /// Masks for `values` (each split into its lines).
    pub fn new<V: AsRef<[u8]>>(values: impl IntoIterator<Item = V>) -> Masks {
        let mut patterns: Vec<Vec<u8>> = Vec::new();
        for value in values {
            for line in value.as_ref().split(|b| *b == b'\n') {
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                if line.len() >= MIN_MASKED && !patterns.iter().any(|p| p == line) {
                    patterns.push(line.to_vec());
                }
            }
        }
        if patterns.is_empty() {
            return Masks::default();
        }
        let longest = patterns.iter().map(Vec::len).max().unwrap_or(0);
        let matcher = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(&patterns)
            .ok();
        Masks { matcher, longest }
    }

    pub fn is_empty(&self) -> bool {
        self.matcher.is_none()
    }

    /// `text` with every match replaced, and where the kept-back tail starts: matches starting
    /// before `keep_from` are replaced whole; what follows the last of them from `keep_from` on
    /// is returned unmasked as the tail (it may begin a match that the next piece completes).
    fn mask(&self, text: &[u8], keep_from: Option<usize>) -> (Vec<u8>, Vec<u8>) {
        let Some(matcher) = &self.matcher else {
            return (text.to_vec(), Vec::new());
        };
        let limit = keep_from.unwrap_or(text.len());
        let mut out = Vec::with_capacity(text.len());
        let mut at = 0;
        for found in matcher.find_iter(text) {
            if found.start() >= limit {
                break;
            }
            out.extend_from_slice(&text[at..found.start()]);
            out.extend_from_slice(MASK.as_bytes());
            at = found.end();
        }
        let split = at.max(limit);
        out.extend_from_slice(&text[at..split]);
        (out, text[split..].to_vec())
    }
}

/// A run's log lines, as [`super::loglines::LineSplitter`] cuts them, masked.
#[derive(Debug, Default)]
pub struct MaskedLines {
    masks: Masks,
    /// The unmasked end of the last piece of an unfinished line.
    carry: Vec<u8>,
    /// Whether the next piece continues a line (it has no timestamp of its own).
    continues: bool,
}

impl MaskedLines {
    pub fn new(masks: Masks) -> MaskedLines {
        MaskedLines {
            masks,
            carry: Vec::new(),
            continues: false,
        }
    }

    /// The next piece, masked (its end may be kept back for the next piece). Without masks it
    /// is the piece itself.
    pub fn push(&mut self, piece: Vec<u8>) -> Vec<u8> {
        if self.masks.is_empty() {
            return piece;
        }
        let ends_line = piece.ends_with(b"\n") || piece.len() < MAX_LINE;
        let (prefix, text) = if self.continues {
            (&piece[..0], &piece[..])
        } else {
            let (time, text) = split_timestamp(&piece);
            let cut = if time.is_some() {
                piece.len() - text.len()
            } else {
                0
            };
            (&piece[..cut], &piece[cut..])
        };
        let mut whole = std::mem::take(&mut self.carry);
        whole.extend_from_slice(text);
        let keep_from = (!ends_line).then(|| whole.len().saturating_sub(self.masks.longest - 1));
        let (masked, carry) = self.masks.mask(&whole, keep_from);
        self.carry = carry;
        self.continues = !ends_line;
        let mut out = prefix.to_vec();
        out.extend_from_slice(&masked);
        out
    }

    /// What is kept back at the end of the stream, masked (nothing without masks).
    pub fn finish(&mut self) -> Option<Vec<u8>> {
        self.continues = false;
        let carry = std::mem::take(&mut self.carry);
        (!carry.is_empty()).then(|| self.masks.mask(&carry, None).0)
    }

    /// A last, unterminated line (`LineSplitter::finish`) with what is kept back, masked.
    pub fn finish_with(&mut self, last: Option<Vec<u8>>) -> Option<Vec<u8>> {
        match last {
            Some(piece) => {
                // An unterminated last piece ends its line.
                let masked = if self.masks.is_empty() {
                    piece
                } else {
                    let mut whole = std::mem::take(&mut self.carry);
                    let (prefix, text) = if self.continues {
                        (Vec::new(), piece)
                    } else {
                        let (time, text) = split_timestamp(&piece);
                        let cut = if time.is_some() {
                            piece.len() - text.len()
                        } else {
                            0
                        };
                        (piece[..cut].to_vec(), piece[cut..].to_vec())
                    };
                    whole.extend_from_slice(&text);
                    let mut out = prefix;
                    out.extend_from_slice(&self.masks.mask(&whole, None).0);
                    out
                };
                self.continues = false;
                Some(masked)
            }
            None => self.finish(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::loglines::LineSplitter;

    /// Feeds `input` in reads of `read` bytes through a splitter and a masker.
    fn through(masks: Masks, input: &[u8], read: usize) -> Vec<u8> {
        let mut splitter = LineSplitter::default();
        let mut masked = MaskedLines::new(masks);
        let mut out = Vec::new();
        for bytes in input.chunks(read) {
            for line in splitter.push(bytes) {
                out.extend(masked.push(line));
            }
        }
        if let Some(last) = masked.finish_with(splitter.finish()) {
            out.extend(last);
        }
        out
    }

    #[test]
    fn values_are_masked_after_the_timestamp_in_any_read_size() {
        let masks = Masks::new(["hunter2-xyz"]);
        let input = b"2026-12-03T10:00:00Z token hunter2-xyz ok\n2026-12-03T10:00:01Z hunter2-xyzhunter2-xyz";
        for read in [1, 3, 7, 64, 4096] {
            assert_eq!(
                through(masks.clone(), input, read),
                b"2026-12-03T10:00:00Z token *** ok\n2026-12-03T10:00:01Z ******",
                "reads of {read} bytes"
            );
        }
    }

    #[test]
    fn a_value_straddling_the_cut_of_a_long_line_is_masked() {
        let masks = Masks::new(["hunter2-xyz"]);
        for offset in 1..11 {
            let mut input = b"2026-12-03T10:00:00Z ".to_vec();
            input.resize(MAX_LINE - offset, b'x');
            input.extend_from_slice(b"hunter2-xyz tail\n");
            let out = through(masks.clone(), &input, 32 * 1024);
            let text = String::from_utf8(out).unwrap();
            assert!(!text.contains("hunter2"), "offset {offset}");
            assert!(text.ends_with("x*** tail\n"), "offset {offset}");
        }
    }

    #[test]
    fn without_values_the_log_is_unchanged_byte_for_byte() {
        let mut input = b"2026-12-03T10:00:00Z ".to_vec();
        input.resize(3 * MAX_LINE + 17, b'y');
        input.extend_from_slice(b"\n\xff\xfe no time\nend");
        assert_eq!(through(Masks::new(Vec::<&str>::new()), &input, 1000), input);
        assert_eq!(
            through(Masks::new(["ab"]), &input, 1000),
            input,
            "too short to mask"
        );
    }

    #[test]
    fn several_values_and_multi_line_values_are_masked_line_by_line() {
        let masks = Masks::new(["alpha-one", "line-one\nline-two"]);
        let out = through(
            masks,
            b"2026-12-03T10:00:00Z alpha-one line-one\n2026-12-03T10:00:00Z line-two\n",
            5,
        );
        assert_eq!(
            out,
            b"2026-12-03T10:00:00Z *** ***\n2026-12-03T10:00:00Z ***\n"
        );
    }
}
