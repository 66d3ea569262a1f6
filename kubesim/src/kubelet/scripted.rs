//! The scripted runner (the default, for tests): a container's behaviour is decided
//! deterministically by environment variables of the container, so a Job manifest is its own
//! test script. Nothing is executed on the host.
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `KUBESIM_DURATION_MS` | 50 | how long the container runs |
//! | `KUBESIM_EXIT_CODE` | 0 | its exit code |
//! | `KUBESIM_LOG` | `kubesim: <pod> ran` | text written to the log (a newline is added if missing) |
//! | `KUBESIM_LOG_LINES` / `KUBESIM_LOG_INTERVAL_MS` | - / 10 | write `line 1` .. `line N`, one per interval |
//! | `KUBESIM_LOG_BYTES` | - | write that many bytes of generated 64-byte lines (not stored in memory) |
//! | `KUBESIM_FAIL_INDEXES` | - | comma list of completion indexes that exit 1 |
//! | `KUBESIM_FAIL_ATTEMPTS` | 0 | the first N containers started for the Job exit 1 |
//! | `KUBESIM_TERMINATION_REASON` | - | terminated reason, e.g. `OOMKilled` (exit 137 unless `KUBESIM_EXIT_CODE` is set) |
//!
//! The default log line is written only when none of `KUBESIM_LOG`, `KUBESIM_LOG_LINES`,
//! `KUBESIM_LOG_BYTES` is set. The container runs for max(duration, lines x interval).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use super::runner::{RunOutcome, RunSpec, Runner};
use crate::logs::LogBuf;

#[derive(Debug, Default, Clone, Copy)]
pub struct ScriptedRunner;

/// What a scripted container will do, parsed from its env.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script {
    pub duration: Duration,
    pub outcome: RunOutcome,
    pub log_text: Option<String>,
    pub log_lines: u64,
    pub log_interval: Duration,
    pub log_bytes: u64,
}

fn num<T: std::str::FromStr>(spec: &RunSpec, key: &str) -> Option<T> {
    spec.env(key).and_then(|v| v.trim().parse().ok())
}

impl Script {
    pub fn from_spec(spec: &RunSpec) -> Script {
        let explicit_code: Option<i32> = num(spec, "KUBESIM_EXIT_CODE");
        let reason = spec
            .env("KUBESIM_TERMINATION_REASON")
            .filter(|r| !r.is_empty())
            .map(str::to_string);
        let mut code = explicit_code.unwrap_or(0);
        if let (Some(idx), Some(list)) = (spec.completion_index, spec.env("KUBESIM_FAIL_INDEXES")) {
            if list
                .split(',')
                .any(|x| x.trim().parse::<u32>().ok() == Some(idx))
            {
                code = 1;
            }
        }
        let fail_attempts: u32 = num(spec, "KUBESIM_FAIL_ATTEMPTS").unwrap_or(0);
        if spec.attempt < fail_attempts && code == 0 {
            code = 1;
        }
        if reason.is_some() && explicit_code.is_none() {
            code = if reason.as_deref() == Some("OOMKilled") {
                137
            } else {
                1
            };
        }
        let log_text = spec.env("KUBESIM_LOG").map(str::to_string);
        let log_lines = num(spec, "KUBESIM_LOG_LINES").unwrap_or(0);
        let log_bytes = num(spec, "KUBESIM_LOG_BYTES").unwrap_or(0);
        let log_text = if log_text.is_none() && log_lines == 0 && log_bytes == 0 {
            Some(format!("kubesim: {} ran", spec.pod_name))
        } else {
            log_text
        };
        Script {
            duration: Duration::from_millis(num(spec, "KUBESIM_DURATION_MS").unwrap_or(50)),
            outcome: RunOutcome {
                exit_code: code,
                reason: if code != 0 { reason } else { None },
                message: None,
            },
            log_text,
            log_lines,
            log_interval: Duration::from_millis(num(spec, "KUBESIM_LOG_INTERVAL_MS").unwrap_or(10)),
            log_bytes,
        }
    }
}

impl Runner for ScriptedRunner {
    fn run(
        &self,
        spec: RunSpec,
        log: Arc<LogBuf>,
        kill: CancellationToken,
    ) -> BoxFuture<'static, RunOutcome> {
        Box::pin(async move {
            let script = Script::from_spec(&spec);
            let started = tokio::time::Instant::now();
            let work = async {
                if let Some(text) = script.log_text.as_deref().filter(|t| !t.is_empty()) {
                    let mut text = text.to_string();
                    if !text.ends_with('\n') {
                        text.push('\n');
                    }
                    for line in text.split_inclusive('\n') {
                        log.push_line(Bytes::from(line.to_string()));
                    }
                }
                if script.log_bytes > 0 {
                    log.push_generated(script.log_bytes);
                }
                for i in 1..=script.log_lines {
                    log.push_line(Bytes::from(format!("line {i}\n")));
                    if i < script.log_lines {
                        tokio::time::sleep(script.log_interval).await;
                    }
                }
                tokio::time::sleep_until(started + script.duration).await;
            };
            tokio::select! {
                _ = work => script.outcome.clone(),
                _ = kill.cancelled() => RunOutcome::exited(137),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(env: &[(&str, &str)], index: Option<u32>, attempt: u32) -> RunSpec {
        RunSpec {
            namespace: "default".into(),
            pod_name: "p".into(),
            container: Default::default(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            completion_index: index,
            attempt,
            grace: Duration::from_secs(1),
        }
    }

    #[test]
    fn fail_indexes_and_fail_attempts_decide_the_exit_code() {
        let s = |env, i, a| Script::from_spec(&spec(env, i, a)).outcome.exit_code;
        assert_eq!(s(&[], None, 0), 0);
        assert_eq!(s(&[("KUBESIM_FAIL_INDEXES", "1,3")], Some(3), 0), 1);
        assert_eq!(s(&[("KUBESIM_FAIL_INDEXES", "1,3")], Some(2), 0), 0);
        assert_eq!(s(&[("KUBESIM_FAIL_ATTEMPTS", "2")], None, 1), 1);
        assert_eq!(s(&[("KUBESIM_FAIL_ATTEMPTS", "2")], None, 2), 0);
        assert_eq!(
            s(&[("KUBESIM_TERMINATION_REASON", "OOMKilled")], None, 0),
            137
        );
    }

    #[tokio::test]
    async fn default_script_logs_one_line_and_succeeds() {
        let log = Arc::new(LogBuf::default());
        let out = ScriptedRunner
            .run(
                spec(&[("KUBESIM_DURATION_MS", "1")], None, 0),
                log.clone(),
                CancellationToken::new(),
            )
            .await;
        assert_eq!(out.exit_code, 0);
        assert_eq!(log.snapshot(), b"kubesim: p ran\n");
    }
}
