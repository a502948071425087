#!/usr/bin/env bash
# The demo: the whole method on the synthetic dataset, on CPU (2 ranks), about 10 minutes.
#   bash scripts/demo.sh            four runs: QA-only, MTL(refined), MTL(raw), STL -> demo_out/report/
#   bash scripts/demo.sh --full     3 seeds + beta sweep + teacher-accuracy sweep -> demo_out/full/report/
#   bash scripts/demo.sh --smoke    the minutes-long CI version
set -euo pipefail
bash "$(dirname "$0")/setup_cpu.sh"
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" -m eval demo "$@"
