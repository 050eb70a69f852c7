#!/usr/bin/env bash
# Copy the generated CRDs (crds/*.yaml, written by `textrec-operator crd`) into the Helm chart,
# which installs them from charts/textrec/crds/. Run it after regenerating crds/;
# scripts/check-manifests.sh fails while the two folders differ.
set -euo pipefail
cd "$(dirname "$0")/.."

src=crds
dst=charts/textrec/crds
mkdir -p "$dst"

shopt -s nullglob
# Drop chart copies whose source is gone, so a removed CRD does not linger in the chart.
for f in "$dst"/*.yaml; do
  [ -e "$src/$(basename "$f")" ] || { rm -f "$f"; echo "removed $f"; }
done
n=0
for f in "$src"/*.yaml; do
  if ! cmp -s "$f" "$dst/$(basename "$f")"; then
    cp "$f" "$dst/"
    echo "copied $f -> $dst/"
  fi
  n=$((n + 1))
done
echo "$dst holds the $n CRD file(s) of $src/"
