//! `local run`: the loop that plays API server, Job controller and Deployment controller for
//! the manifests given, once a second:
//!
//! 1. apply requests from other `local` commands (manifests submitted by a second `local run`,
//!    rollbacks);
//! 2. reap finished trial processes and decide restart / fail / done ([`trials::record_exit`]);
//! 3. read each active trial's `progress.json`;
//! 4. for each TrainingRun, compute the cluster's plan ([`run_plan::plan`]) from synthetic Jobs
//!    and Pods, start the trials it creates (the exact `textrec-worker train` arguments of the
//!    Job), and stop those it suspends;
//! 5. for each ModelDeployment, decide the model ([`plan_status`], i.e. [`crate::promotion`]) and
//!    make its server serve it;
//! 6. save the state when it changed, and redraw the progress.
//!
//! Ctrl-C, SIGTERM or `local stop` stop it: trials get SIGTERM (they checkpoint and exit 75,
//! within `terminationGracePeriodSeconds`, else SIGKILL), servers shut down gracefully, and the
//! next `local run` continues: finished trials are not rerun, stopped ones resume.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use serde::{Deserialize, Serialize};
use textrec_contract::signals::Stop;
use textrec_contract::{Store, TrialProgress};

use crate::controller::model_deployment::{plan_status, summarize_runs};
use crate::crd::{ModelDeployment, RunPhase, TrainingRun, TrialPhase};
use crate::job::{trial_output, CONTAINER};
use crate::local::display::{Display, TrialLine};
use crate::local::manifest::{self, Manifests, StorageChoice};
use crate::local::process;
use crate::local::serving::{self, PortMode, ServeSettings, ServerEvent, Servers};
use crate::local::state::{
    write_atomic, DeploymentRecord, LocalPaths, LocalState, RunRecord, StateFile,
};
use crate::local::trials::{self, Exit, Next, TrialRecord};
use crate::local::{now, DEFAULT_STORAGE};
use crate::progress::{ProgressSource, StorageProgress};
use crate::run_plan::{plan, Observed, PlannedEvent, Severity};
use crate::validate::plan_trials;

/// Options of `local run`.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Manifest files.
    pub files: Vec<PathBuf>,
    /// `--storage`.
    pub storage: Option<String>,
    /// `--worker`.
    pub worker: Option<PathBuf>,
    /// Do not serve ModelDeployments; exit when the runs finish.
    pub no_serve: bool,
    /// Port choice of servers.
    pub ports: PortMode,
    /// Address servers listen on.
    pub bind: IpAddr,
    /// libtorch threads per trial when its config does not set `threads`.
    pub threads: Option<usize>,
    /// Log lines instead of redrawn bars.
    pub plain: bool,
    /// Return as soon as the manifests are handed to an already running `local run`.
    pub detach: bool,
}

/// A request to a running `local run`, written into its inbox.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Request {
    /// Apply these objects (as `kubectl apply` would).
    Apply {
        /// TrainingRuns.
        runs: Vec<TrainingRun>,
        /// ModelDeployments.
        deployments: Vec<ModelDeployment>,
    },
    /// Set `spec.rollbackTo` of a ModelDeployment.
    Rollback {
        /// ModelDeployment name.
        deployment: String,
        /// Revision to go back to.
        revision: i64,
    },
}

/// The storage root: `--storage` or the default, as an absolute URL.
pub fn storage_root(flag: Option<&str>) -> Result<StorageChoice> {
    let flag = flag.map(manifest::normalize_storage).transpose()?;
    let root = match &flag {
        Some(f) => f.clone(),
        None => manifest::normalize_storage(DEFAULT_STORAGE)?,
    };
    Ok(StorageChoice { flag, root })
}

/// Pid of the `local run` that holds this storage root, if one is alive.
pub fn running_pid(paths: &LocalPaths) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(paths.pid_file())
        .ok()?
        .trim()
        .parse()
        .ok()?;
    (pid != std::process::id() && process::alive(pid)).then_some(pid)
}

/// Write a request for the running `local run`.
pub fn submit(paths: &LocalPaths, req: &Request) -> Result<PathBuf> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let path = paths
        .inbox()
        .join(format!("{nanos:024}-{}.json", std::process::id()));
    write_atomic(&path, &serde_json::to_vec(req)?)?;
    Ok(path)
}

