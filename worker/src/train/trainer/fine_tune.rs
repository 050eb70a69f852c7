//! Starting a trial from a trained model (`model.init_from`): fetching it, checking that this
//! config can start from it, and loading its weights.

use anyhow::{bail, Context as _, Result};
use tch::nn::VarStore;
use textrec_contract::exit::ConfigError;
use textrec_contract::manifest::ModelManifest;
use textrec_contract::TrainConfig;
use textrec_model::tensorio;
use textrec_model::Tokenizer;
use tokio::runtime::Runtime;

/// Fetch the model `model.init_from` names and check it is one this config can start from:
/// the expected version (`model.init_sha256`) and the trainer's charset. Its architecture
/// ([`ModelSpec::adopt`]) and preprocessing ([`PreprocessConfig::adopt`]) become the trial's.
///
/// [`ModelSpec::adopt`]: textrec_contract::config::ModelSpec::adopt
/// [`PreprocessConfig::adopt`]: textrec_contract::config::PreprocessConfig::adopt
pub(super) fn fetch_parent(
    rt: &Runtime,
    cfg: &TrainConfig,
    location: &str,
    tokenizer: &Tokenizer,
) -> Result<Parent> {
    let files = rt
        .block_on(crate::model_source::fetch(location))
        .with_context(|| format!("model.init_from: cannot read {location}"))?;
    let version = ModelManifest::version_of(&files.manifest_bytes);
    if let Some(want) = &cfg.model.init_sha256 {
        if !want.eq_ignore_ascii_case(&version) {
            bail!(ConfigError::new(format!(
                "initFrom.sha256 (model.init_sha256): {} has version {version}, expected {want}; \
                 the model at that location was replaced",
                files.source
            )));
        }
    }
    let m = &files.manifest;
    let arch = cfg.model.adopt(&m.architecture).map_err(|e| {
        ConfigError::new(format!(
            "{e} (model.init_from: {} has another architecture than this config's model)",
            files.source
        ))
    })?;
    if m.charset != tokenizer.charset() {
        bail!(ConfigError::new(format!(
            "model.init_from: {} reads another charset than this trainer's",
            files.source
        )));
    }
    let preprocess = cfg
        .preprocess
        .adopt(&m.preprocessing)
        .map_err(|e| ConfigError::new(format!("{e} (model.init_from: {})", files.source)))?;
    Ok(Parent {
        files,
        architecture: arch,
        preprocess,
    })
}

/// A fine-tune's parent model, and what the trial takes from it.
pub(super) struct Parent {
    pub(super) files: crate::model_source::ModelFiles,
    pub(super) architecture: textrec_contract::config::Architecture,
    /// The parent's preprocessing (or the config's, when it names the same).
    pub(super) preprocess: textrec_contract::config::PreprocessConfig,
}

/// Load the parent's weights (see [`fetch_parent`]) into `vs`.
pub(super) fn init_from(vs: &mut VarStore, files: &crate::model_source::ModelFiles) -> Result<()> {
    tensorio::load_varstore(vs, &files.weights)
        .with_context(|| format!("model.init_from: loading the weights of {}", files.source))?;
    tracing::info!(
        "starting from the weights of {} (step {} of its own training)",
        files.source,
        files.manifest.provenance.step
    );
    Ok(())
}
