//! Reading manifests as `kubectl apply -f` does: several YAML documents per file (`---`),
//! `kind: List`, and the same validation as the cluster: the CRD types (an unknown or mistyped
//! field is an error naming its path), the CEL rules of the CRDs, and
//! [`crate::validate::plan_trials`] (which runs the worker's own config parser on every trial).
//!
//! Local differences, all about things only a cluster has:
//! - `spec.image` may be left out (the local worker binary runs instead);
//! - `spec.storage` may be left out, and is resolved by [`resolve_storage`]; a `file://`
//!   storage gets the claim [`LOCAL_CLAIM`] (this machine's file system stands in for the
//!   PersistentVolumeClaim the cluster requires);
//! - objects of other API groups (a ServiceAccount, a Namespace, a Secret next to the run) are
//!   skipped with a note; unknown kinds of `textrec.dev` are errors.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{json, Value};

use crate::crd::{ModelDeployment, ModelDeploymentSpec, TrainingRun, TrainingRunSpec};
use crate::validate::plan_trials;

/// API group of the custom resources.
pub const GROUP: &str = "textrec.dev";
/// The version this build serves.
pub const VERSION: &str = "v1alpha1";
/// The claim name recorded for `file://` storage run locally (this machine's file system).
pub const LOCAL_CLAIM: &str = "local-filesystem";
/// What `spec.image` is set to when a manifest leaves it out.
pub const LOCAL_IMAGE: &str = "textrec-worker (local)";

/// A manifest that cannot be run, with where it is and which field is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{source_name}{}: {field}: {message}", object.as_ref().map(|o| format!(" ({o})")).unwrap_or_default())]
pub struct ManifestError {
    /// `FILE` or `FILE (document N)`.
    pub source_name: String,
    /// `Kind/name`, once known.
    pub object: Option<String>,
    /// Path of the offending field (`spec.search.parallelism`), or what is wrong at the top.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// The objects of some manifest files.
#[derive(Debug, Clone, Default)]
pub struct Manifests {
    /// TrainingRuns, in file order.
    pub runs: Vec<TrainingRun>,
    /// ModelDeployments, in file order.
    pub deployments: Vec<ModelDeployment>,
    /// Notes about what was skipped or changed (`ServiceAccount/x: not used locally`).
    pub notes: Vec<String>,
}

/// How the storage of a run is chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageChoice {
    /// `--storage`, normalized; when given it wins over every manifest.
    pub flag: Option<String>,
    /// The local runner's storage root (`--storage` or [`super::DEFAULT_STORAGE`]), normalized.
    pub root: String,
}

/// Turn a storage location into an absolute URL: `file://./rel` and bare paths become
/// `file:///abs/rel` (the workers may run in another directory); other URLs are kept. A
/// trailing `/` is dropped so trial URLs join cleanly.
pub fn normalize_storage(location: &str) -> anyhow::Result<String> {
    let location = location.trim();
    anyhow::ensure!(!location.is_empty(), "empty storage location");
    let path = match location.strip_prefix("file://") {
        Some(rest) => rest,
        None if location.contains("://") => {
            return Ok(location.trim_end_matches('/').to_string());
        }
        None => location,
    };
    let p = Path::new(path);
    let abs: PathBuf = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()?.join(p)
    };
    // Lexically drop `.` parts: `file:///work/./textrec-data` is legal but ugly in status.
    let clean: PathBuf = abs
        .components()
        .filter(|c| !matches!(c, std::path::Component::CurDir))
        .collect();
    let s = clean.to_string_lossy();
    Ok(format!("file://{}", s.trim_end_matches('/')))
}

