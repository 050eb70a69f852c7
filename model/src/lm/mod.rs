//! Reading with context: a character language model stored with a model folder, and the CTC
//! prefix beam search that weighs readings by it (`ctc-lm` decoding).
//!
//! - [`ngram`]: [`CharNgram`], counted over training text, pruned, stored as safetensors;
//! - [`beam`]: [`prefix_search`], the search over one line's CTC frames.

pub mod beam;
pub mod ngram;

use anyhow::{ensure, Context, Result};
use textrec_contract::config::TextSplit;
use textrec_contract::manifest::{FileDigest, LanguageModelInfo, ModelManifest};

use crate::data::corpus::Corpus;

pub use beam::{prefix_search, CtcFrames, SearchSettings};
pub use ngram::{CharNgram, LmState, NgramSpec, LM_FORMAT};

/// File name of the language model in a model folder.
pub const LM_FILE: &str = "lm.safetensors";

/// Width lines of prose are broken at for counting: a printed line's.
const LINE_WIDTH: usize = 64;

/// Count a language model over the training split of `corpus` (the text synthetic training
/// lines are drawn from, never the held-out text), for a model reading `charset`.
pub fn count_training_text(corpus: &Corpus, charset: &str, spec: NgramSpec) -> Result<CharNgram> {
    let lines = corpus.lines(TextSplit::Train, LINE_WIDTH);
    CharNgram::count(lines.iter().map(String::as_str), charset, spec)
}

/// A language model made for a model folder: loaded, as file bytes, and as the manifest
/// describes it.
#[derive(Debug, Clone)]
pub struct FolderLm {
    /// Ready for decoding.
    pub model: LanguageModel,
    /// The file ([`LM_FILE`]).
    pub bytes: Vec<u8>,
    /// The manifest's `language_model`.
    pub info: LanguageModelInfo,
}

impl FolderLm {
    /// Read with other search settings (weights and unsure lines chosen on validation data):
    /// the loaded model and the manifest's description both change, the file does not.
    pub fn set_weights(&mut self, settings: SearchSettings) {
        self.model.settings = settings;
        self.info.alpha = settings.alpha;
        self.info.beta = settings.beta;
        self.info.beam = settings.beam as u32;
        self.info.unsure_lines = settings.unsure;
    }
}

/// Count a language model over `corpus`'s training text (see [`count_training_text`]) and
/// serialize it for a model folder; `source` says in the manifest what the text was.
pub fn build_for_folder(
    corpus: &Corpus,
    charset: &str,
    spec: NgramSpec,
    settings: SearchSettings,
    source: String,
) -> Result<FolderLm> {
    let ngram = count_training_text(corpus, charset, spec)?;
    let bytes = ngram.to_bytes()?;
    let info = LanguageModelInfo {
        file: LM_FILE.to_string(),
        order: spec.order as u32,
        min_count: spec.min_count,
        ngrams: ngram.ngrams(),
        source,
        alpha: settings.alpha,
        beta: settings.beta,
        beam: settings.beam as u32,
        unsure_lines: settings.unsure,
    };
    // What decoding reads is what the file holds (log-probabilities rounded to f16), so the
    // validation that picks the decoding measures the model as it will be served.
    let model = LanguageModel::load(&info, &bytes, charset)?;
    Ok(FolderLm { model, bytes, info })
}

/// Make `manifest` name the language model file `bytes` described by `info`: its digest
/// joins (or replaces) the folder's file list. Write the file before the manifest.
pub fn attach(manifest: &mut ModelManifest, bytes: &[u8], info: LanguageModelInfo) {
    manifest.files.retain(|f| f.path != info.file);
    if let Some(old) = manifest.language_model.take() {
        manifest.files.retain(|f| f.path != old.file);
    }
    manifest
        .files
        .push(FileDigest::of(info.file.clone(), bytes));
    manifest.language_model = Some(info);
}

/// A language model loaded for decoding: the n-gram and how the search weighs it.
#[derive(Debug, Clone)]
pub struct LanguageModel {
    /// The n-gram.
    pub ngram: CharNgram,
    /// How the search runs.
    pub settings: SearchSettings,
}

impl LanguageModel {
    /// Load the file a manifest describes (`bytes`, already checked against its digest) for
    /// a model reading `charset`.
    pub fn load(info: &LanguageModelInfo, bytes: &[u8], charset: &str) -> Result<Self> {
        let ngram = CharNgram::from_bytes(bytes)
            .with_context(|| format!("language model {}", info.file))?;
        ensure!(
            ngram.charset() == charset,
            "language model {}: its charset differs from the model's",
            info.file
        );
        ensure!(
            ngram.order() == info.order as usize,
            "language model {}: order {} but the manifest says {}",
            info.file,
            ngram.order(),
            info.order
        );
        ensure!(
            info.beam >= 1 && info.alpha.is_finite() && info.beta.is_finite(),
            "language model {}: beam must be at least 1 and alpha, beta finite",
            info.file
        );
        if let Some(u) = info.unsure_lines {
            ensure!(
                (0.0..=1.0).contains(&u.below) && u.alpha.is_finite() && u.beta.is_finite(),
                "language model {}: unsure_lines.below must be within 0..1 and its alpha, beta \
                 finite",
                info.file
            );
        }
        Ok(Self {
            ngram,
            settings: SearchSettings {
                beam: info.beam as usize,
                alpha: info.alpha,
                beta: info.beta,
                unsure: info.unsure_lines,
                ..SearchSettings::default()
            },
        })
    }
}
