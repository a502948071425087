"""The model interface every family implements, and what a family registers.

The trainer, export, eval and the benches talk to a model only through :class:`VideoModel` and
to a family only through :class:`ModelFamily` (looked up by ``model.kind`` in
:mod:`train.models.registry`); none of them tests which family it has. A family is one module
that subclasses :class:`VideoModel` and defines its :class:`ModelFamily`.

A batch is a dict from the model's own :meth:`VideoModel.collate`. Its tensors go to
:meth:`VideoModel.forward` as keyword arguments (:data:`LOSS_INPUTS`, plus family keys such as
``vision`` or the packed ``position_ids``), together with ``loss_weight`` from :mod:`train.loss`.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from train.config.model import FrameLayout, ModelConfig
from train.config.task import TaskConfig
from train.loss import weighted_lm_loss
from train.sequence_parallel import SequenceParallel, ShardPlan, plan_shard, sharded_forward
from vqa_kernels.attention import select_attention

LOSS_INPUTS = ("input_ids", "attention_mask", "labels")
"""Batch tensors every family's forward takes (besides ``loss_weight`` and its own keys)."""
BATCH_META = ("qids", "tasks", "n_cut_prompts", "n_cut_targets", "n_stl_shortened", "task_ids", "packed", "n_examples",
              "example_lengths", "example_targets")
"""Batch keys that describe the batch and are not model inputs."""


def resolve_attention(requested: str, device: torch.device | str | None = None) -> tuple[str, str]:
    """(HF attn_implementation, reason) for a requested backend ("auto" asks vqa_kernels.attention)."""
    if requested != "auto":
        return requested, f"set in the config (model.attn_implementation={requested})"
    return select_attention(torch.device(device) if device is not None else
                            torch.device("cuda" if torch.cuda.is_available() else "cpu"))


