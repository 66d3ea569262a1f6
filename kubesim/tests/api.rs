//! The REST surface through kube-rs and raw HTTP: CRUD, validation, pagination, selectors,
//! patches, finalizers, delete propagation, namespaces, tables and error statuses.

mod common;

use common::*;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

#[tokio::test]
async fn created_job_is_defaulted_like_the_real_server() {
    let sim = sim().await;
    let c = sim.client();
    let created = create_job(&c, &job("defaults", &[])).await;
    let spec = created.spec.clone().unwrap();
    let uid = created.metadata.uid.clone().unwrap();
    assert_eq!(spec.completions, Some(1));
    assert_eq!(spec.parallelism, Some(1));
    assert_eq!(spec.completion_mode.as_deref(), Some("NonIndexed"));
    assert_eq!(spec.suspend, Some(false));
    assert_eq!(
        spec.selector.unwrap().match_labels.unwrap()["batch.kubernetes.io/controller-uid"],
        uid
    );
    let labels = spec.template.metadata.unwrap().labels.unwrap();
    assert_eq!(labels["batch.kubernetes.io/job-name"], "defaults");
    assert_eq!(labels["controller-uid"], uid);
    assert_eq!(created.metadata.generation, Some(1));
    assert!(created.metadata.creation_timestamp.is_some());
    assert!(created.metadata.resource_version.is_some());
    let mut unset = job("backoff", &[]);
    unset.spec.as_mut().unwrap().backoff_limit = None;
    let created = create_job(&c, &unset).await;
    assert_eq!(created.spec.unwrap().backoff_limit, Some(6));
    sim.shutdown().await;
}

#[tokio::test]
async fn generate_name_gets_five_random_characters() {
    let sim = sim().await;
    let mut j = job("", &[]);
    j.metadata.name = None;
    j.metadata.generate_name = Some("gen-".into());
    let created = create_job(&sim.client(), &j).await;
    let name = created.metadata.name.unwrap();
    assert!(name.starts_with("gen-") && name.len() == 9, "{name}");
    sim.shutdown().await;
}

#[tokio::test]
async fn invalid_job_is_422_with_field_causes() {
    let sim = sim().await;
    let api = Api::<Job>::default_namespaced(sim.client());
    let mut j = job("Bad_Name", &[]);
    let ps = j.spec.as_mut().unwrap();
    ps.parallelism = Some(-1);
    let pod = ps.template.spec.as_mut().unwrap();
    pod.containers[0].image = None;
    pod.restart_policy = Some("Always".into());
    let err = api_error(api.create(&PostParams::default(), &j).await.unwrap_err());
    assert_eq!(err.code, 422);
    assert_eq!(err.reason, "Invalid");
    let fields: Vec<String> = err
        .details
        .unwrap()
        .causes
        .into_iter()
        .map(|c| c.field)
        .collect();
    for f in [
        "metadata.name",
        "spec.parallelism",
        "spec.template.spec.containers[0].image",
        "spec.template.spec.restartPolicy",
    ] {
        assert!(
            fields.iter().any(|x| x == f),
            "missing cause {f} in {fields:?}"
        );
    }
    // With parallelism set, completions is not defaulted, and Indexed requires it.
    let mut indexed = job("indexed", &[]);
    indexed.spec.as_mut().unwrap().completion_mode = Some("Indexed".into());
    indexed.spec.as_mut().unwrap().parallelism = Some(2);
    let err = api_error(
        api.create(&PostParams::default(), &indexed)
            .await
            .unwrap_err(),
    );
    assert_eq!(err.details.unwrap().causes[0].field, "spec.completions");
    sim.shutdown().await;
}

#[tokio::test]
async fn duplicate_create_is_409_already_exists_and_missing_get_is_404() {
    let sim = sim().await;
    let c = sim.client();
    let api = Api::<Job>::default_namespaced(c.clone());
    create_job(&c, &job("dup", &[("KUBESIM_DURATION_MS", "60000")])).await;
    let err = api_error(
        api.create(&PostParams::default(), &job("dup", &[]))
            .await
            .unwrap_err(),
    );
    assert_eq!((err.code, err.reason.as_str()), (409, "AlreadyExists"));
    let err = api_error(api.get("nope").await.unwrap_err());
    assert_eq!((err.code, err.reason.as_str()), (404, "NotFound"));
    assert_eq!(err.message, "jobs.batch \"nope\" not found");
    sim.shutdown().await;
}

