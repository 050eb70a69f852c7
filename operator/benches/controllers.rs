//! Benchmark: the operator's controllers with their watches, as `textrec-operator run` starts
//! them, against the fake API over HTTP in a child process.
//!
//!     cargo bench -p textrec-operator --bench controllers
//!
//! 100 TrainingRuns × 8 trials are created; the controllers list and watch them, apply every
//! trial's Job, and this process plays the Job controller and the kubelet: each new Job gets a
//! running pod. The benchmark ends when every Job has its pod and every run's status counts 8
//! running trials. Prints the
//! time to all Jobs and to all runs running, the requests made, the watches opened, and this
//! process's peak RSS: the operator's runtime, client, watches and caches (the fake's stored
//! objects live in the child).

#[path = "../tests/support/fake_api.rs"]
mod fake_api;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, PostParams};
use kube::{Api, Client};
use serde_json::{json, Value};
use textrec_operator::controller::{MemoryEvents, Shared};
use textrec_operator::crd::TrainingRun;
use textrec_operator::manager::{run_controllers, RunOptions};
use textrec_operator::metrics::Metrics;

const RUNS: usize = 100;
const TRIALS: usize = 8;
const NS: &str = "bench";

fn mb(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn run(i: usize) -> TrainingRun {
    serde_json::from_value(json!({
        "apiVersion": "textrec.dev/v1alpha1", "kind": "TrainingRun",
        "metadata": {"name": format!("run-{i:03}"), "namespace": NS, "uid": format!("uid-{i}"), "generation": 1},
        "spec": {
            "image": "ghcr.io/textrec/worker:1",
            "storage": {"url": "s3://bucket/runs"},
            "hyperparameters": {"optimizer": {"lr": [0.001, 0.002]}, "batch_size": [8, 16], "model": {"dropout": [0.0, 0.1]}},
            "search": {"maxTrials": TRIALS, "parallelism": TRIALS},
            "resources": {"gpus": 1},
            "scheduling": {"spot": true}
        }
    }))
    .unwrap()
}

/// A running pod for `job`, as the Job controller and the kubelet would make it.
fn pod_of(job: &Job) -> Pod {
    let name = job.metadata.name.clone().unwrap();
    let template = &job.spec.as_ref().unwrap().template;
    let mut labels = template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .clone()
        .unwrap_or_default();
    labels.insert("batch.kubernetes.io/job-name".into(), name.clone());
    serde_json::from_value(json!({
        "metadata": {"name": format!("{name}-x"), "namespace": NS, "labels": labels},
        "spec": template.spec,
        "status": {"phase": "Running", "containerStatuses": [{"name": "worker", "image": "", "imageID": "", "ready": true, "restartCount": 0, "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}]}
    }))
    .unwrap()
}

fn main() {
    if std::env::var_os(fake_api::CHILD_ENV).is_some() {
        return fake_api::serve_child(true);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (mut child, port) = fake_api::spawn_child();
    rt.block_on(async {
        let url = format!("http://127.0.0.1:{port}").parse().unwrap();
        let client = Client::try_from(kube::Config::new(url)).unwrap();
        let runs: Api<TrainingRun> = Api::namespaced(client.clone(), NS);
        for i in 0..RUNS {
            runs.create(&PostParams::default(), &run(i)).await.unwrap();
        }
        let base_kib = fake_api::proc_status_kib("VmRSS:");

        #[derive(Parser)]
        struct Opts {
            #[command(flatten)]
            run: RunOptions,
        }
        let opts = Opts::parse_from(["bench", "--namespace", NS, "--no-leader-election", "--no-progress"]).run;
        let shared = Arc::new(Shared {
            metrics: Arc::new(Metrics::new()),
            events: Arc::new(MemoryEvents::default()),
            backoff: Default::default(),
            defaults: Default::default(),
        });
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let started = Instant::now();
        let controllers = tokio::spawn({
            let client = client.clone();
            async move { run_controllers(client, &opts, shared, stop_rx).await }
        });

        // The Job controller and kubelet: a running pod for every new Job.
        let jobs: Api<Job> = Api::namespaced(client.clone(), NS);
        let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
        let mut podded = HashSet::new();
        let (mut all_jobs, mut all_running) = (None, None);
        while all_running.is_none() {
            assert!(started.elapsed() < Duration::from_secs(300), "not settled after 300 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
            for job in jobs.list(&ListParams::default().limit(5000)).await.unwrap().items {
                if podded.insert(job.metadata.name.clone().unwrap()) {
                    pods.create(&PostParams::default(), &pod_of(&job)).await.unwrap();
                }
            }
            if all_jobs.is_none() && podded.len() >= RUNS * TRIALS {
                all_jobs = Some(started.elapsed());
            }
            let running = runs
                .list(&ListParams::default().limit(5000))
                .await
                .unwrap()
                .items
                .iter()
                .filter(|r| r.status.as_ref().is_some_and(|s| s.counts.running == TRIALS as i32))
                .count();
            if running == RUNS && all_jobs.is_some() {
                all_running = Some(started.elapsed());
            }
        }
        let _ = stop_tx.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(10), controllers).await;
        let stats: Value = client
            .request(http::Request::get("/_fake/stats").body(Vec::new()).unwrap())
            .await
            .unwrap();
        let hwm = fake_api::proc_status_kib("VmHWM:");
        println!("textrec-operator controllers benchmark: {RUNS} TrainingRuns x {TRIALS} trials, watches over HTTP");
        println!("  all Jobs applied:      {:.3} s ({} Jobs)", all_jobs.unwrap_or_default().as_secs_f64(), podded.len());
        println!("  all runs running:      {:.3} s", all_running.unwrap().as_secs_f64());
        println!("  API requests:          {} (with the benchmark's own polling)", stats["requests"]);
        println!("  watches opened:        {}", stats["watchesOpened"]);
        println!("  peak RSS (VmHWM):      {:.1} MB (operator process; {:.1} MB before the controllers started)", mb(hwm), mb(base_kib));
    });
    drop(child.stdin.take());
    let _ = child.wait();
}
