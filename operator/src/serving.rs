//! The children of a ModelDeployment: Deployment, Service, optional HorizontalPodAutoscaler and,
//! for `HotReload`, the model pointer ConfigMap.
//!
//! HotReload contract (shared with `textrec-worker serve`): the ConfigMap `<name>-model` holds
//! `model-url` (the model folder URL, one line, no newline) and `model-sha256` (its version); it
//! is mounted at [`POINTER_DIR`] and the server runs with
//! `--model-pointer /etc/textrec/model/model-url`. The server reads the pointer at start and
//! re-reads it when the file changes (kubelet swaps the mounted files atomically within about a
//! minute) or on SIGHUP, loads and verifies the new model, and only then switches; a model that
//! fails to load leaves the old one serving. The pod template does not change, so no pod restarts.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec, MetricSpec,
    MetricTarget, ResourceMetricSource,
};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, GRPCAction, HTTPGetAction, PodSpec,
    PodTemplateSpec, Probe, ResourceRequirements, SecretVolumeSource, Service, ServicePort,
    ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;

use crate::crd::{DeployedModel, ModelDeployment, ModelDeploymentSpec, RolloutStrategy};
use crate::naming::{
    label_value, pointer_configmap_name, serving_name, DEPLOYMENT_LABEL, MANAGED_BY, MANAGER,
    OWNER_ANNOTATION,
};
use crate::pod_parts;
use crate::pod_security;

/// Where the pointer ConfigMap is mounted.
pub const POINTER_DIR: &str = "/etc/textrec/model";
/// Pointer file name (URL of the model folder).
pub const POINTER_URL_KEY: &str = "model-url";
/// Version file name (sha256 of the model's manifest).
pub const POINTER_SHA_KEY: &str = "model-sha256";
/// Pod template annotation with the deployed revision (RollingUpdate only: changing it rolls).
pub const REVISION_ANNOTATION: &str = "textrec.dev/revision";
/// Annotation with the deployed model version.
pub const MODEL_SHA_ANNOTATION: &str = "textrec.dev/model-sha256";
/// Where `spec.tls.secretName` is mounted (cert-manager's `tls.crt`, `tls.key`, `ca.crt`).
pub const TLS_DIR: &str = "/etc/textrec/tls";
/// Where `spec.auth.tokenSecretName` is mounted.
pub const AUTH_DIR: &str = "/etc/textrec/auth";
/// Mode of the mounted Secrets' files: readable by the pod's group (`fsGroup`) only.
const SECRET_FILE_MODE: i32 = 0o440;
/// Non-root user of the serving container (the same as every worker pod's).
pub use crate::pod_security::RUN_AS_USER;

/// Selector labels of the serving pods.
pub fn selector_labels(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "textrec".into()),
        ("app.kubernetes.io/component".into(), "serving".into()),
        (DEPLOYMENT_LABEL.into(), label_value(name)),
    ])
}

fn labels(name: &str) -> BTreeMap<String, String> {
    let mut l = selector_labels(name);
    l.insert(MANAGED_BY.into(), MANAGER.into());
    l
}

fn meta(md: &ModelDeployment, name: String) -> ObjectMeta {
    let owner = md
        .controller_owner_ref(&())
        .expect("ModelDeployment has a name and uid");
    ObjectMeta {
        name: Some(name),
        namespace: md.metadata.namespace.clone(),
        labels: Some(labels(md.metadata.name.as_deref().unwrap_or_default())),
        annotations: Some(BTreeMap::from([(
            OWNER_ANNOTATION.into(),
            md.metadata.name.clone().unwrap_or_default(),
        )])),
        owner_references: Some(vec![owner]),
        ..Default::default()
    }
}

/// Where the serving pods store flags: `spec.flagging.storage` (the operator's defaults fill
/// it from the default storage URL), or nowhere when flagging is off or has no storage.
pub fn flags_url(spec: &ModelDeploymentSpec) -> Option<&str> {
    spec.flagging
        .storage
        .as_deref()
        .filter(|_| spec.flagging.enabled)
}

