//! `/ui/runs/NS/NAME`: one TrainingRun's learning curves and trials.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use kube::ResourceExt;

use super::{badge, card, page, phase_name, when};
use crate::crd::{
    Direction, ObjectiveSpec, TrainingRun, TrainingRunStatus, TrialPhase, TrialStatus,
};
use crate::ui::data::{namespace_of, Sample, TrialCurves};
use crate::ui::downsample::{min_max, Point};
use crate::ui::html::{esc, metric, url_part};
use crate::ui::svg::{self, Chart, Series, XAxis};

/// Most points drawn per series.
pub const MAX_POINTS_PER_SERIES: usize = 500;
/// Fewest points drawn per series, however many trials share a chart.
pub const MIN_POINTS_PER_SERIES: usize = 60;
/// Points drawn per chart in all, shared among its series (within the two bounds above).
pub const POINTS_PER_CHART: usize = 20_000;

/// Options of a run page.
#[derive(Debug, Clone, Default)]
pub struct RunView {
    /// Logarithmic vertical axes.
    pub log: bool,
    /// Column to sort the trials by (default: the objective).
    pub sort: Option<String>,
    /// Sort descending.
    pub desc: bool,
}

impl RunView {
    fn query(&self, log: bool, sort: Option<&str>, desc: bool) -> String {
        let mut q = Vec::new();
        if log {
            q.push("log=1".to_string());
        }
        if let Some(s) = sort {
            q.push(format!("sort={}", url_part(s)));
        }
        if desc {
            q.push("desc=1".into());
        }
        if q.is_empty() {
            "?".into()
        } else {
            format!("?{}", q.join("&"))
        }
    }
}

/// The searched values of a trial's status entry (`a=1,b.c=[2,3]`) as ordered pairs.
pub fn parse_params(params: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for part in params.split(',') {
        match part.split_once('=') {
            Some((k, v)) if !k.is_empty() && !k.contains(['[', '{', '"']) => {
                out.push((k.to_string(), v.to_string()))
            }
            // A comma inside a list or object value.
            _ => match out.last_mut() {
                Some((_, v)) => {
                    v.push(',');
                    v.push_str(part);
                }
                None => out.push((part.to_string(), String::new())),
            },
        }
    }
    out
}

fn cmp_values(a: &str, b: &str) -> std::cmp::Ordering {
    match (a.parse::<f64>(), b.parse::<f64>()) {
        (Ok(x), Ok(y)) => x.total_cmp(&y),
        _ => a.cmp(b),
    }
}

fn chart_series(
    shown: &Shown,
    curves: &BTreeMap<String, Arc<TrialCurves>>,
    pick: fn(&TrialCurves) -> &[Sample],
    wall_clock_origin: Option<f64>,
) -> Vec<Series> {
    let with_data = shown
        .trials
        .iter()
        .filter(|t| curves.get(&t.name).is_some_and(|c| !pick(c).is_empty()))
        .count()
        .max(1);
    let budget = (POINTS_PER_CHART / with_data).clamp(MIN_POINTS_PER_SERIES, MAX_POINTS_PER_SERIES);
    shown
        .trials
        .iter()
        .filter_map(|t| {
            let c = curves.get(&t.name)?;
            let samples = pick(c);
            if samples.is_empty() {
                return None;
            }
            let pts: Vec<Point> = samples
                .iter()
                .map(|s| Point {
                    x: match wall_clock_origin {
                        Some(o) => s.time - o,
                        None => s.step,
                    },
                    y: s.value,
                })
                .collect();
            Some(Series {
                name: t.name.clone(),
                color: shown.color(&t.name).to_string(),
                points: min_max(&pts, budget),
                emphasis: shown.is_best(&t.name),
            })
        })
        .collect()
}

