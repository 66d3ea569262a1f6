//! Watches and fault injection: replay from a resourceVersion, synthetic initial state,
//! selector transitions, bookmarks, timeouts, 410 Expired, streaming lists, and kube-runtime's
//! watcher recovering from expired watches, dropped connections, 5xx/429 and outages.

mod common;

use std::time::Duration;

use common::*;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams, WatchEvent, WatchParams};
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kubesim::SimConfig;
use serde_json::json;

async fn next_event(
    stream: &mut (impl futures::Stream<Item = Result<WatchEvent<Job>, kube::Error>> + Unpin),
) -> WatchEvent<Job> {
    tokio::time::timeout(WAIT, stream.try_next())
        .await
        .expect("event in time")
        .expect("stream ok")
        .expect("stream open")
}

fn name_of(ev: &WatchEvent<Job>) -> (String, String) {
    match ev {
        WatchEvent::Added(j) => ("ADDED".into(), j.metadata.name.clone().unwrap()),
        WatchEvent::Modified(j) => ("MODIFIED".into(), j.metadata.name.clone().unwrap()),
        WatchEvent::Deleted(j) => ("DELETED".into(), j.metadata.name.clone().unwrap()),
        WatchEvent::Bookmark(_) => ("BOOKMARK".into(), String::new()),
        WatchEvent::Error(e) => ("ERROR".into(), e.reason.clone()),
    }
}

fn held(name: &str) -> Job {
    job(name, &[("KUBESIM_DURATION_MS", "60000")])
}

#[tokio::test]
async fn watch_from_a_resource_version_replays_later_events() {
    let sim = sim().await;
    let c = sim.client();
    let api = Api::<Job>::default_namespaced(c.clone());
    create_job(&c, &held("before")).await;
    let rv = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    sim.faults().pause_controller(true);
    create_job(&c, &held("after")).await;
    api.patch(
        "after",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"x": "1"}}})),
    )
    .await
    .unwrap();
    api.delete("after", &Default::default()).await.unwrap();
    let mut s = api
        .watch(&WatchParams::default().disable_bookmarks(), &rv)
        .await
        .unwrap()
        .boxed();
    // The controller may still have been writing `before`'s status (its pod starting, with
    // the Events it records) after the list: only `after` is asserted on.
    let mut got = Vec::new();
    while got.len() < 3 {
        let event = name_of(&next_event(&mut s).await);
        if event.1 == "after" {
            got.push(event);
        }
    }
    assert_eq!(got[0], ("ADDED".into(), "after".into()));
    assert_eq!(got[1], ("MODIFIED".into(), "after".into()));
    assert_eq!(got[2].1, "after");
    sim.shutdown().await;
}

#[tokio::test]
async fn watch_without_resource_version_starts_with_synthetic_added_events() {
    let sim = sim().await;
    let c = sim.client();
    create_job(&c, &held("one")).await;
    create_job(&c, &held("two")).await;
    let api = Api::<Job>::default_namespaced(c.clone());
    let mut s = api
        .watch(&WatchParams::default().disable_bookmarks(), "0")
        .await
        .unwrap()
        .boxed();
    let a = name_of(&next_event(&mut s).await);
    let b = name_of(&next_event(&mut s).await);
    assert_eq!((a.0.as_str(), b.0.as_str()), ("ADDED", "ADDED"));
    sim.shutdown().await;
}

#[tokio::test]
async fn watch_older_than_history_gets_an_expired_error_event() {
    let sim = sim_with(SimConfig {
        watch_history: 3,
        ..Default::default()
    })
    .await;
    let c = sim.client();
    sim.faults().pause_controller(true);
    for i in 0..6 {
        create_job(&c, &held(&format!("h{i}"))).await;
    }
    let api = Api::<Job>::default_namespaced(c.clone());
    let mut s = api
        .watch(&WatchParams::default(), "2")
        .await
        .unwrap()
        .boxed();
    match next_event(&mut s).await {
        WatchEvent::Error(e) => assert_eq!((e.code, e.reason.as_str()), (410, "Expired")),
        other => panic!("expected a 410 ERROR event, got {other:?}"),
    }
    // The real server answers with HTTP 200 and the error inside the stream.
    let resp = reqwest::get(format!(
        "{}/apis/batch/v1/namespaces/default/jobs?watch=1&resourceVersion=2",
        sim.url()
    ))
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    let ev: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(ev["type"], "ERROR");
    assert_eq!(ev["object"]["code"], 410);
    sim.shutdown().await;
}

