"""data_shards imports run one way: each sub-package imports only the layers below it (imports inside
functions count too), and nothing in data_shards imports train, eval or reasoning_gen."""

from __future__ import annotations

import ast
from pathlib import Path

import data_shards

ROOT = Path(data_shards.__file__).parent
BELOW = {
    "common": set(),
    "schema": {"common"},
    "reasoning_records": {"common"},
    "ingest": {"common", "schema", "reasoning_records"},
    "synth": {"common", "schema", "reasoning_records", "ingest"},
    "stream": {"common", "schema", "reasoning_records"},
    "bench": {"common", "schema", "reasoning_records", "ingest", "synth", "stream"},
    "__init__": {"schema"},
    "__main__": {"common"},
}
"""Layer -> the layers it may import besides itself."""
FORBIDDEN = ("train", "eval", "reasoning_gen")


def _imports(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}:{node.lineno}: relative import"
            out += [(node.lineno, node.module or "")] + [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return out


def test_every_module_imports_only_the_layers_below_it():
    bad: set[str] = set()
    for path in sorted(ROOT.rglob("*.py")):
        layer = path.relative_to(ROOT).with_suffix("").parts[0]
        assert layer in BELOW, f"{path}: a new layer; give it its place in BELOW"
        for line, name in _imports(path):
            top, _, rest = name.partition(".")
            if top in FORBIDDEN:
                bad.add(f"{path.relative_to(ROOT.parent)}:{line}: imports {top}")
            if top != "data_shards" or not rest:
                continue
            target = rest.split(".")[0]
            if target != layer and target in BELOW and target not in BELOW[layer]:
                bad.add(f"{path.relative_to(ROOT.parent)}:{line}: {layer} imports data_shards.{target}")
    assert not bad, "\n".join(sorted(bad))
