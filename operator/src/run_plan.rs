//! The TrainingRun reconcile as a pure function: spec + observed children + progress → the Jobs
//! to create or (un)suspend, the new status, and the events to record.
//!
//! The controller (and the local runner) only gather inputs and carry out the plan.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use textrec_contract::TrialProgress;

use crate::conditions;
use crate::crd::{
    BestModel, RunPhase, TrainingRun, TrainingRunStatus, TrialCounts, TrialPhase, TrialStatus,
};
use crate::job::build_job;
use crate::pod_problems::{same_cause, trial_problem, PodProblem};
use crate::references::Reference;
use crate::trial_state::{job_finished, observe, TrialObservation, MAX_MESSAGE};
use crate::util::truncate;
use crate::validate::{plan_trials, PlannedTrial};

/// Severity of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// Informational.
    Normal,
    /// Something went wrong.
    Warning,
}

/// An event to record on the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedEvent {
    /// Normal or Warning.
    pub severity: Severity,
    /// CamelCase reason (`TrialStarted`, `TrialPreempted`, …).
    pub reason: &'static str,
    /// Human message.
    pub message: String,
}

/// A trial to start: as planned from the spec, and as the Job that runs it in a cluster.
#[derive(Debug, Clone)]
pub struct NewTrial {
    /// The trial (its worker overrides, for a runner that starts it without a Job).
    pub trial: PlannedTrial,
    /// Its Job.
    pub job: Job,
}

/// What to do for a run.
#[derive(Debug, Clone, Default)]
pub struct RunPlan {
    /// Trials to start: their Jobs to create (server-side apply).
    pub create: Vec<NewTrial>,
    /// Existing Jobs whose `spec.suspend` must change: (name, suspend).
    pub set_suspend: Vec<(String, bool)>,
    /// The new status.
    pub status: TrainingRunStatus,
    /// Events to record.
    pub events: Vec<PlannedEvent>,
    /// Whether a trial is active (so progress should be polled again soon).
    pub active: bool,
}

/// Observed children of a run, by trial name.
#[derive(Debug, Default)]
pub struct Observed<'a> {
    /// Jobs by name.
    pub jobs: BTreeMap<String, &'a Job>,
    /// Pods by trial name.
    pub pods: BTreeMap<String, Vec<&'a Pod>>,
    /// Latest progress read from storage, by trial name.
    pub progress: BTreeMap<String, TrialProgress>,
    /// Objects the spec names that were looked up and do not exist (no trial starts until they
    /// do). Those that could not be looked up (no permission) are not here.
    pub missing: Vec<Reference>,
}

/// Longest `status.message` of a run (a scheduler's message about many nodes is long).
pub const MAX_RUN_MESSAGE: usize = 1024;

fn event(severity: Severity, reason: &'static str, message: String) -> PlannedEvent {
    PlannedEvent {
        severity,
        reason,
        message,
    }
}

