"""Scatter / ApplyEdge / Gather kernels over one sub-chunk.

``gspmm`` (message op x reducer, one row per destination) and ``gsddmm``
(one row per edge) dispatch to a backend: ``"reference"`` (torch ops, the
oracle), and the fused backends registered in ``_BACKENDS``.
"""
from __future__ import annotations

import torch

from sagann.kernels import reference
from sagann.kernels.graph import ChunkTensors
from sagann.kernels.reference import MESSAGE_OPS, REDUCERS

__all__ = ["ChunkTensors", "MESSAGE_OPS", "REDUCERS", "gspmm", "gsddmm", "available_backends"]

_BACKENDS = {"reference": reference}


def _backend(name: str):
    if name == "cpu" and "cpu" not in _BACKENDS:
        from sagann.kernels import cpu  # numba: compiled lazily, on first use

        _BACKENDS["cpu"] = cpu
    if name == "cuda" and "cuda" not in _BACKENDS:
        from sagann.kernels import cuda  # numba.cuda (or its simulator): compiled lazily, on first use

        _BACKENDS["cuda"] = cuda
    if name not in _BACKENDS:
        known = ", ".join(available_backends())
        raise ValueError(f"unknown kernel backend {name!r}; known backends: {known}")
    return _BACKENDS[name]


def available_backends() -> list[str]:
    return ["reference", "cpu", "cuda"]


def gspmm(
    g: ChunkTensors,
    op: str,
    reduce: str,
    src: torch.Tensor | None = None,
    edge: torch.Tensor | None = None,
    dst: torch.Tensor | None = None,
    backend: str = "reference",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Fused Gather(ApplyEdge(Scatter)) over one sub-chunk, autograd-aware.

    Returns ``(out [num_dst, d], arg)``; ``arg`` is the ``[num_dst, d]`` CSC
    position of each max/min winner (-1 for empty rows), None for sum/mean.
    """
    return _backend(backend).gspmm(g, op, reduce, src=src, edge=edge, dst=dst)


def gsddmm(
    g: ChunkTensors,
    op: str,
    src: torch.Tensor | None = None,
    edge: torch.Tensor | None = None,
    dst: torch.Tensor | None = None,
    backend: str = "reference",
) -> torch.Tensor:
    """Per-edge ApplyEdge of a builtin op, ``[nnz, d]`` in CSC order, autograd-aware."""
    return _backend(backend).gsddmm(g, op, src=src, edge=edge, dst=dst)
