//! `textrec-worker serve`: the inference server.
//!
//! - gRPC (`--grpc-addr`): `textrec.v1.Recognizer`, the Open Inference Protocol
//!   (`inference.GRPCInferenceService`, KServe V2), `grpc.health.v1` and server reflection;
//! - HTTP (`--http-addr`): `POST /v1/recognize`, `POST /v1/predict` (the classic
//!   text-recognizer lambda shape), `POST /v1/flag`, `GET /v1/model`, `/healthz`, `/readyz`,
//!   `/metrics`, and the demo page at `/`.
//!
//! Every API feeds the same path ([`state::ServeState::recognize`]): admission (bounded; beyond
//! it load is shed), limits checked before decoding, preprocessing on the blocking pool, then
//! the dynamic [`batcher`] whose inference threads run the forward passes. The model sits in a
//! [`reload::ModelSlot`] and is swapped atomically on SIGHUP or when `--model-pointer` changes.
//! SIGTERM/SIGINT: readiness and gRPC health go NOT_SERVING, listeners stop accepting,
//! in-flight requests finish, the queue drains, the process exits 0.

pub mod args;
pub mod batcher;
pub mod client;
pub mod demo;
pub mod engine;
pub mod flags;
pub mod grpc;
pub mod handoff;
pub mod http;
pub mod kserve;
pub mod limits;
pub mod metrics;
pub mod proto;
pub mod reload;
pub mod state;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;

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
use state::ServeState;

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
    done: tokio::task::JoinHandle<Result<()>>,
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

/// The tch device named by `--device`.
fn parse_device(s: &str) -> Result<tch::Device> {
    let d: textrec_contract::config::Device =
        serde_json::from_value(serde_json::Value::String(s.to_lowercase())).map_err(|_| {
            textrec_contract::exit::ConfigError::new(format!("--device {s}: use cpu, cuda or auto"))
        })?;
    crate::device::select(d)
}

/// Start a server loading models with libtorch on `--device`; returns once the first model is
/// in service (or, with `--model-pointer`, once the first attempt has been made).
pub async fn start(args: ServeArgs) -> Result<RunningServer> {
    let device = parse_device(&args.device)?;
    let loader: Loader = Arc::new(move |url: String| {
        Box::pin(async move { engine::load_model(&url, device).await })
    });
    start_with_loader(args, loader).await
}

fn service_names() -> [&'static str; 3] {
    [
        "",
        <RecognizerServer<RecognizerService> as NamedService>::NAME,
        <GrpcInferenceServiceServer<KServeService> as NamedService>::NAME,
    ]
}

