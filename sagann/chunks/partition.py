"""2D partition of an edge list into P vertex intervals and P x P edge chunks."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable, Iterator

import numpy as np

from sagann.chunks._sorting import chunk_counts, compact_sources, destination_major, regroup, sub_chunk_arrays  # noqa: F401  (chunk_counts: re-exported)
from sagann.chunks.types import ChunkId, EdgeChunk, Partition, file_backed  # noqa: F401  (file_backed: re-exported)

DEFAULT_SUB_CHUNK_NNZ = 1 << 20
CHUNK_ARRAYS = ("dst_ptr", "dst_idx", "src_idx", "src_rows", "src_ptr", "src_perm", "edge_ids")  # an EdgeChunk's index arrays


def as_edge_index(edge_index, num_vertices: int) -> np.ndarray:
    """Validate a ``[2, E]`` edge list (numpy or torch) and return it as int64 numpy.

    Raises ValueError naming the problem and the fix; nothing is modified.
    """
    if isinstance(num_vertices, bool) or not isinstance(num_vertices, (int, np.integer)) or num_vertices < 0:
        raise ValueError(f"num_vertices must be a non-negative int, got {num_vertices!r}")
    if hasattr(edge_index, "detach"):  # torch.Tensor, without importing torch here
        edge_index = edge_index.detach().cpu().numpy()
    edge_index = np.asarray(edge_index)
    if edge_index.ndim != 2 or edge_index.shape[0] != 2:
        hint = " (it looks like [E, 2]: pass edge_index.T)" if edge_index.ndim == 2 and edge_index.shape[1] == 2 else ""
        raise ValueError(f"edge_index must have shape [2, E] (row 0 = source, row 1 = destination), got {list(edge_index.shape)}{hint}")
    if not np.issubdtype(edge_index.dtype, np.integer):
        raise ValueError(f"edge_index must hold integer vertex ids, got dtype {edge_index.dtype}; convert with .astype(np.int64) after checking the ids are whole numbers")
    edge_index = edge_index.astype(np.int64, copy=False)
    if edge_index.shape[1]:
        lo, hi = int(edge_index.min()), int(edge_index.max())
        if lo < 0:
            col = int(np.argmin(edge_index.min(axis=0)))
            raise ValueError(f"edge_index has a negative vertex id ({lo}, edge {col}); ids must lie in [0, {num_vertices})")
        if hi >= num_vertices:
            col = int(np.argmax(edge_index.max(axis=0)))
            raise ValueError(f"edge_index has vertex id {hi} (edge {col}) but num_vertices={num_vertices}; ids must lie in [0, {num_vertices}): pass num_vertices={hi + 1} or fix the ids")
    return edge_index


def balanced_bounds(in_degree: np.ndarray, num_chunks: int, vertex_weight: float = 1.0) -> np.ndarray:
    """Interval boundaries ``[P + 1]`` balancing in-edges plus ``vertex_weight`` per vertex.

    Each vertex weighs ``in_degree + vertex_weight``: with 1, edge chunks come
    out even while runs of isolated vertices cannot make one interval huge;
    the planner passes the ratio of a vertex's resident bytes to an edge's,
    so intervals balance device memory. Intervals are empty only when P > N.
    """
    n = int(in_degree.shape[0])
    if num_chunks < 1:
        raise ValueError(f"num_chunks must be >= 1, got {num_chunks}")
    weight = np.cumsum(in_degree.astype(np.float64) + float(vertex_weight))
    total = float(weight[-1]) if n else 0.0
    targets = np.arange(1, num_chunks) * (total / num_chunks)
    cuts = np.searchsorted(weight, targets, side="right") if n else np.zeros(num_chunks - 1, dtype=np.int64)
    bounds = np.maximum.accumulate(np.concatenate([[0], cuts, [n]]).astype(np.int64))
    if n >= num_chunks:  # a vertex heavier than a whole interval must not leave an interval empty
        k = np.arange(num_chunks + 1)
        bounds = np.minimum(np.maximum(bounds, k), n - (num_chunks - k))
    return bounds


def interval_of(bounds: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Interval index of each vertex id."""
    return np.searchsorted(bounds, vertices, side="right") - 1


