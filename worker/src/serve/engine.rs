//! The model behind the server, as a small trait: the real [`LoadedModel`] in production, and a
//! scripted fake in unit tests (which then run without libtorch's latency).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use textrec_contract::manifest::ReadingSettings;
use textrec_contract::{ModelManifest, PreprocessConfig};
use textrec_model::batching::BatchLimits;
use textrec_model::inference::LoadedModel;
use textrec_model::preprocess::{decode_checked, prepare_checked, CheckedSource};
use textrec_model::widths::{PreparedLine, Readings, WidthReadings};

/// What the server can ask of a model.
pub trait Engine: Send + Sync + 'static {
    /// Version: sha256 of the model's manifest.json.
    fn version(&self) -> &str;
    /// The manifest, for `/v1/model` and metadata RPCs.
    fn manifest(&self) -> &ModelManifest;
    /// The preprocessing the model was trained with.
    fn preprocess(&self) -> &PreprocessConfig;
    /// Decode and prepare one image whose header was checked, at every width the model reads
    /// lines at (CPU work; called off the async runtime).
    fn prepare(&self, encoded: &[u8], source: &CheckedSource) -> anyhow::Result<PreparedLine> {
        prepare_checked(encoded, source, self.preprocess()).map(PreparedLine::single)
    }
    /// At which widths lines are read (the manifest's `reading`, or what `serve --widths`
    /// set): what `GET /v1/model` reports.
    fn reading(&self) -> ReadingSettings {
        WidthReadings::default().settings()
    }
    /// The type the encoder reads in (`serve --precision`): what `GET /v1/model` reports.
    fn precision(&self) -> &'static str {
        "fp32"
    }
    /// How this model prefers its input split into forward passes.
    fn batch_limits(&self) -> BatchLimits {
        BatchLimits {
            max_images: usize::MAX,
            max_columns: usize::MAX,
            pass_cost_columns: BatchLimits::GPU_PASS_COST,
        }
    }
    /// One batched forward pass over exactly `batch` (the batcher has planned it; a second
    /// one follows when lines are read at several widths): one prediction per line, in order,
    /// and how many lines were read again.
    fn recognize(&self, batch: &[PreparedLine]) -> anyhow::Result<Readings>;
}

impl Engine for LoadedModel {
    fn version(&self) -> &str {
        &self.version
    }
    fn manifest(&self) -> &ModelManifest {
        &self.manifest
    }
    fn preprocess(&self) -> &PreprocessConfig {
        LoadedModel::preprocess(self)
    }
    fn prepare(&self, encoded: &[u8], source: &CheckedSource) -> anyhow::Result<PreparedLine> {
        self.prepare_line(&decode_checked(encoded, source)?)
    }
    fn precision(&self) -> &'static str {
        LoadedModel::precision(self)
    }
    fn reading(&self) -> ReadingSettings {
        self.widths().settings()
    }
    fn batch_limits(&self) -> BatchLimits {
        LoadedModel::batch_limits(self)
    }
    fn recognize(&self, batch: &[PreparedLine]) -> anyhow::Result<Readings> {
        // The batcher already split its gathering by --max-batch-columns; planning again with
        // the model's own limits would override a larger budget.
        self.recognize_lines(batch)
    }
}

/// A model in service, with where and when it came from.
pub struct ServedModel {
    /// The engine.
    pub engine: Arc<dyn Engine>,
    /// URL of the model folder.
    pub source: String,
    /// When it was loaded.
    pub loaded_at: DateTime<Utc>,
}

/// Fetch a model (a folder in storage or `builtin:NAME`), verify it (manifest format, the
/// weights' sha256) and load it onto `device`, to read lines at `widths` (`None`: as its
/// manifest says) with the encoder in `precision`. The heavy part runs on a blocking thread.
pub async fn load_model(
    url: &str,
    device: tch::Device,
    widths: Option<WidthReadings>,
    precision: crate::eval::PrecisionArgs,
) -> anyhow::Result<Arc<dyn Engine>> {
    use anyhow::Context;
    let files = crate::model_source::fetch(url).await?;
    let mut model = tokio::task::spawn_blocking(move || {
        let mut model = files.load(device)?;
        precision.apply(&mut model)?;
        anyhow::Ok(model)
    })
    .await
    .context("model loading thread failed")??;
    if let Some(widths) = widths {
        model.set_widths(widths);
    }
    Ok(Arc::new(model))
}

#[cfg(test)]
pub(crate) mod fake {
    //! A scripted engine for unit tests.
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;
    use textrec_model::preprocess::PreparedImage;
    use textrec_model::Prediction;

    /// Answers `text` for every image after sleeping `delay` per batch; records batch sizes.
    pub struct FakeEngine {
        pub version: String,
        pub manifest: ModelManifest,
        pub text: String,
        pub delay: Duration,
        pub batches: std::sync::Mutex<Vec<usize>>,
        pub calls: AtomicUsize,
        /// Answer each image's width as its text instead of `text`.
        pub echo_width: bool,
    }

    impl FakeEngine {
        pub fn new(version: &str, text: &str, delay: Duration) -> Self {
            let manifest = ModelManifest {
                format: textrec_contract::manifest::MODEL_FORMAT.into(),
                created: Utc::now(),
                architecture: textrec_contract::Preset::Tiny.architecture(),
                charset: textrec_contract::charset::IAM_CHARSET.into(),
                preprocessing: PreprocessConfig::default(),
                metrics: Default::default(),
                decoding: Default::default(),
                language_model: None,
                reading: None,
                provenance: Default::default(),
                files: vec![],
            };
            Self {
                version: version.into(),
                manifest,
                text: text.into(),
                delay,
                batches: Default::default(),
                calls: AtomicUsize::new(0),
                echo_width: false,
            }
        }
    }

    impl Engine for FakeEngine {
        fn version(&self) -> &str {
            &self.version
        }
        fn manifest(&self) -> &ModelManifest {
            &self.manifest
        }
        fn preprocess(&self) -> &PreprocessConfig {
            &self.manifest.preprocessing
        }
        fn prepare(&self, encoded: &[u8], _source: &CheckedSource) -> anyhow::Result<PreparedLine> {
            Ok(PreparedLine::single(PreparedImage {
                data: vec![0.0; encoded.len().min(8)],
                height: 1,
                width: 8,
            }))
        }
        fn recognize(&self, batch: &[PreparedLine]) -> anyhow::Result<Readings> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.batches.lock().unwrap().push(batch.len());
            std::thread::sleep(self.delay);
            let predictions = batch
                .iter()
                .map(|line| Prediction {
                    text: if self.echo_width {
                        line.first().width.to_string()
                    } else {
                        self.text.clone()
                    },
                    confidence: 0.5,
                    char_confidences: vec![0.5; self.text.chars().count()],
                })
                .collect();
            Ok(Readings {
                predictions,
                reread: 0,
            })
        }
    }
}
