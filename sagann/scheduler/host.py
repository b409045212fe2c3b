"""The host tier: RAM with a budget, and memory-mapped spill files beyond it (the disk tier).

Vertex-sized host tensors the engine allocates (layer outputs, saved
aggregates, gradients) and what autograd saves between layers go through a
:class:`HostMemory`. Within its budget they are ordinary RAM tensors; past it
they are backed by a file in the spill directory, mapped into memory, so the
OS pages them between disk and RAM and the process keeps only what it
touches. Each spill file is unlinked as soon as it is mapped: the mapping
keeps the data alive, the space returns to the disk when the last tensor
view is gone, and a crash leaves nothing behind.

Loads from a spilled tensor are staged: the rows are first read into RAM
(a ``disk`` span on the host's ``disk`` track), then sent to the device as
usual, so a trace shows all three tiers.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
import time
import warnings
import weakref
from pathlib import Path

import numpy as np
import torch

from sagann import profiler
from sagann.chunks.files import check_fault
from sagann.chunks.partition import pack_chunks
from sagann.chunks.types import memory_owner
from sagann.scheduler.pool import HostBuffers
from sagann.scheduler.rss import AnonMeter, anon_rss_bytes
from sagann.units import format_bytes, parse_bytes, tensor_bytes

__all__ = ["HEAP_POLICIES", "HOST_MEMORY_SLACK", "OUT_OF_CORE_SLACK", "AnonMeter", "HostMemory", "SpillCorrupted", "anon_rss_bytes", "check_spill", "host_heap", "is_spilled", "mapped", "set_host_heap", "stage", "stage_rows", "trim_after_pass", "trim_freed_memory", "trim_if_grown"]

# what peak anonymous RSS may exceed interpreter + host budget + CPU device peak by:
# compiled kernels (~65 MiB), torch._dynamo (68 MiB, imported by torch.optim's first step),
# one chunk of a partition being cut, spilled rows staged in RAM on their way to the device,
# autograd's per-pass temporaries
HOST_MEMORY_SLACK = 160 << 20

# what an out-of-core run's peak anonymous RSS may exceed the same run's in memory by (no host budget):
# its finer partition's index arrays (compact source rows per chunk) and the buffers of the sub-chunks in flight
OUT_OF_CORE_SLACK = 48 << 20

# data_ptr of every live spill mapping -> its size; module-wide, so a device's
# loads can tell a spilled host tensor without knowing which HostMemory made it
_SPILLED: dict[int, tuple] = {}  # -> (bytes, the file's header as mapped, what the header must hold)
_SPILLED_LOCK = threading.Lock()

# numpy dtype of each torch dtype a spill file may hold
_NP_DTYPES = {torch.uint8: np.uint8, torch.float32: np.float32, torch.float64: np.float64, torch.int64: np.int64, torch.int32: np.int32, torch.bool: np.bool_, torch.float16: np.float16}
SAVED_TENSOR_MIN_BYTES = 1 << 20
SPILL_HEADER_BYTES = 4096  # one page before the data: magic and size, checked on every read from the disk tier
_SPILL_MAGIC = b"SAGANN-SPILL-1\n\0"
_SPILL_SEALED = len(_SPILL_MAGIC) + 8


class SpillCorrupted(OSError):
    """A spill file's header no longer holds what was written: its pages are not the data they were."""


def check_spill(t: torch.Tensor | None) -> None:
    """Raise :class:`SpillCorrupted` if the spill file behind ``t`` lost its header (no-op for RAM tensors)."""
    if t is None or t.device.type != "cpu":
        return
    entry = _SPILLED.get(t.untyped_storage().data_ptr())
    if entry is not None and bytes(entry[1][:_SPILL_SEALED]) != entry[2]:
        raise SpillCorrupted(f"a {format_bytes(entry[0])} spill file was modified behind sagann's back (its header is gone); "
                             f"the spill directory's disk or another process corrupted it: use a local disk of its own for --spill-dir and rerun")  # autograd-saved tensors smaller than this always stay in RAM


