#!/usr/bin/env bash
# The demo: the whole method on the synthetic temporal benchmark (shot scenes), on CPU (2 ranks):
# data -> teacher reasoning + refinement -> stage-1 caption alignment -> QA-only and MTL(refined) with the
# three reference rows (text only, last frame only, order-invariant), scored on val and test:
#   bash scripts/demo.sh            -> demo_out/report/ (val) and demo_out/report/test/ (measured time: README)
#   bash scripts/demo.sh --full     the seed-level study: 3 seeds x (QA-only, MTL(refined), MTL(raw), STL),
#                                   the null control, the references, the vCoT study, beta and teacher sweeps
#                                   -> demo_out/full/report/ (hours here; --only RUN... picks runs)
#   bash scripts/demo.sh --smoke    the minutes-long CI version
set -euo pipefail
source "$(dirname "$0")/setup_cpu.sh"   # sets PY (a .venv on an externally managed Python) and cd's to the repo
exec "$PY" -m eval demo "$@"
