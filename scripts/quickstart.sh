#!/usr/bin/env bash
# The quickstart: set everything up, then run examples/quickstart.yaml on this machine with the
# local runner (a 2-trial TrainingRun on the CPU, then a ModelDeployment serving its best model),
# recognize a few rendered lines of held-out text over gRPC next to their truth, and leave the
# server and its demo page running until Ctrl-C.
#
# Rerunning continues where it stopped: finished trials are kept, interrupted ones resume.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
. scripts/env.sh

BIN="$CARGO_TARGET_DIR/release"
export TEXTREC_WORKER="$BIN/textrec-worker"
STORAGE="${TEXTREC_STORAGE:-file://$PWD/textrec-data}"
SAMPLES="$PWD/textrec-data/quickstart-samples"
HTTP="http://127.0.0.1:8080"
GRPC="grpc://127.0.0.1:50051"

echo "==> textrec-operator local run examples/quickstart.yaml (storage $STORAGE)"
"$BIN/textrec-operator" local run examples/quickstart.yaml --storage "$STORAGE" &
RUNNER=$!
trap 'kill -INT $RUNNER 2>/dev/null; wait $RUNNER' INT TERM

# The runner trains first, then starts the server; wait until it answers as ready.
until python3 - "$HTTP/readyz" <<'PY' 2>/dev/null
import sys, urllib.request
sys.exit(0 if urllib.request.urlopen(sys.argv[1], timeout=2).status == 200 else 1)
PY
do
  if ! kill -0 "$RUNNER" 2>/dev/null; then
    wait "$RUNNER" || true
    echo "local run stopped before serving; see its output above" >&2
    exit 1
  fi
  sleep 5
done

echo "==> rendering sample lines into $SAMPLES: prose the model never saw, printed-line lengths"
rm -rf "$SAMPLES"
"$BIN/textrec-worker" synth --out "$SAMPLES" --count 8

echo "==> recognizing them over gRPC ($GRPC)"
"$BIN/textrec-worker" recognize --endpoint "$GRPC" "$SAMPLES"/*.png > "$SAMPLES/recognized.tsv"
echo
while IFS=$'\t' read -r path text _; do
  truth="$(cat "${path%.png}.gt.txt")"
  mark=""; [ "$truth" = "$text" ] && mark="  (exact)"
  printf 'truth: %s\nread:  %s%s\n\n' "$truth" "$text" "$mark"
done < "$SAMPLES/recognized.tsv"
"$BIN/textrec-operator" local status --storage "$STORAGE"
echo
echo "Demo page: $HTTP/   (drop an image, flag wrong answers)"
echo "gRPC:      $GRPC   (textrec-worker recognize --endpoint $GRPC IMAGE...)"
echo "Ctrl-C stops the server; rerun this script to continue."
wait "$RUNNER"
