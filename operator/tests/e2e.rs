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
    let ns: Api<Namespace> = Api::all(client.clone());
    ns.patch(
        NS,
        &ssa,
        &Patch::Apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})),
    )
    .await
    .unwrap();
    let pvcs: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> =
        Api::namespaced(client.clone(), NS);
    let _ = pvcs
        .patch("textrec-e2e", &ssa, &Patch::Apply(json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "textrec-e2e"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}})))
        .await;
    // CRDs take a moment to be served.
    tokio::time::sleep(Duration::from_secs(3)).await;
}

fn start_operator(client: &Client) -> tokio::sync::watch::Sender<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    let opts = RunOptions {
        http_addr: "127.0.0.1:0".parse().unwrap(),
        namespace: Some(NS.into()),
        lease_namespace: NS.into(),
        lease_name: "e2e".into(),
        identity: None,
        lease_duration_s: 15,
        no_leader_election: true,
        progress_interval_s: 5,
        no_progress: true,
        concurrency: 4,
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
    let args = tuned_jobs[0]
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0]
        .args
        .clone()
        .unwrap_or_default();
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
        let done = json!({"phase": "Succeeded", "step": 20, "max_steps": 20, "best": {"step": 20, "cer": 0.5, "wer": 0.9},
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
                 "credentials": {"pvc": {"claimName": "textrec-e2e", "mountPath": "/e2e"}}}
    }))
    .unwrap();
    let _ = mds.delete("reader", &Default::default()).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    mds.create(&PostParams::default(), &md).await.unwrap();
    let deps: Api<Deployment> = Api::namespaced(client.clone(), NS);
    let dep = eventually(
        "the serving Deployment",
        Duration::from_secs(60),
        || async { deps.get_opt("reader").await.ok().flatten() },
    )
    .await;
    let args = dep.spec.unwrap().template.spec.unwrap().containers[0]
        .args
        .clone()
        .unwrap();
    assert!(args.contains(&best_url), "{args:?}");
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
