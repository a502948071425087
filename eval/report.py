"""``python -m eval report RUNS... --out DIR``: compare evaluated runs (markdown + PNG + JSON).

A RUN is a directory written by ``python -m eval run`` (``run.json`` + ``scores.json``, and
``probes/<name>/scores.json`` per probe); an argument may also be a directory whose
sub-directories are runs. Runs with the same label (``run.json["label"]``, e.g. "MTL(refined)")
are seeds of one setting: the report gives, per label, the mean over seeds and an interval:

- ``t95`` (default): mean ± the half-width of the 95% Student-t confidence interval of the mean,
  ``t_{0.975, n-1} * s / sqrt(n)`` with the sample standard deviation ``s`` over the n seeds;
- ``minmax``: mean [min, max] over the seeds.

One seed gives the value without an interval. Probe results are reported as deltas (points of
accuracy) against the same run without the probe, averaged over seeds the same way.

Reference rows: runs whose ``run.json`` meta has ``reference`` in ``text_only``, ``last_frame``,
``order_invariant`` (labels "Text only", "Last frame only", "Order-invariant"; trained and evaluated
like the settings) are grouped at the bottom of the accuracy table, marked as references. From the
runs' ``records.jsonl`` the report adds "Reasoning over time": each setting's accuracy on the
order-dependent question types (``--order-types``) and its margin over the order-invariant row.

``--compare A B`` adds a paired comparison over seeds (eval/compare.py: crossed seed x video test,
MDE, seeds needed for ``--target`` points, false-positive rate on simulated nulls); ``--null A B``
adds a null control (a pair whose true difference is 0, e.g. QA-only against beta = 0 MTL) to the
same table, marked as such.

Written to ``--out``: ``report.md`` (tables), ``summary.json`` (every number of the tables and
every run), ``learning_curves.png`` (when the runs have metrics.jsonl), ``acc_per_type.png``,
``acc_vs_beta.png`` and ``acc_vs_teacher.png`` (a plot is skipped, with the reason in report.md,
when no run has the value on its x axis).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data_shards.common.atomic import atomic_write_text
from eval.compare import (
    ORDER_TYPES,
    REFERENCES,
    Answers,
    crossover,
    load_answers,
    order_margins,
    order_markdown,
    paired_answers,
)
from eval.compare import markdown as compare_markdown
from eval.plots import CURVES_PLOT, draw_all, sweeps
from eval.stats import INTERVALS, interval


@dataclass
class Run:
    """One evaluated run directory."""

    path: Path
    label: str
    seed: int | None
    meta: dict[str, Any]
    scores: dict[str, Any]
    probes: dict[str, dict[str, Any]] = field(default_factory=dict)
    """probe name -> its scores.json result."""
    curve: dict[str, list[list[float]]] = field(default_factory=dict)
    """Learning curve, where the files exist: "train_loss" [[step, loss], ...] from the training
    run's metrics.jsonl (next to the evaluated checkpoint dir), "val_acc" [[step, accuracy], ...]
    from ``curve.json`` in the run directory (``python -m eval demo`` writes it)."""

    @property
    def overall(self) -> float | None:
        return self.scores.get("overall")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None


def load_run(path: str | Path) -> Run:
    """Read one run directory; a clear error naming the file and field when something is off."""
    path = Path(path)
    info_path, scores_path = path / "run.json", path / "scores.json"
    for p in (info_path, scores_path):
        if not p.is_file():
            raise ValueError(f"{path}: not an evaluated run (missing {p.name}; write it with python -m eval run)")
    info, scores = _read_json(info_path), _read_json(scores_path)
    if not isinstance(info, dict) or not isinstance(scores, dict):
        raise ValueError(f"{path}: run.json and scores.json must be json objects")  # noqa: TRY004 (bad file)
    for key in ("overall", "per_type"):
        if key not in scores:
            raise ValueError(f"{scores_path}: missing field {key!r} (not an eval.score result)")
    meta = info.get("meta") or {}
    if not isinstance(meta, dict):
        raise ValueError(f"{info_path}: field 'meta' must be an object, got {type(meta).__name__}")  # noqa: TRY004
    label = info.get("label") or path.name
    seed = meta.get("seed")
    probes = {}
    for name in info.get("probes") or {}:
        p = path / "probes" / name / "scores.json"
        if not p.is_file():
            raise ValueError(f"{info_path}: probe {name!r} listed but {p} is missing")
        probes[name] = _read_json(p)
    return Run(path=path, label=str(label), seed=None if seed is None else int(seed), meta=meta,
               scores=scores, probes=probes, curve=load_curve(path, info))


def load_curve(path: Path, info: dict[str, Any]) -> dict[str, list[list[float]]]:
    """The learning curve of an evaluated run (see :attr:`Run.curve`); {} when nothing was recorded."""
    curve: dict[str, list[list[float]]] = {}
    ckpt = info.get("checkpoint")
    metrics = Path(ckpt).parent / "metrics.jsonl" if isinstance(ckpt, str) else None
    if metrics is not None and metrics.is_file():
        rows = []
        for n, line in enumerate(metrics.read_text(encoding="utf-8").splitlines(), 1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise ValueError(f"{metrics}:{n}: invalid JSON line") from None
            if isinstance(row, dict) and isinstance(row.get("step"), int) and isinstance(row.get("loss"), (int, float)):
                rows.append([row["step"], float(row["loss"])])
        curve["train_loss"] = rows
    if (path / "curve.json").is_file():
        data = _read_json(path / "curve.json")
        pts = data.get("val_acc") if isinstance(data, dict) else None
        if not isinstance(pts, list) or not all(isinstance(x, list) and len(x) == 2 for x in pts):
            raise ValueError(f"{path / 'curve.json'}: field 'val_acc' must be a list of [step, accuracy] pairs")
        curve["val_acc"] = pts
    return curve


def find_runs(paths: list[str | Path]) -> list[Run]:
    """Runs from arguments that are run directories or directories of run directories."""
    runs: list[Run] = []
    for arg in paths:
        arg = Path(arg)
        if (arg / "run.json").is_file():
            runs.append(load_run(arg))
        elif arg.is_dir():
            subs = sorted(d for d in arg.iterdir() if (d / "run.json").is_file())
            if not subs:
                raise ValueError(f"{arg}: neither a run directory nor a directory of runs (no run.json)")
            runs.extend(load_run(d) for d in subs)
        else:
            raise ValueError(f"{arg}: no such run directory")
    if not runs:
        raise ValueError("no runs given")
    return runs


def reference_of(run: Run) -> str | None:
    """The reference kind of a run (``REFERENCES`` key in its meta ``reference``), else None."""
    ref = run.meta.get("reference")
    return ref if ref in REFERENCES else None


def _group_order(runs: list[Run]) -> list[str]:
    """Labels in the order of the runs, the reference rows last (text only, last frame, order-invariant)."""
    labels = list(dict.fromkeys(r.label for r in runs))
    kind = {r.label: reference_of(r) for r in runs}
    order = list(REFERENCES)
    return ([lb for lb in labels if kind[lb] is None]
            + sorted((lb for lb in labels if kind[lb] is not None), key=lambda lb: order.index(kind[lb])))


def _type_columns(runs: list[Run]) -> list[str]:
    return list(dict.fromkeys(g for r in runs for g in r.scores["per_type"]))


def summarize(runs: list[Run], kind: str = "t95") -> dict[str, Any]:
    """Per-label aggregates over seeds: overall, per type, probe deltas; plus every run.

    A seed whose value is None (a group without questions) is left out of that cell's interval.
    """
    types = _type_columns(runs)
    probe_names = list(dict.fromkeys(p for r in runs for p in r.probes))
    groups = []
    for label in _group_order(runs):
        members = [r for r in runs if r.label == label]
        seeds = [r.seed for r in members]
        if len(set(seeds)) != len(seeds):
            dup = sorted({str(s) for s in seeds if seeds.count(s) > 1})
            raise ValueError(f"runs labelled {label!r} repeat seed(s) {', '.join(dup)}: "
                             f"{', '.join(str(r.path) for r in members)}")
        per_type = {t: interval([r.scores["per_type"][t] for r in members
                                 if r.scores["per_type"].get(t) is not None], kind) for t in types}
        probes = {}
        for name in probe_names:
            deltas = [r.probes[name]["overall"] - r.overall for r in members
                      if name in r.probes and r.probes[name].get("overall") is not None and r.overall is not None]
            probes[name] = interval(deltas, kind)
        groups.append({
            "label": label, "seeds": seeds, "runs": [str(r.path) for r in members],
            "reference": reference_of(members[0]),
            "meta": _common_meta(members),
            "overall": interval([r.overall for r in members if r.overall is not None], kind),
            "per_type": per_type, "probe_delta": probes,
        })
    return {
        "interval": kind, "types": types, "probes": probe_names, "groups": groups,
        "runs": [{"path": str(r.path), "label": r.label, "seed": r.seed, "meta": r.meta, "overall": r.overall,
                  "per_type": r.scores["per_type"], "count": r.scores.get("count"),
                  "probes": {n: p.get("overall") for n, p in r.probes.items()}, "curve": r.curve} for r in runs],
    }


def _relative_paths(summary: dict[str, Any], out: Path) -> dict[str, Any]:
    """The runs' paths relative to the report's folder, so that a report moved or committed together with
    its runs names no directory of the machine that made it."""
    def rel(p: str) -> str:
        return os.path.relpath(Path(p).resolve(), out.resolve())

    for g in summary["groups"]:
        g["runs"] = [rel(p) for p in g["runs"]]
    for r in summary["runs"]:
        r["path"] = rel(r["path"])
    return summary


def _common_meta(members: list[Run]) -> dict[str, Any]:
    """Meta values shared by every seed of a label (seed and per-run paths excluded)."""
    keys = [k for k in members[0].meta if k not in ("seed",)]
    return {k: members[0].meta[k] for k in keys if all(m.meta.get(k) == members[0].meta[k] for m in members)}


def fmt_cell(cell: dict[str, Any], kind: str, signed: bool = False) -> str:
    """``mean ± half`` (t95) or ``mean [min, max]`` (minmax); ``-`` without values."""
    if cell["n"] == 0:
        return "-"
    s = "+.1f" if signed else ".1f"
    text = format(cell["mean"], s)
    if cell["n"] > 1:
        text += f" ± {cell['half']:.1f}" if kind == "t95" else f" [{cell['lo']:{s}}, {cell['hi']:{s}}]"
    return text


_META_COLUMNS = (("task_mode", "task"), ("reasoning_source", "reasoning"), ("beta", "beta"),
                 ("teacher_acc", "teacher acc %"), ("dataset", "dataset"), ("eval_mode", "eval mode"),
                 ("frames", "frames"))


def markdown(summary: dict[str, Any], plots: dict[str, str | None]) -> str:
    """The report as markdown: accuracy table, probe deltas, settings, plots."""
    kind = summary["interval"]
    how = ("mean ± half-width of the 95% Student-t interval over seeds" if kind == "t95"
           else "mean [min, max] over seeds")
    lines = ["# Evaluation report", "",
             (f"{len(summary['runs'])} run(s), {len(summary['groups'])} setting(s). Accuracy in %; "
              f"with several seeds: {how}; one seed: the value alone."), "",
             "## Accuracy", ""]
    cols = ["overall"] + summary["types"]
    lines.append("| run | seeds | " + " | ".join(cols) + " |")
    lines.append("|---|---|" + "---|" * len(cols))
    for g in summary["groups"]:
        cells = [fmt_cell(g["overall"], kind)] + [fmt_cell(g["per_type"][t], kind) for t in summary["types"]]
        name = f"{g['label']} (reference)" if g.get("reference") else g["label"]
        lines.append(f"| {name} | {len(g['seeds'])} | " + " | ".join(cells) + " |")
    if any(g.get("reference") for g in summary["groups"]):
        lines += ["", "Reference rows (trained and evaluated the same way): text only = frames zeroed; "
                  "last frame only; order-invariant = the frames in a fresh random order every step."]
    curves = plots.get(CURVES_PLOT, "no plot")
    lines += ["", f"![{CURVES_PLOT}]({CURVES_PLOT})" if curves is None else f"- {CURVES_PLOT}: not drawn ({curves})"]
    if summary["probes"]:
        lines += ["", "## Probes: overall accuracy with the probe minus without it (points)", "",
                  "| run | " + " | ".join(summary["probes"]) + " |", "|---|" + "---|" * len(summary["probes"])]
        for g in summary["groups"]:
            lines.append(f"| {g['label']} | " + " | ".join(fmt_cell(g["probe_delta"][p], kind, signed=True)
                                                         for p in summary["probes"]) + " |")
    lines += _sweep_tables(summary)
    lines += order_markdown(summary.get("order_margin"))
    lines += compare_markdown(summary.get("comparisons", []))
    lines += _teacher_markdown(summary.get("teacher_lines", []))
    lines += ["", "## Settings", "", "| run | " + " | ".join(h for _, h in _META_COLUMNS) + " | directories |",
              "|---|" + "---|" * (len(_META_COLUMNS) + 1)]
    for g in summary["groups"]:
        vals = [_meta_text(g["meta"].get(k)) for k, _ in _META_COLUMNS]
        lines.append(f"| {g['label']} | " + " | ".join(vals) + " | " + ", ".join(g["runs"]) + " |")
    lines += ["", "## Plots", ""]
    for name, reason in plots.items():
        if name == CURVES_PLOT:
            continue  # next to the accuracy table
        lines.append(f"![{name}]({name})" if reason is None else f"- {name}: not drawn ({reason})")
    return "\n".join(lines) + "\n"


def _sweep_tables(summary: dict[str, Any]) -> list[str]:
    """One table per sweep that has a line with 2+ values: series x swept value."""
    kind, lines = summary["interval"], []
    for key, data in summary.get("sweeps", {}).items():
        rows = {name: by_x for name, by_x in data["lines"].items() if len(by_x) > 1}
        if not rows:
            continue
        xs = sorted({x for by_x in rows.values() for x in by_x})
        lines += ["", f"## Overall accuracy vs {key}", "", "| series | " + " | ".join(f"{x:g}" for x in xs) + " |",
                  "|---|" + "---|" * len(xs)]
        for name, by_x in rows.items():
            lines.append(f"| {name} | " + " | ".join(fmt_cell(by_x[x], kind) if x in by_x else "-" for x in xs) + " |")
        for label, cell in data["refs"].items():
            lines.append(f"| {label} (reference) | " + " | ".join([fmt_cell(cell, kind)] * len(xs)) + " |")
    return lines


def _meta_text(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _answers(runs: list[Run], cache: dict[Path, Answers]) -> dict[str, dict[int, Answers]]:
    """label -> seed -> graded questions (records.jsonl) of those runs, read once per directory."""
    out: dict[str, dict[int, Answers]] = {}
    for r in runs:
        if r.path not in cache:
            cache[r.path] = load_answers(r.path)
        out.setdefault(r.label, {})[r.seed if r.seed is not None else 0] = cache[r.path]
    return out


def compare_groups(runs: list[Run], pairs: list[tuple[str, str]], target: float = 5.0,
                   nulls: list[tuple[str, str]] | None = None, cache: dict[Path, Answers] | None = None,
                   sims: int = 200) -> list[dict[str, Any]]:
    """Paired comparisons (:func:`eval.compare.paired_answers`) of label B against label A for each
    pair, then the null controls (``role`` "comparison" / "null")."""
    labels = list(dict.fromkeys(r.label for r in runs))
    cache = {} if cache is None else cache
    out = []
    for role, flag, todo in (("comparison", "--compare", pairs), ("null", "--null", nulls or [])):
        for a, b in todo:
            missing = [x for x in (a, b) if x not in labels]
            if missing:
                raise ValueError(f"{flag} {a!r} {b!r}: no run labelled {missing[0]!r} (labels: {', '.join(labels)})")
            ans = _answers([r for r in runs if r.label in (a, b)], cache)
            meta_b = _common_meta([r for r in runs if r.label == b])
            out.append({"a": a, "b": b, "role": role, "b_meta": meta_b,
                        **paired_answers(ans[a], ans[b], target, sims=sims)})
    return out


def order_margin(runs: list[Run], types: tuple[str, ...] | list[str] = ORDER_TYPES,
                 cache: dict[Path, Answers] | None = None) -> dict[str, Any] | None:
    """:func:`eval.compare.order_margins` of the runs that have a records.jsonl; None when none has."""
    with_records = [r for r in runs if (r.path / "records.jsonl").is_file()]
    if not with_records:
        return None
    refs = {r.label: kind for r in with_records if (kind := reference_of(r)) is not None}
    return order_margins(_answers(with_records, {} if cache is None else cache), refs, types)


def teacher_lines(comparisons: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Comparisons against one A whose B settings differ only in the teacher: B - A vs the teacher's
    accuracy, and where (by linear interpolation of the seed means) B stops beating A."""
    # one line per (A, B's task mode, reasoning source, beta): B settings that differ only in the teacher
    series: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for c in comparisons:
        m = c["b_meta"]
        acc, src = m.get("teacher_acc"), m.get("reasoning_source")
        if isinstance(acc, (int, float)) and src and c["mean"] is not None:
            series.setdefault((c["a"], src, m.get("task_mode"), m.get("beta")), []).append(c)
    lines = []
    for (a, src, mode, _beta), cs in series.items():
        if len({c["b_meta"]["teacher_acc"] for c in cs}) < 2:
            continue
        cs = sorted(cs, key=lambda c: -c["b_meta"]["teacher_acc"])
        points = [[c["b_meta"]["teacher_acc"], c["mean"], c["lo"], c["hi"], c["q_diff"]] for c in cs]
        lines.append({"a": a, "source": src, "mode": (mode or "mtl").upper(), "points": points,
                      "crossover": crossover([(c["b_meta"]["teacher_acc"], c["mean"]) for c in cs])})
    return lines


