"""``data_shards.common.distenv.exit_process``: how a command's process ends after a distributed run.

Each case is a real child process. After it joined a (gloo, one rank) process group it must
leave with the code asked for, with its buffered stdout written, its ``atexit`` handlers run and
its DataLoader worker processes gone; a process that never joined a group exits the usual way.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO

CHILD = r"""
import atexit, os, sys
from pathlib import Path
import torch
import torch.distributed as dist
from data_shards.common.distenv import exit_process, shutdown

out = Path(sys.argv[1])
join = sys.argv[2] == "join"
atexit.register(lambda: (out / "atexit-ran").write_text("yes"))


class Pids(torch.utils.data.Dataset):
    def __len__(self):
        return 100

    def __getitem__(self, i):
        return os.getpid()


loader = iter(torch.utils.data.DataLoader(Pids(), num_workers=1, persistent_workers=True))
(out / "worker-pid").write_text(str(int(next(loader))))  # the worker is alive and has more to give
if join:
    dist.init_process_group("gloo", init_method=f"file://{out}/pg", rank=0, world_size=1)
    dist.all_reduce(torch.ones(2))
    shutdown()
print("buffered line, never flushed by hand")  # stdout is a pipe: block-buffered
exit_process(3)
"""


def _gone(pid: int, wait_s: float = 10.0) -> bool:
    """True once ``pid`` no longer runs (a zombie waiting for init counts as gone)."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/status").read_text()
        except FileNotFoundError:
            return True
        if "\nState:\tZ" in state:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("join", ["join", "no-group"])
def test_exit_process_keeps_the_exit_code_output_atexit_and_reaps_loader_workers(tmp_path, join):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path), join], env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "buffered line, never flushed by hand" in proc.stdout, proc.stderr[-3000:]
    assert (tmp_path / "atexit-ran").read_text() == "yes"
    worker = int((tmp_path / "worker-pid").read_text())
    assert _gone(worker), f"DataLoader worker {worker} outlived its process"
