"""The ReasVQA loss, in one place: ``alpha * mean_QA + beta * mean_reason`` over the GLOBAL batch.

Every model family calls this module; nothing else computes or rescales a loss. The pieces, in the
order a step uses them:

1. :func:`step_token_counts`: QA and reasoning target tokens of this rank's micro-batches, summed
   over all ranks BEFORE any forward (the means run over the whole optimizer step).
2. :func:`token_weights`: per-token weights ``alpha / N_qa`` on QA targets, ``beta / N_reason`` on
   reasoning targets, 0 elsewhere (:mod:`train.tasks` only marks which task a target token is).
3. :func:`weighted_lm_loss`: the model's last hidden states, shifted by one and reduced to the
   target rows, through the fused linear + weighted cross-entropy head
   (``vqa_kernels.LinearWeightedCrossEntropy``, which never materialises [tokens, vocab] logits):
   ``sum_i w_i * CE_i``. Summed over micro-batches and ranks this is exactly the objective.
4. :func:`backward_scale`: DeepSpeed divides each micro-batch loss by the accumulation steps and
   averages gradients over data-parallel ranks; backpropagating ``loss * gas * world_size`` undoes
   both, so 2 ranks x 2 accumulation steps give the gradients of one process with the whole batch.

The head is the LLM's own ``lm_head`` replaced by the loss module (:func:`install_loss_head`):
under ZeRO-3 a parameter is gathered only inside the forward of the module that owns it.
"""

from __future__ import annotations

import torch
from torch import nn

from train.dist import all_reduce_sum
from vqa_kernels import LinearWeightedCrossEntropy

IGNORE_INDEX = -100
TASK_NONE, TASK_QA, TASK_REASON = 0, 1, 2
"""Task ids of target tokens (``batch["task_ids"]``): the STL and caption targets count as QA."""


def task_token_counts(task_ids: torch.Tensor) -> tuple[int, int]:
    """(QA target tokens, reasoning target tokens) in a [B, L] task-id tensor."""
    return int((task_ids == TASK_QA).sum()), int((task_ids == TASK_REASON).sum())


def count_task_tokens(micro_batches: list[dict]) -> tuple[int, int]:
    """(QA, reasoning) target tokens over a list of collated micro-batches (this rank only)."""
    counts = [task_token_counts(mb["task_ids"]) for mb in micro_batches]
    return sum(c[0] for c in counts), sum(c[1] for c in counts)


def step_token_counts(micro_batches: list[dict]) -> tuple[float, float]:
    """(N_qa, N_reason) of the whole optimizer step: this rank's micro-batches, summed over ranks
    (a collective: every rank calls it once per step, before its first forward)."""
    n_qa, n_re = all_reduce_sum(list(count_task_tokens(micro_batches)))
    return n_qa, n_re


def token_weights(task_ids: torch.Tensor, n_qa: float | torch.Tensor, n_reason: float | torch.Tensor,
                  alpha: float, beta: float) -> torch.Tensor:
    """Per-token loss weights: alpha/n_qa on task-1 tokens, beta/n_reason on task-2, 0 elsewhere.

    With n_qa / n_reason counted over the whole optimizer step (all micro-batches, all ranks),
    sum_i w_i * CE_i summed over the step = alpha * mean_QA + beta * mean_reason.

    Args:
        task_ids: long [B, L] (0/1/2), aligned with labels.
        n_qa, n_reason: token counts (python numbers or 0-d tensors); 0 -> that task weighs 0.
        alpha, beta: task weights.

    Returns:
        float32 [B, L] on task_ids' device.
    """
    n_qa_t = torch.as_tensor(n_qa, dtype=torch.float32, device=task_ids.device)
    n_re_t = torch.as_tensor(n_reason, dtype=torch.float32, device=task_ids.device)
    w_qa = torch.where(n_qa_t > 0, alpha / n_qa_t.clamp(min=1e-12), torch.zeros_like(n_qa_t))
    w_re = torch.where(n_re_t > 0, beta / n_re_t.clamp(min=1e-12), torch.zeros_like(n_re_t))
    w = torch.zeros(task_ids.shape, dtype=torch.float32, device=task_ids.device)
    w = torch.where(task_ids == TASK_QA, w_qa, w)
    return torch.where(task_ids == TASK_REASON, w_re, w)


