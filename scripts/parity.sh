#!/usr/bin/env bash
# Parity of the PyTorch reference (benches/reference/) with textrec's network: builds the
# `parity_dump` example, lets it write random-weight model folders, rendered lines and the Rust
# logits/greedy output for the tiny and small presets, then runs the Python test against them
# (max |Δlogits| <= 1e-4 in fp32, identical greedy tokens, identical preprocessing).
# Needs the venv of scripts/setup.sh (torch, numpy, safetensors, pillow, pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh

cargo build -q -p textrec-model --example parity_dump
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
"$CARGO_TARGET_DIR/debug/examples/parity_dump" "$out"
TEXTREC_PARITY_DIR="$out" python -m pytest -q -s -p no:cacheprovider benches/reference/test_parity.py
