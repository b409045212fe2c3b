"""CpuDevice: loads share host memory unless copy_transfers, results land in host tensors, budgets still hold."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import sagann
from tests.engine.graphs import awkward_graph
from tests.engine.test_out_of_core import assert_grads_close, assert_rel_close
from tests.measured import assert_measured_within


def test_loads_are_views_unless_copy_transfers():
    host = torch.randn(10, 4)
    shared, copying = sagann.CpuDevice(), sagann.CpuDevice(copy_transfers=True)
    assert shared.shares_host_memory and not copying.shares_host_memory
    with shared.scope() as s:
        assert s.load(host, "rows").data_ptr() == host.data_ptr()
        assert shared.current_bytes == host.numel() * 4  # charged all the same
    with copying.scope() as s:
        assert s.load(host, "rows").data_ptr() != host.data_ptr()


@pytest.mark.parametrize("copy", [False, True])
def test_result_buffer_is_the_host_tensor_only_when_shared(copy):
    dev = sagann.CpuDevice("1MB", copy_transfers=copy)
    host = torch.ones(8, 3)
    with dev.scope() as s:
        buf, shared = s.result_buffer(host[2:6], 0.0, "acc")
        assert shared is (not copy)
        assert dev.current_bytes == 4 * 3 * 4
        buf += 5
    assert torch.equal(host[2:6], torch.full((4, 3), 5.0) if not copy else torch.ones(4, 3))
    assert dev.current_bytes == 0


@pytest.mark.parametrize("budget", [None, "300KB"])
def test_copying_and_sharing_devices_train_alike(budget):
    rng = np.random.default_rng(3)
    n, ei = 500, awkward_graph(rng, 500, 4000)
    x = torch.randn(n, 16)
    results = []
    for copy in (False, True):
        torch.manual_seed(0)
        layer = sagann.nn.SAGEConv(16, 8)
        g = sagann.ChunkedGraph(ei, n, device=sagann.CpuDevice(budget, copy_transfers=copy, meter=budget is not None))
        xx = x.clone().requires_grad_()
        out = layer(g, xx)
        (out * torch.linspace(-1, 1, 8)).sum().backward()
        results.append((out.detach(), xx.grad, [p.grad for p in layer.parameters()]))
        if budget is not None:
            assert_measured_within(g.device)
    assert_rel_close(results[0][0], results[1][0])
    assert_grads_close([results[0][1], *results[0][2]], [results[1][1], *results[1][2]])


class InPlaceLayer(sagann.Layer):
    gather = "sum"

    def apply_edge(self, e):
        return e.src

    def apply_vertex(self, v, acc):
        return v.mul_(2) + acc  # modifies its input: must be refused, not corrupt x


def test_in_place_modification_of_an_input_is_refused():
    n, ei = 20, np.array([[0, 1, 2], [1, 2, 3]])
    with pytest.raises(RuntimeError, match="modified its input in place"):
        InPlaceLayer()(sagann.ChunkedGraph(ei, n), torch.randn(n, 4))