def sub_chunk_ranges(dst_ptr: np.ndarray, max_nnz: int) -> list[tuple[int, int, int, int]]:
    """Cut a chunk's edges into runs of exactly ``max_nnz`` (the last shorter): ``(e0, e1, r0, r1)``.

    A run may start or end inside a destination row: every reducer merges
    partial rows exactly (sums add, max/min keep the smallest winning edge id,
    the online softmax rescales), so a heavy row never forces a big sub-chunk.
    ``r0..r1`` are the rows the run touches.
    """
    nnz = int(dst_ptr[-1])
    out = []
    for e0 in range(0, nnz, max_nnz):
        e1 = min(e0 + max_nnz, nnz)
        r0 = int(np.searchsorted(dst_ptr, e0, side="right") - 1)  # row holding edge e0
        r1 = int(np.searchsorted(dst_ptr, e1 - 1, side="right"))  # one past the row holding edge e1 - 1
        out.append((e0, e1, r0, r1))
    return out


def make_sub_chunk(
    cid: ChunkId,
    src_start: int,
    dst_start: int,
    dst_offset: int,
    dst_ptr: np.ndarray,
    src_local: np.ndarray,
    edge_ids: np.ndarray,
    src_interval_rows: int | None = None,
) -> EdgeChunk:
    """Build one sub-chunk from CSC rows: compact sources and a source-major view.

    Args:
        dst_ptr: int64 row pointer of the covered rows, starting at 0.
        src_local: source id of each edge local to interval i.
        edge_ids: global edge position of each edge.
        src_interval_rows: the size of interval i (default: one past the largest source).
    """
    # trim empty rows at the end so num_dst covers exactly the used rows
    last = int(np.searchsorted(dst_ptr, dst_ptr[-1], side="left"))
    dst_ptr = dst_ptr[: last + 1]
    if src_interval_rows is None:
        src_interval_rows = int(src_local.max()) + 1 if src_local.shape[0] else 0
    src_rows, src_idx, src_ptr, src_perm = compact_sources(src_local, src_interval_rows)
    num_dst = dst_ptr.shape[0] - 1
    return EdgeChunk(
        id=cid,
        src_start=src_start,
        dst_start=dst_start,
        dst_offset=dst_offset,
        dst_ptr=dst_ptr.astype(np.int32),
        dst_idx=np.repeat(np.arange(num_dst, dtype=np.int32), np.diff(dst_ptr)),
        src_idx=src_idx,
        src_rows=src_rows,
        src_ptr=src_ptr,
        src_perm=src_perm,
        edge_ids=np.ascontiguousarray(edge_ids, dtype=np.int64),
    )


def split_chunk(
    i: Partition,
    j: Partition,
    bounds: np.ndarray,
    dst_local: np.ndarray,
    src_local: np.ndarray,
    edge_ids: np.ndarray,
    max_nnz: int,
) -> list[EdgeChunk]:
    """Cut the edges of E_ij (already sorted by destination, then edge id) into sub-chunks, built in one pass
    (:func:`~sagann.chunks._sorting.sub_chunk_arrays`); each sub-chunk's arrays view the chunk's."""
    meta, dst_ptr, dst_idx, src_idx, src_rows, src_ptr, src_perm = sub_chunk_arrays(dst_local, src_local, int(bounds[i + 1] - bounds[i]), max_nnz)
    ids = np.ascontiguousarray(edge_ids, dtype=np.int64)
    src_start, dst_start, nnz = int(bounds[i]), int(bounds[j]), int(ids.shape[0])
    subs, p, rows_at = [], 0, 0
    for k, (r0, nd, m) in enumerate(meta.tolist()):
        e0, e1 = k * max_nnz, min((k + 1) * max_nnz, nnz)
        subs.append(EdgeChunk(
            ChunkId(i, j, k), src_start, dst_start, r0, dst_ptr[p : p + nd + 1], dst_idx[e0:e1], src_idx[e0:e1],
            src_rows[rows_at : rows_at + m], src_ptr[rows_at + k : rows_at + k + m + 1],  # each earlier sub-chunk's pointer is one entry longer
            src_perm[e0:e1], ids[e0:e1],
        ))
        p, rows_at = p + nd + 1, rows_at + m
    return subs


