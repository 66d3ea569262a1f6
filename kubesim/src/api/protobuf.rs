//! Decoding of `application/vnd.kubernetes.protobuf` request bodies (what `kubectl create job`
//! sends): the `k8s\0` magic, a runtime.Unknown envelope, and the Job's protobuf bytes, converted
//! into k8s-openapi's Job for the fields the simulator understands (metadata, the Job spec's
//! scheduling and failure fields, and the pod template's containers, env and policies).

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Container, EnvVar, EnvVarSource, Namespace, ObjectFieldSelector, Pod, PodSpec, PodTemplateSpec,
    ResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_pb::api::batch::v1 as pbb;
use k8s_pb::api::core::v1 as pbc;
use k8s_pb::apimachinery::pkg::apis::meta::v1 as pbm;
use prost::Message;

use crate::error::Status;

const MAGIC: &[u8] = b"k8s\0";

fn opt_map(
    m: std::collections::BTreeMap<String, String>,
) -> Option<std::collections::BTreeMap<String, String>> {
    (!m.is_empty()).then_some(m)
}

/// Go's protobuf encodes empty (non-pointer) strings; in JSON they are omitted.
fn ne(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
}

fn opt_vec<T>(v: Vec<T>) -> Option<Vec<T>> {
    (!v.is_empty()).then_some(v)
}

fn meta(m: pbm::ObjectMeta) -> ObjectMeta {
    ObjectMeta {
        name: m.name.filter(|s| !s.is_empty()),
        generate_name: m.generate_name.filter(|s| !s.is_empty()),
        namespace: m.namespace.filter(|s| !s.is_empty()),
        labels: opt_map(m.labels),
        annotations: opt_map(m.annotations),
        finalizers: opt_vec(m.finalizers),
        resource_version: m.resource_version.filter(|s| !s.is_empty()),
        ..Default::default()
    }
}

fn env(e: pbc::EnvVar) -> EnvVar {
    EnvVar {
        name: e.name.unwrap_or_default(),
        value: ne(e.value),
        value_from: e.value_from.and_then(|vf| {
            vf.field_ref.map(|f| EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    api_version: ne(f.api_version),
                    field_path: f.field_path.unwrap_or_default(),
                }),
                ..Default::default()
            })
        }),
    }
}

fn quantities(
    m: std::collections::BTreeMap<String, k8s_pb::apimachinery::pkg::api::resource::Quantity>,
) -> Option<std::collections::BTreeMap<String, Quantity>> {
    let out: std::collections::BTreeMap<String, Quantity> = m
        .into_iter()
        .map(|(k, q)| (k, Quantity(q.string.unwrap_or_default())))
        .collect();
    opt_map_q(out)
}

fn opt_map_q(
    m: std::collections::BTreeMap<String, Quantity>,
) -> Option<std::collections::BTreeMap<String, Quantity>> {
    (!m.is_empty()).then_some(m)
}

fn container(c: pbc::Container) -> Container {
    Container {
        name: c.name.unwrap_or_default(),
        image: ne(c.image),
        command: opt_vec(c.command),
        args: opt_vec(c.args),
        working_dir: ne(c.working_dir),
        env: opt_vec(c.env.into_iter().map(env).collect()),
        resources: c.resources.map(|r| ResourceRequirements {
            limits: quantities(r.limits),
            requests: quantities(r.requests),
            ..Default::default()
        }),
        image_pull_policy: ne(c.image_pull_policy),
        termination_message_path: ne(c.termination_message_path),
        termination_message_policy: ne(c.termination_message_policy),
        stdin: c.stdin.filter(|b| *b),
        tty: c.tty.filter(|b| *b),
        ..Default::default()
    }
}

fn pod_spec(s: pbc::PodSpec) -> PodSpec {
    PodSpec {
        containers: s.containers.into_iter().map(container).collect(),
        init_containers: opt_vec(s.init_containers.into_iter().map(container).collect()),
        restart_policy: ne(s.restart_policy),
        termination_grace_period_seconds: s.termination_grace_period_seconds,
        active_deadline_seconds: s.active_deadline_seconds,
        dns_policy: ne(s.dns_policy),
        node_selector: opt_map(s.node_selector),
        service_account_name: ne(s.service_account_name),
        node_name: ne(s.node_name),
        scheduler_name: ne(s.scheduler_name),
        hostname: ne(s.hostname),
        ..Default::default()
    }
}

fn selector(s: pbm::LabelSelector) -> LabelSelector {
    LabelSelector {
        match_labels: opt_map(s.match_labels),
        match_expressions: None,
    }
}

fn job_spec(s: pbb::JobSpec) -> JobSpec {
    JobSpec {
        parallelism: s.parallelism,
        completions: s.completions,
        active_deadline_seconds: s.active_deadline_seconds,
        backoff_limit: s.backoff_limit,
        backoff_limit_per_index: s.backoff_limit_per_index,
        max_failed_indexes: s.max_failed_indexes,
        selector: s.selector.map(selector),
        manual_selector: s.manual_selector,
        template: s
            .template
            .map(|t| PodTemplateSpec {
                metadata: t.metadata.map(meta),
                spec: t.spec.map(pod_spec),
            })
            .unwrap_or_default(),
        ttl_seconds_after_finished: s.ttl_seconds_after_finished,
        completion_mode: ne(s.completion_mode),
        suspend: s.suspend,
        pod_replacement_policy: ne(s.pod_replacement_policy),
        managed_by: ne(s.managed_by),
        ..Default::default()
    }
}

