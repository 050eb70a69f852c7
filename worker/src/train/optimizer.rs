//! AdamW written with plain tch tensors.
//!
//! tch's built-in optimizers keep their moments inside libtorch where they cannot be read or
//! restored, and exact resume needs both. So the update is spelled out here: decoupled weight
//! decay (Loshchilov & Hutter), bias-corrected moments, and global gradient-norm clipping. Every
//! loop runs over the parameters sorted by name, because floating-point sums depend on order and
//! a `HashMap` would change it from one process to the next.

use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Result};
use tch::{Kind, Tensor};
use textrec_contract::config::OptimizerConfig;

/// One trainable tensor and its Adam moments.
struct Param {
    name: String,
    tensor: Tensor,
    /// Whether decoupled weight decay applies (matrices and convolution kernels only).
    decay: bool,
    m: Tensor,
    v: Tensor,
}

/// AdamW over the trainable variables of a `VarStore`.
pub struct AdamW {
    params: Vec<Param>,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    /// Updates applied so far (the `t` of the bias corrections).
    steps: u64,
}

/// Whether a parameter gets weight decay. Norm scales, biases and embeddings are excluded:
/// shrinking them toward zero fights the normalisation or erases rare tokens instead of
/// regularising. We recognise them by rank (1-D) and by name (embeddings are 2-D).
pub fn decays(name: &str, tensor: &Tensor) -> bool {
    let lower = name.to_ascii_lowercase();
    let is_embedding = lower.contains("emb") || lower.contains("pos_");
    tensor.dim() >= 2 && !is_embedding && !lower.contains("norm")
}

impl AdamW {
    /// An optimizer over `variables` (name → tensor, e.g. `VarStore::variables()`); tensors
    /// that do not require gradients (batch-norm running statistics) are left out.
    pub fn new(
        variables: impl IntoIterator<Item = (String, Tensor)>,
        cfg: &OptimizerConfig,
    ) -> Self {
        let sorted: BTreeMap<String, Tensor> = variables
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        let params = sorted
            .into_iter()
            .map(|(name, tensor)| {
                let decay = decays(&name, &tensor);
                let m = tensor.zeros_like().detach();
                let v = tensor.zeros_like().detach();
                Param {
                    name,
                    tensor,
                    decay,
                    m,
                    v,
                }
            })
            .collect();
        Self {
            params,
            beta1: cfg.beta1,
            beta2: cfg.beta2,
            eps: cfg.eps,
            weight_decay: cfg.weight_decay,
            steps: 0,
        }
    }

    /// Number of parameter tensors optimized.
    pub fn len(&self) -> usize {
        self.params.len()
    }

    /// Whether there is nothing to optimize.
    pub fn is_empty(&self) -> bool {
        self.params.is_empty()
    }

    /// Names of the parameters that get weight decay, for the start-up log.
    pub fn decayed_names(&self) -> Vec<&str> {
        self.params
            .iter()
            .filter(|p| p.decay)
            .map(|p| p.name.as_str())
            .collect()
    }

    /// Updates applied so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Give every parameter a zero gradient buffer. Called once before the first step of a
    /// process, fresh or resumed: afterwards each backward pass accumulates into zeros, so the
    /// first step after a resume computes exactly what the uninterrupted run computed.
    pub fn init_grads(&mut self) {
        let total = self
            .params
            .iter()
            .map(|p| p.tensor.sum(Kind::Float))
            .reduce(|a, b| a + b);
        if let Some(total) = total {
            (total * 0.0).backward();
        }
        self.zero_grad();
    }

