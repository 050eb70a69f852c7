//! Character and word error rates, computed the way OCR evaluation tools (ocreval,
//! dinglehopper) do: case-sensitive, on text whose whitespace runs are collapsed to one space
//! and trimmed.
//!
//! CER = character edit distance / reference characters; WER = word edit distance / reference
//! words (words are the space-separated tokens of the normalized text). Both can exceed 1 when
//! the hypothesis has many insertions.
//!
//! An empty reference has no denominator. dinglehopper reports infinity there; we report 0
//! when the hypothesis is empty too and 1 otherwise, so that metric records stay finite
//! (JSON has no infinity) and an empty-but-hallucinated line counts as fully wrong. Corpus
//! rates ([`ErrorCounts`]) sum errors and reference lengths over lines first, so an empty
//! reference line adds its insertions to the errors and nothing to the denominator.

/// `text` with every run of whitespace replaced by one space, and no leading/trailing space.
pub fn normalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for word in text.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

/// Levenshtein distance (unit-cost insertions, deletions and substitutions).
pub fn edit_distance<T: PartialEq>(a: &[T], b: &[T]) -> usize {
    // Keep the shorter sequence as the row: memory is O(min(len)).
    let (long, short) = if a.len() >= b.len() { (a, b) } else { (b, a) };
    if short.is_empty() {
        return long.len();
    }
    let mut row: Vec<usize> = (0..=short.len()).collect();
    for (i, x) in long.iter().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, y) in short.iter().enumerate() {
            let substitution = diagonal + usize::from(x != y);
            diagonal = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[short.len()]
}

/// Error and length totals over a set of lines; rates are totals divided by totals
/// (a long line weighs more than a short one, as in ocreval's summaries).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ErrorCounts {
    /// Sum of character edit distances.
    pub char_errors: u64,
    /// Sum of reference lengths in characters (after normalization).
    pub chars: u64,
    /// Sum of word edit distances.
    pub word_errors: u64,
    /// Sum of reference lengths in words.
    pub words: u64,
    /// Number of lines added.
    pub lines: u64,
}

impl ErrorCounts {
    /// Count one line.
    pub fn add(&mut self, reference: &str, hypothesis: &str) {
        let r = normalize(reference);
        let h = normalize(hypothesis);
        let rc: Vec<char> = r.chars().collect();
        let hc: Vec<char> = h.chars().collect();
        let rw = words(&r);
        let hw = words(&h);
        self.char_errors += edit_distance(&rc, &hc) as u64;
        self.chars += rc.len() as u64;
        self.word_errors += edit_distance(&rw, &hw) as u64;
        self.words += rw.len() as u64;
        self.lines += 1;
    }

    /// Character error rate over all lines added.
    pub fn cer(&self) -> f64 {
        rate(self.char_errors, self.chars)
    }

    /// Word error rate over all lines added.
    pub fn wer(&self) -> f64 {
        rate(self.word_errors, self.words)
    }

    /// Add another set's totals (e.g. from another evaluation shard).
    pub fn merge(&mut self, other: &ErrorCounts) {
        self.char_errors += other.char_errors;
        self.chars += other.chars;
        self.word_errors += other.word_errors;
        self.words += other.words;
        self.lines += other.lines;
    }
}

/// Upper bounds (in reference characters) of the line-length buckets that CER is reported by;
/// a last bucket holds everything longer.
pub const LENGTH_BUCKETS: [u32; 5] = [20, 40, 60, 80, 100];

/// Error totals of a set overall and by reference line length.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScoreCard {
    /// Totals over every line.
    pub total: ErrorCounts,
    /// Totals of the lines in each [`LENGTH_BUCKETS`] bucket, plus one for longer lines.
    pub by_length: [ErrorCounts; LENGTH_BUCKETS.len() + 1],
    /// The readings of the first [`ScoreCard::SAMPLES`] lines, as (reference, reading).
    pub samples: Vec<(String, String)>,
}

impl ScoreCard {
    /// How many lines' readings are kept as samples.
    pub const SAMPLES: usize = 4;

