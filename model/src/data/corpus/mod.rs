//! The text synthetic lines are made of: English prose from Debian's `fortunes` files, words
//! and names from the `wamerican` word list, and generated numbers, dates, times, amounts,
//! names and codes. No other text source is used (other prose is kept for independent
//! evaluation).
//!
//! Text is mapped into the charset on load: typographic quotes and dashes become their ASCII
//! forms, brackets become parentheses, whitespace runs one space; a word that still holds an
//! unsupported character (`$5`, `a@b.c`, `100%`) is dropped whole rather than mangled.
//!
//! Train/validation split: every fortune (after mapping) and every word-list entry goes to
//! validation when a stable hash of its text falls in the lowest [`VALIDATION_PER_MILLE`]
//! per mille, so held-out text never appears in training, in any run, on any machine. Names
//! are word-list entries and follow their word. Generated numbers and dates cannot be held out
//! by text; validation draws them from its own fixed seed.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use rand::seq::SliceRandom;
use rand::Rng;
use textrec_contract::config::{SyntheticConfig, TextSplit};

use super::stable_hash;
use generated::generated_line;
pub use sources::{documentation_paragraphs, map_into_charset, DOCUMENTATION_DIR};
use sources::{
    looks_like_prose, package_descriptions, read_fortune_files, split_fortunes, DescriptionsSource,
    BUILTIN_DESCRIPTIONS,
};

mod generated;
mod sources;
#[cfg(test)]
mod tests;

/// Share of corpus text (per mille) held out for validation.
pub const VALIDATION_PER_MILLE: u64 = 50;

/// Whether a source text belongs to the validation split.
pub fn is_validation(text: &str) -> bool {
    stable_hash(text.as_bytes()) % 1000 < VALIDATION_PER_MILLE
}

/// Both splits of the corpus, mapped into one charset.
#[derive(Debug)]
pub struct Corpus {
    train: TextPool,
    validation: TextPool,
    /// Package descriptions (with the validation split's words and names), when loaded.
    descriptions: Option<TextPool>,
    charset: HashSet<char>,
}

/// The text of one split.
#[derive(Debug, Default)]
pub struct TextPool {
    /// Fortunes, each one normalized string (words separated by single spaces).
    passages: Vec<String>,
    /// Running word count: `cum_words[i]` = words in passages `0..=i` (for picking a word
    /// uniformly, so long fortunes are not under-sampled).
    cum_words: Vec<u64>,
    /// Source lines of the fortunes kept (for reporting).
    source_lines: u64,
    /// Word-list entries.
    words: Vec<String>,
    /// Capitalized word-list entries without apostrophes: names and places.
    names: Vec<String>,
}

/// Sizes of one split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CorpusStats {
    /// Fortunes.
    pub passages: u64,
    /// Lines of text those fortunes had in their files.
    pub source_lines: u64,
    /// Words of prose.
    pub prose_words: u64,
    /// Word-list entries.
    pub words: u64,
    /// Names among them.
    pub names: u64,
}

