//! Create-time defaulting and validation of Jobs, Pods and Namespaces, mirroring the real API
//! server's `SetDefaults_*`, `PrepareForCreate` (the generated Job selector) and `Validate*`
//! functions for the fields the simulator understands. Failures are collected as [`Cause`]s so
//! the 422 lists every problem with its field path, as the real server does. Pure: no store.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Container, Namespace, Pod, PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

use crate::error::{Cause, Status};

pub const CONTROLLER_UID: &str = "batch.kubernetes.io/controller-uid";
pub const LEGACY_CONTROLLER_UID: &str = "controller-uid";
pub const JOB_NAME: &str = "batch.kubernetes.io/job-name";
pub const LEGACY_JOB_NAME: &str = "job-name";
pub const COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";
pub const JOB_TRACKING_FINALIZER: &str = "batch.kubernetes.io/job-tracking";

const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";

fn is_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.')
            .all(|p| !p.is_empty() && p.len() <= 63 && is_label(p))
}

fn q(s: &str) -> String {
    format!("\"{s}\"")
}

/// `metadata.name` / `generateName` checks shared by every kind.
fn validate_name(meta: &ObjectMeta, label_only: bool, causes: &mut Vec<Cause>) {
    match meta.name.as_deref() {
        None | Some("") => {
            if meta.generate_name.as_deref().unwrap_or("").is_empty() {
                causes.push(Cause {
                    reason: "FieldValueRequired",
                    field: "metadata.name".into(),
                    message: "Required value: name or generateName is required".into(),
                });
            }
        }
        Some(n) => {
            let ok = if label_only {
                is_label(n)
            } else {
                is_dns1123_subdomain(n)
            };
            if !ok {
                let msg = if label_only {
                    DNS1123_LABEL_MSG
                } else {
                    DNS1123_SUBDOMAIN_MSG
                };
                causes.push(Cause::invalid("metadata.name", &q(n), msg));
            }
        }
    }
    for (k, v) in meta.labels.iter().flatten() {
        if v.len() > 63 {
            causes.push(Cause::invalid(
                "metadata.labels",
                &q(v),
                "must be no more than 63 characters",
            ));
        }
        if k.is_empty() {
            causes.push(Cause::invalid(
                "metadata.labels",
                &q(k),
                "name part must be non-empty",
            ));
        }
    }
}

/// `metadata.name` checks of a kind whose name is a DNS-1123 subdomain (Secrets, ConfigMaps,
/// PersistentVolumeClaims: `NameIsDNSSubdomain`).
pub fn validate_object_name(meta: &ObjectMeta, causes: &mut Vec<Cause>) {
    validate_name(meta, false, causes);
}

/// Fills `metadata.name` from `generateName` plus 5 random characters, as the server does.
pub fn apply_generate_name(meta: &mut ObjectMeta) {
    if meta.name.as_deref().unwrap_or("").is_empty() {
        if let Some(prefix) = meta.generate_name.as_deref().filter(|p| !p.is_empty()) {
            meta.name = Some(generate_name(prefix));
        }
    }
}

const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// `names.SimpleNameGenerator`: prefix truncated to 58 bytes, then 5 random characters.
pub fn generate_name(prefix: &str) -> String {
    use rand::Rng;
    let base: String = prefix.chars().take(58).collect();
    let mut rng = rand::rng();
    let suffix: String = (0..5)
        .map(|_| ALPHANUMS[rng.random_range(0..ALPHANUMS.len())] as char)
        .collect();
    format!("{base}{suffix}")
}

fn default_container(c: &mut Container) {
    if c.termination_message_path.is_none() {
        c.termination_message_path = Some("/dev/termination-log".into());
    }
    if c.termination_message_policy.is_none() {
        c.termination_message_policy = Some("File".into());
    }
    if c.image_pull_policy.is_none() {
        let image = c.image.clone().unwrap_or_default();
        let last = image.rsplit('/').next().unwrap_or("");
        let tag = if image.contains('@') {
            Some("digest")
        } else {
            last.split_once(':').map(|(_, t)| t)
        };
        c.image_pull_policy = Some(match tag {
            None | Some("latest") => "Always".into(),
            _ => "IfNotPresent".into(),
        });
    }
    if c.resources.is_none() {
        c.resources = Some(Default::default());
    }
}

