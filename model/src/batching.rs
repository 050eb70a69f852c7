//! How a set of text lines is split into forward passes.
//!
//! A batch is padded to its widest line, and on a CPU the network's cost grows with the padded
//! area: a batch mixing a 40 px and a 360 px line does nine times the work of the short line for
//! it. Large padded batches also stop fitting in cache, so beyond a point a bigger batch is
//! slower per line, not faster. Lines are therefore sorted by width and grouped so that each pass
//! holds similar widths and stays under a budget of padded columns (images × widest image).

/// Limits of one forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// Most images in one pass (at least 1).
    pub max_images: usize,
    /// Most padded pixel columns in one pass: images × the widest image's width. A single image
    /// wider than this still runs, alone. `usize::MAX` disables the limit.
    pub max_columns: usize,
}

impl BatchLimits {
    /// Padded columns per pass on a CPU. Chosen from a one-thread profile of the trained `small`
    /// model on 64 synthetic lines of 43-366 px: budgets of 768-2048 columns read 91-113
    /// lines/s over two runs, 4096 read 88-92 and unsorted batches of 16 read 37 (batch 1: 66). The profile was
    /// noisy; the budget is a sensible middle, not a tuned optimum.
    pub const CPU_COLUMNS: usize = 2048;

    /// Defaults for a device: a column budget on CPUs, none on GPUs (which want big batches).
    pub fn for_device(device: tch::Device) -> Self {
        Self {
            max_images: 64,
            max_columns: if device.is_cuda() {
                usize::MAX
            } else {
                Self::CPU_COLUMNS
            },
        }
    }
}

/// Group the images of the given widths into passes: indices into `widths`, narrowest first,
/// each group within `limits`. Every index appears exactly once.
pub fn plan_batches(widths: &[u32], limits: BatchLimits) -> Vec<Vec<usize>> {
    let max_images = limits.max_images.max(1);
    let mut order: Vec<usize> = (0..widths.len()).collect();
    order.sort_by_key(|&i| widths[i]);
    let mut passes: Vec<Vec<usize>> = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    for i in order {
        // Sorted ascending, so the newcomer is the widest and sets the padded width.
        let padded = (current.len() + 1).saturating_mul(widths[i] as usize);
        if !current.is_empty() && (current.len() >= max_images || padded > limits.max_columns) {
            passes.push(std::mem::take(&mut current));
        }
        current.push(i);
    }
    if !current.is_empty() {
        passes.push(current);
    }
    passes
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn limits(max_images: usize, max_columns: usize) -> BatchLimits {
        BatchLimits {
            max_images,
            max_columns,
        }
    }

    #[test]
    fn similar_widths_share_a_pass_and_outliers_do_not() {
        let widths = [300, 40, 50, 310, 45];
        let passes = plan_batches(&widths, limits(8, 700));
        assert_eq!(passes, vec![vec![1, 4, 2], vec![0, 3]]);
    }

    #[test]
    fn an_image_wider_than_the_budget_runs_alone() {
        let passes = plan_batches(&[5000, 10, 10], limits(8, 100));
        assert_eq!(passes, vec![vec![1, 2], vec![0]]);
    }

    #[test]
    fn no_limit_means_one_pass_up_to_max_images() {
        let widths = [10, 400, 20, 30, 40];
        assert_eq!(plan_batches(&widths, limits(64, usize::MAX)).len(), 1);
        let passes = plan_batches(&widths, limits(2, usize::MAX));
        assert_eq!(passes, vec![vec![0, 2], vec![3, 4], vec![1]]);
        assert!(plan_batches(&[], limits(4, 100)).is_empty());
    }

    proptest! {
        #[test]
        fn every_image_once_and_every_pass_within_limits(
            widths in proptest::collection::vec(1u32..2000, 0..80),
            max_images in 1usize..40,
            max_columns in 1usize..5000,
        ) {
            let passes = plan_batches(&widths, limits(max_images, max_columns));
            let mut seen: Vec<usize> = passes.iter().flatten().copied().collect();
            seen.sort_unstable();
            prop_assert_eq!(seen, (0..widths.len()).collect::<Vec<_>>());
            for pass in &passes {
                prop_assert!(!pass.is_empty() && pass.len() <= max_images);
                let widest = pass.iter().map(|&i| widths[i] as usize).max().unwrap();
                prop_assert!(pass.len() == 1 || pass.len() * widest <= max_columns);
            }
        }
    }
}
