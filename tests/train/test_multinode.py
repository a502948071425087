"""Multi-node training on two real hosts made on this machine (issue 22, parts 1, 2, 3, 5 and 6).

Two network namespaces joined by a veth pair, each with its own address and hostname (``tests/train/hosts.py``),
sharing the file system as cluster nodes share NFS. ``torchrun --nnodes 2 --nproc_per_node 2`` with c10d
rendezvous at host A's address is started once on each host, as on a cluster; torchrun hands the ranks
MASTER_ADDR = host A's hostname, which each host resolves through its own /etc/hosts.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.train.engine_helpers import (
    GOLDEN,
    REPO,
    TINY,
    env_for_launch,
    free_port,
    make_shards,
    run_torchrun,
    tiny_overrides,
)
from tests.train.hosts import (
    IFNAME,
    Host,
    cannot_make_hosts,
    cannot_slurm,
    cannot_ssh,
    slurm_cluster,
    sshd_on,
    two_hosts,
)
from train.metrics import read_metrics

pytestmark = [pytest.mark.slow, pytest.mark.multinode,
              pytest.mark.skipif(cannot_make_hosts() is not None, reason=str(cannot_make_hosts()))]
STEPS, EVERY = 8, 4


@pytest.fixture(scope="module")
def hosts():
    with two_hosts() as pair:
        yield pair


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    return make_shards(tmp_path_factory.mktemp("multinode_shards"))


def torchrun_on_hosts_cmd(hosts: tuple[Host, Host], nproc: int, args: list[str]) -> list[list[str]]:
    """The same torchrun command for both hosts (c10d rendezvous at host A), as a user types it on each node."""
    port, rdzv = free_port(), f"job{free_port()}"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", str(nproc),
           "--rdzv_backend", "c10d", "--rdzv_endpoint", f"{hosts[0].addr}:{port}", "--rdzv_id", rdzv,
           "-m", "train", *args]
    return [h.command(cmd) for h in hosts]


def start_on_hosts(hosts: tuple[Host, Host], nproc: int, args: list[str]) -> list[subprocess.Popen]:
    return [subprocess.Popen(c, cwd=REPO, env=env_for_launch(), text=True, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE) for c in torchrun_on_hosts_cmd(hosts, nproc, args)]


def torchrun_on_hosts(hosts: tuple[Host, Host], nproc: int, args: list[str], timeout: float = 300,
                      ) -> list[subprocess.CompletedProcess]:
    out = []
    for p in start_on_hosts(hosts, nproc, args):
        try:
            stdout, stderr = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            stdout, stderr = p.communicate()
        out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return out


def kill_host(host: Host) -> list[str]:
    """SIGKILL every process on ``host`` (torchrun, its ranks, their loader workers): the node is gone."""
    pids = subprocess.run(["ip", "netns", "pids", host.netns], capture_output=True, text=True).stdout.split()
    for pid in pids:
        subprocess.run(["kill", "-9", pid], capture_output=True)
    return pids


def _ok(procs: list[subprocess.CompletedProcess]) -> None:
    for host, p in zip("AB", procs):
        assert p.returncode == 0, f"host {host}: exit {p.returncode}\n{p.stderr[-5000:]}"


def losses(run_dir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r}


def assert_golden_losses(run_dir: Path, steps: int) -> None:
    """Steps 1..``steps`` of the run are the golden 2-rank run's, within the golden file's tolerance."""
    got, golden = losses(run_dir), json.loads(GOLDEN.read_text())
    assert sorted(got) == list(range(1, steps + 1)), sorted(got)
    tol = golden["tolerance"]
    for step in got:
        assert got[step] == pytest.approx(golden["losses"][step - 1], rel=tol["rtol"], abs=tol["atol"]), (
            step, got, golden["losses"])


@pytest.fixture(scope="module")
def one_host_run(shards, tmp_path_factory) -> Path:
    """The reference: 8 steps of the tiny recipe on 1 host x 4 ranks."""
    ref_dir = tmp_path_factory.mktemp("runs") / "one_host"
    ref = run_torchrun(4, "--config", str(TINY), *tiny_overrides(shards, ref_dir, **{"run.max_steps": STEPS,
                                                                                       "checkpoint.interval_steps": EVERY}))
    assert ref.returncode == 0, ref.stderr[-5000:]
    return ref_dir


def test_two_hosts_train_like_one_host_survive_a_lost_node_and_resume_on_both(hosts, shards, one_host_run, tmp_path):
    """8 steps on 2 hosts x 2 ranks. After the step-4 checkpoint the host without rank 0 is lost (every process
    on it SIGKILLed): the other host's ranks exit non-zero within 2 minutes, each with one line naming the lost
    ranks and their host and the checkpoint to resume from. ``--resume latest`` on both hosts then gives the
    losses of 8 uninterrupted steps on 1 host x 4 ranks; every rank's ZeRO shards land in one checkpoint on
    the shared file system."""
    ref_dir, run_dir = one_host_run, tmp_path / "runs" / "two_hosts"

    args = ["--config", str(TINY), *tiny_overrides(shards, run_dir, **{"run.max_steps": STEPS,
                                                                       "checkpoint.interval_steps": EVERY})]
    ckpt = run_dir / "checkpoints"
    running = start_on_hosts(hosts, 2, args)
    try:  # node loss: every process on the host without rank 0 is killed once the step-4 checkpoint is complete
        deadline = time.time() + 240
        while time.time() < deadline and all(p.poll() is None for p in running):
            if (ckpt / "latest").is_file() and (ckpt / "latest").read_text() == f"global_step{EVERY}":
                break
            time.sleep(0.05)
        assert all(p.poll() is None for p in running), "a host's job ended before it could be killed:\n" + "\n".join(
            p.stderr.read()[-3000:] for p in running if p.poll() is not None)
        table = json.loads((run_dir / "hosts.json").read_text())
        master = next(t["host"] for t in table if t["rank"] == 0)
        lost_i = next(i for i, h in enumerate(hosts) if h.name != master)
        lost_ranks = sorted(t["rank"] for t in table if t["host"] == hosts[lost_i].name)
        assert len(lost_ranks) == 2 and {t["host"] for t in table} == {h.name for h in hosts}, table
        assert kill_host(hosts[lost_i])
        killed_at = time.time()
        survivor = running[1 - lost_i]
        _, stderr = survivor.communicate(timeout=150)
        took = time.time() - killed_at
    finally:
        for h in hosts:
            kill_host(h)
        for p in running:
            p.communicate(timeout=60)
    assert survivor.returncode != 0 and took < 120, (survivor.returncode, took)
    lines = [ln for ln in stderr.splitlines() if ln.startswith("error: rank ")]
    want = f"lost ranks {', '.join(map(str, lost_ranks))} on host {hosts[lost_i].name}"
    assert lines and all(want in ln and f"global_step{EVERY}" in ln and "--resume latest" in ln for ln in lines), (
        want, stderr[-4000:])
    assert (ckpt / "latest").read_text() == f"global_step{EVERY}"
    shards_written = sorted(p.name for p in (ckpt / f"global_step{EVERY}").glob("*optim_states.pt"))
    assert len(shards_written) == 4, shards_written  # ranks 0-3: two from each host
    assert max(losses(run_dir)) < STEPS, "the broken job got to the end"

    procs = torchrun_on_hosts(hosts, 2, [*args, "--resume", "latest"])
    _ok(procs)
    got, want = losses(run_dir), losses(ref_dir)
    assert sorted(got) == list(range(1, STEPS + 1)) == sorted(want)
    for step in want:
        assert got[step] == pytest.approx(want[step], rel=1e-7), (step, got, want)
    assert (ckpt / "latest").read_text() == f"global_step{STEPS}"
    assert "trained 8 steps" in "".join(p.stdout for p in procs)  # rank 0 reports, on whichever host it ran

    # another world size (2 hosts x 1 rank) is refused in one line on every rank, before DeepSpeed
    stamp = {p: p.stat().st_mtime_ns for p in ckpt.rglob("*") if p.is_file()}
    refused = torchrun_on_hosts(hosts, 1, [*args, f"--run.max_steps={STEPS + 4}", "--resume", "latest"])
    for host, p in zip("AB", refused):
        assert p.returncode != 0, f"host {host} resumed a 4-rank checkpoint on 2 ranks"
        errors = [ln for ln in p.stderr.splitlines() if ln.startswith("error: ")]
        assert errors and all("written by 4 ranks" in e and "this job has 2" in e for e in errors), p.stderr[-4000:]
        assert "Traceback" not in p.stderr.split("error: ")[0], p.stderr[-4000:]
    assert stamp == {p: p.stat().st_mtime_ns for p in ckpt.rglob("*") if p.is_file()}


@pytest.mark.skipif(cannot_ssh() is not None, reason=str(cannot_ssh()))
def test_the_deepspeed_launcher_over_ssh_with_a_hostfile(hosts, shards, tmp_path):
    """``deepspeed --hostfile H --master_addr A ...`` on host A, as docs/TRAINING.md says: pdsh over ssh (an
    sshd on each host, a key made here) starts one rank on each host; the first 4 losses are the golden 2-rank
    run's, and the variables the docs tell users to put in ``.deepspeed_env`` reach both ranks (``hosts.json``),
    while the launcher's own environment lacks them."""
    work, run_dir = tmp_path / "launch", tmp_path / "runs" / "ds_launcher"
    work.mkdir()
    (work / "hostfile").write_text(f"{hosts[0].name} slots=1\n{hosts[1].name} slots=1\n")
    ext = env_for_launch()["TORCH_EXTENSIONS_DIR"]
    wanted = {"TORCH_EXTENSIONS_DIR": ext, "GLOO_SOCKET_IFNAME": IFNAME, "OMP_NUM_THREADS": "1",
              "TOKENIZERS_PARALLELISM": "false"}
    (work / ".deepspeed_env").write_text("".join(f"{k}={v}\n" for k, v in wanted.items()))
    launcher = shutil.which("deepspeed") or str(Path(sys.executable).parent / "deepspeed")
    with sshd_on(hosts, tmp_path / "ssh") as ssh_opts:
        env = {k: v for k, v in env_for_launch().items() if k not in wanted}  # only .deepspeed_env can carry them
        env["PDSH_SSH_ARGS_APPEND"] = " ".join(ssh_opts)
        # pdsh hands the arguments to a remote shell: the brace pattern is quoted once more, as the docs say
        overrides = [f"'{o}'" if o.startswith("--data.urls=") else o
                     for o in tiny_overrides(shards, run_dir, **{"run.max_steps": EVERY})]
        cmd = [launcher, "--hostfile", "hostfile", "--master_addr", hosts[0].name, "--master_port", str(free_port()),
               "--no_ssh_check", "--module", "train", "--config", str(TINY), *overrides]
        proc = subprocess.run(hosts[0].command(cmd), cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    assert_golden_losses(run_dir, EVERY)
    table = json.loads((run_dir / "hosts.json").read_text())
    assert sorted(t["rank"] for t in table) == [0, 1]
    assert sorted(t["host"] for t in table) == sorted(h.name for h in hosts), table
    for t in table:
        assert {k: t["env"].get(k) for k in wanted} == wanted, t
        assert t["env"]["MASTER_ADDR"] == hosts[0].name, t


def _wait(what: str, check, timeout: float, every: float = 0.5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = check()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


@contextmanager
def _diagnose(slurm, out: Path):
    """On a failure inside, add what SLURM and the job said."""
    try:
        yield
    except AssertionError as e:
        try:
            queue = slurm.run("squeue", "-o", "%i %T %r %N")
        except RuntimeError as q:
            queue = str(q)
        ctld = (slurm.workdir / "slurmctld.log").read_text()[-2000:] if (slurm.workdir / "slurmctld.log").exists() else ""
        job = out.read_text()[-3000:] if out.exists() else "(no job output)"
        raise AssertionError(f"{e}\nsqueue:\n{queue}\njob output:\n{job}\nslurmctld:\n{ctld}") from None


@pytest.mark.skipif(cannot_slurm() is not None, reason=str(cannot_slurm()))
def test_slurm_sbatch_on_two_nodes_survives_a_requeue_and_ends_like_an_uninterrupted_run(hosts, shards, tmp_path):
    """A throwaway SLURM cluster (munged, slurmctld on host A, one slurmd per host). ``sbatch
    scripts/slurm_train.sbatch`` runs the tiny recipe on both nodes (one torchrun per node, one rank each).
    ``scontrol requeue`` preempts it mid-run: every rank saves on SLURM's SIGTERM, the job is requeued,
    resumes from that checkpoint and ends with the golden (uninterrupted, 2-rank) losses."""
    run_dir, out = tmp_path / "runs" / "slurm", tmp_path / "job.out"
    with slurm_cluster(hosts, tmp_path / "slurm") as slurm, _diagnose(slurm, out):
        # a MASTER_ADDR / MASTER_PORT left in the submitting shell (sbatch exports it): the script must ignore them
        # (it used them, and both nodes waited for a rendezvous at 127.0.0.1)
        env = {**env_for_launch(), "GPUS_PER_NODE": "1", "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": "29511"}
        submitted = slurm.run(
            "sbatch", "--nodes=2", "--cpus-per-task=1", "--gpus-per-node=0", f"--output={out}", "--open-mode=append",
            str(REPO / "scripts" / "slurm_train.sbatch"), str(TINY),
            *tiny_overrides(shards, run_dir, **{"checkpoint.interval_steps": EVERY}), env=env, cwd=REPO)
        job = submitted.split()[-1]
        metrics = run_dir / "metrics.jsonl"
        _wait("the job's second step", lambda: metrics.is_file() and len(losses(run_dir)) >= 2, 240)
        slurm.run("scontrol", "requeue", job)
        # a requeued job waits ~2 minutes (BeginTime) before it is eligible again: make it eligible now
        _wait("the requeued job to be pending", lambda: "PENDING" in slurm.run("squeue", "-h", "-j", job, "-o", "%T"), 120)
        slurm.run("scontrol", "update", f"JobId={job}", "StartTime=now")
        _wait("the job to finish", lambda: not slurm.run("squeue", "-h", "-j", job, "-o", "%T").strip(), 300, every=2)
        info = slurm.run("scontrol", "show", "job", job)
    log = out.read_text()
    assert "Restarts=1" in info and "JobState=COMPLETED" in info, info
    saved = [ln for ln in log.splitlines() if "preempted by SIGTERM" in ln]
    assert saved and "checkpoint saved" in saved[0], log[-4000:]
    resumed = [ln for ln in log.splitlines() if "resumed from" in ln]
    assert resumed and "global_step" in resumed[0], log[-4000:]
    assert "trained 8 steps" in log, log[-4000:]
    assert_golden_losses(run_dir, STEPS)
    table = json.loads((run_dir / "hosts.json").read_text())
    assert sorted(t["host"] for t in table) == sorted(h.name for h in hosts), table
