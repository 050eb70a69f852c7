//! Promotion evaluations: scoring a model on `spec.promotion.evaluation` with
//! `textrec-worker eval --json`, as an evaluation Job in a cluster ([`eval_job`]) or a child
//! process of the local runner, and turning its output into a [`Evaluation`] for
//! `status.evaluations`. What to evaluate is decided by [`crate::promotion::decide`].

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{Container, EnvVar, PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::Resource;
use textrec_contract::evaluation::SELECTION_ENV;

use crate::crd::{Evaluation, ModelDeployment, PromotionEvaluation};
use crate::naming::{bounded_name, label_value, MANAGED_BY, MANAGER, OWNER_ANNOTATION};
use crate::pod_parts;
use crate::pod_security;
use crate::promotion::EvalRequest;
use crate::worker_args::POD_TERMINATION_LOG;

/// Label naming the ModelDeployment an evaluation Job's pod scores a model for. Not the serving
/// selector's: an evaluation pod must never receive traffic.
pub const EVALUATION_OF_LABEL: &str = "textrec.dev/evaluation-of";

/// The data folder of `set` as the worker takes it (a `file://` URL becomes its path).
pub fn data_path(set: &PromotionEvaluation) -> String {
    match set.path.strip_prefix("file://") {
        Some(p) => p.to_string(),
        None => set.path.clone(),
    }
}

/// `textrec-worker` arguments that score `req` on `set`, writing the result also to
/// `result_file` when given.
pub fn eval_args(
    req: &EvalRequest,
    set: &PromotionEvaluation,
    result_file: Option<&str>,
) -> Vec<String> {
    let mut args = vec![
        "eval".to_string(),
        "--model".into(),
        req.url.clone(),
        "--data".into(),
        data_path(set),
        "--json".into(),
    ];
    if let Some(n) = set.samples {
        args.extend(["--samples".into(), n.to_string()]);
    }
    if let Some(f) = result_file {
        args.extend(["--result-file".into(), f.into()]);
    }
    args
}

/// The evaluation of `req` from `eval --json` output (its last JSON line), or a failed one
/// holding `failure` (the worker's error) when there is none.
pub fn evaluation_from_output(
    req: &EvalRequest,
    set: &PromotionEvaluation,
    output: &str,
    failure: Option<&str>,
    now: &Time,
) -> Evaluation {
    let parsed = output
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<serde_json::Value>(l.trim()).ok())
        .filter(|j| j.get("cer").is_some_and(|c| c.is_number()));
    let mut e = Evaluation {
        model_sha256: req.sha256.clone(),
        model_url: req.url.clone(),
        path: set.path.clone(),
        samples: set.samples,
        dataset_digest: String::new(),
        cer: None,
        lines: 0,
        error: None,
        at: now.clone(),
    };
    match (parsed, failure) {
        (Some(j), None) => {
            e.cer = j["cer"].as_f64();
            e.lines = j["lines"].as_i64().unwrap_or_default();
            e.dataset_digest = j["dataset_digest"].as_str().unwrap_or_default().into();
        }
        (_, f) => {
            let why = f
                .map(str::trim)
                .filter(|f| !f.is_empty())
                .unwrap_or("the evaluation printed no result");
            // The last line of the worker's log is its error; earlier ones are progress.
            let last = why
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or(why);
            e.error = Some(crate::util::truncate(last.trim(), 512));
        }
    }
    e
}

/// The environment of every promotion evaluation, in a Job or a local process: its score
/// chooses between models, so `eval` refuses a set reserved for independent evaluation.
pub fn eval_env() -> [(&'static str, &'static str); 1] {
    [(SELECTION_ENV, "1")]
}

/// Name of the Job that scores model `sha256` for ModelDeployment `deployment`.
pub fn job_name(deployment: &str, sha256: &str) -> String {
    bounded_name(
        deployment,
        &format!("-eval-{}", &sha256[..sha256.len().min(10)]),
    )
}

