"""The API reference builds from the docstrings without an error or a warning (pdoc, the 'docs' extra)."""
from __future__ import annotations

import os
import warnings

import pytest

# the public packages; sagann's own page covers what its __all__ exports (nn, fn, profiler)
MODULES = ("sagann", "sagann.chunks", "sagann.kernels", "sagann.scheduler", "sagann.engine")


def _pdoc():
    if os.environ.get("CI"):  # CI installs the 'docs' extra: a missing pdoc is a broken setup, not a skip
        import pdoc
    else:
        pdoc = pytest.importorskip("pdoc", reason="the API reference needs the 'docs' extra: pip install -e '.[docs]'")
    return pdoc


def test_api_reference_builds_without_warnings(tmp_path):
    pdoc = _pdoc()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pdoc.pdoc(*MODULES, output_directory=tmp_path)
    problems = [f"{w.category.__name__}: {w.message}" for w in caught if "pdoc" in w.filename or issubclass(w.category, UserWarning)]
    assert not problems, "\n".join(problems)
    pages = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.html")}
    assert {"sagann.html", "sagann/chunks.html", "sagann/scheduler.html", "sagann/engine.html"} <= pages
    index = (tmp_path / "sagann.html").read_text(encoding="utf-8")
    for name in ("ChunkedGraph", "CpuDevice", "Layer", "explain"):
        assert name in index, f"{name} missing from the reference"
