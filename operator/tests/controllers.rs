//! The controllers against a fake API: the exact objects they write.

mod support {
    pub mod fake_api;
}

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::watcher;
use serde_json::{json, Value};
use support::fake_api::{fake_client, FakeState};
use textrec_operator::controller::{self, MemoryEvents, Shared};
use textrec_operator::crd::{ModelDeployment, TrainingRun};
use textrec_operator::defaults::Defaults;
use textrec_operator::metrics::Metrics;
use textrec_operator::progress::StaticProgress;

fn clock() -> Time {
    Time(k8s_openapi::jiff::Timestamp::from_second(1_800_000_000).unwrap())
}

fn run_json(name: &str, extra: Value) -> Value {
    let mut spec = json!({
        "image": "ghcr.io/textrec/worker:1",
        "storage": {"url": "s3://bucket/runs", "secretRef": "s3-creds"},
        "hyperparameters": {"optimizer": {"lr": [0.001, 0.002]}, "batch_size": [8, 16]},
        "search": {"maxTrials": 4, "parallelism": 2},
        "training": {"maxSteps": 1000, "evalInterval": 100},
        "resources": {"gpus": 1, "memory": "8Gi"},
        "scheduling": {"spot": true, "spotProvider": "GKE"},
        "terminationGracePeriodSeconds": 180,
        "maxRestartsPerTrial": 2
    });
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            s.insert(k.clone(), v.clone());
        }
    }
    json!({
        "apiVersion": "textrec.dev/v1alpha1", "kind": "TrainingRun",
        "metadata": {"name": name, "namespace": "ml", "uid": "uid-1", "generation": 1},
        "spec": spec
    })
}

struct Harness {
    state: Arc<Mutex<FakeState>>,
    events: Arc<MemoryEvents>,
    ctx: Arc<controller::training_run::Context>,
    jobs: Writer<Job>,
    pods: Writer<Pod>,
    progress: Arc<StaticProgress>,
}

fn harness(run: &Value) -> Harness {
    harness_with(run, Defaults::default())
}

fn harness_with(run: &Value, defaults: Defaults) -> Harness {
    let (client, state) = fake_client();
    let path = format!(
        "/apis/textrec.dev/v1alpha1/namespaces/ml/trainingruns/{}",
        run["metadata"]["name"].as_str().unwrap()
    );
    state.lock().unwrap().objects.insert(path, run.clone());
    // The Secret `run_json` names: the controller looks it up before creating Jobs.
    state.lock().unwrap().objects.insert(
        "/api/v1/namespaces/ml/secrets/s3-creds".into(),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3-creds", "namespace": "ml"}}),
    );
    let (jobs_r, jobs) = reflector::store();
    let (pods_r, pods) = reflector::store();
    let events = Arc::new(MemoryEvents::default());
    let progress = Arc::new(StaticProgress::default());
    let shared = Arc::new(Shared {
        metrics: Arc::new(Metrics::new()),
        events: events.clone(),
        backoff: Default::default(),
        defaults,
    });
    let ctx = Arc::new(controller::training_run::Context {
        client,
        jobs: jobs_r,
        pods: pods_r,
        progress: progress.clone(),
        history: Default::default(),
        shared,
        progress_interval: Duration::from_secs(30),
        clock,
    });
    Harness {
        state,
        events,
        ctx,
        jobs,
        pods,
        progress,
    }
}

/// The requests that change something (not the lookups).
fn writes(state: &Mutex<FakeState>) -> Vec<(String, String, Value)> {
    state
        .lock()
        .unwrap()
        .log
        .iter()
        .filter(|r| r.method != "GET")
        .map(|r| (r.method.clone(), r.path.clone(), r.body.clone()))
        .collect()
}

fn reasons(events: &MemoryEvents) -> Vec<&'static str> {
    events
        .0
        .lock()
        .unwrap()
        .iter()
        .map(|(_, e)| e.reason)
        .collect()
}

#[tokio::test]
async fn new_run_creates_parallelism_jobs_with_failure_policy_and_status() {
    let run = run_json("ocr", json!({}));
    let h = harness(&run);
    let tr: TrainingRun = serde_json::from_value(run).unwrap();
    let action = controller::training_run::reconcile(Arc::new(tr), h.ctx.clone())
        .await
        .unwrap();
    assert_eq!(
        action,
        kube::runtime::controller::Action::requeue(Duration::from_secs(30))
    );

    let w = writes(&h.state);
    let paths: Vec<(&str, &str)> = w.iter().map(|(m, p, _)| (m.as_str(), p.as_str())).collect();
    assert_eq!(
        paths,
        vec![
            ("PATCH", "/apis/batch/v1/namespaces/ml/jobs/ocr-t0"),
            ("PATCH", "/apis/batch/v1/namespaces/ml/jobs/ocr-t1"),
            (
                "PATCH",
                "/apis/textrec.dev/v1alpha1/namespaces/ml/trainingruns/ocr/status"
            ),
        ]
    );
    // The first write (a lookup of the Secret the run names comes before it).
    let q = h
        .state
        .lock()
        .unwrap()
        .log
        .iter()
        .find(|r| r.method == "PATCH")
        .unwrap()
        .query
        .clone();
    assert!(
        q.contains("fieldManager=textrec-operator") && q.contains("force=true"),
        "{q}"
    );

    let job = &w[0].2;
    let expected_policy = json!({"rules": [
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        {"action": "Ignore", "onExitCodes": {"containerName": "worker", "operator": "In", "values": [75]}},
        {"action": "FailJob", "onExitCodes": {"containerName": "worker", "operator": "In", "values": [78]}}
    ]});
    assert_eq!(job["spec"]["podFailurePolicy"], expected_policy);
    assert_eq!(job["spec"]["backoffLimit"], 2);
    assert_eq!(job["spec"]["podReplacementPolicy"], "Failed");
    assert_eq!(job["metadata"]["ownerReferences"][0]["kind"], "TrainingRun");
    assert_eq!(job["metadata"]["ownerReferences"][0]["controller"], true);
    assert_eq!(
        job["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "textrec-operator"
    );
    assert_eq!(job["metadata"]["labels"]["textrec.dev/trial"], "ocr-t0");
    let pod = &job["spec"]["template"]["spec"];
    assert_eq!(pod["restartPolicy"], "Never");
    assert_eq!(pod["terminationGracePeriodSeconds"], 180);
    assert_eq!(pod["nodeSelector"]["cloud.google.com/gke-spot"], "true");
    assert!(pod["tolerations"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["key"] == "cloud.google.com/gke-spot"));
    let c = &pod["containers"][0];
    assert_eq!(c["resources"]["limits"]["nvidia.com/gpu"], "1");
    assert_eq!(c["envFrom"][0]["secretRef"]["name"], "s3-creds");
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(
        &args[..3],
        &["train", "--output", "s3://bucket/runs/ocr/ocr-t0"]
    );
    for want in [
        "max_steps=1000",
        "device=cuda",
        "optimizer.lr=0.001",
        "batch_size=8",
    ] {
        assert!(args.contains(&want), "{want} missing from {args:?}");
    }

    let status = &w[2].2["status"];
    assert_eq!(status["phase"], "Running");
    assert_eq!(status["trialsDone"], "0/4");
    assert_eq!(
        status["counts"],
        json!({"total": 4, "pending": 2, "running": 2, "succeeded": 0, "failed": 0})
    );
    assert_eq!(status["trials"][0]["phase"], "Starting");
    assert_eq!(status["trials"][3]["phase"], "Pending");
    assert_eq!(
        status["trials"][3]["params"],
        "batch_size=16,optimizer.lr=0.002"
    );
    assert_eq!(status["observedGeneration"], 1);
    let valid = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Valid")
        .unwrap();
    assert_eq!(valid["status"], "True");
    assert_eq!(reasons(&h.events), vec!["TrialStarted", "TrialStarted"]);
}

fn job_obj(name: &str, conds: Value, active: i32) -> Job {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "ml",
            "labels": {"textrec.dev/run": "ocr", "textrec.dev/trial": name, "app.kubernetes.io/managed-by": "textrec-operator"},
            "ownerReferences": [{"apiVersion": "textrec.dev/v1alpha1", "kind": "TrainingRun", "name": "ocr", "uid": "uid-1", "controller": true}]},
        "spec": {"suspend": false, "template": {}},
        "status": {"conditions": conds, "active": active}
    }))
    .unwrap()
}

fn pod_obj(name: &str, trial: &str, phase: &str, extra_status: Value) -> Pod {
    let mut status = json!({"phase": phase});
    merge(&mut status, &extra_status);
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "ml", "labels": {"textrec.dev/run": "ocr", "textrec.dev/trial": trial}},
        "status": status
    }))
    .unwrap()
}

fn merge(a: &mut Value, b: &Value) {
    if let (Some(a), Some(b)) = (a.as_object_mut(), b.as_object()) {
        for (k, v) in b {
            a.insert(k.clone(), v.clone());
        }
    }
}

fn apply<K: kube::Resource + Clone>(w: &mut Writer<K>, obj: K)
where
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    w.apply_watcher_event(&watcher::Event::Apply(obj));
}

