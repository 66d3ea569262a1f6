//! API behaviour of core/v1 Secrets, ConfigMaps and PersistentVolumeClaims: their [`ApiKind`]
//! rules (conversion, defaulting and validation from [`crate::configdata`]) and their
//! server-side printing (`secretColumnDefinitions`, `configMapColumnDefinitions`,
//! `persistentVolumeClaimColumnDefinitions` in kubernetes/kubernetes
//! pkg/printers/internalversion/printers.go: what `kubectl get secret|configmap|pvc` shows).
//!
//! All three are deleted at once with background propagation by default, as any namespaced
//! built-in kind but Jobs (PVC protection's `kubernetes.io/pvc-protection` finalizer is not
//! simulated: kubesim/README.md lists that deviation).

use axum::body::Bytes;
use axum::http::HeaderMap;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Secret};
use serde_json::{json, Value};

use super::kinds::{gc_finalizers, protobuf_or_json, ApiKind, DeleteOpts, DeletePlan};
use super::tables::{age, col, Tabled};
use crate::configdata as cd;
use crate::error::Status;

fn background(opts: &DeleteOpts) -> DeletePlan {
    DeletePlan {
        grace: 0,
        finalizers: gc_finalizers(opts, "Background"),
        warning: None,
    }
}

impl ApiKind for Secret {
    const LIST_KIND: &'static str = "SecretList";

    fn decode_create(headers: &HeaderMap, body: &Bytes) -> Result<Self, Status> {
        protobuf_or_json(headers, body, super::protobuf::decode_secret)
    }

    fn prepare_create(obj: &mut Self, _uid: &str) -> Result<(), Status> {
        cd::default_secret(obj);
        cd::validate_secret(obj)
    }

    fn prepare_update(old: &Self, new: &mut Self) -> Result<(), Status> {
        cd::default_secret(new);
        cd::validate_secret_update(old, new)
    }

    fn delete_plan(_obj: &Self, opts: &DeleteOpts) -> DeletePlan {
        background(opts)
    }
}

impl ApiKind for ConfigMap {
    const LIST_KIND: &'static str = "ConfigMapList";

    fn decode_create(headers: &HeaderMap, body: &Bytes) -> Result<Self, Status> {
        protobuf_or_json(headers, body, super::protobuf::decode_config_map)
    }

    fn prepare_create(obj: &mut Self, _uid: &str) -> Result<(), Status> {
        cd::validate_config_map(obj)
    }

    fn prepare_update(old: &Self, new: &mut Self) -> Result<(), Status> {
        cd::validate_config_map_update(old, new)
    }

    fn delete_plan(_obj: &Self, opts: &DeleteOpts) -> DeletePlan {
        background(opts)
    }
}

impl ApiKind for PersistentVolumeClaim {
    const LIST_KIND: &'static str = "PersistentVolumeClaimList";

    fn prepare_create(obj: &mut Self, _uid: &str) -> Result<(), Status> {
        obj.status = None;
        cd::default_pvc(obj);
        cd::validate_pvc(obj)
    }

    fn prepare_update(old: &Self, new: &mut Self) -> Result<(), Status> {
        // Status is the volume controller's.
        new.status = old.status.clone();
        if let Some(spec) = new.spec.as_mut() {
            if spec.volume_mode.is_none() {
                spec.volume_mode = Some("Filesystem".into());
            }
        }
        cd::validate_pvc_update(old, new)
    }

    fn delete_plan(_obj: &Self, opts: &DeleteOpts) -> DeletePlan {
        background(opts)
    }
}

const NAME_DESC: &str = "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names";
const AGE_DESC: &str = "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata";

