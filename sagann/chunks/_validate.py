"""Checks of what a caller hands to a dataset save: the partition, features, labels, masks, edge data.

Every check raises ValueError naming the input and the fix before anything
is written; the arrays come back as numpy (torch tensors are accepted).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from sagann.chunks.files import BLOCK_BYTES
from sagann.chunks.layout import MASK_NAME
from sagann.chunks.partition import GraphPartition
from sagann.chunks.types import EdgeChunk

__all__ = [
    "check_edge_data",
    "check_features",
    "check_labels",
    "check_mask_name",
    "check_masks",
    "check_partition",
    "non_negative_int",
    "to_numpy",
]


def to_numpy(a: Any) -> np.ndarray:
    """numpy view of a numpy array or torch tensor (bfloat16 widened to float32)."""
    if hasattr(a, "detach"):  # torch.Tensor, without importing torch
        t = a.detach().cpu()
        if str(t.dtype) == "torch.bfloat16":
            t = t.float()
        return t.numpy()
    return np.asarray(a)


def non_negative_int(name: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
        raise ValueError(f"{name} must be a non-negative int, got {v!r}")
    return int(v)


def check_mask_name(name: Any) -> None:
    """A mask name is also part of a file name (``mask_<name>.npy``)."""
    if not isinstance(name, str) or not MASK_NAME.match(name):
        raise ValueError(f"mask name {name!r} is not allowed; use 1-64 letters, digits, '_' or '-' (e.g. 'train')")


def _first_bad_row(a: np.ndarray) -> int | None:
    """First row holding NaN or Inf, scanning in blocks (no [N, F] temporary)."""
    rows = a.shape[0]
    row_bytes = max(1, a.itemsize * int(np.prod(a.shape[1:], dtype=np.int64)))
    step = max(1, BLOCK_BYTES // row_bytes)
    for r0 in range(0, rows, step):
        block = a[r0 : r0 + step].reshape(min(step, rows - r0), -1)
        ok = np.isfinite(block).all(axis=1)
        if not ok.all():
            return r0 + int(np.argmin(ok))
    return None


def check_features(x: Any, n: int) -> np.ndarray | None:
    if x is None:
        return None
    x = to_numpy(x)
    if x.ndim != 2:
        hint = " (use x.reshape(-1, 1) for one feature per vertex)" if x.ndim == 1 else ""
        raise ValueError(f"x must have shape [N, F] = [{n}, F], got {list(x.shape)}{hint}")
    if x.shape[0] != n:
        raise ValueError(f"x has {x.shape[0]} rows but the partition has {n} vertices; pass one feature row per vertex")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"x must be floating point, got dtype {x.dtype}; convert with x.astype(np.float32)")
    bad = _first_bad_row(x)
    if bad is not None:
        raise ValueError(f"x has a NaN or Inf in row {bad} (vertex {bad}); clean the features (e.g. np.nan_to_num) before saving")
    return x


def check_labels(y: Any, n: int, num_classes: Any) -> tuple[np.ndarray | None, int | None]:
    if y is None:
        if num_classes is not None:
            raise ValueError("num_classes was given without y; pass the labels y too, or drop num_classes")
        return None, None
    y = to_numpy(y)
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"y must have shape [N] = [{n}], got {list(y.shape)}; pass one class id per vertex (not one-hot)")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"y must hold integer class ids, got dtype {y.dtype}; convert with y.astype(np.int64)")
    if n and int(y.min()) < 0:
        row = int(np.argmin(y))
        raise ValueError(f"y has a negative class id ({int(y[row])}) in row {row}; class ids must lie in [0, num_classes)")
    top = int(y.max()) + 1 if n else 0
    if num_classes is None:
        num_classes = top
    elif isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 0:
        raise ValueError(f"num_classes must be a non-negative int, got {num_classes!r}")
    elif top > num_classes:
        row = int(np.argmax(y))
        raise ValueError(f"y has class id {top - 1} in row {row} but num_classes={num_classes}; pass num_classes={top} or fix the labels")
    return y, int(num_classes)


def check_masks(masks: Any, n: int) -> dict[str, np.ndarray]:
    if masks is None:
        return {}
    if not isinstance(masks, dict):
        raise ValueError(f"masks must be a dict name -> bool [N] array, got {type(masks).__name__}")
    out = {}
    for name, m in masks.items():
        check_mask_name(name)
        m = to_numpy(m)
        if m.dtype != np.bool_:
            raise ValueError(f"mask {name!r} must be bool, got dtype {m.dtype}; for an index list use m = np.zeros({n}, bool); m[idx] = True")
        if m.shape != (n,):
            raise ValueError(f"mask {name!r} must have shape [N] = [{n}], got {list(m.shape)}")
        out[name] = m
    return out


def check_edge_data(edge_data: Any, e: int) -> np.ndarray | None:
    if edge_data is None:
        return None
    d = to_numpy(edge_data)
    if d.ndim not in (1, 2) or d.shape[0] != e:
        raise ValueError(f"edge_data must have shape [E] or [E, k] with E={e} (one row per edge, in edge_index order), got {list(d.shape)}")
    if not np.issubdtype(d.dtype, np.floating):
        raise ValueError(f"edge_data must be floating point, got dtype {d.dtype}; convert with .astype(np.float32)")
    bad = _first_bad_row(d)
    if bad is not None:
        raise ValueError(f"edge_data has a NaN or Inf in row {bad} (edge {bad}); clean it before saving")
    return d


def check_partition(p: Any) -> list[EdgeChunk]:
    """The partition's sub-chunks, once its bounds, degrees and edge count agree."""
    if not isinstance(p, GraphPartition):
        raise ValueError(f"partition must be a GraphPartition (from partition_graph), got {type(p).__name__}")
    n, bounds = p.num_vertices, np.asarray(p.bounds)
    if bounds.ndim != 1 or bounds.shape[0] < 2 or bounds[0] != 0 or bounds[-1] != n or np.any(np.diff(bounds) < 0):
        raise ValueError(f"partition.bounds must run non-decreasing from 0 to {n}; rebuild it with partition_graph")
    if np.shape(p.in_degree) != (n,):
        raise ValueError(f"partition.in_degree must have shape [{n}], got {list(np.shape(p.in_degree))}")
    subs = list(p.sub_chunks())
    total = sum(c.nnz for c in subs)
    if total != p.num_edges:
        raise ValueError(f"partition holds {total} edges in its sub-chunks but num_edges={p.num_edges}; rebuild it with partition_graph")
    return subs
