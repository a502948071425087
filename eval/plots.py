"""PNG plots of a report summary (:func:`eval.report.summarize`), drawn with matplotlib's Agg backend.

- ``learning_curves.png``: one panel per run: training loss over optimizer steps (from the run's
  metrics.jsonl) and, on a second axis, validation accuracy at the evaluated checkpoints.
- ``acc_per_type.png``: grouped bars, one bar per setting (label) for overall and every type,
  error bars = the summary's interval over seeds.
- ``acc_vs_beta.png``: overall accuracy against the reasoning-loss weight beta, one line per
  series (multi-task runs of one reasoning source); QA-only and STL runs as dashed reference lines.
- ``acc_vs_teacher.png``: overall accuracy against the teacher's accuracy on the training
  questions (the percentage of reasoning chains whose conclusion was right), one line per series;
  runs that use no teacher reasoning as dashed reference lines.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from data_shards.common.atomic import atomic_path
from eval.stats import interval

CURVES_PLOT = "learning_curves.png"
PLOTS = ("acc_per_type.png", "acc_vs_beta.png", "acc_vs_teacher.png")


def _pyplot():
    # matplotlib is optional (the "report" extra) and slow to import: only when a plot is drawn
    import matplotlib

    matplotlib.use("Agg")  # no display on a cluster node or CI
    import matplotlib.pyplot as plt

    return plt


def _yerr(cells: list[dict[str, Any]]) -> list[list[float]]:
    """Asymmetric error bars [below, above] from interval cells (0 where there is no interval)."""
    below = [c["mean"] - c["lo"] if c["n"] > 1 else 0.0 for c in cells]
    above = [c["hi"] - c["mean"] if c["n"] > 1 else 0.0 for c in cells]
    return [below, above]


def _series_key(meta: dict[str, Any], label: str, vary: str) -> str:
    """Runs on one line share everything but the swept value: task, reasoning source and the
    OTHER sweep's value (a beta-sweep run must not land on the teacher-accuracy line)."""
    if meta.get("series"):
        return str(meta["series"])
    if not meta.get("task_mode"):
        return label
    key = f"{meta['task_mode']}({meta.get('reasoning_source', '?')})"
    beta, teacher = _number(meta.get("beta")), _number(meta.get("teacher_acc"))
    if vary == "beta" and teacher is not None:
        key += f" teacher {teacher:.0f}%"
    if vary == "teacher_acc" and beta is not None:
        key += f" beta={beta:g}"
    return key


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def plot_per_type(summary: dict[str, Any], path: Path) -> str | None:
    """Grouped bars of accuracy per type; returns None when written, else the reason it was not."""
    groups = summary["groups"]
    if not groups:
        return "no runs"
    plt = _pyplot()
    cols = ["overall"] + summary["types"]
    width = 0.8 / len(groups)
    fig, ax = plt.subplots(figsize=(min(14.0, max(6.0, 0.5 * len(cols) * max(1, len(groups)) ** 0.5 + 3)), 4.5))
    for i, g in enumerate(groups):
        cells = [g["overall"]] + [g["per_type"][t] for t in summary["types"]]
        xs = [j + (i - (len(groups) - 1) / 2) * width for j in range(len(cols))]
        means = [c["mean"] if c["n"] else 0.0 for c in cells]
        many = any(c["n"] > 1 for c in cells)
        ax.bar(xs, means, width, yerr=_yerr(cells) if many else None, capsize=2,
               label=f"{g['label']} (n={len(g['seeds'])})")
    ax.set_xticks(range(len(cols)))
    ax.set_xticklabels(cols, rotation=30, ha="right")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Accuracy per question type")
    ax.legend(fontsize=7, loc="upper right")
    _save(fig, path, plt)
    return None


def sweep(summary: dict[str, Any], key: str, line_modes: tuple[str, ...]) -> dict[str, Any]:
    """Overall accuracy against ``meta[key]`` (e.g. beta, teacher_acc), aggregated over seeds.

    Runs with a numeric value whose task mode is in ``line_modes`` (or unknown) make lines, one
    per series (:func:`_series_key`); the other settings become reference values. When some
    series has 2+ x values, single-point series are dropped: they are runs of the OTHER sweep.

    Returns:
        ``{"lines": {series: {x: interval cell}}, "refs": {label: interval cell}}``.
    """
    points: dict[str, dict[float, list[float]]] = {}
    refs: dict[str, list[float]] = {}
    for r in summary["runs"]:
        if r["overall"] is None:
            continue
        x = _number(r["meta"].get(key))
        mode = r["meta"].get("task_mode")
        if x is not None and (mode is None or mode in line_modes):
            points.setdefault(_series_key(r["meta"], r["label"], key), {}).setdefault(x, []).append(r["overall"])
        else:
            refs.setdefault(r["label"], []).append(r["overall"])
    if any(len(by_x) > 1 for by_x in points.values()):
        points = {k: v for k, v in points.items() if len(v) > 1}
    kind = summary["interval"]
    return {"lines": {name: {x: interval(by_x[x], kind) for x in sorted(by_x)} for name, by_x in points.items()},
            "refs": {label: interval(vals, kind) for label, vals in refs.items()}}


