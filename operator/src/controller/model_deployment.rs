//! The ModelDeployment controller: decides the model (spec, rollback, automatic promotion),
//! applies Deployment + Service (+ HPA, + pointer ConfigMap for HotReload) with server-side
//! apply, and reports revision history, readiness and endpoint.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::core::{Selector, SelectorExt};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;

use super::{backoff_action, Error, Shared};
use crate::conditions;
use crate::crd::{
    DeploymentPhase, ModelDeployment, ModelDeploymentStatus, RolloutStrategy, RunPhase, TrainingRun,
};
use crate::naming::{serving_name, FIELD_MANAGER};
use crate::promotion::{decide, record_declined, record_revision, RunSummary};
use crate::run_plan::{PlannedEvent, Severity};
use crate::serving;

/// Controller name.
pub const NAME: &str = "modeldeployment";

/// What the ModelDeployment reconciler needs.
pub struct Context {
    /// API client.
    pub client: Client,
    /// Cache of TrainingRuns (promotion candidates).
    pub runs: Store<TrainingRun>,
    /// Cache of the operator's Deployments.
    pub deployments: Store<Deployment>,
    /// Metrics, events, backoff.
    pub shared: Arc<Shared>,
    /// The clock.
    pub clock: fn() -> Time,
}

/// TrainingRuns of `ns` as promotion inputs.
pub fn summarize_runs(md: &ModelDeployment, runs: &[Arc<TrainingRun>]) -> Vec<RunSummary> {
    let ns = md.namespace();
    // A missing selector selects every TrainingRun of the namespace.
    let selector: Option<Selector> = md
        .spec
        .promotion
        .selector
        .clone()
        .and_then(|s| s.try_into().ok());
    runs.iter()
        .filter(|r| r.namespace() == ns)
        .map(|r| {
            let st = r.status.clone().unwrap_or_default();
            RunSummary {
                name: r.name_any(),
                succeeded: st.phase == Some(RunPhase::Succeeded),
                completion_time: st.completion_time.clone(),
                best: st
                    .best_model
                    .map(|b| (b.url, b.sha256, b.metric, b.metric_name)),
                selected: selector.as_ref().is_none_or(|s| s.matches(r.labels())),
            }
        })
        .collect()
}

/// ModelDeployments to reconcile when `run` changes: those of its namespace.
pub fn deployments_for_run(
    store: &Store<ModelDeployment>,
    run: &TrainingRun,
) -> Vec<ObjectRef<ModelDeployment>> {
    store
        .state()
        .iter()
        .filter(|m| m.namespace() == run.namespace())
        .map(|m| ObjectRef::from_obj(m.as_ref()))
        .collect()
}

/// The new status and events for `md` (pure apart from reading the caches passed in).
pub fn plan_status(
    md: &ModelDeployment,
    runs: &[RunSummary],
    deployment: Option<&Deployment>,
    now: &Time,
) -> (ModelDeploymentStatus, Vec<PlannedEvent>) {
    let prev = md.status.clone().unwrap_or_default();
    let mut st = prev.clone();
    let g = md.metadata.generation;
    st.observed_generation = g;
    let mut events = Vec::new();
    let d = decide(&md.spec, &prev, runs, now);
    st.promotion_watermark = d.watermark.clone();
    st.applied_spec_model = d.spec_model_key.clone();
    st.applied_rollback_to = d.rollback_applied;
    for x in &d.declined {
        events.push(PlannedEvent {
            severity: Severity::Normal,
            reason: "PromotionDeclined",
            message: format!("{}: {}", x.training_run, x.reason),
        });
    }
    record_declined(&mut st, d.declined.clone());
    match &d.invalid {
        Some((field, msg)) => {
            conditions::set(
                &mut st.conditions,
                "Valid",
                false,
                "InvalidSpec",
                &format!("{field}: {msg}"),
                g,
                now,
            );
            if !conditions::is_true(&prev.conditions, "Valid") || prev.observed_generation != g {
                events.push(PlannedEvent {
                    severity: Severity::Warning,
                    reason: "InvalidSpec",
                    message: format!("{field}: {msg}"),
                });
            }
        }
        None => conditions::set(&mut st.conditions, "Valid", true, "SpecValid", "", g, now),
    }
    if let Some((model, reason)) = d.deploy {
        let rev = record_revision(
            &mut st,
            model.clone(),
            reason.clone(),
            md.spec.revision_history_limit,
            now,
        );
        let r = if reason.starts_with("rollback") {
            "RolledBack"
        } else if reason.starts_with("automatic") {
            "Promoted"
        } else {
            "ModelDeployed"
        };
        events.push(PlannedEvent {
            severity: Severity::Normal,
            reason: r,
            message: format!("revision {rev}: {} ({reason})", model.url),
        });
    }
    match (&st.model, &d.waiting) {
        (None, Some(w)) => conditions::set(
            &mut st.conditions,
            "ModelResolved",
            false,
            "WaitingForModel",
            w,
            g,
            now,
        ),
        (None, None) => conditions::set(
            &mut st.conditions,
            "ModelResolved",
            false,
            "NoModel",
            "no model to deploy",
            g,
            now,
        ),
        (Some(m), _) => conditions::set(
            &mut st.conditions,
            "ModelResolved",
            true,
            "Resolved",
            &format!("{} ({})", m.url, m.sha256),
            g,
            now,
        ),
    }

    let desired = md
        .spec
        .autoscaling
        .as_ref()
        .map_or(md.spec.replicas, |a| a.min_replicas);
    let (ready, updated, stuck, current) = match deployment {
        Some(dep) => {
            let s = dep.status.clone().unwrap_or_default();
            let stuck = s
                .conditions
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Progressing" && c.status == "False");
            let current = s.observed_generation >= dep.metadata.generation
                && dep.annotations().get(serving::REVISION_ANNOTATION)
                    == st.current_revision.map(|r| r.to_string()).as_ref();
            (
                s.ready_replicas.unwrap_or(0),
                s.updated_replicas.unwrap_or(0),
                stuck,
                current,
            )
        }
        None => (0, 0, false, false),
    };
    st.ready_replicas = ready;
    st.endpoint = st.model.as_ref().map(|_| serving::endpoint(md));
    let phase = if d.invalid.is_some() && st.model.is_none() {
        DeploymentPhase::Invalid
    } else if st.model.is_none() {
        DeploymentPhase::Pending
    } else if stuck {
        DeploymentPhase::Degraded
    } else if current && ready >= desired && updated >= desired {
        DeploymentPhase::Available
    } else {
        DeploymentPhase::Progressing
    };
    conditions::set(
        &mut st.conditions,
        "Available",
        phase == DeploymentPhase::Available,
        &format!("{phase:?}"),
        &format!("{ready}/{desired} replicas ready"),
        g,
        now,
    );
    st.phase = Some(phase);
    (st, events)
}

