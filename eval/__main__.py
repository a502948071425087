"""``python -m eval COMMAND ...``: each command is ``main(argv)`` of one module, imported lazily."""

from __future__ import annotations

import sys

from data_shards.common.cli import dispatch

COMMANDS = {
    "score": ("eval.score", "accuracy of predictions, overall and per official question group"),
    "run": ("eval.run", "run a checkpoint on a split and write predictions (+ probes)"),
    "report": ("eval.report", "markdown + plots + json report from scored runs"),
    "demo": ("eval.demo", "the whole method end to end on the synthetic dataset (CPU)"),
}


def main(argv: list[str] | None = None) -> int:
    return dispatch("eval", COMMANDS, argv)


if __name__ == "__main__":
    from data_shards.common.distenv import exit_process  # `eval run` under torchrun: see its doc

    exit_process(main())
