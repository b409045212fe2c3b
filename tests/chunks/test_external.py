"""Partitioning an edge list on disk: equal to partition_graph, streaming writer, clear errors."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sagann.chunks import external as ex
from sagann.chunks.dataset import DatasetError, DatasetWriter, load_dataset, save_dataset, verify_dataset
from sagann.chunks.external import PartitionConfig, partition_edge_list
from sagann.chunks.partition import partition_graph
from sagann.chunks.reorder import Reorder, inverse_permutation

EDGE_NAMES = ("dst_ptr", "dst_idx", "src_idx", "src_rows", "src_ptr", "src_perm", "edge_ids")
N = 60


@pytest.fixture(autouse=True)
def _fast(monkeypatch):
    """No real fsync (slow on shared disks) and tiny blocks, so every pass crosses block boundaries."""
    monkeypatch.setattr(os, "fsync", lambda fd: None)
    monkeypatch.setattr(ex, "MAX_BLOCK_EDGES", 37)


def random_graph(seed: int, n: int = N, e: int = 300) -> np.ndarray:
    """Self loops, multi-edges, a heavy vertex and a tail of isolated vertices."""
    rng = np.random.default_rng(seed)
    live = n - n // 5
    ei = rng.integers(0, live, size=(2, e))
    loops = rng.integers(0, live, size=e // 10)
    heavy = np.stack([rng.integers(0, live, size=e // 5), np.full(e // 5, 3)])
    ei = np.concatenate([ei, np.stack([loops, loops]), ei[:, : e // 10], heavy], axis=1)
    return ei[:, rng.permutation(ei.shape[1])]


def write_edges(path: Path, ei: np.ndarray, fmt: str) -> Path:
    if fmt == "npy_2e":
        np.save(path.with_suffix(".npy"), ei.astype(np.int32))
    elif fmt == "npy_e2":
        np.save(path.with_suffix(".npy"), np.ascontiguousarray(ei.T))
    elif fmt == "npy_fortran":
        np.save(path.with_suffix(".npy"), np.asfortranarray(ei))
    else:
        lines = ["# an edge list", ""] + [f"{s} {d}" if k % 7 else f"  {s}\t{d}   # note" for k, (s, d) in enumerate(ei.T)]
        lines.insert(len(lines) // 2, "# " + "a comment longer than a whole block " * 20)
        path.with_suffix(".txt").write_text("\n".join(lines) + "\n")
        return path.with_suffix(".txt")
    return path.with_suffix(".npy")


def assert_same_chunks(got, ref) -> None:
    assert (got.num_vertices, got.num_edges, got.sub_chunk_nnz) == (ref.num_vertices, ref.num_edges, ref.sub_chunk_nnz)
    np.testing.assert_array_equal(got.bounds, ref.bounds)
    np.testing.assert_array_equal(got.in_degree, ref.in_degree)
    assert sorted(got.chunks) == sorted(ref.chunks)
    for key, subs in ref.chunks.items():
        assert len(got.chunks[key]) == len(subs), key
        for a, b in zip(got.chunks[key], subs):
            assert a.id == b.id and (a.src_start, a.dst_start, a.dst_offset) == (b.src_start, b.dst_start, b.dst_offset)
            for name in EDGE_NAMES:
                x, y = getattr(a, name), getattr(b, name)
                assert x.dtype == y.dtype, name
                np.testing.assert_array_equal(x, y, err_msg=f"{a.id!r}.{name}")


def run(tmp_path, ei, fmt="npy_2e", features=None, labels=None, name="out", **cfg):
    src = write_edges(tmp_path / f"edges-{fmt}", ei, fmt)
    paths = {}
    for key, arr in (("features", features), ("labels", labels)):
        if arr is not None:
            paths[key] = tmp_path / f"{key}.npy"
            np.save(paths[key], arr)
    cfg.setdefault("host_memory", "1GB")
    summary = partition_edge_list(src, tmp_path / name, PartitionConfig(**cfg), **paths)
    return summary, load_dataset(tmp_path / name)


# ---------------------------------------------------------------- equality


@pytest.mark.parametrize("fmt", ["npy_2e", "npy_e2", "npy_fortran", "text"])
@pytest.mark.parametrize("p", [1, 3, 7])
def test_equals_in_memory_partition(tmp_path, fmt, p):
    ei = random_graph(p)
    rng = np.random.default_rng(p)
    x, y = rng.standard_normal((N, 3)), rng.integers(0, 5, size=N)
    summary, ds = run(tmp_path, ei, fmt, features=x, labels=y, num_chunks=p, sub_chunk_nnz=4)
    assert_same_chunks(ds.partition, partition_graph(ei, N, p, sub_chunk_nnz=4))
    np.testing.assert_array_equal(ds.x, x.astype(np.float32))
    np.testing.assert_array_equal(ds.y, y)
    assert ds.vertex_order is None and ds.manifest["vertex_order"] is None
    assert summary.num_sub_chunks == ds.partition.num_sub_chunks and summary.num_chunks == p
    assert [q.name for q in tmp_path.iterdir() if q.name.startswith(".")] == []  # no temp litter


@pytest.mark.parametrize("how", ["degree", "rcm", "metis"])
def test_reorder_relabels_consistently(tmp_path, how):
    ei = random_graph(11)
    x = np.random.default_rng(0).standard_normal((N, 2)).astype(np.float32)
    y = np.arange(N) % 4
    _, ds = run(tmp_path, ei, features=x, labels=y, num_chunks=3, reorder=how, sub_chunk_nnz=5)
    order = np.asarray(ds.vertex_order)
    assert sorted(order.tolist()) == list(range(N)) and ds.manifest["vertex_order"]["method"] == how
    inv = inverse_permutation(order)
    # the same chunks as partitioning the relabelled edges in memory, with the dataset's bounds
    assert_same_chunks(ds.partition, partition_graph(inv[ei], N, 3, sub_chunk_nnz=5, bounds=ds.partition.bounds))
    if how != "metis":
        np.testing.assert_array_equal(ds.partition.bounds, partition_graph(inv[ei], N, 3).bounds)
    np.testing.assert_array_equal(ds.x, x[order])
    np.testing.assert_array_equal(ds.y, y[order])
    # results map back: dataset vertex k is input vertex order[k]
    np.testing.assert_array_equal(order[ds.partition.edge_index()], ei)
    if how == "degree":
        assert np.all(np.diff(ds.partition.in_degree) <= 0)


@pytest.mark.parametrize("how", ["none", "degree"])
def test_masks_are_stored_in_dataset_order(tmp_path, how):
    ei = random_graph(12)
    rng = np.random.default_rng(1)
    masks = {m: rng.random(N) < 0.4 for m in ("train", "val", "test")}
    paths = {}
    for m, a in masks.items():
        np.save(tmp_path / f"{m}.npy", a)
        paths[m] = tmp_path / f"{m}.npy"
    partition_edge_list(_edges(tmp_path, ei), tmp_path / "out", PartitionConfig(num_chunks=2, reorder=how, host_memory="1GB"), masks=paths)
    ds = load_dataset(tmp_path / "out")
    order = np.arange(N) if ds.vertex_order is None else np.asarray(ds.vertex_order)
    assert sorted(ds.masks) == ["test", "train", "val"]
    for m, a in masks.items():
        np.testing.assert_array_equal(ds.masks[m], a[order])


def test_number_of_vertices_from_ids_features_or_flag(tmp_path):
    ei = random_graph(3)  # the last fifth of the ids never appears
    top = int(ei.max()) + 1
    _, ds = run(tmp_path, ei, name="ids", num_chunks=2)
    assert ds.partition.num_vertices == top
    _, ds = run(tmp_path, ei, name="feat", num_chunks=2, features=np.ones((N, 1), np.float32))
    assert ds.partition.num_vertices == N
    _, ds = run(tmp_path, ei, name="flag", num_chunks=2, num_vertices=N + 9)
    assert_same_chunks(ds.partition, partition_graph(ei, N + 9, 2))


@pytest.mark.parametrize("n, p", [(5, 1), (5, 3), (0, 1)])
def test_graphs_without_edges(tmp_path, n, p):
    ei = np.zeros((2, 0), dtype=np.int64)
    _, ds = run(tmp_path, ei, num_chunks=p, num_vertices=n)
    assert_same_chunks(ds.partition, partition_graph(ei, n, p))
    verify_dataset(tmp_path / "out")


def test_auto_chunks_is_the_smallest_p_that_fits(tmp_path, monkeypatch):
    ei = random_graph(5, e=3000)
    monkeypatch.setattr(ex, "RESERVE_BYTES", 0)
    host = ex.VERTEX_BYTES * N + 400 * ex.BUCKET_BYTES  # room for 400 edges per row bucket
    summary, ds = run(tmp_path, ei, host_memory=host, num_vertices=N)
    p = summary.num_chunks
    rows = [sum(c.nnz for c in ds.partition.row(i)) for i in range(p)]
    assert 1 < p and max(rows) <= 400 and summary.max_bucket_edges == max(rows)
    smaller = partition_graph(ei, N, p - 1)
    assert max(sum(c.nnz for c in smaller.row(i)) for i in range(p - 1)) > 400
    assert_same_chunks(ds.partition, partition_graph(ei, N, p, sub_chunk_nnz=ds.partition.sub_chunk_nnz))


# ---------------------------------------------------------------- bad inputs


def _edges(tmp_path, arr, name="bad.npy") -> Path:
    path = tmp_path / name
    if isinstance(arr, str):
        path.write_text(arr)
    else:
        np.save(path, arr, allow_pickle=True)
    return path


BAD = [
    ("negative id", lambda t: _edges(t, np.array([[0, 1, -4], [1, 2, 3]])), {}, r"edge 2 \(column 2 of the \[2, E\] array\) has negative vertex id -4"),
    ("id out of range", lambda t: _edges(t, np.array([[0, 1], [1, 9]])), {"num_vertices": 5}, r"edge 1 .* vertex id 9 .*--num-vertices 5.*\[0, 5\)"),
    ("float ids", lambda t: _edges(t, np.array([[0.0, 1.5], [1.0, 2.0]])), {}, r"float64 values but vertex ids must be integers"),
    ("bool ids", lambda t: _edges(t, np.ones((2, 3), bool)), {}, r"must be integers"),
    ("wrong shape", lambda t: _edges(t, np.zeros((3, 4), np.int64)), {}, r"shape \[2, E\] or \[E, 2\], got \[3, 4\]"),
    ("3-D", lambda t: _edges(t, np.zeros((2, 2, 2), np.int64)), {}, r"got \[2, 2, 2\]"),
    ("pickled objects", lambda t: _edges(t, np.array([[0, 1], [1, object()]], dtype=object)), {}, r"not a readable \.npy"),
    ("npz", lambda t: (np.savez(t / "e.npz", a=np.zeros((2, 2))), t / "e.npz")[1], {}, r"\.npz archive"),
    ("not npy", lambda t: _edges(t, "0 1\n", "e.npy"), {}, r"named \.npy but is not a \.npy"),
    ("missing", lambda t: t / "nothing.txt", {}, r"no such file"),
    ("text word", lambda t: _edges(t, "# c\n0 1\n\n2 x\n", "e.txt"), {}, r"line 4: 'x' is not an integer vertex id"),
    ("text float", lambda t: _edges(t, "0 1\n2 3.5\n", "e.txt"), {}, r"line 2: '3.5' is not an integer"),
    ("text fields", lambda t: _edges(t, "0 1\n2 3 4\n", "e.txt"), {}, r"line 2 has 3 fields"),
    ("text one field", lambda t: _edges(t, "0 1\n2\n", "e.txt"), {}, r"line 2 has 1 fields"),
    ("text negative", lambda t: _edges(t, "# a\n\n0 1\n# b\n5 -2\n", "e.txt"), {}, r"line 5 has negative vertex id -2"),
    ("text too large", lambda t: _edges(t, "0 1\n1 7\n", "e.txt"), {"num_vertices": 3}, r"line 2 has vertex id 7"),
    ("chunks zero", lambda t: _edges(t, np.array([[0], [1]])), {"num_chunks": 0}, r"--chunks must be an int >= 1 or 'auto'"),
    ("chunks word", lambda t: _edges(t, np.array([[0], [1]])), {"num_chunks": "many"}, r"--chunks must be"),
    ("reorder name", lambda t: _edges(t, np.array([[0], [1]])), {"reorder": "random"}, r"unknown reorder 'random'; known: none, degree, rcm, metis"),
    ("host memory word", lambda t: _edges(t, np.array([[0], [1]])), {"host_memory": "lots"}, r"cannot read memory size"),
    ("host memory for vertices", lambda t: _edges(t, np.array([[0], [1]])), {"host_memory": "1MB", "num_vertices": 10**6}, r"cannot hold the per-vertex arrays"),
    ("bucket too big", lambda t: _edges(t, random_graph(0, e=3000)), {"host_memory": 64 * 2**20 + 20_000, "num_chunks": 2}, r"--chunks 2: row bucket \d holds \d+ edges.*use --chunks auto \(P=\d+ fits\)"),
    ("heavy source", lambda t: _edges(t, np.zeros((2, 5000), np.int64)), {"host_memory": 64 * 2**20 + 20_000}, r"vertex 0 alone has 5000 out-edges"),
    ("sub-chunk nnz", lambda t: _edges(t, np.array([[0], [1]])), {"sub_chunk_nnz": 0}, r"--sub-chunk-nnz must be an int >= 1"),
]


@pytest.mark.parametrize("what, make, cfg, message", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_one_clear_line_and_writes_nothing(tmp_path, what, make, cfg, message):
    (tmp_path / "in").mkdir()
    path = make(tmp_path / "in")
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=message) as err:
        partition_edge_list(path, out, PartitionConfig(**{"host_memory": "1GB", **cfg}))
    assert "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == [tmp_path / "in"]


VERTEX_BAD = [
    ("features NaN", {"features": np.where(np.arange(N)[:, None] == 17, np.nan, 1.0)}, r"features\.npy: row 17 \(vertex 17\) holds NaN or Inf"),
    ("features Inf", {"features": np.where(np.arange(N)[:, None] == 3, np.inf, 1.0).astype(np.float32)}, r"row 3 .* NaN or Inf"),
    ("features beyond float32", {"features": np.where(np.arange(N)[:, None] == 5, 1e300, 1.0)}, r"row 5 .* NaN or Inf \(or a value beyond float32\)"),
    ("features int", {"features": np.ones((N, 2), np.int64)}, r"features must be floating point"),
    ("features 1-D", {"features": np.ones(N)}, r"shape \[N, F\], got \[60\] \(save x.reshape\(-1, 1\)"),
    ("labels negative", {"labels": np.where(np.arange(N) == 9, -1, 2)}, r"labels\.npy: row 9 holds class id -1"),
    ("labels float", {"labels": np.ones(N)}, r"labels must be integer class ids"),
    ("labels one-hot", {"labels": np.ones((N, 3), np.int64)}, r"labels must have shape \[N\]"),
    ("rows disagree", {"features": np.ones((N, 2)), "labels": np.ones(N - 1, np.int64)}, r"60 rows of the features .* 59 rows of the labels .* disagree"),
    ("ids beyond features", {"features": np.ones((10, 2))}, r"vertex id \d+ but the 10 rows of the features features\.npy make N=10"),
]


@pytest.mark.parametrize("what, arrays, message", VERTEX_BAD, ids=[b[0] for b in VERTEX_BAD])
def test_bad_vertex_data_writes_nothing(tmp_path, what, arrays, message):
    with pytest.raises(ValueError, match=message):
        run(tmp_path, random_graph(0), num_chunks=2, **arrays)
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_metis_refuses_a_graph_beyond_the_budget(tmp_path):
    path = _edges(tmp_path, random_graph(0, e=20_000))
    with pytest.raises(ValueError, match=r"--reorder metis needs the whole graph in memory .* use --reorder degree\|none"):
        partition_edge_list(path, tmp_path / "out", PartitionConfig(host_memory=64 * 2**20 + 500_000, reorder="metis"))
    assert not (tmp_path / "out").exists()


def test_existing_output_is_refused_unless_overwrite(tmp_path):
    ei = random_graph(1)
    run(tmp_path, ei, num_chunks=2)
    with pytest.raises(ValueError, match="already exists; pass overwrite=True"):
        run(tmp_path, ei, num_chunks=3)
    _, ds = run(tmp_path, ei, num_chunks=3, overwrite=True)
    assert ds.partition.num_chunks == 3


def test_reorder_names():
    assert Reorder.parse("METIS") is Reorder.METIS
    with pytest.raises(ValueError, match="known: none, degree, rcm, metis"):
        Reorder.parse("bfs")


# ---------------------------------------------------------------- the streaming writer


def _part(p: int = 3):
    return partition_graph(random_graph(2), N, p, sub_chunk_nnz=6)


def test_writer_matches_save_dataset(tmp_path):
    part = _part()
    save_dataset(tmp_path / "a", part)
    with DatasetWriter(tmp_path / "b", N, part.num_edges, part.bounds, part.sub_chunk_nnz) as w:
        for c in part.sub_chunks():
            w.add_sub_chunk(c)
        w.write_in_degree(iter([part.in_degree[:7], part.in_degree[7:]]), shape=(N,))
    for name in ("chunk_index.npy", "dst_ptr.npy", "src_perm.npy", "edge_ids.npy", "in_degree.npy"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    verify_dataset(tmp_path / "b")


def test_writer_refuses_out_of_order_and_incomplete(tmp_path):
    part = _part()
    subs = list(part.sub_chunks())
    with pytest.raises(ValueError, match=r"comes after .*sub_chunks\(\) order"):
        with DatasetWriter(tmp_path / "ds", N, part.num_edges, part.bounds, 6) as w:
            w.add_sub_chunk(subs[1])
            w.add_sub_chunk(subs[0])
    with pytest.raises(ValueError, match=r"hold \d+ edges but num_edges=\d+; add every sub-chunk"):
        with DatasetWriter(tmp_path / "ds", N, part.num_edges, part.bounds, 6) as w:
            w.add_sub_chunk(subs[0])
            w.write_in_degree(part.in_degree)
    with pytest.raises(ValueError, match="in_degree was not written"):
        with DatasetWriter(tmp_path / "ds", N, 0, [0, N], 6):
            pass
    assert list(tmp_path.iterdir()) == []


def test_verify_rejects_a_vertex_order_that_is_not_a_permutation(tmp_path):
    with DatasetWriter(tmp_path / "ds", 4, 0, [0, 4], 6) as w:
        w.write_in_degree(np.zeros(4, np.int64))
        w.write_vertex_order(np.array([0, 1, 1, 3]), "degree")
    with pytest.raises(DatasetError, match="not a permutation"):
        verify_dataset(tmp_path / "ds")


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temp_dirs_of_dead_processes_are_removed(tmp_path):
    dead = tmp_path / f".ds.tmp-{_dead_pid()}-0abc"
    live = tmp_path / f".ds.tmp-{os.getppid()}-0abc"  # our parent is alive: keep its work
    other = tmp_path / f".other.tmp-{_dead_pid()}-0abc"  # another dataset's
    for d in (dead, live, other):
        (d / "scratch").mkdir(parents=True)
    save_dataset(tmp_path / "ds", _part())
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["ds", live.name, other.name])


def test_dataset_set_aside_by_a_killed_swap_comes_back(tmp_path):
    save_dataset(tmp_path / "ds", _part(2))
    os.rename(tmp_path / "ds", tmp_path / f".ds.old-{_dead_pid()}-0abc")  # killed between the two renames
    with pytest.raises(ValueError, match="already exists"):
        save_dataset(tmp_path / "ds", _part(3))  # the old dataset is restored, not lost
    assert load_dataset(tmp_path / "ds").partition.num_chunks == 2
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]
