"""The synthetic teacher: error rates match the settings (binomial bounds), texts are refinable."""

from __future__ import annotations

import math

import numpy as np
import pytest

from reasoning_gen.answers import extract_answer
from reasoning_gen.backends import GenRequest, build_backend
from reasoning_gen.backends.synthetic import FORMATS, SyntheticTeacher
from reasoning_gen.prompts import reasvqa_prompt, vcot_common_prompt
from reasoning_gen.refine import audit_leak, refine


@pytest.fixture(scope="module")
def qas():
    """Real synthetic-dataset questions (scenes simulated, no video encoding needed)."""
    from data_shards.synth.questions import make_questions
    from data_shards.synth.render import make_scene

    out = []
    for i in range(80):
        rng = np.random.default_rng([11, i])
        for j, q in enumerate(make_questions(make_scene(rng, 96, 96, 8, 32), rng, 6)):
            out.append({"qid": f"synthetic/train/v{i}/q{j}", **q})
    assert len(out) >= 300
    return out


def _draws(teacher, qas, repeats):
    """Teacher outputs for ``repeats`` distinct qids per question (the qid is the only seed input)."""
    for r in range(repeats):
        for qa in qas:
            e = qa["extra"]
            yield qa, teacher.reason(f"{qa['qid']}-{r}", qa["options"], qa["answer"], e["reasoning_steps"],
                                     e["false_steps"])


def _within_binomial(hits: int, n: int, p: float, z: float = 4.5) -> tuple[bool, str]:
    """|hits/n - p| within z standard errors (a false alarm below 1e-5)."""
    err = z * math.sqrt(p * (1 - p) / n)
    return abs(hits / n - p) <= err, f"{hits}/{n} = {hits / n:.4f}, expected {p} +- {err:.4f}"


@pytest.mark.parametrize("p_step,q_wrong", [(None, None), (0.5, 0.1), (0.0, 1.0)])
def test_rates_match_settings(qas, p_step, q_wrong):
    kwargs = {} if p_step is None else {"step_error_rate": p_step, "wrong_answer_rate": q_wrong}
    teacher = SyntheticTeacher(seed=5, **kwargs)
    draws = list(_draws(teacher, qas, repeats=6))
    n = len(draws)
    correct = sum(out.choice == qa["answer"] for qa, out in draws)
    steps = sum(len(out.step_errors) for _, out in draws)
    wrong_steps = sum(sum(out.step_errors) for _, out in draws)
    ok, msg = _within_binomial(correct, n, 1 - teacher.q)
    assert ok, "teacher accuracy " + msg
    ok, msg = _within_binomial(wrong_steps, steps, teacher.p)
    assert ok, "step error rate " + msg
    if p_step is None:  # the defaults: about the papers' ~67 % teacher accuracy
        assert 0.62 <= correct / n <= 0.72
    # what the text says agrees with the recorded truth: its answer and its (possibly false) steps
    for qa, out in draws[:600]:
        e = qa["extra"]
        assert extract_answer(out.text, qa["options"]) == out.choice, out.text
        for good, bad, err in zip(e["reasoning_steps"], e["false_steps"], out.step_errors):
            assert (bad if err else good) in out.text


def test_texts_vary_in_format_and_refine_cleanly(qas):
    teacher = SyntheticTeacher(seed=1)
    seen = set()
    for qa, out in _draws(teacher, qas, repeats=2):
        seen.add(out.format)
        r = refine(out.text, qa["options"])
        assert r.teacher_answer == out.choice, (out.format, out.text)
        e = qa["extra"]
        for good, bad, err in zip(e["reasoning_steps"], e["false_steps"], out.step_errors):
            assert (bad if err else good) in r.text, (out.format, out.text, r.text)
        assert audit_leak(r.text, qa["options"], r.teacher_answer) is None, (out.format, r.text)
    assert seen == set(FORMATS)


def test_deterministic_per_seed_and_qid(qas):
    qa = qas[0]
    e = qa["extra"]
    args = (qa["options"], qa["answer"], e["reasoning_steps"], e["false_steps"])
    a = SyntheticTeacher(seed=3).reason("synthetic/x/v/q", *args)
    assert a == SyntheticTeacher(seed=3).reason("synthetic/x/v/q", *args)
    others = {SyntheticTeacher(seed=s).reason("synthetic/x/v/q", *args).text for s in range(4, 12)}
    assert len(others | {a.text}) > 1


def test_backend_tasks_and_errors(qas):
    backend = build_backend("synthetic", seed=0, fail_rate=0.0)
    qa = qas[1]
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
    flaky = build_backend("synthetic", fail_rate=0.5)
    failed = sum(not r.ok for r in flaky.generate(reqs[:1] * 1 + [GenRequest(reqs[0].prompt, None, f"k{i}", qa)
                                                               for i in range(200)]))
    assert 60 < failed < 140
