"""The package's import graph has no cycle: every ``import`` of every module of trpo_lab,
analysis and the launcher plugins, at module level and inside functions alike (a function-local
import does not make a cycle go away, it only hides it), read from the source."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("trpo_lab", "analysis", "hydra_plugins/trpo_lab_launchers")


def modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports (``from a import b``: a.b if that is a
    module, else a; names outside the project are dropped)."""
    mods = modules()

    def owner(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join([*parts, *([node.module] if node.module else [])])
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base
                           for a in node.names]
            deps |= {m for m in map(owner, targets) if m is not None}
        deps.discard(name)
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_reads_function_local_and_relative_imports():
    graph = import_graph()
    assert "trpo_lab.jobs" in graph["trpo_lab.app"]
    assert "trpo_lab.jobs" in graph["trpo_lab.launcher"]  # inside a function
    assert "trpo_lab.envs.tabular" in graph["trpo_lab.envs"]
    assert len(graph) > 40


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_the_job_api_and_analysis_do_not_import_the_cli():
    graph = import_graph()
    for module in ("trpo_lab.jobs", "trpo_lab.launcher", "analysis.load",
                   "hydra_plugins.trpo_lab_launchers.batched_launcher"):
        assert "trpo_lab.app" not in graph[module], module
