"""Tests for the on-disk dataset format: round trips, corruption, atomic saves."""
from __future__ import annotations

import hashlib
import json
import mmap
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sagann.chunks import _validate, files
from sagann.chunks import writer as writer_mod
from sagann.chunks.dataset import (
    FORMAT_VERSION,
    INDEX_COLUMNS,
    DatasetError,
    load_dataset,
    save_dataset,
    verify_dataset,
)
from sagann.chunks.partition import partition_graph

EDGE_NAMES = ("dst_ptr", "dst_idx", "src_idx", "src_rows", "src_ptr", "src_perm", "edge_ids")
REAL_FSYNC = os.fsync


@pytest.fixture(autouse=True)
def _skip_disk_flush(monkeypatch):
    """fsync is slow on shared disks; only test_every_file_is_fsynced flushes for real."""
    monkeypatch.setattr(os, "fsync", lambda fd: None)


def random_graph(seed: int, n: int = 40, e: int = 200) -> np.ndarray:
    """Edges with self loops, multi-edges and a tail of isolated vertices."""
    rng = np.random.default_rng(seed)
    live = max(1, n - n // 5)  # the last fifth of the vertices stay isolated
    ei = rng.integers(0, live, size=(2, e))
    loops = rng.integers(0, live, size=e // 10)
    ei = np.concatenate([ei, np.stack([loops, loops]), ei[:, : e // 10]], axis=1)  # self loops, duplicates
    return ei[:, rng.permutation(ei.shape[1])]


def full_inputs(seed: int, n: int, e: int) -> dict:
    rng = np.random.default_rng(seed + 1000)
    return dict(
        x=rng.standard_normal((n, 5)).astype(np.float32),
        y=rng.integers(0, 4, size=n),
        masks={"train": rng.random(n) < 0.5, "val-set_2": rng.random(n) < 0.2},
        edge_data=rng.random((e, 2)).astype(np.float32),
        num_classes=6,
    )


def assert_same_partition(a, b) -> None:
    assert a.num_vertices == b.num_vertices and a.num_edges == b.num_edges
    assert a.sub_chunk_nnz == b.sub_chunk_nnz
    np.testing.assert_array_equal(a.bounds, b.bounds)
    np.testing.assert_array_equal(a.in_degree, b.in_degree)
    assert sorted(a.chunks) == sorted(b.chunks)
    for key in a.chunks:
        assert len(a.chunks[key]) == len(b.chunks[key])
        for ca, cb in zip(a.chunks[key], b.chunks[key]):
            assert ca.id == cb.id
            assert (ca.src_start, ca.dst_start, ca.dst_offset) == (cb.src_start, cb.dst_start, cb.dst_offset)
            for name in EDGE_NAMES:
                xa, xb = getattr(ca, name), getattr(cb, name)
                assert xa.dtype == xb.dtype, name
                np.testing.assert_array_equal(xa, xb, err_msg=f"{ca.id!r}.{name}")
            cb.validate()


def is_mmap_backed(a: np.ndarray) -> bool:
    while a is not None:
        if isinstance(a, mmap.mmap):
            return True
        a = getattr(a, "base", None)
    return False


def rehash(root: Path, name: str) -> None:
    """Make the manifest agree with a rewritten file's size and checksum (not its shape)."""
    mpath = root / "manifest.json"
    m = json.loads(mpath.read_text())
    data = (root / name).read_bytes()
    m["files"][name].update(sha256=hashlib.sha256(data).hexdigest(), nbytes=len(data))
    mpath.write_text(json.dumps(m))


def edit_manifest(root: Path, fn) -> None:
    mpath = root / "manifest.json"
    m = json.loads(mpath.read_text())
    fn(m)
    mpath.write_text(json.dumps(m))


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("num_chunks", [1, 2, 3, 7])
@pytest.mark.parametrize("sub_chunk_nnz", [1, 4, 1000])
@pytest.mark.parametrize("use_mmap", [True, False])
def test_round_trip(tmp_path, num_chunks, sub_chunk_nnz, use_mmap):
    ei = random_graph(num_chunks * 10 + sub_chunk_nnz)
    n = 40
    part = partition_graph(ei, n, num_chunks, sub_chunk_nnz=sub_chunk_nnz)
    inputs = full_inputs(num_chunks, n, ei.shape[1])
    out = save_dataset(tmp_path / "ds", part, **inputs)
    assert out == (tmp_path / "ds").absolute()
    ds = load_dataset(out, mmap=use_mmap)
    assert_same_partition(part, ds.partition)
    np.testing.assert_array_equal(ds.partition.edge_index(), ei)
    np.testing.assert_array_equal(ds.x, inputs["x"])
    np.testing.assert_array_equal(ds.y, inputs["y"])
    assert ds.y.dtype == np.int64 and ds.num_classes == 6
    assert set(ds.masks) == set(inputs["masks"])
    for name, m in inputs["masks"].items():
        np.testing.assert_array_equal(ds.masks[name], m)
    np.testing.assert_array_equal(ds.edge_data, inputs["edge_data"])
    assert isinstance(ds.x, np.memmap) == use_mmap


def test_empty_chunks_and_empty_intervals(tmp_path):
    # P > N gives empty intervals; a graph confined to a few vertices leaves most E_ij empty
    ei = np.array([[0, 0, 2, 2, 2], [0, 2, 2, 2, 0]])
    part = partition_graph(ei, 4, 7, sub_chunk_nnz=1)
    assert len(part.chunks) < 49
    save_dataset(tmp_path / "ds", part)
    ds = load_dataset(tmp_path / "ds")
    assert_same_partition(part, ds.partition)
    np.testing.assert_array_equal(ds.partition.edge_index(), ei)
    assert ds.x is None and ds.y is None and ds.edge_data is None and ds.masks == {}
    assert ds.num_classes is None


@pytest.mark.parametrize("n", [0, 5])
def test_graph_without_edges(tmp_path, n):
    part = partition_graph(np.zeros((2, 0), dtype=np.int64), n, 1)
    save_dataset(tmp_path / "ds", part, x=np.zeros((n, 3), np.float32), y=np.zeros(n, np.int64), masks={"m": np.zeros(n, bool)})
    verify_dataset(tmp_path / "ds")
    ds = load_dataset(tmp_path / "ds")
    assert ds.partition.num_sub_chunks == 0
    assert ds.partition.edge_index().shape == (2, 0)
    assert ds.x.shape == (n, 3) and ds.num_classes == (1 if n else 0)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 30),
    e=st.integers(0, 80),
    num_chunks=st.integers(1, 8),
    sub_chunk_nnz=st.integers(1, 10),
    seed=st.integers(0, 2**31),
)
def test_round_trip_property(n, e, num_chunks, sub_chunk_nnz, seed):
    rng = np.random.default_rng(seed)
    ei = rng.integers(0, n, size=(2, e))
    part = partition_graph(ei, n, num_chunks, sub_chunk_nnz=sub_chunk_nnz)
    edge_data = rng.random(e)
    with tempfile.TemporaryDirectory() as d:
        save_dataset(Path(d) / "ds", part, edge_data=edge_data)
        ds = load_dataset(Path(d) / "ds")
        assert_same_partition(part, ds.partition)
        np.testing.assert_array_equal(ds.partition.edge_index(), ei)
        np.testing.assert_array_equal(ds.edge_data, edge_data.astype(np.float32))


def test_torch_inputs_and_dtypes(tmp_path):
    ei = random_graph(3)
    part = partition_graph(ei, 40, 2, sub_chunk_nnz=16)
    x = torch.randn(40, 3, dtype=torch.float16)
    y = torch.randint(0, 3, (40,))
    mask = torch.rand(40) < 0.5
    ed = torch.rand(ei.shape[1], dtype=torch.float64)
    save_dataset(tmp_path / "ds", part, x=x, y=y, masks={"train": mask}, edge_data=ed)
    ds = load_dataset(tmp_path / "ds")
    assert ds.x.dtype == np.float16 and ds.edge_data.dtype == np.float32  # float64 is stored as float32
    np.testing.assert_array_equal(ds.x, x.numpy())
    np.testing.assert_array_equal(ds.y, y.numpy())
    np.testing.assert_array_equal(ds.masks["train"], mask.numpy())
    np.testing.assert_allclose(ds.edge_data, ed.numpy().astype(np.float32))
    assert ds.num_classes == int(y.max()) + 1


def test_features_streamed_in_blocks(tmp_path, monkeypatch):
    for mod in (files, _validate, writer_mod):  # many tiny blocks
        monkeypatch.setattr(mod, "BLOCK_BYTES", 64)
    rng = np.random.default_rng(0)
    part = partition_graph(random_graph(0), 40, 2)
    x = rng.standard_normal((40, 7))  # float64 -> float32, cast block by block
    save_dataset(tmp_path / "ds", part, x=x)
    np.testing.assert_array_equal(load_dataset(tmp_path / "ds").x, x.astype(np.float32))


def test_mmap_is_zero_copy(tmp_path):
    part = partition_graph(random_graph(1), 40, 3, sub_chunk_nnz=8)
    save_dataset(tmp_path / "ds", part, **full_inputs(1, 40, random_graph(1).shape[1]))
    ds = load_dataset(tmp_path / "ds", mmap=True, verify=False)
    for c in ds.partition.sub_chunks():
        for name in EDGE_NAMES:
            a = getattr(c, name)
            assert is_mmap_backed(a), f"{c.id!r}.{name} is not memory-mapped"
            assert not a.flags.writeable
    for a in (ds.x, ds.y, ds.edge_data, ds.partition.in_degree, *ds.masks.values()):
        assert is_mmap_backed(a)
    ram = load_dataset(tmp_path / "ds", mmap=False)
    assert not any(is_mmap_backed(getattr(c, n)) for c in ram.partition.sub_chunks() for n in EDGE_NAMES)


def test_layout_on_disk(tmp_path):
    ei = random_graph(2)
    part = partition_graph(ei, 40, 7, sub_chunk_nnz=2)
    root = save_dataset(tmp_path / "ds", part, **full_inputs(2, 40, ei.shape[1]))
    m = json.loads((root / "manifest.json").read_text())
    assert m["format_version"] == FORMAT_VERSION
    assert m["created_by"].startswith("sagann ")
    assert (m["num_vertices"], m["num_edges"], m["num_chunks"], m["sub_chunk_nnz"]) == (40, ei.shape[1], 7, 2)
    assert m["bounds"] == part.bounds.tolist()
    assert m["features"] == {"shape": [40, 5], "dtype": "float32"}
    assert m["labels"] == {"shape": [40], "dtype": "int64", "num_classes": 6}
    assert m["masks"] == ["train", "val-set_2"]
    names = {p.name for p in root.iterdir()}
    assert names == set(m["files"]) | {"manifest.json"}
    assert {f"{a}.npy" for a in EDGE_NAMES} <= names and len(names) == 15  # not one file per chunk
    for name, entry in m["files"].items():
        data = (root / name).read_bytes()
        assert entry["nbytes"] == len(data) and entry["sha256"] == hashlib.sha256(data).hexdigest()
        arr = np.load(root / name, allow_pickle=False)
        assert list(arr.shape) == entry["shape"] and arr.dtype.name == entry["dtype"]
    index = np.load(root / "chunk_index.npy")
    assert index.shape == (part.num_sub_chunks, len(INDEX_COLUMNS))
    assert m["chunk_index_columns"] == list(INDEX_COLUMNS)
    assert list(tmp_path.iterdir()) == [root]  # no temp litter


def test_every_file_is_fsynced(tmp_path, monkeypatch):
    if not os.path.exists("/proc/self/fd"):
        pytest.skip("needs /proc to name file descriptors")
    synced = []
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), REAL_FSYNC(fd)))
    root = save_dataset(str(tmp_path / "ds"), _part(), x=np.ones((40, 2)), masks={"a": np.ones(40, bool)})
    names = {os.path.basename(p) for p in synced}
    assert set(json.loads((root / "manifest.json").read_text())["files"]) | {"manifest.json"} <= names
    assert synced[-1] == os.path.realpath(tmp_path)  # the parent, after the rename
    assert isinstance(root, Path)
    verify_dataset(str(root))


