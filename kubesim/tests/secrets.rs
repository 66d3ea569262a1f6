//! core/v1 Secrets, ConfigMaps and PersistentVolumeClaims as API resources, with the API
//! server's rules (pkg/apis/core/v1/conversion.go, pkg/apis/core/validation/validation.go,
//! https://kubernetes.io/docs/concepts/configuration/secret/,
//! https://kubernetes.io/docs/concepts/configuration/configmap/): `stringData` merged into
//! `data` and never returned, type `Opaque` by default, keys checked by `IsConfigMapKey`,
//! `immutable`, and garbage collection of a Secret owned by a Job.

mod common;

use std::collections::BTreeMap;

use common::*;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Secret};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent};
use serde_json::json;

fn secret(v: serde_json::Value) -> Secret {
    serde_json::from_value(v).expect("valid secret")
}

/// Conversion (`Convert_v1_Secret_To_core_Secret`): `stringData` is merged into `data`, a key in
/// both takes the `stringData` value, and `stringData` is not stored; `SetDefaults_Secret`: type
/// `Opaque`. The JSON the server returns carries `data` base64-encoded.
#[tokio::test]
async fn string_data_is_merged_into_base64_data_and_the_type_defaults_to_opaque() {
    let sim = sim().await;
    let api = Api::<Secret>::default_namespaced(sim.client());
    let created = api
        .create(
            &PostParams::default(),
            &secret(json!({
                "metadata": {"name": "db"},
                "data": {"user": "b2xk", "host": "ZGI="},
                "stringData": {"user": "admin", "password": "hunter2"}
            })),
        )
        .await
        .unwrap();
    assert_eq!(created.type_.as_deref(), Some("Opaque"));
    assert!(created.string_data.is_none());
    let data = created.data.clone().unwrap();
    assert_eq!(data["user"].0, b"admin");
    assert_eq!(data["password"].0, b"hunter2");
    assert_eq!(data["host"].0, b"db");

    // The raw JSON: base64 values, no stringData.
    let raw: serde_json::Value = reqwest::get(format!(
        "{}/api/v1/namespaces/default/secrets/db",
        sim.url()
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(raw["data"]["password"], "aHVudGVyMg==");
    assert!(raw.get("stringData").is_none());

    // stringData in a patch is merged the same way.
    let patched = api
        .patch(
            "db",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"password": "new"}})),
        )
        .await
        .unwrap();
    assert_eq!(patched.data.unwrap()["password"].0, b"new");
    sim.shutdown().await;
}

/// `ValidateSecret`: each `data` key must pass `IsConfigMapKey` (the 422 names `data[<key>]`),
/// the name must be a DNS-1123 subdomain, and a `kubernetes.io/tls` Secret needs `tls.crt` and
/// `tls.key`. A refused Secret is not stored.
#[tokio::test]
async fn secret_keys_names_and_typed_secrets_are_validated_like_the_api_server() {
    let sim = sim().await;
    let api = Api::<Secret>::default_namespaced(sim.client());
    let err = api
        .create(
            &PostParams::default(),
            &secret(json!({"metadata": {"name": "bad"}, "stringData": {"a b": "x", "..x": "y"}})),
        )
        .await
        .map_err(api_error)
        .unwrap_err();
    assert_eq!(err.code, 422);
    let fields: Vec<String> = err
        .details
        .unwrap()
        .causes
        .into_iter()
        .map(|c| c.field)
        .collect();
    assert!(fields.contains(&"data[a b]".to_string()), "{fields:?}");
    assert!(fields.contains(&"data[..x]".to_string()), "{fields:?}");

    let err = api
        .create(
            &PostParams::default(),
            &secret(json!({"metadata": {"name": "Upper"}})),
        )
        .await
        .map_err(api_error)
        .unwrap_err();
    assert_eq!(err.code, 422);

    let err = api
        .create(
            &PostParams::default(),
            &secret(
                json!({"metadata": {"name": "tls"}, "type": "kubernetes.io/tls",
                "stringData": {"tls.crt": "c"}}),
            ),
        )
        .await
        .map_err(api_error)
        .unwrap_err();
    assert_eq!(err.code, 422);
    assert!(err.message.contains("data[tls.key]"), "{}", err.message);

    assert!(api
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .is_empty());
    sim.shutdown().await;
}

