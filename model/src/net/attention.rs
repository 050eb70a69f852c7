//! Multi-head attention, written out so that decoding can keep a key/value cache.
//!
//! The score/softmax/weighted-sum core is libtorch's `scaled_dot_product_attention`, which on
//! CPU runs a fused kernel that partitions work by (batch, head) only, so results do not depend
//! on thread timing.

use tch::nn;
use tch::{Kind, Tensor};

/// A linear layer with Xavier-uniform weights and zero bias. `fan` is the (in, out) pair the
/// init is scaled for; fused projections pass the size of one part.
pub(super) fn linear(vs: nn::Path, d_in: i64, d_out: i64, fan: (i64, i64)) -> nn::Linear {
    let bound = (6.0 / (fan.0 + fan.1) as f64).sqrt();
    nn::linear(
        vs,
        d_in,
        d_out,
        nn::LinearConfig {
            ws_init: nn::Init::Uniform {
                lo: -bound,
                up: bound,
            },
            bs_init: Some(nn::Init::Const(0.0)),
            bias: true,
        },
    )
}

/// `[B, T, H·Dh]` → `[B, H, T, Dh]`.
fn split_heads(xs: &Tensor, heads: i64) -> Tensor {
    let (b, t, d) = xs.size3().expect("[B, T, D]");
    xs.view([b, t, heads, d / heads]).transpose(1, 2)
}

/// `[B, H, T, Dh]` → `[B, T, H·Dh]`.
fn merge_heads(xs: &Tensor) -> Tensor {
    let (b, h, t, dh) = xs.size4().expect("[B, H, T, Dh]");
    xs.transpose(1, 2).contiguous().view([b, t, h * dh])
}

fn attend(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>, causal: bool) -> Tensor {
    Tensor::scaled_dot_product_attention(q, k, v, mask, 0.0, causal, None::<f64>, false)
}

/// Keys and values of the positions decoded so far, per layer: `[B, H, capacity, Dh]` buffers
/// of which the first `len` positions are filled. Preallocated so that a step writes one slot
/// instead of copying the whole history.
#[derive(Debug)]
pub struct KvCache {
    k: Tensor,
    v: Tensor,
    len: i64,
}

impl KvCache {
    /// An empty cache for `capacity` positions shaped like `like` (`[B, H, *, Dh]`); it grows
    /// when a longer sequence is decoded.
    pub fn new(like: &Tensor, capacity: i64) -> Self {
        let (b, h, _, dh) = like.size4().expect("[B, H, T, Dh]");
        let opts = (like.kind(), like.device());
        Self {
            k: Tensor::zeros([b, h, capacity, dh], opts),
            v: Tensor::zeros([b, h, capacity, dh], opts),
            len: 0,
        }
    }

    /// Number of cached positions.
    pub fn len(&self) -> i64 {
        self.len
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn push(&mut self, k: &Tensor, v: &Tensor) {
        let n = k.size()[2];
        let capacity = self.k.size()[2];
        if self.len + n > capacity {
            let extra = (self.len + n).max(2 * capacity) - capacity;
            let mut size = self.k.size();
            size[2] = extra;
            let pad = Tensor::zeros(&size, (self.k.kind(), self.k.device()));
            self.k = Tensor::cat(&[&self.k, &pad], 2);
            self.v = Tensor::cat(&[&self.v, &pad], 2);
        }
        self.k.narrow(2, self.len, n).copy_(k);
        self.v.narrow(2, self.len, n).copy_(v);
        self.len += n;
    }

    fn keys(&self) -> Tensor {
        self.k.narrow(2, 0, self.len)
    }

    fn values(&self) -> Tensor {
        self.v.narrow(2, 0, self.len)
    }
}

/// Causal multi-head self-attention with a fused QKV projection.
#[derive(Debug)]
pub struct SelfAttention {
    qkv: nn::Linear,
    out: nn::Linear,
    heads: i64,
}

impl SelfAttention {
    /// `d` model width, `heads` dividing it.
    pub fn new(vs: &nn::Path, d: i64, heads: i64) -> Self {
        Self {
            qkv: linear(vs / "qkv", d, 3 * d, (d, d)),
            out: linear(vs / "out", d, d, (d, d)),
            heads,
        }
    }

