"""The Dockerfile: hadolint-clean, and every image target runs as a numeric non-root user."""

from __future__ import annotations

import re
import shutil
import subprocess
from typing import Any

from support import DOCKERFILE, ROOT

# Images the Dockerfile must offer as build targets.
DOCKER_TARGETS = ("operator", "worker-cpu", "worker-cuda")


def stages(text: str) -> dict[str, dict[str, Any]]:
    """Build stages by name: base image, final USER and instructions."""
    out: list[dict[str, Any]] = []
    for line in re.sub(r"\\\n", " ", text).splitlines():
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        word, _, rest = s.partition(" ")
        if word.upper() == "FROM":
            m = re.match(r"(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?", rest, re.I)
            assert m, s
            out.append({"from": m.group(1), "name": (m.group(2) or "").lower(), "user": None, "lines": []})
        elif out:
            out[-1]["lines"].append(s)
            if word.upper() == "USER":
                out[-1]["user"] = rest.strip()
    return {s["name"]: s for s in out}


def test_hadolint_has_no_findings() -> None:
    hadolint = shutil.which("hadolint")
    assert hadolint, "hadolint not found on PATH (scripts/check-manifests.sh installs it)"
    p = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60,
                       cwd=ROOT)
    assert p.returncode == 0, (p.stdout + p.stderr).strip()


def test_image_targets_run_as_numeric_non_root_users() -> None:
    found = stages(DOCKERFILE.read_text())
    for t in DOCKER_TARGETS:
        assert t in found, f"no build target {t!r} (FROM ... AS {t})"
        user = found[t]["user"]
        assert user and user.split(":")[0] not in ("root", "0"), f"target {t}: final USER {user!r}"
        assert re.match(r"^\d+(:\d+)?$", user), f"target {t}: USER {user!r} is a name; runAsNonRoot needs a UID"


def test_operator_image_ships_no_libtorch() -> None:
    assert not any("torch" in line.lower() for line in stages(DOCKERFILE.read_text())["operator"]["lines"])


def test_dockerignore_keeps_build_output_out_of_the_context() -> None:
    ignore = ROOT / ".dockerignore"
    assert ignore.exists(), ".dockerignore is missing"
    assert re.search(r"^/?target/?$", ignore.read_text(), re.M), ".dockerignore does not exclude target/"
