"""`sagann partition` and `sagann verify`: end to end and kill -9 at random points (bad input: tests/test_bad_input.py)."""
from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from sagann.chunks.dataset import DatasetError, load_dataset, verify_dataset
from sagann.chunks.partition import partition_graph
from sagann.chunks.synthetic import rmat
from sagann.cli import main

EDGE_NAMES = ("dst_ptr", "dst_idx", "src_idx", "src_rows", "src_ptr", "src_perm", "edge_ids")


def assert_same_chunks(got, ref) -> None:
    np.testing.assert_array_equal(got.bounds, ref.bounds)
    assert sorted(got.chunks) == sorted(ref.chunks)
    for key, subs in ref.chunks.items():
        for a, b in zip(got.chunks[key], subs, strict=True):
            for name in EDGE_NAMES:
                np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=f"{a.id!r}.{name}")


@pytest.fixture
def inputs(tmp_path):
    rng = np.random.default_rng(0)
    ei = rng.integers(0, 50, size=(2, 400))
    d = tmp_path / "in"
    d.mkdir()
    np.save(d / "edges.npy", ei)
    np.save(d / "x.npy", rng.standard_normal((50, 3)).astype(np.float32))
    np.save(d / "y.npy", rng.integers(0, 3, size=50))
    return d, ei


def test_partition_then_verify(inputs, capsys):
    d, ei = inputs
    out = d.parent / "ds"
    args = ["partition", str(d / "edges.npy"), str(out), "--chunks", "3", "--sub-chunk-nnz", "9", "--features", str(d / "x.npy"), "--labels", str(d / "y.npy"), "--reorder", "degree"]
    assert main(args) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"wrote {out}: 50 vertices, 400 edges, 3 x 3 chunks") and "\n" not in line
    assert main(["verify", str(out)]) == 0
    ok = capsys.readouterr()
    assert ok.out.startswith(f"OK {out}: 50 vertices, 400 edges") and ok.out.count("\n") == 1 and ok.err == ""
    ds = load_dataset(out)
    order = np.asarray(ds.vertex_order)
    np.testing.assert_array_equal(ds.x, np.load(d / "x.npy")[order])
    assert main(["partition", str(d / "edges.npy"), str(out), "--chunks", "auto", "--overwrite", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["num_edges"] == 400 and summary["num_chunks"] == 1
    assert_same_chunks(load_dataset(out).partition, partition_graph(ei, 50, 1))


# Bad input and damaged datasets (`sagann partition` / `sagann verify` refusing in one line,
# writing nothing) are rows of the matrix in tests/test_bad_input.py.


# ---------------------------------------------------------------- crash safety


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "sagann.cli", *args]


def _verifies(path: Path) -> bool:
    try:
        verify_dataset(path)
    except DatasetError:
        return False
    return True


def test_kill_9_at_random_points_never_leaves_a_valid_looking_partial(tmp_path):
    """SIGKILL real `sagann partition` runs at random moments; OUT is absent or complete; a rerun completes."""
    ei = rmat(100_000, 2_000_000, seed=7)
    edges = tmp_path / "edges.npy"
    np.save(edges, ei)
    work = tmp_path / "work"
    work.mkdir()
    out = work / "ds"
    cmd = _cli("partition", str(edges), str(out), "--chunks", "5", "--num-vertices", "100000", "--host-memory", "100MB", "--sub-chunk-nnz", "20000")

    def started_writing() -> bool:
        return any(p.name.startswith(".ds.tmp-") for p in work.iterdir())

    def wait_for(cond, proc) -> float:
        t0 = time.perf_counter()
        while not cond() and proc.poll() is None:
            time.sleep(0.002)
        return time.perf_counter() - t0

    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    before = wait_for(started_writing, proc)  # import + pass 1
    writing = wait_for(out.exists, proc)  # passes 2 and 3, commit
    assert proc.wait() == 0 and writing > 0
    shutil.rmtree(out)
    rng = random.Random(1234)
    # one kill during start-up or pass 1, four spread over the writing phase (each jittered)
    plan = [(None, rng.uniform(0.3, 1.0) * before)] + [(started_writing, (k + rng.random()) / 4 * writing) for k in range(4)]
    outcomes = []
    for cond, delay in plan:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if cond is not None:
            wait_for(cond, proc)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if out.exists():  # the kill came after the final rename: it must be the whole dataset
            assert _verifies(out)
            outcomes.append("complete")
            shutil.rmtree(out)
        else:
            outcomes.append(f"absent ({len(list(work.iterdir()))} temp dirs)")
    subprocess.run(cmd, check=True, capture_output=True)  # a rerun into the same OUT completes...
    assert [p.name for p in work.iterdir()] == ["ds"], outcomes  # ...and removes the dead runs' temp dirs
    assert _verifies(out)
    assert_same_chunks(load_dataset(out).partition, partition_graph(ei, 100_000, 5, sub_chunk_nnz=20000))
