"""Per-seed aggregates shared by the report, its plots and the paired comparisons.

The bottom of ``eval``'s reporting modules: :mod:`eval.report` imports :mod:`eval.compare` and
:mod:`eval.plots`, and all three take their intervals from here (so none of them imports another
in a loop).
"""

from __future__ import annotations

import math
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


def hier_bootstrap(diff: np.ndarray, count: np.ndarray, videos: np.ndarray, reps: int,
                   rng: np.random.Generator, chunk: int = 256) -> np.ndarray:
    """Replicates of the mean over seeds of the accuracy difference (points), resampling seeds with
    replacement and, within each drawn seed, its videos with replacement (a video's questions move
    together, and both settings of a pair get the same drawn videos).

    Args:
        diff: (seeds, max videos) per seed and video, B's correct answers minus A's (0 as padding).
        count: (seeds, max videos) questions per seed and video (0 as padding).
        videos: (seeds,) the number of videos of each seed (its first ``videos[s]`` columns).
    """
    n_seeds, width = diff.shape
    full = bool((videos == width).all())
    keep_cols = np.arange(width)
    flat_d, flat_n = diff.ravel(), count.ravel()
    out = []
    for start in range(0, reps, chunk):
        k = min(chunk, reps - start)
        si = rng.integers(0, n_seeds, size=(k, n_seeds))
        nv = videos[si][..., None]
        if full:
            vi = rng.integers(0, width, size=(k, n_seeds, width))
        else:
            vi = np.minimum((rng.random((k, n_seeds, width)) * nv).astype(np.int64), width - 1)
        flat = si[..., None] * width + vi
        d, n = flat_d[flat], flat_n[flat]
        if not full:  # a seed with fewer videos draws only its own number of them
            keep = keep_cols < nv
            d, n = np.where(keep, d, 0), np.where(keep, n, 0)
        out.append(100.0 * (d.sum(-1) / np.maximum(n.sum(-1), 1)).mean(-1))
    return np.concatenate(out)


def boot_test(diff: np.ndarray, count: np.ndarray, videos: np.ndarray, reps: int,
              rng: np.random.Generator) -> dict[str, Any]:
    """The seed-level test of a mean difference with a :func:`hier_bootstrap` standard error.

    ``se`` is the standard deviation of the replicates times ``sqrt(S / (S - 1))`` (a bootstrap over
    S units gives (S - 1)/S of the unbiased variance of their mean); the interval is ``mean ± t_{0.975,
    S-1} * se`` and ``p`` the two-sided p of ``mean / se`` against Student's t with S - 1 df. A
    percentile interval and the percentile p (``2 * min(P*(<= 0), P*(>= 0))``) are given beside them:
    with 3 seeds whose differences share a sign the percentile p is ~0 whatever the video noise, which
    happens to 1 null in 4, so it is not the test.
    """
    n_seeds = diff.shape[0]
    per_seed = 100.0 * diff.sum(1) / np.maximum(count.sum(1), 1)
    mean = float(per_seed.mean())
    if n_seeds < 2:
        return {"mean": mean, "se": None, "lo": None, "hi": None, "p": None, "df": None,
                "pct_lo": None, "pct_hi": None, "p_pct": None, "reps": 0}
    boot = hier_bootstrap(diff, count, videos, reps, rng)
    se = float(boot.std(ddof=1)) * math.sqrt(n_seeds / (n_seeds - 1))
    df = n_seeds - 1
    if se > 0:
        p = t_two_sided_p(mean / se, df)
    else:
        p = 1.0 if mean == 0 else 0.0
    half = t975(df) * se
    p_pct = min(1.0, 2.0 * min(float((boot <= 0).mean()), float((boot >= 0).mean())))
    return {"mean": mean, "se": se, "lo": mean - half, "hi": mean + half, "p": p, "df": df,
            "pct_lo": float(np.percentile(boot, 2.5)), "pct_hi": float(np.percentile(boot, 97.5)),
            "p_pct": p_pct, "reps": reps}
