use super::*;
use crate::crd::Direction;
use k8s_openapi::jiff::Timestamp;
use proptest::prelude::*;
use serde_json::json;

fn run(extra: serde_json::Value) -> TrainingRun {
    let mut v = json!({
        "apiVersion": "textrec.dev/v1alpha1", "kind": "TrainingRun",
        "metadata": {"name": "r", "namespace": "ns", "uid": "u", "generation": 3},
        "spec": {"image": "w", "storage": {"url": "s3://b/p"},
                 "hyperparameters": {"optimizer": {"lr": [0.1, 0.2, 0.3]}},
                 "search": {"maxTrials": 3, "parallelism": 3}}
    });
    if let Some(e) = extra.as_object() {
        for (k, x) in e {
            v["spec"][k] = x.clone();
        }
    }
    serde_json::from_value(v).unwrap()
}

fn now() -> Time {
    Time(Timestamp::from_second(1_000_000).unwrap())
}

fn entry(name: &str, phase: TrialPhase, best: Option<f64>) -> TrialStatus {
    TrialStatus {
        name: name.into(),
        phase,
        params: String::new(),
        step: 0,
        latest_metric: best,
        best_metric: best,
        best_extra_cer: Default::default(),
        best_decoding: None,
        best_reading_width: None,
        restarts: 0,
        preemptions: 0,
        checkpoint: None,
        reason: None,
        message: None,
        early_stopping: None,
    }
}

#[test]
fn fresh_run_starts_every_trial_up_to_parallelism_and_records_generation() {
    let p = plan(&run(json!({})), &Observed::default(), &now());
    assert_eq!(p.create.len(), 3);
    assert_eq!(p.status.observed_generation, Some(3));
    assert!(p
        .status
        .conditions
        .iter()
        .all(|c| c.observed_generation == Some(3)));
    assert_eq!(p.status.phase, Some(RunPhase::Running));
}

