//! `textrec-worker serve`: the inference server.
//!
//! - gRPC (`--grpc-addr`): `textrec.v1.Recognizer`, the Open Inference Protocol
//!   (`inference.GRPCInferenceService`, KServe V2), `grpc.health.v1` and server reflection;
//! - HTTP (`--http-addr`): `POST /v1/recognize`, `POST /v1/predict` (the classic
//!   text-recognizer lambda shape), `POST /v1/flag`, `GET /v1/model`, `/healthz`, `/readyz`,
//!   `/metrics`, and the demo page at `/`.
//!
//! Every API feeds the same path ([`state::ServeState::recognize`]): limits checked from the
//! image's header, admission (bounded; beyond it load is shed), a pixel budget for decoding,
//! preprocessing on the blocking pool, then the dynamic [`batcher`] whose inference threads
//! run the forward passes. The model sits in a [`reload::ModelSlot`] and is swapped atomically
//! on SIGHUP or when `--model-pointer` changes.
//! SIGTERM/SIGINT: readiness and gRPC health go NOT_SERVING, listeners stop accepting,
//! in-flight requests finish, the queue drains, the process exits 0.

pub mod args;
pub mod auth;
pub mod batcher;
pub mod client;
pub mod client_ip;
pub mod connections;
pub mod demo;
pub mod engine;
pub mod flags;
pub mod grpc;
pub mod grpc_budget;
pub mod handoff;
pub mod http;
pub mod kserve;
pub mod limits;
pub mod metrics;
pub mod proto;
pub mod ratelimit;
pub mod redact;
pub mod reload;
pub mod state;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use textrec_model::widths::WidthReadings;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;
use tonic::service::interceptor::InterceptedService;
use tonic_health::server::HealthReporter;

pub use args::{ServeArgs, ThreadPlan};

use batcher::{BatchConfig, Batcher};
use flags::FlagStore;
use grpc::RecognizerService;
use kserve::KServeService;
use limits::Limits;
use metrics::Metrics;
use proto::inference::grpc_inference_service_server::GrpcInferenceServiceServer;
use proto::textrec::recognizer_server::RecognizerServer;
use reload::{Loader, ModelSlot, Reloader};
use state::{ServeState, StateSettings};
use tls::ServerTls;

/// A started server.
pub struct RunningServer {
    /// Where gRPC listens.
    pub grpc_addr: SocketAddr,
    /// Where HTTP listens.
    pub http_addr: SocketAddr,
    /// Shared state (model slot, metrics), for callers that embed the server.
    pub state: Arc<ServeState>,
    reloader: Arc<Reloader>,
    shutdown: CancellationToken,
    done: JoinHandle<Result<()>>,
}

impl RunningServer {
    /// Begin a graceful shutdown.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Resolves when a shutdown has begun (asked for, or a listener failed).
    pub async fn shutdown_requested(&self) {
        self.shutdown.cancelled().await;
    }

    /// Reload the model now, as SIGHUP does.
    pub async fn reload(&self) -> Result<()> {
        self.reloader.reload("api", true).await
    }

    /// Wait until the shutdown has finished: listeners closed, in-flight work done.
    pub async fn wait(self) -> Result<()> {
        self.done.await.context("server supervisor failed")?
    }
}

/// What `serve` works out from its arguments and the machine, once: the device (selecting it
/// may initialize CUDA), the thread plan that depends on it, and the cores.
#[derive(Debug, Clone, Copy)]
pub struct Resolved {
    /// The device models are loaded onto.
    pub device: tch::Device,
    /// Inference and libtorch threads.
    pub threads: ThreadPlan,
    /// Usable cores.
    pub cores: usize,
}

impl Resolved {
    /// Resolve `--device`, `--inference-threads` and `--torch-threads` on this machine.
    pub fn from_args(args: &ServeArgs) -> Result<Self> {
        let device = parse_device(&args.device)?;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = ThreadPlan::resolve(
            args.inference_threads,
            args.torch_threads,
            device.is_cuda(),
            cores,
        );
        Ok(Self {
            device,
            threads,
            cores,
        })
    }
}

