"""The import graph of the project (tests excluded) points down only: no cycle, no upward edge.

Layers, lowest first: utils (files, logs, device and precision, distributed helpers) -> data,
models, losses -> config -> engine -> tools -> entry points. data and models know nothing of
each other; losses may use models' helpers. Imports inside functions are refused, so a layer
violation cannot hide in one.
"""
from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers import ROOT

# Modules run as commands: they may import anything below them. A package's __main__ (`python -m data.check`)
# is one too wherever it sits: nothing can import it, so it is the top of the graph, as a top-level script is.
ENTRY_POINTS = {"vocab", "train", "evaluate", "retrieve", "visualize"}
LAYERS = {"utils": 0, "data": 1, "models": 1, "losses": 2, "config": 3, "engine": 4, "tools": 5, "experiments": 6}
ENTRY_LAYER = 7
# same-layer packages that may import one another, in this direction only
ALLOWED_SIDEWAYS: set[tuple[str, str]] = set()


def project_modules() -> dict[str, Path]:
    modules = {}
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in (".venv", "tests", "demo", "runs") or rel.parts[0].startswith("."):
            continue
        name = ".".join(rel.with_suffix("").parts)
        modules[name.removesuffix(".__init__")] = path
    return modules


def layer_of(module: str) -> int:
    if module in ENTRY_POINTS or module.startswith("benchmarks.") or module.endswith(".__main__"):
        return ENTRY_LAYER
    top = module.split(".")[0]
    if top not in LAYERS:
        return ENTRY_LAYER  # a top-level script
    return LAYERS[top]


def imports_of(module: str, path: Path, known: set[str]) -> tuple[set[str], list[str]]:
    """(project modules imported at module level, imports found inside functions)."""
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found, local = set(), []

    def resolve(node) -> list[str]:
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            base = node.module or ""
            if node.level:
                parent = package.split(".")[:len(package.split(".")) - node.level + 1] if package else []
                base = ".".join([*parent, *([base] if base else [])])
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        out = []
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name:
                out.append(name)
        return out

    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for inner in ast.walk(node):
                if isinstance(inner, (ast.Import, ast.ImportFrom)) and resolve(inner):
                    local.append(f"{module}:{inner.lineno} {ast.unparse(inner)}")
    for node in tree.body if not isinstance(tree, list) else tree:
        for inner in ast.walk(node):
            if isinstance(inner, (ast.FunctionDef, ast.AsyncFunctionDef)):
                break
            if isinstance(inner, (ast.Import, ast.ImportFrom)):
                found.update(resolve(inner))
    found.discard(module)
    return found, local


def graph() -> tuple[dict[str, set[str]], list[str]]:
    modules = project_modules()
    edges, local = {}, []
    for name, path in modules.items():
        edges[name], found_local = imports_of(name, path, set(modules))
        local += found_local
    return edges, local


def test_no_import_inside_a_function():
    _, local = graph()
    assert not local, "imports of project modules inside functions:\n" + "\n".join(local)


def test_every_import_points_down():
    edges, _ = graph()
    upward = []
    for source, targets in edges.items():
        for target in targets:
            a, b = layer_of(source), layer_of(target)
            same_package = source.split(".")[0] == target.split(".")[0]
            packages = (source.split(".")[0], target.split(".")[0])
            sideways = a == b and not same_package and packages not in ALLOWED_SIDEWAYS
            if b > a or (sideways and a != ENTRY_LAYER):
                upward.append(f"{source} (layer {a}) -> {target} (layer {b})")
    assert not upward, "imports that do not point down:\n" + "\n".join(sorted(upward))


def test_no_import_cycle():
    edges, _ = graph()
    # package __init__ modules re-export their children: an edge parent -> child is not a cycle
    state, stack, cycles = {}, [], []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in edges.get(node, ()):
            if nxt.startswith(node + "."):
                continue
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_graph_is_read():
    """Guard against a test that passes because it sees nothing."""
    edges, _ = graph()
    assert {"engine.trainer", "models.build", "data.fashioniq", "config"} <= set(edges)
    assert "engine.evaluation" in edges["engine.trainer"] and "models" in edges["engine.trainer"]
    assert layer_of("engine.trainer") > layer_of("config") > layer_of("models.build") > layer_of("utils.io")
    # the dataset tools: the work in the data layer, the command line above it (issue 26)
    assert layer_of("data.check") == layer_of("data.prepare") == layer_of("data.formats")
    assert "config" not in edges["data.check"] and "config" not in edges["data.prepare"]
    assert "tools.data_commands" in edges["data.check.__main__"]
