//! The IAM handwriting database in its original layout:
//! `ascii/lines.txt` (the transcriptions) and `lines/a01/a01-000u/a01-000u-00.png`.
//!
//! A `lines.txt` record reads `a01-000u-00 ok 154 19 408 746 1661 89 A|MOVE|to|stop|Mr.`:
//! line id, segmentation result (`ok` or `err`), gray level, component count, bounding box,
//! then the words joined by `|`. `#` lines are comments. The transcription is taken as IAM
//! gives it (`|` becomes a space, so punctuation stays space-separated, as in IAM's own
//! ground truth and the published results on it).
//!
//! A split file lists line ids (`a01-000u-00`) or form ids (`a01-000u`, meaning all its
//! lines), one per line; ids it lists that `lines.txt` lacks are logged.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::files::{Candidate, FileLines};
use super::Skipped;

/// One record of `ascii/lines.txt`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IamLine {
    /// Line id, e.g. `a01-000u-00`.
    pub id: String,
    /// Whether the segmentation was flagged `err`.
    pub err: bool,
    /// Transcription with `|` turned into spaces.
    pub text: String,
}

/// Parse `ascii/lines.txt`.
pub fn parse_lines_txt(text: &str) -> Result<Vec<IamLine>> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_end();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.splitn(9, ' ').collect();
        if fields.len() < 9 {
            bail!(
                "ascii/lines.txt line {}: expected 9 fields, got {:?}",
                n + 1,
                line
            );
        }
        let err = match fields[1] {
            "ok" => false,
            "err" => true,
            other => bail!(
                "ascii/lines.txt line {}: segmentation result {other:?} is neither ok nor err",
                n + 1
            ),
        };
        out.push(IamLine {
            id: fields[0].to_string(),
            err,
            text: fields[8].replace('|', " "),
        });
    }
    Ok(out)
}

/// `lines/a01/a01-000u/a01-000u-00.png` for line id `a01-000u-00`.
pub fn image_path(root: &Path, id: &str) -> Option<PathBuf> {
    let (form, _) = id.rsplit_once('-')?;
    let (writer_dir, _) = form.split_once('-')?;
    Some(
        root.join("lines")
            .join(writer_dir)
            .join(form)
            .join(format!("{id}.png")),
    )
}

