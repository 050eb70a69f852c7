//! End-to-end suite against a real cluster. Runs only when `TEXTREC_E2E_KUBECONFIG` names a
//! kubeconfig; otherwise every test prints why it skipped and passes. See operator/README.md
//! ("End-to-end tests") for kind/k3d instructions.
//!
//! Environment:
//! - `TEXTREC_E2E_KUBECONFIG` — kubeconfig of a disposable cluster (required).
//! - `TEXTREC_E2E_WORKER_IMAGE` — worker image the cluster can run (default `textrec-worker:e2e`,
//!   e.g. loaded with `kind load docker-image`).
//! - `TEXTREC_E2E_STORAGE` — storage URL the pods can write (default `file:///e2e` on the PVC
//!   `textrec-e2e`, which the test creates).
//! - `TEXTREC_E2E_NO_KUBELET=1` — the cluster has no kubelets (kwok, envtest-style API server):
//!   pod outcomes are simulated by patching pod status instead of running the worker.
//!
//! Tests that start an operator of their own use a namespace of their own (`textrec-e2e`,
//! `textrec-e2e-refs`, `textrec-e2e-image`, `textrec-e2e-gpus`, `textrec-e2e-submit`), since
//! they run concurrently. The operator runs in the test process with the kubeconfig's
//! credentials, so the chart's RBAC is not what is exercised here (it may read Secrets, for
//! instance); `submit` runs as the built binary with the same kubeconfig.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{EvictParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config, CustomResourceExt};
use serde_json::json;
use textrec_operator::controller::{KubeEvents, Shared};
use textrec_operator::crd::{ModelDeployment, TrainingRun};
use textrec_operator::manager::{run_controllers, RunOptions};
use textrec_operator::metrics::Metrics;

const NS: &str = "textrec-e2e";

