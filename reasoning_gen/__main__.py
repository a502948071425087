"""``python -m reasoning_gen COMMAND ...``: each command is ``main(argv)`` of one module."""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "generate": ("reasoning_gen.generate", "shards -> teacher (synthetic/openai/transformers/vllm) -> reasoning jsonl"),
    "refine": ("reasoning_gen.refine", "raw reasoning -> refined (answer sentences removed), teacher accuracy"),
    "merge": ("reasoning_gen.merge", "rank files -> one file per split, duplicates reported"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: python -m reasoning_gen {" + ",".join(COMMANDS) + "} ...\n")
        for name, (_, text) in COMMANDS.items():
            print(f"  {name:<9} {text}")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    module = importlib.import_module(COMMANDS[argv[0]][0])
    return module.main(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
