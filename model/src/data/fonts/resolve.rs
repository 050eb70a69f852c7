//! What a `fonts:` entry names: a file, a font folder or a family.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use super::reserved::EVALUATION_FONT_FOLDERS;
use super::training_set::TRAINING_FONTS;
use super::{family_name, font_files, show_dirs, squash};

/// A `fonts:` entry: a folder holding font files (absolute, or relative to a font folder), a
/// file (absolute, or relative to a font folder, or a bare file name) or a family name
/// (`DejaVu Sans`, matched against the fonts' name tables, every style).
pub(super) fn resolve_font(wanted: &str, dirs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let lower = wanted.to_lowercase();
    let is_file =
        [".ttf", ".otf", ".ttc"].iter().any(|e| lower.ends_with(e)) || wanted.contains('/');
    // A folder is one group of every font file in it: a package whose styles carry family
    // names of their own (fonts-bwht has six) is then drawn as often as any other entry.
    let folder = if !wanted.contains('/') {
        None
    } else if Path::new(wanted).is_absolute() {
        Some(PathBuf::from(wanted)).filter(|f| f.is_dir())
    } else {
        dirs.iter().map(|d| d.join(wanted)).find(|f| f.is_dir())
    };
    if let Some(folder) = folder {
        let files = font_files(&folder);
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
