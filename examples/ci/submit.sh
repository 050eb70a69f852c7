#!/usr/bin/env bash
# Submit a TrainingRun from CI with kubectl alone, wait for it, and exit by its outcome: the
# recipe behind `textrec-operator submit --wait --require`, with the same exit codes
# (0 succeeded, 1 failed, 2 invalid spec, 3 CER above MAX_CER, 4 timeout).
#
#   examples/ci/submit.sh training/run.yaml
#   NAMESPACE=training TIMEOUT=3h MAX_CER=0.05 examples/ci/submit.sh training/run.yaml
#
# Credentials: examples/ci/rbac.yaml (create, get, list, watch on trainingruns). Needs bash ≥ 5.1
# (`wait -n` on given jobs) and kubectl ≥ 1.23 (`--for=jsonpath`).
set -euo pipefail

manifest=${1:?usage: submit.sh RUN.yaml}
ns=${NAMESPACE:-training}
timeout=${TIMEOUT:-2h}
max_cer=${MAX_CER:-}

# `create`, not `apply`: with metadata.generateName each pipeline gets a run of its own, and a
# manifest the API server refuses fails here, naming the field.
run=$(kubectl create -n "$ns" -f "$manifest" -o name) || exit 2
echo "created $run in $ns"

# A run ends with condition Succeeded=True or Failed=True, or in phase Invalid (a spec the
# operator cannot run: condition Valid=False, which a run merely waiting for a missing PVC also
# has). `kubectl wait` waits for one condition, so wait for all three and take the first.
kubectl wait -n "$ns" "$run" --for=condition=Succeeded --timeout="$timeout" >/dev/null 2>&1 &
succeeded=$!
kubectl wait -n "$ns" "$run" --for=condition=Failed --timeout="$timeout" >/dev/null 2>&1 &
failed=$!
kubectl wait -n "$ns" "$run" --for=jsonpath='{.status.phase}'=Invalid --timeout="$timeout" >/dev/null 2>&1 &
invalid=$!
wait -n "$succeeded" "$failed" "$invalid" || true
kill "$succeeded" "$failed" "$invalid" 2>/dev/null || true

status() { kubectl get -n "$ns" "$run" -o jsonpath="$1"; }

phase=$(status '{.status.phase}')
case "$phase" in
  Succeeded) ;;
  Failed)
    echo "$run failed: $(status '{.status.conditions[?(@.type=="Failed")].message}')" >&2
    exit 1 ;;
  Invalid)
    echo "$run is invalid: $(status '{.status.message}')" >&2
    exit 2 ;;
  *)
    echo "timed out after $timeout waiting for $run (phase ${phase:-unknown}); the run is left" \
      "running: kubectl delete -n $ns $run stops it" >&2
    exit 4 ;;
esac

IFS=$'\t' read -r url sha256 metric_name metric < <(
  status '{.status.bestModel.url}{"\t"}{.status.bestModel.sha256}{"\t"}{.status.bestModel.metricName}{"\t"}{.status.bestModel.metric}{"\n"}')
echo "$run succeeded"
echo "best model: $url"
echo "  sha256: $sha256"
echo "  $metric_name: $metric"

if [ -n "$max_cer" ]; then
  if [ "$metric_name" != cer ]; then
    echo "requirement cer<=$max_cer: NOT met (the run's objective is $metric_name)" >&2
    exit 3
  fi
  if ! awk -v v="$metric" -v max="$max_cer" 'BEGIN { exit !(v <= max) }'; then
    echo "requirement cer<=$max_cer: NOT met (cer = $metric)" >&2
    exit 3
  fi
  echo "requirement cer<=$max_cer: met (cer = $metric)"
fi