/// The tch device named by `--device`.
fn parse_device(s: &str) -> Result<tch::Device> {
    let d: textrec_contract::config::Device =
        serde_json::from_value(serde_json::Value::String(s.to_lowercase())).map_err(|_| {
            textrec_contract::exit::ConfigError::new(format!("--device {s}: use cpu, cuda or auto"))
        })?;
    crate::device::select(d)
}

/// The loader of real models: storage, verification, libtorch on `device`, each model read
/// at `widths` and `precision`.
fn torch_loader(
    device: tch::Device,
    widths: Option<WidthReadings>,
    precision: crate::eval::PrecisionArgs,
) -> Loader {
    Arc::new(move |url: String| {
        let widths = widths.clone();
        Box::pin(async move { engine::load_model(&url, device, widths, precision).await })
    })
}

/// Start a server loading models with libtorch on `--device`; returns once the first model is
/// in service (or, with `--model-pointer`, once the first attempt has been made).
pub async fn start(args: ServeArgs) -> Result<RunningServer> {
    let resolved = Resolved::from_args(&args)?;
    let widths = args.widths.readings()?;
    let loader = torch_loader(resolved.device, widths, args.precision);
    start_resolved(args, resolved, loader).await
}

/// [`start`] with a custom model loader.
pub async fn start_with_loader(args: ServeArgs, loader: Loader) -> Result<RunningServer> {
    let resolved = Resolved::from_args(&args)?;
    start_resolved(args, resolved, loader).await
}

fn service_names() -> [&'static str; 3] {
    [
        "",
        <RecognizerServer<RecognizerService> as NamedService>::NAME,
        <GrpcInferenceServiceServer<KServeService> as NamedService>::NAME,
    ]
}

async fn set_health(health: &HealthReporter, status: tonic_health::ServingStatus) {
    for name in service_names() {
        health.set_service_status(name, status).await;
    }
}

/// Start with the device and threads already resolved: the state, both listeners, the
/// reloader and the supervisor that runs the shutdown; then load the first model.
async fn start_resolved(
    args: ServeArgs,
    resolved: Resolved,
    loader: Loader,
) -> Result<RunningServer> {
    if args.model.is_none() && args.model_pointer.is_none() {
        return Err(textrec_contract::exit::ConfigError::new(
            "serve needs --model URL or --model-pointer FILE_OR_URL",
        )
        .into());
    }
    let security = Security::from_args(&args)?;
    let state = build_state(&args, &resolved)?;
    let grpc_listener = TcpListener::bind(args.grpc_addr)
        .await
        .with_context(|| format!("cannot listen on {} (--grpc-addr)", args.grpc_addr))?;
    let http_listener = TcpListener::bind(args.http_addr)
        .await
        .with_context(|| format!("cannot listen on {} (--http-addr)", args.http_addr))?;
    let grpc_addr = grpc_listener.local_addr()?;
    let http_addr = http_listener.local_addr()?;

    let (health, health_service) = tonic_health::server::health_reporter();
    set_health(&health, tonic_health::ServingStatus::NotServing).await;
    // `shutdown` asks for a shutdown; `stop_listening` is what the supervisor cancels once it
    // has marked the server unready.
    let shutdown = CancellationToken::new();
    let stop_listening = CancellationToken::new();
    let grpc_task = spawn_grpc(
        grpc_listener,
        &state,
        &args,
        health_service,
        &security,
        stop_listening.clone(),
        shutdown.clone(),
    )?;
    let http_task = spawn_http(
        http_listener,
        &state,
        http::Connections {
            header_read_timeout: args.header_read_timeout,
            max_connections: args.max_connections as usize,
        },
        &security,
        stop_listening.clone(),
        shutdown.clone(),
    );

    let reloader = Arc::new(Reloader::new(
        state.slot.clone(),
        loader,
        args.model.clone(),
        args.model_pointer.clone(),
    ));
    let reload_task = reloader
        .clone()
        .spawn(args.reload_interval, stop_listening.clone());
    let health_task = spawn_health_follower(&state, health.clone(), stop_listening.clone());
    let mut helpers = vec![health_task, reload_task];
    if let Some(tls) = &security.tls {
        helpers.push(
            tls.clone()
                .spawn_reloader(tls::RELOAD_INTERVAL, stop_listening.clone()),
        );
    }
    let done = spawn_supervisor(Supervised {
        state: state.clone(),
        health: health.clone(),
        shutdown: shutdown.clone(),
        stop_listening,
        servers: [grpc_task, http_task],
        helpers,
        grace: args.shutdown_grace,
    });

    let server = RunningServer {
        grpc_addr,
        http_addr,
        state,
        reloader: reloader.clone(),
        shutdown,
        done,
    };
    if let Err(e) = reloader.initial().await {
        if args.model_pointer.is_some() {
            tracing::warn!(
                "no model yet; polling --model-pointer every {:?}: {e:#}",
                args.reload_interval
            );
        } else {
            server.shutdown();
            let _ = server.wait().await;
            return Err(e.context("cannot load the model"));
        }
    }
    if server.state.slot.current().is_some() && !server.shutdown.is_cancelled() {
        // Said here as well as by the health task, so a caller that sees `start` return finds
        // the server SERVING however the tasks were scheduled.
        set_health(&health, tonic_health::ServingStatus::Serving).await;
    }
    tracing::info!(
        grpc = %grpc_addr,
        http = %http_addr,
        tls = security.tls.is_some(),
        client_auth = args.client_ca.is_some(),
        token_auth = security.tokens.is_some(),
        "serving"
    );
    Ok(server)
}

