"""Plain types that give the 2D partition its meaning.

A graph with N vertices is split into P contiguous vertex *intervals*
V_0..V_{P-1}; the edges with sources in V_i and destinations in V_j form the
edge chunk E_ij. A chunk is cut by destination rows into *sub-chunks* of
bounded nnz; one sub-chunk (an :class:`EdgeChunk`) is the unit that is
loaded, computed and scheduled.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

import numpy as np
import torch

Partition = int  # index of a vertex interval, 0..P-1
VertexId = int  # global vertex id, 0..N-1


class ChunkId(NamedTuple):
    """Key of a sub-chunk: sources in interval ``i``, destinations in ``j``."""

    i: int  # a Partition (interval index); plain int so the generated __init__'s annotations resolve
    j: int
    sub: int = 0

    def __repr__(self) -> str:  # a negative sub: a merge of whole sub-chunks (sagann.chunks.merge)
        if self.sub <= -ROW_MERGE:  # of source interval i into destination intervals j .. -sub - ROW_MERGE - 1
            return f"E[{self.i},{self.j}:{-self.sub - ROW_MERGE}]"
        if self.sub < 0:  # from source intervals i .. -sub - 1 into j
            return f"E[{self.i}:{-self.sub},{self.j}]"
        return f"E[{self.i},{self.j}].{self.sub}"


ROW_MERGE = 1 << 30  # ChunkId.sub of a source row's merged sub-chunks: below -ROW_MERGE (a column's: in -ROW_MERGE..-1)


def sent_names(backward: bool, source_major: bool = False) -> tuple[str, ...]:
    """The index arrays of a sub-chunk a pass's kernels read: what crosses the link with it.

    Forward: destination pointers and source ids. Backward adds the
    source-major order; a source-major backward reads only the pointers and
    each edge's destination in source-major order (``src_dst``). A device
    sends any other array when first read, or makes it (``kernels.graph.StreamedChunkTensors``).
    """
    if not backward:
        return ("dst_ptr", "src_idx")
    return ("dst_ptr", "src_ptr", "src_dst") if source_major else ("dst_ptr", "src_idx", "src_ptr", "src_perm")


def native_16(name: str, backward: bool) -> bool:
    """May kernels read index array ``name`` in 16 bits, unwidened (``kernels.graph.kernel_index``)? A forward's source
    ids and a source-major backward's destination rows: below 2^16 wherever an interval has at most 65,536 rows
    (pointers and the source-major order reach nnz and stay int32)."""
    return name == ("src_dst" if backward else "src_idx")


def memory_owner(a: np.ndarray) -> object:
    """What holds ``a``'s memory: the ``np.memmap`` or RAM array it views, or the foreign object it was made from (a torch tensor)."""
    while not isinstance(a, np.memmap) and isinstance(a, np.ndarray) and a.base is not None:
        a = a.base
    return a


def file_backed(a: np.ndarray) -> bool:
    """Is ``a`` (or the array it views) a memory-mapped file?"""
    return isinstance(memory_owner(a), np.memmap)