/// The storage URL a run uses locally, and a note when the manifest's was not used:
/// `--storage` if given; else the manifest's `spec.storage.url`, unless it is a `file://` path
/// on a PersistentVolumeClaim (a path inside the pods, meaningless here); else the root.
pub fn resolve_storage(
    spec_storage: Option<&Value>,
    choice: &StorageChoice,
) -> anyhow::Result<(String, Option<String>)> {
    let url = spec_storage
        .and_then(|s| s.get("url"))
        .and_then(Value::as_str);
    let pvc = spec_storage.and_then(|s| s.get("pvc")).is_some();
    if let Some(flag) = &choice.flag {
        let note = url
            .filter(|u| normalize_storage(u).ok().as_deref() != Some(flag.as_str()))
            .map(|u| format!("spec.storage.url {u} replaced by --storage {flag}"));
        return Ok((flag.clone(), note));
    }
    match url {
        Some(u) if u.starts_with("file://") && pvc => Ok((
            choice.root.clone(),
            Some(format!(
                "spec.storage.url {u} is a path on a PersistentVolumeClaim inside pods; using {} locally",
                choice.root
            )),
        )),
        Some(u) => Ok((normalize_storage(u)?, None)),
        None => Ok((choice.root.clone(), None)),
    }
}

/// Read and validate manifest files.
pub fn load_files(paths: &[PathBuf], storage: &StorageChoice) -> anyhow::Result<Manifests> {
    let mut out = Manifests::default();
    for path in paths {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        load_str(&path.display().to_string(), &text, storage, &mut out)?;
    }
    anyhow::ensure!(
        !out.runs.is_empty() || !out.deployments.is_empty(),
        "no TrainingRun or ModelDeployment in {}",
        paths
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(out)
}

/// Read and validate the documents of one file's text into `out`.
pub fn load_str(
    name: &str,
    text: &str,
    storage: &StorageChoice,
    out: &mut Manifests,
) -> Result<(), ManifestError> {
    let mut index = 0;
    for doc in serde_yaml::Deserializer::from_str(text) {
        index += 1;
        let source_name = format!("{name} (document {index})");
        let value = Value::deserialize(doc).map_err(|e| ManifestError {
            source_name: source_name.clone(),
            object: None,
            field: "(yaml)".into(),
            message: e.to_string(),
        })?;
        add_object(&source_name, value, storage, out)?;
    }
    Ok(())
}

fn add_object(
    source_name: &str,
    value: Value,
    storage: &StorageChoice,
    out: &mut Manifests,
) -> Result<(), ManifestError> {
    let err = |object: Option<String>, field: &str, message: String| ManifestError {
        source_name: source_name.to_string(),
        object,
        field: field.into(),
        message,
    };
    if value.is_null() {
        return Ok(()); // an empty document (`---` at the end)
    }
    let Value::Object(map) = &value else {
        return Err(err(
            None,
            "(document)",
            "expected a Kubernetes object (a mapping)".into(),
        ));
    };
    let api_version = map
        .get("apiVersion")
        .and_then(Value::as_str)
        .map(str::to_string);
    let kind = map.get("kind").and_then(Value::as_str).map(str::to_string);
    let missing = if api_version.is_none() {
        "apiVersion"
    } else {
        "kind"
    };
    let (Some(api_version), Some(kind)) = (api_version, kind) else {
        return Err(err(None, missing, "is required".into()));
    };
    let obj_name = map
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let label = format!("{kind}/{}", obj_name.clone().unwrap_or_default());
    let (api_version, kind) = (api_version.as_str(), kind.as_str());

    if kind == "List" && api_version == "v1" {
        let items = map
            .get("items")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for item in items {
            add_object(source_name, item, storage, out)?;
        }
        return Ok(());
    }
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    if group != GROUP {
        out.notes.push(format!(
            "{label} ({api_version}): not used by the local runner, skipped"
        ));
        return Ok(());
    }
    if version != VERSION {
        return Err(err(
            Some(label),
            "apiVersion",
            format!("{api_version} is not served by this textrec-operator (use {GROUP}/{VERSION})"),
        ));
    }
    if kind != "TrainingRun" && kind != "ModelDeployment" {
        return Err(err(
            Some(label),
            "kind",
            format!("unknown kind {kind} in {GROUP} (known: TrainingRun, ModelDeployment)"),
        ));
    }
    let Some(name) = obj_name else {
        return Err(err(Some(label), "metadata.name", "is required".into()));
    };
    if !is_dns1123_subdomain(&name) {
        return Err(err(
            Some(label),
            "metadata.name",
            format!("{name:?} must be lower-case letters, digits, '-' and '.', starting and ending with a letter or digit, at most 253 characters"),
        ));
    }
    let duplicate = match kind {
        "TrainingRun" => out
            .runs
            .iter()
            .any(|r| r.metadata.name.as_deref() == Some(&name)),
        _ => out
            .deployments
            .iter()
            .any(|d| d.metadata.name.as_deref() == Some(&name)),
    };
    if duplicate {
        return Err(err(
            Some(label),
            "metadata.name",
            "appears twice in these manifests".into(),
        ));
    }

    let mut value = value;
    if let Some(m) = value.as_object_mut() {
        // The API server ignores status in what is applied (it is a subresource).
        m.remove("status");
    }
    let input = value.clone();
    let spec = value
        .get_mut("spec")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| {
            err(
                Some(label.clone()),
                "spec",
                "is required (a mapping)".into(),
            )
        })?;
    spec.entry("image").or_insert_with(|| json!(LOCAL_IMAGE));
    if kind == "TrainingRun" {
        let (url, note) = resolve_storage(spec.get("storage"), storage)
            .map_err(|e| err(Some(label.clone()), "spec.storage.url", format!("{e:#}")))?;
        if let Some(n) = note {
            out.notes.push(format!("{label}: {n}"));
        }
        let st = spec.entry("storage").or_insert_with(|| json!({}));
        if let Some(st) = st.as_object_mut() {
            // A PVC is what makes a file:// URL reach pods; locally the workers share this
            // machine's file system, which stands in for the claim (and satisfies the
            // cluster's rule that file:// storage needs one).
            if url.starts_with("file://") {
                st.insert("pvc".into(), json!({"claimName": LOCAL_CLAIM}));
            } else {
                st.remove("pvc");
            }
            st.insert("url".into(), json!(url));
        }
    }
    let meta = value
        .get_mut("metadata")
        .and_then(Value::as_object_mut)
        .expect("metadata holds the name");
    meta.entry("namespace").or_insert_with(|| json!("default"));

    let typed_err = |e: serde_path_to_error::Error<serde_json::Error>| {
        let path = e.path().to_string();
        err(
            Some(label.clone()),
            if path == "." { "(object)" } else { &path },
            e.into_inner().to_string(),
        )
    };
    let strict = |typed: Value| -> Result<(), ManifestError> {
        // kubectl validates strictly: a field the schema does not know is an error, not silently
        // dropped (a misspelt `maxRestartsPerTrail` would otherwise fall back to the default).
        match unknown_fields(&input, &typed, "").into_iter().next() {
            Some(f) => Err(err(Some(label.clone()), &f, "unknown field".into())),
            None => Ok(()),
        }
    };
    // What the API server checks on create: the CRD's value validations and CEL rules.
    let admitted = |applied: &Value| -> Result<(), ManifestError> {
        crate::crd::admission::admit(kind, applied).map_err(|violations| {
            let first = &violations[0];
            err(Some(label.clone()), &first.field, first.message.clone())
        })
    };
    if kind == "TrainingRun" {
        let run: TrainingRun =
            serde_path_to_error::deserialize(value.clone()).map_err(typed_err)?;
        strict(serde_json::to_value(&run).expect("serializes"))?;
        admitted(&value)?;
        plan_run(&name, &run.spec).map_err(|(f, m)| err(Some(label.clone()), &f, m))?;
        out.runs.push(run);
    } else {
        let md: ModelDeployment =
            serde_path_to_error::deserialize(value.clone()).map_err(typed_err)?;
        strict(serde_json::to_value(&md).expect("serializes"))?;
        admitted(&value)?;
        local_serving(&md.spec).map_err(|(f, m)| err(Some(label.clone()), f, m.into()))?;
        out.deployments.push(md);
    }
    Ok(())
}