/// Transport security from the arguments: TLS and bearer tokens, loaded (and checked) at
/// start-up.
struct Security {
    tls: Option<Arc<ServerTls>>,
    tokens: Option<Arc<auth::Tokens>>,
}

impl Security {
    fn from_args(args: &ServeArgs) -> Result<Self> {
        use textrec_contract::exit::ConfigError;
        if args.tls_cert.is_some() != args.tls_key.is_some() {
            return Err(ConfigError::new("--tls-cert and --tls-key go together").into());
        }
        if args.client_ca.is_some() && args.tls_cert.is_none() {
            return Err(ConfigError::new("--client-ca needs --tls-cert and --tls-key").into());
        }
        let tls = args.tls_files().map(ServerTls::load).transpose()?;
        let tokens = args
            .auth_token_file
            .as_deref()
            .map(auth::Tokens::load)
            .transpose()?;
        Ok(Self { tls, tokens })
    }
}

/// Metrics, the model slot, the batcher and its inference threads, the flags folder, and the
/// limits, as one [`ServeState`].
fn build_state(args: &ServeArgs, resolved: &Resolved) -> Result<Arc<ServeState>> {
    let threads = resolved.threads;
    let decode_budget_pixels = args.decode_budget(resolved.cores);
    tracing::info!(
        inference_threads = threads.inference,
        torch_threads = threads.torch,
        max_batch = args.max_batch,
        max_batch_columns = args.max_batch_columns,
        decode_budget_pixels,
        "inference configured"
    );
    let metrics = Arc::new(Metrics::new());
    let slot = Arc::new(ModelSlot::new(metrics.clone()));
    let max_batch = args.max_batch as usize;
    let max_queue = args.max_queue as usize;
    let max_wait = Duration::from_millis(args.max_wait_ms);
    let batcher = Batcher::start(
        BatchConfig {
            max_batch,
            max_wait,
            queue_capacity: max_queue,
            threads: threads.inference,
            max_columns: args.max_batch_columns.map(|c| c as usize),
        },
        metrics.clone(),
    );
    let flags = args
        .flags
        .as_deref()
        .map(|location| FlagStore::open(location, Some(args.flags_max_samples)))
        .transpose()
        .context("cannot open the --flags folder")?;
    let settings = StateSettings {
        max_in_flight: max_queue,
        limits: Limits {
            max_request_bytes: args.max_request_bytes,
            max_pixels: args.max_pixels,
            max_call_pixels: args.max_call_pixels,
        },
        decode_budget_pixels,
        default_timeout: args.request_timeout,
        max_batch,
        max_wait,
        flag_rate_per_minute: args.flag_rate,
        flag_burst: args.flag_burst,
        max_body_bytes_in_flight: args.max_body_bytes_in_flight,
        trusted_proxies: args.trusted_proxies.clone(),
    };
    Ok(Arc::new(ServeState::new(
        slot, batcher, metrics, flags, settings,
    )))
}

