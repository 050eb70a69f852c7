//! CTC prefix beam search, optionally scored with a character language model.
//!
//! Greedy CTC decoding takes the best label of each frame; where the image is ambiguous (a
//! script face's `n` that looks like `u`) it has no way to prefer the reading that is a word.
//! The prefix search keeps the `beam` likeliest readings (prefixes) frame by frame, each with
//! the probability of all its frame alignments ending in a blank and ending in a character,
//! and ranks them by `log P_ctc + alpha·log P_lm + beta·characters` (beta offsets the
//! language model's bias toward short readings). The end of the line is scored when the
//! search finishes.

use std::collections::HashMap;

use textrec_contract::manifest::UnsureLines;

use super::ngram::{CharNgram, LmState};

/// How the search runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SearchSettings {
    /// Readings kept after each frame.
    pub beam: usize,
    /// Weight of the language model's log-probability.
    pub alpha: f32,
    /// Bonus per character.
    pub beta: f32,
    /// The likeliest characters of a frame that may extend a reading; the rest are skipped.
    pub labels_per_frame: usize,
    /// Characters less likely than this (natural log) in a frame are skipped.
    pub min_log_prob: f32,
    /// The lines read with little confidence and searched again, and with which weights (the
    /// caller's to apply: a line's confidence is known only once its reading is scored).
    pub unsure: Option<UnsureLines>,
}

impl SearchSettings {
    /// The search over the CTC head alone (no language model to weigh).
    pub fn without_lm() -> Self {
        Self {
            alpha: 0.0,
            beta: 0.0,
            ..Self::default()
        }
    }

    /// The settings of the second search over a line read with little confidence, if there
    /// is one.
    pub fn for_unsure_lines(&self) -> Option<SearchSettings> {
        self.unsure.map(|u| SearchSettings {
            alpha: u.alpha,
            beta: u.beta,
            unsure: None,
            ..*self
        })
    }
}

impl Default for SearchSettings {
    fn default() -> Self {
        Self {
            beam: 12,
            alpha: 0.5,
            beta: 2.0,
            labels_per_frame: 6,
            min_log_prob: -12.0,
            unsure: None,
        }
    }
}

/// One frame-by-frame CTC output to search: `frames × vocab` log-probabilities, row-major.
#[derive(Debug, Clone, Copy)]
pub struct CtcFrames<'a> {
    /// The log-probabilities.
    pub log_probs: &'a [f32],
    /// Labels per frame: the blank, then ids below `first_char` that are never emitted, then
    /// the charset.
    pub vocab: usize,
    /// Label id of the blank.
    pub blank: usize,
    /// Label id of the charset's first character.
    pub first_char: usize,
}

const NEG: f64 = f64::NEG_INFINITY;

fn log_add(a: f64, b: f64) -> f64 {
    let (hi, lo) = if a > b { (a, b) } else { (b, a) };
    if lo == NEG {
        hi
    } else {
        hi + (lo - hi).exp().ln_1p()
    }
}

/// A reading in the prefix tree: its last label and the reading it extends.
struct Node {
    parent: u32,
    label: u32,
    chars: u32,
    state: LmState,
    /// `alpha·log P_lm + beta·chars` of the whole reading.
    lm_score: f64,
}

/// Probabilities of a reading's alignments so far: ending in a blank, ending in its last label.
#[derive(Clone, Copy)]
struct Paths {
    blank: f64,
    label: f64,
}

impl Paths {
    const NONE: Paths = Paths {
        blank: NEG,
        label: NEG,
    };

    fn total(self) -> f64 {
        log_add(self.blank, self.label)
    }
}

struct Tree<'a> {
    nodes: Vec<Node>,
    children: HashMap<(u32, u32), u32>,
    lm: Option<&'a CharNgram>,
    settings: SearchSettings,
    first_char: u32,
}

