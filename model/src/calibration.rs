//! How well a line's confidence picks out the lines read wrong: what tells a user which
//! confidence to send to review (the demo page's flags, a human check, another reader).
//!
//! A line is *wrong* when its reading differs from the reference at all (after the same
//! normalization as CER). The figures are the ones a review policy needs: how often a wrong
//! line ranks below a right one (the area under the ROC curve), and for a few thresholds how
//! many lines fall below, how many of those are wrong, and what the lines kept read at.

use serde::Serialize;

use crate::metrics::ErrorCounts;

/// Confidence thresholds the report is given at.
pub const THRESHOLDS: [f64; 5] = [0.5, 0.6, 0.7, 0.8, 0.9];

/// Lines with their confidence and errors, as they were read.
#[derive(Debug, Clone, Default)]
pub struct ConfidenceCard {
    lines: Vec<(f32, ErrorCounts)>,
}

/// What a confidence threshold does on the lines scored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ThresholdRow {
    /// Lines with a confidence below this are flagged.
    pub below: f64,
    /// Share of all lines flagged.
    pub flagged: f64,
    /// Share of the flagged lines that are wrong (`None`: none flagged).
    pub wrong_among_flagged: Option<f64>,
    /// Share of the wrong lines that are flagged (`None`: no line is wrong).
    pub wrong_caught: Option<f64>,
    /// CER of the lines not flagged (`None`: all flagged).
    pub cer_kept: Option<f64>,
}

/// The summary of a [`ConfidenceCard`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConfidenceReport {
    /// Lines scored.
    pub lines: u64,
    /// Lines not read exactly.
    pub wrong_lines: u64,
    /// Probability that a wrong line has a lower confidence than a right one (ties count
    /// half): the area under the ROC curve of flagging by confidence. 0.5 is chance; `None`
    /// when every line is right or every line is wrong.
    pub auroc: Option<f64>,
    /// The [`THRESHOLDS`], lowest first.
    pub thresholds: Vec<ThresholdRow>,
}

impl ConfidenceCard {
    /// One line read with `confidence`, by its error counts (as [`crate::metrics::ScoreCard::add`]
    /// returns them).
    pub fn add(&mut self, line: ErrorCounts, confidence: f32) {
        self.lines.push((confidence, line));
    }

    /// The report, or `None` before any line was added.
    pub fn report(&self) -> Option<ConfidenceReport> {
        if self.lines.is_empty() {
            return None;
        }
        let wrong = |c: &ErrorCounts| c.char_errors > 0;
        let n = self.lines.len();
        let wrong_lines = self.lines.iter().filter(|(_, c)| wrong(c)).count();
        let thresholds = THRESHOLDS
            .iter()
            .map(|&below| {
                let mut kept = ErrorCounts::default();
                let (mut flagged, mut flagged_wrong) = (0usize, 0usize);
                for (confidence, counts) in &self.lines {
                    if *confidence < below as f32 {
                        flagged += 1;
                        flagged_wrong += usize::from(wrong(counts));
                    } else {
                        kept.merge(counts);
                    }
                }
                ThresholdRow {
                    below,
                    flagged: flagged as f64 / n as f64,
                    wrong_among_flagged: share(flagged_wrong, flagged),
                    wrong_caught: share(flagged_wrong, wrong_lines),
                    cer_kept: (kept.lines > 0).then(|| kept.cer()),
                }
            })
            .collect();
        Some(ConfidenceReport {
            lines: n as u64,
            wrong_lines: wrong_lines as u64,
            auroc: self.auroc(),
            thresholds,
        })
    }

    /// Mann-Whitney: the rank sum of the right lines' confidences among all lines (ties share
    /// their mean rank) gives how often a right line outranks a wrong one.
    fn auroc(&self) -> Option<f64> {
        let mut sorted: Vec<(f32, bool)> = self
            .lines
            .iter()
            .map(|(conf, c)| (*conf, c.char_errors == 0))
            .collect();
        sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
        let right = sorted.iter().filter(|(_, r)| *r).count();
        let wrong = sorted.len() - right;
        if right == 0 || wrong == 0 {
            return None;
        }
        let mut rank_sum = 0.0;
        let mut i = 0;
        while i < sorted.len() {
            let mut j = i;
            while j < sorted.len() && sorted[j].0 == sorted[i].0 {
                j += 1;
            }
            // Ranks i+1 ..= j share their mean.
            let mean_rank = (i + 1 + j) as f64 / 2.0;
            rank_sum += mean_rank * sorted[i..j].iter().filter(|(_, r)| *r).count() as f64;
            i = j;
        }
        let right = right as f64;
        Some((rank_sum - right * (right + 1.0) / 2.0) / (right * wrong as f64))
    }
}

