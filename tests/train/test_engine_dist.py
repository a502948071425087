"""Multi-process trainer tests: 2 CPU ranks over gloo, DeepSpeed ZeRO-3 (all marked slow).

* exactness: 2 ranks x 2 accumulation steps == 1 process on the whole batch (plain SGD).
* the tiny recipe (``python -m train`` under torchrun) trains from real synthetic shards,
  its loss falls and matches the golden file; a run SIGKILLed after its step-4 checkpoint and
  resumed with ``--resume latest`` continues with exactly the uninterrupted run's losses.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import assert_close_report
from tests.train.engine_helpers import (
    CKPT_EVERY,
    GOLDEN,
    GOLDEN_STEPS,
    REPO,
    TINY,
    env_for_launch,
    kill_tree,
    losses,
    make_shards,
    run_torchrun,
    shm_workspaces,
    tiny_overrides,
    torchrun_cmd,
)

pytestmark = pytest.mark.slow


def _check(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, (f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\n"
                                  f"stderr:\n{proc.stderr[-6000:]}")


@pytest.mark.parametrize("packing,mixed", [(False, False), (True, False), (False, True), (True, True)],
                         ids=["padded", "packed", "mixed", "packed-mixed"])
def test_two_ranks_two_accumulation_steps_equal_one_process_on_the_whole_batch(tmp_path, packing, mixed):
    """Gradient of alpha*mean_QA + beta*mean_reason over the GLOBAL batch, whatever the split.

    SGD (lr 0.5, no momentum/decay/clipping) makes the parameter update proportional to the
    gradient, so any wrong factor (DeepSpeed's 1/gas, the rank average, per-micro-batch means)
    shows; AdamW's first step (~lr * sign(g)) would hide it. Tolerance: fp32, atol 1e-6 on
    parameters whose update reaches 0.3: the only differences are summation order (the ZeRO-3
    reduce-scatter over gloo adds the two ranks' gradients; one process adds all tokens at once).
    ``packed``: the ranks pack their micro-batches (data.packing); the reference stays the unpacked
    whole batch, so packing must not change the loss or the gradients either. ``mixed``: text-only
    questions (exactness_worker.TEXT_ONLY; rank 0's micro-batches hold no video at all, rank 1's do):
    the step must finish (120 s: ZeRO-3 hangs when one rank skips the tower) and equal the replay.
    """
    from tests.train import exactness_worker as W
    from train.config import load_config
    from train.loss import TASK_QA, TASK_REASON, token_weights
    from train.models import build_model
    from train.tasks import build_examples, collate

    out = tmp_path / "exact.pt"
    worker = [str(REPO / "tests" / "train" / "exactness_worker.py"), str(out), *(["--packing"] if packing else []),
              *(["--mixed"] if mixed else [])]
    proc = subprocess.run(torchrun_cmd(2, *worker, module=None),
                          cwd=REPO, env=env_for_launch(), capture_output=True, text=True, timeout=120 if mixed else 300)
    _check(proc)
    res = torch.load(out, weights_only=False)

    torch.set_num_threads(1)
    cfg = load_config(TINY, W.OVERRIDES)
    tok = W.tokenizer()
    model = build_model(cfg.model, tok)
    model.load_state_dict(res["before"], strict=True)
    examples = [ex for q in W.global_batch(mixed) for ex in build_examples(q, cfg.task)]
    batch = collate(examples, tok, cfg.task, model.frame_layout(cfg.data.num_frames))
    if mixed:  # the replay's batch holds text-only rows beside video rows
        assert 0 < batch["pixel_values"].shape[0] < batch["input_ids"].shape[0]
    n_qa, n_re = int((batch["task_ids"] == TASK_QA).sum()), int((batch["task_ids"] == TASK_REASON).sum())
    assert (res["n_qa"], res["n_reason"]) == (n_qa, n_re)
    w = token_weights(batch["task_ids"], n_qa, n_re, cfg.task.alpha, cfg.task.beta)
    loss = model(pixel_values=batch["pixel_values"], input_ids=batch["input_ids"],
                 attention_mask=batch["attention_mask"], labels=batch["labels"], loss_weight=w)["loss"]
    loss.backward()
    assert abs(res["loss"] - loss.item()) <= 1e-5 * abs(loss.item()), (res["loss"], loss.item())
    assert res["lr"] == cfg.optim.lr
    biggest = 0.0
    for name, p in model.named_parameters():
        grad = p.grad if p.grad is not None else torch.zeros_like(p)
        want = res["before"][name] - cfg.optim.lr * grad
        biggest = max(biggest, float((want - res["before"][name]).abs().max()))
        assert_close_report(res["after"][name], want, rtol=1e-5, atol=1e-6, name=name)
    assert biggest > 0.05, "the step barely moved the parameters: the test would not see a wrong scale"


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    return make_shards(tmp_path_factory.mktemp("trainer_shards"))


@pytest.fixture(scope="module")
def golden_run(shards, tmp_path_factory) -> Path:
    """The tiny recipe, uninterrupted, 8 steps (checkpoints at 4 and 8): the golden run."""
    run_dir = tmp_path_factory.mktemp("runs") / "golden"
    before = shm_workspaces()
    _check(run_torchrun(2, "--config", str(TINY), *tiny_overrides(shards, run_dir)))
    # DeepSpeed's CPU comm op leaves a ~69 MB /dev/shm file per rank unless train.dist unlinks it
    assert shm_workspaces() <= before, f"the run left shared memory behind: {sorted(shm_workspaces() - before)}"
    return run_dir


def test_tiny_recipe_trains_and_matches_the_golden_losses(golden_run):
    golden = json.loads(GOLDEN.read_text())
    got = losses(golden_run)
    assert sorted(got) == list(range(1, GOLDEN_STEPS + 1))
    seq = [got[s] for s in sorted(got)]
    assert seq[-1] < seq[0] - 1.0, f"loss did not fall: {seq}"
    from data_shards.synth.make import GENERATOR_VERSION

    assert golden["versions"]["synth_generator"] == GENERATOR_VERSION, (
        f"the synthetic generator changed: regenerate with `{golden['regenerate']}`")
    tol = golden["tolerance"]
    assert_close_report(torch.tensor(seq, dtype=torch.float64), torch.tensor(golden["losses"], dtype=torch.float64),
                        rtol=tol["rtol"], atol=tol["atol"],
                        name=f"tiny_cpu losses (regenerate: {golden['regenerate']})")
    ckpts = golden_run / "checkpoints"
    assert (ckpts / "latest").read_text() == f"global_step{GOLDEN_STEPS}"
    for step in (CKPT_EVERY, GOLDEN_STEPS):
        files = {p.name for p in (ckpts / f"global_step{step}").iterdir()}
        assert {"zero_pp_rank_0_mp_rank_00_model_states.pt", "zero_pp_rank_1_mp_rank_00_model_states.pt",
                "train_config.yaml", "ds_config.json", "complete.json"} <= files
    ds = json.loads((golden_run / "ds_config.json").read_text())
    assert ds["zero_optimization"]["stage"] == 3 and ds["gradient_accumulation_steps"] == 2
    assert (golden_run / "config.yaml").is_file()


def test_sigkill_after_checkpoint_then_resume_latest_continues_exactly(shards, golden_run, tmp_path):
    """Kill -9 the whole job once its step-4 checkpoint is complete, resume, compare with the golden run.

    The data position is restored by replaying the loader's deterministic order for
    (seed, epoch) and skipping the batches consumed before the checkpoint; model, optimizer,
    LR schedule and per-rank RNG states come from the checkpoint. Tolerance: exact (same CPU,
    same arithmetic in the same order), checked as rtol 1e-7.
    """
    run_dir = tmp_path / "runs" / "killed"
    args = ["--config", str(TINY), *tiny_overrides(shards, run_dir)]
    shm_before = shm_workspaces()
    proc = subprocess.Popen(torchrun_cmd(2, *args), cwd=REPO, env=env_for_launch(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    latest = run_dir / "checkpoints" / "latest"
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            if latest.is_file() and latest.read_text() == f"global_step{CKPT_EVERY}":
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"the run ended before it could be killed:\n{proc.stderr.read()[-3000:]}"
        killed = kill_tree(proc.pid)  # SIGKILL torchrun and both ranks: no clean-up of any kind
        assert len(killed) >= 3, f"expected torchrun + 2 ranks, killed {killed}"
    finally:
        kill_tree(proc.pid)
        proc.wait(timeout=60)
    assert latest.read_text() == f"global_step{CKPT_EVERY}"
    assert shm_workspaces() <= shm_before, "a SIGKILLed run left DeepSpeed's shared memory behind"
    before = losses(run_dir)
    assert max(before) < GOLDEN_STEPS, "the killed run got to the end"

    _check(run_torchrun(2, *args, "--resume", "latest"))
    resumed, golden = losses(run_dir), losses(golden_run)
    assert sorted(resumed) == list(range(1, GOLDEN_STEPS + 1))
    for step in range(1, GOLDEN_STEPS + 1):
        assert resumed[step] == pytest.approx(golden[step], rel=1e-7), (step, resumed, golden)
    assert (run_dir / "checkpoints" / "latest").read_text() == f"global_step{GOLDEN_STEPS}"


def test_checkpoint_consolidates_and_exports_for_transformers_and_eval(golden_run, tmp_path):
    """zero_to_fp32 (the script the checkpoint carries, and the library call) -> export folder ->
    AutoModelForCausalLM.from_pretrained (LLM part) and train.export.load_for_eval."""
    import sys

    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from train.export import consolidated_state_dict, load_for_eval
    from train.export import main as export_main

    ckpts = golden_run / "checkpoints"
    script_out = tmp_path / "zero_to_fp32"
    proc = subprocess.run([sys.executable, str(ckpts / "zero_to_fp32.py"), str(ckpts), str(script_out),
                           "--safe_serialization"], cwd=REPO, env=env_for_launch(), capture_output=True, text=True,
                          timeout=300)
    _check(proc)
    by_script = {}
    for f in sorted(script_out.glob("*.safetensors")):
        by_script.update(load_file(str(f)))
    state = consolidated_state_dict(ckpts, f"global_step{GOLDEN_STEPS}")
    assert set(by_script) == set(state) and len(state) > 10
    for k in state:
        assert torch.equal(by_script[k], state[k]), k

    out = tmp_path / "export"
    assert export_main(["--checkpoint", str(ckpts), "--out", str(out)]) == 0
    info = json.loads((out / "export_info.json").read_text())
    assert info["step"] == GOLDEN_STEPS
    llm = AutoModelForCausalLM.from_pretrained(out / "llm", local_files_only=True).eval()
    llm_state = llm.state_dict()
    for k, v in state.items():
        if k.startswith("llm."):
            assert torch.equal(llm_state[k[len("llm."):]], v), k
    model, tok, cfg = load_for_eval(out)
    assert cfg.task.mode == "mtl" and cfg.data.num_frames == 4
    for k, v in model.state_dict().items():
        if k in state:
            assert torch.equal(v, state[k]), k
    # the exported LLM and the eval model's LLM compute the same text logits
    ids = torch.tensor([tok.encode("What did the red ball do?", add_special_tokens=False)])
    with torch.no_grad():
        hf_logits = llm(input_ids=ids).logits
        ours = model.causal_lm(input_ids=ids).logits
    assert_close_report(ours, hf_logits, rtol=1e-5, atol=1e-5, name="text logits")
    # a checkpoint directory loads for eval directly too (consolidated in memory)
    model2, _, _ = load_for_eval(ckpts / f"global_step{GOLDEN_STEPS}")
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), model2.parameters()))


def test_offload_and_activation_checkpointing_train_the_same_losses(shards, golden_run, tmp_path):
    """ZeRO-3 with optimizer AND parameter offload to CPU (torch AdamW as the client optimizer, which
    DeepSpeed only accepts with zero_force_ds_cpu_optimizer=false) plus gradient checkpointing
    gives the golden run's losses: same math, other memory placement. Tolerance rtol 1e-5."""
    run_dir = tmp_path / "runs" / "offload"
    extra = {"deepspeed.offload_optimizer": "cpu", "deepspeed.offload_param": "cpu",
             "model.gradient_checkpointing": "true", "checkpoint.interval_steps": 0, "checkpoint.save_final": "false"}
    _check(run_torchrun(2, "--config", str(TINY), *tiny_overrides(shards, run_dir, **extra)))
    ds = json.loads((run_dir / "ds_config.json").read_text())
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert ds["zero_optimization"]["offload_param"]["device"] == "cpu" and ds["zero_force_ds_cpu_optimizer"] is False
    got, golden = losses(run_dir), losses(golden_run)
    assert sorted(got) == sorted(golden)
    for step in golden:
        assert got[step] == pytest.approx(golden[step], rel=1e-5), (step, got, golden)


def test_pretrained_parts_load_into_zero3_partitions(tmp_path):
    """The 7B recipe's path: LLM and vision tower from local save_pretrained folders, built inside
    deepspeed.zero.Init on 2 ranks (transformers loads each weight into the partitions through
    HfDeepSpeedConfig). Gathered back, every weight (lm_head included: the loss module takes it
    over) equals the saved one exactly."""
    from safetensors.torch import load_file
    from transformers import LlamaConfig, LlamaForCausalLM, SiglipVisionConfig, SiglipVisionModel

    from tests.train.exactness_worker import tokenizer

    torch.manual_seed(123)
    vocab = len(tokenizer())
    LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=128, intermediate_size=384, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
                     ).save_pretrained(tmp_path / "llm")
    SiglipVisionModel(SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, patch_size=8, image_size=32)
                      ).save_pretrained(tmp_path / "vision")
    proc = subprocess.run(torchrun_cmd(2, str(REPO / "tests" / "train" / "pretrained_worker.py"), str(tmp_path),
                                       module=None), cwd=REPO, env=env_for_launch(), capture_output=True, text=True,
                          timeout=300)
    _check(proc)
    got = torch.load(tmp_path / "gathered.pt")
    for part, prefix in (("llm", "llm."), ("vision", "vision.tower.")):
        saved = load_file(str(tmp_path / part / "model.safetensors"))
        assert len(saved) > 10
        for k, v in saved.items():
            assert torch.equal(got[prefix + k], v.float()), prefix + k
    assert "llm.lm_head.weight" in got


