//! The ModelDeployment reconcile as pure functions: the candidate TrainingRuns and the observed
//! Deployment → the new status (model, revision history, phase) and the events to record.
//!
//! The controller ([`crate::controller::model_deployment`]) and the local runner only gather
//! inputs and carry out the result, as with [`crate::run_plan`] for TrainingRuns.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::core::{Selector, SelectorExt};
use kube::ResourceExt;

use crate::conditions;
use crate::crd::{DeploymentPhase, ModelDeployment, ModelDeploymentStatus, RunPhase, TrainingRun};
use crate::promotion::{
    decide, record_declined, record_revision, EvalRequest, RunSummary, EVALUATION_FIELD,
};
use crate::references::Reference;
use crate::run_plan::{PlannedEvent, Severity};
use crate::serving;

/// The TrainingRuns of `md`'s namespace as promotion inputs.
pub fn summarize_runs(md: &ModelDeployment, runs: &[Arc<TrainingRun>]) -> Vec<RunSummary> {
    let ns = md.namespace();
    // A missing selector selects every TrainingRun of the namespace.
    let selector: Option<Selector> = md
        .spec
        .promotion
        .selector
        .clone()
        .and_then(|s| s.try_into().ok());
    runs.iter()
        .filter(|r| r.namespace() == ns)
        .map(|r| {
            let st = r.status.clone().unwrap_or_default();
            RunSummary {
                name: r.name_any(),
                succeeded: st.phase == Some(RunPhase::Succeeded),
                completion_time: st.completion_time.clone(),
                best: st
                    .best_model
                    .map(|b| (b.url, b.sha256, b.metric, b.metric_name)),
                selected: selector.as_ref().is_none_or(|s| s.matches(r.labels())),
            }
        })
        .collect()
}

/// Report the Secrets `md`'s pods would mount that do not exist (see
/// [`crate::references::deployment_references`]): `Valid` turns False naming them, and with no
/// serving Deployment yet the phase is `Invalid`. The caller then leaves the Deployment as it
/// is (its pods keep serving). Returns the warning to record: once per generation and set of
/// missing Secrets.
pub fn report_missing(
    md: &ModelDeployment,
    st: &mut ModelDeploymentStatus,
    missing: &[Reference],
    deployed: bool,
    now: &Time,
) -> Option<PlannedEvent> {
    let first = missing.first()?;
    let msg = missing
        .iter()
        .map(Reference::not_found)
        .collect::<Vec<_>>()
        .join("; ");
    let reason = first.kind.not_found_reason();
    let g = md.metadata.generation;
    let prev = md.status.clone().unwrap_or_default();
    let reported = prev
        .conditions
        .iter()
        .any(|c| c.type_ == "Valid" && c.reason == reason && c.message == msg);
    conditions::set(&mut st.conditions, "Valid", false, reason, &msg, g, now);
    if !deployed {
        st.phase = Some(DeploymentPhase::Invalid);
        conditions::set(
            &mut st.conditions,
            "Available",
            false,
            "Invalid",
            "a Secret the pods mount is missing",
            g,
            now,
        );
    }
    (!reported || prev.observed_generation != g).then_some(PlannedEvent {
        severity: Severity::Warning,
        reason,
        message: msg,
    })
}

/// The new status and events for `md` (pure apart from reading the caches passed in).
pub fn plan_status(
    md: &ModelDeployment,
    runs: &[RunSummary],
    deployment: Option<&Deployment>,
    now: &Time,
) -> (ModelDeploymentStatus, Vec<PlannedEvent>) {
    let (st, events, _) = plan(md, runs, deployment, now);
    (st, events)
}

