//! A trained model folder (`manifest.json` + `model.safetensors`) loaded for recognition.
//!
//! Loading verifies the weights against the manifest's sha256 before anything else reads them,
//! builds the network from the manifest's architecture and charset, and refuses weights that do
//! not fit it exactly. The loaded model is `Send + Sync`: a server shares one in an `Arc`.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{anyhow, bail, Context, Result};
use image::GrayImage;
use tch::{nn, Device, Kind};
use textrec_contract::layout;
use textrec_contract::manifest::{FileDigest, ModelManifest, Provenance, MODEL_FORMAT};
use textrec_contract::{Architecture, PreprocessConfig};

use crate::batching::{plan_batches, BatchLimits};
use crate::lm::LanguageModel;
use crate::net::{DecodeMode, Recognizer, HEIGHT_STRIDE, WIDTH_STRIDE};
use crate::precision::ReadingPrecision;
use crate::prediction::Prediction;
use crate::preprocess::{self, PreparedImage};
use crate::tensorio;
use crate::tokenizer::Tokenizer;
use crate::widths::{PreparedLine, Readings, WidthReadings};

/// `Recognizer` holds `tch::Tensor`s, which are `Send` but not `Sync`, so this wrapper asserts
/// `Sync` for the one use that needs it: sharing a loaded network between inference threads.
struct SharedNet(Recognizer);

// SAFETY: through `&Recognizer`, tensors are only ever inputs of libtorch operators that
// allocate new outputs; libtorch supports concurrent read-only use of the same tensors from
// many threads (refcounts are atomic, and PyTorch itself serves one module from many threads).
// The two ways a shared forward could write to a parameter are excluded here: the network is
// marked inference-only, so a training-mode forward (which updates BatchNorm's running
// statistics in place) panics instead of racing, and the variables are frozen
// (`requires_grad = false`) so no autograd metadata is attached to them.
unsafe impl Sync for SharedNet {}

/// A model folder loaded for inference.
pub struct LoadedModel {
    /// The parsed manifest.
    pub manifest: ModelManifest,
    /// The model version: sha256 (hex) of the manifest bytes as stored.
    pub version: String,
    tokenizer: Tokenizer,
    net: SharedNet,
    // Owns the parameters the network's layers point at; kept for the model's lifetime (and
    // read by `set_precision`, which converts the encoder's).
    vs: nn::VarStore,
    device: Device,
    batch_limits: BatchLimits,
    decode_mode: DecodeMode,
    widths: WidthReadings,
    lines_read: AtomicU64,
    lines_reread: AtomicU64,
    language_model: Option<LanguageModel>,
}

impl std::fmt::Debug for LoadedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModel")
            .field("version", &self.version)
            .field("architecture", &self.manifest.architecture)
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

/// Check that `pre` produces inputs the encoder's strides can mask exactly.
fn check_preprocess(pre: &PreprocessConfig) -> Result<()> {
    if pre.height == 0 || i64::from(pre.height) % HEIGHT_STRIDE != 0 {
        bail!(
            "preprocessing.height {} must be a positive multiple of {HEIGHT_STRIDE}",
            pre.height
        );
    }
    if pre.width_multiple == 0 || i64::from(pre.width_multiple) % WIDTH_STRIDE != 0 {
        bail!(
            "preprocessing.width_multiple {} must be a multiple of the encoder's horizontal stride {WIDTH_STRIDE}",
            pre.width_multiple
        );
    }
    Ok(())
}

impl LoadedModel {
    /// Parse the manifest (format `textrec.model/v1`), verify `weights` against its sha256 of
    /// `model.safetensors`, build the network and load the weights onto `device`. For folders
    /// without a language model; [`LoadedModel::from_manifest`] takes one.
    pub fn from_bytes(manifest_bytes: &[u8], weights: &[u8], device: Device) -> Result<Self> {
        let manifest = ModelManifest::parse(manifest_bytes)?;
        Self::from_manifest(manifest, manifest_bytes, weights, None, device)
    }

