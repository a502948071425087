"""``python -m reasoning_gen COMMAND ...``: each command is ``main(argv)`` of one module."""

from __future__ import annotations

import sys

from data_shards.common.cli import dispatch

COMMANDS = {
    "generate": ("reasoning_gen.generate", "shards -> teacher (synthetic/openai/transformers/vllm) -> reasoning jsonl"),
    "refine": ("reasoning_gen.refine", "raw reasoning -> refined (answer sentences removed), teacher accuracy"),
    "merge": ("reasoning_gen.merge", "rank files -> one file per split, duplicates reported"),
}


def main(argv: list[str] | None = None) -> int:
    return dispatch("reasoning_gen", COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
