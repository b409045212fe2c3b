"""The device-side view of one sub-chunk that every kernel backend takes."""
from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np
import torch

from sagann.chunks.types import EdgeChunk, native_16, sent_names

# attribute (not a field) of a ChunkTensors and its EdgeChunk: values kernels derive from the index
# arrays alone, shared by every device copy of one sub-chunk
DERIVED = "_derived"

# every index array of a ChunkTensors, as its fields are named
ARRAYS = ("dst_ptr", "dst_idx", "src_idx", "src_ptr", "src_perm", "src_dst")

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


def index_bytes(nnz: int, num_dst: int, num_src: int, source_major: bool) -> int:
    """Device bytes of a sub-chunk's index arrays as int32: three per edge (+ ``src_dst`` when source-major) and both pointers."""
    return 4 * ((3 + bool(source_major)) * nnz + num_dst + 1 + num_src + 1)


def crossing_array(chunk: EdgeChunk, name: str, narrow: bool) -> np.ndarray | None:
    """Host index array ``name`` as it crosses the link: 16 bits where ``narrow`` and its values fit; None for a file-backed chunk's ``src_dst``.

    The 16 bits are unsigned values (up to 65,535) carried as int16, the
    type every backend copies and widens; :func:`widen_index` undoes it.
    """
    host = host_array(chunk, name)
    return narrowed(host) if host is not None and chunk.crosses_short(name, narrow) else host


def host_array(chunk: EdgeChunk, name: str) -> np.ndarray | None:
    """Host index array ``name`` of ``chunk``; ``src_dst``: its source-major destinations (None for a file-backed chunk)."""
    return chunk.src_major_dst() if name == "src_dst" else getattr(chunk, name)


def narrowed(a: np.ndarray) -> np.ndarray:
    """An index array whose values are below 2^16 in 16 bits: unsigned values carried as int16 (a copy)."""
    return a.astype(np.uint16).view(np.int16)


def kernel_index(g: "ChunkTensors", name: str) -> torch.Tensor:
    """Index array ``name`` as a kernel that reads 16-bit ids (unsigned, as :func:`crossing_array` makes them) takes it:
    the 16-bit copy a stream kept unwidened (``StreamedChunkTensors(native=True)``), else the int32 array."""
    kept = g.__dict__.get("_narrow")
    return kept[name] if kept and name in kept else getattr(g, name)


def widen_index(t: torch.Tensor) -> torch.Tensor:
    """An index array as kernels read it (int32): a 16-bit one (:func:`crossing_array`) widened, its bits read as unsigned."""
    if t.dtype == torch.int32:
        return t
    wide = t.to(torch.int32)
    return wide.bitwise_and_(0xFFFF) if t.dtype == torch.int16 else wide


def crossing(chunk: EdgeChunk, backward: bool, source_major: bool, narrow: bool, native: bool) -> tuple[tuple, tuple, tuple]:
    """``(names, shorts, kept)``: the index arrays a pass sends with ``chunk`` and whether each crosses in 16 bits
    (``EdgeChunk.crossing_arrays``, worked out once per sub-chunk and pass kind), and whether the kernels keep it so
    (``native``)."""
    names, shorts = chunk.crossing_arrays(backward, narrow, source_major, native)
    return names, shorts, tuple(short and native and native_16(n, backward) for n, short in zip(names, shorts))


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
        """Device bytes of the index arrays (all of them, as int32; arrays a streamed copy makes later included)."""
        return index_bytes(self.nnz, self.num_dst, self.num_src, self.src_dst is not None)

    def present(self) -> list[torch.Tensor]:
        """The arrays on the device now (a streamed copy's later ones not yet made are left out)."""
        return [t for t in (self.__dict__.get(n) for n in ARRAYS) if t is not None]

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


def expand_pointer(ptr: torch.Tensor, total: int) -> torch.Tensor:
    """The row of each of a CSR/CSC pointer's ``total`` entries, int32 on ``ptr``'s device (``dst_idx`` from ``dst_ptr``)."""
    rows = ptr.shape[0] - 1
    if ptr.device.type == "cpu":
        try:
            from sagann.kernels._cpu_index import expand_pointer as kernel
        except ImportError:  # no numba: torch's (slower on the CPU)
            kernel = None
        if kernel is not None:
            out = torch.empty(total, dtype=torch.int32)
            kernel(ptr.contiguous().numpy(), out.numpy())
            return out
    counts = ptr[1:] - ptr[:-1]
    # output_size: no device-to-host read of the total on a GPU
    return torch.repeat_interleave(torch.arange(rows, dtype=torch.int32, device=ptr.device), counts, output_size=total)


