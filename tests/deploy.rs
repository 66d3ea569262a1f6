//! deploy/ as shipped: the manifests rendered with `kubectl kustomize deploy/base`, their RBAC
//! loaded into kubesim's RBAC mode, and the service running with the Deployment's settings
//! (its namespace from the downward API, no JOB_NAMESPACES) and the service account's token.

mod common;

use common::calculatepi;
use common::service::{KubeSim, RunnerKind, Service, SimConfig};
use k8s_openapi::api::core::v1::Namespace;
use kube::runtime::wait::await_condition;
use kube::Api;
use kubesim::rbac::{parse_manifests, RbacConfig};
use serde_json::Value;
use sqlx::PgPool;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vfi_orchestrator::cluster::permissions::REQUIRED;

const SA_TOKEN: &str = "vfi-orchestrator-service-account-token";

/// `kubectl kustomize deploy/base`, as JSON documents.
fn rendered_base() -> Vec<Value> {
    let out = std::process::Command::new("kubectl")
        .args(["kustomize", "deploy/base"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("kubectl runs (scripts/test installs it)");
    assert!(
        out.status.success(),
        "kubectl kustomize deploy/base: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_manifests(&String::from_utf8(out.stdout).unwrap()).expect("valid YAML")
}

fn find<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("deploy/base renders a {kind}"))
}

/// The namespace the Deployment runs in and its service account, as the downward API and the
/// token mount would give them to the pod.
fn deployment_identity(docs: &[Value]) -> (String, String) {
    let deployment = find(docs, "Deployment");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let env = container["env"].as_array().unwrap();
    assert!(
        env.iter().any(|e| e["name"] == "POD_NAMESPACE"
            && e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"),
        "POD_NAMESPACE comes from the downward API"
    );
    assert!(
        !env.iter().any(|e| e["name"] == "JOB_NAMESPACES"),
        "the shipped Deployment leaves JOB_NAMESPACES unset"
    );
    (
        deployment["metadata"]["namespace"]
            .as_str()
            .unwrap()
            .to_string(),
        deployment["spec"]["template"]["spec"]["serviceAccountName"]
            .as_str()
            .unwrap()
            .to_string(),
    )
}

/// Kubesim in RBAC mode with `docs` loaded and a token for the Deployment's service account.
async fn sim_with_rbac(docs: &[Value]) -> KubeSim {
    let (namespace, account) = deployment_identity(docs);
    let manifests = docs
        .iter()
        .map(|d| serde_json::to_string(d).unwrap())
        .collect::<Vec<_>>()
        .join("\n---\n");
    KubeSim::start(SimConfig {
        runner: RunnerKind::Host,
        rbac: Some(
            RbacConfig::default()
                .manifest(manifests)
                .service_account_token(SA_TOKEN, &namespace, &account),
        ),
        ..SimConfig::default()
    })
    .await
    .expect("kubesim starts")
}

/// The service as the Deployment runs it: in `namespace` (POD_NAMESPACE), no JOB_NAMESPACES,
/// with the service account's token.
async fn start_as_deployed(db: PgPool, sim: &KubeSim, namespace: &str) -> Service {
    Service::start(
        db,
        sim.client_with_token(SA_TOKEN),
        &["--pod-namespace", namespace],
    )
    .await
}

async fn readyz(service: &Service) -> reqwest::Response {
    service
        .http
        .get(service.url("/readyz"))
        .send()
        .await
        .unwrap()
}

/// `(group, resource[/subresource], verb)` triples.
fn triples_of_rules(rules: &[Value]) -> BTreeSet<(String, String, String)> {
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .map(|s| s.as_str().unwrap().to_string())
            .collect()
    };
    let mut out = BTreeSet::new();
    for rule in rules {
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                for verb in strings(&rule["verbs"]) {
                    out.insert((group.clone(), resource.clone(), verb));
                }
            }
        }
    }
    out
}

