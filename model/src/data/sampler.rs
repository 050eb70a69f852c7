//! Which sample sits at each global position of a training run.
//!
//! Position `p` (= step * batch_size + i) maps to a data set index by a pure function, so a
//! run resumed at any step reads exactly the samples an uninterrupted run would have read,
//! without replaying anything. A finite set of `n` samples is visited in a fresh random order
//! each epoch (`p / n`): a keyed bijection on `0..n` (a Feistel network over the next power
//! of four, cycle-walking back into range), which needs no memory and no state.
//!
//! A mix of sources ([`MixSampler`]) first decides which source position `p` reads, by a
//! weighted interleave that is itself a pure function of `p` (so any `p` is reachable without
//! replaying the ones before), then hands the source its own position to its own [`Sampler`].

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

/// Fixed-point one: weights are shares of 2^32.
const ONE: u128 = 1 << 32;

/// Which source of a weighted mix, and which sample of it, sits at each global position.
///
/// Sources are split off one at a time: source `l` takes a share `w_l / (w_l + w_{l+1} + …)`
/// of the positions the earlier sources left, spread evenly (position `q` of that remainder
/// is source `l`'s iff `⌊(q+1)·r + φ⌋ > ⌊q·r + φ⌋`, with `φ` a phase drawn from the seed).
/// The number of earlier positions a source took is then a closed formula, which is its own
/// position, so every step is O(sources) and needs no state. Within a source, samples come in
/// that source's own seeded epoch order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MixSampler {
    /// Per split level: the share (of 2^32) taken by source `l`, and the phase.
    levels: Vec<(u128, u128)>,
    samplers: Vec<Sampler>,
}

impl MixSampler {
    /// Order for sources of the given sizes (`None`: endless) and weights (positive, finite;
    /// they need not sum to 1). Panics on an empty list or a bad weight: the config is checked
    /// before a sampler is built.
    pub fn new(sources: &[(Option<u64>, f64)], seed: u64) -> Self {
        assert!(!sources.is_empty(), "a mix needs at least one source");
        assert!(
            sources.iter().all(|(_, w)| w.is_finite() && *w > 0.0),
            "mix weights must be positive and finite"
        );
        let mut rest: f64 = sources.iter().map(|(_, w)| w).sum();
        let mut levels = Vec::with_capacity(sources.len());
        for (l, (_, w)) in sources.iter().enumerate() {
            let share = if l + 1 == sources.len() {
                ONE
            } else {
                // At least one position in 2^32, never all of them: every source is drawn.
                ((w / rest) * ONE as f64)
                    .round()
                    .clamp(1.0, (ONE - 1) as f64) as u128
            };
            rest -= w;
            let phase = u128::from(mix_seed(seed, 0x6d69_7800 + l as u64) as u32);
            levels.push((share, phase));
        }
        let samplers = sources
            .iter()
            .enumerate()
            .map(|(l, (len, _))| Sampler::new(*len, mix_seed(seed, l as u64)))
            .collect();
        Self { levels, samplers }
    }

    /// Number of sources.
    pub fn sources(&self) -> usize {
        self.samplers.len()
    }

    /// `(source, index within it)` at global `position`.
    pub fn pick(&self, position: u64) -> (usize, u64) {
        let mut q = u128::from(position);
        for (l, &(share, phase)) in self.levels.iter().enumerate() {
            let taken = |q: u128| (q * share + phase) >> 32;
            let before = taken(q);
            if taken(q + 1) > before {
                return (l, self.samplers[l].index_at(before as u64));
            }
            q -= before;
        }
        unreachable!("the last source takes every remaining position")
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

    #[test]
    fn mix_follows_the_weights_in_every_window_and_is_seekable() {
        let m = MixSampler::new(&[(None, 0.7), (Some(10), 0.2), (Some(3), 0.1)], 4);
        assert_eq!(m.sources(), 3);
        let picks: Vec<(usize, u64)> = (0..10_000).map(|p| m.pick(p)).collect();
        // Shares hold within any window, not just on average: a batch gets its mix.
        for window in picks.chunks(100) {
            let count = |s| window.iter().filter(|(src, _)| *src == s).count();
            assert!((69..=71).contains(&count(0)), "{}", count(0));
            assert!((19..=21).contains(&count(1)), "{}", count(1));
            assert!((9..=11).contains(&count(2)), "{}", count(2));
        }
        // A finite source still walks its epochs: every line once per 10 of its draws.
        let mut firsts: Vec<u64> = picks
            .iter()
            .filter(|(s, _)| *s == 1)
            .take(10)
            .map(|(_, i)| *i)
            .collect();
        firsts.sort_unstable();
        assert_eq!(firsts, (0..10).collect::<Vec<_>>());
        // The endless source counts up through its own positions.
        let endless: Vec<u64> = picks
            .iter()
            .filter(|(s, _)| *s == 0)
            .map(|(_, i)| *i)
            .collect();
        assert_eq!(endless, (0..endless.len() as u64).collect::<Vec<_>>());
        // Any position is reachable directly, in any order, with the same answer.
        let again = MixSampler::new(&[(None, 0.7), (Some(10), 0.2), (Some(3), 0.1)], 4);
        for p in [9_999u64, 0, 5_000, 1 << 40] {
            assert_eq!(again.pick(p), m.pick(p));
        }
        assert_eq!(again.pick(1234), picks[1234]);
        // Another seed interleaves differently.
        let other = MixSampler::new(&[(None, 0.7), (Some(10), 0.2), (Some(3), 0.1)], 5);
        assert_ne!(
            (0..100).map(|p| other.pick(p)).collect::<Vec<_>>(),
            picks[..100]
        );
    }

    #[test]
    fn tiny_weights_still_draw_and_single_sources_take_everything() {
        let m = MixSampler::new(&[(None, 1.0), (None, 1e-3)], 1);
        let rare = (0..100_000).filter(|&p| m.pick(p).0 == 1).count();
        assert!((99..=101).contains(&rare), "{rare}");
        let one = MixSampler::new(&[(Some(5), 2.0)], 1);
        assert!((0..50).all(|p| one.pick(p).0 == 0));
    }
}