def _teacher_markdown(lines: list[dict[str, Any]]) -> list[str]:
    out = []
    for ln in lines:
        b = f"{ln['mode']}({ln['source']})"
        out += ["", f"## {b} - {ln['a']} vs the teacher's accuracy (points)", "",
                "| teacher accuracy % | over seeds: mean [95% t interval] | over questions |", "|---|---|---|"]
        for acc, mean, lo, hi, q in ln["points"]:
            iv = "" if lo is None else f" [{lo:+.1f}, {hi:+.1f}]"
            out.append(f"| {acc:g} | {mean:+.1f}{iv} | {q:+.1f} |")
        x = ln["crossover"]
        out += ["", (f"{b} stops beating {ln['a']} at a teacher accuracy of about {x:.0f} % "
                     "(linear interpolation of the seed means)." if x is not None else
                     f"No crossing within the measured teachers: the sign of {b} - {ln['a']} "
                     "does not change from the best teacher to the worst.")]
    return out


def write_report(runs: list[Run], out: str | Path, kind: str = "t95", pairs: list[tuple[str, str]] | None = None,
                 nulls: list[tuple[str, str]] | None = None, order_types: tuple[str, ...] | list[str] = ORDER_TYPES,
                 target: float = 5.0) -> dict[str, Any]:
    """Write report.md, summary.json and the PNG plots into ``out``; return the summary.

    ``pairs``: (A, B) labels to compare over seeds; ``nulls``: (A, B) null controls shown in the same
    table; ``order_types``: the order-dependent question types of "Reasoning over time"; ``target``:
    the MDE (points) the seeds needed are computed for.

    summary.json: ``comparisons`` (one object per pair, :func:`compare_groups`) and ``order_margin``:
    ``{"types": [...], "reference": label | None, "reference_acc": cell | None, "references": {label:
    cell}, "rows": [{"label", "seeds", "acc": cell, "diff": {"mean", "lo", "hi", "paired", "n",
    "reasons_over_time"} | None, "margin": points | None, "reasons_over_time": bool}], "note": str |
    None}`` (cells: :func:`eval.stats.interval`), or None when no run has a records.jsonl."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = _relative_paths(summarize(runs, kind), out)
    summary["sweeps"] = sweeps(summary)
    cache: dict[Path, Answers] = {}
    summary["comparisons"] = compare_groups(runs, pairs or [], target, nulls, cache)
    summary["teacher_lines"] = teacher_lines([c for c in summary["comparisons"] if c["role"] == "comparison"])
    summary["order_margin"] = order_margin(runs, order_types, cache)
    plots = draw_all(summary, out)
    summary["plots"] = {name: ("written" if reason is None else f"skipped: {reason}")
                        for name, reason in plots.items()}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    atomic_write_text(out / "report.md", markdown(summary, plots))
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval report", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="run directories (python -m eval run --out) or their parents")
    p.add_argument("--out", required=True, type=Path, help="report directory")
    p.add_argument("--interval", choices=INTERVALS, default="t95",
                   help="over seeds: 95%% t-interval of the mean (default) or min/max")
    p.add_argument("--compare", nargs=2, action="append", default=[], metavar=("A", "B"),
                   help="paired comparison of the runs labelled B against those labelled A (repeatable)")
    p.add_argument("--null", nargs=2, action="append", default=[], metavar=("A", "B"),
                   help="null control: a pair whose true difference is 0 (e.g. 'QA-only' 'MTL(refined) beta=0'), "
                        "shown in the comparison table (repeatable)")
    p.add_argument("--order-types", nargs="+", default=list(ORDER_TYPES), metavar="QTYPE",
                   help=f"order-dependent question types of 'Reasoning over time' (default: {' '.join(ORDER_TYPES)})")
    p.add_argument("--target", type=float, default=5.0,
                   help="MDE (points) the comparisons say the seeds needed for (default 5)")
    args = p.parse_args(argv)
    try:
        runs = find_runs(args.runs)
        write_report(runs, args.out, args.interval, [tuple(x) for x in args.compare],
                     [tuple(x) for x in args.null], args.order_types, args.target)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print((args.out / "report.md").read_text(encoding="utf-8"))
    print(f"report: {args.out / 'report.md'} (+ summary.json, PNG plots)")
    return 0