/// Plan a reconcile of `run`.
pub fn plan(run: &TrainingRun, observed: &Observed<'_>, now: &Time) -> RunPlan {
    let generation = run.metadata.generation;
    let prev = run.status.clone().unwrap_or_default();
    let mut status = TrainingRunStatus {
        observed_generation: generation,
        conditions: prev.conditions.clone(),
        ..Default::default()
    };
    let name = run.metadata.name.as_deref().unwrap_or_default();

    let trials = match plan_trials(name, &run.spec) {
        Ok(t) => t,
        Err(e) => {
            conditions::set(
                &mut status.conditions,
                "Valid",
                false,
                "InvalidSpec",
                &e.to_string(),
                generation,
                now,
            );
            conditions::set(
                &mut status.conditions,
                "Running",
                false,
                "InvalidSpec",
                "the spec cannot run",
                generation,
                now,
            );
            status.phase = Some(RunPhase::Invalid);
            status.reason = Some("InvalidSpec".into());
            status.message = Some(truncate(&e.to_string(), MAX_RUN_MESSAGE));
            let mut events = Vec::new();
            if prev.phase != Some(RunPhase::Invalid) || prev.observed_generation != generation {
                events.push(event(Severity::Warning, "InvalidSpec", e.to_string()));
            }
            // Keep what was observed of earlier trials (a spec edit must not erase history).
            status.trials = prev.trials;
            status.best_trial = prev.best_trial;
            status.best_model = prev.best_model;
            return RunPlan {
                status,
                events,
                ..Default::default()
            };
        }
    };
    let mut events = Vec::new();
    match observed.missing.first() {
        None => conditions::set(
            &mut status.conditions,
            "Valid",
            true,
            "SpecValid",
            &format!("{} trials planned", trials.len()),
            generation,
            now,
        ),
        Some(first) => {
            let reason = first.kind.not_found_reason();
            let message = format!(
                "{}; no trial starts until {}",
                observed
                    .missing
                    .iter()
                    .map(Reference::not_found)
                    .collect::<Vec<_>>()
                    .join("; "),
                if observed.missing.len() == 1 {
                    "it exists"
                } else {
                    "they exist"
                }
            );
            let before = prev.conditions.iter().find(|c| c.type_ == "Valid");
            if before.is_none_or(|c| c.status != "False" || c.message != message) {
                events.push(event(
                    Severity::Warning,
                    "ReferenceNotFound",
                    message.clone(),
                ));
            }
            conditions::set(
                &mut status.conditions,
                "Valid",
                false,
                reason,
                &message,
                generation,
                now,
            );
            status.reason = Some(reason.into());
            status.message = Some(message.clone());
        }
    }

    let metric = run.spec.objective.metric;
    let direction = run.spec.objective.direction;
    let prev_by_name: BTreeMap<&str, &TrialStatus> =
        prev.trials.iter().map(|t| (t.name.as_str(), t)).collect();
    let mut entries = Vec::with_capacity(trials.len());
    // Trials whose pods cannot start, by cause: one event per cause, naming the trials.
    let mut cannot_start: Vec<(PodProblem, Vec<String>)> = Vec::new();
    let mut best_model: Option<BestModel> = prev.best_model.clone();
    let empty = Vec::new();
    for t in &trials {
        let obs = TrialObservation {
            job: observed.jobs.get(&t.name).copied(),
            pods: observed.pods.get(&t.name).unwrap_or(&empty).clone(),
            progress: observed.progress.get(&t.name),
        };
        let before = prev_by_name.get(t.name.as_str()).copied();
        let (mut entry, progress) = observe(&t.name, &t.params, before, &obs, metric);
        if let Some(b) = before.filter(|b| b.phase.is_terminal() && !entry.phase.is_terminal()) {
            // Failed because its pod could never start (below): its Job was suspended, which
            // alone would read as a restart. A trial that ended stays ended.
            entry.phase = b.phase;
            entry.reason = b.reason.clone();
            entry.message = b.message.clone();
        }
        if matches!(entry.phase, TrialPhase::Starting | TrialPhase::Restarting) {
            if let Some(p) = trial_problem(&obs.pods, now) {
                entry.phase = if p.permanent {
                    TrialPhase::Failed
                } else {
                    TrialPhase::Pending
                };
                entry.reason = Some(p.reason.clone());
                entry.message = Some(truncate(
                    &format!("{}: {} (pod {})", p.reason, p.message, p.pod),
                    MAX_MESSAGE,
                ));
                let new_cause = before
                    .and_then(|b| b.reason.as_deref())
                    .is_none_or(|r| !same_cause(r, &p.reason));
                if !p.permanent && new_cause {
                    match cannot_start
                        .iter_mut()
                        .find(|(q, _)| q.reason == p.reason && q.message == p.message)
                    {
                        Some((_, names)) => names.push(t.name.clone()),
                        None => cannot_start.push((p, vec![t.name.clone()])),
                    }
                }
            }
        }
        trial_events(before, &entry, &mut events);
        if entry.phase == TrialPhase::Succeeded {
            if let Some(m) = progress.as_ref().and_then(|p| p.model.as_ref()) {
                let value = match metric {
                    crate::crd::ObjectiveMetric::Cer => m.cer,
                    crate::crd::ObjectiveMetric::Wer => entry.best_metric.unwrap_or(m.cer),
                };
                let better = best_model
                    .as_ref()
                    .is_none_or(|b| direction.better(value, b.metric) || b.trial == t.name);
                if better {
                    best_model = Some(BestModel {
                        trial: t.name.clone(),
                        url: m.url.clone(),
                        sha256: m.sha256.clone(),
                        metric: value,
                        metric_name: metric.as_str().into(),
                    });
                }
            }
        }
        entries.push(entry);
    }
    for (p, names) in &cannot_start {
        events.push(event(
            Severity::Warning,
            "TrialCannotStart",
            format!(
                "{} {} cannot start: {}: {}",
                if names.len() == 1 { "trial" } else { "trials" },
                names.join(", "),
                p.reason,
                p.message
            ),
        ));
    }
    if best_model != prev.best_model {
        if let Some(b) = &best_model {
            events.push(event(
                Severity::Normal,
                "NewBestModel",
                format!(
                    "trial {} reached {} {:.4}: {}",
                    b.trial, b.metric_name, b.metric, b.url
                ),
            ));
        }
    }

    let count = |p: TrialPhase| entries.iter().filter(|e| e.phase == p).count() as i32;
    let failed = count(TrialPhase::Failed);
    let succeeded = count(TrialPhase::Succeeded);
    let too_many_failures = failed > run.spec.max_failed_trials;
    let suspend = run.spec.suspend;

    // Start trials while slots are free. A trial whose Job exists holds its slot even while its
    // pod cannot start: more Jobs would only wait the same way.
    let mut create = Vec::new();
    let blocked = |e: &TrialStatus| {
        e.phase == TrialPhase::Pending && observed.jobs.contains_key(e.name.as_str())
    };
    let occupied = entries
        .iter()
        .filter(|e| e.phase.is_active() || blocked(e))
        .count() as i32;
    let mut slots = (run.spec.search.parallelism - occupied).max(0);
    if !suspend && !too_many_failures && observed.missing.is_empty() {
        for (t, e) in trials.iter().zip(entries.iter_mut()) {
            if slots == 0 {
                break;
            }
            if e.phase == TrialPhase::Pending && !observed.jobs.contains_key(&t.name) {
                create.push(NewTrial {
                    trial: t.clone(),
                    job: build_job(run, t, false),
                });
                e.phase = TrialPhase::Starting;
                events.push(event(
                    Severity::Normal,
                    "TrialStarted",
                    format!("trial {} started ({})", t.name, t.params),
                ));
                slots -= 1;
            }
        }
    }
    // Suspend (or resume) existing unfinished Jobs: suspending a Job stops its pod with SIGTERM,
    // the worker checkpoints, and resuming starts a pod that continues from there.
    let want_suspended = suspend || too_many_failures;
    let mut set_suspend = Vec::new();
    for (t, e) in trials.iter().zip(entries.iter()) {
        if let Some(job) = observed.jobs.get(&t.name) {
            let is = job.spec.as_ref().and_then(|s| s.suspend).unwrap_or(false);
            if !e.phase.is_terminal() && is != want_suspended {
                set_suspend.push((t.name.clone(), want_suspended));
            } else if e.phase == TrialPhase::Failed && !job_finished(job) && !is {
                // Failed here because its pod can never start: stop the Job's waiting pod.
                set_suspend.push((t.name.clone(), true));
            }
        }
    }

    let total = trials.len() as i32;
    let counts = TrialCounts {
        total,
        pending: count_in(&entries, TrialPhase::Pending),
        running: entries.iter().filter(|e| e.phase.is_active()).count() as i32,
        succeeded,
        failed,
    };
    let all_done = entries.iter().all(|e| e.phase.is_terminal());
    let phase = if too_many_failures {
        RunPhase::Failed
    } else if all_done && succeeded > 0 {
        RunPhase::Succeeded
    } else if all_done {
        RunPhase::Failed
    } else if suspend {
        RunPhase::Suspended
    } else if counts.running > 0 {
        RunPhase::Running
    } else {
        RunPhase::Pending
    };

    let g = generation;
    conditions::set(
        &mut status.conditions,
        "Suspended",
        suspend && !phase.is_terminal(),
        if suspend {
            "SuspendedBySpec"
        } else {
            "NotSuspended"
        },
        if suspend {
            "spec.suspend is true: trials are stopped at their checkpoints"
        } else {
            ""
        },
        g,
        now,
    );
    // What keeps trials from running: the most common cause among them.
    let mut causes: Vec<(&str, usize, &TrialStatus)> = Vec::new();
    for e in entries.iter().filter(|e| blocked(e)) {
        let r = e.reason.as_deref().unwrap_or("CannotStart");
        match causes.iter_mut().find(|(c, _, _)| *c == r) {
            Some((_, n, _)) => *n += 1,
            None => causes.push((r, 1, e)),
        }
    }
    causes.sort_by_key(|(_, n, _)| std::cmp::Reverse(*n));
    let n_blocked = entries.iter().filter(|e| blocked(e)).count();
    let training = count_in(&entries, TrialPhase::Running);
    let mut running_msg = format!(
        "{training} running, {} starting or restarting, {} pending",
        counts.running - training,
        counts.pending
    );
    if let Some((reason, _, example)) = causes.first() {
        // The trial's message starts with the reason: "Unschedulable: 0/3 nodes are …".
        let detail = example.message.as_deref().unwrap_or(reason);
        running_msg.push_str(&format!("; {n_blocked} cannot start: {detail}"));
        if status.reason.is_none() {
            status.reason = Some(reason.to_string());
            status.message = Some(format!(
                "{n_blocked} of {total} trials cannot start: {detail}"
            ));
        }
    }
    let running_reason = match (phase, causes.first(), observed.missing.first()) {
        (RunPhase::Running, _, _) => "Running".to_string(),
        (_, Some((reason, _, _)), _) if !phase.is_terminal() => reason.to_string(),
        (_, _, Some(m)) if !phase.is_terminal() => m.kind.not_found_reason().to_string(),
        _ => format!("{phase:?}"),
    };
    conditions::set(
        &mut status.conditions,
        "Running",
        phase == RunPhase::Running,
        &running_reason,
        &running_msg,
        g,
        now,
    );
    conditions::set(
        &mut status.conditions,
        "Succeeded",
        phase == RunPhase::Succeeded,
        if phase == RunPhase::Succeeded {
            "TrialsSucceeded"
        } else {
            "NotFinished"
        },
        &match &best_model {
            Some(b) => format!(
                "best model from {}: {} {:.4}",
                b.trial, b.metric_name, b.metric
            ),
            None => String::new(),
        },
        g,
        now,
    );
    let failed_msg = if too_many_failures {
        format!(
            "{failed} trials failed, more than spec.maxFailedTrials ({})",
            run.spec.max_failed_trials
        )
    } else if phase == RunPhase::Failed {
        "no trial succeeded".to_string()
    } else {
        format!("{failed} of {total} trials failed")
    };
    conditions::set(
        &mut status.conditions,
        "Failed",
        phase == RunPhase::Failed,
        if phase == RunPhase::Failed {
            "TrialsFailed"
        } else {
            "NotFailed"
        },
        &failed_msg,
        g,
        now,
    );

    if prev.phase != Some(phase) {
        match phase {
            RunPhase::Succeeded => events.push(event(
                Severity::Normal,
                "RunSucceeded",
                format!("{succeeded} of {total} trials succeeded"),
            )),
            RunPhase::Failed => {
                events.push(event(Severity::Warning, "RunFailed", failed_msg.clone()))
            }
            RunPhase::Suspended => events.push(event(
                Severity::Normal,
                "RunSuspended",
                "spec.suspend is true".into(),
            )),
            _ => {}
        }
    }

    status.phase = Some(phase);
    status.trials_done = Some(format!("{}/{}", succeeded + failed, total));
    status.counts = counts;
    status.best_trial = best_trial(&entries, direction).or(prev.best_trial);
    status.best_model = best_model;
    status.start_time = prev
        .start_time
        .clone()
        .or_else(|| (!create.is_empty() || counts.running > 0).then(|| now.clone()));
    status.completion_time = if phase.is_terminal() {
        prev.completion_time.clone().or_else(|| Some(now.clone()))
    } else {
        None
    };
    status.trials = entries;
    // Look again soon while trials hold slots (progress, pods stuck terminating) or a referenced
    // object is missing (nothing watches it: the run starts once a reconcile finds it).
    let active =
        ((occupied > 0 || !create.is_empty()) && !want_suspended) || !observed.missing.is_empty();
    status.message = status.message.map(|m| truncate(&m, MAX_RUN_MESSAGE));
    RunPlan {
        create,
        set_suspend,
        status,
        events,
        active,
    }
}

