//! `/ui/deployments/NS/NAME`: one ModelDeployment's model, revisions and candidates.

use std::fmt::Write as _;

use kube::ResourceExt;

use super::{badge, card, page, phase_name, run_href, when};
use crate::crd::{ModelDeployment, Revision};
use crate::ui::data::namespace_of;
use crate::ui::html::{esc, metric, short_sha, url_part};

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
