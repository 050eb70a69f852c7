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

/// The `format` values the Kubernetes API server recognizes in a structural schema
/// (k8s.io/kube-openapi's strfmt registry plus the OpenAPI numeric formats). Any other format is
/// accepted but answered with an "unrecognized format" warning on every apply.
pub const KUBERNETES_FORMATS: &[&str] = &[
    "int32",
    "int64",
    "float",
    "double",
    "byte",
    "binary",
    "date",
    "date-time",
    "datetime",
    "duration",
    "password",
    "bsonobjectid",
    "uri",
    "email",
    "hostname",
    "ipv4",
    "ipv6",
    "cidr",
    "mac",
    "uuid",
    "uuid3",
    "uuid4",
    "uuid5",
    "isbn",
    "isbn10",
    "isbn13",
    "creditcard",
    "ssn",
    "hexcolor",
    "rgbcolor",
];

/// Schema transform (`#[schemars(transform = kubernetes_formats)]` on each CRD's spec and status):
/// schemars describes Rust's unsigned and small integers with formats Kubernetes does not know
/// (`uint64`, `uint32`, `int8`, …). They become `int64`/`int32`, unsigned ones with `minimum: 0`
/// so the API server still refuses negative values.
pub(crate) fn kubernetes_formats(schema: &mut Schema) {
    fn walk(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(m) => {
                let fixed = match m.get("format").and_then(|f| f.as_str()) {
                    Some("uint64" | "uint" | "uint128" | "int128") => Some(("int64", true)),
                    Some("uint32" | "uint16" | "uint8") => Some(("int32", true)),
                    Some("int16" | "int8") => Some(("int32", false)),
                    _ => None,
                };
                if let Some((format, unsigned)) = fixed {
                    m.insert("format".into(), format.into());
                    let below_zero = m
                        .get("minimum")
                        .and_then(|x| x.as_f64())
                        .is_none_or(|x| x < 0.0);
                    if unsigned && below_zero {
                        m.insert("minimum".into(), 0.into());
                    }
                }
                m.values_mut().for_each(walk);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(walk),
            _ => {}
        }
    }
    if let Some(m) = schema.as_object_mut() {
        m.values_mut().for_each(walk);
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsigned_formats_become_kubernetes_ones_and_keep_their_bounds() {
        let mut s = json_schema!({
            "type": "object",
            "properties": {
                "a": {"type": "integer", "format": "uint64", "minimum": 0},
                "b": {"type": "integer", "format": "uint64", "minimum": 5},
                "c": {"type": "array", "items": {"type": "integer", "format": "uint32"}},
                "d": {"type": "integer", "format": "int8"},
                "format": {"type": "string", "format": "date-time"},
            }
        });
        kubernetes_formats(&mut s);
        let p = &s.as_value()["properties"];
        assert_eq!(
            p["a"],
            serde_json::json!({"type": "integer", "format": "int64", "minimum": 0})
        );
        assert_eq!(p["b"]["minimum"], 5);
        assert_eq!(
            p["c"]["items"],
            serde_json::json!({"type": "integer", "format": "int32", "minimum": 0})
        );
        assert_eq!(
            p["d"],
            serde_json::json!({"type": "integer", "format": "int32"})
        );
        assert_eq!(p["format"]["format"], "date-time");
    }
}
