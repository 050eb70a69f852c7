//! The TrainingRun reconcile as a pure function: spec + observed children + progress → the Jobs
//! to create or (un)suspend, the new status, and the events to record.
//!
//! The controller (and the local runner) only gather inputs and carry out the plan.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use textrec_contract::metrics::EvalPoint;
use textrec_contract::TrialProgress;

use crate::conditions;
use crate::crd::{RunPhase, TrainingRun, TrainingRunStatus, TrialCounts, TrialPhase, TrialStatus};
use crate::lineage::Parent;
use crate::pod_problems::PodProblem;
use crate::references::Reference;
use crate::util::truncate;
use crate::validate::{check_volume_policy, plan_trials, PlannedTrial, VolumePolicy};

mod run_status;
#[cfg(test)]
mod tests;
mod trials;

use run_status::{invalid_spec, set_outcome, set_running, set_valid, RunningCondition};
use trials::{observe_trials, resolve_parent, start_trials, suspensions, TrialsObserved};

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
    /// Jobs to delete (with their pods): trials stopped early, once their checkpoint is safe.
    pub delete: Vec<String>,
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
    /// Every evaluation of each trial known so far, oldest first, by trial name (finished
    /// trials too): what `spec.earlyStopping` compares trials on. Empty when it is off.
    pub history: BTreeMap<String, Vec<EvalPoint>>,
    /// Objects the spec names that were looked up and do not exist (no trial starts until they
    /// do). Those that could not be looked up (no permission) are not here.
    pub missing: Vec<Reference>,
    /// Why a trial's Job could not create its pod (from `FailedCreate` events), by trial name:
    /// only for Jobs that have no pod.
    pub job_problems: BTreeMap<String, PodProblem>,
    /// Which volumes trials can be given where they run (the operator's configuration).
    pub volume_policy: VolumePolicy,
    /// `spec.initFrom` resolved against the objects it names, when the caller looked it up
    /// (only needed until `status.initFrom` records the parent).
    pub parent: Option<Parent>,
}

/// Reason of the `Valid` condition while `spec.initFrom` cannot be resolved.
pub const INIT_FROM_NOT_READY: &str = "InitFromNotReady";

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

    let mut trials = match plan_trials(name, &run.spec)
        .and_then(|t| check_volume_policy(&run.spec, observed.volume_policy).map(|()| t))
    {
        Ok(t) => t,
        Err(e) => return invalid_spec(status, prev, &e.to_string(), now),
    };
    let mut events = Vec::new();
    let waiting_parent =
        resolve_parent(run, &prev, observed, &mut trials, &mut status, &mut events);
    set_valid(
        &mut status,
        &prev,
        observed,
        trials.len(),
        waiting_parent.as_deref(),
        &mut events,
        now,
    );
    let TrialsObserved {
        mut entries,
        best_model,
        set_suspend_early,
        delete,
    } = observe_trials(run, observed, &prev, &trials, now, &mut events);

    let failed = count_in(&entries, TrialPhase::Failed);
    let succeeded = count_in(&entries, TrialPhase::Succeeded);
    let early_stopped = count_in(&entries, TrialPhase::EarlyStopped);
    let too_many_failures = failed > run.spec.max_failed_trials;
    let suspend = run.spec.suspend;

    // A trial whose Job exists holds its slot even while its pod cannot start: more Jobs would
    // only wait the same way.
    let blocked = |e: &TrialStatus| {
        e.phase == TrialPhase::Pending && observed.jobs.contains_key(e.name.as_str())
    };
    let occupied = entries
        .iter()
        .filter(|e| e.phase.is_active() || blocked(e))
        .count() as i32;
    let create = if !suspend
        && !too_many_failures
        && observed.missing.is_empty()
        && waiting_parent.is_none()
    {
        let slots = (run.spec.search.parallelism - occupied).max(0);
        start_trials(run, observed, &trials, &mut entries, slots, &mut events)
    } else {
        Vec::new()
    };
    let want_suspended = suspend || too_many_failures;
    let set_suspend = suspensions(
        observed,
        &trials,
        &entries,
        want_suspended,
        &set_suspend_early,
    );

    let total = trials.len() as i32;
    let counts = TrialCounts {
        total,
        pending: count_in(&entries, TrialPhase::Pending),
        running: entries.iter().filter(|e| e.phase.is_active()).count() as i32,
        succeeded,
        failed,
        early_stopped,
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
        generation,
        now,
    );
    let blocked_entries: Vec<&TrialStatus> = entries.iter().filter(|e| blocked(e)).collect();
    set_running(
        &mut status,
        &RunningCondition {
            phase,
            counts: &counts,
            training: count_in(&entries, TrialPhase::Running),
            blocked: &blocked_entries,
            missing: observed.missing.first(),
            waiting_parent: waiting_parent.is_some(),
        },
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
    set_outcome(
        &mut status,
        prev.phase,
        phase,
        best_model.as_ref(),
        &failed_msg,
        &format!("{succeeded} of {total} trials succeeded"),
        &mut events,
        now,
    );

    status.phase = Some(phase);
    status.trials_done = Some(format!("{}/{}", succeeded + failed + early_stopped, total));
    status.counts = counts;
    let stopped = |n: &String| {
        entries
            .iter()
            .any(|e| &e.name == n && e.early_stopping.is_some())
    };
    status.best_trial = best_trial(&entries, run.spec.objective.direction)
        .or(prev.best_trial)
        .filter(|n| !stopped(n));
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
    let active = ((occupied > 0 || !create.is_empty()) && !want_suspended)
        || !observed.missing.is_empty()
        || waiting_parent.is_some();
    status.message = status.message.map(|m| truncate(&m, MAX_RUN_MESSAGE));
    RunPlan {
        create,
        set_suspend,
        delete,
        status,
        events,
        active,
    }
}

fn count_in(entries: &[TrialStatus], p: TrialPhase) -> i32 {
    entries.iter().filter(|e| e.phase == p).count() as i32
}

/// Name of the trial with the best objective so far. Trials stopped early (or being stopped)
/// are left out: they end without a model, so the best trial is one whose model can become the
/// run's best model.
pub fn best_trial(entries: &[TrialStatus], direction: crate::crd::Direction) -> Option<String> {
    let mut best: Option<(&str, f64)> = None;
    for e in entries.iter().filter(|e| e.early_stopping.is_none()) {
        if let Some(v) = e.best_metric.filter(|v| v.is_finite()) {
            if best.is_none_or(|(_, b)| direction.better(v, b)) {
                best = Some((&e.name, v));
            }
        }
    }
    best.map(|(n, _)| n.to_string())
}

/// Trials planned from a run's spec.
pub fn planned(run: &TrainingRun) -> Result<Vec<PlannedTrial>, crate::validate::Invalid> {
    plan_trials(run.metadata.name.as_deref().unwrap_or_default(), &run.spec)
}