def test_deepspeed_launcher_trains_like_torchrun(shards, golden_run, tmp_path):
    """`deepspeed --num_gpus 2 --module train ...` (the launcher appends --local_rank; on CPU it
    starts both ranks locally): the first 4 steps equal the torchrun golden run's."""
    import shutil
    import sys

    from tests.train.engine_helpers import free_port

    launcher = shutil.which("deepspeed") or str(Path(sys.executable).parent / "deepspeed")
    run_dir = tmp_path / "ds_launcher"
    cmd = [launcher, "--num_gpus", "2", "--master_port", str(free_port()), "--module", "train",
           "--config", str(TINY), *tiny_overrides(shards, run_dir, **{"run.max_steps": CKPT_EVERY})]
    proc = subprocess.run(cmd, cwd=REPO, env=env_for_launch(), capture_output=True, text=True, timeout=300)
    _check(proc)
    got, want = losses(run_dir), losses(golden_run)
    assert sorted(got) == list(range(1, CKPT_EVERY + 1))
    assert_close_report(torch.tensor([got[s] for s in sorted(got)], dtype=torch.float64),
                        torch.tensor([want[s] for s in sorted(got)], dtype=torch.float64),
                        rtol=1e-6, atol=1e-7, name="deepspeed-launcher losses vs torchrun")


def test_slurm_script_parses():
    proc = subprocess.run(["bash", "-n", str(REPO / "scripts" / "slurm_train.sbatch")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
