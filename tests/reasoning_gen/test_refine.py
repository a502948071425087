"""Refinement and answer extraction on a hand-written corpus of teacher outputs."""

from __future__ import annotations

import json
import re

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


# Real replies of SmolLM2-135M-Instruct (the real teacher, /tmp/rt/final/reasoning.raw.jsonl of the
# run in docs/results/real_teacher.md), shortened, with their questions' options.
COUNTS = ["4", "3", "0", "1", "2"]
PLACES = ["in the top right", "in the top left", "in the bottom right", "in the bottom left"]
MOTIONS = ["it moved down", "it moved up and to the right", "it moved up", "it moved up and to the left",
           "it moved left"]
CHANGES = ["turned cyan", "moved to the bottom right", "turned white", "moved to the top right", "turned orange"]
WHEN = ["at the beginning of the video", "in the middle of the video", "never", "near the end of the video"]
REAL = [  # (options, raw reply, the teacher's choice, sentences refinement must keep)
    (COUNTS, "(C) 3\n\nThe answer is (C) 3.", 2, []),
    (["4", "1", "2", "0", "3"], "(C) 1\n\nThe answer is (A) 1.", 0, []),
    (PLACES, "(C) in the bottom left", None, []),
    (COUNTS, "(C) 4", None, []),
    (["cyan", "yellow", "blue", "orange", "purple"], "(C) Blue", 2, []),
    (MOTIONS, "(C) it moves up and to the right\n\nThe answer is (C). The purple diamond moved up and to the right.",
     2, ["The purple diamond moved up and to the right."]),
    (["turned white", "turned blue", "disappeared", "turned cyan", "turned red"],
     "(C) turned cyan\n\nThe yellow circle did not turn blue, but the other two yellow circles did turn blue. "
     "The answer is (C) turned cyan.", 2,
     ["The yellow circle did not turn blue, but the other two yellow circles did turn blue."]),
    (["at the beginning of the video", "near the end of the video", "never", "in the middle of the video"],
     "(C) never\n\nThe answer is (D) in the middle of the video.", 3, []),
    (["blue", "red", "cyan", "purple", "green"], "(C)\n\nThe answer is (C)\n\nThe answer is (C)\n\nThe answer is", 2, []),
    # echoed option lists: no choice
    (CHANGES, "(C) turned white\n(D) turned orange\n(E) turned red", None, []),
    (["turned green", "turned orange", "moved to the bottom left", "turned blue", "moved to the top left"],
     "(C) moved to the top left\n(D) turned blue\n(E) turned orange", None, []),
    (["never", "in the middle of the video", "near the end of the video", "at the beginning of the video"],
     "(C) near the end of the video\n(D) in the middle of the video\n(A) never\n(B) at the beginning of the video",
     None, []),
    (["cyan", "purple", "blue", "green", "white"],
     "Shot 4: purple circle in the top right.\nQuestion: What colour is the circle at the end of the video?\n"
     "Options:\n(A) cyan\n(B) purple\n(C)", None,
     ["Shot 4: purple circle in the top right.", "Question: What colour is the circle at the end of the video?"]),
    # cut off at max_new_tokens (batch 16, 2026-12-04): the last "(C" is a list line in the raw text, a bare
    # conclusion once the list is gone; refinement runs again until the audit is clean
    (["it moved down and to the right", "it moved down and to the left", "it moved up and to the right",
      "it moved left", "it moved right"],
     "(C) it moved up and to the right\n(D) it moved left\n(E) it moved right\n(A) it moved down and to the right\n"
     "(B) it moved down and to the left\n(C) it moved up and to the right\n(D) it moved left\n(E) it moved right\n"
     "(D) it moved up and to the right\n(E) it moved up and to the left\n(C", None, []),
]


