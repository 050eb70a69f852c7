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
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use rand::seq::SliceRandom;
use rand::Rng;
use textrec_contract::config::{SyntheticConfig, TextSplit};

use super::stable_hash;

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

/// Package descriptions shipped with textrec (`model/data/package-descriptions.txt`, in dpkg
/// status form): the `descriptions` split's text when the config names no status file, so that
/// a validation set holds the same lines on every machine and in every container image.
const BUILTIN_DESCRIPTIONS: &str = include_str!("../../data/package-descriptions.txt");

/// Where a config's `descriptions` split takes its text from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum DescriptionsSource {
    /// Another split: no descriptions are loaded.
    None,
    /// [`BUILTIN_DESCRIPTIONS`].
    Shipped,
    /// The dpkg status file the config names.
    File(String),
}

impl DescriptionsSource {
    fn of(cfg: &SyntheticConfig) -> Self {
        match cfg.split {
            TextSplit::Descriptions if cfg.descriptions_file.is_empty() => Self::Shipped,
            TextSplit::Descriptions => Self::File(cfg.descriptions_file.clone()),
            TextSplit::Train | TextSplit::Validation => Self::None,
        }
    }
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
        let mut corpus = Corpus::from_texts(&refs, &String::from_utf8_lossy(&words), charset);
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
        let mut pool = TextPool {
            words: self.validation.words.clone(),
            names: self.validation.names.clone(),
            ..TextPool::default()
        };
        let mut seen = HashSet::new();
        for entry in package_descriptions(status) {
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
        self.descriptions = Some(pool);
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

/// The package descriptions of a dpkg status file: the synopsis and the extended text of each
/// `Description:` field, joined into one passage.
fn package_descriptions(status: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in status.lines() {
        if let Some(rest) = line.strip_prefix("Description:") {
            if let Some(done) = current.take() {
                out.push(done);
            }
            current = Some(rest.trim().to_string());
        } else if let (Some(text), true) = (current.as_mut(), line.starts_with(' ')) {
            let piece = line.trim();
            if piece != "." {
                text.push(' ');
                text.push_str(piece);
            }
        } else if let Some(done) = current.take() {
            out.push(done);
        }
    }
    out.extend(current);
    out
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
fn fill(target: usize, max: usize, mut next: impl FnMut() -> String) -> String {
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

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];
const CURRENCIES: [&str; 8] = ["EUR", "USD", "GBP", "CHF", "JPY", "CAD", "AUD", "SEK"];
const TITLES: [&str; 6] = ["Mr.", "Mrs.", "Ms.", "Dr.", "Prof.", "Rev."];
/// Form labels that glue generated fields into something that looks like a receipt or form.
const LABELS: [&str; 16] = [
    "Total:", "Date:", "Due", "Paid", "Invoice", "No.", "Ref.", "Tel.", "Room", "Page", "Qty",
    "from", "to", "at", "on", "and",
];

/// Numbers, dates, times, amounts, names and codes, up to `target` characters.
fn generated_line<R: Rng>(pool: &TextPool, rng: &mut R, target: usize, max: usize) -> String {
    fill(target, max, || generated_item(pool, rng))
}

fn generated_item<R: Rng>(pool: &TextPool, rng: &mut R) -> String {
    match rng.gen_range(0..10) {
        0 | 1 => number(rng),
        2 | 3 => date(rng),
        4 => time(rng),
        5 | 6 => amount(rng),
        7 => name(pool, rng),
        8 => code(rng),
        _ => LABELS.choose(rng).expect("non-empty").to_string(),
    }
}

fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn magnitude<R: Rng>(rng: &mut R) -> u64 {
    let digits = rng.gen_range(1..=7);
    rng.gen_range(0..10u64.pow(digits))
}

fn number<R: Rng>(rng: &mut R) -> String {
    let n = magnitude(rng);
    match rng.gen_range(0..9) {
        0 => grouped(n),
        1 => format!("{}.{:02}", n % 10_000, rng.gen_range(0..100)),
        2 => format!("-{}", n % 1000),
        3 => format!("{}/{}", rng.gen_range(1..10), rng.gen_range(2..17)),
        4 => {
            let a = n % 500;
            format!("{a}-{}", a + rng.gen_range(1..50))
        }
        5 => {
            let unit = [
                "kg", "g", "km", "m", "cm", "mm", "ml", "l", "lbs", "oz", "ft", "in",
            ]
            .choose(rng)
            .expect("units");
            format!(
                "{}{}{unit}",
                n % 1000,
                if rng.gen_bool(0.7) { " " } else { "" }
            )
        }
        6 => {
            let k = n % 100 + 1;
            let suffix = match (k % 10, k % 100) {
                (_, 11..=13) => "th",
                (1, _) => "st",
                (2, _) => "nd",
                (3, _) => "rd",
                _ => "th",
            };
            format!("{k}{suffix}")
        }
        7 => format!("#{}", n % 10_000),
        _ => n.to_string(),
    }
}

fn date<R: Rng>(rng: &mut R) -> String {
    let (d, m, y) = (
        rng.gen_range(1..=28),
        rng.gen_range(1..=12usize),
        rng.gen_range(1890..=2035),
    );
    let month = MONTHS[m - 1];
    match rng.gen_range(0..9) {
        0 => format!("{d:02}/{m:02}/{y}"),
        1 => format!("{m}/{d}/{:02}", y % 100),
        2 => format!("{y}-{m:02}-{d:02}"),
        3 => format!("{d:02}.{m:02}.{y}"),
        4 => format!("{month} {d}, {y}"),
        5 => format!("{d} {} {y}", &month[..3]),
        6 => format!("{}, {d} {month}", WEEKDAYS.choose(rng).expect("days")),
        7 => format!("{} {y}", month),
        _ => format!("{d}.{m}.{:02}", y % 100),
    }
}

fn time<R: Rng>(rng: &mut R) -> String {
    let (h, m, s) = (
        rng.gen_range(0..24),
        rng.gen_range(0..60),
        rng.gen_range(0..60),
    );
    match rng.gen_range(0..4) {
        0 => format!("{h:02}:{m:02}"),
        1 => format!("{h:02}:{m:02}:{s:02}"),
        2 => format!(
            "{}:{m:02} {}",
            h % 12 + 1,
            if rng.gen_bool(0.5) { "am" } else { "pm" }
        ),
        _ => format!(
            "{}.{m:02} {}",
            h % 12 + 1,
            if rng.gen_bool(0.5) { "a.m." } else { "p.m." }
        ),
    }
}

fn amount<R: Rng>(rng: &mut R) -> String {
    let cur = CURRENCIES.choose(rng).expect("currencies");
    let n = magnitude(rng) / 10;
    let value = match rng.gen_range(0..3) {
        0 => grouped(n),
        1 => format!("{}.{:02}", grouped(n), rng.gen_range(0..100)),
        _ => format!("{n}.{:02}", rng.gen_range(0..100)),
    };
    if rng.gen_bool(0.5) {
        format!("{value} {cur}")
    } else {
        format!("{cur} {value}")
    }
}

fn name<R: Rng>(pool: &TextPool, rng: &mut R) -> String {
    let Some(first) = pool.names.choose(rng) else {
        return number(rng);
    };
    let last = pool.names.choose(rng).expect("non-empty");
    let initial = &first[..1];
    match rng.gen_range(0..5) {
        0 => format!("{first} {last}"),
        1 => format!("{initial}. {last}"),
        2 => format!("{last}, {first}"),
        3 => format!("{} {last}", TITLES.choose(rng).expect("titles")),
        _ => format!("{} {initial}. {last}", TITLES.choose(rng).expect("titles")),
    }
}

fn code<R: Rng>(rng: &mut R) -> String {
    let letter = |rng: &mut R| char::from(b'A' + rng.gen_range(0..26u8));
    match rng.gen_range(0..4) {
        0 => format!(
            "{}{}-{:04}",
            letter(rng),
            letter(rng),
            rng.gen_range(0..10_000)
        ),
        1 => format!("{}/{}", rng.gen_range(1..100), rng.gen_range(100..1000)),
        2 => format!(
            "({}) {:03}-{:04}",
            rng.gen_range(200..1000),
            rng.gen_range(0..1000),
            rng.gen_range(0..10_000)
        ),
        _ => format!(
            "+{} {} {:04}",
            rng.gen_range(1..100),
            rng.gen_range(10..1000),
            rng.gen_range(0..10_000)
        ),
    }
}

/// The fortune files of a folder: every regular file except the `strfile` indexes (`.dat`)
/// and the `.u8` links; subfolders (Debian keeps the offensive ones in `off/`) are not read.
fn read_fortune_files(dir: &Path) -> Result<Vec<Vec<u8>>> {
    let install = "install the Debian package fortunes (apt-get install fortunes)";
    let entries = std::fs::read_dir(dir).with_context(|| {
        format!(
            "cannot read the fortunes folder {}: {install}",
            dir.display()
        )
    })?;
    let mut paths: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.is_file() && !matches!(p.extension().and_then(|e| e.to_str()), Some("dat" | "u8"))
        })
        .collect();
    paths.sort();
    if paths.is_empty() {
        bail!("no fortune files in {}: {install}", dir.display());
    }
    paths
        .iter()
        .map(|p| std::fs::read(p).with_context(|| format!("cannot read {}", p.display())))
        .collect()
}

/// The entries of a fortune file (separated by lines holding only `%`).
fn split_fortunes(file: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in file.lines() {
        if line.trim_end() == "%" {
            if !cur.trim().is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            cur.clear();
        } else {
            cur.push_str(line);
            cur.push('\n');
        }
    }
    if !cur.trim().is_empty() {
        out.push(cur);
    }
    out
}

/// Map raw text into the charset (see the module docs).
pub fn map_into_charset(raw: &str, charset: &HashSet<char>) -> String {
    let mut cleaned = String::with_capacity(raw.len());
    for c in raw.chars() {
        // Fortune files underline and embolden with backspace overstrikes (`_\bX`).
        if c == '\u{8}' {
            cleaned.pop();
            continue;
        }
        let mapped: &str = match c {
            '\u{2018}' | '\u{2019}' | '`' | '\u{b4}' => "'",
            '\u{201c}' | '\u{201d}' => "\"",
            '\u{2013}' | '\u{2014}' => "-",
            '\u{2026}' => "...",
            '[' | '{' | '<' => "(",
            ']' | '}' | '>' => ")",
            c if c.is_whitespace() || c.is_control() => " ",
            _ => {
                cleaned.push(c);
                continue;
            }
        };
        cleaned.push_str(mapped);
    }
    let mut out = String::with_capacity(cleaned.len());
    for word in cleaned.split_whitespace() {
        if word.chars().all(|c| charset.contains(&c)) {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(word);
        }
    }
    out
}

/// Keeps sentences, drops ASCII art, tables and code: at least 70% of the non-space
/// characters are letters, and there are at least two words.
fn looks_like_prose(text: &str) -> bool {
    let (mut letters, mut others) = (0usize, 0usize);
    for c in text.chars().filter(|c| *c != ' ') {
        if c.is_alphabetic() {
            letters += 1;
        } else {
            others += 1;
        }
    }
    text.contains(' ') && letters * 10 >= (letters + others) * 7
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use textrec_contract::charset::IAM_CHARSET;

    fn iam() -> HashSet<char> {
        IAM_CHARSET.chars().collect()
    }

    #[test]
    fn mapping_replaces_typography_and_drops_unsupported_words() {
        let m = |s: &str| map_into_charset(s, &iam());
        assert_eq!(
            m("It\u{2019}s \u{201c}fine\u{201d} \u{2014} [ok]"),
            "It's \"fine\" - (ok)"
        );
        assert_eq!(m("costs $5 or 10%, mail a@b.c\tnow\n"), "costs or mail now");
        assert_eq!(m("_\u{8}b_\u{8}o_\u{8}l_\u{8}d text"), "bold text");
        assert_eq!(m("  \u{e9}t\u{e9} caf\u{e9}  "), "");
    }

    #[test]
    fn fortunes_split_on_percent_lines() {
        let f = "First one\nspans lines.\n%\n\n%\nSecond.\n%\n";
        assert_eq!(
            split_fortunes(f),
            vec!["First one\nspans lines.\n", "Second.\n"]
        );
        assert!(!looks_like_prose("/\\_/\\ ( o.o ) > ^ <"));
        assert!(looks_like_prose("A day for firm decisions!!!!! Or is it?"));
    }

    #[test]
    fn split_is_disjoint_and_stable() {
        let fortunes: Vec<String> = (0..400)
            .map(|i| format!("Fortune number {i} says hello there.\n%\n"))
            .collect();
        let file = fortunes.concat();
        let words: String = (0..400)
            .map(|i| format!("word{i}\nName{}\n", char::from(b'a' + (i % 26) as u8)))
            .collect();
        let c = Corpus::from_texts(&[&file], &words, IAM_CHARSET);
        let (t, v) = (c.stats(TextSplit::Train), c.stats(TextSplit::Validation));
        assert_eq!(t.passages + v.passages, 400);
        assert!(v.passages > 5 && v.passages < 45, "{v:?}");
        let train: HashSet<&String> = c.train.passages.iter().chain(&c.train.words).collect();
        assert!(c
            .validation
            .passages
            .iter()
            .chain(&c.validation.words)
            .all(|p| !train.contains(p)));
        assert!(c.validation.passages.iter().all(|p| is_validation(p)));
        assert_eq!(t.names + v.names, 26, "NameA..NameZ, deduplicated");
    }

    #[test]
    fn lines_respect_length_and_charset() {
        let c = Corpus::from_texts(
            &["The quick brown fox jumps over the lazy dog, again and again.\n%\nShort one here.\n%\n"],
            "Aaron\nabbey\nAbbott's\nzebra\ncaf\u{e9}\n",
            IAM_CHARSET,
        );
        let set = iam();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        for split in [TextSplit::Train, TextSplit::Validation] {
            for (min, max) in [(1, 32), (5, 12), (20, 40)] {
                for _ in 0..300 {
                    let l = c.sample_line(split, &mut rng, min, max, None, 0.3);
                    let n = l.chars().count();
                    assert!((min..=max).contains(&n), "{l:?} not in {min}..={max}");
                    assert!(l.chars().all(|ch| set.contains(&ch)), "{l:?}");
                    assert_eq!(l, l.trim());
                    assert!(!l.contains("  "), "{l:?}");
                }
            }
        }
    }

    #[test]
    fn generated_items_cover_the_kinds() {
        let pool = TextPool {
            names: vec!["Aaron".into(), "Abbott".into()],
            ..TextPool::default()
        };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let items: Vec<String> = (0..400).map(|_| generated_item(&pool, &mut rng)).collect();
        let has = |pred: &dyn Fn(&str) -> bool| items.iter().any(|i| pred(i));
        assert!(has(&|i| i.contains("EUR") || i.contains("USD")));
        assert!(has(&|i| MONTHS.iter().any(|m| i.contains(m))));
        assert!(has(
            &|i| i.contains(':') && i.chars().next().unwrap().is_ascii_digit()
        ));
        assert!(has(&|i| i.contains("Abbott")));
        assert!(items.iter().all(|i| !i.contains('$')));
        assert_eq!(grouped(3200), "3,200");
        assert_eq!(grouped(1234567), "1,234,567");
        assert_eq!(grouped(999), "999");
    }

    #[test]
    fn missing_sources_name_their_packages() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = SyntheticConfig {
            fortunes_dir: dir.path().join("nope").display().to_string(),
            ..SyntheticConfig::default()
        };
        let err = format!("{:#}", Corpus::load(&cfg, IAM_CHARSET).unwrap_err());
        assert!(err.contains("fortunes"), "{err}");
        let cfg = SyntheticConfig {
            words_file: dir.path().join("words").display().to_string(),
            ..SyntheticConfig::default()
        };
        let err = format!("{:#}", Corpus::load(&cfg, IAM_CHARSET).unwrap_err());
        assert!(err.contains("wamerican"), "{err}");
    }

