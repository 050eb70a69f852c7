//! The dashboard's pages, rendered to HTML strings from plain inputs (objects, curves, the
//! current time), so they are tested without a server.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

use super::data::{namespace_of, Sample, Selector, TrialCurves};
use super::downsample::{min_max, Point};
use super::html::{age, esc, metric, short_sha, url_part};
use super::svg::{self, Chart, Series, XAxis};
use crate::crd::{Direction, ModelDeployment, Revision, TrainingRun, TrialPhase, TrialStatus};

/// Most points drawn per series.
pub const MAX_POINTS_PER_SERIES: usize = 500;
/// Fewest points drawn per series, however many trials share a chart.
pub const MIN_POINTS_PER_SERIES: usize = 60;
/// Points drawn per chart in all, shared among its series (within the two bounds above).
pub const POINTS_PER_CHART: usize = 20_000;

const STYLE: &str = r#"
:root{--fg:#1d2330;--muted:#667085;--line:#d9dee7;--bg:#f6f7f9;--card:#fff;--accent:#2456c7}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);background:var(--bg)}
header{background:#1d2330;color:#fff;padding:10px 24px;display:flex;gap:18px;align-items:baseline}
header a{color:#fff;text-decoration:none;font-weight:600}
header .crumbs{color:#c8d0e0}
header .crumbs a{color:#c8d0e0;font-weight:400}
main{padding:18px 24px;max-width:1900px}
h1{font-size:20px;margin:4px 0 12px}
h2{font-size:16px;margin:22px 0 8px}
a{color:var(--accent)}
table{border-collapse:collapse;background:var(--card);border:1px solid var(--line);width:100%}
th,td{padding:5px 9px;border-bottom:1px solid var(--line);text-align:left;vertical-align:top;white-space:nowrap}
td.wrap{white-space:normal;max-width:420px;overflow-wrap:anywhere}
th{background:#eef1f5;font-weight:600}
th a{color:inherit;text-decoration:none}
tr.current td{background:#eef5ff}
.num{text-align:right;font-variant-numeric:tabular-nums}
.mono{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:12.5px}
.muted{color:var(--muted)}
.badge{display:inline-block;padding:0 7px;border-radius:9px;font-size:12px;font-weight:600;background:#e4e7ec}
.badge.Succeeded,.badge.Available,.badge.promoted{background:#d1f5dd;color:#0a5c2a}
.badge.Running,.badge.Progressing,.badge.Starting{background:#dbe8ff;color:#1d3f8f}
.badge.Failed,.badge.Invalid,.badge.Degraded,.badge.refused{background:#ffe1de;color:#8c1d12}
.badge.Pending,.badge.Suspended,.badge.Restarting,.badge.rolled-back{background:#fff1cc;color:#6b4b00}
.cards{display:flex;gap:12px;flex-wrap:wrap;margin-bottom:8px}
.card{background:var(--card);border:1px solid var(--line);border-radius:6px;padding:9px 13px;min-width:150px}
.card .k{color:var(--muted);font-size:12px}
.card .v{font-size:15px;font-weight:600}
form.filter{display:flex;gap:10px;align-items:center;margin-bottom:12px}
form.filter input{padding:4px 7px;border:1px solid var(--line);border-radius:4px;min-width:220px}
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(600px,1fr));gap:14px}
.charts figure{margin:0;background:var(--card);border:1px solid var(--line);border-radius:6px;padding:8px}
.charts figcaption{font-weight:600;margin:0 0 4px 6px}
svg.chart{width:100%;height:auto;display:block}
svg .plot{fill:#fbfcfd;stroke:#c3cad6}
svg .grid{stroke:#e7eaf0;stroke-width:1}
svg .tick{font-size:11px;fill:#667085}
svg .axis{font-size:12px;fill:#344054}
svg .note{font-size:13px;fill:#667085}
svg .series polyline{stroke-linejoin:round;stroke-linecap:round}
svg .series:hover polyline{stroke-width:3.5}
.legend{display:flex;flex-wrap:wrap;gap:4px 14px;margin:10px 0 2px;font-size:12.5px}
.legend span.sw{display:inline-block;width:14px;height:4px;border-radius:2px;vertical-align:middle;margin-right:5px}
.toolbar{margin:6px 0 10px}
.toolbar a{margin-right:12px}
.error{background:#ffe1de;border:1px solid #f3b2aa;padding:8px 12px;border-radius:6px;margin:8px 0}
"#;

fn page(title: &str, crumbs: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>{t} · textrec</title><style>{STYLE}</style></head><body><header><a href=\"/ui\">textrec dashboard</a><span class=\"crumbs\">{crumbs}</span></header><main>{body}</main></body></html>\n",
        t = esc(title),
    )
}

fn badge(text: &str) -> String {
    format!(
        "<span class=\"badge {c}\">{t}</span>",
        c = esc(text),
        t = esc(text)
    )
}

fn seconds(t: &Time) -> i64 {
    t.0.as_second()
}

fn when(t: &Time, now: i64) -> String {
    format!(
        "<span title=\"{full}\">{a} ago</span>",
        full = esc(&t.0.to_string()),
        a = age(now - seconds(t))
    )
}

/// Link to a run's page.
pub fn run_href(ns: &str, name: &str) -> String {
    format!("/ui/runs/{}/{}", url_part(ns), url_part(name))
}

/// Link to a deployment's page.
pub fn deployment_href(ns: &str, name: &str) -> String {
    format!("/ui/deployments/{}/{}", url_part(ns), url_part(name))
}

fn labels_html(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("<span class=\"mono muted\">{}={}</span>", esc(k), esc(v)))
        .collect::<Vec<_>>()
        .join(" ")
}

fn phase_name<T: std::fmt::Debug>(p: Option<T>) -> String {
    p.map(|p| format!("{p:?}")).unwrap_or_else(|| "–".into())
}

/// Filters of the runs list.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// Only this namespace (empty: all).
    pub namespace: String,
    /// Label selector text (empty: all).
    pub selector: String,
}

/// `/ui`: TrainingRuns and ModelDeployments, newest first, filtered by namespace and labels.
pub fn runs_page(
    runs: &[Arc<TrainingRun>],
    deployments: &[Arc<ModelDeployment>],
    filter: &ListFilter,
    now: i64,
) -> String {
    let mut body = String::new();
    let namespaces: BTreeSet<String> = runs
        .iter()
        .map(|r| namespace_of(r.as_ref()))
        .chain(deployments.iter().map(|d| namespace_of(d.as_ref())))
        .collect();
    let _ = write!(
        body,
        "<form class=\"filter\" method=\"get\" action=\"/ui\"><label>Namespace <input name=\"namespace\" list=\"namespaces\" value=\"{ns}\" placeholder=\"all\"></label><datalist id=\"namespaces\">{opts}</datalist><label>Labels <input name=\"selector\" value=\"{sel}\" placeholder=\"app=ocr,team in (a,b)\"></label><button type=\"submit\">Filter</button> <a href=\"/ui\">clear</a></form>",
        ns = esc(&filter.namespace),
        sel = esc(&filter.selector),
        opts = namespaces
            .iter()
            .map(|n| format!("<option value=\"{}\">", esc(n)))
            .collect::<String>(),
    );
    let selector = match Selector::parse(&filter.selector) {
        Ok(s) => s,
        Err(e) => {
            let _ = write!(body, "<div class=\"error\">{}</div>", esc(&e));
            Selector::default()
        }
    };
    let keep = |ns: String, labels: &BTreeMap<String, String>| {
        (filter.namespace.is_empty() || filter.namespace == ns) && selector.matches(labels)
    };
    let mut runs: Vec<&Arc<TrainingRun>> = runs
        .iter()
        .filter(|r| keep(namespace_of(r.as_ref()), r.labels()))
        .collect();
    runs.sort_by_key(|r| {
        (
            std::cmp::Reverse(r.creation_timestamp().map(|t| seconds(&t))),
            namespace_of(r.as_ref()),
            r.name_any(),
        )
    });
    let _ = write!(
        body,
        "<h1>TrainingRuns <span class=\"muted\">({})</span></h1>",
        runs.len()
    );
    body.push_str("<table id=\"runs\"><thead><tr><th>Namespace</th><th>Name</th><th>Phase</th><th class=\"num\">Trials done/total</th><th class=\"num\">Running</th><th>Best model</th><th>Model sha256</th><th>Age</th><th>Labels</th></tr></thead><tbody>");
    if runs.is_empty() {
        body.push_str("<tr><td colspan=\"9\" class=\"muted\">No TrainingRuns match.</td></tr>");
    }
    for r in &runs {
        let ns = namespace_of(r.as_ref());
        let name = r.name_any();
        let st = r.status.clone().unwrap_or_default();
        let done = st.counts.succeeded + st.counts.failed;
        let total = if st.counts.total > 0 {
            st.counts.total
        } else {
            r.spec.search.max_trials
        };
        let (best, sha) = match &st.best_model {
            Some(b) => (
                format!(
                    "{} {} <span class=\"muted\">({})</span><br><span class=\"mono muted\">{}</span>",
                    esc(&b.metric_name),
                    metric(Some(b.metric)),
                    esc(&b.trial),
                    esc(&b.url)
                ),
                format!(
                    "<span class=\"mono\" title=\"{}\">{}</span>",
                    esc(&b.sha256),
                    esc(short_sha(&b.sha256))
                ),
            ),
            None => ("<span class=\"muted\">–</span>".into(), String::new()),
        };
        let _ = write!(
            body,
            "<tr data-run=\"{en}\"><td>{ens}</td><td><a href=\"{href}\">{en}</a></td><td>{phase}{reason}</td><td class=\"num\">{done}/{total}</td><td class=\"num\">{running}</td><td class=\"wrap\">{best}</td><td>{sha}</td><td>{age}</td><td class=\"wrap\">{labels}</td></tr>",
            en = esc(&name),
            ens = esc(&ns),
            href = run_href(&ns, &name),
            phase = badge(&phase_name(st.phase)),
            reason = st
                .reason
                .as_deref()
                .map(|r| format!(" <span class=\"muted\">{}</span>", esc(r)))
                .unwrap_or_default(),
            running = st.counts.running,
            age = r
                .creation_timestamp()
                .map(|t| age(now - seconds(&t)))
                .unwrap_or_default(),
            labels = labels_html(r.labels()),
        );
    }
    body.push_str("</tbody></table>");

    let mut deps: Vec<&Arc<ModelDeployment>> = deployments
        .iter()
        .filter(|d| keep(namespace_of(d.as_ref()), d.labels()))
        .collect();
    deps.sort_by_key(|d| (namespace_of(d.as_ref()), d.name_any()));
    let _ = write!(
        body,
        "<h2>ModelDeployments <span class=\"muted\">({})</span></h2>",
        deps.len()
    );
    body.push_str("<table id=\"deployments\"><thead><tr><th>Namespace</th><th>Name</th><th>Phase</th><th class=\"num\">Revision</th><th>Model</th><th class=\"num\">Metric</th><th>From run</th><th class=\"num\">Ready</th><th>Age</th></tr></thead><tbody>");
    if deps.is_empty() {
        body.push_str("<tr><td colspan=\"9\" class=\"muted\">No ModelDeployments match.</td></tr>");
    }
    for d in deps {
        let ns = namespace_of(d.as_ref());
        let name = d.name_any();
        let st = d.status.clone().unwrap_or_default();
        let model = st.model.as_ref();
        let _ = write!(
            body,
            "<tr data-deployment=\"{en}\"><td>{ens}</td><td><a href=\"{href}\">{en}</a></td><td>{phase}</td><td class=\"num\">{rev}</td><td class=\"mono\" title=\"{sha}\">{short}</td><td class=\"num\">{m}</td><td>{run}</td><td class=\"num\">{ready}</td><td>{age}</td></tr>",
            en = esc(&name),
            ens = esc(&ns),
            href = deployment_href(&ns, &name),
            phase = badge(&phase_name(st.phase)),
            rev = st.current_revision.map(|r| r.to_string()).unwrap_or_default(),
            sha = esc(model.map(|m| m.sha256.as_str()).unwrap_or("")),
            short = esc(model.map(|m| short_sha(&m.sha256)).unwrap_or("–")),
            m = metric(model.and_then(|m| m.metric)),
            run = model
                .and_then(|m| m.training_run.as_deref())
                .map(|r| format!("<a href=\"{}\">{}</a>", run_href(&ns, r), esc(r)))
                .unwrap_or_default(),
            ready = st.ready_replicas,
            age = d
                .creation_timestamp()
                .map(|t| age(now - seconds(&t)))
                .unwrap_or_default(),
        );
    }
    body.push_str("</tbody></table>");
    page("Runs", "", &body)
}

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
    trials: &[&TrialStatus],
    curves: &BTreeMap<String, Arc<TrialCurves>>,
    colors: &BTreeMap<String, String>,
    best: Option<&str>,
    pick: fn(&TrialCurves) -> &[Sample],
    wall_clock_origin: Option<f64>,
) -> Vec<Series> {
    let with_data = trials
        .iter()
        .filter(|t| curves.get(&t.name).is_some_and(|c| !pick(c).is_empty()))
        .count()
        .max(1);
    let budget = (POINTS_PER_CHART / with_data).clamp(MIN_POINTS_PER_SERIES, MAX_POINTS_PER_SERIES);
    trials
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
                color: colors.get(&t.name).cloned().unwrap_or_default(),
                points: min_max(&pts, budget),
                emphasis: best == Some(t.name.as_str()),
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
    let objective = run.spec.objective;
    let mname = objective.metric.as_str();
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
    let card = |k: &str, v: String| {
        format!("<div class=\"card\"><div class=\"k\">{k}</div><div class=\"v\">{v}</div></div>")
    };
    body.push_str("<div class=\"cards\">");
    body.push_str(&card("Namespace", esc(&ns)));
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

    // Charts.
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
            &trials,
            curves,
            &colors,
            best,
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
    for t in &trials {
        let _ = write!(
            body,
            "<span data-trial=\"{n}\"><span class=\"sw\" style=\"background:{c}\"></span>{b}{n}{e} <span class=\"muted\">{m}</span></span>",
            n = esc(&t.name),
            c = esc(colors.get(&t.name).map(String::as_str).unwrap_or("")),
            b = if best == Some(t.name.as_str()) { "<b>" } else { "" },
            e = if best == Some(t.name.as_str()) { " (best)</b>" } else { "" },
            m = metric(t.best_metric),
        );
    }
    body.push_str("</div>");

    // Trials table: searched values against the objective.
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
        let is_best = best == Some(t.name.as_str());
        let _ = write!(
            body,
            "<tr data-trial=\"{n}\"{cur}><td><span class=\"sw\" style=\"display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:6px;background:{c}\"></span>{n}{star}</td><td>{ph}</td>",
            n = esc(&t.name),
            cur = if is_best { " class=\"current\"" } else { "" },
            c = esc(colors.get(&t.name).map(String::as_str).unwrap_or("")),
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

/// What a history entry's reason says happened.
pub fn revision_kind(reason: &str) -> &'static str {
    if reason.starts_with("rollback") {
        "rolled-back"
    } else if reason.starts_with("automatic promotion") {
        "promoted"
    } else {
        "deployed"
    }
}

/// `/ui/deployments/NS/NAME`: the model now served, the revision history (promotions,
/// rollbacks, spec changes), the candidates automatic promotion refused, and the demo page.
pub fn deployment_page(
    md: &ModelDeployment,
    demo: Option<&str>,
    demo_hint: Option<&str>,
    now: i64,
) -> String {
    let ns = namespace_of(md);
    let name = md.name_any();
    let st = md.status.clone().unwrap_or_default();
    let mut body = String::new();
    let _ = write!(
        body,
        "<h1>ModelDeployment {} {}</h1>",
        esc(&name),
        badge(&phase_name(st.phase))
    );
    let card = |k: &str, v: String| {
        format!("<div class=\"card\"><div class=\"k\">{k}</div><div class=\"v\">{v}</div></div>")
    };
    body.push_str("<div class=\"cards\">");
    body.push_str(&card("Namespace", esc(&ns)));
    body.push_str(&card(
        "Revision",
        st.current_revision
            .map(|r| r.to_string())
            .unwrap_or_else(|| "–".into()),
    ));
    body.push_str(&card("Ready replicas", st.ready_replicas.to_string()));
    body.push_str(&card(
        "Promotion",
        format!(
            "{:?}{}",
            md.spec.promotion.policy,
            if md.spec.promotion.min_improvement > 0.0 {
                format!(" (min improvement {})", md.spec.promotion.min_improvement)
            } else {
                String::new()
            }
        ),
    ));
    body.push_str(&card(
        "Source",
        match (&md.spec.model.from_training_run, &md.spec.model.url) {
            (Some(r), _) => format!(
                "TrainingRun <a href=\"{}\">{}</a>",
                run_href(&ns, r),
                esc(r)
            ),
            (None, Some(u)) => format!("<span class=\"mono\">{}</span>", esc(u)),
            _ => "–".into(),
        },
    ));
    if let Some(e) = &st.endpoint {
        body.push_str(&card(
            "gRPC endpoint",
            format!("<span class=\"mono\">{}</span>", esc(e)),
        ));
    }
    body.push_str(&card(
        "Demo page",
        match demo {
            Some(u) => format!(
                "<a id=\"demo\" href=\"{u}\">{t}</a>{hint}",
                u = esc(u),
                t = esc(u),
                hint = demo_hint
                    .map(|h| format!(
                        "<br><span class=\"muted\" id=\"demo-hint\" style=\"font-weight:400;font-size:12px\">{}</span>",
                        esc(h)
                    ))
                    .unwrap_or_default()
            ),
            None => "<span class=\"muted\">not served yet</span>".into(),
        },
    ));
    body.push_str("</div>");

    body.push_str("<h2>Current model</h2>");
    match &st.model {
        Some(m) => {
            let _ = write!(
                body,
                "<table id=\"current\"><tbody><tr><th>sha256</th><td class=\"mono\">{}</td></tr><tr><th>Metric</th><td>{} {}</td></tr><tr><th>URL</th><td class=\"mono\">{}</td></tr><tr><th>TrainingRun</th><td>{}</td></tr></tbody></table>",
                esc(&m.sha256),
                esc(m.metric_name.as_deref().unwrap_or("")),
                metric(m.metric),
                esc(&m.url),
                m.training_run
                    .as_deref()
                    .map(|r| format!("<a href=\"{}\">{}</a>", run_href(&ns, r), esc(r)))
                    .unwrap_or_else(|| "–".into()),
            );
        }
        None => body.push_str("<p class=\"muted\">No model deployed yet.</p>"),
    }

    let _ = write!(
        body,
        "<h2>Model history <span class=\"muted\">(newest first; at most {} revisions kept)</span></h2>",
        md.spec.revision_history_limit
    );
    body.push_str("<table id=\"history\"><thead><tr><th class=\"num\">Revision</th><th>What</th><th>Model sha256</th><th class=\"num\">Metric</th><th>TrainingRun</th><th>When</th><th>Why</th></tr></thead><tbody>");
    let mut history: Vec<&Revision> = st.history.iter().collect();
    history.sort_by_key(|r| std::cmp::Reverse(r.revision));
    if history.is_empty() {
        body.push_str("<tr><td colspan=\"7\" class=\"muted\">No revisions yet.</td></tr>");
    }
    for r in history {
        let current = st.current_revision == Some(r.revision);
        let _ = write!(
            body,
            "<tr data-revision=\"{rev}\"{cls}><td class=\"num\">{rev}{cur}</td><td>{kind}</td><td class=\"mono\" title=\"{sha}\">{short}</td><td class=\"num\">{m}</td><td>{run}</td><td>{at}</td><td class=\"wrap\">{why}</td></tr>",
            rev = r.revision,
            cls = if current { " class=\"current\"" } else { "" },
            cur = if current { " (current)" } else { "" },
            kind = badge(revision_kind(&r.reason)),
            sha = esc(&r.model.sha256),
            short = esc(short_sha(&r.model.sha256)),
            m = metric(r.model.metric),
            run = r
                .model
                .training_run
                .as_deref()
                .map(|t| format!("<a href=\"{}\">{}</a>", run_href(&ns, t), esc(t)))
                .unwrap_or_else(|| "–".into()),
            at = when(&r.deployed_at, now),
            why = esc(&r.reason),
        );
    }
    body.push_str("</tbody></table>");

    body.push_str("<h2>Refused candidates <span class=\"muted\">(automatic promotion, newest first)</span></h2><table id=\"declined\"><thead><tr><th>What</th><th>TrainingRun</th><th class=\"num\">Metric</th><th>When</th><th>Why</th></tr></thead><tbody>");
    if st.declined.is_empty() {
        body.push_str("<tr><td colspan=\"5\" class=\"muted\">None.</td></tr>");
    }
    for d in st.declined.iter().rev() {
        let _ = write!(
            body,
            "<tr><td>{}</td><td><a href=\"{}\">{}</a></td><td class=\"num\">{}</td><td>{}</td><td class=\"wrap\">{}</td></tr>",
            badge("refused"),
            run_href(&ns, &d.training_run),
            esc(&d.training_run),
            metric(d.metric),
            when(&d.at, now),
            esc(&d.reason),
        );
    }
    body.push_str("</tbody></table>");
    if !st.conditions.is_empty() {
        body.push_str("<h2>Conditions</h2><table id=\"conditions\"><thead><tr><th>Type</th><th>Status</th><th>Reason</th><th>Message</th><th>Since</th></tr></thead><tbody>");
        for c in &st.conditions {
            let _ = write!(
                body,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"wrap\">{}</td><td>{}</td></tr>",
                esc(&c.type_),
                esc(&c.status),
                esc(&c.reason),
                esc(&c.message),
                when(&c.last_transition_time, now),
            );
        }
        body.push_str("</tbody></table>");
    }
    page(
        &format!("{name} · ModelDeployment"),
        &format!(
            "/ <a href=\"/ui?namespace={nsq}\">{ns}</a> / ModelDeployment {n}",
            nsq = url_part(&ns),
            ns = esc(&ns),
            n = esc(&name)
        ),
        &body,
    )
}

/// A page saying what was not found.
pub fn not_found(what: &str) -> String {
    page(
        "Not found",
        "",
        &format!(
            "<h1>Not found</h1><p>{}</p><p><a href=\"/ui\">All runs</a></p>",
            esc(what)
        ),
    )
}
