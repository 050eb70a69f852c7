//! What a TrainingRun's spec turns into before anything runs: its trials (names, parameters,
//! worker overrides), checked with the worker's own config parser so that a bad field is
//! reported in the run's status (naming the field) instead of failing pod after pod.
//!
//! No Kubernetes client here: the local runner reuses this as is.

use serde_json::Value;
use textrec_contract::config::{flatten_overrides, TrainConfig};

use crate::crd::{DatasetRef, TrainingRunSpec};
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

/// Overrides every trial of the run shares (data, model, budget, device).
pub fn base_overrides(spec: &TrainingRunSpec) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(d) = &spec.data.train {
        dataset_overrides("data.train", d, &mut out);
    }
    if let Some(d) = &spec.data.validation {
        dataset_overrides("data.validation", d, &mut out);
    }
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
}
