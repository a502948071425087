"""The vCoT study's table: do transitional captions help an image model more than a video model?

Four cells, each a QA-only run per seed: the image model (stage 1 on single frames, no temporal position
embedding) and the video model (stage 1 on clips, with one), each trained and scored without and with the
transitional captions interleaved between the frames. The vCoT paper's prediction: the captions' gain is
larger for the image model. Per seed, ``gain(model) = acc(with captions) - acc(without)`` and the
interaction ``gain(image) - gain(video)``; the seed is the unit (mean and 95 % t interval over seeds,
paired by seed). The prediction holds only where the interaction's lower bound is above 0.

Beside the trained gain, the eval-only gain: the run trained without captions, scored with them
(its ``vcot`` probe), minus its plain score; a model never shown captions in training may ignore them.
"""

from __future__ import annotations

from pathlib import Path

from eval.compare import load_answers, type_accuracy
from eval.stats import interval

Cells = dict[tuple[str, bool], dict[int, str]]
"""(align, with captions) -> seed -> run name (a directory under the eval folder)."""


def _acc(run_dir: Path, types: tuple[str, ...] | None) -> float | None:
    answers = load_answers(run_dir)
    if types is None:
        return 100.0 * sum(a.correct for a in answers.values()) / len(answers) if answers else None
    return type_accuracy(answers, types)


def _cell(values: list[float]) -> str:
    c = interval(values)
    if c["mean"] is None:
        return "n/a"
    return f"{c['mean']:+.1f}" + (f" [{c['lo']:+.1f}, {c['hi']:+.1f}]" if c["lo"] is not None else "")


def _plain(values: list[float]) -> str:
    c = interval(values)
    return "n/a" if c["mean"] is None else f"{c['mean']:.1f}" + (f" ± {c['half']:.1f}" if c["half"] else "")


def vcot_summary(eval_dir: str | Path, cells: Cells, types: tuple[str, ...] | None) -> dict | None:
    """Per-seed accuracies, gains and the interaction on ``types`` (None = all questions), over the seeds
    that have all four cells; None when no seed has them."""
    eval_dir = Path(eval_dir)
    seeds = sorted(set.intersection(*(set(cells.get(k, {})) for k in
                                      (("image", False), ("image", True), ("video", False), ("video", True)))))
    if not seeds:
        return None
    acc = {k: {s: _acc(eval_dir / cells[k][s], types) for s in seeds} for k in cells}
    probe = {}  # eval-only: the no-caption run scored with captions (its vcot probe)
    for align in ("image", "video"):
        dirs = {s: eval_dir / cells[align, False][s] / "probes" / "vcot" for s in seeds}
        if all((d / "records.jsonl").is_file() for d in dirs.values()):
            probe[align] = {s: _acc(d, types) for s, d in dirs.items()}
    if any(v is None for a in acc.values() for v in a.values()):
        return None
    gain = {a: [acc[a, True][s] - acc[a, False][s] for s in seeds] for a in ("image", "video")}
    return {"seeds": seeds, "acc": {f"{a}{'+vcot' if c else ''}": [acc[a, c][s] for s in seeds] for a, c in acc},
            "gain": gain, "interaction": [gi - gv for gi, gv in zip(gain["image"], gain["video"])],
            "eval_only_gain": {a: [p[s] - acc[a, False][s] for s in seeds] for a, p in probe.items()}}


def vcot_table(eval_dir: str | Path, cells: Cells, order_types: tuple[str, ...]) -> str:
    """The markdown section of the report (empty when no seed has all four cells)."""
    parts = []
    for name, types in (("all questions", None), (f"order-dependent types ({', '.join(order_types)})", order_types)):
        s = vcot_summary(eval_dir, cells, types)
        if s is None:
            continue
        interaction = interval(s["interaction"])
        holds = interaction["lo"] is not None and interaction["lo"] > 0
        parts += [f"\n### {name}, {len(s['seeds'])} seed(s)\n",
                  "| model | no captions | with captions (trained and scored) | gain | eval-only gain |",
                  "|---|---|---|---|---|"]
        for a, label in (("image", "image (single frames, no temporal position)"), ("video", "video (clips)")):
            parts.append(f"| {label} | {_plain(s['acc'][a])} | {_plain(s['acc'][a + '+vcot'])} | "
                         f"{_cell(s['gain'][a])} | {_cell(s['eval_only_gain'].get(a, []))} |")
        parts.append(f"\ngain(image) - gain(video): **{_cell(s['interaction'])}** points "
                     f"(per seed: {', '.join(f'{v:+.1f}' for v in s['interaction'])}); the prediction "
                     f"{'holds' if holds else 'is not shown'} (it needs the interval's lower bound > 0).")
    if not parts:
        return ""
    return ("\n## vCoT: image vs video model, with and without transitional captions\n\n"
            "Accuracy (%) as mean ± 95 % t half-width over seeds; gains and the interaction as mean "
            "[95 % t interval], paired by seed. Eval-only gain: the model trained without captions, scored "
            "with them (the vcot probe).\n" + "\n".join(parts) + "\n")
