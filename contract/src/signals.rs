//! SIGTERM and SIGINT for the long-running commands (`textrec-operator run`, `local run`,
//! `textrec-worker serve`).
//!
//! The handlers are installed once, when [`Termination::install`] is called, and stay installed:
//! a signal that arrives while the caller is busy elsewhere (between two passes of a loop, say)
//! is kept and returned by the next [`Termination::recv`], never lost. Creating a fresh
//! `ctrl_c()` future on each pass instead drops the signals that arrive between passes.

/// Which signal asked the process to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// SIGINT (Ctrl-C).
    Interrupt,
    /// SIGTERM (what Kubernetes sends).
    Terminate,
}

impl Stop {
    /// A short description for logs: "SIGINT received".
    pub fn describe(self) -> &'static str {
        match self {
            Stop::Interrupt => "SIGINT received",
            Stop::Terminate => "SIGTERM received",
        }
    }
}

/// SIGTERM and SIGINT, listened for from installation on.
pub struct Termination {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Termination {
    /// Install the handlers. Needs a tokio runtime with signals enabled.
    pub fn install() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Self {
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// The next stop signal (one already received returns at once). Cancel-safe: dropping the
    /// future before it resolves loses nothing.
    pub async fn recv(&mut self) -> Stop {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.term.recv() => Stop::Terminate,
                _ = self.int.recv() => Stop::Interrupt,
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            Stop::Interrupt
        }
    }
}

/// Resolves on the first SIGTERM or SIGINT from the call on, and logs which arrived. Where the
/// handlers cannot be installed it says so and waits for Ctrl-C alone.
pub async fn stop_requested() {
    match Termination::install() {
        Ok(mut t) => {
            // Awaited outside the log macro: a macro whose level is off evaluates nothing.
            let signal = t.recv().await;
            tracing::info!("{}", signal.describe());
        }
        Err(e) => {
            tracing::warn!("cannot listen for SIGTERM: {e}; stopping on Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_signal_raised_while_nobody_waits_is_kept() {
        let mut t = Termination::install().unwrap();
        // Raised before anyone awaits `recv` (as between two passes of a loop).
        unsafe { libc_raise(15) };
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), t.recv()).await;
        assert_eq!(got.unwrap(), Stop::Terminate);
    }

    extern "C" {
        #[link_name = "raise"]
        fn libc_raise(sig: i32) -> i32;
    }
}
