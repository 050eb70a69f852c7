//! The run's conditions, reason and message: a spec that cannot run, `Valid`, `Running`,
//! `Succeeded` and `Failed`, with the events their changes call for.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::{
    event, Observed, PlannedEvent, RunPlan, Severity, INIT_FROM_NOT_READY, MAX_RUN_MESSAGE,
};
use crate::conditions;
use crate::crd::{BestModel, RunPhase, TrainingRunStatus, TrialCounts, TrialStatus};
use crate::references::Reference;
use crate::util::truncate;

/// The plan for a spec that cannot run: `Valid` and `Running` false with the reason, one event
/// per new generation, and what was observed of earlier trials kept (a spec edit must not
/// erase history).
pub(super) fn invalid_spec(
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

/// The `Valid` condition of a spec that plans: true, or false while an object it names is
/// missing or its parent model is not resolved (then also the run's reason and message, and an
/// event when the message is new).
pub(super) fn set_valid(
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

/// What the `Running` condition is read from.
pub(super) struct RunningCondition<'a> {
    pub(super) phase: RunPhase,
    pub(super) counts: &'a TrialCounts,
    /// Trials whose pod is training (the rest of `counts.running` is starting or restarting).
    pub(super) training: i32,
    /// Trials whose Job exists and whose pod cannot start.
    pub(super) blocked: &'a [&'a TrialStatus],
    pub(super) missing: Option<&'a Reference>,
    pub(super) waiting_parent: bool,
}

/// The `Running` condition: how many trials run, start and wait, and what keeps trials from
/// running (the most common cause among them, which also becomes the run's reason while it
/// has none).
pub(super) fn set_running(status: &mut TrainingRunStatus, r: &RunningCondition<'_>, now: &Time) {
    let g = status.observed_generation;
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
pub(super) fn set_outcome(
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
