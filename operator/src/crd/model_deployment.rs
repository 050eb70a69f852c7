//! `ModelDeployment`: a trained model served by `textrec-worker serve` as a Deployment + Service.

// kube's `printcolumn(...)` entries repeat `type_ = ...` by design; clippy reads them as
// duplicated attributes.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::training_run::{PullPolicy, PvcMount, Scheduling};

/// Desired state of a ModelDeployment.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[kube(
    group = "textrec.dev",
    version = "v1alpha1",
    kind = "ModelDeployment",
    namespaced,
    status = "ModelDeploymentStatus",
    shortname = "mdep",
    category = "textrec",
    doc = "A textrec model served over gRPC and HTTP, with promotion of better models and rollback.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Revision",
        type_ = "integer",
        json_path = ".status.currentRevision"
    ),
    printcolumn(name = "Metric", type_ = "number", json_path = ".status.model.metric"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(
        name = "Endpoint",
        type_ = "string",
        priority = 1,
        json_path = ".status.endpoint"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("!has(self.autoscaling) || self.autoscaling.minReplicas <= self.autoscaling.maxReplicas").message("spec.autoscaling.minReplicas must not exceed maxReplicas").field_path(".autoscaling.minReplicas"))]
#[x_kube(validation = Rule::new("self.ports.grpc != self.ports.http").message("spec.ports.grpc and spec.ports.http must differ").field_path(".ports.http"))]
// Kubernetes knows no `uint64` format: see `kubernetes_formats`.
#[schemars(transform = super::kubernetes_formats)]
#[serde(rename_all = "camelCase")]
pub struct ModelDeploymentSpec {
    /// The model to serve.
    pub model: ModelSource,
    /// Worker image (runs `textrec-worker serve`). Left out: the operator's default worker
    /// image (the chart's `defaults.workerImage`, or `defaults.workerGpuImage` when
    /// `resources.gpus` > 0); with no default configured the deployment is invalid.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(min = 1))]
    pub image: String,
    /// Image pull policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<PullPolicy>,
    /// Fixed replica count (ignored when `autoscaling` is set).
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: i32,
    /// Scale with a HorizontalPodAutoscaler instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<Autoscaling>,
    /// Resources of each serving pod.
    #[serde(default)]
    pub resources: ServingResources,
    /// Container and Service ports.
    #[serde(default)]
    pub ports: ServingPorts,
    /// How a new model reaches the pods.
    #[serde(default)]
    pub strategy: RolloutStrategy,
    /// Promotion of better models from TrainingRuns.
    #[serde(default)]
    pub promotion: Promotion,
    /// Revisions kept in `status.history`.
    #[serde(default = "default_history")]
    #[schemars(range(min = 1, max = 100))]
    pub revision_history_limit: i32,
    /// Roll back to this revision of `status.history` (it is deployed as a new revision).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub rollback_to: Option<i64>,
    /// How pods read the model from storage.
    #[serde(default)]
    pub credentials: ServingCredentials,
    /// Where serving pods may run: nodeSelector, tolerations, affinity,
    /// topologySpreadConstraints, priorityClassName, and the `spot` shortcut. Pods with
    /// `resources.gpus` also tolerate the `nvidia.com/gpu` taint of GPU node pools.
    #[serde(default)]
    pub scheduling: Scheduling,
    /// Flagged lines (the demo page's Flag button, `POST /v1/flag`): on unless `enabled:
    /// false`, stored as training pairs under `storage`.
    #[serde(default)]
    pub flagging: Flagging,
    /// Serve both ports over TLS with a certificate from a Secret (cert-manager's layout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ServingTls>,
    /// Require a bearer token on every API call (health, readiness and /metrics are exempt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<ServingAuth>,
    /// Read each line at several widths and keep the most confident reading (`serve
    /// --widths`): for fonts narrower or wider than the model's training fonts, at the cost
    /// of more readings per line. Left out: as the model's manifest says (the width its
    /// training chose; `widths: [1]` reads each line once as drawn).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reading: Option<Reading>,
    /// The type the serving pods' encoder computes in (see [`ServingPrecision`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<ServingPrecision>,
}

/// The type the serving pods' encoder computes in (`serve --precision`): `fp32`, `bf16`, or
/// `auto` (bf16 on nodes whose CPU has AVX512-BF16, such as AMD Zen 4 or Intel Sapphire
/// Rapids; fp32 elsewhere). bf16 reads 1.25-1.35× faster there at nearly the same CER; on
/// other CPUs `bf16` is emulated and slower than fp32. Left out: fp32. Promotion evaluations
/// read in fp32 whatever this says, so that models are always compared alike.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ServingPrecision {
    /// fp32 throughout.
    Fp32,
    /// The encoder in bf16 on every node.
    Bf16,
    /// bf16 on nodes whose CPU computes it natively, fp32 elsewhere.
    Auto,
}