impl Tree<'_> {
    fn child(&mut self, parent: u32, label: u32) -> u32 {
        if let Some(&c) = self.children.get(&(parent, label)) {
            return c;
        }
        let p = &self.nodes[parent as usize];
        let (state, lm_score) = match self.lm {
            Some(lm) => {
                let (lp, state) = lm.score_char(p.state, (label - self.first_char) as usize);
                let s = self.settings;
                let gain = f64::from(s.alpha) * f64::from(lp) + f64::from(s.beta);
                (state, p.lm_score + gain)
            }
            None => (p.state, p.lm_score),
        };
        let id = self.nodes.len() as u32;
        let chars = p.chars + 1;
        self.nodes.push(Node {
            parent,
            label,
            chars,
            state,
            lm_score,
        });
        self.children.insert((parent, label), id);
        id
    }

    fn end_score(&self, node: u32) -> f64 {
        match self.lm {
            Some(lm) => {
                f64::from(self.settings.alpha)
                    * f64::from(lm.score_end(self.nodes[node as usize].state))
            }
            None => 0.0,
        }
    }

    fn labels(&self, mut node: u32) -> Vec<i64> {
        let mut out = Vec::with_capacity(self.nodes[node as usize].chars as usize);
        while node != 0 {
            let n = &self.nodes[node as usize];
            out.push(i64::from(n.label));
            node = n.parent;
        }
        out.reverse();
        out
    }
}

