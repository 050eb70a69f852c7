//! Which model a ModelDeployment should serve: `spec.model`, a rollback, or an automatic
//! promotion of a better TrainingRun. Pure, so the local runner can decide the same way.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::crd::{
    Declined, DeployedModel, Evaluation, ModelDeploymentSpec, ModelDeploymentStatus,
    PromotionEvaluation, PromotionPolicy, Revision,
};

/// How long a failed evaluation stands before it is tried again (the set may be filled since).
pub const EVALUATION_RETRY_SECONDS: i64 = 300;

/// Most evaluations kept in `status.evaluations`.
pub const MAX_EVALUATIONS: usize = 20;

/// The field named when the evaluation set cannot be scored.
pub const EVALUATION_FIELD: &str = "spec.promotion.evaluation.path";

/// A model to score on `spec.promotion.evaluation` before promotion can be decided.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct EvalRequest {
    /// Model folder URL.
    pub url: String,
    /// Model version.
    pub sha256: String,
}

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
    /// Models to evaluate on `spec.promotion.evaluation` before a candidate can be decided;
    /// the candidates waiting on them stay undecided (the watermark stops before them).
    pub evaluate: Vec<EvalRequest>,
}

/// (deployed CER, candidate CER, set digest) on the evaluation set.
type SetScores = (f64, f64, String);

/// The outcome of looking up a (deployed, candidate) pair in the evaluation cache.
enum PairScores {
    /// Both scored on the same content: (deployed CER, candidate CER, digest).
    Scored(f64, f64, String),
    /// These must be (re-)evaluated first.
    Need(Vec<EvalRequest>),
    /// The set cannot be scored (empty, unreadable): the message.
    Failed(String),
}

fn set_of<'a>(
    evals: &'a [Evaluation],
    set: &'a PromotionEvaluation,
    sha: &'a str,
) -> impl Iterator<Item = &'a Evaluation> {
    evals
        .iter()
        .filter(move |e| e.model_sha256 == sha && e.path == set.path && e.samples == set.samples)
}

/// Look up both models' newest results on `set`. Two results are comparable only when they
/// were scored on the same content (equal digests); otherwise the older one is redone, so a set
/// that grew (new flags) is scored anew for both.
fn pair_scores(
    set: &PromotionEvaluation,
    evals: &[Evaluation],
    deployed: &DeployedModel,
    candidate: &DeployedModel,
    now: &Time,
) -> PairScores {
    let mut need = Vec::new();
    let mut found = Vec::new();
    for m in [deployed, candidate] {
        let req = EvalRequest {
            url: m.url.clone(),
            sha256: m.sha256.clone(),
        };
        match set_of(evals, set, &m.sha256).last() {
            None => need.push(req),
            Some(e) => match &e.error {
                Some(err) => {
                    let age = now.0.as_second() - e.at.0.as_second();
                    if age >= EVALUATION_RETRY_SECONDS {
                        need.push(req);
                    } else {
                        return PairScores::Failed(err.clone());
                    }
                }
                None => found.push((e, req)),
            },
        }
    }
    if !need.is_empty() {
        return PairScores::Need(need);
    }
    let (cur, cand) = (&found[0].0, &found[1].0);
    if cur.dataset_digest != cand.dataset_digest {
        let older = if cur.at <= cand.at {
            &found[0]
        } else {
            &found[1]
        };
        return PairScores::Need(vec![older.1.clone()]);
    }
    PairScores::Scored(
        cur.cer.unwrap_or(f64::NAN),
        cand.cer.unwrap_or(f64::NAN),
        cur.dataset_digest.clone(),
    )
}

