#!/usr/bin/env bash
# One round of the feedback loop, measured: how much one short fine-tune on flagged lines helps
# the served model on lines of the same kind that it never saw.
#
#   benches/feedback_round.sh [--font Havana] [--flags 200] [--heldout 60] [--steps 300]
#
# - "Flags": lines a user corrected, here rendered by `textrec-worker synth` in `--font` (default
#   Havana, a script face the built-in model reads worst of the fonts it never trained on) from
#   Debian package descriptions, prose the training corpus does not contain. In production they
#   come from `POST /v1/flag` (operator/tests/feedback_loop.rs runs that whole path).
# - Held out: `--heldout` more lines in the same font from another source (held-out corpus
#   text), set aside before training.
# - Before: `textrec-worker eval` of the served model (`builtin:small`) on the held-out lines.
# - The round: `textrec-worker train` from that model (`model.init_from`) on a mix of synthetic
#   lines in the training fonts (0.5) and the flags (0.5, augmented), `--steps` steps on both
#   cores, the wall time printed (the issue's budget is 5 minutes on this 2-core machine).
# - After: the fine-tuned model on the same held-out lines, and on the training fonts (the
#   validation set of the quickstart), to show what the round costs elsewhere.
# Prints one markdown table. Needs a release build (`cargo build --release -p textrec-worker`).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
font="Havana"; flags=200; heldout=60; steps=300
while [ $# -gt 0 ]; do
  case "$1" in
    --font) font="$2"; shift 2 ;;
    --flags) flags="$2"; shift 2 ;;
    --heldout) heldout="$2"; shift 2 ;;
    --steps) steps="$2"; shift 2 ;;
    -h|--help) sed -n 2,19p "$0"; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
worker="$TEXTREC_BIN_DIR/textrec-worker"
[ -x "$worker" ] || { echo "$worker is missing: cargo build --release -p textrec-worker" >&2; exit 1; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# The flags are package descriptions, the held-out lines held-out corpus text: two sources, so
# no held-out line shares a passage with a flag (and neither is training text).
synth() { "$worker" synth "$@" >/dev/null 2>&1; }
synth --font "$font" --count "$flags" --split descriptions --seed 101 --out "$work/flags"
synth --font "$font" --count "$heldout" --split validation --seed 202 --out "$work/heldout"
synth --count "$heldout" --split validation --seed 303 --out "$work/training-fonts"

cer() { # model, data → CER
  "$worker" eval --model "$1" --data "$2" --threads 2 --json 2>/dev/null | tail -n 1 |
    python3 -c 'import json,sys; print("%.4f" % json.load(sys.stdin)["cer"])'
}
before_font="$(cer builtin:small "$work/heldout")"
before_train="$(cer builtin:small "$work/training-fonts")"

start=$(date +%s)
"$worker" train --output "file://$work/run" \
  --set threads=2 --set model.preset=small --set model.init_from=builtin:small \
  --set max_steps="$steps" --set batch_size=16 --set eval_interval="$steps" --set log_interval=50 \
  --set optimizer.lr=0.0005 --set optimizer.warmup_steps=20 \
  --set checkpoint.every_steps="$steps" \
  --set 'data.train=[{"kind":"synthetic","weight":0.5},{"kind":"tesstrain","path":"'"$work/flags"'","weight":0.5,"augment":true}]' \
  --set data.validation.samples=32 --set 'data.extra_validation={}' \
  --set data.loader_threads=1 >"$work/train.log" 2>&1 || { tail -n 30 "$work/train.log"; exit 1; }
wall=$(( $(date +%s) - start ))
model="$work/run/model"  # the best model of the run (contract/src/layout.rs)
after_font="$(cer "$model" "$work/heldout")"
after_train="$(cer "$model" "$work/training-fonts")"

echo "| held-out lines | served model (builtin:small) | after one round ($steps steps, ${wall} s) |"
echo "| --- | ---: | ---: |"
echo "| $heldout lines in $font, text not in the flags | $before_font | $after_font |"
echo "| $heldout lines in the training fonts | $before_train | $after_train |"