pub fn default_pod_spec(spec: &mut PodSpec) {
    if spec.restart_policy.is_none() {
        spec.restart_policy = Some("Always".into());
    }
    if spec.termination_grace_period_seconds.is_none() {
        spec.termination_grace_period_seconds = Some(30);
    }
    if spec.dns_policy.is_none() {
        spec.dns_policy = Some("ClusterFirst".into());
    }
    if spec.scheduler_name.is_none() {
        spec.scheduler_name = Some("default-scheduler".into());
    }
    if spec.security_context.is_none() {
        spec.security_context = Some(Default::default());
    }
    for c in spec.containers.iter_mut() {
        default_container(c);
    }
    for c in spec.init_containers.iter_mut().flatten() {
        default_container(c);
    }
}

fn validate_pod_spec(spec: &PodSpec, path: &str, causes: &mut Vec<Cause>) {
    if spec.containers.is_empty() {
        causes.push(Cause::required(format!("{path}.containers")));
    }
    let mut seen = Vec::new();
    for (i, c) in spec.containers.iter().enumerate() {
        let cp = format!("{path}.containers[{i}]");
        if c.name.is_empty() {
            causes.push(Cause::required(format!("{cp}.name")));
        } else if !is_label(&c.name) {
            causes.push(Cause::invalid(
                format!("{cp}.name"),
                &q(&c.name),
                DNS1123_LABEL_MSG,
            ));
        } else if seen.contains(&c.name) {
            causes.push(Cause {
                reason: "FieldValueDuplicate",
                field: format!("{cp}.name"),
                message: format!("Duplicate value: {}", q(&c.name)),
            });
        }
        seen.push(c.name.clone());
        if c.image.as_deref().unwrap_or("").trim().is_empty() {
            causes.push(Cause::required(format!("{cp}.image")));
        }
        for (j, e) in c.env.iter().flatten().enumerate() {
            if e.name.is_empty() {
                causes.push(Cause::required(format!("{cp}.env[{j}].name")));
            }
            if let Some(from) = &e.value_from {
                validate_value_from(from, e, &format!("{cp}.env[{j}].valueFrom"), causes);
            }
        }
        for (j, from) in c.env_from.iter().flatten().enumerate() {
            validate_env_from(
                from,
                &format!("{cp}.envFrom[{j}]"),
                &format!("{cp}.envFrom"),
                causes,
            );
        }
    }
    for (i, v) in spec.volumes.iter().flatten().enumerate() {
        let vp = format!("{path}.volumes[{i}]");
        if !is_label(&v.name) {
            causes.push(Cause::invalid(
                format!("{vp}.name"),
                &q(&v.name),
                DNS1123_LABEL_MSG,
            ));
        }
        // ValidateVolumes: an ephemeral volume needs a claim template, validated as a claim.
        if let Some(e) = &v.ephemeral {
            match &e.volume_claim_template {
                None => causes.push(Cause::required(format!(
                    "{vp}.ephemeral.volumeClaimTemplate"
                ))),
                Some(t) => causes.extend(crate::configdata::pvc_spec_causes(
                    &t.spec,
                    &format!("{vp}.ephemeral.volumeClaimTemplate.spec"),
                )),
            }
        }
    }
    if let Some(ads) = spec.active_deadline_seconds {
        if ads <= 0 {
            causes.push(Cause::invalid(
                format!("{path}.activeDeadlineSeconds"),
                &ads.to_string(),
                "must be between 1 and 2147483647, inclusive",
            ));
        }
    }
    if let Some(g) = spec.termination_grace_period_seconds {
        if g < 0 {
            causes.push(Cause::invalid(
                format!("{path}.terminationGracePeriodSeconds"),
                &g.to_string(),
                "must be greater than or equal to 0",
            ));
        }
    }
}

/// `validateSecretKeySelector` / `validateConfigMapKeySelector`: a DNS-1123 subdomain name,
/// a key that passes `IsConfigMapKey`.
fn validate_key_selector(name: &str, key: &str, path: &str, causes: &mut Vec<Cause>) {
    if !is_dns1123_subdomain(name) {
        causes.push(Cause::invalid(
            format!("{path}.name"),
            &q(name),
            DNS1123_SUBDOMAIN_MSG,
        ));
    }
    if key.is_empty() {
        causes.push(Cause::required(format!("{path}.key")));
    } else {
        for msg in crate::configdata::config_key_errors(key) {
            causes.push(Cause::invalid(format!("{path}.key"), &q(key), msg));
        }
    }
}

