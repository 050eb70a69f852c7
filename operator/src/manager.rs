//! `textrec-operator run`: the controller manager.
//!
//! Startup: serve `/healthz`, `/readyz`, `/metrics`; wait until the API server answers; win the
//! leader Lease; then run both controllers until SIGTERM/SIGINT (graceful: in-flight reconciles
//! finish, the Lease is released so a standby takes over at once) or until leadership is lost
//! (exit non-zero, so the pod restarts as a standby rather than risk two active leaders).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{watcher, Controller, WatchStreamExt};
use kube::{Api, Client, Resource, ResourceExt};
use tokio::sync::watch;

use crate::controller::cache::{slim_deployment, slim_job, slim_pod, slim_run};
use crate::controller::{self, KubeEvents, Shared};
use crate::crd::{ModelDeployment, TrainingRun};
use crate::defaults::Defaults;
use crate::http::{router, Health};
use crate::leader::{on_error, ErrorAction, LeaderElector};
use crate::metrics::Metrics;
use crate::naming::{MANAGED_SELECTOR, RUN_LABEL};
use crate::progress::{NoProgress, ProgressSource, StorageProgress};
use crate::ui::{self, data::ClusterObjects};

/// TrainingRun events buffered for each controller subscribed to the shared watch; a slow
/// subscriber holds the watch back once its buffer is full.
const RUN_SUBSCRIBE_BUFFER: usize = 1024;

/// Options of `textrec-operator run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunOptions {
    /// Address of /metrics, /healthz, /readyz and the dashboard (/ui).
    #[arg(long, env = "TEXTREC_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,
    /// Do not serve the read-only dashboard at /ui (it keeps its own watch of TrainingRuns and
    /// ModelDeployments in every replica, and reads trials' metrics.jsonl from storage).
    #[arg(long)]
    pub no_ui: bool,
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "TEXTREC_WATCH_NAMESPACE")]
    pub namespace: Option<String>,
    /// Namespace of the leader Lease (default: the pod's namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "textrec-system")]
    pub lease_namespace: String,
    /// Name of the leader Lease.
    #[arg(long, default_value = "textrec-operator-leader")]
    pub lease_name: String,
    /// This replica's identity in the Lease (default: the pod name).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Seconds a Lease stays valid without renewal.
    #[arg(long, default_value_t = 15)]
    pub lease_duration_s: u64,
    /// Skip leader election (single replica, local development).
    #[arg(long)]
    pub no_leader_election: bool,
    /// Seconds between progress reads of runs with active trials.
    #[arg(long, default_value_t = 30)]
    pub progress_interval_s: u64,
    /// Do not read progress.json from storage (status then updates when pods end).
    #[arg(long)]
    pub no_progress: bool,
    /// Reconciles running at once per controller.
    #[arg(long, default_value_t = 8)]
    pub concurrency: u16,
    /// Log lines as JSON objects (for log pipelines) or as text (for humans).
    #[arg(long, env = "TEXTREC_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,
    /// Defaults for TrainingRuns and ModelDeployments that leave a field unset.
    #[command(flatten)]
    pub defaults: Defaults,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line.
    #[default]
    Json,
    /// Human-readable text.
    Text,
}

fn api<K>(client: &Client, ns: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

fn shutdown_future(
    rx: &watch::Receiver<bool>,
) -> impl std::future::Future<Output = ()> + Send + Sync + 'static {
    let mut rx = rx.clone();
    async move {
        let _ = rx.wait_for(|stop| *stop).await;
    }
}

fn drain<S: Stream + Send + 'static>(s: S) -> impl std::future::Future<Output = ()> + Send {
    s.for_each(|r| async move {
        let _ = r;
    })
}

