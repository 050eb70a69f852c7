//! The manifest `submit` creates: read from a file or stdin, changed by `--set` and
//! `--generate-name`, and checked only as far as needed to know what to create where. Everything
//! else is the API server's to judge, so CI sees exactly the errors `kubectl create` would.

use std::io::Read;
use std::path::Path;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;
use serde_json::Value;

use crate::search::kind;

/// The `apiVersion` and `kind` a manifest must have.
pub const API_VERSION: &str = "textrec.dev/v1alpha1";
/// See [`API_VERSION`].
pub const KIND: &str = "TrainingRun";

/// Read one YAML or JSON document from `file` (`-`: stdin).
pub fn read(file: &Path) -> Result<Value, String> {
    let (text, source) = if file == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| format!("cannot read the manifest from stdin: {e}"))?;
        (text, "stdin".to_string())
    } else {
        let text = std::fs::read_to_string(file)
            .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        (text, file.display().to_string())
    };
    parse(&text).map_err(|e| format!("{source}: {e}"))
}

/// Parse the text of a manifest: exactly one document (JSON is YAML too).
pub fn parse(text: &str) -> Result<Value, String> {
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let value = Value::deserialize(doc).map_err(|e| format!("not valid YAML: {e}"))?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    match docs.len() {
        1 => Ok(docs.pop().unwrap_or_default()),
        0 => Err("holds no document".into()),
        n => Err(format!(
            "holds {n} documents; submit creates one TrainingRun per call"
        )),
    }
}

/// One `--set PATH=VALUE`.
#[derive(Debug, Clone, PartialEq)]
pub struct Set {
    /// The keys from the top of the object (`spec`, `search`, `maxTrials`); a number indexes
    /// into a list.
    pub path: Vec<String>,
    /// The value, read as YAML (`2` is a number, `true` a boolean, `[1, 2]` a list); `null`
    /// (or nothing after `=`) removes the field.
    pub value: Value,
}

impl Set {
    /// Parse `spec.search.maxTrials=2`. A `\.` is a dot inside a key
    /// (`metadata.labels.app\.kubernetes\.io/name=ocr`).
    pub fn parse(text: &str) -> Result<Self, String> {
        let Some((path, value)) = text.split_once('=') else {
            return Err(format!(
                "`{text}`: expected PATH=VALUE, e.g. spec.search.maxTrials=2"
            ));
        };
        let path = split_path(path);
        if path.iter().any(String::is_empty) {
            return Err(format!("`{text}`: empty key in the path"));
        }
        let value: Value = serde_yaml::from_str(value)
            .map_err(|e| format!("`{text}`: the value is not YAML: {e}"))?;
        Ok(Set { path, value })
    }

    /// Apply it to `doc`, creating the objects on the way that do not exist yet.
    pub fn apply(&self, doc: &mut Value) -> Result<(), String> {
        let dotted = self.path.join(".");
        let (last, parents) = self.path.split_last().ok_or("empty path")?;
        let mut at = doc;
        for key in parents {
            at = child(at, key).map_err(|e| format!("--set {dotted}: {e}"))?;
        }
        match at {
            Value::Object(map) if self.value.is_null() => {
                map.remove(last);
            }
            Value::Object(map) => {
                map.insert(last.clone(), self.value.clone());
            }
            Value::Array(list) => {
                let i = index(last, list.len()).map_err(|e| format!("--set {dotted}: {e}"))?;
                list[i] = self.value.clone();
            }
            other => {
                return Err(format!(
                    "--set {dotted}: cannot set `{last}` inside {}",
                    kind(other)
                ))
            }
        }
        Ok(())
    }
}

/// `a.b\.c` → `["a", "b.c"]`.
fn split_path(path: &str) -> Vec<String> {
    let mut keys = vec![String::new()];
    let mut chars = path.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some('.') => keys.last_mut().unwrap().push('.'),
                Some(other) => {
                    let key = keys.last_mut().unwrap();
                    key.push('\\');
                    key.push(other);
                }
                None => keys.last_mut().unwrap().push('\\'),
            },
            '.' => keys.push(String::new()),
            c => keys.last_mut().unwrap().push(c),
        }
    }
    keys
}

/// The child `key` of `v` (an object's field or a list's item); a missing field, or a null
/// on the way, becomes an empty object.
fn child<'a>(v: &'a mut Value, key: &str) -> Result<&'a mut Value, String> {
    if v.is_null() {
        *v = Value::Object(Default::default());
    }
    let what = kind(v);
    match v {
        Value::Object(map) => Ok(map
            .entry(key.to_string())
            .or_insert(Value::Object(Default::default()))),
        Value::Array(list) => {
            let i = index(key, list.len())?;
            Ok(&mut list[i])
        }
        _ => Err(format!("cannot go into `{key}` of {what}")),
    }
}