/// `validateEnvVarValueFrom` (pkg/apis/core/validation/validation.go): one source, no `value`
/// beside it, and the selector's own checks.
fn validate_value_from(
    from: &k8s_openapi::api::core::v1::EnvVarSource,
    e: &k8s_openapi::api::core::v1::EnvVar,
    path: &str,
    causes: &mut Vec<Cause>,
) {
    let mut sources = 0;
    if from.field_ref.is_some() {
        sources += 1;
    }
    if from.resource_field_ref.is_some() {
        sources += 1;
    }
    if let Some(s) = &from.config_map_key_ref {
        sources += 1;
        validate_key_selector(&s.name, &s.key, &format!("{path}.configMapKeyRef"), causes);
    }
    if let Some(s) = &from.secret_key_ref {
        sources += 1;
        validate_key_selector(&s.name, &s.key, &format!("{path}.secretKeyRef"), causes);
    }
    let message = if sources == 0 {
        "must specify one of: `fieldRef`, `resourceFieldRef`, `configMapKeyRef` or `secretKeyRef`"
    } else if !e.value.as_deref().unwrap_or("").is_empty() {
        "may not be specified when `value` is not empty"
    } else if sources > 1 {
        "may not have more than one field specified at a time"
    } else {
        return;
    };
    causes.push(Cause::invalid(path, "\"\"", message));
}

/// `validateEnvFrom`: a prefix that is an env var name (`IsEnvVarName`), exactly one of
/// `configMapRef` / `secretRef` with a DNS-1123 subdomain name.
fn validate_env_from(
    from: &k8s_openapi::api::core::v1::EnvFromSource,
    path: &str,
    list_path: &str,
    causes: &mut Vec<Cause>,
) {
    if let Some(prefix) = from.prefix.as_deref().filter(|p| !p.is_empty()) {
        if !crate::kubelet::env::is_env_var_name(prefix) {
            causes.push(Cause::invalid(
                format!("{path}.prefix"),
                &q(prefix),
                "a valid environment variable name must consist of alphabetic characters, digits, '_', '-', or '.', and must not start with a digit (e.g. 'my.env-name',  or 'MY_ENV.NAME',  or 'MyEnvName1', regex used for validation is '[-._a-zA-Z][-._a-zA-Z0-9]*')",
            ));
        }
    }
    let refs = [
        from.config_map_ref
            .as_ref()
            .map(|r| ("configMapRef", &r.name)),
        from.secret_ref.as_ref().map(|r| ("secretRef", &r.name)),
    ];
    let mut sources = 0;
    for (field, name) in refs.into_iter().flatten() {
        sources += 1;
        if !is_dns1123_subdomain(name) {
            causes.push(Cause::invalid(
                format!("{path}.{field}.name"),
                &q(name),
                DNS1123_SUBDOMAIN_MSG,
            ));
        }
    }
    if sources == 0 {
        causes.push(Cause::invalid(
            list_path,
            "\"\"",
            "must specify one of: `configMapRef` or `secretRef`",
        ));
    } else if sources > 1 {
        causes.push(Cause::forbidden(
            list_path,
            "may not have more than one field specified at a time",
        ));
    }
}

fn nonneg(v: Option<i32>, field: &str, causes: &mut Vec<Cause>) {
    if let Some(v) = v {
        if v < 0 {
            causes.push(Cause::invalid(
                field,
                &v.to_string(),
                "must be greater than or equal to 0",
            ));
        }
    }
}

