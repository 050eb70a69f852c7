//! `TrainingRun`: one hyperparameter search (or a single training) run as `batch/v1` Jobs.

// kube's `printcolumn(...)` entries repeat `type_ = ...` by design; clippy reads them as
// duplicated attributes.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, EnvVar, Toleration, TopologySpreadConstraint, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::preserve_unknown_object;

/// Largest `maxTrials` the schema accepts. Status holds one small entry per trial, so this caps
/// the object size far below etcd's 1.5 MiB limit.
pub const MAX_TRIALS_CAP: i32 = 256;

/// Desired state of a TrainingRun.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[kube(
    group = "textrec.dev",
    version = "v1alpha1",
    kind = "TrainingRun",
    namespaced,
    status = "TrainingRunStatus",
    shortname = "trun",
    category = "textrec",
    doc = "A training run of the textrec recognizer: one Job per trial of a hyperparameter search.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Trials",
        type_ = "string",
        description = "trials done/total",
        json_path = ".status.trialsDone"
    ),
    printcolumn(
        name = "Running",
        type_ = "integer",
        description = "trials whose pod runs (or is starting)",
        json_path = ".status.counts.running"
    ),
    printcolumn(
        name = "Best",
        type_ = "number",
        description = "best objective value",
        json_path = ".status.bestModel.metric"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        description = "what keeps the run from progressing, if anything",
        json_path = ".status.reason"
    ),
    printcolumn(
        name = "Best-Trial",
        type_ = "string",
        priority = 1,
        json_path = ".status.bestTrial"
    ),
    printcolumn(
        name = "Message",
        type_ = "string",
        priority = 1,
        json_path = ".status.message"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("self.search.parallelism <= self.search.maxTrials").message("spec.search.parallelism must not exceed spec.search.maxTrials").field_path(".search.parallelism"))]
#[x_kube(validation = Rule::new("!has(self.earlyStopping) || !has(self.earlyStopping.minTrialsRequired) || self.earlyStopping.minTrialsRequired < self.search.maxTrials").message("spec.earlyStopping.minTrialsRequired counts the other trials: it must be less than spec.search.maxTrials").field_path(".earlyStopping.minTrialsRequired"))]
// Kubernetes knows no `uint64` format: see `kubernetes_formats`.
#[schemars(transform = super::kubernetes_formats)]
#[serde(rename_all = "camelCase")]
pub struct TrainingRunSpec {
    /// Worker image (runs `textrec-worker train`). Left out: the operator's default worker
    /// image (the chart's `defaults.workerImage`, or `defaults.workerGpuImage` when
    /// `resources.gpus` > 0); with no default configured the run is invalid.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(min = 1))]
    pub image: String,
    /// Image pull policy of the worker container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<PullPolicy>,
    /// Where trials write checkpoints, metrics and models, and how pods get credentials. Each
    /// field left out takes the operator's default (the chart's `defaults.storage`), if any.
    #[serde(default)]
    pub storage: StorageSpec,
    /// Training and validation data.
    #[serde(default)]
    pub data: DataSpec,
    /// Model architecture.
    #[serde(default)]
    pub model: ModelSizeSpec,
    /// Fine-tune: every trial starts from this model's weights and takes its architecture.
    /// Resolved once, when the run starts, into `status.initFrom`, so every trial and retry
    /// starts from the same parent even if a deployment promotes another model meanwhile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_from: Option<InitFrom>,
    /// Trial config as plain JSON/YAML, keyed like the worker's config (`optimizer: {lr: ...}`).
    /// A list is a set of values to search; a scalar or object is fixed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserve_unknown_object")]
    pub hyperparameters: Option<serde_json::Value>,
    /// How the search space is explored.
    #[serde(default)]
    pub search: SearchSpec,
    /// What "best" means.
    #[serde(default)]
    pub objective: ObjectiveSpec,
    /// Training budget, evaluation and checkpoint intervals.
    #[serde(default)]
    pub training: TrainingBudget,
    /// Stop trials that are doing badly before their budget is spent (the median stopping
    /// rule). Left out: every trial runs to the end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub early_stopping: Option<EarlyStoppingSpec>,
    /// Compute resources of each trial pod.
    #[serde(default)]
    pub resources: TrialResources,
    /// Where trial pods may run.
    #[serde(default)]
    pub scheduling: Scheduling,
    /// Seconds a pod gets between SIGTERM and SIGKILL: long enough to write a checkpoint.
    #[serde(default = "default_grace")]
    #[schemars(range(min = 10, max = 3600))]
    pub termination_grace_period_seconds: i64,
    /// Failed trials tolerated before the run fails (a trial fails when it exhausts its restarts
    /// or hits a configuration error).
    #[serde(default = "default_max_failed")]
    #[schemars(range(min = 0, max = 256))]
    pub max_failed_trials: i32,
    /// Restarts of one trial after failures (the Job's `backoffLimit`). Preemptions do not count.
    #[serde(default = "default_max_restarts")]
    #[schemars(range(min = 0, max = 100))]
    pub max_restarts_per_trial: i32,
    /// Stop starting trials and delete running ones (they resume from checkpoints on unsuspend).
    #[serde(default)]
    pub suspend: bool,
    /// Extra environment variables of the worker container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 128))]
    pub env: Vec<EnvVar>,
    /// Volumes added to every trial pod, for `spec.volumeMounts` (data on a PVC, an NFS share,
    /// a ConfigMap). Names must be unique and must not be the operator's own (`tmp`, `dshm`,
    /// `storage`); `hostPath` volumes are refused unless the operator runs with
    /// `--allow-host-path-volumes` (the chart's `allowHostPathVolumes`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub volumes: Vec<Volume>,
    /// Where the worker container mounts `spec.volumes`; each names one of them. Paths must not
    /// be the operator's own mounts (`/tmp`, `/dev/shm`, the storage PVC's path).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub volume_mounts: Vec<VolumeMount>,
}

