//! Fine-tuning lineage: which model a TrainingRun's `spec.initFrom` names, resolved from the
//! objects it points at. Pure, so the controller and the local runner resolve alike; each looks
//! the named object up its own way and passes it in.

use kube::ResourceExt;

use crate::crd::{InitFrom, ModelDeployment, ResolvedParent, RunPhase, TrainingRun};

/// What `spec.initFrom` resolves to now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parent {
    /// The parent model.
    Resolved(ResolvedParent),
    /// Not yet (or never) resolvable: the field at fault and why. No trial starts meanwhile.
    Waiting {
        /// `spec.initFrom.modelDeployment` or `spec.initFrom.trainingRun`.
        field: &'static str,
        /// What is missing.
        message: String,
    },
}

/// Resolve `init` with the object it names (looked up by the caller in the run's namespace:
/// `deployment` for `modelDeployment`, `run` for `trainingRun`; `None` when it does not exist).
pub fn resolve(
    init: &InitFrom,
    deployment: Option<&ModelDeployment>,
    run: Option<&TrainingRun>,
) -> Parent {
    if let Some(url) = &init.url {
        return Parent::Resolved(ResolvedParent {
            url: url.clone(),
            sha256: init.sha256.clone(),
            source: "url".into(),
        });
    }
    if let Some(name) = &init.model_deployment {
        let field = "spec.initFrom.modelDeployment";
        let Some(md) = deployment.filter(|d| &d.name_any() == name) else {
            return waiting(field, format!("ModelDeployment {name:?} not found"));
        };
        let st = md.status.clone().unwrap_or_default();
        return match st.model {
            Some(m) => Parent::Resolved(ResolvedParent {
                url: m.url,
                sha256: Some(m.sha256).filter(|s| !s.is_empty()),
                source: format!(
                    "ModelDeployment {name} (revision {})",
                    st.current_revision.unwrap_or_default()
                ),
            }),
            None => waiting(
                field,
                format!("ModelDeployment {name:?} serves no model yet"),
            ),
        };
    }
    if let Some(name) = &init.training_run {
        let field = "spec.initFrom.trainingRun";
        let Some(r) = run.filter(|r| &r.name_any() == name) else {
            return waiting(field, format!("TrainingRun {name:?} not found"));
        };
        let st = r.status.clone().unwrap_or_default();
        // Its best model may still change while trials run: only a finished run's is final.
        return match (st.phase, st.best_model) {
            (Some(RunPhase::Succeeded), Some(b)) => Parent::Resolved(ResolvedParent {
                url: b.url,
                sha256: Some(b.sha256).filter(|s| !s.is_empty()),
                source: format!("TrainingRun {name}"),
            }),
            (Some(p), _) if p.is_terminal() => waiting(
                field,
                format!("TrainingRun {name:?} ended without a best model"),
            ),
            _ => waiting(
                field,
                format!("waiting for TrainingRun {name:?} to succeed with a best model"),
            ),
        };
    }
    waiting("spec.initFrom", "names no model".into())
}

fn waiting(field: &'static str, message: String) -> Parent {
    Parent::Waiting { field, message }
}

/// The worker overrides that make a trial start from `parent`.
pub fn parent_overrides(parent: &ResolvedParent) -> Vec<String> {
    let q = |s: &str| serde_json::Value::String(s.to_string()).to_string();
    let mut out = vec![format!("model.init_from={}", q(&parent.url))];
    if let Some(sha) = &parent.sha256 {
        out.push(format!("model.init_sha256={}", q(sha)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn init(v: serde_json::Value) -> InitFrom {
        serde_json::from_value(v).unwrap()
    }

    fn md(status: serde_json::Value) -> ModelDeployment {
        serde_json::from_value(json!({
            "apiVersion": "textrec.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": "reader", "namespace": "ml"},
            "spec": {"model": {"url": "s3://b/m/", "sha256": "a".repeat(64)}, "image": "w"},
            "status": status
        }))
        .unwrap()
    }

    fn run(status: serde_json::Value) -> TrainingRun {
        serde_json::from_value(json!({
            "apiVersion": "textrec.dev/v1alpha1", "kind": "TrainingRun",
            "metadata": {"name": "base", "namespace": "ml"},
            "spec": {"image": "w"},
            "status": status
        }))
        .unwrap()
    }

    #[test]
    fn a_deployment_resolves_to_the_model_it_serves_now() {
        let i = init(json!({"modelDeployment": "reader"}));
        let served = md(json!({"currentRevision": 3,
            "model": {"url": "s3://b/r3/", "sha256": "b".repeat(64)}}));
        let Parent::Resolved(p) = resolve(&i, Some(&served), None) else {
            panic!("resolved")
        };
        assert_eq!(p.url, "s3://b/r3/");
        assert_eq!(p.sha256, Some("b".repeat(64)));
        assert_eq!(p.source, "ModelDeployment reader (revision 3)");
        assert_eq!(
            parent_overrides(&p),
            vec![
                r#"model.init_from="s3://b/r3/""#.to_string(),
                format!(r#"model.init_sha256="{}""#, "b".repeat(64))
            ]
        );
    }

    #[test]
    fn unresolvable_references_wait_naming_the_field() {
        let i = init(json!({"modelDeployment": "reader"}));
        match resolve(&i, Some(&md(json!({}))), None) {
            Parent::Waiting { field, message } => {
                assert_eq!(field, "spec.initFrom.modelDeployment");
                assert!(message.contains("serves no model yet"), "{message}");
            }
            p => panic!("{p:?}"),
        }
        assert!(matches!(
            resolve(&i, None, None),
            Parent::Waiting { message, .. } if message.contains("not found")
        ));
        let i = init(json!({"trainingRun": "base"}));
        let running = run(json!({"phase": "Running", "bestModel": {"trial": "base-t0",
            "url": "s3://b/t0/", "sha256": "c".repeat(64), "metric": 0.1, "metricName": "cer"}}));
        assert!(matches!(
            resolve(&i, None, Some(&running)),
            Parent::Waiting {
                field: "spec.initFrom.trainingRun",
                ..
            }
        ));
        let failed = run(json!({"phase": "Failed"}));
        assert!(matches!(
            resolve(&i, None, Some(&failed)),
            Parent::Waiting { message, .. } if message.contains("without a best model")
        ));
        let mut done = running.clone();
        done.status.as_mut().unwrap().phase = Some(RunPhase::Succeeded);
        assert!(matches!(
            resolve(&i, None, Some(&done)),
            Parent::Resolved(p) if p.url == "s3://b/t0/" && p.source == "TrainingRun base"
        ));
    }

    #[test]
    fn a_url_needs_no_lookup_and_keeps_its_optional_version() {
        let p = resolve(&init(json!({"url": "builtin:small"})), None, None);
        assert!(matches!(&p, Parent::Resolved(p) if p.sha256.is_none()));
        let Parent::Resolved(p) = p else {
            unreachable!()
        };
        assert_eq!(
            parent_overrides(&p),
            vec![r#"model.init_from="builtin:small""#]
        );
    }
}
