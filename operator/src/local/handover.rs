//! `local run` when another `local run` already holds the storage: hand it the manifests through
//! its inbox, then follow the runs in its state until they finish (or return at once with
//! `--detach`).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Result;
use kube::ResourceExt;

use crate::crd::RunPhase;
use crate::local::inbox::{submit, Request};
use crate::local::manifest::Manifests;
use crate::local::process;
use crate::local::state::{LocalPaths, StateFile};

/// The `local run` with `pid` holds this storage: give it the manifests, then follow the runs
/// unless `detach`. Returns the exit code: 0 when every run succeeded.
pub async fn hand_over(
    detach: bool,
    paths: &LocalPaths,
    file: &StateFile,
    loaded: Manifests,
    pid: u32,
) -> Result<i32> {
    let runs: Vec<String> = loaded.runs.iter().map(|r| r.name_any()).collect();
    let generations_before: BTreeMap<String, i64> = {
        let st = file.load().await?;
        st.runs
            .iter()
            .map(|(n, r)| (n.clone(), r.run.metadata.generation.unwrap_or(0)))
            .collect()
    };
    let path = submit(
        paths,
        &Request::Apply {
            runs: loaded.runs,
            deployments: loaded.deployments,
        },
    )?;
    eprintln!(
        "a local run (pid {pid}) is already running on this storage: handed the manifests to it ({})",
        path.display()
    );
    if detach || runs.is_empty() {
        return Ok(0);
    }
    eprintln!(
        "following {}; Ctrl-C stops following, not the runs",
        runs.join(", ")
    );
    let mut last = String::new();
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(130),
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
        if path.exists() {
            if !process::alive(pid) {
                anyhow::bail!("the local run (pid {pid}) exited before it read the manifests");
            }
            continue;
        }
        let st = file.load().await?;
        let mut done = true;
        let mut ok = true;
        let mut line = Vec::new();
        for name in &runs {
            let Some(rec) = st.runs.get(name) else {
                done = false;
                continue;
            };
            let status = rec.run.status.clone().unwrap_or_default();
            // A changed spec is only done once the runner has observed it.
            let observed = status.observed_generation == rec.run.metadata.generation
                && rec.run.metadata.generation.unwrap_or(0)
                    >= generations_before.get(name).copied().unwrap_or(0);
            let phase = status.phase.filter(|_| observed);
            done &= phase.is_some_and(RunPhase::is_terminal);
            ok &= phase == Some(RunPhase::Succeeded);
            line.push(format!(
                "{name}: {} {}",
                phase.map_or("Pending".to_string(), |p| format!("{p:?}")),
                status.trials_done.unwrap_or_default()
            ));
        }
        let line = line.join("; ");
        if line != last {
            eprintln!("{line}");
            last = line;
        }
        if done {
            return Ok(if ok { 0 } else { 1 });
        }
        if !process::alive(pid) {
            anyhow::bail!("the local run (pid {pid}) stopped before the runs finished; `local run` again to continue");
        }
    }
}