impl ServingPrecision {
    /// The `serve` arguments that ask for it.
    pub fn serve_args(self) -> [String; 2] {
        let value = match self {
            ServingPrecision::Fp32 => "fp32",
            ServingPrecision::Bf16 => "bf16",
            ServingPrecision::Auto => "auto",
        };
        ["--precision".to_string(), value.to_string()]
    }
}

/// Reading each line at several horizontal stretches.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.widths.all(w, self.widths.filter(x, x == w).size() == 1)").message("spec.reading.widths must not repeat a factor").field_path(".widths"))]
pub struct Reading {
    /// Horizontal stretch factors (height unchanged), e.g. `[1, 1.1, 1.25, 1.4, 1.6]`: every
    /// line is read at the first, and at the others as `rereadBelow` says. Each further
    /// width costs about one more reading of the line.
    #[schemars(length(min = 1, max = 8), inner(range(min = 0.25, max = 4.0)))]
    pub widths: Vec<f64>,
    /// Read a line at the further widths only when its first reading's confidence is below
    /// this (0-1). Left out: every line is read at every width.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub reread_below: Option<f64>,
}

impl Reading {
    /// The `serve` arguments that ask for this reading. The server reads factors as `f32`:
    /// two that the API server told apart but `f32` does not are passed once, since the server
    /// refuses a repeated factor.
    pub fn serve_args(&self) -> Vec<String> {
        let mut seen: Vec<f32> = Vec::new();
        let widths: Vec<String> = self
            .widths
            .iter()
            .filter(|&&w| {
                let narrow = w as f32;
                let new = !seen.contains(&narrow);
                seen.push(narrow);
                new
            })
            .map(|w| w.to_string())
            .collect();
        let mut args = vec!["--widths".to_string(), widths.join(",")];
        if let Some(c) = self.reread_below {
            args.extend(["--reread-below".to_string(), c.to_string()]);
        }
        args
    }
}

/// Where flagged lines go and how many are kept.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Flagging {
    /// Off: the Flag button answers 501.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Folder URL for the flags (`s3://`, `gs://`, `az://`, `file://` on the PVC of
    /// `credentials.pvc`, which is then mounted writable). Left out: the operator's default
    /// storage (chart value `defaults.storage.url`) + `/flags/<namespace>/<name>/`, or locally
    /// the storage root + `/flags/<namespace>/<name>/`; with neither, flagging stays off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub storage: Option<String>,
    /// The most flags kept; past it the oldest are deleted.
    #[serde(default = "default_max_flags")]
    #[schemars(range(min = 1, max = 10_000_000))]
    pub max_samples: i64,
    /// Flags one client (IP address) may send per minute; more answer 429.
    #[serde(default = "default_flags_per_minute")]
    #[schemars(range(min = 1, max = 6000))]
    pub per_client_per_minute: i32,
    /// Proxies in front of the serving pods (ingress controllers, load balancers) as CIDRs,
    /// e.g. `10.0.0.0/8`. From these the client address is taken from `X-Forwarded-For`, so
    /// the per-client limit applies to each client instead of to the proxy. Empty: the
    /// connection's peer counts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 32),
        inner(length(max = 64), regex(pattern = r"^[0-9a-fA-F.:]+/[0-9]{1,3}$"))
    )]
    pub trusted_proxies: Vec<String>,
}

impl Default for Flagging {
    fn default() -> Self {
        Self {
            enabled: true,
            storage: None,
            max_samples: default_max_flags(),
            per_client_per_minute: default_flags_per_minute(),
            trusted_proxies: Vec::new(),
        }
    }
}

impl Flagging {
    /// The flags folder of `namespace/name` under a storage root URL.
    pub fn folder_under(root: &str, namespace: &str, name: &str) -> String {
        format!("{}/flags/{namespace}/{name}/", root.trim_end_matches('/'))
    }

    /// `serve` arguments for flags stored at `url`.
    pub fn serve_args(&self, url: &str) -> Vec<String> {
        let mut args = vec![
            "--flags".into(),
            url.into(),
            "--flags-max-samples".into(),
            self.max_samples.to_string(),
            "--flag-rate".into(),
            self.per_client_per_minute.to_string(),
        ];
        if !self.trusted_proxies.is_empty() {
            args.extend(["--trusted-proxies".into(), self.trusted_proxies.join(",")]);
        }
        args
    }
}