#[tokio::test]
async fn finished_preempted_and_failed_trials_reach_status_and_events() {
    let run = run_json("ocr", json!({}));
    let mut h = harness(&run);
    let done = r#"{"phase":"Succeeded","step":1000,"max_steps":1000,"best":{"step":1000,"cer":0.05,"wer":0.2},"latest":{"step":1000,"cer":0.05,"wer":0.2},"model":{"url":"s3://bucket/runs/ocr/ocr-t0/model/","sha256":"aa","cer":0.05},"updated":"2027-01-15T08:00:00Z"}"#;
    apply(
        &mut h.jobs,
        job_obj("ocr-t0", json!([{"type": "Complete", "status": "True"}]), 0),
    );
    apply(
        &mut h.pods,
        pod_obj(
            "ocr-t0-a",
            "ocr-t0",
            "Succeeded",
            json!({"containerStatuses": [{"name": "worker", "image": "", "imageID": "", "ready": false, "restartCount": 0, "state": {"terminated": {"exitCode": 0, "message": done}}}]}),
        ),
    );
    // t1: first pod reclaimed (DisruptionTarget), second one running; progress from storage.
    apply(&mut h.jobs, job_obj("ocr-t1", json!([]), 1));
    apply(
        &mut h.pods,
        pod_obj(
            "ocr-t1-a",
            "ocr-t1",
            "Failed",
            json!({"conditions": [{"type": "DisruptionTarget", "status": "True", "reason": "TerminationByKubelet"}]}),
        ),
    );
    apply(
        &mut h.pods,
        pod_obj(
            "ocr-t1-b",
            "ocr-t1",
            "Running",
            json!({"containerStatuses": [{"name": "worker", "image": "", "imageID": "", "ready": true, "restartCount": 0, "state": {"running": {}}}]}),
        ),
    );
    h.progress.0.lock().unwrap().insert(
        "s3://bucket/runs/ocr/ocr-t1".into(),
        serde_json::from_str(r#"{"phase":"Running","step":300,"max_steps":1000,"latest":{"step":300,"cer":0.2,"wer":0.5},"best":{"step":200,"cer":0.18,"wer":0.5},"checkpoint":{"step":250,"url":"s3://bucket/runs/ocr/ocr-t1/checkpoints/step-0000000250/"},"updated":"2027-01-15T08:00:00Z"}"#).unwrap(),
    );
    let tr: TrainingRun = serde_json::from_value(run).unwrap();
    controller::training_run::reconcile(Arc::new(tr), h.ctx.clone())
        .await
        .unwrap();

    let w = writes(&h.state);
    assert_eq!(
        w.iter()
            .filter(|(m, p, _)| m == "PATCH" && p.contains("/jobs/"))
            .map(|(_, p, _)| p.as_str())
            .collect::<Vec<_>>(),
        vec!["/apis/batch/v1/namespaces/ml/jobs/ocr-t2"]
    );
    let status = &w.last().unwrap().2["status"];
    assert_eq!(status["trials"][0]["phase"], "Succeeded");
    assert_eq!(status["trials"][1]["phase"], "Running");
    assert_eq!(status["trials"][1]["preemptions"], 1);
    assert_eq!(status["trials"][1]["restarts"], 0);
    assert_eq!(status["trials"][1]["step"], 300);
    assert_eq!(status["trials"][1]["latestMetric"], 0.2);
    assert_eq!(status["trials"][1]["checkpoint"]["step"], 250);
    assert_eq!(status["bestTrial"], "ocr-t0");
    assert_eq!(
        status["bestModel"],
        json!({"trial": "ocr-t0", "url": "s3://bucket/runs/ocr/ocr-t0/model/", "sha256": "aa", "metric": 0.05, "metricName": "cer"})
    );
    assert_eq!(status["trialsDone"], "1/4");
    let r = reasons(&h.events);
    for want in [
        "TrialSucceeded",
        "NewBestModel",
        "TrialPreempted",
        "TrialStarted",
    ] {
        assert!(r.contains(&want), "{want} not in {r:?}");
    }
}

#[tokio::test]
async fn config_error_fails_the_trial_and_too_many_failures_fail_the_run() {
    let run = run_json(
        "ocr",
        json!({"maxFailedTrials": 0, "search": {"maxTrials": 4, "parallelism": 1}}),
    );
    let mut h = harness(&run);
    apply(
        &mut h.jobs,
        job_obj(
            "ocr-t0",
            json!([{"type": "Failed", "status": "True", "reason": "PodFailurePolicy", "message": "Container worker for pod ml/ocr-t0-a failed with exit code 78 matching FailJob rule at index 2"}]),
            0,
        ),
    );
    apply(
        &mut h.pods,
        pod_obj(
            "ocr-t0-a",
            "ocr-t0",
            "Failed",
            json!({"containerStatuses": [{"name": "worker", "image": "", "imageID": "", "ready": false, "restartCount": 0, "state": {"terminated": {"exitCode": 78, "message": "config field `optimizer.lr`: must be positive"}}}]}),
        ),
    );
    let tr: TrainingRun = serde_json::from_value(run).unwrap();
    controller::training_run::reconcile(Arc::new(tr), h.ctx.clone())
        .await
        .unwrap();
    let w = writes(&h.state);
    assert!(
        !w.iter().any(|(_, p, _)| p.contains("/jobs/")),
        "no new trials after the failure limit: {w:?}"
    );
    let status = &w.last().unwrap().2["status"];
    assert_eq!(status["phase"], "Failed");
    assert_eq!(status["trials"][0]["phase"], "Failed");
    let msg = status["trials"][0]["message"].as_str().unwrap();
    assert!(
        msg.contains("configuration error") && msg.contains("optimizer.lr"),
        "{msg}"
    );
    let r = reasons(&h.events);
    assert!(
        r.contains(&"TrialFailed") && r.contains(&"RunFailed"),
        "{r:?}"
    );
}

#[tokio::test]
async fn invalid_spec_writes_only_a_status_naming_the_field() {
    let run = run_json("ocr", json!({"hyperparameters": {"optimizer": {"lr": []}}}));
    let h = harness(&run);
    let tr: TrainingRun = serde_json::from_value(run).unwrap();
    controller::training_run::reconcile(Arc::new(tr), h.ctx.clone())
        .await
        .unwrap();
    let w = writes(&h.state);
    assert_eq!(w.len(), 1, "{w:?}");
    let status = &w[0].2["status"];
    assert_eq!(status["phase"], "Invalid");
    let valid = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Valid")
        .unwrap();
    assert_eq!(valid["status"], "False");
    assert!(
        valid["message"]
            .as_str()
            .unwrap()
            .contains("spec.hyperparameters.optimizer.lr"),
        "{valid}"
    );
    assert_eq!(reasons(&h.events), vec!["InvalidSpec"]);
}

fn chart_defaults() -> Defaults {
    Defaults {
        worker_image: Some("reg/textrec-worker:2".into()),
        worker_gpu_image: Some("reg/textrec-worker:2-cuda".into()),
        storage_url: Some("s3://default-bucket/runs".into()),
        storage_secret: Some("s3-creds".into()),
        service_account: Some("textrec-worker".into()),
        allow_host_path_volumes: false,
    }
}

#[tokio::test]
async fn the_operator_defaults_fill_a_run_without_image_or_storage() {
    let mut run = run_json("ocr", json!({}));
    let spec = run["spec"].as_object_mut().unwrap();
    spec.remove("image");
    spec.remove("storage");
    let h = harness_with(&run, chart_defaults());
    // The default ServiceAccount exists (the controller checks it before creating Jobs).
    h.state.lock().unwrap().objects.insert(
        "/api/v1/namespaces/ml/serviceaccounts/textrec-worker".into(),
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "textrec-worker", "namespace": "ml"}}),
    );
    let tr: TrainingRun = serde_json::from_value(run).unwrap();
    controller::training_run::reconcile(Arc::new(tr), h.ctx.clone())
        .await
        .unwrap();
    let w = writes(&h.state);
    let job = &w[0].2;
    assert!(w[0].1.ends_with("/jobs/ocr-t0"), "{w:?}");
    let pod = &job["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    // One GPU per trial: the GPU image.
    assert_eq!(c["image"], "reg/textrec-worker:2-cuda");
    assert_eq!(c["envFrom"][0]["secretRef"]["name"], "s3-creds");
    assert_eq!(pod["serviceAccountName"], "textrec-worker");
    let args = c["args"].to_string();
    assert!(args.contains("s3://default-bucket/runs"), "{args}");
    // What the run sets wins over the defaults; the run itself is not rewritten.
    assert!(w
        .iter()
        .all(|(m, p, _)| m != "PUT" && !p.ends_with("trainingruns/ocr")));
}

/// A run with a hostPath volume: `Valid=False` naming the field and no Job, unless the operator
/// allows them; then the Job's pod has the volume and its mount, after the operator's own.
#[tokio::test]
async fn host_path_volumes_need_the_operators_permission() {
    let run = run_json(
        "ocr",
        json!({
            "volumes": [{"name": "lines", "hostPath": {"path": "/srv/lines", "type": "Directory"}}],
            "volumeMounts": [{"name": "lines", "mountPath": "/srv/lines", "readOnly": true}],
            "data": {"sources": [{"kind": "synthetic", "weight": 1},
                               {"kind": "tesstrain", "path": "/srv/lines", "weight": 1}]}
        }),
    );
    let tr: TrainingRun = serde_json::from_value(run.clone()).unwrap();
    let h = harness(&run);
    controller::training_run::reconcile(Arc::new(tr.clone()), h.ctx.clone())
        .await
        .unwrap();
    let w = writes(&h.state);
    assert_eq!(w.len(), 1, "only the status: {w:?}");
    let valid = condition(&w[0].2["status"], "Valid");
    assert_eq!(valid["status"], "False");
    let msg = valid["message"].as_str().unwrap();
    assert!(
        msg.contains("spec.volumes[0].hostPath") && msg.contains("--allow-host-path-volumes"),
        "{msg}"
    );

    let h = harness_with(
        &run,
        Defaults {
            allow_host_path_volumes: true,
            ..Defaults::default()
        },
    );
    controller::training_run::reconcile(Arc::new(tr), h.ctx.clone())
        .await
        .unwrap();
    let w = writes(&h.state);
    let (_, path, job) = w
        .iter()
        .find(|(_, p, _)| p.ends_with("/jobs/ocr-t0"))
        .unwrap_or_else(|| panic!("no Job: {w:?}"));
    assert!(path.ends_with("/jobs/ocr-t0"));
    let pod = &job["spec"]["template"]["spec"];
    let names: Vec<&str> = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.last(), Some(&"lines"), "{names:?}");
    assert_eq!(
        pod["volumes"][names.len() - 1]["hostPath"]["path"],
        "/srv/lines"
    );
    let mounts = pod["containers"][0]["volumeMounts"].as_array().unwrap();
    assert!(
        mounts.iter().any(|m| m["name"] == "lines"
            && m["mountPath"] == "/srv/lines"
            && m["readOnly"] == true),
        "{mounts:?}"
    );
    let args = pod["containers"][0]["args"].to_string();
    assert!(args.contains("data.train=["), "{args}");
}