class VideoModel(nn.Module, abc.ABC):
    """A video LLM whose LM head is the fused weighted cross-entropy (``train.loss``).

    Attributes:
        config: the :class:`~train.config.ModelConfig` it was built from.
        attention_report: (HF attn_implementation, why it was chosen).
    """

    config: ModelConfig
    attention_report: tuple[str, str]
    supports_packing: bool = False
    """Whether :meth:`collate` can pack several sequences per row (``data.packing``)."""
    sequence_parallel: SequenceParallel | None = None
    """Set by :meth:`enable_sequence_parallel`: :meth:`forward` then runs this rank's slice of every sequence."""
    same_frames_per_batch: bool = False
    """Whether every clip of a micro-batch must have the same frame count (LLaVA-OneVision): under the frame
    budget the trainer then trims the clips of a micro-batch to the smallest count (``train.frame_budget``)."""

    # ------------------------------------------------------------------ batches
    @abc.abstractmethod
    def frame_layout(self, num_frames: int, frame_size: tuple[int, int] | None = None) -> FrameLayout:
        """How many visual tokens a clip of ``num_frames`` frames (of ``frame_size`` [H, W]) takes."""

    @abc.abstractmethod
    def collate(self, examples: list, task: TaskConfig, packing: bool = False,
                row_capacity: int | None = None, visual_row_capacity: int | None = None) -> dict[str, Any]:
        """Training examples (:class:`train.tasks.Example`) -> one micro-batch (CPU tensors).

        Keys: ``pixel_values`` uint8, ``input_ids`` / ``attention_mask`` / ``labels`` / ``task_ids``
        long [rows, L], ``qids``, ``tasks``, ``n_cut_prompts``, ``n_cut_targets``, and the family's own
        inputs. ``packing``: several sequences per row of at most ``row_capacity`` tokens (and at most
        ``visual_row_capacity`` visual placeholders, the frame budget's row cap; None: no cap).
        """

    def prompt_fits(self, example: Any, num_frames: int, max_prompt_len: int) -> bool:
        """Whether the prompt of ``example`` with its clip at ``num_frames`` frames fits ``max_prompt_len``
        tokens, its question cut as :meth:`collate` cuts it (the frame budget, ``train.frame_budget``)."""
        raise NotImplementedError(f"{type(self).__name__} does not measure prompts: it cannot train under a frame "
                                  "budget (data.max_visual_tokens, data.fps, data.max_frames)")

    def model_inputs(self, batch: dict[str, Any], loss_weight: torch.Tensor, device: torch.device) -> dict:
        """Forward keyword arguments of a collated batch: its tensors on ``device`` + ``loss_weight``."""
        out: dict[str, Any] = {"loss_weight": loss_weight.to(device, non_blocking=True)}
        for key, value in batch.items():
            if key in BATCH_META:
                continue
            if isinstance(value, torch.Tensor):
                out[key] = value.to(device, non_blocking=True)
            elif isinstance(value, dict):  # a family's nested tensors (e.g. an HF model's video inputs)
                out[key] = {k: v.to(device, non_blocking=True) for k, v in value.items()}
        return out

    # ------------------------------------------------------------------ forward
    @property
    @abc.abstractmethod
    def loss_head(self) -> nn.Module:
        """The ``LinearWeightedCrossEntropy`` that replaced the LLM's lm_head."""

    @abc.abstractmethod
    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                      **family_inputs: Any) -> torch.Tensor:
        """Last hidden states [rows, L, D] of the LLM for a batch's inputs (no head)."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                loss_weight: torch.Tensor | None = None, **family_inputs: Any) -> dict[str, torch.Tensor]:
        """``{"loss": sum_i w_i CE_i, "n_tokens": N}`` over the batch's target tokens (``train.loss``).

        Args:
            input_ids, attention_mask, labels: long [rows, L] (labels -100 off target; hidden state
                t predicts labels[t + 1]).
            loss_weight: float [rows, L] from ``train.loss.token_weights``; None = 1 per target.
            family_inputs: the family's own batch tensors (frames, video tensors, packing).
        """
        if self.sequence_parallel is not None:  # this rank's slice of the flattened micro-batch
            plan = plan_shard(self.sequence_parallel, attention_mask, labels, loss_weight,
                              family_inputs.get("segment_ids"))
            with sharded_forward():
                hidden = self.sharded_hidden_states(plan, input_ids, attention_mask, **family_inputs)
            return weighted_lm_loss(self.loss_head, hidden, plan.labels, plan.weights, shifted=True)
        hidden = self.hidden_states(input_ids, attention_mask, **family_inputs)
        return weighted_lm_loss(self.loss_head, hidden, labels, loss_weight)

    @torch.no_grad()
    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               **family_inputs: Any) -> torch.Tensor:
        """Full logits float [rows, L, V] (eval and tests; training never materialises them)."""
        return self.loss_head(self.hidden_states(input_ids, attention_mask, **family_inputs)).float()

    # ------------------------------------------------------------------ set-up the trainer asks for
    def prepare_packing(self, packing_sdpa: str) -> str:
        """Get ready for packed batches; returns how attention keeps packed sequences apart."""
        raise ValueError(f"{type(self).__name__} does not pack sequences: set data.packing false")

    def enable_sequence_parallel(self, sp: SequenceParallel) -> str:
        """Switch the LLM to Ulysses attention over ``sp`` (``train.sequence_parallel``); :meth:`forward` then
        computes this rank's share of the loss. Returns what runs (logged by the trainer)."""
        raise ValueError(f"{type(self).__name__} has no sequence-parallel path: set parallel.sequence 1")

    def decoder_module(self) -> nn.Module:
        """The LLM's decoder (the module sequence parallel splits; benches hook it)."""
        raise NotImplementedError

    def sharded_hidden_states(self, plan: ShardPlan, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                              **family_inputs: Any) -> torch.Tensor:
        """Last hidden states [1, plan.end - plan.start, D] of this rank's slice of the flattened micro-batch."""
        raise NotImplementedError

    # ------------------------------------------------------------------ eval
    @abc.abstractmethod
    def score_options(self, tokenizer: Any, pixel_values: torch.Tensor, questions: list[str],
                      options: list[list[str]], captions: list | None = None,
                      answer_format: str = "letter") -> dict[str, torch.Tensor]:
        """Log-likelihood of every option after the QA prompt: {"sum", "mean", "n_tokens", "pred"}."""

    @abc.abstractmethod
    def generate_text(self, tokenizer: Any, pixel_values: torch.Tensor, questions: list[str],
                      options: list[list[str]], captions: list | None = None, task: str = "qa",
                      answer_format: str = "letter", max_new_tokens: int = 64) -> list[str]:
        """Greedy text per question for the prompt of ``task`` (qa / reasoning / stl / caption)."""

    # ------------------------------------------------------------------ FLOPs
    @abc.abstractmethod
    def flops_per_token(self, seq_len: int, num_frames: int, clips_per_sequence: float = 1.0) -> float:
        """Training model FLOPs per LLM sequence position (``train.flops``)."""

    @abc.abstractmethod
    def batch_flops(self, batch: dict[str, Any]) -> float:
        """Training model FLOPs of one collated micro-batch (no padding counted)."""

    # ------------------------------------------------------------------ export
    @abc.abstractmethod
    def save_export(self, out: str | Path, tokenizer: Any = None, merge_lora: bool = True) -> Path:
        """Write a from_pretrained-able folder with ``video_llm.json`` (its ``kind`` names the family).
        Call on full (not ZeRO-3-partitioned) parameters; merging LoRA happens in place."""


@dataclass(frozen=True)
class ModelFamily:
    """What a model family registers (``train.models.registry``).

    Attributes:
        kind: the ``model.kind`` value (and the ``kind`` of its exports' ``video_llm.json``).
        build: (model config, tokenizer, device, dtype) -> VideoModel. ``tokenizer`` is what
            :attr:`load_tokenizer` returned, or the run's tokenizer when that is None. Call inside
            ``train.engine.model_init_context`` to build straight into ZeRO-3 partitions.
        load_tokenizer: model config -> the family's own tokenizer / processor (saved with the
            checkpoints), or None when the model takes the run's tokenizer (``tokenizer`` section).
        load_export: (export folder, model config of the run or None, device) -> (model in eval
            mode, tokenizer).
    """

    kind: str
    build: Callable[..., VideoModel]
    load_tokenizer: Callable[[ModelConfig], Any]
    load_export: Callable[..., tuple[VideoModel, Any]]
