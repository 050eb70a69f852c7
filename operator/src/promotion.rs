//! Which model a ModelDeployment should serve: `spec.model`, a rollback, or an automatic
//! promotion of a better TrainingRun. Pure, so the local runner can decide the same way.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::crd::{
    Declined, DeployedModel, ModelDeploymentSpec, ModelDeploymentStatus, PromotionPolicy, Revision,
};

/// What a ModelDeployment needs to know about a TrainingRun.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSummary {
    /// Name.
    pub name: String,
    /// Whether it succeeded.
    pub succeeded: bool,
    /// When it finished.
    pub completion_time: Option<Time>,
    /// Its best model: (url, sha256, metric, metric name).
    pub best: Option<(String, String, f64, String)>,
    /// Whether it matches `spec.promotion.selector`.
    pub selected: bool,
}

impl RunSummary {
    fn model(&self) -> Option<DeployedModel> {
        self.best
            .as_ref()
            .map(|(url, sha, metric, name)| DeployedModel {
                url: url.clone(),
                sha256: sha.clone(),
                metric: Some(*metric),
                metric_name: Some(name.clone()),
                training_run: Some(self.name.clone()),
            })
    }
}

/// The decision of one reconcile.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ModelDecision {
    /// Deploy this model as a new revision, for this reason.
    pub deploy: Option<(DeployedModel, String)>,
    /// Candidates declined now.
    pub declined: Vec<Declined>,
    /// New promotion watermark.
    pub watermark: Option<Time>,
    /// Key of `spec.model` to record as applied.
    pub spec_model_key: Option<String>,
    /// `spec.rollbackTo` to record as applied.
    pub rollback_applied: Option<i64>,
    /// Waiting for something (no model yet): the message.
    pub waiting: Option<String>,
    /// The spec is wrong: (field, message).
    pub invalid: Option<(String, String)>,
}

/// A stable key of `spec.model`, so a change of it is noticed once.
pub fn spec_model_key(spec: &ModelDeploymentSpec, runs: &[RunSummary]) -> Option<String> {
    let m = &spec.model;
    if let Some(url) = &m.url {
        return Some(format!(
            "url:{url}@{}",
            m.sha256.clone().unwrap_or_default()
        ));
    }
    let run = m.from_training_run.as_ref()?;
    let r = runs.iter().find(|r| &r.name == run)?;
    let (_, sha, _, _) = r.best.as_ref().filter(|_| r.succeeded)?;
    Some(format!("run:{run}@{sha}"))
}