#[tokio::test]
async fn stale_resource_version_update_is_409_conflict() {
    let sim = sim().await;
    let c = sim.client();
    let api = Api::<Job>::default_namespaced(c.clone());
    let mut j = create_job(&c, &job("conflict", &[("KUBESIM_DURATION_MS", "60000")])).await;
    api.patch(
        "conflict",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"a": "b"}}})),
    )
    .await
    .unwrap();
    j.metadata
        .labels
        .get_or_insert_default()
        .insert("x".into(), "y".into());
    let err = api_error(
        api.replace("conflict", &PostParams::default(), &j)
            .await
            .unwrap_err(),
    );
    assert_eq!((err.code, err.reason.as_str()), (409, "Conflict"));
    sim.shutdown().await;
}

#[tokio::test]
async fn creating_in_a_missing_namespace_is_404_for_the_namespace() {
    let sim = sim().await;
    let api = Api::<Job>::namespaced(sim.client(), "missing");
    let err = api_error(
        api.create(&PostParams::default(), &job("x", &[]))
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 404);
    assert_eq!(err.message, "namespaces \"missing\" not found");
    let ns_api = Api::<Namespace>::all(sim.client());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "missing"}})).unwrap();
    ns_api.create(&PostParams::default(), &ns).await.unwrap();
    api.create(&PostParams::default(), &job("x", &[]))
        .await
        .unwrap();
    let names: Vec<String> = ns_api
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    assert!(names.contains(&"default".to_string()) && names.contains(&"kube-system".to_string()));
    sim.shutdown().await;
}

#[tokio::test]
async fn list_paginates_with_continue_tokens_and_one_resource_version() {
    let sim = sim().await;
    let c = sim.client();
    for i in 0..7 {
        create_job(
            &c,
            &job(&format!("page-{i}"), &[("KUBESIM_DURATION_MS", "60000")]),
        )
        .await;
    }
    let api = Api::<Job>::default_namespaced(c.clone());
    let mut names = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut lp = ListParams::default().limit(3);
        if let Some(t) = &token {
            lp = lp.continue_token(t);
        }
        let page = api.list(&lp).await.unwrap();
        pages += 1;
        assert!(page.metadata.resource_version.is_some());
        names.extend(page.items.into_iter().filter_map(|j| j.metadata.name));
        token = page.metadata.continue_.filter(|t| !t.is_empty());
        if token.is_none() {
            break;
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(names.len(), 7);
    let all = Api::<Job>::all(c.clone())
        .list(&ListParams::default())
        .await
        .unwrap();
    assert_eq!(all.items.len(), 7);
    sim.shutdown().await;
}

#[tokio::test]
async fn expired_continue_token_is_410() {
    let sim = sim_with(kubesim::SimConfig {
        watch_history: 5,
        ..Default::default()
    })
    .await;
    let c = sim.client();
    for i in 0..4 {
        create_job(
            &c,
            &job(&format!("exp-{i}"), &[("KUBESIM_DURATION_MS", "60000")]),
        )
        .await;
    }
    let api = Api::<Job>::default_namespaced(c.clone());
    let page = api.list(&ListParams::default().limit(1)).await.unwrap();
    let token = page.metadata.continue_.unwrap();
    // Enough writes to push the token's resourceVersion out of the retained history.
    for i in 0..10 {
        api.patch(
            "exp-3",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"n": i.to_string()}}})),
        )
        .await
        .unwrap();
    }
    let err = api_error(
        api.list(&ListParams::default().limit(1).continue_token(&token))
            .await
            .unwrap_err(),
    );
    assert_eq!((err.code, err.reason.as_str()), (410, "Expired"));
    sim.shutdown().await;
}

