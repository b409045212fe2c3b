"""The memory model: what a layer call costs in device bytes under a partition.

A plan must fit the device budget before anything runs (the search over
partitions and plans is ``sagann.scheduler.planner``). The working-set
model below counts every buffer the SAGA passes (``sagann.engine.forward`` and ``backward``)
allocates on the device, phase by phase, and takes the largest phase:

* forward, per destination interval V_j (n_j rows): through the edge
  stage, the input rows and destination terms of V_j and the accumulator
  (plus int64 winner ids for max/min), and one sub-chunk in flight: its
  index arrays, its compact source rows, its edge rows, the per-chunk
  partial result, and per-edge scratch; then ApplyVertex's output rows and
  scratch, for a block of V_j's rows under a budget
  (:func:`vertex_block_rows`: ApplyVertex is per vertex);
* backward, per destination interval, or a block of its rows (ApplyVertex
  recomputed under autograd: inputs, their gradients, the output gradient) and per source interval V_i
  (gradient accumulators of V_i, plus one sub-chunk recomputed with its
  gradients, roughly twice the forward per-edge bytes); only what the call's
  backward computes (``LayerShape.backward``, ``grad_x``, ``grad_edge``): a
  first layer on raw features has no input gradient and maybe no pass over
  the edges, an inference call no backward at all;
* the source/destination hook pre-pass, per interval, in blocks of rows as
  ApplyVertex (:func:`hook_block_rows`);
* parameters and their gradients, always resident.

Temporaries inside user functions cannot be seen from outside, so they are
modelled by :func:`edge_scratch_bytes` (per-edge inputs gathered for a user
``apply_edge``, the messages and ``EDGE_SCRATCH`` message-sized temporaries;
the reference max/min gather's index tensors) and :func:`vertex_scratch_bytes`
(``VERTEX_SCRATCH`` row-sized temporaries of ApplyVertex and the hooks, or
what the probe measured them to hold per row, whichever is more). The
passes charge the ledger with these same functions and with the exact
size of every tensor it creates, so the planner predicts the ledger's peak
(held to it by a test) and a mis-estimate surfaces as a clear
BudgetExceeded, never as a silent overrun.
"""
from __future__ import annotations

import heapq
import weakref
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np

from sagann.fn import SUM_GATHERS
from sagann.chunks.partition import GraphPartition
from sagann.chunks.sketch import SubChunkSizes, is_sketch
from sagann.scheduler.layer_shape import LayerShape

FLOAT = 4  # bytes per fp32 element
INDEX = 8  # bytes per int64 winner id
INT32 = 4  # bytes per entry of a sub-chunk index array
EDGE_SCRATCH = 2  # message-sized per-edge temporaries of a user apply_edge, beyond the messages
VERTEX_SCRATCH = 1  # row-sized temporaries of ApplyVertex / hooks, beyond their outputs
DOUBLE = 8  # bytes per fp64 element
BLOCK_HEADROOM = 2  # ApplyVertex blocks are sized for this many times the per-row bytes modelled
COMPACT_FRACTION = 2  # a backward sub-chunk runs over its rows with edges alone where at most 1/this of its rows have one
MAX_BLOCKS = 8  # blocks an interval may run in; more: a larger P instead
MERGE_TEMPS = 3  # row-sized temporaries alive at once in a softmax merge (forward) or correction (fused backward)


@dataclass(frozen=True)
class WorkingSet:
    """Peak device bytes of one layer call under a partition, and which phase sets it."""

    peak_bytes: int
    phase: str


