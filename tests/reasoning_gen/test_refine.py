"""Refinement and answer extraction on a hand-written corpus of teacher outputs."""

from __future__ import annotations

import json

import pytest

from reasoning_gen.answers import extract_answer
from reasoning_gen.refine import audit_leak, refine
from reasoning_gen.refine import main as refine_main
from tests.reasoning_gen.refine_corpus import CASES, KITCHEN, MARKER_CASES, SHAPES


def test_corpus_is_large_and_varied():
    assert len(CASES) >= 40
    texts = [c["text"] for c in CASES]
    assert sum("\n" in t for t in texts) >= 10  # multi-line: lists, markdown, answer lines
    assert any(c["answer"] is None for c in CASES)


def test_the_conclusion_marker_class_has_its_own_cases():
    """>= 20 conclusions with Thus / Hence / Therefore / So / Conclusion / Final answer / Overall, and
    marker sentences that only discuss options (nothing removed)."""
    assert sum(c["answer"] is not None for c in MARKER_CASES) >= 20
    assert sum(c["answer"] is None for c in MARKER_CASES) >= 3
    assert sum("(option" in c["text"] for c in MARKER_CASES) >= 5


@pytest.mark.parametrize("case", CASES, ids=[f"case{i:02d}" for i in range(len(CASES))])
def test_answer_sentences_removes_conclusion_keeps_steps(case):
    r = refine(case["text"], case["options"])
    assert r.teacher_answer == case["answer"], f"teacher answer of {case['text']!r}"
    for step in case["keep"]:
        assert step in r.text, f"lost reasoning {step!r}; refined: {r.text!r}"
    for frag in case["gone"]:
        assert frag not in r.text, f"conclusion {frag!r} still in refined text {r.text!r}"
    assert (len(r.removed) > 0) == (case["answer"] is not None)
    assert audit_leak(r.text, case["options"], r.teacher_answer) is None


def test_leak_audit_flags_unrefined_texts():
    leaks = [audit_leak(c["text"], c["options"], c["answer"]) for c in CASES if c["answer"] is not None]
    assert all(leaks), [c["text"] for c, leak in zip(CASES, leaks) if not leak]
    # a mention that is not a conclusion is not a leak
    assert audit_leak("Option B mentions a cake, which is on the table.", KITCHEN, 1) is None
    assert audit_leak("The man is cutting the cake (B).", KITCHEN, 1) is not None


def test_strategy_none_and_first_k():
    text = "1. The man enters.\n2. He takes a knife.\n3. He leans over the cake.\n4. So the answer is B."
    assert refine(text, KITCHEN, "none").text == text
    r = refine(text, KITCHEN, "first-k-steps", k=2)
    assert r.text == "1. The man enters.\n2. He takes a knife."
    assert r.removed == ["He leans over the cake.", "So the answer is B."] and r.teacher_answer == 1
    prose = "The man enters. He takes a knife. The answer is (B)."
    assert refine(prose, KITCHEN, "first-k-steps", k=2).text == "The man enters. He takes a knife."
    with pytest.raises(ValueError, match="unknown refinement strategy"):
        refine(prose, KITCHEN, "last-sentence")


@pytest.mark.parametrize("text,want", [
    ("B", 1), ("(C)", 2), ("B.", 1), ("D) open the fridge", 3), ("cut the cake", 1), ("The answer is E.", 4),
    ("Answer: (A) throw the ball", 0), ("**C**", 2), ("", None), ("I am not sure.", None),
    ("The answer is not A.", None), ("Option A is unlikely.", None), ("wash the dishes.", 2),
    ("B is the answer.", 1), ("Answer - C", 2), ("<answer>D</answer>", 3), ("Thus, B.", 1), ("Answer: e", 4),
    ("B is not the answer.", None), ("I think it is not B.", None), ("So, a ball was thrown.", None),
])
def test_extract_answer_short_generations(text, want):
    assert extract_answer(text, KITCHEN) == want


