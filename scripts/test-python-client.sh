#!/usr/bin/env bash
# Tests the Python client (clients/python): installs it into the venv of scripts/setup.sh
# (non-editable, so its build step generates the gRPC stubs from proto/), then runs its pytest
# suite against a real `textrec-worker serve`. The worker binary is $TEXTREC_WORKER, else
# $CARGO_TARGET_DIR/release/textrec-worker, else $CARGO_TARGET_DIR/debug/textrec-worker.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
py="$TEXTREC_VENV/bin/python"
[ -x "$py" ] || { echo "test-python-client.sh: no venv at $TEXTREC_VENV (run scripts/setup.sh)" >&2; exit 1; }

if [ -z "${TEXTREC_WORKER:-}" ]; then
  for b in "$CARGO_TARGET_DIR/release/textrec-worker" "$CARGO_TARGET_DIR/debug/textrec-worker"; do
    if [ -x "$b" ]; then export TEXTREC_WORKER="$b"; break; fi
  done
fi
[ -n "${TEXTREC_WORKER:-}" ] || {
  echo "test-python-client.sh: no textrec-worker in $CARGO_TARGET_DIR/{release,debug}; build it (cargo build --release -p textrec-worker) or set TEXTREC_WORKER" >&2
  exit 1
}
echo "==> python client: install clients/python (worker: $TEXTREC_WORKER)"
# The build tools (setuptools, grpcio-tools) come from the venv (requirements-dev.txt): no
# isolated build environment, so nothing is fetched. A fresh build dir each time: a stale
# build/lib would carry stubs of protos since removed.
rm -rf clients/python/build
"$py" -m pip install -q --no-build-isolation --force-reinstall --no-deps ./clients/python
echo "==> python client: pytest"
# The src/ layout keeps the source off sys.path: the tests import the installed package.
cd clients/python
exec "$py" -m pytest -q -p no:cacheprovider tests "$@"
