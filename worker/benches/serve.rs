//! Serving benchmark: latency percentiles and throughput at several concurrencies for
//! (a) the model called in-process (`prepare_bytes` + `recognize_prepared`, one image per call),
//! (b) `textrec-worker serve` over gRPC with batching off (`--max-batch 1`), and
//! (c) the same with dynamic batching on; plus the server's RSS at idle and under load.
//! With `TEXTREC_BENCH_PY_SERVER` it measures another `textrec.v1.Recognizer` server the same
//! way, with batching off and on (the Python reference server, `benches/reference/serve_py.py`):
//! the same client, images, model, thread count and batching limits for every server.
//!
//! The client is tonic: `concurrency` tasks on one HTTP/2 connection, each sending `Recognize`
//! calls back to back (closed loop), cycling through the image set; latency is measured around
//! each call, throughput is requests / wall time of the run. One server runs at a time: started,
//! warmed up, measured at every concurrency, stopped. Warm-up runs every image once, alone, in
//! each server and in (a) before anything is measured. RSS comes from `/proc/PID/status`: idle
//! `VmRSS` after warm-up requests, the highest `VmRSS` sampled every 20 ms under load, and `VmHWM` at the end
//! (the peak of the process's whole life, model loading included). The mean batch is computed
//! from the responses' `batch_size` (forward passes = Σ 1/batch_size), so it needs nothing
//! server-specific.
//!
//! By default the model has the `small` preset's shapes with random weights: latency depends on
//! the shapes, not on what the weights learned (greedy decoding runs to `max_text_len` or an
//! early end token, so the output length is reported alongside).
//!
//! `cargo bench -p textrec-worker --bench serve`. Environment knobs:
//! `TEXTREC_BENCH_REQUESTS` (per run, default 96), `TEXTREC_BENCH_CONCURRENCY` (`1,8,32`),
//! `TEXTREC_BENCH_PRESET` (`small`), `TEXTREC_BENCH_MODEL` (a model folder to serve instead of
//! random weights), `TEXTREC_BENCH_IMAGES` (a folder of `*.png` lines; default: 8 generated
//! stripe images 160-480 px wide), `TEXTREC_BENCH_WIDTH` (widest generated image, 480),
//! `TEXTREC_BENCH_THREADS` and `TEXTREC_BENCH_INFERENCE_THREADS` (libtorch intra-op threads
//! per inference thread and inference threads of every server, and libtorch threads per caller
//! of (a); default: what `serve` picks by itself), `TEXTREC_BENCH_MAX_BATCH` (32), `TEXTREC_BENCH_MAX_BATCH_COLUMNS` (textrec's
//! `--max-batch-columns`; default: the server's), `TEXTREC_BENCH_MAX_WAIT_MS` (5),
//! `TEXTREC_BENCH_DEVICE` (`cpu` or `cuda`: where textrec's servers and (a) run the model),
//! `TEXTREC_BENCH_WORKER` (the worker binary to serve with; default: this build's),
//! `TEXTREC_BENCH_SEED` (1), `TEXTREC_BENCH_PAIRED_ROUNDS` (8; rounds of the
//! interleaved concurrency-1 comparison, 0 to skip it), `TEXTREC_BENCH_PAIRED_BLOCK` (8; images
//! per mode before the comparison switches to the next mode), `TEXTREC_BENCH_MODES` (comma list of `inproc`, `rust-off`,
//! `rust-on`, `py-off`, `py-on`; default all that apply), `TEXTREC_BENCH_PY_SERVER` (a shell
//! command starting the other server; `{model}`, `{port}`, `{threads}`, `{inference_threads}`,
//! `{max_batch}` and `{max_wait_ms}` are substituted), `TEXTREC_BENCH_JSON` (write the results there as JSON).

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
#[derive(serde::Serialize)]
struct Row {
    mode: String,
    concurrency: usize,
    requests: usize,
    p50_ms: f64,
    p99_ms: f64,
    throughput: f64,
    mean_batch: Option<f64>,
    /// Requests that failed (e.g. the server's 30 s deadline), left out of the rest.
    errors: usize,
    /// Where a request's time went, by the server's own timing (gRPC servers that report it).
    split: Option<Split>,
}

