"""Paired comparisons of two settings with the seed as the unit, the difference they could detect,
the false-positive rate of the test on nulls, and the order margin against the order-invariant row.

Two settings of a study share the val questions, and each seed of one is trained with the same seed
as the same-numbered seed of the other. What a comparison must generalize over is training
randomness, so **the seed is the unit of the test**:

- **Headline (over seeds, crossed design)**: the per-seed differences ``d_s = acc_B(s) - acc_A(s)``
  (points, paired by seed number) and their mean. Every seed of both settings is scored on the SAME
  val videos, so seeds and videos are crossed: a (seed, video) cell difference = seed effect + video
  effect shared by every seed (a video B handles better than A) + residual. Its variance
  (:func:`eval.stats.crossed_components`, two-way ANOVA of the cell differences) is
  ``sd_seed^2 / S + s2_video / V`` = the paired t's variance (the per-seed spread, which already holds
  the residual) plus the shared video component (``(MS_video - MS_res) / S``, clipped at 0), which
  the paired t cannot see. ``mean / se`` is referred to the Cochran-Cox critical value (the t
  quantiles of the two components, S - 1 and V - 1 df, weighted by their variances; exactly the
  paired t when the video component is 0): the two-sided p and the 95% interval
  (:func:`eval.stats.boot_test`). The crossed (two-way) bootstrap (seeds with replacement and,
  independently, one draw of videos shared by all seeds and both settings) is kept beside it
  (``boot_se``, percentile interval, percentile p): not the test.

  *Why this method* (simulated nulls under the crossed model, question level, 200 videos of 1-8
  questions, 3000 nulls per cell, 1000 for the bootstrap rows; four regimes: seed + residual, shared
  video effect 15 pts, residual only, all; and a strong 30-pt video effect; ranges over regimes):

  ===========================================  ============  ============
  test                                          3 seeds       4-5 seeds
  ===========================================  ============  ============
  nested bootstrap (the previous headline)      0 %           0 %
  crossed bootstrap, se*sqrt(S/(S-1)), t(S-1)   0 %           0-0.8 %
  crossed bootstrap corrected (s + v - both)    0.4-9.0 %     1.7-5.0 %
  ANOVA, seed component clipped, t(S-1)         0-1.6 %       0.4-3.3 %
  ANOVA, seed component clipped, Satterthwaite  2.8-7.5 %     3.2-4.7 %
  paired-t var + video var, t(S-1)              0-3.8 %       0.2-4.6 %
  paired-t var + video var, Satterthwaite       4.3-7.2 %     4.4-6.1 %
  **paired-t var + video var, Cochran-Cox**     **2.6-5.7 %** **3.2-4.9 %**
  paired t over seeds                           5.1-10.3 %    4.5-18.8 %
  pooled McNemar                                7.7-55 %      7-53 %
  ===========================================  ============  ============

  Any SE referred to t with S - 1 df is far too conservative: the video and residual parts of the
  SE are estimated with hundreds of df, so the SE hardly varies and t_{0.975,2} = 4.3 is a 4-sigma
  cut. The bootstrap correction is noisy (a difference of Monte-Carlo variances) and Satterthwaite
  exceeds 6 % with 3 seeds (its df rises whenever the 2-df seed mean square comes out small), so
  the Cochran-Cox form was chosen: closest to 5 % without exceeding it in any regime measured.
  Reproduce: the scratch scripts are not kept; ``tests/eval/test_compare.py::
  test_headline_test_is_calibrated_on_crossed_nulls`` runs 400 such nulls (4.25 % at 3 and 5 seeds).
  Deterministic: a seeded numpy Generator.
- **What it could detect**: the minimum detectable effect (MDE) of that test at alpha 0.05 and
  power 0.80, ``(crit_{0.975} + crit_{0.80}) * se`` (Cochran-Cox weights), and where it is above the
  target (5 points by default) the seeds that would bring it down to the target: more seeds shrink
  only ``sd_seed^2 / S``, so it is None (more videos needed) when the shared video term alone keeps
  the MDE above the target. The plain paired t-test over seeds (mean ± t95, ``sd``, its MDE and seeds for
  the target) is kept as well.
- **Its false-positive rate on nulls** (:func:`null_fpr`): null comparisons simulated from the
  data under the crossed model. The seed-level and (seed x video) variances of each setting are
  measured on its own runs (:func:`variance_components`) and the B - A video effect shared by all
  seeds on both settings' runs (:func:`shared_video_var`); each null draws one shared effect per
  video (mean 0 over the video population) and runs from the questions' measured difficulty plus
  those random effects, and goes through the same test (and the paired t and pooled McNemar); the fraction with
  p < 0.05 is the FPR (target <= 5 %). Measuring a seed-level variance needs 3+ seeds per setting;
  with fewer the FPR is reported as unknown, not guessed.

**Why the pooled McNemar test is secondary.** Pooling every (seed, question) pair treats the same
question in three seeds, and the questions of one video, as independent observations. A trained
model is one draw of training randomness: its seed shifts every answer at once, and its answers on
one video are correlated. McNemar sees N = seeds x questions independent pairs and reports a
precision that does not exist: on a known null (beta = 0 MTL against QA-only, which differ only by
zero-weighted tokens) it gave -2.2 ± 1.2 points with p = 0.0003. It is kept in a separate table
(these trained models, question sampling only): ``b`` = questions only B gets right, ``c`` = only
A; ``(b - c) / N`` with its 95% normal interval, McNemar's chi-square with continuity correction and
its MDE ``(1.96 + 0.84) * sqrt((b + c)/N / N)``. It says nothing about other seeds.

Per-question correctness comes from each evaluated run's ``records.jsonl`` (``python -m eval run``
writes one line per question, with ``qid``, ``video_id``, ``qtype`` and ``correct``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from eval.stats import boot_test, cc_crit, interval, t975, t_two_sided_p, welch

# One-sided 80% Student-t quantiles t_{0.80, df} for df = 1..30; beyond, the normal 0.8416.
_T80 = (1.376, 1.061, 0.978, 0.941, 0.920, 0.906, 0.896, 0.889, 0.883, 0.879,
        0.876, 0.873, 0.870, 0.868, 0.866, 0.865, 0.863, 0.862, 0.861, 0.860,
        0.859, 0.858, 0.858, 0.857, 0.856, 0.856, 0.855, 0.855, 0.854, 0.854)
Z975, Z80 = 1.959964, 0.841621
ALPHA = 0.05
ORDER_TYPES = ("TC", "TN", "TP", "CH", "DC")
"""Question types whose answer depends on the order of the frames (NExT-QA codes: When, After,
Before, How, Count)."""
REFERENCES = {"text_only": "Text only", "last_frame": "Last frame only", "order_invariant": "Order-invariant"}
"""``run.json`` meta ``reference`` -> the reference row's label (trained and evaluated like the
settings, with the frames zeroed / only the last frame / frames in a fresh random order every step)."""


class Answer(NamedTuple):
    """One question of one evaluated run."""

    video: str
    qtype: str | None
    correct: bool


Answers = dict[str, Answer]
"""qid -> :class:`Answer`, the graded questions of one evaluated run."""


def t80(df: int) -> float:
    if df < 1:
        raise ValueError(f"t quantile needs df >= 1, got {df}")
    return _T80[df - 1] if df <= len(_T80) else Z80


def mde_seeds(sd: float, n: int) -> float:
    """MDE (points) of a two-sided paired t-test over ``n`` seeds, alpha 0.05, power 0.80."""
    return (t975(n - 1) + t80(n - 1)) * sd / math.sqrt(n)


def seeds_needed(sd: float, target: float, most: int = 10_000) -> int | None:
    """Fewest seeds (>= 2) whose paired-t MDE is <= ``target`` at this ``sd``; None beyond ``most``."""
    if sd == 0:
        return 2
    for n in range(2, most + 1):
        if mde_seeds(sd, n) <= target:
            return n
    return None


def _video_of(row: dict[str, Any]) -> str:
    """The clustering unit of a question: its ``video_id``, else the video part of a global qid
    (``dataset/split/video_id/qid``), else the question itself."""
    if isinstance(row.get("video_id"), str) and row["video_id"]:
        return row["video_id"]
    qid = row["qid"]
    return qid.rsplit("/", 1)[0] if qid.count("/") >= 3 else qid


def load_answers(run_dir: str | Path) -> Answers:
    """The graded questions of an evaluated run, from its ``records.jsonl`` (questions without a
    gold answer are left out)."""
    path = Path(run_dir) / "records.jsonl"
    if not path.is_file():
        raise ValueError(f"{run_dir}: missing records.jsonl (python -m eval run writes one line per question)")
    out = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: invalid JSON ({e.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("qid"), str) or not isinstance(row.get("correct"), bool):
            raise ValueError(f"{path}:{n}: a question line needs 'qid' (string) and 'correct' (true/false)")
        if row.get("gold") is not None:
            qtype = row.get("qtype")
            out[row["qid"]] = Answer(_video_of(row), qtype if isinstance(qtype, str) else None, row["correct"])
    return out


def correctness(run_dir: str | Path) -> dict[str, bool]:
    """qid -> whether the run answered it right (see :func:`load_answers`)."""
    return {q: a.correct for q, a in load_answers(run_dir).items()}


def mcnemar_p(b: int, c: int) -> float:
    """Two-sided p of McNemar's chi-square test with continuity correction (1 df)."""
    if b + c == 0:
        return 1.0
    chi2 = max(abs(b - c) - 1, 0) ** 2 / (b + c)
    return math.erfc(math.sqrt(chi2 / 2))


