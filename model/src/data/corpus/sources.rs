//! Where the corpus text comes from and how it is cleaned: Debian's fortune files, dpkg
//! package descriptions (the shipped set or a status file), and the mapping of raw text
//! into the charset.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use textrec_contract::config::{SyntheticConfig, TextSplit};

/// Package descriptions shipped with textrec (`model/data/package-descriptions.txt`, in dpkg
/// status form): the `descriptions` split's text when the config names no status file, so that
/// a validation set holds the same lines on every machine and in every container image.
pub(super) const BUILTIN_DESCRIPTIONS: &str =
    include_str!("../../../data/package-descriptions.txt");

/// Where a config's `descriptions` split takes its text from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum DescriptionsSource {
    /// Another split of a config that names a status file: no descriptions are loaded.
    None,
    /// [`BUILTIN_DESCRIPTIONS`].
    Shipped,
    /// The dpkg status file the config names.
    File(String),
}

impl DescriptionsSource {
    /// The shipped descriptions are loaded for every split unless a file is named: they cost
    /// little, and then a trial's training set and its validation sets (which read the
    /// `descriptions` split) share one cached corpus instead of loading it twice.
    pub(super) fn of(cfg: &SyntheticConfig) -> Self {
        match cfg.split {
            _ if cfg.descriptions_file.is_empty() => Self::Shipped,
            TextSplit::Descriptions => Self::File(cfg.descriptions_file.clone()),
            TextSplit::Train | TextSplit::Validation => Self::None,
        }
    }
}

/// The package descriptions of a dpkg status file: the synopsis and the extended text of each
/// `Description:` field, joined into one passage.
pub(super) fn package_descriptions(status: &str) -> Vec<String> {
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

/// Where Debian keeps packages' documentation: prose reserved for independent evaluation
/// (never trained or validated on).
pub const DOCUMENTATION_DIR: &str = "/usr/share/doc";

/// Largest documentation file read: larger ones are generated references, not prose.
const MAX_DOCUMENTATION_FILE: u64 = 512 * 1024;

/// Words read from one package's folder at most. A few packages (a language runtime's API
/// reference, a version-control system's manual) hold most of a machine's documentation; the
/// cap keeps the text a mix of many packages' prose instead of theirs.
const MAX_DOCUMENTATION_WORDS_PER_PACKAGE: usize = 5000;

/// The paragraphs (runs of non-blank lines, joined by spaces) of the plain-text documentation
/// under `dir`: files named `README*` or `NEWS*`, or ending in `.txt` or `.md`, in path order,
/// up to 5000 words from each top-level folder (a package's). Compressed files
/// are not read, nor links (Debian links one package's folder to another's, so following them
/// would read the same text twice).
pub fn documentation_paragraphs(dir: &Path) -> Result<Vec<String>> {
    if !dir.is_dir() {
        bail!("documentation folder {} does not exist", dir.display());
    }
    let mut out = Vec::new();
    let mut package_words: std::collections::HashMap<PathBuf, usize> = Default::default();
    for entry in walkdir::WalkDir::new(dir)
        .follow_links(false)
        .sort_by_file_name()
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
    {
        let name = entry.file_name().to_string_lossy().to_lowercase();
        let wanted = name.starts_with("readme")
            || name.starts_with("news")
            || name.ends_with(".txt")
            || name.ends_with(".md");
        if !wanted || name.ends_with(".gz") || name.ends_with(".bz2") || name.ends_with(".xz") {
            continue;
        }
        if entry
            .metadata()
            .map_or(true, |m| m.len() > MAX_DOCUMENTATION_FILE)
        {
            continue;
        }
        let Ok(bytes) = std::fs::read(entry.path()) else {
            continue;
        };
        if bytes.contains(&0) {
            continue;
        }
        let package = entry
            .path()
            .strip_prefix(dir)
            .ok()
            .and_then(|p| p.components().next())
            .map(|c| PathBuf::from(c.as_os_str()))
            .unwrap_or_default();
        let words = package_words.entry(package).or_default();
        let text = String::from_utf8_lossy(&bytes);
        let mut paragraph = String::new();
        for line in text.lines().chain(std::iter::once("")) {
            if *words >= MAX_DOCUMENTATION_WORDS_PER_PACKAGE {
                break;
            }
            if line.trim().is_empty() {
                if !paragraph.is_empty() {
                    *words += paragraph.split(' ').count();
                    out.push(std::mem::take(&mut paragraph));
                }
            } else {
                if !paragraph.is_empty() {
                    paragraph.push(' ');
                }
                paragraph.push_str(line.trim());
            }
        }
    }
    Ok(out)
}

/// The fortune files of a folder: every regular file except the `strfile` indexes (`.dat`)
/// and the `.u8` links; subfolders (Debian keeps the offensive ones in `off/`) are not read.
pub(super) fn read_fortune_files(dir: &Path) -> Result<Vec<Vec<u8>>> {
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
pub(super) fn split_fortunes(file: &str) -> Vec<String> {
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
pub(super) fn looks_like_prose(text: &str) -> bool {
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
