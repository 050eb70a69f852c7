//! The fake API, reflector stores and contexts the reconcilers run against, and the objects
//! the tests feed them.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::watcher;
use serde_json::{json, Value};
use textrec_operator::controller::{self, MemoryEvents, Shared};
use textrec_operator::crd::{ModelDeployment, TrainingRun};
use textrec_operator::defaults::Defaults;
use textrec_operator::metrics::Metrics;
use textrec_operator::progress::StaticProgress;

use crate::fake_api::{fake_client, FakeState};

pub(crate) fn clock() -> Time {
    Time(k8s_openapi::jiff::Timestamp::from_second(1_800_000_000).unwrap())
}

pub(crate) fn run_json(name: &str, extra: Value) -> Value {
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

pub(crate) struct Harness {
    pub(crate) state: Arc<Mutex<FakeState>>,
    pub(crate) events: Arc<MemoryEvents>,
    pub(crate) ctx: Arc<controller::training_run::Context>,
    pub(crate) jobs: Writer<Job>,
    pub(crate) pods: Writer<Pod>,
    pub(crate) progress: Arc<StaticProgress>,
}

pub(crate) fn harness(run: &Value) -> Harness {
    harness_with(run, Defaults::default())
}

pub(crate) fn harness_with(run: &Value, defaults: Defaults) -> Harness {
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
pub(crate) fn writes(state: &Mutex<FakeState>) -> Vec<(String, String, Value)> {
    state
        .lock()
        .unwrap()
        .log
        .iter()
        .filter(|r| r.method != "GET")
        .map(|r| (r.method.clone(), r.path.clone(), r.body.clone()))
        .collect()
}

pub(crate) fn reasons(events: &MemoryEvents) -> Vec<&'static str> {
    events
        .0
        .lock()
        .unwrap()
        .iter()
        .map(|(_, e)| e.reason)
        .collect()
}

pub(crate) fn job_obj(name: &str, conds: Value, active: i32) -> Job {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "ml",
            "labels": {"textrec.dev/run": "ocr", "textrec.dev/trial": name, "app.kubernetes.io/managed-by": "textrec-operator"},
            "ownerReferences": [{"apiVersion": "textrec.dev/v1alpha1", "kind": "TrainingRun", "name": "ocr", "uid": "uid-1", "controller": true}]},
        "spec": {"suspend": false, "template": {}},
        "status": {"conditions": conds, "active": active}
    }))
    .unwrap()
}

pub(crate) fn pod_obj(name: &str, trial: &str, phase: &str, extra_status: Value) -> Pod {
    let mut status = json!({"phase": phase});
    merge(&mut status, &extra_status);
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "ml", "labels": {"textrec.dev/run": "ocr", "textrec.dev/trial": trial}},
        "status": status
    }))
    .unwrap()
}

pub(crate) fn merge(a: &mut Value, b: &Value) {
    if let (Some(a), Some(b)) = (a.as_object_mut(), b.as_object()) {
        for (k, v) in b {
            a.insert(k.clone(), v.clone());
        }
    }
}

pub(crate) fn apply<K: kube::Resource + Clone>(w: &mut Writer<K>, obj: K)
where
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    w.apply_watcher_event(&watcher::Event::Apply(obj));
}

pub(crate) fn chart_defaults() -> Defaults {
    Defaults {
        worker_image: Some("reg/textrec-worker:2".into()),
        worker_gpu_image: Some("reg/textrec-worker:2-cuda".into()),
        storage_url: Some("s3://default-bucket/runs".into()),
        storage_secret: Some("s3-creds".into()),
        service_account: Some("textrec-worker".into()),
        allow_host_path_volumes: false,
    }
}

pub(crate) fn condition(status: &Value, type_: &str) -> Value {
    status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {status}"))
        .clone()
}

/// A pod whose worker container is running.
pub(crate) fn running_pod(name: &str, trial: &str) -> Pod {
    pod_obj(
        name,
        trial,
        "Running",
        json!({"containerStatuses": [{"name": "worker", "image": "", "imageID": "", "ready": true, "restartCount": 0, "state": {"running": {}}}]}),
    )
}

/// Reconciles `run` (its JSON) once; returns when the controller wants to look again.
pub(crate) async fn reconcile_run(h: &Harness, run: &Value) -> kube::runtime::controller::Action {
    let tr: TrainingRun = serde_json::from_value(run.clone()).unwrap();
    controller::training_run::reconcile(Arc::new(tr), h.ctx.clone())
        .await
        .unwrap()
}

/// Reconciles run `ocr` as the fake stores it: what the controller's next pass sees.
pub(crate) async fn reconcile_again(h: &Harness) {
    let run = stored_run(&h.state, "ocr");
    controller::training_run::reconcile(Arc::new(run), h.ctx.clone())
        .await
        .unwrap();
}

/// The run as stored by the fake (what the next reconcile sees).
pub(crate) fn stored_run(state: &Mutex<FakeState>, name: &str) -> TrainingRun {
    let path = format!("/apis/textrec.dev/v1alpha1/namespaces/ml/trainingruns/{name}");
    serde_json::from_value(state.lock().unwrap().objects[&path].clone()).unwrap()
}

pub(crate) fn md_json(extra: Value) -> Value {
    let mut spec = json!({"model": {"fromTrainingRun": "ocr"}, "image": "ghcr.io/textrec/worker:1", "replicas": 2});
    merge(&mut spec, &extra);
    json!({"apiVersion": "textrec.dev/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": "reader", "namespace": "ml", "uid": "uid-md", "generation": 1}, "spec": spec})
}

pub(crate) fn finished_run(
    name: &str,
    cer: f64,
    sha: &str,
    done_at: &str,
    labels: Value,
) -> TrainingRun {
    let mut v = run_json(name, json!({}));
    v["metadata"]["labels"] = labels;
    v["status"] = json!({"phase": "Succeeded", "completionTime": done_at,
        "bestModel": {"trial": format!("{name}-t0"), "url": format!("s3://bucket/runs/{name}/{name}-t0/model/"), "sha256": sha, "metric": cer, "metricName": "cer"}});
    serde_json::from_value(v).unwrap()
}

pub(crate) struct MdHarness {
    pub(crate) state: Arc<Mutex<FakeState>>,
    pub(crate) events: Arc<MemoryEvents>,
    pub(crate) ctx: Arc<controller::model_deployment::Context>,
    pub(crate) runs: Writer<TrainingRun>,
}

pub(crate) fn md_harness(md: &Value) -> MdHarness {
    md_harness_with(md, Defaults::default())
}

pub(crate) fn md_harness_with(md: &Value, defaults: Defaults) -> MdHarness {
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

pub(crate) async fn reconcile_md(h: &MdHarness, md: Value) -> Value {
    h.state.lock().unwrap().log.clear();
    let md: ModelDeployment = serde_json::from_value(md).unwrap();
    controller::model_deployment::reconcile(Arc::new(md), h.ctx.clone())
        .await
        .unwrap();
    h.state.lock().unwrap().objects
        ["/apis/textrec.dev/v1alpha1/namespaces/ml/modeldeployments/reader"]
        .clone()
}
