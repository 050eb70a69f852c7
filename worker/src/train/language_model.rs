//! The character language model a finished trial writes beside its weights
//! (`language_model` in the config), counted over the training split of the synthetic
//! training data's corpus: the text the network was trained on, never the held-out text.

use anyhow::{Context as _, Result};
use textrec_contract::config::DatasetKind;
use textrec_contract::TrainConfig;
use textrec_model::data::corpus::Corpus;
use textrec_model::lm::{self, FolderLm, NgramSpec, SearchSettings};

/// Count the language model `cfg.language_model` asks for, for a model reading `charset`;
/// `None` when it asks for none, or when no training source is synthetic (there is no corpus
/// to count over; a warning says so).
pub fn build(cfg: &TrainConfig, charset: &str) -> Result<Option<FolderLm>> {
    let lmc = &cfg.language_model;
    if lmc.order == 0 {
        return Ok(None);
    }
    let Some(source) = cfg
        .data
        .train
        .sources()
        .iter()
        .find(|d| d.kind == DatasetKind::Synthetic)
    else {
        tracing::warn!(
            "language_model.order is {} but no training source is synthetic, so there is no \
             corpus to count it over; the model is written without a language model",
            lmc.order
        );
        return Ok(None);
    };
    let started = std::time::Instant::now();
    let synthetic = &source.synthetic;
    let corpus = Corpus::load(synthetic, charset).context("language model corpus")?;
    let built = lm::build_for_folder(
        &corpus,
        charset,
        NgramSpec {
            order: lmc.order,
            min_count: lmc.min_count,
        },
        SearchSettings {
            alpha: lmc.alpha as f32,
            beta: lmc.beta as f32,
            beam: lmc.beam,
            ..SearchSettings::default()
        },
        format!(
            "training split of {} and {}",
            synthetic.fortunes_dir, synthetic.words_file
        ),
    )?;
    tracing::info!(
        "language model: order {}, {} n-grams, {:.1} MB, counted in {:.1} s",
        lmc.order,
        built.info.ngrams,
        built.bytes.len() as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    Ok(Some(built))
}
