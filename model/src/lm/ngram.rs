//! A character n-gram language model in backoff form, counted over training text.
//!
//! Probabilities are interpolated Witten-Bell estimates: for a context `h` seen `c(h)` times
//! with `t(h)` different followers, `P(w | h) = λ·c(h w)/c(h) + (1 - λ)·P(w | h')` with
//! `λ = c(h) / (c(h) + t(h))` and `h'` the context one character shorter, down to a uniform
//! distribution. Witten-Bell needs no held-out data and behaves well on the small counts of a
//! character model.
//!
//! The stored model is pruned: n-grams of order three and up seen fewer than `min_count` times
//! are dropped, and the backoff weights are recomputed so that each context's distribution
//! still sums to one. Each order is a sorted table of packed n-grams (every symbol in a few
//! bits of one `u64`) with their log-probabilities, and of contexts with their backoff weights,
//! so a lookup is a binary search per order and the model is a few flat arrays on disk.
//!
//! Lines are modelled whole: each starts after `order - 1` line-start symbols and ends with an
//! end-of-line symbol, so the model knows how lines begin and end.

use std::collections::{HashMap, HashSet};

use anyhow::{bail, ensure, Context, Result};
use tch::{Device, Kind, Tensor};

use crate::tensorio;

/// Format tag stored in the file's metadata.
pub const LM_FORMAT: &str = "textrec.charlm/v1";

/// The line-start symbol: pads the context before a line's first character. Being zero, the
/// state of a fresh line is the packed value 0.
const START: u32 = 0;

/// How a model is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NgramSpec {
    /// Longest n-gram, in characters (the context is one less).
    pub order: usize,
    /// N-grams of order three and up seen fewer times than this are dropped.
    pub min_count: u32,
}

impl Default for NgramSpec {
    fn default() -> Self {
        Self {
            order: 6,
            min_count: 5,
        }
    }
}

/// One order's tables.
#[derive(Debug, Clone, Default, PartialEq)]
struct Level {
    /// Packed n-grams (context then character), ascending.
    keys: Vec<u64>,
    /// Natural log-probability of each n-gram's character after its context.
    log_probs: Vec<f32>,
    /// Packed contexts that back off with a weight other than one, ascending.
    context_keys: Vec<u64>,
    /// Natural log of each context's backoff weight.
    backoffs: Vec<f32>,
}

fn find(keys: &[u64], key: u64) -> Option<usize> {
    keys.binary_search(&key).ok()
}

/// A character language model over one charset (see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct CharNgram {
    order: usize,
    bits: u32,
    charset: String,
    /// `levels[n - 1]` holds the n-grams of order `n`.
    levels: Vec<Level>,
}

/// What is known about the text a line's reading has so far: its last `order - 1` symbols,
/// packed. [`LmState::START`] is the state before a line's first character.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LmState(u64);

impl LmState {
    /// Nothing read yet.
    pub const START: LmState = LmState(0);
}