/// Strips the magic and the runtime.Unknown envelope, checking the kind.
fn unwrap_unknown(body: &[u8], want: &str) -> Result<Vec<u8>, Status> {
    let rest = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| Status::bad_request("protobuf body does not start with the k8s magic"))?;
    let unknown = k8s_pb::apimachinery::pkg::runtime::Unknown::decode(rest)
        .map_err(|e| Status::bad_request(format!("decoding runtime.Unknown: {e}")))?;
    let tm = unknown.type_meta.unwrap_or_default();
    let kind = tm.kind.unwrap_or_default();
    if kind != want {
        return Err(Status::bad_request(format!(
            "the body of the request was of kind {kind:?}, expected {want}"
        )));
    }
    Ok(unknown.raw.unwrap_or_default())
}

/// Decodes a protobuf-encoded Job request body.
pub fn decode_job(body: &[u8]) -> Result<Job, Status> {
    let raw = unwrap_unknown(body, "Job")?;
    let pb = pbb::Job::decode(raw.as_slice())
        .map_err(|e| Status::bad_request(format!("decoding batch/v1 Job: {e}")))?;
    Ok(Job {
        metadata: pb.metadata.map(meta).unwrap_or_default(),
        spec: pb.spec.map(job_spec),
        status: None,
    })
}

/// Decodes a protobuf-encoded Pod request body (`kubectl run`).
pub fn decode_pod(body: &[u8]) -> Result<Pod, Status> {
    let raw = unwrap_unknown(body, "Pod")?;
    let pb = pbc::Pod::decode(raw.as_slice())
        .map_err(|e| Status::bad_request(format!("decoding v1 Pod: {e}")))?;
    Ok(Pod {
        metadata: pb.metadata.map(meta).unwrap_or_default(),
        spec: pb.spec.map(pod_spec),
        status: None,
    })
}

/// Decodes a protobuf-encoded Namespace request body (`kubectl create namespace`).
pub fn decode_namespace(body: &[u8]) -> Result<Namespace, Status> {
    let raw = unwrap_unknown(body, "Namespace")?;
    let pb = pbc::Namespace::decode(raw.as_slice())
        .map_err(|e| Status::bad_request(format!("decoding v1 Namespace: {e}")))?;
    Ok(Namespace {
        metadata: pb.metadata.map(meta).unwrap_or_default(),
        ..Default::default()
    })
}

/// Decodes a protobuf-encoded Secret request body (`kubectl create secret generic`); its
/// `stringData` is merged into `data` by the create path, as for JSON.
pub fn decode_secret(body: &[u8]) -> Result<k8s_openapi::api::core::v1::Secret, Status> {
    let raw = unwrap_unknown(body, "Secret")?;
    let pb = pbc::Secret::decode(raw.as_slice())
        .map_err(|e| Status::bad_request(format!("decoding v1 Secret: {e}")))?;
    let data: std::collections::BTreeMap<String, k8s_openapi::ByteString> = pb
        .data
        .into_iter()
        .map(|(k, v)| (k, k8s_openapi::ByteString(v)))
        .collect();
    Ok(k8s_openapi::api::core::v1::Secret {
        metadata: pb.metadata.map(meta).unwrap_or_default(),
        data: (!data.is_empty()).then_some(data),
        string_data: opt_map(pb.string_data),
        type_: ne(pb.r#type),
        immutable: pb.immutable,
    })
}

/// Decodes a protobuf-encoded ConfigMap request body (`kubectl create configmap`).
pub fn decode_config_map(body: &[u8]) -> Result<k8s_openapi::api::core::v1::ConfigMap, Status> {
    let raw = unwrap_unknown(body, "ConfigMap")?;
    let pb = pbc::ConfigMap::decode(raw.as_slice())
        .map_err(|e| Status::bad_request(format!("decoding v1 ConfigMap: {e}")))?;
    let binary: std::collections::BTreeMap<String, k8s_openapi::ByteString> = pb
        .binary_data
        .into_iter()
        .map(|(k, v)| (k, k8s_openapi::ByteString(v)))
        .collect();
    Ok(k8s_openapi::api::core::v1::ConfigMap {
        metadata: pb.metadata.map(meta).unwrap_or_default(),
        data: opt_map(pb.data),
        binary_data: (!binary.is_empty()).then_some(binary),
        immutable: pb.immutable,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protobuf_job_from_kubectl_decodes_into_a_job() {
        let pb = pbb::Job {
            metadata: Some(pbm::ObjectMeta {
                name: Some("pi".into()),
                ..Default::default()
            }),
            spec: Some(pbb::JobSpec {
                template: Some(pbc::PodTemplateSpec {
                    metadata: None,
                    spec: Some(pbc::PodSpec {
                        containers: vec![pbc::Container {
                            name: Some("pi".into()),
                            image: Some("perl:5.34.0".into()),
                            command: vec!["perl".into(), "-e".into(), "1".into()],
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
            content_encoding: Some(String::new()),
            content_type: Some(String::new()),
        };
        let mut body = MAGIC.to_vec();
        body.extend(unknown.encode_to_vec());
        let job = decode_job(&body).unwrap();
        assert_eq!(job.metadata.name.as_deref(), Some("pi"));
        let c = &job.spec.unwrap().template.spec.unwrap().containers[0];
        assert_eq!(c.image.as_deref(), Some("perl:5.34.0"));
        assert_eq!(c.command.as_ref().unwrap()[0], "perl");
    }
}
