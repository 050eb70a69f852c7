//! The fonts synthetic lines are rendered with.
//!
//! The training font set is exactly the font files of the Debian packages in [`TRAINING_FONTS`].
//! Their files are hard-coded below (paths relative to a font folder, as `dpkg -L` lists them
//! under `/usr/share/fonts`) rather than found by scanning, because the same folders hold
//! other fonts (fonts-dejavu-extra, fonts-liberation 1.x, ...) that are kept for independent
//! evaluation and must never be trained on.
//!
//! For every font we record which charset characters it has a glyph for (glyph id 0 means
//! missing), so a line is never rendered with a character the font would draw as a box, and
//! whether it draws lowercase letters as capitals (then the label of a line rendered with it
//! is upper-cased: the label is what the image shows). That property is measured from the
//! glyphs, not listed by hand: see [`draws_lowercase_as_capitals`].

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ab_glyph::{Font, FontArc, GlyphId, PxScale};
use anyhow::{bail, Context, Result};
use rand::seq::SliceRandom;
use rand::Rng;
use textrec_contract::config::{SyntheticConfig, TextSplit, UNSEEN_VALIDATION_FONTS};

/// One file of the training font set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrainingFont {
    /// The Debian package that installs it.
    pub package: &'static str,
    /// Its path under a font folder (`/usr/share/fonts`).
    pub file: &'static str,
}

const fn tf(package: &'static str, file: &'static str) -> TrainingFont {
    TrainingFont { package, file }
}

/// The training font set: every font file of these packages (from
/// `dpkg -L`, Debian 13).
pub const TRAINING_FONTS: &[TrainingFont] = &[
    tf("fonts-dkg-handwriting", "truetype/fifthhorseman/dkg.ttf"),
    tf("fonts-dkg-handwriting", "truetype/fifthhorseman/dkgBI.ttf"),
    tf("fonts-dkg-handwriting", "truetype/fifthhorseman/dkgBd.ttf"),
    tf("fonts-dkg-handwriting", "truetype/fifthhorseman/dkgIt.ttf"),
    tf("fonts-breip", "truetype/breip/Breip.ttf"),
    tf("fonts-breip", "truetype/breip/breipfont.ttf"),
    tf(
        "fonts-dancingscript",
        "opentype/dancingscript/DancingScript-Bold.otf",
    ),
    tf(
        "fonts-dancingscript",
        "opentype/dancingscript/DancingScript-Regular.otf",
    ),
    tf("fonts-humor-sans", "truetype/humor-sans/Humor-Sans.ttf"),
    tf("fonts-comic-neue", "opentype/comic-neue/ComicNeue-Bold.otf"),
    tf(
        "fonts-comic-neue",
        "opentype/comic-neue/ComicNeue-BoldItalic.otf",
    ),
    tf(
        "fonts-comic-neue",
        "opentype/comic-neue/ComicNeue-Italic.otf",
    ),
    tf(
        "fonts-comic-neue",
        "opentype/comic-neue/ComicNeue-Light.otf",
    ),
    tf(
        "fonts-comic-neue",
        "opentype/comic-neue/ComicNeue-LightItalic.otf",
    ),
    tf(
        "fonts-comic-neue",
        "opentype/comic-neue/ComicNeue-Regular.otf",
    ),
    tf(
        "fonts-ecolier-court",
        "truetype/ecolier-court/Ecolier-court.ttf",
    ),
    tf("fonts-dejavu-core", "truetype/dejavu/DejaVuSans-Bold.ttf"),
    tf("fonts-dejavu-core", "truetype/dejavu/DejaVuSans.ttf"),
    tf(
        "fonts-dejavu-core",
        "truetype/dejavu/DejaVuSansMono-Bold.ttf",
    ),
    tf("fonts-dejavu-core", "truetype/dejavu/DejaVuSansMono.ttf"),
    tf("fonts-dejavu-core", "truetype/dejavu/DejaVuSerif-Bold.ttf"),
    tf("fonts-dejavu-core", "truetype/dejavu/DejaVuSerif.ttf"),
    tf(
        "fonts-liberation2",
        "truetype/liberation2/LiberationMono-Bold.ttf",
    ),
    tf(
        "fonts-liberation2",
        "truetype/liberation2/LiberationMono-BoldItalic.ttf",
    ),
    tf(
        "fonts-liberation2",
        "truetype/liberation2/LiberationMono-Italic.ttf",
    ),
    tf(
        "fonts-liberation2",
        "truetype/liberation2/LiberationMono-Regular.ttf",
    ),
    tf(
        "fonts-liberation2",
        "truetype/liberation2/LiberationSans-Bold.ttf",
    ),
    tf(
        "fonts-liberation2",
        "truetype/liberation2/LiberationSans-BoldItalic.ttf",
    ),
    tf(
        "fonts-liberation2",
        "truetype/liberation2/LiberationSans-Italic.ttf",
    ),
    tf(
        "fonts-liberation2",
        "truetype/liberation2/LiberationSans-Regular.ttf",
    ),
    tf(
        "fonts-liberation2",
        "truetype/liberation2/LiberationSerif-Bold.ttf",
    ),
    tf(
        "fonts-liberation2",
        "truetype/liberation2/LiberationSerif-BoldItalic.ttf",
    ),
    tf(
        "fonts-liberation2",
        "truetype/liberation2/LiberationSerif-Italic.ttf",
    ),
    tf(
        "fonts-liberation2",
        "truetype/liberation2/LiberationSerif-Regular.ttf",
    ),
];

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

