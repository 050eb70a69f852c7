//! What a finished trial's choices were and how they are recorded: [`DecodingChoice`] and the
//! manifest's metrics (`cer@MODE`, `cer@xFACTOR`, `cer@lm(…)`, `cer@unsure(…)`, `cer@served`).

use std::collections::BTreeMap;

use textrec_contract::manifest::UnsureLines;
use textrec_contract::metrics::EvalPoint;
use textrec_model::net::DecodeMode;

use super::comparison::BySet;

/// How a finished trial's model is served (decoding, reading width, language-model weights),
/// what each choice read, and how its best weights read as served.
pub(super) struct DecodingChoice {
    pub(super) mode: DecodeMode,
    /// Each set's CER in each decoding measured, in the order tried (empty when none were
    /// compared).
    pub(super) by_mode: BySet<DecodeMode>,
    /// Each set's CER with `mode` at each width measured (empty when no widths were
    /// compared).
    pub(super) by_width: BySet<f64>,
    /// Each set's CER with `ctc-lm` at the reading width, by language-model weights (alpha,
    /// beta) (empty when none were compared).
    pub(super) by_lm_weights: BySet<(f64, f64)>,
    /// Each set's CER with `ctc-lm` at the reading width and weights, by which lines were
    /// searched again (`None`: none) (empty when none were compared).
    pub(super) by_unsure: BySet<Option<UnsureLines>>,
    /// The best weights' scores read as served.
    pub(super) reading: EvalPoint,
}

impl DecodingChoice {
    /// `mode` without measuring the others: the best evaluation's own reading.
    pub(super) fn as_evaluated(mode: DecodeMode, best: &EvalPoint) -> Self {
        Self {
            mode,
            by_mode: Vec::new(),
            by_width: Vec::new(),
            by_lm_weights: Vec::new(),
            by_unsure: Vec::new(),
            reading: EvalPoint {
                decoding: Some(mode),
                ..best.clone()
            },
        }
    }

    /// The manifest's metrics: the best evaluation's scores as evaluated (`joint`, as drawn:
    /// `cer`, `wer`, `cer:SET`), every choice compared (`cer@MODE` as drawn with the
    /// configured language-model weights, `cer@xFACTOR` in the chosen decoding,
    /// `cer@lm(alpha=A,beta=B)` at the chosen width, `cer@unsure(off)` and
    /// `cer@unsure(below=C,alpha=A)` at the chosen weights; each extra set's as `cer:SET@…`),
    /// and the model as served (`cer@served`, `wer@served`, `cer:SET@served`).
    pub(super) fn manifest_metrics(&self, best: &EvalPoint) -> BTreeMap<String, f64> {
        let mut metrics =
            BTreeMap::from([("cer".to_string(), best.cer), ("wer".to_string(), best.wer)]);
        for (name, cer) in &best.extra_cer {
            metrics.insert(format!("cer:{name}"), *cer);
        }
        add_compared(&mut metrics, &self.by_mode, |m| m.as_str().to_string());
        add_compared(&mut metrics, &self.by_width, |f| format!("x{f}"));
        add_compared(&mut metrics, &self.by_lm_weights, |(a, b)| {
            format!("lm(alpha={a},beta={b})")
        });
        add_compared(&mut metrics, &self.by_unsure, unsure_name);
        let served = &self.reading;
        metrics.insert("cer@served".to_string(), served.cer);
        metrics.insert("wer@served".to_string(), served.wer);
        for (name, cer) in &served.extra_cer {
            metrics.insert(format!("cer:{name}@served"), *cer);
        }
        metrics
    }
}

/// How a choice of unsure lines is named in logs and metrics: `unsure(off)` or
/// `unsure(below=C,alpha=A)`.
pub(super) fn unsure_name(unsure: &Option<UnsureLines>) -> String {
    match unsure {
        None => "unsure(off)".to_string(),
        Some(u) => format!("unsure(below={},alpha={})", u.below, u.alpha),
    }
}

