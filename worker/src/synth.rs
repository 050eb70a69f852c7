//! `textrec-worker synth`: write rendered lines as a tesstrain folder (`NAME.png` +
//! `NAME.gt.txt`), for quick evaluation sets and for the quickstart's samples, and with
//! `--independent-evaluation` the one kind of set that may use the fonts and text reserved for
//! independent evaluation.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use textrec_contract::charset::IAM_CHARSET;
use textrec_contract::config::{SyntheticConfig, TextSplit};
use textrec_contract::exit;
use textrec_model::data::corpus::{documentation_paragraphs, DOCUMENTATION_DIR};
use textrec_model::data::fonts::evaluation_font_folders;
use textrec_model::data::synthetic::SyntheticDataset;
use textrec_model::data::tesstrain::EVALUATION_ONLY_MARKER;
use textrec_model::data::Dataset;

/// Seed of `synth` sets unless `--seed` is given. It differs from the validation seed, so a
/// synthetic test set is never the very set a run selected its best model on.
pub const DEFAULT_SEED: u64 = 0x7e57_0000_5eed_0002;

/// Arguments of `synth`.
#[derive(Args, Debug)]
pub struct SynthArgs {
    /// Folder to write `NAME.png` + `NAME.gt.txt` pairs into (created if missing).
    #[arg(long)]
    pub out: PathBuf,
    /// Number of lines.
    #[arg(long, default_value_t = 20)]
    pub count: u64,
    /// Text to draw from: `descriptions` (Debian package descriptions, prose the training
    /// corpus does not contain), `validation` (held-out corpus text) or `train`.
    #[arg(long, value_enum, default_value_t = SplitArg::Descriptions)]
    pub split: SplitArg,
    /// Seed; the same seed and options always give the same lines.
    #[arg(long, default_value_t = DEFAULT_SEED)]
    pub seed: u64,
    /// Augmentation strength from 0 (clean) to 1 (heavy).
    #[arg(long, default_value_t = 0.3)]
    pub augment: f64,
    /// How far each glyph's outline is reshaped on its own, from 0 (off) to 1: the lines
    /// training sees with `synthetic.glyph_morph`.
    #[arg(long, default_value_t = 0.0)]
    pub glyph_morph: f64,
    /// Share of lines, from 0 (off) to 1, drawn in hatched, hollow or worn ink: the lines
    /// training sees with `synthetic.ink_texture`.
    #[arg(long, default_value_t = 0.0)]
    pub ink_texture: f64,
    /// Shortest line in characters.
    #[arg(long, default_value_t = 8)]
    pub min_chars: usize,
    /// Longest line in characters.
    #[arg(long, default_value_t = 100)]
    pub max_chars: usize,
    /// Mean line length in characters (printed lines spread around it); 0 draws lengths
    /// uniformly between --min-chars and --max-chars.
    #[arg(long, default_value_t = textrec_contract::config::PRINTED_MEAN_CHARS)]
    pub mean_chars: usize,
    /// Share of lines that are generated numbers, dates, amounts and names.
    #[arg(long, default_value_t = 0.1)]
    pub generated_fraction: f64,
    /// A font file, family name or font folder to render with (repeatable; a folder is one
    /// entry, drawn as often as a family). Default: the training fonts, or with
    /// --independent-evaluation the fonts reserved for it.
    #[arg(long = "font")]
    pub fonts: Vec<String>,
    /// Render an independent evaluation set: text from the plain-text documentation under
    /// --doc-dir, and unless --font says otherwise the fonts reserved for evaluation (Debian
    /// packages fonts-bwht, fonts-femkeklaver and fonts-kaushanscript, one entry each). No
    /// training or validation set ever uses that text or those fonts, so nothing chosen while
    /// training (the fonts, the augmentation, the best step) was chosen on them. The folder is
    /// marked with an `EVALUATION-ONLY` file: training and promotion evaluations refuse it,
    /// `eval` reads it.
    #[arg(long, conflicts_with = "split")]
    pub independent_evaluation: bool,
    /// With --independent-evaluation: render in the training fonts instead of the reserved
    /// ones, to tell what the new text costs apart from what new letterforms do.
    #[arg(long, requires = "independent_evaluation", conflicts_with = "fonts")]
    pub training_fonts: bool,
    /// Folder whose README, NEWS, .txt and .md files an independent evaluation set's text is
    /// drawn from.
    #[arg(long, default_value = DOCUMENTATION_DIR, requires = "independent_evaluation")]
    pub doc_dir: PathBuf,
}