/// Defaulting of a Job about to be created (uid already assigned by the caller).
pub fn default_job(job: &mut Job, uid: &str) {
    job.metadata.uid = Some(uid.to_string());
    let name = job.metadata.name.clone().unwrap_or_default();
    let spec = job.spec.get_or_insert_with(Default::default);
    if spec.completions.is_none() && spec.parallelism.is_none() {
        spec.completions = Some(1);
        spec.parallelism = Some(1);
    }
    if spec.parallelism.is_none() {
        spec.parallelism = Some(1);
    }
    if spec.backoff_limit.is_none() {
        spec.backoff_limit = Some(if spec.backoff_limit_per_index.is_some() {
            i32::MAX
        } else {
            6
        });
    }
    if spec.completion_mode.is_none() {
        spec.completion_mode = Some("NonIndexed".into());
    }
    if spec.suspend.is_none() {
        spec.suspend = Some(false);
    }
    if spec.pod_replacement_policy.is_none() {
        spec.pod_replacement_policy = Some(if spec.pod_failure_policy.is_some() {
            "Failed".into()
        } else {
            "TerminatingOrFailed".into()
        });
    }
    if let Some(pfp) = spec.pod_failure_policy.as_mut() {
        for rule in pfp.rules.iter_mut() {
            for pc in rule.on_pod_conditions.iter_mut().flatten() {
                if pc.status.is_empty() {
                    pc.status = "True".into();
                }
            }
        }
    }
    // PrepareForCreate: the generated selector (manualSelector unset).
    if spec.manual_selector != Some(true) {
        spec.selector = Some(LabelSelector {
            match_labels: Some([(CONTROLLER_UID.to_string(), uid.to_string())].into()),
            ..Default::default()
        });
        // generateSelector (pkg/registry/batch/job/strategy.go) adds these labels only where the
        // user set none; a user's value is left for validation to refuse when it differs.
        let labels = spec
            .template
            .metadata
            .get_or_insert_with(Default::default)
            .labels
            .get_or_insert_with(BTreeMap::new);
        for (key, value) in generated_labels(&name, uid) {
            labels.entry(key.into()).or_insert(value);
        }
    }
    if let Some(ps) = spec.template.spec.as_mut() {
        default_pod_spec(ps);
    }
    // SetDefaults_Job copies template labels to a Job that has none.
    let tl = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone());
    if job.metadata.labels.as_ref().is_none_or(|l| l.is_empty()) {
        job.metadata.labels = tl;
    }
    job.metadata.generation = Some(1);
    job.status = Some(Default::default());
}

/// The pod-template labels a generated selector needs, with the values they must have.
fn generated_labels(name: &str, uid: &str) -> [(&'static str, String); 4] {
    [
        (LEGACY_CONTROLLER_UID, uid.to_string()),
        (LEGACY_JOB_NAME, name.to_string()),
        (CONTROLLER_UID, uid.to_string()),
        (JOB_NAME, name.to_string()),
    ]
}

/// `ValidateGeneratedSelector` (kubernetes/kubernetes pkg/apis/batch/validation/validation.go):
/// with a generated selector each controller label of the pod template must equal the Job's uid
/// or name (`ValidateHasLabel`), so a template that brings its own `job-name` etc. is a 422.
fn validate_generated_labels(job: &Job, causes: &mut Vec<Cause>) {
    let Some(spec) = job.spec.as_ref() else {
        return;
    };
    if spec.manual_selector == Some(true) {
        return;
    }
    let name = job.metadata.name.as_deref().unwrap_or("");
    let uid = job.metadata.uid.as_deref().unwrap_or("");
    let labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.as_ref());
    for (key, expected) in generated_labels(name, uid) {
        let field = format!("spec.template.metadata.labels[{key}]");
        match labels.and_then(|l| l.get(key)) {
            None => causes.push(Cause {
                reason: "FieldValueRequired",
                field,
                message: format!("Required value: must be '{expected}'"),
            }),
            Some(actual) if *actual != expected => causes.push(Cause::invalid(
                field,
                &q(actual),
                &format!("must be '{expected}'"),
            )),
            Some(_) => {}
        }
    }
}