/// Open the IAM tree at `root`, keeping the lines of `split_file` (all when `None`) and,
/// unless `include_err` is false, the lines flagged `err`.
pub fn open(
    root: &str,
    split_file: Option<&str>,
    include_err: bool,
    charset: &str,
    cap: Option<u64>,
) -> Result<FileLines> {
    let root = PathBuf::from(root);
    let lines_txt = root.join("ascii/lines.txt");
    let text = std::fs::read_to_string(&lines_txt).with_context(|| {
        format!(
            "cannot read {} (is {} an IAM root?)",
            lines_txt.display(),
            root.display()
        )
    })?;
    let records = parse_lines_txt(&text)?;
    let wanted: Option<HashSet<String>> = match split_file {
        None => None,
        Some(f) => {
            let ids = std::fs::read_to_string(f)
                .with_context(|| format!("cannot read IAM split file {f}"))?;
            Some(ids.split_whitespace().map(str::to_string).collect())
        }
    };
    let mut candidates = Vec::new();
    let mut skipped = Vec::new();
    let mut matched = HashSet::new();
    for r in records {
        if let Some(w) = &wanted {
            let form = r.id.rsplit_once('-').map(|(f, _)| f).unwrap_or("");
            let key = if w.contains(&r.id) {
                r.id.clone()
            } else if w.contains(form) {
                form.to_string()
            } else {
                continue;
            };
            matched.insert(key);
        }
        if r.err && !include_err {
            continue;
        }
        let Some(image) = image_path(&root, &r.id) else {
            skipped.push(Skipped {
                path: lines_txt.clone(),
                reason: format!("malformed line id {:?}", r.id),
            });
            continue;
        };
        if !image.is_file() {
            skipped.push(Skipped {
                path: image,
                reason: "image file missing".into(),
            });
            continue;
        }
        candidates.push(Candidate {
            image,
            text: r.text,
            id: r.id,
        });
    }
    if let Some(w) = &wanted {
        let unknown: Vec<&String> = w.iter().filter(|id| !matched.contains(*id)).collect();
        if !unknown.is_empty() {
            tracing::warn!(count = unknown.len(), first = ?unknown.iter().take(5).collect::<Vec<_>>(), "IAM split file lists ids that ascii/lines.txt lacks");
        }
    }
    let lines = FileLines::check(
        format!("IAM lines at {}", root.display()),
        candidates,
        skipped,
        charset,
        cap,
    );
    if lines.lines.is_empty() {
        bail!(
            "IAM data set at {} has no usable line{}",
            root.display(),
            split_file
                .map(|f| format!(" in split {f}"))
                .unwrap_or_default()
        );
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Dataset;
    use image::{GrayImage, Luma};
    use textrec_contract::charset::IAM_CHARSET;

    const LINES_TXT: &str = "\
#--- lines.txt ---------------------------------------------------------------#
#
# format: a01-000u-00 ok 154 19 408 746 1663 91 A|MOVE|to|stop|Mr.|Gaitskell|from
#
a01-000u-00 ok 154 19 408 746 1661 89 A|MOVE|to|stop|Mr.|Gaitskell|from
a01-000u-01 ok 156 19 395 932 1850 105 nominating|any|more|Labour|life|Peers
a01-000u-02 err 157 16 408 1106 1703 75 is|to|be|made|at|a|meeting|of|Labour
a01-000x-00 ok 182 9 375 722 1566 80 Missing|image|here
b02-100-03 ok 170 12 343 1063 1656 86 price|\u{a3}5|only
b02-100-04 ok 170 12 343 1063 1656 86 I|said|,|\"|Yes|!|\"
";

    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("ascii")).unwrap();
        std::fs::write(root.join("ascii/lines.txt"), LINES_TXT).unwrap();
        for id in [
            "a01-000u-00",
            "a01-000u-01",
            "a01-000u-02",
            "b02-100-03",
            "b02-100-04",
        ] {
            let p = image_path(root, id).unwrap();
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            GrayImage::from_fn(60, 20, |x, _| Luma([if x % 5 == 0 { 0 } else { 255 }]))
                .save(p)
                .unwrap();
        }
        dir
    }

    #[test]
    fn parses_records_and_paths() {
        let recs = parse_lines_txt(LINES_TXT).unwrap();
        assert_eq!(recs.len(), 6);
        assert_eq!(
            recs[0],
            IamLine {
                id: "a01-000u-00".into(),
                err: false,
                text: "A MOVE to stop Mr. Gaitskell from".into()
            }
        );
        assert!(recs[2].err);
        assert_eq!(recs[5].text, "I said , \" Yes ! \"");
        assert_eq!(
            image_path(Path::new("/iam"), "a01-000u-00").unwrap(),
            PathBuf::from("/iam/lines/a01/a01-000u/a01-000u-00.png")
        );
        assert!(parse_lines_txt("a01-000u-00 maybe 1 2 3 4 5 6 x").is_err());
        assert!(parse_lines_txt("a01-000u-00 ok 1 2").is_err());
    }

    #[test]
    fn opens_a_tree_with_err_option_and_skips() {
        let dir = tree();
        let root = dir.path().to_str().unwrap();
        let ds = open(root, None, true, IAM_CHARSET, None).unwrap();
        assert_eq!(ds.len(), Some(4));
        let s = ds.get(0).unwrap();
        assert_eq!(
            (s.id.as_str(), s.text.as_str()),
            ("a01-000u-00", "A MOVE to stop Mr. Gaitskell from")
        );
        assert_eq!(s.image.dimensions(), (60, 20));
        let reasons: Vec<&str> = ds.skipped().iter().map(|s| s.reason.as_str()).collect();
        assert_eq!(reasons.len(), 2, "{reasons:?}");
        assert!(
            reasons.iter().any(|r| r.contains("missing"))
                && reasons.iter().any(|r| r.contains("U+00A3"))
        );

        let no_err = open(root, None, false, IAM_CHARSET, None).unwrap();
        assert_eq!(no_err.len(), Some(3));
    }

    #[test]
    fn split_file_selects_lines_or_forms() {
        let dir = tree();
        let root = dir.path().to_str().unwrap();
        let split = dir.path().join("split.txt");
        std::fs::write(&split, "a01-000u\nb02-100-04\nz99-999-00\n").unwrap();
        let ds = open(root, Some(split.to_str().unwrap()), true, IAM_CHARSET, None).unwrap();
        let ids: Vec<String> = (0..ds.len().unwrap())
            .map(|i| ds.get(i).unwrap().id)
            .collect();
        assert_eq!(
            ids,
            vec!["a01-000u-00", "a01-000u-01", "a01-000u-02", "b02-100-04"]
        );

        std::fs::write(&split, "z99-999\n").unwrap();
        let err = open(root, Some(split.to_str().unwrap()), true, IAM_CHARSET, None).unwrap_err();
        assert!(err.to_string().contains("no usable line"), "{err}");
        let err = open("/no/iam", None, true, IAM_CHARSET, None).unwrap_err();
        assert!(
            format!("{err:#}").contains("/no/iam/ascii/lines.txt"),
            "{err:#}"
        );
    }
}
