"""The gather-sum at the heart of the CPU kernels, written in LLVM IR.

``out[o] += sum of w[q] * x[rmap[idx[q]]]`` over a row's edges, for a block
of rows: the forward of copy_src / scalar-weighted sums (one destination
row) and their source-major backward (one source row).

Why IR and not a numba loop: numba cannot tell LLVM that ``out`` and ``x``
do not overlap, so a numba loop loads and stores ``out[o]`` for every edge
(or every few), and its vector loop re-checks the width and the overlap on
every edge. Here a row's sum stays in vector registers (up to 128 float32
columns at a time) and is added to ``out[o]`` once; the width's tail is one
masked vector, decided once per block. On the R-MAT bench graph (rows of 3
edges at the median) that per-edge and per-row work was most of the time.

Vectors are 64 bytes (16 float32, 8 float64); LLVM splits them where the
machine's are narrower. Sums run edge by edge in CSC (or ``perm``) order.

numba's on-disk cache keys the kernels that call these on
``_cpu_kernels.py`` alone: after editing this file, touch that one (or
clear its ``__pycache__``), or the cached kernels keep the old code.
"""
from __future__ import annotations

from llvmlite import binding, ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

VECTOR_BYTES = 64
TILE_VECTORS = 8  # vectors of one row's sum held in registers at once
_FLOAT_NAMES = {types.float32: "f32", types.float64: "f64"}
_OPAQUE_POINTERS = binding.llvm_version_info[0] >= 15  # the masked load/store intrinsics' names follow the pointer type


def _i32(value: int) -> ir.Constant:
    return ir.Constant(ir.IntType(32), value)


def _splat(builder, value, vector_type):
    first = builder.insert_element(ir.Constant(vector_type, ir.Undefined), value, _i32(0))
    return builder.shuffle_vector(first, first, ir.Constant(ir.VectorType(ir.IntType(32), vector_type.count), [_i32(0)] * vector_type.count))


