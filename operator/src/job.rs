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
    Affinity, Container, EmptyDirVolumeSource, EnvFromSource, EnvVar, NodeAffinity, NodeSelector,
    NodeSelectorRequirement, NodeSelectorTerm, PersistentVolumeClaimVolumeSource, PodSpec,
    PodTemplateSpec, ResourceRequirements, SecretEnvSource, Toleration, TopologySpreadConstraint,
    Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::Resource;
use textrec_contract::exit::{CONFIG_ERROR, INTERRUPTED};

use crate::crd::{Scheduling, SpotProvider, TrainingRun};
use crate::naming::{label_value, MANAGED_BY, MANAGER, OWNER_ANNOTATION, RUN_LABEL, TRIAL_LABEL};
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

/// The storage URL of a trial: `<storage>/<run>/<trial>`.
pub fn trial_output(storage_url: &str, run: &str, trial: &str) -> String {
    format!("{}/{run}/{trial}", storage_url.trim_end_matches('/'))
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
                selector.insert(EKS_CAPACITY.into(), "SPOT".into());
            }
            SpotProvider::Any => {
                tolerations.push(toleration(GKE_SPOT, "true"));
                tolerations.push(toleration(AKS_SPOT, "spot"));
                let a = affinity.get_or_insert_with(Affinity::default);
                let na = a.node_affinity.get_or_insert_with(NodeAffinity::default);
                // Terms are ORed: any cloud's spot nodes qualify. A user's own required node
                // affinity wins (ANDing would need the cross product of terms).
                if na
                    .required_during_scheduling_ignored_during_execution
                    .is_none()
                {
                    na.required_during_scheduling_ignored_during_execution = Some(NodeSelector {
                        node_selector_terms: vec![
                            term(GKE_SPOT, "true"),
                            term(EKS_CAPACITY, "SPOT"),
                            term(AKS_SPOT, "spot"),
                        ],
                    });
                }
            }
        }
    }
    (selector, tolerations, affinity)
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

    let mut volumes = vec![
        Volume {
            name: "tmp".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        },
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
        VolumeMount {
            name: "tmp".into(),
            mount_path: "/tmp".into(),
            ..Default::default()
        },
        VolumeMount {
            name: "dshm".into(),
            mount_path: "/dev/shm".into(),
            ..Default::default()
        },
    ];
    if let Some(pvc) = &spec.storage.pvc {
        let path = pvc
            .mount_path
            .clone()
            .unwrap_or_else(|| file_url_path(&spec.storage.url));
        volumes.push(Volume {
            name: "storage".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: pvc.claim_name.clone(),
                ..Default::default()
            }),
            ..Default::default()
        });
        mounts.push(VolumeMount {
            name: "storage".into(),
            mount_path: path,
            ..Default::default()
        });
    }

    let (node_selector, tolerations, affinity) =
        placement(&spec.scheduling, spec.resources.gpus, &gpu_resource);

    let container = Container {
        name: CONTAINER.into(),
        image: Some(spec.image.clone()),
        image_pull_policy: spec.image_pull_policy.map(|p| p.as_str().to_string()),
        command: Some(vec!["textrec-worker".into()]),
        args: Some(args),
        env: Some(env),
        env_from: spec.storage.secret_ref.as_ref().map(|name| {
            vec![EnvFromSource {
                secret_ref: Some(SecretEnvSource {
                    name: name.clone(),
                    optional: Some(false),
                }),
                ..Default::default()
            }]
        }),
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

/// Path of a `file://` URL (`file:///mnt/runs` → `/mnt/runs`).
pub fn file_url_path(url: &str) -> String {
    let p = url.trim_start_matches("file://");
    let p = p.trim_end_matches('/');
    if p.is_empty() {
        "/".into()
    } else {
        p.into()
    }
}