    fn project(&self, xs: &Tensor) -> (Tensor, Tensor, Tensor) {
        let parts = xs.apply(&self.qkv).chunk(3, -1);
        let [q, k, v] = [0, 1, 2].map(|i| split_heads(&parts[i], self.heads));
        (q, k, v)
    }

    /// Full causal attention over `[B, T, d]`.
    pub fn forward(&self, xs: &Tensor) -> Tensor {
        let (q, k, v) = self.project(xs);
        merge_heads(&attend(&q, &k, &v, None, true)).apply(&self.out)
    }

    /// Bidirectional attention over `[B, T, d]`; `key_mask` `[B, 1, 1, T]` is true for the
    /// valid positions.
    pub fn forward_masked(&self, xs: &Tensor, key_mask: &Tensor) -> Tensor {
        let (q, k, v) = self.project(xs);
        merge_heads(&attend(&q, &k, &v, Some(key_mask), false)).apply(&self.out)
    }

    /// Attention of the new positions `xs` (`[B, n, d]`, usually n = 1) to the cache and
    /// themselves; appends their keys and values to `cache`. Causal within the new positions.
    pub fn step(&self, xs: &Tensor, cache: &mut Option<KvCache>, capacity: i64) -> Tensor {
        let (q, k, v) = self.project(xs);
        let cache = cache.get_or_insert_with(|| KvCache::new(&k, capacity));
        let n = q.size()[2];
        cache.push(&k, &v);
        let causal_mask = (n > 1).then(|| {
            // Query i (absolute position len - n + i) sees keys 0..=len - n + i.
            let total = cache.len();
            let qpos =
                Tensor::arange_start(total - n, total, (Kind::Int64, xs.device())).unsqueeze(1);
            let kpos = Tensor::arange(total, (Kind::Int64, xs.device())).unsqueeze(0);
            kpos.le_tensor(&qpos)
        });
        let ys = attend(
            &q,
            &cache.keys(),
            &cache.values(),
            causal_mask.as_ref(),
            false,
        );
        merge_heads(&ys).apply(&self.out)
    }
}

/// Keys and values of the encoder memory for one cross-attention layer, computed once per
/// image batch.
#[derive(Debug)]
pub struct MemoryKv {
    k: Tensor,
    v: Tensor,
}

/// Multi-head attention from decoder positions to the encoder memory.
#[derive(Debug)]
pub struct CrossAttention {
    q: nn::Linear,
    kv: nn::Linear,
    out: nn::Linear,
    heads: i64,
}

impl CrossAttention {
    /// `d` model width, `heads` dividing it.
    pub fn new(vs: &nn::Path, d: i64, heads: i64) -> Self {
        Self {
            q: linear(vs / "q", d, d, (d, d)),
            kv: linear(vs / "kv", d, 2 * d, (d, d)),
            out: linear(vs / "out", d, d, (d, d)),
            heads,
        }
    }

    /// Project the memory `[B, S, d]` to keys and values.
    pub fn memory_kv(&self, memory: &Tensor) -> MemoryKv {
        let parts = memory.apply(&self.kv).chunk(2, -1);
        // Contiguous once here: attention kernels copy strided keys and values on every call,
        // and a decoding step would otherwise pay for copying the whole memory.
        MemoryKv {
            k: split_heads(&parts[0], self.heads).contiguous(),
            v: split_heads(&parts[1], self.heads).contiguous(),
        }
    }

    /// Attend from `xs` `[B, T, d]` to the memory; `key_mask` `[B, 1, 1, S]` is true for valid
    /// memory positions.
    pub fn forward(&self, xs: &Tensor, mem: &MemoryKv, key_mask: &Tensor) -> Tensor {
        let q = split_heads(&xs.apply(&self.q), self.heads);
        merge_heads(&attend(&q, &mem.k, &mem.v, Some(key_mask), false)).apply(&self.out)
    }
}
