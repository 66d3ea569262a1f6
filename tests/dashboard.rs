//! The dashboard in a real headless browser (Debian's chromium, driven through chromedriver):
//! start the calculatepi run from it and watch it succeed, with the service and kubesim (host
//! runner) in-process; and with authentication on, enter a token and see the runs. Saves
//! screenshots under `test-artifacts/`. Without chromium these tests fail (`scripts/test`
//! installs it): a skipped browser test must not count as a pass.

mod common;

use common::service::{kubesim, RunnerKind, Service};
use fantoccini::{Client, ClientBuilder, Locator};
use sqlx::PgPool;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use vfi_orchestrator::domain::Scope;

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

/// A headless chromium under chromedriver, with its own profile folder.
struct Browser {
    client: Client,
    profile: PathBuf,
    _driver: ChromeDriver,
}

impl Browser {
    async fn open() -> Browser {
        let chromium = find(&["chromium", "chromium-browser", "google-chrome"])
            .expect("no chromium on PATH (apt-get install chromium chromium-driver)");
        let driver = ChromeDriver::start().await.unwrap();
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
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&driver.url)
            .await
            .expect("chromium starts under chromedriver");
        Browser {
            client,
            profile,
            _driver: driver,
        }
    }

    /// Saves a screenshot under `test-artifacts/`, closes the browser, returns the PNG.
    async fn close(self, screenshot: &str) -> Vec<u8> {
        let png = self.client.screenshot().await.unwrap();
        let path = artifact(screenshot);
        std::fs::write(&path, &png).unwrap();
        println!("screenshot: {}", path.display());
        self.client.close().await.unwrap();
        std::fs::remove_dir_all(&self.profile).ok();
        png
    }
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn dashboard_starts_calculatepi_and_shows_it_succeed_in_the_runs_list(db: PgPool) {
    let sim = kubesim(RunnerKind::Host).await;
    // Authentication off, as in dev mode (the next test has it on).
    let service = Service::start(db, sim.client(), &["--auth-disabled"]).await;
    let browser = Browser::open().await;
    let page = &browser.client;

    page.goto(&service.url("/")).await.unwrap();
    page.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("#live.on"))
        .await
        .expect("the dashboard follows /v1/events");
    page.find(Locator::Css("#new-run summary"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    page.find(Locator::Id("start-run"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let row = page
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
    let screenshot = browser.close("dashboard-calculatepi.png").await;

    let run = service.run(&id).await;
    assert_eq!(run["status"], "succeeded");
    assert_eq!(
        run["template"]["image"], "perl:5.34.0",
        "it was the calculatepi run"
    );
    assert!(text.contains("ad hoc #1"), "{text}");
    assert!(screenshot.starts_with(b"\x89PNG"));
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn with_authentication_on_the_dashboard_asks_for_a_token_and_then_shows_the_runs(db: PgPool) {
    let sim = kubesim(RunnerKind::Scripted).await;
    let service = Service::start(db.clone(), sim.client(), &[]).await;
    let id = service.submit(common::calculatepi()).await;
    let token = common::new_token(&db, Scope::Read, None).await;
    let browser = Browser::open().await;
    let page = &browser.client;

    // The shell loads without a token, and asks for one.
    page.goto(&service.url("/")).await.unwrap();
    page.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("#token-form.needed"))
        .await
        .expect("the dashboard asks for a token");
    let said = page.find(Locator::Id("message")).await.unwrap();
    assert!(
        said.text().await.unwrap().contains("token"),
        "it says why it needs one"
    );
    assert!(
        page.find_all(Locator::Css("#runs tr[data-run-id]"))
            .await
            .unwrap()
            .is_empty(),
        "no runs without a token"
    );

    page.find(Locator::Id("token"))
        .await
        .unwrap()
        .send_keys(&token)
        .await
        .unwrap();
    page.find(Locator::Css("#token-form button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    page.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css(&format!("#runs tr[data-run-id='{id}']")))
        .await
        .expect("with the token, the runs list shows the run");
    page.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("#live.on"))
        .await
        .expect("and live updates authenticate with it too");
    let stored: serde_json::Value = page
        .execute("return sessionStorage.getItem('vfi-token')", vec![])
        .await
        .unwrap();
    assert_eq!(stored, serde_json::Value::String(token.clone()));
    let kept: serde_json::Value = page
        .execute("return localStorage.getItem('vfi-token')", vec![])
        .await
        .unwrap();
    assert_eq!(kept, serde_json::Value::Null, "the token outlives no tab");
    browser.close("dashboard-auth.png").await;
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_tasks_start_form_is_generated_from_its_parameters_and_masks_secrets(db: PgPool) {
    let sim = kubesim(RunnerKind::Host).await;
    let service = Service::start(db, sim.client(), &["--auth-disabled"]).await;
    let spec = serde_json::json!({
        "template": {"image": "busybox", "command": ["true"]},
        "parameters": [
            {"name": "target", "type": "enum", "enum": ["staging", "dev"], "default": "staging"},
            {"name": "dry_run", "type": "boolean"},
            {"name": "replicas", "type": "integer", "minimum": 1, "default": 2},
            {"name": "token", "type": "secret", "required": true}
        ]
    });
    let put = service
        .http
        .put(service.url("/v1/tasks/deploy"))
        .json(&spec)
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success());
    let browser = Browser::open().await;
    let page = &browser.client;

    page.goto(&service.url("/#/tasks/deploy")).await.unwrap();
    let form = page
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("#start-form"))
        .await
        .expect("a task with parameters gets a start form");
    let kinds = [
        ("#param-target", "select"),
        ("#param-dry_run", "input"),
        ("#param-replicas", "input"),
        ("#param-token", "input"),
    ];
    for (css, tag) in kinds {
        let field = form.find(Locator::Css(css)).await.unwrap();
        assert_eq!(field.tag_name().await.unwrap(), tag, "{css}");
    }
    for (css, kind) in [
        ("#param-dry_run", "checkbox"),
        ("#param-replicas", "number"),
        ("#param-token", "password"),
    ] {
        let field = form.find(Locator::Css(css)).await.unwrap();
        assert_eq!(
            field.attr("type").await.unwrap().as_deref(),
            Some(kind),
            "{css}"
        );
    }

    form.find(Locator::XPath(
        "//select[@id='param-target']/option[text()='dev']",
    ))
    .await
    .unwrap()
    .click()
    .await
    .unwrap();
    form.find(Locator::Css("#param-dry_run"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    form.find(Locator::Css("#param-token"))
        .await
        .unwrap()
        .send_keys("hunter2-xyz")
        .await
        .unwrap();
    form.find(Locator::Id("start-task-run"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let shown = page
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("#params"))
        .await
        .expect("the run page shows its parameters");
    let text = shown.text().await.unwrap();
    let url = page.current_url().await.unwrap();
    browser.close("dashboard-parameters.png").await;

    assert_eq!(text, "dry_run=true, replicas=2, target=dev, token=***");
    let id = url
        .fragment()
        .unwrap()
        .trim_start_matches("/runs/")
        .to_string();
    let run = service.run(&id).await;
    assert_eq!(
        run["params"],
        serde_json::json!({"dry_run": true, "replicas": 2, "target": "dev", "token": "***"})
    );
}

/// Why-waiting in the dashboard's runs list: a waiting run's row says its place and reason
/// (`#2 ConcurrencyLimit`), and when a run ahead of it leaves the key's queue the row moves up
/// (`#1`) without a reload, from the `queue.moved` event.
#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn the_runs_list_shows_a_waiting_runs_place_and_moves_it_up_live(db: PgPool) {
    let sim = kubesim(RunnerKind::Scripted).await;
    let service = Service::start(db, sim.client(), &["--auth-disabled"]).await;
    let response = service
        .http
        .put(service.url("/v1/tasks/held"))
        .json(&serde_json::json!({
            "template": {"image": "busybox", "env": [{"name": "KUBESIM_DURATION_MS", "value": "600000"}]},
            "concurrency": {"limit": 1}}))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
    let mut ids = Vec::new();
    for _ in 0..3 {
        let response = service
            .post("/v1/tasks/held/runs", &serde_json::json!({}))
            .await;
        let run: serde_json::Value = response.json().await.unwrap();
        ids.push(run["id"].as_str().unwrap().to_string());
    }
    service
        .wait_for(&ids[0], "running", Duration::from_secs(30))
        .await;
    let browser = Browser::open().await;
    let page = &browser.client;
    page.goto(&service.url("/#/runs?task=held")).await.unwrap();
    page.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("#live.on"))
        .await
        .expect("the dashboard follows /v1/events");
    let last = format!("#runs tr[data-run-id='{}'] [data-queue]", ids[2]);
    let note = page
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css(&last))
        .await
        .expect("the waiting run's row says why it waits");
    assert_eq!(note.text().await.unwrap(), "#2 ConcurrencyLimit");

    let response = service
        .post(
            &format!("/v1/runs/{}/cancel", ids[1]),
            &serde_json::json!({}),
        )
        .await;
    assert!(response.status().is_success());
    let mut text = String::new();
    for _ in 0..200 {
        text = match page.find(Locator::Css(&last)).await {
            Ok(note) => note.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        if text == "#1 ConcurrencyLimit" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    browser.close("dashboard-queue.png").await;
    assert_eq!(
        text, "#1 ConcurrencyLimit",
        "the row moved up without a reload"
    );
}