def is_spilled(t: torch.Tensor | None) -> bool:
    """Is ``t`` (or the tensor it views) backed by a spill file?"""
    if not _SPILLED or t is None or t.device.type != "cpu":  # nothing spilled: the common case, on every load
        return False
    return t.untyped_storage().data_ptr() in _SPILLED


def mapped(a: np.ndarray) -> bool:
    """Is ``a`` a view of a memory-mapped file: a dataset's (``np.memmap``), or a spill file's (reached through its tensor)?"""
    owner = memory_owner(a)
    return isinstance(owner, np.memmap) or (isinstance(owner, torch.Tensor) and is_spilled(owner))


def stage(t: torch.Tensor, chunk=None) -> torch.Tensor:
    """``t`` itself if in RAM; a RAM copy, read inside a ``disk`` span, if it is spilled."""
    if not is_spilled(t):
        return t
    check_spill(t)
    with profiler.span("disk", "host", "disk", chunk=chunk, nbytes=tensor_bytes(t)):
        return t.clone()


def stage_rows(t: torch.Tensor, index: torch.Tensor, chunk=None) -> torch.Tensor | None:
    """Rows ``index`` of a spilled ``t`` read into RAM (a ``disk`` span); None if ``t`` is in RAM."""
    if not is_spilled(t):
        return None
    check_spill(t)
    with profiler.span("disk", "host", "disk", chunk=chunk, nbytes=index.numel() * tensor_bytes(t[:1])):
        return t.index_select(0, index)


