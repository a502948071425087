"""The repository's layout and packaging; no top-level module of ours shadows another distribution's."""

from __future__ import annotations

import importlib
import importlib.metadata
import subprocess
import sys

import pytest

from tests.conftest import REPO

PACKAGES = ["train", "vqa_kernels", "data_shards", "reasoning_gen", "eval"]


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


def test_no_module_of_ours_shadows_another_distribution():
    """None of our top-level names is a standard-library module or a module any other installed
    distribution ships (``importlib.metadata.packages_distributions``): our Triton package was called
    ``kernels`` until transformers 5.25 started to require Hugging Face's ``kernels``, which ours then
    overwrote on install and shadowed from the repository root (docs/DESIGN.md, "Import names")."""
    owners = importlib.metadata.packages_distributions()
    for pkg in PACKAGES:
        assert pkg not in sys.stdlib_module_names, pkg
        others = sorted(set(owners.get(pkg, [])) - {"videoqa-reasoning"})
        assert not others, f"our top-level {pkg!r} is also shipped by {others}"
    assert not (REPO / "kernels").exists(), "a top-level kernels/ would shadow Hugging Face's `kernels` package"


def test_transformers_from_the_repository_root():
    """From the repository root (the first entry of sys.path), ``kernels`` is not ours: transformers sees
    Hugging Face's package or none, builds a model, runs it and generates. A fresh interpreter, so caches
    start empty."""
    code = r"""
import importlib.util, pathlib
spec = importlib.util.find_spec("kernels")
assert spec is None or not str(spec.origin or "").startswith(%r), f"kernels resolves into this tree: {spec}"
import torch
from transformers import LlamaConfig, LlamaForCausalLM
cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=97, max_position_embeddings=64)
model = LlamaForCausalLM(cfg).eval()
ids = torch.randint(0, 97, (2, 11))
with torch.no_grad():
    out = model(input_ids=ids, labels=ids)
assert out.logits.shape == (2, 11, 97) and torch.isfinite(out.loss)
gen = model.generate(ids[:, :4], max_new_tokens=3, do_sample=False)
assert gen.shape == (2, 7)
import vqa_kernels
assert vqa_kernels.__file__.startswith(%r)
print("ok", model.config._attn_implementation)
""" % (str(REPO), str(REPO))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("ok")


@pytest.mark.parametrize("pkg", ["data_shards", "reasoning_gen", "vqa_kernels", "eval"])
def test_package_boundaries(pkg):
    """DESIGN.md: data_shards / reasoning_gen / kernels never import train; kernels imports
    nothing of the project; eval imports only train's loading function."""
    forbidden = {"data_shards": ["train"], "reasoning_gen": ["train"],
                 "vqa_kernels": ["train", "data_shards", "reasoning_gen", "eval"], "eval": []}[pkg]
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


def test_check_steps_stay_inside_their_budget(tmp_path):
    """scripts/steps.sh (the time boxes of gpu_checks.sh): a step is cut at what is left of the budget, and
    a step with too little budget left is skipped and logged, so the call ends within its budget."""
    import time

    out = tmp_path / "out"
    out.mkdir()
    script = (f"OUT={out} STEPS_BUDGET_S=6 STEPS_MIN_S=2; source {REPO / 'scripts' / 'steps.sh'}\n"
              "step quick 100 sleep 1\nstep long 100 sleep 30\nstep late 100 true\nexit $status\n")
    t = time.monotonic()
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
    took = time.monotonic() - t
    assert proc.returncode == 1 and took < 9, (proc.returncode, took, proc.stdout, proc.stderr)
    rows = [line.split(",") for line in (out / "steps.csv").read_text().splitlines()[1:]]
    assert [(r[0], r[3]) for r in rows] == [("quick", "0"), ("long", "124"), ("late", "skipped")], rows
    assert int(rows[1][1]) <= 5, f"the long step was not cut to the budget left: {rows[1]}"
    assert "skipped" in (out / "late.log").read_text()
