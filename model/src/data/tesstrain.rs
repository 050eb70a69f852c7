//! tesstrain-style folders: `NAME.png` (or `.tif`, `.tiff`, `.jpg`, `.jpeg`, any case) next to
//! `NAME.gt.txt` holding its transcription (one line, UTF-8). Subfolders are searched too.
//!
//! An image without a `.gt.txt`, a `.gt.txt` without an image, an image that does not decode
//! or is not shaped like a text line (so that training would refuse it: a flagged 16000000x1
//! strip, say), and a transcription that is empty, not UTF-8 or outside the charset are left
//! out, logged (`tracing::warn`) and listed by [`Dataset::skipped`](super::Dataset::skipped). Transcriptions are taken
//! with their whitespace collapsed (as CER is computed); nothing else is changed. Lines are
//! ordered by path; `samples` keeps the first N.
//!
//! A folder holding [`EVALUATION_ONLY_MARKER`] is an independent evaluation set (written by
//! `synth --independent-evaluation` with fonts and text reserved for it): [`open`] refuses it,
//! so it can never become a training or validation set; [`open_evaluation`] reads it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use super::files::{Candidate, FileLines};
use super::Skipped;
use crate::metrics::normalize;

/// Image extensions recognised, in order of preference when one name has several.
pub const IMAGE_EXTENSIONS: [&str; 5] = ["png", "tif", "tiff", "jpg", "jpeg"];

#[derive(Default)]
struct Pair {
    images: Vec<PathBuf>,
    gt: Option<PathBuf>,
}

/// The file that marks a tesstrain folder as an independent evaluation set.
pub const EVALUATION_ONLY_MARKER: &str = "EVALUATION-ONLY";

/// Scan the tesstrain folder `root`, pair images with transcriptions and check them (see the
/// module docs). A folder marked as an independent evaluation set is refused.
pub fn open(root: &str, charset: &str, cap: Option<u64>) -> Result<FileLines> {
    let marker = Path::new(root).join(EVALUATION_ONLY_MARKER);
    if marker.is_file() {
        bail!(
            "{root} is an independent evaluation set ({} says so): its fonts and text are \
             reserved for reporting how a model reads, and never train, validate or choose \
             one (a promotion chooses); score a model on it with `textrec-worker eval --data \
             {root}`",
            marker.display()
        );
    }
    open_evaluation(root, charset, cap)
}

/// [`open`] for evaluation: an independent evaluation set is read like any other folder.
pub fn open_evaluation(root: &str, charset: &str, cap: Option<u64>) -> Result<FileLines> {
    let root = PathBuf::from(root);
    if !root.is_dir() {
        bail!(
            "tesstrain folder {} does not exist or is not a folder",
            root.display()
        );
    }
    let mut pairs: BTreeMap<PathBuf, Pair> = BTreeMap::new();
    for path in walk(&root) {
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let lower = name.to_lowercase();
        if let Some(stem) = lower.strip_suffix(".gt.txt").map(|s| &name[..s.len()]) {
            pairs.entry(path.with_file_name(stem)).or_default().gt = Some(path.clone());
        } else if let Some((stem, ext)) = name.rsplit_once('.') {
            if IMAGE_EXTENSIONS.contains(&ext.to_lowercase().as_str()) {
                pairs
                    .entry(path.with_file_name(stem))
                    .or_default()
                    .images
                    .push(path.clone());
            }
        }
    }
    let mut candidates = Vec::new();
    let mut skipped = Vec::new();
    for (stem, mut pair) in pairs {
        pair.images.sort_by_key(|p| {
            let ext = p
                .extension()
                .map(|e| e.to_string_lossy().to_lowercase())
                .unwrap_or_default();
            IMAGE_EXTENSIONS.iter().position(|e| *e == ext)
        });
        let id = stem
            .strip_prefix(&root)
            .unwrap_or(&stem)
            .display()
            .to_string();
        match (pair.images.first(), pair.gt) {
            (None, Some(gt)) => skipped.push(Skipped {
                path: gt,
                reason: "no image next to this transcription".into(),
            }),
            (Some(_), None) => {
                for image in pair.images {
                    skipped.push(Skipped {
                        path: image,
                        reason: "no .gt.txt transcription".into(),
                    });
                }
            }
            (Some(image), Some(gt)) => {
                for extra in &pair.images[1..] {
                    skipped.push(Skipped {
                        path: extra.clone(),
                        reason: format!(
                            "{} has the same name and is used instead",
                            image.display()
                        ),
                    });
                }
                match std::fs::read(&gt).map(String::from_utf8) {
                    Ok(Ok(text)) => candidates.push(Candidate {
                        image: image.clone(),
                        text: normalize(&text),
                        id,
                    }),
                    Ok(Err(_)) => skipped.push(Skipped {
                        path: gt,
                        reason: "transcription is not UTF-8".into(),
                    }),
                    Err(e) => skipped.push(Skipped {
                        path: gt,
                        reason: format!("cannot read: {e}"),
                    }),
                }
            }
            (None, None) => {}
        }
    }
    let lines = FileLines::check(
        format!("tesstrain folder {}", root.display()),
        candidates,
        skipped,
        charset,
        cap,
    );
    if lines.lines.is_empty() {
        bail!(
            "tesstrain folder {} has no usable line (NAME.png|tif|jpg + NAME.gt.txt); {} inputs left out{}",
            root.display(),
            lines.skipped.len(),
            lines.skipped.first().map(|s| format!(", e.g. {} ({})", s.path.display(), s.reason)).unwrap_or_default()
        );
    }
    Ok(lines)
}

