//! Command-line arguments of `textrec-worker serve`.

use std::net::SocketAddr;
use std::path::PathBuf;
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

    /// gRPC listen address (textrec.v1.Recognizer, KServe V2, health, reflection). Loopback by
    /// default; in a container or pod pass `--grpc-addr 0.0.0.0:50051`.
    #[arg(long, default_value = DEFAULT_GRPC_ADDR)]
    pub grpc_addr: SocketAddr,

    /// HTTP listen address (JSON API, /metrics, health probes, demo page). Loopback by
    /// default; in a container or pod pass `--http-addr 0.0.0.0:8080`.
    #[arg(long, default_value = DEFAULT_HTTP_ADDR)]
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

    /// Reading each line at several widths, for every model served (as `eval --widths`). The
    /// further widths' readings of a batch run as one more forward pass after the first.
    #[command(flatten)]
    pub widths: crate::eval::WidthArgs,

    /// The encoder's type, for every model served (as `eval --precision`).
    #[command(flatten)]
    pub precision: crate::eval::PrecisionArgs,

    /// Largest accepted encoded image, in bytes. A text line of the largest accepted size is
    /// well under this as PNG or JPEG.
    #[arg(long, default_value_t = DEFAULT_MAX_REQUEST_BYTES)]
    pub max_request_bytes: usize,

    /// Largest accepted image, in pixels (width × height, read from the header before any
    /// decoding, together with the line's aspect ratio). The default, 4 MiP, holds a line of
    /// 4096×1024 or 8192×512: far more than a recognizer that resizes every line to 32 rows
    /// needs, and a bound on what one decode costs. The model's own limit applies too; the
    /// smaller wins.
    #[arg(long, default_value_t = DEFAULT_MAX_PIXELS)]
    pub max_pixels: u64,

    /// Most pixels (summed over the images' headers) in one RecognizeBatch or KServe
    /// ModelInfer call; a larger call is refused before any image is decoded.
    #[arg(long, default_value_t = DEFAULT_MAX_CALL_PIXELS)]
    pub max_call_pixels: u64,

    /// Source pixels decoded at once over all requests; admitted requests wait for room
    /// (within their deadline). It bounds decoding memory: 1 to 9 bytes per pixel depending on
    /// the format (PNG, the usual case, 1). 0: automatic, `--max-pixels` times the cores
    /// (at least 2, at most 8).
    #[arg(long, default_value_t = 0)]
    pub decode_budget_pixels: u64,

    /// Deadline of a request that brings none (gRPC `grpc-timeout`, HTTP
    /// `X-Request-Timeout-Ms`), and the most a caller's own timeout is granted. Each image of a
    /// RecognizeStream gets this much from its arrival; a stream's `grpc-timeout` bounds the
    /// whole stream instead.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub request_timeout: Duration,

    /// How long an HTTP client may take to send a request's headers; slower connections (and
    /// idle keep-alive connections) are closed. On the gRPC port, how long a new connection may
    /// stay silent before its first bytes (over TLS: after the handshake, which must finish
    /// within 10 s).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,

    /// Most connections open at once, on each port (HTTP and gRPC). Beyond it new connections
    /// wait in the kernel's accept queue until one closes, so a flood of idle or slow clients
    /// cannot exhaust file descriptors or memory (idle HTTP connections, and gRPC connections
    /// that send nothing, are closed after `--header-read-timeout`).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,

    /// Age after which a gRPC connection is asked to close (HTTP/2 GOAWAY): its calls in
    /// flight finish, new ones go to a fresh connection, which gRPC clients open by themselves
    /// without failing a call. This moves long-lived client connections onto replicas added
    /// since (a Service balances connections, not calls) and bounds how long an idle client
    /// holds one of `--max-connections`. 0: never.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub grpc_max_connection_age: Duration,

    /// Interval of the HTTP/2 PINGs the gRPC port sends on each connection; a client that does
    /// not answer one within this interval (at most 20 s) is closed. It finds peers that went
    /// away without closing (a node lost, a NAT entry dropped) and clients that hold a
    /// connection without speaking HTTP/2, which `--grpc-max-connection-age` alone cannot
    /// retire. gRPC clients answer PINGs by themselves. 0: no PINGs.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub grpc_keepalive: Duration,

    /// Bytes of request bodies held at once over all requests, on both ports. An HTTP body is
    /// admitted by its `Content-Length` (by the largest allowed body when it has none) before
    /// any of it is read; bodies that do not fit wait within their deadline, then get 429. A
    /// gRPC message holds its declared length from its header until its last byte arrives; one
    /// that does not fit gets RESOURCE_EXHAUSTED at once. With the size limits this bounds what
    /// uploads cost in memory, whatever the number of clients.
    #[arg(long, default_value_t = DEFAULT_MAX_BODY_BYTES_IN_FLIGHT, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_body_bytes_in_flight: u64,

    /// Proxies whose `X-Forwarded-For` is believed, as CIDRs (`10.0.0.0/8,fd00::/8`). The
    /// per-client flag limit then keys on the address the nearest untrusted hop reported
    /// instead of the proxy's own, so clients behind one ingress do not share one budget.
    /// Empty (the default): the connection's peer address, and the header is ignored.
    #[arg(long, value_delimiter = ',', env = "TEXTREC_TRUSTED_PROXIES")]
    pub trusted_proxies: Vec<ipnet::IpNet>,

    /// Where flagged samples go (tesstrain pairs plus a JSONL record each): URL or path.
    /// Without it the demo page's Flag button answers 501.
    #[arg(long, env = "TEXTREC_FLAGS")]
    pub flags: Option<String>,

    /// The most flags kept in `--flags`; beyond it the oldest are deleted. 0: no cap.
    #[arg(long, default_value_t = 10_000)]
    pub flags_max_samples: usize,

    /// Flags one client (IP address; IPv6 /64) may send per minute on average; 0: no limit.
    /// Beyond it `/v1/flag` answers 429 with Retry-After.
    #[arg(long, default_value_t = 30)]
    pub flag_rate: u32,

    /// Flags one client may send in a burst before `--flag-rate` applies.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub flag_burst: u32,

    /// How long a graceful shutdown may take before in-flight work is abandoned.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// Serve both ports over TLS with this PEM certificate chain (leaf first; cert-manager's
    /// `tls.crt`). Needs --tls-key. The files are checked every 30 s and reloaded when they
    /// change; new connections get the new certificate.
    #[arg(long, env = "TEXTREC_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The PEM private key of --tls-cert (PKCS#8, PKCS#1 or SEC1; `tls.key`).
    #[arg(long, env = "TEXTREC_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Require client certificates signed by a CA in this PEM file (mutual TLS; `ca.crt`).
    /// Needs --tls-cert.
    #[arg(long, env = "TEXTREC_CLIENT_CA", requires = "tls_cert")]
    pub client_ca: Option<PathBuf>,

    /// Require `authorization: Bearer TOKEN` on every API call, TOKEN being a line of this
    /// file (one token per line, whitespace trimmed; re-read when it changes). Exempt: gRPC
    /// health, /healthz, /readyz, /metrics and the demo page's static files.
    #[arg(long, env = "TEXTREC_AUTH_TOKEN_FILE")]
    pub auth_token_file: Option<PathBuf>,
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
            widths: Default::default(),
            precision: Default::default(),
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            max_pixels: DEFAULT_MAX_PIXELS,
            max_call_pixels: DEFAULT_MAX_CALL_PIXELS,
            decode_budget_pixels: 0,
            request_timeout: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(30),
            max_connections: 1024,
            grpc_max_connection_age: Duration::from_secs(600),
            grpc_keepalive: Duration::from_secs(60),
            max_body_bytes_in_flight: DEFAULT_MAX_BODY_BYTES_IN_FLIGHT,
            trusted_proxies: Vec::new(),
            flags: None,
            flags_max_samples: 10_000,
            flag_rate: 30,
            flag_burst: 10,
            shutdown_grace: Duration::from_secs(30),
            tls_cert: None,
            tls_key: None,
            client_ca: None,
            auth_token_file: None,
        }
    }
}