def pack_chunks(subs: list[EdgeChunk], alloc: Callable[[int], np.ndarray] | None = None) -> list[EdgeChunk]:
    """The index arrays of ``subs`` (one chunk's sub-chunks) moved into one buffer; ``subs`` is returned.

    A fine partition has thousands of arrays of a few KB: each its own
    allocation, they land in malloc's heap between short-lived buffers and
    pin its pages after those are freed. One buffer per chunk is one
    allocation (its own mapping, returned whole). ``alloc(nbytes)`` makes
    the uint8 buffer (default: RAM; the host budget passes a spill file).
    Arrays already file-backed (a dataset's, memory-mapped) stay as they are.
    """
    arrays = [(c, name, getattr(c, name)) for c in subs for name in CHUNK_ARRAYS]
    if all(file_backed(a) for _, _, a in arrays):
        return subs
    aligned = lambda n: (n + 63) // 64 * 64  # noqa: E731
    total = sum(aligned(a.nbytes) for _, _, a in arrays)
    if total:
        store = np.empty(total, dtype=np.uint8) if alloc is None else alloc(total)
        off = 0
        for c, name, a in arrays:
            view = store[off : off + a.nbytes].view(a.dtype).reshape(a.shape)
            view[...] = a
            object.__setattr__(c, name, view)  # a frozen dataclass: the arrays' values do not change
            off += aligned(a.nbytes)
    return subs


@dataclass
class GraphPartition:
    """A graph split into P intervals and its non-empty sub-chunks, by (i, j)."""

    num_vertices: int
    num_edges: int
    bounds: np.ndarray  # int64 [P + 1]
    chunks: dict[tuple[int, int], list[EdgeChunk]]
    in_degree: np.ndarray  # int64 [N]
    sub_chunk_nnz: int
    # makes the E-long arrays derived per partition (``edge_order``): numpy's default, or the host budget's (a spill file past it)
    alloc: Callable[[int, np.dtype], np.ndarray] | None = field(default=None, repr=False, compare=False)

    @property
    def num_chunks(self) -> int:
        """P, the number of vertex intervals."""
        return int(self.bounds.shape[0] - 1)

    def interval(self, p: Partition) -> tuple[int, int]:
        return int(self.bounds[p]), int(self.bounds[p + 1])

    def interval_size(self, p: Partition) -> int:
        lo, hi = self.interval(p)
        return hi - lo

    def intervals(self) -> Iterator[tuple[Partition, int, int]]:
        """``(p, lo, hi)`` of every non-empty interval."""
        for p in range(self.num_chunks):
            lo, hi = self.interval(p)
            if hi > lo:
                yield p, lo, hi

    def column(self, j: Partition) -> Iterator[EdgeChunk]:
        """Sub-chunks with destinations in V_j, in source order."""
        for i in range(self.num_chunks):
            yield from self.chunks.get((i, j), ())

    def row(self, i: Partition) -> Iterator[EdgeChunk]:
        """Sub-chunks with sources in V_i, in destination order."""
        for j in range(self.num_chunks):
            yield from self.chunks.get((i, j), ())

    def sub_chunks(self) -> Iterator[EdgeChunk]:
        for key in sorted(self.chunks):
            yield from self.chunks[key]

    @property
    def num_sub_chunks(self) -> int:
        return sum(len(v) for v in self.chunks.values())

    @cached_property
    def edge_order(self) -> tuple[np.ndarray, dict[ChunkId, int]]:
        """Edge ids in sub-chunk order, and where each sub-chunk's edges start in it.

        Edge features permuted by this order give every sub-chunk its edge
        rows as one contiguous slice (a view, or one block copy) instead of a
        random gather by ``edge_ids`` in every pass.
        """
        subs = list(self.sub_chunks())
        # an index for index_select: int32 is enough where it fits, and half the memory; filled in place, no E-long int64 temporary
        dtype = np.dtype(np.int32 if self.num_edges <= np.iinfo(np.int32).max else np.int64)
        total = sum(c.nnz for c in subs)
        order = np.empty(total, dtype=dtype) if self.alloc is None else self.alloc(total, dtype)
        starts, at = {}, 0
        for c in subs:
            starts[c.id] = at
            order[at : at + c.nnz] = c.edge_ids
            at += c.nnz
        return order, starts

    def edge_index(self) -> np.ndarray:
        """Rebuild the ``[2, E]`` edge list in the original edge order."""
        out = np.empty((2, self.num_edges), dtype=np.int64)
        for c in self.sub_chunks():
            out[0, c.edge_ids] = c.global_src()
            out[1, c.edge_ids] = c.global_dst()
        return out


