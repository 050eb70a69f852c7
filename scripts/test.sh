#!/usr/bin/env bash
# The test command (README, .ci/run): installs what is missing, then formatting, lints, API docs,
# the whole Rust test suite (unit, integration, exact-resume, serving, operator against a mocked
# API) and the chart/Dockerfile/manifest checks, the Python client against the built worker, and the
# scripts' own tests (tests/scripts).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --no-build
. scripts/env.sh
# A one-shot build gains nothing from incremental caches, which would add GBs to the target dir.
export CARGO_INCREMENTAL=0
# setup.sh installed chromium: the demo-page test must run, not skip.
export TEXTREC_REQUIRE_BROWSER=1
# The TensorBoard read-back test needs the `tensorboard` package (requirements-dev.txt).
export TEXTREC_REQUIRE_TENSORBOARD=1

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy -D warnings"
cargo clippy --workspace --all-targets -- -D warnings
echo "==> cargo doc -D warnings (the API docs' links resolve)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet
echo "==> cargo test"
cargo test --workspace -- --test-threads=2
echo "==> python client (clients/python) against the worker cargo test just built"
TEXTREC_WORKER="${TEXTREC_WORKER:-$CARGO_TARGET_DIR/debug/textrec-worker}" scripts/test-python-client.sh
echo "==> parity: PyTorch reference vs textrec (benches/reference)"
scripts/parity.sh
if [ -x scripts/check-manifests.sh ]; then
  echo "==> chart, Dockerfile and manifest checks"
  scripts/check-manifests.sh
fi
echo "==> scripts (tests/scripts)"
python -m pytest -p no:cacheprovider -q tests/scripts