/// Decide what to deploy. `runs` are the TrainingRuns of the namespace.
pub fn decide(
    spec: &ModelDeploymentSpec,
    status: &ModelDeploymentStatus,
    runs: &[RunSummary],
    now: &Time,
) -> ModelDecision {
    let mut d = ModelDecision {
        watermark: status.promotion_watermark.clone(),
        ..Default::default()
    };

    // 1. Rollback requested and not yet applied.
    if let Some(n) = spec.rollback_to {
        if status.applied_rollback_to != Some(n) {
            match status.history.iter().find(|r| r.revision == n) {
                Some(r) => {
                    d.deploy = Some((
                        r.model.clone(),
                        format!("rollback to revision {n} (spec.rollbackTo)"),
                    ));
                    d.rollback_applied = Some(n);
                    d.spec_model_key = status.applied_spec_model.clone();
                    return d;
                }
                None => {
                    let have: Vec<String> = status
                        .history
                        .iter()
                        .map(|r| r.revision.to_string())
                        .collect();
                    d.invalid = Some((
                        "spec.rollbackTo".into(),
                        format!(
                            "revision {n} is not in status.history (have: {})",
                            have.join(", ")
                        ),
                    ));
                    return d;
                }
            }
        }
    }
    d.rollback_applied = status.applied_rollback_to;

    // 2. spec.model, when it changed (or on first deploy).
    let key = spec_model_key(spec, runs);
    match (&key, &status.applied_spec_model) {
        (Some(k), applied) if applied.as_ref() != Some(k) => {
            let model = if let Some(url) = &spec.model.url {
                DeployedModel {
                    url: url.clone(),
                    sha256: spec.model.sha256.clone().unwrap_or_default(),
                    metric: spec.model.metric,
                    metric_name: spec.model.metric.map(|_| "cer".to_string()),
                    training_run: None,
                }
            } else {
                let run = spec
                    .model
                    .from_training_run
                    .as_ref()
                    .expect("key implies a source");
                runs.iter()
                    .find(|r| &r.name == run)
                    .and_then(RunSummary::model)
                    .expect("key implies a model")
            };
            d.spec_model_key = key.clone();
            d.deploy = Some((model, "spec.model".into()));
            // Runs that finished before this deploy are not candidates any more.
            d.watermark = newest_completion(runs).or(d.watermark);
            return d;
        }
        (None, None) if status.model.is_none() => {
            let run = spec.model.from_training_run.clone().unwrap_or_default();
            d.waiting = Some(match runs.iter().find(|r| r.name == run) {
                None => format!("TrainingRun {run} not found"),
                Some(r) if !r.succeeded => format!("waiting for TrainingRun {run} to succeed"),
                Some(_) => format!("TrainingRun {run} has no best model"),
            });
            return d;
        }
        _ => {}
    }
    d.spec_model_key = status.applied_spec_model.clone().or(key);

    // 3. Automatic promotion of finished runs newer than the watermark.
    if spec.promotion.policy != PromotionPolicy::Automatic {
        return d;
    }
    let Some(current) = &status.model else {
        return d;
    };
    let mut candidates: Vec<&RunSummary> = runs
        .iter()
        .filter(|r| r.selected && r.succeeded && r.completion_time.is_some())
        .filter(|r| {
            status
                .promotion_watermark
                .as_ref()
                .is_none_or(|w| r.completion_time.as_ref() > Some(w))
        })
        .collect();
    candidates.sort_by(|a, b| (&a.completion_time, &a.name).cmp(&(&b.completion_time, &b.name)));
    let mut bar = current.metric;
    let mut winner: Option<&RunSummary> = None;
    for r in &candidates {
        d.watermark = r.completion_time.clone().max(d.watermark.take());
        let Some((_, sha, metric, name)) = &r.best else {
            d.declined
                .push(declined(r, None, "the run has no best model", now));
            continue;
        };
        if *sha == current.sha256 {
            continue;
        }
        if current.metric_name.as_ref().is_some_and(|n| n != name) {
            d.declined.push(declined(
                r,
                Some(*metric),
                &format!(
                    "metric {name} differs from the deployed model's {}",
                    current.metric_name.clone().unwrap_or_default()
                ),
                now,
            ));
            continue;
        }
        match bar {
            Some(b) if b - metric < spec.promotion.min_improvement || (b - metric) <= 0.0 => {
                d.declined.push(declined(
                    r,
                    Some(*metric),
                    &format!(
                        "{name} {metric:.4} does not beat the deployed {b:.4} by at least {}",
                        spec.promotion.min_improvement
                    ),
                    now,
                ));
            }
            _ => {
                if let Some(prev) = winner.replace(r) {
                    d.declined.push(declined(
                        prev,
                        prev.best.as_ref().map(|b| b.2),
                        &format!("superseded by {}", r.name),
                        now,
                    ));
                }
                bar = Some(*metric);
            }
        }
    }
    if let Some(r) = winner {
        let model = r.model().expect("winner has a model");
        let why = match current.metric {
            Some(c) => format!(
                "automatic promotion of TrainingRun {}: {} {:.4} beats {:.4}",
                r.name,
                model.metric_name.clone().unwrap_or_default(),
                model.metric.unwrap_or_default(),
                c
            ),
            None => format!(
                "automatic promotion of TrainingRun {} (deployed model has no metric)",
                r.name
            ),
        };
        d.deploy = Some((model, why));
    }
    d
}

fn newest_completion(runs: &[RunSummary]) -> Option<Time> {
    runs.iter()
        .filter(|r| r.selected)
        .filter_map(|r| r.completion_time.clone())
        .max()
}

fn declined(r: &RunSummary, metric: Option<f64>, reason: &str, now: &Time) -> Declined {
    Declined {
        training_run: r.name.clone(),
        metric,
        reason: reason.into(),
        at: now.clone(),
    }
}

/// Append a revision for `model` to `status` (new number, history trimmed to `limit`).
pub fn record_revision(
    status: &mut ModelDeploymentStatus,
    model: DeployedModel,
    reason: String,
    limit: i32,
    now: &Time,
) -> i64 {
    let next = status.history.iter().map(|r| r.revision).max().unwrap_or(0) + 1;
    status.history.push(Revision {
        revision: next,
        model: model.clone(),
        deployed_at: now.clone(),
        reason,
    });
    let keep = limit.max(1) as usize;
    if status.history.len() > keep {
        let cut = status.history.len() - keep;
        status.history.drain(..cut);
    }
    status.current_revision = Some(next);
    status.model = Some(model);
    next
}

