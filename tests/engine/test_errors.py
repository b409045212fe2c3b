"""Bad input at the boundary: a clear error naming the fix, and nothing half-done."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import sagann


def test_out_of_range_id():
    with pytest.raises(ValueError, match=r"vertex id 5 .* num_vertices=5"):
        sagann.ChunkedGraph(np.array([[0, 5], [1, 2]]), 5)


def test_negative_id():
    with pytest.raises(ValueError, match="negative vertex id"):
        sagann.ChunkedGraph(np.array([[0, -1], [1, 2]]), 5)


def test_wrong_shape_suggests_transpose():
    with pytest.raises(ValueError, match=r"\[2, E\].*edge_index.T"):
        sagann.ChunkedGraph(np.array([[0, 1], [1, 2], [2, 0]]), 3)


def test_float_ids_rejected():
    with pytest.raises(ValueError, match="integer vertex ids"):
        sagann.ChunkedGraph(np.array([[0.0, 1.0], [1.0, 2.0]]), 3)


def test_x_with_wrong_rows():
    g = sagann.ChunkedGraph(np.array([[0, 1], [1, 2]]), 3)
    with pytest.raises(ValueError, match=r"num_vertices=3"):
        sagann.nn.GCNConv(4, 2)(g, torch.randn(4, 4))


def test_x_wrong_dtype():
    g = sagann.ChunkedGraph(np.array([[0, 1], [1, 2]]), 3)
    with pytest.raises(ValueError, match="float32"):
        sagann.nn.SAGEConv(4, 2)(g, torch.randn(3, 4, dtype=torch.float64))


def test_edge_data_wrong_rows():
    g = sagann.ChunkedGraph(np.array([[0, 1], [1, 2]]), 3)
    with pytest.raises(ValueError, match="edge_weight"):
        sagann.nn.GCNConv(4, 2)(g, torch.randn(3, 4), torch.ones(5))


def test_unknown_reducer_lists_known():
    class Bad(sagann.Layer):
        gather = "median"

    g = sagann.ChunkedGraph(np.array([[0, 1], [1, 2]]), 3)
    with pytest.raises(ValueError, match="sum, mean, max, min"):
        Bad()(g, torch.randn(3, 2))


def test_apply_edge_wrong_shape():
    class Bad(sagann.Layer):
        def apply_edge(self, e):
            return e.src.sum()

    g = sagann.ChunkedGraph(np.array([[0, 1], [1, 2]]), 3)
    with pytest.raises(ValueError, match="Bad.apply_edge must return one row per edge"):
        Bad()(g, torch.randn(3, 2))


def test_builtin_needing_edge_data():
    class NeedsEdges(sagann.Layer):
        apply_edge = sagann.fn.src_mul_edge

    g = sagann.ChunkedGraph(np.array([[0, 1], [1, 2]]), 3)
    with pytest.raises(ValueError, match="pass edge_data"):
        NeedsEdges()(g, torch.randn(3, 2))


def test_unknown_backend():
    with pytest.raises(ValueError, match="known backends"):
        sagann.ChunkedGraph(np.array([[0], [1]]), 2, backend="tpu")


def test_second_backward_is_a_clear_error():
    g = sagann.ChunkedGraph(np.array([[0, 1], [1, 2]]), 3)
    x = torch.randn(3, 4, requires_grad=True)
    out = sagann.nn.SAGEConv(4, 2)(g, x).sum()
    out.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward ran twice"):
        out.backward()
