#!/usr/bin/env bash
# One-time set-up on a fresh CPU-only Debian machine (idempotent, safe to re-run):
#   1. FFmpeg from Debian (torchcodec decodes with it; the synthetic dataset encodes with it),
#   2. torch 2.13.0 CPU (only when no torch is installed: an existing CUDA torch is kept),
#   3. this repository in editable mode with the [dev] extra, pinned by constraints-cpu.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if ! command -v ffmpeg >/dev/null 2>&1; then
  echo "[setup] installing ffmpeg (apt-get)"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq ffmpeg >/dev/null
fi

constraints=constraints-cpu.txt
if $PY -c "import torch" >/dev/null 2>&1; then
  have=$($PY -c "import torch; print(torch.__version__.split('+')[0])")
  if [ "$have" != "2.13.0" ]; then
    echo "[setup] keeping the installed torch $have (constraints without the torch pin)"
    constraints=$(mktemp); grep -v '^torch==' constraints-cpu.txt > "$constraints"
  fi
else
  echo "[setup] installing torch==2.13.0 (CPU wheel)"
  $PY -m pip install -q torch==2.13.0
fi

# The distribution's metadata, not `import data_shards` (which works from the repo root uninstalled).
if ! $PY -c "import importlib.metadata as m; m.version('videoqa-reasoning'); import torchcodec, deepspeed, webdataset, transformers, pytest, av" >/dev/null 2>&1 \
   || [ "${FORCE_INSTALL:-0}" = 1 ]; then
  echo "[setup] pip install -e '.[dev]' with $constraints"
  $PY -m pip install -q -c "$constraints" -e ".[dev]"
fi
echo "[setup] ready: $($PY -c 'import torch, torchcodec, deepspeed; print("torch", torch.__version__, "torchcodec", torchcodec.__version__, "deepspeed", deepspeed.__version__)' 2>/dev/null)"
