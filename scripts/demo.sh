#!/usr/bin/env bash
# The demo: the whole method on the synthetic dataset (shot scenes), on CPU (2 ranks), 9-13 minutes on 2 cores:
# data -> teacher reasoning + refinement -> stage-1 caption alignment -> three runs from it:
#   bash scripts/demo.sh            QA-only, MTL(refined), MTL(raw) -> demo_out/report/ (STL: --full)
#   bash scripts/demo.sh --full     3 seeds x 4 settings + beta and teacher sweeps, paired comparisons
#                                   (36 runs, 106 min here) -> demo_out/full/report/
#   bash scripts/demo.sh --smoke    the minutes-long CI version
set -euo pipefail
bash "$(dirname "$0")/setup_cpu.sh"
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" -m eval demo "$@"
