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
            match memchr::memchr(b'\n', window) {
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

/// The lines of a whole buffer, borrowed: what a fresh [`LineSplitter`] makes of it (`push`,
/// then `finish`), without copying each line.
pub fn lines(mut bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        if bytes.is_empty() {
            return None;
        }
        let window = &bytes[..bytes.len().min(MAX_LINE)];
        let len = match memchr::memchr(b'\n', window) {
            Some(i) => i + 1,
            None => window.len(),
        };
        let (line, rest) = bytes.split_at(len);
        bytes = rest;
        Some(line)
    })
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

/// Where the text of a line starts, for readers that want the text alone: just after its
/// timestamp and the space that follows it, or 0 when it has none. Always the same split as
/// [`split_timestamp`], without building the time (issue 15: a plain archived read spent most
/// of its time parsing each line's time only to drop it).
///
/// The kubelet writes Go's RFC3339Nano in UTC (`2006-01-02T15:04:05.999999999Z`): a first word
/// of exactly that shape, with seconds `00`-`59` and one to nine fraction digits, is a time
/// chrono accepts if and only if its date, hour and minute are valid, which depend on its first
/// 16 bytes alone; those are checked through chrono once and remembered, since a log's lines
/// share them for a minute at a time. Any other first word (a leap second, another offset,
/// lower-case `t` or `z`, ten fraction digits, no time at all) is given to
/// [`split_timestamp`] as before, so what counts as a time is chrono's word, not ours.
#[derive(Debug, Default, Clone)]
pub struct TextStart {
    /// The last date, hour and minute checked, and whether chrono accepted them.
    known: Option<([u8; 16], bool)>,
}

impl TextStart {
    pub fn of(&mut self, line: &[u8]) -> usize {
        let Some(space) = kubelet_time_len(line) else {
            return line.len() - split_timestamp(line).1.len();
        };
        let prefix: [u8; 16] = line[..16].try_into().expect("the shape is longer");
        let valid = match self.known {
            Some((known, valid)) if known == prefix => valid,
            _ => {
                let valid = split_timestamp(line).0.is_some();
                self.known = Some((prefix, valid));
                valid
            }
        };
        if valid {
            space + 1
        } else {
            0
        }
    }
}

/// The length of `line`'s first word when it has the kubelet's time shape and a space after it
/// (see [`TextStart`]): `dddd-dd-ddTdd:dd:[0-5]d`, then `Z` or `.` with 1 to 9 digits and `Z`.
fn kubelet_time_len(line: &[u8]) -> Option<usize> {
    let digits = |range: std::ops::Range<usize>| line[range].iter().all(u8::is_ascii_digit);
    if line.len() < 21
        || !digits(0..4)
        || line[4] != b'-'
        || !digits(5..7)
        || line[7] != b'-'
        || !digits(8..10)
        || line[10] != b'T'
        || !digits(11..13)
        || line[13] != b':'
        || !digits(14..16)
        || line[16] != b':'
        || !(b'0'..=b'5').contains(&line[17])
        || !line[18].is_ascii_digit()
    {
        return None;
    }
    let zone = match line[19] {
        b'Z' => 19,
        b'.' => {
            let fraction = line[20..]
                .iter()
                .take(10)
                .take_while(|b| b.is_ascii_digit())
                .count();
            if !(1..=9).contains(&fraction) {
                return None;
            }
            20 + fraction
        }
        _ => return None,
    };
    (line.get(zone) == Some(&b'Z') && line.get(zone + 1) == Some(&b' ')).then_some(zone + 1)
}

/// The time of the line each piece belongs to, for pieces in the order a stream (or the archive)
/// holds them: a line longer than [`MAX_LINE`] comes as several pieces and only its first
/// carries the kubelet's timestamp; the others belong to the same line, at the same time. A
/// piece continues a line when the piece before it did not end with `\n`.
#[derive(Debug, Default, Clone)]
pub struct LineTimes {
    continues: bool,
    time: Option<DateTime<Utc>>,
}

