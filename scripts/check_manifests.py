#!/usr/bin/env python3
"""Offline checks of the cluster-side files: the Helm chart, its CRD copies, examples/, Dockerfile.

Run through scripts/check-manifests.sh, which installs the pinned tools first. Each check prints
one PASS/FAIL/SKIP line (FAIL with the reason below it); the last line is
"N passed, M failed" (", K skipped" when some could not run), and the exit status is 1 on any
failure.

What "client-side" can and cannot prove, and how this script gets as close as it can:
  * `kubectl apply --dry-run=client` still asks an API server for discovery (which kinds exist,
    their resource names and scope). A small stub server on 127.0.0.1 answers discovery for the
    built-in kinds the chart uses plus the kinds of crds/*.yaml, and "not found" for every object,
    so kubectl decodes each object with its own Go types and runs its apply logic, offline. It
    cannot validate fields (that needs the server's OpenAPI), so that runs with --validate=false;
  * field-level validation of built-in kinds uses the Kubernetes JSON schemas bundled in the
    `kubernetes-validate` package (strict: unknown fields fail), for the oldest and the newest
    Kubernetes minor the chart supports;
  * TrainingRun/ModelDeployment objects are validated against the openAPIV3Schema of crds/*.yaml
    with jsonschema (unknown fields fail, as kubectl's strict field validation would). CEL rules
    (x-kubernetes-validations) are listed but not evaluated: that needs an API server.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Iterable

import jsonschema
import kubernetes_validate
import yaml

import helm_python as helm

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "textrec"
CHART_CRDS = CHART / "crds"
CRDS = ROOT / "crds"
EXAMPLES = ROOT / "examples"
DOCKERFILE = ROOT / "Dockerfile"
ALL_OPTIONS = CHART / "ci" / "all-options-values.yaml"

RELEASE = "textrec"
NAMESPACE = "textrec-system"
# Oldest (Chart.yaml kubeVersion) and newest Kubernetes minor the manifests must be valid for.
KUBE_VERSIONS = ("1.31.0", "1.37.0")
# Worker images the Dockerfile must offer as build targets.
DOCKER_TARGETS = ("operator", "worker-cpu", "worker-cuda")

VERBOSE = False


# --------------------------------------------------------------------------------------------
# Result bookkeeping


class Results:
    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0
        self.skipped = 0

    def check(self, name: str, fn: Callable[[], str | None]) -> None:
        """Run one check. It returns a short detail on success and raises CheckFailed (or any
        exception) on failure; Skip marks it as impossible here."""
        try:
            detail = fn()
        except Skip as s:
            self.skipped += 1
            print(f"SKIP  {name}: {s}")
            return
        except Exception as e:  # noqa: BLE001 - every failure is reported, none stops the run
            self.failed += 1
            print(f"FAIL  {name}")
            msg = str(e) if isinstance(e, CheckFailed) else f"{type(e).__name__}: {e}"
            for line in msg.rstrip().splitlines():
                print(f"        {line}")
            return
        self.passed += 1
        print(f"PASS  {name}" + (f": {detail}" if detail else ""))

    def summary(self) -> int:
        line = f"{self.passed} passed, {self.failed} failed"
        if self.skipped:
            line += f", {self.skipped} skipped"
        print(line)
        return 1 if self.failed else 0


class CheckFailed(Exception):
    pass


class Skip(Exception):
    pass


def fail_if(problems: list[str], header: str = "") -> None:
    if problems:
        shown = problems[:25] + ([f"... and {len(problems) - 25} more"] if len(problems) > 25 else [])
        raise CheckFailed("\n".join(([header] if header else []) + shown))


def say(msg: str) -> None:
    if VERBOSE:
        print(f"        {msg}")


# --------------------------------------------------------------------------------------------
# Loading


def load_docs(text: str, source: str) -> list[dict[str, Any]]:
    docs = []
    for i, d in enumerate(yaml.safe_load_all(text)):
        if d is None:
            continue
        if not isinstance(d, dict):
            raise CheckFailed(f"{source}: document {i} is not a mapping")
        docs.append(d)
    return docs


def ident(obj: dict[str, Any]) -> str:
    md = obj.get("metadata") or {}
    ns = f"{md['namespace']}/" if md.get("namespace") else ""
    return f"{obj.get('kind')} {ns}{md.get('name')}"


def crd_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.yaml")) if folder.is_dir() else []


def load_crds() -> list[dict[str, Any]]:
    crds = []
    for f in crd_files(CRDS):
        for d in load_docs(f.read_text(), str(f)):
            if d.get("kind") == "CustomResourceDefinition":
                crds.append(d)
    return crds


class Rendered:
    """One rendering of the chart: objects by template, plus NOTES.txt."""

    def __init__(self, label: str, values: dict[str, Any]) -> None:
        self.label = label
        self.values = values
        with helm.Chart.load(str(CHART)) as chart:
            out = chart.render(values=values, name=RELEASE, namespace=NAMESPACE, is_install=True)
        self.notes = out.pop(f"{RELEASE}/templates/NOTES.txt", "") or out.pop("textrec/templates/NOTES.txt", "")
        self.objects: list[dict[str, Any]] = []
        for template, text in sorted(out.items()):
            for d in load_docs(text, template):
                d.setdefault("__template__", template)
                self.objects.append(d)

    def clean_objects(self) -> list[dict[str, Any]]:
        return [{k: v for k, v in o.items() if k != "__template__"} for o in self.objects]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o.get("kind") == kind]


# --------------------------------------------------------------------------------------------
# A stub API server that answers discovery, so that kubectl can run its client-side dry run.

BUILTIN_RESOURCES: list[tuple[str, str, str, str, bool]] = [
    # (group, version, plural, kind, namespaced)
    ("", "v1", "namespaces", "Namespace", False),
    ("", "v1", "serviceaccounts", "ServiceAccount", True),
    ("", "v1", "services", "Service", True),
    ("", "v1", "configmaps", "ConfigMap", True),
    ("", "v1", "secrets", "Secret", True),
    ("", "v1", "pods", "Pod", True),
    ("", "v1", "events", "Event", True),
    ("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", True),
    ("apps", "v1", "deployments", "Deployment", True),
    ("batch", "v1", "jobs", "Job", True),
    ("autoscaling", "v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler", True),
    ("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget", True),
    ("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy", True),
    ("coordination.k8s.io", "v1", "leases", "Lease", True),
    ("events.k8s.io", "v1", "events", "Event", True),
    ("rbac.authorization.k8s.io", "v1", "roles", "Role", True),
    ("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding", True),
    ("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", False),
    ("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", False),
    ("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition", False),
    ("scheduling.k8s.io", "v1", "priorityclasses", "PriorityClass", False),
    # prometheus-operator's ServiceMonitor (the chart's optional one)
    ("monitoring.coreos.com", "v1", "servicemonitors", "ServiceMonitor", True),
]


def crd_resources(crds: list[dict[str, Any]]) -> list[tuple[str, str, str, str, bool]]:
    out = []
    for crd in crds:
        spec = crd["spec"]
        for v in spec.get("versions", []):
            if v.get("served", True):
                out.append((spec["group"], v["name"], spec["names"]["plural"], spec["names"]["kind"],
                            spec.get("scope", "Namespaced") == "Namespaced"))
    return out


class StubApiServer:
    """Answers /api, /apis and /api(s)/<group>/<version> discovery; every object GET is a 404,
    so `kubectl apply --dry-run=client` takes its create path. Listens on 127.0.0.1 only."""

    def __init__(self, resources: list[tuple[str, str, str, str, bool]]) -> None:
        groups: dict[str, list[str]] = {}
        lists: dict[str, list[dict[str, Any]]] = {}
        for group, version, plural, kind, namespaced in resources:
            gv = f"{group}/{version}" if group else version
            if group and version not in groups.setdefault(group, []):
                groups[group].append(version)
            lists.setdefault(gv, []).append({
                "name": plural, "singularName": kind.lower(), "namespaced": namespaced, "kind": kind,
                "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
            })
        routes: dict[str, dict[str, Any]] = {
            "/api": {"kind": "APIVersions", "versions": ["v1"],
                     "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]},
            "/apis": {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
                {"name": g, "versions": [{"groupVersion": f"{g}/{v}", "version": v} for v in vs],
                 "preferredVersion": {"groupVersion": f"{g}/{vs[0]}", "version": vs[0]}}
                for g, vs in sorted(groups.items())]},
            "/version": {"major": "1", "minor": "37", "gitVersion": "v1.37.0-stub"},
        }
        for gv, res in lists.items():
            path = "/api/v1" if gv == "v1" else f"/apis/{gv}"
            routes[path] = {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv,
                            "resources": res}
        self.requests: list[str] = []

        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server API
                path = self.path.split("?", 1)[0].rstrip("/")
                outer.requests.append(f"GET {path}")
                if path in routes:
                    self._send(200, routes[path])
                else:
                    self._send(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                     "reason": "NotFound", "code": 404,
                                     "message": f"{path} not found (stub server)"})

            def _send(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "StubApiServer":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"


def kubectl_dry_run(objects: list[dict[str, Any]], resources: list[tuple[str, str, str, str, bool]],
                    mode: str = "apply") -> str:
    """`kubectl apply|create --dry-run=client` over the objects; raises on any object it rejects."""
    kubectl = shutil.which("kubectl")
    if not kubectl:
        raise CheckFailed("kubectl not found on PATH (scripts/check-manifests.sh installs it)")
    with tempfile.TemporaryDirectory(prefix="textrec-kubectl-") as tmp, StubApiServer(resources) as stub:
        kubeconfig = Path(tmp) / "kubeconfig"
        kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "stub",
            "clusters": [{"name": "stub", "cluster": {"server": stub.url}}],
            "contexts": [{"name": "stub", "context": {"cluster": "stub", "user": "stub", "namespace": "default"}}],
            "users": [{"name": "stub", "user": {}}],
        }))
        manifest = Path(tmp) / "objects.yaml"
        manifest.write_text(yaml.safe_dump_all(objects, sort_keys=False))
        env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
        cmd = [kubectl, mode, "--dry-run=client", "--validate=false", "--cache-dir", str(Path(tmp) / "cache"),
               "-f", str(manifest), "-o", "name"]
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        names = [line for line in p.stdout.splitlines() if line.strip()]
        say(f"kubectl {mode} --dry-run=client: {', '.join(names)}")
        if p.returncode != 0 or len(names) != len(objects):
            raise CheckFailed(f"kubectl {mode} --dry-run=client exited {p.returncode}, accepted "
                              f"{len(names)} of {len(objects)} objects:\n{p.stderr.strip()}")
        return f"kubectl {mode} --dry-run=client accepted {len(names)} objects"


def validate_builtin(obj: dict[str, Any]) -> list[str]:
    """Strict schema validation of a built-in kind for every supported Kubernetes version."""
    problems = []
    for kv in KUBE_VERSIONS:
        try:
            kubernetes_validate.validate(obj, kv, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = "/".join(str(p) for p in e.path) if hasattr(e, "path") else ""
            problems.append(f"{ident(obj)} (Kubernetes {kv}): {e.message} at {path or '.'}")
        except kubernetes_validate.SchemaNotFoundError:
            problems.append(f"{ident(obj)}: Kubernetes {kv} has no {obj.get('apiVersion')} {obj.get('kind')}")
    return problems


def is_builtin(obj: dict[str, Any]) -> bool:
    group = obj.get("apiVersion", "").rpartition("/")[0]
    return group == "" or group.endswith(".k8s.io") or "." not in group


# --------------------------------------------------------------------------------------------
# CRD schema validation (jsonschema stands in for the API server's structural schema checks)


def to_json_schema(s: Any) -> Any:
    """Turn a CRD openAPIV3Schema into a JSON Schema that rejects unknown fields the way
    kubectl's strict field validation does, and understands the Kubernetes extensions."""
    if isinstance(s, list):
        return [to_json_schema(x) for x in s]
    if not isinstance(s, dict):
        return s
    out = {k: to_json_schema(v) for k, v in s.items() if not k.startswith("x-kubernetes-")}
    if s.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out = {"anyOf": [{"type": "integer"}, {"type": "string"}], **out}
    # Closed before a nullable wrapper is added: the wrapper itself has no properties.
    if (s.get("type") == "object" and "properties" in s and "additionalProperties" not in s
            and not s.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    if s.get("nullable"):
        out.pop("nullable", None)
        inner = {k: v for k, v in out.items() if k not in ("description", "default")}
        out = {"anyOf": [{"type": "null"}, inner]}
    return out


def cel_rules(s: Any) -> int:
    if isinstance(s, dict):
        return len(s.get("x-kubernetes-validations", [])) + sum(cel_rules(v) for v in s.values())
    if isinstance(s, list):
        return sum(cel_rules(v) for v in s)
    return 0


def crd_validators(crds: list[dict[str, Any]]) -> dict[tuple[str, str], tuple[Any, dict[str, Any]]]:
    """(apiVersion, kind) -> (validator of the object, the CRD)."""
    out = {}
    for crd in crds:
        spec = crd["spec"]
        for v in spec["versions"]:
            schema = to_json_schema(copy.deepcopy(v["schema"]["openAPIV3Schema"]))
            props = schema.setdefault("properties", {})
            # The API server checks metadata itself (ObjectMeta); here: a name is required.
            props["metadata"] = {"type": "object", "required": ["name"]}
            props["apiVersion"] = {"type": "string"}
            props["kind"] = {"type": "string"}
            # status is written by the operator, never by the user.
            props.pop("status", None)
            schema["additionalProperties"] = False
            cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
            cls.check_schema(schema)
            out[(f"{spec['group']}/{v['name']}", spec["names"]["kind"])] = (cls(schema), crd)
    return out


# --------------------------------------------------------------------------------------------
# The checks


def check_lint(values: dict[str, Any] | None) -> str:
    report = helm.lint(str(CHART), values, strict=True, namespace=NAMESPACE)
    msgs = report.get("messages") or []
    problems = [f"[{'?IWE'[m.get('severity', 0)]}] {m.get('path')}: {m.get('error')}"
                for m in msgs if m.get("severity", 0) >= 2]
    problems += [str(e) for e in report.get("errors") or []]
    fail_if(problems, "helm lint --strict reported:")
    infos = [m.get("error") for m in msgs if m.get("severity", 0) < 2]
    return f"{report.get('total_charts_linted')} chart, no warnings" + (f" ({len(infos)} info: {'; '.join(infos)})" if infos else "")


def check_schema_accepts(values: dict[str, Any]) -> str:
    with helm.Chart.load(str(CHART)) as chart:
        chart.validate_schema(values)
    return "valid"


def check_schema_rejects() -> str:
    """values.schema.json catches typos and wrong types (helm install would refuse them)."""
    bad = [
        ({"replicas": 2}, "an unknown top-level key"),
        ({"logFormat": "xml"}, "logFormat outside json|text"),
        ({"watchNamespaces": ["Not_A_Namespace"]}, "an invalid namespace name"),
        ({"defaults": {"storage": {"url": "ftp://x"}}}, "an unsupported storage URL scheme"),
        ({"image": {"pullPolicy": "Sometimes"}}, "an invalid pull policy"),
    ]
    accepted = []
    with helm.Chart.load(str(CHART)) as chart:
        if chart.schema is None:
            raise CheckFailed("the chart has no values.schema.json")
        for values, what in bad:
            try:
                chart.validate_schema(values)
                accepted.append(f"accepted {what}: {values}")
            except helm.HelmValuesError:
                pass
    fail_if(accepted, "values.schema.json is too lax:")
    return f"rejects {len(bad)} kinds of bad values"


def check_render_guards() -> str:
    """Templates refuse configurations that cannot work."""
    cases = [
        ({"replicaCount": 2, "leaderElection": {"enabled": False}}, "2 replicas without leader election"),
        ({"metrics": {"service": {"enabled": False}, "serviceMonitor": {"enabled": True}}}, "a ServiceMonitor without its Service"),
    ]
    rendered_anyway = []
    with helm.Chart.load(str(CHART)) as chart:
        for values, what in cases:
            try:
                chart.render(values=values, name=RELEASE, namespace=NAMESPACE)
                rendered_anyway.append(f"rendered {what}")
            except helm.HelmRenderError:
                pass
    fail_if(rendered_anyway)
    return f"refuses {len(cases)} unworkable configurations"


def check_render(r: Rendered) -> str:
    problems = []
    for o in r.objects:
        if not o.get("apiVersion") or not o.get("kind") or not (o.get("metadata") or {}).get("name"):
            problems.append(f"{o['__template__']}: object without apiVersion/kind/metadata.name")
    seen: dict[str, str] = {}
    for o in r.objects:
        key = f"{o.get('apiVersion')} {ident(o)}"
        if key in seen:
            problems.append(f"{key} rendered twice ({seen[key]}, {o['__template__']})")
        seen[key] = o["__template__"]
    fail_if(problems)
    kinds: dict[str, int] = {}
    for o in r.objects:
        kinds[o["kind"]] = kinds.get(o["kind"], 0) + 1
    if not r.notes.strip():
        raise CheckFailed("NOTES.txt rendered empty")
    return f"{len(r.objects)} objects (" + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) + ")"