#[tokio::test]
async fn bookmarks_carry_the_current_resource_version() {
    let sim = sim().await;
    let c = sim.client();
    let api = Api::<Job>::default_namespaced(c.clone());
    let rv = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut s = api
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    match next_event(&mut s).await {
        WatchEvent::Bookmark(b) => {
            assert!(
                b.metadata.resource_version.parse::<u64>().unwrap() >= rv.parse::<u64>().unwrap()
            )
        }
        other => panic!("expected a bookmark, got {other:?}"),
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn timeout_seconds_ends_the_watch() {
    let sim = sim().await;
    let api = Api::<Job>::default_namespaced(sim.client());
    let s = api
        .watch(&WatchParams::default().timeout(1).disable_bookmarks(), "0")
        .await
        .unwrap();
    let events: Vec<_> = tokio::time::timeout(WAIT, s.collect::<Vec<_>>())
        .await
        .expect("stream ends");
    assert!(events.is_empty());
    sim.shutdown().await;
}

#[tokio::test]
async fn object_that_stops_matching_a_selector_is_sent_as_deleted() {
    let sim = sim().await;
    let c = sim.client();
    sim.faults().pause_controller(true);
    let mut j = held("sel");
    j.metadata.labels = Some([("team".to_string(), "a".to_string())].into());
    create_job(&c, &j).await;
    let api = Api::<Job>::default_namespaced(c.clone());
    let mut s = api
        .watch(
            &WatchParams::default().labels("team=a").disable_bookmarks(),
            "0",
        )
        .await
        .unwrap()
        .boxed();
    assert_eq!(name_of(&next_event(&mut s).await).0, "ADDED");
    api.patch(
        "sel",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"team": "b"}}})),
    )
    .await
    .unwrap();
    assert_eq!(
        name_of(&next_event(&mut s).await),
        ("DELETED".into(), "sel".into())
    );
    api.patch(
        "sel",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"team": "a"}}})),
    )
    .await
    .unwrap();
    assert_eq!(
        name_of(&next_event(&mut s).await),
        ("ADDED".into(), "sel".into())
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn streaming_list_watch_ends_initial_events_with_a_marked_bookmark() {
    let sim = sim().await;
    let c = sim.client();
    create_job(&c, &held("s1")).await;
    let api = Api::<Job>::default_namespaced(c.clone());
    let mut s = watcher(api, watcher::Config::default().streaming_lists()).boxed();
    let mut saw = Vec::new();
    loop {
        let ev = tokio::time::timeout(WAIT, s.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        match ev {
            watcher::Event::Init => saw.push("init".to_string()),
            watcher::Event::InitApply(j) => saw.push(j.metadata.name.unwrap()),
            watcher::Event::InitDone => break,
            _ => {}
        }
    }
    assert_eq!(saw, vec!["init", "s1"]);
    sim.shutdown().await;
}

#[tokio::test]
async fn injected_failures_answer_status_with_retry_after_and_outage_is_503() {
    let sim = sim().await;
    let faults = sim.faults();
    let http = reqwest::Client::new();
    let url = format!("{}/apis/batch/v1/namespaces/default/jobs", sim.url());
    faults.fail_requests(1, 429, Some(2));
    let resp = http.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "2");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(
        (body["kind"].as_str(), body["reason"].as_str()),
        (Some("Status"), Some("TooManyRequests"))
    );
    assert_eq!(http.get(&url).send().await.unwrap().status(), 200);
    faults.fail_requests(1, 500, None);
    assert_eq!(http.get(&url).send().await.unwrap().status(), 500);
    faults.set_outage(true);
    assert_eq!(http.get(&url).send().await.unwrap().status(), 503);
    faults.set_outage(false);
    faults.set_latency(Duration::from_millis(200));
    let started = std::time::Instant::now();
    assert_eq!(http.get(&url).send().await.unwrap().status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(200));
    sim.shutdown().await;
}

#[tokio::test]
async fn dropped_watches_close_open_streams() {
    let sim = sim().await;
    let api = Api::<Job>::default_namespaced(sim.client());
    let s = api
        .watch(&WatchParams::default().disable_bookmarks(), "0")
        .await
        .unwrap();
    let collect = tokio::spawn(s.collect::<Vec<_>>());
    // Drop until the spawned watch has been closed by it (the first call may race the request).
    let faults = sim.faults();
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            faults.drop_watches();
            if collect.is_finished() {
                break;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(closed.is_ok(), "watch was not closed");
    sim.shutdown().await;
}

#[tokio::test]
async fn watchers_recover_from_expired_and_dropped_watches_and_see_every_job_and_pod_finish() {
    let sim = sim_with(SimConfig {
        watch_history: 200,
        ..Default::default()
    })
    .await;
    let c = sim.client();
    let faults = sim.faults();
    let api = Api::<Job>::default_namespaced(c.clone());
    let (reader, writer) = reflector::store::<Job>();
    let stream = watcher(api.clone(), watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .applied_objects();
    let (pod_reader, pod_writer) = reflector::store::<Pod>();
    let pod_stream = watcher(
        Api::<Pod>::default_namespaced(c.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(pod_writer)
    .applied_objects();
    let (seen_tx, mut seen) = tokio::sync::watch::channel(0u64);
    let pod_seen_tx = seen_tx.clone();
    let driver = tokio::spawn(async move {
        let mut stream = stream.boxed();
        while let Some(r) = stream.next().await {
            // Errors are expected while faults are injected; the backoff retries them.
            if r.is_ok() {
                seen_tx.send_modify(|n| *n += 1);
            }
        }
    });
    let pod_driver = tokio::spawn(async move {
        let mut stream = pod_stream.boxed();
        while let Some(r) = stream.next().await {
            if r.is_ok() {
                pod_seen_tx.send_modify(|n| *n += 1);
            }
        }
    });
    reader.wait_until_ready().await.unwrap();
    pod_reader.wait_until_ready().await.unwrap();
    for i in 0..20 {
        let j = job(
            &format!("r{i}"),
            &[("KUBESIM_DURATION_MS", &(50 + i * 10).to_string())],
        );
        // Injected failures hit this client too; it retries like any client would.
        loop {
            match api.create(&Default::default(), &j).await {
                Ok(_) => break,
                Err(kube::Error::Api(s)) if s.code == 500 || s.code == 429 => continue,
                Err(e) => panic!("create failed: {e}"),
            }
        }
        match i {
            3 => faults.next_watches_gone(2),
            6 => faults.drop_watches(),
            9 => faults.fail_requests(3, 500, None),
            12 => faults.drop_watches(),
            15 => faults.fail_requests(2, 429, Some(1)),
            _ => {}
        }
    }
    faults.next_watches_gone(1);
    faults.drop_watches();
    let all_done = || {
        let jobs = reader.state();
        let pods = pod_reader.state();
        jobs.len() == 20
            && jobs.iter().all(|j| has_condition(j, "Complete"))
            && pods.len() == 20
            && pods.iter().all(|p| phase(p) == "Succeeded")
    };
    // Wait on the reflector's own progress, not on time.
    let done = tokio::time::timeout(WAIT, async {
        loop {
            seen.borrow_and_update();
            if all_done() {
                return;
            }
            if seen.changed().await.is_err() {
                return;
            }
        }
    })
    .await;
    let summary: Vec<String> = reader
        .state()
        .iter()
        .map(|j| {
            format!(
                "{}:{:?}",
                j.metadata.name.clone().unwrap_or_default(),
                j.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .map(|c| c.len())
            )
        })
        .collect();
    assert!(done.is_ok() && all_done(), "reflector state: {summary:?}");
    driver.abort();
    pod_driver.abort();
    sim.shutdown().await;
}

#[tokio::test]
async fn metadata_lists_and_watches_return_partial_object_metadata() {
    let sim = sim().await;
    let c = sim.client();
    create_job(&c, &job("meta", &[("KUBESIM_DURATION_MS", "5")])).await;
    let api = Api::<Job>::default_namespaced(c.clone());
    let list = api.list_metadata(&ListParams::default()).await.unwrap();
    assert_eq!(list.items[0].metadata.name.as_deref(), Some("meta"));
    let one = api.get_metadata("meta").await.unwrap();
    assert_eq!(one.types.unwrap().kind, "PartialObjectMetadata");
    let _ = api;
    let meta_api = Api::<kube::core::PartialObjectMeta<Job>>::default_namespaced(c.clone());
    let mut s = watcher(meta_api, watcher::Config::default()).boxed();
    loop {
        let ev = tokio::time::timeout(WAIT, s.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let watcher::Event::InitApply(m) = ev {
            assert_eq!(m.metadata.name.as_deref(), Some("meta"));
            break;
        }
    }
    sim.shutdown().await;
}
