//! What the API server checks when a TrainingRun or ModelDeployment is created, evaluated
//! from the CRDs this binary generates: the OpenAPI value validations (types, bounds, lengths,
//! patterns, enums, required fields) and the CEL rules (`x-kubernetes-validations`).
//!
//! The local runner admits objects through here, so a bound or rule added to a CRD type is
//! enforced locally the moment it is in the schema, with the same message, and there is no second
//! copy of it to forget.

use std::sync::OnceLock;

use kube::CustomResourceExt;
use kube_cel::{compile_schema, CompiledSchema, Validator as CelValidator};
use serde_json::Value;

use super::{ModelDeployment, TrainingRun};

/// One broken rule: where, and the schema's message for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Dotted path of the field (`spec.search.parallelism`).
    pub field: String,
    /// What is wrong: the CEL rule's message, or the value validation's.
    pub message: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// One kind's schema, compiled once.
struct KindSchema {
    values: jsonschema::Validator,
    rules: CompiledSchema,
}

impl KindSchema {
    fn of(
        crd: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    ) -> Self {
        let version = crd.spec.versions.into_iter().next().expect("one version");
        let schema = serde_json::to_value(
            version
                .schema
                .and_then(|s| s.open_api_v3_schema)
                .expect("a structural schema"),
        )
        .expect("schema serializes");
        // OpenAPI v3.0's schema objects are JSON Schema draft 4 plus extensions (`nullable`,
        // `x-kubernetes-*`) that a draft-4 validator ignores; formats are annotations only, as
        // they are for the API server's `int32`/`int64`.
        let values = jsonschema::draft4::options()
            .build(&schema)
            .expect("the generated CRD schema is valid JSON Schema");
        Self {
            values,
            rules: compile_schema(&schema),
        }
    }

    fn check(&self, object: &Value) -> Vec<Violation> {
        let object = without_nulls(object);
        let mut out: Vec<Violation> = self
            .values
            .iter_errors(&object)
            .map(|e| Violation {
                field: dotted(e.instance_path().as_str()),
                message: e.to_string(),
            })
            .collect();
        // CEL rules see only well-typed values on the API server too.
        if out.is_empty() {
            if let Err(errors) = cel().validate_compiled(&self.rules, &object, None) {
                out.extend(errors.into_vec().into_iter().map(|e| Violation {
                    field: e.field_path.clone(),
                    message: e.message.clone(),
                }));
            }
        }
        out
    }
}

fn cel() -> &'static CelValidator {
    static CEL: OnceLock<CelValidator> = OnceLock::new();
    CEL.get_or_init(CelValidator::new)
}

