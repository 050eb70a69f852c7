//! Early stopping of trials that are doing badly: the median stopping rule
//! (`spec.earlyStopping.algorithm: MedianStop`), and the per-trial evaluation history it needs.
//!
//! # The rule
//!
//! Each trial has a history of `(step, objective)` evaluations. A running trial `c` is judged at
//! a step `s` of its own history:
//!
//! * `s ≥ startStep`;
//! * another trial `o` *counts at `s`* when it evaluated at `s` or beyond (its last evaluation
//!   is at a step ≥ `s`) and at least once at or before `s`. Its *running average at `s`* is the
//!   mean of its objective values at steps ≤ `s`. Every other trial counts, whatever its phase:
//!   finished, failed and early-stopped trials too (each only up to the step it reached);
//! * at least `minTrialsRequired` other trials count at `s`.
//!
//! `s` is the latest step of `c`'s history meeting all three (so a trial that runs ahead of the
//! others is judged as soon as enough of them catch up with one of its evaluations). The trial
//! is stopped when its best objective at steps ≤ `s` is strictly worse (per the objective's
//! direction) than the median of the counting trials' running averages at `s`; a tie
//! continues. With an even number of counting trials the median is the mean of the middle two.
//! Non-finite values are ignored.
//!
//! # Where the history comes from
//!
//! The worker records every evaluation in `metrics.jsonl` under the trial's storage prefix
//! ([`textrec_contract::layout::METRICS`]) and the latest one in `progress.json`. The operator
//! keeps each trial's history in memory ([`EvalHistory`]): it re-reads `metrics.jsonl` when
//! `progress.json` shows an evaluation newer than the history knows (and once per trial after
//! a restart of the operator), and adds the `latest` and `best` evaluations of every
//! `progress.json` it reads, so a history builds up even where `metrics.jsonl` cannot be read.
//! Nothing of it goes into the status, which stays one small entry per trial; only a stopped
//! trial's deciding numbers do ([`crate::crd::EarlyStopStatus`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use textrec_contract::metrics::EvalPoint;
use textrec_contract::TrialProgress;

use crate::crd::Direction;

/// The rule's decision to stop a trial.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StopDecision {
    /// The trial's evaluation step the decision was taken at.
    pub step: u64,
    /// The trial's best objective at steps ≤ `step`.
    pub best: f64,
    /// The median of the other trials' running averages at `step`.
    pub median: f64,
    /// How many other trials the median is over.
    pub trials: usize,
}

