"""Out of core costs no extra host memory: peak anonymous RSS, sampled from outside, against the in-memory run's."""
from __future__ import annotations

from pathlib import Path

import pytest

from sagann.chunks import partition_graph, save_dataset
from tests.anon_rss import run_sampled
from sagann.chunks.synthetic import sbm
from sagann.scheduler.host import OUT_OF_CORE_SLACK

N, F, HIDDEN = 150_000, 48, 32  # not the benchmark's graph (200,000 vertices, 64 features)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc to read RssAnon")
# without dropout the training calls run the first layer on its cached Gather
# GIN 256 wide: P = 69, 4,761 sub-chunks (what each one holds in RAM adds up)
@pytest.mark.parametrize("model,dropout,hidden,min_chunks", [("gcn", "0.5", HIDDEN, 8), ("gcn", "0", HIDDEN, 8), ("sage", "0.5", HIDDEN, 6), ("gin", "0", HIDDEN, 10), ("gin", "0.5", 256, 40)])
def test_out_of_core_peak_rss_is_the_in_memory_one_plus_a_constant(tmp_path, model, dropout, hidden, min_chunks):
    d = sbm(N, 8, 10.0, F, seed=3)
    ds = save_dataset(tmp_path / "ds", partition_graph(d.edge_index, N, 2), x=d.x, y=d.y, masks={"train": d.train_mask, "val": d.val_mask, "test": d.test_mask})
    del d
    common = [str(ds), "--epochs", "3", "--hidden", str(hidden), "--order", "natural", "--json", "--dropout", dropout, "--model", model]
    whole, whole_peak = run_sampled(["-m", "sagann.cli", "train", *common, "--memory-budget", "100GB"])
    ooc, ooc_peak = run_sampled(["-m", "sagann.cli", "train", *common, "--memory-budget", "8MB"])
    assert ooc["num_chunks"] >= min_chunks and ooc["num_chunks"] > whole["num_chunks"]  # really out of core: many more, smaller chunks
    assert ooc["losses"] == pytest.approx(whole["losses"], rel=1e-4)
    assert ooc_peak <= whole_peak + OUT_OF_CORE_SLACK, (
        f"out of core peaks at {ooc_peak >> 20} MiB anonymous, in memory at {whole_peak >> 20} MiB: "
        f"{(ooc_peak - whole_peak) >> 20} MiB more, over the {OUT_OF_CORE_SLACK >> 20} MiB allowed")
