//! Schedules with CronJob semantics and history retention, through the whole service against
//! real Postgres and kubesim, on a manual clock: simulated minutes, hours and DST changes pass
//! without waiting for them.

mod common;

use chrono::{DateTime, Duration, Utc};
use common::service::{eventually, jobs_of, kubesim, ManualClock, RunnerKind, Service};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

const WAIT: std::time::Duration = std::time::Duration::from_secs(30);

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// A template for kubesim's scripted runner.
fn scripted(duration_ms: u64, extra: Value) -> Value {
    let mut template = json!({
        "image": "busybox",
        "command": ["true"],
        "env": [{"name": "KUBESIM_DURATION_MS", "value": duration_ms.to_string()}],
    });
    template
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    template
}

async fn put_task(service: &Service, name: &str, spec: Value) -> Value {
    let response = service
        .http
        .put(service.url(&format!("/v1/tasks/{name}")))
        .json(&spec)
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "PUT {name}: {}",
        response.status()
    );
    response.json().await.unwrap()
}

/// Waits until the scheduler has dealt with every scheduled time of `task` up to `until`.
async fn wait_considered(db: &PgPool, task: &str, until: DateTime<Utc>) {
    let what = format!("the scheduler to reach {until} for {task}");
    eventually(&what, WAIT, || async {
        let considered: Option<DateTime<Utc>> = sqlx::query_scalar(
            "SELECT considered_until FROM schedule_cursors WHERE task_name = $1",
        )
        .bind(task)
        .fetch_optional(db)
        .await
        .unwrap();
        considered.is_some_and(|c| c >= until)
    })
    .await;
}

/// Runs of `task` started by the schedule: (scheduled time, id, status), oldest first.
async fn scheduled_runs(db: &PgPool, task: &str) -> Vec<(DateTime<Utc>, Uuid, String)> {
    sqlx::query_as(
        "SELECT scheduled_time, id, status FROM runs
         WHERE task_name = $1 AND trigger = 'schedule' ORDER BY scheduled_time",
    )
    .bind(task)
    .fetch_all(db)
    .await
    .unwrap()
}

/// Scheduled times of `task` recorded as skipped: (time, reason), oldest first.
async fn skips(db: &PgPool, task: &str) -> Vec<(DateTime<Utc>, String)> {
    sqlx::query_as(
        "SELECT scheduled_time, reason FROM schedule_fires
         WHERE task_name = $1 AND outcome = 'skipped' ORDER BY scheduled_time",
    )
    .bind(task)
    .fetch_all(db)
    .await
    .unwrap()
}

async fn started_count(db: &PgPool, task: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM schedule_fires WHERE task_name = $1 AND outcome = 'started'",
    )
    .bind(task)
    .fetch_one(db)
    .await
    .unwrap()
}

/// A pool of its own on the test's database, as a separate replica (or a restarted process)
/// would have: stopping a service closes its pool.
fn own_pool(db: &PgPool) -> PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(10)
        .connect_lazy_with((*db.connect_options()).clone())
}

