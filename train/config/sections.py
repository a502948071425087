"""The trainer's config sections and the whole :class:`TrainConfig` (plain dataclasses, no torch).

Every field carries a docstring (the string literal under it), which ``python -m train
--help-config`` prints; each section's ``problems()`` returns (field, message) range checks, and
:func:`cross_problems` the checks across sections. Parsing and validation are in
:mod:`train.config.parse`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from data_shards.stream.settings import LoaderConfig
from train.config.hf_check import hf_config_problems
from train.config.model import ModelConfig
from train.config.task import TaskConfig


@dataclass
class DataConfig(LoaderConfig):
    """Where the shards are and how the streaming loader reads them.

    The loader's own settings (``data_shards.stream.settings.LoaderConfig``: frames, workers,
    shuffling, decoding, ...) are this section's fields as they are; the fields below are the
    trainer's, or the loader's with the trainer's defaults. ``python -m train --help-config`` lists all.
    """

    urls: list[str] = field(default_factory=list)
    """Shard URLs, brace-expanded by the loader, e.g. ["/data/shards/train-{000000..000127}.tar"]."""
    frame_size: list[int] = field(default_factory=lambda: [224, 224])
    """[height, width] the frames are resized to during decoding."""
    micro_batch_size: int = 2
    """Questions per micro-batch per rank (the loader's batch; mtl makes up to 2 examples each)."""
    num_workers: int = 0
    """DataLoader worker processes per rank (0 = decode in the training process)."""
    shuffle_buffer: int = 64
    """Sample shuffle buffer size in videos (0 = no sample shuffling)."""
    seed: int | None = None
    """Data order seed; None = run.seed. Epoch e uses (seed, e), so the order is reproducible."""
    epoch_batches: int | None = None
    """Batches per rank per epoch; None = from sizes.json (all ranks must see the same count)."""
    reasoning: list[str] = field(default_factory=list)
    """Reasoning jsonl files (reasoning_gen output) joined to questions by qid; [] = none."""
    allow_sparse_reasoning: bool = False
    """MTL / STL are refused when more than half of the reasoning records hold no text for
    task.reasoning_source (those questions train without reasoning: in effect task.mode qa). True trains
    anyway, with a warning: for an experiment on a teacher whose refined texts are mostly empty (the
    study's real teacher, whose replies hold little but the answer)."""
    packing: bool = False
    """Pack the sequences of each micro-batch (QA, reasoning, STL; several questions and videos)
    into rows of up to max_tokens_per_row tokens (first-fit decreasing) instead of one right-padded
    row each; positions restart per sequence and attention never crosses sequences (flash-attn
    varlen on CUDA when importable, else SDPA with a block-diagonal causal mask; the trainer logs
    which). Same loss and gradients as unpacked. model.kind hf_vlm too: one video per example, Qwen's
    3-D M-RoPE positions from the model's own get_rope_index per example (train.models.hf_vlm)."""
    max_tokens_per_row: int | None = None
    """Row capacity of data.packing in tokens; None = task.max_prompt_len + task.max_target_len
    (the longest sequence a task builds, the smallest value allowed)."""
    max_visual_tokens_per_row: int | None = None
    """Frame budget of data.packing: visual tokens one packed row may hold at most, over all its sequences (a
    second constraint of the packer besides max_tokens_per_row). A clip never gets more frames than one row
    can hold. Turns the frame budget on, as max_visual_tokens does (docs/TRAINING.md "A frame budget");
    None: no row cap."""
    packing_sdpa: Literal["per_sequence", "mask"] = "per_sequence"
    """How packed rows run when the LLM's attention is SDPA (CPU, or no flash-attn): per_sequence =
    one causal SDPA call per packed sequence (no masked work); mask = one call per row with a
    block-diagonal causal mask (computes all L x L scores of a row). flash-attn ignores it (varlen);
    model.kind hf_vlm always runs the mask on SDPA."""

    def problems(self) -> list[tuple[str, str]]:
        out = super().problems()
        if self.max_tokens_per_row is not None and self.max_tokens_per_row < 1:
            out.append(("max_tokens_per_row", f"must be >= 1 or null, got {self.max_tokens_per_row}"))
        if not self.decode:
            out.append(("decode", "training needs decoded frames: must be true"))
        if self.max_visual_tokens_per_row is not None:
            if self.max_visual_tokens_per_row < 1:
                out.append(("max_visual_tokens_per_row", f"must be >= 1 or null, got {self.max_visual_tokens_per_row}"))
            if not self.packing:
                out.append(("max_visual_tokens_per_row", "caps packed rows: set data.packing true, or use "
                                                         "data.max_visual_tokens for one sequence per row"))
        return out

    @property
    def budget_on(self) -> bool:
        """Whether frames per clip come from the frame budget (max_visual_tokens, max_visual_tokens_per_row,
        fps or max_frames set)."""
        return super().budget_on or self.max_visual_tokens_per_row is not None


@dataclass
class OptimConfig:
    """Optimizer and learning-rate schedule (linear warmup, then cosine or constant)."""

    name: Literal["adamw", "sgd"] = "adamw"
    """adamw (decoupled weight decay) or sgd (momentum; used by the exactness test)."""
    impl: Literal["auto", "torch", "deepspeed"] = "auto"
    """auto: torch.optim passed to DeepSpeed as a client optimizer when no ZeRO offload is
    configured, DeepSpeed's own (FusedAdam / DeepSpeedCPUAdam) with offload on a GPU."""
    lr: float = 1e-4
    """Peak learning rate (after warmup)."""
    weight_decay: float = 0.0
    """Decoupled weight decay; never applied to biases, norms or embeddings."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    """AdamW betas."""
    eps: float = 1e-8
    """AdamW epsilon."""
    momentum: float = 0.0
    """SGD momentum."""
    warmup_steps: int = 0
    """Linear warmup from 0 over this many optimizer steps."""
    schedule: Literal["cosine", "constant"] = "cosine"
    """LR after warmup: cosine decay to min_lr_ratio * lr at schedule_steps, or constant."""
    schedule_steps: int | None = None
    """Step at which the cosine decay ends (min_lr_ratio * lr after it); None = run.max_steps.
    A resume with a longer run.max_steps pins it to the checkpoint's, so the lr never rises."""
    min_lr_ratio: float = 0.1
    """Final LR of the cosine schedule as a fraction of the peak LR."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (DeepSpeed gradient_clipping); 0 = off."""

    def problems(self) -> list[tuple[str, str]]:
        out = []
        if not self.lr > 0:
            out.append(("lr", f"must be > 0, got {self.lr}"))
        if self.weight_decay < 0:
            out.append(("weight_decay", f"must be >= 0, got {self.weight_decay}"))
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            out.append(("betas", f"must be two numbers in [0, 1), got {self.betas}"))
        if not self.eps > 0:
            out.append(("eps", f"must be > 0, got {self.eps}"))
        if not 0 <= self.momentum < 1:
            out.append(("momentum", f"must be in [0, 1), got {self.momentum}"))
        if self.warmup_steps < 0:
            out.append(("warmup_steps", f"must be >= 0, got {self.warmup_steps}"))
        if self.schedule_steps is not None and self.schedule_steps < max(1, self.warmup_steps):
            out.append(("schedule_steps", f"must be >= max(1, warmup_steps) or null, got {self.schedule_steps}"))
        if not 0 <= self.min_lr_ratio <= 1:
            out.append(("min_lr_ratio", f"must be in [0, 1], got {self.min_lr_ratio}"))
        if self.grad_clip < 0:
            out.append(("grad_clip", f"must be >= 0 (0 = off), got {self.grad_clip}"))
        return out


@dataclass
class DeepSpeedSection:
    """DeepSpeed engine settings; written into the DeepSpeed JSON config each run saves."""

    zero_stage: Literal[0, 1, 2, 3] = 3
    """ZeRO stage: 3 partitions parameters, gradients and optimizer states over ranks."""
    precision: Literal["fp32", "bf16", "fp16"] = "bf16"
    """Parameter/compute dtype; bf16 keeps fp32 master weights in the ZeRO optimizer."""
    gradient_accumulation_steps: int = 1
    """Micro-batches per optimizer step per rank."""
    zero_init: bool = True
    """Build the model inside deepspeed.zero.Init, so no rank ever holds the full model."""
    offload_optimizer: Literal["none", "cpu", "nvme"] = "none"
    """Where ZeRO keeps optimizer states (cpu/nvme offload frees accelerator memory)."""
    offload_param: Literal["none", "cpu", "nvme"] = "none"
    """Where ZeRO-3 keeps partitioned parameters between uses."""
    nvme_path: str | None = None
    """Directory for nvme offload (required when an offload is nvme)."""
    overlap_comm: bool = True
    """Overlap gradient reduction with the backward pass."""
    reduce_bucket_size: int = 50_000_000
    """Elements per gradient reduce bucket."""
    prefetch_bucket_size: int = 50_000_000
    """ZeRO-3: elements of parameters prefetched ahead of use (0 = no prefetch)."""
    param_persistence_threshold: int = 100_000
    """ZeRO-3: parameters smaller than this many elements stay gathered (saves tiny all-gathers)."""
    module_granularity_threshold: int = 0
    """ZeRO-3: a module whose parameters per layer below it are fewer than this is fetched as ONE
    unit (one hook instead of one per submodule: less host overhead for small layers); 0 = off."""
    memory_efficient_linear: bool = False
    """ZeRO-3: let DeepSpeed replace torch.nn.functional.linear PROCESS-WIDE (it stays replaced) by
    an autograd function that does not keep gathered weights for backward. Off: native linear
    (faster; backward re-gathers through the module hooks either way)."""
    leaf_modules: list[str] = field(default_factory=list)
    """ZeRO-3: module class names fetched as one unit (deepspeed.utils.set_z3_leaf_modules), e.g.
    ["LlamaDecoderLayer"]: one gather per layer instead of one hook per submodule."""
    max_live_parameters: int = 1_000_000_000
    """ZeRO-3: gathered parameter elements kept alive at once per rank."""
    backend: Literal["auto", "nccl", "gloo", "ccl"] = "auto"
    """torch.distributed backend; auto = DeepSpeed's accelerator default (gloo on CPU w/o oneCCL)."""
    master_timeout_s: float = 120.0
    """Seconds a rank keeps trying to reach the master (MASTER_ADDR:MASTER_PORT) before it exits with a
    message naming the address, the port and the variables that set them (instead of hanging until
    the 30-minute collective timeout). The environment variable VQA_MASTER_TIMEOUT_S overrides it."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Raw DeepSpeed config entries merged last (escape hatch, e.g. {"comms_logger": {...}})."""

    def problems(self) -> list[tuple[str, str]]:
        out = []
        if self.gradient_accumulation_steps < 1:
            out.append(("gradient_accumulation_steps", f"must be >= 1, got {self.gradient_accumulation_steps}"))
        if self.master_timeout_s <= 0:
            out.append(("master_timeout_s", f"must be > 0, got {self.master_timeout_s}"))
        if "nvme" in (self.offload_optimizer, self.offload_param) and not self.nvme_path:
            out.append(("nvme_path", "required when an offload device is nvme"))
        if self.offload_param != "none" and self.zero_stage != 3:
            out.append(("offload_param", "parameter offload needs zero_stage 3"))
        for name in ("reduce_bucket_size", "max_live_parameters"):
            if getattr(self, name) < 1:
                out.append((name, f"must be >= 1, got {getattr(self, name)}"))
        for name in ("prefetch_bucket_size", "param_persistence_threshold", "module_granularity_threshold"):
            if getattr(self, name) < 0:
                out.append((name, f"must be >= 0, got {getattr(self, name)}"))
        return out


@dataclass
class ParallelConfig:
    """How the ranks split the work besides data parallel (ZeRO-3 always partitions over all ranks)."""

    sequence: int = 1
    """Ulysses sequence parallel: ranks per sequence group (train.sequence_parallel). The S consecutive
    ranks of a group train the same micro-batches, each holding 1/S of every sequence's tokens through the
    LLM (DeepSpeed DistributedAttention all-to-alls around attention); data-parallel ranks = world / S, so
    the global batch is micro_batch_size x gradient_accumulation_steps x world / S questions. The LLM's
    attention heads must be a multiple of S. 1 = off. When to use it: docs/TRAINING.md."""

    def problems(self) -> list[tuple[str, str]]:
        return [("sequence", f"must be >= 1, got {self.sequence}")] if self.sequence < 1 else []


@dataclass
class CheckpointConfig:
    """DeepSpeed checkpoints: every rank writes its own shard."""

    dir: str | None = None
    """Checkpoint directory; None = {run dir}/checkpoints."""
    interval_steps: int = 1000
    """Save every this many optimizer steps (0 = only at the end)."""
    keep_latest: int = 3
    """Keep the newest k checkpoints, delete older ones after a new one is complete."""
    save_final: bool = True
    """Save at the end of training."""

    def problems(self) -> list[tuple[str, str]]:
        out = []
        if self.interval_steps < 0:
            out.append(("interval_steps", f"must be >= 0, got {self.interval_steps}"))
        if self.keep_latest < 1:
            out.append(("keep_latest", f"must be >= 1, got {self.keep_latest}"))
        return out


@dataclass
class LoggingConfig:
    """Metrics; only rank 0 writes them."""

    every_steps: int = 10
    """Write a metrics record every this many optimizer steps."""
    progress_bar: bool = True
    """tqdm bar with loss, tokens/s and ETA on rank 0."""
    jsonl: bool = True
    """Append metrics to {run dir}/metrics.jsonl."""
    tensorboard: bool = True
    """Write TensorBoard events to {run dir}/tb."""

    def problems(self) -> list[tuple[str, str]]:
        return [("every_steps", f"must be >= 1, got {self.every_steps}")] if self.every_steps < 1 else []


@dataclass
class TokenizerConfig:
    """The tokenizer: a local path, or a small BPE trained on the shards' texts (offline)."""

    path: str | None = None
    """Local tokenizer folder (e.g. the LLM's); None = train a BPE on the training texts."""
    vocab_size: int = 512
    """Vocabulary size of a trained BPE."""
    corpus_videos: int = 2000
    """How many videos' records (questions, options, reasoning) the BPE is trained on."""

    def problems(self) -> list[tuple[str, str]]:
        out = []
        if self.vocab_size < 64:
            out.append(("vocab_size", f"must be >= 64, got {self.vocab_size}"))
        if self.corpus_videos < 1:
            out.append(("corpus_videos", f"must be >= 1, got {self.corpus_videos}"))
        return out


@dataclass
class RunConfig:
    """The run as a whole."""

    name: str = "run"
    """Run name; the run directory is {output_dir}/{name}."""
    output_dir: str = "runs"
    """Parent directory of run directories."""
    max_steps: int = 1000
    """Optimizer steps to train (a resumed run continues up to this)."""
    seed: int = 0
    """Seed of model init (same on all ranks) and of per-rank RNG streams (seed + rank)."""
    num_threads: int = 0
    """torch intra-op threads per rank (0 = leave torch's default)."""
    deterministic: bool = False
    """torch.use_deterministic_algorithms (slower; exact repeatability)."""
    overwrite: bool = False
    """Start fresh in a run dir that holds an earlier run: delete its checkpoints and metrics first
    (without it such a start is refused; --resume latest continues the earlier run instead)."""
    max_nonfinite_steps: int = 3
    """Stop (exit 3) after this many optimizer steps in a row with a non-finite loss or gradient
    norm; no checkpoint is written while such a streak lasts."""

    def problems(self) -> list[tuple[str, str]]:
        out = []
        if self.max_steps < 1:
            out.append(("max_steps", f"must be >= 1, got {self.max_steps}"))
        if self.num_threads < 0:
            out.append(("num_threads", f"must be >= 0, got {self.num_threads}"))
        if self.max_nonfinite_steps < 1:
            out.append(("max_nonfinite_steps", f"must be >= 1, got {self.max_nonfinite_steps}"))
        if not self.name or "/" in self.name:
            out.append(("name", f"must be a non-empty name without '/', got {self.name!r}"))
        return out


@dataclass
class TrainConfig:
    """Everything a training run needs; saved resolved with every run dir and checkpoint."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """Vision tower, projector, LLM (train.models.assembled)."""
    task: TaskConfig = field(default_factory=TaskConfig)
    """QA / multi-task / single-task sequences and loss weights (train.tasks)."""
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    """Tokenizer source."""
    data: DataConfig = field(default_factory=DataConfig)
    """Shards and loader."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimizer and schedule."""
    deepspeed: DeepSpeedSection = field(default_factory=DeepSpeedSection)
    """DeepSpeed / ZeRO."""
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    """Sequence parallel."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """Checkpoints."""
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    """Metrics and progress."""
    run: RunConfig = field(default_factory=RunConfig)
    """Run name, length, seed."""

    @property
    def run_dir(self) -> Path:
        return Path(self.run.output_dir) / self.run.name

    @property
    def checkpoint_dir(self) -> Path:
        return Path(self.checkpoint.dir) if self.checkpoint.dir else self.run_dir / "checkpoints"

    @property
    def row_capacity(self) -> int:
        """Tokens per packed row: data.max_tokens_per_row, or the longest sequence a task builds."""
        return self.data.max_tokens_per_row or self.task.max_prompt_len + self.task.max_target_len

    @property
    def data_seed(self) -> int:
        return self.run.seed if self.data.seed is None else self.data.seed


def cross_problems(cfg: TrainConfig) -> list[tuple[str, str]]:
    """Checks across sections, as (dotted field, message); run after every section is valid."""
    out = []
    if cfg.optim.warmup_steps > cfg.run.max_steps:
        out.append(("optim.warmup_steps", f"{cfg.optim.warmup_steps} exceeds run.max_steps {cfg.run.max_steps}"))
    m = cfg.model
    if (m.vision.freeze and "Projector" in cfg.deepspeed.leaf_modules
            and cfg.deepspeed.zero_stage == 3):
        out.append(("deepspeed.leaf_modules", "Projector as a ZeRO-3 leaf needs model.vision.freeze false: with a "
                    "frozen tower its input needs no grad and DeepSpeed never re-gathers a leaf's weights for "
                    "backward (the step fails with a size-0 tensor)"))
    longest = cfg.task.max_prompt_len + cfg.task.max_target_len
    if cfg.data.max_tokens_per_row is not None and cfg.data.max_tokens_per_row < longest:
        out.append(("data.max_tokens_per_row", f"{cfg.data.max_tokens_per_row} cannot hold the longest sequence "
                    f"(task.max_prompt_len + task.max_target_len = {longest}); use >= {longest} or null"))
    if cfg.data.budget_on and cfg.task.use_vcot:
        out.append(("task.use_vcot", "vCoT captions are written for a fixed frame count (one per frame gap), a frame "
                    "budget changes the count per clip: turn one of them off (data.max_visual_tokens, "
                    "data.max_visual_tokens_per_row, data.fps, data.max_frames)"))
    if cfg.optim.impl == "deepspeed" and cfg.optim.name != "adamw":
        out.append(("optim.impl", "DeepSpeed's own optimizers are used for adamw only"))
    return out + hf_config_problems(cfg.model)  # typos / bad values inside the HF config dicts
