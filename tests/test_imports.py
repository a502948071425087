"""The house rules of imports: no circles among the project's modules (imports inside functions
count), packages import only downward, and a config loads without model code."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("data_shards", "reasoning_gen", "vqa_kernels", "train", "eval")
# which project packages each package may import (DESIGN.md "Packages")
ALLOWED = {
    "vqa_kernels": set(),
    "data_shards": set(),
    "reasoning_gen": {"data_shards"},
    "train": {"data_shards", "vqa_kernels"},
    "eval": {"data_shards", "reasoning_gen", "train"},
}


def project_modules(root: Path = ROOT) -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for path in (root / pkg).rglob("*.py"):
            name = ".".join(path.relative_to(root).with_suffix("").parts)
            mods[name.removesuffix(".__init__")] = path
    return mods


def import_graph(mods: dict[str, Path]) -> dict[str, dict[str, int]]:
    """module -> {imported project module: line}, every import statement (inside functions too)."""

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, dict[str, int]] = {}
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        edges: dict[str, int] = {}
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for target in targets:
                got = resolve(target)
                # a package's __init__ re-exporting its own submodules is not a circle between files
                if got and got != mod and not (path.name == "__init__.py" and got.startswith(mod + ".")):
                    edges.setdefault(got, node.lineno)
        graph[mod] = edges
    return graph


def circles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(graph[start]))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(graph[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    out.append(sorted(group))
    return out


def test_no_import_circles():
    found = circles(import_graph(project_modules()))
    assert not found, "import circles (imports inside functions count):\n" + "\n".join(" <-> ".join(c) for c in found)


def test_the_circle_check_finds_a_circle(tmp_path):
    """The check itself works: two modules importing each other, one of them inside a function."""
    pkg = tmp_path / "train"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from train.b import g\n")
    (pkg / "b.py").write_text("def g():\n    from train import a\n    return a\n")
    assert circles(import_graph({"train": pkg / "__init__.py", "train.a": pkg / "a.py", "train.b": pkg / "b.py"})) \
        == [["train.a", "train.b"]]


def test_packages_import_only_downward():
    bad = []
    for mod, edges in import_graph(project_modules()).items():
        pkg = mod.split(".")[0]
        for target, line in edges.items():
            other = target.split(".")[0]
            if other != pkg and other not in ALLOWED[pkg]:
                bad.append(f"{mod}:{line} imports {target}")
    assert not bad, "\n".join(bad)


def test_eval_imports_one_loading_function_of_train():
    uses = set()
    for mod, path in project_modules().items():
        if not mod.startswith("eval."):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("train"):
                uses |= {f"{node.module}.{a.name}" for a in node.names}
            elif isinstance(node, ast.Import):
                uses |= {a.name for a in node.names if a.name.startswith("train")}
    assert uses <= {"train.export.load_for_eval"}, sorted(uses)


def test_loading_a_config_imports_no_model_code():
    code = ("import sys; from train.config import load_config; load_config('configs/tiny_cpu.yaml'); "
            "bad = [m for m in sys.modules if m.startswith(('train.models', 'kernels', 'peft', 'deepspeed', "
            "'train.loss', 'train.tasks'))]; print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