@dataclass(frozen=True)
class ChunkOrder:
    """An edge list grouped by the chunks of one set of bounds, each chunk by destination: the part of a cut
    that does not depend on the sub-chunk size, kept while a search cuts one P with several sizes.

    ``edge_ids[starts[k] : starts[k + 1]]`` are chunk ``k``'s edges (``k = i * P + j``), ``src`` and ``dst`` their
    global ids in that order; int32 where ids and positions fit (12 bytes an edge).
    """

    bounds: np.ndarray
    starts: np.ndarray
    edge_ids: np.ndarray
    src: np.ndarray
    dst: np.ndarray
    in_degree: np.ndarray


def order_edges(edge_index, num_vertices: int, bounds: np.ndarray, in_degree: np.ndarray | None = None) -> ChunkOrder:
    """``edge_index`` (``[2, E]``, numpy or torch) grouped for ``bounds`` (:class:`ChunkOrder`); ``in_degree``: its
    destinations' counts where the caller has them (else counted here).

    The edges in destination order (:func:`destination_major`), split by
    source interval (:func:`regroup`): the order a stable sort by (chunk,
    destination) gives, each row's edges in ascending position.
    """
    ei = as_edge_index(edge_index, num_vertices)
    if in_degree is None:
        in_degree = np.bincount(ei[1], minlength=num_vertices).astype(np.int64)
    csc = _destination_order(ei, num_vertices)
    del ei  # a copy where the caller's list was not int64 numpy: it goes before the grouping is made
    bounds = np.asarray(bounds, dtype=np.int64)
    return ChunkOrder(bounds, *regroup(*csc, bounds), in_degree)


