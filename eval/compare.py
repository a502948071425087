"""Paired comparisons of two settings, and the size of the difference they could detect.

Two settings of a study share the val questions, and each seed of one is trained with the same
seed as the same-numbered seed of the other: the comparison is paired at two levels.

- **Over seeds** (what generalizes over training randomness): the per-seed differences
  ``d_s = acc_B(s) - acc_A(s)`` (points), their mean with a 95% Student-t interval, and the
  minimum detectable effect (MDE) of a two-sided paired t-test at alpha 0.05 and power 0.80:
  ``(t_{0.975, n-1} + t_{0.80, n-1}) * sd(d) / sqrt(n)``; with it, how many seeds would bring the
  MDE down to a target (3 points by default), assuming the measured ``sd(d)``.
- **Over questions** (these trained models, question sampling only): every (seed, question) pair
  pooled; ``b`` = questions only B gets right, ``c`` = only A; the difference ``(b - c) / N`` with
  its 95% normal interval (the paired-proportion variance ``((b + c)/N - d^2) / N``), McNemar's
  test (chi-square with continuity correction) and the MDE ``(1.96 + 0.84) * sqrt((b + c)/N / N)``.

Per-question correctness comes from each evaluated run's ``records.jsonl`` (``python -m eval run``
writes one line per question, with ``correct``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from eval.stats import interval, t975

# One-sided 80% Student-t quantiles t_{0.80, df} for df = 1..30; beyond, the normal 0.8416.
_T80 = (1.376, 1.061, 0.978, 0.941, 0.920, 0.906, 0.896, 0.889, 0.883, 0.879,
        0.876, 0.873, 0.870, 0.868, 0.866, 0.865, 0.863, 0.862, 0.861, 0.860,
        0.859, 0.858, 0.858, 0.857, 0.856, 0.856, 0.855, 0.855, 0.854, 0.854)
Z975, Z80 = 1.959964, 0.841621


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


def correctness(run_dir: str | Path) -> dict[str, bool]:
    """qid -> whether the run answered it right, from the run's per-question ``records.jsonl``
    (questions without a gold answer are left out)."""
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
            out[row["qid"]] = row["correct"]
    return out


def mcnemar_p(b: int, c: int) -> float:
    """Two-sided p of McNemar's chi-square test with continuity correction (1 df)."""
    if b + c == 0:
        return 1.0
    chi2 = max(abs(b - c) - 1, 0) ** 2 / (b + c)
    return math.erfc(math.sqrt(chi2 / 2))


def paired(a_runs: dict[int, Path], b_runs: dict[int, Path], target: float = 3.0) -> dict[str, Any]:
    """Compare setting B against setting A over their common seeds (seed -> eval run directory).

    Returns the seed-level and question-level statistics described in the module docstring
    (differences are B - A, in points).

    Raises:
        ValueError: no common seed, or two runs of one seed that were scored on different questions.
    """
    seeds = sorted(set(a_runs) & set(b_runs))
    if not seeds:
        raise ValueError(f"no common seed: A has {sorted(a_runs)}, B has {sorted(b_runs)}")
    diffs, b_only, a_only, total = [], 0, 0, 0
    for s in seeds:
        ca, cb = correctness(a_runs[s]), correctness(b_runs[s])
        if set(ca) != set(cb):
            raise ValueError(f"seed {s}: {a_runs[s]} and {b_runs[s]} were scored on different questions "
                             f"({len(ca)} vs {len(cb)}); a paired comparison needs the same val split")
        n = len(ca)
        diffs.append(100.0 * (sum(cb.values()) - sum(ca.values())) / n)
        b_only += sum(cb[q] and not ca[q] for q in ca)
        a_only += sum(ca[q] and not cb[q] for q in ca)
        total += n
    seed_level = interval(diffs)
    sd = None
    if len(diffs) > 1:
        m = seed_level["mean"]
        sd = math.sqrt(sum((d - m) ** 2 for d in diffs) / (len(diffs) - 1))
    d = (b_only - a_only) / total
    disc = (b_only + a_only) / total
    se = math.sqrt(max(disc - d * d, 0.0) / total)
    return {
        "seeds": seeds, "diffs": diffs, "mean": seed_level["mean"], "lo": seed_level["lo"], "hi": seed_level["hi"],
        "sd": sd, "mde_seeds": None if sd is None else mde_seeds(sd, len(diffs)),
        "seeds_for_target": None if sd is None else seeds_needed(sd, target), "target": target,
        "questions": total, "b_only": b_only, "a_only": a_only,
        "q_diff": 100.0 * d, "q_lo": 100.0 * (d - Z975 * se), "q_hi": 100.0 * (d + Z975 * se),
        "q_p": mcnemar_p(b_only, a_only), "q_mde": 100.0 * (Z975 + Z80) * math.sqrt(disc / total),
    }


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


def markdown(comparisons: list[dict[str, Any]]) -> list[str]:
    """The report's section: one row per comparison."""
    if not comparisons:
        return []
    target = comparisons[0]["target"]
    lines = ["", "## Paired comparisons (B - A, points)", "",
             "Over seeds: mean of the per-seed differences ± 95% t half-width, the MDE of a paired t-test "
             f"(alpha 0.05, power 0.8) and the seeds a {target:g}-point MDE would need at the measured sd. "
             "Over questions: every (seed, question) pooled, 95% interval, McNemar p and MDE "
             "(python -m eval report's eval/compare.py says how).", "",
             "| A | B | seeds | per-seed B - A | mean ± t95 | sd | MDE (seeds) | seeds for "
             f"{target:g} | questions | B - A ± 95% | McNemar p | MDE (questions) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in comparisons:
        half = None if c["lo"] is None else c["hi"] - c["mean"]
        mean = _num(c["mean"]) + ("" if half is None else f" ± {half:.1f}")
        qhalf = c["q_hi"] - c["q_diff"]
        lines.append(
            f"| {c['a']} | {c['b']} | {len(c['seeds'])} | {', '.join(f'{d:+.1f}' for d in c['diffs'])} | {mean} | "
            f"{_num(c['sd'], '.1f')} | {_num(c['mde_seeds'], '.1f')} | {c['seeds_for_target'] or '-'} | "
            f"{c['questions']} | {c['q_diff']:+.1f} ± {qhalf:.1f} | {c['q_p']:.3g} | {c['q_mde']:.1f} |")
    return lines