def check_builtin_schemas(r: Rendered) -> str:
    objs = [o for o in r.clean_objects() if is_builtin(o)]
    problems = [p for o in objs for p in validate_builtin(o)]
    fail_if(problems)
    others = [ident(o) for o in r.clean_objects() if not is_builtin(o)]
    return (f"{len(objs)} built-in objects valid (strict) for Kubernetes {' and '.join(KUBE_VERSIONS)}"
            + (f"; not schema-checked: {', '.join(others)}" if others else ""))


def check_deployment_security(r: Rendered) -> str:
    deps = r.of_kind("Deployment")
    if len(deps) != 1:
        raise CheckFailed(f"expected 1 Deployment, found {len(deps)}")
    d = deps[0]
    pod = d["spec"]["template"]["spec"]
    psc = pod.get("securityContext") or {}
    problems = []
    if pod.get("hostNetwork") or pod.get("hostPID") or pod.get("hostIPC"):
        problems.append("pod uses host namespaces")
    if psc.get("runAsUser") == 0:
        problems.append("pod runs as UID 0")
    for c in pod.get("initContainers", []) + pod["containers"]:
        sc = c.get("securityContext") or {}
        n = c["name"]
        if not (sc.get("runAsNonRoot") or psc.get("runAsNonRoot")):
            problems.append(f"{n}: runAsNonRoot is not true")
        if sc.get("runAsUser", psc.get("runAsUser")) in (0, None):
            problems.append(f"{n}: no non-zero runAsUser (an image whose USER is a name fails runAsNonRoot)")
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{n}: readOnlyRootFilesystem is not true")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{n}: allowPrivilegeEscalation is not false")
        if sc.get("privileged"):
            problems.append(f"{n}: privileged")
        if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
            problems.append(f"{n}: capabilities do not drop ALL")
        if (sc.get("capabilities") or {}).get("add"):
            problems.append(f"{n}: adds capabilities {sc['capabilities']['add']}")
        seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{n}: seccompProfile is {seccomp!r}, not RuntimeDefault")
        res = c.get("resources") or {}
        if not (res.get("requests") or {}).get("memory") or not (res.get("limits") or {}).get("memory"):
            problems.append(f"{n}: no memory request and limit")
        paths = {((c.get(p) or {}).get("httpGet") or {}).get("path") for p in ("livenessProbe", "readinessProbe")}
        if paths != {"/healthz", "/readyz"}:
            problems.append(f"{n}: probes are {sorted(str(p) for p in paths)}, expected /healthz and /readyz")
        if "run" not in (c.get("args") or [])[:1]:
            problems.append(f"{n}: args do not start with `run`")
    fail_if(problems)
    return (f"{ident(d)}: UID {psc.get('runAsUser')}, runAsNonRoot, read-only root FS, no privilege "
            f"escalation, capabilities drop ALL, seccomp RuntimeDefault, probes /healthz /readyz")


