"""Fixtures for the kernel tests: the backend to run under, tolerances, poisoned buffers.

The Triton kernels run on CPU under the Triton interpreter.  TRITON_INTERPRET=1 is set only for
the duration of each test that asks for it (monkeypatch), never for the whole pytest process, so
the other packages' tests keep the fast chunked-torch path.  That works whatever imported triton
first: ``vqa_kernels._backend.kernel_for`` decorates our kernels in the mode a call needs, and the
kernels use no interpreter-sensitive triton library function (see vqa_kernels/cross_entropy.py).
"""

from __future__ import annotations

import pytest
import torch

import vqa_kernels

# Tolerance per dtype for values and gradients compared with the fp32 eager reference.  bf16
# logits/gradients carry 8 bits of mantissa (~4e-3 relative); sums over rows add a little more.
TOL = {
    torch.float32: {"rtol": 1e-5, "atol": 1e-5},
    torch.bfloat16: {"rtol": 2e-2, "atol": 2e-2},
}

# Backends the tests run: the Triton kernel (interpreted on CPU, compiled when CUDA is there) and
# the chunked torch path that CPU training uses.
BACKENDS = ["triton", "torch-chunked"]


def device_for(backend_name: str) -> str:
    return "cuda" if backend_name == "triton" and torch.cuda.is_available() else "cpu"


@pytest.fixture(params=BACKENDS)
def backend_device(request, monkeypatch) -> tuple[str, str]:
    """(expected vqa_kernels.backend() name, device) with TRITON_INTERPRET set to match."""
    name = request.param
    dev = device_for(name)
    if name == "triton" and dev == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        expected = "triton-interpret"
    else:
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
        expected = "triton" if dev == "cuda" else "torch-chunked"
    assert vqa_kernels.backend(dev) == expected, f"backend for {dev} is {vqa_kernels.backend(dev)}"
    return expected, dev


@pytest.fixture
def interpret(monkeypatch) -> str:
    """Run the Triton kernels (interpreted on CPU); returns the device to put tensors on."""
    if torch.cuda.is_available():
        return "cuda"
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    return "cpu"


def poisoned(shape, dtype, device) -> torch.Tensor:
    """A NaN-filled buffer: any element a kernel forgets to write stays NaN and fails the test."""
    return torch.full(shape, float("nan"), dtype=dtype, device=device)


def make_rows(n: int, v: int, dtype, device, *, scale: float = 3.0, ignore_every: int = 5,
              zero_weight_rows=(1,), ignore_index: int = -100):
    """Fresh random logits [n, v], targets with some ignore_index rows, weights with some zeros."""
    logits = (torch.randn(n, v) * scale).to(dtype).to(device)
    target = torch.randint(0, v, (n,))
    if ignore_every:
        target[::ignore_every] = ignore_index
    weight = torch.rand(n) * 2
    for r in zero_weight_rows:
        if r < n:
            weight[r] = 0.0
    return logits, target.to(device), weight.to(device)
