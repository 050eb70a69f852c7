//! The `local` subcommands.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use kube::CustomResourceExt;
use serde_json::Value;
use textrec_contract::Store;

use crate::crd::{DeploymentPhase, ModelDeployment, TrainingRun};
use crate::deployment_plan::{plan_status, summarize_runs};
use crate::local::api_server::request_rollback;
use crate::local::inbox::{self, Request};
use crate::local::runner::{self, RunOptions};
use crate::local::serving::PortMode;
use crate::local::state::{LocalPaths, LocalState, StateFile};
use crate::local::{now, process};

const STORAGE_HELP: &str = "Storage root: holds the local state (.textrec-local/state.json) and \
the data of runs whose manifest names no storage. Any object_store URL (file://, s3://, gs://, \
az://) or a path. When given, it also replaces every manifest's spec.storage.url. \
[default: file://./textrec-data]";

/// `textrec-operator local …`
#[derive(Subcommand, Debug)]
pub enum LocalCommand {
    /// Run TrainingRuns and ModelDeployments from manifest files on this machine.
    ///
    /// Trials run as `textrec-worker train` processes (`spec.search.parallelism` at a time) with
    /// the exact arguments the cluster's Jobs get. A worker killed by a signal is restarted and
    /// resumes from its checkpoint (a preemption); exit 78 fails the trial, and so does a worker
    /// the OS refuses to start for good (arguments over its limit, a missing or non-executable
    /// binary); other failures count against spec.maxRestartsPerTrial. Once a run succeeds, each ModelDeployment that refers
    /// to it is served by `textrec-worker serve` on local ports; better runs are promoted by the
    /// same rules as in the cluster and switched in by hot reload.
    ///
    /// Ctrl-C (or `local stop`) stops everything cleanly: trials checkpoint first. Running the
    /// same command again continues where it stopped. If a `local run` is already running on
    /// this storage, the manifests are handed to it and this command follows the runs until
    /// they finish.
    ///
    /// Storage of a run: --storage if given, else the manifest's spec.storage.url, except a
    /// file:// URL on a PersistentVolumeClaim (a path inside pods), else the storage root.
    Run(RunArgs),
    /// Print the TrainingRuns and ModelDeployments with the columns of `kubectl get`, plus
    /// each run's trials and each server's addresses.
    Status(StatusArgs),
    /// Serve revision N of a ModelDeployment's history again (as a new revision), like
    /// `kubectl patch modeldeployment NAME -p '{"spec":{"rollbackTo":N}}'`.
    Rollback(RollbackArgs),
    /// Stop the `local run` of this storage cleanly (trials checkpoint, servers drain).
    Stop(StopArgs),
}

/// Arguments of `local run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// Manifest files (YAML, several documents each).
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    #[arg(long, env = "TEXTREC_STORAGE", help = STORAGE_HELP)]
    pub storage: Option<String>,
    /// The textrec-worker binary [default: $TEXTREC_WORKER, else next to textrec-operator,
    /// else on PATH].
    #[arg(long, value_name = "PATH")]
    pub worker: Option<PathBuf>,
    /// Only train: do not serve ModelDeployments, exit when the runs are done (0 when all
    /// succeeded).
    #[arg(long)]
    pub no_serve: bool,
    /// Server ports: `spec` uses each ModelDeployment's spec.ports (50051/8080 by default);
    /// `auto` picks free ones.
    #[arg(long, value_enum, default_value_t = PortMode::Spec)]
    pub ports: PortMode,
    /// Address the servers listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: IpAddr,
    /// libtorch threads of each trial whose config leaves `threads` unset [default: CPU cores /
    /// parallelism].
    #[arg(long)]
    pub threads: Option<usize>,
    /// Plain log lines instead of live progress bars (the default when stderr is not a terminal).
    #[arg(long)]
    pub plain: bool,
    /// When handing manifests to an already running `local run`, return at once instead of
    /// following the runs.
    #[arg(long)]
    pub detach: bool,
    /// Address of the read-only dashboard (/ui: runs, learning curves, deployments); a taken
    /// port falls back to a free one. The URL is printed at start.
    #[arg(long, env = "TEXTREC_UI_ADDR", default_value = "127.0.0.1:8070")]
    pub ui_addr: std::net::SocketAddr,
    /// Do not serve the dashboard.
    #[arg(long)]
    pub no_ui: bool,
}

