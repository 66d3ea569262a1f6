//! The Kubernetes permissions the service needs in every namespace where Jobs run, in one
//! place: the self-check asks the API server for exactly these (one SelfSubjectAccessReview
//! per verb, resource and namespace), deploy/base/rbac.yaml grants exactly these (a test
//! compares the two), and what is missing is named in the start-up log and in `/readyz`.

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use kube::api::PostParams;
use kube::{Api, Client};
use std::sync::{Arc, RwLock};

/// Verbs on one resource (or subresource) of one API group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permission {
    /// API group; `""` is the core group.
    pub group: &'static str,
    pub resource: &'static str,
    pub subresource: Option<&'static str>,
    pub verbs: &'static [&'static str],
}

/// Everything the service does in a Job namespace.
pub const REQUIRED: &[Permission] = &[
    // Submit runs as Jobs, watch their status, cancel them, release the tracking finalizer.
    Permission {
        group: "batch",
        resource: "jobs",
        subresource: None,
        verbs: &["create", "get", "list", "watch", "delete", "patch"],
    },
    // Follow the Jobs' pods; patch only to release the log-capture finalizer.
    Permission {
        group: "",
        resource: "pods",
        subresource: None,
        verbs: &["get", "list", "watch", "patch"],
    },
    // Read and stream the pods' logs.
    Permission {
        group: "",
        resource: "pods",
        subresource: Some("log"),
        verbs: &["get"],
    },
    // Read the Job controller's FailedCreate Events: why a run's pods cannot be created.
    Permission {
        group: "",
        resource: "events",
        subresource: None,
        verbs: &["get", "list", "watch"],
    },
    // Secret parameters (issue 18): create each run's Secret, give it to the run's Job (patch),
    // read it back to mask the values in logs after a restart (get), find and delete the ones
    // no Job took (list, delete).
    Permission {
        group: "",
        resource: "secrets",
        subresource: None,
        verbs: &["create", "get", "list", "patch", "delete"],
    },
    // Read Kueue's Workloads: why a run given to a Kueue queue is held (never written).
    Permission {
        group: "kueue.x-k8s.io",
        resource: "workloads",
        subresource: None,
        verbs: &["list", "watch"],
    },
];

/// One permission the service lacks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    pub verb: String,
    /// `resource` or `resource/subresource`, with `.group` for a named group: `jobs.batch`,
    /// `pods/log`.
    pub resource: String,
    pub namespace: String,
}

impl std::fmt::Display for Missing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} in namespace {:?}",
            self.verb, self.resource, self.namespace
        )
    }
}

impl Permission {
    fn display(&self) -> String {
        let mut name = self.resource.to_string();
        if !self.group.is_empty() {
            name = format!("{name}.{}", self.group);
        }
        if let Some(sub) = self.subresource {
            name = format!("{name}/{sub}");
        }
        name
    }
}

/// The last self-check's answer, shared by the checking loop and `/readyz`. Unknown until a
/// check has been answered (an unreachable API server is not a missing permission).
#[derive(Debug, Clone, Default)]
pub struct PermissionStatus(Arc<RwLock<Option<Vec<Missing>>>>);

impl PermissionStatus {
    /// What the last answered check found missing (empty when none or not checked yet).
    pub fn missing(&self) -> Vec<Missing> {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_default()
    }

    /// Records a check's answer; true when it differs from the previous one.
    fn set(&self, missing: Vec<Missing>) -> bool {
        let mut slot = self.0.write().unwrap_or_else(|p| p.into_inner());
        let changed = slot.as_ref() != Some(&missing);
        *slot = Some(missing);
        changed
    }
}

/// Asks the API server, for each namespace, whether this service's identity may do each verb
/// of [`REQUIRED`]; records and returns what is missing. `Ok` with an empty list means all is
/// granted; `Err` means the API server did not answer (nothing is recorded).
pub async fn check(
    client: &Client,
    namespaces: &[String],
    status: &PermissionStatus,
) -> Result<(Vec<Missing>, bool), kube::Error> {
    let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let asks = namespaces.iter().flat_map(|namespace| {
        REQUIRED.iter().flat_map(move |permission| {
            permission
                .verbs
                .iter()
                .map(move |verb| (namespace.clone(), *permission, *verb))
        })
    });
    let answers = futures::future::join_all(asks.map(|(namespace, permission, verb)| {
        let api = api.clone();
        async move {
            let review = SelfSubjectAccessReview {
                spec: SelfSubjectAccessReviewSpec {
                    resource_attributes: Some(ResourceAttributes {
                        namespace: Some(namespace.clone()),
                        verb: Some(verb.to_string()),
                        group: Some(permission.group.to_string()),
                        resource: Some(permission.resource.to_string()),
                        subresource: permission.subresource.map(str::to_string),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                ..Default::default()
            };
            let answer = api.create(&PostParams::default(), &review).await?;
            let allowed = answer.status.is_some_and(|s| s.allowed);
            Ok::<_, kube::Error>((!allowed).then(|| Missing {
                verb: verb.to_string(),
                resource: permission.display(),
                namespace,
            }))
        }
    }))
    .await;
    let mut missing = Vec::new();
    for answer in answers {
        if let Some(m) = answer? {
            missing.push(m);
        }
    }
    let changed = status.set(missing.clone());
    Ok((missing, changed))
}

/// Logs a check's outcome: every missing permission as an error (when the answer changed, so
/// a periodic check does not repeat itself), its return as info.
pub fn report(result: &Result<(Vec<Missing>, bool), kube::Error>) {
    match result {
        Ok((missing, true)) if !missing.is_empty() => {
            let list: Vec<String> = missing.iter().map(ToString::to_string).collect();
            tracing::error!(
                missing = %list.join(", "),
                "the service account lacks Kubernetes permissions the service needs; grant them (see deploy/base/rbac.yaml)"
            );
        }
        Ok((_, true)) => {
            tracing::info!("the service account has every Kubernetes permission the service needs")
        }
        Ok((_, false)) => {}
        Err(error) => {
            tracing::warn!(error = %error, "cannot check the service's Kubernetes permissions")
        }
    }
}
