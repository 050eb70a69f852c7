//! Live progress of `local run`: one line per trial (step, samples/s, latest objective metric,
//! restarts and preemptions) plus the best so far, redrawn in place on a terminal; on a pipe or
//! in CI, plain timestamped log lines (a trial's line is printed when it evaluates or at most
//! every 30 seconds while it trains).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use textrec_contract::TrialProgress;

use crate::crd::{TrainingRun, TrialPhase, TrialStatus};
use crate::local::state::LocalState;
use crate::local::trials::TrialKey;
use crate::run_plan::{PlannedEvent, Severity};

/// One trial as shown.
#[derive(Debug, Clone, PartialEq)]
pub struct TrialLine {
    /// `run/trial`.
    pub key: String,
    /// Phase.
    pub phase: TrialPhase,
    /// Steps done and planned (0 when unknown).
    pub step: u64,
    /// Planned steps.
    pub max_steps: u64,
    /// Recent throughput.
    pub samples_per_sec: Option<f64>,
    /// Latest objective value and its name.
    pub latest: Option<f64>,
    /// Metric name.
    pub metric: &'static str,
    /// Failed attempts replaced.
    pub restarts: i32,
    /// Preemptions.
    pub preemptions: i32,
}

impl TrialLine {
    /// The line for `t` of `run`, with its live progress if known.
    pub fn new(run: &TrainingRun, t: &TrialStatus, p: Option<&TrialProgress>) -> Self {
        Self {
            key: format!(
                "{}/{}",
                run.metadata.name.as_deref().unwrap_or_default(),
                t.name
            ),
            phase: t.phase,
            step: p.map_or(t.step, |p| p.step.max(t.step)),
            max_steps: p.map_or(0, |p| p.max_steps),
            samples_per_sec: p.and_then(|p| p.samples_per_sec),
            latest: t.latest_metric,
            metric: run.spec.objective.metric.as_str(),
            restarts: t.restarts,
            preemptions: t.preemptions,
        }
    }

    /// The text after the trial's name.
    pub fn detail(&self) -> String {
        let mut s = format!("{:?}", self.phase);
        if self.max_steps > 0 {
            s.push_str(&format!("  step {}/{}", self.step, self.max_steps));
        } else {
            s.push_str(&format!("  step {}", self.step));
        }
        if let Some(v) = self
            .samples_per_sec
            .filter(|_| self.phase == TrialPhase::Running)
        {
            s.push_str(&format!("  {v:.1} samples/s"));
        }
        if let Some(m) = self.latest {
            s.push_str(&format!("  {} {m:.4}", self.metric.to_uppercase()));
        }
        s.push_str(&format!(
            "  restarts {}  preemptions {}",
            self.restarts, self.preemptions
        ));
        s
    }
}

/// Where progress goes.
pub enum Display {
    /// Redrawn bars on a terminal.
    Tty(TtyDisplay),
    /// Log lines.
    Plain(PlainDisplay),
}

impl Display {
    /// Bars when stderr is a terminal (and `plain` is false), else log lines.
    pub fn new(plain: bool) -> Self {
        use std::io::IsTerminal;
        if !plain && std::io::stderr().is_terminal() {
            Display::Tty(TtyDisplay::new())
        } else {
            Display::Plain(PlainDisplay::default())
        }
    }

    /// Print a message (an event, a URL).
    pub fn println(&self, msg: &str) {
        match self {
            Display::Tty(t) => {
                let _ = t.multi.println(msg);
            }
            Display::Plain(_) => eprintln!("{} {msg}", stamp()),
        }
    }

    /// Print an event of the `kind` object `name`.
    pub fn event(&self, kind: &str, name: &str, e: &PlannedEvent) {
        let sev = match e.severity {
            Severity::Normal => "",
            Severity::Warning => "warning: ",
        };
        self.println(&format!("{kind} {name}: {sev}{} {}", e.reason, e.message));
    }

