//! How a set of text lines is split into forward passes.
//!
//! A batch is padded to its widest line, and on a CPU the network's cost grows with the padded
//! area: a batch mixing a 40 px and a 360 px line does nine times the work of the short line for
//! it. Large padded batches also stop fitting in cache, so beyond a point a bigger batch is
//! slower per line, not faster. Lines are therefore sorted by width and grouped so that each pass
//! holds similar widths and stays under a budget of padded columns (images × widest image).
//! Each pass also has a fixed cost (on a CPU, mostly the decoder's per-step overhead), so the
//! grouping weighs padding a line to a wider neighbour against running one more pass.

/// Limits of one forward pass, and what a pass costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// Most images in one pass (at least 1).
    pub max_images: usize,
    /// Most padded pixel columns in one pass: images × the widest image's width. A single image
    /// wider than this still runs, alone. `usize::MAX` disables the limit.
    pub max_columns: usize,
    /// The fixed cost of a forward pass, in padded pixel columns: the decoding steps and
    /// per-operator overhead a pass pays whatever its size, expressed as the encoder work of that
    /// many columns. The planner pads a line to a wider neighbour only while that costs less than
    /// running another pass.
    pub pass_cost_columns: usize,
}

impl BatchLimits {
    /// Padded columns per pass on a CPU. Chosen from a one-thread profile of the trained `small`
    /// model on 64 synthetic lines of 43-366 px: budgets of 768-2048 columns read 91-113
    /// lines/s over two runs, 4096 read 88-92 and unsorted batches of 16 read 37 (batch 1: 66). The profile was
    /// noisy; the budget is a sensible middle, not a tuned optimum.
    pub const CPU_COLUMNS: usize = 2048;

    /// A forward pass's fixed cost on a CPU, in columns. The one-thread profile of the `small`
    /// model (`examples/pass_profile.rs`) puts the encoder at about 0.05 ms per 32-px column
    /// and a pass's decoding overhead at about 0.45 ms per step, some 15 steps for a line of
    /// a dozen characters: about 7 ms, or 130 columns.
    pub const CPU_PASS_COST: usize = 128;

    /// On a GPU, padding is nearly free next to launching another pass.
    pub const GPU_PASS_COST: usize = 1 << 30;

    /// Defaults for a device: a column budget on CPUs, none on GPUs (which want big batches).
    pub fn for_device(device: tch::Device) -> Self {
        let cuda = device.is_cuda();
        Self {
            max_images: 64,
            max_columns: if cuda { usize::MAX } else { Self::CPU_COLUMNS },
            pass_cost_columns: if cuda {
                Self::GPU_PASS_COST
            } else {
                Self::CPU_PASS_COST
            },
        }
    }
}

