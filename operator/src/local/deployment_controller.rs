//! The local ModelDeployment controller: each deployment's model and status come from the
//! cluster's own decision ([`plan_status`], i.e. [`crate::promotion`]), fed with a synthetic
//! Deployment that describes the local server ([`serving::synth_deployment`]); the server is
//! then made to serve that model ([`Servers::ensure`]).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use crate::crd::{DeploymentPhase, TrainingRun};
use crate::deployment_plan::{plan_status, summarize_runs};
use crate::local::display::Display;
use crate::local::now;
use crate::local::serving::{self, ServeSettings, ServerEvent, Servers};
use crate::local::state::LocalState;

/// The serving processes of the ModelDeployments.
pub struct DeploymentController {
    settings: ServeSettings,
    servers: Servers,
    // Revisions (`name@revision`) already announced as serving, so each is announced once.
    announced: BTreeSet<String>,
}

impl DeploymentController {
    /// Servers start with `settings`.
    pub fn new(settings: ServeSettings) -> Self {
        Self {
            settings,
            servers: Servers::default(),
            announced: BTreeSet::new(),
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
            let prev = rec.deployment.status.clone().unwrap_or_default();
            let dep = serving::synth_deployment(name, &prev, probe.clone());
            let (mut status, events) = plan_status(&rec.deployment, &summaries, Some(&dep), &now());
            for e in &events {
                display.event("ModelDeployment", name, e);
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
