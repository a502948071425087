"""Ulysses sequence parallel (``parallel.sequence``, ``train.sequence_parallel``).

* The shard plan (one process): slices of the flattened micro-batch, sequence boundaries, positions, and
  next-token targets that the ranks' slices add up to exactly.
* 2 gloo ranks, one sequence group, ZeRO-3 (marked slow): one SGD step with sp = 2 on long-video
  micro-batches equals the step of one process without sequence parallel on the whole batch (loss and
  every parameter's update), for the assembled model (padded, packed, one key/value head, clips of different
  frame counts), Qwen2-VL (padded, packed, different frame counts) and LLaVA-OneVision.
"""

from __future__ import annotations

import subprocess

import pytest
import torch

from tests.conftest import assert_close_report
from tests.train.engine_helpers import REPO, env_for_launch, torchrun_cmd
from train.sequence_parallel import SequenceParallel, plan_shard, sequence_bounds, text_positions


def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """2 right-padded rows (5 and 3 tokens of 6) with targets on their last tokens."""
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0]])
    labels = torch.tensor([[-100, -100, 7, 8, 9, -100], [-100, 5, 6, -100, -100, -100]])
    weight = torch.where(labels != -100, torch.arange(12.0).view(2, 6), torch.zeros(2, 6))
    return mask, labels, weight


def test_shard_plan_slices_add_up_to_the_next_token_targets_of_every_row():
    mask, labels, weight = _batch()
    plans = [plan_shard(SequenceParallel(None, 5, r), mask, labels, weight) for r in range(5)]
    assert {p.total for p in plans} == {15}  # 12 tokens padded to a multiple of 5
    assert [(p.start, p.end) for p in plans] == [(0, 3), (3, 6), (6, 9), (9, 12), (12, 15)]
    # a sequence per row's tokens, one per row's padding tail, one for the padding to 15
    assert plans[0].bounds == [0, 5, 6, 9, 12, 15]
    assert plans[0].positions.tolist() == [[0, 1, 2, 3, 4, 0, 0, 1, 2, 0, 1, 2, 0, 1, 2]]
    got = torch.cat([p.labels for p in plans], dim=1)
    want = [-100, 7, 8, 9, -100, -100, 5, 6, -100, -100, -100, -100, -100, -100, -100]  # labels[t + 1] per row
    assert got.tolist() == [want]
    got_w = torch.cat([p.weights for p in plans], dim=1)
    assert got_w[0, [1, 2, 3, 6, 7]].tolist() == [2.0, 3.0, 4.0, 7.0, 8.0]
    assert float(got_w.sum()) == float(weight.sum())  # every target's weight once, nothing else


def test_packed_segments_give_one_boundary_per_sequence_and_row():
    seg = torch.tensor([[1, 1, 2, 2, 2, 0], [1, 1, 1, 1, 2, 2]])
    assert sequence_bounds(seg, 12) == [0, 2, 5, 6, 10, 12]
    assert sequence_bounds(seg, 14) == [0, 2, 5, 6, 10, 12, 14]
    assert text_positions(sequence_bounds(seg, 12)).tolist() == [[0, 1, 0, 1, 2, 0, 0, 1, 2, 3, 0, 1]]


def test_heads_that_cannot_be_split_are_refused_by_name():
    sp = SequenceParallel(None, 4, 0)
    with pytest.raises(ValueError, match="6 attention heads, not a multiple of 4"):
        sp.check_heads(6, 2, "model.llm")


# ---------------------------------------------------------------- 2 ranks


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory) -> dict[str, str]:
    from train.testing.hf_tiny import write_tiny_vlm

    root = tmp_path_factory.mktemp("sp_hf")
    return {family: str(write_tiny_vlm(root / family, family)) for family in ("qwen2_vl", "llava_onevision")}