fn default_true() -> bool {
    true
}

fn default_max_flags() -> i64 {
    10_000
}

fn default_flags_per_minute() -> i32 {
    30
}

/// TLS of the serving ports.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServingTls {
    /// A Secret in this namespace holding `tls.crt` and `tls.key` (PEM), and with
    /// `clientAuth` also `ca.crt`: what cert-manager writes for a Certificate. The server
    /// picks up a renewed certificate within about a minute and a half, without a restart.
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
    /// Mutual TLS: require client certificates signed by the Secret's `ca.crt`. Clients
    /// without one may still reach `/healthz` and `/readyz` on the HTTP port (the kubelet's
    /// probes).
    #[serde(default)]
    pub client_auth: bool,
}

/// Bearer-token authentication of the API.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServingAuth {
    /// A Secret in this namespace holding the accepted tokens, one per line.
    #[schemars(length(min = 1, max = 253))]
    pub token_secret_name: String,
    /// The key of that Secret holding the tokens (default `token`).
    #[serde(default = "default_token_key")]
    #[schemars(length(min = 1, max = 253), pattern(r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

fn default_token_key() -> String {
    "token".into()
}

fn default_replicas() -> i32 {
    1
}
fn default_history() -> i32 {
    10
}

/// Where the model comes from: exactly one of `fromTrainingRun` and `url`.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.fromTrainingRun) != has(self.url)").message("set exactly one of spec.model.fromTrainingRun and spec.model.url"))]
#[x_kube(validation = Rule::new("!has(self.url) || has(self.sha256)").message("spec.model.sha256 is required with spec.model.url").field_path(".sha256"))]
pub struct ModelSource {
    /// A TrainingRun in this namespace: its best model once it succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_training_run: Option<String>,
    /// URL of a model folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Its version (sha256 of its `manifest.json`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[0-9a-f]{64}$')").message("must be 64 lower-case hex digits"))]
    pub sha256: Option<String>,
    /// Its validation metric, if known (used by automatic promotion).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<f64>,
}

/// HorizontalPodAutoscaler settings.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Autoscaling {
    /// Fewest replicas.
    #[schemars(range(min = 1, max = 1000))]
    pub min_replicas: i32,
    /// Most replicas.
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,
    /// Average CPU utilization to keep, in percent of the request.
    #[serde(default = "default_cpu_target")]
    #[schemars(range(min = 1, max = 100))]
    pub target_cpu_utilization_percentage: i32,
}

fn default_cpu_target() -> i32 {
    70
}

/// Resources of a serving pod.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServingResources {
    /// CPU request (a quantity, default `"500m"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
    /// Memory request and limit (default `"512Mi"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    /// GPUs per pod (`nvidia.com/gpu`).
    #[serde(default)]
    #[schemars(range(min = 0, max = 8))]
    pub gpus: i32,
}

/// Ports of the server.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServingPorts {
    /// gRPC port (recognition API and `grpc.health.v1`).
    #[serde(default = "default_grpc")]
    #[schemars(range(min = 1, max = 65535))]
    pub grpc: i32,
    /// HTTP port (REST, demo page, metrics).
    #[serde(default = "default_http")]
    #[schemars(range(min = 1, max = 65535))]
    pub http: i32,
}

fn default_grpc() -> i32 {
    50051
}
fn default_http() -> i32 {
    8080
}

impl Default for ServingPorts {
    fn default() -> Self {
        Self {
            grpc: default_grpc(),
            http: default_http(),
        }
    }
}

/// How a new model reaches running pods.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default, JsonSchema)]
pub enum RolloutStrategy {
    /// New pods with the new model (`--model URL` in the pod template), old ones drained.
    #[default]
    RollingUpdate,
    /// Running pods switch in place: the operator rewrites the model pointer ConfigMap the pods
    /// mount (see operator/README.md, "HotReload contract").
    HotReload,
}

/// Promotion of models from TrainingRuns.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Promotion {
    /// `Manual` (only `spec.model` changes deploy) or `Automatic`.
    #[serde(default)]
    pub policy: PromotionPolicy,
    /// TrainingRuns (by label) whose best models are candidates under `Automatic`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    /// How much lower (better) the candidate's metric must be than the deployed model's.
    #[serde(default)]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub min_improvement: f64,
    /// Compare like with like: before promoting, evaluate the candidate and the deployed model
    /// on this set and promote only if the candidate's CER there is lower by at least
    /// `minImprovement`. Left out: the runs' own validation metrics are compared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evaluation: Option<PromotionEvaluation>,
}