/// Medians, in ms, of one run's per-request time split: what the client saw, and the stages the
/// server reports in `Timing`. `client - total` is the transport (HTTP/2, both sides' runtimes);
/// `total - preprocess - queue - inference` is the server's own hand-offs.
#[derive(serde::Serialize, Clone, Copy)]
struct Split {
    client_ms: f64,
    total_ms: f64,
    preprocess_ms: f64,
    queue_ms: f64,
    inference_ms: f64,
    transport_ms: f64,
    handoff_ms: f64,
}

impl Split {
    fn median(samples: &[[f64; 5]]) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        let med = |f: &dyn Fn(&[f64; 5]) -> f64| median(&samples.iter().map(f).collect::<Vec<_>>());
        Some(Self {
            client_ms: med(&|s| s[0]),
            total_ms: med(&|s| s[1]),
            preprocess_ms: med(&|s| s[2]),
            queue_ms: med(&|s| s[3]),
            inference_ms: med(&|s| s[4]),
            transport_ms: med(&|s| s[0] - s[1]),
            handoff_ms: med(&|s| s[1] - s[2] - s[3] - s[4]),
        })
    }
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
        errors: 0,
        split: None,
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

/// The image set: every `*.png` of `TEXTREC_BENCH_IMAGES` (sorted by name), or 8 generated
/// stripe images from 160 px to `TEXTREC_BENCH_WIDTH` wide.
fn image_set() -> (Vec<Arc<[u8]>>, String) {
    if let Ok(dir) = std::env::var("TEXTREC_BENCH_IMAGES") {
        let mut paths: Vec<_> = std::fs::read_dir(&dir)
            .expect("TEXTREC_BENCH_IMAGES: a folder")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "png"))
            .collect();
        paths.sort();
        assert!(!paths.is_empty(), "no *.png in {dir}");
        let images = paths
            .iter()
            .map(|p| Arc::from(std::fs::read(p).unwrap()))
            .collect::<Vec<_>>();
        let desc = format!("{} PNG lines from {dir}", images.len());
        return (images, desc);
    }
    let widest: u32 = env_or("TEXTREC_BENCH_WIDTH", 480).max(160);
    let images = (0..8)
        .map(|i| Arc::from(line_png(160 + (widest - 160) * i / 7, 32)))
        .collect();
    (images, format!("8 generated stripe PNGs, 160-{widest}x32"))
}

/// The image request `k` of caller `caller` sends (`per` requests per caller).
fn pick(images: &[Arc<[u8]>], caller: usize, per: usize, k: usize) -> &Arc<[u8]> {
    &images[(caller * per + k) % images.len()]
}