def video_table(pairs: list[tuple[Answers, Answers]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per seed (one (A, B) pair of runs on the same questions) and video: B's correct answers minus
    A's, and the questions. Columns are aligned across seeds (the sorted union of the videos: the
    crossed design), 0 where a seed lacks a video; with each seed's number of videos."""
    rows = []
    for ans_a, ans_b in pairs:
        per: dict[str, list[int]] = {}
        for q, x in ans_a.items():
            cell = per.setdefault(x.video, [0, 0])
            cell[0] += int(ans_b[q].correct) - int(x.correct)
            cell[1] += 1
        rows.append(per)
    index = {v: i for i, v in enumerate(sorted(set().union(*rows)))}
    diff = np.zeros((len(rows), len(index)), np.int64)
    count = np.zeros((len(rows), len(index)), np.int64)
    for i, per in enumerate(rows):
        for v, (d, n) in per.items():
            diff[i, index[v]], count[i, index[v]] = d, n
    return diff, count, np.array([len(r) for r in rows], np.int64)


def paired(a_runs: dict[int, Path], b_runs: dict[int, Path], target: float = 5.0, **kw: Any) -> dict[str, Any]:
    """:func:`paired_answers` of two settings' run directories (seed -> eval run directory)."""
    return paired_answers({s: load_answers(p) for s, p in a_runs.items()},
                          {s: load_answers(p) for s, p in b_runs.items()}, target, **kw)


def paired_answers(a: dict[int, Answers], b: dict[int, Answers], target: float = 5.0, reps: int = 2000,
                   sims: int = 200, seed: int = 0) -> dict[str, Any]:
    """Compare setting B against setting A over their common seeds (seed -> its graded questions).

    Returns the statistics of the module docstring (differences are B - A, in points): ``boot``
    (the headline test), ``fpr`` (:func:`null_fpr` over all runs of both settings), the paired t
    over seeds (``mean``, ``lo``, ``hi``, ``sd``, ``mde_seeds``, ``seeds_for_target``) and the pooled
    question-level numbers (``q_*``, ``b_only``, ``a_only``).

    Raises:
        ValueError: no common seed, or two runs of one seed that were scored on different questions.
    """
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise ValueError(f"no common seed: A has {sorted(a)}, B has {sorted(b)}")
    for s in seeds:
        if set(a[s]) != set(b[s]):
            raise ValueError(f"seed {s}: the runs were scored on different questions ({len(a[s])} vs "
                             f"{len(b[s])}); a paired comparison needs the same val split")
    rng = np.random.default_rng(seed)
    diff, count, videos = video_table([(a[s], b[s]) for s in seeds])
    boot = boot_test(diff, count, reps, rng)
    boot.update(_power(boot, len(seeds), target))
    diffs = [float(x) for x in 100.0 * diff.sum(1) / count.sum(1)]
    return {"seeds": seeds, "diffs": diffs, "videos": int(videos.max()), "target": target, "boot": boot,
            "fpr": null_fpr(list(a.values()), list(b.values()), len(seeds), sims, rng),
            **_seed_t(diffs, target), **_pooled(a, b, seeds)}


def _power(bt: dict[str, Any], n: int, target: float, most: int = 10_000) -> dict[str, Any]:
    """MDE of the headline test and, where it is above ``target``, the seeds it would need.

    MDE = ``(crit_{0.975} + crit_{0.80}) * se`` with the Cochran-Cox weights of the test. With S'
    seeds on the same videos the variance is ``sd_seed^2 / S' + s2_video / V``: more seeds shrink
    only the first term, so the seeds needed are None (more videos needed) when the video term
    alone keeps the MDE above ``target``.
    """
    se = bt["se"]
    if se is None:
        return {"mde": None, "seeds_needed": None}

    def mde(v_seed: float, v_video: float, k: int) -> float:
        v = v_seed + v_video
        if v <= 0:
            return 0.0
        df_v = max(bt["df_video"] or 1, 1)
        q80_v = t80(df_v) if v_video > 0 else 0.0
        crit = cc_crit(ALPHA, v_seed, v_video, k - 1, df_v)
        q80 = (v_seed * t80(k - 1) + v_video * q80_v) / v
        return (crit + q80) * math.sqrt(v)

    if bt["var_seed"] is None:  # bootstrap fallback: all of the variance shrinks with the seeds
        v_seed_1, v_video = se * se * n, 0.0
        m = mde(se * se, 0.0, n)
    else:
        v_seed_1, v_video = bt["var_seed"] * n, bt["var_video"]
        m = mde(bt["var_seed"], v_video, n)
    need = None
    if m > target and mde(0.0, v_video, most) <= target:
        need = next((k for k in range(2, most + 1) if mde(v_seed_1 / k, v_video, k) <= target), None)
    return {"mde": m, "seeds_needed": need}


def _seed_t(diffs: list[float], target: float) -> dict[str, Any]:
    """The paired t-test over seeds: mean, 95% interval, sd, MDE and seeds for ``target``."""
    cell = interval(diffs)
    sd = None
    if len(diffs) > 1:
        sd = math.sqrt(sum((d - cell["mean"]) ** 2 for d in diffs) / (len(diffs) - 1))
    return {"mean": cell["mean"], "lo": cell["lo"], "hi": cell["hi"], "sd": sd,
            "mde_seeds": None if sd is None else mde_seeds(sd, len(diffs)),
            "seeds_for_target": None if sd is None else seeds_needed(sd, target)}


def _pooled(a: dict[int, Answers], b: dict[int, Answers], seeds: list[int]) -> dict[str, Any]:
    """Every (seed, question) pair pooled: difference, normal interval, McNemar p and MDE (secondary)."""
    b_only = sum(b[s][q].correct and not a[s][q].correct for s in seeds for q in a[s])
    a_only = sum(a[s][q].correct and not b[s][q].correct for s in seeds for q in a[s])
    total = sum(len(a[s]) for s in seeds)
    d = (b_only - a_only) / total
    disc = (b_only + a_only) / total
    se = math.sqrt(max(disc - d * d, 0.0) / total)
    return {"questions": total, "b_only": b_only, "a_only": a_only,
            "q_diff": 100.0 * d, "q_lo": 100.0 * (d - Z975 * se), "q_hi": 100.0 * (d + Z975 * se),
            "q_p": mcnemar_p(b_only, a_only), "q_mde": 100.0 * (Z975 + Z80) * math.sqrt(disc / total)}


def _by_video(y: np.ndarray, vid: np.ndarray, n_videos: int) -> np.ndarray:
    """(runs, questions) -> (runs, videos) sums over each video's questions."""
    k = y.shape[0]
    flat = (vid[None, :] + n_videos * np.arange(k)[:, None]).ravel()
    return np.bincount(flat, weights=y.ravel().astype(float), minlength=k * n_videos).reshape(k, n_videos)


def variance_components(y: np.ndarray, vid: np.ndarray) -> tuple[float, float]:
    """Seed-level and (seed x video) variances (accuracy scale) of one setting's K >= 2 runs.

    ``y``: (runs, questions) 0/1 correctness; ``vid``: the video index of each question. With the
    question's mean over runs removed, two questions of one run share ``var(seed)`` when they are
    of different videos and ``var(seed) + var(seed x video)`` when of the same video (method of
    moments over all such pairs; each clipped at 0).
    """
    k, q = y.shape
    n_videos = int(vid.max()) + 1
    nv = np.bincount(vid, minlength=n_videos).astype(float)
    r = y - y.mean(0)
    by_v = _by_video(r, vid, n_videos)
    sq, sq_v, tot = (r ** 2).sum(1), (by_v ** 2).sum(1), r.sum(1)
    same_pairs, other_pairs = float((nv * (nv - 1)).sum()), float(q * q - (nv ** 2).sum())
    c_same = float((sq_v - sq).sum()) / (k - 1) / same_pairs if same_pairs else 0.0
    c_other = float((tot ** 2 - sq_v).sum()) / (k - 1) / other_pairs if other_pairs else 0.0
    return max(c_other, 0.0), max(c_same - max(c_other, 0.0), 0.0)


def shared_video_var(ya: np.ndarray, yb: np.ndarray, vid: np.ndarray) -> float:
    """Variance (accuracy scale) of the setting x video effect ``h_v``: B - A on one video, the same
    in every seed (a video B handles better than A). Each run's own mean is removed (its seed
    effect), the video sums of B's mean run minus A's are ``n_v (h_v - h_mean) + noise``; the noise
    variance is measured as the spread of those video sums across each setting's runs (over its
    number of runs), and the rest divided by its expectation per unit of ``var(h)`` (clipped at 0).
    """
    n_videos = int(vid.max()) + 1
    nv = np.bincount(vid, minlength=n_videos).astype(float)
    ra, rb = (_by_video(y - y.mean(1, keepdims=True), vid, n_videos) for y in (ya, yb))
    h = rb.mean(0) - ra.mean(0)
    noise = float((ra.var(0, ddof=1) / len(ra) + rb.var(0, ddof=1) / len(rb)).sum())
    total, nv2 = nv.sum(), nv ** 2
    unit = float((nv2 - 2 * nv ** 3 / total + nv2 * nv2.sum() / total ** 2).sum())
    return max((float((h ** 2).sum()) - noise) / unit, 0.0) if unit > 0 else 0.0


def _simulate(base: np.ndarray, vid: np.ndarray, seed_sd: float, video_sd: float, runs: int,
              rng: np.random.Generator, shift: np.ndarray | float = 0.0) -> np.ndarray:
    """``runs`` simulated runs (runs, questions) of 0/1: P(right) = base + shift (per question, the
    same in every run) + seed effect + seed x video effect."""
    u = rng.normal(0.0, seed_sd, (runs, 1))
    g = rng.normal(0.0, video_sd, (runs, int(vid.max()) + 1))[:, vid]
    return (rng.random((runs, base.size)) < np.clip(base + shift + u + g, 0.0, 1.0)).astype(np.int64)


def _matrices(a_runs: list[Answers], b_runs: list[Answers]) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Both settings' runs as (runs, questions) 0/1 on the questions every run has, and the video
    index of each question; None when they share no question."""
    qids = sorted(set.intersection(*(set(r) for r in a_runs + b_runs)))
    if not qids:
        return None
    index = {v: i for i, v in enumerate(sorted({a_runs[0][q].video for q in qids}))}
    vid = np.array([index[a_runs[0][q].video] for q in qids], np.int64)
    ya = np.array([[r[q].correct for q in qids] for r in a_runs], np.int64)
    yb = np.array([[r[q].correct for q in qids] for r in b_runs], np.int64)
    return ya, yb, vid


def null_fpr(a_runs: list[Answers], b_runs: list[Answers], n_seeds: int, sims: int = 200,
             rng: np.random.Generator | None = None, reps: int = 0) -> dict[str, Any]:
    """The false-positive rate of the headline test on null comparisons simulated from the data under
    the crossed model.

    Measured on the runs: each setting's seed-level and (seed x video) variances
    (:func:`variance_components`, averaged over the two settings) and the setting x video variance
    shared by all seeds (:func:`shared_video_var`). Each simulated null draws one shared effect
    ``h_v`` per video and ``n_seeds`` runs of A and of B, P(right) = the question's base rate (its
    mean over both settings' runs, shrunk by one pseudo-run toward its video's mean) -/+ ``h_v / 2``
    + a seed effect + a (seed x video) effect; the mean of ``h`` over the video population is 0, so
    each is a null of the comparison. The headline test (:func:`eval.stats.boot_test`, its p < 0.05
    decision), the paired t over seeds (``t_fpr``) and the pooled McNemar test (``mcnemar_fpr``)
    run on the same nulls. ``reps`` > 0 also draws that many crossed-bootstrap replicates per null
    (not needed by the test; slower).

    Returns:
        ``{"fpr", "rejections", "sims", "mcnemar_fpr", "t_fpr", "seeds", "seed_sd", "video_sd",
        "shared_video_sd", "reason"}`` (rates as fractions, sds in points: seed, seed x video, and the
        setting x video effect of B - A); ``fpr`` None with the ``reason`` when it cannot be measured:
        fewer than 2 common seeds, or fewer than 3 runs of a setting.
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    out: dict[str, Any] = {"fpr": None, "rejections": 0, "sims": 0, "mcnemar_fpr": None, "t_fpr": None,
                           "seeds": n_seeds, "seed_sd": None, "video_sd": None, "shared_video_sd": None,
                           "reason": None}
    mats = _matrices(a_runs, b_runs) if n_seeds >= 2 and min(len(a_runs), len(b_runs)) >= 3 else None
    if n_seeds < 2:
        return {**out, "reason": f"the test needs 2+ common seeds (has {n_seeds})"}
    if sims < 1:
        return {**out, "reason": "not simulated (0 nulls asked for)"}
    if mats is None:
        why = (f"measuring the seed-level variance needs 3+ seeds per setting (A has {len(a_runs)}, "
               f"B has {len(b_runs)})" if min(len(a_runs), len(b_runs)) < 3 else "the runs share no question")
        return {**out, "reason": why}
    ya, yb, vid = mats
    comps = [variance_components(y, vid) for y in (ya, yb)]
    seed_sd, video_sd = (math.sqrt(sum(c[i] for c in comps) / 2) for i in (0, 1))
    shared_sd = math.sqrt(shared_video_var(ya, yb, vid))
    both = np.vstack([ya, yb])
    n_videos = int(vid.max()) + 1
    nv = np.bincount(vid, minlength=n_videos)
    video_mean = _by_video(both, vid, n_videos).sum(0) / nv / len(both)
    base = (both.sum(0) + video_mean[vid]) / (len(both) + 1)
    count = np.tile(nv, (n_seeds, 1))
    rejections = mcnemar_rejections = t_rejections = 0
    for _ in range(sims):
        h = rng.normal(0.0, shared_sd, n_videos)[vid] / 2 if shared_sd > 0 else 0.0
        sa = _simulate(base, vid, seed_sd, video_sd, n_seeds, rng, -h)
        sb = _simulate(base, vid, seed_sd, video_sd, n_seeds, rng, h)
        diff = _by_video(sb - sa, vid, n_videos).round().astype(np.int64)
        rejections += boot_test(diff, count, reps, rng, p_value=False)["reject"]
        mcnemar_rejections += mcnemar_p(int((sb > sa).sum()), int((sa > sb).sum())) < ALPHA
        t_rejections += _t_p(list(100.0 * diff.sum(1) / nv.sum())) < ALPHA
    return {**out, "fpr": rejections / sims, "rejections": rejections, "sims": sims,
            "mcnemar_fpr": mcnemar_rejections / sims, "t_fpr": t_rejections / sims,
            "seed_sd": 100.0 * seed_sd, "video_sd": 100.0 * video_sd, "shared_video_sd": 100.0 * shared_sd}


