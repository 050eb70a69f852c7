//! The RBAC grants the code needs, derived from the calls it makes.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use textrec_operator::controller::{self, MemoryEvents, Shared};
use textrec_operator::crd::TrainingRun;
use textrec_operator::metrics::Metrics;

use crate::early_stopping::{early_stopping_harness, progress_at, set_progress};
use crate::fake_api::fake_client;
use crate::harness::*;
use crate::promotion_jobs::{eval_jobs, finish_eval_job};

/// (apiGroup, resource, verb) of one API grant.
type Grant = (String, String, String);

/// The RBAC grants a request needs. A server-side apply of an object (not a status) may create
/// it, which the API server authorizes as `create` too.
fn grants_of(r: &crate::fake_api::Recorded) -> Vec<Grant> {
    let segs: Vec<&str> = r.path.trim_start_matches('/').split('/').collect();
    let (group, rest) = match segs[0] {
        "api" => ("", &segs[2..]),
        _ => (segs[1], &segs[3..]),
    };
    let rest = if rest.len() >= 3 && rest[0] == "namespaces" {
        &rest[2..]
    } else {
        rest
    };
    let resource = match rest.get(2) {
        Some(sub) => format!("{}/{sub}", rest[0]),
        None => rest[0].to_string(),
    };
    let named = rest.len() >= 2;
    let verbs: &[&str] = match r.method.as_str() {
        "GET" if named => &["get"],
        "GET" if r.query.contains("watch=true") => &["watch"],
        "GET" => &["list"],
        "POST" => &["create"],
        "PUT" => &["update"],
        "PATCH" if r.query.contains("fieldManager=") && rest.len() == 2 => &["patch", "create"],
        "PATCH" => &["patch"],
        "DELETE" => &["delete"],
        m => panic!("unexpected method {m}"),
    };
    verbs
        .iter()
        .map(|v| (group.to_string(), resource.clone(), v.to_string()))
        .collect()
}

/// (apiGroup, resource, verb) of the rules of a Role/ClusterRole in operator/rbac.yaml.
fn rbac_yaml(kind: &str, name: &str) -> BTreeSet<Grant> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/rbac.yaml")).unwrap();
    let strs = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect())
            .unwrap_or_default()
    };
    let mut out = BTreeSet::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v: Value = serde::Deserialize::deserialize(doc).unwrap();
        if v["kind"] != kind || v["metadata"]["name"] != name {
            continue;
        }
        for rule in v["rules"].as_array().unwrap() {
            for g in strs(&rule["apiGroups"]) {
                for r in strs(&rule["resources"]) {
                    for verb in strs(&rule["verbs"]) {
                        out.insert((g.clone(), r.clone(), verb));
                    }
                }
            }
        }
    }
    assert!(!out.is_empty(), "operator/rbac.yaml has no {kind} {name}");
    out
}

