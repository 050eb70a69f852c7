//! Process exit codes of `textrec-worker`, shared with the operator's `podFailurePolicy` and the
//! local runner. Values follow BSD `sysexits.h` where one fits, so shells and humans recognise them.

/// Training finished (or evaluation/recognition succeeded).
pub const SUCCESS: i32 = 0;
/// A failure that may go away on retry (storage hiccup, out of memory, a bug). Counts against the
/// trial's restart limit.
pub const FAILURE: i32 = 1;
/// Command-line usage error (what `clap` exits with).
pub const USAGE: i32 = 2;
/// Stopped by SIGTERM/SIGINT after writing a checkpoint: resume by starting the same command again.
/// Not a failure: the operator's `podFailurePolicy` ignores it (`EX_TEMPFAIL`).
pub const INTERRUPTED: i32 = 75;
/// The configuration cannot work (unknown field, missing font or corpus, empty data set, bad
/// output URL). Retrying cannot help, so the operator fails the trial at once (`EX_CONFIG`).
pub const CONFIG_ERROR: i32 = 78;

/// A human-readable meaning of an exit code, for logs and status messages.
pub fn describe(code: i32) -> &'static str {
    match code {
        SUCCESS => "succeeded",
        FAILURE => "failed",
        USAGE => "usage error",
        INTERRUPTED => "interrupted (checkpointed, resumable)",
        CONFIG_ERROR => "configuration error",
        137 => "killed (SIGKILL, e.g. out of memory or node reclaimed)",
        143 => "terminated by SIGTERM before it could checkpoint",
        _ => "failed",
    }
}

/// An error whose process exit code is [`CONFIG_ERROR`]. Wrap the cause in this (or return it
/// through `anyhow`) so `main` can map it to the right exit code.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl ConfigError {
    /// Build a configuration error from anything printable.
    pub fn new(msg: impl Into<String>) -> Self {
        Self(msg.into())
    }

    /// The error for one config field: "`field`: `why`" (`optimizer.lr: must be positive`).
    pub fn field(field: &str, why: impl std::fmt::Display) -> Self {
        Self(format!("{field}: {why}"))
    }
}

/// The exit code for an error chain: [`CONFIG_ERROR`] when any cause is a [`ConfigError`].
pub fn code_for(err: &anyhow::Error) -> i32 {
    if err
        .chain()
        .any(|c| c.downcast_ref::<ConfigError>().is_some())
    {
        CONFIG_ERROR
    } else {
        FAILURE
    }
}
