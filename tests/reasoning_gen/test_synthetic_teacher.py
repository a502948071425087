"""The synthetic teacher: its errors follow from false observations (or are slips at their own rate),
its accuracy matches the rates, its texts never contradict themselves and refine to leak-free text."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

from reasoning_gen.answers import LETTERS, extract_answer, find_conclusions
from reasoning_gen.backends import GenRequest, build_backend
from reasoning_gen.backends.synthetic import FORMATS, RESTATING_FORMATS, SyntheticTeacher, expected_accuracy
from reasoning_gen.prompts import reasvqa_prompt, vcot_common_prompt
from reasoning_gen.refine import audit_leak, refine
from reasoning_gen.refine import main as refine_main

COLOURS = ["red", "green", "blue", "yellow", "white", "cyan"]
ORD = ["first", "second", "third", "fourth", "fifth"]


def _colour_question(i: int, rng: np.random.Generator) -> dict:
    """A hand-written "colour at the end" question whose false steps carry implications.

    The last step's false version names a wrong end colour (implies that option); a middle step's
    false version, in every other question, says the object changed again (implies another option);
    the other false steps change nothing (null).
    """
    n = int(rng.integers(2, 5))
    options = [str(c) for c in rng.permutation(COLOURS)[:5]]
    answer = int(rng.integers(5))
    wrong = [j for j in range(5) if j != answer]
    end_false, mid_false = (int(x) for x in rng.choice(wrong, 2, replace=False))
    steps = [f"In the {ORD[k]} shot, the circle is {options[answer]} in the top left." for k in range(n)]
    false = [f"In the {ORD[k]} shot, the circle is in the bottom right." for k in range(n)]
    implies: list[int | None] = [None] * n
    false[-1] = f"In the {ORD[n - 1]} shot, the circle is {options[end_false]} in the top left."
    implies[-1] = end_false
    if i % 2 and n >= 3:
        false[1] = f"In the {ORD[1]} shot, the circle turns {options[mid_false]} and stays so."
        implies[1] = mid_false
    return {"qid": f"synthetic/train/h{i}/q0", "options": options, "answer": answer,
            "extra": {"reasoning_steps": steps, "false_steps": false, "false_implies": implies}}


@pytest.fixture(scope="module")
def implied_qas() -> list[dict]:
    rng = np.random.default_rng(21)
    return [_colour_question(i, rng) for i in range(300)]


@pytest.fixture(scope="module")
def shot_qas() -> list[dict]:
    """Real shot-scene questions (no video encoding needed); ``false_implies`` removed: old records."""
    from data_shards.synth.shots import make_shot_questions, make_shot_scene

    out = []
    for i in range(60):
        rng = np.random.default_rng([11, i])
        for j, q in enumerate(make_shot_questions(make_shot_scene(rng, 96, 96, 8, 32), rng, 6)):
            extra = {k: v for k, v in q["extra"].items() if k != "false_implies"}
            out.append({**q, "qid": f"synthetic/train/v{i}/q{j}", "extra": extra})
    assert len(out) >= 300
    return out


def _draws(teacher: SyntheticTeacher, qas: list[dict], repeats: int):
    """Teacher outputs for ``repeats`` distinct qids per question (the qid is the only seed input)."""
    for r in range(repeats):
        for qa in qas:
            e = qa["extra"]
            yield qa, teacher.reason(f"{qa['qid']}-{r}", qa["options"], qa["answer"], e["reasoning_steps"],
                                     e["false_steps"], e.get("false_implies"))


def _within(hits: int, n: int, mean: float, var: float, z: float = 4.5) -> tuple[bool, str]:
    """|hits - n * mean| within z standard deviations (a false alarm below 1e-5)."""
    err = z * math.sqrt(max(var, 1e-12))
    return abs(hits - n * mean) <= err, f"{hits}/{n} = {hits / n:.4f}, expected {mean:.4f} +- {err / n:.4f}"


def _implied(qa: dict, errors: list[bool]) -> int | None:
    """The option the last flipped step with an implication leads to (the test's own reading)."""
    implies = qa["extra"]["false_implies"]
    led = [i for i, e in enumerate(errors) if e and implies[i] is not None]
    return implies[led[-1]] if led else None


@pytest.mark.parametrize("p,s", [(0.15, 0.1), (0.4, 0.0), (0.0, 0.3), (0.3, 0.25)])
def test_accuracy_and_rates_with_implications(implied_qas, p, s):
    teacher = SyntheticTeacher(seed=5, step_error_rate=p, slip_rate=s)
    draws = list(_draws(teacher, implied_qas, repeats=4))
    n = len(draws)
    # expected accuracy per question: no slip, and none of its m implying steps flipped
    probs = [(1 - s) * (1 - p) ** sum(x is not None for x in qa["extra"]["false_implies"]) for qa, _ in draws]
    correct = sum(out.choice == qa["answer"] for qa, out in draws)
    ok, msg = _within(correct, n, sum(probs) / n, sum(q * (1 - q) for q in probs))
    assert ok, "teacher accuracy " + msg
    assert abs(sum(probs) / n - sum(expected_accuracy(p, s, len(qa["extra"]["reasoning_steps"]),
                                                      qa["extra"]["false_implies"], qa["answer"])
                                    for qa, _ in draws) / n) < 1e-9
    slips = sum(out.cause == "slip" for _, out in draws)
    ok, msg = _within(slips, n, s, n * s * (1 - s))
    assert ok, "slip rate " + msg
    steps = sum(len(out.step_errors) for _, out in draws)
    ok, msg = _within(sum(sum(out.step_errors) for _, out in draws), steps, p, steps * p * (1 - p))
    assert ok, "step error rate " + msg


def test_a_false_observation_leads_to_its_conclusion(implied_qas):
    for s in (0.0, 0.3):
        teacher = SyntheticTeacher(seed=2, step_error_rate=0.5, slip_rate=s)
        led = 0
        for qa, out in _draws(teacher, implied_qas, repeats=2):
            want = _implied(qa, out.step_errors)
            if out.cause == "slip":
                assert s > 0 and out.choice != qa["answer"] and out.decisive_step is None
                continue
            if want is None:
                assert (out.choice, out.cause) == (qa["answer"], "none"), out
                continue
            led += 1
            assert (out.choice, out.cause) == (want, "observation"), (qa, out)
            assert qa["extra"]["false_implies"][out.decisive_step] == want and out.step_errors[out.decisive_step]
            # the false step it follows from is in the text, before any mid-text statement of the answer
            assert qa["extra"]["false_steps"][out.decisive_step].rstrip(".") in out.text
        assert led > 100


def test_old_records_without_implications(shot_qas):
    """No ``false_implies``: a chain with a flipped step concludes wrongly with probability mislead_rate."""
    p, s, r = 0.2, 0.1, 0.5
    teacher = SyntheticTeacher(seed=9, step_error_rate=p, slip_rate=s, mislead_rate=r)
    draws = list(_draws(teacher, shot_qas, repeats=3))
    probs = [(1 - s) * (1 - r * (1 - (1 - p) ** len(qa["extra"]["reasoning_steps"]))) for qa, _ in draws]
    correct = sum(out.choice == qa["answer"] for qa, out in draws)
    ok, msg = _within(correct, len(draws), sum(probs) / len(draws), sum(q * (1 - q) for q in probs))
    assert ok, "teacher accuracy " + msg
    for qa, out in draws:
        if out.cause == "observation":
            assert any(out.step_errors) and out.choice != qa["answer"]
        if not any(out.step_errors) and out.cause != "slip":
            assert out.choice == qa["answer"]


def test_flips_do_not_depend_on_the_answer_rates(implied_qas):
    a = SyntheticTeacher(seed=4, step_error_rate=0.3, slip_rate=0.0)
    b = SyntheticTeacher(seed=4, step_error_rate=0.3, slip_rate=0.9)
    for (_, x), (_, y) in zip(_draws(a, implied_qas[:50], 1), _draws(b, implied_qas[:50], 1)):
        assert x.step_errors == y.step_errors


_LETTER_MENTION = re.compile(r"\(([A-J])\)|\b(?:[Oo]ption|[Aa]nswer is|[Aa]nswer:|choose)\s+\(?([A-J])\b"
                             r"|\\boxed\{([A-J])\}|^([A-J])\.|\*\*(?:Final answer: )?([A-J])\*\*", re.M)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_every_format_is_consistent_and_refines_leak_free(implied_qas, shot_qas, fmt):
    teacher = SyntheticTeacher(seed=3, step_error_rate=0.3, slip_rate=0.2, formats=[fmt])
    for qa, out in list(_draws(teacher, implied_qas[:120] + shot_qas[:120], 1)):
        opts, e = qa["options"], qa["extra"]
        used = [bad if err else good for good, bad, err in zip(e["reasoning_steps"], e["false_steps"], out.step_errors)]
        # one answer only: every stated conclusion and every letter named (bar the distractor) is the choice
        stated = {c.choice for c in find_conclusions(out.text, opts) if c.choice is not None}
        assert stated == {out.choice}, out.text
        letters = {next(g for g in m.groups() if g).upper() for m in _LETTER_MENTION.finditer(out.text)}
        if fmt == "distractor":
            letters.discard(re.match(r"Option ([A-J])", out.text).group(1))
        assert letters <= {LETTERS[out.choice]}, out.text  # text-only formats name no letter
        assert extract_answer(out.text, opts) == out.choice, out.text
        if fmt in RESTATING_FORMATS and fmt != "mid_text" and len(used) > 1:
            assert len(find_conclusions(out.text, opts)) >= 2, out.text  # restated, then concluded
        # the detector sees the unrefined answer; the refined text keeps every step and states no option
        assert audit_leak(out.text, opts, out.choice) is not None, out.text
        r = refine(out.text, opts)
        assert r.teacher_answer == out.choice and r.removed
        for step in used:
            assert step in r.text, (out.text, r.text)
        assert audit_leak(r.text, opts, out.choice) is None, (out.text, r.text)
        assert audit_leak(r.text, opts, None) is None, (out.text, r.text)


def test_formats_vary_and_answers_are_restated(implied_qas):
    outs = [out for _, out in _draws(SyntheticTeacher(seed=1), implied_qas, repeats=2)]
    assert {o.format for o in outs} == set(FORMATS)
    assert 0.15 < sum(o.restated for o in outs) / len(outs) < 0.45


def test_detector_reads_restatements_but_not_observations():
    opts = ["red", "green", "blue", "yellow"]
    assert audit_leak("In the second shot, the circle is blue, which already suggests (C) blue.", opts, 2)
    assert audit_leak("So far, this points to option C (blue).", opts, 2)
    assert audit_leak("This already suggests (C) blue.", opts, 2)
    assert audit_leak("In the fourth shot, the circle is blue in the top left.", opts, 2) is None
    assert audit_leak("The blue patch does not suggest (C) at all.", opts, 2) is None
    r = refine("In the first shot, the circle is red. In the second shot, the circle is blue, which already "
               "suggests (C) blue. In the third shot, the circle is blue. So the answer is (C) blue.", opts)
    assert r.text == ("In the first shot, the circle is red. In the second shot, the circle is blue. "
                      "In the third shot, the circle is blue.")


def test_deterministic_per_seed_and_qid(implied_qas):
    qa = implied_qas[1]
    e = qa["extra"]
    args = (qa["options"], qa["answer"], e["reasoning_steps"], e["false_steps"], e["false_implies"])
    a = SyntheticTeacher(seed=3).reason("synthetic/x/v/q", *args)
    assert a == SyntheticTeacher(seed=3).reason("synthetic/x/v/q", *args)
    others = {SyntheticTeacher(seed=s).reason("synthetic/x/v/q", *args).text for s in range(4, 12)}
    assert len(others | {a.text}) > 1


def test_backend_tasks_and_errors(implied_qas, shot_qas):
    backend = build_backend("synthetic", seed=0, fail_rate=0.0)
    qa = shot_qas[1]
    reqs = [GenRequest(reasvqa_prompt(qa["question"], qa["options"], 8), None, qa["qid"], qa),
            GenRequest(vcot_common_prompt(2, 8), None, qa["qid"] + "#pair2", qa, {"pair": 2, "num_frames": 8}),
            GenRequest(reasvqa_prompt("Q?", ["a", "b"], 8), None, "nextqa/val/1/2",
                       {"qid": "nextqa/val/1/2", "options": ["a", "b"], "answer": 0, "extra": {}})]
    res = backend.generate(reqs)
    assert res[0].ok and extract_answer(res[0].text, qa["options"]) is not None
    assert res[1].ok and res[1].text.startswith("Both frames")
    assert not res[2].ok and "only works on the synthetic dataset" in res[2].error
    with pytest.raises(ValueError, match="step_error_rate"):
        SyntheticTeacher(step_error_rate=1.5)
    with pytest.raises(ValueError, match="slip_rate"):
        SyntheticTeacher(slip_rate=-0.1)
    with pytest.raises(TypeError, match="bad options"):
        build_backend("synthetic", wrong_answer_rate=0.3)
    # the backend reads extra.false_implies: every step false, no slips -> the implied option
    sure = build_backend("synthetic", step_error_rate=1.0, slip_rate=0.0)
    h = implied_qas[0]
    text = sure.generate([GenRequest(reasvqa_prompt("Q?", h["options"], 8), None, h["qid"], h)])[0].text
    assert extract_answer(text, h["options"]) == h["extra"]["false_implies"][-1]
    broken = {**h, "extra": {**h["extra"], "false_implies": [0]}}
    res = sure.generate([GenRequest(reasvqa_prompt("Q?", h["options"], 8), None, h["qid"], broken)])[0]
    assert not res.ok and "false_implies" in res.error
    flaky = build_backend("synthetic", fail_rate=0.5)
    failed = sum(not r.ok for r in flaky.generate([GenRequest(reqs[0].prompt, None, f"k{i}", qa) for i in range(200)]))
    assert 60 < failed < 140


def test_refine_cli_reports_leak_rate_and_accuracy(implied_qas, tmp_path, capsys):
    """Raw synthetic-teacher texts through the refine CLI: leak rate 0, accuracy = the teacher's."""
    from data_shards.reasoning_records import make_record
    from data_shards.schema import QA, VideoRecord, write_records

    teacher = SyntheticTeacher(seed=7, step_error_rate=0.2, slip_rate=0.1)
    recs, raws, correct = [], [], 0
    for qa, out in _draws(teacher, implied_qas[:150], 1):
        qid = qa["qid"]
        vid = qid.split("/")[2]
        recs.append(VideoRecord(vid, "synthetic", "train", f"{vid}.mp4",
                                [QA(qid, "What colour is the circle at the end?", qa["options"], qa["answer"], "DO")]))
        raws.append(make_record(qid, "synthetic", "reasvqa-v1", raw=out.text))
        correct += out.choice == qa["answer"]
    write_records(recs, tmp_path / "records.jsonl")
    (tmp_path / "raw.jsonl").write_text("".join(json.dumps(r) + "\n" for r in raws))
    assert refine_main(["--in", str(tmp_path / "raw.jsonl"), "--out", str(tmp_path / "refined.jsonl"),
                        "--records", str(tmp_path / "records.jsonl")]) == 0
    stats = json.loads((tmp_path / "refined.stats.json").read_text())
    assert stats["refined"] == 150 and stats["leaks"] == 0 and stats["leak_rate"] == 0.0
    assert stats["teacher_accuracy"] == pytest.approx(correct / 150)
    assert "leak rate 0.000" in capsys.readouterr().out
