//! Load generator of the serving comparison with peer model servers (`benches/peers/`): drives
//! one server that is already running, and measures it together with its process tree.
//!
//! Protocols (`TEXTREC_PEERS_PROTOCOL`):
//! - `oip`: the Open Inference Protocol v2 over gRPC, `inference.GRPCInferenceService/ModelInfer`,
//!   one BYTES element per request (the encoded image) in, a BYTES `TEXT` output back. textrec
//!   (`textrec-worker serve`) and KServe's `ModelServer` both speak it, so one client drives both.
//! - `torchserve`: TorchServe's gRPC inference API,
//!   `org.pytorch.serve.grpc.inference.InferenceAPIsService/Predictions`, the image as the `data`
//!   input, the text as the prediction bytes.
//!
//! The run, for one server:
//! 1. wait until a request answers (up to `TEXTREC_PEERS_READY_S`, 600 s), then warm up: every
//!    image once, one after another, for `TEXTREC_PEERS_WARMUP_ROUNDS` (2) rounds; the texts of
//!    the last round are the server's answers for the correctness check;
//! 2. idle memory: the sum of `VmRSS` (and of `Pss`, which counts pages shared between forked
//!    workers once) over the server's process tree (`TEXTREC_PEERS_PID` and its descendants);
//! 3. closed loop at each concurrency of `TEXTREC_PEERS_CLOSED` (`1,8,32,128`): that many callers
//!    sending requests back to back for `TEXTREC_PEERS_SECONDS` (10) seconds;
//! 4. open loop at each rate of `TEXTREC_PEERS_RATES` (requests/s, ascending): requests sent at
//!    fixed intervals for `TEXTREC_PEERS_SECONDS` seconds, whatever the answers; latency counts
//!    from the scheduled send time, so a server that falls behind is charged for the queue it
//!    builds. The ladder stops after the first rate the server cannot sustain (served < 95% of
//!    offered, or more than 1% errors).
//!
//! Each step reports p50/p99 latency of successful requests, throughput (successes / wall time;
//! in the open loop, until the last answer), errors (failed, timed out after
//! `TEXTREC_PEERS_TIMEOUT_S` (30 s), or not sent because `TEXTREC_PEERS_MAX_IN_FLIGHT` (4096)
//! were outstanding), answers whose text differs from the warm-up's for the same image, the
//! peak `VmRSS` of the process tree (sampled every 100 ms) and the tree's CPU time (user +
//! system from `/proc/PID/stat`) per 1000 successful requests. Requests cycle through the image set
//! (`TEXTREC_BENCH_IMAGES`, every `*.png` sorted by name), spread over one HTTP/2 connection
//! per 32 callers (4 in the open loop).
//!
//! Other knobs: `TEXTREC_PEERS_ADDR` (`http://127.0.0.1:PORT`), `TEXTREC_PEERS_MODEL` (the model
//! name, `textrec`), `TEXTREC_PEERS_NAME` (the server's label in the output), `TEXTREC_BENCH_JSON`
//! (where to write the result). Run by `benches/peers/bench.py`; the binary is built with
//! `cargo bench -p textrec-worker --bench peers --no-run`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use textrec_worker::serve::proto::inference as oip;
use tonic::transport::{Channel, Endpoint};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn env_list<T: std::str::FromStr>(name: &str, default: &str) -> Vec<T> {
    std::env::var(name)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect()
}

/// TorchServe's gRPC messages (`frontend/server/src/main/resources/proto/inference.proto` of
/// pytorch/serve), declared by hand: only `Predictions` is called.
mod torchserve {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PredictionsRequest {
        #[prost(string, tag = "1")]
        pub model_name: String,
        #[prost(string, tag = "2")]
        pub model_version: String,
        #[prost(map = "string, bytes", tag = "3")]
        pub input: std::collections::HashMap<String, Vec<u8>>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PredictionResponse {
        #[prost(bytes = "vec", tag = "1")]
        pub prediction: Vec<u8>,
    }

    pub const PREDICTIONS: &str =
        "/org.pytorch.serve.grpc.inference.InferenceAPIsService/Predictions";
}

#[derive(Clone, Copy, PartialEq)]
enum Protocol {
    Oip,
    TorchServe,
}

/// One client connection, speaking the server's protocol.
#[derive(Clone)]
struct Client {
    protocol: Protocol,
    model: String,
    channel: Channel,
    timeout: Duration,
}

impl Client {
    async fn connect(
        protocol: Protocol,
        addr: &str,
        model: &str,
        timeout: Duration,
    ) -> Result<Self, String> {
        let channel = Endpoint::from_shared(addr.to_string())
            .map_err(|e| e.to_string())?
            .connect()
            .await
            .map_err(|e| e.to_string())?;
        Ok(Self {
            protocol,
            model: model.into(),
            channel,
            timeout,
        })
    }

