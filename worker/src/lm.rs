//! `textrec-worker lm`: count a character language model over the training text and add it
//! to a model folder, so that the folder can read with `ctc-lm` decoding.
//!
//! ```text
//! textrec-worker lm --model models/small [--order 6] [--min-count 2] [--make-default]
//! ```
//!
//! The text is the training split of the corpus synthetic training draws from (Debian's
//! `fortunes` and the `wamerican` word list, held-out text excluded), mapped into the model's
//! charset. The file goes in first and the manifest last, as every folder writer does; the
//! model's version (its manifest's sha256) changes.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use textrec_contract::config::SyntheticConfig;
use textrec_contract::exit::ConfigError;
use textrec_contract::layout;
use textrec_contract::manifest::{DecodeMode, ModelManifest};
use textrec_model::data::corpus::Corpus;
use textrec_model::lm::{self, NgramSpec, SearchSettings, LM_FILE};

/// Arguments of `lm`.
#[derive(Args, Debug)]
pub struct LmArgs {
    /// The model folder (a local path) to add the language model to.
    #[arg(long)]
    pub model: PathBuf,
    /// Longest n-gram, in characters.
    #[arg(long, default_value_t = NgramSpec::default().order as u32, value_parser = clap::value_parser!(u32).range(2..=9))]
    pub order: u32,
    /// Drop n-grams of order three and up seen fewer times than this (smaller file, little
    /// loss).
    #[arg(long, default_value_t = NgramSpec::default().min_count, value_parser = clap::value_parser!(u32).range(1..))]
    pub min_count: u32,
    /// Weight of the language model in the search.
    #[arg(long, default_value_t = SearchSettings::default().alpha)]
    pub alpha: f32,
    /// Score added per character read.
    #[arg(long, default_value_t = SearchSettings::default().beta)]
    pub beta: f32,
    /// Readings the search keeps per frame.
    #[arg(long, default_value_t = SearchSettings::default().beam as u32, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub beam: u32,
    /// Make `ctc-lm` the folder's default decoding (its manifest's `decoding`).
    #[arg(long)]
    pub make_default: bool,
    /// Folder of fortune files to count over.
    #[arg(long, default_value_t = SyntheticConfig::default().fortunes_dir)]
    pub fortunes_dir: String,
    /// Word list to count over.
    #[arg(long, default_value_t = SyntheticConfig::default().words_file)]
    pub words_file: String,
}

/// Run `lm`; returns the process exit code.
pub fn run(args: LmArgs) -> Result<i32> {
    let manifest_path = args.model.join(layout::MANIFEST);
    let manifest_bytes = std::fs::read(&manifest_path).map_err(|e| {
        ConfigError::new(format!(
            "--model {}: not a model folder ({}: {e})",
            args.model.display(),
            manifest_path.display()
        ))
    })?;
    let mut manifest = ModelManifest::parse(&manifest_bytes)
        .with_context(|| format!("{}", manifest_path.display()))?;
    if manifest.architecture.ctc_weight <= 0.0 {
        return Err(ConfigError::new(
            "this model has no CTC head, and `ctc-lm` decoding searches the CTC head's frames",
        )
        .into());
    }

    let started = Instant::now();
    let source = SyntheticConfig {
        fortunes_dir: args.fortunes_dir.clone(),
        words_file: args.words_file.clone(),
        ..SyntheticConfig::default()
    };
    let corpus = Corpus::load(&source, &manifest.charset)?;
    let spec = NgramSpec {
        order: args.order as usize,
        min_count: args.min_count,
    };
    let settings = SearchSettings {
        alpha: args.alpha,
        beta: args.beta,
        beam: args.beam as usize,
        ..SearchSettings::default()
    };
    let source = format!(
        "training split of {} and {}",
        args.fortunes_dir, args.words_file
    );
    let built = lm::build_for_folder(&corpus, &manifest.charset, spec, settings, source)?;
    let (bytes, info) = (built.bytes, built.info);
    let ngrams = info.ngrams;
    lm::attach(&mut manifest, &bytes, info);
    if args.make_default {
        manifest.decoding = DecodeMode::CtcLm;
    }

    let lm_path = args.model.join(LM_FILE);
    std::fs::write(&lm_path, &bytes)
        .with_context(|| format!("cannot write {}", lm_path.display()))?;
    let new_manifest = serde_json::to_vec_pretty(&manifest)?;
    // Through a temporary file and a rename, so the folder never holds half a manifest.
    let tmp = args.model.join(format!("{}.tmp", layout::MANIFEST));
    std::fs::write(&tmp, &new_manifest)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &manifest_path)
        .with_context(|| format!("cannot replace {}", manifest_path.display()))?;
    println!(
        "{}: order-{} language model, {} n-grams, {:.1} MB, counted in {:.1} s; decoding: {}",
        lm_path.display(),
        args.order,
        ngrams,
        bytes.len() as f64 / 1e6,
        started.elapsed().as_secs_f64(),
        manifest.decoding.as_str()
    );
    Ok(0)
}
