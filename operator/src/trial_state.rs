//! A trial's status from what Kubernetes and the worker report: its Job, its pods, and the
//! worker's `progress.json` (read from storage while it runs, or from the pod's termination
//! message when it ends). Pure: the local runner feeds it the same records.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use textrec_contract::exit::{CONFIG_ERROR, INTERRUPTED};
use textrec_contract::metrics::EvalPoint;
use textrec_contract::TrialProgress;

use crate::crd::{CheckpointStatus, ObjectiveMetric, TrialPhase, TrialStatus};
use crate::job::CONTAINER;
use crate::util::truncate;

/// Longest trial message kept in status.
pub const MAX_MESSAGE: usize = 256;

/// What became of one pod of a trial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodOutcome {
    /// Not started or running.
    Live {
        /// The worker container is running.
        running: bool,
    },
    /// Finished successfully.
    Succeeded,
    /// Lost to a disruption (`DisruptionTarget`) or stopped after checkpointing (exit 75).
    Preempted,
    /// Exit 78: the config cannot work.
    ConfigError,
    /// Any other failure (counts against `backoffLimit`).
    Failed,
}

fn exit_code(pod: &Pod) -> Option<i32> {
    let st = pod.status.as_ref()?;
    st.container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == CONTAINER)?
        .state
        .as_ref()?
        .terminated
        .as_ref()
        .map(|t| t.exit_code)
}

/// The worker's termination message, if the pod ended and left one.
pub fn termination_message(pod: &Pod) -> Option<&str> {
    let st = pod.status.as_ref()?;
    for c in st.container_statuses.as_ref()? {
        if c.name == CONTAINER {
            return c.state.as_ref()?.terminated.as_ref()?.message.as_deref();
        }
    }
    None
}

/// The outcome of one pod.
pub fn pod_outcome(pod: &Pod) -> PodOutcome {
    let st = pod.status.as_ref();
    let disrupted = st.and_then(|s| s.conditions.as_ref()).is_some_and(|cs| {
        cs.iter()
            .any(|c| c.type_ == "DisruptionTarget" && c.status == "True")
    });
    let phase = st.and_then(|s| s.phase.as_deref()).unwrap_or("Pending");
    match phase {
        "Succeeded" => PodOutcome::Succeeded,
        "Failed" => {
            if disrupted {
                return PodOutcome::Preempted;
            }
            match exit_code(pod) {
                Some(INTERRUPTED) => PodOutcome::Preempted,
                Some(CONFIG_ERROR) => PodOutcome::ConfigError,
                _ => PodOutcome::Failed,
            }
        }
        _ if disrupted || pod.metadata.deletion_timestamp.is_some() => PodOutcome::Preempted,
        _ => {
            let running = phase == "Running"
                && st
                    .and_then(|s| s.container_statuses.as_ref())
                    .is_some_and(|cs| {
                        cs.iter().any(|c| {
                            c.name == CONTAINER
                                && c.state.as_ref().is_some_and(|s| s.running.is_some())
                        })
                    });
            PodOutcome::Live { running }
        }
    }
}

fn job_condition<'a>(
    job: &'a Job,
    type_: &str,
) -> Option<&'a k8s_openapi::api::batch::v1::JobCondition> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")
}

/// Whether `job` has finished (`Complete` or `Failed`).
pub fn job_finished(job: &Job) -> bool {
    job_condition(job, "Complete").is_some() || job_condition(job, "Failed").is_some()
}

/// The objective metric of an evaluation.
pub fn metric_of(p: &EvalPoint, m: ObjectiveMetric) -> f64 {
    match m {
        ObjectiveMetric::Cer => p.cer,
        ObjectiveMetric::Wer => p.wer,
    }
}

/// Newest of two progress snapshots.
pub fn newest<'a>(
    a: Option<&'a TrialProgress>,
    b: Option<&'a TrialProgress>,
) -> Option<&'a TrialProgress> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if b.updated > a.updated { b } else { a }),
        (a, b) => a.or(b),
    }
}

/// Inputs about one trial.
#[derive(Debug, Default)]
pub struct TrialObservation<'a> {
    /// Its Job, if it exists.
    pub job: Option<&'a Job>,
    /// Its pods (current and earlier attempts).
    pub pods: Vec<&'a Pod>,
    /// The latest `progress.json` read from storage.
    pub progress: Option<&'a TrialProgress>,
}