    /// Recognize one encoded image: its text.
    async fn recognize(&self, image: &[u8]) -> Result<String, String> {
        match self.protocol {
            Protocol::Oip => {
                let mut request = tonic::Request::new(oip::ModelInferRequest {
                    model_name: self.model.clone(),
                    inputs: vec![oip::model_infer_request::InferInputTensor {
                        name: "IMAGE".into(),
                        datatype: "BYTES".into(),
                        shape: vec![1],
                        contents: Some(oip::InferTensorContents {
                            bytes_contents: vec![image.to_vec()],
                            ..Default::default()
                        }),
                        ..Default::default()
                    }],
                    ..Default::default()
                });
                request.set_timeout(self.timeout);
                let mut client =
                    oip::grpc_inference_service_client::GrpcInferenceServiceClient::new(
                        self.channel.clone(),
                    )
                    .max_decoding_message_size(64 << 20);
                let r = client
                    .model_infer(request)
                    .await
                    .map_err(|s| s.to_string())?
                    .into_inner();
                oip_text(&r)
            }
            Protocol::TorchServe => {
                let mut request = tonic::Request::new(torchserve::PredictionsRequest {
                    model_name: self.model.clone(),
                    model_version: String::new(),
                    input: HashMap::from([("data".to_string(), image.to_vec())]),
                });
                request.set_timeout(self.timeout);
                let mut grpc = tonic::client::Grpc::new(self.channel.clone());
                grpc.ready().await.map_err(|e| e.to_string())?;
                let codec = tonic_prost::ProstCodec::<
                    torchserve::PredictionsRequest,
                    torchserve::PredictionResponse,
                >::default();
                let path =
                    tonic::codegen::http::uri::PathAndQuery::from_static(torchserve::PREDICTIONS);
                let r = grpc
                    .unary(request, path, codec)
                    .await
                    .map_err(|s| s.to_string())?
                    .into_inner();
                String::from_utf8(r.prediction).map_err(|e| e.to_string())
            }
        }
    }
}

/// The `TEXT` output of a ModelInfer response: from `contents`, or from the raw outputs (each
/// element a 4-byte little-endian length, then the bytes).
fn oip_text(r: &oip::ModelInferResponse) -> Result<String, String> {
    let (i, out) = r
        .outputs
        .iter()
        .enumerate()
        .find(|(_, o)| o.name.eq_ignore_ascii_case("text"))
        .or_else(|| {
            r.outputs
                .iter()
                .enumerate()
                .find(|(_, o)| o.datatype == "BYTES")
        })
        .ok_or("no BYTES output in the response")?;
    let bytes = if let Some(c) = out
        .contents
        .as_ref()
        .filter(|c| !c.bytes_contents.is_empty())
    {
        c.bytes_contents[0].clone()
    } else {
        let raw = r
            .raw_output_contents
            .get(i)
            .ok_or("the TEXT output has no contents")?;
        if raw.len() < 4 {
            return Err("raw TEXT output shorter than its length prefix".into());
        }
        let n = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]) as usize;
        raw.get(4..4 + n)
            .ok_or("raw TEXT output truncated")?
            .to_vec()
    };
    String::from_utf8(bytes).map_err(|e| e.to_string())
}

// ---- the server's process tree, from /proc ----

/// `pid` and all its descendants.
fn process_tree(root: u32) -> Vec<u32> {
    let mut parent: Vec<(u32, u32)> = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Some(ppid) = stat_fields(pid).and_then(|f| f.get(1).and_then(|v| v.parse().ok()))
            {
                parent.push((pid, ppid));
            }
        }
    }
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let p = tree[i];
        tree.extend(parent.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    tree
}

/// The fields of `/proc/PID/stat` after the command name: state, ppid, ...
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    Some(rest.split_whitespace().map(String::from).collect())
}

/// CPU seconds (user + system, its own and its reaped children's) of each process of `tree`.
fn cpu_seconds(tree: &[u32]) -> HashMap<u32, f64> {
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    tree.iter()
        .filter_map(|&p| stat_fields(p).map(|f| (p, f)))
        .map(|(p, f)| {
            // utime, stime, cutime, cstime: fields 14-17 of stat, 12-15 after the name.
            let v = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
            (p, (v(11) + v(12) + v(13) + v(14)) / ticks)
        })
        .collect()
}