/// The corpus split, as a command-line value.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SplitArg {
    /// Debian package descriptions (shipped with textrec).
    Descriptions,
    /// Held-out corpus text.
    Validation,
    /// Training text.
    Train,
}

/// Run `synth`; returns the process exit code.
pub fn run(args: SynthArgs) -> Result<i32> {
    let cfg = SyntheticConfig {
        fonts: args.fonts.clone(),
        augment: args.augment,
        glyph_morph: args.glyph_morph,
        ink_texture: args.ink_texture,
        min_chars: args.min_chars,
        max_chars: args.max_chars,
        mean_chars: (args.mean_chars > 0).then_some(args.mean_chars),
        generated_fraction: args.generated_fraction,
        split: match args.split {
            SplitArg::Descriptions => TextSplit::Descriptions,
            SplitArg::Validation => TextSplit::Validation,
            SplitArg::Train => TextSplit::Train,
        },
        ..SyntheticConfig::default()
    };
    let set = if args.independent_evaluation {
        independent_evaluation_set(cfg, &args)
    } else {
        SyntheticDataset::open(&cfg, Some(args.count), args.seed, IAM_CHARSET)
    }
    .map_err(|e| exit::ConfigError::new(format!("{e:#}")))?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let marker = args.out.join(EVALUATION_ONLY_MARKER);
    if args.independent_evaluation {
        std::fs::write(
            &marker,
            format!(
                "Independent evaluation set, written by `textrec-worker synth \
                 --independent-evaluation`: text from {}, fonts: {}. Never train, validate \
                 or choose a model on it: training and promotion evaluations refuse this \
                 folder, `textrec-worker eval` reads it.\n",
                args.doc_dir.display(),
                if args.training_fonts {
                    "the training fonts".to_string()
                } else if args.fonts.is_empty() {
                    "the fonts reserved for evaluation".to_string()
                } else {
                    args.fonts.join(", ")
                }
            ),
        )
        .with_context(|| format!("cannot write {}", marker.display()))?;
    } else if marker.exists() {
        // Ordinary lines written into a marked folder would be refused by training for no
        // reason of theirs; mixing the two kinds of set is a mistake either way.
        return Err(exit::ConfigError::new(format!(
            "{} is an independent evaluation set ({} exists): write other lines elsewhere",
            args.out.display(),
            marker.display()
        ))
        .into());
    }
    let digits = args.count.max(1).to_string().len().max(4);
    for i in 0..args.count {
        let sample = set.get(i)?;
        let name = format!("line-{i:0digits$}");
        let png = args.out.join(format!("{name}.png"));
        sample
            .image
            .save(&png)
            .with_context(|| format!("cannot write {}", png.display()))?;
        let gt = args.out.join(format!("{name}.gt.txt"));
        std::fs::write(&gt, format!("{}\n", sample.text))
            .with_context(|| format!("cannot write {}", gt.display()))?;
    }
    eprintln!(
        "wrote {} lines to {} ({})",
        args.count,
        args.out.display(),
        set.describe()
    );
    Ok(exit::SUCCESS)
}

/// The independent evaluation set `args` asks for: documentation text, and the reserved fonts
/// unless `--font` names others.
fn independent_evaluation_set(
    mut cfg: SyntheticConfig,
    args: &SynthArgs,
) -> Result<SyntheticDataset> {
    if cfg.fonts.is_empty() && !args.training_fonts {
        let dirs: Vec<PathBuf> = cfg.font_dirs.iter().map(PathBuf::from).collect();
        cfg.fonts = evaluation_font_folders(&dirs)?
            .into_iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
    }
    let paragraphs = documentation_paragraphs(&args.doc_dir)?;
    SyntheticDataset::open_independent_evaluation(
        &cfg,
        args.count,
        args.seed,
        IAM_CHARSET,
        paragraphs,
    )
    .with_context(|| {
        format!(
            "independent evaluation set (text from {})",
            args.doc_dir.display()
        )
    })
}
