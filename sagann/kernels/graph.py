"""The device-side view of one sub-chunk that every kernel backend takes."""
from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np
import torch

from sagann.chunks.types import EdgeChunk

# attribute (not a field) of a ChunkTensors and its EdgeChunk: values kernels derive from the index
# arrays alone, shared by every device copy of one sub-chunk
DERIVED = "_derived"

# row-index tensors whose bound the maker knew on the host: id(tensor) -> (weak reference to it, bound)
_ROW_BOUNDS: dict[int, tuple[weakref.ref, int]] = {}


def declare_rows_bound(rows: torch.Tensor, bound: int) -> None:
    """Record that every entry of ``rows`` lies in ``[0, bound)``, known where it was made (from host arrays).

    The kernels' range check on ``src_rows`` then needs no read of the
    device tensor: on a GPU that read is two device-to-host syncs per call.
    """
    key = id(rows)
    _ROW_BOUNDS[key] = (weakref.ref(rows, lambda _ref: _ROW_BOUNDS.pop(key, None)), int(bound))


def rows_bound(rows: torch.Tensor) -> int | None:
    """The bound :func:`declare_rows_bound` recorded for ``rows``, or None."""
    entry = _ROW_BOUNDS.get(id(rows))
    return entry[1] if entry is not None and entry[0]() is rows else None


@dataclass(frozen=True, eq=False)
class ChunkTensors:
    """Index arrays of one sub-chunk as int32 torch tensors on one device.

    Sources are *compact*: kernels read source rows ``src[src_idx[e]]`` from
    a ``[num_src, d]`` tensor holding exactly the sub-chunk's ``src_rows``.
    Destinations are the rows ``0..num_dst`` of the output.

    ``src_dst`` (optional) is ``dst_idx[src_perm]``: with it a source-major
    backward reads destination rows in sequence (see
    ``kernels.gspmm_sum_backward(edge_src_major=...)``).

    Shapes:
        dst_ptr ``[num_dst + 1]``, dst_idx/src_idx/src_perm/src_dst ``[nnz]``,
        src_ptr ``[num_src + 1]``.
    """

    dst_ptr: torch.Tensor
    dst_idx: torch.Tensor
    src_idx: torch.Tensor
    src_ptr: torch.Tensor
    src_perm: torch.Tensor
    num_src: int
    num_dst: int
    src_dst: torch.Tensor | None = None

    @property
    def nnz(self) -> int:
        return int(self.src_idx.shape[0])

    @property
    def device(self) -> torch.device:
        return self.src_idx.device

    @property
    def nbytes(self) -> int:
        arrays = (self.dst_ptr, self.dst_idx, self.src_idx, self.src_ptr, self.src_perm) + (() if self.src_dst is None else (self.src_dst,))
        return sum(t.numel() * t.element_size() for t in arrays)

    @classmethod
    def from_chunk(cls, chunk: EdgeChunk, device: torch.device | str = "cpu", source_major: bool = False) -> "ChunkTensors":
        """The chunk's arrays on ``device``; ``source_major`` adds ``src_dst`` where the chunk has it."""

        def t(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(a)).to(device)

        src_dst = chunk.src_major_dst() if source_major else None
        ct = cls(
            dst_ptr=t(chunk.dst_ptr),
            dst_idx=t(chunk.dst_idx),
            src_idx=t(chunk.src_idx),
            src_ptr=t(chunk.src_ptr),
            src_perm=t(chunk.src_perm),
            num_src=chunk.num_src,
            num_dst=chunk.num_dst,
            src_dst=None if src_dst is None else t(src_dst),
        )
        # what kernels derive from the pointers alone (row blocks per thread) is kept with the host's
        # chunk: a copy made at every step then finds it cut already
        ct.__dict__[DERIVED] = chunk.__dict__.setdefault(DERIVED, {})
        return ct

    @classmethod
    def from_coo(
        cls, src: np.ndarray, dst: np.ndarray, num_src: int, num_dst: int, device: torch.device | str = "cpu"
    ) -> tuple["ChunkTensors", torch.Tensor]:
        """Build from COO ids (tests and the functional API).

        Edges are sorted by destination, stably; the second result maps each
        CSC position to the input position, so per-edge inputs are passed
        as ``edge[order]`` and per-edge outputs come back in CSC order.
        """
        src = np.asarray(src, dtype=np.int64)
        dst = np.asarray(dst, dtype=np.int64)
        order = np.argsort(dst, kind="stable")
        s, d = src[order], dst[order]
        dst_ptr = np.zeros(num_dst + 1, dtype=np.int64)
        np.cumsum(np.bincount(d, minlength=num_dst), out=dst_ptr[1:])
        src_perm = np.argsort(s, kind="stable")
        src_ptr = np.zeros(num_src + 1, dtype=np.int64)
        np.cumsum(np.bincount(s, minlength=num_src), out=src_ptr[1:])

        def t(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(a.astype(np.int32)).to(device)

        return cls(t(dst_ptr), t(d), t(s), t(src_ptr), t(src_perm), num_src, num_dst), torch.from_numpy(order).to(device)