pub fn validate_job(job: &Job) -> Result<(), Status> {
    let mut causes = Vec::new();
    validate_name(&job.metadata, false, &mut causes);
    let name = job.metadata.name.clone().unwrap_or_default();
    if name.len() > 63 && causes.is_empty() {
        causes.push(Cause::invalid(
            "metadata.name",
            &q(&name),
            "must be no more than 63 characters",
        ));
    }
    let Some(spec) = job.spec.as_ref() else {
        causes.push(Cause::required("spec.template"));
        return Err(Status::invalid("Job", "batch", &name, causes));
    };
    nonneg(spec.parallelism, "spec.parallelism", &mut causes);
    nonneg(spec.completions, "spec.completions", &mut causes);
    nonneg(spec.backoff_limit, "spec.backoffLimit", &mut causes);
    nonneg(
        spec.ttl_seconds_after_finished,
        "spec.ttlSecondsAfterFinished",
        &mut causes,
    );
    if let Some(ads) = spec.active_deadline_seconds {
        if ads < 0 {
            causes.push(Cause::invalid(
                "spec.activeDeadlineSeconds",
                &ads.to_string(),
                "must be greater than or equal to 0",
            ));
        }
    }
    let mode = spec.completion_mode.as_deref().unwrap_or("NonIndexed");
    match mode {
        "NonIndexed" => {}
        "Indexed" => match spec.completions {
            None => causes.push(Cause {
                reason: "FieldValueRequired",
                field: "spec.completions".into(),
                message: "Required value: when completion mode is Indexed".into(),
            }),
            // ValidateJob: the controller names pods' hostnames `<name>-<index>`, which must be
            // a DNS label, so the largest index decides.
            Some(c) if c > 0 => {
                let hostname = format!("{name}-{}", c - 1);
                if !is_label(&hostname) {
                    causes.push(Cause::invalid(
                        "metadata.name",
                        &q(&name),
                        &format!("will not able to create pod with invalid DNS label: {hostname}"),
                    ));
                }
            }
            Some(_) => {}
        },
        other => causes.push(Cause::not_supported(
            "spec.completionMode",
            other,
            &["NonIndexed", "Indexed"],
        )),
    }
    validate_generated_labels(job, &mut causes);
    let template_labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.as_ref());
    match spec.selector.as_ref() {
        None => causes.push(Cause::required("spec.selector")),
        Some(sel) => {
            let ok = sel
                .match_labels
                .iter()
                .flatten()
                .all(|(k, v)| template_labels.and_then(|l| l.get(k)) == Some(v));
            if !ok {
                causes.push(Cause::invalid(
                    "spec.template.metadata.labels",
                    &format!("{template_labels:?}"),
                    "`selector` does not match template `labels`",
                ));
            }
        }
    }
    match spec.template.spec.as_ref() {
        None => causes.push(Cause::required("spec.template.spec.containers")),
        Some(ps) => {
            validate_pod_spec(ps, "spec.template.spec", &mut causes);
            let rp = ps.restart_policy.as_deref().unwrap_or("Always");
            if rp != "Never" && rp != "OnFailure" {
                causes.push(Cause::not_supported(
                    "spec.template.spec.restartPolicy",
                    rp,
                    &["OnFailure", "Never"],
                ));
            } else if spec.pod_failure_policy.is_some() && rp != "Never" {
                causes.push(Cause::invalid(
                    "spec.template.spec.restartPolicy",
                    &q(rp),
                    "only \"Never\" is supported when podFailurePolicy is specified",
                ));
            }
        }
    }
    validate_failure_handling(spec, &mut causes);
    if causes.is_empty() {
        Ok(())
    } else {
        Err(Status::invalid("Job", "batch", &name, causes))
    }
}

/// Checks an update of a Job against the stored one: the fields the real server keeps immutable.
pub fn validate_job_update(old: &Job, new: &Job) -> Result<(), Status> {
    let mut causes = Vec::new();
    let (os, ns) = (
        old.spec.clone().unwrap_or_default(),
        new.spec.clone().unwrap_or_default(),
    );
    if os.selector != ns.selector {
        causes.push(Cause::invalid(
            "spec.selector",
            "{...}",
            "field is immutable",
        ));
    }
    if os.completion_mode != ns.completion_mode {
        causes.push(Cause::invalid(
            "spec.completionMode",
            "\"\"",
            "field is immutable",
        ));
    }
    if os.completions != ns.completions {
        causes.push(Cause::invalid(
            "spec.completions",
            &ns.completions.map(|c| c.to_string()).unwrap_or_default(),
            "field is immutable",
        ));
    }
    if strip_template(&os.template) != strip_template(&ns.template) {
        causes.push(Cause::invalid(
            "spec.template",
            "{...}",
            "field is immutable",
        ));
    }
    nonneg(ns.parallelism, "spec.parallelism", &mut causes);
    nonneg(ns.backoff_limit, "spec.backoffLimit", &mut causes);
    if causes.is_empty() {
        Ok(())
    } else {
        Err(Status::invalid(
            "Job",
            "batch",
            old.metadata.name.as_deref().unwrap_or(""),
            causes,
        ))
    }
}

fn strip_template(t: &PodTemplateSpec) -> serde_json::Value {
    serde_json::to_value(t).unwrap_or_default()
}

pub fn default_pod(pod: &mut Pod) {
    if let Some(spec) = pod.spec.as_mut() {
        default_pod_spec(spec);
    }
    if pod.status.is_none() {
        pod.status = Some(k8s_openapi::api::core::v1::PodStatus {
            phase: Some("Pending".into()),
            qos_class: Some("BestEffort".into()),
            ..Default::default()
        });
    }
}

