"""Dependencies between the package's modules run one way (issue 17, part 7): no import circle, counting the imports
inside functions too (a lazy import is still a dependency). `backends` -> `tensorrt_backend` / `torch_backend` ->
`backend_common`; `model` -> `baselines` -> `model_base`.
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "agegender_ros"


def import_graph() -> dict:
    """module name -> the package modules it imports anywhere in its source (static imports only)."""
    modules = {path.stem for path in PACKAGE.glob("*.py")}
    graph = {}
    for path in sorted(PACKAGE.glob("*.py")):
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                if node.level == 1 or node.module == "agegender_ros":
                    names = [node.module] if node.level == 1 and node.module else [a.name for a in node.names]
                elif node.module and node.module.startswith("agegender_ros."):
                    names = [node.module.split(".")[1]]
                else:
                    continue
                targets.update(name.split(".")[0] for name in names)
            elif isinstance(node, ast.Import):
                targets.update(a.name.split(".")[1] for a in node.names if a.name.startswith("agegender_ros."))
        graph[path.stem] = sorted(t for t in targets if t in modules and t != path.stem)
    return graph


def find_cycle(graph: dict):
    """One import circle as a list of modules (first == last), or None."""
    state: dict = {}

    def visit(module, path):
        state[module] = "open"
        for target in graph.get(module, ()):
            if state.get(target) == "open":
                return path[path.index(target):] + [target]
            if target not in state:
                cycle = visit(target, path + [target])
                if cycle:
                    return cycle
        state[module] = "done"
        return None

    for module in graph:
        if module not in state:
            cycle = visit(module, [module])
            if cycle:
                return cycle
    return None


def test_the_package_has_no_import_circle():
    graph = import_graph()
    assert "tensorrt_backend" in graph["backends"] and "backends" not in graph["tensorrt_backend"]
    assert "baselines" in graph["model"] and "model" not in graph["baselines"]
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_the_circle_finder_finds_one():
    assert find_cycle({"a": ["b"], "b": ["c"], "c": ["a"]}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": ["b"], "b": [], "c": ["a"]}) is None
