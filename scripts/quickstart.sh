#!/usr/bin/env bash
# The quickstart: set everything up, train examples/trial-small.yaml on this machine's CPU,
# then recognize a few rendered lines of held-out text and print them next to the truth.
# Rerunning resumes an unfinished training run and reuses a finished one.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
. scripts/env.sh

BIN="$CARGO_TARGET_DIR/release"
DATA="${TEXTREC_QUICKSTART_DIR:-$PWD/textrec-data/quickstart}"
TRIAL="$DATA/trial-small"

if [ -f "$TRIAL/model/manifest.json" ]; then
  echo "==> model already trained: $TRIAL/model (delete $TRIAL to train again)"
else
  echo "==> training examples/trial-small.yaml on the CPU into $TRIAL (Ctrl-C stops; rerun resumes)"
  "$BIN/textrec-worker" train --config examples/trial-small.yaml --output "$TRIAL" \
    --run quickstart --trial small
fi

echo "==> rendering sample lines of held-out text into $DATA/samples"
rm -rf "$DATA/samples"
"$BIN/textrec-worker" synth --out "$DATA/samples" --count 8

echo "==> recognizing them"
"$BIN/textrec-worker" recognize --model "$TRIAL/model" "$DATA"/samples/*.png > "$DATA/recognized.tsv"
printf '\n%-40s %s\n' "TRUTH" "RECOGNIZED"
while IFS=$'\t' read -r path text _; do
  truth="$(cat "${path%.png}.gt.txt")"
  mark="  "; [ "$truth" = "$text" ] && mark="ok"
  printf '%-40s %s  %s\n' "$truth" "$text" "$mark"
done < "$DATA/recognized.tsv"
echo
"$BIN/textrec-worker" eval --model "$TRIAL/model" --data "$DATA/samples" --json | tail -n 1
echo "model: $TRIAL/model   serve it: $BIN/textrec-worker serve --model $TRIAL/model"
