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
    assert_eq!(
        cols,
        vec![
            "Phase",
            "Trials",
            "Running",
            "Best",
            "Reason",
            "Best-Trial",
            "Message",
            "Age"
        ]
    );
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

/// One RBAC grant: (apiGroup, resource, verb, resourceNames).
type Grant = (String, String, String, Vec<String>);

fn grants(rules: &Value) -> std::collections::BTreeSet<Grant> {
    let strs = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect())
            .unwrap_or_default()
    };
    let mut out = std::collections::BTreeSet::new();
    for rule in rules.as_array().expect("rules is a list") {
        let mut names = strs(&rule["resourceNames"]);
        names.sort();
        for g in strs(&rule["apiGroups"]) {
            for r in strs(&rule["resources"]) {
                for v in strs(&rule["verbs"]) {
                    out.insert((g.clone(), r.clone(), v, names.clone()));
                }
            }
        }
    }
    out
}

fn repo_file(path: &str) -> String {
    std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(path),
    )
    .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The rules of the Role or ClusterRole named `name` (operator/rbac.yaml).
fn rbac_yaml_rules(kind: &str, name: &str) -> Value {
    let text = repo_file("operator/rbac.yaml");
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v: Value = serde::Deserialize::deserialize(doc).unwrap();
        if v["kind"] == kind && v["metadata"]["name"] == name {
            return v["rules"].clone();
        }
    }
    panic!("operator/rbac.yaml has no {kind} {name}");
}

/// The chart's rules as its default values render them, read from the template's text (Helm is
/// not needed): the `textrec.operatorRules` block, with the `rbac.readSecrets` part left out
/// (off by default), and the leader-election Role's rules with the default Lease name.
fn chart_rules() -> (Value, Value) {
    let text = repo_file("charts/textrec/templates/rbac.yaml");
    let values: Value = serde_yaml::from_str(&repo_file("charts/textrec/values.yaml")).unwrap();
    assert_eq!(
        values["rbac"]["readSecrets"], false,
        "the comparison assumes the default"
    );
    let lease = values["leaderElection"]["leaseName"].as_str().unwrap();

    let define = text
        .split("{{- define \"textrec.operatorRules\" -}}")
        .nth(1)
        .expect("textrec.operatorRules is defined");
    let mut operator = String::new();
    let mut skipping = false;
    for line in define.lines() {
        let t = line.trim();
        if t.starts_with("{{- if .Values.rbac.readSecrets") {
            skipping = true;
        } else if t.starts_with("{{- end") && skipping {
            skipping = false;
        } else if t.starts_with("{{- end") {
            break;
        } else if !skipping {
            assert!(!t.contains("{{"), "unexpected template in the rules: {t}");
            operator.push_str(line);
            operator.push('\n');
        }
    }

    let role = text
        .split("name: {{ $fullname }}-leader-election\n")
        .nth(1)
        .expect("a leader-election Role");
    let body = role.split("rules:\n").nth(1).unwrap();
    let leader: String = body
        .lines()
        .take_while(|l| !l.starts_with("---"))
        .map(|l| {
            l.replace(
                "{{ .Values.leaderElection.leaseName | quote }}",
                &format!("{lease:?}"),
            ) + "\n"
        })
        .collect();
    assert!(!leader.contains("{{"), "unexpected template: {leader}");
    (
        serde_yaml::from_str(&operator).unwrap(),
        serde_yaml::from_str(&leader).unwrap(),
    )
}

/// The chart grants what operator/rbac.yaml grants, no more (controllers.rs checks rbac.yaml
/// against the calls the code makes).
#[test]
fn chart_rbac_equals_operator_rbac_yaml() {
    let (operator, leader) = chart_rules();
    let want = grants(&rbac_yaml_rules("ClusterRole", "textrec-operator"));
    let have = grants(&operator);
    assert_eq!(
        have.difference(&want).collect::<Vec<_>>(),
        Vec::<&Grant>::new(),
        "the chart grants more than operator/rbac.yaml"
    );
    assert_eq!(
        want.difference(&have).collect::<Vec<_>>(),
        Vec::<&Grant>::new(),
        "the chart lacks grants of operator/rbac.yaml"
    );
    assert_eq!(
        grants(&leader),
        grants(&rbac_yaml_rules("Role", "textrec-operator-leader-election")),
        "leader-election Role"
    );
}
