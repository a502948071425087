"""``python -m data_shards COMMAND ...``: each command is ``main(argv)`` of one module."""

from __future__ import annotations

import sys

from data_shards.common.cli import dispatch

COMMANDS = {
    "convert": ("data_shards.ingest.convert", "public annotations -> records.jsonl"),
    "synth": ("data_shards.synth.make", "make the synthetic temporal VideoQA dataset (mp4 + records)"),
    "write": ("data_shards.ingest.writer", "records + videos -> WebDataset tar shards + sizes.json"),
    "inspect": ("data_shards.ingest.inspect_shards", "count videos, questions, types and bytes in shards"),
    "load": ("data_shards.stream.loader", "stream shards through the loader and print samples"),
    "bench": ("data_shards.bench.loader_bench", "loader throughput vs PyAV sequential decoding"),
}


def main(argv: list[str] | None = None) -> int:
    return dispatch("data_shards", COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
