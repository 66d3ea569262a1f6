//! `vfi-orchestrator dev`, as a user starts it: the built binary with its own data folder and a
//! free port, a local PostgreSQL and kubesim with the host runner.

use reqwest::StatusCode;
use serde_json::{json, Value};
use std::os::unix::fs::PermissionsExt;
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
        let mut command = Command::new(env!("CARGO_BIN_EXE_vfi-orchestrator"));
        command.args(["dev", "--data-dir"]).arg(data);
        Dev::spawn(command, data, port, name).await
    }

    /// Runs `command` (a `dev` command line) on `port`, its output in files in `files`.
    async fn spawn(mut command: Command, files: &Path, port: u16, name: &str) -> Dev {
        let out = files.join(format!("{name}.out"));
        let log = files.join(format!("{name}.log"));
        let child = command
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .env_remove("DATABASE_URL")
            .env_remove("DEV_DATA_DIR")
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

    /// Starts an ad-hoc run of `template`; returns its id.
    async fn submit(&self, template: Value) -> String {
        let response = reqwest::Client::new()
            .post(format!("{}/v1/runs", self.base))
            .json(&json!({ "template": template }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        let run: Value = response.json().await.unwrap();
        run["id"].as_str().unwrap().to_string()
    }

    /// Waits for run `id` to succeed; fails when it ends otherwise or takes longer.
    async fn wait_succeeded(&self, id: &str, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let run = run_status(&self.base, id).await;
            if run["status"] == "succeeded" {
                return;
            }
            assert!(
                !matches!(
                    run["status"].as_str(),
                    Some("failed" | "cancelled" | "lost")
                ),
                "{run}\n{}",
                self.output()
            );
            assert!(
                tokio::time::Instant::now() < deadline,
                "{run}\n{}",
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
    let id = dev
        .submit(json!({"image": "busybox", "command": ["sh", "-c", "echo hello from dev"]}))
        .await;
    dev.wait_succeeded(&id, Duration::from_secs(20)).await;
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

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|output| String::from_utf8_lossy(&output.stdout).trim() == "0")
}

/// The README's first command as a new user runs it: `dev` from a clone inside a mode-700 home
/// folder, as root where the test runs as root (CI, containers), so that PostgreSQL (which
/// runs as `postgres`) cannot reach the clone's `.dev` folder.
#[tokio::test]
async fn dev_mode_as_root_inside_a_private_home_folder_runs_calculatepi() {
    let home = std::env::temp_dir().join(format!("vfi-home-{}", uuid::Uuid::new_v4().simple()));
    let clone = home.join("vfi-orchestrator");
    std::fs::create_dir_all(&clone).unwrap();
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).unwrap();
    let files = home.join("output");
    std::fs::create_dir_all(&files).unwrap();
    println!("as root: {}", running_as_root());

    let mut command = Command::new(env!("CARGO_BIN_EXE_vfi-orchestrator"));
    command.arg("dev").current_dir(&clone);
    let dev = Dev::spawn(command, &files, free_port(), "dev").await;
    let id = dev
        .submit(json!({
            "image": "perl:5.34.0",
            "command": ["perl", "-Mbignum=bpi", "-wle", "print bpi(2000)"],
        }))
        .await;
    dev.wait_succeeded(&id, Duration::from_secs(60)).await;
    let log = reqwest::get(format!("{}/v1/runs/{id}/logs", dev.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let output = dev.stop().await;
    // Where PostgreSQL's data went: the banner says.
    let data = output
        .lines()
        .find_map(|line| line.trim().strip_prefix("data in "))
        .map(PathBuf::from)
        .expect("the banner names the data folder");
    if data.starts_with(&home) {
        assert!(
            !running_as_root(),
            "as root, the data is outside the private home folder"
        );
    } else {
        std::fs::remove_dir_all(data.parent().unwrap()).ok();
    }
    std::fs::remove_dir_all(&home).ok();
    assert!(log.starts_with("3.14159265358979"), "{log}");
    assert!(
        !output.contains('\u{1b}'),
        "log lines written to a file carry no terminal colour codes:\n{output}"
    );
}
