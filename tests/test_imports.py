"""No import cycles in prefpred: a graph of every import statement between prefpred's modules (read with ast,
module-level and function-level alike, ``if TYPE_CHECKING:`` blocks left out) has no cycle; each inference module
imports on its own in a fresh interpreter."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "prefpred"

KNOWN_CYCLES: list[set[str]] = [
    # Delete an entry when its cycle is gone: test_known_cycles_are_still_there turns red to say so.
]


def module_names(root: Path = PACKAGE) -> dict[str, Path]:
    """``{dotted module name: file}`` of every module under ``root`` (a package's name is its ``__init__``)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST):
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The prefpred modules that ``name`` imports anywhere in its file.

    ``from pkg import x`` is an edge to ``pkg.x`` when that is a module, else to ``pkg``; the implicit import of
    a module's parent packages is not an edge (every submodule has it, and it is not a design dependency).
    """
    is_pkg = path.name == "__init__.py"
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    found = set()
    for node in _import_nodes(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            if node.level:
                keep = len(base) - (node.level - 1)
                prefix = ".".join(base[:keep] + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            targets = [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in modules else prefix for a in node.names]
        for t in targets:
            while t and t not in modules:  # `import prefpred.a.b` with b not a module: the deepest module
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = module_names()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[set[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                comp = set()
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    comp.add(m)
                    if m == node:
                        break
                if len(comp) > 1:
                    out.append(comp)
    return out


def _path_through(graph: dict[str, set[str]], comp: set[str]) -> str:
    """One cycle inside a strongly connected component, as ``a -> b -> a`` (for the failure message)."""
    start = min(comp)
    prev = {start: None}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for nxt in sorted(graph[node] & comp):
            if nxt == start:
                chain = [node]
                while prev[chain[-1]] is not None:
                    chain.append(prev[chain[-1]])
                return " -> ".join([*reversed(chain), start])
            if nxt not in prev:
                prev[nxt] = node
                queue.append(nxt)
    return ", ".join(sorted(comp))  # pragma: no cover - a component always holds a cycle


def test_the_cycle_finder_finds_cycles_and_only_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]
    assert cycles({"a": {"b"}, "b": set(), "c": {"b"}}) == []
    graph = {"a": {"b"}, "b": {"a", "c"}, "c": {"d"}, "d": {"c"}}
    assert sorted(map(sorted, cycles(graph))) == [["a", "b"], ["c", "d"]]
    assert _path_through(graph, {"a", "b"}) == "a -> b -> a"


def test_the_graph_reads_every_kind_of_import(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "from pkg.sub import leaf\n",
        "top.py": ("from typing import TYPE_CHECKING\nimport pkg.sub.leaf\nif TYPE_CHECKING:\n    import pkg.other\n"
                   "def f():\n    from . import other\n    from .sub.leaf import thing\n"),
        "other.py": "import os\n",
        "sub/__init__.py": "from .leaf import thing\nfrom .. import top\n",
        "sub/leaf.py": "thing = 1\n",
    }
    for rel, text in files.items():
        (pkg / rel).write_text(text)
    modules = module_names(pkg)
    assert set(modules) == {"pkg", "pkg.top", "pkg.other", "pkg.sub", "pkg.sub.leaf"}
    assert imports_of("pkg.top", modules["pkg.top"], modules) == {"pkg.sub.leaf", "pkg.other"}
    assert imports_of("pkg.sub", modules["pkg.sub"], modules) == {"pkg.sub.leaf", "pkg.top"}
    assert imports_of("pkg", modules["pkg"], modules) == {"pkg.sub.leaf"}


def test_no_import_cycle_in_prefpred():
    graph = import_graph()
    assert "prefpred.inference.dispatch" in graph and "prefpred.cli" in graph
    found = [c for c in cycles(graph) if c not in KNOWN_CYCLES]
    assert not found, "import cycles:\n" + "\n".join(_path_through(graph, c) for c in found)


def test_known_cycles_are_still_there():
    found = cycles(import_graph())
    gone = [c for c in KNOWN_CYCLES if c not in found]
    assert not gone, f"these cycles are gone: remove them from KNOWN_CYCLES: {gone}"


def test_inference_back_ends_never_import_the_dispatcher():
    graph = import_graph()
    for backend in ("engine", "parallel", "vllm_engine", "batching", "common", "config"):
        deps = graph[f"prefpred.inference.{backend}"]
        assert "prefpred.inference.dispatch" not in deps and "prefpred.inference" not in deps, (backend, deps)
    assert {"prefpred.inference.engine", "prefpred.inference.parallel", "prefpred.inference.vllm_engine"} <= \
        graph["prefpred.inference.dispatch"]
    assert graph["prefpred.inference.common"] <= {"prefpred.types"}


@pytest.mark.parametrize("module", sorted(m for m in module_names() if m.startswith("prefpred.inference")))
def test_each_inference_module_imports_alone(module):
    code = f"import {module}, sys; assert 'torch' not in sys.modules, 'torch imported at import time'"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_report_package_imports_no_job():
    graph = import_graph()
    jobs = {"prefpred.pipeline", "prefpred.experiment", "prefpred.training.job", "prefpred.jobs"}
    assert any(m.startswith("prefpred.report.") for m in graph)  # the graph is real
    for module, targets in graph.items():
        if module.startswith("prefpred.report"):
            assert not targets & jobs, module
