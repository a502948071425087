"""``python -m train``: train (default), ``export`` a checkpoint, ``bench`` throughput, or ``plan`` memory and time.

    python -m train --config configs/tiny_cpu.yaml [--resume latest] [--section.field=value ...]
    python -m train export --checkpoint RUN/checkpoints [--tag global_step100] --out EXPORT
    python -m train bench --config configs/tiny_cpu.yaml --steps 20     (= python -m train.bench)
    python -m train tokenizer --records R.jsonl [--reasoning F.jsonl] --config C.yaml --out DIR
    python -m train plan --config C.yaml --nodes 4 --gpus-per-node 8 --gpu h100 [--mfu 0.4]
    python -m train --help-config                                        (every field, with its doc)

Works under torchrun, the deepspeed launcher and SLURM srun (see docs/TRAINING.md). Config and
data errors, a run dir that holds another run and a refused resume are one line on stderr (exit 2),
printed before DeepSpeed starts; a run stopped by non-finite losses exits 3; a rank that cannot reach
MASTER_ADDR:MASTER_PORT within deepspeed.master_timeout_s (120 s) says where it looked and exits 4; a rank
whose peers are gone (a node lost) names the lost ranks and their hosts and exits 5; a preempted run
(SIGTERM / SIGUSR1) saves a checkpoint on every rank and exits 0.
"""

from __future__ import annotations

import argparse
import faulthandler
import logging
import os
import signal
import sys

from data_shards.common.cli import dispatch
from data_shards.common.distenv import exit_process, shutdown, world_info_from_env
from train.config import ConfigError, describe, load_config, split_overrides
from train.datastream import DataError
from train.dist import MasterUnreachable, is_comm_failure, lost_ranks_report
from train.loop import NonFiniteError, Trainer

COMMANDS = {
    "export": ("train.export", "consolidate a ZeRO-3 checkpoint into a from_pretrained-able folder"),
    "tokenizer": ("train.tokenizer", "train the BPE on records and reasoning files"),
    "bench": ("train.bench.cli", "throughput: ours vs a bare PyTorch loop, or padded vs packed"),
    "plan": ("train.plan", "per-GPU memory, FLOPs and step time of a recipe on N nodes x G GPUs (no GPU needed)"),
}
"""Commands besides training (``python -m train --config C`` trains)."""


class _StartupStop(BaseException):
    """SIGTERM / SIGUSR1 before the training loop (which handles them itself: save, then leave)."""


def _raise_startup_stop(signum: int, frame: object) -> None:
    raise _StartupStop(signal.Signals(signum).name)


def _stop_on_signals_during_startup() -> dict:
    previous = {}
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        try:
            previous[sig] = signal.signal(sig, _raise_startup_stop)
        except ValueError:  # not the main thread (an embedding application): no handler
            pass
    return previous


def _restore_signals(previous: dict) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def _train(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m train", description="Train the video LLM (DeepSpeed ZeRO-3).",
                                epilog="Any --section.field=value overrides that field of the config. Other commands: "
                                       + "; ".join(f"python -m train {n} ({t})" for n, (_, t) in COMMANDS.items()))
    p.add_argument("--config", help="YAML recipe (configs/*.yaml)")
    p.add_argument("--resume", default=None, help="'latest' or a checkpoint directory global_step{N}")
    p.add_argument("--help-config", action="store_true", help="list every config field with its doc")
    # the deepspeed launcher appends --local_rank=N (LOCAL_RANK is in the environment as well)
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    args, rest = p.parse_known_args(argv)
    if args.help_config:
        print("\n".join(describe()))
        return 0
    previous = _stop_on_signals_during_startup()
    try:
        if args.config is None:
            raise ConfigError("config: --config is required (e.g. --config configs/tiny_cpu.yaml)")
        cfg = load_config(args.config, split_overrides(rest))
        try:
            trainer = Trainer(cfg, resume=args.resume)
        except (DataError, FileNotFoundError) as e:
            raise ConfigError(str(e)) from None
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except MasterUnreachable as e:  # before any process group: this rank leaves alone, saying where it looked
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 4
    except _StartupStop as e:  # SLURM's warning before the loop: nothing trained yet, so nothing to save
        print(f"stopped by {e} during start-up, before the first step: nothing new to save; rerun the same "
              "command (with --resume latest) to continue", file=sys.stderr, flush=True)
        return 0
    finally:
        _restore_signals(previous)
    try:
        summary = trainer.train()
    except NonFiniteError as e:  # raised on every rank at the same step: leave together
        print(f"error: {e}", file=sys.stderr, flush=True)
        shutdown()
        return 3
    except Exception as e:
        if not is_comm_failure(e):
            raise
        # a peer is gone (a node lost, a rank killed): say which, and leave without touching the broken group
        latest = cfg.run_dir / "checkpoints" / "latest"
        last = latest.read_text().strip() if latest.is_file() else "none yet"
        report = lost_ranks_report(trainer.dims, trainer.ranks, e, trainer.heartbeat)
        print(f"error: rank {trainer.dims.rank}: {report}; the last complete checkpoint is {last}: start the job "
              "again on every node with --resume latest", file=sys.stderr, flush=True)
        return 5
    if trainer.is_main:
        loss = "-" if summary["loss"] is None else f"{summary['loss']:.4f}"  # None: nothing left to train
        how = f"preempted by {summary['preempted']}, resume with --resume latest; " if summary["preempted"] else ""
        print(f"trained {summary['step']} steps, final loss {loss}, {summary['tokens_per_s']:,.0f} tokens/s; "
              f"{how}run dir {cfg.run_dir}", flush=True)
    shutdown()
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not faulthandler.is_enabled():  # a rank killed by a signal shows every thread's stack first
        faulthandler.enable()
    # only rank 0 logs progress; the other ranks report warnings and errors
    level = os.environ.get("LOGLEVEL", "INFO") if world_info_from_env().rank == 0 else "WARNING"
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return dispatch("train", COMMANDS, argv, default=_train)


if __name__ == "__main__":
    exit_process(main())
