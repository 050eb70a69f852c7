//! The local ModelDeployment controller: each deployment's model and status come from the
//! cluster's own decision ([`plan_status`](crate::deployment_plan::plan_status), with
//! [`crate::promotion`]), fed with a synthetic Deployment that describes the local server
//! ([`serving::synth_deployment`]); the server is then made to serve that model
//! ([`Servers::ensure`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use crate::crd::{DeploymentPhase, TrainingRun};
use crate::deployment_plan::{plan, summarize_runs};
use crate::evaluation::{eval_args, eval_env, evaluation_from_output};
use crate::local::display::Display;
use crate::local::now;
use crate::local::process;
use crate::local::serving::{self, ServeSettings, ServerEvent, Servers};
use crate::local::state::LocalState;
use crate::promotion::{record_evaluation, EvalRequest};

/// The serving processes of the ModelDeployments.
pub struct DeploymentController {
    settings: ServeSettings,
    servers: Servers,
    // Revisions (`name@revision`) already announced as serving, so each is announced once.
    announced: BTreeSet<String>,
    // Promotion evaluations running, by (deployment, model sha256): the process and what it
    // scores. A cluster runs each as a Job; here it is a child process.
    evals: BTreeMap<(String, String), (tokio::process::Child, EvalRequest)>,
}

impl DeploymentController {
    /// Servers start with `settings`.
    pub fn new(settings: ServeSettings) -> Self {
        Self {
            settings,
            servers: Servers::default(),
            announced: BTreeSet::new(),
            evals: BTreeMap::new(),
        }
    }

    /// Plan every ModelDeployment and, unless the runner is `stopping`, make its server serve
    /// the planned model.
    pub async fn reconcile(&mut self, state: &mut LocalState, display: &Display, stopping: bool) {
        let runs: Vec<Arc<TrainingRun>> = state
            .runs
            .values()
            .map(|r| Arc::new(r.run.clone()))
            .collect();
        for (name, rec) in &mut state.deployments {
            let summaries = summarize_runs(&rec.deployment, &runs);
            let probe = match rec.server.as_ref().filter(|_| self.servers.running(name)) {
                Some(s) => serving::probe(&s.http).await,
                None => None,
            };
            self.collect_evaluations(name, rec, display);
            let prev = rec.deployment.status.clone().unwrap_or_default();
            let dep = serving::synth_deployment(name, &prev, probe.clone());
            let (mut status, events, evaluate) =
                plan(&rec.deployment, &summaries, Some(&dep), &now());
            for e in &events {
                display.event("ModelDeployment", name, e);
            }
            if !stopping {
                self.start_evaluations(name, rec, &evaluate, display);
            }
            if let Some(s) = rec.server.as_mut() {
                s.serving = probe.as_ref().and_then(|p| p.1.clone());
            }
            status.endpoint = rec
                .server
                .as_ref()
                .filter(|_| status.model.is_some())
                .map(|s| s.grpc.clone());
            rec.deployment.status = Some(status.clone());
            if stopping {
                continue;
            }
            for ev in self.servers.ensure(name, rec, &self.settings) {
                let msg = match ev {
                    ServerEvent::Started(g, h) => format!("server starting: gRPC {g}, HTTP {h}"),
                    ServerEvent::Exited(why) => format!("server exited ({why})"),
                    ServerEvent::Repointed(url) => format!("switching the server to {url}"),
                    ServerEvent::Failed(why) => format!("cannot serve: {why}"),
                };
                display.println(&format!("ModelDeployment {name}: {msg}"));
            }
            // Announce each revision once it is really in service.
            let current = status.phase == Some(DeploymentPhase::Available);
            if let (true, Some(rev), Some(s)) = (current, status.current_revision, &rec.server) {
                let key = format!("{name}@{rev}");
                if self.announced.insert(key) {
                    let model = status.model.clone().expect("available implies a model");
                    display.println(&format!(
                        "ModelDeployment {name}: revision {rev} serving {}{}\n  gRPC:       grpc://{}   (textrec-worker recognize --endpoint grpc://{} IMAGE...)\n  HTTP/demo:  http://{}/",
                        model.url,
                        model
                            .metric
                            .map(|m| format!(" ({} {m:.4})", model.metric_name.clone().unwrap_or_default()))
                            .unwrap_or_default(),
                        s.grpc,
                        s.grpc,
                        s.http
                    ));
                }
            }
        }
    }