# ---------------------------------------------------------------- corruption


@pytest.fixture
def saved(tmp_path) -> Path:
    ei = random_graph(5)
    part = partition_graph(ei, 40, 3, sub_chunk_nnz=8)
    return save_dataset(tmp_path / "ds", part, **full_inputs(5, 40, ei.shape[1]))


def expect_error(root: Path, *fragments: str, load_too: bool = True) -> str:
    with pytest.raises(DatasetError) as info:
        verify_dataset(root)
    msg = str(info.value)
    assert "\n" not in msg, msg
    for frag in fragments:
        assert frag in msg, f"{frag!r} not in {msg!r}"
    if load_too:
        with pytest.raises(DatasetError):
            load_dataset(root)
    return msg


ALL_FILES = [f"{a}.npy" for a in EDGE_NAMES] + [
    "chunk_index.npy",
    "in_degree.npy",
    "features.npy",
    "labels.npy",
    "mask_train.npy",
    "mask_val-set_2.npy",
    "edge_data.npy",
]


@pytest.mark.parametrize("name", ALL_FILES)
@pytest.mark.parametrize("where", ["header", "data"])
def test_flipped_byte(saved, name, where):
    path = saved / name
    buf = bytearray(path.read_bytes())
    pos = 20 if where == "header" else len(buf) - 1 - len(buf) // 7 % 3
    buf[pos] ^= 0x41
    path.write_bytes(bytes(buf))
    expect_error(saved, name, "sha256 mismatch", "re-save")


