//! `--require 'cer<=0.05'`: a bound on a metric of the finished run, checked against its status.
//!
//! Parsed when the arguments are (a typo is a usage error before anything is created), evaluated
//! once the run is over.

use std::fmt;

use serde::Serialize;

use crate::crd::TrainingRunStatus;

/// A comparison operator of a requirement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Op {
    /// `<=`
    #[serde(rename = "<=")]
    Le,
    /// `<`
    #[serde(rename = "<")]
    Lt,
    /// `>=`
    #[serde(rename = ">=")]
    Ge,
    /// `>`
    #[serde(rename = ">")]
    Gt,
    /// `==` (exact: meant for values the status holds verbatim, such as 0 or 1)
    #[serde(rename = "==")]
    Eq,
}

impl Op {
    /// Two-character operators first, so `<=` is not read as `<` followed by `=0.05`.
    const SPELLINGS: [(&'static str, Op); 5] = [
        ("<=", Op::Le),
        (">=", Op::Ge),
        ("==", Op::Eq),
        ("<", Op::Lt),
        (">", Op::Gt),
    ];

    /// How it is written.
    pub fn as_str(self) -> &'static str {
        Self::SPELLINGS
            .iter()
            .find(|(_, op)| *op == self)
            .map(|(s, _)| *s)
            .unwrap_or("?")
    }

    /// Whether `value OP threshold` holds.
    pub fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            Op::Le => value <= threshold,
            Op::Lt => value < threshold,
            Op::Ge => value >= threshold,
            Op::Gt => value > threshold,
            Op::Eq => value == threshold,
        }
    }
}

/// Which value of the status a requirement bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Metric {
    /// `objective`: the best model's objective value, whatever the objective metric is.
    Objective,
    /// `cer` or `wer`: the best model's objective value, when the run's objective is that metric
    /// (a `cer` bound on a run that optimizes `wer` must not silently check WER).
    Named(String),
    /// `cer.SET` (or `bestExtraCer.SET`): the CER on extra validation set SET of the trial that
    /// trained the best model.
    ExtraCer(String),
}

impl Metric {
    /// Parse a metric name; the error lists what exists.
    pub fn parse(name: &str) -> Result<Self, String> {
        let extra = name
            .strip_prefix("cer.")
            .or_else(|| name.strip_prefix("bestExtraCer."));
        match (name, extra) {
            ("objective", _) => Ok(Metric::Objective),
            ("cer" | "wer", _) => Ok(Metric::Named(name.to_string())),
            (_, Some(set)) if !set.is_empty() => Ok(Metric::ExtraCer(set.to_string())),
            _ => Err(format!(
                "unknown metric `{name}`: use cer, wer, objective (the best model's objective \
                 value) or cer.SET (the CER on extra validation set SET, as in \
                 status.trials[].bestExtraCer)"
            )),
        }
    }

    /// The value in `status`, or why there is none.
    pub fn value(&self, status: &TrainingRunStatus) -> Result<f64, String> {
        let Some(best) = &status.best_model else {
            return Err("the run has no best model".into());
        };
        match self {
            Metric::Objective => Ok(best.metric),
            Metric::Named(name) if *name == best.metric_name => Ok(best.metric),
            Metric::Named(name) => Err(format!(
                "the run's objective is {}, not {name}",
                best.metric_name
            )),
            Metric::ExtraCer(set) => {
                let trial = status.trials.iter().find(|t| t.name == best.trial);
                trial
                    .and_then(|t| t.best_extra_cer.get(set).copied())
                    .ok_or_else(|| {
                        let known: Vec<&str> = trial
                            .map(|t| t.best_extra_cer.keys().map(String::as_str).collect())
                            .unwrap_or_default();
                        format!(
                            "trial {} reports no CER on extra set `{set}` (it has: {})",
                            best.trial,
                            if known.is_empty() {
                                "none".to_string()
                            } else {
                                known.join(", ")
                            }
                        )
                    })
            }
        }
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Metric::Objective => f.write_str("objective"),
            Metric::Named(name) => f.write_str(name),
            Metric::ExtraCer(set) => write!(f, "cer.{set}"),
        }
    }
}

/// One `--require METRIC OP VALUE`.
#[derive(Debug, Clone, PartialEq)]
pub struct Requirement {
    /// What is bounded.
    pub metric: Metric,
    /// How.
    pub op: Op,
    /// The bound.
    pub threshold: f64,
}

impl Requirement {
    /// Parse `cer<=0.05`, `cer <= 0.05`, `cer.unseen-fonts<0.1`, ….
    pub fn parse(text: &str) -> Result<Self, String> {
        let usage = "expected METRIC OP VALUE, e.g. 'cer<=0.05' (OP: <=, <, >=, >, ==)";
        let Some(at) = text.find(['<', '>', '=', '!']) else {
            return Err(format!("`{text}`: no comparison operator; {usage}"));
        };
        let (name, rest) = text.split_at(at);
        let Some((op, value)) = Op::SPELLINGS
            .iter()
            .find_map(|(s, op)| rest.strip_prefix(s).map(|v| (*op, v)))
            .filter(|(_, v)| !v.starts_with(['<', '>', '=', '!']))
        else {
            return Err(format!("`{text}`: unknown operator; {usage}"));
        };
        let metric = Metric::parse(name.trim()).map_err(|e| format!("`{text}`: {e}"))?;
        let threshold: f64 = value
            .trim()
            .parse()
            .ok()
            .filter(|v: &f64| v.is_finite())
            .ok_or_else(|| format!("`{text}`: `{}` is not a number; {usage}", value.trim()))?;
        Ok(Requirement {
            metric,
            op,
            threshold,
        })
    }