# RBAC the operator must never hold: broad wildcards, secrets write, RBAC escalation, impersonation,
# pod deletion/eviction (the operator lets Jobs manage pods), nodes.
FORBIDDEN_VERBS = {"*", "escalate", "bind", "impersonate"}
NEEDED = {
    # (group, resource) -> verbs the operator needs: the rules of operator/rbac.yaml, which
    # operator/tests/controllers.rs derives from the API calls the code makes.
    ("textrec.dev", "trainingruns"): {"list", "watch"},
    ("textrec.dev", "modeldeployments"): {"list", "watch"},
    ("textrec.dev", "trainingruns/status"): {"patch"},
    ("textrec.dev", "modeldeployments/status"): {"patch"},
    ("batch", "jobs"): {"list", "watch", "create", "patch"},
    ("", "pods"): {"list", "watch"},
    ("", "persistentvolumeclaims"): {"get"},
    ("", "serviceaccounts"): {"get"},
    ("apps", "deployments"): {"list", "watch", "create", "patch"},
    ("", "services"): {"create", "patch"},
    ("", "configmaps"): {"create", "patch"},
    ("autoscaling", "horizontalpodautoscalers"): {"create", "patch"},
    ("events.k8s.io", "events"): {"create", "patch"},
    ("coordination.k8s.io", "leases"): {"get", "create", "update"},
}