/// Files under `dir`, recursively (symbolic links to folders are not followed), in name order.
fn walk(dir: &Path) -> impl Iterator<Item = PathBuf> {
    walkdir::WalkDir::new(dir)
        .sort_by_file_name()
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| !e.file_type().is_dir())
        .map(walkdir::DirEntry::into_path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Dataset;
    use image::{GrayImage, Luma};
    use textrec_contract::charset::IAM_CHARSET;

    fn write_png(path: &Path, shade: u8) {
        GrayImage::from_fn(40, 12, |x, _| Luma([if x % 7 == 0 { shade } else { 255 }]))
            .save(path)
            .unwrap();
    }

    #[test]
    fn pairs_are_found_and_bad_inputs_skipped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("sub")).unwrap();
        write_png(&d.join("a.png"), 0);
        std::fs::write(d.join("a.gt.txt"), "Hello  world\n").unwrap();
        write_png(&d.join("sub/b.PNG"), 10);
        std::fs::write(d.join("sub/b.gt.txt"), "line two").unwrap();
        image::DynamicImage::ImageLuma8(GrayImage::from_pixel(30, 10, Luma([200])))
            .save(d.join("c.tif"))
            .unwrap();
        std::fs::write(d.join("c.gt.txt"), "tiff").unwrap();
        write_png(&d.join("no_text.png"), 0);
        std::fs::write(d.join("no_image.gt.txt"), "orphan").unwrap();
        std::fs::write(
            d.join("corrupt.png"),
            b"\x89PNG\r\n\x1a\nthis is not really a png",
        )
        .unwrap();
        std::fs::write(d.join("corrupt.gt.txt"), "x").unwrap();
        let full = std::fs::read(d.join("a.png")).unwrap();
        std::fs::write(d.join("truncated.png"), &full[..full.len() - 20]).unwrap();
        std::fs::write(d.join("truncated.gt.txt"), "x").unwrap();
        write_png(&d.join("euro.png"), 0);
        std::fs::write(d.join("euro.gt.txt"), "5 \u{20ac}").unwrap();
        std::fs::write(d.join("notes.txt"), "unrelated").unwrap();
        // Decodes fine, but is no text line (wider than 100:1): training would refuse it.
        GrayImage::from_pixel(1_000, 4, Luma([255]))
            .save(d.join("strip.png"))
            .unwrap();
        std::fs::write(d.join("strip.gt.txt"), "x").unwrap();

        let ds = open(d.to_str().unwrap(), IAM_CHARSET, None).unwrap();
        assert_eq!(ds.len(), Some(3));
        let texts: Vec<String> = (0..3).map(|i| ds.get(i).unwrap().text).collect();
        assert_eq!(texts, vec!["Hello world", "tiff", "line two"]);
        assert_eq!(ds.get(2).unwrap().id, "sub/b");
        assert_eq!(ds.get(0).unwrap().image.dimensions(), (40, 12));
        assert!(ds.get(3).is_err());
        let mut skipped: Vec<String> = ds
            .skipped()
            .iter()
            .map(|s| s.path.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        skipped.sort();
        assert_eq!(
            skipped,
            vec![
                "corrupt.png",
                "euro.png",
                "no_image.gt.txt",
                "no_text.png",
                "strip.png",
                "truncated.png"
            ]
        );
        let strip = ds
            .skipped()
            .iter()
            .find(|s| s.path.ends_with("strip.png"))
            .unwrap();
        assert!(strip.reason.contains("wider than"), "{}", strip.reason);
        assert!(
            ds.describe().contains("6 inputs left out"),
            "{}",
            ds.describe()
        );

        let capped = open(d.to_str().unwrap(), IAM_CHARSET, Some(2)).unwrap();
        assert_eq!(capped.len(), Some(2));
    }

    #[test]
    fn empty_or_missing_folder_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("x.gt.txt"), "orphan").unwrap();
        let err = open(dir.path().to_str().unwrap(), IAM_CHARSET, None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(dir.path().to_str().unwrap()) && err.contains("no usable line"),
            "{err}"
        );
        let err = open("/no/such/dir", IAM_CHARSET, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("/no/such/dir"), "{err}");
    }

    #[test]
    fn a_marked_evaluation_set_is_refused_for_training_and_read_for_evaluation() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write_png(&d.join("a.png"), 0);
        std::fs::write(d.join("a.gt.txt"), "held out").unwrap();
        let root = d.to_str().unwrap();
        assert!(open(root, IAM_CHARSET, None).is_ok());

        std::fs::write(d.join(EVALUATION_ONLY_MARKER), "never train on this\n").unwrap();
        let err = open(root, IAM_CHARSET, None).unwrap_err().to_string();
        assert!(
            err.contains("independent evaluation set") && err.contains("textrec-worker eval"),
            "{err}"
        );
        let set = open_evaluation(root, IAM_CHARSET, None).unwrap();
        assert_eq!(set.len(), Some(1));
        // The marker is not a line, nor reported as a left-out input.
        assert!(set.skipped().is_empty(), "{:?}", set.skipped());
    }
}
