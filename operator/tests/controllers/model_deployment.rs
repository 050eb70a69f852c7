//! A ModelDeployment's reconciles: rollout, promotion, hot reload, rollback.

use serde_json::json;

use crate::harness::*;

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