/// Output format of `local status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Tables, as `kubectl get`.
    Table,
    /// Tables with the extra columns of `kubectl get -o wide`.
    Wide,
    /// The objects with their status, as JSON.
    Json,
    /// The objects with their status, as YAML.
    Yaml,
}

/// Arguments of `local status`.
#[derive(Args, Debug)]
pub struct StatusArgs {
    #[arg(long, env = "TEXTREC_STORAGE", help = STORAGE_HELP)]
    pub storage: Option<String>,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// Arguments of `local rollback`.
#[derive(Args, Debug)]
pub struct RollbackArgs {
    /// The ModelDeployment.
    pub name: String,
    /// Revision of its history to serve again (see `local status`).
    pub revision: i64,
    #[arg(long, env = "TEXTREC_STORAGE", help = STORAGE_HELP)]
    pub storage: Option<String>,
    /// How long to wait for the running server to serve it, in seconds.
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
}

/// Arguments of `local stop`.
#[derive(Args, Debug)]
pub struct StopArgs {
    #[arg(long, env = "TEXTREC_STORAGE", help = STORAGE_HELP)]
    pub storage: Option<String>,
    /// How long to wait for it to stop, in seconds (trials may take a while to checkpoint).
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
}

/// Run a `local` subcommand; returns the exit code.
pub fn main(cmd: LocalCommand) -> Result<i32> {
    // One thread: children are spawned from it, which keeps Linux's parent-death signal
    // (tied to the spawning thread) meaningful.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match cmd {
            LocalCommand::Run(a) => {
                runner::run(RunOptions {
                    files: a.files,
                    storage: a.storage,
                    worker: a.worker,
                    no_serve: a.no_serve,
                    ports: a.ports,
                    bind: a.bind,
                    threads: a.threads,
                    plain: a.plain,
                    detach: a.detach,
                    ui: (!a.no_ui).then_some(a.ui_addr),
                })
                .await
            }
            LocalCommand::Status(a) => status(a).await,
            LocalCommand::Rollback(a) => rollback(a).await,
            LocalCommand::Stop(a) => stop(a).await,
        }
    })
}

fn open(storage: Option<&str>) -> Result<(Store, LocalPaths, StateFile)> {
    let choice = runner::storage_root(storage)?;
    let root = Store::open(&choice.root)
        .with_context(|| format!("cannot open the storage root {}", choice.root))?;
    let paths = LocalPaths::for_store(&root);
    let file = StateFile::new(&root);
    Ok((root, paths, file))
}

async fn status(a: StatusArgs) -> Result<i32> {
    let (_, paths, file) = open(a.storage.as_deref())?;
    let state = file.load().await?;
    match a.output {
        Output::Json | Output::Yaml => {
            let list = as_list(&state);
            if a.output == Output::Json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                print!("{}", serde_yaml::to_string(&list)?);
            }
            return Ok(0);
        }
        Output::Table | Output::Wide => {}
    }
    let wide = a.output == Output::Wide;
    if state.runs.is_empty() && state.deployments.is_empty() {
        println!("No resources found in {}.", file.url());
        return Ok(0);
    }
    if !state.runs.is_empty() {
        let objs: Vec<Value> = state
            .runs
            .values()
            .map(|r| serde_json::to_value(&r.run).expect("serializes"))
            .collect();
        print!("{}", table(&TrainingRun::crd(), &objs, wide));
        println!();
        print!("{}", trials_table(&state));
        println!();
    }
    if !state.deployments.is_empty() {
        let objs: Vec<Value> = state
            .deployments
            .values()
            .map(|r| serde_json::to_value(&r.deployment).expect("serializes"))
            .collect();
        print!("{}", table(&ModelDeployment::crd(), &objs, wide));
        for (name, rec) in &state.deployments {
            if let (Some(s), Some(st)) = (&rec.server, &rec.deployment.status) {
                println!(
                    "  {name}: gRPC grpc://{}  HTTP/demo http://{}/  (revision {} of {})",
                    s.grpc,
                    s.http,
                    st.current_revision.unwrap_or_default(),
                    st.history
                        .iter()
                        .map(|r| r.revision.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            let st = rec.deployment.status.clone().unwrap_or_default();
            for e in &st.evaluations {
                println!(
                    "  {name}: evaluated {} on {}: {}",
                    e.model_url,
                    e.path,
                    match (e.cer, &e.error) {
                        (Some(c), _) => format!(
                            "cer {c:.4} over {} lines (digest {})",
                            e.lines,
                            &e.dataset_digest[..e.dataset_digest.len().min(12)]
                        ),
                        (None, err) => format!("failed: {}", err.clone().unwrap_or_default()),
                    }
                );
            }
            for d in &st.declined {
                println!("  {name}: declined {}: {}", d.training_run, d.reason);
            }
        }
        println!();
    }
    match inbox::running_pid(&paths) {
        Some(pid) => println!("local run active (pid {pid})"),
        None => {
            println!("no local run is active; `local run FILE...` continues the unfinished runs")
        }
    }
    Ok(0)
}

/// The state as a Kubernetes `List` of the objects.
fn as_list(state: &LocalState) -> Value {
    let mut items: Vec<Value> = state
        .runs
        .values()
        .map(|r| serde_json::to_value(&r.run).expect("serializes"))
        .collect();
    items.extend(
        state
            .deployments
            .values()
            .map(|r| serde_json::to_value(&r.deployment).expect("serializes")),
    );
    serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items})
}