#[tokio::test]
async fn a_run_without_image_and_no_default_is_invalid_naming_the_default() {
    let mut run = run_json("ocr", json!({}));
    run["spec"].as_object_mut().unwrap().remove("image");
    let h = harness(&run);
    let tr: TrainingRun = serde_json::from_value(run).unwrap();
    controller::training_run::reconcile(Arc::new(tr), h.ctx.clone())
        .await
        .unwrap();
    let w = writes(&h.state);
    assert_eq!(w.len(), 1, "only the status: {w:?}");
    let status = &w[0].2["status"];
    assert_eq!(status["phase"], "Invalid");
    let valid = condition(status, "Valid");
    assert_eq!(valid["status"], "False");
    let msg = valid["message"].as_str().unwrap();
    assert!(
        msg.contains("spec.image") && msg.contains("TEXTREC_DEFAULT_WORKER_GPU_IMAGE"),
        "{msg}"
    );
}

#[tokio::test]
async fn suspend_suspends_unfinished_jobs_and_a_second_reconcile_is_a_no_op() {
    let run = run_json("ocr", json!({"suspend": true}));
    let mut h = harness(&run);
    apply(&mut h.jobs, job_obj("ocr-t0", json!([]), 1));
    let tr: TrainingRun = serde_json::from_value(run).unwrap();
    controller::training_run::reconcile(Arc::new(tr), h.ctx.clone())
        .await
        .unwrap();
    let w = writes(&h.state);
    assert_eq!(w[0].0, "PATCH");
    assert_eq!(w[0].1, "/apis/batch/v1/namespaces/ml/jobs/ocr-t0");
    assert_eq!(w[0].2, json!({"spec": {"suspend": true}}));
    assert_eq!(w.last().unwrap().2["status"]["phase"], "Suspended");

    // Feed the written status back: with nothing changed, nothing is written.
    let stored = h.state.lock().unwrap().objects
        ["/apis/textrec.dev/v1alpha1/namespaces/ml/trainingruns/ocr"]
        .clone();
    let tr: TrainingRun = serde_json::from_value(stored).unwrap();
    let mut j = job_obj("ocr-t0", json!([]), 0);
    j.spec.as_mut().unwrap().suspend = Some(true);
    apply(&mut h.jobs, j);
    h.state.lock().unwrap().log.clear();
    controller::training_run::reconcile(Arc::new(tr), h.ctx.clone())
        .await
        .unwrap();
    // The Job is now suspended: the trial shows it, and no Job is patched again.
    let w = writes(&h.state);
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!(w[0].2["status"]["trials"][0]["phase"], "Restarting");

    // Once the status reflects the world, a reconcile writes nothing at all.
    let stored = h.state.lock().unwrap().objects
        ["/apis/textrec.dev/v1alpha1/namespaces/ml/trainingruns/ocr"]
        .clone();
    let tr: TrainingRun = serde_json::from_value(stored).unwrap();
    h.state.lock().unwrap().log.clear();
    controller::training_run::reconcile(Arc::new(tr), h.ctx.clone())
        .await
        .unwrap();
    assert!(writes(&h.state).is_empty(), "{:?}", writes(&h.state));
}

fn condition(status: &Value, type_: &str) -> Value {
    status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {status}"))
        .clone()
}

/// The run as stored by the fake (what the next reconcile sees).
fn stored_run(state: &Mutex<FakeState>, name: &str) -> TrainingRun {
    let path = format!("/apis/textrec.dev/v1alpha1/namespaces/ml/trainingruns/{name}");
    serde_json::from_value(state.lock().unwrap().objects[&path].clone()).unwrap()
}

/// A pod as the scheduler leaves it when its PersistentVolumeClaim does not exist.
fn unschedulable_pod(name: &str, trial: &str) -> Pod {
    pod_obj(
        name,
        trial,
        "Pending",
        json!({"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": UNSCHEDULABLE, "lastTransitionTime": "2027-01-15T07:59:00Z"}]}),
    )
}

const UNSCHEDULABLE: &str = "0/3 nodes are available: persistentvolumeclaim \"textrec-runs\" not found. preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling.";