async fn client() -> Option<Client> {
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

async fn eventually<F, Fut, T>(what: &str, timeout: Duration, mut f: F) -> T
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

async fn setup(client: &Client) {
    setup_with_storage_claim(client, NS).await;
}

/// [`setup_namespace`] plus the `textrec-e2e` storage claim the trials mount.
async fn setup_with_storage_claim(client: &Client, ns: &str) {
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
async fn setup_namespace(client: &Client, ns: &str) {
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

fn start_operator(client: &Client) -> tokio::sync::watch::Sender<bool> {
    start_operator_in(client, NS)
}

/// An operator watching only `ns`, in this process, with the test's credentials.
fn start_operator_in(client: &Client, ns: &str) -> tokio::sync::watch::Sender<bool> {
    start_operator_with(client, ns, true)
}

/// [`start_operator_in`], reading trial progress from storage unless `no_progress`.
fn start_operator_with(
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

fn no_kubelet() -> bool {
    std::env::var_os("TEXTREC_E2E_NO_KUBELET").is_some()
}

async fn pods_of(client: &Client, trial: &str) -> Vec<Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    pods.list(&ListParams::default().labels(&format!("textrec.dev/trial={trial}")))
        .await
        .unwrap()
        .items
}

async fn set_pod_outcome(
    client: &Client,
    pod: &str,
    phase: &str,
    exit: i32,
    message: &str,
    disrupted: bool,
) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let mut status = json!({"status": {"phase": phase, "containerStatuses": [{"name": "worker", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
        "state": {"terminated": {"exitCode": exit, "message": message}}}]}});
    if disrupted {
        status["status"]["conditions"] = json!([{"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI"}]);
    }
    pods.patch_status(pod, &PatchParams::default(), &Patch::Merge(status))
        .await
        .unwrap();
}

async fn run_status(client: &Client, name: &str) -> serde_json::Value {
    let runs: Api<TrainingRun> = Api::namespaced(client.clone(), NS);
    serde_json::to_value(runs.get(name).await.unwrap().status).unwrap()
}

#[tokio::test]
async fn training_run_grid_disruption_failure_completion_then_deploy_promote_rollback() {
    let Some(client) = client().await else { return };
    setup(&client).await;
    let stop = start_operator(&client);
    let image =
        std::env::var("TEXTREC_E2E_WORKER_IMAGE").unwrap_or_else(|_| "textrec-worker:e2e".into());
    let storage = std::env::var("TEXTREC_E2E_STORAGE").unwrap_or_else(|_| "file:///e2e".into());
    let runs: Api<TrainingRun> = Api::namespaced(client.clone(), NS);
    let run: TrainingRun = serde_json::from_value(json!({
        "apiVersion": "textrec.dev/v1alpha1", "kind": "TrainingRun",
        "metadata": {"name": "grid", "labels": {"team": "e2e"}},
        "spec": {
            "image": image, "imagePullPolicy": "IfNotPresent",
            "storage": {"url": storage, "pvc": {"claimName": "textrec-e2e"}},
            "model": {"preset": "tiny"},
            "hyperparameters": {"optimizer": {"lr": [0.001, 0.002]}, "batch_size": [4, 8]},
            "search": {"maxTrials": 4, "parallelism": 2},
            "training": {"maxSteps": 20, "evalInterval": 10, "checkpointEverySteps": 5},
            "terminationGracePeriodSeconds": 30,
            "maxFailedTrials": 2
        }
    }))
    .unwrap();
    let _ = runs.delete("grid", &Default::default()).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    runs.create(&PostParams::default(), &run)
        .await
        .expect("TrainingRun accepted");

    // The API server rejects what the operator cannot run (CEL): parallelism > maxTrials.
    let mut bad = run.clone();
    bad.metadata.name = Some("bad".into());
    bad.spec.search.parallelism = 8;
    let err = runs
        .create(&PostParams::default(), &bad)
        .await
        .expect_err("CEL rejects parallelism > maxTrials");
    assert!(err.to_string().contains("parallelism"), "{err}");

    let jobs: Api<Job> = Api::namespaced(client.clone(), NS);
    let list = eventually("two trial Jobs", Duration::from_secs(60), || async {
        let l = jobs
            .list(&ListParams::default().labels("textrec.dev/run=grid"))
            .await
            .ok()?;
        (l.items.len() == 2).then_some(l.items)
    })
    .await;
    for j in &list {
        let spec = j.spec.as_ref().unwrap();
        assert_eq!(spec.pod_failure_policy.as_ref().unwrap().rules.len(), 3);
        assert_eq!(
            j.metadata.owner_references.as_ref().unwrap()[0].kind,
            "TrainingRun"
        );
    }

    // Fine-tuning: `model.initFrom` reaches every trial's worker; an empty one is refused.
    let mut tuned = run.clone();
    tuned.metadata.name = Some("tuned".into());
    tuned.spec.model.init_from = Some(String::new());
    let err = runs
        .create(&PostParams::default(), &tuned)
        .await
        .expect_err("schema rejects an empty initFrom");
    assert!(err.to_string().contains("initFrom"), "{err}");
    tuned.spec.model.init_from = Some("builtin:small".into());
    tuned.spec.search.max_trials = 1;
    tuned.spec.search.parallelism = 1;
    runs.create(&PostParams::default(), &tuned)
        .await
        .expect("TrainingRun with initFrom accepted");
    let tuned_jobs = eventually("the Job of tuned", Duration::from_secs(60), || async {
        let l = jobs
            .list(&ListParams::default().labels("textrec.dev/run=tuned"))
            .await
            .ok()?;
        (!l.items.is_empty()).then_some(l.items)
    })
    .await;
    let args = job_args(&tuned_jobs[0]);
    assert!(
        args.iter()
            .any(|a| a == r#"model.init_from="builtin:small""#),
        "{args:?}"
    );
    runs.delete("tuned", &Default::default()).await.unwrap();

    // Disruption of t0: the eviction API on a kubelet cluster, a patched status otherwise.
    let pod = eventually("a pod of grid-t0", Duration::from_secs(120), || async {
        pods_of(&client, "grid-t0").await.into_iter().find(|p| {
            p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running") || no_kubelet()
        })
    })
    .await;
    let pod_name = pod.metadata.name.clone().unwrap();
    if no_kubelet() {
        set_pod_outcome(&client, &pod_name, "Failed", 137, "", true).await;
    } else {
        let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
        pods.evict(&pod_name, &EvictParams::default())
            .await
            .expect("eviction");
    }
    eventually(
        "the preemption in status",
        Duration::from_secs(120),
        || async {
            let s = run_status(&client, "grid").await;
            (s["trials"][0]["preemptions"].as_i64() >= Some(1)).then_some(())
        },
    )
    .await;
    let j0 = jobs.get("grid-t0").await.unwrap();
    assert!(
        !j0.status
            .unwrap()
            .conditions
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Failed" && c.status == "True"),
        "a disruption must not fail the trial"
    );

    if no_kubelet() {
        // t1 hits a configuration error; the replacement pod of t0 finishes.
        let p1 = eventually("a pod of grid-t1", Duration::from_secs(60), || async {
            pods_of(&client, "grid-t1").await.into_iter().next()
        })
        .await;
        set_pod_outcome(
            &client,
            p1.metadata.name.as_deref().unwrap(),
            "Failed",
            78,
            "config field `x`: bad",
            false,
        )
        .await;
        let p0 = eventually(
            "a replacement pod of grid-t0",
            Duration::from_secs(60),
            || async {
                pods_of(&client, "grid-t0")
                    .await
                    .into_iter()
                    .find(|p| p.metadata.name.as_deref() != Some(pod_name.as_str()))
            },
        )
        .await;
        let done = json!({"phase": "Succeeded", "step": 20, "max_steps": 20, "best": {"step": 20, "cer": 0.5, "wer": 0.9, "decoding": "ctc-lm", "reading_width": 1.1},
            "model": {"url": format!("{storage}/grid/grid-t0/model/"), "sha256": "a".repeat(64), "cer": 0.5}, "updated": "2030-01-01T00:00:00Z"});
        set_pod_outcome(
            &client,
            p0.metadata.name.as_deref().unwrap(),
            "Succeeded",
            0,
            &done.to_string(),
            false,
        )
        .await;
        eventually(
            "t1 failed with a configuration error",
            Duration::from_secs(120),
            || async {
                let s = run_status(&client, "grid").await;
                (s["trials"][1]["phase"] == "Failed").then_some(())
            },
        )
        .await;
    }
    let status = eventually("a best model", Duration::from_secs(600), || async {
        let s = run_status(&client, "grid").await;
        s["bestModel"].is_object().then_some(s)
    })
    .await;
    let best_url = status["bestModel"]["url"].as_str().unwrap().to_string();
    // The best trial's best is its model as served: read with the model's decoding, the same
    // CER the run's best model carries.
    let best_trial = status["bestModel"]["trial"].as_str().unwrap();
    let t = status["trials"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == best_trial)
        .unwrap();
    assert!(t["bestDecoding"].is_string(), "{t}");
    // Trials compare reading widths as they end (by default ×1, ×1.1 and ×1.25).
    assert!(t["bestReadingWidth"].is_number(), "{t}");
    assert_eq!(t["bestMetric"], status["bestModel"]["metric"], "{status}");
    if no_kubelet() {
        assert_eq!(t["bestDecoding"], "ctc-lm", "{t}");
        assert_eq!(t["bestReadingWidth"], 1.1, "{t}");
    }

    // Events were recorded on the run.
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), NS);
    let evs = events.list(&ListParams::default()).await.unwrap().items;
    let reasons: Vec<String> = evs.iter().filter_map(|e| e.reason.clone()).collect();
    for want in ["TrialStarted", "TrialPreempted"] {
        assert!(
            reasons.iter().any(|r| r == want),
            "{want} not among {reasons:?}"
        );
    }

    // ModelDeployment from the run: Deployment + Service, then rollback.
    let mds: Api<ModelDeployment> = Api::namespaced(client.clone(), NS);
    let md: ModelDeployment = serde_json::from_value(json!({
        "apiVersion": "textrec.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "reader"},
        "spec": {"model": {"fromTrainingRun": "grid"}, "image": std::env::var("TEXTREC_E2E_WORKER_IMAGE").unwrap_or_else(|_| "textrec-worker:e2e".into()),
                 "promotion": {"policy": "Automatic", "selector": {"matchLabels": {"team": "e2e"}}},
                 "credentials": {"pvc": {"claimName": "textrec-e2e", "mountPath": "/e2e"}},
                 "flagging": {"storage": "file:///e2e/flags/reader/", "maxSamples": 100},
                 "reading": {"widths": [1, 1.25], "rereadBelow": 0.8}}
    }))
    .unwrap();
    let _ = mds.delete("reader", &Default::default()).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The API server refuses a width factor given twice (CEL) and one out of range.
    for (widths, says) in [(json!([1, 1.25, 1]), "repeat"), (json!([1, 9]), "widths")] {
        let mut bad = serde_json::to_value(&md).unwrap();
        bad["metadata"]["name"] = json!("bad-reading");
        bad["spec"]["reading"]["widths"] = widths;
        let bad: ModelDeployment = serde_json::from_value(bad).unwrap();
        let err = mds
            .create(&PostParams::default(), &bad)
            .await
            .expect_err("spec.reading is validated by the API server");
        assert!(err.to_string().contains(says), "{err}");
    }
    mds.create(&PostParams::default(), &md).await.unwrap();
    let deps: Api<Deployment> = Api::namespaced(client.clone(), NS);
    let dep = eventually(
        "the serving Deployment",
        Duration::from_secs(60),
        || async { deps.get_opt("reader").await.ok().flatten() },
    )
    .await;
    let server = dep.spec.unwrap().template.spec.unwrap().containers[0].clone();
    // Readiness asks the gRPC port; liveness the HTTP port, so that a pod whose capped gRPC
    // connections are all taken is taken out of the Service, not restarted.
    let ready = server.readiness_probe.as_ref().unwrap();
    assert!(ready.grpc.is_some(), "{ready:?}");
    let live = server.liveness_probe.as_ref().unwrap();
    assert!(live.grpc.is_none(), "{live:?}");
    assert_eq!(
        live.http_get.as_ref().and_then(|g| g.path.as_deref()),
        Some("/healthz")
    );
    let args = server.args.clone().unwrap();
    assert!(args.contains(&best_url), "{args:?}");
    let at = args.iter().position(|a| a == "--widths").expect("--widths");
    assert_eq!(args[at + 1..at + 4], ["1,1.25", "--reread-below", "0.8"]);
    // Flags go to the PVC, which is then mounted writable.
    let at = args.iter().position(|a| a == "--flags").expect("--flags");
    assert_eq!(args[at + 1], "file:///e2e/flags/reader/");
    let at = args
        .iter()
        .position(|a| a == "--flags-max-samples")
        .unwrap();
    assert_eq!(args[at + 1], "100");
    let pod_spec = deps
        .get("reader")
        .await
        .unwrap()
        .spec
        .unwrap()
        .template
        .spec
        .unwrap();
    let storage_mount = pod_spec.containers[0]
        .volume_mounts
        .clone()
        .unwrap()
        .into_iter()
        .find(|m| m.name == "storage")
        .unwrap();
    assert_eq!(storage_mount.read_only, Some(false));
    let svcs: Api<Service> = Api::namespaced(client.clone(), NS);
    assert!(svcs.get_opt("reader").await.unwrap().is_some());

    // A second deploy by changing spec.model to an explicit URL, then roll back to revision 1.
    let other = "b".repeat(64);
    mds.patch("reader", &PatchParams::default(), &Patch::Merge(json!({"spec": {"model": {"fromTrainingRun": null, "url": format!("{storage}/other/model/"), "sha256": other}}})))
        .await
        .unwrap();
    eventually("revision 2", Duration::from_secs(60), || async {
        let s = mds.get("reader").await.ok()?.status?;
        (s.current_revision == Some(2)).then_some(())
    })
    .await;
    mds.patch(
        "reader",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"rollbackTo": 1}})),
    )
    .await
    .unwrap();
    let s = eventually("the rollback", Duration::from_secs(60), || async {
        let s = mds.get("reader").await.ok()?.status?;
        (s.current_revision == Some(3)).then_some(s)
    })
    .await;
    assert_eq!(s.model.unwrap().url, best_url);

    let _ = stop.send(true);
    let _ = runs.delete("grid", &Default::default()).await;
    let _ = mds.delete("reader", &Default::default()).await;
}

