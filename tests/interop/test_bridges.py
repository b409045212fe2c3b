"""From PyG / DGL / scipy to sagann: graphs, their data, datasets on disk; PyG's calling convention on sagann layers."""
from __future__ import annotations

import gc
import json

import numpy as np
import pytest
import torch

import sagann
from sagann.cli import main
from sagann.engine.arguments import graph_for_edge_index

pyg = pytest.importorskip("torch_geometric")
from torch_geometric.data import Data  # noqa: E402


def _data(n: int = 200, seed: int = 0) -> Data:
    g = torch.Generator().manual_seed(seed)
    ei = torch.randint(0, n, (2, 8 * n), generator=g)
    split = torch.rand(n, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    x = torch.randn(n, 6, generator=g) + torch.nn.functional.one_hot(y, 6).float()  # learnable
    return Data(
        x=x, edge_index=ei, y=y, edge_weight=torch.rand(ei.shape[1], generator=g),
        train_mask=split < 0.6, val_mask=(split >= 0.6) & (split < 0.8), test_mask=split >= 0.8,
    )


# ---------------------------------------------------------------- PyG's calling convention


def test_sagann_conv_takes_x_and_edge_index_like_pyg():
    data = _data()
    conv = sagann.nn.GCNConv(6, 4)
    ref = pyg.nn.GCNConv(6, 4)
    ref.load_state_dict(conv.state_dict())
    with torch.no_grad():
        ref.bias.fill_(0.3)
        conv.bias.fill_(0.3)
        out = conv(data.x, data.edge_index)  # was: AttributeError 'Tensor' object has no attribute 'with_remaining_self_loops'
        torch.testing.assert_close(out, ref(data.x, data.edge_index), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(conv(data.x, data.edge_index, data.edge_weight), ref(data.x, data.edge_index, data.edge_weight), rtol=1e-5, atol=1e-5)
        g = sagann.ChunkedGraph(data.edge_index, data.num_nodes)
        torch.testing.assert_close(conv(data.x, g), conv(g, data.x))
    with pytest.raises(ValueError, match=r"x has 150 rows, one per vertex, so ids must lie in \[0, 150\)"):
        conv(data.x[:150], data.edge_index)


def test_edge_index_graph_is_built_once_per_tensor():
    ei = _data().edge_index.clone()
    g = graph_for_edge_index(ei, 200)
    assert graph_for_edge_index(ei, 200) is g  # the layers of a model share it
    ei[0, 0] = (ei[0, 0] + 1) % 200  # changed in place: a new graph
    g2 = graph_for_edge_index(ei, 200)
    assert g2 is not g and int(g2.edge_index()[0, 0]) == int(ei[0, 0])
    assert graph_for_edge_index(ei, 201) is not g2
    from sagann.engine import arguments

    before = len(arguments._GRAPHS)
    del ei, g, g2
    gc.collect()
    assert len(arguments._GRAPHS) < before  # dropped with its tensor


def test_chunked_graph_takes_a_pyg_data_and_names_the_other_bridges():
    data = _data()
    g = sagann.ChunkedGraph(data, data.num_nodes)  # was: 'GlobalStorage' object has no attribute 'numpy'
    np.testing.assert_array_equal(g.edge_index(), data.edge_index.numpy())

    class DGLGraphStandIn:  # what a DGL graph offers: edges(), num_nodes()
        def edges(self):
            return data.edge_index[0], data.edge_index[1]

        def num_nodes(self):
            return 200

    with pytest.raises(TypeError, match=r"sagann.from_dgl\(graph"):
        sagann.ChunkedGraph(DGLGraphStandIn(), 200)
    sp = pytest.importorskip("scipy.sparse")
    with pytest.raises(TypeError, match=r"sagann.from_scipy\(matrix"):
        sagann.ChunkedGraph(sp.eye(3, format="csr"), 3)


# ---------------------------------------------------------------- from_pyg, from_scipy, from_dgl


def test_from_pyg_keeps_pyg_names_and_forces_p():
    data = _data()
    data.y = data.y.view(-1, 1)  # OGB's [N, 1] labels
    d = sagann.from_pyg(data, device=sagann.CpuDevice("1MB"), num_chunks=4)
    assert d.num_nodes == 200 and d.num_edges == data.num_edges
    assert d.x is data.x  # float32 host tensors are not copied
    assert d.y.shape == (200,) and sorted(d.masks) == ["test", "train", "val"]
    assert d.train_mask is data.train_mask and d.edge_index is d.graph
    assert d.edge_weight is data.edge_weight
    out = sagann.nn.SAGEConv(6, 3)(d.x, d.edge_index)
    assert out.shape == (200, 3) and d.graph.num_chunks == 4
    with pytest.raises(AttributeError, match="has no attribute 'dev_mask' \\(masks: ") as err:
        d.dev_mask
    assert all(f"{m}_mask" in str(err.value) for m in ("train", "val", "test"))
    with pytest.raises(TypeError, match="unknown option"):
        sagann.from_pyg(data, num_chunk=4)
    with pytest.raises(TypeError, match="to_homogeneous"):
        sagann.from_pyg(pyg.data.HeteroData())
    with pytest.raises(TypeError, match="from_pyg takes a torch_geometric.data.Data"):
        sagann.from_pyg(data.edge_index)


def test_from_scipy_edges_weights_and_data():
    sp = pytest.importorskip("scipy.sparse")
    a = sp.random(50, 50, density=0.1, format="csr", random_state=0, dtype=np.float64)
    a.data[:3] = 0.0  # explicit zeros are no edges
    x = np.random.default_rng(0).standard_normal((50, 4))
    d = sagann.from_scipy(a, x=x, y=np.arange(50) % 3, masks={"train": np.arange(50) < 30})
    coo = a.tocoo()
    keep = coo.data != 0
    np.testing.assert_array_equal(d.graph.edge_index(), np.stack([coo.row[keep], coo.col[keep]]))
    np.testing.assert_allclose(d.edge_weight.numpy(), coo.data[keep].astype(np.float32))
    assert d.x.dtype == torch.float32 and d.train_mask.sum() == 30
    assert sagann.from_scipy(sp.eye(5, format="coo")).edge_weight is None  # an unweighted adjacency
    with pytest.raises(ValueError, match="square"):
        sagann.from_scipy(sp.random(4, 5, density=0.5))
    # GCN with the matrix's weights equals PyG's
    conv = sagann.nn.GCNConv(4, 2)
    ref = pyg.nn.GCNConv(4, 2)
    ref.load_state_dict(conv.state_dict())
    ei = torch.from_numpy(np.stack([coo.row[keep], coo.col[keep]]).astype(np.int64))
    with torch.no_grad():
        torch.testing.assert_close(conv(d.graph, d.x, d.edge_weight), ref(d.x, ei, d.edge_weight), rtol=1e-5, atol=1e-5)


class DGLGraphStandIn:
    """A stand-in with the DGLGraph API from_dgl reads (edges(), num_nodes(), ndata, edata, ntypes, canonical_etypes); not DGL."""

    ntypes = ["_N"]
    canonical_etypes = [("_N", "_E", "_N")]

    def __init__(self, data: Data):
        self._ei = data.edge_index
        self.ndata = {"feat": data.x, "label": data.y, "train_mask": data.train_mask, "val_mask": data.val_mask, "test_mask": data.test_mask, "year": torch.zeros(200)}
        self.edata = {"w": data.edge_weight}

    def edges(self, order: str = "eid"):
        return self._ei[0], self._ei[1]

    def num_nodes(self) -> int:
        return 200


def test_from_dgl_with_a_stand_in():
    data = _data()
    d = sagann.from_dgl(DGLGraphStandIn(data), device=sagann.CpuDevice("1MB"))
    np.testing.assert_array_equal(d.graph.edge_index(), data.edge_index.numpy())
    assert d.x is data.x and torch.equal(d.y, data.y) and sorted(d.masks) == ["test", "train", "val"]
    assert d.edge_weight is data.edge_weight
    hetero = DGLGraphStandIn(data)
    hetero.ntypes = ["paper", "author"]
    with pytest.raises(TypeError, match="dgl.to_homogeneous"):
        sagann.from_dgl(hetero)


def test_from_dgl_with_real_dgl():
    dgl = pytest.importorskip("dgl")
    data = _data()
    g = dgl.graph((data.edge_index[0], data.edge_index[1]), num_nodes=200)
    g.ndata["feat"], g.ndata["label"], g.ndata["train_mask"] = data.x, data.y, data.train_mask
    d = sagann.from_dgl(g)
    np.testing.assert_array_equal(d.graph.edge_index(), data.edge_index.numpy())
    assert torch.equal(d.x, data.x) and torch.equal(d.y, data.y) and torch.equal(d.train_mask, data.train_mask)


# ---------------------------------------------------------------- datasets on disk


def test_from_pyg_then_save_dataset_verifies_and_trains(tmp_path, capsys):
    data = _data(400)
    path = sagann.save_dataset(tmp_path / "ds", sagann.from_pyg(data), num_chunks=3)
    assert main(["verify", str(path)]) == 0
    assert "OK" in capsys.readouterr().out
    ds = sagann.chunks.load_dataset(path)
    np.testing.assert_array_equal(ds.partition.edge_index(), data.edge_index.numpy())
    np.testing.assert_array_equal(ds.x, data.x.numpy())
    np.testing.assert_array_equal(ds.masks["val"], data.val_mask.numpy())
    np.testing.assert_allclose(ds.edge_data, data.edge_weight.numpy())
    assert main(["train", str(path), "--epochs", "3", "--json", "--memory-budget", "200KB", "--hidden", "16"]) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(r["losses"]) == 3 and r["losses"][-1] < r["losses"][0] and r["num_chunks"] > 1
    with pytest.raises(TypeError, match="save_dataset takes a GraphData"):
        sagann.save_dataset(tmp_path / "ds2", data)


def test_partition_reads_a_saved_pyg_data(tmp_path, capsys):
    data = _data(400)
    torch.save(data, tmp_path / "data.pt")
    out = tmp_path / "ds"
    assert main(["partition", str(tmp_path / "data.pt"), str(out), "--chunks", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["num_edges"] == data.num_edges
    assert main(["verify", str(out)]) == 0
    ds = sagann.chunks.load_dataset(out)
    np.testing.assert_array_equal(ds.partition.edge_index(), data.edge_index.numpy())
    np.testing.assert_array_equal(ds.y, data.y.numpy())
    assert sorted(ds.masks) == ["test", "train", "val"]
    capsys.readouterr()
    assert main(["train", str(out), "--epochs", "2", "--json", "--memory-budget", "200KB", "--hidden", "16"]) == 0
    # a file that would need other classes to unpickle is refused, not run
    torch.save({"graph": data, "f": np.zeros(3)}, tmp_path / "other.pt")
    assert main(["partition", str(tmp_path / "other.pt"), str(tmp_path / "o2")]) == 1
    assert "which sagann does not load" in capsys.readouterr().err
    assert main(["partition", str(tmp_path / "data.pt"), str(tmp_path / "o3"), "--labels", "y.npy"]) == 1
    assert "drop --features, --labels and --mask" in capsys.readouterr().err
    data.edge_index[1, 5] = 400
    torch.save(data, tmp_path / "bad.pt")
    assert main(["partition", str(tmp_path / "bad.pt"), str(tmp_path / "o4")]) == 1
    assert "bad.pt: edge_index has vertex id 400 (edge 5)" in capsys.readouterr().err
    assert main(["partition", str(tmp_path / "data.pt")]) == 1
    assert "give INPUT and OUT" in capsys.readouterr().err