fn index(key: &str, len: usize) -> Result<usize, String> {
    key.parse::<usize>()
        .ok()
        .filter(|i| *i < len)
        .ok_or_else(|| format!("`{key}` is not an index of a list of {len}"))
}

/// `--generate-name`: the name becomes the prefix the API server completes with a random
/// suffix, so the same file can be submitted again and again (a manifest that already has only
/// `generateName` keeps it).
pub fn generate_name(doc: &mut Value) -> Result<(), String> {
    let meta = doc
        .get_mut("metadata")
        .and_then(Value::as_object_mut)
        .ok_or("--generate-name: the manifest has no metadata")?;
    match meta.remove("name") {
        Some(Value::String(name)) if !name.is_empty() => {
            // `ocr-` + `x7k2p` reads better than `ocrx7k2p`.
            let prefix = if name.ends_with('-') {
                name
            } else {
                format!("{name}-")
            };
            meta.insert("generateName".into(), Value::String(prefix));
            Ok(())
        }
        _ if meta.get("generateName").and_then(Value::as_str).is_some() => Ok(()),
        _ => {
            Err("--generate-name: the manifest has no metadata.name to start the name with".into())
        }
    }
}

/// Check what `submit` relies on: a TrainingRun that is named (or asks for a generated name).
pub fn check(doc: &Value) -> Result<(), String> {
    if !doc.is_object() {
        return Err(format!("the manifest is {}, not an object", kind(doc)));
    }
    let api_version = doc["apiVersion"].as_str().unwrap_or_default();
    let kind = doc["kind"].as_str().unwrap_or_default();
    if api_version != API_VERSION || kind != KIND {
        return Err(format!(
            "the manifest is {} {}, not apiVersion {API_VERSION} kind {KIND}",
            if api_version.is_empty() {
                "(no apiVersion)"
            } else {
                api_version
            },
            if kind.is_empty() { "(no kind)" } else { kind },
        ));
    }
    // Malformed metadata (a label that is not a string) would otherwise surface only after
    // connecting, as a serialization error; it is a usage error like the rest of this check.
    let meta = &doc["metadata"];
    if !meta.is_null() {
        serde_path_to_error::deserialize::<_, ObjectMeta>(meta).map_err(|e| {
            match e.path().to_string().as_str() {
                "." => format!("metadata: {}", e.inner()),
                path => format!("metadata.{path}: {}", e.inner()),
            }
        })?;
    }
    let named = ["name", "generateName"]
        .iter()
        .any(|k| doc["metadata"][k].as_str().is_some_and(|s| !s.is_empty()));
    if !named {
        return Err("the manifest has neither metadata.name nor metadata.generateName".into());
    }
    Ok(())
}

