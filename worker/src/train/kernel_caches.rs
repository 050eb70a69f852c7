//! Bounds on libtorch's CPU kernel caches for the trainer.
//!
//! Two caches sit under libtorch's CPU kernels, both keyed by tensor shape and both 1024 entries
//! by default: oneDNN's compiled primitives (convolutions, matrix products, layout reorders)
//! and ideep's per-thread cache of oneDNN matrix-product primitives, which libtorch's bf16
//! matrix products go through. A training step meets new shapes every time (line widths and
//! text lengths change from batch to batch), so the entries are reused within a step and hardly
//! ever across steps: a full cache is memory that buys no speed. Under bf16 autocast the two
//! held about 550 MiB of the recipe trainer's peak RSS, ideep's matrix products most of it
//! (BENCHMARKS.md, "ideep's matrix-product cache: the bf16 trainer at 630 MiB"). A cache's capacity
//! decides when a kernel is built, never what it computes, so the weights do not change.
//!
//! Each bound is an environment variable that the library reads when it first builds a
//! kernel; one already set in the environment is left as it is.

/// One cache's bound: the environment variable the library reads and the capacity the trainer
/// gives it.
#[derive(Debug, Clone, Copy)]
pub struct CacheBound {
    /// What the cache holds, for the log.
    pub cache: &'static str,
    /// The environment variable the library reads its capacity from.
    pub var: &'static str,
    /// The trainer's capacity.
    pub capacity: &'static str,
}

/// The trainer's bounds.
pub const TRAINER_BOUNDS: [CacheBound; 2] = [
    // A capacity of 8 took 20 MiB less and trained 12% slower.
    CacheBound {
        cache: "oneDNN primitive cache",
        var: "ONEDNN_PRIMITIVE_CACHE_CAPACITY",
        capacity: "32",
    },
    // ideep keeps one per thread, and the trainer's steps run on one. 1 holds no repeats at
    // all and trained as fast as 16, which held 120 MiB more.
    CacheBound {
        cache: "ideep matmul cache",
        var: "LRU_CACHE_CAPACITY",
        capacity: "1",
    },
];

/// Sets each of [`TRAINER_BOUNDS`] that the environment does not set. Call before any tensor
/// operation and before any other thread exists, so that nothing reads the environment while
/// it changes and no cache is built with the default first.
pub fn bound_for_training() {
    for bound in TRAINER_BOUNDS {
        if std::env::var_os(bound.var).is_none() {
            std::env::set_var(bound.var, bound.capacity);
        }
    }
}

/// The capacities in force, for the trainer's log: `oneDNN primitive cache: 32
/// (ONEDNN_PRIMITIVE_CACHE_CAPACITY), ...`.
pub fn describe() -> String {
    TRAINER_BOUNDS
        .iter()
        .map(|bound| {
            let value = std::env::var(bound.var).unwrap_or_else(|_| "1024, the default".into());
            format!("{}: {value} ({})", bound.cache, bound.var)
        })
        .collect::<Vec<_>>()
        .join(", ")
}
