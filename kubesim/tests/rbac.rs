//! RBAC mode: bearer tokens authenticate, every request is authorized against Roles and
//! bindings, and SelfSubjectAccessReview answers from the same authorizer. Behaviour followed:
//! <https://kubernetes.io/docs/reference/access-authn-authz/rbac/>,
//! <https://kubernetes.io/docs/reference/access-authn-authz/authentication/> (service-account
//! identities and groups), the 403 message of
//! `staging/src/k8s.io/apiserver/pkg/endpoints/handlers/responsewriters/errors.go`, and
//! <https://kubernetes.io/docs/reference/access-authn-authz/authorization/#checking-api-access>
//! (SelfSubjectAccessReview).

mod common;

use common::*;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kubesim::rbac::RbacConfig;
use kubesim::SimConfig;

const ROLE: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: team}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: runner, namespace: team}
rules:
  - apiGroups: ["batch"]
    resources: ["jobs"]
    verbs: ["create", "get", "list"]
  - apiGroups: [""]
    resources: ["pods/log"]
    verbs: ["get"]
  - apiGroups: [""]
    resources: ["pods"]
    resourceNames: ["only-this-one"]
    verbs: ["get"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: runner, namespace: team}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: runner}
subjects:
  - {kind: ServiceAccount, name: runner, namespace: team}
"#;

async fn rbac_sim() -> kubesim::KubeSim {
    sim_with(SimConfig {
        rbac: Some(
            RbacConfig::default()
                .manifest(ROLE)
                .service_account_token("runner-token", "team", "runner")
                .service_account_token("other-token", "team", "other"),
        ),
        ..SimConfig::default()
    })
    .await
}

