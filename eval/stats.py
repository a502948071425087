"""Per-seed aggregates shared by the report, its plots and the paired comparisons.

The bottom of ``eval``'s reporting modules: :mod:`eval.report` imports :mod:`eval.compare` and
:mod:`eval.plots`, and all three take their intervals from here (so none of them imports another
in a loop).
"""

from __future__ import annotations

import math
from typing import Any

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
