"""``python -m eval run``: answer every question of a split with an exported model, then score.

    python -m eval run --checkpoint EXPORT --shards 'shards/val-{000000..000003}.tar' --out DIR \
        [--mode loglik|generate] [--frames N] [--probe shuffle_text shuffle_frames vcot] \
        [--reasoning reasoning/*.jsonl] [--label NAME] [--meta key=value ...]
    torchrun --nproc_per_node 2 -m eval run ...        (each rank reads its own shards; rank 0 writes)

Two ways to answer a multiple-choice question:

- ``loglik``: the log-likelihood of each option's QA target ("(B)", or "(B) red" with the
  letter_text format, mean per token then) after the training QA prompt; the best one wins.
- ``generate``: greedy generation with the training prompt of the model's task (the QA prompt;
  "reasoning then answer" for an STL model), the answer read from the text by
  ``reasoning_gen.answers.extract_answer`` (the refinement's own extractor). When no answer can
  be read, ``--fallback loglik`` (default) takes the log-likelihood choice and counts it;
  ``--fallback none`` leaves the question unanswered (scored wrong, counted as missing).

Written to ``--out`` (rank 0): ``predictions.json`` ({global qid: option index}, scorable by
``python -m eval score``), ``scores.json`` (the ``eval.score`` result), ``records.jsonl`` (per
question: question, options, prediction, gold, option scores or generated text, generated
reasoning with ``--gen-reasoning``), ``run.json`` (settings, model meta, loader counters,
probe deltas) and the same three files per probe under ``probes/<name>/`` (see
:mod:`eval.probes`). The scores cover the questions read from the shards; with
``--annotations`` they cover every question of that file (unread ones count as missing).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from data_shards.common.atomic import atomic_write_json, atomic_write_lines
from data_shards.common.distenv import shutdown, world_info_from_env
from data_shards.reasoning_records import load_reasoning
from data_shards.schema import QA, VideoRecord
from data_shards.stream.budget import FrameBudget
from data_shards.stream.loader import LoaderConfig, build_loader, expand_urls
from eval.probes import PROBES, model_input
from eval.score import format_table, load_annotations, score
from reasoning_gen.answers import extract_answer
from train.export import load_for_eval

VERSION = "eval-run-v1"
MODES = ("loglik", "generate")


@dataclass
class EvalOptions:
    """How questions are answered (building-block settings; the CLI fills them)."""

    mode: str = "loglik"
    """"loglik" (option log-likelihood) or "generate" (greedy text + answer extraction)."""
    answer_format: str = "letter"
    """The model's QA target format: "letter" or "letter_text"."""
    gen_task: str = "qa"
    """Prompt of generate mode: "qa" (answer directly) or "stl" (reasoning, then the answer)."""
    max_new_tokens: int = 16
    """Generated tokens per question in generate mode."""
    fallback: str = "loglik"
    """Generate mode, no answer readable: "loglik" choice, or "none" (no prediction)."""
    gen_reasoning: bool = False
    """Also generate the reasoning (the reasoning task's prompt) into the records."""
    reasoning_tokens: int = 96
    """Generated tokens of that reasoning."""
    use_vcot: bool = False
    """The plain run interleaves vCoT captions (the model was trained with them)."""
    seed: int = 0
    """Seed of the probes' shuffles."""


