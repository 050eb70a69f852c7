# Source this file: it points cargo at the libtorch venv and a target dir outside the clone.
# Used by scripts/setup.sh, scripts/test.sh, .ci/run and the README.
TEXTREC_CACHE="${TEXTREC_CACHE:-$HOME/.cache/textrec}"
TEXTREC_VENV="${TEXTREC_VENV:-$TEXTREC_CACHE/venv}"
export TEXTREC_CACHE TEXTREC_VENV
# One target dir per checkout: cargo treats a workspace moved to another path as unchanged, so
# a shared dir would hand one checkout test binaries built from another (paths compiled in with
# env!("CARGO_MANIFEST_DIR") then point at the other checkout).
_root="$(cd "$(dirname "${BASH_SOURCE[0]:-$PWD/scripts/env.sh}")/.." && pwd)"
_key="$(basename "$_root")-$(printf '%s' "$_root" | sha256sum | cut -c1-12)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$TEXTREC_CACHE/target/$_key}"
export LIBTORCH_USE_PYTORCH=1
export PATH="$TEXTREC_VENV/bin:$PATH"
_torch_lib="$TEXTREC_VENV/lib/python3.11/site-packages/torch/lib"
if [ -d "$TEXTREC_VENV" ]; then
  _torch_lib="$(ls -d "$TEXTREC_VENV"/lib/python3*/site-packages/torch/lib 2>/dev/null | head -n 1)"
fi
export LD_LIBRARY_PATH="${_torch_lib}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# Reproducible CPU numerics in tests and benchmarks unless the caller says otherwise.
export TEXTREC_BIN_DIR="$CARGO_TARGET_DIR/release"
unset _torch_lib _root _key