def edge_scratch_bytes(nnz: int, shape: LayerShape, fused: bool) -> int:
    """Temporaries of one sub-chunk's edge stage that the passes cannot see (forward)."""
    if fused:  # fused attention keeps one score gradient per edge and head in backward; a builtin op its record's scratch
        columns = shape.d_score if shape.attention is not None else (shape.builtin.spec.scratch if shape.builtin is not None else 0)
        return nnz * (FLOAT * columns + shape.kernel_scratch)
    gathered = FLOAT * (shape.d_src_side + shape.d_dst_side)  # e.src, e.dst, e.src_term, e.dst_term rows
    # the messages and their temporaries: a model's guess, or what the probe measured where that is more;
    # a backward sub-chunk is charged this twice (recompute, then gradients)
    messages = max(FLOAT * shape.d_msg * (1 + EDGE_SCRATCH), shape.edge_temp, -(-shape.edge_grad_temp // 2))
    winners = shape.d_msg * (INDEX + INDEX + 1 + FLOAT) if shape.winners else 0  # reference max/min
    attention = FLOAT * (3 * shape.d_score + shape.d_msg) if shape.softmax else 0  # scores, weights, weighted messages
    return nnz * (gathered + messages + winners + attention)


def direct_sum_backward(shape: LayerShape, fused: bool) -> bool:
    """Does the layer's backward run the fused sum's backward kernels alone, with no recompute and no autograd?

    Sum is linear: those kernels need the operands and the output gradient
    only. A mean runs as a sum scaled by the whole in-degree, so its
    backward is direct too.
    """
    return fused and shape.builtin is not None and shape.gather in SUM_GATHERS and not shape.softmax and shape.builtin.spec.sum_backward


def backward_scratch_times(shape: LayerShape, fused: bool) -> int:
    """How many times a backward sub-chunk holds its edge scratch: twice (the recompute, then the gradients), once
    where the backward is direct (:func:`direct_sum_backward`)."""
    return 1 if direct_sum_backward(shape, fused) else 2


def merge_scratch_bytes(rows: int, shape: LayerShape, fused: bool, backward: bool) -> int:
    """Row-sized temporaries of a softmax sub-chunk over ``rows`` destination rows (0 for other reducers).

    Forward: the online merge rescales the running sums (the old rows, the
    rescaled old rows, the weighted new ones: three at once); none where
    the kernel merges in place (``LayerShape.merges_in_place``). A fused
    backward: the per-row correction grad . out is summed in float64 (both
    operands and their product), or, given (``softmax_corrections``), copied.
    """
    if not shape.softmax:
        return 0
    if not backward:
        return 0 if fused and shape.attention is not None and shape.merges_in_place else rows * FLOAT * MERGE_TEMPS * shape.d_msg
    if not (fused and shape.attention is not None):
        return 0
    # given each row's corrections (made once a pass), the kernels copy them: heads doubles a row
    return rows * DOUBLE * (shape.d_score if shape.softmax_corrections else MERGE_TEMPS * shape.d_msg)


def vertex_scratch_bytes(rows: int, width: int, measured: int = 0) -> int:
    """Temporaries of ApplyVertex or a hook over ``rows`` rows producing ``width`` columns.

    ``measured``: the bytes per row the probe saw the function hold beyond
    its inputs and output (``LayerShape.vertex_temp`` / ``hook_temp``); the
    model's ``VERTEX_SCRATCH`` output-sized rows where that is more.
    """
    return rows * max(FLOAT * VERTEX_SCRATCH * width, int(measured))


def _row_bytes(shape: LayerShape) -> dict[str, int]:
    """Device bytes per vertex row of each phase's resident state, scratch included."""
    win = INDEX * shape.d_msg if shape.winners else 0
    win += FLOAT * 2 * shape.d_score  # softmax: running max and sum per head
    hook = max(shape.d_src_term, shape.d_dst_term)
    gx, gacc = int(shape.grad_x), int(shape.backward_edges)
    out = 1 + 2 * shape.recomputes  # output grad (+ recomputed output, x2)
    xv = int(shape.vertex_reads_x)
    return {
        # x_j, dst terms, accumulator (+ winners / softmax state), output rows, ApplyVertex scratch
        "forward": FLOAT * (shape.d_in * shape.loads_x_j + shape.d_dst_term + shape.d_msg + shape.d_out) + win + vertex_scratch_bytes(1, shape.d_out, shape.vertex_temp),
        # source gradient accumulators of V_i
        "backward": FLOAT * (shape.d_in * shape.uses_src + shape.d_src_term * shape.uses_src_term) if shape.backward_edges else 0,
        # x_j and acc (or what a kept graph saved of them), output grad (+ recomputed output, x2),
        # grads of acc and x_j where they are needed, scratch (a kept graph's unpacked temporaries),
        # what the graph saved and autograd's gradients of it (the hidden activations' gradients)
        "backward apply_vertex": FLOAT * ((1 + gx) * xv * shape.d_in + (1 + gacc) * shape.d_msg + out * shape.d_out) + FLOAT * VERTEX_SCRATCH * shape.d_out + 2 * shape.saved_row_bytes(False, shape.recomputes)
        if shape.backward
        else 0,
        # x rows, hook output (forward) or its grad (+ recomputed output, x2), grad of x where needed, scratch,
        # what the hooks' graphs saved and its gradients (backward)
        "hook pre-pass": FLOAT * ((1 + gx) * shape.d_in + out * hook) + vertex_scratch_bytes(1, hook, shape.hook_temp) + 2 * shape.saved_row_bytes(True, shape.recomputes) * shape.backward if hook else 0,
    }


def resident_bytes(rows: int, shape: LayerShape, phase: str) -> int:
    """Bytes a destination column (forward) or source row (backward) keeps on the device."""
    return rows * _row_bytes(shape)[phase]


def _apply_row_bytes(shape: LayerShape) -> int:
    """Forward bytes per row that exist only while ApplyVertex runs: its output rows and scratch, and its input rows
    where the edge stage does not read them (``LayerShape.holds_x_j``): the column loads those at its close."""
    late_x = FLOAT * shape.d_in * (shape.loads_x_j and not shape.holds_x_j)
    return FLOAT * shape.d_out + vertex_scratch_bytes(1, shape.d_out, shape.vertex_temp) + late_x


def _held_row_bytes(shape: LayerShape) -> int:
    """Forward bytes per row a destination column holds through its edge stage (input rows, terms, accumulator)."""
    return _row_bytes(shape)["forward"] - _apply_row_bytes(shape)


def vertex_block_rows(rows: int, shape: LayerShape, param_bytes: int, budget: int | None, window: int = 0, edgeless: bool = False) -> int:
    """Rows per ApplyVertex block of an interval of ``rows`` rows: all of them where they fit, else as many as fit
    twice over, as long as at most ``MAX_BLOCKS`` blocks cover the interval (else all of them: it does not fit).

    ApplyVertex is per vertex, so an interval's rows may run in blocks.
    Forward, the column's edge-stage state (accumulator, input rows, terms)
    stays whole and only the output rows and scratch are per block;
    backward (recompute and gradients), everything is per block. Without
    blocks the vertex phases, which hold several row-sized tensors at once,
    set P for most layers; with them the edge stages do. One size serves
    forward and backward, so that a random ApplyVertex (dropout) recomputes
    the blocks the forward drew. ``window``: what the edge stage may still
    hold while the forward's ApplyVertex runs (the last step's loads, the
    next group's prefetched sub-chunks). ``edgeless``: a pass with no edges,
    whose blocks each load their own rows (no column is held whole).
    """
    rows = max(0, int(rows))
    if budget is None or rows == 0:
        return rows
    room = budget - 2 * param_bytes

    def fit(headroom: int, shape: LayerShape) -> int:
        held = _held_row_bytes(shape)
        fits = [(room - window - rows * held * (not edgeless)) // max(1, headroom * (_apply_row_bytes(shape) + held * edgeless))]
        if shape.backward:
            fits.append(room // max(1, headroom * _row_bytes(shape)["backward apply_vertex"]))
        return min(fits)

    if fit(1, shape) >= rows:
        return rows
    # in blocks, each sized for twice the temporaries modelled: a block fills what room is left, so a
    # function holding more per row than the probe saw would overrun the budget, not a margin;
    # backward recomputes blocks (no graph is kept), so their saved tensors are held as autograd shares them
    return _blocks_or_whole(rows, fit(BLOCK_HEADROOM, replace(shape, recomputes=True)))


def cache_block_rows(shape: LayerShape, hook: bool, block_bytes: int | None) -> int | None:
    """Rows of an ApplyVertex (``hook``: a hook) block whose modelled bytes fit ``block_bytes`` (None: no such bound).

    Blocks recompute, so they are counted as :func:`vertex_block_rows` sizes
    them; fewer rows than the budget allows only save memory, so a plan
    stays within what it counted.
    """
    if block_bytes is None:
        return None
    s = replace(shape, recomputes=True)
    per_row = _row_bytes(s)["hook pre-pass"] if hook else max(_row_bytes(s)["backward apply_vertex"], _held_row_bytes(s) + _apply_row_bytes(s))
    return max(1, block_bytes // max(1, per_row))


def _blocks_or_whole(rows: int, block: int) -> int:
    """``block`` rows where at most ``MAX_BLOCKS`` cover the interval, else the whole interval (which then does not fit:
    the planner takes a larger P). Each block costs a call and its bookkeeping (~0.1 ms): 41 blocks of 95 rows an
    interval made a Reddit-shaped GraphSAGE epoch 0.089 s, against 0.071 s with at most 8."""
    block = int(max(1, min(rows, block)))
    return block if block * MAX_BLOCKS >= rows else rows


def hook_block_rows(rows: int, shape: LayerShape, param_bytes: int, budget: int | None) -> int:
    """Rows per block of the hook pre-pass (``apply_src``/``apply_dst``) over an interval of ``rows`` rows: all where they fit.

    The hooks are per vertex, as ApplyVertex (:func:`vertex_block_rows`):
    blocks sized for ``BLOCK_HEADROOM`` times the modelled bytes per row,
    at most ``MAX_BLOCKS`` an interval, so the hooks set P only where
    more blocks would be needed.
    """
    rows = max(0, int(rows))
    per_row = _row_bytes(shape)["hook pre-pass"]
    if budget is None or rows == 0 or per_row == 0:
        return rows
    room = budget - 2 * param_bytes
    if room // per_row >= rows:
        return rows
    return _blocks_or_whole(rows, room // (BLOCK_HEADROOM * _row_bytes(replace(shape, recomputes=True))["hook pre-pass"]))  # blocks recompute


def recompute_bytes(partition: GraphPartition, shape: LayerShape, param_bytes: int, budget: int | None = None) -> int:
    """Peak device bytes of backward's vertex phases if they recompute (a kept graph dropped); ApplyVertex in blocks under ``budget``."""
    sizes = np.diff(partition.bounds)
    biggest = int(sizes.max()) if sizes.size else 0
    s = replace(shape, recomputes=True)
    block, hook_block = vertex_block_rows(biggest, s, param_bytes, budget, edgeless=partition.num_edges == 0), hook_block_rows(biggest, s, param_bytes, budget)
    return max(resident_bytes(block, s, "backward apply_vertex"), resident_bytes(hook_block, s, "hook pre-pass")) + 2 * param_bytes


def resident_lower_bound(bounds: np.ndarray, shape: LayerShape, param_bytes: int) -> int:
    """The working set's vertex part alone: a lower bound on it that needs interval bounds, not a partition.

    The edge stages hold the resident rows of the biggest interval (plus
    the parameters); ApplyVertex and the hooks may run in blocks
    (:func:`vertex_block_rows`, :func:`hook_block_rows`). The planner skips a P whose bound already
    exceeds the budget instead of partitioning for it.
    """
    sizes = np.diff(np.asarray(bounds))
    biggest = int(sizes.max()) if sizes.size else 0
    per_row = max(_held_row_bytes(shape), _row_bytes(shape)["backward"])
    return biggest * per_row + 2 * param_bytes


def src_row_bytes(shape: LayerShape) -> int:
    """Bytes of one source row an edge stage transfers."""
    return FLOAT * shape.d_src_side


_SUB_CHUNK_BYTES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # chunk -> {(shape, fused, backward): bytes}


_CANONICAL: dict = {}  # LayerShape -> the first equal instance seen


def canonical(shape: LayerShape) -> LayerShape:
    """One instance per distinct shape: memo lookups keyed by it then match by identity, not a 20-field compare."""
    return _CANONICAL.setdefault(shape, shape)


def sub_chunk_bytes(c, shape: LayerShape, fused: bool, backward: bool, dst_held: bool = False) -> int:
    """Memoised :func:`_sub_chunk_bytes`: plans are built and dry-run on every pass (pass a :func:`canonical` shape).

    ``dst_held``: a backward pass holds every destination row resident, so a
    sub-chunk brings none of its own (:func:`backward_dst_row_bytes`).
    """
    cache = _SUB_CHUNK_BYTES.setdefault(c, {})
    key = (shape, fused, backward, dst_held)
    if key not in cache:  # held rows: the sub-chunk runs whole (its rows are slices of the held ones)
        held = backward and dst_held
        cache[key] = _sub_chunk_bytes(c, shape, fused, backward, compact=not held) - (c.num_dst * backward_dst_row_bytes(shape) if held else 0)
    return cache[key]


def compacts(c) -> bool:
    """Does a backward pass run sub-chunk ``c`` over its rows with edges alone (:func:`backward_chunk`)?"""
    return getattr(c, "dst_rows", None) is None and c.rows_with_edges * COMPACT_FRACTION <= c.num_dst


def backward_sizes(c, shape: LayerShape):
    """The sizes of what a backward pass with ``shape`` streams of sub-chunk ``c`` (:func:`backward_chunk` where the
    shape's devices copy what they load, ``LayerShape.compact_dst_rows``), without making its arrays."""
    if not (shape.compact_dst_rows and compacts(c)):
        return c
    k = c.rows_with_edges
    return SubChunkSizes(c.id, c.nnz, k, c.num_src, dst_rows_bytes=INT32 * k, with_edges=k)


def backward_chunk(c):
    """What a backward pass that compacts streams of sub-chunk ``c`` (its destination rows not held): ``c``, or, where
    at most 1/:data:`COMPACT_FRACTION` of its rows have an edge, ``c`` over those rows alone (:meth:`EdgeChunk.compacted`).

    A sparse chunk's sub-chunk spans its interval's rows and reaches few
    of them (13-28 % on R-MAT at the P a budget sets), yet each backward
    step sent all of its destination rows (acc's gradient, terms, softmax
    state) and sized its row scratch by them: those bytes set P for GAT
    under tight budgets, and were most of what a narrow GCN's backward
    sent. Where most rows have edges, a contiguous copy beats a gather.
    The model prices the same sizes (:func:`backward_sizes`; a search's
    sizes-only candidates count rows with edges as the cut ones do).
    """
    return c.compacted() if compacts(c) else c


def backward_dst_row_bytes(shape: LayerShape) -> int:
    """Bytes of one destination row a backward sub-chunk loads: its input and term rows, acc's gradient (+ winners, softmax
    state and output rows, or the output's corrections: ``LayerShape.softmax_corrections``)."""
    output = (2 * FLOAT * shape.d_score if shape.softmax_corrections else FLOAT * shape.d_msg) if shape.softmax else 0
    return FLOAT * shape.d_dst_side + FLOAT * shape.d_msg + output + _winner_row_bytes(shape)


def _winner_row_bytes(shape: LayerShape) -> int:
    """Per destination row beside acc: winner positions (max/min); softmax's max and sum per head (forward: the chunk's, backward: the saved)."""
    return (INDEX * shape.d_msg if shape.winners else 0) + FLOAT * 2 * shape.d_score


def _forward_index_bytes_per_entry(fused: bool, narrow_copies: bool = True) -> int:
    """A forward's index bytes per edge (and per pointer): the source id (+ the edge's row where not fused) as int32,
    and, with ``narrow_copies``, its 16-bit copy, which a GPU holds beside the widened one until compute with 16-bit
    index arrays (``LayerShape.narrow_index_copies``)."""
    return INT32 * (1 if fused else 2) + (INT32 // 2 if narrow_copies else 0)


def forward_index_bytes(c, fused: bool, narrow_copies: bool = True, narrow_src_ids: bool = False) -> int:
    """Device bytes of a forward sub-chunk's index arrays: the pointers, source ids and rows it reads (``sent_names``),
    and each edge's row where the layer is not fused (:func:`_forward_index_bytes_per_entry`); ``narrow_src_ids``:
    the kernels read source ids in 16 bits where they fit (``LayerShape.narrow_src_ids``)."""
    per_pointer = INT32 + (INT32 // 2 if narrow_copies else 0)
    short = INT32 // 2 * c.nnz if narrow_src_ids and c.fits_16_bits("src_idx") else 0
    return _forward_index_bytes_per_entry(fused, narrow_copies) * c.nnz + per_pointer * (c.num_dst + 1) + c.src_rows.nbytes - short


def _sub_chunk_bytes(c, shape: LayerShape, fused: bool, backward: bool, compact: bool = True) -> int:
    """Device bytes of one sub-chunk in flight (selective transfer), as the passes charge them.

    Forward: index arrays, source rows, edge rows, partial rows (+ winner
    positions and edge ids for max/min), scratch. Backward adds destination
    rows, the gradient rows of ``acc`` (+ winners), the leaves' gradients and
    the scratch of the autograd recomputation; over the rows with edges
    alone where :func:`backward_chunk` compacts it (``compact``).
    """
    if backward and compact:
        c = backward_sizes(c, shape)
    win = _winner_row_bytes(shape)
    src = FLOAT * c.num_src * shape.d_src_side
    edge = FLOAT * c.nnz * shape.d_edge
    # per-sub-chunk partial rows, except a fused sum's forward: its kernel adds into V_j's accumulator
    into_acc = fused and not backward and shape.builtin is not None and shape.gather in SUM_GATHERS
    into_acc = into_acc or (fused and not backward and shape.attention is not None and shape.merges_in_place)  # merged in place
    partial = 0 if into_acc else c.num_dst * (FLOAT * shape.d_msg + win)
    # backward: every index array may be on the device; edge ids only for winners (below)
    if backward and shape.sum_backward_edge and direct_sum_backward(shape, fused):
        return _direct_backward_bytes(c, shape, src, partial)
    index = c.nbytes - c.edge_ids.nbytes if backward else forward_index_bytes(c, fused, shape.narrow_index_copies, shape.narrow_src_ids)
    b = index + src + edge + partial + (c.nnz * INDEX if shape.winners else 0) + merge_scratch_bytes(c.num_dst, shape, fused, backward)
    scratch = edge_scratch_bytes(c.nnz, shape, fused)
    if not backward:
        return int(b + scratch)
    dst = FLOAT * c.num_dst * shape.d_dst_side
    rows = c.num_dst * backward_dst_row_bytes(shape)  # dst, dst_term and acc's gradient rows (softmax: also the output rows)
    grads = src + edge + dst
    src_dst = 4 * c.nnz if fused else 0  # a fused backward may read destination ids source-major (ChunkTensors.src_dst)
    return int(b + rows + grads + backward_scratch_times(shape, fused) * scratch + src_dst)


def _direct_backward_bytes(c, shape: LayerShape, src: int, partial: int) -> int:
    """A direct sum backward's sub-chunk where the backend says what it holds per edge (``shape.sum_backward_edge``), not
    "every index array may be on the device" (twice what the CPU kernels hold): pointers, rows and their gradients, scratch once."""
    pointers = INT32 * (c.num_dst + 1 + c.num_src + 1) + c.src_rows.nbytes
    dst = FLOAT * c.num_dst * shape.d_dst_side
    rows = c.num_dst * backward_dst_row_bytes(shape)
    wide = 2 * c.nnz if shape.narrow_dst_ids and not c.fits_16_bits("src_dst") else 0  # rows past 16 bits cross as int32
    return int(pointers + c.nnz * shape.sum_backward_edge + wide + 2 * src + partial + rows + dst + edge_scratch_bytes(c.nnz, shape, True))


def working_set(partition: GraphPartition, shape: LayerShape, fused: bool, param_bytes: int, in_flight: int = 1, budget: int | None = None) -> WorkingSet:
    """Largest device footprint of one forward + backward layer call (see module docstring).

    ``in_flight`` sub-chunks are counted at once: 1 without prefetching,
    ``prefetch + 1`` with it (bounded by the largest sub-chunks). Under a
    ``budget`` ApplyVertex runs in the blocks :func:`vertex_block_rows` sizes.
    """
    phases = _phase_bytes(partition, shape, fused, in_flight, param_bytes, budget)
    phase = max(phases, key=phases.get)
    return WorkingSet(int(phases[phase] + 2 * param_bytes), phase)


def edge_stage_bytes(partition: GraphPartition, shape: LayerShape, fused: bool, param_bytes: int, phase: str, in_flight: int = 1, budget: int | None = None) -> int:
    """Device bytes of one edge stage (``phase``: forward or backward) before any interval is held resident.

    The room a pass's plan may fill with resident intervals is the budget
    less this, not less the whole call's working set: the call's other
    phases (a hook pre-pass over wide input rows, say) have given their
    memory back by the time its edge stage runs.
    """
    phases = _phase_bytes(partition, shape, fused, in_flight, param_bytes, budget)
    stage = phases[f"{phase} edge stage"]
    if phase == "forward":  # a column's ApplyVertex runs while the pass's resident copies are still held
        stage = max(stage, phases["forward apply_vertex"])
    return int(stage + 2 * param_bytes)


def _apply_window(window: int, in_flight: int) -> int:
    """Edge-stage bytes alive while a column's ApplyVertex runs: none without prefetching (the loader lets go of a
    block with its last reader, and a step's loads go when it closes), else the sub-chunks prefetched meanwhile.

    Without prefetching the block size is so a function of the interval's rows alone, not of the sub-chunks:
    a resumed run, whose planner may see the calls in another order, runs the same blocks (bit-exact resume).
    """
    return 0 if in_flight <= 1 else window


def apply_block_rows(partition: GraphPartition, shape: LayerShape, fused: bool, param_bytes: int, budget: int | None, in_flight: int = 1) -> int:
    """Rows of a forward ApplyVertex block on ``partition``: the block :func:`working_set` counts (the engine runs the same)."""
    sizes = np.diff(partition.bounds)
    biggest = int(sizes.max()) if sizes.size else 0
    if budget is None:
        return biggest
    window = _forward_window(partition, canonical(shape), fused, in_flight) if in_flight > 1 else 0
    return vertex_block_rows(biggest, shape, param_bytes, budget, _apply_window(window, in_flight), partition.num_edges == 0)


def _forward_window(partition: GraphPartition, shape: LayerShape, fused: bool, in_flight: int) -> int:
    """Bytes of the ``in_flight`` largest forward sub-chunks (``shape``: :func:`canonical`)."""
    return _largest(partition, shape, fused, False, in_flight)


def _largest(partition: GraphPartition, shape: LayerShape, fused: bool, backward: bool, count: int) -> int:
    """Bytes of the ``count`` largest sub-chunks (:func:`sub_chunk_bytes`) together.

    A sketch's sub-chunks (a search's candidate) are priced once per
    distinct (edges, destination rows, source rows, rows with edges): their bytes are a
    function of those alone, and a fine candidate's 40,000 sub-chunks
    priced one by one were most of its search.
    """
    if not is_sketch(partition):
        return sum(heapq.nlargest(count, (sub_chunk_bytes(c, shape, fused, backward) for c in partition.sub_chunks())))
    priced: dict[tuple[int, int, int, int], int] = {}

    def bytes_of(c) -> int:
        key = (c.nnz, c.num_dst, c.num_src, c.rows_with_edges)
        found = priced.get(key)
        if found is None:
            found = priced[key] = _sub_chunk_bytes(c, shape, fused, backward)
        return found

    return sum(heapq.nlargest(count, map(bytes_of, partition.sub_chunks())))


def _phase_bytes(partition: GraphPartition, shape: LayerShape, fused: bool, in_flight: int, param_bytes: int = 0, budget: int | None = None) -> dict[str, int]:
    sizes = np.diff(partition.bounds)
    shape = canonical(shape)
    bwd_window = _largest(partition, shape, fused, True, in_flight) if shape.backward_edges else 0
    biggest = int(sizes.max()) if sizes.size else 0
    window = _forward_window(partition, shape, fused, in_flight)
    during = _apply_window(window, in_flight)
    edgeless = partition.num_edges == 0
    block = vertex_block_rows(biggest, shape, param_bytes, budget, during, edgeless)
    held = (block if edgeless else biggest) * _held_row_bytes(shape)  # no edges: each block holds its own rows
    return {
        "forward edge stage": held + window,
        # ApplyVertex's output rows and scratch (a block of them), beside what prefetching holds of the next column's loads
        "forward apply_vertex": held + during + block * _apply_row_bytes(shape),
        "backward edge stage": resident_bytes(biggest, shape, "backward") + bwd_window,  # 0 without a pass
        "backward apply_vertex": resident_bytes(block, shape, "backward apply_vertex"),
        "hook pre-pass": resident_bytes(hook_block_rows(biggest, shape, param_bytes, budget), shape, "hook pre-pass"),
    }


def tile_candidates(num_chunks: int) -> list[int]:
    """Tiles the planner tries, smallest first: 1, powers of two below P, and P (every accumulator resident)."""
    tiles, t = [1], 2
    while t < num_chunks:
        tiles.append(t)
        t *= 2
    return tiles + ([num_chunks] if num_chunks > 1 else [])


def tile_resident_bytes(rows: Sequence[int], shape: LayerShape, apply_rows: int | None = None, edgeless: bool = False) -> int:
    """Forward bytes a tile of destination intervals of ``rows`` rows each keeps on the device through its edge stage.

    Each holds its input rows, destination terms and accumulator through the
    tile; ApplyVertex then runs one interval at a time while the last
    step's loads may still be held, so the biggest's output rows and
    scratch count too: ``apply_rows`` of them where ApplyVertex runs in
    blocks (:func:`apply_block_rows`), else the whole interval's. With no
    edges, an interval in blocks holds nothing but the block it applies.
    """
    if not rows:
        return 0
    applied = int(max(rows)) if apply_rows is None else min(int(max(rows)), int(apply_rows))
    if edgeless and applied < max(rows):
        return applied * (_held_row_bytes(shape) + _apply_row_bytes(shape))
    return int(sum(rows)) * _held_row_bytes(shape) + applied * _apply_row_bytes(shape)


def tile_extra_bytes(partition: GraphPartition, shape: LayerShape, tile: int) -> int:
    """Forward device bytes a tile holds beyond the working set's one destination column (the biggest tile's)."""
    sizes = [int(r) for r in np.diff(partition.bounds)]
    if tile <= 1 or not sizes:
        return 0
    biggest = max(tile_resident_bytes(sizes[g : g + tile], shape) for g in range(0, len(sizes), tile))
    return biggest - resident_bytes(max(sizes), shape, "forward")


def vertex_weight(shape: LayerShape, fused: bool) -> float:
    """The weight of a vertex against an in-edge when cutting intervals: balancing it balances memory.

    Sub-chunks are bounded in edges whatever the intervals, so what an
    interval's size decides is its resident vertex state.
    """
    # edges take no resident memory (sub-chunks are bounded whatever the intervals), so a
    # vertex weighs its resident bytes and an in-edge one byte: a tie-breaker for even chunks
    return float(max(1, max(_row_bytes(shape).values())))


# Without a budget, a sub-chunk's per-edge tensors (messages, scores and their gradients of a
# layer that is not fused) are kept to about this many bytes: past it, bigger sub-chunks only
# cost memory (a GAT sub-chunk of 2^20 edges holds GBs of them).
UNBUDGETED_SUB_CHUNK_BYTES = 256 << 20


def _sub_chunk_unit_bytes(shape: LayerShape, fused: bool) -> tuple[int, int]:
    """The largest sub-chunk's bytes per source row and per edge: a backward's (the row and its gradient; index arrays,
    edge data, scratch twice), or a forward's where the layer has no backward edge stage (its sub-chunks size for the forward alone)."""
    if not shape.backward_edges:  # the row; source id (+ the row of each edge where not fused), edge data, scratch
        return FLOAT * shape.d_src_side, _forward_index_bytes_per_entry(fused, shape.narrow_index_copies) + FLOAT * shape.d_edge + edge_scratch_bytes(1, shape, fused)
    scratch = backward_scratch_times(shape, fused) * edge_scratch_bytes(1, shape, fused)
    if shape.sum_backward_edge and direct_sum_backward(shape, fused):  # what the backend's kernels hold, or the forward's
        forward = _forward_index_bytes_per_entry(fused, shape.narrow_index_copies) + FLOAT * shape.d_edge + edge_scratch_bytes(1, shape, fused)
        return 2 * FLOAT * shape.d_src_side, max(forward, scratch + shape.sum_backward_edge)
    return 2 * FLOAT * shape.d_src_side, scratch + 2 * FLOAT * shape.d_edge + 24


def sub_chunk_nnz_in_room(room: int, rows: int, shape: LayerShape, fused: bool, default: int) -> int:
    """Edges per sub-chunk when one sub-chunk may take ``room`` bytes and its sources lie in ``rows`` rows.

    :func:`sub_chunk_nnz_for` charges a new source row for every edge; a
    sub-chunk never reads more rows than its source interval has, so once
    ``rows`` are paid for, further edges cost their per-edge bytes only
    (R-MAT 2^16 at degree 64, GCN width 64 under 1/8 of the in-memory
    device memory: 59,194 edges a sub-chunk at P = 14 instead of 14,757).
    """
    row, edge = _sub_chunk_unit_bytes(shape, fused)
    rows = max(0, int(rows))
    if rows * (row + edge) <= room:
        return int(min(default, max(64, rows + (room - rows * (row + edge)) // edge)))
    return int(min(default, max(64, room // (row + edge))))


def sub_chunk_nnz_for(budget: int | None, shape: LayerShape, fused: bool, default: int) -> int:
    """Edges per sub-chunk: the largest sub-chunk's per-edge bytes (:func:`_sub_chunk_unit_bytes`) within half the budget.

    The rest is left to the vertex-resident state; ``choose_num_chunks``
    then raises P until the whole working set fits. Without a budget, the
    default, or less for a layer with per-edge tensors (see
    ``UNBUDGETED_SUB_CHUNK_BYTES``).
    """
    per_edge = sum(_sub_chunk_unit_bytes(shape, fused))  # a new source row for every edge
    if budget is None:
        return default if fused else int(min(default, max(4096, UNBUDGETED_SUB_CHUNK_BYTES // per_edge)))
    return int(min(default, max(64, budget // (2 * per_edge))))