def evaluate_batch(model: Any, tokenizer: Any, batch: list[dict], opts: EvalOptions,
                   probe: str | None = None) -> list[dict]:
    """Answer a batch of question samples (contract 3); one record per question.

    Args:
        model: the VideoLLM (``score_options`` / ``generate_text``), in eval mode.
        tokenizer: its tokenizer.
        batch: question samples with frames uint8 [T, 3, H, W] of one size.
        opts: how to answer.
        probe: None or a name of :data:`eval.probes.PROBES`.

    Returns:
        Records: qid, video_id, dataset, split, qtype, question, options, gold, prediction
        (int or None), correct, plus option_scores (loglik) or generated / extracted /
        fallback (generate), reasoning (gen_reasoning), and what the probe changed.
    """
    inp = model_input(batch, probe, opts.use_vcot, opts.seed)
    n = len(batch)
    preds: list[int | None] = [None] * n
    extra: list[dict] = [dict(note) for note in inp.notes]
    if opts.mode == "loglik":
        out = model.score_options(tokenizer, inp.pixel_values, inp.questions, inp.options, inp.captions,
                                  answer_format=opts.answer_format)
        key = "sum" if opts.answer_format == "letter" else "mean"
        for i in range(n):
            k = len(inp.options[i])
            preds[i] = int(out["pred"][i])
            extra[i]["option_scores"] = [round(float(v), 5) for v in out[key][i, :k]]
    elif opts.mode == "generate":
        texts = model.generate_text(tokenizer, inp.pixel_values, inp.questions, inp.options, inp.captions,
                                    task=opts.gen_task, answer_format=opts.answer_format,
                                    max_new_tokens=opts.max_new_tokens)
        for i, text in enumerate(texts):
            # Read the answer against the options as SHOWN (shuffled words under shuffle_text).
            preds[i] = extract_answer(text, inp.options[i])
            extra[i].update(generated=text, extracted=preds[i], fallback=False)
        todo = [i for i in range(n) if preds[i] is None]
        if todo and opts.fallback == "loglik":
            sub = model.score_options(tokenizer, inp.pixel_values[todo], [inp.questions[i] for i in todo],
                                      [inp.options[i] for i in todo],
                                      None if inp.captions is None else [inp.captions[i] for i in todo],
                                      answer_format=opts.answer_format)
            for j, i in enumerate(todo):
                preds[i] = int(sub["pred"][j])
                extra[i]["fallback"] = True
    else:
        raise ValueError(f"mode must be one of {MODES}, got {opts.mode!r}")
    if opts.gen_reasoning:
        texts = model.generate_text(tokenizer, inp.pixel_values, inp.questions, inp.options, inp.captions,
                                    task="reasoning", answer_format=opts.answer_format,
                                    max_new_tokens=opts.reasoning_tokens)
        for i, text in enumerate(texts):
            extra[i]["reasoning"] = text
    records = []
    for s, pred, ex in zip(batch, preds, extra, strict=True):
        records.append({"qid": s["qid"], "video_id": s["video_id"], "dataset": s["dataset"], "split": s["split"],
                        "qtype": s["qtype"], "question": s["question"], "options": list(s["options"]),
                        "gold": s.get("answer"), "prediction": pred,
                        "correct": None if s.get("answer") is None else pred == s.get("answer"), **ex})
    return records


def keep_for_rank(key: str, rank: int, world_size: int) -> bool:
    """Whether this rank answers the video ``key`` when ranks share shards (fewer shards than ranks)."""
    return zlib.crc32(key.encode()) % world_size == rank


def evaluate_loader(model: Any, tokenizer: Any, batches, opts: EvalOptions, probes: list[str],
                    share: tuple[int, int] | None = None, log_every: int = 20) -> dict[str, list[dict]]:
    """Answer every question of ``batches``: plain, then each probe on the same decoded frames. Every record
    gets ``num_frames``, the frame count of its clip (None: text-only), which a frame budget varies per clip.

    Args:
        batches: an iterable of question-sample batches (the loader).
        share: (rank, world_size) when every rank reads all shards and keeps its share of videos.

    Returns:
        {"plain": records, probe name: records, ...}.
    """
    results: dict[str, list[dict]] = {"plain": [], **{p: [] for p in probes}}
    t0 = time.time()
    with torch.no_grad():
        for b, batch in enumerate(batches):
            if share is not None:
                batch = [s for s in batch if keep_for_rank(s["__key__"], *share)]
            if not batch:
                continue
            for group in by_frame_count(batch):  # one group unless a frame budget varies the counts
                frames = group[0].get("frames")
                n_frames = None if frames is None else int(frames.shape[0])
                for name in ("plain", *probes):
                    records = evaluate_batch(model, tokenizer, group, opts, probe=None if name == "plain" else name)
                    results[name] += [{**r, "num_frames": n_frames} for r in records]
            if log_every and (b + 1) % log_every == 0:
                print(f"[eval] {len(results['plain'])} questions, {time.time() - t0:.0f}s", flush=True)
    return results


def predictions_of(records: list[dict]) -> dict[str, int]:
    """{qid: option index} of the answered questions, sorted by qid."""
    return {r["qid"]: r["prediction"] for r in sorted(records, key=lambda r: r["qid"]) if r["prediction"] is not None}