    /// Start `eval` processes for the requested models not already being scored.
    fn start_evaluations(
        &mut self,
        name: &str,
        rec: &crate::local::state::DeploymentRecord,
        evaluate: &[EvalRequest],
        display: &Display,
    ) {
        let Some(set) = &rec.deployment.spec.promotion.evaluation else {
            return;
        };
        for req in evaluate {
            let key = (name.to_string(), req.sha256.clone());
            if self.evals.contains_key(&key) {
                continue;
            }
            let tag = format!("eval-{name}-{}", &req.sha256[..req.sha256.len().min(12)]);
            let log = self.settings.paths.log(&tag);
            // A fresh log per evaluation: its content is the result (or the error).
            let _ = std::fs::remove_file(&log);
            let args = eval_args(req, set, None);
            let env = eval_env().map(|(k, v)| (k.to_string(), v.to_string()));
            match process::spawn(&self.settings.worker, &args, &env, &log) {
                Ok(child) => {
                    display.println(&format!(
                        "ModelDeployment {name}: evaluating {} on {}",
                        req.url, set.path
                    ));
                    self.evals.insert(key, (child, req.clone()));
                }
                Err(e) => display.println(&format!(
                    "ModelDeployment {name}: cannot start the evaluation of {}: {e}",
                    req.url
                )),
            }
        }
    }

    /// Record the results of finished `eval` processes in the deployment's status, where the
    /// next decision finds them.
    fn collect_evaluations(
        &mut self,
        name: &str,
        rec: &mut crate::local::state::DeploymentRecord,
        display: &Display,
    ) {
        let Some(set) = rec.deployment.spec.promotion.evaluation.clone() else {
            return;
        };
        let keys: Vec<(String, String)> = self
            .evals
            .keys()
            .filter(|(d, _)| d == name)
            .cloned()
            .collect();
        for key in keys {
            let Some((child, req)) = self.evals.get_mut(&key) else {
                continue;
            };
            let code = match child.try_wait() {
                Ok(None) => continue,
                Ok(Some(status)) => status.code(),
                Err(_) => None,
            };
            let req = req.clone();
            self.evals.remove(&key);
            let tag = format!("eval-{name}-{}", &req.sha256[..req.sha256.len().min(12)]);
            let out = std::fs::read_to_string(self.settings.paths.log(&tag)).unwrap_or_default();
            let failure = (code != Some(0)).then(|| {
                if out.trim().is_empty() {
                    format!("textrec-worker eval exited with {code:?}")
                } else {
                    out.clone()
                }
            });
            let e = evaluation_from_output(&req, &set, &out, failure.as_deref(), &now());
            display.println(&format!(
                "ModelDeployment {name}: {} on {}: {}",
                req.url,
                set.path,
                match (&e.cer, &e.error) {
                    (Some(c), _) => format!(
                        "cer {c:.4} over {} lines (set digest {})",
                        e.lines,
                        &e.dataset_digest[..e.dataset_digest.len().min(12)]
                    ),
                    (None, Some(err)) => format!("evaluation failed: {err}"),
                    _ => "no result".into(),
                }
            ));
            let st = rec.deployment.status.get_or_insert_with(Default::default);
            record_evaluation(st, e);
        }
    }

    /// Stop every server (gracefully, within `grace`) and forget their processes in the state.
    pub async fn stop(&mut self, state: &mut LocalState, grace: Duration) {
        self.servers.stop_all(grace).await;
        for rec in state.deployments.values_mut() {
            if let Some(s) = rec.server.as_mut() {
                s.pid = None;
                s.serving = None;
            }
        }
    }
}
