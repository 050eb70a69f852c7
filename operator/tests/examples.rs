//! Every Kubernetes object in `examples/` (and `examples/ci/`) is accepted by the same code that admits manifests
//! for `textrec-operator local run` and that mirrors the API server: the generated CRD schema,
//! its CEL rules ([`textrec_operator::crd::admission::admit`]) and the trial planner, which runs
//! the worker's own config parser on every trial. Built-in kinds (ServiceAccount, Namespace) are
//! left to the schema checks in `tests/manifests/`; worker trial configs (`trial-*.yaml`, no
//! `apiVersion`) to the worker's tests.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;
use textrec_operator::crd::admission::admit;
use textrec_operator::crd::TrainingRun;
use textrec_operator::local::manifest::{load_files, StorageChoice};
use textrec_operator::validate::plan_trials;

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// The YAML documents of a file, as JSON values.
fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .filter(|v| !v.is_null())
        .collect()
}

fn is_textrec(doc: &Value) -> bool {
    doc["apiVersion"]
        .as_str()
        .is_some_and(|v| v.starts_with("textrec.dev/"))
}

/// Files holding Kubernetes objects (at least one document with apiVersion and kind), in
/// `examples/` and `examples/ci/` (the CI recipes' RBAC; the workflow file there is no object).
fn manifest_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = [examples_dir(), examples_dir().join("ci")]
        .iter()
        .flat_map(|dir| std::fs::read_dir(dir).unwrap())
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .filter(|p| {
            documents(p)
                .iter()
                .any(|d| d.get("apiVersion").is_some() && d.get("kind").is_some())
        })
        .collect();
    files.sort();
    files
}

#[test]
fn examples_hold_the_objects_the_docs_point_to() {
    let names: Vec<String> = manifest_files()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for wanted in [
        "quickstart.yaml",
        "auto-promotion.yaml",
        "eks-spot.yaml",
        "gke-spot.yaml",
    ] {
        assert!(
            names.iter().any(|n| n == wanted),
            "examples/{wanted} is not a manifest: {names:?}"
        );
    }
}

/// As the API server admits them (the examples name their image and storage, as they would
/// without the operator defaults of the chart).
#[test]
fn every_textrec_object_passes_cluster_admission_and_plans_its_trials() {
    let mut checked = 0;
    for path in manifest_files() {
        for doc in documents(&path).iter().filter(|d| is_textrec(d)) {
            let kind = doc["kind"].as_str().unwrap();
            let name = doc["metadata"]["name"].as_str().unwrap_or("?");
            if let Err(violations) = admit(kind, doc) {
                panic!(
                    "{} {kind}/{name} is refused: {violations:?}",
                    path.display()
                );
            }
            if kind == "TrainingRun" {
                let run: TrainingRun = serde_json::from_value(doc.clone()).unwrap();
                let trials = plan_trials(name, &run.spec)
                    .unwrap_or_else(|e| panic!("{} TrainingRun/{name}: {e:?}", path.display()));
                assert!(!trials.is_empty(), "{}: no trials", path.display());
            }
            checked += 1;
        }
    }
    assert!(
        checked >= 4,
        "only {checked} textrec.dev objects in examples/"
    );
}

/// What `textrec-operator local run -f FILE --storage DIR` loads: every example runs locally,
/// cloud storage replaced by the flag. Files of built-in objects only (the CI RBAC) have nothing
/// to run; the local runner refuses them by design.
#[test]
fn every_manifest_loads_in_the_local_runner() {
    let storage = StorageChoice {
        flag: Some("file:///tmp/textrec-examples".into()),
        root: "file:///tmp/textrec-examples".into(),
    };
    for path in manifest_files() {
        let expected = documents(&path).iter().filter(|d| is_textrec(d)).count();
        if expected == 0 {
            continue;
        }
        let loaded = load_files(std::slice::from_ref(&path), &storage)
            .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
        assert_eq!(
            loaded.runs.len() + loaded.deployments.len(),
            expected,
            "{}: {:?}",
            path.display(),
            loaded.notes
        );
    }
}