impl LineTimes {
    /// The time of `piece`'s line (its own timestamp, or that of its line's first piece).
    pub fn next(&mut self, piece: &[u8]) -> Option<DateTime<Utc>> {
        if !self.continues {
            self.time = split_timestamp(piece).0;
        }
        self.continues = !piece.ends_with(b"\n");
        self.time
    }
}

/// The last piece archived so far, and the time of the line it belongs to: for the last piece
/// of a line longer than [`MAX_LINE`] that is the time its first piece carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anchor {
    pub piece: Vec<u8>,
    pub time: Option<DateTime<Utc>>,
}

impl Anchor {
    /// A piece that begins its line (its time is its own timestamp, if it has one).
    pub fn line(piece: Vec<u8>) -> Anchor {
        let time = split_timestamp(&piece).0;
        Anchor { piece, time }
    }
}

/// Finding the place to go on from in a log stream that was reopened, by content instead of by
/// line count: a kubelet serves only the current file of a rotated log (10 MiB by default), so
/// after a reconnect past a rotation the stream starts later than the first line, and counting
/// lines would skip new ones. Every line carries its kubelet timestamp, so the last archived
/// piece (its line's time and its text) is an anchor: pieces up to it are old, pieces after it
/// new. When the anchor is no longer in the stream (rotated away) and a line newer than it
/// arrives, the lines between may be lost: that is reported once, as a gap between the two
/// times. Pieces of a line longer than [`MAX_LINE`] after its first take the time of their
/// line ([`LineTimes`]): without it the last piece of such a line, as an anchor, had no time,
/// and a reopened stream was all taken as new (stored twice), or a later piece of the line was
/// taken for a gap.
#[derive(Debug)]
pub struct Resume {
    anchor: Option<Vec<u8>>,
    anchor_time: Option<DateTime<Utc>>,
    found: bool,
    times: LineTimes,
    time: Option<DateTime<Utc>>,
}

/// What [`Resume::classify`] says of a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// Archived already.
    Old,
    /// Not archived yet.
    New,
    /// Not archived yet, and lines written between these times may be missing before it (the
    /// anchor was rotated away).
    NewAfterGap {
        after: DateTime<Utc>,
        before: Option<DateTime<Utc>>,
    },
}

impl Resume {
    /// `anchor`: the last piece archived so far, with its line's time, if any.
    pub fn new(anchor: Option<Anchor>) -> Resume {
        let (anchor, anchor_time) = match anchor {
            Some(Anchor { piece, time }) => (Some(piece), time),
            None => (None, None),
        };
        Resume {
            found: anchor.is_none(),
            anchor,
            anchor_time,
            times: LineTimes::default(),
            time: None,
        }
    }

    /// The time to ask the kubelet to start at (`sinceTime`), if any: a second before the
    /// anchor, since the API rounds `sinceTime` to whole seconds.
    pub fn since(&self) -> Option<DateTime<Utc>> {
        self.anchor_time.map(|t| t - chrono::Duration::seconds(1))
    }

    /// The anchor was found in the stream (or a line after it arrived): what the stream holds
    /// provably goes on from the archive. False at the end of a stream means the anchor was
    /// rotated away and what followed it may be lost.
    pub fn placed(&self) -> bool {
        self.found
    }

    /// The time of the line of the piece classified last (see [`LineTimes`]).
    pub fn line_time(&self) -> Option<DateTime<Utc>> {
        self.time
    }