fn default_grace() -> i64 {
    120
}
fn default_max_failed() -> i32 {
    3
}
fn default_max_restarts() -> i32 {
    3
}

/// Container image pull policy.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, JsonSchema)]
pub enum PullPolicy {
    /// Always pull.
    Always,
    /// Pull when missing.
    IfNotPresent,
    /// Never pull.
    Never,
}

impl PullPolicy {
    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
    }
}

/// Storage of a run and the credentials pods use for it.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.url) || !self.url.startsWith('file://') || has(self.pvc)").message("spec.storage.pvc is required for file:// storage (pods need the volume)").field_path(".pvc"))]
pub struct StorageSpec {
    /// Prefix URL: `s3://bucket/prefix`, `gs://…`, `az://…` or `file:///path` (with `pvc`).
    /// Trials write to `<url>/<run>/<trial>/`. Left out: the operator's default storage URL.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[x_kube(validation = Rule::new("self.matches('^(s3|gs|az|file)://.+')").message("must be an s3://, gs://, az:// or file:// URL"))]
    #[schemars(length(max = 2048))]
    pub url: String,
    /// A Secret whose keys become environment variables of the pods (`AWS_ACCESS_KEY_ID`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<String>,
    /// ServiceAccount of the pods, for IRSA (EKS) or Workload Identity (GKE).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// A PersistentVolumeClaim mounted at the `file://` URL's path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvc: Option<PvcMount>,
}

/// A PersistentVolumeClaim to mount.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PvcMount {
    /// Name of the claim.
    #[schemars(length(min = 1))]
    pub claim_name: String,
    /// Where it is mounted; defaults to the path of the `file://` URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount_path: Option<String>,
}

/// Training and validation data sets.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.train) && has(self.sources))").message("set train (one data set) or sources (a weighted mix), not both").field_path(".sources"))]
pub struct DataSpec {
    /// One training data set (default: synthetic lines). For several, use `sources`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train: Option<DatasetRef>,
    /// Training data as a weighted mix of sources, instead of `train`: e.g.
    /// `[{kind: synthetic, weight: 0.7}, {kind: tesstrain, path: "s3://bucket/flags/",
    /// weight: 0.3, augment: true}]`. Each source is drawn with its share of `weight` (weights
    /// are normalised) in an order fixed by the seed, so a resumed trial reads exactly what an
    /// uninterrupted one would have. The worker's `data.train` list.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(min = 1, max = 16))]
    pub sources: Vec<DatasetRef>,
    /// The validation set the objective is measured on (default: synthetic held-out text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<DatasetRef>,
}

impl DataSpec {
    /// The training sources with the spec path of each (`spec.data.train` for the single set,
    /// `spec.data.sources[i]` in a mix); empty when the default applies.
    pub fn training_sources(&self) -> Vec<(String, &DatasetRef)> {
        match &self.train {
            Some(d) => vec![("spec.data.train".to_string(), d)],
            None => self
                .sources
                .iter()
                .enumerate()
                .map(|(i, d)| (format!("spec.data.sources[{i}]"), d))
                .collect(),
        }
    }
}

