"""OGB's node-property layout on disk, partitioned out of core (``sagann partition --ogb DIR OUT``).

The layout, as OGB's ``NodePropPredDataset`` downloads it (no header rows)::

    DIR/raw/edge.csv.gz            E lines "src,dst"
    DIR/raw/num-node-list.csv.gz   one line: N                          (optional here)
    DIR/raw/node-feat.csv.gz       N lines of F comma-separated floats  (optional)
    DIR/raw/node-label.csv.gz      N lines, one class id each           (optional; "nan" = unlabelled)
    DIR/split/<name>/{train,valid,test}.csv.gz   vertex ids, one a line (optional)

Each file is read in blocks of a few MiB (sized from ``--host-memory``)
and staged as a ``.npy`` next to the output; the partitioner then runs on
those (:mod:`sagann.chunks.staging`). OGB's ``valid`` split becomes the
``val`` mask that ``sagann train`` reads. Plain ``.csv`` files are read
too. Errors name the file, the line and the fix.
"""
from __future__ import annotations

import gzip
import io
import os
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

import numpy as np

from sagann.chunks.files import check_target
from sagann.chunks.external import PartitionConfig, PartitionSummary, partition_edge_list
from sagann.chunks.staging import NpyStream, staging_dir

__all__ = ["OgbLayout", "open_ogb", "partition_ogb"]

SPLITS = {"train": "train", "valid": "val", "test": "test"}  # OGB file -> sagann mask
MIN_BLOCK = 1 << 20
MAX_BLOCK = 64 << 20


class OgbError(ValueError):
    """An OGB directory that cannot be read: a missing file, a bad line, ids out of range."""


@dataclass(frozen=True)
class OgbLayout:
    """The files of one OGB node-property dataset directory (None: absent)."""

    root: Path
    edges: Path
    num_nodes: Path | None
    features: Path | None
    labels: Path | None
    split: Path | None  # split/<name>


def _find(d: Path, stem: str) -> Path | None:
    for name in (f"{stem}.csv.gz", f"{stem}.csv"):
        if (d / name).is_file():
            return d / name
    return None


def open_ogb(root, split: str | None = None) -> OgbLayout:
    """Check the layout under ``root`` and name its files; ``split``: which ``split/<name>`` (default: the only one)."""
    root = Path(root)
    if not root.is_dir():
        raise OgbError(f"--ogb {root}: no such directory; pass the dataset directory that holds raw/ and split/ (e.g. dataset/ogbn_arxiv)")
    raw = root / "raw"
    edges = _find(raw, "edge")
    if edges is None:
        raise OgbError(f"--ogb {root}: no raw/edge.csv.gz; pass the directory of one OGB node-property dataset (it holds raw/edge.csv.gz)")
    names = sorted(p.name for p in (root / "split").iterdir() if p.is_dir()) if (root / "split").is_dir() else []
    if split is not None and split not in names:
        raise OgbError(f"--ogb-split {split}: no directory {root / 'split' / split}; splits found: {', '.join(names) or 'none'}")
    if split is None and len(names) > 1:
        raise OgbError(f"--ogb {root} has several splits ({', '.join(names)}); choose one with --ogb-split NAME")
    chosen = split or (names[0] if names else None)
    return OgbLayout(root, edges, _find(raw, "num-node-list"), _find(raw, "node-feat"), _find(raw, "node-label"), None if chosen is None else root / "split" / chosen)


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _text_blocks(path: Path, block_bytes: int) -> Iterator[tuple[int, bytes]]:
    """(first line number, whole lines) blocks of about ``block_bytes`` bytes of (decompressed) text."""
    line = 1
    try:
        with _open(path) as f:
            while True:
                data = f.read(block_bytes)
                if not data:
                    return
                if not data.endswith(b"\n"):
                    data += f.readline()
                yield line, data
                line += data.count(b"\n")
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise OgbError(f"{path}: cannot be read ({err}); download the dataset again") from None


def _count_lines(path: Path, block_bytes: int) -> int:
    n = 0
    for _, data in _text_blocks(path, block_bytes):
        n += sum(1 for raw in data.split(b"\n") if raw.strip())
    return n


