//! The local "Job controller": what happens when a trial's worker process ends, and the Job and
//! Pod objects a cluster would show for it.
//!
//! The rules mirror the Job that [`crate::job::build_job`] creates:
//!
//! | the worker process…                   | cluster equivalent                          | local runner                      |
//! | ------------------------------------- | ------------------------------------------- | --------------------------------- |
//! | exits 0                               | Job `Complete`                              | trial succeeded                   |
//! | dies from a signal (SIGKILL, …)       | pod with `DisruptionTarget` (spot reclaim)  | restarted, resumes: a preemption  |
//! | exits 75 after someone's SIGTERM      | exit 75 → `Ignore`                          | restarted, resumes: a preemption  |
//! | exits 78                              | exit 78 → `FailJob`                         | trial failed at once              |
//! | exits with anything else              | counts against `backoffLimit`               | restarted until `maxRestartsPerTrial` is used up |
//! | cannot be started (a passing cause)   | container `StartError`: counts against `backoffLimit` | restarted until `maxRestartsPerTrial` is used up |
//! | cannot ever be started (E2BIG, ENOENT, EACCES, ENOEXEC) | container `StartError` | trial failed at once |
//! | is stopped by the runner (Ctrl-C)     | (the cluster keeps running)                 | not counted; resumes on the next `local run` |
//! | is stopped early (`spec.earlyStopping`) | Job suspended (SIGTERM, checkpoint), then deleted | SIGTERM, checkpoint; trial `EarlyStopped` |
//!
//! One local addition: a process the kernel's OOM killer keeps killing looks exactly like a
//! preemption (SIGKILL). So that such a trial cannot loop forever, once
//! [`MAX_PREEMPTIONS_WITHOUT_PROGRESS`] attempts in a row were killed without getting past the
//! step of the attempt before them, each further such kill counts as a failure instead.
//!
//! [`synth_job`] and [`synth_pods`] turn a [`TrialRecord`] into the objects
//! [`crate::run_plan::plan`] reads, so the trial's status is computed by the cluster's code.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use serde::{Deserialize, Serialize};
use serde_json::json;
use textrec_contract::exit::{describe, CONFIG_ERROR, INTERRUPTED};

use crate::job::CONTAINER;

/// A trial: (TrainingRun name, trial name).
pub type TrialKey = (String, String);

/// `run/trial`, for messages.
pub fn key_str(k: &TrialKey) -> String {
    format!("{}/{}", k.0, k.1)
}

/// Signal deaths in a row, each after an attempt without progress, that count as a failure.
pub const MAX_PREEMPTIONS_WITHOUT_PROGRESS: usize = 3;

/// How a worker process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Exit {
    /// It exited with this code.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
    /// It never ran: the OS refused to start it (the attempt's message says why).
    NotStarted,
}

impl Exit {
    /// From a process's exit status.
    pub fn from_status(status: std::process::ExitStatus) -> Self {
        #[cfg(unix)]
        {
            use std::os::unix::process::ExitStatusExt;
            if let Some(sig) = status.signal() {
                return Exit::Signal(sig);
            }
        }
        Exit::Code(status.code().unwrap_or(1))
    }

    /// The exit code a container runtime would report (128 + signal for a signal death, 128
    /// for a container that could not start, as containerd reports a `StartError`).
    pub fn container_code(self) -> i32 {
        match self {
            Exit::Code(c) => c,
            Exit::Signal(s) => 128 + s,
            Exit::NotStarted => 128,
        }
    }

    /// For messages: `exit 78 (configuration error)`, `signal 9`.
    pub fn describe(self) -> String {
        match self {
            Exit::Code(c) => format!("exit {c} ({})", describe(c)),
            Exit::Signal(s) => format!("killed by signal {s}"),
            Exit::NotStarted => "could not be started".into(),
        }
    }
}

/// What one attempt (one process) of a trial amounted to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AttemptOutcome {
    /// Finished; the model is written.
    Succeeded,
    /// Stopped by the local runner itself (Ctrl-C, `local stop`): resumes next time, not counted.
    Stopped,
    /// Killed by a signal, or stopped after checkpointing by someone else: resumes, counted as a
    /// preemption.
    Preempted,
    /// Exit 78: the trial fails at once.
    ConfigError,
    /// Any other failure: counts against `maxRestartsPerTrial`.
    Failed,
}

