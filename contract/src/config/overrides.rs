//! Merging a config over the defaults and applying `--set a.b.c=value` overrides.

use crate::exit::ConfigError;

/// Refuse `.nan` and `.inf` in YAML `text` (found under `prefix`), naming the field: the JSON
/// tree configs are merged in has no such numbers and would turn them into `null`, which an
/// optional field (`weight`) would silently read as unset.
pub(super) fn reject_non_finite(text: &str, prefix: &str) -> Result<(), ConfigError> {
    fn walk(v: &serde_yaml::Value, path: String) -> Result<(), ConfigError> {
        match v {
            serde_yaml::Value::Number(n) if n.as_f64().is_some_and(|f| !f.is_finite()) => Err(
                ConfigError::field(&path, format!("must be a finite number (got {n})")),
            ),
            serde_yaml::Value::Sequence(items) => items
                .iter()
                .enumerate()
                .try_for_each(|(i, x)| walk(x, format!("{path}[{i}]"))),
            serde_yaml::Value::Mapping(m) => m.iter().try_for_each(|(k, x)| {
                let k = k.as_str().map_or_else(|| format!("{k:?}"), str::to_string);
                walk(
                    x,
                    if path.is_empty() {
                        k
                    } else {
                        format!("{path}.{k}")
                    },
                )
            }),
            _ => Ok(()),
        }
    }
    // Malformed YAML is reported by the real parse that follows.
    match serde_yaml::from_str::<serde_yaml::Value>(text) {
        Ok(v) => walk(&v, prefix.to_string()),
        Err(_) => Ok(()),
    }
}

/// Deep-merge `over` into `base`: objects merge key by key, anything else replaces.
pub(super) fn merge_tree(base: &mut serde_json::Value, over: serde_json::Value) {
    match (base, over) {
        (serde_json::Value::Object(b), serde_json::Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => merge_tree(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

/// Apply one `a.b.c=value` override to a config tree. The value is parsed as YAML, so numbers,
/// booleans, lists (`[32,64]`) and strings all work; intermediate objects are created.
pub fn apply_override(tree: &mut serde_json::Value, spec: &str) -> Result<(), ConfigError> {
    let (key, raw) = spec.split_once('=').ok_or_else(|| {
        ConfigError::new(format!("override `{spec}` is not of the form key=value"))
    })?;
    let key = key.trim();
    if key.is_empty() || key.split('.').any(str::is_empty) {
        return Err(ConfigError::new(format!(
            "override `{spec}`: empty field name"
        )));
    }
    reject_non_finite(raw, key)?;
    let value: serde_json::Value = serde_yaml::from_str(raw)
        .map_err(|e| ConfigError::new(format!("override `{spec}`: bad value: {e}")))?;
    let mut node = tree;
    let parts: Vec<&str> = key.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        if !node.is_object() {
            if node.is_null() {
                *node = serde_json::Value::Object(Default::default());
            } else {
                return Err(ConfigError::new(format!(
                    "override `{spec}`: `{}` is not a section",
                    parts[..i].join(".")
                )));
            }
        }
        let map = node.as_object_mut().expect("checked object");
        if i + 1 == parts.len() {
            map.insert((*part).to_string(), value);
            return Ok(());
        }
        node = map
            .entry((*part).to_string())
            .or_insert(serde_json::Value::Null);
    }
    unreachable!("loop returns on the last part")
}

/// Flatten nested hyperparameters (`{optimizer: {lr: 0.001}}`) into `--set` overrides
/// (`optimizer.lr=0.001`). Lists stay values (`[32, 64]`): only objects nest.
pub fn flatten_overrides(params: &serde_json::Value) -> Vec<String> {
    fn walk(prefix: &str, v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    let p = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&p, v, out);
                }
            }
            other => out.push(format!("{prefix}={other}")),
        }
    }
    let mut out = Vec::new();
    walk("", params, &mut out);
    out
}
