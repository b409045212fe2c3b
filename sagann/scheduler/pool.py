"""Reused buffers for a CPU virtual device's copies, as a GPU's caching allocator reuses device memory.

A ``CpuDevice(copy_transfers=True)`` emulates a discrete accelerator: every
transfer is a real copy. Made with ``clone``, each copy of a large tensor is
a fresh allocation, which glibc serves with a fresh ``mmap`` and the kernel
with page faults on first touch: on a 2-core VM that made the copies of an
out-of-core GCN epoch cost as much again as the bytes themselves (measured:
docs/benchmarks.md). A GPU copies into memory its caching allocator keeps;
this pool does the same for the CPU device. A buffer is free again when no
tensor uses its storage any more (the storage's use count, so views handed
to kernels or kept by autograd keep it taken); the ledger still charges
every load, so budgets are unchanged.
"""
from __future__ import annotations

import bisect
import math
import threading

import torch

# Below 64 KiB malloc reuses blocks at no cost. Above it a fresh block is page-faulted on first touch:
# a fresh mapping beyond sagann.scheduler.host.HEAP_BLOCK_MAX, a heap block trimmed at a pass's end below.
# A selective load of 2,700 rows of 64 floats (690 KB) into a fresh mapping took 300 us, against
# 15-30 us into a reused buffer (R-MAT 2^16 GraphSAGE out of core); a pooled buffer stays faulted in.
MIN_POOLED_BYTES = 1 << 16
_OCTAVE_SHIFT = 3  # eight size classes per power of two: at most 1/8 of a buffer unused


def size_class(nbytes: int) -> int:
    """The buffer size serving ``nbytes``: rounded up to an eighth of its power of two, so sizes that vary a little share buffers."""
    granule = max(4096, 1 << max(0, int(nbytes - 1).bit_length() - 1 - _OCTAVE_SHIFT))
    return -(-nbytes // granule) * granule

try:
    _use_count = torch._C._storage_Use_Count
except AttributeError:  # pragma: no cover - a torch without it: no pooling
    _use_count = None


def _is_free(entry: tuple) -> bool:
    """A kept (buffer, storage object, storage handle) that no tensor uses: two uses, the buffer and the storage object."""
    return _use_count(entry[2]) <= 2


def _drop_free(buffers: dict[int, list[tuple]], limit: int, incoming: int = 0) -> None:
    """Drop free buffers of ``buffers`` (size -> entries) while they and ``incoming`` bytes take more than ``limit``."""
    total = sum(size * len(bucket) for size, bucket in buffers.items()) + incoming
    for size, bucket in buffers.items():
        if total <= limit:
            return
        keep = []
        for b in bucket:
            if total > limit and _is_free(b):
                total -= size  # dropped: its memory goes back to malloc
            else:
                keep.append(b)
        bucket[:] = keep


class BufferPool:
    """Byte buffers by size class; at most ``limit_bytes`` of free ones are kept."""

    def __init__(self, limit_bytes: int):
        self.limit_bytes = int(limit_bytes)
        # size class -> [(buffer, its storage object, the storage's handle)]: the storage object is kept so that
        # a check needs no new one (two uses: the buffer and the kept storage object; a third is a tensor using it)
        self._buffers: dict[int, list[tuple[torch.Tensor, object, int]]] = {}
        self._sizes: list[int] = []  # the size classes of _buffers, ascending
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def empty(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor | None:
        """A contiguous tensor on a pooled buffer, or None (small, or pooling unavailable): the caller allocates.

        On every step's path (a few calls per sub-chunk): plain loops, no
        generators, and no views beyond the one the caller needs.
        """
        n = dtype.itemsize
        for k in shape:
            n *= k
        nbytes = int(n)
        if _use_count is None or nbytes < MIN_POOLED_BYTES or dtype is torch.bool:
            return None
        size = size_class(nbytes)
        with self._lock:
            entry = self._free_entry(size)
            if entry is not None:
                self.hits += 1
            else:
                self.misses += 1
                self._trim(size)
                buf = torch.empty(size, dtype=torch.uint8)
                storage = buf.untyped_storage()
                entry = (buf, storage, storage._cdata)
                bucket = self._buffers.get(size)
                if bucket is None:
                    bucket = self._buffers[size] = []
                    bisect.insort(self._sizes, size)
                bucket.append(entry)
            flat = entry[0][:nbytes]
        if dtype is torch.uint8 and len(shape) == 1:
            return flat
        return flat.view(dtype).view(shape)

    def _free_entry(self, size: int) -> tuple | None:
        """A free buffer of ``size``, else of the next larger classes up to twice it (best fit).

        Loads come in dozens of sizes; a pool that matched classes exactly
        kept a buffer of each and, at its limit, dropped one class's buffers
        to make another's, then faulted them in again (an R-MAT GCN out of
        core re-allocated 72 MiB an epoch under a 9 MiB budget).
        """
        sizes = self._sizes
        for k in range(bisect.bisect_left(sizes, size), len(sizes)):
            if sizes[k] > 2 * size:
                return None
            for entry in self._buffers[sizes[k]]:
                if _is_free(entry):
                    return entry
        return None

    def _trim(self, incoming: int) -> None:
        """Drop free buffers while the pool would hold more than its limit."""
        _drop_free(self._buffers, self.limit_bytes, incoming)


class HostBuffers:
    """Host tensors of the engine's (vertex-sized outputs, accumulators, gradients) kept after use for the next
    request of the same size, as an out-of-core system keeps its pinned staging buffers.

    Each epoch asks for the same sizes again; freed, each came back as a
    fresh mapping whose every page was faulted in at its first write (about
    a microsecond a page: R-MAT 2^16 GraphSAGE out of core wrote 68 MB of
    such buffers an epoch). Buffers are exact in size (a saved or pickled
    tensor holds no spare bytes), free again when no tensor uses their
    storage, and never more, in use and free together, than the most of
    them the engine held in use at once: an idle buffer stands in for one
    that was live before and will be again.
    """

    def __init__(self, min_bytes: int):
        self.min_bytes = int(min_bytes)
        self._buffers: dict[int, list[tuple[torch.Tensor, object, int]]] = {}  # size -> [(buffer, storage, handle)]
        self._peak_in_use = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def empty(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor | None:
        """A contiguous tensor on a kept buffer, or None (small, bool, or reuse unavailable): the caller allocates."""
        n = dtype.itemsize
        for k in shape:
            n *= k
        nbytes = int(n)
        if _use_count is None or nbytes < self.min_bytes or dtype is torch.bool:
            return None
        with self._lock:
            bucket = self._buffers.setdefault(nbytes, [])
            entry = next((e for e in bucket if _is_free(e)), None)
            if entry is not None:
                self.hits += 1
            else:
                self.misses += 1
                in_use = sum(size * sum(not _is_free(e) for e in b) for size, b in self._buffers.items()) + nbytes
                self._peak_in_use = max(self._peak_in_use, in_use)
                _drop_free(self._buffers, self._peak_in_use, nbytes)
                buf = torch.empty(nbytes, dtype=torch.uint8)
                storage = buf.untyped_storage()
                entry = (buf, storage, storage._cdata)
                bucket.append(entry)
        return entry[0].view(dtype).view(shape)

    @property
    def free_bytes(self) -> int:
        """Bytes of kept buffers no tensor uses now."""
        with self._lock:
            return sum(size * sum(_is_free(e) for e in b) for size, b in self._buffers.items())
