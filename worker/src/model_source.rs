//! Where models come from: a model folder in storage (any object_store URL or a path), or the
//! pretrained model built into the binary.
//!
//! Every command that reads a model (`recognize`, `eval`, `serve`, and `train` when it starts from
//! one) fetches it here, so the same locations work everywhere and a model is checked the same
//! way: its manifest must parse and its weights must match the manifest's sha256
//! (`LoadedModel::from_bytes` verifies that again before loading).

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use textrec_contract::layout;
use textrec_contract::manifest::ModelManifest;
use textrec_contract::Store;
use textrec_model::LoadedModel;

/// Scheme of the models built into the binary: `builtin:NAME`.
pub const BUILTIN_SCHEME: &str = "builtin:";

/// The model `recognize` and `serve` use when no model is named: the pretrained `small` model
/// shipped in the repository's `models/small/` (see its README for how it was trained).
pub const DEFAULT_MODEL: &str = "builtin:small";

/// A built-in model: its name and its folder's files.
struct Builtin {
    name: &'static str,
    manifest: &'static [u8],
    weights: &'static [u8],
    language_model: Option<&'static [u8]>,
}

/// The models compiled into this binary.
const BUILTINS: &[Builtin] = &[Builtin {
    name: "small",
    manifest: include_bytes!("../../models/small/manifest.json"),
    weights: include_bytes!("../../models/small/model.safetensors"),
    language_model: Some(include_bytes!("../../models/small/lm.safetensors")),
}];

/// A model folder's content, fetched and checked.
#[derive(Clone)]
pub struct ModelFiles {
    /// Where it came from: `builtin:NAME` or the folder's normalized URL.
    pub source: String,
    /// The parsed manifest.
    pub manifest: ModelManifest,
    /// The manifest as stored (its hash is the model's version).
    pub manifest_bytes: Bytes,
    /// `model.safetensors`, verified against the manifest's sha256.
    pub weights: Bytes,
    /// The language model file, when the manifest names one, verified too.
    pub language_model: Option<Bytes>,
}

impl ModelFiles {
    /// Build the network on `device` and load the weights into it.
    pub fn load(&self, device: tch::Device) -> Result<LoadedModel> {
        LoadedModel::from_manifest(
            self.manifest.clone(),
            &self.manifest_bytes,
            &self.weights,
            self.language_model.as_deref(),
            device,
        )
        .with_context(|| format!("cannot load the model at {}", self.source))
    }
}

/// Names of the built-in models, as `builtin:NAME`.
pub fn builtin_names() -> Vec<String> {
    BUILTINS
        .iter()
        .map(|b| format!("{BUILTIN_SCHEME}{}", b.name))
        .collect()
}

/// Fetch the model at `location`: `builtin:NAME`, or a model folder (manifest.json +
/// model.safetensors, and the language model file the manifest names, if any) given as an
/// object_store URL or a path.
pub async fn fetch(location: &str) -> Result<ModelFiles> {
    if let Some(name) = location.strip_prefix(BUILTIN_SCHEME) {
        return builtin(name);
    }
    let store = Store::open(location).with_context(|| format!("model {location}"))?;
    // A store that cannot be read (endpoint down, no access) says so: only a manifest that is
    // really absent makes the folder "not a model".
    let manifest_bytes = store.get_opt(layout::MANIFEST).await?.ok_or_else(|| {
        anyhow!(
            "{} is not a model folder: it has no {}",
            store.url(),
            layout::MANIFEST
        )
    })?;
    // The weights are fetched only once the manifest parses, so a folder that is still being
    // written (manifest missing) or is no model at all fails fast and cheaply.
    let manifest = parse_manifest(&manifest_bytes, &store.url_of(layout::MANIFEST))?;
    let mut wanted = vec![weights_digest(&manifest, store.url())?.clone()];
    if let Some(lm) = &manifest.language_model {
        wanted.push(file_digest(&manifest, &lm.file, store.url())?.clone());
    }
    let mut files = store.read_verified("", &wanted).await?.into_iter();
    let weights = files.next().expect("one file per digest").1;
    let language_model = files.next().map(|(_, bytes)| bytes);
    Ok(ModelFiles {
        source: store.url().to_string(),
        manifest,
        manifest_bytes,
        weights,
        language_model,
    })
}

/// [`fetch`] for synchronous callers (the command-line tools).
pub fn fetch_blocking(location: &str) -> Result<ModelFiles> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(fetch(location))
}