impl Corpus {
    /// Load the fortune files and the word list a synthetic config names, mapped into
    /// `charset`. Loaded corpora are cached per process (training and validation share one).
    pub fn load(cfg: &SyntheticConfig, charset: &str) -> Result<Arc<Corpus>> {
        type Key = (String, String, String, DescriptionsSource);
        static CACHE: Mutex<Vec<(Key, Arc<Corpus>)>> = Mutex::new(Vec::new());
        let descriptions = DescriptionsSource::of(cfg);
        let key = (
            cfg.fortunes_dir.clone(),
            cfg.words_file.clone(),
            charset.to_string(),
            descriptions.clone(),
        );
        let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, c)) = cache.iter().find(|(k, _)| *k == key) {
            return Ok(c.clone());
        }
        let mut corpus = Self::read_sources(cfg, charset)?;
        match descriptions {
            DescriptionsSource::None => {}
            DescriptionsSource::Shipped => corpus.add_descriptions(BUILTIN_DESCRIPTIONS),
            DescriptionsSource::File(file) => {
                let status = std::fs::read(&file).with_context(|| {
                    format!(
                        "cannot read the package descriptions in {file} (the `descriptions` \
                         text split reads a dpkg status file; leave `descriptions_file` empty \
                         for the descriptions shipped with textrec, or use `split: validation`)"
                    )
                })?;
                corpus.add_descriptions(&String::from_utf8_lossy(&status));
                if corpus.stats(TextSplit::Descriptions).passages == 0 {
                    bail!("{file} holds no package descriptions");
                }
            }
        }
        let corpus = Arc::new(corpus);
        for split in [
            TextSplit::Train,
            TextSplit::Validation,
            TextSplit::Descriptions,
        ] {
            let s = corpus.stats(split);
            tracing::info!(?split, ?s, "corpus loaded");
        }
        cache.push((key, corpus.clone()));
        Ok(corpus)
    }

    /// The corpus of `cfg` whose `descriptions` split is `passages` (raw text, mapped into the
    /// charset here) instead of package descriptions, its word lines and names drawn from the
    /// same text: for an independent evaluation set, whose text comes from a source that
    /// training and validation never read. Not cached.
    pub fn load_with_descriptions(
        cfg: &SyntheticConfig,
        charset: &str,
        passages: impl IntoIterator<Item = String>,
    ) -> Result<Corpus> {
        let mut corpus = Self::read_sources(cfg, charset)?;
        let mut pool = corpus.prose_pool(passages);
        if pool.passages.is_empty() {
            bail!("the evaluation text holds no prose (paragraphs of two or more words)");
        }
        // Word lines and generated names come from the same text, not from the word list that
        // validation draws on.
        let mut seen = HashSet::new();
        pool.words = pool
            .passages
            .iter()
            .flat_map(|p| p.split(' '))
            .filter(|w| w.chars().all(char::is_alphabetic) && seen.insert(*w))
            .map(String::from)
            .collect();
        pool.names = pool
            .words
            .iter()
            .filter(|w| w.chars().next().is_some_and(char::is_uppercase))
            .cloned()
            .collect();
        corpus.descriptions = Some(pool);
        Ok(corpus)
    }

    /// The fortune files and the word list `cfg` names.
    fn read_sources(cfg: &SyntheticConfig, charset: &str) -> Result<Corpus> {
        let fortunes = read_fortune_files(Path::new(&cfg.fortunes_dir))?;
        let words = std::fs::read(&cfg.words_file).with_context(|| {
            format!(
                "cannot read the word list {}: install the Debian package wamerican (apt-get install wamerican)",
                cfg.words_file
            )
        })?;
        let texts: Vec<String> = fortunes
            .iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        Ok(Corpus::from_texts(
            &refs,
            &String::from_utf8_lossy(&words),
            charset,
        ))
    }

    /// Build a corpus from the contents of fortune files and a word list.
    pub fn from_texts(fortune_files: &[&str], word_list: &str, charset: &str) -> Corpus {
        let charset: HashSet<char> = charset.chars().collect();
        let mut train = TextPool::default();
        let mut validation = TextPool::default();
        let mut seen = HashSet::new();
        for file in fortune_files {
            for entry in split_fortunes(file) {
                let text = map_into_charset(&entry, &charset);
                if !looks_like_prose(&text) || !seen.insert(text.clone()) {
                    continue;
                }
                let pool = if is_validation(&text) {
                    &mut validation
                } else {
                    &mut train
                };
                pool.source_lines += entry.lines().filter(|l| !l.trim().is_empty()).count() as u64;
                let n = text.split(' ').count() as u64;
                pool.cum_words
                    .push(pool.cum_words.last().copied().unwrap_or(0) + n);
                pool.passages.push(text);
            }
        }
        for raw in word_list.lines() {
            let w = map_into_charset(raw, &charset);
            if w.is_empty() || w.contains(' ') || !seen.insert(w.clone()) {
                continue;
            }
            let pool = if is_validation(&w) {
                &mut validation
            } else {
                &mut train
            };
            let mut chars = w.chars();
            let is_name = chars.next().is_some_and(|c| c.is_ascii_uppercase())
                && w.len() > 1
                && chars.all(|c| c.is_ascii_lowercase());
            if is_name {
                pool.names.push(w.clone());
            }
            pool.words.push(w);
        }
        Corpus {
            train,
            validation,
            descriptions: None,
            charset,
        }
    }

    /// Add the package descriptions of a dpkg status file as the `descriptions` split. Its
    /// generated names and word lines come from the validation split's words, so no training
    /// text reaches it.
    pub fn add_descriptions(&mut self, status: &str) {
        self.set_descriptions(package_descriptions(status));
    }

    /// Make `passages` (raw text, mapped into the charset here; passages that are not prose
    /// and repeats are dropped) the `descriptions` split, with the validation split's words
    /// and names for its generated lines.
    pub fn set_descriptions(&mut self, passages: impl IntoIterator<Item = String>) {
        let pool = TextPool {
            words: self.validation.words.clone(),
            names: self.validation.names.clone(),
            ..self.prose_pool(passages)
        };
        self.descriptions = Some(pool);
    }

    /// The prose of `passages` (mapped into the charset; passages that are not prose and
    /// repeats dropped) as a pool without words or names.
    fn prose_pool(&self, passages: impl IntoIterator<Item = String>) -> TextPool {
        let mut pool = TextPool::default();
        let mut seen = HashSet::new();
        for entry in passages {
            let text = map_into_charset(&entry, &self.charset);
            if !looks_like_prose(&text) || !seen.insert(text.clone()) {
                continue;
            }
            pool.source_lines += entry.lines().count() as u64;
            let n = text.split(' ').count() as u64;
            pool.cum_words
                .push(pool.cum_words.last().copied().unwrap_or(0) + n);
            pool.passages.push(text);
        }
        pool
    }

    /// The text of one split (the `descriptions` split is empty unless loaded).
    pub fn pool(&self, split: TextSplit) -> &TextPool {
        const EMPTY: &TextPool = &TextPool {
            passages: Vec::new(),
            cum_words: Vec::new(),
            source_lines: 0,
            words: Vec::new(),
            names: Vec::new(),
        };
        match split {
            TextSplit::Train => &self.train,
            TextSplit::Validation => &self.validation,
            TextSplit::Descriptions => self.descriptions.as_ref().unwrap_or(EMPTY),
        }
    }

    /// Sizes of one split.
    pub fn stats(&self, split: TextSplit) -> CorpusStats {
        let p = self.pool(split);
        CorpusStats {
            passages: p.passages.len() as u64,
            source_lines: p.source_lines,
            prose_words: p.cum_words.last().copied().unwrap_or(0),
            words: p.words.len() as u64,
            names: p.names.len() as u64,
        }
    }

    /// The text of `split` as lines, for counting a language model over: each fortune broken
    /// at spaces into lines of at most `width` characters (as a page sets it), and the word
    /// list eight entries to a line.
    pub fn lines(&self, split: TextSplit, width: usize) -> Vec<String> {
        let pool = self.pool(split);
        let mut out = Vec::new();
        for passage in &pool.passages {
            let mut line = String::new();
            for word in passage.split(' ') {
                if !line.is_empty() && line.len() + 1 + word.len() > width {
                    out.push(std::mem::take(&mut line));
                }
                if !line.is_empty() {
                    line.push(' ');
                }
                line.push_str(word);
            }
            if !line.is_empty() {
                out.push(line);
            }
        }
        out.extend(pool.words.chunks(8).map(|w| w.join(" ")));
        out
    }

    /// Draw one line of `min..=max` characters from `split`: generated text with probability
    /// `generated_fraction`, otherwise a stretch of prose (mostly) or a run of random
    /// dictionary words. Some lines are set in capitals, as headings and forms are. Lengths
    /// spread around `mean` as printed lines do ([`draw_length`]), or uniformly without one.
    pub fn sample_line<R: Rng>(
        &self,
        split: TextSplit,
        rng: &mut R,
        min: usize,
        max: usize,
        mean: Option<usize>,
        generated_fraction: f64,
    ) -> String {
        let pool = self.pool(split);
        let (min, max) = (min.max(1), max.max(min.max(1)));
        for _ in 0..64 {
            let target = draw_length(rng, min, max, mean);
            let line = if rng.gen_bool(generated_fraction.clamp(0.0, 1.0)) {
                generated_line(pool, rng, target, max)
            } else if !pool.passages.is_empty() && rng.gen_bool(0.75) {
                pool.prose_line(rng, target, max)
            } else {
                word_line(pool, rng, target, max)
            };
            let line = match rng.gen_range(0..100) {
                0..=2 => line.to_uppercase(),
                3 => line.to_lowercase(),
                _ => line,
            };
            let n = line.chars().count();
            if (min..=max).contains(&n) && line.chars().all(|c| self.charset.contains(&c)) {
                return line;
            }
        }
        // Only reachable with a corpus that has almost nothing in the charset.
        let fallback: String = self
            .charset
            .iter()
            .filter(|c| c.is_alphanumeric())
            .take(min)
            .collect();
        if fallback.is_empty() {
            "0".repeat(min)
        } else {
            fallback
        }
    }
}

