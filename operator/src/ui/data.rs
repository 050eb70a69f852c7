//! Where the dashboard's data comes from: the objects ([`Objects`]: the operator's watch
//! caches, or the local runner's state) and the trials' curves ([`MetricsCache`]: each trial's
//! `metrics.jsonl` in the run's storage, parsed once per version of the file).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::future::join_all;
use futures::{Future, StreamExt};
use kube::runtime::reflector::{self, Store as Cache};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, ResourceExt};
use serde::Deserialize;
use textrec_contract::metrics::RecordKind;
use textrec_contract::{layout, Store};

use super::downsample::min_max_by;
use crate::controller::cache::{slim_model_deployment, slim_run};
use crate::crd::{ModelDeployment, TrainingRun};
use crate::defaults::Defaults;
use crate::naming::serving_name;
use textrec_contract::layout::trial_output;

/// The objects the dashboard shows.
pub trait Objects: Send + Sync {
    /// Every TrainingRun, with the operator's defaults filled in (storage).
    fn runs(&self) -> Vec<Arc<TrainingRun>>;
    /// Every ModelDeployment.
    fn deployments(&self) -> Vec<Arc<ModelDeployment>>;
    /// Where a browser reaches the deployment's demo page, if known.
    fn demo_url(&self, md: &ModelDeployment) -> Option<String>;
    /// How to reach the demo page when its URL is not reachable from everywhere.
    fn demo_hint(&self, _md: &ModelDeployment) -> Option<String> {
        None
    }
}

/// The namespace an object is shown under (`default` for a local manifest without one).
pub fn namespace_of<K: ResourceExt>(o: &K) -> String {
    o.namespace().unwrap_or_else(|| "default".into())
}

/// The operator's objects: reflector caches of TrainingRuns and ModelDeployments, kept by
/// watches of their own in every replica (a standby has no controller caches, and its
/// dashboard must not be empty).
#[derive(Clone)]
pub struct ClusterObjects {
    runs: Cache<TrainingRun>,
    deployments: Cache<ModelDeployment>,
    defaults: Defaults,
}

impl ClusterObjects {
    /// Caches of the TrainingRuns and ModelDeployments of `namespace` (all when `None`), and the
    /// future that keeps them current (run it until shutdown).
    pub fn watch(
        client: &Client,
        namespace: Option<&str>,
        defaults: Defaults,
    ) -> (Self, impl Future<Output = ()> + Send + 'static) {
        let (runs_api, md_api): (Api<TrainingRun>, Api<ModelDeployment>) = match namespace {
            Some(ns) => (
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
            ),
            None => (Api::all(client.clone()), Api::all(client.clone())),
        };
        let (runs, run_writer) = reflector::store();
        let (deployments, md_writer) = reflector::store();
        let run_stream = watcher(runs_api, watcher::Config::default())
            .default_backoff()
            .modify(slim_run)
            .reflect(run_writer);
        let md_stream = watcher(md_api, watcher::Config::default())
            .default_backoff()
            .modify(slim_model_deployment)
            .reflect(md_writer);
        let fut = async move {
            let a = run_stream.for_each(|_| async {});
            let b = md_stream.for_each(|_| async {});
            futures::join!(a, b);
        };
        (
            Self {
                runs,
                deployments,
                defaults,
            },
            fut,
        )
    }
}

impl Objects for ClusterObjects {
    fn runs(&self) -> Vec<Arc<TrainingRun>> {
        self.runs
            .state()
            .into_iter()
            .map(|r| self.defaults.run(r))
            .collect()
    }
    fn deployments(&self) -> Vec<Arc<ModelDeployment>> {
        self.deployments.state()
    }
    fn demo_url(&self, md: &ModelDeployment) -> Option<String> {
        // The serving Service's in-cluster address (reachable through a port-forward or from
        // inside the cluster).
        md.status.as_ref()?.model.as_ref()?;
        Some(format!(
            "http://{}.{}.svc:{}/",
            serving_name(&md.name_any()),
            namespace_of(md),
            md.spec.ports.http
        ))
    }
    fn demo_hint(&self, md: &ModelDeployment) -> Option<String> {
        md.status.as_ref()?.model.as_ref()?;
        Some(format!(
            "in-cluster address; from elsewhere: kubectl -n {} port-forward svc/{} 8080:{}, then http://localhost:8080/",
            namespace_of(md),
            serving_name(&md.name_any()),
            md.spec.ports.http
        ))
    }
}