#[test]
fn the_shipped_role_grants_exactly_the_permissions_the_service_checks_for() {
    let docs = rendered_base();
    let role = find(&docs, "Role");
    let granted = triples_of_rules(role["rules"].as_array().unwrap());
    let needed: BTreeSet<(String, String, String)> = REQUIRED
        .iter()
        .flat_map(|p| {
            let resource = match p.subresource {
                Some(sub) => format!("{}/{sub}", p.resource),
                None => p.resource.to_string(),
            };
            p.verbs
                .iter()
                .map(move |v| (p.group.to_string(), resource.clone(), v.to_string()))
        })
        .collect();
    assert_eq!(
        granted, needed,
        "deploy/base/rbac.yaml and src/cluster/permissions.rs must list the same permissions"
    );
    // And it is bound to the Deployment's service account in the Deployment's namespace.
    let (namespace, account) = deployment_identity(&docs);
    let binding = find(&docs, "RoleBinding");
    assert_eq!(binding["metadata"]["namespace"], namespace.as_str());
    assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);
    assert!(binding["subjects"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["kind"] == "ServiceAccount"
            && s["name"] == account.as_str()
            && s["namespace"] == namespace.as_str()));
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn the_shipped_deployment_runs_calculatepi_with_its_service_account(db: PgPool) {
    let docs = rendered_base();
    let (namespace, _) = deployment_identity(&docs);
    let sim = sim_with_rbac(&docs).await;
    let service = start_as_deployed(db, &sim, &namespace).await;

    let ready = readyz(&service).await;
    assert_eq!(ready.status(), 200, "{}", ready.text().await.unwrap());

    let id = service.submit(calculatepi()).await;
    let run = service
        .wait_for(&id, "succeeded", Duration::from_secs(60))
        .await;
    assert_eq!(run["job"]["namespace"], namespace.as_str());
    let log = service
        .http
        .get(service.url(&format!("/v1/runs/{id}/logs")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(log.starts_with("3.14159265358979"), "{log}");
    service.stop().await;
    sim.shutdown().await;
}

/// Collects what the service logs on the current thread.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_role_without_pods_log_is_named_at_start_up_and_by_readyz(db: PgPool) {
    let mut docs = rendered_base();
    let role = docs.iter_mut().find(|d| d["kind"] == "Role").unwrap();
    let rules = role["rules"].as_array_mut().unwrap();
    let before = rules.len();
    rules.retain(|r| {
        !r["resources"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x == "pods/log")
    });
    assert_eq!(rules.len(), before - 1);
    let (namespace, _) = deployment_identity(&docs);
    let sim = sim_with_rbac(&docs).await;

    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer({
            let captured = captured.clone();
            move || captured.clone()
        })
        .with_ansi(false)
        .finish();
    let service = {
        let _guard = tracing::subscriber::set_default(subscriber);
        start_as_deployed(db, &sim, &namespace).await
    };
    let missing = format!(r#"get pods/log in namespace "{namespace}""#);
    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let line = log
        .lines()
        .find(|l| l.contains("lacks Kubernetes permissions"))
        .unwrap_or_else(|| panic!("no start-up error in: {log}"));
    assert!(line.contains("ERROR") && line.contains(&missing), "{line}");

    let ready = readyz(&service).await;
    assert_eq!(ready.status(), 503);
    let body: Value = ready.json().await.unwrap();
    let detail = body["detail"].as_str().unwrap();
    assert!(detail.contains(&missing), "{detail}");
    assert!(!detail.contains("jobs"), "only what is missing: {detail}");
    service.stop().await;
    sim.shutdown().await;
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn the_documented_uninstall_completes_with_finalizer_carrying_objects_present(db: PgPool) {
    let docs = rendered_base();
    let (namespace, _) = deployment_identity(&docs);
    let sim = sim_with_rbac(&docs).await;
    let service = start_as_deployed(db, &sim, &namespace).await;
    // One run still running and one finished: a Job and pods carrying the service's
    // finalizers, as an installation in use has.
    let running = service
        .submit(serde_json::json!({"image": "busybox", "command": ["sleep"],
            "env": [{"name": "KUBESIM_DURATION_MS", "value": "600000"}]}))
        .await;
    service
        .wait_for(&running, "running", Duration::from_secs(30))
        .await;
    let dir = tempdir();
    let kubeconfig = dir.join("admin.kubeconfig");
    sim.write_kubeconfig(&kubeconfig).unwrap();

    // 1. Scale the Deployment to 0: the service stops.
    service.stop().await;
    // 2. Delete the installation: `kubectl delete -k deploy/base --wait=false` deletes its
    //    namespace (kubesim has no Deployments to delete besides). Through kube-rs: kubectl
    //    sends no bearer token over kubesim's plain HTTP.
    let namespaces = Api::<Namespace>::all(sim.client());
    namespaces
        .delete(&namespace, &Default::default())
        .await
        .unwrap();
    // Left alone, the namespace cannot go: the service's finalizers hold its objects.
    let finalizers_remaining = |ns: Option<&Namespace>| {
        ns.and_then(|ns| ns.status.as_ref()?.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "NamespaceFinalizersRemaining"))
            .and_then(|c| c.message.clone())
    };
    let ns = tokio::time::timeout(
        Duration::from_secs(10),
        await_condition(
            namespaces.clone(),
            &namespace,
            move |ns: Option<&Namespace>| finalizers_remaining(ns).is_some(),
        ),
    )
    .await
    .expect("the namespace reports what holds it")
    .unwrap();
    let held = finalizers_remaining(ns.as_ref()).unwrap();
    assert!(held.contains("vfi-orchestrator.io/"), "{held}");
    // 3. Release the service's finalizers with the admin's kubeconfig.
    let release = tokio::process::Command::new(env!("CARGO_BIN_EXE_vfi-orchestrator"))
        .args(["release-finalizers", "--namespaces", &namespace])
        .env("KUBECONFIG", &kubeconfig)
        .output()
        .await
        .unwrap();
    assert!(
        release.status.success(),
        "{}",
        String::from_utf8_lossy(&release.stderr)
    );
    // 4. The namespace is gone (`kubectl wait --for=delete namespace/...`).
    tokio::time::timeout(
        Duration::from_secs(30),
        await_condition(namespaces, &namespace, |ns: Option<&Namespace>| {
            ns.is_none()
        }),
    )
    .await
    .expect("the namespace is deleted")
    .unwrap();
    sim.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("vfi-deploy-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
