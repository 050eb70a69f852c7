//! An exponential moving average of the weights (`optimizer.ema_decay`).
//!
//! The optimizer keeps updating the network's own variables; the average is a second copy
//! that follows them after every step and stands in for them only while the trial evaluates
//! and keeps its best weights ([`Ema::swap`] in, read, swap back). So the training path is the
//! same with or without it, to the bit. Every variable is averaged, BatchNorm's running
//! statistics included, so the averaged network is consistent with itself.

use std::collections::BTreeMap;

use anyhow::Result;
use tch::nn::VarStore;
use tch::Tensor;
use textrec_model::tensorio;

/// The averaged copy of every variable of a `VarStore`, in name order.
pub struct Ema {
    decay: f64,
    /// (name, the network's variable, its average).
    pairs: Vec<(String, Tensor, Tensor)>,
}

impl Ema {
    /// An average of `vs`'s variables that starts at their current values.
    pub fn new(vs: &VarStore, decay: f64) -> Self {
        let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let pairs = vars
            .into_iter()
            .map(|(name, var)| {
                let avg = tch::no_grad(|| var.detach().copy());
                (name, var, avg)
            })
            .collect();
        Self { decay, pairs }
    }

    /// The decay used after update number `step` (1-based): the configured one, but lower in
    /// the first steps, when the starting weights are not worth remembering.
    pub fn decay_at(&self, step: u64) -> f64 {
        self.decay.min((1.0 + step as f64) / (10.0 + step as f64))
    }

    /// Move the average toward the network's current weights, after optimizer step `step`.
    pub fn update(&mut self, step: u64) {
        let weight = 1.0 - self.decay_at(step);
        tch::no_grad(|| {
            for (_, var, avg) in &mut self.pairs {
                let _ = avg.lerp_(var, weight);
            }
        });
    }

    /// Exchange the network's weights and the average in place: called once, the network
    /// holds the average (and this the trained weights); called again, both are back.
    pub fn swap(&mut self) {
        tch::no_grad(|| {
            for (_, var, avg) in &mut self.pairs {
                let held = var.detach().copy();
                var.detach().copy_(avg);
                avg.copy_(&held);
            }
        });
    }

    /// The average as safetensors bytes (a checkpoint's `ema.safetensors`).
    pub fn to_safetensors(&self) -> Result<Vec<u8>> {
        let named: Vec<(String, Tensor)> = self
            .pairs
            .iter()
            .map(|(name, _, avg)| (name.clone(), avg.shallow_clone()))
            .collect();
        tensorio::to_safetensors(&named, None)
    }

    /// Restore the average from a checkpoint's bytes; every variable must be there with its
    /// shape, or nothing changes.
    pub fn load(&mut self, bytes: &[u8]) -> Result<()> {
        let averages: BTreeMap<String, Tensor> = self
            .pairs
            .iter()
            .map(|(name, _, avg)| (name.clone(), avg.shallow_clone()))
            .collect();
        tensorio::load_into(
            &averages,
            bytes,
            "the weights' average does not fit the network's variables",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind, Tensor};

    fn store() -> (VarStore, Tensor) {
        let vs = VarStore::new(Device::Cpu);
        let w = vs
            .root()
            .var("w", &[3], tch::nn::Init::Const(0.0))
            .set_requires_grad(false);
        (vs, w)
    }

    fn values(t: &Tensor) -> Vec<f32> {
        Vec::<f32>::try_from(t.to_kind(Kind::Float)).unwrap()
    }

    #[test]
    fn the_average_follows_the_weights_with_a_warm_up() {
        let (vs, w) = store();
        let mut ema = Ema::new(&vs, 0.9);
        // Step 1's decay is 2/11, not 0.9: the zeros it started from count for little.
        assert!((ema.decay_at(1) - 2.0 / 11.0).abs() < 1e-12);
        assert_eq!(ema.decay_at(1000), 0.9);
        tch::no_grad(|| {
            let _ = w.detach().fill_(1.0);
        });
        ema.update(1);
        ema.swap();
        let avg = values(&w);
        assert!(avg.iter().all(|v| (v - 9.0 / 11.0).abs() < 1e-6), "{avg:?}");
        ema.swap();
        assert_eq!(
            values(&w),
            vec![1.0; 3],
            "swapping twice restores the weights"
        );
    }

    #[test]
    fn a_saved_average_loads_back_exactly_and_a_foreign_one_is_refused() {
        let (vs, w) = store();
        let mut ema = Ema::new(&vs, 0.99);
        tch::no_grad(|| w.detach().copy_(&Tensor::from_slice(&[0.1f32, -2.5, 7.0])));
        ema.update(50);
        let bytes = ema.to_safetensors().unwrap();

        let (vs2, w2) = store();
        let mut restored = Ema::new(&vs2, 0.99);
        restored.load(&bytes).unwrap();
        restored.swap();
        ema.swap();
        assert_eq!(values(&w2), values(&w));

        let other = VarStore::new(Device::Cpu);
        let _ = other.root().var("v", &[3], tch::nn::Init::Const(0.0));
        let err = Ema::new(&other, 0.99).load(&bytes).unwrap_err().to_string();
        assert!(err.contains("does not fit"), "{err}");
        assert!(err.contains("missing tensor `v`"), "{err}");
        assert!(err.contains("unexpected tensor `w`"), "{err}");
    }
}
