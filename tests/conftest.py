"""Shared test fixtures: an autouse seed, paths to the real annotation excerpts, mismatch printing."""

from __future__ import annotations

import os
import random
import shutil
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Small real excerpts of public annotation files, committed under tests/fixtures (nothing outside the
# repository is read).
_FIXTURE_DIRS = [REPO / "tests" / "fixtures" / "annotations"]


@pytest.fixture(autouse=True)
def _seed():
    import numpy as np
    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def annotations_dir() -> Path:
    for d in _FIXTURE_DIRS:
        if d.is_dir():
            return d
    pytest.fail(f"annotation fixtures not found in any of {_FIXTURE_DIRS}")


def has_ffmpeg() -> bool:
    return shutil.which("ffmpeg") is not None


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


_START = time.monotonic()


def pytest_sessionstart(session):
    """Free the /dev/shm files that DeepSpeed runs from before train.dist.release_shm_workspace left (~69 MB
    per rank per run; enough of them exhaust the machine's memory and stall everything after)."""
    try:
        from train.dist import sweep_stale_shm_workspaces
    except ModuleNotFoundError as e:  # a GPU image without DeepSpeed (the kernel tests run there): no files
        if e.name != "deepspeed":
            raise
        return
    removed = sweep_stale_shm_workspaces()
    if removed:
        print(f"removed {len(removed)} stale DeepSpeed shm workspaces from /dev/shm")


def pytest_runtest_setup(item):
    """With ``TEST_TIME_BUDGET_S`` set (``.ci/run`` sets it so that CI stays under 30 minutes), a slow test
    that would start after the budget is spent is skipped, and says so, instead of overrunning CI."""
    budget = os.environ.get("TEST_TIME_BUDGET_S")
    if budget and "slow" in item.keywords and time.monotonic() - _START > float(budget):
        pytest.skip(f"slow test over the test-time budget (TEST_TIME_BUDGET_S={budget} s spent)")


def pytest_collection_modifyitems(config, items):
    if has_cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def assert_close_report(actual, expected, *, rtol: float, atol: float, name: str = "tensor") -> None:
    """torch.testing.assert_close, but print the first mismatching elements with their indices."""
    import torch

    actual = actual.detach().float().cpu()
    expected = expected.detach().float().cpu()
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    bad = ~torch.isclose(actual, expected, rtol=rtol, atol=atol, equal_nan=False)
    if bad.any():
        idx = bad.nonzero()[:5].tolist()
        rows = [f"  {tuple(i)}: got {actual[tuple(i)].item():.6g}, want {expected[tuple(i)].item():.6g}" for i in idx]
        raise AssertionError(f"{name}: {int(bad.sum())} of {bad.numel()} elements differ (rtol={rtol}, atol={atol}); "
                             f"first ones:\n" + "\n".join(rows))


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