/// One data set, as the worker's `data.train` / `data.validation` config.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.kind == 'synthetic' || has(self.path)").message("path is required for tesstrain and iam data sets").field_path(".path"))]
#[x_kube(validation = Rule::new("!has(self.weight) || self.weight > 0.0").message("weight must be positive").field_path(".weight"))]
pub struct DatasetRef {
    /// `synthetic`, `tesstrain` or `iam`.
    pub kind: DatasetKind,
    /// Folder of a tesstrain or IAM set: a storage URL (`s3://`, `gs://`, `az://`, fetched into
    /// the worker's data cache) or a path inside the pod (a volume of `spec.volumeMounts`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub path: Option<String>,
    /// IAM only: file listing the line ids of this split (a URL or a path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split_file: Option<String>,
    /// Size of a synthetic set, or a cap on a training set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub samples: Option<u64>,
    /// In `sources`: this source's share of the mix (positive; weights are normalised; 1 when
    /// left out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<f64>,
    /// Training sources only: distort the lines like synthetic ones (`true` for a tesstrain or
    /// IAM set), or render synthetic lines clean (`false`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub augment: Option<bool>,
}

/// Kind of data set.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DatasetKind {
    /// Rendered on the fly.
    Synthetic,
    /// `NAME.png` + `NAME.gt.txt` folder.
    Tesstrain,
    /// The IAM database.
    Iam,
}

impl DatasetKind {
    /// The worker's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            DatasetKind::Synthetic => "synthetic",
            DatasetKind::Tesstrain => "tesstrain",
            DatasetKind::Iam => "iam",
        }
    }
}

/// Model sizes: a preset plus optional overrides (which may also be searched through
/// `hyperparameters.model`).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelSizeSpec {
    /// `tiny`, `small` (default) or `base`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<ModelPreset>,
    /// Transformer width.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 8, max = 4096))]
    pub d_model: Option<i64>,
    /// Attention heads (must divide dModel).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 64))]
    pub heads: Option<i64>,
    /// Decoder layers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 48))]
    pub decoder_layers: Option<i64>,
    /// Channels of each ResNet stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 8))]
    pub encoder_channels: Option<Vec<i64>>,
    /// Residual blocks per ResNet stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 8))]
    pub encoder_blocks: Option<Vec<i64>>,
    /// Start every trial from this model's weights (fine-tuning): a model folder URL that trial
    /// pods can read (`s3://…`, `file://…` on the storage volume) or `builtin:small`, the
    /// pretrained model in the worker image. Its architecture must be the one this spec trains.
    /// The older spelling of `spec.initFrom.url` (without a version check); set one or the
    /// other.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub init_from: Option<String>,
}

/// Named model size.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ModelPreset {
    /// Tests only.
    Tiny,
    /// Laptop CPU.
    Small,
    /// GPU training.
    Base,
}

impl ModelPreset {
    /// The worker's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelPreset::Tiny => "tiny",
            ModelPreset::Small => "small",
            ModelPreset::Base => "base",
        }
    }
}

/// Search over `hyperparameters`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SearchSpec {
    /// `Grid` (every combination, in order) or `Random` (seeded sample without replacement).
    #[serde(default)]
    pub algorithm: SearchAlgorithm,
    /// Seed of `Random`.
    #[serde(default)]
    pub seed: u64,
    /// Most trials to run; a grid larger than this is truncated.
    #[serde(default = "default_max_trials")]
    #[schemars(range(min = 1, max = 256))]
    pub max_trials: i32,
    /// Most trials running at once.
    #[serde(default = "default_parallelism")]
    #[schemars(range(min = 1, max = 256))]
    pub parallelism: i32,
}

fn default_max_trials() -> i32 {
    16
}
fn default_parallelism() -> i32 {
    1
}

impl Default for SearchSpec {
    fn default() -> Self {
        Self {
            algorithm: SearchAlgorithm::Grid,
            seed: 0,
            max_trials: default_max_trials(),
            parallelism: default_parallelism(),
        }
    }
}

/// Search algorithm.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default, JsonSchema)]
pub enum SearchAlgorithm {
    /// Cartesian product of all lists.
    #[default]
    Grid,
    /// Seeded random sample of the grid, without duplicates.
    Random,
}

