"""The import structure of dspyo3-core and dspyo3-production: the contracts in ``.importlinter`` hold, the module
graph has no cycle (imports inside functions included), and no module imports another module's private names."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {src.name: src for src in sorted((ROOT / "packages").glob("*/src/dspyo3_*"))}


def _modules(package: str, base: Path | None = None) -> dict[str, Path]:
    base = base if base is not None else PACKAGES[package]
    found = {}
    for path in base.rglob("*.py"):
        parts = path.relative_to(base.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, module: str, is_package: bool) -> Iterator[tuple[str, list[str], int]]:
    """(imported module, imported names, line) for every import that can run: module level and inside
    functions alike, but not under ``if TYPE_CHECKING:``."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, [], node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, *([base] if base else [])])
            yield base, [alias.name for alias in node.names], node.lineno
        stack.extend(ast.iter_child_nodes(node))


def _graph(package: str) -> dict[str, set[str]]:
    modules = _modules(package)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for target, names, _ in _imports(tree, name, path.name == "__init__.py"):
            for candidate in [f"{target}.{n}" for n in names] + [target]:
                if candidate in modules and candidate != name and candidate != package:
                    graph[name].add(candidate)
                    break
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_the_module_graph_has_no_cycle_even_through_imports_inside_functions(package: str) -> None:
    assert _cycles(_graph(package)) == []


def test_the_cycle_finder_sees_an_import_inside_a_function() -> None:
    a = ast.parse("def f():\n    from pkg import b\n")
    b = ast.parse("from pkg.a import x\nif TYPE_CHECKING:\n    from pkg import c\n")
    assert [t for t, _, _ in _imports(a, "pkg.a", False)] == ["pkg"]
    assert [t for t, _, _ in _imports(b, "pkg.b", False)] == ["pkg.a"]  # TYPE_CHECKING imports never run
    assert _cycles({"pkg.a": {"pkg.b"}, "pkg.b": {"pkg.a"}, "pkg.c": set()}) == [["pkg.a", "pkg.b"]]


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_no_module_imports_another_modules_private_names(package: str) -> None:
    offenders = []
    for name, path in _modules(package).items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for target, names, line in _imports(tree, name, path.name == "__init__.py"):
            if not target.startswith("dspyo3_") or target == name:
                continue
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private or any(part.startswith("_") and not part.startswith("__") for part in target.split(".")):
                offenders.append(f"{path.relative_to(ROOT)}:{line}: from {target} import {', '.join(names)}")
    assert offenders == []


def test_the_import_contracts_hold() -> None:
    """``lint-imports`` (import-linter) checks the layers of core and production and the package boundaries."""
    command = Path(sys.executable).parent / "lint-imports"
    if not command.exists():
        found = shutil.which("lint-imports")
        assert found, "import-linter is not installed in this environment (it is in hatch.toml's dependencies)"
        command = Path(found)
    result = subprocess.run([str(command), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_cores_innermost_impl_is_recognised_by_its_marker() -> None:
    from dspyo3_core.call import is_innermost, wrappers_active
    from dspyo3_core.plugins import core_only_manager

    manager = core_only_manager()
    impls = manager.hook.dspyo3_lm_call.get_hookimpls()
    assert [is_innermost(impl.function) for impl in impls] == [True]
    assert not wrappers_active(manager)


_PUBLIC_UNDERSCORED = {"_replace", "_asdict", "_fields", "_make", "_exit"}  # namedtuple's API, os._exit


def _private_attribute_reads(tree: ast.AST) -> Iterator[tuple[str, int]]:
    """``obj._name`` where ``obj`` is not ``self``/``cls`` and this module defines no ``_name`` of its own (no
    ``def _name``, ``class _name``, ``self._name = ...``, ``_name = ...`` or ``__slots__`` entry): a reach into
    another module's object."""
    own: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            own.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            own.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            own.add(node.id)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            own.add(node.target.id)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("_"):
            own.add(node.value)  # __slots__ entries, getattr(obj, "_name") on objects of this module
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or not node.attr.startswith("_") or node.attr.startswith("__"):
            continue
        if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
            continue
        if node.attr in own or node.attr in _PUBLIC_UNDERSCORED:
            continue
        yield node.attr, node.lineno


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_no_module_reads_private_attributes_of_another_modules_objects(package: str) -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{line}: ._{attr.lstrip('_')}"
        for path in _modules(package).values()
        for attr, line in _private_attribute_reads(ast.parse(path.read_text(encoding="utf-8")))
    ]
    assert offenders == []


def test_the_private_attribute_check_sees_a_reach_into_another_object() -> None:
    tree = ast.parse("class A:\n    def __init__(self):\n        self._mine = 1\n\n"
                     "def f(a, breaker):\n    return a._mine, breaker._local, self._x\n")
    assert [attr for attr, _ in _private_attribute_reads(tree)] == ["_local"]


def test_no_package_imports_another_packages_private_names() -> None:
    offenders = []
    for src in sorted((ROOT / "packages").glob("*/src/dspyo3_*")):
        for name, path in _modules(src.name, src).items():
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for target, names, line in _imports(tree, name, path.name == "__init__.py"):
                if not target.startswith("dspyo3_") or target.split(".")[0] in (src.name, "dspyo3_native"):
                    continue
                private = [n for n in names if n.startswith("_") and not n.startswith("__")]
                if private or any(part.startswith("_") for part in target.split(".")):
                    offenders.append(f"{path.relative_to(ROOT)}:{line}: from {target} import {', '.join(names)}")
    assert offenders == []
