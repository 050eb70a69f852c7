//! What the e2e tests share: the cluster client, waiting, namespaces, an in-process operator,
//! and readers of the objects it writes.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config, CustomResourceExt};
use serde_json::json;
use textrec_operator::controller::{KubeEvents, Shared};
use textrec_operator::crd::{ModelDeployment, TrainingRun};
use textrec_operator::manager::{run_controllers, RunOptions};
use textrec_operator::metrics::Metrics;

/// The namespace of the tests that share one (the grid run's).
pub const NS: &str = "textrec-e2e";

/// A client for the cluster `TEXTREC_E2E_KUBECONFIG` names, or `None` (the test then skips).
pub async fn client() -> Option<Client> {
    let Some(path) = std::env::var_os("TEXTREC_E2E_KUBECONFIG") else {
        println!("skipped: set TEXTREC_E2E_KUBECONFIG to a disposable cluster's kubeconfig to run the e2e suite");
        return None;
    };
    let kc = Kubeconfig::read_from(path).expect("readable kubeconfig");
    let cfg = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("usable kubeconfig");
    Some(Client::try_from(cfg).expect("client"))
}

/// `f`'s first `Some`, asked once a second; panics naming `what` after `timeout`.
pub async fn eventually<F, Fut, T>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// [`setup_with_storage_claim`] in the shared namespace [`NS`].
pub async fn setup(client: &Client) {
    setup_with_storage_claim(client, NS).await;
}

/// [`setup_namespace`] plus the `textrec-e2e` storage claim the trials mount.
pub async fn setup_with_storage_claim(client: &Client, ns: &str) {
    setup_namespace(client, ns).await;
    let ssa = PatchParams::apply("textrec-e2e").force();
    let pvcs: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> =
        Api::namespaced(client.clone(), ns);
    let _ = pvcs
        .patch("textrec-e2e", &ssa, &Patch::Apply(json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "textrec-e2e"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}})))
        .await;
}

/// The CRDs and namespace `ns` (each test with an operator of its own uses its own namespace:
/// tests run concurrently, and two operators watching one namespace would both reconcile it).
pub async fn setup_namespace(client: &Client, ns: &str) {
    let ssa = PatchParams::apply("textrec-e2e").force();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in [TrainingRun::crd(), ModelDeployment::crd()] {
        crds.patch(
            crd.metadata.name.as_deref().unwrap(),
            &ssa,
            &Patch::Apply(&crd),
        )
        .await
        .expect("CRD installs");
    }
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .patch(
            ns,
            &ssa,
            &Patch::Apply(
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
            ),
        )
        .await
        .unwrap();
    // CRDs take a moment to be served.
    tokio::time::sleep(Duration::from_secs(3)).await;
}

/// [`start_operator_in`] the shared namespace [`NS`].
pub fn start_operator(client: &Client) -> tokio::sync::watch::Sender<bool> {
    start_operator_in(client, NS)
}

/// An operator watching only `ns`, in this process, with the test's credentials.
pub fn start_operator_in(client: &Client, ns: &str) -> tokio::sync::watch::Sender<bool> {
    start_operator_with(client, ns, true)
}

/// [`start_operator_in`], reading trial progress from storage unless `no_progress`.
pub fn start_operator_with(
    client: &Client,
    ns: &str,
    no_progress: bool,
) -> tokio::sync::watch::Sender<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    let opts = RunOptions {
        http_addr: "127.0.0.1:0".parse().unwrap(),
        no_ui: false,
        namespace: Some(ns.into()),
        lease_namespace: ns.into(),
        lease_name: "e2e".into(),
        identity: None,
        lease_duration_s: 15,
        no_leader_election: true,
        progress_interval_s: 5,
        no_progress,
        concurrency: 4,
        log_format: Default::default(),
        defaults: Default::default(),
    };
    let reporter = kube::runtime::events::Reporter {
        controller: "textrec-operator-e2e".into(),
        instance: None,
    };
    let shared = Arc::new(Shared {
        metrics: Arc::new(Metrics::new()),
        events: Arc::new(KubeEvents(kube::runtime::events::Recorder::new(
            client.clone(),
            reporter,
        ))),
        backoff: Default::default(),
        defaults: Default::default(),
    });
    let c = client.clone();
    tokio::spawn(async move { run_controllers(c, &opts, shared, rx).await });
    tx
}

/// Whether the cluster has no kubelets (`TEXTREC_E2E_NO_KUBELET`): pod outcomes are then patched in.
pub fn no_kubelet() -> bool {
    std::env::var_os("TEXTREC_E2E_NO_KUBELET").is_some()
}

/// The pods of trial `trial` in `ns`.
pub async fn pods_of(client: &Client, ns: &str, trial: &str) -> Vec<Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    pods.list(&ListParams::default().labels(&format!("textrec.dev/trial={trial}")))
        .await
        .unwrap()
        .items
}

/// The first pod of trial `trial` in `ns` once there is one (an API error counts as none yet).
pub async fn first_pod(client: &Client, ns: &str, trial: &str, timeout: Duration) -> Pod {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let labels = format!("textrec.dev/trial={trial}");
    eventually(&format!("a pod of {trial}"), timeout, || async {
        pods.list(&ListParams::default().labels(&labels))
            .await
            .ok()?
            .items
            .into_iter()
            .next()
    })
    .await
}

