"""The layout's promises: no import cycle, the leaf modules stay leaves, thin CLIs stay cheap."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ermgap_ray"
LEAVES = {"ermgap_ray.errors", "ermgap_ray.registry", "ermgap_ray.data.schema"}
RAY_FREE = ("objective", "metrics", "pareto", "compare", "results", "registry", "errors", "fs")


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, top_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return found


def _graph(top_level_only: bool) -> dict[str, set[str]]:
    modules = {_module(p): p for p in PACKAGE.rglob("*.py")}
    return {
        name: {m for m in _imports(path, top_level_only) if m in modules and m != name}
        for name, path in modules.items()
    }


def test_no_import_cycle_even_through_lazy_imports() -> None:
    graph = _graph(top_level_only=False)
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for dep in graph[node]:
            if state.get(dep) == 1:
                pytest.fail("import cycle: " + " -> ".join([*trail, node, dep]))
            if dep not in state:
                visit(dep, [*trail, node])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [])


def test_leaf_modules_import_nothing_of_ours() -> None:
    graph = _graph(top_level_only=False)
    for leaf in LEAVES:
        assert graph[leaf] <= {"ermgap_ray.errors"} - {leaf}, (leaf, graph[leaf])
    assert graph["ermgap_ray.fs"] <= {"ermgap_ray.errors"}


@pytest.mark.parametrize("name", RAY_FREE)
def test_maths_and_readers_import_neither_ray_nor_deepspeed(name: str) -> None:
    imported = _imports(PACKAGE / f"{name}.py", top_level_only=False)
    assert not {m for m in imported if m.split(".")[0] in ("ray", "deepspeed")}, imported


def test_sweep_help_imports_neither_torch_nor_ray() -> None:
    code = (
        "import runpy, sys; sys.argv = ['ablation.py', '--help']\n"
        "try:\n    runpy.run_path('sweeps/ablation.py', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "print(sorted(m for m in ('torch', 'ray', 'pandas', 'numpy') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=PACKAGE.parent,
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip().splitlines()[-1] == "[]"