def backward_scale(gradient_accumulation_steps: int, world_size: int) -> float:
    """The factor each micro-batch loss is multiplied by before ``engine.backward`` (module doc, 4)."""
    return float(gradient_accumulation_steps * world_size)


def shift_and_select(hidden: torch.Tensor, labels: torch.Tensor, loss_weight: torch.Tensor | None,
                     shifted: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """The rows the head scores: hidden state t predicts labels[t + 1]; only target positions.

    Args:
        hidden: [B, L, D] last hidden states.
        labels: long [B, L], -100 off target.
        loss_weight: float [B, L] aligned with labels, or None (weight 1 on every target).
        shifted: labels and weights are already the NEXT token's (hidden state t predicts labels[t]), as a
            sequence-parallel slice has them (``train.sequence_parallel.plan_shard``).

    Returns:
        (hidden rows [N, D], targets long [N], weights float32 [N], N). With no target at all the
        result is one row of weight 0 (N = 0): under ZeRO-3 every rank must still enter the head,
        whose weight is gathered collectively.
    """
    cut = slice(None) if shifted else slice(None, -1)
    h = hidden[:, cut].reshape(-1, hidden.shape[-1])
    tgt = labels[:, 0 if shifted else 1:].reshape(-1)
    w = (torch.ones_like(tgt, dtype=torch.float32) if loss_weight is None
         else loss_weight[:, 0 if shifted else 1:].reshape(-1).float())
    sel = (tgt != IGNORE_INDEX).nonzero().squeeze(1)
    n_tokens = sel.numel()
    if n_tokens == 0:
        sel = torch.zeros(1, dtype=torch.long, device=h.device)
        tgt, w = torch.zeros_like(tgt), torch.zeros_like(w)
    return h.index_select(0, sel), tgt.index_select(0, sel), w.index_select(0, sel), n_tokens


def weighted_lm_loss(loss_head: nn.Module, hidden: torch.Tensor, labels: torch.Tensor,
                     loss_weight: torch.Tensor | None = None, shifted: bool = False) -> dict[str, torch.Tensor]:
    """``sum_i w_i * CE_i`` over the target tokens of a batch, by the fused head.

    Args:
        loss_head: the model's ``LinearWeightedCrossEntropy`` (its lm_head); called through
            ``__call__`` so that ZeRO-3 gathers its weight.
        hidden: [B, L, D] last hidden states.
        labels: long [B, L]; the token to predict at that position, -100 = no target.
        loss_weight: float [B, L] from :func:`token_weights`; None = weight 1 on every target.
        shifted: see :func:`shift_and_select`.

    Returns:
        {"loss": scalar fp32, "n_tokens": long scalar, the number of target tokens}.
    """
    h, tgt, w, n_tokens = shift_and_select(hidden, labels, loss_weight, shifted)
    loss = loss_head(h, tgt, w)
    return {"loss": loss, "n_tokens": torch.tensor(n_tokens, device=hidden.device)}


def install_loss_head(lm: nn.Module, chunk_size: int) -> LinearWeightedCrossEntropy:
    """Replace ``lm``'s output layer (nn.Linear) by the loss module holding the SAME Parameters.

    Sharing (not copying) keeps a ZeRO-3-partitioned weight intact when the model is built inside
    ``deepspeed.zero.Init`` and keeps tied input/output embeddings tied (HF saves and reloads them as
    tied). The state-dict key stays ``lm_head.weight``, so ``save_pretrained`` loads back with the
    model's own class; called without targets the module returns logits, so HF ``generate`` works.
    """
    old = lm.get_output_embeddings()
    if not isinstance(old, nn.Linear):
        raise TypeError(f"the LLM's output layer is {type(old).__name__}, expected nn.Linear")
    # from_linear sizes the module from in/out_features, so a ZeRO-3-partitioned head works too.
    head = LinearWeightedCrossEntropy.from_linear(old, share=True, chunk_size=chunk_size)
    lm.set_output_embeddings(head)
    return head
