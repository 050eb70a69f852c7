//! What `textrec-worker eval` is told by whoever runs it.

/// Set (to `1`) in the environment of an `eval` whose score chooses between models, as the
/// operator's promotion evaluations are: such an `eval` refuses a set reserved for independent
/// evaluation (a folder holding an `EVALUATION-ONLY` file), which must never choose anything.
/// An environment variable rather than a flag, so that a worker image older than the operator
/// still runs the evaluation (and only misses the check).
pub const SELECTION_ENV: &str = "TEXTREC_EVAL_SELECTION";