/// Font packages kept for independent evaluation (never trained or validated on), as they
/// appear in font paths and family names.
const RESERVED_FOR_EVALUATION: [&str; 3] = ["bwht", "femkeklaver", "kaushan"];

/// The fonts reserved for independent evaluation: each Debian package with the folder (under a
/// font folder, as `dpkg -L` lists it) that holds its files. `synth --independent-evaluation`
/// renders with these unless told otherwise; nothing else may.
pub const EVALUATION_FONT_FOLDERS: [(&str, &str); 3] = [
    ("fonts-bwht", "opentype/bwht"),
    ("fonts-femkeklaver", "truetype/femkeklaver"),
    ("fonts-kaushanscript", "opentype/kaushanscript"),
];

/// The folders of [`EVALUATION_FONT_FOLDERS`] under the first of `dirs` that holds each; an
/// error names every package that is not installed.
pub fn evaluation_font_folders(dirs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut missing = Vec::new();
    for (package, folder) in EVALUATION_FONT_FOLDERS {
        match dirs.iter().map(|d| d.join(folder)).find(|p| p.is_dir()) {
            Some(p) => found.push(p),
            None => missing.push(package),
        }
    }
    if !missing.is_empty() {
        bail!(
            "the fonts reserved for independent evaluation are not installed under {}: install \
             the Debian packages {} (apt-get install {}); they are kept off training machines, \
             so scripts/setup.sh does not install them",
            show_dirs(dirs),
            missing.join(", "),
            missing.join(" ")
        );
    }
    Ok(found)
}

/// Whether a font may only be used for independent evaluation.
pub fn is_reserved_for_evaluation(font: &LoadedFont) -> bool {
    let path = font.path.to_string_lossy().to_lowercase();
    let family = squash(&font.family);
    RESERVED_FOR_EVALUATION
        .iter()
        .any(|r| path.contains(r) || family.contains(r))
}

fn find_training_font(t: &TrainingFont, dirs: &[PathBuf]) -> Result<PathBuf> {
    for d in dirs {
        let p = d.join(t.file);
        if p.is_file() {
            return Ok(p);
        }
    }
    // Another distribution may lay the folders out differently; the file name is specific
    // enough to find the same file.
    let name = Path::new(t.file).file_name().expect("file name");
    for d in dirs {
        if let Some(p) = font_files(d)
            .into_iter()
            .find(|p| p.file_name() == Some(name))
        {
            return Ok(p);
        }
    }
    bail!(
        "training font {} not found under {}: install the Debian package {} (apt-get install {})",
        t.file,
        show_dirs(dirs),
        t.package,
        t.package
    )
}