def test_valid_dataset_passes(saved):
    assert verify_dataset(saved) is None
    load_dataset(saved, verify=True)


def test_truncated_file(saved):
    path = saved / "src_idx.npy"
    path.write_bytes(path.read_bytes()[:-4])
    expect_error(saved, "src_idx.npy", "truncated")
    with pytest.raises(DatasetError, match="truncated"):  # sizes are checked even without hashing
        load_dataset(saved, verify=False)


def test_truncated_file_with_matching_manifest(saved):
    path = saved / "edge_ids.npy"
    path.write_bytes(path.read_bytes()[:-8])
    rehash(saved, "edge_ids.npy")
    expect_error(saved, "edge_ids.npy", "does not match the file size")


def test_removed_file(saved):
    (saved / "dst_ptr.npy").unlink()
    expect_error(saved, "dst_ptr.npy", "missing")


def test_extra_file(saved):
    np.save(saved / "stray.npy", np.arange(3))
    expect_error(saved, "stray.npy", "not listed")


def test_missing_directory(tmp_path):
    expect_error(tmp_path / "nope", "does not exist")


def test_missing_manifest(saved):
    (saved / "manifest.json").unlink()
    expect_error(saved, "manifest.json", "missing")


def test_manifest_not_json(saved):
    mpath = saved / "manifest.json"
    mpath.write_bytes(b"#" + mpath.read_bytes()[1:])
    expect_error(saved, "manifest.json", "not valid JSON")


