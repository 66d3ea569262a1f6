//! A run's log over Server-Sent Events, printed as the plain-text log would be: each line as
//! written, and `==> pod <name> (index <i>) <==` before each pod's lines when there are several.
//! A dropped or cut connection is resumed with `Last-Event-ID` (the id of the last line printed),
//! so nothing is missed and nothing is printed twice: an event is printed only once it is
//! complete, and a partial event at a cut is dropped and sent again after it.

use crate::api::Api;
use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde::Deserialize;
use std::io::Write;
use std::time::Duration;

/// Reconnections in a row without a new line before giving up.
const MAX_RECONNECTS: u32 = 10;

pub struct LogRequest {
    pub run: String,
    pub follow: bool,
    pub pod: Option<String>,
    pub index: Option<i32>,
    pub timestamps: bool,
    /// Print a header before the first pod too (the run has several).
    pub several: bool,
}

#[derive(Deserialize)]
struct LogLine {
    pod: String,
    index: Option<i32>,
    time: Option<chrono::DateTime<chrono::Utc>>,
    text: String,
}

#[derive(Deserialize)]
struct Note {
    text: String,
}

/// Where the printing stands, kept across reconnections.
#[derive(Default)]
pub struct Printer {
    pod: Option<String>,
    pods_seen: usize,
}

impl Printer {
    fn line(&mut self, out: &mut impl Write, line: &LogLine, several: bool) -> std::io::Result<()> {
        if self.pod.as_deref() != Some(&line.pod) {
            self.pod = Some(line.pod.clone());
            self.pods_seen += 1;
            if several || self.pods_seen > 1 {
                let index = line
                    .index
                    .map(|i| format!(" (index {i})"))
                    .unwrap_or_default();
                writeln!(out, "==> pod {}{index} <==", line.pod)?;
            }
        }
        if let Some(time) = line.time {
            write!(
                out,
                "{} ",
                time.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
            )?;
        }
        writeln!(out, "{}", line.text)
    }
}

/// Prints the log to `out` until its `end` event. Notes of the service go to stderr.
pub async fn print(
    api: &Api,
    request: &LogRequest,
    printer: &mut Printer,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let path = format!("/v1/runs/{}/logs", request.run);
    let mut query = vec![("follow", request.follow.to_string())];
    if let Some(pod) = &request.pod {
        query.push(("pod", pod.clone()));
    }
    if let Some(index) = request.index {
        query.push(("index", index.to_string()));
    }
    if request.timestamps {
        query.push(("timestamps", "true".into()));
    }
    let mut last_id: Option<String> = None;
    let mut failures = 0u32;
    loop {
        let why = match api.open_stream(&path, &query, last_id.as_deref()).await {
            Err(error) if !Api::stream_retryable(&error) => return Err(error.into()),
            Err(error) => error.to_string(),
            Ok(response) => {
                let mut events = response.bytes_stream().eventsource();
                let mut why = "the stream ended before the log did".to_string();
                while let Some(event) = events.next().await {
                    let event = match event {
                        Ok(event) => event,
                        Err(error) => {
                            why = error.to_string();
                            break;
                        }
                    };
                    match event.event.as_str() {
                        "log" => {
                            let line: LogLine = serde_json::from_str(&event.data)?;
                            printer.line(out, &line, request.several)?;
                            if !event.id.is_empty() {
                                last_id = Some(event.id);
                            }
                            failures = 0;
                        }
                        "note" => {
                            out.flush()?;
                            if let Ok(note) = serde_json::from_str::<Note>(&event.data) {
                                eprintln!("[vfi-orchestrator] {}", note.text);
                            }
                        }
                        "end" => {
                            out.flush()?;
                            return Ok(());
                        }
                        "error" => {
                            why = format!("the service: {}", event.data);
                            break;
                        }
                        _ => {}
                    }
                }
                why
            }
        };
        out.flush()?;
        failures += 1;
        if failures > MAX_RECONNECTS {
            anyhow::bail!(
                "giving up on the log of run {} after {MAX_RECONNECTS} reconnections: {why}",
                request.run
            );
        }
        // 200 ms, doubling, at most 5 s; progress resets it.
        let delay =
            Duration::from_millis(200 * (1 << (failures - 1).min(5))).min(Duration::from_secs(5));
        eprintln!("vfi: log stream interrupted ({why}); resuming in {delay:?}");
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(pod: &str, index: Option<i32>, text: &str) -> LogLine {
        LogLine {
            pod: pod.into(),
            index,
            time: None,
            text: text.into(),
        }
    }

    #[test]
    fn one_pod_prints_its_lines_as_they_are() {
        let mut out = Vec::new();
        let mut printer = Printer::default();
        for text in ["a", "", "b"] {
            printer
                .line(&mut out, &line("p", None, text), false)
                .unwrap();
        }
        assert_eq!(String::from_utf8(out).unwrap(), "a\n\nb\n");
    }

    #[test]
    fn several_pods_get_headers_as_the_plain_text_log_has_them() {
        let mut out = Vec::new();
        let mut printer = Printer::default();
        printer
            .line(&mut out, &line("p-0", Some(0), "x"), true)
            .unwrap();
        printer
            .line(&mut out, &line("p-0", Some(0), "y"), true)
            .unwrap();
        printer
            .line(&mut out, &line("p-1", Some(1), "z"), true)
            .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "==> pod p-0 (index 0) <==\nx\ny\n==> pod p-1 (index 1) <==\nz\n"
        );
    }

    #[test]
    fn a_second_pod_of_a_one_pod_run_gets_a_header_from_the_second_on() {
        let mut out = Vec::new();
        let mut printer = Printer::default();
        printer
            .line(&mut out, &line("first", None, "1"), false)
            .unwrap();
        printer
            .line(&mut out, &line("retry", None, "2"), false)
            .unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "1\n==> pod retry <==\n2\n");
    }

    #[test]
    fn timestamps_are_printed_with_nanoseconds_as_the_service_prints_them() {
        let mut out = Vec::new();
        let mut with_time = line("p", None, "t");
        with_time.time = Some("2026-12-03T17:00:00.5Z".parse().unwrap());
        Printer::default()
            .line(&mut out, &with_time, false)
            .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "2026-12-03T17:00:00.500000000Z t\n"
        );
    }
}