@dataclass(frozen=True, eq=False)
class EdgeChunk:
    """One sub-chunk of E_ij in CSC-by-destination form with int32 local ids.

    Invariants (checked by :meth:`validate`):

    * destinations are the rows ``dst_offset .. dst_offset + num_dst`` of
      interval ``j`` (a :meth:`compacted` sub-chunk's: rows ``dst_offset +
      dst_rows``, each with an edge); ``dst_ptr[r]:dst_ptr[r+1]`` are this sub-chunk's edges
      of row ``dst_offset + r``, in ascending global edge order (the first and
      last row may continue in the neighbouring sub-chunks);
    * ``src_rows`` are the sorted unique source rows (local to interval
      ``i``) this sub-chunk touches: a selective transfer sends exactly
      these rows; ``src_idx`` indexes into ``src_rows``;
    * ``dst_idx[e]`` is the row (relative to ``dst_offset``) of CSC edge e;
    * ``src_ptr``/``src_perm`` give the same edges source-major, for
      backward passes that must not use float atomics:
      ``src_perm[src_ptr[s]:src_ptr[s+1]]`` are the CSC positions of the
      edges leaving ``src_rows[s]``;
    * ``edge_ids[e]`` is the position of CSC edge e in the global edge
      order (the column of the user's ``edge_index``), for edge features.
    """

    id: ChunkId
    src_start: VertexId  # first global vertex of interval i
    dst_start: VertexId  # first global vertex of interval j
    dst_offset: int  # first destination row covered, local to interval j
    dst_ptr: np.ndarray  # int32 [num_dst + 1]
    dst_idx: np.ndarray  # int32 [nnz]
    src_idx: np.ndarray  # int32 [nnz]
    src_rows: np.ndarray  # int32 [num_src]
    src_ptr: np.ndarray  # int32 [num_src + 1]
    src_perm: np.ndarray  # int32 [nnz]
    edge_ids: np.ndarray  # int64 [nnz]
    # a compacted sub-chunk's rows (relative to dst_offset) in order: destination r is row dst_rows[r] (None: dst_offset + r)
    dst_rows: np.ndarray | None = None

    @property
    def nnz(self) -> int:
        return int(self.src_idx.shape[0])

    @property
    def num_dst(self) -> int:
        return int(self.dst_ptr.shape[0] - 1)

    @property
    def num_src(self) -> int:
        return int(self.src_rows.shape[0])

    @cached_property
    def nbytes(self) -> int:
        """Bytes of the index arrays: what loading this sub-chunk costs."""
        return sum(
            a.nbytes
            for a in (
                self.dst_ptr,
                self.dst_idx,
                self.src_idx,
                self.src_rows,
                self.src_ptr,
                self.src_perm,
                self.edge_ids,
            )
        ) + (0 if self.dst_rows is None else self.dst_rows.nbytes)

    def crosses_short(self, name: str, narrow: bool, native: bool = False, backward: bool = False) -> bool:
        """Does index array ``name`` cross in 16 bits: it fits, and every array is narrowed (``narrow``) or kernels
        read it so (``native``: :func:`native_16` of the pass, forward or ``backward``)?"""
        return (narrow or (native and native_16(name, backward))) and self.fits_16_bits(name)

    def fits_16_bits(self, name: str) -> bool:
        """Every value of index array ``name`` is below 2^16 (it crosses as unsigned 16 bits): source ids are bounded
        by num_src, destination rows (``dst_idx``, ``src_dst``) by num_dst, pointers (which reach nnz) and the
        source-major order by nnz."""
        bound = {"src_idx": self.num_src, "dst_idx": self.num_dst, "src_dst": self.num_dst}.get(name, self.nnz)
        return bound < 1 << 16

    def crossing_arrays(self, backward: bool, narrow: bool = False, source_major: bool = False, native: bool = False) -> tuple[tuple, tuple]:
        """``(names, shorts)``: the index arrays a pass sends with this sub-chunk (:func:`sent_names`) and whether each
        crosses in 16 bits (:meth:`crosses_short`); worked out once per pass kind (every step asks, the answer never changes).

        Only names and flags are kept, never arrays: a chunk whose arrays move
        (into a spill file) must not keep the old ones alive.
        """
        key = (bool(backward), bool(narrow), bool(source_major), bool(native))
        memo = self.__dict__.setdefault("_crossing_arrays", {})
        found = memo.get(key)
        if found is None:
            names = sent_names(backward, source_major)
            found = memo[key] = (names, tuple(self.crosses_short(n, narrow, native, backward) for n in names))
        return found

    def sent_index_bytes(self, backward: bool, narrow: bool = False, source_major: bool = False, native: bool = False) -> int:
        """Bytes of the index arrays a pass sends with this sub-chunk (``kernels.graph.sent_names``) and its source rows.

        ``edge_ids`` cross only for max/min winners. ``narrow`` (16-bit
        transfers): each array crosses in 16 bits where its values fit
        (:meth:`fits_16_bits`); ``native``: the arrays of :func:`native_16`
        do, for kernels that read them so.
        """
        key = (bool(backward), bool(narrow), bool(source_major), bool(native))
        memo = self.__dict__.setdefault("_sent_index_bytes", {})  # every step asks (twice on a CPU device); the sizes never change
        found = memo.get(key)
        if found is None:
            names, shorts = self.crossing_arrays(*key)
            sizes = {"dst_ptr": self.num_dst + 1, "src_ptr": self.num_src + 1}
            found = memo[key] = sum(4 * sizes.get(n, self.nnz) // (2 if short else 1) for n, short in zip(names, shorts)) + self.src_rows.nbytes
        return found

    def keeps_src_major_dst(self) -> bool:
        """Does :meth:`src_major_dst` give an array (not None: a memory-mapped chunk's)? Asks without making one."""
        return not file_backed(self.src_perm)

    def src_major_dst(self) -> np.ndarray | None:
        """``dst_idx[src_perm]``: each edge's destination row in source-major order (cached), or None.

        A source-major backward reads its edges' destination rows through
        this array in sequence instead of ``dst_idx[src_perm[p]]`` at random.
        None for memory-mapped chunks (a dataset on disk): caching would put
        4 bytes per edge in RAM beyond the host budget. Made afresh at each
        call, not cached, where the arrays view a tensor's memory (a host
        budget's spill file): 4 bytes an edge for one step, not for the
        whole run.
        """
        cached = self.__dict__.get("_src_major_dst")
        if cached is not None:  # the per-step call: no walk of the arrays' owners
            return cached
        owner = memory_owner(self.src_perm)
        if isinstance(owner, np.memmap):
            return None
        made = np.ascontiguousarray(self.dst_idx[self.src_perm])
        if not isinstance(owner, torch.Tensor):  # not kept for a tensor's memory (a host budget's spill file)
            self.__dict__["_src_major_dst"] = made
        return made

    @cached_property
    def rows_with_edges(self) -> int:
        """How many of its destination rows have an edge in this sub-chunk."""
        return self.num_dst if self.dst_rows is not None else int(np.count_nonzero(np.diff(self.dst_ptr)))

    def compacted(self) -> "EdgeChunk":
        """This sub-chunk over its rows with edges alone: the same edges in the same order, their destinations
        renumbered ``0 .. k-1`` and ``dst_rows`` saying which row each was.

        A sparse chunk's sub-chunk spans its interval's rows but reaches few
        of them (13-28 % on R-MAT at the P a budget sets): a backward pass
        sends and computes over those alone (``memory_model.backward_chunk``).
        Cached as :meth:`src_major_dst` is (not for memory-mapped or
        spilled arrays): 4 bytes an edge and a row.
        """
        cached = self.__dict__.get("_compacted")
        if cached is not None:
            return cached
        if self.dst_rows is not None:
            return self
        per_row = np.diff(self.dst_ptr)
        rows = np.flatnonzero(per_row).astype(np.int32)
        counts = per_row[rows]
        ptr = np.zeros(rows.shape[0] + 1, dtype=np.int32)
        np.cumsum(counts, out=ptr[1:])
        made = dataclasses.replace(self, dst_ptr=ptr, dst_idx=np.repeat(np.arange(rows.shape[0], dtype=np.int32), counts), dst_rows=rows)
        if not isinstance(memory_owner(self.dst_ptr), (np.memmap, torch.Tensor)):
            self.__dict__["_compacted"] = made
        return made

    def global_src(self) -> np.ndarray:
        """Global source id of each CSC edge (int64)."""
        return self.src_start + self.src_rows[self.src_idx].astype(np.int64)

    def global_dst(self) -> np.ndarray:
        """Global destination id of each CSC edge (int64)."""
        local = self.dst_idx if self.dst_rows is None else self.dst_rows[self.dst_idx]
        return self.dst_start + self.dst_offset + local.astype(np.int64)

    def validate(self) -> None:
        """Raise ValueError if an invariant above does not hold."""
        n = self.nnz
        where = f"sub-chunk {self.id!r}"
        for name in ("dst_ptr", "dst_idx", "src_idx", "src_rows", "src_ptr", "src_perm"):
            if getattr(self, name).dtype != np.int32:
                raise ValueError(f"{where}: {name} must be int32")
        if self.edge_ids.dtype != np.int64:
            raise ValueError(f"{where}: edge_ids must be int64")
        if self.dst_ptr[0] != 0 or self.dst_ptr[-1] != n or np.any(np.diff(self.dst_ptr) < 0):
            raise ValueError(f"{where}: dst_ptr is not a valid CSC pointer for nnz={n}")
        if not np.array_equal(self.dst_idx, np.repeat(np.arange(self.num_dst, dtype=np.int32), np.diff(self.dst_ptr))):
            raise ValueError(f"{where}: dst_idx disagrees with dst_ptr")
        if self.dst_rows is not None and (self.dst_rows.shape != (self.num_dst,) or np.any(np.diff(self.dst_rows) <= 0) or np.any(np.diff(self.dst_ptr) == 0)):
            raise ValueError(f"{where}: dst_rows must list one sorted, unique row per destination, each with an edge")
        if n and (self.src_idx.min() < 0 or self.src_idx.max() >= self.num_src):
            raise ValueError(f"{where}: src_idx out of range of src_rows")
        if np.any(np.diff(self.src_rows) <= 0):
            raise ValueError(f"{where}: src_rows must be sorted and unique")
        if self.src_ptr[-1] != n or not np.array_equal(np.sort(self.src_perm), np.arange(n)):
            raise ValueError(f"{where}: src_perm is not a permutation of the edges")
        if not np.array_equal(self.src_idx[self.src_perm], np.repeat(np.arange(self.num_src, dtype=np.int32), np.diff(self.src_ptr))):
            raise ValueError(f"{where}: src_ptr/src_perm do not list edges source-major")
