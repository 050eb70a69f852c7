//! Each trial in a reconcile: its parent model, what its Job, pods and progress say, early
//! stopping, the events its changes call for, which trials start and which Jobs (un)suspend.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::{event, NewTrial, Observed, PlannedEvent, Severity};
use crate::crd::{
    BestModel, EarlyStopStatus, TrainingRun, TrainingRunStatus, TrialPhase, TrialStatus,
};
use crate::early_stopping::median_stop;
use crate::job::build_job;
use crate::lineage::{parent_overrides, Parent};
use crate::pod_problems::{same_cause, trial_problem, PodProblem};
use crate::trial_state::{job_finished, metric_of, observe, TrialObservation, MAX_MESSAGE};
use crate::util::truncate;
use crate::validate::PlannedTrial;

/// Fine-tuning: give every trial the parent model's overrides once `spec.initFrom` resolves,
/// recording it in `status.initFrom`. The parent recorded when the run started wins over a
/// fresh resolution, so trials started later (and retries) read the same model. Returns why
/// no trial may start yet, while the parent is not resolved.
pub(super) fn resolve_parent(
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

/// Every planned trial as observed in this reconcile, and what follows from it.
pub(super) struct TrialsObserved {
    /// The trials' new status entries, in plan order.
    pub(super) entries: Vec<TrialStatus>,
    /// The best model so far (the previous one unless a trial that succeeded beat it).
    pub(super) best_model: Option<BestModel>,
    /// Trials stopped early whose Jobs are suspended now.
    pub(super) set_suspend_early: Vec<String>,
    /// Trials stopped early whose Jobs are deleted now.
    pub(super) delete: Vec<String>,
}

/// Observe each planned trial (its Job, pods and progress against its previous entry): its
/// phase, why its pod cannot start, whether it stops early, and whether its model is the new
/// best; with the events each change calls for.
pub(super) fn observe_trials(
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
pub(super) fn start_trials(
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
pub(super) fn suspensions(
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

pub(super) fn trial_events(
    before: Option<&TrialStatus>,
    after: &TrialStatus,
    out: &mut Vec<PlannedEvent>,
) {
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
