//! Choosing among candidates (decodings, reading widths, language-model weights, …) on
//! several validation sets at once: each set's CER relative to that set's lowest, averaged, so
//! every set has an equal say and the objective's set cannot pick what reads it a few
//! characters better and another set far worse.

use anyhow::Result;
use textrec_contract::metrics::EvalPoint;
use textrec_model::net::DecodeMode;

use super::super::validation::ValidationSet;

/// The index of the choice with the lowest mean relative CER: `cers[set][choice]` divided by
/// the set's lowest, averaged over the sets; ties go to the earlier choice. CERs are floored
/// at 0.001 first, so a set read perfectly at one width does not divide by zero (a few hundred
/// lines tell no finer difference apart anyway).
pub(super) fn lowest_relative_mean(cers: &[Vec<f64>]) -> usize {
    const FLOOR: f64 = 0.001;
    let lowest: Vec<f64> = cers
        .iter()
        .map(|set| set.iter().fold(f64::INFINITY, |a, &c| a.min(c)).max(FLOOR))
        .collect();
    let choices: Vec<usize> = (0..cers.first().map_or(0, Vec::len)).collect();
    first_lowest(&choices, |&i| {
        cers.iter()
            .zip(&lowest)
            .map(|(set, best)| set[i].max(FLOOR) / best)
            .sum::<f64>()
            / cers.len() as f64
    })
}

/// The first of the items with the lowest `cer` (ties go to the earlier, cheaper choice).
pub(super) fn first_lowest<T: Copy>(items: &[T], cer: impl Fn(&T) -> f64) -> T {
    items.iter().copied().fold(
        items[0],
        |best, x| if cer(&x) < cer(&best) { x } else { best },
    )
}

/// Each of `sets` validation sets read with each candidate, and the index of the candidate with the
/// lowest mean relative CER ([`lowest_relative_mean`]); `readings[set][candidate]` is a (CER,
/// WER). `known` gives a reading already made (it is not made again), `read` makes one and
/// gives `None` on a stop request, which ends the comparison with `None`.
pub(super) fn compare<K>(
    sets: usize,
    candidates: &[K],
    known: impl Fn(&K, usize) -> Option<(f64, f64)>,
    mut read: impl FnMut(&K, usize) -> Result<Option<(f64, f64)>>,
) -> Result<Option<(usize, Readings)>> {
    let mut readings = vec![Vec::with_capacity(candidates.len()); sets];
    for candidate in candidates {
        for (s, set) in readings.iter_mut().enumerate() {
            let reading = match known(candidate, s) {
                Some(r) => r,
                None => match read(candidate, s)? {
                    Some(r) => r,
                    None => return Ok(None),
                },
            };
            set.push(reading);
        }
    }
    let cers: Vec<Vec<f64>> = readings
        .iter()
        .map(|set| set.iter().map(|r| r.0).collect())
        .collect();
    Ok(Some((lowest_relative_mean(&cers), readings)))
}

/// One log line per set: its CER with each candidate (`name(candidate)`).
pub(super) fn log_compared(
    what: &str,
    vals: &[ValidationSet],
    readings: &[Vec<(f64, f64)>],
    name: impl Fn(usize) -> String,
) {
    for (val, r) in vals.iter().zip(readings) {
        let listed: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, (cer, _))| format!("{} {cer:.4}", name(i)))
            .collect();
        tracing::info!("{what}: {} CER {}", val.name, listed.join(", "));
    }
}

/// `readings[set][choice]` as each set's name with its CER by choice (`key(choice)`).
pub(super) fn by_set<K>(
    vals: &[ValidationSet],
    readings: &[Vec<(f64, f64)>],
    key: impl Fn(usize) -> K,
) -> Vec<(String, Vec<(K, f64)>)> {
    vals.iter()
        .zip(readings)
        .map(|(val, r)| {
            let cers = r.iter().enumerate().map(|(i, c)| (key(i), c.0)).collect();
            (val.name.clone(), cers)
        })
        .collect()
}

/// Set `s`'s (CER, WER) in `point`, when it holds it (extra sets' WERs are not kept: 0).
pub(super) fn set_reading(point: &EvalPoint, s: usize, name: &str) -> Option<(f64, f64)> {
    match s {
        0 => Some((point.cer, point.wer)),
        _ => point.extra_cer.get(name).map(|&c| (c, 0.0)),
    }
}

/// `base` with every set's scores taken from `readings[set][chosen]`.
pub(super) fn reading_of(
    base: &EvalPoint,
    vals: &[ValidationSet],
    readings: &[Vec<(f64, f64)>],
    chosen: usize,
    decoding: Option<DecodeMode>,
    reading_width: Option<f64>,
) -> EvalPoint {
    let (cer, wer) = readings[0][chosen];
    EvalPoint {
        step: base.step,
        cer,
        wer,
        extra_cer: vals[1..]
            .iter()
            .zip(&readings[1..])
            .map(|(val, r)| (val.name.clone(), r[chosen].0))
            .collect(),
        decoding,
        reading_width,
    }
}

/// Each validation set's (CER, WER) by candidate, `readings[set][candidate]`, the objective's
/// set first.
pub(super) type Readings = Vec<Vec<(f64, f64)>>;

/// CER of each validation set (the objective's first) by the choice it was read with.
pub(super) type BySet<K> = Vec<(String, Vec<(K, f64)>)>;

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::{compare, lowest_relative_mean};

    #[test]
    fn a_comparison_reads_only_what_it_does_not_know_and_stops_when_asked() {
        // Two sets, three candidates; candidate 1 was read already (an evaluation's `joint`).
        let made = RefCell::new(Vec::new());
        let cers = [[0.02, 0.01, 0.03], [0.30, 0.20, 0.10]];
        let (chosen, readings) = compare(
            2,
            &[0usize, 1, 2],
            |&c, s| (c == 1).then_some((cers[s][c], 0.5)),
            |&c, s| {
                made.borrow_mut().push((c, s));
                Ok(Some((cers[s][c], 0.0)))
            },
        )
        .unwrap()
        .unwrap();
        assert_eq!(*made.borrow(), [(0, 0), (0, 1), (2, 0), (2, 1)]);
        assert_eq!(readings[0], [(0.02, 0.0), (0.01, 0.5), (0.03, 0.0)]);
        // Relative means: (2 + 3) / 2, (1 + 2) / 2, (3 + 1) / 2.
        assert_eq!(chosen, 1);
        // A stop request in the middle ends it without a choice.
        let stopped = compare(
            2,
            &[0usize, 1],
            |_, _| None,
            |&c, _| Ok((c == 0).then_some((0.1, 0.1))),
        );
        assert!(stopped.unwrap().is_none());
    }

    #[test]
    fn every_set_has_an_equal_say_in_the_reading_width() {
        // The objective's set prefers the third width by a hair; the hard set prefers the
        // second by far more: the mean of relative CERs picks the second.
        let cers = vec![vec![0.0096, 0.0066, 0.0063], vec![0.0666, 0.0639, 0.0726]];
        assert_eq!(lowest_relative_mean(&cers), 1);
        // One set alone: its lowest, the earlier of a tie.
        assert_eq!(lowest_relative_mean(&[vec![0.03, 0.02, 0.02]]), 1);
        // Sets read perfectly at some width neither divide by zero nor outweigh the rest.
        let cers = vec![vec![0.0, 0.0005, 0.002], vec![0.20, 0.10, 0.10]];
        assert_eq!(lowest_relative_mean(&cers), 1);
    }
}
