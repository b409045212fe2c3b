"""What the fused backends (:mod:`~sagann.kernels.cpu`, :mod:`~sagann.kernels.cuda`) share.

The internal op codes (from the op table, :mod:`sagann.kernels.ops`) and
backward coefficient modes (the values the CPU kernels in ``_cpu_kernels``
also use), the argument bundles the front end hands the kernels, and the
input checks, so that every backend rejects the same calls with the same
messages.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from sagann.kernels.graph import ChunkTensors, kernel_index, rows_bound
from sagann.kernels.ops import OPS as _TABLE
from sagann.kernels.ops import op_spec
from sagann.kernels.reference import check_reducer

# Internal op codes, from the op table. *_SCALAR: one edge value broadcast over the features.
COPY_SRC, COPY_EDGE, MUL_EDGE, ADD_DST, SUB_DST, MUL_DST, DOT_DST, ADD_EDGE = (
    _TABLE[n].code for n in ("copy_src", "copy_edge", "src_mul_edge", "src_add_dst", "src_sub_dst", "src_mul_dst", "src_dot_dst", "src_add_edge")
)
MUL_SCALAR, ADD_SCALAR = _TABLE["src_mul_edge"].scalar_code, _TABLE["src_add_edge"].scalar_code
# codes whose edge gradient sums over the features (one value per edge)
SCALAR_CODES = frozenset(spec.scalar_code for spec in _TABLE.values() if spec.scalar_code is not None)
# Backward coefficient modes: grad[dst row], grad[dst row] for the max/min winner only, grad[edge].
ROW, ARG, EDGE = range(3)

OPS = {name: spec.code for name, spec in _TABLE.items()}  # op name -> its (full-width) kernel code
# Dtypes the kernels compute in natively; other floating dtypes go through float32.
NATIVE = (torch.float32, torch.float64)


@dataclass(frozen=True)
class Placement:
    """Where a backend wants its inputs, and the fix to suggest when they are elsewhere.

    ``tensor_fix`` may name ``{device}``, the chunk's device.
    """

    device_type: str
    chunk_fix: str
    tensor_fix: str


@dataclass(frozen=True, eq=False)
class KernelCall:
    """One forward kernel call: the chunk, the op code, the message width, the operands (None: unread)."""

    g: ChunkTensors
    code: int
    width: int
    src: torch.Tensor | None
    edge: torch.Tensor | None
    dst: torch.Tensor | None


@dataclass(frozen=True, eq=False)
class GradCall:
    """What the backward kernels read.

    ``mode`` is ROW / ARG / EDGE (what multiplies d msg / d input), ``grad``
    the output's gradient (``[num_dst, d]``, or ``[nnz, k]`` for EDGE),
    ``arg`` the max/min winners (ARG) or None, ``needs`` which of
    (src, edge, dst) get a gradient.
    """

    g: ChunkTensors
    code: int
    mode: int
    grad: torch.Tensor
    arg: torch.Tensor | None
    src: torch.Tensor | None
    edge: torch.Tensor | None
    dst: torch.Tensor | None
    needs: tuple[bool, bool, bool]


def source_major_codes() -> frozenset[int]:
    """Codes whose sum backward for ``src`` the CPU kernels run source-major (see ``MessageOp.source_major``)."""
    full = {spec.code for spec in _TABLE.values() if spec.source_major}
    return frozenset(full | {spec.scalar_code for spec in _TABLE.values() if spec.scalar_source_major})


def op_code(op: str, edge: torch.Tensor | None, width: int) -> int:
    """Internal op code; an op with one edge value per edge broadcast over ``width > 1`` features gets its scalar code."""
    spec = op_spec(op)
    if spec.scalar_code is not None and (edge.dim() == 1 or edge.shape[1] == 1) and width > 1:
        return spec.scalar_code
    return spec.code


def validate(where: str, placement: Placement, g: ChunkTensors, op: str, src, edge, dst) -> tuple[int, torch.dtype]:
    """Check the inputs of ``where`` (e.g. ``sagann.kernels.cpu.gspmm``); return the message width and dtype."""
    spec = op_spec(op)
    given = {"src": src, "edge": edge, "dst": dst}
    for name in spec.operands:
        if given[name] is None:
            raise ValueError(f"{where}: op {op!r} needs `{name}`; pass {name}=<tensor>")
    if g.device.type != placement.device_type:
        raise ValueError(f"{where}: the chunk is on {g.device}; {placement.chunk_fix}")
    rows = {"src": g.num_src, "edge": g.nnz, "dst": g.num_dst}
    dtypes = []
    for name in spec.operands:
        t = given[name]
        if t.device != g.device:
            raise ValueError(f"{where}: `{name}` is on {t.device}; {placement.tensor_fix.format(device=g.device)}")
        if not t.is_floating_point():
            raise TypeError(f"{where}: `{name}` has dtype {t.dtype}; pass a floating tensor")
        ok_dim = t.dim() in (1, 2) if name == "edge" else t.dim() == 2
        if not ok_dim or t.shape[0] != rows[name]:
            want = f"[{rows[name]}]" + (" or [nnz, k]" if name == "edge" else ", d]")
            raise ValueError(f"{where}: `{name}` has shape {tuple(t.shape)}; expected {want}")
        dtypes.append(t.dtype)
    dtype = dtypes[0]
    for other in dtypes[1:]:
        dtype = torch.promote_types(dtype, other)
    if spec.width == "edge":
        return (1 if edge.dim() == 1 else edge.shape[1]), dtype
    width = src.shape[1]
    if "dst" in spec.operands and dst.shape[1] != width:
        raise ValueError(f"{where}: `src` width {width} != `dst` width {dst.shape[1]}; give both the same width")
    if spec.broadcasts_edge and edge.dim() == 2 and edge.shape[1] not in (1, width):
        raise ValueError(
            f"{where}: `edge` width {edge.shape[1]} does not match `src` width {width}; use [nnz], [nnz, 1] or [nnz, d]"
        )
    return width, dtype


def keep_needed(op: str, src, edge, dst) -> tuple:
    """Keep only the operands ``op`` reads (the others get no gradient)."""
    needs = op_spec(op).operands
    return tuple(t if name in needs else None for name, t in (("src", src), ("edge", edge), ("dst", dst)))


def cast(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    return None if t is None else t.to(dtype)


class Frontend:
    """A fused backend's public ``gspmm`` / ``gsddmm``: checks, operand selection, casting, dispatch.

    Args:
        validate: the backend's ``(fn, g, op, src, edge, dst) -> (width, dtype)``.
        spmm, sddmm: its autograd Functions (``apply(g, code, reduce, width,
            src, edge, dst)`` and ``apply(g, code, width, src, edge, dst)``).
        grads: its backward kernels, ``(GradCall, src_out, src_rows[, source_major=]) -> (d_src, d_edge, d_dst)``.
        block_spmm: gSpMM without autograd reading a source block in place,
            ``(KernelCall, reduce, src_rows[, into]) -> (out, arg)``; None if the backend has none.
    """

    def __init__(self, validate, spmm, sddmm, grads, block_spmm=None, source_major_codes=frozenset()):
        self._validate, self._spmm, self._sddmm, self._grads = validate, spmm, sddmm, grads
        self._block_spmm = block_spmm
        # op codes whose src gradient the backend computes from source-major operands
        # (``grads(..., source_major=True)`` with ``g.src_dst``); others are put back in CSC order
        self._source_major_codes = source_major_codes

    def _source_block(self, g: ChunkTensors, op: str, src, edge, dst, src_rows):
        """``(src, rows)`` to run with: the block and its rows, or (no ``src_rows``, no block kernel, or under autograd) compact rows and None."""
        where = "gspmm"
        if src_rows is None or src is None or "src" not in op_spec(op).operands:
            return src, None
        if not isinstance(src_rows, torch.Tensor) or src_rows.dim() != 1 or src_rows.shape[0] != g.num_src or src_rows.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"{where}: src_rows must be an int32/int64 [num_src={g.num_src}] tensor, got {getattr(src_rows, 'dtype', type(src_rows).__name__)} {list(getattr(src_rows, 'shape', []))}")
        if not isinstance(src, torch.Tensor) or src.dim() != 2 or src_rows.device != src.device:
            raise ValueError(f"{where}: with src_rows, src must be a 2-D [rows, d] block on src_rows' device ({src_rows.device})")
        bound = rows_bound(src_rows)  # declared by the rows' maker: no device read (two syncs per call on a GPU)
        if g.num_src and (bound > src.shape[0] if bound is not None else (int(src_rows.min()) < 0 or int(src_rows.max()) >= src.shape[0])):
            raise ValueError(f"{where}: src_rows must lie in [0, {src.shape[0]}) (the rows of the src block)")
        grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (src, edge, dst))
        if grad or self._block_spmm is None or not op_spec(op).direct_spmm or src.dtype not in NATIVE:
            return src.index_select(0, src_rows.long()), None  # autograd sees the compaction
        return src, src_rows

    def _validate_sources(self, where: str, g: ChunkTensors, op: str, src, block_rows, edge, dst) -> tuple[int, torch.dtype]:
        """``_validate``, with a block checked as the compact ``[num_src, d]`` rows the kernel will read."""
        if block_rows is not None:
            src = src.as_strided((g.num_src, src.shape[1]), (0, src.stride(1)))
        return self._validate(where, g, op, src, edge, dst)

    def gspmm_sum_backward(
        self,
        g: ChunkTensors,
        op: str,
        grad: torch.Tensor,
        src: torch.Tensor | None = None,
        edge: torch.Tensor | None = None,
        dst: torch.Tensor | None = None,
        *,
        needs: tuple[str, ...] = ("src", "edge", "dst"),
        src_out: torch.Tensor | None = None,
        src_rows: torch.Tensor | None = None,
        edge_order: str = "csc",
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """Gradients of ``gspmm(g, op, "sum", ...)`` from the output's gradient, with no forward recompute.

        Sum is linear, so the backward kernels need only the operands and
        ``grad``. Returns ``(d_src, d_edge, d_dst)``, None for operands not
        in ``needs`` or not read by ``op``. With ``src_out`` (``[rows, d]``,
        the compute dtype) the src gradient is added in place into
        ``src_out[src_rows]`` (``src_rows``: ``[num_src]``, unique) inside
        the kernel and ``d_src`` is None: the engine's accumulator needs no
        scatter afterwards. ``src`` may be left out when only its own
        gradient is wanted (that gradient never reads it).

        ``edge_order="source_major"``: ``edge`` is given as ``edge[src_perm]``
        (the engine keeps edge weights that way for backward); with
        ``g.src_dst`` a backend that can then reads every per-edge array in
        sequence. The gradient of ``edge`` itself cannot be asked for then.
        """
        fn = "gspmm_sum_backward"
        spec = op_spec(op)
        if not spec.sum_backward:
            raise ValueError(f"{fn}: {op} has no direct backward; differentiate gspmm with autograd")
        if edge_order not in ("csc", "source_major"):
            raise ValueError(f"{fn}: edge_order must be 'csc' or 'source_major', got {edge_order!r}")
        source_major = edge_order == "source_major"
        if source_major and "edge" in needs and edge is not None and "edge" in spec.grad_operands:
            raise ValueError(f"{fn}: edge_order='source_major' gives no edge gradient; drop 'edge' from needs or pass edge in CSC order")
        proxy = None
        if src is None and "src" in spec.operands and isinstance(grad, torch.Tensor) and grad.dim() == 2 and not ({"edge", "dst"} & set(needs)):
            # only src's own gradient is wanted, which never reads src: check the call as if it were given
            proxy = grad.new_empty(1).as_strided((g.num_src, grad.shape[1]), (0, 0))
        width, dtype = self._validate(fn, g, op, src if proxy is None else proxy, edge, dst)
        src, edge, dst = keep_needed(op, src, edge, dst)
        if not isinstance(grad, torch.Tensor) or tuple(grad.shape) != (g.num_dst, width) or grad.device != g.device:
            raise ValueError(f"{fn}: grad must be a [num_dst={g.num_dst}, {width}] tensor on {g.device}, got {list(getattr(grad, 'shape', []))}")
        compute = dtype if dtype in NATIVE else torch.float32
        need = tuple(
            (t is not None or (name == "src" and proxy is not None)) and name in needs and name in spec.grad_operands
            for name, t in (("src", src), ("edge", edge), ("dst", dst))
        )
        if src_out is not None and need[0]:
            if src_out.dtype != compute or src_out.dim() != 2 or src_out.shape[1] != width or src_out.device != g.device or not src_out.is_contiguous():
                raise ValueError(f"{fn}: src_out must be a contiguous [rows, {width}] {compute} tensor on {g.device}, got {src_out.dtype} {list(src_out.shape)}")
            if src_rows is None or tuple(src_rows.shape) != (g.num_src,) or src_rows.dtype not in (torch.int32, torch.int64):
                raise ValueError(f"{fn}: src_rows must be an int32/int64 [num_src={g.num_src}] tensor when src_out is given")
        src, edge, dst, grad = (cast(t, compute) for t in (src, edge, dst, grad))
        code = op_code(op, edge, width)
        if source_major:
            # kernel_index: a src_dst kept in 16 bits is not widened by the test
            if kernel_index(g, "src_dst") is not None and code in self._source_major_codes and need == (need[0], False, False):
                d = self._grads(GradCall(g, code, ROW, grad, None, src, edge, dst, need), src_out if need[0] else None, src_rows, source_major=True)
                return tuple(None if t is None else t.to(dtype) for t in d)
            if edge is not None:
                edge = torch.empty_like(edge).index_copy_(0, g.src_perm.long(), edge)  # back to CSC order
        d = self._grads(GradCall(g, code, ROW, grad, None, src, edge, dst, need), src_out if need[0] else None, src_rows)
        return tuple(None if t is None else t.to(dtype) for t in d)

    def _gspmm_into(self, g: ChunkTensors, op: str, reduce: str, src, edge, dst, src_rows, out: torch.Tensor):
        """``gspmm(..., out=)``: the sum added into ``out`` by the kernel itself where it can."""
        where = "gspmm"
        if reduce != "sum":
            raise ValueError(f"{where}: out= accumulates sums only, got reduce={reduce!r}; drop out= and merge the result yourself")
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (src, edge, dst, out)):
            raise ValueError(f"{where}: out= does not record autograd; call it under torch.no_grad() or drop out=")
        if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != g.num_dst or not out.is_contiguous() or out.device != g.device:
            raise ValueError(f"{where}: out must be a contiguous [num_dst={g.num_dst}, d] tensor on {g.device}, got {list(getattr(out, 'shape', []))}")
        direct = self._block_spmm is not None and op_spec(op).direct_spmm
        if direct:
            src, block_rows = self._source_block(g, op, src, edge, dst, src_rows)
            width, dtype = self._validate_sources(where, g, op, src, block_rows, edge, dst)
            direct = dtype in NATIVE and out.dtype == dtype and out.shape[1] == width
        if not direct:  # no in-place kernel for this call: compute, then add
            result, _ = self.gspmm(g, op, reduce, src, edge, dst, src_rows=src_rows)
            if result.shape != out.shape:
                raise ValueError(f"{where}: out has shape {list(out.shape)}, the result {list(result.shape)}")
            return out.add_(result), None
        src, edge, dst = keep_needed(op, src, edge, dst)
        self._block_spmm(KernelCall(g, op_code(op, edge, width), width, src, edge, dst), reduce, block_rows, out)
        return out, None

    def gsddmm(self, g: ChunkTensors, op: str, src: torch.Tensor | None = None, edge: torch.Tensor | None = None, dst: torch.Tensor | None = None) -> torch.Tensor:
        """Per-edge ApplyEdge of a builtin op, in CSC order.

        Shapes:
            src ``[num_src, d]``, dst ``[num_dst, d]``, edge ``[nnz]``, ``[nnz, 1]``
            or ``[nnz, d]``; result ``[nnz, d]`` (``[nnz, 1]`` for src_dot_dst).
        """
        width, dtype = self._validate("gsddmm", g, op, src, edge, dst)
        src, edge, dst = keep_needed(op, src, edge, dst)
        compute = dtype if dtype in NATIVE else torch.float32
        src, edge, dst = (cast(t, compute) for t in (src, edge, dst))
        # validate's width is the src width, or the edge width for an op as wide as its edge rows
        out_width = op_spec(op).message_width(width, width)
        out = self._sddmm.apply(g, op_code(op, edge, width), out_width, src, edge, dst)
        return out.to(dtype)

    def gspmm(
        self,
        g: ChunkTensors,
        op: str,
        reduce: str,
        src: torch.Tensor | None = None,
        edge: torch.Tensor | None = None,
        dst: torch.Tensor | None = None,
        *,
        src_rows: torch.Tensor | None = None,
        out: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Fused Gather(ApplyEdge(Scatter)) over one sub-chunk, no ``[nnz, d]`` messages.

        Returns ``(out [num_dst, d], arg)``: ``arg`` (int64 ``[num_dst, d]``) is
        the CSC position of each max/min winner (-1 for rows without edges,
        whose output is 0), None for sum/mean.

        ``src_rows`` (``[num_src]``): ``src`` is a larger block (a whole
        vertex interval) and the chunk's source ``s`` is its row
        ``src_rows[s]``. Without gradients the kernel reads the block in
        place (no compacted copy); under autograd the rows are picked first.

        ``out`` (sum only, no autograd): a contiguous ``[num_dst, d]`` tensor
        of the compute dtype that the sum is *added* into (an accumulator
        over sub-chunks); it is returned as the result.
        """
        check_reducer(reduce)
        if out is not None:
            return self._gspmm_into(g, op, reduce, src, edge, dst, src_rows, out)
        src, block_rows = self._source_block(g, op, src, edge, dst, src_rows)
        if not op_spec(op).direct_spmm:  # per-edge messages first, then a plain gather of them
            return self.gspmm(g, "copy_edge", reduce, edge=self.gsddmm(g, op, src=src, edge=edge, dst=dst))
        width, dtype = self._validate_sources("gspmm", g, op, src, block_rows, edge, dst)
        src, edge, dst = keep_needed(op, src, edge, dst)
        if reduce in ("max", "min") and g.nnz == 0:  # as the reference: constant zeros, no graph
            return (
                torch.zeros(g.num_dst, width, dtype=dtype, device=g.device),
                torch.full((g.num_dst, width), -1, dtype=torch.long, device=g.device),
            )
        compute = dtype if dtype in NATIVE else torch.float32
        src, edge, dst = (cast(t, compute) for t in (src, edge, dst))
        if block_rows is not None:
            out, arg = self._block_spmm(KernelCall(g, op_code(op, edge, width), width, src, edge, dst), reduce, block_rows)
        else:
            out, arg = self._spmm.apply(g, op_code(op, edge, width), reduce, width, src, edge, dst)
        return out.to(dtype), (arg if reduce in ("max", "min") else None)
