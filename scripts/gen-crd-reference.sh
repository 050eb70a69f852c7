#!/usr/bin/env bash
# Regenerate docs/crd-reference.md from the generated CRDs in crds/ (which
# `TEXTREC_UPDATE_CRDS=1 cargo test -p textrec-operator --test crd_drift` regenerates from the
# Rust types). tests/manifests/test_crd_reference.py fails while the file is out of date.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${TEXTREC_VENV:-${TEXTREC_CACHE:-$HOME/.cache/textrec}/venv}"
PYTHON="$VENV/bin/python"
[ -x "$PYTHON" ] || PYTHON=python3
exec "$PYTHON" tests/manifests/crd_reference.py --write