/// The evaluation Job of `req` for `md`: the worker image running `eval`, with the serving
/// pods' credentials and storage (read-only), the restricted pod security of every pod the
/// operator creates, and the result in the container's termination message.
pub fn eval_job(md: &ModelDeployment, set: &PromotionEvaluation, req: &EvalRequest) -> Job {
    let spec = &md.spec;
    let name = md.metadata.name.clone().unwrap_or_default();
    let mut args = eval_args(req, set, Some(POD_TERMINATION_LOG));
    args.extend(["--device".into(), "cpu".into()]);
    let (tmp_volume, tmp_mount) = pod_parts::scratch_tmp();
    let mut volumes = vec![tmp_volume];
    let mut mounts = vec![tmp_mount];
    if let Some(pvc) = &spec.credentials.pvc {
        let (v, m) = pod_parts::storage_pvc(
            pvc,
            || crate::pod_parts::file_url_path(&req.url),
            Some(true),
        );
        volumes.push(v);
        mounts.push(m);
    }
    let labels = BTreeMap::from([
        (MANAGED_BY.to_string(), MANAGER.to_string()),
        (EVALUATION_OF_LABEL.to_string(), label_value(&name)),
    ]);
    let container = Container {
        name: "eval".into(),
        image: Some(spec.image.clone()),
        image_pull_policy: spec.image_pull_policy.map(|p| p.as_str().to_string()),
        command: Some(vec!["textrec-worker".into()]),
        args: Some(args),
        env_from: pod_parts::secret_env(spec.credentials.secret_ref.as_ref()),
        env: Some(
            std::iter::once(pod_security::tmpdir_env())
                .chain(eval_env().map(|(name, value)| EnvVar {
                    name: name.into(),
                    value: Some(value.into()),
                    ..Default::default()
                }))
                .collect(),
        ),
        // On failure the worker's last log lines (its error) become the message.
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        volume_mounts: Some(mounts),
        security_context: Some(pod_security::container_security_context()),
        ..Default::default()
    };
    let owner = md
        .controller_owner_ref(&())
        .expect("ModelDeployment has a name and uid");
    Job {
        metadata: ObjectMeta {
            name: Some(job_name(&name, &req.sha256)),
            namespace: md.metadata.namespace.clone(),
            labels: Some(labels.clone()),
            annotations: Some(BTreeMap::from([
                (OWNER_ANNOTATION.to_string(), name.clone()),
                ("textrec.dev/model-sha256".to_string(), req.sha256.clone()),
            ])),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: Some(JobSpec {
            // A failed evaluation is recorded as such and retried later by the decision.
            backoff_limit: Some(0),
            active_deadline_seconds: Some(3600),
            ttl_seconds_after_finished: Some(3600),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    restart_policy: Some("Never".into()),
                    service_account_name: spec.credentials.service_account_name.clone(),
                    automount_service_account_token: Some(
                        pod_security::AUTOMOUNT_SERVICE_ACCOUNT_TOKEN,
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

    fn req() -> EvalRequest {
        EvalRequest {
            url: "file:///data/models/m1/".into(),
            sha256: "ab".repeat(32),
        }
    }

    fn set() -> PromotionEvaluation {
        PromotionEvaluation {
            path: "file:///data/heldout".into(),
            samples: Some(40),
        }
    }

    #[test]
    fn arguments_name_the_model_the_set_and_the_cap() {
        assert_eq!(
            eval_args(&req(), &set(), Some("/dev/termination-log")),
            [
                "eval",
                "--model",
                "file:///data/models/m1/",
                "--data",
                "/data/heldout",
                "--json",
                "--samples",
                "40",
                "--result-file",
                "/dev/termination-log"
            ]
        );
    }

    #[test]
    fn output_becomes_an_evaluation_or_the_error_that_stopped_it() {
        let now = crate::local::now();
        let out = "loading\n{\"cer\":0.25,\"wer\":0.5,\"lines\":8,\"dataset_digest\":\"d1\"}\n";
        let e = evaluation_from_output(&req(), &set(), out, None, &now);
        assert_eq!(
            (e.cer, e.lines, e.dataset_digest.as_str()),
            (Some(0.25), 8, "d1")
        );
        assert!(e.error.is_none());
        let f = evaluation_from_output(
            &req(),
            &set(),
            "",
            Some("INFO x\nerror: --data /data/heldout: no readable lines (the evaluation set is empty)\n"),
            &now,
        );
        assert!(f.cer.is_none());
        assert!(f.error.unwrap().starts_with("error: --data"));
    }
}