/// The namespace to create in: `--namespace`, else the manifest's, else the client's default.
/// Like kubectl, a `--namespace` that contradicts the manifest is an error, not an override.
pub fn namespace(flag: Option<&str>, doc: &Value, default: &str) -> Result<String, String> {
    let own = doc["metadata"]["namespace"]
        .as_str()
        .filter(|s| !s.is_empty());
    match (flag, own) {
        (Some(f), Some(o)) if f != o => Err(format!(
            "the manifest's namespace {o} does not match --namespace {f}"
        )),
        (Some(f), _) => Ok(f.to_string()),
        (None, Some(o)) => Ok(o.to_string()),
        (None, None) => Ok(default.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run() -> Value {
        json!({"apiVersion": API_VERSION, "kind": KIND,
            "metadata": {"name": "ocr", "labels": {"team": "a"}},
            "spec": {"search": {"maxTrials": 8}, "env": [{"name": "A", "value": "1"}]}})
    }

    fn set(doc: &mut Value, text: &str) -> Result<(), String> {
        Set::parse(text)?.apply(doc)
    }

    #[test]
    fn set_parses_values_as_yaml() {
        let mut doc = run();
        set(&mut doc, "spec.search.maxTrials=2").unwrap();
        set(&mut doc, "spec.suspend=true").unwrap();
        set(&mut doc, "spec.image=ghcr.io/x/worker:1.2").unwrap();
        set(&mut doc, "spec.storage.url=s3://b/p").unwrap();
        set(&mut doc, "spec.objective.metric=wer").unwrap();
        set(&mut doc, "spec.training.maxSteps=1000").unwrap();
        set(&mut doc, "spec.model.preset='1'").unwrap();
        set(&mut doc, "spec.hyperparameters.optimizer.lr=[0.001, 0.002]").unwrap();
        set(&mut doc, "metadata.name=ocr-ci").unwrap();
        let spec = &doc["spec"];
        assert_eq!(spec["search"], json!({"maxTrials": 2}));
        assert_eq!(spec["suspend"], json!(true));
        assert_eq!(spec["image"], json!("ghcr.io/x/worker:1.2"));
        assert_eq!(spec["storage"]["url"], json!("s3://b/p"));
        assert_eq!(spec["objective"]["metric"], json!("wer"));
        assert_eq!(spec["training"]["maxSteps"], json!(1000));
        assert_eq!(spec["model"]["preset"], json!("1"));
        assert_eq!(
            spec["hyperparameters"]["optimizer"]["lr"],
            json!([0.001, 0.002])
        );
        assert_eq!(doc["metadata"]["name"], json!("ocr-ci"));
    }

    #[test]
    fn set_indexes_lists_escapes_dots_and_removes_with_null() {
        let mut doc = run();
        set(&mut doc, "spec.env.0.value=2").unwrap();
        assert_eq!(doc["spec"]["env"][0]["value"], json!(2));
        set(&mut doc, r"metadata.labels.app\.kubernetes\.io/name=ocr").unwrap();
        assert_eq!(
            doc["metadata"]["labels"]["app.kubernetes.io/name"],
            json!("ocr")
        );
        set(&mut doc, "metadata.labels.team=").unwrap();
        set(&mut doc, "spec.search=null").unwrap();
        assert!(doc["metadata"]["labels"].get("team").is_none());
        assert!(doc["spec"].get("search").is_none());
    }

    #[test]
    fn set_refuses_what_it_cannot_do() {
        let mut doc = run();
        for (text, says) in [
            ("spec.search.maxTrials", "expected PATH=VALUE"),
            ("spec..x=1", "empty key"),
            ("=1", "empty key"),
            ("spec.x=[1", "not YAML"),
            ("spec.env.3.value=1", "not an index of a list of 1"),
            ("spec.env.name=1", "not an index"),
            ("metadata.name.x=1", "cannot set `x` inside a string"),
            ("metadata.name.x.y=1", "cannot go into `x` of a string"),
        ] {
            let err = set(&mut doc, text).unwrap_err();
            assert!(err.contains(says), "{text}: {err}");
        }
    }

    #[test]
    fn generate_name_turns_the_name_into_a_prefix() {
        let mut doc = run();
        generate_name(&mut doc).unwrap();
        assert_eq!(doc["metadata"]["generateName"], json!("ocr-"));
        assert!(doc["metadata"].get("name").is_none());
        check(&doc).unwrap();
        // Again (already a prefix), and a manifest that only has a prefix.
        generate_name(&mut doc).unwrap();
        assert_eq!(doc["metadata"]["generateName"], json!("ocr-"));
        let mut doc = json!({"metadata": {"name": "ocr-"}});
        generate_name(&mut doc).unwrap();
        assert_eq!(doc["metadata"]["generateName"], json!("ocr-"));
        assert!(generate_name(&mut json!({"metadata": {}})).is_err());
        assert!(generate_name(&mut json!({})).is_err());
    }

    #[test]
    fn check_wants_a_named_training_run() {
        check(&run()).unwrap();
        let mut other = run();
        other["kind"] = json!("ModelDeployment");
        assert!(check(&other).unwrap_err().contains("ModelDeployment"));
        let mut unnamed = run();
        unnamed["metadata"] = json!({});
        assert!(check(&unnamed).unwrap_err().contains("metadata.name"));
        assert!(check(&json!([1])).unwrap_err().contains("a list"));
        let mut bad_label = run();
        bad_label["metadata"]["labels"]["ci"] = json!(true);
        let err = check(&bad_label).unwrap_err();
        assert!(
            err.starts_with("metadata.labels.ci: invalid type: boolean `true`"),
            "{err}"
        );
    }

    #[test]
    fn parse_wants_exactly_one_document() {
        assert_eq!(
            parse("{\"kind\": \"TrainingRun\"}").unwrap()["kind"],
            "TrainingRun"
        );
        assert_eq!(
            parse("---\nkind: TrainingRun\n---\n").unwrap()["kind"],
            "TrainingRun"
        );
        assert!(parse("kind: A\n---\nkind: B\n")
            .unwrap_err()
            .contains("2 documents"));
        assert!(parse("").unwrap_err().contains("no document"));
        assert!(parse("a: [").unwrap_err().contains("not valid YAML"));
    }

    #[test]
    fn namespace_flag_manifest_then_default() {
        let mut doc = run();
        assert_eq!(namespace(None, &doc, "default").unwrap(), "default");
        assert_eq!(namespace(Some("ml"), &doc, "default").unwrap(), "ml");
        doc["metadata"]["namespace"] = json!("ml");
        assert_eq!(namespace(None, &doc, "default").unwrap(), "ml");
        assert_eq!(namespace(Some("ml"), &doc, "default").unwrap(), "ml");
        assert!(namespace(Some("ci"), &doc, "default").is_err());
    }
}
