"""Tests for sagann.chunks.synthetic: R-MAT, SBM and the shape presets."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sagann.chunks.synthetic import (
    PRESETS,
    GraphShape,
    SyntheticGraph,
    edge_homophily,
    preset_graph,
    rmat,
    sbm,
)


# ---------------------------------------------------------------------- R-MAT
def test_rmat_deterministic():
    a = rmat(1000, 5000, seed=3, permute=True)
    b = rmat(1000, 5000, seed=3, permute=True)
    c = rmat(1000, 5000, seed=4, permute=True)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("n", [1, 2, 3, 1000, 1024, 1025])
@pytest.mark.parametrize("permute", [False, True])
def test_rmat_shape_dtype_range(n, permute):
    e = rmat(n, 3000, seed=0, permute=permute)
    assert e.shape == (2, 3000)
    assert e.dtype == np.int64
    assert e.min() >= 0 and e.max() < n


@given(
    n=st.integers(2, 300),
    m=st.integers(0, 500),
    a=st.floats(0.05, 0.9),
    seed=st.integers(0, 2**32 - 1),
)
@settings(max_examples=30, deadline=None)
def test_rmat_property(n, m, a, seed):
    b = c = (1 - a) / 3
    e = rmat(n, m, a=a, b=b, c=c, seed=seed, self_loops=False)
    assert e.shape == (2, m) and e.dtype == np.int64
    if m:
        assert e.min() >= 0 and e.max() < n
        assert not np.any(e[0] == e[1])


def test_rmat_zero_edges():
    for n in (0, 1, 17):
        e = rmat(n, 0)
        assert e.shape == (2, 0) and e.dtype == np.int64


def test_rmat_no_self_loops():
    e = rmat(64, 20_000, self_loops=False)
    assert e.shape == (2, 20_000)
    assert not np.any(e[0] == e[1])
    with_loops = rmat(64, 20_000, self_loops=True)
    assert np.any(with_loops[0] == with_loops[1])


def test_rmat_quadrant_probabilities():
    # With two vertices, one level: (src, dst) = (0,0),(0,1),(1,0),(1,1) ~ a,b,c,d.
    a, b, c = 0.5, 0.2, 0.1
    e = rmat(2, 200_000, a=a, b=b, c=c, seed=1)
    freq = np.bincount(2 * e[0] + e[1], minlength=4) / e.shape[1]
    np.testing.assert_allclose(freq, [a, b, c, 1 - a - b - c], atol=0.005)


def test_rmat_skew():
    n = 1 << 14
    e = rmat(n, 200_000, seed=0)
    deg = np.bincount(e[0], minlength=n) + np.bincount(e[1], minlength=n)
    top = np.sort(deg)[::-1]
    assert top[: n // 2].sum() > 0.6 * top.sum()
    # Without permute the heavy ids are the low ones.
    assert deg[: n // 2].sum() > deg[n // 2 :].sum()


def test_rmat_permute_relabels_only():
    n = 1000
    plain = rmat(n, 50_000, seed=5)
    perm = rmat(n, 50_000, seed=5, permute=True)

    def degrees(e):
        return np.sort(np.bincount(e[1], minlength=n))

    assert np.array_equal(degrees(plain), degrees(perm))
    assert not np.array_equal(plain, perm)


def test_rmat_without_a_quadrant():
    # a == 0, d == 0: src bits are the complement of dst bits, so src = 15 - dst.
    e = rmat(10, 1000, a=0.0, b=0.5, c=0.5, seed=0)
    assert e.max() < 10
    assert np.all(e[0] + e[1] == 15)


def test_rmat_large_block_boundary():
    # More edges than one generation block, with rejection: exact count, in range.
    e = rmat(3000, (1 << 21) + 123, seed=2, self_loops=False)
    assert e.shape == (2, (1 << 21) + 123)
    assert e.max() < 3000 and not np.any(e[0] == e[1])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_vertices=-1, num_edges=10), "num_vertices"),
        (dict(num_vertices=10, num_edges=-5), "num_edges"),
        (dict(num_vertices=10.5, num_edges=5), "num_vertices"),
        (dict(num_vertices=10, num_edges=5, a=1.2), "a must be a probability"),
        (dict(num_vertices=10, num_edges=5, b=-0.1), "b must be a probability"),
        (dict(num_vertices=10, num_edges=5, c=float("nan")), "c must be a probability"),
        (dict(num_vertices=10, num_edges=5, a=0.6, b=0.3, c=0.3), "a \\+ b \\+ c"),
        (dict(num_vertices=0, num_edges=5), "num_vertices >= 1"),
        (dict(num_vertices=1, num_edges=5, self_loops=False), "self_loops"),
        (dict(num_vertices=10, num_edges=5, a=0.0, b=0.0, c=0.0), "almost never"),
        (dict(num_vertices=8, num_edges=5, a=0.9, b=0.0, c=0.0, self_loops=False), "self loop"),
    ],
)
def test_rmat_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        rmat(**kwargs)


# ------------------------------------------------------------------------ SBM
def test_sbm_deterministic():
    g1 = sbm(500, 5, 8, 16, seed=7)
    g2 = sbm(500, 5, 8, 16, seed=7)
    g3 = sbm(500, 5, 8, 16, seed=8)
    for field in ("edge_index", "x", "y", "train_mask", "val_mask", "test_mask"):
        assert np.array_equal(getattr(g1, field), getattr(g2, field)), field
    assert not np.array_equal(g1.edge_index, g3.edge_index)
    assert not np.array_equal(g1.x, g3.x)


def test_sbm_shapes_dtypes():
    g = sbm(1000, 7, 12.5, 24, seed=0, name="toy")
    assert isinstance(g, SyntheticGraph)
    assert g.name == "toy" and g.num_classes == 7
    assert g.num_vertices == 1000 and g.num_edges == 12_500 and g.num_features == 24
    assert g.edge_index.shape == (2, 12_500) and g.edge_index.dtype == np.int64
    assert g.x.shape == (1000, 24) and g.x.dtype == np.float32
    assert g.y.shape == (1000,) and g.y.dtype == np.int64
    assert g.edge_index.min() >= 0 and g.edge_index.max() < 1000
    assert g.y.min() == 0 and g.y.max() == 6
    counts = np.bincount(g.y)
    assert counts.max() - counts.min() <= 1  # balanced classes
    assert "toy" in repr(g)
    with pytest.raises(AttributeError):
        g.name = "other"  # frozen


@pytest.mark.parametrize("train, val", [(0.6, 0.2), (0.1, 0.1), (1.0, 0.0), (0.0, 0.0)])
def test_sbm_split(train, val):
    n = 1001
    g = sbm(n, 3, 2, 4, train_frac=train, val_frac=val)
    masks = np.stack([g.train_mask, g.val_mask, g.test_mask])
    assert masks.dtype == np.bool_ and masks.shape == (3, n)
    assert np.array_equal(masks.sum(0), np.ones(n))  # disjoint and covering
    assert abs(g.train_mask.sum() - train * n) <= 1
    assert abs(g.val_mask.sum() - val * n) <= 1


@pytest.mark.parametrize("h", [0.0, 0.3, 0.8, 1.0])
def test_sbm_homophily(h):
    g = sbm(4000, 6, 25, 2, homophily=h, seed=1)
    assert abs(edge_homophily(g.edge_index, g.y) - h) < 0.01


def test_sbm_one_class_and_zero_edges():
    g = sbm(50, 1, 4, 3, homophily=0.2)
    assert edge_homophily(g.edge_index, g.y) == 1.0
    g0 = sbm(50, 5, 0, 3)
    assert g0.edge_index.shape == (2, 0) and g0.edge_index.dtype == np.int64
    assert np.isnan(edge_homophily(g0.edge_index, g0.y))
    g1 = sbm(50, 5, 3, 0)
    assert g1.x.shape == (50, 0)


def test_sbm_features_carry_class_signal():
    g = sbm(6000, 4, 1, 32, signal=2.0, seed=0)
    means = np.stack([g.x[g.y == k].mean(0) for k in range(4)])
    np.testing.assert_allclose(np.linalg.norm(means, axis=1), 2.0, rtol=0.1)
    noise = g.x - means[g.y]
    assert abs(noise.std() - 1.0) < 0.02


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_vertices=-3), "num_vertices"),
        (dict(num_classes=0), "num_classes must be >= 1"),
        (dict(num_classes=200), "num_classes \\(200\\) > num_vertices"),
        (dict(avg_degree=-1.0), "avg_degree"),
        (dict(avg_degree=float("inf")), "avg_degree"),
        (dict(feature_dim=-2), "feature_dim"),
        (dict(homophily=1.5), "homophily"),
        (dict(signal=-1.0), "signal"),
        (dict(train_frac=0.7, val_frac=0.5), "train_frac \\+ val_frac"),
        (dict(val_frac=-0.1), "val_frac"),
        (dict(num_edges=-1), "num_edges"),
    ],
)
def test_sbm_bad_arguments(kwargs, match):
    args = dict(num_vertices=100, num_classes=4, avg_degree=3.0, feature_dim=8) | kwargs
    with pytest.raises(ValueError, match=match):
        sbm(**args)


def _accuracy(model: torch.nn.Module, x, y, train, test, epochs: int = 40) -> float:
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(epochs):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x)[train], y[train])
        loss.backward()
        opt.step()
    with torch.no_grad():
        return (model(x).argmax(1)[test] == y[test]).float().mean().item()


class _DenseGCN(torch.nn.Module):
    """2-layer GCN with a dense D^-1/2 (A + I) D^-1/2 (messages src -> dst)."""

    def __init__(self, adj: torch.Tensor, f: int, h: int, k: int):
        super().__init__()
        self.adj = adj
        self.l1 = torch.nn.Linear(f, h)
        self.l2 = torch.nn.Linear(h, k)

    def forward(self, x):
        return self.adj @ self.l2(torch.relu(self.adj @ self.l1(x)))


def test_sbm_needs_edges_to_learn():
    torch.manual_seed(0)
    g = sbm(2000, 6, 10, 32, seed=0)
    n = g.num_vertices
    src, dst = torch.from_numpy(g.edge_index)
    adj = torch.eye(n)
    adj.index_put_((dst, src), torch.ones(g.num_edges), accumulate=True)
    dinv = adj.sum(1).rsqrt()
    adj = dinv[:, None] * adj * dinv[None, :]
    x, y = torch.from_numpy(g.x), torch.from_numpy(g.y)
    train, test = torch.from_numpy(g.train_mask), torch.from_numpy(g.test_mask)
    f, h, k = g.num_features, 32, g.num_classes
    gcn = _accuracy(_DenseGCN(adj, f, h, k), x, y, train, test)
    mlp_model = torch.nn.Sequential(torch.nn.Linear(f, h), torch.nn.ReLU(), torch.nn.Linear(h, k))
    mlp = _accuracy(mlp_model, x, y, train, test)
    assert gcn >= mlp + 0.10, (gcn, mlp)
    assert gcn > 0.6 and mlp < 0.5, (gcn, mlp)


# -------------------------------------------------------------------- presets
def test_presets_listed():
    assert set(PRESETS) == {"reddit", "ogbn-products", "enwiki", "amazon"}
    assert PRESETS["reddit"] == GraphShape("reddit", 232_965, 114_615_892, 602, 41)
    assert PRESETS["ogbn-products"] == GraphShape("ogbn-products", 2_449_029, 61_859_140, 100, 47)
    assert PRESETS["enwiki"] == GraphShape("enwiki", 12_150_976, 378_142_420, 300, 12)
    assert PRESETS["amazon"] == GraphShape("amazon", 8_598_813, 231_594_310, 96, 22)
    for name, shape in PRESETS.items():
        assert shape.name == name
        assert shape.avg_degree == pytest.approx(shape.num_edges / shape.num_vertices)


@pytest.mark.parametrize("name, scale", [("reddit", 1e-3), ("ogbn-products", 1e-3), ("enwiki", 1e-4), ("amazon", 1e-4)])
def test_preset_graph_scaled(name, scale):
    shape = PRESETS[name]
    g = preset_graph(name, scale=scale, seed=1)
    assert g.num_vertices == round(shape.num_vertices * scale)
    assert g.num_edges == round(shape.num_edges * scale)
    assert g.num_features == shape.feature_dim
    assert g.num_classes == shape.num_classes
    assert g.y.max() < shape.num_classes
    assert name in g.name
    again = preset_graph(name, scale=scale, seed=1)
    assert np.array_equal(g.edge_index, again.edge_index)


def test_preset_graph_passes_sbm_options():
    g = preset_graph("enwiki", scale=1e-4, homophily=0.5, train_frac=0.5, val_frac=0.25)
    assert abs(edge_homophily(g.edge_index, g.y) - 0.5) < 0.02
    assert abs(g.train_mask.mean() - 0.5) < 0.01


def test_preset_graph_bad_arguments():
    with pytest.raises(ValueError, match="known presets: amazon, enwiki, ogbn-products, reddit"):
        preset_graph("cora")
    for scale in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="scale"):
            preset_graph("reddit", scale=scale)
    with pytest.raises(ValueError, match="use scale >="):
        preset_graph("reddit", scale=1e-5)