/// Add every choice compared to the manifest's metrics, as `cer@WHAT` for the objective's set
/// (the first) and `cer:SET@WHAT` for the others.
fn add_compared<K>(
    metrics: &mut BTreeMap<String, f64>,
    by_set: &BySet<K>,
    what: impl Fn(&K) -> String,
) {
    for (i, (set, cers)) in by_set.iter().enumerate() {
        for (k, cer) in cers {
            let key = match i {
                0 => format!("cer@{}", what(k)),
                _ => format!("cer:{set}@{}", what(k)),
            };
            metrics.insert(key, *cer);
        }
    }
}

#[cfg(test)]
mod tests {
    use textrec_contract::manifest::UnsureLines;
    use textrec_contract::metrics::EvalPoint;
    use textrec_model::net::DecodeMode;

    use super::super::comparison::BySet;
    use super::DecodingChoice;

    #[test]
    fn the_manifest_records_every_choice_compared_and_the_model_as_served() {
        let point = |cer: f64, unseen: f64| EvalPoint {
            step: 40,
            cer,
            wer: cer * 4.0,
            extra_cer: [("unseen-fonts".to_string(), unseen)].into(),
            decoding: None,
            reading_width: None,
        };
        fn sets<K>(objective: Vec<(K, f64)>, unseen: Vec<(K, f64)>) -> BySet<K> {
            vec![
                ("validation".to_string(), objective),
                ("unseen-fonts".to_string(), unseen),
            ]
        }
        let unsure = UnsureLines {
            below: 0.4,
            alpha: 0.8,
            beta: 1.0,
        };
        let choice = DecodingChoice {
            mode: DecodeMode::CtcLm,
            by_mode: vec![
                (
                    "validation".to_string(),
                    vec![(DecodeMode::Ctc, 0.03), (DecodeMode::CtcLm, 0.02)],
                ),
                (
                    "unseen-fonts".to_string(),
                    vec![(DecodeMode::Ctc, 0.3), (DecodeMode::CtcLm, 0.2)],
                ),
            ],
            by_width: sets(
                vec![(1.0, 0.02), (1.1, 0.015)],
                vec![(1.0, 0.2), (1.1, 0.19)],
            ),
            by_lm_weights: vec![
                (
                    "validation".to_string(),
                    vec![((0.5, 2.0), 0.015), ((0.65, 1.0), 0.014)],
                ),
                (
                    "unseen-fonts".to_string(),
                    vec![((0.5, 2.0), 0.19), ((0.65, 1.0), 0.17)],
                ),
            ],
            by_unsure: sets(
                vec![(None, 0.014), (Some(unsure), 0.0145)],
                vec![(None, 0.17), (Some(unsure), 0.15)],
            ),
            reading: point(0.0145, 0.15),
        };
        let m = choice.manifest_metrics(&point(0.04, 0.4));
        let expected = [
            ("cer", 0.04),
            ("wer", 0.16),
            ("cer:unseen-fonts", 0.4),
            ("cer@ctc", 0.03),
            ("cer@ctc-lm", 0.02),
            ("cer:unseen-fonts@ctc", 0.3),
            ("cer:unseen-fonts@ctc-lm", 0.2),
            ("cer@x1", 0.02),
            ("cer@x1.1", 0.015),
            ("cer:unseen-fonts@x1.1", 0.19),
            ("cer@lm(alpha=0.65,beta=1)", 0.014),
            ("cer:unseen-fonts@lm(alpha=0.5,beta=2)", 0.19),
            ("cer@unsure(off)", 0.014),
            ("cer:unseen-fonts@unsure(below=0.4,alpha=0.8)", 0.15),
            ("cer@served", 0.0145),
            ("wer@served", 0.058),
            ("cer:unseen-fonts@served", 0.15),
        ];
        for (key, value) in expected {
            assert_eq!(m.get(key), Some(&value), "{key}: {m:?}");
        }
        assert_eq!(m.len(), 3 + 4 + 4 + 4 + 4 + 3, "{m:?}");
    }
}
