"""Multi-task batches: QA, reasoning generation and the single-task baseline, as token tensors.

From one question sample (contract 3: frames, question, options, answer, the joined reasoning
record) :func:`build_examples` emits text-level :class:`Example` objects; :func:`collate`
tokenizes them segment by segment (see :mod:`train.prompts`) into right-padded tensors whose
``labels`` hold only the target tokens and whose ``task_ids`` say which task each target
token belongs to. Tasks produce targets and task ids only: the weights ``alpha / N_qa`` and
``beta / N_reason`` and everything else about the loss are in :mod:`train.loss`.

Length limits never cut an answer (:func:`fit_target`): an STL target longer than
``task.max_target_len`` loses the tail of its reasoning (at a sentence end when possible) and keeps
its whole answer line (counted: the batch's ``n_stl_shortened``, :func:`target_stats`, one warning);
a QA answer that cannot fit is an error. Reasoning-task and caption targets are cut at their end.

Placeholder layout: the prompt holds ``layout.num_visual_tokens`` frame placeholder tokens,
``layout.tokens_per_group`` per frame group (``temporal_stride`` consecutive frames pooled
into one group). The layout is the MODEL's (``VideoLLM.frame_layout(num_frames)`` or
``ModelConfig.frame_layout(num_frames)``), so that prompt and projector always agree.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from data_shards.schema import CAPTION_QTYPE
from train import prompts
from train.config.model import FrameLayout
from train.config.task import TaskConfig
from train.loss import TASK_QA, TASK_REASON
from train.tokenizer import frame_token_id

log = logging.getLogger(__name__)


class PromptTooLong(ValueError):
    """A prompt that cannot fit ``task.max_prompt_len`` even with its question cut to one token (the frame
    placeholders, captions, options and instruction alone are too long). The frame budget
    (:mod:`train.frame_budget`) catches it to give the clip fewer frames, or to refuse the sample."""


@dataclass
class Example:
    """One training sequence before tokenization."""

    qid: str
    task: str
    """"qa", "reasoning" or "stl"."""
    task_id: int
    """TASK_QA (qa, stl) or TASK_REASON (reasoning)."""
    frames: torch.Tensor | None
    """uint8 [T, 3, H, W]; None = a text-only example (its prompt has no frame placeholders)."""
    question: str
    options: list[str]
    instruction: str
    target: str
    captions: list[str | None] | None = field(default=None)
    """vCoT captions per frame gap (T - 1 entries) or None."""
    answer: str | None = field(default=None)
    """The answer text ("(B)") of a qa / stl example, which is never cut: the whole target of a
    qa example, the end of the answer line of an stl target (an over-long stl target loses the
    tail of its reasoning instead, see :func:`fit_target`). None (reasoning, caption, or examples
    built by hand): an over-long target is cut at its end."""


def reasoning_text(sample: dict, source: str) -> str | None:
    """The reasoning text of a question sample for ``source`` (none|raw|refined|gt), or None."""
    if source == "none":
        return None
    if source == "gt":
        text = (sample.get("extra") or {}).get("reasoning")
    else:
        rec = sample.get("reasoning")
        text = rec.get(source) if isinstance(rec, dict) else None
    return text.strip() if isinstance(text, str) and text.strip() else None


def build_examples(sample: dict, cfg: TaskConfig) -> list[Example]:
    """The training sequences of one question sample.

    qa: the QA example. mtl: QA + the reasoning example when reasoning text exists (the
    reasoning task needs no ground-truth answer, so an unanswered question can still yield
    it). stl: reasoning then answer as one target; with no reasoning text it falls back to the
    plain QA target. Questions without an answer yield no QA / STL example.

    Args:
        sample: a question sample (contract 3). ``"frames": None`` makes a text-only sample (text
            data mixed into video training): its examples have no frames and no placeholders.
        cfg: the task configuration.

    Returns:
        0 to 2 examples.
    """
    if sample.get("qtype") == CAPTION_QTYPE or cfg.mode == "caption":
        return _caption_examples(sample, cfg)
    try:
        qid, frames, question, options = sample["qid"], sample["frames"], sample["question"], sample["options"]
    except KeyError as e:
        raise KeyError(f"question sample {sample.get('qid', '?')}: missing field {e.args[0]!r}") from None
    answer = sample.get("answer")
    if answer is not None and not 0 <= int(answer) < len(options):
        raise ValueError(f"question sample {qid}: field 'answer' = {answer} outside the {len(options)} options")
    captions = _vcot_captions(sample) if cfg.use_vcot else None
    reasoning = reasoning_text(sample, cfg.reasoning_source)
    common = {"qid": qid, "frames": frames, "question": question, "options": list(options), "captions": captions}
    out: list[Example] = []
    if cfg.mode == "stl" and answer is not None:
        ans = prompts.answer_text(int(answer), options, cfg.answer_format)
        if reasoning is not None:
            target = prompts.STL_TARGET_TEMPLATE.format(reasoning=reasoning, answer=ans)
            out.append(Example(task="stl", task_id=TASK_QA, instruction=prompts.INSTRUCTIONS["stl"],
                               target=target, answer=ans, **common))
        else:
            out.append(Example(task="qa", task_id=TASK_QA, target=ans, answer=ans,
                               instruction=prompts.qa_instruction(cfg.answer_format), **common))
    elif cfg.mode in ("qa", "mtl"):
        if answer is not None:
            ans = prompts.answer_text(int(answer), options, cfg.answer_format)
            out.append(Example(task="qa", task_id=TASK_QA, target=ans, answer=ans,
                               instruction=prompts.qa_instruction(cfg.answer_format), **common))
        if cfg.mode == "mtl" and reasoning is not None:
            instr = cfg.reasoning_instruction or prompts.INSTRUCTIONS["reasoning"]
            out.append(Example(task="reasoning", task_id=TASK_REASON, instruction=instr,
                               target=reasoning, **common))
    return out


def _caption_examples(sample: dict, cfg: TaskConfig) -> list[Example]:
    """caption mode: the caption example of a caption entry; nothing for QA entries (and nothing
    for caption entries in the QA modes)."""
    if sample.get("qtype") != CAPTION_QTYPE or cfg.mode != "caption":
        return []
    caption = (sample.get("extra") or {}).get("caption")
    if not isinstance(caption, str) or not caption.strip():
        raise ValueError(f"caption sample {sample.get('qid', '?')}: field 'extra.caption' is empty or missing")
    return [Example(qid=sample["qid"], task="caption", task_id=TASK_QA, frames=sample["frames"],
                    question=str(sample.get("question") or ""), options=[],
                    instruction=cfg.caption_instruction or prompts.CAPTION_INSTRUCTION, target=caption.strip())]


def _vcot_captions(sample: dict) -> list[str | None] | None:
    rec = sample.get("reasoning")
    caps = rec.get("vcot") if isinstance(rec, dict) else None
    if caps is None:
        return None
    n_frames = int(sample["frames"].shape[0])
    if len(caps) != n_frames - 1:
        raise ValueError(f"question sample {sample['qid']}: reasoning field 'vcot' has {len(caps)} "
                         f"captions, {n_frames} frames need {n_frames - 1}")
    return list(caps)


def _enc(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False) if text else []


def encode_prompt(tokenizer: PreTrainedTokenizerBase, layout: FrameLayout, question: str,
                  options: list[str], instruction: str, captions: list[str | None] | None = None,
                  max_len: int | None = None, qid: str = "?") -> tuple[list[int], bool]:
    """Token ids of a prompt with frame placeholders and optional per-gap captions.

    Args:
        tokenizer: from :func:`train.tokenizer.build_tokenizer`.
        layout: the model's frame layout.
        question, options, instruction: prompt texts.
        captions: ``layout.num_frames - 1`` texts (or None entries), ``captions[j]`` between
            frame j and j+1. With temporal_stride > 1 the captions of gaps inside a group are
            placed after that group.
        max_len: cut the question text so that the prompt fits; ValueError if it cannot.
        qid: named in errors.

    Returns:
        (ids starting with bos, whether the question was cut).
    """
    if captions is not None and len(captions) != layout.num_frames - 1:
        raise ValueError(f"{qid}: {len(captions)} captions given, {layout.num_frames} frames need "
                         f"{layout.num_frames - 1} (one per frame gap)")
    fid = frame_token_id(tokenizer)
    head = [tokenizer.bos_token_id] + _enc(tokenizer, prompts.USER_PREFIX)
    s = layout.temporal_stride
    for g in range(layout.groups):
        head += _enc(tokenizer, prompts.FRAME_PREFIX.format(index=g + 1)) + [fid] * layout.tokens_per_group
        for j in range(g * s, min((g + 1) * s, layout.num_frames - 1)):
            if captions is not None and captions[j]:
                head += _enc(tokenizer, prompts.CAPTION_TEMPLATE.format(caption=str(captions[j]).strip()))
    # a caption prompt has no question and no options: no empty "Question:" / "Options:" lines
    q = _enc(tokenizer, prompts.question_text(question)) if question.strip() else []
    tail = _enc(tokenizer, prompts.options_text(options)) if options else []
    tail += _enc(tokenizer, prompts.ASSISTANT_PREFIX.format(instruction=instruction))
    cut = False
    if max_len is not None and len(head) + len(q) + len(tail) > max_len:
        keep = max_len - len(head) - len(tail)
        if keep < 1:
            raise PromptTooLong(f"{qid}: prompt without its question is {len(head) + len(tail)} tokens "
                                f"> max_prompt_len {max_len} (frames, captions and options must fit)")
        q, cut = q[:keep], True
    return head + q + tail, cut


def encode_target(tokenizer: PreTrainedTokenizerBase, target: str, max_len: int | None = None
                  ) -> tuple[list[int], bool]:
    """Token ids of a target: ``" {target}"`` then eos, cut to ``max_len`` (eos kept)."""
    ids = _enc(tokenizer, prompts.TARGET_TEMPLATE.format(target=target))
    cut = max_len is not None and len(ids) + 1 > max_len
    if cut:
        ids = ids[: max_len - 1]
    return ids + [tokenizer.eos_token_id], cut


_SENTENCE_END = re.compile(r"[.!?]+[\"')\]]*(?=\s)|\n")
"""Where a sentence of reasoning text ends: after . ! ? (and closing quotes / brackets) before white
space, or at a line break."""

TARGET_STATS: dict[str, int] = {"stl_targets": 0, "stl_shortened": 0}
"""Process-wide counts of :func:`encode_examples`: STL targets encoded, and how many of them were
longer than ``task.max_target_len`` and had their reasoning shortened (:func:`fit_target`). Read
with :func:`target_stats`; the per-batch count is the batch's ``n_stl_shortened``."""
_warned_stl_shortened = False