    #[test]
    fn lines_break_passages_at_spaces_and_group_words() {
        let file: String = (0..50)
            .map(|i| format!("Fortune {i} says the quick brown fox jumps over the dog.\n%\n"))
            .collect();
        let words: String = (0..50).map(|i| format!("word{i}\n")).collect();
        let c = Corpus::from_texts(&[&file], &words, IAM_CHARSET);
        let mut words_seen = 0;
        for split in [TextSplit::Train, TextSplit::Validation] {
            let lines = c.lines(split, 20);
            let (listed, prose): (Vec<&String>, Vec<&String>) =
                lines.iter().partition(|l| l.starts_with("word"));
            assert!(
                prose
                    .iter()
                    .all(|l| l.len() <= 20 && !l.starts_with(' ') && !l.ends_with(' ')),
                "{prose:?}"
            );
            assert!(
                listed.iter().all(|l| l.split(' ').count() <= 8),
                "{listed:?}"
            );
            words_seen += lines.iter().map(|l| l.split(' ').count()).sum::<usize>();
        }
        // Every word of every fortune and of the list, once.
        assert_eq!(words_seen, 50 * 11 + 50);
    }

    #[test]
    fn system_corpus_loads_with_a_held_out_split() {
        let c = Corpus::load(&SyntheticConfig::default(), IAM_CHARSET)
            .expect("apt-get install fortunes fortunes-min wamerican");
        let (t, v) = (c.stats(TextSplit::Train), c.stats(TextSplit::Validation));
        println!("train {t:?}\nvalidation {v:?}");
        assert!(t.passages > 5_000 && t.words > 50_000, "{t:?}");
        assert!(v.passages > 200 && v.words > 2_000, "{v:?}");
        assert!(v.passages * 10 < t.passages);
    }

