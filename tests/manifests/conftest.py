"""Fixtures of the manifest tests: the generated CRDs and the chart rendered with its default
values and with every option switched on (charts/textrec/ci/all-options-values.yaml)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

import helm_python as helm  # noqa: E402

from support import ALL_OPTIONS, CHART, CRDS, NAMESPACE, RELEASE, load_docs  # noqa: E402


@dataclass
class Rendered:
    """One rendering of the chart: the objects (with the template each came from) and NOTES.txt."""

    label: str
    values: dict[str, Any]
    objects: list[dict[str, Any]]
    templates: list[str]
    notes: str

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o.get("kind") == kind]


def render(label: str, values: dict[str, Any]) -> Rendered:
    with helm.Chart.load(str(CHART)) as chart:
        out = chart.render(values=values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    notes = out.pop(f"{RELEASE}/templates/NOTES.txt", "") or ""
    objects, templates = [], []
    for template, text in sorted(out.items()):
        for d in load_docs(text, template):
            objects.append(d)
            templates.append(template)
    return Rendered(label, values, objects, templates, notes)


def all_options() -> dict[str, Any]:
    return yaml.safe_load(ALL_OPTIONS.read_text())


@pytest.fixture(scope="session")
def crds() -> list[dict[str, Any]]:
    found = []
    for f in sorted(CRDS.glob("*.yaml")):
        found += [d for d in load_docs(f.read_text(), str(f)) if d.get("kind") == "CustomResourceDefinition"]
    assert found, "crds/ holds no CustomResourceDefinition (written by `textrec-operator crd --out-dir crds`)"
    return found


@pytest.fixture(scope="session", params=["default values", "all options"])
def rendered(request: pytest.FixtureRequest) -> Rendered:
    values = {} if request.param == "default values" else all_options()
    return render(request.param, values)