def test_newer_format_version(saved):
    edit_manifest(saved, lambda m: m.update(format_version=FORMAT_VERSION + 1))
    expect_error(saved, "newer sagann", "upgrade")


@pytest.mark.parametrize("bad_name", ["../x.npy", "/etc/passwd", "sub/x.npy", "..", "a\\b.npy"])
def test_file_name_outside_directory(saved, bad_name):
    def move(m):
        m["files"][bad_name] = m["files"].pop("labels.npy")

    edit_manifest(saved, move)
    expect_error(saved, repr(bad_name), "not a plain file name")


def test_manifest_lists_unknown_file(saved):
    def add(m):
        m["files"]["other.npy"] = m["files"]["labels.npy"]

    edit_manifest(saved, add)
    expect_error(saved, "other.npy", "this format does not have")


def test_manifest_dtype_disagreement(saved):
    edit_manifest(saved, lambda m: m["files"]["dst_idx.npy"].update(dtype="int64"))
    expect_error(saved, "dst_idx.npy", "int32")


def test_manifest_shape_disagreement(saved):
    edit_manifest(saved, lambda m: m["features"].update(shape=[40, 6]))
    expect_error(saved, "features")


def test_file_shape_disagrees_with_manifest(saved):
    np.save(saved / "labels.npy", np.zeros(40, np.int32))
    rehash(saved, "labels.npy")
    expect_error(saved, "labels.npy", "holds int32")