#[test]
fn a_fine_tune_waits_for_its_parent_then_keeps_the_one_it_started_from() {
    use crate::crd::ResolvedParent;
    let r = run(json!({"initFrom": {"modelDeployment": "reader"}}));
    let waiting = Observed {
        parent: Some(Parent::Waiting {
            field: "spec.initFrom.modelDeployment",
            message: "ModelDeployment \"reader\" serves no model yet".into(),
        }),
        ..Default::default()
    };
    let p = plan(&r, &waiting, &now());
    assert!(p.create.is_empty() && p.active);
    let valid = p
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == "Valid")
        .unwrap();
    assert_eq!(valid.status, "False");
    assert_eq!(valid.reason, INIT_FROM_NOT_READY);
    assert!(
        valid.message.starts_with("spec.initFrom.modelDeployment: "),
        "{}",
        valid.message
    );
    assert!(p.events.iter().any(|e| e.reason == INIT_FROM_NOT_READY));

    let parent = |url: &str| ResolvedParent {
        url: url.into(),
        sha256: Some("c".repeat(64)),
        source: "ModelDeployment reader (revision 1)".into(),
    };
    let resolved = Observed {
        parent: Some(Parent::Resolved(parent("file:///m/r1/"))),
        ..Default::default()
    };
    let p = plan(&r, &resolved, &now());
    assert_eq!(p.status.init_from, Some(parent("file:///m/r1/")));
    let args = |p: &RunPlan| -> Vec<String> {
        p.create[0]
            .job
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0]
            .args
            .clone()
            .unwrap()
    };
    assert!(args(&p).contains(&r#"model.init_from="file:///m/r1/""#.to_string()));
    assert!(args(&p).contains(&format!(r#"model.init_sha256="{}""#, "c".repeat(64))));

    // The deployment promoted meanwhile: later trials still start from the recorded parent.
    let mut started = r.clone();
    started.status = Some(p.status.clone());
    let moved = Observed {
        parent: Some(Parent::Resolved(parent("file:///m/r2/"))),
        ..Default::default()
    };
    let p2 = plan(&started, &moved, &now());
    assert_eq!(p2.status.init_from, Some(parent("file:///m/r1/")));
    assert!(p2.create.iter().all(|t| t
        .trial
        .overrides
        .contains(&r#"model.init_from="file:///m/r1/""#.to_string())));
}

#[test]
fn best_trial_respects_direction_and_ignores_nan() {
    let e = vec![
        entry("a", TrialPhase::Running, Some(0.3)),
        entry("b", TrialPhase::Running, Some(0.1)),
        entry("c", TrialPhase::Running, Some(f64::NAN)),
    ];
    assert_eq!(best_trial(&e, Direction::Minimize).as_deref(), Some("b"));
    assert_eq!(best_trial(&e, Direction::Maximize).as_deref(), Some("a"));
    assert_eq!(best_trial(&[], Direction::Minimize), None);
}

#[test]
fn status_of_a_finished_search_stays_small() {
    // 256 trials, each with the longest message and params: well under etcd's 1.5 MiB.
    let long = "x".repeat(10_000);
    let e: Vec<TrialStatus> = (0..256)
        .map(|i| TrialStatus {
            message: Some(crate::util::truncate(
                &long,
                crate::trial_state::MAX_MESSAGE,
            )),
            params: crate::util::truncate(&long, 256),
            best_decoding: Some(textrec_contract::manifest::DecodeMode::CtcLm),
            best_reading_width: None,
            checkpoint: Some(crate::crd::CheckpointStatus {
                step: 1,
                url: "s3://bucket/a/long/prefix/run/trial/checkpoints/step-0000000001/".into(),
            }),
            ..entry(
                &format!("run-with-a-long-name-t{i}"),
                TrialPhase::Failed,
                Some(0.5),
            )
        })
        .collect();
    let st = TrainingRunStatus {
        trials: e,
        ..Default::default()
    };
    let size = serde_json::to_vec(&st).unwrap().len();
    assert!(size < 300_000, "{size} bytes");
}

fn job(name: &str) -> Job {
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": {"suspend": false, "template": {}}, "status": {}}))
            .unwrap()
}

fn pod(status: serde_json::Value, deleted: Option<&str>) -> Pod {
    serde_json::from_value(
        json!({"metadata": {"name": "r-t0-x", "deletionTimestamp": deleted}, "status": status}),
    )
    .unwrap()
}

#[test]
fn a_pod_stuck_terminating_makes_its_trial_pending_and_it_keeps_its_slot() {
    let r = run(json!({"search": {"maxTrials": 3, "parallelism": 1}}));
    let j = job("r-t0");
    // Deleted (spot reclaim) 10 minutes before `now`, its node gone.
    let stuck = pod(
        json!({"phase": "Running", "containerStatuses": [{"name": "worker", "image": "", "imageID": "",
                "ready": true, "restartCount": 0, "state": {"running": {}}}]}),
        Some("1970-01-12T13:36:40Z"),
    );
    let mut obs = Observed::default();
    obs.jobs.insert("r-t0".into(), &j);
    obs.pods.insert("r-t0".into(), vec![&stuck]);
    let p = plan(&r, &obs, &now());
    let t0 = &p.status.trials[0];
    assert_eq!(t0.phase, TrialPhase::Pending);
    assert_eq!(
        t0.reason.as_deref(),
        Some(crate::pod_problems::STUCK_TERMINATING)
    );
    assert!(p.create.is_empty(), "the stuck trial holds the only slot");
    assert!(p.active, "looked at again soon");
    assert_eq!(p.status.phase, Some(RunPhase::Pending));
    assert_eq!(
        p.events
            .iter()
            .filter(|e| e.reason == "TrialCannotStart")
            .count(),
        1
    );
    // Deleted only a minute ago: a disruption in progress, not a problem.
    let recent = pod(json!({"phase": "Running"}), Some("1970-01-12T13:45:40Z"));
    obs.pods.insert("r-t0".into(), vec![&recent]);
    let p = plan(&r, &obs, &now());
    assert_eq!(p.status.trials[0].reason, None);
    assert_eq!(p.status.trials[0].phase, TrialPhase::Restarting);
}

fn running_pod() -> Pod {
    pod(
        json!({"phase": "Running", "containerStatuses": [{"name": "worker", "image": "", "imageID": "",
                "ready": true, "restartCount": 0, "state": {"running": {}}}]}),
        None,
    )
}

fn evals(values: &[f64]) -> Vec<EvalPoint> {
    values
        .iter()
        .enumerate()
        .map(|(i, v)| EvalPoint {
            step: (i as u64 + 1) * 100,
            cer: *v,
            wer: 1.0,
            extra_cer: Default::default(),
            decoding: None,
            reading_width: None,
        })
        .collect()
}

fn progress(step: u64, checkpoint: Option<u64>) -> TrialProgress {
    serde_json::from_value(json!({"phase": "Running", "step": step, "max_steps": 1000,
            "latest": {"step": step, "cer": 0.9, "wer": 1.0},
            "checkpoint": checkpoint.map(|c| json!({"step": c, "url": format!("s3://b/p/r/r-t0/checkpoints/step-{c}")})),
            "updated": "2026-01-01T00:00:00Z"}))
        .unwrap()
}

#[test]
fn a_trial_worse_than_the_median_is_suspended_then_deleted_once_checkpointed() {
    let mut r = run(json!({"earlyStopping": {"startStep": 200, "minTrialsRequired": 2}}));
    let jobs = [job("r-t0"), job("r-t1"), job("r-t2")];
    let live = running_pod();
    let mut obs = Observed::default();
    for j in &jobs {
        let n = j.metadata.name.clone().unwrap();
        obs.jobs.insert(n.clone(), j);
        obs.pods.insert(n, vec![&live]);
    }
    obs.history.insert("r-t0".into(), evals(&[0.95, 0.9]));
    obs.history.insert("r-t1".into(), evals(&[0.6, 0.3, 0.2]));
    obs.history.insert("r-t2".into(), evals(&[0.7, 0.4]));
    obs.progress.insert("r-t0".into(), progress(200, Some(100)));

    // Before startStep nothing is decided, whatever the numbers.
    let mut early = Observed::default();
    for (k, v) in &obs.jobs {
        early.jobs.insert(k.clone(), v);
    }
    early.pods = obs.pods.clone();
    for (k, v) in &obs.history {
        early.history.insert(k.clone(), v[..1].to_vec());
    }
    let p = plan(&r, &early, &now());
    assert!(p.status.trials.iter().all(|t| t.early_stopping.is_none()));
    assert!(p.set_suspend.is_empty() && p.delete.is_empty());

    // At step 200: best 0.9 against the median of 0.45 and 0.55. Its checkpoint (step 100)
    // is older: its Job is suspended so that the worker checkpoints.
    let p = plan(&r, &obs, &now());
    let t0 = &p.status.trials[0];
    assert_eq!(t0.phase, TrialPhase::Running);
    assert_eq!(t0.reason.as_deref(), Some("EarlyStopping"));
    let d = t0.early_stopping.unwrap();
    assert_eq!((d.step, d.best, d.trials), (200, 0.9, 2));
    assert!((d.median - 0.5).abs() < 1e-12);
    assert_eq!(p.set_suspend, vec![("r-t0".to_string(), true)]);
    assert!(p.delete.is_empty());
    let ev: Vec<_> = p
        .events
        .iter()
        .filter(|e| e.reason == "TrialEarlyStopped")
        .collect();
    assert_eq!(ev.len(), 1);
    assert!(ev[0].message.contains("best cer 0.9000"), "{:?}", ev[0]);
    assert_eq!(p.status.trials[1].early_stopping, None);
    assert_ne!(p.status.best_trial.as_deref(), Some("r-t0"));

    // Next reconcile: suspended, its pod stopping (being deleted), the new checkpoint not
    // reported yet: wait; no preemption is counted.
    r.status = Some(p.status.clone());
    let mut suspended = job("r-t0");
    suspended.spec.as_mut().unwrap().suspend = Some(true);
    let stopping = pod(json!({"phase": "Running"}), Some("1970-01-12T13:46:30Z"));
    obs.jobs.insert("r-t0".into(), &suspended);
    obs.pods.insert("r-t0".into(), vec![&stopping]);
    let p = plan(&r, &obs, &now());
    let t0 = &p.status.trials[0];
    assert_eq!((t0.phase, t0.preemptions), (TrialPhase::Running, 0));
    assert!(p.set_suspend.is_empty() && p.delete.is_empty());
    assert!(!p
        .events
        .iter()
        .any(|e| e.reason == "TrialEarlyStopped" || e.reason == "TrialPreempted"));

    // The worker checkpointed at step 230: its Job is deleted, the trial is EarlyStopped
    // and its slot is free (the run has no more trials to start).
    r.status = Some(p.status.clone());
    obs.progress.insert("r-t0".into(), progress(230, Some(230)));
    let p = plan(&r, &obs, &now());
    let t0 = &p.status.trials[0];
    assert_eq!(t0.phase, TrialPhase::EarlyStopped);
    assert!(t0
        .message
        .as_deref()
        .unwrap()
        .contains("checkpoint at step 230 kept"));
    assert_eq!(p.delete, vec!["r-t0".to_string()]);
    assert_eq!(p.status.counts.early_stopped, 1);
    assert_eq!(p.status.counts.running, 2);
    assert_eq!(p.status.trials_done.as_deref(), Some("1/3"));

    // The Job is gone: it stays EarlyStopped and is not started again.
    r.status = Some(p.status.clone());
    obs.jobs.remove("r-t0");
    obs.pods.remove("r-t0");
    obs.progress.remove("r-t0");
    let p = plan(&r, &obs, &now());
    assert_eq!(p.status.trials[0].phase, TrialPhase::EarlyStopped);
    assert!(p.create.is_empty() && p.delete.is_empty());
    assert_eq!(p.status.trials[0].step, 230);

    // The other two succeed: so does the run, with the best of them.
    r.status = Some(p.status.clone());
    let done: Job =
        serde_json::from_value(json!({"metadata": {"name": "x"}, "spec": {"template": {}},
            "status": {"conditions": [{"type": "Complete", "status": "True"}]}}))
        .unwrap();
    obs.jobs.insert("r-t1".into(), &done);
    obs.jobs.insert("r-t2".into(), &done);
    obs.pods.clear();
    for (t, cer) in [("r-t1", 0.2), ("r-t2", 0.4)] {
        obs.progress.insert(
            t.into(),
            serde_json::from_value(
                json!({"phase": "Succeeded", "step": 1000, "max_steps": 1000,
                    "best": {"step": 300, "cer": cer, "wer": 0.5},
                    "model": {"url": format!("s3://b/p/r/{t}/model"), "sha256": "ab", "cer": cer},
                    "updated": "2026-01-01T00:00:00Z"}),
            )
            .unwrap(),
        );
    }
    let p = plan(&r, &obs, &now());
    assert_eq!(p.status.phase, Some(RunPhase::Succeeded));
    assert_eq!(p.status.trials_done.as_deref(), Some("3/3"));
    assert_eq!(p.status.best_model.as_ref().unwrap().trial, "r-t1");
}

#[test]
fn a_stopped_trial_whose_checkpoint_is_already_safe_is_deleted_at_once() {
    let r = run(
        json!({"earlyStopping": {"minTrialsRequired": 1}, "search": {"maxTrials": 3, "parallelism": 2}}),
    );
    let jobs = [job("r-t0"), job("r-t1")];
    let live = running_pod();
    let mut obs = Observed::default();
    for j in &jobs {
        let n = j.metadata.name.clone().unwrap();
        obs.jobs.insert(n.clone(), j);
        obs.pods.insert(n, vec![&live]);
    }
    obs.history.insert("r-t0".into(), evals(&[0.95]));
    obs.history.insert("r-t1".into(), evals(&[0.5]));
    obs.progress.insert("r-t0".into(), progress(100, Some(100)));
    let p = plan(&r, &obs, &now());
    assert_eq!(p.status.trials[0].phase, TrialPhase::EarlyStopped);
    assert_eq!(p.delete, vec!["r-t0".to_string()]);
    assert!(p.set_suspend.is_empty());
    // Its slot is free: the third trial starts.
    assert_eq!(p.create.len(), 1);
    // Without spec.earlyStopping the same numbers stop nothing.
    let p = plan(
        &run(json!({"search": {"maxTrials": 3, "parallelism": 2}})),
        &obs,
        &now(),
    );
    assert!(p.status.trials[..2]
        .iter()
        .all(|t| t.phase == TrialPhase::Running));
    assert!(p.delete.is_empty() && p.create.is_empty());
}

proptest! {
    #[test]
    fn never_more_active_than_parallelism(par in 1i32..6, done in proptest::collection::vec(any::<bool>(), 6)) {
        let r = run(json!({"hyperparameters": {"seed": [1, 2, 3, 4, 5, 6]}, "search": {"maxTrials": 6, "parallelism": par}}));
        // Some trials already have Jobs: finished (Complete) or still active.
        let jobs: Vec<Job> = done.iter().enumerate().take(par as usize).map(|(i, d)| {
            let conds = if *d { json!([{"type": "Complete", "status": "True"}]) } else { json!([]) };
            serde_json::from_value(json!({"metadata": {"name": format!("r-t{i}")}, "spec": {"suspend": false, "template": {}}, "status": {"conditions": conds}})).unwrap()
        }).collect();
        let mut obs = Observed::default();
        for j in &jobs {
            obs.jobs.insert(j.metadata.name.clone().unwrap(), j);
        }
        let p = plan(&r, &obs, &now());
        let active = p.status.trials.iter().filter(|t| t.phase.is_active()).count() as i32;
        prop_assert!(active <= par);
        let finished = done.iter().take(par as usize).filter(|d| **d).count() as i32;
        prop_assert_eq!(p.create.len() as i32, finished.min(6 - par));
        prop_assert_eq!(p.status.counts.total, 6);
        let c = p.status.counts;
        prop_assert_eq!(c.pending + c.running + c.succeeded + c.failed, 6);
    }
}