def _t_p(diffs: list[float]) -> float:
    """Two-sided p of the paired t-test over seeds (1 or 0 when the differences do not vary)."""
    cell = interval(diffs)
    if not cell["half"]:
        return 1.0 if cell["mean"] == 0 else 0.0
    return t_two_sided_p(cell["mean"] / (cell["half"] / t975(len(diffs) - 1)), len(diffs) - 1)


def type_accuracy(answers: Answers, types: tuple[str, ...] | list[str]) -> float | None:
    """Percent right on the questions whose qtype is one of ``types``; None without such questions."""
    hits = [a.correct for a in answers.values() if a.qtype in types]
    return 100.0 * sum(hits) / len(hits) if hits else None


def margin(accs: dict[int, float], ref: dict[int, float]) -> dict[str, Any]:
    """``accs`` minus ``ref`` (seed -> accuracy): paired by seed (t interval of the per-seed
    differences) when both have the same seeds, else unpaired (Welch); "reasons over time" only
    where the interval's lower bound is above 0."""
    if set(accs) == set(ref):
        cell = interval([accs[s] - ref[s] for s in sorted(accs)])
        diff = {"mean": cell["mean"], "lo": cell["lo"], "hi": cell["hi"], "paired": True, "n": cell["n"]}
    else:
        w = welch(list(accs.values()), list(ref.values()))
        diff = {"mean": w["mean"], "lo": w["lo"], "hi": w["hi"], "paired": False, "n": w["n"]}
    return {**diff, "reasons_over_time": diff["lo"] is not None and diff["lo"] > 0}