def target_stats() -> dict[str, int]:
    """A copy of :data:`TARGET_STATS` (what the trainer can log)."""
    return dict(TARGET_STATS)


def reset_target_stats() -> None:
    """Zero :data:`TARGET_STATS` and re-arm the once-only warning about shortened STL targets."""
    global _warned_stl_shortened
    TARGET_STATS.update(stl_targets=0, stl_shortened=0)
    _warned_stl_shortened = False


def _last_fitting(n: int, fits: Callable[[int], bool]) -> int:
    """The largest i in [0, n) with fits(i), for fits true up to some i and false after (binary
    search); -1 when none fits."""
    lo, hi, best = 0, n - 1, -1
    while lo <= hi:
        mid = (lo + hi) // 2
        if fits(mid):
            best, lo = mid, mid + 1
        else:
            hi = mid - 1
    return best


def fit_target(ex: Example, n_tokens: Callable[[str], int], max_len: int | None,
               tokenizer: PreTrainedTokenizerBase) -> tuple[str, bool]:
    """The target text of ``ex`` to encode under ``max_len`` tokens; never cuts an answer.

    * the target fits, or ``ex.answer`` is None (reasoning, caption): ``ex.target`` unchanged (an
      over-long one is then cut at its end by the encoder, as before);
    * an over-long STL target (reasoning + ``"\nAnswer: {answer}"``): the reasoning loses its tail
      so that the whole answer line fits: the longest prefix ending at a sentence end that fits,
      else the longest prefix of its tokens that fits, else no reasoning at all;
    * an over-long QA target (the answer itself): ValueError.

    Args:
        ex: the example (``ex.answer`` set by :func:`build_examples` for qa / stl).
        n_tokens: tokens a target text takes, end token included (the encoder's own count, so that
            any encoder of targets can use this).
        max_len: ``task.max_target_len`` (None: no limit).
        tokenizer: decodes token prefixes of the reasoning (the fallback when no sentence fits).

    Returns:
        (target text, whether the STL reasoning was shortened).

    Raises:
        ValueError: naming the qid and the lengths, when the answer (STL: the answer line) alone
            takes more than ``max_len`` tokens.
    """
    if max_len is None or ex.answer is None:
        return ex.target, False
    n = n_tokens(ex.target)
    if n <= max_len:
        return ex.target, False
    answer_line = prompts.STL_TARGET_TEMPLATE.format(reasoning="", answer=ex.answer)
    if ex.task != "stl" or not ex.target.endswith(answer_line):
        raise ValueError(f"{ex.qid}: {ex.task} target {ex.target!r} is {n} tokens (end token included) > "
                         f"task.max_target_len {max_len}; an answer is never cut (raise task.max_target_len)")
    n_line = n_tokens(answer_line)
    if n_line > max_len:
        raise ValueError(f"{ex.qid}: stl answer line {answer_line.strip()!r} alone is {n_line} tokens (end token "
                         f"included; with its reasoning {n}) > task.max_target_len {max_len}; an answer is never "
                         f"cut (raise task.max_target_len)")
    reasoning = ex.target[: len(ex.target) - len(answer_line)]
    sentences = [reasoning[:m.end()].rstrip() for m in _SENTENCE_END.finditer(reasoning)]
    sentences = [t for t in dict.fromkeys(sentences) if t]  # increasing prefixes, without repeats
    i = _last_fitting(len(sentences), lambda j: n_tokens(sentences[j] + answer_line) <= max_len)
    if i >= 0:
        return sentences[i] + answer_line, True
    ids = tokenizer.encode(reasoning, add_special_tokens=False)

    def prefix(k: int) -> str:  # the first k + 1 tokens of the reasoning, as text
        text = tokenizer.decode(ids[: k + 1], skip_special_tokens=True, clean_up_tokenization_spaces=False)
        return text.rstrip("\ufffd").rstrip()  # no half character or dangling space before the answer line

    k = _last_fitting(len(ids), lambda j: n_tokens(prefix(j) + answer_line) <= max_len)
    return (prefix(k) if k >= 0 else "") + answer_line, True


