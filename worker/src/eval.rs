//! `textrec-worker eval`: CER/WER of a model over a tesstrain folder.
//!
//! ```text
//! textrec-worker eval --model s3://bucket/run/trial-0/model --data lines/ [--predictions out/] [--json]
//! ```
//!
//! `--data` is a path or a storage URL (`s3://bucket/flags/`), fetched through the data cache
//! like a training set's (`crate::datasets`).
//!
//! With `--json` the last stdout line is `{"cer":…,"wer":…,"lines":…,"by_length":[…],
//! "model_sha256":…,"dataset_digest":…}` (plus `"skipped"` when some images could not be read),
//! for scripts, CI and the operator's promotion evaluations. `dataset_digest` identifies the
//! folder's content, so two results are comparable exactly when their digests are equal.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::builder::TypedValueParser;
use clap::Args;
use image::GrayImage;
use textrec_contract::config::{DatasetKind, DatasetSpec};
use textrec_contract::evaluation::SELECTION_ENV;
use textrec_contract::exit::{self, ConfigError};
use textrec_contract::manifest::{decimal_f32, ModelManifest, UnsureLines};
use textrec_model::calibration::{ConfidenceCard, ConfidenceReport};
use textrec_model::data::{open_dataset, open_evaluation_dataset};
use textrec_model::lm::SearchSettings;
use textrec_model::metrics::ScoreCard;
use textrec_model::net::DecodeMode;
use textrec_model::precision::ReadingPrecision;
use textrec_model::widths::WidthReadings;
use textrec_model::LoadedModel;
use textrec_model::Prediction;

/// Arguments of `eval`.
#[derive(Args, Debug)]
pub struct EvalArgs {
    /// The model: a model folder (holding manifest.json and model.safetensors) as a URL or a
    /// path, or `builtin:NAME`.
    #[arg(long, default_value = crate::model_source::DEFAULT_MODEL)]
    pub model: String,
    /// A tesstrain folder: NAME.png|tif|jpg next to NAME.gt.txt; a path or a storage URL
    /// (`file://`, `s3://`, `gs://`, `az://`).
    #[arg(long)]
    pub data: String,
    /// Write each prediction to this folder as NAME.txt.
    #[arg(long, value_name = "DIR")]
    pub predictions: Option<PathBuf>,
    /// Print the result as one JSON object on the last stdout line.
    #[arg(long)]
    pub json: bool,
    /// Also write the `--json` object to this file (a pod's `/dev/termination-log`, where the
    /// operator reads an evaluation Job's result).
    #[arg(long, value_name = "PATH")]
    pub result_file: Option<PathBuf>,
    /// Score only the first N lines of the folder (in name order).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub samples: Option<u64>,
    /// The score chooses between models (a promotion): refuse a set reserved for independent
    /// evaluation (written by `synth --independent-evaluation`), which must never choose
    /// anything. The operator sets it for its promotion evaluations.
    #[arg(long, env = SELECTION_ENV, value_parser = clap::builder::FalseyValueParser::new())]
    pub selection: bool,
    #[command(flatten)]
    pub run: LocalInference,
    /// How lines are read: `joint` (both heads' readings, the likelier wins), `attention`
    /// (the decoder alone), `ctc` (the CTC head alone) or `ctc-lm` (a beam search over the
    /// CTC head scored with the model's language model). Default: the model's own choice
    /// (its manifest's `decoding`).
    #[arg(long, value_enum)]
    pub decode: Option<DecodeArg>,
    #[command(flatten)]
    pub search: SearchArgs,
    #[command(flatten)]
    pub widths: WidthArgs,
}

/// Read with `decode` (default: the manifest's decoding), the search weights and the widths
/// given.
pub fn set_reading(
    model: &mut LoadedModel,
    decode: Option<DecodeArg>,
    search: &SearchArgs,
    widths: &WidthArgs,
) -> Result<()> {
    if let Some(mode) = decode {
        model
            .set_decode_mode(mode.into())
            .map_err(|e| ConfigError::new(format!("--decode: {e:#}")))?;
    }
    search.apply(model)?;
    if let Some(widths) = widths.readings()? {
        model.set_widths(widths);
    }
    Ok(())
}

