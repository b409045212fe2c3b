"""Whole sub-chunks of one column, or of one source row, as one sub-chunk.

A step may carry several small chunks at once (:mod:`sagann.scheduler.batching`).
Forward, a column's chunks from several source intervals: their edges into
the same rows, their source rows gathered together, counted from the first
interval's start. Backward, a source row's chunks into several destination
intervals: their source rows are one interval's, and their destination rows,
those with an edge, are listed (``dst_rows``, as a compacted sub-chunk's) from
the first interval's start. Either is an ordinary :class:`EdgeChunk`, so every
loader and kernel reads it unchanged.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from sagann.chunks.types import ROW_MERGE, ChunkId, EdgeChunk


def merged_id(first: int, last: int, j: int) -> ChunkId:
    """The id of a merge of the sub-chunks from source intervals ``first``..``last`` into ``j``: ``E[first:last+1,j]``."""
    return ChunkId(first, j, -(last + 1))


def row_merged_id(i: int, first: int, last: int) -> ChunkId:
    """The id of a merge of the sub-chunks of source interval ``i`` into ``first``..``last``: ``E[i,first:last+1]``."""
    return ChunkId(i, first, -(last + 1) - ROW_MERGE)


def merge_chunks(chunks: Sequence[EdgeChunk]) -> EdgeChunk:
    """One sub-chunk holding the edges of ``chunks`` (whole sub-chunks of one destination interval, each from another
    source interval): every destination row's edges in ascending global edge order, as in any sub-chunk.

    Source rows stay sorted and unique: the intervals are disjoint, and the
    chunks are taken in source-interval order.
    """
    chunks = _in_order(chunks, "merge_chunks", by_source=True)
    first = chunks[0]
    lo = min(c.dst_offset for c in chunks)
    num_dst = max(c.dst_offset + c.num_dst for c in chunks) - lo
    rows = np.concatenate([c.dst_idx.astype(np.int64) + (c.dst_offset - lo) for c in chunks])
    src_base = np.cumsum([0] + [c.num_src for c in chunks[:-1]])
    src = np.concatenate([c.src_idx.astype(np.int64) + b for c, b in zip(chunks, src_base)])
    eids = np.concatenate([c.edge_ids for c in chunks])
    order = np.lexsort((eids, rows))
    dst_idx = rows[order].astype(np.int32)
    src_idx = src[order].astype(np.int32)
    num_src = int(src_base[-1] + chunks[-1].num_src)
    src_rows = np.concatenate([c.src_rows.astype(np.int64) + (c.src_start - first.src_start) for c in chunks]).astype(np.int32)
    return EdgeChunk(
        id=merged_id(first.id.i, chunks[-1].id.i, first.id.j),
        src_start=first.src_start,
        dst_start=first.dst_start,
        dst_offset=lo,
        dst_ptr=_pointer(dst_idx, num_dst),
        dst_idx=dst_idx,
        src_idx=src_idx,
        src_rows=src_rows,
        src_ptr=_pointer(src_idx, num_src),
        src_perm=np.argsort(src_idx, kind="stable").astype(np.int32),
        edge_ids=eids[order],
    )


def merge_row_chunks(chunks: Sequence[EdgeChunk]) -> EdgeChunk:
    """One sub-chunk holding the edges of ``chunks`` (whole sub-chunks of one source interval, each into another
    destination interval) over their destination rows with an edge (``dst_rows``, from the first interval's start):
    every row's edges in ascending global edge order."""
    chunks = _in_order(chunks, "merge_row_chunks", by_source=False)
    first = chunks[0]
    rows = np.concatenate([c.dst_idx.astype(np.int64) + (c.dst_start + c.dst_offset - first.dst_start) for c in chunks])
    src_rows = np.unique(np.concatenate([c.src_rows for c in chunks]))  # one interval's rows: a union
    src = np.concatenate([np.searchsorted(src_rows, c.src_rows)[c.src_idx] for c in chunks])
    eids = np.concatenate([c.edge_ids for c in chunks])
    order = np.lexsort((eids, rows))
    with_edges, dst_idx = np.unique(rows[order], return_inverse=True)  # the rows with an edge, each edge's among them
    dst_idx = dst_idx.astype(np.int32)
    src_idx = src[order].astype(np.int32)
    return EdgeChunk(
        id=row_merged_id(first.id.i, first.id.j, chunks[-1].id.j),
        src_start=first.src_start,
        dst_start=first.dst_start,
        dst_offset=0,
        dst_ptr=_pointer(dst_idx, with_edges.shape[0]),
        dst_idx=dst_idx,
        src_idx=src_idx,
        src_rows=src_rows.astype(np.int32),
        src_ptr=_pointer(src_idx, src_rows.shape[0]),
        src_perm=np.argsort(src_idx, kind="stable").astype(np.int32),
        edge_ids=eids[order],
        dst_rows=with_edges.astype(np.int32),
    )


def _in_order(chunks: Sequence[EdgeChunk], fn: str, by_source: bool) -> list[EdgeChunk]:
    """``chunks`` checked (uncompacted, one shared interval, one chunk per interval of the other side) and in order of
    that other side: their source intervals (``by_source``, a column's chunks) or their destination intervals (a row's)."""
    if not chunks:
        raise ValueError(f"{fn} needs at least one sub-chunk")
    spans, shares = ("source", "destination") if by_source else ("destination", "source")
    span = (lambda c: c.id.i) if by_source else (lambda c: c.id.j)
    shared = (lambda c: c.id.j) if by_source else (lambda c: c.id.i)
    chunks = sorted(chunks, key=span)
    if any(shared(c) != shared(chunks[0]) or c.dst_rows is not None for c in chunks):
        raise ValueError(f"{fn} takes uncompacted sub-chunks of one {shares} interval, got {[c.id for c in chunks]}")
    if len({span(c) for c in chunks}) != len(chunks):
        raise ValueError(f"{fn} takes one sub-chunk per {spans} interval, got {[c.id for c in chunks]}")
    return chunks


def _pointer(ids: np.ndarray, n: int) -> np.ndarray:
    """CSR pointers (int32 ``[n + 1]``) of ``ids`` grouped by value."""
    ptr = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(np.bincount(ids, minlength=n), out=ptr[1:])
    return ptr