/// The running average at `step` of a history (sorted by step), if the history counts at
/// `step`: it has a value at or before `step` and its last evaluation is at or after it.
fn running_average(history: &[(u64, f64)], step: u64) -> Option<f64> {
    let last = history.last()?.0;
    if last < step {
        return None;
    }
    let (sum, n) = history
        .iter()
        .take_while(|(s, _)| *s <= step)
        .fold((0.0, 0usize), |(sum, n), (_, v)| (sum + v, n + 1));
    (n > 0).then(|| sum / n as f64)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// Only finite values, sorted by step (the last value of a step wins).
fn clean(history: &[(u64, f64)]) -> Vec<(u64, f64)> {
    let by_step: BTreeMap<u64, f64> = history
        .iter()
        .filter(|(_, v)| v.is_finite())
        .copied()
        .collect();
    by_step.into_iter().collect()
}

/// The median stopping rule (see the module docs): whether the trial with history `trial`
/// should stop, given the histories of the `others` (every other trial of the run). Histories
/// are `(step, objective)` pairs in any order.
pub fn median_stop(
    trial: &[(u64, f64)],
    others: &[&[(u64, f64)]],
    direction: Direction,
    start_step: u64,
    min_trials_required: usize,
) -> Option<StopDecision> {
    let trial = clean(trial);
    let others: Vec<Vec<(u64, f64)>> = others.iter().map(|h| clean(h)).collect();
    let min_trials_required = min_trials_required.max(1);
    for &(step, _) in trial.iter().rev() {
        if step < start_step {
            return None;
        }
        let averages: Vec<f64> = others
            .iter()
            .filter_map(|h| running_average(h, step))
            .collect();
        if averages.len() < min_trials_required {
            continue;
        }
        let best = trial
            .iter()
            .take_while(|(s, _)| *s <= step)
            .map(|(_, v)| *v)
            .reduce(|a, b| if direction.better(b, a) { b } else { a })?;
        let trials = averages.len();
        let median = median(averages);
        return direction.better(median, best).then_some(StopDecision {
            step,
            best,
            median,
            trials,
        });
    }
    None
}

/// Evaluation histories of trials, by a key naming the trial (its storage URL), kept in memory
/// by the operator and the local runner.
#[derive(Default)]
pub struct EvalHistory {
    trials: Mutex<HashMap<String, BTreeMap<u64, EvalPoint>>>,
}

/// Most trials whose history is kept before the cache starts over (it is rebuilt from storage).
const MAX_TRIALS: usize = 16_384;

impl EvalHistory {
    /// Whether `metrics.jsonl` of `key` should be (re-)read: its history is unknown, or
    /// `progress` reports an evaluation newer than the history's last one.
    pub fn needs_read(&self, key: &str, progress: Option<&TrialProgress>) -> bool {
        let map = self.trials.lock().expect("eval history");
        match map.get(key) {
            None => true,
            Some(h) => {
                let last = h.keys().next_back().copied();
                progress
                    .and_then(|p| p.latest.as_ref())
                    .is_some_and(|e| last.is_none_or(|l| e.step > l))
            }
        }
    }

    /// Replace the history of `key` with the evaluations read from `metrics.jsonl` (`None`: it
    /// could not be read; the history is kept, and known to have been tried).
    pub fn replace(&self, key: &str, evals: Option<Vec<EvalPoint>>) {
        let mut map = self.trials.lock().expect("eval history");
        if map.len() >= MAX_TRIALS && !map.contains_key(key) {
            map.clear();
        }
        let entry = map.entry(key.to_string()).or_default();
        if let Some(evals) = evals {
            *entry = evals.into_iter().map(|e| (e.step, e)).collect();
        }
    }

    /// Add the `latest` and `best` evaluations of a `progress.json`.
    pub fn observe(&self, key: &str, progress: &TrialProgress) {
        let mut map = self.trials.lock().expect("eval history");
        let entry = map.entry(key.to_string()).or_default();
        for e in [&progress.best, &progress.latest].into_iter().flatten() {
            entry.insert(e.step, e.clone());
        }
    }

    /// The evaluations of `key`, oldest first.
    pub fn get(&self, key: &str) -> Option<Vec<EvalPoint>> {
        let map = self.trials.lock().expect("eval history");
        map.get(key).map(|h| h.values().cloned().collect())
    }

    /// Forget every trial whose key starts with `prefix` (a deleted run).
    pub fn forget(&self, prefix: &str) {
        let mut map = self.trials.lock().expect("eval history");
        map.retain(|k, _| !k.starts_with(prefix));
    }
}

/// The evaluations in a `metrics.jsonl` text (its `eval` records), oldest first; a resumed
/// trial's repeated steps keep their last record.
pub fn evals_of_metrics(text: &str) -> Vec<EvalPoint> {
    use textrec_contract::metrics::{MetricsRecord, RecordKind};
    let mut by_step = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let Ok(r) = serde_json::from_str::<MetricsRecord>(line) else {
            continue;
        };
        if r.kind != RecordKind::Eval {
            continue;
        }
        if let (Some(cer), Some(wer)) = (r.cer, r.wer) {
            by_step.insert(
                r.step,
                EvalPoint {
                    step: r.step,
                    cer,
                    wer,
                    extra_cer: Default::default(),
                    decoding: None,
                    reading_width: None,
                },
            );
        }
    }
    by_step.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use Direction::{Maximize, Minimize};

    /// A history evaluated every 100 steps from step 100.
    fn h(values: &[f64]) -> Vec<(u64, f64)> {
        values
            .iter()
            .enumerate()
            .map(|(i, v)| ((i as u64 + 1) * 100, *v))
            .collect()
    }

    fn decide(trial: &[(u64, f64)], others: &[Vec<(u64, f64)>]) -> Option<StopDecision> {
        let o: Vec<&[(u64, f64)]> = others.iter().map(|h| h.as_slice()).collect();
        median_stop(trial, &o, Minimize, 0, 2)
    }

    #[test]
    fn worse_than_the_median_stops() {
        let others = vec![h(&[0.8, 0.4]), h(&[0.6, 0.2]), h(&[0.9, 0.9])];
        // Running averages at 200: 0.6, 0.4, 0.9 → median 0.6. Best 0.95 is worse.
        let d = decide(&h(&[1.0, 0.95]), &others).unwrap();
        assert_eq!(d.step, 200);
        assert_eq!(d.best, 0.95);
        assert!((d.median - 0.6).abs() < 1e-12, "{d:?}");
        assert_eq!(d.trials, 3);
    }

    #[test]
    fn better_than_the_median_continues() {
        let others = vec![h(&[0.8, 0.4]), h(&[0.6, 0.2]), h(&[0.9, 0.9])];
        // Its best so far (0.5, at step 100) beats the median 0.6 even though its latest does not.
        assert_eq!(decide(&h(&[0.5, 0.7]), &others), None);
    }

    #[test]
    fn too_few_other_trials_continue() {
        let others = vec![h(&[0.1, 0.1])];
        assert_eq!(decide(&h(&[1.0, 1.0]), &others), None);
        // Others that have not reached the step yet do not count there...
        let behind = vec![h(&[0.1]), h(&[0.1])];
        // ...but the trial is judged at its earlier step they did reach.
        let d = decide(&h(&[1.0, 1.0]), &behind).unwrap();
        assert_eq!((d.step, d.trials), (100, 2));
        // Trials that never evaluated at or before the step do not count either.
        let late = vec![vec![(300, 0.1)], vec![(300, 0.1)]];
        assert_eq!(decide(&h(&[1.0, 1.0]), &late), None);
    }

    #[test]
    fn nothing_is_decided_before_start_step() {
        let others = [h(&[0.1, 0.1, 0.1]), h(&[0.1, 0.1, 0.1])];
        let o: Vec<&[(u64, f64)]> = others.iter().map(|h| h.as_slice()).collect();
        let bad = h(&[1.0, 1.0, 1.0]);
        assert_eq!(median_stop(&bad[..2], &o, Minimize, 300, 2), None);
        assert_eq!(
            median_stop(&bad, &o, Minimize, 300, 2).map(|d| d.step),
            Some(300)
        );
        // At exactly the start step it may stop; the earlier steps are never judged.
        assert_eq!(median_stop(&bad, &o, Minimize, 301, 2), None);
    }

    #[test]
    fn a_tie_with_the_median_continues() {
        let others = vec![h(&[0.5, 0.5]), h(&[0.5, 0.5])];
        assert_eq!(decide(&h(&[0.5, 0.5]), &others), None);
        // Even count: the mean of the middle two (0.4 and 0.6 → 0.5).
        let others = vec![h(&[0.4]), h(&[0.6]), h(&[0.2]), h(&[0.9])];
        let d = decide(&h(&[0.51]), &others).unwrap();
        assert!((d.median - 0.5).abs() < 1e-12);
        assert_eq!(decide(&h(&[0.5]), &others), None);
    }

    #[test]
    fn finished_trials_count_as_others_up_to_the_step_they_reached() {
        // Two trials that finished long ago (one succeeded far beyond the step, one stopped
        // exactly there): both count at step 200.
        let others = vec![h(&[0.3, 0.2, 0.1, 0.1]), h(&[0.5, 0.4])];
        let d = decide(&h(&[0.9, 0.9]), &others).unwrap();
        assert_eq!((d.step, d.trials), (200, 2));
        // At step 300 only one of them counts: with two required, judged at 200.
        let d = decide(&h(&[0.9, 0.9, 0.9]), &others).unwrap();
        assert_eq!(d.step, 200);
    }

    #[test]
    fn maximize_flips_the_comparison_and_non_finite_values_are_ignored() {
        let others = [h(&[0.8, 0.9]), h(&[f64::NAN, 0.7])];
        let o: Vec<&[(u64, f64)]> = others.iter().map(|h| h.as_slice()).collect();
        // Running averages at 200: 0.85 and 0.7 (NaN ignored) → 0.775.
        let d = median_stop(&h(&[0.1, 0.2]), &o, Maximize, 0, 2).unwrap();
        assert!((d.median - 0.775).abs() < 1e-12);
        assert_eq!(d.best, 0.2);
        assert_eq!(median_stop(&h(&[0.1, 0.9]), &o, Maximize, 0, 2), None);
        assert_eq!(median_stop(&h(&[f64::NAN]), &o, Maximize, 0, 1), None);
    }

    #[test]
    fn running_averages_use_every_value_up_to_the_step() {
        assert_eq!(running_average(&h(&[1.0, 0.5, 0.0]), 200), Some(0.75));
        // Between evaluations: the values before it.
        assert_eq!(running_average(&h(&[1.0, 0.5, 0.0]), 250), Some(0.75));
        assert_eq!(running_average(&h(&[1.0]), 200), None);
    }

    fn progress(latest: u64, cer: f64) -> TrialProgress {
        serde_json::from_value(serde_json::json!({"phase": "Running", "step": latest,
            "max_steps": 1000, "latest": {"step": latest, "cer": cer, "wer": 1.0},
            "updated": "2026-01-01T00:00:00Z"}))
        .unwrap()
    }

    #[test]
    fn the_history_is_read_again_only_when_a_newer_evaluation_exists() {
        let hist = EvalHistory::default();
        assert!(hist.needs_read("t", None));
        hist.replace("t", None);
        assert!(!hist.needs_read("t", None));
        let p = progress(100, 0.5);
        assert!(hist.needs_read("t", Some(&p)));
        hist.observe("t", &p);
        assert!(!hist.needs_read("t", Some(&p)));
        let text = r#"{"kind":"train","step":50,"time":"2026-01-01T00:00:00Z","elapsed_s":1.0,"loss":2.0}
{"kind":"eval","step":100,"time":"2026-01-01T00:00:00Z","elapsed_s":2.0,"cer":0.6,"wer":0.9}
{"kind":"eval","step":200,"time":"2026-01-01T00:00:00Z","elapsed_s":3.0,"cer":0.4,"wer":0.8}
not json
"#;
        hist.replace("t", Some(evals_of_metrics(text)));
        let got: Vec<(u64, f64)> = hist
            .get("t")
            .unwrap()
            .iter()
            .map(|e| (e.step, e.cer))
            .collect();
        assert_eq!(got, vec![(100, 0.6), (200, 0.4)]);
        assert!(!hist.needs_read("t", Some(&progress(200, 0.4))));
        hist.forget("t");
        assert!(hist.get("t").is_none());
    }
}
