"""A partitioned graph on disk: a directory of memory-mappable ``.npy`` files.

Layout of a dataset directory (format version 1)::

    manifest.json      written last; see below
    chunk_index.npy    int64 [S, 11], one row per sub-chunk (columns below)
    dst_ptr.npy        int32, the sub-chunks' dst_ptr arrays, concatenated
    dst_idx.npy        int32 [E]  -+
    src_idx.npy        int32 [E]   | concatenated per sub-chunk, in the
    src_perm.npy       int32 [E]   | same order: they share one offset
    edge_ids.npy       int64 [E]  -+
    src_rows.npy       int32, concatenated src_rows
    src_ptr.npy        int32, concatenated src_ptr
    in_degree.npy      int64 [N]
    features.npy       float32 | float16 [N, F]   (optional)
    labels.npy         int64 [N]                  (optional)
    mask_<name>.npy    bool [N]                   (optional, one per mask)
    edge_data.npy      float32 | float16 [E] or [E, k], in global edge order
    vertex_order.npy   int64 [N]: input id of each vertex (optional, after reordering)

Sub-chunks are stored in ``GraphPartition.sub_chunks()`` order (by (i, j),
then sub). The columns of ``chunk_index.npy`` are :data:`INDEX_COLUMNS`:
``i, j, sub, dst_offset`` identify the sub-chunk; ``nnz, num_dst, num_src``
are its sizes (stored explicitly); ``edge_start`` is its offset into the four
per-edge files, ``dst_ptr_start`` into dst_ptr.npy (``num_dst + 1``
entries), ``src_rows_start`` into src_rows.npy (``num_src`` entries) and
``src_ptr_start`` into src_ptr.npy (``num_src + 1`` entries). Offsets must
be the exclusive prefix sums of the sizes: the files hold no gaps.

``manifest.json`` holds ``format_version``, ``num_vertices``, ``num_edges``,
``num_chunks`` (P), ``bounds`` (P + 1 ints), ``sub_chunk_nnz``,
``chunk_index_columns``, ``files`` ({name: {sha256, shape, dtype, nbytes}}
where ``nbytes`` is the whole file's size), ``features`` / ``labels`` /
``edge_data`` (shape and dtype, or null; labels add ``num_classes``),
``masks`` (names), ``created_by`` and, optionally, ``vertex_order`` (shape,
dtype and the reordering ``method``, or null; absent in older datasets).
With a vertex order, dataset vertex k is input vertex ``vertex_order[k]``:
features and labels are stored in dataset order, edge ids stay the
positions in the input edge list.

A save (:class:`DatasetWriter`, which :func:`save_dataset` uses too) writes
everything into ``.<name>.tmp-<pid>-<random>`` next to the target, fsyncs
every file, writes the manifest last and renames the directory into place,
so a crashed save never leaves a loadable dataset; the next save to the same
path removes the temp directories of dead processes.
With ``overwrite=True`` the old directory is renamed aside only once the new
one is complete, then removed (restored if the final rename fails).

Loading always checks the manifest, file sizes, .npy headers and the chunk
index (cheap); ``verify=True`` also streams every file through sha256. With
``mmap=True`` nothing else is read: sub-chunk arrays are slices of read-only
memory maps.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import psutil

from sagann.chunks.partition import GraphPartition
from sagann.chunks.types import ChunkId, EdgeChunk

__all__ = [
    "FORMAT_VERSION",
    "INDEX_COLUMNS",
    "Dataset",
    "DatasetError",
    "DatasetWriter",
    "save_dataset",
    "load_dataset",
    "verify_dataset",
]

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
INDEX_COLUMNS = (
    "i",
    "j",
    "sub",
    "dst_offset",
    "nnz",
    "num_dst",
    "num_src",
    "edge_start",
    "dst_ptr_start",
    "src_rows_start",
    "src_ptr_start",
)
_COL = {name: k for k, name in enumerate(INDEX_COLUMNS)}
# concatenated edge arrays: file dtype, offset column, size of one sub-chunk's piece
_EDGE_FILES = {
    "dst_ptr": (np.int32, "dst_ptr_start", lambda c: c.num_dst + 1),
    "dst_idx": (np.int32, "edge_start", lambda c: c.nnz),
    "src_idx": (np.int32, "edge_start", lambda c: c.nnz),
    "src_rows": (np.int32, "src_rows_start", lambda c: c.num_src),
    "src_ptr": (np.int32, "src_ptr_start", lambda c: c.num_src + 1),
    "src_perm": (np.int32, "edge_start", lambda c: c.nnz),
    "edge_ids": (np.int64, "edge_start", lambda c: c.nnz),
}
_FLOAT_DTYPES = ("float16", "float32")
_MASK_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_HASH_BLOCK = 1 << 22  # 4 MiB
_WRITE_BLOCK = 1 << 24  # bytes per block when converting and writing rows


class DatasetError(ValueError):
    """A dataset directory is missing, incomplete, corrupt or inconsistent."""


@dataclass(frozen=True, eq=False)
class Dataset:
    """A loaded dataset; arrays are read-only memory maps when loaded with mmap=True.

    Shapes:
        x: [N, F] float32/float16 or None; y: [N] int64 or None;
        masks: name -> [N] bool; edge_data: [E] or [E, k] or None;
        vertex_order: [N] int64 (input id of each vertex) or None.
    """

    path: Path
    manifest: dict
    partition: GraphPartition
    x: np.ndarray | None
    y: np.ndarray | None
    masks: dict[str, np.ndarray]
    edge_data: np.ndarray | None
    vertex_order: np.ndarray | None = None

    @property
    def num_classes(self) -> int | None:
        labels = self.manifest.get("labels")
        return None if labels is None else int(labels["num_classes"])


# ---------------------------------------------------------------- input checks


def _to_numpy(a: Any) -> np.ndarray:
    """numpy view of a numpy array or torch tensor (bfloat16 widened to float32)."""
    if hasattr(a, "detach"):  # torch.Tensor, without importing torch
        t = a.detach().cpu()
        if str(t.dtype) == "torch.bfloat16":
            t = t.float()
        return t.numpy()
    return np.asarray(a)


def _first_bad_row(a: np.ndarray) -> int | None:
    """First row holding NaN or Inf, scanning in blocks (no [N, F] temporary)."""
    rows = a.shape[0]
    row_bytes = max(1, a.itemsize * int(np.prod(a.shape[1:], dtype=np.int64)))
    step = max(1, _WRITE_BLOCK // row_bytes)
    for r0 in range(0, rows, step):
        block = a[r0 : r0 + step].reshape(min(step, rows - r0), -1)
        ok = np.isfinite(block).all(axis=1)
        if not ok.all():
            return r0 + int(np.argmin(ok))
    return None


def _check_features(x: Any, n: int) -> np.ndarray | None:
    if x is None:
        return None
    x = _to_numpy(x)
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


def _check_labels(y: Any, n: int, num_classes: Any) -> tuple[np.ndarray | None, int | None]:
    if y is None:
        if num_classes is not None:
            raise ValueError("num_classes was given without y; pass the labels y too, or drop num_classes")
        return None, None
    y = _to_numpy(y)
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


def _check_masks(masks: Any, n: int) -> dict[str, np.ndarray]:
    if masks is None:
        return {}
    if not isinstance(masks, dict):
        raise ValueError(f"masks must be a dict name -> bool [N] array, got {type(masks).__name__}")
    out = {}
    for name, m in masks.items():
        if not isinstance(name, str) or not _MASK_NAME.match(name):
            raise ValueError(f"mask name {name!r} is not allowed; use 1-64 letters, digits, '_' or '-' (e.g. 'train')")
        m = _to_numpy(m)
        if m.dtype != np.bool_:
            raise ValueError(f"mask {name!r} must be bool, got dtype {m.dtype}; for an index list use m = np.zeros({n}, bool); m[idx] = True")
        if m.shape != (n,):
            raise ValueError(f"mask {name!r} must have shape [N] = [{n}], got {list(m.shape)}")
        out[name] = m
    return out


def _check_edge_data(edge_data: Any, e: int) -> np.ndarray | None:
    if edge_data is None:
        return None
    d = _to_numpy(edge_data)
    if d.ndim not in (1, 2) or d.shape[0] != e:
        raise ValueError(f"edge_data must have shape [E] or [E, k] with E={e} (one row per edge, in edge_index order), got {list(d.shape)}")
    if not np.issubdtype(d.dtype, np.floating):
        raise ValueError(f"edge_data must be floating point, got dtype {d.dtype}; convert with .astype(np.float32)")
    bad = _first_bad_row(d)
    if bad is not None:
        raise ValueError(f"edge_data has a NaN or Inf in row {bad} (edge {bad}); clean it before saving")
    return d


def _stored_float(a: np.ndarray) -> np.dtype:
    """float16 and float32 are kept; wider floats are stored as float32."""
    return a.dtype if a.dtype.name in _FLOAT_DTYPES else np.dtype(np.float32)


def _check_partition(p: Any) -> list[EdgeChunk]:
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


def _check_target(target: Path, overwrite: bool) -> None:
    if not target.name or target.name in (".", ".."):
        raise ValueError(f"dataset path {str(target)!r} has no directory name; pass a path such as 'data/mygraph'")
    if not (target.exists() or target.is_symlink()):
        return
    if not overwrite:
        raise ValueError(f"{target} already exists; pass overwrite=True to replace it or choose another path")
    if target.is_symlink() or not target.is_dir():
        raise ValueError(f"{target} exists and is not a directory; refusing to replace it, remove it or choose another path")
    if any(target.iterdir()) and not (target / MANIFEST).is_file():
        raise ValueError(f"{target} is a non-empty directory without {MANIFEST} (not a sagann dataset); refusing to replace it, choose another path")


# ---------------------------------------------------------------- writing


class _HashingWriter:
    """File wrapper that hashes and counts every byte written."""

    def __init__(self, f):
        self._f = f
        self.sha = hashlib.sha256()
        self.nbytes = 0

    def write(self, data) -> int:
        mv = memoryview(data).cast("B")
        self.sha.update(mv)
        self._f.write(mv)
        self.nbytes += len(mv)
        return len(mv)


def _row_blocks(a: np.ndarray, dtype: np.dtype) -> Iterator[np.ndarray]:
    """``a`` cast to ``dtype`` in row blocks of about 16 MiB."""
    rows = a.shape[0]
    row_bytes = max(1, np.dtype(dtype).itemsize * int(np.prod(a.shape[1:], dtype=np.int64)))
    step = max(1, _WRITE_BLOCK // row_bytes)
    for r0 in range(0, rows, step):
        yield a[r0 : r0 + step]


def _write_npy(folder: Path, name: str, dtype, shape: tuple, pieces: Iterable[np.ndarray]) -> dict:
    """Stream ``pieces`` (C order) into ``folder/name`` as one .npy; fsync; return its manifest entry."""
    dtype = np.dtype(dtype)
    shape = tuple(int(s) for s in shape)
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    with open(folder / name, "wb") as raw:
        out = _HashingWriter(raw)
        np.lib.format.write_array_header_1_0(out, header)
        data_start = out.nbytes
        for piece in pieces:
            piece = np.ascontiguousarray(piece, dtype=dtype)
            out.write(piece.reshape(-1).view(np.uint8))
        raw.flush()
        os.fsync(raw.fileno())
    expected = data_start + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if out.nbytes != expected:  # a bug in the caller, not in the user's data
        raise RuntimeError(f"wrote {out.nbytes} bytes to {name}, expected {expected}")
    return {"sha256": out.sha.hexdigest(), "shape": list(shape), "dtype": dtype.name, "nbytes": out.nbytes}


class _Spool:
    """Values of one dtype appended to a scratch file, read back in blocks of ~16 MiB."""

    def __init__(self, path: Path, dtype):
        self.path = path
        self.dtype = np.dtype(dtype)
        self.count = 0
        self._f = open(path, "wb")

    def write(self, piece: np.ndarray) -> None:
        piece = np.ascontiguousarray(piece, dtype=self.dtype).reshape(-1)
        self._f.write(piece.view(np.uint8))
        self.count += int(piece.shape[0])

    def blocks(self) -> Iterator[np.ndarray]:
        self._f.close()
        step = max(1, _WRITE_BLOCK // self.dtype.itemsize)
        with open(self.path, "rb") as f:
            for start in range(0, self.count, step):
                want = min(step, self.count - start)
                block = np.fromfile(f, dtype=self.dtype, count=want)
                if block.shape[0] != want:
                    raise RuntimeError(f"scratch file {self.path} is shorter than what was written to it")
                yield block

    def remove(self) -> None:
        self._f.close()
        self.path.unlink(missing_ok=True)


def _exclusive_cumsum(sizes: np.ndarray) -> np.ndarray:
    out = np.zeros_like(sizes)
    np.cumsum(sizes[:-1], out=out[1:])
    return out


def _fill_offsets(index: np.ndarray) -> None:
    nnz, nd, ns = (index[:, _COL[c]] for c in ("nnz", "num_dst", "num_src"))
    index[:, _COL["edge_start"]] = _exclusive_cumsum(nnz)
    index[:, _COL["dst_ptr_start"]] = _exclusive_cumsum(nd + 1)
    index[:, _COL["src_rows_start"]] = _exclusive_cumsum(ns)
    index[:, _COL["src_ptr_start"]] = _exclusive_cumsum(ns + 1)


def _write_manifest(folder: Path, manifest: dict) -> None:
    with open(folder / MANIFEST, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # platforms that cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _swap_into_place(tmp: Path, target: Path) -> None:
    """Rename the finished ``tmp`` to ``target``; an old ``target`` goes only after."""
    if not (target.exists() or target.is_symlink()):
        os.rename(tmp, target)
    else:
        old = target.parent / f".{target.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
        os.rename(target, old)
        try:
            os.rename(tmp, target)
        except BaseException:
            os.rename(old, target)  # put the previous dataset back
            raise
        shutil.rmtree(old, ignore_errors=True)
    _fsync_dir(target.parent)


def _version() -> str:
    import sagann

    return f"sagann {getattr(sagann, '__version__', '0.1.0')}"


_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>[0-9]+)-[0-9a-f]+$")


def _pid_alive(pid: int) -> bool:
    """True unless ``pid`` is gone or a zombie (a killed child not yet reaped)."""
    if pid == os.getpid():
        return True
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:  # access denied: someone else's live process
        return True


def _clean_stale(target: Path) -> None:
    """Tidy what killed saves to ``target`` left behind (their directory names hold their pid).

    Temp directories of dead processes are removed. A dataset a dead process
    had set aside (``.old-``, mid-swap) is renamed back if ``target`` is
    gone, else removed.
    """
    stale = []
    for p in target.parent.iterdir():
        m = _LEFTOVER.match(p.name)
        if m and m["name"] == target.name and p.is_dir() and not p.is_symlink() and not _pid_alive(int(m["pid"])):
            stale.append((m["kind"], p))
    for kind, p in sorted(stale):  # "old" before "tmp"
        if kind == "old" and not (target.exists() or target.is_symlink()) and (p / MANIFEST).is_file():
            os.rename(p, target)
        else:
            shutil.rmtree(p, ignore_errors=True)


def _non_negative_int(name: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
        raise ValueError(f"{name} must be a non-negative int, got {v!r}")
    return int(v)


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
        self.num_vertices = _non_negative_int("num_vertices", num_vertices)
        self.num_edges = _non_negative_int("num_edges", num_edges)
        self.bounds = np.asarray(bounds, dtype=np.int64)
        n, b = self.num_vertices, self.bounds
        if b.ndim != 1 or b.shape[0] < 2 or b[0] != 0 or b[-1] != n or np.any(np.diff(b) < 0):
            raise ValueError(f"bounds must run non-decreasing from 0 to num_vertices={n} (P + 1 entries); use balanced_bounds")
        self.sub_chunk_nnz = _non_negative_int("sub_chunk_nnz", sub_chunk_nnz)
        if self.sub_chunk_nnz < 1:
            raise ValueError("sub_chunk_nnz must be >= 1")
        self.overwrite = bool(overwrite)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _clean_stale(self.path)
        _check_target(self.path, self.overwrite)
        self.tmp = self.path.parent / f".{self.path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        self.tmp.mkdir()
        self._files: dict[str, dict] = {}
        self._meta: dict[str, Any] = {"features": None, "labels": None, "edge_data": None, "vertex_order": None}
        self._masks: list[str] = []
        self._last: ChunkId | None = None
        self._sizes = dict.fromkeys(("edge", "dst_ptr", "src_rows", "src_ptr"), 0)
        self._state = "open"
        try:
            self._spools = {name: _Spool(self.tmp / f"{name}.spool", dtype) for name, (dtype, _, _) in _EDGE_FILES.items()}
            self._index = _Spool(self.tmp / "chunk_index.spool", np.int64)
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
        self._files[name] = _write_npy(self.tmp, name, dtype, tuple(shape), pieces)

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
        if len(full) != 2 or dtype.name not in _FLOAT_DTYPES:
            raise ValueError(f"features must be [N, F] float16/float32, got {dtype} {list(full)}")
        self._write("features.npy", dtype, data, shape)
        self._meta["features"] = {"shape": list(full), "dtype": dtype.name}

    def write_labels(self, data, num_classes: int, shape=None) -> None:
        """Class ids [N] int64, all in ``[0, num_classes)``."""
        full = self._rows("labels", data.shape if shape is None else shape, self.num_vertices)
        k = _non_negative_int("num_classes", num_classes)
        if len(full) != 1:
            raise ValueError(f"labels must have shape [N], got {list(full)}")
        self._write("labels.npy", np.int64, data, shape)
        self._meta["labels"] = {"shape": list(full), "dtype": "int64", "num_classes": k}

    def write_mask(self, name: str, data) -> None:
        """A bool [N] mask stored as ``mask_<name>.npy``."""
        if not isinstance(name, str) or not _MASK_NAME.match(name):
            raise ValueError(f"mask name {name!r} is not allowed; use 1-64 letters, digits, '_' or '-' (e.g. 'train')")
        self._rows(f"mask {name!r}", data.shape, self.num_vertices)
        self._write(f"mask_{name}.npy", np.bool_, data, None)
        self._masks.append(name)

    def write_edge_data(self, data, shape=None, dtype=None) -> None:
        """Edge data [E] or [E, k] in the order of the original edge list."""
        full = self._rows("edge_data", data.shape if shape is None else shape, self.num_edges)
        dtype = np.dtype(dtype) if dtype is not None else _stored_float(data)
        if len(full) not in (1, 2) or dtype.name not in _FLOAT_DTYPES:
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
                self._files[f"{name}.npy"] = _write_npy(self.tmp, f"{name}.npy", spool.dtype, (spool.count,), spool.blocks())
                spool.remove()
            rows = self._index.count // len(INDEX_COLUMNS)
            self._files["chunk_index.npy"] = _write_npy(self.tmp, "chunk_index.npy", np.int64, (rows, len(INDEX_COLUMNS)), self._index.blocks())
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
                "created_by": _version(),
            }
            _write_manifest(self.tmp, manifest)  # last: a directory without it is never a dataset
            _fsync_dir(self.tmp)
            if not self.overwrite and (self.path.exists() or self.path.is_symlink()):
                raise ValueError(f"{self.path} appeared while this dataset was being written; pass overwrite=True to replace it or choose another path")
            _swap_into_place(self.tmp, self.path)
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
                spool._f.close()
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
    _check_target(target, overwrite)
    subs = _check_partition(partition)
    n, e = partition.num_vertices, partition.num_edges
    x = _check_features(x, n)
    y, num_classes = _check_labels(y, n, num_classes)
    masks = _check_masks(masks, n)
    edge_data = _check_edge_data(edge_data, e)
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


# ---------------------------------------------------------------- checking


def _fail(msg: str) -> DatasetError:
    return DatasetError(msg.replace("\r", " ").replace("\n", " "))  # always one line


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _read_manifest(root: Path) -> dict:
    if not root.exists():
        raise _fail(f"dataset directory {root} does not exist; check the path or create it with save_dataset")
    if not root.is_dir():
        raise _fail(f"{root} is not a directory; a dataset is a directory written by save_dataset")
    mpath = root / MANIFEST
    if not mpath.is_file():
        raise _fail(f"{mpath} is missing: {root} is not a sagann dataset or its save did not finish; re-run save_dataset")
    try:
        with open(mpath, "rb") as f:
            manifest = json.loads(f.read().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _fail(f"{mpath} is not valid JSON ({err}); the manifest is corrupt: re-save the dataset") from None
    if not isinstance(manifest, dict):
        raise _fail(f"{mpath} must hold a JSON object; the manifest is corrupt: re-save the dataset")
    _check_manifest(mpath, manifest)
    return manifest


def _check_manifest(mpath: Path, m: dict) -> None:
    """Types and cross-field consistency of the manifest (no file access)."""
    def bad(what: str) -> DatasetError:
        return _fail(f"{mpath}: {what}; the manifest is corrupt or hand-edited: re-save the dataset")

    version = m.get("format_version")
    if not _is_int(version) or version < 1:
        raise bad(f"format_version must be an int >= 1, got {version!r}")
    if version > FORMAT_VERSION:
        raise _fail(f"{mpath}: format_version {version} was written by a newer sagann (this one reads <= {FORMAT_VERSION}); upgrade sagann")
    for key in ("num_vertices", "num_edges", "num_chunks", "bounds", "sub_chunk_nnz", "chunk_index_columns", "files", "features", "labels", "edge_data", "masks"):
        if key not in m:
            raise bad(f"key {key!r} is missing")
    for key in ("num_vertices", "num_edges", "num_chunks", "sub_chunk_nnz"):
        if not _is_int(m[key]) or m[key] < 0:
            raise bad(f"{key} must be a non-negative int, got {m[key]!r}")
    if m["sub_chunk_nnz"] < 1:
        raise bad("sub_chunk_nnz must be >= 1")
    n, p, bounds = m["num_vertices"], m["num_chunks"], m["bounds"]
    if (
        p < 1
        or not isinstance(bounds, list)
        or len(bounds) != p + 1
        or not all(_is_int(b) for b in bounds)
        or bounds[0] != 0
        or bounds[-1] != n
        or any(a > b for a, b in zip(bounds, bounds[1:]))
    ):
        raise bad(f"bounds must be {p + 1} non-decreasing ints from 0 to num_vertices={n}")
    if m["chunk_index_columns"] != list(INDEX_COLUMNS):
        raise bad(f"chunk_index_columns must be {list(INDEX_COLUMNS)}")
    masks = m["masks"]
    if not isinstance(masks, list) or not all(isinstance(s, str) and _MASK_NAME.match(s) for s in masks) or len(set(masks)) != len(masks):
        raise bad("masks must be a list of unique names of letters, digits, '_' or '-'")
    files = m["files"]
    if not isinstance(files, dict):
        raise bad("files must be an object mapping file name -> entry")
    for name, entry in files.items():
        _check_file_name(mpath, name)
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("sha256"), str)
            or not re.fullmatch(r"[0-9a-f]{64}", entry["sha256"])
            or not _is_int(entry.get("nbytes"))
            or not isinstance(entry.get("shape"), list)
            or not all(_is_int(s) and s >= 0 for s in entry["shape"])
            or not isinstance(entry.get("dtype"), str)
        ):
            raise bad(f"the entry of {name!r} must hold sha256 (64 hex digits), nbytes, shape and dtype")
    expected = _expected_files(mpath, m)
    for name in expected:
        if name not in files:
            raise bad(f"files does not list {name!r}")
    for name in files:
        if name not in expected:
            raise bad(f"files lists {name!r}, which this format does not have")
    for name, (shape, dtypes) in expected.items():
        entry = files[name]
        if entry["dtype"] not in dtypes:
            raise _fail(f"{mpath}: {name} has dtype {entry['dtype']} but must be {' or '.join(dtypes)}; re-save the dataset")
        if len(entry["shape"]) != len(shape) or any(w is not None and w != s for w, s in zip(shape, entry["shape"])):
            want = "[" + ", ".join("*" if w is None else str(w) for w in shape) + "]"
            raise _fail(f"{mpath}: {name} has shape {entry['shape']} but must be {want}; the manifest disagrees with itself: re-save the dataset")


def _check_file_name(mpath: Path, name: Any) -> None:
    """A listed file must be a plain name inside the dataset directory."""
    if (
        not isinstance(name, str)
        or not name
        or name in (".", "..")
        or ".." in name
        or "/" in name
        or "\\" in name
        or os.sep in name
        or (os.altsep is not None and os.altsep in name)
        or os.path.isabs(name)
        or "\x00" in name
    ):
        raise _fail(f"{mpath} lists file {name!r}, which is not a plain file name inside the dataset directory; refusing to read it: re-save the dataset")


def _expected_files(mpath: Path, m: dict) -> dict[str, tuple[list, tuple[str, ...]]]:
    """File name -> (shape with None for free sizes, allowed dtypes) from the manifest's header."""
    n, e = m["num_vertices"], m["num_edges"]
    out: dict[str, tuple[list, tuple[str, ...]]] = {"chunk_index.npy": ([None, len(INDEX_COLUMNS)], ("int64",))}
    for name, (dtype, column, _) in _EDGE_FILES.items():
        out[f"{name}.npy"] = ([e] if column == "edge_start" else [None], (np.dtype(dtype).name,))
    out["in_degree.npy"] = ([n], ("int64",))
    for key, fname in (("features", "features.npy"), ("labels", "labels.npy"), ("edge_data", "edge_data.npy"), ("vertex_order", "vertex_order.npy")):
        meta = m.get(key)  # vertex_order is optional (older datasets lack it)
        if meta is None:
            continue
        if (
            not isinstance(meta, dict)
            or not isinstance(meta.get("shape"), list)
            or not all(_is_int(v) and v >= 0 for v in meta["shape"])
            or not isinstance(meta.get("dtype"), str)
        ):
            raise _fail(f"{mpath}: {key} must be null or hold shape (non-negative ints) and dtype; re-save the dataset")
        if key == "labels":
            k = meta.get("num_classes")
            if not _is_int(k) or k < 0:
                raise _fail(f"{mpath}: labels.num_classes must be a non-negative int, got {k!r}; re-save the dataset")
            want: tuple[list, tuple[str, ...]] = ([n], ("int64",))
        elif key == "vertex_order":
            want = ([n], ("int64",))
        elif key == "features":
            f = meta["shape"][1] if len(meta["shape"]) == 2 else -1
            want = ([n, f], _FLOAT_DTYPES)
        else:
            want = ([e] + meta["shape"][1:2], _FLOAT_DTYPES) if len(meta["shape"]) in (1, 2) else ([e], _FLOAT_DTYPES)
        if meta["shape"] != want[0] or meta["dtype"] not in want[1]:
            raise _fail(f"{mpath}: {key} is {meta['dtype']} {meta['shape']} but must be {' or '.join(want[1])} with {want[0][0]} rows; re-save the dataset")
        out[fname] = (list(meta["shape"]), (meta["dtype"],))
    for name in m["masks"]:
        out[f"mask_{name}.npy"] = ([n], ("bool",))
    return out


