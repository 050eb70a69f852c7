//! The ModelDeployment controller: lets [`crate::deployment_plan`] decide the model (spec,
//! rollback, automatic promotion) and the status, applies Deployment + Service (+ HPA, + pointer
//! ConfigMap for HotReload) with server-side apply, and reports revision history, readiness and
//! endpoint.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;

use super::{backoff_action, Error, Shared};
use crate::crd::{DeploymentPhase, ModelDeployment, RolloutStrategy, TrainingRun};
use crate::crd::{Evaluation, PromotionEvaluation};
use crate::deployment_plan::{plan, report_missing, summarize_runs};
use crate::evaluation::{eval_job, evaluation_from_output, job_name};
use crate::naming::{serving_name, FIELD_MANAGER};
use crate::promotion::{record_evaluation, EvalRequest};
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
    // The chart's defaults (image, credentials) fill what the spec leaves out.
    let md = ctx.shared.defaults.deployment(md);
    let runs = summarize_runs(&md, &ctx.runs.state());
    let dep_ref = ObjectRef::<Deployment>::new(&serving_name(&name)).within(&ns);
    let existing = ctx.deployments.get(&dep_ref);
    let now = (ctx.clock)();
    let (mut status, mut events, evaluate) = plan(&md, &runs, existing.as_deref(), &now);
    // Promotion evaluations: one Job per model to score; finished ones become results in
    // status, where the next reconcile (the status patch below triggers it) decides with them.
    let mut evaluating = false;
    if let Some(set) = &md.spec.promotion.evaluation {
        for req in &evaluate {
            match evaluation_job(&ctx.client, &md, set, req, &now).await? {
                EvalJob::Started => {
                    evaluating = true;
                    events.push(PlannedEvent {
                        severity: Severity::Normal,
                        reason: "EvaluationStarted",
                        message: format!("evaluating {} on {}", req.url, set.path),
                    });
                }
                EvalJob::Running => evaluating = true,
                EvalJob::Done(e) => {
                    events.push(evaluated_event(&e));
                    record_evaluation(&mut status, *e);
                }
            }
        }
    }
    // A pod mounting a missing TLS or token Secret never starts: report it instead.
    let missing = super::training_run::missing_of(
        &ctx.client,
        &ns,
        crate::references::deployment_references(&md.spec),
    )
    .await?;
    events.extend(report_missing(
        &md,
        &mut status,
        &missing,
        existing.is_some(),
        &now,
    ));

    let apply = PatchParams::apply(FIELD_MANAGER).force();
    // Without an image (none set, no default) nothing can be served: the status says why.
    let servable = !md.spec.image.is_empty() && missing.is_empty();
    if let (true, Some(model), Some(rev)) = (servable, &status.model, status.current_revision) {
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
    let settled = status.phase == Some(DeploymentPhase::Available) && !evaluating;
    Ok(Action::requeue(if settled {
        Duration::from_secs(600)
    } else {
        Duration::from_secs(15)
    }))
}

/// Where one model's evaluation Job stands.
enum EvalJob {
    /// Created now.
    Started,
    /// Created earlier, not finished.
    Running,
    /// Finished (its Job deleted): the result, or the error that stopped it.
    Done(Box<Evaluation>),
}

/// Create the evaluation Job of `req`, or read its result once it finished. The result is the
/// container's termination message (`eval --result-file /dev/termination-log`; on failure the
/// worker's last log lines): no storage the operator would need credentials for.
async fn evaluation_job(
    client: &Client,
    md: &ModelDeployment,
    set: &PromotionEvaluation,
    req: &EvalRequest,
    now: &Time,
) -> Result<EvalJob, Error> {
    let ns = md.namespace().unwrap_or_default();
    let name = job_name(&md.name_any(), &req.sha256);
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let Some(job) = jobs.get_opt(&name).await? else {
        let job = eval_job(md, set, req);
        jobs.patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&job),
        )
        .await?;
        return Ok(EvalJob::Started);
    };
    let st = job.status.clone().unwrap_or_default();
    let (ok, failed) = (st.succeeded.unwrap_or(0) > 0, st.failed.unwrap_or(0) > 0);
    if !ok && !failed {
        return Ok(EvalJob::Running);
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let list = pods
        .list(&ListParams::default().labels(&format!("job-name={name}")))
        .await?;
    let message = list
        .items
        .iter()
        .flat_map(|p| p.status.iter())
        .flat_map(|s| s.container_statuses.iter().flatten())
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref())
        .find_map(|t| t.message.clone())
        .unwrap_or_default();
    let failure = failed.then(|| {
        if message.trim().is_empty() {
            format!("evaluation Job {name} failed")
        } else {
            message.clone()
        }
    });
    let e = evaluation_from_output(req, set, &message, failure.as_deref(), now);
    // Deleted once read, so a later evaluation of the same model (a changed set) starts anew.
    jobs.delete(&name, &DeleteParams::background()).await?;
    Ok(EvalJob::Done(Box::new(e)))
}

fn evaluated_event(e: &Evaluation) -> PlannedEvent {
    match (&e.cer, &e.error) {
        (Some(c), _) => PlannedEvent {
            severity: Severity::Normal,
            reason: "Evaluated",
            message: format!(
                "{}: cer {c:.4} over {} lines of {} (digest {})",
                e.model_url,
                e.lines,
                e.path,
                &e.dataset_digest[..e.dataset_digest.len().min(12)]
            ),
        },
        (None, err) => PlannedEvent {
            severity: Severity::Warning,
            reason: "EvaluationFailed",
            message: format!(
                "{}: {}",
                e.model_url,
                err.clone().unwrap_or_else(|| "no result".into())
            ),
        },
    }
}

/// Error policy: exponential backoff per object.
pub fn error_policy(md: Arc<ModelDeployment>, err: &Error, ctx: Arc<Context>) -> Action {
    let key = format!("{}/{}", md.namespace().unwrap_or_default(), md.name_any());
    backoff_action(&ctx.shared, NAME, &key, err)
}