def test_num_classes_below_labels(saved):
    edit_manifest(saved, lambda m: m["labels"].update(num_classes=2))
    expect_error(saved, "labels.npy", "outside [0, 2)")


def test_missing_manifest_key(saved):
    edit_manifest(saved, lambda m: m.pop("bounds"))
    expect_error(saved, "bounds", "missing")


def rewrite_index(root: Path, fn) -> None:
    index = np.load(root / "chunk_index.npy")
    fn(index)
    np.save(root / "chunk_index.npy", index)
    rehash(root, "chunk_index.npy")


def col(name: str) -> int:
    return INDEX_COLUMNS.index(name)


@pytest.mark.parametrize(
    "edit, fragment",
    [
        (lambda ix: ix.__setitem__((-1, col("edge_start")), 10**6), "offsets out of range"),
        (lambda ix: ix.__setitem__((0, col("src_rows_start")), 1), "offsets out of range"),
        (lambda ix: ix.__setitem__((-1, col("nnz")), ix[-1, col("nnz")] + 1), "offsets out of range"),
        (lambda ix: ix.__setitem__((0, col("i")), 3), "outside the 3 x 3 grid"),
        (lambda ix: ix.__setitem__((0, col("dst_offset")), 100), "exceed interval"),
        (lambda ix: ix.__setitem__((1, col("sub")), 5), "order"),
        (lambda ix: ix.__setitem__((0, col("num_src")), -1), "negative"),
    ],
)
def test_inconsistent_chunk_index(saved, edit, fragment):
    rewrite_index(saved, edit)
    expect_error(saved, "chunk_index.npy", "inconsistent chunk index", fragment)


def test_no_pickle(saved):
    np.save(saved / "labels.npy", np.array([object()] * 40, dtype=object), allow_pickle=True)
    rehash(saved, "labels.npy")
    expect_error(saved, "labels.npy")


# ---------------------------------------------------------------- invalid inputs


def _part():
    return partition_graph(random_graph(7), 40, 2)


E7 = random_graph(7).shape[1]
BAD_INPUTS = [
    (dict(x=np.zeros((39, 3), np.float32)), "x has 39 rows"),
    (dict(x=np.zeros((40,), np.float32)), r"reshape\(-1, 1\)"),
    (dict(x=np.zeros((40, 3), np.int64)), "x must be floating"),
    (dict(x=np.where(np.arange(40)[:, None] == 7, np.nan, 1.0) * np.ones((40, 3))), "row 7"),
    (dict(x=np.where(np.arange(40)[:, None] == 9, np.inf, 1.0) * np.ones((40, 3))), "row 9"),
    (dict(y=np.zeros(41, np.int64)), r"y must have shape \[N\] = \[40\]"),
    (dict(y=np.zeros(40, np.float32)), "integer class ids"),
    (dict(y=np.full(40, -1)), "negative class id"),
    (dict(y=np.arange(40), num_classes=10), "num_classes=10"),
    (dict(num_classes=3), "without y"),
    (dict(masks={"train": np.zeros(39, bool)}), "mask 'train' must have shape"),
    (dict(masks={"train": np.zeros(40, np.int64)}), "must be bool"),
    (dict(masks={"../evil": np.zeros(40, bool)}), "not allowed"),
    (dict(edge_data=np.zeros(E7 - 1)), f"E={E7}"),
    (dict(edge_data=np.full(E7, np.nan)), "NaN or Inf in row 0"),
    (dict(edge_data=np.zeros(E7, np.int64)), "edge_data must be floating"),
]