def check_rbac(r: Rendered) -> str:
    sa = None
    for o in r.of_kind("Deployment"):
        sa = o["spec"]["template"]["spec"].get("serviceAccountName")
    bound_roles: set[tuple[str, str, str]] = set()  # (kind, namespace, name) bound to the operator
    for b in r.of_kind("RoleBinding") + r.of_kind("ClusterRoleBinding"):
        if any(s.get("kind") == "ServiceAccount" and s.get("name") == sa and s.get("namespace") == NAMESPACE
               for s in b.get("subjects", [])):
            ns = b["metadata"].get("namespace", "") if b["roleRef"]["kind"] == "Role" else ""
            bound_roles.add((b["roleRef"]["kind"], ns, b["roleRef"]["name"]))
    granted: dict[str, dict[tuple[str, str], set[str]]] = {}  # scope ("*" = cluster) -> grants
    problems = []
    for role in r.of_kind("Role") + r.of_kind("ClusterRole"):
        ns = role["metadata"].get("namespace", "")
        if (role["kind"], ns, role["metadata"]["name"]) not in bound_roles:
            continue
        scope = ns or "*"
        for rule in role.get("rules", []):
            verbs = set(rule.get("verbs", []))
            for g in rule.get("apiGroups", []):
                for res in rule.get("resources", []):
                    where = f"{role['kind']} {ns + '/' if ns else ''}{role['metadata']['name']}"
                    if g == "*" or res == "*" or verbs & FORBIDDEN_VERBS:
                        problems.append(f"{where}: wildcard or escalating rule {rule}")
                    if res in ("secrets",) and verbs - {"get"}:
                        problems.append(f"{where}: secrets beyond get: {sorted(verbs)}")
                    if res in ("pods", "pods/eviction", "pods/exec", "nodes") and verbs - {"get", "list", "watch"}:
                        problems.append(f"{where}: {res} beyond read: {sorted(verbs)}")
                    granted.setdefault(scope, {}).setdefault((g, res), set()).update(verbs)
    watch = r.values.get("watchNamespaces") or []
    scopes = sorted(set(watch)) if watch else ["*"]
    if watch and "*" in granted:
        problems.append("watchNamespaces is set, yet the operator holds a ClusterRole")
    for scope in scopes:
        for (g, res), verbs in NEEDED.items():
            have = set(granted.get("*", {}).get((g, res), set())) | granted.get(scope, {}).get((g, res), set())
            if (g, res) == ("coordination.k8s.io", "leases"):
                have |= granted.get(NAMESPACE, {}).get((g, res), set())
            if not verbs <= have:
                problems.append(f"{'cluster-wide' if scope == '*' else 'namespace ' + scope}: "
                                f"{g or 'core'}/{res} lacks {sorted(verbs - have)}")
    # Nothing beyond what the code calls (reading Secrets is the one opt-in: rbac.readSecrets).
    for scope, grants in granted.items():
        for (g, res), verbs in grants.items():
            extra = verbs - NEEDED.get((g, res), set())
            if (g, res) == ("", "secrets") and r.values.get("rbac", {}).get("readSecrets"):
                extra -= {"get"}
            if extra:
                problems.append(f"{'cluster-wide' if scope == '*' else 'namespace ' + scope}: "
                                f"{g or 'core'}/{res} grants {sorted(extra)}, which the operator never uses")
    fail_if(problems)
    return (f"ServiceAccount {sa}: " + ("cluster-wide" if scopes == ["*"] else f"Roles in {', '.join(scopes)}")
            + f", lease in {NAMESPACE}; no wildcards, no secret writes, pods read-only")