fn waiting_pod(name: &str, trial: &str, reason: &str, message: &str) -> Pod {
    pod_obj(
        name,
        trial,
        "Pending",
        json!({"containerStatuses": [{"name": "worker", "image": "", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": reason, "message": message}}}]}),
    )
}

fn cannot_start_events(events: &MemoryEvents) -> Vec<String> {
    events
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, e)| e.reason == "TrialCannotStart")
        .map(|(_, e)| e.message.clone())
        .collect()
}

#[tokio::test]
async fn a_job_refused_its_pod_by_a_quota_is_pending_with_the_refusal() {
    // A ResourceQuota (or Pod Security admission) refuses the pod: the Job has no pod at all,
    // only the Job controller's FailedCreate events say why.
    let run = run_json("ocr", json!({}));
    let mut h = harness(&run);
    apply(&mut h.jobs, job_obj("ocr-t0", json!([]), 0));
    let refusal = "Error creating: pods \"ocr-t0-x7\" is forbidden: exceeded quota: gpus, requested: nvidia.com/gpu=1, used: nvidia.com/gpu=0, limited: nvidia.com/gpu=0";
    let event = |name: &str, job: &str, message: &str| {
        json!({"apiVersion": "v1", "kind": "Event",
            "metadata": {"name": name, "namespace": "ml"},
            "involvedObject": {"kind": "Job", "name": job, "namespace": "ml"},
            "reason": "FailedCreate", "type": "Warning", "message": message,
            "lastTimestamp": "2027-01-15T08:00:00Z"})
    };
    {
        let mut st = h.state.lock().unwrap();
        st.objects.insert(
            "/api/v1/namespaces/ml/events/ocr-t0.1".into(),
            event("ocr-t0.1", "ocr-t0", refusal),
        );
        // Another Job's refusal must not be pinned on this trial.
        st.objects.insert(
            "/api/v1/namespaces/ml/events/other.1".into(),
            event(
                "other.1",
                "other",
                "Error creating: somebody else's problem",
            ),
        );
    }
    let tr: TrainingRun = serde_json::from_value(run).unwrap();
    controller::training_run::reconcile(Arc::new(tr), h.ctx.clone())
        .await
        .unwrap();
    let w = writes(&h.state);
    let status = &w.last().unwrap().2["status"];
    let t0 = &status["trials"][0];
    assert_eq!(
        (t0["phase"].as_str(), t0["reason"].as_str()),
        (Some("Pending"), Some("FailedCreate"))
    );
    let msg = t0["message"].as_str().unwrap();
    assert!(
        msg.contains("exceeded quota: gpus") && msg.ends_with("(job ocr-t0)"),
        "{msg}"
    );
    assert_eq!(status["reason"], "FailedCreate");
    let ev = cannot_start_events(&h.events);
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert!(ev[0].contains("exceeded quota"), "{ev:?}");

    // The quota is raised and the pod exists: the trial is no longer held by the old events.
    apply(&mut h.jobs, job_obj("ocr-t0", json!([]), 1));
    apply(
        &mut h.pods,
        pod_obj(
            "ocr-t0-a",
            "ocr-t0",
            "Running",
            json!({"containerStatuses": [{"name": "worker", "image": "", "imageID": "", "ready": true, "restartCount": 0, "state": {"running": {}}}]}),
        ),
    );
    controller::training_run::reconcile(Arc::new(stored_run(&h.state, "ocr")), h.ctx.clone())
        .await
        .unwrap();
    let st = stored_run(&h.state, "ocr").status.unwrap();
    assert_eq!(st.trials[0].reason, None, "{:?}", st.trials[0]);
}

#[tokio::test]
async fn trials_whose_pods_cannot_start_are_pending_with_the_schedulers_reason() {
    // The incident: every pod Pending, `persistentvolumeclaim "textrec-runs" not found`, while
    // the run said Running, "2 running, 0 pending".
    let run = run_json("ocr", json!({}));
    let mut h = harness(&run);
    for t in ["ocr-t0", "ocr-t1"] {
        apply(&mut h.jobs, job_obj(t, json!([]), 1));
        apply(&mut h.pods, unschedulable_pod(&format!("{t}-a"), t));
    }
    let tr: TrainingRun = serde_json::from_value(run).unwrap();
    controller::training_run::reconcile(Arc::new(tr), h.ctx.clone())
        .await
        .unwrap();
    let w = writes(&h.state);
    assert!(
        !w.iter().any(|(_, p, _)| p.contains("/jobs/")),
        "blocked trials keep their slots: no more Jobs: {w:?}"
    );
    let status = &w.last().unwrap().2["status"];
    assert_eq!(status["phase"], "Pending");
    for i in 0..2 {
        let t = &status["trials"][i];
        assert_eq!(
            (t["phase"].as_str(), t["reason"].as_str()),
            (Some("Pending"), Some("Unschedulable"))
        );
        assert!(
            t["message"]
                .as_str()
                .unwrap()
                .contains("\"textrec-runs\" not found"),
            "{t}"
        );
    }
    assert_eq!(status["trials"][2]["phase"], "Pending");
    assert!(status["trials"][2].get("reason").is_none());
    assert_eq!(
        status["counts"],
        json!({"total": 4, "pending": 4, "running": 0, "succeeded": 0, "failed": 0})
    );
    let running = condition(status, "Running");
    assert_eq!(
        (running["status"].as_str(), running["reason"].as_str()),
        (Some("False"), Some("Unschedulable"))
    );
    let msg = running["message"].as_str().unwrap();
    assert!(
        msg.starts_with("0 running, 0 starting or restarting, 4 pending; 2 cannot start: Unschedulable: 0/3 nodes"),
        "{msg}"
    );
    // What `kubectl get trainingruns` prints (Reason column; Message with -o wide).
    assert_eq!(status["reason"], "Unschedulable");
    assert!(status["message"]
        .as_str()
        .unwrap()
        .starts_with("2 of 4 trials cannot start: Unschedulable: 0/3 nodes"));
    // One Warning event for the one cause, naming both trials.
    let ev = cannot_start_events(&h.events);
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert!(
        ev[0].starts_with("trials ocr-t0, ocr-t1 cannot start: Unschedulable: 0/3 nodes"),
        "{ev:?}"
    );

    // Nothing changed: no new event, no write.
    h.state.lock().unwrap().log.clear();
    controller::training_run::reconcile(Arc::new(stored_run(&h.state, "ocr")), h.ctx.clone())
        .await
        .unwrap();
    assert!(writes(&h.state).is_empty(), "{:?}", writes(&h.state));
    assert_eq!(cannot_start_events(&h.events).len(), 1);

    // t1 gets scheduled but its image cannot be pulled: a new cause, one more event.
    apply(
        &mut h.pods,
        waiting_pod(
            "ocr-t1-a",
            "ocr-t1",
            "ImagePullBackOff",
            "Back-off pulling image \"ghcr.io/textrec/worker:1\"",
        ),
    );
    controller::training_run::reconcile(Arc::new(stored_run(&h.state, "ocr")), h.ctx.clone())
        .await
        .unwrap();
    let st = stored_run(&h.state, "ocr").status.unwrap();
    assert_eq!(st.trials[1].reason.as_deref(), Some("ImagePullBackOff"));
    let ev = cannot_start_events(&h.events);
    assert_eq!(ev.len(), 2, "{ev:?}");
    assert!(
        ev[1].starts_with("trial ocr-t1 cannot start: ImagePullBackOff: Back-off pulling image")
    );
    // The kubelet's next attempt reads ErrImagePull: the same cause, no new event.
    apply(
        &mut h.pods,
        waiting_pod(
            "ocr-t1-a",
            "ocr-t1",
            "ErrImagePull",
            "failed to resolve reference",
        ),
    );
    controller::training_run::reconcile(Arc::new(stored_run(&h.state, "ocr")), h.ctx.clone())
        .await
        .unwrap();
    let st = stored_run(&h.state, "ocr").status.unwrap();
    assert_eq!(st.trials[1].reason.as_deref(), Some("ErrImagePull"));
    assert_eq!(cannot_start_events(&h.events).len(), 2);

    // t0's PVC appears and its pod runs: the run is Running again, t0 without a reason.
    apply(
        &mut h.pods,
        pod_obj(
            "ocr-t0-a",
            "ocr-t0",
            "Running",
            json!({"containerStatuses": [{"name": "worker", "image": "", "imageID": "", "ready": true, "restartCount": 0, "state": {"running": {}}}]}),
        ),
    );
    controller::training_run::reconcile(Arc::new(stored_run(&h.state, "ocr")), h.ctx.clone())
        .await
        .unwrap();
    let st = stored_run(&h.state, "ocr").status.unwrap();
    assert_eq!(st.phase, Some(textrec_operator::crd::RunPhase::Running));
    assert_eq!(
        st.trials[0].phase,
        textrec_operator::crd::TrialPhase::Running
    );
    assert_eq!(st.trials[0].reason, None);
    assert_eq!(
        st.reason.as_deref(),
        Some("ErrImagePull"),
        "t1 still cannot start"
    );
    let running = st.conditions.iter().find(|c| c.type_ == "Running").unwrap();
    assert_eq!(running.status, "True");
    assert!(
        running.message.starts_with(
            "1 running, 0 starting or restarting, 3 pending; 1 cannot start: ErrImagePull"
        ),
        "{}",
        running.message
    );
}

#[tokio::test]
async fn an_image_that_can_never_be_pulled_fails_the_trial_and_stops_its_job() {
    let run = run_json("ocr", json!({"search": {"maxTrials": 4, "parallelism": 1}}));
    let mut h = harness(&run);
    apply(&mut h.jobs, job_obj("ocr-t0", json!([]), 1));
    apply(
        &mut h.pods,
        waiting_pod(
            "ocr-t0-a",
            "ocr-t0",
            "InvalidImageName",
            "Failed to apply default image tag \"Bad:Image\": invalid reference format",
        ),
    );
    let tr: TrainingRun = serde_json::from_value(run).unwrap();
    controller::training_run::reconcile(Arc::new(tr), h.ctx.clone())
        .await
        .unwrap();
    let w = writes(&h.state);
    let suspend = w
        .iter()
        .find(|(_, p, _)| p.ends_with("/jobs/ocr-t0"))
        .expect("the Job of the failed trial is stopped");
    assert_eq!(suspend.2, json!({"spec": {"suspend": true}}));
    let st = stored_run(&h.state, "ocr").status.unwrap();
    assert_eq!(
        st.trials[0].phase,
        textrec_operator::crd::TrialPhase::Failed
    );
    assert_eq!(st.trials[0].reason.as_deref(), Some("InvalidImageName"));
    assert!(reasons(&h.events).contains(&"TrialFailed"));
    // Its slot is free: the next trial starts.
    assert!(
        w.iter().any(|(_, p, _)| p.ends_with("/jobs/ocr-t1")),
        "{w:?}"
    );

    // Suspended and without pods, it does not come back as restarting.
    let mut j = job_obj("ocr-t0", json!([]), 0);
    j.spec.as_mut().unwrap().suspend = Some(true);
    apply(&mut h.jobs, j);
    h.pods
        .apply_watcher_event(&watcher::Event::Delete(waiting_pod(
            "ocr-t0-a",
            "ocr-t0",
            "InvalidImageName",
            "",
        )));
    controller::training_run::reconcile(Arc::new(stored_run(&h.state, "ocr")), h.ctx.clone())
        .await
        .unwrap();
    let st = stored_run(&h.state, "ocr").status.unwrap();
    assert_eq!(
        st.trials[0].phase,
        textrec_operator::crd::TrialPhase::Failed
    );
    assert_eq!(st.trials[0].reason.as_deref(), Some("InvalidImageName"));
}

#[tokio::test]
async fn a_missing_storage_claim_or_secret_is_reported_before_any_job() {
    let run = run_json(
        "ocr",
        json!({"storage": {"url": "file:///runs", "pvc": {"claimName": "textrec-runs"}, "secretRef": "nope"}}),
    );
    let h = harness(&run);
    let tr: TrainingRun = serde_json::from_value(run).unwrap();
    let action = controller::training_run::reconcile(Arc::new(tr), h.ctx.clone())
        .await
        .unwrap();
    // Nothing watches claims: look again soon.
    assert_eq!(
        action,
        kube::runtime::controller::Action::requeue(Duration::from_secs(30))
    );
    let w = writes(&h.state);
    let changed: Vec<&str> = w
        .iter()
        .filter(|(m, _, _)| m != "GET")
        .map(|(_, p, _)| p.as_str())
        .collect();
    assert_eq!(
        changed,
        ["/apis/textrec.dev/v1alpha1/namespaces/ml/trainingruns/ocr/status"],
        "no Job before the claim exists"
    );
    let status = &w.last().unwrap().2["status"];
    assert_eq!(status["phase"], "Pending");
    let valid = condition(status, "Valid");
    assert_eq!(
        (valid["status"].as_str(), valid["reason"].as_str()),
        (Some("False"), Some("PersistentVolumeClaimNotFound"))
    );
    let msg = valid["message"].as_str().unwrap();
    assert!(
        msg.contains(
            "spec.storage.pvc.claimName: PersistentVolumeClaim \"textrec-runs\" not found"
        ) && msg.contains("spec.storage.secretRef: Secret \"nope\" not found"),
        "{msg}"
    );
    assert_eq!(status["reason"], "PersistentVolumeClaimNotFound");
    assert_eq!(
        condition(status, "Running")["reason"],
        "PersistentVolumeClaimNotFound"
    );
    assert_eq!(reasons(&h.events), vec!["ReferenceNotFound"]);

    // Again: no second event.
    controller::training_run::reconcile(Arc::new(stored_run(&h.state, "ocr")), h.ctx.clone())
        .await
        .unwrap();
    assert_eq!(reasons(&h.events), vec!["ReferenceNotFound"]);

    // Both appear: the trials start.
    for (path, kind, name) in [
        (
            "/api/v1/namespaces/ml/persistentvolumeclaims/textrec-runs",
            "PersistentVolumeClaim",
            "textrec-runs",
        ),
        ("/api/v1/namespaces/ml/secrets/nope", "Secret", "nope"),
    ] {
        h.state.lock().unwrap().objects.insert(
            path.into(),
            json!({"apiVersion": "v1", "kind": kind, "metadata": {"name": name, "namespace": "ml"}}),
        );
    }
    h.state.lock().unwrap().log.clear();
    controller::training_run::reconcile(Arc::new(stored_run(&h.state, "ocr")), h.ctx.clone())
        .await
        .unwrap();
    let w = writes(&h.state);
    assert_eq!(
        w.iter().filter(|(_, p, _)| p.contains("/jobs/")).count(),
        2,
        "{w:?}"
    );
    let st = stored_run(&h.state, "ocr").status.unwrap();
    assert!(textrec_operator::conditions::is_true(
        &st.conditions,
        "Valid"
    ));
    assert_eq!(st.reason, None);
}

#[tokio::test]
async fn tower_test_mock_sees_server_side_apply_of_a_job() {
    // The same call through kube's tower-test mock, asserting the request as sent.
    let (svc, mut handle) = tower_test::mock::pair::<
        http::Request<kube::client::Body>,
        http::Response<kube::client::Body>,
    >();
    let client = kube::Client::new(svc, "default");
    let server = tokio::spawn(async move {
        let (req, send) = handle.next_request().await.expect("a request");
        assert_eq!(req.method(), http::Method::PATCH);
        assert_eq!(req.uri().path(), "/apis/batch/v1/namespaces/ml/jobs/ocr-t0");
        assert_eq!(
            req.headers()["content-type"],
            "application/apply-patch+yaml"
        );
        let body = req.into_body().collect_bytes().await.unwrap();
        let job: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(job["kind"], "Job");
        assert_eq!(
            job["spec"]["podFailurePolicy"]["rules"][2]["action"],
            "FailJob"
        );
        send.send_response(
            http::Response::builder()
                .body(kube::client::Body::from(body.to_vec()))
                .unwrap(),
        );
    });
    let tr: TrainingRun = serde_json::from_value(run_json("ocr", json!({}))).unwrap();
    let trials = textrec_operator::run_plan::planned(&tr).unwrap();
    let job = textrec_operator::job::build_job(&tr, &trials[0], false);
    let api: kube::Api<Job> = kube::Api::namespaced(client, "ml");
    api.patch(
        "ocr-t0",
        &kube::api::PatchParams::apply("textrec-operator").force(),
        &kube::api::Patch::Apply(&job),
    )
    .await
    .unwrap();
    server.await.unwrap();
}

// ---- ModelDeployment ----

fn md_json(extra: Value) -> Value {
    let mut spec = json!({"model": {"fromTrainingRun": "ocr"}, "image": "ghcr.io/textrec/worker:1", "replicas": 2});
    merge(&mut spec, &extra);
    json!({"apiVersion": "textrec.dev/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": "reader", "namespace": "ml", "uid": "uid-md", "generation": 1}, "spec": spec})
}

fn finished_run(name: &str, cer: f64, sha: &str, done_at: &str, labels: Value) -> TrainingRun {
    let mut v = run_json(name, json!({}));
    v["metadata"]["labels"] = labels;
    v["status"] = json!({"phase": "Succeeded", "completionTime": done_at,
        "bestModel": {"trial": format!("{name}-t0"), "url": format!("s3://bucket/runs/{name}/{name}-t0/model/"), "sha256": sha, "metric": cer, "metricName": "cer"}});
    serde_json::from_value(v).unwrap()
}

struct MdHarness {
    state: Arc<Mutex<FakeState>>,
    events: Arc<MemoryEvents>,
    ctx: Arc<controller::model_deployment::Context>,
    runs: Writer<TrainingRun>,
}

fn md_harness(md: &Value) -> MdHarness {
    md_harness_with(md, Defaults::default())
}

fn md_harness_with(md: &Value, defaults: Defaults) -> MdHarness {
    let (client, state) = fake_client();
    state.lock().unwrap().objects.insert(
        "/apis/textrec.dev/v1alpha1/namespaces/ml/modeldeployments/reader".into(),
        md.clone(),
    );
    let (runs_r, runs) = reflector::store();
    let (deps_r, _deps): (_, Writer<Deployment>) = reflector::store();
    let events = Arc::new(MemoryEvents::default());
    let shared = Arc::new(Shared {
        metrics: Arc::new(Metrics::new()),
        events: events.clone(),
        backoff: Default::default(),
        defaults,
    });
    let ctx = Arc::new(controller::model_deployment::Context {
        client,
        runs: runs_r,
        deployments: deps_r,
        shared,
        clock,
    });
    MdHarness {
        state,
        events,
        ctx,
        runs,
    }
}

async fn reconcile_md(h: &MdHarness, md: Value) -> Value {
    h.state.lock().unwrap().log.clear();
    let md: ModelDeployment = serde_json::from_value(md).unwrap();
    controller::model_deployment::reconcile(Arc::new(md), h.ctx.clone())
        .await
        .unwrap();
    h.state.lock().unwrap().objects
        ["/apis/textrec.dev/v1alpha1/namespaces/ml/modeldeployments/reader"]
        .clone()
}

#[tokio::test]
async fn model_deployment_rolls_out_promotes_declines_and_rolls_back() {
    let md = md_json(
        json!({"promotion": {"policy": "Automatic", "minImprovement": 0.01, "selector": {"matchLabels": {"team": "ocr"}}}}),
    );
    let mut h = md_harness(&md);
    let team = json!({"team": "ocr"});
    apply(
        &mut h.runs,
        finished_run("ocr", 0.10, "s1", "2027-01-01T00:00:00Z", team.clone()),
    );

    // 1. First deploy from spec.model.fromTrainingRun.
    let obj = reconcile_md(&h, md.clone()).await;
    let w = writes(&h.state);
    let paths: Vec<&str> = w.iter().map(|(_, p, _)| p.as_str()).collect();
    assert_eq!(
        paths,
        vec![
            "/apis/apps/v1/namespaces/ml/deployments/reader",
            "/api/v1/namespaces/ml/services/reader",
            "/apis/textrec.dev/v1alpha1/namespaces/ml/modeldeployments/reader/status",
        ]
    );
    let dep = &w[0].2;
    let c = &dep["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(dep["spec"]["replicas"], 2);
    assert_eq!(
        c["args"],
        json!([
            "serve",
            "--model",
            "s3://bucket/runs/ocr/ocr-t0/model/",
            "--grpc-addr",
            "0.0.0.0:50051",
            "--http-addr",
            "0.0.0.0:8080"
        ])
    );
    assert_eq!(c["readinessProbe"]["grpc"]["port"], 50051);
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["runAsNonRoot"], true);
    assert_eq!(w[1].2["spec"]["ports"][0]["name"], "grpc");
    let st = &obj["status"];
    assert_eq!(st["currentRevision"], 1);
    assert_eq!(st["model"]["sha256"], "s1");
    assert_eq!(st["endpoint"], "reader.ml.svc:50051");
    assert_eq!(st["phase"], "Progressing");

    // 2. A better run (by 0.04 ≥ 0.01) is promoted; a worse one is declined.
    apply(
        &mut h.runs,
        finished_run("ocr2", 0.06, "s2", "2027-01-02T00:00:00Z", team.clone()),
    );
    apply(
        &mut h.runs,
        finished_run(
            "other",
            0.01,
            "s9",
            "2027-01-02T00:00:00Z",
            json!({"team": "x"}),
        ),
    );
    let obj = reconcile_md(&h, obj).await;
    assert_eq!(obj["status"]["currentRevision"], 2);
    assert_eq!(obj["status"]["model"]["sha256"], "s2");
    assert!(obj["status"]["history"][1]["reason"]
        .as_str()
        .unwrap()
        .starts_with("automatic promotion of TrainingRun ocr2"));
    apply(
        &mut h.runs,
        finished_run("ocr3", 0.055, "s3", "2027-01-03T00:00:00Z", team.clone()),
    );
    let obj = reconcile_md(&h, obj).await;
    assert_eq!(obj["status"]["currentRevision"], 2);
    assert_eq!(obj["status"]["declined"][0]["trainingRun"], "ocr3");

    // 3. Rollback to revision 1 deploys it as revision 3.
    let mut obj = obj;
    obj["spec"]["rollbackTo"] = json!(1);
    let obj = reconcile_md(&h, obj).await;
    assert_eq!(obj["status"]["currentRevision"], 3);
    assert_eq!(obj["status"]["model"]["sha256"], "s1");
    assert_eq!(obj["status"]["appliedRollbackTo"], 1);
    let w = writes(&h.state);
    assert_eq!(
        w[0].2["spec"]["template"]["metadata"]["annotations"]["textrec.dev/revision"],
        "3"
    );
    // 4. Idempotent: nothing new to decide, same objects applied, status unchanged.
    let again = reconcile_md(&h, obj.clone()).await;
    assert_eq!(again["status"], obj["status"]);
    assert!(!writes(&h.state)
        .iter()
        .any(|(_, p, _)| p.ends_with("/status")));
    let r: Vec<&str> = h
        .events
        .0
        .lock()
        .unwrap()
        .iter()
        .map(|(_, e)| e.reason)
        .collect();
    assert_eq!(
        r,
        vec![
            "ModelDeployed",
            "Promoted",
            "PromotionDeclined",
            "RolledBack"
        ]
    );
}

#[tokio::test]
async fn a_deployment_without_image_serves_the_default_or_is_invalid() {
    let mut md = md_json(json!({}));
    md["spec"].as_object_mut().unwrap().remove("image");
    let mut h = md_harness_with(&md, chart_defaults());
    apply(
        &mut h.runs,
        finished_run("ocr", 0.10, "s1", "2027-01-01T00:00:00Z", json!({})),
    );
    reconcile_md(&h, md.clone()).await;
    let w = writes(&h.state);
    assert!(w[0].1.ends_with("/deployments/reader"), "{w:?}");
    let pod = &w[0].2["spec"]["template"]["spec"];
    assert_eq!(pod["containers"][0]["image"], "reg/textrec-worker:2");
    assert_eq!(
        pod["containers"][0]["envFrom"][0]["secretRef"]["name"],
        "s3-creds"
    );
    assert_eq!(pod["serviceAccountName"], "textrec-worker");

    // No default configured: nothing is deployed, and the status says which default is missing.
    let mut h = md_harness(&md);
    apply(
        &mut h.runs,
        finished_run("ocr", 0.10, "s1", "2027-01-01T00:00:00Z", json!({})),
    );
    let obj = reconcile_md(&h, md).await;
    let w = writes(&h.state);
    assert_eq!(w.len(), 1, "only the status: {w:?}");
    assert_eq!(obj["status"]["phase"], "Invalid");
    assert!(obj["status"].get("currentRevision").is_none(), "{obj}");
    let valid = condition(&obj["status"], "Valid");
    assert_eq!(valid["status"], "False");
    assert!(
        valid["message"]
            .as_str()
            .unwrap()
            .contains("TEXTREC_DEFAULT_WORKER_IMAGE"),
        "{valid}"
    );
    assert_eq!(reasons(&h.events), vec!["InvalidSpec"]);
}

#[tokio::test]
async fn hot_reload_writes_the_pointer_and_keeps_the_template_stable() {
    let md = md_json(
        json!({"strategy": "HotReload", "autoscaling": {"minReplicas": 1, "maxReplicas": 4}}),
    );
    let mut h = md_harness(&md);
    apply(
        &mut h.runs,
        finished_run("ocr", 0.10, "s1", "2027-01-01T00:00:00Z", json!({})),
    );
    reconcile_md(&h, md).await;
    let w = writes(&h.state);
    let paths: Vec<&str> = w.iter().map(|(_, p, _)| p.as_str()).collect();
    assert_eq!(paths[0], "/api/v1/namespaces/ml/configmaps/reader-model");
    assert_eq!(
        w[0].2["data"],
        json!({"model-url": "s3://bucket/runs/ocr/ocr-t0/model/", "model-sha256": "s1"})
    );
    let dep = &w[1].2;
    assert!(
        dep["spec"].get("replicas").is_none(),
        "the HPA owns replicas"
    );
    assert!(dep["spec"]["template"]["metadata"]
        .get("annotations")
        .is_none());
    let c = &dep["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["args"][1], "--model-pointer");
    assert_eq!(c["args"][2], "/etc/textrec/model/model-url");
    assert!(paths.contains(&"/apis/autoscaling/v2/namespaces/ml/horizontalpodautoscalers/reader"));
}

#[tokio::test]
async fn waiting_for_an_unfinished_run_deploys_nothing() {
    let md = md_json(json!({}));
    let h = md_harness(&md);
    let obj = reconcile_md(&h, md).await;
    let w = writes(&h.state);
    assert_eq!(w.len(), 1);
    assert_eq!(obj["status"]["phase"], "Pending");
    let c = obj["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "ModelResolved")
        .unwrap()
        .clone();
    assert_eq!(c["reason"], "WaitingForModel");
    assert!(c["message"]
        .as_str()
        .unwrap()
        .contains("TrainingRun ocr not found"));
}

// ---- RBAC: the grants the code needs, derived from the calls it makes ----

/// (apiGroup, resource, verb) of one API grant.
type Grant = (String, String, String);

/// The RBAC grants a request needs. A server-side apply of an object (not a status) may create
/// it, which the API server authorizes as `create` too.
fn grants_of(r: &support::fake_api::Recorded) -> Vec<Grant> {
    let segs: Vec<&str> = r.path.trim_start_matches('/').split('/').collect();
    let (group, rest) = match segs[0] {
        "api" => ("", &segs[2..]),
        _ => (segs[1], &segs[3..]),
    };
    let rest = if rest.len() >= 3 && rest[0] == "namespaces" {
        &rest[2..]
    } else {
        rest
    };
    let resource = match rest.get(2) {
        Some(sub) => format!("{}/{sub}", rest[0]),
        None => rest[0].to_string(),
    };
    let named = rest.len() >= 2;
    let verbs: &[&str] = match r.method.as_str() {
        "GET" if named => &["get"],
        "GET" if r.query.contains("watch=true") => &["watch"],
        "GET" => &["list"],
        "POST" => &["create"],
        "PUT" => &["update"],
        "PATCH" if r.query.contains("fieldManager=") && rest.len() == 2 => &["patch", "create"],
        "PATCH" => &["patch"],
        "DELETE" => &["delete"],
        m => panic!("unexpected method {m}"),
    };
    verbs
        .iter()
        .map(|v| (group.to_string(), resource.clone(), v.to_string()))
        .collect()
}

/// (apiGroup, resource, verb) of the rules of a Role/ClusterRole in operator/rbac.yaml.
fn rbac_yaml(kind: &str, name: &str) -> BTreeSet<Grant> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/rbac.yaml")).unwrap();
    let strs = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect())
            .unwrap_or_default()
    };
    let mut out = BTreeSet::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v: Value = serde::Deserialize::deserialize(doc).unwrap();
        if v["kind"] != kind || v["metadata"]["name"] != name {
            continue;
        }
        for rule in v["rules"].as_array().unwrap() {
            for g in strs(&rule["apiGroups"]) {
                for r in strs(&rule["resources"]) {
                    for verb in strs(&rule["verbs"]) {
                        out.insert((g.clone(), r.clone(), verb));
                    }
                }
            }
        }
    }
    assert!(!out.is_empty(), "operator/rbac.yaml has no {kind} {name}");
    out
}