/// Run both controllers until `stop` turns true.
pub async fn run_controllers(
    client: Client,
    opts: &RunOptions,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
) {
    let ns = opts.namespace.as_deref();
    let managed = watcher::Config::default().labels(MANAGED_SELECTOR);

    // TrainingRun controller, with label-selected caches of Jobs and Pods that also trigger it.
    let (jobs, job_writer) = reflector::store();
    let job_stream = watcher(api::<Job>(&client, ns), managed.clone())
        .default_backoff()
        .modify(slim_job)
        .reflect(job_writer)
        .touched_objects();
    let (pods, pod_writer) = reflector::store();
    let pod_stream = watcher(api::<Pod>(&client, ns), managed.clone())
        .default_backoff()
        .modify(slim_pod)
        .reflect(pod_writer)
        .touched_objects();
    let progress: Arc<dyn ProgressSource> = if opts.no_progress {
        Arc::new(NoProgress)
    } else {
        Arc::new(StorageProgress::default())
    };
    let job_index = jobs.clone();
    let run_ctx = Arc::new(controller::training_run::Context {
        client: client.clone(),
        jobs,
        pods,
        progress,
        history: Default::default(),
        shared: shared.clone(),
        progress_interval: Duration::from_secs(opts.progress_interval_s),
        clock: controller::training_run::now,
    });
    // One watch of TrainingRuns, one slimmed cache (no managedFields), shared by both
    // controllers: each subscribes to the objects the reflector applies. Deletions are not
    // broadcast; the TrainingRun controller never needed them (finished Jobs are garbage
    // collected through owner references) and a ModelDeployment notices a deleted run at its
    // next periodic reconcile.
    let (run_store, run_writer) = reflector::store_shared(RUN_SUBSCRIBE_BUFFER);
    let run_events_for_runs = run_writer
        .subscribe()
        .expect("a shared store hands out subscriptions");
    let run_events_for_deployments = run_writer
        .subscribe()
        .expect("a shared store hands out subscriptions");
    let run_watch = watcher(api::<TrainingRun>(&client, ns), watcher::Config::default())
        .default_backoff()
        .modify(slim_run)
        .reflect_shared(run_writer)
        .take_until(shutdown_future(&stop));
    let run_ctrl = Controller::for_shared_stream(run_events_for_runs, run_store.clone())
        .with_config(
            kube::runtime::controller::Config::default()
                .concurrency(opts.concurrency)
                .debounce(Duration::from_millis(500)),
        )
        .owns_stream(job_stream)
        .watches_stream(pod_stream, move |pod: Pod| {
            // Pods are owned by their Job, which the run owns: map through the Job cache (the run
            // label alone may hold a shortened name).
            let ns = pod.namespace().unwrap_or_default();
            let via_job = pod
                .labels()
                .get("batch.kubernetes.io/job-name")
                .and_then(|j| job_index.get(&ObjectRef::<Job>::new(j).within(&ns)))
                .and_then(|j| {
                    j.owner_references()
                        .iter()
                        .find(|o| o.kind == "TrainingRun")
                        .map(|o| o.name.clone())
                });
            via_job
                .or_else(|| pod.labels().get(RUN_LABEL).cloned())
                .map(|r| ObjectRef::<TrainingRun>::new(&r).within(&ns))
        })
        .graceful_shutdown_on(shutdown_future(&stop))
        .run(
            controller::training_run::reconcile,
            controller::training_run::error_policy,
            run_ctx,
        );

    // ModelDeployment controller, with the shared TrainingRun cache (candidates) and Deployments.
    let (deployments, dep_writer) = reflector::store();
    let dep_stream = watcher(api::<Deployment>(&client, ns), managed)
        .default_backoff()
        .modify(slim_deployment)
        .reflect(dep_writer)
        .touched_objects();
    let md_ctx = Arc::new(controller::model_deployment::Context {
        client: client.clone(),
        runs: run_store,
        deployments,
        shared,
        clock: controller::training_run::now,
    });
    let md_ctrl = Controller::new(
        api::<ModelDeployment>(&client, ns),
        watcher::Config::default(),
    )
    .with_config(kube::runtime::controller::Config::default().concurrency(opts.concurrency));
    let md_store = md_ctrl.store();
    let md_ctrl = md_ctrl
        .owns_stream(dep_stream)
        .watches_shared_stream(run_events_for_deployments, move |run: Arc<TrainingRun>| {
            controller::model_deployment::deployments_for_run(&md_store, &run)
        })
        .graceful_shutdown_on(shutdown_future(&stop))
        .run(
            controller::model_deployment::reconcile,
            controller::model_deployment::error_policy,
            md_ctx,
        );

    tokio::join!(drain(run_watch), drain(run_ctrl), drain(md_ctrl));
}

/// Install logging (level from `RUST_LOG`, default `info`): JSON lines or text. A line logged
/// inside a reconcile carries that reconcile's span (JSON: `span` with controller, namespace,
/// object, generation, trace_id; text: the same fields before the message).
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,kube=warn".into());
    let _ = match format {
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => tracing_subscriber::fmt().with_env_filter(filter).try_init(),
    };
}

/// Stops a background task when dropped (however `run` returns).
struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(h) = &self.0 {
            h.abort();
        }
    }
}

