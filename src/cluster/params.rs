//! A run's parameters in the cluster (issue 18): the env vars they become in the Job's
//! container (rendering, pure), and the Kubernetes Secret that holds the run's secret parameter
//! values (create, give to the Job, read back for masking, delete).
//!
//! The Secret is the only place a secret value is kept: it is created in the run's namespace
//! before the run is recorded, named after the run id and labelled with it, referenced from the
//! container by `secretKeyRef`, and once the Job exists owned by it (so Kubernetes' garbage
//! collector deletes it with the Job). A run whose Job is never created has its Secret deleted by
//! whoever ends it (launcher, canceller) and, after a crash in between, by the sweep.

use super::jobs::Cluster;
use super::{keys, ClusterSettings};
use crate::domain::params::{self, RunParams, SecretValue};
use crate::domain::Run;
use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, Secret, SecretKeySelector};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::ByteString;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::Api;
use std::collections::BTreeMap;
use uuid::Uuid;

/// The name of a run's Secret: derived from the run id, so every replica finds it.
pub fn secret_name(run: Uuid) -> String {
    format!("vfi-params-{run}")
}

/// The env vars a run's parameters become: `VFI_PARAM_<NAME>` with the value, or for a secret
/// parameter a `secretKeyRef` to the run's Secret (the service never renders a secret value).
pub fn env(run_id: Uuid, params: &RunParams) -> Vec<EnvVar> {
    params
        .iter()
        .map(|(name, param)| EnvVar {
            name: params::env_name(name),
            value: param.env_value().filter(|_| !param.is_secret()),
            value_from: param.is_secret().then(|| EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: secret_name(run_id),
                    key: name.clone(),
                    optional: Some(false),
                }),
                ..Default::default()
            }),
        })
        .collect()
}

/// The env var a scheduled run (or a backfill's) finds its scheduled time in (RFC 3339, UTC).
pub const SCHEDULED_TIME_ENV: &str = "VFI_SCHEDULED_TIME";

