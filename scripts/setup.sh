#!/usr/bin/env bash
# Installs everything textrec needs on a fresh Debian machine with Rust and Python 3:
# Debian packages (fonts, corpus, protoc, Chromium, Tesseract), libtorch 2.11 from PyPI into a
# venv outside the clone, test tools, and builds the release binaries. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh

BUILD=release
for arg in "$@"; do
  case "$arg" in
    --no-build) BUILD=none ;;
    -h|--help) echo "usage: scripts/setup.sh [--no-build]"; exit 0 ;;
    *) echo "setup.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done

step() { printf '\n==> %s\n' "$*"; }

APT_PACKAGES=(
  # training fonts (exactly these: model/src/data/fonts/training_set.rs lists their files)
  fonts-dkg-handwriting fonts-breip fonts-dancingscript fonts-humor-sans fonts-comic-neue
  fonts-ecolier-court fonts-dejavu-core fonts-liberation2
  # validation fonts the model never trains on (the `unseen-fonts` set)
  fonts-freefont-ttf fonts-havana fonts-cabinsketch fonts-bebas-neue
  # training corpus
  fortunes fortunes-min wamerican
  # build and test tools (g++ compiles tch's C++ glue, make builds jemalloc; python3-venv holds
  # the libtorch venv)
  g++ make python3-venv protobuf-compiler chromium chromium-driver tesseract-ocr tesseract-ocr-eng
  # the TLS tests make their certificates with the openssl command
  openssl
)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  step "installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! "$TEXTREC_VENV/bin/python" -c 'import torch, sys; sys.exit(torch.__version__.split("+")[0] != "2.11.0")' 2>/dev/null; then
  step "installing libtorch 2.11.0 (PyPI torch==2.11.0) into $TEXTREC_VENV (~4.7 GB, a few minutes)"
  python3 -m venv "$TEXTREC_VENV"
  "$TEXTREC_VENV/bin/pip" install -q --upgrade pip
  "$TEXTREC_VENV/bin/pip" install -q torch==2.11.0
fi
. scripts/env.sh  # re-read: the torch lib folder exists now

# The stamp holds the hash of what was installed: a changed requirements file reinstalls,
# whatever the file times of a fresh clone say.
want="$(sha256sum requirements-dev.txt | cut -d' ' -f1)"
if [ "$(cat "$TEXTREC_VENV/.dev-installed" 2>/dev/null)" != "$want" ]; then
  step "installing test tools into the venv (requirements-dev.txt)"
  "$TEXTREC_VENV/bin/pip" install -q -r requirements-dev.txt
  echo "$want" > "$TEXTREC_VENV/.dev-installed"
fi

if [ "$BUILD" = release ]; then
  step "building textrec (release)"
  cargo build --release --workspace --bins
  echo
  echo "textrec is built: $CARGO_TARGET_DIR/release/textrec-worker, textrec-operator"
fi