/// CPU seconds the tree spent between two readings: per process alive at the end, from the
/// first reading (or its start). A process that exited is counted in its parent's children's
/// time once reaped.
fn cpu_delta(before: &HashMap<u32, f64>, after: &HashMap<u32, f64>) -> f64 {
    after
        .iter()
        .map(|(p, t)| (t - before.get(p).copied().unwrap_or(0.0)).max(0.0))
        .sum()
}

/// Sum over `tree` of a `kB` field of `/proc/PID/{file}`, in MiB.
fn sum_kb(tree: &[u32], file: &str, field: &str) -> f64 {
    tree.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/{file}")).ok())
        .filter_map(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .sum::<f64>()
        / 1024.0
}

/// Samples the tree's summed VmRSS every 100 ms (the tree itself every second) until dropped.
struct RssSampler {
    peak: Arc<AtomicU64>,
    done: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssSampler {
    fn start(root: u32) -> Self {
        let peak = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let thread = {
            let (peak, done) = (peak.clone(), done.clone());
            std::thread::spawn(move || {
                let mut tree = process_tree(root);
                let mut refreshed = Instant::now();
                while !done.load(Ordering::SeqCst) {
                    if refreshed.elapsed() > Duration::from_secs(1) {
                        tree = process_tree(root);
                        refreshed = Instant::now();
                    }
                    peak.fetch_max(sum_kb(&tree, "status", "VmRSS:") as u64, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        };
        Self {
            peak,
            done,
            thread: Some(thread),
        }
    }

    fn stop(mut self) -> f64 {
        self.done.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap();
        self.peak.load(Ordering::SeqCst) as f64
    }
}

// ---- load ----

/// What one step's requests gave.
#[derive(Default)]
struct Outcome {
    /// Latency of each successful request, ms.
    latencies: Vec<f64>,
    errors: usize,
    /// Successful answers whose text differs from the warm-up's answer for the same image.
    changed: usize,
    first_error: Option<String>,
}

impl Outcome {
    fn record(&mut self, latency: Duration, result: Result<String, String>, expected: &str) {
        match result {
            Ok(text) => {
                self.latencies.push(latency.as_secs_f64() * 1000.0);
                self.changed += usize::from(text != expected);
            }
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert(e);
            }
        }
    }

    fn merge(&mut self, o: Outcome) {
        self.latencies.extend(o.latencies);
        self.errors += o.errors;
        self.changed += o.changed;
        if self.first_error.is_none() {
            self.first_error = o.first_error;
        }
    }
}

#[derive(serde::Serialize)]
struct Step {
    /// `closed` (concurrency callers back to back) or `open` (fixed arrival rate).
    mode: &'static str,
    concurrency: Option<usize>,
    offered_rps: Option<f64>,
    requests: usize,
    errors: usize,
    text_changed: usize,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    throughput_rps: f64,
    wall_s: f64,
    cpu_s_per_1000: Option<f64>,
    peak_rss_mib: f64,
    saturated: bool,
    first_error: Option<String>,
}

fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    Some(sorted[i])
}

struct Bench {
    clients: Vec<Client>,
    images: Arc<Vec<Vec<u8>>>,
    expected: Arc<Vec<String>>,
    pid: u32,
    seconds: f64,
    max_in_flight: usize,
}

impl Bench {
    /// Run `load` while measuring the process tree; summarize it as one step.
    async fn step<F, Fut>(
        &self,
        mode: &'static str,
        concurrency: Option<usize>,
        rate: Option<f64>,
        load: F,
    ) -> Step
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = (Outcome, Duration)>,
    {
        let tree = process_tree(self.pid);
        let sampler = RssSampler::start(self.pid);
        let cpu0 = cpu_seconds(&tree);
        let (mut out, wall) = load().await;
        // Processes that started during the step count too (from their start).
        let cpu = cpu_delta(&cpu0, &cpu_seconds(&process_tree(self.pid)));
        let peak = sampler.stop();
        out.latencies.sort_by(f64::total_cmp);
        let ok = out.latencies.len();
        let throughput = ok as f64 / wall.as_secs_f64();
        let total = ok + out.errors;
        let saturated = out.errors * 100 > total || rate.is_some_and(|r| throughput < 0.95 * r);
        Step {
            mode,
            concurrency,
            offered_rps: rate,
            requests: ok,
            errors: out.errors,
            text_changed: out.changed,
            p50_ms: percentile(&out.latencies, 0.50),
            p99_ms: percentile(&out.latencies, 0.99),
            throughput_rps: throughput,
            wall_s: wall.as_secs_f64(),
            cpu_s_per_1000: (ok > 0).then(|| cpu / ok as f64 * 1000.0),
            peak_rss_mib: peak,
            saturated,
            first_error: out.first_error,
        }
    }

    /// `concurrency` callers, each sending requests back to back until the time is up.
    async fn closed(&self, concurrency: usize) -> (Outcome, Duration) {
        let start = Instant::now();
        let end = start + Duration::from_secs_f64(self.seconds);
        let conns = concurrency.div_ceil(32).min(self.clients.len());
        let tasks: Vec<_> = (0..concurrency)
            .map(|caller| {
                let client = self.clients[caller % conns].clone();
                let (images, expected) = (self.images.clone(), self.expected.clone());
                tokio::spawn(async move {
                    let mut out = Outcome::default();
                    // Callers start at different images, then walk the whole set.
                    let mut k = caller * images.len() / concurrency;
                    while Instant::now() < end {
                        let i = k % images.len();
                        let t = Instant::now();
                        let r = client.recognize(&images[i]).await;
                        out.record(t.elapsed(), r, &expected[i]);
                        k += 1;
                    }
                    out
                })
            })
            .collect();
        let mut out = Outcome::default();
        for t in tasks {
            out.merge(t.await.unwrap());
        }
        (out, start.elapsed())
    }

    /// Requests at fixed intervals of 1/`rate` s for the step's duration, each on its own task.
    async fn open(&self, rate: f64) -> (Outcome, Duration) {
        let n = (rate * self.seconds).round().max(1.0) as usize;
        let interval = Duration::from_secs_f64(1.0 / rate);
        let start = Instant::now();
        let out = Arc::new(Mutex::new(Outcome::default()));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let last_answer = Arc::new(Mutex::new(start));
        let mut tasks = Vec::with_capacity(n);
        for k in 0..n {
            let scheduled = start + interval * k as u32;
            tokio::time::sleep_until(scheduled.into()).await;
            if in_flight.load(Ordering::SeqCst) >= self.max_in_flight {
                let mut o = out.lock().unwrap();
                o.errors += 1;
                o.first_error
                    .get_or_insert_with(|| "not sent: too many requests in flight".into());
                continue;
            }
            in_flight.fetch_add(1, Ordering::SeqCst);
            let client = self.clients[k % self.clients.len()].clone();
            let (images, expected) = (self.images.clone(), self.expected.clone());
            let (out, in_flight, last_answer) =
                (out.clone(), in_flight.clone(), last_answer.clone());
            tasks.push(tokio::spawn(async move {
                let i = k % images.len();
                let r = client.recognize(&images[i]).await;
                let now = Instant::now();
                out.lock().unwrap().record(now - scheduled, r, &expected[i]);
                let mut last = last_answer.lock().unwrap();
                *last = (*last).max(now);
                in_flight.fetch_sub(1, Ordering::SeqCst);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let wall =
            (*last_answer.lock().unwrap() - start).max(Duration::from_secs_f64(self.seconds));
        let out = std::mem::take(&mut *out.lock().unwrap());
        (out, wall)
    }
}

fn main() {
    let protocol = match std::env::var("TEXTREC_PEERS_PROTOCOL").as_deref() {
        Ok("oip") | Err(_) => Protocol::Oip,
        Ok("torchserve") => Protocol::TorchServe,
        Ok(other) => panic!("TEXTREC_PEERS_PROTOCOL: `oip` or `torchserve`, not {other:?}"),
    };
    let addr = std::env::var("TEXTREC_PEERS_ADDR").expect("TEXTREC_PEERS_ADDR: http://HOST:PORT");
    let model = std::env::var("TEXTREC_PEERS_MODEL").unwrap_or_else(|_| "textrec".into());
    let name = std::env::var("TEXTREC_PEERS_NAME").unwrap_or_else(|_| addr.clone());
    let pid: u32 = std::env::var("TEXTREC_PEERS_PID")
        .ok()
        .and_then(|p| p.parse().ok())
        .expect("TEXTREC_PEERS_PID: the server's process id");
    let closed: Vec<usize> = env_list("TEXTREC_PEERS_CLOSED", "1,8,32,128");
    let rates: Vec<f64> = env_list("TEXTREC_PEERS_RATES", "");
    let seconds: f64 = env_or("TEXTREC_PEERS_SECONDS", 10.0);
    let timeout = Duration::from_secs_f64(env_or("TEXTREC_PEERS_TIMEOUT_S", 30.0));
    let warmup_rounds: usize = env_or("TEXTREC_PEERS_WARMUP_ROUNDS", 2usize).max(1);
    let ready_s: f64 = env_or("TEXTREC_PEERS_READY_S", 600.0);

    let dir =
        std::env::var("TEXTREC_BENCH_IMAGES").expect("TEXTREC_BENCH_IMAGES: a folder of *.png");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .expect("TEXTREC_BENCH_IMAGES: a folder")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "no *.png in {dir}");
    let images: Vec<Vec<u8>> = paths.iter().map(|p| std::fs::read(p).unwrap()).collect();
    let names: Vec<String> = paths
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // Ready: the first image answers.
        let start = Instant::now();
        let client = loop {
            let last = match Client::connect(protocol, &addr, &model, timeout).await {
                Ok(c) => match c.recognize(&images[0]).await {
                    Ok(_) => break c,
                    Err(e) => e,
                },
                Err(e) => e,
            };
            assert!(
                start.elapsed().as_secs_f64() < ready_s,
                "{name}: not ready after {ready_s} s: {last}"
            );
            assert!(
                std::path::Path::new(&format!("/proc/{pid}")).exists(),
                "{name}: the server exited before it answered: {last}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        let ready_s = start.elapsed().as_secs_f64();
        // Warm-up, and every image's text.
        let mut texts = Vec::new();
        for _ in 0..warmup_rounds {
            texts.clear();
            for img in &images {
                texts.push(client.recognize(img).await.unwrap_or_else(|e| format!("<error: {e}>")));
            }
        }
        let tree = process_tree(pid);
        let idle_rss = sum_kb(&tree, "status", "VmRSS:");
        let idle_pss = sum_kb(&tree, "smaps_rollup", "Pss:");
        eprintln!(
            "{name}: ready after {ready_s:.1} s; {} processes, idle RSS {idle_rss:.0} MiB (PSS {idle_pss:.0} MiB)",
            tree.len()
        );
        let mut clients = vec![client];
        for _ in 1..4 {
            clients.push(Client::connect(protocol, &addr, &model, timeout).await.expect("connect"));
        }
        let bench = Bench {
            clients,
            images: Arc::new(images),
            expected: Arc::new(texts.clone()),
            pid,
            seconds,
            max_in_flight: env_or("TEXTREC_PEERS_MAX_IN_FLIGHT", 4096),
        };
        let mut steps = Vec::new();
        let show = |s: &Step| {
            eprintln!(
                "  {name} {} {:>5}: {:>8.2} req/s  p50 {:>8.1} ms  p99 {:>8.1} ms  {} errors{}",
                s.mode,
                s.concurrency.map_or_else(|| format!("{:.0}/s", s.offered_rps.unwrap()), |c| format!("c={c}")),
                s.throughput_rps,
                s.p50_ms.unwrap_or(f64::NAN),
                s.p99_ms.unwrap_or(f64::NAN),
                s.errors,
                if s.saturated { "  (saturated)" } else { "" }
            )
        };
        for &c in &closed {
            let s = bench.step("closed", Some(c), None, || bench.closed(c)).await;
            show(&s);
            steps.push(s);
        }
        for &r in &rates {
            let s = bench.step("open", None, Some(r), || bench.open(r)).await;
            show(&s);
            let saturated = s.saturated;
            steps.push(s);
            if saturated {
                break;
            }
        }
        let tree = process_tree(pid);
        let result = serde_json::json!({
            "name": name,
            "protocol": match protocol { Protocol::Oip => "oip", Protocol::TorchServe => "torchserve" },
            "ready_s": ready_s,
            "processes": tree.len(),
            "idle_rss_mib": idle_rss,
            "idle_pss_mib": idle_pss,
            "end_rss_mib": sum_kb(&tree, "status", "VmRSS:"),
            "seconds_per_step": seconds,
            "images": names,
            "texts": texts,
            "steps": steps,
        });
        let text = serde_json::to_string_pretty(&result).unwrap();
        match std::env::var("TEXTREC_BENCH_JSON") {
            Ok(path) => std::fs::write(path, text).unwrap(),
            Err(_) => println!("{text}"),
        }
    });
}
