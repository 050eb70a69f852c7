//! What a TrainingRun's spec turns into before anything runs: its trials (names, parameters,
//! worker overrides), checked with the worker's own config parser so that a bad field is
//! reported in the run's status (naming the field) instead of failing pod after pod.
//!
//! No Kubernetes client here: the local runner reuses this as is.

use serde_json::Value;
use textrec_contract::config::{flatten_overrides, TrainConfig};

use crate::crd::{DataSpec, DatasetRef, TrainingRunSpec};
use crate::naming::trial_name;
use crate::search::{expand, summarize, SearchError};

/// Longest string in `spec.hyperparameters`, in bytes. Each value becomes one worker argument,
/// and Linux refuses to start a process with an argument over 128 KiB (E2BIG); no config field
/// needs anything near this.
pub const MAX_HYPERPARAMETER_STRING: usize = 4096;
/// Most values one list of `spec.hyperparameters` may hold (a search of more is no search).
pub const MAX_SEARCH_VALUES: usize = 1024;
/// Largest `spec.hyperparameters`, in bytes of JSON: every trial's arguments hold one value of
/// each field, and all arguments of a process together must stay under the OS's `ARG_MAX`.
pub const MAX_HYPERPARAMETERS_BYTES: usize = 64 * 1024;

/// A trial as planned from the spec.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedTrial {
    /// Position (0-based) in the search.
    pub index: usize,
    /// Deterministic name (also the Job's name).
    pub name: String,
    /// Searched values, `key=value,…` (bounded).
    pub params: String,
    /// `--set` overrides for the worker: spec-derived fields first, then the hyperparameters.
    pub overrides: Vec<String>,
}

/// A spec the operator cannot run; `field` is the path of the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Invalid {
    /// JSON path of the field, e.g. `spec.search.parallelism`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> Invalid {
    Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// A data set in the worker's config spelling (`split_file`, not `splitFile`).
fn worker_dataset(d: &DatasetRef) -> Value {
    let mut m = serde_json::Map::new();
    m.insert("kind".into(), d.kind.as_str().into());
    if let Some(p) = &d.path {
        m.insert("path".into(), p.clone().into());
    }
    if let Some(p) = &d.split_file {
        m.insert("split_file".into(), p.clone().into());
    }
    if let Some(n) = d.samples {
        m.insert("samples".into(), n.into());
    }
    if let Some(w) = d.weight {
        m.insert("weight".into(), w.into());
    }
    if let Some(a) = d.augment {
        m.insert("augment".into(), a.into());
    }
    Value::Object(m)
}

fn dataset_overrides(prefix: &str, d: &DatasetRef, out: &mut Vec<String>) {
    out.push(format!("{prefix}.kind={}", d.kind.as_str()));
    if let Some(p) = &d.path {
        out.push(format!(
            "{prefix}.path={}",
            serde_json::Value::String(p.clone())
        ));
    }
    if let Some(p) = &d.split_file {
        out.push(format!(
            "{prefix}.split_file={}",
            serde_json::Value::String(p.clone())
        ));
    }
    if let Some(n) = d.samples {
        out.push(format!("{prefix}.samples={n}"));
    }
    if let Some(a) = d.augment {
        out.push(format!("{prefix}.augment={a}"));
    }
}

/// Check the training data field by field: the schema's rules, again for the local runner,
/// which has no API server to apply them, and for objects stored before they existed.
fn check_train_data(data: &DataSpec) -> Result<(), Invalid> {
    if data.train.is_some() && !data.sources.is_empty() {
        return Err(invalid(
            "spec.data.sources",
            "set train (one data set) or sources (a weighted mix), not both",
        ));
    }
    for (field, d) in data.training_sources() {
        if d.kind != crate::crd::DatasetKind::Synthetic && d.path.is_none() {
            return Err(invalid(
                format!("{field}.path"),
                "is required for tesstrain and iam data sets",
            ));
        }
        if let Some(w) = d.weight {
            if !w.is_finite() || w <= 0.0 {
                return Err(invalid(
                    format!("{field}.weight"),
                    format!("must be positive and finite (got {w})"),
                ));
            }
        }
    }
    Ok(())
}