def order_margins(answers: dict[str, dict[int, Answers]], references: dict[str, str],
                  types: tuple[str, ...] | list[str] = ORDER_TYPES) -> dict[str, Any]:
    """Accuracy on the order-dependent ``types`` of every label (label -> seed -> answers) and, for
    the non-reference labels, its :func:`margin` over the order-invariant reference row.

    ``references``: label -> reference kind (``REFERENCES`` keys) of the reference labels.
    Returns ``{"types", "reference", "reference_acc", "references", "rows", "note"}`` (see
    :func:`eval.report.write_report`).
    """
    accs = {label: {s: a for s, ans in by_seed.items() if (a := type_accuracy(ans, types)) is not None}
            for label, by_seed in answers.items()}
    ref = next((lb for lb, kind in references.items() if kind == "order_invariant"), None)
    out: dict[str, Any] = {"types": list(types), "reference": ref, "reference_acc": None,
                           "references": {lb: interval(list(accs[lb].values())) for lb in
                                          sorted(references, key=lambda x: list(REFERENCES).index(references[x]))
                                          if lb in accs},
                           "rows": [], "note": None}
    if ref is None or not accs.get(ref):
        out["note"] = ("no order-invariant reference row (run.json meta reference: order_invariant)" if ref is None
                       else f"the {ref} runs have no question of the types {', '.join(types)}")
        ref_accs = {}
    else:
        ref_accs = accs[ref]
        out["reference_acc"] = interval(list(ref_accs.values()))
    for label, by_seed in accs.items():
        if label in references or not by_seed:
            continue
        row = {"label": label, "seeds": sorted(by_seed), "acc": interval([by_seed[s] for s in sorted(by_seed)])}
        m = margin(by_seed, ref_accs) if ref_accs else None
        row.update({"diff": m, "margin": None if m is None else m["mean"],
                    "reasons_over_time": bool(m and m["reasons_over_time"])})
        out["rows"].append(row)
    return out