def collate(examples: list[Example], tokenizer: PreTrainedTokenizerBase, cfg: TaskConfig,
            layout: FrameLayout, pad_to_multiple: int = 1,
            layout_for: Callable[[int], FrameLayout] | None = None) -> dict[str, Any]:
    """Tokenize and right-pad examples into a batch.

    Args:
        examples: from :func:`build_examples` (at least one).
        tokenizer: the model's tokenizer.
        cfg: gives max_prompt_len / max_target_len.
        layout: the model's :class:`FrameLayout` (``model.frame_layout(num_frames)``).
        pad_to_multiple: round the padded length up to a multiple of this.
        layout_for: the model's layout of another frame count (``model.frame_layout``): clips of
            different frame counts in one batch (the frame budget); None: every clip must have
            ``layout.num_frames`` frames.

    Returns:
        dict with pixel_values uint8 [Bv,T,3,H,W] (the clips of the Bv examples that have frames, in
        row order; None when no example has any; clips of different frame counts are zero-padded to
        the longest and ``clip_frames`` long [Bv] gives each one's count, see :func:`stack_clips`);
        input_ids, attention_mask, labels (target ids, -100 elsewhere), task_ids (0/1/2) all long [B,L];
        qids, tasks (list[str]); n_cut_prompts, n_cut_targets (int).
    """
    if not isinstance(layout, FrameLayout):
        raise TypeError("collate needs the model's FrameLayout (model.frame_layout(num_frames) or "
                        f"ModelConfig.frame_layout(num_frames)), got {type(layout).__name__}")
    if not examples:
        raise ValueError("collate got no examples")
    rows, n_cut_p, n_cut_t, n_short = encode_examples(examples, tokenizer, cfg, layout, layout_for)
    input_ids, attention_mask, labels, task_ids = pad_rows(rows, tokenizer.pad_token_id, pad_to_multiple)
    pixel_values, clip_frames = stack_clips([ex.frames for ex in examples if ex.frames is not None],
                                            [ex.qid for ex in examples])
    out = {"pixel_values": pixel_values, "input_ids": input_ids, "attention_mask": attention_mask,
           "labels": labels, "task_ids": task_ids, "qids": [ex.qid for ex in examples],
           "tasks": [ex.task for ex in examples], "n_cut_prompts": n_cut_p, "n_cut_targets": n_cut_t,
           "n_stl_shortened": n_short}
    if clip_frames is not None:
        out["clip_frames"] = clip_frames
    return out


