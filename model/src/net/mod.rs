//! The recognizer network: a ResNet encoder over the line image, a 2-D positional encoding,
//! and a Transformer decoder over character tokens, plus an optional CTC head on the encoder.
//!
//! - [`resnet`]: the convolutional encoder, with width masking so that batching is exact;
//! - [`posenc`]: sinusoidal position encodings;
//! - [`attention`]: multi-head attention with a key/value cache;
//! - [`context`]: self-attention over the line's frames, for the CTC head;
//! - [`decoder`]: the pre-norm Transformer decoder;
//! - [`recognizer`]: [`Recognizer`], the whole network, its loss and greedy decoding.
//!
//! Parameter names (the safetensors keys) follow the module tree, e.g.
//! `encoder.stages.1.0.conv1.conv.weight` or `decoder.layers.0.self_attn.qkv.weight`.

pub mod attention;
pub mod context;
pub mod decoder;
mod norm_act_conv;
pub mod posenc;
pub mod recognizer;
pub mod resnet;

#[cfg(test)]
mod tests;

use std::sync::{Mutex, MutexGuard};

use tch::{Kind, Tensor};

pub use norm_act_conv::{recompute_path, with_composed_ops};
pub use recognizer::{max_chars_for_frames, DecodeMode, Decoded, ForwardOutput, Recognizer};
pub use resnet::HeadRecompute;

/// Vertical downsampling of the encoder: a 32-pixel line becomes 4 feature rows.
pub const HEIGHT_STRIDE: i64 = 8;
/// Horizontal downsampling of the encoder: one feature column (and CTC frame) per 4 pixels.
/// Preprocessing must pad widths to a multiple of it (`PreprocessConfig::width_multiple`).
pub const WIDTH_STRIDE: i64 = 4;

/// Valid columns after a horizontal stride of `stride`: `ceil(w / stride)`, clamped to
/// `1..=max` so that no image is ever fully masked (attention over no keys gives NaN).
pub(crate) fn valid_columns(widths: &Tensor, stride: i64, max: i64) -> Tensor {
    (widths.to_kind(Kind::Int64) + (stride - 1))
        .divide_scalar_mode(stride, "floor")
        .clamp(1, max)
}

/// `[B, 1, 1, w]` mask of kind `kind`: 1 on the valid columns of each image at a horizontal
/// stride of `stride`, 0 on the padding.
pub(crate) fn column_mask(widths: &Tensor, stride: i64, w: i64, kind: Kind) -> Tensor {
    let valid = valid_columns(widths, stride, w);
    let cols = Tensor::arange(w, (Kind::Int64, widths.device()));
    let b = valid.size()[0];
    cols.unsqueeze(0)
        .lt_tensor(&valid.unsqueeze(1))
        .to_kind(kind)
        .view([b, 1, 1, w])
}

/// Serializes "seed torch's global generator, then draw from it" sequences in this process.
///
/// libtorch has one CPU generator per process and tch exposes no private ones, so two threads
/// that each seed and then initialise weights (or run dropout) interleave their draws and get
/// different numbers from run to run. Code that needs reproducible draws holds this guard from
/// `tch::manual_seed` to its last draw; [`crate::inference::write_random_model_dir`] does.
pub fn global_rng_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    // A panic while holding the guard leaves no broken state behind: the generator is reseeded
    // by the next holder anyway.
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