    /// Count one line, overall and in its length bucket; returns that line's counts.
    pub fn add(&mut self, reference: &str, hypothesis: &str) -> ErrorCounts {
        let mut line = ErrorCounts::default();
        line.add(reference, hypothesis);
        let bucket = LENGTH_BUCKETS
            .iter()
            .position(|&max| line.chars <= u64::from(max))
            .unwrap_or(LENGTH_BUCKETS.len());
        self.by_length[bucket].merge(&line);
        self.total.merge(&line);
        if self.samples.len() < Self::SAMPLES {
            self.samples
                .push((reference.to_string(), hypothesis.to_string()));
        }
        line
    }

    /// The scores as recorded in `metrics.jsonl` (empty buckets left out).
    pub fn score(&self) -> textrec_contract::metrics::SetScore {
        let by_length = self
            .by_length
            .iter()
            .enumerate()
            .filter(|(_, c)| c.lines > 0)
            .map(|(i, c)| textrec_contract::metrics::LengthScore {
                min_chars: if i == 0 { 0 } else { LENGTH_BUCKETS[i - 1] + 1 },
                max_chars: LENGTH_BUCKETS.get(i).copied().unwrap_or(u32::MAX),
                lines: c.lines,
                cer: c.cer(),
            })
            .collect();
        textrec_contract::metrics::SetScore {
            cer: self.total.cer(),
            wer: self.total.wer(),
            lines: self.total.lines,
            by_length,
            samples: self
                .samples
                .iter()
                .map(|(r, h)| textrec_contract::metrics::SamplePrediction {
                    reference: r.clone(),
                    prediction: h.clone(),
                })
                .collect(),
        }
    }
}

/// CER of one line.
pub fn cer(reference: &str, hypothesis: &str) -> f64 {
    let mut c = ErrorCounts::default();
    c.add(reference, hypothesis);
    c.cer()
}

/// WER of one line.
pub fn wer(reference: &str, hypothesis: &str) -> f64 {
    let mut c = ErrorCounts::default();
    c.add(reference, hypothesis);
    c.wer()
}

fn words(normalized: &str) -> Vec<&str> {
    if normalized.is_empty() {
        Vec::new()
    } else {
        normalized.split(' ').collect()
    }
}

