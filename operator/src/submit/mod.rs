//! `textrec-operator submit`: create a TrainingRun from a manifest, optionally wait until it is
//! over, and turn the outcome into an exit code, so a CI pipeline fails when the run fails,
//! takes too long, or trains a model that is not good enough (`--require 'cer<=0.05'`).
//!
//! The manifest is sent as written (after `--set` and `--generate-name`), not through the typed
//! [`TrainingRun`], so the API server's schema and CEL rules judge exactly what the user wrote:
//! an unknown field is the server's to refuse, not silently dropped here. Waiting is a watch of
//! the one object (kube's `watch_object` with backoff), which survives the watch restarts API
//! servers impose and reports the run's progress as it changes.

pub mod manifest;
pub mod progress;
pub mod report;
pub mod requirement;

use std::path::PathBuf;
use std::pin::pin;
use std::time::Duration;

use futures::StreamExt;
use kube::api::{ApiResource, DynamicObject, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};
use serde_json::Value;

use crate::crd::{RunPhase, TrainingRun};
use manifest::Set;
use progress::Progress;
use report::{MetricValue, Outcome, OutputFormat, Printer, Report};
use requirement::Requirement;

/// The exit codes of `submit`, the one place they are defined: `--help` and the README list them
/// (a test keeps [`EXIT_CODES_HELP`] in step with this enum).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCode {
    /// The run succeeded and every `--require` holds (without `--wait`: it was created).
    Succeeded = 0,
    /// The run failed.
    RunFailed = 1,
    /// Usage error, unreadable or wrong manifest, refused by the API server, or found invalid by
    /// the operator (phase `Invalid`): the manifest or the command needs fixing. clap's own
    /// argument errors exit 2 as well.
    Usage = 2,
    /// The run succeeded but a `--require` does not hold.
    RequirementNotMet = 3,
    /// `--timeout` passed before the run was over; the run is left running.
    Timeout = 4,
    /// The API server could not be reached (no kubeconfig, network, 5xx) or the run was deleted
    /// while waited for: nothing is known about the run's outcome.
    Error = 5,
}

impl ExitCode {
    /// Every code, in order.
    pub const ALL: [ExitCode; 6] = [
        ExitCode::Succeeded,
        ExitCode::RunFailed,
        ExitCode::Usage,
        ExitCode::RequirementNotMet,
        ExitCode::Timeout,
        ExitCode::Error,
    ];

    /// The process exit status.
    pub fn code(self) -> i32 {
        self as i32
    }

    /// One line for `--help`.
    pub fn meaning(self) -> &'static str {
        match self {
            ExitCode::Succeeded => {
                "the run succeeded and every --require holds (without --wait: it was created)"
            }
            ExitCode::RunFailed => "the run failed",
            ExitCode::Usage => {
                "usage error, bad manifest, refused by the API server, or the operator found \
                 the spec invalid"
            }
            ExitCode::RequirementNotMet => "the run succeeded but a --require does not hold",
            ExitCode::Timeout => "--timeout passed first (the run is left running)",
            ExitCode::Error => {
                "the API server could not be reached, or the run was deleted while waiting"
            }
        }
    }
}

/// The exit codes as `--help` prints them (after the options).
pub const EXIT_CODES_HELP: &str = "Exit codes:
  0  the run succeeded and every --require holds (without --wait: it was created)
  1  the run failed
  2  usage error, bad manifest, refused by the API server, or the operator found the spec invalid
  3  the run succeeded but a --require does not hold
  4  --timeout passed first (the run is left running)
  5  the API server could not be reached, or the run was deleted while waiting";

