//! The local TrainingRun controller: each run's status and the trials to start or suspend come
//! from the cluster's own reconcile ([`crate::run_plan::plan`]), fed with synthetic Jobs and Pods that
//! describe the local trial processes ([`trials::synth_job`], [`trials::synth_pods`]).

use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::api::core::v1::Pod;

use crate::local::display::Display;
use crate::local::job_controller::JobController;
use crate::local::now;
use crate::local::state::LocalState;
use crate::local::trials::{self, JobOutcome, TrialRecord};
use crate::run_plan::{plan, Observed};
use crate::validate::PlannedTrial;
use crate::worker_args::{sets_threads, train_args};

/// Plan every run: record its status, suspend what the plan suspends and, unless the runner is
/// `stopping`, create the trials it starts (the [`JobController`] runs them). `threads` is
/// `local run --threads`.
pub fn reconcile(
    state: &mut LocalState,
    jobs: &mut JobController,
    display: &Display,
    stopping: bool,
    threads: Option<usize>,
) {
    let now = now();
    // Parents of fine-tunes not yet started, resolved against the other local objects as a
    // cluster's controller resolves them against the API server.
    let mut parents: BTreeMap<String, crate::lineage::Parent> = BTreeMap::new();
    for (name, rec) in &state.runs {
        let Some(init) = &rec.run.spec.init_from else {
            continue;
        };
        if rec
            .run
            .status
            .as_ref()
            .is_some_and(|s| s.init_from.is_some())
        {
            continue;
        }
        let md = init
            .model_deployment
            .as_ref()
            .and_then(|n| state.deployments.get(n))
            .map(|d| &d.deployment);
        let tr = init
            .training_run
            .as_ref()
            .and_then(|n| state.runs.get(n))
            .map(|r| &r.run);
        parents.insert(name.clone(), crate::lineage::resolve(init, md, tr));
    }
    for (name, rec) in &mut state.runs {
        // A trial stopped early has no Job (a cluster deleted it); its status entry stays.
        let shown = || {
            rec.trials
                .iter()
                .filter(|(_, r)| r.outcome != Some(JobOutcome::EarlyStopped))
        };
        let synth_jobs: BTreeMap<String, _> = shown()
            .map(|(t, r)| (t.clone(), trials::synth_job(t, r)))
            .collect();
        let pods: BTreeMap<String, Vec<Pod>> = shown()
            .map(|(t, r)| (t.clone(), trials::synth_pods(t, r, None)))
            .collect();
        let mut observed = Observed {
            volume_policy: crate::validate::VolumePolicy::Local,
            parent: parents.remove(name),
            ..Default::default()
        };
        for (t, j) in &synth_jobs {
            observed.jobs.insert(t.clone(), j);
        }
        for (t, ps) in &pods {
            observed.pods.insert(t.clone(), ps.iter().collect());
        }
        for ((run, trial), p) in jobs.progress() {
            if run == name && rec.trials.get(trial).is_some_and(|t| !t.is_finished()) {
                observed.progress.insert(trial.clone(), p.clone());
            }
        }
        if rec.run.spec.early_stopping.is_some() {
            for trial in rec.trials.keys() {
                if let Some(h) = jobs.history(&(name.clone(), trial.clone())) {
                    observed.history.insert(trial.clone(), h);
                }
            }
        }
        let p = plan(&rec.run, &observed, &now);
        for e in &p.events {
            display.event("TrainingRun", name, e);
        }
        rec.run.status = Some(p.status);
        for (trial, suspend) in &p.set_suspend {
            if let Some(t) = rec.trials.get_mut(trial) {
                t.suspended = *suspend;
            }
            if *suspend {
                jobs.suspend(&(name.clone(), trial.clone()));
            }
        }
        // Trials stopped early, their checkpoint safe: "delete the Job". A process still
        // running gets SIGTERM and checkpoints once more on its way out.
        for trial in &p.delete {
            if let Some(t) = rec.trials.get_mut(trial) {
                if t.outcome.is_none() {
                    t.outcome = Some(JobOutcome::EarlyStopped);
                }
                t.suspended = true;
            }
            jobs.suspend(&(name.clone(), trial.clone()));
        }
        if stopping {
            continue;
        }
        let parallelism = rec.run.spec.search.parallelism.max(1) as usize;
        for new in p.create {
            let trial = new.trial.name.clone();
            let args = local_train_args(
                name,
                &rec.run.spec.storage.url,
                &new.trial,
                &jobs.paths().termination_log(&trial),
                threads,
                parallelism,
            );
            rec.trials.insert(trial.clone(), TrialRecord::new(args));
            jobs.start_now((name.clone(), trial));
        }
    }
}

/// The worker arguments of a trial run locally: the Job's ([`train_args`]), with the
/// termination log at a local path, and `threads` set when the trial's config leaves it at
/// libtorch's default (one thread per core in every trial would oversubscribe the machine
/// `parallelism` times).
pub fn local_train_args(
    run_name: &str,
    storage_url: &str,
    trial: &PlannedTrial,
    termination_log: &Path,
    threads: Option<usize>,
    parallelism: usize,
) -> Vec<String> {
    let log = termination_log.display().to_string();
    let mut args = train_args(run_name, storage_url, trial, &log);
    if !sets_threads(trial) {
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
    use crate::crd::TrainingRun;
    use crate::job::{build_job, CONTAINER};
    use crate::validate::plan_trials;
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

    fn job_args(run: &TrainingRun, trial: &PlannedTrial) -> Vec<String> {
        let job = build_job(run, trial, false);
        let pod = job.spec.unwrap().template.spec.unwrap();
        let c = pod.containers.into_iter().find(|c| c.name == CONTAINER);
        c.unwrap().args.unwrap()
    }

    #[test]
    fn worker_args_are_the_jobs_with_a_local_termination_log_and_threads() {
        let r = run();
        let trials = plan_trials("r", &r.spec).unwrap();
        let url = &r.spec.storage.url;
        let args = local_train_args("r", url, &trials[1], Path::new("/tmp/t.json"), Some(1), 2);
        assert_eq!(&args[..3], ["train", "--output", "file:///tmp/s/r/r-t1"]);
        let i = args.iter().position(|a| a == "--termination-log").unwrap();
        assert_eq!(args[i + 1], "/tmp/t.json");
        assert!(args.contains(&"optimizer.lr=0.2".to_string()));
        assert_eq!(args.last().unwrap(), "threads=1");
        // Apart from the termination log and the added threads, the Job's arguments.
        let mut job = job_args(&r, &trials[1]);
        job[i + 1] = "/tmp/t.json".into();
        assert_eq!(args[..args.len() - 2], job[..]);
        // A config that sets threads keeps them.
        let mut r2 = run();
        r2.spec.hyperparameters = Some(json!({"threads": 3}));
        let t = plan_trials("r", &r2.spec).unwrap();
        let args = local_train_args("r", url, &t[0], Path::new("/t"), Some(1), 2);
        assert!(args.contains(&"threads=3".to_string()));
        assert!(!args.contains(&"threads=1".to_string()));
    }
}
