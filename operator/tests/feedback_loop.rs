//! The whole feedback loop through `textrec-operator local`: a tiny model is served; users flag
//! 40 lines with their corrections (`POST /v1/flag`, as the demo page does); a TrainingRun
//! fine-tunes the served model (`initFrom: {modelDeployment}`) on a mix of synthetic lines and
//! the flags folder; the runner
//! scores the candidate and the served model on a held-out share of the flags and switches to
//! the better one while a client keeps calling (no request may fail); a worse candidate is
//! refused, visibly in `local status -o json`.
//!
//! It needs `textrec-worker` next to the test binary's target folder
//! (`cargo build -p textrec-worker`; `cargo test --workspace` builds it).

use std::io::{Read, Write};
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

mod support {
    pub mod local_env;
}
use support::local_env::{recognize, served, synth_lines, LocalEnv as Env, Runner};

// No CTC head: in so few steps the tiny network's CTC head emits only blanks.
const TRIAL: &str = r#"
    seed: 1
    threads: 1
    model: {ctc_weight: 0.0}
    log_interval: 5
    checkpoint: {every_seconds: 0, keep: 1}
    data: {loader_threads: 1, prefetch_batches: 2}"#;

fn base_and_deployment(heldout: &Path) -> String {
    format!(
        r#"
apiVersion: textrec.dev/v1alpha1
kind: TrainingRun
metadata: {{name: base}}
spec:
  model: {{preset: tiny}}
  hyperparameters:{TRIAL}
    optimizer: {{lr: 0.003, warmup_steps: 2}}
  data:
    train: {{kind: synthetic}}
    validation: {{kind: synthetic, samples: 8}}
  search: {{maxTrials: 1, parallelism: 1}}
  training: {{maxSteps: 10, batchSize: 8, evalInterval: 10, checkpointEverySteps: 10, device: cpu}}
---
apiVersion: textrec.dev/v1alpha1
kind: ModelDeployment
metadata: {{name: reader}}
spec:
  model: {{fromTrainingRun: base}}
  strategy: HotReload
  flagging: {{perClientPerMinute: 6000}}
  promotion:
    policy: Automatic
    minImprovement: 0.0
    selector: {{matchLabels: {{loop: candidate}}}}
    evaluation: {{path: "{}"}}
"#,
        heldout.display()
    )
}

fn candidate(name: &str, flags: &Path, heldout: &Path, extra: &str, steps: u64) -> String {
    format!(
        r#"
apiVersion: textrec.dev/v1alpha1
kind: TrainingRun
metadata: {{name: {name}, labels: {{loop: candidate}}}}
spec:
{extra}
  hyperparameters:{TRIAL}
    optimizer: {{lr: 0.003, warmup_steps: 2}}
  data:
    sources:
      - {{kind: synthetic, weight: 0.3}}
      - {{kind: tesstrain, path: "{}", weight: 0.7}}
    validation: {{kind: tesstrain, path: "{}"}}
  search: {{maxTrials: 1, parallelism: 1}}
  training: {{maxSteps: {steps}, batchSize: 8, evalInterval: {steps}, checkpointEverySteps: {steps}, device: cpu}}
"#,
        flags.display(),
        heldout.display()
    )
}

