"""--host-memory holds in the process's anonymous RSS, sampled from outside, with the unlimited run's losses."""
from __future__ import annotations

from pathlib import Path

import pytest

from sagann.chunks import partition_graph, save_dataset
from tests.anon_rss import run_sampled
from sagann.chunks.synthetic import sbm
from sagann.scheduler.host import HOST_MEMORY_SLACK

N, F, HIDDEN = 120_000, 64, 64
DEVICE = 32 << 20


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc to read RssAnon")
# the gated GCN runs autograd over every sub-chunk's edges: its passes fragment the heap the most
@pytest.mark.parametrize("model", ["gcn", "ggcn"])
def test_host_budget_holds_in_anonymous_rss(tmp_path, model):
    d = sbm(N, 8, 8.0, F, seed=0)
    ds = save_dataset(tmp_path / "ds", partition_graph(d.edge_index, N, 4), x=d.x, y=d.y, masks={"train": d.train_mask, "val": d.val_mask, "test": d.test_mask})
    del d
    _, interpreter = run_sampled(["-c", "import sagann, sagann.cli, sagann.engine.train, torch, numba, time; time.sleep(0.3)"])
    common = ["-m", "sagann.cli", "train", str(ds), "--epochs", "2", "--hidden", str(HIDDEN), "--memory-budget", str(DEVICE), "--order", "natural", "--json", "--model", model]
    free, free_peak = run_sampled(common)
    budget = (free_peak - interpreter) // 10
    # features are N x F x 4 bytes; an epoch adds >= 8 hidden-wide rows per vertex (two dropout outputs and masks,
    # the layer output, ReLU, the cached Gather, gradients): the data is >= 4x the budget
    assert N * F * 4 + 8 * N * HIDDEN * 4 >= 4 * budget
    held, held_peak = run_sampled([*common, "--host-memory", str(budget), "--spill-dir", str(tmp_path / "spill")])
    assert held["losses"] == free["losses"]
    assert held["spilled_bytes_total"] > 0 and held["host_memory_bytes"] == budget
    bound = interpreter + budget + held["peak_device_bytes"] + HOST_MEMORY_SLACK
    assert free_peak > bound  # without the budget this run would not fit the bound: the check can fail
    assert held_peak <= bound, f"peak anonymous RSS {held_peak >> 20} MiB > {bound >> 20} MiB (interpreter {interpreter >> 20} + budget {budget >> 20} + device {held['peak_device_bytes'] >> 20} + slack {HOST_MEMORY_SLACK >> 20}); unlimited: {free_peak >> 20} MiB"
    assert abs(held["peak_host_anon_bytes"] - held_peak) <= 0.1 * held_peak  # the run's own figure agrees with the outside sample