/// Every API call of the operator: both reconcilers through their paths that write (new run,
/// suspension, HotReload deployment with an HPA), the event recorder (new event and series),
/// leader election (create, renew, release) and the manager's watches.
async fn every_call() -> Vec<crate::fake_api::Recorded> {
    let mut log = Vec::new();

    let run = run_json("ocr", json!({}));
    let h = harness(&run);
    reconcile_run(&h, &run).await;
    log.append(&mut h.state.lock().unwrap().log);

    let run = run_json("ocr", json!({"suspend": true}));
    let mut h = harness(&run);
    apply(&mut h.jobs, job_obj("ocr-t0", json!([]), 1));
    reconcile_run(&h, &run).await;
    log.append(&mut h.state.lock().unwrap().log);

    // A trial stopped early whose checkpoint is safe: its Job is deleted at once.
    let (h, run) = early_stopping_harness();
    set_progress(&h, "ocr-t0", progress_at(&[0.9, 0.85], Some(200)));
    set_progress(&h, "ocr-t1", progress_at(&[0.5, 0.3], None));
    set_progress(&h, "ocr-t2", progress_at(&[0.4, 0.2], None));
    reconcile_run(&h, &run).await;
    assert!(h
        .state
        .lock()
        .unwrap()
        .log
        .iter()
        .any(|r| r.method == "DELETE"));
    log.append(&mut h.state.lock().unwrap().log);

    // A trial Job without a pod: its FailedCreate events are read.
    let run = run_json("ocr", json!({}));
    let mut h = harness(&run);
    apply(&mut h.jobs, job_obj("ocr-t0", json!([]), 0));
    reconcile_run(&h, &run).await;
    log.append(&mut h.state.lock().unwrap().log);

    // A run naming every kind of object it needs (the lookups before any Job).
    let run = run_json(
        "refs",
        json!({"storage": {"url": "file:///runs", "pvc": {"claimName": "runs"},
            "secretRef": "s3-creds", "serviceAccountName": "trainer"}}),
    );
    let h = harness(&run);
    reconcile_run(&h, &run).await;
    log.append(&mut h.state.lock().unwrap().log);

    let md = md_json(
        json!({"strategy": "HotReload", "autoscaling": {"minReplicas": 1, "maxReplicas": 4}}),
    );
    let mut h = md_harness(&md);
    apply(
        &mut h.runs,
        finished_run("ocr", 0.10, "s1", "2027-01-01T00:00:00Z", json!({})),
    );
    reconcile_md(&h, md).await;
    log.append(&mut h.state.lock().unwrap().log);

    // Fine-tunes look up the object their parent comes from.
    for init in [
        json!({"modelDeployment": "reader"}),
        json!({"trainingRun": "base"}),
    ] {
        let run = run_json("tuned", json!({"initFrom": init}));
        let h = harness(&run);
        reconcile_run(&h, &run).await;
        log.append(&mut h.state.lock().unwrap().log);
    }

    // Promotion evaluations: Jobs created, then their pods read and the Jobs deleted.
    let md = md_json(
        json!({"promotion": {"policy": "Automatic", "evaluation": {"path": "/data/heldout"}}}),
    );
    let mut h = md_harness(&md);
    apply(
        &mut h.runs,
        finished_run("ocr", 0.10, "s1", "2027-01-01T00:00:00Z", json!({})),
    );
    let obj = reconcile_md(&h, md).await;
    log.append(&mut h.state.lock().unwrap().log);
    apply(
        &mut h.runs,
        finished_run("ocr2", 0.06, "s2", "2027-01-02T00:00:00Z", json!({})),
    );
    let obj = reconcile_md(&h, obj).await;
    let jobs = eval_jobs(&h.state);
    log.append(&mut h.state.lock().unwrap().log);
    for (name, _) in &jobs {
        finish_eval_job(
            &h.state,
            name,
            json!({"cer": 0.2, "lines": 4, "dataset_digest": "d"}),
        );
    }
    reconcile_md(&h, obj).await;
    log.append(&mut h.state.lock().unwrap().log);

    let (client, state) = fake_client();
    let recorder = kube::runtime::events::Recorder::new(
        client.clone(),
        kube::runtime::events::Reporter {
            controller: "textrec-operator".into(),
            instance: None,
        },
    );
    let events = controller::KubeEvents(recorder);
    let tr: TrainingRun = serde_json::from_value(run_json("ocr", json!({}))).unwrap();
    let reference = kube::Resource::object_ref(&tr, &());
    let ev = textrec_operator::run_plan::PlannedEvent {
        severity: textrec_operator::run_plan::Severity::Warning,
        reason: "TrialCannotStart",
        message: "m".into(),
    };
    use controller::EventSink;
    events.publish(&reference, &ev).await;
    events.publish(&reference, &ev).await;

    let elector = textrec_operator::leader::LeaderElector::new(
        kube::Api::namespaced(client.clone(), "textrec-system"),
        "textrec-operator-leader",
        "me",
        Duration::from_secs(15),
    );
    assert!(elector.try_acquire_or_renew().await.unwrap());
    assert!(elector.try_acquire_or_renew().await.unwrap());
    elector.release().await.unwrap();

    // The watches: long enough for each watcher's list and first watch request.
    let opts = textrec_operator::manager::RunOptions {
        http_addr: "127.0.0.1:0".parse().unwrap(),
        no_ui: false,
        namespace: None,
        lease_namespace: "textrec-system".into(),
        lease_name: "textrec-operator-leader".into(),
        identity: None,
        lease_duration_s: 15,
        no_leader_election: true,
        progress_interval_s: 30,
        no_progress: true,
        concurrency: 1,
        log_format: Default::default(),
        defaults: Default::default(),
    };
    let shared = Arc::new(Shared {
        metrics: Arc::new(Metrics::new()),
        events: Arc::new(MemoryEvents::default()),
        backoff: Default::default(),
        defaults: Default::default(),
    });
    let (stop, rx) = tokio::sync::watch::channel(false);
    let c = client.clone();
    let manager = tokio::spawn(async move {
        textrec_operator::manager::run_controllers(c, &opts, shared, rx).await
    });
    let watched = |st: &crate::fake_api::FakeState| {
        st.log
            .iter()
            .filter(|r| r.query.contains("watch=true"))
            .map(|r| r.path.clone())
            .collect::<BTreeSet<_>>()
            .len()
    };
    for _ in 0..100 {
        // Five watches: TrainingRuns (twice, one path), ModelDeployments, Jobs, Pods, Deployments.
        if watched(&state.lock().unwrap()) >= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = stop.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), manager).await;
    log.append(&mut state.lock().unwrap().log);
    log
}

#[tokio::test]
async fn rbac_yaml_grants_exactly_the_calls_the_operator_makes() {
    let calls = every_call().await;
    let mut cluster = BTreeSet::new();
    let mut leader = BTreeSet::new();
    for r in &calls {
        for g in grants_of(r) {
            if g.1 == "leases" {
                leader.insert(g);
            } else {
                cluster.insert(g);
            }
        }
    }
    // Reading Secrets is opt-in (the chart's rbac.readSecrets): the operator tries, and does
    // without when it may not.
    let secrets = (String::new(), "secrets".to_string(), "get".to_string());
    assert!(
        cluster.remove(&secrets),
        "the Secret lookup was not exercised"
    );
    let want = rbac_yaml("ClusterRole", "textrec-operator");
    assert_eq!(
        cluster.difference(&want).collect::<Vec<_>>(),
        Vec::<&Grant>::new(),
        "calls that operator/rbac.yaml does not allow"
    );
    assert_eq!(
        want.difference(&cluster).collect::<Vec<_>>(),
        Vec::<&Grant>::new(),
        "operator/rbac.yaml grants what the operator never calls"
    );
    assert_eq!(
        leader,
        rbac_yaml("Role", "textrec-operator-leader-election")
    );
}
