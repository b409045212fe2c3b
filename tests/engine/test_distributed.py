"""Two torch.distributed ranks (gloo, localhost, torchrun) equal one device."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import sagann

ROOT = Path(__file__).resolve().parents[2]


def test_two_gloo_ranks_equal_one_device(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2", str(ROOT / "tests/engine/dist_worker.py"), str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for res in results:
        assert res["world"] == 2
        for name, errs in res["layers"].items():
            assert errs["output"] <= 1e-5 and errs["grads"] <= 1e-5, (res["rank"], name, errs)
        one, ranks = torch.tensor(res["losses_one_device"]), torch.tensor(res["losses_distributed"])
        assert len(one) == 3 and torch.allclose(ranks, one, rtol=1e-5, atol=0), (one, ranks)
        # out of core: at 1/8 of the in-memory device peak each rank streams (P >= 2) with one device's losses
        p_one, p_ranks = res["ooc_chunks"]
        assert p_ranks >= 2 and p_ranks == p_one, res["ooc_chunks"]
        one, ranks = torch.tensor(res["ooc_one_device"]), torch.tensor(res["ooc_distributed"])
        assert len(one) == 3 and torch.allclose(ranks, one, rtol=1e-5, atol=0), (one, ranks)
    assert results[0]["losses_distributed"] == results[1]["losses_distributed"]  # the ranks agree exactly


def test_distributed_needs_an_initialised_group():
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        pytest.skip("a process group is already initialised here")
    with pytest.raises(RuntimeError, match="torchrun"):
        sagann.ChunkedGraph(torch.tensor([[0], [1]]), 2, distributed=True)


def test_a_distributed_graph_does_not_outlive_its_last_reference(tmp_path):
    """A layer output's autograd node held the call, which held the output: a cycle through C++ that gc cannot free.

    It kept the graph and its process group alive until the interpreter shut
    down, where gloo's threads met a finalizing interpreter ("terminate
    called without an active exception"). Run in a subprocess: one gloo rank.
    """
    script = f"""
import gc, os, socket, sys, weakref
import torch, torch.distributed as dist
sys.path.insert(0, {str(ROOT)!r})
import sagann
from sagann.engine.models import GCN
from sagann.engine.train import train_node_classifier
s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{{port}}", rank=0, world_size=1)
def run():
    n = 300
    gen = torch.Generator().manual_seed(0)
    ei = torch.randint(0, n, (2, 2000), generator=gen).numpy()
    x, y = torch.randn(n, 8, generator=gen), torch.randint(0, 3, (n,), generator=gen)
    masks = [torch.arange(n) % 3 == k for k in range(3)]
    g = sagann.ChunkedGraph(ei, n, num_chunks=2, device=sagann.CpuDevice(name="r0"), distributed=True)
    train_node_classifier(GCN(8, 8, 3), g, x, y, *masks, epochs=2, progress=False)
    return weakref.ref(g)
ref = run()
gc.collect()
print("ALIVE" if ref() is not None else "FREED")
dist.destroy_process_group()
"""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "FREED"
