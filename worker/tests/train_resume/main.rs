//! Exact resume and the failure modes of `textrec-worker train`, through the built binary.
//!
//! Every run uses the `tiny` example config on one CPU thread, so runs are reproducible to the
//! bit: a trial interrupted in any way and restarted must end with the same `model.safetensors`
//! as one that never stopped. Each resume test also checks that a checkpoint was really used,
//! so a run that silently restarted from scratch cannot pass. The full-disk and read-only tests
//! mount a small or read-only tmpfs in a private mount namespace (`unshare -m`) and say so when
//! the machine does not allow it.

#[path = "../train_support/mod.rs"]
mod train_support;

mod bad_outputs;
mod fine_tuning;
mod harness;
mod interruptions;
mod language_model;
mod trial_outputs;