/// What the search optimizes.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObjectiveSpec {
    /// Validation metric: `cer` (default) or `wer`.
    #[serde(default)]
    pub metric: ObjectiveMetric,
    /// `Minimize` (default) or `Maximize`.
    #[serde(default)]
    pub direction: Direction,
}

/// A validation metric the worker reports.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ObjectiveMetric {
    /// Character error rate.
    #[default]
    Cer,
    /// Word error rate.
    Wer,
}

impl ObjectiveMetric {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectiveMetric::Cer => "cer",
            ObjectiveMetric::Wer => "wer",
        }
    }
}

/// Optimization direction.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default, JsonSchema)]
pub enum Direction {
    /// Smaller is better (error rates).
    #[default]
    Minimize,
    /// Larger is better.
    Maximize,
}

impl Direction {
    /// Whether `a` is strictly better than `b`.
    pub fn better(self, a: f64, b: f64) -> bool {
        match self {
            Direction::Minimize => a < b,
            Direction::Maximize => a > b,
        }
    }
}

/// Early stopping of trials that are doing badly.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EarlyStoppingSpec {
    /// `MedianStop`: stop a trial whose best objective so far is worse than the median of the
    /// other trials' running averages of the objective at the same step.
    #[serde(default)]
    pub algorithm: EarlyStoppingAlgorithm,
    /// No trial is stopped on an evaluation before this step.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub start_step: u64,
    /// Other trials that must have evaluated at (or beyond) a step before a trial can be
    /// stopped at that step.
    #[serde(default = "default_min_trials_required")]
    #[schemars(range(min = 1, max = 256))]
    pub min_trials_required: i32,
}

fn default_min_trials_required() -> i32 {
    3
}

/// Early stopping rule.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default, JsonSchema)]
pub enum EarlyStoppingAlgorithm {
    /// The median stopping rule.
    #[default]
    MedianStop,
}

/// Training budget and intervals; unset fields keep the worker's defaults.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrainingBudget {
    /// Total optimizer steps of each trial.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_steps: Option<u64>,
    /// Lines per step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 4096))]
    pub batch_size: Option<u64>,
    /// Evaluate every this many steps (progress reaches the status at each evaluation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub eval_interval: Option<u64>,
    /// Checkpoint every this many steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub checkpoint_every_steps: Option<u64>,
    /// Checkpoint when this many seconds passed since the last one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub checkpoint_every_seconds: Option<u64>,
    /// `auto`, `cpu` or `cuda`; defaults to `cuda` when GPUs are requested, else `cpu`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<TrainDevice>,
    /// Give up on a trial after this many seconds (the Job's `activeDeadlineSeconds`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 60))]
    pub active_deadline_seconds: Option<i64>,
}

/// Training device.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TrainDevice {
    /// CUDA when available.
    Auto,
    /// CPU.
    Cpu,
    /// CUDA.
    Cuda,
}

impl TrainDevice {
    /// The worker's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            TrainDevice::Auto => "auto",
            TrainDevice::Cpu => "cpu",
            TrainDevice::Cuda => "cuda",
        }
    }
}

/// Resources of one trial pod.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrialResources {
    /// GPUs per trial (requested and limited as `gpuResourceName`).
    #[serde(default)]
    #[schemars(range(min = 0, max = 16))]
    pub gpus: i32,
    /// Extended resource name of the GPUs (default `nvidia.com/gpu`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_resource_name: Option<String>,
    /// CPU request, a Kubernetes quantity (`"4"`, `"500m"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
    /// Memory request and limit, a Kubernetes quantity (`"8Gi"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
}

/// Placement of pods: a TrainingRun's trial pods, a ModelDeployment's serving pods.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Scheduling {
    /// Run on spot/preemptible nodes (see `spotProvider`). Preempted trials resume from their
    /// last checkpoint; a preempted serving replica is replaced.
    #[serde(default)]
    pub spot: bool,
    /// Which spot nodes `spot` selects: `GKE` (`cloud.google.com/gke-spot=true` selector and
    /// toleration), `EKS` (a required node affinity matching EKS managed node groups'
    /// `eks.amazonaws.com/capacityType=SPOT` or Karpenter's `karpenter.sh/capacity-type=spot`),
    /// `Karpenter` (`karpenter.sh/capacity-type=spot` selector, any cloud), or `Any` (the
    /// default): a required node affinity matching GKE's, EKS's, Karpenter's or AKS's spot label,
    /// plus the GKE and AKS spot tolerations. A required node affinity of your own is combined
    /// with (ANDed into) the spot terms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spot_provider: Option<SpotProvider>,
    /// Node labels the pods require.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations of the pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Affinity of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// PriorityClass of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    /// Topology spread constraints of the pods. A constraint without a `labelSelector` spreads
    /// the pods of this object (its run's trials, or its serving replicas).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,
}