/// One finished attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attempt {
    /// How the process ended.
    pub exit: Exit,
    /// What it counts as.
    pub outcome: AttemptOutcome,
    /// The trial's step when it ended (from its progress), to tell progress from a crash loop.
    pub step: u64,
    /// The worker's final word, if it left one (its termination log / `progress.json` message).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// How a trial ended for good (the Job's terminal condition).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum JobOutcome {
    /// The worker finished.
    Complete,
    /// It failed for good.
    Failed {
        /// CamelCase reason, as the Job controller sets it.
        reason: String,
        /// Human message.
        message: String,
    },
    /// `spec.earlyStopping` stopped it and the runner deleted its Job: as in a cluster, no Job
    /// is shown for it and the run's status keeps the trial `EarlyStopped`.
    EarlyStopped,
}

/// The local Job of one trial.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrialRecord {
    /// The worker's arguments (after `textrec-worker`): the Job's, with local paths
    /// ([`crate::local::run_controller::local_train_args`]).
    pub args: Vec<String>,
    /// The running process, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Finished attempts, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<Attempt>,
    /// Held back (run suspended, or too many failed trials): not restarted.
    #[serde(default)]
    pub suspended: bool,
    /// Set once the trial is over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<JobOutcome>,
    /// When the current attempt started (RFC 3339), for `activeDeadlineSeconds`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
}

/// What the runner does after an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Start the worker again; it resumes from its newest checkpoint.
    Restart,
    /// Leave it; the next `local run` resumes it.
    Wait,
    /// The trial succeeded.
    Complete,
    /// The trial failed for good.
    Fail,
}

impl TrialRecord {
    /// A trial about to start with `args`.
    pub fn new(args: Vec<String>) -> Self {
        Self {
            args,
            pid: None,
            attempts: Vec::new(),
            suspended: false,
            outcome: None,
            started_at: None,
        }
    }

    /// Whether the trial is over.
    pub fn is_finished(&self) -> bool {
        self.outcome.is_some()
    }

    /// Attempts that count against `maxRestartsPerTrial`.
    pub fn failures(&self) -> usize {
        self.count(AttemptOutcome::Failed)
    }

    /// Attempts lost to preemptions.
    pub fn preemptions(&self) -> usize {
        self.count(AttemptOutcome::Preempted)
    }

    fn count(&self, o: AttemptOutcome) -> usize {
        self.attempts.iter().filter(|a| a.outcome == o).count()
    }

    /// Trailing attempts that were killed (by a signal, or SIGTERM from someone else) without
    /// getting past the step of the attempt before them.
    fn stalled_kills(&self) -> usize {
        let mut n = 0;
        for (i, a) in self.attempts.iter().enumerate().rev() {
            let killed = matches!(a.exit, Exit::Signal(_) | Exit::Code(INTERRUPTED))
                && matches!(
                    a.outcome,
                    AttemptOutcome::Preempted | AttemptOutcome::Failed
                );
            let before = if i == 0 { 0 } else { self.attempts[i - 1].step };
            if !killed || a.step > before {
                break;
            }
            n += 1;
        }
        n
    }
}

/// What `exit` counts as, before the history of the trial is considered.
pub fn classify(exit: Exit, stopping: bool) -> AttemptOutcome {
    match exit {
        Exit::Code(0) => AttemptOutcome::Succeeded,
        Exit::Code(CONFIG_ERROR) => AttemptOutcome::ConfigError,
        Exit::Code(INTERRUPTED) | Exit::Signal(_) if stopping => AttemptOutcome::Stopped,
        Exit::Code(INTERRUPTED) | Exit::Signal(_) => AttemptOutcome::Preempted,
        Exit::Code(_) | Exit::NotStarted => AttemptOutcome::Failed,
    }
}