/// Arguments of `textrec-operator submit`.
#[derive(clap::Args, Debug)]
#[command(after_help = EXIT_CODES_HELP)]
pub struct SubmitArgs {
    /// The TrainingRun manifest: one YAML or JSON document; `-` reads stdin.
    pub file: PathBuf,
    /// Change the manifest before creating it: a dotted path into the object and a YAML value
    /// (`spec.search.maxTrials=2`, `metadata.name=ocr-ci`, `spec.suspend=true`; `\.` is a dot
    /// inside a key, a number indexes a list, `null` removes the field). Repeatable.
    #[arg(long = "set", value_name = "PATH=VALUE", value_parser = Set::parse)]
    pub set: Vec<Set>,
    /// Create the run under a generated name: metadata.name becomes metadata.generateName
    /// (`ocr` → `ocr-x7k2p`), so the same file can be submitted again and again.
    #[arg(long)]
    pub generate_name: bool,
    /// Namespace to create the run in (default: the manifest's, else the kubeconfig context's).
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// Wait until the run succeeds, fails or is found invalid, printing its progress.
    #[arg(long)]
    pub wait: bool,
    /// Give up waiting after this long (`30m`, `2h`, `1h30m`); the run is left running.
    #[arg(long, requires = "wait", value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,
    /// A bound the finished run must meet: METRIC OP VALUE with OP one of <=, <, >=, >, ==.
    /// METRIC: `cer` or `wer` (the best model's objective value, when that is the run's
    /// objective), `objective` (whatever the objective is), or `cer.SET` (the best trial's CER on
    /// extra validation set SET, status.trials[].bestExtraCer). Repeatable; needs --wait.
    #[arg(long = "require", value_name = "REQUIREMENT", requires = "wait", value_parser = Requirement::parse)]
    pub require: Vec<Requirement>,
    /// `text`, or `json`: one JSON object on stdout at the end (name, namespace, phase, outcome,
    /// bestModel, metric, requirements, message, exitCode) with progress on stderr.
    #[arg(long, value_enum, default_value_t)]
    pub output: OutputFormat,
}

/// Run `submit` to the end and return its exit status.
pub fn main(args: SubmitArgs) -> i32 {
    let printer = Printer {
        format: args.output,
    };
    let report = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(submit(&args, printer)),
        Err(e) => failed(
            Report::new(Outcome::Error),
            Outcome::Error,
            format!("cannot start the async runtime: {e}"),
        ),
    };
    printer.report(&report);
    report.exit_code
}

/// Create the run and, with `--wait`, follow it to the end; progress goes to `printer`, the
/// result is returned (not printed).
pub async fn submit(args: &SubmitArgs, printer: Printer) -> Report {
    let mut report = Report::new(Outcome::UsageError);
    let doc = match prepare(args) {
        Ok(doc) => doc,
        Err(message) => return failed(report, Outcome::UsageError, message),
    };
    report.name = name_or_prefix(&doc);
    let client = match Client::try_default().await {
        Ok(c) => c,
        Err(e) => {
            let message =
                format!("no usable Kubernetes configuration (kubeconfig or in-cluster): {e}");
            return failed(report, Outcome::Error, message);
        }
    };
    let ns = match manifest::namespace(args.namespace.as_deref(), &doc, client.default_namespace())
    {
        Ok(ns) => ns,
        Err(message) => return failed(report, Outcome::UsageError, message),
    };
    report.namespace = Some(ns.clone());
    let name = match create(&client, &ns, doc).await {
        Ok(name) => name,
        Err((outcome, message)) => return failed(report, outcome, message),
    };
    report.name = Some(name.clone());
    if !args.wait {
        report.set_outcome(Outcome::Created);
        return report;
    }
    let api: Api<TrainingRun> = Api::namespaced(client, &ns);
    let mut last = None;
    let waited = match args.timeout {
        Some(limit) => tokio::time::timeout(limit, wait(api, &name, printer, &mut last)).await,
        None => Ok(wait(api, &name, printer, &mut last).await),
    };
    match waited {
        Ok(Ok(run)) => judge(report, &run, &args.require),
        Ok(Err(message)) => failed(report, Outcome::Error, message),
        Err(_elapsed) => timed_out(report, last.as_ref(), args.timeout.unwrap_or_default()),
    }
}

/// Read the manifest and apply `--set` and `--generate-name`, then check it is a TrainingRun
/// with a name (the rest is the API server's to check).
fn prepare(args: &SubmitArgs) -> Result<Value, String> {
    let mut doc = manifest::read(&args.file)?;
    for set in &args.set {
        set.apply(&mut doc)?;
    }
    if args.generate_name {
        manifest::generate_name(&mut doc)?;
    }
    manifest::check(&doc)?;
    Ok(doc)
}

/// The manifest's name, or its generateName followed by `*`.
fn name_or_prefix(doc: &Value) -> Option<String> {
    let meta = &doc["metadata"];
    meta["name"].as_str().map(str::to_string).or_else(|| {
        meta["generateName"]
            .as_str()
            .map(|prefix| format!("{prefix}*"))
    })
}

fn failed(mut report: Report, outcome: Outcome, message: String) -> Report {
    report.set_outcome(outcome);
    report.message = Some(message);
    report
}

