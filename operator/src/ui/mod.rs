//! A read-only dashboard at `/ui`: server-rendered HTML with inline SVG charts (no scripts, no
//! external files, so it works offline and behind any proxy).
//!
//! - `/ui`: TrainingRuns (phase, trials done/total, best model, age) and ModelDeployments,
//!   filtered by `?namespace=` and `?selector=` (a label selector as `kubectl -l` takes it);
//! - `/ui/runs/NS/NAME`: every trial's validation CER and training loss against step and
//!   against wall-clock time, overlaid, with a legend (`?log=1`: logarithmic axes); the trials'
//!   searched hyperparameters against the objective, sortable (`?sort=COLUMN&desc=1`), with
//!   restarts and preemptions;
//! - `/ui/deployments/NS/NAME`: the model served, the revision history (promotions, rollbacks,
//!   spec changes), refused candidates, and a link to the demo page.
//!
//! The operator serves it on its metrics/health port ([`crate::manager`]), from watch caches of
//! its own ([`data::ClusterObjects`]); `local run` serves it from its state
//! ([`data::SharedObjects`]). Curves come from each trial's `metrics.jsonl`
//! ([`data::MetricsCache`]), downsampled on the server ([`downsample`]) and drawn by [`svg`].
//! Pages are built by [`pages`] from plain inputs; everything user-supplied is escaped
//! ([`html`]).

pub mod data;
pub mod downsample;
pub mod html;
pub mod pages;
pub mod svg;

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use kube::ResourceExt;

use data::{namespace_of, MetricsCache, Objects};

/// What the dashboard's handlers share.
pub struct Ui {
    /// Where the objects come from.
    pub objects: Arc<dyn Objects>,
    /// Parsed `metrics.jsonl` files.
    pub metrics: MetricsCache,
}

impl Ui {
    /// A dashboard over `objects`.
    pub fn new(objects: Arc<dyn Objects>) -> Arc<Self> {
        Arc::new(Self {
            objects,
            metrics: MetricsCache::default(),
        })
    }
}

/// The dashboard's routes (`/ui`, `/ui/runs/{ns}/{name}`, `/ui/deployments/{ns}/{name}`), to
/// merge into a server's router.
pub fn router(ui: Arc<Ui>) -> Router {
    Router::new()
        .route("/ui", get(list))
        .route("/ui/", get(|| async { Redirect::permanent("/ui") }))
        .route("/ui/runs/{ns}/{name}", get(run))
        .route("/ui/deployments/{ns}/{name}", get(deployment))
        .with_state(ui)
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'; frame-ancestors 'none'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

async fn list(State(ui): State<Arc<Ui>>, Query(q): Query<HashMap<String, String>>) -> Response {
    let filter = pages::ListFilter {
        namespace: q
            .get("namespace")
            .cloned()
            .unwrap_or_default()
            .trim()
            .into(),
        selector: q.get("selector").cloned().unwrap_or_default(),
    };
    let runs = ui.objects.runs();
    let deployments = ui.objects.deployments();
    html(
        StatusCode::OK,
        pages::runs_page(&runs, &deployments, &filter, now()),
    )
}

async fn run(
    State(ui): State<Arc<Ui>>,
    Path((ns, name)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let Some(run) = ui
        .objects
        .runs()
        .into_iter()
        .find(|r| r.name_any() == name && namespace_of(r.as_ref()) == ns)
    else {
        return html(
            StatusCode::NOT_FOUND,
            pages::not_found(&format!("No TrainingRun {name} in namespace {ns}.")),
        );
    };
    let flag = |k: &str| q.get(k).is_some_and(|v| v == "1" || v == "true");
    let view = pages::RunView {
        log: flag("log"),
        sort: q.get("sort").filter(|s| !s.is_empty()).cloned(),
        desc: flag("desc"),
    };
    let (curves, errors) = ui.metrics.run(&run).await;
    let body = pages::run_page(&run, &curves, &errors, &view, now());
    html(StatusCode::OK, body)
}

async fn deployment(
    State(ui): State<Arc<Ui>>,
    Path((ns, name)): Path<(String, String)>,
) -> Response {
    let Some(md) = ui
        .objects
        .deployments()
        .into_iter()
        .find(|d| d.name_any() == name && namespace_of(d.as_ref()) == ns)
    else {
        return html(
            StatusCode::NOT_FOUND,
            pages::not_found(&format!("No ModelDeployment {name} in namespace {ns}.")),
        );
    };
    let demo = ui.objects.demo_url(&md);
    let hint = ui.objects.demo_hint(&md);
    html(
        StatusCode::OK,
        pages::deployment_page(&md, demo.as_deref(), hint.as_deref(), now()),
    )
}
