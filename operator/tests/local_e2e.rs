//! End to end through the built binaries: `textrec-operator local run` trains a 2-trial grid of
//! `trial-tiny`-sized trials, one worker is SIGKILLed mid-run and must resume to the weights an
//! uninterrupted run reaches, the best trial (by the objective) is served and answers a gRPC
//! `Recognize`, a second, better run is promoted while a client keeps calling (no request may
//! fail), and `local rollback` brings the first model back.
//!
//! It needs `textrec-worker` next to the test binary's target folder
//! (`cargo build -p textrec-worker`; `cargo test --workspace` builds it).

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

mod support {
    pub mod local_env;
}
use support::local_env::{recognize, served, synth_lines, LocalEnv as Env, Runner};

// No CTC head: in the few steps these trials get, the tiny network's CTC head still emits only
// blanks (CER 1.0) while the decoder's CER already falls, and the test needs the longer run to
// be measurably better than the shorter one.
const TRIAL_CONFIG: &str = r#"
    seed: 1
    threads: 1
    model: {ctc_weight: 0.0}
    log_interval: 5
    checkpoint: {every_seconds: 0, keep: 3}
    data:
      loader_threads: 1
      prefetch_batches: 2
      train: {synthetic: {max_chars: 16}}
      validation:
        samples: 32
        synthetic: {split: validation, augment: 0.3, max_chars: 16}
      extra_validation:
        unseen-fonts: {samples: 8, synthetic: {max_chars: 16}}
"#;

fn run_manifest(name: &str, lrs: &str, steps: u64, eval: u64) -> String {
    format!(
        r#"
apiVersion: textrec.dev/v1alpha1
kind: TrainingRun
metadata: {{name: {name}}}
spec:
  model: {{preset: tiny}}
  hyperparameters:
    optimizer: {{lr: {lrs}, warmup_steps: 10}}
{TRIAL_CONFIG}
  search: {{maxTrials: 2, parallelism: 2}}
  training: {{maxSteps: {steps}, batchSize: 8, evalInterval: {eval}, checkpointEverySteps: 10, device: cpu}}
"#
    )
}

const DEPLOYMENT: &str = r#"
---
apiVersion: textrec.dev/v1alpha1
kind: ModelDeployment
metadata: {name: reader}
spec:
  model: {fromTrainingRun: first}
  strategy: HotReload
  promotion: {policy: Automatic, minImprovement: 0.0}
"#;

fn wait_for<T>(env: &Env, what: &str, secs: u64, mut f: impl FnMut(&Value) -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(t) = f(&env.state()) {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n--- runner log ---\n{}\n--- state ---\n{:#}",
            env.log(),
            env.state()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn trial<'a>(state: &'a Value, run: &str, t: &str) -> &'a Value {
    &state["runs"][run]["trials"][t]
}

fn status<'a>(state: &'a Value, run: &str) -> &'a Value {
    &state["runs"][run]["run"]["status"]
}

fn md_status(state: &Value) -> &Value {
    &state["deployments"]["reader"]["deployment"]["status"]
}

