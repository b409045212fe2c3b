"""Edge data travel in sub-chunk order: one slice per sub-chunk, the permuted copy cached only while valid."""
import numpy as np
import torch

import sagann
from sagann.chunks.partition import partition_graph
from tests.engine.graphs import awkward_graph


def test_edge_order_gives_each_sub_chunk_a_contiguous_slice():
    rng = np.random.default_rng(3)
    ei = awkward_graph(rng, 40, 300)
    part = partition_graph(ei, 40, 4, 7)
    order, starts = part.edge_order
    assert sorted(order.tolist()) == list(range(ei.shape[1]))
    for c in part.sub_chunks():
        assert np.array_equal(order[starts[c.id] : starts[c.id] + c.nnz], c.edge_ids)




def test_cached_permutation_follows_in_place_changes_and_new_tensors():
    rng = np.random.default_rng(4)
    n = 30
    ei = awkward_graph(rng, n, 200)
    g = sagann.ChunkedGraph(ei, n, num_chunks=3, sub_chunk_nnz=9)
    torch.manual_seed(0)
    layer = sagann.nn.GCNConv(4, 3, normalize=False, add_self_loops=False)
    x = torch.randn(n, 4)
    w = torch.rand(ei.shape[1])
    dense = lambda w_: torch.zeros(n, n).index_put((torch.from_numpy(ei[1]), torch.from_numpy(ei[0])), w_, accumulate=True)  # noqa: E731
    ref = lambda w_: dense(w_) @ layer.lin(x) + layer.bias  # noqa: E731
    with torch.no_grad():
        torch.testing.assert_close(layer(g, x, w), ref(w), rtol=1e-5, atol=1e-5)
        w.mul_(3.0)  # in place: the cached permuted copy is stale and must not be used
        torch.testing.assert_close(layer(g, x, w), ref(w), rtol=1e-5, atol=1e-5)
        w2 = torch.rand(ei.shape[1])
        torch.testing.assert_close(layer(g, x, w2), ref(w2), rtol=1e-5, atol=1e-5)