/// Reading each line at several widths (stretched horizontally) and keeping the most
/// confident reading: for fonts narrower or wider than the model was trained on.
#[derive(Args, Debug, Clone, Default)]
pub struct WidthArgs {
    /// Horizontal stretch factors, comma-separated (e.g. `1,1.1,1.25,1.4,1.6`): every line is
    /// read at the first, and at the others as `--reread-below` says; the most confident
    /// reading is kept. Each further width costs about one more reading of the line; one
    /// factor alone (`--widths 1.1`) reads every line once at that stretch. Default: the
    /// model's manifest (`reading`), else once as drawn; `--widths 1` reads as drawn.
    #[arg(long, value_name = "F,F,...", value_delimiter = ',')]
    pub widths: Vec<f32>,
    /// Read a line at the further `--widths` only when its first reading's confidence is
    /// below C (0..1); without it every line is read at every width.
    #[arg(long, value_name = "C", requires = "widths")]
    pub reread_below: Option<f32>,
}

impl WidthArgs {
    /// The readings these arguments ask for; `None` when none are given (the model's
    /// manifest decides).
    pub fn readings(&self) -> Result<Option<WidthReadings>> {
        if self.widths.is_empty() {
            return Ok(None);
        }
        WidthReadings::new(self.widths.clone(), self.reread_below)
            .map(Some)
            .map_err(|e| ConfigError::new(format!("--widths: {e:#}")).into())
    }
}

/// Overrides of the manifest's `language_model` weights, for tuning `ctc-lm` decoding.
#[derive(Args, Debug, Clone, Default)]
pub struct SearchArgs {
    /// Weight of the language model's log-probability (manifest: `language_model.alpha`).
    #[arg(long, value_name = "W")]
    pub lm_alpha: Option<f32>,
    /// Score added per character read, in the first search and the unsure lines' second one
    /// (manifest: `language_model.beta`; may be negative).
    #[arg(long, value_name = "B", allow_negative_numbers = true)]
    pub lm_beta: Option<f32>,
    /// Readings the beam search keeps (manifest: `language_model.beam`).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub beam: Option<u32>,
    /// Search a line again when its reading's confidence is below C (0..1), with the language
    /// model weighed by `--lm-unsure-alpha`; 0 searches every line once (manifest:
    /// `language_model.unsure_lines.below`).
    #[arg(long, value_name = "C", value_parser = unit_interval)]
    pub lm_unsure_below: Option<f32>,
    /// Weight of the language model in that second search (manifest:
    /// `language_model.unsure_lines.alpha`).
    #[arg(long, value_name = "W")]
    pub lm_unsure_alpha: Option<f32>,
}

/// A confidence on the command line: a number within 0..1.
fn unit_interval(s: &str) -> std::result::Result<f32, String> {
    let c: f32 = s.parse().map_err(|e| format!("{e}"))?;
    if (0.0..=1.0).contains(&c) {
        Ok(c)
    } else {
        Err(format!("{c} is not a confidence within 0..1"))
    }
}

impl SearchArgs {
    /// Whether any weight was given.
    pub fn any(&self) -> bool {
        self.lm_alpha.is_some()
            || self.lm_beta.is_some()
            || self.beam.is_some()
            || self.lm_unsure_below.is_some()
            || self.lm_unsure_alpha.is_some()
    }

    /// Apply the overrides to `model`; an error when one is given and the model has no
    /// language model.
    pub fn apply(&self, model: &mut LoadedModel) -> Result<()> {
        if !self.any() {
            return Ok(());
        }
        let Some(lm) = model.language_model() else {
            bail!(ConfigError::new(
                "--lm-alpha, --lm-beta, --beam and --lm-unsure-* weigh a language model, and \
                 this model has none"
            ));
        };
        let mut settings = lm.settings;
        if let Some(a) = self.lm_alpha {
            settings.alpha = a;
        }
        if let Some(b) = self.lm_beta {
            settings.beta = b;
        }
        if let Some(n) = self.beam {
            settings.beam = n as usize;
        }
        settings.unsure = self.unsure_lines(settings)?;
        model.set_search(settings)
    }