/// Moves the clock to `to` and waits until the scheduler has caught up with it.
async fn advance_to(clock: &ManualClock, db: &PgPool, task: &str, to: DateTime<Utc>) {
    clock.set(to);
    wait_considered(db, task, to).await;
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_cronjob_every_minute_runs_thirty_times_in_thirty_minutes_and_keeps_three_successes(
    db: PgPool,
) {
    let sim = kubesim(RunnerKind::Scripted).await;
    let start = utc("2026-01-05T10:00:30Z");
    let clock = ManualClock::new(start);
    let service = Service::start_with_clock(
        db.clone(),
        sim.client(),
        &["--prune-interval-ms", "100"],
        Some(clock.clone()),
    )
    .await;
    put_task(
        &service,
        "every-minute",
        json!({
            "template": scripted(5, json!({"completions": 20, "parallelism": 5})),
            "schedule": "* * * * *",
            "successfulRunsHistoryLimit": 3,
        }),
    )
    .await;
    wait_considered(&db, "every-minute", start).await;

    for minute in 1..=30 {
        let time = utc("2026-01-05T10:00:00Z") + Duration::minutes(minute);
        advance_to(&clock, &db, "every-minute", time).await;
        let runs = scheduled_runs(&db, "every-minute").await;
        let (scheduled, id, _) = runs.last().expect("a run for the minute");
        assert_eq!(*scheduled, time, "minute {minute} started its own run");
        let run = service.wait_for(&id.to_string(), "succeeded", WAIT).await;
        assert_eq!(run["pods"]["succeeded"], 20, "{run:#}");
        assert_eq!(run["trigger"], "schedule");
        assert_eq!(run["scheduledTime"], json!(time));
    }

    assert_eq!(started_count(&db, "every-minute").await, 30);
    assert!(skips(&db, "every-minute").await.is_empty());
    eventually(
        "the history to shrink to 3 successful runs",
        WAIT,
        || async {
            let runs = scheduled_runs(&db, "every-minute").await;
            runs.len() <= 3 && runs.iter().all(|r| r.2 == "succeeded")
        },
    )
    .await;
    // The kept ones are the newest, and only their Jobs are left in the cluster.
    let kept = scheduled_runs(&db, "every-minute").await;
    assert_eq!(
        kept.iter().map(|r| r.0).collect::<Vec<_>>(),
        (28..=30)
            .map(|m| utc("2026-01-05T10:00:00Z") + Duration::minutes(m))
            .collect::<Vec<_>>()
    );
    let client = sim.client();
    eventually("the pruned runs' Jobs to be deleted", WAIT, || {
        let client = client.clone();
        async move {
            let api: kube::Api<k8s_openapi::api::batch::v1::Job> = kube::Api::all(client);
            api.list(&Default::default()).await.unwrap().items.len() == 3
        }
    })
    .await;
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn forbid_skips_a_scheduled_time_while_a_run_is_active_and_shows_why(db: PgPool) {
    let sim = kubesim(RunnerKind::Scripted).await;
    let clock = ManualClock::new(utc("2026-01-05T10:00:30Z"));
    let service =
        Service::start_with_clock(db.clone(), sim.client(), &[], Some(clock.clone())).await;
    put_task(
        &service,
        "forbid",
        json!({
            "template": scripted(600_000, json!({})),
            "schedule": "* * * * *",
            "concurrencyPolicy": "Forbid",
        }),
    )
    .await;
    wait_considered(&db, "forbid", clock_now(&clock)).await;

    advance_to(&clock, &db, "forbid", utc("2026-01-05T10:01:00Z")).await;
    let first = scheduled_runs(&db, "forbid").await[0].1.to_string();
    service.wait_for(&first, "running", WAIT).await;
    advance_to(&clock, &db, "forbid", utc("2026-01-05T10:02:00Z")).await;

    assert_eq!(
        scheduled_runs(&db, "forbid").await.len(),
        1,
        "no second run"
    );
    assert_eq!(
        skips(&db, "forbid").await,
        [(utc("2026-01-05T10:02:00Z"), "Forbid".to_string())]
    );
    let task = service.get("/v1/tasks/forbid").await;
    let status = &task["scheduleStatus"];
    assert_eq!(status["activeRuns"], json!([first]));
    assert_eq!(status["recentSkips"][0]["reason"], "Forbid");
    assert_eq!(
        status["recentSkips"][0]["scheduledTime"],
        "2026-01-05T10:02:00Z"
    );
    assert_eq!(status["lastScheduleTime"], "2026-01-05T10:01:00Z");
    assert_eq!(status["nextScheduleTime"], "2026-01-05T10:03:00Z");
}

fn clock_now(clock: &ManualClock) -> DateTime<Utc> {
    use vfi_orchestrator::clock::Clock;
    clock.now()
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn replace_cancels_the_active_run_and_starts_the_new_one(db: PgPool) {
    let sim = kubesim(RunnerKind::Scripted).await;
    let client = sim.client();
    let clock = ManualClock::new(utc("2026-01-05T10:00:30Z"));
    let service =
        Service::start_with_clock(db.clone(), client.clone(), &[], Some(clock.clone())).await;
    put_task(
        &service,
        "replace",
        json!({
            "template": scripted(600_000, json!({})),
            "schedule": "* * * * *",
            "concurrencyPolicy": "Replace",
        }),
    )
    .await;
    wait_considered(&db, "replace", clock_now(&clock)).await;

    advance_to(&clock, &db, "replace", utc("2026-01-05T10:01:00Z")).await;
    let first = scheduled_runs(&db, "replace").await[0].1.to_string();
    service.wait_for(&first, "running", WAIT).await;
    advance_to(&clock, &db, "replace", utc("2026-01-05T10:02:00Z")).await;

    let runs = scheduled_runs(&db, "replace").await;
    assert_eq!(runs.len(), 2);
    let replaced = service.run(&first).await;
    assert_eq!(replaced["status"], "cancelled");
    assert_eq!(replaced["statusReason"], "Replaced");
    let second = runs[1].1.to_string();
    service.wait_for(&second, "running", WAIT).await;
    eventually("the replaced run's Job to be deleted", WAIT, || {
        let client = client.clone();
        let first = first.clone();
        async move { jobs_of(&client, &first).await.is_empty() }
    })
    .await;
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn allow_lets_scheduled_runs_overlap(db: PgPool) {
    let sim = kubesim(RunnerKind::Scripted).await;
    let clock = ManualClock::new(utc("2026-01-05T10:00:30Z"));
    let service =
        Service::start_with_clock(db.clone(), sim.client(), &[], Some(clock.clone())).await;
    put_task(
        &service,
        "allow",
        json!({"template": scripted(600_000, json!({})), "schedule": "* * * * *"}),
    )
    .await;
    wait_considered(&db, "allow", clock_now(&clock)).await;

    advance_to(&clock, &db, "allow", utc("2026-01-05T10:01:00Z")).await;
    advance_to(&clock, &db, "allow", utc("2026-01-05T10:02:00Z")).await;

    let runs = scheduled_runs(&db, "allow").await;
    assert_eq!(runs.len(), 2);
    for (_, id, _) in &runs {
        service.wait_for(&id.to_string(), "running", WAIT).await;
    }
    assert!(skips(&db, "allow").await.is_empty());
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn ten_minutes_of_downtime_start_one_catch_up_run_only_within_the_starting_deadline(
    db: PgPool,
) {
    let sim = kubesim(RunnerKind::Scripted).await;
    let clock = ManualClock::new(utc("2026-01-05T10:00:30Z"));
    let service =
        Service::start_with_clock(own_pool(&db), sim.client(), &[], Some(clock.clone())).await;
    for (name, deadline) in [("covered", 60), ("too-late", 30)] {
        put_task(
            &service,
            name,
            json!({
                "template": scripted(5, json!({})),
                "schedule": "* * * * *",
                "startingDeadlineSeconds": deadline,
            }),
        )
        .await;
        wait_considered(&db, name, clock_now(&clock)).await;
    }
    clock.set(utc("2026-01-05T10:01:00Z"));
    for name in ["covered", "too-late"] {
        wait_considered(&db, name, utc("2026-01-05T10:01:00Z")).await;
    }

    // Down from 10:01:00 to 10:11:40: ten scheduled times pass unseen.
    service.stop().await;
    clock.set(utc("2026-01-05T10:11:40Z"));
    let service =
        Service::start_with_clock(own_pool(&db), sim.client(), &[], Some(clock.clone())).await;
    for name in ["covered", "too-late"] {
        wait_considered(&db, name, utc("2026-01-05T10:11:40Z")).await;
    }

    let times = |runs: Vec<(DateTime<Utc>, Uuid, String)>| -> Vec<DateTime<Utc>> {
        runs.into_iter().map(|r| r.0).collect()
    };
    assert_eq!(
        times(scheduled_runs(&db, "covered").await),
        [utc("2026-01-05T10:01:00Z"), utc("2026-01-05T10:11:00Z")],
        "one catch-up run, for the latest missed time"
    );
    assert_eq!(
        times(scheduled_runs(&db, "too-late").await),
        [utc("2026-01-05T10:01:00Z")],
        "none: 10:11 is 40 s late, more than the 30 s deadline"
    );
    let covered = skips(&db, "covered").await;
    assert_eq!(covered.len(), 9);
    assert!(covered.iter().all(|s| s.1 == "Missed"), "{covered:?}");
    let too_late = skips(&db, "too-late").await;
    assert_eq!(too_late.len(), 10);
    assert_eq!(
        too_late.last().unwrap(),
        &(utc("2026-01-05T10:11:00Z"), "DeadlinePassed".to_string())
    );
    let task = service.get("/v1/tasks/too-late").await;
    assert_eq!(
        task["scheduleStatus"]["recentSkips"][0]["reason"],
        "DeadlinePassed"
    );
    assert_eq!(
        task["scheduleStatus"]["nextScheduleTime"],
        "2026-01-05T10:12:00Z"
    );
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_berlin_daily_schedule_fires_once_through_the_fall_back_night(db: PgPool) {
    let sim = kubesim(RunnerKind::Scripted).await;
    // 2026-10-25 in Berlin: 03:00 CEST becomes 02:00 CET, so 02:30 happens twice.
    let start = utc("2026-10-24T22:00:00Z");
    let clock = ManualClock::new(start);
    let service =
        Service::start_with_clock(db.clone(), sim.client(), &[], Some(clock.clone())).await;
    put_task(
        &service,
        "nightly",
        json!({
            "template": scripted(5, json!({})),
            "schedule": "30 2 * * *",
            "timeZone": "Europe/Berlin",
        }),
    )
    .await;
    wait_considered(&db, "nightly", start).await;
    let task = service.get("/v1/tasks/nightly").await;
    assert_eq!(
        task["scheduleStatus"]["nextScheduleTime"],
        "2026-10-25T00:30:00Z"
    );
    assert_eq!(
        task["scheduleStatus"]["nextScheduleTimeLocal"],
        "2026-10-25T02:30:00+02:00"
    );

    // Through the night in 10-minute steps, past both 02:30s (00:30 and 01:30 UTC).
    for step in 1..=36 {
        advance_to(&clock, &db, "nightly", start + Duration::minutes(10 * step)).await;
    }

    let runs = scheduled_runs(&db, "nightly").await;
    assert_eq!(
        runs.iter().map(|r| r.0).collect::<Vec<_>>(),
        [utc("2026-10-25T00:30:00Z")]
    );
    let task = service.get("/v1/tasks/nightly").await;
    assert_eq!(
        task["scheduleStatus"]["nextScheduleTimeLocal"],
        "2026-10-26T02:30:00+01:00"
    );
}

/// Builds the service's runtime (as `serve` would) on a pool of its own, without running it.
async fn runtime_of(db: &PgPool, client: kube::Client) -> vfi_orchestrator::runtime::Runtime {
    runtime_with(db, client, &[]).await
}

/// [`runtime_of`] with extra `serve` flags.
async fn runtime_with(
    db: &PgPool,
    client: kube::Client,
    extra: &[&str],
) -> vfi_orchestrator::runtime::Runtime {
    use clap::Parser;
    use vfi_orchestrator::config::{Cli, Command};
    let mut argv = vec![
        "vfi-orchestrator",
        "serve",
        "--database-url",
        "postgres://unused",
        "--listen",
        "127.0.0.1:0",
    ];
    argv.extend_from_slice(extra);
    let Command::Serve(args) = Cli::try_parse_from(argv).unwrap().command else {
        unreachable!()
    };
    vfi_orchestrator::app::App::new(&args, own_pool(db), client)
        .await
        .unwrap()
        .runtime
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn two_instances_on_one_database_never_fire_a_scheduled_time_twice(db: PgPool) {
    use vfi_orchestrator::runtime::scheduler::tick;
    let sim = kubesim(RunnerKind::Scripted).await;
    let start = utc("2026-01-05T10:00:30Z");
    let first = runtime_of(&db, sim.client()).await;
    let second = runtime_of(&db, sim.client()).await;
    let api = common::TestApp::spawn(db.clone()).await;
    api.put_task(
        "shared",
        &json!({"template": scripted(1, json!({})), "schedule": "* * * * *"}),
    )
    .await;
    tick(&first, start).await.unwrap();

    // Both schedulers reach every minute at the same moment, for an hour.
    for minute in 1..=60 {
        let now = utc("2026-01-05T10:00:00Z") + Duration::minutes(minute);
        let (a, b) = tokio::join!(tick(&first, now), tick(&second, now));
        assert_eq!(a.unwrap(), Some(now + Duration::minutes(1)));
        assert_eq!(b.unwrap(), Some(now + Duration::minutes(1)));
    }

    let runs = scheduled_runs(&db, "shared").await;
    assert_eq!(runs.len(), 60, "one run per minute");
    let distinct: std::collections::BTreeSet<_> = runs.iter().map(|r| r.0).collect();
    assert_eq!(distinct.len(), 60, "no scheduled time twice");
    assert_eq!(started_count(&db, "shared").await, 60);
    assert!(skips(&db, "shared").await.is_empty());
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn two_whole_services_on_one_database_fire_each_minute_of_an_hour_once(db: PgPool) {
    let sim = kubesim(RunnerKind::Scripted).await;
    let start = utc("2026-01-05T10:00:30Z");
    let clock = ManualClock::new(start);
    let first = Service::start_with_clock(db.clone(), sim.client(), &[], Some(clock.clone())).await;
    let _second =
        Service::start_with_clock(db.clone(), sim.client(), &[], Some(clock.clone())).await;
    put_task(
        &first,
        "shared",
        json!({"template": scripted(1, json!({})), "schedule": "* * * * *"}),
    )
    .await;
    wait_considered(&db, "shared", start).await;

    // Both replicas' schedulers wake at every minute of an hour.
    for minute in 1..=60 {
        let time = utc("2026-01-05T10:00:00Z") + Duration::minutes(minute);
        advance_to(&clock, &db, "shared", time).await;
    }

    let runs = scheduled_runs(&db, "shared").await;
    let distinct: std::collections::BTreeSet<_> = runs.iter().map(|r| r.0).collect();
    assert_eq!(runs.len(), 60, "one run per minute");
    assert_eq!(distinct.len(), 60, "no scheduled time twice");
    assert!(skips(&db, "shared").await.is_empty());
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn the_global_maximum_age_prunes_old_finished_runs_but_never_an_active_one(db: PgPool) {
    let sim = kubesim(RunnerKind::Scripted).await;
    // Recorded while nothing runs, then aged by hand.
    let api = common::TestApp::spawn(db.clone()).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let run = api.submit(&scripted(5, json!({}))).await;
        ids.push(Uuid::parse_str(run["id"].as_str().unwrap()).unwrap());
    }
    let (old_done, old_active, recent_done) = (ids[0], ids[1], ids[2]);
    sqlx::query(
        "UPDATE runs SET status = 'succeeded', finished_at = now() - interval '3 hours'
         WHERE id = $1",
    )
    .bind(old_done)
    .execute(&db)
    .await
    .unwrap();
    sqlx::query(
        "UPDATE runs SET status = 'pending', created_at = now() - interval '3 hours' WHERE id = $1",
    )
    .bind(old_active)
    .execute(&db)
    .await
    .unwrap();
    sqlx::query("UPDATE runs SET status = 'failed', finished_at = now() WHERE id = $1")
        .bind(recent_done)
        .execute(&db)
        .await
        .unwrap();

    let _service = Service::start(
        db.clone(),
        sim.client(),
        &["--run-max-age-hours", "1", "--prune-interval-ms", "50"],
    )
    .await;
    eventually("the old finished run to be pruned", WAIT, || async {
        common_count(&db, old_done).await == 0
    })
    .await;

    assert_eq!(common_count(&db, old_active).await, 1, "active runs stay");
    assert_eq!(common_count(&db, recent_done).await, 1, "recent runs stay");
    // Its history went with it; what remains is the event saying it was pruned.
    let events: Vec<String> =
        sqlx::query_scalar("SELECT kind FROM run_events WHERE run_id = $1 ORDER BY id")
            .bind(old_done)
            .fetch_all(&db)
            .await
            .unwrap();
    assert_eq!(events, ["pruned"], "its history went with it");
}

async fn common_count(db: &PgPool, id: Uuid) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM runs WHERE id = $1")
        .bind(id)
        .fetch_one(db)
        .await
        .unwrap()
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn put_refuses_invalid_schedules_and_time_zones_naming_the_field(db: PgPool) {
    let app = common::TestApp::spawn(db).await;
    for (spec, field) in [
        (json!({"schedule": "every minute"}), "schedule"),
        (json!({"schedule": "61 * * * *"}), "schedule"),
        (
            json!({"schedule": "* * * * *", "timeZone": "Europe/Atlantis"}),
            "timeZone",
        ),
        (
            json!({"schedule": "@daily", "maxCatchUpRuns": 0}),
            "maxCatchUpRuns",
        ),
        (
            json!({"schedule": "@daily", "successfulRunsHistoryLimit": -1}),
            "successfulRunsHistoryLimit",
        ),
    ] {
        let mut body = json!({"template": common::calculatepi()});
        body.as_object_mut()
            .unwrap()
            .extend(spec.as_object().unwrap().clone());
        let response = app.put_json("/v1/tasks/cron", &body).await;
        common::assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY, Some(field)).await;
    }
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn backfill_starts_each_scheduled_time_at_most_once(db: PgPool) {
    let app = common::TestApp::spawn(db.clone()).await;
    app.put_task(
        "hourly",
        &json!({"template": common::calculatepi(), "schedule": "@hourly"}),
    )
    .await;

    let first = app
        .post_json(
            "/v1/tasks/hourly/backfill",
            &json!({"from": "2026-01-01T00:00:00Z", "to": "2026-01-01T03:00:00Z"}),
        )
        .await;
    assert_eq!(first.status(), StatusCode::OK);
    let first: Value = first.json().await.unwrap();
    assert_eq!(first["started"].as_array().unwrap().len(), 4);
    assert_eq!(first["started"][0]["trigger"], "schedule");
    assert_eq!(first["started"][0]["scheduledTime"], "2026-01-01T00:00:00Z");

    let second: Value = app
        .post_json(
            "/v1/tasks/hourly/backfill",
            &json!({"from": "2026-01-01T02:00:00Z", "to": "2026-01-01T05:00:00Z"}),
        )
        .await
        .json()
        .await
        .unwrap();
    let started: Vec<&str> = second["started"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["scheduledTime"].as_str().unwrap())
        .collect();
    assert_eq!(started, ["2026-01-01T04:00:00Z", "2026-01-01T05:00:00Z"]);
    assert_eq!(
        second["alreadyStarted"],
        json!(["2026-01-01T02:00:00Z", "2026-01-01T03:00:00Z"])
    );
    assert_eq!(app.count("runs").await, 6);

    let backwards = app
        .post_json(
            "/v1/tasks/hourly/backfill",
            &json!({"from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z"}),
        )
        .await;
    common::assert_problem(backwards, StatusCode::UNPROCESSABLE_ENTITY, Some("to")).await;
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_scheduled_time_beyond_limits_tightened_after_the_task_was_saved_is_skipped(db: PgPool) {
    use vfi_orchestrator::runtime::scheduler::tick;
    let sim = kubesim(RunnerKind::Scripted).await;
    // Saved while the installation allowed it...
    let api = common::TestApp::spawn(db.clone()).await;
    let big = scripted(1, json!({"completions": 50, "parallelism": 5}));
    api.put_task("big", &json!({"template": big, "schedule": "* * * * *"}))
        .await;
    // ...and due after the limits were tightened.
    let strict = runtime_with(&db, sim.client(), &["--max-run-completions", "10"]).await;
    tick(&strict, utc("2026-01-05T10:00:30Z")).await.unwrap();
    tick(&strict, utc("2026-01-05T10:01:30Z")).await.unwrap();

    assert!(scheduled_runs(&db, "big").await.is_empty());
    assert_eq!(
        skips(&db, "big").await,
        [(utc("2026-01-05T10:01:00Z"), "BeyondLimits".to_string())]
    );
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_finished_run_read_before_it_is_pruned_is_not_found_once_pruned(db: PgPool) {
    let sim = kubesim(RunnerKind::Scripted).await;
    let service = Service::start(
        db.clone(),
        sim.client(),
        &["--run-max-age-hours", "1", "--prune-interval-ms", "50"],
    )
    .await;
    let id = service.submit(scripted(5, json!({}))).await;
    let finished = service
        .wait_for(&id, "succeeded", std::time::Duration::from_secs(60))
        .await;
    // Read while final (final runs are answered from a cache), then aged past the limit.
    assert_eq!(service.run(&id).await, finished);
    sqlx::query("UPDATE runs SET finished_at = now() - interval '3 hours' WHERE id = $1::uuid")
        .bind(&id)
        .execute(&db)
        .await
        .unwrap();
    let run_id = Uuid::parse_str(&id).unwrap();
    eventually("the old run to be pruned", WAIT, || async {
        common_count(&db, run_id).await == 0
    })
    .await;

    let response = service
        .http
        .get(service.url(&format!("/v1/runs/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::NOT_FOUND,
        "a pruned run is gone"
    );
    service.stop().await;
}
