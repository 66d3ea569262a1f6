//! A run's volumes in its pod: the scratch volume (src/cluster/render_env.rs) first, then the
//! template's `volumes` as their core/v1 kinds, and the container's mounts of them. Only what
//! the template validated and the installation allowed reaches here (hostPath never does: it
//! is refused at every door, so it is not rendered even if it were). Pure, like `render`.

use crate::domain::template::{self, RunTemplate};
use k8s_openapi::api::core::v1::{
    ConfigMapVolumeSource, EmptyDirVolumeSource, KeyToPath, PersistentVolumeClaimVolumeSource,
    SecretVolumeSource, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

fn items(items: &[template::KeyToPath]) -> Option<Vec<KeyToPath>> {
    (!items.is_empty()).then(|| {
        items
            .iter()
            .map(|i| KeyToPath {
                key: i.key.clone(),
                path: i.path.clone(),
                mode: i.mode,
            })
            .collect()
    })
}

fn volume(v: &template::Volume) -> Volume {
    Volume {
        name: v.name.clone(),
        empty_dir: v.empty_dir.as_ref().map(|e| EmptyDirVolumeSource {
            medium: e.medium.clone(),
            size_limit: e.size_limit.clone().map(Quantity),
        }),
        config_map: v.config_map.as_ref().map(|c| ConfigMapVolumeSource {
            name: c.name.clone(),
            items: items(&c.items),
            optional: c.optional,
            default_mode: c.default_mode,
        }),
        secret: v.secret.as_ref().map(|s| SecretVolumeSource {
            secret_name: Some(s.secret_name.clone()),
            items: items(&s.items),
            optional: s.optional,
            default_mode: s.default_mode,
        }),
        persistent_volume_claim: v.persistent_volume_claim.as_ref().map(|p| {
            PersistentVolumeClaimVolumeSource {
                claim_name: p.claim_name.clone(),
                read_only: p.read_only,
            }
        }),
        ..Default::default()
    }
}

fn mount(m: &template::VolumeMount) -> VolumeMount {
    VolumeMount {
        name: m.name.clone(),
        mount_path: m.mount_path.clone(),
        read_only: m.read_only,
        sub_path: m.sub_path.clone(),
        ..Default::default()
    }
}

/// The pod's volumes and the container's mounts (None when there are none).
pub(super) fn volumes(t: &RunTemplate) -> (Option<Vec<Volume>>, Option<Vec<VolumeMount>>) {
    let (scratch_volumes, scratch_mounts) = super::render_env::scratch(t);
    let volumes: Vec<Volume> = (scratch_volumes.into_iter().flatten())
        .chain(
            t.volumes
                .iter()
                .filter(|v| v.host_path.is_none())
                .map(volume),
        )
        .collect();
    let mounts: Vec<VolumeMount> = (scratch_mounts.into_iter().flatten())
        .chain(t.volume_mounts.iter().map(mount))
        .collect();
    (
        (!volumes.is_empty()).then_some(volumes),
        (!mounts.is_empty()).then_some(mounts),
    )
}

#[cfg(test)]
mod tests {
    use crate::domain::template::tests::template;
    use serde_json::json;

    /// Issue 18: the template's volumes render as the core/v1 kinds beside scratch, and the
    /// container mounts them as asked.
    #[test]
    fn volumes_and_mounts_render_beside_scratch() {
        let t = template(json!({
            "volumes": [
                {"name": "work", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}},
                {"name": "conf", "configMap": {"name": "settings", "items": [{"key": "a", "path": "a.yaml"}], "defaultMode": 0o440}},
                {"name": "creds", "secret": {"secretName": "db", "optional": true}},
                {"name": "data", "persistentVolumeClaim": {"claimName": "dataset", "readOnly": true}}
            ],
            "volumeMounts": [
                {"name": "work", "mountPath": "/work"},
                {"name": "creds", "mountPath": "/creds", "readOnly": true, "subPath": "token"}
            ],
            "scratch": {"size": "1Gi"}
        }));
        let (volumes, mounts) = super::volumes(&t);
        let volumes = serde_json::to_value(volumes.unwrap()).unwrap();
        assert_eq!(volumes[0]["name"], "scratch");
        assert_eq!(
            volumes[1],
            json!({"name": "work", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}})
        );
        assert_eq!(
            volumes[2],
            json!({"name": "conf", "configMap": {"name": "settings", "items": [{"key": "a", "path": "a.yaml"}], "defaultMode": 0o440}})
        );
        assert_eq!(
            volumes[3],
            json!({"name": "creds", "secret": {"secretName": "db", "optional": true}})
        );
        assert_eq!(
            volumes[4],
            json!({"name": "data", "persistentVolumeClaim": {"claimName": "dataset", "readOnly": true}})
        );
        assert_eq!(
            serde_json::to_value(mounts.unwrap()).unwrap(),
            json!([
                {"name": "scratch", "mountPath": "/scratch"},
                {"name": "work", "mountPath": "/work"},
                {"name": "creds", "mountPath": "/creds", "readOnly": true, "subPath": "token"}
            ])
        );
    }

    #[test]
    fn no_volumes_render_as_none() {
        assert_eq!(super::volumes(&template(json!({}))), (None, None));
    }
}