/// `env` with the run's parameter env vars (and a scheduled run's `VFI_SCHEDULED_TIME`) added;
/// a template var of the same name is replaced (the parameter wins, as its value was checked
/// against its definition).
pub fn with_param_env(env: Option<Vec<EnvVar>>, run: &Run) -> Option<Vec<EnvVar>> {
    if run.params.is_empty() && run.scheduled_time.is_none() {
        return env;
    }
    let mut params = self::env(run.id, &run.params);
    if let Some(time) = run.scheduled_time {
        params.push(EnvVar {
            name: SCHEDULED_TIME_ENV.into(),
            value: Some(time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
            value_from: None,
        });
    }
    let mut env: Vec<EnvVar> = env
        .unwrap_or_default()
        .into_iter()
        .filter(|e| !params.iter().any(|p| p.name == e.name))
        .collect();
    env.extend(params);
    Some(env)
}

/// The Secret holding a run's secret parameter values, in `namespace`.
pub fn render_secret(
    settings: &ClusterSettings,
    run_id: Uuid,
    task: Option<&str>,
    namespace: &str,
    secrets: &BTreeMap<String, SecretValue>,
) -> Secret {
    let mut labels = BTreeMap::from([
        (
            keys::INSTALLATION.to_string(),
            settings.installation.clone(),
        ),
        (keys::RUN_ID.to_string(), run_id.to_string()),
        (keys::MANAGED_BY.to_string(), keys::MANAGER.to_string()),
    ]);
    if let Some(task) = task {
        labels.insert(keys::TASK.to_string(), task.to_string());
    }
    Secret {
        metadata: ObjectMeta {
            name: Some(secret_name(run_id)),
            namespace: Some(namespace.to_string()),
            labels: Some(labels),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        immutable: Some(true),
        data: Some(
            secrets
                .iter()
                .map(|(name, value)| (name.clone(), ByteString(value.expose().as_bytes().to_vec())))
                .collect(),
        ),
        ..Default::default()
    }
}

impl Cluster {
    fn secrets(&self, namespace: &str) -> Api<Secret> {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// Creates the run's Secret (an existing one of the same run is adopted: a retry).
    pub async fn create_param_secret(
        &self,
        run_id: Uuid,
        task: Option<&str>,
        namespace: &str,
        secrets: &BTreeMap<String, SecretValue>,
    ) -> Result<(), kube::Error> {
        let secret = render_secret(&self.settings, run_id, task, namespace, secrets);
        match self
            .secrets(namespace)
            .create(&PostParams::default(), &secret)
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// Makes the run's Job the owner of its Secret, so that garbage collection deletes the
    /// Secret with the Job. A run without a Secret is fine.
    pub async fn give_param_secret_to_job(
        &self,
        run_id: Uuid,
        namespace: &str,
        job_name: &str,
        job_uid: &str,
    ) -> Result<(), kube::Error> {
        let owner = OwnerReference {
            api_version: "batch/v1".into(),
            kind: "Job".into(),
            name: job_name.to_string(),
            uid: job_uid.to_string(),
            controller: Some(false),
            block_owner_deletion: Some(false),
        };
        let patch = serde_json::json!({"metadata": {"ownerReferences": [owner]}});
        match self
            .secrets(namespace)
            .patch(
                &secret_name(run_id),
                &PatchParams::default(),
                &Patch::Merge(patch),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.is_not_found() => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// Deletes the run's Secret (gone already is fine).
    pub async fn delete_param_secret(
        &self,
        run_id: Uuid,
        namespace: &str,
    ) -> Result<(), kube::Error> {
        match self
            .secrets(namespace)
            .delete(&secret_name(run_id), &DeleteParams::default())
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.is_not_found() => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// The run's secret parameter values, read back from its Secret (for masking logs); empty
    /// when it has none or it is gone.
    pub async fn param_secret_values(
        &self,
        run_id: Uuid,
        namespace: &str,
    ) -> Result<Vec<Vec<u8>>, kube::Error> {
        let secret = self
            .secrets(namespace)
            .get_opt(&secret_name(run_id))
            .await?;
        Ok(secret
            .and_then(|s| s.data)
            .map(|data| data.into_values().map(|v| v.0).collect())
            .unwrap_or_default())
    }

    /// This installation's parameter Secrets in `namespace` that no Job owns, as their run ids
    /// and creation times (for the sweep).
    pub async fn unowned_param_secrets(
        &self,
        namespace: &str,
    ) -> Result<Vec<(Uuid, Option<chrono::DateTime<chrono::Utc>>)>, kube::Error> {
        let list = self
            .secrets(namespace)
            .list_metadata(&ListParams::default().labels(&self.settings.selector()))
            .await?;
        Ok(list
            .items
            .into_iter()
            .filter(|s| {
                s.metadata
                    .owner_references
                    .as_ref()
                    .is_none_or(Vec::is_empty)
            })
            .filter(|s| {
                s.metadata
                    .name
                    .as_deref()
                    .is_some_and(|n| n.starts_with("vfi-params-"))
            })
            .filter_map(|s| {
                let created = s
                    .metadata
                    .creation_timestamp
                    .as_ref()
                    .map(super::observe::to_utc);
                let run = s.metadata.labels?.get(keys::RUN_ID)?.parse().ok()?;
                Some((run, created))
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::params::RecordedParam;
    use serde_json::json;

    #[test]
    fn plain_values_become_env_and_secret_ones_a_secret_key_ref_to_the_runs_secret() {
        let run = Uuid::nil();
        let params: RunParams = [
            (
                "target".to_string(),
                RecordedParam {
                    value: Some(json!("staging")),
                    sha256: None,
                },
            ),
            (
                "count".to_string(),
                RecordedParam {
                    value: Some(json!(3)),
                    sha256: None,
                },
            ),
            (
                "token".to_string(),
                RecordedParam {
                    value: None,
                    sha256: Some("ab".into()),
                },
            ),
        ]
        .into();
        let env = env(run, &params);
        let rendered = serde_json::to_value(&env).unwrap();
        assert_eq!(
            rendered,
            json!([
                {"name": "VFI_PARAM_COUNT", "value": "3"},
                {"name": "VFI_PARAM_TARGET", "value": "staging"},
                {"name": "VFI_PARAM_TOKEN", "valueFrom": {"secretKeyRef": {
                    "name": format!("vfi-params-{run}"), "key": "token", "optional": false}}}
            ])
        );
    }

    #[test]
    fn the_secret_is_named_and_labelled_after_the_run() {
        let settings = ClusterSettings {
            installation: "prod".into(),
            namespaces: vec!["batch".into()],
            job_name_prefix: String::new(),
            run_as_non_root: false,
        };
        let id = Uuid::now_v7();
        let values = [("token".to_string(), SecretValue::new("hunter2"))].into();
        let secret = render_secret(&settings, id, Some("deploy"), "batch", &values);
        assert_eq!(secret.metadata.name.unwrap(), format!("vfi-params-{id}"));
        assert_eq!(
            secret.metadata.labels.unwrap()[keys::RUN_ID],
            id.to_string()
        );
        assert_eq!(secret.data.unwrap()["token"].0, b"hunter2");
    }
}
