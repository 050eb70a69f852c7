//! `local run`: the loop that plays API server, Job controller and Deployment controller for
//! the manifests given, twice a second:
//!
//! 1. carry out requests from other `local` commands ([`inbox`], [`api_server`]): manifests
//!    submitted by a second `local run`, rollbacks;
//! 2. reap finished trial processes and decide restart / fail / done ([`JobController`]);
//! 3. read each active trial's `progress.json`;
//! 4. for each TrainingRun, compute the cluster's plan and create or suspend trials
//!    ([`run_controller`]), then start the trials that are due and enforce deadlines;
//! 5. for each ModelDeployment, decide the model and make its server serve it
//!    ([`DeploymentController`]);
//! 6. save the state when it changed, and redraw the progress.
//!
//! Ctrl-C, SIGTERM or `local stop` stop it: trials get SIGTERM (they checkpoint and exit 75,
//! within `terminationGracePeriodSeconds`, else SIGKILL), servers shut down gracefully, and the
//! next `local run` continues: finished trials are not rerun, stopped ones resume.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use textrec_contract::signals::Stop;
use textrec_contract::Store;

use crate::crd::RunPhase;
use crate::local::deployment_controller::DeploymentController;
use crate::local::display::{self, Display};
use crate::local::handover::hand_over;
use crate::local::job_controller::JobController;
use crate::local::manifest::{self, StorageChoice};
use crate::local::serving::{PortMode, ServeSettings};
use crate::local::state::{create_private_dir, write_atomic, LocalPaths, LocalState, StateFile};
use crate::local::trials::{self, Exit};
use crate::local::{api_server, inbox, process, run_controller, DEFAULT_STORAGE};
use crate::ui::data::{SharedObjects, Snapshot};
use crate::ui::{self, Ui};

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
    /// Where to serve the dashboard (`/ui`); `None`: not at all. A taken port falls back to a
    /// free one.
    pub ui: Option<SocketAddr>,
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

/// The runner's working set.
struct Runner {
    opts: RunOptions,
    paths: LocalPaths,
    file: StateFile,
    state: LocalState,
    saved: Vec<u8>,
    jobs: JobController,
    deployments: DeploymentController,
    display: Display,
    stopping: bool,
    ui: Arc<SharedObjects>,
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

    if let Some(pid) = inbox::running_pid(&paths) {
        return hand_over(opts.detach, &paths, &file, loaded, pid).await;
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
    create_private_dir(&paths.dir)?;
    write_atomic(&paths.pid_file(), std::process::id().to_string().as_bytes())?;
    for line in api_server::apply(&mut state, loaded.runs, loaded.deployments) {
        eprintln!("{line}");
    }
    eprintln!(
        "state: {}; logs: {}; worker: {}",
        file.url(),
        paths.dir.join("logs").display(),
        worker.display()
    );

    let ui_objects = Arc::new(SharedObjects::default());
    ui_objects.set(snapshot(&state));
    if let Some(addr) = opts.ui {
        match serve_ui(addr, ui_objects.clone()).await {
            Ok(url) => eprintln!("dashboard: {url}"),
            Err(e) => eprintln!("note: no dashboard: {e:#}"),
        }
    }

    let deployments = DeploymentController::new(ServeSettings {
        worker: worker.clone(),
        bind: opts.bind,
        ports: opts.ports,
        paths: paths.clone(),
        storage_root: choice.root.clone(),
    });
    let mut runner = Runner {
        display: Display::new(opts.plain),
        opts,
        jobs: JobController::new(worker, paths.clone()),
        deployments,
        paths,
        file,
        state,
        saved: Vec::new(),
        stopping: false,
        ui: ui_objects,
    };
    let result = runner.main_loop().await;
    let _ = std::fs::remove_file(runner.paths.pid_file());
    result
}

impl Runner {
    async fn main_loop(&mut self) -> Result<i32> {
        adopt_orphans(&mut self.state).await;
        // Installed once for the whole loop, so a Ctrl-C that arrives mid-pass is kept.
        let mut signals = textrec_contract::signals::Termination::install()?;
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                stop = signals.recv() => self.begin_stop(match stop {
                    Stop::Interrupt => "interrupted",
                    Stop::Terminate => "SIGTERM received",
                }),
            }
            self.read_inbox();
            self.jobs
                .reap(&mut self.state, &self.display, self.stopping);
            self.jobs.read_progress(&self.state).await;
            run_controller::reconcile(
                &mut self.state,
                &mut self.jobs,
                &self.display,
                self.stopping,
                self.opts.threads,
            );
            if !self.stopping {
                self.jobs.start_waiting(&mut self.state, &self.display);
            }
            self.jobs.enforce_deadlines(&mut self.state);
            if self.stopping {
                self.jobs.stop_children(&self.state);
            }
            if !self.opts.no_serve {
                self.deployments
                    .reconcile(&mut self.state, &self.display, self.stopping)
                    .await;
            }
            self.save().await;
            self.display.show(&self.state, self.jobs.progress());