def rounded(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A ``dtype`` copy of host rows about to be sent (host work, like :func:`rounded_rows`)."""
    return t.detach().to(dtype)


def rounded_rows(host: dict, names, dtype: torch.dtype) -> dict:
    """``host`` with its float32 tensors under ``names`` rounded to ``dtype`` (each tensor once, whatever its names); spilled ones stay.

    Host work: the copies are the host's RAM, not a device's (the CPU
    meter counts ops called from this module as host allocations).
    """
    done: dict[int, torch.Tensor] = {}
    out = dict(host)
    for name in names:
        t = host.get(name)
        if t is not None and t.dtype == torch.float32 and not is_spilled(t):
            out[name] = done.setdefault(id(t), t.detach().to(dtype))
    return out


def _libc():
    """glibc, or None where there is none (its malloc knobs are then left alone)."""
    global _LIBC
    if _LIBC is None:
        try:
            import ctypes

            _LIBC = ctypes.CDLL("libc.so.6")
            _LIBC.malloc_trim.argtypes = [ctypes.c_size_t]
            _LIBC.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        except (OSError, AttributeError):
            _LIBC = False
    return _LIBC or None


_LIBC = None


# malloc's heap serves blocks up to this size; larger ones get a mapping of their own, returned when freed.
# A sub-chunk's buffers (loaded rows, partial aggregates, kernel outputs: a share of a device budget) sit
# below it and are reused from step to step without page faults; vertex-sized tensors of most graphs are above.
HEAP_BLOCK_MAX = 4 << 20
# free bytes the heap's top keeps between frees inside a pass (a pass's end trims everything free)
HEAP_TOP_KEPT = 8 << 20
# engine host tensors at least this large are kept for reuse once freed (HostMemory without a budget)
REUSED_MIN_BYTES = 1 << 20


# "keep": freed blocks up to this size stay in the heap for the next allocation, as a GPU's caching allocator keeps
# device memory (mallopt takes an int: 1 GiB; larger blocks are mappings of their own)
KEPT_BLOCK_MAX = 1 << 30
HEAP_POLICIES = ("keep", "return")
HEAP_ENV = "SAGANN_HOST_HEAP"
_heap_lock = threading.Lock()
_heap_chosen: str | None = None  # set_host_heap's choice; None: the environment's, else "return"
_heap_applied: str | None = None  # the policy glibc runs now
_budgeted: "weakref.WeakSet[HostMemory]" = weakref.WeakSet()  # host memories with a budget: their bound is on RSS


def set_host_heap(policy: str | None) -> str:
    """How glibc's heap treats freed host memory, process-wide; returns the policy in force.

    ``"keep"`` (on request, where no :class:`HostMemory` has a budget):
    freed blocks stay in the process and serve the next allocation, so an
    epoch's temporaries are not page-faulted in again at every use
    (in-memory R-MAT epochs 8-39 % faster); RSS stays at its high-water
    mark (peak RSS 1-7 % higher on the overlap grid's graphs, 42 % on R-MAT
    2^18 GraphSAGE in memory). ``"return"``: blocks above
    :data:`HEAP_BLOCK_MAX` are mappings of their own, unmapped when freed,
    and passes' ends hand free heap pages back: RSS follows what is alive.
    It is the default: RSS follows what is alive (a kept heap's
    ``sagann train`` peaked 17-28 % higher).
    A host memory with a budget always runs ``"return"``: its bound is on
    RSS. None: back to the default (or the ``SAGANN_HOST_HEAP`` variable).
    """
    global _heap_chosen
    if policy is not None and policy not in HEAP_POLICIES:
        raise ValueError(f"host heap policy must be one of {HEAP_POLICIES} (or None for the default), got {policy!r}")
    with _heap_lock:
        _heap_chosen = policy
    return _apply_heap_policy()


def host_heap() -> str | None:
    """The heap policy glibc runs now (None before the first :class:`HostMemory`, or without glibc)."""
    return _heap_applied


def _wanted_policy() -> str:
    if len(_budgeted):
        return "return"
    chosen = _heap_chosen or os.environ.get(HEAP_ENV) or "return"
    if chosen not in HEAP_POLICIES:
        raise ValueError(f"{HEAP_ENV}={chosen!r}: use one of {HEAP_POLICIES}")
    return chosen


def _apply_heap_policy() -> str:
    """Set glibc's thresholds for the policy in force (no-op without glibc).

    ``"return"`` fixes the mmap threshold at :data:`HEAP_BLOCK_MAX`: glibc
    raises it after each large free, up to 32 MiB, so freed vertex-sized
    temporaries stayed in the heap, resident beyond a host budget
    (measured: about 100 MB in memory, more out of core). Not lower: each
    fresh mapping is page-faulted in at its first touch, and an out-of-core
    pass frees and allocates its sub-chunks' buffers at every step (at 64
    KiB, an R-MAT GCN epoch out of core took 63,000 minor faults against
    28,000 in memory; at 4 MiB, 22,700-27,000 against 20,000-23,000).
    Switching to it hands what the heap holds free back at once.
    """
    global _heap_applied
    with _heap_lock:
        policy = _wanted_policy()
        libc = _libc()
        if libc is None or policy == _heap_applied:
            return policy
        keep = policy == "keep"
        libc.mallopt(-3, KEPT_BLOCK_MAX if keep else HEAP_BLOCK_MAX)  # M_MMAP_THRESHOLD, fixed
        libc.mallopt(-1, KEPT_BLOCK_MAX if keep else HEAP_TOP_KEPT)  # M_TRIM_THRESHOLD
        if not keep and _heap_applied == "keep":
            trim_freed_memory()
        _heap_applied = policy
        _reset_trim_level()  # a level set under the other policy does not apply
        return policy


# Without a host budget, a pass's end trims the heaps only where anonymous RSS stands this far above where the last
# trim left it. A pass that reuses the free blocks its predecessors left keeps them: trimming them cost their page
# faults again in the next pass (R-MAT 2^16 GCN out of core: 10 ms of an 85 ms epoch). A pass that left more behind
# (a heap fragmented by differently sized passes) hands it back. Two thirds of OUT_OF_CORE_SLACK: 16 MiB trimmed
# after most passes still (an out-of-core GCN's forward leaves 24 MiB), and at 32 MiB the out-of-core peak on
# tests/test_ooc_rss.py's graph stayed below the in-memory one, as it did when every pass trimmed
TRIM_RSS_GROWTH = 32 << 20
_TRIM_LOCK = threading.Lock()
_trim_floor: int | None = None  # the level trim_after_pass compares anonymous RSS with (set by the last trim)


def _reset_trim_level() -> None:
    global _trim_floor
    with _TRIM_LOCK:
        _trim_floor = None


def trim_after_pass(always: bool = False) -> bool:
    """At a pass's end: :func:`trim_freed_memory` where anonymous RSS grew :data:`TRIM_RSS_GROWTH` beyond the last trim's level.

    ``always``: trim whatever RSS says (a host budget: its bound is on RSS).
    Returns whether it trimmed. The level is per process, as the heaps are.
    A returning heap's is where the last trim left RSS, lowered as passes
    end lower. A kept heap's (``set_host_heap("keep")``, asked for RSS
    traded for speed) is the RSS the last trim found, its high-water mark:
    every later epoch grows back to it, and trimming there handed back what
    the next pass faulted in again (R-MAT 2^16 GraphSAGE out of core: three
    trims, 19,000 page faults an epoch); only a heap growing past it is
    trimmed. (As the default, that level let the out-of-core peak exceed
    the in-memory one by more than ``OUT_OF_CORE_SLACK`` in one run of five
    of ``tests/test_ooc_rss.py``; the default heap returns memory.)
    """
    global _trim_floor
    rss = None if always else anon_rss_bytes()
    kept = _heap_applied == "keep"
    with _TRIM_LOCK:
        if rss is not None and _trim_floor is not None and rss <= _trim_floor + TRIM_RSS_GROWTH:
            if not kept:
                _trim_floor = min(_trim_floor, rss)
            return False
        trim_freed_memory()
        _trim_floor = rss if kept and rss is not None else anon_rss_bytes()
        return True


# partition index arrays are carved from spill files this big at first, each next one twice the last, up to SLAB_MAX_BYTES
SLAB_MIN_BYTES = 1 << 20
SLAB_MAX_BYTES = 64 << 20

# Under a host budget a pass also trims as it goes, where anonymous RSS grew this far past the last trim's level:
# the heap keeps what a pass frees and does not always reuse it (blocks of other sizes, other threads' arenas);
# a gated-GCN pass (per-edge autograd in every step) grew it by 250 MiB before its end's trim, 161 MiB beyond
# its bound (tests/test_host_rss.py's graph); at 32 MiB a GIN 256 wide came within 3 MiB of its bound (16: 14-17
# MiB under). Checked at most every TRIM_CHECK_SECONDS (reading RSS: ~13 us).
TRIM_IN_PASS_GROWTH = 16 << 20
TRIM_CHECK_SECONDS = 0.005
_next_trim_check = 0.0


def trim_if_grown() -> bool:
    """Inside a pass under a host budget: :func:`trim_freed_memory` where anonymous RSS grew :data:`TRIM_IN_PASS_GROWTH`
    past the last trim's level (checked at most every :data:`TRIM_CHECK_SECONDS`). Returns whether it trimmed."""
    global _next_trim_check, _trim_floor
    now = time.perf_counter()
    if now < _next_trim_check:
        return False
    _next_trim_check = now + TRIM_CHECK_SECONDS
    rss = anon_rss_bytes()
    if rss is None:
        return False
    with _TRIM_LOCK:
        if _trim_floor is None:
            _trim_floor = rss
            return False
        if rss <= _trim_floor + TRIM_IN_PASS_GROWTH:
            return False
        trim_freed_memory()
        _trim_floor = anon_rss_bytes()  # what the pass holds live now: the level to grow from
        return True