impl TextPool {
    /// A stretch of consecutive words of one fortune, about `target` characters long, from a
    /// word picked uniformly over all prose. A first word longer than `target` is kept whole
    /// up to `max` characters (a fragment of a word is a poor line).
    fn prose_line<R: Rng>(&self, rng: &mut R, target: usize, max: usize) -> String {
        let total = *self.cum_words.last().expect("non-empty");
        let u = rng.gen_range(0..total);
        let p = self.cum_words.partition_point(|&c| c <= u);
        let first = u - if p == 0 { 0 } else { self.cum_words[p - 1] };
        let words: Vec<&str> = self.passages[p].split(' ').collect();
        let first = first as usize;
        let mut line = cut(words[first], max);
        let mut end = first + 1;
        while end < words.len() && line.len() + 1 + words[end].len() <= target {
            line.push(' ');
            line.push_str(words[end]);
            end += 1;
        }
        // A passage that ends short of the target runs on into the next one, as a page of
        // text does: long lines must not be rarer than the length distribution says.
        if end == words.len() && self.passages.len() > 1 {
            let next = &self.passages[(p + 1) % self.passages.len()];
            for w in next.split(' ') {
                if line.len() + 1 + w.len() > target {
                    break;
                }
                line.push(' ');
                line.push_str(w);
            }
            return line;
        }
        let mut start = first;
        while start > 0 && line.len() + 1 + words[start - 1].len() <= target {
            start -= 1;
            line = format!("{} {line}", words[start]);
        }
        line
    }
}