    /// [`LoadedModel::from_bytes`] for a manifest the caller has parsed already:
    /// `manifest_bytes` is what it was parsed from (its hash is the model's version).
    /// `language_model` is the file the manifest's `language_model` names (required when it
    /// names one), checked against its digest too.
    pub fn from_manifest(
        manifest: ModelManifest,
        manifest_bytes: &[u8],
        weights: &[u8],
        language_model: Option<&[u8]>,
        device: Device,
    ) -> Result<Self> {
        verify_file(&manifest, layout::MODEL_WEIGHTS, weights)
            .map_err(|e| anyhow!("weights do not match the manifest's sha256 digest: {e}"))?;
        let language_model = match (&manifest.language_model, language_model) {
            (Some(info), Some(bytes)) => {
                verify_file(&manifest, &info.file, bytes).map_err(|e| {
                    anyhow!("the language model does not match the manifest's sha256 digest: {e}")
                })?;
                Some(LanguageModel::load(info, bytes, &manifest.charset)?)
            }
            (Some(info), None) => bail!(
                "the manifest names a language model ({}) but it was not loaded",
                info.file
            ),
            (None, Some(_)) => bail!("a language model was given but the manifest names none"),
            (None, None) => None,
        };
        if manifest.decoding == DecodeMode::CtcLm && language_model.is_none() {
            bail!("the manifest decodes with `ctc-lm` but names no language model");
        }

        let arch = &manifest.architecture;
        arch.validate().context("manifest architecture")?;
        check_preprocess(&manifest.preprocessing)?;
        let widths = match &manifest.reading {
            Some(r) => WidthReadings::from_settings(r).context("manifest `reading`")?,
            None => WidthReadings::default(),
        };
        let tokenizer = Tokenizer::new(&manifest.charset);
        if tokenizer.vocab_size() <= Tokenizer::EOS + 1 {
            bail!("manifest charset is empty");
        }

        let mut vs = nn::VarStore::new(device);
        // Building the network draws its (soon overwritten) initial weights from torch's global
        // generator; holding the lock keeps those draws out of a seeded sequence that another
        // thread of this process may be in the middle of.
        let mut net = {
            let _rng = crate::net::global_rng_lock();
            Recognizer::new(&vs.root(), arch, tokenizer.vocab_size())
        };
        tensorio::load_varstore(&mut vs, weights)
            .with_context(|| format!("loading {}", layout::MODEL_WEIGHTS))?;
        vs.freeze();
        net.set_inference_only();
        let version = ModelManifest::version_of(manifest_bytes);
        Ok(Self {
            decode_mode: manifest.decoding,
            manifest,
            version,
            tokenizer,
            net: SharedNet(net),
            vs,
            device,
            batch_limits: BatchLimits::for_device(device),
            widths,
            lines_read: AtomicU64::new(0),
            lines_reread: AtomicU64::new(0),
            language_model,
        })
    }

