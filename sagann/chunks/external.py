"""Partition an edge list larger than RAM into a dataset directory (``sagann partition``).

Three passes over the input, each in blocks sized from the host-memory budget;
the result is exactly ``partition_graph(edge_index, N, P, sub_chunk_nnz)``
(with the edges relabelled first when reordering):

1. **count**: validate every id, count in- and out-degrees (and N, unless
   given); the interval bounds come from :func:`balanced_bounds` (or from
   the METIS parts), P from ``--chunks`` or the budget;
2. **bucket**: append each edge, relabelled if reordering, as a 16-byte
   record (source local to its interval, destination, position in the
   input) to the scratch file of its *source* interval i;
3. **build**: load one row bucket, sort it stably by destination (so each
   row keeps ascending edge ids, as ``partition_graph`` sorts), cut it at
   the interval bounds into E_i0, E_i1, ... and build their sub-chunks with
   :func:`split_chunk`, streaming them into a :class:`DatasetWriter`.

Row buckets rather than P x P (i, j) files: P files stay few enough to append
to, their sizes are known exactly after pass 1 (the sum of out-degrees over
the interval), so whether each fits is checked before anything is written,
and a row yields its chunks in the (i, j) order the dataset stores them.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import psutil
from tqdm import tqdm

from sagann.chunks.files import check_target
from sagann.chunks.ingest import EdgeList, EdgeListError, open_edge_list, open_vertex_array, read_rows
from sagann.chunks.layout import MASK_NAME
from sagann.chunks.partition import DEFAULT_SUB_CHUNK_NNZ, balanced_bounds, interval_of, split_chunk
from sagann.chunks.reorder import IN_MEMORY_BYTES_PER_EDGE, Reorder, degree_order, inverse_permutation, metis_order, rcm_order
from sagann.chunks.writer import DatasetWriter
from sagann.units import parse_bytes

__all__ = ["PartitionConfig", "PartitionSummary", "MemoryPlan", "partition_edge_list"]

# Cost model: bytes held at once, per edge or vertex, measured with tracemalloc
# on R-MAT inputs (numbers in brackets) and rounded up for a margin; the
# whole-process check is benchmarks/partition_rss.py (docs/benchmarks.md).
#
#   per vertex   in- and out-degree (16), a bincount temporary (8), the order
#                and its inverse when reordering (16)                        -> 40
#   per edge of a pass 1/2 block   int64 src/dst, interval ids and their
#                stable sort order, the records before and after grouping
#                [64]; plus what the reader holds per edge of a block
#                (.npy: the int64 copy, 16; text: raw bytes and parser, 24)  -> 80 + reader
#   per edge of a pass-3 row bucket   the records (16) while the sort order
#                and the sorted columns are made, then the chunk arrays
#                split_chunk builds and np.unique's temporaries for the
#                largest sub-chunk [40 to 51]                                -> 64
#   fixed        the writer's 16 MiB blocks (spool read + cast), hashing,
#                tqdm, small arrays                                          -> 64 MiB
#
# With H = --host-memory, the edge budget is H - 64 MiB - 40 N. A block holds
# edge_budget / (80 + reader) edges (at most 4M, for progress); a row bucket
# of n edges fits when 64 n <= edge_budget. --chunks auto picks the smallest
# P whose largest row bucket fits. Peak RSS stays below H plus the
# interpreter and its imports (numpy, torch: ~0.23 GB measured).
VERTEX_BYTES = 40
BLOCK_BYTES = 80
BUCKET_BYTES = 64
RESERVE_BYTES = 64 << 20
MAX_BLOCK_EDGES = 1 << 22
DEFAULT_HOST_FRACTION = 0.5  # of the memory available now, when --host-memory is not given


def _parse_chunks(value) -> int | None:
    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        return None
    try:
        p = int(value)
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError
    except (TypeError, ValueError):
        raise ValueError(f"--chunks must be an int >= 1 or 'auto', got {value!r}") from None
    if p < 1:
        raise ValueError(f"--chunks must be an int >= 1 or 'auto', got {value!r}")
    return p


@dataclass(frozen=True)
class PartitionConfig:
    """How :func:`partition_edge_list` partitions; validated and normalised on creation.

    Args:
        num_chunks: P, or None / "auto" to pick the smallest P whose row buckets fit.
        reorder: "none" | "degree" | "rcm" | "metis" (a :class:`Reorder`).
        host_memory: bytes or a size such as "2GB"; None = half the memory available now.
        sub_chunk_nnz: edge bound of a sub-chunk (default 2^20).
        num_vertices: N; default: the rows of the features or labels, else the largest id + 1.
        overwrite: replace a dataset already at the output path (once the new one is complete).
        progress: show tqdm progress bars.
    """

    num_chunks: int | str | None = None
    reorder: Reorder | str = Reorder.NONE
    host_memory: int | str | None = None
    sub_chunk_nnz: int = DEFAULT_SUB_CHUNK_NNZ
    num_vertices: int | None = None
    overwrite: bool = False
    progress: bool = False

    def __post_init__(self):
        def set_(name, value):
            object.__setattr__(self, name, value)

        set_("num_chunks", _parse_chunks(self.num_chunks))
        set_("reorder", Reorder.parse(self.reorder))
        host = self.host_memory
        if host is None:
            host = int(psutil.virtual_memory().available * DEFAULT_HOST_FRACTION)
        set_("host_memory", parse_bytes(host))
        nnz = self.sub_chunk_nnz
        if isinstance(nnz, bool) or not isinstance(nnz, (int, np.integer)) or nnz < 1:
            raise ValueError(f"--sub-chunk-nnz must be an int >= 1, got {nnz!r}")
        n = self.num_vertices
        if n is not None and (isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0):
            raise ValueError(f"--num-vertices must be an int >= 0, got {n!r}")


@dataclass(frozen=True)
class MemoryPlan:
    """How the host budget splits for a graph of N vertices (see the cost model above)."""

    host_memory: int
    num_vertices: int
    reader_bytes: int  # per edge, what the edge-list reader holds with a block

    @property
    def edge_budget(self) -> int:
        return self.host_memory - RESERVE_BYTES - VERTEX_BYTES * self.num_vertices

    @property
    def block_edges(self) -> int:
        return int(min(MAX_BLOCK_EDGES, max(1024, self.edge_budget // (BLOCK_BYTES + self.reader_bytes))))

    def bucket_fits(self, edges: int) -> bool:
        return edges * BUCKET_BYTES <= self.edge_budget

    def host_needed(self, bucket_edges: int) -> int:
        """The --host-memory under which a row bucket of ``bucket_edges`` fits."""
        return RESERVE_BYTES + VERTEX_BYTES * self.num_vertices + bucket_edges * BUCKET_BYTES


@dataclass(frozen=True)
class PartitionSummary:
    """What :func:`partition_edge_list` wrote."""

    path: str
    num_vertices: int
    num_edges: int
    num_chunks: int
    num_sub_chunks: int
    reorder: str
    host_memory: int
    max_bucket_edges: int
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        return (
            f"wrote {self.path}: {self.num_vertices} vertices, {self.num_edges} edges, "
            f"{self.num_chunks} x {self.num_chunks} chunks ({self.num_sub_chunks} sub-chunks), "
            f"reorder {self.reorder}, host memory {_gb(self.host_memory)}, {self.seconds:.1f} s"
        )


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def _bar(progress: bool, total, desc: str, unit: str = "edge") -> tqdm:
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, disable=not progress, leave=False, dynamic_ncols=True)


# ---------------------------------------------------------------- inputs


@dataclass(frozen=True)
class _VertexFile:
    """A per-vertex .npy given with --features or --labels, checked by its header."""

    path: Path
    shape: tuple[int, ...]
    dtype: np.dtype


def _open_features(path) -> _VertexFile | None:
    if path is None:
        return None
    shape, dtype = open_vertex_array(path, "features")
    if len(shape) != 2:
        hint = " (save x.reshape(-1, 1) for one feature per vertex)" if len(shape) == 1 else ""
        raise ValueError(f"{path}: features must have shape [N, F], got {list(shape)}{hint}")
    if not np.issubdtype(dtype, np.floating):
        raise ValueError(f"{path}: features must be floating point, got dtype {dtype}; save them with x.astype(np.float32)")
    return _VertexFile(Path(path), shape, dtype)


def _open_labels(path) -> _VertexFile | None:
    if path is None:
        return None
    shape, dtype = open_vertex_array(path, "labels")
    if len(shape) != 1:
        raise ValueError(f"{path}: labels must have shape [N] (one class id per vertex, not one-hot), got {list(shape)}")
    if not np.issubdtype(dtype, np.integer):
        raise ValueError(f"{path}: labels must be integer class ids, got dtype {dtype}; save them with y.astype(np.int64)")
    return _VertexFile(Path(path), shape, dtype)


def _open_masks(masks) -> dict[str, _VertexFile]:
    """Per-vertex bool masks by name (``{"train": "train.npy"}``), checked by their headers."""
    if masks is None:
        return {}
    if not isinstance(masks, dict):
        raise ValueError(f"masks must be a dict name -> .npy path, got {type(masks).__name__}")
    out = {}
    for name, path in masks.items():
        if not isinstance(name, str) or not MASK_NAME.match(name):
            raise ValueError(f"mask name {name!r} is not allowed; use 1-64 letters, digits, '_' or '-' (e.g. --mask train=train.npy)")
        shape, dtype = open_vertex_array(path, f"mask {name!r}")
        if len(shape) != 1:
            raise ValueError(f"{path}: mask {name!r} must have shape [N] (one bool per vertex), got {list(shape)}")
        if dtype != np.bool_:
            raise ValueError(f"{path}: mask {name!r} must be bool, got dtype {dtype}; save it with np.save(path, mask.astype(bool))")
        out[name] = _VertexFile(Path(path), shape, dtype)
    return out


def _resolve_n(config: PartitionConfig, features: _VertexFile | None, labels: _VertexFile | None, masks: dict[str, _VertexFile] | None = None) -> tuple[int | None, str]:
    """N if it is known before reading the edges, and where it came from (for messages)."""
    known = []
    if config.num_vertices is not None:
        known.append((int(config.num_vertices), f"--num-vertices {config.num_vertices}"))
    vertex_files = [(features, "features"), (labels, "labels")] + [(f, f"mask {name!r}") for name, f in (masks or {}).items()]
    for f, what in vertex_files:
        if f is not None:
            known.append((f.shape[0], f"the {f.shape[0]} rows of the {what} {f.path.name}"))
    for n, src in known[1:]:
        if n != known[0][0]:
            raise ValueError(f"{known[0][1]} and {src} disagree on the number of vertices; pass one row per vertex everywhere")
    return (known[0][0], known[0][1]) if known else (None, "")


# ---------------------------------------------------------------- pass 1: count


def _first(mask: np.ndarray) -> int:
    return int(np.argmax(mask))


def _count(source: EdgeList, n_known: int | None, n_from: str, plan_for, progress: bool) -> tuple[np.ndarray, np.ndarray, int]:
    """In- and out-degrees and E, validating every id. ``plan_for(n)`` gives the budget for N = n."""
    size = n_known if n_known is not None else 0
    in_deg = np.zeros(size, dtype=np.int64)
    out_deg = np.zeros(size, dtype=np.int64)
    total = 0
    # with N unknown, a quarter-size block leaves room for the degree arrays to grow into
    block_edges = plan_for(size).block_edges if n_known is not None else max(1, plan_for(1).block_edges // 4)
    block_bytes = block_edges * (BLOCK_BYTES + source.bytes_per_edge())
    with _bar(progress, source.num_edges, "pass 1/3 count") as bar:
        for blk in source.blocks(block_edges):
            src, dst = blk.src, blk.dst
            if len(blk):
                if min(int(src.min()), int(dst.min())) < 0:
                    k = _first((src < 0) | (dst < 0))
                    v = int(src[k] if src[k] < 0 else dst[k])
                    raise EdgeListError(f"{source.path}: {blk.locate(k)} has negative vertex id {v}; ids must lie in [0, N)")
                hi = max(int(src.max()), int(dst.max()))
                if n_known is not None and hi >= n_known:
                    k = _first((src >= n_known) | (dst >= n_known))
                    v = int(src[k] if src[k] >= n_known else dst[k])
                    raise EdgeListError(f"{source.path}: {blk.locate(k)} has vertex id {v} but {n_from} make N={n_known}; ids must lie in [0, {n_known}): fix the ids or pass a larger --num-vertices")
                if hi >= size:  # N not given: grow the degree arrays
                    new = max(hi + 1, int(size * 1.25))
                    if plan_for(new).edge_budget < block_bytes:
                        k = _first((src == hi) | (dst == hi))
                        raise EdgeListError(f"{source.path}: {blk.locate(k)} has vertex id {hi}, so N > {hi}, and {VERTEX_BYTES} bytes per vertex exceed the host memory; check the ids, or raise --host-memory")
                    in_deg = np.concatenate([in_deg, np.zeros(new - size, dtype=np.int64)])
                    out_deg = np.concatenate([out_deg, np.zeros(new - size, dtype=np.int64)])
                    size = new
                in_deg += np.bincount(dst, minlength=size)
                out_deg += np.bincount(src, minlength=size)
            total += len(blk)
            bar.update(len(blk))
    if n_known is None:
        if not total:  # N would be 0: an empty or wrong file, not a graph
            raise EdgeListError(f"{source.path} holds no edges, so it says nothing of the vertices; check the file, or give num_vertices=N (or features=...) for a graph without edges")
        n = int(np.flatnonzero(in_deg + out_deg)[-1]) + 1
        in_deg, out_deg = in_deg[:n].copy(), out_deg[:n].copy()
    return in_deg, out_deg, total


# ---------------------------------------------------------------- choosing P


def _row_sizes(cum_out: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """Edges per row bucket: out-degrees summed over each interval."""
    return cum_out[bounds[1:]] - cum_out[bounds[:-1]]


def _auto_chunks(in_deg: np.ndarray, cum_out: np.ndarray, num_edges: int, plan: MemoryPlan) -> int | None:
    """Smallest P (searched by doubling, then bisection) whose largest row bucket fits; None if none does."""
    n = in_deg.shape[0]

    def fits(p: int) -> bool:
        return plan.bucket_fits(int(_row_sizes(cum_out, balanced_bounds(in_deg, p)).max(initial=0)))

    top = max(n, 1)
    lo = max(1, min(top, math.ceil(num_edges * BUCKET_BYTES / max(plan.edge_budget, 1))))
    if fits(lo):
        return lo
    hi = lo
    while not fits(hi):
        if hi >= top:
            return None
        lo, hi = hi, min(top, hi * 2)
    while hi - lo > 1:  # lo fails, hi fits
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fits(mid) else (mid, hi)
    return hi


def _too_big(i: int, rows: np.ndarray, p: int, plan: MemoryPlan, auto: int | None, chosen: bool) -> ValueError:
    n_i = int(rows[i])
    fix = f"use --chunks auto (P={auto} fits) or" if auto is not None else "use a larger --chunks or"
    what = f"--chunks {p}" if chosen else f"P={p} from the METIS parts"
    return ValueError(
        f"{what}: row bucket {i} holds {n_i} edges, which need {_gb(n_i * BUCKET_BYTES)} in pass 3 but only "
        f"{_gb(max(plan.edge_budget, 0))} of --host-memory {_gb(plan.host_memory)} is left for edges; "
        f"{fix} --host-memory >= {_gb(plan.host_needed(n_i))}"
    )


# ---------------------------------------------------------------- passes 2 and 3


def _record_dtype(num_vertices: int) -> np.dtype:
    dst = "<i4" if num_vertices < 2**31 else "<i8"
    return np.dtype([("src", "<i4"), ("dst", dst), ("eid", "<i8")])


def _bucket(source: EdgeList, inv: np.ndarray | None, bounds: np.ndarray, paths: list[Path], rec: np.dtype, block_edges: int, progress: bool) -> None:
    """Pass 2: append every edge's record to the file of its source interval."""
    p = len(paths)
    key_type = np.int16 if p < 2**15 else np.int32
    with _bar(progress, source.num_edges, "pass 2/3 bucket") as bar:
        for blk in source.blocks(block_edges):
            src, dst = (blk.src, blk.dst) if inv is None else (inv[blk.src], inv[blk.dst])
            pi = interval_of(bounds, src)
            order = np.argsort(pi.astype(key_type), kind="stable")
            pi = pi[order]
            out = np.empty(order.shape[0], dtype=rec)
            out["src"] = src[order] - bounds[pi]
            out["dst"] = dst[order]
            out["eid"] = order + blk.start
            del src, dst, order
            counts = np.bincount(pi, minlength=p)
            ends = np.cumsum(counts)
            for i in np.flatnonzero(counts):
                with open(paths[i], "ab") as f:
                    out[ends[i] - counts[i] : ends[i]].tofile(f)
            bar.update(len(blk))