/// Append declined candidates, keeping the newest ten.
pub fn record_declined(status: &mut ModelDeploymentStatus, declined: Vec<Declined>) {
    status.declined.extend(declined);
    if status.declined.len() > 10 {
        let cut = status.declined.len() - 10;
        status.declined.drain(..cut);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;
    use proptest::prelude::*;
    use serde_json::json;

    fn t(s: i64) -> Time {
        Time(Timestamp::from_second(s).unwrap())
    }

    fn spec(policy: &str, min: f64) -> ModelDeploymentSpec {
        serde_json::from_value(json!({"model": {"fromTrainingRun": "base"}, "image": "w",
            "promotion": {"policy": policy, "minImprovement": min}}))
        .unwrap()
    }

    fn run(name: &str, cer: f64, done: i64) -> RunSummary {
        RunSummary {
            name: name.into(),
            succeeded: true,
            completion_time: Some(t(done)),
            best: Some((
                format!("s3://m/{name}/"),
                format!("sha-{name}"),
                cer,
                "cer".into(),
            )),
            selected: true,
        }
    }

    fn deployed(runs: &[RunSummary], s: &ModelDeploymentSpec) -> ModelDeploymentStatus {
        let mut st = ModelDeploymentStatus::default();
        let d = decide(s, &st, runs, &t(0));
        let (m, why) = d.deploy.unwrap();
        record_revision(&mut st, m, why, 10, &t(0));
        st.applied_spec_model = d.spec_model_key;
        st.promotion_watermark = d.watermark;
        st
    }

    #[test]
    fn first_deploy_comes_from_the_spec_and_waits_for_the_run() {
        let s = spec("Manual", 0.0);
        let mut pending = run("base", 0.2, 10);
        pending.succeeded = false;
        let d = decide(&s, &ModelDeploymentStatus::default(), &[pending], &t(0));
        assert!(d.deploy.is_none());
        assert!(d.waiting.unwrap().contains("waiting for TrainingRun base"));
        let st = deployed(&[run("base", 0.2, 10)], &s);
        assert_eq!(st.current_revision, Some(1));
        assert_eq!(st.history[0].reason, "spec.model");
    }

    #[test]
    fn manual_policy_never_promotes() {
        let s = spec("Manual", 0.0);
        let runs = vec![run("base", 0.2, 10)];
        let st = deployed(&runs, &s);
        let d = decide(&s, &st, &[runs[0].clone(), run("better", 0.01, 20)], &t(30));
        assert!(d.deploy.is_none() && d.declined.is_empty());
    }

    #[test]
    fn automatic_promotes_the_best_newer_run_and_declines_the_rest() {
        let s = spec("Automatic", 0.02);
        let base = run("base", 0.2, 10);
        let st = deployed(std::slice::from_ref(&base), &s);
        let runs = vec![
            base,
            run("small-gain", 0.19, 20),
            run("good", 0.1, 30),
            run("best", 0.05, 40),
        ];
        let d = decide(&s, &st, &runs, &t(50));
        let (m, why) = d.deploy.unwrap();
        assert_eq!(m.training_run.as_deref(), Some("best"));
        assert!(why.contains("0.0500 beats 0.2000"), "{why}");
        let declined: Vec<&str> = d.declined.iter().map(|x| x.training_run.as_str()).collect();
        assert_eq!(declined, vec!["small-gain", "good"]);
        assert_eq!(d.watermark, Some(t(40)));
    }

    #[test]
    fn rollback_to_a_known_revision_and_rejects_an_unknown_one() {
        let s0 = spec("Manual", 0.0);
        let mut st = deployed(&[run("base", 0.2, 10)], &s0);
        record_revision(
            &mut st,
            run("b2", 0.1, 20).model().unwrap(),
            "spec.model".into(),
            10,
            &t(20),
        );
        let mut s = s0.clone();
        s.rollback_to = Some(1);
        let d = decide(&s, &st, &[run("base", 0.2, 10)], &t(30));
        assert_eq!(d.deploy.unwrap().0.sha256, "sha-base");
        assert_eq!(d.rollback_applied, Some(1));
        s.rollback_to = Some(9);
        let d = decide(&s, &st, &[run("base", 0.2, 10)], &t(30));
        assert_eq!(d.invalid.unwrap().0, "spec.rollbackTo");
    }

    #[test]
    fn history_is_trimmed_to_the_limit() {
        let mut st = ModelDeploymentStatus::default();
        for i in 0..7 {
            record_revision(
                &mut st,
                run(&format!("r{i}"), 0.1, i).model().unwrap(),
                "x".into(),
                3,
                &t(i),
            );
        }
        assert_eq!(
            st.history.iter().map(|r| r.revision).collect::<Vec<_>>(),
            vec![5, 6, 7]
        );
        assert_eq!(st.current_revision, Some(7));
    }

    proptest! {
        #[test]
        fn promotes_only_with_enough_improvement(current in 0.0f64..1.0, candidate in 0.0f64..1.0, min in 0.0f64..0.2) {
            let s = spec("Automatic", min);
            let st = deployed(&[run("base", current, 10)], &s);
            let d = decide(&s, &st, &[run("base", current, 10), run("new", candidate, 20)], &t(30));
            let improvement = current - candidate;
            if d.deploy.is_some() {
                prop_assert!(improvement >= min && improvement > 0.0);
            } else {
                prop_assert!(improvement < min || improvement <= 0.0);
                prop_assert_eq!(d.declined.len(), 1);
            }
            // Deciding again from the result is stable: the candidate is not reconsidered.
            let mut st2 = st.clone();
            st2.promotion_watermark = d.watermark.clone();
            let again = decide(&s, &st2, &[run("base", current, 10), run("new", candidate, 20)], &t(40));
            prop_assert!(again.deploy.is_none() && again.declined.is_empty());
        }
    }
}
