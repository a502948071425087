"""``python -m eval COMMAND ...``: each command is ``main(argv)`` of one module, imported lazily."""

from __future__ import annotations

from data_shards.common.cli import dispatch
from data_shards.common.distenv import exit_process

COMMANDS = {
    "score": ("eval.score", "accuracy of predictions, overall and per official question group"),
    "run": ("eval.run", "run a checkpoint on a split and write predictions (+ probes)"),
    "report": ("eval.report", "markdown + plots + json report from scored runs"),
    "demo": ("eval.study.demo", "the whole method end to end on the synthetic dataset (CPU)"),
}


def main(argv: list[str] | None = None) -> int:
    return dispatch("eval", COMMANDS, argv)


if __name__ == "__main__":
    exit_process(main())  # `eval run` under torchrun: see its doc