/// Merge applied objects into the state as the API server would: new objects are created
/// (generation 1), changed specs bump the generation, status is kept. Returns log lines.
pub fn apply(
    state: &mut LocalState,
    runs: Vec<TrainingRun>,
    deployments: Vec<ModelDeployment>,
) -> Vec<String> {
    let mut log = Vec::new();
    let stamp = now();
    for mut run in runs {
        let name = run.name_any();
        match state.runs.get_mut(&name) {
            Some(rec) => {
                if rec.run.spec != run.spec || rec.run.metadata.labels != run.metadata.labels {
                    if rec.run.spec.storage.url != run.spec.storage.url {
                        log.push(format!(
                            "TrainingRun {name}: storage changed from {} to {}; unfinished trials start over there",
                            rec.run.spec.storage.url, run.spec.storage.url
                        ));
                    }
                    let finished = rec.trials.values().filter(|t| t.is_finished()).count();
                    if finished > 0 && rec.run.spec != run.spec {
                        log.push(format!(
                            "TrainingRun {name}: spec changed; its {finished} finished trials are kept (as a cluster keeps finished Jobs)"
                        ));
                    }
                    rec.run.spec = run.spec;
                    rec.run.metadata.labels = run.metadata.labels;
                    rec.run.metadata.generation =
                        Some(rec.run.metadata.generation.unwrap_or(1) + 1);
                } else {
                    log.push(format!("TrainingRun {name} unchanged"));
                }
            }
            None => {
                run.metadata.uid = Some(format!("local-{name}"));
                run.metadata.generation = Some(1);
                run.metadata.creation_timestamp = Some(stamp.clone());
                run.status = None;
                log.push(format!(
                    "TrainingRun {name} created (storage {})",
                    run.spec.storage.url
                ));
                state.runs.insert(
                    name,
                    RunRecord {
                        run,
                        trials: BTreeMap::new(),
                    },
                );
            }
        }
    }
    for mut md in deployments {
        let name = md.name_any();
        match state.deployments.get_mut(&name) {
            Some(rec) => {
                // `local rollback` sets rollbackTo the way `kubectl patch` would; a manifest
                // without it must not undo that.
                if md.spec.rollback_to.is_none() {
                    md.spec.rollback_to = rec.deployment.spec.rollback_to;
                }
                if rec.deployment.spec != md.spec {
                    rec.deployment.spec = md.spec;
                    rec.deployment.metadata.generation =
                        Some(rec.deployment.metadata.generation.unwrap_or(1) + 1);
                } else {
                    log.push(format!("ModelDeployment {name} unchanged"));
                }
            }
            None => {
                md.metadata.uid = Some(format!("local-{name}"));
                md.metadata.generation = Some(1);
                md.metadata.creation_timestamp = Some(stamp.clone());
                md.status = None;
                log.push(format!("ModelDeployment {name} created"));
                state.deployments.insert(
                    name,
                    DeploymentRecord {
                        deployment: md,
                        server: None,
                    },
                );
            }
        }
    }
    log
}

/// Set `spec.rollbackTo` (a repeated rollback to the same revision applies again).
pub fn request_rollback(state: &mut LocalState, name: &str, revision: i64) -> Result<()> {
    let rec = state
        .deployments
        .get_mut(name)
        .with_context(|| format!("no ModelDeployment {name} in the local state"))?;
    let st = rec.deployment.status.get_or_insert_with(Default::default);
    if !st.history.iter().any(|r| r.revision == revision) {
        let have: Vec<String> = st.history.iter().map(|r| r.revision.to_string()).collect();
        anyhow::bail!(
            "ModelDeployment {name} has no revision {revision} (history: {})",
            if have.is_empty() {
                "empty".to_string()
            } else {
                have.join(", ")
            }
        );
    }
    if st.applied_rollback_to == Some(revision) {
        st.applied_rollback_to = None;
    }
    rec.deployment.spec.rollback_to = Some(revision);
    Ok(())
}

struct Live {
    child: tokio::process::Child,
    started: Instant,
    term_sent: Option<Instant>,
}

/// The runner's working set.
struct Runner {
    opts: RunOptions,
    worker: PathBuf,
    paths: LocalPaths,
    file: StateFile,
    state: LocalState,
    saved: Vec<u8>,
    live: BTreeMap<(String, String), Live>,
    restart_at: BTreeMap<(String, String), Instant>,
    progress: BTreeMap<(String, String), TrialProgress>,
    reader: Arc<StorageProgress>,
    servers: Servers,
    display: Display,
    stopping: bool,
    announced: BTreeSet<String>,
}

