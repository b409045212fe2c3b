"""The step calibration's second half: what a sub-chunk step costs inside the engine's own passes.

The scheduler's time model (:mod:`sagann.scheduler.cost_model`) measures a
bare loop of loads and kernels; the engine registers this timer with it
(``set_engine_step_timer``) as the engine sits a layer above the scheduler.
"""
from __future__ import annotations

import gc
import math
import time

import numpy as np
import torch

from sagann import fn
from sagann.engine.graph import ChunkedGraph
from sagann.engine.layer import Layer
from sagann.profiler import profile
from sagann.scheduler import cost_model

__all__ = ["engine_step_seconds", "engine_vertex_step_seconds"]

ENGINE_EDGES = 4096  # edges of the calibration call: 128 tiny sub-chunks a pass (vertices, width and sub-chunk sizes: the bare loop's)


class _Sum(Layer):
    gather = "sum"
    apply_edge = fn.copy_src

    def apply_vertex(self, v, acc):
        return acc


def engine_step_seconds(device, repeats: int) -> float | None:
    """What a step costs inside the engine's own passes, or None where the device makes no twin to run them on.

    A pass's step does more than the bare loop of loads and a kernel that
    :func:`~sagann.scheduler.cost_model.measure_step_costs` times: the
    loader builds the sub-chunk's inputs and charges the ledger, the
    executor hands them over and times them, the kernel front-end checks
    its operands, and the backward does it all again. The bare loop alone
    priced a step at a quarter to a sixth of what the sweep's passes
    measured, so the planner undervalued fewer steps. Measured alike: a sum
    layer's training call (its forward and backward passes) over the same
    edges cut into tiny and into big sub-chunks, on a twin of the device
    (``device.calibration_twin()``), outside any trace.
    """
    make = getattr(device, "calibration_twin", None)
    twin = make() if make is not None else None
    if twin is None:
        return None
    gen = np.random.default_rng(1)  # never the caller's RNG
    n, e, d = cost_model.CALIBRATION_VERTICES, ENGINE_EDGES, cost_model.CALIBRATION_WIDTH
    edges = torch.from_numpy(gen.integers(0, n, (2, e)))
    x = torch.from_numpy(gen.standard_normal((n, d), dtype=np.float32)).requires_grad_(True)
    layer = _Sum()

    def call(sub: int) -> tuple[float, int]:
        g = ChunkedGraph(edges, n, num_chunks=1, sub_chunk_nnz=sub, device=twin)
        best, steps = math.inf, 0
        for k in range(repeats + 1):  # the first call compiles and plans
            start = len(g.pass_log)
            t0 = time.perf_counter()
            layer(g, x).sum().backward()
            twin.synchronize()
            if k:
                best, steps = min(best, time.perf_counter() - t0), sum(r.steps for r in g.pass_log[start:])
        return best, steps

    collecting = gc.isenabled()
    gc.collect()
    gc.disable()  # a collection of the caller's garbage inside one timing took 40-90 ms: it is not a step's cost
    try:
        # a user's trace does not show the calibration's passes, the pass log learns nothing from them, and the
        # caller's random stream does not move (each call draws a seed)
        with torch.enable_grad(), profile(nvtx=False), cost_model.unlearned(twin), torch.random.fork_rng(devices=[]):
            (small, n_small), (big, n_big) = call(cost_model.SMALL_SUB), call(cost_model.BIG_SUB)
    finally:
        if collecting:
            gc.enable()
    return max(0.0, (small - big) / max(1, n_small - n_big))


class _Dense(Layer):
    """ApplyVertex a Linear-ReLU of the input rows plus the aggregate: a vertex step with parameters and autograd."""

    gather = "sum"
    apply_edge = fn.copy_src

    def __init__(self, width: int):
        super().__init__()
        self.lin = torch.nn.Linear(width, width)

    def apply_vertex(self, v, acc):
        return torch.relu(self.lin(v)) + acc


VERTEX_INTERVALS = 64  # intervals of the vertex-step calibration (32 rows each)


def engine_vertex_step_seconds(device, repeats: int) -> float | None:
    """What a vertex step (ApplyVertex on one interval or block, forward and backward) costs in the engine, or None
    where the device makes no twin.

    The bare loop's figure (:func:`~sagann.scheduler.cost_model.measure_step_costs`)
    leaves out what the engine adds to each: a scope and its charges, the
    rows' loads, the random stream's seed, the gradient's write-out. Measured
    as the difference between a graph without edges cut into
    ``VERTEX_INTERVALS`` intervals and into one, a training call of a
    Linear-ReLU layer each, per vertex step the engine counted.
    """
    make = getattr(device, "calibration_twin", None)
    twin = make() if make is not None else None
    if twin is None:
        return None
    gen = np.random.default_rng(2)
    n, d = cost_model.CALIBRATION_VERTICES, cost_model.CALIBRATION_WIDTH
    x = torch.from_numpy(gen.standard_normal((n, d), dtype=np.float32)).requires_grad_(True)
    torch.manual_seed(0)
    layer = _Dense(d).to(twin.torch_device)

    def call(num_chunks: int) -> tuple[float, int]:
        g = ChunkedGraph(torch.zeros((2, 0), dtype=torch.int64), n, num_chunks=num_chunks, device=twin)
        best, steps = math.inf, 0
        for k in range(repeats + 1):  # the first call probes and plans
            start = g.vertex_steps.total
            t0 = time.perf_counter()
            layer(g, x).sum().backward()
            twin.synchronize()
            if k:
                best, steps = min(best, time.perf_counter() - t0), g.vertex_steps.total - start
        return best, steps

    collecting = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        with torch.enable_grad(), profile(nvtx=False), cost_model.unlearned(twin), torch.random.fork_rng(devices=[]):
            (many, n_many), (one, n_one) = call(VERTEX_INTERVALS), call(1)
    finally:
        if collecting:
            gc.enable()
    return max(0.0, (many - one) / max(1, n_many - n_one))


cost_model.set_engine_step_timer(engine_step_seconds, engine_vertex_step_seconds)