/// `/ui/runs/NS/NAME`: curves of every trial (CER and loss against step and against
/// wall-clock time), the trials' hyperparameters against the objective, restarts and
/// preemptions.
pub fn run_page(
    run: &TrainingRun,
    curves: &BTreeMap<String, Arc<TrialCurves>>,
    read_errors: &[String],
    view: &RunView,
    now: i64,
) -> String {
    let ns = namespace_of(run);
    let name = run.name_any();
    let st = run.status.clone().unwrap_or_default();
    let mut body = String::new();
    let _ = write!(
        body,
        "<h1>TrainingRun {} {}</h1>",
        esc(&name),
        badge(&phase_name(st.phase))
    );
    if let Some(r) = &st.reason {
        let _ = write!(
            body,
            "<div class=\"error\"><b>{}</b> {}</div>",
            esc(r),
            esc(st.message.as_deref().unwrap_or(""))
        );
    }
    body.push_str(&summary_cards(run, &st, &ns, now));
    body.push_str(&read_errors_html(read_errors));

    // Each trial keeps its colour in every chart, the legend and the table.
    let trials: Vec<&TrialStatus> = st.trials.iter().collect();
    let colors: BTreeMap<String, String> = trials
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name.clone(), svg::color(i)))
        .collect();
    let best = st
        .best_model
        .as_ref()
        .map(|b| b.trial.as_str())
        .or(st.best_trial.as_deref());
    let shown = Shown {
        trials: &trials,
        colors: &colors,
        best,
    };
    body.push_str(&learning_curves(&shown, curves, view));
    body.push_str(&trials_table(&shown, run.spec.objective, view));
    page(
        &format!("{name} · TrainingRun"),
        &format!(
            "/ <a href=\"/ui?namespace={nsq}\">{ns}</a> / TrainingRun {n}",
            nsq = url_part(&ns),
            ns = esc(&ns),
            n = esc(&name)
        ),
        &body,
    )
}

/// The trials as every section of a run page shows them.
struct Shown<'a> {
    trials: &'a [&'a TrialStatus],
    /// Each trial's colour, by name.
    colors: &'a BTreeMap<String, String>,
    /// The best trial (of the best model, or the best so far).
    best: Option<&'a str>,
}

impl Shown<'_> {
    fn color(&self, trial: &str) -> &str {
        self.colors.get(trial).map(String::as_str).unwrap_or("")
    }

    fn is_best(&self, trial: &str) -> bool {
        self.best == Some(trial)
    }
}

/// The run's summary: trial counts, objective, best model, lineage, times and storage.
fn summary_cards(run: &TrainingRun, st: &TrainingRunStatus, ns: &str, now: i64) -> String {
    let objective = run.spec.objective;
    let mname = objective.metric.as_str();
    let mut body = String::new();
    body.push_str("<div class=\"cards\">");
    body.push_str(&card("Namespace", esc(ns)));
    body.push_str(&card(
        "Trials done/total",
        format!(
            "{}/{}",
            st.counts.succeeded + st.counts.failed,
            if st.counts.total > 0 {
                st.counts.total
            } else {
                run.spec.search.max_trials
            }
        ),
    ));
    body.push_str(&card(
        "Running / failed",
        format!("{} / {}", st.counts.running, st.counts.failed),
    ));
    body.push_str(&card(
        "Objective",
        format!(
            "{} ({})",
            esc(mname),
            match objective.direction {
                Direction::Minimize => "minimize",
                Direction::Maximize => "maximize",
            }
        ),
    ));
    match &st.best_model {
        Some(b) => {
            body.push_str(&card(
                "Best model",
                format!(
                    "{} {} <span class=\"muted\">({})</span>",
                    esc(&b.metric_name),
                    metric(Some(b.metric)),
                    esc(&b.trial)
                ),
            ));
            body.push_str(&card(
                "Model",
                format!(
                    "<span class=\"mono\" title=\"sha256\">{}</span><br><span class=\"mono muted\">{}</span>",
                    esc(&b.sha256),
                    esc(&b.url)
                ),
            ));
        }
        None => {
            if let Some(b) = &st.best_trial {
                body.push_str(&card("Best trial so far", esc(b)));
            }
        }
    }
    // Lineage: the parent every trial started from.
    if let Some(p) = &st.init_from {
        body.push_str(&card(
            "Fine-tuned from",
            format!(
                "{}<br><span class=\"mono muted\">{}</span><br><span class=\"mono muted\" title=\"sha256\">{}</span>",
                esc(&p.source),
                esc(&p.url),
                esc(p.sha256.as_deref().unwrap_or("version not pinned"))
            ),
        ));
    }
    if let Some(t) = &st.start_time {
        body.push_str(&card("Started", when(t, now)));
    }
    if let Some(t) = &st.completion_time {
        body.push_str(&card("Finished", when(t, now)));
    }
    body.push_str(&card(
        "Storage",
        format!("<span class=\"mono\">{}</span>", esc(&run.spec.storage.url)),
    ));
    body.push_str("</div>");

    body
}

/// The trials whose metrics could not be read (the first five, then a count).
fn read_errors_html(read_errors: &[String]) -> String {
    let mut body = String::new();
    for e in read_errors.iter().take(5) {
        let _ = write!(
            body,
            "<div class=\"error\">cannot read metrics: {}</div>",
            esc(e)
        );
    }
    if read_errors.len() > 5 {
        let _ = write!(
            body,
            "<div class=\"error\">… and {} more trials whose metrics cannot be read</div>",
            read_errors.len() - 5
        );
    }

    body
}