fn share(part: usize, whole: usize) -> Option<f64> {
    (whole > 0).then(|| part as f64 / whole as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn card(lines: &[(&str, f32)]) -> ConfidenceCard {
        let mut c = ConfidenceCard::default();
        for (hyp, conf) in lines {
            let mut line = ErrorCounts::default();
            line.add("abcd", hyp);
            c.add(line, *conf);
        }
        c
    }

    #[test]
    fn a_confidence_that_ranks_every_wrong_line_lowest_scores_one() {
        let r = card(&[
            ("abcd", 0.95),
            ("abcx", 0.4),
            ("abcd", 0.75),
            ("xbcx", 0.55),
        ])
        .report()
        .unwrap();
        assert_eq!((r.lines, r.wrong_lines), (4, 2));
        assert_eq!(r.auroc, Some(1.0));
        let at = |t: f64| r.thresholds.iter().find(|row| row.below == t).unwrap();
        // Below 0.5: one line, wrong; the rest hold one wrong line of three (2 errors in 12).
        let row = at(0.5);
        assert_eq!(row.flagged, 0.25);
        assert_eq!(row.wrong_among_flagged, Some(1.0));
        assert_eq!(row.wrong_caught, Some(0.5));
        assert_eq!(row.cer_kept, Some(2.0 / 12.0));
        // Below 0.6 both wrong lines are caught and the kept lines are exact.
        assert_eq!(at(0.6).wrong_caught, Some(1.0));
        assert_eq!(at(0.6).cer_kept, Some(0.0));
        // Below 0.8 a right line is flagged too.
        assert_eq!(at(0.8).wrong_among_flagged, Some(2.0 / 3.0));
        // Below 0.9... still not the 0.95 line.
        assert_eq!(at(0.9).flagged, 0.75);
    }

    #[test]
    fn an_inverted_or_uninformative_confidence_scores_zero_or_one_half() {
        let inverted = card(&[("abcd", 0.1), ("abcx", 0.9)]).report().unwrap();
        assert_eq!(inverted.auroc, Some(0.0));
        // Ties count half.
        let flat = card(&[("abcd", 0.5), ("abcx", 0.5), ("abcd", 0.5)])
            .report()
            .unwrap();
        assert_eq!(flat.auroc, Some(0.5));
        // Matches counting the pairs one by one on a mixed case.
        let lines = [
            ("abcd", 0.9),
            ("abxd", 0.9),
            ("abcd", 0.3),
            ("xxxx", 0.2),
            ("abcd", 0.6),
            ("abcx", 0.7),
        ];
        let by_pairs = {
            let right: Vec<f32> = lines
                .iter()
                .filter(|l| l.0 == "abcd")
                .map(|l| l.1)
                .collect();
            let wrong: Vec<f32> = lines
                .iter()
                .filter(|l| l.0 != "abcd")
                .map(|l| l.1)
                .collect();
            let wins: f64 = wrong
                .iter()
                .flat_map(|w| right.iter().map(move |r| (w, r)))
                .map(|(w, r)| {
                    if w < r {
                        1.0
                    } else if w == r {
                        0.5
                    } else {
                        0.0
                    }
                })
                .sum();
            wins / (right.len() * wrong.len()) as f64
        };
        assert_eq!(card(&lines).report().unwrap().auroc, Some(by_pairs));
    }

    #[test]
    fn all_right_or_nothing_read_has_no_ranking() {
        assert!(ConfidenceCard::default().report().is_none());
        let r = card(&[("abcd", 0.9), ("abcd", 0.2)]).report().unwrap();
        assert_eq!(r.auroc, None);
        assert_eq!(r.thresholds[0].wrong_caught, None);
        let all = r.thresholds.last().unwrap();
        assert_eq!((all.flagged, all.cer_kept), (0.5, Some(0.0)));
    }
}