/// [`start`] with a custom model loader.
pub async fn start_with_loader(args: ServeArgs, loader: Loader) -> Result<RunningServer> {
    if args.model.is_none() && args.model_pointer.is_none() {
        return Err(textrec_contract::exit::ConfigError::new(
            "serve needs --model URL or --model-pointer FILE_OR_URL",
        )
        .into());
    }
    let threads = thread_plan(&args)?;
    tracing::info!(
        inference_threads = threads.inference,
        torch_threads = threads.torch,
        max_batch = args.max_batch,
        max_batch_columns = args.max_batch_columns,
        "inference configured"
    );
    let metrics = Arc::new(Metrics::new());
    let slot = Arc::new(ModelSlot::new(metrics.clone()));
    let max_batch = args.max_batch as usize;
    let max_queue = args.max_queue as usize;
    let batcher = Batcher::start(
        BatchConfig {
            max_batch,
            max_wait: std::time::Duration::from_millis(args.max_wait_ms),
            queue_capacity: max_queue,
            threads: threads.inference,
            max_columns: args.max_batch_columns.map(|c| c as usize),
        },
        metrics.clone(),
    );
    let flags = args
        .flags
        .as_deref()
        .map(FlagStore::open)
        .transpose()
        .context("cannot open the --flags folder")?;
    let limits = Limits {
        max_request_bytes: args.max_request_bytes,
        max_pixels: args.max_pixels,
    };
    let state = Arc::new(ServeState::new(
        slot.clone(),
        batcher.clone(),
        max_queue,
        limits,
        args.request_timeout,
        metrics,
        flags,
        max_batch,
        std::time::Duration::from_millis(args.max_wait_ms),
    ));

    let grpc_listener = TcpListener::bind(args.grpc_addr)
        .await
        .with_context(|| format!("cannot listen on {} (--grpc-addr)", args.grpc_addr))?;
    let http_listener = TcpListener::bind(args.http_addr)
        .await
        .with_context(|| format!("cannot listen on {} (--http-addr)", args.http_addr))?;
    let grpc_addr = grpc_listener.local_addr()?;
    let http_addr = http_listener.local_addr()?;

    let (health, health_service) = tonic_health::server::health_reporter();
    for name in service_names() {
        health
            .set_service_status(name, tonic_health::ServingStatus::NotServing)
            .await;
    }
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("cannot build the reflection service")?;
    // Room for a batch of images at the size limit; single images are checked precisely later,
    // with a specific message.
    let message_limit = args.max_request_bytes.saturating_mul(4).max(4 << 20);
    let recognizer = RecognizerServer::new(RecognizerService::new(state.clone()))
        .max_decoding_message_size(message_limit)
        .max_encoding_message_size(usize::MAX);
    let kserve = GrpcInferenceServiceServer::new(KServeService::new(state.clone()))
        .max_decoding_message_size(message_limit);

    let shutdown = CancellationToken::new();
    let stop_listening = CancellationToken::new();
    let grpc_task = {
        let stop = stop_listening.clone();
        let shutdown = shutdown.clone();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(grpc_listener);
        let server = tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .add_service(health_service)
            .add_service(reflection)
            .add_service(recognizer)
            .add_service(kserve);
        tokio::spawn(async move {
            let r = server
                .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
                .await;
            if let Err(e) = &r {
                tracing::error!("gRPC server failed: {e}");
                shutdown.cancel();
            }
            r.map_err(anyhow::Error::from)
        })
    };
    let http_task = {
        let stop = stop_listening.clone();
        let shutdown = shutdown.clone();
        let app = http::router(state.clone());
        tokio::spawn(async move {
            let r = axum::serve(http_listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
            if let Err(e) = &r {
                tracing::error!("HTTP server failed: {e}");
                shutdown.cancel();
            }
            r.map_err(anyhow::Error::from)
        })
    };

    let reloader = Arc::new(Reloader::new(
        slot.clone(),
        loader,
        args.model.clone(),
        args.model_pointer.clone(),
    ));
    let reload_task = reloader
        .clone()
        .spawn(args.reload_interval, stop_listening.clone());

    // gRPC health follows the model slot: SERVING from the first model on.
    let health_at_start = health.clone();
    let health_task = {
        let health = health.clone();
        let mut versions = slot.watch_version();
        let stop = stop_listening.clone();
        tokio::spawn(async move {
            loop {
                if versions.borrow_and_update().is_some() {
                    for name in service_names() {
                        health
                            .set_service_status(name, tonic_health::ServingStatus::Serving)
                            .await;
                    }
                }
                tokio::select! {
                    r = versions.changed() => if r.is_err() { break },
                    _ = stop.cancelled() => break,
                }
            }
        })
    };

    let done = {
        let state = state.clone();
        let shutdown = shutdown.clone();
        let grace = args.shutdown_grace;
        tokio::spawn(async move {
            shutdown.cancelled().await;
            tracing::info!("shutting down: finishing in-flight requests");
            state.begin_shutdown();
            for name in service_names() {
                health
                    .set_service_status(name, tonic_health::ServingStatus::NotServing)
                    .await;
            }
            stop_listening.cancel();
            let servers = async {
                let (g, h) = tokio::join!(grpc_task, http_task);
                g.context("gRPC server task")??;
                h.context("HTTP server task")??;
                anyhow::Ok(())
            };
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
            let _ = health_task.await;
            let _ = reload_task.await;
            let b = state.batcher.clone();
            tokio::task::spawn_blocking(move || b.close())
                .await
                .context("inference threads")?;
            tracing::info!("shut down");
            result
        })
    };

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
        for name in service_names() {
            health_at_start
                .set_service_status(name, tonic_health::ServingStatus::Serving)
                .await;
        }
    }
    tracing::info!(grpc = %grpc_addr, http = %http_addr, "serving");
    Ok(server)
}

/// Resolves on SIGTERM or SIGINT.
async fn termination_signal() {
    match textrec_contract::signals::Termination::install() {
        Ok(mut t) => tracing::info!("{}", t.recv().await.describe()),
        Err(e) => {
            tracing::warn!("cannot listen for SIGTERM: {e}; stopping on Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// The inference and libtorch thread counts for `args` on this machine.
fn thread_plan(args: &ServeArgs) -> Result<ThreadPlan> {
    let cuda = parse_device(&args.device)?.is_cuda();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    Ok(ThreadPlan::resolve(
        args.inference_threads,
        args.torch_threads,
        cuda,
        cores,
    ))
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
    crate::device::set_threads(thread_plan(&args)?.torch);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("textrec-serve")
        .build()?;
    rt.block_on(async move {
        // Install the handlers before loading, so a SIGTERM during a slow load is graceful too.
        let signal = tokio::spawn(termination_signal());
        let server = start(args).await?;
        tokio::select! {
            _ = signal => server.shutdown(),
            _ = server.shutdown_requested() => {}
        }
        server.wait().await?;
        Ok(textrec_contract::exit::SUCCESS)
    })
}
