"""The package's import graph: no circle, the pipeline never reaches into serving, and data
flows one way (data -> splits -> prompts -> train -> generate -> retrieve -> evaluate -> serve).

Every import counts, also one inside a function or under ``if TYPE_CHECKING``: a lazy import
still makes a module depend on another, and is how the circles this test guards against hid.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

STAGES = ("data", "splits", "prompts", "train", "generate", "retrieve", "evaluate", "serve")
"""The stages in data-flow order: a stage imports only from itself and the stages to its left."""
PLACED = {"models": "train", "baselines": "evaluate", "hybrid": "evaluate", "compare": "evaluate"}
"""Modules that are not a stage of their own, and the stage they sit with: the LM loader with
training (generation loads what training made); the ID-based baselines (ranked with the
retrievers' top-k, early-stopped on evaluation's metrics), the hybrid and run comparisons with
evaluation."""
FOUNDATION = {"config", "errors", "io", "progress", "fingerprint", "weights"}
"""Below every stage: they import only each other."""
FREE = {"glossrec", "cli", "pipeline", "rundir"}
"""The package's front door (its public names, loaded on first use), wiring (the CLI, the
pipeline), which may import any stage, and the run directory: every
module may use its layout, and its live-catalog helpers load the catalog when called. All three
are held to the circle test."""


def _modules() -> dict[str, Path]:
    mods = {}
    for path in (SRC / "glossrec").rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


def _owner(name: str, mods: dict[str, Path]) -> str | None:
    """The module a dotted import name refers to (a package's __init__ for its attributes)."""
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, set[str]]:
    """glossrec module -> the glossrec modules it imports (anywhere in its body)."""
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        deps: set[str | None] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                deps |= {_owner(a.name, mods) for a in node.names if a.name.startswith("glossrec")}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                if not base.startswith("glossrec"):
                    continue
                for a in node.names:  # `from pkg import submodule` depends on the submodule
                    if base == "glossrec" and a.name == "__version__":
                        continue  # a constant of the package, not its front door
                    full = f"{base}.{a.name}"
                    deps.add(full if full in mods else _owner(base, mods))
        deps.discard(None)
        deps.discard(mod)
        graph[mod] = deps  # type: ignore[assignment]
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _top(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _rank(mod: str) -> int | None:
    top = _top(mod)
    top = PLACED.get(top, top)
    return STAGES.index(top) if top in STAGES else None


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_the_graph_sees_every_module(graph: dict[str, set[str]]) -> None:
    assert "glossrec.generate.hf" in graph and "glossrec.generate.base" in graph["glossrec.generate.hf"]
    tops = {_top(m) for m in graph}
    assert tops <= set(STAGES) | set(PLACED) | FOUNDATION | FREE, tops - set(STAGES) - set(PLACED)


def test_no_import_circle(graph: dict[str, set[str]]) -> None:
    assert cycles(graph) == []


def test_the_circle_test_finds_a_circle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_pipeline_imports_nothing_from_serve(graph: dict[str, set[str]]) -> None:
    assert not [m for m in graph["glossrec.pipeline"] if _top(m) == "serve"]


def test_no_stage_imports_a_stage_to_its_right(graph: dict[str, set[str]]) -> None:
    wrong = []
    for mod, deps in graph.items():
        rank = _rank(mod)
        for dep in sorted(deps):
            if _top(mod) in FOUNDATION:
                if _top(dep) not in FOUNDATION:
                    wrong.append(f"{mod} -> {dep} (below the stages)")
            elif _top(dep) in FOUNDATION or _top(dep) == "rundir":
                continue  # any module may use these (rundir: the run directory's layout)
            elif rank is not None and (_top(dep) in FREE or (_rank(dep) or 0) > rank):
                wrong.append(f"{mod} -> {dep}")
    assert wrong == []