/// (a): `concurrency` threads calling the model directly, one image per call.
fn in_process(
    model: &Arc<LoadedModel>,
    images: &[Arc<[u8]>],
    concurrency: usize,
    requests: usize,
) -> Row {
    let per = requests.div_ceil(concurrency);
    let start = Instant::now();
    let handles: Vec<_> = (0..concurrency)
        .map(|caller| {
            let model = model.clone();
            let images = images.to_vec();
            std::thread::spawn(move || {
                let mut lat = Vec::with_capacity(per);
                for k in 0..per {
                    let img = pick(&images, caller, per, k);
                    let t = Instant::now();
                    let p = prepare_bytes(img, model.preprocess()).unwrap();
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

/// (a) on `images` one after another, on this thread; latencies in ms.
fn sequential_in_process(model: &LoadedModel, images: &[Arc<[u8]>]) -> Vec<f64> {
    images
        .iter()
        .map(|img| {
            let t = Instant::now();
            let p = prepare_bytes(img, model.preprocess()).unwrap();
            model.recognize_prepared(&[p]).unwrap();
            t.elapsed().as_secs_f64() * 1000.0
        })
        .collect()
}

/// A client of `server`, on one HTTP/2 connection.
async fn connect(server: &ServerProc) -> RecognizerClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(server.grpc.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    RecognizerClient::new(channel)
}

/// `images` through `client` one after another: latencies in ms, and the server's own split.
async fn sequential_grpc(
    mut client: RecognizerClient<tonic::transport::Channel>,
    images: &[Arc<[u8]>],
) -> (Vec<f64>, Vec<[f64; 5]>) {
    let mut lat = Vec::with_capacity(images.len());
    let mut split = Vec::with_capacity(images.len());
    for img in images {
        let image = bytes::Bytes::copy_from_slice(img);
        let t = Instant::now();
        let r = client
            .recognize(RecognizeRequest {
                image,
                request_id: String::new(),
            })
            .await
            .expect("a concurrency-1 request fails")
            .into_inner();
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        lat.push(ms);
        if let Some(s) = r.timing {
            split.push([ms, s.total_ms, s.preprocess_ms, s.queue_ms, s.inference_ms]);
        }
    }
    (lat, split)
}

fn median(v: &[f64]) -> f64 {
    quartiles(v).1
}

/// 25th, 50th and 75th percentiles (nearest rank).
fn quartiles(v: &[f64]) -> (f64, f64, f64) {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    (at(0.25), at(0.5), at(0.75))
}

/// A server process on a free port.
struct ServerProc {
    mode: &'static str,
    child: Child,
    grpc: String,
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

/// The worker binary the servers run: this build's, or `TEXTREC_BENCH_WORKER` (a copy of the
/// bench run on another machine, such as a GPU host, next to its own worker).
fn worker_binary() -> String {
    std::env::var("TEXTREC_BENCH_WORKER")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_textrec-worker").to_string())
}

/// `TEXTREC_BENCH_DEVICE`: where textrec's servers and (a) run the model (`cpu`, `cuda`).
fn bench_device_name() -> String {
    std::env::var("TEXTREC_BENCH_DEVICE").unwrap_or_else(|_| "cpu".into())
}

fn bench_device() -> tch::Device {
    match bench_device_name().as_str() {
        "cpu" => tch::Device::Cpu,
        "cuda" => {
            assert!(
                textrec_worker::device::cuda_available(),
                "TEXTREC_BENCH_DEVICE=cuda: no CUDA device"
            );
            tch::Device::Cuda(0)
        }
        other => panic!("TEXTREC_BENCH_DEVICE: `cpu` or `cuda`, not {other:?}"),
    }
}

/// Limits shared by every server.
struct Limits {
    /// libtorch intra-op threads per inference thread (and per caller of (a)).
    threads: usize,
    /// Inference threads of each server.
    inference_threads: usize,
    max_batch: u32,
    max_wait_ms: u64,
}

fn start_rust(mode: &'static str, model: &std::path::Path, batch: u32, l: &Limits) -> ServerProc {
    let (g, h) = (free_port(), free_port());
    let child = Command::new(worker_binary())
        .args(["serve", "--model", model.to_str().unwrap()])
        .args(["--device", &bench_device_name()])
        .args([
            "--grpc-addr",
            &format!("127.0.0.1:{g}"),
            "--http-addr",
            &format!("127.0.0.1:{h}"),
        ])
        .args([
            "--max-batch",
            &batch.to_string(),
            "--max-wait-ms",
            &l.max_wait_ms.to_string(),
            "--torch-threads",
            &l.threads.to_string(),
            "--inference-threads",
            &l.inference_threads.to_string(),
        ])
        .args(["--max-queue", "1024"])
        .args(
            std::env::var("TEXTREC_BENCH_MAX_BATCH_COLUMNS")
                .map(|c| vec!["--max-batch-columns".to_string(), c])
                .unwrap_or_default(),
        )
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("serve starts");
    ServerProc {
        mode,
        child,
        grpc: format!("http://127.0.0.1:{g}"),
    }
}

/// Another server from a command template (run by `sh -c exec …`, so the PID is the server's).
fn start_command(
    mode: &'static str,
    template: &str,
    model: &std::path::Path,
    batch: u32,
    l: &Limits,
) -> ServerProc {
    let port = free_port();
    let cmd = template
        .replace("{model}", model.to_str().unwrap())
        .replace("{port}", &port.to_string())
        .replace("{threads}", &l.threads.to_string())
        .replace("{inference_threads}", &l.inference_threads.to_string())
        .replace("{max_batch}", &batch.to_string())
        .replace("{max_wait_ms}", &l.max_wait_ms.to_string());
    let child = Command::new("sh")
        .args(["-c", &format!("exec {cmd}")])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("server command starts");
    ServerProc {
        mode,
        child,
        grpc: format!("http://127.0.0.1:{port}"),
    }
}

/// Wait until `Recognize` answers, then send a few warm-up requests.
async fn wait_ready(server: &mut ServerProc, images: &[Arc<[u8]>]) {
    let start = Instant::now();
    loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            panic!("{}: server exited during start: {status}", server.mode);
        }
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "{}: server did not become ready",
            server.mode
        );
        if let Ok(channel) = tonic::transport::Endpoint::from_shared(server.grpc.clone())
            .unwrap()
            .connect()
            .await
        {
            let mut c = RecognizerClient::new(channel);
            let mut ok = true;
            for img in images.iter().take(3) {
                ok &= c
                    .recognize(RecognizeRequest {
                        image: bytes::Bytes::copy_from_slice(img),
                        request_id: String::new(),
                    })
                    .await
                    .is_ok();
            }
            if ok {
                // Every image once, alone: libtorch prepares kernels per input shape, and a
                // server in service has long since seen every width; (a) is warmed the same way.
                for img in images.iter().skip(3) {
                    c.recognize(RecognizeRequest {
                        image: bytes::Bytes::copy_from_slice(img),
                        request_id: String::new(),
                    })
                    .await
                    .expect("warm-up request");
                }
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A field of `/proc/PID/status` in MiB.
fn proc_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// (b)-(e): `concurrency` gRPC callers on one HTTP/2 connection. Also returns the text of the
/// first image (to check that the servers agree).
async fn over_grpc(
    server: &ServerProc,
    images: &[Arc<[u8]>],
    concurrency: usize,
    requests: usize,
) -> (Row, Option<String>) {
    let client = connect(server).await;
    let per = requests.div_ceil(concurrency);
    let start = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|caller| {
            let mut c = client.clone();
            let images = images.to_vec();
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(per);
                let mut batches = 0.0;
                let mut first = None;
                let mut errors = 0usize;
                let mut split = Vec::with_capacity(per);
                for k in 0..per {
                    let img = bytes::Bytes::copy_from_slice(pick(&images, caller, per, k));
                    let t = Instant::now();
                    let r = match c
                        .recognize(RecognizeRequest {
                            image: img,
                            request_id: String::new(),
                        })
                        .await
                    {
                        Ok(r) => r.into_inner(),
                        Err(e) => {
                            // Counted, and left out of the latencies and the throughput.
                            eprintln!("request failed after {:?}: {e}", t.elapsed());
                            errors += 1;
                            continue;
                        }
                    };
                    let elapsed = t.elapsed();
                    lat.push(elapsed);
                    if let Some(s) = &r.timing {
                        let client = elapsed.as_secs_f64() * 1000.0;
                        split.push([
                            client,
                            s.total_ms,
                            s.preprocess_ms,
                            s.queue_ms,
                            s.inference_ms,
                        ]);
                    }
                    batches += 1.0 / f64::from(r.batch_size.max(1));
                    if (caller * per + k).is_multiple_of(images.len()) {
                        first = Some(r.text);
                    }
                }
                (lat, batches, first, errors, split)
            })
        })
        .collect();
    let (mut lat, mut batches, mut first, mut errors) = (Vec::new(), 0.0, None, 0);
    let mut split = Vec::new();
    for t in tasks {
        let (l, b, f, e, s) = t.await.unwrap();
        lat.extend(l);
        split.extend(s);
        batches += b;
        first = first.or(f);
        errors += e;
    }
    let wall = start.elapsed();
    assert!(!lat.is_empty(), "{}: every request failed", server.mode);
    let mean_batch = lat.len() as f64 / batches;
    let mut row = summarize(server.mode, concurrency, lat, wall, Some(mean_batch));
    row.errors = errors;
    row.split = Split::median(&split);
    (row, first)
}

/// RSS of one server.
#[derive(serde::Serialize)]
struct Rss {
    mode: String,
    idle_mib: f64,
    peak_under_load_mib: f64,
    hwm_mib: f64,
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
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    // By default what `serve` picks by itself on this machine.
    let auto = textrec_worker::serve::ThreadPlan::resolve(0, 0, false, cpus);
    let limits = Limits {
        threads: env_or("TEXTREC_BENCH_THREADS", auto.torch).max(1),
        inference_threads: env_or("TEXTREC_BENCH_INFERENCE_THREADS", auto.inference).max(1),
        max_batch: env_or("TEXTREC_BENCH_MAX_BATCH", 32),
        max_wait_ms: env_or("TEXTREC_BENCH_MAX_WAIT_MS", 5),
    };
    let seed: i64 = env_or("TEXTREC_BENCH_SEED", 1);
    let py_server = std::env::var("TEXTREC_BENCH_PY_SERVER")
        .ok()
        .filter(|s| !s.trim().is_empty());
    let modes: Vec<String> = std::env::var("TEXTREC_BENCH_MODES")
        .unwrap_or_else(|_| "inproc,rust-off,rust-on,py-off,py-on".into())
        .split(',')
        .map(|m| m.trim().to_string())
        .filter(|m| py_server.is_some() || !m.starts_with("py-"))
        .collect();
    let has = |m: &str| modes.iter().any(|x| x == m);

    let tmp = tempfile::tempdir().unwrap();
    let (dir, model_desc) = match std::env::var("TEXTREC_BENCH_MODEL") {
        Ok(dir) => (std::path::PathBuf::from(&dir), format!("folder {dir}")),
        Err(_) => {
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
            (
                dir,
                format!("preset {preset:?} (random weights, seed {seed})"),
            )
        }
    };
    let (images, images_desc) = image_set();
    tch::set_num_threads(limits.threads as i32);
    let model = Arc::new(LoadedModel::load_dir(&dir, bench_device()).unwrap());
    let prepared: Vec<_> = images
        .iter()
        .map(|i| prepare_bytes(i, model.preprocess()).unwrap())
        .collect();
    let sample = model.recognize_prepared(&prepared).unwrap();
    let chars: Vec<usize> = sample.iter().map(|s| s.text.chars().count()).collect();
    println!(
        "model: {model_desc}; images: {images_desc}; characters emitted per image: {chars:?}; \
         {} inference threads × {} libtorch threads for every server (and {} libtorch threads per caller of (a)); \
         max batch {}, max wait {} ms; {requests} requests per run; {cpus} CPUs; device {}",
        limits.inference_threads, limits.threads, limits.threads, limits.max_batch, limits.max_wait_ms,
        bench_device_name()
    );

    let mut rows = Vec::new();
    if has("inproc") {
        for p in &prepared {
            model.recognize_prepared(std::slice::from_ref(p)).unwrap();
        }
        for &c in &concurrencies {
            rows.push(in_process(&model, &images, c, requests));
        }
    }
    drop(model);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // One server alive at a time: started, warmed up, measured at every concurrency, stopped.
    // (Keeping all four alive and interleaving them made textrec's server several times slower
    // than alone on the shared 2-core machine; see BENCHMARKS.md.)
    let mut texts: Vec<(String, String)> = Vec::new();
    let mut rss: Vec<Rss> = Vec::new();
    for (key, mode, batch) in [
        ("rust-off", "textrec gRPC, batching off", 1),
        ("rust-on", "textrec gRPC, batching on", limits.max_batch),
        ("py-off", "Python gRPC, batching off", 1),
        ("py-on", "Python gRPC, batching on", limits.max_batch),
    ] {
        if !has(key) {
            continue;
        }
        let mut s = match &py_server {
            Some(t) if key.starts_with("py-") => start_command(mode, t, &dir, batch, &limits),
            _ => start_rust(mode, &dir, batch, &limits),
        };
        rt.block_on(wait_ready(&mut s, &images));
        let pid = s.child.id();
        let idle_mib = proc_mib(pid, "VmRSS:");
        let peak = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let sampler = {
            let (peak, done) = (peak.clone(), done.clone());
            std::thread::spawn(move || {
                while !done.load(Ordering::SeqCst) {
                    peak.fetch_max(proc_mib(pid, "VmRSS:") as u64, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        };
        for &c in &concurrencies {
            let (row, first) = rt.block_on(over_grpc(&s, &images, c, requests));
            println!(
                "  {:<28} c={c:<3} {:>8.2} req/s  p50 {:>8.1} ms  p99 {:>8.1} ms  {} errors",
                row.mode, row.throughput, row.p50_ms, row.p99_ms, row.errors
            );
            rows.push(row);
            if let Some(t) = first {
                texts.push((s.mode.to_string(), t));
            }
        }
        done.store(true, Ordering::SeqCst);
        sampler.join().unwrap();
        rss.push(Rss {
            mode: mode.to_string(),
            idle_mib,
            peak_under_load_mib: peak.load(Ordering::SeqCst) as f64,
            hwm_mib: proc_mib(pid, "VmHWM:"),
        });
    }
    let agree = texts.windows(2).all(|w| w[0].1 == w[1].1);

    // Concurrency 1 once more, interleaved: on a shared machine the speed drifts by tens of
    // percent within a minute, more than the server's overhead being measured. The image set is
    // cut into blocks of a few images; each block runs through (a) and each server in turn (the
    // order rotating from block to block), all alive at once, so that every comparison is between
    // requests a fraction of a second apart. The headline is the median over blocks of a server's
    // mean latency over (a)'s on the same images.
    let rounds: usize = env_or("TEXTREC_BENCH_PAIRED_ROUNDS", 8);
    let block: usize = env_or("TEXTREC_BENCH_PAIRED_BLOCK", 8).max(1);
    let mut paired = Vec::new();
    let mut paired_top = None;
    let mut paired_report = Vec::new();
    if rounds > 0 && has("inproc") && has("rust-off") {
        let model = Arc::new(LoadedModel::load_dir(&dir, bench_device()).unwrap());
        let mut servers: Vec<ServerProc> =
            vec![start_rust("textrec gRPC, batching off", &dir, 1, &limits)];
        if has("rust-on") {
            servers.push(start_rust(
                "textrec gRPC, batching on",
                &dir,
                limits.max_batch,
                &limits,
            ));
        }
        for s in &mut servers {
            rt.block_on(wait_ready(s, &images));
        }
        for p in &prepared {
            model.recognize_prepared(std::slice::from_ref(p)).unwrap();
        }
        let clients: Vec<_> = servers.iter().map(|s| rt.block_on(connect(s))).collect();
        let modes = 1 + servers.len();
        // Per mode: every latency (ms), and every block's mean over (a)'s.
        let mut lat: Vec<Vec<f64>> = vec![Vec::new(); modes];
        let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); modes];
        let mut splits: Vec<Vec<[f64; 5]>> = vec![Vec::new(); modes];
        let mut blocks = 0usize;
        for _ in 0..rounds {
            for chunk in images.chunks(block) {
                let mut means = vec![0.0; modes];
                for turn in 0..modes {
                    let m = (blocks + turn) % modes;
                    let (l, sp) = if m == 0 {
                        (sequential_in_process(&model, chunk), Vec::new())
                    } else {
                        rt.block_on(sequential_grpc(clients[m - 1].clone(), chunk))
                    };
                    means[m] = l.iter().sum::<f64>() / l.len() as f64;
                    lat[m].extend(l);
                    splits[m].extend(sp);
                }
                for m in 0..modes {
                    ratios[m].push(means[m] / means[0]);
                }
                blocks += 1;
            }
        }
        let mode_names: Vec<String> = std::iter::once("(a) in-process".to_string())
            .chain(servers.iter().map(|s| s.mode.to_string()))
            .collect();
        let base = median(&lat[0]);
        paired_report.push(format!(
            "concurrency 1, interleaved: {rounds} rounds × {} images, in {blocks} blocks of {block} per mode",
            images.len()
        ));
        paired_report.push(format!(
            "{:<28} {:>8} {:>10} {:>16} {:>16}",
            "mode", "p50 ms", "p50 vs (a)", "block vs (a)", "blocks p25-p75"
        ));
        for m in 0..modes {
            let p50 = median(&lat[m]);
            let (q1, q2, q3) = quartiles(&ratios[m]);
            paired_report.push(format!(
                "{:<28} {p50:>8.2} {:>9.1}% {:>15.1}% {:>7.1}%..{:.1}%",
                mode_names[m],
                (p50 / base - 1.0) * 100.0,
                (q2 - 1.0) * 100.0,
                (q1 - 1.0) * 100.0,
                (q3 - 1.0) * 100.0,
            ));
            paired.push(serde_json::json!({
                "mode": mode_names[m], "p50_ms": p50, "p50_vs_inproc": p50 / base,
                "median_block_vs_inproc": q2, "block_ratio_p25": q1, "block_ratio_p75": q3,
                "requests": lat[m].len(), "blocks": blocks,
            }));
        }
        // The servers' own timing says where the difference to (a) goes.
        paired_report.push(format!(
            "{:<28} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}   (medians, ms)",
            "where the time goes",
            "client",
            "server",
            "prep",
            "queue",
            "model",
            "transport",
            "handoff"
        ));
        for m in 1..modes {
            let Some(sp) = Split::median(&splits[m]) else {
                continue;
            };
            paired_report.push(format!(
                "{:<28} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
                mode_names[m],
                sp.client_ms,
                sp.total_ms,
                sp.preprocess_ms,
                sp.queue_ms,
                sp.inference_ms,
                sp.transport_ms,
                sp.handoff_ms,
            ));
        }
        // The highest concurrency, batching on against off, interleaved the same way: each round
        // runs both servers back to back (alternating which goes first), and the median of the
        // rounds' throughput ratios is the comparison.
        let top = concurrencies.iter().copied().max().unwrap_or(1);
        if servers.len() == 2 && top > 1 {
            let mut ratio = Vec::new();
            let mut throughput = [Vec::new(), Vec::new()];
            for round in 0..rounds {
                let mut t = [0.0; 2];
                for turn in 0..2 {
                    let k = (round + turn) % 2;
                    t[k] = rt
                        .block_on(over_grpc(&servers[k], &images, top, requests))
                        .0
                        .throughput;
                    throughput[k].push(t[k]);
                }
                ratio.push(t[1] / t[0]);
            }
            let (q1, q2, q3) = quartiles(&ratio);
            paired_report.push(format!(
                "concurrency {top}, interleaved: {rounds} rounds of {requests} requests per server: \
                 batching off {:.1} req/s, on {:.1} req/s (medians); on ÷ off: median {q2:.2}x \
                 (quartiles {q1:.2}x..{q3:.2}x)",
                median(&throughput[0]),
                median(&throughput[1]),
            ));
            paired_top = Some(serde_json::json!({
                "concurrency": top, "rounds": rounds, "requests": requests,
                "off_req_s": throughput[0], "on_req_s": throughput[1],
                "median_on_over_off": q2, "on_over_off_p25": q1, "on_over_off_p75": q3,
            }));
        }
    }

    println!();
    println!(
        "{:<28} {:>5} {:>9} {:>9} {:>9} {:>12} {:>10} {:>7}",
        "mode", "conc", "requests", "p50 ms", "p99 ms", "req/s", "mean batch", "errors"
    );
    for r in &rows {
        println!(
            "{:<28} {:>5} {:>9} {:>9.2} {:>9.2} {:>12.2} {:>10} {:>7}",
            r.mode,
            r.concurrency,
            r.requests,
            r.p50_ms,
            r.p99_ms,
            r.throughput,
            r.mean_batch.map_or("-".to_string(), |b| format!("{b:.1}")),
            r.errors
        );
    }
    println!();
    println!(
        "{:<28} {:>14} {:>22} {:>10}",
        "server", "idle RSS MiB", "peak RSS (load) MiB", "VmHWM MiB"
    );
    for r in &rss {
        println!(
            "{:<28} {:>14.0} {:>22.0} {:>10.0}",
            r.mode, r.idle_mib, r.peak_under_load_mib, r.hwm_mib
        );
    }
    if !paired_report.is_empty() {
        println!();
        for line in &paired_report {
            println!("{line}");
        }
    }
    println!(
        "text of the first image: {} across servers",
        if agree { "identical" } else { "DIFFERENT" }
    );
    if !agree {
        for (m, t) in &texts {
            println!("  {m}: {t:?}");
        }
    }
    if let Ok(path) = std::env::var("TEXTREC_BENCH_JSON") {
        let out = serde_json::json!({
            "model": model_desc,
            "images": images_desc,
            "threads": limits.threads,
            "max_batch": limits.max_batch,
            "max_wait_ms": limits.max_wait_ms,
            "requests": requests,
            "cpus": cpus,
            "rows": rows,
            "rss": rss,
            "texts_agree": agree,
            "paired_c1": paired,
            "paired_top": paired_top,
            "inference_threads": limits.inference_threads,
        });
        std::fs::write(path, serde_json::to_string_pretty(&out).unwrap()).unwrap();
    }
}
