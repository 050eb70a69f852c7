//! Why a trial's pod is not running, read from what the scheduler and the kubelet wrote into the
//! pod's status: unschedulable (`PodScheduled=False`, reason `Unschedulable`: a
//! PersistentVolumeClaim that does not exist, more GPUs than any node has, a taint nobody
//! tolerates), an image that cannot be pulled, a container that cannot be created or keeps
//! crashing, or a pod stuck terminating on a node that no longer answers.
//!
//! A Job whose pod cannot start is otherwise indistinguishable from one whose pod is starting:
//! both are active Jobs with a `Pending` pod. [`crate::run_plan::plan`] turns a problem found here
//! into the trial's phase (`Pending`, or `Failed` when retrying cannot help), its reason and
//! message, and one Warning event per cause.
//!
//! A Job that cannot create its pod at all (a ResourceQuota, Pod Security admission) leaves no
//! pod to read: [`job_problem`] reads the Job controller's `FailedCreate` events instead.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Event, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::SignedDuration;

use crate::job::CONTAINER;

/// A pod counts as stuck terminating this long after its deletion was due (its
/// `deletionTimestamp`, which already includes the grace period).
pub const STUCK_TERMINATING_AFTER: SignedDuration = SignedDuration::from_mins(5);

/// Reason given to a pod stuck terminating (not a kubelet reason: the kubelet is what is gone).
pub const STUCK_TERMINATING: &str = "PodStuckTerminating";

/// Why a pod is not running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodProblem {
    /// What the problem was read from: `pod NAME`, or `job NAME` when the Job could not
    /// create its pod at all.
    pub source: String,
    /// CamelCase reason: the scheduler's (`Unschedulable`) or kubelet's (`ImagePullBackOff`,
    /// `ErrImagePull`, `InvalidImageName`, `CreateContainerConfigError`, `CrashLoopBackOff`, …)
    /// or [`STUCK_TERMINATING`].
    pub reason: String,
    /// Their message, as written (the scheduler's explains which nodes failed and why).
    pub message: String,
    /// Retrying cannot help (the trial fails instead of waiting).
    pub permanent: bool,
}

/// Kubelet waiting reasons of a container that will not start by itself, and whether retrying
/// can ever help. `ContainerCreating` and `PodInitializing` are normal and absent here.
fn waiting_problem(reason: &str) -> Option<bool> {
    Some(match reason {
        // An image reference that cannot be parsed: every retry fails the same way.
        "InvalidImageName" => true,
        // A registry that is down, credentials added later, an image pushed later, another node
        // that has the image (`Never`): these may still resolve, so the trial waits.
        "ErrImagePull" | "ImagePullBackOff" | "ErrImageNeverPull" | "RegistryUnavailable" => false,
        // A missing Secret or ConfigMap key the container references: creating it fixes the pod.
        "CreateContainerConfigError" | "CreateContainerError" | "RunContainerError" => false,
        "CrashLoopBackOff" => false,
        _ => return None,
    })
}

/// Whether two reasons name the same cause. The kubelet alternates `ErrImagePull` (at each
/// attempt) and `ImagePullBackOff` (between attempts) for one image that cannot be pulled: one
/// cause, one event.
pub fn same_cause(a: &str, b: &str) -> bool {
    fn cause(r: &str) -> &str {
        match r {
            "ErrImagePull" | "ImagePullBackOff" => "ImagePull",
            r => r,
        }
    }
    cause(a) == cause(b)
}

