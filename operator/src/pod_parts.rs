//! Pieces every pod the operator creates (trial Jobs, serving pods, evaluation Jobs) builds
//! the same way: the writable `/tmp`, the storage PersistentVolumeClaim, and the credentials
//! Secret as environment variables.

use k8s_openapi::api::core::v1::{
    EmptyDirVolumeSource, EnvFromSource, PersistentVolumeClaimVolumeSource, SecretEnvSource,
    Volume, VolumeMount,
};

use crate::crd::PvcMount;

/// The `/tmp` emptyDir (volume `tmp`): the root filesystem is read-only (see
/// [`crate::pod_security::tmpdir_env`]).
pub fn scratch_tmp() -> (Volume, VolumeMount) {
    (
        Volume {
            name: "tmp".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        },
        VolumeMount {
            name: "tmp".into(),
            mount_path: "/tmp".into(),
            ..Default::default()
        },
    )
}

/// Path of a `file://` URL (`file:///mnt/runs` → `/mnt/runs`).
pub fn file_url_path(url: &str) -> String {
    let p = url.trim_start_matches("file://");
    let p = p.trim_end_matches('/');
    if p.is_empty() {
        "/".into()
    } else {
        p.into()
    }
}

/// The storage claim `pvc` (volume `storage`), mounted at its `mountPath` or else at
/// `default_path` (the path of the `file://` URL it holds); `read_only` on both the claim
/// source and the mount.
pub fn storage_pvc(
    pvc: &PvcMount,
    default_path: impl FnOnce() -> String,
    read_only: Option<bool>,
) -> (Volume, VolumeMount) {
    (
        Volume {
            name: "storage".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: pvc.claim_name.clone(),
                read_only,
            }),
            ..Default::default()
        },
        VolumeMount {
            name: "storage".into(),
            mount_path: pvc.mount_path.clone().unwrap_or_else(default_path),
            read_only,
            ..Default::default()
        },
    )
}

/// Every key of Secret `name` as an environment variable (`AWS_ACCESS_KEY_ID`, …); the pod
/// does not start without the Secret.
pub fn secret_env(name: Option<&String>) -> Option<Vec<EnvFromSource>> {
    name.map(|n| {
        vec![EnvFromSource {
            secret_ref: Some(SecretEnvSource {
                name: n.clone(),
                optional: Some(false),
            }),
            ..Default::default()
        }]
    })
}