/// `textrec-operator run`.
pub async fn run(opts: RunOptions) -> Result<()> {
    init_logging(opts.log_format);
    let client = Client::try_default()
        .await
        .context("cannot configure a Kubernetes client")?;
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health {
        metrics: metrics.clone(),
        ready: Default::default(),
    });
    let (stop_tx, stop_rx) = watch::channel(false);

    let listener = tokio::net::TcpListener::bind(opts.http_addr)
        .await
        .with_context(|| format!("cannot listen on {}", opts.http_addr))?;
    // The dashboard watches on its own, in standby replicas too (a Service spreads requests
    // over all replicas, and a standby runs no controllers).
    let (app, ui_watch) = if opts.no_ui {
        (router(health.clone()), None)
    } else {
        let (objects, watch) =
            ClusterObjects::watch(&client, opts.namespace.as_deref(), opts.defaults.clone());
        let app = router(health.clone()).merge(ui::router(ui::Ui::new(Arc::new(objects))));
        (app, Some(tokio::spawn(watch)))
    };
    let server = axum::serve(listener, app).with_graceful_shutdown(shutdown_future(&stop_rx));
    let http = tokio::spawn(async move { server.await });
    tracing::info!(
        addr = %opts.http_addr,
        "serving /metrics /healthz /readyz{}",
        if opts.no_ui { "" } else { " /ui" }
    );
    let _ui_watch = AbortOnDrop(ui_watch);

    let version = client
        .apiserver_version()
        .await
        .context("the API server does not answer")?;
    tracing::info!(version = %version.git_version, "connected to the API server");
    health.ready.store(true, Ordering::Relaxed);

    let identity = opts.identity.clone().unwrap_or_else(|| {
        std::env::var("HOSTNAME")
            .unwrap_or_else(|_| format!("textrec-operator-{}", std::process::id()))
    });
    let reporter = Reporter {
        controller: "textrec-operator".into(),
        instance: Some(identity.clone()),
    };
    let shared = Arc::new(Shared {
        metrics: metrics.clone(),
        events: Arc::new(KubeEvents(Recorder::new(client.clone(), reporter))),
        backoff: Default::default(),
        defaults: opts.defaults.clone(),
    });

    let lease_duration = Duration::from_secs(opts.lease_duration_s.max(5));
    let renew_every = lease_duration / 3;
    let elector = (!opts.no_leader_election).then(|| {
        LeaderElector::new(
            Api::namespaced(client.clone(), &opts.lease_namespace),
            &opts.lease_name,
            &identity,
            lease_duration,
        )
    });

    let sig = textrec_contract::signals::stop_requested();
    tokio::pin!(sig);
    if let Some(e) = &elector {
        tracing::info!(lease = %opts.lease_name, identity = %identity, "waiting for leadership");
        let mut last_error: Option<String> = None;
        loop {
            match e.try_acquire_or_renew().await {
                Ok(true) => break,
                Ok(false) => last_error = None,
                Err(err) => {
                    match on_error(&err, &opts.lease_namespace, last_error.as_deref()) {
                        ErrorAction::Fail(msg) => {
                            let _ = stop_tx.send(true);
                            let _ = http.await;
                            bail!(msg);
                        }
                        ErrorAction::Retry { log: true, hint } => tracing::warn!(
                            error = %err,
                            hint = hint.as_deref().unwrap_or(""),
                            "leader election failed; retrying (logged again only if the error changes)"
                        ),
                        ErrorAction::Retry { log: false, .. } => {
                            tracing::debug!(error = %err, "leader election")
                        }
                    }
                    last_error = Some(err.to_string());
                }
            }
            tokio::select! {
                _ = &mut sig => { let _ = stop_tx.send(true); let _ = http.await; return Ok(()); }
                _ = tokio::time::sleep(renew_every) => {}
            }
        }
    }
    metrics.set_leader(true);
    tracing::info!(identity = %identity, "leading; starting controllers");

    let controllers = run_controllers(client.clone(), &opts, shared, stop_rx.clone());
    tokio::pin!(controllers);
    let renew = async {
        let Some(e) = &elector else {
            return std::future::pending::<Result<()>>().await;
        };
        let mut last_ok = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(renew_every).await;
            match e.try_acquire_or_renew().await {
                Ok(true) => last_ok = tokio::time::Instant::now(),
                Ok(false) => bail!("leadership lost to another replica"),
                Err(err) => {
                    tracing::warn!(error = %err, "cannot renew the leader Lease");
                    if last_ok.elapsed() >= lease_duration {
                        bail!("could not renew the leader Lease for {lease_duration:?}");
                    }
                }
            }
        }
    };
    let outcome = tokio::select! {
        _ = &mut sig => { tracing::info!("shutting down"); Ok(()) }
        r = renew => r,
        _ = &mut controllers => Ok(()),
    };
    let _ = stop_tx.send(true);
    // Let in-flight reconciles finish (bounded), then hand leadership over.
    let _ = tokio::time::timeout(Duration::from_secs(20), &mut controllers).await;
    metrics.set_leader(false);
    if let Some(e) = &elector {
        if outcome.is_ok() {
            if let Err(err) = e.release().await {
                tracing::warn!(error = %err, "cannot release the leader Lease");
            }
        }
    }
    let _ = http.await;
    outcome
}