/// What keeps `pod` from running, if anything does (`now` decides "stuck terminating").
pub fn pod_problem(pod: &Pod, now: &Time) -> Option<PodProblem> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let status = pod.status.as_ref();
    let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or("Pending");
    if phase == "Succeeded" || phase == "Failed" {
        return None;
    }
    if let Some(deleted) = &pod.metadata.deletion_timestamp {
        if deleted.0 + STUCK_TERMINATING_AFTER <= now.0 {
            return Some(PodProblem {
                reason: STUCK_TERMINATING.into(),
                message: format!(
                    "pod {name} should have stopped by {} but is still {phase}: its node may be \
                     unreachable. The Job starts a replacement only once it is gone; if the node \
                     is lost, `kubectl delete pod {name} --force`",
                    deleted.0
                ),
                source: format!("pod {name}"),
                permanent: false,
            });
        }
        // Being deleted in time: a disruption, not a problem.
        return None;
    }
    let status = status?;
    if let Some(c) = status.conditions.iter().flatten().find(|c| {
        c.type_ == "PodScheduled"
            && c.status == "False"
            && c.reason.as_deref() == Some("Unschedulable")
    }) {
        return Some(PodProblem {
            source: format!("pod {name}"),
            reason: "Unschedulable".into(),
            message: c.message.clone().unwrap_or_default(),
            permanent: false,
        });
    }
    status
        .container_statuses
        .iter()
        .flatten()
        .filter(|c| c.name == CONTAINER)
        .find_map(|c| {
            let w = c.state.as_ref()?.waiting.as_ref()?;
            let reason = w.reason.as_deref()?;
            let permanent = waiting_problem(reason)?;
            Some(PodProblem {
                source: format!("pod {name}"),
                reason: reason.into(),
                message: w.message.clone().unwrap_or_default(),
                permanent,
            })
        })
}

/// What keeps a trial from running, from its pods: `None` while any pod runs the worker (the
/// trial makes progress) or no pod has a problem.
pub fn trial_problem(pods: &[&Pod], now: &Time) -> Option<PodProblem> {
    let running = pods.iter().any(|p| {
        p.metadata.deletion_timestamp.is_none()
            && p.status.as_ref().is_some_and(|s| {
                s.phase.as_deref() == Some("Running")
                    && s.container_statuses.iter().flatten().any(|c| {
                        c.name == CONTAINER && c.state.as_ref().is_some_and(|s| s.running.is_some())
                    })
            })
    });
    if running {
        return None;
    }
    // The newest pod first: it is the one the Job waits on.
    let mut pods: Vec<&&Pod> = pods.iter().collect();
    pods.sort_by(|a, b| {
        b.metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0)
            .cmp(&a.metadata.creation_timestamp.as_ref().map(|t| t.0))
    });
    pods.into_iter().find_map(|p| pod_problem(p, now))
}

/// Reason the Job controller gives when the API server refuses the pod it tries to create.
pub const FAILED_CREATE: &str = "FailedCreate";

/// What keeps `job` from creating its pod, from the Job controller's `FailedCreate` events (a
/// ResourceQuota exceeded, Pod Security admission, a LimitRange, an admission webhook): the
/// newest one about this Job. Such a Job has no pod at all, so nothing else would tell it from
/// a Job whose pod is on its way. Waiting can help (the quota frees up, the namespace's policy
/// changes), so the problem is never permanent.
pub fn job_problem(job: &Job, events: &[Event]) -> Option<PodProblem> {
    let name = job.metadata.name.as_deref()?;
    let uid = job.metadata.uid.as_deref();
    events
        .iter()
        .filter(|e| {
            let o = &e.involved_object;
            e.reason.as_deref() == Some(FAILED_CREATE)
                && o.kind.as_deref() == Some("Job")
                && o.name.as_deref() == Some(name)
                // An event about an earlier Job of the same name (a trial restarted) is stale.
                && (uid.is_none() || o.uid.is_none() || o.uid.as_deref() == uid)
        })
        .max_by_key(|e| event_time(e))
        .map(|e| PodProblem {
            source: format!("job {name}"),
            reason: FAILED_CREATE.into(),
            message: e
                .message
                .clone()
                .unwrap_or_default()
                .trim_start_matches("Error creating: ")
                .to_string(),
            permanent: false,
        })
}

