"""`sagann.convert`: PyG models become sagann models with the same weights, outputs, gradients and training curve."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import sagann
from tests.measured import assert_measured_within

pyg = pytest.importorskip("torch_geometric")
from torch_geometric.data import Data  # noqa: E402
from torch_geometric.nn import GATConv, GCNConv, GINConv, SAGEConv, Sequential  # noqa: E402
from torch_geometric.nn import models as pyg_models  # noqa: E402

N, E, F_IN = 240, 2400, 12


def _data(seed: int = 0) -> Data:
    g = torch.Generator().manual_seed(seed)
    ei = torch.randint(0, N - 10, (2, E), generator=g)  # the last 10 vertices have no edges
    ei[:, :20] = ei[0, :20]  # self loops
    ei = torch.cat([ei, ei[:, :30]], dim=1)  # duplicate edges
    x = torch.randn(N, F_IN, generator=g)
    y = torch.randint(0, 4, (N,), generator=g)
    return Data(x=x, edge_index=ei, y=y, train_mask=torch.rand(N, generator=g) < 0.6)


def _twin(data: Data) -> sagann.GraphData:
    """P = 4 forced: every conv streams 16 chunks."""
    return sagann.from_pyg(data, device=sagann.CpuDevice("64MB"), num_chunks=4)


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> None:
    scale = max(1.0, float(b.detach().abs().max()))
    diff = float((a - b).detach().abs().max())
    assert diff <= tol * scale, diff


CONVS = {
    "gcn": lambda: GCNConv(F_IN, 8),
    "gcn-improved-nobias": lambda: GCNConv(F_IN, 8, improved=True, bias=False),  # PyG: weight-2 loops only with edge weights
    "gcn-raw": lambda: GCNConv(F_IN, 8, normalize=False, add_self_loops=False),
    "gcn-noloops": lambda: GCNConv(F_IN, 8, add_self_loops=False),
    "sage-mean": lambda: SAGEConv(F_IN, 8),
    "sage-add-normalize": lambda: SAGEConv(F_IN, 8, aggr="add", normalize=True),
    "sage-max-noroot": lambda: SAGEConv(F_IN, 8, aggr="max", root_weight=False),
    "sage-min-nobias": lambda: SAGEConv(F_IN, 8, aggr="min", bias=False),
    "gin": lambda: GINConv(torch.nn.Sequential(torch.nn.Linear(F_IN, 16), torch.nn.ReLU(), torch.nn.Linear(16, 8)), eps=0.3, train_eps=True),
    "gat": lambda: GATConv(F_IN, 5, heads=3),
    "gat-mean-noloops": lambda: GATConv(F_IN, 5, heads=2, concat=False, negative_slope=0.1, add_self_loops=False, bias=False),
}


@pytest.mark.parametrize("name", sorted(CONVS))
def test_each_conv_gives_pyg_outputs_and_gradients(name):
    torch.manual_seed(1)
    data = _data()
    conv = CONVS[name]()
    with torch.no_grad():  # nonzero biases, so a dropped bias would show
        for p in conv.parameters():
            p.add_(0.1 * torch.randn_like(p))
    ours = sagann.convert(conv)
    d = _twin(data)
    x1 = data.x.clone().requires_grad_()
    x2 = data.x.clone().requires_grad_()
    ref, out = conv(x1, data.edge_index), ours(x2, d.edge_index)
    assert d.graph.num_chunks >= 4
    _close(out, ref)
    w = torch.randn_like(ref)
    (ref * w).sum().backward()
    (out * w).sum().backward()
    _close(x2.grad, x1.grad)
    theirs = dict(conv.named_parameters())
    for pname, p in ours.named_parameters():
        _close(p.grad, theirs[pname].grad)


class GCNScript(torch.nn.Module):
    """The PyG example's GCN: dropout-free here (the engine draws from torch's RNG per layer call, so dropout masks would differ)."""

    def __init__(self, conv, hidden: int = 16, classes: int = 4):
        super().__init__()
        self.conv1 = conv(F_IN, hidden)
        self.conv2 = conv(hidden, classes)

    def forward(self, x, edge_index):
        x = self.conv1(x, edge_index).relu()
        return self.conv2(x, edge_index)


def _train(model, x, edge_index, y, mask, epochs: int = 3) -> tuple[list[float], torch.Tensor]:
    opt = torch.optim.Adam(model.parameters(), lr=0.01, weight_decay=5e-4)
    losses = []
    for _ in range(epochs):
        model.train()
        opt.zero_grad()
        out = model(x, edge_index)
        loss = F.cross_entropy(out[mask], y[mask])
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        return losses, model(x, edge_index)


@pytest.mark.parametrize("conv", [GCNConv, lambda a, b: GATConv(a, b, heads=2, concat=False)], ids=["gcn", "gat"])
def test_pyg_script_and_converted_twin_train_alike(conv):
    """Same outputs before training, same loss per epoch (1e-5 relative) for 3 epochs, same outputs after; the twin runs at P >= 4."""
    torch.manual_seed(0)
    data = _data(3)
    model = GCNScript(conv)
    twin = sagann.convert(model)  # two lines change in the script: this one ...
    d = sagann.from_pyg(data, device=sagann.CpuDevice("128KB", meter=True), num_chunks=4)  # ... and this one
    with torch.no_grad():
        _close(twin(d.x, d.edge_index), model(data.x, data.edge_index))
    ref_losses, ref_out = _train(model, data.x, data.edge_index, data.y, data.train_mask)
    losses, out = _train(twin, d.x, d.edge_index, d.y, d.train_mask)
    assert d.graph.num_chunks >= 4, d.graph.num_chunks
    assert_measured_within(d.graph.device)
    for a, b in zip(losses, ref_losses, strict=True):
        assert abs(a - b) <= 1e-5 * abs(b), (losses, ref_losses)
    _close(out, ref_out, 1e-4)


def test_a_conv_used_twice_stays_one_layer():
    conv = GCNConv(F_IN, F_IN)
    model = torch.nn.ModuleDict({"a": conv, "b": conv})
    ours = sagann.convert(model)
    assert ours["a"] is ours["b"] and len(list(ours.parameters())) == 2


def test_sequential_basic_models_and_the_original_left_alone():
    torch.manual_seed(2)
    data = _data(4)
    d = _twin(data)
    models = [
        Sequential("x, edge_index", [(GCNConv(F_IN, 8), "x, edge_index -> x"), torch.nn.ReLU(), torch.nn.Dropout(0.5), (SAGEConv(8, 4), "x, edge_index -> x")]),
        pyg_models.GCN(F_IN, 16, 2, out_channels=4),
        pyg_models.GraphSAGE(F_IN, 16, 2, out_channels=4),
        pyg_models.GAT(F_IN, 16, 2, out_channels=4, heads=2),
        pyg_models.GIN(F_IN, 16, 2, out_channels=4),
    ]
    for model in models:
        model.eval()
        before = copy.deepcopy(model.state_dict())
        ours = sagann.convert(model)
        with torch.no_grad():
            _close(ours(d.x, d.edge_index), model(data.x, data.edge_index))
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
        assert set(ours.state_dict()) == set(before)  # PyG's checkpoints load into the converted model
        assert not any(isinstance(m, pyg.nn.conv.MessagePassing) for m in ours.modules())
        assert any(isinstance(m, sagann.Layer) for m in ours.modules())
        assert not any(isinstance(m, sagann.Layer) for m in model.modules())


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda: GATConv(F_IN, 4, dropout=0.6), "dropout=0.6"),
        (lambda: GATConv(F_IN, 4, edge_dim=3), "edge_dim=3"),
        (lambda: GATConv((F_IN, 6), 4), "bipartite"),
        (lambda: SAGEConv(F_IN, 4, project=True), "project=True"),
        (lambda: SAGEConv(F_IN, 4, aggr="std"), "aggr='std'"),
        (lambda: GCNConv(-1, 4), "in_channels=-1"),
        (lambda: GCNConv(F_IN, 4, flow="target_to_source"), "flow='target_to_source'"),
        (lambda: GINConv(torch.nn.Sequential(torch.nn.Linear(F_IN, 4), torch.nn.BatchNorm1d(4))), "batch normalisation"),
        (lambda: pyg.nn.GCN2Conv(F_IN, 0.1), "GCN2Conv, which has no sagann equivalent"),
    ],
)
def test_unsupported_options_are_refused_by_name(make, words):
    model = torch.nn.ModuleDict({"conv": make()})
    with pytest.raises(sagann.ConversionError, match="model.conv") as err:
        sagann.convert(model)
    assert words in str(err.value)


def test_from_pyg_example_trains_alike_out_of_core(capsys):
    """docs/examples/from_pyg.py: the PyG script and its two-line twin print the same losses; the twin runs at P > 1."""
    import re
    import runpy
    from pathlib import Path

    runpy.run_path(str(Path(__file__).resolve().parents[2] / "docs" / "examples" / "from_pyg.py"), run_name="__main__")
    out = capsys.readouterr().out
    pairs = [(float(a), float(b)) for a, b in re.findall(r"PyG loss (\S+)  sagann loss (\S+)", out)]
    assert len(pairs) == 10 and pairs[-1][0] < pairs[0][0]
    assert all(abs(a - b) <= 1e-5 * abs(a) for a, b in pairs)
    p, peak, budget = re.search(r"P = (\d+) vertex intervals, device peak (\S+) MB of a (\S+) MB", out).groups()
    assert int(p) > 1 and float(peak) <= float(budget)
