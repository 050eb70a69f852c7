#!/usr/bin/env bash
# Side-by-side benchmarks of textrec vs PyTorch (training, serving) and vs Tesseract (quality); see
# BENCHMARKS.md. Builds the release binaries it needs, then runs benches/run.py:
#   benches/run.sh                                  # training (+ quality with TEXTREC_QUALITY_MODEL)
#   benches/run.sh --model DIR --lines 300          # quality of a trained model too
#   benches/run.sh --only training --threads 1 --steps 30
#   benches/run.sh --only serve                    # textrec-worker serve vs the Python grpcio server
#   benches/run.sh --only peers [--seconds 10 --repeats 3 --json FILE]  # vs KServe and TorchServe
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
cargo build -q --release -p textrec-worker --bin textrec-worker --example train_bench
case " $* " in
  *" --only training "* | *" --only quality "*) ;;
  *" --only peers "*)
    cargo bench -q -p textrec-worker --bench peers --no-run  # the load generator
    benches/peers/setup.sh || echo "peers: not every peer could be installed; those are skipped" ;;
  *) cargo bench -q -p textrec-worker --bench serve --no-run ;;  # the serving client (release + debuginfo)
esac
exec python benches/run.py "$@"
