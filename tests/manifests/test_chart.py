"""The Helm chart: lint, values schema, render guards, and what the rendered objects promise
(valid for every supported Kubernetes, accepted by kubectl, non-root, least-privilege RBAC equal to
operator/rbac.yaml, flags the operator binary has)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest

from conftest import Rendered, all_options, render
from support import (BUILTIN_RESOURCES, CHART, NAMESPACE, RELEASE, ROOT, crd_resources, ident, is_builtin,
                     kubectl_dry_run, load_docs, validate_builtin)


@pytest.mark.parametrize("values", [None, "all options"], ids=["default values", "all options"])
def test_helm_lint_strict_has_no_warnings(values: str | None) -> None:
    report = helm.lint(str(CHART), all_options() if values else None, strict=True, namespace=NAMESPACE)
    problems = [f"{m.get('path')}: {m.get('error')}" for m in report.get("messages") or []
                if m.get("severity", 0) >= 2]
    problems += [str(e) for e in report.get("errors") or []]
    assert not problems, "helm lint --strict reported:\n" + "\n".join(problems)


def test_values_schema_accepts_every_option() -> None:
    with helm.Chart.load(str(CHART)) as chart:
        chart.validate_schema(all_options())


@pytest.mark.parametrize("values", [
    {"replicas": 2},
    {"logFormat": "xml"},
    {"watchNamespaces": ["Not_A_Namespace"]},
    {"defaults": {"storage": {"url": "ftp://x"}}},
    {"image": {"pullPolicy": "Sometimes"}},
], ids=["unknown top-level key", "logFormat outside json|text", "invalid namespace name",
        "unsupported storage scheme", "invalid pull policy"])
def test_values_schema_rejects(values: dict[str, Any]) -> None:
    with helm.Chart.load(str(CHART)) as chart:
        assert chart.schema is not None, "the chart has no values.schema.json"
        with pytest.raises(helm.HelmValuesError):
            chart.validate_schema(values)


@pytest.mark.parametrize("values", [
    {"replicaCount": 2, "leaderElection": {"enabled": False}},
    {"metrics": {"service": {"enabled": False}, "serviceMonitor": {"enabled": True}}},
], ids=["2 replicas without leader election", "ServiceMonitor without its Service"])
def test_templates_refuse_unworkable_values(values: dict[str, Any]) -> None:
    with helm.Chart.load(str(CHART)) as chart, pytest.raises(helm.HelmRenderError):
        chart.render(values=values, name=RELEASE, namespace=NAMESPACE)


def test_render_is_well_formed(rendered: Rendered) -> None:
    seen: dict[str, str] = {}
    for o, template in zip(rendered.objects, rendered.templates):
        assert o.get("apiVersion") and o.get("kind") and (o.get("metadata") or {}).get("name"), \
            f"{template}: object without apiVersion/kind/metadata.name"
        key = f"{o['apiVersion']} {ident(o)}"
        assert key not in seen, f"{key} rendered twice ({seen[key]}, {template})"
        seen[key] = template
    assert rendered.notes.strip(), "NOTES.txt rendered empty"


def test_rendered_objects_match_kubernetes_schemas(rendered: Rendered) -> None:
    problems = [p for o in rendered.objects if is_builtin(o) for p in validate_builtin(o)]
    assert not problems, "\n".join(problems)


def test_kubectl_accepts_the_rendered_chart(rendered: Rendered, crds: list[dict[str, Any]]) -> None:
    kubectl_dry_run(rendered.objects, BUILTIN_RESOURCES + crd_resources(crds))


def operator_pod(r: Rendered) -> dict[str, Any]:
    (dep,) = r.of_kind("Deployment")
    return dep["spec"]["template"]["spec"]


def test_operator_runs_non_root_with_a_read_only_root_fs(rendered: Rendered) -> None:
    pod = operator_pod(rendered)
    psc = pod.get("securityContext") or {}
    assert not (pod.get("hostNetwork") or pod.get("hostPID") or pod.get("hostIPC")), "host namespaces"
    for c in pod.get("initContainers", []) + pod["containers"]:
        sc = c.get("securityContext") or {}
        n = c["name"]
        assert sc.get("runAsNonRoot") or psc.get("runAsNonRoot"), f"{n}: runAsNonRoot is not true"
        assert sc.get("runAsUser", psc.get("runAsUser")) not in (0, None), \
            f"{n}: no non-zero runAsUser (an image whose USER is a name fails runAsNonRoot)"
        assert sc.get("readOnlyRootFilesystem") is True, f"{n}: readOnlyRootFilesystem"
        assert sc.get("allowPrivilegeEscalation") is False, f"{n}: allowPrivilegeEscalation"
        assert not sc.get("privileged"), f"{n}: privileged"
        caps = sc.get("capabilities") or {}
        assert "ALL" in (caps.get("drop") or []) and not caps.get("add"), f"{n}: capabilities {caps}"
        seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        assert seccomp in ("RuntimeDefault", "Localhost"), f"{n}: seccompProfile {seccomp!r}"
        res = c.get("resources") or {}
        assert (res.get("requests") or {}).get("memory") and (res.get("limits") or {}).get("memory"), \
            f"{n}: no memory request and limit"
        probes = {((c.get(p) or {}).get("httpGet") or {}).get("path") for p in ("livenessProbe", "readinessProbe")}
        assert probes == {"/healthz", "/readyz"}, f"{n}: probes {probes}"
        assert (c.get("args") or [])[:1] == ["run"], f"{n}: args do not start with `run`"


# -- RBAC: the chart grants exactly operator/rbac.yaml, scoped as the values say ---------------

Grant = tuple[str, str, str]  # (apiGroup, resource, verb)


def grants(rules: list[dict[str, Any]]) -> set[Grant]:
    return {(g, r, v) for rule in rules for g in rule.get("apiGroups", [])
            for r in rule.get("resources", []) for v in rule.get("verbs", [])}


def reference_rbac() -> tuple[set[Grant], set[Grant]]:
    """(operator rules, leader-election rules) of operator/rbac.yaml, the reference the code's
    API calls are documented against."""
    docs = load_docs((ROOT / "operator" / "rbac.yaml").read_text(), "operator/rbac.yaml")
    (cluster_role,) = [d for d in docs if d["kind"] == "ClusterRole"]
    (lease_role,) = [d for d in docs if d["kind"] == "Role"]
    return grants(cluster_role["rules"]), grants(lease_role["rules"])


def bound_rules(r: Rendered) -> dict[str, set[Grant]]:
    """Grants of the operator's ServiceAccount by scope ("*" = cluster-wide, else a namespace)."""
    sa = operator_pod(r).get("serviceAccountName")
    bound = set()
    for b in r.of_kind("RoleBinding") + r.of_kind("ClusterRoleBinding"):
        if any(s.get("kind") == "ServiceAccount" and s.get("name") == sa and s.get("namespace") == NAMESPACE
               for s in b.get("subjects", [])):
            ns = b["metadata"].get("namespace", "") if b["roleRef"]["kind"] == "Role" else ""
            bound.add((b["roleRef"]["kind"], ns, b["roleRef"]["name"]))
    out: dict[str, set[Grant]] = {}
    for role in r.of_kind("Role") + r.of_kind("ClusterRole"):
        ns = role["metadata"].get("namespace", "")
        if (role["kind"], ns, role["metadata"]["name"]) in bound:
            out.setdefault(ns or "*", set()).update(grants(role.get("rules", [])))
    return out


