//! The pre-norm Transformer decoder over character tokens.

use tch::nn::{self, Module};
use tch::Tensor;

use super::attention::{linear, CrossAttention, KvCache, MemoryKv, SelfAttention};
use super::posenc;

/// One pre-norm layer: self-attention, cross-attention, feed-forward, each as a residual
/// branch `x + dropout(f(norm(x)))`.
#[derive(Debug)]
struct DecoderLayer {
    norm1: nn::LayerNorm,
    self_attn: SelfAttention,
    norm2: nn::LayerNorm,
    cross_attn: CrossAttention,
    norm3: nn::LayerNorm,
    fc1: nn::Linear,
    fc2: nn::Linear,
    dropout: f64,
}

impl DecoderLayer {
    fn new(vs: &nn::Path, d: i64, heads: i64, ff: i64, dropout: f64) -> Self {
        let ln = |name: &str| nn::layer_norm(vs / name, vec![d], Default::default());
        Self {
            norm1: ln("norm1"),
            self_attn: SelfAttention::new(&(vs / "self_attn"), d, heads),
            norm2: ln("norm2"),
            cross_attn: CrossAttention::new(&(vs / "cross_attn"), d, heads),
            norm3: ln("norm3"),
            fc1: linear(vs / "fc1", d, ff, (d, ff)),
            fc2: linear(vs / "fc2", ff, d, (ff, d)),
            dropout,
        }
    }

    fn feed_forward(&self, xs: &Tensor, train: bool) -> Tensor {
        xs.apply(&self.norm3)
            .apply(&self.fc1)
            .gelu("none")
            .dropout(self.dropout, train)
            .apply(&self.fc2)
            .dropout(self.dropout, train)
    }

    fn forward_t(&self, xs: &Tensor, mem: &MemoryKv, key_mask: &Tensor, train: bool) -> Tensor {
        let p = self.dropout;
        let xs = xs
            + self
                .self_attn
                .forward(&xs.apply(&self.norm1))
                .dropout(p, train);
        let xs = &xs
            + self
                .cross_attn
                .forward(&xs.apply(&self.norm2), mem, key_mask)
                .dropout(p, train);
        &xs + self.feed_forward(&xs, train)
    }

    fn step(
        &self,
        xs: &Tensor,
        cache: &mut Option<KvCache>,
        capacity: i64,
        mem: &MemoryKv,
        key_mask: &Tensor,
    ) -> Tensor {
        let xs = xs + self.self_attn.step(&xs.apply(&self.norm1), cache, capacity);
        let xs = &xs
            + self
                .cross_attn
                .forward(&xs.apply(&self.norm2), mem, key_mask);
        &xs + self.feed_forward(&xs, false)
    }
}

/// Everything incremental decoding keeps between steps for one image batch.
#[derive(Debug)]
pub struct DecoderState {
    memory_kv: Vec<MemoryKv>,
    key_mask: Tensor,
    caches: Vec<Option<KvCache>>,
    capacity: i64,
    position: i64,
}

impl DecoderState {
    /// Number of tokens fed so far.
    pub fn position(&self) -> i64 {
        self.position
    }
}

/// Token embedding, decoder layers, final norm and output projection.
#[derive(Debug)]
pub struct Decoder {
    embed: Tensor,
    layers: Vec<DecoderLayer>,
    norm: nn::LayerNorm,
    out: nn::Linear,
    d_model: i64,
    dropout: f64,
}

impl Decoder {
    /// A decoder of `layers` layers over a vocabulary of `vocab` ids.
    pub fn new(
        vs: &nn::Path,
        vocab: i64,
        d: i64,
        heads: i64,
        layers: i64,
        ff: i64,
        dropout: f64,
    ) -> Self {
        // std d^-1/2 so that the ×√d scaling below yields unit-variance inputs.
        let embed = vs.var(
            "embed",
            &[vocab, d],
            nn::Init::Randn {
                mean: 0.0,
                stdev: (d as f64).powf(-0.5),
            },
        );
        let lp = vs / "layers";
        let layers = (0..layers)
            .map(|i| DecoderLayer::new(&(&lp / i), d, heads, ff, dropout))
            .collect();
        let norm = nn::layer_norm(vs / "norm", vec![d], Default::default());
        let out = nn::linear(
            vs / "out",
            d,
            vocab,
            nn::LinearConfig {
                ws_init: nn::Init::Randn {
                    mean: 0.0,
                    stdev: 0.02,
                },
                bs_init: Some(nn::Init::Const(0.0)),
                bias: true,
            },
        );
        Self {
            embed,
            layers,
            norm,
            out,
            d_model: d,
            dropout,
        }
    }

    /// Scaled embeddings plus positions `start..` of `tokens` `[B, T]`.
    fn embed(&self, tokens: &Tensor, start: i64) -> Tensor {
        let t = tokens.size()[1];
        let emb =
            Tensor::embedding(&self.embed, tokens, -1, false, false) * (self.d_model as f64).sqrt();
        let pos = posenc::sinusoid(start, t, self.d_model, tokens.device()).to_kind(emb.kind());
        emb + pos.unsqueeze(0)
    }

    /// Teacher-forced logits `[B, T, V]` for `tokens` `[B, T]` against `memory` `[B, S, d]`.
    pub fn forward_t(
        &self,
        tokens: &Tensor,
        memory: &Tensor,
        key_mask: &Tensor,
        train: bool,
    ) -> Tensor {
        let mut xs = self.embed(tokens, 0).dropout(self.dropout, train);
        for layer in &self.layers {
            let mem = layer.cross_attn.memory_kv(memory);
            xs = layer.forward_t(&xs, &mem, key_mask, train);
        }
        xs.apply(&self.norm).apply(&self.out)
    }

    /// Prepare incremental decoding: the cross-attention keys and values of every layer are
    /// computed here once, not at every step. `capacity` is the expected number of steps.
    pub fn start(&self, memory: &Tensor, key_mask: &Tensor, capacity: i64) -> DecoderState {
        DecoderState {
            memory_kv: self
                .layers
                .iter()
                .map(|l| l.cross_attn.memory_kv(memory))
                .collect(),
            key_mask: key_mask.shallow_clone(),
            caches: self.layers.iter().map(|_| None).collect(),
            capacity,
            position: 0,
        }
    }

    /// Feed the next tokens `[B, n]` (n = 1 when decoding) and get their logits `[B, n, V]`.
    /// Equals the matching rows of [`Decoder::forward_t`] (eval mode) on the whole prefix.
    pub fn step(&self, tokens: &Tensor, state: &mut DecoderState) -> Tensor {
        let mut xs = self.embed(tokens, state.position);
        for (i, layer) in self.layers.iter().enumerate() {
            xs = layer.step(
                &xs,
                &mut state.caches[i],
                state.capacity,
                &state.memory_kv[i],
                &state.key_mask,
            );
        }
        state.position += tokens.size()[1];
        self.norm.forward(&xs).apply(&self.out)
    }
}
