"""Per-seed aggregates shared by the report, its plots and the paired comparisons.

The bottom of ``eval``'s reporting modules: :mod:`eval.report` imports :mod:`eval.compare` and
:mod:`eval.plots`, and all three take their intervals from here (so none of them imports another
in a loop).
"""

from __future__ import annotations

import math
import statistics
from typing import Any

import numpy as np

INTERVALS = ("t95", "minmax")

# Two-sided 95% Student-t critical values t_{0.975, df} for df = 1..30 (scipy is not a
# dependency); beyond 30 the normal value 1.96 is within 2% of the t value.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
         2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
         2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t975(df: int) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom (df >= 1)."""
    if df < 1:
        raise ValueError(f"t quantile needs df >= 1, got {df}")
    return _T975[df - 1] if df <= len(_T975) else 1.96


def interval(values: list[float], kind: str = "t95") -> dict[str, Any]:
    """Mean and interval of per-seed values.

    Returns:
        ``{"n", "mean", "lo", "hi", "half", "values"}``; ``lo``/``hi`` are the interval bounds
        (None for a single value), ``half`` the t half-width (t95) or None (minmax, n = 1).
    """
    if kind not in INTERVALS:
        raise ValueError(f"interval must be one of {INTERVALS}, got {kind!r}")
    vals = [float(v) for v in values]
    n = len(vals)
    if n == 0:
        return {"n": 0, "mean": None, "lo": None, "hi": None, "half": None, "values": []}
    mean = sum(vals) / n
    lo = hi = half = None
    if n > 1 and kind == "t95":
        sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1))
        half = t975(n - 1) * sd / math.sqrt(n)
        lo, hi = mean - half, mean + half
    elif n > 1:
        lo, hi = min(vals), max(vals)
    return {"n": n, "mean": mean, "lo": lo, "hi": hi, "half": half, "values": vals}


def t_two_sided_p(t: float, df: float) -> float:
    """Two-sided p of Student's t with ``df`` degrees of freedom: ``P(|T| >= |t|)``
    (the regularized incomplete beta ``I_{df / (df + t^2)}(df / 2, 1 / 2)``; scipy is not a dependency)."""
    if df <= 0:
        raise ValueError(f"t distribution needs df > 0, got {df}")
    if math.isinf(t):
        return 0.0
    return _betainc(df / 2.0, 0.5, df / (df + t * t))


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta ``I_x(a, b)`` (continued fraction, Numerical Recipes' betacf)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x > (a + 1.0) / (a + b + 2.0):
        return 1.0 - _betainc(b, a, 1.0 - x)
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-12:
            break
    return front * h / a


def welch(a: list[float], b: list[float]) -> dict[str, Any]:
    """Unpaired difference ``mean(a) - mean(b)`` with a Welch 95% interval (Welch-Satterthwaite df,
    rounded down); ``lo``/``hi`` None when either side has fewer than 2 values."""
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    out = {"n": [len(a), len(b)], "mean": ma - mb, "lo": None, "hi": None, "half": None, "df": None}
    if len(a) < 2 or len(b) < 2:
        return out
    va = sum((v - ma) ** 2 for v in a) / (len(a) - 1) / len(a)
    vb = sum((v - mb) ** 2 for v in b) / (len(b) - 1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        df = len(a) + len(b) - 2
    else:
        df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = t975(max(int(df), 1)) * se
    return {**out, "lo": ma - mb - half, "hi": ma - mb + half, "half": half, "df": df}


def crossed_bootstrap(diff: np.ndarray, count: np.ndarray, reps: int, rng: np.random.Generator,
                      chunk: int = 256, seeds: bool = True, videos: bool = True) -> np.ndarray:
    """Replicates of the mean over seeds of the accuracy difference (points) under the crossed
    (two-way) bootstrap: seeds drawn with replacement and, independently, ONE draw of videos with
    replacement shared by every drawn seed and both settings (a video's questions move together).
    ``seeds`` / ``videos`` False keeps that factor fixed (the one-way bootstraps).

    Args:
        diff: (seeds, videos) per seed and video, B's correct answers minus A's (columns aligned: the
            same video in every row; 0 where a seed lacks the video).
        count: (seeds, videos) questions per seed and video (0 where a seed lacks the video).
    """
    n_seeds, n_videos = diff.shape
    d, n = diff.astype(float).T, count.astype(float).T
    out = []
    for start in range(0, reps, chunk):
        k = min(chunk, reps - start)
        w = (rng.multinomial(n_videos, np.full(n_videos, 1.0 / n_videos), size=k).astype(float) if videos
             else np.ones((k, n_videos)))
        acc = (w @ d) / np.maximum(w @ n, 1.0)  # (k, seeds): each seed's difference on the drawn videos
        if seeds:
            acc = np.take_along_axis(acc, rng.integers(0, n_seeds, size=(k, n_seeds)), 1)
        out.append(100.0 * acc.mean(1))
    return np.concatenate(out) if out else np.zeros(0)


def crossed_components(diff: np.ndarray, count: np.ndarray) -> dict[str, Any] | None:
    """Two-way ANOVA (seed x video, one cell each) of the paired differences, on the points scale of
    the headline statistic (the mean over seeds of the per-seed accuracy difference), and the
    variance of that mean.

    In a balanced crossed design (every seed scored on the same questions) the statistic is the grand
    mean of ``x = 100 * V / N * diff`` over the (seed, video) cells. Under the additive model
    seed + video + residual, ``Var(mean) = s2_seed / S + s2_video / V + s2_res / (S V)`` with the
    unbiased estimate ``(MS_seed + MS_video - MS_res) / (S V)``, written as

        var = MS_seed / (S V) + max(MS_video - MS_res, 0) / (S V)
            = sd_seed^2 / S + s2_video / V

    i.e. the paired t's variance (``sd_seed`` the sd of the per-seed differences, which already holds
    the residual) plus the video effect shared by every seed, which the paired t cannot see. Only the
    video component is clipped at 0 (it has V - 1 df; clipping the 2-df seed component instead, or
    referring the combination to t with S - 1 df, is what made the earlier variants miscalibrated: see
    :mod:`eval.compare`). ``df`` is the Satterthwaite df of that combination of mean squares, at least
    S - 1 (exactly S - 1 when the video component is 0: the paired t).

    Returns:
        ``{"S", "V", "var", "df", "seed_var", "video_var", "s2_seed", "s2_video", "s2_res", "ms_seed",
        "ms_video", "ms_res"}`` (points^2; ``seed_var = sd_seed^2``, ``video_var = s2_video``), or None
        when the design is not balanced (a seed with other questions per video) or has under 2 seeds.
    """
    n_seeds = diff.shape[0]
    if n_seeds < 2 or not (count == count[0]).all():
        return None
    keep = count[0] > 0
    n_videos, total = int(keep.sum()), int(count[0].sum())
    if n_videos == 0:
        return None
    x = diff[:, keep].astype(float) * (100.0 * n_videos / total)
    grand, rows, cols = x.mean(), x.mean(1), x.mean(0)
    sv = n_seeds * n_videos
    ms_seed = n_videos * float(((rows - grand) ** 2).sum()) / (n_seeds - 1)
    if n_videos > 1:
        ms_video = n_seeds * float(((cols - grand) ** 2).sum()) / (n_videos - 1)
        res = x - rows[:, None] - cols[None, :] + grand
        ms_res = float((res ** 2).sum()) / ((n_seeds - 1) * (n_videos - 1))
    else:  # one video: its effect and the residual cannot be told from the seed effect
        ms_video = ms_res = 0.0
    s2_video = max(ms_video - ms_res, 0.0) / n_seeds
    var_seed, var_video = ms_seed / sv, s2_video / n_videos
    var = var_seed + var_video
    df = float(n_seeds - 1)
    if var_video > 0 and var > 0:  # Satterthwaite over MS_seed, MS_video and -MS_res
        den = (var_seed ** 2 / (n_seeds - 1) + (ms_video / sv) ** 2 / (n_videos - 1)
               + (ms_res / sv) ** 2 / ((n_seeds - 1) * (n_videos - 1)))
        df = max(df, var * var / den)
    return {"S": n_seeds, "V": n_videos, "var": var, "df": df, "seed_var": ms_seed / n_videos,
            "video_var": s2_video, "s2_seed": max(ms_seed - ms_res, 0.0) / n_videos, "s2_video": s2_video,
            "s2_res": ms_res, "ms_seed": ms_seed, "ms_video": ms_video, "ms_res": ms_res}


def t_quantile(alpha: float, df: float) -> float:
    """The t > 0 with two-sided Student-t p ``alpha`` at ``df`` (bisection on :func:`t_two_sided_p`)."""
    lo, hi = -30.0, 30.0  # log t
    for _ in range(60):
        mid = (lo + hi) / 2
        if t_two_sided_p(math.exp(mid), df) > alpha:
            lo = mid
        else:
            hi = mid
    return math.exp((lo + hi) / 2)


def cc_crit(alpha: float, v_seed: float, v_video: float, df_seed: int, df_video: int) -> float:
    """Cochran-Cox critical value of ``mean / sqrt(v_seed + v_video)``: the quantiles of the two
    components' t distributions weighted by their variances (``alpha`` two-sided)."""
    v = v_seed + v_video
    if alpha == ALPHA_TEST:
        q_seed, q_video = t975(df_seed), t975(max(df_video, 1))
    else:
        q_seed = t_quantile(alpha, df_seed) if df_seed <= len(_T975) else _z(alpha)
        q_video = 0.0 if v_video <= 0 else t_quantile(alpha, df_video) if df_video <= len(_T975) else _z(alpha)
    return q_seed if v <= 0 else (v_seed * q_seed + v_video * q_video) / v