def test_extract_answer_edge_cases():
    options = ["a man in red", "a woman", "a dog"]
    # "A man in red" is an option's text, not the letter A followed by words
    assert extract_answer("The answer is A man in red.", ["the dog", "the cat", "a man in red"]) == 2
    assert extract_answer("The answer is A.", options) == 0
    assert extract_answer("The answer is F.", options) is None  # letter beyond the options
    # the last explicit statement wins over an earlier one
    assert extract_answer("At first the answer is A. Looking again, the answer is C.", options) == 2
    # a longer option wins over one it contains
    assert extract_answer("So it was the dark red one.", ["red", "dark red"]) == 1
    assert extract_answer("So the yellow diamond bounced (D).", SHAPES) == 3


def test_refine_cli(tmp_path, capsys):
    from data_shards.reasoning_records import make_record
    from data_shards.schema import QA, VideoRecord, write_records

    recs, raws = [], []
    for i, c in enumerate(CASES[:12]):
        qid = f"synthetic/val/v{i}/q0"
        truth = c["answer"] if i % 3 else (c["answer"] + 1) % len(c["options"]) if c["answer"] is not None else None
        recs.append(VideoRecord(f"v{i}", "synthetic", "val", f"v{i}.mp4",
                                [QA(qid, "What happens?", c["options"], truth, "CW")]))
        raws.append(make_record(qid, "t", "reasvqa-v1", raw=c["text"]))
    raws.append(make_record("synthetic/val/v99/q0", "t", "reasvqa-v1", status="failed", error="timeout"))
    write_records(recs, tmp_path / "records.jsonl")
    (tmp_path / "raw.jsonl").write_text("".join(json.dumps(r) + "\n" for r in raws))
    assert refine_main(["--in", str(tmp_path / "raw.jsonl"), "--out", str(tmp_path / "refined.jsonl"),
                        "--records", str(tmp_path / "records.jsonl")]) == 0
    out = [json.loads(x) for x in (tmp_path / "refined.jsonl").read_text().splitlines()]
    assert len(out) == 13 and out[-1]["status"] == "failed"
    printed = capsys.readouterr().out
    graded = [(o, c) for o, c in zip(out, CASES[:12]) if c["answer"] is not None]
    correct = sum(o["teacher_correct"] for o, _ in graded)
    assert correct == sum(1 for i, c in enumerate(CASES[:12]) if c["answer"] is not None and i % 3)
    assert f"accuracy {correct / len(graded):.3f}" in printed and "leaks" in printed and "failed 1" in printed
    for o, c in zip(out, CASES[:12]):
        assert o["teacher_answer"] == c["answer"] and o["refine"] == "answer-sentences"
        assert all(step in o["refined"] for step in c["keep"])
    stats = json.loads((tmp_path / "refined.stats.json").read_text())
    assert stats["teacher_accuracy"] == pytest.approx(correct / len(graded))
    assert stats["leaks"] == 0 and stats["leak_rate"] == 0.0 and stats["refined"] == 12
    assert refine_main(["--in", str(tmp_path / "raw.jsonl"), "--out", str(tmp_path / "none.jsonl"), "--strategy",
                        "none", "--records", str(tmp_path / "records.jsonl"), "--stats", str(tmp_path / "s.json")]) == 0
    leaky = json.loads((tmp_path / "s.json").read_text())  # raw texts kept: the detector counts them
    assert leaky["leaks"] == len(graded) and leaky["leak_rate"] == pytest.approx(len(graded) / 12)


def test_mid_text_statements_the_audit_flags_are_removed():
    """A mid-text sentence the leak audit reads as the concluded option goes; its observation stays."""
    text = "The man walks in. The man is cutting the cake (B). He puts the knife down. So the answer is B."
    r = refine(text, KITCHEN)
    assert r.text == "The man walks in. The man is cutting the cake. He puts the knife down."
    assert audit_leak(r.text, KITCHEN, 1) is None and audit_leak(text, KITCHEN, 1) is not None
    # a trailing mention of another option than the conclusion is not the answer: it stays
    other = "The man is next to the fridge (D). So the answer is B."
    assert refine(other, KITCHEN).text == "The man is next to the fridge (D)."
