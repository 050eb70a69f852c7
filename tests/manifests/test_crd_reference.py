"""docs/crd-reference.md is generated from crds/*.yaml (tests/manifests/crd_reference.py); this
fails while the committed file differs, as operator/tests/crd_drift.rs does for crds/ itself.
Regenerate with scripts/gen-crd-reference.sh."""

from __future__ import annotations

import re
from typing import Any

import crd_reference


def test_crd_reference_is_up_to_date(crds: list[dict[str, Any]]) -> None:
    want = crd_reference.render(crds)
    assert crd_reference.OUTPUT.exists(), "docs/crd-reference.md is missing: run scripts/gen-crd-reference.sh"
    have = crd_reference.OUTPUT.read_text()
    assert have == want, ("docs/crd-reference.md differs from the CRDs in crds/: "
                          "run scripts/gen-crd-reference.sh and commit the result")


def _fields(schema: dict[str, Any], path: str, out: set[str]) -> None:
    out.add(path)
    if path in crd_reference.KUBERNETES_TYPES:
        return
    for name, sub in (schema.get("properties") or {}).items():
        _fields(sub, f"{path}.{name}", out)
    items = schema.get("items")
    if isinstance(items, dict) and items.get("properties"):
        _fields(items, f"{path}[]", out)


def test_crd_reference_lists_every_field(crds: list[dict[str, Any]]) -> None:
    text = crd_reference.render(crds)
    listed = set(re.findall(r"^\| `([^`]+)` \|", text, flags=re.M))
    for crd in crds:
        root = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
        want: set[str] = set()
        for top in ("spec", "status"):
            _fields(root[top], top, want)
        missing = sorted(want - listed)
        assert not missing, f"{crd['metadata']['name']}: fields missing from the reference: {missing}"


def test_kubernetes_types_named_in_the_generator_exist(crds: list[dict[str, Any]]) -> None:
    """A renamed field must not silently expand a Kubernetes type or drop its note."""
    paths: set[str] = set()
    for crd in crds:
        root = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
        for top in ("spec", "status"):
            _fields(root[top], top, paths)
    assert set(crd_reference.KUBERNETES_TYPES) <= paths, sorted(set(crd_reference.KUBERNETES_TYPES) - paths)