#[tokio::test]
async fn label_and_field_selectors_filter_lists() {
    let sim = sim().await;
    let c = sim.client();
    for (name, tier) in [("a", "web"), ("b", "db"), ("c", "cache")] {
        let mut j = job(name, &[("KUBESIM_DURATION_MS", "60000")]);
        j.metadata.labels = Some([("tier".to_string(), tier.to_string())].into());
        create_job(&c, &j).await;
    }
    let api = Api::<Job>::default_namespaced(c.clone());
    let names = |l: kube::core::ObjectList<Job>| -> Vec<String> {
        l.items
            .into_iter()
            .filter_map(|j| j.metadata.name)
            .collect()
    };
    let got = names(
        api.list(&ListParams::default().labels("tier in (web,db)"))
            .await
            .unwrap(),
    );
    assert_eq!(got, vec!["a", "b"]);
    let got = names(
        api.list(&ListParams::default().labels("tier!=web,tier notin (db)"))
            .await
            .unwrap(),
    );
    assert_eq!(got, vec!["c"]);
    let got = names(
        api.list(&ListParams::default().labels("!tier"))
            .await
            .unwrap(),
    );
    assert!(got.is_empty());
    let got = names(
        api.list(&ListParams::default().fields("metadata.name=b"))
            .await
            .unwrap(),
    );
    assert_eq!(got, vec!["b"]);
    let err = api_error(
        api.list(&ListParams::default().fields("spec.bogus=1"))
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 400);
    let pods = Api::<Pod>::all(c.clone());
    wait_until(&sim, "pods run", || async {
        pods.list(&ListParams::default().fields("status.phase=Running"))
            .await
            .unwrap()
            .items
            .len()
            == 3
    })
    .await;
    sim.shutdown().await;
}

#[tokio::test]
async fn merge_strategic_and_json_patches_edit_metadata_and_suspend() {
    let sim = sim().await;
    let c = sim.client();
    let api = Api::<Job>::default_namespaced(c.clone());
    create_job(&c, &job("patchy", &[("KUBESIM_DURATION_MS", "60000")])).await;
    let pp = PatchParams::default();
    let j = api
        .patch(
            "patchy",
            &pp,
            &Patch::Merge(json!({"metadata": {"labels": {"a": "1"}}})),
        )
        .await
        .unwrap();
    assert_eq!(j.metadata.labels.unwrap()["a"], "1");
    let j = api
        .patch(
            "patchy",
            &pp,
            &Patch::Strategic(json!({"metadata": {"finalizers": ["example.com/a"]}})),
        )
        .await
        .unwrap();
    assert_eq!(j.metadata.finalizers.unwrap(), vec!["example.com/a"]);
    let j = api
        .patch(
            "patchy",
            &pp,
            &Patch::Strategic(json!({"metadata": {"finalizers": ["example.com/b"]}})),
        )
        .await
        .unwrap();
    assert_eq!(
        j.metadata.finalizers.unwrap(),
        vec!["example.com/a", "example.com/b"]
    );
    let j = api
        .patch::<()>(
            "patchy",
            &pp,
            &Patch::Json(
                serde_json::from_value(json!([{"op": "remove", "path": "/metadata/finalizers/0"}]))
                    .unwrap(),
            ),
        )
        .await
        .unwrap();
    assert_eq!(j.metadata.finalizers.unwrap(), vec!["example.com/b"]);
    let before = j.metadata.generation.unwrap();
    let j = api
        .patch(
            "patchy",
            &pp,
            &Patch::Merge(json!({"spec": {"suspend": true}})),
        )
        .await
        .unwrap();
    assert_eq!(j.spec.unwrap().suspend, Some(true));
    assert_eq!(j.metadata.generation.unwrap(), before + 1);
    let err = api_error(
        api.patch(
            "patchy",
            &pp,
            &Patch::Merge(json!({"spec": {"completions": 5}})),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(err.code, 422);
    sim.shutdown().await;
}

#[tokio::test]
async fn finalizer_keeps_a_deleted_job_until_it_is_removed() {
    let sim = sim().await;
    let c = sim.client();
    let api = Api::<Job>::default_namespaced(c.clone());
    let mut j = job("held", &[("KUBESIM_DURATION_MS", "60000")]);
    j.metadata.finalizers = Some(vec!["example.com/hold".into()]);
    create_job(&c, &j).await;
    api.delete("held", &DeleteParams::background())
        .await
        .unwrap();
    let held = api.get("held").await.unwrap();
    assert!(held.metadata.deletion_timestamp.is_some());
    let err = api_error(
        api.patch(
            "held",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"finalizers": ["example.com/hold", "example.com/new"]}}),
            ),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(err.code, 422);
    api.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    wait_gone(api.clone(), "held").await;
    let err = api_error(api.get("held").await.unwrap_err());
    assert_eq!(err.code, 404);
    sim.shutdown().await;
}

