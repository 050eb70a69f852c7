//! The TrainingRun controller: gathers the run's Jobs and pods (from label-selected caches) and
//! its trials' progress, asks [`crate::run_plan::plan`] what to do, and does it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Event, PersistentVolumeClaim, Pod, Secret, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::Store;
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;

use super::{backoff_action, Error, Shared};
use crate::crd::{ModelDeployment, RunPhase, TrainingRun, TrainingRunSpec};
use crate::early_stopping::EvalHistory;
use crate::naming::{label_value, FIELD_MANAGER, RUN_LABEL, TRIAL_LABEL};
use crate::pod_problems::{job_problem, PodProblem, FAILED_CREATE};
use crate::progress::ProgressSource;
use crate::references::{references, RefKind, Reference};
use crate::run_plan::{plan, Observed};
use textrec_contract::layout::trial_output;

/// Controller name (metrics label, event reporter).
pub const NAME: &str = "trainingrun";

/// What the TrainingRun reconciler needs.
pub struct Context {
    /// API client.
    pub client: Client,
    /// Cache of the operator's Jobs.
    pub jobs: Store<Job>,
    /// Cache of the operator's trial pods.
    pub pods: Store<Pod>,
    /// Trial progress.
    pub progress: Arc<dyn ProgressSource>,
    /// Trials' evaluation histories, for `spec.earlyStopping` (kept across reconciles).
    pub history: Arc<EvalHistory>,
    /// Metrics, events, backoff.
    pub shared: Arc<Shared>,
    /// How often runs with active trials are re-read for progress.
    pub progress_interval: Duration,
    /// The clock (fixed in tests).
    pub clock: fn() -> Time,
}

/// The current time as a Kubernetes `Time`.
pub fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

fn owned_by(obj: &impl Resource, uid: Option<&str>) -> bool {
    match uid {
        None => true,
        Some(uid) => obj
            .meta()
            .owner_references
            .as_ref()
            .is_some_and(|o| o.iter().any(|r| r.uid == uid)),
    }
}

fn finished(job: &Job) -> bool {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        })
}

/// Whether `name` exists: `None` when the operator may not look (RBAC: reading Secrets is
/// opt-in, and a pod's `CreateContainerConfigError` reports a missing one anyway).
async fn exists<K>(api: Api<K>, name: &str) -> Result<Option<bool>, kube::Error>
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    match api.get_metadata_opt(name).await {
        Ok(found) => Ok(Some(found.is_some())),
        Err(kube::Error::Api(s)) if s.code == 403 => Ok(None),
        Err(e) => Err(e),
    }
}

/// The objects `spec` names that do not exist in `ns`.
async fn missing_references(
    client: &Client,
    ns: &str,
    spec: &TrainingRunSpec,
) -> Result<Vec<Reference>, kube::Error> {
    missing_of(client, ns, references(spec)).await
}

/// Those of `refs` that do not exist in `ns` (those the operator may not look up count as
/// present).
pub(super) async fn missing_of(
    client: &Client,
    ns: &str,
    refs: Vec<Reference>,
) -> Result<Vec<Reference>, kube::Error> {
    let mut missing = Vec::new();
    for r in refs {
        let c = client.clone();
        let found = match r.kind {
            RefKind::PersistentVolumeClaim => {
                exists(Api::<PersistentVolumeClaim>::namespaced(c, ns), &r.name).await?
            }
            RefKind::Secret => exists(Api::<Secret>::namespaced(c, ns), &r.name).await?,
            RefKind::ServiceAccount => {
                exists(Api::<ServiceAccount>::namespaced(c, ns), &r.name).await?
            }
        };
        match found {
            Some(true) => {}
            Some(false) => missing.push(r),
            None => {
                tracing::debug!(kind = r.kind.as_str(), name = %r.name, "may not check that it exists")
            }
        }
    }
    Ok(missing)
}

/// A Job this old with no pod may be blocked from creating one: its events are read.
const NO_POD_AFTER: Duration = Duration::from_secs(5);