def plot_vs(summary: dict[str, Any], path: Path, key: str, xlabel: str, title: str,
            line_modes: tuple[str, ...], xlim: tuple[float, float] | None = None) -> str | None:
    """Draw :func:`sweep` (lines with interval error bars, dashed reference lines)."""
    data = sweep(summary, key, line_modes)
    points, refs = data["lines"], data["refs"]
    if not points:
        return f"no run has a numeric {key!r} in its meta"
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, by_x in points.items():
        xs = sorted(by_x)
        cells = [by_x[x] for x in xs]
        ax.errorbar(xs, [c["mean"] for c in cells], yerr=_yerr(cells), marker="o", capsize=3,
                    label=f"{name} (n={max(c['n'] for c in cells)})")
    for i, (label, cell) in enumerate(refs.items()):
        ax.axhline(cell["mean"], linestyle="--", linewidth=1, color=f"C{(len(points) + i) % 10}",
                   label=f"{label} (n={cell['n']})")
    all_x = [x for by_x in points.values() for x in by_x]
    if xlim is not None and xlim[0] <= min(all_x) and max(all_x) <= xlim[1]:
        pad = 0.05 * (xlim[1] - xlim[0])  # the whole natural range, so that sweeps read alike
        ax.set_xlim(xlim[0] - pad, xlim[1] + pad)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("overall accuracy (%)")
    ax.set_title(title)
    ax.legend(fontsize=7)
    _save(fig, path, plt)
    return None


def _save(fig, path: Path, plt) -> None:
    fig.tight_layout()
    try:
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=110, format="png")
    finally:
        plt.close(fig)


# meta key -> (plot file, task modes drawn as lines, x label, title, natural x range)
SWEEPS: dict[str, tuple[str, tuple[str, ...], str, str, tuple[float, float]]] = {
    "beta": (PLOTS[1], ("mtl",), "beta (weight of the reasoning loss)", "Accuracy vs beta", (0.0, 1.0)),
    "teacher_acc": (PLOTS[2], ("mtl", "stl"), "teacher accuracy on the training questions (%)",
                    "Accuracy vs teacher accuracy", (0.0, 100.0)),
}


def sweeps(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """:func:`sweep` for every key of :data:`SWEEPS` (the numbers behind the two sweep plots)."""
    return {key: sweep(summary, key, spec[1]) for key, spec in SWEEPS.items()}


def plot_curves(summary: dict[str, Any], path: Path) -> str | None:
    """A panel per run with a learning curve: train loss (left axis) and val accuracy (right axis)."""
    runs = [r for r in summary["runs"] if any((r.get("curve") or {}).get(k) for k in ("train_loss", "val_acc"))]
    if not runs:
        return "no run has a learning curve (metrics.jsonl next to its checkpoints, or curve.json)"
    plt = _pyplot()
    cols = min(4, len(runs))
    rows = -(-len(runs) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.flat[len(runs):]:
        ax.set_visible(False)
    for ax, r in zip(axes.flat, runs):
        curve = r["curve"]
        if curve.get("train_loss"):
            xs, ys = zip(*curve["train_loss"])
            ax.plot(xs, ys, color="tab:blue", lw=1.2, label="train loss")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("train loss", color="tab:blue")
        ax.set_title(f"{r['label']} (seed {r['seed']})" if r.get("seed") is not None else r["label"], fontsize=9)
        if curve.get("val_acc"):
            ax2 = ax.twinx()
            xs, ys = zip(*curve["val_acc"])
            ax2.plot(xs, ys, "o-", color="tab:red", lw=1.2, label="val accuracy %")
            ax2.set_ylabel("val accuracy %", color="tab:red")
            ax2.set_ylim(0, 100)
    _save(fig, path, plt)
    return None


def draw_all(summary: dict[str, Any], out: Path) -> dict[str, str | None]:
    """Draw the plots into ``out``: plot file name -> None (written) or why it was skipped."""
    result = {CURVES_PLOT: plot_curves(summary, out / CURVES_PLOT), PLOTS[0]: plot_per_type(summary, out / PLOTS[0])}
    for key, (name, modes, xlabel, title, xlim) in SWEEPS.items():
        result[name] = plot_vs(summary, out / name, key, xlabel, title, modes, xlim)
    return result