/// A value at a simple JSONPath (`.status.bestModel.metric`).
fn at_path<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.trim_start_matches('.')
        .split('.')
        .filter(|p| !p.is_empty())
        .try_fold(v, |v, k| v.get(k))
}

/// `kubectl`'s short age: `45s`, `5m30s`, `3h12m`, `2d4h`, `30d`.
pub fn human_age(d: Duration) -> String {
    let s = d.as_secs();
    let (m, h) = (s / 60, s / 3600);
    if s < 120 {
        format!("{s}s")
    } else if m < 10 {
        match s % 60 {
            0 => format!("{m}m"),
            r => format!("{m}m{r}s"),
        }
    } else if m < 180 {
        format!("{m}m")
    } else if h < 8 {
        match m % 60 {
            0 => format!("{h}h"),
            r => format!("{h}h{r}m"),
        }
    } else if h < 48 {
        format!("{h}h")
    } else if h < 24 * 8 {
        match h % 24 {
            0 => format!("{}d", h / 24),
            r => format!("{}d{r}h", h / 24),
        }
    } else {
        format!("{}d", h / 24)
    }
}

fn cell(v: Option<&Value>, type_: &str) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) if type_ == "date" => {
            match s.parse::<chrono::DateTime<chrono::Utc>>() {
                Ok(t) => human_age((chrono::Utc::now() - t).to_std().unwrap_or_default()),
                Err(_) => s.clone(),
            }
        }
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

fn render(rows: &[Vec<String>]) -> String {
    let cols = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..cols)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i + 1 == cols {
                    c.clone()
                } else {
                    format!("{c:<w$}", w = widths[i])
                }
            })
            .collect();
        out.push_str(line.join("   ").trim_end());
        out.push('\n');
    }
    out
}

/// Objects as `kubectl get` prints them, from the CRD's printer columns (`wide` adds those of
/// priority > 0).
pub fn table(
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    objs: &[Value],
    wide: bool,
) -> String {
    let columns = crd
        .spec
        .versions
        .first()
        .and_then(|v| v.additional_printer_columns.clone())
        .unwrap_or_default();
    let columns: Vec<_> = columns
        .into_iter()
        .filter(|c| wide || c.priority.unwrap_or(0) == 0)
        .collect();
    let mut rows = vec![std::iter::once("NAME".to_string())
        .chain(columns.iter().map(|c| c.name.to_uppercase()))
        .collect::<Vec<_>>()];
    for o in objs {
        let name = cell(at_path(o, ".metadata.name"), "string");
        rows.push(
            std::iter::once(name)
                .chain(
                    columns
                        .iter()
                        .map(|c| cell(at_path(o, &c.json_path), &c.type_)),
                )
                .collect(),
        );
    }
    render(&rows)
}

