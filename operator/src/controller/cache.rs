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
//! - Pod: name, namespace, labels, creation and deletion timestamps, uid, resourceVersion,
//!   `status.phase`, the `DisruptionTarget` condition, a `PodScheduled` condition that says the
//!   pod cannot be scheduled (and why), and the worker container's state (exit code, termination
//!   message, running, or why it is waiting).
//! - TrainingRun: everything but `managedFields` and the `kubectl apply` annotation (the
//!   reconciler reads spec and status).
//! - Deployment: metadata (annotations included: they hold the revision), `spec.replicas`,
//!   status; not the pod template.

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::batch::v1::{Job, JobSpec, JobStatus};
use k8s_openapi::api::core::v1::{ContainerStatus, Pod, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::crd::{ModelDeployment, TrainingRun};
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
                .filter(|c| {
                    c.type_ == "DisruptionTarget"
                        || (c.type_ == "PodScheduled" && c.status == "False")
                })
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

/// Slim a ModelDeployment for the dashboard's cache.
pub fn slim_model_deployment(d: &mut ModelDeployment) {
    slim_meta(&mut d.metadata, true);
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::pod_problems::pod_problem;
    use crate::trial_state::{pod_outcome, termination_message};

    fn pod(phase: &str, state: serde_json::Value, disrupted: bool) -> Pod {
        let mut conditions = vec![
            json!({"type": "Ready", "status": "False", "lastTransitionTime": "2026-01-01T00:00:00Z"}),
            json!({"type": "PodScheduled", "status": "True"}),
        ];
        if disrupted {
            conditions.push(json!({"type": "DisruptionTarget", "status": "True", "reason": "TerminationByKubelet"}));
        }
        serde_json::from_value(json!({
            "metadata": {"name": "t-0-x", "namespace": "ns", "labels": {"textrec.dev/run": "r"},
                "managedFields": [{"manager": "kubelet", "operation": "Update"}],
                "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "t-0", "uid": "u"}]},
            "spec": {"containers": [{"name": "worker", "image": "w:1"}]},
            "status": {"phase": phase, "podIP": "10.0.0.1", "conditions": conditions,
                "containerStatuses": [
                    {"name": "sidecar", "image": "s", "imageID": "s", "ready": true, "restartCount": 0, "state": {"running": {}}},
                    {"name": "worker", "image": "w:1", "imageID": "sha", "ready": false, "restartCount": 2, "state": state}
                ]}
        }))
        .unwrap()
    }

    fn unschedulable() -> Pod {
        let mut p = pod(
            "Pending",
            json!({"waiting": {"reason": "ContainerCreating"}}),
            false,
        );
        let st = p.status.as_mut().unwrap();
        st.container_statuses = None;
        st.conditions = Some(vec![serde_json::from_value(json!({"type": "PodScheduled",
            "status": "False", "reason": "Unschedulable",
            "message": "0/3 nodes are available: persistentvolumeclaim \"textrec-runs\" not found."}))
        .unwrap()]);
        p
    }

    #[test]
    fn slim_pods_keep_what_the_reconciler_reads() {
        let cases = [
            pod("Running", json!({"running": {}}), false),
            pod("Running", json!({"running": {}}), true),
            pod(
                "Failed",
                json!({"terminated": {"exitCode": 78, "message": "bad lr"}}),
                false,
            ),
            pod("Failed", json!({"terminated": {"exitCode": 137}}), true),
            pod("Failed", json!({"terminated": {"exitCode": 1}}), false),
            pod("Succeeded", json!({"terminated": {"exitCode": 0}}), false),
            pod("Pending", json!({"waiting": {}}), false),
            pod(
                "Pending",
                json!({"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image"}}),
                false,
            ),
            unschedulable(),
        ];
        let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::from_second(1_800_000_000).unwrap(),
        );
        let mut problems = 0;
        for full in cases {
            let mut slim = full.clone();
            slim_pod(&mut slim);
            assert_eq!(pod_outcome(&slim), pod_outcome(&full));
            assert_eq!(pod_problem(&slim, &now), pod_problem(&full, &now));
            problems += usize::from(pod_problem(&full, &now).is_some());
            assert_eq!(termination_message(&slim), termination_message(&full));
            assert_eq!(slim.metadata.labels, full.metadata.labels);
            assert!(slim.metadata.managed_fields.is_none() && slim.spec.is_none());
            let st = slim.status.unwrap();
            // Only the worker's (an unscheduled pod has none).
            assert!(st.container_statuses.is_none_or(|c| c.len() == 1));
            assert!(st.pod_ip.is_none());
        }
        assert_eq!(problems, 2, "the image pull and the unschedulable pod");
    }

    #[test]
    fn slim_jobs_keep_suspend_owners_and_true_conditions() {
        let full: Job = serde_json::from_value(json!({
            "metadata": {"name": "t-0", "namespace": "ns", "labels": {"textrec.dev/run": "r"},
                "annotations": {"textrec.dev/params": "{}"},
                "managedFields": [{"manager": "textrec-operator", "operation": "Apply"}],
                "ownerReferences": [{"apiVersion": "textrec.dev/v1alpha1", "kind": "TrainingRun", "name": "r", "uid": "u"}]},
            "spec": {"suspend": true, "backoffLimit": 3, "template": {"metadata": {"labels": {"a": "b"}},
                "spec": {"containers": [{"name": "worker", "image": "w:1"}]}}},
            "status": {"active": 1, "conditions": [
                {"type": "Suspended", "status": "True"},
                {"type": "Complete", "status": "False"},
                {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "m"}
            ]}
        }))
        .unwrap();
        let mut slim = full.clone();
        slim_job(&mut slim);
        assert_eq!(
            slim.metadata.owner_references,
            full.metadata.owner_references
        );
        assert_eq!(slim.metadata.labels, full.metadata.labels);
        assert!(slim.metadata.managed_fields.is_none());
        let spec = slim.spec.unwrap();
        assert_eq!(spec.suspend, Some(true));
        assert!(spec.template.spec.is_none());
        let conds = slim.status.unwrap().conditions.unwrap();
        let kept: Vec<_> = conds.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(kept, ["Suspended", "Failed"]);
        assert_eq!(conds[1].message.as_deref(), Some("m"));
    }
}
