"""The multi-task batch builder: examples per mode and reasoning source, labels, task ids, weights."""

from __future__ import annotations

import pytest
import torch

from train import prompts
from train.config import FrameLayout, TaskConfig, load_section
from train.loss import TASK_QA, TASK_REASON, task_token_counts, token_weights
from train.tasks import build_examples, collate, encode_prompt
from train.tokenizer import build_tokenizer, frame_token_id

LAYOUT = FrameLayout(num_frames=4, temporal_stride=1, tokens_per_group=4)


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def sample(qid="synthetic/train/v1/0", answer=1, reasoning="rec", frames=4, **kw):
    rec = None
    if reasoning == "rec":
        rec = {"qid": qid, "raw": "The ball is blue. So the answer is (B).", "refined": "The ball is blue.",
               "vcot": [f"cap {i}" for i in range(frames - 1)], "status": "ok"}
    out = {"qid": qid, "frames": torch.full((frames, 3, 8, 8), 7, dtype=torch.uint8),
           "question": "What color is the ball?", "options": ["red", "blue", "green"], "answer": answer,
           "qtype": "DO", "extra": {"reasoning": "A boy holds a ball. It is blue. So the answer is (B) blue."},
           "reasoning": rec}
    out.update(kw)
    return out


def targets(examples):
    return [(e.task, e.task_id, e.target) for e in examples]


def test_examples_per_mode_and_reasoning_source():
    s = sample()
    assert targets(build_examples(s, TaskConfig(mode="qa"))) == [("qa", TASK_QA, "(B)")]
    assert targets(build_examples(s, TaskConfig(mode="qa", answer_format="letter_text"))) == [
        ("qa", TASK_QA, "(B) blue")]
    assert targets(build_examples(s, TaskConfig(mode="mtl", reasoning_source="refined"))) == [
        ("qa", TASK_QA, "(B)"), ("reasoning", TASK_REASON, "The ball is blue.")]
    assert targets(build_examples(s, TaskConfig(mode="mtl", reasoning_source="raw")))[1] == (
        "reasoning", TASK_REASON, "The ball is blue. So the answer is (B).")
    assert targets(build_examples(s, TaskConfig(mode="mtl", reasoning_source="gt")))[1][2] == s["extra"]["reasoning"]
    assert targets(build_examples(s, TaskConfig(mode="mtl", reasoning_source="none"))) == [("qa", TASK_QA, "(B)")]
    assert targets(build_examples(s, TaskConfig(mode="stl"))) == [
        ("stl", TASK_QA, "The ball is blue.\nAnswer: (B)")]
    # Instructions differ per task, so QA and reasoning prompts are distinguishable.
    qa, reason = build_examples(s, TaskConfig(mode="mtl"))
    assert qa.instruction == prompts.INSTRUCTIONS["qa_letter"] and reason.instruction == prompts.INSTRUCTIONS["reasoning"]
    assert build_examples(s, TaskConfig(mode="stl"))[0].instruction == prompts.INSTRUCTIONS["stl"]


def test_missing_reasoning_or_answer():
    no_rec = sample(reasoning=None)
    assert targets(build_examples(no_rec, TaskConfig(mode="mtl"))) == [("qa", TASK_QA, "(B)")]
    # STL without reasoning text falls back to the plain QA target.
    assert targets(build_examples(no_rec, TaskConfig(mode="stl"))) == [("qa", TASK_QA, "(B)")]
    # A question without an answer still teaches reasoning, but no QA / STL target.
    unanswered = sample(answer=None)
    assert targets(build_examples(unanswered, TaskConfig(mode="mtl"))) == [
        ("reasoning", TASK_REASON, "The ball is blue.")]
    assert build_examples(unanswered, TaskConfig(mode="stl")) == []
    assert build_examples(unanswered, TaskConfig(mode="qa")) == []
    blank = sample()
    blank["reasoning"] = dict(blank["reasoning"], refined="  ")
    assert len(build_examples(blank, TaskConfig(mode="mtl"))) == 1