def test_rbac_is_exactly_what_the_operator_calls(rendered: Rendered) -> None:
    operator_rules, lease_rules = reference_rbac()
    if rendered.values.get("rbac", {}).get("readSecrets"):
        operator_rules = operator_rules | {("", "secrets", "get")}
    scopes = bound_rules(rendered)
    watch = sorted(set(rendered.values.get("watchNamespaces") or []))
    if watch:
        assert "*" not in scopes, "watchNamespaces is set, yet the operator holds a ClusterRole"
        expected = {ns: set(operator_rules) for ns in watch}
    else:
        expected = {"*": set(operator_rules)}
    expected.setdefault(NAMESPACE, set()).update(lease_rules)
    for scope in sorted(set(scopes) | set(expected)):
        have, want = scopes.get(scope, set()), expected.get(scope, set())
        where = "cluster-wide" if scope == "*" else f"namespace {scope}"
        assert have == want, (f"{where}: the chart grants more than operator/rbac.yaml: {sorted(have - want)}; "
                              f"less: {sorted(want - have)}")


def test_rbac_has_no_wildcards_or_escalation(rendered: Rendered) -> None:
    for scope, held in bound_rules(rendered).items():
        for g, res, verb in held:
            assert "*" not in (g, res, verb) and verb not in ("escalate", "bind", "impersonate"), (scope, g, res, verb)
            if res == "secrets":
                assert verb == "get", f"secrets {verb}"
            if res in ("pods", "pods/eviction", "pods/exec", "nodes"):
                assert verb in ("get", "list", "watch"), f"{res} {verb}"


# -- The operator's flags: what the chart passes must exist in the binary ------------------------

def operator_binary() -> Path:
    """The operator binary built by `cargo test`/`cargo build` (built here if missing: the operator
    does not link libtorch, so this takes a minute at most on a warm cache)."""
    if explicit := os.environ.get("TEXTREC_OPERATOR_BIN"):
        return Path(explicit)
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    binary = target / "debug" / "textrec-operator"
    if not binary.exists():
        cargo = shutil.which("cargo")
        assert cargo, f"{binary} is missing and cargo is not on PATH to build it"
        subprocess.run([cargo, "build", "-q", "-p", "textrec-operator", "--bin", "textrec-operator"],
                       cwd=ROOT, check=True)
    return binary


