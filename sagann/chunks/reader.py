"""Reading and checking a dataset directory (the format is in :mod:`sagann.chunks.layout`).

Loading always checks the manifest, file sizes, .npy headers and the chunk
index (cheap); ``verify=True`` also streams every file through sha256. With
``mmap=True`` nothing else is read: sub-chunk arrays are slices of read-only
memory maps.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sagann.chunks.files import BLOCK_BYTES, sha256
from sagann.chunks.layout import COLUMN, EDGE_FILES, FLOAT_DTYPES, FORMAT_VERSION, INDEX_COLUMNS, MANIFEST, MASK_NAME
from sagann.chunks.partition import GraphPartition
from sagann.chunks.types import ChunkId, EdgeChunk

__all__ = ["Dataset", "DatasetError", "load_dataset", "verify_dataset"]


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


def _exclusive_cumsum(sizes: np.ndarray) -> np.ndarray:
    out = np.zeros_like(sizes)
    np.cumsum(sizes[:-1], out=out[1:])
    return out


def _fill_offsets(index: np.ndarray) -> None:
    """Set the offset columns to the exclusive prefix sums of the sizes (a layout without gaps)."""
    nnz, nd, ns = (index[:, COLUMN[c]] for c in ("nnz", "num_dst", "num_src"))
    index[:, COLUMN["edge_start"]] = _exclusive_cumsum(nnz)
    index[:, COLUMN["dst_ptr_start"]] = _exclusive_cumsum(nd + 1)
    index[:, COLUMN["src_rows_start"]] = _exclusive_cumsum(ns)
    index[:, COLUMN["src_ptr_start"]] = _exclusive_cumsum(ns + 1)


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
    if not isinstance(masks, list) or not all(isinstance(s, str) and MASK_NAME.match(s) for s in masks) or len(set(masks)) != len(masks):
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
    for name, (dtype, column, _) in EDGE_FILES.items():
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
            want = ([n, f], FLOAT_DTYPES)
        else:
            want = ([e] + meta["shape"][1:2], FLOAT_DTYPES) if len(meta["shape"]) in (1, 2) else ([e], FLOAT_DTYPES)
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
        if check_hash and sha256(p) != entry["sha256"]:
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

    col = {c: index[:, k] for c, k in COLUMN.items()}
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
        row = first(expected[:, COLUMN[c]] != col[c])
        if row is not None:
            raise bad(row, f"{c}={col[c][row]} but the sizes before it put it at {expected[row, COLUMN[c]]} (offsets out of range)")
    files = m["files"]
    for name, (_, column, _) in EDGE_FILES.items():
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
    step = max(1, BLOCK_BYTES // 8)
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
    edge = {name: arrays[f"{name}.npy"] for name in EDGE_FILES}
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