/// The best reading of `frames`, at most `max_chars` characters, as label ids. With `lm`,
/// its charset must be the labels from `first_char` on, in order.
pub fn prefix_search(
    frames: CtcFrames<'_>,
    lm: Option<&CharNgram>,
    settings: SearchSettings,
    max_chars: usize,
) -> Vec<i64> {
    let CtcFrames {
        log_probs,
        vocab,
        blank,
        first_char,
    } = frames;
    assert!(vocab > first_char && blank < first_char && log_probs.len() % vocab == 0);
    let mut tree = Tree {
        nodes: vec![Node {
            parent: 0,
            label: blank as u32,
            chars: 0,
            state: LmState::START,
            lm_score: 0.0,
        }],
        children: HashMap::new(),
        lm,
        settings,
        first_char: first_char as u32,
    };
    let mut beams: Vec<(u32, Paths)> = vec![(
        0,
        Paths {
            blank: 0.0,
            label: NEG,
        },
    )];
    let mut next: HashMap<u32, Paths> = HashMap::new();
    let mut candidates: Vec<(f32, u32)> = Vec::with_capacity(vocab);
    for row in log_probs.chunks_exact(vocab) {
        candidates.clear();
        candidates.extend(
            (first_char..vocab)
                .filter(|&k| row[k] >= settings.min_log_prob)
                .map(|k| (row[k], k as u32)),
        );
        candidates.sort_unstable_by(|a, b| b.0.total_cmp(&a.0));
        candidates.truncate(settings.labels_per_frame);
        let p_blank = f64::from(row[blank]);

        next.clear();
        for &(node, paths) in &beams {
            let total = paths.total();
            let stay = next.entry(node).or_insert(Paths::NONE);
            stay.blank = log_add(stay.blank, total + p_blank);
            let last = tree.nodes[node as usize].label;
            if node != 0 {
                // The last label again, with no blank between: the same reading.
                stay.label = log_add(stay.label, paths.label + f64::from(row[last as usize]));
            }
            if tree.nodes[node as usize].chars as usize >= max_chars {
                continue;
            }
            for &(lp, label) in &candidates {
                let child = tree.child(node, label);
                // After the same label, only a path through a blank starts a new character.
                let from = if label == last && node != 0 {
                    paths.blank
                } else {
                    total
                };
                let grown = next.entry(child).or_insert(Paths::NONE);
                grown.label = log_add(grown.label, from + f64::from(lp));
            }
        }
        beams.clear();
        beams.extend(next.iter().map(|(&n, &p)| (n, p)));
        let rank = |&(n, p): &(u32, Paths)| p.total() + tree.nodes[n as usize].lm_score;
        // Ties broken by node id, so the result never depends on hash order.
        beams.sort_unstable_by(|a, b| rank(b).total_cmp(&rank(a)).then(a.0.cmp(&b.0)));
        beams.truncate(settings.beam.max(1));
    }
    let best = beams
        .iter()
        .map(|&(n, p)| {
            (
                n,
                p.total() + tree.nodes[n as usize].lm_score + tree.end_score(n),
            )
        })
        .max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0)))
        .map(|(n, _)| n)
        .unwrap_or(0);
    tree.labels(best)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lm::ngram::NgramSpec;

    // Labels: 0 blank, 1 unused, then "a", "b", " ".
    const VOCAB: usize = 5;
    const A: usize = 2;
    const B: usize = 3;

    fn frames(rows: &[[f32; VOCAB]]) -> Vec<f32> {
        rows.iter()
            .flat_map(|r| {
                let sum: f32 = r.iter().sum();
                r.iter().map(move |p| (p / sum).max(1e-9).ln())
            })
            .collect()
    }

    fn search(
        lp: &[f32],
        lm: Option<&CharNgram>,
        settings: SearchSettings,
        cap: usize,
    ) -> Vec<i64> {
        let f = CtcFrames {
            log_probs: lp,
            vocab: VOCAB,
            blank: 0,
            first_char: 2,
        };
        prefix_search(f, lm, settings, cap)
    }

    #[test]
    fn clear_frames_read_as_greedy_decoding_does() {
        // a a _ a b b _ → "aab"
        let lp = frames(&[
            [0.0, 0.0, 1.0, 0.0, 0.0],
            [0.0, 0.0, 1.0, 0.0, 0.0],
            [1.0, 0.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 1.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 1.0, 0.0],
            [0.0, 0.0, 0.0, 1.0, 0.0],
            [1.0, 0.0, 0.0, 0.0, 0.0],
        ]);
        let s = SearchSettings::default();
        assert_eq!(search(&lp, None, s, 100), vec![2, 2, 3]);
        // The cap bounds the reading (the best of at most two characters).
        assert_eq!(search(&lp, None, s, 2).len(), 2);
        assert!(search(&lp, None, s, 0).is_empty());
        assert!(search(&[], None, s, 10).is_empty());
    }

    #[test]
    fn summing_alignments_beats_the_best_single_path() {
        let s = SearchSettings::default();
        let lp = frames(&[[0.55, 0.0, 0.45, 0.0, 0.0], [0.55, 0.0, 0.45, 0.0, 0.0]]);
        // Greedy would read "" (blank, blank); P("a") = 0.45·0.55·2 + 0.45² = 0.70 wins.
        assert_eq!(search(&lp, None, s, 10), vec![A as i64]);
    }

    #[test]
    fn the_language_model_settles_an_ambiguous_frame() {
        let lm = CharNgram::count(
            ["ab ab ab", "ab", "ab ab", "ba"],
            "ab ",
            NgramSpec {
                order: 3,
                min_count: 1,
            },
        )
        .unwrap();
        // "a", then a frame torn between "a" (0.55) and "b" (0.45).
        let lp = frames(&[
            [0.0, 0.0, 1.0, 0.0, 0.0],
            [1.0, 0.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.55, 0.45, 0.0],
        ]);
        let without = SearchSettings {
            alpha: 0.0,
            beta: 0.0,
            ..SearchSettings::default()
        };
        assert_eq!(
            search(&lp, Some(&lm), without, 10),
            vec![A as i64, A as i64]
        );
        let with = SearchSettings {
            alpha: 1.0,
            beta: 0.0,
            ..SearchSettings::default()
        };
        assert_eq!(search(&lp, Some(&lm), with, 10), vec![A as i64, B as i64]);
    }
}
