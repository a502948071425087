"""Paired comparisons: the counts, intervals and MDEs on run directories the test writes, and the
report section and teacher crossover they feed."""

from __future__ import annotations

import json
import math

import pytest

from eval.compare import correctness, crossover, mcnemar_p, mde_seeds, paired, seeds_needed
from eval.report import find_runs, write_report


def write_run(d, label, seed, correct, teacher_acc=None, source="none", mode="qa", beta=None):
    """An eval run directory as ``python -m eval run`` writes it: run.json, scores.json, records.jsonl."""
    d.mkdir(parents=True)
    (d / "records.jsonl").write_text("".join(
        json.dumps({"qid": f"synthetic/val/v/q{i}", "gold": 0, "prediction": 0 if c else 1, "correct": c}) + "\n"
        for i, c in enumerate(correct)))
    acc = 100.0 * sum(correct) / len(correct)
    (d / "scores.json").write_text(json.dumps({"overall": acc, "per_type": {"D": acc}, "count": len(correct)}))
    (d / "run.json").write_text(json.dumps({"label": label, "meta": {
        "seed": seed, "teacher_acc": teacher_acc, "reasoning_source": source, "task_mode": mode, "beta": beta}}))
    return d


def test_paired_counts_and_intervals(tmp_path):
    # seed 0: A right on q0..q5, B on q0..q3 + q6..q9 -> B-only 4, A-only 2 of 20; seed 1: B-only 3, A-only 0
    a0 = [i < 6 for i in range(20)]
    b0 = [i < 4 or 6 <= i < 10 for i in range(20)]
    a1 = [i < 10 for i in range(20)]
    b1 = [i < 13 for i in range(20)]
    runs_a = {0: write_run(tmp_path / "a0", "A", 0, a0), 1: write_run(tmp_path / "a1", "A", 1, a1)}
    runs_b = {0: write_run(tmp_path / "b0", "B", 0, b0), 1: write_run(tmp_path / "b1", "B", 1, b1)}
    c = paired(runs_a, runs_b)
    assert c["seeds"] == [0, 1] and c["diffs"] == pytest.approx([10.0, 15.0])
    assert (c["b_only"], c["a_only"], c["questions"]) == (7, 2, 40)
    assert c["q_diff"] == pytest.approx(100 * 5 / 40)
    se = math.sqrt((9 / 40 - (5 / 40) ** 2) / 40)
    assert c["q_hi"] - c["q_diff"] == pytest.approx(100 * 1.959964 * se)
    assert c["sd"] == pytest.approx(math.sqrt(12.5))
    assert c["mean"] == pytest.approx(12.5) and c["hi"] - c["mean"] == pytest.approx(12.706 * math.sqrt(12.5) / math.sqrt(2))
    assert c["q_p"] == pytest.approx(mcnemar_p(7, 2))
    # the other way round: every difference flips sign, the statistics do not change
    r = paired(runs_b, runs_a)
    assert r["q_diff"] == pytest.approx(-c["q_diff"]) and r["q_p"] == pytest.approx(c["q_p"])


def test_paired_refuses_different_questions_and_no_common_seed(tmp_path):
    a = write_run(tmp_path / "a", "A", 0, [True, False, True])
    b = write_run(tmp_path / "b", "B", 0, [True, False])
    with pytest.raises(ValueError, match="different questions"):
        paired({0: a}, {0: b})
    with pytest.raises(ValueError, match="no common seed"):
        paired({0: a}, {1: b})
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "records.jsonl").write_text('{"qid": "q0", "gold": 1}\n')
    with pytest.raises(ValueError, match=r"records.jsonl:1: .*'correct'"):
        correctness(tmp_path / "c")


def test_power_formulas():
    # n = 3 seeds, sd 10: (t_.975,2 + t_.80,2) * 10 / sqrt(3)
    assert mde_seeds(10.0, 3) == pytest.approx((4.303 + 1.061) * 10 / math.sqrt(3))
    n = seeds_needed(10.0, 3.0)
    assert mde_seeds(10.0, n) <= 3.0 < mde_seeds(10.0, n - 1)
    assert 80 < n < 95  # ~ (1.96 + 0.84)^2 * 100 / 9 = 87 plus the t correction
    assert seeds_needed(0.0, 3.0) == 2
    assert mcnemar_p(10, 0) == pytest.approx(0.004427, rel=1e-3)  # chi2 = 8.1
    assert mcnemar_p(7, 2) == pytest.approx(0.1824, rel=1e-3)  # chi2 = (5 - 1)^2 / 9
    assert mcnemar_p(5, 5) == 1.0 and mcnemar_p(0, 0) == 1.0
    assert crossover([(100, 8.0), (67, 2.0), (33, -4.0)]) == pytest.approx(67 - 2 * 34 / 6)
    assert crossover([(100, 8.0), (33, 1.0)]) is None


def test_report_has_the_comparisons_and_the_teacher_crossover(tmp_path):
    n = 40
    qa = [i < 20 for i in range(n)]
    for seed in (0, 1):
        write_run(tmp_path / f"qa{seed}", "QA-only", seed, qa)
        # the refined model gains 6 questions over QA-only with the good teacher, 0 with the middle one,
        # loses 4 with the worst: B - A = +15, 0, -10 points -> crossing at teacher accuracy 67 %
        for name, acc, k in (("t0", 100.0, 26), ("t33", 67.0, 20), ("t67", 33.0, 16)):
            write_run(tmp_path / f"{name}_{seed}", f"MTL(refined) teacher={name}", seed, [i < k for i in range(n)],
                      teacher_acc=acc, source="refined", mode="mtl", beta=0.5)
        # same teacher and reasoning, other setting: not points of the teacher line
        write_run(tmp_path / f"beta1_{seed}", "MTL(refined) beta=1", seed, [i < 2 for i in range(n)],
                  teacher_acc=67.0, source="refined", mode="mtl", beta=1.0)
        write_run(tmp_path / f"stl_{seed}", "STL(refined)", seed, [i < 2 for i in range(n)], teacher_acc=67.0,
                  source="refined", mode="stl")
    runs = find_runs([tmp_path])
    pairs = [("QA-only", f"MTL(refined) teacher={t}") for t in ("t0", "t33", "t67")]
    pairs += [("QA-only", "MTL(refined) beta=1"), ("QA-only", "STL(refined)")]
    summary = write_report(runs, tmp_path / "rep", pairs=pairs)
    assert [c["mean"] for c in summary["comparisons"]] == pytest.approx([15.0, 0.0, -10.0, -45.0, -45.0])
    (line,) = summary["teacher_lines"]
    assert [p[0] for p in line["points"]] == [100.0, 67.0, 33.0]
    assert line["crossover"] == pytest.approx(67.0)
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "## Paired comparisons" in md and "| QA-only | MTL(refined) teacher=t0 | 2 | +15.0, +15.0 |" in md
    assert "stops beating QA-only at a teacher accuracy of about 67 %" in md
    with pytest.raises(ValueError, match="no run labelled 'STL'"):
        write_report(runs, tmp_path / "rep2", pairs=[("QA-only", "STL")])