/// Why Jobs that have no pod could not create one, from the Job controller's `FailedCreate`
/// events, by trial name. One list call per such Job, and only while it has no pod, so a run
/// whose trials start normally costs nothing. Events the operator may not read count as none.
async fn job_problems(
    client: &Client,
    ns: &str,
    jobs: &[Arc<Job>],
    pods: &BTreeMap<String, Vec<&Pod>>,
    now: &Time,
) -> BTreeMap<String, PodProblem> {
    let blocked = jobs.iter().filter(|j| {
        let name = j.name_any();
        let old_enough = j.metadata.creation_timestamp.as_ref().is_none_or(|t| {
            t.0 + k8s_openapi::jiff::SignedDuration::try_from(NO_POD_AFTER).expect("small") <= now.0
        });
        !finished(j)
            && j.spec.as_ref().and_then(|s| s.suspend) != Some(true)
            && j.status.as_ref().and_then(|s| s.active).unwrap_or(0) == 0
            && pods.get(&name).is_none_or(|p| p.is_empty())
            && old_enough
    });
    let api: Api<Event> = Api::namespaced(client.clone(), ns);
    let reads = blocked.map(|j| {
        let api = api.clone();
        async move {
            let name = j.name_any();
            let fields = format!(
                "involvedObject.kind=Job,involvedObject.name={name},reason={FAILED_CREATE}"
            );
            match api.list(&ListParams::default().fields(&fields)).await {
                Ok(list) => job_problem(j, &list.items).map(|p| (name, p)),
                Err(e) => {
                    tracing::debug!(job = %name, "cannot read the Job's events: {e}");
                    None
                }
            }
        }
    });
    join_all(reads).await.into_iter().flatten().collect()
}

