//! The `batch/v1` Job of one trial.
//!
//! Its `podFailurePolicy` is what makes spot instances cheap to use: a pod that fails with the
//! `DisruptionTarget` condition (spot reclaim, eviction, preemption) or exits with
//! [`INTERRUPTED`] (SIGTERM after checkpointing) is replaced without using up `backoffLimit`,
//! and the new pod resumes from the trial's newest checkpoint; [`CONFIG_ERROR`] fails the Job at
//! once because retrying cannot help. `podReplacementPolicy: Failed` keeps a replacement from
//! starting before the old pod has stopped writing checkpoints.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{
    Job, JobSpec, PodFailurePolicy, PodFailurePolicyOnExitCodesRequirement,
    PodFailurePolicyOnPodConditionsPattern, PodFailurePolicyRule,
};
use k8s_openapi::api::core::v1::{
    Affinity, Container, EmptyDirVolumeSource, EnvVar, NodeAffinity, NodeSelector,
    NodeSelectorRequirement, NodeSelectorTerm, PodSpec, PodTemplateSpec, ResourceRequirements,
    Toleration, TopologySpreadConstraint, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::Resource;
use textrec_contract::exit::{CONFIG_ERROR, INTERRUPTED};

use crate::crd::{Scheduling, SpotProvider, TrainingRun};
use crate::naming::{label_value, MANAGED_BY, MANAGER, OWNER_ANNOTATION, RUN_LABEL, TRIAL_LABEL};
use crate::pod_parts;
use crate::pod_security;
use crate::validate::PlannedTrial;
use crate::worker_args::{train_args, POD_TERMINATION_LOG};

/// Name of the worker container (the exit-code rules refer to it).
pub const CONTAINER: &str = "worker";
/// Annotation with the trial's searched parameters.
pub const PARAMS_ANNOTATION: &str = "textrec.dev/params";
/// GKE's spot node label (also the taint key of spot node pools).
pub const GKE_SPOT: &str = "cloud.google.com/gke-spot";
/// EKS managed node groups' capacity type label.
pub const EKS_CAPACITY: &str = "eks.amazonaws.com/capacityType";
/// Karpenter's capacity type label (`spot` or `on-demand`), on EKS and wherever it provisions.
pub const KARPENTER_CAPACITY: &str = "karpenter.sh/capacity-type";
/// AKS spot node label and taint key.
pub const AKS_SPOT: &str = "kubernetes.azure.com/scalesetpriority";

/// Labels of a trial's Job and pods.
pub fn trial_labels(run: &str, trial: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "textrec".into()),
        ("app.kubernetes.io/component".into(), "trial".into()),
        (MANAGED_BY.into(), MANAGER.into()),
        (RUN_LABEL.into(), label_value(run)),
        (TRIAL_LABEL.into(), trial.into()),
    ])
}

fn toleration(key: &str, value: &str) -> Toleration {
    Toleration {
        key: Some(key.into()),
        operator: Some("Equal".into()),
        value: Some(value.into()),
        effect: Some("NoSchedule".into()),
        ..Default::default()
    }
}

fn term(key: &str, value: &str) -> NodeSelectorTerm {
    NodeSelectorTerm {
        match_expressions: Some(vec![NodeSelectorRequirement {
            key: key.into(),
            operator: "In".into(),
            values: Some(vec![value.into()]),
        }]),
        ..Default::default()
    }
}

/// `s`'s topology spread constraints, those without a `labelSelector` given `own` (the labels
/// that select the pods of the object itself).
pub fn spread(
    s: &Scheduling,
    own: &BTreeMap<String, String>,
) -> Option<Vec<TopologySpreadConstraint>> {
    let out: Vec<TopologySpreadConstraint> = s
        .topology_spread_constraints
        .iter()
        .cloned()
        .map(|mut c| {
            if c.label_selector.is_none() {
                c.label_selector = Some(LabelSelector {
                    match_labels: Some(own.clone()),
                    ..Default::default()
                });
            }
            c
        })
        .collect();
    (!out.is_empty()).then_some(out)
}

