//! Data sets for training and evaluation, and the machinery that turns them into batches.
//!
//! - [`synthetic`]: lines rendered on the fly from the corpus ([`corpus`]) with the training
//!   fonts ([`fonts`]), then augmented ([`render`], [`ink_texture`], [`augment`]);
//! - [`tesstrain`]: folders of `NAME.png` + `NAME.gt.txt` pairs;
//! - [`iam`]: the IAM handwriting database in its original layout;
//! - [`mix`]: a trial's training data, one set or a weighted mix of sources;
//! - [`Sampler`] fixes which sample sits at every global position (seekable, so a resumed
//!   trial sees exactly the batches it would have seen), [`Loader`] builds [`Batch`]es on
//!   background threads.
//!
//! Every data set is a pure function from index to sample, so any thread can load any sample
//! and a resumed run reproduces the same data.

pub mod augment;
pub mod batch;
pub mod corpus;
mod files;
pub mod fonts;
pub mod iam;
pub mod ink_texture;
pub mod loader;
pub mod mix;
pub mod render;
pub mod sampler;
pub mod synthetic;
pub mod tesstrain;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Result};
use image::GrayImage;
use textrec_contract::config::{DatasetKind, DatasetSpec, TextSplit};

pub use batch::Batch;
pub use files::FileLines;
pub use loader::Loader;
pub use mix::{open_training_data, MixedDataset};
pub use sampler::{MixSampler, Sampler};

/// Seed of every synthetic validation set, whatever the trial's seed: trials of one search
/// must be scored on the same lines to be comparable.
pub const VALIDATION_SEED: u64 = 0x7e57_5eed_0000_0001;

/// One text-line image and its transcription.
#[derive(Debug, Clone)]
pub struct Sample {
    /// The line; synthetic lines are dark ink on a light background, file-based ones are as
    /// stored (preprocessing handles either polarity).
    pub image: GrayImage,
    /// What the image shows, in the charset.
    pub text: String,
    /// Where the sample comes from (file path, IAM line id, or synthetic index).
    pub id: String,
}

/// An input the data set left out when it was opened, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The file (image or transcription) concerned.
    pub path: PathBuf,
    /// Why it was left out.
    pub reason: String,
}

/// A source of samples addressed by index.
pub trait Dataset: Send + Sync {
    /// Number of samples; `None` for an endless synthetic stream.
    fn len(&self) -> Option<u64>;
    /// Whether the set is finite and empty (opened data sets never are: opening fails).
    fn is_empty(&self) -> bool {
        self.len() == Some(0)
    }
    /// The sample at `index` (`< len` for finite sets). The same index always gives the same
    /// sample, on any thread.
    fn get(&self, index: u64) -> Result<Sample>;
    /// One line for logs: kind, source and size.
    fn describe(&self) -> String;
    /// Inputs that were left out when the set was opened (unreadable images, missing
    /// transcriptions, text outside the charset).
    fn skipped(&self) -> &[Skipped] {
        &[]
    }
}

/// Open the data set `spec` describes. `seed` is the trial's seed; a synthetic validation set
/// ignores it and uses [`VALIDATION_SEED`], so every trial is scored on identical lines.
pub fn open_dataset(spec: &DatasetSpec, seed: u64, charset: &str) -> Result<Arc<dyn Dataset>> {
    open_for(spec, seed, charset, Use::TrainOrValidate)
}

/// [`open_dataset`] for scoring a model (`eval`): also reads an independent evaluation set,
/// which training and validation refuse (see [`tesstrain::EVALUATION_ONLY_MARKER`]).
pub fn open_evaluation_dataset(spec: &DatasetSpec, charset: &str) -> Result<Arc<dyn Dataset>> {
    open_for(spec, 0, charset, Use::Evaluate)
}

/// What a data set is opened for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Use {
    TrainOrValidate,
    Evaluate,
}

fn open_for(spec: &DatasetSpec, seed: u64, charset: &str, usage: Use) -> Result<Arc<dyn Dataset>> {
    let path = || -> Result<&str> {
        match spec.path.as_deref() {
            Some(p) => Ok(p),
            None => bail!("data set of kind {:?} needs a `path`", spec.kind),
        }
    };
    Ok(match spec.kind {
        DatasetKind::Synthetic => {
            let seed = match spec.synthetic.split {
                TextSplit::Train => seed,
                TextSplit::Validation | TextSplit::Descriptions => {
                    if spec.samples.is_none() {
                        bail!("a synthetic validation set needs `samples` (its size)");
                    }
                    VALIDATION_SEED
                }
            };
            Arc::new(synthetic::SyntheticDataset::open(
                &spec.synthetic,
                spec.samples,
                seed,
                charset,
            )?)
        }
        DatasetKind::Tesstrain => Arc::new(match usage {
            Use::TrainOrValidate => tesstrain::open(path()?, charset, spec.samples)?,
            Use::Evaluate => tesstrain::open_evaluation(path()?, charset, spec.samples)?,
        }),
        DatasetKind::Iam => Arc::new(iam::open(
            path()?,
            spec.split_file.as_deref(),
            spec.include_err,
            charset,
            spec.samples,
        )?),
    })
}

/// A 64-bit hash that never changes between builds, platforms or runs (unlike std's
/// `DefaultHasher`): FNV-1a, then a SplitMix64 finalizer so nearby inputs spread out.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    splitmix(h)
}

/// Combine two values into a well-mixed seed (e.g. a data set seed and a sample index).
pub fn mix_seed(a: u64, b: u64) -> u64 {
    splitmix(splitmix(a) ^ b.wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_hash_is_pinned() {
        // Changing these values moves corpus text between train and validation: don't.
        assert_eq!(stable_hash(b""), splitmix(0xcbf2_9ce4_8422_2325));
        assert_ne!(stable_hash(b"a"), stable_hash(b"b"));
        assert_eq!(stable_hash(b"hello"), stable_hash(b"hello"));
        assert_ne!(mix_seed(1, 2), mix_seed(2, 1));
    }

    #[test]
    fn path_is_required_for_file_sets() {
        let spec = DatasetSpec {
            kind: DatasetKind::Tesstrain,
            ..DatasetSpec::default()
        };
        let err = open_dataset(&spec, 1, "ab").err().unwrap().to_string();
        assert!(err.contains("path"), "{err}");
    }
}