/// The training package a font file belongs to, judged by its path.
fn training_package(path: &Path) -> Option<&'static str> {
    let p = path.to_string_lossy();
    TRAINING_FONTS
        .iter()
        .find(|t| p.ends_with(&format!("/{}", t.file)))
        .map(|t| t.package)
}

/// A `fonts:` entry: a file (absolute, or relative to a font folder, or a bare file name) or
/// a family name (`DejaVu Sans`, matched against the fonts' name tables, every style).
fn resolve_font(wanted: &str, dirs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let lower = wanted.to_lowercase();
    let is_file =
        [".ttf", ".otf", ".ttc"].iter().any(|e| lower.ends_with(e)) || wanted.contains('/');
    // A folder is one group of every font file in it: a package whose styles carry family
    // names of their own (fonts-bwht has six) is then drawn as often as any other entry.
    let folders = if Path::new(wanted).is_absolute() {
        vec![PathBuf::from(wanted)]
    } else {
        dirs.iter().map(|d| d.join(wanted)).collect()
    };
    if let Some(folder) = folders.iter().find(|f| wanted.contains('/') && f.is_dir()) {
        let files = font_files(folder);
        if files.is_empty() {
            bail!(
                "font folder {} holds no .ttf or .otf files",
                folder.display()
            );
        }
        return Ok(files);
    }
    if is_file {
        let direct = PathBuf::from(wanted);
        if direct.is_absolute() {
            if direct.is_file() {
                return Ok(vec![direct]);
            }
        } else {
            for d in dirs {
                if d.join(wanted).is_file() {
                    return Ok(vec![d.join(wanted)]);
                }
            }
            for d in dirs {
                if let Some(p) = font_files(d).into_iter().find(|p| {
                    p.file_name().map(|n| n.to_string_lossy().to_lowercase()) == Some(lower.clone())
                }) {
                    return Ok(vec![p]);
                }
            }
        }
    } else {
        let target = squash(wanted);
        let mut found = Vec::new();
        for d in dirs {
            for p in font_files(d) {
                let family = std::fs::read(&p).ok().and_then(|b| family_name(&b));
                if family.is_some_and(|f| squash(&f) == target) {
                    found.push(p);
                }
            }
        }
        if !found.is_empty() {
            found.sort();
            return Ok(found);
        }
    }
    const UNSEEN_PACKAGES: [(&str, &str); 4] = [
        ("freeserif", "fonts-freefont-ttf"),
        ("havana", "fonts-havana"),
        ("cabinsketch", "fonts-cabinsketch"),
        ("bebasneue", "fonts-bebas-neue"),
    ];
    let hint = TRAINING_FONTS
        .iter()
        .map(|t| (squash(t.file), t.package))
        .chain(UNSEEN_PACKAGES.iter().map(|(f, p)| (f.to_string(), *p)))
        .chain(EVALUATION_FONT_FOLDERS.iter().map(|(p, f)| (squash(f), *p)))
        .find(|(file, _)| file.contains(&squash(wanted)))
        .map(|(_, package)| {
            format!(": install the Debian package {package} (apt-get install {package})")
        })
        .unwrap_or_default();
    bail!("font {wanted:?} not found under {}{hint}", show_dirs(dirs))
}

fn squash(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase)
        .collect()
}