/// `POST path` with a JSON body on a local server: (status code, body).
fn http_post(addr: &str, path: &str, body: &Value) -> (u16, String) {
    let body = body.to_string();
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    write!(
        conn,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).unwrap();
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

/// `local status -o json` as a `KIND/NAME` → object map.
fn status(env: &Env) -> Value {
    let out = env.local(&["status", "-o", "json"]).output().unwrap();
    let list: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    let mut by_name = serde_json::Map::new();
    for item in list["items"].as_array().into_iter().flatten() {
        let key = format!(
            "{}/{}",
            item["kind"].as_str().unwrap_or_default(),
            item["metadata"]["name"].as_str().unwrap_or_default()
        );
        by_name.insert(key, item.clone());
    }
    Value::Object(by_name)
}

/// Poll [`status`] until `f` finds what it waits for.
fn wait<T>(env: &Env, what: &str, secs: u64, mut f: impl FnMut(&Value) -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(t) = f(&status(env)) {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n--- runner log ---\n{}\n--- status ---\n{:#}",
            env.log(),
            status(env)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn flags_fine_tune_the_served_model_and_the_better_model_takes_over() {
    let env = Env::new();
    let flags = env.dir.path().join("data/flags/default/reader");
    let heldout = env.dir.path().join("heldout");
    let first = env.dir.path().join("first.yaml");
    std::fs::write(&first, base_and_deployment(&heldout)).unwrap();
    let log = std::fs::File::create(env.dir.path().join("runner.log")).unwrap();
    let _runner = Runner(
        env.local(&["run", first.to_str().unwrap(), "--ports", "auto", "--plain"])
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap(),
    );

    // 1. The base model serves.
    let base_sha = wait(&env, "base to succeed", 300, |s| {
        let st = &s["TrainingRun/base"]["status"];
        assert_ne!(st["phase"], "Failed", "{st:#}");
        st["bestModel"]["sha256"].as_str().map(str::to_string)
    });
    let (grpc, http) = {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let s = env.state();
            let md = &s["deployments"]["reader"];
            if md["deployment"]["status"]["phase"] == "Available"
                && served(&s, "reader").as_deref() == Some(base_sha.as_str())
            {
                break (
                    md["server"]["grpc"].as_str().unwrap().to_string(),
                    md["server"]["http"].as_str().unwrap().to_string(),
                );
            }
            assert!(Instant::now() < deadline, "not served\n{}", env.log());
            std::thread::sleep(Duration::from_millis(200));
        }
    };

    // 2. Users flag 40 lines with the text they should read.
    let lines = env.dir.path().join("lines");
    let pngs = synth_lines(&env.worker, &lines, 40);
    for png in &pngs {
        let text = std::fs::read_to_string(png.with_extension("gt.txt")).unwrap();
        let image = base64::engine::general_purpose::STANDARD.encode(std::fs::read(png).unwrap());
        let request = json!({"image": image, "prediction": "", "corrected_text": text.trim()});
        // Flags are rate-limited per client: a real client waits as told, and so does this one.
        let (mut code, mut body) = http_post(&http, "/v1/flag", &request);
        for _ in 0..20 {
            if code != 429 {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
            (code, body) = http_post(&http, "/v1/flag", &request);
        }
        assert_eq!(code, 201, "{body}");
    }
    // A held-out share of the flags (a quarter) scores the models; the rest is for training.
    std::fs::create_dir_all(&heldout).unwrap();
    let mut stems: Vec<String> = std::fs::read_dir(&flags)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".gt.txt").map(str::to_string)
        })
        .collect();
    stems.sort();
    assert_eq!(stems.len(), 40, "every flag stored as a training pair");
    for stem in stems.iter().step_by(4) {
        for ext in ["png", "gt.txt", "jsonl"] {
            let name = format!("{stem}.{ext}");
            if flags.join(&name).exists() {
                std::fs::rename(flags.join(&name), heldout.join(&name)).unwrap();
            }
        }
    }

    // 3. A client keeps calling while the fine-tune is evaluated and switched to.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let client = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        let (w, grpc, img) = (env.worker.clone(), grpc.clone(), pngs[..1].to_vec());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                if recognize(&w, &grpc, &img).status.success() {
                    ok.fetch_add(1, Ordering::SeqCst);
                } else {
                    failed.fetch_add(1, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let tuned = env.dir.path().join("tuned.yaml");
    std::fs::write(
        &tuned,
        candidate(
            "tuned",
            &flags,
            &heldout,
            "  initFrom: {modelDeployment: reader}",
            150,
        ),
    )
    .unwrap();
    let out = env
        .local(&["run", tuned.to_str().unwrap(), "--plain"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        env.log()
    );
    let s = status(&env);
    let run = &s["TrainingRun/tuned"]["status"];
    assert_eq!(run["initFrom"]["sha256"], base_sha.as_str(), "{run:#}");
    let tuned_sha = run["bestModel"]["sha256"].as_str().unwrap().to_string();
    let md = wait(&env, "a decision on tuned", 300, |s| {
        let md = &s["ModelDeployment/reader"]["status"];
        let decided = md["currentRevision"] == 2
            || md["declined"]
                .as_array()
                .is_some_and(|d| d.iter().any(|d| d["trainingRun"] == "tuned"));
        decided.then(|| md.clone())
    });
    let evals = md["evaluations"].as_array().unwrap();
    let cer_of = |sha: &str| {
        evals
            .iter()
            .find(|e| e["modelSha256"] == sha)
            .and_then(|e| e["cer"].as_f64())
            .unwrap()
    };
    let (base_cer, tuned_cer) = (cer_of(&base_sha), cer_of(&tuned_sha));
    assert!(
        tuned_cer < base_cer,
        "the fine-tune (CER {tuned_cer} on the held-out flags) must beat the base model ({base_cer}) for this test to mean anything\n{md:#}"
    );
    assert_eq!(md["currentRevision"], 2, "{md:#}");
    assert!(
        md["history"][1]["reason"]
            .as_str()
            .unwrap()
            .contains("on the evaluation set"),
        "{md:#}"
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    while served(&env.state(), "reader").as_deref() != Some(tuned_sha.as_str()) {
        assert!(Instant::now() < deadline, "never switched\n{}", env.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    client.join().unwrap();
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "requests failed during the switch"
    );
    assert!(ok.load(Ordering::SeqCst) > 0);

    // 4. A worse candidate (a few steps from scratch) is refused, with both numbers.
    let worse = env.dir.path().join("worse.yaml");
    std::fs::write(
        &worse,
        candidate("worse", &flags, &heldout, "  model: {preset: tiny}", 2),
    )
    .unwrap();
    let out = env
        .local(&["run", worse.to_str().unwrap(), "--plain"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", env.log());
    let declined = wait(&env, "worse to be declined", 300, |s| {
        s["ModelDeployment/reader"]["status"]["declined"]
            .as_array()
            .and_then(|d| d.iter().find(|d| d["trainingRun"] == "worse").cloned())
    });
    assert_eq!(
        declined["deployedMetric"].as_f64(),
        Some(tuned_cer),
        "{declined:#}"
    );
    assert!(declined["metric"].as_f64().unwrap() >= tuned_cer);
    let md = &status(&env)["ModelDeployment/reader"]["status"];
    assert_eq!(md["currentRevision"], 2);
    assert_eq!(md["model"]["sha256"], tuned_sha.as_str());
}