/// The four learning-curve charts (CER and loss, by step and by wall-clock) and their legend.
fn learning_curves(
    shown: &Shown,
    curves: &BTreeMap<String, Arc<TrialCurves>>,
    view: &RunView,
) -> String {
    let mut body = String::new();
    let origin = curves
        .values()
        .flat_map(|c| c.cer.first().into_iter().chain(c.loss.first()))
        .map(|s| s.time)
        .fold(f64::INFINITY, f64::min);
    let origin = origin.is_finite().then_some(origin);
    let _ = write!(
        body,
        "<h2>Learning curves</h2><div class=\"toolbar\">Vertical axes: {lin} · {log}</div>",
        lin = if view.log {
            format!(
                "<a id=\"linear\" href=\"{}\">linear</a>",
                esc(&view.query(false, view.sort.as_deref(), view.desc))
            )
        } else {
            "<b>linear</b>".into()
        },
        log = if view.log {
            "<b>log</b>".into()
        } else {
            format!(
                "<a id=\"log\" href=\"{}\">log</a>",
                esc(&view.query(true, view.sort.as_deref(), view.desc))
            )
        },
    );
    let specs: [(&str, &str, &str, bool); 4] = [
        ("cer-step", "Validation CER", "step", false),
        ("loss-step", "Training loss", "step", false),
        (
            "cer-time",
            "Validation CER",
            "wall-clock since the run's first record",
            true,
        ),
        (
            "loss-time",
            "Training loss",
            "wall-clock since the run's first record",
            true,
        ),
    ];
    body.push_str("<div class=\"charts\">");
    for (id, what, x_label, wall) in specs {
        let pick: fn(&TrialCurves) -> &[Sample] = if id.starts_with("cer") {
            |c| &c.cer
        } else {
            |c| &c.loss
        };
        let series = chart_series(
            shown,
            curves,
            pick,
            if wall {
                Some(origin.unwrap_or(0.0))
            } else {
                None
            },
        );
        let chart = Chart {
            id: id.into(),
            title: format!("{what} by {}", if wall { "wall-clock" } else { "step" }),
            x_label: x_label.into(),
            y_label: what.into(),
            x_axis: if wall { XAxis::Duration } else { XAxis::Number },
            log_y: view.log,
            series,
        };
        let _ = write!(
            body,
            "<figure><figcaption>{}</figcaption>{}</figure>",
            esc(&chart.title),
            svg::render(&chart)
        );
    }
    body.push_str("</div><div class=\"legend\" id=\"legend\">");
    for t in shown.trials {
        let _ = write!(
            body,
            "<span data-trial=\"{n}\"><span class=\"sw\" style=\"background:{c}\"></span>{b}{n}{e} <span class=\"muted\">{m}</span></span>",
            n = esc(&t.name),
            c = esc(shown.color(&t.name)),
            b = if shown.is_best(&t.name) { "<b>" } else { "" },
            e = if shown.is_best(&t.name) { " (best)</b>" } else { "" },
            m = metric(t.best_metric),
        );
    }
    body.push_str("</div>");

    body
}