/// Reconcile one ModelDeployment, in a span like the TrainingRun reconcile's.
#[tracing::instrument(
    name = "reconcile",
    skip_all,
    fields(
        controller = NAME,
        namespace = md.metadata.namespace.as_deref().unwrap_or_default(),
        object = md.metadata.name.as_deref().unwrap_or_default(),
        generation = md.metadata.generation.unwrap_or_default(),
        trace_id = %super::trace_id(),
    )
)]
pub async fn reconcile(md: Arc<ModelDeployment>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let ns = md.namespace().ok_or(Error::Malformed("namespace"))?;
    let name = md.name_any();
    let key = format!("{ns}/{name}");
    if md.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let runs = summarize_runs(&md, &ctx.runs.state());
    let dep_ref = ObjectRef::<Deployment>::new(&serving_name(&name)).within(&ns);
    let existing = ctx.deployments.get(&dep_ref);
    let now = (ctx.clock)();
    let (status, events) = plan_status(&md, &runs, existing.as_deref(), &now);

    let apply = PatchParams::apply(FIELD_MANAGER).force();
    if let (Some(model), Some(rev)) = (&status.model, status.current_revision) {
        if md.spec.strategy == RolloutStrategy::HotReload {
            let cm = serving::pointer_configmap(&md, model);
            Api::<ConfigMap>::namespaced(ctx.client.clone(), &ns)
                .patch(
                    cm.metadata.name.as_deref().unwrap_or_default(),
                    &apply,
                    &Patch::Apply(&cm),
                )
                .await?;
        }
        let dep = serving::deployment(&md, model, rev);
        Api::<Deployment>::namespaced(ctx.client.clone(), &ns)
            .patch(&serving_name(&name), &apply, &Patch::Apply(&dep))
            .await?;
        let svc = serving::service(&md);
        Api::<Service>::namespaced(ctx.client.clone(), &ns)
            .patch(&serving_name(&name), &apply, &Patch::Apply(&svc))
            .await?;
        if let Some(h) = serving::hpa(&md) {
            Api::<HorizontalPodAutoscaler>::namespaced(ctx.client.clone(), &ns)
                .patch(&serving_name(&name), &apply, &Patch::Apply(&h))
                .await?;
        }
    }
    if md.status.as_ref() != Some(&status) {
        let body = json!({
            "apiVersion": ModelDeployment::api_version(&()),
            "kind": ModelDeployment::kind(&()),
            "status": status,
        });
        Api::<ModelDeployment>::namespaced(ctx.client.clone(), &ns)
            .patch_status(&name, &apply, &Patch::Apply(body))
            .await?;
    }
    let reference = md.object_ref(&());
    for ev in &events {
        ctx.shared.events.publish(&reference, ev).await;
    }
    ctx.shared.metrics.reconciled(NAME, started.elapsed());
    ctx.shared.backoff.succeed(&key);
    let settled = status.phase == Some(DeploymentPhase::Available);
    Ok(Action::requeue(if settled {
        Duration::from_secs(600)
    } else {
        Duration::from_secs(15)
    }))
}

/// Error policy: exponential backoff per object.
pub fn error_policy(md: Arc<ModelDeployment>, err: &Error, ctx: Arc<Context>) -> Action {
    let key = format!("{}/{}", md.namespace().unwrap_or_default(), md.name_any());
    backoff_action(&ctx.shared, NAME, &key, err)
}