def test_bad_samples_name_the_question_and_field():
    with pytest.raises(ValueError, match=r"synthetic/train/v1/0.*'answer'"):
        build_examples(sample(answer=5), TaskConfig())
    with pytest.raises(KeyError, match="'options'"):
        build_examples({"qid": "x", "frames": torch.zeros(1), "question": "q"}, TaskConfig())
    bad = sample()
    bad["reasoning"]["vcot"] = ["only one"]
    with pytest.raises(ValueError, match=r"synthetic/train/v1/0.*'vcot'.*1 captions"):
        build_examples(bad, TaskConfig(use_vcot=True))
    with pytest.raises(ValueError, match="mode"):
        load_section(TaskConfig, {"mode": "multi"}, "task")
    with pytest.raises(ValueError, match="reasoning_source"):
        load_section(TaskConfig, {"reasoning_source": "teacher"}, "task")


def test_collate_labels_mask_only_the_targets(tok):
    cfg = TaskConfig(mode="mtl")
    exs = build_examples(sample(), cfg) + build_examples(sample("synthetic/train/v2/0", answer=0), TaskConfig(mode="qa"))
    b = collate(exs, tok, cfg, LAYOUT)
    L = b["input_ids"].shape[1]
    assert b["pixel_values"].shape == (3, 4, 3, 8, 8) and b["pixel_values"].dtype == torch.uint8
    assert b["qids"] == ["synthetic/train/v1/0", "synthetic/train/v1/0", "synthetic/train/v2/0"]
    assert b["tasks"] == ["qa", "reasoning", "qa"]
    for i, ex in enumerate(exs):
        tgt = b["labels"][i] != -100
        # Targets are exactly " {target}</s>" and equal the input tokens at those positions.
        assert tok.decode(b["labels"][i][tgt]) == f" {ex.target}</s>"
        assert torch.equal(b["labels"][i][tgt], b["input_ids"][i][tgt])
        assert set(b["task_ids"][i][tgt].tolist()) == {ex.task_id}
        assert torch.equal(b["task_ids"][i] != 0, tgt)
        # The target is one contiguous span ending at the last real token; padding is masked.
        n = int(b["attention_mask"][i].sum())
        pos = tgt.nonzero().flatten()
        assert int(pos[-1]) == n - 1 and int(pos[-1] - pos[0]) + 1 == int(tgt.sum())
        assert (b["input_ids"][i, n:] == tok.pad_token_id).all() and not b["attention_mask"][i, n:].any()
        assert b["input_ids"][i, 0] == tok.bos_token_id
        assert int((b["input_ids"][i] == frame_token_id(tok)).sum()) == LAYOUT.num_visual_tokens
    assert L == max(int(m.sum()) for m in b["attention_mask"])
    assert collate(exs, tok, cfg, LAYOUT, pad_to_multiple=64)["input_ids"].shape[1] % 64 == 0


def test_collate_is_deterministic_and_needs_the_model_layout(tok):
    cfg = TaskConfig()
    exs = build_examples(sample(), cfg)
    a, b = collate(exs, tok, cfg, LAYOUT), collate(exs, tok, cfg, LAYOUT)
    assert all(torch.equal(a[k], b[k]) for k in ("input_ids", "attention_mask", "labels", "task_ids"))
    with pytest.raises(TypeError, match="frame_layout"):
        collate(exs, tok, cfg, 4)
    with pytest.raises(ValueError, match=r"synthetic/train/v1/0.*frames"):
        collate(exs, tok, cfg, FrameLayout(8, 1, 4))


def test_prompt_interleaves_captions_per_frame_gap(tok):
    caps = ["first gap", None, "third gap"]
    ids, cut = encode_prompt(tok, LAYOUT, "Q?", ["a", "b"], "Do it.", caps)
    text = tok.decode(ids)
    assert not cut
    assert text.index("Frame 1:") < text.index("first gap") < text.index("Frame 2:") < text.index("Frame 3:")
    assert text.index("Frame 3:") < text.index("third gap") < text.index("Frame 4:") < text.index("Question: Q?")
    assert text.count("Transition:") == 2
    # Temporal stride 2: 2 groups; gap captions inside a group go after that group.
    layout2 = FrameLayout(4, temporal_stride=2, tokens_per_group=3)
    ids2, _ = encode_prompt(tok, layout2, "Q?", ["a"], "Do it.", ["g0", "g1", "g2"])
    t2 = tok.decode(ids2)
    assert ids2.count(frame_token_id(tok)) == 6 and "Frame 3:" not in t2
    assert t2.index("g0") < t2.index("g1") < t2.index("Frame 2:") < t2.index("g2") < t2.index("Question:")
    with pytest.raises(ValueError, match="2 captions given, 4 frames need 3"):
        encode_prompt(tok, LAYOUT, "Q?", ["a"], "Do it.", ["x", "y"], qid="q9")
    # use_vcot puts the reasoning record's captions into training prompts.
    exs = build_examples(sample(), TaskConfig(use_vcot=True))
    assert exs[0].captions == ["cap 0", "cap 1", "cap 2"]
    assert "Transition: cap 1" in tok.decode(collate(exs, tok, TaskConfig(), LAYOUT)["input_ids"][0])