/// Every API call of the operator: both reconcilers through their paths that write (new run,
/// suspension, HotReload deployment with an HPA), the event recorder (new event and series),
/// leader election (create, renew, release) and the manager's watches.
async fn every_call() -> Vec<support::fake_api::Recorded> {
    let mut log = Vec::new();

    let run = run_json("ocr", json!({}));
    let h = harness(&run);
    let tr: TrainingRun = serde_json::from_value(run).unwrap();
    controller::training_run::reconcile(Arc::new(tr), h.ctx.clone())
        .await
        .unwrap();
    log.append(&mut h.state.lock().unwrap().log);

    let run = run_json("ocr", json!({"suspend": true}));
    let mut h = harness(&run);
    apply(&mut h.jobs, job_obj("ocr-t0", json!([]), 1));
    let tr: TrainingRun = serde_json::from_value(run).unwrap();
    controller::training_run::reconcile(Arc::new(tr), h.ctx.clone())
        .await
        .unwrap();
    log.append(&mut h.state.lock().unwrap().log);

    // A trial stopped early whose checkpoint is safe: its Job is deleted at once.
    let (h, run) = early_stopping_harness();
    set_progress(&h, "ocr-t0", progress_at(&[0.9, 0.85], Some(200)));
    set_progress(&h, "ocr-t1", progress_at(&[0.5, 0.3], None));
    set_progress(&h, "ocr-t2", progress_at(&[0.4, 0.2], None));
    let tr: TrainingRun = serde_json::from_value(run).unwrap();
    controller::training_run::reconcile(Arc::new(tr), h.ctx.clone())
        .await
        .unwrap();
    assert!(h
        .state
        .lock()
        .unwrap()
        .log
        .iter()
        .any(|r| r.method == "DELETE"));
    log.append(&mut h.state.lock().unwrap().log);

    // A trial Job without a pod: its FailedCreate events are read.
    let run = run_json("ocr", json!({}));
    let mut h = harness(&run);
    apply(&mut h.jobs, job_obj("ocr-t0", json!([]), 0));
    let tr: TrainingRun = serde_json::from_value(run).unwrap();
    controller::training_run::reconcile(Arc::new(tr), h.ctx.clone())
        .await
        .unwrap();
    log.append(&mut h.state.lock().unwrap().log);

    // A run naming every kind of object it needs (the lookups before any Job).
    let run = run_json(
        "refs",
        json!({"storage": {"url": "file:///runs", "pvc": {"claimName": "runs"},
            "secretRef": "s3-creds", "serviceAccountName": "trainer"}}),
    );
    let h = harness(&run);
    let tr: TrainingRun = serde_json::from_value(run).unwrap();
    controller::training_run::reconcile(Arc::new(tr), h.ctx.clone())
        .await
        .unwrap();
    log.append(&mut h.state.lock().unwrap().log);

    let md = md_json(
        json!({"strategy": "HotReload", "autoscaling": {"minReplicas": 1, "maxReplicas": 4}}),
    );
    let mut h = md_harness(&md);
    apply(
        &mut h.runs,
        finished_run("ocr", 0.10, "s1", "2027-01-01T00:00:00Z", json!({})),
    );
    reconcile_md(&h, md).await;
    log.append(&mut h.state.lock().unwrap().log);

    // Fine-tunes look up the object their parent comes from.
    for init in [
        json!({"modelDeployment": "reader"}),
        json!({"trainingRun": "base"}),
    ] {
        let run = run_json("tuned", json!({"initFrom": init}));
        let h = harness(&run);
        let tr: TrainingRun = serde_json::from_value(run).unwrap();
        controller::training_run::reconcile(Arc::new(tr), h.ctx.clone())
            .await
            .unwrap();
        log.append(&mut h.state.lock().unwrap().log);
    }

    // Promotion evaluations: Jobs created, then their pods read and the Jobs deleted.
    let md = md_json(
        json!({"promotion": {"policy": "Automatic", "evaluation": {"path": "/data/heldout"}}}),
    );
    let mut h = md_harness(&md);
    apply(
        &mut h.runs,
        finished_run("ocr", 0.10, "s1", "2027-01-01T00:00:00Z", json!({})),
    );
    let obj = reconcile_md(&h, md).await;
    log.append(&mut h.state.lock().unwrap().log);
    apply(
        &mut h.runs,
        finished_run("ocr2", 0.06, "s2", "2027-01-02T00:00:00Z", json!({})),
    );
    let obj = reconcile_md(&h, obj).await;
    let jobs = eval_jobs(&h.state);
    log.append(&mut h.state.lock().unwrap().log);
    for (name, _) in &jobs {
        finish_eval_job(
            &h.state,
            name,
            json!({"cer": 0.2, "lines": 4, "dataset_digest": "d"}),
        );
    }
    reconcile_md(&h, obj).await;
    log.append(&mut h.state.lock().unwrap().log);

    let (client, state) = fake_client();
    let recorder = kube::runtime::events::Recorder::new(
        client.clone(),
        kube::runtime::events::Reporter {
            controller: "textrec-operator".into(),
            instance: None,
        },
    );
    let events = controller::KubeEvents(recorder);
    let tr: TrainingRun = serde_json::from_value(run_json("ocr", json!({}))).unwrap();
    let reference = kube::Resource::object_ref(&tr, &());
    let ev = textrec_operator::run_plan::PlannedEvent {
        severity: textrec_operator::run_plan::Severity::Warning,
        reason: "TrialCannotStart",
        message: "m".into(),
    };
    use controller::EventSink;
    events.publish(&reference, &ev).await;
    events.publish(&reference, &ev).await;

    let elector = textrec_operator::leader::LeaderElector::new(
        kube::Api::namespaced(client.clone(), "textrec-system"),
        "textrec-operator-leader",
        "me",
        Duration::from_secs(15),
    );
    assert!(elector.try_acquire_or_renew().await.unwrap());
    assert!(elector.try_acquire_or_renew().await.unwrap());
    elector.release().await.unwrap();

    // The watches: long enough for each watcher's list and first watch request.
    let opts = textrec_operator::manager::RunOptions {
        http_addr: "127.0.0.1:0".parse().unwrap(),
        no_ui: false,
        namespace: None,
        lease_namespace: "textrec-system".into(),
        lease_name: "textrec-operator-leader".into(),
        identity: None,
        lease_duration_s: 15,
        no_leader_election: true,
        progress_interval_s: 30,
        no_progress: true,
        concurrency: 1,
        log_format: Default::default(),
        defaults: Default::default(),
    };
    let shared = Arc::new(Shared {
        metrics: Arc::new(Metrics::new()),
        events: Arc::new(MemoryEvents::default()),
        backoff: Default::default(),
        defaults: Default::default(),
    });
    let (stop, rx) = tokio::sync::watch::channel(false);
    let c = client.clone();
    let manager = tokio::spawn(async move {
        textrec_operator::manager::run_controllers(c, &opts, shared, rx).await
    });
    let watched = |st: &support::fake_api::FakeState| {
        st.log
            .iter()
            .filter(|r| r.query.contains("watch=true"))
            .map(|r| r.path.clone())
            .collect::<BTreeSet<_>>()
            .len()
    };
    for _ in 0..100 {
        // Five watches: TrainingRuns (twice, one path), ModelDeployments, Jobs, Pods, Deployments.
        if watched(&state.lock().unwrap()) >= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = stop.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), manager).await;
    log.append(&mut state.lock().unwrap().log);
    log
}

