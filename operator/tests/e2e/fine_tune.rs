//! Lineage and like-with-like promotion: a fine-tune of the model a deployment serves.

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use kube::api::{ListParams, PostParams};
use kube::Api;
use serde_json::json;
use textrec_operator::crd::ModelDeployment;

use super::support::*;

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
    let storage = storage_url();

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
    // The evaluation Jobs are deleted once their results are read, so their environment is
    // recorded while they exist.
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
    let seen_env = std::sync::Mutex::new(Vec::new());
    let s = eventually(
        "the evaluation to fail on the missing set",
        Duration::from_secs(300),
        || async {
            let lp = ListParams::default().labels("textrec.dev/evaluation-of=reader");
            if let Ok(list) = jobs.list(&lp).await {
                for job in list {
                    let pod = job.spec.and_then(|s| s.template.spec);
                    let env = pod.map(|p| p.containers[0].env.clone().unwrap_or_default());
                    seen_env.lock().unwrap().extend(env);
                }
            }
            let s = mds.get("reader").await.ok()?.status?;
            let s = serde_json::to_value(s).unwrap();
            (condition(&s, "Valid")["reason"] == "EvaluationFailed").then_some(s)
        },
    )
    .await;
    // A promotion chooses a model: its evaluations refuse sets reserved for independent
    // evaluation.
    let seen_env = seen_env.into_inner().unwrap();
    assert!(!seen_env.is_empty(), "no evaluation Job was seen");
    for env in &seen_env {
        assert!(
            env.iter()
                .any(|e| e.name == "TEXTREC_EVAL_SELECTION" && e.value.as_deref() == Some("1")),
            "{env:?}"
        );
    }
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
