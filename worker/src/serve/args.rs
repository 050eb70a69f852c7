//! Command-line arguments of `textrec-worker serve`.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;

/// Arguments of `serve`.
#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// Model folder to serve (manifest.json + model.safetensors): file://, s3://, gs://, az:// or
    /// a plain path, or `builtin:NAME`. SIGHUP re-reads it. Without it and --model-pointer, the
    /// built-in pretrained model (`builtin:small`) is served.
    #[arg(long, env = "TEXTREC_MODEL")]
    pub model: Option<String>,

    /// A small text object (file path or URL) holding the URL of the model folder to serve.
    /// Polled every --reload-interval; when its content changes the new model is loaded,
    /// verified and swapped in without dropping a request.
    #[arg(long, env = "TEXTREC_MODEL_POINTER")]
    pub model_pointer: Option<String>,

    /// How often the model pointer is polled, e.g. `10s`, `500ms`.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub reload_interval: Duration,

    /// gRPC listen address (textrec.v1.Recognizer, KServe V2, health, reflection).
    #[arg(long, default_value = "0.0.0.0:50051")]
    pub grpc_addr: SocketAddr,

    /// HTTP listen address (JSON API, /metrics, health probes, demo page).
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,

    /// Most images coalesced into one forward pass; 1 turns dynamic batching off.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub max_batch: u32,

    /// Most padded pixel columns in one forward pass: images × the widest image's width, after
    /// resizing to the model's height. What the batcher gathers is sorted by width and split
    /// into passes within this budget (where padding a short line to a longer one costs more than
    /// another pass, they are split further), so a pass stays small enough for the CPU's caches.
    /// Default: 2048 on CPU, no limit on CUDA.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_batch_columns: Option<u64>,

    /// Longest a request waits for others to share its forward pass, in milliseconds. The
    /// batcher only waits while more admitted requests are on their way, so a lone request
    /// never pays it.
    #[arg(long, default_value_t = 5)]
    pub max_wait_ms: u64,

    /// Requests admitted at once (being decoded, queued or in a forward pass). Beyond it the
    /// server sheds load: RESOURCE_EXHAUSTED over gRPC, 429 over HTTP.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_queue: u32,

    /// Inference threads, each running whole forward passes from the shared queue (0: automatic;
    /// on a CPU one per core up to 4, on CUDA one). On a CPU, passes side by side on separate
    /// cores serve more than one pass spread over every core: a recognizer's many small
    /// operators parallelize poorly inside one pass.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=64))]
    pub inference_threads: u32,

    /// libtorch intra-op threads of each inference thread (0: automatic; on a CPU the cores
    /// divided among the inference threads, on CUDA libtorch's default).
    #[arg(long, default_value_t = 0)]
    pub torch_threads: usize,

    /// Device: cpu, cuda or auto.
    #[arg(long, default_value = "cpu")]
    pub device: String,

    /// Largest accepted encoded image, in bytes.
    #[arg(long, default_value_t = 8 * 1024 * 1024)]
    pub max_request_bytes: usize,

    /// Largest accepted image, in pixels (width × height, read from the header before any
    /// decoding). The model's own limit applies too; the smaller wins.
    #[arg(long, default_value_t = 16_000_000)]
    pub max_pixels: u64,

    /// Deadline of a request that brings none (gRPC `grpc-timeout`, HTTP `X-Request-Timeout-Ms`).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub request_timeout: Duration,

    /// Where flagged samples go (tesstrain pairs plus a JSONL record each): URL or path.
    /// Without it the demo page's Flag button answers 501.
    #[arg(long, env = "TEXTREC_FLAGS")]
    pub flags: Option<String>,

    /// How long a graceful shutdown may take before in-flight work is abandoned.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
}

impl ServeArgs {
    /// Arguments for a server on ephemeral 127.0.0.1 ports serving `model`; the rest default.
    pub fn local(model: impl Into<String>) -> Self {
        Self {
            model: Some(model.into()),
            model_pointer: None,
            reload_interval: Duration::from_secs(10),
            grpc_addr: "127.0.0.1:0".parse().expect("literal address"),
            http_addr: "127.0.0.1:0".parse().expect("literal address"),
            max_batch: 16,
            max_batch_columns: None,
            max_wait_ms: 5,
            max_queue: 256,
            inference_threads: 0,
            torch_threads: 0,
            device: "cpu".into(),
            max_request_bytes: 8 * 1024 * 1024,
            max_pixels: 16_000_000,
            request_timeout: Duration::from_secs(30),
            flags: None,
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// Inference threads and libtorch intra-op threads per inference thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThreadPlan {
    /// Threads taking forward passes from the queue.
    pub inference: usize,
    /// libtorch intra-op threads; 0 leaves libtorch's default.
    pub torch: usize,
}

/// Most inference threads chosen automatically: more would split the traffic into batches too
/// small to share, and multiply the memory of concurrent passes.
const AUTO_MAX_INFERENCE_THREADS: usize = 4;

impl ThreadPlan {
    /// Resolve `--inference-threads` and `--torch-threads` (0: automatic) for a machine with
    /// `cores` usable cores.
    pub fn resolve(inference: u32, torch: usize, cuda: bool, cores: usize) -> Self {
        let cores = cores.max(1);
        let inference = match (inference, cuda) {
            (0, true) => 1,
            (0, false) => cores.min(AUTO_MAX_INFERENCE_THREADS),
            (n, _) => n as usize,
        };
        let torch = match (torch, cuda) {
            (0, true) => 0,
            (0, false) => (cores / inference).max(1),
            (n, _) => n,
        };
        Self { inference, torch }
    }
}

/// Parse `250ms`, `10s`, `2m` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => (&s[..i], s[i..].trim()),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("not a duration: `{s}` (try 500ms, 10s, 2m)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("unknown unit in `{s}` (use ms, s or m)")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("not a duration: `{s}`"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn automatic_threads_put_one_pass_per_core_on_cpus() {
        let plan = |i, t, cuda, cores| ThreadPlan::resolve(i, t, cuda, cores);
        let p = |inference, torch| ThreadPlan { inference, torch };
        assert_eq!(plan(0, 0, false, 2), p(2, 1));
        assert_eq!(plan(0, 0, false, 1), p(1, 1));
        assert_eq!(plan(0, 0, false, 16), p(4, 4));
        assert_eq!(plan(0, 0, true, 16), p(1, 0));
        // Explicit values win, and the automatic half adapts to them.
        assert_eq!(plan(1, 0, false, 8), p(1, 8));
        assert_eq!(plan(0, 3, false, 8), p(4, 3));
        assert_eq!(plan(3, 2, true, 8), p(3, 2));
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5h").is_err());
    }
}