fn count_in(entries: &[TrialStatus], p: TrialPhase) -> i32 {
    entries.iter().filter(|e| e.phase == p).count() as i32
}

/// Name of the trial with the best objective so far.
pub fn best_trial(entries: &[TrialStatus], direction: crate::crd::Direction) -> Option<String> {
    let mut best: Option<(&str, f64)> = None;
    for e in entries {
        if let Some(v) = e.best_metric.filter(|v| v.is_finite()) {
            if best.is_none_or(|(_, b)| direction.better(v, b)) {
                best = Some((&e.name, v));
            }
        }
    }
    best.map(|(n, _)| n.to_string())
}

fn trial_events(before: Option<&TrialStatus>, after: &TrialStatus, out: &mut Vec<PlannedEvent>) {
    let prev_phase = before.map(|b| b.phase);
    if after.preemptions > before.map_or(0, |b| b.preemptions) {
        let from = after
            .checkpoint
            .as_ref()
            .map(|c| format!(" from checkpoint step {}", c.step))
            .unwrap_or_default();
        out.push(event(
            Severity::Warning,
            "TrialPreempted",
            format!(
                "trial {} lost its pod to a disruption; resuming{from}",
                after.name
            ),
        ));
    }
    if after.restarts > before.map_or(0, |b| b.restarts) && after.phase != TrialPhase::Failed {
        out.push(event(
            Severity::Warning,
            "TrialRestarted",
            format!(
                "trial {} failed and is restarted ({} of the allowed restarts used)",
                after.name, after.restarts
            ),
        ));
    }
    if prev_phase != Some(after.phase) {
        match after.phase {
            TrialPhase::Succeeded => out.push(event(
                Severity::Normal,
                "TrialSucceeded",
                format!(
                    "trial {} finished at step {}{}",
                    after.name,
                    after.step,
                    after
                        .best_metric
                        .map(|m| format!(", best {m:.4}"))
                        .unwrap_or_default()
                ),
            )),
            TrialPhase::Failed => out.push(event(
                Severity::Warning,
                "TrialFailed",
                format!(
                    "trial {} failed: {}",
                    after.name,
                    after.message.clone().unwrap_or_default()
                ),
            )),
            _ => {}
        }
    }
}

/// Trials planned from a run's spec.
pub fn planned(run: &TrainingRun) -> Result<Vec<PlannedTrial>, crate::validate::Invalid> {
    plan_trials(run.metadata.name.as_deref().unwrap_or_default(), &run.spec)
}

#[cfg(test)]
mod tests {
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
            restarts: 0,
            preemptions: 0,
            checkpoint: None,
            reason: None,
            message: None,
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
}
