//! Creating, deleting and releasing the service's Jobs through the Kubernetes API.

use super::{keys, observe, ClusterSettings};
use k8s_openapi::api::batch::v1::Job;
use kube::api::{DeleteParams, PostParams, PropagationPolicy};
use kube::{Api, Client, ResourceExt};
use std::sync::Arc;
use uuid::Uuid;

/// The service's handle on the cluster.
#[derive(Clone)]
pub struct Cluster {
    pub client: Client,
    pub settings: Arc<ClusterSettings>,
    /// What the last permission self-check found missing.
    pub permissions: super::permissions::PermissionStatus,
}

/// How creating a run's Job ended.
#[derive(Debug)]
pub enum Created {
    /// A new Job.
    New { uid: Option<String> },
    /// The Job already existed and is this run's (an earlier attempt created it).
    Adopted { uid: Option<String> },
}

/// Why a Job could not be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// Worth retrying: the API server was unreachable, overloaded or failing.
    #[error("{0}")]
    Transient(String),
    /// Retrying cannot help: the API server refused the Job. `reason` is its Status reason.
    #[error("{message}")]
    Permanent { reason: String, message: String },
}

impl Cluster {
    /// A handle with no permission check made yet.
    pub fn new(client: Client, settings: ClusterSettings) -> Self {
        Cluster {
            client,
            settings: Arc::new(settings),
            permissions: Default::default(),
        }
    }

    /// Checks (and records) that this service may do everything it needs in every Job
    /// namespace, logging what is missing.
    pub async fn check_permissions(&self) {
        let result =
            super::permissions::check(&self.client, &self.settings.namespaces, &self.permissions)
                .await;
        super::permissions::report(&result);
    }

    pub fn jobs(&self, namespace: &str) -> Api<Job> {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// core/v1 Events in `namespace` (the Job controller's `FailedCreate`, ...).
    pub fn events(&self, namespace: &str) -> Api<k8s_openapi::api::core::v1::Event> {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// Creates `job` for `run_id`. A Job of that name that already exists is adopted when its
    /// labels say it is this run's of this installation, and refused otherwise; never a second.
    #[tracing::instrument(skip_all, fields(run_id = %run_id, job = job.metadata.name.as_deref()))]
    pub async fn create_job(&self, run_id: Uuid, job: &Job) -> Result<Created, CreateError> {
        let namespace = job.metadata.namespace.as_deref().unwrap_or("default");
        let api = self.jobs(namespace);
        match api.create(&PostParams::default(), job).await {
            Ok(created) => Ok(Created::New {
                uid: created.metadata.uid,
            }),
            Err(kube::Error::Api(status)) if status.is_already_exists() => {
                let existing = api.get(&job.name_any()).await.map_err(|e| classify(&e))?;
                let labels = existing.metadata.labels.as_ref();
                let ours = observe::run_id(labels) == Some(run_id)
                    && labels.and_then(|l| l.get(keys::INSTALLATION))
                        == Some(&self.settings.installation);
                if ours {
                    Ok(Created::Adopted {
                        uid: existing.metadata.uid,
                    })
                } else {
                    Err(CreateError::Permanent {
                        reason: "AlreadyExists".into(),
                        message: format!(
                            "a Job named {:?} already exists in namespace {namespace:?} and does not belong to this run",
                            job.name_any()
                        ),
                    })
                }
            }
            Err(error) => Err(classify(&error)),
        }
    }

    /// Deletes a Job and (in the background) its pods. A Job already gone is fine.
    #[tracing::instrument(skip(self))]
    pub async fn delete_job(&self, namespace: &str, name: &str) -> Result<(), kube::Error> {
        let params = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Background),
            ..Default::default()
        };
        match self.jobs(namespace).delete(name, &params).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.is_not_found() => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// Removes the service's tracking finalizer from a Job, once its outcome is recorded, and
    /// gives a Job without a `ttlSecondsAfterFinished` of its own `ttl` (when set), so that
    /// finished Jobs leave the cluster after it rather than staying until their run is pruned
    /// (the run, its pods' records and logs stay in the database).
    #[tracing::instrument(skip(self, job), fields(job = job.metadata.name.as_deref()))]
    pub async fn release_job(&self, job: &Job, ttl: Option<i32>) -> Result<(), kube::Error> {
        let namespace = job.metadata.namespace.as_deref().unwrap_or("default");
        let own_ttl = job
            .spec
            .as_ref()
            .and_then(|s| s.ttl_seconds_after_finished)
            .is_some();
        let also: Vec<serde_json::Value> = match ttl {
            Some(ttl) if !own_ttl => vec![serde_json::json!(
                {"op": "add", "path": "/spec/ttlSecondsAfterFinished", "value": ttl}
            )],
            _ => Vec::new(),
        };
        super::remove_finalizer(&self.jobs(namespace), job, keys::TRACKING_FINALIZER, &also).await
    }
}

/// Sorts an API error into "try again" and "give up, and tell the user why".
pub fn classify(error: &kube::Error) -> CreateError {
    match error {
        kube::Error::Api(status) => match status.code {
            429 | 500..=599 => CreateError::Transient(format!(
                "the Kubernetes API answered {} {}: {}",
                status.code, status.reason, status.message
            )),
            _ => CreateError::Permanent {
                reason: if status.reason.is_empty() {
                    format!("Http{}", status.code)
                } else {
                    status.reason.clone()
                },
                message: format!("the Kubernetes API refused the Job: {}", status.message),
            },
        },
        other => CreateError::Transient(format!("the Kubernetes API is unreachable: {other}")),
    }
}