def test_truncation_is_counted_and_impossible_prompts_fail(tok):
    long_q = sample(question="why " * 200, reasoning="rec")
    long_q["reasoning"]["refined"] = "word " * 300
    cfg = TaskConfig(mode="mtl", max_prompt_len=200, max_target_len=20)
    b = collate(build_examples(long_q, cfg), tok, cfg, LAYOUT)
    n_prompt = [int((b["labels"][i] == -100)[: int(b["attention_mask"][i].sum())].sum()) for i in range(2)]
    assert max(n_prompt) <= 200 and b["n_cut_prompts"] == 2
    assert int((b["labels"][1] != -100).sum()) == 20 and b["n_cut_targets"] == 1
    assert b["labels"][1][b["labels"][1] != -100][-1] == tok.eos_token_id  # eos kept after the cut
    with pytest.raises(ValueError, match=r"synthetic/train/v1/0.*max_prompt_len 30"):
        cfg2 = TaskConfig(max_prompt_len=30)
        collate(build_examples(sample(), cfg2), tok, cfg2, LAYOUT)


def test_token_weights_give_alpha_mean_qa_plus_beta_mean_reason(tok):
    alpha, beta = 0.7, 0.4
    cfg = TaskConfig(mode="mtl")
    samples = [sample(f"synthetic/train/v{i}/0", answer=i % 3) for i in range(4)]
    samples[1]["reasoning"]["refined"] = "A much longer reasoning text about the blue ball. " * 3
    full = collate([e for s in samples for e in build_examples(s, cfg)], tok, cfg, LAYOUT)
    ce = torch.rand(full["task_ids"].shape) * 5  # stand-in per-token losses
    want = alpha * ce[full["task_ids"] == 1].mean() + beta * ce[full["task_ids"] == 2].mean()
    n_qa, n_re = task_token_counts(full["task_ids"])
    got = (token_weights(full["task_ids"], n_qa, n_re, alpha, beta) * ce).sum()
    assert torch.allclose(got, want, rtol=1e-5)
    # Two micro-batches weighted with the step's total counts sum to the same loss.
    parts = []
    for half in (samples[:2], samples[2:]):
        mb = collate([e for s in half for e in build_examples(s, cfg)], tok, cfg, LAYOUT)
        ce_mb = torch.rand(mb["task_ids"].shape) * 5
        parts.append((mb["task_ids"], ce_mb))
    n_qa = sum(task_token_counts(t)[0] for t, _ in parts)
    n_re = sum(task_token_counts(t)[1] for t, _ in parts)
    got = sum((token_weights(t, torch.tensor(n_qa), torch.tensor(n_re), alpha, beta) * c).sum() for t, c in parts)
    want = (alpha * torch.cat([c[t == 1] for t, c in parts]).mean()
            + beta * torch.cat([c[t == 2] for t, c in parts]).mean())
    assert torch.allclose(got, want, rtol=1e-5)
    # Zero counts are guarded: no NaN, that task just weighs nothing.
    w = token_weights(full["task_ids"], n_qa, 0, alpha, beta)
    assert torch.isfinite(w).all() and (w[full["task_ids"] == 2] == 0).all()
    assert (w[full["task_ids"] == 0] == 0).all()


def _target_text(tok, batch, i):
    return tok.decode(batch["labels"][i][batch["labels"][i] != -100])