def _read_npy_header(path: Path) -> tuple[tuple, bool, np.dtype, int]:
    """(shape, fortran_order, dtype, data offset) of a .npy file, reading only its header."""
    with open(path, "rb") as f:
        major, _ = np.lib.format.read_magic(f)
        if major == 1:
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        return shape, fortran, dtype, f.tell()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    buf = bytearray(_HASH_BLOCK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while True:
            k = f.readinto(buf)
            if not k:
                break
            h.update(view[:k])
    return h.hexdigest()


def _check_files(root: Path, m: dict, check_hash: bool) -> None:
    """Every listed file present, of the right size and checksum (if ``check_hash``), its header matching the manifest."""
    files = m["files"]
    for p in root.iterdir():
        if p.name.endswith(".npy") and p.name not in files:
            raise _fail(f"{p} is not listed in {MANIFEST}; remove the unexpected file or re-save the dataset")
    for name, entry in files.items():
        p = root / name
        if p.is_symlink() or not p.is_file():
            why = "is a symlink" if p.is_symlink() else "is missing"
            raise _fail(f"{p} {why} (listed in {MANIFEST}); the dataset is incomplete: re-save it")
        size = p.stat().st_size
        if size != entry["nbytes"]:
            raise _fail(f"{p} is {size} bytes but {MANIFEST} says {entry['nbytes']} (truncated or modified); re-save the dataset")
        if check_hash and _sha256(p) != entry["sha256"]:
            raise _fail(f"{p}: sha256 mismatch with {MANIFEST} (the file was corrupted after it was written); re-save the dataset or restore it from a backup")
        try:
            shape, fortran, dtype, offset = _read_npy_header(p)
        except (ValueError, OSError, SyntaxError, TypeError, EOFError) as err:
            raise _fail(f"{p} has no valid .npy header ({err}); the file is corrupt: re-save the dataset") from None
        if dtype.hasobject or fortran or dtype != np.dtype(entry["dtype"]) or list(shape) != entry["shape"]:
            got = f"{dtype} {list(shape)}" + (" fortran-order" if fortran else "")
            raise _fail(f"{p} holds {got} but {MANIFEST} says {entry['dtype']} {entry['shape']}; re-save the dataset")
        if offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize != size:
            raise _fail(f"{p}: header {dtype} {list(shape)} does not match the file size {size} (truncated or modified); re-save the dataset")


def _check_chunk_index(root: Path, m: dict, index: np.ndarray) -> None:
    """Offsets and sizes in the chunk index agree with each other and the files."""
    where = root / "chunk_index.npy"

    def bad(row: int | None, what: str) -> DatasetError:
        at = "" if row is None else f" (row {row})"
        return _fail(f"{where}: inconsistent chunk index{at}: {what}; re-save the dataset")

    def first(mask: np.ndarray) -> int | None:
        return int(np.argmax(mask)) if mask.any() else None

    col = {c: index[:, k] for c, k in _COL.items()}
    s = index.shape[0]
    p = m["num_chunks"]
    bounds = np.asarray(m["bounds"], dtype=np.int64)
    for c in ("i", "j", "sub", "dst_offset", "nnz", "num_dst", "num_src"):
        row = first(col[c] < 0)
        if row is not None:
            raise bad(row, f"{c} is negative")
    row = first((col["i"] >= p) | (col["j"] >= p))
    if row is not None:
        raise bad(row, f"chunk ({col['i'][row]}, {col['j'][row]}) is outside the {p} x {p} grid")
    height = (bounds[1:] - bounds[:-1])[col["j"]]
    row = first(col["dst_offset"] + col["num_dst"] > height)
    if row is not None:
        raise bad(row, f"destination rows {col['dst_offset'][row]}..{col['dst_offset'][row] + col['num_dst'][row]} exceed interval {col['j'][row]} of {height[row]} vertices")
    if s:
        key = col["i"] * p + col["j"]
        new = np.concatenate([[True], key[1:] != key[:-1]])
        expect_sub = np.arange(s) - np.maximum.accumulate(np.where(new, np.arange(s), 0))
        row = first(np.concatenate([[False], key[1:] < key[:-1]]) | (col["sub"] != expect_sub))
        if row is not None:
            raise bad(row, "sub-chunks are not in (i, j, sub) order with subs numbered 0, 1, ...")
    expected = index.copy()
    _fill_offsets(expected)
    for c in ("edge_start", "dst_ptr_start", "src_rows_start", "src_ptr_start"):
        row = first(expected[:, _COL[c]] != col[c])
        if row is not None:
            raise bad(row, f"{c}={col[c][row]} but the sizes before it put it at {expected[row, _COL[c]]} (offsets out of range)")
    files = m["files"]
    for name, (_, column, _) in _EDGE_FILES.items():
        length = files[f"{name}.npy"]["shape"][0]
        if column == "edge_start":
            need = int(col["nnz"].sum())
        elif column == "dst_ptr_start":
            need = int((col["num_dst"] + 1).sum())
        elif column == "src_rows_start":
            need = int(col["num_src"].sum())
        else:
            need = int((col["num_src"] + 1).sum())
        if need != length:
            raise bad(None, f"the sub-chunks need {need} entries of {name}.npy but it holds {length} (offsets out of range)")


def _inspect(root: Path, check_hash: bool) -> tuple[dict, np.ndarray]:
    """The checked manifest and chunk index of the dataset at ``root``."""
    manifest = _read_manifest(root)
    _check_files(root, manifest, check_hash)
    index = np.load(root / "chunk_index.npy", allow_pickle=False)  # small: [S, 11]
    _check_chunk_index(root, manifest, index)
    if check_hash and manifest["labels"] is not None:
        _check_label_range(root, manifest)
    if check_hash and manifest.get("vertex_order") is not None:
        _check_permutation(root, manifest)
    return manifest, index


def _check_label_range(root: Path, m: dict) -> None:
    """Labels lie in [0, num_classes) (read through a memory map)."""
    y = np.load(root / "labels.npy", mmap_mode="r", allow_pickle=False)
    k = m["labels"]["num_classes"]
    if y.shape[0] and (int(y.min()) < 0 or int(y.max()) >= k):
        raise _fail(f"{root / 'labels.npy'} holds class ids {int(y.min())}..{int(y.max())} outside [0, {k}) given by labels.num_classes in {MANIFEST}; re-save the dataset")


def _check_permutation(root: Path, m: dict) -> None:
    """vertex_order is a permutation of [0, N) (read in blocks through a memory map)."""
    order = np.load(root / "vertex_order.npy", mmap_mode="r", allow_pickle=False)
    n = m["num_vertices"]
    seen = np.zeros(n, dtype=bool)
    step = max(1, _WRITE_BLOCK // 8)
    for r0 in range(0, n, step):
        block = np.asarray(order[r0 : r0 + step])
        if int(block.min()) < 0 or int(block.max()) >= n:
            raise _fail(f"{root / 'vertex_order.npy'} holds ids outside [0, {n}); re-save the dataset")
        if seen[block].any() or np.unique(block).shape[0] != block.shape[0]:
            raise _fail(f"{root / 'vertex_order.npy'} is not a permutation (an id repeats); re-save the dataset")
        seen[block] = True
    del order


def verify_dataset(path) -> None:
    """Check a dataset directory completely (manifest, files, sizes, sha256, chunk index).

    Raises :class:`DatasetError` with a one-line message naming the file and the fix.
    """
    _inspect(Path(os.fspath(path)), check_hash=True)


def load_dataset(path, mmap: bool = True, verify: bool = True) -> Dataset:
    """Open a dataset written by :func:`save_dataset`.

    Args:
        mmap: memory-map every array (read-only, zero-copy sub-chunk views);
            False reads them into RAM.
        verify: check each file's sha256 (streams every file once) before use;
            sizes, headers and the chunk index are always checked.
    """
    root = Path(os.path.abspath(os.fspath(path)))
    manifest, index = _inspect(root, check_hash=verify)
    mode = "r" if mmap else None
    arrays = {name: np.load(root / name, mmap_mode=mode, allow_pickle=False) for name in manifest["files"]}
    bounds = np.asarray(manifest["bounds"], dtype=np.int64)
    edge = {name: arrays[f"{name}.npy"] for name in _EDGE_FILES}
    chunks: dict[tuple[int, int], list[EdgeChunk]] = {}
    for row in index.tolist():
        r = dict(zip(INDEX_COLUMNS, row))
        i, j = r["i"], r["j"]
        e0, e1 = r["edge_start"], r["edge_start"] + r["nnz"]
        d0, s0, p0 = r["dst_ptr_start"], r["src_rows_start"], r["src_ptr_start"]
        chunks.setdefault((i, j), []).append(
            EdgeChunk(
                id=ChunkId(i, j, r["sub"]),
                src_start=int(bounds[i]),
                dst_start=int(bounds[j]),
                dst_offset=r["dst_offset"],
                dst_ptr=edge["dst_ptr"][d0 : d0 + r["num_dst"] + 1],
                dst_idx=edge["dst_idx"][e0:e1],
                src_idx=edge["src_idx"][e0:e1],
                src_rows=edge["src_rows"][s0 : s0 + r["num_src"]],
                src_ptr=edge["src_ptr"][p0 : p0 + r["num_src"] + 1],
                src_perm=edge["src_perm"][e0:e1],
                edge_ids=edge["edge_ids"][e0:e1],
            )
        )
    partition = GraphPartition(
        num_vertices=manifest["num_vertices"],
        num_edges=manifest["num_edges"],
        bounds=bounds,
        chunks=chunks,
        in_degree=arrays["in_degree.npy"],
        sub_chunk_nnz=manifest["sub_chunk_nnz"],
    )
    return Dataset(
        path=root,
        manifest=manifest,
        partition=partition,
        x=arrays.get("features.npy"),
        y=arrays.get("labels.npy"),
        masks={name: arrays[f"mask_{name}.npy"] for name in manifest["masks"]},
        edge_data=arrays.get("edge_data.npy"),
        vertex_order=arrays.get("vertex_order.npy"),
    )
