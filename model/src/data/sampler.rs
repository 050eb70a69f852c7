//! Which sample sits at each global position of a training run.
//!
//! Position `p` (= step * batch_size + i) maps to a data set index by a pure function, so a
//! run resumed at any step reads exactly the samples an uninterrupted run would have read,
//! without replaying anything. A finite set of `n` samples is visited in a fresh random order
//! each epoch (`p / n`): a keyed bijection on `0..n` (a Feistel network over the next power
//! of four, cycle-walking back into range), which needs no memory and no state.

use super::mix_seed;

/// Deterministic, seekable sample order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sampler {
    len: Option<u64>,
    seed: u64,
    half_bits: u32,
}

const ROUNDS: u64 = 4;

impl Sampler {
    /// Order for a set of `len` samples (`None`: endless, position = index).
    pub fn new(len: Option<u64>, seed: u64) -> Self {
        // Smallest even bit width whose range holds n; each Feistel half gets half of it.
        let half_bits = match len {
            Some(n) if n > 1 => {
                let bits = 64 - (n - 1).leading_zeros();
                bits.div_ceil(2).max(1)
            }
            _ => 1,
        };
        Self {
            len,
            seed,
            half_bits,
        }
    }

    /// The data set index at global `position`. For an empty set this is 0 (which the data
    /// set then rejects).
    pub fn index_at(&self, position: u64) -> u64 {
        match self.len {
            None => position,
            Some(0) => 0,
            Some(1) => 0,
            Some(n) => {
                let (epoch, offset) = (position / n, position % n);
                let key = mix_seed(self.seed, epoch);
                let mut x = offset;
                loop {
                    x = self.permute(key, x);
                    if x < n {
                        return x;
                    }
                }
            }
        }
    }

    /// The epoch `position` falls in (0 for endless sets).
    pub fn epoch_at(&self, position: u64) -> u64 {
        match self.len {
            Some(n) if n > 0 => position / n,
            _ => 0,
        }
    }

    /// A keyed bijection on `0..4^half_bits`.
    fn permute(&self, key: u64, x: u64) -> u64 {
        let mask = (1u64 << self.half_bits) - 1;
        let (mut left, mut right) = (x >> self.half_bits, x & mask);
        for round in 0..ROUNDS {
            let f = mix_seed(key ^ round.wrapping_mul(0x2545_f491_4f6c_dd1d), right) & mask;
            (left, right) = (right, left ^ f);
        }
        (left << self.half_bits) | right
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_index_once_per_epoch() {
        for n in [1u64, 2, 3, 7, 16, 100, 1000, 4097] {
            let s = Sampler::new(Some(n), 42);
            for epoch in 0..3 {
                let mut seen: Vec<u64> = (epoch * n..(epoch + 1) * n)
                    .map(|p| s.index_at(p))
                    .collect();
                seen.sort_unstable();
                assert_eq!(seen, (0..n).collect::<Vec<_>>(), "n={n} epoch={epoch}");
            }
        }
    }

    #[test]
    fn epochs_and_seeds_reorder() {
        let n = 1000;
        let s = Sampler::new(Some(n), 1);
        let order = |s: &Sampler, e: u64| {
            (e * n..(e + 1) * n)
                .map(|p| s.index_at(p))
                .collect::<Vec<_>>()
        };
        assert_ne!(order(&s, 0), order(&s, 1));
        assert_ne!(order(&s, 0), order(&Sampler::new(Some(n), 2), 0));
        assert_ne!(order(&s, 0), (0..n).collect::<Vec<_>>());
        // Roughly uniform: no long runs of consecutive indices.
        let o = order(&s, 0);
        let consecutive = o.windows(2).filter(|w| w[1] == w[0] + 1).count();
        assert!(consecutive < 20, "{consecutive}");
    }

    #[test]
    fn seekable_and_deterministic() {
        let a = Sampler::new(Some(777), 9);
        let b = Sampler::new(Some(777), 9);
        for p in [0u64, 1, 776, 777, 778, 10_000, 1 << 40, u64::MAX] {
            assert_eq!(a.index_at(p), b.index_at(p));
            assert!(a.index_at(p) < 777);
        }
        let forward: Vec<u64> = (0..3000).map(|p| a.index_at(p)).collect();
        let backward: Vec<u64> = (0..3000).rev().map(|p| a.index_at(p)).collect();
        assert_eq!(forward, backward.into_iter().rev().collect::<Vec<_>>());
        assert_eq!(a.epoch_at(1554), 2);
    }

    #[test]
    fn endless_and_degenerate_sets() {
        let s = Sampler::new(None, 5);
        assert_eq!(s.index_at(123_456), 123_456);
        assert_eq!(Sampler::new(Some(1), 5).index_at(99), 0);
        assert_eq!(Sampler::new(Some(0), 5).index_at(3), 0);
    }
}
