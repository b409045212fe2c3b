"""`sagann partition --ogb DIR OUT` on a small dataset written in OGB's node-property layout, then `sagann train`."""
from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from sagann.chunks import load_dataset, partition_graph
from sagann.chunks.external import PartitionConfig
from sagann.chunks.ogb import OgbError, partition_ogb
from sagann.chunks.synthetic import sbm
from sagann.cli import main


def _csv(path, rows, fmt: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt") as f:
        for r in np.atleast_2d(rows) if np.ndim(rows) > 1 else rows.reshape(-1, 1):
            f.write(",".join(fmt % v for v in r) + "\n")


def write_ogb(root, n: int = 600, split: str = "random", unlabelled: int = 0):
    """An SBM graph in OGB's layout: raw/*.csv.gz and split/<split>/*.csv.gz, no header rows."""
    d = sbm(n, 3, 8.0, 6, seed=2)
    ei = np.asarray(d.edge_index)
    x, y = np.asarray(d.x, dtype=np.float32), np.asarray(d.y).astype(np.float64)
    raw = root / "raw"
    _csv(raw / "edge.csv.gz", ei.T, "%d")
    _csv(raw / "num-node-list.csv.gz", np.array([n]), "%d")
    _csv(raw / "num-edge-list.csv.gz", np.array([ei.shape[1]]), "%d")
    _csv(raw / "node-feat.csv.gz", x, "%.9g")
    y[n - unlabelled :] = np.nan
    _csv(raw / "node-label.csv.gz", y, "%g")
    masks = {"train": np.asarray(d.train_mask), "valid": np.asarray(d.val_mask), "test": np.asarray(d.test_mask)}
    for name, m in masks.items():
        m[n - unlabelled :] = False
        _csv(root / "split" / split / f"{name}.csv.gz", np.flatnonzero(m), "%d")
    return ei, x, np.nan_to_num(y).astype(np.int64), masks


@pytest.fixture(scope="module")
def ogb_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("ogb") / "ogbn_tiny"
    return root, write_ogb(root, unlabelled=5)


def test_partition_ogb_then_train(ogb_dir, tmp_path, capsys):
    root, (ei, x, y, masks) = ogb_dir
    out = tmp_path / "ds"
    assert main(["partition", "--ogb", str(root), str(out), "--host-memory", "80MB", "--chunks", "3", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["num_vertices"] == 600 and summary["num_edges"] == ei.shape[1] and summary["num_chunks"] == 3
    assert main(["verify", str(out)]) == 0
    ds = load_dataset(out)
    np.testing.assert_array_equal(ds.x, x)
    np.testing.assert_array_equal(ds.y, y)
    for ogb_name, name in (("train", "train"), ("valid", "val"), ("test", "test")):
        np.testing.assert_array_equal(ds.masks[name], masks[ogb_name])
    ref = partition_graph(ei, 600, 3)
    np.testing.assert_array_equal(ds.partition.bounds, ref.bounds)
    np.testing.assert_array_equal(ds.partition.edge_index(), ei)
    capsys.readouterr()
    assert main(["train", str(out), "--epochs", "3", "--json", "--memory-budget", "150KB", "--hidden", "16"]) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(r["losses"]) == 3 and r["losses"][-1] < r["losses"][0] and r["num_chunks"] > 1
    assert not any(p.name.startswith(".ds.staging") for p in tmp_path.iterdir())  # the staging directory is gone


def test_inverse_edges_follow_each_edge(ogb_dir, tmp_path):
    root, (ei, *_rest) = ogb_dir
    s = partition_ogb(root, tmp_path / "ds", PartitionConfig(num_chunks=2, host_memory="80MB"), add_inverse_edges=True)
    assert s.num_edges == 2 * ei.shape[1]
    got = load_dataset(tmp_path / "ds").partition.edge_index()
    np.testing.assert_array_equal(got[:, 0::2], ei)
    np.testing.assert_array_equal(got[:, 1::2], ei[::-1])


def test_small_blocks_read_the_same(ogb_dir, tmp_path, monkeypatch):
    """Blocks of 200 bytes cut every file mid-way many times: the dataset is the same."""
    import sagann.chunks.ogb as ogb

    root, (ei, x, y, masks) = ogb_dir
    monkeypatch.setattr(ogb, "MIN_BLOCK", 200)
    monkeypatch.setattr(ogb, "MAX_BLOCK", 200)
    partition_ogb(root, tmp_path / "ds", PartitionConfig(num_chunks=2, host_memory="80MB"))
    ds = load_dataset(tmp_path / "ds")
    np.testing.assert_array_equal(ds.partition.edge_index(), ei)
    np.testing.assert_array_equal(ds.x, x)
    np.testing.assert_array_equal(ds.y, y)
    np.testing.assert_array_equal(ds.masks["val"], masks["valid"])


def test_ogb_errors_name_the_file_and_the_fix(tmp_path, capsys):
    root = tmp_path / "bad"
    write_ogb(root, n=60)
    write_ogb(root, n=60, split="other")
    assert main(["partition", "--ogb", str(root), str(tmp_path / "o1")]) == 1
    assert "--ogb-split NAME" in capsys.readouterr().err
    with pytest.raises(OgbError, match="no raw/edge.csv.gz"):
        partition_ogb(tmp_path, tmp_path / "o2")
    _csv(root / "split" / "other" / "test.csv.gz", np.array([3, 60]), "%d")
    with pytest.raises(OgbError, match=r"test.csv.gz: line 2 holds vertex id 60, outside \[0, N=60\)"):
        partition_ogb(root, tmp_path / "o3", split="other")
    _csv(root / "raw" / "node-label.csv.gz", np.ones((60, 2)), "%d")
    with pytest.raises(OgbError, match="2 label columns"):
        partition_ogb(root, tmp_path / "o4", split="random")
    _csv(root / "raw" / "edge.csv.gz", np.array([[0, 1], [2, 3], [4, 61]]), "%d")
    with pytest.raises(OgbError, match=r"edge.csv.gz: line 3 has vertex ids 4,61, outside \[0, N=60\)"):
        partition_ogb(root, tmp_path / "o3", split="random")
    assert main(["partition", "--ogb", str(root), str(tmp_path / "o5"), "--features", "x.npy"]) == 1
    assert "drop --features" in capsys.readouterr().err
    assert not (tmp_path / "o3").exists() and not (tmp_path / "o4").exists()


def test_unlabelled_vertex_in_a_split_is_refused(tmp_path):
    root = tmp_path / "nan"
    write_ogb(root, n=60, unlabelled=3)
    _csv(root / "split" / "random" / "train.csv.gz", np.array([0, 59]), "%d")
    with pytest.raises(OgbError, match="vertex 59 is in the train split but its label is nan"):
        partition_ogb(root, tmp_path / "o")


def test_same_graph_through_from_pyg_and_save_dataset(ogb_dir, tmp_path, capsys):
    """The fixture as PyG's OGB loader hands it over (y [N, 1], split indices) -> from_pyg + save_dataset: the --ogb dataset's arrays; it verifies and trains."""
    torch = pytest.importorskip("torch")
    geo = pytest.importorskip("torch_geometric.data")
    import sagann

    root, (ei, x, y, masks) = ogb_dir
    data = geo.Data(x=torch.from_numpy(x), edge_index=torch.from_numpy(ei), y=torch.from_numpy(y).view(-1, 1))
    for ogb_name, name in (("train", "train"), ("valid", "val"), ("test", "test")):
        data[f"{name}_mask"] = torch.from_numpy(masks[ogb_name])
    path = sagann.save_dataset(tmp_path / "from_pyg", sagann.from_pyg(data), num_chunks=3)
    partition_ogb(root, tmp_path / "from_ogb", PartitionConfig(num_chunks=3, host_memory="80MB"))
    a, b = load_dataset(path), load_dataset(tmp_path / "from_ogb")
    for name in ("x", "y"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert sorted(a.masks) == sorted(b.masks) and all(np.array_equal(a.masks[k], b.masks[k]) for k in a.masks)
    np.testing.assert_array_equal(a.partition.edge_index(), b.partition.edge_index())
    assert main(["verify", str(path)]) == 0
    capsys.readouterr()
    assert main(["train", str(path), "--epochs", "3", "--json", "--memory-budget", "150KB", "--hidden", "16"]) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert r["losses"][-1] < r["losses"][0] and r["num_chunks"] > 1
