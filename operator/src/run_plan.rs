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
use crate::crd::{
    BestModel, EarlyStopStatus, RunPhase, TrainingRun, TrainingRunStatus, TrialCounts, TrialPhase,
    TrialStatus,
};
use crate::early_stopping::median_stop;
use crate::job::build_job;
use crate::lineage::{parent_overrides, Parent};
use crate::pod_problems::{same_cause, trial_problem, PodProblem};
use crate::references::Reference;
use crate::trial_state::{job_finished, metric_of, observe, TrialObservation, MAX_MESSAGE};
use crate::util::truncate;
use crate::validate::{check_volume_policy, plan_trials, PlannedTrial, VolumePolicy};

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

    let count = |p: TrialPhase| entries.iter().filter(|e| e.phase == p).count() as i32;
    let failed = count(TrialPhase::Failed);
    let succeeded = count(TrialPhase::Succeeded);
    let early_stopped = count(TrialPhase::EarlyStopped);
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

/// The plan for a spec that cannot run: `Valid` and `Running` false with the reason, one event
/// per new generation, and what was observed of earlier trials kept (a spec edit must not
/// erase history).
fn invalid_spec(
    mut status: TrainingRunStatus,
    prev: TrainingRunStatus,
    error: &str,
    now: &Time,
) -> RunPlan {
    let generation = status.observed_generation;
    conditions::set(
        &mut status.conditions,
        "Valid",
        false,
        "InvalidSpec",
        error,
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
    status.message = Some(truncate(error, MAX_RUN_MESSAGE));
    let mut events = Vec::new();
    if prev.phase != Some(RunPhase::Invalid) || prev.observed_generation != generation {
        events.push(event(Severity::Warning, "InvalidSpec", error.to_string()));
    }
    status.trials = prev.trials;
    status.best_trial = prev.best_trial;
    status.best_model = prev.best_model;
    status.init_from = prev.init_from;
    RunPlan {
        status,
        events,
        ..Default::default()
    }
}

/// Fine-tuning: give every trial the parent model's overrides once `spec.initFrom` resolves,
/// recording it in `status.initFrom`. The parent recorded when the run started wins over a
/// fresh resolution, so trials started later (and retries) read the same model. Returns why
/// no trial may start yet, while the parent is not resolved.
fn resolve_parent(
    run: &TrainingRun,
    prev: &TrainingRunStatus,
    observed: &Observed<'_>,
    trials: &mut [PlannedTrial],
    status: &mut TrainingRunStatus,
    events: &mut Vec<PlannedEvent>,
) -> Option<String> {
    run.spec.init_from.as_ref()?;
    let parent = match (&prev.init_from, &observed.parent) {
        (Some(p), _) => Parent::Resolved(p.clone()),
        (None, Some(p)) => p.clone(),
        (None, None) => Parent::Waiting {
            field: "spec.initFrom",
            message: "not resolved yet".into(),
        },
    };
    match parent {
        Parent::Resolved(p) => {
            for t in trials.iter_mut() {
                t.overrides.extend(parent_overrides(&p));
            }
            if prev.init_from.is_none() {
                events.push(event(
                    Severity::Normal,
                    "InitFromResolved",
                    format!(
                        "trials start from {} ({}{})",
                        p.url,
                        p.source,
                        p.sha256
                            .as_ref()
                            .map(|s| format!(", sha256 {s}"))
                            .unwrap_or_default()
                    ),
                ));
            }
            status.init_from = Some(p);
            None
        }
        Parent::Waiting { field, message } => Some(format!(
            "{field}: {message}; no trial starts until it resolves"
        )),
    }
}

/// The `Valid` condition of a spec that plans: true, or false while an object it names is
/// missing or its parent model is not resolved (then also the run's reason and message, and an
/// event when the message is new).
fn set_valid(
    status: &mut TrainingRunStatus,
    prev: &TrainingRunStatus,
    observed: &Observed<'_>,
    planned: usize,
    waiting_parent: Option<&str>,
    events: &mut Vec<PlannedEvent>,
    now: &Time,
) {
    let generation = status.observed_generation;
    let (reason, event_reason, message) = match (observed.missing.first(), waiting_parent) {
        (None, None) => {
            conditions::set(
                &mut status.conditions,
                "Valid",
                true,
                "SpecValid",
                &format!("{planned} trials planned"),
                generation,
                now,
            );
            return;
        }
        (None, Some(message)) => (
            INIT_FROM_NOT_READY,
            INIT_FROM_NOT_READY,
            message.to_string(),
        ),
        (Some(first), _) => {
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
            (first.kind.not_found_reason(), "ReferenceNotFound", message)
        }
    };
    let before = prev.conditions.iter().find(|c| c.type_ == "Valid");
    if before.is_none_or(|c| c.status != "False" || c.message != message) {
        events.push(event(Severity::Warning, event_reason, message.clone()));
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
    status.message = Some(message);
}

/// Every planned trial as observed in this reconcile, and what follows from it.
struct TrialsObserved {
    /// The trials' new status entries, in plan order.
    entries: Vec<TrialStatus>,
    /// The best model so far (the previous one unless a trial that succeeded beat it).
    best_model: Option<BestModel>,
    /// Trials stopped early whose Jobs are suspended now.
    set_suspend_early: Vec<String>,
    /// Trials stopped early whose Jobs are deleted now.
    delete: Vec<String>,
}

/// Observe each planned trial (its Job, pods and progress against its previous entry): its
/// phase, why its pod cannot start, whether it stops early, and whether its model is the new
/// best; with the events each change calls for.
fn observe_trials(
    run: &TrainingRun,
    observed: &Observed<'_>,
    prev: &TrainingRunStatus,
    trials: &[PlannedTrial],
    now: &Time,
    events: &mut Vec<PlannedEvent>,
) -> TrialsObserved {
    let metric = run.spec.objective.metric;
    let direction = run.spec.objective.direction;
    let prev_by_name: BTreeMap<&str, &TrialStatus> =
        prev.trials.iter().map(|t| (t.name.as_str(), t)).collect();
    let mut entries = Vec::with_capacity(trials.len());
    // Trials whose pods cannot start, by cause: one event per cause, naming the trials.
    let mut cannot_start: Vec<(PodProblem, Vec<String>)> = Vec::new();
    let mut best_model: Option<BestModel> = prev.best_model.clone();
    let empty = Vec::new();
    // Early stopping: each trial's (step, objective) history, and what to do about it.
    let histories: BTreeMap<&str, Vec<(u64, f64)>> = observed
        .history
        .iter()
        .map(|(t, h)| {
            (
                t.as_str(),
                h.iter().map(|e| (e.step, metric_of(e, metric))).collect(),
            )
        })
        .collect();
    let mut set_suspend_early = Vec::new();
    let mut delete = Vec::new();
    for t in trials {
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
            // Job problems are read only for Jobs without a pod (see `Observed::job_problems`).
            let problem = trial_problem(&obs.pods, now)
                .or_else(|| observed.job_problems.get(&t.name).cloned());
            if let Some(p) = problem {
                entry.phase = if p.permanent {
                    TrialPhase::Failed
                } else {
                    TrialPhase::Pending
                };
                entry.reason = Some(p.reason.clone());
                entry.message = Some(truncate(
                    &format!("{}: {} ({})", p.reason, p.message, p.source),
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
        if let Some((action, decided)) =
            early_stop(run, t.name.as_str(), &mut entry, observed, &histories)
        {
            if let Some(message) = decided {
                events.push(event(Severity::Normal, "TrialEarlyStopped", message));
            }
            match action {
                EarlyStop::Suspend => set_suspend_early.push(t.name.clone()),
                EarlyStop::Delete => delete.push(t.name.clone()),
                EarlyStop::Wait => {}
            }
            if let Some(b) = before {
                // Its pod is being stopped on purpose: no preemption.
                entry.preemptions = b.preemptions;
            }
        }
        trial_events(before, &entry, events);
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
    TrialsObserved {
        entries,
        best_model,
        set_suspend_early,
        delete,
    }
}

/// Start pending trials that have no Job yet, in plan order, while `slots` are free.
fn start_trials(
    run: &TrainingRun,
    observed: &Observed<'_>,
    trials: &[PlannedTrial],
    entries: &mut [TrialStatus],
    mut slots: i32,
    events: &mut Vec<PlannedEvent>,
) -> Vec<NewTrial> {
    let mut create = Vec::new();
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
    create
}

/// Existing Jobs whose `spec.suspend` must change: unfinished trials follow `want_suspended`
/// (suspending a Job stops its pod with SIGTERM, the worker checkpoints, and resuming starts a
/// pod that continues from there), trials stopped early are suspended until deleted, and a
/// trial failed because its pod can never start has its waiting pod stopped.
fn suspensions(
    observed: &Observed<'_>,
    trials: &[PlannedTrial],
    entries: &[TrialStatus],
    want_suspended: bool,
    set_suspend_early: &[String],
) -> Vec<(String, bool)> {
    let mut set_suspend = Vec::new();
    for (t, e) in trials.iter().zip(entries.iter()) {
        if let Some(job) = observed.jobs.get(&t.name) {
            let is = job.spec.as_ref().and_then(|s| s.suspend).unwrap_or(false);
            if e.early_stopping.is_some() {
                if set_suspend_early.contains(&t.name) && !is {
                    set_suspend.push((t.name.clone(), true));
                }
            } else if !e.phase.is_terminal() && is != want_suspended {
                set_suspend.push((t.name.clone(), want_suspended));
            } else if e.phase == TrialPhase::Failed && !job_finished(job) && !is {
                set_suspend.push((t.name.clone(), true));
            }
        }
    }
    set_suspend
}

/// What the `Running` condition is read from.
struct RunningCondition<'a> {
    phase: RunPhase,
    counts: &'a TrialCounts,
    /// Trials whose pod is training (the rest of `counts.running` is starting or restarting).
    training: i32,
    /// Trials whose Job exists and whose pod cannot start.
    blocked: &'a [&'a TrialStatus],
    missing: Option<&'a Reference>,
    waiting_parent: bool,
}

/// The `Running` condition: how many trials run, start and wait, and what keeps trials from
/// running (the most common cause among them, which also becomes the run's reason while it
/// has none).
fn set_running(
    status: &mut TrainingRunStatus,
    r: &RunningCondition<'_>,
    g: Option<i64>,
    now: &Time,
) {
    let mut causes: Vec<(&str, usize, &TrialStatus)> = Vec::new();
    for e in r.blocked {
        let reason = e.reason.as_deref().unwrap_or("CannotStart");
        match causes.iter_mut().find(|(c, _, _)| *c == reason) {
            Some((_, n, _)) => *n += 1,
            None => causes.push((reason, 1, e)),
        }
    }
    causes.sort_by_key(|(_, n, _)| std::cmp::Reverse(*n));
    let n_blocked = r.blocked.len();
    let mut message = format!(
        "{} running, {} starting or restarting, {} pending",
        r.training,
        r.counts.running - r.training,
        r.counts.pending
    );
    if let Some((reason, _, example)) = causes.first() {
        // The trial's message starts with the reason: "Unschedulable: 0/3 nodes are …".
        let detail = example.message.as_deref().unwrap_or(reason);
        message.push_str(&format!("; {n_blocked} cannot start: {detail}"));
        if status.reason.is_none() {
            status.reason = Some(reason.to_string());
            status.message = Some(format!(
                "{n_blocked} of {} trials cannot start: {detail}",
                r.counts.total
            ));
        }
    }
    let phase = r.phase;
    let reason = match (phase, causes.first(), r.missing) {
        (RunPhase::Running, _, _) => "Running".to_string(),
        (_, Some((reason, _, _)), _) if !phase.is_terminal() => reason.to_string(),
        (_, _, Some(m)) if !phase.is_terminal() => m.kind.not_found_reason().to_string(),
        _ if r.waiting_parent && !phase.is_terminal() => INIT_FROM_NOT_READY.to_string(),
        _ => format!("{phase:?}"),
    };
    conditions::set(
        &mut status.conditions,
        "Running",
        phase == RunPhase::Running,
        &reason,
        &message,
        g,
        now,
    );
}

/// The `Succeeded` and `Failed` conditions, and an event when the run enters a phase that
/// ends or pauses it.
#[allow(clippy::too_many_arguments)]
fn set_outcome(
    status: &mut TrainingRunStatus,
    prev_phase: Option<RunPhase>,
    phase: RunPhase,
    best_model: Option<&BestModel>,
    failed_msg: &str,
    succeeded_msg: &str,
    events: &mut Vec<PlannedEvent>,
    now: &Time,
) {
    let g = status.observed_generation;
    conditions::set(
        &mut status.conditions,
        "Succeeded",
        phase == RunPhase::Succeeded,
        if phase == RunPhase::Succeeded {
            "TrialsSucceeded"
        } else {
            "NotFinished"
        },
        &match best_model {
            Some(b) => format!(
                "best model from {}: {} {:.4}",
                b.trial, b.metric_name, b.metric
            ),
            None => String::new(),
        },
        g,
        now,
    );
    conditions::set(
        &mut status.conditions,
        "Failed",
        phase == RunPhase::Failed,
        if phase == RunPhase::Failed {
            "TrialsFailed"
        } else {
            "NotFailed"
        },
        failed_msg,
        g,
        now,
    );
    if prev_phase == Some(phase) {
        return;
    }
    match phase {
        RunPhase::Succeeded => events.push(event(
            Severity::Normal,
            "RunSucceeded",
            succeeded_msg.to_string(),
        )),
        RunPhase::Failed => events.push(event(
            Severity::Warning,
            "RunFailed",
            failed_msg.to_string(),
        )),
        RunPhase::Suspended => events.push(event(
            Severity::Normal,
            "RunSuspended",
            "spec.suspend is true".into(),
        )),
        _ => {}
    }
}

/// What early stopping does about one trial's Job in this reconcile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EarlyStop {
    /// Suspend it: the pod gets SIGTERM and the worker writes a checkpoint.
    Suspend,
    /// The checkpoint is safe: delete it.
    Delete,
    /// Nothing (waiting for the worker to checkpoint and exit, or the Job is gone).
    Wait,
}

/// Apply `spec.earlyStopping` to one trial's new status `entry`: decide (once) whether to stop
/// it, and carry out a decision. `None`: early stopping leaves it alone; otherwise what to do
/// with its Job, and the event to record when the rule decided just now.
///
/// A stopped trial loses nothing: its Job is deleted only once the trial reported a checkpoint
/// at or after the deciding step. Until then its Job is suspended: that is the graceful stop a
/// run's `suspend` uses (the pod gets SIGTERM, the worker checkpoints at once and exits 75),
/// rather than waiting for the next periodic checkpoint, which may be far away. When the
/// worker has exited and no such checkpoint was reported (it could not write one), the Job is
/// deleted all the same: what it saved is all there will be. Meanwhile the trial shows
/// `Running` with reason `EarlyStopping` and keeps its parallelism slot; once its Job is being
/// deleted it is `EarlyStopped`, which frees the slot and counts as finished.
fn early_stop(
    run: &TrainingRun,
    name: &str,
    entry: &mut TrialStatus,
    observed: &Observed<'_>,
    histories: &BTreeMap<&str, Vec<(u64, f64)>>,
) -> Option<(EarlyStop, Option<String>)> {
    let job = observed.jobs.get(name).copied();
    if entry.phase == TrialPhase::EarlyStopped {
        // Its deletion did not go through (or has not reached the cache yet): delete again.
        return job
            .filter(|j| j.metadata.deletion_timestamp.is_none())
            .map(|_| (EarlyStop::Delete, None));
    }
    let metric = run.spec.objective.metric.as_str();
    let why = |d: &EarlyStopStatus| {
        format!(
            "stopped early at step {}: best {metric} {:.4} is worse than {:.4}, the median of {} other trials' running averages",
            d.step, d.best, d.median, d.trials
        )
    };
    let mut event = None;
    if entry.early_stopping.is_none() {
        let spec = run.spec.early_stopping.as_ref()?;
        if entry.phase != TrialPhase::Running || run.spec.suspend || job.is_none_or(job_finished) {
            return None;
        }
        let mine = histories.get(name)?;
        let others: Vec<&[(u64, f64)]> = histories
            .iter()
            .filter(|(n, _)| **n != name)
            .map(|(_, h)| h.as_slice())
            .collect();
        let d = median_stop(
            mine,
            &others,
            run.spec.objective.direction,
            spec.start_step,
            spec.min_trials_required.max(1) as usize,
        )?;
        let d = EarlyStopStatus {
            step: d.step,
            best: d.best,
            median: d.median,
            trials: d.trials as i32,
        };
        event = Some(format!("trial {name} {}", why(&d)));
        entry.early_stopping = Some(d);
    }
    let d = entry.early_stopping?;
    if entry.phase.is_terminal() {
        // It finished on its own before the stop took effect: that stands.
        entry.early_stopping = None;
        return None;
    }
    let checkpointed = entry.checkpoint.as_ref().is_some_and(|c| c.step >= d.step);
    let suspended = job.is_some_and(|j| j.spec.as_ref().and_then(|s| s.suspend).unwrap_or(false));
    // A pod that has not ended, terminating ones included (the worker checkpoints during its
    // grace period), unless it is stuck terminating on a lost node.
    let stuck = entry.reason.as_deref() == Some(crate::pod_problems::STUCK_TERMINATING);
    let live = !stuck
        && observed.pods.get(name).is_some_and(|ps| {
            ps.iter().any(|p| {
                !matches!(
                    p.status.as_ref().and_then(|s| s.phase.as_deref()),
                    Some("Succeeded" | "Failed")
                )
            })
        });
    let action = if job.is_none() || checkpointed || (suspended && !live) {
        entry.phase = TrialPhase::EarlyStopped;
        entry.reason = Some("EarlyStopped".into());
        let kept = match &entry.checkpoint {
            Some(c) => format!("; checkpoint at step {} kept", c.step),
            None => String::new(),
        };
        entry.message = Some(truncate(&format!("{}{kept}", why(&d)), MAX_MESSAGE));
        if job.is_some() {
            EarlyStop::Delete
        } else {
            EarlyStop::Wait
        }
    } else {
        entry.phase = TrialPhase::Running;
        entry.reason = Some("EarlyStopping".into());
        entry.message = Some(truncate(
            &format!("{}; waiting for its checkpoint", why(&d)),
            MAX_MESSAGE,
        ));
        if suspended {
            EarlyStop::Wait
        } else {
            EarlyStop::Suspend
        }
    };
    Some((action, event))
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
}