/// Paths of fields in `input` that did not survive a round trip through the typed object.
/// Empty values (`[]`, `{}`, `null`) are not reported: the types leave defaults out when they
/// serialize.
fn unknown_fields(input: &Value, typed: &Value, path: &str) -> Vec<String> {
    let (Value::Object(a), Value::Object(b)) = (input, typed) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (k, v) in a {
        let p = if path.is_empty() {
            k.clone()
        } else {
            format!("{path}.{k}")
        };
        match b.get(k) {
            Some(t) => out.extend(unknown_fields(v, t, &p)),
            None => {
                let empty = match v {
                    Value::Null => true,
                    Value::Array(x) => x.is_empty(),
                    Value::Object(x) => x.is_empty(),
                    _ => false,
                };
                if !empty {
                    out.push(p);
                }
            }
        }
    }
    out
}

/// What the local runner cannot do with a ModelDeployment: `spec.tls` and `spec.auth` name
/// Kubernetes Secrets, which do not exist here, and the runner watches its servers over plain
/// HTTP. Refused rather than ignored, so a manifest never silently serves without the
/// protection it asks for; `textrec-worker serve --tls-cert ... --auth-token-file ...` tries
/// both by hand.
pub fn local_serving(spec: &ModelDeploymentSpec) -> Result<(), (&'static str, &'static str)> {
    const HINT: &str = "is not supported by the local runner (it names a Kubernetes Secret); \
        remove it to run locally, or try TLS and tokens with `textrec-worker serve --tls-cert \
        FILE --tls-key FILE --auth-token-file FILE`";
    if spec.tls.is_some() {
        return Err(("spec.tls", HINT));
    }
    if spec.auth.is_some() {
        return Err(("spec.auth", HINT));
    }
    Ok(())
}

