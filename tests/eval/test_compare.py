"""Paired comparisons: the counts, intervals and MDEs on run directories the test writes, and the
report section and teacher crossover they feed."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from eval.compare import (
    Answer,
    correctness,
    crossover,
    mcnemar_p,
    mde_seeds,
    null_fpr,
    paired,
    paired_answers,
    seeds_needed,
    video_table,
)
from eval.report import find_runs, write_report
from eval.stats import t_two_sided_p, welch


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


# --- seed-level inference: the hierarchical bootstrap, its FPR on nulls, and the pooled McNemar ---------------


def _setting(rng, seeds, base, effect=0.0, seed_sd=0.05, video_sd=0.2, per_video=2):
    """In-memory graded runs (seed -> answers) of one setting: P(right) = the question's base rate + effect
    + a seed effect (shifts every answer of the run) + a (seed x video) effect (both questions of a video)."""
    out = {}
    n_videos = len(base) // per_video
    for s in seeds:
        p = base + effect + rng.normal(0, seed_sd) + np.repeat(rng.normal(0, video_sd, n_videos), per_video)
        hit = rng.random(len(base)) < np.clip(p, 0, 1)
        out[s] = {f"synthetic/val/v{i // per_video}/q{i % per_video}": Answer(f"v{i // per_video}", "TC", bool(h))
                  for i, h in enumerate(hit)}
    return out


def test_t_p_and_welch_by_hand():
    assert t_two_sided_p(2.776, 4) == pytest.approx(0.05, abs=2e-4)
    assert t_two_sided_p(12.706, 1) == pytest.approx(0.05, abs=1e-4)
    assert t_two_sided_p(0.0, 3) == 1.0 and t_two_sided_p(1.96, 10_000) == pytest.approx(0.05, abs=1e-3)
    # a = 75, 85 (var 50), b = 50, 60, 40 (var 100): se = sqrt(25 + 33.33), Welch df 2.88 -> t_{.975,2}
    w = welch([75.0, 85.0], [50.0, 60.0, 40.0])
    assert w["mean"] == pytest.approx(30.0) and w["df"] == pytest.approx(2.882, abs=1e-3)
    assert w["half"] == pytest.approx(4.303 * math.sqrt(25 + 100 / 3))
    assert welch([1.0], [2.0, 3.0])["lo"] is None


def test_bootstrap_is_deterministic_and_moves_videos_together(tmp_path):
    rng = np.random.default_rng(3)
    base = rng.uniform(0.3, 0.7, 200)
    a, b = _setting(rng, range(3), base), _setting(rng, range(3), base)
    one, two = paired_answers(a, b, sims=20), paired_answers(a, b, sims=20)
    assert one["boot"] == two["boot"] and one["fpr"] == two["fpr"]
    assert one["videos"] == 100 and one["boot"]["mean"] == pytest.approx(sum(one["diffs"]) / 3)
    diff, count, videos = video_table([(a[0], b[0])])
    assert count.tolist() == [[2] * 100] and videos.tolist() == [100]  # two questions per video, one cell
    # without video noise and with equal per-seed differences the bootstrap has no spread
    same = {s: {"q": Answer("v", "TC", True), "r": Answer("v", "TC", False)} for s in range(3)}
    flat = paired_answers(same, same, sims=0)
    assert flat["boot"]["se"] == 0 and flat["boot"]["p"] == 1.0


def test_known_null_with_correlated_videos_seed_level_vs_pooled_mcnemar():
    """Two labels drawn from one distribution (4 seeds each, seed and video effects): the seed-level
    bootstrap rarely rejects, its FPR estimate is low; the pooled McNemar test rejects far more often."""
    rng = np.random.default_rng(0)
    base = rng.uniform(0.3, 0.7, 400)
    boot_p, mcnemar = [], []
    for i in range(20):
        a, b = _setting(rng, range(4), base), _setting(rng, range(4), base)
        c = paired_answers(a, b, sims=0, seed=i)
        boot_p.append(c["boot"]["p"])
        mcnemar.append(c["q_p"])
    assert sum(p >= 0.05 for p in boot_p) >= 18  # most nulls pass
    assert sum(p < 0.05 for p in mcnemar) >= 6  # treating seeds x questions as independent does not
    assert any(q < 0.05 <= p for p, q in zip(boot_p, mcnemar))  # the same null: McNemar "significant", seeds not
    f = null_fpr(list(a.values()), list(b.values()), 4, sims=200, rng=np.random.default_rng(1))
    assert f["sims"] == 200 and f["fpr"] <= 0.10 and f["t_fpr"] <= 0.10 and f["mcnemar_fpr"] > f["fpr"]
    assert 0 < f["seed_sd"] < 15 and 10 < f["video_sd"] < 30  # measured from the runs (true: 5 and 20 points)


def test_real_effect_is_detected():
    rng = np.random.default_rng(1)
    base = rng.uniform(0.3, 0.6, 400)
    a, b = _setting(rng, range(5), base), _setting(rng, range(5), base, effect=0.15)
    c = paired_answers(a, b, sims=50)
    assert c["boot"]["p"] < 0.05 and c["boot"]["lo"] > 0 and 8 < c["boot"]["mean"] < 22
    assert c["boot"]["mde"] == pytest.approx((2.776 + 0.941) * c["boot"]["se"])
    assert c["fpr"]["fpr"] is not None and c["fpr"]["fpr"] <= 0.10


def test_fpr_and_test_are_unknown_with_too_few_seeds():
    rng = np.random.default_rng(2)
    base = rng.uniform(0.3, 0.7, 40)
    a, b = _setting(rng, range(2), base), _setting(rng, range(2), base)
    c = paired_answers(a, b)
    assert c["boot"]["p"] is not None and c["fpr"]["fpr"] is None
    assert "needs 3+ seeds per setting (A has 2, B has 2)" in c["fpr"]["reason"]
    one = paired_answers({0: a[0]}, {0: b[0]})
    assert one["boot"]["p"] is None and one["boot"]["mde"] is None and "2+ common seeds" in one["fpr"]["reason"]
    bt = paired_answers(a, b, target=3.0)["boot"]  # MDE above the target: the seeds to reach it at this spread
    assert bt["mde"] > 3.0 and bt["seeds_needed"] == seeds_needed(bt["se"] * math.sqrt(2), 3.0) > 2
    assert paired_answers(a, b, target=bt["mde"] + 1)["boot"]["seeds_needed"] is None  # MDE below: none needed


# --- the crossed design: seed effect + a video effect shared by every seed + residual -----------------------


def _crossed_null(rng, n_seeds, nv, base, vid, effect=0.0, seed_sd=0.03, g_sd=0.10, h_sd=0.15):
    """(seeds, videos) B - A correct answers: a B - A effect per video shared by all seeds (h), per run a
    seed effect and a (seed x video) effect, then Bernoulli answers."""
    h = rng.normal(0, h_sd, len(nv))[vid] / 2

    def runs(shift):
        p = base + shift + rng.normal(0, seed_sd, (n_seeds, 1)) + rng.normal(0, g_sd, (n_seeds, len(nv)))[:, vid]
        return (rng.random((n_seeds, base.size)) < np.clip(p, 0, 1)).astype(np.int64)

    d = runs(h + effect) - runs(-h)
    return np.stack([np.bincount(vid, weights=row, minlength=len(nv)) for row in d]).round().astype(np.int64)


@pytest.mark.parametrize("n_seeds", [3, 5])
def test_headline_test_is_calibrated_on_crossed_nulls(n_seeds):
    from eval.stats import boot_test

    rng = np.random.default_rng(10 + n_seeds)
    nv = rng.integers(1, 9, 200)
    vid = np.repeat(np.arange(200), nv)
    base = rng.uniform(0.3, 0.8, vid.size)
    count = np.tile(nv, (n_seeds, 1))
    head = t = 0
    sims = 400
    for _ in range(sims):
        d = _crossed_null(rng, n_seeds, nv, base, vid)
        bt = boot_test(d, count, 0, rng, p_value=False)
        head += bt["reject"]
        per = 100 * d.sum(1) / nv.sum()
        sd = per.std(ddof=1)
        t += (t_two_sided_p(per.mean() / (sd / math.sqrt(n_seeds)), n_seeds - 1) if sd > 0 else 1.0) < 0.05
    assert 0.01 <= head / sims <= 0.09, head / sims
    assert t / sims > head / sims  # the paired t does not see the video effect shared by the seeds


def test_headline_p_matches_its_decision_and_a_ten_point_effect_is_detected():
    from eval.stats import boot_test

    rng = np.random.default_rng(5)
    nv = rng.integers(1, 9, 200)
    vid = np.repeat(np.arange(200), nv)
    base = rng.uniform(0.3, 0.6, vid.size)
    count = np.tile(nv, (5, 1))
    hits = 0
    for i in range(40):
        d = _crossed_null(rng, 5, nv, base, vid, effect=0.10)
        bt = boot_test(d, count, 100 if i < 3 else 0, rng)
        assert (bt["p"] < 0.05) == bt["reject"] and bt["method"] == "anova"
        assert bt["lo"] == pytest.approx(bt["mean"] - bt["crit"] * bt["se"])
        assert bt["se"] ** 2 == pytest.approx(bt["var_seed"] + bt["var_video"])
        hits += bt["reject"]
    assert hits >= 32  # most simulations


def test_null_fpr_measures_the_shared_video_effect():
    rng = np.random.default_rng(4)
    nv = np.full(150, 3)
    vid = np.repeat(np.arange(150), nv)
    base = rng.uniform(0.3, 0.7, vid.size)
    h = rng.normal(0, 0.2, 150)[vid] / 2  # B better on some videos, worse on others, in every seed

    def setting(shift):
        out = {}
        for s in range(4):
            p = base + shift + rng.normal(0, 0.03) + np.repeat(rng.normal(0, 0.1, 150), 3)
            hit = rng.random(vid.size) < np.clip(p, 0, 1)
            out[s] = {f"d/val/v{v}/q{i}": Answer(f"v{v}", "TC", bool(x)) for i, (v, x) in enumerate(zip(vid, hit))}
        return out

    a, b = setting(-h), setting(h)
    c = paired_answers(a, b, sims=200, reps=200)
    f = c["fpr"]
    assert 10 < f["shared_video_sd"] < 30  # true 20 points
    assert 0.0 <= f["fpr"] <= 0.09 and f["mcnemar_fpr"] > f["fpr"]
    bt = c["boot"]
    assert bt["var_video"] > 0 and bt["reps"] == 200 and bt["boot_se"] > 0
    assert bt["mde"] > 0 and (bt["seeds_needed"] is None or bt["seeds_needed"] > 4)