class _Emitter:
    """Builds one block's loops; ``permuted``, ``mapped``, ``weighted`` are fixed per intrinsic."""

    def __init__(self, context, builder, sig, args, permuted: bool, mapped: bool, weighted: bool):
        self.context, self.builder = context, builder
        self.permuted, self.mapped, self.weighted = permuted, mapped, weighted
        names = ("out", "x", "idx", "perm", "w", "ptr", "r0", "r1", "rmap", "out_rows")
        self.types = dict(zip(names, sig.args))
        self.values = dict(zip(names, args))
        self.arrays = {k: context.make_array(t)(context, builder, self.values[k]) for k, t in self.types.items() if isinstance(t, types.Array)}
        self.intp = context.get_value_type(types.intp)
        dtype = self.types["out"].dtype
        self.float = context.get_value_type(dtype)
        self.itemsize = context.get_abi_sizeof(self.float)
        self.lanes = VECTOR_BYTES // self.itemsize
        self.vector = ir.VectorType(self.float, self.lanes)
        mask_type = ir.VectorType(ir.IntType(1), self.lanes)
        vptr = self.vector.as_pointer()
        vector_name = f"v{self.lanes}{_FLOAT_NAMES[dtype]}"
        suffix = f"{vector_name}.p0" if _OPAQUE_POINTERS else f"{vector_name}.p0{vector_name}"
        self.masked_load = cgutils.get_or_insert_function(builder.module, ir.FunctionType(self.vector, [vptr, ir.IntType(32), mask_type, self.vector]), f"llvm.masked.load.{suffix}")
        self.masked_store = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [self.vector, vptr, ir.IntType(32), mask_type]), f"llvm.masked.store.{suffix}")
        self.zero = ir.Constant(self.vector, [ir.Constant(self.float, 0.0)] * self.lanes)
        self.accumulators = [cgutils.alloca_once(builder, self.vector) for _ in range(TILE_VECTORS)]  # registers after SROA
        self.tile_columns = self.const(self.lanes * TILE_VECTORS)
        self.x_width = cgutils.unpack_tuple(builder, self.arrays["x"].shape, 2)[1]
        self.w_width = cgutils.unpack_tuple(builder, self.arrays["w"].shape, 2)[1]

    def const(self, value: int) -> ir.Constant:
        return ir.Constant(self.intp, value)

    def scalar(self, name: str):
        return self.context.cast(self.builder, self.values[name], self.types[name], types.intp)

    def load_index(self, name: str, position):
        b = self.builder
        value = b.load(b.gep(self.arrays[name].data, [position]))
        return self.context.cast(b, value, self.types[name].dtype, types.intp)

    def vector_at(self, base, column):
        return self.builder.bitcast(self.builder.gep(base, [column]), self.vector.as_pointer())

    def load(self, pointer, mask):
        if mask is None:
            return self.builder.load(pointer, align=self.itemsize)
        return self.builder.call(self.masked_load, [pointer, _i32(self.itemsize), mask, self.zero])

    def store(self, value, pointer, mask):
        if mask is None:
            self.builder.store(value, pointer, align=self.itemsize)
        else:
            self.builder.call(self.masked_store, [value, pointer, _i32(self.itemsize), mask])

    def emit(self):
        b = self.builder
        width = cgutils.unpack_tuple(b, self.arrays["out"].shape, 2)[1]
        tile = self.tile_columns
        full_tiles = b.udiv(width, tile)
        rest = b.sub(width, b.mul(full_tiles, tile))  # columns after the full tiles, < one tile
        last_vectors = b.udiv(b.add(rest, self.const(self.lanes - 1)), self.const(self.lanes))
        in_last = b.sub(rest, b.mul(b.sub(last_vectors, self.const(1)), self.const(self.lanes)))  # 1..lanes where last_vectors > 0
        lane_ids = ir.Constant(ir.VectorType(self.intp, self.lanes), [self.const(i) for i in range(self.lanes)])
        tail_mask = b.icmp_signed("<", lane_ids, _splat(b, in_last, ir.VectorType(self.intp, self.lanes)))
        tail_start = b.mul(full_tiles, tile)
        switch_end = b.append_basic_block("gather.end")
        switch = b.switch(last_vectors, switch_end)
        for vectors in range(TILE_VECTORS + 1):  # one copy of the row loop per length of the partial tile
            case = b.append_basic_block(f"gather.tail{vectors}")
            switch.add_case(self.const(vectors), case)
            b.position_at_end(case)
            self.rows(width, full_tiles, tail_start, vectors, tail_mask)
            b.branch(switch_end)
        b.position_at_end(switch_end)

    def rows(self, width, full_tiles, tail_start, tail_vectors, tail_mask):
        b = self.builder
        r0, r1 = self.scalar("r0"), self.scalar("r1")
        has_rows = b.icmp_signed(">", cgutils.unpack_tuple(b, self.arrays["out_rows"].shape, 1)[0], self.const(0))
        with cgutils.for_range(b, b.sub(r1, r0)) as loop:
            r = b.add(r0, loop.index)
            lo, hi = self.load_index("ptr", r), self.load_index("ptr", b.add(r, self.const(1)))
            with b.if_then(b.icmp_signed("<", lo, hi), likely=True):
                o = cgutils.alloca_once_value(b, r)
                with b.if_then(has_rows):  # a branch, not a select: an empty out_rows must not be read
                    b.store(self.load_index("out_rows", r), o)
                o = b.load(o)
                out_row = b.gep(self.arrays["out"].data, [b.mul(o, width)])
                with cgutils.for_range(b, full_tiles) as tiles:
                    self.tile(out_row, b.mul(tiles.index, self.tile_columns), lo, hi, TILE_VECTORS, None)
                if tail_vectors:
                    self.tile(out_row, tail_start, lo, hi, tail_vectors, tail_mask)

    def tile(self, out_row, column, lo, hi, vectors, last_mask):
        """``out_row[column : column + vectors*lanes] += the row's sum`` (the last vector masked if ``last_mask``)."""
        b = self.builder
        masks = [None] * (vectors - 1) + [last_mask]
        for v in range(vectors):
            b.store(self.zero, self.accumulators[v])
        with cgutils.for_range(b, b.sub(hi, lo)) as edges:
            p = b.add(lo, edges.index)
            q = self.load_index("perm", p) if self.permuted else p
            source = self.load_index("idx", q)
            if self.mapped:
                source = self.load_index("rmap", source)
            row = b.gep(self.arrays["x"].data, [b.add(b.mul(source, self.x_width), column)])
            if self.weighted:
                weight = _splat(b, b.load(b.gep(self.arrays["w"].data, [b.mul(q, self.w_width)])), self.vector)
            for v in range(vectors):
                value = self.load(self.vector_at(row, self.const(v * self.lanes)), masks[v])
                if self.weighted:
                    value = b.fmul(value, weight)
                b.store(b.fadd(b.load(self.accumulators[v]), value), self.accumulators[v])
        for v in range(vectors):
            pointer = self.vector_at(out_row, b.add(column, self.const(v * self.lanes)))
            self.store(b.fadd(self.load(pointer, masks[v]), b.load(self.accumulators[v])), pointer, masks[v])


def _named(name: str):
    """Give an intrinsic's typing function the name numba's typing errors show."""

    def rename(fn):
        fn.__name__ = fn.__qualname__ = name
        return fn

    return rename


def _gather(name: str, permuted: bool, mapped: bool, weighted: bool):
    @intrinsic
    @_named(name)
    def gather(typingctx, out, x, idx, perm, w, ptr, r0, r1, rmap, out_rows):
        floats = (out.dtype, x.dtype, w.dtype)
        if out.dtype not in _FLOAT_NAMES or any(f != out.dtype for f in floats) or out.ndim != 2 or x.ndim != 2 or w.ndim != 2:
            return None
        if out.layout != "C" or x.layout != "C" or w.layout != "C":  # rows at a stride of the width
            return None

        def codegen(context, builder, sig, args):
            _Emitter(context, builder, sig, args, permuted, mapped, weighted).emit()
            return context.get_dummy_value()

        return types.void(out, x, idx, perm, w, ptr, r0, r1, rmap, out_rows), codegen

    return gather


# The combinations the kernels use: forward sums (rows mapped into a block or not, weighted
# or not) and the source-major backward (edges permuted or in order, weighted or not).
sum_rows = _gather("sum_rows", permuted=False, mapped=False, weighted=False)
sum_mapped_rows = _gather("sum_mapped_rows", permuted=False, mapped=True, weighted=False)
sum_weighted_rows = _gather("sum_weighted_rows", permuted=False, mapped=False, weighted=True)
sum_weighted_mapped_rows = _gather("sum_weighted_mapped_rows", permuted=False, mapped=True, weighted=True)
sum_permuted_rows = _gather("sum_permuted_rows", permuted=True, mapped=False, weighted=False)
sum_weighted_permuted_rows = _gather("sum_weighted_permuted_rows", permuted=True, mapped=False, weighted=True)
