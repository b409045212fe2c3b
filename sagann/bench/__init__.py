"""Benchmarks behind `sagann bench`: each measures sagann and its peers in the same run."""
from __future__ import annotations

import importlib

__all__ = ["run_bench"]


def run_bench(name: str, quick: bool = False, out: str | None = None) -> dict:
    """Run ``sagann.bench.<name>.run(quick=...)``; the result dict holds a ``report`` string for humans."""
    try:
        module = importlib.import_module(f"sagann.bench.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"sagann.bench.{name}":
            raise
        raise ValueError(f"unknown benchmark {name!r}") from None
    result = module.run(quick=quick)
    if out is not None:
        from sagann.bench._results import append_result

        append_result(out, name, result)
    return result