/// Default `--grpc-addr`: loopback, so a server started by hand is not exposed; pods pass
/// `0.0.0.0:PORT`.
pub const DEFAULT_GRPC_ADDR: &str = "127.0.0.1:50051";
/// Default `--http-addr` (see [`DEFAULT_GRPC_ADDR`]).
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8080";
/// Default `--max-body-bytes-in-flight`: 64 MiB, a few thousand line images.
pub const DEFAULT_MAX_BODY_BYTES_IN_FLIGHT: u64 = 64 * 1024 * 1024;
/// Default `--max-request-bytes`: 4 MiB.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;
/// Default `--max-pixels`: 4 MiP (4096×1024).
pub const DEFAULT_MAX_PIXELS: u64 = 4 * 1024 * 1024;
/// Default `--max-call-pixels`: 64 MiP, some 250 typical lines (2000×128) per call.
pub const DEFAULT_MAX_CALL_PIXELS: u64 = 64 * 1024 * 1024;

impl ServeArgs {
    /// The TLS files, when --tls-cert and --tls-key are given.
    pub fn tls_files(&self) -> Option<super::tls::TlsFiles> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(super::tls::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: self.client_ca.clone(),
            }),
            _ => None,
        }
    }

    /// `--decode-budget-pixels`, resolved for a machine with `cores` cores: at least one image
    /// at the limit must fit.
    pub fn decode_budget(&self, cores: usize) -> u64 {
        if self.decode_budget_pixels > 0 {
            return self.decode_budget_pixels;
        }
        self.max_pixels.saturating_mul(cores.clamp(2, 8) as u64)
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
    fn defaults_bind_loopback_and_size_for_lines() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            serve: ServeArgs,
        }
        let a = Cli::parse_from(["serve"]).serve;
        assert!(a.grpc_addr.ip().is_loopback() && a.http_addr.ip().is_loopback());
        assert_eq!((a.grpc_addr.port(), a.http_addr.port()), (50051, 8080));
        assert_eq!(a.max_pixels, 4096 * 1024);
        assert_eq!(a.decode_budget(2), 2 * a.max_pixels);
        assert_eq!(a.decode_budget(64), 8 * a.max_pixels);
        let a = Cli::parse_from([
            "serve",
            "--decode-budget-pixels",
            "7",
            "--http-addr",
            "0.0.0.0:80",
        ])
        .serve;
        assert_eq!(a.decode_budget(4), 7);
        assert!(a.http_addr.ip().is_unspecified());
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
