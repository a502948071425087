"""The DeepSpeed ZeRO-3 engine and the multi-task optimizer step.

* :func:`deepspeed_config` turns the trainer config into the DeepSpeed JSON (saved per run).
* :func:`model_init_context` builds a large model directly partitioned (``deepspeed.zero.Init``)
  and tells transformers about ZeRO-3 (``HfDeepSpeedConfig``) so that its ``from_pretrained``
  loads each weight into the partitions instead of materializing the full model on every rank.
* :func:`build_engine` wraps model + optimizer + warmup/cosine schedule in ``deepspeed.initialize``.
* :func:`optimizer_step` runs one optimizer step over ``gradient_accumulation_steps``
  micro-batches with the ReasVQA loss ``alpha * mean_QA + beta * mean_reason`` over the GLOBAL
  batch (all micro-batches of all ranks), see DESIGN.md "Training sequences and the loss".

On a CPU-only machine the same code runs with DeepSpeed's CPU accelerator and gloo.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import deepspeed
import torch
import torch._dynamo  # noqa: F401  (see model_init_context)
from deepspeed.accelerator import get_accelerator
from deepspeed.utils import set_z3_leaf_modules
from torch.optim.lr_scheduler import LambdaLR
from transformers.integrations import HfDeepSpeedConfig

from train.config.sections import OptimConfig, TrainConfig
from train.config.task import TaskConfig
from train.dist import ParallelDims, all_reduce_sum
from train.loss import backward_scale, step_token_counts, token_weights

# DeepSpeed's ZeRO-3 calls the deprecated *_into_tensor collectives on every step; the warning
# would flood the log of every rank.
warnings.filterwarnings("ignore", message=r".*torch\.distributed\.(all_gather_into_tensor|reduce_scatter_tensor)")

def accelerator_name() -> str:
    """DeepSpeed's accelerator ("cpu", "cuda", ...)."""
    return get_accelerator().device_name()


def use_client_optimizer(optim: OptimConfig, offload_optimizer: str, accel: str) -> bool:
    """Whether a torch.optim optimizer is handed to DeepSpeed (else DeepSpeed builds its own).

    ``auto``: DeepSpeed's own only for AdamW with ZeRO optimizer offload on an accelerator
    (DeepSpeedCPUAdam, JIT-built there). On a CPU-only machine torch's AdamW is used even with
    offload, which DeepSpeed 0.19 only accepts with ``"zero_force_ds_cpu_optimizer": false``.
    """
    if optim.impl == "torch" or optim.name != "adamw":
        return True
    if optim.impl == "deepspeed":
        return False
    return not (offload_optimizer != "none" and accel != "cpu")


def deepspeed_config(cfg: TrainConfig, dims: ParallelDims, accel: str | None = None) -> dict:
    """The DeepSpeed JSON of a run (all values explicit: no "auto" left for DeepSpeed to guess)."""
    accel = accel or accelerator_name()
    ds, o = cfg.deepspeed, cfg.optim
    zero: dict[str, Any] = {"stage": ds.zero_stage, "overlap_comm": ds.overlap_comm and accel != "cpu",
                            "contiguous_gradients": True, "reduce_bucket_size": ds.reduce_bucket_size}
    if ds.zero_stage == 3:
        zero.update({"stage3_prefetch_bucket_size": ds.prefetch_bucket_size,
                     "stage3_param_persistence_threshold": ds.param_persistence_threshold,
                     "stage3_max_live_parameters": ds.max_live_parameters,
                     "stage3_module_granularity_threshold": ds.module_granularity_threshold,
                     "memory_efficient_linear": ds.memory_efficient_linear,
                     "stage3_gather_16bit_weights_on_model_save": False})
    for kind in ("optimizer", "param"):
        device = getattr(ds, f"offload_{kind}")
        if device != "none":
            zero[f"offload_{kind}"] = {"device": device, "pin_memory": accel != "cpu",
                                       **({"nvme_path": ds.nvme_path} if device == "nvme" else {})}
    out: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": cfg.data.micro_batch_size,
        "gradient_accumulation_steps": ds.gradient_accumulation_steps,
        # DeepSpeed's product (every rank a data-parallel one); with parallel.sequence S the distinct
        # questions per step are dims.global_batch = this / S
        "train_batch_size": dims.micro_batch_size * dims.grad_accum * dims.world_size,
        "gradient_clipping": o.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": ds.precision == "bf16"},
        "fp16": {"enabled": ds.precision == "fp16", "initial_scale_power": 16},
        "steps_per_print": 10**9,  # our own metrics log instead
        "wall_clock_breakdown": False,
        "zero_allow_untested_optimizer": True,  # torch SGD / AdamW as ZeRO client optimizers
    }
    if use_client_optimizer(o, ds.offload_optimizer, accel):
        out["zero_force_ds_cpu_optimizer"] = False
    else:
        out["optimizer"] = {"type": "AdamW", "params": {"lr": o.lr, "betas": list(o.betas), "eps": o.eps,
                                                        "weight_decay": o.weight_decay}}
    out.update(ds.extra)
    return out


