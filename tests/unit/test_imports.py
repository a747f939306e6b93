"""The import graph of `dream_job/` has no cycles, and the laptop entry points import no torch.

The graph is read from the source with `ast`, function-level imports included (a cycle closed by a
lazy import still ties two modules together); imports under `if TYPE_CHECKING:` are left out, as
they never run. An edge goes to the module a statement loads: `from pkg import name` points at
`pkg.name` when that is a module, else at `pkg`; a package's `__init__` is not implied by importing
one of its submodules (Python runs it first, so no cycle can close through it).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "dream_job"


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _runtime_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    found: list[ast.Import | ast.ImportFrom] = []

    def walk(children: list[ast.AST]) -> None:
        for child in children:
            if isinstance(child, ast.If) and _is_type_checking(child):
                walk(list(child.orelse))
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.append(child)
            walk(list(ast.iter_child_nodes(child)))

    walk([tree])
    return found


def imports_of(source: str, name: str, modules: set[str], *, is_package: bool = False) -> set[str]:
    """Return the modules of `modules` that the source of module `name` imports at run time."""
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in _runtime_imports(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                anchor = parts[: len(parts) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        found |= {target for target in targets if target in modules and target != name}
    return found


def import_graph() -> dict[str, set[str]]:
    """Map each `dream_job` module to the `dream_job` modules it imports (at any level)."""
    modules = _modules()
    return {name: imports_of(path.read_text(encoding="utf-8"), name, set(modules), is_package=path.name == "__init__.py")
            for name, path in modules.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Return each strongly connected group of more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(groups)


def test_find_cycles_reports_a_two_module_cycle_and_nothing_else() -> None:
    graph = {"a": {"b"}, "b": {"a", "c"}, "c": set(), "d": {"c"}}
    assert find_cycles(graph) == [["a", "b"]]


def test_imports_of_counts_function_level_and_relative_imports_but_not_type_checking() -> None:
    modules = {"p", "p.a", "p.b", "p.c", "p.d", "p.e", "p.sub", "p.sub.f"}
    source = (
        "from typing import TYPE_CHECKING\n"
        "import os\n"
        "from p import b\n"
        "from .sub import f, helper\n"
        "if TYPE_CHECKING:\n"
        "    from p import c\n"
        "else:\n"
        "    import p.e\n"
        "def g():\n"
        "    import json.decoder\n"
        "    from . import d\n"
    )
    assert imports_of(source, "p.a", modules) == {"p.b", "p.sub.f", "p.sub", "p.e", "p.d"}


def test_import_graph_reads_the_package() -> None:
    graph = import_graph()
    assert {"dream_job.spec.loader", "dream_job.spec.training"} <= graph["dream_job.spec"]
    assert "dream_job.errors" in graph["dream_job.spec.training"]
    assert graph["dream_job.errors"] == set()


def test_dream_job_has_no_import_cycles() -> None:
    assert find_cycles(import_graph()) == []


@pytest.mark.parametrize("modules", ["budget", "dream_job", "dream_job.spec", "dream_job.cli"])
def test_laptop_entry_points_import_no_torch(modules: str) -> None:
    # For the CLI, `dream-job --help` runs too: the app with every verb registered and its help rendered.
    code = f"import sys, {modules}\n"
    if modules == "dream_job.cli":
        code += "try:\n    dream_job.cli.app(['--help'])\nexcept SystemExit:\n    pass\n"
    code += "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')), file=sys.stderr)"
    result = subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, capture_output=True, text=True)
    assert result.stderr.strip().splitlines()[-1] == "[]"