    /// Check it against a finished run's status.
    pub fn check(&self, status: &TrainingRunStatus) -> RequirementResult {
        let (value, met, note) = match self.metric.value(status) {
            Ok(v) => (Some(v), self.op.holds(v, self.threshold), None),
            Err(why) => (None, false, Some(why)),
        };
        RequirementResult {
            requirement: self.to_string(),
            metric: self.metric.to_string(),
            op: self.op,
            threshold: self.threshold,
            value,
            met,
            note,
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}{}", self.metric, self.op.as_str(), self.threshold)
    }
}

/// A requirement checked against a status (one entry of the JSON output's `requirements`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RequirementResult {
    /// The requirement, normalized (`cer<=0.05`).
    pub requirement: String,
    /// Its metric.
    pub metric: String,
    /// Its operator.
    pub op: Op,
    /// Its bound.
    pub threshold: f64,
    /// The metric's value, when the status has one.
    pub value: Option<f64>,
    /// Whether it holds (never, without a value).
    pub met: bool,
    /// Why there is no value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl fmt::Display for RequirementResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.met { "met" } else { "NOT met" };
        match (self.value, &self.note) {
            (Some(v), _) => write!(f, "{}: {verdict} ({} = {v})", self.requirement, self.metric),
            (None, Some(why)) => write!(f, "{}: {verdict} ({why})", self.requirement),
            (None, None) => write!(f, "{}: {verdict}", self.requirement),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{BestModel, TrialPhase, TrialStatus};

    fn status() -> TrainingRunStatus {
        TrainingRunStatus {
            trials: vec![TrialStatus {
                name: "ocr-t1".into(),
                phase: TrialPhase::Succeeded,
                params: String::new(),
                step: 100,
                latest_metric: Some(0.05),
                best_metric: Some(0.04),
                best_extra_cer: [("unseen-fonts".to_string(), 0.09)].into(),
                best_decoding: None,
                best_reading_width: None,
                restarts: 0,
                preemptions: 0,
                checkpoint: None,
                reason: None,
                message: None,
                early_stopping: None,
            }],
            best_model: Some(BestModel {
                trial: "ocr-t1".into(),
                url: "s3://b/ocr/ocr-t1/model/".into(),
                sha256: "a".repeat(64),
                metric: 0.04,
                metric_name: "cer".into(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn parses_every_operator_with_or_without_spaces() {
        for (text, op, threshold) in [
            ("cer<=0.05", Op::Le, 0.05),
            ("cer < 0.05", Op::Lt, 0.05),
            ("cer>=1", Op::Ge, 1.0),
            (" cer >2e-3", Op::Gt, 0.002),
            ("cer==0", Op::Eq, 0.0),
        ] {
            let r = Requirement::parse(text).unwrap();
            assert_eq!(
                (r.metric.clone(), r.op, r.threshold),
                (Metric::Named("cer".into()), op, threshold),
                "{text}"
            );
        }
        let r = Requirement::parse("cer.unseen-fonts<0.1").unwrap();
        assert_eq!(r.metric, Metric::ExtraCer("unseen-fonts".into()));
        assert_eq!(r.to_string(), "cer.unseen-fonts<0.1");
        let r = Requirement::parse("bestExtraCer.iam <= 0.2").unwrap();
        assert_eq!(r.metric, Metric::ExtraCer("iam".into()));
        assert_eq!(
            Requirement::parse("objective>=0.5").unwrap().metric,
            Metric::Objective
        );
    }

    #[test]
    fn rejects_what_it_cannot_check() {
        for (text, says) in [
            ("cer", "no comparison operator"),
            ("cer=0.05", "unknown operator"),
            ("cer=<0.05", "unknown operator"),
            ("cer!=0.05", "unknown operator"),
            ("cer<<0.05", "unknown operator"),
            ("accuracy>0.9", "unknown metric `accuracy`"),
            ("cer.<0.1", "unknown metric"),
            ("<=0.1", "unknown metric ``"),
            ("cer<=", "is not a number"),
            ("cer<=five", "`five` is not a number"),
            ("cer<=NaN", "is not a number"),
            ("cer<=inf", "is not a number"),
        ] {
            let err = Requirement::parse(text).unwrap_err();
            assert!(err.contains(says), "{text}: {err}");
        }
    }

    #[test]
    fn checks_against_the_best_model_and_its_trial() {
        let s = status();
        let check = |t: &str| Requirement::parse(t).unwrap().check(&s);
        assert!(check("cer<=0.05").met);
        assert!(check("objective<0.041").met);
        assert!(!check("cer<0.04").met);
        assert!(check("cer==0.04").met);
        assert!(check("cer.unseen-fonts<=0.1").met);
        let r = check("cer.unseen-fonts<=0.05");
        assert_eq!((r.value, r.met), (Some(0.09), false));
        assert_eq!(
            r.to_string(),
            "cer.unseen-fonts<=0.05: NOT met (cer.unseen-fonts = 0.09)"
        );

        let r = check("wer<=0.5");
        assert_eq!((r.value, r.met), (None, false));
        assert!(r.note.unwrap().contains("objective is cer"));
        let r = check("cer.iam<=0.5");
        assert!(!r.met);
        assert!(
            r.note.as_deref().unwrap().contains("it has: unseen-fonts"),
            "{r:?}"
        );

        let r = Requirement::parse("cer<=1")
            .unwrap()
            .check(&TrainingRunStatus::default());
        assert!(!r.met);
        assert_eq!(r.note.as_deref(), Some("the run has no best model"));
    }
}