OPERATOR_SRC = ROOT / "operator" / "src"


def operator_run_options() -> tuple[set[str], set[str]]:
    """Flags and environment variables of `textrec-operator run`, read from the clap derive of
    `manager::RunOptions` (a text scan: the binary is not built here; `local::runner` has a
    `RunOptions` of its own)."""
    for f in [OPERATOR_SRC / "manager.rs"] if (OPERATOR_SRC / "manager.rs").is_file() else []:
        text = f.read_text()
        m = re.search(r"pub struct RunOptions\s*\{(.*?)\n\}", text, re.S)
        if not m:
            continue
        flags, envs = set(), set()
        pending: str | None = None
        for line in m.group(1).splitlines():
            line = line.strip()
            if line.startswith("#[arg("):
                pending = line
            elif pending and (fm := re.match(r"pub (\w+)\s*:", line)):
                if re.search(r"\blong\b", pending):
                    lm = re.search(r'long\s*=\s*"([^"]+)"', pending)
                    flags.add("--" + (lm.group(1) if lm else fm.group(1).replace("_", "-")))
                if em := re.search(r'env\s*=\s*"([^"]+)"', pending):
                    envs.add(em.group(1))
                pending = None
        return flags, envs
    raise Skip("operator/src has no `RunOptions` (the operator's `run` options) yet")