def records_to_videos(records: list[dict]):
    """Schema-v1 records rebuilt from per-question records (the gold answers the scorer needs)."""
    videos: dict[tuple[str, str, str], VideoRecord] = {}
    for r in sorted(records, key=lambda r: r["qid"]):
        key = (r["dataset"], r["split"], r["video_id"])
        if key not in videos:
            videos[key] = VideoRecord(video_id=r["video_id"], dataset=r["dataset"], split=r["split"], video="", qas=[])
        videos[key].qas.append(QA(qid=r["qid"], question=r["question"], options=r["options"], answer=r["gold"],
                                  qtype=r["qtype"]))
    return list(videos.values())


def score_records(records: list[dict], annotations=None) -> dict[str, Any]:
    """``eval.score.score`` of the records' predictions, on their own questions or on ``annotations``."""
    datasets = sorted({r["dataset"] for r in records} | {v.dataset for v in annotations or []})
    if len(datasets) != 1:
        raise ValueError(f"one dataset per evaluation run, got {datasets}")
    videos = annotations if annotations is not None else records_to_videos(records)
    return score(videos, predictions_of(records), datasets[0])


def write_json(path: Path, obj: Any) -> None:
    atomic_write_json(path, obj)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    """One json line per record, sorted by qid (so that runs on any number of ranks compare equal)."""
    atomic_write_lines(path, (json.dumps(row, ensure_ascii=False) for row in sorted(rows, key=lambda r: r["qid"])))


def write_outputs(out: Path, results: dict[str, list[dict]], info: dict[str, Any], annotations=None) -> dict:
    """Write predictions / scores / records of the plain run and of each probe, then run.json."""
    if not results["plain"]:
        raise ValueError(f"no question was evaluated (loader stats: {info.get('loader_stats')})")
    plain = score_records(results["plain"], annotations)
    info = dict(info, overall=plain["overall"], per_type=plain["per_type"], n_questions=len(results["plain"]),
                generation=_generation_counts(results), probes={},
                questions_with_captions={k: sum(bool(r.get("captions")) for r in v) for k, v in results.items()})
    for name, recs in results.items():
        d = out if name == "plain" else out / "probes" / name
        result = plain if name == "plain" else score_records(recs, annotations)
        write_json(d / "predictions.json", predictions_of(recs))
        write_json(d / "scores.json", result)
        write_jsonl(d / "records.jsonl", recs)
        if name != "plain":
            delta = None if None in (result["overall"], plain["overall"]) else result["overall"] - plain["overall"]
            info["probes"][name] = {"overall": result["overall"], "delta": delta, "per_type": result["per_type"]}
    write_json(out / "run.json", info)
    return info


def _generation_counts(results: dict[str, list[dict]]) -> dict[str, dict[str, int]]:
    out = {}
    for name, recs in results.items():
        c = Counter()
        for r in recs:
            if "generated" in r:
                c["generated"] += 1
                c["not_extracted"] += r["extracted"] is None
                c["fallback_loglik"] += bool(r.get("fallback"))
        if c:
            out[name] = dict(c)
    return out


# ---------------------------------------------------------------------------------------- CLI
def cfg_get(config: Any, dotted: str, default: Any = None) -> Any:
    """``config.a.b`` for a dataclass tree or nested dicts; ``default`` when absent or None."""
    cur = config
    for part in dotted.split("."):
        cur = cur.get(part) if isinstance(cur, dict) else getattr(cur, part, None)
        if cur is None:
            return default
    return cur


def teacher_accuracy(paths: list[str]) -> float | None:
    """Percent of reasoning records whose teacher answer was right (records with a known verdict)."""
    if not paths or not all(Path(p).exists() for p in paths):
        return None
    verdicts = [r["teacher_correct"] for r in load_reasoning(paths).values() if r.get("teacher_correct") is not None]
    return 100.0 * sum(bool(v) for v in verdicts) / len(verdicts) if verdicts else None


