"""Measured step costs kept on disk, so the same command on the same machine picks the same plan.

The time model (:mod:`sagann.scheduler.cost_model`) chooses P from
measured rates. Measured twice, in two processes, the rates differ by
timing noise, and where two candidate plans are predicted close the choice
can flip; a different P sums floats in a different order, so two runs of
one command would not give bit-identical losses. Like an autotuner's cache,
the first measurement on a machine is stored and later processes read it.

The store is one JSON file, ``step_costs.json``, in ``$SAGANN_CACHE_DIR``
(default ``~/.cache/sagann``), keyed by what the rates depend on: the
device kind, the host, the CPU count and the torch and numba versions.
Delete it (or set ``SAGANN_CALIBRATE=1``) to measure again. A store that
cannot be read or written is ignored with a warning: planning goes on with
a fresh measurement.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import tempfile
from pathlib import Path

__all__ = ["CACHE_ENV", "RECALIBRATE_ENV", "cache_path", "load", "store"]

CACHE_ENV = "SAGANN_CACHE_DIR"
RECALIBRATE_ENV = "SAGANN_CALIBRATE"  # "1": measure again and overwrite the stored rates
_FILE = "step_costs.json"
METHOD = 3  # how the rates are measured; stored rates of another method are measured again
_LOG = logging.getLogger("sagann")


def cache_path() -> Path:
    root = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "sagann")
    return Path(root) / _FILE


def _machine_key(kind: tuple) -> str:
    import numba
    import torch

    return json.dumps([*map(str, kind), platform.node(), os.cpu_count(), torch.__version__, numba.__version__, f"method {METHOD}"])


def _read() -> dict:
    path = cache_path()
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        _LOG.warning("sagann: ignoring the stored step costs in %s (%s); they will be measured again", path, exc)
        return {}
    return data if isinstance(data, dict) else {}


def _recalibrating() -> bool:
    """Has the user asked to measure again (``SAGANN_CALIBRATE=1``)?"""
    return os.environ.get(RECALIBRATE_ENV, "") not in ("", "0")


def load(kind: tuple) -> dict | None:
    """The rates stored for this device kind on this machine, or None (none stored, or a re-measure asked for)."""
    if _recalibrating():
        return None
    entry = _read().get(_machine_key(kind))
    return entry if isinstance(entry, dict) else None


def store(kind: tuple, rates: dict) -> dict:
    """Keep ``rates`` for this device kind, unless another process stored its own first; returns the rates in effect.

    The first process to store wins (under a lock on the cache directory),
    so processes that measured at the same time, each slowed by the other,
    all plan with one set of rates: a run and its resumed run in parallel
    with a reference plan alike. ``SAGANN_CALIBRATE=1`` overwrites.
    Atomic: a reader sees the old file or the new, never half.
    """
    path = cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _locked(path.parent / ".step_costs.lock"):
            data = _read()
            first = data.get(_machine_key(kind))
            if isinstance(first, dict) and not _recalibrating():
                return first
            data[_machine_key(kind)] = rates
            fd, tmp = tempfile.mkstemp(prefix=".step_costs.", dir=path.parent)
            try:
                with os.fdopen(fd, "w") as f:
                    json.dump(data, f, indent=1, sort_keys=True)
                os.replace(tmp, path)
            except BaseException:
                os.unlink(tmp)
                raise
    except OSError as exc:
        _LOG.warning("sagann: could not store the measured step costs in %s (%s); the next process measures again", path, exc)
    return rates


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive lock on ``path`` between processes (fcntl; none where it is missing)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: the last writer wins
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
