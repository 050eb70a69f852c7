//! The whole life of a grid run: Jobs, a CEL rejection, fine-tuning's flag, a disruption and
//! its replacement pod, the best model, then a ModelDeployment promoted and rolled back.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{EvictParams, ListParams, Patch, PatchParams, PostParams};
use kube::Api;
use serde_json::json;
use textrec_operator::crd::{ModelDeployment, TrainingRun};

use super::support::*;

#[tokio::test]
async fn training_run_grid_disruption_failure_completion_then_deploy_promote_rollback() {
    let Some(client) = client().await else { return };
    setup(&client).await;
    let stop = start_operator(&client);
    let image = worker_image();
    let storage = storage_url();
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
        pods_of(&client, NS, "grid-t0").await.into_iter().find(|p| {
            p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running") || no_kubelet()
        })
    })
    .await;
    let pod_name = pod.metadata.name.clone().unwrap();
    if no_kubelet() {
        set_pod_outcome(&client, NS, &pod_name, "Failed", 137, "", true).await;
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
        let p1 = first_pod(&client, NS, "grid-t1", Duration::from_secs(60)).await;
        set_pod_outcome(
            &client,
            NS,
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
                pods_of(&client, NS, "grid-t0")
                    .await
                    .into_iter()
                    .find(|p| p.metadata.name.as_deref() != Some(pod_name.as_str()))
            },
        )
        .await;
        let done = finished_trial_report(&format!("{storage}/grid/grid-t0/model/"));
        set_pod_outcome(
            &client,
            NS,
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
        "spec": {"model": {"fromTrainingRun": "grid"}, "image": worker_image(),
                 "promotion": {"policy": "Automatic", "selector": {"matchLabels": {"team": "e2e"}}},
                 "credentials": {"pvc": {"claimName": "textrec-e2e", "mountPath": "/e2e"}},
                 "flagging": {"storage": "file:///e2e/flags/reader/", "maxSamples": 100},
                 "reading": {"widths": [1, 1.25], "rereadBelow": 0.8},
                 "precision": "auto"}
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
    // The encoder's precision is one of three names. The typed client cannot even build
    // another, so it goes to the API server untyped.
    let raw: Api<kube::api::DynamicObject> = Api::namespaced_with(
        client.clone(),
        NS,
        &kube::api::ApiResource::erase::<ModelDeployment>(&()),
    );
    let mut bad = serde_json::to_value(&md).unwrap();
    bad["metadata"]["name"] = json!("bad-precision");
    bad["spec"]["precision"] = json!("fp16");
    let bad: kube::api::DynamicObject = serde_json::from_value(bad).unwrap();
    let refused = raw
        .create(&PostParams::default(), &bad)
        .await
        .expect_err("spec.precision is validated by the API server");
    assert!(refused.to_string().contains("precision"), "{refused}");
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
    let at = args
        .iter()
        .position(|a| a == "--precision")
        .expect("--precision");
    assert_eq!(args[at + 1], "auto");
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
