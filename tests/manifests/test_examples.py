"""examples/*.yaml as a user applies them. The textrec.dev objects are admitted in Rust by the
loader `textrec-operator local run` uses (operator/tests/examples.rs: CRD schema, CEL rules, trial
planning); here: the built-in objects next to them, kubectl's view of the whole files, and what the
cloud examples promise."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from support import BUILTIN_RESOURCES, EXAMPLES, crd_resources, is_builtin, kubectl_dry_run, load_docs, \
    validate_builtin


def manifest_files() -> list[Path]:
    """Files with Kubernetes objects, in examples/ and examples/ci/; worker trial configs (no
    apiVersion) belong to the worker, and the CI workflow file is no Kubernetes object."""
    files = sorted(EXAMPLES.glob("*.yaml")) + sorted(EXAMPLES.glob("ci/*.yaml"))
    return [f for f in files
            if any("apiVersion" in d and "kind" in d for d in load_docs(f.read_text(), str(f)))]


def objects(f: Path) -> list[dict[str, Any]]:
    return load_docs(f.read_text(), str(f))


@pytest.mark.parametrize("f", manifest_files(), ids=lambda f: str(f.relative_to(EXAMPLES)))
def test_builtin_objects_match_kubernetes_schemas(f: Path) -> None:
    problems = [p for o in objects(f) if is_builtin(o) for p in validate_builtin(o)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("f", manifest_files(), ids=lambda f: str(f.relative_to(EXAMPLES)))
def test_kubectl_accepts_the_example(f: Path, crds: list[dict[str, Any]]) -> None:
    kubectl_dry_run(objects(f), BUILTIN_RESOURCES + crd_resources(crds))


@pytest.mark.parametrize("name,scheme,annotation", [
    ("eks-spot.yaml", "s3://", "eks.amazonaws.com/role-arn"),
    ("gke-spot.yaml", "gs://", "iam.gke.io/gcp-service-account"),
])
def test_cloud_example_uses_spot_gpus_cloud_storage_and_identity(name: str, scheme: str, annotation: str) -> None:
    f = EXAMPLES / name
    text = f.read_text()
    docs = objects(f)
    assert [d for d in docs if d.get("kind") == "TrainingRun"], "no TrainingRun"
    assert scheme in text, f"no {scheme} storage URL"
    service_accounts = [d for d in docs if d.get("kind") == "ServiceAccount"]
    assert any(annotation in (s["metadata"].get("annotations") or {}) for s in service_accounts), \
        f"no ServiceAccount annotated {annotation}"
    assert re.search(r"^\s*spot:\s*true\b", text, re.M), "no `spot: true`"
    assert "nvidia.com/gpu" in text, "requests no nvidia.com/gpu"


def test_auto_promotion_example_promotes_automatically() -> None:
    docs = objects(EXAMPLES / "auto-promotion.yaml")
    promotion = [((d.get("spec") or {}).get("promotion") or {}) for d in docs if d.get("kind") == "ModelDeployment"]
    assert any(p.get("policy") == "Automatic" and "minImprovement" in p for p in promotion)


def test_ci_rbac_grants_only_what_submit_needs(crds: list[dict[str, Any]]) -> None:
    """examples/ci/rbac.yaml: create, get, list and watch on the CRD's TrainingRuns, in one
    namespace, bound to the CI's ServiceAccount; nothing else."""
    docs = {d["kind"]: d for d in objects(EXAMPLES / "ci" / "rbac.yaml")}
    assert sorted(docs) == ["Role", "RoleBinding", "ServiceAccount"]
    run_crd = next(c for c in crds if c["spec"]["names"]["kind"] == "TrainingRun")
    role, binding, account = docs["Role"], docs["RoleBinding"], docs["ServiceAccount"]
    assert role["rules"] == [{"apiGroups": [run_crd["spec"]["group"]],
                              "resources": [run_crd["spec"]["names"]["plural"]],
                              "verbs": ["create", "get", "list", "watch"]}]
    namespace = account["metadata"]["namespace"]
    assert {role["metadata"]["namespace"], binding["metadata"]["namespace"]} == {namespace}
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"],
                                    "namespace": namespace}]