fn forbidden_message(err: kube::Error) -> (u16, String) {
    match err {
        kube::Error::Api(s) => (s.code, s.message),
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_bound_service_account_may_do_what_its_role_grants_and_nothing_else() {
    let sim = rbac_sim().await;
    let sa = sim.client_with_token("runner-token");
    let team_jobs: Api<Job> = Api::namespaced(sa.clone(), "team");

    team_jobs
        .create(&PostParams::default(), &job("allowed", &[]))
        .await
        .expect("create jobs in team is granted");
    assert_eq!(
        team_jobs
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        1
    );

    let err = Api::<Job>::namespaced(sa.clone(), "default")
        .create(&PostParams::default(), &job("elsewhere", &[]))
        .await
        .unwrap_err();
    assert_eq!(
        forbidden_message(err),
        (403, r#"jobs.batch is forbidden: User "system:serviceaccount:team:runner" cannot create resource "jobs" in API group "batch" in the namespace "default""#.into())
    );

    let err = team_jobs
        .delete("allowed", &DeleteParams::background())
        .await
        .unwrap_err();
    assert_eq!(
        forbidden_message(err),
        (403, r#"jobs.batch "allowed" is forbidden: User "system:serviceaccount:team:runner" cannot delete resource "jobs" in API group "batch" in the namespace "team""#.into())
    );

    // pods/log does not grant pods; resourceNames limit to the named object.
    let pods: Api<Pod> = Api::namespaced(sa.clone(), "team");
    let (code, message) = forbidden_message(pods.list(&ListParams::default()).await.unwrap_err());
    assert_eq!(code, 403);
    assert!(
        message.contains(r#"cannot list resource "pods" in API group """#),
        "{message}"
    );
    let (code, _) = forbidden_message(pods.get("another").await.unwrap_err());
    assert_eq!(code, 403);
    let (code, _) = forbidden_message(pods.get("only-this-one").await.unwrap_err());
    assert_eq!(code, 404, "allowed through RBAC, then not found");

    // Another service account of the same namespace is not bound.
    let other = sim.client_with_token("other-token");
    let (code, _) = forbidden_message(
        Api::<Job>::namespaced(other, "team")
            .list(&ListParams::default())
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 403);
    sim.shutdown().await;
}

#[tokio::test]
async fn an_unknown_token_is_401_and_no_token_is_anonymous() {
    let sim = rbac_sim().await;
    let (code, _) = forbidden_message(
        Api::<Job>::namespaced(sim.client_with_token("made-up"), "team")
            .list(&ListParams::default())
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 401);

    let http = reqwest::Client::new();
    let anonymous = http
        .get(format!("{}/apis/batch/v1/namespaces/team/jobs", sim.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 403);
    let body: serde_json::Value = anonymous.json().await.unwrap();
    assert_eq!(body["reason"], "Forbidden");
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains(r#"User "system:anonymous" cannot list"#));
    // Discovery stays readable for authenticated users (the system:discovery default role).
    let version = http
        .get(format!("{}/version", sim.url()))
        .bearer_auth("runner-token")
        .send()
        .await
        .unwrap();
    assert_eq!(version.status(), 200);
    sim.shutdown().await;
}

async fn can_i(
    client: &kube::Client,
    verb: &str,
    resource: &str,
    sub: Option<&str>,
    ns: &str,
) -> bool {
    let (group, resource) = resource
        .split_once('.')
        .map_or(("", resource), |(r, g)| (g, r));
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.into()),
                group: Some(group.into()),
                resource: Some(resource.into()),
                subresource: sub.map(Into::into),
                namespace: Some(ns.into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<SelfSubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .expect("a review is always answered")
        .status
        .expect("with a status")
        .allowed
}

#[tokio::test]
async fn self_subject_access_review_answers_from_the_same_authorizer() {
    let sim = rbac_sim().await;
    let sa = sim.client_with_token("runner-token");
    assert!(can_i(&sa, "create", "jobs.batch", None, "team").await);
    assert!(can_i(&sa, "get", "pods", Some("log"), "team").await);
    assert!(!can_i(&sa, "delete", "jobs.batch", None, "team").await);
    assert!(!can_i(&sa, "create", "jobs.batch", None, "default").await);
    assert!(!can_i(&sa, "watch", "pods", None, "team").await);
    assert!(
        can_i(&sim.client(), "delete", "jobs.batch", None, "team").await,
        "admin"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn without_rbac_mode_every_review_is_allowed() {
    let sim = sim().await;
    assert!(can_i(&sim.client(), "delete", "namespaces", None, "x").await);
    sim.shutdown().await;
}

#[tokio::test]
async fn bindings_created_through_the_api_take_effect_at_once() {
    let sim = rbac_sim().await;
    let other = sim.client_with_token("other-token");
    assert!(!can_i(&other, "create", "jobs.batch", None, "team").await);

    let binding: RoleBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "other-runner"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "runner"},
        "subjects": [{"kind": "ServiceAccount", "name": "other", "namespace": "team"}],
    }))
    .unwrap();
    let bindings: Api<RoleBinding> = Api::namespaced(sim.client(), "team");
    bindings
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    assert!(can_i(&other, "create", "jobs.batch", None, "team").await);
    assert_eq!(
        bindings
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        2
    );

    // The service account may not grant itself more.
    let (code, _) = forbidden_message(
        Api::<RoleBinding>::namespaced(other.clone(), "team")
            .delete("other-runner", &DeleteParams::default())
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 403);
    bindings
        .delete("other-runner", &DeleteParams::default())
        .await
        .unwrap();
    assert!(!can_i(&other, "create", "jobs.batch", None, "team").await);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_deleted_namespaces_roles_and_bindings_go_with_it() {
    // The namespace controller deletes every namespaced object, RBAC ones included:
    // https://kubernetes.io/docs/tasks/administer-cluster/namespaces/#deleting-a-namespace
    let sim = rbac_sim().await;
    let sa = sim.client_with_token("runner-token");
    assert!(can_i(&sa, "create", "jobs.batch", None, "team").await);
    Api::<k8s_openapi::api::core::v1::Namespace>::all(sim.client())
        .delete("team", &DeleteParams::default())
        .await
        .unwrap();
    assert!(!can_i(&sa, "create", "jobs.batch", None, "team").await);
    let roles: Api<k8s_openapi::api::rbac::v1::Role> = Api::namespaced(sim.client(), "team");
    assert!(roles
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .is_empty());
    sim.shutdown().await;
}
