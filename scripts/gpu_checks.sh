#!/usr/bin/env bash
# The GPU checks of the kernels issue (and the 1B trainer bench when its packages are there), as
# ONE command for a lent H100/H200 (the `device` tool: at most 10 minutes a command). The steps run in
# order of importance and the whole call stops within GPU_CHECKS_BUDGET_S (570 s): a step that would start
# without budget is skipped and logged (exit 1). Each step's time is in $OUT/steps.csv. Run from the
# repository root:
#
#   bash scripts/gpu_checks.sh            # writes logs and CSV rows under ${OUT:-gpu_out}/
#   VQA_COMMIT=$(git rev-parse --short HEAD) WHEELS=.whl bash scripts/gpu_checks.sh   # on the device tool
#
# Needs: python3 with CUDA torch, triton and pytest (the device image has them). Optional (VLLM_MODEL: step 5):
#   - liger-kernel, for the Liger baseline: pure Python, so fetch it here and carry it, e.g.
#       python3 -m pip download --no-deps -d .whl liger-kernel     (then carry .whl and set WHEELS=.whl)
#   - deepspeed + webdataset + torchcodec + FFmpeg, for `train.bench` on configs/bench_1b_gpu.yaml;
#     without them that step is skipped and says so.
# Afterwards: copy the CSV rows from $OUT/kernels.csv (and train.csv) into docs/bench/ and the
# tables into docs/BENCHMARKS.md (GPU sections), with the device name and the commit.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
unset TRITON_INTERPRET

if [ -n "${WHEELS:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site "$WHEELS"/*.whl \
    || { echo "gpu_checks: installing the carried wheels from $WHEELS failed" >&2; exit 2; }
  export PYTHONPATH=/tmp/site
fi
if ! python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_checks: no CUDA device visible to torch; these checks need a GPU" >&2
  exit 2
fi
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"
# the device tool's copy carries the last landed .git with this tree as uncommitted changes: pass
# VQA_COMMIT=<sha> there (the CSV rows carry it instead of git's answer)
echo "commit ${VQA_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}" | tee -a "$OUT/gpu.txt"
# what later steps (and issues) may rely on: flash-attn, FFmpeg's libraries for torchcodec, the trainer's packages
python3 - <<'PY' 2>&1 | tee -a "$OUT/gpu.txt"
import ctypes.util, importlib.util
for mod in ("flash_attn", "liger_kernel", "deepspeed", "webdataset", "torchcodec", "transformers"):
    print(f"{mod}: {'importable' if importlib.util.find_spec(mod) else 'missing'}")
print("libavcodec:", ctypes.util.find_library("avcodec") or "missing")
PY

# every step is time-boxed so that the whole call ends within GPU_CHECKS_BUDGET_S (default 570 s: one
# device command may run 10 minutes); steps left without budget are logged as skipped (exit 1)
STEPS_BUDGET_S=${GPU_CHECKS_BUDGET_S:-570}
source scripts/steps.sh

# 1. Numerics of the compiled kernels (CUDA tests are skipped on CPU machines): multi-block
#    rows, int64 offsets past 2**31 elements, the fused op at a real vocabulary.
step pytest_gpu 150 python3 -m pytest -q -p no:cacheprovider -m gpu tests/kernels/test_gpu.py
# 2. The issue's targets at (16k tokens, H 4096, V 151,936) bf16: CE full vs copy bandwidth and
#    vs Liger; FLCE peak memory vs eager and speed vs Liger.
step bench_ce 150 python3 -m vqa_kernels.bench --kernels ce --shapes 16384x4096x151936 --csv "$OUT/kernels.csv"
# 2b. The forward kernel's register spills (issue 24): the same CE at every BLOCK_V the fix could choose,
#     at V = 32000 (one block at 32768: spills in the compile report) and V = 151936 (the blocked loop).
step bench_ce_blocks 90 python3 -m vqa_kernels.bench --kernels ce --providers ours-triton --modes forward,full \
  --block-v 4096,8192,16384,32768 --shapes 16384x4096x32000,16384x4096x151936 --csv "$OUT/kernels.csv"
step bench_flce 180 python3 -m vqa_kernels.bench --kernels flce --shapes 16384x4096x151936 --csv "$OUT/kernels.csv"
# 3. The trainer on a ~1B configuration (MFU target >= 45 %), when its packages are importable.
if python3 -c "import deepspeed, webdataset, torchcodec" 2>/dev/null; then
  shards=$OUT/shards
  step synth 60 python3 -m data_shards synth --out "$OUT/synth" --videos 32 --seed 0 --jobs 8
  step write 30 python3 -m data_shards write --records "$OUT/synth/records.jsonl" --out "$shards/train-%06d.tar" --max-count 8
  step train_bench 240 python3 -m train.bench --config configs/bench_1b_gpu.yaml --steps 30 --csv "$OUT/train.csv" \
    "--data.urls=$shards/train-{000000..000003}.tar"
  # 4. Packing (issues 12, 23): the flash-attn varlen tests (assembled, hf_vlm), then padded vs packed on the 1B
  #    configuration with the demo's data (synthetic videos + the synthetic teacher's refined reasoning).
  step pytest_packing_gpu 120 python3 -m pytest -q -p no:cacheprovider -m gpu tests/train/test_packing.py \
    tests/train/test_hf_packing.py
  step packing_data 120 python3 scripts/packing_bench_data.py --out "$OUT/packdemo" --train-videos 32
  step packing_bench 300 python3 -m train.bench --compare-packing --config configs/bench_1b_gpu.yaml --steps 20 \
    --csv "$OUT/packing.csv" "--data.urls=$OUT/packdemo/shards/train/train-{000000..000003}.tar" \
    "--data.reasoning=[\"$OUT/packdemo/reasoning/t33_refined.jsonl\"]" --task.reasoning_source=refined \
    --data.max_tokens_per_row=2048
  # 4b. Sequence parallel (issue 23): activation memory per rank, sp 1 vs 2, on one long-video sample (needs 2 GPUs:
  #     two NCCL ranks cannot share one device)
  if [ "$(nvidia-smi -L 2>/dev/null | wc -l)" -ge 2 ]; then
    step sp_memory 300 python3 -m torch.distributed.run --nproc_per_node 2 -m train.bench.sp_memory \
      --config configs/bench_1b_gpu.yaml --frames 192 --task.max_prompt_len=3900 --csv "$OUT/sp_memory.csv"
  else
    echo "== sp_memory: skipped (one GPU: sequence parallel needs 2)" | tee "$OUT/sp_memory.log"
  fi
else
  echo "== train_bench: skipped (deepspeed, webdataset or torchcodec not importable here)" | tee "$OUT/train_bench.log"
fi
# 5. The vLLM teacher (issue 25), when vllm is importable and VLLM_MODEL names a small local video/image-text
#    model folder (nothing is downloaded): one process, tensor_parallel_size 1, the synthetic shards of step 3.
if [ -n "${VLLM_MODEL:-}" ] && [ -d "$OUT/shards" ] && python3 -c "import vllm" 2>/dev/null; then
  step vllm_teacher 240 python3 -m reasoning_gen generate --shards "$OUT/shards/train-{000000..000003}.tar" \
    --backend vllm --model "$VLLM_MODEL" --opt tensor_parallel_size=1 --opt max_new_tokens=64 \
    --records "$OUT/synth/records.jsonl" --out "$OUT/vllm_teacher" --no-progress
else
  echo "== vllm_teacher: skipped (needs vllm importable, VLLM_MODEL=<local model folder> and step 3's shards)" \
    | tee "$OUT/vllm_teacher.log"
fi
exit $status