    /// Load `dir/manifest.json`, `dir/model.safetensors` and the language model when the
    /// manifest names one.
    pub fn load_dir(dir: &Path, device: Device) -> Result<Self> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))
        };
        let manifest_bytes = read(layout::MANIFEST)?;
        let weights = read(layout::MODEL_WEIGHTS)?;
        let load = || {
            let manifest = ModelManifest::parse(&manifest_bytes)?;
            let lm = match &manifest.language_model {
                Some(info) => Some(read(&info.file)?),
                None => None,
            };
            Self::from_manifest(manifest, &manifest_bytes, &weights, lm.as_deref(), device)
        };
        load().with_context(|| format!("model folder {}", dir.display()))
    }

    /// The language model `ctc-lm` decoding uses, when the model has one.
    pub fn language_model(&self) -> Option<&LanguageModel> {
        self.language_model.as_ref()
    }

    /// Change how the beam search weighs the language model (for tuning; the manifest's
    /// values are the defaults). An error when the model has none.
    pub fn set_search(&mut self, settings: crate::lm::SearchSettings) -> Result<()> {
        let lm = self
            .language_model
            .as_mut()
            .ok_or_else(|| anyhow!("this model has no language model to weigh"))?;
        lm.settings = settings;
        Ok(())
    }

    /// The tokenizer of the model's charset.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The preprocessing the model was trained with.
    pub fn preprocess(&self) -> &PreprocessConfig {
        &self.manifest.preprocessing
    }

    /// The network (inference only: a training-mode forward panics).
    pub fn net(&self) -> &Recognizer {
        &self.net.0
    }

    /// Where the weights live.
    pub fn device(&self) -> Device {
        self.device
    }

    /// How [`LoadedModel::recognize_prepared`] splits its input into forward passes.
    pub fn batch_limits(&self) -> BatchLimits {
        self.batch_limits
    }

    /// Change how inputs are split into forward passes (the default suits the device).
    pub fn set_batch_limits(&mut self, limits: BatchLimits) {
        self.batch_limits = limits;
    }

    /// How lines are read (the manifest's `decoding` unless changed).
    pub fn decode_mode(&self) -> DecodeMode {
        self.decode_mode
    }

    /// Read lines with `mode` from now on. `ctc-lm` needs a model with a language model.
    pub fn set_decode_mode(&mut self, mode: DecodeMode) -> Result<()> {
        if mode == DecodeMode::CtcLm && self.language_model.is_none() {
            bail!("`ctc-lm` decoding needs a language model, and this model has none");
        }
        self.decode_mode = mode;
        Ok(())
    }

    /// At which widths lines are read (the manifest's `reading` unless changed; once, as they
    /// are, when it has none).
    pub fn widths(&self) -> &WidthReadings {
        &self.widths
    }

    /// Read every line at these widths from now on, keeping the most confident reading.
    pub fn set_widths(&mut self, widths: WidthReadings) {
        self.widths = widths;
    }

    /// The type the encoder reads in: `"fp32"` unless [`LoadedModel::set_precision`] chose
    /// bf16.
    pub fn precision(&self) -> &'static str {
        crate::precision::kind_name(self.net.0.encoder_kind())
    }

    /// Read with the encoder in `precision` from now on (see [`crate::precision`]). Converting
    /// the weights to bf16 rounds them, so a model read in bf16 cannot go back to fp32: that
    /// is an error (load it again); asking for the type it already has is not.
    pub fn set_precision(&mut self, precision: ReadingPrecision) -> Result<()> {
        let kind = precision.kind_on(self.device);
        let current = self.net.0.encoder_kind();
        if kind == current {
            return Ok(());
        }
        if current != Kind::Float {
            bail!(
                "this model's encoder already reads in {}; load it again to read in {}",
                crate::precision::kind_name(current),
                crate::precision::kind_name(kind)
            );
        }
        self.net.0.set_encoder_kind(&self.vs, kind);
        Ok(())
    }

    /// Preprocess, batch and recognize lines; one prediction per image, in order.
    pub fn recognize(&self, images: &[GrayImage]) -> Result<Vec<Prediction>> {
        let (pre, factors) = (self.preprocess(), self.widths.factors());
        let line_at = |i: usize, k: usize| {
            preprocess::prepare_stretched(&images[i], pre, factors[k])
                .map(Cow::Owned)
                .with_context(|| format!("image {i}"))
        };
        let readings = self
            .widths
            .read(images.len(), line_at, |lines| self.read_in_passes(lines))?;
        self.count(&readings);
        Ok(readings.predictions)
    }

    /// Recognize already prepared lines, each read once as it is (not at the model's
    /// [`LoadedModel::widths`]: see [`LoadedModel::recognize_lines`]); one prediction per
    /// image, in order.
    pub fn recognize_prepared(&self, images: &[PreparedImage]) -> Result<Vec<Prediction>> {
        self.check_prepared(images)?;
        Ok(self.read_in_passes(&images.iter().collect::<Vec<_>>()))
    }

    /// Recognize prepared lines in exactly one forward pass, however many and however wide:
    /// for callers that plan their own passes.
    pub fn recognize_pass(&self, images: &[PreparedImage]) -> Result<Vec<Prediction>> {
        self.check_prepared(images)?;
        Ok(self.forward_pass(&images.iter().collect::<Vec<_>>()))
    }

    /// `image` prepared at each of the model's widths, for [`LoadedModel::recognize_lines`].
    pub fn prepare_line(&self, image: &GrayImage) -> Result<PreparedLine> {
        self.widths.prepare(image, self.preprocess())
    }

    /// Recognize lines prepared at the model's widths ([`LoadedModel::prepare_line`]) in one
    /// forward pass, for callers that plan their own passes (the server's batcher); when lines
    /// are read at several widths, the doubtful lines are then read at the others in passes
    /// within the model's [`BatchLimits`]. Keeps each line's most confident reading and says
    /// how many lines were read again.
    pub fn recognize_lines(&self, lines: &[PreparedLine]) -> Result<Readings> {
        let count = self.widths.factors().len();
        for (i, line) in lines.iter().enumerate() {
            if line.widths().len() != count {
                bail!(
                    "line {i}: prepared at {} widths; the model reads at {count}",
                    line.widths().len()
                );
            }
            self.check_prepared(line.widths())
                .with_context(|| format!("line {i}"))?;
        }
        let line_at = |i: usize, k: usize| Ok(Cow::Borrowed(&lines[i].widths()[k]));
        // The first width as the caller planned it; the re-reads (up to one line per further
        // width for each doubtful line, often wider) split by the model's own limits, so one
        // pass stays as small as the caller's.
        let mut first_pass = true;
        let read = |batch: &[&PreparedImage]| {
            if std::mem::take(&mut first_pass) {
                self.forward_pass(batch)
            } else {
                self.read_in_passes(batch)
            }
        };
        let readings = self.widths.read(lines.len(), line_at, read)?;
        self.count(&readings);
        Ok(readings)
    }

    /// Lines read by [`LoadedModel::recognize`] and [`LoadedModel::recognize_lines`] so far,
    /// and how many of them were read again at further widths.
    pub fn reading_counts(&self) -> (u64, u64) {
        (
            self.lines_read.load(Ordering::Relaxed),
            self.lines_reread.load(Ordering::Relaxed),
        )
    }

    fn count(&self, readings: &Readings) {
        let n = readings.predictions.len() as u64;
        self.lines_read.fetch_add(n, Ordering::Relaxed);
        self.lines_reread
            .fetch_add(readings.reread as u64, Ordering::Relaxed);
    }

    /// `images` split into forward passes by the model's batch limits.
    fn read_in_passes(&self, images: &[&PreparedImage]) -> Vec<Prediction> {
        let widths: Vec<u32> = images.iter().map(|im| im.width).collect();
        let mut out: Vec<Option<Prediction>> = vec![None; images.len()];
        for pass in plan_batches(&widths, self.batch_limits) {
            let chunk: Vec<&PreparedImage> = pass.iter().map(|&i| images[i]).collect();
            for (&i, prediction) in pass.iter().zip(self.forward_pass(&chunk)) {
                out[i] = Some(prediction);
            }
        }
        out.into_iter()
            .map(|p| p.expect("every image is in exactly one pass"))
            .collect()
    }

    fn check_prepared(&self, images: &[PreparedImage]) -> Result<()> {
        let pre = self.preprocess();
        for (i, im) in images.iter().enumerate() {
            if im.height != pre.height
                || im.width == 0
                || im.data.len() != (im.height * im.width) as usize
            {
                bail!(
                    "image {i}: prepared as {}x{} with {} values; the model takes height {}",
                    im.width,
                    im.height,
                    im.data.len(),
                    pre.height
                );
            }
        }
        Ok(())
    }

    fn forward_pass(&self, images: &[&PreparedImage]) -> Vec<Prediction> {
        if images.is_empty() {
            return Vec::new();
        }
        let max_len = self.manifest.architecture.max_text_len;
        let (batch, widths) = preprocess::collate_refs(images, self.preprocess(), self.device);
        let decoded = tch::no_grad(|| {
            self.net().decode(
                &batch,
                &widths,
                max_len,
                self.decode_mode,
                self.language_model.as_ref(),
            )
        });
        (0..images.len())
            .map(|k| {
                let probs = &decoded.probs[k];
                Prediction {
                    text: self.tokenizer.decode(&decoded.tokens[k]),
                    confidence: decoded.confidence(k),
                    char_confidences: probs.clone(),
                }
            })
            .collect()
    }
}

