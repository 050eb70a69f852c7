//! What `submit` says at the end: a few lines of text, or one JSON object for the pipeline to
//! parse. Progress goes to stdout in text mode and to stderr in JSON mode, so stdout stays one
//! parseable object.

use serde::Serialize;

use super::requirement::RequirementResult;
use super::ExitCode;
use crate::crd::BestModel;

/// `--output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OutputFormat {
    /// Lines for people.
    #[default]
    Text,
    /// One JSON object on stdout at the end; progress lines on stderr.
    Json,
}

/// How the submission ended, as the JSON output's `outcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Outcome {
    /// Created; not waited for (no `--wait`).
    Created,
    /// The run succeeded and every requirement holds.
    Succeeded,
    /// The run failed.
    Failed,
    /// The operator found the spec invalid (phase `Invalid`).
    Invalid,
    /// The run succeeded but a requirement does not hold.
    RequirementNotMet,
    /// `--timeout` passed first; the run goes on.
    TimedOut,
    /// Bad arguments or manifest; nothing was created.
    UsageError,
    /// The API server refused to create the run.
    Rejected,
    /// The API server could not be reached or asked, or the run disappeared while waited for.
    Error,
}

impl Outcome {
    /// The exit code it ends the command with.
    pub fn exit_code(self) -> ExitCode {
        match self {
            Outcome::Created | Outcome::Succeeded => ExitCode::Succeeded,
            Outcome::Failed => ExitCode::RunFailed,
            Outcome::Invalid | Outcome::UsageError | Outcome::Rejected => ExitCode::Usage,
            Outcome::RequirementNotMet => ExitCode::RequirementNotMet,
            Outcome::TimedOut => ExitCode::Timeout,
            Outcome::Error => ExitCode::Error,
        }
    }
}

/// The metric a run was judged by: its best model's objective value.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricValue {
    /// `cer` or `wer`.
    pub name: String,
    /// The best value.
    pub value: f64,
}

/// Everything `submit` knows at the end (the JSON output).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// The run's name (once created; the manifest's name before).
    pub name: Option<String>,
    /// Its namespace (once known).
    pub namespace: Option<String>,
    /// Its last phase seen (`Succeeded`, `Failed`, …; none when not waited for).
    pub phase: Option<String>,
    /// How it ended.
    pub outcome: Outcome,
    /// The best model of the run's status.
    pub best_model: Option<BestModel>,
    /// The best model's objective value.
    pub metric: Option<MetricValue>,
    /// Each `--require`, checked against the final status.
    pub requirements: Vec<RequirementResult>,
    /// What went wrong, or the run's own status message.
    pub message: Option<String>,
    /// The exit code.
    pub exit_code: i32,
}

impl Report {
    /// A report of `outcome` with nothing else known yet.
    pub fn new(outcome: Outcome) -> Self {
        Report {
            name: None,
            namespace: None,
            phase: None,
            outcome,
            best_model: None,
            metric: None,
            requirements: Vec::new(),
            message: None,
            exit_code: outcome.exit_code().code(),
        }
    }

    /// Change the outcome (and with it the exit code).
    pub fn set_outcome(&mut self, outcome: Outcome) {
        self.outcome = outcome;
        self.exit_code = outcome.exit_code().code();
    }

    /// `ml/ocr-x7k2p`.
    pub fn run_ref(&self) -> String {
        format!(
            "{}/{}",
            self.namespace.as_deref().unwrap_or("?"),
            self.name.as_deref().unwrap_or("?")
        )
    }

    /// The final lines in text mode: `(stdout, stderr)`. What went wrong goes to stderr, where CI
    /// logs highlight it; the result goes to stdout.
    pub fn text(&self) -> (Vec<String>, Vec<String>) {
        let mut out = Vec::new();
        let mut err = Vec::new();
        match self.outcome {
            Outcome::Created => out.push(self.name.clone().unwrap_or_default()),
            Outcome::UsageError | Outcome::Rejected | Outcome::Error | Outcome::TimedOut => {
                err.push(format!("error: {}", self.message.as_deref().unwrap_or("")))
            }
            Outcome::Succeeded
            | Outcome::Failed
            | Outcome::Invalid
            | Outcome::RequirementNotMet => {
                let phase = self.phase.as_deref().unwrap_or("?");
                match &self.message {
                    Some(m) => out.push(format!("TrainingRun {} {phase}: {m}", self.run_ref())),
                    None => out.push(format!("TrainingRun {} {phase}", self.run_ref())),
                }
                if let Some(best) = &self.best_model {
                    out.push(format!("best model: {}", best.url));
                    out.push(format!("  trial:  {}", best.trial));
                    out.push(format!("  sha256: {}", best.sha256));
                    out.push(format!("  {}: {}", best.metric_name, best.metric));
                }
                for r in &self.requirements {
                    out.push(format!("requirement {r}"));
                }
            }
        }
        (out, err)
    }
}

/// Where progress and the report go, by `--output`.
#[derive(Debug, Clone, Copy)]
pub struct Printer {
    /// The format.
    pub format: OutputFormat,
}

impl Printer {
    /// A progress line: stdout for people, stderr when stdout is the JSON object.
    pub fn progress(&self, line: &str) {
        match self.format {
            OutputFormat::Text => println!("{line}"),
            OutputFormat::Json => eprintln!("{line}"),
        }
    }

    /// A warning (a watch that broke and is restarted): always stderr.
    pub fn warn(&self, line: &str) {
        eprintln!("warning: {line}");
    }

    /// The report, as the format wants it. In JSON mode an error is also said on stderr, for the
    /// people reading the CI log.
    pub fn report(&self, report: &Report) {
        let (out, err) = report.text();
        match self.format {
            OutputFormat::Text => {
                out.iter().for_each(|l| println!("{l}"));
                err.iter().for_each(|l| eprintln!("{l}"));
            }
            OutputFormat::Json => {
                err.iter().for_each(|l| eprintln!("{l}"));
                match serde_json::to_string(report) {
                    Ok(json) => println!("{json}"),
                    Err(e) => eprintln!("error: cannot write the report as JSON: {e}"),
                }
            }
        }
    }
}
