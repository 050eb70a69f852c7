//! Trials whose pods cannot start (quota, scheduler, image pulls, missing claims or Secrets).

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher;
use serde_json::json;
use textrec_operator::controller::MemoryEvents;

use crate::harness::*;

/// A pod as the scheduler leaves it when its PersistentVolumeClaim does not exist.
fn unschedulable_pod(name: &str, trial: &str) -> Pod {
    pod_obj(
        name,
        trial,
        "Pending",
        json!({"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": UNSCHEDULABLE, "lastTransitionTime": "2027-01-15T07:59:00Z"}]}),
    )
}

const UNSCHEDULABLE: &str = "0/3 nodes are available: persistentvolumeclaim \"textrec-runs\" not found. preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling.";

fn waiting_pod(name: &str, trial: &str, reason: &str, message: &str) -> Pod {
    pod_obj(
        name,
        trial,
        "Pending",
        json!({"containerStatuses": [{"name": "worker", "image": "", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": reason, "message": message}}}]}),
    )
}

fn cannot_start_events(events: &MemoryEvents) -> Vec<String> {
    events
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, e)| e.reason == "TrialCannotStart")
        .map(|(_, e)| e.message.clone())
        .collect()
}

#[tokio::test]
async fn a_job_refused_its_pod_by_a_quota_is_pending_with_the_refusal() {
    // A ResourceQuota (or Pod Security admission) refuses the pod: the Job has no pod at all,
    // only the Job controller's FailedCreate events say why.
    let run = run_json("ocr", json!({}));
    let mut h = harness(&run);
    apply(&mut h.jobs, job_obj("ocr-t0", json!([]), 0));
    let refusal = "Error creating: pods \"ocr-t0-x7\" is forbidden: exceeded quota: gpus, requested: nvidia.com/gpu=1, used: nvidia.com/gpu=0, limited: nvidia.com/gpu=0";
    let event = |name: &str, job: &str, message: &str| {
        json!({"apiVersion": "v1", "kind": "Event",
            "metadata": {"name": name, "namespace": "ml"},
            "involvedObject": {"kind": "Job", "name": job, "namespace": "ml"},
            "reason": "FailedCreate", "type": "Warning", "message": message,
            "lastTimestamp": "2027-01-15T08:00:00Z"})
    };
    {
        let mut st = h.state.lock().unwrap();
        st.objects.insert(
            "/api/v1/namespaces/ml/events/ocr-t0.1".into(),
            event("ocr-t0.1", "ocr-t0", refusal),
        );
        // Another Job's refusal must not be pinned on this trial.
        st.objects.insert(
            "/api/v1/namespaces/ml/events/other.1".into(),
            event(
                "other.1",
                "other",
                "Error creating: somebody else's problem",
            ),
        );
    }
    reconcile_run(&h, &run).await;
    let w = writes(&h.state);
    let status = &w.last().unwrap().2["status"];
    let t0 = &status["trials"][0];
    assert_eq!(
        (t0["phase"].as_str(), t0["reason"].as_str()),
        (Some("Pending"), Some("FailedCreate"))
    );
    let msg = t0["message"].as_str().unwrap();
    assert!(
        msg.contains("exceeded quota: gpus") && msg.ends_with("(job ocr-t0)"),
        "{msg}"
    );
    assert_eq!(status["reason"], "FailedCreate");
    let ev = cannot_start_events(&h.events);
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert!(ev[0].contains("exceeded quota"), "{ev:?}");

    // The quota is raised and the pod exists: the trial is no longer held by the old events.
    apply(&mut h.jobs, job_obj("ocr-t0", json!([]), 1));
    apply(&mut h.pods, running_pod("ocr-t0-a", "ocr-t0"));
    reconcile_again(&h).await;
    let st = stored_run(&h.state, "ocr").status.unwrap();
    assert_eq!(st.trials[0].reason, None, "{:?}", st.trials[0]);
}

#[tokio::test]
async fn trials_whose_pods_cannot_start_are_pending_with_the_schedulers_reason() {
    // The incident: every pod Pending, `persistentvolumeclaim "textrec-runs" not found`, while
    // the run said Running, "2 running, 0 pending".
    let run = run_json("ocr", json!({}));
    let mut h = harness(&run);
    for t in ["ocr-t0", "ocr-t1"] {
        apply(&mut h.jobs, job_obj(t, json!([]), 1));
        apply(&mut h.pods, unschedulable_pod(&format!("{t}-a"), t));
    }
    reconcile_run(&h, &run).await;
    let w = writes(&h.state);
    assert!(
        !w.iter().any(|(_, p, _)| p.contains("/jobs/")),
        "blocked trials keep their slots: no more Jobs: {w:?}"
    );
    let status = &w.last().unwrap().2["status"];
    assert_eq!(status["phase"], "Pending");
    for i in 0..2 {
        let t = &status["trials"][i];
        assert_eq!(
            (t["phase"].as_str(), t["reason"].as_str()),
            (Some("Pending"), Some("Unschedulable"))
        );
        assert!(
            t["message"]
                .as_str()
                .unwrap()
                .contains("\"textrec-runs\" not found"),
            "{t}"
        );
    }
    assert_eq!(status["trials"][2]["phase"], "Pending");
    assert!(status["trials"][2].get("reason").is_none());
    assert_eq!(
        status["counts"],
        json!({"total": 4, "pending": 4, "running": 0, "succeeded": 0, "failed": 0})
    );
    let running = condition(status, "Running");
    assert_eq!(
        (running["status"].as_str(), running["reason"].as_str()),
        (Some("False"), Some("Unschedulable"))
    );
    let msg = running["message"].as_str().unwrap();
    assert!(
        msg.starts_with("0 running, 0 starting or restarting, 4 pending; 2 cannot start: Unschedulable: 0/3 nodes"),
        "{msg}"
    );
    // What `kubectl get trainingruns` prints (Reason column; Message with -o wide).
    assert_eq!(status["reason"], "Unschedulable");
    assert!(status["message"]
        .as_str()
        .unwrap()
        .starts_with("2 of 4 trials cannot start: Unschedulable: 0/3 nodes"));
    // One Warning event for the one cause, naming both trials.
    let ev = cannot_start_events(&h.events);
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert!(
        ev[0].starts_with("trials ocr-t0, ocr-t1 cannot start: Unschedulable: 0/3 nodes"),
        "{ev:?}"
    );

    // Nothing changed: no new event, no write.
    h.state.lock().unwrap().log.clear();
    reconcile_again(&h).await;
    assert!(writes(&h.state).is_empty(), "{:?}", writes(&h.state));
    assert_eq!(cannot_start_events(&h.events).len(), 1);

    // t1 gets scheduled but its image cannot be pulled: a new cause, one more event.
    apply(
        &mut h.pods,
        waiting_pod(
            "ocr-t1-a",
            "ocr-t1",
            "ImagePullBackOff",
            "Back-off pulling image \"ghcr.io/textrec/worker:1\"",
        ),
    );
    reconcile_again(&h).await;
    let st = stored_run(&h.state, "ocr").status.unwrap();
    assert_eq!(st.trials[1].reason.as_deref(), Some("ImagePullBackOff"));
    let ev = cannot_start_events(&h.events);
    assert_eq!(ev.len(), 2, "{ev:?}");
    assert!(
        ev[1].starts_with("trial ocr-t1 cannot start: ImagePullBackOff: Back-off pulling image")
    );
    // The kubelet's next attempt reads ErrImagePull: the same cause, no new event.
    apply(
        &mut h.pods,
        waiting_pod(
            "ocr-t1-a",
            "ocr-t1",
            "ErrImagePull",
            "failed to resolve reference",
        ),
    );
    reconcile_again(&h).await;
    let st = stored_run(&h.state, "ocr").status.unwrap();
    assert_eq!(st.trials[1].reason.as_deref(), Some("ErrImagePull"));
    assert_eq!(cannot_start_events(&h.events).len(), 2);

    // t0's PVC appears and its pod runs: the run is Running again, t0 without a reason.
    apply(&mut h.pods, running_pod("ocr-t0-a", "ocr-t0"));
    reconcile_again(&h).await;
    let st = stored_run(&h.state, "ocr").status.unwrap();
    assert_eq!(st.phase, Some(textrec_operator::crd::RunPhase::Running));
    assert_eq!(
        st.trials[0].phase,
        textrec_operator::crd::TrialPhase::Running
    );
    assert_eq!(st.trials[0].reason, None);
    assert_eq!(
        st.reason.as_deref(),
        Some("ErrImagePull"),
        "t1 still cannot start"
    );
    let running = st.conditions.iter().find(|c| c.type_ == "Running").unwrap();
    assert_eq!(running.status, "True");
    assert!(
        running.message.starts_with(
            "1 running, 0 starting or restarting, 3 pending; 1 cannot start: ErrImagePull"
        ),
        "{}",
        running.message
    );
}

#[tokio::test]
async fn an_image_that_can_never_be_pulled_fails_the_trial_and_stops_its_job() {
    let run = run_json("ocr", json!({"search": {"maxTrials": 4, "parallelism": 1}}));
    let mut h = harness(&run);
    apply(&mut h.jobs, job_obj("ocr-t0", json!([]), 1));
    apply(
        &mut h.pods,
        waiting_pod(
            "ocr-t0-a",
            "ocr-t0",
            "InvalidImageName",
            "Failed to apply default image tag \"Bad:Image\": invalid reference format",
        ),
    );
    reconcile_run(&h, &run).await;
    let w = writes(&h.state);
    let suspend = w
        .iter()
        .find(|(_, p, _)| p.ends_with("/jobs/ocr-t0"))
        .expect("the Job of the failed trial is stopped");
    assert_eq!(suspend.2, json!({"spec": {"suspend": true}}));
    let st = stored_run(&h.state, "ocr").status.unwrap();
    assert_eq!(
        st.trials[0].phase,
        textrec_operator::crd::TrialPhase::Failed
    );
    assert_eq!(st.trials[0].reason.as_deref(), Some("InvalidImageName"));
    assert!(reasons(&h.events).contains(&"TrialFailed"));
    // Its slot is free: the next trial starts.
    assert!(
        w.iter().any(|(_, p, _)| p.ends_with("/jobs/ocr-t1")),
        "{w:?}"
    );

    // Suspended and without pods, it does not come back as restarting.
    let mut j = job_obj("ocr-t0", json!([]), 0);
    j.spec.as_mut().unwrap().suspend = Some(true);
    apply(&mut h.jobs, j);
    h.pods
        .apply_watcher_event(&watcher::Event::Delete(waiting_pod(
            "ocr-t0-a",
            "ocr-t0",
            "InvalidImageName",
            "",
        )));
    reconcile_again(&h).await;
    let st = stored_run(&h.state, "ocr").status.unwrap();
    assert_eq!(
        st.trials[0].phase,
        textrec_operator::crd::TrialPhase::Failed
    );
    assert_eq!(st.trials[0].reason.as_deref(), Some("InvalidImageName"));
}

#[tokio::test]
async fn a_missing_storage_claim_or_secret_is_reported_before_any_job() {
    let run = run_json(
        "ocr",
        json!({"storage": {"url": "file:///runs", "pvc": {"claimName": "textrec-runs"}, "secretRef": "nope"}}),
    );
    let h = harness(&run);
    let action = reconcile_run(&h, &run).await;
    // Nothing watches claims: look again soon.
    assert_eq!(
        action,
        kube::runtime::controller::Action::requeue(Duration::from_secs(30))
    );
    let w = writes(&h.state);
    let changed: Vec<&str> = w
        .iter()
        .filter(|(m, _, _)| m != "GET")
        .map(|(_, p, _)| p.as_str())
        .collect();
    assert_eq!(
        changed,
        ["/apis/textrec.dev/v1alpha1/namespaces/ml/trainingruns/ocr/status"],
        "no Job before the claim exists"
    );
    let status = &w.last().unwrap().2["status"];
    assert_eq!(status["phase"], "Pending");
    let valid = condition(status, "Valid");
    assert_eq!(
        (valid["status"].as_str(), valid["reason"].as_str()),
        (Some("False"), Some("PersistentVolumeClaimNotFound"))
    );
    let msg = valid["message"].as_str().unwrap();
    assert!(
        msg.contains(
            "spec.storage.pvc.claimName: PersistentVolumeClaim \"textrec-runs\" not found"
        ) && msg.contains("spec.storage.secretRef: Secret \"nope\" not found"),
        "{msg}"
    );
    assert_eq!(status["reason"], "PersistentVolumeClaimNotFound");
    assert_eq!(
        condition(status, "Running")["reason"],
        "PersistentVolumeClaimNotFound"
    );
    assert_eq!(reasons(&h.events), vec!["ReferenceNotFound"]);

    // Again: no second event.
    reconcile_again(&h).await;
    assert_eq!(reasons(&h.events), vec!["ReferenceNotFound"]);

    // Both appear: the trials start.
    for (path, kind, name) in [
        (
            "/api/v1/namespaces/ml/persistentvolumeclaims/textrec-runs",
            "PersistentVolumeClaim",
            "textrec-runs",
        ),
        ("/api/v1/namespaces/ml/secrets/nope", "Secret", "nope"),
    ] {
        h.state.lock().unwrap().objects.insert(
            path.into(),
            json!({"apiVersion": "v1", "kind": kind, "metadata": {"name": name, "namespace": "ml"}}),
        );
    }
    h.state.lock().unwrap().log.clear();
    reconcile_again(&h).await;
    let w = writes(&h.state);
    assert_eq!(
        w.iter().filter(|(_, p, _)| p.contains("/jobs/")).count(),
        2,
        "{w:?}"
    );
    let st = stored_run(&h.state, "ocr").status.unwrap();
    assert!(textrec_operator::conditions::is_true(
        &st.conditions,
        "Valid"
    ));
    assert_eq!(st.reason, None);
}