fn show_dirs(dirs: &[PathBuf]) -> String {
    dirs.iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Font files (`.ttf`, `.otf`) under `dir`, recursively, sorted. Symbolic links are followed,
/// as font folders often link in other packages' fonts; a link that loops is skipped.
fn font_files(dir: &Path) -> Vec<PathBuf> {
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

/// Size of the square the letter shapes are compared in.
const SHAPE: usize = 20;

/// Whether a font draws lowercase letters as capitals, measured from its glyphs: every letter
/// of both cases is rasterized, cropped to its ink and stretched to the same square (so a
/// small capital compares equal to a capital), and each lowercase letter is matched to the
/// most similar capital (intersection over union). In a caps-only font nearly every
/// lowercase letter's nearest capital is its own; in ordinary fonts only the letters whose
/// two cases share a shape (c o s v w x z, sometimes k p u y) are, and the rest (a b d e f g
/// h i l n q r t ...) find another capital or none in particular.
///
/// A second, independent measure must agree: in a font with real lowercase the ascender
/// letters (b d h k l) stand much taller than the x-height letters (a c e m n o r s u v w x
/// z), by 1.3 to 1.6 times; when lowercase are drawn as capitals (or small capitals) they are
/// all about one height ([`ascender_ratio`] below [`CAPS_ONLY_MAX_ASCENDER_RATIO`]). Measured
/// on the training fonts: Humor Sans 23 letters and 0.98; all others at most 17 letters and
/// at least 1.32.
pub fn draws_lowercase_as_capitals(font: &FontArc) -> bool {
    own_capital_matches(font).len() >= CAPS_ONLY_MIN_LETTERS
        && ascender_ratio(font).is_some_and(|r| r < CAPS_ONLY_MAX_ASCENDER_RATIO)
}

/// Largest ascender ratio of a caps-only font.
pub const CAPS_ONLY_MAX_ASCENDER_RATIO: f32 = 1.15;

/// Median ink height of the ascender letters `bdhkl` over that of the x-height letters
/// `acemnorsuvwxz`.
pub fn ascender_ratio(font: &FontArc) -> Option<f32> {
    let median_height = |letters: &str| -> Option<f32> {
        let mut h: Vec<usize> = letters
            .chars()
            .filter_map(|c| {
                let id = font.glyph_id(c);
                (id != GlyphId(0))
                    .then(|| rasterize(font, id, 64.0))
                    .flatten()
                    .map(|(_, h, _)| h)
            })
            .collect();
        h.sort_unstable();
        h.get(h.len() / 2).map(|&v| v as f32)
    };
    Some(median_height("bdhkl")? / median_height("acemnorsuvwxz")?)
}

/// Lowercase letters (of 26) that must look most like their own capital for a font to count
/// as caps-only.
pub const CAPS_ONLY_MIN_LETTERS: usize = 20;

/// The lowercase letters whose most similar capital (by shape) is their own; a letter mapped
/// to the very glyph of its capital counts, a missing glyph does not.
pub fn own_capital_matches(font: &FontArc) -> Vec<char> {
    let capitals: Vec<Option<Vec<bool>>> = ('A'..='Z').map(|c| glyph_shape(font, c)).collect();
    ('a'..='z')
        .enumerate()
        .filter(|&(i, lc)| {
            let (gl, gu) = (font.glyph_id(lc), font.glyph_id(lc.to_ascii_uppercase()));
            if gl == GlyphId(0) || gu == GlyphId(0) {
                return false;
            }
            if gl == gu {
                return true;
            }
            let Some(shape) = glyph_shape(font, lc) else {
                return false;
            };
            let scores: Vec<f32> = capitals
                .iter()
                .map(|c| c.as_ref().map_or(0.0, |c| iou(&shape, c)))
                .collect();
            (0..26).all(|j| j == i || scores[j] < scores[i])
        })
        .map(|(_, lc)| lc)
        .collect()
}

fn iou(a: &[bool], b: &[bool]) -> f32 {
    let inter = a.iter().zip(b).filter(|(x, y)| **x && **y).count();
    let union = a.iter().zip(b).filter(|(x, y)| **x || **y).count();
    if union == 0 {
        0.0
    } else {
        inter as f32 / union as f32
    }
}

fn glyph_shape(font: &FontArc, c: char) -> Option<Vec<bool>> {
    let id = font.glyph_id(c);
    if id == GlyphId(0) {
        None
    } else {
        shape(font, id)
    }
}

/// A glyph's ink, cropped and stretched to a `SHAPE`×`SHAPE` binary mask.
fn shape(font: &FontArc, id: GlyphId) -> Option<Vec<bool>> {
    let (w, h, cov) = rasterize(font, id, 64.0)?;
    let mut out = vec![false; SHAPE * SHAPE];
    for (i, o) in out.iter_mut().enumerate() {
        let (sx, sy) = (i % SHAPE, i / SHAPE);
        // Area-average the source cell that maps onto this target cell.
        let (x0, x1) = (
            sx * w / SHAPE,
            ((sx + 1) * w).div_ceil(SHAPE).max(sx * w / SHAPE + 1),
        );
        let (y0, y1) = (
            sy * h / SHAPE,
            ((sy + 1) * h).div_ceil(SHAPE).max(sy * h / SHAPE + 1),
        );
        let mut sum = 0.0;
        for y in y0..y1.min(h) {
            for x in x0..x1.min(w) {
                sum += cov[y * w + x];
            }
        }
        *o = sum / ((x1 - x0) * (y1 - y0)) as f32 > 0.35;
    }
    Some(out)
}

/// Coverage bitmap of one glyph at `px`, cropped to its outline bounds.
pub(crate) fn rasterize(font: &FontArc, id: GlyphId, px: f32) -> Option<(usize, usize, Vec<f32>)> {
    let glyph = id.with_scale_and_position(PxScale::from(px), ab_glyph::point(0.0, 0.0));
    let outlined = font.outline_glyph(glyph)?;
    let b = outlined.px_bounds();
    let (w, h) = (b.width() as usize, b.height() as usize);
    if w == 0 || h == 0 {
        return None;
    }
    let mut cov = vec![0f32; w * h];
    outlined.draw(|x, y, c| {
        if let Some(v) = cov.get_mut(y as usize * w + x as usize) {
            *v = c;
        }
    });
    Some((w, h, cov))
}

#[cfg(test)]
mod tests {
    use super::*;
    use textrec_contract::charset::IAM_CHARSET;

    fn training_set() -> Arc<FontSet> {
        FontSet::load(&SyntheticConfig::default(), IAM_CHARSET).expect(
            "training fonts (apt-get install fonts-dkg-handwriting fonts-breip fonts-dancingscript \
             fonts-humor-sans fonts-comic-neue fonts-ecolier-court fonts-dejavu-core fonts-liberation2)",
        )
    }

    #[test]
    fn a_font_folder_is_one_entry_of_all_its_files() {
        let dir = tempfile::tempdir().unwrap();
        let pkg = dir.path().join("opentype/pkg");
        std::fs::create_dir_all(&pkg).unwrap();
        let set = training_set();
        let dejavu: Vec<&LoadedFont> = set
            .fonts()
            .iter()
            .filter(|f| f.name.starts_with("DejaVuSans"))
            .take(2)
            .collect();
        for f in &dejavu {
            std::fs::copy(&f.path, pkg.join(f.path.file_name().unwrap())).unwrap();
        }
        let fonts_in = |wanted: &str| SyntheticConfig {
            fonts: vec![wanted.to_string()],
            font_dirs: vec![dir.path().display().to_string()],
            ..SyntheticConfig::default()
        };
        for wanted in ["opentype/pkg".to_string(), pkg.display().to_string()] {
            let loaded = FontSet::load_uncached(&fonts_in(&wanted), IAM_CHARSET).unwrap();
            assert_eq!(loaded.fonts().len(), 2, "{wanted}");
            assert_eq!(loaded.groups.len(), 1, "{wanted}");
        }
        std::fs::create_dir_all(dir.path().join("empty/")).unwrap();
        let err = FontSet::load_uncached(&fonts_in("empty/"), IAM_CHARSET).unwrap_err();
        assert!(err.to_string().contains("holds no .ttf"), "{err}");
    }

    #[test]
    fn missing_evaluation_fonts_name_their_packages() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("truetype/femkeklaver")).unwrap();
        let err = evaluation_font_folders(&[dir.path().to_path_buf()])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("apt-get install fonts-bwht fonts-kaushanscript"),
            "{err}"
        );
    }

    /// Evidence: `render_alphabet_sheets` (below) writes `a..z` over `A..Z` for every training
    /// font; viewed by eye, Humor Sans draws each lowercase letter as a capital (the two rows
    /// look alike, same height, no ascenders or descenders), while every other training font
    /// (dkg*, Breip, breipfont, Dancing Script, Comic Neue, Ecolier court, DejaVu, Liberation)
    /// has true lowercase letters. The detector agrees: Humor Sans has 23 lowercase letters
    /// whose nearest capital is their own and an ascender ratio of 0.98; the others have at
    /// most 17 and ratios from 1.32 (Liberation Mono) to 3.08 (Ecolier court).
    #[test]
    fn caps_only_fonts_are_detected_from_their_glyphs() {
        let set = training_set();
        assert_eq!(set.fonts().len(), TRAINING_FONTS.len());
        let caps: Vec<&str> = set
            .fonts()
            .iter()
            .filter(|f| f.caps_only)
            .map(|f| f.name.as_str())
            .collect();
        assert_eq!(caps, vec!["Humor-Sans"]);
    }

    #[test]
    fn both_case_measures_separate_with_a_margin() {
        let set = training_set();
        for f in set.fonts() {
            let own = own_capital_matches(&f.font).len();
            let ratio = ascender_ratio(&f.font).unwrap();
            if f.caps_only {
                assert!(own >= 22 && ratio < 1.05, "{}: {own} {ratio}", f.name);
            } else {
                assert!(own <= 17 && ratio > 1.25, "{}: {own} {ratio}", f.name);
            }
        }
    }

    #[test]
    fn every_training_font_covers_the_letters() {
        let set = training_set();
        for f in set.fonts() {
            let missing =
                f.missing("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789");
            assert!(missing.is_empty(), "{} lacks {missing:?}", f.name);
            assert!(f.package.is_some());
        }
    }

    #[test]
    fn chosen_font_always_covers_the_label() {
        use rand::SeedableRng;
        let set = training_set();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for _ in 0..200 {
            let (font, label) = set.choose(&mut rng, "Quick #7 (fox): \"jumps\"?").unwrap();
            assert!(font.covers(&label));
            if font.caps_only {
                assert_eq!(label, "QUICK #7 (FOX): \"JUMPS\"?");
            }
        }
        assert!(set.choose(&mut rng, "snowman \u{2603}").is_none());
    }

    #[test]
    fn fonts_by_family_and_file_and_missing_ones() {
        let cfg = SyntheticConfig {
            fonts: vec!["DejaVu Sans".into()],
            ..SyntheticConfig::default()
        };
        let set = FontSet::load(&cfg, IAM_CHARSET).unwrap();
        let names: Vec<&str> = set.fonts().iter().map(|f| f.name.as_str()).collect();
        assert!(
            names.contains(&"DejaVuSans") && names.contains(&"DejaVuSans-Bold"),
            "{names:?}"
        );
        assert!(!names.iter().any(|n| n.contains("Mono")), "{names:?}");

        let cfg = SyntheticConfig {
            fonts: vec!["Humor-Sans.ttf".into()],
            ..SyntheticConfig::default()
        };
        let set = FontSet::load(&cfg, IAM_CHARSET).unwrap();
        assert_eq!(set.fonts()[0].package, Some("fonts-humor-sans"));

        let cfg = SyntheticConfig {
            fonts: vec!["No Such Family".into()],
            ..SyntheticConfig::default()
        };
        let err = FontSet::load(&cfg, IAM_CHARSET).unwrap_err().to_string();
        assert!(err.contains("No Such Family"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        let cfg = SyntheticConfig {
            font_dirs: vec![dir.path().display().to_string()],
            ..SyntheticConfig::default()
        };
        let err = FontSet::load(&cfg, IAM_CHARSET).unwrap_err().to_string();
        assert!(err.contains("install the Debian package fonts-"), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn font_folders_are_listed_in_order_through_links_and_loops() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let other = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.join("b/c")).unwrap();
        for f in ["z.TTF", "a.otf", "notes.txt", "b/c/m.ttf", "b/a.ttf"] {
            std::fs::write(d.join(f), b"").unwrap();
        }
        std::fs::write(other.path().join("linked.ttf"), b"").unwrap();
        // Font packages link their folders into one another; a link back up must not hang.
        std::os::unix::fs::symlink(other.path(), d.join("b/pkg")).unwrap();
        std::os::unix::fs::symlink(d, d.join("b/c/up")).unwrap();
        std::os::unix::fs::symlink(d.join("gone.ttf"), d.join("dangling.ttf")).unwrap();
        let names: Vec<String> = font_files(d)
            .iter()
            .map(|p| p.strip_prefix(d).unwrap().display().to_string())
            .collect();
        assert_eq!(
            names,
            ["a.otf", "b/a.ttf", "b/c/m.ttf", "b/pkg/linked.ttf", "z.TTF"]
        );
    }

    #[test]
    fn unseen_validation_fonts_are_refused_for_training() {
        let cfg = SyntheticConfig {
            fonts: vec!["FreeSerif".into()],
            ..SyntheticConfig::default()
        };
        let set = FontSet::load(&cfg, IAM_CHARSET).expect("apt-get install fonts-freefont-ttf");
        let err = set.check_use(TextSplit::Train).unwrap_err().to_string();
        assert!(err.contains("unseen-fonts"), "{err}");
        set.check_use(TextSplit::Descriptions).unwrap();
        training_set().check_use(TextSplit::Train).unwrap();
    }

    #[test]
    fn fonts_outside_the_training_set_are_told_apart() {
        assert_eq!(training_set().outside_training_set().count(), 0);
        let cfg = SyntheticConfig {
            fonts: vec!["FreeSerif".into()],
            ..SyntheticConfig::default()
        };
        let set = FontSet::load(&cfg, IAM_CHARSET).expect("apt-get install fonts-freefont-ttf");
        let outside: Vec<_> = set.outside_training_set().map(|f| &f.family).collect();
        assert!(!outside.is_empty());
        assert_eq!(outside.len(), set.fonts().len(), "{outside:?}");
    }

    /// Writes `a..z` over `A..Z` in every training font to /tmp/textrec-samples/alphabet-*.png
    /// (run with `--ignored` to look at them).
    #[test]
    #[ignore]
    fn render_alphabet_sheets() {
        let set = training_set();
        std::fs::create_dir_all("/tmp/textrec-samples").unwrap();
        for f in set.fonts() {
            let rows = ["abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ"];
            let lines: Vec<_> = rows
                .iter()
                .map(|r| crate::data::render::render_plain(&f.font, r, 40.0))
                .collect();
            let w = lines.iter().map(|l| l.width()).max().unwrap() + 20;
            let h: u32 = lines.iter().map(|l| l.height() + 10).sum::<u32>() + 10;
            let mut sheet = image::GrayImage::from_pixel(w, h, image::Luma([255]));
            let mut y = 10;
            for l in &lines {
                image::imageops::overlay(&mut sheet, l, 10, i64::from(y));
                y += l.height() + 10;
            }
            let own: String = own_capital_matches(&f.font).into_iter().collect();
            println!(
                "{:24} caps_only={:5} ascender ratio {:.2}; {:2} letters look most like their capital: {own}",
                f.name,
                f.caps_only,
                ascender_ratio(&f.font).unwrap_or(0.0),
                own.len()
            );
            sheet
                .save(format!("/tmp/textrec-samples/alphabet-{}.png", f.name))
                .unwrap();
        }
    }
}
