//! The fonts reserved for independent evaluation: never trained or validated on, and only
//! rendered by `synth --independent-evaluation`.

use std::path::PathBuf;

use anyhow::{bail, Result};

use super::{show_dirs, squash, LoadedFont};

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
pub(super) fn is_reserved_for_evaluation(font: &LoadedFont) -> bool {
    let path = font.path.to_string_lossy().to_lowercase();
    let family = squash(&font.family);
    RESERVED_FOR_EVALUATION
        .iter()
        .any(|r| path.contains(r) || family.contains(r))
}