    #[test]
    fn the_descriptions_split_reads_the_shipped_text_unless_a_file_is_named() {
        let shipped = package_descriptions(BUILTIN_DESCRIPTIONS);
        assert_eq!(shipped.len(), 757);
        let cfg = SyntheticConfig {
            split: TextSplit::Descriptions,
            ..SyntheticConfig::default()
        };
        assert_eq!(DescriptionsSource::of(&cfg), DescriptionsSource::Shipped);
        let c = Corpus::load(&cfg, IAM_CHARSET).expect("apt-get install fortunes wamerican");
        let d = c.stats(TextSplit::Descriptions);
        assert!(d.passages > 700 && d.prose_words > 40_000, "{d:?}");
        assert_eq!(
            c.pool(TextSplit::Descriptions).passages[0],
            map_into_charset(&shipped[0], &IAM_CHARSET.chars().collect::<HashSet<_>>())
        );

        let dir = tempfile::tempdir().unwrap();
        let status = dir.path().join("status");
        std::fs::write(
            &status,
            "Package: a\nDescription: a tool that reads printed lines of text\n",
        )
        .unwrap();
        let named = SyntheticConfig {
            descriptions_file: status.display().to_string(),
            ..cfg.clone()
        };
        let c = Corpus::load(&named, IAM_CHARSET).unwrap();
        assert_eq!(c.stats(TextSplit::Descriptions).passages, 1);

        let missing = SyntheticConfig {
            descriptions_file: dir.path().join("nope").display().to_string(),
            ..cfg
        };
        let err = format!("{:#}", Corpus::load(&missing, IAM_CHARSET).unwrap_err());
        assert!(err.contains("nope") && err.contains("empty"), "{err}");
    }

