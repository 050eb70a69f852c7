"""The chart's opt-in PrometheusRule (charts/textrec/templates/prometheusrule.yaml): it renders
only when enabled, is well formed, and every metric its expressions use is one the code
registers (operator/src/metrics.rs, worker/src/serve/metrics.rs), so renaming a metric fails here
instead of silently disabling an alert."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from conftest import all_options, render
from support import ROOT

# Package names, which docs mention as paths (`textrec_contract::exit`, `textrec_client.proto`):
# the Rust crates and the Python client.
CRATES = {"textrec_contract", "textrec_model", "textrec_worker", "textrec_operator", "textrec_client"}
RUST_SOURCES = [ROOT / "operator" / "src", ROOT / "worker" / "src"]
# PromQL words that look like identifiers but are not metric names.
PROMQL_WORDS = {
    "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile",
    "count_values", "group", "by", "without", "on", "ignoring", "group_left", "group_right",
    "and", "or", "unless", "offset", "bool", "rate", "irate", "increase", "delta", "idelta",
    "deriv", "histogram_quantile", "absent", "absent_over_time", "max_over_time",
    "min_over_time", "avg_over_time", "sum_over_time", "count_over_time", "changes", "resets",
    "clamp_min", "clamp_max", "abs", "ceil", "floor", "round", "time", "vector", "scalar",
    "label_replace", "label_join", "sort", "sort_desc", "timestamp", "le",
}


def exposed_metrics() -> dict[str, str]:
    """Every metric name the Rust code exposes, as Prometheus sees it, with its kind: a
    `Registry::with_prefix("P")` plus `registry.register("name", "help", var...)` in the same file
    exposes `P_name` (gauge), `P_name_total` (counter) or `P_name_bucket/_sum/_count` (histogram);
    the kind is read from the `let var = ...;` that creates the metric."""
    out: dict[str, str] = {}
    for folder in RUST_SOURCES:
        for f in sorted(folder.rglob("*.rs")):
            text = f.read_text()
            prefix = re.search(r'Registry::with_prefix\(\s*"([a-z_:]+)"\s*\)', text)
            if not prefix:
                continue
            for name, var in re.findall(r'\.register\(\s*"([a-z0-9_]+)"\s*,\s*"[^"]*"\s*,\s*([a-z_0-9]+)\.clone\(\)', text):
                let = re.search(rf"let\s+(?:mut\s+)?{var}\s*(?::\s*([^=]+?))?\s*=\s*([^;]+);", text)
                assert let, f"{f}: cannot find how `{var}` (metric {name}) is created"
                what = " ".join(x or "" for x in let.groups()).lower()
                full = f"{prefix.group(1)}_{name}"
                if "histogram" in what:
                    for suffix in ("_bucket", "_sum", "_count"):
                        out[full + suffix] = "histogram"
                elif "counter" in what:
                    out[full + "_total"] = "counter"
                elif "gauge" in what:
                    out[full] = "gauge"
                else:
                    pytest.fail(f"{f}: metric {name} is neither a counter, a gauge nor a histogram")
    return out


def metric_names(expr: str) -> set[str]:
    """Identifiers of a PromQL expression that are metric names: label matchers, string literals,
    `by (...)` lists and durations removed first."""
    e = re.sub(r'"[^"]*"', '""', expr)
    e = re.sub(r"\{[^}]*\}", "", e)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", e)
    e = re.sub(r"\[[^\]]*\]", "", e)
    e = re.sub(r"\boffset\s+\w+", "", e)
    names = set(re.findall(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)", e))
    return {n for n in names if n not in PROMQL_WORDS}


def rule_objects(values: dict[str, Any]) -> list[dict[str, Any]]:
    return render("prometheus rule", values).of_kind("PrometheusRule")


def test_the_rule_is_opt_in() -> None:
    assert not rule_objects({}), "the PrometheusRule must not render with the default values"


def test_the_code_exposes_the_metrics_this_test_reads() -> None:
    """The scan of the Rust sources itself works: it finds both registries' metrics."""
    m = exposed_metrics()
    assert m.get("textrec_operator_reconciles_total") == "counter", m
    assert m.get("textrec_operator_leader") == "gauge", m
    assert m.get("textrec_request_duration_seconds_bucket") == "histogram", m
    assert m.get("textrec_model_last_reload_failed") == "gauge", m


def test_every_metric_of_the_rule_is_exposed_by_the_code() -> None:
    (rule,) = rule_objects({"prometheusRule": {"enabled": True}})
    exposed = exposed_metrics()
    used: dict[str, str] = {}
    problems = []
    for group in rule["spec"]["groups"]:
        for r in group["rules"]:
            names = metric_names(str(r["expr"]))
            assert names, f"{r['alert']}: no metric found in {r['expr']!r}"
            for n in sorted(names):
                used[n] = r["alert"]
                if n not in exposed:
                    problems.append(f"{r['alert']}: {n} is not exposed by operator/src or worker/src")
    assert not problems, "\n".join(problems) + f"\nexposed: {sorted(exposed)}"
    assert used, "the rule uses no metric"


def test_rules_are_well_formed() -> None:
    values = all_options()
    (rule,) = rule_objects(values)
    assert rule["metadata"]["labels"].get("release") == "kube-prometheus-stack"
    alerts = []
    for group in rule["spec"]["groups"]:
        assert group["name"].startswith("textrec-"), group["name"]
        for r in group["rules"]:
            alerts.append(r["alert"])
            assert re.fullmatch(r"Textrec[A-Za-z]+", r["alert"]), r["alert"]
            assert r["labels"]["severity"] in {"critical", "warning", "info"}, r
            assert r["labels"].get("team") == "ml-platform", f"{r['alert']}: alertLabels not applied"
            assert r["annotations"]["summary"] and r["annotations"]["description"], r["alert"]
            assert "{{" not in str(r["expr"]), f"{r['alert']}: unrendered template in expr"
    assert len(alerts) == len(set(alerts)), alerts
    exprs = " ".join(str(r["expr"]) for g in rule["spec"]["groups"] for r in g["rules"])
    assert "> 0.02" in exprs and "> 1.5" in exprs and ">= 2" in exprs, "thresholds not applied"


def test_the_operations_guide_lists_every_alert() -> None:
    (rule,) = rule_objects({"prometheusRule": {"enabled": True}})
    doc = (ROOT / "docs" / "operations.md").read_text()
    missing = [r["alert"] for g in rule["spec"]["groups"] for r in g["rules"] if r["alert"] not in doc]
    assert not missing, f"docs/operations.md does not describe {missing}"


def test_metric_names_in_the_docs_exist() -> None:
    """Metric names mentioned in docs/ are ones the code exposes (or their base names)."""
    exposed = exposed_metrics()
    bases = set(exposed) | {re.sub(r"_(total|bucket|sum|count)$", "", n) for n in exposed}
    problems = []
    for doc in sorted((ROOT / "docs").glob("*.md")):
        for n in sorted(set(re.findall(r"\btextrec_[a-z0-9_]+", doc.read_text()))):
            if n not in bases and n not in CRATES and not n.endswith("_"):
                problems.append(f"{doc.name}: {n}")
    assert not problems, "metrics named in docs/ but not exposed by the code:\n" + "\n".join(problems)
