//! How `local` commands reach a running `local run`: its pid file says whether one holds the
//! storage, and requests (manifests to apply, rollbacks) are files dropped into its inbox folder,
//! one per request, written atomically and taken in the order they were written.

use std::path::PathBuf;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::crd::{ModelDeployment, TrainingRun};
use crate::local::process;
use crate::local::state::{write_atomic, LocalPaths};

/// A request to a running `local run`, written into its inbox.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Request {
    /// Apply these objects (as `kubectl apply` would).
    Apply {
        /// TrainingRuns.
        runs: Vec<TrainingRun>,
        /// ModelDeployments.
        deployments: Vec<ModelDeployment>,
    },
    /// Set `spec.rollbackTo` of a ModelDeployment.
    Rollback {
        /// ModelDeployment name.
        deployment: String,
        /// Revision to go back to.
        revision: i64,
    },
}

/// Pid of the `local run` that holds this storage root, if one is alive.
pub fn running_pid(paths: &LocalPaths) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(paths.pid_file())
        .ok()?
        .trim()
        .parse()
        .ok()?;
    (pid != std::process::id() && process::alive(pid)).then_some(pid)
}

/// Write a request for the running `local run`.
pub fn submit(paths: &LocalPaths, req: &Request) -> Result<PathBuf> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let path = paths
        .inbox()
        .join(format!("{nanos:024}-{}.json", std::process::id()));
    write_atomic(&path, &serde_json::to_vec(req)?)?;
    Ok(path)
}

/// Take every request waiting in the inbox, oldest first. Each file is removed once read, so an
/// unreadable one is reported once and not again on every pass.
pub fn take(paths: &LocalPaths) -> Vec<Result<Request>> {
    let Ok(rd) = std::fs::read_dir(paths.inbox()) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|f| {
            let req = std::fs::read(&f)
                .map_err(anyhow::Error::from)
                .and_then(|b| serde_json::from_slice::<Request>(&b).map_err(Into::into))
                .with_context(|| format!("unreadable request {}", f.display()));
            let _ = std::fs::remove_file(&f);
            req
        })
        .collect()
}
