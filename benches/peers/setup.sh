#!/usr/bin/env bash
# Installs the serving peers of benches/peers/ into venvs outside the clone:
#   $TEXTREC_CACHE/peers/kserve       kserve (ModelServer, OIP v2 over gRPC)
#   $TEXTREC_CACHE/peers/torchserve   torchserve + torch-model-archiver (needs Java 17)
# Each venv gets its peer's pinned requirements; torch is not downloaded again: a .pth file
# appends textrec's venv (torch 2.11, the libtorch the worker links) to the end of sys.path, so
# every server runs the same kernels. A peer that cannot be installed is skipped with a
# message, and benches/peers/bench.py reports it as skipped. Idempotent: a venv whose
# requirements were installed before is kept.
#   benches/peers/setup.sh [kserve] [torchserve]
set -uo pipefail
cd "$(dirname "$0")/../.."
. scripts/env.sh
PEERS_VENVS="$TEXTREC_CACHE/peers"
torch_site="$(ls -d "$TEXTREC_VENV"/lib/python3*/site-packages | head -n 1)"
python="$(sed -n 's/^executable = //p' "$TEXTREC_VENV/pyvenv.cfg")"
[ -x "$python" ] || python="$(command -v python3)"

install() {
  local peer="$1" venv="$PEERS_VENVS/$1" req="benches/peers/$1/requirements.txt"
  if [ -f "$venv/.installed" ] && cmp -s "$req" "$venv/.installed"; then
    echo "peers: $peer already installed in $venv"
    return 0
  fi
  echo "peers: installing $peer into $venv"
  rm -rf "$venv"
  "$python" -m venv "$venv" &&
    "$venv/bin/pip" install -q --disable-pip-version-check -r "$req" || {
      echo "peers: SKIPPED $peer: pip could not install $req" >&2
      rm -rf "$venv"
      return 1
    }
  local site
  site="$(ls -d "$venv"/lib/python3*/site-packages | head -n 1)"
  echo "$torch_site" >"$site/textrec-torch.pth"
  "$venv/bin/python" -c "import torch" || {
    echo "peers: SKIPPED $peer: torch from $torch_site does not import" >&2
    return 1
  }
  cp "$req" "$venv/.installed"
}

peers=("$@")
[ ${#peers[@]} -gt 0 ] || peers=(kserve torchserve)
status=0
for peer in "${peers[@]}"; do
  if [ "$peer" = torchserve ] && ! command -v java >/dev/null; then
    echo "peers: torchserve needs Java 17; trying apt-get install default-jre-headless"
    { apt-get install -y -q default-jre-headless >/dev/null 2>&1 || sudo -n apt-get install -y -q default-jre-headless >/dev/null 2>&1; } ||
      { echo "peers: SKIPPED torchserve: no Java runtime (apt-get install default-jre-headless)" >&2; status=1; continue; }
  fi
  install "$peer" || status=1
done
exit $status
