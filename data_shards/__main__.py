"""``python -m data_shards COMMAND ...``: each command is ``main(argv)`` of one module."""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "convert": ("data_shards.convert", "public annotations -> records.jsonl"),
    "synth": ("data_shards.synth", "make the synthetic temporal VideoQA dataset (mp4 + records)"),
    "write": ("data_shards.writer", "records + videos -> WebDataset tar shards + sizes.json"),
    "inspect": ("data_shards.inspect_shards", "count videos, questions, types and bytes in shards"),
    "load": ("data_shards.loader", "stream shards through the loader and print samples"),
    "bench": ("data_shards.bench", "loader throughput vs PyAV sequential decoding"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: python -m data_shards {" + ",".join(COMMANDS) + "} ...\n")
        for name, (_, text) in COMMANDS.items():
            print(f"  {name:<8} {text}")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    module = importlib.import_module(COMMANDS[argv[0]][0])
    return module.main(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
