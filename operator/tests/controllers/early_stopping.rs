//! Early stopping of trials worse than the median.

use kube::runtime::watcher;
use serde_json::{json, Value};

use crate::harness::*;

/// `progress.json` of a running trial whose evaluations so far are `cers` (every 100 steps).
pub(crate) fn progress_at(
    cers: &[f64],
    checkpoint: Option<u64>,
) -> textrec_contract::TrialProgress {
    let step = cers.len() as u64 * 100;
    let (best_i, best) = cers
        .iter()
        .enumerate()
        .min_by(|a, b| a.1.total_cmp(b.1))
        .unwrap();
    serde_json::from_value(json!({
        "phase": "Running", "step": step, "max_steps": 1000,
        "latest": {"step": step, "cer": cers[cers.len() - 1], "wer": 0.9},
        "best": {"step": (best_i as u64 + 1) * 100, "cer": best, "wer": 0.9},
        "checkpoint": checkpoint.map(|c| json!({"step": c, "url": format!("s3://bucket/runs/ocr/ocr-t0/checkpoints/step-{c:010}/")})),
        "updated": format!("2027-01-15T08:0{}:00Z", cers.len()),
    }))
    .unwrap()
}

pub(crate) fn set_progress(h: &Harness, trial: &str, p: textrec_contract::TrialProgress) {
    h.progress
        .0
        .lock()
        .unwrap()
        .insert(format!("s3://bucket/runs/ocr/{trial}"), p);
}

/// Three running trials of a run with early stopping; ocr-t0 is far worse than the others.
pub(crate) fn early_stopping_harness() -> (Harness, Value) {
    let run = run_json(
        "ocr",
        json!({"search": {"maxTrials": 4, "parallelism": 3},
               "earlyStopping": {"algorithm": "MedianStop", "startStep": 200, "minTrialsRequired": 2}}),
    );
    let mut h = harness(&run);
    for t in ["ocr-t0", "ocr-t1", "ocr-t2"] {
        let job = job_obj(t, json!([]), 1);
        h.state.lock().unwrap().objects.insert(
            format!("/apis/batch/v1/namespaces/ml/jobs/{t}"),
            serde_json::to_value(&job).unwrap(),
        );
        apply(&mut h.jobs, job);
        apply(&mut h.pods, running_pod(&format!("{t}-a"), t));
    }
    (h, run)
}

/// Reconciles the stored run with the request log cleared, so `writes` shows only this pass.
async fn reconcile_stored(h: &Harness) {
    h.state.lock().unwrap().log.clear();
    reconcile_again(h).await;
}

