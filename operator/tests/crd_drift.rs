//! `crds/` must hold exactly what the code generates.
//!
//! Regenerate after changing a CRD type:
//!     cargo run -p textrec-operator -- crd --out-dir crds
//! (or run this test with TEXTREC_UPDATE_CRDS=1).

use std::path::PathBuf;

use serde_json::Value;

fn crds_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../crds")
}

#[test]
fn checked_in_crds_match_the_code() {
    let dir = crds_dir();
    let update = std::env::var_os("TEXTREC_UPDATE_CRDS").is_some();
    for (file, yaml) in textrec_operator::crd::crd_files() {
        let path = dir.join(file);
        if update {
            std::fs::write(&path, &yaml).unwrap();
            continue;
        }
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            on_disk == yaml,
            "{} differs from the generated CRD; regenerate with `cargo run -p textrec-operator -- crd --out-dir crds` \
             (or TEXTREC_UPDATE_CRDS=1 cargo test -p textrec-operator --test crd_drift)",
            path.display()
        );
    }
}

fn schema(file: &str) -> Value {
    let all = textrec_operator::crd::crd_files();
    let yaml = &all.iter().find(|(f, _)| *f == file).unwrap().1;
    let v: Value = serde_yaml::from_str(yaml).unwrap();
    v["spec"]["versions"][0].clone()
}

fn rules(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::Array(rs)) = m.get("x-kubernetes-validations") {
                out.extend(rs.iter().map(|r| r["rule"].as_str().unwrap().to_string()));
            }
            m.values().for_each(|v| rules(v, out));
        }
        Value::Array(a) => a.iter().for_each(|v| rules(v, out)),
        _ => {}
    }
}

#[test]
fn training_run_schema_has_limits_rules_columns_and_status() {
    let v = schema("trainingruns.textrec.dev.yaml");
    assert_eq!(v["name"], "v1alpha1");
    assert!(v["subresources"]["status"].is_object());
    let cols: Vec<&str> = v["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(cols, vec!["Phase", "Trials", "Best", "Best-Trial", "Age"]);
    let spec = &v["schema"]["openAPIV3Schema"]["properties"]["spec"];
    assert_eq!(
        spec["properties"]["search"]["properties"]["maxTrials"]["maximum"],
        256.0
    );
    assert_eq!(
        spec["properties"]["hyperparameters"]["x-kubernetes-preserve-unknown-fields"],
        true
    );
    let mut r = Vec::new();
    rules(&v, &mut r);
    assert!(
        r.iter()
            .any(|r| r.contains("parallelism <= self.search.maxTrials")),
        "{r:?}"
    );
    assert!(
        r.iter().any(|r| r.contains("has(self.storage.pvc)")),
        "{r:?}"
    );
    let status = &v["schema"]["openAPIV3Schema"]["properties"]["status"];
    assert_eq!(status["properties"]["trials"]["maxItems"], 256);
}

#[test]
fn model_deployment_schema_has_exclusive_model_source() {
    let v = schema("modeldeployments.textrec.dev.yaml");
    let mut r = Vec::new();
    rules(&v, &mut r);
    assert!(
        r.iter()
            .any(|r| r == "has(self.fromTrainingRun) != has(self.url)"),
        "{r:?}"
    );
    let strategy = &v["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["strategy"];
    assert_eq!(
        strategy["enum"],
        serde_json::json!(["RollingUpdate", "HotReload"])
    );
}

/// Every `format` in `v`, with the path to it.
fn formats(v: &Value, path: &str, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(f)) = m.get("format") {
                out.push((path.to_string(), f.clone()));
            }
            for (k, v) in m {
                formats(v, &format!("{path}.{k}"), out);
            }
        }
        Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                formats(v, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// The API server warns ("unrecognized format") on every apply of a CRD whose schema uses a
/// format outside its registry, such as schemars' `uint64` for Rust's `u64`.
#[test]
fn schemas_use_only_formats_kubernetes_knows() {
    for (file, yaml) in textrec_operator::crd::crd_files() {
        let v: Value = serde_yaml::from_str(&yaml).unwrap();
        let mut found = Vec::new();
        formats(&v["spec"]["versions"], "", &mut found);
        assert!(
            !found.is_empty(),
            "{file}: no formats at all (walk broken?)"
        );
        let unknown: Vec<_> = found
            .iter()
            .filter(|(_, f)| !textrec_operator::crd::KUBERNETES_FORMATS.contains(&f.as_str()))
            .collect();
        assert!(unknown.is_empty(), "{file}: unknown formats {unknown:?}");
    }
    // Unsigned fields keep refusing negative values.
    let v = schema("trainingruns.textrec.dev.yaml");
    let spec = &v["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
    let seed = &spec["search"]["properties"]["seed"];
    assert_eq!(
        (seed["format"].as_str(), seed["minimum"].as_f64()),
        (Some("int64"), Some(0.0))
    );
    let steps = &spec["training"]["properties"]["maxSteps"];
    assert_eq!(
        (steps["format"].as_str(), steps["minimum"].as_f64()),
        (Some("int64"), Some(1.0))
    );
}
