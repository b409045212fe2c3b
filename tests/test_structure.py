"""The package's shape: small modules, short signatures, one-way imports, no private names across modules.

Imports run one way: a base (``sagann.units``, ``sagann.version``) and the
profiler below all, then chunks -> kernels (with ``sagann.fn``) -> scheduler
-> engine (with ``sagann.nn``) -> the command line and benchmarks. Every
import counts, including one inside a function.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "sagann"
MAX_LINES = 600
MAX_PARAMS = 8
# lower rank = lower layer; a module may import modules of its own rank or below (the profiler: the base only)
RANKS = {"units": 0, "version": 0, "profiler": 1, "chunks": 2, "kernels": 3, "fn": 3, "scheduler": 4, "engine": 5, "nn": 5}
TOP = 6  # sagann/__init__, cli, demo, bench: the user-facing layer


def _modules() -> dict[str, Path]:
    mods = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


MODULES = _modules()


def _rank(module: str) -> int:
    parts = module.split(".")
    return RANKS.get(parts[1], TOP) if len(parts) > 1 else TOP


def _imports(module: str, path: Path) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every import of a sagann module, anywhere in the file."""
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names if a.name.startswith("sagann")]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if not base.startswith("sagann"):
                continue
            names = [a.name for a in node.names]
            submodules = [f"{base}.{n}" for n in names if f"{base}.{n}" in MODULES]
            found += [(m, [], node.lineno) for m in submodules]
            rest = [n for n in names if f"{base}.{n}" not in MODULES]
            if rest or not submodules:
                found.append((base, rest, node.lineno))
    return found


def test_no_module_over_the_line_limit():
    long = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (split them by concern): {long}"


def _compiled_kernel(node: ast.FunctionDef) -> bool:
    """A numba kernel, or a numba intrinsic's typing function: the kernel's arguments are its signature."""
    return any("jit" in ast.unparse(d) or ast.unparse(d) == "intrinsic" for d in node.decorator_list)


def _too_many_parameters(tree: ast.Module) -> list[str]:
    found = []
    for owner in [tree] + [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)]:
        for node in ast.iter_child_nodes(owner):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or _compiled_kernel(node):
                continue
            a = node.args
            positional = [x for x in a.posonlyargs + a.args if x.arg not in ("self", "cls")]
            public = not (owner.name if node.name == "__init__" and owner is not tree else node.name).startswith("_")
            counted = len(positional) + (0 if public else len(a.kwonlyargs))  # a public API may take keyword-only options
            if counted > MAX_PARAMS:
                found.append(f"{node.name} (line {node.lineno}): {counted}")
    top = {id(n) for owner in [tree] + [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)] for n in ast.iter_child_nodes(owner)}
    for node in ast.walk(tree):  # nested functions: no options
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and id(node) not in top and not _compiled_kernel(node):
            a = node.args
            n = len([x for x in a.posonlyargs + a.args if x.arg not in ("self", "cls")])
            if n > MAX_PARAMS:
                found.append(f"{node.name} (line {node.lineno}): {n} positional")
    return sorted(set(found))


def test_no_function_takes_more_than_eight_parameters():
    """Argument bundles (small dataclasses) instead of long signatures; compiled kernels are exempt (their signature is their ABI)."""
    bad = {m: f for m, p in MODULES.items() if (f := _too_many_parameters(ast.parse(p.read_text())))}
    assert not bad, bad


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down_the_layers(module):
    mine = _rank(module)
    for target, _, line in _imports(module, MODULES[module]):
        if target == "sagann":
            continue  # the package itself: only sagann/__init__ and the top layer re-export it
        theirs = _rank(target)
        if module.split(".")[1:2] == ["profiler"]:
            assert theirs == 0 or target.startswith("sagann.profiler"), f"{module}:{line} imports {target}: the profiler imports only the base"
        assert theirs <= mine, f"{module}:{line} imports {target}, a higher layer"


def test_no_private_name_crosses_a_module():
    """A private module (``_name.py``) serves its own package only; a private name its own module only."""
    for module, path in MODULES.items():
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        for target, names, line in _imports(module, path):
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            assert not private, f"{module}:{line} imports {private} from {target}"
            assert not any(p.startswith("_") for p in target.split(".")[1:]) or target.rsplit(".", 1)[0] == package, (
                f"{module}:{line} imports the private module {target} from outside its package"
            )


def test_no_import_cycle():
    """Between modules (package ``__init__`` files only re-export and are left out), with deferred imports counted."""
    packages = {m for m, p in MODULES.items() if p.name == "__init__.py"}
    edges = {m: {t for t, _, _ in _imports(m, p) if t in MODULES and t not in packages and t != m} for m, p in MODULES.items() if m not in packages}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(edges.get(m, ())):
            if state.get(t) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(t):] + [t]))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)


def test_the_checks_can_fail(tmp_path):
    """The checks above catch what they are for, on code written to break them."""
    wide = ast.parse("def f(a, b, c, d, e, f, g, h, i): pass\ndef _g(a, *, b, c, d, e, f, g, h, i): pass\ndef ok(a, *, b, c, d, e, f, g, h, i): pass")
    assert [f.split(" ")[0] for f in _too_many_parameters(wide)] == ["_g", "f"]
    path = tmp_path / "m.py"
    path.write_text("from sagann.engine.graph import ChunkedGraph\nfrom sagann.kernels._common import _private\n")
    found = _imports("sagann.chunks.m", path)
    assert any(_rank(t) > _rank("sagann.chunks.m") for t, _, _ in found)
    assert any(n.startswith("_") for _, names, _ in found for n in names)
