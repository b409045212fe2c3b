"""Kernel backends: what one implements (:class:`KernelBackend`) and the registry that names them.

A backend is loaded on first use (numba compiles its kernels lazily), so
registering one costs nothing: ``register_backend("mine", loader)`` and
``kernels.gspmm(..., backend="mine")`` calls ``loader()`` once.
``"reference"`` (torch ops, the oracle), ``"cpu"`` (numba) and ``"cuda"``
(numba.cuda or its simulator) are registered here. Devices name their
backend (``Device.kernel_backend``); attention (``kernels.attention``) has
its own per-backend entry points.

A GPU device runs ``"cuda"`` where numba can drive the GPU, and otherwise
torch's ops (``"reference"``): :func:`gpu_kernel_backend` decides, and says
so with a :class:`BackendFallbackWarning` naming the cause and the fix, so
that a slow run is never a silent one. Each kernel call also adds to the
profiler's ``kernel_calls.<backend>`` counter (:func:`count_call`), so a
profile shows which backend ran.
"""
from __future__ import annotations

import importlib
import threading
import warnings
from collections.abc import Sequence
from typing import Callable, Protocol, runtime_checkable

import torch

from sagann import profiler
from sagann.kernels.graph import ChunkTensors

__all__ = [
    "KernelBackend", "register_backend", "get_backend", "available_backends", "backend_names",
    "BackendFallbackWarning", "gpu_kernel_backend", "gpu_fallback_reason", "count_call", "CALL_COUNTER",
]

CALL_COUNTER = "kernel_calls."
"""Prefix of the profiler counters that count kernel calls per backend (``kernel_calls.cuda``)."""


@runtime_checkable
class KernelBackend(Protocol):
    """The kernels one backend provides (a module or any object with these functions).

    Shapes and semantics are those of :func:`sagann.kernels.gspmm`,
    :func:`~sagann.kernels.gsddmm` and :func:`~sagann.kernels.gspmm_sum_backward`,
    held equal to the reference backend by the tests.

    Optional: ``scratch_bytes_per_edge(op, d_edge) -> int``, the device
    bytes per edge a call of builtin ``op`` holds beyond its operands; the
    memory model charges them (none where it is absent). And
    ``reads_source_major(op, d_edge) -> bool``: the src gradient of ``op``'s
    sum reads source-major arrays, which the engine then sends
    (:func:`sagann.kernels.source_major_backward`). And
    ``sum_backward_bytes_per_edge(op, d_edge, grad_edge, source_major=False,
    narrow_ids=False) -> int``: the device bytes per edge its
    ``gspmm_sum_backward`` holds (index arrays read, edge data, edge
    gradient), with ``source_major`` for the source-major source gradient
    and ``narrow_ids`` where that pass reads its destination ids in 16 bits;
    without it the memory model counts every index array of a sub-chunk.
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


class BackendFallbackWarning(RuntimeWarning):
    """A GPU device runs torch's ops (``reference``) because the fused ``cuda`` kernels cannot run here."""


_GPU_BACKEND: tuple[str, str | None] | None = None  # (backend, why not cuda), decided once per process


def _gpu_backend_status() -> tuple[str, str | None]:
    from numba.core import config

    if config.ENABLE_CUDASIM:
        return "reference", "NUMBA_ENABLE_CUDASIM is set (the simulator runs on CPU tensors, not on the GPU); unset it"
    try:
        from numba import cuda
    except ImportError as exc:
        return "reference", f"numba's CUDA target cannot be imported ({exc}); pip install 'sagann[cuda]' (numba-cuda)"
    try:
        if not cuda.is_available():
            return "reference", "numba sees no CUDA driver or GPU (numba.cuda.is_available() is False); pip install 'sagann[cuda]' (numba-cuda with its CUDA libraries)"
        probe = getattr(get_backend("cuda"), "probe", None)
        if probe is not None:
            probe()  # one small kernel compiled and run: a toolchain that loads but cannot compile falls back here
    except Exception as exc:  # noqa: BLE001 - any failure to load means the same fallback, reported with its cause
        return "reference", f"the cuda kernel backend failed to load ({type(exc).__name__}: {exc}); pip install 'sagann[cuda]'"
    return "cuda", None


def gpu_kernel_backend(warn: bool = True) -> str:
    """``"cuda"`` where numba can run the fused kernels on a GPU, else ``"reference"`` (torch's ops).

    Decided once per process. The fallback is never silent: with ``warn``
    it issues a :class:`BackendFallbackWarning` (shown once, by the warnings
    filter) naming the cause and the fix; :func:`gpu_fallback_reason` gives
    the same text.
    """
    global _GPU_BACKEND
    with _LOCK:
        if _GPU_BACKEND is None:
            _GPU_BACKEND = _gpu_backend_status()
        name, why = _GPU_BACKEND
    if why is not None and warn:
        warnings.warn(f"sagann: GPU kernels run torch's ops (backend 'reference'), not the fused 'cuda' kernels: {why}", BackendFallbackWarning, stacklevel=2)
    return name


def gpu_fallback_reason() -> str | None:
    """Why a GPU device runs ``reference`` instead of ``cuda`` (None: it runs ``cuda``)."""
    gpu_kernel_backend(warn=False)
    return _GPU_BACKEND[1]


def count_call(backend: str) -> None:
    """Count one kernel call of ``backend`` in the active profile (``kernel_calls.<backend>``); nothing when off."""
    if profiler.enabled():
        profiler.count(CALL_COUNTER + backend, 1)


def _module(path: str) -> Callable[[], KernelBackend]:
    return lambda: importlib.import_module(path)


register_backend("reference", _module("sagann.kernels.reference"))
register_backend("cpu", _module("sagann.kernels.cpu"))  # numba: compiled lazily, on first use
register_backend("cuda", _module("sagann.kernels.cuda"))  # numba.cuda (or its simulator): compiled lazily
