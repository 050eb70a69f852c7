//! Objects a TrainingRun's spec names that must exist before its trials can start: the storage
//! PersistentVolumeClaim, the credentials Secret and the pods' ServiceAccount.
//!
//! Without them every trial pod is stuck (`Pending` and unschedulable for a missing claim,
//! `CreateContainerConfigError` for a missing Secret) or never created at all (the Job controller
//! cannot create pods for a missing ServiceAccount, and says so only in the Job's events). The
//! controller looks them up before creating any Job and reports the missing ones in the run's
//! `Valid` condition instead.
//!
//! A ModelDeployment's TLS and token Secrets ([`deployment_references`]) are checked the same
//! way: a pod mounting a missing Secret never starts, so the Deployment is not applied (the
//! pods already serving keep serving) and the `Valid` condition names the Secret.

use crate::crd::{ModelDeploymentSpec, TrainingRunSpec};

/// Kind of a referenced object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefKind {
    /// `spec.storage.pvc.claimName`.
    PersistentVolumeClaim,
    /// `spec.storage.secretRef`.
    Secret,
    /// `spec.storage.serviceAccountName`.
    ServiceAccount,
}

impl RefKind {
    /// The Kubernetes kind.
    pub fn as_str(self) -> &'static str {
        match self {
            RefKind::PersistentVolumeClaim => "PersistentVolumeClaim",
            RefKind::Secret => "Secret",
            RefKind::ServiceAccount => "ServiceAccount",
        }
    }

    /// Reason of the `Valid` condition when an object of this kind is missing.
    pub fn not_found_reason(self) -> &'static str {
        match self {
            RefKind::PersistentVolumeClaim => "PersistentVolumeClaimNotFound",
            RefKind::Secret => "SecretNotFound",
            RefKind::ServiceAccount => "ServiceAccountNotFound",
        }
    }
}

/// An object the spec names, in the object's namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// Path of the naming field (`spec.storage.pvc.claimName`).
    pub field: &'static str,
    /// What it names.
    pub kind: RefKind,
    /// The object's name.
    pub name: String,
}

impl Reference {
    /// The message when the object does not exist.
    pub fn not_found(&self) -> String {
        format!(
            "{}: {} {:?} not found in the namespace",
            self.field,
            self.kind.as_str(),
            self.name
        )
    }
}

/// The objects `spec` names.
pub fn references(spec: &TrainingRunSpec) -> Vec<Reference> {
    let s = &spec.storage;
    let mut out = Vec::new();
    if let Some(p) = &s.pvc {
        out.push(Reference {
            field: "spec.storage.pvc.claimName",
            kind: RefKind::PersistentVolumeClaim,
            name: p.claim_name.clone(),
        });
    }
    if let Some(n) = &s.secret_ref {
        out.push(Reference {
            field: "spec.storage.secretRef",
            kind: RefKind::Secret,
            name: n.clone(),
        });
    }
    if let Some(n) = &s.service_account_name {
        out.push(Reference {
            field: "spec.storage.serviceAccountName",
            kind: RefKind::ServiceAccount,
            name: n.clone(),
        });
    }
    out
}

/// The Secrets a ModelDeployment's serving pods mount: `spec.tls.secretName` and
/// `spec.auth.tokenSecretName`. (`spec.credentials` is left to the pods' own errors, as before.)
pub fn deployment_references(spec: &ModelDeploymentSpec) -> Vec<Reference> {
    let mut out = Vec::new();
    if let Some(tls) = &spec.tls {
        out.push(Reference {
            field: "spec.tls.secretName",
            kind: RefKind::Secret,
            name: tls.secret_name.clone(),
        });
    }
    if let Some(auth) = &spec.auth {
        out.push(Reference {
            field: "spec.auth.tokenSecretName",
            kind: RefKind::Secret,
            name: auth.token_secret_name.clone(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn storage_references_in_order_with_their_fields() {
        let spec: TrainingRunSpec = serde_json::from_value(json!({
            "image": "w",
            "storage": {"url": "file:///runs", "pvc": {"claimName": "textrec-runs"},
                        "secretRef": "creds", "serviceAccountName": "trainer"}
        }))
        .unwrap();
        let r = references(&spec);
        let kinds: Vec<_> = r.iter().map(|r| (r.kind, r.name.as_str())).collect();
        assert_eq!(
            kinds,
            [
                (RefKind::PersistentVolumeClaim, "textrec-runs"),
                (RefKind::Secret, "creds"),
                (RefKind::ServiceAccount, "trainer")
            ]
        );
        assert_eq!(
            r[0].not_found(),
            "spec.storage.pvc.claimName: PersistentVolumeClaim \"textrec-runs\" not found in the namespace"
        );
        let bare: TrainingRunSpec =
            serde_json::from_value(json!({"image": "w", "storage": {"url": "s3://b/p"}})).unwrap();
        assert!(references(&bare).is_empty());
    }

    #[test]
    fn deployments_reference_their_tls_and_token_secrets() {
        let spec: ModelDeploymentSpec = serde_json::from_value(json!({
            "model": {"fromTrainingRun": "r"}, "image": "w",
            "tls": {"secretName": "reader-tls", "clientAuth": true},
            "auth": {"tokenSecretName": "reader-tokens"}
        }))
        .unwrap();
        let r = deployment_references(&spec);
        let got: Vec<_> = r
            .iter()
            .map(|r| (r.field, r.kind, r.name.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("spec.tls.secretName", RefKind::Secret, "reader-tls"),
                (
                    "spec.auth.tokenSecretName",
                    RefKind::Secret,
                    "reader-tokens"
                )
            ]
        );
        assert_eq!(
            r[1].not_found(),
            "spec.auth.tokenSecretName: Secret \"reader-tokens\" not found in the namespace"
        );
        let plain: ModelDeploymentSpec =
            serde_json::from_value(json!({"model": {"fromTrainingRun": "r"}, "image": "w"}))
                .unwrap();
        assert!(deployment_references(&plain).is_empty());
    }
}
