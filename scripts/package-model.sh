#!/usr/bin/env bash
# Package a trained model as the pretrained model shipped in models/small/: copy its folder,
# add a character language model when it has none (`textrec-worker lm --make-default`), score
# it on the committed check sets and pin the result (check.json, SHA256SUMS), which
# worker/tests/pretrained.rs verifies on every test run.
#
#   scripts/package-model.sh ./textrec-data/recipe-small/model
#
# The worker binary must be built (scripts/setup.sh does it); the model is embedded in the
# binary at build time, so rebuild after packaging.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh >/dev/null

src=${1:?usage: scripts/package-model.sh MODEL_DIR}
[ -f "$src/manifest.json" ] && [ -f "$src/model.safetensors" ] \
  || { echo "error: $src is not a model folder (manifest.json + model.safetensors)" >&2; exit 1; }
worker=${TEXTREC_WORKER:-$CARGO_TARGET_DIR/release/textrec-worker}
[ -x "$worker" ] || { echo "error: $worker not built; run scripts/setup.sh" >&2; exit 1; }

dest=models/small
rm -f "$dest/lm.safetensors"
cp "$src/manifest.json" "$src/model.safetensors" "$dest/"
if [ -f "$src/lm.safetensors" ]; then
  cp "$src/lm.safetensors" "$dest/"
else
  # The built-in model always carries one: the worker embeds models/small/lm.safetensors.
  "$worker" lm --model "$dest" --make-default
fi

declare -A cer lines
for set in training-fonts unseen-fonts; do
  result=$("$worker" eval --model "$dest" --data "$dest/check/$set" --json --threads 1 --device cpu | tail -n 1)
  cer[$set]=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["cer"])' "$result")
  lines[$set]=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["lines"])' "$result")
  echo "$set: CER ${cer[$set]} over ${lines[$set]} lines"
done
python3 - "$dest/check.json" "${cer[training-fonts]}" "${lines[training-fonts]}" \
  "${cer[unseen-fonts]}" "${lines[unseen-fonts]}" <<'PY'
import json, sys
path, tf_cer, tf_lines, uf_cer, uf_lines = sys.argv[1:]
check = {
    "tolerance": 0.005,
    "sets": {
        "training-fonts": {"data": "check/training-fonts", "cer": float(tf_cer), "lines": int(tf_lines)},
        "unseen-fonts": {"data": "check/unseen-fonts", "cer": float(uf_cer), "lines": int(uf_lines)},
    },
}
with open(path, "w") as f:
    json.dump(check, f, indent=2)
    f.write("\n")
PY
(cd models && sha256sum small/manifest.json small/model.safetensors small/lm.safetensors > SHA256SUMS)
echo "packaged $src into $dest; rebuild the worker to embed it"