def check_operator_flags(r: Rendered) -> str:
    flags, envs = operator_run_options()
    (dep,) = r.of_kind("Deployment")
    c = dep["spec"]["template"]["spec"]["containers"][0]
    args = c.get("args") or []
    unknown = [a for a in args[1:] if a.startswith("--") and a.split("=", 1)[0] not in flags]
    fail_if([f"`textrec-operator run` has no flag {a.split('=', 1)[0]} (chart passes {a})" for a in unknown],
            "the operator would exit at startup:")
    names = [e["name"] for e in c.get("env") or []]
    ignored = [n for n in names if n.startswith("TEXTREC_") and n not in envs]
    return (f"{len(args) - 1} flags known to `run`" +
            (f"; environment not (yet) read by the operator: {', '.join(ignored)}" if ignored else ""))


def check_chart_crds_in_sync() -> str:
    src = {p.name: p for p in crd_files(CRDS)}
    dst = {p.name: p for p in crd_files(CHART_CRDS)}
    if not src and not dst:
        raise Skip("crds/ has no CRD YAML yet (written by `textrec-operator crd`)")
    problems = []
    for name in sorted(src.keys() - dst.keys()):
        problems.append(f"charts/textrec/crds/{name} is missing")
    for name in sorted(dst.keys() - src.keys()):
        problems.append(f"charts/textrec/crds/{name} has no source in crds/")
    for name in sorted(src.keys() & dst.keys()):
        a, b = src[name].read_text(), dst[name].read_text()
        if a != b:
            diff = list(difflib.unified_diff(a.splitlines(), b.splitlines(), f"crds/{name}",
                                             f"charts/textrec/crds/{name}", lineterm="", n=1))
            problems.append(f"charts/textrec/crds/{name} differs from crds/{name}:\n  " + "\n  ".join(diff[:12]))
    fail_if(problems, "chart CRDs are out of date; run scripts/sync-chart-crds.sh")
    return f"{len(src)} file(s) identical: {', '.join(sorted(src))}"


def check_crds(crds: list[dict[str, Any]]) -> str:
    if not crds:
        raise Skip("crds/ has no CustomResourceDefinition yet")
    problems = []
    kinds = []
    for crd in crds:
        problems += validate_builtin(crd)
        spec = crd["spec"]
        kinds.append(spec["names"]["kind"])
        if spec.get("group") != "textrec.dev":
            problems.append(f"{ident(crd)}: group {spec.get('group')!r}, expected textrec.dev")
        if not any(v["name"] == "v1alpha1" and v.get("served") and v.get("storage") for v in spec["versions"]):
            problems.append(f"{ident(crd)}: no served+storage version v1alpha1")
        for v in spec["versions"]:
            if "status" not in (v.get("subresources") or {}):
                problems.append(f"{ident(crd)} {v['name']}: no status subresource")
            if not v.get("additionalPrinterColumns"):
                problems.append(f"{ident(crd)} {v['name']}: no printer columns")
            try:
                to = to_json_schema(copy.deepcopy(v["schema"]["openAPIV3Schema"]))
                jsonschema.validators.validator_for(to, default=jsonschema.Draft7Validator).check_schema(to)
            except jsonschema.SchemaError as e:
                problems.append(f"{ident(crd)} {v['name']}: schema is not valid JSON Schema: {e.message}")
    fail_if(problems)
    rules = sum(cel_rules(v["schema"]) for c in crds for v in c["spec"]["versions"])
    return f"{', '.join(kinds)}: valid CustomResourceDefinitions with status subresource and printer columns, {rules} CEL rules"


def example_files() -> list[Path]:
    """examples/*.yaml that hold Kubernetes objects. Others (worker trial configs such as
    trial-*.yaml, which have no apiVersion/kind) belong to the worker's own tests."""
    out = []
    for f in sorted(EXAMPLES.glob("*.yaml")) if EXAMPLES.is_dir() else []:
        docs = load_docs(f.read_text(), str(f))
        if docs and any("apiVersion" in d and "kind" in d for d in docs):
            out.append(f)
        else:
            say(f"{f.relative_to(ROOT)}: not Kubernetes objects, left to the worker's tests")
    return out