/// Names of the volumes every trial pod has already (see `job::build_job`).
pub const OPERATOR_VOLUMES: [&str; 3] = ["tmp", "dshm", "storage"];

/// Whether mounting at `path` would hide or replace the mount at `ours` (same path, or a
/// parent of it: a volume at `/dev` hides `/dev/shm`).
fn covers(path: &str, ours: &str) -> bool {
    let path = path.trim_end_matches('/');
    let ours = ours.trim_end_matches('/');
    path == ours || path.is_empty() || ours.starts_with(&format!("{path}/"))
}

/// Check `spec.volumes` and `spec.volumeMounts`: unique names that are not the operator's,
/// mounts of declared volumes at absolute paths that leave the operator's mounts alone.
pub fn check_volumes(spec: &TrainingRunSpec) -> Result<(), Invalid> {
    let mut names = std::collections::BTreeSet::new();
    for (i, v) in spec.volumes.iter().enumerate() {
        let field = format!("spec.volumes[{i}].name");
        if OPERATOR_VOLUMES.contains(&v.name.as_str()) {
            return Err(invalid(
                field,
                format!(
                    "`{}` is the name of a volume the operator adds to every trial pod ({})",
                    v.name,
                    OPERATOR_VOLUMES.join(", ")
                ),
            ));
        }
        if !names.insert(v.name.as_str()) {
            return Err(invalid(field, format!("`{}` is declared twice", v.name)));
        }
    }
    let mut ours = vec!["/tmp".to_string(), "/dev/shm".to_string()];
    if let Some(pvc) = &spec.storage.pvc {
        ours.push(
            pvc.mount_path
                .clone()
                .unwrap_or_else(|| crate::pod_parts::file_url_path(&spec.storage.url)),
        );
    }
    let mut paths = std::collections::BTreeSet::new();
    for (i, m) in spec.volume_mounts.iter().enumerate() {
        if !names.contains(m.name.as_str()) {
            return Err(invalid(
                format!("spec.volumeMounts[{i}].name"),
                format!("`{}` is not a volume of spec.volumes", m.name),
            ));
        }
        let field = format!("spec.volumeMounts[{i}].mountPath");
        if !m.mount_path.starts_with('/') {
            return Err(invalid(field, "must be an absolute path"));
        }
        if let Some(o) = ours.iter().find(|o| covers(&m.mount_path, o)) {
            return Err(invalid(
                field,
                format!(
                    "`{}` would replace or hide the operator's own mount at {o}",
                    m.mount_path
                ),
            ));
        }
        if !paths.insert(m.mount_path.trim_end_matches('/').to_string()) {
            return Err(invalid(
                field,
                format!("`{}` is mounted twice", m.mount_path),
            ));
        }
    }
    Ok(())
}

/// Where trials run decides which volumes a run may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumePolicy {
    /// Kubernetes pods; `hostPath` volumes only when the operator allows them (a hostPath
    /// reads and, unless read-only, writes the node's file system).
    Cluster {
        /// `--allow-host-path-volumes`.
        allow_host_path: bool,
    },
    /// The local runner: trials are processes on this machine and read paths directly, so it
    /// can honour only a `hostPath` volume mounted at its own path.
    Local,
}

impl Default for VolumePolicy {
    fn default() -> Self {
        Self::Cluster {
            allow_host_path: false,
        }
    }
}