// ---- Truthful status: trials whose pods cannot start, missing referenced objects ----

fn worker_image() -> String {
    std::env::var("TEXTREC_E2E_WORKER_IMAGE").unwrap_or_else(|_| "textrec-worker:e2e".into())
}

async fn status_in(client: &Client, ns: &str, name: &str) -> serde_json::Value {
    let runs: Api<TrainingRun> = Api::namespaced(client.clone(), ns);
    match runs.get_opt(name).await {
        Ok(Some(r)) => serde_json::to_value(r.status).unwrap(),
        _ => serde_json::Value::Null,
    }
}

/// Condition `type_` of a status as JSON (`Null` when absent).
fn condition(status: &serde_json::Value, type_: &str) -> serde_json::Value {
    status["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .cloned()
        .unwrap_or_default()
}

async fn jobs_of(client: &Client, ns: &str, run: &str) -> Vec<Job> {
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
    jobs.list(&ListParams::default().labels(&format!("textrec.dev/run={run}")))
        .await
        .unwrap()
        .items
}

/// Reasons of the events recorded on TrainingRun `run` in `ns`.
/// The worker container's arguments in a trial Job's pod template.
fn job_args(job: &Job) -> Vec<String> {
    let pod = job.spec.as_ref().and_then(|s| s.template.spec.as_ref());
    pod.and_then(|p| p.containers[0].args.clone())
        .unwrap_or_default()
}

async fn event_reasons(client: &Client, ns: &str, run: &str) -> Vec<String> {
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
async fn create_run(client: &Client, ns: &str, name: &str, spec: serde_json::Value) {
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

/// Simulate a kubelet's waiting reason (clusters without kubelets).
async fn set_pod_waiting(client: &Client, ns: &str, pod: &str, reason: &str, message: &str) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let status = json!({"status": {"phase": "Pending", "containerStatuses": [{"name": "worker", "image": "x", "imageID": "",
        "ready": false, "restartCount": 0, "state": {"waiting": {"reason": reason, "message": message}}}]}});
    pods.patch_status(pod, &PatchParams::default(), &Patch::Merge(status))
        .await
        .unwrap();
}

/// A run whose storage claim and credentials Secret do not exist: `Valid=False` and no Job; each
/// object that appears clears its part, and once both exist the trial's Job is created.
#[tokio::test]
async fn missing_storage_claim_and_secret_are_reported_before_any_job() {
    let Some(client) = client().await else { return };
    let ns = "textrec-e2e-refs";
    setup_namespace(&client, ns).await;
    let pvcs: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> =
        Api::namespaced(client.clone(), ns);
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), ns);
    // Left over from an earlier run of this test: both must be missing at the start.
    let _ = pvcs.delete("textrec-e2e-later", &Default::default()).await;
    let _ = secrets
        .delete("textrec-e2e-later", &Default::default())
        .await;
    eventually(
        "no claim textrec-e2e-later",
        Duration::from_secs(120),
        || async {
            pvcs.get_opt("textrec-e2e-later")
                .await
                .unwrap()
                .is_none()
                .then_some(())
        },
    )
    .await;
    let stop = start_operator_in(&client, ns);
    create_run(
        &client,
        ns,
        "noclaim",
        json!({
            "image": worker_image(), "imagePullPolicy": "IfNotPresent",
            "storage": {"url": "file:///e2e", "pvc": {"claimName": "textrec-e2e-later"},
                        "secretRef": "textrec-e2e-later"},
            "model": {"preset": "tiny"},
            "search": {"maxTrials": 1, "parallelism": 1},
            "training": {"maxSteps": 20, "evalInterval": 10}
        }),
    )
    .await;

    let s = eventually("Valid=False", Duration::from_secs(60), || async {
        let s = status_in(&client, ns, "noclaim").await;
        (condition(&s, "Valid")["status"] == "False").then_some(s)
    })
    .await;
    let valid = condition(&s, "Valid");
    assert_eq!(valid["reason"], "PersistentVolumeClaimNotFound", "{valid}");
    let msg = valid["message"].as_str().unwrap();
    assert!(
        msg.contains("PersistentVolumeClaim \"textrec-e2e-later\" not found")
            && msg.contains("Secret \"textrec-e2e-later\" not found"),
        "{msg}"
    );
    assert_eq!(s["phase"], "Pending");
    assert_eq!(s["reason"], "PersistentVolumeClaimNotFound");
    // Several reconciles later (requeued every progress interval), still no Job.
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert!(jobs_of(&client, ns, "noclaim").await.is_empty());
    let reasons = event_reasons(&client, ns, "noclaim").await;
    assert!(
        reasons.iter().any(|r| r == "ReferenceNotFound"),
        "{reasons:?}"
    );

    // The claim appears: only the Secret is missing now.
    let ssa = PatchParams::apply("textrec-e2e").force();
    pvcs.patch("textrec-e2e-later", &ssa, &Patch::Apply(json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "textrec-e2e-later"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}})))
        .await
        .unwrap();
    eventually("SecretNotFound alone", Duration::from_secs(60), || async {
        let s = status_in(&client, ns, "noclaim").await;
        (condition(&s, "Valid")["reason"] == "SecretNotFound").then_some(())
    })
    .await;
    assert!(jobs_of(&client, ns, "noclaim").await.is_empty());

    // The Secret appears: the trial starts.
    secrets
        .patch(
            "textrec-e2e-later",
            &ssa,
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "textrec-e2e-later"}, "stringData": {"E2E": "1"}})),
        )
        .await
        .unwrap();
    eventually("the trial's Job", Duration::from_secs(60), || async {
        (jobs_of(&client, ns, "noclaim").await.len() == 1).then_some(())
    })
    .await;
    let s = status_in(&client, ns, "noclaim").await;
    assert_eq!(condition(&s, "Valid")["status"], "True", "{s}");

    let _ = stop.send(true);
    let runs: Api<TrainingRun> = Api::namespaced(client.clone(), ns);
    let _ = runs.delete("noclaim", &Default::default()).await;
    let _ = secrets
        .delete("textrec-e2e-later", &Default::default())
        .await;
    let _ = pvcs.delete("textrec-e2e-later", &Default::default()).await;
}

