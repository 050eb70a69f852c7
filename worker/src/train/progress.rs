//! Progress for people and for the operator.
//!
//! People get a progress bar when stderr is a terminal and log lines otherwise (a bar in a pod
//! log is noise). The operator reads `progress.json` ([`TrialProgress`]) from storage, and the
//! pod's termination message (the same JSON, kept under Kubernetes' 4 KiB limit).

use std::io::IsTerminal;
use std::path::Path;

use anyhow::{Context, Result};
use bytes::Bytes;
use indicatif::{ProgressBar, ProgressStyle};
use textrec_contract::metrics::TrialProgress;
use textrec_contract::{layout, Store};

/// Kubernetes truncates termination messages at 4096 bytes; stay safely below.
const TERMINATION_LIMIT: usize = 4000;

/// Terminal progress: a bar or periodic log lines.
pub struct Display {
    bar: Option<ProgressBar>,
}

impl Display {
    /// A bar from `start` to `max_steps` when stderr is a terminal, nothing otherwise.
    pub fn new(start: u64, max_steps: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(max_steps);
            bar.set_style(
                ProgressStyle::with_template(
                    "{elapsed_precise} [{bar:30}] {pos}/{len} steps ({eta} left) {msg}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar.set_position(start);
            bar
        });
        Self { bar }
    }

    /// Advance to `step`.
    pub fn step(&self, step: u64) {
        if let Some(b) = &self.bar {
            b.set_position(step);
        }
    }

    /// Report a line: the bar's message on a terminal, an info log otherwise.
    pub fn report(&self, line: String) {
        match &self.bar {
            Some(b) => b.set_message(line),
            None => tracing::info!("{line}"),
        }
    }

    /// A message that must stay visible (printed above the bar).
    pub fn note(&self, line: String) {
        match &self.bar {
            Some(b) => b.suspend(|| tracing::info!("{line}")),
            None => tracing::info!("{line}"),
        }
    }

    /// A warning that must stay visible: something went wrong that training survives.
    pub fn warn(&self, line: String) {
        match &self.bar {
            Some(b) => b.suspend(|| tracing::warn!("{line}")),
            None => tracing::warn!("{line}"),
        }
    }

    /// Remove the bar.
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// Write `progress.json`.
pub async fn write(store: &Store, progress: &TrialProgress) -> Result<()> {
    let json = serde_json::to_vec_pretty(progress)?;
    store.put(layout::PROGRESS, Bytes::from(json)).await
}

/// Read `progress.json`, if there is one that parses.
pub async fn read(store: &Store) -> Option<TrialProgress> {
    let bytes = store.get_opt(layout::PROGRESS).await.ok()??;
    serde_json::from_slice(&bytes).ok()
}

/// The progress as compact JSON of at most 4000 bytes (Kubernetes truncates a termination
/// message at 4096): the message is shortened first, since everything else is small and
/// fixed-size.
pub fn termination_message(progress: &TrialProgress) -> String {
    let mut p = progress.clone();
    loop {
        let json = serde_json::to_string(&p).expect("progress serializes");
        if json.len() <= TERMINATION_LIMIT {
            return json;
        }
        match &mut p.message {
            Some(m) if m.len() > 16 => {
                let over = json.len() - TERMINATION_LIMIT + 3;
                let mut cut = m.len().saturating_sub(over.max(m.len() / 4));
                while !m.is_char_boundary(cut) {
                    cut -= 1;
                }
                m.truncate(cut);
                m.push('…');
            }
            _ => {
                p.model = None;
                p.checkpoint = None;
                p.message = None;
            }
        }
    }
}

/// Write the termination message file (`--termination-log`).
pub fn write_termination_log(path: &Path, progress: &TrialProgress) -> Result<()> {
    std::fs::write(path, termination_message(progress))
        .with_context(|| format!("cannot write the termination log {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use textrec_contract::metrics::WorkerPhase;

    #[test]
    fn termination_message_stays_under_the_limit() {
        let p = TrialProgress {
            phase: WorkerPhase::Failed,
            step: 3,
            max_steps: 10,
            samples_per_sec: None,
            latest: None,
            best: None,
            checkpoint: None,
            model: None,
            resumes: 0,
            updated: chrono::Utc::now(),
            message: Some("é".repeat(10_000)),
        };
        let m = termination_message(&p);
        assert!(m.len() <= TERMINATION_LIMIT, "{}", m.len());
        let back: TrialProgress = serde_json::from_str(&m).unwrap();
        assert_eq!(back.step, 3);
        assert!(back.message.unwrap().ends_with('…'));
    }
}