/// Node selector, tolerations and affinity of a pod, with the `spot` shortcut applied.
pub fn placement(
    s: &Scheduling,
    gpus: i32,
    gpu_resource: &str,
) -> (BTreeMap<String, String>, Vec<Toleration>, Option<Affinity>) {
    let mut selector = s.node_selector.clone();
    let mut tolerations = s.tolerations.clone();
    let mut affinity = s.affinity.clone();
    if gpus > 0
        && !tolerations
            .iter()
            .any(|t| t.key.as_deref() == Some(gpu_resource))
    {
        // GPU node pools are commonly tainted with the resource name.
        tolerations.push(Toleration {
            key: Some(gpu_resource.into()),
            operator: Some("Exists".into()),
            effect: Some("NoSchedule".into()),
            ..Default::default()
        });
    }
    if s.spot {
        match s.spot_provider.unwrap_or(SpotProvider::Any) {
            SpotProvider::GKE => {
                selector.insert(GKE_SPOT.into(), "true".into());
                tolerations.push(toleration(GKE_SPOT, "true"));
            }
            SpotProvider::EKS => {
                // Managed node groups or Karpenter NodePools: either label qualifies.
                require_one_of(
                    &mut affinity,
                    vec![term(EKS_CAPACITY, "SPOT"), term(KARPENTER_CAPACITY, "spot")],
                );
            }
            SpotProvider::Karpenter => {
                selector.insert(KARPENTER_CAPACITY.into(), "spot".into());
            }
            SpotProvider::Any => {
                tolerations.push(toleration(GKE_SPOT, "true"));
                tolerations.push(toleration(AKS_SPOT, "spot"));
                require_one_of(
                    &mut affinity,
                    vec![
                        term(GKE_SPOT, "true"),
                        term(EKS_CAPACITY, "SPOT"),
                        term(KARPENTER_CAPACITY, "spot"),
                        term(AKS_SPOT, "spot"),
                    ],
                );
            }
        }
    }
    (selector, tolerations, affinity)
}

/// Require a node matching one of `alternatives` (node selector terms are ORed), on top of any
/// required node affinity `affinity` already has: each of its terms is ANDed with each
/// alternative (the cross product), so both the user's rule and the spot rule hold.
fn require_one_of(affinity: &mut Option<Affinity>, alternatives: Vec<NodeSelectorTerm>) {
    let a = affinity.get_or_insert_with(Affinity::default);
    let na = a.node_affinity.get_or_insert_with(NodeAffinity::default);
    let required = &mut na.required_during_scheduling_ignored_during_execution;
    let own = required
        .take()
        .map(|n| n.node_selector_terms)
        .unwrap_or_default();
    let node_selector_terms = if own.is_empty() {
        alternatives
    } else {
        own.iter()
            .flat_map(|t| {
                alternatives.iter().map(move |alt| {
                    let mut both = t.clone();
                    both.match_expressions
                        .get_or_insert_with(Vec::new)
                        .extend(alt.match_expressions.clone().unwrap_or_default());
                    both
                })
            })
            .collect()
    };
    *required = Some(NodeSelector {
        node_selector_terms,
    });
}

fn quantity(s: &str) -> Quantity {
    Quantity(s.to_string())
}

