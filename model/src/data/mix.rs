//! The training data of a trial: one data set, or a weighted mix of sources.
//!
//! A mix is addressed by global position, not by index: [`MixSampler`] says which source
//! and which of its samples sit at each position, and a source with `augment: true` distorts
//! its line with a random stream keyed by the position (so a line seen twice is distorted two
//! ways, and a resumed run distorts it exactly as the uninterrupted run did). The trainer pairs
//! it with an identity [`Sampler`](super::Sampler) (`Sampler::new(None, _)`).

use std::sync::Arc;

use anyhow::{bail, Result};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use textrec_contract::config::{DatasetKind, DatasetSpec, TrainData};

use super::sampler::MixSampler;
use super::{augment, mix_seed, open_dataset, Dataset, Sample, Skipped};

/// One source of a mix, opened.
pub struct Source {
    /// The config field it comes from (`data.train[1]`), for logs and errors.
    pub field: String,
    /// The data set.
    pub dataset: Arc<dyn Dataset>,
    /// Normalised share of the positions.
    pub weight: f64,
    /// Distortion strength applied to its samples on top of what the set does itself.
    pub augment: Option<f32>,
}

/// A weighted mix of data sets, addressed by global position.
pub struct MixedDataset {
    sources: Vec<Source>,
    sampler: MixSampler,
    seed: u64,
    skipped: Vec<Skipped>,
}

impl MixedDataset {
    /// Mix `sources`, in an order fixed by `seed`.
    pub fn new(sources: Vec<Source>, seed: u64) -> Self {
        let sampler = MixSampler::new(
            &sources
                .iter()
                .map(|s| (s.dataset.len(), s.weight))
                .collect::<Vec<_>>(),
            seed,
        );
        let skipped = sources
            .iter()
            .flat_map(|s| s.dataset.skipped().iter().cloned())
            .collect();
        Self {
            sources,
            sampler,
            seed,
            skipped,
        }
    }

    /// The sources, in config order.
    pub fn sources(&self) -> &[Source] {
        &self.sources
    }
}

impl Dataset for MixedDataset {
    fn len(&self) -> Option<u64> {
        None
    }

    fn get(&self, position: u64) -> Result<Sample> {
        let (s, index) = self.sampler.pick(position);
        let source = &self.sources[s];
        let mut sample = source
            .dataset
            .get(index)
            .map_err(|e| e.context(format!("{} ({})", source.field, source.dataset.describe())))?;
        if let Some(strength) = source.augment {
            let mut rng =
                ChaCha8Rng::seed_from_u64(mix_seed(mix_seed(self.seed, s as u64), position));
            sample.image = augment::augment_image(&sample.image, strength, &mut rng);
        }
        Ok(sample)
    }

    fn describe(&self) -> String {
        let parts: Vec<String> = self
            .sources
            .iter()
            .map(|s| {
                format!(
                    "{} weight {:.3}{}: {}",
                    s.field,
                    s.weight,
                    s.augment
                        .map_or(String::new(), |a| format!(", augmented {a}")),
                    s.dataset.describe()
                )
            })
            .collect();
        format!(
            "mix of {} sources [{}]",
            self.sources.len(),
            parts.join("; ")
        )
    }

    fn skipped(&self) -> &[Skipped] {
        &self.skipped
    }
}

/// Whether `train` reads exactly as one plain data set did before mixes existed: then it is
/// opened as that set and sampled as before, so older configs train (and resume) unchanged.
fn is_plain(train: &TrainData) -> bool {
    match train {
        TrainData::Mix(_) => false,
        TrainData::One(d) => match d.kind {
            DatasetKind::Synthetic => true,
            DatasetKind::Tesstrain | DatasetKind::Iam => d.augment != Some(true),
        },
    }
}

/// `spec` as the opener sees it: a synthetic source with `augment: false` renders clean lines.
fn effective(spec: &DatasetSpec) -> DatasetSpec {
    let mut spec = spec.clone();
    if spec.kind == DatasetKind::Synthetic && spec.augment == Some(false) {
        spec.synthetic.augment = 0.0;
    }
    spec
}

