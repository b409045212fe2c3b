"""Fused numba.cuda backend: gSpMM and gSDDMM over one sub-chunk on a GPU, autograd-aware.

Same results as :mod:`sagann.kernels.reference` (values, max/min winners,
gradients up to float summation order) and the same API and checks as
:mod:`sagann.kernels.cpu`; the kernels and their load balancing are
described in :mod:`sagann.kernels._cuda_kernels`. Forward is
destination-parallel with the features across threads, grad of ``src`` is
source-major (``src_ptr`` / ``src_perm``); float atomics only where a heavy
row is split into several segments, and never for max/min.

On a GPU, the chunk and the operands are CUDA tensors of one device; kernels
run on torch's current stream of that device (no host sync), reading the
tensors through ``__cuda_array_interface__``. Under numba's CUDA simulator
(``NUMBA_ENABLE_CUDASIM=1`` set before numba is first imported) they are CPU
tensors instead, and every launch runs in Python, one thread at a time:
keep graphs tiny there. Float32 and float64 are computed natively, other
floating dtypes in float32. Double backward is not supported.

The fused GAT attention (:func:`attention_partials`,
:func:`attention_backward`, called through :mod:`sagann.kernels.attention`)
runs the kernels of :mod:`sagann.kernels._cuda_attention`.
"""
from __future__ import annotations

import contextlib
import threading
import warnings

import numpy as np
import torch
from numba import cuda
from numba.core import config as _numba_config
from torch.autograd.function import once_differentiable

from sagann.kernels import _csr_product as CSR
from sagann.kernels import _cuda_attention as KA
from sagann.kernels import _cuda_kernels as K
from sagann.kernels._common import SCALAR_CODES, Frontend, GradCall, KernelCall, Placement, validate
from sagann.kernels._numba_compat import restore_removed_numpy_aliases
from sagann.kernels.graph import ChunkTensors

__all__ = ["gspmm", "gsddmm", "attention_partials", "attention_backward", "SIMULATOR"]

SIMULATOR = bool(_numba_config.ENABLE_CUDASIM)
"""True when numba runs CUDA kernels in its Python simulator (inputs are then CPU tensors)."""

restore_removed_numpy_aliases()  # numba-cuda compiles lazily: this runs before its first kernel
# a sub-chunk of a few hundred rows is a small grid by design: numba's low-occupancy warning on every such
# launch says nothing a user can act on (the planner sizes sub-chunks; the profiler shows the kernels' time)
# (numba-cuda has its own NumbaPerformanceWarning class, not numba's: matched by its text)
warnings.filterwarnings("ignore", message=r".*Grid size \d+ will likely result in GPU under-utilization")


