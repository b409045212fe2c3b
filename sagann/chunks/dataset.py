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
``masks`` (names) and ``created_by``.

A save writes everything into ``.<name>.tmp-<pid>-<random>`` next to the
target, fsyncs every file, writes the manifest last and renames the
directory into place, so a crashed save never leaves a loadable dataset.
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

from sagann.chunks.partition import GraphPartition
from sagann.chunks.types import ChunkId, EdgeChunk

__all__ = [
    "FORMAT_VERSION",
    "INDEX_COLUMNS",
    "Dataset",
    "DatasetError",
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
        masks: name -> [N] bool; edge_data: [E] or [E, k] or None.
    """

    path: Path
    manifest: dict
    partition: GraphPartition
    x: np.ndarray | None
    y: np.ndarray | None
    masks: dict[str, np.ndarray]
    edge_data: np.ndarray | None

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


def _chunk_index(subs: list[EdgeChunk]) -> np.ndarray:
    """The [S, len(INDEX_COLUMNS)] table for sub-chunks in storage order."""
    index = np.zeros((len(subs), len(INDEX_COLUMNS)), dtype=np.int64)
    if not subs:
        return index
    for col, get in (
        ("i", lambda c: c.id.i),
        ("j", lambda c: c.id.j),
        ("sub", lambda c: c.id.sub),
        ("dst_offset", lambda c: c.dst_offset),
        ("nnz", lambda c: c.nnz),
        ("num_dst", lambda c: c.num_dst),
        ("num_src", lambda c: c.num_src),
    ):
        index[:, _COL[col]] = [get(c) for c in subs]
    _fill_offsets(index)
    return index


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

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        files = {}
        index = _chunk_index(subs)
        files["chunk_index.npy"] = _write_npy(tmp, "chunk_index.npy", np.int64, index.shape, [index])
        for name, (dtype, _, size) in _EDGE_FILES.items():
            total = sum(size(c) for c in subs)
            files[f"{name}.npy"] = _write_npy(tmp, f"{name}.npy", dtype, (total,), (getattr(c, name) for c in subs))
        files["in_degree.npy"] = _write_npy(tmp, "in_degree.npy", np.int64, (n,), _row_blocks(np.asarray(partition.in_degree), np.int64))
        features = labels = edata = None
        if x is not None:
            dt = _stored_float(x)
            files["features.npy"] = _write_npy(tmp, "features.npy", dt, x.shape, _row_blocks(x, dt))
            features = {"shape": list(x.shape), "dtype": dt.name}
        if y is not None:
            files["labels.npy"] = _write_npy(tmp, "labels.npy", np.int64, y.shape, _row_blocks(y, np.int64))
            labels = {"shape": list(y.shape), "dtype": "int64", "num_classes": num_classes}
        for name, m in masks.items():
            files[f"mask_{name}.npy"] = _write_npy(tmp, f"mask_{name}.npy", np.bool_, m.shape, _row_blocks(m, np.bool_))
        if edge_data is not None:
            dt = _stored_float(edge_data)
            files["edge_data.npy"] = _write_npy(tmp, "edge_data.npy", dt, edge_data.shape, _row_blocks(edge_data, dt))
            edata = {"shape": list(edge_data.shape), "dtype": dt.name}
        manifest = {
            "format_version": FORMAT_VERSION,
            "num_vertices": int(n),
            "num_edges": int(e),
            "num_chunks": int(partition.num_chunks),
            "bounds": [int(b) for b in partition.bounds],
            "sub_chunk_nnz": int(partition.sub_chunk_nnz),
            "chunk_index_columns": list(INDEX_COLUMNS),
            "files": files,
            "features": features,
            "labels": labels,
            "edge_data": edata,
            "masks": list(masks),
            "created_by": _version(),
        }
        _write_manifest(tmp, manifest)  # last: a directory without it is never a dataset
        _fsync_dir(tmp)
        _swap_into_place(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


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
    for key, fname in (("features", "features.npy"), ("labels", "labels.npy"), ("edge_data", "edge_data.npy")):
        meta = m[key]
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
    return manifest, index


def _check_label_range(root: Path, m: dict) -> None:
    """Labels lie in [0, num_classes) (read through a memory map)."""
    y = np.load(root / "labels.npy", mmap_mode="r", allow_pickle=False)
    k = m["labels"]["num_classes"]
    if y.shape[0] and (int(y.min()) < 0 or int(y.max()) >= k):
        raise _fail(f"{root / 'labels.npy'} holds class ids {int(y.min())}..{int(y.max())} outside [0, {k}) given by labels.num_classes in {MANIFEST}; re-save the dataset")


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
    )
