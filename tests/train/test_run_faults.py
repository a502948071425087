"""Faults of a run, on real 2-rank jobs over real shards (all marked slow).

* a fresh run into a run dir that holds another run is refused; ``--run.overwrite`` starts clean;
* a resume with another model or world size is one line, before DeepSpeed loads anything;
* a resume with a new lr and a longer run applies the lr and keeps the cosine horizon;
* non-finite losses stop the run (exit 3) without a checkpoint over the good ones;
* SIGUSR1 on ONE rank saves a checkpoint on every rank, exits 0, and ``--resume latest`` continues.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from tests.train.engine_helpers import (
    REPO,
    TINY,
    env_for_launch,
    free_port,
    kill_tree,
    make_shards,
    run_torchrun,
    tiny_overrides,
    torchrun_cmd,
)
from train.metrics import read_metrics

pytestmark = pytest.mark.slow
BASE_STEPS = 4


def _ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstderr:\n{proc.stderr[-5000:]}"


def _args(shards: str, run_dir: Path, **extra: object) -> list[str]:
    extra = {"run.max_steps": BASE_STEPS, "checkpoint.interval_steps": 2, **extra}
    return ["--config", str(TINY), *tiny_overrides(shards, run_dir, **extra)]


def _records(run_dir: Path) -> list[dict]:
    return read_metrics(run_dir / "metrics.jsonl")


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    return make_shards(tmp_path_factory.mktemp("fault_shards"))


@pytest.fixture(scope="module")
def base_run(shards, tmp_path_factory) -> Path:
    """4 steps at lr 3e-3 (tiny recipe), checkpoints at 2 and 4, on 2 ranks."""
    run_dir = tmp_path_factory.mktemp("runs") / "base"
    _ok(run_torchrun(2, *_args(shards, run_dir)))
    return run_dir


def _copy(run_dir: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "runs" / run_dir.name
    shutil.copytree(run_dir, dst)
    return dst


def _direct_ranks(args: list[str], world: int, timeout: float = 120) -> list[subprocess.CompletedProcess]:
    """``python -m train`` started as ``world`` processes with torchrun's variables (no launcher noise)."""
    port = str(free_port())
    procs = []
    for rank in range(world):
        env = {**env_for_launch(), "RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
               "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
        procs.append(subprocess.Popen([sys.executable, "-m", "train", *args], cwd=REPO, env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=timeout)
        out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return out


def _one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stderr[-4000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1, proc.stderr[-4000:]
    for n in needles:
        assert n in errors[0], errors[0]
    return errors[0]


def test_fresh_run_into_a_used_run_dir_is_refused_and_overwrite_starts_clean(shards, base_run, tmp_path):
    run_dir = _copy(base_run, tmp_path)
    before = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    (refused,) = _direct_ranks(_args(shards, run_dir, **{"optim.lr": 1e-3}), world=1)
    _one_line_error(refused, f"run dir {run_dir}", "--resume latest", "--run.overwrite=true", "--run.name")
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == before

    # overwrite: a 2-step run with another lr; nothing of the 4-step run may survive
    _ok(run_torchrun(2, *_args(shards, run_dir, **{"optim.lr": 1e-3, "run.max_steps": 2,
                                                   "checkpoint.interval_steps": 0, "run.overwrite": "true"})))
    ckpts = run_dir / "checkpoints"
    assert (ckpts / "latest").read_text() == "global_step2"
    assert sorted(p.name for p in ckpts.glob("global_step*")) == ["global_step2"]
    saved = yaml.safe_load((ckpts / "global_step2" / "train_config.yaml").read_text())
    assert saved["optim"]["lr"] == 1e-3
    assert [r["step"] for r in _records(run_dir)] == [1, 2]


def test_resume_with_another_model_or_world_size_is_one_line_before_deepspeed(shards, base_run):
    args = [*_args(shards, base_run), "--resume", "latest"]
    stamp = {p: p.stat().st_mtime_ns for p in (base_run / "checkpoints").rglob("*") if p.is_file()}
    # the settings are compared before the rank count, so one process shows each refusal
    (proc,) = _direct_ranks([*args, "--model.llm.config.hidden_size=64"], world=1)
    _one_line_error(proc, "model.llm.config.hidden_size", "64", "128", f"global_step{BASE_STEPS}")
    # another vocabulary: another size (a shape mismatch inside DeepSpeed before) or the same size from
    # another corpus (a silent resume whose loss jumped before)
    (proc,) = _direct_ranks([*args, "--tokenizer.vocab_size=320"], world=1)
    _one_line_error(proc, "tokenizer.vocab_size", "320", "token ids")
    (proc,) = _direct_ranks([*args, "--tokenizer.corpus_videos=3"], world=1)
    _one_line_error(proc, "tokenizer.corpus_videos", "token ids")
    (proc,) = _direct_ranks([*args, "--deepspeed.gradient_accumulation_steps=1"], world=1)
    _one_line_error(proc, "deepspeed.gradient_accumulation_steps", "data position")
    (single,) = _direct_ranks(args, world=1)
    _one_line_error(single, "written by 2 ranks", "this job has 1")
    assert stamp == {p: p.stat().st_mtime_ns for p in (base_run / "checkpoints").rglob("*") if p.is_file()}


def test_resume_on_other_data_starts_that_data_from_its_beginning(shards, base_run, tmp_path):
    """A requeue after the shards changed (here: half of them): the saved position counts batches of the old
    data, so the new data starts at epoch 0 (said in the warning, decided before DeepSpeed loads); the model,
    optimizer and step continue. It used to fail after DeepSpeed loaded: "epoch 0 has only 3 batches,
    cannot skip 6"."""
    run_dir = _copy(base_run, tmp_path)
    half = shards.replace("{000000..000003}", "{000000..000001}")
    assert half != shards
    proc = run_torchrun(2, *_args(half, run_dir, **{"run.max_steps": BASE_STEPS + 2}), "--resume", "latest")
    _ok(proc)
    assert "the data changed since checkpoint" in proc.stderr and "4 -> 2 (2 gone, 0 new)" in proc.stderr
    assert "starts from its beginning (epoch 0)" in proc.stderr
    assert [r["step"] for r in _records(run_dir)][-2:] == [BASE_STEPS + 1, BASE_STEPS + 2]
    saved = json.loads((run_dir / "checkpoints" / f"global_step{BASE_STEPS + 2}" / "data.json").read_text())
    assert len(saved["shards"]) == 2


def test_mtl_on_mostly_empty_reasoning_is_refused_in_one_line(shards, tmp_path):
    """Reasoning files whose ok records hold no text (a teacher that answered "") would make MTL train QA
    only without a word: refused in one line before any process group; a few empty ones are a warning."""
    from data_shards.reasoning_records import make_record
    from data_shards.schema import read_records

    qids = [qa.qid for rec in read_records(Path(shards).parents[1] / "synth" / "records.jsonl") for qa in rec.qas]
    for name, n_empty in (("mostly_empty", len(qids) - 2), ("few_empty", 2)):
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps(make_record(q, "t", "reasvqa-v1", raw="x", refined="" if i < n_empty else
                                                       "The ball rolls left.")) + "\n" for i, q in enumerate(qids)))
        args = _args(shards, tmp_path / "runs" / name, **{"task.mode": "mtl", "task.reasoning_source": "refined",
                                                        "data.reasoning": json.dumps([str(path)]), "run.max_steps": 2,
                                                        "checkpoint.interval_steps": 0})
        (proc,) = _direct_ranks(args, world=1)
        if name == "mostly_empty":
            _one_line_error(proc, f"{n_empty} of {len(qids)} ok records have no 'refined' text", "task.mode=qa")
        else:
            assert proc.returncode == 0, proc.stderr[-3000:]
            assert f"2 of {len(qids)} ok records have no 'refined' text" in proc.stderr


def test_resume_applies_a_new_lr_and_a_longer_run_keeps_the_cosine_horizon(shards, base_run, tmp_path):
    """lr 3e-3 -> 1e-3 and max_steps 4 -> 6 on resume: the logged lr follows the new lr, and the
    cosine keeps its 4-step horizon (min_lr_ratio after it) instead of climbing back up."""
    from train.config import load_config
    from train.engine import lr_factor

    run_dir = _copy(base_run, tmp_path)
    proc = run_torchrun(2, *_args(shards, run_dir, **{"optim.lr": 1e-3, "run.max_steps": 6}), "--resume", "latest")
    _ok(proc)
    assert "optim.lr 0.003 -> 0.001" in proc.stderr and "run.max_steps 4 -> 6" in proc.stderr
    lrs = {r["step"]: r["lr"] for r in _records(run_dir)}
    old = load_config(TINY).optim
    assert lrs[BASE_STEPS] == pytest.approx(3e-3 * lr_factor(BASE_STEPS - 1, old, BASE_STEPS))
    for step in (5, 6):
        assert lrs[step] == pytest.approx(1e-3 * old.min_lr_ratio), lrs
    saved = yaml.safe_load((run_dir / "checkpoints" / "global_step6" / "train_config.yaml").read_text())
    assert saved["optim"]["lr"] == 1e-3 and saved["optim"]["schedule_steps"] == BASE_STEPS
    assert saved["run"]["max_steps"] == 6


def test_nonfinite_losses_stop_the_run_without_overwriting_good_checkpoints(shards, tmp_path):
    """lr 1e30: step 1 is finite (checkpoint), then the loss is nan. With the default
    run.max_nonfinite_steps (3) the run stops at step 4 on both ranks with exit 3; latest stays the
    step-1 checkpoint (today: exit 0 after 8 steps, with nan checkpoints at every step)."""
    run_dir = tmp_path / "runs" / "nan"
    args = _args(shards, run_dir, **{"optim.lr": 1e30, "optim.warmup_steps": 0, "run.max_steps": 8,
                                     "checkpoint.interval_steps": 1})
    procs = _direct_ranks(args, world=2, timeout=240)
    for proc in procs:
        assert proc.returncode == 3, proc.stderr[-4000:]
        assert "non-finite step(s) in a row" in proc.stderr and "Traceback" not in proc.stderr
    ckpts = run_dir / "checkpoints"
    assert (ckpts / "latest").read_text() == "global_step1"
    assert sorted(p.name for p in ckpts.glob("global_step*")) == ["global_step1"]
    steps = {r["step"]: r["loss"] for r in _records(run_dir)}
    assert sorted(steps) == [1, 2, 3, 4] and steps[1] == steps[1] and steps[4] != steps[4]  # nan != nan


def test_sigusr1_on_one_rank_saves_on_every_rank_and_resume_continues(shards, tmp_path):
    run_dir = tmp_path / "runs" / "preempt"
    args = _args(shards, run_dir, **{"run.max_steps": 200, "checkpoint.interval_steps": 0})
    proc = subprocess.Popen(torchrun_cmd(2, *args), cwd=REPO, env=env_for_launch(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    metrics = run_dir / "metrics.jsonl"
    try:
        deadline = time.time() + 180
        while time.time() < deadline and proc.poll() is None:
            if metrics.is_file() and len(metrics.read_text().splitlines()) >= 2:
                break
            time.sleep(0.1)
        ranks = [p for p in psutil.Process(proc.pid).children(recursive=True) if "train" in " ".join(p.cmdline())]
        assert len(ranks) == 2, ranks
        rank1 = next(p for p in ranks if p.environ().get("RANK") == "1")
        os.kill(rank1.pid, signal.SIGUSR1)  # SLURM's --signal=USR1@T; here it reaches one rank only
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        kill_tree(proc.pid)
    assert proc.returncode == 0, stderr[-4000:]
    stopped = max(r["step"] for r in _records(run_dir))
    assert 2 <= stopped < 200 and "preempted by SIGUSR1" in stdout + stderr
    tag = run_dir / "checkpoints" / f"global_step{stopped}"
    assert (run_dir / "checkpoints" / "latest").read_text() == tag.name
    assert {f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in (0, 1)} <= {p.name for p in tag.iterdir()}

    resumed = run_torchrun(2, *_args(shards, run_dir, **{"run.max_steps": stopped + 1,
                                                         "checkpoint.interval_steps": 0}), "--resume", "latest")
    _ok(resumed)
    assert f"at step {stopped}" in resumed.stderr
    assert [r["step"] for r in _records(run_dir)][-1] == stopped + 1
    assert json.loads((run_dir / "checkpoints" / f"global_step{stopped + 1}" / "complete.json").read_text())


def test_eval_run_accepts_a_tag_of_a_checkpoint_folder(shards, base_run, tmp_path):
    """`python -m eval run --checkpoint RUN/checkpoints --tag global_step2` evaluates that checkpoint;
    a tag that is not there names the complete ones."""
    ckpts = base_run / "checkpoints"
    cmd = [sys.executable, "-m", "eval", "run", "--checkpoint", str(ckpts), "--shards", shards, "--threads", "1"]
    proc = subprocess.run([*cmd, "--tag", "global_step2", "--out", str(tmp_path / "e2")], cwd=REPO,
                          env=env_for_launch(), capture_output=True, text=True, timeout=300)
    _ok(proc)
    run = json.loads((tmp_path / "e2" / "run.json").read_text())
    assert run["tag"] == "global_step2" and run["n_questions"] > 0
    bad = subprocess.run([*cmd, "--tag", "global_step3", "--out", str(tmp_path / "e3")], cwd=REPO,
                         env=env_for_launch(), capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr, bad.stderr[-3000:]
    assert f"complete ones here: global_step2, global_step{BASE_STEPS}" in bad.stderr


def test_sigterm_to_torchrun_reaches_both_ranks_and_each_saves_before_leaving(shards, tmp_path):
    """torchrun forwards SIGTERM to every rank (and kills them 30 s later): both save the same step."""
    run_dir = tmp_path / "runs" / "term"
    args = _args(shards, run_dir, **{"run.max_steps": 200, "checkpoint.interval_steps": 0})
    proc = subprocess.Popen(torchrun_cmd(2, *args), cwd=REPO, env=env_for_launch(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    metrics = run_dir / "metrics.jsonl"
    try:
        deadline = time.time() + 180
        while time.time() < deadline and proc.poll() is None:
            if metrics.is_file() and len(metrics.read_text().splitlines()) >= 1:
                break
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        kill_tree(proc.pid)
    stopped = max(r["step"] for r in _records(run_dir))
    assert stopped < 200 and "preempted by SIGTERM" in stdout + stderr, stderr[-4000:]
    tag = run_dir / "checkpoints" / f"global_step{stopped}"
    assert (run_dir / "checkpoints" / "latest").read_text() == tag.name, stderr[-4000:]
    assert json.loads((tag / "complete.json").read_text())["world_size"] == 2
    assert {f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in (0, 1)} <= {p.name for p in tag.iterdir()}


def test_sigusr1_to_torchrun_alone_still_stops_both_ranks_with_a_save(shards, tmp_path):
    """torchrun does not forward SIGUSR1 and dies of it; its ranks, re-parented, notice at the next step,
    save the same step and leave instead of training on without a launcher."""
    run_dir = tmp_path / "runs" / "usr1"
    args = _args(shards, run_dir, **{"run.max_steps": 200, "checkpoint.interval_steps": 0})
    log = tmp_path / "usr1.log"  # a file, not a pipe: the ranks outlive the launcher that read its pipe
    with log.open("w") as out:
        proc = subprocess.Popen(torchrun_cmd(2, *args), cwd=REPO, env=env_for_launch(), stdout=out,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
    metrics = run_dir / "metrics.jsonl"
    try:
        ranks = []
        deadline = time.time() + 180
        while time.time() < deadline and proc.poll() is None:
            if metrics.is_file() and len(metrics.read_text().splitlines()) >= 1:
                break
            time.sleep(0.1)
        ranks = [c for c in psutil.Process(proc.pid).children(recursive=True) if "-m" in c.cmdline()]
        assert len(ranks) >= 2, [c.cmdline() for c in ranks]
        proc.send_signal(signal.SIGUSR1)  # to torchrun only
        proc.wait(timeout=60)
        gone, alive = psutil.wait_procs(ranks, timeout=120)
        assert not alive, f"ranks still running after their launcher died: {[p.pid for p in alive]}"
    finally:
        kill_tree(proc.pid)
        for c in ranks:
            if c.is_running():
                c.kill()
    stopped = max(r["step"] for r in _records(run_dir))
    assert stopped < 200
    tag = run_dir / "checkpoints" / f"global_step{stopped}"
    assert (run_dir / "checkpoints" / "latest").read_text() == tag.name
    assert {f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in (0, 1)} <= {p.name for p in tag.iterdir()}
    assert f"preempted by the exit of torchrun at step {stopped}" in log.read_text(), log.read_text()[-3000:]


def test_sigterm_to_every_process_with_loader_workers_saves_and_leaves(shards, tmp_path):
    """SLURM signals every process of a job step: torchrun, the ranks and their DataLoader workers. The
    workers ignore it (the ranks own preemption), so the ranks save the same step and leave with exit 0,
    instead of failing with "DataLoader worker ... killed by signal: Terminated" and no checkpoint."""
    run_dir = tmp_path / "runs" / "all"
    args = _args(shards, run_dir, **{"run.max_steps": 200, "checkpoint.interval_steps": 0, "data.num_workers": 1})
    log = tmp_path / "all.log"
    with log.open("w") as out:
        proc = subprocess.Popen(torchrun_cmd(2, *args), cwd=REPO, env=env_for_launch(), stdout=out,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
    metrics = run_dir / "metrics.jsonl"
    try:
        deadline = time.time() + 180
        while time.time() < deadline and proc.poll() is None:
            if metrics.is_file() and len(metrics.read_text().splitlines()) >= 1:
                break
            time.sleep(0.1)
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        assert len(family) >= 5, [p.cmdline()[:4] for p in family]  # torchrun, 2 ranks, their workers
        for p in family:
            p.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    finally:
        kill_tree(proc.pid)
    text = log.read_text()
    assert "killed by signal" not in text, text[-3000:]
    stopped = max(r["step"] for r in _records(run_dir))
    assert stopped < 200 and "preempted by SIGTERM" in text, text[-3000:]
    tag = run_dir / "checkpoints" / f"global_step{stopped}"
    assert (run_dir / "checkpoints" / "latest").read_text() == tag.name, text[-3000:]
    assert {f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in (0, 1)} <= {p.name for p in tag.iterdir()}


def test_sigterm_during_start_up_is_a_clean_exit_that_says_so(shards, tmp_path):
    """A signal before the training loop (model build, DeepSpeed start) used to kill the rank silently:
    now it leaves with exit 0 and one line saying nothing was trained yet."""
    args = _args(shards, tmp_path / "runs" / "early", **{"run.max_steps": 200})
    env = {**env_for_launch(), "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    log = tmp_path / "early.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "train", *args], cwd=REPO, env=env, stdout=out,
                                stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and "attention:" not in log.read_text():
            time.sleep(0.05)  # the model is being built: start-up, before the loop
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert "Traceback" not in text, text[-3000:]
    assert "stopped by SIGTERM during start-up" in text or "preempted by SIGTERM" in text, text[-3000:]