#[tokio::test]
async fn rbac_yaml_grants_exactly_the_calls_the_operator_makes() {
    let calls = every_call().await;
    let mut cluster = BTreeSet::new();
    let mut leader = BTreeSet::new();
    for r in &calls {
        for g in grants_of(r) {
            if g.1 == "leases" {
                leader.insert(g);
            } else {
                cluster.insert(g);
            }
        }
    }
    // Reading Secrets is opt-in (the chart's rbac.readSecrets): the operator tries, and does
    // without when it may not.
    let secrets = (String::new(), "secrets".to_string(), "get".to_string());
    assert!(
        cluster.remove(&secrets),
        "the Secret lookup was not exercised"
    );
    let want = rbac_yaml("ClusterRole", "textrec-operator");
    assert_eq!(
        cluster.difference(&want).collect::<Vec<_>>(),
        Vec::<&Grant>::new(),
        "calls that operator/rbac.yaml does not allow"
    );
    assert_eq!(
        want.difference(&cluster).collect::<Vec<_>>(),
        Vec::<&Grant>::new(),
        "operator/rbac.yaml grants what the operator never calls"
    );
    assert_eq!(
        leader,
        rbac_yaml("Role", "textrec-operator-leader-election")
    );
}

// ---- Tracing ----

/// A log sink the test can read.
#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Runs [`reconcile_spans_alone`] in a process of its own: tracing's callsite interest is
/// global, and reconciles on other test threads (no subscriber) race with this test's
/// thread-local subscriber.
#[test]
fn each_reconcile_runs_in_a_span_naming_the_object_its_generation_and_a_trace_id() {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "reconcile_spans_alone",
            "--exact",
            "--ignored",
            "--test-threads=1",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 passed"));
}