#[tokio::test]
async fn a_trial_worse_than_the_median_is_stopped_early_after_its_checkpoint() {
    let (mut h, _) = early_stopping_harness();
    // Step 100, before startStep: however bad, nothing is decided. The operator keeps each
    // trial's evaluations as it reads them.
    set_progress(&h, "ocr-t0", progress_at(&[0.9], Some(100)));
    set_progress(&h, "ocr-t1", progress_at(&[0.5], None));
    set_progress(&h, "ocr-t2", progress_at(&[0.4], None));
    reconcile_stored(&h).await;
    let w = writes(&h.state);
    assert!(
        w.iter().all(|(_, p, _)| p.ends_with("/status")),
        "only the status is written: {w:?}"
    );

    // Step 200: t0's best (0.85) is worse than the median of the others' running averages
    // ((0.5 + 0.3) / 2 = 0.4 and (0.4 + 0.2) / 2 = 0.3: 0.35). Its newest checkpoint (step 100)
    // is older than that: its Job is suspended so that the worker checkpoints now.
    set_progress(&h, "ocr-t0", progress_at(&[0.9, 0.85], Some(100)));
    set_progress(&h, "ocr-t1", progress_at(&[0.5, 0.3], None));
    set_progress(&h, "ocr-t2", progress_at(&[0.4, 0.2], None));
    reconcile_stored(&h).await;
    let w = writes(&h.state);
    assert_eq!(w[0].0, "PATCH");
    assert_eq!(w[0].1, "/apis/batch/v1/namespaces/ml/jobs/ocr-t0");
    assert_eq!(w[0].2, json!({"spec": {"suspend": true}}));
    assert!(!w.iter().any(|(m, _, _)| m == "DELETE"));
    let status = &w.last().unwrap().2["status"];
    let t0 = &status["trials"][0];
    assert_eq!(t0["phase"], "Running");
    assert_eq!(t0["reason"], "EarlyStopping");
    assert_eq!(t0["earlyStopping"]["step"], 200);
    assert_eq!(t0["earlyStopping"]["best"], 0.85);
    assert_eq!(t0["earlyStopping"]["trials"], 2);
    assert!((t0["earlyStopping"]["median"].as_f64().unwrap() - 0.35).abs() < 1e-9);
    assert_eq!(status["trials"][1]["phase"], "Running");
    assert!(status["trials"][1].get("earlyStopping").is_none());
    let events = h.events.0.lock().unwrap().clone();
    let stopped: Vec<_> = events
        .iter()
        .filter(|(_, e)| e.reason == "TrialEarlyStopped")
        .collect();
    assert_eq!(stopped.len(), 1);
    assert!(
        stopped[0]
            .1
            .message
            .contains("ocr-t0 stopped early at step 200: best cer 0.8500 is worse than 0.3500"),
        "{:?}",
        stopped[0].1.message
    );

    // The pod got SIGTERM: the worker checkpointed at step 230 and exited 75, leaving its final
    // progress as the termination message. The Job is deleted (its pods with it), the trial
    // is EarlyStopped, and the freed slot starts the fourth trial.
    let mut suspended = job_obj("ocr-t0", json!([]), 0);
    suspended.spec.as_mut().unwrap().suspend = Some(true);
    apply(&mut h.jobs, suspended);
    h.pods
        .apply_watcher_event(&watcher::Event::Delete(running_pod("ocr-t0-a", "ocr-t0")));
    let mut last = progress_at(&[0.9, 0.85], Some(230));
    last.step = 230;
    last.phase = textrec_contract::metrics::WorkerPhase::Interrupted;
    last.updated = "2027-01-15T09:00:00Z".parse().unwrap();
    apply(
        &mut h.pods,
        pod_obj(
            "ocr-t0-a",
            "ocr-t0",
            "Failed",
            json!({"containerStatuses": [{"name": "worker", "image": "", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": 75, "message": serde_json::to_string(&last).unwrap()}}}]}),
        ),
    );
    reconcile_stored(&h).await;
    let w = writes(&h.state);
    let deletes: Vec<_> = w.iter().filter(|(m, _, _)| m == "DELETE").collect();
    assert_eq!(deletes.len(), 1, "{w:?}");
    assert_eq!(deletes[0].1, "/apis/batch/v1/namespaces/ml/jobs/ocr-t0");
    assert_eq!(deletes[0].2["propagationPolicy"], "Background");
    assert!(!h
        .state
        .lock()
        .unwrap()
        .objects
        .contains_key("/apis/batch/v1/namespaces/ml/jobs/ocr-t0"));
    assert!(w
        .iter()
        .any(|(m, p, _)| m == "PATCH" && p.ends_with("/jobs/ocr-t3")));
    let status = &w.last().unwrap().2["status"];
    let t0 = &status["trials"][0];
    assert_eq!(t0["phase"], "EarlyStopped");
    assert_eq!(t0["preemptions"], 0, "a stop on purpose is no preemption");
    assert_eq!(t0["checkpoint"]["step"], 230);
    assert!(
        t0["message"]
            .as_str()
            .unwrap()
            .ends_with("checkpoint at step 230 kept"),
        "{t0}"
    );
    assert_eq!(status["counts"]["earlyStopped"], 1);
    assert_eq!(status["counts"]["running"], 3);
    assert_eq!(status["trialsDone"], "1/4");
    assert_eq!(status["bestTrial"], "ocr-t2");
    assert!(!reasons(&h.events).contains(&"TrialPreempted"));

    // The Job and its pod are gone: the trial stays EarlyStopped and nothing more is deleted.
    h.jobs
        .apply_watcher_event(&watcher::Event::Delete(job_obj("ocr-t0", json!([]), 0)));
    h.pods
        .apply_watcher_event(&watcher::Event::Delete(running_pod("ocr-t0-a", "ocr-t0")));
    reconcile_stored(&h).await;
    let w = writes(&h.state);
    assert!(!w.iter().any(|(m, _, _)| m == "DELETE"), "{w:?}");
    let stored = stored_run(&h.state, "ocr");
    let st = stored.status.unwrap();
    assert_eq!(
        st.trials[0].phase,
        textrec_operator::crd::TrialPhase::EarlyStopped
    );
    assert_eq!(st.counts.early_stopped, 1);
}
