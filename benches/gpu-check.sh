#!/usr/bin/env bash
# GPU checks on a machine with CUDA: the pretrained model's recipe trained on the GPU (samples/s,
# CER against wall-clock), what each training precision costs, and serving on the GPU beside
# serving on the same machine's CPUs. Every figure lands in $OUT (default ./gpu-check) and is
# summarized on stdout; BENCHMARKS.md ("GPU") holds the last run's.
#
#   benches/gpu-check.sh [--set KEY=VALUE ...]
#
# The --set overrides go to every training run (e.g. font folders or the descriptions file on
# a machine laid out differently). Environment:
#   TEXTREC_WORKER        the worker binary (default: textrec-worker on PATH)
#   TEXTREC_SERVE_BENCH   the serving bench binary (`cargo bench -p textrec-worker --bench serve
#                         --no-run` prints its path); the serving part is skipped without it
#   RECIPE_SECONDS        wall-clock cap of the recipe run (default 450: on an H200 it ran to its
#                         end in 378 s; at the cap it checkpoints and stops like a preempted trial)
#   PROBE_SECONDS         how long each precision probe trains before it is stopped (default 60;
#                         no evaluation: only its samples/s and the GPU's load are read)
#   PROBE_PRESET          network of the precision probes (default small; base is the GPU preset)
#   PROBE_BATCH           batch size of the precision probes (default 16)
#   PROBE_PRECISIONS      precisions probed, in order (default "fp32 fp16 bf16")
#   LOADER_THREADS        data loader threads (default: CPUs - 2; rendering feeds the GPU)
#   DEVICE                cuda (default), or cpu to try the script out without a GPU
#   SKIP                  space-separated parts to skip: probe recipe serve
set -uo pipefail
cd "$(dirname "$0")/.."