def crossover(points: list[tuple[float, float]]) -> float | None:
    """The x where a piecewise-linear y(x) through ``points`` (x, y) first crosses 0 going from
    high x to low x (the teacher accuracy below which B stops beating A); None without a sign change."""
    pts = sorted(points, reverse=True)
    for (x1, y1), (x0, y0) in zip(pts, pts[1:]):
        if y1 > 0 >= y0:
            return x1 - y1 * (x1 - x0) / (y1 - y0)
    return None


def _num(v: float | None, fmt: str = "+.1f") -> str:
    return "-" if v is None else format(v, fmt)


def _fpr_text(f: dict[str, Any]) -> str:
    if f["fpr"] is None:
        return f"unknown ({f['reason']})"
    return f"{100 * f['fpr']:.1f}% over {f['sims']} simulated nulls (paired t: {100 * f['t_fpr']:.1f}%)"


def _row(c: dict[str, Any]) -> str:
    """One comparison as a row of the headline table."""
    bt, target = c["boot"], c["target"]
    if bt["se"] is None:
        headline = "- (needs 2+ seeds) | - | - | -"
    else:
        need = f"(MDE <= {target:g})"
        if bt["mde"] > target:
            need = f"{bt['seeds_needed']}" if bt["seeds_needed"] else "> 10000"
        headline = (f"{bt['mean']:+.1f} [{bt['lo']:+.1f}, {bt['hi']:+.1f}] | {bt['p']:.3g} | {bt['mde']:.1f} | {need}")
    half = None if c["lo"] is None else c["hi"] - c["mean"]
    t_mean = _num(c["mean"]) + ("" if half is None else f" ± {half:.1f}")
    role = "**null control** (true difference 0)" if c.get("role") == "null" else "comparison"
    return (f"| {c['a']} | {c['b']} | {len(c['seeds'])} | {', '.join(f'{d:+.1f}' for d in c['diffs'])} | "
            f"{headline} | {t_mean} | {_fpr_text(c['fpr'])} | {role} |")


