"""A partition's sub-chunks by their sizes alone: what a planner's search needs to judge a candidate.

A search for the partition of a layer call cuts many candidates (each P it
bisects over, each sub-chunk size it widens to) only to ask whether their
working set fits and how many bytes and steps they take. The memory model
and the time model read a sub-chunk's sizes (edges, source and destination
rows, the bytes of its index arrays), never its arrays; building the arrays
was most of a cut. :func:`sketch_partition` counts the sizes in one pass over
edges already grouped by chunk (:class:`~sagann.chunks.partition.ChunkOrder`),
and the planner cuts for real only the candidate it settles on. Both count
the same sub-chunks: ``tests/chunks/test_sketch.py`` compares them, and the
working sets and estimates the planner computes from them.
"""
from __future__ import annotations

from dataclasses import dataclass

from sagann.chunks._sorting import sub_chunk_sizes
from sagann.chunks.partition import ChunkOrder, GraphPartition
from sagann.chunks.types import ChunkId, EdgeChunk

__all__ = ["SubChunkSizes", "is_sketch", "sketch_partition"]

INT32, INT64 = 4, 8


class _Size:
    """An index array's size, standing in for the array: reading its values fails (a sketch holds none)."""

    __slots__ = ("nbytes",)

    def __init__(self, nbytes: int):
        self.nbytes = int(nbytes)


@dataclass(frozen=True, eq=False)
class SubChunkSizes:
    """One sub-chunk's sizes, read as :class:`~sagann.chunks.types.EdgeChunk`'s are (``nnz``, ``num_src``,
    ``num_dst``, ``nbytes``, ``src_rows.nbytes``, ``edge_ids.nbytes``, 16-bit fits, bytes sent)."""

    id: ChunkId
    nnz: int
    num_dst: int
    num_src: int
    dst_rows_bytes: int = 0  # a compacted sub-chunk's row list (memory_model.backward_sizes)
    with_edges: int | None = None  # destination rows with an edge (None: not counted, taken as all)

    @property
    def rows_with_edges(self) -> int:
        return self.num_dst if self.with_edges is None else self.with_edges

    @property
    def src_rows(self) -> _Size:
        return _Size(INT32 * self.num_src)

    @property
    def edge_ids(self) -> _Size:
        return _Size(INT64 * self.nnz)

    @property
    def nbytes(self) -> int:
        """As ``EdgeChunk.nbytes``: dst_ptr, dst_idx, src_idx, src_rows, src_ptr, src_perm (int32), edge_ids (int64)."""
        return INT32 * (self.num_dst + 1 + 3 * self.nnz + 2 * self.num_src + 1) + INT64 * self.nnz + self.dst_rows_bytes

    fits_16_bits = EdgeChunk.fits_16_bits
    crosses_short = EdgeChunk.crosses_short
    crossing_arrays = EdgeChunk.crossing_arrays
    sent_index_bytes = EdgeChunk.sent_index_bytes


def sketch_partition(ordered: ChunkOrder, num_vertices: int, sub_chunk_nnz: int) -> GraphPartition:
    """The partition ``partition_graph(..., sub_chunk_nnz, ordered=ordered)`` would cut, its sub-chunks as sizes only."""
    bounds, p = ordered.bounds, int(ordered.bounds.shape[0] - 1)
    chunks: dict[tuple[int, int], list] = {}
    for c, nnz, num_dst, num_src, reached in sub_chunk_sizes(ordered.starts, ordered.src, ordered.dst, bounds, sub_chunk_nnz).tolist():
        subs = chunks.setdefault(divmod(c, p), [])
        subs.append(SubChunkSizes(ChunkId(c // p, c % p, len(subs)), nnz, num_dst, num_src, with_edges=reached))
    return GraphPartition(num_vertices=int(num_vertices), num_edges=int(ordered.edge_ids.shape[0]), bounds=bounds, chunks=chunks,
                          in_degree=ordered.in_degree, sub_chunk_nnz=int(sub_chunk_nnz))


def is_sketch(partition: GraphPartition) -> bool:
    """Are ``partition``'s sub-chunks sizes only (:func:`sketch_partition`)?"""
    return any(isinstance(subs[0], SubChunkSizes) for subs in partition.chunks.values())