/// A run whose image cannot be pulled: its trial is `Pending` with the kubelet's reason, the run
/// is not `Running`, the trial keeps its slot (no second Job), and a Warning event says why.
#[tokio::test]
async fn unpullable_image_leaves_the_trial_pending_with_the_kubelets_reason() {
    let Some(client) = client().await else { return };
    let ns = "textrec-e2e-image";
    setup_namespace(&client, ns).await;
    let stop = start_operator_in(&client, ns);
    // `.invalid` never resolves (RFC 2606): every pull fails, then backs off.
    let image = "registry.invalid/textrec/worker:does-not-exist";
    create_run(
        &client,
        ns,
        "nopull",
        json!({
            "image": image, "imagePullPolicy": "Always",
            "storage": {"url": "s3://textrec-e2e/nopull"},
            "model": {"preset": "tiny"},
            "hyperparameters": {"optimizer": {"lr": [0.001, 0.002]}},
            "search": {"maxTrials": 2, "parallelism": 1},
            "training": {"maxSteps": 20}
        }),
    )
    .await;
    if no_kubelet() {
        let pod = eventually("a pod of nopull-t0", Duration::from_secs(60), || async {
            let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
            pods.list(&ListParams::default().labels("textrec.dev/trial=nopull-t0"))
                .await
                .ok()?
                .items
                .into_iter()
                .next()
        })
        .await;
        set_pod_waiting(
            &client,
            ns,
            pod.metadata.name.as_deref().unwrap(),
            "ImagePullBackOff",
            &format!("Back-off pulling image \"{image}\""),
        )
        .await;
    }
    // The kubelet alternates ErrImagePull (each attempt) and ImagePullBackOff (between them).
    let s = eventually(
        "trial Pending with ImagePullBackOff",
        Duration::from_secs(300),
        || async {
            let s = status_in(&client, ns, "nopull").await;
            let t = &s["trials"][0];
            (t["phase"] == "Pending" && t["reason"] == "ImagePullBackOff").then_some(s)
        },
    )
    .await;
    let t0 = &s["trials"][0];
    assert!(
        t0["message"].as_str().unwrap_or_default().contains(image),
        "{t0}"
    );
    assert_eq!(s["phase"], "Pending", "{s}");
    assert_eq!(s["counts"]["running"], 0, "{s}");
    assert_eq!(s["reason"], "ImagePullBackOff");
    let running = condition(&s, "Running");
    assert_eq!(running["status"], "False", "{running}");
    assert!(
        running["message"]
            .as_str()
            .unwrap()
            .contains("1 cannot start: ImagePullBackOff"),
        "{running}"
    );
    assert_eq!(
        jobs_of(&client, ns, "nopull").await.len(),
        1,
        "the blocked trial keeps its slot"
    );
    let reasons = eventually(
        "a TrialCannotStart event",
        Duration::from_secs(30),
        || async {
            let r = event_reasons(&client, ns, "nopull").await;
            r.iter().any(|r| r == "TrialCannotStart").then_some(r)
        },
    )
    .await;
    assert!(reasons.iter().any(|r| r == "TrialStarted"), "{reasons:?}");

    let _ = stop.send(true);
    let runs: Api<TrainingRun> = Api::namespaced(client.clone(), ns);
    let _ = runs.delete("nopull", &Default::default()).await;
}

/// A run's `volumes` and `volumeMounts` (a ConfigMap of flagged lines and an emptyDir) reach the
/// trial pod beside the operator's own; a hostPath volume is refused (`Valid=False`, naming the
/// field) by an operator that does not allow them, and a mixed `data.train` reaches the worker.
#[tokio::test]
async fn volumes_and_mounts_reach_the_trial_pod_and_host_paths_are_refused() {
    let Some(client) = client().await else { return };
    let ns = "textrec-e2e-volumes";
    setup_namespace(&client, ns).await;
    let stop = start_operator_in(&client, ns);
    let maps: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(client.clone(), ns);
    let _ = maps.delete("flags", &Default::default()).await;
    maps.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "flags"},
            "data": {"a.gt.txt": "hello\n"}
        }))
        .unwrap(),
    )
    .await
    .unwrap();
    let train = json!([
        {"kind": "synthetic", "weight": 0.7},
        {"kind": "tesstrain", "path": "/data/flags", "weight": 0.3, "augment": true}
    ]);
    create_run(
        &client,
        ns,
        "vols",
        json!({
            "image": worker_image(),
            "storage": {"url": "s3://textrec-e2e/vols"},
            "model": {"preset": "tiny"},
            "training": {"maxSteps": 20},
            "data": {"sources": train},
            "volumes": [{"name": "flags", "configMap": {"name": "flags"}},
                        {"name": "scratch", "emptyDir": {}}],
            "volumeMounts": [{"name": "flags", "mountPath": "/data/flags", "readOnly": true},
                             {"name": "scratch", "mountPath": "/scratch"}]
        }),
    )
    .await;
    let pod = eventually("a pod of vols-t0", Duration::from_secs(60), || async {
        let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
        pods.list(&ListParams::default().labels("textrec.dev/trial=vols-t0"))
            .await
            .ok()?
            .items
            .into_iter()
            .next()
    })
    .await;
    let spec = pod.spec.unwrap();
    let volumes: Vec<&str> = spec
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .map(|v| v.name.as_str())
        .collect();
    for name in ["tmp", "dshm", "flags", "scratch"] {
        assert!(volumes.contains(&name), "{volumes:?}");
    }
    let flags = spec
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == "flags")
        .unwrap();
    assert_eq!(flags.config_map.as_ref().unwrap().name, "flags");
    let worker = &spec.containers[0];
    let mounts = worker.volume_mounts.as_ref().unwrap();
    let m = mounts.iter().find(|m| m.name == "flags").unwrap();
    assert_eq!(
        (m.mount_path.as_str(), m.read_only),
        ("/data/flags", Some(true))
    );
    assert!(mounts
        .iter()
        .any(|m| m.name == "scratch" && m.mount_path == "/scratch"));
    let args = worker.args.as_ref().unwrap().join(" ");
    assert!(
        args.contains("data.train=[") && args.contains("/data/flags"),
        "{args}"
    );

    create_run(
        &client,
        ns,
        "hostpath",
        json!({
            "image": worker_image(),
            "storage": {"url": "s3://textrec-e2e/hostpath"},
            "volumes": [{"name": "disk", "hostPath": {"path": "/srv/lines"}}],
            "volumeMounts": [{"name": "disk", "mountPath": "/srv/lines"}]
        }),
    )
    .await;
    let valid = eventually("hostpath Valid=False", Duration::from_secs(60), || async {
        let c = condition(&status_in(&client, ns, "hostpath").await, "Valid");
        (c["status"] == "False").then_some(c)
    })
    .await;
    assert!(
        valid["message"]
            .as_str()
            .unwrap()
            .contains("spec.volumes[0].hostPath"),
        "{valid}"
    );
    assert!(jobs_of(&client, ns, "hostpath").await.is_empty());

    let _ = stop.send(true);
    let runs: Api<TrainingRun> = Api::namespaced(client.clone(), ns);
    let _ = runs.delete("vols", &Default::default()).await;
    let _ = runs.delete("hostpath", &Default::default()).await;
    let _ = maps.delete("flags", &Default::default()).await;
}

