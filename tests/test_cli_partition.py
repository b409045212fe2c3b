"""`sagann partition` and `sagann verify`: end to end, bad input, and kill -9 at random points."""
from __future__ import annotations

import json
import os
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


CLI_BAD = [
    ("negative id", lambda d: np.save(d / "e.npy", np.array([[0, -1], [1, 2]])), [], "edge 1 (column 1 of the [2, E] array) has negative vertex id -1"),
    ("id beyond N", lambda d: np.save(d / "e.npy", np.array([[0, 1], [1, 70]])), ["--num-vertices", "50"], "vertex id 70 but --num-vertices 50"),
    ("float ids", lambda d: np.save(d / "e.npy", np.array([[0.5, 1], [1, 2]])), [], "vertex ids must be integers"),
    ("text", lambda d: (d / "e.npy").write_text("0 1\n1 two\n"), [], "named .npy but is not a .npy array"),
    ("chunks", lambda d: np.save(d / "e.npy", np.array([[0], [1]])), ["--chunks", "-2"], "--chunks must be an int >= 1 or 'auto'"),
    ("reorder", lambda d: np.save(d / "e.npy", np.array([[0], [1]])), ["--reorder", "bfs"], "known: none, degree, rcm, metis"),
    ("host memory", lambda d: np.save(d / "e.npy", np.array([[0], [1]])), ["--host-memory", "2 potatoes"], "cannot read memory size"),
    ("NaN features", lambda d: (np.save(d / "e.npy", np.array([[0], [1]])), np.save(d / "f.npy", np.array([[1.0], [np.nan]]))), ["--features", "{d}/f.npy"], "row 1 (vertex 1) holds NaN or Inf"),
    ("missing features", lambda d: np.save(d / "e.npy", np.array([[0], [1]])), ["--features", "{d}/none.npy"], "none.npy: no such file"),
]


@pytest.mark.parametrize("what, make, extra, message", CLI_BAD, ids=[b[0] for b in CLI_BAD])
def test_bad_input_exits_1_with_one_line_and_writes_nothing(tmp_path, capsys, what, make, extra, message):
    d = tmp_path / "in"
    d.mkdir()
    make(d)
    out = tmp_path / "ds"
    assert main(["partition", str(d / "e.npy"), str(out)] + [a.format(d=d) for a in extra]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and "Traceback" not in captured.err
    assert captured.err.count("\n") == 1 and captured.err.startswith("sagann partition: error: ") and message in captured.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


def _flip_byte(ds: Path) -> None:
    p = ds / "src_idx.npy"
    data = bytearray(p.read_bytes())
    data[-1] ^= 0x40
    p.write_bytes(bytes(data))


CORRUPT = [
    ("flipped byte", _flip_byte, "sha256 mismatch"),
    ("truncated", lambda ds: os.truncate(ds / "edge_ids.npy", 100), "truncated or modified"),
    ("missing file", lambda ds: (ds / "dst_ptr.npy").unlink(), "dst_ptr.npy is missing"),
    ("extra file", lambda ds: np.save(ds / "extra.npy", np.zeros(2)), "extra.npy is not listed"),
    ("no manifest", lambda ds: (ds / "manifest.json").unlink(), "manifest.json is missing"),
    ("newer format", lambda ds: (ds / "manifest.json").write_text(json.dumps({**json.loads((ds / "manifest.json").read_text()), "format_version": 99})), "newer sagann"),
    ("not a dataset", lambda ds: shutil.rmtree(ds), "does not exist"),
]


@pytest.mark.parametrize("what, damage, message", CORRUPT, ids=[c[0] for c in CORRUPT])
def test_verify_rejects_damage_in_one_line(inputs, capsys, what, damage, message):
    d, _ = inputs
    out = d.parent / "ds"
    assert main(["partition", str(d / "edges.npy"), str(out), "--chunks", "2"]) == 0
    damage(out)
    capsys.readouterr()
    assert main(["verify", str(out)]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and "Traceback" not in captured.err and captured.err.count("\n") == 1
    assert captured.err.startswith(f"sagann verify: {out}: INVALID: ") and message in captured.err


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
