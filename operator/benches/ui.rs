//! Benchmark: the dashboard's run page for a large search, 100 trials × 10k steps (a
//! training-loss record every step, an evaluation every 100 steps), as the operator renders it.
//!
//!     cargo bench -p textrec-operator --bench ui
//!
//! Writes the synthetic `metrics.jsonl` files to a temporary folder, then prints: the first
//! read (every file fetched and parsed into the cache), a warm read (size/ETag checks only),
//! the page render from cached curves (downsampling + SVG + HTML), and the page's size.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use textrec_operator::crd::TrainingRun;
use textrec_operator::ui::data::MetricsCache;
use textrec_operator::ui::pages::{run_page, RunView};

const TRIALS: usize = 100;
const STEPS: u64 = 10_000;
const EVAL_EVERY: u64 = 100;

fn write_metrics(dir: &std::path::Path, trial: usize) {
    use std::io::Write;
    let folder = dir.join("big").join(format!("big-t{trial}"));
    std::fs::create_dir_all(&folder).unwrap();
    let mut f =
        std::io::BufWriter::new(std::fs::File::create(folder.join("metrics.jsonl")).unwrap());
    let t0 = chrono::DateTime::parse_from_rfc3339("2026-11-30T00:00:00Z").unwrap();
    let lr = 1e-4 * (1 + trial % 10) as f64;
    let speed = 0.4 + (trial % 7) as f64 * 0.05; // seconds per step
    for step in 1..=STEPS {
        let s = step as f64;
        let elapsed = s * speed;
        let time = t0 + chrono::Duration::milliseconds((elapsed * 1000.0) as i64);
        let noise = ((s * 12.9898 + trial as f64 * 78.233).sin() * 43758.5453).fract() * 0.15;
        let loss = 4.5 * (-s * lr * 0.3).exp() + 0.2 + noise;
        writeln!(
            f,
            "{}",
            json!({"kind": "train", "step": step, "time": time.to_rfc3339(), "elapsed_s": elapsed,
                   "loss": loss, "lr": lr, "samples_per_sec": 32.0 / speed})
        )
        .unwrap();
        if step % EVAL_EVERY == 0 {
            let cer = 0.9 * (-s * lr * 0.25).exp() + 0.04 + noise * 0.1;
            writeln!(
                f,
                "{}",
                json!({"kind": "eval", "step": step, "time": time.to_rfc3339(), "elapsed_s": elapsed,
                       "cer": cer, "wer": (cer * 2.5).min(1.0),
                       "sets": {"validation": {"cer": cer, "wer": (cer * 2.5).min(1.0), "lines": 512}}})
            )
            .unwrap();
        }
    }
}

fn run_object(storage: &str) -> TrainingRun {
    let trials: Vec<_> = (0..TRIALS)
        .map(|i| {
            json!({"name": format!("big-t{i}"), "phase": "Succeeded",
                   "params": format!("optimizer.lr={},batch_size={}", 1e-4 * (1 + i % 10) as f64, 16 << (i % 3)),
                   "step": STEPS, "bestMetric": 0.05 + i as f64 * 1e-4, "latestMetric": 0.05 + i as f64 * 1e-4,
                   "restarts": i % 3, "preemptions": i % 5})
        })
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "textrec.dev/v1alpha1", "kind": "TrainingRun",
        "metadata": {"name": "big", "namespace": "bench", "creationTimestamp": "2026-11-30T00:00:00Z"},
        "spec": {"image": "w:1", "storage": {"url": storage},
                 "search": {"maxTrials": TRIALS, "parallelism": 10}},
        "status": {"phase": "Succeeded", "trialsDone": format!("{TRIALS}/{TRIALS}"),
                   "counts": {"total": TRIALS, "succeeded": TRIALS, "running": 0, "pending": 0, "failed": 0},
                   "trials": trials, "bestTrial": "big-t0",
                   "bestModel": {"trial": "big-t0", "url": format!("{storage}/big/big-t0/model"),
                                 "sha256": "ab".repeat(32), "metric": 0.05, "metricName": "cer"}}
    }))
    .unwrap()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let t = Instant::now();
    std::thread::scope(|s| {
        for w in 0..4 {
            let d = dir.path();
            s.spawn(move || {
                for i in (w..TRIALS).step_by(4) {
                    write_metrics(d, i);
                }
            });
        }
    });
    let bytes: u64 = (0..TRIALS)
        .map(|i| {
            std::fs::metadata(dir.path().join(format!("big/big-t{i}/metrics.jsonl")))
                .unwrap()
                .len()
        })
        .sum();
    println!(
        "fixture: {TRIALS} trials × {STEPS} steps ({} train + {} eval records each), {:.0} MB of metrics.jsonl, written in {:.1?}",
        STEPS,
        STEPS / EVAL_EVERY,
        bytes as f64 / 1e6,
        t.elapsed()
    );
    let run = Arc::new(run_object(&format!("file://{}", dir.path().display())));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let cache = MetricsCache::default();
    // Trials still running, so every warm read asks the storage for size and ETag.
    let mut running = (*run).clone();
    for t in &mut running.status.as_mut().unwrap().trials {
        t.phase = textrec_operator::crd::TrialPhase::Running;
    }

    let t = Instant::now();
    let (curves, errors) = rt.block_on(cache.run(&running));
    let cold = t.elapsed();
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(curves.len(), TRIALS);
    std::thread::sleep(MetricsCache::RECHECK);
    let t = Instant::now();
    let _ = rt.block_on(cache.run(&running));
    let warm_check = t.elapsed();
    let t = Instant::now();
    let (curves, _) = rt.block_on(cache.run(&run));
    let warm = t.elapsed();

    let mut renders = Vec::new();
    let mut page = String::new();
    for _ in 0..15 {
        let t = Instant::now();
        page = run_page(&run, &curves, &[], &RunView::default(), 1_800_000_000);
        renders.push(t.elapsed());
    }
    let mut log_renders = Vec::new();
    let mut log_page = String::new();
    let log = RunView {
        log: true,
        ..Default::default()
    };
    for _ in 0..15 {
        let t = Instant::now();
        log_page = run_page(&run, &curves, &[], &log, 1_800_000_000);
        log_renders.push(t.elapsed());
    }
    let points = page.matches(',').count();
    println!("first read (fetch + parse {TRIALS} files): {cold:.1?}");
    println!("warm read, files re-checked (size/ETag per trial): {warm_check:.1?}");
    println!("warm read, finished trials (no storage calls): {warm:.1?}");
    println!(
        "render run page: median {:.1?} (log axes {:.1?}); payload {:.0} KiB ({:.0} KiB log), ~{} coordinates drawn",
        median(renders),
        median(log_renders),
        page.len() as f64 / 1024.0,
        log_page.len() as f64 / 1024.0,
        points
    );
}