fn weights_sha(model_dir: &Path) -> String {
    let m: Value =
        serde_json::from_slice(&std::fs::read(model_dir.join("manifest.json")).unwrap()).unwrap();
    m["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == "model.safetensors")
        .unwrap()["sha256"]
        .as_str()
        .unwrap()
        .to_string()
}

/// `GET path` on a local server (HTTP/1.1, `Connection: close`), its JSON body.
fn http_get_json(addr: &str, path: &str) -> Value {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    serde_json::from_str(body).unwrap()
}

#[test]
fn local_runner_trains_resumes_serves_promotes_and_rolls_back() {
    let env = Env::new();
    let first = env.dir.path().join("first.yaml");
    std::fs::write(
        &first,
        run_manifest("first", "[0.005, 0.0005]", 50, 25) + DEPLOYMENT,
    )
    .unwrap();
    let log = std::fs::File::create(env.dir.path().join("runner.log")).unwrap();
    let runner = Runner(
        env.local(&["run", first.to_str().unwrap(), "--ports", "auto", "--plain"])
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap(),
    );
    let started = Instant::now();

    // The uninterrupted reference of trial t0: the same arguments, another output.
    let args: Vec<String> = wait_for(&env, "trial first-t0 to start", 60, |s| {
        serde_json::from_value(trial(s, "first", "first-t0")["args"].clone()).ok()
    });
    let ref_out = env.dir.path().join("reference");
    let mut ref_args = args.clone();
    let i = ref_args.iter().position(|a| a == "--output").unwrap();
    ref_args[i + 1] = format!("file://{}", ref_out.display());
    let i = ref_args
        .iter()
        .position(|a| a == "--termination-log")
        .unwrap();
    ref_args[i + 1] = env.dir.path().join("ref-term.json").display().to_string();
    let reference = Command::new(&env.worker)
        .args(&ref_args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    // SIGKILL t0 once its first checkpoint is complete, well before its last step.
    let t0_dir = env.data().join("first/first-t0");
    let pid = wait_for(&env, "t0's first checkpoint", 90, |s| {
        let pid = trial(s, "first", "first-t0")["pid"].as_u64()?;
        t0_dir
            .join("checkpoints/step-0000000010/manifest.json")
            .exists()
            .then_some(pid)
    });
    assert!(
        !t0_dir.join("model/manifest.json").exists(),
        "t0 finished before it could be killed"
    );
    assert!(Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap()
        .success());

    // The run finishes; t0 was preempted once and resumed, not failed.
    let st = wait_for(&env, "run first to succeed", 180, |s| {
        let st = status(s, "first");
        (st["phase"] == "Succeeded").then(|| st.clone())
    });
    let trials = st["trials"].as_array().unwrap();
    let t0 = trials.iter().find(|t| t["name"] == "first-t0").unwrap();
    assert_eq!(t0["preemptions"], 1, "{t0:#}");
    assert_eq!(t0["restarts"], 0, "{t0:#}");
    let ref_status = reference.wait_with_output().unwrap().status;
    assert!(ref_status.success(), "reference run: {ref_status}");
    assert_eq!(
        weights_sha(&t0_dir.join("model")),
        weights_sha(&ref_out.join("model")),
        "the killed and resumed trial must end with the uninterrupted run's weights"
    );

    // The best trial is the one with the lowest CER.
    let best = trials
        .iter()
        .min_by(|a, b| {
            a["bestMetric"]
                .as_f64()
                .unwrap()
                .total_cmp(&b["bestMetric"].as_f64().unwrap())
        })
        .unwrap();
    assert_eq!(st["bestModel"]["trial"], best["name"], "{st:#}");
    assert_eq!(st["bestModel"]["metric"], best["bestMetric"]);
    let first_sha = st["bestModel"]["sha256"].as_str().unwrap().to_string();
    let first_cer = st["bestModel"]["metric"].as_f64().unwrap();

    // It is served, and a gRPC Recognize call answers.
    let grpc = wait_for(&env, "the deployment to serve the first model", 120, |s| {
        let md = md_status(s);
        (md["phase"] == "Available"
            && md["currentRevision"] == 1
            && served(s, "reader").as_deref() == Some(first_sha.as_str()))
        .then(|| md["endpoint"].as_str().unwrap().to_string())
    });
    // Flagging is on by default, into the storage root's flags folder for this deployment.
    let http = env.state()["deployments"]["reader"]["server"]["http"]
        .as_str()
        .unwrap()
        .to_string();
    let info = http_get_json(&http, "/v1/model");
    let flags = info["flags"].as_str().unwrap_or_default();
    assert!(flags.ends_with("/flags/default/reader/"), "{info}");
    assert_eq!(info["flags_max_samples"], 10000);
    let images = env.dir.path().join("images");
    let pngs = synth_lines(&env.worker, &images, 2);
    let out = recognize(&env.worker, &grpc, &pngs);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), pngs.len(), "{text}");
    for line in text.lines() {
        assert!(line.contains(".png\t"), "PATH<TAB>TEXT expected: {line:?}");
    }

    // A client keeps calling while a better run is promoted.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let client = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        let (w, grpc, img) = (env.worker.clone(), grpc.clone(), pngs[..1].to_vec());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let out = recognize(&w, &grpc, &img);
                if out.status.success() {
                    ok.fetch_add(1, Ordering::SeqCst);
                } else {
                    eprintln!("request failed: {}", String::from_utf8_lossy(&out.stderr));
                    failed.fetch_add(1, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let second = env.dir.path().join("second.yaml");
    std::fs::write(
        &second,
        run_manifest("second", "[0.005]", 250, 50).replace(
            "maxTrials: 2, parallelism: 2",
            "maxTrials: 1, parallelism: 1",
        ),
    )
    .unwrap();
    // A second `local run` hands its manifests to the running one and follows the run.
    let out = env
        .local(&["run", second.to_str().unwrap(), "--plain"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "second run: {}\n--- runner log ---\n{}",
        String::from_utf8_lossy(&out.stderr),
        env.log()
    );
    let s = env.state();
    let second_sha = status(&s, "second")["bestModel"]["sha256"]
        .as_str()
        .unwrap()
        .to_string();
    let second_cer = status(&s, "second")["bestModel"]["metric"]
        .as_f64()
        .unwrap();
    assert!(
        second_cer < first_cer,
        "the second run (CER {second_cer}) must beat the first ({first_cer}) for this test to mean anything"
    );
    wait_for(&env, "the second run's model to be promoted", 120, |s| {
        let md = md_status(s);
        (md["currentRevision"] == 2
            && md["phase"] == "Available"
            && served(s, "reader").as_deref() == Some(second_sha.as_str()))
        .then_some(())
    });
    let history = md_status(&env.state())["history"].clone();
    assert!(
        history[1]["reason"]
            .as_str()
            .unwrap()
            .starts_with("automatic promotion of TrainingRun second"),
        "{history:#}"
    );
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    client.join().unwrap();
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "requests failed during the promotion"
    );
    assert!(ok.load(Ordering::SeqCst) > 0);

    // Roll back to revision 1: the first model, as revision 3.
    let out = env.local(&["rollback", "reader", "1"]).output().unwrap();
    assert!(
        out.status.success(),
        "rollback: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = env.state();
    assert_eq!(md_status(&s)["currentRevision"], 3);
    assert_eq!(md_status(&s)["model"]["sha256"], first_sha.as_str());
    assert_eq!(served(&s, "reader").as_deref(), Some(first_sha.as_str()));
    let out = recognize(&env.worker, &grpc, &pngs);
    assert!(out.status.success());

    // `local status` prints the kubectl columns.
    let out = env.local(&["status"]).output().unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    for col in [
        "PHASE", "TRIALS", "BEST", "REVISION", "METRIC", "READY", "first", "second", "reader",
    ] {
        assert!(table.contains(col), "{col} missing from:\n{table}");
    }

    // `local stop` ends the runner cleanly.
    let out = env.local(&["stop"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut runner = runner;
    let code = runner.0.wait().unwrap();
    assert_eq!(code.code(), Some(130), "runner log:\n{}", env.log());
    assert!(served(&env.state(), "reader").is_none());
    eprintln!("local e2e took {:.0?}", started.elapsed());
}

/// `spec.earlyStopping` locally: a grid with one absurd learning rate (its CER stays far above
/// 1: the decoder inserts garbage) next to a sane one. The median stopping rule stops the bad
/// trial after `startStep` (SIGTERM: it checkpoints), it ends `EarlyStopped`, `local status`
/// shows it, and the run succeeds with the other trial's model. Prints the share of the grid's
/// steps the rule saved.
#[test]
fn local_runner_stops_a_hopeless_trial_early_and_the_run_succeeds() {
    let env = Env::new();
    let steps = 80u64;
    let manifest = run_manifest("grid", "[0.005, 5.0]", steps, 10).replace(
        "  search:",
        "  earlyStopping: {algorithm: MedianStop, startStep: 20, minTrialsRequired: 1}\n  search:",
    );
    let path = env.dir.path().join("grid.yaml");
    std::fs::write(&path, &manifest).unwrap();
    let started = Instant::now();
    let out = env
        .local(&["run", path.to_str().unwrap(), "--plain"])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "local run failed:\n{log}");

    let s = env.state();
    let st = status(&s, "grid");
    assert_eq!(st["phase"], "Succeeded", "{st:#}\n{log}");
    let trials = st["trials"].as_array().unwrap();
    let (good, bad) = (&trials[0], &trials[1]);
    assert_eq!(good["phase"], "Succeeded", "{good:#}");
    assert_eq!(bad["phase"], "EarlyStopped", "{bad:#}\n{log}");
    let decision = &bad["earlyStopping"];
    let at = decision["step"].as_u64().unwrap();
    assert!(at >= 20 && at < steps, "{decision}");
    assert!(
        decision["best"].as_f64().unwrap() > decision["median"].as_f64().unwrap(),
        "{decision}"
    );
    assert_eq!(bad["preemptions"], 0, "{bad:#}");
    assert!(
        bad["message"]
            .as_str()
            .unwrap()
            .starts_with(&format!("stopped early at step {at}: best cer")),
        "{bad:#}"
    );
    // Nothing is lost: it checkpointed on SIGTERM, at or after the deciding step.
    let ckpt = bad["checkpoint"]["step"].as_u64().unwrap();
    assert!(ckpt >= at, "{bad:#}");
    let bad_dir = env.data().join("grid/grid-t1");
    assert!(bad_dir
        .join(textrec_contract::layout::checkpoint_dir(ckpt))
        .join("manifest.json")
        .exists());
    assert!(!bad_dir.join("model/manifest.json").exists());
    assert!(log.contains("TrialEarlyStopped"), "{log}");
    assert_eq!(st["bestModel"]["trial"], "grid-t0");
    assert_eq!(st["counts"]["earlyStopped"], 1);
    assert_eq!(st["trialsDone"], "2/2");

    // `local status -o wide` shows the phase and the numbers.
    let out = env.local(&["status", "-o", "wide"]).output().unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("EarlyStopped") && table.contains("stopped early at step"),
        "{table}"
    );

    // The steps it ran: its final progress.json (written on its way out).
    let last: Value =
        serde_json::from_slice(&std::fs::read(bad_dir.join("progress.json")).unwrap()).unwrap();
    let ran = last["step"].as_u64().unwrap().max(ckpt);
    assert!(ran < steps, "{last}");
    let saved = steps - ran;
    eprintln!(
        "early stopping: grid-t1 stopped at step {ran} of {steps} (decided at {at}: best {} vs median {}); \
         saved {saved} of the grid's {} steps ({:.0}%); took {:.0?}",
        decision["best"],
        decision["median"],
        2 * steps,
        100.0 * saved as f64 / (2 * steps) as f64,
        started.elapsed()
    );
}