/// Reconcile one TrainingRun. Runs in a span naming the run, its generation and a fresh trace
/// id, which the JSON logs attach to every line logged during it.
#[tracing::instrument(
    name = "reconcile",
    skip_all,
    fields(
        controller = NAME,
        namespace = run.metadata.namespace.as_deref().unwrap_or_default(),
        object = run.metadata.name.as_deref().unwrap_or_default(),
        generation = run.metadata.generation.unwrap_or_default(),
        trace_id = %super::trace_id(),
    )
)]
pub async fn reconcile(run: Arc<TrainingRun>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let ns = run.namespace().ok_or(Error::Malformed("namespace"))?;
    let name = run.name_any();
    let key = format!("{ns}/{name}");
    if run.meta().deletion_timestamp.is_some() {
        // Owner references delete the Jobs; nothing to do.
        ctx.shared.metrics.set_trials(&key, None);
        ctx.history.forget(&history_key(&run, &key));
        return Ok(Action::await_change());
    }
    // The chart's defaults (image, storage) fill what the spec leaves out, for everything below.
    let run = ctx.shared.defaults.run(run);
    let label = label_value(&name);
    let uid = run.uid();

    let jobs: Vec<Arc<Job>> = ctx
        .jobs
        .state()
        .into_iter()
        .filter(|j| {
            j.namespace().as_deref() == Some(ns.as_str())
                && j.labels().get(RUN_LABEL) == Some(&label)
        })
        .filter(|j| owned_by(j.as_ref(), uid.as_deref()))
        .collect();
    let pods: Vec<Arc<Pod>> = ctx
        .pods
        .state()
        .into_iter()
        .filter(|p| {
            p.namespace().as_deref() == Some(ns.as_str())
                && p.labels().get(RUN_LABEL) == Some(&label)
        })
        .collect();

    // Progress of unfinished trials, read concurrently.
    let reads = jobs.iter().filter(|j| !finished(j)).map(|j| {
        let trial = j.name_any();
        let url = trial_output(&run.spec.storage.url, &name, &trial);
        let src = ctx.progress.clone();
        async move { (trial, src.read(&url).await) }
    });
    let progress: BTreeMap<String, _> = join_all(reads)
        .await
        .into_iter()
        .filter_map(|(t, p)| p.map(|p| (t, p)))
        .collect();

    // A finished run starts nothing more: its references no longer matter.
    let finished_run = run
        .status
        .as_ref()
        .and_then(|s| s.phase)
        .is_some_and(|p| matches!(p, RunPhase::Succeeded | RunPhase::Failed));
    let missing = if finished_run {
        Vec::new()
    } else {
        missing_references(&ctx.client, &ns, &run.spec).await?
    };
    // The parent of a fine-tune is looked up until the run records it (resolved once).
    let parent = match &run.spec.init_from {
        Some(init)
            if !finished_run && run.status.as_ref().is_none_or(|s| s.init_from.is_none()) =>
        {
            let md = match &init.model_deployment {
                Some(n) => {
                    Api::<ModelDeployment>::namespaced(ctx.client.clone(), &ns)
                        .get_opt(n)
                        .await?
                }
                None => None,
            };
            let tr = match &init.training_run {
                Some(n) => {
                    Api::<TrainingRun>::namespaced(ctx.client.clone(), &ns)
                        .get_opt(n)
                        .await?
                }
                None => None,
            };
            Some(crate::lineage::resolve(init, md.as_ref(), tr.as_ref()))
        }
        _ => None,
    };
    let history = if run.spec.early_stopping.is_some() {
        read_history(&ctx, &history_key(&run, &key), &run, &jobs, &progress).await
    } else {
        BTreeMap::new()
    };
    let mut observed = Observed {
        progress,
        history,
        missing,
        volume_policy: crate::validate::VolumePolicy::Cluster {
            allow_host_path: ctx.shared.defaults.allow_host_path_volumes,
        },
        parent,
        ..Default::default()
    };
    for j in &jobs {
        observed.jobs.insert(j.name_any(), j.as_ref());
    }
    for p in &pods {
        if let Some(t) = p.labels().get(TRIAL_LABEL) {
            observed.pods.entry(t.clone()).or_default().push(p.as_ref());
        }
    }

    let now = (ctx.clock)();
    if !finished_run {
        observed.job_problems = job_problems(&ctx.client, &ns, &jobs, &observed.pods, &now).await;
    }
    let plan = plan(&run, &observed, &now);

    let job_api: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let apply = PatchParams::apply(FIELD_MANAGER).force();
    for job in plan.create.iter().map(|t| &t.job) {
        job_api
            .patch(
                job.metadata.name.as_deref().unwrap_or_default(),
                &apply,
                &Patch::Apply(job),
            )
            .await?;
    }
    for (job, suspend) in &plan.set_suspend {
        job_api
            .patch(
                job,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"suspend": suspend}})),
            )
            .await?;
    }
    // Trials stopped early, their checkpoint safe: their pods go with them (SIGTERM: the worker
    // checkpoints once more on its way out).
    for job in &plan.delete {
        match job_api.delete(job, &DeleteParams::background()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    if run.status.as_ref() != Some(&plan.status) {
        let api: Api<TrainingRun> = Api::namespaced(ctx.client.clone(), &ns);
        let body = json!({
            "apiVersion": TrainingRun::api_version(&()),
            "kind": TrainingRun::kind(&()),
            "status": plan.status,
        });
        api.patch_status(&name, &apply, &Patch::Apply(body)).await?;
    }
    let reference = run.object_ref(&());
    for ev in &plan.events {
        ctx.shared.events.publish(&reference, ev).await;
    }

    ctx.shared
        .metrics
        .set_trials(&key, Some(plan.status.counts));
    ctx.shared.metrics.reconciled(NAME, started.elapsed());
    ctx.shared.backoff.succeed(&key);
    Ok(if plan.active {
        Action::requeue(ctx.progress_interval)
    } else {
        Action::requeue(Duration::from_secs(600))
    })
}

/// Prefix of the run's trials in [`Context::history`]: its uid, so that a run deleted and
/// created again under the same name starts afresh.
fn history_key(run: &TrainingRun, key: &str) -> String {
    format!("{}/", run.uid().unwrap_or_else(|| key.to_string()))
}

/// The evaluation histories of the run's trials (see [`crate::early_stopping`]): every trial
/// that has a Job or a status entry beyond `Pending`. `metrics.jsonl` is read when the history
/// of a trial is unknown or its `progress.json` shows a newer evaluation; the `progress.json`
/// snapshots just read are added either way.
async fn read_history(
    ctx: &Context,
    key: &str,
    run: &TrainingRun,
    jobs: &[Arc<Job>],
    progress: &BTreeMap<String, textrec_contract::TrialProgress>,
) -> BTreeMap<String, Vec<textrec_contract::metrics::EvalPoint>> {
    let name = run.name_any();
    let mut trials: std::collections::BTreeSet<String> =
        jobs.iter().map(|j| j.name_any()).collect();
    if let Some(st) = &run.status {
        trials.extend(
            st.trials
                .iter()
                .filter(|t| t.phase != crate::crd::TrialPhase::Pending)
                .map(|t| t.name.clone()),
        );
    }
    let cache_key = |trial: &str| format!("{key}{trial}");
    let reads = trials
        .iter()
        .filter(|t| ctx.history.needs_read(&cache_key(t), progress.get(*t)))
        .map(|t| {
            let url = trial_output(&run.spec.storage.url, &name, t);
            let src = ctx.progress.clone();
            async move { (t.clone(), src.read_evals(&url).await) }
        });
    for (t, evals) in join_all(reads).await {
        ctx.history.replace(&cache_key(&t), evals);
    }
    let mut out = BTreeMap::new();
    for t in &trials {
        if let Some(p) = progress.get(t) {
            ctx.history.observe(&cache_key(t), p);
        }
        if let Some(h) = ctx.history.get(&cache_key(t)).filter(|h| !h.is_empty()) {
            out.insert(t.clone(), h);
        }
    }
    out
}

/// Error policy: exponential backoff per run.
pub fn error_policy(run: Arc<TrainingRun>, err: &Error, ctx: Arc<Context>) -> Action {
    let key = format!("{}/{}", run.namespace().unwrap_or_default(), run.name_any());
    backoff_action(&ctx.shared, NAME, &key, err)
}