/// Create the manifest in `ns`; the created name, or how the API server refused.
async fn create(client: &Client, ns: &str, doc: Value) -> Result<String, (Outcome, String)> {
    let what = format!(
        "TrainingRun {ns}/{}",
        name_or_prefix(&doc).unwrap_or_default()
    );
    let object: DynamicObject = serde_json::from_value(doc).map_err(|e| {
        (
            Outcome::UsageError,
            format!("{what}: malformed metadata: {e}"),
        )
    })?;
    let resource = ApiResource::erase::<TrainingRun>(&());
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &resource);
    let created = api
        .create(&PostParams::default(), &object)
        .await
        .map_err(|e| describe_create_error(&e, &what))?;
    created.metadata.name.ok_or_else(|| {
        (
            Outcome::Error,
            format!("the API server created {what} without a name"),
        )
    })
}

/// A refusal names the fields the API server names (its `details.causes`), because that is what
/// the person reading the CI log has to change. 4xx: the request needs fixing (exit 2); anything
/// else says nothing about the manifest (exit 5).
pub fn describe_create_error(e: &kube::Error, what: &str) -> (Outcome, String) {
    let kube::Error::Api(status) = e else {
        return (Outcome::Error, format!("cannot create {what}: {e}"));
    };
    let outcome = if (400..500).contains(&status.code) {
        Outcome::Rejected
    } else {
        Outcome::Error
    };
    let mut message = format!(
        "the API server refused to create {what} ({} {})",
        status.code, status.reason
    );
    let causes = status
        .details
        .as_ref()
        .map(|d| d.causes.as_slice())
        .unwrap_or_default();
    if causes.is_empty() {
        message += &format!(": {}", status.message);
    }
    for cause in causes {
        match cause.field.as_str() {
            "" => message += &format!("\n  {}", cause.message),
            field => message += &format!("\n  {field}: {}", cause.message),
        }
    }
    let hint = match status.reason.as_str() {
        "AlreadyExists" => Some("submit with --generate-name to create a new run each time"),
        "NotFound" => Some("is the TrainingRun CRD installed (crds/)?"),
        "Forbidden" => {
            Some("the credentials may not create trainingruns here: see examples/ci/rbac.yaml")
        }
        _ => None,
    };
    if let Some(hint) = hint {
        message += &format!("\n  ({hint})");
    }
    (outcome, message)
}

/// Follow run `name` until it is over, printing progress; `last` keeps the latest version seen,
/// for the report when the caller gives up first. A watch error is retried with backoff (API
/// servers end watches routinely), except a refusal, which retrying cannot change.
async fn wait(
    api: Api<TrainingRun>,
    name: &str,
    printer: Printer,
    last: &mut Option<TrainingRun>,
) -> Result<TrainingRun, String> {
    let what = format!("TrainingRun {}/{name}", api.namespace().unwrap_or_default());
    let mut progress = Progress::default();
    let mut events = pin!(watcher::watch_object(api, name).default_backoff());
    while let Some(event) = events.next().await {
        match event {
            Ok(Some(run)) => {
                for line in progress.changes(&run) {
                    printer.progress(&line);
                }
                let over = is_over(&run);
                *last = Some(run);
                if over {
                    return last.clone().ok_or_else(|| "no run".into());
                }
            }
            Ok(None) => return Err(format!("{what} was deleted while waiting for it")),
            Err(e) if refused(&e) => return Err(format!("cannot watch {what}: {e}")),
            Err(e) => printer.warn(&format!("watching {what}: {e} (retrying)")),
        }
    }
    Err(format!("the watch of {what} ended"))
}

/// Whether a watch error is the API server saying no (401/403), not a hiccup.
fn refused(e: &watcher::Error) -> bool {
    let code = match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => s.code,
        watcher::Error::WatchError(s) => s.code,
        _ => return false,
    };
    matches!(code, 401 | 403)
}

/// Whether the run is over: a terminal phase computed from the current spec (a status written
/// for an older generation may be stale).
pub fn is_over(run: &TrainingRun) -> bool {
    let Some(status) = &run.status else {
        return false;
    };
    let current = match (status.observed_generation, run.metadata.generation) {
        (Some(seen), Some(now)) => seen >= now,
        _ => true,
    };
    current && status.phase.is_some_and(RunPhase::is_terminal)
}

