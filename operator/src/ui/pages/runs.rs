//! `/ui`: the runs and deployments list.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::Arc;

use kube::ResourceExt;

use super::{badge, deployment_href, labels_html, page, phase_name, run_href, seconds};
use crate::crd::{ModelDeployment, TrainingRun};
use crate::ui::data::{namespace_of, Selector};
use crate::ui::html::{age, esc, metric, short_sha};

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