def _build(writer: DatasetWriter, paths: list[Path], rows: np.ndarray, rec: np.dtype, sub_chunk_nnz: int, progress: bool) -> int:
    """Pass 3: one row bucket at a time, sorted by destination, cut into chunks and sub-chunks."""
    bounds = writer.bounds
    subs = 0
    with _bar(progress, int(rows.sum()), "pass 3/3 build") as bar:
        for i, path in enumerate(paths):
            if rows[i] == 0:
                continue
            records = np.fromfile(path, dtype=rec)
            if records.shape[0] != rows[i]:
                raise ValueError(f"row bucket {i} holds {records.shape[0]} edges but pass 1 counted {rows[i]}: the edge list changed while it was being partitioned; rerun")
            path.unlink()
            order = np.argsort(records["dst"], kind="stable")  # ties keep ascending edge ids
            dst, src, eid = records["dst"][order], records["src"][order], records["eid"][order]
            del records, order
            cuts = np.searchsorted(dst, bounds)
            for j in np.flatnonzero(np.diff(cuts)):
                a, b = int(cuts[j]), int(cuts[j + 1])
                for c in split_chunk(i, int(j), bounds, dst[a:b] - dst.dtype.type(bounds[j]), src[a:b], eid[a:b], sub_chunk_nnz):
                    writer.add_sub_chunk(c)
                    subs += 1
            del dst, src, eid
            bar.update(int(rows[i]))
    return subs


