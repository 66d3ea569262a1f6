//! Fault injection from outside the process: every fault kind put in force through the admin
//! endpoint (`/kubesim/faults`), observed with plain HTTP as an external harness would.
//!
//! The failures mimic what a real API server does:
//! - 5xx/429 with a metav1.Status body and `Retry-After`
//!   (https://kubernetes.io/docs/concepts/cluster-administration/flow-control/);
//! - a watch from a compacted resourceVersion gets an `ERROR` event with a 410 Expired Status
//!   (https://kubernetes.io/docs/reference/using-api/api-concepts/#410-gone-responses);
//! - a request accepted but not answered, as a frozen or overloaded server does up to its
//!   `--request-timeout`
//!   (https://kubernetes.io/docs/reference/command-line-tools-reference/kube-apiserver/);
//! - watch and log streams that end, or stay open without bytes, as through a broken proxy.

mod common;

use std::time::Duration;

use common::{create_job, job, sim, wait_finished, WAIT};
use futures::StreamExt;
use serde_json::{json, Value};

struct Admin {
    http: reqwest::Client,
    url: String,
}

impl Admin {
    fn new(sim: &kubesim::KubeSim) -> Admin {
        Admin {
            http: reqwest::Client::new(),
            url: format!("{}/kubesim/faults", sim.url()),
        }
    }

    async fn add(&self, fault: Value) -> u64 {
        let resp = self.http.post(&self.url).json(&fault).send().await.unwrap();
        assert_eq!(resp.status(), 201, "{fault}");
        resp.json::<Value>().await.unwrap()["id"].as_u64().unwrap()
    }

    async fn list(&self) -> Vec<Value> {
        let body: Value = self
            .http
            .get(&self.url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        body["faults"].as_array().unwrap().clone()
    }

    async fn clear(&self) {
        let resp = self.http.delete(&self.url).send().await.unwrap();
        assert_eq!(resp.status(), 204);
    }
}

fn jobs_url(sim: &kubesim::KubeSim) -> String {
    format!("{}/apis/batch/v1/namespaces/default/jobs", sim.url())
}

fn job_body(name: &str) -> Value {
    serde_json::to_value(job(name, &[])).unwrap()
}

#[tokio::test]
async fn an_error_burst_fails_the_next_matching_requests_only() {
    let sim = sim().await;
    let admin = Admin::new(&sim);
    let http = reqwest::Client::new();
    admin
        .add(
            json!({"kind": "error", "status": 503, "count": 2, "verb": "POST",
            "path": "/apis/batch/v1", "retryAfter": 1}),
        )
        .await;
    let listed = admin.list().await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["remaining"], 2);

