//! Serving benchmark: latency percentiles and throughput at several concurrencies for
//! (a) the model called in-process (`prepare_bytes` + `recognize_prepared`, one image per call),
//! (b) `textrec-worker serve` over gRPC with batching off (`--max-batch 1`), and
//! (c) the same with dynamic batching on; plus the server's RSS at idle and under load.
//!
//! The model has the `small` preset's shapes with random weights: latency depends on the shapes,
//! not on what the weights learned (greedy decoding runs to `max_text_len` or an early end
//! token, so the random model's output length is reported alongside).
//!
//! `cargo bench -p textrec-worker --bench serve`. Environment knobs:
//! `TEXTREC_BENCH_REQUESTS` (per run, default 96), `TEXTREC_BENCH_CONCURRENCY` (`1,8,32`),
//! `TEXTREC_BENCH_PRESET` (`small`), `TEXTREC_BENCH_WIDTH` (image width, 320),
//! `TEXTREC_BENCH_MAX_BATCH` (32), `TEXTREC_BENCH_MAX_WAIT_MS` (5), `TEXTREC_BENCH_SEED` (1).

use std::io::Cursor;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use textrec_contract::charset::IAM_CHARSET;
use textrec_contract::config::Preset;
use textrec_contract::PreprocessConfig;
use textrec_model::inference::LoadedModel;
use textrec_model::preprocess::prepare_bytes;
use textrec_worker::serve::proto::textrec::recognizer_client::RecognizerClient;
use textrec_worker::serve::proto::textrec::RecognizeRequest;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One measured run.
struct Row {
    mode: String,
    concurrency: usize,
    requests: usize,
    p50_ms: f64,
    p99_ms: f64,
    throughput: f64,
    mean_batch: Option<f64>,
}

fn summarize(
    mode: &str,
    concurrency: usize,
    mut lat: Vec<Duration>,
    wall: Duration,
    mean_batch: Option<f64>,
) -> Row {
    lat.sort();
    let pct = |p: f64| {
        let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
        lat[i].as_secs_f64() * 1000.0
    };
    Row {
        mode: mode.into(),
        concurrency,
        requests: lat.len(),
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        throughput: lat.len() as f64 / wall.as_secs_f64(),
        mean_batch,
    }
}

