//! SIGTERM/SIGINT handling: a flag the training loop polls between steps.
//!
//! Kubernetes sends SIGTERM before a spot node goes away and kills with SIGKILL after the grace
//! period; the loop finishes the step it is in, checkpoints, and exits with
//! [`textrec_contract::exit::INTERRUPTED`]. A second signal while stopping does not kill the
//! process early: a half-written checkpoint would only be skipped later, but the step's work
//! would be lost.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};

/// Set once SIGTERM or SIGINT arrived.
#[derive(Clone, Default)]
pub struct StopFlag(Arc<AtomicBool>);

impl StopFlag {
    /// Register the handlers for SIGTERM and SIGINT.
    pub fn install() -> Result<Self> {
        let flag = Arc::new(AtomicBool::new(false));
        for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
            signal_hook::flag::register(sig, flag.clone())
                .with_context(|| format!("cannot install a handler for signal {sig}"))?;
        }
        Ok(Self(flag))
    }

    /// Whether a stop was requested.
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// Request a stop from inside the process (`--stop-at-step`).
    pub fn set(&self) {
        self.0.store(true, Ordering::Relaxed)
    }
}