    /// The unsure lines' second search with these overrides over `settings`' (the manifest's).
    fn unsure_lines(&self, settings: SearchSettings) -> Result<Option<UnsureLines>> {
        if self.lm_unsure_below == Some(0.0) {
            return Ok(None);
        }
        let base = settings.unsure;
        let below = self.lm_unsure_below.or(base.map(|u| u.below));
        let alpha = self.lm_unsure_alpha.or(base.map(|u| u.alpha));
        match (below, alpha) {
            (Some(below), Some(alpha)) => Ok(Some(UnsureLines {
                below,
                alpha,
                // A beta given on the command line weighs both searches.
                beta: match (self.lm_beta, base) {
                    (None, Some(u)) => u.beta,
                    _ => settings.beta,
                },
            })),
            (None, None) => Ok(None),
            _ => bail!(ConfigError::new(
                "this model searches no line again: give --lm-unsure-below and \
                 --lm-unsure-alpha together"
            )),
        }
    }
}

/// How a model runs in this process: the options `eval` and `recognize` share.
#[derive(Args, Debug, Clone)]
pub struct LocalInference {
    /// Lines recognized per batch.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub batch_size: u32,
    /// `auto`, `cpu` or `cuda`.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// libtorch CPU threads (0: libtorch's default).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    #[command(flatten)]
    pub precision: PrecisionArgs,
}

impl LocalInference {
    /// Set the thread count, pick the device and load the model at `location` (a model folder
    /// URL or path, or `builtin:NAME`).
    pub fn load(&self, location: &str) -> Result<LoadedModel> {
        crate::device::set_threads(self.threads);
        self.load_files(&crate::model_source::fetch_blocking(location)?)
    }

    /// Load fetched model files onto the device, reading at `--precision`.
    pub fn load_files(&self, files: &crate::model_source::ModelFiles) -> Result<LoadedModel> {
        let mut model = files.load(parse_device(&self.device)?)?;
        self.precision.apply(&mut model)?;
        Ok(model)
    }

    /// Lines per forward pass.
    pub fn batch(&self) -> usize {
        self.batch_size as usize
    }
}

/// The type the encoder reads lines in.
#[derive(Args, Debug, Clone, Copy, Default)]
pub struct PrecisionArgs {
    /// The type the encoder computes in: `fp32`; `bf16` (1.25-1.35× faster reading on a CPU
    /// with AVX512-BF16, such as AMD Zen 4 or Intel Sapphire Rapids, at the pretrained model's
    /// CER within 0.0004; slower than fp32 on other CPUs, which emulate it); or `auto` (bf16
    /// where the CPU computes it natively, fp32 elsewhere and on CUDA). The rest of the
    /// network stays fp32.
    #[arg(
        long,
        default_value = "fp32",
        env = PRECISION_ENV,
        value_parser = clap::builder::PossibleValuesParser::new(ReadingPrecision::NAMES)
            .map(|name| name.parse::<ReadingPrecision>().expect("one of the names listed"))
    )]
    pub precision: ReadingPrecision,
}

/// The environment variable `--precision` falls back to.
pub const PRECISION_ENV: &str = "TEXTREC_PRECISION";

impl PrecisionArgs {
    /// Convert `model`'s encoder as asked, and say so when it reads in bf16.
    pub fn apply(&self, model: &mut LoadedModel) -> Result<()> {
        let asked = self.precision;
        model.set_precision(asked)?;
        if asked == ReadingPrecision::Bf16 && !textrec_model::precision::cpu_has_native_bf16() {
            tracing::warn!(
                "--precision bf16 on a CPU without AVX512-BF16: libtorch emulates bf16 here, \
                 which reads slower than fp32 (`--precision auto` would read in fp32)"
            );
        }
        tracing::debug!(precision = model.precision(), "encoder precision");
        Ok(())
    }
}

