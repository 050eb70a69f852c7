//! The local Job controller: it runs each trial's worker process, reaps it, restarts it after a
//! backoff or fails the trial ([`trials::record_exit`]), enforces `activeDeadlineSeconds`, and
//! stops the processes in order when the runner stops. It also reads the running trials'
//! `progress.json`, which a cluster's operator reads from storage the same way.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use textrec_contract::TrialProgress;

use crate::early_stopping::EvalHistory;
use crate::local::display::Display;
use crate::local::process;
use crate::local::state::{LocalPaths, LocalState};
use crate::local::trials::{self, key_str, Exit, Next, TrialKey};
use crate::progress::{ProgressSource, StorageProgress};
use textrec_contract::layout::trial_output;

/// The pause before restarting a trial after its `failures`-th failure: 10 s after the first,
/// doubling up to 80 s, like the Job controller's backoff.
fn backoff(failures: usize) -> Duration {
    Duration::from_secs(5u64 << failures.min(4))
}

struct Live {
    child: tokio::process::Child,
    started: Instant,
    term_sent: Option<Instant>,
}

/// The trial processes and what the runner knows about them beyond the state file.
pub struct JobController {
    worker: PathBuf,
    paths: LocalPaths,
    live: BTreeMap<TrialKey, Live>,
    restart_at: BTreeMap<TrialKey, Instant>,
    progress: BTreeMap<TrialKey, TrialProgress>,
    reader: Arc<StorageProgress>,
    history: EvalHistory,
}

impl JobController {
    /// Trials run `worker`; their logs and termination logs go under `paths`.
    pub fn new(worker: PathBuf, paths: LocalPaths) -> Self {
        Self {
            worker,
            paths,
            live: BTreeMap::new(),
            restart_at: BTreeMap::new(),
            progress: BTreeMap::new(),
            reader: Arc::new(StorageProgress::default()),
            history: EvalHistory::default(),
        }
    }

    /// The runner's local files.
    pub fn paths(&self) -> &LocalPaths {
        &self.paths
    }

    /// Whether no trial process is running.
    pub fn idle(&self) -> bool {
        self.live.is_empty()
    }

    /// The latest progress of each unfinished trial (the final one of a trial that just ended).
    pub fn progress(&self) -> &BTreeMap<TrialKey, TrialProgress> {
        &self.progress
    }

    /// Every evaluation of `key` known so far, oldest first (kept only for runs with
    /// `spec.earlyStopping`; see [`crate::early_stopping`]).
    pub fn history(&self, key: &TrialKey) -> Option<Vec<textrec_contract::metrics::EvalPoint>> {
        self.history.get(&key_str(key))
    }

    /// Start `key` on the next pass, whatever backoff an earlier attempt left.
    pub fn start_now(&mut self, key: TrialKey) {
        self.restart_at.insert(key, Instant::now());
    }

    /// Stop `key`'s process so that it checkpoints (a suspended Job's pod gets SIGTERM).
    pub fn suspend(&mut self, key: &TrialKey) {
        if let Some(l) = self.live.get_mut(key) {
            if let Some(pid) = l.child.id() {
                process::signal(pid, process::SIGTERM);
                l.term_sent.get_or_insert_with(Instant::now);
            }
        }
    }

    /// Record the trial processes that ended and decide what comes next for each.
    pub fn reap(&mut self, state: &mut LocalState, display: &Display, stopping: bool) {
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
            let Some(rec) = state.runs.get_mut(&k.0) else {
                continue;
            };
            let max_restarts = rec.run.spec.max_restarts_per_trial;
            let Some(t) = rec.trials.get_mut(&k.1) else {
                continue;
            };
            let next = trials::record_exit(t, exit, step, term, stopping, max_restarts);
            let failures = t.failures();
            let log = self.paths.log(&k.1);
            match next {
                Next::Restart if stopping => {}
                // Suspended (the run, or early stopping): it checkpointed and stays stopped.
                Next::Restart if t.suspended || t.is_finished() => display.println(&format!(
                    "{}: worker stopped at its checkpoint (log: {})",
                    key_str(&k),
                    log.display()
                )),
                Next::Restart => {
                    // Preemptions resume at once; failures back off like the Job controller.
                    let pause = if matches!(exit, Exit::Signal(_) | Exit::Code(75)) {
                        Duration::ZERO
                    } else {
                        backoff(failures)
                    };
                    self.restart_at.insert(k.clone(), Instant::now() + pause);
                    display.println(&format!(
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
                Next::Fail => display.println(&format!(
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

    /// Read the `progress.json` of every unfinished trial.
    pub async fn read_progress(&mut self, state: &LocalState) {
        let mut reads = Vec::new();
        for (name, rec) in &state.runs {
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
        // Evaluation histories for early stopping: every started trial of such a run, finished
        // ones included (they count as the others).
        let mut reads = Vec::new();
        for (name, rec) in &state.runs {
            if rec.run.spec.early_stopping.is_none() {
                continue;
            }
            for trial in rec.trials.keys() {
                let k = (name.clone(), trial.clone());
                if self.history.needs_read(&key_str(&k), self.progress.get(&k)) {
                    reads.push((k, trial_output(&rec.run.spec.storage.url, name, trial)));
                }
            }
        }
        let results = futures::future::join_all(reads.into_iter().map(|(k, url)| {
            let reader = reader.clone();
            async move { (k, reader.read_evals(&url).await) }
        }))
        .await;
        for (k, evals) in results {
            self.history.replace(&key_str(&k), evals);
        }
        for (k, p) in &self.progress {
            if state
                .runs
                .get(&k.0)
                .is_some_and(|r| r.run.spec.early_stopping.is_some())
            {
                self.history.observe(&key_str(k), p);
            }
        }
    }

    /// Start trials that are due: new ones, restarts, and those a previous runner stopped.
    pub fn start_waiting(&mut self, state: &mut LocalState, display: &Display) {
        let mut to_start = Vec::new();
        for (name, rec) in &state.runs {
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
            let rec = state.runs.get_mut(&k.0).expect("listed");
            let t = rec.trials.get_mut(&k.1).expect("listed");
            match process::spawn(&self.worker, &args, &env, &log) {
                Ok(child) => {
                    t.pid = child.id();
                    t.started_at = Some(chrono::Utc::now().to_rfc3339());
                    let resumed = !t.attempts.is_empty();
                    display.println(&format!(
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
                    let max_restarts = rec.run.spec.max_restarts_per_trial;
                    let error = e.to_string();
                    let next =
                        trials::record_start_failure(t, &error, e.is_permanent(), max_restarts);
                    let what = match next {
                        Next::Fail => "the trial failed".to_string(),
                        _ => {
                            let pause = backoff(t.failures());
                            self.restart_at.insert(k.clone(), Instant::now() + pause);
                            format!("retrying in {} s", pause.as_secs())
                        }
                    };
                    display.println(&format!("{}: {error}; {what}", key_str(&k)));
                }
            }
        }
    }

    /// Fail and stop the trials that ran past their run's `activeDeadlineSeconds`.
    pub fn enforce_deadlines(&mut self, state: &mut LocalState) {
        for (k, live) in &mut self.live {
            let Some(rec) = state.runs.get_mut(&k.0) else {
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

    /// One step of stopping every trial: SIGTERM first (they checkpoint), SIGKILL once the
    /// run's `terminationGracePeriodSeconds` has passed.
    pub fn stop_children(&mut self, state: &LocalState) {
        for (k, live) in &mut self.live {
            let grace = state
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
}