W="${TEXTREC_WORKER:-textrec-worker}"
OUT="${OUT:-./gpu-check}"
RECIPE_SECONDS="${RECIPE_SECONDS:-450}"
DEVICE="${DEVICE:-cuda}"
PROBE_SECONDS="${PROBE_SECONDS:-60}"
PROBE_PRESET="${PROBE_PRESET:-small}"
PROBE_BATCH="${PROBE_BATCH:-16}"
PROBE_PRECISIONS="${PROBE_PRECISIONS:-fp32 fp16 bf16}"
CPUS="$(nproc)"
LOADER_THREADS="${LOADER_THREADS:-$((CPUS > 3 ? CPUS - 2 : 1))}"
SKIP=" ${SKIP:-} "
SETS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --set) SETS+=(--set "$2"); shift 2 ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) echo "gpu-check.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
OUT="$(mkdir -p "$OUT" && cd "$OUT" && pwd)"
step() { printf '\n==> %s\n' "$*"; }
skipped() { case "$SKIP" in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

step "device"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
echo "CPUs: $CPUS; loader threads: $LOADER_THREADS"

# Prints the median samples/s of a run's training records (the first two are warm-up) and its
# evaluations: step, wall-clock, CER per set.
summarize() {
  python3 - "$1" <<'EOF'
import json, statistics, sys
recs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
train = [r for r in recs if r.get("kind") == "train" and r.get("samples_per_sec")]
if len(train) > 2:
    train = train[2:]
if train:
    sps = [r["samples_per_sec"] for r in train]
    print(f"  samples/s: median {statistics.median(sps):.0f} (min {min(sps):.0f}, max {max(sps):.0f}); last step {train[-1]['step']}")
for r in recs:
    if r.get("kind") == "eval":
        sets = r.get("sets", {})
        extra = ", ".join(f"{k} {v['cer']:.4f}" for k, v in sets.items() if k != "validation")
        print(f"  eval step {r['step']:>5} at {r['elapsed_s']/60:5.2f} min: CER {r['cer']:.4f}" + (f"; {extra}" if extra else ""))
EOF
}

# Samples the GPU's load every half second until stopped; `gpu_load_stop` prints the mean, so a
# run starved by its data loader (a low load) is told apart from one bound by the GPU.
gpu_load_start() {
  nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits -lms 500 >"$1" 2>/dev/null &
  GPU_LOAD_PID=$!
}
gpu_load_stop() {
  kill "$GPU_LOAD_PID" 2>/dev/null; wait "$GPU_LOAD_PID" 2>/dev/null
  awk '$1 ~ /^[0-9]+$/ { s += $1; n++ } END { if (n) printf "  GPU load: mean %.0f%% over %d samples\n", s / n, n }' "$1"
}

if ! skipped recipe; then
  step "the recipe (examples/recipe-small.yaml) on CUDA, capped at ${RECIPE_SECONDS}s"
  start=$(date +%s)
  gpu_load_start "$OUT/recipe.load"
  # The recipe trains in bf16 for the CPU; on CUDA fp32 (`auto`) is the faster for this network.
  timeout -s TERM "$RECIPE_SECONDS" "$W" train --config examples/recipe-small.yaml \
    --output "file://$OUT/recipe" --set device="$DEVICE" --set precision=auto \
    --set data.loader_threads="$LOADER_THREADS" "${SETS[@]}" >"$OUT/recipe.log" 2>&1
  echo "  exit $? after $(( $(date +%s) - start )) s (124/143: stopped at the cap)"
  gpu_load_stop "$OUT/recipe.load"
  summarize "$OUT/recipe/metrics.jsonl"
  if [ -f "$OUT/recipe/model/manifest.json" ]; then
    for set in training-fonts unseen-fonts; do
      printf '  model on models/small/check/%s: ' "$set"
      "$W" eval --model "$OUT/recipe/model" --data "models/small/check/$set" --device "$DEVICE" --json 2>/dev/null |
        tail -n 1 | python3 -c 'import json,sys; j=json.load(sys.stdin); print("CER %.4f (%d lines)" % (j["cer"], j.get("lines", 0)))'
    done
  fi
fi

if ! skipped probe; then
  for p in $PROBE_PRECISIONS; do
    step "precision $p: $PROBE_PRESET network at batch $PROBE_BATCH, ${PROBE_SECONDS}s"
    gpu_load_start "$OUT/probe-$p.load"
    # Stopped by the cap like a preempted trial: no evaluation, no end-of-trial searches.
    timeout -s TERM "$PROBE_SECONDS" "$W" train --config examples/recipe-small.yaml \
      --output "file://$OUT/probe-$p" "${SETS[@]}" --set device="$DEVICE" --set precision="$p" \
      --set model.preset="$PROBE_PRESET" --set batch_size="$PROBE_BATCH" --set max_steps=1000000 \
      --set log_interval=10 --set data.loader_threads="$LOADER_THREADS" \
      --set data.validation.samples=16 --set data.extra_validation.unseen-fonts=null \
      --set checkpoint.every_steps=1000000 --set checkpoint.every_seconds=100000 \
      >"$OUT/probe-$p.log" 2>&1
    echo "  exit $? (124/143: stopped at the cap); $(grep -m1 -o 'autocast [a-z0-9]*' "$OUT/probe-$p.log")"
    gpu_load_stop "$OUT/probe-$p.load"
    summarize "$OUT/probe-$p/metrics.jsonl"
  done
fi

if ! skipped serve && [ -n "${TEXTREC_SERVE_BENCH:-}" ]; then
  for device in cuda cpu; do
    step "serving models/small on $device (check lines, closed loop)"
    TEXTREC_BENCH_WORKER="$W" TEXTREC_BENCH_DEVICE="$device" TEXTREC_BENCH_MODEL=models/small \
      TEXTREC_BENCH_IMAGES=models/small/check/training-fonts TEXTREC_BENCH_MODES=inproc,rust-off,rust-on \
      TEXTREC_BENCH_CONCURRENCY="${SERVE_CONCURRENCY:-1,8,32,128}" TEXTREC_BENCH_REQUESTS="${SERVE_REQUESTS:-256}" \
      TEXTREC_BENCH_PAIRED_ROUNDS=0 TEXTREC_BENCH_JSON="$OUT/serve-$device.json" \
      "$TEXTREC_SERVE_BENCH" 2>&1 | tee "$OUT/serve-$device.log" | grep --line-buffered -v '^\s*$'
  done
fi
