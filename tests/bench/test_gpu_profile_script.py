"""benchmarks/gpu_profile.py: the parts that run without a GPU (the trace analysis, the host gather rate, the refusal)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def gpu_profile():
    spec = importlib.util.spec_from_file_location("gpu_profile", ROOT / "benchmarks" / "gpu_profile.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _frame(path: str, line: int, name: str) -> dict:
    return {"filename": path, "line": line, "name": name}


LINEAR = _frame("/venv/torch/nn/functional.py", 10, "linear")
ENGINE = _frame("/repo/sagann/engine/forward.py", 90, "hook_pass")
LOADER = _frame("/repo/sagann/scheduler/cuda_runtime.py", 140, "empty")


def test_site_prefers_the_innermost_sagann_frame(gpu_profile):
    assert gpu_profile.site_of([LINEAR, ENGINE]) == "engine/forward.py:90 hook_pass -> linear"
    assert gpu_profile.site_of([LOADER, ENGINE]) == "scheduler/cuda_runtime.py:140 empty"
    assert gpu_profile.site_of([LINEAR]) == "/venv/torch/nn/functional.py:10 linear"
    assert gpu_profile.site_of([]).startswith("(no Python frame")


def test_live_blocks_at_the_peak_grouped_by_site(gpu_profile):
    trace = [
        {"action": "alloc", "addr": 1, "size": 100, "frames": [LOADER]},
        {"action": "alloc", "addr": 2, "size": 300, "frames": [LINEAR, ENGINE]},
        {"action": "alloc", "addr": 3, "size": 50, "frames": [LOADER]},  # the peak: 450 live
        {"action": "free_requested", "addr": 2, "size": 300},
        {"action": "free_completed", "addr": 2, "size": 300},  # counted once
        {"action": "alloc", "addr": 4, "size": 200, "frames": []},  # 350 live: below the peak
        {"action": "free_completed", "addr": 1, "size": 100},  # a free without its request still frees
        {"action": "segment_alloc", "addr": 9, "size": 10**6},  # the allocator's own segments are not tensors
    ]
    peak, sites = gpu_profile.live_at_peak(trace)
    assert peak == 450
    assert sites == {"engine/forward.py:90 hook_pass -> linear": 300, "scheduler/cuda_runtime.py:140 empty": 150}
    assert list(sites) == sorted(sites, key=lambda k: -sites[k]), "largest site first"


def test_host_gather_reports_rates(gpu_profile):
    out = gpu_profile.host_gather(rows=1 << 12, width=16, picked=1 << 10)
    assert out["bytes"] == (1 << 10) * 16 * 4
    assert out["gather_gbps"] > 0 and out["gather_gbps_one_thread"] > 0 and out["copy_gbps"] > 0
    assert ("h2d_gbps" in out) == torch.cuda.is_available()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_without_a_gpu_it_refuses_with_status_2(gpu_profile, tmp_path):
    assert gpu_profile.main(["--out", str(tmp_path)]) == 2


def test_pass_windows_give_each_pass_its_own_allocations(gpu_profile, monkeypatch):
    """The wrapper around CudaMeter's pass, over a stand-in allocation trace (no GPU): blocks made before a pass are not its own."""
    from sagann.scheduler.meter import CudaMeter

    trace: list[dict] = []
    monkeypatch.setattr(torch.cuda.memory, "_snapshot", lambda: {"device_traces": [list(trace)]})
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    for name, value in (("synchronize", None), ("memory_allocated", 0), ("max_memory_allocated", 0), ("reset_peak_memory_stats", None)):
        monkeypatch.setattr(torch.cuda, name, lambda device=None, value=value: value)
    original = CudaMeter._pass
    meter = CudaMeter(torch.device("cuda", 0))
    trace.append({"action": "alloc", "addr": 1, "size": 1000, "frames": [LOADER]})  # before any pass
    with gpu_profile.pass_windows() as windows:
        with meter.measure():
            trace.append({"action": "alloc", "addr": 2, "size": 300, "frames": [LINEAR, ENGINE]})
            trace.append({"action": "free_requested", "addr": 1, "size": 1000})
        with meter.measure():
            trace.append({"action": "alloc", "addr": 3, "size": 50, "frames": [LOADER]})
    assert windows == [(300, {"engine/forward.py:90 hook_pass -> linear": 300}), (50, {"scheduler/cuda_runtime.py:140 empty": 50})]
    assert CudaMeter._pass is original, "the meter is restored"


def test_profile_text_orders_by_own_and_cumulative_time(gpu_profile):
    import cProfile

    prof = cProfile.Profile()
    prof.enable()
    sorted(range(1000), key=lambda v: -v)
    prof.disable()
    text = gpu_profile._profile_text(prof, 5, 7)
    assert "Ordered by: internal time" in text["cprofile_tottime"]
    assert "Ordered by: cumulative time" in text["cprofile_cumulative"]


def test_csr_product_toggle_restores_the_backend_setting(gpu_profile):
    from sagann.kernels import cuda as backend

    before = backend.CSR_PRODUCT
    with pytest.raises(RuntimeError, match="inside"):
        with gpu_profile.csr_product(not before):
            assert backend.CSR_PRODUCT is (not before)
            raise RuntimeError("inside")
    assert backend.CSR_PRODUCT is before


def test_plan_facts_name_the_partition_and_each_pass(gpu_profile):
    import numpy as np
    import torch

    import sagann
    from tests.engine.graphs import awkward_graph

    n = 200
    ei = awkward_graph(np.random.default_rng(1), n, 1500)
    g = sagann.ChunkedGraph(ei, n, device=sagann.CpuDevice("60KB"), num_chunks=3)
    layer = sagann.nn.GATConv(8, 4, heads=2)
    x = torch.randn(n, 8, requires_grad=True)
    layer(g, x).sum().backward()
    facts = gpu_profile.plan_facts(g)
    loops = g.with_remaining_self_loops()[0]
    assert facts["num_chunks"] == loops.num_chunks > 1 and facts["sub_chunk_nnz"] == loops.partition.sub_chunk_nnz
    assert facts["replans"] == len(loops.replans)
    assert [p["phase"] for p in facts["passes"]] == [r.phase for r in loops.pass_log] and "forward" in [p["phase"] for p in facts["passes"]]
