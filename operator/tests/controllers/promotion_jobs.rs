//! Promotion evaluations: the eval Jobs and the decision they feed.

use std::sync::Mutex;

use serde_json::{json, Value};

use crate::fake_api::FakeState;
use crate::harness::*;

/// The eval Jobs the last reconcile applied: (name, body).
pub(crate) fn eval_jobs(state: &Mutex<FakeState>) -> Vec<(String, Value)> {
    writes(state)
        .into_iter()
        .filter(|(m, p, _)| m == "PATCH" && p.starts_with("/apis/batch/v1/namespaces/ml/jobs/"))
        .map(|(_, p, b)| (p.rsplit('/').next().unwrap().to_string(), b))
        .collect()
}

/// Finish eval Job `job` as the kubelet would: succeeded, its pod's termination message the
/// worker's `--result-file` JSON.
pub(crate) fn finish_eval_job(state: &Mutex<FakeState>, job: &str, result: Value) {
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
    // The score chooses a model: eval refuses a set reserved for independent evaluation.
    assert!(
        c["env"]
            .as_array()
            .unwrap()
            .contains(&json!({"name": "TEXTREC_EVAL_SELECTION", "value": "1"})),
        "{}",
        c["env"]
    );
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