/// The report of a finished run: its phase decides, then the requirements.
pub fn judge(mut report: Report, run: &TrainingRun, requirements: &[Requirement]) -> Report {
    let status = run.status.clone().unwrap_or_default();
    describe_status(&mut report, run);
    report.requirements = requirements.iter().map(|r| r.check(&status)).collect();
    let outcome = match status.phase {
        Some(RunPhase::Succeeded) if report.requirements.iter().all(|r| r.met) => {
            Outcome::Succeeded
        }
        Some(RunPhase::Succeeded) => Outcome::RequirementNotMet,
        Some(RunPhase::Failed) => Outcome::Failed,
        Some(RunPhase::Invalid) => Outcome::Invalid,
        other => {
            let message = format!("the run is not over (phase {other:?})");
            return failed(report, Outcome::Error, message);
        }
    };
    report.set_outcome(outcome);
    report.message = final_message(run);
    report
}

/// Phase, best model and metric of `run` into `report`.
fn describe_status(report: &mut Report, run: &TrainingRun) {
    let Some(status) = &run.status else {
        return;
    };
    report.phase = status.phase.map(|p| format!("{p:?}"));
    report.best_model = status.best_model.clone();
    report.metric = status.best_model.as_ref().map(|b| MetricValue {
        name: b.metric_name.clone(),
        value: b.metric,
    });
}

/// What the operator said about the end: the message of the condition of the final phase
/// (`Valid` names the invalid field), else the status message.
fn final_message(run: &TrainingRun) -> Option<String> {
    let status = run.status.as_ref()?;
    let condition = match status.phase? {
        RunPhase::Succeeded => "Succeeded",
        RunPhase::Failed => "Failed",
        RunPhase::Invalid => "Valid",
        _ => return status.message.clone(),
    };
    status
        .conditions
        .iter()
        .find(|c| c.type_ == condition && !c.message.is_empty())
        .map(|c| c.message.clone())
        .or_else(|| status.message.clone())
}