/// `ValidateSecretUpdate`: `type` is immutable; once `immutable: true`, neither `data` nor the
/// flag may change (https://kubernetes.io/docs/concepts/configuration/secret/#secret-immutable),
/// but the Secret may still be deleted.
#[tokio::test]
async fn an_immutable_secret_keeps_its_data_and_type_is_immutable() {
    let sim = sim().await;
    let api = Api::<Secret>::default_namespaced(sim.client());
    api.create(
        &PostParams::default(),
        &secret(json!({"metadata": {"name": "frozen"}, "immutable": true,
            "stringData": {"k": "v"}})),
    )
    .await
    .unwrap();
    let err = api
        .patch(
            "frozen",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"k": "changed"}})),
        )
        .await
        .map_err(api_error)
        .unwrap_err();
    assert_eq!(err.code, 422);
    assert!(
        err.message
            .contains("field is immutable when `immutable` is set"),
        "{}",
        err.message
    );
    let err = api
        .patch(
            "frozen",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"type": "kubernetes.io/basic-auth", "stringData": {"username": "u"}}),
            ),
        )
        .await
        .map_err(api_error)
        .unwrap_err();
    assert_eq!(err.code, 422);
    assert_eq!(
        api.get("frozen").await.unwrap().data.unwrap()["k"].0,
        b"v".to_vec()
    );
    // Labels may still change.
    api.patch(
        "frozen",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"a": "b"}}})),
    )
    .await
    .unwrap();
    api.delete("frozen", &DeleteParams::default())
        .await
        .unwrap();
    assert!(api.get_opt("frozen").await.unwrap().is_none());
    sim.shutdown().await;
}

/// Secrets are listed and watched like any kind, with the `type` field selector the secret
/// registry offers (pkg/registry/core/secret/strategy.go).
#[tokio::test]
async fn secrets_are_listed_by_type_and_watched() {
    let sim = sim().await;
    let api = Api::<Secret>::default_namespaced(sim.client());
    let mut watch = api
        .watch(&kube::api::WatchParams::default(), "0")
        .await
        .unwrap()
        .boxed();
    api.create(
        &PostParams::default(),
        &secret(json!({"metadata": {"name": "a"}, "stringData": {"k": "v"}})),
    )
    .await
    .unwrap();
    api.create(
        &PostParams::default(),
        &secret(
            json!({"metadata": {"name": "b"}, "type": "kubernetes.io/basic-auth",
            "stringData": {"username": "u", "password": "p"}}),
        ),
    )
    .await
    .unwrap();
    let basic = api
        .list(&ListParams::default().fields("type=kubernetes.io/basic-auth"))
        .await
        .unwrap();
    assert_eq!(basic.items.len(), 1);
    assert_eq!(basic.items[0].metadata.name.as_deref(), Some("b"));
    let first = tokio::time::timeout(WAIT, watch.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    match first {
        WatchEvent::Added(s) => assert_eq!(s.metadata.name.as_deref(), Some("a")),
        other => panic!("expected ADDED, got {other:?}"),
    }
    sim.shutdown().await;
}

/// A Secret owner-referenced to a Job is deleted by the garbage collector with the Job
/// (https://kubernetes.io/docs/concepts/architecture/garbage-collection/#owners-dependents),
/// as a run's secret parameters rely on; a Secret whose owner is already gone when it is
/// created is collected too.
#[tokio::test]
async fn a_secret_owned_by_a_job_is_deleted_with_the_job() {
    let sim = sim().await;
    let c = sim.client();
    let job = create_job(&c, &job_json("owner", &[], json!({"suspend": true}))).await;
    let api = Api::<Secret>::default_namespaced(c.clone());
    let owned = |name: &str, uid: &str| {
        secret(json!({
            "metadata": {"name": name, "ownerReferences": [{
                "apiVersion": "batch/v1", "kind": "Job", "name": "owner",
                "uid": uid, "controller": true, "blockOwnerDeletion": true}]},
            "stringData": {"token": "hunter2-xyz"}
        }))
    };
    api.create(
        &PostParams::default(),
        &owned("run-secret", job.metadata.uid.as_deref().unwrap()),
    )
    .await
    .unwrap();
    api.create(&PostParams::default(), &owned("stale", "no-such-uid"))
        .await
        .unwrap();
    wait_gone(api.clone(), "stale").await;
    assert!(api.get_opt("run-secret").await.unwrap().is_some());
    Api::<Job>::default_namespaced(c.clone())
        .delete("owner", &DeleteParams::background())
        .await
        .unwrap();
    wait_gone(api, "run-secret").await;
    sim.shutdown().await;
}

/// ConfigMaps: `data` and `binaryData` keys checked by `IsConfigMapKey`, a key may not be in
/// both (`ValidateConfigMap`), and an immutable ConfigMap keeps its data.
#[tokio::test]
async fn config_maps_are_validated_and_immutable_ones_keep_their_data() {
    let sim = sim().await;
    let api = Api::<ConfigMap>::default_namespaced(sim.client());
    let cm = |v: serde_json::Value| serde_json::from_value::<ConfigMap>(v).unwrap();
    let err = api
        .create(
            &PostParams::default(),
            &cm(json!({"metadata": {"name": "dup"}, "data": {"k": "v"}, "binaryData": {"k": "dg=="}})),
        )
        .await
        .map_err(api_error)
        .unwrap_err();
    assert_eq!(err.code, 422);
    let err = api
        .create(
            &PostParams::default(),
            &cm(json!({"metadata": {"name": "badkey"}, "data": {"k/x": "v"}})),
        )
        .await
        .map_err(api_error)
        .unwrap_err();
    assert_eq!(err.code, 422);
    assert_eq!(err.details.unwrap().causes[0].field, "data[k/x]");

    let created = api
        .create(
            &PostParams::default(),
            &cm(json!({"metadata": {"name": "settings"}, "immutable": true,
                "data": {"LEVEL": "debug"}})),
        )
        .await
        .unwrap();
    assert_eq!(
        created.data,
        Some(BTreeMap::from([("LEVEL".to_string(), "debug".to_string())]))
    );
    let err = api
        .patch(
            "settings",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"LEVEL": "info"}})),
        )
        .await
        .map_err(api_error)
        .unwrap_err();
    assert_eq!(err.code, 422);
    sim.shutdown().await;
}

