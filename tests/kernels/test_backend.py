"""Backend choice (logged once, queryable), one autograd Function per op for every backend,
import-order independence of the interpreter path, and the attention implementation choice."""

from __future__ import annotations

import ast
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import vqa_kernels
from vqa_kernels import _backend
from vqa_kernels.attention import select_attention

REPO = Path(__file__).resolve().parents[2]


def test_backend_choice_is_logged_once(monkeypatch, caplog):
    monkeypatch.setattr(_backend, "_logged", set())
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with caplog.at_level(logging.INFO, logger="vqa_kernels"):
        assert vqa_kernels.backend("cpu") == "torch-chunked"
        assert vqa_kernels.backend("cpu") == "torch-chunked"
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        assert vqa_kernels.backend("cpu") == "triton-interpret"
        assert vqa_kernels.backend(torch.device("cpu")) == "triton-interpret"
    messages = [r.getMessage() for r in caplog.records if r.name == "vqa_kernels"]
    assert messages == [
        "kernels backend: torch-chunked (CPU tensors without TRITON_INTERPRET=1)",
        f"kernels backend: triton-interpret (CPU tensors with TRITON_INTERPRET=1 "
        f"(triton {_backend.triton_version()} interpreter))",
    ]
    assert _backend.choose("cuda")[0] == "triton"  # CUDA tensors always take the compiled kernels


SCRIPT = """
import os, sys, torch
{pre}
import vqa_kernels
from vqa_kernels.reference import weighted_cross_entropy_eager
os.environ["TRITON_INTERPRET"] = "1"
import triton.language as tl
print("stdlib", type(tl.standard.sum).__name__)
assert vqa_kernels.backend("cpu") == "triton-interpret"
torch.manual_seed(0)
x = torch.randn(6, 300, requires_grad=True)
y = torch.randint(0, 300, (6,)); w = torch.rand(6)
loss = vqa_kernels.weighted_cross_entropy(x, y, w); loss.backward()
x2 = x.detach().clone().requires_grad_(True)
ref = weighted_cross_entropy_eager(x2, y, w); ref.backward()
torch.testing.assert_close(loss, ref); torch.testing.assert_close(x.grad, x2.grad)
print("ok")
"""


@pytest.mark.parametrize("pre,stdlib", [
    ("import triton  # compiled mode: imported before TRITON_INTERPRET is set", "JITFunction"),
    ("os.environ['TRITON_INTERPRET'] = '1'; import triton", "InterpretedFunction"),
])
def test_interpreter_works_whatever_imported_triton_first(pre, stdlib):
    env = {k: v for k, v in __import__("os").environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(SCRIPT.format(pre=pre))], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"stdlib {stdlib}" in proc.stdout and "ok" in proc.stdout


def test_select_attention_cpu_and_unavailable_cuda():
    impl, reason = select_attention("cpu")
    assert impl == "sdpa" and "cpu" in reason
    if not torch.cuda.is_available():
        impl, reason = select_attention("cuda")
        assert impl == "sdpa" and "is_available() is False" in reason


@pytest.fixture
def isolated_flash_attn():
    """Whatever this test imports as flash_attn is removed from sys.modules afterwards."""
    saved = {k: v for k, v in sys.modules.items() if k.split(".")[0] == "flash_attn"}
    yield
    for k in [k for k in sys.modules if k.split(".")[0] == "flash_attn"]:
        del sys.modules[k]
    sys.modules.update(saved)


def test_select_attention_flash_attn_states(monkeypatch, tmp_path, isolated_flash_attn):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    sys.modules.pop("flash_attn", None)
    # Not installed: an empty sys.path entry cannot provide it.
    if _importable("flash_attn"):
        pytest.skip("flash_attn is really installed here")
    assert select_attention("cuda:0") == ("sdpa", "flash_attn not installed")
    # Installed but broken (a wheel built for another torch/CUDA fails at import).
    broken = tmp_path / "broken" / "flash_attn"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise ImportError('undefined symbol: _ZN3c10')\n")
    monkeypatch.syspath_prepend(str(broken.parent))
    impl, reason = select_attention(torch.device("cuda"))
    assert impl == "sdpa" and reason.startswith("flash_attn not importable") and "undefined symbol" in reason
    # Importable: a package that imports cleanly.
    sys.modules.pop("flash_attn", None)
    good = tmp_path / "good" / "flash_attn"
    good.mkdir(parents=True)
    (good / "__init__.py").write_text("__version__ = '2.8.3'\n")
    monkeypatch.syspath_prepend(str(good.parent))
    assert select_attention("cuda") == ("flash_attention_2", "flash_attn 2.8.3 importable on CUDA")


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def test_one_autograd_function_per_op_whatever_the_backend(backend_device):
    """Both backends run the same autograd Function (vqa_kernels.autograd); only their RowOps differ."""
    _, dev = backend_device
    x = torch.randn(3, 7, device=dev, requires_grad=True)
    y, w = torch.tensor([1, 2, -100], device=dev), torch.ones(3, device=dev)
    assert type(vqa_kernels.weighted_cross_entropy(x, y, w).grad_fn).__name__ == "WeightedCrossEntropyFunctionBackward"
    h = torch.randn(3, 4, device=dev, requires_grad=True)
    lm = torch.randn(7, 4, device=dev, requires_grad=True)
    loss = vqa_kernels.fused_linear_weighted_cross_entropy(h, lm, y, w)
    assert type(loss.grad_fn).__name__ == "FusedLinearWeightedCrossEntropyFunctionBackward"


def test_autograd_functions_are_defined_once():
    """No backend keeps its own copy of a Function body: every torch.autograd.Function of vqa_kernels/
    lives in vqa_kernels/autograd.py."""
    found = []
    for path in sorted((REPO / "vqa_kernels").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(ast.unparse(b).endswith("autograd.Function")
                                                      for b in node.bases):
                found.append(f"{path.name}:{node.name}")
    assert found == ["autograd.py:WeightedCrossEntropyFunction",
                     "autograd.py:FusedLinearWeightedCrossEntropyFunction"], found
