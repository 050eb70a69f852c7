//! Benchmark: 100 TrainingRuns × 8 trials reconciled to Jobs against the fake API.
//!
//!     cargo bench -p textrec-operator --bench reconcile
//!
//! Pass 1 creates every Job (server-side apply) and writes each run's status; pass 2 sees the
//! Jobs and their running pods in the caches (as the watches would deliver them) and updates
//! the status; pass 3 is the steady state (nothing to write). Prints total time, p50/p99
//! reconcile duration and the operator's peak RSS (VmHWM).
//!
//! Where the fake API server runs (`TEXTREC_BENCH_FAKE`):
//! - `child` (default): in a child process (this binary, re-executed) serving HTTP on
//!   127.0.0.1; the operator side talks to it through a real `kube::Client` over hyper, as it
//!   talks to an API server. This process then holds only what the operator holds (runtime,
//!   client, caches, the runs), so its peak RSS is the operator's. The child's own peak RSS (the
//!   server's stored objects) is printed separately.
//! - `in-process`: the fake is a tower service inside this process (as in the controller
//!   tests); the peak RSS then includes the fake's stored objects (~30 MB of JSON values).
//!
//! Memory is printed at each stage (`[mem]` lines): RSS, peak, and glibc's heap in use, so the
//! operator's share is visible. The caches are filled through the same transforms the manager
//! applies to its watch streams (`controller::cache`).

#[path = "../tests/support/fake_api.rs"]
mod fake_api;

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, PostParams};
use kube::runtime::reflector;
use kube::runtime::watcher;
use kube::{Api, Client};
use serde_json::{json, Value};
use textrec_operator::controller::cache::{slim_job, slim_pod, slim_run};
use textrec_operator::controller::{self, MemoryEvents, Shared};
use textrec_operator::crd::TrainingRun;
use textrec_operator::metrics::Metrics;
use textrec_operator::naming::{label_value, RUN_LABEL};
use textrec_operator::progress::NoProgress;

const RUNS: usize = 100;
const NS: &str = "bench";

fn mb(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// glibc's bytes in use by malloc (all arenas).
fn heap_in_use() -> f64 {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 only reads the allocator's counters.
        let mi = unsafe { libc::mallinfo2() };
        (mi.uordblks + mi.hblkhd) as f64 / 1048576.0
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        f64::NAN
    }
}

fn snap(label: &str) {
    println!(
        "  [mem] {label:<34} RSS {:5.1} MB  peak {:5.1} MB  heap in use {:5.1} MB",
        mb(fake_api::proc_status_kib("VmRSS:")),
        mb(fake_api::proc_status_kib("VmHWM:")),
        heap_in_use(),
    );
}

