"""Helpers shared by the manifest tests: YAML loading, strict schema validation of built-in kinds,
and `kubectl --dry-run=client` against a discovery-only stub API server (kubectl asks a server
which kinds exist even for a client-side dry run; the stub answers that, offline)."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "textrec"
CRDS = ROOT / "crds"
EXAMPLES = ROOT / "examples"
DOCKERFILE = ROOT / "Dockerfile"
ALL_OPTIONS = CHART / "ci" / "all-options-values.yaml"
RELEASE = "textrec"
NAMESPACE = "textrec-system"
# Oldest (Chart.yaml kubeVersion) and newest Kubernetes minor the manifests must be valid for.
KUBE_VERSIONS = ("1.31.0", "1.37.0")

Resource = tuple[str, str, str, str, bool]  # (group, version, plural, kind, namespaced)

BUILTIN_RESOURCES: list[Resource] = [
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
    ("networking.k8s.io", "v1", "ingresses", "Ingress", True),
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
    # and its optional PodMonitor of the serving pods
    ("monitoring.coreos.com", "v1", "podmonitors", "PodMonitor", True),
    # and its optional PrometheusRule with textrec's alerts
    ("monitoring.coreos.com", "v1", "prometheusrules", "PrometheusRule", True),
]


def load_docs(text: str, source: str) -> list[dict[str, Any]]:
    """The non-empty YAML documents of a file; each must be a mapping."""
    docs = []
    for i, d in enumerate(yaml.safe_load_all(text)):
        if d is None:
            continue
        assert isinstance(d, dict), f"{source}: document {i} is not a mapping"
        docs.append(d)
    return docs


def ident(obj: dict[str, Any]) -> str:
    """`Kind namespace/name`, for messages."""
    md = obj.get("metadata") or {}
    ns = f"{md['namespace']}/" if md.get("namespace") else ""
    return f"{obj.get('kind')} {ns}{md.get('name')}"


def is_builtin(obj: dict[str, Any]) -> bool:
    group = obj.get("apiVersion", "").rpartition("/")[0]
    return group == "" or group.endswith(".k8s.io") or "." not in group


def validate_builtin(obj: dict[str, Any]) -> list[str]:
    """Strict schema validation (unknown fields fail) of a built-in kind for every supported
    Kubernetes version; one message per problem."""
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


def crd_resources(crds: list[dict[str, Any]]) -> list[Resource]:
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

    def __init__(self, resources: list[Resource]) -> None:
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

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server API
                path = self.path.split("?", 1)[0].rstrip("/")
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


def kubectl_dry_run(objects: list[dict[str, Any]], resources: list[Resource]) -> list[str]:
    """`kubectl apply --dry-run=client` over the objects; returns the names kubectl accepted and
    fails the test when it rejects any."""
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl not found on PATH (scripts/check-manifests.sh installs it)"
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
        # Field validation needs the server's OpenAPI; validate_builtin covers it.
        cmd = [kubectl, "apply", "--dry-run=client", "--validate=false", "--cache-dir",
               str(Path(tmp) / "cache"), "-f", str(manifest), "-o", "name"]
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        names = [line for line in p.stdout.splitlines() if line.strip()]
        assert p.returncode == 0 and len(names) == len(objects), (
            f"kubectl apply --dry-run=client exited {p.returncode}, accepted {len(names)} of "
            f"{len(objects)} objects:\n{p.stderr.strip()}")
        return names
