"""The profiler's public surface and its promise to import nothing heavy."""
import ast
from pathlib import Path

import pytest

import sagann.profiler as profiler


def test_all_names_exist():
    for name in profiler.__all__:
        assert hasattr(profiler, name), name
    assert callable(profiler.span) and callable(profiler.profile)


def test_imports_no_other_subpackage_and_matplotlib_only_lazily():
    # Static check: importing sagann.profiler at runtime would also run
    # sagann/__init__.py, which rightly imports the other subpackages.
    pkg = Path(profiler.__file__).parent
    for path in sorted(pkg.glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                mods = [node.module or ""]
                assert node.level in (0, 1), f"{path.name} imports from outside sagann.profiler"
            elif isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            else:
                continue
            for m in mods:
                assert not m.startswith("sagann"), f"{path.name} imports {m}"
        top_level = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        for node in top_level:
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            assert not any(n.startswith("matplotlib") for n in names), f"{path.name} imports matplotlib eagerly"


def test_write_into_missing_directory_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        profiler.write_chrome_trace([], tmp_path / "missing" / "trace.json")