def model_meta(config: Any) -> dict[str, Any]:
    """What the report needs to know about how the model was trained (from its resolved config)."""
    mode, source = cfg_get(config, "task.mode"), cfg_get(config, "task.reasoning_source")
    uses_teacher = mode in ("mtl", "stl") and source in ("raw", "refined")
    return {"task_mode": mode, "reasoning_source": source if mode in ("mtl", "stl") else "none",
            "alpha": cfg_get(config, "task.alpha"), "beta": cfg_get(config, "task.beta") if mode == "mtl" else None,
            "answer_format": cfg_get(config, "task.answer_format", "letter"),
            "use_vcot": bool(cfg_get(config, "task.use_vcot", False)), "seed": cfg_get(config, "run.seed"),
            "train_steps": cfg_get(config, "run.max_steps"),
            "teacher_acc": teacher_accuracy(list(cfg_get(config, "data.reasoning", []))) if uses_teacher else None}


def default_label(meta: dict[str, Any]) -> str:
    mode = meta.get("task_mode")
    if mode == "qa":
        return "QA-only"
    if mode in ("mtl", "stl"):
        return f"{mode.upper()}({meta.get('reasoning_source')})"
    return "model"


def _meta_value(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--meta takes key=value, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--frame-size must be HxW (e.g. 32x32), got {text!r}") from None
    return h, w


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m eval run", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True,
                   help="export directory (python -m train export), or a checkpoint dir / global_step{N} dir")
    p.add_argument("--tag", default=None,
                   help="checkpoint tag under --checkpoint, e.g. global_step100 (default: latest)")
    p.add_argument("--shards", required=True, help="shard URL pattern of the evaluation split")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--mode", choices=MODES, default="loglik")
    p.add_argument("--frames", type=int, help="frames per video (default: the training config's)")
    p.add_argument("--frame-size", type=_size, help="HxW (default: the training config's)")
    p.add_argument("--probe", nargs="*", default=[], choices=PROBES, help="probes to run besides the plain run")
    p.add_argument("--reasoning", nargs="*", default=None, help="reasoning jsonl (vCoT captions for --probe vcot)")
    p.add_argument("--annotations", type=Path, help="score against every question of these records")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workers", type=int, default=0, help="decoding workers per rank")
    p.add_argument("--max-new-tokens", type=int, help="generate mode (default: 16; the target length for STL)")
    p.add_argument("--fallback", choices=("loglik", "none"), default="loglik")
    p.add_argument("--gen-reasoning", action="store_true", help="also generate reasoning into records.jsonl")
    p.add_argument("--reasoning-tokens", type=int, default=96, help="tokens of that generated reasoning")
    p.add_argument("--seed", type=int, default=0, help="seed of the probes' shuffles")
    p.add_argument("--threads", type=int, help="torch threads per rank")
    p.add_argument("--label", help="run name in reports (default from the training config, e.g. MTL(refined))")
    p.add_argument("--meta", nargs="*", type=_meta_value, default=[], help="key=value added to run.json meta")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except (ValueError, OSError, OtherRankFailed) as e:  # bad input: one line naming the file / field
        print(f"error: {e}", file=sys.stderr)
        return 1


class OtherRankFailed(RuntimeError):
    """Raised on the ranks that were fine when another rank failed in the same phase."""


def collectively(fn: Callable[[], Any], phase: str, world_size: int) -> Any:
    """``fn()`` on every rank; when it raises on any rank, it raises on every rank.

    Every rank must call it (it ends with an all-reduce). Without it, a rank that fails (a bad
    shard, an unwritable --out) would leave the others waiting in the next collective until
    the process group's timeout, under launchers that do not kill the rest of the job.
    """
    try:
        out, err = fn(), None
    except Exception as e:  # re-raised below, after the other ranks are told
        out, err = None, e
    if world_size > 1:
        failed = torch.tensor([int(err is not None)])
        dist.all_reduce(failed)
        if err is None and int(failed) > 0:
            err = OtherRankFailed(f"{phase}: {int(failed)} other rank(s) failed (their error is in their log)")
    if err is not None:
        raise err
    return out


