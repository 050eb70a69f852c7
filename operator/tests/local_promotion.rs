//! Like-with-like promotion through the built binaries: `textrec-operator local run` serves the
//! built-in model, a TrainingRun finishes a worse candidate, and before deciding the runner
//! scores both on `spec.promotion.evaluation` with `textrec-worker eval`. The candidate is
//! declined with both numbers and the set's digest, visibly in `local status -o json`, and the
//! built-in model keeps serving. A fine-tune of the served model (`spec.initFrom`) records it
//! as its parent.
//!
//! It needs `textrec-worker` next to the test binary's target folder
//! (`cargo build -p textrec-worker`; `cargo test --workspace` builds it).

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;

mod support {
    pub mod local_env;
}
use support::local_env::{operator, synth_lines, worker, Runner};

fn builtin_sha() -> String {
    let m = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../models/small/manifest.json"
    ))
    .unwrap();
    textrec_contract::manifest::sha256_hex(&m)
}

fn manifests(heldout: &Path) -> String {
    format!(
        r#"
apiVersion: textrec.dev/v1alpha1
kind: ModelDeployment
metadata: {{name: reader}}
spec:
  model: {{url: "builtin:small", sha256: "{sha}"}}
  strategy: HotReload
  promotion:
    policy: Automatic
    minImprovement: 0.0
    selector: {{matchLabels: {{candidate: "yes"}}}}
    evaluation: {{path: "{heldout}", samples: 6}}
---
apiVersion: textrec.dev/v1alpha1
kind: TrainingRun
metadata: {{name: scratch, labels: {{candidate: "yes"}}}}
spec:
  model: {{preset: tiny}}
  hyperparameters:
    seed: 1
    threads: 1
    data:
      loader_threads: 1
      train: {{synthetic: {{max_chars: 12}}}}
      validation: {{samples: 4, synthetic: {{split: validation, max_chars: 12}}}}
  search: {{maxTrials: 1, parallelism: 1}}
  training: {{maxSteps: 4, batchSize: 4, evalInterval: 4, device: cpu}}
---
apiVersion: textrec.dev/v1alpha1
kind: TrainingRun
metadata: {{name: tuned}}
spec:
  initFrom: {{modelDeployment: reader}}
  hyperparameters:
    seed: 1
    threads: 1
    optimizer: {{lr: 1.0e-9}}
    data:
      loader_threads: 1
      train: {{synthetic: {{max_chars: 12}}}}
      validation: {{samples: 2, synthetic: {{split: validation, max_chars: 12}}}}
  search: {{maxTrials: 1, parallelism: 1}}
  training: {{maxSteps: 1, batchSize: 2, evalInterval: 1, device: cpu}}
"#,
        sha = builtin_sha(),
        heldout = heldout.display()
    )
}

#[test]
fn a_worse_candidate_is_declined_on_the_evaluation_set_and_a_fine_tune_records_its_parent() {
    let dir = tempfile::tempdir().unwrap();
    let worker = worker();
    let data = dir.path().join("data");
    let storage = format!("file://{}", data.display());
    let heldout = dir.path().join("heldout");
    synth_lines(&worker, &heldout, 6);
    let file = dir.path().join("all.yaml");
    std::fs::write(&file, manifests(&heldout)).unwrap();
    let log_path = dir.path().join("runner.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let _runner = Runner(
        operator()
            .args([
                "local",
                "run",
                file.to_str().unwrap(),
                "--ports",
                "auto",
                "--plain",
            ])
            .args(["--storage", &storage])
            .env("TEXTREC_WORKER", &worker)
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap(),
    );
    let status = || -> Value {
        let out = operator()
            .args(["local", "status", "-o", "json", "--storage", &storage])
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    };
    let item = |list: &Value, kind: &str, name: &str| -> Value {
        list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|i| i["kind"] == kind && i["metadata"]["name"] == name)
            .cloned()
            .unwrap_or(Value::Null)
    };
    let deadline = Instant::now() + Duration::from_secs(400);
    let declined = loop {
        let list = status();
        let md = item(&list, "ModelDeployment", "reader");
        if let Some(d) = md["status"]["declined"]
            .as_array()
            .and_then(|d| d.iter().find(|d| d["trainingRun"] == "scratch"))
        {
            break (d.clone(), md);
        }
        assert!(
            Instant::now() < deadline,
            "no decision\n--- runner log ---\n{}\n--- status ---\n{list:#}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let (d, md) = declined;
    let (cand, deployed) = (
        d["metric"].as_f64().unwrap(),
        d["deployedMetric"].as_f64().unwrap(),
    );
    assert!(cand >= deployed, "{d:#}");
    let digest = d["datasetDigest"].as_str().unwrap();
    assert_eq!(digest.len(), 64, "{d:#}");
    assert!(
        d["reason"].as_str().unwrap().contains("evaluation set"),
        "{d:#}"
    );
    // Both models were scored on the same content, and the built-in model still serves.
    let evals = &md["status"]["evaluations"];
    assert!(
        evals
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["datasetDigest"] == digest && e["lines"] == 6),
        "{evals:#}"
    );
    assert_eq!(md["status"]["model"]["url"], "builtin:small");
    assert_eq!(md["status"]["currentRevision"], 1);

    // The fine-tune started from the served model and says so.
    let deadline = Instant::now() + Duration::from_secs(400);
    let tuned = loop {
        let run = item(&status(), "TrainingRun", "tuned");
        if run["status"]["phase"] == "Succeeded" {
            break run;
        }
        assert!(
            Instant::now() < deadline && run["status"]["phase"] != "Failed",
            "tuned did not succeed\n--- runner log ---\n{}\n{run:#}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let parent = &tuned["status"]["initFrom"];
    assert_eq!(parent["url"], "builtin:small", "{tuned:#}");
    assert_eq!(parent["sha256"], builtin_sha().as_str());
    let model_url = tuned["status"]["bestModel"]["url"].as_str().unwrap();
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(Path::new(model_url.trim_start_matches("file://")).join("manifest.json"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        manifest["provenance"]["parent"]["sha256"],
        builtin_sha().as_str()
    );
}
