"""Vertex reorderings applied before partitioning, chosen by name.

Every function returns ``order``: ``order[k]`` is the input id of the vertex
that gets id ``k`` (so ``x_new = x[order]`` and ``edge_new = inverse[edge]``).
``degree`` needs only the in-degrees; ``rcm`` and ``metis`` need the whole
graph in memory, which the caller checks against its budget with
:data:`IN_MEMORY_BYTES_PER_EDGE`.
"""
from __future__ import annotations

import warnings
from enum import Enum

import numpy as np

__all__ = ["IN_MEMORY_BYTES_PER_EDGE", "Reorder", "degree_order", "inverse_permutation", "metis_order", "rcm_order"]


class Reorder(str, Enum):
    """How vertices are renumbered before the 2D partition."""

    NONE = "none"
    DEGREE = "degree"  # by descending in-degree (ties by id)
    RCM = "rcm"  # reverse Cuthill-McKee (scipy), for bandwidth
    METIS = "metis"  # METIS parts (pymetis), renumbered part by part

    @classmethod
    def parse(cls, name) -> "Reorder":
        if isinstance(name, cls):
            return name
        try:
            return cls(str(name).lower())
        except ValueError:
            known = ", ".join(r.value for r in cls)
            raise ValueError(f"unknown reorder {name!r}; known: {known}") from None


# Peak bytes per edge of the in-memory orderings, the int64 src/dst included:
# measured as RSS growth on an R-MAT graph (200k vertices, 3M edges) and
# rounded up: rcm 44 -> 64; metis 237 -> 256 (METIS keeps its own copies of
# the symmetrised graph for every coarsening level).
IN_MEMORY_BYTES_PER_EDGE = {Reorder.RCM: 64, Reorder.METIS: 256}


def inverse_permutation(order: np.ndarray) -> np.ndarray:
    """``inv[order[k]] = k``."""
    inv = np.empty_like(order)
    inv[order] = np.arange(order.shape[0], dtype=order.dtype)
    return inv


def degree_order(in_degree: np.ndarray) -> np.ndarray:
    """Vertices by descending in-degree; equal degrees keep ascending ids."""
    return np.argsort(-np.asarray(in_degree, dtype=np.int64), kind="stable").astype(np.int64)


def rcm_order(src: np.ndarray, dst: np.ndarray, num_vertices: int) -> np.ndarray:
    """Reverse Cuthill-McKee of the symmetrised graph (scipy.sparse.csgraph)."""
    try:
        from scipy.sparse import csr_matrix
        from scipy.sparse.csgraph import reverse_cuthill_mckee
    except ImportError:
        raise ValueError("--reorder rcm needs scipy (pip install scipy); use --reorder degree or metis instead") from None
    n = int(num_vertices)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    idx = np.int32 if n < 2**31 else np.int64
    a = csr_matrix((np.ones(src.shape[0], dtype=np.int8), (src.astype(idx), dst.astype(idx))), shape=(n, n))
    return np.asarray(reverse_cuthill_mckee(a, symmetric_mode=False), dtype=np.int64)


def metis_order(src: np.ndarray, dst: np.ndarray, num_vertices: int, num_parts: int, vertex_weights: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """METIS parts of the symmetrised, loop-free, de-duplicated graph (pymetis).

    Returns ``(order, bounds)``: vertices renumbered part by part (ascending
    ids within a part) and the ``[P + 1]`` part boundaries in the new ids,
    which serve as the interval bounds (None when there is nothing to cut:
    one part, or no edges between distinct vertices).
    """
    n, p = int(num_vertices), int(num_parts)
    keep = src != dst
    if p == 1 or n == 0 or not keep.any():  # nothing to cut: keep the ids, balanced bounds
        return np.arange(n, dtype=np.int64), None
    try:
        import pymetis
    except ImportError:
        raise ValueError("--reorder metis needs pymetis (pip install pymetis, or the 'metis' extra); use --reorder degree or rcm instead") from None
    s, d = src[keep], dst[keep]
    key = np.concatenate([s * n + d, d * n + s])
    del s, d, keep
    key.sort()
    distinct = np.empty(key.shape[0], dtype=bool)
    distinct[0] = True
    np.not_equal(key[1:], key[:-1], out=distinct[1:])
    key = key[distinct]
    del distinct
    idx = np.int32 if n < 2**31 and key.shape[0] < 2**31 else np.int64
    starts = np.zeros(n + 1, dtype=idx)
    np.cumsum(np.bincount(key // n, minlength=n), out=starts[1:])
    adjacent = (key % n).astype(idx)
    del key
    weights = np.asarray(vertex_weights, dtype=idx)
    options = pymetis.Options(seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        if hasattr(pymetis, "CSRAdjacency"):
            result = pymetis.part_graph(p, pymetis.CSRAdjacency(starts, adjacent), vweights=weights, options=options)
        else:  # pymetis < 2025.2
            result = pymetis.part_graph(p, xadj=starts, adjncy=adjacent, vweights=weights, options=options)
    parts = np.asarray(result[1], dtype=np.int64)
    order = np.argsort(parts, kind="stable").astype(np.int64)
    bounds = np.zeros(p + 1, dtype=np.int64)
    np.cumsum(np.bincount(parts, minlength=p), out=bounds[1:])
    return order, bounds
