"""What evaluation needs from the assembled model (``train.models.assembled``): option
log-likelihood scoring and greedy generation.

Token-level functions take prompt ids built by :func:`train.tasks.encode_prompt` (frame
placeholders included); the text-level ``score_options`` / ``generate_text`` build those prompts
themselves with the training prompt texts, so an evaluator needs only the model and tokenizer.
All run under ``torch.no_grad`` and are deterministic (greedy, no sampling).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from train import prompts
from train.tasks import encode_prompt, encode_target

VideoLLM = Any
"""The assembled model (``train.models.assembled.VideoLLM``, which calls these functions); named
here only as an annotation, since that module imports this one."""


def _pad(rows: list[list[int]], pad_id: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, r in enumerate(rows):
        sl = slice(length - len(r), length) if left else slice(0, len(r))
        ids[i, sl] = torch.tensor(r, dtype=torch.long)
        mask[i, sl] = 1
    return ids, mask


@torch.no_grad()
def generate(model: VideoLLM, pixel_values: torch.Tensor, prompt_ids: list[list[int]],
             max_new_tokens: int = 64, eos_token_id: int | None = None, pad_token_id: int = 0) -> list[list[int]]:
    """Greedy decoding with the HF KV cache, prompts left-padded.

    Args:
        model: the VideoLLM.
        pixel_values: uint8 [B, T, 3, H, W].
        prompt_ids: B prompts (with frame placeholders), e.g. from ``encode_prompt``.
        max_new_tokens: upper bound on generated tokens per row.
        eos_token_id: stop a row at this token (not included in the output).
        pad_token_id: id used for left padding (masked out).

    Returns:
        B lists of generated token ids.
    """
    if len(prompt_ids) != pixel_values.shape[0]:
        raise ValueError(f"{len(prompt_ids)} prompts for {pixel_values.shape[0]} clips")
    device = next(model.parameters()).device
    ids, mask = _pad(prompt_ids, pad_token_id, left=True)
    ids, mask = ids.to(device), mask.to(device)
    emb = model.embed(ids, model.encode_frames(pixel_values.to(device)))
    # Left padding: positions count real tokens only, as if each row were alone.
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model.decoder_forward(emb, mask, position_ids=pos, use_cache=True)
    B = ids.shape[0]
    done = torch.zeros(B, dtype=torch.bool, device=device)
    result: list[list[int]] = [[] for _ in range(B)]
    embed_tokens = model.causal_lm.get_input_embeddings()
    for _ in range(max_new_tokens):
        nxt = model.head_logits(out.last_hidden_state[:, -1]).argmax(dim=-1)
        if eos_token_id is not None:
            done |= nxt == eos_token_id
        for i in (~done).nonzero().flatten().tolist():
            result[i].append(int(nxt[i]))
        if bool(done.all()):
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        pos = pos[:, -1:] + 1
        out = model.decoder_forward(embed_tokens(nxt[:, None]), mask, position_ids=pos,
                                    past_key_values=out.past_key_values, use_cache=True)
    return result


@torch.no_grad()
def option_logprobs(model: VideoLLM, pixel_values: torch.Tensor, prompt_ids: list[list[int]],
                    option_ids: list[list[list[int]]], pad_token_id: int = 0,
                    max_rows: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-likelihood of each option's tokens given its prompt (teacher forcing).

    Each clip's frames are encoded once and shared by its options; the (prompt + option)
    sequences run in chunks of ``max_rows``; logits are formed only at option positions.

    Args:
        model: the VideoLLM.
        pixel_values: uint8 [B, T, 3, H, W].
        prompt_ids: B prompts (with frame placeholders).
        option_ids: per clip, K_b token lists (the candidate continuations).
        pad_token_id: right-padding id.
        max_rows: sequences per forward pass.

    Returns:
        (sum_logprob float32 [B, K_max] with -inf where a clip has fewer options,
         n_tokens long [B, K_max]); mean log-prob = sum / n_tokens.
    """
    B = pixel_values.shape[0]
    if len(prompt_ids) != B or len(option_ids) != B:
        raise ValueError(f"{len(prompt_ids)} prompts / {len(option_ids)} option lists for {B} clips")
    device = next(model.parameters()).device
    visual = model.encode_frames(pixel_values.to(device))
    k_max = max(len(o) for o in option_ids)
    total = torch.full((B, k_max), float("-inf"), dtype=torch.float32)
    count = torch.zeros((B, k_max), dtype=torch.long)
    rows = [(b, k, prompt_ids[b], opt) for b in range(B) for k, opt in enumerate(option_ids[b])]
    for start in range(0, len(rows), max_rows):
        chunk = rows[start:start + max_rows]
        if any(len(opt) == 0 for _, _, _, opt in chunk):
            raise ValueError("an option has no tokens to score")
        ids, mask = _pad([p + opt for _, _, p, opt in chunk], pad_token_id, left=False)
        ids, mask = ids.to(device), mask.to(device)
        vis = visual[torch.tensor([b for b, _, _, _ in chunk], device=device)]
        hidden = model.decoder_forward(model.embed(ids, vis), mask).last_hidden_state
        for r, (b, k, p, opt) in enumerate(chunk):
            # hidden at t predicts token t + 1: option tokens sit at len(p) .. len(p)+len(opt)-1.
            h = hidden[r, len(p) - 1:len(p) + len(opt) - 1]
            logp = torch.log_softmax(model.head_logits(h).float(), dim=-1)
            tgt = torch.tensor(opt, device=device)
            total[b, k] = logp.gather(1, tgt[:, None]).sum().cpu()
            count[b, k] = len(opt)
    return total, count


