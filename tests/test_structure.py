"""The package's shape: no import cycles, imports only downwards, no private names across modules, one export list."""

from __future__ import annotations

import ast
import importlib
import inspect
import warnings
from pathlib import Path

import pytest

import dltips

SRC = Path(dltips.__file__).parent
# Lower layers first; a module may import modules of its own layer or below.
LAYERS = [
    ("dltips.core",),
    ("dltips.catalog", "dltips.findings", "dltips.task", "dltips.predict"),
    ("dltips.training", "dltips.data", "dltips.monitor", "dltips.nlp", "dltips.tabular"),
    ("dltips.diagnosis",),
    ("dltips.demos", "dltips.integrations"),
    ("dltips.cli", "dltips.__main__"),
]


def module_names() -> dict[str, Path]:
    names = {}
    for path in SRC.rglob("*.py"):
        parts = ("dltips", *path.relative_to(SRC).with_suffix("").parts)
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


MODULES = module_names()


def imports_of(path: Path) -> list[tuple[str, list[str], int]]:
    """(module imported, names imported from it, line) for every dltips import, in functions and TYPE_CHECKING too."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "dltips":
            found.append((node.module, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            found.extend((a.name, [], node.lineno) for a in node.names if a.name.split(".")[0] == "dltips")
    return found


def edges() -> dict[str, set[str]]:
    """Module -> the dltips modules it imports (a `from package import module` counts as the module)."""
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        targets = set()
        for module, names, _ in imports_of(path):
            submodules = [f"{module}.{n}" for n in names if f"{module}.{n}" in MODULES]
            targets.update(submodules or [module])
        targets.discard(name)
        targets.discard("dltips")  # the package's own lazy export list, never imported for its contents
        graph[name] = targets
    return graph


def layer(module: str) -> int:
    for i, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return i
    raise AssertionError(f"{module} is in no layer: add it to LAYERS")


def test_every_module_has_a_layer():
    for name in MODULES:
        if name != "dltips":
            layer(name)


def test_no_import_cycle_between_modules():
    graph = edges()
    state: dict[str, int] = {}  # 1 visiting, 2 done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                cycle = path[path.index(target):] + [target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_modules_import_only_their_own_layer_or_below():
    upward = [(a, b) for a, targets in edges().items() if a != "dltips" for b in targets if layer(b) > layer(a)]
    assert not upward, f"imports from a higher layer: {upward}"


def test_no_module_imports_another_modules_private_names():
    private = []
    for name, path in MODULES.items():
        for module, names, line in imports_of(path):
            private += [f"{name}:{line} imports {n} from {module}" for n in names if n.startswith("_")
                        and not n.startswith("__")]
    assert not private, private


def test_the_export_list_is_what_import_dltips_gives():
    assert dltips.__all__ == list(dltips._EXPORTS)
    assert len(set(dltips.__all__)) == len(dltips.__all__)
    assert not set(dltips._EXPORTS) & set(dltips._MOVED)
    for name, module in dltips._EXPORTS.items():
        value = getattr(dltips, name)
        assert value is getattr(importlib.import_module(module), name)
        assert name in dir(dltips)
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        dltips.not_a_name  # noqa: B018


def test_moved_names_still_resolve_with_a_deprecation_warning():
    for name, module in dltips._MOVED.items():
        with pytest.warns(DeprecationWarning, match=module):
            value = getattr(dltips, name)
        assert value is getattr(importlib.import_module(module), name)
        assert name not in dltips.__all__


def test_every_public_check_has_the_common_signature():
    checks = [name for name in dltips.__all__ if name.startswith("check_")]
    assert len(checks) >= 15
    # check_emergent_scaling judges a study of several models (ScalingPoints), not one task's model.
    for name in sorted(set(checks) - {"check_emergent_scaling"}):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            signature = inspect.signature(inspect.unwrap(getattr(dltips, name)))
        params = list(signature.parameters.values())
        assert params[0].name == "task" and params[0].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD, name
        defaults = {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}
        expected = {"model": None, "device": None, "seed": 0, "max_items": None, "deadline": None}
        assert {k: defaults.get(k, "missing") for k in expected} == expected, name
