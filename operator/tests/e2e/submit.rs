//! `textrec-operator submit` against the cluster, as CI runs it.

use std::time::Duration;

use kube::Api;
use serde_json::json;
use textrec_operator::crd::TrainingRun;

use super::support::*;

/// `textrec-operator submit --wait` as a CI job runs it: the binary creates a one-trial run with
/// the kubeconfig's credentials, follows it to `Succeeded`, checks a requirement and exits 0 with
/// the best model in its JSON report.
#[tokio::test]
async fn submit_waits_for_a_tiny_run_and_exits_zero() {
    let Some(client) = client().await else { return };
    let ns = "textrec-e2e-submit";
    setup_with_storage_claim(&client, ns).await;
    let stop = start_operator_in(&client, ns);
    let storage = storage_url();
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
        let pod = first_pod(&client, ns, "submitted-t0", Duration::from_secs(120)).await;
        let done = finished_trial_report(&format!("{storage}/submitted/submitted-t0/model/"));
        set_pod_outcome(
            &client,
            ns,
            pod.metadata.name.as_deref().unwrap(),
            "Succeeded",
            0,
            &done.to_string(),
            false,
        )
        .await;
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