@pytest.mark.parametrize("options,raw,choice,keep", REAL, ids=[f"real{i:02d}" for i in range(len(REAL))])
def test_real_teacher_replies_are_flagged_then_refined_leak_free(options, raw, choice, keep):
    assert extract_answer(raw, options) == choice
    assert audit_leak(raw, options, choice) is not None  # the detector sees the answer before refinement
    r = refine(raw, options)
    assert r.teacher_answer == choice and r.removed
    assert audit_leak(r.text, options, choice) is None, r.text
    assert audit_leak(r.text, options, None) is None, r.text  # no option named as an answer at all
    assert r.text == "\n".join(keep), r.text  # every answer line goes, the observations stay
    assert "Options:" not in r.text and not re.search(r"\([A-J]\)", r.text)


def test_old_refinements_of_the_real_teacher_are_leaks():
    """What the answer-sentences strategy used to leave: the reply's first line naming the choice."""
    assert audit_leak("(C) 3", COUNTS, 2)  # "3" is option B's text, C is the letter chosen
    assert audit_leak("(C) turned purple", ["a", "b", "turned purple"], 2)
    assert audit_leak("(C) it moves up and to the right\n\nThe purple diamond moved up and to the right.", MOTIONS, 2)
    assert audit_leak("(D) turned orange\n(E) turned red", CHANGES, 3)
    assert audit_leak("(C) in the bottom left", PLACES, None)  # no choice parsed: any option named counts
    mixed = "(C) near the end of the video"  # letter C, text of option D: names both
    assert audit_leak(mixed, WHEN, 2) and audit_leak(mixed, WHEN, 3) and not audit_leak(mixed, WHEN, 0)


@pytest.mark.parametrize("text", [
    "(C) blue", "C) blue", "C. blue", "C", "(C)", "**C**", "**C** blue", "Option C", "Option C: blue", "option (C)",
    "The answer is C", "Answer: C", "\\boxed{C}", "So the answer C fits.", "Blue.", "blue",
    "The circle is red.\n(C) blue", "The circle is red. (C) blue", "The circle is red.\nblue",
])
def test_detector_flags_every_answer_form(text):
    opts = ["red", "green", "blue", "yellow"]
    assert audit_leak(text, opts, 2), text
    assert audit_leak(text, opts, None), text
    r = refine(text, opts)
    assert audit_leak(r.text, opts, 2) is None and audit_leak(r.text, opts, None) is None, (text, r.text)
    assert r.text in ("", "The circle is red."), r.text


@pytest.mark.parametrize("text", [
    "In the fourth shot, the circle is blue in the top left.",
    "The circle is blue in the top left.",
    "Shot 4: blue circle in the top right.",
    "The blue patch does not suggest (C) at all.",
    "(C) would need a second shot of the circle.",
    "Option C mentions a blue circle, which appears in shot 2.",
    "Is the answer C?",
])
def test_observations_and_discussion_are_not_leaks(text):
    opts = ["red", "green", "blue", "yellow"]
    assert audit_leak(text, opts, 2) is None and audit_leak(text, opts, None) is None
    assert refine(text, opts).text == text and extract_answer(text, opts) is None


def test_option_lists_state_no_choice_unless_a_conclusion_does():
    opts = ["red", "green", "blue", "yellow"]
    echo = "(A) red\n(B) green\n(C) blue"
    assert extract_answer(echo, opts) is None
    assert extract_answer("(C) blue\n(D) yellow", opts) is None
    assert extract_answer("red\ngreen\nblue", opts) is None  # option texts listed, one a line
    assert extract_answer(echo + "\n\nThe circle is blue at the end. So the answer is (C) blue.", opts) == 2
    assert extract_answer("The circle is blue at the end.\n(C) blue", opts) == 2  # a single option line answers
    assert extract_answer("The circle moves to the right.\nin the top left", PLACES) == 1
    r = refine(echo + "\n\nThe circle is blue at the end. So the answer is (C) blue.", opts)
    assert r.text == "The circle is blue at the end." and r.teacher_answer == 2
    # the complete option list, in order, names every option alike: it stays, and is no leak
    full = "A) red\nB) green\nC) blue\nD) yellow\n\nThe circle is blue at the end. Answer: C"
    r = refine(full, opts)
    assert r.text == "A) red\nB) green\nC) blue\nD) yellow\n\nThe circle is blue at the end."
    assert audit_leak(r.text, opts, 2) is None