def trim_freed_memory() -> None:
    """Hand the free pages inside malloc's heaps back to the OS (glibc's ``malloc_trim``; no-op elsewhere).

    Called at a pass's end (:func:`trim_after_pass`): the buffers a pass frees (below the mmap
    threshold, thousands per out-of-core pass) leave free pages between
    live blocks and at the heap's top, which only trimming returns. A few
    milliseconds, and the next pass faults its buffers in once.
    """
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


class HostMemory:
    """Host RAM with an optional budget; what does not fit lives in memory-mapped spill files.

    Args:
        budget: bytes (or a string such as ``"2GB"``) of RAM the engine's own
            host tensors may take; None: unlimited, nothing is spilled.
        spill_dir: where spill files are created (default: a fresh
            directory under the system's temporary directory, made on first
            spill). Put it on a fast local disk.

    Accounting is per tensor object: bytes are counted from allocation until
    the tensor returned by :meth:`empty` is garbage collected.
    """

    def __init__(self, budget: int | str | None = None, spill_dir: str | os.PathLike | None = None):
        self.budget = parse_bytes(budget)
        self._spill_dir = None if spill_dir is None else Path(spill_dir)
        if self._spill_dir is not None and self._spill_dir.exists() and not self._spill_dir.is_dir():
            raise ValueError(f"spill_dir {str(self._spill_dir)!r} exists and is not a directory; pass a directory for spill files")
        self._lock = threading.Lock()
        self.resident_bytes = 0  # engine tensors in RAM now
        self.peak_resident_bytes = 0
        self.spilled_bytes = 0  # engine tensors in spill files now
        self.spilled_total_bytes = 0  # everything ever spilled
        self.peak_spilled_bytes = 0
        self._files = 0
        self._warned_map = False  # map_chunks fell back to RAM (warned once)
        self._slab_lock = threading.Lock()
        self._slabs: dict[bool, tuple] = {}  # counted as spilled? -> (the spill file chunks' arrays are carved from, bytes used)
        self._placed: set[int] = set()  # storage pointers of the RAM tensors this budget placed
        # without a budget, freed vertex-sized tensors are kept for the next request of their size (a budget's bound is on RSS)
        self._reused = HostBuffers(REUSED_MIN_BYTES) if self.budget is None else None
        if self.budget is not None:
            _budgeted.add(self)
        _apply_heap_policy()

    @property
    def enabled(self) -> bool:
        """True when a budget is set (some tensors may be spilled)."""
        return self.budget is not None

    @property
    def spill_dir(self) -> Path:
        if self._spill_dir is None:
            self._spill_dir = Path(tempfile.mkdtemp(prefix="sagann-spill-"))
            # spill files are unlinked once mapped, so the directory it made is empty: remove it with the budget
            weakref.finalize(self, shutil.rmtree, self._spill_dir, True)
        self._spill_dir.mkdir(parents=True, exist_ok=True)
        return self._spill_dir

    def check_disk_room(self, spill_bytes: int, what: str) -> None:
        """Refuse (OSError) a run whose plan spills ``spill_bytes`` at least when the spill directory's disk has less free.

        Checked before anything is spilled, so that a disk too small is one
        clear error at the start, not an ENOSPC an hour into training.
        No-op without a budget (nothing spills).
        """
        if self.budget is None or spill_bytes <= 0:
            return
        where = self._spill_dir if self._spill_dir is not None else Path(tempfile.gettempdir())
        probe = where
        while not probe.exists() and probe != probe.parent:  # made on first spill: its disk is the nearest existing parent's
            probe = probe.parent
        try:
            free = shutil.disk_usage(probe).free
        except OSError:
            return  # nothing to measure: the spill itself reports a full disk
        if spill_bytes > free:
            raise OSError(f"the run spills at least {format_bytes(spill_bytes)} ({what}) beyond host_memory={format_bytes(self.budget)} "
                          f"but the spill directory {where} has {format_bytes(free)} free on its disk; "
                          f"pass a spill_dir on a disk with more room, free space there, or raise host_memory")

    # ---- allocation --------------------------------------------------------------------------
    def empty(self, shape, dtype: torch.dtype = torch.float32, what: str = "host tensor") -> torch.Tensor:
        """An uninitialised tensor, in RAM if it fits the budget, else in a spill file (zero-filled)."""
        shape = tuple(int(s) for s in (shape if isinstance(shape, (tuple, list, torch.Size)) else (shape,)))
        nbytes = int(np.prod(shape, dtype=np.int64)) * torch.empty(0, dtype=dtype).element_size()
        with self._lock:
            spill = self.budget is not None and self.resident_bytes + nbytes > self.budget and nbytes > 0
            if not spill:
                self.resident_bytes += nbytes
                self.peak_resident_bytes = max(self.peak_resident_bytes, self.resident_bytes)
        if not spill:
            t = self._reused.empty(shape, dtype) if self._reused is not None else None
            t = torch.empty(shape, dtype=dtype) if t is None else t
            ptr = t.untyped_storage().data_ptr()
            if ptr:
                self._placed.add(ptr)  # already under the budget: autograd's saved-tensor hook leaves it be
            weakref.finalize(t, self._release, nbytes, False, ptr)
            return t
        return self._spill(shape, dtype, nbytes, what)

    def array(self, n: int, dtype, what: str = "host array") -> np.ndarray:
        """A 1-D numpy array of ``n`` items of ``dtype`` placed as :meth:`empty` places a tensor (it keeps the tensor alive)."""
        return self.empty((int(n),), torch.from_numpy(np.empty(0, dtype=dtype)).dtype, what).numpy()

    def zeros(self, shape, dtype: torch.dtype = torch.float32, what: str = "host tensor") -> torch.Tensor:
        t = self.empty(shape, dtype, what)
        if not is_spilled(t):  # spill files start zero-filled
            t.zero_()
        return t

    def zeros_like(self, t: torch.Tensor, what: str = "host tensor") -> torch.Tensor:
        return self.zeros(tuple(t.shape), t.dtype, what)

    def copy(self, t: torch.Tensor, what: str = "host tensor") -> torch.Tensor:
        """A copy of ``t`` placed under the budget (in RAM or spilled)."""
        out = self.empty(tuple(t.shape), t.dtype, what)
        out.copy_(t.detach())
        return out

    def _spill(self, shape, dtype: torch.dtype, nbytes: int, what: str, counted: bool = True) -> torch.Tensor:
        """A tensor in a fresh spill file; ``counted`` False: not in the spill figures (a file-backed copy of file-backed data, not RAM spilled)."""
        if dtype not in _NP_DTYPES:
            raise TypeError(f"cannot spill {what} of dtype {dtype}; spillable dtypes: {', '.join(map(str, _NP_DTYPES))}")
        fd, path = tempfile.mkstemp(prefix="spill-", suffix=".bin", dir=self.spill_dir)
        try:
            check_fault("spill")
            # reserve every block now: a full disk is this error, not a SIGBUS when a page is first written
            os.posix_fallocate(fd, 0, SPILL_HEADER_BYTES + nbytes)
            whole = np.memmap(path, dtype=np.uint8, mode="r+", shape=(SPILL_HEADER_BYTES + nbytes,))
        except OSError as exc:
            raise OSError(f"cannot create a {format_bytes(nbytes)} spill file for {what} in {self.spill_dir}: {exc.strerror or exc}; "
                          f"free disk space there, pass another --spill-dir (spill_dir=), or raise --host-memory") from None
        finally:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # the mapping keeps the data; nothing is left behind
        head = whole[:SPILL_HEADER_BYTES]
        head[: len(_SPILL_MAGIC)] = np.frombuffer(_SPILL_MAGIC, dtype=np.uint8)
        head[len(_SPILL_MAGIC) : len(_SPILL_MAGIC) + 8] = np.frombuffer(np.int64(nbytes).tobytes(), dtype=np.uint8)
        seal = bytes(head[:_SPILL_SEALED])
        array = whole[SPILL_HEADER_BYTES:].view(_NP_DTYPES[dtype]).reshape(shape)
        t = torch.from_numpy(array)
        ptr = t.untyped_storage().data_ptr()
        with _SPILLED_LOCK:
            _SPILLED[ptr] = (nbytes, head, seal)
        weakref.finalize(array, _forget, ptr)  # the mapping lives as long as any view of it
        if counted:
            with self._lock:
                self.spilled_bytes += nbytes
                self.spilled_total_bytes += nbytes
                self.peak_spilled_bytes = max(self.peak_spilled_bytes, self.spilled_bytes)
                self._files += 1
            weakref.finalize(t, self._release, nbytes, True)
        return t

    def _release(self, nbytes: int, spilled: bool, ptr: int = 0) -> None:
        with self._lock:
            if spilled:
                self.spilled_bytes -= nbytes
            else:
                self.resident_bytes -= nbytes
                self._placed.discard(ptr)

    # ---- index arrays ----------------------------------------------------------------------------
    def place_partition(self, part):
        """``part`` with its sub-chunks' index arrays moved into spill files (the same object, changed in place).

        A partition the engine cut itself (a GCN's self-loop graph) is as big
        as the dataset's own edge files, which stay memory-mapped; under a
        budget its arrays are read as the dataset's are: from file-backed
        pages the OS may drop. A partition already file-backed, or without a
        budget, is returned as it is.
        """
        if self.budget is not None:
            for subs in part.chunks.values():
                self.place_chunks(subs)
        return part

    def place_chunks(self, subs: list) -> list:
        """The index arrays of ``subs`` (one chunk's sub-chunks) moved into one spill file; ``subs`` is returned.

        Called by the partitioner chunk by chunk, so a partition being cut
        never holds more than one chunk's arrays in RAM.
        """
        if self.budget is None:
            return subs
        return pack_chunks(subs, lambda n: self._slab_bytes(n, counted=True))

    def _slab_bytes(self, nbytes: int, counted: bool) -> np.ndarray:
        """``nbytes`` of a spill file shared by many chunks' arrays (the file lives while any of them does).

        One file a chunk cost a create, a reservation and a mapping each: a
        GIN re-cut at P = 69 (4,761 chunks) spent 18 s more in its first epoch.
        Files start at :data:`SLAB_MIN_BYTES` and double up to :data:`SLAB_MAX_BYTES`.
        """
        with self._slab_lock:
            slab, used = self._slabs.get(counted, (None, 0))
            if slab is None or used + nbytes > slab.shape[0]:
                size = max(nbytes, SLAB_MIN_BYTES if slab is None else min(SLAB_MAX_BYTES, 2 * slab.shape[0]))
                slab, used = self._spill((size,), torch.uint8, size, "partition index arrays", counted=counted).numpy(), 0
            self._slabs[counted] = (slab, used + (nbytes + 63) // 64 * 64)
            return slab[used : used + nbytes]

    def map_chunks(self, subs: list) -> list:
        """The index arrays of ``subs`` (one chunk's sub-chunks) in one memory-mapped file, budget or not; ``subs`` is returned.

        For a partition cut from a dataset's memory-mapped chunks: file-backed
        as the chunks it is cut from, its pages are the OS's to drop, so a run
        that re-cuts the dataset finer holds no more anonymous RAM than one
        reading the dataset's own partition. Where the spill directory has no
        room the arrays stay in RAM (with a warning): without a budget, RAM is
        allowed to hold them.
        """
        try:
            return pack_chunks(subs, lambda n: self._slab_bytes(n, counted=False))
        except OSError as exc:
            if not self._warned_map:
                self._warned_map = True
                warnings.warn(f"{exc}; the partition's index arrays stay in RAM", RuntimeWarning, stacklevel=2)
            return pack_chunks(subs)

    # ---- what autograd saves -------------------------------------------------------------------
    @contextlib.contextmanager
    def saved_tensors(self, min_bytes: int = SAVED_TENSOR_MIN_BYTES):
        """Inside, tensors autograd saves for backward are placed under the budget too.

        Large saved activations (a ReLU's output, a dropout mask) are copied
        into a spill file when RAM is over budget; small ones and parameters
        stay as they are. Nothing changes without a budget.
        """
        if self.budget is None:
            yield
            return

        def pack(t: torch.Tensor):
            if isinstance(t, torch.nn.Parameter) or t.device.type != "cpu" or tensor_bytes(t) < min_bytes or is_spilled(t):
                return t
            if t.untyped_storage().data_ptr() in self._placed:  # counted in the budget already
                return t
            with self._lock:
                fits = self.resident_bytes + tensor_bytes(t) <= self.budget
            return t if fits else self.copy(t, "a tensor saved for backward")

        def unpack(t: torch.Tensor):
            check_spill(t)
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
            yield

    def stats(self) -> dict:
        """Budget, RAM and spill figures (bytes) for reports."""
        with self._lock:
            return {
                "host_memory_bytes": self.budget,
                "peak_resident_bytes": self.peak_resident_bytes,
                "spilled_bytes_total": self.spilled_total_bytes,
                "peak_spilled_bytes": self.peak_spilled_bytes,
                "spill_files": self._files,
            }

    def __repr__(self) -> str:
        return (f"HostMemory(budget={format_bytes(self.budget)}, resident={format_bytes(self.resident_bytes)}, "
                f"spilled={format_bytes(self.spilled_bytes)})")


def _forget(ptr: int) -> None:
    with _SPILLED_LOCK:
        _SPILLED.pop(ptr, None)
