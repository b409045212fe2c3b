"""One rank of the torch.distributed test (launched by tests/engine/test_distributed.py through torchrun).

Every rank builds the same graph with ``distributed=True`` and compares a
layer call (outputs and gradients) and a 3-epoch training run against the
single-device result it computes itself; it writes what it measured to
``OUT/rank<r>.json``.
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np
import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import sagann  # noqa: E402
from sagann import nn as snn  # noqa: E402
from sagann.engine.models import GCN  # noqa: E402
from sagann.engine.train import train_node_classifier  # noqa: E402
from tests.engine.graphs import awkward_graph  # noqa: E402
from tests.engine.layers import GatedGCN, HookLayer  # noqa: E402


def rel_err(a: torch.Tensor, b: torch.Tensor, floor: float = 1e-6) -> float:
    return float((a - b).abs().max() / max(b.abs().max().item(), floor)) if b.numel() else 0.0


def layer_errors(make, with_edges, ei, n, x, ed, distributed: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
    torch.manual_seed(0)
    layer = make()
    device = sagann.CpuDevice(name=f"rank{dist.get_rank()}" if distributed else "cpu0")
    g = sagann.ChunkedGraph(ei, n, num_chunks=5, device=device, sub_chunk_nnz=16, distributed=distributed)
    xx = x.clone().requires_grad_(True)
    ee = ed.clone().requires_grad_(True) if with_edges else None
    out = layer(g, xx, ee) if with_edges else layer(g, xx)
    probe = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    inputs = [xx] + ([ee] if with_edges else []) + list(layer.parameters())
    grads = torch.autograd.grad((out * probe).sum(), inputs, allow_unused=True)
    return out.detach(), [torch.zeros_like(t) if gr is None else gr for t, gr in zip(inputs, grads)]


def out_of_core_curves(rank: int) -> dict:
    """3 epochs of GCN at 1/8 of the in-memory device peak: one device against this rank's share, and the P each used."""
    n, gen = 20000, torch.Generator().manual_seed(1)
    ei = torch.randint(0, n, (2, 200000), generator=gen).numpy()
    x, y = torch.randn(n, 32, generator=gen), torch.randint(0, 3, (n,), generator=gen)
    masks = [torch.arange(n) % 3 == k for k in range(3)]

    def run(budget, distributed):
        torch.manual_seed(0)
        device = sagann.CpuDevice(budget, name=f"rank{rank}")
        # ranks never cache a Gather (each would hold all of it): the one device streams every layer too
        g = sagann.ChunkedGraph(ei, n, device=device, distributed=distributed, schedule=sagann.ScheduleConfig(cache_gather=False))
        hist = train_node_classifier(GCN(32, 32, 3), g, x, y, *masks, epochs=3 if budget else 1, progress=False)
        return [h.loss for h in hist], g.num_chunks, device.peak_bytes

    _, _, peak = run(None, False)
    one, p_one, _ = run(peak // 8, False)
    ranks, p_ranks, _ = run(peak // 8, True)
    return {"ooc_one_device": one, "ooc_distributed": ranks, "ooc_chunks": [p_one, p_ranks]}


def main(out_dir: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    rng = np.random.default_rng(7)
    n, e = 70, 420
    ei = awkward_graph(rng, n, e)
    x = torch.randn(n, 6, generator=torch.Generator().manual_seed(2))
    ed = torch.randn(e, 3, generator=torch.Generator().manual_seed(4))
    result: dict = {"rank": rank, "world": dist.get_world_size(), "layers": {}}
    for name, make, with_edges in (
        ("gcn", lambda: snn.GCNConv(6, 4), False),
        ("ggcn", lambda: GatedGCN(6, 4), False),
        ("hook-max", lambda: HookLayer(6, 4, 3, "max"), True),
    ):
        ref_out, ref_grads = layer_errors(make, with_edges, ei, n, x, ed, distributed=False)
        out, grads = layer_errors(make, with_edges, ei, n, x, ed, distributed=True)
        largest = max(r.abs().max().item() for r in ref_grads)
        result["layers"][name] = {
            "output": rel_err(out, ref_out),
            "grads": max(rel_err(a, b, floor=max(0.01 * largest, 1e-6)) for a, b in zip(grads, ref_grads)),
        }
    # a 3-epoch training curve
    gen = torch.Generator().manual_seed(5)
    y = torch.randint(0, 3, (n,), generator=gen)
    masks = [torch.arange(n) % 3 == k for k in range(3)]
    curves = {}
    for distributed in (False, True):
        torch.manual_seed(0)
        model = GCN(6, 8, 3, dropout=0.5)
        device = sagann.CpuDevice(name=f"rank{rank}")
        g = sagann.ChunkedGraph(ei, n, num_chunks=4, device=device, distributed=distributed)
        curves[distributed] = [h.loss for h in train_node_classifier(model, g, x, y, *masks, epochs=3, progress=False)]
    result["losses_one_device"], result["losses_distributed"] = curves[False], curves[True]
    result.update(out_of_core_curves(rank))
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