/// A snapshot of objects that its owner replaces as they change: the local runner's state.
#[derive(Default)]
pub struct SharedObjects {
    inner: RwLock<Snapshot>,
}

/// What [`SharedObjects`] holds.
#[derive(Default, Clone)]
pub struct Snapshot {
    /// TrainingRuns.
    pub runs: Vec<Arc<TrainingRun>>,
    /// ModelDeployments.
    pub deployments: Vec<Arc<ModelDeployment>>,
    /// Demo page URL by deployment name.
    pub demo: BTreeMap<String, String>,
}

impl SharedObjects {
    /// Replace the snapshot.
    pub fn set(&self, snapshot: Snapshot) {
        *self.inner.write().expect("ui snapshot") = snapshot;
    }
}

impl Objects for SharedObjects {
    fn runs(&self) -> Vec<Arc<TrainingRun>> {
        self.inner.read().expect("ui snapshot").runs.clone()
    }
    fn deployments(&self) -> Vec<Arc<ModelDeployment>> {
        self.inner.read().expect("ui snapshot").deployments.clone()
    }
    fn demo_url(&self, md: &ModelDeployment) -> Option<String> {
        self.inner
            .read()
            .expect("ui snapshot")
            .demo
            .get(&md.name_any())
            .cloned()
    }
}

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Eq(String, String),
    Ne(String, String),
    Exists(String),
    Absent(String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

/// A Kubernetes label selector, as `kubectl get -l` takes it: `a=b`, `a==b`, `a!=b`, `a`,
/// `!a`, `a in (x,y)`, `a notin (x,y)`, comma-separated (all must hold).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector(Vec<Requirement>);

impl Selector {
    /// Parse a selector; the error says which term is wrong.
    pub fn parse(s: &str) -> Result<Self, String> {
        // Split on commas outside parentheses.
        let mut terms = Vec::new();
        let (mut depth, mut cur) = (0usize, String::new());
        for c in s.chars() {
            match c {
                '(' => {
                    depth += 1;
                    cur.push(c)
                }
                ')' => {
                    depth = depth.saturating_sub(1);
                    cur.push(c)
                }
                ',' if depth == 0 => terms.push(std::mem::take(&mut cur)),
                c => cur.push(c),
            }
        }
        terms.push(cur);
        let mut reqs = Vec::new();
        for t in terms.iter().map(|t| t.trim()).filter(|t| !t.is_empty()) {
            let bad = || format!("cannot read label selector term `{t}`");
            let key_ok = |k: &str| {
                !k.is_empty()
                    && k.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
            };
            let set = |rest: &str| -> Option<Vec<String>> {
                let inner = rest.trim().strip_prefix('(')?.strip_suffix(')')?;
                Some(
                    inner
                        .split(',')
                        .map(|v| v.trim().to_string())
                        .filter(|v| !v.is_empty())
                        .collect(),
                )
            };
            let req = if let Some((k, v)) = t.split_once("!=") {
                Requirement::Ne(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = t.split_once("==").or_else(|| t.split_once('=')) {
                Requirement::Eq(k.trim().into(), v.trim().into())
            } else if let Some(k) = t.strip_prefix('!') {
                Requirement::Absent(k.trim().into())
            } else if let Some((k, rest)) = t.split_once(" notin ") {
                Requirement::NotIn(k.trim().into(), set(rest).ok_or_else(bad)?)
            } else if let Some((k, rest)) = t.split_once(" in ") {
                Requirement::In(k.trim().into(), set(rest).ok_or_else(bad)?)
            } else {
                Requirement::Exists(t.into())
            };
            let key = match &req {
                Requirement::Eq(k, _)
                | Requirement::Ne(k, _)
                | Requirement::Exists(k)
                | Requirement::Absent(k)
                | Requirement::In(k, _)
                | Requirement::NotIn(k, _) => k,
            };
            if !key_ok(key) {
                return Err(bad());
            }
            reqs.push(req);
        }
        Ok(Self(reqs))
    }

    /// Whether `labels` satisfy every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| match r {
            Requirement::Eq(k, v) => labels.get(k) == Some(v),
            Requirement::Ne(k, v) => labels.get(k) != Some(v),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::Absent(k) => !labels.contains_key(k),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
        })
    }
}

