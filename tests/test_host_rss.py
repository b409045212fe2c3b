"""--host-memory holds in the process's anonymous RSS, sampled from outside, with the unlimited run's losses."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from sagann.chunks import partition_graph, save_dataset
from sagann.chunks.synthetic import sbm
from sagann.scheduler.host import HOST_MEMORY_SLACK

ROOT = Path(__file__).resolve().parents[1]
N, F, HIDDEN = 120_000, 64, 64
DEVICE = 32 << 20


def _anon(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon")


def _run(args: list[str]) -> tuple[dict, int]:
    """The command's last stdout line (JSON, or {} for a plain script) and its peak RssAnon, sampled every 5 ms."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    peak, stop = [0], threading.Event()

    def poll():
        while not stop.is_set():
            try:
                peak[0] = max(peak[0], _anon(proc.pid))
            except (OSError, RuntimeError, ValueError):
                return
            stop.wait(0.005)

    t = threading.Thread(target=poll, daemon=True)
    t.start()
    out, err = proc.communicate(timeout=900)
    stop.set()
    t.join()
    assert proc.returncode == 0, err[-3000:]
    lines = [line for line in out.splitlines() if line.strip()]
    return (json.loads(lines[-1]) if lines else {}), peak[0]


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc to read RssAnon")
def test_host_budget_holds_in_anonymous_rss(tmp_path):
    d = sbm(N, 8, 8.0, F, seed=0)
    ds = save_dataset(tmp_path / "ds", partition_graph(d.edge_index, N, 4), x=d.x, y=d.y, masks={"train": d.train_mask, "val": d.val_mask, "test": d.test_mask})
    del d
    _, interpreter = _run(["-c", "import sagann, sagann.cli, sagann.engine.train, torch, numba, time; time.sleep(0.3)"])
    common = ["-m", "sagann.cli", "train", str(ds), "--epochs", "2", "--hidden", str(HIDDEN), "--memory-budget", str(DEVICE), "--order", "natural", "--json"]
    free, free_peak = _run(common)
    budget = (free_peak - interpreter) // 10
    # features are N x F x 4 bytes; an epoch adds >= 8 hidden-wide rows per vertex (two dropout outputs and masks,
    # the layer output, ReLU, the cached Gather, gradients): the data is >= 4x the budget
    assert N * F * 4 + 8 * N * HIDDEN * 4 >= 4 * budget
    held, held_peak = _run([*common, "--host-memory", str(budget), "--spill-dir", str(tmp_path / "spill")])
    assert held["losses"] == free["losses"]
    assert held["spilled_bytes_total"] > 0 and held["host_memory_bytes"] == budget
    bound = interpreter + budget + held["peak_device_bytes"] + HOST_MEMORY_SLACK
    assert free_peak > bound  # without the budget this run would not fit the bound: the check can fail
    assert held_peak <= bound, f"peak anonymous RSS {held_peak >> 20} MiB > {bound >> 20} MiB (interpreter {interpreter >> 20} + budget {budget >> 20} + device {held['peak_device_bytes'] >> 20} + slack {HOST_MEMORY_SLACK >> 20}); unlimited: {free_peak >> 20} MiB"
    assert abs(held["peak_host_anon_bytes"] - held_peak) <= 0.1 * held_peak  # the run's own figure agrees with the outside sample