/// Check `content` against the digest the manifest lists for `path`.
fn verify_file(manifest: &ModelManifest, path: &str, content: &[u8]) -> Result<()> {
    let digest = manifest
        .files
        .iter()
        .find(|f| f.path == path)
        .ok_or_else(|| anyhow!("manifest lists no `{path}`"))?;
    digest.verify(content).map_err(|e| anyhow!(e))
}

/// The two files of a model folder, as the trainer writes them.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    /// `model.safetensors`.
    pub weights: Vec<u8>,
    /// `manifest.json` (pretty JSON), listing the weights' sha256. Write it last.
    pub manifest: Vec<u8>,
}

/// Serialize the variables of `vs` and a `textrec.model/v1` manifest describing them.
pub fn model_files(
    vs: &nn::VarStore,
    architecture: &Architecture,
    preprocessing: &PreprocessConfig,
    charset: &str,
    metrics: BTreeMap<String, f64>,
    provenance: Provenance,
) -> Result<ModelFiles> {
    let weights = tensorio::save_varstore(vs)?;
    let manifest = ModelManifest {
        format: MODEL_FORMAT.to_string(),
        created: chrono::Utc::now(),
        architecture: architecture.clone(),
        charset: charset.to_string(),
        preprocessing: preprocessing.clone(),
        metrics,
        decoding: Default::default(),
        language_model: None,
        reading: None,
        provenance,
        files: vec![FileDigest::of(layout::MODEL_WEIGHTS, &weights)],
    };
    Ok(ModelFiles {
        manifest: serde_json::to_vec_pretty(&manifest)?,
        weights,
    })
}