/// One sample of a trial's curve.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Optimizer step.
    pub step: f64,
    /// Wall-clock time, seconds since the Unix epoch.
    pub time: f64,
    /// The value.
    pub value: f64,
}

/// A trial's curves, from its `metrics.jsonl`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrialCurves {
    /// Validation CER at each evaluation.
    pub cer: Vec<Sample>,
    /// Training loss at each training record.
    pub loss: Vec<Sample>,
}

/// Samples kept per curve in the cache: charts downsample further, to their width.
pub const CACHE_POINTS: usize = 2000;

/// The fields of a `metrics.jsonl` line the dashboard draws (the rest is skipped unparsed).
#[derive(Deserialize)]
struct Line {
    kind: RecordKind,
    step: u64,
    time: DateTime<Utc>,
    #[serde(default)]
    loss: Option<f64>,
    #[serde(default)]
    cer: Option<f64>,
}

fn push(series: &mut Vec<Sample>, s: Sample) {
    // A trial that resumed from a checkpoint writes the steps after it again: the new attempt
    // replaces what the lost one wrote.
    while series.last().is_some_and(|l| l.step >= s.step) {
        series.pop();
    }
    series.push(s);
}

/// Parse a `metrics.jsonl` (unreadable lines, such as a line being written, are skipped) and
/// reduce each curve to at most [`CACHE_POINTS`] samples, keeping its extremes.
pub fn parse_metrics(bytes: &[u8]) -> TrialCurves {
    let mut c = TrialCurves::default();
    for line in bytes.split(|b| *b == b'\n') {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let Ok(l) = serde_json::from_slice::<Line>(line) else {
            continue;
        };
        let at = |value| Sample {
            step: l.step as f64,
            time: l.time.timestamp_micros() as f64 / 1e6,
            value,
        };
        match l.kind {
            RecordKind::Train => {
                if let Some(v) = l.loss {
                    push(&mut c.loss, at(v));
                }
            }
            RecordKind::Eval => {
                if let Some(v) = l.cer {
                    push(&mut c.cer, at(v));
                }
            }
        }
    }
    c.cer = min_max_by(&c.cer, CACHE_POINTS, |s| s.value);
    c.loss = min_max_by(&c.loss, CACHE_POINTS, |s| s.value);
    c
}

struct Cached {
    size: u64,
    etag: Option<String>,
    checked: Instant,
    curves: Arc<TrialCurves>,
}

/// Parsed `metrics.jsonl` files by trial URL, each re-read only when its size or ETag changed
/// (checked at most every [`MetricsCache::RECHECK`]; never again once the trial finished).
#[derive(Default)]
pub struct MetricsCache {
    stores: Mutex<HashMap<String, Store>>,
    entries: Mutex<HashMap<String, Cached>>,
}

/// Trials whose curves are cached at most; beyond it the cache starts over.
const MAX_ENTRIES: usize = 4096;

impl MetricsCache {
    /// How long a cached file is trusted without asking the storage.
    pub const RECHECK: Duration = Duration::from_secs(5);