@pytest.mark.slow
@pytest.mark.parametrize("family,variant", [("assembled", ""), ("assembled", "packed"), ("assembled", "kv1"),
                                            ("assembled", "ragged"), ("qwen2_vl", ""), ("qwen2_vl", "packed"),
                                            ("qwen2_vl", "ragged"), ("llava_onevision", "")],
                         ids=["assembled", "assembled-packed", "assembled-1kv", "assembled-ragged", "qwen2_vl",
                              "qwen2_vl-packed", "qwen2_vl-ragged", "llava_onevision"])
def test_sp2_on_two_ranks_equals_one_process_without_sequence_parallel(tmp_path, request, family, variant):
    """One SGD step (lr 0.5, no momentum / decay / clipping: the update is the gradient) with sp = 2 under
    ZeRO-3 on 2 gloo ranks equals one process on the whole batch without sequence parallel: the loss to 1e-5
    and every parameter to 1e-6 (fp32; summation order differs). Each micro-batch holds one or two long-video
    questions (48 frames for the assembled model, 64 for Qwen2-VL, 32 for LLaVA-OneVision);
    the split between the ranks cuts through a sequence (sp_worker.MICRO). ``1kv``: one key/value head for two
    ranks (repeated per query head before the all-to-all); ``ragged``: clips of different frame counts in one
    micro-batch (the frame budget's)."""
    from tests.train import sp_worker as S
    from train.config import load_config
    from train.loss import TASK_QA, TASK_REASON, token_weights
    from train.models import build_model

    model_dir = request.getfixturevalue("hf_dirs")[family] if family != "assembled" else None
    out = tmp_path / "sp.pt"
    args = [str(REPO / "tests" / "train" / "sp_worker.py"), str(out), family, *([model_dir] if model_dir else []),
            *([variant] if variant else [])]
    proc = subprocess.run(torchrun_cmd(2, *args, module=None), cwd=REPO, env=env_for_launch(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    assert "ulysses over 2 ranks" in proc.stdout
    res = torch.load(out, weights_only=False)

    torch.set_num_threads(2)
    cfg = load_config(S.RECIPES[family], S.overrides(family, model_dir, False, 1, variant == "kv1"))
    if family == "assembled":
        tok = S.W.tokenizer()
    else:
        from train.models.hf_vlm import load_processor

        tok = load_processor(cfg.model.hf)
    model = build_model(cfg.model, tok)
    model.load_state_dict(res["before"], strict=False)
    ragged = variant == "ragged"
    batch = model.collate([ex for qs in S.questions() for q in qs for ex in S.examples_of(q, cfg, ragged)], cfg.task)
    n_qa, n_re = int((batch["task_ids"] == TASK_QA).sum()), int((batch["task_ids"] == TASK_REASON).sum())
    assert (res["n_qa"], res["n_reason"]) == (n_qa, n_re)  # counted once per sequence group, not per rank
    assert res["examples"] == batch["input_ids"].shape[0]
    assert min(res["tokens"]) > 200, "not a long sequence"
    w = token_weights(batch["task_ids"], n_qa, n_re, cfg.task.alpha, cfg.task.beta)
    inputs = {k: v for k, v in batch.items() if k in ("pixel_values", "vision", "clip_frames")}
    loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"],
                 loss_weight=w, **inputs)["loss"]
    loss.backward()
    assert abs(res["loss"] - loss.item()) <= 1e-5 * abs(loss.item()), (res["loss"], loss.item())
    biggest = 0.0
    for name, p in model.named_parameters():
        if name not in res["before"]:
            continue
        grad = p.grad if p.grad is not None else torch.zeros_like(p)
        want = res["before"][name] - cfg.optim.lr * grad
        biggest = max(biggest, float((want - res["before"][name]).abs().max()))
        assert_close_report(res["after"][name], want, rtol=1e-5, atol=1e-6, name=name)
    assert biggest > 0.02, "the step barely moved the parameters: the test would not see a wrong scale"


@pytest.mark.slow
def test_trainer_with_sp2_on_two_ranks_trains_the_losses_of_one_rank(tmp_path):
    """``python -m train`` with ``parallel.sequence: 2`` on 2 ranks (one sequence group, data parallel 1) reads
    the data one rank reads alone and trains the same model: AdamW, ZeRO-3, 3 steps from real shards, the
    losses of a 1-rank run without sequence parallel to 1e-4 (relative), and the log says Ulysses ran."""
    from tests.train.engine_helpers import losses, make_shards, run_torchrun, tiny_overrides

    urls = make_shards(tmp_path / "data")
    common = {"run.max_steps": 3, "checkpoint.interval_steps": 0, "checkpoint.save_final": "false",
              "data.num_frames": 16, "data.micro_batch_size": 2, "task.max_prompt_len": 320, "data.epoch_batches": 4}
    runs = {}
    for name, nproc, sp in (("sp2", 2, 2), ("one", 1, 1)):
        run_dir = tmp_path / "runs" / name
        proc = run_torchrun(nproc, "--config", str(REPO / "configs" / "tiny_cpu.yaml"),
                            *tiny_overrides(urls, run_dir, **common, **{"parallel.sequence": sp}), timeout=400)
        assert proc.returncode == 0, f"{name}: exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
        runs[name] = losses(run_dir)
        if sp > 1:
            assert "sequence parallel: ulysses over 2 ranks" in proc.stdout + proc.stderr
    assert sorted(runs["sp2"]) == [1, 2, 3]
    for step, loss in runs["one"].items():
        assert abs(runs["sp2"][step] - loss) <= 1e-4 * abs(loss), (step, runs["sp2"][step], loss)


@pytest.mark.slow
def test_memory_bench_measures_half_the_decoder_activations_per_rank_with_sp2(tmp_path):
    """``train.bench.sp_memory`` on 2 ranks: the same sample at sp 1 and 2; with sp 2 each rank saves about half
    the decoder's activations for backward (the attention of the gathered sequence keeps a little more), and the
    rest (tower, projector) stays."""
    import csv

    out = tmp_path / "sp.csv"
    proc = subprocess.run(torchrun_cmd(2, "--config", str(REPO / "configs" / "tiny_cpu.yaml"), "--frames", "96",
                                       "--task.max_prompt_len=1200", "--csv", str(out), module="train.bench.sp_memory"),
                          cwd=REPO, env=env_for_launch(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    rows = list(csv.DictReader(out.open()))
    assert sorted((int(r["sequence"]), int(r["rank"])) for r in rows) == [(1, 0), (1, 1), (2, 0), (2, 1)]
    assert len({r["tokens"] for r in rows}) == 1 and int(rows[0]["tokens"]) > 900
    for r in rows:
        if r["sequence"] == "2":
            assert 0.45 <= float(r["decoder_ratio_vs_sp1"]) <= 0.65, r
            rest = float(r["saved_mib"]) - float(r["decoder_saved_mib"])
            base = next(b for b in rows if b["sequence"] == "1" and b["rank"] == r["rank"])
            assert rest > 0.8 * (float(base["saved_mib"]) - float(base["decoder_saved_mib"])), (r, base)


def test_a_model_switched_to_ulysses_runs_plain_sdpa_outside_a_sharded_forward():
    """Evaluation and generation of a model whose LLM is switched to ``ulysses`` (one process, no slices): the
    same logits as SDPA on left-padded rows (the padding mask must still apply outside a sharded forward)."""
    from tests.train import exactness_worker as W
    from train.config import load_config
    from train.models import build_model
    from train.sequence_parallel import register_ulysses

    torch.manual_seed(0)
    cfg = load_config(REPO / "configs" / "tiny_cpu.yaml", W.OVERRIDES)
    model = build_model(cfg.model, W.tokenizer()).eval()
    ids = torch.randint(5, 200, (2, 12))
    mask = torch.ones_like(ids)
    mask[1, :5] = 0  # left padding, as generation pads
    want = model.logits(ids, mask)
    model.causal_lm.config._attn_implementation = register_ulysses()
    got = model.logits(ids, mask)
    torch.testing.assert_close(got[mask.bool()], want[mask.bool()], rtol=1e-5, atol=1e-5)
