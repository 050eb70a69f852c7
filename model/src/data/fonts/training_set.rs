//! The training font set: the font files of the Debian packages in [`TRAINING_FONTS`], by
//! path, and finding them on a machine.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use super::{font_files, show_dirs};

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

pub(super) fn find_training_font(t: &TrainingFont, dirs: &[PathBuf]) -> Result<PathBuf> {
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
pub(super) fn training_package(path: &Path) -> Option<&'static str> {
    let p = path.to_string_lossy();
    TRAINING_FONTS
        .iter()
        .find(|t| p.ends_with(&format!("/{}", t.file)))
        .map(|t| t.package)
}
