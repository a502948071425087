#!/usr/bin/env bash
# One-time set-up on a fresh CPU-only Debian machine (idempotent, safe to re-run):
#   1. FFmpeg from Debian (torchcodec decodes with it; the synthetic dataset encodes with it),
#   2. torch 2.13.0 CPU (only when no torch is installed: an existing CUDA torch is kept), from a local
#      wheel or PyTorch's CPU index,
#   3. this repository in editable mode with the [dev] extra, pinned by constraints-cpu.txt.
set -euo pipefail
# scripts/demo.sh and scripts/test.sh source this file and then run "$PY" (the interpreter it set up).
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
apt_install() {
  echo "[setup] installing $* (apt-get)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}

command -v ffmpeg >/dev/null 2>&1 || apt_install ffmpeg

# A system Python that is "externally managed" (PEP 668: Debian 12's python3) refuses pip installs
# outside a virtual environment: use ./.venv instead (made here once, python3-venv from apt if missing).
if [ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ]; then
  PY=$PWD/.venv/bin/python
elif $PY -c 'import os, sys, sysconfig; sys.exit(not (sys.prefix == sys.base_prefix and
    os.path.isfile(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED"))))'; then
  $PY -c "import ensurepip, venv" >/dev/null 2>&1 || apt_install python3-venv
  echo "[setup] $PY is externally managed (PEP 668): creating the virtual environment .venv"
  $PY -m venv .venv
  PY=$PWD/.venv/bin/python
fi
if [ "$PY" = "$PWD/.venv/bin/python" ]; then  # its torchrun, pytest and python3 first on PATH (child processes)
  export VIRTUAL_ENV=$PWD/.venv PATH=$PWD/.venv/bin:$PATH
fi

constraints=constraints-cpu.txt
if $PY -c "import torch" >/dev/null 2>&1; then
  have=$($PY -c "import torch; print(torch.__version__.split('+')[0])")
  if [ "$have" != "2.13.0" ]; then
    echo "[setup] keeping the installed torch $have (constraints without the torch pin)"
    constraints=$(mktemp); grep -v '^torch==' constraints-cpu.txt > "$constraints"
  fi
else
  # The CPU build: from a local wheel where pip's find-links has one, else from PyTorch's public CPU index
  # (on PyPI, torch==2.13.0 is the CUDA build and pulls several GB of CUDA packages).
  probe=$(mktemp -d)
  if $PY -m pip download -q --no-index --no-deps -d "$probe" torch==2.13.0 >/dev/null 2>&1; then
    echo "[setup] installing torch==2.13.0 (CPU wheel, local)"
    $PY -m pip install -q torch==2.13.0
  else
    echo "[setup] installing torch==2.13.0 (CPU wheel from ${TORCH_CPU_INDEX:=https://download.pytorch.org/whl/cpu})"
    $PY -m pip install -q --index-url "$TORCH_CPU_INDEX" torch==2.13.0
  fi
  rm -rf "$probe"
fi

# The distribution's metadata, not `import data_shards` (which works from the repo root uninstalled).
if ! $PY -c "import importlib.metadata as m; m.version('videoqa-reasoning'); import torchcodec, deepspeed, webdataset, transformers, pytest, pytest_timeout, av" >/dev/null 2>&1 \
   || [ "${FORCE_INSTALL:-0}" = 1 ]; then
  echo "[setup] pip install -e '.[dev]' with $constraints"
  $PY -m pip install -q -c "$constraints" -e ".[dev]"
fi
echo "[setup] ready: $($PY -c 'import torch, torchcodec, deepspeed; print("torch", torch.__version__, "torchcodec", torchcodec.__version__, "deepspeed", deepspeed.__version__)' 2>/dev/null)"
