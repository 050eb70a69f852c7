//! The security settings every pod the operator creates shares (trial Jobs and serving
//! Deployments): the Kubernetes "restricted" Pod Security Standard, so both run in a namespace
//! labelled `pod-security.kubernetes.io/enforce: restricted`.
//!
//! The worker images run as the numeric user [`RUN_AS_USER`] (see the Dockerfile); naming it here
//! too lets `runAsNonRoot` be verified even for an image built without a numeric `USER`. The root
//! filesystem is read-only: pods get an `emptyDir` at `/tmp` (and `TMPDIR` pointing there) for
//! scratch files, and write results only to their storage.

use k8s_openapi::api::core::v1::{
    Capabilities, EnvVar, PodSecurityContext, SeccompProfile, SecurityContext,
};

/// UID and GID of the worker images' non-root user.
pub const RUN_AS_USER: i64 = 65532;

/// Pod-level security context: non-root, the worker's UID/GID, seccomp `RuntimeDefault`, and
/// `fsGroup` so that mounted volumes (a storage PVC) are writable by that user.
pub fn pod_security_context() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(RUN_AS_USER),
        run_as_group: Some(RUN_AS_USER),
        fs_group: Some(RUN_AS_USER),
        // Without it the kubelet re-chowns every file of a large storage volume at each mount;
        // a volume whose root already has the group is left as it is.
        fs_group_change_policy: Some("OnRootMismatch".into()),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Container-level security context: read-only root filesystem, no privilege escalation, every
/// capability dropped.
pub fn container_security_context() -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(RUN_AS_USER),
        run_as_group: Some(RUN_AS_USER),
        read_only_root_filesystem: Some(true),
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// `automountServiceAccountToken` of every pod: false. The worker never calls the Kubernetes
/// API, and cloud workload identity (EKS IRSA and Pod Identity, GKE Workload Identity, Azure
/// Workload Identity) projects its own token volume or uses the metadata server, independent of
/// this setting; a mounted API token would only be something for a compromised pod to use.
pub const AUTOMOUNT_SERVICE_ACCOUNT_TOKEN: bool = false;

/// `TMPDIR` for the `/tmp` emptyDir (the root filesystem is read-only).
pub fn tmpdir_env() -> EnvVar {
    EnvVar {
        name: "TMPDIR".into(),
        value: Some("/tmp".into()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The checks of the "restricted" Pod Security Standard that these settings decide.
    #[test]
    fn settings_meet_the_restricted_pod_security_standard() {
        let p = pod_security_context();
        let c = container_security_context();
        assert_eq!(p.run_as_non_root, Some(true));
        assert_ne!(p.run_as_user, Some(0));
        assert_eq!(
            p.seccomp_profile.map(|s| s.type_).as_deref(),
            Some("RuntimeDefault")
        );
        assert_eq!(c.allow_privilege_escalation, Some(false));
        assert_eq!(c.read_only_root_filesystem, Some(true));
        assert_eq!(
            c.capabilities.and_then(|c| c.drop),
            Some(vec!["ALL".into()])
        );
        assert!(c.privileged.is_none());
    }

    /// Trial pods and serving pods carry the same settings (once they differed: trial pods ran
    /// with a writable root filesystem and the namespace's ServiceAccount token).
    #[test]
    fn trial_and_serving_pods_are_equally_restricted() {
        use serde_json::json;
        let run: crate::crd::TrainingRun = serde_json::from_value(json!({
            "apiVersion": "textrec.dev/v1alpha1", "kind": "TrainingRun",
            "metadata": {"name": "r", "namespace": "ml", "uid": "u"},
            "spec": {"image": "w", "storage": {"url": "s3://b/p", "serviceAccountName": "irsa"}}
        }))
        .unwrap();
        let trials = crate::validate::plan_trials("r", &run.spec).unwrap();
        let job = crate::job::build_job(&run, &trials[0], false);
        let md: crate::crd::ModelDeployment = serde_json::from_value(json!({
            "apiVersion": "textrec.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": "m", "namespace": "ml", "uid": "u2"},
            "spec": {"model": {"url": "s3://b/m", "sha256": "a"}, "image": "w",
                     "credentials": {"serviceAccountName": "irsa"}}
        }))
        .unwrap();
        let model = crate::crd::DeployedModel {
            url: "s3://b/m".into(),
            sha256: "a".into(),
            metric: None,
            metric_name: None,
            training_run: None,
        };
        let dep = crate::serving::deployment(&md, &model, 1);
        let trial = job.spec.unwrap().template.spec.unwrap();
        let serving = dep.spec.unwrap().template.spec.unwrap();
        for pod in [&trial, &serving] {
            assert_eq!(pod.security_context, Some(pod_security_context()));
            assert_eq!(
                pod.containers[0].security_context,
                Some(container_security_context())
            );
            assert_eq!(pod.automount_service_account_token, Some(false));
            let env = pod.containers[0].env.as_ref().unwrap();
            assert!(env.contains(&tmpdir_env()));
            let tmp = pod.containers[0].volume_mounts.as_ref().unwrap();
            assert!(tmp.iter().any(|m| m.mount_path == "/tmp"));
        }
    }
}