/// The evaluation set of promotions.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PromotionEvaluation {
    /// A tesstrain folder (NAME.png next to NAME.gt.txt), e.g. a held-out share of the flags:
    /// a path the evaluation Job's pod sees (on the PVC of `credentials.pvc`, mounted at the
    /// same place as the storage), or locally a path or `file://` URL.
    #[schemars(length(min = 1, max = 2048))]
    pub path: String,
    /// Score only the first N lines (in name order).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub samples: Option<i64>,
}

/// Promotion policy.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default, JsonSchema)]
pub enum PromotionPolicy {
    /// Only `spec.model` and `spec.rollbackTo` change what is deployed.
    #[default]
    Manual,
    /// Better models of matching TrainingRuns are rolled out when they finish.
    Automatic,
}

/// Credentials of serving pods for model storage.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServingCredentials {
    /// Secret whose keys become environment variables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<String>,
    /// ServiceAccount (IRSA / Workload Identity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// PVC holding `file://` models.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvc: Option<PvcMount>,
}

/// Observed state of a ModelDeployment.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default, JsonSchema)]
// Kubernetes knows no `uint64` format: see `kubernetes_formats`.
#[schemars(transform = super::kubernetes_formats)]
#[serde(rename_all = "camelCase")]
pub struct ModelDeploymentStatus {
    /// `Pending`, `Progressing`, `Available`, `Degraded` or `Invalid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<DeploymentPhase>,
    /// The generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Valid`, `ModelResolved`, `Available`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Revision now deployed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_revision: Option<i64>,
    /// Model now deployed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<DeployedModel>,
    /// Deployed revisions, newest last (at most `revisionHistoryLimit`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub history: Vec<Revision>,
    /// Recent candidates not promoted, newest last (at most 10).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    pub declined: Vec<Declined>,
    /// Completion time of the newest TrainingRun automatic promotion has considered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promotion_watermark: Option<Time>,
    /// `spec.model` as last applied (so a change of it is a new revision).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_spec_model: Option<String>,
    /// `spec.rollbackTo` as last applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_rollback_to: Option<i64>,
    /// Results on `spec.promotion.evaluation`, newest last (at most 20): the cache of
    /// promotion evaluations, by model version and the set's content digest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    pub evaluations: Vec<Evaluation>,
    /// Ready serving pods.
    #[serde(default)]
    pub ready_replicas: i32,
    /// `host:port` of the gRPC Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}

/// Phase of a ModelDeployment.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, JsonSchema)]
pub enum DeploymentPhase {
    /// No model to deploy yet (e.g. the TrainingRun has not finished).
    Pending,
    /// Rolling out.
    Progressing,
    /// All replicas ready with the current model.
    Available,
    /// Fewer ready replicas than wanted.
    Degraded,
    /// The spec cannot be served (see conditions).
    Invalid,
}

/// A deployed model.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeployedModel {
    /// Model folder URL.
    pub url: String,
    /// Model version.
    pub sha256: String,
    /// Validation metric, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<f64>,
    /// Metric name (`cer`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric_name: Option<String>,
    /// TrainingRun it came from, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training_run: Option<String>,
}

/// One entry of the revision history.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Revision {
    /// Revision number (1, 2, …).
    pub revision: i64,
    /// The model.
    pub model: DeployedModel,
    /// When it was deployed.
    pub deployed_at: Time,
    /// Why (`spec.model`, automatic promotion, rollback).
    pub reason: String,
}

/// A candidate automatic promotion declined.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Declined {
    /// The TrainingRun.
    pub training_run: String,
    /// Its best metric.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<f64>,
    /// Why it was not promoted.
    pub reason: String,
    /// When it was decided.
    pub at: Time,
    /// The deployed model's metric it was compared with (on the evaluation set, if any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployed_metric: Option<f64>,
    /// Content digest of the evaluation set both were scored on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset_digest: Option<String>,
}

/// One model scored on `spec.promotion.evaluation`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Evaluation {
    /// Model version.
    pub model_sha256: String,
    /// Model folder URL.
    pub model_url: String,
    /// `spec.promotion.evaluation.path` it was scored on.
    pub path: String,
    /// `spec.promotion.evaluation.samples` it was scored with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples: Option<i64>,
    /// sha256 of the set's content (see `textrec-worker eval --json`); empty when it failed.
    #[serde(default)]
    pub dataset_digest: String,
    /// Character error rate there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cer: Option<f64>,
    /// Lines scored.
    #[serde(default)]
    pub lines: i64,
    /// Why the evaluation failed, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When it finished.
    pub at: Time,
}