@pytest.mark.parametrize("kwargs, match", BAD_INPUTS)
def test_invalid_inputs_leave_nothing(tmp_path, kwargs, match):
    target = tmp_path / "sub" / "ds"
    with pytest.raises(ValueError, match=match):
        save_dataset(target, _part(), **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_not_a_partition(tmp_path):
    with pytest.raises(ValueError, match="GraphPartition"):
        save_dataset(tmp_path / "ds", np.zeros((2, 3)))
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- overwrite and crashes


def test_existing_path_without_overwrite(saved):
    before = (saved / "manifest.json").read_bytes()
    with pytest.raises(ValueError, match="overwrite=True"):
        save_dataset(saved, _part())
    assert (saved / "manifest.json").read_bytes() == before
    verify_dataset(saved)


def test_overwrite_replaces(saved):
    part = _part()
    save_dataset(saved, part, overwrite=True)
    ds = load_dataset(saved)
    assert ds.x is None and ds.partition.num_chunks == 2
    np.testing.assert_array_equal(ds.partition.edge_index(), random_graph(7))
    assert list(saved.parent.iterdir()) == [saved]


def test_overwrite_refuses_non_dataset(tmp_path):
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "precious.txt").write_text("keep")
    (tmp_path / "file").write_text("keep")
    for target in ("home", "file"):
        with pytest.raises(ValueError, match="refusing to replace"):
            save_dataset(tmp_path / target, _part(), overwrite=True)
    assert (tmp_path / "home" / "precious.txt").read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "home"]


def fail_after(k: int, fn):
    calls = {"n": 0}

    def wrapped(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > k:
            raise RuntimeError("simulated crash")
        return fn(*args, **kwargs)

    return wrapped


def fail_on(k: int, fn):
    calls = {"n": 0}

    def wrapped(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == k:
            raise RuntimeError("simulated crash")
        return fn(*args, **kwargs)

    return wrapped


@pytest.mark.parametrize("k", [0, 1, 4, 9])
def test_crash_while_writing_files(tmp_path, monkeypatch, k):
    monkeypatch.setattr(writer_mod, "write_npy", fail_after(k, writer_mod.write_npy))
    with pytest.raises(RuntimeError, match="simulated crash"):
        save_dataset(tmp_path / "ds", _part(), **full_inputs(7, 40, E7))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("victim", ["write_manifest", "fsync_dir"])
def test_crash_at_the_end(tmp_path, monkeypatch, victim):
    monkeypatch.setattr(writer_mod, victim, fail_after(0, getattr(writer_mod, victim)))
    with pytest.raises(RuntimeError, match="simulated crash"):
        save_dataset(tmp_path / "ds", _part())
    assert list(tmp_path.iterdir()) == []


def test_crash_keeps_previous_dataset(saved, monkeypatch):
    before = {p.name: p.read_bytes() for p in saved.iterdir()}
    monkeypatch.setattr(writer_mod, "write_npy", fail_after(5, writer_mod.write_npy))
    with pytest.raises(RuntimeError, match="simulated crash"):
        save_dataset(saved, _part(), overwrite=True)
    assert {p.name: p.read_bytes() for p in saved.iterdir()} == before
    assert list(saved.parent.iterdir()) == [saved]
    verify_dataset(saved)


def test_failed_swap_restores_previous_dataset(saved, monkeypatch):
    before = (saved / "manifest.json").read_bytes()
    # rename #1 moves the old dataset aside, rename #2 (new -> target) fails
    monkeypatch.setattr(os, "rename", fail_on(2, os.rename))
    with pytest.raises(RuntimeError, match="simulated crash"):
        save_dataset(saved, _part(), overwrite=True)
    monkeypatch.undo()
    assert (saved / "manifest.json").read_bytes() == before
    assert list(saved.parent.iterdir()) == [saved]
    verify_dataset(saved)


def test_hard_crash_leaves_nothing_loadable(tmp_path, monkeypatch):
    # a killed process cannot clean up: keep its temp dir and check what is left
    monkeypatch.setattr(writer_mod, "write_manifest", fail_after(0, writer_mod.write_manifest))
    monkeypatch.setattr(writer_mod.shutil, "rmtree", lambda *a, **k: None)
    with pytest.raises(RuntimeError):
        save_dataset(tmp_path / "ds", _part())
    monkeypatch.undo()
    assert not (tmp_path / "ds").exists()
    (leftover,) = tmp_path.iterdir()
    assert leftover.name.startswith(".ds.tmp-")
    with pytest.raises(DatasetError, match="manifest.json is missing"):
        load_dataset(leftover)
    shutil.rmtree(leftover)