impl CharNgram {
    /// Count a model of `spec` over `lines` (each a whole line of text). Characters outside
    /// `charset` are an error: map the text into the charset first.
    pub fn count<'a>(
        lines: impl IntoIterator<Item = &'a str>,
        charset: &str,
        spec: NgramSpec,
    ) -> Result<Self> {
        let symbols = Symbols::new(charset, spec.order)?;
        let order = spec.order;
        // counts[n - 1]: occurrences of each n-gram of order n.
        let mut counts: Vec<HashMap<u64, u32>> = vec![HashMap::new(); order];
        let mut line_count = 0u64;
        let mut seq = Vec::new();
        for line in lines {
            seq.clear();
            seq.resize(order - 1, START);
            for c in line.chars() {
                seq.push(
                    symbols
                        .of(c)
                        .with_context(|| format!("character {c:?} of line {line_count}"))?,
                );
            }
            seq.push(symbols.end());
            for i in order - 1..seq.len() {
                for n in 1..=order {
                    *counts[n - 1]
                        .entry(symbols.pack(&seq[i + 1 - n..=i]))
                        .or_default() += 1;
                }
            }
            line_count += 1;
        }
        ensure!(line_count > 0, "no text to count a language model over");
        Ok(Self::estimate(&symbols, &counts, spec))
    }

    /// Witten-Bell probabilities from the counts, then pruning and backoff weights.
    fn estimate(symbols: &Symbols, counts: &[HashMap<u64, u32>], spec: NgramSpec) -> Self {
        let order = spec.order;
        let bits = symbols.bits;
        let vocab = f64::from(symbols.end()); // the charset and the end of line
        let mut model = CharNgram {
            order,
            bits,
            charset: symbols.charset.clone(),
            levels: vec![Level::default(); order],
        };
        // The unpruned interpolated probabilities of the order below, by n-gram.
        let mut lower: HashMap<u64, f64> = HashMap::new();
        for n in 1..=order {
            // Per context: total count and number of distinct followers.
            let mut stats: HashMap<u64, (u64, u64)> = HashMap::new();
            for (&key, &c) in &counts[n - 1] {
                let s = stats.entry(key >> bits).or_default();
                s.0 += u64::from(c);
                s.1 += 1;
            }
            let lower_prob = |key: u64| -> f64 {
                if n == 1 {
                    1.0 / vocab
                } else {
                    lower[&(key & symbols.mask(n - 1))]
                }
            };
            let mut probs: HashMap<u64, f64> = HashMap::with_capacity(counts[n - 1].len());
            for (&key, &c) in &counts[n - 1] {
                let (total, types) = stats[&(key >> bits)];
                let lambda = total as f64 / (total + types) as f64;
                let p = lambda * f64::from(c) / total as f64 + (1.0 - lambda) * lower_prob(key);
                probs.insert(key, p);
            }
            if n == 1 {
                // Every symbol gets a unigram, seen or not, so a lookup always ends.
                let (total, types) = stats.get(&0).copied().unwrap_or((0, 0));
                let unseen = if total == 0 {
                    1.0 / vocab
                } else {
                    (types as f64 / (total + types) as f64) / vocab
                };
                for s in 1..=symbols.end() {
                    probs.entry(u64::from(s)).or_insert(unseen);
                }
            }
            let kept: Vec<u64> = {
                let mut k: Vec<u64> = probs
                    .keys()
                    .copied()
                    .filter(|key| {
                        n < 3 || counts[n - 1].get(key).copied().unwrap_or(0) >= spec.min_count
                    })
                    .collect();
                k.sort_unstable();
                k
            };
            let level = &mut model.levels[n - 1];
            level.log_probs = kept.iter().map(|k| probs[k].ln() as f32).collect();
            level.keys = kept;
            if n > 1 {
                model.set_backoffs(n, &probs);
            }
            lower = probs;
        }
        model
    }

    /// Backoff weights of order `n`'s contexts, so that each context's kept probabilities
    /// and its backed-off rest sum to one.
    fn set_backoffs(&mut self, n: usize, probs: &HashMap<u64, f64>) {
        let bits = self.bits;
        // Per context: the mass of its kept n-grams, and what the order below gives them.
        let mut mass: HashMap<u64, (f64, f64)> = HashMap::new();
        let level = &self.levels[n - 1];
        for &key in &level.keys {
            let context = key >> bits;
            let below = self.log_prob_at(n - 1, key).exp();
            let m = mass.entry(context).or_default();
            m.0 += probs[&key];
            m.1 += below;
        }
        let mut contexts: Vec<(u64, f32)> = mass
            .into_iter()
            .map(|(context, (kept, below))| {
                let weight = (1.0 - kept).max(1e-12) / (1.0 - below).max(1e-12);
                (context, weight.ln() as f32)
            })
            .collect();
        contexts.sort_unstable_by_key(|c| c.0);
        let level = &mut self.levels[n - 1];
        level.context_keys = contexts.iter().map(|c| c.0).collect();
        level.backoffs = contexts.iter().map(|c| c.1).collect();
    }

    /// Log-probability of the last symbol of packed n-gram `key` (of order `n`), looked up in
    /// orders `n` and below.
    fn log_prob_at(&self, n: usize, key: u64) -> f64 {
        let mut backoff = 0f64;
        for m in (1..=n).rev() {
            let level = &self.levels[m - 1];
            let k = key & mask(self.bits, m);
            if let Some(i) = find(&level.keys, k) {
                return backoff + f64::from(level.log_probs[i]);
            }
            if m > 1 {
                if let Some(i) = find(&level.context_keys, k >> self.bits) {
                    backoff += f64::from(level.backoffs[i]);
                }
            }
        }
        // Every symbol has a unigram; a symbol that is no character of the charset has none.
        f64::NEG_INFINITY
    }

    /// The n-gram order.
    pub fn order(&self) -> usize {
        self.order
    }

    /// The characters the model knows, in symbol order.
    pub fn charset(&self) -> &str {
        &self.charset
    }

    /// Stored n-grams over all orders.
    pub fn ngrams(&self) -> u64 {
        self.levels.iter().map(|l| l.keys.len() as u64).sum()
    }

    /// Natural log-probability that character number `index` of the charset (0-based) comes
    /// next after `state`, and the state after it.
    pub fn score_char(&self, state: LmState, index: usize) -> (f32, LmState) {
        let symbol = index as u64 + 1;
        let key = (state.0 << self.bits) | symbol;
        let next = LmState(key & mask(self.bits, self.order - 1));
        (self.log_prob_at(self.order, key) as f32, next)
    }

    /// Natural log-probability that the line ends after `state`.
    pub fn score_end(&self, state: LmState) -> f32 {
        let end = self.charset.chars().count() as u64 + 1;
        self.log_prob_at(self.order, (state.0 << self.bits) | end) as f32
    }

    /// Natural log-probability of a whole line, its end included (characters outside the
    /// charset are an error).
    pub fn score_line(&self, line: &str) -> Result<f64> {
        let index: HashMap<char, usize> = self.charset.chars().zip(0..).collect();
        let mut state = LmState::START;
        let mut total = 0f64;
        for c in line.chars() {
            let i = *index
                .get(&c)
                .with_context(|| format!("{c:?} is not in the language model's charset"))?;
            let (lp, next) = self.score_char(state, i);
            total += f64::from(lp);
            state = next;
        }
        Ok(total + f64::from(self.score_end(state)))
    }

    /// Serialize as safetensors: per order `N`, `order_N.keys` (I64), `order_N.log_probs`
    /// (F16), `order_N.context_keys` (I64) and `order_N.backoffs` (F16); the metadata holds
    /// the format, order, bits per symbol and charset. The same model gives the same bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut named = Vec::new();
        for (i, level) in self.levels.iter().enumerate() {
            let n = i + 1;
            let keys =
                |k: &[u64]| Tensor::from_slice(&k.iter().map(|&k| k as i64).collect::<Vec<_>>());
            let half = |v: &[f32]| Tensor::from_slice(v).to_kind(Kind::Half);
            named.push((format!("order_{n}.keys"), keys(&level.keys)));
            named.push((format!("order_{n}.log_probs"), half(&level.log_probs)));
            named.push((format!("order_{n}.context_keys"), keys(&level.context_keys)));
            named.push((format!("order_{n}.backoffs"), half(&level.backoffs)));
        }
        let metadata = HashMap::from([
            ("format".to_string(), LM_FORMAT.to_string()),
            ("order".to_string(), self.order.to_string()),
            ("bits".to_string(), self.bits.to_string()),
            ("charset".to_string(), self.charset.clone()),
        ]);
        tensorio::to_safetensors(&named, Some(metadata))
    }

    /// Parse what [`CharNgram::to_bytes`] wrote. A file of another kind, a truncated or
    /// inconsistent one is an error, never a panic.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let metadata = tensorio::safetensors_metadata(bytes)?;
        let get = |k: &str| {
            metadata
                .get(k)
                .with_context(|| format!("the language model file has no `{k}` metadata"))
        };
        let format = get("format")?;
        if format != LM_FORMAT {
            bail!("language model format is `{format}`, expected `{LM_FORMAT}`");
        }
        let order: usize = get("order")?.parse().context("metadata `order`")?;
        let charset = get("charset")?.clone();
        let symbols = Symbols::new(&charset, order)?;
        let bits: u32 = get("bits")?.parse().context("metadata `bits`")?;
        ensure!(
            bits == symbols.bits,
            "metadata `bits` is {bits}; a charset of {} characters needs {}",
            charset.chars().count(),
            symbols.bits
        );
        let mut tensors: HashMap<String, Tensor> = tensorio::from_safetensors(bytes, Device::Cpu)?
            .into_iter()
            .collect();
        let mut take = |name: String, kind: Kind| -> Result<Tensor> {
            let t = tensors
                .remove(&name)
                .with_context(|| format!("the language model file has no tensor `{name}`"))?;
            ensure!(
                t.kind() == kind,
                "tensor `{name}` is {:?}, expected {kind:?}",
                t.kind()
            );
            ensure!(t.dim() == 1, "tensor `{name}` is not one-dimensional");
            Ok(t)
        };
        let mut levels = Vec::with_capacity(order);
        for n in 1..=order {
            let keys = |t: Tensor| -> Result<Vec<u64>> {
                Ok(Vec::<i64>::try_from(t)?
                    .into_iter()
                    .map(|k| k as u64)
                    .collect())
            };
            let floats = |t: Tensor| -> Result<Vec<f32>> {
                Ok(Vec::<f32>::try_from(t.to_kind(Kind::Float))?)
            };
            let level = Level {
                keys: keys(take(format!("order_{n}.keys"), Kind::Int64)?)?,
                log_probs: floats(take(format!("order_{n}.log_probs"), Kind::Half)?)?,
                context_keys: keys(take(format!("order_{n}.context_keys"), Kind::Int64)?)?,
                backoffs: floats(take(format!("order_{n}.backoffs"), Kind::Half)?)?,
            };
            ensure!(
                level.keys.len() == level.log_probs.len()
                    && level.context_keys.len() == level.backoffs.len(),
                "order {n}: keys and values differ in length"
            );
            let sorted = |k: &[u64]| k.windows(2).all(|w| w[0] < w[1]);
            ensure!(
                sorted(&level.keys) && sorted(&level.context_keys),
                "order {n}: keys are not strictly ascending"
            );
            let limit = |m: usize| mask(bits, m);
            ensure!(
                level.keys.iter().all(|&k| k <= limit(n))
                    && level.context_keys.iter().all(|&k| k <= limit(n - 1)),
                "order {n}: a key is wider than {n} symbols"
            );
            levels.push(level);
        }
        let unigrams = &levels[0].keys;
        ensure!(
            (1..=symbols.end()).all(|s| find(unigrams, u64::from(s)).is_some()),
            "the model lacks unigrams for some of its characters"
        );
        if let Some(extra) = tensors.keys().next() {
            bail!("the language model file has an unexpected tensor `{extra}`");
        }
        Ok(Self {
            order,
            bits,
            charset,
            levels,
        })
    }
}

