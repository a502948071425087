"""``python -m eval COMMAND ...``: each command is ``main(argv)`` of one module, imported lazily."""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "score": ("eval.score", "accuracy of predictions, overall and per official question group"),
    "run": ("eval.run", "run a checkpoint on a split and write predictions (+ probes)"),
    "report": ("eval.report", "markdown + plots + json report from scored runs"),
    "demo": ("eval.demo", "the whole method end to end on the synthetic dataset (CPU)"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: python -m eval {" + ",".join(COMMANDS) + "} ...\n")
        for name, (_, text) in COMMANDS.items():
            print(f"  {name:<8} {text}")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    name = COMMANDS[argv[0]][0]
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name != name:  # a dependency missing inside the module: show the real error
            raise
        print(f"python -m eval {argv[0]}: not available in this checkout (module {name} is missing)",
              file=sys.stderr)
        return 2
    return module.main(argv[1:]) or 0


if __name__ == "__main__":
    from data_shards.distenv import exit_process  # `eval run` under torchrun: see its doc

    exit_process(main())
