"""The ``python -m PACKAGE COMMAND ...`` dispatcher every package's ``__main__`` uses.

Each command is ``main(argv)`` of one module, imported only when it is asked for, so that
``python -m data_shards --help`` does not import torch and a missing optional dependency of one
command does not break the others.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable


def dispatch(prog: str, commands: dict[str, tuple[str, str]], argv: list[str] | None = None,
             default: Callable[[list[str]], int] | None = None) -> int:
    """Run the command named by ``argv[0]``.

    Args:
        prog: the package name shown in the usage line (``python -m {prog}``).
        commands: name -> (module with a ``main(argv)``, one-line description).
        argv: the arguments (None = ``sys.argv[1:]``).
        default: called with the whole ``argv`` when ``argv[0]`` is no command (e.g. the trainer's
            ``python -m train --config C``); None = print the usage and return 2.

    Returns:
        The command's exit status (0 when it returns None).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in commands:
        name = commands[argv[0]][0]
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:  # a dependency missing inside the module: show the real error
                raise
            print(f"python -m {prog} {argv[0]}: not available in this checkout (module {name} is missing)",
                  file=sys.stderr)
            return 2
        return module.main(argv[1:]) or 0
    if default is not None:
        return default(argv)
    print(usage(prog, commands))
    return 0 if argv and argv[0] in ("-h", "--help") else 2


def usage(prog: str, commands: dict[str, tuple[str, str]]) -> str:
    """The usage text: one line per command."""
    width = max((len(n) for n in commands), default=0)
    lines = [f"usage: python -m {prog} {{{','.join(commands)}}} ...", ""]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in commands.items()]
    return "\n".join(lines)
