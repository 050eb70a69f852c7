//! `textrec-operator submit` as a CI job runs it: the real binary, with a kubeconfig pointing at
//! the fake API server over HTTP (watches included, admission by the CRD schema and CEL rules),
//! while the test plays the operator by writing the run's status.

mod support {
    pub mod fake_api;
}

use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use support::fake_api::{handle_raw, serve_http, FakeState};
use tokio::io::AsyncWriteExt;

const RUNS: &str = "/apis/textrec.dev/v1alpha1/namespaces/ml/trainingruns";

const MANIFEST: &str = "\
apiVersion: textrec.dev/v1alpha1
kind: TrainingRun
metadata:
  name: ocr
spec:
  image: ghcr.io/textrec/worker:1
  storage: {url: \"s3://bucket/runs\"}
  hyperparameters: {optimizer: {lr: [0.001, 0.002]}}
  search: {maxTrials: 2, parallelism: 2}
  training: {maxSteps: 1000, evalInterval: 100}
";

/// The fake API server, a kubeconfig for it (default namespace `ml`) and the manifest file.
struct Cluster {
    state: Arc<Mutex<FakeState>>,
    dir: tempfile::TempDir,
}

async fn cluster() -> Cluster {
    let state = Arc::new(Mutex::new(FakeState {
        watchable: true,
        admission: true,
        ..Default::default()
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(serve_http(state.clone(), listener));
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = format!(
        "apiVersion: v1
kind: Config
clusters: [{{name: fake, cluster: {{server: \"http://127.0.0.1:{port}\"}}}}]
users: [{{name: ci, user: {{token: t}}}}]
contexts: [{{name: fake, context: {{cluster: fake, user: ci, namespace: ml}}}}]
current-context: fake
"
    );
    std::fs::write(dir.path().join("kubeconfig"), kubeconfig).unwrap();
    std::fs::write(dir.path().join("run.yaml"), MANIFEST).unwrap();
    Cluster { state, dir }
}

impl Cluster {
    fn manifest(&self) -> String {
        self.dir.path().join("run.yaml").display().to_string()
    }

    /// `textrec-operator submit ARGS...` to the end (stdin: `stdin`, when given).
    async fn submit(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_textrec-operator"));
        cmd.arg("submit")
            .args(args)
            .env("KUBECONFIG", self.dir.path().join("kubeconfig"))
            .env_remove("KUBERNETES_SERVICE_HOST")
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("textrec-operator starts");
        if let Some(text) = stdin {
            let mut pipe = child.stdin.take().unwrap();
            pipe.write_all(text.as_bytes()).await.unwrap();
        }
        tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .expect("submit ends within 60 s")
            .unwrap()
    }

    /// Poll the fake until `f` finds something (10 s at most).
    async fn until<T>(&self, what: &str, f: impl Fn(&FakeState) -> Option<T>) -> T {
        for _ in 0..1000 {
            if let Some(v) = f(&self.state.lock().unwrap()) {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("no {what} after 10 s");
    }

    /// The path of the run `submit` created in `ml`, once `submit` watches it: status written
    /// from then on reaches the watch as it would from the operator.
    async fn created_and_watched(&self) -> String {
        self.until("created and watched run", |st| {
            let path = st.objects.keys().find(|p| p.starts_with(RUNS))?.clone();
            (st.watches_opened > 0).then_some(path)
        })
        .await
    }

    /// Write the run's status, as the operator does.
    fn set_status(&self, path: &str, status: Value) {
        let body = json!({"status": status}).to_string();
        let (code, _) = handle_raw(
            &self.state,
            "PATCH",
            &format!("{path}/status"),
            "",
            body.as_bytes(),
        );
        assert!(code.is_success(), "{code}");
    }

    /// Requests that change something (the create, status writes).
    fn writes(&self) -> Vec<String> {
        let st = self.state.lock().unwrap();
        st.log
            .iter()
            .filter(|r| r.method != "GET")
            .map(|r| format!("{} {}", r.method, r.path))
            .collect()
    }
}

fn name_of(path: &str) -> String {
    path.rsplit('/').next().unwrap().to_string()
}

fn condition(type_: &str, message: &str) -> Value {
    json!({"type": type_, "status": "True", "reason": type_, "message": message,
        "lastTransitionTime": "2030-01-01T00:00:00Z"})
}

fn trial(name: &str, phase: &str, step: u64, best: Option<f64>) -> Value {
    let mut t = json!({"name": name, "phase": phase, "step": step});
    if let Some(b) = best {
        t["bestMetric"] = json!(b);
    }
    t
}

fn best_model(run: &str, metric: f64) -> Value {
    json!({"trial": format!("{run}-t0"), "url": format!("s3://bucket/runs/{run}/{run}-t0/model/"),
        "sha256": "ab".repeat(32), "metric": metric, "metricName": "cer"})
}

/// Play the operator: pending, two running trials (with a watch restart between), then `last`
/// (the final status).
async fn play(c: &Cluster, last: impl FnOnce(&str) -> Value) -> String {
    let path = c.created_and_watched().await;
    let run = name_of(&path);
    let (t0, t1) = (format!("{run}-t0"), format!("{run}-t1"));
    c.set_status(
        &path,
        json!({"phase": "Pending", "trialsDone": "0/2", "trials": [trial(&t0, "Pending", 0, None), trial(&t1, "Pending", 0, None)]}),
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    c.set_status(
        &path,
        json!({"phase": "Running", "trialsDone": "0/2", "trials": [trial(&t0, "Running", 100, Some(0.3)), trial(&t1, "Starting", 0, None)]}),
    );
    // The API server ends the watch (as it does every few minutes): submit watches again from
    // where it was and misses nothing.
    c.state.lock().unwrap().watches.clear();
    c.until("a second watch", |st| (st.watches_opened > 1).then_some(()))
        .await;
    c.set_status(
        &path,
        json!({"phase": "Running", "trialsDone": "0/2", "trials": [trial(&t0, "Running", 500, Some(0.1)), trial(&t1, "Running", 100, Some(0.2))]}),
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    c.set_status(&path, last(&run));
    run
}

fn succeeded(run: &str, metric: f64) -> Value {
    let mut t0 = trial(&format!("{run}-t0"), "Succeeded", 1000, Some(metric));
    t0["bestExtraCer"] = json!({"unseen-fonts": 0.08});
    json!({"phase": "Succeeded", "trialsDone": "2/2",
        "trials": [t0, trial(&format!("{run}-t1"), "Succeeded", 1000, Some(0.07))],
        "bestTrial": format!("{run}-t0"), "bestModel": best_model(run, metric),
        "conditions": [condition("Valid", "ok"), condition("Succeeded", "2 of 2 trials succeeded")]})
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json_report(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON object ({e}):\n{}\nstderr:\n{}",
            stdout(o),
            stderr(o)
        )
    })
}

#[tokio::test]
async fn success_prints_trial_progress_and_the_best_model_as_json() {
    let c = cluster().await;
    let file = c.manifest();
    let args = [
        file.as_str(),
        "--wait",
        "--require",
        "cer<=0.05",
        "--require",
        "cer.unseen-fonts < 0.1",
        "--output",
        "json",
    ];
    let (out, _) = tokio::join!(c.submit(&args, None), play(&c, |r| succeeded(r, 0.04)));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report = json_report(&out);
    assert_eq!(report["name"], "ocr");
    assert_eq!(report["namespace"], "ml");
    assert_eq!(report["phase"], "Succeeded");
    assert_eq!(report["outcome"], "succeeded");
    assert_eq!(report["exitCode"], 0);
    assert_eq!(report["bestModel"], best_model("ocr", 0.04));
    assert_eq!(report["metric"], json!({"name": "cer", "value": 0.04}));
    assert_eq!(report["message"], "2 of 2 trials succeeded");
    assert_eq!(
        report["requirements"],
        json!([
            {"requirement": "cer<=0.05", "metric": "cer", "op": "<=", "threshold": 0.05, "value": 0.04, "met": true},
            {"requirement": "cer.unseen-fonts<0.1", "metric": "cer.unseen-fonts", "op": "<", "threshold": 0.1, "value": 0.08, "met": true}
        ])
    );
    // Progress went to stderr, one line per change.
    let err = stderr(&out);
    for line in [
        "run ml/ocr: Pending, 0/2 trials done",
        "trial ocr-t0: Running, step 100/1000, best cer 0.3",
        "trial ocr-t1: Starting, step 0/1000",
        "trial ocr-t0: Running, step 500/1000, best cer 0.1",
        "trial ocr-t1: Running, step 100/1000, best cer 0.2",
        "run ml/ocr: Succeeded, 2/2 trials done, best cer 0.04",
        "trial ocr-t0: Succeeded, step 1000/1000, best cer 0.04",
    ] {
        assert_eq!(err.matches(line).count(), 1, "{line:?} once in:\n{err}");
    }
    // Created as written: one POST, nothing else written by submit.
    assert_eq!(
        c.writes().iter().filter(|w| w.starts_with("POST")).count(),
        1
    );
}

#[tokio::test]
async fn success_in_text_mode_applies_set_and_prints_progress_then_the_best_model() {
    let c = cluster().await;
    let file = c.manifest();
    let args = [
        file.as_str(),
        "--set",
        "spec.training.maxSteps=2000",
        "--set",
        "metadata.labels.ci='true'",
        "--set",
        "spec.suspend=false",
        "--wait",
        "--timeout",
        "1m",
        "--require",
        "cer<=0.05",
    ];
    let (out, _) = tokio::join!(c.submit(&args, None), play(&c, |r| succeeded(r, 0.04)));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("trial ocr-t0: Running, step 500/2000, best cer 0.1\n"),
        "{text}"
    );
    let tail = text.lines().rev().take(6).collect::<Vec<_>>();
    assert_eq!(
        tail.into_iter().rev().collect::<Vec<_>>(),
        [
            "TrainingRun ml/ocr Succeeded: 2 of 2 trials succeeded",
            "best model: s3://bucket/runs/ocr/ocr-t0/model/",
            "  trial:  ocr-t0",
            &format!("  sha256: {}", "ab".repeat(32)),
            "  cer: 0.04",
            "requirement cer<=0.05: met (cer = 0.04)",
        ]
    );
    let st = c.state.lock().unwrap();
    let created = &st.objects[&format!("{RUNS}/ocr")];
    assert_eq!(created["spec"]["training"]["maxSteps"], 2000);
    assert_eq!(
        created["metadata"]["labels"]["ci"], "true",
        "a quoted YAML string"
    );
    assert_eq!(
        created["spec"]["suspend"], false,
        "YAML `false` is a boolean"
    );
}

#[tokio::test]
async fn a_failed_run_exits_1_with_the_operators_reason() {
    let c = cluster().await;
    let file = c.manifest();
    let args = [
        file.as_str(),
        "--wait",
        "--require",
        "cer<=0.05",
        "--output",
        "json",
    ];
    let failed = |r: &str| {
        json!({"phase": "Failed", "trialsDone": "2/2", "message": "no trial succeeded",
            "trials": [trial(&format!("{r}-t0"), "Failed", 10, None), trial(&format!("{r}-t1"), "Failed", 0, None)],
            "conditions": [condition("Failed", "2 trials failed, more than spec.maxFailedTrials (1)")]})
    };
    let (out, _) = tokio::join!(c.submit(&args, None), play(&c, failed));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let report = json_report(&out);
    assert_eq!(report["outcome"], "failed");
    assert_eq!(report["phase"], "Failed");
    assert_eq!(report["bestModel"], Value::Null);
    assert_eq!(
        report["message"],
        "2 trials failed, more than spec.maxFailedTrials (1)"
    );
    assert_eq!(report["requirements"][0]["met"], false);
    assert_eq!(
        report["requirements"][0]["note"],
        "the run has no best model"
    );
}

#[tokio::test]
async fn a_missed_requirement_exits_3() {
    let c = cluster().await;
    let file = c.manifest();
    let args = [
        file.as_str(),
        "--wait",
        "--require",
        "cer<=0.05",
        "--require",
        "cer.unseen-fonts<=0.05",
    ];
    let (out, _) = tokio::join!(c.submit(&args, None), play(&c, |r| succeeded(r, 0.04)));
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("requirement cer<=0.05: met (cer = 0.04)"),
        "{text}"
    );
    assert!(
        text.contains("requirement cer.unseen-fonts<=0.05: NOT met (cer.unseen-fonts = 0.08)"),
        "{text}"
    );
}

#[tokio::test]
async fn a_timeout_exits_4_and_leaves_the_run_running() {
    let c = cluster().await;
    let file = c.manifest();
    let args = [
        file.as_str(),
        "--wait",
        "--timeout",
        "2s",
        "--output",
        "json",
    ];
    // An operator that never finishes the run (no watch restart here: the clock is short).
    let operator = async {
        let path = c.created_and_watched().await;
        let t0 = format!("{}-t0", name_of(&path));
        c.set_status(
            &path,
            json!({"phase": "Running", "trialsDone": "0/2", "trials": [trial(&t0, "Running", 600, Some(0.09))]}),
        );
    };
    let (out, ()) = tokio::join!(c.submit(&args, None), operator);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let report = json_report(&out);
    assert_eq!(report["outcome"], "timedOut");
    assert_eq!(report["phase"], "Running");
    let message = report["message"].as_str().unwrap();
    assert!(message.contains("timed out after 2s"), "{message}");
    assert!(message.contains("left running"), "{message}");
    assert!(stderr(&out).contains("error: timed out after 2s"));
    assert!(
        !c.writes().iter().any(|w| w.starts_with("DELETE")),
        "the run is not deleted"
    );
}

#[tokio::test]
async fn a_manifest_the_api_server_refuses_exits_2_naming_the_field() {
    let c = cluster().await;
    let file = c.manifest();
    let args = [
        file.as_str(),
        "--set",
        "spec.search.parallelism=8",
        "--wait",
    ];
    let out = c.submit(&args, None).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("the API server refused to create TrainingRun ml/ocr (422 Invalid)"),
        "{err}"
    );
    assert!(
        err.contains("  spec.search.parallelism: Invalid value"),
        "{err}"
    );
    assert!(c.state.lock().unwrap().objects.is_empty());
}

#[tokio::test]
async fn usage_errors_exit_2_before_anything_is_created() {
    let c = cluster().await;
    let file = c.manifest();
    let cases: [(&[&str], &str); 6] = [
        (&["--wait", "--require", "cer=<0.05"], "unknown operator"),
        (&["--wait", "--require", "accuracy>0.9"], "unknown metric"),
        (&["--require", "cer<=0.05"], "--wait"),
        (
            &["--set", "metadata.labels.ci=true"],
            "metadata.labels.ci: invalid type: boolean `true`",
        ),
        (
            &["--set", "kind=ModelDeployment"],
            "not apiVersion textrec.dev/v1alpha1 kind TrainingRun",
        ),
        (
            &["--namespace", "ci", "--set", "metadata.namespace=ml"],
            "does not match --namespace ci",
        ),
    ];
    for (extra, says) in cases {
        let args: Vec<&str> = std::iter::once(file.as_str())
            .chain(extra.iter().copied())
            .collect();
        let out = c.submit(&args, None).await;
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
    }
    let missing = c
        .submit(&["/nonexistent/run.yaml", "--output", "json"], None)
        .await;
    assert_eq!(missing.status.code(), Some(2));
    assert_eq!(json_report(&missing)["outcome"], "usageError");
    assert!(c.writes().is_empty(), "{:?}", c.writes());
}

#[tokio::test]
async fn generate_name_submits_the_same_file_again_and_again() {
    let c = cluster().await;
    let file = c.manifest();
    let first = c.submit(&[file.as_str(), "--generate-name"], None).await;
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    // From stdin, into another namespace.
    let second = c
        .submit(
            &["-", "--generate-name", "-n", "ci", "--output", "json"],
            Some(MANIFEST),
        )
        .await;
    assert_eq!(second.status.code(), Some(0), "{}", stderr(&second));
    assert_eq!(stdout(&first), "ocr-00001\n");
    let report = json_report(&second);
    assert_eq!(
        (&report["name"], &report["namespace"], &report["outcome"]),
        (&json!("ocr-00002"), &json!("ci"), &json!("created"))
    );
    let st = c.state.lock().unwrap();
    for path in [
        format!("{RUNS}/ocr-00001"),
        "/apis/textrec.dev/v1alpha1/namespaces/ci/trainingruns/ocr-00002".to_string(),
    ] {
        let run = &st.objects[&path];
        assert_eq!(run["metadata"]["generateName"], "ocr-", "{path}");
    }
    assert_eq!(st.objects.len(), 2);
}