/// When an event last happened: its last occurrence, else its first, else its creation.
fn event_time(e: &Event) -> Option<k8s_openapi::jiff::Timestamp> {
    e.last_timestamp
        .as_ref()
        .map(|t| t.0)
        .or_else(|| e.event_time.as_ref().map(|t| t.0))
        .or_else(|| e.first_timestamp.as_ref().map(|t| t.0))
        .or_else(|| e.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;
    use serde_json::json;

    fn t(s: i64) -> Time {
        Time(Timestamp::from_second(s).unwrap())
    }

    fn pod(v: serde_json::Value) -> Pod {
        let mut base = json!({"metadata": {"name": "r-t0-abc", "namespace": "ml"}});
        for (k, x) in v.as_object().unwrap() {
            if k == "metadata" {
                for (mk, mx) in x.as_object().unwrap() {
                    base["metadata"][mk] = mx.clone();
                }
            } else {
                base[k] = x.clone();
            }
        }
        serde_json::from_value(base).unwrap()
    }

    fn waiting(reason: &str, message: &str) -> Pod {
        pod(json!({"status": {"phase": "Pending", "containerStatuses": [
            {"name": "worker", "image": "w", "imageID": "", "ready": false, "restartCount": 0,
             "state": {"waiting": {"reason": reason, "message": message}}}]}}))
    }

    /// As the scheduler writes it for a pod whose PVC does not exist.
    fn unschedulable(message: &str) -> Pod {
        pod(json!({"status": {"phase": "Pending", "conditions": [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message,
             "lastTransitionTime": "2027-01-01T00:00:00Z"}]}}))
    }

    #[test]
    fn unschedulable_pods_carry_the_schedulers_message() {
        let msg = "0/3 nodes are available: persistentvolumeclaim \"textrec-runs\" not found. \
                   preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling.";
        let p = pod_problem(&unschedulable(msg), &t(0)).unwrap();
        assert_eq!(
            p,
            PodProblem {
                source: "pod r-t0-abc".into(),
                reason: "Unschedulable".into(),
                message: msg.into(),
                permanent: false
            }
        );
        let gpus = unschedulable("0/2 nodes are available: 2 Insufficient nvidia.com/gpu.");
        assert!(pod_problem(&gpus, &t(0))
            .unwrap()
            .message
            .contains("nvidia.com/gpu"));
        // Waiting for a scheduling gate or not yet looked at: no problem.
        let gated = pod(json!({"status": {"phase": "Pending", "conditions": [
            {"type": "PodScheduled", "status": "False", "reason": "SchedulingGated"}]}}));
        assert_eq!(pod_problem(&gated, &t(0)), None);
        assert_eq!(
            pod_problem(&pod(json!({"status": {"phase": "Pending"}})), &t(0)),
            None
        );
    }

    #[test]
    fn kubelet_waiting_reasons_and_which_ones_are_final() {
        let cases = [
            ("ImagePullBackOff", Some(false)),
            ("ErrImagePull", Some(false)),
            ("InvalidImageName", Some(true)),
            ("CreateContainerConfigError", Some(false)),
            ("CrashLoopBackOff", Some(false)),
            ("ContainerCreating", None),
            ("PodInitializing", None),
        ];
        for (reason, want) in cases {
            let got = pod_problem(&waiting(reason, "m"), &t(0));
            assert_eq!(got.as_ref().map(|p| p.permanent), want, "{reason}");
            if let Some(p) = got {
                assert_eq!((p.reason.as_str(), p.message.as_str()), (reason, "m"));
            }
        }
        // Another container's trouble (an injected sidecar) is not the worker's.
        let sidecar = pod(json!({"status": {"phase": "Pending", "containerStatuses": [
            {"name": "proxy", "image": "p", "imageID": "", "ready": false, "restartCount": 0,
             "state": {"waiting": {"reason": "ImagePullBackOff"}}}]}}));
        assert_eq!(pod_problem(&sidecar, &t(0)), None);
    }

    #[test]
    fn pull_errors_and_their_back_off_are_one_cause() {
        assert!(same_cause("ErrImagePull", "ImagePullBackOff"));
        assert!(same_cause("Unschedulable", "Unschedulable"));
        assert!(!same_cause("ImagePullBackOff", "InvalidImageName"));
        assert!(!same_cause("Unschedulable", "CrashLoopBackOff"));
    }

    #[test]
    fn a_pod_is_stuck_terminating_only_well_after_its_deletion_was_due() {
        let deleting = pod(
            json!({"metadata": {"deletionTimestamp": "2027-01-01T00:00:00Z"},
            "status": {"phase": "Running"}}),
        );
        let due = Timestamp::from_second(1_798_761_600).unwrap(); // 2027-01-01T00:00:00Z
        let at = |mins: i64| Time(due + SignedDuration::from_mins(mins));
        assert_eq!(pod_problem(&deleting, &at(1)), None);
        let p = pod_problem(&deleting, &at(6)).unwrap();
        assert_eq!(p.reason, STUCK_TERMINATING);
        assert!(
            p.message.contains("--force") && !p.permanent,
            "{}",
            p.message
        );
        // Finished pods are never problems, deleted or not.
        let done = pod(
            json!({"metadata": {"deletionTimestamp": "2027-01-01T00:00:00Z"},
            "status": {"phase": "Failed"}}),
        );
        assert_eq!(pod_problem(&done, &at(60)), None);
    }

    #[test]
    fn a_trial_with_a_running_pod_has_no_problem_and_the_newest_pod_speaks() {
        let running = pod(json!({"status": {"phase": "Running", "containerStatuses": [
            {"name": "worker", "image": "w", "imageID": "", "ready": true, "restartCount": 0,
             "state": {"running": {}}}]}}));
        let pull = waiting("ImagePullBackOff", "Back-off pulling image \"nope\"");
        assert_eq!(trial_problem(&[&running, &pull], &t(0)), None);
        let mut old = unschedulable("old");
        old.metadata.creation_timestamp = Some(t(10));
        let mut new = waiting("ErrImagePull", "new");
        new.metadata.creation_timestamp = Some(t(20));
        assert_eq!(trial_problem(&[&old, &new], &t(30)).unwrap().message, "new");
        assert_eq!(trial_problem(&[], &t(0)), None);
    }

    fn failed_create(job: &str, uid: &str, at: &str, message: &str) -> Event {
        serde_json::from_value(json!({
            "metadata": {"name": format!("{job}.{at}"), "namespace": "ml"},
            "involvedObject": {"kind": "Job", "name": job, "namespace": "ml", "uid": uid},
            "reason": "FailedCreate", "type": "Warning", "message": message,
            "lastTimestamp": at}))
        .unwrap()
    }

    #[test]
    fn a_job_that_cannot_create_its_pod_reports_the_newest_refusal() {
        let job: Job = serde_json::from_value(
            json!({"metadata": {"name": "r-t0", "namespace": "ml", "uid": "u2"}}),
        )
        .unwrap();
        let quota = "Error creating: pods \"r-t0-x\" is forbidden: exceeded quota: gpus, \
                     requested: nvidia.com/gpu=1, used: nvidia.com/gpu=0, limited: nvidia.com/gpu=0";
        let events = [
            failed_create("r-t0", "u2", "2027-01-01T00:00:10Z", "older"),
            failed_create("r-t0", "u2", "2027-01-01T00:00:20Z", quota),
            // The same name's earlier Job, and another trial's Job: not about this one.
            failed_create("r-t0", "u1", "2027-01-01T00:00:30Z", "stale"),
            failed_create("r-t1", "u3", "2027-01-01T00:00:40Z", "other"),
        ];
        let p = job_problem(&job, &events).unwrap();
        assert_eq!(p.reason, "FailedCreate");
        assert_eq!(p.source, "job r-t0");
        assert!(
            p.message
                .starts_with("pods \"r-t0-x\" is forbidden: exceeded quota"),
            "{p:?}"
        );
        assert!(!p.permanent);
        assert_eq!(job_problem(&job, &events[2..]), None);
        assert_eq!(job_problem(&job, &[]), None);
    }
}