/// Which cloud's spot node labels to select.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, JsonSchema)]
pub enum SpotProvider {
    /// Google Kubernetes Engine.
    GKE,
    /// Amazon EKS: managed node groups or Karpenter.
    EKS,
    /// Karpenter-provisioned nodes (`karpenter.sh/capacity-type`).
    Karpenter,
    /// Any cloud's spot nodes (node affinity over the GKE, EKS, Karpenter and AKS labels).
    Any,
}

/// Observed state of a TrainingRun.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default, JsonSchema)]
// Kubernetes knows no `uint64` format: see `kubernetes_formats`.
#[schemars(transform = super::kubernetes_formats)]
#[serde(rename_all = "camelCase")]
pub struct TrainingRunStatus {
    /// `Pending`, `Running`, `Suspended`, `Succeeded`, `Failed` or `Invalid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<RunPhase>,
    /// The generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`-style conditions: `Valid`, `Running`, `Succeeded`, `Failed`, `Suspended`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// What keeps the run from progressing, when something does (CamelCase, for printing): an
    /// invalid spec, a referenced object that does not exist (`PersistentVolumeClaimNotFound`),
    /// or trials whose pods cannot start (`Unschedulable`, `ImagePullBackOff`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The explanation of `reason`: the validation error, or the scheduler's or kubelet's message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// `done/total`, for printing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trials_done: Option<String>,
    /// Counts of trials by phase.
    #[serde(default)]
    pub counts: TrialCounts,
    /// One small entry per trial (at most `maxTrials` ≤ 256).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub trials: Vec<TrialStatus>,
    /// Name of the best trial so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_trial: Option<String>,
    /// The best finished model, once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_model: Option<BestModel>,
    /// `spec.initFrom` as resolved when the run started: the parent model every trial starts
    /// from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_from: Option<ResolvedParent>,
    /// When the first trial started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the run finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
}

/// Phase of a run.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, JsonSchema)]
pub enum RunPhase {
    /// No trial runs yet: none started, or their pods cannot start (see `reason`), or an object
    /// the spec names does not exist.
    Pending,
    /// Trials are running or queued.
    Running,
    /// `spec.suspend` is set.
    Suspended,
    /// Every trial finished and at least one produced a model.
    Succeeded,
    /// Too many trials failed, or none succeeded.
    Failed,
    /// The spec cannot run (see the `Valid` condition).
    Invalid,
}

impl RunPhase {
    /// Whether the run is over.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunPhase::Succeeded | RunPhase::Failed | RunPhase::Invalid
        )
    }
}

/// Trial counts.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrialCounts {
    /// Trials in the search.
    pub total: i32,
    /// Not started yet, or started but their pod cannot start.
    pub pending: i32,
    /// Job created and its pod running, starting or restarting.
    pub running: i32,
    /// Finished with a model.
    pub succeeded: i32,
    /// Failed for good.
    pub failed: i32,
    /// Stopped early by `spec.earlyStopping` (left out when none is).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub early_stopped: i32,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

/// Phase of one trial.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, JsonSchema)]
pub enum TrialPhase {
    /// Not started: waiting for a parallelism slot, or (with a `reason`) its Job exists but its
    /// pod cannot start (unschedulable, image pull, missing Secret, stuck terminating).
    Pending,
    /// Job created; no pod running yet.
    Starting,
    /// A pod is training.
    Running,
    /// The pod was disrupted (spot reclaim, eviction) or failed; a new pod resumes from the
    /// checkpoint.
    Restarting,
    /// Finished; model written.
    Succeeded,
    /// Failed for good.
    Failed,
    /// Stopped by `spec.earlyStopping` (see `earlyStopping`): over, without a model; its
    /// newest checkpoint is kept.
    EarlyStopped,
}

impl TrialPhase {
    /// Whether the trial is over.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TrialPhase::Succeeded | TrialPhase::Failed | TrialPhase::EarlyStopped
        )
    }
    /// Whether it occupies a parallelism slot.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            TrialPhase::Starting | TrialPhase::Running | TrialPhase::Restarting
        )
    }
}

