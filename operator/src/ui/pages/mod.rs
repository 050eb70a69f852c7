//! The dashboard's pages, rendered to HTML strings from plain inputs (objects, curves, the
//! current time), so they are tested without a server.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::html::{age, esc, url_part};

mod deployment;
mod run;
mod runs;

pub use deployment::{deployment_page, revision_kind};
pub use run::{
    parse_params, run_page, RunView, MAX_POINTS_PER_SERIES, MIN_POINTS_PER_SERIES, POINTS_PER_CHART,
};
pub use runs::{runs_page, ListFilter};

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

/// One summary card: a label over its value (`value` is HTML, escaped by the caller).
fn card(label: &str, value: String) -> String {
    format!(
        "<div class=\"card\"><div class=\"k\">{label}</div><div class=\"v\">{value}</div></div>"
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