/// A target line length in `min..=max`. Without a mean, uniform. With one, the spread of
/// printed lines: most lines are full lines near the mean (a normal with a standard deviation
/// of a third of it), one in six is the short last line of a paragraph or a heading (uniform
/// below the mean).
pub fn draw_length<R: Rng>(rng: &mut R, min: usize, max: usize, mean: Option<usize>) -> usize {
    let Some(mean) = mean else {
        return rng.gen_range(min..=max);
    };
    let mean = mean.clamp(min, max);
    let n = if rng.gen_bool(1.0 / 6.0) {
        rng.gen_range(min..=mean) as f64
    } else {
        // Lines end at a word boundary, a few characters short of the target on average.
        let centre = mean as f64 + 5.0;
        centre + centre / 3.0 * super::render::gaussian(rng) as f64
    };
    (n.round().max(0.0) as usize).clamp(min, max)
}

/// Cut a piece to at most `max` characters (URLs and similar run-ons; a generated item such
/// as a date may end in a space once cut, which is trimmed).
fn cut(piece: &str, max: usize) -> String {
    let cut: String = piece.chars().take(max.max(1)).collect();
    cut.trim_end().to_string()
}

/// Random dictionary words (and names) up to `target` characters.
fn word_line<R: Rng>(pool: &TextPool, rng: &mut R, target: usize, max: usize) -> String {
    if pool.words.is_empty() {
        return String::new();
    }
    fill(target, max, || {
        let w = pool.words.choose(rng).expect("non-empty");
        w.clone()
    })
}

/// Join pieces drawn by `next` with spaces while they fit in `target` characters; the first
/// piece is kept whole if it fits in `max`, else cut.
pub(super) fn fill(target: usize, max: usize, mut next: impl FnMut() -> String) -> String {
    let mut line = cut(&next(), max);
    let mut misses = 0;
    for _ in 0..32 {
        let piece = next();
        if line.len() + 1 + piece.len() > target {
            // A shorter piece may still fit: lines should reach their drawn length.
            misses += 1;
            if misses > 3 {
                break;
            }
            continue;
        }
        line.push(' ');
        line.push_str(&piece);
    }
    line
}