/// More GPUs than any node has: the API server refuses more than the schema's 16; 16 is
/// accepted and the trial is `Pending`, unschedulable, with the scheduler's message. (A cluster
/// with a 16-GPU node would schedule it: this suite runs on ordinary test clusters.)
#[tokio::test]
async fn more_gpus_than_any_node_has_leave_the_trial_pending_with_the_schedulers_message() {
    let Some(client) = client().await else { return };
    let ns = "textrec-e2e-gpus";
    setup_namespace(&client, ns).await;
    let stop = start_operator_in(&client, ns);
    let spec = |gpus: i32| {
        json!({
            "image": worker_image(), "imagePullPolicy": "IfNotPresent",
            "storage": {"url": "s3://textrec-e2e/gpus"},
            "model": {"preset": "tiny"},
            "resources": {"gpus": gpus},
            "search": {"maxTrials": 1, "parallelism": 1},
            "training": {"maxSteps": 20}
        })
    };
    let runs: Api<TrainingRun> = Api::namespaced(client.clone(), ns);
    let too_many: TrainingRun = serde_json::from_value(json!({
        "apiVersion": "textrec.dev/v1alpha1", "kind": "TrainingRun",
        "metadata": {"name": "gpus64"}, "spec": spec(64)
    }))
    .unwrap();
    let err = runs
        .create(&PostParams::default(), &too_many)
        .await
        .expect_err("the schema caps resources.gpus at 16");
    assert!(err.to_string().contains("gpus"), "{err}");

    create_run(&client, ns, "gpus", spec(16)).await;
    if no_kubelet() {
        // Without a scheduler nothing marks the pod: do what kube-scheduler would.
        let pod = eventually("a pod of gpus-t0", Duration::from_secs(60), || async {
            let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
            pods.list(&ListParams::default().labels("textrec.dev/trial=gpus-t0"))
                .await
                .ok()?
                .items
                .into_iter()
                .next()
        })
        .await;
        let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
        pods.patch_status(
            pod.metadata.name.as_deref().unwrap(),
            &PatchParams::default(),
            &Patch::Merge(
                json!({"status": {"phase": "Pending", "conditions": [{"type": "PodScheduled",
                "status": "False", "reason": "Unschedulable",
                "message": "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."}]}}),
            ),
        )
        .await
        .unwrap();
    }
    let s = eventually(
        "trial Pending as Unschedulable",
        Duration::from_secs(120),
        || async {
            let s = status_in(&client, ns, "gpus").await;
            let t = &s["trials"][0];
            (t["phase"] == "Pending" && t["reason"] == "Unschedulable").then_some(s)
        },
    )
    .await;
    let message = s["trials"][0]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("nvidia.com/gpu") && message.contains("nodes are available"),
        "{message}"
    );
    assert_eq!(s["phase"], "Pending", "{s}");
    assert_eq!(s["reason"], "Unschedulable");
    assert_eq!(condition(&s, "Running")["reason"], "Unschedulable");
    assert!(s["message"]
        .as_str()
        .unwrap_or_default()
        .contains("nvidia.com/gpu"));

    let _ = stop.send(true);
    let _ = runs.delete("gpus", &Default::default()).await;
}

/// A ResourceQuota that allows no pods: the Job controller cannot create the trial's pod, so
/// there is no pod to read. The trial is Pending with the API server's refusal, read from the
/// Job's `FailedCreate` event, instead of "starting" forever.
#[tokio::test]
async fn a_quota_that_refuses_the_pod_leaves_the_trial_pending_with_the_refusal() {
    let Some(client) = client().await else { return };
    let ns = "textrec-e2e-quota";
    setup_namespace(&client, ns).await;
    let quotas: Api<k8s_openapi::api::core::v1::ResourceQuota> =
        Api::namespaced(client.clone(), ns);
    let quota: k8s_openapi::api::core::v1::ResourceQuota = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ResourceQuota",
        "metadata": {"name": "no-pods"}, "spec": {"hard": {"pods": "0"}}
    }))
    .unwrap();
    let _ = quotas
        .patch(
            "no-pods",
            &PatchParams::apply("textrec-e2e").force(),
            &Patch::Apply(&quota),
        )
        .await
        .unwrap();
    let stop = start_operator_in(&client, ns);
    create_run(
        &client,
        ns,
        "quota",
        json!({
            "image": worker_image(), "imagePullPolicy": "IfNotPresent",
            "storage": {"url": "s3://textrec-e2e/quota"},
            "model": {"preset": "tiny"},
            "search": {"maxTrials": 1, "parallelism": 1},
            "training": {"maxSteps": 20}
        }),
    )
    .await;
    let s = eventually(
        "trial Pending as FailedCreate",
        Duration::from_secs(120),
        || async {
            let s = status_in(&client, ns, "quota").await;
            let t = &s["trials"][0];
            (t["phase"] == "Pending" && t["reason"] == "FailedCreate").then_some(s)
        },
    )
    .await;
    let message = s["trials"][0]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("forbidden") && message.contains("quota"),
        "{message}"
    );
    assert_eq!(s["reason"], "FailedCreate", "{s}");
    assert!(event_reasons(&client, ns, "quota")
        .await
        .contains(&"TrialCannotStart".to_string()));

    // (The Job controller retries creation with an exponential backoff of up to minutes, so
    // the way back once the quota goes is covered by the fake-API test instead.)
    let _ = stop.send(true);
    let _ = quotas.delete("no-pods", &Default::default()).await;
    let runs: Api<TrainingRun> = Api::namespaced(client.clone(), ns);
    let _ = runs.delete("quota", &Default::default()).await;
}