/// The `serve` arguments a ModelDeployment's spec asks for, the same in the cluster and in the
/// local runner: the device, flagging (to `flags`, when on), reading at several widths and
/// the encoder's precision.
pub fn spec_serve_args(spec: &ModelDeploymentSpec, flags: Option<&str>) -> Vec<String> {
    let mut args = Vec::new();
    if spec.resources.gpus > 0 {
        // The server defaults to the CPU: a pod holding a GPU must ask for it.
        args.extend(["--device".into(), "cuda".into()]);
    }
    if let Some(url) = flags {
        args.extend(spec.flagging.serve_args(url));
    }
    if let Some(reading) = &spec.reading {
        args.extend(reading.serve_args());
    }
    if let Some(precision) = spec.precision {
        args.extend(precision.serve_args());
    }
    args
}

/// The serving Deployment for `model` at `revision`.
pub fn deployment(md: &ModelDeployment, model: &DeployedModel, revision: i64) -> Deployment {
    let spec = &md.spec;
    let name = md.metadata.name.clone().unwrap_or_default();
    let hot = spec.strategy == RolloutStrategy::HotReload;
    let mut args = vec!["serve".to_string()];
    if hot {
        args.extend([
            "--model-pointer".into(),
            format!("{POINTER_DIR}/{POINTER_URL_KEY}"),
        ]);
    } else {
        args.extend(["--model".into(), model.url.clone()]);
    }
    args.extend([
        "--grpc-addr".into(),
        format!("0.0.0.0:{}", spec.ports.grpc),
        "--http-addr".into(),
        format!("0.0.0.0:{}", spec.ports.http),
    ]);
    let flags = flags_url(spec);
    args.extend(spec_serve_args(spec, flags));
    if let Some(tls) = &spec.tls {
        args.extend([
            "--tls-cert".into(),
            format!("{TLS_DIR}/tls.crt"),
            "--tls-key".into(),
            format!("{TLS_DIR}/tls.key"),
        ]);
        if tls.client_auth {
            args.extend(["--client-ca".into(), format!("{TLS_DIR}/ca.crt")]);
        }
    }
    if let Some(auth) = &spec.auth {
        args.extend([
            "--auth-token-file".into(),
            format!("{AUTH_DIR}/{}", auth.key),
        ]);
    }

    let (tmp_volume, tmp_mount) = pod_parts::scratch_tmp();
    let mut volumes = vec![tmp_volume];
    let mut mounts = vec![tmp_mount];
    if hot {
        volumes.push(Volume {
            name: "model-pointer".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: pointer_configmap_name(&name),
                ..Default::default()
            }),
            ..Default::default()
        });
        mounts.push(VolumeMount {
            name: "model-pointer".into(),
            mount_path: POINTER_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        });
    }
    // Flags on `file://` can only be on the storage PVC: then it is mounted writable.
    let pvc_holds_flags = flags.is_some_and(|u| u.starts_with("file://") || u.starts_with('/'));
    // Secret volumes, not single files (subPath): the kubelet updates these in place when the
    // Secret changes (a renewed certificate, a rotated token), and the server re-reads them.
    let mut secret_volume = |name: &str, secret: &str, dir: &str| {
        volumes.push(Volume {
            name: name.into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.into()),
                default_mode: Some(SECRET_FILE_MODE),
                optional: Some(false),
                ..Default::default()
            }),
            ..Default::default()
        });
        mounts.push(VolumeMount {
            name: name.into(),
            mount_path: dir.into(),
            read_only: Some(true),
            ..Default::default()
        });
    };
    if let Some(tls) = &spec.tls {
        secret_volume("tls", &tls.secret_name, TLS_DIR);
    }
    if let Some(auth) = &spec.auth {
        secret_volume("auth-token", &auth.token_secret_name, AUTH_DIR);
    }
    if let Some(pvc) = &spec.credentials.pvc {
        let (v, m) = pod_parts::storage_pvc(
            pvc,
            || crate::pod_parts::file_url_path(&model.url),
            Some(!pvc_holds_flags),
        );
        volumes.push(v);
        mounts.push(m);
    }

    let q = |s: &str| Quantity(s.into());
    let cpu = spec.resources.cpu.clone().unwrap_or_else(|| "500m".into());
    let mem = spec
        .resources
        .memory
        .clone()
        .unwrap_or_else(|| "512Mi".into());
    let mut requests = BTreeMap::from([
        ("cpu".to_string(), q(&cpu)),
        ("memory".to_string(), q(&mem)),
    ]);
    let mut limits = BTreeMap::from([("memory".to_string(), q(&mem))]);
    if spec.resources.gpus > 0 {
        requests.insert("nvidia.com/gpu".into(), q(&spec.resources.gpus.to_string()));
        limits.insert("nvidia.com/gpu".into(), q(&spec.resources.gpus.to_string()));
    }
    // Readiness asks the gRPC port itself where it can. The kubelet's gRPC probes speak plain
    // text only: over TLS the probes use the HTTP port (`scheme: HTTPS`; the kubelet does not
    // verify the certificate, and with mutual TLS the server answers the probe paths to
    // clients without a certificate). Liveness always uses the HTTP port: the gRPC port takes
    // at most `--max-connections`, and a pod whose gRPC connections are all taken should stop
    // getting traffic (readiness), not be restarted.
    let probe = |path: &str, grpc_if_plain: bool, initial: i32, period: i32, failures: i32| {
        let grpc = grpc_if_plain && spec.tls.is_none();
        Probe {
            grpc: grpc.then(|| GRPCAction {
                port: spec.ports.grpc,
                service: Some(String::new()),
            }),
            http_get: (!grpc).then(|| HTTPGetAction {
                path: Some(path.into()),
                port: IntOrString::String("http".into()),
                scheme: Some(if spec.tls.is_some() { "HTTPS" } else { "HTTP" }.into()),
                ..Default::default()
            }),
            initial_delay_seconds: Some(initial),
            period_seconds: Some(period),
            failure_threshold: Some(failures),
            ..Default::default()
        }
    };
    let container = Container {
        name: "server".into(),
        image: Some(spec.image.clone()),
        image_pull_policy: spec.image_pull_policy.map(|p| p.as_str().to_string()),
        command: Some(vec!["textrec-worker".into()]),
        args: Some(args),
        ports: Some(vec![
            ContainerPort {
                name: Some("grpc".into()),
                container_port: spec.ports.grpc,
                protocol: Some("TCP".into()),
                ..Default::default()
            },
            ContainerPort {
                name: Some("http".into()),
                container_port: spec.ports.http,
                protocol: Some("TCP".into()),
                ..Default::default()
            },
        ]),
        env_from: pod_parts::secret_env(spec.credentials.secret_ref.as_ref()),
        env: Some(vec![pod_security::tmpdir_env()]),
        resources: Some(ResourceRequirements {
            requests: Some(requests),
            limits: Some(limits),
            ..Default::default()
        }),
        // Ready only once the model is loaded: the server reports SERVING through grpc.health.v1.
        readiness_probe: Some(probe("/readyz", true, 2, 5, 3)),
        // Loading a large model can take a while; a startup probe keeps liveness from killing it.
        startup_probe: Some(probe("/readyz", true, 2, 5, 60)),
        liveness_probe: Some(probe("/healthz", false, 0, 10, 6)),
        volume_mounts: Some(mounts),
        security_context: Some(pod_security::container_security_context()),
        ..Default::default()
    };
    let (node_selector, tolerations, affinity) =
        crate::job::placement(&spec.scheduling, spec.resources.gpus, "nvidia.com/gpu");
    let mut template_annotations = BTreeMap::new();
    if !hot {
        // Changing these rolls the pods; HotReload keeps the template stable on purpose.
        template_annotations.insert(REVISION_ANNOTATION.to_string(), revision.to_string());
        template_annotations.insert(MODEL_SHA_ANNOTATION.to_string(), model.sha256.clone());
    }
    let mut m = meta(md, serving_name(&name));
    m.annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(REVISION_ANNOTATION.into(), revision.to_string());
    Deployment {
        metadata: m,
        spec: Some(DeploymentSpec {
            // With an HPA the replica count is the HPA's: leaving it out of the applied
            // configuration keeps server-side apply from fighting it.
            replicas: if spec.autoscaling.is_some() {
                None
            } else {
                Some(spec.replicas)
            },
            selector: LabelSelector {
                match_labels: Some(selector_labels(&name)),
                ..Default::default()
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::String("25%".into())),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(&name)),
                    annotations: (!template_annotations.is_empty()).then_some(template_annotations),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    service_account_name: spec.credentials.service_account_name.clone(),
                    automount_service_account_token: Some(
                        pod_security::AUTOMOUNT_SERVICE_ACCOUNT_TOKEN,
                    ),
                    node_selector: (!node_selector.is_empty()).then_some(node_selector),
                    tolerations: (!tolerations.is_empty()).then_some(tolerations),
                    affinity,
                    topology_spread_constraints: crate::job::spread(
                        &spec.scheduling,
                        &selector_labels(&name),
                    ),
                    priority_class_name: spec.scheduling.priority_class_name.clone(),
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

/// The Service exposing gRPC and HTTP.
pub fn service(md: &ModelDeployment) -> Service {
    let name = md.metadata.name.clone().unwrap_or_default();
    let p = md.spec.ports;
    Service {
        metadata: meta(md, serving_name(&name)),
        spec: Some(ServiceSpec {
            selector: Some(selector_labels(&name)),
            ports: Some(vec![
                ServicePort {
                    name: Some("grpc".into()),
                    port: p.grpc,
                    target_port: Some(IntOrString::String("grpc".into())),
                    // Over TLS, HTTP/2 is negotiated with ALPN: no h2c hint.
                    app_protocol: md.spec.tls.is_none().then(|| "kubernetes.io/h2c".into()),
                    protocol: Some("TCP".into()),
                    ..Default::default()
                },
                ServicePort {
                    name: Some("http".into()),
                    port: p.http,
                    target_port: Some(IntOrString::String("http".into())),
                    protocol: Some("TCP".into()),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        }),
        status: None,
    }
}

/// The HPA, when `spec.autoscaling` is set.
pub fn hpa(md: &ModelDeployment) -> Option<HorizontalPodAutoscaler> {
    let a = md.spec.autoscaling.as_ref()?;
    let name = md.metadata.name.clone().unwrap_or_default();
    Some(HorizontalPodAutoscaler {
        metadata: meta(md, serving_name(&name)),
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".into()),
                kind: "Deployment".into(),
                name: serving_name(&name),
            },
            min_replicas: Some(a.min_replicas),
            max_replicas: a.max_replicas,
            metrics: Some(vec![MetricSpec {
                type_: "Resource".into(),
                resource: Some(ResourceMetricSource {
                    name: "cpu".into(),
                    target: MetricTarget {
                        type_: "Utilization".into(),
                        average_utilization: Some(a.target_cpu_utilization_percentage),
                        ..Default::default()
                    },
                }),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    })
}

/// The HotReload pointer ConfigMap for `model`.
pub fn pointer_configmap(md: &ModelDeployment, model: &DeployedModel) -> ConfigMap {
    let name = md.metadata.name.clone().unwrap_or_default();
    ConfigMap {
        metadata: meta(md, pointer_configmap_name(&name)),
        data: Some(BTreeMap::from([
            (POINTER_URL_KEY.to_string(), model.url.clone()),
            (POINTER_SHA_KEY.to_string(), model.sha256.clone()),
        ])),
        ..Default::default()
    }
}

/// `host:port` of the gRPC Service.
pub fn endpoint(md: &ModelDeployment) -> String {
    let name = md.metadata.name.clone().unwrap_or_default();
    let ns = md
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    format!("{}.{ns}.svc:{}", serving_name(&name), md.spec.ports.grpc)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn md(spec: serde_json::Value) -> ModelDeployment {
        let spec: ModelDeploymentSpec = serde_json::from_value(spec).unwrap();
        let mut md = ModelDeployment::new("reader", spec);
        md.metadata.namespace = Some("ml".into());
        md.metadata.uid = Some("uid-md".into());
        md
    }

    pub(super) fn model() -> DeployedModel {
        DeployedModel {
            url: "s3://b/m/".into(),
            sha256: "a".repeat(64),
            metric: None,
            metric_name: None,
            training_run: None,
        }
    }

    pub(super) fn pod(md: &ModelDeployment) -> PodSpec {
        deployment(md, &model(), 1)
            .spec
            .unwrap()
            .template
            .spec
            .unwrap()
    }

    #[test]
    fn flags_go_to_the_defaulted_folder_and_a_file_folder_makes_the_pvc_writable() {
        let arg = |args: &[String], flag: &str| {
            let at = args.iter().position(|a| a == flag)?;
            Some(args[at + 1].clone())
        };
        // The operator's default storage fills the folder (as the controller applies it).
        let defaults = crate::defaults::Defaults {
            storage_url: Some("s3://bucket/textrec".into()),
            ..Default::default()
        };
        let spec = md(serde_json::json!({"model": {"url": "s3://b/m/"}, "image": "w:1"}));
        let with_defaults = defaults.deployment(std::sync::Arc::new(spec));
        let args = pod(&with_defaults).containers[0].args.clone().unwrap();
        assert_eq!(
            arg(&args, "--flags").as_deref(),
            Some("s3://bucket/textrec/flags/ml/reader/")
        );
        assert_eq!(arg(&args, "--flags-max-samples").as_deref(), Some("10000"));
        assert_eq!(arg(&args, "--flag-rate").as_deref(), Some("30"));

        // No storage anywhere, or flagging off: no --flags (the Flag button answers 501).
        let bare = pod(&md(
            serde_json::json!({"model": {"url": "s3://b/m/"}, "image": "w:1"}),
        ));
        assert!(arg(bare.containers[0].args.as_ref().unwrap(), "--flags").is_none());
        let off = pod(&md(
            serde_json::json!({"model": {"url": "s3://b/m/"}, "image": "w:1",
            "flagging": {"enabled": false, "storage": "s3://b/f/"}}),
        ));
        assert!(arg(off.containers[0].args.as_ref().unwrap(), "--flags").is_none());

        // Flags on the storage PVC: mounted writable; otherwise read-only.
        let pvc = |flags: &str| {
            let p = pod(&md(
                serde_json::json!({"model": {"url": "file:///data/m/"}, "image": "w:1",
                "credentials": {"pvc": {"claimName": "runs"}},
                "flagging": {"storage": flags, "maxSamples": 50, "perClientPerMinute": 5}}),
            ));
            let mount = p.containers[0].volume_mounts.clone().unwrap();
            let storage = mount.iter().find(|m| m.name == "storage").unwrap().clone();
            (p.containers[0].args.clone().unwrap(), storage.read_only)
        };
        let (args, read_only) = pvc("file:///data/flags/ml/ocr/");
        assert!(arg(&args, "--trusted-proxies").is_none());
        assert_eq!(read_only, Some(false));
        assert_eq!(arg(&args, "--flags-max-samples").as_deref(), Some("50"));
        assert_eq!(arg(&args, "--flag-rate").as_deref(), Some("5"));
        assert_eq!(pvc("s3://b/f/").1, Some(true));

        // Behind an ingress: its addresses are passed on, so each client gets its own budget.
        let proxied = pod(&md(
            serde_json::json!({"model": {"url": "s3://b/m/"}, "image": "w:1",
            "flagging": {"storage": "s3://b/f/", "trustedProxies": ["10.0.0.0/8", "fd00::/8"]}}),
        ));
        let args = proxied.containers[0].args.clone().unwrap();
        assert_eq!(
            arg(&args, "--trusted-proxies").as_deref(),
            Some("10.0.0.0/8,fd00::/8")
        );
    }

    #[test]
    fn gpu_serving_runs_on_cuda_and_cpu_serving_on_the_default() {
        let gpu = pod(&md(serde_json::json!({
            "model": {"fromTrainingRun": "r"}, "image": "w:1-cuda", "resources": {"gpus": 1}
        })));
        let c = &gpu.containers[0];
        let args = c.args.clone().unwrap();
        let at = args.iter().position(|a| a == "--device").expect("--device");
        assert_eq!(args[at + 1], "cuda");
        let limits = c.resources.as_ref().unwrap().limits.clone().unwrap();
        assert_eq!(limits["nvidia.com/gpu"], Quantity("1".into()));

        let cpu = pod(&md(serde_json::json!({
            "model": {"fromTrainingRun": "r"}, "image": "w:1"
        })));
        let args = cpu.containers[0].args.clone().unwrap();
        assert!(!args.contains(&"--device".to_string()), "{args:?}");
    }

    #[test]
    fn reading_at_several_widths_reaches_the_server_only_when_asked() {
        let args = |spec: serde_json::Value| pod(&md(spec)).containers[0].args.clone().unwrap();
        let with = args(serde_json::json!({
            "model": {"fromTrainingRun": "r"}, "image": "w:1",
            "reading": {"widths": [1, 1.1, 1.25], "rereadBelow": 0.8}
        }));
        let at = with.iter().position(|a| a == "--widths").expect("--widths");
        assert_eq!(with[at + 1], "1,1.1,1.25");
        let at = with
            .iter()
            .position(|a| a == "--reread-below")
            .expect("--reread-below");
        assert_eq!(with[at + 1], "0.8");
        let every_line = args(serde_json::json!({
            "model": {"fromTrainingRun": "r"}, "image": "w:1", "reading": {"widths": [1, 1.2]}
        }));
        assert!(every_line.contains(&"--widths".to_string()));
        assert!(!every_line.contains(&"--reread-below".to_string()));
        // Factors apart only beyond f32's precision reach the server once.
        let close = args(serde_json::json!({
            "model": {"fromTrainingRun": "r"}, "image": "w:1",
            "reading": {"widths": [1.0, 1.000000001, 1.2]}
        }));
        let at = close.iter().position(|a| a == "--widths").unwrap();
        assert_eq!(close[at + 1], "1,1.2");
        let plain = args(serde_json::json!({"model": {"fromTrainingRun": "r"}, "image": "w:1"}));
        assert!(!plain
            .iter()
            .any(|a| a == "--widths" || a == "--reread-below"));
    }

    #[test]
    fn the_encoders_precision_reaches_the_server_only_when_asked() {
        let args = |spec: serde_json::Value| pod(&md(spec)).containers[0].args.clone().unwrap();
        for value in ["fp32", "bf16", "auto"] {
            let with = args(serde_json::json!({
                "model": {"fromTrainingRun": "r"}, "image": "w:1", "precision": value
            }));
            let at = with
                .iter()
                .position(|a| a == "--precision")
                .expect("--precision");
            assert_eq!(with[at + 1], value);
        }
        let plain = args(serde_json::json!({"model": {"fromTrainingRun": "r"}, "image": "w:1"}));
        assert!(!plain.iter().any(|a| a == "--precision"), "{plain:?}");
        let bad: Result<crate::crd::ModelDeploymentSpec, _> = serde_json::from_value(
            serde_json::json!({"model": {"fromTrainingRun": "r"}, "image": "w:1", "precision": "fp16"}),
        );
        assert!(bad.is_err());
    }

    #[test]
    fn serving_pods_take_the_placement_of_the_spec() {
        let p = pod(&md(serde_json::json!({
            "model": {"fromTrainingRun": "r"}, "image": "w:1-cuda", "resources": {"gpus": 1},
            "scheduling": {
                "nodeSelector": {"pool": "inference"},
                "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ocr", "effect": "NoSchedule"}],
                "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                    {"weight": 100, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname"}}]}},
                "topologySpreadConstraints": [
                    {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway"},
                    {"maxSkew": 2, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "DoNotSchedule",
                     "labelSelector": {"matchLabels": {"app": "mine"}}}
                ],
                "priorityClassName": "serving-high"
            }
        })));
        assert_eq!(p.node_selector.unwrap()["pool"], "inference");
        let keys: Vec<String> = p
            .tolerations
            .unwrap()
            .iter()
            .filter_map(|t| t.key.clone())
            .collect();
        // The user's toleration, and the GPU pools' taint as trial pods get it.
        assert_eq!(keys, ["dedicated", "nvidia.com/gpu"]);
        assert!(p.affinity.unwrap().pod_anti_affinity.is_some());
        let tsc = p.topology_spread_constraints.unwrap();
        assert_eq!(
            tsc[0].label_selector.as_ref().unwrap().match_labels,
            Some(selector_labels("reader")),
            "a constraint without a selector spreads this deployment's replicas"
        );
        assert_eq!(
            tsc[1]
                .label_selector
                .as_ref()
                .unwrap()
                .match_labels
                .as_ref()
                .unwrap()["app"],
            "mine"
        );
        assert_eq!(p.priority_class_name.as_deref(), Some("serving-high"));

        // CPU serving with no scheduling: nothing added.
        let p = pod(&md(
            serde_json::json!({"model": {"fromTrainingRun": "r"}, "image": "w:1"}),
        ));
        assert!(p.node_selector.is_none() && p.tolerations.is_none() && p.affinity.is_none());
        assert!(p.topology_spread_constraints.is_none() && p.priority_class_name.is_none());
    }

    fn volume<'a>(p: &'a PodSpec, name: &str) -> &'a Volume {
        let volumes = p.volumes.as_ref().unwrap();
        volumes
            .iter()
            .find(|v| v.name == name)
            .unwrap_or_else(|| panic!("no volume {name}"))
    }

    fn mount_path(c: &Container, name: &str) -> String {
        let mounts = c.volume_mounts.as_ref().unwrap();
        let m = mounts
            .iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("no mount {name}"));
        assert_eq!(m.read_only, Some(true));
        m.mount_path.clone()
    }

    fn arg_after(args: &[String], flag: &str) -> Option<String> {
        let at = args.iter().position(|a| a == flag)?;
        Some(args[at + 1].clone())
    }

    #[test]
    fn tls_and_auth_mount_their_secrets_pass_the_flags_and_probe_over_https() {
        let d = md(serde_json::json!({
            "model": {"fromTrainingRun": "r"}, "image": "w:1",
            "tls": {"secretName": "reader-tls", "clientAuth": true},
            "auth": {"tokenSecretName": "reader-tokens", "key": "tokens"}
        }));
        let p = pod(&d);
        let c = &p.containers[0];
        let tls = volume(&p, "tls").secret.as_ref().unwrap();
        assert_eq!(tls.secret_name.as_deref(), Some("reader-tls"));
        assert_eq!(tls.default_mode, Some(0o440));
        let token = volume(&p, "auth-token").secret.as_ref().unwrap();
        assert_eq!(token.secret_name.as_deref(), Some("reader-tokens"));
        assert_eq!(mount_path(c, "tls"), TLS_DIR);
        assert_eq!(mount_path(c, "auth-token"), AUTH_DIR);
        let args = c.args.clone().unwrap();
        assert_eq!(
            arg_after(&args, "--tls-cert").unwrap(),
            "/etc/textrec/tls/tls.crt"
        );
        assert_eq!(
            arg_after(&args, "--tls-key").unwrap(),
            "/etc/textrec/tls/tls.key"
        );
        assert_eq!(
            arg_after(&args, "--client-ca").unwrap(),
            "/etc/textrec/tls/ca.crt"
        );
        assert_eq!(
            arg_after(&args, "--auth-token-file").unwrap(),
            "/etc/textrec/auth/tokens"
        );
        for (probe, path) in [
            (c.readiness_probe.as_ref(), "/readyz"),
            (c.startup_probe.as_ref(), "/readyz"),
            (c.liveness_probe.as_ref(), "/healthz"),
        ] {
            let probe = probe.unwrap();
            assert!(probe.grpc.is_none(), "kubelet gRPC probes cannot speak TLS");
            let get = probe.http_get.as_ref().unwrap();
            assert_eq!(get.scheme.as_deref(), Some("HTTPS"));
            assert_eq!(get.path.as_deref(), Some(path));
            assert_eq!(get.port, IntOrString::String("http".into()));
        }
        let svc = service(&d).spec.unwrap().ports.unwrap();
        assert_eq!(svc[0].app_protocol, None, "no h2c hint over TLS");

        // Without clientAuth no --client-ca; the token key defaults to `token`.
        let p = pod(&md(serde_json::json!({
            "model": {"fromTrainingRun": "r"}, "image": "w:1",
            "tls": {"secretName": "reader-tls"},
            "auth": {"tokenSecretName": "reader-tokens"}
        })));
        let args = p.containers[0].args.clone().unwrap();
        assert!(arg_after(&args, "--tls-cert").is_some());
        assert!(arg_after(&args, "--client-ca").is_none(), "{args:?}");
        assert_eq!(
            arg_after(&args, "--auth-token-file").unwrap(),
            "/etc/textrec/auth/token"
        );
    }

    #[test]
    fn plain_serving_keeps_grpc_readiness_probes_and_mounts_no_secrets() {
        let d = md(serde_json::json!({"model": {"fromTrainingRun": "r"}, "image": "w:1"}));
        let p = pod(&d);
        let c = &p.containers[0];
        let args = c.args.clone().unwrap();
        assert!(!args
            .iter()
            .any(|a| a.starts_with("--tls") || a.starts_with("--auth")));
        assert!(p
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .all(|v| v.secret.is_none()));
        for probe in [&c.readiness_probe, &c.startup_probe] {
            let probe = probe.as_ref().unwrap();
            assert!(probe.grpc.is_some() && probe.http_get.is_none());
        }
        // Liveness stays off the gRPC port, whose connections are capped.
        let live = c.liveness_probe.as_ref().unwrap();
        assert!(live.grpc.is_none());
        let get = live.http_get.as_ref().unwrap();
        assert_eq!(get.path.as_deref(), Some("/healthz"));
        assert_eq!(get.scheme.as_deref(), Some("HTTP"));
        assert_eq!(get.port, IntOrString::String("http".into()));
        let svc = service(&d).spec.unwrap().ports.unwrap();
        assert_eq!(svc[0].app_protocol.as_deref(), Some("kubernetes.io/h2c"));
    }
}