/// The trial's new status entry and its final progress (with the model, when it succeeded).
pub fn observe(
    name: &str,
    params: &str,
    prev: Option<&TrialStatus>,
    obs: &TrialObservation<'_>,
    metric: ObjectiveMetric,
) -> (TrialStatus, Option<TrialProgress>) {
    // Progress: the newest of storage and any termination message.
    let mut from_pods: Vec<TrialProgress> = obs
        .pods
        .iter()
        .filter_map(|p| termination_message(p))
        .filter_map(|m| serde_json::from_str::<TrialProgress>(m).ok())
        .collect();
    from_pods.sort_by_key(|p| p.updated);
    let progress = newest(obs.progress, from_pods.last()).cloned();

    let mut preempted = 0;
    let mut failed = 0;
    let mut config_error: Option<&Pod> = None;
    let mut any_running = false;
    let mut any_live = false;
    let mut last_failed: Option<&Pod> = None;
    for pod in &obs.pods {
        match pod_outcome(pod) {
            PodOutcome::Preempted => preempted += 1,
            PodOutcome::Failed => {
                failed += 1;
                last_failed = Some(pod);
            }
            PodOutcome::ConfigError => config_error = Some(pod),
            PodOutcome::Live { running } => {
                any_live = true;
                any_running |= running;
            }
            PodOutcome::Succeeded => {}
        }
    }
    let prev_pre = prev.map_or(0, |p| p.preemptions);
    let prev_restarts = prev.map_or(0, |p| p.restarts);
    // Pods of finished attempts may be garbage-collected: never let counts go backwards.
    let preemptions = prev_pre.max(preempted);
    let restarts = prev_restarts.max(failed);

    let mut message = None;
    let phase = match obs.job {
        None => match prev {
            Some(p) if p.phase.is_terminal() => p.phase,
            _ => TrialPhase::Pending,
        },
        Some(job) => {
            if job_condition(job, "Complete").is_some()
                || job_condition(job, "SuccessCriteriaMet").is_some()
            {
                TrialPhase::Succeeded
            } else if let Some(c) =
                job_condition(job, "Failed").or_else(|| job_condition(job, "FailureTarget"))
            {
                let why = if let Some(pod) = config_error {
                    let detail = progress
                        .as_ref()
                        .and_then(|p| p.message.clone())
                        .or_else(|| termination_message(pod).map(str::to_string))
                        .unwrap_or_default();
                    format!("configuration error (exit {CONFIG_ERROR}): {detail}")
                } else {
                    let reason = c.reason.clone().unwrap_or_default();
                    let detail = c.message.clone().unwrap_or_default();
                    let exit = last_failed.and_then(exit_code).map(|code| {
                        format!(
                            "; last exit {code}: {}",
                            textrec_contract::exit::describe(code)
                        )
                    });
                    format!("{reason}: {detail}{}", exit.unwrap_or_default())
                };
                message = Some(truncate(why.trim(), MAX_MESSAGE));
                TrialPhase::Failed
            } else if job.spec.as_ref().and_then(|s| s.suspend).unwrap_or(false) {
                TrialPhase::Restarting
            } else if any_running {
                TrialPhase::Running
            } else if preempted + failed > 0
                || (prev.is_some_and(|p| p.phase == TrialPhase::Running) && !any_live)
            {
                TrialPhase::Restarting
            } else {
                TrialPhase::Starting
            }
        }
    };
    if phase == TrialPhase::Restarting {
        if let Some(c) = progress.as_ref().and_then(|p| p.checkpoint.as_ref()) {
            message = Some(format!("resuming from checkpoint at step {}", c.step));
        }
    }

    let (step, latest, best, best_extra_cer, best_read, checkpoint) = match &progress {
        Some(p) => (
            p.step,
            p.latest.as_ref().map(|e| metric_of(e, metric)),
            p.best.as_ref().map(|e| metric_of(e, metric)),
            p.best
                .as_ref()
                .map(|e| e.extra_cer.clone())
                .unwrap_or_default(),
            p.best
                .as_ref()
                .map_or((None, None), |e| (e.decoding, e.reading_width)),
            p.checkpoint.as_ref().map(|c| CheckpointStatus {
                step: c.step,
                url: c.url.clone(),
            }),
        ),
        None => match prev {
            Some(p) => (
                p.step,
                p.latest_metric,
                p.best_metric,
                p.best_extra_cer.clone(),
                (p.best_decoding, p.best_reading_width),
                p.checkpoint.clone(),
            ),
            None => (0, None, None, Default::default(), (None, None), None),
        },
    };
    let (best_decoding, best_reading_width) = best_read;
    let status = TrialStatus {
        name: name.to_string(),
        phase,
        params: params.to_string(),
        step,
        latest_metric: latest,
        best_metric: best,
        best_extra_cer,
        best_decoding,
        best_reading_width,
        restarts,
        preemptions,
        checkpoint,
        // Why its pod cannot start is the run plan's to say (crate::pod_problems); a failed or
        // early-stopped trial keeps the reason it ended with.
        reason: if matches!(phase, TrialPhase::Failed | TrialPhase::EarlyStopped) {
            prev.and_then(|p| p.reason.clone())
        } else {
            None
        },
        message: message.or_else(|| {
            if matches!(phase, TrialPhase::Failed | TrialPhase::EarlyStopped) {
                prev.and_then(|p| p.message.clone())
            } else {
                None
            }
        }),
        // A decision to stop early stands (the run plan carries it out).
        early_stopping: prev.and_then(|p| p.early_stopping),
    };
    (status, progress)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use textrec_contract::manifest::DecodeMode;

    fn pod(phase: &str, exit: Option<i32>, disrupted: bool) -> Pod {
        let mut status = json!({"phase": phase});
        if let Some(code) = exit {
            status["containerStatuses"] = json!([{"name": "worker", "image": "", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": code}}}]);
        }
        if disrupted {
            status["conditions"] = json!([{"type": "DisruptionTarget", "status": "True"}]);
        }
        serde_json::from_value(json!({"metadata": {"name": "p"}, "status": status})).unwrap()
    }

    fn job(conds: serde_json::Value) -> Job {
        serde_json::from_value(json!({"metadata": {"name": "t"}, "spec": {"template": {}}, "status": {"conditions": conds}})).unwrap()
    }

    #[test]
    fn pod_outcomes_follow_the_failure_policy() {
        assert_eq!(
            pod_outcome(&pod("Failed", Some(137), true)),
            PodOutcome::Preempted
        );
        assert_eq!(
            pod_outcome(&pod("Failed", Some(75), false)),
            PodOutcome::Preempted
        );
        assert_eq!(
            pod_outcome(&pod("Failed", Some(78), false)),
            PodOutcome::ConfigError
        );
        assert_eq!(
            pod_outcome(&pod("Failed", Some(1), false)),
            PodOutcome::Failed
        );
        assert_eq!(
            pod_outcome(&pod("Succeeded", Some(0), false)),
            PodOutcome::Succeeded
        );
        assert_eq!(
            pod_outcome(&pod("Pending", None, false)),
            PodOutcome::Live { running: false }
        );
    }

    #[test]
    fn counts_never_go_backwards_when_pods_are_collected() {
        let prev = TrialStatus {
            name: "t".into(),
            phase: TrialPhase::Running,
            params: String::new(),
            step: 40,
            latest_metric: Some(0.3),
            best_metric: Some(0.3),
            best_extra_cer: Default::default(),
            best_decoding: None,
            best_reading_width: None,
            restarts: 2,
            preemptions: 3,
            checkpoint: None,
            reason: None,
            message: None,
            early_stopping: None,
        };
        let j = job(json!([]));
        let obs = TrialObservation {
            job: Some(&j),
            pods: vec![],
            progress: None,
        };
        let (s, _) = observe("t", "", Some(&prev), &obs, ObjectiveMetric::Cer);
        assert_eq!((s.restarts, s.preemptions, s.step), (2, 3, 40));
        // Its pod vanished while it was running: it is being replaced.
        assert_eq!(s.phase, TrialPhase::Restarting);
    }

    #[test]
    fn failed_job_reports_the_last_exit_code() {
        let j = job(
            json!([{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"}]),
        );
        let p1 = pod("Failed", Some(1), false);
        let p2 = pod("Failed", Some(137), true);
        let obs = TrialObservation {
            job: Some(&j),
            pods: vec![&p1, &p2],
            progress: None,
        };
        let (s, _) = observe("t", "", None, &obs, ObjectiveMetric::Cer);
        assert_eq!(s.phase, TrialPhase::Failed);
        assert_eq!((s.restarts, s.preemptions), (1, 1));
        assert!(s.message.unwrap().starts_with("BackoffLimitExceeded"));
    }

    #[test]
    fn wer_objective_reads_wer() {
        let p: TrialProgress =
            serde_json::from_value(json!({"phase": "Running", "step": 5, "max_steps": 10,
            "latest": {"step": 5, "cer": 0.1, "wer": 0.4}, "updated": "2026-01-01T00:00:00Z"}))
            .unwrap();
        let j = job(json!([]));
        let obs = TrialObservation {
            job: Some(&j),
            pods: vec![],
            progress: Some(&p),
        };
        let (s, _) = observe("t", "", None, &obs, ObjectiveMetric::Wer);
        assert_eq!(s.latest_metric, Some(0.4));
    }

    #[test]
    fn extra_validation_sets_of_the_best_evaluation_reach_the_status() {
        let p: TrialProgress = serde_json::from_value(json!({
            "phase": "Running", "step": 400, "max_steps": 800,
            "latest": {"step": 400, "cer": 0.2, "wer": 0.5, "extra_cer": {"unseen-fonts": 0.4}},
            "best": {"step": 200, "cer": 0.1, "wer": 0.3, "extra_cer": {"unseen-fonts": 0.25}},
            "updated": "2026-01-01T00:00:00Z"}))
        .unwrap();
        let j = job(json!([]));
        let obs = TrialObservation {
            job: Some(&j),
            pods: vec![],
            progress: Some(&p),
        };
        let (s, _) = observe("t", "", None, &obs, ObjectiveMetric::Cer);
        assert_eq!((s.latest_metric, s.best_metric), (Some(0.2), Some(0.1)));
        assert_eq!(s.best_extra_cer.get("unseen-fonts"), Some(&0.25));
        // Kept when a later observation has no progress to read.
        let obs = TrialObservation {
            job: Some(&j),
            pods: vec![],
            progress: None,
        };
        let (again, _) = observe("t", "", Some(&s), &obs, ObjectiveMetric::Cer);
        assert_eq!(again.best_extra_cer, s.best_extra_cer);
    }

    #[test]
    fn a_finished_trials_best_says_how_it_was_read() {
        let running: TrialProgress = serde_json::from_value(json!({
            "phase": "Running", "step": 400, "max_steps": 400,
            "best": {"step": 400, "cer": 0.09, "wer": 0.3, "extra_cer": {"unseen-fonts": 0.2}},
            "updated": "2026-01-01T00:00:00Z"}))
        .unwrap();
        let j = job(json!([]));
        let obs = |p| TrialObservation {
            job: Some(&j),
            pods: vec![],
            progress: p,
        };
        let (s, _) = observe("t", "", None, &obs(Some(&running)), ObjectiveMetric::Cer);
        assert_eq!(s.best_decoding, None);
        // Read again with the decoding the model chose, once it is written.
        let done: TrialProgress = serde_json::from_value(json!({
            "phase": "Succeeded", "step": 400, "max_steps": 400,
            "best": {"step": 400, "cer": 0.06, "wer": 0.2, "extra_cer": {"unseen-fonts": 0.15},
                     "decoding": "ctc-lm", "reading_width": 1.1},
            "updated": "2026-01-01T00:00:00Z"}))
        .unwrap();
        assert_eq!(s.best_reading_width, None);
        let (s, _) = observe("t", "", Some(&s), &obs(Some(&done)), ObjectiveMetric::Cer);
        assert_eq!(s.best_decoding, Some(DecodeMode::CtcLm));
        assert_eq!(s.best_reading_width, Some(1.1));
        assert_eq!(s.best_metric, Some(0.06));
        assert_eq!(s.best_extra_cer.get("unseen-fonts"), Some(&0.15));
        let (again, _) = observe("t", "", Some(&s), &obs(None), ObjectiveMetric::Cer);
        assert_eq!(again.best_decoding, Some(DecodeMode::CtcLm));
        assert_eq!(again.best_reading_width, Some(1.1));
    }
}
