"""The import graph: the broker core never imports its plugins, and followup/ has no
import cycle.

``broker/`` finds ``followup/`` and ``filters/`` through entry points only
(:mod:`broker.plugins`): stages, alert decoders, CLI sub-commands, settings sections,
migrations. Checked three ways: statically over every import in broker/ (module
level, inside functions, and ``importlib.import_module("...")`` literals), by
importing the core's entry modules in a fresh interpreter, and over followup/'s own
module-level imports.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

PLUGIN_PACKAGES = ("followup", "filters")

PENDING_RUNNER_REWRITE: set[tuple[str, str]] = set()
"""The only imports of a plugin package the core may still hold: (file, module).
Empty: `mma-broker run` finds the follow-up through the ``mma_broker.stages`` entry point."""


def _modules(package: str) -> dict[str, Path]:
    """Every module of ``package`` (a folder under the repository root) by dotted name."""
    found = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _absolute(module: str, path: Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str, path: Path, *, module_level_only: bool = False) -> list[tuple[str, int]]:
    """(imported module, line) of every import in a file. ``from a import b`` gives both
    ``a`` and ``a.b`` (b may be a submodule). With ``module_level_only``, imports inside
    functions are left out (those under ``if``/``try`` at module level count)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[tuple[str, int]] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if module_level_only and isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            if isinstance(child, ast.Import):
                found.extend((alias.name, child.lineno) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = _absolute(module, path, child)
                found.append((base, child.lineno))
                found.extend((f"{base}.{alias.name}", child.lineno) for alias in child.names)
            elif (isinstance(child, ast.Call) and child.args and isinstance(child.args[0], ast.Constant)
                  and isinstance(child.args[0].value, str)
                  and (isinstance(child.func, ast.Attribute) and child.func.attr == "import_module"
                       or isinstance(child.func, ast.Name) and child.func.id in ("import_module", "__import__"))):
                found.append((child.args[0].value, child.lineno))
            visit(child)

    visit(tree)
    return found


def _is_plugin(name: str) -> bool:
    return name.split(".")[0] in PLUGIN_PACKAGES


# ---------------------------------------------------------------- (a) static scan of broker/
def test_scanner_sees_every_kind_of_import(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import followup.a\nfrom filters import b\n\ndef f():\n    from followup.c import d\n"
                      "    import importlib\n    importlib.import_module('followup.e')\n"
                      "    __import__('filters.g')\n")
    assert [m for m, _ in _imports("broker.sample", sample) if _is_plugin(m)] == [
        "followup.a", "filters", "filters.b", "followup.c", "followup.c.d", "followup.e", "filters.g"]


def test_broker_never_imports_followup_or_filters():
    found, allowed = [], set()
    for module, path in _modules("broker").items():
        rel = path.relative_to(ROOT).as_posix()
        for name, line in _imports(module, path):
            if not _is_plugin(name):
                continue
            pending = {(f, m) for f, m in PENDING_RUNNER_REWRITE if f == rel and (name + ".").startswith(m + ".")}
            if pending:
                allowed |= pending
                continue
            found.append(f"{rel}:{line} imports {name}")
    assert not found, "the core must reach plugins through entry points (broker.plugins):\n" + "\n".join(found)
    stale = PENDING_RUNNER_REWRITE - allowed
    assert not stale, f"these imports are gone: remove them from PENDING_RUNNER_REWRITE: {sorted(stale)}"


# ---------------------------------------------------------------- (b) what importing the core loads
def test_importing_the_core_loads_no_plugin_module():
    code = (
        "import json, sys\n"
        "import broker.cli, broker.app, broker.config, broker.sources, broker.pipeline.ingest, broker.archive\n"
        "broker.sources.decoders()\n"  # the built-in decoders, loaded through their entry points
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('followup', 'filters'))))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1]) == []


# ---------------------------------------------------------------- (c) followup/ itself
def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
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
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return out


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_followup_has_no_import_cycle():
    modules = _modules("followup")
    graph = {m: {name for name, _ in _imports(m, p, module_level_only=True) if name in modules and name != m}
             for m, p in modules.items()}
    assert _cycles(graph) == []


@pytest.mark.parametrize("module", ["followup.cli", "followup.config", "followup.migrations"])
def test_followup_plugin_entry_modules_stay_cheap(module):
    """What mma-broker loads on every start (the CLI plugin) or with every settings
    build imports only what its job needs: typer and the standard library for the CLI,
    pydantic and broker.config for the settings section."""
    allowed = {
        "followup.cli": {"typer"},
        "followup.config": {"pydantic", "broker.config"},
        "followup.migrations": set(),
    }[module]
    modules = _modules("followup")
    todo, seen, extra = [module], set(), set()
    while todo:  # the module and the followup modules it imports at module level
        current = todo.pop()
        seen.add(current)
        for name, _ in _imports(current, modules[current], module_level_only=True):
            if name in modules:
                todo += [] if name in seen else [name]
            elif not (name.split(".")[0] in sys.stdlib_module_names | {"__future__", "followup"}
                      or any((name + ".").startswith(a + ".") for a in allowed)):
                extra.add(f"{current}: {name}")
    assert not extra, f"{module} loads more than {sorted(allowed) or 'the standard library'}: {sorted(extra)}"