def _prompts(model: VideoLLM, tokenizer: PreTrainedTokenizerBase, pixel_values: torch.Tensor,
             questions: list[str], options: list[list[str]], captions, instruction: str) -> list[list[int]]:
    layout = model.frame_layout(int(pixel_values.shape[1]))
    captions = captions if captions is not None else [None] * len(questions)
    return [encode_prompt(tokenizer, layout, q, o, instruction, c)[0]
            for q, o, c in zip(questions, options, captions, strict=True)]


def score_options(model: VideoLLM, tokenizer: PreTrainedTokenizerBase, pixel_values: torch.Tensor,
                  questions: list[str], options: list[list[str]],
                  captions: list[list[str | None] | None] | None = None,
                  answer_format: str = "letter") -> dict[str, torch.Tensor]:
    """Score every option of every question with the QA prompt of training.

    Args:
        pixel_values: uint8 [B, T, 3, H, W].
        questions, options: B questions and their option texts.
        captions: per clip None or T-1 transitional captions (vCoT) interleaved with the frames.
        answer_format: "letter" scores "(B)", "letter_text" scores "(B) red" (eos not scored).

    Returns:
        {"sum": float [B, K_max], "mean": float [B, K_max], "n_tokens": long [B, K_max],
         "pred": long [B] (argmax of "sum" for letter, of "mean" for letter_text)}.
    """
    prompt_ids = _prompts(model, tokenizer, pixel_values, questions, options, captions,
                          prompts.qa_instruction(answer_format))
    option_ids = [[encode_target(tokenizer, prompts.answer_text(i, o, answer_format))[0][:-1]
                   for i in range(len(o))] for o in options]
    total, count = option_logprobs(model, pixel_values, prompt_ids, option_ids, tokenizer.pad_token_id)
    mean = total / count.clamp(min=1)
    pred = (total if answer_format == "letter" else mean).argmax(dim=1)
    return {"sum": total, "mean": mean, "n_tokens": count, "pred": pred}


def generate_text(model: VideoLLM, tokenizer: PreTrainedTokenizerBase, pixel_values: torch.Tensor,
                  questions: list[str], options: list[list[str]],
                  captions: list[list[str | None] | None] | None = None, task: str = "qa",
                  answer_format: str = "letter", max_new_tokens: int = 64) -> list[str]:
    """Greedy text for each question: task "qa" (the answer), "reasoning" or "stl" (reasoning
    then "Answer: ..."), with the training instructions."""
    instr = {"qa": prompts.qa_instruction(answer_format), "reasoning": prompts.INSTRUCTIONS["reasoning"],
             "stl": prompts.INSTRUCTIONS["stl"]}
    if task not in instr:
        raise ValueError(f"task must be one of {sorted(instr)}, got {task!r}")
    prompt_ids = _prompts(model, tokenizer, pixel_values, questions, options, captions, instr[task])
    out = generate(model, pixel_values, prompt_ids, max_new_tokens, tokenizer.eos_token_id, tokenizer.pad_token_id)
    return [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in out]