#[tokio::test]
#[ignore = "run in its own process by each_reconcile_runs_in_a_span_naming_the_object_its_generation_and_a_trace_id"]
async fn reconcile_spans_alone() {
    let logs = LogBuffer::default();
    let sink = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_writer(move || sink.clone())
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    // Other tests, on other threads and without a subscriber, may have registered the
    // reconcilers' callsites first; make them ask this thread's subscriber again.
    tracing::callsite::rebuild_interest_cache();

    let run = run_json("ocr", json!({}));
    let h = harness(&run);
    let tr: TrainingRun = serde_json::from_value(run).unwrap();
    controller::training_run::reconcile(Arc::new(tr.clone()), h.ctx.clone())
        .await
        .unwrap();
    controller::training_run::reconcile(Arc::new(tr), h.ctx.clone())
        .await
        .unwrap();
    let md = md_json(json!({}));
    let mh = md_harness(&md);
    reconcile_md(&mh, md).await;

    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let spans: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["span"]["name"] == "reconcile")
        .map(|v| v["span"].clone())
        .collect();
    assert_eq!(spans.len(), 3, "{text}");
    for (s, controller, name) in [
        (&spans[0], "trainingrun", "ocr"),
        (&spans[2], "modeldeployment", "reader"),
    ] {
        assert_eq!(s["controller"], controller, "{s}");
        assert_eq!(
            (s["namespace"].as_str(), s["object"].as_str()),
            (Some("ml"), Some(name))
        );
        assert_eq!(s["generation"], 1);
        assert_eq!(s["trace_id"].as_str().unwrap().len(), 16, "{s}");
    }
    assert_ne!(
        spans[0]["trace_id"], spans[1]["trace_id"],
        "one id per reconcile"
    );
}

// ---- Early stopping ----

fn running_pod(name: &str, trial: &str) -> Pod {
    pod_obj(
        name,
        trial,
        "Running",
        json!({"containerStatuses": [{"name": "worker", "image": "", "imageID": "", "ready": true, "restartCount": 0, "state": {"running": {}}}]}),
    )
}

/// `progress.json` of a running trial whose evaluations so far are `cers` (every 100 steps).
fn progress_at(cers: &[f64], checkpoint: Option<u64>) -> textrec_contract::TrialProgress {
    let step = cers.len() as u64 * 100;
    let (best_i, best) = cers
        .iter()
        .enumerate()
        .min_by(|a, b| a.1.total_cmp(b.1))
        .unwrap();
    serde_json::from_value(json!({
        "phase": "Running", "step": step, "max_steps": 1000,
        "latest": {"step": step, "cer": cers[cers.len() - 1], "wer": 0.9},
        "best": {"step": (best_i as u64 + 1) * 100, "cer": best, "wer": 0.9},
        "checkpoint": checkpoint.map(|c| json!({"step": c, "url": format!("s3://bucket/runs/ocr/ocr-t0/checkpoints/step-{c:010}/")})),
        "updated": format!("2027-01-15T08:0{}:00Z", cers.len()),
    }))
    .unwrap()
}

fn set_progress(h: &Harness, trial: &str, p: textrec_contract::TrialProgress) {
    h.progress
        .0
        .lock()
        .unwrap()
        .insert(format!("s3://bucket/runs/ocr/{trial}"), p);
}

/// Three running trials of a run with early stopping; ocr-t0 is far worse than the others.
fn early_stopping_harness() -> (Harness, Value) {
    let run = run_json(
        "ocr",
        json!({"search": {"maxTrials": 4, "parallelism": 3},
               "earlyStopping": {"algorithm": "MedianStop", "startStep": 200, "minTrialsRequired": 2}}),
    );
    let mut h = harness(&run);
    for t in ["ocr-t0", "ocr-t1", "ocr-t2"] {
        let job = job_obj(t, json!([]), 1);
        h.state.lock().unwrap().objects.insert(
            format!("/apis/batch/v1/namespaces/ml/jobs/{t}"),
            serde_json::to_value(&job).unwrap(),
        );
        apply(&mut h.jobs, job);
        apply(&mut h.pods, running_pod(&format!("{t}-a"), t));
    }
    (h, run)
}

