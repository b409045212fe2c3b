"""Out of core costs no extra host memory: peak anonymous RSS, sampled from outside, against the in-memory run's."""
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
from sagann.scheduler.host import OUT_OF_CORE_SLACK

ROOT = Path(__file__).resolve().parents[1]
N, F, HIDDEN = 150_000, 48, 32  # not the benchmark's graph (200,000 vertices, 64 features)


def _run(args: list[str]) -> tuple[dict, int]:
    """``sagann train ... --json``'s result and its peak RssAnon, sampled every 5 ms from /proc."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "sagann.cli", "train", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    peak, stop = [0], threading.Event()

    def poll():
        while not stop.is_set():
            try:
                with open(f"/proc/{proc.pid}/status") as f:
                    anon = next(int(line.split()[1]) * 1024 for line in f if line.startswith("RssAnon:"))
            except (OSError, StopIteration, ValueError):
                return
            peak[0] = max(peak[0], anon)
            stop.wait(0.005)

    t = threading.Thread(target=poll, daemon=True)
    t.start()
    out, err = proc.communicate(timeout=900)
    stop.set()
    t.join()
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1]), peak[0]


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc to read RssAnon")
def test_out_of_core_peak_rss_is_the_in_memory_one_plus_a_constant(tmp_path):
    d = sbm(N, 8, 10.0, F, seed=3)
    ds = save_dataset(tmp_path / "ds", partition_graph(d.edge_index, N, 2), x=d.x, y=d.y, masks={"train": d.train_mask, "val": d.val_mask, "test": d.test_mask})
    del d
    common = [str(ds), "--epochs", "3", "--hidden", str(HIDDEN), "--order", "natural", "--json"]
    whole, whole_peak = _run([*common, "--memory-budget", "100GB"])
    ooc, ooc_peak = _run([*common, "--memory-budget", "8MB"])
    assert ooc["num_chunks"] >= 8 and ooc["num_chunks"] > whole["num_chunks"]  # really out of core: many more, smaller chunks
    assert ooc["losses"] == pytest.approx(whole["losses"], rel=1e-4)
    assert ooc_peak <= whole_peak + OUT_OF_CORE_SLACK, (
        f"out of core peaks at {ooc_peak >> 20} MiB anonymous, in memory at {whole_peak >> 20} MiB: "
        f"{(ooc_peak - whole_peak) >> 20} MiB more, over the {OUT_OF_CORE_SLACK >> 20} MiB allowed")