/// The report when `--timeout` passed: what was seen last, and that the run goes on.
fn timed_out(mut report: Report, last: Option<&TrainingRun>, limit: Duration) -> Report {
    if let Some(run) = last {
        describe_status(&mut report, run);
    }
    let (ns, name) = (
        report.namespace.clone().unwrap_or_default(),
        report.name.clone().unwrap_or_default(),
    );
    let message = format!(
        "timed out after {} waiting for TrainingRun {ns}/{name} (phase {}); the run is left \
         running: `kubectl delete trainingrun -n {ns} {name}` stops it",
        humantime::format_duration(limit),
        report.phase.as_deref().unwrap_or("unknown"),
    );
    failed(report, Outcome::TimedOut, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn help_lists_every_exit_code() {
        let listed: String = ExitCode::ALL
            .iter()
            .map(|c| format!("\n  {}  {}", c.code(), c.meaning()))
            .collect();
        assert_eq!(EXIT_CODES_HELP, format!("Exit codes:{listed}"));
        let codes: Vec<i32> = ExitCode::ALL.iter().map(|c| c.code()).collect();
        assert_eq!(codes, [0, 1, 2, 3, 4, 5]);
    }

    fn run(status: Value) -> TrainingRun {
        serde_json::from_value(json!({
            "apiVersion": "textrec.dev/v1alpha1", "kind": "TrainingRun",
            "metadata": {"name": "ocr", "namespace": "ml", "generation": 2},
            "spec": {}, "status": status
        }))
        .unwrap()
    }

    fn condition(type_: &str, message: &str) -> Value {
        json!({"type": type_, "status": "True", "reason": "R", "message": message,
            "lastTransitionTime": "2030-01-01T00:00:00Z"})
    }

    #[test]
    fn a_run_is_over_in_a_terminal_phase_of_its_current_generation() {
        assert!(!is_over(&run(
            json!({"phase": "Running", "observedGeneration": 2})
        )));
        assert!(is_over(&run(
            json!({"phase": "Failed", "observedGeneration": 2})
        )));
        assert!(is_over(&run(json!({"phase": "Invalid"}))));
        assert!(!is_over(&run(
            json!({"phase": "Succeeded", "observedGeneration": 1})
        )));
        assert!(!is_over(&run(json!({}))));
    }

    #[test]
    fn judge_maps_phase_and_requirements_to_outcomes() {
        let best = json!({"trial": "ocr-t0", "url": "s3://b/m/", "sha256": "ab", "metric": 0.04, "metricName": "cer"});
        let ok = run(json!({"phase": "Succeeded", "bestModel": best,
            "conditions": [condition("Succeeded", "2 of 2 trials succeeded")]}));
        let req = |t: &str| Requirement::parse(t).unwrap();
        let r = judge(Report::new(Outcome::Created), &ok, &[req("cer<=0.05")]);
        assert_eq!((r.outcome, r.exit_code), (Outcome::Succeeded, 0));
        assert_eq!(r.message.as_deref(), Some("2 of 2 trials succeeded"));
        assert_eq!(r.metric.as_ref().unwrap().value, 0.04);
        let r = judge(
            Report::new(Outcome::Created),
            &ok,
            &[req("cer<=0.05"), req("cer<0.01")],
        );
        assert_eq!((r.outcome, r.exit_code), (Outcome::RequirementNotMet, 3));

        let failed = run(json!({"phase": "Failed", "message": "3 trials failed",
            "conditions": [condition("Failed", "3 trials failed, more than spec.maxFailedTrials (2)")]}));
        let r = judge(Report::new(Outcome::Created), &failed, &[req("cer<=0.05")]);
        assert_eq!((r.outcome, r.exit_code), (Outcome::Failed, 1));
        assert!(r.message.unwrap().contains("maxFailedTrials"));
        assert!(!r.requirements[0].met);

        let invalid = run(json!({"phase": "Invalid",
            "conditions": [condition("Valid", "spec.hyperparameters.optimizer.lr: empty list")]}));
        let r = judge(Report::new(Outcome::Created), &invalid, &[]);
        assert_eq!((r.outcome, r.exit_code), (Outcome::Invalid, 2));
        assert!(r.message.unwrap().contains("optimizer.lr"));
    }

    #[test]
    fn a_timeout_says_the_run_goes_on() {
        let mut report = Report::new(Outcome::Created);
        report.name = Some("ocr".into());
        report.namespace = Some("ml".into());
        let last = run(json!({"phase": "Running"}));
        let r = timed_out(report, Some(&last), Duration::from_secs(90));
        assert_eq!((r.outcome, r.exit_code), (Outcome::TimedOut, 4));
        let m = r.message.unwrap();
        assert!(m.contains("1m 30s") && m.contains("phase Running"), "{m}");
        assert!(m.contains("left running") && m.contains("kubectl delete trainingrun -n ml ocr"));
    }

    #[test]
    fn a_refusal_names_the_fields() {
        let status: kube::core::Status = serde_json::from_value(json!({
            "status": "Failure", "code": 422, "reason": "Invalid",
            "message": "TrainingRun.textrec.dev \"bad\" is invalid: spec.search.parallelism: Invalid value",
            "details": {"name": "bad", "kind": "TrainingRun", "causes": [
                {"reason": "FieldValueInvalid", "field": "spec.search.parallelism",
                 "message": "Invalid value: \"object\": spec.search.parallelism must not exceed spec.search.maxTrials"}]}
        }))
        .unwrap();
        let (outcome, m) =
            describe_create_error(&kube::Error::Api(Box::new(status)), "TrainingRun ml/bad");
        assert_eq!(outcome, Outcome::Rejected);
        assert!(
            m.starts_with("the API server refused to create TrainingRun ml/bad (422 Invalid)"),
            "{m}"
        );
        assert!(
            m.contains("\n  spec.search.parallelism: Invalid value"),
            "{m}"
        );

        let conflict: kube::core::Status = serde_json::from_value(json!({
            "status": "Failure", "code": 409, "reason": "AlreadyExists",
            "message": "trainingruns.textrec.dev \"ocr\" already exists"}))
        .unwrap();
        let (outcome, m) =
            describe_create_error(&kube::Error::Api(Box::new(conflict)), "TrainingRun ml/ocr");
        assert_eq!(outcome, Outcome::Rejected);
        assert!(
            m.contains("already exists") && m.contains("--generate-name"),
            "{m}"
        );

        let down: kube::core::Status = serde_json::from_value(json!({
            "status": "Failure", "code": 503, "reason": "ServiceUnavailable", "message": "etcd"}))
        .unwrap();
        let (outcome, _) =
            describe_create_error(&kube::Error::Api(Box::new(down)), "TrainingRun ml/ocr");
        assert_eq!(outcome, Outcome::Error);
    }
}