def check_examples(crds: list[dict[str, Any]]) -> str:
    files = example_files()
    if not files:
        raise Skip("examples/ has no YAML yet")
    validators = crd_validators(crds) if crds else {}
    problems, checked, unchecked = [], 0, []
    for f in files:
        for o in load_docs(f.read_text(), str(f)):
            where = f"{f.relative_to(ROOT)}: {ident(o)}"
            key = (o.get("apiVersion"), o.get("kind"))
            if o.get("apiVersion", "").startswith("textrec.dev/"):
                if key not in validators:
                    if crds:
                        problems.append(f"{where}: no CRD in crds/ serves {key[0]} {key[1]}")
                    else:
                        unchecked.append(where)
                    continue
                v, _ = validators[key]
                for e in sorted(v.iter_errors(o), key=lambda e: list(e.absolute_path)):
                    path = ".".join(str(p) for p in e.absolute_path) or "(root)"
                    problems.append(f"{where}: {path}: {e.message}")
                checked += 1
            elif is_builtin(o):
                problems += [f"{f.relative_to(ROOT)}: {p}" for p in validate_builtin(o)]
                checked += 1
            else:
                unchecked.append(where)
    fail_if(problems)
    if unchecked and not crds:
        raise Skip(f"crds/ is empty, so {len(unchecked)} textrec.dev objects cannot be validated "
                   f"({checked} built-in objects were valid)")
    return f"{checked} objects in {len(files)} files valid against crds/ and Kubernetes schemas" + (
        f"; not checked: {', '.join(unchecked)}" if unchecked else "")


def check_examples_kubectl(crds: list[dict[str, Any]]) -> str:
    objs = [o for f in example_files() for o in load_docs(f.read_text(), str(f))]
    if not objs:
        raise Skip("examples/ has no YAML yet")
    if not crds and any(o.get("apiVersion", "").startswith("textrec.dev/") for o in objs):
        raise Skip("crds/ is empty: kubectl cannot map TrainingRun/ModelDeployment without them")
    return kubectl_dry_run(objs, BUILTIN_RESOURCES + crd_resources(crds))


def check_examples_conventions() -> str:
    """What the brief asks of the cloud examples: spot, GPUs, cloud storage with a cloud identity."""
    wanted = {
        "eks-spot.yaml": ("s3://", "eks.amazonaws.com/role-arn"),
        "gke-spot.yaml": ("gs://", "iam.gke.io/gcp-service-account"),
    }
    problems = []
    present = 0
    for name, (scheme, annotation) in wanted.items():
        f = EXAMPLES / name
        if not f.exists():
            problems.append(f"examples/{name} is missing")
            continue
        present += 1
        text = f.read_text()
        docs = load_docs(text, name)
        runs = [d for d in docs if d.get("kind") == "TrainingRun"]
        sas = [d for d in docs if d.get("kind") == "ServiceAccount"]
        if not runs:
            problems.append(f"examples/{name}: no TrainingRun")
        if scheme not in text:
            problems.append(f"examples/{name}: no {scheme} storage URL")
        if not any(annotation in (s["metadata"].get("annotations") or {}) for s in sas):
            problems.append(f"examples/{name}: no ServiceAccount annotated {annotation}")
        if not re.search(r"^\s*spot:\s*true\b", text, re.M):
            problems.append(f"examples/{name}: no `spot: true`")
        if "nvidia.com/gpu" not in text:
            problems.append(f"examples/{name}: requests no nvidia.com/gpu")
    f = EXAMPLES / "auto-promotion.yaml"
    if not f.exists():
        problems.append("examples/auto-promotion.yaml is missing")
    else:
        docs = load_docs(f.read_text(), f.name)
        mds = [d for d in docs if d.get("kind") == "ModelDeployment"]
        promo = [((d.get("spec") or {}).get("promotion") or {}) for d in mds]
        if not any(p.get("policy") == "Automatic" and "minImprovement" in p for p in promo):
            problems.append("examples/auto-promotion.yaml: no ModelDeployment with promotion policy Automatic and minImprovement")
    fail_if(problems)
    return "EKS (s3 + IRSA) and GKE (gs + Workload Identity) spot GPU runs, Automatic promotion"


def dockerfile_stages(text: str) -> list[dict[str, Any]]:
    stages: list[dict[str, Any]] = []
    logical = re.sub(r"\\\n", " ", text)
    for line in logical.splitlines():
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        word, _, rest = s.partition(" ")
        word = word.upper()
        if word == "FROM":
            m = re.match(r"(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?", rest, re.I)
            stages.append({"from": m.group(1), "name": (m.group(2) or "").lower(), "user": None, "lines": []})
        elif stages:
            stages[-1]["lines"].append(s)
            if word == "USER":
                stages[-1]["user"] = rest.strip()
    return stages