/// The gRPC server (Recognizer, KServe, health, reflection v1 and v1alpha) until
/// `stop_listening`; a failure asks for a shutdown.
fn spawn_grpc(
    listener: TcpListener,
    state: &Arc<ServeState>,
    args: &ServeArgs,
    health_service: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
    security: &Security,
    stop_listening: CancellationToken,
    shutdown: CancellationToken,
) -> Result<JoinHandle<Result<()>>> {
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .build_v1()
        .context("cannot build the reflection service")?;
    // v1alpha too: grpcurl before 1.9, Postman and most other tools still ask for it.
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .context("cannot build the v1alpha reflection service")?;
    // Room for a batch of images at the size limit; single images are checked precisely later,
    // with a specific message.
    let message_limit = args.max_request_bytes.saturating_mul(4).max(4 << 20);
    let recognizer = RecognizerServer::new(RecognizerService::new(state.clone()))
        .max_decoding_message_size(message_limit)
        .max_encoding_message_size(usize::MAX);
    let kserve = GrpcInferenceServiceServer::new(KServeService::new(state.clone()))
        .max_decoding_message_size(message_limit);
    // Every service but health needs the token (when there is one).
    let guard = auth::GrpcAuth::new(security.tokens.clone(), state.metrics.clone());
    // No `tcp_nodelay` here: tonic ignores it for `serve_with_incoming`; `connections::accept`
    // sets it on every accepted socket.
    let mut builder = tonic::transport::Server::builder();
    if !args.grpc_max_connection_age.is_zero() {
        // No `max_connection_age_grace`: with it tonic skips the GOAWAY and closes the
        // connection outright at age + grace, failing whatever is in flight.
        builder = builder.max_connection_age(args.grpc_max_connection_age);
    }
    if !args.grpc_keepalive.is_zero() {
        builder = builder
            .http2_keepalive_interval(Some(args.grpc_keepalive))
            .http2_keepalive_timeout(Some(args.grpc_keepalive.min(Duration::from_secs(20))));
    }
    let server = builder
        .layer(grpc_budget::BodyBudgetLayer::new(state.clone()))
        .add_service(health_service)
        .add_service(InterceptedService::new(reflection_v1, guard.clone()))
        .add_service(InterceptedService::new(reflection_v1alpha, guard.clone()))
        .add_service(InterceptedService::new(recognizer, guard.clone()))
        .add_service(InterceptedService::new(kserve, guard));
    let tls = security.tls.clone();
    let max_connections = args.max_connections as usize;
    let silent = args.header_read_timeout;
    Ok(tokio::spawn(async move {
        let stopped = stop_listening.clone().cancelled_owned();
        let r = match tls {
            None => {
                let incoming = connections::incoming(
                    listener,
                    max_connections,
                    stop_listening,
                    move |stream, remote| connections::first_bytes(stream, remote, silent),
                );
                server.serve_with_incoming_shutdown(incoming, stopped).await
            }
            Some(tls) => {
                let handshake = move |stream, remote: std::net::SocketAddr| {
                    let tls = tls.clone();
                    async move {
                        match tls.accept(tls::Port::Grpc, stream).await {
                            Ok(s) => connections::first_bytes(s, remote, silent).await,
                            Err(e) => {
                                tracing::debug!(client = %remote, "TLS handshake failed: {e}");
                                None
                            }
                        }
                    }
                };
                let incoming =
                    connections::incoming(listener, max_connections, stop_listening, handshake);
                server.serve_with_incoming_shutdown(incoming, stopped).await
            }
        };
        if let Err(e) = &r {
            tracing::error!("gRPC server failed: {e}");
            shutdown.cancel();
        }
        r.map_err(anyhow::Error::from)
    }))
}

