"""The repository's layout and packaging; our top-level ``kernels`` next to transformers."""

from __future__ import annotations

import importlib
import importlib.metadata
import subprocess
import sys

import pytest

from tests.conftest import REPO

PACKAGES = ["train", "kernels", "data_shards", "reasoning_gen", "eval"]


def test_layout_and_imports():
    for pkg in PACKAGES:
        assert (REPO / pkg / "__init__.py").is_file(), pkg
        mod = importlib.import_module(pkg)
        assert mod.__file__.startswith(str(REPO)), f"{pkg} imported from {mod.__file__}, not this tree"
    assert (REPO / "setup.py").is_file() and (REPO / "tests").is_dir()


def test_installed_as_distribution():
    """`pip install -e .` registered the distribution that owns the five packages."""
    dist = importlib.metadata.distribution("videoqa-reasoning")
    top = (dist.read_text("top_level.txt") or "").split()
    assert not top or set(PACKAGES) <= set(top), top


def test_transformers_does_not_take_our_kernels_for_the_hub_package():
    """transformers looks for a package named `kernels` (Hugging Face's kernel hub). It finds our
    tree and reads our distribution's version; it must judge it not viable, so that it never
    calls `kernels.get_kernel` on us. Runs in a fresh interpreter so caches start empty."""
    code = r"""
import torch
from transformers.utils import import_utils as iu
from transformers import LlamaConfig, LlamaForCausalLM
assert not iu.is_kernels_available(), "transformers thinks our `kernels` is the HF kernels package"
from packaging import version
ours = version.parse(__import__("importlib.metadata").metadata.version("videoqa-reasoning"))
lo, hi = version.parse(iu.KERNELS_MIN_VERSION), version.parse(iu.KERNELS_MAX_VERSION)
assert not (lo <= ours < hi), f"project version {ours} falls in HF kernels' range [{lo}, {hi})"
cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=97, max_position_embeddings=64)
model = LlamaForCausalLM(cfg).eval()
ids = torch.randint(0, 97, (2, 11))
with torch.no_grad():
    out = model(input_ids=ids, labels=ids)
assert out.logits.shape == (2, 11, 97) and torch.isfinite(out.loss)
gen = model.generate(ids[:, :4], max_new_tokens=3, do_sample=False)
assert gen.shape == (2, 7)
import kernels
assert kernels.__file__.startswith(%r)
print("ok", model.config._attn_implementation)
""" % str(REPO)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("ok")


@pytest.mark.parametrize("pkg", ["data_shards", "reasoning_gen", "kernels", "eval"])
def test_package_boundaries(pkg):
    """DESIGN.md: data_shards / reasoning_gen / kernels never import train; kernels imports
    nothing of the project; eval imports only train's loading function."""
    forbidden = {"data_shards": ["train"], "reasoning_gen": ["train"],
                 "kernels": ["train", "data_shards", "reasoning_gen", "eval"], "eval": []}[pkg]
    for path in (REPO / pkg).rglob("*.py"):
        text = path.read_text()
        for other in forbidden:
            assert f"import {other}" not in text and f"from {other}" not in text, f"{path} imports {other}"
        if pkg == "eval":
            for line in text.splitlines():
                s = line.strip()
                if s.startswith(("from train", "import train")):
                    assert s.startswith("from train.export import"), f"{path}: eval imports train internals: {s}"


def test_gpu_check_script_parses_and_refuses_without_a_gpu(tmp_path):
    """scripts/gpu_checks.sh is the one command a session with a lent GPU runs; here it must at
    least parse, and without CUDA stop at once with a clear message (exit 2) instead of half-running."""
    import os

    import torch

    script = str(REPO / "scripts" / "gpu_checks.sh")
    assert subprocess.run(["bash", "-n", script], capture_output=True).returncode == 0
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the script would run the real checks")
    proc = subprocess.run(["bash", script], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, OUT=str(tmp_path / "out")))
    assert proc.returncode == 2 and "no CUDA device" in proc.stderr, proc.stderr