# ---------------------------------------------------------------- vertex data


def _vertex_blocks(f: _VertexFile, order: np.ndarray | None, n: int, rows_per_block: int, dtype, check) -> Iterator[np.ndarray]:
    """Rows of a per-vertex file in dataset order (``order[k]`` = input row of vertex k), cast to ``dtype``, block by block.

    ``check(block, input_row)`` sees each cast block; ``input_row(k)`` is the input row of its k-th row.
    """
    for r0 in range(0, n, rows_per_block):
        r1 = min(n, r0 + rows_per_block)
        rows = slice(r0, r1) if order is None else order[r0:r1]
        with np.errstate(over="ignore"):  # a value beyond dtype becomes inf, which check() reports
            block = read_rows(f.path, rows).astype(dtype, copy=False)
        check(block, (lambda k: r0 + k) if order is None else (lambda k: int(rows[k])))
        yield block


def _rows_per_block(f: _VertexFile, plan: MemoryPlan, gather: bool) -> int:
    row = max(1, f.dtype.itemsize * int(np.prod(f.shape[1:], dtype=np.int64)))
    return max(1, plan.edge_budget // (3 * row + (8192 if gather else 0)))


def _write_features(writer: DatasetWriter, f: _VertexFile, order: np.ndarray | None, plan: MemoryPlan) -> None:
    stored = f.dtype if f.dtype.name in ("float16", "float32") else np.dtype(np.float32)

    def check(block: np.ndarray, input_row) -> None:
        ok = np.isfinite(block.reshape(block.shape[0], -1)).all(axis=1)
        if not ok.all():
            r = input_row(_first(~ok))
            beyond = "" if stored == f.dtype else f" (or a value beyond {stored.name})"
            raise ValueError(f"{f.path}: row {r} (vertex {r}) holds NaN or Inf{beyond}; clean the features (e.g. np.nan_to_num) before partitioning")

    n = writer.num_vertices
    blocks = _vertex_blocks(f, order, n, _rows_per_block(f, plan, order is not None), stored, check)
    writer.write_features(blocks, shape=(n, f.shape[1]), dtype=stored)


def _write_labels(writer: DatasetWriter, f: _VertexFile, order: np.ndarray | None, plan: MemoryPlan) -> int:
    n = writer.num_vertices
    top = 0

    def check(block: np.ndarray, input_row) -> None:
        nonlocal top
        if block.shape[0] and int(block.min()) < 0:
            r = input_row(_first(block < 0))
            raise ValueError(f"{f.path}: row {r} holds class id {int(block.min())}; class ids must lie in [0, num_classes): fix the labels")
        top = max(top, int(block.max(initial=-1)) + 1)

    for _ in _vertex_blocks(f, None, n, _rows_per_block(f, plan, False), np.int64, check):  # num_classes first
        pass
    blocks = _vertex_blocks(f, order, n, _rows_per_block(f, plan, order is not None), np.int64, lambda b, r: None)
    writer.write_labels(blocks, top, shape=(n,))
    return top


# ---------------------------------------------------------------- the whole run


def _load_all(source: EdgeList, num_edges: int, block_edges: int) -> tuple[np.ndarray, np.ndarray]:
    src = np.empty(num_edges, dtype=np.int64)
    dst = np.empty(num_edges, dtype=np.int64)
    for blk in source.blocks(block_edges):
        src[blk.start : blk.start + len(blk)] = blk.src
        dst[blk.start : blk.start + len(blk)] = blk.dst
    return src, dst


def _reorder(config: PartitionConfig, source: EdgeList, in_deg, out_deg, num_edges: int, plan: MemoryPlan) -> tuple[np.ndarray | None, np.ndarray | None, int | None]:
    """(order, bounds from METIS or None, P for METIS) for ``config.reorder``."""
    how, n = config.reorder, in_deg.shape[0]
    if how is Reorder.NONE:
        return None, None, None
    if how is Reorder.DEGREE:
        return degree_order(in_deg), None, None
    need = num_edges * IN_MEMORY_BYTES_PER_EDGE[how]
    if need > plan.edge_budget:
        raise ValueError(
            f"--reorder {how.value} needs the whole graph in memory (~{_gb(need)} for {num_edges} edges) but only "
            f"{_gb(max(plan.edge_budget, 0))} of --host-memory {_gb(plan.host_memory)} is left for edges; "
            f"raise --host-memory to {_gb(plan.host_memory - plan.edge_budget + need)} or use --reorder degree|none"
        )
    src, dst = _load_all(source, num_edges, plan.block_edges)
    if how is Reorder.RCM:
        return rcm_order(src, dst, n), None, None
    # METIS balances in- plus out-edges per part: the parts become the
    # intervals, so both the chunk columns and the row buckets come out even.
    # With --chunks auto, P starts from the average row bucket and grows (at
    # most 3 times) while METIS's largest row bucket does not fit.
    weights = in_deg + out_deg + 1
    p, top = config.num_chunks, max(n, 1)
    if p is None:
        p = max(1, min(top, math.ceil(1.05 * num_edges * BUCKET_BYTES / max(plan.edge_budget, 1))))
    for _ in range(4):
        order, bounds = metis_order(src, dst, n, p, weights)
        if bounds is None or config.num_chunks is not None or p >= top:
            break
        cum_out = np.concatenate([[0], np.cumsum(out_deg[order])])
        worst = int(_row_sizes(cum_out, bounds).max())
        if plan.bucket_fits(worst):
            break
        p = min(top, max(p + 1, math.ceil(1.1 * p * worst * BUCKET_BYTES / plan.edge_budget)))
    return order, bounds, p


def partition_edge_list(edges, out, config: PartitionConfig | None = None, features=None, labels=None, masks=None) -> PartitionSummary:
    """Partition the edge list at ``edges`` into the dataset directory ``out``, never holding all edges.

    Args:
        edges: a ``.npy`` int array [2, E] or [E, 2], or a text file of "src dst" lines.
        out: the dataset directory to create (atomically: complete or absent).
        config: P, reordering, host budget, ... (:class:`PartitionConfig`).
        features: optional ``.npy`` [N, F] floats (float64 is stored as float32).
        labels: optional ``.npy`` [N] integer class ids.
        masks: optional dict name -> ``.npy`` [N] bool (e.g. ``{"train": "train.npy"}``);
            ``sagann train`` needs train, val and test.

    Returns a :class:`PartitionSummary`. Raises ValueError (one line, naming
    the file, edge or line and the fix) before anything appears at ``out``.
    """
    t0 = time.perf_counter()
    config = config or PartitionConfig()
    out = Path(os.path.abspath(os.fspath(out)))
    check_target(out, config.overwrite)
    source = open_edge_list(edges)
    feats, labs, mask_files = _open_features(features), _open_labels(labels), _open_masks(masks)
    n_known, n_from = _resolve_n(config, feats, labs, mask_files)

    def plan_for(n: int) -> MemoryPlan:
        return MemoryPlan(config.host_memory, n, source.bytes_per_edge())

    if n_known is not None and plan_for(n_known).edge_budget <= 0:
        raise ValueError(f"--host-memory {_gb(config.host_memory)} cannot hold the per-vertex arrays of {n_known} vertices ({VERTEX_BYTES} bytes each) plus {_gb(RESERVE_BYTES)}; raise it to at least {_gb(plan_for(n_known).host_needed(1 << 20))}")

    in_deg, out_deg, num_edges = _count(source, n_known, n_from, plan_for, config.progress)
    n = in_deg.shape[0]
    plan = plan_for(n)
    if plan.edge_budget <= 0:
        raise ValueError(f"--host-memory {_gb(config.host_memory)} cannot hold the per-vertex arrays of {n} vertices; raise it to at least {_gb(plan.host_needed(1 << 20))}")

    order, bounds, p = _reorder(config, source, in_deg, out_deg, num_edges, plan)
    if order is not None:
        in_deg, out_deg = in_deg[order], out_deg[order]
    cum_out = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(out_deg, out=cum_out[1:])
    del out_deg
    auto = _auto_chunks(in_deg, cum_out, num_edges, plan) if bounds is None else None
    if bounds is None:
        p = config.num_chunks or auto
        if p is None:
            heavy = int(np.argmax(np.diff(cum_out)))
            raise ValueError(f"vertex {heavy} alone has {int(cum_out[heavy + 1] - cum_out[heavy])} out-edges, more than one row bucket can hold under --host-memory {_gb(config.host_memory)}; raise it to at least {_gb(plan.host_needed(int(cum_out[heavy + 1] - cum_out[heavy])))}")
        bounds = balanced_bounds(in_deg, p)
    rows = _row_sizes(cum_out, bounds)
    del cum_out
    too_big = np.flatnonzero(rows * BUCKET_BYTES > plan.edge_budget)
    if too_big.size:
        raise _too_big(int(too_big[0]), rows, p, plan, auto, config.num_chunks is not None)
    if n and int(np.diff(bounds).max()) >= 2**31:
        raise ValueError(f"an interval of {int(np.diff(bounds).max())} vertices is too large for int32 local ids; use a larger --chunks")

    with DatasetWriter(out, n, num_edges, bounds, config.sub_chunk_nnz, overwrite=config.overwrite) as writer:
        if order is not None:
            writer.write_vertex_order(order, config.reorder.value)
        writer.write_in_degree(in_deg)
        del in_deg
        if feats is not None:
            _write_features(writer, feats, order, plan)
        if labs is not None:
            _write_labels(writer, labs, order, plan)
        for name, f in mask_files.items():  # one byte per vertex: read whole, in dataset order
            writer.write_mask(name, read_rows(f.path, slice(None) if order is None else order))
        inv = None if order is None else inverse_permutation(order)
        del order
        scratch = writer.scratch_dir
        paths = [scratch / f"row-{i}.bin" for i in range(p)]
        rec = _record_dtype(n)
        _bucket(source, inv, bounds, paths, rec, plan.block_edges, config.progress)
        del inv
        subs = _build(writer, paths, rows, rec, config.sub_chunk_nnz, config.progress)
    return PartitionSummary(
        path=str(out),
        num_vertices=n,
        num_edges=num_edges,
        num_chunks=p,
        num_sub_chunks=subs,
        reorder=config.reorder.value,
        host_memory=config.host_memory,
        max_bucket_edges=int(rows.max(initial=0)),
        seconds=round(time.perf_counter() - t0, 3),
    )