/// Record an evaluation result in `status.evaluations`: it replaces an older one of the same
/// model on the same set, and the oldest beyond [`MAX_EVALUATIONS`] go.
pub fn record_evaluation(status: &mut ModelDeploymentStatus, e: Evaluation) {
    status.evaluations.retain(|x| {
        !(x.model_sha256 == e.model_sha256 && x.path == e.path && x.samples == e.samples)
    });
    status.evaluations.push(e);
    if status.evaluations.len() > MAX_EVALUATIONS {
        let cut = status.evaluations.len() - MAX_EVALUATIONS;
        status.evaluations.drain(..cut);
    }
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
    let mut winner: Option<(&RunSummary, Option<SetScores>)> = None;
    for r in &candidates {
        let Some((_, sha, metric, name)) = &r.best else {
            d.watermark = r.completion_time.clone().max(d.watermark.take());
            d.declined
                .push(declined(r, None, "the run has no best model", now));
            continue;
        };
        if *sha == current.sha256 {
            d.watermark = r.completion_time.clone().max(d.watermark.take());
            continue;
        }
        if let Some(set) = &spec.promotion.evaluation {
            let model = r.model().expect("a best model");
            match pair_scores(set, &status.evaluations, current, &model, now) {
                PairScores::Need(reqs) => {
                    // Undecided: it and every later candidate wait for the scores.
                    for q in reqs {
                        if !d.evaluate.contains(&q) {
                            d.evaluate.push(q);
                        }
                    }
                    break;
                }
                PairScores::Failed(msg) => {
                    // The deployed model keeps serving; nothing is decided until the set
                    // can be scored.
                    d.invalid = Some((EVALUATION_FIELD.into(), msg));
                    break;
                }
                PairScores::Scored(cur, cand, digest) => {
                    d.watermark = r.completion_time.clone().max(d.watermark.take());
                    let short = &digest[..digest.len().min(12)];
                    let improvement = cur - cand;
                    if !(improvement >= spec.promotion.min_improvement && improvement > 0.0) {
                        let mut x = declined(
                            r,
                            Some(cand),
                            &format!(
                                "cer {cand:.4} on the evaluation set (digest {short}) does not beat the deployed model's {cur:.4} there by at least {}",
                                spec.promotion.min_improvement
                            ),
                            now,
                        );
                        x.deployed_metric = Some(cur);
                        x.dataset_digest = Some(digest);
                        d.declined.push(x);
                        continue;
                    }
                    let better = winner
                        .as_ref()
                        .and_then(|(_, s)| s.as_ref())
                        .is_none_or(|(_, w, _)| cand < *w);
                    if better {
                        if let Some((prev, _)) = winner.replace((r, Some((cur, cand, digest)))) {
                            d.declined.push(declined(
                                prev,
                                prev.best.as_ref().map(|b| b.2),
                                &format!("superseded by {}", r.name),
                                now,
                            ));
                        }
                    } else {
                        d.declined.push(declined(
                            r,
                            Some(cand),
                            &format!(
                                "superseded by {}",
                                winner
                                    .as_ref()
                                    .map(|w| w.0.name.as_str())
                                    .unwrap_or_default()
                            ),
                            now,
                        ));
                    }
                    continue;
                }
            }
        }
        d.watermark = r.completion_time.clone().max(d.watermark.take());
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
                let mut x = declined(
                    r,
                    Some(*metric),
                    &format!(
                        "{name} {metric:.4} does not beat the deployed {b:.4} by at least {}",
                        spec.promotion.min_improvement
                    ),
                    now,
                );
                x.deployed_metric = Some(b);
                d.declined.push(x);
            }
            _ => {
                if let Some((prev, _)) = winner.replace((r, None)) {
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
    if let Some((r, scores)) = winner {
        let model = r.model().expect("winner has a model");
        let why = match (scores, current.metric) {
            (Some((cur, cand, digest)), _) => format!(
                "automatic promotion of TrainingRun {}: cer {cand:.4} beats the deployed model's {cur:.4} on the evaluation set (digest {})",
                r.name,
                &digest[..digest.len().min(12)]
            ),
            (None, c) => match c {
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
            },
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
        deployed_metric: None,
        dataset_digest: None,
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

    fn with_set(min: f64) -> ModelDeploymentSpec {
        let mut s = spec("Automatic", min);
        s.promotion.evaluation = Some(PromotionEvaluation {
            path: "/data/heldout".into(),
            samples: None,
        });
        s
    }

    fn scored(sha: &str, cer: Option<f64>, digest: &str, at: i64) -> Evaluation {
        Evaluation {
            model_sha256: sha.into(),
            model_url: format!("s3://m/{sha}/"),
            path: "/data/heldout".into(),
            samples: None,
            dataset_digest: digest.into(),
            cer,
            lines: 8,
            error: cer
                .is_none()
                .then(|| "--data /data/heldout: no readable lines".into()),
            at: t(at),
        }
    }

    #[test]
    fn a_candidate_is_evaluated_with_the_deployed_model_before_anything_is_decided() {
        let s = with_set(0.0);
        let base = run("base", 0.2, 10);
        let st = deployed(std::slice::from_ref(&base), &s);
        let d = decide(&s, &st, &[base.clone(), run("new", 0.01, 20)], &t(30));
        assert!(d.deploy.is_none() && d.declined.is_empty());
        let shas: Vec<&str> = d.evaluate.iter().map(|e| e.sha256.as_str()).collect();
        assert_eq!(shas, vec!["sha-base", "sha-new"]);
        // Undecided: the candidate stays a candidate.
        assert_eq!(d.watermark, st.promotion_watermark);
    }

    #[test]
    fn the_evaluation_set_decides_not_the_runs_own_metric() {
        let s = with_set(0.02);
        let base = run("base", 0.2, 10);
        let mut st = deployed(std::slice::from_ref(&base), &s);
        // Its own validation says 0.01, but on the evaluation set it is worse.
        let runs = [base.clone(), run("new", 0.01, 20)];
        record_evaluation(&mut st, scored("sha-base", Some(0.30), "d1", 21));
        record_evaluation(&mut st, scored("sha-new", Some(0.31), "d1", 22));
        let d = decide(&s, &st, &runs, &t(30));
        assert!(
            d.deploy.is_none() && d.evaluate.is_empty(),
            "cache hit: no re-evaluation"
        );
        let x = &d.declined[0];
        assert_eq!((x.metric, x.deployed_metric), (Some(0.31), Some(0.30)));
        assert_eq!(x.dataset_digest.as_deref(), Some("d1"));
        assert!(
            x.reason.contains("0.3100") && x.reason.contains("0.3000"),
            "{}",
            x.reason
        );
        assert_eq!(d.watermark, Some(t(20)));

        // Better, but by less than minImprovement: declined too.
        record_evaluation(&mut st, scored("sha-new", Some(0.29), "d1", 23));
        let d = decide(&s, &st, &runs, &t(30));
        assert!(d.deploy.is_none());
        assert_eq!(d.declined[0].deployed_metric, Some(0.30));

        // Better by enough: promoted, the reason naming both numbers.
        record_evaluation(&mut st, scored("sha-new", Some(0.20), "d1", 24));
        let d = decide(&s, &st, &runs, &t(30));
        let (m, why) = d.deploy.unwrap();
        assert_eq!(m.sha256, "sha-new");
        assert!(
            why.contains("0.2000 beats the deployed model's 0.3000"),
            "{why}"
        );
    }

    #[test]
    fn results_on_other_content_are_redone_and_a_failed_set_blocks_promotion() {
        let s = with_set(0.0);
        let base = run("base", 0.2, 10);
        let mut st = deployed(std::slice::from_ref(&base), &s);
        let runs = [base.clone(), run("new", 0.1, 20)];
        // The set grew between the two evaluations: the deployed model is scored again.
        record_evaluation(&mut st, scored("sha-base", Some(0.30), "d1", 21));
        record_evaluation(&mut st, scored("sha-new", Some(0.10), "d2", 22));
        let d = decide(&s, &st, &runs, &t(30));
        assert!(d.deploy.is_none());
        assert_eq!(d.evaluate.len(), 1);
        assert_eq!(d.evaluate[0].sha256, "sha-base");

        // An empty set: the field is named and nothing is promoted until a retry works.
        record_evaluation(&mut st, scored("sha-base", None, "", 25));
        let d = decide(&s, &st, &runs, &t(30));
        assert!(d.deploy.is_none() && d.evaluate.is_empty());
        let (field, msg) = d.invalid.unwrap();
        assert_eq!(field, EVALUATION_FIELD);
        assert!(msg.contains("no readable lines"), "{msg}");
        let later = decide(&s, &st, &runs, &t(25 + EVALUATION_RETRY_SECONDS));
        assert_eq!(later.evaluate.len(), 1, "retried once the failure is old");
    }

    #[test]
    fn the_cache_keeps_one_result_per_model_and_set() {
        let mut st = ModelDeploymentStatus::default();
        for i in 0..(MAX_EVALUATIONS as i64 + 5) {
            record_evaluation(&mut st, scored(&format!("m{i}"), Some(0.1), "d", i));
        }
        record_evaluation(&mut st, scored("m24", Some(0.2), "d", 99));
        assert_eq!(st.evaluations.len(), MAX_EVALUATIONS);
        assert_eq!(st.evaluations.last().unwrap().cer, Some(0.2));
        assert_eq!(
            st.evaluations
                .iter()
                .filter(|e| e.model_sha256 == "m24")
                .count(),
            1
        );
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
