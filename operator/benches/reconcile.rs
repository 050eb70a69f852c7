//! Benchmark: 100 TrainingRuns × 8 trials reconciled to Jobs against the in-memory fake API.
//!
//!     cargo bench -p textrec-operator --bench reconcile
//!
//! Pass 1 creates every Job (server-side apply) and writes each run's status; pass 2 sees the
//! Jobs and their running pods in the caches (as the watches would deliver them) and updates
//! the status; pass 3 is the steady state (nothing to write). Prints total time, p50/p99
//! reconcile duration and peak RSS (VmHWM).

#[path = "../tests/support/fake_api.rs"]
mod fake_api;

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector;
use kube::runtime::watcher;
use serde_json::json;
use textrec_operator::controller::{self, MemoryEvents, Shared};
use textrec_operator::crd::TrainingRun;
use textrec_operator::metrics::Metrics;
use textrec_operator::progress::NoProgress;

const RUNS: usize = 100;

fn vm_hwm_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn run(i: usize) -> TrainingRun {
    serde_json::from_value(json!({
        "apiVersion": "textrec.dev/v1alpha1", "kind": "TrainingRun",
        "metadata": {"name": format!("run-{i:03}"), "namespace": "bench", "uid": format!("uid-{i}"), "generation": 1},
        "spec": {
            "image": "ghcr.io/textrec/worker:1",
            "storage": {"url": "s3://bucket/runs"},
            "hyperparameters": {"optimizer": {"lr": [0.001, 0.002]}, "batch_size": [8, 16], "model": {"dropout": [0.0, 0.1]}},
            "search": {"maxTrials": 8, "parallelism": 8},
            "resources": {"gpus": 1},
            "scheduling": {"spot": true}
        }
    }))
    .unwrap()
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (client, state) = fake_api::fake_client();
        state.lock().unwrap().quiet = true;
        let (jobs_r, mut jobs_w) = reflector::store::<Job>();
        let (pods_r, mut pods_w) = reflector::store::<Pod>();
        let shared = Arc::new(Shared { metrics: Arc::new(Metrics::new()), events: Arc::new(MemoryEvents::default()), backoff: Default::default() });
        let ctx = Arc::new(controller::training_run::Context {
            client,
            jobs: jobs_r,
            pods: pods_r,
            progress: Arc::new(NoProgress),
            shared,
            progress_interval: Duration::from_secs(30),
            clock: controller::training_run::now,
        });
        let mut runs: Vec<TrainingRun> = (0..RUNS).map(run).collect();
        {
            let mut st = state.lock().unwrap();
            for r in &runs {
                let path = format!("/apis/textrec.dev/v1alpha1/namespaces/bench/trainingruns/{}", r.metadata.name.as_ref().unwrap());
                st.objects.insert(path, serde_json::to_value(r).unwrap());
            }
        }
        let mut durations = Vec::new();
        let started = Instant::now();
        for pass in 0..3 {
            for r in &runs {
                let t = Instant::now();
                controller::training_run::reconcile(Arc::new(r.clone()), ctx.clone()).await.unwrap();
                durations.push(t.elapsed());
            }
            // Deliver what was written, as the watches would.
            let st = state.lock().unwrap();
            for r in runs.iter_mut() {
                let path = format!("/apis/textrec.dev/v1alpha1/namespaces/bench/trainingruns/{}", r.metadata.name.as_ref().unwrap());
                *r = serde_json::from_value(st.objects[&path].clone()).unwrap();
            }
            if pass == 0 {
                for (path, v) in st.objects.iter().filter(|(p, _)| p.contains("/jobs/")) {
                    let mut job: Job = serde_json::from_value(v.clone()).unwrap();
                    job.metadata.namespace = Some("bench".into());
                    let name = path.rsplit('/').next().unwrap().to_string();
                    let pod: Pod = serde_json::from_value(json!({
                        "metadata": {"name": format!("{name}-x"), "namespace": "bench", "labels": job.spec.as_ref().unwrap().template.metadata.as_ref().unwrap().labels},
                        "status": {"phase": "Running", "containerStatuses": [{"name": "worker", "image": "", "imageID": "", "ready": true, "restartCount": 0, "state": {"running": {}}}]}
                    }))
                    .unwrap();
                    jobs_w.apply_watcher_event(&watcher::Event::Apply(job));
                    pods_w.apply_watcher_event(&watcher::Event::Apply(pod));
                }
            }
        }
        let total = started.elapsed();
        let st = state.lock().unwrap();
        let job_writes = st.log.iter().filter(|r| r.path.contains("/jobs/")).count();
        let status_writes = st.log.iter().filter(|r| r.path.ends_with("/status")).count();
        drop(st);
        durations.sort();
        println!("textrec-operator reconcile benchmark: {RUNS} TrainingRuns x 8 trials, 3 passes ({} reconciles)", durations.len());
        println!("  jobs applied:     {job_writes}");
        println!("  status writes:    {status_writes}");
        println!("  total time:       {:.3} s", total.as_secs_f64());
        println!("  reconcile p50:    {:.3} ms", pct(&durations, 0.50).as_secs_f64() * 1e3);
        println!("  reconcile p99:    {:.3} ms", pct(&durations, 0.99).as_secs_f64() * 1e3);
        println!("  reconcile max:    {:.3} ms", durations.last().unwrap().as_secs_f64() * 1e3);
        match vm_hwm_kib() {
            Some(k) => println!("  peak RSS (VmHWM): {:.1} MB", k as f64 / 1024.0),
            None => println!("  peak RSS (VmHWM): unavailable"),
        }
        assert_eq!(job_writes, RUNS * 8, "every trial got its Job");
    });
}
