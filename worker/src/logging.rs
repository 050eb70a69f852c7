//! Logging setup: human-readable on a terminal, JSON lines when asked (inside Kubernetes).

use tracing_subscriber::{fmt, EnvFilter};

/// Install the global subscriber. `RUST_LOG` filters (default `info`).
pub fn init(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}