fn mask(bits: u32, symbols: usize) -> u64 {
    let width = bits as usize * symbols;
    if width >= 64 {
        u64::MAX
    } else {
        (1u64 << width) - 1
    }
}

/// Symbol numbering: 0 is the line start, then the charset in order, then the line end.
struct Symbols {
    charset: String,
    index: HashMap<char, u32>,
    bits: u32,
}

impl Symbols {
    fn new(charset: &str, order: usize) -> Result<Self> {
        let chars: Vec<char> = charset.chars().collect();
        let distinct: HashSet<char> = chars.iter().copied().collect();
        ensure!(!chars.is_empty(), "the charset is empty");
        ensure!(
            distinct.len() == chars.len(),
            "the charset repeats a character"
        );
        let symbols = chars.len() as u64 + 2;
        let bits = 64 - (symbols - 1).leading_zeros();
        ensure!(
            (2..=10).contains(&order),
            "language model order {order} is outside 2..=10"
        );
        ensure!(
            bits as usize * order <= 63,
            "a language model of order {order} over {} characters does not fit 63 bits per \
             n-gram; use order {} or less",
            chars.len(),
            63 / bits as usize
        );
        Ok(Self {
            charset: charset.to_string(),
            index: chars.iter().copied().zip(1..).collect(),
            bits,
        })
    }

