//! `spec.earlyStopping` in a cluster.

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams, PostParams};
use kube::Api;
use serde_json::json;
use textrec_operator::crd::TrainingRun;

use super::support::*;

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
        let pod = first_pod(&client, ns, t, Duration::from_secs(60)).await;
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
        let pod = pods_of(&client, ns, t).await.into_iter().next().unwrap();
        let pod = pod.metadata.name.as_deref().unwrap();
        set_pod_outcome(&client, ns, pod, "Succeeded", 0, &done.to_string(), false).await;
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