pub fn validate_pod(pod: &Pod) -> Result<(), Status> {
    let mut causes = Vec::new();
    validate_name(&pod.metadata, false, &mut causes);
    match pod.spec.as_ref() {
        None => causes.push(Cause::required("spec.containers")),
        Some(spec) => {
            validate_pod_spec(spec, "spec", &mut causes);
            let rp = spec.restart_policy.as_deref().unwrap_or("Always");
            if !["Always", "OnFailure", "Never"].contains(&rp) {
                causes.push(Cause::not_supported(
                    "spec.restartPolicy",
                    rp,
                    &["Always", "OnFailure", "Never"],
                ));
            }
        }
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(Status::invalid(
            "Pod",
            "",
            pod.metadata.name.as_deref().unwrap_or(""),
            causes,
        ))
    }
}

pub fn default_namespace(ns: &mut Namespace) {
    let name = ns.metadata.name.clone().unwrap_or_default();
    ns.metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert("kubernetes.io/metadata.name".into(), name);
    ns.spec = Some(k8s_openapi::api::core::v1::NamespaceSpec {
        finalizers: Some(vec!["kubernetes".into()]),
    });
    ns.status = Some(k8s_openapi::api::core::v1::NamespaceStatus {
        phase: Some("Active".into()),
        ..Default::default()
    });
}

pub fn validate_namespace(ns: &Namespace) -> Result<(), Status> {
    let mut causes = Vec::new();
    validate_name(&ns.metadata, true, &mut causes);
    if causes.is_empty() {
        Ok(())
    } else {
        Err(Status::invalid(
            "Namespace",
            "",
            ns.metadata.name.as_deref().unwrap_or(""),
            causes,
        ))
    }
}