def cc_p(t: float, v_seed: float, v_video: float, df_seed: int, df_video: int) -> float:
    """Two-sided p of the Cochran-Cox test: the ``alpha`` whose :func:`cc_crit` is ``|t|`` (bisection in
    log alpha; 0.0 below 1e-12)."""
    t = abs(t)
    if v_video <= 0:
        return t_two_sided_p(t, df_seed)
    if cc_crit(1e-12, v_seed, v_video, df_seed, df_video) <= t:
        return 0.0
    lo, hi = math.log(1e-12), 0.0  # crit(lo) > t >= crit(hi) = 0
    for _ in range(40):
        mid = (lo + hi) / 2
        if cc_crit(math.exp(mid), v_seed, v_video, df_seed, df_video) > t:
            lo = mid
        else:
            hi = mid
    return math.exp((lo + hi) / 2)


ALPHA_TEST = 0.05


def _z(alpha: float) -> float:
    """Two-sided normal quantile (what :func:`t975` uses beyond 30 df)."""
    return statistics.NormalDist().inv_cdf(1.0 - alpha / 2.0)


def boot_test(diff: np.ndarray, count: np.ndarray, reps: int, rng: np.random.Generator,
              p_value: bool = True) -> dict[str, Any]:
    """The headline seed-level test of the mean difference in the crossed design (see
    :mod:`eval.compare`): variance-components standard error, Cochran-Cox critical value, the crossed
    bootstrap beside it.

    ``se = sqrt(sd_seed^2 / S + s2_video / V)`` from :func:`crossed_components` (``var_seed`` and
    ``var_video`` its two terms); the test refers ``mean / se`` to the Cochran-Cox critical value
    ``crit = (var_seed * t_{S-1} + var_video * t_{V-1}) / (var_seed + var_video)`` (exactly the paired
    t over seeds when the video component is 0). The interval is ``mean ± crit * se`` (at 0.975) and
    ``p`` the alpha whose critical value is ``|mean| / se`` (:func:`cc_p`; with ``p_value`` False only
    ``reject`` = p < 0.05 is computed, which the simulated nulls use). ``df`` is S - 1, ``df_video`` V - 1.

    When the design is not balanced (seeds scored on other questions) the crossed bootstrap's SE times
    ``sqrt(S / (S - 1))`` with t over S - 1 df is used instead (method "crossed bootstrap";
    conservative). The crossed bootstrap (:func:`crossed_bootstrap`, ``reps`` replicates; none when
    ``reps`` is 0) gives ``boot_se``, a percentile interval and the percentile p
    (``2 * min(P*(<= 0), P*(>= 0))``) beside them; they are not the test.
    """
    n_seeds = diff.shape[0]
    per_seed = 100.0 * diff.sum(1) / np.maximum(count.sum(1), 1)
    mean = float(per_seed.mean())
    out: dict[str, Any] = {"mean": mean, "se": None, "lo": None, "hi": None, "p": None, "df": None,
                           "df_video": None, "crit": None, "reject": None, "method": None,
                           "var_seed": None, "var_video": None, "seed_var": None, "video_var": None, "V": None,
                           "pct_lo": None, "pct_hi": None, "p_pct": None, "reps": 0, "boot_se": None}
    if n_seeds < 2:
        return out
    boot = crossed_bootstrap(diff, count, reps, rng) if reps > 0 else None
    comp = crossed_components(diff, count)
    df = n_seeds - 1
    if comp is not None:
        v_seed, v_video = comp["seed_var"] / n_seeds, comp["video_var"] / comp["V"]
        df_video = comp["V"] - 1
        out.update(method="anova", var_seed=v_seed, var_video=v_video, seed_var=comp["seed_var"],
                   video_var=comp["video_var"], V=comp["V"], df_video=df_video)
    else:
        boot = boot if boot is not None else crossed_bootstrap(diff, count, max(reps, 200), rng)
        v_seed, v_video, df_video = float(boot.var(ddof=1)) * n_seeds / (n_seeds - 1), 0.0, 0
        out.update(method="crossed bootstrap")
    se = math.sqrt(v_seed + v_video)
    crit = cc_crit(ALPHA_TEST, v_seed, v_video, df, df_video)
    if se > 1e-9:
        t = mean / se
        reject = abs(t) > crit
        p = cc_p(t, v_seed, v_video, df, df_video) if p_value else None
    else:
        se, reject = 0.0, abs(mean) > 1e-9
        p = 0.0 if reject else 1.0
    out.update(se=se, lo=mean - crit * se, hi=mean + crit * se, p=p, df=df, crit=crit, reject=bool(reject))
    if boot is not None and boot.size:
        out.update(pct_lo=float(np.percentile(boot, 2.5)), pct_hi=float(np.percentile(boot, 97.5)),
                   p_pct=min(1.0, 2.0 * min(float((boot <= 0).mean()), float((boot >= 0).mean()))),
                   reps=int(boot.size), boot_se=float(boot.std(ddof=1)))
    return out