fn rate(errors: u64, total: u64) -> f64 {
    match (errors, total) {
        (0, 0) => 0.0,
        (_, 0) => 1.0,
        (e, t) => e as f64 / t as f64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn score_card_buckets_lines_by_reference_length() {
        let mut card = ScoreCard::default();
        card.add("short line", "short lime");
        card.add(&"x".repeat(45), &"x".repeat(44));
        card.add(&"y".repeat(120), "");
        let s = card.score();
        assert_eq!(s.lines, 3);
        let buckets: Vec<(u32, u32, u64)> = s
            .by_length
            .iter()
            .map(|b| (b.min_chars, b.max_chars, b.lines))
            .collect();
        assert_eq!(buckets, [(0, 20, 1), (41, 60, 1), (101, u32::MAX, 1)]);
        assert_eq!(s.by_length[0].cer, 0.1);
        assert_eq!(s.by_length[2].cer, 1.0);
        assert_eq!(s.cer, card.total.cer());
        assert_eq!(card.total.char_errors, 1 + 1 + 120);
    }

    #[test]
    fn normalize_collapses_and_trims() {
        assert_eq!(normalize("  a \t b\n\nc  "), "a b c");
        assert_eq!(normalize(" \n "), "");
        assert_eq!(normalize("Ab"), "Ab");
    }

    #[test]
    fn known_distances() {
        let d = |a: &str, b: &str| {
            edit_distance(
                &a.chars().collect::<Vec<_>>(),
                &b.chars().collect::<Vec<_>>(),
            )
        };
        assert_eq!(d("kitten", "sitting"), 3);
        assert_eq!(d("", "abc"), 3);
        assert_eq!(d("abc", ""), 3);
        assert_eq!(d("flaw", "lawn"), 2);
        assert_eq!(d("abc", "abc"), 0);
        assert_eq!(d("ab", "ba"), 2);
    }

    #[test]
    fn cer_is_case_sensitive_and_ignores_whitespace_layout() {
        assert_eq!(cer("Hello world", "hello world"), 1.0 / 11.0);
        assert_eq!(cer("Hello  world ", " Hello world"), 0.0);
        assert_eq!(cer("ab", "abcd"), 1.0);
        assert_eq!(cer("abcd", "xyz"), 1.0);
        assert_eq!(cer("a", "abc"), 2.0, "insertions can push CER above 1");
    }

    #[test]
    fn wer_counts_word_edits() {
        assert_eq!(wer("the cat sat", "the cat sat"), 0.0);
        assert_eq!(wer("the cat sat", "the bat sat"), 1.0 / 3.0);
        assert_eq!(wer("the cat sat", "thecat sat"), 2.0 / 3.0);
        assert_eq!(wer("The  cat", "the cat"), 0.5);
    }

    #[test]
    fn empty_reference_edge_cases() {
        assert_eq!(cer("", ""), 0.0);
        assert_eq!(cer("  ", "\t"), 0.0);
        assert_eq!(cer("", "x"), 1.0);
        assert_eq!(wer("", ""), 0.0);
        assert_eq!(wer(" ", "a b"), 1.0);
        assert_eq!(cer("abc", ""), 1.0);
        assert_eq!(wer("a b", ""), 1.0);
        let mut c = ErrorCounts::default();
        c.add("", "xy");
        c.add("abcd", "abcd");
        assert_eq!((c.char_errors, c.chars, c.lines), (2, 4, 2));
        assert_eq!(c.cer(), 0.5);
        assert_eq!(ErrorCounts::default().cer(), 0.0);
    }

    #[test]
    fn counts_merge_as_if_added_together() {
        let lines = [
            ("a b c", "a c"),
            ("hello", "help"),
            ("", ""),
            ("x y", "x  y z"),
        ];
        let mut all = ErrorCounts::default();
        let mut first = ErrorCounts::default();
        let mut second = ErrorCounts::default();
        for (i, (r, h)) in lines.iter().enumerate() {
            all.add(r, h);
            if i < 2 {
                first.add(r, h)
            } else {
                second.add(r, h)
            }
        }
        first.merge(&second);
        assert_eq!(first, all);
        assert_eq!(all.lines, 4);
        assert_eq!(all.chars, 5 + 5 + 3);
        assert_eq!(all.char_errors, 2 + 2 + 2);
        assert_eq!(all.words, 3 + 1 + 2);
        assert_eq!(all.word_errors, 1 + 1 + 1);
    }

    proptest! {
        #[test]
        fn distance_is_a_bounded_symmetric_metric(a in "[abc ]{0,12}", b in "[abc ]{0,12}", c in "[abc]{0,6}") {
            let (a, b, c): (Vec<char>, Vec<char>, Vec<char>) =
                (a.chars().collect(), b.chars().collect(), c.chars().collect());
            let ab = edit_distance(&a, &b);
            prop_assert_eq!(ab, edit_distance(&b, &a));
            prop_assert!(ab <= a.len().max(b.len()));
            prop_assert!(ab >= a.len().abs_diff(b.len()));
            prop_assert_eq!(ab == 0, a == b);
            prop_assert!(edit_distance(&a, &c) <= ab + edit_distance(&b, &c));
        }

        #[test]
        fn rates_ignore_whitespace_layout(words in proptest::collection::vec("[a-zA-Z]{1,5}", 0..6), hyp in "[a-z ]{0,20}") {
            let tight = words.join(" ");
            let loose = format!("  {}\n", words.join(" \t "));
            prop_assert_eq!(cer(&tight, &hyp), cer(&loose, &hyp));
            prop_assert_eq!(wer(&tight, &hyp), wer(&loose, &hyp));
            prop_assert_eq!(cer(&tight, &tight), 0.0);
            prop_assert!(cer(&tight, &hyp) >= 0.0);
        }
    }
}