/// A `--decode` value.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum DecodeArg {
    /// Joint CTC/attention.
    Joint,
    /// The attention decoder alone.
    Attention,
    /// The CTC head alone.
    Ctc,
    /// A beam search over the CTC head, scored with the model's language model.
    CtcLm,
}

impl From<DecodeArg> for DecodeMode {
    fn from(d: DecodeArg) -> Self {
        match d {
            DecodeArg::Joint => DecodeMode::Joint,
            DecodeArg::Attention => DecodeMode::Attention,
            DecodeArg::Ctc => DecodeMode::Ctc,
            DecodeArg::CtcLm => DecodeMode::CtcLm,
        }
    }
}

/// Parse a `--device` value.
pub fn parse_device(s: &str) -> Result<tch::Device> {
    let d = match s {
        "auto" => textrec_contract::config::Device::Auto,
        "cpu" => textrec_contract::config::Device::Cpu,
        "cuda" => textrec_contract::config::Device::Cuda,
        other => bail!(ConfigError::new(format!(
            "--device `{other}`: expected auto, cpu or cuda"
        ))),
    };
    crate::device::select(d)
}

/// Run `eval`; returns the process exit code.
pub fn run(args: EvalArgs) -> Result<i32> {
    crate::device::set_threads(args.run.threads);
    let files = crate::model_source::fetch_blocking(&args.model)?;
    let model_sha256 = ModelManifest::version_of(&files.manifest_bytes);
    let mut model = args.run.load_files(&files)?;
    set_reading(&mut model, args.decode, &args.search, &args.widths)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let (local, fetched) = rt.block_on(crate::datasets::resolve_folder(
        &args.data,
        DatasetKind::Tesstrain,
        "--data",
        &crate::datasets::DataCache::from_env(),
    ))?;
    let spec = DatasetSpec {
        kind: DatasetKind::Tesstrain,
        path: Some(local.to_string_lossy().into_owned()),
        ..DatasetSpec::default()
    };
    // The digest of what was read: a fetched set's (computed while fetching), or the folder's.
    let dataset_digest = match &fetched {
        Some(set) => set.digest.clone(),
        None => crate::datasets::folder_digest(&local)
            .map_err(|e| ConfigError::new(format!("--data {}: {e:#}", args.data)))?,
    };
    tracing::info!("evaluating data set {dataset_digest} ({})", args.data);
    let charset = model.tokenizer().charset().to_string();
    let data = if args.selection {
        open_dataset(&spec, 0, &charset)
    } else {
        open_evaluation_dataset(&spec, &charset)
    }
    .map_err(|e| ConfigError::new(format!("--data {}: {e:#}", args.data)))?;
    let n = data.len().context("a tesstrain folder has a known size")?;
    let n = args.samples.map_or(n, |cap| n.min(cap));
    if let Some(dir) = &args.predictions {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }

    let mut card = ScoreCard::default();
    let mut confidence = ConfidenceCard::default();
    // Files rejected while the folder was scanned (unreadable, bad size, no transcription) count
    // as skipped just like those that fail to decode now.
    let mut skipped: Vec<String> = data
        .skipped()
        .iter()
        .map(|s| format!("{}: {}", s.path.display(), s.reason))
        .collect();
    let mut pending: Vec<(String, String, GrayImage)> = Vec::new();
    let mut flush =
        |pending: &mut Vec<(String, String, GrayImage)>, skipped: &mut Vec<String>| -> Result<()> {
            for (id, reference, pred) in recognize_batch(&model, std::mem::take(pending), skipped) {
                let hyp = pred.text;
                confidence.add(card.add(&reference, &hyp), pred.confidence);
                if let Some(dir) = &args.predictions {
                    let path = dir.join(format!("{id}.txt"));
                    std::fs::write(&path, format!("{hyp}\n"))
                        .with_context(|| format!("cannot write {}", path.display()))?;
                }
            }
            Ok(())
        };
    for i in 0..n {
        match data.get(i) {
            Ok(s) => pending.push((s.id, s.text, s.image)),
            Err(e) => skipped.push(format!("{e:#}")),
        }
        if pending.len() >= args.run.batch() {
            flush(&mut pending, &mut skipped)?;
        }
    }
    flush(&mut pending, &mut skipped)?;

    if !skipped.is_empty() {
        tracing::warn!(
            "skipped {} unreadable lines: {}",
            skipped.len(),
            skipped.join("; ")
        );
    }
    let score = card.score();
    let calibration = confidence.report();
    if score.lines == 0 {
        bail!(ConfigError::new(format!(
            "--data {}: no readable lines (the evaluation set is empty)",
            args.data
        )));
    }
    if args.json || args.result_file.is_some() {
        let mut j = serde_json::json!({"cer": score.cer, "wer": score.wer, "lines": score.lines,
                                       "by_length": score.by_length,
                                       "model_sha256": model_sha256,
                                       "dataset_digest": dataset_digest});
        if !skipped.is_empty() {
            j["skipped"] = serde_json::json!(skipped.len());
        }
        if !model.widths().is_single() {
            let widths: Vec<f64> = model
                .widths()
                .factors()
                .iter()
                .map(|&f| decimal_f32(f))
                .collect();
            j["widths"] = serde_json::json!(widths);
        }
        j["precision"] = serde_json::json!(model.precision());
        if model.widths().factors().len() > 1 {
            j["reread_lines"] = serde_json::json!(model.reading_counts().1);
        }
        if let Some(r) = &calibration {
            j["confidence"] = serde_json::to_value(r).context("confidence report")?;
        }
        if args.json {
            println!("{j}");
        }
        if let Some(path) = &args.result_file {
            // Without the per-length table: a termination message holds at most 4 KiB.
            let mut small = j.clone();
            if let Some(o) = small.as_object_mut() {
                o.remove("by_length");
                o.remove("confidence");
            }
            std::fs::write(path, small.to_string())
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
    }
    if !args.json {
        println!(
            "CER {:.4}  WER {:.4}  over {} lines{}",
            score.cer,
            score.wer,
            score.lines,
            if skipped.is_empty() {
                String::new()
            } else {
                format!(" ({} skipped)", skipped.len())
            }
        );
        if !model.widths().is_single() {
            let factors: Vec<String> = model
                .widths()
                .factors()
                .iter()
                .map(|f| format!("x{f}"))
                .collect();
            println!("  read at widths {}", factors.join(", "));
        }
        if model.precision() != "fp32" {
            println!("  encoder read in {}", model.precision());
        }
        if model.widths().factors().len() > 1 {
            let (read, reread) = model.reading_counts();
            println!(
                "  read again at other widths: {reread} of {read} lines ({:.0}%)",
                100.0 * reread as f64 / read.max(1) as f64
            );
        }
        for b in &score.by_length {
            let range = match b.max_chars {
                u32::MAX => format!("> {}", b.min_chars - 1),
                max => format!("{}-{max}", b.min_chars),
            };
            println!(
                "  {range:>8} chars: CER {:.4} over {} lines",
                b.cer, b.lines
            );
        }
        if let Some(r) = &calibration {
            print_calibration(r);
        }
    }
    Ok(exit::SUCCESS)
}

/// What the line confidence says of the readings: which threshold to send to review.
fn print_calibration(r: &ConfidenceReport) {
    let pct = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.0}%", 100.0 * v));
    println!(
        "confidence: {} of {} lines not read exactly; a wrong line ranks below a right one {}",
        r.wrong_lines,
        r.lines,
        r.auroc
            .map_or("(no ranking: all right or all wrong)".to_string(), |a| {
                format!("with probability {a:.3} (AUROC)")
            })
    );
    for t in &r.thresholds {
        println!(
            "  below {:.1}: {:>4} of lines flagged, {:>4} of them wrong, {:>4} of wrong lines caught; the rest read at CER {}",
            t.below,
            pct(Some(t.flagged)),
            pct(t.wrong_among_flagged),
            pct(t.wrong_caught),
            t.cer_kept.map_or("-".to_string(), |c| format!("{c:.4}")),
        );
    }
}