def test_long_stl_target_keeps_its_answer_line(tok, caplog):
    from train.tasks import reset_target_stats, target_stats
    reset_target_stats()
    cfg = TaskConfig(mode="stl", max_target_len=96)
    short = sample("synthetic/train/v0/0")
    long_s = sample("synthetic/train/v1/0")
    long_s["reasoning"]["refined"] = " ".join(f"Step {i}: the ball moves to spot {i}." for i in range(20))
    nosent = sample("synthetic/train/v2/0")
    nosent["reasoning"]["refined"] = "word " * 200  # no sentence end: shortened by tokens
    exs = [e for s in (short, long_s, nosent) for e in build_examples(s, cfg)]
    with caplog.at_level("WARNING", logger="train.tasks"):
        b = collate(exs, tok, cfg, LAYOUT)
    # The short target is unchanged.
    assert _target_text(tok, b, 0) == " The ball is blue.\nAnswer: (B)</s>"
    # The long one fits, ends with the whole answer line, and lost only whole sentences of its reasoning.
    for i in (1, 2):
        n = int((b["labels"][i] != -100).sum())
        assert n <= 96 and b["labels"][i][b["labels"][i] != -100][-1] == tok.eos_token_id
        assert _target_text(tok, b, i).endswith("\nAnswer: (B)</s>")
    text1 = _target_text(tok, b, 1)[1:-len("\nAnswer: (B)</s>")]
    assert text1.endswith(".") and exs[1].target.startswith(text1) and "Step 1:" in text1
    assert len(text1) < len(exs[1].target) - len("\nAnswer: (B)")
    text2 = _target_text(tok, b, 2)[1:-len("\nAnswer: (B)</s>")]
    assert text2.startswith("word word") and exs[2].target.startswith(text2)
    assert int((b["labels"][2] != -100).sum()) >= 90  # a token cut uses the budget
    # Counted per batch and process-wide, warned once.
    assert b["n_stl_shortened"] == 2 and b["n_cut_targets"] == 2
    assert target_stats() == {"stl_targets": 3, "stl_shortened": 2}
    warnings = [r for r in caplog.records if "STL target" in r.getMessage()]
    assert len(warnings) == 1 and "2 of 3" in warnings[0].getMessage()
    caplog.clear()
    with caplog.at_level("WARNING", logger="train.tasks"):
        b2 = collate(exs[1:2], tok, cfg, LAYOUT)
    assert b2["n_stl_shortened"] == 1 and target_stats()["stl_shortened"] == 3
    assert not [r for r in caplog.records if "STL target" in r.getMessage()]
    # Nothing over the limit: nothing counted, targets as before.
    assert collate(exs[:1], tok, cfg, LAYOUT)["n_stl_shortened"] == 0
    reset_target_stats()
    assert target_stats() == {"stl_targets": 0, "stl_shortened": 0}


def test_packed_stl_targets_keep_the_answer_line_too(tok):
    from train.packing import pack_collate
    cfg = TaskConfig(mode="stl", max_target_len=40)
    s = sample()
    s["reasoning"]["refined"] = "First the ball is red. Then it turns green. At last it is blue for good."
    b = pack_collate(build_examples(s, cfg), tok, cfg, LAYOUT, max_tokens_per_row=512)
    tgt = tok.decode(b["labels"][0][b["labels"][0] != -100])
    assert b["n_stl_shortened"] == 1 and tgt == " First the ball is red.\nAnswer: (B)</s>"


def test_an_answer_is_never_cut(tok):
    # QA: an answer longer than the budget is an error naming the qid and the lengths.
    s = sample("synthetic/train/v7/3", options=["red", "a very long blue option text", "green"])
    cfg = TaskConfig(mode="qa", answer_format="letter_text", max_target_len=10)
    with pytest.raises(ValueError, match=r"synthetic/train/v7/3: qa target .* is 34 tokens .*max_target_len 10"):
        collate(build_examples(s, cfg), tok, cfg, LAYOUT)
    # STL: the same when the answer line alone does not fit.
    cfg = TaskConfig(mode="stl", answer_format="letter_text", max_target_len=20)
    with pytest.raises(ValueError, match=r"synthetic/train/v7/3: stl answer line .* is 43 tokens .*max_target_len 20"):
        collate(build_examples(s, cfg), tok, cfg, LAYOUT)
    # MTL: the QA answer fits exactly; only the reasoning sequence is cut at its end (no answer in it).
    cfg = TaskConfig(mode="mtl", max_target_len=5)
    s = sample()
    b = collate(build_examples(s, cfg), tok, cfg, LAYOUT)
    assert _target_text(tok, b, 0) == " (B)</s>" and b["n_cut_targets"] == 1 and b["n_stl_shortened"] == 0
    assert _target_text(tok, b, 1) == " The</s>"