/// podFailurePolicy, backoffLimitPerIndex and maxFailedIndexes as kube-apiserver validates them
/// (`validatePodFailurePolicy`, `validatePodFailurePolicyRule`,
/// `validatePodFailurePolicyRuleOnExitCodes` and `validateJobSpec` in kubernetes/kubernetes
/// pkg/apis/batch/validation/validation.go; limits from the batch/v1 API reference: at most 20
/// rules, 255 exit codes, 20 condition patterns; FailIndex only with backoffLimitPerIndex).
fn validate_failure_handling(spec: &k8s_openapi::api::batch::v1::JobSpec, causes: &mut Vec<Cause>) {
    const MAX_RULES: usize = 20;
    const MAX_VALUES: usize = 255;
    const MAX_PATTERNS: usize = 20;
    const MAX_FAILED_INDEXES: i32 = 100_000;
    let indexed = spec.completion_mode.as_deref() == Some("Indexed");
    if let Some(limit) = spec.backoff_limit_per_index {
        nonneg(Some(limit), "spec.backoffLimitPerIndex", causes);
        if !indexed {
            causes.push(Cause::invalid(
                "spec.backoffLimitPerIndex",
                &limit.to_string(),
                "requires indexed completion mode",
            ));
        }
        if spec.completions.is_some_and(|c| c > MAX_FAILED_INDEXES) {
            causes.push(Cause::invalid(
                "spec.completions",
                &spec.completions.unwrap_or(0).to_string(),
                "must be less than or equal to 100000 when backoffLimitPerIndex is specified",
            ));
        }
    }
    if let Some(max) = spec.max_failed_indexes {
        if spec.backoff_limit_per_index.is_none() {
            causes.push(Cause {
                reason: "FieldValueRequired",
                field: "spec.backoffLimitPerIndex".into(),
                message: "Required value: when maxFailedIndexes is specified".into(),
            });
        }
        if max < 0 {
            causes.push(Cause::invalid(
                "spec.maxFailedIndexes",
                &max.to_string(),
                "must be greater than or equal to 0",
            ));
        } else if max > MAX_FAILED_INDEXES {
            causes.push(Cause::invalid(
                "spec.maxFailedIndexes",
                &max.to_string(),
                "must be less than or equal to 100000",
            ));
        } else if spec.completions.is_some_and(|c| max > c) {
            causes.push(Cause::invalid(
                "spec.maxFailedIndexes",
                &max.to_string(),
                "must be less than or equal to completions",
            ));
        }
    }
    let Some(pfp) = spec.pod_failure_policy.as_ref() else {
        return;
    };
    if pfp.rules.len() > MAX_RULES {
        causes.push(Cause {
            reason: "FieldValueTooMany",
            field: "spec.podFailurePolicy.rules".into(),
            message: format!(
                "Too many: {}: must have at most {MAX_RULES} items",
                pfp.rules.len()
            ),
        });
    }
    let containers: Vec<String> = spec
        .template
        .spec
        .iter()
        .flat_map(|ps| {
            ps.containers
                .iter()
                .chain(ps.init_containers.iter().flatten())
        })
        .map(|c| c.name.clone())
        .collect();
    for (i, r) in pfp.rules.iter().enumerate() {
        let f = format!("spec.podFailurePolicy.rules[{i}]");
        match r.action.as_str() {
            "FailJob" | "Ignore" | "Count" => {}
            "FailIndex" => {
                if spec.backoff_limit_per_index.is_none() {
                    causes.push(Cause::invalid(
                        format!("{f}.action"),
                        "\"FailIndex\"",
                        "requires the backoffLimitPerIndex to be set",
                    ));
                }
            }
            other => causes.push(Cause::not_supported(
                format!("{f}.action"),
                other,
                &["Count", "FailIndex", "FailJob", "Ignore"],
            )),
        }
        let patterns = r.on_pod_conditions.as_deref().unwrap_or_default();
        match (r.on_exit_codes.as_ref(), patterns.is_empty()) {
            (Some(_), false) => causes.push(Cause::invalid(
                f.clone(),
                "\"\"",
                "specifying both OnExitCodes and OnPodConditions is not supported",
            )),
            (None, true) => causes.push(Cause::invalid(
                f.clone(),
                "\"\"",
                "specifying one of OnExitCodes and OnPodConditions is required",
            )),
            _ => {}
        }
        if let Some(oe) = r.on_exit_codes.as_ref() {
            let g = format!("{f}.onExitCodes");
            if let Some(c) = oe.container_name.as_deref() {
                if !containers.iter().any(|n| n == c) {
                    causes.push(Cause::invalid(
                        format!("{g}.containerName"),
                        &q(c),
                        "must be one of the container or initContainer names in the pod template",
                    ));
                }
            }
            if oe.operator != "In" && oe.operator != "NotIn" {
                causes.push(Cause::not_supported(
                    format!("{g}.operator"),
                    &oe.operator,
                    &["In", "NotIn"],
                ));
            }
            if oe.values.is_empty() {
                causes.push(Cause::required(format!("{g}.values")));
            }
            if oe.values.len() > MAX_VALUES {
                causes.push(Cause {
                    reason: "FieldValueTooMany",
                    field: format!("{g}.values"),
                    message: format!(
                        "Too many: {}: must have at most {MAX_VALUES} items",
                        oe.values.len()
                    ),
                });
            }
            for (j, v) in oe.values.iter().enumerate() {
                if oe.operator == "In" && *v == 0 {
                    causes.push(Cause::invalid(
                        format!("{g}.values[{j}]"),
                        "0",
                        "must not be 0 for the In operator",
                    ));
                }
                if j > 0 {
                    let prev = oe.values[j - 1];
                    if prev == *v {
                        causes.push(Cause {
                            reason: "FieldValueDuplicate",
                            field: format!("{g}.values[{j}]"),
                            message: format!("Duplicate value: {v}"),
                        });
                    } else if prev > *v {
                        causes.push(Cause::invalid(
                            format!("{g}.values[{j}]"),
                            &v.to_string(),
                            "must be ordered",
                        ));
                    }
                }
            }
        }
        if patterns.len() > MAX_PATTERNS {
            causes.push(Cause {
                reason: "FieldValueTooMany",
                field: format!("{f}.onPodConditions"),
                message: format!(
                    "Too many: {}: must have at most {MAX_PATTERNS} items",
                    patterns.len()
                ),
            });
        }
        for (j, p) in patterns.iter().enumerate() {
            if !["True", "False", "Unknown"].contains(&p.status.as_str()) {
                causes.push(Cause::not_supported(
                    format!("{f}.onPodConditions[{j}].status"),
                    &p.status,
                    &["False", "True", "Unknown"],
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::batch::v1::JobSpec;

    fn job(name: &str, containers: Vec<Container>, restart: Option<&str>) -> Job {
        Job {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(JobSpec {
                template: PodTemplateSpec {
                    metadata: None,
                    spec: Some(PodSpec {
                        containers,
                        restart_policy: restart.map(Into::into),
                        ..Default::default()
                    }),
                },
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn defaulted_job_gets_generated_selector_and_counts() {
        let mut j = pi();
        default_job(&mut j, "u1");
        let s = j.spec.as_ref().unwrap();
        assert_eq!(s.completions, Some(1));
        assert_eq!(s.parallelism, Some(1));
        assert_eq!(s.backoff_limit, Some(6));
        assert_eq!(s.completion_mode.as_deref(), Some("NonIndexed"));
        assert_eq!(
            s.selector.as_ref().unwrap().match_labels.as_ref().unwrap()[CONTROLLER_UID],
            "u1"
        );
        assert_eq!(j.metadata.labels.as_ref().unwrap()[JOB_NAME], "pi");
        assert!(validate_job(&j).is_ok());
    }

    #[test]
    fn job_without_image_and_with_always_restart_is_invalid_with_both_causes() {
        let mut j = job(
            "pi",
            vec![Container {
                name: "c".into(),
                ..Default::default()
            }],
            None,
        );
        default_job(&mut j, "u1");
        assert_eq!(
            cause_fields(validate_job(&j).unwrap_err()),
            vec![
                "spec.template.spec.containers[0].image",
                "spec.template.spec.restartPolicy"
            ]
        );
    }

    fn pi() -> Job {
        job(
            "pi",
            vec![Container {
                name: "c".into(),
                image: Some("busybox".into()),
                ..Default::default()
            }],
            Some("Never"),
        )
    }

    fn cause_fields(err: Status) -> Vec<String> {
        err.details.unwrap()["causes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["field"].as_str().unwrap().to_string())
            .collect()
    }

    /// pkg/apis/batch/validation/validation.go `ValidateGeneratedSelector`: a user's `job-name`
    /// that differs from the Job's name is a 422, not silently overwritten.
    #[test]
    fn user_set_controller_labels_that_differ_are_invalid() {
        for key in [
            LEGACY_JOB_NAME,
            JOB_NAME,
            LEGACY_CONTROLLER_UID,
            CONTROLLER_UID,
        ] {
            let mut j = pi();
            j.metadata.uid = Some("u1".into());
            j.spec.as_mut().unwrap().template.metadata = Some(ObjectMeta {
                labels: Some([(key.to_string(), "mine".to_string())].into()),
                ..Default::default()
            });
            default_job(&mut j, "u1");
            let fields = cause_fields(validate_job(&j).unwrap_err());
            assert!(
                fields.contains(&format!("spec.template.metadata.labels[{key}]")),
                "{key}: {fields:?}"
            );
        }
        // The same value as the server would set is accepted, as by a real server.
        let mut j = pi();
        j.metadata.uid = Some("u1".into());
        j.spec.as_mut().unwrap().template.metadata = Some(ObjectMeta {
            labels: Some([(LEGACY_JOB_NAME.to_string(), "pi".to_string())].into()),
            ..Default::default()
        });
        default_job(&mut j, "u1");
        assert!(validate_job(&j).is_ok());
    }

    /// pkg/apis/batch/validation/validation.go `ValidateJob`: `<name>-<completions-1>` must be a
    /// DNS label.
    #[test]
    fn indexed_job_whose_last_hostname_is_too_long_is_invalid() {
        let mut j = pi();
        j.metadata.name = Some("a".repeat(61));
        j.metadata.uid = Some("u".into());
        let spec = j.spec.as_mut().unwrap();
        spec.completion_mode = Some("Indexed".into());
        spec.completions = Some(100);
        default_job(&mut j, "u");
        // 61 characters + "-99" = 64.
        assert_eq!(
            cause_fields(validate_job(&j).unwrap_err()),
            ["metadata.name"]
        );
        j.spec.as_mut().unwrap().completions = Some(10);
        assert!(validate_job(&j).is_ok());
    }

    #[test]
    fn bad_names_are_rejected() {
        assert!(!is_dns1123_subdomain("Bad_Name"));
        assert!(is_dns1123_subdomain("a.b-c"));
        let mut j = job(
            &"a".repeat(64),
            vec![Container {
                name: "c".into(),
                image: Some("i".into()),
                ..Default::default()
            }],
            Some("Never"),
        );
        default_job(&mut j, "u");
        assert!(validate_job(&j).is_err());
    }
}
