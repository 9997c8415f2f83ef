"""The walls of the house, read from the source: parts import only downward, and nothing in a cycle.

Every ``import`` of a ragcun module counts, also those inside functions (a lazy import is still a dependency).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "ragcun"


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        name = ".".join(path.relative_to(ROOT.parent).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def _graph(root: bool = False) -> dict[str, set[str]]:
    """``{module: the ragcun modules it imports}``; the package root's own imports only with ``root``: it is the
    public face, lazy re-exports of everything, imported by nothing below it, so it is left out of the layering
    and cycle checks; only the check that the library never imports the CLI reads it."""
    modules = _modules()

    def resolve(target: str) -> str | None:
        parts = target.split(".")
        for i in range(len(parts), 0, -1):
            if ".".join(parts[:i]) in modules:
                return ".".join(parts[:i])
        return None

    edges: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        if name == "ragcun" and not root:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "ragcun":
                if node.module == "ragcun":  # `from ragcun import __version__, hookimpl` (defined there)
                    continue
                targets = [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.split(".")[0] == "ragcun"]
            for target in targets:
                found = resolve(target)
                if found and found != name:
                    edges[name].add(found)
    return edges


def _imports_between(edges, source: str, target: str) -> list[tuple[str, str]]:
    return sorted((a, b) for a, bs in edges.items() for b in bs
                  if (a == source or a.startswith(source + ".")) and (b == target or b.startswith(target + ".")))


def test_the_graph_sees_the_lazy_imports():
    edges = _graph()
    assert "ragcun.training.loop" in edges and "ragcun.training.checkpoint" in edges["ragcun.training.loop"]
    assert "ragcun.encoding" in edges["ragcun.model"]  # imported inside encode_embeddings


def test_data_knows_no_model_training_or_evaluation():
    edges = _graph()
    for target in ("ragcun.model", "ragcun.evaluation", "ragcun.training", "ragcun.encoding", "ragcun.cli"):
        assert _imports_between(edges, "ragcun.data", target) == []


def test_training_never_imports_evaluation_or_the_isotropy_report():
    """Periodic evaluation and diagnostics reach the loop as callbacks (ragcun.evaluation.training_callbacks)."""
    edges = _graph()
    for target in ("ragcun.evaluation", "ragcun.diagnostics", "ragcun.workflows", "ragcun.ablation"):
        assert _imports_between(edges, "ragcun.training", target) == []


def _library_imports_of_the_cli(edges) -> list[tuple[str, str]]:
    return [(a, b) for a, b in _imports_between(edges, "ragcun", "ragcun.cli")
            if not a.startswith("ragcun.cli")
            and a not in ("ragcun.__main__", "ragcun.default_plugins.commands")]  # the CLI's entry and hook


def test_the_library_never_imports_the_command_line():
    """Not even the package root (``import ragcun`` is the library; ``ragcun.export`` renders the training command
    with ragcun.training.command_line)."""
    edges = _graph(root=True)
    assert "ragcun.exporters" in edges["ragcun"]  # the root's lazy imports are read
    assert _library_imports_of_the_cli(edges) == []


def test_the_cli_check_would_see_the_package_root_import_it(tmp_path, monkeypatch):
    import shutil

    copy = tmp_path / "ragcun"
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns("__pycache__"))
    init = copy / "__init__.py"
    init.write_text(init.read_text(encoding="utf-8") + "\n\ndef _f():\n    from ragcun.cli.options import echo_json\n",
                    encoding="utf-8")
    monkeypatch.setitem(globals(), "ROOT", copy)  # _modules() reads the copy
    assert _library_imports_of_the_cli(_graph(root=True)) == [("ragcun", "ragcun.cli.options")]


def test_losses_build_no_components_through_the_registry():
    edges = _graph()
    assert [(a, b) for a, b in _imports_between(edges, "ragcun.losses", "ragcun.components")
            if a != "ragcun.losses.composite"] == []  # the composite *is* the loss builder


def test_no_import_cycles():
    edges = _graph()
    index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in list(_modules()):
        if module not in index:
            visit(module)
    assert cycles == []


# A function that no longer fits on a screen does several jobs; split it. (Issue 26 measured 150 lines at the
# worst; every function is under this bound since.)
LONGEST_FUNCTION = 80


def _long_functions(root: Path, limit: int) -> list[str]:
    out = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > limit:
                    out.append(f"{path.relative_to(root.parent)}:{node.lineno} {node.name} ({lines} lines)")
    return out


def test_no_function_is_longer_than_a_screen():
    assert _long_functions(ROOT, LONGEST_FUNCTION) == []


def test_the_length_check_sees_a_long_function(tmp_path):
    body = "".join(f"    x{i} = {i}\n" for i in range(LONGEST_FUNCTION))
    (tmp_path / "long.py").write_text(f"def f():\n{body}\n\ndef short():\n    return 1\n")
    assert _long_functions(tmp_path, LONGEST_FUNCTION) == [f"{tmp_path.name}/long.py:1 f (81 lines)"]