/// The Job of `trial`, owned by `run`.
pub fn build_job(run: &TrainingRun, trial: &PlannedTrial, suspend: bool) -> Job {
    let spec = &run.spec;
    let run_name = run.metadata.name.clone().unwrap_or_default();
    let labels = trial_labels(&run_name, &trial.name);
    let args = train_args(&run_name, &spec.storage.url, trial, POD_TERMINATION_LOG);

    let gpu_resource = spec
        .resources
        .gpu_resource_name
        .clone()
        .unwrap_or_else(|| "nvidia.com/gpu".into());
    let mut requests = BTreeMap::new();
    let mut limits = BTreeMap::new();
    if let Some(cpu) = &spec.resources.cpu {
        requests.insert("cpu".to_string(), quantity(cpu));
    }
    if let Some(mem) = &spec.resources.memory {
        requests.insert("memory".to_string(), quantity(mem));
        limits.insert("memory".to_string(), quantity(mem));
    }
    if spec.resources.gpus > 0 {
        let n = quantity(&spec.resources.gpus.to_string());
        requests.insert(gpu_resource.clone(), n.clone());
        limits.insert(gpu_resource.clone(), n);
    }

    let mut env = vec![
        EnvVar {
            name: "TEXTREC_RUN".into(),
            value: Some(run_name.clone()),
            ..Default::default()
        },
        EnvVar {
            name: "TEXTREC_TRIAL".into(),
            value: Some(trial.name.clone()),
            ..Default::default()
        },
        pod_security::tmpdir_env(),
    ];
    // After ours, so that a run's own `env` wins (the last of duplicate names applies).
    env.extend(spec.env.iter().cloned());

    let (tmp_volume, tmp_mount) = pod_parts::scratch_tmp();
    let mut volumes = vec![
        tmp_volume,
        // Data loader threads share batches through /dev/shm; the container default is 64 MiB.
        Volume {
            name: "dshm".into(),
            empty_dir: Some(EmptyDirVolumeSource {
                medium: Some("Memory".into()),
                ..Default::default()
            }),
            ..Default::default()
        },
    ];
    let mut mounts = vec![
        tmp_mount,
        VolumeMount {
            name: "dshm".into(),
            mount_path: "/dev/shm".into(),
            ..Default::default()
        },
    ];
    if let Some(pvc) = &spec.storage.pvc {
        let (v, m) =
            pod_parts::storage_pvc(pvc, || pod_parts::file_url_path(&spec.storage.url), None);
        volumes.push(v);
        mounts.push(m);
    }

    // The run's own volumes come after the operator's; validation keeps their names and paths
    // apart (`validate::check_volumes`).
    volumes.extend(spec.volumes.iter().cloned());
    mounts.extend(spec.volume_mounts.iter().cloned());

    let (node_selector, tolerations, affinity) =
        placement(&spec.scheduling, spec.resources.gpus, &gpu_resource);

    let container = Container {
        name: CONTAINER.into(),
        image: Some(spec.image.clone()),
        image_pull_policy: spec.image_pull_policy.map(|p| p.as_str().to_string()),
        command: Some(vec!["textrec-worker".into()]),
        args: Some(args),
        env: Some(env),
        env_from: pod_parts::secret_env(spec.storage.secret_ref.as_ref()),
        resources: Some(ResourceRequirements {
            requests: (!requests.is_empty()).then_some(requests),
            limits: (!limits.is_empty()).then_some(limits),
            ..Default::default()
        }),
        volume_mounts: Some(mounts),
        termination_message_path: Some(POD_TERMINATION_LOG.into()),
        // The worker writes its final progress.json there; on a crash the log tail explains it.
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        security_context: Some(pod_security::container_security_context()),
        ..Default::default()
    };

    let owner = run
        .controller_owner_ref(&())
        .expect("TrainingRun has a name and uid");
    let on_exit = |action: &str, code: i32| PodFailurePolicyRule {
        action: action.into(),
        on_exit_codes: Some(PodFailurePolicyOnExitCodesRequirement {
            container_name: Some(CONTAINER.into()),
            operator: "In".into(),
            values: vec![code],
        }),
        on_pod_conditions: None,
    };

    Job {
        metadata: ObjectMeta {
            name: Some(trial.name.clone()),
            namespace: run.metadata.namespace.clone(),
            labels: Some(labels.clone()),
            annotations: Some(BTreeMap::from([
                (OWNER_ANNOTATION.to_string(), run_name.clone()),
                (PARAMS_ANNOTATION.to_string(), trial.params.clone()),
            ])),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(spec.max_restarts_per_trial),
            completions: Some(1),
            parallelism: Some(1),
            suspend: Some(suspend),
            active_deadline_seconds: spec.training.active_deadline_seconds,
            pod_replacement_policy: Some("Failed".into()),
            pod_failure_policy: Some(PodFailurePolicy {
                rules: vec![
                    PodFailurePolicyRule {
                        action: "Ignore".into(),
                        on_exit_codes: None,
                        on_pod_conditions: Some(vec![PodFailurePolicyOnPodConditionsPattern {
                            type_: "DisruptionTarget".into(),
                            status: "True".into(),
                        }]),
                    },
                    on_exit("Ignore", INTERRUPTED),
                    on_exit("FailJob", CONFIG_ERROR),
                ],
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    restart_policy: Some("Never".into()),
                    containers: vec![container],
                    termination_grace_period_seconds: Some(spec.termination_grace_period_seconds),
                    service_account_name: spec.storage.service_account_name.clone(),
                    automount_service_account_token: Some(
                        pod_security::AUTOMOUNT_SERVICE_ACCOUNT_TOKEN,
                    ),
                    node_selector: (!node_selector.is_empty()).then_some(node_selector),
                    tolerations: (!tolerations.is_empty()).then_some(tolerations),
                    affinity,
                    priority_class_name: spec.scheduling.priority_class_name.clone(),
                    topology_spread_constraints: spread(
                        &spec.scheduling,
                        &BTreeMap::from([(RUN_LABEL.to_string(), label_value(&run_name))]),
                    ),
                    volumes: Some(volumes),
                    security_context: Some(pod_security::pod_security_context()),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scheduling(v: serde_json::Value) -> Scheduling {
        serde_json::from_value(v).unwrap()
    }

    /// The required terms as `key=value` lists, one per term.
    fn required(a: &Option<Affinity>) -> Vec<Vec<String>> {
        a.as_ref()
            .and_then(|a| a.node_affinity.as_ref())
            .and_then(|n| {
                n.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .map(|n| {
                n.node_selector_terms
                    .iter()
                    .map(|t| {
                        t.match_expressions
                            .iter()
                            .flatten()
                            .map(|e| format!("{}={}", e.key, e.values.clone().unwrap().join("|")))
                            .collect()
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn the_runs_volumes_and_mounts_follow_the_operators_own() {
        let run: TrainingRun = serde_json::from_value(serde_json::json!({
            "apiVersion": "textrec.dev/v1alpha1", "kind": "TrainingRun",
            "metadata": {"name": "r", "namespace": "ns", "uid": "u-1"},
            "spec": {"image": "w:1", "storage": {"url": "s3://b/runs"},
                     "volumes": [{"name": "flags", "configMap": {"name": "flags"}}],
                     "volumeMounts": [{"name": "flags", "mountPath": "/data/flags", "readOnly": true}]}
        }))
        .unwrap();
        let trial = crate::validate::plan_trials("r", &run.spec)
            .unwrap()
            .remove(0);
        let job = build_job(&run, &trial, false);
        let pod = job.spec.unwrap().template.spec.unwrap();
        let volumes: Vec<String> = pod.volumes.unwrap().into_iter().map(|v| v.name).collect();
        assert_eq!(volumes, ["tmp", "dshm", "flags"]);
        let mounts = pod.containers[0].volume_mounts.clone().unwrap();
        let flags = mounts.iter().find(|m| m.name == "flags").unwrap();
        assert_eq!(
            (flags.mount_path.as_str(), flags.read_only),
            ("/data/flags", Some(true))
        );
        assert!(mounts.iter().any(|m| m.mount_path == "/tmp"));
    }

    #[test]
    fn eks_spot_matches_managed_node_groups_and_karpenter() {
        let (sel, tol, aff) = placement(
            &scheduling(serde_json::json!({"spot": true, "spotProvider": "EKS"})),
            0,
            "nvidia.com/gpu",
        );
        assert!(sel.is_empty(), "{sel:?}");
        assert!(tol.is_empty(), "{tol:?}");
        assert_eq!(
            required(&aff),
            [
                vec!["eks.amazonaws.com/capacityType=SPOT"],
                vec!["karpenter.sh/capacity-type=spot"]
            ]
        );
    }

    #[test]
    fn karpenter_spot_is_a_node_selector() {
        let (sel, _, aff) = placement(
            &scheduling(serde_json::json!({"spot": true, "spotProvider": "Karpenter"})),
            0,
            "nvidia.com/gpu",
        );
        assert_eq!(sel[KARPENTER_CAPACITY], "spot");
        assert!(aff.is_none());
    }

    #[test]
    fn any_spot_covers_every_cloud_and_keeps_the_users_required_affinity() {
        let (_, tol, aff) = placement(
            &scheduling(serde_json::json!({"spot": true})),
            0,
            "nvidia.com/gpu",
        );
        assert_eq!(required(&aff).len(), 4);
        assert!(required(&aff).contains(&vec!["karpenter.sh/capacity-type=spot".to_string()]));
        assert_eq!(tol.len(), 2);

        // A required affinity of the user's own is ANDed with the spot terms, not dropped.
        let s = scheduling(serde_json::json!({
            "spot": true, "spotProvider": "EKS",
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]},
                    {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]}
                ]}}}
        }));
        let (_, _, aff) = placement(&s, 0, "nvidia.com/gpu");
        assert_eq!(
            required(&aff),
            [
                vec!["zone=a", "eks.amazonaws.com/capacityType=SPOT"],
                vec!["zone=a", "karpenter.sh/capacity-type=spot"],
                vec!["zone=b", "eks.amazonaws.com/capacityType=SPOT"],
                vec!["zone=b", "karpenter.sh/capacity-type=spot"],
            ]
        );
    }

    #[test]
    fn spread_constraints_without_a_selector_spread_the_objects_own_pods() {
        let s = scheduling(serde_json::json!({"topologySpreadConstraints": [
            {"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway"}
        ]}));
        let own = BTreeMap::from([(RUN_LABEL.to_string(), "r".to_string())]);
        let c = spread(&s, &own).unwrap();
        assert_eq!(
            c[0].label_selector.as_ref().unwrap().match_labels,
            Some(own)
        );
        assert!(spread(&Scheduling::default(), &BTreeMap::new()).is_none());
    }

    #[test]
    fn gke_spot_and_gpus_add_selector_and_tolerations() {
        let (sel, tol, aff) = placement(
            &scheduling(serde_json::json!({"spot": true, "spotProvider": "GKE"})),
            1,
            "nvidia.com/gpu",
        );
        assert_eq!(sel[GKE_SPOT], "true");
        let keys: Vec<_> = tol.iter().filter_map(|t| t.key.as_deref()).collect();
        assert_eq!(keys, ["nvidia.com/gpu", GKE_SPOT]);
        assert!(aff.is_none());
    }
}