/// Whether `s` is a DNS-1123 subdomain (what Kubernetes accepts as an object name).
pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(crate::naming::is_dns1123_label)
}

/// What the controller checks beyond the schema before it starts a TrainingRun: the grid
/// expands within its bounds and every trial's config passes the worker's parser.
pub fn plan_run(name: &str, spec: &TrainingRunSpec) -> Result<(), (String, String)> {
    plan_trials(name, spec)
        .map(|_| ())
        .map_err(|e| (e.field, e.message))
}

/// Names of the TrainingRuns the deployments refer to that are neither in `runs` nor `known`.
pub fn missing_runs(m: &Manifests, known: &BTreeSet<String>) -> Vec<(String, String)> {
    let mut have: BTreeSet<String> = known.clone();
    have.extend(m.runs.iter().filter_map(|r| r.metadata.name.clone()));
    m.deployments
        .iter()
        .filter_map(|d| {
            let run = d.spec.model.from_training_run.clone()?;
            (!have.contains(&run)).then(|| (d.metadata.name.clone().unwrap_or_default(), run))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn choice() -> StorageChoice {
        StorageChoice {
            flag: None,
            root: "file:///data/root".into(),
        }
    }

    fn load(text: &str) -> Result<Manifests, ManifestError> {
        let mut m = Manifests::default();
        load_str("m.yaml", text, &choice(), &mut m)?;
        Ok(m)
    }

    const RUN: &str = r#"
apiVersion: textrec.dev/v1alpha1
kind: TrainingRun
metadata: {name: lr}
spec:
  model: {preset: tiny}
  hyperparameters: {optimizer: {lr: [0.001, 0.002]}}
  search: {maxTrials: 2, parallelism: 2}
"#;

    #[test]
    fn reads_several_documents_and_skips_foreign_kinds() {
        let text = format!(
            "{RUN}---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: sa}}\n---\n\
             apiVersion: textrec.dev/v1alpha1\nkind: ModelDeployment\nmetadata: {{name: md}}\n\
             spec: {{model: {{fromTrainingRun: lr}}}}\n---\n"
        );
        let m = load(&text).unwrap();
        assert_eq!(m.runs.len(), 1);
        assert_eq!(m.deployments.len(), 1);
        assert!(m.notes[0].starts_with("ServiceAccount/sa"), "{:?}", m.notes);
        let run = &m.runs[0];
        assert_eq!(run.spec.storage.url, "file:///data/root");
        assert_eq!(run.spec.image, LOCAL_IMAGE);
        assert_eq!(run.metadata.namespace.as_deref(), Some("default"));
        assert!(missing_runs(&m, &BTreeSet::new()).is_empty());
    }

    #[test]
    fn tls_and_auth_are_refused_locally_with_the_field() {
        for (spec, field) in [
            (
                "{model: {fromTrainingRun: lr}, tls: {secretName: t}}",
                "spec.tls",
            ),
            (
                "{model: {fromTrainingRun: lr}, auth: {tokenSecretName: t}}",
                "spec.auth",
            ),
        ] {
            let e = load(&format!(
                "apiVersion: textrec.dev/v1alpha1\nkind: ModelDeployment\nmetadata: {{name: md}}\nspec: {spec}\n"
            ))
            .unwrap_err();
            assert_eq!(e.field, field);
            assert!(
                e.message.contains("not supported by the local runner"),
                "{}",
                e.message
            );
        }
        // A Secret key is a file name in the pod: no paths.
        let e = load(
            "apiVersion: textrec.dev/v1alpha1\nkind: ModelDeployment\nmetadata: {name: md}\n\
             spec: {model: {fromTrainingRun: lr}, auth: {tokenSecretName: t, key: ../x}}\n",
        )
        .unwrap_err();
        assert_eq!(e.field, "spec.auth.key", "{}", e.message);
    }

    #[test]
    fn lists_are_expanded() {
        let text = r#"
apiVersion: v1
kind: List
items:
- apiVersion: textrec.dev/v1alpha1
  kind: ModelDeployment
  metadata: {name: md}
  spec: {model: {fromTrainingRun: elsewhere}}
"#;
        let m = load(text).unwrap();
        assert_eq!(
            missing_runs(&m, &BTreeSet::new()),
            vec![("md".to_string(), "elsewhere".to_string())]
        );
    }

    #[test]
    fn unknown_textrec_kinds_and_versions_are_errors() {
        let e = load(
            "apiVersion: textrec.dev/v1alpha1\nkind: TrainingJob\nmetadata: {name: x}\nspec: {}\n",
        )
        .unwrap_err();
        assert_eq!(e.field, "kind");
        assert!(
            e.message.contains("known: TrainingRun, ModelDeployment"),
            "{e}"
        );
        let e =
            load("apiVersion: textrec.dev/v1\nkind: TrainingRun\nmetadata: {name: x}\nspec: {}\n")
                .unwrap_err();
        assert_eq!(e.field, "apiVersion");
        let e = load("kind: TrainingRun\n").unwrap_err();
        assert_eq!(e.field, "apiVersion");
        assert!(e.to_string().starts_with("m.yaml (document 1)"), "{e}");
    }

    #[test]
    fn validation_errors_name_the_field() {
        // A mistyped field of the CRD type.
        let e = load(&RUN.replace("parallelism: 2", "parallelism: two")).unwrap_err();
        assert_eq!(e.field, "spec.search.parallelism");
        assert_eq!(e.object.as_deref(), Some("TrainingRun/lr"));
        // The controller's own rules.
        let e = load(&RUN.replace("parallelism: 2", "parallelism: 3")).unwrap_err();
        assert_eq!(e.field, "spec.search.parallelism");
        // The worker's config parser, through plan_trials.
        let e = load(&RUN.replace("lr: [", "learning_rate: [")).unwrap_err();
        assert_eq!(e.field, "spec.hyperparameters");
        assert!(e.message.contains("learning_rate"), "{e}");
        let e = load(&RUN.replace("lr: [0.001, 0.002]", "lr: []")).unwrap_err();
        assert_eq!(e.field, "spec.hyperparameters.optimizer.lr");
        // A misspelt field.
        let e = load(&format!("{RUN}  maxRestartsPerTrail: 5\n")).unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.message.as_str()),
            ("spec.maxRestartsPerTrail", "unknown field")
        );
        // Schema bounds.
        let e = load(&format!("{RUN}  maxRestartsPerTrial: 500\n")).unwrap_err();
        assert_eq!(e.field, "spec.maxRestartsPerTrial");
        // Names.
        let e = load(&RUN.replace("name: lr", "name: Bad_Name")).unwrap_err();
        assert_eq!(e.field, "metadata.name");
        let e = load(&format!("{RUN}---\n{RUN}")).unwrap_err();
        assert!(e.message.contains("twice"), "{e}");
        // YAML syntax.
        let e = load("apiVersion: [").unwrap_err();
        assert_eq!(e.field, "(yaml)");
    }

    #[test]
    fn deployment_cel_rules_are_checked() {
        let md = |spec: &str| {
            load(&format!(
                "apiVersion: textrec.dev/v1alpha1\nkind: ModelDeployment\nmetadata: {{name: md}}\nspec: {spec}\n"
            ))
        };
        let e = md("{model: {}}").unwrap_err();
        assert_eq!(e.field, "spec.model");
        let e = md("{model: {url: 'file:///m'}}").unwrap_err();
        assert_eq!(e.field, "spec.model.sha256");
        let e = md("{model: {fromTrainingRun: r}, ports: {grpc: 9000, http: 9000}}").unwrap_err();
        assert_eq!(e.field, "spec.ports.http");
        let e = md("{model: {fromTrainingRun: r}, strategy: Canary}").unwrap_err();
        assert_eq!(e.field, "spec.strategy");
    }

    #[test]
    fn storage_precedence() {
        let s3 = json!({"url": "s3://bucket/runs"});
        let pvc = json!({"url": "file:///mnt/runs", "pvc": {"claimName": "c"}});
        let c = choice();
        assert_eq!(
            resolve_storage(Some(&s3), &c).unwrap(),
            ("s3://bucket/runs".into(), None)
        );
        let (url, note) = resolve_storage(Some(&pvc), &c).unwrap();
        assert_eq!(url, "file:///data/root");
        assert!(note.unwrap().contains("PersistentVolumeClaim"));
        assert_eq!(resolve_storage(None, &c).unwrap().0, "file:///data/root");
        let flagged = StorageChoice {
            flag: Some("file:///tmp/x".into()),
            root: "file:///tmp/x".into(),
        };
        let (url, note) = resolve_storage(Some(&s3), &flagged).unwrap();
        assert_eq!(url, "file:///tmp/x");
        assert!(note.unwrap().contains("replaced by --storage"));
    }

    #[test]
    fn storage_locations_become_absolute_urls() {
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(
            normalize_storage("file://./textrec-data").unwrap(),
            format!("file://{}/textrec-data", cwd.display())
        );
        assert_eq!(normalize_storage("/abs/dir/").unwrap(), "file:///abs/dir");
        assert_eq!(normalize_storage("s3://b/p/").unwrap(), "s3://b/p");
    }
}
#[cfg(test)]
mod example_tests {
    use super::*;

    #[test]
    fn the_quickstart_example_loads() {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/quickstart.yaml");
        let c = StorageChoice {
            flag: None,
            root: "file:///tmp/root".into(),
        };
        let m = load_files(&[path], &c).unwrap();
        assert_eq!((m.runs.len(), m.deployments.len()), (1, 1));
        assert_eq!(m.runs[0].spec.storage.url, "file:///tmp/root");
        assert_eq!(plan_trials("quickstart", &m.runs[0].spec).unwrap().len(), 2);
    }
}