    fn of(&self, c: char) -> Result<u32> {
        self.index
            .get(&c)
            .copied()
            .with_context(|| format!("not in the charset: {c:?}"))
    }

    fn end(&self) -> u32 {
        self.index.len() as u32 + 1
    }

    fn mask(&self, symbols: usize) -> u64 {
        mask(self.bits, symbols)
    }

    fn pack(&self, seq: &[u32]) -> u64 {
        seq.iter()
            .fold(0u64, |k, &s| (k << self.bits) | u64::from(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHARSET: &str = "abcd ";

    fn model(lines: &[&str], order: usize, min_count: u32) -> CharNgram {
        CharNgram::count(
            lines.iter().copied(),
            CHARSET,
            NgramSpec { order, min_count },
        )
        .unwrap()
    }

    /// Sum of P(w | state) over every character and the end.
    fn total_prob(m: &CharNgram, state: LmState) -> f64 {
        let chars = m.charset().chars().count();
        (0..chars)
            .map(|i| f64::from(m.score_char(state, i).0).exp())
            .sum::<f64>()
            + f64::from(m.score_end(state)).exp()
    }

    fn state_after(m: &CharNgram, text: &str) -> LmState {
        let mut s = LmState::START;
        for c in text.chars() {
            s = m.score_char(s, CHARSET.find(c).unwrap()).1;
        }
        s
    }

    const TEXT: &[&str] = &["abc abc", "abd", "ab ab ab", "cab", "dad bad", "abc"];

    #[test]
    fn every_context_is_a_distribution_pruned_or_not() {
        for min_count in [1, 2, 5] {
            let m = model(TEXT, 4, min_count);
            for history in ["", "a", "ab", "abc", "ab ab", "dd", "cccc", "d d d"] {
                let total = total_prob(&m, state_after(&m, history));
                assert!(
                    (total - 1.0).abs() < 2e-3,
                    "min_count {min_count}, {history:?}: {total}"
                );
            }
        }
    }

    #[test]
    fn seen_text_is_likelier_than_a_scramble_and_pruning_keeps_that() {
        let full = model(TEXT, 4, 1);
        let pruned = model(TEXT, 4, 2);
        assert!(pruned.ngrams() < full.ngrams());
        for m in [&full, &pruned] {
            let seen = m.score_line("abc abc").unwrap();
            let scramble = m.score_line("cba cba").unwrap();
            assert!(seen > scramble + 3.0, "{seen} vs {scramble}");
        }
        // After "ab", "c" was seen more often than "a".
        let s = state_after(&full, "ab");
        assert!(full.score_char(s, 2).0 > full.score_char(s, 0).0);
        assert!(full.score_line("abx").is_err());
    }

    #[test]
    fn files_round_trip_and_corruption_is_an_error() {
        let m = model(TEXT, 5, 1);
        let bytes = m.to_bytes().unwrap();
        assert_eq!(
            bytes,
            m.to_bytes().unwrap(),
            "the same model, the same bytes"
        );
        let back = CharNgram::from_bytes(&bytes).unwrap();
        assert_eq!(back.order(), 5);
        assert_eq!(back.charset(), CHARSET);
        for line in TEXT {
            let (a, b) = (m.score_line(line).unwrap(), back.score_line(line).unwrap());
            // Stored as f16.
            assert!(
                (a - b).abs() < 0.05 * line.len() as f64,
                "{line}: {a} vs {b}"
            );
        }
        let err = CharNgram::from_bytes(&bytes[..bytes.len() - 3]).unwrap_err();
        assert!(format!("{err:#}").contains("safetensors"), "{err:#}");
        let weights =
            tensorio::to_safetensors(&[("w".into(), Tensor::from_slice(&[1f32]))], None).unwrap();
        let err = format!("{:#}", CharNgram::from_bytes(&weights).unwrap_err());
        assert!(err.contains("no `format`"), "{err}");
    }

    #[test]
    fn bad_specs_and_text_are_refused() {
        let err = |lines: &[&str], cs: &str, order| {
            format!(
                "{:#}",
                CharNgram::count(
                    lines.iter().copied(),
                    cs,
                    NgramSpec {
                        order,
                        min_count: 1
                    }
                )
                .unwrap_err()
            )
        };
        assert!(err(&["abz"], CHARSET, 3).contains("'z'"));
        assert!(err(&[], CHARSET, 3).contains("no text"));
        assert!(err(&["ab"], "", 3).contains("empty"));
        assert!(err(&["ab"], "aa", 3).contains("repeats"));
        assert!(err(&["ab"], CHARSET, 1).contains("outside"));
        // 256 characters take 9 bits a symbol: order 8 needs 72.
        let wide: String = (0x100u32..0x200).filter_map(char::from_u32).collect();
        assert!(err(&["\u{100}"], &wide, 8).contains("63 bits"));
    }
}