def lr_factor(step: int, optim: OptimConfig, max_steps: int) -> float:
    """LR multiplier of optimizer step ``step`` (0-based): linear warmup, then cosine/constant.

    The cosine ends at ``optim.schedule_steps`` (default ``max_steps``) and stays at min_lr_ratio.

    Step 0 of a run without warmup uses the full LR (so a one-step exactness test sees lr).
    """
    w = optim.warmup_steps
    if step < w:
        return (step + 1) / w
    if optim.schedule == "constant":
        return 1.0
    horizon = optim.schedule_steps or max_steps
    progress = 1.0 if step >= horizon else (step - w) / max(1, horizon - w)
    return optim.min_lr_ratio + (1.0 - optim.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _full_ndim(p: torch.nn.Parameter) -> int:
    # Under ZeRO-3 a partitioned parameter is a flat shard; ds_shape is its real shape.
    return len(getattr(p, "ds_shape", p.shape))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters split into decayed (matrices) and not decayed (biases, norms, embeddings)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = _full_ndim(p) < 2 or "embed" in name or "norm" in name or name.endswith(".bias")
        (no_decay if skip else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_client_optimizer(model: torch.nn.Module, optim: OptimConfig) -> torch.optim.Optimizer:
    """The torch optimizer DeepSpeed wraps (fp32 master weights live in the ZeRO optimizer)."""
    groups = param_groups(model, optim.weight_decay)
    if not groups:
        raise ValueError("the model has no trainable parameters (everything frozen?)")
    if optim.name == "sgd":
        return torch.optim.SGD(groups, lr=optim.lr, momentum=optim.momentum)
    return torch.optim.AdamW(groups, lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps)


@contextlib.contextmanager
def model_init_context(ds_config: dict, enabled: bool) -> Iterator[Any]:
    """Build the model under ZeRO-3 partitioning (no rank ever holds the whole model).

    Yields the ``HfDeepSpeedConfig`` (keep it alive while from_pretrained runs: transformers
    checks a weak reference to it to load weights straight into the ZeRO-3 partitions).
    """
    stage3 = ds_config["zero_optimization"]["stage"] == 3
    if not (enabled and stage3):
        yield None
        return
    # zero.Init patches torch's tensor constructors; torch._dynamo checks their signatures when it
    # is first imported (transformers imports it lazily, e.g. with a vision model class), which
    # fails inside the context: import it before entering.
    hf_ds = HfDeepSpeedConfig(ds_config)
    with deepspeed.zero.Init(config_dict_or_path=ds_config):
        yield hf_ds


def set_leaf_modules(model: torch.nn.Module, class_names: list[str]) -> list[str]:
    """Mark modules of the named classes as ZeRO-3 leaves (their parameters are gathered together).

    Raises:
        ValueError: a name matches no module of the model (a typo must not pass silently).
    """
    classes = {type(m).__name__: type(m) for m in model.modules()}
    missing = [n for n in class_names if n not in classes]
    if missing:
        raise ValueError(f"deepspeed.leaf_modules: no module of class {missing} in the model "
                         f"(classes: {sorted(classes)[:20]} ...)")
    set_z3_leaf_modules(model, [classes[n] for n in class_names])
    return class_names


def build_engine(model: torch.nn.Module, cfg: TrainConfig, ds_config: dict) -> Any:
    """``deepspeed.initialize`` with our optimizer and schedule; returns the engine."""
    max_steps = cfg.run.max_steps
    sched = lambda opt: LambdaLR(opt, lambda s: lr_factor(s, cfg.optim, max_steps))  # noqa: E731
    if cfg.deepspeed.leaf_modules and cfg.deepspeed.zero_stage == 3:
        set_leaf_modules(model, cfg.deepspeed.leaf_modules)
    client = build_client_optimizer(model, cfg.optim) if "optimizer" not in ds_config else None
    params = None if client is not None else param_groups(model, cfg.optim.weight_decay)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=client, model_parameters=params,
                                           lr_scheduler=sched, config=ds_config)
    return engine


@dataclass
class StepStats:
    """What one optimizer step did, identical on every rank (all values are global)."""

    loss: float
    """alpha * mean_QA + beta * mean_reason over the global batch."""
    n_qa: int
    """QA target tokens in the global batch."""
    n_reason: int
    """Reasoning target tokens in the global batch."""
    tokens: int
    """Non-padding tokens in the global batch (input side)."""
    examples: int
    """Sequences in the global batch."""
    frames: int
    """Video frames in the global batch."""
    lr: float
    grad_norm: float | None
    compute_s: float
    """Seconds of forward + backward + step on this rank."""


def model_inputs(model: Any, mb: dict, weights: torch.Tensor, device: torch.device) -> dict:
    """Forward kwargs of one collated micro-batch (``VideoModel.model_inputs``; ``model`` may be the
    DeepSpeed engine around it)."""
    return getattr(model, "module", model).model_inputs(mb, weights, device)


def video_frames(batch: dict) -> int:
    """Frames the examples of a collated micro-batch see: clips of the examples with video (a packed
    batch's ``clip_index`` lists them; text-only examples have none) x frames a clip (each clip's own count
    under the frame budget: ``clip_frames``, the clips being zero-padded to the longest)."""
    pv = batch.get("pixel_values")
    if pv is None:
        return 0
    counts = batch.get("clip_frames")
    per_clip = counts.tolist() if counts is not None else [int(pv.shape[1])] * int(pv.shape[0])
    if batch.get("clip_index") is not None:  # packed: each example that uses a clip sees its frames
        return sum(per_clip[c] for c in batch["clip_index"].tolist())
    return sum(per_clip)


def optimizer_step(engine: Any, micro_batches: list[dict], task: TaskConfig, world_size: int,
                   device: torch.device, forward: Callable[..., dict] | None = None,
                   sequence_parallel: int = 1) -> StepStats:
    """One optimizer step over this rank's ``gradient_accumulation_steps`` micro-batches.

    The loss is ``alpha * mean_QA + beta * mean_reason`` where both means run over the whole
    GLOBAL batch: token counts are summed over all micro-batches and all-reduced over ranks
    BEFORE any forward, then every target token gets weight alpha/N_qa or beta/N_reason
    (``train.loss.token_weights``), and the model returns ``sum_i w_i * CE_i`` of its tokens.
    Summed over micro-batches and ranks this is exactly the global objective.

    DeepSpeed, however, divides each micro-batch loss by gradient_accumulation_steps inside
    ``engine.backward`` and AVERAGES gradients over the data-parallel ranks. Both scalings
    are undone by backpropagating ``loss * gas * world_size``: the resulting gradient is that of
    the global objective, the same as one process computing the whole batch at once.

    Sequence parallel (``parallel.sequence`` = S > 1, ``train.sequence_parallel``): the S ranks of a
    sequence group hold the same micro-batches, so every count summed over ranks is divided by S; each
    rank's loss is the share of its slice of the tokens, the sum over all ranks is still the global
    objective, and DeepSpeed still averages gradients over all ``world_size`` ranks (the same scale).

    Args:
        engine: the DeepSpeed engine.
        micro_batches: ``gas`` collated micro-batches (train.tasks.collate) of this rank.
        task: gives alpha and beta.
        world_size: all ranks (ZeRO-3 partitions and averages gradients over all of them).
        device: where the inputs go.
        forward: callable(**inputs) -> dict with "loss"; default: the engine itself.
        sequence_parallel: ranks per sequence group (1 = none).

    Returns:
        Global step statistics (the same on every rank).
    """
    gas = engine.gradient_accumulation_steps()
    if len(micro_batches) != gas:
        raise ValueError(f"got {len(micro_batches)} micro-batches for gradient_accumulation_steps={gas}")
    forward = forward or engine
    tokens_local = sum(int(mb["attention_mask"].sum()) for mb in micro_batches)
    # a packed micro-batch holds several sequences per row and each distinct clip once
    examples_local = sum(int(mb.get("n_examples", mb["input_ids"].shape[0])) for mb in micro_batches)
    frames_local = sum(video_frames(mb) for mb in micro_batches)
    n_qa, n_re = step_token_counts(micro_batches)  # global: every rank, every micro-batch
    sp = sequence_parallel  # each micro-batch is on sp ranks: count it once
    n_qa, n_re = n_qa / sp, n_re / sp
    scale = backward_scale(gas, world_size)
    lr = float(engine.get_lr()[0])  # the LR this step applies (the scheduler advances in engine.step)
    t0 = time.perf_counter()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)  # on device: one sync per step, not per micro
    for mb in micro_batches:
        w = token_weights(mb["task_ids"], n_qa, n_re, task.alpha, task.beta)
        out = forward(**model_inputs(engine, mb, w, device))
        loss = out["loss"]
        engine.backward(loss * scale)  # undo DeepSpeed's 1/gas and rank averaging, see docstring
        engine.step()  # applies the update only at the accumulation boundary
        loss_sum += loss.detach().to(torch.float64)
    compute_s = time.perf_counter() - t0
    loss_g, tokens, examples, frames = all_reduce_sum([float(loss_sum), tokens_local, examples_local, frames_local])
    tokens, examples, frames = tokens / sp, examples / sp, frames / sp  # the loss: every rank its own slice
    norm = engine.get_global_grad_norm()
    return StepStats(loss=loss_g, n_qa=int(n_qa), n_reason=int(n_re), tokens=int(tokens), examples=int(examples),
                     frames=int(frames), lr=lr,
                     grad_norm=None if norm is None else float(norm), compute_s=compute_s)
