"""``python -m train --help-config``: every config field with its type, default and docstring."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap

from train.config.parse import _hints, _strip_optional, _type_name
from train.config.sections import TrainConfig


def field_docs(cls: type) -> dict[str, str]:
    """Field docstrings of a dataclass: the string literal under each field (or ""); a field
    redeclared in a subclass takes the subclass's docstring, an inherited one its base's."""
    docs: dict[str, str] = {}
    for base in reversed(cls.__mro__[1:]):
        if dataclasses.is_dataclass(base):
            docs.update(_own_docs(base))
    docs.update(_own_docs(cls))
    return docs


def _own_docs(cls: type) -> dict[str, str]:
    """The docstrings of the fields declared in ``cls``'s own body."""
    docs: dict[str, str] = {}
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return docs
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    for prev, node in zip(body, body[1:]):
        if (isinstance(prev, ast.AnnAssign) and isinstance(prev.target, ast.Name) and isinstance(node, ast.Expr)
                and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)):
            docs[prev.target.id] = " ".join(node.value.value.split())
    return docs


def describe(cls: type = TrainConfig, prefix: str = "") -> list[str]:
    """One line per field: ``section.field: type = default  # doc`` (for --help-config)."""
    lines = []
    hints, docs = _hints(cls), field_docs(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        tp = _strip_optional(hints[f.name])
        if dataclasses.is_dataclass(tp) and isinstance(tp, type):
            lines.append(f"[{key}] {docs.get(f.name, '')}")
            lines += describe(tp, key + ".")
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else "required")
        lines.append(f"  {key}: {_type_name(hints[f.name])} = {default!r}  # {docs.get(f.name, '')}")
    return lines