def _destination_order(ei: np.ndarray, num_vertices: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`destination_major` of a validated edge list (:func:`as_edge_index`), int32 ids where they fit."""
    return destination_major(ei[0], ei[1], num_vertices, _id_dtype(num_vertices, ei.shape[1]))


class OrderCache:
    """The :class:`ChunkOrder` of the last bounds a search cut, while :meth:`searching` (a planner's search re-cuts
    one P with growing sub-chunks: grouping the edges again each time was two thirds of a cut).

    The edges are put in destination order once per search (8 bytes an
    edge beside the 12 of a grouping) and each new set of bounds regroups
    that order in one pass: sorting the list anew for each P tried was most
    of a large graph's planning (R-MAT 2^21, 33M edges: 1.6 s a grouping),
    and a derived graph (GCN's self loops) rebuilt its list for each.
    """

    def __init__(self):
        self._on, self._hit, self._csc = False, None, None
        self.in_search = False  # inside searching(), whether or not the edges could be grouped in RAM

    @contextlib.contextmanager
    def searching(self):
        self._on = self.in_search = True
        try:
            yield
        finally:
            self._on, self._hit, self._csc, self.in_search = False, None, None, False  # their 20 bytes an edge go with the search

    def for_bounds(self, bounds: np.ndarray) -> ChunkOrder | None:
        """The grouping kept, if it is for ``bounds``."""
        hit = self._hit
        return hit if hit is not None and np.array_equal(hit.bounds, bounds) else None

    def ordered(self, edges: Callable[[], object], num_vertices: int, in_degree: np.ndarray, num_chunks: int, vertex_weight: float) -> ChunkOrder | None:
        """The grouping ``partition_graph`` would make for these bounds, kept for the next cut; None outside a search
        or where ``edges()`` (called once a search: a derived graph rebuilds its list) is not an edge list in RAM."""
        if not self._on:
            return None
        bounds = balanced_bounds(in_degree, int(num_chunks), vertex_weight)
        if self._hit is None or not np.array_equal(self._hit.bounds, bounds):
            self._hit = None  # the last one goes before the next is made
            if self._csc is None:
                edge_index = edges()
                if isinstance(edge_index, GraphPartition):  # a file-backed graph is re-cut chunk by chunk instead
                    self._on = False
                    return None
                self._csc = _destination_order(as_edge_index(edge_index, num_vertices), num_vertices)
                del edge_index
            self._hit = ChunkOrder(np.asarray(bounds, np.int64), *regroup(*self._csc, bounds), in_degree)
        return self._hit


def _check_bounds(bounds, num_chunks: int, num_vertices: int) -> None:
    b = np.asarray(bounds)
    if b.shape != (num_chunks + 1,) or b[0] != 0 or b[-1] != num_vertices or np.any(np.diff(b) < 0):
        raise ValueError(f"bounds must be a non-decreasing array of {num_chunks + 1} ints from 0 to {num_vertices}")


def _id_dtype(num_vertices: int, num_edges: int):
    """int32 where vertex ids and edge positions fit, else int64 (a grouping's arrays)."""
    return np.int32 if max(int(num_vertices), int(num_edges)) < 2**31 else np.int64


def partition_graph(
    edge_index,
    num_vertices: int,
    num_chunks: int,
    sub_chunk_nnz: int | None = None,
    bounds: np.ndarray | None = None,
    vertex_weight: float = 1.0,
    place: Callable[[list[EdgeChunk]], list[EdgeChunk]] | None = None,
    ordered: ChunkOrder | None = None,
) -> GraphPartition:
    """Split a graph into ``num_chunks`` intervals and its P x P edge chunks.

    Args:
        edge_index: ``[2, E]`` source/destination ids (numpy or torch).
        num_vertices: N; every id must lie in ``[0, N)``.
        num_chunks: P >= 1.
        sub_chunk_nnz: edges per sub-chunk (the last of a chunk may have
            fewer); a heavy destination row is spread over several.
        bounds: explicit interval boundaries ``[P + 1]`` (default: balanced).
        vertex_weight: weight of a vertex against one in-edge when balancing.
        place: called on each chunk's sub-chunks as soon as they are built
            (e.g. to move their arrays into a file), so the whole partition
            is never in RAM at once.
        ordered: the edges already grouped (:func:`order_edges`): its
            edges and bounds are used, ``edge_index`` may be None. The
            same partition.
    """
    if isinstance(num_chunks, bool) or not isinstance(num_chunks, (int, np.integer)) or num_chunks < 1:
        raise ValueError(f"num_chunks must be an int >= 1, got {num_chunks!r}")
    max_nnz = DEFAULT_SUB_CHUNK_NNZ if sub_chunk_nnz is None else int(sub_chunk_nnz)
    if max_nnz < 1:
        raise ValueError(f"sub_chunk_nnz must be >= 1, got {sub_chunk_nnz}")
    if ordered is None:
        ei = as_edge_index(edge_index, num_vertices)
        in_degree = np.bincount(ei[1], minlength=num_vertices).astype(np.int64)
        if bounds is None:
            bounds = balanced_bounds(in_degree, int(num_chunks), vertex_weight)
        _check_bounds(bounds, num_chunks, num_vertices)
        ordered = order_edges(ei, num_vertices, bounds, in_degree)  # by (chunk, destination), each row's edges ascending
        del ei
    else:
        _check_bounds(ordered.bounds, num_chunks, num_vertices)
    bounds, in_degree, num_edges, P = ordered.bounds, ordered.in_degree, int(ordered.edge_ids.shape[0]), int(num_chunks)
    starts = ordered.starts
    chunks: dict[tuple[int, int], list[EdgeChunk]] = {}
    for k in np.flatnonzero(np.diff(starts)):
        i, j = divmod(int(k), P)
        a, z = starts[k], starts[k + 1]
        subs = split_chunk(i, j, bounds, ordered.dst[a:z] - bounds[j], ordered.src[a:z] - bounds[i], ordered.edge_ids[a:z], max_nnz)
        chunks[(i, j)] = subs if place is None else place(subs)
    return GraphPartition(
        num_vertices=int(num_vertices),
        num_edges=num_edges,
        bounds=bounds,
        chunks=chunks,
        in_degree=in_degree,
        sub_chunk_nnz=max_nnz,
    )