def _parse(path: Path, first: int, data: bytes, dtype) -> np.ndarray:
    """A [rows, columns] array of one block of comma-separated lines; a bad line is named."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "input contained no data"
            return np.loadtxt(io.BytesIO(data), delimiter=",", dtype=dtype, ndmin=2)
    except ValueError:
        pass
    width = None
    for k, raw in enumerate(data.split(b"\n")):
        if not raw.strip():
            continue
        fields = raw.split(b",")
        try:
            np.array([float(v) for v in fields])
        except ValueError:
            raise OgbError(f"{path}: line {first + k} ({raw[:60].decode('utf-8', 'replace')!r}) is not comma-separated numbers") from None
        if width is not None and len(fields) != width:
            raise OgbError(f"{path}: line {first + k} has {len(fields)} fields but the lines before it have {width}")
        width = len(fields)
    last = first + data.count(b"\n")
    raise OgbError(f"{path}: lines {first}..{last} could not be read as numbers")


def _rows(path: Path, block_bytes: int, dtype) -> Iterator[tuple[int, np.ndarray]]:
    for first, data in _text_blocks(path, block_bytes):
        a = _parse(path, first, data, dtype)
        if a.size:
            yield first, a


def _num_nodes(layout: OgbLayout, block_bytes: int) -> int:
    if layout.num_nodes is not None:
        for _, a in _rows(layout.num_nodes, block_bytes, np.int64):
            if a.shape[0] != 1:
                raise OgbError(f"{layout.num_nodes}: holds {a.shape[0]} graphs; --ogb reads single-graph node-property datasets (ogbn-*)")
            return int(a[0, 0])
    for path in (layout.labels, layout.features):
        if path is not None:
            return _count_lines(path, block_bytes)
    raise OgbError(f"--ogb {layout.root}: no raw/num-node-list.csv.gz, node-label.csv.gz or node-feat.csv.gz to take N from; add num-node-list.csv.gz (one line: N)")


def _stage_edges(layout: OgbLayout, out: Path, n: int, block_bytes: int, inverse: bool) -> Path:
    e = _count_lines(layout.edges, block_bytes)
    with NpyStream(out, (2 * e if inverse else e, 2), np.int64) as s:
        for first, a in _rows(layout.edges, block_bytes, np.int64):
            if a.shape[1] != 2:
                raise OgbError(f"{layout.edges}: line {first} has {a.shape[1]} fields; each line must be 'src,dst'")
            bad = ((a < 0) | (a >= n)).any(axis=1)
            if bad.any():
                k = int(np.argmax(bad))
                raise OgbError(f"{layout.edges}: line {first + k} has vertex ids {a[k, 0]},{a[k, 1]}, outside [0, N={n}); check num-node-list.csv.gz and the edge file")
            if inverse:  # OGB's add_inverse_edge order: each edge, then its reverse
                a = np.repeat(a, 2, axis=0)
                a[1::2] = a[1::2, ::-1]
            s.write(a)
    return out


def _stage_features(layout: OgbLayout, out: Path, n: int, block_bytes: int) -> Path | None:
    if layout.features is None:
        return None
    stream = None
    try:
        for first, a in _rows(layout.features, block_bytes, np.float32):
            if stream is None:
                stream = NpyStream(out, (n, a.shape[1]), np.float32)
            if a.shape[1] != stream.shape[1]:
                raise OgbError(f"{layout.features}: line {first} has {a.shape[1]} features but line 1 has {stream.shape[1]}")
            if stream.rows + a.shape[0] > n:
                raise OgbError(f"{layout.features}: more than N={n} lines; one line of features per vertex")
            stream.write(a)
        if stream is None or stream.rows != n:
            raise OgbError(f"{layout.features}: {0 if stream is None else stream.rows} lines but N={n}; one line of features per vertex")
        return stream.close()
    except BaseException:
        if stream is not None:
            stream.abort()
        raise


def _stage_labels(layout: OgbLayout, out: Path, n: int, block_bytes: int) -> tuple[Path | None, np.ndarray | None]:
    """Labels as int64 (unlabelled "nan" rows as class 0) and the unlabelled vertices' mask."""
    if layout.labels is None:
        return None, None
    unlabelled = np.zeros(n, dtype=bool)
    with NpyStream(out, (n,), np.int64) as s:
        for first, a in _rows(layout.labels, block_bytes, np.float64):
            if a.shape[1] != 1:
                raise OgbError(f"{layout.labels}: {a.shape[1]} label columns (a multi-task dataset); sagann train classifies one label per vertex")
            if s.rows + a.shape[0] > n:
                raise OgbError(f"{layout.labels}: more than N={n} lines; one label per vertex")
            y = a[:, 0]
            nan = np.isnan(y)
            bad = ~nan & ((y != np.floor(y)) | (y < 0))
            if bad.any():
                k = int(np.argmax(bad))
                raise OgbError(f"{layout.labels}: line {first + k} holds {y[k]!r}; labels must be class ids 0, 1, ... (or nan for unlabelled)")
            unlabelled[s.rows : s.rows + y.shape[0]] = nan
            s.write(np.where(nan, 0, y).astype(np.int64))
        if s.rows != n:
            raise OgbError(f"{layout.labels}: {s.rows} lines but N={n}; one label per vertex")
    return out, unlabelled