/// Check the volume kinds against `policy`, naming the volume's field.
pub fn check_volume_policy(spec: &TrainingRunSpec, policy: VolumePolicy) -> Result<(), Invalid> {
    for (i, v) in spec.volumes.iter().enumerate() {
        let field = format!("spec.volumes[{i}]");
        match policy {
            VolumePolicy::Cluster { allow_host_path } => {
                if v.host_path.is_some() && !allow_host_path {
                    return Err(invalid(
                        format!("{field}.hostPath"),
                        "hostPath volumes are not allowed: the operator must run with \
                         --allow-host-path-volumes (chart value allowHostPathVolumes: true); \
                         use a PersistentVolumeClaim or a storage URL instead",
                    ));
                }
            }
            VolumePolicy::Local => {
                let same_path = v.host_path.as_ref().is_some_and(|h| {
                    spec.volume_mounts
                        .iter()
                        .filter(|m| m.name == v.name)
                        .all(|m| m.mount_path.trim_end_matches('/') == h.path.trim_end_matches('/'))
                });
                if !same_path {
                    return Err(invalid(
                        field,
                        format!(
                            "the local runner reads data from this machine's files directly and \
                             cannot provide volume `{}`; use a hostPath volume mounted at its own \
                             path, or a storage URL in spec.data",
                            v.name
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Bound the strings, lists and total size of `spec.hyperparameters` (a free-form object, so the
/// CRD's schema cannot), naming the first field over a bound.
fn check_sizes(hp: &Value) -> Result<(), Invalid> {
    fn walk(path: &str, v: &Value) -> Result<(), Invalid> {
        match v {
            Value::String(s) if s.len() > MAX_HYPERPARAMETER_STRING => Err(invalid(
                path,
                format!(
                    "a string of {} bytes; at most {MAX_HYPERPARAMETER_STRING} are allowed",
                    s.len()
                ),
            )),
            Value::Array(a) if a.len() > MAX_SEARCH_VALUES => Err(invalid(
                path,
                format!(
                    "a list of {} values; at most {MAX_SEARCH_VALUES} are allowed",
                    a.len()
                ),
            )),
            Value::Array(a) => a
                .iter()
                .enumerate()
                .try_for_each(|(i, x)| walk(&format!("{path}[{i}]"), x)),
            Value::Object(m) => m
                .iter()
                .try_for_each(|(k, x)| walk(&format!("{path}.{k}"), x)),
            _ => Ok(()),
        }
    }
    walk("spec.hyperparameters", hp)?;
    let size = serde_json::to_vec(hp).map_or(0, |b| b.len());
    if size > MAX_HYPERPARAMETERS_BYTES {
        return Err(invalid(
            "spec.hyperparameters",
            format!("{size} bytes of JSON; at most {MAX_HYPERPARAMETERS_BYTES} are allowed"),
        ));
    }
    Ok(())
}

/// The overrides of `spec.data`.
fn data_overrides(spec: &TrainingRunSpec) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(d) = &spec.data.train {
        dataset_overrides("data.train", d, &mut out);
    } else if !spec.data.sources.is_empty() {
        // A list replaces the whole field: one override, the list as JSON (which YAML reads).
        out.push(format!(
            "data.train={}",
            Value::Array(spec.data.sources.iter().map(worker_dataset).collect())
        ));
    }
    if let Some(d) = &spec.data.validation {
        dataset_overrides("data.validation", d, &mut out);
    }
    out
}

/// Overrides every trial of the run shares (data, model, budget, device).
pub fn base_overrides(spec: &TrainingRunSpec) -> Vec<String> {
    let mut out = data_overrides(spec);
    let m = &spec.model;
    if let Some(p) = m.preset {
        out.push(format!("model.preset={}", p.as_str()));
    }
    let num = |out: &mut Vec<String>, k: &str, v: Option<i64>| {
        if let Some(v) = v {
            out.push(format!("{k}={v}"));
        }
    };
    num(&mut out, "model.d_model", m.d_model);
    num(&mut out, "model.heads", m.heads);
    num(&mut out, "model.decoder_layers", m.decoder_layers);
    if let Some(v) = &m.encoder_channels {
        out.push(format!("model.encoder_channels={}", serde_json::json!(v)));
    }
    if let Some(v) = &m.encoder_blocks {
        out.push(format!("model.encoder_blocks={}", serde_json::json!(v)));
    }
    if let Some(v) = &m.init_from {
        out.push(format!(
            "model.init_from={}",
            serde_json::Value::String(v.clone())
        ));
    }
    let t = &spec.training;
    for (k, v) in [
        ("max_steps", t.max_steps),
        ("batch_size", t.batch_size),
        ("eval_interval", t.eval_interval),
        ("checkpoint.every_steps", t.checkpoint_every_steps),
        ("checkpoint.every_seconds", t.checkpoint_every_seconds),
    ] {
        if let Some(v) = v {
            out.push(format!("{k}={v}"));
        }
    }
    let device = match t.device {
        Some(d) => d.as_str(),
        None if spec.resources.gpus > 0 => "cuda",
        None => "cpu",
    };
    out.push(format!("device={device}"));
    out
}

/// Check the spec and plan its trials.
pub fn plan_trials(run_name: &str, spec: &TrainingRunSpec) -> Result<Vec<PlannedTrial>, Invalid> {
    let s = &spec.search;
    if !(1..=crate::crd::MAX_TRIALS_CAP).contains(&s.max_trials) {
        return Err(invalid(
            "spec.search.maxTrials",
            format!("must be in 1..={}", crate::crd::MAX_TRIALS_CAP),
        ));
    }
    if s.parallelism < 1 || s.parallelism > s.max_trials {
        return Err(invalid(
            "spec.search.parallelism",
            "must be in 1..=spec.search.maxTrials",
        ));
    }
    if spec.init_from.is_some() && spec.model.init_from.is_some() {
        return Err(invalid(
            "spec.initFrom",
            "set either spec.initFrom or the older spec.model.initFrom, not both \
             (spec.model.initFrom: X is spec.initFrom: {url: X})",
        ));
    }
    if let Some(i) = &spec.init_from {
        let named = [
            i.url.is_some(),
            i.model_deployment.is_some(),
            i.training_run.is_some(),
        ];
        // The schema's rule says the same; this covers specs that bypass it (the local runner).
        if named.iter().filter(|x| **x).count() != 1 {
            return Err(invalid(
                "spec.initFrom",
                "set exactly one of url, modelDeployment and trainingRun",
            ));
        }
        if i.sha256.is_some() && i.url.is_none() {
            return Err(invalid(
                "spec.initFrom.sha256",
                "goes with spec.initFrom.url (the other sources know their version)",
            ));
        }
    }
    // Left out and not filled by the operator's defaults (crate::defaults).
    if spec.image.is_empty() {
        return Err(invalid(
            "spec.image",
            crate::defaults::missing_image_message(spec.resources.gpus),
        ));
    }
    let url = spec.storage.url.as_str();
    if url.is_empty() {
        return Err(invalid(
            "spec.storage.url",
            crate::defaults::MISSING_STORAGE_MESSAGE,
        ));
    }
    if !["s3://", "gs://", "az://", "file://"]
        .iter()
        .any(|p| url.starts_with(p) && url.len() > p.len())
    {
        return Err(invalid(
            "spec.storage.url",
            "must be an s3://, gs://, az:// or file:// URL",
        ));
    }
    if url.starts_with("file://") && spec.storage.pvc.is_none() {
        return Err(invalid(
            "spec.storage.pvc",
            "is required for file:// storage",
        ));
    }
    check_train_data(&spec.data)?;
    check_volumes(spec)?;
    let hp = spec
        .hyperparameters
        .clone()
        .unwrap_or(serde_json::Value::Null);
    check_sizes(&hp)?;
    let sets = expand(&hp, s.algorithm, s.seed, s.max_trials as usize).map_err(|e| match e {
        SearchError::EmptyList(path) => invalid(
            format!("spec.hyperparameters.{path}"),
            "empty list: the search space would be empty (remove the field or give it a value)",
        ),
        SearchError::NotAnObject(kind) => invalid(
            "spec.hyperparameters",
            format!("must be an object of config fields, got {kind}"),
        ),
    })?;
    if let Err(e) = TrainConfig::parse("", &data_overrides(spec)) {
        return Err(invalid("spec.data", format!("{e:#}")));
    }
    let base = base_overrides(spec);
    let mut out = Vec::with_capacity(sets.len());
    for (index, set) in sets.into_iter().enumerate() {
        let mut overrides = base.clone();
        if set.params.as_object().is_some_and(|m| !m.is_empty()) {
            overrides.extend(flatten_overrides(&set.params));
        }
        let name = trial_name(run_name, index);
        if let Err(e) = TrainConfig::parse("", &overrides) {
            // The worker would exit with CONFIG_ERROR; say so now, naming the field.
            return Err(invalid(
                "spec.hyperparameters",
                format!("trial {name} ({}): {e:#}", summarize(&set.searched, 200)),
            ));
        }
        out.push(PlannedTrial {
            index,
            name,
            params: summarize(&set.searched, 256),
            overrides,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::*;
    use serde_json::json;

    pub(crate) fn spec() -> TrainingRunSpec {
        serde_json::from_value(json!({
            "image": "textrec/worker:1",
            "storage": {"url": "s3://bucket/runs"},
            "hyperparameters": {"optimizer": {"lr": [0.001, 0.002]}, "batch_size": [8, 16]},
            "search": {"maxTrials": 8, "parallelism": 2},
            "training": {"maxSteps": 100}
        }))
        .unwrap()
    }

    #[test]
    fn plans_a_2x2_grid_with_overrides() {
        let t = plan_trials("r", &spec()).unwrap();
        assert_eq!(t.len(), 4);
        assert_eq!(t[0].name, "r-t0");
        assert_eq!(t[3].params, "batch_size=16,optimizer.lr=0.002");
        assert!(t[0].overrides.contains(&"max_steps=100".to_string()));
        assert!(t[0].overrides.contains(&"device=cpu".to_string()));
        assert!(t[0].overrides.contains(&"optimizer.lr=0.001".to_string()));
    }

    #[test]
    fn worker_validation_names_the_field() {
        let mut s = spec();
        s.hyperparameters = Some(json!({"optimizer": {"learning_rate": [1, 2]}}));
        let e = plan_trials("r", &s).unwrap_err();
        assert_eq!(e.field, "spec.hyperparameters");
        assert!(e.message.contains("learning_rate"), "{e}");
        s.hyperparameters = Some(json!({"optimizer": {"lr": [-1.0]}}));
        assert!(plan_trials("r", &s)
            .unwrap_err()
            .message
            .contains("optimizer.lr"));
    }

    #[test]
    fn image_or_storage_left_without_a_default_is_invalid() {
        let mut s = spec();
        s.image.clear();
        let e = plan_trials("r", &s).unwrap_err();
        assert_eq!(e.field, "spec.image");
        assert!(e.message.contains("TEXTREC_DEFAULT_WORKER_IMAGE"), "{e}");
        let mut s = spec();
        s.storage.url.clear();
        let e = plan_trials("r", &s).unwrap_err();
        assert_eq!(e.field, "spec.storage.url");
        assert!(e.message.contains("defaults.storage.url"), "{e}");
    }

    #[test]
    fn schema_rules_are_rechecked() {
        let mut s = spec();
        s.search.parallelism = 9;
        assert_eq!(
            plan_trials("r", &s).unwrap_err().field,
            "spec.search.parallelism"
        );
        let mut s = spec();
        s.storage.url = "file:///data".into();
        assert_eq!(plan_trials("r", &s).unwrap_err().field, "spec.storage.pvc");
        let mut s = spec();
        s.hyperparameters = Some(json!({"batch_size": []}));
        let e = plan_trials("r", &s).unwrap_err();
        assert_eq!(e.field, "spec.hyperparameters.batch_size");
    }

    #[test]
    fn init_from_and_the_older_model_init_from_exclude_each_other() {
        let mut s = spec();
        s.model.init_from = Some("s3://bucket/models/prod".into());
        s.init_from = Some(crate::crd::InitFrom {
            model_deployment: Some("reader".into()),
            ..Default::default()
        });
        assert_eq!(plan_trials("r", &s).unwrap_err().field, "spec.initFrom");
        s.model.init_from = None;
        plan_trials("r", &s).unwrap();
        s.init_from.as_mut().unwrap().sha256 = Some("a".repeat(64));
        assert_eq!(
            plan_trials("r", &s).unwrap_err().field,
            "spec.initFrom.sha256"
        );
    }

    #[test]
    fn init_from_reaches_every_trial() {
        let mut s = spec();
        s.model.init_from = Some("s3://bucket/models/prod".into());
        let t = plan_trials("r", &s).unwrap();
        assert!(t.iter().all(|t| t
            .overrides
            .contains(&r#"model.init_from="s3://bucket/models/prod""#.to_string())));
    }

    #[test]
    fn hyperparameter_strings_lists_and_size_are_bounded() {
        let mut s = spec();
        let long = "x".repeat(MAX_HYPERPARAMETER_STRING + 1);
        s.hyperparameters = Some(json!({"data": {"train": {"path": long}}}));
        let e = plan_trials("r", &s).unwrap_err();
        assert_eq!(e.field, "spec.hyperparameters.data.train.path", "{e}");
        // Inside a searched list too.
        s.hyperparameters = Some(json!({"data": {"train": {"path": ["/a", long]}}}));
        let e = plan_trials("r", &s).unwrap_err();
        assert_eq!(e.field, "spec.hyperparameters.data.train.path[1]", "{e}");
        s.hyperparameters = Some(json!({"seed": vec![1; MAX_SEARCH_VALUES + 1]}));
        assert_eq!(
            plan_trials("r", &s).unwrap_err().field,
            "spec.hyperparameters.seed"
        );
        // Many values each within bounds, too many bytes in all.
        let fields: serde_json::Map<String, Value> = (0..20)
            .map(|i| {
                (
                    format!("f{i}"),
                    json!("x".repeat(MAX_HYPERPARAMETER_STRING)),
                )
            })
            .collect();
        s.hyperparameters = Some(Value::Object(fields));
        let e = plan_trials("r", &s).unwrap_err();
        assert_eq!(e.field, "spec.hyperparameters");
        assert!(e.message.contains("bytes of JSON"), "{e}");
        // At the bound: accepted (up to the worker's own parser).
        s.hyperparameters = Some(json!({"seed": vec![1; MAX_SEARCH_VALUES]}));
        s.search.max_trials = 2;
        s.search.parallelism = 1;
        assert!(plan_trials("r", &s).is_ok());
    }

    #[test]
    fn a_list_of_sources_becomes_one_override_and_is_checked_by_field() {
        let mut s = spec();
        s.data.sources = serde_json::from_value(json!([
            {"kind": "synthetic", "weight": 0.7},
            {"kind": "tesstrain", "path": "s3://b/flags/", "splitFile": "s3://b/s.txt",
             "weight": 0.3, "augment": true}
        ]))
        .unwrap();
        let t = plan_trials("r", &s).unwrap();
        let o: Vec<&String> = t[0]
            .overrides
            .iter()
            .filter(|o| o.starts_with("data.train"))
            .collect();
        assert_eq!(o.len(), 1, "{o:?}");
        let cfg = TrainConfig::parse("", &t[0].overrides).unwrap();
        let sources = cfg.data.train.sources();
        assert_eq!(sources[1].path.as_deref(), Some("s3://b/flags/"));
        assert_eq!(sources[1].split_file.as_deref(), Some("s3://b/s.txt"));
        assert_eq!(
            (sources[1].weight, sources[1].augment),
            (Some(0.3), Some(true))
        );
        // The single set becomes field overrides, merged over the defaults.
        s.data.sources.clear();
        s.data.train =
            Some(serde_json::from_value(json!({"kind": "tesstrain", "path": "/d"})).unwrap());
        let t = plan_trials("r", &s).unwrap();
        assert!(t[0]
            .overrides
            .contains(&"data.train.path=\"/d\"".to_string()));

        let both = {
            let mut b = s.clone();
            b.data.sources = vec![serde_json::from_value(json!({"kind": "synthetic"})).unwrap()];
            b
        };
        assert_eq!(
            plan_trials("r", &both).unwrap_err().field,
            "spec.data.sources"
        );
        s.data.train = None;
        for (sources, field) in [
            (
                json!([{"kind": "synthetic"}, {"kind": "synthetic", "weight": 0}]),
                "spec.data.sources[1].weight",
            ),
            (
                json!([{"kind": "synthetic", "weight": -2}]),
                "spec.data.sources[0].weight",
            ),
            (
                json!([{"kind": "synthetic"}, {"kind": "iam"}]),
                "spec.data.sources[1].path",
            ),
        ] {
            s.data.sources = serde_json::from_value(sources.clone()).unwrap();
            let e = plan_trials("r", &s).unwrap_err();
            assert_eq!(e.field, field, "{sources}: {e}");
        }
    }

    fn with_volumes(volumes: Value, mounts: Value) -> TrainingRunSpec {
        let mut s = spec();
        s.volumes = serde_json::from_value(volumes).unwrap();
        s.volume_mounts = serde_json::from_value(mounts).unwrap();
        s
    }

    #[test]
    fn volumes_are_unique_declared_and_leave_the_operators_mounts_alone() {
        let ok = with_volumes(
            json!([{"name": "flags", "configMap": {"name": "flags"}}, {"name": "scratch", "emptyDir": {}}]),
            json!([{"name": "flags", "mountPath": "/data/flags", "readOnly": true},
                   {"name": "scratch", "mountPath": "/tmp/scratch"}]),
        );
        assert!(plan_trials("r", &ok).is_ok());
        for (volumes, mounts, field, says) in [
            (
                json!([{"name": "tmp", "emptyDir": {}}]),
                json!([]),
                "spec.volumes[0].name",
                "operator",
            ),
            (
                json!([{"name": "a", "emptyDir": {}}, {"name": "a", "emptyDir": {}}]),
                json!([]),
                "spec.volumes[1].name",
                "twice",
            ),
            (
                json!([{"name": "a", "emptyDir": {}}]),
                json!([{"name": "b", "mountPath": "/b"}]),
                "spec.volumeMounts[0].name",
                "not a volume",
            ),
            (
                json!([{"name": "a", "emptyDir": {}}]),
                json!([{"name": "a", "mountPath": "/tmp"}]),
                "spec.volumeMounts[0].mountPath",
                "/tmp",
            ),
            (
                json!([{"name": "a", "emptyDir": {}}]),
                json!([{"name": "a", "mountPath": "/dev"}]),
                "spec.volumeMounts[0].mountPath",
                "/dev/shm",
            ),
            (
                json!([{"name": "a", "emptyDir": {}}]),
                json!([{"name": "a", "mountPath": "data"}]),
                "spec.volumeMounts[0].mountPath",
                "absolute",
            ),
            (
                json!([{"name": "a", "emptyDir": {}}]),
                json!([{"name": "a", "mountPath": "/d"}, {"name": "a", "mountPath": "/d/"}]),
                "spec.volumeMounts[1].mountPath",
                "twice",
            ),
        ] {
            let e = plan_trials("r", &with_volumes(volumes, mounts)).unwrap_err();
            assert_eq!(e.field, field, "{e}");
            assert!(e.message.contains(says), "{e}");
        }
        // The storage PVC's mount path is the operator's too.
        let mut s = with_volumes(
            json!([{"name": "a", "emptyDir": {}}]),
            json!([{"name": "a", "mountPath": "/data"}]),
        );
        s.storage.url = "file:///data/runs".into();
        s.storage.pvc = Some(serde_json::from_value(json!({"claimName": "c"})).unwrap());
        let e = plan_trials("r", &s).unwrap_err();
        assert!(e.message.contains("/data/runs"), "{e}");
    }

    #[test]
    fn host_paths_need_the_operators_permission_and_locally_their_own_path() {
        let s = with_volumes(
            json!([{"name": "data", "hostPath": {"path": "/srv/lines"}}]),
            json!([{"name": "data", "mountPath": "/srv/lines"}]),
        );
        let e = check_volume_policy(&s, VolumePolicy::default()).unwrap_err();
        assert_eq!(e.field, "spec.volumes[0].hostPath");
        assert!(e.message.contains("--allow-host-path-volumes"), "{e}");
        check_volume_policy(
            &s,
            VolumePolicy::Cluster {
                allow_host_path: true,
            },
        )
        .unwrap();
        check_volume_policy(&s, VolumePolicy::Local).unwrap();
        let moved = with_volumes(
            json!([{"name": "data", "hostPath": {"path": "/srv/lines"}}]),
            json!([{"name": "data", "mountPath": "/data"}]),
        );
        let e = check_volume_policy(&moved, VolumePolicy::Local).unwrap_err();
        assert!(e.message.contains("local runner"), "{e}");
        let config_map = with_volumes(
            json!([{"name": "flags", "configMap": {"name": "flags"}}]),
            json!([{"name": "flags", "mountPath": "/data"}]),
        );
        check_volume_policy(&config_map, VolumePolicy::default()).unwrap();
        let e = check_volume_policy(&config_map, VolumePolicy::Local).unwrap_err();
        assert_eq!(e.field, "spec.volumes[0]");
    }
}