/// The HTTP server until `stop_listening`; a failure asks for a shutdown.
fn spawn_http(
    listener: TcpListener,
    state: &Arc<ServeState>,
    connections: http::Connections,
    security: &Security,
    stop_listening: CancellationToken,
    shutdown: CancellationToken,
) -> JoinHandle<Result<()>> {
    let mut app = http::router(state.clone());
    if let Some(tokens) = &security.tokens {
        app = app.layer(axum::middleware::from_fn_with_state(
            (tokens.clone(), state.metrics.clone()),
            auth::http_middleware,
        ));
    }
    let tls = security.tls.clone();
    tokio::spawn(async move {
        let r = http::serve(listener, app, connections, tls, stop_listening).await;
        if let Err(e) = &r {
            tracing::error!("HTTP server failed: {e}");
            shutdown.cancel();
        }
        r.map_err(anyhow::Error::from)
    })
}

/// gRPC health follows the model slot: SERVING from the first model on.
fn spawn_health_follower(
    state: &ServeState,
    health: HealthReporter,
    stop: CancellationToken,
) -> JoinHandle<()> {
    let mut versions = state.slot.watch_version();
    tokio::spawn(async move {
        loop {
            if versions.borrow_and_update().is_some() {
                set_health(&health, tonic_health::ServingStatus::Serving).await;
            }
            tokio::select! {
                r = versions.changed() => if r.is_err() { break },
                _ = stop.cancelled() => break,
            }
        }
    })
}

/// What the shutdown supervisor takes down.
struct Supervised {
    state: Arc<ServeState>,
    health: HealthReporter,
    shutdown: CancellationToken,
    stop_listening: CancellationToken,
    /// gRPC and HTTP.
    servers: [JoinHandle<Result<()>>; 2],
    /// The health follower, the model reloader and the TLS reloader.
    helpers: Vec<JoinHandle<()>>,
    grace: Duration,
}

/// On shutdown: unready and NOT_SERVING first, then stop accepting, let in-flight requests
/// finish within the grace period, drain the inference queue, and report how it went.
fn spawn_supervisor(s: Supervised) -> JoinHandle<Result<()>> {
    tokio::spawn(async move {
        s.shutdown.cancelled().await;
        tracing::info!("shutting down: finishing in-flight requests");
        s.state.begin_shutdown();
        set_health(&s.health, tonic_health::ServingStatus::NotServing).await;
        s.stop_listening.cancel();
        let [grpc_task, http_task] = s.servers;
        let servers = async {
            let (g, h) = tokio::join!(grpc_task, http_task);
            g.context("gRPC server task")??;
            h.context("HTTP server task")??;
            anyhow::Ok(())
        };
        let grace = s.grace;
        let result = match tokio::time::timeout(grace, servers).await {
            Ok(r) => r,
            Err(_) => {
                tracing::warn!(
                    ?grace,
                    "shutdown grace period over; abandoning open connections"
                );
                Ok(())
            }
        };
        for helper in s.helpers {
            let _ = helper.await;
        }
        let b = s.state.batcher.clone();
        tokio::task::spawn_blocking(move || b.close())
            .await
            .context("inference threads")?;
        tracing::info!("shut down");
        result
    })
}

/// Run `serve`; returns the process exit code.
pub fn run(mut args: ServeArgs) -> Result<i32> {
    if args.model.is_none() && args.model_pointer.is_none() {
        tracing::info!(
            "no --model or --model-pointer: serving the built-in pretrained model {}",
            crate::model_source::DEFAULT_MODEL
        );
        args.model = Some(crate::model_source::DEFAULT_MODEL.to_string());
    }
    let resolved = Resolved::from_args(&args)?;
    let widths = args.widths.readings()?;
    crate::device::set_threads(resolved.threads.torch);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("textrec-serve")
        .build()?;
    rt.block_on(async move {
        // Install the handlers before loading, so a SIGTERM during a slow load is graceful too.
        let signal = tokio::spawn(textrec_contract::signals::stop_requested());
        let loader = torch_loader(resolved.device, widths, args.precision);
        let server = start_resolved(args, resolved, loader).await?;
        tokio::select! {
            _ = signal => server.shutdown(),
            _ = server.shutdown_requested() => {}
        }
        server.wait().await?;
        Ok(textrec_contract::exit::SUCCESS)
    })
}
