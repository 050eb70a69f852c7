//! Progress lines while `submit --wait` waits: one when the run's phase or reason changes and
//! one per trial whose phase, step, best metric or reason changed, so a CI log shows what
//! happened without repeating itself on every status write.

use std::collections::HashMap;

use crate::crd::{TrainingRun, TrialStatus};

/// What was printed last, to print only changes.
#[derive(Debug, Default)]
pub struct Progress {
    run: Option<String>,
    trials: HashMap<String, String>,
}

impl Progress {
    /// The lines to print for this version of the run (none when nothing changed).
    pub fn changes(&mut self, run: &TrainingRun) -> Vec<String> {
        let Some(status) = &run.status else {
            return Vec::new();
        };
        let mut lines = Vec::new();
        let run_line = run_line(run);
        if self.run.as_ref() != Some(&run_line) {
            lines.push(run_line.clone());
            self.run = Some(run_line);
        }
        let metric = run.spec.objective.metric.as_str();
        let max_steps = run.spec.training.max_steps;
        for trial in &status.trials {
            let line = trial_line(trial, metric, max_steps);
            if self.trials.get(&trial.name) != Some(&line) {
                lines.push(line.clone());
                self.trials.insert(trial.name.clone(), line);
            }
        }
        lines
    }
}

/// `run ml/ocr: Running, 1/4 trials done, best cer 0.0412` (+ what keeps it from progressing).
fn run_line(run: &TrainingRun) -> String {
    let status = run.status.clone().unwrap_or_default();
    let phase = status
        .phase
        .map(|p| format!("{p:?}"))
        .unwrap_or_else(|| "(no phase yet)".into());
    let mut line = format!(
        "run {}/{}: {phase}",
        run.metadata.namespace.as_deref().unwrap_or_default(),
        run.metadata.name.as_deref().unwrap_or_default()
    );
    if let Some(done) = &status.trials_done {
        line += &format!(", {done} trials done");
    }
    if let Some(best) = &status.best_model {
        line += &format!(", best {} {}", best.metric_name, best.metric);
    }
    match (&status.reason, &status.message) {
        (Some(reason), Some(message)) => line += &format!(" ({reason}: {message})"),
        (Some(reason), None) => line += &format!(" ({reason})"),
        _ => {}
    }
    line
}

/// `trial ocr-t0: Running, step 300/1000, best cer 0.1234`; a finished trial adds the decoding
/// its best was read with: `… best cer 0.0605 (read with ctc-lm at x1.1)` (the width only
/// when not as drawn).
fn trial_line(trial: &TrialStatus, metric: &str, max_steps: Option<u64>) -> String {
    let mut line = format!(
        "trial {}: {:?}, step {}",
        trial.name, trial.phase, trial.step
    );
    if let Some(max) = max_steps {
        line += &format!("/{max}");
    }
    if let Some(best) = trial.best_metric {
        line += &format!(", best {metric} {best}");
        if let Some(decoding) = trial.best_decoding {
            line += &format!(" (read with {}", decoding.as_str());
            if let Some(w) = trial.best_reading_width.filter(|&w| w != 1.0) {
                line += &format!(" at x{w}");
            }
            line += ")";
        }
    }
    if let Some(reason) = &trial.reason {
        line += &format!(" ({reason}");
        if let Some(message) = &trial.message {
            line += &format!(": {message}");
        }
        line += ")";
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(status: serde_json::Value) -> TrainingRun {
        serde_json::from_value(json!({
            "apiVersion": "textrec.dev/v1alpha1", "kind": "TrainingRun",
            "metadata": {"name": "ocr", "namespace": "ml"},
            "spec": {"training": {"maxSteps": 1000}},
            "status": status
        }))
        .unwrap()
    }

    #[test]
    fn prints_each_change_once() {
        let mut p = Progress::default();
        let pending = run(
            json!({"phase": "Pending", "reason": "Unschedulable", "message": "0/1 nodes",
            "trials": [{"name": "ocr-t0", "phase": "Pending", "reason": "Unschedulable"}]}),
        );
        assert_eq!(
            p.changes(&pending),
            [
                "run ml/ocr: Pending (Unschedulable: 0/1 nodes)",
                "trial ocr-t0: Pending, step 0/1000 (Unschedulable)"
            ]
        );
        assert!(p.changes(&pending).is_empty());
        let running = run(json!({"phase": "Running", "trialsDone": "0/2", "trials": [
            {"name": "ocr-t0", "phase": "Running", "step": 300, "bestMetric": 0.25},
            {"name": "ocr-t1", "phase": "Pending"}]}));
        assert_eq!(
            p.changes(&running),
            [
                "run ml/ocr: Running, 0/2 trials done",
                "trial ocr-t0: Running, step 300/1000, best cer 0.25",
                "trial ocr-t1: Pending, step 0/1000"
            ]
        );
        let t1_starts = run(json!({"phase": "Running", "trialsDone": "0/2", "trials": [
            {"name": "ocr-t0", "phase": "Running", "step": 300, "bestMetric": 0.25},
            {"name": "ocr-t1", "phase": "Starting"}]}));
        assert_eq!(
            p.changes(&t1_starts),
            ["trial ocr-t1: Starting, step 0/1000"]
        );
        let done = run(json!({"phase": "Succeeded", "trialsDone": "2/2",
            "bestModel": {"trial": "ocr-t0", "url": "u", "sha256": "s", "metric": 0.04, "metricName": "cer"},
            "trials": [
            {"name": "ocr-t0", "phase": "Succeeded", "step": 1000, "bestMetric": 0.04, "bestDecoding": "ctc-lm",
             "bestReadingWidth": 1.25},
            {"name": "ocr-t1", "phase": "Failed", "reason": "ConfigError", "message": "bad lr"}]}));
        assert_eq!(
            p.changes(&done),
            [
                "run ml/ocr: Succeeded, 2/2 trials done, best cer 0.04",
                "trial ocr-t0: Succeeded, step 1000/1000, best cer 0.04 (read with ctc-lm at x1.25)",
                "trial ocr-t1: Failed, step 0/1000 (ConfigError: bad lr)"
            ]
        );
    }

    #[test]
    fn a_run_without_status_prints_nothing() {
        let mut p = Progress::default();
        let mut r = run(json!(null));
        r.status = None;
        assert!(p.changes(&r).is_empty());
    }
}