def run_help() -> tuple[set[str], set[str]]:
    """Flags and environment variables of `textrec-operator run`, from clap's own --help."""
    out = subprocess.run([str(operator_binary()), "run", "--help"], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    flags = set(re.findall(r"(?<![\w-])(--[a-z0-9][a-z0-9-]*)", out))
    envs = set(re.findall(r"\[env: ([A-Z0-9_]+)=", out))
    assert "--help" in flags, out
    return flags, envs


def test_chart_passes_only_flags_the_operator_has(rendered: Rendered) -> None:
    flags, _ = run_help()
    (c,) = operator_pod(rendered)["containers"]
    args = c.get("args") or []
    unknown = [a for a in args[1:] if a.startswith("--") and a.split("=", 1)[0] not in flags]
    assert not unknown, f"`textrec-operator run` has no flag for {unknown}: the operator would exit at startup"


def test_chart_sets_only_environment_the_operator_reads(rendered: Rendered) -> None:
    _, envs = run_help()
    (c,) = operator_pod(rendered)["containers"]
    ignored = [e["name"] for e in c.get("env") or [] if e["name"].startswith("TEXTREC_") and e["name"] not in envs]
    assert not ignored, f"the chart sets environment the operator never reads: {ignored}"



def test_serving_pod_monitor_selects_the_pods_and_port_the_operator_makes() -> None:
    """The PodMonitor's selector and port are what operator/src/serving.rs puts on serving pods."""
    assert not render("default values", {}).of_kind("PodMonitor"), "the PodMonitor is opt-in"
    (pm,) = render("all options", all_options()).of_kind("PodMonitor")
    serving = (ROOT / "operator/src/serving.rs").read_text()
    naming = (ROOT / "operator/src/naming.rs").read_text()
    manager = re.search(r'pub const MANAGER: &str = "([^"]+)"', naming).group(1)
    for key, value in pm["spec"]["selector"]["matchLabels"].items():
        if key == "app.kubernetes.io/managed-by":
            assert value == manager
        else:
            assert f'("{key}".into(), "{value}".into())' in serving, f"serving pods lack {key}={value}"
    (endpoint,) = pm["spec"]["podMetricsEndpoints"]
    assert f'name: Some("{endpoint["port"]}".into())' in serving, "serving pods have no such port name"
    assert endpoint["path"] == "/metrics"
    # One watched namespace there; every namespace when the operator watches all of them.
    assert pm["spec"]["namespaceSelector"] == {"matchNames": all_options()["watchNamespaces"][:1]}
    (everywhere,) = render("all namespaces", {**all_options(), "watchNamespaces": []}).of_kind("PodMonitor")
    assert everywhere["spec"]["namespaceSelector"] == {"any": True}


# -- The dashboard (/ui) ---------------------------------------------------------------------------

def test_ui_ingress_is_opt_in_and_routes_only_ui_to_the_metrics_service() -> None:
    """Off by default; on, one Ingress sends /ui (and nothing else) to the metrics Service's port,
    with the class, host, TLS and annotations given; without the Service the chart refuses."""
    assert not render("default values", {}).of_kind("Ingress"), "the Ingress is opt-in"
    r = render("all options", all_options())
    (ing,) = r.of_kind("Ingress")
    ui = all_options()["ui"]["ingress"]
    assert ing["spec"]["ingressClassName"] == ui["className"]
    assert ing["metadata"]["annotations"] == ui["annotations"]
    assert ing["spec"]["tls"] == ui["tls"]
    (rule,) = ing["spec"]["rules"]
    assert rule["host"] == ui["host"]
    (path,) = rule["http"]["paths"]
    assert (path["path"], path["pathType"]) == ("/ui", "Prefix")
    (svc,) = [s for s in r.of_kind("Service") if s["metadata"]["name"] == path["backend"]["service"]["name"]]
    (port,) = svc["spec"]["ports"]
    assert path["backend"]["service"]["port"] == {"name": port["name"]}
    (c,) = operator_pod(r)["containers"]
    assert port["targetPort"] in [p["name"] for p in c["ports"]]
    assert "--no-ui" not in (c.get("args") or [])

    # Any host when none is given.
    minimal = render("ingress only", {"ui": {"ingress": {"enabled": True}}})
    (ing,) = minimal.of_kind("Ingress")
    assert "host" not in ing["spec"]["rules"][0] and "ingressClassName" not in ing["spec"]
    with pytest.raises(Exception, match="needs metrics.service.enabled"):
        render("no service", {"ui": {"ingress": {"enabled": True}}, "metrics": {"service": {"enabled": False}}})


def test_ui_off_passes_a_flag_the_operator_has_and_renders_no_ingress() -> None:
    r = render("ui off", {"ui": {"enabled": False, "ingress": {"enabled": True}}})
    assert not r.of_kind("Ingress")
    (c,) = operator_pod(r)["containers"]
    assert "--no-ui" in c["args"]
    flags, _ = run_help()
    assert "--no-ui" in flags