/// What a kubelet would report when the worker container ends (clusters without kubelets):
/// `phase`, the exit code and termination message, and whether the pod was disrupted.
pub async fn set_pod_outcome(
    client: &Client,
    ns: &str,
    pod: &str,
    phase: &str,
    exit: i32,
    message: &str,
    disrupted: bool,
) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let mut status = json!({"status": {"phase": phase, "containerStatuses": [{"name": "worker", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
        "state": {"terminated": {"exitCode": exit, "message": message}}}]}});
    if disrupted {
        status["status"]["conditions"] = json!([{"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI"}]);
    }
    pods.patch_status(pod, &PatchParams::default(), &Patch::Merge(status))
        .await
        .unwrap();
}

/// The status of TrainingRun `name` in [`NS`] as JSON.
pub async fn run_status(client: &Client, name: &str) -> serde_json::Value {
    let runs: Api<TrainingRun> = Api::namespaced(client.clone(), NS);
    serde_json::to_value(runs.get(name).await.unwrap().status).unwrap()
}

/// Where the trial pods write (`TEXTREC_E2E_STORAGE`; the `textrec-e2e` claim by default).
pub fn storage_url() -> String {
    std::env::var("TEXTREC_E2E_STORAGE").unwrap_or_else(|_| "file:///e2e".into())
}

/// The worker image the cluster runs (`TEXTREC_E2E_WORKER_IMAGE`).
pub fn worker_image() -> String {
    std::env::var("TEXTREC_E2E_WORKER_IMAGE").unwrap_or_else(|_| "textrec-worker:e2e".into())
}

/// The status of TrainingRun `name` in `ns` as JSON (`Null` while it does not exist).
pub async fn status_in(client: &Client, ns: &str, name: &str) -> serde_json::Value {
    let runs: Api<TrainingRun> = Api::namespaced(client.clone(), ns);
    match runs.get_opt(name).await {
        Ok(Some(r)) => serde_json::to_value(r.status).unwrap(),
        _ => serde_json::Value::Null,
    }
}

/// Condition `type_` of a status as JSON (`Null` when absent).
pub fn condition(status: &serde_json::Value, type_: &str) -> serde_json::Value {
    status["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .cloned()
        .unwrap_or_default()
}

/// The trial Jobs of TrainingRun `run` in `ns`.
pub async fn jobs_of(client: &Client, ns: &str, run: &str) -> Vec<Job> {
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
    jobs.list(&ListParams::default().labels(&format!("textrec.dev/run={run}")))
        .await
        .unwrap()
        .items
}

/// The worker container's arguments in a trial Job's pod template.
pub fn job_args(job: &Job) -> Vec<String> {
    let pod = job.spec.as_ref().and_then(|s| s.template.spec.as_ref());
    pod.and_then(|p| p.containers[0].args.clone())
        .unwrap_or_default()
}

/// Reasons of the events recorded on TrainingRun `run` in `ns`.
pub async fn event_reasons(client: &Client, ns: &str, run: &str) -> Vec<String> {
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), ns);
    events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(run))
        .filter_map(|e| e.reason)
        .collect()
}

/// A fresh TrainingRun `name` in `ns` (an earlier one of that name is deleted first).
pub async fn create_run(client: &Client, ns: &str, name: &str, spec: serde_json::Value) {
    let runs: Api<TrainingRun> = Api::namespaced(client.clone(), ns);
    if runs.get_opt(name).await.unwrap().is_some() {
        let _ = runs.delete(name, &Default::default()).await;
        eventually("the earlier run gone", Duration::from_secs(60), || async {
            runs.get_opt(name).await.unwrap().is_none().then_some(())
        })
        .await;
    }
    let run: TrainingRun = serde_json::from_value(json!({
        "apiVersion": "textrec.dev/v1alpha1", "kind": "TrainingRun",
        "metadata": {"name": name}, "spec": spec
    }))
    .unwrap();
    runs.create(&PostParams::default(), &run)
        .await
        .expect("TrainingRun accepted");
}

/// The status of run `run` in `ns` once its first trial is `Pending` for `reason`.
pub async fn trial_pending_as(
    client: &Client,
    ns: &str,
    run: &str,
    reason: &str,
    timeout: Duration,
) -> serde_json::Value {
    eventually(&format!("trial Pending as {reason}"), timeout, || async {
        let s = status_in(client, ns, run).await;
        let t = &s["trials"][0];
        (t["phase"] == "Pending" && t["reason"] == reason).then_some(s)
    })
    .await
}

/// The termination message of a trial that trained its 20 steps and wrote its model to
/// `model_url` (what the worker's pod would end with).
pub fn finished_trial_report(model_url: &str) -> serde_json::Value {
    json!({"phase": "Succeeded", "step": 20, "max_steps": 20, "best": {"step": 20, "cer": 0.5, "wer": 0.9, "decoding": "ctc-lm", "reading_width": 1.1},
        "model": {"url": model_url, "sha256": "a".repeat(64), "cer": 0.5}, "updated": "2030-01-01T00:00:00Z"})
}

/// Simulate a kubelet's waiting reason (clusters without kubelets).
pub async fn set_pod_waiting(client: &Client, ns: &str, pod: &str, reason: &str, message: &str) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let status = json!({"status": {"phase": "Pending", "containerStatuses": [{"name": "worker", "image": "x", "imageID": "",
        "ready": false, "restartCount": 0, "state": {"waiting": {"reason": reason, "message": message}}}]}});
    pods.patch_status(pod, &PatchParams::default(), &Patch::Merge(status))
        .await
        .unwrap();
}

/// Version of the built-in model (sha256 of its manifest), as a ModelDeployment names it.
pub fn builtin_sha() -> String {
    let m = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../models/small/manifest.json"
    ))
    .unwrap();
    textrec_contract::manifest::sha256_hex(&m)
}