fn trials_table(state: &LocalState) -> String {
    let mut rows = vec![[
        "TRIAL",
        "PHASE",
        "STEP",
        "LATEST",
        "BEST",
        "BEST-UNSEEN-FONTS",
        "READ-WITH",
        "RESTARTS",
        "PREEMPTIONS",
        "PARAMS",
        "MESSAGE",
    ]
    .map(String::from)
    .to_vec()];
    let num = |v: Option<f64>| v.map(|v| format!("{v:.4}")).unwrap_or_default();
    for rec in state.runs.values() {
        for t in rec.run.status.iter().flat_map(|s| s.trials.iter()) {
            rows.push(vec![
                t.name.clone(),
                format!("{:?}", t.phase),
                t.step.to_string(),
                num(t.latest_metric),
                num(t.best_metric),
                num(t
                    .best_extra_cer
                    .get(textrec_contract::config::UNSEEN_FONTS_SET)
                    .copied()),
                // Evaluations while training read with `joint`; a finished trial's best is
                // read again with its model's decoding.
                read_with(t),
                t.restarts.to_string(),
                t.preemptions.to_string(),
                t.params.clone(),
                t.message.clone().unwrap_or_default(),
            ]);
        }
    }
    render(&rows)
}

/// How a trial's best was read: `joint` while training (its evaluations read so); once the
/// trial succeeded, its model's decoding, and the width when not as drawn (`ctc-lm@x1.1`).
fn read_with(t: &crate::crd::TrialStatus) -> String {
    match (t.best_decoding, t.best_metric) {
        (Some(d), _) => match t.best_reading_width.filter(|&w| w != 1.0) {
            Some(w) => format!("{}@x{w}", d.as_str()),
            None => d.as_str().to_string(),
        },
        (None, Some(_)) => "joint".to_string(),
        (None, None) => String::new(),
    }
}

async fn rollback(a: RollbackArgs) -> Result<i32> {
    let (_, paths, file) = open(a.storage.as_deref())?;
    let mut state = file.load().await?;
    // Check first, so a typo is reported here and not in the runner's log.
    request_rollback(&mut state.clone(), &a.name, a.revision)?;
    let before = state.deployments[&a.name]
        .deployment
        .status
        .as_ref()
        .and_then(|s| s.history.iter().map(|r| r.revision).max())
        .unwrap_or(0);
    let Some(pid) = inbox::running_pid(&paths) else {
        request_rollback(&mut state, &a.name, a.revision)?;
        let runs: Vec<Arc<TrainingRun>> = state
            .runs
            .values()
            .map(|r| Arc::new(r.run.clone()))
            .collect();
        let rec = state.deployments.get_mut(&a.name).expect("checked");
        let summaries = summarize_runs(&rec.deployment, &runs);
        let (status, _) = plan_status(&rec.deployment, &summaries, None, &now());
        let rev = status.current_revision.unwrap_or_default();
        rec.deployment.status = Some(status);
        file.save(&state).await?;
        println!(
            "ModelDeployment {}: revision {} recorded as revision {rev}; `local run` serves it when it starts",
            a.name, a.revision
        );
        return Ok(0);
    };
    inbox::submit(
        &paths,
        &Request::Rollback {
            deployment: a.name.clone(),
            revision: a.revision,
        },
    )?;
    let deadline = Instant::now() + Duration::from_secs(a.timeout);
    let want = format!("rollback to revision {} ", a.revision);
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let st = file.load().await?;
        let status = st
            .deployments
            .get(&a.name)
            .and_then(|d| d.deployment.status.clone())
            .unwrap_or_default();
        let new = status
            .history
            .iter()
            .find(|r| r.revision > before && r.reason.starts_with(&want));
        if let Some(r) = new {
            if status.current_revision == Some(r.revision)
                && status.phase == Some(DeploymentPhase::Available)
            {
                println!(
                    "ModelDeployment {}: serving revision {}'s model again as revision {} ({})",
                    a.name, a.revision, r.revision, r.model.url
                );
                return Ok(0);
            }
        }
        if !process::alive(pid) {
            anyhow::bail!("the local run (pid {pid}) stopped before the rollback was served");
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "the rollback was requested but not served within {} s; see `local status`",
                a.timeout
            );
        }
    }
}