def _gather(obj: Any, rank: int, world_size: int) -> list[Any] | None:
    """Every rank's ``obj`` on rank 0 (None elsewhere); gloo object collectives."""
    if world_size == 1:
        return [obj]
    out = [None] * world_size if rank == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def _run(args: argparse.Namespace) -> int:
    world = world_info_from_env()
    rank, ws = world.rank, world.world_size
    if args.threads:
        torch.set_num_threads(args.threads)
    if ws > 1 and not dist.is_initialized():
        dist.init_process_group("gloo")  # env:// (MASTER_ADDR/PORT from torchrun)
    t0 = time.time()
    results, stats, ctx = collectively(lambda: _evaluate_rank(args, rank, ws), "evaluation", ws)
    gathered = _gather((results, stats, ctx.pop("skipped_shards")), rank, ws)
    # the other ranks wait here until rank 0 has written everything (or failed)
    write = (lambda: _merge_and_write(args, gathered, ctx, ws, t0)) if rank == 0 else (lambda: None)
    collectively(write, "writing", ws)
    if ws > 1:
        shutdown()  # every rank leaves the group together; `python -m eval` then exits via exit_process
    return 0


BUDGET_FIELDS = ("max_visual_tokens", "fps", "min_frames", "max_frames")
"""The training config's frame-budget fields (``data``) that evaluation copies."""


def eval_frame_budget(lcfg: LoaderConfig, config: Any, model: Any, frames_arg: int | None
                      ) -> tuple[LoaderConfig, FrameBudget | None]:
    """The loader settings and frame budget of an evaluation: the training config's budget when it has one
    (so a model is evaluated on clips chosen as in training) and ``--frames`` is not given; else none.

    The budget is the trainer's (``train.frame_budget.run_budget``): the model's layout, and a token cap of
    the tightest of ``data.max_visual_tokens``, ``data.max_visual_tokens_per_row`` and ``task.max_prompt_len``.
    Evaluation refuses no question: prompts are scored as they are.
    """
    data = {name: cfg_get(config, f"data.{name}") for name in BUDGET_FIELDS + ("max_visual_tokens_per_row",)}
    on = any(data[n] is not None for n in ("max_visual_tokens", "fps", "max_frames", "max_visual_tokens_per_row"))
    if frames_arg or not on:
        return lcfg, None
    lcfg = dataclasses.replace(lcfg, max_visual_tokens=data["max_visual_tokens"], fps=data["fps"],
                               min_frames=int(data["min_frames"] or 1), max_frames=data["max_frames"])
    if not lcfg.budget_on:  # only the row cap: it caps each clip too
        lcfg = dataclasses.replace(lcfg, max_visual_tokens=data["max_visual_tokens_per_row"])
    layout = model.frame_layout(1, tuple(lcfg.frame_size) if lcfg.frame_size is not None else None)
    caps = [v for v in (data["max_visual_tokens_per_row"], cfg_get(config, "task.max_prompt_len")) if v is not None]
    budget = lcfg.frame_budget(layout.temporal_stride, layout.tokens_per_group, layout.extra_tokens,
                               min(caps) if caps else None)
    return lcfg, budget


def by_frame_count(batch: list[dict]) -> list[list[dict]]:
    """The question samples of a batch in groups of one frame count (a frame budget gives clips different
    counts; a model answers a stacked batch of one count), in order of first appearance."""
    groups: dict[Any, list[dict]] = {}
    for s in batch:
        frames = s.get("frames")
        groups.setdefault(None if frames is None else int(frames.shape[0]), []).append(s)
    return list(groups.values())


