"""The package is a house of layers: imports go one way, down, with no cycle and no private name.

Read from the source, not from ``sys.modules``: every import counts, at module level, inside a
function, or under ``TYPE_CHECKING``. ``docs/architecture.md`` draws the same layers.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "prefect_kandinsky"

LAYERS: list[tuple[str, ...]] = [
    ("lazy", "serving", "assets"),
    ("gateway",),
    ("media",),
    ("emulator",),
    ("credentials", "blocks", "progress"),
    ("events",),
    ("tasks", "flows", "artifacts"),
    ("batch",),
    ("cli",),
]
"""Bottom to top. A module imports from its own group and from lower layers only. A group
listed alone may not import from a group beside it: the emulator (a fake gateway) sits below
the Prefect layers and imports none of them."""

COMPAT_DOORS = frozenset(
    {
        "client",
        "exceptions",
        "inputs",
        "ledger",
        "manifests",
        "models",
        "previews",
        "storage",
        "waits",
        "webhooks",
    }
)
"""Old module paths kept importing for now: each only re-exports its new module."""


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _is_door(name: str, path: Path) -> bool:
    """A package ``__init__`` (it re-exports lazily) or an old path kept for compatibility."""
    return path.name == "__init__.py" or name.split(".")[1:] in ([d] for d in COMPAT_DOORS)


def _imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(module, names, line) of every import of the package in ``path``, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] == "prefect_kandinsky":
                found.append((node.module, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.ImportFrom) and node.level:
            base = _module_name(path).split(".")
            if path.name != "__init__.py":
                base = base[:-1]
            base = base[: len(base) - (node.level - 1)]
            module = ".".join([*base, *([node.module] if node.module else [])])
            found.append((module, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "prefect_kandinsky":
                    found.append((alias.name, [], node.lineno))
    return found


def _resolve(module: str, names: list[str], modules: dict[str, Path]) -> list[str]:
    """The package modules an import reaches: ``from pkg import mod`` reaches ``pkg.mod``."""
    reached = [f"{module}.{name}" for name in names if f"{module}.{name}" in modules]
    if module in modules and len(reached) < max(len(names), 1):
        reached.append(module)
    return reached


def _layer(module: str) -> tuple[int, str]:
    top = module.split(".")[1] if "." in module else ""
    for index, group in enumerate(LAYERS):
        if top in group:
            return index, "|".join(group)
    raise AssertionError(f"{module} is on no layer: add it to LAYERS and docs/architecture.md")


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        for module, names, _line in _imports(path):
            for target in _resolve(module, names, modules):
                if target != name:
                    graph[name].add(target)
    return graph


def test_every_module_is_on_a_layer() -> None:
    """Each module of the package belongs to exactly one layer."""
    for name, path in _modules().items():
        if name != "prefect_kandinsky" and not _is_door(name, path):
            _layer(name)


def test_imports_go_down() -> None:
    """No module imports from a layer above its own, nor from a group beside it."""
    modules = _modules()
    wrong = []
    for name, path in modules.items():
        if name == "prefect_kandinsky" or _is_door(name, path):
            continue
        layer, group = _layer(name)
        for module, names, line in _imports(path):
            for target in _resolve(module, names, modules):
                target_path = modules[target]
                if target == "prefect_kandinsky" or (
                    _is_door(target, target_path) and target.count(".") == 1
                ):
                    if target.split(".")[-1] in COMPAT_DOORS or target == "prefect_kandinsky":
                        wrong.append(f"{name}:{line} imports the door {target}")
                    continue
                if target.startswith(name + ".") or target == name:
                    continue
                target_layer, target_group = _layer(target)
                if target_layer > layer or (target_layer == layer and target_group != group):
                    wrong.append(f"{name}:{line} ({group}) imports {target} ({target_group})")
    assert [] == wrong


def test_no_cycles() -> None:
    """The module graph, counting imports under TYPE_CHECKING and in functions, has no cycle."""
    graph = _graph()
    doors = {name for name, path in _modules().items() if _is_door(name, path)}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt in doors:
                continue
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
                cycles.append(sorted(component))

    for node in sorted(set(graph) - doors):
        if node not in index:
            visit(node)
    assert [] == cycles


def test_no_private_names_across_modules() -> None:
    """No module imports another module's ``_private`` name, nor a private module elsewhere."""
    modules = _modules()
    wrong = []
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for module, names, line in _imports(path):
            if module == name:
                continue
            for imported in names:
                if imported.startswith("_") and not imported.startswith("__"):
                    wrong.append(f"{name}:{line} imports {module}.{imported}")
            last = module.rsplit(".", 1)
            if last[-1].startswith("_") and not last[-1].startswith("__") and last[0] != package:
                wrong.append(f"{name}:{line} imports the private module {module}")
    assert [] == wrong


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from prefect_kandinsky.batch.runner import run_rows\n", "batch"),
        ("def f():\n    from prefect_kandinsky.cli import main\n", "cli"),
    ],
)
def test_the_check_sees_imports_at_any_depth(tmp_path: Path, source: str, expected: str) -> None:
    """An import inside a function counts like one at the top (the check itself can fail)."""
    path = tmp_path / "probe.py"
    path.write_text(source)
    ((module, _names, _line),) = _imports(path)
    assert expected == _layer(module)[1].split("|")[0] or expected in module