    fn store(&self, storage_url: &str) -> anyhow::Result<Store> {
        let mut map = self.stores.lock().expect("ui stores");
        if let Some(s) = map.get(storage_url) {
            return Ok(s.clone());
        }
        if map.len() > 256 {
            map.clear();
        }
        // Never create local folders: a file:// storage the process cannot see is skipped.
        if let Some(path) = storage_url.strip_prefix("file://") {
            if !std::path::Path::new(path).exists() {
                anyhow::bail!("{storage_url} is not mounted here");
            }
        }
        let s = Store::open(storage_url)?;
        map.insert(storage_url.to_string(), s.clone());
        Ok(s)
    }

    /// The curves of one trial of `run`, or `None` when it has no `metrics.jsonl` yet.
    /// `finished`: the trial is over, so a cached parse is final.
    pub async fn trial(
        &self,
        run: &TrainingRun,
        trial: &str,
        finished: bool,
    ) -> anyhow::Result<Option<Arc<TrialCurves>>> {
        let storage = &run.spec.storage.url;
        if !storage.contains("://") {
            // No storage (the run is invalid, or no default is configured): nothing to read.
            return Ok(None);
        }
        let key = trial_output(storage, &run.name_any(), trial);
        let stale = {
            let entries = self.entries.lock().expect("ui metrics cache");
            match entries.get(&key) {
                Some(c) if finished || c.checked.elapsed() < Self::RECHECK => {
                    return Ok(Some(c.curves.clone()))
                }
                Some(c) => Some((c.size, c.etag.clone())),
                None => None,
            }
        };
        let folder = self
            .store(storage)?
            .child(&format!("{}/{trial}", run.name_any()));
        let Some((size, etag)) = folder.head(layout::METRICS).await? else {
            return Ok(None);
        };
        if stale.as_ref() == Some(&(size, etag.clone())) {
            let mut entries = self.entries.lock().expect("ui metrics cache");
            if let Some(c) = entries.get_mut(&key) {
                c.checked = Instant::now();
                return Ok(Some(c.curves.clone()));
            }
        }
        let Some(bytes) = folder.get_opt(layout::METRICS).await? else {
            return Ok(None);
        };
        let read_len = bytes.len() as u64;
        // Parsing 10k lines takes a few milliseconds: off the async threads.
        let curves = Arc::new(
            tokio::task::spawn_blocking(move || parse_metrics(&bytes))
                .await
                .unwrap_or_default(),
        );
        let mut entries = self.entries.lock().expect("ui metrics cache");
        if entries.len() >= MAX_ENTRIES {
            entries.clear();
        }
        entries.insert(
            key,
            Cached {
                // What was read may be newer than the HEAD: then the next check re-reads.
                size: read_len,
                etag: if read_len == size { etag } else { None },
                checked: Instant::now(),
                curves: curves.clone(),
            },
        );
        Ok(Some(curves))
    }

    /// The curves of every trial in the run's status, concurrently. Trials without a
    /// `metrics.jsonl` are left out; the second value lists read errors (shown on the page).
    pub async fn run(
        &self,
        run: &TrainingRun,
    ) -> (BTreeMap<String, Arc<TrialCurves>>, Vec<String>) {
        let trials: Vec<(String, bool)> = run
            .status
            .as_ref()
            .map(|s| {
                s.trials
                    .iter()
                    .map(|t| (t.name.clone(), t.phase.is_terminal()))
                    .collect()
            })
            .unwrap_or_default();
        let reads = trials
            .iter()
            .map(|(t, fin)| async move { (t.clone(), self.trial(run, t, *fin).await) });
        let mut curves = BTreeMap::new();
        let mut errors = Vec::new();
        for (t, r) in join_all(reads).await {
            match r {
                Ok(Some(c)) => {
                    curves.insert(t, c);
                }
                Ok(None) => {}
                Err(e) => errors.push(format!("{t}: {e:#}")),
            }
        }
        (curves, errors)
    }
}
