//! What the reflector caches keep of each watched object.
//!
//! The manager applies these transforms (`WatchStreamExt::modify`) before objects enter a cache,
//! so the caches hold only the fields the reconcilers and mappers read. A Job as the API server
//! returns it carries its whole pod template (image, env, tolerations, affinity, resources) and
//! its `managedFields`; a pod carries its spec, five standard conditions and a long status per
//! container. None of that is read after the Job was written, and with hundreds of trials it is
//! most of the operator's memory. The benchmark applies the same functions, so it measures what
//! ships.
//!
//! Kept, by cache:
//! - Job: name, namespace, labels, owner references, uid, resourceVersion, `spec.suspend`, and
//!   the status conditions (the trial phase comes from them).
//! - Pod: name, namespace, labels, deletion timestamp, uid, resourceVersion, `status.phase`, the
//!   `DisruptionTarget` condition, and the worker container's state (exit code, termination
//!   message, running).
//! - TrainingRun: everything but `managedFields` and the `kubectl apply` annotation (the
//!   reconciler reads spec and status).
//! - Deployment: metadata (annotations included: they hold the revision), `spec.replicas`,
//!   status; not the pod template.

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::batch::v1::{Job, JobSpec, JobStatus};
use k8s_openapi::api::core::v1::{ContainerStatus, Pod, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::crd::TrainingRun;
use crate::job::CONTAINER;

/// `kubectl apply`'s copy of the whole object, in an annotation.
pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// The metadata a cache needs: identity, labels, owners, deletion.
fn slim_meta(m: &mut ObjectMeta, keep_annotations: bool) {
    m.managed_fields = None;
    if keep_annotations {
        if let Some(a) = m.annotations.as_mut() {
            a.remove(LAST_APPLIED);
        }
    } else {
        m.annotations = None;
    }
    m.generate_name = None;
    m.finalizers = None;
}

/// Slim a Job for the TrainingRun controller's cache.
pub fn slim_job(j: &mut Job) {
    slim_meta(&mut j.metadata, false);
    let suspend = j.spec.as_ref().and_then(|s| s.suspend);
    j.spec = Some(JobSpec {
        suspend,
        ..Default::default()
    });
    j.status = j.status.take().map(|s| JobStatus {
        conditions: s.conditions.map(|cs| {
            cs.into_iter()
                .filter(|c| c.status == "True")
                .map(|mut c| {
                    c.last_probe_time = None;
                    c
                })
                .collect()
        }),
        ..Default::default()
    });
}

/// Slim a trial pod for the TrainingRun controller's cache.
pub fn slim_pod(p: &mut Pod) {
    slim_meta(&mut p.metadata, false);
    p.metadata.owner_references = None;
    p.spec = None;
    p.status = p.status.take().map(|s| PodStatus {
        phase: s.phase,
        conditions: s.conditions.and_then(|cs| {
            let kept: Vec<_> = cs
                .into_iter()
                .filter(|c| c.type_ == "DisruptionTarget")
                .collect();
            (!kept.is_empty()).then_some(kept)
        }),
        container_statuses: s.container_statuses.map(|cs| {
            cs.into_iter()
                .filter(|c| c.name == CONTAINER)
                .map(|c| ContainerStatus {
                    name: c.name,
                    state: c.state,
                    restart_count: c.restart_count,
                    ready: c.ready,
                    ..Default::default()
                })
                .collect()
        }),
        ..Default::default()
    });
}

/// Slim a TrainingRun for a cache.
pub fn slim_run(r: &mut TrainingRun) {
    slim_meta(&mut r.metadata, true);
}

/// Slim a serving Deployment for the ModelDeployment controller's cache.
pub fn slim_deployment(d: &mut Deployment) {
    slim_meta(&mut d.metadata, true);
    if let Some(spec) = d.spec.as_mut() {
        *spec = DeploymentSpec {
            replicas: spec.replicas,
            selector: std::mem::take(&mut spec.selector),
            ..Default::default()
        };
    }
}
