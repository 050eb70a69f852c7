//! A ModelDeployment's TLS and token Secrets.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Patch, PatchParams, PostParams};
use kube::Api;
use serde_json::json;
use textrec_operator::crd::ModelDeployment;

use super::support::*;

/// A ModelDeployment with `spec.tls` and `spec.auth` whose Secrets do not exist yet: `Valid=False`
/// (SecretNotFound) naming both and no Deployment; once both exist the Deployment mounts them,
/// passes the TLS and token flags and probes over HTTPS.
#[tokio::test]
async fn tls_and_token_secrets_are_checked_then_mounted_into_the_serving_pods() {
    let Some(client) = client().await else { return };
    let ns = "textrec-e2e-tls";
    setup_namespace(&client, ns).await;
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), ns);
    for s in ["reader-tls", "reader-tokens"] {
        let _ = secrets.delete(s, &Default::default()).await;
    }
    let stop = start_operator_in(&client, ns);
    let mds: Api<ModelDeployment> = Api::namespaced(client.clone(), ns);
    let _ = mds.delete("secure", &Default::default()).await;
    eventually("no earlier deployment", Duration::from_secs(60), || async {
        mds.get_opt("secure").await.unwrap().is_none().then_some(())
    })
    .await;
    let md: ModelDeployment = serde_json::from_value(json!({
        "apiVersion": "textrec.dev/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": "secure"},
        "spec": {
            "image": worker_image(), "imagePullPolicy": "IfNotPresent",
            "model": {"url": "s3://textrec-e2e/models/small/", "sha256": "0".repeat(64)},
            "tls": {"secretName": "reader-tls", "clientAuth": true},
            "auth": {"tokenSecretName": "reader-tokens", "key": "tokens"}
        }
    }))
    .unwrap();
    mds.create(&PostParams::default(), &md)
        .await
        .expect("ModelDeployment accepted");

    let md_status = || async {
        mds.get_opt("secure")
            .await
            .unwrap()
            .and_then(|m| m.status)
            .map(|s| serde_json::to_value(s).unwrap())
            .unwrap_or_default()
    };
    let s = eventually("Valid=False", Duration::from_secs(60), || async {
        let s = md_status().await;
        (condition(&s, "Valid")["reason"] == "SecretNotFound").then_some(s)
    })
    .await;
    let msg = condition(&s, "Valid")["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("spec.tls.secretName: Secret \"reader-tls\"")
            && msg.contains("spec.auth.tokenSecretName: Secret \"reader-tokens\""),
        "{msg}"
    );
    assert_eq!(s["phase"], "Invalid");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    assert!(deployments.get_opt("secure").await.unwrap().is_none());

    let ssa = PatchParams::apply("textrec-e2e").force();
    for (name, data) in [
        (
            "reader-tls",
            json!({"tls.crt": "placeholder", "tls.key": "placeholder", "ca.crt": "placeholder"}),
        ),
        ("reader-tokens", json!({"tokens": "s3cret\n"})),
    ] {
        secrets
            .patch(
                name,
                &ssa,
                &Patch::Apply(json!({"apiVersion": "v1", "kind": "Secret",
                    "metadata": {"name": name}, "stringData": data})),
            )
            .await
            .unwrap();
    }
    let dep = eventually(
        "the serving Deployment",
        Duration::from_secs(60),
        || async { deployments.get_opt("secure").await.unwrap() },
    )
    .await;
    let pod = dep.spec.unwrap().template.spec.unwrap();
    let c = &pod.containers[0];
    let args = c.args.clone().unwrap();
    for flag in [
        "--tls-cert",
        "--tls-key",
        "--client-ca",
        "--auth-token-file",
    ] {
        assert!(args.iter().any(|a| a == flag), "{flag} missing: {args:?}");
    }
    let secret_volumes: Vec<String> = pod
        .volumes
        .unwrap_or_default()
        .iter()
        .filter_map(|v| v.secret.as_ref()?.secret_name.clone())
        .collect();
    assert!(
        secret_volumes.contains(&"reader-tls".to_string())
            && secret_volumes.contains(&"reader-tokens".to_string()),
        "{secret_volumes:?}"
    );
    let probe = c
        .readiness_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!(probe.scheme.as_deref(), Some("HTTPS"));
    let s = md_status().await;
    assert_ne!(condition(&s, "Valid")["reason"], "SecretNotFound", "{s}");

    let _ = stop.send(true);
    let _ = mds.delete("secure", &Default::default()).await;
    for s in ["reader-tls", "reader-tokens"] {
        let _ = secrets.delete(s, &Default::default()).await;
    }
}