def markdown(comparisons: list[dict[str, Any]]) -> list[str]:
    """The report's section: the headline table (one row per comparison, null controls at the bottom)
    and the pooled question-level table (secondary)."""
    if not comparisons:
        return []
    target = comparisons[0]["target"]
    rows = [c for c in comparisons if c.get("role") != "null"] + [c for c in comparisons if c.get("role") == "null"]
    lines = ["", "## Paired comparisons (B - A, points)", "",
             "The unit is the seed (paired by seed number). B - A: mean of the per-seed differences with the 95% "
             "interval and two-sided p of the crossed seed x video test (SE = per-seed spread / sqrt(seeds) plus "
             "the video effect shared by all seeds, two-way ANOVA; Cochran-Cox t critical value); "
             "MDE: the difference it could detect (alpha 0.05, power 0.8); seeds for "
             f"{target:g}: the seeds that would bring an MDE above {target:g} points down to {target:g}; paired t: "
             "mean ± t95 of the per-seed differences. FPR on nulls: the fraction of simulated null comparisons "
             "(same seeds, the measured seed and video variances) on which the test gives p < 0.05 (target <= 5%). "
             "A null-control row has a true difference of 0: p < 0.05 there means the test is not to be trusted.", "",
             f"| A | B | seeds | per-seed B - A | B - A [95% CI] | p | MDE | seeds for {target:g} | paired t | "
             "FPR on nulls | row |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [_row(c) for c in rows]
    for c in rows:
        if c.get("role") == "null" and c["boot"]["p"] is not None and c["boot"]["p"] < ALPHA:
            lines += ["", f"**Warning:** the null control {c['b']} - {c['a']} comes out at p = {c['boot']['p']:.3g}."]
    lines += ["", "Secondary, pooled over (seed, question) pairs: these trained models on these questions only. It "
              "treats the same question in every seed and the questions of one video as independent, so its p is "
              "not a test of the settings (see eval/compare.py).", "",
              "| A | B | questions | B - A ± 95% | McNemar p | MDE (questions) | McNemar FPR on the same nulls |",
              "|---|---|---|---|---|---|---|"]
    for c in rows:
        f = c["fpr"]
        mfpr = "-" if f["mcnemar_fpr"] is None else f"{100 * f['mcnemar_fpr']:.1f}%"
        lines.append(f"| {c['a']} | {c['b']} | {c['questions']} | {c['q_diff']:+.1f} ± {c['q_hi'] - c['q_diff']:.1f} | "
                     f"{c['q_p']:.3g} | {c['q_mde']:.1f} | {mfpr} |")
    return lines


def order_markdown(om: dict[str, Any] | None) -> list[str]:
    """The "Reasoning over time" section from :func:`order_margins`."""
    if om is None:
        return []
    types = ", ".join(om["types"])
    lines = ["", "## Reasoning over time", "",
             f"Accuracy (%) on the order-dependent question types ({types}), mean over seeds ± 95% t half-width, and "
             f"the margin over the order-invariant reference (frames in a fresh random order every step): paired by "
             f"seed when both have the same seeds, else unpaired (Welch). A setting reasons over time only where the "
             f"lower bound of that interval is above 0."]
    if om["note"]:
        lines += ["", f"Not decided: {om['note']}."]
    lines += ["", "| run | seeds | accuracy | margin (points) | 95% interval | paired | reasons over time |",
              "|---|---|---|---|---|---|---|"]
    for r in om["rows"]:
        d = r["diff"] or {}
        iv = "-" if d.get("lo") is None else f"[{d['lo']:+.1f}, {d['hi']:+.1f}]"
        cell = _cell(r["acc"])
        paired_txt = "-" if not d else ("yes" if d["paired"] else "no")
        lines.append(f"| {r['label']} | {len(r['seeds'])} | {cell} | {_num(r['margin'])} | {iv} | {paired_txt} | "
                     f"{'yes' if r['reasons_over_time'] else 'no'} |")
    for label, c in om["references"].items():
        lines.append(f"| {label} (reference) | {c['n']} | {_cell(c)} | - | - | - | - |")
    return lines


def _cell(c: dict[str, Any]) -> str:
    if c["n"] == 0:
        return "-"
    return f"{c['mean']:.1f}" + (f" ± {c['half']:.1f}" if c["half"] is not None else "")