#[tokio::test]
async fn background_deletion_removes_the_job_then_its_pods() {
    let sim = sim().await;
    let c = sim.client();
    let api = Api::<Job>::default_namespaced(c.clone());
    create_job(&c, &job("bg", &[("KUBESIM_DURATION_MS", "60000")])).await;
    wait_job(&c, "bg", |j| {
        j.status.as_ref().and_then(|s| s.active) == Some(1)
    })
    .await;
    api.delete("bg", &DeleteParams::background()).await.unwrap();
    assert_eq!(api_error(api.get("bg").await.unwrap_err()).code, 404);
    wait_until(&sim, "pods are garbage collected", || async {
        job_pods(&c, "bg").await.is_empty()
    })
    .await;
    sim.shutdown().await;
}

#[tokio::test]
async fn foreground_deletion_keeps_the_job_until_its_pods_are_gone() {
    let sim = sim().await;
    let c = sim.client();
    let api = Api::<Job>::default_namespaced(c.clone());
    let pods = Api::<Pod>::default_namespaced(c.clone());
    let mut j = job("fg", &[("KUBESIM_DURATION_MS", "60000")]);
    j.spec.as_mut().unwrap().template.metadata =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            finalizers: Some(vec!["example.com/keep".into()]),
            ..Default::default()
        });
    create_job(&c, &j).await;
    wait_job(&c, "fg", |j| {
        j.status.as_ref().and_then(|s| s.active) == Some(1)
    })
    .await;
    api.delete("fg", &DeleteParams::foreground()).await.unwrap();
    let deleting = api.get("fg").await.unwrap();
    assert!(deleting.metadata.deletion_timestamp.is_some());
    assert!(deleting
        .metadata
        .finalizers
        .unwrap()
        .contains(&"foregroundDeletion".to_string()));
    let pod_name = job_pods(&c, "fg").await[0].metadata.name.clone().unwrap();
    let stuck = wait_obj(pods.clone(), &pod_name, |p: &Pod| {
        p.metadata.deletion_timestamp.is_some() && phase(p) == "Failed"
    })
    .await;
    assert_eq!(stuck.metadata.finalizers.unwrap(), vec!["example.com/keep"]);
    assert!(
        api.get("fg").await.is_ok(),
        "job waits for its blocking pod"
    );
    pods.patch(
        &pod_name,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    wait_gone(api.clone(), "fg").await;
    sim.shutdown().await;
}

#[tokio::test]
async fn orphan_deletion_keeps_pods_without_owner_references() {
    let sim = sim().await;
    let c = sim.client();
    let api = Api::<Job>::default_namespaced(c.clone());
    create_job(&c, &job("orph", &[("KUBESIM_DURATION_MS", "60000")])).await;
    wait_job(&c, "orph", |j| {
        j.status.as_ref().and_then(|s| s.active) == Some(1)
    })
    .await;
    api.delete("orph", &DeleteParams::orphan()).await.unwrap();
    wait_gone(api.clone(), "orph").await;
    let pods = job_pods(&c, "orph").await;
    assert_eq!(pods.len(), 1);
    assert!(pods[0].metadata.owner_references.is_none());
    assert!(pods[0].metadata.deletion_timestamp.is_none());
    sim.shutdown().await;
}