/// Record that the trial's process ended with `exit` at `step` and decide what comes next: the
/// state machine of the module docs. `stopping` is true when the runner itself stopped it;
/// `max_restarts` is the run's `maxRestartsPerTrial` (the Job's `backoffLimit`).
pub fn record_exit(
    rec: &mut TrialRecord,
    exit: Exit,
    step: u64,
    message: Option<String>,
    stopping: bool,
    max_restarts: i32,
) -> Next {
    rec.pid = None;
    rec.started_at = None;
    let mut outcome = classify(exit, stopping);
    rec.attempts.push(Attempt {
        exit,
        outcome,
        step,
        message: message.clone(),
    });
    if outcome == AttemptOutcome::Preempted
        && rec.stalled_kills() >= MAX_PREEMPTIONS_WITHOUT_PROGRESS
    {
        // A crash loop by signal (likely the OOM killer), not a preemption.
        outcome = AttemptOutcome::Failed;
        if let Some(a) = rec.attempts.last_mut() {
            a.outcome = outcome;
        }
    }
    match outcome {
        AttemptOutcome::Succeeded => {
            rec.outcome = Some(JobOutcome::Complete);
            Next::Complete
        }
        AttemptOutcome::Stopped => Next::Wait,
        AttemptOutcome::Preempted => Next::Restart,
        AttemptOutcome::ConfigError => {
            rec.outcome = Some(JobOutcome::Failed {
                reason: "PodFailurePolicy".into(),
                message: format!(
                    "Container {CONTAINER} failed with exit code {CONFIG_ERROR} matching FailJob rule (configuration error)"
                ),
            });
            Next::Fail
        }
        AttemptOutcome::Failed => restart_or_fail(rec, &exit.describe(), max_restarts),
    }
}

/// After a failed attempt: restart, or fail once the failures are over `max_restarts` (the
/// Job's `backoffLimit`). `last` describes the failure for the message.
fn restart_or_fail(rec: &mut TrialRecord, last: &str, max_restarts: i32) -> Next {
    if rec.failures() as i64 > i64::from(max_restarts.max(0)) {
        rec.outcome = Some(JobOutcome::Failed {
            reason: "BackoffLimitExceeded".into(),
            message: format!(
                "Job has reached the specified backoff limit ({max_restarts}); last: {last}"
            ),
        });
        Next::Fail
    } else {
        Next::Restart
    }
}

/// Record that the trial's process could not be started (`error` says why) and decide what
/// comes next. It is a failed attempt, as a pod whose container cannot start counts against
/// the Job's `backoffLimit`; when `permanent` (the OS refuses this program or these arguments
/// for good), the trial fails at once instead of retrying the same refusal.
pub fn record_start_failure(
    rec: &mut TrialRecord,
    error: &str,
    permanent: bool,
    max_restarts: i32,
) -> Next {
    rec.pid = None;
    rec.started_at = None;
    // No progress was made: the step of the attempt before, so no crash-loop check is fooled.
    let step = rec.attempts.last().map_or(0, |a| a.step);
    rec.attempts.push(Attempt {
        exit: Exit::NotStarted,
        outcome: AttemptOutcome::Failed,
        step,
        message: Some(error.to_string()),
    });
    if permanent {
        rec.outcome = Some(JobOutcome::Failed {
            reason: "StartError".into(),
            message: format!("{error}; retrying cannot help"),
        });
        return Next::Fail;
    }
    restart_or_fail(rec, &format!("could not be started: {error}"), max_restarts)
}

/// Fail a trial that ran past `activeDeadlineSeconds` (the Job's `DeadlineExceeded`).
pub fn deadline_exceeded(rec: &mut TrialRecord, seconds: i64) {
    rec.outcome = Some(JobOutcome::Failed {
        reason: "DeadlineExceeded".into(),
        message: format!("Job was active longer than specified deadline ({seconds} s)"),
    });
}

/// The Job a cluster would show for this trial.
pub fn synth_job(name: &str, rec: &TrialRecord) -> Job {
    let conditions = match &rec.outcome {
        None => json!([]),
        Some(JobOutcome::Complete) => json!([{"type": "Complete", "status": "True"}]),
        // Deleted in a cluster; the local run controller shows no Job for it.
        Some(JobOutcome::EarlyStopped) => json!([]),
        Some(JobOutcome::Failed { reason, message }) => {
            json!([{"type": "Failed", "status": "True", "reason": reason, "message": message}])
        }
    };
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"suspend": rec.suspended && rec.outcome.is_none(), "template": {}},
        "status": {"conditions": conditions},
    }))
    .expect("synthetic Job is well-formed")
}

