//! The custom resources: Rust types from which the CRDs (schema, printer columns, CEL rules) are
//! derived. `textrec-operator crd` prints them; `crds/` holds that output.

pub mod admission;
pub mod model_deployment;
pub mod training_run;

use kube::CustomResourceExt;
use schemars::{json_schema, Schema, SchemaGenerator};

pub use model_deployment::*;
pub use training_run::*;

/// Schema of a free-form object (`hyperparameters`): the API server keeps unknown fields.
pub(crate) fn preserve_unknown_object(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// Both CRDs as one multi-document YAML stream, exactly as checked in under `crds/`.
pub fn crds_yaml() -> String {
    let mut out = String::new();
    for crd in [TrainingRun::crd(), ModelDeployment::crd()] {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&crd).expect("CRD serializes"));
    }
    out
}

/// One CRD's YAML by file name stem (`trainingruns`, `modeldeployments`).
pub fn crd_files() -> Vec<(&'static str, String)> {
    vec![
        (
            "trainingruns.textrec.dev.yaml",
            serde_yaml::to_string(&TrainingRun::crd()).expect("CRD serializes"),
        ),
        (
            "modeldeployments.textrec.dev.yaml",
            serde_yaml::to_string(&ModelDeployment::crd()).expect("CRD serializes"),
        ),
    ]
}