/// `textrec-operator submit --wait` as a CI job runs it: the binary creates a one-trial run with
/// the kubeconfig's credentials, follows it to `Succeeded`, checks a requirement and exits 0 with
/// the best model in its JSON report.
#[tokio::test]
async fn submit_waits_for_a_tiny_run_and_exits_zero() {
    let Some(client) = client().await else { return };
    let ns = "textrec-e2e-submit";
    setup_with_storage_claim(&client, ns).await;
    let stop = start_operator_in(&client, ns);
    let storage = std::env::var("TEXTREC_E2E_STORAGE").unwrap_or_else(|_| "file:///e2e".into());
    let runs: Api<TrainingRun> = Api::namespaced(client.clone(), ns);
    if runs.get_opt("submitted").await.unwrap().is_some() {
        let _ = runs.delete("submitted", &Default::default()).await;
        eventually("the earlier run gone", Duration::from_secs(60), || async {
            runs.get_opt("submitted")
                .await
                .unwrap()
                .is_none()
                .then_some(())
        })
        .await;
    }
    // JSON is YAML: the manifest file `submit` reads.
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("run.yaml");
    let run = json!({
        "apiVersion": "textrec.dev/v1alpha1", "kind": "TrainingRun",
        "metadata": {"name": "submitted"},
        "spec": {
            "image": worker_image(), "imagePullPolicy": "IfNotPresent",
            "storage": {"url": storage, "pvc": {"claimName": "textrec-e2e"}},
            "model": {"preset": "tiny"},
            "search": {"maxTrials": 1, "parallelism": 1},
            "training": {"maxSteps": 20, "evalInterval": 10, "checkpointEverySteps": 10}
        }
    });
    std::fs::write(&manifest, run.to_string()).unwrap();
    let kubeconfig = std::env::var_os("TEXTREC_E2E_KUBECONFIG").unwrap();
    let submit = tokio::process::Command::new(env!("CARGO_BIN_EXE_textrec-operator"))
        .arg("submit")
        .arg(&manifest)
        .args(["--namespace", ns, "--wait", "--timeout", "10m"])
        .args(["--require", "cer>=0", "--output", "json"])
        .env("KUBECONFIG", kubeconfig)
        .kill_on_drop(true)
        .output();
    // Without kubelets, do what the worker's pod would: finish with its termination message.
    let finish_pod = async {
        if !no_kubelet() {
            return;
        }
        let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
        let pod = eventually(
            "a pod of submitted-t0",
            Duration::from_secs(120),
            || async {
                pods.list(&ListParams::default().labels("textrec.dev/trial=submitted-t0"))
                    .await
                    .ok()?
                    .items
                    .into_iter()
                    .next()
            },
        )
        .await;
        let done = json!({"phase": "Succeeded", "step": 20, "max_steps": 20, "best": {"step": 20, "cer": 0.5, "wer": 0.9, "decoding": "ctc-lm", "reading_width": 1.1},
            "model": {"url": format!("{storage}/submitted/submitted-t0/model/"), "sha256": "a".repeat(64), "cer": 0.5}, "updated": "2030-01-01T00:00:00Z"});
        let status = json!({"status": {"phase": "Succeeded", "containerStatuses": [{"name": "worker", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": 0, "message": done.to_string()}}}]}});
        pods.patch_status(
            pod.metadata.name.as_deref().unwrap(),
            &PatchParams::default(),
            &Patch::Merge(status),
        )
        .await
        .unwrap();
    };
    let (out, ()) = tokio::join!(submit, finish_pod);
    let out = out.expect("textrec-operator submit runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(report["outcome"], "succeeded", "{report}");
    assert_eq!(report["phase"], "Succeeded");
    assert_eq!(report["requirements"][0]["met"], true, "{report}");
    assert!(report["bestModel"]["url"]
        .as_str()
        .is_some_and(|u| u.contains("submitted-t0")));
    assert!(stderr.contains("trial submitted-t0: "), "{stderr}");

    let _ = stop.send(true);
    let _ = runs.delete("submitted", &Default::default()).await;
}

/// `spec.earlyStopping` in a cluster: three trials, one of them hopeless. Trial progress is
/// simulated in a folder this process writes and the operator reads (so this runs only without
/// kubelets, `TEXTREC_E2E_NO_KUBELET=1`): the hopeless trial's Job is suspended (SIGTERM: the
/// worker checkpoints), then deleted once a checkpoint at or after the deciding step is
/// reported; the trial ends `EarlyStopped` and the run succeeds with the others.
#[tokio::test]
async fn a_hopeless_trial_is_stopped_early_and_the_run_still_succeeds() {
    let Some(client) = client().await else { return };
    if !no_kubelet() {
        println!("skipped: needs TEXTREC_E2E_NO_KUBELET=1 (the trials' progress is simulated)");
        return;
    }
    let ns = "textrec-e2e-early";
    setup_with_storage_claim(&client, ns).await;
    let stop = start_operator_with(&client, ns, false);
    let dir = tempfile::tempdir().unwrap();
    let storage = format!("file://{}", dir.path().display());
    create_run(
        &client,
        ns,
        "early",
        json!({
            "image": worker_image(), "imagePullPolicy": "IfNotPresent",
            "storage": {"url": storage, "pvc": {"claimName": "textrec-e2e"}},
            "model": {"preset": "tiny"},
            "hyperparameters": {"optimizer": {"lr": [0.005, 0.004, 5.0]}},
            "search": {"maxTrials": 3, "parallelism": 3},
            "training": {"maxSteps": 100, "evalInterval": 10},
            "earlyStopping": {"algorithm": "MedianStop", "startStep": 20, "minTrialsRequired": 2}
        }),
    )
    .await;
    // minTrialsRequired counts the other trials: it must be below maxTrials.
    let runs: Api<TrainingRun> = Api::namespaced(client.clone(), ns);
    let mut invalid = runs.get("early").await.unwrap();
    invalid.metadata = kube::api::ObjectMeta {
        name: Some("early-invalid".into()),
        ..Default::default()
    };
    invalid.status = None;
    invalid
        .spec
        .early_stopping
        .as_mut()
        .unwrap()
        .min_trials_required = 3;
    let err = runs
        .create(&PostParams::default(), &invalid)
        .await
        .expect_err("CEL rejects minTrialsRequired >= maxTrials");
    assert!(err.to_string().contains("minTrialsRequired"), "{err}");

    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let trials = ["early-t0", "early-t1", "early-t2"];
    for t in trials {
        let pod = eventually(
            &format!("a pod of {t}"),
            Duration::from_secs(60),
            || async {
                pods.list(&ListParams::default().labels(&format!("textrec.dev/trial={t}")))
                    .await
                    .ok()?
                    .items
                    .into_iter()
                    .next()
            },
        )
        .await;
        let running = json!({"status": {"phase": "Running", "containerStatuses": [{"name": "worker", "image": "x", "imageID": "",
            "ready": true, "restartCount": 0, "state": {"running": {}}}]}});
        pods.patch_status(
            pod.metadata.name.as_deref().unwrap(),
            &PatchParams::default(),
            &Patch::Merge(running),
        )
        .await
        .unwrap();
    }
    // What the workers write: every evaluation in metrics.jsonl, the latest in progress.json.
    let write = |t: &str, cers: &[f64], checkpoint: u64, phase: &str| {
        let trial = dir.path().join("early").join(t);
        std::fs::create_dir_all(&trial).unwrap();
        let mut lines = String::new();
        for (i, c) in cers.iter().enumerate() {
            lines.push_str(&format!(
                "{{\"kind\":\"eval\",\"step\":{},\"time\":\"2027-01-01T00:00:00Z\",\"elapsed_s\":1.0,\"cer\":{c},\"wer\":1.0}}\n",
                (i + 1) * 10
            ));
        }
        std::fs::write(trial.join("metrics.jsonl"), lines).unwrap();
        let step = cers.len() as u64 * 10;
        let best = cers.iter().copied().fold(f64::INFINITY, f64::min);
        let p = json!({"phase": phase, "step": step.max(checkpoint), "max_steps": 100,
            "latest": {"step": step, "cer": cers[cers.len() - 1], "wer": 1.0},
            "best": {"step": step, "cer": best, "wer": 1.0},
            "checkpoint": {"step": checkpoint, "url": format!("{storage}/early/{t}/checkpoints/step-{checkpoint:010}")},
            "updated": chrono::Utc::now().to_rfc3339()});
        std::fs::write(trial.join("progress.json"), p.to_string()).unwrap();
    };
    write("early-t0", &[0.98, 0.95, 0.93], 20, "Running");
    write("early-t1", &[0.99, 0.96, 0.94], 20, "Running");
    write("early-t2", &[2.3, 2.31, 2.29], 20, "Running");

    // t2 (lr 5.0) is worse than the median: its Job is suspended while it checkpoints.
    let s = eventually("t2 being stopped", Duration::from_secs(60), || async {
        let s = status_in(&client, ns, "early").await;
        (s["trials"][2]["reason"] == "EarlyStopping").then_some(s)
    })
    .await;
    let decision = &s["trials"][2]["earlyStopping"];
    assert_eq!(decision["step"], 30, "{s}");
    assert_eq!(decision["trials"], 2, "{s}");
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
    eventually("t2's Job suspended", Duration::from_secs(30), || async {
        let j = jobs.get("early-t2").await.ok()?;
        j.spec?.suspend.unwrap_or(false).then_some(())
    })
    .await;
    assert_eq!(s["trials"][0]["phase"], "Running");
    assert_eq!(s["trials"][1]["phase"], "Running");

    // The worker checkpointed at step 34 on SIGTERM: the Job is deleted, the trial EarlyStopped.
    write("early-t2", &[2.3, 2.31, 2.29], 34, "Interrupted");
    let s = eventually("t2 EarlyStopped", Duration::from_secs(60), || async {
        let s = status_in(&client, ns, "early").await;
        (s["trials"][2]["phase"] == "EarlyStopped").then_some(s)
    })
    .await;
    assert_eq!(s["counts"]["earlyStopped"], 1, "{s}");
    assert!(s["trials"][2]["message"]
        .as_str()
        .unwrap_or_default()
        .contains("checkpoint at step 34 kept"));
    eventually("t2's Job deleted", Duration::from_secs(60), || async {
        match jobs.get_opt("early-t2").await.ok()? {
            None => Some(()),
            Some(j) => j.metadata.deletion_timestamp.map(|_| ()),
        }
    })
    .await;
    assert!(event_reasons(&client, ns, "early")
        .await
        .contains(&"TrialEarlyStopped".to_string()));

    // The other two finish: the run succeeds with the better of them.
    for (t, cer) in [("early-t0", 0.5), ("early-t1", 0.6)] {
        let done = json!({"phase": "Succeeded", "step": 100, "max_steps": 100,
            "best": {"step": 100, "cer": cer, "wer": 0.9},
            "model": {"url": format!("{storage}/early/{t}/model/"), "sha256": "ab", "cer": cer},
            "updated": chrono::Utc::now().to_rfc3339()});
        let pod = pods
            .list(&ListParams::default().labels(&format!("textrec.dev/trial={t}")))
            .await
            .unwrap()
            .items
            .into_iter()
            .next()
            .unwrap();
        let status = json!({"status": {"phase": "Succeeded", "containerStatuses": [{"name": "worker", "image": "x", "imageID": "",
            "ready": false, "restartCount": 0, "state": {"terminated": {"exitCode": 0, "message": done.to_string()}}}]}});
        pods.patch_status(
            pod.metadata.name.as_deref().unwrap(),
            &PatchParams::default(),
            &Patch::Merge(status),
        )
        .await
        .unwrap();
    }
    let s = eventually("the run Succeeded", Duration::from_secs(120), || async {
        let s = status_in(&client, ns, "early").await;
        (s["phase"] == "Succeeded").then_some(s)
    })
    .await;
    assert_eq!(s["bestModel"]["trial"], "early-t0", "{s}");
    assert_eq!(s["trialsDone"], "3/3");

    let _ = stop.send(true);
    let _ = runs.delete("early", &Default::default()).await;
}

/// A ModelDeployment with `spec.tls` and `spec.auth` whose Secrets do not exist yet: `Valid=False`
/// (SecretNotFound) naming both and no Deployment; once both exist the Deployment mounts them,
/// passes the TLS and token flags and probes over HTTPS.
#[tokio::test]
async fn tls_and_token_secrets_are_checked_then_mounted_into_the_serving_pods() {
    let Some(client) = client().await else { return };
    let ns = "textrec-e2e-tls";
    setup_namespace(&client, ns).await;
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), ns);
    for s in ["reader-tls", "reader-tokens"] {
        let _ = secrets.delete(s, &Default::default()).await;
    }
    let stop = start_operator_in(&client, ns);
    let mds: Api<ModelDeployment> = Api::namespaced(client.clone(), ns);
    let _ = mds.delete("secure", &Default::default()).await;
    eventually("no earlier deployment", Duration::from_secs(60), || async {
        mds.get_opt("secure").await.unwrap().is_none().then_some(())
    })
    .await;
    let md: ModelDeployment = serde_json::from_value(json!({
        "apiVersion": "textrec.dev/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": "secure"},
        "spec": {
            "image": worker_image(), "imagePullPolicy": "IfNotPresent",
            "model": {"url": "s3://textrec-e2e/models/small/", "sha256": "0".repeat(64)},
            "tls": {"secretName": "reader-tls", "clientAuth": true},
            "auth": {"tokenSecretName": "reader-tokens", "key": "tokens"}
        }
    }))
    .unwrap();
    mds.create(&PostParams::default(), &md)
        .await
        .expect("ModelDeployment accepted");

    let md_status = || async {
        mds.get_opt("secure")
            .await
            .unwrap()
            .and_then(|m| m.status)
            .map(|s| serde_json::to_value(s).unwrap())
            .unwrap_or_default()
    };
    let s = eventually("Valid=False", Duration::from_secs(60), || async {
        let s = md_status().await;
        (condition(&s, "Valid")["reason"] == "SecretNotFound").then_some(s)
    })
    .await;
    let msg = condition(&s, "Valid")["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("spec.tls.secretName: Secret \"reader-tls\"")
            && msg.contains("spec.auth.tokenSecretName: Secret \"reader-tokens\""),
        "{msg}"
    );
    assert_eq!(s["phase"], "Invalid");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    assert!(deployments.get_opt("secure").await.unwrap().is_none());

    let ssa = PatchParams::apply("textrec-e2e").force();
    for (name, data) in [
        (
            "reader-tls",
            json!({"tls.crt": "placeholder", "tls.key": "placeholder", "ca.crt": "placeholder"}),
        ),
        ("reader-tokens", json!({"tokens": "s3cret\n"})),
    ] {
        secrets
            .patch(
                name,
                &ssa,
                &Patch::Apply(json!({"apiVersion": "v1", "kind": "Secret",
                    "metadata": {"name": name}, "stringData": data})),
            )
            .await
            .unwrap();
    }
    let dep = eventually(
        "the serving Deployment",
        Duration::from_secs(60),
        || async { deployments.get_opt("secure").await.unwrap() },
    )
    .await;
    let pod = dep.spec.unwrap().template.spec.unwrap();
    let c = &pod.containers[0];
    let args = c.args.clone().unwrap();
    for flag in [
        "--tls-cert",
        "--tls-key",
        "--client-ca",
        "--auth-token-file",
    ] {
        assert!(args.iter().any(|a| a == flag), "{flag} missing: {args:?}");
    }
    let secret_volumes: Vec<String> = pod
        .volumes
        .unwrap_or_default()
        .iter()
        .filter_map(|v| v.secret.as_ref()?.secret_name.clone())
        .collect();
    assert!(
        secret_volumes.contains(&"reader-tls".to_string())
            && secret_volumes.contains(&"reader-tokens".to_string()),
        "{secret_volumes:?}"
    );
    let probe = c
        .readiness_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!(probe.scheme.as_deref(), Some("HTTPS"));
    let s = md_status().await;
    assert_ne!(condition(&s, "Valid")["reason"], "SecretNotFound", "{s}");

    let _ = stop.send(true);
    let _ = mds.delete("secure", &Default::default()).await;
    for s in ["reader-tls", "reader-tokens"] {
        let _ = secrets.delete(s, &Default::default()).await;
    }
}

// ---- Lineage and like-with-like promotion ----

/// Version of the built-in model (sha256 of its manifest), as a ModelDeployment names it.
fn builtin_sha() -> String {
    let m = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../models/small/manifest.json"
    ))
    .unwrap();
    textrec_contract::manifest::sha256_hex(&m)
}