    /// Zero every gradient (kept allocated, so accumulation order never changes).
    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            p.tensor.zero_grad();
        }
    }

    /// Multiply every gradient by `factor` (undoing a loss scale).
    pub fn scale_grads(&self, factor: f64) {
        tch::no_grad(|| {
            for p in &self.params {
                let mut g = p.tensor.grad();
                if g.defined() {
                    let _ = g.g_mul_scalar_(factor);
                }
            }
        })
    }

    /// The global L2 norm of all gradients (in f64, summed in name order).
    pub fn grad_norm(&self) -> f64 {
        tch::no_grad(|| {
            let mut total = 0f64;
            for p in &self.params {
                let g = p.tensor.grad();
                if g.defined() {
                    let sq = g.to_kind(Kind::Double).square().sum(Kind::Double);
                    total += sq.double_value(&[]);
                }
            }
            total.sqrt()
        })
    }

    /// Scale gradients so their global norm is at most `max_norm`; returns the norm before
    /// clipping. `max_norm <= 0` only measures.
    pub fn clip_grad_norm(&self, max_norm: f64) -> f64 {
        let norm = self.grad_norm();
        if max_norm > 0.0 && norm.is_finite() && norm > max_norm {
            self.scale_grads(max_norm / (norm + 1e-6));
        }
        norm
    }

    /// Apply one AdamW update with learning rate `lr`.
    pub fn step(&mut self, lr: f64) {
        self.steps += 1;
        let t = self.steps as i32;
        let bc1 = 1.0 - self.beta1.powi(t);
        let bc2 = 1.0 - self.beta2.powi(t);
        let (b1, b2, eps, wd) = (self.beta1, self.beta2, self.eps, self.weight_decay);
        tch::no_grad(|| {
            for p in &mut self.params {
                let g = p.tensor.grad();
                if !g.defined() {
                    // Unused this step (e.g. a head with zero loss weight): Adam leaves it alone.
                    continue;
                }
                let g = g.to_kind(p.m.kind());
                // m = b1·m + (1-b1)·g ;  v = b2·v + (1-b2)·g²
                let _ = p.m.g_mul_scalar_(b1);
                let _ = p.m.g_add_(&(&g * (1.0 - b1)));
                let _ = p.v.g_mul_scalar_(b2);
                let _ = p.v.g_add_(&(g.square() * (1.0 - b2)));
                if p.decay && wd > 0.0 {
                    // Decoupled: shrink the weights directly, not through the gradient.
                    let _ = p.tensor.g_mul_scalar_(1.0 - lr * wd);
                }
                let denom = (&p.v / bc2).sqrt() + eps;
                let update = (&p.m / denom) * (lr / bc1);
                let _ = p.tensor.g_sub_(&update);
            }
        });
    }

    /// The moments as named tensors (`m.<param>`, `v.<param>`), for a checkpoint.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(2 * self.params.len());
        for p in &self.params {
            out.push((format!("m.{}", p.name), p.m.shallow_clone()));
            out.push((format!("v.{}", p.name), p.v.shallow_clone()));
        }
        out
    }

    /// Restore moments saved by [`AdamW::state_tensors`] and the update count.
    pub fn load_state(&mut self, tensors: Vec<(String, Tensor)>, steps: u64) -> Result<()> {
        let mut by_name: BTreeMap<String, Tensor> = tensors.into_iter().collect();
        for p in &mut self.params {
            for (prefix, slot) in [("m", &mut p.m), ("v", &mut p.v)] {
                let key = format!("{prefix}.{}", p.name);
                let t = by_name
                    .remove(&key)
                    .ok_or_else(|| anyhow!("optimizer state has no `{key}`"))?;
                if t.size() != slot.size() {
                    bail!(
                        "optimizer state `{key}` has shape {:?}, expected {:?}",
                        t.size(),
                        slot.size()
                    );
                }
                tch::no_grad(|| slot.copy_(&t));
            }
        }
        if let Some(extra) = by_name.keys().next() {
            bail!("optimizer state has `{extra}`, which the model does not have");
        }
        self.steps = steps;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> OptimizerConfig {
        OptimizerConfig {
            weight_decay: 0.1,
            ..OptimizerConfig::default()
        }
    }

    #[test]
    fn matches_the_adamw_formula_on_one_scalar() {
        let w = Tensor::from_slice(&[1.0f32, -2.0])
            .reshape([1, 2])
            .set_requires_grad(true);
        let mut opt = AdamW::new([("lin.weight".to_string(), w.shallow_clone())], &cfg());
        let loss = (&w * &w).sum(Kind::Float); // grad = 2w
        loss.backward();
        opt.step(0.1);
        // First step: m̂ = g, v̂ = g², update = lr·g/(|g|+eps) ≈ lr·sign(g); decay 1 - lr·wd.
        let got: Vec<f32> = Vec::try_from(w.flatten(0, -1)).unwrap();
        let expect = [1.0 * (1.0 - 0.01) - 0.1, -2.0 * (1.0 - 0.01) + 0.1];
        for (g, e) in got.iter().zip(expect) {
            assert!((*g as f64 - e).abs() < 1e-5, "{got:?} vs {expect:?}");
        }
    }

    #[test]
    fn biases_norms_and_embeddings_are_not_decayed() {
        let m = Tensor::zeros([2, 2], (Kind::Float, tch::Device::Cpu));
        let b = Tensor::zeros([2], (Kind::Float, tch::Device::Cpu));
        assert!(decays("dec.layer0.ff1.weight", &m));
        assert!(!decays("dec.layer0.ff1.bias", &b));
        assert!(!decays("dec.tok_emb.weight", &m));
        assert!(!decays("dec.layer0.norm1.weight", &b));
    }

    #[test]
    fn clipping_bounds_the_global_norm() {
        let w = Tensor::from_slice(&[3.0f32, 4.0]).set_requires_grad(true);
        let opt = AdamW::new([("w".to_string(), w.shallow_clone())], &cfg());
        (&w * &w).sum(Kind::Float).backward(); // grad = (6, 8), norm 10
        let before = opt.clip_grad_norm(1.0);
        assert!((before - 10.0).abs() < 1e-6);
        assert!((opt.grad_norm() - 1.0).abs() < 1e-4);
    }

    #[test]
    fn state_round_trips() {
        let w = Tensor::from_slice(&[1.0f32, 2.0]).set_requires_grad(true);
        let mut a = AdamW::new([("w".to_string(), w.shallow_clone())], &cfg());
        (&w * &w).sum(Kind::Float).backward();
        a.step(0.01);
        let saved: Vec<(String, Tensor)> = a
            .state_tensors()
            .into_iter()
            .map(|(n, t)| (n, t.copy()))
            .collect();
        let w2 = Tensor::from_slice(&[1.0f32, 2.0]).set_requires_grad(true);
        let mut b = AdamW::new([("w".to_string(), w2)], &cfg());
        b.load_state(saved, a.steps()).unwrap();
        assert_eq!(b.steps(), 1);
        for ((_, x), (_, y)) in a.state_tensors().iter().zip(b.state_tensors().iter()) {
            assert!(x.equal(y));
        }
        assert!(b.load_state(vec![], 1).is_err());
    }
}