/// Run `local run`; returns the process exit code.
pub async fn run(opts: RunOptions) -> Result<i32> {
    let choice = storage_root(opts.storage.as_deref())?;
    let loaded = manifest::load_files(&opts.files, &choice)?;
    let root = Store::open(&choice.root)
        .with_context(|| format!("cannot open the storage root {}", choice.root))?;
    let paths = LocalPaths::for_store(&root);
    let file = StateFile::new(&root);
    for n in &loaded.notes {
        eprintln!("note: {n}");
    }

    if let Some(pid) = running_pid(&paths) {
        return hand_over(&opts, &paths, &file, loaded, pid).await;
    }

    let mut state = file.load().await?;
    let known: BTreeSet<String> = state.runs.keys().cloned().collect();
    let missing = manifest::missing_runs(&loaded, &known);
    if let Some((md, run)) = missing.first() {
        anyhow::bail!(
            "ModelDeployment {md}: spec.model.fromTrainingRun: TrainingRun {run} is neither in these manifests nor in the local state at {}",
            file.url()
        );
    }
    let worker = process::locate_worker(opts.worker.as_deref())?;
    std::fs::create_dir_all(&paths.dir)
        .with_context(|| format!("cannot create {}", paths.dir.display()))?;
    write_atomic(&paths.pid_file(), std::process::id().to_string().as_bytes())?;
    for line in apply(&mut state, loaded.runs, loaded.deployments) {
        eprintln!("{line}");
    }
    eprintln!(
        "state: {}; logs: {}; worker: {}",
        file.url(),
        paths.dir.join("logs").display(),
        worker.display()
    );

    let mut runner = Runner {
        display: Display::new(opts.plain),
        opts,
        worker,
        paths,
        file,
        state,
        saved: Vec::new(),
        live: BTreeMap::new(),
        restart_at: BTreeMap::new(),
        progress: BTreeMap::new(),
        reader: Arc::new(StorageProgress::default()),
        servers: Servers::default(),
        stopping: false,
        announced: BTreeSet::new(),
    };
    let result = runner.main_loop().await;
    let _ = std::fs::remove_file(runner.paths.pid_file());
    result
}

/// Another `local run` holds this storage: give it the manifests, then follow the runs.
async fn hand_over(
    opts: &RunOptions,
    paths: &LocalPaths,
    file: &StateFile,
    loaded: Manifests,
    pid: u32,
) -> Result<i32> {
    let runs: Vec<String> = loaded.runs.iter().map(|r| r.name_any()).collect();
    let generations_before: BTreeMap<String, i64> = {
        let st = file.load().await?;
        st.runs
            .iter()
            .map(|(n, r)| (n.clone(), r.run.metadata.generation.unwrap_or(0)))
            .collect()
    };
    let path = submit(
        paths,
        &Request::Apply {
            runs: loaded.runs,
            deployments: loaded.deployments,
        },
    )?;
    eprintln!(
        "a local run (pid {pid}) is already running on this storage: handed the manifests to it ({})",
        path.display()
    );
    if opts.detach || runs.is_empty() {
        return Ok(0);
    }
    eprintln!(
        "following {}; Ctrl-C stops following, not the runs",
        runs.join(", ")
    );
    let mut last = String::new();
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(130),
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
        if path.exists() {
            if !process::alive(pid) {
                anyhow::bail!("the local run (pid {pid}) exited before it read the manifests");
            }
            continue;
        }
        let st = file.load().await?;
        let mut done = true;
        let mut ok = true;
        let mut line = Vec::new();
        for name in &runs {
            let Some(rec) = st.runs.get(name) else {
                done = false;
                continue;
            };
            let status = rec.run.status.clone().unwrap_or_default();
            // A changed spec is only done once the runner has observed it.
            let observed = status.observed_generation == rec.run.metadata.generation
                && rec.run.metadata.generation.unwrap_or(0)
                    >= generations_before.get(name).copied().unwrap_or(0);
            let phase = status.phase.filter(|_| observed);
            done &= phase.is_some_and(RunPhase::is_terminal);
            ok &= phase == Some(RunPhase::Succeeded);
            line.push(format!(
                "{name}: {} {}",
                phase.map_or("Pending".to_string(), |p| format!("{p:?}")),
                status.trials_done.unwrap_or_default()
            ));
        }
        let line = line.join("; ");
        if line != last {
            eprintln!("{line}");
            last = line;
        }
        if done {
            return Ok(if ok { 0 } else { 1 });
        }
        if !process::alive(pid) {
            anyhow::bail!("the local run (pid {pid}) stopped before the runs finished; `local run` again to continue");
        }
    }
}

fn key_str(k: &(String, String)) -> String {
    format!("{}/{}", k.0, k.1)
}