/// Recognize a batch; when the batch fails (one image too large, say), retry line by line so
/// one bad image costs only itself. Returns (id, reference, prediction) of the lines that
/// worked.
fn recognize_batch(
    model: &LoadedModel,
    batch: Vec<(String, String, GrayImage)>,
    skipped: &mut Vec<String>,
) -> Vec<(String, String, Prediction)> {
    let images: Vec<GrayImage> = batch.iter().map(|(_, _, img)| img.clone()).collect();
    match model.recognize(&images) {
        Ok(preds) => batch
            .into_iter()
            .zip(preds)
            .map(|((id, r, _), p)| (id, r, p))
            .collect(),
        Err(_) if batch.len() > 1 => batch
            .into_iter()
            .flat_map(|item| recognize_batch(model, vec![item], skipped))
            .collect(),
        Err(e) => {
            skipped.push(format!("{}: {e:#}", batch[0].0));
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use textrec_contract::manifest::UnsureLines;
    use textrec_model::lm::SearchSettings;

    use super::SearchArgs;
    use crate::datasets::folder_digest;

    #[test]
    fn unsure_line_overrides_complete_the_manifests_or_turn_it_off() {
        let args = |below: Option<f32>, alpha: Option<f32>| SearchArgs {
            lm_unsure_below: below,
            lm_unsure_alpha: alpha,
            ..SearchArgs::default()
        };
        let plain = SearchSettings::default();
        let manifest = SearchSettings {
            unsure: Some(UnsureLines {
                below: 0.4,
                alpha: 0.8,
                beta: 1.5,
            }),
            ..plain
        };
        // Nothing given: the manifest's (or none).
        assert_eq!(args(None, None).unsure_lines(plain).unwrap(), None);
        assert_eq!(
            args(None, None).unsure_lines(manifest).unwrap(),
            manifest.unsure
        );
        // One value over the manifest's: the rest stays.
        let u = args(Some(0.3), None)
            .unsure_lines(manifest)
            .unwrap()
            .unwrap();
        assert_eq!((u.below, u.alpha, u.beta), (0.3, 0.8, 1.5));
        // Both on a model without: the search's own beta.
        let u = args(Some(0.3), Some(2.0))
            .unsure_lines(plain)
            .unwrap()
            .unwrap();
        assert_eq!((u.below, u.alpha, u.beta), (0.3, 2.0, plain.beta));
        // A beta given weighs the second search too.
        let beta = SearchArgs {
            lm_beta: Some(-1.0),
            ..args(None, None)
        };
        let shifted = SearchSettings {
            beta: -1.0,
            ..manifest
        };
        let u = beta.unsure_lines(shifted).unwrap().unwrap();
        assert_eq!((u.below, u.alpha, u.beta), (0.4, 0.8, -1.0));
        // Half a setting on a model without one is a config error that says what to add.
        let err = args(None, Some(2.0)).unsure_lines(plain).unwrap_err();
        assert!(err.to_string().contains("--lm-unsure-below"), "{err}");
        // 0 turns it off.
        assert_eq!(
            args(Some(0.0), Some(2.0)).unsure_lines(manifest).unwrap(),
            None
        );
    }

    #[test]
    fn folder_digest_follows_content_not_location() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        for d in [a.path(), b.path()] {
            std::fs::write(d.join("x.gt.txt"), "hello").unwrap();
            std::fs::create_dir(d.join("sub")).unwrap();
            std::fs::write(d.join("sub/y.gt.txt"), "world").unwrap();
        }
        let da = folder_digest(a.path()).unwrap();
        assert_eq!(da, folder_digest(b.path()).unwrap());
        std::fs::write(b.path().join("sub/y.gt.txt"), "w0rld").unwrap();
        assert_ne!(da, folder_digest(b.path()).unwrap());
        std::fs::rename(a.path().join("x.gt.txt"), a.path().join("z.gt.txt")).unwrap();
        assert_ne!(da, folder_digest(a.path()).unwrap());
    }
}