fn builtin(name: &str) -> Result<ModelFiles> {
    let Some(b) = BUILTINS.iter().find(|b| b.name == name) else {
        bail!(textrec_contract::exit::ConfigError::new(format!(
            "no built-in model `{BUILTIN_SCHEME}{name}`; this binary has {}",
            builtin_names().join(", ")
        )));
    };
    let source = format!("{BUILTIN_SCHEME}{name}");
    let manifest = parse_manifest(b.manifest, &source)?;
    weights_digest(&manifest, &source)?
        .verify(b.weights)
        .map_err(|e| anyhow::anyhow!("{source}: {e}"))?;
    let language_model = match (&manifest.language_model, b.language_model) {
        (Some(info), Some(bytes)) => {
            file_digest(&manifest, &info.file, &source)?
                .verify(bytes)
                .map_err(|e| anyhow::anyhow!("{source}: {e}"))?;
            Some(Bytes::from_static(bytes))
        }
        (None, _) => None,
        (Some(info), None) => bail!("{source}: its language model {} is not built in", info.file),
    };
    Ok(ModelFiles {
        source,
        manifest,
        manifest_bytes: Bytes::from_static(b.manifest),
        weights: Bytes::from_static(b.weights),
        language_model,
    })
}

fn parse_manifest(bytes: &[u8], what: &str) -> Result<ModelManifest> {
    ModelManifest::parse(bytes).with_context(|| format!("{what} is not a textrec model manifest"))
}

fn weights_digest<'m>(
    manifest: &'m ModelManifest,
    what: &str,
) -> Result<&'m textrec_contract::manifest::FileDigest> {
    file_digest(manifest, layout::MODEL_WEIGHTS, what)
}

fn file_digest<'m>(
    manifest: &'m ModelManifest,
    path: &str,
    what: &str,
) -> Result<&'m textrec_contract::manifest::FileDigest> {
    manifest
        .files
        .iter()
        .find(|f| f.path == path)
        .with_context(|| format!("{what}: the manifest lists no {path}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_model_is_built_in_and_intact() {
        let files = fetch_blocking(DEFAULT_MODEL).unwrap();
        assert_eq!(files.source, DEFAULT_MODEL);
        assert_eq!(
            files.manifest.files[0].sha256,
            textrec_contract::manifest::sha256_hex(&files.weights)
        );
    }

    #[test]
    fn the_default_model_carries_its_language_model() {
        let files = fetch_blocking(DEFAULT_MODEL).unwrap();
        let info = files
            .manifest
            .language_model
            .as_ref()
            .expect("a language model");
        assert_eq!(files.manifest.decoding, textrec_contract::DecodeMode::CtcLm);
        let bytes = files.language_model.as_ref().expect("its bytes");
        assert_eq!(bytes.len() as u64, {
            let d = files
                .manifest
                .files
                .iter()
                .find(|d| d.path == info.file)
                .unwrap();
            d.bytes
        });
        let model = files.load(tch::Device::Cpu).unwrap();
        assert_eq!(
            model.language_model().unwrap().ngram.order(),
            info.order as usize
        );
    }

    #[test]
    fn a_folder_fetch_brings_and_checks_the_language_model() {
        let tmp = tempfile::tempdir().unwrap();
        let files = fetch_blocking(DEFAULT_MODEL).unwrap();
        let lm_file = files.manifest.language_model.clone().unwrap().file;
        std::fs::write(tmp.path().join(layout::MANIFEST), &files.manifest_bytes).unwrap();
        std::fs::write(tmp.path().join(layout::MODEL_WEIGHTS), &files.weights).unwrap();
        let location = tmp.path().to_str().unwrap();
        // Named by the manifest but missing: the fetch fails naming it.
        let err = format!("{:#}", fetch_blocking(location).err().unwrap());
        assert!(err.contains(&lm_file), "{err}");
        let mut lm = files.language_model.clone().unwrap().to_vec();
        std::fs::write(tmp.path().join(&lm_file), &lm).unwrap();
        let fetched = fetch_blocking(location).unwrap();
        assert_eq!(fetched.language_model.as_deref(), Some(&lm[..]));
        lm[64] ^= 1;
        std::fs::write(tmp.path().join(&lm_file), &lm).unwrap();
        let err = format!("{:#}", fetch_blocking(location).err().unwrap());
        assert!(err.contains("sha256"), "{err}");
    }

    #[test]
    fn unknown_builtin_names_the_ones_there_are() {
        let err = format!("{:#}", fetch_blocking("builtin:huge").err().unwrap());
        assert!(err.contains("no built-in model `builtin:huge`"), "{err}");
        assert!(err.contains("builtin:small"), "{err}");
    }

    #[test]
    fn a_folder_without_manifest_is_not_a_model() {
        let tmp = tempfile::tempdir().unwrap();
        let err = format!(
            "{:#}",
            fetch_blocking(tmp.path().to_str().unwrap()).err().unwrap()
        );
        assert!(err.contains("is not a model folder"), "{err}");
    }

    #[test]
    fn tampered_weights_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let files = fetch_blocking(DEFAULT_MODEL).unwrap();
        std::fs::write(tmp.path().join(layout::MANIFEST), &files.manifest_bytes).unwrap();
        let mut weights = files.weights.to_vec();
        weights[100] ^= 1;
        std::fs::write(tmp.path().join(layout::MODEL_WEIGHTS), weights).unwrap();
        let err = format!(
            "{:#}",
            fetch_blocking(tmp.path().to_str().unwrap()).err().unwrap()
        );
        assert!(err.contains("sha256"), "{err}");
    }
}