impl Runner {
    async fn main_loop(&mut self) -> Result<i32> {
        self.adopt_orphans().await;
        // Installed once for the whole loop, so a Ctrl-C that arrives mid-pass is kept.
        let mut signals = textrec_contract::signals::Termination::install()?;
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stop_started: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                stop = signals.recv() => self.begin_stop(match stop {
                    Stop::Interrupt => "interrupted",
                    Stop::Terminate => "SIGTERM received",
                }),
            }
            if self.stopping && stop_started.is_none() {
                stop_started = Some(Instant::now());
            }
            self.read_inbox();
            self.reap();
            self.read_progress().await;
            self.plan_runs();
            self.start_waiting();
            self.enforce_deadlines();
            if self.stopping {
                self.stop_children();
            }
            self.plan_deployments().await;
            self.save().await;
            self.redraw();

            if self.stopping && self.live.is_empty() {
                self.servers.stop_all(Duration::from_secs(30)).await;
                for rec in self.state.deployments.values_mut() {
                    if let Some(s) = rec.server.as_mut() {
                        s.pid = None;
                        s.serving = None;
                    }
                }
                self.save().await;
                self.display.finish();
                eprintln!("stopped; `local run` with the same files continues where this left off");
                return Ok(130);
            }
            let runs_done = self.state.runs.values().all(|r| {
                r.run
                    .status
                    .as_ref()
                    .and_then(|s| s.phase)
                    .is_some_and(RunPhase::is_terminal)
            });
            let serving = !self.opts.no_serve
                && self.state.deployments.values().any(|d| {
                    d.deployment
                        .status
                        .as_ref()
                        .is_some_and(|s| s.model.is_some())
                });
            if runs_done && self.live.is_empty() && !serving {
                let waiting = !self.opts.no_serve && !self.state.deployments.is_empty();
                self.display.finish();
                self.summary();
                if waiting {
                    eprintln!("no ModelDeployment has a model to serve (see `local status`)");
                }
                let ok = self.state.runs.values().all(|r| {
                    r.run.status.as_ref().and_then(|s| s.phase) == Some(RunPhase::Succeeded)
                });
                return Ok(if ok && !waiting { 0 } else { 1 });
            }
        }
    }

    fn begin_stop(&mut self, why: &str) {
        if !self.stopping {
            self.display.println(&format!(
                "{why}: stopping trials (they checkpoint first) and servers"
            ));
            self.stopping = true;
        }
    }

    /// Trial processes left by a runner that was killed: stop them so they checkpoint, then
    /// resume them under this runner.
    async fn adopt_orphans(&mut self) {
        let mut orphans = Vec::new();
        for (run, rec) in &mut self.state.runs {
            for (trial, t) in &mut rec.trials {
                if let Some(pid) = t.pid {
                    if process::alive(pid) && process::is_worker(pid) {
                        process::signal(pid, process::SIGTERM);
                        orphans.push((pid, format!("{run}/{trial}")));
                    }
                    // Not counted: like a stop of this runner, it resumes from its checkpoint.
                    trials::record_exit(t, Exit::Code(75), 0, None, true, 0);
                }
            }
        }
        for rec in self.state.deployments.values_mut() {
            if let Some(s) = rec.server.as_mut() {
                if let Some(pid) = s.pid.take() {
                    if process::alive(pid) && process::is_worker(pid) {
                        process::signal(pid, process::SIGTERM);
                        orphans.push((pid, "server".into()));
                    }
                }
            }
        }
        for (pid, what) in orphans {
            eprintln!("stopping {what} (pid {pid}) left by an earlier local run");
            let deadline = Instant::now() + Duration::from_secs(120);
            while process::alive(pid) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if process::alive(pid) {
                process::signal(pid, process::SIGKILL);
            }
        }
    }

    fn read_inbox(&mut self) {
        let dir = self.paths.inbox();
        let Ok(rd) = std::fs::read_dir(&dir) else {
            return;
        };
        let mut files: Vec<PathBuf> = rd
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        files.sort();
        for f in files {
            let req = std::fs::read(&f)
                .map_err(anyhow::Error::from)
                .and_then(|b| serde_json::from_slice::<Request>(&b).map_err(Into::into));
            let _ = std::fs::remove_file(&f);
            match req {
                Ok(Request::Apply { runs, deployments }) => {
                    if self.stopping {
                        self.display
                            .println("ignoring submitted manifests: stopping");
                        continue;
                    }
                    for line in apply(&mut self.state, runs, deployments) {
                        self.display.println(&line);
                    }
                }
                Ok(Request::Rollback {
                    deployment,
                    revision,
                }) => match request_rollback(&mut self.state, &deployment, revision) {
                    Ok(()) => self.display.println(&format!(
                        "ModelDeployment {deployment}: rollback to revision {revision} requested"
                    )),
                    Err(e) => self.display.println(&format!("rollback refused: {e:#}")),
                },
                Err(e) => self
                    .display
                    .println(&format!("unreadable request {}: {e:#}", f.display())),
            }
        }
    }

    fn reap(&mut self) {
        let mut ended = Vec::new();
        for (k, live) in &mut self.live {
            if let Ok(Some(status)) = live.child.try_wait() {
                ended.push((k.clone(), Exit::from_status(status)));
            }
        }
        for (k, exit) in ended {
            self.live.remove(&k);
            let term = std::fs::read_to_string(self.paths.termination_log(&k.1)).ok();
            let final_progress: Option<TrialProgress> =
                term.as_deref().and_then(|t| serde_json::from_str(t).ok());
            let step = final_progress
                .as_ref()
                .map(|p| p.step)
                .or_else(|| self.progress.get(&k).map(|p| p.step))
                .unwrap_or(0);
            let Some(rec) = self.state.runs.get_mut(&k.0) else {
                continue;
            };
            let max_restarts = rec.run.spec.max_restarts_per_trial;
            let Some(t) = rec.trials.get_mut(&k.1) else {
                continue;
            };
            let next = trials::record_exit(t, exit, step, term, self.stopping, max_restarts);
            let failures = t.failures();
            let log = self.paths.log(&k.1);
            match next {
                Next::Restart if self.stopping => {}
                Next::Restart => {
                    // Preemptions resume at once; failures back off like the Job controller.
                    let pause = if matches!(exit, Exit::Signal(_) | Exit::Code(75)) {
                        Duration::ZERO
                    } else {
                        Duration::from_secs(5u64 << failures.min(4))
                    };
                    self.restart_at.insert(k.clone(), Instant::now() + pause);
                    self.display.println(&format!(
                        "{}: worker {}; restarting{} (log: {})",
                        key_str(&k),
                        exit.describe(),
                        if pause.is_zero() {
                            " from its checkpoint".to_string()
                        } else {
                            format!(" in {} s", pause.as_secs())
                        },
                        log.display()
                    ));
                }
                Next::Fail => self.display.println(&format!(
                    "{}: worker {}; the trial failed (log: {})",
                    key_str(&k),
                    exit.describe(),
                    log.display()
                )),
                Next::Wait | Next::Complete => {}
            }
            self.progress.remove(&k);
            if let Some(p) = final_progress {
                self.progress.insert(k, p);
            }
        }
    }

    async fn read_progress(&mut self) {
        let mut reads = Vec::new();
        for (name, rec) in &self.state.runs {
            for (trial, t) in &rec.trials {
                if !t.is_finished() {
                    let url = trial_output(&rec.run.spec.storage.url, name, trial);
                    reads.push(((name.clone(), trial.clone()), url));
                }
            }
        }
        let reader = self.reader.clone();
        let results = futures::future::join_all(reads.into_iter().map(|(k, url)| {
            let reader = reader.clone();
            async move { (k, reader.read(&url).await) }
        }))
        .await;
        for (k, p) in results {
            if let Some(p) = p {
                self.progress.insert(k, p);
            }
        }
    }

    fn plan_runs(&mut self) {
        let now = now();
        let names: Vec<String> = self.state.runs.keys().cloned().collect();
        for name in names {
            let rec = self.state.runs.get_mut(&name).expect("listed");
            let jobs: BTreeMap<String, _> = rec
                .trials
                .iter()
                .map(|(t, r)| (t.clone(), trials::synth_job(t, r)))
                .collect();
            let pods: BTreeMap<String, Vec<Pod>> = rec
                .trials
                .iter()
                .map(|(t, r)| (t.clone(), trials::synth_pods(t, r, None)))
                .collect();
            let mut observed = Observed::default();
            for (t, j) in &jobs {
                observed.jobs.insert(t.clone(), j);
            }
            for (t, ps) in &pods {
                observed.pods.insert(t.clone(), ps.iter().collect());
            }
            for ((run, trial), p) in &self.progress {
                if run == &name && rec.trials.get(trial).is_some_and(|t| !t.is_finished()) {
                    observed.progress.insert(trial.clone(), p.clone());
                }
            }
            let p = plan(&rec.run, &observed, &now);
            for e in &p.events {
                print_event(&self.display, "TrainingRun", &name, e);
            }
            rec.run.status = Some(p.status);
            let planned = match plan_trials(&name, &rec.run.spec) {
                Ok(t) => t,
                Err(_) => continue, // reported through the status (Invalid) and its event
            };
            for (trial, suspend) in &p.set_suspend {
                if let Some(t) = rec.trials.get_mut(trial) {
                    t.suspended = *suspend;
                }
                if *suspend {
                    if let Some(l) = self.live.get_mut(&(name.clone(), trial.clone())) {
                        if let Some(pid) = l.child.id() {
                            process::signal(pid, process::SIGTERM);
                            l.term_sent.get_or_insert_with(Instant::now);
                        }
                    }
                }
            }
            if self.stopping {
                continue;
            }
            let parallelism = rec.run.spec.search.parallelism.max(1) as usize;
            for job in &p.create {
                let trial = job.metadata.name.clone().unwrap_or_default();
                let Some(_) = planned.iter().find(|t| t.name == trial) else {
                    continue;
                };
                let args = worker_args(
                    job,
                    &self.paths.termination_log(&trial),
                    self.opts.threads,
                    parallelism,
                );
                rec.trials.insert(trial.clone(), TrialRecord::new(args));
                self.restart_at
                    .insert((name.clone(), trial), Instant::now());
            }
        }
    }

    /// Start trials that are due: new ones, restarts, and those a previous runner stopped.
    fn start_waiting(&mut self) {
        if self.stopping {
            return;
        }
        let mut to_start = Vec::new();
        for (name, rec) in &self.state.runs {
            for (trial, t) in &rec.trials {
                let k = (name.clone(), trial.clone());
                if t.is_finished() || t.suspended || t.pid.is_some() || self.live.contains_key(&k) {
                    continue;
                }
                if self
                    .restart_at
                    .get(&k)
                    .is_some_and(|at| Instant::now() < *at)
                {
                    continue;
                }
                let env: Vec<(String, String)> = vec![
                    ("TEXTREC_RUN".into(), name.clone()),
                    ("TEXTREC_TRIAL".into(), trial.clone()),
                ]
                .into_iter()
                .chain(
                    rec.run
                        .spec
                        .env
                        .iter()
                        .filter_map(|e| e.value.clone().map(|v| (e.name.clone(), v))),
                )
                .collect();
                to_start.push((k, t.args.clone(), env));
            }
        }
        for (k, args, env) in to_start {
            let log = self.paths.log(&k.1);
            let term = self.paths.termination_log(&k.1);
            let _ = std::fs::remove_file(&term);
            if let Some(dir) = term.parent() {
                // The worker writes its final progress there and fails if it cannot.
                let _ = std::fs::create_dir_all(dir);
            }
            let rec = self.state.runs.get_mut(&k.0).expect("listed");
            let t = rec.trials.get_mut(&k.1).expect("listed");
            match process::spawn(&self.worker, &args, &env, &log) {
                Ok(child) => {
                    t.pid = child.id();
                    t.started_at = Some(chrono::Utc::now().to_rfc3339());
                    let resumed = !t.attempts.is_empty();
                    self.display.println(&format!(
                        "{}: {} (pid {}; log {})",
                        key_str(&k),
                        if resumed { "resumed" } else { "started" },
                        t.pid.unwrap_or_default(),
                        log.display()
                    ));
                    self.live.insert(
                        k.clone(),
                        Live {
                            child,
                            started: Instant::now(),
                            term_sent: None,
                        },
                    );
                    self.restart_at.remove(&k);
                }
                Err(e) => {
                    self.display
                        .println(&format!("{}: cannot start the worker: {e:#}", key_str(&k)));
                    self.restart_at
                        .insert(k, Instant::now() + Duration::from_secs(10));
                }
            }
        }
    }

    fn enforce_deadlines(&mut self) {
        for (k, live) in &mut self.live {
            let Some(rec) = self.state.runs.get_mut(&k.0) else {
                continue;
            };
            let Some(limit) = rec.run.spec.training.active_deadline_seconds else {
                continue;
            };
            if live.started.elapsed() > Duration::from_secs(limit.max(0) as u64)
                && live.term_sent.is_none()
            {
                if let Some(t) = rec.trials.get_mut(&k.1) {
                    trials::deadline_exceeded(t, limit);
                }
                if let Some(pid) = live.child.id() {
                    process::signal(pid, process::SIGTERM);
                }
                live.term_sent = Some(Instant::now());
            }
        }
    }

    fn stop_children(&mut self) {
        for (k, live) in &mut self.live {
            let grace = self
                .state
                .runs
                .get(&k.0)
                .map_or(120, |r| r.run.spec.termination_grace_period_seconds);
            match live.term_sent {
                None => {
                    if let Some(pid) = live.child.id() {
                        process::signal(pid, process::SIGTERM);
                    }
                    live.term_sent = Some(Instant::now());
                }
                Some(at) if at.elapsed() > Duration::from_secs(grace.max(1) as u64) => {
                    let _ = live.child.start_kill();
                }
                Some(_) => {}
            }
        }
    }

    async fn plan_deployments(&mut self) {
        if self.opts.no_serve {
            return;
        }
        let runs: Vec<Arc<TrainingRun>> = self
            .state
            .runs
            .values()
            .map(|r| Arc::new(r.run.clone()))
            .collect();
        let settings = ServeSettings {
            worker: self.worker.clone(),
            bind: self.opts.bind,
            ports: self.opts.ports,
            paths: self.paths.clone(),
        };
        let names: Vec<String> = self.state.deployments.keys().cloned().collect();
        for name in names {
            let rec = self.state.deployments.get_mut(&name).expect("listed");
            let summaries = summarize_runs(&rec.deployment, &runs);
            let probe = match rec.server.as_ref().filter(|_| self.servers.running(&name)) {
                Some(s) => serving::probe(&s.http).await,
                None => None,
            };
            let prev = rec.deployment.status.clone().unwrap_or_default();
            let dep = serving::synth_deployment(&name, &prev, probe.clone());
            let (mut status, events) = plan_status(&rec.deployment, &summaries, Some(&dep), &now());
            for e in &events {
                print_event(&self.display, "ModelDeployment", &name, e);
            }
            if let Some(s) = rec.server.as_mut() {
                s.serving = probe.as_ref().and_then(|p| p.1.clone());
            }
            status.endpoint = rec
                .server
                .as_ref()
                .filter(|_| status.model.is_some())
                .map(|s| s.grpc.clone());
            rec.deployment.status = Some(status.clone());
            if self.stopping {
                continue;
            }
            for ev in self.servers.ensure(&name, rec, &settings) {
                let msg = match ev {
                    ServerEvent::Started(g, h) => format!("server starting: gRPC {g}, HTTP {h}"),
                    ServerEvent::Exited(why) => format!("server exited ({why})"),
                    ServerEvent::Repointed(url) => format!("switching the server to {url}"),
                    ServerEvent::Failed(why) => format!("cannot serve: {why}"),
                };
                self.display
                    .println(&format!("ModelDeployment {name}: {msg}"));
            }
            // Announce each revision once it is really in service.
            let current = status.phase == Some(crate::crd::DeploymentPhase::Available);
            if let (true, Some(rev), Some(s)) = (current, status.current_revision, &rec.server) {
                let key = format!("{name}@{rev}");
                if self.announced.insert(key) {
                    let model = status.model.clone().expect("available implies a model");
                    self.display.println(&format!(
                        "ModelDeployment {name}: revision {rev} serving {}{}\n  gRPC:       grpc://{}   (textrec-worker recognize --endpoint grpc://{} IMAGE...)\n  HTTP/demo:  http://{}/",
                        model.url,
                        model
                            .metric
                            .map(|m| format!(" ({} {m:.4})", model.metric_name.clone().unwrap_or_default()))
                            .unwrap_or_default(),
                        s.grpc,
                        s.grpc,
                        s.http
                    ));
                }
            }
        }
    }

    async fn save(&mut self) {
        // Live processes' pids are state too (`local status`, orphan adoption).
        let bytes = serde_json::to_vec(&self.state).unwrap_or_default();
        if bytes == self.saved {
            return;
        }
        match self.file.save(&self.state).await {
            Ok(()) => self.saved = bytes,
            Err(e) => self
                .display
                .println(&format!("cannot save the local state: {e:#}")),
        }
    }

    fn redraw(&mut self) {
        let mut lines = Vec::new();
        let mut best: Option<(f64, String)> = None;
        for (name, rec) in &self.state.runs {
            let Some(st) = rec.run.status.as_ref() else {
                continue;
            };
            let dir = rec.run.spec.objective.direction;
            for t in &st.trials {
                if t.phase == TrialPhase::Pending && !rec.trials.contains_key(&t.name) {
                    continue;
                }
                let p = self.progress.get(&(name.clone(), t.name.clone()));
                lines.push(TrialLine::new(&rec.run, t, p));
                if let Some(m) = t.best_metric {
                    if best.as_ref().is_none_or(|(b, _)| dir.better(m, *b)) {
                        best = Some((
                            m,
                            format!(
                                "best so far: {name}/{} {} {m:.4}",
                                t.name,
                                rec.run.spec.objective.metric.as_str().to_uppercase()
                            ),
                        ));
                    }
                }
            }
        }
        self.display.update(&lines, best.map(|b| b.1));
    }

    fn summary(&self) {
        for (name, rec) in &self.state.runs {
            let st = rec.run.status.clone().unwrap_or_default();
            let best = st
                .best_model
                .map(|b| {
                    format!(
                        "; best {} {} {:.4}: {}",
                        b.trial, b.metric_name, b.metric, b.url
                    )
                })
                .unwrap_or_default();
            eprintln!(
                "TrainingRun {name}: {} ({} trials done){best}",
                st.phase.map_or("Pending".into(), |p| format!("{p:?}")),
                st.trials_done.unwrap_or_default()
            );
        }
    }
}