fn run(i: usize) -> TrainingRun {
    serde_json::from_value(json!({
        "apiVersion": "textrec.dev/v1alpha1", "kind": "TrainingRun",
        "metadata": {"name": format!("run-{i:03}"), "namespace": NS, "uid": format!("uid-{i}"), "generation": 1},
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
    if std::env::var_os(fake_api::CHILD_ENV).is_some() {
        return fake_api::serve_child(false);
    }
    let in_process = match std::env::var("TEXTREC_BENCH_FAKE").as_deref() {
        Ok("in-process") => true,
        Ok("child") | Err(_) => false,
        Ok(other) => panic!("TEXTREC_BENCH_FAKE={other}: expected child or in-process"),
    };
    snap("process start");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut child = None;
    rt.block_on(async {
        let client = if in_process {
            let (client, state) = fake_api::fake_client();
            state.lock().unwrap().quiet = true;
            client
        } else {
            let (c, port) = fake_api::spawn_child();
            child = Some(c);
            let url = format!("http://127.0.0.1:{port}").parse().unwrap();
            Client::try_from(kube::Config::new(url)).unwrap()
        };
        println!(
            "fake API server: {}",
            if in_process {
                "in this process (its stored objects count in the RSS below)"
            } else {
                "child process over HTTP (RSS below is the operator side only)"
            }
        );
        snap("runtime + client");
        let (jobs_r, mut jobs_w) = reflector::store::<Job>();
        let (pods_r, mut pods_w) = reflector::store::<Pod>();
        let shared = Arc::new(Shared {
            metrics: Arc::new(Metrics::new()),
            events: Arc::new(MemoryEvents::default()),
            backoff: Default::default(),
            defaults: Default::default(),
        });
        let ctx = Arc::new(controller::training_run::Context {
            client: client.clone(),
            jobs: jobs_r,
            pods: pods_r,
            progress: Arc::new(NoProgress),
            history: Default::default(),
            shared,
            progress_interval: Duration::from_secs(30),
            clock: controller::training_run::now,
        });
        let run_api: Api<TrainingRun> = Api::namespaced(client.clone(), NS);
        let job_api: Api<Job> = Api::namespaced(client.clone(), NS);
        let mut runs: Vec<Arc<TrainingRun>> = Vec::with_capacity(RUNS);
        for i in 0..RUNS {
            let mut r = run_api.create(&PostParams::default(), &run(i)).await.unwrap();
            slim_run(&mut r);
            runs.push(Arc::new(r));
        }
        snap("fake API state built (100 runs)");
        let mut durations = Vec::new();
        let started = Instant::now();
        for pass in 0..3 {
            for r in &runs {
                let t = Instant::now();
                controller::training_run::reconcile(r.clone(), ctx.clone())
                    .await
                    .unwrap();
                durations.push(t.elapsed());
            }
            snap(&format!("pass {} reconciled", pass + 1));
            // Deliver what was written, as the watches would (through the manager's transforms).
            for r in runs.iter_mut() {
                let mut fresh = run_api.get(&r.metadata.name.clone().unwrap()).await.unwrap();
                slim_run(&mut fresh);
                *r = Arc::new(fresh);
            }
            if pass > 0 {
                continue;
            }
            snap("runs re-read with their status");
            let mut slim_bytes = (0, 0);
            for r in &runs {
                let name = r.metadata.name.as_deref().unwrap();
                let lp = ListParams::default().labels(&format!("{RUN_LABEL}={}", label_value(name)));
                for mut job in job_api.list(&lp).await.unwrap().items {
                    job.metadata.namespace = Some(NS.into());
                    let job_name = job.metadata.name.clone().unwrap();
                    let mut pod: Pod = serde_json::from_value(json!({
                        "metadata": {"name": format!("{job_name}-x"), "namespace": NS, "labels": job.spec.as_ref().unwrap().template.metadata.as_ref().unwrap().labels},
                        "spec": job.spec.as_ref().unwrap().template.spec,
                        "status": {"phase": "Running", "containerStatuses": [{"name": "worker", "image": "", "imageID": "", "ready": true, "restartCount": 0, "state": {"running": {}}}]}
                    }))
                    .unwrap();
                    slim_job(&mut job);
                    slim_pod(&mut pod);
                    slim_bytes.0 += serde_json::to_vec(&job).unwrap().len();
                    slim_bytes.1 += serde_json::to_vec(&pod).unwrap().len();
                    jobs_w.apply_watcher_event(&watcher::Event::Apply(job));
                    pods_w.apply_watcher_event(&watcher::Event::Apply(pod));
                }
            }
            snap("caches filled (800 Jobs, 800 pods)");
            println!("  cached as JSON: Jobs {} KB, pods {} KB", slim_bytes.0 / 1024, slim_bytes.1 / 1024);
        }
        let total = started.elapsed();
        let stats: Value = client
            .request(
                http::Request::get("/_fake/stats")
                    .body(Vec::new())
                    .unwrap(),
            )
            .await
            .unwrap();
        let job_writes = stats["jobWrites"].as_u64().unwrap() as usize;
        let status_writes = stats["statusWrites"].as_u64().unwrap();
        durations.sort();
        let hwm = fake_api::proc_status_kib("VmHWM:");
        println!("textrec-operator reconcile benchmark: {RUNS} TrainingRuns x 8 trials, 3 passes ({} reconciles)", durations.len());
        println!("  jobs applied:     {job_writes}");
        println!("  status writes:    {status_writes}");
        println!("  total time:       {:.3} s", total.as_secs_f64());
        println!("  reconcile p50:    {:.3} ms", pct(&durations, 0.50).as_secs_f64() * 1e3);
        println!("  reconcile p99:    {:.3} ms", pct(&durations, 0.99).as_secs_f64() * 1e3);
        println!("  reconcile max:    {:.3} ms", durations.last().unwrap().as_secs_f64() * 1e3);
        if in_process {
            println!("  peak RSS (VmHWM): {:.1} MB (operator + in-process fake API server)", mb(hwm));
        } else {
            println!("  peak RSS (VmHWM): {:.1} MB (operator process)", mb(hwm));
            println!(
                "  fake API server:  {:.1} MB peak RSS in its own process ({} objects stored)",
                mb(stats["vmHwmKiB"].as_u64().unwrap_or(0)),
                stats["objects"]
            );
        }
        assert_eq!(job_writes, RUNS * 8, "every trial got its Job");
    });
    if let Some(mut c) = child {
        drop(c.stdin.take());
        let _ = c.wait();
    }
}