#[tokio::test]
async fn job_delete_without_policy_orphans_with_a_warning_like_batch_v1() {
    let sim = sim().await;
    let c = sim.client();
    create_job(&c, &job("legacy", &[("KUBESIM_DURATION_MS", "60000")])).await;
    let resp = reqwest::Client::new()
        .delete(format!(
            "{}/apis/batch/v1/namespaces/default/jobs/legacy",
            sim.url()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let warning = resp
        .headers()
        .get("warning")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        warning.contains("child pods are preserved by default"),
        "{warning}"
    );
    let body: serde_json::Value = resp.json().await.unwrap();
    assert!(body["metadata"]["finalizers"]
        .as_array()
        .unwrap()
        .contains(&json!("orphan")));
    sim.shutdown().await;
}

#[tokio::test]
async fn kubectl_style_table_requests_get_server_side_columns() {
    let sim = sim().await;
    let c = sim.client();
    create_job(&c, &job("tab", &[("KUBESIM_DURATION_MS", "1")])).await;
    wait_finished(&c, "tab").await;
    let http = reqwest::Client::new();
    let accept = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
    let t: serde_json::Value = http
        .get(format!(
            "{}/apis/batch/v1/namespaces/default/jobs",
            sim.url()
        ))
        .header("accept", accept)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(t["kind"], "Table");
    let cols: Vec<&str> = t["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        &cols[..5],
        &["Name", "Status", "Completions", "Duration", "Age"]
    );
    let row = &t["rows"][0];
    assert_eq!(row["cells"][1], "Complete");
    assert_eq!(row["cells"][2], "1/1");
    assert_eq!(row["object"]["kind"], "PartialObjectMetadata");
    let t: serde_json::Value = http
        .get(format!("{}/api/v1/namespaces/default/pods", sim.url()))
        .header("accept", accept)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(t["rows"][0]["cells"][1], "0/1");
    assert_eq!(t["rows"][0]["cells"][2], "Completed");
    sim.shutdown().await;
}

#[tokio::test]
async fn unsupported_content_type_is_415_and_wrong_method_is_405() {
    let sim = sim().await;
    let http = reqwest::Client::new();
    let resp = http
        .post(format!(
            "{}/apis/batch/v1/namespaces/default/jobs",
            sim.url()
        ))
        .header("content-type", "text/plain")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 415);
    let resp = http
        .post(format!(
            "{}/apis/batch/v1/namespaces/default/jobs/x",
            sim.url()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["reason"], "MethodNotAllowed");
    sim.shutdown().await;
}

#[tokio::test]
async fn discovery_documents_describe_jobs_and_pods() {
    let sim = sim().await;
    let http = reqwest::Client::new();
    let get = |p: &str| http.get(format!("{}{p}", sim.url())).send();
    let v: serde_json::Value = get("/version").await.unwrap().json().await.unwrap();
    assert!(v["gitVersion"].as_str().unwrap().starts_with("v1.33"));
    let v: serde_json::Value = get("/apis").await.unwrap().json().await.unwrap();
    assert_eq!(v["groups"][0]["name"], "batch");
    let v: serde_json::Value = get("/apis/batch/v1").await.unwrap().json().await.unwrap();
    assert!(v["resources"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["name"] == "jobs/status"));
    let v: serde_json::Value = get("/api/v1").await.unwrap().json().await.unwrap();
    assert!(v["resources"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["name"] == "pods/log"));
    let ver = sim.client().apiserver_version().await.unwrap();
    assert_eq!(ver.minor, "33");
    sim.shutdown().await;
}

#[tokio::test]
async fn protobuf_job_create_is_decoded() {
    use prost::Message;
    let sim = sim().await;
    let pb = k8s_pb::api::batch::v1::Job {
        metadata: Some(k8s_pb::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some("pb".into()),
            ..Default::default()
        }),
        spec: Some(k8s_pb::api::batch::v1::JobSpec {
            template: Some(k8s_pb::api::core::v1::PodTemplateSpec {
                metadata: None,
                spec: Some(k8s_pb::api::core::v1::PodSpec {
                    containers: vec![k8s_pb::api::core::v1::Container {
                        name: Some("pb".into()),
                        image: Some("busybox".into()),
                        working_dir: Some(String::new()),
                        ..Default::default()
                    }],
                    restart_policy: Some("Never".into()),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }),
        status: None,
    };
    let unknown = k8s_pb::apimachinery::pkg::runtime::Unknown {
        type_meta: Some(k8s_pb::apimachinery::pkg::runtime::TypeMeta {
            api_version: Some("batch/v1".into()),
            kind: Some("Job".into()),
        }),
        raw: Some(pb.encode_to_vec()),
        content_encoding: None,
        content_type: None,
    };
    let mut body = b"k8s\0".to_vec();
    body.extend(unknown.encode_to_vec());
    let resp = reqwest::Client::new()
        .post(format!(
            "{}/apis/batch/v1/namespaces/default/jobs",
            sim.url()
        ))
        .header("content-type", "application/vnd.kubernetes.protobuf")
        .header(
            "accept",
            "application/vnd.kubernetes.protobuf,application/json",
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let j: Job = resp.json().await.unwrap();
    let c = &j.spec.unwrap().template.spec.unwrap().containers[0];
    assert_eq!(c.image.as_deref(), Some("busybox"));
    assert_eq!(
        c.working_dir, None,
        "empty protobuf strings are unset in JSON"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn status_subresource_is_readable_but_written_only_by_the_controller() {
    let sim = sim().await;
    let c = sim.client();
    create_job(&c, &job("st", &[("KUBESIM_DURATION_MS", "1")])).await;
    let api = Api::<Job>::default_namespaced(c.clone());
    wait_finished(&c, "st").await;
    let st = api.get_status("st").await.unwrap();
    assert!(has_condition(&st, "Complete"));
    let err = api_error(
        api.patch_status(
            "st",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"succeeded": 9}})),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(err.code, 405);
    sim.shutdown().await;
}

#[tokio::test]
async fn server_side_apply_creates_then_merges() {
    let sim = sim().await;
    let c = sim.client();
    let api = Api::<Job>::default_namespaced(c.clone());
    let pp = PatchParams::apply("kubesim-test");
    let mut j = job("ssa", &[("KUBESIM_DURATION_MS", "60000")]);
    let created = api.patch("ssa", &pp, &Patch::Apply(&j)).await.unwrap();
    assert!(created.metadata.uid.is_some());
    j.metadata.labels = Some([("applied".to_string(), "yes".to_string())].into());
    let updated = api.patch("ssa", &pp, &Patch::Apply(&j)).await.unwrap();
    assert_eq!(updated.metadata.labels.unwrap()["applied"], "yes");
    assert_eq!(updated.metadata.uid, created.metadata.uid);
    let err = api_error(
        api.patch("ssa", &PatchParams::default(), &Patch::Apply(&j))
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 422, "apply needs a field manager");
    sim.shutdown().await;
}

#[tokio::test]
async fn delete_collection_deletes_only_selected_jobs() {
    let sim = sim().await;
    let c = sim.client();
    for (name, team) in [("dc-a", "x"), ("dc-b", "x"), ("dc-c", "y")] {
        let mut j = job(name, &[("KUBESIM_DURATION_MS", "60000")]);
        j.metadata.labels = Some([("team".to_string(), team.to_string())].into());
        create_job(&c, &j).await;
    }
    let api = Api::<Job>::default_namespaced(c.clone());
    api.delete_collection(
        &DeleteParams::background(),
        &ListParams::default().labels("team=x"),
    )
    .await
    .unwrap();
    let left: Vec<String> = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|j| j.metadata.name)
        .collect();
    assert_eq!(left, vec!["dc-c"]);
    sim.shutdown().await;
}

#[tokio::test]
async fn the_written_kubeconfig_works_for_kube_rs_too() {
    let sim = sim().await;
    let kc = kube::config::Kubeconfig::from_yaml(&sim.kubeconfig_yaml()).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    assert_eq!(config.default_namespace, "default");
    let client = kube::Client::try_from(config).unwrap();
    let jobs = Api::<Job>::default_namespaced(client)
        .list(&ListParams::default())
        .await
        .unwrap();
    assert!(jobs.items.is_empty());
    sim.shutdown().await;
}