/// [`plan_status`], plus the models to score on `spec.promotion.evaluation` before a
/// promotion can be decided (the caller runs them and records the results with
/// [`crate::promotion::record_evaluation`]).
pub fn plan(
    md: &ModelDeployment,
    runs: &[RunSummary],
    deployment: Option<&Deployment>,
    now: &Time,
) -> (ModelDeploymentStatus, Vec<PlannedEvent>, Vec<EvalRequest>) {
    let prev = md.status.clone().unwrap_or_default();
    let mut st = prev.clone();
    let g = md.metadata.generation;
    st.observed_generation = g;
    let mut events = Vec::new();
    if md.spec.image.is_empty() {
        // No image set and no default: nothing can be served, so nothing is decided (a model
        // promoted now would be recorded as deployed without ever running).
        let msg = format!(
            "spec.image: {}",
            crate::defaults::missing_image_message(md.spec.resources.gpus)
        );
        conditions::set(
            &mut st.conditions,
            "Valid",
            false,
            "InvalidSpec",
            &msg,
            g,
            now,
        );
        let was_invalid = prev
            .conditions
            .iter()
            .any(|c| c.type_ == "Valid" && c.status == "False");
        if !was_invalid || prev.observed_generation != g {
            events.push(PlannedEvent {
                severity: Severity::Warning,
                reason: "InvalidSpec",
                message: msg,
            });
        }
        conditions::set(
            &mut st.conditions,
            "Available",
            false,
            "Invalid",
            "no image to serve with",
            g,
            now,
        );
        st.phase = Some(DeploymentPhase::Invalid);
        return (st, events, Vec::new());
    }
    let d = decide(&md.spec, &prev, runs, now);
    st.promotion_watermark = d.watermark.clone();
    st.applied_spec_model = d.spec_model_key.clone();
    st.applied_rollback_to = d.rollback_applied;
    for x in &d.declined {
        events.push(PlannedEvent {
            severity: Severity::Normal,
            reason: "PromotionDeclined",
            message: format!("{}: {}", x.training_run, x.reason),
        });
    }
    record_declined(&mut st, d.declined.clone());
    match &d.invalid {
        Some((field, msg)) => {
            let reason = if field == EVALUATION_FIELD {
                "EvaluationFailed"
            } else {
                "InvalidSpec"
            };
            let message = format!("{field}: {msg}");
            let said = prev
                .conditions
                .iter()
                .any(|c| c.type_ == "Valid" && c.status == "False" && c.message == message);
            conditions::set(&mut st.conditions, "Valid", false, reason, &message, g, now);
            if !said || prev.observed_generation != g {
                events.push(PlannedEvent {
                    severity: Severity::Warning,
                    reason,
                    message,
                });
            }
        }
        None => conditions::set(&mut st.conditions, "Valid", true, "SpecValid", "", g, now),
    }
    if let Some((model, reason)) = d.deploy {
        let rev = record_revision(
            &mut st,
            model.clone(),
            reason.clone(),
            md.spec.revision_history_limit,
            now,
        );
        let r = if reason.starts_with("rollback") {
            "RolledBack"
        } else if reason.starts_with("automatic") {
            "Promoted"
        } else {
            "ModelDeployed"
        };
        events.push(PlannedEvent {
            severity: Severity::Normal,
            reason: r,
            message: format!("revision {rev}: {} ({reason})", model.url),
        });
    }
    match (&st.model, &d.waiting) {
        (None, Some(w)) => conditions::set(
            &mut st.conditions,
            "ModelResolved",
            false,
            "WaitingForModel",
            w,
            g,
            now,
        ),
        (None, None) => conditions::set(
            &mut st.conditions,
            "ModelResolved",
            false,
            "NoModel",
            "no model to deploy",
            g,
            now,
        ),
        (Some(m), _) => conditions::set(
            &mut st.conditions,
            "ModelResolved",
            true,
            "Resolved",
            &format!("{} ({})", m.url, m.sha256),
            g,
            now,
        ),
    }

    let desired = md
        .spec
        .autoscaling
        .as_ref()
        .map_or(md.spec.replicas, |a| a.min_replicas);
    let (ready, updated, stuck, current) = match deployment {
        Some(dep) => {
            let s = dep.status.clone().unwrap_or_default();
            let stuck = s
                .conditions
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Progressing" && c.status == "False");
            let current = s.observed_generation >= dep.metadata.generation
                && dep.annotations().get(serving::REVISION_ANNOTATION)
                    == st.current_revision.map(|r| r.to_string()).as_ref();
            (
                s.ready_replicas.unwrap_or(0),
                s.updated_replicas.unwrap_or(0),
                stuck,
                current,
            )
        }
        None => (0, 0, false, false),
    };
    st.ready_replicas = ready;
    st.endpoint = st.model.as_ref().map(|_| serving::endpoint(md));
    let phase = if d.invalid.is_some() && st.model.is_none() {
        DeploymentPhase::Invalid
    } else if st.model.is_none() {
        DeploymentPhase::Pending
    } else if stuck {
        DeploymentPhase::Degraded
    } else if current && ready >= desired && updated >= desired {
        DeploymentPhase::Available
    } else {
        DeploymentPhase::Progressing
    };
    conditions::set(
        &mut st.conditions,
        "Available",
        phase == DeploymentPhase::Available,
        &format!("{phase:?}"),
        &format!("{ready}/{desired} replicas ready"),
        g,
        now,
    );
    st.phase = Some(phase);
    (st, events, d.evaluate)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ModelDeploymentSpec;
    use crate::references::deployment_references;

    fn md(spec: serde_json::Value) -> ModelDeployment {
        let spec: ModelDeploymentSpec = serde_json::from_value(spec).unwrap();
        let mut md = ModelDeployment::new("reader", spec);
        md.metadata.namespace = Some("ml".into());
        md.metadata.generation = Some(3);
        md
    }

    fn now() -> Time {
        crate::local::now()
    }

    #[test]
    fn missing_tls_and_token_secrets_invalidate_the_spec_once() {
        let mut d = md(serde_json::json!({
            "model": {"url": "s3://b/m/", "sha256": "a".repeat(64)}, "image": "w:1",
            "tls": {"secretName": "reader-tls"},
            "auth": {"tokenSecretName": "reader-tokens"}
        }));
        let missing = deployment_references(&d.spec);
        let (mut st, _) = plan_status(&d, &[], None, &now());
        let ev = report_missing(&d, &mut st, &missing, false, &now()).expect("a warning");
        assert_eq!(ev.reason, "SecretNotFound");
        assert!(
            ev.message
                .contains("spec.tls.secretName: Secret \"reader-tls\""),
            "{}",
            ev.message
        );
        assert!(
            ev.message.contains("spec.auth.tokenSecretName"),
            "{}",
            ev.message
        );
        assert_eq!(st.phase, Some(DeploymentPhase::Invalid));
        let valid = st.conditions.iter().find(|c| c.type_ == "Valid").unwrap();
        assert_eq!(
            (valid.status.as_str(), valid.reason.as_str()),
            ("False", "SecretNotFound")
        );

        // The next reconcile of the same generation does not repeat the event.
        d.status = Some(st.clone());
        let (mut st2, _) = plan_status(&d, &[], None, &now());
        assert!(report_missing(&d, &mut st2, &missing, false, &now()).is_none());

        // With pods already serving the phase is left to the Deployment's state.
        let (mut st3, _) = plan_status(&d, &[], None, &now());
        let phase = st3.phase;
        report_missing(&d, &mut st3, &missing[..1], true, &now());
        assert_eq!(st3.phase, phase);

        // Nothing missing: nothing changes.
        let (mut st4, _) = plan_status(&d, &[], None, &now());
        let before = st4.clone();
        assert!(report_missing(&d, &mut st4, &[], false, &now()).is_none());
        assert_eq!(st4, before);
    }
}
