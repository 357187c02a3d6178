"""The layout: the imports of harness/ form no circle and run down the layers that pyproject.toml names.

``make lint`` runs import-linter on the same contracts; this test reads them itself, so that it also shows the
check can fail: a back import or a circle added to the real graph is found.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import grimp
import pytest

tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).resolve().parents[1]


def contracts() -> list[dict]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def layer_of(module: str, containers: list[str], layers: list[str]) -> tuple[int, str] | None:
    """(layer index, sibling name) of ``module`` under one contract; None when no layer holds it."""
    for container in containers:
        for index, layer in enumerate(layers):
            for sibling in (s.strip() for s in layer.split("|")):
                name = f"{container}.{sibling}" if container else sibling
                if module == name or module.startswith(name + "."):
                    return index, name
    return None


def violations(graph) -> list[str]:
    """Every direct import that goes up a layer, or across two independent siblings of one layer."""
    found = []
    for contract in contracts():
        containers = contract.get("containers", [""])
        for importer in sorted(graph.modules):
            low = layer_of(importer, containers, contract["layers"])
            if low is None:
                continue
            for imported in graph.find_modules_directly_imported_by(importer):
                high = layer_of(imported, containers, contract["layers"])
                if high is None or high[1] == low[1]:
                    continue
                if high[0] < low[0] or high[0] == low[0]:
                    found.append(f"{contract['name']}: {importer} imports {imported}")
    return found


def circles(graph) -> list[set[str]]:
    """The import circles among harness's modules: strongly connected components of more than one module
    (Tarjan's algorithm), and any module that imports itself."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in graph.find_modules_directly_imported_by(module):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == module:
                    break
            if len(component) > 1 or module in graph.find_modules_directly_imported_by(module):
                found.append(component)

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return found


@pytest.fixture(scope="module")
def graph():
    return grimp.build_graph("harness")


def test_the_imports_of_harness_form_no_circle(graph):
    assert circles(graph) == []


def test_every_import_runs_down_the_layers(graph):
    assert violations(graph) == []


def test_a_back_import_or_a_circle_is_found(graph):
    """The check can fail: data importing the sweep (even lazily, inside a function) breaks the pipeline's
    layers, and the tracking store importing the claims that import it is a circle."""
    graph.add_import(importer="harness.data.corpora", imported="harness.sweep")
    graph.add_import(importer="harness.tracking.store", imported="harness.tracking.claims")
    try:
        found = violations(graph)
        assert any("harness.data.corpora imports harness.sweep" in line for line in found)
        assert any("harness.tracking.store imports harness.tracking.claims" in line for line in found)
        assert {"harness.tracking.claims", "harness.tracking.store"} in circles(graph)
    finally:
        graph.remove_import(importer="harness.data.corpora", imported="harness.sweep")
        graph.remove_import(importer="harness.tracking.store", imported="harness.tracking.claims")


def test_a_function_level_import_counts():
    """grimp reads imports inside functions too, so a lazy back import cannot hide from the check."""
    graph = grimp.build_graph("harness")
    # harness.executors imports its executor files only inside make_executor
    assert "harness.executors.ray" in graph.find_modules_directly_imported_by("harness.executors")


@pytest.mark.parametrize("path", sorted((ROOT / "harness").rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_module_opens_with_a_docstring_that_says_its_job(path):
    docstring = ast.get_docstring(ast.parse(path.read_text()))
    assert docstring and len(docstring.split()) >= 4, f"{path} has no docstring saying its one job"


def test_the_documented_layout_matches_the_tree():
    page = (ROOT / "docs" / "development.md").read_text(encoding="utf-8")
    section = page.split("## How the code is laid out", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"`harness/([a-z_/]+?)/?(?:\.py)?`", section))
    packages = {p.parent.relative_to(ROOT / "harness").as_posix() for p in (ROOT / "harness").glob("*/__init__.py")}
    modules = {p.stem for p in (ROOT / "harness").glob("*.py") if p.stem not in ("__init__", "__main__")}
    assert packages | modules == listed
