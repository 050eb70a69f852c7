"""The generated CRDs (crds/): valid CustomResourceDefinitions for every supported Kubernetes,
accepted by kubectl. That they equal what the code generates, that the chart's copies equal them,
and that the local runner enforces every schema bound and CEL rule is tested in Rust
(operator/tests/crd_drift.rs, operator/src/crd/admission.rs)."""

from __future__ import annotations

from typing import Any

from support import BUILTIN_RESOURCES, ident, kubectl_dry_run, validate_builtin


def test_crds_are_valid_custom_resource_definitions(crds: list[dict[str, Any]]) -> None:
    problems = [p for crd in crds for p in validate_builtin(crd)]
    assert not problems, "\n".join(problems)
    assert sorted(c["spec"]["names"]["kind"] for c in crds) == ["ModelDeployment", "TrainingRun"]


def test_crds_serve_v1alpha1_with_status_and_printer_columns(crds: list[dict[str, Any]]) -> None:
    for crd in crds:
        spec = crd["spec"]
        assert spec["group"] == "textrec.dev", ident(crd)
        assert any(v["name"] == "v1alpha1" and v.get("served") and v.get("storage") for v in spec["versions"]), \
            f"{ident(crd)}: no served+storage version v1alpha1"
        for v in spec["versions"]:
            assert "status" in (v.get("subresources") or {}), f"{ident(crd)} {v['name']}: no status subresource"
            assert v.get("additionalPrinterColumns"), f"{ident(crd)} {v['name']}: no printer columns"


def test_kubectl_accepts_the_crds(crds: list[dict[str, Any]]) -> None:
    kubectl_dry_run(crds, BUILTIN_RESOURCES)
