//! The fonts synthetic lines are rendered with.
//!
//! The training font set is exactly the font files of the Debian packages in [`TRAINING_FONTS`].
//! Their files are hard-coded in [`training_set`] (paths relative to a font folder, as `dpkg -L` lists them
//! under `/usr/share/fonts`) rather than found by scanning, because the same folders hold
//! other fonts (fonts-dejavu-extra, fonts-liberation 1.x, ...) that are kept for independent
//! evaluation and must never be trained on.
//!
//! For every font we record which charset characters it has a glyph for (glyph id 0 means
//! missing), so a line is never rendered with a character the font would draw as a box, and
//! whether it draws lowercase letters as capitals (then the label of a line rendered with it
//! is upper-cased: the label is what the image shows). That property is measured from the
//! glyphs, not listed by hand: see [`draws_lowercase_as_capitals`].
//!
//! - [`training_set`]: the training font set's files, and finding them;
//! - [`reserved`]: the fonts reserved for independent evaluation;
//! - `resolve`: what a `fonts:` entry (file, family or folder) names;
//! - [`letter_case`]: telling fonts that draw lowercase letters as capitals.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ab_glyph::{Font, FontArc, GlyphId};
use anyhow::{bail, Context, Result};
use rand::seq::SliceRandom;
use rand::Rng;
use textrec_contract::config::{SyntheticConfig, TextSplit, UNSEEN_VALIDATION_FONTS};

pub mod letter_case;
pub mod reserved;
mod resolve;
#[cfg(test)]
mod tests;
pub mod training_set;

pub use letter_case::{
    ascender_ratio, draws_lowercase_as_capitals, own_capital_matches, CAPS_ONLY_MAX_ASCENDER_RATIO,
    CAPS_ONLY_MIN_LETTERS,
};
use reserved::is_reserved_for_evaluation;
pub use reserved::{evaluation_font_folders, EVALUATION_FONT_FOLDERS};
use resolve::resolve_font;
use training_set::{find_training_font, training_package};
pub use training_set::{TrainingFont, TRAINING_FONTS};

/// A loaded font and what it can draw.
#[derive(Clone)]
pub struct LoadedFont {
    /// File name without extension, e.g. `Humor-Sans`.
    pub name: String,
    /// Family name from the font's name table, e.g. `Humor Sans`.
    pub family: String,
    /// Where it was loaded from.
    pub path: PathBuf,
    /// The training package it belongs to; `None` for a font outside the training set.
    pub package: Option<&'static str>,
    /// It draws lowercase letters as capitals: lines rendered with it are labelled upper-case.
    pub caps_only: bool,
    /// The glyphs.
    pub font: FontArc,
    /// Charset characters it has a glyph for.
    covered: HashSet<char>,
}

impl std::fmt::Debug for LoadedFont {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedFont")
            .field("name", &self.name)
            .field("family", &self.family)
            .field("path", &self.path)
            .field("caps_only", &self.caps_only)
            .finish_non_exhaustive()
    }
}

impl LoadedFont {
    /// Load a font file and measure its charset coverage and letter case.
    pub fn load(path: &Path, package: Option<&'static str>, charset: &str) -> Result<Self> {
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read font {}", path.display()))?;
        let family = family_name(&bytes).unwrap_or_default();
        let font = FontArc::try_from_vec(bytes).map_err(|e| {
            anyhow::anyhow!(
                "{} is not a usable TrueType/OpenType font: {e}",
                path.display()
            )
        })?;
        let covered = charset
            .chars()
            .filter(|&c| c.is_whitespace() || font.glyph_id(c) != GlyphId(0))
            .collect();
        let caps_only = draws_lowercase_as_capitals(&font);
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(Self {
            name,
            family,
            path: path.to_path_buf(),
            package,
            caps_only,
            font,
            covered,
        })
    }

    /// The label of `text` drawn with this font: upper-cased for caps-only fonts.
    pub fn label(&self, text: &str) -> String {
        if self.caps_only {
            text.to_uppercase()
        } else {
            text.to_string()
        }
    }

    /// Whether every character of `text` has a glyph in this font.
    pub fn covers(&self, text: &str) -> bool {
        text.chars().all(|c| self.covered.contains(&c))
    }

    /// Charset characters this font has no glyph for.
    pub fn missing(&self, charset: &str) -> Vec<char> {
        charset
            .chars()
            .filter(|c| !self.covered.contains(c))
            .collect()
    }
}

/// The fonts of one synthetic data set, grouped so that a family with many files (Liberation
/// has twelve) is not drawn twelve times as often as one with a single file.
#[derive(Debug)]
pub struct FontSet {
    fonts: Vec<LoadedFont>,
    groups: Vec<Vec<usize>>,
}

