//! The host runner (opt-in): really executes a container's `command` + `args` on this machine,
//! ignoring the image. The environment is the host's plus the container's `env` (so `PATH`
//! still finds host tools); `workingDir` is used when it exists. stdout and stderr are captured
//! line by line, interleaved in arrival order, as the container log; the exit status is the
//! container's exit code. A kill sends SIGTERM to the process group, then SIGKILL after the
//! grace period.

use std::process::Stdio;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_util::sync::CancellationToken;

use super::runner::{RunOutcome, RunSpec, Runner};
use crate::logs::LogBuf;

/// Lines longer than this are split, like the kubelet's 16 KiB CRI log lines.
const MAX_LINE: usize = 16 * 1024;

#[derive(Debug, Default, Clone, Copy)]
pub struct HostRunner;

async fn pump(mut r: impl AsyncRead + Unpin, log: Arc<LogBuf>) {
    let mut buf = vec![0u8; 8192];
    let mut line = BytesMut::new();
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut rest = &buf[..n];
        while !rest.is_empty() {
            let room = MAX_LINE - line.len();
            let take = match rest.iter().take(room).position(|&b| b == b'\n') {
                Some(i) => i + 1,
                None => rest.len().min(room),
            };
            line.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if line.ends_with(b"\n") || line.len() >= MAX_LINE {
                log.push_line(line.split().freeze());
            }
        }
    }
    if !line.is_empty() {
        log.push_line(line.freeze());
    }
}

fn signal_group(pid: u32, sig: i32) {
    // SAFETY: kill(2) with a negative pid signals the process group we created for the child;
    // it has no memory-safety preconditions.
    unsafe {
        libc::kill(-(pid as i32), sig);
    }
}

impl Runner for HostRunner {
    fn run(
        &self,
        spec: RunSpec,
        log: Arc<LogBuf>,
        kill: CancellationToken,
    ) -> BoxFuture<'static, RunOutcome> {
        Box::pin(async move {
            let mut argv: Vec<String> = spec.container.command.clone().unwrap_or_default();
            argv.extend(spec.container.args.clone().unwrap_or_default());
            let Some((prog, rest)) = argv.split_first() else {
                log.push_line(Bytes::from_static(
                    b"kubesim host runner: container has no command or args to run\n",
                ));
                return RunOutcome {
                    exit_code: 128,
                    reason: Some("StartError".into()),
                    message: Some("no command specified".into()),
                };
            };
            let mut cmd = tokio::process::Command::new(prog);
            cmd.args(rest)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .process_group(0)
                .kill_on_drop(true);
            for (k, v) in &spec.env {
                cmd.env(k, v);
            }
            if let Some(wd) = spec.container.working_dir.as_deref() {
                if std::path::Path::new(wd).is_dir() {
                    cmd.current_dir(wd);
                }
            }
            let mut child = match cmd.spawn() {
                Ok(c) => c,
                Err(e) => {
                    log.push_line(Bytes::from(format!(
                        "kubesim host runner: exec {prog}: {e}\n"
                    )));
                    return RunOutcome {
                        exit_code: 128,
                        reason: Some("StartError".into()),
                        message: Some(format!("exec {prog}: {e}")),
                    };
                }
            };
            let pid = child.id().unwrap_or(0);
            let out = child
                .stdout
                .take()
                .map(|s| tokio::spawn(pump(s, log.clone())));
            let err = child
                .stderr
                .take()
                .map(|s| tokio::spawn(pump(s, log.clone())));
            let status = tokio::select! {
                s = child.wait() => s,
                _ = kill.cancelled() => {
                    signal_group(pid, libc::SIGTERM);
                    match tokio::time::timeout(spec.grace, child.wait()).await {
                        Ok(s) => s,
                        Err(_) => {
                            signal_group(pid, libc::SIGKILL);
                            child.wait().await
                        }
                    }
                }
            };
            for h in [out, err].into_iter().flatten() {
                let _ = h.await;
            }
            use std::os::unix::process::ExitStatusExt;
            let code = match status {
                Ok(s) => s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(9)),
                Err(_) => 128,
            };
            RunOutcome::exited(code)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn spec(cmd: &[&str]) -> RunSpec {
        RunSpec {
            namespace: "default".into(),
            pod_name: "p".into(),
            container: k8s_openapi::api::core::v1::Container {
                name: "c".into(),
                command: Some(cmd.iter().map(|s| s.to_string()).collect()),
                ..Default::default()
            },
            env: vec![("GREETING".into(), "hi".into())],
            completion_index: None,
            attempt: 0,
            grace: Duration::from_millis(200),
        }
    }

    #[tokio::test]
    async fn host_runner_captures_output_env_and_exit_code() {
        let log = Arc::new(LogBuf::default());
        let out = HostRunner
            .run(
                spec(&["sh", "-c", "echo $GREETING; printf tail; exit 3"]),
                log.clone(),
                CancellationToken::new(),
            )
            .await;
        assert_eq!(out.exit_code, 3);
        assert_eq!(log.snapshot(), b"hi\ntail");
    }

    #[tokio::test]
    async fn long_lines_are_split_at_16_kib_and_bytes_are_preserved() {
        let log = Arc::new(LogBuf::default());
        let out = HostRunner
            .run(
                spec(&[
                    "sh",
                    "-c",
                    "head -c 40000 /dev/zero | tr '\\0' a; echo; echo tail",
                ]),
                log.clone(),
                CancellationToken::new(),
            )
            .await;
        assert_eq!(out.exit_code, 0);
        let mut want = vec![b'a'; 40000];
        want.extend_from_slice(b"\ntail\n");
        assert_eq!(log.snapshot(), want);
    }

    #[tokio::test]
    async fn killed_host_process_reports_a_signal_exit() {
        let log = Arc::new(LogBuf::default());
        let kill = CancellationToken::new();
        let run = HostRunner.run(spec(&["sleep", "30"]), log, kill.clone());
        kill.cancel();
        let out = tokio::time::timeout(Duration::from_secs(5), run)
            .await
            .unwrap();
        assert_eq!(out.exit_code, 143);
    }
}