fn pod(name: String, phase: &str, state: serde_json::Value, disrupted: bool) -> Pod {
    let mut status = json!({
        "phase": phase,
        "containerStatuses": [{"name": CONTAINER, "image": "", "imageID": "", "ready": phase == "Running",
            "restartCount": 0, "state": state}],
    });
    if disrupted {
        status["conditions"] = json!([{"type": "DisruptionTarget", "status": "True",
            "reason": "TerminationByKubelet", "message": "the local worker process was killed by a signal"}]);
    }
    serde_json::from_value(json!({"metadata": {"name": name}, "status": status}))
        .expect("synthetic Pod is well-formed")
}

/// The pods a cluster would show for this trial: one per counted attempt, plus the live one.
/// `final_message` is the worker's termination log (its final progress JSON), attached to the
/// newest finished attempt as a pod's termination message would be.
pub fn synth_pods(name: &str, rec: &TrialRecord, final_message: Option<&str>) -> Vec<Pod> {
    let mut pods = Vec::new();
    let last = rec.attempts.len().saturating_sub(1);
    for (i, a) in rec.attempts.iter().enumerate() {
        let message = if i == last {
            final_message.map(str::to_string).or(a.message.clone())
        } else {
            a.message.clone()
        };
        let terminated = |code: i32| json!({"terminated": {"exitCode": code, "message": message}});
        let p = match a.outcome {
            // Stopping the local runner is not something a cluster would see.
            AttemptOutcome::Stopped => continue,
            AttemptOutcome::Succeeded => {
                pod(format!("{name}-{i}"), "Succeeded", terminated(0), false)
            }
            AttemptOutcome::Preempted => pod(
                format!("{name}-{i}"),
                "Failed",
                terminated(a.exit.container_code()),
                matches!(a.exit, Exit::Signal(_)),
            ),
            AttemptOutcome::ConfigError | AttemptOutcome::Failed => pod(
                format!("{name}-{i}"),
                "Failed",
                terminated(a.exit.container_code()),
                false,
            ),
        };
        pods.push(p);
    }
    if rec.pid.is_some() {
        pods.push(pod(
            format!("{name}-{}", rec.attempts.len()),
            "Running",
            json!({"running": {}}),
            false,
        ));
    }
    pods
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{ObjectiveMetric, TrialPhase};
    use crate::trial_state::{observe, TrialObservation};

    fn status(rec: &TrialRecord) -> crate::crd::TrialStatus {
        let job = synth_job("t", rec);
        let pods = synth_pods("t", rec, None);
        let obs = TrialObservation {
            job: Some(&job),
            pods: pods.iter().collect(),
            progress: None,
        };
        observe("t", "", None, &obs, ObjectiveMetric::Cer).0
    }

    fn running() -> TrialRecord {
        let mut r = TrialRecord::new(vec!["train".into()]);
        r.pid = Some(1);
        r
    }

    #[test]
    fn signal_deaths_are_preemptions_and_resume() {
        let mut r = running();
        assert_eq!(status(&r).phase, TrialPhase::Running);
        assert_eq!(
            record_exit(&mut r, Exit::Signal(9), 20, None, false, 0),
            Next::Restart
        );
        let s = status(&r);
        assert_eq!(
            (s.phase, s.preemptions, s.restarts),
            (TrialPhase::Restarting, 1, 0)
        );
        // SIGTERM from someone else: the worker checkpoints and exits 75; same thing.
        r.pid = Some(2);
        assert_eq!(
            record_exit(&mut r, Exit::Code(75), 30, None, false, 0),
            Next::Restart
        );
        r.pid = Some(3);
        assert_eq!(status(&r).phase, TrialPhase::Running);
        assert_eq!(
            record_exit(&mut r, Exit::Code(0), 40, None, false, 0),
            Next::Complete
        );
        let s = status(&r);
        assert_eq!(
            (s.phase, s.preemptions, s.restarts),
            (TrialPhase::Succeeded, 2, 0)
        );
    }

    #[test]
    fn config_errors_fail_at_once() {
        let mut r = running();
        let n = record_exit(
            &mut r,
            Exit::Code(78),
            0,
            Some("unknown field `optimizer.lrr`".into()),
            false,
            5,
        );
        assert_eq!(n, Next::Fail);
        let s = status(&r);
        assert_eq!(s.phase, TrialPhase::Failed);
        assert!(s.message.unwrap().contains("configuration error (exit 78)"));
    }

    #[test]
    fn failures_count_against_the_restart_limit() {
        let mut r = running();
        assert_eq!(
            record_exit(&mut r, Exit::Code(1), 5, None, false, 2),
            Next::Restart
        );
        assert_eq!(
            record_exit(&mut r, Exit::Code(1), 5, None, false, 2),
            Next::Restart
        );
        // Preemptions in between do not use up restarts.
        assert_eq!(
            record_exit(&mut r, Exit::Signal(9), 9, None, false, 2),
            Next::Restart
        );
        assert_eq!(
            record_exit(&mut r, Exit::Code(1), 9, None, false, 2),
            Next::Fail
        );
        let s = status(&r);
        assert_eq!(
            (s.phase, s.restarts, s.preemptions),
            (TrialPhase::Failed, 3, 1)
        );
        assert!(s.message.unwrap().starts_with("BackoffLimitExceeded"));
    }

    #[test]
    fn stopping_the_runner_is_not_counted() {
        let mut r = running();
        assert_eq!(
            record_exit(&mut r, Exit::Code(75), 10, None, true, 0),
            Next::Wait
        );
        assert_eq!(
            record_exit(&mut r, Exit::Signal(9), 10, None, true, 0),
            Next::Wait
        );
        let s = status(&r);
        assert_eq!((s.restarts, s.preemptions), (0, 0));
        assert!(!r.is_finished());
        // A config error during a stop is still a config error.
        assert_eq!(classify(Exit::Code(78), true), AttemptOutcome::ConfigError);
    }

    #[test]
    fn a_signal_crash_loop_without_progress_becomes_a_failure() {
        let mut r = running();
        // Progress between kills: preemptions, however many.
        for step in 1..=5 {
            assert_eq!(
                record_exit(&mut r, Exit::Signal(9), step * 10, None, false, 0),
                Next::Restart
            );
        }
        assert_eq!(r.preemptions(), 5);
        // No progress: two more preemptions are tolerated, the third counts as a failure.
        assert_eq!(
            record_exit(&mut r, Exit::Signal(9), 50, None, false, 1),
            Next::Restart
        );
        assert_eq!(
            record_exit(&mut r, Exit::Signal(9), 50, None, false, 1),
            Next::Restart
        );
        assert_eq!(
            record_exit(&mut r, Exit::Signal(9), 50, None, false, 1),
            Next::Restart
        );
        assert_eq!(r.failures(), 1);
        assert_eq!(
            record_exit(&mut r, Exit::Signal(9), 50, None, false, 1),
            Next::Fail
        );
    }

    #[test]
    fn container_codes_follow_the_runtime_convention() {
        assert_eq!(Exit::Signal(9).container_code(), 137);
        assert_eq!(Exit::Code(78).container_code(), 78);
        assert!(Exit::Code(78).describe().contains("configuration error"));
    }

    #[test]
    fn start_failures_count_against_the_restart_limit() {
        let mut r = TrialRecord::new(vec!["train".into()]);
        assert_eq!(
            record_start_failure(&mut r, "EAGAIN", false, 1),
            Next::Restart
        );
        assert_eq!(status(&r).phase, TrialPhase::Restarting);
        assert_eq!(record_start_failure(&mut r, "EAGAIN", false, 1), Next::Fail);
        let s = status(&r);
        assert_eq!((s.phase, s.restarts), (TrialPhase::Failed, 2));
        let m = s.message.unwrap();
        assert!(
            m.starts_with("BackoffLimitExceeded") && m.contains("EAGAIN"),
            "{m}"
        );
    }

    #[test]
    fn permanent_start_failures_fail_at_once() {
        let mut r = TrialRecord::new(vec!["train".into()]);
        let error = "cannot start w: argument list too long (E2BIG)";
        assert_eq!(record_start_failure(&mut r, error, true, 5), Next::Fail);
        let s = status(&r);
        assert_eq!((s.phase, s.restarts), (TrialPhase::Failed, 1));
        let m = s.message.unwrap();
        assert!(
            m.starts_with("StartError: cannot start w: argument list too long"),
            "{m}"
        );
        assert!(m.contains("retrying cannot help"), "{m}");
    }
}