    /// Show the trials of `state` that were started, with their live `progress`, and the best
    /// so far.
    pub fn show(&mut self, state: &LocalState, progress: &BTreeMap<TrialKey, TrialProgress>) {
        let mut lines = Vec::new();
        let mut best: Option<(f64, String)> = None;
        for (name, rec) in &state.runs {
            let Some(st) = rec.run.status.as_ref() else {
                continue;
            };
            let dir = rec.run.spec.objective.direction;
            for t in &st.trials {
                if t.phase == TrialPhase::Pending && !rec.trials.contains_key(&t.name) {
                    continue;
                }
                let p = progress.get(&(name.clone(), t.name.clone()));
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
        self.update(&lines, best.map(|b| b.1));
    }

    /// Show these trials and the best so far.
    pub fn update(&mut self, lines: &[TrialLine], best: Option<String>) {
        match self {
            Display::Tty(t) => t.update(lines, best),
            Display::Plain(p) => p.update(lines, best),
        }
    }

    /// Remove the bars (before the final summary).
    pub fn finish(&mut self) {
        if let Display::Tty(t) = self {
            for b in t.bars.values() {
                b.finish_and_clear();
            }
            t.best.finish_and_clear();
            t.bars.clear();
        }
    }
}

/// One line per run for the end of `local run`: its phase, trials done and best model.
pub fn summary(state: &LocalState) -> Vec<String> {
    state
        .runs
        .iter()
        .map(|(name, rec)| {
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
            format!(
                "TrainingRun {name}: {} ({} trials done){best}",
                st.phase.map_or("Pending".into(), |p| format!("{p:?}")),
                st.trials_done.unwrap_or_default()
            )
        })
        .collect()
}

fn stamp() -> String {
    chrono::Utc::now().format("%H:%M:%S").to_string()
}

/// Bars on a terminal.
pub struct TtyDisplay {
    multi: MultiProgress,
    bars: BTreeMap<String, ProgressBar>,
    best: ProgressBar,
}

impl TtyDisplay {
    fn new() -> Self {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(4));
        let best = multi.add(ProgressBar::new(0));
        best.set_style(ProgressStyle::with_template("{msg}").expect("valid template"));
        Self {
            multi,
            bars: BTreeMap::new(),
            best,
        }
    }

    fn update(&mut self, lines: &[TrialLine], best: Option<String>) {
        let width = lines.iter().map(|l| l.key.len()).max().unwrap_or(10);
        for l in lines {
            let bar = self.bars.entry(l.key.clone()).or_insert_with(|| {
                let b = self
                    .multi
                    .insert_before(&self.best, ProgressBar::new(l.max_steps.max(1)));
                b.set_style(
                    ProgressStyle::with_template(&format!(
                        "{{prefix:<{width}}} [{{bar:24}}] {{msg}}"
                    ))
                    .expect("valid template")
                    .progress_chars("=> "),
                );
                b.set_prefix(l.key.clone());
                b
            });
            if l.max_steps > 0 {
                bar.set_length(l.max_steps);
            }
            bar.set_position(l.step);
            bar.set_message(l.detail());
        }
        self.best
            .set_message(best.unwrap_or_else(|| "best so far: none yet".into()));
    }
}

/// Log lines for pipes and CI.
#[derive(Default)]
pub struct PlainDisplay {
    shown: BTreeMap<String, (TrialLine, Instant)>,
    best: Option<String>,
}

impl PlainDisplay {
    fn update(&mut self, lines: &[TrialLine], best: Option<String>) {
        for l in lines {
            let due = match self.shown.get(&l.key) {
                None => true,
                Some((prev, at)) => {
                    prev.phase != l.phase
                        || prev.latest != l.latest
                        || prev.restarts != l.restarts
                        || prev.preemptions != l.preemptions
                        || (l.phase == TrialPhase::Running
                            && prev.step != l.step
                            && at.elapsed() >= Duration::from_secs(30))
                }
            };
            if due {
                eprintln!("{} {}  {}", stamp(), l.key, l.detail());
                self.shown
                    .insert(l.key.clone(), (l.clone(), Instant::now()));
            }
        }
        if best.is_some() && best != self.best {
            eprintln!("{} {}", stamp(), best.clone().unwrap_or_default());
            self.best = best;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trial_line_shows_step_rate_metric_and_restarts() {
        let l = TrialLine {
            key: "r/r-t0".into(),
            phase: TrialPhase::Running,
            step: 40,
            max_steps: 60,
            samples_per_sec: Some(51.27),
            latest: Some(0.4321),
            metric: "cer",
            restarts: 1,
            preemptions: 2,
        };
        assert_eq!(
            l.detail(),
            "Running  step 40/60  51.3 samples/s  CER 0.4321  restarts 1  preemptions 2"
        );
    }
}