/// Group the images of the given widths into passes: indices into `widths`, narrowest first,
/// each group within `limits`. Every index appears exactly once.
///
/// Passes are runs of the width-sorted lines, chosen to minimize the total cost
/// `passes × pass_cost_columns + Σ images × widest` (exactly, by dynamic programming over the
/// sorted order; a gathering is at most a few dozen lines).
pub fn plan_batches(widths: &[u32], limits: BatchLimits) -> Vec<Vec<usize>> {
    let max_images = limits.max_images.max(1);
    let mut order: Vec<usize> = (0..widths.len()).collect();
    order.sort_by_key(|&i| widths[i]);
    let n = order.len();
    let pass_cost = limits.pass_cost_columns as u128;
    // best[j]: the cheapest plan for the first j sorted images; start[j]: where its last pass
    // begins.
    let mut best = vec![0u128; n + 1];
    let mut start = vec![0usize; n + 1];
    for j in 1..=n {
        let widest = widths[order[j - 1]] as u128;
        best[j] = u128::MAX;
        for i in (j.saturating_sub(max_images)..j).rev() {
            let size = (j - i) as u128;
            // Growing the pass downwards keeps its widest image: once over budget, always over.
            if size > 1 && size * widest > limits.max_columns as u128 {
                break;
            }
            let cost = best[i] + pass_cost + size * widest;
            // Ties go to the longer pass (smaller i): fewer passes for the same work.
            if cost <= best[j] {
                best[j] = cost;
                start[j] = i;
            }
        }
    }
    let mut passes = Vec::new();
    let mut j = n;
    while j > 0 {
        let i = start[j];
        passes.push(order[i..j].to_vec());
        j = i;
    }
    passes.reverse();
    passes
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn limits(max_images: usize, max_columns: usize, pass_cost_columns: usize) -> BatchLimits {
        BatchLimits {
            max_images,
            max_columns,
            pass_cost_columns,
        }
    }

    /// The plan's cost: passes × pass cost + padded columns.
    fn cost(widths: &[u32], passes: &[Vec<usize>], l: BatchLimits) -> u128 {
        passes
            .iter()
            .map(|p| {
                let widest = p.iter().map(|&i| widths[i] as u128).max().unwrap();
                l.pass_cost_columns as u128 + p.len() as u128 * widest
            })
            .sum()
    }

    /// The cheapest cost over every split of the sorted widths into runs within `l`.
    fn brute_force(widths: &[u32], l: BatchLimits) -> u128 {
        let mut sorted = widths.to_vec();
        sorted.sort_unstable();
        let n = sorted.len();
        if n == 0 {
            return 0;
        }
        let mut cheapest = u128::MAX;
        for cuts in 0u32..(1 << (n - 1)) {
            let mut total = 0u128;
            let mut begin = 0;
            let mut ok = true;
            for end in 1..=n {
                if end == n || cuts & (1 << (end - 1)) != 0 {
                    let size = end - begin;
                    let widest = sorted[end - 1] as usize;
                    if size > l.max_images || (size > 1 && size * widest > l.max_columns) {
                        ok = false;
                        break;
                    }
                    total += l.pass_cost_columns as u128 + (size * widest) as u128;
                    begin = end;
                }
            }
            if ok {
                cheapest = cheapest.min(total);
            }
        }
        cheapest
    }

    #[test]
    fn similar_widths_share_a_pass_and_outliers_do_not() {
        let widths = [300, 40, 50, 310, 45];
        let passes = plan_batches(&widths, limits(8, 700, 128));
        assert_eq!(passes, vec![vec![1, 4, 2], vec![0, 3]]);
    }

    #[test]
    fn padding_is_weighed_against_another_pass() {
        // Three 70 px lines and two 160 px ones: padding the short lines costs 270 columns.
        let widths = [70, 160, 70, 160, 70];
        let cheap_pass = plan_batches(&widths, limits(8, 2048, 100));
        assert_eq!(cheap_pass, vec![vec![0, 2, 4], vec![1, 3]]);
        let dear_pass = plan_batches(&widths, limits(8, 2048, 1000));
        assert_eq!(dear_pass, vec![vec![0, 2, 4, 1, 3]]);
    }

    #[test]
    fn an_image_wider_than_the_budget_runs_alone() {
        let passes = plan_batches(&[5000, 10, 10], limits(8, 100, 128));
        assert_eq!(passes, vec![vec![1, 2], vec![0]]);
    }

    #[test]
    fn on_a_gpu_one_pass_up_to_max_images() {
        let gpu = |max_images| limits(max_images, usize::MAX, BatchLimits::GPU_PASS_COST);
        let widths = [10, 400, 20, 30, 40];
        assert_eq!(plan_batches(&widths, gpu(64)).len(), 1);
        let passes = plan_batches(&widths, gpu(2));
        assert_eq!(passes.len(), 3);
        assert!(passes.iter().all(|p| p.len() <= 2));
        assert!(plan_batches(&[], gpu(4)).is_empty());
    }

    proptest! {
        #[test]
        fn every_image_once_and_every_pass_within_limits(
            widths in proptest::collection::vec(1u32..2000, 0..80),
            max_images in 1usize..40,
            max_columns in 1usize..5000,
            pass_cost in 0usize..4000,
        ) {
            let passes = plan_batches(&widths, limits(max_images, max_columns, pass_cost));
            let mut seen: Vec<usize> = passes.iter().flatten().copied().collect();
            seen.sort_unstable();
            prop_assert_eq!(seen, (0..widths.len()).collect::<Vec<_>>());
            for pass in &passes {
                prop_assert!(!pass.is_empty() && pass.len() <= max_images);
                let widest = pass.iter().map(|&i| widths[i] as usize).max().unwrap();
                prop_assert!(pass.len() == 1 || pass.len() * widest <= max_columns);
            }
        }

        #[test]
        fn the_plan_is_the_cheapest_split_of_the_sorted_lines(
            widths in proptest::collection::vec(1u32..500, 0..11),
            max_images in 1usize..8,
            max_columns in 1usize..2500,
            pass_cost in 0usize..600,
        ) {
            let l = limits(max_images, max_columns, pass_cost);
            let passes = plan_batches(&widths, l);
            prop_assert_eq!(cost(&widths, &passes, l), brute_force(&widths, l));
        }
    }
}
