"""A layer call's shape: what the probe learned it reads, writes and holds, the memory and time models' input."""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

from sagann.fn import AttentionFn, MessageFn

__all__ = ["LayerShape"]


@dataclass(frozen=True)
class LayerShape:
    """What a layer call reads and writes, learned by a probe on one fake edge.

    Widths are feature columns; the ``uses_*`` flags say which inputs the
    edge stage must bring to the device.
    """

    d_in: int
    d_edge: int  # 0 without edge data
    d_src_term: int  # 0 without apply_src
    d_dst_term: int  # 0 without apply_dst
    d_msg: int
    d_out: int
    gather: str
    builtin: MessageFn | None
    uses_src: bool  # raw input rows at sources
    uses_dst: bool  # raw input rows at destinations
    uses_src_term: bool
    uses_dst_term: bool
    uses_edge: bool
    d_score: int = 0  # attention heads of a softmax gather (scores per edge)
    # bytes per edge the kernel backend holds beyond a builtin op's operands (KernelBackend.scratch_bytes_per_edge):
    # the cuda backend's sparse CSR product keeps unit weights and column ids; filled in per call (run_layer)
    kernel_scratch: int = 0
    # bytes per edge a direct sum backward holds on the backend (KernelBackend.sum_backward_bytes_per_edge): the index
    # arrays its kernels read, the edge data and their gradient; 0 where unknown (every index array is counted)
    sum_backward_edge: int = 0
    # a forward's index arrays also held in 16 bits beside their widened copies until compute (a GPU with
    # ScheduleConfig.narrows_index, Device.holds_narrow_index_copies): 2 more bytes an edge. True (the most
    # memory) until run_layer knows the device and the schedule
    narrow_index_copies: bool = True
    # a forward's fused kernels read source ids in 16 bits, unwidened (the CPU backend with narrowed index arrays):
    # 2 bytes an edge where the chunk's ids fit (EdgeChunk.fits_16_bits)
    narrow_src_ids: bool = False
    # and a source-major sum backward reads each edge's destination row (src_dst) so: sum_backward_edge counts 2
    # bytes for it, and a chunk whose rows do not fit in 16 bits 2 more
    narrow_dst_ids: bool = False
    # False for a sum's source gradient, which reads no source rows (its accumulator over V_i is still held)
    sends_src: bool = True
    attention: AttentionFn | None = None  # a builtin attention ApplyEdge (fused softmax kernels)
    # a fused attention's backward reads each destination row's corrections (heads doubles: kernels.attention.
    # output_corrections) in place of its output rows (heads * d floats)
    softmax_corrections: bool = False
    # a fused attention's forward merges each sub-chunk into its column's running sums in place, touching only the
    # rows it reaches (the CPU kernel): no partial rows, no merge temporaries. False (the most memory) until run_layer
    merges_in_place: bool = False
    # backward runs a sparse sub-chunk over its rows with edges (memory_model.backward_chunk): on devices that copy
    # what they load; where loads are views of host memory a gather would only cost. False (the most memory) until run_layer
    compact_dst_rows: bool = False
    # what backward will compute, known when the call is planned (autograd mode, requires_grad):
    # the probe leaves all True (the most memory); run_layer fills them in per call
    backward: bool = True  # any backward at all
    grad_x: bool = True  # the input rows need a gradient
    grad_edge: bool = True  # the edge data need a gradient
    # backward recomputes ApplyVertex and the hooks instead of using their kept forward graphs
    # (sagann.engine.offload): the recomputed output and its graph's copy are extra rows
    recomputes: bool = False
    vertex_reads_x: bool = True  # apply_vertex reads its input rows v (Layer.apply_vertex_reads_v)
    # bytes per row that ApplyVertex's / the hooks' autograd graphs save beyond their inputs and parameters
    # (an MLP's activations), measured by the probe: backward holds them on the device. Every save counts
    # (a kept graph copies each); the distinct storages (None: unknown, as every save) are what a recompute holds
    vertex_saved: int = 0
    hook_saved: int = 0
    vertex_saved_distinct: int | None = None
    hook_saved_distinct: int | None = None
    # bytes per edge a user ApplyEdge holds at once, measured by the probe: in forward (its messages
    # included), and recomputed under autograd with its gradients (what it saves, per-edge input gradients)
    edge_temp: int = 0
    edge_grad_temp: int = 0
    # bytes per row ApplyVertex / a hook holds at once in forward beyond its inputs and output, measured
    # by the probe under autograd (as a kept graph runs it): an activation, a dropout mask, a hidden layer
    vertex_temp: int = 0
    hook_temp: int = 0

    def __hash__(self) -> int:
        """The fields' hash, computed once: the planner's memo keys hash a shape per planned sub-chunk, every pass."""
        h = self.__dict__.get("_hash")
        if h is None:
            h = hash(tuple(getattr(self, f.name) for f in fields(self) if (f.compare if f.hash is None else f.hash)))
            object.__setattr__(self, "_hash", h)
        return h

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_hash"}  # string hashes differ between processes

    @property
    def loads_x_j(self) -> bool:
        """Does a destination interval's pass need its input rows on the device?"""
        return self.vertex_reads_x or self.uses_dst

    @property
    def holds_x_j(self) -> bool:
        """Does a destination column hold its input rows through its edge stage? Only where the edge stage reads
        them; rows only ApplyVertex reads are loaded at the column's close, a block at a time."""
        return self.uses_dst

    def saved_row_bytes(self, hook: bool, recompute: bool) -> int:
        """Bytes per row of ApplyVertex's (``hook``: the hooks') saved tensors in backward: every save where a kept
        graph loads its copies, each storage once where ``recompute`` rebuilds the graph (autograd shares them)."""
        every, distinct = (self.hook_saved, self.hook_saved_distinct) if hook else (self.vertex_saved, self.vertex_saved_distinct)
        return distinct if recompute and distinct is not None else every

    def with_grads(self, backward: bool, grad_x: bool, grad_edge: bool) -> "LayerShape":
        return replace(self, backward=backward, grad_x=grad_x and backward, grad_edge=grad_edge and backward)

    def edge_grads(self, grad_x: bool, grad_edge: bool) -> bool:
        """Does a gradient flow through the edge stage (and so through ``acc``)?

        Not for a builtin message without hooks whose inputs need no gradient
        (e.g. a first layer on raw features that aggregates before its
        matmul): backward is then ApplyVertex's alone, no pass over the edges.
        """
        if self.builtin is None or self.d_src_term or self.d_dst_term:  # a user apply_edge or hook may hold parameters
            return True
        return (grad_x and (self.uses_src or self.uses_dst)) or (grad_edge and self.uses_edge)

    @property
    def backward_edges(self) -> bool:
        """Does backward make a pass over the edges?"""
        return self.backward and self.edge_grads(self.grad_x, self.grad_edge)

    @property
    def softmax(self) -> bool:
        return self.gather == "softmax"

    @property
    def d_src_side(self) -> int:
        """Columns of source-side rows an edge stage transfers."""
        return self.d_in * self.uses_src + self.d_src_term * self.uses_src_term if self.sends_src else 0

    @property
    def d_dst_side(self) -> int:
        return self.d_in * self.uses_dst + self.d_dst_term * self.uses_dst_term

    @property
    def winners(self) -> bool:
        return self.gather in ("max", "min")
