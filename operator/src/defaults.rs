//! Cluster-wide defaults for TrainingRuns and ModelDeployments that leave a field unset: the
//! worker images, the storage URL, the storage credentials Secret and the pods' ServiceAccount.
//!
//! The Helm chart sets them from `defaults.*` as `TEXTREC_DEFAULT_*` environment variables of
//! `textrec-operator run`. Each unset field is filled independently; a field the object sets is
//! never changed. The controllers apply them to the object they reconcile (never written back to
//! the API server), so the status, the Jobs and the Deployment all see the same, defaulted spec.
//! A run that still has no image or storage afterwards is `Valid=False`, naming the field and
//! the default that would fill it.

use std::sync::Arc;

use crate::crd::{Flagging, ModelDeployment, ModelDeploymentSpec, TrainingRun, TrainingRunSpec};

/// Defaults of `textrec-operator run` (flags, or the chart's environment variables).
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct Defaults {
    /// Worker image of CPU-only TrainingRuns and ModelDeployments that set no `spec.image`.
    #[arg(long = "default-worker-image", env = "TEXTREC_DEFAULT_WORKER_IMAGE")]
    pub worker_image: Option<String>,
    /// Worker image of TrainingRuns and ModelDeployments that request GPUs and set no
    /// `spec.image` (a CUDA build of the worker).
    #[arg(
        long = "default-worker-gpu-image",
        env = "TEXTREC_DEFAULT_WORKER_GPU_IMAGE"
    )]
    pub worker_gpu_image: Option<String>,
    /// `spec.storage.url` of TrainingRuns that set none.
    #[arg(long = "default-storage-url", env = "TEXTREC_DEFAULT_STORAGE_URL")]
    pub storage_url: Option<String>,
    /// Credentials Secret (`spec.storage.secretRef`, `spec.credentials.secretRef`) of runs and
    /// deployments that name none; it must exist in each one's namespace.
    #[arg(
        long = "default-storage-secret",
        env = "TEXTREC_DEFAULT_STORAGE_SECRET"
    )]
    pub storage_secret: Option<String>,
    /// ServiceAccount (`spec.storage.serviceAccountName`,
    /// `spec.credentials.serviceAccountName`) of the pods of runs and deployments that name none.
    #[arg(
        long = "default-service-account",
        env = "TEXTREC_DEFAULT_SERVICE_ACCOUNT"
    )]
    pub service_account: Option<String>,
    /// Let TrainingRuns give trial pods `hostPath` volumes (`spec.volumes`). Off by default: a
    /// hostPath exposes the node's file system to whoever may create a TrainingRun.
    #[arg(
        long = "allow-host-path-volumes",
        env = "TEXTREC_ALLOW_HOST_PATH_VOLUMES"
    )]
    pub allow_host_path_volumes: bool,
}