def _evaluate_rank(args: argparse.Namespace, rank: int, ws: int) -> tuple[dict, dict, dict]:
    """Load the export and evaluate this rank's share: (results, loader stats, run context)."""
    model, tokenizer, config = load_for_eval(args.checkpoint, tag=args.tag)
    model.eval()
    meta = model_meta(config)
    frames = args.frames or int(cfg_get(config, "data.num_frames", 8))
    size = args.frame_size or tuple(cfg_get(config, "data.frame_size", (224, 224)))
    gen_task = "stl" if meta["task_mode"] == "stl" else "qa"
    max_new = args.max_new_tokens or (int(cfg_get(config, "task.max_target_len", 128)) if gen_task == "stl" else 16)
    opts = EvalOptions(mode=args.mode, answer_format=meta["answer_format"], gen_task=gen_task, max_new_tokens=max_new,
                       fallback=args.fallback, gen_reasoning=args.gen_reasoning,
                       reasoning_tokens=args.reasoning_tokens, use_vcot=meta["use_vcot"],
                       seed=args.seed)
    reasoning = None
    if args.reasoning:
        reasoning = load_reasoning(args.reasoning)
    elif "vcot" in args.probe or opts.use_vcot:
        raise ValueError("vCoT captions come from the reasoning jsonl: pass --reasoning FILES")
    urls = expand_urls(args.shards)
    # Split shards over ranks when there are enough; else every rank reads all, keeps its videos.
    split = len(urls) >= max(args.workers, 1) * ws
    lcfg = LoaderConfig(urls=args.shards, num_frames=frames, frame_size=size, micro_batch_size=args.batch_size,
                        num_workers=args.workers, shuffle_shards=False, shuffle_buffer=0, epoch_batches=None)
    lcfg, budget = eval_frame_budget(lcfg, config, model, args.frames)
    loader = build_loader(lcfg, rank=rank if split else 0, world_size=ws if split else 1, reasoning=reasoning,
                          frame_budget=budget)
    results = evaluate_loader(model, tokenizer, loader, opts, list(args.probe),
                              share=None if split else (rank, ws), log_every=20 if rank == 0 else 0)
    frames = frames if budget is None else f"budget {budget.lowest}..{budget.highest}"
    return results, loader.stats(), {"meta": meta, "frames": frames, "size": size, "opts": opts,
                                     "skipped_shards": loader.skipped_shards()}


def _merge_and_write(args: argparse.Namespace, gathered: list, ctx: dict, ws: int, t0: float) -> None:
    """Rank 0: merge every rank's results; write predictions, scores, records and run.json."""
    merged = {k: [r for res, _, _ in gathered for r in res[k]] for k in gathered[0][0]}
    stats = dict(sum((Counter(s) for _, s, _ in gathered), Counter()))
    skipped_shards = dict(sum((Counter(n) for _, _, n in gathered), Counter()))
    dataset = merged["plain"][0]["dataset"] if merged["plain"] else None
    annotations = None
    if args.annotations is not None:
        annotations = load_annotations(args.annotations, dataset or "")
    meta, opts = ctx["meta"], ctx["opts"]
    meta.update(eval_mode=args.mode, frames=ctx["frames"], dataset=dataset, **dict(args.meta))
    info = {"version": VERSION, "label": args.label or default_label(meta), "checkpoint": str(args.checkpoint),
            "tag": args.tag, "shards": args.shards, "mode": args.mode, "frames": ctx["frames"],
            "frame_size": list(ctx["size"]), "world_size": ws, "probe_seed": args.seed, "options": vars(opts),
            "meta": meta, "loader_stats": stats, "skipped_shards": skipped_shards,
            "elapsed_s": round(time.time() - t0, 1),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    info = write_outputs(args.out, merged, info, annotations)
    _print_summary(args.out, info)


def _print_summary(out: Path, info: dict[str, Any]) -> None:
    print(f"{info['label']}: {info['n_questions']} questions, mode {info['mode']}, {info['world_size']} rank(s), "
          f"{info['elapsed_s']}s")
    print(format_table(json.loads((out / "scores.json").read_text())))
    for name, p in info["probes"].items():
        delta = "-" if p["delta"] is None else f"{p['delta']:+.2f}"
        print(f"probe {name:<15} overall {p['overall']:.2f}  delta {delta}")
    for name, c in info["generation"].items():
        print(f"generation ({name}): {c}")
    for name, n in info["questions_with_captions"].items():
        if n < info["n_questions"] and (name == "vcot") != info["options"]["use_vcot"]:
            print(f"WARNING: {name}: vCoT captions shown for only {n} of {info['n_questions']} questions "
                  f"(the others have no 'vcot' in the reasoning files)")
    skip_kinds = ("corrupt", "missing", "bad", "incomplete")
    skipped = {k: v for k, v in info["loader_stats"].items() if k.startswith(skip_kinds) and v}
    if skipped:
        print(f"WARNING: the loader skipped {skipped}: those questions are not in these scores "
              f"(pass --annotations to count them as missing)")
    for shard, n in info.get("skipped_shards", {}).items():  # every one, whatever the warnings' rate limit showed
        print(f"WARNING: shard skipped: {shard} ({n}x)")
    print(f"written: {out}/{{predictions.json,scores.json,records.jsonl,run.json}}")
