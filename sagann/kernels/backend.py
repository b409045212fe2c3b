"""Kernel backends: what one implements (:class:`KernelBackend`) and the registry that names them.

A backend is loaded on first use (numba compiles its kernels lazily), so
registering one costs nothing: ``register_backend("mine", loader)`` and
``kernels.gspmm(..., backend="mine")`` calls ``loader()`` once.
``"reference"`` (torch ops, the oracle), ``"cpu"`` (numba) and ``"cuda"``
(numba.cuda or its simulator) are registered here. Devices name their
backend (``Device.kernel_backend``); attention (``kernels.attention``) has
its own per-backend entry points.
"""
from __future__ import annotations

import importlib
import threading
from collections.abc import Sequence
from typing import Callable, Protocol, runtime_checkable

import torch

from sagann.kernels.graph import ChunkTensors

__all__ = ["KernelBackend", "register_backend", "get_backend", "available_backends", "backend_names"]


@runtime_checkable
class KernelBackend(Protocol):
    """The kernels one backend provides (a module or any object with these functions).

    Shapes and semantics are those of :func:`sagann.kernels.gspmm`,
    :func:`~sagann.kernels.gsddmm` and :func:`~sagann.kernels.gspmm_sum_backward`,
    held equal to the reference backend by the tests.
    """

    def gspmm(
        self, g: ChunkTensors, op: str, reduce: str, src: torch.Tensor | None = None, edge: torch.Tensor | None = None,
        dst: torch.Tensor | None = None, *, src_rows: torch.Tensor | None = None, out: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]: ...

    def gsddmm(
        self, g: ChunkTensors, op: str, src: torch.Tensor | None = None, edge: torch.Tensor | None = None, dst: torch.Tensor | None = None
    ) -> torch.Tensor: ...

    def gspmm_sum_backward(
        self, g: ChunkTensors, op: str, grad: torch.Tensor, src: torch.Tensor | None = None, edge: torch.Tensor | None = None,
        dst: torch.Tensor | None = None, *, needs: tuple[str, ...] = ("src", "edge", "dst"), src_out: torch.Tensor | None = None,
        src_rows: torch.Tensor | None = None, edge_order: str = "csc",
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]: ...


_LOADERS: dict[str, Callable[[], KernelBackend]] = {}
_LOADED: dict[str, KernelBackend] = {}
_LOCK = threading.RLock()  # engine threads may ask for a backend concurrently


def register_backend(name: str, loader: Callable[[], KernelBackend]) -> None:
    """Make ``name`` a kernel backend; ``loader()`` returns it and runs on first use only.

    Re-registering a name replaces it (the next use loads the new one).
    """
    if not isinstance(name, str) or not name or name == "auto":
        raise ValueError(f"register_backend: name must be a non-empty string other than 'auto', got {name!r}")
    if not callable(loader):
        raise TypeError(f"register_backend: loader must be a callable returning the backend, got {loader!r}")
    with _LOCK:
        _LOADERS[name] = loader
        _LOADED.pop(name, None)


def get_backend(name: str) -> KernelBackend:
    """The backend registered as ``name``, loaded on first use; a ValueError listing the known ones otherwise."""
    backend = _LOADED.get(name) if isinstance(name, str) else None
    if backend is not None:
        return backend
    with _LOCK:
        loader = _LOADERS.get(name) if isinstance(name, str) else None
        if loader is None:
            raise ValueError(f"unknown kernel backend {name!r}; known backends: {', '.join(available_backends())}")
        if name not in _LOADED:
            _LOADED[name] = loader()
        return _LOADED[name]


def available_backends() -> list[str]:
    """The registered backend names, in registration order (not loaded)."""
    return list(_LOADERS)


class _Names(Sequence):
    """A live, read-only view: ``extra`` names, then every registered backend."""

    def __init__(self, extra: tuple[str, ...]):
        self._extra = extra

    def _names(self) -> tuple[str, ...]:
        return self._extra + tuple(_LOADERS)

    def __getitem__(self, i):
        return self._names()[i]

    def __len__(self) -> int:
        return len(self._names())

    def __repr__(self) -> str:
        return repr(self._names())


def backend_names(*extra: str) -> Sequence[str]:
    """``extra`` then the registered backend names, read at each use (so later registrations count)."""
    return _Names(tuple(extra))


def _module(path: str) -> Callable[[], KernelBackend]:
    return lambda: importlib.import_module(path)


register_backend("reference", _module("sagann.kernels.reference"))
register_backend("cpu", _module("sagann.kernels.cpu"))  # numba: compiled lazily, on first use
register_backend("cuda", _module("sagann.kernels.cuda"))  # numba.cuda (or its simulator): compiled lazily
