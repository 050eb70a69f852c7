//! A TrainingRun's reconciles: the Jobs it creates, the status and events it writes.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use serde_json::{json, Value};
use textrec_operator::controller::{self};
use textrec_operator::crd::TrainingRun;
use textrec_operator::defaults::Defaults;

use crate::harness::*;

#[tokio::test]
async fn new_run_creates_parallelism_jobs_with_failure_policy_and_status() {
    let run = run_json("ocr", json!({}));
    let h = harness(&run);
    let action = reconcile_run(&h, &run).await;
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
    apply(&mut h.pods, running_pod("ocr-t1-b", "ocr-t1"));
    h.progress.0.lock().unwrap().insert(
        "s3://bucket/runs/ocr/ocr-t1".into(),
        serde_json::from_str(r#"{"phase":"Running","step":300,"max_steps":1000,"latest":{"step":300,"cer":0.2,"wer":0.5},"best":{"step":200,"cer":0.18,"wer":0.5},"checkpoint":{"step":250,"url":"s3://bucket/runs/ocr/ocr-t1/checkpoints/step-0000000250/"},"updated":"2027-01-15T08:00:00Z"}"#).unwrap(),
    );
    reconcile_run(&h, &run).await;

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
    reconcile_run(&h, &run).await;
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
    reconcile_run(&h, &run).await;
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
    reconcile_run(&h, &run).await;
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
    reconcile_run(&h, &run).await;
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
    reconcile_run(&h, &run).await;
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