impl Tabled for Secret {
    fn columns() -> Value {
        json!([
            col("Name", "string", "name", NAME_DESC, 0),
            col("Type", "string", "", "Used to facilitate programmatic handling of secret data. More info: https://kubernetes.io/docs/concepts/configuration/secret/#secret-types", 0),
            col("Data", "string", "", "Data contains the secret data. Each key must consist of alphanumeric characters, '-', '_' or '.'. The serialized form of the secret data is a base64 encoded string, representing the arbitrary (possibly non-string) data value here. Described in https://tools.ietf.org/html/rfc4648#section-4", 0),
            col("Age", "string", "", AGE_DESC, 0),
        ])
    }

    fn cells(&self) -> Vec<Value> {
        vec![
            json!(self.metadata.name),
            json!(self.type_.clone().unwrap_or_default()),
            json!(self.data.as_ref().map_or(0, |d| d.len())),
            json!(age(&self.metadata)),
        ]
    }
}

impl Tabled for ConfigMap {
    fn columns() -> Value {
        json!([
            col("Name", "string", "name", NAME_DESC, 0),
            col("Data", "string", "", "Data contains the configuration data. Each key must consist of alphanumeric characters, '-', '_' or '.'. Values with non-UTF-8 byte sequences must use the BinaryData field. The keys stored in Data must not overlap with the keys in the BinaryData field, this is enforced during validation process.", 0),
            col("Age", "string", "", AGE_DESC, 0),
        ])
    }

    fn cells(&self) -> Vec<Value> {
        let n = self.data.as_ref().map_or(0, |d| d.len())
            + self.binary_data.as_ref().map_or(0, |d| d.len());
        vec![
            json!(self.metadata.name),
            json!(n),
            json!(age(&self.metadata)),
        ]
    }
}

impl Tabled for PersistentVolumeClaim {
    fn columns() -> Value {
        json!([
            col("Name", "string", "name", NAME_DESC, 0),
            col("Status", "string", "", "phase represents the current phase of PersistentVolumeClaim.", 0),
            col("Volume", "string", "", "volumeName is the binding reference to the PersistentVolume backing this claim.", 0),
            col("Capacity", "string", "", "capacity represents the actual resources of the underlying volume.", 0),
            col("Access Modes", "string", "", "accessModes contains the actual access modes the volume backing the PVC has.", 0),
            col("StorageClass", "string", "", "storageClassName is the name of the StorageClass required by the claim.", 0),
            col("VolumeAttributesClass", "string", "", "volumeAttributesClassName may be used to set the VolumeAttributesClass used by this claim.", 0),
            col("Age", "string", "", AGE_DESC, 0),
            col("VolumeMode", "string", "", "volumeMode defines what type of volume is required by the claim.", 1),
        ])
    }

    fn cells(&self) -> Vec<Value> {
        let spec = self.spec.clone().unwrap_or_default();
        let st = self.status.clone().unwrap_or_default();
        let capacity = st
            .capacity
            .as_ref()
            .and_then(|c| c.get("storage"))
            .map(|q| q.0.clone())
            .unwrap_or_default();
        // printers.go shortens the modes (`RWO`, `ROX`, `RWX`, `RWOP`), from the status.
        let modes: Vec<&str> = st
            .access_modes
            .iter()
            .flatten()
            .map(|m| match m.as_str() {
                "ReadWriteOnce" => "RWO",
                "ReadOnlyMany" => "ROX",
                "ReadWriteMany" => "RWX",
                "ReadWriteOncePod" => "RWOP",
                _ => "",
            })
            .collect();
        let or_unset = |s: Option<String>| s.unwrap_or_else(|| "<unset>".into());
        vec![
            json!(self.metadata.name),
            json!(st.phase.clone().unwrap_or_default()),
            json!(spec.volume_name.clone().unwrap_or_default()),
            json!(capacity),
            json!(modes.join(",")),
            json!(spec.storage_class_name.clone().unwrap_or_default()),
            json!(or_unset(spec.volume_attributes_class_name.clone())),
            json!(age(&self.metadata)),
            json!(spec.volume_mode.clone().unwrap_or_default()),
        ]
    }
}
