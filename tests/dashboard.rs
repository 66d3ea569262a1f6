//! The dashboard in a real headless browser (Debian's chromium, driven through chromedriver):
//! start the calculatepi run from it and watch it succeed, with the service and kubesim (host
//! runner) in-process. Saves a screenshot under `test-artifacts/`.

mod common;

use common::service::{kubesim, RunnerKind, Service};
use fantoccini::{ClientBuilder, Locator};
use sqlx::PgPool;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// chromedriver on a free port, killed on drop.
struct ChromeDriver {
    child: Child,
    url: String,
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn find(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |name| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

impl ChromeDriver {
    async fn start() -> Result<ChromeDriver, String> {
        let driver = find(&["chromedriver"])
            .ok_or("chromedriver not found on PATH (apt-get install chromium-driver)")?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .map_err(|e| e.to_string())?
            .local_addr()
            .map_err(|e| e.to_string())?
            .port();
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("chromedriver does not start: {e}"))?;
        let driver = ChromeDriver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(response) = reqwest::get(format!("{}/status", driver.url)).await {
                if response.status().is_success() {
                    return Ok(driver);
                }
            }
            if tokio::time::Instant::now() > deadline {
                return Err("chromedriver did not answer within 10 s".into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn artifact(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn dashboard_starts_calculatepi_and_shows_it_succeed_in_the_runs_list(db: PgPool) {
    let Some(chromium) = find(&["chromium", "chromium-browser", "google-chrome"]) else {
        println!("SKIPPED: no chromium on PATH (apt-get install chromium chromium-driver)");
        return;
    };
    let driver = match ChromeDriver::start().await {
        Ok(driver) => driver,
        Err(reason) => {
            println!("SKIPPED: {reason}");
            return;
        }
    };
    let sim = kubesim(RunnerKind::Host).await;
    // The browser has no token: the dashboard runs against a service with authentication off,
    // as in dev mode (token entry is for installations with it on).
    let service = Service::start(db, sim.client(), &["--auth-disabled"]).await;
    let profile =
        std::env::temp_dir().join(format!("vfi-chromium-{}", uuid::Uuid::new_v4().simple()));
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": chromium,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--window-size=1280,900",
                format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    let browser =
        match ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&driver.url)
            .await
        {
            Ok(browser) => browser,
            Err(error) => {
                println!("SKIPPED: chromium does not start under chromedriver: {error}");
                return;
            }
        };

    browser.goto(&service.url("/")).await.unwrap();
    browser
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("#live.on"))
        .await
        .expect("the dashboard follows /v1/events");
    browser
        .find(Locator::Css("#new-run summary"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser
        .find(Locator::Id("start-run"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let row = browser
        .wait()
        .at_most(Duration::from_secs(60))
        .for_element(Locator::Css("#runs tr[data-status='succeeded']"))
        .await
        .expect("the run shows up as succeeded in the runs list, without a reload");
    let id = row
        .attr("data-run-id")
        .await
        .unwrap()
        .expect("rows carry the run id");
    let text = row.text().await.unwrap();
    let screenshot = browser.screenshot().await.unwrap();
    let path = artifact("dashboard-calculatepi.png");
    std::fs::write(&path, &screenshot).unwrap();
    println!("screenshot: {}", path.display());
    browser.close().await.unwrap();
    std::fs::remove_dir_all(&profile).ok();

    let run = service.run(&id).await;
    assert_eq!(run["status"], "succeeded");
    assert_eq!(
        run["template"]["image"], "perl:5.34.0",
        "it was the calculatepi run"
    );
    assert!(text.contains("ad hoc #1"), "{text}");
    assert!(screenshot.starts_with(b"\x89PNG"));
}
