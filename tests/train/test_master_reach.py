"""A rank that cannot reach the master fails fast and says where it looked (issue 22, part 4); after a failed
collective, the heartbeat census names the lost ranks (part 5; the two-host run is tests/train/test_multinode.py).

Real sockets throughout: a listening master, a port nobody listens on (refused), a master whose accept
queue is full (connections neither accepted nor refused: what a wrong host behind a firewall looks
like), and ``python -m train`` in a network namespace of its own (``unshare -n``), where the master's
address is really unreachable.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time

import pytest

from tests.train.engine_helpers import REPO, TINY, env_for_launch, free_port, make_shards, tiny_overrides
from train.dist import MasterUnreachable, ParallelDims, master_timeout, wait_for_master


def _dims(rank: int = 1, world: int = 2) -> ParallelDims:
    return ParallelDims(rank, world, rank, "torchrun", 1, 1)


def _env(port: int, addr: str = "127.0.0.1", **extra: str) -> dict:
    return {"MASTER_ADDR": addr, "MASTER_PORT": str(port), **extra}


def test_a_listening_master_is_reached_at_once():
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(8)
        took = wait_for_master(_dims(), 5.0, _env(srv.getsockname()[1]))
    assert took < 1.0


def test_a_refused_port_fails_after_the_timeout_naming_address_port_and_variables():
    port = free_port()  # nothing listens there
    start = time.monotonic()
    with pytest.raises(MasterUnreachable) as err:
        wait_for_master(_dims(), 1.5, _env(port, GLOO_SOCKET_IFNAME="eth7"))
    took = time.monotonic() - start
    assert 1.4 < took < 4.0, took  # retried until the timeout, not given up at the first refusal
    msg = str(err.value)
    for needle in (f"127.0.0.1:{port}", "MASTER_ADDR='127.0.0.1'", f"MASTER_PORT={port}",
                   "GLOO_SOCKET_IFNAME='eth7'", "NCCL_SOCKET_IFNAME", "ConnectionRefusedError", "rank 1 of 2"):
        assert needle in msg, msg


def test_a_master_that_never_answers_fails_after_the_timeout():
    """Accept queue full (backlog 0 plus one pending connection): further SYNs are dropped, so a connect
    neither succeeds nor is refused - the silent hang of the issue, bounded by the timeout."""
    with socket.socket() as srv, socket.socket() as first:
        srv.bind(("127.0.0.1", 0))
        srv.listen(0)
        port = srv.getsockname()[1]
        first.connect(("127.0.0.1", port))  # fills the queue; never accepted
        start = time.monotonic()
        with pytest.raises(MasterUnreachable, match=r"TimeoutError|timed out"):
            wait_for_master(_dims(), 2.0, _env(port))
        assert 1.9 < time.monotonic() - start < 5.0


def test_the_store_host_does_not_wait_for_itself():
    port = free_port()
    assert wait_for_master(_dims(rank=0), 5.0, _env(port)) == 0.0  # rank 0 serves the store itself
    assert wait_for_master(_dims(rank=0, world=1), 5.0, _env(port)) == 0.0
    # under torchrun the agent serves it, so rank 0 is a client like the others
    with pytest.raises(MasterUnreachable):
        wait_for_master(_dims(rank=0), 0.5, _env(port, TORCHELASTIC_USE_AGENT_STORE="True"))


def test_the_timeout_comes_from_the_environment_when_set():
    assert master_timeout(120.0, {}) == 120.0
    assert master_timeout(120.0, {"VQA_MASTER_TIMEOUT_S": "7.5"}) == 7.5
    for bad in ("soon", "0", "-3"):
        with pytest.raises(ValueError, match="VQA_MASTER_TIMEOUT_S"):
            master_timeout(120.0, {"VQA_MASTER_TIMEOUT_S": bad})


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare (util-linux)")
def test_train_on_a_host_that_cannot_reach_the_master_exits_4_in_one_line(tmp_path):
    """``python -m train`` as rank 1 of 2 in its own network namespace: the master's address is unreachable
    (ENETUNREACH on every try). Exit 4 within the timeout plus start-up, one ``error:`` line naming the
    address, the port and the variables, no traceback, nothing written."""
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a network namespace here (not root?): {probe.stderr.strip()}")
    shards = make_shards(tmp_path / "data", videos=4, shards=2)
    run_dir = tmp_path / "runs" / "unreachable"
    env = {**env_for_launch(), "RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
           "MASTER_ADDR": "10.11.12.13", "MASTER_PORT": "29871", "VQA_MASTER_TIMEOUT_S": "4"}
    start = time.monotonic()
    proc = subprocess.run(["unshare", "-n", sys.executable, "-m", "train", "--config", str(TINY),
                           *tiny_overrides(shards, run_dir)], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=180)
    took = time.monotonic() - start
    assert proc.returncode == 4, f"exit {proc.returncode}\n{proc.stderr[-4000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1, proc.stderr[-4000:]
    for needle in ("10.11.12.13:29871", "MASTER_ADDR='10.11.12.13'", "GLOO_SOCKET_IFNAME", "within 4 s",
                   "Network is unreachable"):
        assert needle in errors[0], errors[0]
    assert took < 4 + 90, took  # the timeout plus imports and config checks, not the 30-minute default
    assert not (run_dir / "checkpoints").exists()


def test_the_heartbeat_tells_lost_ranks_from_blocked_ones():
    """Two ranks' heartbeats on a real store; rank 1's stops (its process would be gone): the census names
    rank 1 and its host, and the master's node when the store itself is gone."""
    from datetime import timedelta

    import torch.distributed as dist

    from train.dist import Heartbeat, lost_ranks_report

    port = free_port()
    server = dist.TCPStore("127.0.0.1", port, is_master=True, timeout=timedelta(seconds=10), wait_for_workers=False)
    env = _env(port, TORCHELASTIC_RUN_ID="t1")
    beats = [Heartbeat(_dims(rank=r), interval_s=0.2, env=env) for r in (0, 1)]
    time.sleep(0.5)
    beats[1].stop()
    table = [{"rank": 0, "host": "node-a", "pid": 1}, {"rank": 1, "host": "node-b", "pid": 2}]
    err = RuntimeError("Connection closed by peer [10.0.0.2]:1234")
    line = lost_ranks_report(_dims(rank=0), table, err, beats[0], env)
    assert line.startswith("lost ranks 1 on host node-b (their heartbeat stopped; a collective failed: Connection "
                           "closed by peer"), line
    beats[0].stop()
    del server  # the store's host is gone
    time.sleep(0.3)
    line = lost_ranks_report(_dims(rank=1), table, err, beats[0], env)
    assert line.startswith("lost the master's node node-a (ranks 0; its rendezvous store"), line


def test_only_a_lost_peer_counts_as_a_communication_failure():
    from train.dist import is_comm_failure

    assert is_comm_failure(RuntimeError("[gloo/transport/tcp/pair.cc:537] Read error [10.77.1.2]:23256: Connection "
                                        "reset by peer. This is typically caused by a remote worker"))
    assert is_comm_failure(RuntimeError("[pair.cc:553] Connection closed by peer [10.77.1.1]:57764"))
    assert not is_comm_failure(RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x8 and 9x2)"))
    assert not is_comm_failure(ValueError("Connection closed by peer"))  # only errors the collectives raise