/// One trial's status; kept small because a run holds up to 256 of them.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrialStatus {
    /// Trial (and Job) name.
    pub name: String,
    /// Phase.
    pub phase: TrialPhase,
    /// Its searched values, `key=value` comma-separated (fixed values are in the spec).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub params: String,
    /// Optimizer steps done.
    #[serde(default)]
    pub step: u64,
    /// Latest evaluation of the objective metric.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_metric: Option<f64>,
    /// Best evaluation of the objective metric.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_metric: Option<f64>,
    /// CER of the best evaluation on each extra validation set, by set name (e.g.
    /// `unseen-fonts`: held-out prose in fonts the model never trains on).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub best_extra_cer: BTreeMap<String, f64>,
    /// How the best metrics were read: absent while training (evaluations read with `joint`);
    /// once the trial succeeded, the decoding its model is served with, which the best
    /// metrics were measured again in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_decoding: Option<textrec_contract::manifest::DecodeMode>,
    /// The horizontal stretch the best metrics were read at (1: lines as drawn), once the
    /// trial succeeded and compared reading widths: its model reads at this width.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_reading_width: Option<f64>,
    /// Pods that failed and were replaced (not counting preemptions).
    #[serde(default)]
    pub restarts: i32,
    /// Pods lost to disruptions (spot reclaim, eviction, preemption).
    #[serde(default)]
    pub preemptions: i32,
    /// Checkpoint a restarted pod resumes from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<CheckpointStatus>,
    /// Why its pod cannot start or why it failed, as the scheduler or kubelet put it
    /// (`Unschedulable`, `ImagePullBackOff`, `InvalidImageName`, `PodStuckTerminating`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Why it failed or cannot start, or other short detail (≤ 256 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Set once `spec.earlyStopping` decided to stop the trial: the numbers it decided on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub early_stopping: Option<EarlyStopStatus>,
}

/// Why a trial was stopped early: at `step`, its best objective was worse than the median of
/// the other trials' running averages.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EarlyStopStatus {
    /// The evaluation step the rule decided at.
    pub step: u64,
    /// The trial's best objective up to that step.
    pub best: f64,
    /// The median of the other trials' running averages at that step.
    pub median: f64,
    /// How many other trials the median was taken over.
    pub trials: i32,
}

/// A trial's resume point.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointStatus {
    /// Step of the checkpoint.
    pub step: u64,
    /// URL of its folder.
    pub url: String,
}

/// The best model of a run.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BestModel {
    /// Trial that trained it.
    pub trial: String,
    /// URL of the model folder.
    pub url: String,
    /// Model version (sha256 of its manifest).
    pub sha256: String,
    /// Objective value.
    pub metric: f64,
    /// Name of the metric (`cer`, `wer`).
    pub metric_name: String,
}

/// The model a TrainingRun fine-tunes: exactly one of `url`, `modelDeployment` and
/// `trainingRun`.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.url), has(self.modelDeployment), has(self.trainingRun)].filter(x, x).size() == 1").message("set exactly one of spec.initFrom.url, spec.initFrom.modelDeployment and spec.initFrom.trainingRun"))]
#[x_kube(validation = Rule::new("!has(self.sha256) || has(self.url)").message("spec.initFrom.sha256 goes with spec.initFrom.url (the other sources know their version)").field_path(".sha256"))]
pub struct InitFrom {
    /// A model folder URL trial pods can read, or `builtin:small`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub url: Option<String>,
    /// The expected version of `url` (sha256 of its `manifest.json`); a trial that finds
    /// another model there fails with a configuration error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[0-9a-f]{64}$')").message("must be 64 lower-case hex digits"))]
    pub sha256: Option<String>,
    /// A ModelDeployment in this namespace: the model it serves when the run starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub model_deployment: Option<String>,
    /// A TrainingRun in this namespace: its best model, once it succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub training_run: Option<String>,
}

/// The parent model of a fine-tune, as resolved from `spec.initFrom`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedParent {
    /// Model folder URL.
    pub url: String,
    /// Its version (sha256 of its `manifest.json`), when known (a plain `url` without
    /// `sha256` has none; the trials record the version they read in their models'
    /// provenance).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Where it came from: `url`, `ModelDeployment NAME (revision N)` or `TrainingRun NAME`.
    pub source: String,
}
