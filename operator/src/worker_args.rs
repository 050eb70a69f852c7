//! The `textrec-worker train` command line of a trial, built in one place for both ways a trial
//! runs: the container of its Job ([`crate::job::build_job`]) and the local runner's child
//! process. Only the termination log's path differs between the two.

use crate::validate::PlannedTrial;
use textrec_contract::layout::trial_output;

/// Where a pod's worker writes its final progress (the container's `terminationMessagePath`).
pub const POD_TERMINATION_LOG: &str = "/dev/termination-log";

/// The worker's arguments (after the program name) for `trial` of run `run_name`, whose data
/// lives under `storage_url`, writing its final progress to `termination_log`.
pub fn train_args(
    run_name: &str,
    storage_url: &str,
    trial: &PlannedTrial,
    termination_log: &str,
) -> Vec<String> {
    let mut args = vec![
        "train".to_string(),
        "--output".into(),
        trial_output(storage_url, run_name, &trial.name),
        "--run".into(),
        run_name.into(),
        "--trial".into(),
        trial.name.clone(),
        "--termination-log".into(),
        termination_log.into(),
    ];
    for o in &trial.overrides {
        args.push("--set".into());
        args.push(o.clone());
    }
    args
}

/// Whether the trial's config sets `threads` itself.
pub fn sets_threads(trial: &PlannedTrial) -> bool {
    trial.overrides.iter().any(|o| o.starts_with("threads="))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_identity_termination_log_then_overrides() {
        let t = PlannedTrial {
            index: 1,
            name: "r-t1".into(),
            params: String::new(),
            overrides: vec!["device=cpu".into(), "threads=2".into()],
        };
        assert_eq!(
            train_args("r", "s3://b/p/", &t, "/tmp/t.json"),
            [
                "train",
                "--output",
                "s3://b/p/r/r-t1",
                "--run",
                "r",
                "--trial",
                "r-t1",
                "--termination-log",
                "/tmp/t.json",
                "--set",
                "device=cpu",
                "--set",
                "threads=2"
            ]
        );
        assert!(sets_threads(&t));
    }
}
