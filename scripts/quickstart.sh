#!/usr/bin/env bash
# The quickstart: set everything up, then run examples/quickstart.yaml on this machine with the
# local runner (a 2-trial TrainingRun on the CPU, then a ModelDeployment serving its best model),
# recognize a few rendered lines of held-out text over gRPC next to their truth, and leave the
# server and its demo page running until Ctrl-C.
#
# Rerunning continues where it stopped: finished trials are kept, interrupted ones resume.
set -euo pipefail
cd "$(dirname "$0")/.."

# The server the runner starts listens on these; something else there would answer in its place.
# Checked first, so a taken port fails in a second rather than after the setup.
for port in 8080 50051; do
  if ! python3 - "$port" <<'PY'
import socket, sys
s = socket.socket()
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
PY
  then
    echo "error: port $port is already in use; the quickstart serves on 8080 (HTTP) and 50051 (gRPC)." >&2
    echo "       Stop what listens there (see: ss -ltnp 'sport = :$port') and rerun." >&2
    exit 1
  fi
done

scripts/setup.sh
. scripts/env.sh

BIN="$CARGO_TARGET_DIR/release"
export TEXTREC_WORKER="$BIN/textrec-worker"
STORAGE="${TEXTREC_STORAGE:-file://$PWD/textrec-data}"
SAMPLES="$PWD/textrec-data/quickstart-samples"
HTTP="http://127.0.0.1:8080"
GRPC="grpc://127.0.0.1:50051"

mkdir -p "$(dirname "$SAMPLES")"
echo "==> textrec-operator local run examples/quickstart.yaml (storage $STORAGE)"
"$BIN/textrec-operator" local run examples/quickstart.yaml --storage "$STORAGE" &
RUNNER=$!
# Whatever ends this script (a failed step, Ctrl-C, the end) stops the runner and its server.
stop_runner() {
  if kill -0 "$RUNNER" 2>/dev/null; then
    kill -INT "$RUNNER" 2>/dev/null || true
    wait "$RUNNER" 2>/dev/null || true
  fi
}
trap stop_runner EXIT
trap 'exit 130' INT TERM

# The runner trains first, then starts the server. Ready means: /readyz answers 200 and the
# model it serves is the one `local status` says the quickstart deployment serves (so it is
# this runner's server, not another process on the port).
while true; do
  rc=0
  "$BIN/textrec-operator" local status --storage "$STORAGE" -o json 2>/dev/null | python3 -c '
import json, sys, urllib.request
want = next((d.get("status", {}).get("model", {}).get("sha256") for d in json.load(sys.stdin)["items"]
             if d.get("kind") == "ModelDeployment" and d["metadata"]["name"] == "quickstart"), None)
base = sys.argv[1]
if not want or urllib.request.urlopen(base + "/readyz", timeout=2).status != 200:
    sys.exit(1)
served = json.load(urllib.request.urlopen(base + "/v1/model", timeout=2)).get("version")
if served != want:
    print(f"error: the server on {base} serves model {served}, not the quickstart model {want}: "
          "another server holds the port", file=sys.stderr)
    sys.exit(3)
' "$HTTP" 2>"$SAMPLES.wait-error" || rc=$?
  [ "$rc" -eq 0 ] && break
  if [ "$rc" -eq 3 ]; then
    cat "$SAMPLES.wait-error" >&2
    exit 1
  fi
  if ! kill -0 "$RUNNER" 2>/dev/null; then
    wait "$RUNNER" || true
    echo "local run stopped before serving; see its output above" >&2
    exit 1
  fi
  sleep 5
done
rm -f "$SAMPLES.wait-error"

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
