//! Truthful status: trials whose pods cannot start, and objects a run names that are missing
//! or not allowed.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams, PostParams};
use kube::Api;
use serde_json::json;
use textrec_operator::crd::TrainingRun;

use super::support::*;

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
        let pod = first_pod(&client, ns, "nopull-t0", Duration::from_secs(60)).await;
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
    let s = trial_pending_as(
        &client,
        ns,
        "nopull",
        "ImagePullBackOff",
        Duration::from_secs(300),
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
    let pod = first_pod(&client, ns, "vols-t0", Duration::from_secs(60)).await;
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
        let pod = first_pod(&client, ns, "gpus-t0", Duration::from_secs(60)).await;
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
    let s = trial_pending_as(
        &client,
        ns,
        "gpus",
        "Unschedulable",
        Duration::from_secs(120),
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
    let s = trial_pending_as(
        &client,
        ns,
        "quota",
        "FailedCreate",
        Duration::from_secs(120),
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