/// Open a trial's training data (paths must be local by now: see the worker's data set
/// resolution). Errors name the source's field (`data.train[1]: …`). Every source must hold
/// samples. The mix is logged once, source by source.
pub fn open_training_data(train: &TrainData, seed: u64, charset: &str) -> Result<Arc<dyn Dataset>> {
    if is_plain(train) {
        let spec = effective(&train.sources()[0]);
        let ds = open_dataset(&spec, seed, charset).map_err(|e| e.context("data.train"))?;
        if ds.is_empty() {
            bail!("data.train: the data set is empty ({})", ds.describe());
        }
        return Ok(ds);
    }
    let weights = train.normalized_weights();
    let mut sources = Vec::with_capacity(weights.len());
    for (i, (spec, weight)) in train.sources().iter().zip(weights).enumerate() {
        let field = train.field(i);
        // Two synthetic sources must not render the same lines: each gets its own stream.
        let ds = open_dataset(&effective(spec), mix_seed(seed, i as u64 + 1), charset)
            .map_err(|e| e.context(field.clone()))?;
        if ds.is_empty() {
            bail!("{field}: the data set is empty ({})", ds.describe());
        }
        let augment = (spec.kind != DatasetKind::Synthetic && spec.augment == Some(true))
            .then_some(spec.synthetic.augment as f32);
        tracing::info!(
            source = %field,
            weight,
            size = ds.len().map_or("endless".to_string(), |n| n.to_string()),
            "training source {field}: weight {weight:.3}{}, {}",
            augment.map_or(String::new(), |a| format!(", augmented {a}")),
            ds.describe()
        );
        sources.push(Source {
            field,
            dataset: ds,
            weight,
            augment,
        });
    }
    Ok(Arc::new(MixedDataset::new(sources, seed)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{GrayImage, Luma};

    /// A set of `n` samples whose text names the set and the index.
    struct Named(&'static str, Option<u64>);

    impl Dataset for Named {
        fn len(&self) -> Option<u64> {
            self.1
        }
        fn get(&self, index: u64) -> Result<Sample> {
            Ok(Sample {
                image: GrayImage::from_fn(40, 16, |x, _| Luma([if x % 5 == 0 { 0 } else { 255 }])),
                text: format!("{}{index}", self.0),
                id: format!("{}/{index}", self.0),
            })
        }
        fn describe(&self) -> String {
            self.0.into()
        }
    }

    fn mix(augment: Option<f32>) -> MixedDataset {
        MixedDataset::new(
            vec![
                Source {
                    field: "data.train[0]".into(),
                    dataset: Arc::new(Named("s", None)),
                    weight: 0.75,
                    augment: None,
                },
                Source {
                    field: "data.train[1]".into(),
                    dataset: Arc::new(Named("f", Some(4))),
                    weight: 0.25,
                    augment,
                },
            ],
            9,
        )
    }

    #[test]
    fn positions_draw_each_source_by_weight_and_repeat_exactly() {
        let m = mix(Some(0.8));
        let texts: Vec<String> = (0..400).map(|p| m.get(p).unwrap().text).collect();
        let files = texts.iter().filter(|t| t.starts_with('f')).count();
        assert_eq!(files, 100, "a quarter of the positions read the file set");
        // The same position gives the same sample and the same distortion, in any order.
        let again = mix(Some(0.8));
        for p in [399u64, 3, 250] {
            assert_eq!(again.get(p).unwrap().image, m.get(p).unwrap().image);
            assert_eq!(again.get(p).unwrap().text, texts[p as usize]);
        }
        // An augmented file line differs between its epochs; an unaugmented one does not.
        let images = |m: &MixedDataset, text: &str| -> Vec<GrayImage> {
            (0..400)
                .map(|p| m.get(p).unwrap())
                .filter(|s| s.text == text)
                .map(|s| s.image)
                .collect()
        };
        let seen = images(&m, "f0");
        assert!(seen.len() >= 2 && seen[0] != seen[1]);
        let plain = images(&mix(None), "f0");
        assert!(plain.windows(2).all(|w| w[0] == w[1]));
        assert!(m
            .describe()
            .contains("data.train[1] weight 0.250, augmented 0.8"));
    }

    #[test]
    fn a_single_plain_set_opens_as_before_and_an_empty_source_names_its_field() {
        let plain: TrainData = DatasetSpec::default().into();
        assert!(is_plain(&plain));
        let augmented = TrainData::One(DatasetSpec {
            kind: DatasetKind::Tesstrain,
            path: Some("/x".into()),
            augment: Some(true),
            ..DatasetSpec::default()
        });
        assert!(!is_plain(&augmented));
        let missing = TrainData::Mix(vec![
            DatasetSpec::default(),
            DatasetSpec {
                kind: DatasetKind::Tesstrain,
                path: Some("/nonexistent/textrec-test".into()),
                ..DatasetSpec::default()
            },
        ]);
        // The synthetic source may fail first where fonts are missing; either way the field is named.
        let err = format!("{:#}", open_training_data(&missing, 1, "ab").err().unwrap());
        assert!(err.contains("data.train["), "{err}");
    }
}
