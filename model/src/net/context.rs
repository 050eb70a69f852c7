//! Sequence context for the CTC head: pre-norm Transformer encoder layers over the frames
//! (feature columns) of the line.
//!
//! The ResNet sees about five characters around each frame; a CTC head on its features alone
//! labels every frame without knowing the word it sits in. A layer of bidirectional
//! self-attention over the whole line gives each frame that context (as the BiLSTM of a CRNN
//! does) for a few percent of the encoder's cost. Padding frames are masked out of the keys,
//! so a line reads the same alone as inside a wider batch.
//!
//! The branch is residual around the frames and its output projection starts at zero: at
//! initialisation the CTC head sees the convolutional features exactly as without it, and the
//! context is added as it becomes useful. (Added directly, the position code swamps the
//! still-small features and CTC training stalls for hundreds of steps; measured.)

use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use super::attention::{linear, SelfAttention};
use super::posenc;

/// One pre-norm encoder layer: `x + attn(norm(x))`, then `x + ff(norm(x))`.
#[derive(Debug)]
struct ContextLayer {
    norm1: nn::LayerNorm,
    attn: SelfAttention,
    norm2: nn::LayerNorm,
    fc1: nn::Linear,
    fc2: nn::Linear,
    dropout: f64,
}

impl ContextLayer {
    fn new(vs: &nn::Path, d: i64, heads: i64, ff: i64, dropout: f64) -> Self {
        let ln = |name: &str| nn::layer_norm(vs / name, vec![d], Default::default());
        Self {
            norm1: ln("norm1"),
            attn: SelfAttention::new(&(vs / "attn"), d, heads),
            norm2: ln("norm2"),
            fc1: linear(vs / "fc1", d, ff, (d, ff)),
            fc2: linear(vs / "fc2", ff, d, (ff, d)),
            dropout,
        }
    }

    fn forward_t(&self, xs: &Tensor, key_mask: &Tensor, train: bool) -> Tensor {
        let p = self.dropout;
        let xs = xs
            + self
                .attn
                .forward_masked(&xs.apply(&self.norm1), key_mask)
                .dropout(p, train);
        let ff = xs
            .apply(&self.norm2)
            .apply(&self.fc1)
            .gelu("none")
            .dropout(p, train)
            .apply(&self.fc2)
            .dropout(p, train);
        &xs + ff
    }
}

/// Encoder layers over the frames, a final norm and a zero-initialised projection, added to
/// the frames.
#[derive(Debug)]
pub struct FrameContext {
    layers: Vec<ContextLayer>,
    norm: nn::LayerNorm,
    proj: nn::Linear,
}

impl FrameContext {
    /// `layers` layers of width `d` (at least one).
    pub fn new(vs: &nn::Path, d: i64, heads: i64, layers: i64, ff: i64, dropout: f64) -> Self {
        let lp = vs / "layers";
        Self {
            layers: (0..layers)
                .map(|i| ContextLayer::new(&(&lp / i), d, heads, ff, dropout))
                .collect(),
            norm: nn::layer_norm(vs / "norm", vec![d], Default::default()),
            proj: nn::linear(
                vs / "proj",
                d,
                d,
                nn::LinearConfig {
                    ws_init: nn::Init::Const(0.0),
                    bs_init: Some(nn::Init::Const(0.0)),
                    bias: true,
                },
            ),
        }
    }

    /// `frames` `[B, W, d]`, `valid` `[B]` i64 valid frames of each line (≥ 1); returns
    /// `frames` plus their context, `[B, W, d]`.
    pub fn forward_t(&self, frames: &Tensor, valid: &Tensor, train: bool) -> Tensor {
        let (b, w, d) = frames.size3().expect("[B, W, d]");
        let pos = posenc::sinusoid(0, w, d, frames.device()).to_kind(frames.kind());
        let key_mask = Tensor::arange(w, (Kind::Int64, frames.device()))
            .view([1, w])
            .lt_tensor(&valid.view([b, 1]))
            .view([b, 1, 1, w]);
        let mut xs = frames + pos.unsqueeze(0);
        for layer in &self.layers {
            xs = layer.forward_t(&xs, &key_mask, train);
        }
        frames + self.norm.forward(&xs).apply(&self.proj)
    }
}