/// `Some(v)` when `v` is set and not blank (the chart may render an empty value).
fn set(v: &Option<String>) -> Option<String> {
    v.as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

impl Defaults {
    /// The default image for a workload with `gpus` GPUs, if one is configured.
    pub fn image(&self, gpus: i32) -> Option<String> {
        if gpus > 0 {
            set(&self.worker_gpu_image)
        } else {
            set(&self.worker_image)
        }
    }

    /// Fill the unset fields of a TrainingRun spec.
    pub fn apply_to_run_spec(&self, spec: &mut TrainingRunSpec) {
        if spec.image.is_empty() {
            if let Some(i) = self.image(spec.resources.gpus) {
                spec.image = i;
            }
        }
        if spec.storage.url.is_empty() {
            if let Some(u) = set(&self.storage_url) {
                spec.storage.url = u;
            }
        }
        if spec.storage.secret_ref.is_none() {
            spec.storage.secret_ref = set(&self.storage_secret);
        }
        if spec.storage.service_account_name.is_none() {
            spec.storage.service_account_name = set(&self.service_account);
        }
    }

    /// Fill the unset fields of a ModelDeployment spec.
    pub fn apply_to_deployment_spec(&self, spec: &mut ModelDeploymentSpec) {
        if spec.image.is_empty() {
            if let Some(i) = self.image(spec.resources.gpus) {
                spec.image = i;
            }
        }
        if spec.credentials.secret_ref.is_none() {
            spec.credentials.secret_ref = set(&self.storage_secret);
        }
        if spec.credentials.service_account_name.is_none() {
            spec.credentials.service_account_name = set(&self.service_account);
        }
    }

    /// `run` with the defaults applied (the same `Arc` when there is nothing to fill).
    pub fn run(&self, run: Arc<TrainingRun>) -> Arc<TrainingRun> {
        let mut spec = run.spec.clone();
        self.apply_to_run_spec(&mut spec);
        if spec == run.spec {
            return run;
        }
        let mut r = (*run).clone();
        r.spec = spec;
        Arc::new(r)
    }

    /// `md` with the defaults applied (the same `Arc` when there is nothing to fill).
    pub fn deployment(&self, md: Arc<ModelDeployment>) -> Arc<ModelDeployment> {
        let mut spec = md.spec.clone();
        self.apply_to_deployment_spec(&mut spec);
        if spec.flagging.enabled && spec.flagging.storage.is_none() {
            if let Some(root) = set(&self.storage_url) {
                spec.flagging.storage = Some(Flagging::folder_under(
                    &root,
                    md.metadata.namespace.as_deref().unwrap_or("default"),
                    md.metadata.name.as_deref().unwrap_or_default(),
                ));
            }
        }
        if spec == md.spec {
            return md;
        }
        let mut m = (*md).clone();
        m.spec = spec;
        Arc::new(m)
    }
}

/// The message of a spec left without an image: which default would have filled it.
pub fn missing_image_message(gpus: i32) -> String {
    if gpus > 0 {
        "is not set, and the operator has no default image for GPU workloads (chart value \
         defaults.workerGpuImage: --default-worker-gpu-image / TEXTREC_DEFAULT_WORKER_GPU_IMAGE)"
            .into()
    } else {
        "is not set, and the operator has no default worker image (chart value \
         defaults.workerImage: --default-worker-image / TEXTREC_DEFAULT_WORKER_IMAGE)"
            .into()
    }
}

/// The message of a run left without storage.
pub const MISSING_STORAGE_MESSAGE: &str = "is not set, and the operator has no default storage \
     URL (chart value defaults.storage.url: --default-storage-url / TEXTREC_DEFAULT_STORAGE_URL)";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{ModelSource, StorageSpec};

    fn defaults() -> Defaults {
        Defaults {
            worker_image: Some("reg/textrec-worker:1".into()),
            worker_gpu_image: Some("reg/textrec-worker:1-cuda".into()),
            storage_url: Some("s3://bucket/runs".into()),
            storage_secret: Some("textrec-storage".into()),
            service_account: Some("textrec-worker".into()),
            allow_host_path_volumes: false,
        }
    }

    fn run_spec(yaml: &str) -> TrainingRunSpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn a_run_without_image_or_storage_gets_the_defaults() {
        let mut s = run_spec("{}");
        assert_eq!(s.image, "");
        assert_eq!(s.storage, StorageSpec::default());
        defaults().apply_to_run_spec(&mut s);
        assert_eq!(s.image, "reg/textrec-worker:1");
        assert_eq!(s.storage.url, "s3://bucket/runs");
        assert_eq!(s.storage.secret_ref.as_deref(), Some("textrec-storage"));
        assert_eq!(
            s.storage.service_account_name.as_deref(),
            Some("textrec-worker")
        );

        let mut gpu = run_spec("{resources: {gpus: 1}}");
        defaults().apply_to_run_spec(&mut gpu);
        assert_eq!(gpu.image, "reg/textrec-worker:1-cuda");
    }

    #[test]
    fn what_a_run_sets_is_kept() {
        let mut s = run_spec(
            "{image: 'mine:2', storage: {url: 'gs://b/p', secretRef: s, serviceAccountName: sa}}",
        );
        let before = s.clone();
        defaults().apply_to_run_spec(&mut s);
        assert_eq!(s, before);
        // Each field on its own: a run naming only its URL still gets the default Secret.
        let mut s = run_spec("{storage: {url: 'gs://b/p'}}");
        defaults().apply_to_run_spec(&mut s);
        assert_eq!(s.storage.url, "gs://b/p");
        assert_eq!(s.storage.secret_ref.as_deref(), Some("textrec-storage"));
    }

    #[test]
    fn blank_or_missing_defaults_fill_nothing() {
        let blank = Defaults {
            worker_image: Some(" ".into()),
            storage_url: Some(String::new()),
            ..Default::default()
        };
        let mut s = run_spec("{}");
        blank.apply_to_run_spec(&mut s);
        assert_eq!(s, run_spec("{}"));
        // A GPU run does not fall back to the CPU image: it would not find CUDA.
        let cpu_only = Defaults {
            worker_image: Some("w:1".into()),
            ..Default::default()
        };
        let mut gpu = run_spec("{resources: {gpus: 2}}");
        cpu_only.apply_to_run_spec(&mut gpu);
        assert_eq!(gpu.image, "");
        assert!(missing_image_message(2).contains("TEXTREC_DEFAULT_WORKER_GPU_IMAGE"));
    }

    #[test]
    fn a_deployment_gets_image_and_credentials() {
        let mut s: ModelDeploymentSpec =
            serde_yaml::from_str("{model: {fromTrainingRun: r}, resources: {gpus: 1}}").unwrap();
        assert_eq!(
            s.model,
            ModelSource {
                from_training_run: Some("r".into()),
                ..Default::default()
            }
        );
        defaults().apply_to_deployment_spec(&mut s);
        assert_eq!(s.image, "reg/textrec-worker:1-cuda");
        assert_eq!(s.credentials.secret_ref.as_deref(), Some("textrec-storage"));
        assert_eq!(
            s.credentials.service_account_name.as_deref(),
            Some("textrec-worker")
        );
    }

    #[test]
    fn the_same_object_comes_back_when_nothing_is_filled() {
        let run = Arc::new(TrainingRun::new(
            "r",
            run_spec("{image: 'w:1', storage: {url: 's3://b/p'}}"),
        ));
        let d = Defaults::default();
        assert!(Arc::ptr_eq(&d.run(run.clone()), &run));
        let filled = defaults().run(run.clone());
        assert!(!Arc::ptr_eq(&filled, &run));
        assert_eq!(
            filled.spec.storage.secret_ref.as_deref(),
            Some("textrec-storage")
        );
    }
}