/// The trials table (searched values against the objective, sortable by any column) and the
/// run's disruptions.
fn trials_table(shown: &Shown, objective: ObjectiveSpec, view: &RunView) -> String {
    let trials = shown.trials;
    let mname = objective.metric.as_str();
    let mut body = String::new();
    let params: Vec<Vec<(String, String)>> =
        trials.iter().map(|t| parse_params(&t.params)).collect();
    let mut keys: Vec<String> = Vec::new();
    for p in &params {
        for (k, _) in p {
            if !keys.contains(k) {
                keys.push(k.clone());
            }
        }
    }
    let mut rows: Vec<(usize, BTreeMap<String, String>)> = params
        .into_iter()
        .enumerate()
        .map(|(i, p)| (i, p.into_iter().collect()))
        .collect();
    let objective_col = format!("best {mname}");
    let sort = view.sort.clone().unwrap_or_else(|| objective_col.clone());
    let key_of = |i: usize, p: &BTreeMap<String, String>| -> Option<String> {
        let t = trials[i];
        match sort.as_str() {
            "trial" => Some(t.name.clone()),
            "phase" => Some(format!("{:?}", t.phase)),
            "step" => Some(t.step.to_string()),
            "restarts" => Some(t.restarts.to_string()),
            "preemptions" => Some(t.preemptions.to_string()),
            "latest" => t.latest_metric.map(|v| v.to_string()),
            s if s == objective_col => t.best_metric.map(|v| v.to_string()),
            s => p.get(s).cloned(),
        }
    };
    // Default: best first in the objective's direction; empty values last either way.
    let desc = if view.sort.is_none() {
        objective.direction == Direction::Maximize
    } else {
        view.desc
    };
    rows.sort_by(|(ia, pa), (ib, pb)| {
        match (key_of(*ia, pa), key_of(*ib, pb)) {
            (Some(a), Some(b)) => {
                let o = cmp_values(&a, &b);
                if desc {
                    o.reverse()
                } else {
                    o
                }
            }
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        }
        .then(ia.cmp(ib))
    });
    let header = |col: &str, label: &str, num: bool| -> String {
        let active = sort == col;
        let next_desc = active && !desc;
        let arrow = if active {
            if desc {
                " ▼"
            } else {
                " ▲"
            }
        } else {
            ""
        };
        format!(
            "<th{cls}><a href=\"{href}\">{l}{arrow}</a></th>",
            cls = if num { " class=\"num\"" } else { "" },
            href = esc(&view.query(view.log, Some(col), next_desc)),
            l = esc(label),
        )
    };
    let _ = write!(
        body,
        "<h2>Trials <span class=\"muted\">({} · sorted by {}{})</span></h2>",
        trials.len(),
        esc(&sort),
        if desc { ", descending" } else { "" }
    );
    body.push_str("<table id=\"trials\"><thead><tr>");
    body.push_str(&header("trial", "Trial", false));
    body.push_str(&header("phase", "Phase", false));
    for k in &keys {
        body.push_str(&header(k, k, true));
    }
    body.push_str(&header(&objective_col, &objective_col, true));
    body.push_str(&header("latest", &format!("latest {mname}"), true));
    for (c, l) in [
        ("step", "Step"),
        ("restarts", "Restarts"),
        ("preemptions", "Preemptions"),
    ] {
        body.push_str(&header(c, l, true));
    }
    body.push_str("<th>Checkpoint</th><th>Reason</th></tr></thead><tbody>");
    for (i, p) in &rows {
        let t = trials[*i];
        let is_best = shown.is_best(&t.name);
        let _ = write!(
            body,
            "<tr data-trial=\"{n}\"{cur}><td><span class=\"sw\" style=\"display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:6px;background:{c}\"></span>{n}{star}</td><td>{ph}</td>",
            n = esc(&t.name),
            cur = if is_best { " class=\"current\"" } else { "" },
            c = esc(shown.color(&t.name)),
            star = if is_best { " ★" } else { "" },
            ph = badge(&format!("{:?}", t.phase)),
        );
        for k in &keys {
            let _ = write!(
                body,
                "<td class=\"num mono\">{}</td>",
                esc(p.get(k).map(String::as_str).unwrap_or(""))
            );
        }
        let _ = write!(
            body,
            "<td class=\"num\" title=\"{}\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"wrap muted\">{}</td></tr>",
            // Evaluations while training read with `joint`; a finished trial's best is read
            // again with its model's decoding.
            t.best_decoding
                .map_or("read with joint (as evaluated)".to_string(), |d| {
                    match t.best_reading_width.filter(|&w| w != 1.0) {
                        Some(w) => format!("read with {} at x{w} (as served)", d.as_str()),
                        None => format!("read with {} (as served)", d.as_str()),
                    }
                }),
            metric(t.best_metric),
            metric(t.latest_metric),
            t.step,
            t.restarts,
            t.preemptions,
            t.checkpoint.as_ref().map(|c| c.step.to_string()).unwrap_or_default(),
            esc(&[t.reason.as_deref(), t.message.as_deref()]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(": ")),
        );
    }
    if trials.is_empty() {
        body.push_str("<tr><td colspan=\"9\" class=\"muted\">No trials yet.</td></tr>");
    }
    body.push_str("</tbody></table>");
    let restarts: i32 = trials.iter().map(|t| t.restarts).sum();
    let preemptions: i32 = trials.iter().map(|t| t.preemptions).sum();
    let _ = write!(
        body,
        "<p class=\"muted\" id=\"disruptions\">{restarts} restarts and {preemptions} preemptions in all. Failed trials: {}.</p>",
        trials.iter().filter(|t| t.phase == TrialPhase::Failed).count()
    );
    body
}