fn print_event(display: &Display, kind: &str, name: &str, e: &PlannedEvent) {
    let sev = match e.severity {
        Severity::Normal => "",
        Severity::Warning => "warning: ",
    };
    display.println(&format!("{kind} {name}: {sev}{} {}", e.reason, e.message));
}

/// The worker arguments of a trial: the Job's container arguments, with the termination log
/// at a local path, and `threads` set when the trial's config leaves it at libtorch's default
/// (one thread per core in every trial would oversubscribe the machine `parallelism` times).
pub fn worker_args(
    job: &k8s_openapi::api::batch::v1::Job,
    termination_log: &Path,
    threads: Option<usize>,
    parallelism: usize,
) -> Vec<String> {
    let mut args: Vec<String> = job
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|p| p.containers.iter().find(|c| c.name == CONTAINER))
        .and_then(|c| c.args.clone())
        .unwrap_or_default();
    if let Some(i) = args.iter().position(|a| a == "--termination-log") {
        if let Some(v) = args.get_mut(i + 1) {
            *v = termination_log.display().to_string();
        }
    }
    let has_threads = args
        .windows(2)
        .any(|w| w[0] == "--set" && w[1].starts_with("threads="));
    if !has_threads {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let n = threads.unwrap_or_else(|| (cores / parallelism.max(1)).max(1));
        args.push("--set".into());
        args.push(format!("threads={n}"));
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::build_job;
    use serde_json::json;

    fn run() -> TrainingRun {
        serde_json::from_value(json!({
            "apiVersion": "textrec.dev/v1alpha1", "kind": "TrainingRun",
            "metadata": {"name": "r", "namespace": "default", "uid": "u"},
            "spec": {"image": "local", "storage": {"url": "file:///tmp/s", "pvc": {"claimName": "local-filesystem"}},
                     "hyperparameters": {"optimizer": {"lr": [0.1, 0.2]}},
                     "search": {"maxTrials": 2, "parallelism": 2}}
        }))
        .unwrap()
    }

    #[test]
    fn worker_args_are_the_jobs_with_a_local_termination_log_and_threads() {
        let r = run();
        let trials = plan_trials("r", &r.spec).unwrap();
        let job = build_job(&r, &trials[1], false);
        let args = worker_args(&job, Path::new("/tmp/t.json"), Some(1), 2);
        assert_eq!(&args[..3], ["train", "--output", "file:///tmp/s/r/r-t1"]);
        let i = args.iter().position(|a| a == "--termination-log").unwrap();
        assert_eq!(args[i + 1], "/tmp/t.json");
        assert!(args.contains(&"optimizer.lr=0.2".to_string()));
        assert_eq!(args.last().unwrap(), "threads=1");
        // A config that sets threads keeps them.
        let mut r2 = run();
        r2.spec.hyperparameters = Some(json!({"threads": 3}));
        let t = plan_trials("r", &r2.spec).unwrap();
        let args = worker_args(&build_job(&r2, &t[0], false), Path::new("/t"), Some(1), 2);
        assert!(args.contains(&"threads=3".to_string()));
        assert!(!args.contains(&"threads=1".to_string()));
    }

    #[test]
    fn apply_creates_bumps_generations_and_keeps_status() {
        let mut st = LocalState::default();
        apply(&mut st, vec![run()], vec![]);
        let rec = &st.runs["r"];
        assert_eq!(rec.run.metadata.generation, Some(1));
        assert!(rec.run.metadata.creation_timestamp.is_some());
        st.runs.get_mut("r").unwrap().run.status = Some(Default::default());
        let log = apply(&mut st, vec![run()], vec![]);
        assert_eq!(log, vec!["TrainingRun r unchanged"]);
        let mut changed = run();
        changed.spec.max_failed_trials = 0;
        apply(&mut st, vec![changed], vec![]);
        assert_eq!(st.runs["r"].run.metadata.generation, Some(2));
        assert!(st.runs["r"].run.status.is_some());
    }

    #[test]
    fn rollback_requests_need_a_known_revision() {
        let mut st = LocalState::default();
        let md: ModelDeployment = serde_json::from_value(json!({
            "apiVersion": "textrec.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": "m", "namespace": "default"},
            "spec": {"image": "local", "model": {"fromTrainingRun": "r"}}
        }))
        .unwrap();
        apply(&mut st, vec![], vec![md]);
        let e = request_rollback(&mut st, "m", 1).unwrap_err();
        assert!(e.to_string().contains("history: empty"), "{e}");
        assert!(request_rollback(&mut st, "x", 1).is_err());
    }
}
