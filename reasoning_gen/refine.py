"""Reasoning refinement (ReasVQA step 2): drop the sentences that state the final answer.

Even a chain whose conclusion is wrong still describes what the frames show; removing the
answer statement keeps that description as a training target without teaching the wrong
answer. Strategies:

- ``answer-sentences`` (default): remove every sentence that states a choice (see
  :mod:`reasoning_gen.answers`), mid-text restatements included, and every sentence the leak
  audit would flag for the concluded option; keep the reasoning clause of a mixed sentence
  ("The man picks up the knife, so the answer is B." -> "The man picks up the knife."); option lines
  ("(C) 3", "C) in the top left", a lone reply line or an echoed option list, with an "Options:"
  header) and an option's text standing alone go too, whatever option they name.
- ``first-k-steps``: keep the first k steps (list items when the text is a list, else sentences).
- ``none``: keep the raw text.
- ``llm`` (optional, needs a backend: ``refine_llm`` / ``generate --refine-strategy llm``): any
  configured backend rewrites the reasoning without its conclusion; the regex detector audits
  the rewrite, and a rewrite that still states the answer (or failed) falls back to
  ``answer-sentences``, saying why.

Library: ``refine(text, options, strategy="answer-sentences", k=3) -> Refined``;
``audit_leak(text, options, choice)`` names a refined text that still concludes.
CLI: ``python -m reasoning_gen refine --in raw.jsonl --out refined.jsonl --records records.jsonl``; it
prints its statistics and writes them to ``refined.stats.json`` (``--stats``): ``teacher_accuracy``
and ``leak_rate`` among them.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from data_shards.common.atomic import atomic_write_json
from data_shards.reasoning_records import read_reasoning_lines, write_jsonl_atomic
from data_shards.schema import read_records
from reasoning_gen.answers import (
    OPTIONS_HEADER,
    answer_mentions,
    extract_answer,
    find_conclusions,
    option_line,
    split_text,
)
from reasoning_gen.backends.base import GenRequest, call_with_retries
from reasoning_gen.prompts import refine_llm_prompt

STRATEGIES = ("answer-sentences", "first-k-steps", "none", "llm")
RULE_STRATEGIES = STRATEGIES[:3]
"""Strategies that need no model (the ``refine`` CLI's choices)."""
_ITEM = re.compile(r"^\s*(?:[-*+•]|\d{1,2}[.)]|(?i:step)\s*\d{1,2}\s*[:.)-])\s*")


@dataclass
class Refined:
    """The result of refining one text."""

    text: str
    """The refined reasoning."""
    removed: list[str] = field(default_factory=list)
    """The sentences (or clauses) taken out, in text order."""
    teacher_answer: int | None = None
    """The option the raw text concludes with (index into the options), None when it states none."""


def _tidy(lines: list[str]) -> str:
    """Join lines, dropping empty husks (bare markers, lone bold marks) and repeated blank lines."""
    out: list[str] = []
    for line in lines:
        bare_marker = re.fullmatch(r"\s*(?:\d{1,2}[.)]|(?i:step)\s*\d+\s*[:.)-]?)\s*", line)
        if not re.sub(r"[\s*_#>:\-•]+", "", line) or bare_marker:
            if line.strip():
                continue  # a marker whose content was removed
            if out and out[-1] == "":
                continue
            line = ""
        out.append(line.rstrip())
    while out and out[-1] == "":
        out.pop()
    while out and out[0] == "":
        out.pop(0)
    return "\n".join(out)


def _answer_sentences(text: str, options: list[str], answer: int | None) -> tuple[str, list[str]]:
    """Remove the conclusions, and every other sentence the leak audit would flag for ``answer``
    (e.g. a mid-text "The man cuts the cake (B)."), keeping the reasoning part of mixed sentences.

    Option lines ("(C) 3", a lone reply line or an echoed option list) and an option's text standing
    alone go whatever option they name: they are answers, not reasoning; an "Options:" header
    goes with its list. The complete option list, in order, stays (it names every option alike).
    """
    lines = split_text(text)
    found = {id(c.sentence): c for c in find_conclusions(text, options, lines)}
    drop: dict[int, str] = {}  # id(sentence) -> the reasoning kept from it
    for m in answer_mentions(text, options, lines):
        if (id(m.sentence) in found or m.kind in _ALWAYS or answer is None or answer in m.named):
            drop[id(m.sentence)] = m.keep
    for sid, c in found.items():  # conclusions the audit does not name (a bare "Answer:" label)
        drop.setdefault(sid, c.keep)
    removed: list[str] = []
    out: list[str] = []
    for n, ln in enumerate(lines):
        if not ln.sentences:
            out.append(text[ln.start:ln.end] if text[ln.start:ln.end].strip() else "")
            continue
        if (len(ln.sentences) == 1 and OPTIONS_HEADER.match(ln.sentences[0].text)
                and (nxt := next((x for x in lines[n + 1:] if x.sentences), None)) is not None
                and id(nxt.sentences[0]) in drop and _is_listed(nxt.sentences[0], options)):
            removed.append(ln.sentences[0].text)  # "Options:" above an echoed option list that goes
            continue
        kept: list[str] = []
        for s in ln.sentences:
            if id(s) not in drop:
                kept.append(s.text)
                continue
            removed.append(s.text)
            if drop[id(s)]:
                kept.append(drop[id(s)])
        if kept:
            out.append(ln.marker + " ".join(kept))
    return _tidy(out), removed


_ALWAYS = ("option-line", "option-list", "standalone")
"""Mention kinds refinement removes whichever option they name."""


def _is_listed(s, options: list[str]) -> bool:
    return option_line(s, options) is not None


def _first_k(text: str, k: int) -> tuple[str, list[str]]:
    lines = split_text(text)
    items = [ln for ln in lines if ln.sentences and _ITEM.match(ln.marker)]
    if len(items) >= 2:
        kept = [text[ln.start:ln.end] for ln in items[:k]]
        removed = [s.text for ln in lines if ln not in items[:k] for s in ln.sentences]
        return "\n".join(kept), removed
    sentences = [s.text for ln in lines for s in ln.sentences]
    return " ".join(sentences[:k]), sentences[k:]


def refine(text: str, options: list[str], strategy: str = "answer-sentences", k: int = 3) -> Refined:
    """Refine one teacher output.

    Args:
        text: the raw reasoning.
        options: the question's answer options (letters A, B, ... by position).
        strategy: one of ``answer-sentences``, ``first-k-steps``, ``none``.
        k: steps kept by ``first-k-steps``.

    Returns:
        :class:`Refined` with ``.text``, ``.removed`` and ``.teacher_answer`` (extracted from the
        raw text whatever the strategy).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown refinement strategy {strategy!r}; expected one of {STRATEGIES}")
    if strategy == "llm":
        raise ValueError("the llm strategy needs a backend: call refine_llm (or generate --refine-strategy llm)")
    answer = extract_answer(text, options)
    if strategy == "none":
        return Refined(text, [], answer)
    if strategy == "first-k-steps":
        if k < 1:
            raise ValueError(f"first-k-steps needs k >= 1, got {k}")
        return Refined(*_first_k(text, k), answer)
    kept, removed = _answer_sentences(text, options, answer)
    # What counts as an answer depends on context: a truncated reply's last "(C" is one more line of an
    # echoed option list in the raw text, but a bare conclusion once the list is gone (seen with
    # SmolLM2). Refine the result again while the audit still flags it (a fixpoint, a few rounds).
    for _ in range(3):
        if audit_leak(kept, options, answer) is None:
            break
        again, more = _answer_sentences(kept, options, answer)
        if again == kept:
            break
        kept, removed = again, removed + more
    return Refined(kept, removed, answer)


def refine_llm(items: list[tuple[str, str, list[str]]], backend, retries: int = 1
               ) -> list[tuple[Refined, str | None]]:
    """The ``llm`` strategy: ``backend`` rewrites each reasoning without its conclusion.

    Args:
        items: ``(raw text, question, options)`` per reasoning.
        backend: any ``reasoning_gen.backends.Backend`` (text only: no frames are sent).
        retries: more calls for rewrites that failed.

    Returns:
        Per item the refinement and None, or the ``answer-sentences`` refinement and why the
        rewrite was not used (failed, empty, or the regex audit found the answer in it).
    """
    rules = [refine(raw, options) for raw, _, options in items]
    reqs = [GenRequest(refine_llm_prompt(raw, question, options), None, f"refine{i}")
            for i, (raw, question, options) in enumerate(items)]
    out: list[tuple[Refined, str | None]] = []
    results = call_with_retries(backend, reqs, retries) if reqs else []
    for (_, _, options), rule, res in zip(items, rules, results):
        text = (res.text or "").strip()
        leak = audit_leak(text, options, rule.teacher_answer) if text else None
        why = (f"rewrite failed: {res.error}" if not res.ok else "empty rewrite" if not text
               else f"rewrite leaks the answer ({leak})" if leak else None)
        out.append((rule, why) if why else (Refined(text, [], rule.teacher_answer), None))
    return out


def audit_leak(text: str, options: list[str], choice: int | None) -> str | None:
    """Why a refined ``text`` still gives the answer away, or None when it does not.

    A leak is a sentence that names ``choice`` the way an answer does
    (:func:`reasoning_gen.answers.answer_mentions`): a conclusion (the final-sentence rules applied
    to every sentence), an option line ("(C) 3", "C) in the top left", "**C** yellow", alone or in
    an echoed option list), the option's text alone as a sentence or line, or a letter form ("the
    answer C", "**C**", "\\boxed{C}"). With ``choice`` None any option so named counts. An
    observation that merely contains the option's words is no leak.
    """
    for m in answer_mentions(text, options):
        if m.named and (choice is None or choice in m.named):
            return f"{m.kind} conclusion: {m.sentence.text[:120]!r}"
    return None


def refine_records(records: list[dict], truth: dict[str, tuple[list[str], int | None]], strategy: str,
                   k: int = 3) -> tuple[list[dict], dict]:
    """Refine reasoning records (contract 5) against the ground truth.

    Args:
        records: reasoning records; failed ones pass through unchanged.
        truth: qid -> (options, answer index or None).
        strategy, k: see :func:`refine`.

    Returns:
        The new records and statistics: counts, ``teacher_accuracy`` (correct / graded, None when
        nothing is graded), removed sentences per text, ``leaks`` (refined texts that still state
        the chosen option, by :func:`audit_leak`) with the first examples, and ``leak_rate``
        (leaks / refined, None when nothing was refined).
    """
    stats = {"records": 0, "refined": 0, "failed": 0, "no_ground_truth": 0, "no_raw": 0, "teacher_answered": 0,
             "teacher_correct": 0, "graded": 0, "removed_sentences": 0, "leaks": 0, "leak_examples": []}
    out = []
    for rec in records:
        stats["records"] += 1
        rec = dict(rec)
        if rec.get("status") != "ok":
            stats["failed"] += 1
        elif rec["qid"] not in truth:
            stats["no_ground_truth"] += 1
        elif not rec.get("raw"):
            stats["no_raw"] += 1
        else:
            options, answer = truth[rec["qid"]]
            r = refine(rec["raw"], options, strategy, k)
            known = answer is not None and r.teacher_answer is not None
            rec.update(refined=r.text, teacher_answer=r.teacher_answer,
                       teacher_correct=r.teacher_answer == answer if known else None,
                       refine=strategy if strategy != "first-k-steps" else f"{strategy}:{k}")
            stats["refined"] += 1
            stats["removed_sentences"] += len(r.removed)
            stats["teacher_answered"] += r.teacher_answer is not None
            if answer is not None:
                stats["graded"] += 1
                stats["teacher_correct"] += r.teacher_answer == answer
            leak = audit_leak(r.text, options, r.teacher_answer)
            if leak:
                stats["leaks"] += 1
                if len(stats["leak_examples"]) < 5:
                    stats["leak_examples"].append(f"{rec['qid']}: {leak}")
        out.append(rec)
    stats["teacher_accuracy"] = stats["teacher_correct"] / stats["graded"] if stats["graded"] else None
    stats["removed_per_text"] = stats["removed_sentences"] / stats["refined"] if stats["refined"] else 0.0
    stats["leak_rate"] = stats["leaks"] / stats["refined"] if stats["refined"] else None
    return out, stats


def format_stats(stats: dict) -> str:
    acc = stats["teacher_accuracy"]
    lines = [f"records {stats['records']}: refined {stats['refined']}, failed {stats['failed']}, "
             f"no ground truth {stats['no_ground_truth']}, no raw text {stats['no_raw']}",
             f"teacher answered {stats['teacher_answered']}/{stats['refined']}, accuracy "
             + (f"{acc:.3f} ({stats['teacher_correct']}/{stats['graded']})" if acc is not None else "n/a"),
             f"removed sentences per text {stats['removed_per_text']:.2f}",
             f"leaks (refined text still states the chosen option) {stats['leaks']}"
             + (f", leak rate {stats['leak_rate']:.3f}" if stats.get("leak_rate") is not None else "")]
    lines += [f"  leak: {e}" for e in stats["leak_examples"]]
    return "\n".join(lines)


def stats_path(out: str | Path) -> Path:
    """Where the refine CLI writes its statistics by default: ``refined.jsonl`` -> ``refined.stats.json``."""
    return Path(out).with_suffix(".stats.json")


def load_truth(paths: list[str]) -> dict[str, tuple[list[str], int | None]]:
    """qid -> (options, answer) from schema-v1 video records files (or shard-free records jsonl)."""
    truth = {}
    for p in paths:
        for rec in read_records(p):
            for qa in rec.qas:
                truth[qa.qid] = (qa.options, qa.answer)
    return truth


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m reasoning_gen refine", description=__doc__.split("\n")[0])
    ap.add_argument("--in", dest="inp", required=True, help="raw reasoning records (jsonl)")
    ap.add_argument("--out", required=True, help="refined reasoning records (jsonl, written atomically)")
    ap.add_argument("--records", required=True, nargs="+", help="schema-v1 video records: options and answers")
    ap.add_argument("--strategy", default="answer-sentences", choices=RULE_STRATEGIES,
                    help="llm needs a backend: python -m reasoning_gen generate --refine-strategy llm")
    ap.add_argument("--k", type=int, default=3, help="steps kept by first-k-steps")
    ap.add_argument("--stats", default=None,
                    help="statistics json (teacher_accuracy, leak_rate, ...); default: --out with .stats.json")
    args = ap.parse_args(argv)
    if Path(args.inp).resolve() == Path(args.out).resolve():
        ap.error("--out must differ from --in (the raw records are kept)")
    truth = load_truth(args.records)
    counts: dict = {}
    records = [obj for _, obj in read_reasoning_lines(args.inp, counts)]
    out, stats = refine_records(records, truth, args.strategy, args.k)
    write_jsonl_atomic(args.out, out)
    atomic_write_json(args.stats or stats_path(args.out), stats)
    if counts.get("corrupt"):
        print(f"skipped {counts['corrupt']} corrupt line(s) of {args.inp}", file=sys.stderr)
    print(format_stats(stats))
    print(f"wrote {len(out)} records to {args.out}, statistics to {args.stats or stats_path(args.out)}")
    return 0