    // Reads do not match the fault.
    assert_eq!(http.get(jobs_url(&sim)).send().await.unwrap().status(), 200);
    for name in ["a", "b"] {
        let resp = http
            .post(jobs_url(&sim))
            .json(&job_body(name))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 503);
        assert_eq!(resp.headers()["retry-after"], "1");
        let status: Value = resp.json().await.unwrap();
        assert_eq!(status["kind"], "Status");
    }
    let resp = http
        .post(jobs_url(&sim))
        .json(&job_body("c"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert!(admin.list().await.is_empty(), "a used-up burst is gone");
    sim.shutdown().await;
}

#[tokio::test]
async fn a_timed_error_fault_lasts_its_seconds_and_delete_ends_it_early() {
    let sim = sim().await;
    let admin = Admin::new(&sim);
    let http = reqwest::Client::new();
    admin
        .add(json!({"kind": "error", "status": 500, "seconds": 0.5}))
        .await;
    assert_eq!(http.get(jobs_url(&sim)).send().await.unwrap().status(), 500);
    let ended = tokio::time::timeout(WAIT, async {
        while http.get(jobs_url(&sim)).send().await.unwrap().status() != 200 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(ended.is_ok(), "the fault did not end with its time");

    admin
        .add(json!({"kind": "error", "status": 502, "seconds": 3600}))
        .await;
    assert_eq!(http.get(jobs_url(&sim)).send().await.unwrap().status(), 502);
    admin.clear().await;
    assert_eq!(http.get(jobs_url(&sim)).send().await.unwrap().status(), 200);
    sim.shutdown().await;
}

#[tokio::test]
async fn watch_gone_answers_the_next_watch_with_a_410_expired_event() {
    let sim = sim().await;
    let admin = Admin::new(&sim);
    let http = reqwest::Client::new();
    admin.add(json!({"kind": "watchGone", "count": 1})).await;
    let url = format!("{}?watch=true&resourceVersion=1", jobs_url(&sim));
    let body = http.get(&url).send().await.unwrap().text().await.unwrap();
    let event: Value = serde_json::from_str(body.lines().next().unwrap()).unwrap();
    assert_eq!(event["type"], "ERROR");
    assert_eq!(event["object"]["code"], 410);
    assert_eq!(event["object"]["reason"], "Expired");

    // The next watch is a normal one: it stays open.
    let resp = http.get(&url).send().await.unwrap();
    let mut stream = resp.bytes_stream();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), stream.next())
            .await
            .is_err(),
        "a normal watch from the current resourceVersion sends nothing and stays open"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn a_hang_holds_matching_requests_unanswered_until_it_ends() {
    let sim = sim().await;
    let admin = Admin::new(&sim);
    let http = reqwest::Client::new();
    let id = admin
        .add(json!({"kind": "hang", "seconds": 3600, "verb": "POST"}))
        .await;
    let hung = tokio::spawn({
        let http = http.clone();
        let url = jobs_url(&sim);
        async move { http.post(url).json(&job_body("h")).send().await }
    });
    // A client with a timeout gives up: the server accepted the request and does not answer.
    let timed_out = http
        .post(jobs_url(&sim))
        .timeout(Duration::from_millis(300))
        .json(&job_body("t"))
        .send()
        .await;
    assert!(timed_out.unwrap_err().is_timeout());
    // Requests that do not match keep being served.
    assert_eq!(http.get(jobs_url(&sim)).send().await.unwrap().status(), 200);
    assert!(!hung.is_finished());

    // Ending the fault lets the held request through, as a thawed server answers.
    let resp = http
        .delete(format!("{}/kubesim/faults/{id}", sim.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let answered = tokio::time::timeout(WAIT, hung)
        .await
        .expect("the held request is answered once the hang ends")
        .unwrap()
        .unwrap();
    assert_eq!(answered.status(), 201);
    sim.shutdown().await;
}

#[tokio::test]
async fn cut_streams_ends_open_watch_and_log_streams() {
    let sim = sim().await;
    let admin = Admin::new(&sim);
    let http = reqwest::Client::new();
    create_job(
        &sim.client(),
        &job("logger", &[("KUBESIM_DURATION_MS", "60000")]),
    )
    .await;
    let pod = common::wait_until(&sim, "the pod runs", || async {
        common::job_pods(&sim.client(), "logger")
            .await
            .iter()
            .any(|p| common::phase(p) == "Running")
    });
    pod.await;
    let pod = common::job_pods(&sim.client(), "logger").await[0]
        .metadata
        .name
        .clone()
        .unwrap();

    let watch = http
        .get(format!("{}?watch=true", jobs_url(&sim)))
        .send()
        .await
        .unwrap();
    let log = http
        .get(format!(
            "{}/api/v1/namespaces/default/pods/{pod}/log?follow=true",
            sim.url()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(log.status(), 200);
    admin.add(json!({"kind": "cutStreams"})).await;
    assert!(admin.list().await.is_empty(), "a cut is one-shot");
    for (what, resp) in [("watch", watch), ("log", log)] {
        let drained = tokio::time::timeout(WAIT, resp.bytes_stream().count()).await;
        assert!(drained.is_ok(), "the {what} stream was not cut");
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn stalled_streams_stay_open_without_bytes_until_the_stall_ends() {
    let sim = sim().await;
    let admin = Admin::new(&sim);
    let http = reqwest::Client::new();
    let watch = http
        .get(format!("{}?watch=true", jobs_url(&sim)))
        .send()
        .await
        .unwrap();
    let mut stream = watch.bytes_stream();
    admin.add(json!({"kind": "stallStreams"})).await;
    create_job(&sim.client(), &job("quiet", &[])).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(500), stream.next())
            .await
            .is_err(),
        "a stalled watch sends nothing (and does not end)"
    );
    admin.clear().await;
    let chunk = tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("the held event arrives once the stall ends")
        .unwrap()
        .unwrap();
    let event: Value =
        serde_json::from_slice(chunk.split(|b| *b == b'\n').next().unwrap()).unwrap();
    assert_eq!(event["type"], "ADDED");
    assert_eq!(event["object"]["metadata"]["name"], "quiet");
    sim.shutdown().await;
}

#[tokio::test]
async fn a_paused_controller_makes_no_progress_until_the_fault_ends() {
    let sim = sim().await;
    let admin = Admin::new(&sim);
    admin.add(json!({"kind": "pauseController"})).await;
    create_job(&sim.client(), &job("frozen", &[])).await;
    let finished = tokio::time::timeout(
        Duration::from_millis(500),
        wait_finished(&sim.client(), "frozen"),
    )
    .await;
    assert!(finished.is_err(), "the Job finished while paused");
    admin.clear().await;
    wait_finished(&sim.client(), "frozen").await;

    // A timed pause ends by itself.
    admin
        .add(json!({"kind": "pauseController", "seconds": 0.3}))
        .await;
    create_job(&sim.client(), &job("thawed", &[])).await;
    wait_finished(&sim.client(), "thawed").await;
    sim.shutdown().await;
}

#[tokio::test]
async fn an_outage_answers_503_and_latency_delays_but_the_admin_endpoint_keeps_working() {
    let sim = sim().await;
    let admin = Admin::new(&sim);
    let http = reqwest::Client::new();
    admin.add(json!({"kind": "outage"})).await;
    assert_eq!(http.get(jobs_url(&sim)).send().await.unwrap().status(), 503);
    assert_eq!(admin.list().await.len(), 1);
    admin.clear().await;
    assert_eq!(http.get(jobs_url(&sim)).send().await.unwrap().status(), 200);

    admin.add(json!({"kind": "latency", "delayMs": 300})).await;
    let started = std::time::Instant::now();
    assert_eq!(http.get(jobs_url(&sim)).send().await.unwrap().status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(300));
    sim.shutdown().await;
}

#[tokio::test]
async fn a_fault_that_means_nothing_is_refused_naming_the_field_and_changes_nothing() {
    let sim = sim().await;
    let admin = Admin::new(&sim);
    for (fault, field) in [
        (json!({"kind": "error"}), "status"),
        (json!({"kind": "error", "status": 200}), "status"),
        (json!({"kind": "hang", "seconds": -1}), "seconds"),
        (json!({"kind": "latency"}), "delayMs"),
        (json!({"kind": "explode"}), "kind"),
        (json!({"kind": "hang", "sconds": 1}), "sconds"),
    ] {
        let resp = admin
            .http
            .post(&admin.url)
            .json(&fault)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 422, "{fault}");
        let body: Value = resp.json().await.unwrap();
        assert!(
            body["error"].as_str().unwrap().contains(field),
            "{fault}: {body}"
        );
    }
    assert!(admin.list().await.is_empty());
    sim.shutdown().await;
}