class StreamedChunkTensors(ChunkTensors):
    """A sub-chunk's index arrays as a pass streams them: only what it reads crosses the link.

    The arrays of :func:`sent_names` are sent with the sub-chunk; any other
    is sent when first read, except ``dst_idx`` where ``derive`` says the
    device makes it from ``dst_ptr`` (a GPU: cheaper than the link; on a CPU
    a copy is cheaper than the loop). A device builds one with ``send`` (host array ->
    device tensor, a transfer); ``sent_bytes`` counts what crossed.
    """

    def __init__(self, chunk: EdgeChunk, send, *, backward: bool, source_major: bool = False, sent: dict | None = None,
                 narrow: bool = False, derive: bool = False, send_many=None, native: bool = False):
        """``sent``: arrays already on the device (a packed copy), by name; the others of the pass are sent here,
        with ``send_many`` (host arrays -> device tensors, one transfer) if given.

        ``narrow``: arrays cross in 16 bits where their values fit
        (``EdgeChunk.fits_16_bits``) and are widened to int32 on the device.
        ``native``: the pass's kernels read the arrays of ``native_16`` in
        16 bits (:func:`kernel_index`): those cross so where they fit (narrow
        or not) and stay so, widened only if something reads the int32 attribute.
        """
        d = self.__dict__
        d.update(num_src=chunk.num_src, num_dst=chunk.num_dst, _chunk=chunk, _send=send, sent_bytes=0, _narrow={})
        d.update(_narrows=bool(narrow), _derive=bool(derive), _source_major=bool(source_major))
        d[DERIVED] = chunk.__dict__.setdefault(DERIVED, {})
        names, shorts, kept = crossing(chunk, bool(backward), bool(source_major), bool(narrow), bool(native))
        hosts = [host_array(chunk, n) for n in names]
        if sent or any(h is None for h in hosts):  # some already there, or made on the device later (a file-backed chunk's src_dst)
            rows = [r for r in zip(names, shorts, kept, hosts) if r[0] not in (sent or ()) and r[3] is not None]
            names, shorts, kept, hosts = [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], [r[3] for r in rows]
        for name, keep, t in zip(names, kept, self._cross(hosts, shorts, send_many)):
            if keep:
                d["_narrow"][name] = t
            else:
                d["_src_dst" if name == "src_dst" else name] = widen_index(t)
        for k, v in (sent or {}).items():
            d["_src_dst" if k == "src_dst" else k] = v

    def _cross(self, hosts: list, shorts: list, send_many=None) -> list[torch.Tensor]:
        """The host arrays on the device as they cross: in 16 bits where ``shorts`` says so (unwidened).
        ``send_many(hosts, shorts)`` may narrow within its copy; one array at a time is narrowed on the host first."""
        self.__dict__["sent_bytes"] += sum(h.nbytes // (2 if short else 1) for h, short in zip(hosts, shorts))
        if send_many is not None and len(hosts) > 1:
            return send_many(hosts, shorts)
        return [self._send(narrowed(h) if short else h) for h, short in zip(hosts, shorts)]

    def charge_later(self, scope) -> None:
        """Charge ``scope`` (a device ledger's :class:`~sagann.scheduler.devices.Scope`) for each array made after this call."""
        self.__dict__["_scope"] = scope

    def _make(self, name: str) -> torch.Tensor:
        if name in self._narrow:  # kept in 16 bits for the kernels that read them so; something wants int32
            made = widen_index(self._narrow.pop(name))
        elif name == "dst_idx" and self._derive:
            made = expand_pointer(self.dst_ptr, self.nnz)
        else:
            host = host_array(self._chunk, name)
            if host is None:  # a file-backed chunk keeps no source-major destinations: made here
                made = self.dst_idx.index_select(0, self.src_perm)
            else:
                made = widen_index(self._cross([host], [self._chunk.crosses_short(name, self._narrows)])[0])
        scope = self.__dict__.get("_scope")
        if scope is not None:
            scope.charge(made.nbytes, lambda: f"{name} of {self._chunk.id!r}, read after its load")
        return made

    def __getattr__(self, name: str):  # called only for an array not made yet
        d = self.__dict__
        if "_chunk" not in d or name not in ARRAYS[:-1]:  # src_dst: the property below
            raise AttributeError(name)
        value = d[name] = self._make(name)
        return value

    @property
    def src_dst(self) -> torch.Tensor | None:  # a property: the dataclass's default would hide a missing attribute
        d = self.__dict__
        if "_src_dst" not in d:
            d["_src_dst"] = self._make("src_dst") if d["_source_major"] else None
        return d["_src_dst"]

    @property
    def nbytes(self) -> int:
        """Device bytes of the arrays made so far: what the pass reads at once; an array read later is charged then (:meth:`charge_later`)."""
        return sum(t.nbytes for t in self.present())

    def present(self) -> list[torch.Tensor]:
        d = self.__dict__
        return [t for t in (d.get("_src_dst" if n == "src_dst" else n) for n in ARRAYS) if t is not None] + list(d["_narrow"].values())

    @property
    def nnz(self) -> int:
        return int(self._chunk.nnz)

    @property
    def device(self) -> torch.device:
        return self.dst_ptr.device