def _stage_masks(layout: OgbLayout, staging: Path, n: int, block_bytes: int, unlabelled: np.ndarray | None) -> dict[str, str]:
    masks: dict[str, str] = {}
    if layout.split is None:
        return masks
    for ogb_name, mask_name in SPLITS.items():
        path = _find(layout.split, ogb_name)
        if path is None:
            continue
        mask = np.zeros(n, dtype=bool)
        for first, a in _rows(path, block_bytes, np.int64):
            ids = a[:, 0]
            bad = (ids < 0) | (ids >= n)
            if bad.any():
                k = int(np.argmax(bad))
                raise OgbError(f"{path}: line {first + k} holds vertex id {int(ids[k])}, outside [0, N={n})")
            mask[ids] = True
        if unlabelled is not None and (mask & unlabelled).any():
            v = int(np.argmax(mask & unlabelled))
            raise OgbError(f"{path}: vertex {v} is in the {ogb_name} split but its label is nan; fix node-label.csv.gz or the split")
        np.save(staging / f"mask_{mask_name}.npy", mask)
        masks[mask_name] = str(staging / f"mask_{mask_name}.npy")
    return masks


def partition_ogb(root, out, config: PartitionConfig | None = None, split: str | None = None, add_inverse_edges: bool = False) -> PartitionSummary:
    """Partition the OGB node-property dataset at ``root`` into the dataset directory ``out``, out of core.

    Args:
        root: the dataset directory (``raw/``, ``split/``), e.g. ``dataset/ogbn_arxiv``.
        out: the dataset directory to create (atomically).
        config: P, reordering, ``host_memory``, ... (:class:`PartitionConfig`).
        split: the ``split/<name>`` to read (default: the only one).
        add_inverse_edges: add each edge's reverse after it, as OGB does for
            the datasets it marks ``add_inverse_edge`` (ogbn-products, ogbn-proteins).
    """
    config = config or PartitionConfig()
    check_target(Path(os.path.abspath(os.fspath(out))), config.overwrite)  # before any staging work
    layout = open_ogb(root, split)
    block = int(min(MAX_BLOCK, max(MIN_BLOCK, config.host_memory // 16)))  # parsed rows take a few times their text
    with staging_dir(out) as staging:
        n = _num_nodes(layout, block)
        edges = _stage_edges(layout, staging / "edges.npy", n, block, add_inverse_edges)
        features = _stage_features(layout, staging / "features.npy", n, block)
        labels, unlabelled = _stage_labels(layout, staging / "labels.npy", n, block)
        masks = _stage_masks(layout, staging, n, block, unlabelled)
        del unlabelled
        if config.num_vertices is None:
            config = replace(config, num_vertices=n)
        try:
            return partition_edge_list(edges, out, config, features=features, labels=labels, masks=masks)
        except ValueError as err:  # name the OGB files, not their staged copies
            message = str(err)
            for staged, original in ((edges, layout.edges), (features, layout.features), (labels, layout.labels)):
                if staged is not None:
                    message = message.replace(str(staged), str(original))
            raise OgbError(message) from None