async fn reconcile_stored(h: &Harness) {
    let stored = h.state.lock().unwrap().objects
        ["/apis/textrec.dev/v1alpha1/namespaces/ml/trainingruns/ocr"]
        .clone();
    let tr: TrainingRun = serde_json::from_value(stored).unwrap();
    h.state.lock().unwrap().log.clear();
    controller::training_run::reconcile(Arc::new(tr), h.ctx.clone())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_trial_worse_than_the_median_is_stopped_early_after_its_checkpoint() {
    let (mut h, _) = early_stopping_harness();
    // Step 100, before startStep: however bad, nothing is decided. The operator keeps each
    // trial's evaluations as it reads them.
    set_progress(&h, "ocr-t0", progress_at(&[0.9], Some(100)));
    set_progress(&h, "ocr-t1", progress_at(&[0.5], None));
    set_progress(&h, "ocr-t2", progress_at(&[0.4], None));
    reconcile_stored(&h).await;
    let w = writes(&h.state);
    assert!(
        w.iter().all(|(_, p, _)| p.ends_with("/status")),
        "only the status is written: {w:?}"
    );

    // Step 200: t0's best (0.85) is worse than the median of the others' running averages
    // ((0.5 + 0.3) / 2 = 0.4 and (0.4 + 0.2) / 2 = 0.3: 0.35). Its newest checkpoint (step 100)
    // is older than that: its Job is suspended so that the worker checkpoints now.
    set_progress(&h, "ocr-t0", progress_at(&[0.9, 0.85], Some(100)));
    set_progress(&h, "ocr-t1", progress_at(&[0.5, 0.3], None));
    set_progress(&h, "ocr-t2", progress_at(&[0.4, 0.2], None));
    reconcile_stored(&h).await;
    let w = writes(&h.state);
    assert_eq!(w[0].0, "PATCH");
    assert_eq!(w[0].1, "/apis/batch/v1/namespaces/ml/jobs/ocr-t0");
    assert_eq!(w[0].2, json!({"spec": {"suspend": true}}));
    assert!(!w.iter().any(|(m, _, _)| m == "DELETE"));
    let status = &w.last().unwrap().2["status"];
    let t0 = &status["trials"][0];
    assert_eq!(t0["phase"], "Running");
    assert_eq!(t0["reason"], "EarlyStopping");
    assert_eq!(t0["earlyStopping"]["step"], 200);
    assert_eq!(t0["earlyStopping"]["best"], 0.85);
    assert_eq!(t0["earlyStopping"]["trials"], 2);
    assert!((t0["earlyStopping"]["median"].as_f64().unwrap() - 0.35).abs() < 1e-9);
    assert_eq!(status["trials"][1]["phase"], "Running");
    assert!(status["trials"][1].get("earlyStopping").is_none());
    let events = h.events.0.lock().unwrap().clone();
    let stopped: Vec<_> = events
        .iter()
        .filter(|(_, e)| e.reason == "TrialEarlyStopped")
        .collect();
    assert_eq!(stopped.len(), 1);
    assert!(
        stopped[0]
            .1
            .message
            .contains("ocr-t0 stopped early at step 200: best cer 0.8500 is worse than 0.3500"),
        "{:?}",
        stopped[0].1.message
    );

    // The pod got SIGTERM: the worker checkpointed at step 230 and exited 75, leaving its final
    // progress as the termination message. The Job is deleted (its pods with it), the trial
    // is EarlyStopped, and the freed slot starts the fourth trial.
    let mut suspended = job_obj("ocr-t0", json!([]), 0);
    suspended.spec.as_mut().unwrap().suspend = Some(true);
    apply(&mut h.jobs, suspended);
    h.pods
        .apply_watcher_event(&watcher::Event::Delete(running_pod("ocr-t0-a", "ocr-t0")));
    let mut last = progress_at(&[0.9, 0.85], Some(230));
    last.step = 230;
    last.phase = textrec_contract::metrics::WorkerPhase::Interrupted;
    last.updated = "2027-01-15T09:00:00Z".parse().unwrap();
    apply(
        &mut h.pods,
        pod_obj(
            "ocr-t0-a",
            "ocr-t0",
            "Failed",
            json!({"containerStatuses": [{"name": "worker", "image": "", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": 75, "message": serde_json::to_string(&last).unwrap()}}}]}),
        ),
    );
    reconcile_stored(&h).await;
    let w = writes(&h.state);
    let deletes: Vec<_> = w.iter().filter(|(m, _, _)| m == "DELETE").collect();
    assert_eq!(deletes.len(), 1, "{w:?}");
    assert_eq!(deletes[0].1, "/apis/batch/v1/namespaces/ml/jobs/ocr-t0");
    assert_eq!(deletes[0].2["propagationPolicy"], "Background");
    assert!(!h
        .state
        .lock()
        .unwrap()
        .objects
        .contains_key("/apis/batch/v1/namespaces/ml/jobs/ocr-t0"));
    assert!(w
        .iter()
        .any(|(m, p, _)| m == "PATCH" && p.ends_with("/jobs/ocr-t3")));
    let status = &w.last().unwrap().2["status"];
    let t0 = &status["trials"][0];
    assert_eq!(t0["phase"], "EarlyStopped");
    assert_eq!(t0["preemptions"], 0, "a stop on purpose is no preemption");
    assert_eq!(t0["checkpoint"]["step"], 230);
    assert!(
        t0["message"]
            .as_str()
            .unwrap()
            .ends_with("checkpoint at step 230 kept"),
        "{t0}"
    );
    assert_eq!(status["counts"]["earlyStopped"], 1);
    assert_eq!(status["counts"]["running"], 3);
    assert_eq!(status["trialsDone"], "1/4");
    assert_eq!(status["bestTrial"], "ocr-t2");
    assert!(!reasons(&h.events).contains(&"TrialPreempted"));

    // The Job and its pod are gone: the trial stays EarlyStopped and nothing more is deleted.
    h.jobs
        .apply_watcher_event(&watcher::Event::Delete(job_obj("ocr-t0", json!([]), 0)));
    h.pods
        .apply_watcher_event(&watcher::Event::Delete(running_pod("ocr-t0-a", "ocr-t0")));
    reconcile_stored(&h).await;
    let w = writes(&h.state);
    assert!(!w.iter().any(|(m, _, _)| m == "DELETE"), "{w:?}");
    let stored = stored_run(&h.state, "ocr");
    let st = stored.status.unwrap();
    assert_eq!(
        st.trials[0].phase,
        textrec_operator::crd::TrialPhase::EarlyStopped
    );
    assert_eq!(st.counts.early_stopped, 1);
}

// ---- Promotion evaluations ----

/// The eval Jobs the last reconcile applied: (name, body).
fn eval_jobs(state: &Mutex<FakeState>) -> Vec<(String, Value)> {
    writes(state)
        .into_iter()
        .filter(|(m, p, _)| m == "PATCH" && p.starts_with("/apis/batch/v1/namespaces/ml/jobs/"))
        .map(|(_, p, b)| (p.rsplit('/').next().unwrap().to_string(), b))
        .collect()
}

/// Finish eval Job `job` as the kubelet would: succeeded, its pod's termination message the
/// worker's `--result-file` JSON.
fn finish_eval_job(state: &Mutex<FakeState>, job: &str, result: Value) {
    let mut st = state.lock().unwrap();
    st.objects
        .get_mut(&format!("/apis/batch/v1/namespaces/ml/jobs/{job}"))
        .unwrap()["status"] = json!({"succeeded": 1});
    st.objects.insert(
        format!("/api/v1/namespaces/ml/pods/{job}-x1"),
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("{job}-x1"), "namespace": "ml", "labels": {"job-name": job}},
            "status": {"phase": "Succeeded", "containerStatuses": [{"name": "eval", "image": "w",
                "imageID": "", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": 0, "message": result.to_string()}}}]}}),
    );
}

#[tokio::test]
async fn promotion_evaluates_both_models_in_restricted_jobs_and_declines_with_both_numbers() {
    let md = md_json(json!({
        "promotion": {"policy": "Automatic", "minImprovement": 0.01,
            "evaluation": {"path": "/data/heldout", "samples": 40}},
        "credentials": {"pvc": {"claimName": "data", "mountPath": "/data"}}
    }));
    let mut h = md_harness(&md);
    apply(
        &mut h.runs,
        finished_run("ocr", 0.10, "s1", "2027-01-01T00:00:00Z", json!({})),
    );
    let obj = reconcile_md(&h, md).await;
    assert_eq!(obj["status"]["currentRevision"], 1);
    assert!(
        eval_jobs(&h.state).is_empty(),
        "no candidate, nothing to evaluate"
    );

    // A candidate whose own validation CER (0.06) beats the deployed model's.
    apply(
        &mut h.runs,
        finished_run("ocr2", 0.06, "s2", "2027-01-02T00:00:00Z", json!({})),
    );
    let obj = reconcile_md(&h, obj).await;
    let jobs = eval_jobs(&h.state);
    assert_eq!(jobs.len(), 2, "{jobs:#?}");
    let (s1_job, job) = &jobs[0];
    assert!(s1_job.contains("eval-s1"), "{s1_job}");
    let pod = &job["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(
        c["args"],
        json!([
            "eval",
            "--model",
            "s3://bucket/runs/ocr/ocr-t0/model/",
            "--data",
            "/data/heldout",
            "--json",
            "--samples",
            "40",
            "--result-file",
            "/dev/termination-log",
            "--device",
            "cpu"
        ])
    );
    assert_eq!(c["image"], "ghcr.io/textrec/worker:1");
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(c["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    assert_eq!(pod["automountServiceAccountToken"], false);
    assert_eq!(pod["restartPolicy"], "Never");
    assert_eq!(job["spec"]["backoffLimit"], 0);
    assert_eq!(
        pod["volumes"][1]["persistentVolumeClaim"],
        json!({"claimName": "data", "readOnly": true})
    );
    // Never behind the serving Service: not the serving pods' labels.
    let labels = &job["spec"]["template"]["metadata"]["labels"];
    assert_eq!(labels["textrec.dev/evaluation-of"], "reader");
    assert!(labels.get("app.kubernetes.io/name").is_none(), "{labels}");
    assert_eq!(
        job["metadata"]["ownerReferences"][0]["kind"],
        "ModelDeployment"
    );
    assert_eq!(obj["status"]["currentRevision"], 1);
    assert!(obj["status"]["declined"].is_null());

    // Both finish: their results reach status.evaluations, and the Jobs are deleted.
    let digest = "d".repeat(64);
    for (((name, _), cer), sha) in jobs.iter().zip([0.30, 0.35]).zip(["s1", "s2"]) {
        finish_eval_job(
            &h.state,
            name,
            json!({"cer": cer, "wer": 0.5, "lines": 40, "model_sha256": sha, "dataset_digest": digest}),
        );
    }
    let obj = reconcile_md(&h, obj).await;
    let evals = obj["status"]["evaluations"].as_array().unwrap();
    assert_eq!(evals.len(), 2, "{evals:#?}");
    assert_eq!(evals[0]["modelSha256"], "s1");
    assert_eq!(evals[0]["cer"], 0.30);
    assert_eq!(evals[0]["datasetDigest"], digest.as_str());
    let deleted: Vec<String> = writes(&h.state)
        .into_iter()
        .filter(|(m, _, _)| m == "DELETE")
        .map(|(_, p, _)| p)
        .collect();
    assert_eq!(deleted.len(), 2, "{deleted:?}");

    // Decided on the set: worse there, declined with both numbers; no new evaluation.
    let obj = reconcile_md(&h, obj).await;
    assert!(eval_jobs(&h.state).is_empty());
    assert_eq!(obj["status"]["currentRevision"], 1);
    let d = &obj["status"]["declined"][0];
    assert_eq!(d["trainingRun"], "ocr2");
    assert_eq!(d["metric"], 0.35);
    assert_eq!(d["deployedMetric"], 0.30);
    assert_eq!(d["datasetDigest"], digest.as_str());
    let r = reasons(&h.events);
    for want in ["EvaluationStarted", "Evaluated", "PromotionDeclined"] {
        assert!(r.contains(&want), "{r:?}");
    }
}