            if self.stopping && self.jobs.idle() {
                self.deployments
                    .stop(&mut self.state, Duration::from_secs(30))
                    .await;
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
            if runs_done && self.jobs.idle() && !serving {
                let waiting = !self.opts.no_serve && !self.state.deployments.is_empty();
                self.display.finish();
                for line in display::summary(&self.state) {
                    eprintln!("{line}");
                }
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

    fn read_inbox(&mut self) {
        for req in inbox::take(&self.paths) {
            let lines = match req {
                Ok(req) => api_server::handle(&mut self.state, req, self.stopping),
                Err(e) => vec![format!("{e:#}")],
            };
            for line in lines {
                self.display.println(&line);
            }
        }
    }

    async fn save(&mut self) {
        // Live processes' pids are state too (`local status`, orphan adoption).
        let bytes = serde_json::to_vec(&self.state).unwrap_or_default();
        if bytes == self.saved {
            return;
        }
        self.ui.set(snapshot(&self.state));
        match self.file.save(&self.state).await {
            Ok(()) => self.saved = bytes,
            Err(e) => self
                .display
                .println(&format!("cannot save the local state: {e:#}")),
        }
    }
}

/// What the dashboard shows of the state: the objects, and each served deployment's demo page.
pub fn snapshot(state: &LocalState) -> Snapshot {
    Snapshot {
        runs: state
            .runs
            .values()
            .map(|r| Arc::new(r.run.clone()))
            .collect(),
        deployments: state
            .deployments
            .values()
            .map(|d| Arc::new(d.deployment.clone()))
            .collect(),
        demo: state
            .deployments
            .iter()
            .filter_map(|(name, d)| {
                let s = d.server.as_ref()?;
                s.pid?;
                Some((name.clone(), format!("http://{}/", s.http)))
            })
            .collect(),
    }
}

/// Serve the dashboard on `addr` (or, when that port is taken, on a free port of the same
/// address) for as long as the runner runs; returns its URL.
pub async fn serve_ui(addr: SocketAddr, objects: Arc<SharedObjects>) -> Result<String> {
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && addr.port() != 0 => {
            tokio::net::TcpListener::bind(SocketAddr::new(addr.ip(), 0))
                .await
                .with_context(|| format!("cannot listen on {}", addr.ip()))?
        }
        Err(e) => return Err(e).with_context(|| format!("cannot listen on {addr}")),
    };
    let local = listener.local_addr()?;
    let app = ui::router(Ui::new(objects));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let host = if local.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else if local.is_ipv6() {
        format!("[{}]", local.ip())
    } else {
        local.ip().to_string()
    };
    Ok(format!("http://{host}:{}/ui", local.port()))
}

/// Trial and server processes left by a runner that was killed: stop them so they checkpoint;
/// this runner then resumes the trials and starts new servers.
async fn adopt_orphans(state: &mut LocalState) {
    let mut orphans = Vec::new();
    for (run, rec) in &mut state.runs {
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
    for rec in state.deployments.values_mut() {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local::state::{DeploymentRecord, ServerRecord};

    #[tokio::test]
    async fn the_dashboard_takes_a_free_port_when_its_own_is_taken() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let url = serve_ui(addr, Arc::new(SharedObjects::default()))
            .await
            .unwrap();
        assert!(
            url.starts_with("http://127.0.0.1:") && url.ends_with("/ui"),
            "{url}"
        );
        assert_ne!(url, format!("http://{addr}/ui"));
        let body = reqwest::get(&url).await.unwrap().text().await.unwrap();
        assert!(body.contains("No TrainingRuns match."), "{body}");
    }

    #[test]
    fn the_snapshot_links_the_demo_page_of_a_running_server_only() {
        let md: crate::crd::ModelDeployment = serde_json::from_value(serde_json::json!({
            "apiVersion": "textrec.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": "m"}, "spec": {"image": "local", "model": {"fromTrainingRun": "r"}}
        }))
        .unwrap();
        let server = |pid| ServerRecord {
            pid,
            grpc: "127.0.0.1:50051".into(),
            http: "127.0.0.1:8080".into(),
            serving: None,
            restarts: 0,
        };
        let mut state = LocalState::default();
        state.deployments.insert(
            "m".into(),
            DeploymentRecord {
                deployment: md,
                server: Some(server(Some(42))),
            },
        );
        let snap = snapshot(&state);
        assert_eq!(snap.deployments.len(), 1);
        assert_eq!(snap.demo["m"], "http://127.0.0.1:8080/");
        state.deployments.get_mut("m").unwrap().server = Some(server(None));
        assert!(snapshot(&state).demo.is_empty());
    }
}
