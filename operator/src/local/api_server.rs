//! The local stand-in for the API server: it stores the objects that `local run` and its
//! inbox hand it, as `kubectl apply` and `kubectl patch` would (creation metadata, generations
//! bumped by spec changes, status kept).

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use kube::ResourceExt;

use crate::crd::{ModelDeployment, TrainingRun};
use crate::local::inbox::Request;
use crate::local::now;
use crate::local::state::{DeploymentRecord, LocalState, RunRecord};

/// Merge applied objects into the state as the API server would: new objects are created
/// (generation 1), changed specs bump the generation, status is kept. Returns log lines.
pub fn apply(
    state: &mut LocalState,
    runs: Vec<TrainingRun>,
    deployments: Vec<ModelDeployment>,
) -> Vec<String> {
    let mut log = Vec::new();
    let stamp = now();
    for mut run in runs {
        let name = run.name_any();
        match state.runs.get_mut(&name) {
            Some(rec) => {
                if rec.run.spec != run.spec || rec.run.metadata.labels != run.metadata.labels {
                    if rec.run.spec.storage.url != run.spec.storage.url {
                        log.push(format!(
                            "TrainingRun {name}: storage changed from {} to {}; unfinished trials start over there",
                            rec.run.spec.storage.url, run.spec.storage.url
                        ));
                    }
                    let finished = rec.trials.values().filter(|t| t.is_finished()).count();
                    if finished > 0 && rec.run.spec != run.spec {
                        log.push(format!(
                            "TrainingRun {name}: spec changed; its {finished} finished trials are kept (as a cluster keeps finished Jobs)"
                        ));
                    }
                    rec.run.spec = run.spec;
                    rec.run.metadata.labels = run.metadata.labels;
                    rec.run.metadata.generation =
                        Some(rec.run.metadata.generation.unwrap_or(1) + 1);
                } else {
                    log.push(format!("TrainingRun {name} unchanged"));
                }
            }
            None => {
                run.metadata.uid = Some(format!("local-{name}"));
                run.metadata.generation = Some(1);
                run.metadata.creation_timestamp = Some(stamp.clone());
                run.status = None;
                log.push(format!(
                    "TrainingRun {name} created (storage {})",
                    run.spec.storage.url
                ));
                state.runs.insert(
                    name,
                    RunRecord {
                        run,
                        trials: BTreeMap::new(),
                    },
                );
            }
        }
    }
    for mut md in deployments {
        let name = md.name_any();
        match state.deployments.get_mut(&name) {
            Some(rec) => {
                // `local rollback` sets rollbackTo the way `kubectl patch` would; a manifest
                // without it must not undo that.
                if md.spec.rollback_to.is_none() {
                    md.spec.rollback_to = rec.deployment.spec.rollback_to;
                }
                if rec.deployment.spec != md.spec {
                    rec.deployment.spec = md.spec;
                    rec.deployment.metadata.generation =
                        Some(rec.deployment.metadata.generation.unwrap_or(1) + 1);
                } else {
                    log.push(format!("ModelDeployment {name} unchanged"));
                }
            }
            None => {
                md.metadata.uid = Some(format!("local-{name}"));
                md.metadata.generation = Some(1);
                md.metadata.creation_timestamp = Some(stamp.clone());
                md.status = None;
                log.push(format!("ModelDeployment {name} created"));
                state.deployments.insert(
                    name,
                    DeploymentRecord {
                        deployment: md,
                        server: None,
                    },
                );
            }
        }
    }
    log
}

/// Set `spec.rollbackTo` (a repeated rollback to the same revision applies again).
pub fn request_rollback(state: &mut LocalState, name: &str, revision: i64) -> Result<()> {
    let rec = state
        .deployments
        .get_mut(name)
        .with_context(|| format!("no ModelDeployment {name} in the local state"))?;
    let st = rec.deployment.status.get_or_insert_with(Default::default);
    if !st.history.iter().any(|r| r.revision == revision) {
        let have: Vec<String> = st.history.iter().map(|r| r.revision.to_string()).collect();
        anyhow::bail!(
            "ModelDeployment {name} has no revision {revision} (history: {})",
            if have.is_empty() {
                "empty".to_string()
            } else {
                have.join(", ")
            }
        );
    }
    if st.applied_rollback_to == Some(revision) {
        st.applied_rollback_to = None;
    }
    rec.deployment.spec.rollback_to = Some(revision);
    Ok(())
}

/// Carry out a request from the inbox; returns log lines. While the runner stops, new
/// manifests are refused (they would start trials that are stopped at once).
pub fn handle(state: &mut LocalState, req: Request, stopping: bool) -> Vec<String> {
    match req {
        Request::Apply { .. } if stopping => vec!["ignoring submitted manifests: stopping".into()],
        Request::Apply { runs, deployments } => apply(state, runs, deployments),
        Request::Rollback {
            deployment,
            revision,
        } => match request_rollback(state, &deployment, revision) {
            Ok(()) => vec![format!(
                "ModelDeployment {deployment}: rollback to revision {revision} requested"
            )],
            Err(e) => vec![format!("rollback refused: {e:#}")],
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run() -> TrainingRun {
        serde_json::from_value(json!({
            "apiVersion": "textrec.dev/v1alpha1", "kind": "TrainingRun",
            "metadata": {"name": "r", "namespace": "default", "uid": "u"},
            "spec": {"image": "local", "storage": {"url": "file:///tmp/s", "pvc": {"claimName": "local-filesystem"}},
                     "hyperparameters": {"optimizer": {"lr": [0.1, 0.2]}},
                     "search": {"maxTrials": 2, "parallelism": 2}}
        }))
        .unwrap()
    }

    #[test]
    fn apply_creates_bumps_generations_and_keeps_status() {
        let mut st = LocalState::default();
        apply(&mut st, vec![run()], vec![]);
        let rec = &st.runs["r"];
        assert_eq!(rec.run.metadata.generation, Some(1));
        assert!(rec.run.metadata.creation_timestamp.is_some());
        st.runs.get_mut("r").unwrap().run.status = Some(Default::default());
        let log = apply(&mut st, vec![run()], vec![]);
        assert_eq!(log, vec!["TrainingRun r unchanged"]);
        let mut changed = run();
        changed.spec.max_failed_trials = 0;
        apply(&mut st, vec![changed], vec![]);
        assert_eq!(st.runs["r"].run.metadata.generation, Some(2));
        assert!(st.runs["r"].run.status.is_some());
    }

    #[test]
    fn rollback_requests_need_a_known_revision() {
        let mut st = LocalState::default();
        let md: ModelDeployment = serde_json::from_value(json!({
            "apiVersion": "textrec.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": "m", "namespace": "default"},
            "spec": {"image": "local", "model": {"fromTrainingRun": "r"}}
        }))
        .unwrap();
        apply(&mut st, vec![], vec![md]);
        let e = request_rollback(&mut st, "m", 1).unwrap_err();
        assert!(e.to_string().contains("history: empty"), "{e}");
        assert!(request_rollback(&mut st, "x", 1).is_err());
    }
}