def _skip_occupancy_check() -> None:
    """Turn off the check behind that warning: on every launch it looks up the context and builds the warning (tens of µs)."""
    import importlib

    for name in ("numba.core.config", "numba.cuda.core.config"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(module, "CUDA_LOW_OCCUPANCY_WARNINGS"):
            module.CUDA_LOW_OCCUPANCY_WARNINGS = 0


_skip_occupancy_check()

# Sums of copy_src and of src_mul_edge with one weight per edge run torch's sparse CSR product (cuSPARSE)
# on a GPU: faster on the device, and a fraction of the host time of a numba launch (see _csr_product).
# Under the simulator the numba kernels run (they are what it checks); tests set this to check both paths.
CSR_PRODUCT = not SIMULATOR

# From this many rows, a call fills each run's row into an array (one more launch) instead of every
# work item binary-searching the run offsets (log2(rows) dependent loads): a whole graph's million rows
# take 20 loads each, a sub-chunk's few hundred take 8, fewer than the launch costs. A prediction
# from a latency count: benchmarks/gpu_check.py times both on the GPU.
ROW_ARRAY_MIN_ROWS = 1 << 14

# Most edges one thread folds for one feature before a row is split (see _cuda_kernels).
# R-MAT's average in-degree is ~16, so nearly every row is one segment and needs no atomics.
_SEGMENT = 128
_WARP = 32
# Threads per block: a few warps on a GPU; few in the simulator, where each costs ~0.1 ms.
_THREADS = 16 if SIMULATOR else 128
# The simulator runs one launch at a time per process; engine threads may call concurrently.
_SIM_LOCK = threading.Lock()
_NO_DEVICE = "sagann.kernels.cuda: no CUDA device; use backend='cpu' or set NUMBA_ENABLE_CUDASIM=1 for the simulator"

if SIMULATOR:
    _PLACEMENT = Placement(
        "cpu",
        "under the CUDA simulator (NUMBA_ENABLE_CUDASIM=1) pass CPU tensors",
        "under the CUDA simulator pass CPU tensors",
    )
else:
    _PLACEMENT = Placement(
        "cuda",
        "move it with ChunkTensors.from_chunk(chunk, device='cuda') or use backend='cpu'",
        "move it to the chunk's device ({device})",
    )


def _require_device() -> None:
    if not SIMULATOR and not cuda.is_available():
        raise RuntimeError(_NO_DEVICE)


def _on(device: torch.device):
    """Make ``device`` numba's current GPU (no-op under the simulator)."""
    if SIMULATOR:
        return contextlib.nullcontext()
    return cuda.gpus[device.index if device.index is not None else torch.cuda.current_device()]


# empty operands (an op's unused src/edge/dst, a call without a run-row array) are never read: one
# device array per (GPU, shape, dtype) serves every launch, instead of a numba allocation call each
_EMPTY: dict = {}
# numba's handle of each torch stream launched on: made once, not per launch (torch's streams live as long as the process)
_STREAMS: dict = {}


def _array(t: torch.Tensor):
    """A kernel argument viewing ``t``: numpy under the simulator, a zero-copy device array on a GPU."""
    t = t.detach().contiguous()
    if SIMULATOR:
        return t.numpy()
    if t.numel() == 0:  # no pointer to export; never read, since empty launches are skipped
        key = (t.device.index, tuple(t.shape), t.dtype)
        empty = _EMPTY.get(key)
        if empty is None:
            empty = _EMPTY[key] = cuda.device_array(tuple(t.shape), dtype=_np_dtype(t.dtype))
        return empty
    return cuda.as_cuda_array(t, sync=False)  # ordered by torch's stream, which we launch on


def _numba_stream(device: torch.device):
    """numba's handle of torch's current stream on ``device``."""
    handle = torch.cuda.current_stream(device).cuda_stream
    stream = _STREAMS.get(handle)
    if stream is None:
        stream = _STREAMS[handle] = cuda.external_stream(handle)
    return stream


def _np_dtype(dtype: torch.dtype) -> type:
    return {torch.float32: np.float32, torch.float64: np.float64, torch.int32: np.int32, torch.int64: np.int64}[dtype]


def _operands(src, edge, dst, dtype: torch.dtype, device: torch.device) -> tuple:
    """The operands as 2-D tensors; an empty ``(0, 0)`` dummy for None."""

    def view(t):
        if t is None:
            return torch.empty((0, 0), dtype=dtype, device=device)
        return t.detach().reshape(-1, 1) if t.dim() == 1 else t.detach()

    return view(src), view(edge), view(dst)


def _block(width: int) -> tuple[int, int]:
    """``(tx, ty)``: a power of two <= 32 lanes across features, ``ty`` items per block."""
    tx = min(_WARP, 1 << max(0, (max(width, 1) - 1).bit_length()))
    return tx, max(1, _THREADS // tx)


def _launch(kernel, items: int, width: int, device: torch.device, *args, tiled: bool = True) -> None:
    """Run ``kernel`` over ``items`` work items x ``width`` features on torch's current stream; no sync.

    Tensor arguments are passed as :func:`_array` views (the kernel writes
    into output tensors in place). ``tiled=False``: one feature tile (the
    kernel strides over the features itself).
    """
    if items <= 0 or width <= 0:
        return
    tx, ty = _block(width)
    grid = (-(-items // ty), -(-width // tx) if tiled else 1)
    if SIMULATOR:
        with _SIM_LOCK:
            kernel[grid, (tx, ty)](*(_array(a) if isinstance(a, torch.Tensor) else a for a in args))
        return
    with _on(device):
        kernel[grid, (tx, ty), _numba_stream(device)](*(_array(a) if isinstance(a, torch.Tensor) else a for a in args))


def _segments(ptr: torch.Tensor, nnz: int, seg: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``seg_ptr`` (int32 ``[rows + 1]``) cutting rows into runs of <= ``seg`` positions, each run's row, and a bound on the runs.

    The bound, ``min(nnz, nnz // seg + rows)``, needs no device-to-host sync;
    ``seg_row`` has that many entries, the first ``seg_ptr[rows]`` written,
    or none below ``ROW_ARRAY_MIN_ROWS`` rows.
    """
    rows = ptr.shape[0] - 1
    counts = (ptr[1:] - ptr[:-1] + (seg - 1)) // seg
    seg_ptr = torch.zeros(rows + 1, dtype=torch.int32, device=ptr.device)
    seg_ptr[1:] = torch.cumsum(counts, 0, dtype=torch.int32)
    bound = min(nnz, nnz // seg + rows)
    if rows < ROW_ARRAY_MIN_ROWS:  # empty: the kernels search seg_ptr
        return seg_ptr, torch.empty(0, dtype=torch.int32, device=ptr.device), bound
    seg_row = torch.empty(max(bound, 1), dtype=torch.int32, device=ptr.device)
    _launch(K.segment_rows, rows, 1, ptr.device, seg_ptr, seg_row)
    return seg_ptr, seg_row, bound


def _part_ptr(seg_ptr: torch.Tensor, nnz: int, seg: int) -> tuple[torch.Tensor, int]:
    """Scratch rows of the max/min partials: ``[rows + 1]`` scan over rows with >= 2 segments, and a bound.

    A row with ``deg > seg`` has ``ceil(deg / seg) <= deg // seg + 1`` segments and there are at most
    ``nnz // seg`` such rows, hence the bound ``2 * (nnz // seg)``.
    """
    counts = seg_ptr[1:] - seg_ptr[:-1]
    part_ptr = torch.zeros_like(seg_ptr)
    part_ptr[1:] = torch.cumsum(torch.where(counts > 1, counts, 0), 0, dtype=torch.int32)
    return part_ptr, 2 * (nnz // seg)


def _validate(fn: str, g: ChunkTensors, op: str, src, edge, dst) -> tuple[int, torch.dtype]:
    _require_device()
    return validate(f"sagann.kernels.cuda.{fn}", _PLACEMENT, g, op, src, edge, dst)


def _degree(g: ChunkTensors, dtype: torch.dtype) -> torch.Tensor:
    """max(in-degree within the chunk, 1) of each destination row, ``[num_dst]``."""
    return (g.dst_ptr[1:] - g.dst_ptr[:-1]).clamp(min=1).to(dtype)


def _backward(ctx, mode: int, grad: torch.Tensor, arg: torch.Tensor | None):
    """Gradients of (src, edge, dst) from ``grad`` ([num_dst, d] or [nnz, k])."""
    src, edge, dst = ctx.saved_tensors[:3]
    return grads(GradCall(ctx.g, ctx.code, mode, grad, arg, src, edge, dst, (ctx.needs_src, ctx.needs_edge, ctx.needs_dst)), seg=ctx.seg)


def grads(call: GradCall, src_out=None, src_rows=None, seg: int | None = None, source_major: bool = False):
    """The backward kernels; with ``src_out`` the src gradient is added into ``src_out[src_rows]`` (rows unique) and None returned for it.

    ``seg``: the segment length (default ``_SEGMENT`` as it is now).
    ``source_major``: ``call.edge`` is ``edge[src_perm]`` (only the src
    gradient is asked for, of a code in :data:`SOURCE_MAJOR_CODES`).
    """
    d_src, d_edge, d_dst = _grads(call, _SEGMENT if seg is None else seg, source_major)
    if src_out is not None and d_src is not None:
        src_out.index_add_(0, src_rows.to(device=src_out.device, dtype=torch.long), d_src)
        d_src = None
    return d_src, d_edge, d_dst


def _product(code: int, reduce: str, dtype: torch.dtype, g: ChunkTensors, rows: int, cols: int) -> bool:
    """Does this gSpMM (or its src gradient), over a ``rows`` x ``cols`` matrix, run as the sparse CSR product?"""
    return CSR_PRODUCT and CSR.eligible(code, reduce, dtype) and CSR.fits(g.nnz, rows, cols)


def _product_gather(g: ChunkTensors, code: int, reduce: str, src, edge, src_rows=None, into=None) -> torch.Tensor:
    """A sum or mean as the CSR product (no autograd): a mean divides by the rows' in-degrees; ``into`` (sums only) is added into."""
    out = CSR.forward_sum(g, code, src, edge, src_rows=src_rows, into=into if reduce == "sum" else None)
    return out / _degree(g, out.dtype).unsqueeze(-1) if reduce == "mean" else out


def _grads(call: GradCall, seg: int, source_major: bool = False):
    g, code, mode, grad, arg, src, edge, dst = call.g, call.code, call.mode, call.grad, call.arg, call.src, call.edge, call.dst
    needs_src, needs_edge, needs_dst = call.needs
    dtype, device = grad.dtype, g.device
    dt = _np_dtype(dtype)
    A = arg if arg is not None else torch.empty((0, 0), dtype=torch.int64, device=device)
    product = needs_src and mode == K.ROW and _product(code, "sum", dtype, g, g.num_src, g.num_dst)
    if source_major and not product and edge is not None:  # the numba kernels read edge weights in CSC order
        edge = torch.empty_like(edge).index_copy_(0, g.src_perm.long(), edge)
    S, E, D = _operands(src, edge, dst, dtype, device)
    d_src = d_edge = d_dst = None
    if product:
        d_src = CSR.src_grad(g, code, grad, edge, source_major=source_major)
    elif needs_src:
        src_shape = src.shape if src is not None else (g.num_src, grad.shape[1])  # a sum's src grad never reads src
        d_src = torch.zeros(src_shape, dtype=dtype, device=device)
        seg_ptr, seg_row, bound = _segments(g.src_ptr, g.nnz, seg)
        args = (grad, A, E, D, g.dst_idx, g.src_ptr, g.src_perm, seg_ptr, seg_row, seg, d_src)
        _launch(K.grad_src(code, mode, dt), bound, src_shape[1], device, *args)
    if needs_edge:
        if code in SCALAR_CODES:  # one value per edge: reduce over the features
            out = torch.zeros((g.nnz, 1), dtype=dtype, device=device)
            width = src.shape[1]
            kernel = K.edge_reduce(code, mode, dt, *_block(width))
            _launch(kernel, g.nnz, width, device, S, D, grad, A, g.src_idx, g.dst_idx, out, tiled=False)
        else:
            out = torch.zeros((g.nnz, E.shape[1]), dtype=dtype, device=device)
            _launch(K.grad_edge(code, mode, dt), g.nnz, E.shape[1], device, grad, A, S, g.src_idx, g.dst_idx, out)
        d_edge = out.reshape(edge.shape)
    if needs_dst:
        d_dst = torch.zeros(dst.shape, dtype=dtype, device=device)
        seg_ptr, seg_row, bound = _segments(g.dst_ptr, g.nnz, seg)
        args = (grad, A, S, g.src_idx, g.dst_ptr, seg_ptr, seg_row, seg, d_dst)
        _launch(K.grad_dst(code, mode, dt), bound, dst.shape[1], device, *args)
    return d_src, d_edge, d_dst


def _save(ctx, g: ChunkTensors, code: int, src, edge, dst, *extra) -> None:
    ctx.g, ctx.code, ctx.seg = g, code, _SEGMENT
    ctx.needs_src, ctx.needs_edge, ctx.needs_dst = ctx.needs_input_grad[-3:]
    ctx.save_for_backward(src, edge, dst, *extra)


class _GSpMM(torch.autograd.Function):
    @staticmethod
    def forward(ctx, g: ChunkTensors, code: int, reduce: str, width: int, src, edge, dst):
        dtype = next(t for t in (src, edge, dst) if t is not None).dtype
        device, seg = g.device, _SEGMENT
        if _product(code, reduce, dtype, g, g.num_dst, g.num_src):
            out = _product_gather(g, code, reduce, src.detach(), None if edge is None else edge.detach())
            arg = torch.empty(0, dtype=torch.long, device=device)
            ctx.reduce = reduce
            _save(ctx, g, code, src, edge, dst, arg)
            ctx.mark_non_differentiable(arg)
            return out, arg
        S, E, D = _operands(src, edge, dst, dtype, device)
        out = torch.zeros((g.num_dst, width), dtype=dtype, device=device)
        seg_ptr, seg_row, bound = _segments(g.dst_ptr, g.nnz, seg)
        if reduce in ("sum", "mean"):
            kernel = K.spmm_sum(code, reduce == "mean", _np_dtype(dtype))
            _launch(kernel, bound, width, device, S, E, D, g.src_idx, g.dst_ptr, seg_ptr, seg_row, seg, out)
            arg = torch.empty(0, dtype=torch.long, device=device)
        else:
            is_max = reduce == "max"
            arg = torch.full((g.num_dst, width), -1, dtype=torch.long, device=device)
            part_ptr, parts = _part_ptr(seg_ptr, g.nnz, seg)
            part_val = torch.empty((parts, width), dtype=dtype, device=device)
            part_arg = torch.empty((parts, width), dtype=torch.int32, device=device)
            args = (S, E, D, g.src_idx, g.dst_ptr, seg_ptr, seg_row, seg, part_ptr, part_val, part_arg, out, arg)
            _launch(K.spmm_arg(code, is_max), bound, width, device, *args)
            if parts:  # some row may have several segments
                _launch(K.combine_arg(is_max), g.num_dst, width, device, part_ptr, part_val, part_arg, out, arg)
        ctx.reduce = reduce
        _save(ctx, g, code, src, edge, dst, arg)
        ctx.mark_non_differentiable(arg)
        return out, arg

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out, _grad_arg):
        if ctx.reduce == "sum":
            grads = _backward(ctx, K.ROW, grad_out, None)
        elif ctx.reduce == "mean":
            grads = _backward(ctx, K.ROW, grad_out / _degree(ctx.g, grad_out.dtype).unsqueeze(-1), None)
        else:
            grads = _backward(ctx, K.ARG, grad_out, ctx.saved_tensors[3])
        return (None, None, None, None) + grads


class _GSDDMM(torch.autograd.Function):
    @staticmethod
    def forward(ctx, g: ChunkTensors, code: int, width: int, src, edge, dst):
        dtype, device = next(t for t in (src, edge, dst) if t is not None).dtype, g.device
        S, E, D = _operands(src, edge, dst, dtype, device)
        out = torch.zeros((g.nnz, width), dtype=dtype, device=device)
        if code == K.DOT_DST:
            d = src.shape[1]
            kernel = K.edge_reduce(code, K.EDGE, _np_dtype(dtype), *_block(d))
            none = torch.empty((0, 0), dtype=torch.int64, device=device)
            _launch(kernel, g.nnz, d, device, S, D, E, none, g.src_idx, g.dst_idx, out, tiled=False)
        else:
            _launch(K.sddmm(code), g.nnz, width, device, S, E, D, g.src_idx, g.dst_idx, out)
        _save(ctx, g, code, src, edge, dst)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        return (None, None, None) + _backward(ctx, K.EDGE, grad_out, None)



def _block_spmm(call: KernelCall, reduce: str, src_rows, into=None):
    """gSpMM without autograd (the front-end ensures none is needed): ``src`` rows ``src_rows[src_idx]``, a sum added into ``into``.

    The CSR product reads the block in place and adds into ``into`` itself;
    the numba kernels read compact rows, picked here.
    """
    if _product(call.code, reduce, call.src.dtype, call.g, call.g.num_dst, call.src.shape[0]):
        return _product_gather(call.g, call.code, reduce, call.src, call.edge, src_rows, into), None
    src = call.src if src_rows is None else call.src.index_select(0, src_rows.long())
    out, arg = _GSpMM.apply(call.g, call.code, reduce, call.width, src, call.edge, call.dst)
    if into is not None:
        return into.add_(out), None
    return out, arg


def scratch_bytes_per_edge(op: str, d_edge: int) -> int:
    """Device bytes per edge a call of ``op`` holds beyond its operands (the memory model charges them): the CSR product's arrays."""
    return CSR.scratch_bytes_per_edge(op, d_edge) if CSR_PRODUCT else 0


def reads_source_major(op: str, d_edge: int) -> bool:
    """Does the src gradient of ``op``'s sum read source-major arrays (``g.src_dst``, ``edge[src_perm]``)?

    The CSR product's: the transposed matrix is those arrays, so with them
    its backward makes nothing per edge.
    """
    return CSR_PRODUCT and CSR.takes(op, d_edge)


# src gradients that read edge weights source-major (``edge[src_perm]``, ``g.src_dst``): the CSR product's
SOURCE_MAJOR_CODES = CSR.CODES

# the public API: checks, operand selection and casting shared with the other fused backend
_FRONTEND = Frontend(_validate, _GSpMM, _GSDDMM, grads, _block_spmm, source_major_codes=SOURCE_MAJOR_CODES)
gspmm = _FRONTEND.gspmm
gsddmm = _FRONTEND.gsddmm
gspmm_sum_backward = _FRONTEND.gspmm_sum_backward


# ---------------------------------------------------------------- fused attention (see _cuda_attention)


def _attention_rows(t: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    """An int32 row map (``src_rows``) on ``device``; empty for none."""
    if t is None:
        return torch.empty(0, dtype=torch.int32, device=device)
    return t.to(device=device, dtype=torch.int32)


def attention_partials(g: ChunkTensors, src_term: torch.Tensor, dst_term: torch.Tensor, heads: int, negative_slope: float, src_rows: torch.Tensor | None = None):
    """``(m, l, a)`` of the sub-chunk on the chunk's device: the arguments of :func:`sagann.kernels.attention.attention_partials`."""
    _require_device()
    device = g.device
    width = src_term.shape[1] - heads
    m = torch.full((g.num_dst, heads), float("-inf"), device=device)
    l = torch.zeros(g.num_dst, heads, device=device)
    a = torch.zeros(g.num_dst, width, device=device)
    rmap = _attention_rows(src_rows, device)
    args = (src_term, dst_term, g.src_idx, g.dst_ptr, heads, np.float32(negative_slope), rmap, m, l, a)
    _launch(KA.partials, g.num_dst, width, device, *args)
    return m, l, a


def attention_backward(
    g: ChunkTensors, grad: torch.Tensor, corrections: torch.Tensor, m: torch.Tensor, l: torch.Tensor,
    src_term: torch.Tensor, dst_term: torch.Tensor, heads: int, *, negative_slope: float,
    src_out: torch.Tensor | None = None, src_rows: torch.Tensor | None = None,
):
    """``(d_src_term or None, d_dst_term)``: the arguments and results of :func:`sagann.kernels.attention.attention_backward`,
    the output rows given as their ``corrections`` (``grad . out`` per row and head, float64).

    Per-edge scratch is ``[nnz, heads]`` (weights and score gradients), never ``[nnz, heads * d]``.
    """
    _require_device()
    device = g.device
    width = grad.shape[1]
    corr = corrections.detach().to(device=device, dtype=torch.float64)
    p = torch.empty(g.nnz, heads, device=device)
    dpre = torch.empty(g.nnz, heads, device=device)
    args = (src_term, dst_term, grad, corr, m, l, g.src_idx, g.dst_idx, float(negative_slope), p, dpre)
    _launch(KA.edge_terms, g.nnz, heads, device, *args)
    # added in place where the kernel can write src_out itself (contiguous float32 on the chunk's device)
    direct = src_out is not None and src_out.is_contiguous() and src_out.dtype == torch.float32 and src_out.device == device
    if direct:
        d_src, rows = src_out, _attention_rows(src_rows, device)
    else:
        d_src, rows = torch.zeros(g.num_src, width + heads, device=device), _attention_rows(None, device)
    _launch(KA.grad_src, g.num_src, width + heads, device, grad, p, dpre, g.dst_idx, g.src_ptr, g.src_perm, rows, d_src)
    d_dst = torch.zeros(g.num_dst, heads, device=device)
    _launch(KA.grad_dst, g.num_dst, heads, device, dpre, src_term, dst_term, g.src_idx, g.dst_ptr, float(negative_slope), d_dst)
    if src_out is None:
        return d_src, d_dst
    if not direct:
        src_out.index_add_(0, src_rows.to(device=src_out.device, dtype=torch.long), d_src.to(device=src_out.device, dtype=src_out.dtype))
    return None, d_dst


def probe() -> None:
    """Compile and run one small fused Gather and check it against torch's ops; raise when it fails or disagrees.

    A GPU's backend is chosen once per process (``gpu_kernel_backend``): a
    toolchain that loads but cannot compile (a numba-cuda that does not
    know this numpy, a missing libnvvm) then falls back to ``reference``
    with its cause, instead of failing in the middle of an epoch.
    """
    device = "cpu" if SIMULATOR else "cuda"
    src, dst = np.array([0, 1, 2, 2, 0], np.int64), np.array([1, 2, 0, 1, 1], np.int64)
    g = ChunkTensors.from_coo(src, dst, 3, 3, device)[0]
    x = torch.arange(6, dtype=torch.float32, device=device).view(3, 2)
    got, _ = gspmm(g, "copy_src", "sum", src=x)
    want = torch.zeros(3, 2, device=device).index_add_(0, torch.from_numpy(dst).to(device), x[torch.from_numpy(src).to(device)])
    if not torch.equal(got, want):
        raise RuntimeError(f"the fused Gather computed {got.tolist()} where torch's ops give {want.tolist()}")