async fn stop(a: StopArgs) -> Result<i32> {
    let (root, paths, _) = open(a.storage.as_deref())?;
    let Some(pid) = inbox::running_pid(&paths) else {
        println!("no local run is active for {}", root.url());
        return Ok(0);
    };
    process::signal(pid, process::SIGTERM);
    println!("stopping the local run (pid {pid}); trials checkpoint first");
    let deadline = Instant::now() + Duration::from_secs(a.timeout);
    while process::alive(pid) {
        if Instant::now() > deadline {
            anyhow::bail!(
                "the local run (pid {pid}) did not stop within {} s",
                a.timeout
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("stopped");
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_use_the_crd_printer_columns() {
        let run = json!({"metadata": {"name": "lr", "creationTimestamp": chrono::Utc::now().to_rfc3339()},
            "status": {"phase": "Running", "trialsDone": "1/2", "bestTrial": "lr-t1",
                       "bestModel": {"metric": 0.25}}});
        let t = table(&TrainingRun::crd(), std::slice::from_ref(&run), false);
        let mut lines = t.lines();
        let head: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        assert_eq!(
            head,
            ["NAME", "PHASE", "TRIALS", "RUNNING", "BEST", "REASON", "AGE"]
        );
        let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        assert_eq!(&row[..4], ["lr", "Running", "1/2", "0.25"]);
        assert!(row[4].ends_with('s'));
        let wide = table(&TrainingRun::crd(), &[run], true);
        assert!(wide.contains("BEST-TRIAL") && wide.contains("lr-t1"));
        let md = table(
            &ModelDeployment::crd(),
            &[json!({"metadata": {"name": "m"}})],
            false,
        );
        let head: Vec<&str> = md.lines().next().unwrap().split_whitespace().collect();
        assert_eq!(
            head,
            ["NAME", "PHASE", "REVISION", "METRIC", "READY", "AGE"]
        );
    }

    #[test]
    fn the_trials_table_says_how_each_best_was_read() {
        use crate::local::state::RunRecord;
        let run: TrainingRun = serde_json::from_value(json!({
            "apiVersion": "textrec.dev/v1alpha1", "kind": "TrainingRun",
            "metadata": {"name": "lr"}, "spec": {},
            "status": {"phase": "Running", "trials": [
                {"name": "lr-t0", "phase": "Succeeded", "step": 400, "bestMetric": 0.0605,
                 "bestExtraCer": {"unseen-fonts": 0.15}, "bestDecoding": "ctc-lm"},
                {"name": "lr-t1", "phase": "Running", "step": 200, "bestMetric": 0.2},
                {"name": "lr-t2", "phase": "Pending"},
                {"name": "lr-t3", "phase": "Succeeded", "step": 400, "bestMetric": 0.0596,
                 "bestDecoding": "ctc-lm", "bestReadingWidth": 1.1},
                {"name": "lr-t4", "phase": "Succeeded", "step": 400, "bestMetric": 0.07,
                 "bestDecoding": "ctc", "bestReadingWidth": 1.0}]}}))
        .unwrap();
        let mut state = LocalState::default();
        state.runs.insert(
            "lr".into(),
            RunRecord {
                run,
                trials: Default::default(),
            },
        );
        let t = trials_table(&state);
        let lines: Vec<&str> = t.lines().collect();
        // Cells are aligned under their headings.
        let cell = |row: usize, heading: &str| {
            let at = lines[0].find(&format!(" {heading} ")).unwrap() + 1;
            let line = lines[row];
            line.get(at..)
                .filter(|rest| !rest.starts_with(' '))
                .and_then(|rest| rest.split_whitespace().next())
                .unwrap_or("")
                .to_string()
        };
        let read = |row| ["BEST", "BEST-UNSEEN-FONTS", "READ-WITH"].map(|h| cell(row, h));
        assert_eq!(read(1), ["0.0605", "0.1500", "ctc-lm"], "{t}");
        // Evaluations while training read with `joint`; a trial without a best says nothing.
        assert_eq!(read(2), ["0.2000", "", "joint"], "{t}");
        assert_eq!(read(3), ["", "", ""], "{t}");
        // A stretched reading width is named; lines read as drawn are not.
        assert_eq!(read(4), ["0.0596", "", "ctc-lm@x1.1"], "{t}");
        assert_eq!(read(5), ["0.0700", "", "ctc"], "{t}");
    }

    #[test]
    fn ages_read_like_kubectl() {
        let s = Duration::from_secs;
        assert_eq!(human_age(s(45)), "45s");
        assert_eq!(human_age(s(330)), "5m30s");
        assert_eq!(human_age(s(3600)), "60m");
        assert_eq!(human_age(s(4 * 3600 + 60 * 7)), "4h7m");
        assert_eq!(human_age(s(3 * 86400 + 3600)), "3d1h");
        assert_eq!(human_age(s(30 * 86400)), "30d");
    }
}