/// A fine-tune of the model a deployment serves: `spec.initFrom.modelDeployment` waits for the
/// deployment, resolves to its model once (status.initFrom) and reaches the trial's Job with the
/// version. With kubelets the run trains, the deployment evaluates both models on
/// `spec.promotion.evaluation` in evaluation Jobs and, the set being empty, names
/// `spec.promotion.evaluation.path` while the built-in model keeps serving.
#[tokio::test]
async fn a_fine_tune_of_the_served_model_and_its_evaluation_before_promotion() {
    let Some(client) = client().await else { return };
    let ns = "textrec-e2e-lineage";
    setup_with_storage_claim(&client, ns).await;
    let stop = start_operator_in(&client, ns);
    let mds: Api<ModelDeployment> = Api::namespaced(client.clone(), ns);
    let _ = mds.delete("reader", &Default::default()).await;
    eventually("no earlier deployment", Duration::from_secs(60), || async {
        mds.get_opt("reader").await.unwrap().is_none().then_some(())
    })
    .await;
    let storage = std::env::var("TEXTREC_E2E_STORAGE").unwrap_or_else(|_| "file:///e2e".into());

    // The run first: its parent does not exist yet.
    create_run(
        &client,
        ns,
        "tuned",
        json!({
            "image": worker_image(), "imagePullPolicy": "IfNotPresent",
            "storage": {"url": storage, "pvc": {"claimName": "textrec-e2e"}},
            "initFrom": {"modelDeployment": "reader"},
            "hyperparameters": {"threads": 1, "data": {"validation": {"samples": 4}}},
            "search": {"maxTrials": 1, "parallelism": 1},
            "training": {"maxSteps": 2, "batchSize": 2, "evalInterval": 2, "device": "cpu"}
        }),
    )
    .await;
    let s = eventually(
        "Valid=False naming the field",
        Duration::from_secs(60),
        || async {
            let s = status_in(&client, ns, "tuned").await;
            (condition(&s, "Valid")["reason"] == "InitFromNotReady").then_some(s)
        },
    )
    .await;
    assert!(
        condition(&s, "Valid")["message"]
            .as_str()
            .unwrap()
            .starts_with("spec.initFrom.modelDeployment: "),
        "{s:#}"
    );
    assert!(jobs_of(&client, ns, "tuned").await.is_empty());

    let md: ModelDeployment = serde_json::from_value(json!({
        "apiVersion": "textrec.dev/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": "reader"},
        "spec": {
            "image": worker_image(), "imagePullPolicy": "IfNotPresent",
            "model": {"url": "builtin:small", "sha256": builtin_sha()},
            "credentials": {"pvc": {"claimName": "textrec-e2e", "mountPath": "/e2e"}},
            "promotion": {"policy": "Automatic",
                "evaluation": {"path": "/e2e/no-such-heldout-set", "samples": 8}}
        }
    }))
    .unwrap();
    mds.create(&PostParams::default(), &md)
        .await
        .expect("ModelDeployment accepted");

    let s = eventually("the parent resolved", Duration::from_secs(60), || async {
        let s = status_in(&client, ns, "tuned").await;
        s["initFrom"].is_object().then_some(s)
    })
    .await;
    assert_eq!(s["initFrom"]["url"], "builtin:small");
    assert_eq!(s["initFrom"]["sha256"], builtin_sha().as_str());
    let jobs = eventually("the Job of tuned", Duration::from_secs(60), || async {
        let j = jobs_of(&client, ns, "tuned").await;
        (!j.is_empty()).then_some(j)
    })
    .await;
    let args = job_args(&jobs[0]);
    assert!(
        args.contains(&r#"model.init_from="builtin:small""#.to_string())
            && args.contains(&format!(r#"model.init_sha256="{}""#, builtin_sha())),
        "{args:?}"
    );
    if no_kubelet() {
        let _ = stop.send(true);
        return;
    }

    // The fine-tune trains and finishes; the deployment evaluates both models first.
    eventually("tuned to succeed", Duration::from_secs(600), || async {
        let s = status_in(&client, ns, "tuned").await;
        assert_ne!(s["phase"], "Failed", "{s:#}");
        (s["phase"] == "Succeeded").then_some(())
    })
    .await;
    let s = eventually(
        "the evaluation to fail on the missing set",
        Duration::from_secs(300),
        || async {
            let s = mds.get("reader").await.ok()?.status?;
            let s = serde_json::to_value(s).unwrap();
            (condition(&s, "Valid")["reason"] == "EvaluationFailed").then_some(s)
        },
    )
    .await;
    assert!(
        condition(&s, "Valid")["message"]
            .as_str()
            .unwrap()
            .starts_with("spec.promotion.evaluation.path: "),
        "{s:#}"
    );
    assert_eq!(s["currentRevision"], 1);
    assert_eq!(s["model"]["url"], "builtin:small");
    let _ = stop.send(true);
}