def check_hadolint() -> str:
    if not DOCKERFILE.exists():
        raise CheckFailed("Dockerfile is missing")
    hadolint = shutil.which("hadolint")
    if not hadolint:
        raise CheckFailed("hadolint not found on PATH (scripts/check-manifests.sh installs it)")
    p = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60, cwd=ROOT)
    if p.returncode != 0:
        raise CheckFailed(f"hadolint Dockerfile exited {p.returncode}:\n{(p.stdout + p.stderr).strip()}")
    v = subprocess.run([hadolint, "--version"], capture_output=True, text=True).stdout.strip()
    return f"no findings ({v})"


def check_dockerfile_targets() -> str:
    if not DOCKERFILE.exists():
        raise CheckFailed("Dockerfile is missing")
    stages = {s["name"]: s for s in dockerfile_stages(DOCKERFILE.read_text())}
    problems = []
    for t in DOCKER_TARGETS:
        s = stages.get(t)
        if not s:
            problems.append(f"no build target {t!r} (FROM ... AS {t})")
            continue
        if not s["user"] or s["user"].split(":")[0] in ("root", "0"):
            problems.append(f"target {t}: final USER is {s['user']!r}, not a non-root user")
        elif not re.match(r"^\d+(:\d+)?$", s["user"]):
            problems.append(f"target {t}: USER {s['user']!r} is a name; use a numeric UID so runAsNonRoot can verify it")
    if "operator" in stages and any("torch" in line.lower() for line in stages["operator"]["lines"]):
        problems.append("target operator mentions torch: the operator must not ship libtorch")
    ignore = ROOT / ".dockerignore"
    if not ignore.exists():
        problems.append(".dockerignore is missing")
    elif not re.search(r"^/?target/?$", ignore.read_text(), re.M):
        problems.append(".dockerignore does not exclude target/")
    fail_if(problems)
    return ", ".join(f"{t} (USER {stages[t]['user']}, FROM {stages[t]['from']})" for t in DOCKER_TARGETS)


# --------------------------------------------------------------------------------------------


def main() -> int:
    global VERBOSE
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-v", "--verbose", action="store_true", help="print what each check looked at")
    VERBOSE = ap.parse_args().verbose

    print(f"textrec manifest checks: Helm SDK {helm.helm_sdk_version()}, chart {CHART.relative_to(ROOT)}")
    res = Results()
    crds: list[dict[str, Any]] = []

    def load_crd_folder() -> str:
        if not crd_files(CRDS):
            raise Skip("crds/ has no CRD YAML yet (written by `textrec-operator crd`)")
        crds.extend(load_crds())
        return f"{len(crds)} CustomResourceDefinitions: " + ", ".join(c["metadata"]["name"] for c in crds)

    def kubectl_crds() -> str:
        if not crds:
            raise Skip("crds/ has no CRD YAML yet")
        return kubectl_dry_run(crds, BUILTIN_RESOURCES)

    res.check("crds/*.yaml load", load_crd_folder)

    all_options = yaml.safe_load(ALL_OPTIONS.read_text())
    res.check("helm lint --strict (default values)", lambda: check_lint(None))
    res.check(f"helm lint --strict ({ALL_OPTIONS.relative_to(ROOT)})", lambda: check_lint(all_options))
    res.check("values.schema.json accepts ci/all-options-values.yaml", lambda: check_schema_accepts(all_options))
    res.check("values.schema.json rejects bad values", check_schema_rejects)
    res.check("templates refuse unworkable values", check_render_guards)

    renders: list[Rendered] = []
    for label, values in (("default values", {}), ("all options", all_options)):
        holder: list[Rendered] = []

        def render(label: str = label, values: dict[str, Any] = values, holder: list[Rendered] = holder) -> str:
            holder.append(Rendered(label, values))
            return check_render(holder[0])

        res.check(f"helm render ({label})", render)
        if not holder:
            continue
        r = holder[0]
        renders.append(r)
        res.check(f"rendered objects match Kubernetes schemas ({label})", lambda r=r: check_builtin_schemas(r))
        res.check(f"kubectl apply --dry-run=client of the rendered chart ({label})",
                  lambda r=r: kubectl_dry_run(r.clean_objects(), BUILTIN_RESOURCES + crd_resources(crds)))
        res.check(f"operator Deployment is non-root with a read-only root FS ({label})",
                  lambda r=r: check_deployment_security(r))
        res.check(f"RBAC is least-privilege and complete ({label})", lambda r=r: check_rbac(r))
        res.check(f"operator flags in the Deployment exist in `textrec-operator run` ({label})",
                  lambda r=r: check_operator_flags(r))

    res.check("chart CRDs identical to crds/", check_chart_crds_in_sync)
    res.check("crds/ are valid CustomResourceDefinitions", lambda: check_crds(crds))
    res.check("kubectl apply --dry-run=client of crds/", kubectl_crds)
    res.check("examples/*.yaml validate against crds/ and Kubernetes schemas", lambda: check_examples(crds))
    res.check("kubectl apply --dry-run=client of examples/*.yaml", lambda: check_examples_kubectl(crds))
    res.check("cloud examples use spot, GPUs, cloud storage and identity", check_examples_conventions)
    res.check("hadolint Dockerfile", check_hadolint)
    res.check("Dockerfile targets run as non-root", check_dockerfile_targets)
    return res.summary()


if __name__ == "__main__":
    sys.exit(main())