def stack_frames(examples: list[Example], pad: bool = False) -> torch.Tensor | None:
    """uint8 [Bv, T, 3, H, W]: the frames of the examples that have them (text-only ones have none), in
    order; None when none has. ValueError naming the qids when the clips differ in size (or, unless
    ``pad``, in frame count; ``pad``: zero-padded to the longest, see :func:`stack_clips`)."""
    clips = [ex.frames for ex in examples if ex.frames is not None]
    qids = [ex.qid for ex in examples]
    if not clips:
        return None
    if not pad and len({int(c.shape[0]) for c in clips}) > 1:
        raise ValueError(f"clips of different frame counts {[int(c.shape[0]) for c in clips]} in one batch ({qids}) "
                         "need the frame budget's ragged path (train.tasks.stack_clips)")
    return stack_clips(clips, qids)[0]


def stack_clips(clips: list[torch.Tensor], qids: list[str] | None = None
                ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(pixel_values, clip_frames) of clips uint8 [T_i, 3, H, W].

    All of one frame count: ``torch.stack`` [C, T, 3, H, W] and None (the single-T path, unchanged).
    Different counts (the frame budget): the clips zero-padded at the end to the longest [C, Tmax, 3, H, W],
    and ``clip_frames`` long [C], each clip's own count: the model encodes ``pixel_values[c, :clip_frames[c]]``.
    No clip: (None, None). ValueError naming ``qids`` when the frames differ in size.
    """
    if not clips:
        return None, None
    counts = [int(c.shape[0]) for c in clips]
    try:
        if len(set(counts)) == 1:
            return torch.stack(clips), None
        longest = max(counts)
        padded = [c if n == longest else torch.cat([c, c.new_zeros((longest - n, *c.shape[1:]))])
                  for c, n in zip(clips, counts)]
        return torch.stack(padded), torch.tensor(counts, dtype=torch.long)
    except RuntimeError as e:
        raise ValueError(f"frames of different sizes in one batch ({qids}): {e}") from None


def encode_examples(examples: list[Example], tokenizer: PreTrainedTokenizerBase, cfg: TaskConfig,
                    layout: FrameLayout, layout_for: Callable[[int], FrameLayout] | None = None
                    ) -> tuple[list[tuple[list[int], list[int], int]], int, int, int]:
    """(prompt ids, target ids, task id) per example, and how many prompts were cut, how many
    targets lost text (cut at the end, or STL reasoning shortened) and how many of those were STL
    targets whose reasoning was shortened so that the answer line fits (:func:`fit_target`; also
    added to :data:`TARGET_STATS`, and the first time this happens a warning is logged). The frames
    of each example are checked against ``layout``, or, when ``layout_for`` is given, prompted with
    ``layout_for(T)`` for a clip of another frame count T (ValueError naming the qid; an answer that
    cannot fit ``cfg.max_target_len`` raises too)."""
    global _warned_stl_shortened
    rows, n_cut_p, n_cut_t, n_short = [], 0, 0, 0

    def n_tokens(text: str) -> int:
        return len(_enc(tokenizer, prompts.TARGET_TEMPLATE.format(target=text))) + 1

    text_only = dataclasses.replace(layout, num_frames=0, extra_tokens=0)
    for ex in examples:
        lay = layout
        if ex.frames is not None and layout_for is not None and ex.frames.dim() == 4 and (
                int(ex.frames.shape[0]) != layout.num_frames):
            lay = layout_for(int(ex.frames.shape[0]))  # the frame budget: this clip's own count
        if ex.frames is not None and (tuple(ex.frames.shape[:1]) != (lay.num_frames,)
                                      or ex.frames.dtype != torch.uint8):
            raise ValueError(f"{ex.qid}: frames {tuple(ex.frames.shape)} {ex.frames.dtype}, expected uint8 "
                             f"[{lay.num_frames}, 3, H, W]")
        p, cp = encode_prompt(tokenizer, lay if ex.frames is not None else text_only, ex.question, ex.options,
                              ex.instruction, ex.captions if ex.frames is not None else None,
                              cfg.max_prompt_len, ex.qid)
        target, short = fit_target(ex, n_tokens, cfg.max_target_len, tokenizer)
        t, ct = encode_target(tokenizer, target, cfg.max_target_len)
        n_cut_p, n_cut_t, n_short = n_cut_p + cp, n_cut_t + (ct or short), n_short + short
        TARGET_STATS["stl_targets"] += ex.task == "stl"
        rows.append((p, t, ex.task_id))
    TARGET_STATS["stl_shortened"] += n_short
    if n_short and not _warned_stl_shortened:
        _warned_stl_shortened = True
        log.warning("task.max_target_len=%d: %d of %d STL target(s) so far were longer; their reasoning was "
                    "shortened (tail dropped, at a sentence end when possible) so that the answer line fits. "
                    "Counted per batch in n_stl_shortened and in train.tasks.target_stats(); warned once.",
                    cfg.max_target_len, TARGET_STATS["stl_shortened"], TARGET_STATS["stl_targets"])
    return rows, n_cut_p, n_cut_t, n_short


def pad_rows(rows: list[tuple[list[int], list[int], int]], pad_token_id: int, pad_to_multiple: int = 1
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad (prompt ids, target ids, task id) rows into input_ids, attention_mask, labels
    (target ids, -100 elsewhere) and task_ids, all long [B, L]; L = the longest row rounded up to
    a multiple of ``pad_to_multiple``."""
    length = max(len(p) + len(t) for p, t, _ in rows)
    length = -(-length // pad_to_multiple) * pad_to_multiple
    B = len(rows)
    input_ids = torch.full((B, length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((B, length), dtype=torch.long)
    labels = torch.full((B, length), -100, dtype=torch.long)
    task_ids = torch.zeros((B, length), dtype=torch.long)
    for i, (p, t, tid) in enumerate(rows):
        n = len(p) + len(t)
        input_ids[i, :n] = torch.tensor(p + t)
        attention_mask[i, :n] = 1
        labels[i, len(p):n] = torch.tensor(t)
        task_ids[i, len(p):n] = tid
    return input_ids, attention_mask, labels, task_ids


def option_targets(options: list[str], answer_format: str) -> list[str]:
    """The QA target text of every option (what option scoring compares)."""
    return [prompts.answer_text(i, options, answer_format) for i in range(len(options))]