/// PersistentVolumeClaims: `ValidatePersistentVolumeClaimSpec` wants an access mode and a
/// storage request; a new claim is `Pending` with `volumeMode: Filesystem` (defaults).
#[tokio::test]
async fn persistent_volume_claims_are_validated_and_defaulted() {
    let sim = sim().await;
    let api = Api::<PersistentVolumeClaim>::default_namespaced(sim.client());
    let pvc = |v: serde_json::Value| serde_json::from_value::<PersistentVolumeClaim>(v).unwrap();
    let err = api
        .create(
            &PostParams::default(),
            &pvc(json!({"metadata": {"name": "bad"}, "spec": {}})),
        )
        .await
        .map_err(api_error)
        .unwrap_err();
    assert_eq!(err.code, 422);
    let fields: Vec<String> = err
        .details
        .unwrap()
        .causes
        .into_iter()
        .map(|c| c.field)
        .collect();
    assert_eq!(fields, ["spec.accessModes", "spec.resources[storage]"]);
    let created = api
        .create(
            &PostParams::default(),
            &pvc(json!({"metadata": {"name": "scratch"}, "spec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "1Gi"}}}})),
        )
        .await
        .unwrap();
    assert_eq!(
        created.spec.unwrap().volume_mode.as_deref(),
        Some("Filesystem")
    );
    assert_eq!(created.status.unwrap().phase.as_deref(), Some("Pending"));
    sim.shutdown().await;
}

/// The namespace deleter empties a Terminating namespace of its Secrets and ConfigMaps too
/// (pkg/controller/namespace/deletion: every namespaced resource), then the namespace goes.
#[tokio::test]
async fn deleting_a_namespace_deletes_its_secrets_and_config_maps() {
    use k8s_openapi::api::core::v1::Namespace;
    let sim = sim().await;
    let c = sim.client();
    let namespaces = Api::<Namespace>::all(c.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "team"}})).unwrap(),
        )
        .await
        .unwrap();
    let secrets = Api::<Secret>::namespaced(c.clone(), "team");
    secrets
        .create(
            &PostParams::default(),
            &secret(json!({"metadata": {"name": "s"}, "stringData": {"k": "v"}})),
        )
        .await
        .unwrap();
    Api::<ConfigMap>::namespaced(c.clone(), "team")
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "cm"}, "data": {"k": "v"}}))
                .unwrap(),
        )
        .await
        .unwrap();
    namespaces
        .delete("team", &DeleteParams::default())
        .await
        .unwrap();
    wait_gone(namespaces, "team").await;
    assert!(secrets.get_opt("s").await.unwrap().is_none());
    sim.shutdown().await;
}

/// RBAC mode authorizes Secrets as the API server does: resource `secrets` in the core group
/// (https://kubernetes.io/docs/reference/access-authn-authz/rbac/#referring-to-resources); a
/// service account granted `get` on Secrets may read one but not create one, with the
/// apiserver's 403 message.
#[tokio::test]
async fn rbac_mode_authorizes_secrets_in_the_core_group() {
    use kubesim::rbac::RbacConfig;
    const POLICY: &str = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: secret-reader, namespace: default}
rules:
  - apiGroups: [""]
    resources: ["secrets"]
    verbs: ["get"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: secret-reader, namespace: default}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: secret-reader}
subjects:
  - {kind: ServiceAccount, name: reader, namespace: default}
"#;
    let sim = sim_with(kubesim::SimConfig {
        rbac: Some(
            RbacConfig::default()
                .manifest(POLICY)
                .service_account_token("reader-token", "default", "reader"),
        ),
        ..kubesim::SimConfig::default()
    })
    .await;
    Api::<Secret>::default_namespaced(sim.client())
        .create(
            &PostParams::default(),
            &secret(json!({"metadata": {"name": "s"}, "stringData": {"k": "v"}})),
        )
        .await
        .unwrap();
    let reader = Api::<Secret>::default_namespaced(sim.client_with_token("reader-token"));
    assert_eq!(reader.get("s").await.unwrap().data.unwrap()["k"].0, b"v");
    let err = reader
        .create(
            &PostParams::default(),
            &secret(json!({"metadata": {"name": "t"}})),
        )
        .await
        .map_err(api_error)
        .unwrap_err();
    assert_eq!(err.code, 403);
    assert_eq!(
        err.message,
        r#"secrets is forbidden: User "system:serviceaccount:default:reader" cannot create resource "secrets" in API group "" in the namespace "default""#
    );
    sim.shutdown().await;
}