    #[test]
    fn package_descriptions_join_synopsis_and_extended_text() {
        let status = "Package: a\nDescription: tool for things\n First line of more.\n .\n \
                      Second paragraph.\nHomepage: x\n\nPackage: b\nDescription: other one\n";
        assert_eq!(
            package_descriptions(status),
            [
                "tool for things First line of more. Second paragraph.",
                "other one"
            ]
        );
        let mut c = Corpus::from_texts(&[], "Alpha\nbeta\n", IAM_CHARSET);
        c.add_descriptions(status);
        let d = c.stats(TextSplit::Descriptions);
        assert_eq!(d.passages, 2);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let line = c.sample_line(TextSplit::Descriptions, &mut rng, 4, 40, Some(20), 0.0);
        assert!((4..=40).contains(&line.chars().count()), "{line:?}");
    }

    #[test]
    fn printed_lengths_centre_on_the_mean_with_a_short_tail() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let mut n: Vec<usize> = (0..20_000)
            .map(|_| draw_length(&mut rng, 8, 100, Some(45)))
            .collect();
        n.sort_unstable();
        let mean = n.iter().sum::<usize>() as f64 / n.len() as f64;
        let median = n[n.len() / 2];
        assert!((44.0..52.0).contains(&mean), "mean {mean}");
        assert!((44..=52).contains(&median), "median {median}");
        assert!(n[0] >= 8 && *n.last().unwrap() <= 100);
        assert!(
            n[n.len() / 10] < 35,
            "too few short lines: p10 {}",
            n[n.len() / 10]
        );
        assert!(
            *n.last().unwrap() > 85,
            "no long lines: max {}",
            n.last().unwrap()
        );
        // Without a mean, uniform.
        let u: Vec<usize> = (0..1000)
            .map(|_| draw_length(&mut rng, 1, 4, None))
            .collect();
        assert!((1..=4).all(|k| u.contains(&k)));
    }
}