impl FontSet {
    /// Load the fonts a synthetic config names (the training set when it names none),
    /// checking each against `charset`. Loaded sets are cached per process.
    pub fn load(cfg: &SyntheticConfig, charset: &str) -> Result<Arc<FontSet>> {
        type Key = (Vec<String>, Vec<String>, String);
        static CACHE: Mutex<Vec<(Key, Arc<FontSet>)>> = Mutex::new(Vec::new());
        let key = (
            cfg.fonts.clone(),
            cfg.font_dirs.clone(),
            charset.to_string(),
        );
        let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, set)) = cache.iter().find(|(k, _)| *k == key) {
            return Ok(set.clone());
        }
        let set = Arc::new(Self::load_uncached(cfg, charset)?);
        cache.push((key, set.clone()));
        Ok(set)
    }

    fn load_uncached(cfg: &SyntheticConfig, charset: &str) -> Result<FontSet> {
        let dirs: Vec<PathBuf> = cfg.font_dirs.iter().map(PathBuf::from).collect();
        let mut files: Vec<(PathBuf, Option<&'static str>, String)> = Vec::new();
        if cfg.fonts.is_empty() {
            for t in TRAINING_FONTS {
                let path = find_training_font(t, &dirs)?;
                files.push((path, Some(t.package), t.package.to_string()));
            }
        } else {
            for wanted in &cfg.fonts {
                for path in resolve_font(wanted, &dirs)? {
                    let package = training_package(&path);
                    files.push((path, package, wanted.clone()));
                }
            }
        }
        let mut fonts = Vec::new();
        let mut group_names: Vec<String> = Vec::new();
        let mut groups: Vec<Vec<usize>> = Vec::new();
        for (path, package, group) in files {
            if fonts.iter().any(|f: &LoadedFont| f.path == path) {
                continue;
            }
            let font = LoadedFont::load(&path, package, charset)?;
            let missing = font.missing(charset);
            if !missing.is_empty() {
                tracing::info!(font = %font.name, ?missing, "font lacks charset characters; lines using them pick another font");
            }
            let g = match group_names.iter().position(|n| *n == group) {
                Some(g) => g,
                None => {
                    group_names.push(group);
                    groups.push(Vec::new());
                    groups.len() - 1
                }
            };
            groups[g].push(fonts.len());
            fonts.push(font);
        }
        if fonts.is_empty() {
            bail!("no fonts to render with");
        }
        Ok(FontSet { fonts, groups })
    }

    /// All fonts.
    pub fn fonts(&self) -> &[LoadedFont] {
        &self.fonts
    }

    /// Fonts that are not files of the training font set's packages (a user's own fonts, or
    /// the unseen-font validation families).
    pub fn outside_training_set(&self) -> impl Iterator<Item = &LoadedFont> {
        self.fonts.iter().filter(|f| f.package.is_none())
    }

    /// Refuse fonts that a set of this split must not use: fonts reserved for independent
    /// evaluation in any set, and the unseen-fonts validation families in training. Training
    /// on any other font outside the training set is allowed, with a warning: validation sets
    /// use such fonts on purpose and are not warned about.
    pub fn check_use(&self, split: TextSplit) -> Result<()> {
        for f in &self.fonts {
            if is_reserved_for_evaluation(f) {
                bail!(
                    "font {} ({}) is reserved for independent evaluation: it is never trained \
                     or validated on",
                    f.path.display(),
                    f.family
                );
            }
            let unseen = UNSEEN_VALIDATION_FONTS
                .iter()
                .any(|u| squash(u) == squash(&f.family));
            if split == TextSplit::Train && unseen {
                bail!(
                    "font {} ({}) belongs to the unseen-fonts validation set: training on it \
                     would make that set measure memory instead of generalization",
                    f.path.display(),
                    f.family
                );
            }
        }
        if split == TextSplit::Train {
            for f in self.outside_training_set() {
                tracing::warn!(
                    font = %f.path.display(),
                    "training on a font outside the training font set"
                );
            }
        }
        Ok(())
    }

    /// Pick a font that can draw `text` (after upper-casing for caps-only fonts) and return
    /// it with the label. Families are equally likely, then files within a family; fonts
    /// that lack a character are passed over. `None` when no font can draw the text.
    pub fn choose<R: Rng>(&self, rng: &mut R, text: &str) -> Option<(&LoadedFont, String)> {
        let g = rng.gen_range(0..self.groups.len());
        let f = self.groups[g][rng.gen_range(0..self.groups[g].len())];
        if let Some(hit) = self.try_font(f, text) {
            return Some(hit);
        }
        let mut order: Vec<usize> = (0..self.fonts.len()).collect();
        order.shuffle(rng);
        order.into_iter().find_map(|f| self.try_font(f, text))
    }

    fn try_font(&self, f: usize, text: &str) -> Option<(&LoadedFont, String)> {
        let font = &self.fonts[f];
        let label = font.label(text);
        font.covers(&label).then_some((font, label))
    }
}

pub(super) fn squash(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase)
        .collect()
}

pub(super) fn show_dirs(dirs: &[PathBuf]) -> String {
    dirs.iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Font files (`.ttf`, `.otf`) under `dir`, recursively, sorted. Symbolic links are followed,
/// as font folders often link in other packages' fonts; a link that loops is skipped.
pub(super) fn font_files(dir: &Path) -> Vec<PathBuf> {
    walkdir::WalkDir::new(dir)
        .follow_links(true)
        .sort_by_file_name()
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .map(walkdir::DirEntry::into_path)
        .filter(|p| {
            p.extension().is_some_and(|e| {
                matches!(e.to_string_lossy().to_lowercase().as_str(), "ttf" | "otf")
            })
        })
        .collect()
}

/// The typographic family (name id 16) or family (name id 1) of a font file.
pub fn family_name(data: &[u8]) -> Option<String> {
    let face = ttf_parser::Face::parse(data, 0).ok()?;
    let names = face.names();
    let get = |id: u16| {
        names
            .into_iter()
            .filter(|n| n.name_id == id)
            .find_map(|n| n.to_string())
    };
    get(ttf_parser::name_id::TYPOGRAPHIC_FAMILY).or_else(|| get(ttf_parser::name_id::FAMILY))
}
