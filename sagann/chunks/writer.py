"""Writing a dataset directory (the format is in :mod:`sagann.chunks.layout`).

A save (:class:`DatasetWriter`, which :func:`save_dataset` uses too) writes
everything into a temp directory next to the target and renames it into
place when complete (see :mod:`sagann.chunks.files`), so a crashed save
never leaves a loadable dataset.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from sagann.version import __version__
from sagann.chunks._validate import (
    check_edge_data,
    check_features,
    check_labels,
    check_mask_name,
    check_masks,
    check_partition,
    non_negative_int,
)
from sagann.chunks.files import (
    BLOCK_BYTES,
    Spool,
    check_target,
    clean_stale,
    fsync_dir,
    make_temp_dir,
    swap_into_place,
    write_manifest,
    write_npy,
)
from sagann.chunks.layout import EDGE_FILES, FLOAT_DTYPES, FORMAT_VERSION, INDEX_COLUMNS
from sagann.chunks.partition import GraphPartition
from sagann.chunks.types import ChunkId, EdgeChunk

__all__ = ["DatasetWriter", "save_dataset"]


def _stored_float(a: np.ndarray) -> np.dtype:
    """float16 and float32 are kept; wider floats are stored as float32."""
    return a.dtype if a.dtype.name in FLOAT_DTYPES else np.dtype(np.float32)


def _row_blocks(a: np.ndarray, dtype: np.dtype) -> Iterator[np.ndarray]:
    """``a`` cast to ``dtype`` in row blocks of about 16 MiB."""
    rows = a.shape[0]
    row_bytes = max(1, np.dtype(dtype).itemsize * int(np.prod(a.shape[1:], dtype=np.int64)))
    step = max(1, BLOCK_BYTES // row_bytes)
    for r0 in range(0, rows, step):
        yield a[r0 : r0 + step]


class DatasetWriter:
    """Write a dataset piece by piece into a temp directory; rename it into place when complete.

    Add sub-chunks in ``GraphPartition.sub_chunks()`` order (by (i, j), then
    sub) with :meth:`add_sub_chunk`, write ``in_degree`` and any vertex or
    edge data, then leave the ``with`` block: the manifest is written last
    and the directory renamed to ``path``. An exception inside the block (or
    :meth:`abort`) removes the temp directory, so nothing partial ever
    appears at ``path``; a killed process leaves only ``.<name>.tmp-<pid>-*``,
    which the next writer for the same path removes once that pid is dead.

    Edge arrays and the chunk index are spooled to scratch files as they
    arrive (their lengths are known only at the end) and written behind
    their .npy header at commit, so memory stays at one sub-chunk whatever
    the graph size. The writer checks sizes and order, not values: callers
    validate ids, features and labels.

    Args:
        path: the dataset directory to create (its parent is created).
        num_vertices, num_edges: N and E of the whole graph.
        bounds: the P + 1 interval boundaries.
        sub_chunk_nnz: the bound the sub-chunks were cut with (recorded).
        overwrite: replace an existing dataset at ``path`` once the new one is complete.
    """

    def __init__(self, path, num_vertices: int, num_edges: int, bounds, sub_chunk_nnz: int, overwrite: bool = False):
        self.path = Path(os.path.abspath(os.fspath(path)))
        self.num_vertices = non_negative_int("num_vertices", num_vertices)
        self.num_edges = non_negative_int("num_edges", num_edges)
        self.bounds = np.asarray(bounds, dtype=np.int64)
        n, b = self.num_vertices, self.bounds
        if b.ndim != 1 or b.shape[0] < 2 or b[0] != 0 or b[-1] != n or np.any(np.diff(b) < 0):
            raise ValueError(f"bounds must run non-decreasing from 0 to num_vertices={n} (P + 1 entries); use balanced_bounds")
        self.sub_chunk_nnz = non_negative_int("sub_chunk_nnz", sub_chunk_nnz)
        if self.sub_chunk_nnz < 1:
            raise ValueError("sub_chunk_nnz must be >= 1")
        self.overwrite = bool(overwrite)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        clean_stale(self.path)
        check_target(self.path, self.overwrite)
        self.tmp = make_temp_dir(self.path)
        self._files: dict[str, dict] = {}
        self._meta: dict[str, Any] = {"features": None, "labels": None, "edge_data": None, "vertex_order": None}
        self._masks: list[str] = []
        self._last: ChunkId | None = None
        self._sizes = dict.fromkeys(("edge", "dst_ptr", "src_rows", "src_ptr"), 0)
        self._state = "open"
        try:
            self._spools = {name: Spool(self.tmp / f"{name}.spool", dtype) for name, (dtype, _, _) in EDGE_FILES.items()}
            self._index = Spool(self.tmp / "chunk_index.spool", np.int64)
        except BaseException:
            self.abort()
            raise

    @property
    def num_chunks(self) -> int:
        return int(self.bounds.shape[0] - 1)

    @property
    def scratch_dir(self) -> Path:
        """A directory inside the temp directory for the caller's temporaries, removed at commit or abort."""
        d = self.tmp / "scratch"
        d.mkdir(exist_ok=True)
        return d

    def __enter__(self) -> "DatasetWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        elif self._state == "open":
            self.commit()

    def _require_open(self) -> None:
        if self._state != "open":
            raise ValueError(f"this DatasetWriter for {self.path} is already {self._state}; open a new one")

    def add_sub_chunk(self, c: EdgeChunk) -> None:
        """Append one sub-chunk; they must come in (i, j, sub) order with subs 0, 1, ..."""
        self._require_open()
        i, j, sub = c.id
        p, last = self.num_chunks, self._last
        if not (0 <= i < p and 0 <= j < p):
            raise ValueError(f"sub-chunk {c.id!r} is outside the {p} x {p} grid of this dataset")
        if last is None or (i, j) != (last.i, last.j):
            in_order = sub == 0 and (last is None or (i, j) > (last.i, last.j))
        else:
            in_order = sub == last.sub + 1
        if not in_order:
            raise ValueError(f"sub-chunk {c.id!r} comes after {last!r}; add sub-chunks in GraphPartition.sub_chunks() order")
        if c.src_start != self.bounds[i] or c.dst_start != self.bounds[j]:
            raise ValueError(f"sub-chunk {c.id!r} starts at vertices ({c.src_start}, {c.dst_start}) but the bounds put E[{i},{j}] at ({self.bounds[i]}, {self.bounds[j]})")
        if c.dst_offset + c.num_dst > self.bounds[j + 1] - self.bounds[j]:
            raise ValueError(f"sub-chunk {c.id!r} covers rows past the end of interval {j}")
        if self._sizes["edge"] + c.nnz > self.num_edges:
            raise ValueError(f"sub-chunk {c.id!r} brings the edge count past num_edges={self.num_edges}")
        s = self._sizes
        row = (i, j, sub, c.dst_offset, c.nnz, c.num_dst, c.num_src, s["edge"], s["dst_ptr"], s["src_rows"], s["src_ptr"])
        for name, spool in self._spools.items():
            spool.write(getattr(c, name))
        self._index.write(np.asarray(row, dtype=np.int64))
        s["edge"] += c.nnz
        s["dst_ptr"] += c.num_dst + 1
        s["src_rows"] += c.num_src
        s["src_ptr"] += c.num_src + 1
        self._last = c.id

    def _write(self, name: str, dtype, data, shape) -> None:
        """One whole file: an array (written in row blocks) or, with ``shape``, an iterable of C-order pieces."""
        self._require_open()
        if name in self._files:
            raise ValueError(f"{name} was already written to this dataset")
        if shape is None:
            shape, pieces = data.shape, _row_blocks(data, dtype)
        else:
            pieces = data
        self._files[name] = write_npy(self.tmp, name, dtype, tuple(shape), pieces)

    def _rows(self, what: str, shape, rows: int) -> tuple:
        if shape[0] != rows:
            raise ValueError(f"{what} must have {rows} rows, got shape {list(shape)}")
        return tuple(int(s) for s in shape)

    def write_in_degree(self, data, shape=None) -> None:
        """in_degree [N] int64 (an array, or an iterable of pieces with ``shape``; so are the others)."""
        self._rows("in_degree", data.shape if shape is None else shape, self.num_vertices)
        self._write("in_degree.npy", np.int64, data, shape)

    def write_features(self, data, shape=None, dtype=None) -> None:
        """Features [N, F], stored as float16 or float32 (default: as :func:`save_dataset` stores ``data``)."""
        full = self._rows("features", data.shape if shape is None else shape, self.num_vertices)
        dtype = np.dtype(dtype) if dtype is not None else _stored_float(data)
        if len(full) != 2 or dtype.name not in FLOAT_DTYPES:
            raise ValueError(f"features must be [N, F] float16/float32, got {dtype} {list(full)}")
        self._write("features.npy", dtype, data, shape)
        self._meta["features"] = {"shape": list(full), "dtype": dtype.name}

    def write_labels(self, data, num_classes: int, shape=None) -> None:
        """Class ids [N] int64, all in ``[0, num_classes)``."""
        full = self._rows("labels", data.shape if shape is None else shape, self.num_vertices)
        k = non_negative_int("num_classes", num_classes)
        if len(full) != 1:
            raise ValueError(f"labels must have shape [N], got {list(full)}")
        self._write("labels.npy", np.int64, data, shape)
        self._meta["labels"] = {"shape": list(full), "dtype": "int64", "num_classes": k}

    def write_mask(self, name: str, data) -> None:
        """A bool [N] mask stored as ``mask_<name>.npy``."""
        check_mask_name(name)
        self._rows(f"mask {name!r}", data.shape, self.num_vertices)
        self._write(f"mask_{name}.npy", np.bool_, data, None)
        self._masks.append(name)

    def write_edge_data(self, data, shape=None, dtype=None) -> None:
        """Edge data [E] or [E, k] in the order of the original edge list."""
        full = self._rows("edge_data", data.shape if shape is None else shape, self.num_edges)
        dtype = np.dtype(dtype) if dtype is not None else _stored_float(data)
        if len(full) not in (1, 2) or dtype.name not in FLOAT_DTYPES:
            raise ValueError(f"edge_data must be [E] or [E, k] float16/float32, got {dtype} {list(full)}")
        self._write("edge_data.npy", dtype, data, shape)
        self._meta["edge_data"] = {"shape": list(full), "dtype": dtype.name}

    def write_vertex_order(self, data, method: str, shape=None) -> None:
        """``order[k]`` = the input id of dataset vertex k (a permutation of [0, N)), from reordering by ``method``."""
        full = self._rows("vertex_order", data.shape if shape is None else shape, self.num_vertices)
        if len(full) != 1:
            raise ValueError(f"vertex_order must have shape [N], got {list(full)}")
        self._write("vertex_order.npy", np.int64, data, shape)
        self._meta["vertex_order"] = {"shape": list(full), "dtype": "int64", "method": str(method)}

    def commit(self) -> Path:
        """Write the spooled files and the manifest, then rename the directory into place."""
        self._require_open()
        try:
            if self._sizes["edge"] != self.num_edges:
                raise ValueError(f"the sub-chunks added hold {self._sizes['edge']} edges but num_edges={self.num_edges}; add every sub-chunk")
            if "in_degree.npy" not in self._files:
                raise ValueError("in_degree was not written; call write_in_degree before committing")
            for name, spool in self._spools.items():
                self._files[f"{name}.npy"] = write_npy(self.tmp, f"{name}.npy", spool.dtype, (spool.count,), spool.blocks())
                spool.remove()
            rows = self._index.count // len(INDEX_COLUMNS)
            self._files["chunk_index.npy"] = write_npy(self.tmp, "chunk_index.npy", np.int64, (rows, len(INDEX_COLUMNS)), self._index.blocks())
            self._index.remove()
            shutil.rmtree(self.tmp / "scratch", ignore_errors=True)
            manifest = {
                "format_version": FORMAT_VERSION,
                "num_vertices": self.num_vertices,
                "num_edges": self.num_edges,
                "num_chunks": self.num_chunks,
                "bounds": [int(v) for v in self.bounds],
                "sub_chunk_nnz": self.sub_chunk_nnz,
                "chunk_index_columns": list(INDEX_COLUMNS),
                "files": self._files,
                **self._meta,
                "masks": list(self._masks),
                "created_by": f"sagann {__version__}",
            }
            write_manifest(self.tmp, manifest)  # last: a directory without it is never a dataset
            fsync_dir(self.tmp)
            if not self.overwrite and (self.path.exists() or self.path.is_symlink()):
                raise ValueError(f"{self.path} appeared while this dataset was being written; pass overwrite=True to replace it or choose another path")
            swap_into_place(self.tmp, self.path)
        except BaseException:
            self.abort()
            raise
        self._state = "committed"
        return self.path

    def abort(self) -> None:
        """Remove the temp directory; nothing is left at ``path``."""
        if self._state == "committed":
            return
        self._state = "aborted"
        for spool in (*getattr(self, "_spools", {}).values(), getattr(self, "_index", None)):
            if spool is not None:
                spool.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def save_dataset(
    path,
    partition: GraphPartition,
    x=None,
    y=None,
    masks: dict | None = None,
    edge_data=None,
    num_classes: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``partition`` and its vertex/edge data as a dataset directory.

    Args:
        path: the directory to create (its parent is created if missing).
        partition: from :func:`partition_graph`.
        x: features [N, F], floating (float64 is stored as float32).
        y: integer class ids [N]; ``num_classes`` defaults to ``max(y) + 1``.
        masks: name -> bool [N], stored as ``mask_<name>.npy``.
        edge_data: [E] or [E, k] floats in the order of the original edge_index.
        overwrite: replace an existing dataset at ``path`` (only once the new
            one is complete).

    Returns the dataset path. Raises ValueError, before writing anything,
    when an input is invalid or ``path`` exists and ``overwrite`` is False.
    """
    target = Path(os.path.abspath(os.fspath(path)))
    check_target(target, overwrite)
    subs = check_partition(partition)
    n, e = partition.num_vertices, partition.num_edges
    x = check_features(x, n)
    y, num_classes = check_labels(y, n, num_classes)
    masks = check_masks(masks, n)
    edge_data = check_edge_data(edge_data, e)
    with DatasetWriter(target, n, e, partition.bounds, partition.sub_chunk_nnz, overwrite=overwrite) as w:
        for c in subs:
            w.add_sub_chunk(c)
        w.write_in_degree(np.asarray(partition.in_degree))
        if x is not None:
            w.write_features(x)
        if y is not None:
            w.write_labels(y, num_classes)
        for name, m in masks.items():
            w.write_mask(name, m)
        if edge_data is not None:
            w.write_edge_data(edge_data)
    return w.path