fn schemas() -> &'static [(&'static str, KindSchema); 2] {
    static SCHEMAS: OnceLock<[(&'static str, KindSchema); 2]> = OnceLock::new();
    SCHEMAS.get_or_init(|| {
        [
            ("TrainingRun", KindSchema::of(TrainingRun::crd())),
            ("ModelDeployment", KindSchema::of(ModelDeployment::crd())),
        ]
    })
}

/// Check `object` (a whole TrainingRun or ModelDeployment, as applied) against its CRD's schema
/// and CEL rules, as the API server would. Returns every violation, in schema order.
pub fn admit(kind: &str, object: &Value) -> Result<(), Vec<Violation>> {
    let Some((_, schema)) = schemas().iter().find(|(k, _)| *k == kind) else {
        return Err(vec![Violation {
            field: "kind".into(),
            message: format!("{kind} is not a textrec kind"),
        }]);
    };
    let violations = schema.check(object);
    if violations.is_empty() {
        Ok(())
    } else {
        Err(violations)
    }
}

/// `/spec/search/maxTrials` → `spec.search.maxTrials`; list items become `[i]`.
fn dotted(pointer: &str) -> String {
    let mut out = String::new();
    for seg in pointer.split('/').skip(1) {
        let seg = seg.replace("~1", "/").replace("~0", "~");
        if seg.bytes().all(|b| b.is_ascii_digit()) && !seg.is_empty() {
            out.push_str(&format!("[{seg}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(&seg);
        }
    }
    if out.is_empty() {
        "(object)".into()
    } else {
        out
    }
}

/// `object` without its `null` members: an explicit `null` means "not set", as the typed
/// objects and `kubectl apply` treat it.
fn without_nulls(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), without_nulls(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(without_nulls).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pointers_become_field_paths() {
        assert_eq!(dotted("/spec/search/maxTrials"), "spec.search.maxTrials");
        assert_eq!(dotted("/spec/env/0/name"), "spec.env[0].name");
        assert_eq!(dotted(""), "(object)");
    }

    #[test]
    fn value_bounds_and_cel_rules_both_apply() {
        let run = json!({
            "apiVersion": "textrec.dev/v1alpha1", "kind": "TrainingRun",
            "metadata": {"name": "r"},
            "spec": {"image": "w:1", "storage": {"url": "s3://b/p"},
                     "search": {"maxTrials": 2, "parallelism": 1}}
        });
        admit("TrainingRun", &run).unwrap();

        let mut too_many = run.clone();
        too_many["spec"]["search"]["maxTrials"] = json!(100_000);
        let v = admit("TrainingRun", &too_many).unwrap_err();
        assert_eq!(v[0].field, "spec.search.maxTrials", "{v:?}");

        let mut rule = run.clone();
        rule["spec"]["search"]["parallelism"] = json!(3);
        let v = admit("TrainingRun", &rule).unwrap_err();
        assert!(
            v.iter()
                .any(|v| v.message.contains("must not exceed spec.search.maxTrials")),
            "{v:?}"
        );
    }

    #[test]
    fn reading_widths_are_bounded_and_named_in_the_error() {
        let md = |reading: Value| {
            json!({
                "apiVersion": "textrec.dev/v1alpha1", "kind": "ModelDeployment",
                "metadata": {"name": "m"},
                "spec": {"model": {"fromTrainingRun": "r"}, "reading": reading}
            })
        };
        admit(
            "ModelDeployment",
            &md(json!({"widths": [1, 1.1, 1.25, 1.4, 1.6], "rereadBelow": 0.8})),
        )
        .unwrap();
        for (reading, field) in [
            (json!({"widths": []}), "spec.reading.widths"),
            (json!({"widths": [1, 9]}), "spec.reading.widths[1]"),
            (json!({"widths": [0.1]}), "spec.reading.widths[0]"),
            (
                json!({"widths": [1], "rereadBelow": 1.5}),
                "spec.reading.rereadBelow",
            ),
            (json!({"rereadBelow": 0.5}), "spec.reading"),
        ] {
            let v = admit("ModelDeployment", &md(reading.clone())).unwrap_err();
            assert!(v.iter().any(|v| v.field == field), "{reading}: {v:?}");
        }
        let v = admit("ModelDeployment", &md(json!({"rereadBelow": 0.5}))).unwrap_err();
        assert!(
            v[0].message.contains("\"widths\" is a required property"),
            "{v:?}"
        );
    }

    #[test]
    fn the_serving_precision_is_one_of_three_names() {
        let md = |precision: &str| {
            json!({
                "apiVersion": "textrec.dev/v1alpha1", "kind": "ModelDeployment",
                "metadata": {"name": "m"},
                "spec": {"model": {"fromTrainingRun": "r"}, "precision": precision}
            })
        };
        for ok in ["fp32", "bf16", "auto"] {
            admit("ModelDeployment", &md(ok)).unwrap();
        }
        for bad in ["fp16", "BF16", ""] {
            let v = admit("ModelDeployment", &md(bad)).unwrap_err();
            assert!(
                v.iter().any(|v| v.field == "spec.precision"),
                "{bad}: {v:?}"
            );
        }
    }

    #[test]
    fn image_and_storage_may_be_left_to_the_operator_defaults() {
        let run = json!({
            "apiVersion": "textrec.dev/v1alpha1", "kind": "TrainingRun",
            "metadata": {"name": "r"},
            "spec": {"search": {"maxTrials": 2, "parallelism": 1}}
        });
        admit("TrainingRun", &run).unwrap();
        let mut only_secret = run.clone();
        only_secret["spec"]["storage"] = json!({"secretRef": "s"});
        admit("TrainingRun", &only_secret).unwrap();
        let md = json!({
            "apiVersion": "textrec.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": "m"},
            "spec": {"model": {"fromTrainingRun": "r"}}
        });
        admit("ModelDeployment", &md).unwrap();
        // Set, they must still be meaningful.
        let mut empty = run.clone();
        empty["spec"]["image"] = json!("");
        let v = admit("TrainingRun", &empty).unwrap_err();
        assert_eq!(v[0].field, "spec.image", "{v:?}");
    }

    #[test]
    fn training_data_is_one_set_or_a_list_of_sources() {
        let (run, _) = examples();
        let mix = json!([{"kind": "synthetic", "weight": 0.7},
               {"kind": "tesstrain", "path": "s3://b/flags/", "weight": 0.3, "augment": true}]);
        let mut r = run.clone();
        set(
            &mut r,
            "spec.data.train",
            json!({"kind": "tesstrain", "path": "s3://b/flags/"}),
        );
        assert_eq!(admit("TrainingRun", &r), Ok(()));
        let mut r = run.clone();
        set(&mut r, "spec.data.sources", mix.clone());
        assert_eq!(admit("TrainingRun", &r), Ok(()));
        // Refused, naming the field: both forms at once, a list in `train`. (The rules on each
        // source, a path for file sets and a positive weight, sit on the list's items, which this
        // mirror does not evaluate; the API server does, and `validate::check_train_data`
        // repeats them for the local runner.)
        let mut r = run.clone();
        set(&mut r, "spec.data.sources", mix.clone());
        set(&mut r, "spec.data.train", json!({"kind": "synthetic"}));
        let e = admit("TrainingRun", &r).unwrap_err();
        assert!(format!("{e:?}").contains("not both"), "{e:?}");
        let mut r = run.clone();
        set(&mut r, "spec.data.train", mix);
        let e = admit("TrainingRun", &r).unwrap_err();
        assert!(format!("{e:?}").contains("spec.data.train"), "{e:?}");
    }

    #[test]
    fn early_stopping_is_optional_and_bounded() {
        let run = json!({
            "apiVersion": "textrec.dev/v1alpha1", "kind": "TrainingRun",
            "metadata": {"name": "r"},
            "spec": {"image": "w:1", "storage": {"url": "s3://b/p"},
                     "search": {"maxTrials": 4, "parallelism": 1}}
        });
        admit("TrainingRun", &run).unwrap();
        let with = |es: Value| {
            let mut r = run.clone();
            r["spec"]["earlyStopping"] = es;
            r
        };
        admit(
            "TrainingRun",
            &with(json!({"algorithm": "MedianStop", "startStep": 0, "minTrialsRequired": 1})),
        )
        .unwrap();
        admit(
            "TrainingRun",
            &with(json!({"startStep": 5000, "minTrialsRequired": 3})),
        )
        .unwrap();
        // Every field has a default.
        admit("TrainingRun", &with(json!({}))).unwrap();
        for (field, bad) in [
            ("startStep", json!(-1)),
            ("minTrialsRequired", json!(0)),
            ("algorithm", json!("Hyperband")),
        ] {
            let v = admit("TrainingRun", &with(json!({ field: bad }))).unwrap_err();
            assert_eq!(v[0].field, format!("spec.earlyStopping.{field}"), "{v:?}");
        }
        // minTrialsRequired counts the other trials: at most maxTrials - 1.
        let v = admit("TrainingRun", &with(json!({"minTrialsRequired": 4}))).unwrap_err();
        assert!(
            v.iter().any(|v| v
                .message
                .contains("must be less than spec.search.maxTrials")),
            "{v:?}"
        );
        // The typed spec reads the defaults.
        let typed: TrainingRun = serde_json::from_value(with(json!({}))).unwrap();
        let es = typed.spec.early_stopping.unwrap();
        assert_eq!(
            (es.algorithm, es.start_step, es.min_trials_required),
            (super::super::EarlyStoppingAlgorithm::MedianStop, 0, 3)
        );
    }

    /// (kind, schema path, rule, the mutations that break it).
    type RuleCase = (
        &'static str,
        &'static str,
        &'static str,
        Vec<(&'static str, Value)>,
    );

    /// The quickstart's TrainingRun and ModelDeployment, as applied.
    fn examples() -> (Value, Value) {
        let text = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/quickstart.yaml"),
        )
        .unwrap();
        let mut docs = serde_yaml::Deserializer::from_str(&text)
            .map(|d| serde_json::to_value(serde_yaml::Value::deserialize(d).unwrap()).unwrap());
        (docs.next().unwrap(), docs.next().unwrap())
    }
    use serde::Deserialize;

    /// Every `x-kubernetes-validations` rule of the checked-in CRDs: (kind, schema path, rule,
    /// message).
    fn crd_rules() -> Vec<(String, String, String, String)> {
        fn walk(
            node: &Value,
            path: &str,
            kind: &str,
            out: &mut Vec<(String, String, String, String)>,
        ) {
            for r in node["x-kubernetes-validations"]
                .as_array()
                .into_iter()
                .flatten()
            {
                out.push((
                    kind.into(),
                    path.into(),
                    r["rule"].as_str().unwrap().into(),
                    r["message"].as_str().unwrap_or_default().into(),
                ));
            }
            for (k, v) in node["properties"].as_object().into_iter().flatten() {
                walk(v, &format!("{path}.{k}"), kind, out);
            }
        }
        let mut out = Vec::new();
        for (file, kind) in [
            ("trainingruns.textrec.dev.yaml", "TrainingRun"),
            ("modeldeployments.textrec.dev.yaml", "ModelDeployment"),
        ] {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../crds")
                .join(file);
            let crd: Value = serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
            let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
            walk(schema, "", kind, &mut out);
        }
        out
    }

    /// Set `value` at the dotted `path` of `object`, creating objects on the way.
    fn set(object: &mut Value, path: &str, value: Value) {
        let mut at = object;
        for key in path.split('.') {
            if !at.is_object() {
                *at = json!({});
            }
            at = at
                .as_object_mut()
                .unwrap()
                .entry(key)
                .or_insert(Value::Null);
        }
        *at = value;
    }

    #[test]
    fn every_cel_rule_of_the_crds_is_enforced_with_its_message() {
        // One mutation of a valid example per rule, keyed by (kind, schema path, rule): a rule
        // added to a CRD without a case here fails the coverage check below.
        let cases: Vec<RuleCase> = vec![
            ("TrainingRun", ".spec", "self.search.parallelism <= self.search.maxTrials",
             vec![("spec.search", json!({"maxTrials": 2, "parallelism": 3}))]),
            ("TrainingRun", ".spec",
             "!has(self.earlyStopping) || !has(self.earlyStopping.minTrialsRequired) || self.earlyStopping.minTrialsRequired < self.search.maxTrials",
             vec![("spec.search", json!({"maxTrials": 3, "parallelism": 1})),
                  ("spec.earlyStopping", json!({"algorithm": "MedianStop", "minTrialsRequired": 3}))]),
            ("TrainingRun", ".spec.storage", "!has(self.url) || !self.url.startsWith('file://') || has(self.pvc)",
             vec![("spec.storage", json!({"url": "file:///runs"}))]),
            ("TrainingRun", ".spec.storage.url", "self.matches('^(s3|gs|az|file)://.+')",
             vec![("spec.storage", json!({"url": "http://runs"}))]),
            ("TrainingRun", ".spec.data.validation", "self.kind == 'synthetic' || has(self.path)",
             vec![("spec.data.validation", json!({"kind": "iam"}))]),
            ("TrainingRun", ".spec.data.validation", "!has(self.weight) || self.weight > 0.0",
             vec![("spec.data.validation", json!({"kind": "synthetic", "weight": -1.0}))]),
            ("TrainingRun", ".spec.data.train", "self.kind == 'synthetic' || has(self.path)",
             vec![("spec.data.train", json!({"kind": "tesstrain"}))]),
            ("TrainingRun", ".spec.data.train", "!has(self.weight) || self.weight > 0.0",
             vec![("spec.data.train", json!({"kind": "synthetic", "weight": 0.0}))]),
            ("TrainingRun", ".spec.data", "!(has(self.train) && has(self.sources))",
             vec![("spec.data", json!({"train": {"kind": "synthetic"}, "sources": [{"kind": "synthetic"}]}))]),
            ("TrainingRun", ".spec.initFrom",
             "[has(self.url), has(self.modelDeployment), has(self.trainingRun)].filter(x, x).size() == 1",
             vec![("spec.initFrom", json!({"url": "builtin:small", "trainingRun": "base"}))]),
            ("TrainingRun", ".spec.initFrom", "!has(self.sha256) || has(self.url)",
             vec![("spec.initFrom", json!({"modelDeployment": "reader", "sha256": "a".repeat(64)}))]),
            ("TrainingRun", ".spec.initFrom.sha256", "self.matches('^[0-9a-f]{64}$')",
             vec![("spec.initFrom", json!({"url": "s3://b/m", "sha256": "ABC"}))]),
            ("ModelDeployment", ".spec.model", "has(self.fromTrainingRun) != has(self.url)",
             vec![("spec.model", json!({}))]),
            ("ModelDeployment", ".spec.model", "!has(self.url) || has(self.sha256)",
             vec![("spec.model", json!({"url": "s3://b/m"}))]),
            ("ModelDeployment", ".spec.model.sha256", "self.matches('^[0-9a-f]{64}$')",
             vec![("spec.model", json!({"url": "s3://b/m", "sha256": "ABC"}))]),
            ("ModelDeployment", ".spec",
             "!has(self.autoscaling) || self.autoscaling.minReplicas <= self.autoscaling.maxReplicas",
             vec![("spec.autoscaling", json!({"minReplicas": 5, "maxReplicas": 2}))]),
            ("ModelDeployment", ".spec", "self.ports.grpc != self.ports.http",
             vec![("spec.ports", json!({"grpc": 9000, "http": 9000}))]),
            ("ModelDeployment", ".spec.reading",
             "self.widths.all(w, self.widths.filter(x, x == w).size() == 1)",
             vec![("spec.reading", json!({"widths": [1.0, 1.25, 1.0]}))]),
        ];
        let rules = crd_rules();
        let mut covered: Vec<(String, String, String)> = cases
            .iter()
            .map(|(k, p, r, _)| (k.to_string(), p.to_string(), r.to_string()))
            .collect();
        let mut in_crds: Vec<(String, String, String)> = rules
            .iter()
            .map(|(k, p, r, _)| (k.clone(), p.clone(), r.clone()))
            .collect();
        covered.sort();
        in_crds.sort();
        assert_eq!(covered, in_crds, "every CRD rule has exactly one case here");

        let (run, deployment) = examples();
        admit("TrainingRun", &run).expect("the example is valid");
        admit("ModelDeployment", &deployment).expect("the example is valid");
        for (kind, path, rule, mutations) in cases {
            let message = &rules
                .iter()
                .find(|(k, p, r, _)| k == kind && p == path && r == rule)
                .unwrap()
                .3;
            let mut object = if kind == "TrainingRun" {
                run.clone()
            } else {
                deployment.clone()
            };
            for (field, value) in mutations {
                set(&mut object, field, value);
            }
            let violations = admit(kind, &object).expect_err(rule);
            assert!(
                violations.iter().any(|v| &v.message == message),
                "{rule}: expected {message:?}, got {violations:?}"
            );
        }
    }

    #[test]
    fn every_value_bound_of_the_crds_is_enforced_at_its_field() {
        // Walk each schema; for every numeric bound, length, item count and enum on a plain
        // (non-list) path, set a value just outside it in a valid example.
        fn walk(node: &Value, path: &str, out: &mut Vec<(String, Value)>) {
            let bound = |k: &str| node.get(k).and_then(Value::as_f64);
            if let Some(min) = bound("minimum") {
                out.push((path.into(), json!(min as i64 - 1)));
            }
            if let Some(max) = bound("maximum") {
                out.push((path.into(), json!(max as i64 + 1)));
            }
            if node.get("minLength").is_some() {
                out.push((path.into(), json!("")));
            }
            if let Some(max) = bound("maxLength") {
                out.push((path.into(), json!("x".repeat(max as usize + 1))));
            }
            if node.get("minItems").is_some() {
                out.push((path.into(), json!([])));
            }
            if let Some(max) = bound("maxItems") {
                out.push((path.into(), json!(vec![1; max as usize + 1])));
            }
            if node.get("enum").is_some() {
                out.push((path.into(), json!("NotAValue")));
            }
            for (k, v) in node["properties"].as_object().into_iter().flatten() {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                walk(v, &p, out);
            }
        }
        let (run, deployment) = examples();
        let mut checked = 0;
        for (kind, example, crd) in [
            ("TrainingRun", run, TrainingRun::crd()),
            ("ModelDeployment", deployment, ModelDeployment::crd()),
        ] {
            let schema = serde_json::to_value(
                crd.spec.versions[0]
                    .schema
                    .as_ref()
                    .unwrap()
                    .open_api_v3_schema
                    .as_ref()
                    .unwrap(),
            )
            .unwrap();
            let mut cases = Vec::new();
            walk(&schema["properties"]["spec"], "spec", &mut cases);
            for (field, value) in cases {
                let mut object = example.clone();
                set(&mut object, &field, value.clone());
                let violations =
                    admit(kind, &object).expect_err(&format!("{kind} {field}={value} is refused"));
                assert!(
                    violations.iter().any(|v| v.field == field),
                    "{kind} {field}={value}: {violations:?}"
                );
                checked += 1;
            }
        }
        assert!(checked >= 40, "only {checked} bounds found");
    }
}