    /// The pieces of the stream, each once, in order.
    pub fn classify(&mut self, line: &[u8]) -> Seen {
        let time = self.times.next(line);
        self.time = time;
        if self.found {
            return Seen::New;
        }
        if self.anchor.as_deref() == Some(line) && time == self.anchor_time {
            self.found = true;
            return Seen::Old;
        }
        match (time, self.anchor_time) {
            (Some(time), Some(anchor)) if time <= anchor => Seen::Old,
            (time, Some(anchor)) => {
                self.found = true;
                Seen::NewAfterGap {
                    after: anchor,
                    before: time,
                }
            }
            // An anchor without a time cannot be placed: everything in the stream is taken as
            // new rather than lost.
            (_, None) => {
                self.found = true;
                Seen::New
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn borrowed_lines_are_what_a_fresh_splitter_makes() {
        let long = vec![b'x'; 2 * MAX_LINE + 10];
        let mut with_long = b"a\n".to_vec();
        with_long.extend_from_slice(&long);
        with_long.extend_from_slice(b"\nb\n\nc");
        let exact = [vec![b'y'; MAX_LINE], b"\n".to_vec()].concat();
        for data in [
            b"".to_vec(),
            b"\n".to_vec(),
            b"one\ntwo\n".to_vec(),
            b"no newline".to_vec(),
            with_long,
            exact,
        ] {
            let mut splitter = LineSplitter::default();
            let mut expected = splitter.push(&data);
            expected.extend(splitter.finish());
            let got: Vec<Vec<u8>> = lines(&data).map(<[u8]>::to_vec).collect();
            assert_eq!(got, expected);
        }
    }

    fn line(second: u32, text: &str) -> Vec<u8> {
        format!("2026-12-03T08:00:{second:02}.000000000Z {text}\n").into_bytes()
    }

    #[test]
    fn a_reopened_stream_goes_on_after_the_anchor() {
        let mut resume = Resume::new(Some(Anchor::line(line(2, "b"))));
        assert_eq!(resume.classify(&line(1, "a")), Seen::Old);
        assert_eq!(resume.classify(&line(2, "b")), Seen::Old);
        assert_eq!(
            resume.classify(&line(2, "c")),
            Seen::New,
            "same time, after the anchor"
        );
        assert_eq!(resume.classify(&line(3, "d")), Seen::New);
    }

    #[test]
    fn an_anchor_rotated_away_is_reported_as_a_gap_once() {
        let mut resume = Resume::new(Some(Anchor::line(line(2, "b"))));
        assert_eq!(
            resume.classify(&line(2, "x")),
            Seen::Old,
            "not provably new"
        );
        let gap = resume.classify(&line(5, "e"));
        assert!(matches!(gap, Seen::NewAfterGap { .. }), "{gap:?}");
        assert_eq!(resume.classify(&line(6, "f")), Seen::New);
    }

    #[test]
    fn a_stream_without_the_anchor_or_anything_newer_is_not_placed() {
        let mut resume = Resume::new(Some(Anchor::line(line(2, "b"))));
        assert_eq!(resume.classify(&line(1, "a")), Seen::Old);
        assert!(!resume.placed());
    }

    /// The pieces a stream cuts `lines` into.
    fn pieces(lines: &[Vec<u8>]) -> Vec<Vec<u8>> {
        let mut splitter = LineSplitter::default();
        let mut pieces = splitter.push(&lines.concat());
        pieces.extend(splitter.finish());
        pieces
    }

    /// The anchor the archive has after storing `stored`, its line's time found as the
    /// archiver finds it.
    fn anchor_after(stored: &[Vec<u8>]) -> Anchor {
        let mut times = LineTimes::default();
        let time = stored.iter().map(|p| times.next(p)).last().unwrap();
        Anchor {
            piece: stored.last().unwrap().clone(),
            time,
        }
    }

    #[test]
    fn a_stream_reopened_after_a_line_longer_than_max_line_goes_on_after_it_once() {
        let long = line(2, &"x".repeat(2 * MAX_LINE + 10));
        let stream = pieces(&[line(1, "a"), long, line(3, "after"), line(4, "more")]);
        assert_eq!(
            stream.len(),
            6,
            "a, three pieces of the long line, two more"
        );
        // Stored up to the long line's last piece, which carries no timestamp of its own.
        let anchor = anchor_after(&stream[..4]);
        assert!(split_timestamp(&anchor.piece).0.is_none());
        let mut resume = Resume::new(Some(anchor));
        assert_eq!(
            resume.since().unwrap(),
            split_timestamp(&stream[0]).0.unwrap(),
            "asks from a second before the long line's time"
        );
        let seen: Vec<Seen> = stream.iter().map(|p| resume.classify(p)).collect();
        assert_eq!(
            seen,
            [
                Seen::Old,
                Seen::Old,
                Seen::Old,
                Seen::Old,
                Seen::New,
                Seen::New
            ],
            "the archived pieces are old, the rest new, and no gap"
        );
        assert!(resume.placed());
    }

    #[test]
    fn a_stream_reopened_within_a_line_longer_than_max_line_goes_on_with_its_next_piece() {
        let long = line(2, &"y".repeat(3 * MAX_LINE));
        let stream = pieces(&[long, line(3, "after")]);
        let anchor = anchor_after(&stream[..2]);
        let mut resume = Resume::new(Some(anchor));
        let seen: Vec<Seen> = stream.iter().map(|p| resume.classify(p)).collect();
        assert_eq!(seen[..2], [Seen::Old, Seen::Old]);
        assert!(seen[2..].iter().all(|s| *s == Seen::New), "{seen:?}");
    }

    #[test]
    fn a_line_without_a_timestamp_does_not_take_the_time_of_the_line_before() {
        let mut times = LineTimes::default();
        assert!(times.next(&line(1, "a")).is_some());
        assert_eq!(
            times.next(b"[vfi-orchestrator] attempt 2 starts here\n"),
            None
        );
    }

    #[test]
    fn a_first_stream_is_all_new() {
        let mut resume = Resume::new(None);
        assert!(resume.since().is_none());
        assert_eq!(resume.classify(&line(1, "a")), Seen::New);
    }

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

    /// [`TextStart`] against [`split_timestamp`] (chrono) over first words near the kubelet's
    /// shape: every date, hour, minute and second edge, fractions of 0 to 10 digits, other
    /// offsets and separators, taken in an order that keeps the same date, hour and minute for
    /// runs of lines (what the cache remembers) with valid and invalid seconds mixed in.
    #[test]
    fn text_start_is_where_split_timestamp_puts_the_text() {
        let mut text_start = TextStart::default();
        let mut checked = 0;
        for year in ["2024", "2023", "2000", "1900"] {
            for month in ["00", "01", "02", "04", "12", "13", "1a"] {
                for day in ["00", "01", "28", "29", "30", "31", "32"] {
                    for hour in ["00", "23", "24", "99"] {
                        for minute in ["00", "59", "60"] {
                            for second in ["00", "59", "60", "5"] {
                                for fraction in ["", ".", ".1", ".123456789", ".1234567890"] {
                                    for zone in ["Z", "z", "+00:00", ""] {
                                        for sep in ["T", "t"] {
                                            let word = format!(
                                                "{year}-{month}-{day}{sep}{hour}:{minute}:{second}{fraction}{zone}"
                                            );
                                            for line in
                                                [format!("{word} text\n"), format!("{word}\n")]
                                            {
                                                let line = line.as_bytes();
                                                let expected =
                                                    line.len() - split_timestamp(line).1.len();
                                                assert_eq!(
                                                    text_start.of(line),
                                                    expected,
                                                    "{:?}",
                                                    String::from_utf8_lossy(line)
                                                );
                                                checked += 1;
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        assert!(checked > 100_000);
        let odd: &[&[u8]] = &[
            b"",
            b"\n",
            b" leading space\n",
            b"2026-12-03T08:00:00Z",
            b"2026-12-03T08:00:00.Z x\n",
            b"2026-12-03T08:00:00.123456789Z\xff\xfe x\n",
            b"\xff\xfe\xfd 2026-12-03T08:00:00Z x\n",
            b"2026-12-03T08:00:00.000000001Z2026-12-03T08:00:00Z x\n",
            b"2026-12-03 08:00:00Z x\n",
            b"2026-12-03T08:00:00Z ",
            b"2026-12-03T08:00:00Z0 x\n",
            b"0000-01-01T00:00:00Z x\n",
            b"9999-12-31T23:59:59.999999999Z x\n",
            b"2026-12-03T08:00:61Z x\n",
        ];
        for &line in odd {
            let expected = line.len() - split_timestamp(line).1.len();
            assert_eq!(TextStart::default().of(line), expected, "{line:?}");
        }
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