/// For tests and demos: write a model folder with random weights (seeded by `seed`) to `dir`,
/// in exactly the format the trainer writes, so that loading and serving can be exercised
/// without training. It recognizes nothing useful. The weights are the same for the same seed
/// as long as no other thread draws from torch's global generator without holding
/// [`crate::net::global_rng_lock`].
pub fn write_random_model_dir(
    dir: &Path,
    arch: &Architecture,
    preprocess: &PreprocessConfig,
    charset: &str,
    seed: i64,
) -> Result<()> {
    arch.validate()?;
    check_preprocess(preprocess)?;
    let tokenizer = Tokenizer::new(charset);
    if tokenizer.vocab_size() <= Tokenizer::EOS + 1 {
        bail!("charset is empty");
    }
    let vs = nn::VarStore::new(Device::Cpu);
    {
        let _rng = crate::net::global_rng_lock();
        tch::manual_seed(seed);
        let _net = Recognizer::new(&vs.root(), arch, tokenizer.vocab_size());
    }
    let provenance = Provenance {
        run: None,
        trial: None,
        step: 0,
        textrec_version: env!("CARGO_PKG_VERSION").to_string(),
        config: serde_json::Value::Null,
        parent: None,
    };
    let files = model_files(&vs, arch, preprocess, charset, BTreeMap::new(), provenance)?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.join(name);
        std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))
    };
    write(layout::MODEL_WEIGHTS, &files.weights)?;
    write(layout::MANIFEST, &files.manifest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::Decoded;
    use textrec_contract::Preset;

    const CHARSET: &str = "abcdefghij";

    fn write_tiny(dir: &Path) {
        write_random_model_dir(
            dir,
            &Preset::Tiny.architecture(),
            &PreprocessConfig::default(),
            CHARSET,
            11,
        )
        .unwrap();
    }

    fn line(w: u32) -> GrayImage {
        GrayImage::from_fn(w, 20, |x, y| {
            image::Luma([if (x / 3 + y / 4) % 3 == 0 { 20 } else { 235 }])
        })
    }

    #[test]
    fn loaded_model_is_send_and_sync() {
        fn shareable<T: Send + Sync>() {}
        shareable::<LoadedModel>();
        shareable::<std::sync::Arc<LoadedModel>>();
    }

    #[test]
    fn random_model_folder_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        write_tiny(dir.path());
        let model = LoadedModel::load_dir(dir.path(), Device::Cpu).unwrap();
        let manifest = std::fs::read(dir.path().join(layout::MANIFEST)).unwrap();
        assert_eq!(model.version, ModelManifest::version_of(&manifest));
        assert_eq!(model.manifest.charset, CHARSET);
        assert_eq!(model.tokenizer().vocab_size(), 13);

        let preds = model.recognize(&[line(90), line(40)]).unwrap();
        assert_eq!(preds.len(), 2);
        for p in &preds {
            assert_eq!(p.text.chars().count(), p.char_confidences.len());
            assert!(p.text.chars().all(|c| CHARSET.contains(c)));
            assert!(
                p.confidence > 0.0 && p.confidence <= 1.0,
                "{}",
                p.confidence
            );
        }
        // Batching does not change a line's reading.
        let alone = model.recognize(&[line(40)]).unwrap();
        assert_eq!(alone[0].text, preds[1].text);
        assert!((alone[0].confidence - preds[1].confidence).abs() < 1e-4);
        assert!(model.recognize(&[]).unwrap().is_empty());

        // The same seed gives the same weights, bit for bit.
        let again = tempfile::tempdir().unwrap();
        write_tiny(again.path());
        let w = |d: &Path| std::fs::read(d.join(layout::MODEL_WEIGHTS)).unwrap();
        assert_eq!(w(dir.path()), w(again.path()));
    }

    #[test]
    fn an_encoder_read_in_bf16_gives_nearly_the_fp32_outputs_and_cannot_go_back() {
        use crate::precision::ReadingPrecision;
        use tch::{Kind, Tensor};

        let dir = tempfile::tempdir().unwrap();
        write_tiny(dir.path());
        let exact = LoadedModel::load_dir(dir.path(), Device::Cpu).unwrap();
        let mut half = LoadedModel::load_dir(dir.path(), Device::Cpu).unwrap();
        assert_eq!(half.precision(), "fp32");
        half.set_precision(ReadingPrecision::Fp32).unwrap();
        half.set_precision(ReadingPrecision::Bf16).unwrap();
        assert_eq!(half.precision(), "bf16");
        // Only the encoder's weights changed type.
        for (name, var) in half.vs.variables() {
            let expected = if name.starts_with("encoder.") {
                Kind::BFloat16
            } else {
                Kind::Float
            };
            assert_eq!(var.kind(), expected, "{name}");
        }

        let images = Tensor::rand([2, 1, 32, 64], (Kind::Float, Device::Cpu));
        let widths = Tensor::from_slice(&[64i64, 40]);
        let bos = Tokenizer::BOS;
        let tgt_in = Tensor::from_slice(&[bos, 4, 5, bos, 6, 7]).view([2, 3]);
        let run =
            |m: &LoadedModel| tch::no_grad(|| m.net().forward_t(&images, &widths, &tgt_in, false));
        let (a, b) = (run(&exact), run(&half));
        assert_eq!(b.logits.kind(), Kind::Float);
        for (x, y) in [
            (&a.logits, &b.logits),
            (
                a.ctc_log_probs.as_ref().unwrap(),
                b.ctc_log_probs.as_ref().unwrap(),
            ),
        ] {
            let scale = x.abs().max().double_value(&[]);
            let diff = (x - y).abs().max().double_value(&[]);
            assert!(
                diff > 0.0,
                "bf16 changed nothing: was the encoder converted?"
            );
            assert!(
                diff < 0.05 * scale,
                "bf16 moved outputs by {diff} (scale {scale})"
            );
        }
        // The whole reading path runs with it (preprocessing, batching, decoding).
        let read = half.recognize(&[line(90), line(40)]).unwrap();
        assert_eq!(read.len(), 2);
        assert!(read
            .iter()
            .all(|p| p.confidence > 0.0 && p.confidence <= 1.0));

        // Rounded weights cannot give the fp32 readings back.
        half.set_precision(ReadingPrecision::Bf16).unwrap();
        let err = half.set_precision(ReadingPrecision::Fp32).unwrap_err();
        assert!(err.to_string().contains("load it again"), "{err}");
    }

    #[test]
    fn a_language_model_travels_with_its_folder_and_is_checked() {
        use crate::lm::{self, CharNgram, NgramSpec};
        use textrec_contract::manifest::LanguageModelInfo;

        let dir = tempfile::tempdir().unwrap();
        write_tiny(dir.path());
        let mut plain = LoadedModel::load_dir(dir.path(), Device::Cpu).unwrap();
        assert!(plain.language_model().is_none());
        let err = plain.set_decode_mode(DecodeMode::CtcLm).unwrap_err();
        assert!(format!("{err}").contains("needs a language model"), "{err}");

        let ngram = CharNgram::count(
            ["abc abc", "bad cab", "jig fig"],
            CHARSET,
            NgramSpec {
                order: 3,
                min_count: 1,
            },
        );
        // The tiny charset has no space: the text must fit the model's charset.
        assert!(ngram.is_err());
        let ngram = CharNgram::count(
            ["abcabc", "badcab", "jighij"],
            CHARSET,
            NgramSpec {
                order: 3,
                min_count: 1,
            },
        )
        .unwrap();
        let bytes = ngram.to_bytes().unwrap();
        let manifest_path = dir.path().join(layout::MANIFEST);
        let mut manifest = ModelManifest::parse(&std::fs::read(&manifest_path).unwrap()).unwrap();
        lm::attach(
            &mut manifest,
            &bytes,
            LanguageModelInfo {
                file: lm::LM_FILE.into(),
                order: 3,
                min_count: 1,
                ngrams: ngram.ngrams(),
                source: "test lines".into(),
                alpha: 0.5,
                beta: 0.5,
                beam: 4,
                unsure_lines: None,
            },
        );
        manifest.decoding = DecodeMode::CtcLm;
        std::fs::write(dir.path().join(lm::LM_FILE), &bytes).unwrap();
        std::fs::write(&manifest_path, serde_json::to_vec(&manifest).unwrap()).unwrap();

        let model = LoadedModel::load_dir(dir.path(), Device::Cpu).unwrap();
        assert_eq!(model.decode_mode(), DecodeMode::CtcLm);
        assert_eq!(model.language_model().unwrap().settings.beam, 4);
        let preds = model.recognize(&[line(90), line(40)]).unwrap();
        for p in &preds {
            assert_eq!(p.text.chars().count(), p.char_confidences.len());
            assert!(p.text.chars().count() <= 90 / 4, "{}", p.text);
        }

        // A changed language model file, or none at all, does not load.
        let mut tampered = bytes.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        std::fs::write(dir.path().join(lm::LM_FILE), &tampered).unwrap();
        let err = format!(
            "{:#}",
            LoadedModel::load_dir(dir.path(), Device::Cpu).unwrap_err()
        );
        assert!(err.contains("language model does not match"), "{err}");
        std::fs::remove_file(dir.path().join(lm::LM_FILE)).unwrap();
        let err = format!(
            "{:#}",
            LoadedModel::load_dir(dir.path(), Device::Cpu).unwrap_err()
        );
        assert!(
            err.contains("cannot read") && err.contains(lm::LM_FILE),
            "{err}"
        );
        // Nor does a manifest that reads with `ctc-lm` but names no language model.
        manifest.language_model = None;
        std::fs::write(&manifest_path, serde_json::to_vec(&manifest).unwrap()).unwrap();
        let err = format!(
            "{:#}",
            LoadedModel::load_dir(dir.path(), Device::Cpu).unwrap_err()
        );
        assert!(err.contains("names no language model"), "{err}");
    }

    #[test]
    fn split_passes_answer_in_input_order_as_one_pass_would() {
        let dir = tempfile::tempdir().unwrap();
        write_tiny(dir.path());
        let mut model = LoadedModel::load_dir(dir.path(), Device::Cpu).unwrap();
        let lines: Vec<_> = [120, 30, 64, 200, 31, 90].map(line).to_vec();
        model.set_batch_limits(BatchLimits {
            max_images: 64,
            max_columns: usize::MAX,
            pass_cost_columns: BatchLimits::GPU_PASS_COST,
        });
        let together = model.recognize(&lines).unwrap();
        model.set_batch_limits(BatchLimits {
            max_images: 2,
            max_columns: 150,
            pass_cost_columns: BatchLimits::CPU_PASS_COST,
        });
        let split = model.recognize(&lines).unwrap();
        for (i, (a, b)) in together.iter().zip(&split).enumerate() {
            assert_eq!(a.text, b.text, "line {i}");
            assert!((a.confidence - b.confidence).abs() < 1e-4, "line {i}");
        }
        assert!(
            split.iter().any(|p| p.text != split[0].text),
            "the lines must read differently for the order to be checked"
        );
        // One pass of everything, whatever the limits, reads the same too.
        let prepared: Vec<_> = lines
            .iter()
            .map(|l| preprocess::prepare(l, model.preprocess()).unwrap())
            .collect();
        let one_pass = model.recognize_pass(&prepared).unwrap();
        for (a, b) in one_pass.iter().zip(&split) {
            assert_eq!(a.text, b.text);
        }
        // Each line alone reads the same too, so the order was kept.
        for (i, l) in lines.iter().enumerate() {
            assert_eq!(
                model.recognize(std::slice::from_ref(l)).unwrap()[0].text,
                split[i].text
            );
        }
    }

    #[test]
    fn reading_at_several_widths_keeps_each_lines_most_confident_reading() {
        let dir = tempfile::tempdir().unwrap();
        write_tiny(dir.path());
        let mut model = LoadedModel::load_dir(dir.path(), Device::Cpu).unwrap();
        let lines: Vec<_> = [120, 30, 64, 200].map(line).to_vec();
        let factors = [1.0f32, 0.7, 1.5];
        // Each width read on its own.
        let alone: Vec<Vec<Prediction>> = factors
            .iter()
            .map(|&f| {
                model.set_widths(WidthReadings::new(vec![f], None).unwrap());
                model.recognize(&lines).unwrap()
            })
            .collect();
        model.set_widths(WidthReadings::new(factors.to_vec(), None).unwrap());
        let prepared: Vec<_> = lines
            .iter()
            .map(|l| model.prepare_line(l).unwrap())
            .collect();
        for kept in [
            model.recognize(&lines).unwrap(),
            model.recognize_lines(&prepared).unwrap().predictions,
        ] {
            for (i, p) in kept.iter().enumerate() {
                let best = alone
                    .iter()
                    .map(|a| a[i].confidence)
                    .fold(f32::MIN, f32::max);
                assert!((p.confidence - best).abs() < 1e-4, "line {i}");
                assert!(alone.iter().any(|a| a[i].text == p.text), "line {i}");
            }
        }
        assert!(
            (0..lines.len()).any(|i| alone[0][i].confidence < alone[1][i].confidence
                || alone[0][i].confidence < alone[2][i].confidence),
            "some line must read better stretched for the choice to be checked"
        );
        // Every line was doubtful (no threshold): 4 lines in each of the two readings.
        assert_eq!(model.reading_counts().1, 8);
        // Lines prepared for other widths are refused, not misread.
        model.set_widths(WidthReadings::default());
        let err = model.recognize_lines(&prepared).unwrap_err().to_string();
        assert!(
            err.contains("prepared at 3 widths; the model reads at 1"),
            "{err}"
        );
    }

    #[test]
    fn the_manifest_chooses_how_the_model_reads() {
        let dir = tempfile::tempdir().unwrap();
        write_tiny(dir.path());
        let m = LoadedModel::load_dir(dir.path(), Device::Cpu).unwrap();
        assert_eq!(m.decode_mode(), DecodeMode::Joint);
        let path = dir.path().join(layout::MANIFEST);
        let mut manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        manifest["decoding"] = serde_json::json!("ctc");
        std::fs::write(&path, serde_json::to_vec(&manifest).unwrap()).unwrap();
        let mut m = LoadedModel::load_dir(dir.path(), Device::Cpu).unwrap();
        assert_eq!(m.decode_mode(), DecodeMode::Ctc);
        // A manifest written before the field existed reads jointly.
        manifest.as_object_mut().unwrap().remove("decoding");
        std::fs::write(&path, serde_json::to_vec(&manifest).unwrap()).unwrap();
        assert_eq!(
            LoadedModel::load_dir(dir.path(), Device::Cpu)
                .unwrap()
                .decode_mode(),
            DecodeMode::Joint
        );
        m.set_decode_mode(DecodeMode::Attention).unwrap();
        assert_eq!(m.decode_mode(), DecodeMode::Attention);
    }

    #[test]
    fn a_model_trained_wider_reads_every_line_at_its_stretch() {
        let dir = tempfile::tempdir().unwrap();
        write_tiny(dir.path());
        let mut plain = LoadedModel::load_dir(dir.path(), Device::Cpu).unwrap();
        let path = dir.path().join(layout::MANIFEST);
        let mut manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        manifest["preprocessing"]["stretch"] = serde_json::json!(1.5);
        std::fs::write(&path, serde_json::to_vec(&manifest).unwrap()).unwrap();
        let wide = LoadedModel::load_dir(dir.path(), Device::Cpu).unwrap();
        let lines: Vec<_> = [120, 30, 64].map(line).to_vec();
        let read = |m: &LoadedModel| -> Vec<(String, f32)> {
            m.recognize(&lines)
                .unwrap()
                .into_iter()
                .map(|p| (p.text, p.confidence))
                .collect()
        };
        let at_stretch = read(&wide);
        assert_ne!(at_stretch, read(&plain), "the stretch was not applied");
        // The same as a plain model told to read at x1.5; a reading width multiplies it.
        plain.set_widths(WidthReadings::new(vec![1.5], None).unwrap());
        assert_eq!(at_stretch, read(&plain));
        let p = wide.prepare_line(&line(64)).unwrap();
        // 64 pixels at height 20 are 102.4 at height 32, and 154 stretched by 1.5.
        assert_eq!(p.first().width, 154);
    }

    #[test]
    fn the_manifest_chooses_the_reading_width() {
        let dir = tempfile::tempdir().unwrap();
        write_tiny(dir.path());
        let plain = LoadedModel::load_dir(dir.path(), Device::Cpu).unwrap();
        assert!(plain.widths().is_single());
        let path = dir.path().join(layout::MANIFEST);
        let mut manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let mut with = |reading: serde_json::Value| {
            manifest["reading"] = reading;
            std::fs::write(&path, serde_json::to_vec(&manifest).unwrap()).unwrap();
            LoadedModel::load_dir(dir.path(), Device::Cpu)
        };
        let wide = with(serde_json::json!({"widths": [1.5]})).unwrap();
        assert_eq!(wide.widths().factors(), [1.5]);
        // It reads exactly as told to read at that width, and not as drawn.
        let lines: Vec<_> = [120, 30, 64].map(line).to_vec();
        let mut told = LoadedModel::load_dir(dir.path(), Device::Cpu).unwrap();
        told.set_widths(WidthReadings::new(vec![1.5], None).unwrap());
        let (a, b) = (
            wide.recognize(&lines).unwrap(),
            told.recognize(&lines).unwrap(),
        );
        for (a, b) in a.iter().zip(&b) {
            assert_eq!((&a.text, a.confidence), (&b.text, b.confidence));
        }
        let drawn = plain.recognize(&lines).unwrap();
        assert!(
            a.iter()
                .zip(&drawn)
                .any(|(a, d)| a.confidence != d.confidence),
            "the manifest's width was not used"
        );
        let several = with(serde_json::json!({"widths": [1, 1.25], "reread_below": 0.5})).unwrap();
        assert_eq!(
            several.widths(),
            &WidthReadings::new(vec![1.0, 1.25], Some(0.5)).unwrap()
        );
        // A reading the model cannot use is refused when loading, with the reason.
        for (bad, why) in [
            (serde_json::json!({"widths": [9]}), "outside"),
            (serde_json::json!({"widths": []}), "no width given"),
            (
                serde_json::json!({"widths": [1], "stretch": 2}),
                "unknown field",
            ),
        ] {
            let err = match with(bad.clone()) {
                Ok(_) => panic!("{bad} was accepted"),
                Err(e) => format!("{e:#}"),
            };
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn tampered_or_mismatched_folders_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        write_tiny(dir.path());
        let manifest = std::fs::read(dir.path().join(layout::MANIFEST)).unwrap();
        let weights = std::fs::read(dir.path().join(layout::MODEL_WEIGHTS)).unwrap();
        let err = |m: &[u8], w: &[u8]| {
            format!(
                "{:#}",
                LoadedModel::from_bytes(m, w, Device::Cpu).unwrap_err()
            )
        };

        let mut tampered = weights.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(err(&manifest, &tampered).contains("sha256"));
        assert!(err(&manifest, &weights[..weights.len() - 4]).contains("sha256"));
        assert!(err(b"{not json", &weights).contains("not valid JSON"));

        let mut m: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
        m["format"] = "textrec.model/v0".into();
        assert!(
            err(&serde_json::to_vec(&m).unwrap(), &weights).contains("expected `textrec.model/v1`")
        );

        // A manifest whose architecture disagrees with the (authentic) weights.
        let mut m: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
        m["architecture"]["d_model"] = 64.into();
        m["architecture"]["ff_dim"] = 64.into();
        let msg = err(&serde_json::to_vec(&m).unwrap(), &weights);
        assert!(
            msg.contains("shape") && msg.contains("decoder.embed"),
            "{msg}"
        );
    }

    #[test]
    fn bad_prepared_input_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        write_tiny(dir.path());
        let model = LoadedModel::load_dir(dir.path(), Device::Cpu).unwrap();
        let wrong = PreparedImage {
            data: vec![0.0; 16 * 8],
            height: 16,
            width: 8,
        };
        assert!(model.recognize_prepared(&[wrong]).is_err());
        let short = PreparedImage {
            data: vec![0.0; 10],
            height: 32,
            width: 8,
        };
        assert!(model.recognize_prepared(&[short]).is_err());
    }

    #[test]
    fn confidence_is_the_geometric_mean_of_the_tokens_and_the_eos() {
        let decoded = Decoded {
            tokens: vec![vec![], vec![7, 8], vec![7]],
            probs: vec![vec![], vec![0.5, 0.125], vec![0.5]],
            eos_probs: vec![None, None, Some(0.125)],
        };
        assert_eq!(decoded.confidence(0), 0.0);
        assert!((decoded.confidence(1) - 0.25).abs() < 1e-6);
        assert!((decoded.confidence(2) - 0.25).abs() < 1e-6);
    }
}
