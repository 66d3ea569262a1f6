//! `vfi-orchestrator dev`, as a user starts it: the built binary with its own data folder and a
//! free port, a local PostgreSQL and kubesim with the host runner.

use reqwest::StatusCode;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct Dev {
    child: Child,
    base: String,
    log: PathBuf,
    out: PathBuf,
}

impl Dev {
    async fn start(data: &Path, port: u16, name: &str) -> Dev {
        // Inside the data folder, so the test's clean-up removes them too.
        std::fs::create_dir_all(data).unwrap();
        let out = data.join(format!("{name}.out"));
        let log = data.join(format!("{name}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_vfi-orchestrator"))
            .args(["dev", "--data-dir"])
            .arg(data)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .env_remove("DATABASE_URL")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("the binary starts");
        let mut dev = Dev {
            child,
            base: format!("http://127.0.0.1:{port}"),
            log,
            out,
        };
        dev.wait_ready().await;
        dev
    }

    fn output(&self) -> String {
        format!(
            "stdout:\n{}\nstderr:\n{}",
            std::fs::read_to_string(&self.out).unwrap_or_default(),
            std::fs::read_to_string(&self.log).unwrap_or_default()
        )
    }

    async fn wait_ready(&mut self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "dev exited with {status} before it was ready\n{}",
                    self.output()
                );
            }
            if let Ok(response) = reqwest::get(format!("{}/readyz", self.base)).await {
                if response.status() == StatusCode::OK {
                    return;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "dev not ready within 30 s\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops dev as Ctrl-C would (SIGINT) and waits for it to exit.
    async fn stop(mut self) -> String {
        let killed = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "dev did not stop within 20 s\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(
            status.success(),
            "dev exited with {status}\n{}",
            self.output()
        );
        self.output()
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn run_status(base: &str, id: &str) -> Value {
    reqwest::get(format!("{base}/v1/runs/{id}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn dev_mode_runs_commands_on_this_machine_stops_cleanly_and_reuses_its_data() {
    let data = std::env::temp_dir().join(format!("vfi-dev-test-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&data).unwrap();
    let port = free_port();

    let dev = Dev::start(&data, port, "first").await;
    let response = reqwest::Client::new()
        .post(format!("{}/v1/runs", dev.base))
        .json(&json!({"template": {"image": "busybox", "command": ["sh", "-c", "echo hello from dev"]}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let id = response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let run = run_status(&dev.base, &id).await;
        if run["status"] == "succeeded" {
            break;
        }
        assert!(
            !matches!(
                run["status"].as_str(),
                Some("failed" | "cancelled" | "lost")
            ),
            "{run}"
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "{run}\n{}",
            dev.output()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let first = dev.stop().await;
    assert!(first.contains("NO AUTHENTICATION"), "{first}");
    assert!(
        first.contains(&format!("curl -s -X POST http://127.0.0.1:{port}/v1/runs")),
        "{first}"
    );
    assert!(first.contains("/logs"), "{first}");
    assert!(
        !data.join("postgres/postmaster.pid").exists(),
        "PostgreSQL was stopped\n{first}"
    );
    assert!(data.join("kubeconfig").exists());

    let dev = Dev::start(&data, port, "second").await;
    let run = run_status(&dev.base, &id).await;
    let second = dev.stop().await;
    std::fs::remove_dir_all(&data).ok();
    assert_eq!(run["status"], "succeeded", "the first run is still there");
    assert!(second.contains("reusing the PostgreSQL data"), "{second}");
}