fn line_png(w: u32, h: u32) -> Vec<u8> {
    let img = image::GrayImage::from_fn(w, h, |x, y| {
        let stroke = (x / 3) % 4 == 0 && y > h / 4 && y < h * 3 / 4;
        image::Luma([if stroke { 20 } else { 235 }])
    });
    let mut out = Vec::new();
    img.write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

/// (a): `concurrency` threads calling the model directly, one image per call.
fn in_process(model: &Arc<LoadedModel>, img: &[u8], concurrency: usize, requests: usize) -> Row {
    let per = requests.div_ceil(concurrency);
    let start = Instant::now();
    let handles: Vec<_> = (0..concurrency)
        .map(|_| {
            let model = model.clone();
            let img = img.to_vec();
            std::thread::spawn(move || {
                let mut lat = Vec::with_capacity(per);
                for _ in 0..per {
                    let t = Instant::now();
                    let p = prepare_bytes(&img, model.preprocess()).unwrap();
                    model.recognize_prepared(&[p]).unwrap();
                    lat.push(t.elapsed());
                }
                lat
            })
        })
        .collect();
    let lat: Vec<Duration> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    summarize("(a) in-process", concurrency, lat, start.elapsed(), None)
}

/// A `serve` process on free ports.
struct ServerProc {
    child: Child,
    grpc: String,
    http: String,
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_server(model: &std::path::Path, max_batch: u32, max_wait_ms: u64) -> ServerProc {
    let (g, h) = (free_port(), free_port());
    let child = Command::new(env!("CARGO_BIN_EXE_textrec-worker"))
        .args(["serve", "--model", model.to_str().unwrap()])
        .args([
            "--grpc-addr",
            &format!("127.0.0.1:{g}"),
            "--http-addr",
            &format!("127.0.0.1:{h}"),
        ])
        .args([
            "--max-batch",
            &max_batch.to_string(),
            "--max-wait-ms",
            &max_wait_ms.to_string(),
        ])
        .args(["--max-queue", "1024"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("serve starts");
    let server = ServerProc {
        child,
        grpc: format!("http://127.0.0.1:{g}"),
        http: format!("http://127.0.0.1:{h}"),
    };
    let start = Instant::now();
    loop {
        if reqwest_ready(&server.http) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "server did not become ready"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    server
}

fn reqwest_ready(base: &str) -> bool {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        reqwest::get(format!("{base}/readyz"))
            .await
            .map(|r| r.status() == 200)
            .unwrap_or(false)
    })
}

/// Resident set size of a process, MiB.
fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Mean batch size so far, from the server's metrics.
async fn batch_stats(http: &str) -> (f64, f64) {
    let text = reqwest::get(format!("{http}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let get = |name: &str| {
        text.lines()
            .find_map(|l| {
                l.strip_prefix(name)
                    .map(|v| v.trim().parse::<f64>().unwrap_or(0.0))
            })
            .unwrap_or(0.0)
    };
    (
        get("textrec_batch_size_sum "),
        get("textrec_batch_size_count "),
    )
}

/// (b)/(c): `concurrency` gRPC callers on one HTTP/2 connection.
async fn over_grpc(
    mode: &str,
    server: &ServerProc,
    img: &[u8],
    concurrency: usize,
    requests: usize,
) -> Row {
    let channel = tonic::transport::Endpoint::from_shared(server.grpc.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let client = RecognizerClient::new(channel);
    let per = requests.div_ceil(concurrency);
    let (sum0, count0) = batch_stats(&server.http).await;
    let start = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let mut c = client.clone();
            let img = bytes::Bytes::from(img.to_vec());
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(per);
                for _ in 0..per {
                    let t = Instant::now();
                    c.recognize(RecognizeRequest {
                        image: img.clone(),
                        request_id: String::new(),
                    })
                    .await
                    .unwrap();
                    lat.push(t.elapsed());
                }
                lat
            })
        })
        .collect();
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    let wall = start.elapsed();
    let (sum1, count1) = batch_stats(&server.http).await;
    let mean_batch = (count1 > count0).then(|| (sum1 - sum0) / (count1 - count0));
    summarize(mode, concurrency, lat, wall, mean_batch)
}

fn main() {
    let requests: usize = env_or("TEXTREC_BENCH_REQUESTS", 96);
    let concurrencies: Vec<usize> = std::env::var("TEXTREC_BENCH_CONCURRENCY")
        .unwrap_or_else(|_| "1,8,32".into())
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .collect();
    let preset: Preset = serde_json::from_value(serde_json::Value::String(
        std::env::var("TEXTREC_BENCH_PRESET").unwrap_or_else(|_| "small".into()),
    ))
    .expect("TEXTREC_BENCH_PRESET: a preset name");
    let width: u32 = env_or("TEXTREC_BENCH_WIDTH", 320);
    let max_batch: u32 = env_or("TEXTREC_BENCH_MAX_BATCH", 32);
    let max_wait_ms: u64 = env_or("TEXTREC_BENCH_MAX_WAIT_MS", 5);
    let seed: i64 = env_or("TEXTREC_BENCH_SEED", 1);

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("model");
    std::fs::create_dir_all(&dir).unwrap();
    textrec_model::inference::write_random_model_dir(
        &dir,
        &preset.architecture(),
        &PreprocessConfig::default(),
        IAM_CHARSET,
        seed,
    )
    .unwrap();
    let img = line_png(width, 32);
    let model = Arc::new(LoadedModel::load_dir(&dir, tch::Device::Cpu).unwrap());
    let sample = model
        .recognize_prepared(&[prepare_bytes(&img, model.preprocess()).unwrap()])
        .unwrap();
    println!(
        "model: preset {preset:?} (random weights, seed {seed}), {} chars emitted for the test image; image {width}x32 PNG; \
         {} CPU threads for libtorch; {requests} requests per run",
        sample[0].text.chars().count(),
        tch::get_num_threads()
    );
    // Warm up libtorch's allocator and kernels.
    for _ in 0..3 {
        model
            .recognize_prepared(&[prepare_bytes(&img, model.preprocess()).unwrap()])
            .unwrap();
    }

    let mut rows = Vec::new();
    for &c in &concurrencies {
        rows.push(in_process(&model, &img, c, requests));
    }
    drop(model);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut rss = Vec::new();
    for (mode, batch) in [
        ("(b) gRPC, batching off", 1),
        ("(c) gRPC, batching on", max_batch),
    ] {
        let server = start_server(&dir, batch, max_wait_ms);
        let pid = server.child.id();
        rt.block_on(async {
            // Warm-up requests, then idle RSS.
            over_grpc(mode, &server, &img, 1, 3).await;
        });
        let idle = rss_mib(pid);
        let peak = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let sampler = {
            let (peak, done) = (peak.clone(), done.clone());
            std::thread::spawn(move || {
                while !done.load(Ordering::SeqCst) {
                    peak.fetch_max(rss_mib(pid) as u64, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        };
        for &c in &concurrencies {
            rows.push(rt.block_on(over_grpc(mode, &server, &img, c, requests)));
        }
        done.store(true, Ordering::SeqCst);
        sampler.join().unwrap();
        rss.push((mode, idle, peak.load(Ordering::SeqCst) as f64));
    }

    println!();
    println!(
        "{:<24} {:>5} {:>9} {:>9} {:>9} {:>12} {:>10}",
        "mode", "conc", "requests", "p50 ms", "p99 ms", "req/s", "mean batch"
    );
    for r in &rows {
        println!(
            "{:<24} {:>5} {:>9} {:>9.2} {:>9.2} {:>12.1} {:>10}",
            r.mode,
            r.concurrency,
            r.requests,
            r.p50_ms,
            r.p99_ms,
            r.throughput,
            r.mean_batch.map_or("-".to_string(), |b| format!("{b:.1}"))
        );
    }
    println!();
    println!(
        "{:<24} {:>14} {:>16}",
        "server", "idle RSS MiB", "peak RSS MiB"
    );
    for (mode, idle, peak) in rss {
        println!("{mode:<24} {idle:>14.0} {peak:>16.0}");
    }
}
