"""Benchmarks behind `sagann bench`: each measures sagann and its peers in the same run."""
from __future__ import annotations

import importlib
import inspect

from sagann.bench._epoch import QUICK_REDDIT_SCALE, REDDIT_SCALE
from sagann.bench._results import append_result

__all__ = ["BENCHES", "QUICK_REDDIT_SCALE", "REDDIT_SCALE", "append_result", "run_bench"]

BENCHES = ("kernels", "gcn", "gat", "sage", "overlap")  # the modules `sagann bench NAME` runs


def run_bench(name: str, quick: bool = False, out: str | None = None, **options) -> dict:
    """Run ``sagann.bench.<name>.run(quick=..., **options)``; the result dict holds a ``report`` string for humans.

    ``options`` that are None are left out; one the benchmark's ``run`` does not take is an error.
    """
    try:
        module = importlib.import_module(f"sagann.bench.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"sagann.bench.{name}":
            raise
        raise ValueError(f"unknown benchmark {name!r}") from None
    options = {k: v for k, v in options.items() if v is not None}
    takes = set(inspect.signature(module.run).parameters) - {"quick"}
    wrong = sorted(set(options) - takes)
    if wrong:
        flags = ", ".join("--" + k.replace("_", "-") for k in wrong)
        takers = [b for b in BENCHES if set(wrong) <= set(inspect.signature(importlib.import_module(f"sagann.bench.{b}").run).parameters)]
        raise ValueError(f"sagann bench {name} does not take {flags}; leave it out" + (f" (sagann bench {_listed(takers)} take{'s' if len(takers) == 1 else ''} it)" if takers else ""))
    result = module.run(quick=quick, **options)
    if out is not None:
        append_result(out, name, result)
    return result


def _listed(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
